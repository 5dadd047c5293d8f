"""The checkpoint cross-check: stored safetensors tensors beside the meta-device inventory, the difference explained.

Stored layouts are generated here from each config's shapes, following the layout each quantizer or checkpoint
writes (sources in comments); the Hub path through the real huggingface_hub client is in test_hub_mirror.py.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hfmem import catalogue, hub
from hfmem.build.inventory import count_parameters
from hfmem.memory.checkpoint import (
    CheckpointComparison,
    CheckpointSummary,
    StoredTensor,
    compare_checkpoint,
    summary_from_headers,
)
from hfmem.memory.quantization import (
    BNB_4BIT_BLOCKSIZE,
    BNB_DQ_BLOCKSIZE,
    MXFP4_BLOCKSIZE,
    scheme_from_quantization_config,
)
from hfmem.report import comparison_to_dict, render_comparison
from hfmem.types import ParameterInventory, ResolvedModel
from tests.conftest import TINY_LLAMA, TINY_LLAMA_PARAMS, safetensors_bytes

Header = list[tuple[str, dict[str, Any]]]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def catalogue_model(model_id: str) -> ResolvedModel:
    match = catalogue.find(model_id)
    assert match is not None
    return ResolvedModel(model_id, "catalogue", match[0].load_config())


def explained(comparison: CheckpointComparison) -> dict[str, int]:
    return {g.reason: g.params for g in comparison.explained}


def assert_balanced(comparison: CheckpointComparison) -> None:
    total = sum(g.params for g in comparison.explained) + comparison.unexplained_params
    assert total == comparison.difference_params


# --- DeepSeek-V3 ---------------------------------------------------------------------------------------------------

#: The Hugging Face API's ``safetensors.parameters`` for deepseek-ai/DeepSeek-V3 (REFERENCE.md §4.5).
DEEPSEEK_V3_API = {"BF16": 3_918_786_560, "F8_E4M3": 680_571_043_840, "F32": 41_555_600}
DEEPSEEK_V3_API_TOTAL = 684_531_386_000
#: hfmem's meta-device count with transformers 5.24 (REFERENCE.md §7; fused experts, no MTP layer).
DEEPSEEK_V3_BUILT = 671_026_404_352


def deepseek_v3_headers(c: dict[str, Any]) -> Header:
    """DeepSeek-V3's checkpoint layout, from its config.

    As the released checkpoint stores it (its ``model.safetensors.index.json``; DeepSeek's ``inference/model.py``
    and ``inference/convert.py``): every Linear weight of layers 0–60 and of the MTP layer 61 in F8_E4M3 with an F32
    ``weight_scale_inv`` of ``[ceil(out/128), ceil(in/128)]`` (``quantization_config.weight_block_size``); routed
    experts one module per expert (``mlp.experts.{j}.gate_proj.weight``, not fused); embeddings, LM head, norms and
    routers (``mlp.gate.weight``) in BF16 and the router's ``e_score_correction_bias`` in F32. The MTP layer
    (``num_nextn_predict_layers``) is a full MoE decoder layer plus ``embed_tokens``, ``enorm``, ``hnorm``,
    ``eh_proj`` (a [h, 2h] Linear kept in BF16), ``shared_head.norm`` and ``shared_head.head``.
    """
    h, n_layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads, nope, rope, v_dim = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    q_rank, kv_rank = c["q_lora_rank"], c["kv_lora_rank"]
    experts, moe_inter = c["n_routed_experts"], c["moe_intermediate_size"]
    block_rows, block_cols = c["quantization_config"]["weight_block_size"]
    out: Header = []

    def add(name: str, dtype: str, shape: list[int]) -> None:
        out.append((name, {"dtype": dtype, "shape": shape}))

    def fp8_linear(name: str, rows: int, cols: int) -> None:
        add(f"{name}.weight", "F8_E4M3", [rows, cols])
        add(f"{name}.weight_scale_inv", "F32", [cdiv(rows, block_rows), cdiv(cols, block_cols)])

    add("model.embed_tokens.weight", "BF16", [vocab, h])
    for layer in range(n_layers + c["num_nextn_predict_layers"]):
        p = f"model.layers.{layer}."
        if layer >= n_layers:  # the MTP module's own tensors
            add(p + "embed_tokens.weight", "BF16", [vocab, h])
            for norm in ("enorm", "hnorm", "shared_head.norm"):
                add(f"{p}{norm}.weight", "BF16", [h])
            add(p + "eh_proj.weight", "BF16", [h, 2 * h])
            add(p + "shared_head.head.weight", "BF16", [vocab, h])
        add(p + "input_layernorm.weight", "BF16", [h])
        add(p + "post_attention_layernorm.weight", "BF16", [h])
        fp8_linear(p + "self_attn.q_a_proj", q_rank, h)
        add(p + "self_attn.q_a_layernorm.weight", "BF16", [q_rank])
        fp8_linear(p + "self_attn.q_b_proj", heads * (nope + rope), q_rank)
        fp8_linear(p + "self_attn.kv_a_proj_with_mqa", kv_rank + rope, h)
        add(p + "self_attn.kv_a_layernorm.weight", "BF16", [kv_rank])
        fp8_linear(p + "self_attn.kv_b_proj", heads * (nope + v_dim), kv_rank)
        fp8_linear(p + "self_attn.o_proj", h, heads * v_dim)
        if layer < c["first_k_dense_replace"]:
            for proj, rows, cols in (("gate", c["intermediate_size"], h), ("up", c["intermediate_size"], h)):
                fp8_linear(f"{p}mlp.{proj}_proj", rows, cols)
            fp8_linear(p + "mlp.down_proj", h, c["intermediate_size"])
            continue
        add(p + "mlp.gate.weight", "BF16", [experts, h])
        add(p + "mlp.gate.e_score_correction_bias", "F32", [experts])
        for j in [*range(experts), None]:
            module = f"{p}mlp.experts.{j}" if j is not None else f"{p}mlp.shared_experts"
            inter = moe_inter if j is not None else moe_inter * c["n_shared_experts"]
            fp8_linear(f"{module}.gate_proj", inter, h)
            fp8_linear(f"{module}.up_proj", inter, h)
            fp8_linear(f"{module}.down_proj", h, inter)
    add("model.norm.weight", "BF16", [h])
    add("lm_head.weight", "BF16", [vocab, h])
    return out


@pytest.fixture(scope="module")
def deepseek_v3() -> tuple[ResolvedModel, ParameterInventory]:
    model = catalogue_model("deepseek-ai/DeepSeek-V3")
    return model, count_parameters(model)


def test_deepseek_v3_fake_reproduces_the_hub_api_totals(deepseek_v3: tuple[ResolvedModel, ParameterInventory]) -> None:
    config = dict(deepseek_v3[0].config)
    summary = summary_from_headers("fake", deepseek_v3_headers(config))
    assert dict(summary.params_by_dtype) == DEEPSEEK_V3_API
    assert summary.total_params == DEEPSEEK_V3_API_TOTAL
    # BF16 by hand: embed + head, the MTP layer's embed + head (4 × V·h = 4 × 926,679,040), 59 routers (58 MoE layers +
    # MTP) × 256 × 7168, eh_proj 7168 × 14336, norms: 62 layers × (2·7168 + 1536 + 512) + 4 × 7168.
    vh = 129_280 * 7_168
    assert 4 * vh + 59 * 256 * 7_168 + 7_168 * 14_336 + 62 * (2 * 7_168 + 1_536 + 512) + 4 * 7_168 == 3_918_786_560
    assert summary.bytes_by_dtype == {"BF16": 2 * 3_918_786_560, "F32": 4 * 41_555_600, "F8_E4M3": 680_571_043_840}


def test_deepseek_v3_difference_is_mtp_scales_and_router_buffers(
    deepseek_v3: tuple[ResolvedModel, ParameterInventory],
) -> None:
    model, inventory = deepseek_v3
    config = dict(model.config)
    assert inventory.total_params == DEEPSEEK_V3_BUILT
    headers = deepseek_v3_headers(config)
    summary = summary_from_headers("fake", headers)
    scheme = scheme_from_quantization_config(config["quantization_config"])
    comparison = compare_checkpoint(summary, inventory, num_hidden_layers=61, scheme=scheme)

    assert comparison.difference_params == DEEPSEEK_V3_API_TOTAL - DEEPSEEK_V3_BUILT == 13_504_981_648
    assert comparison.unexplained_params == 0 and comparison.unexplained_tensors == 0
    assert_balanced(comparison)
    # The MTP layer (stored, never built: DeepseekV3PreTrainedModel._keys_to_ignore_on_load_unexpected =
    # [r"model\.layers\.61.*"]) = one built MoE layer (hfmem's layer 60, fused experts) + its FP8 scales and router
    # bias as stored + the MTP module's own embed, head, 3 norms and eh_proj.
    layer_60 = sum(p.numel for p in inventory.parameters if p.name.startswith("model.layers.60."))
    mtp_scales = sum(
        math.prod(i["shape"]) for n, i in headers if n.startswith("model.layers.61.") and n.endswith("weight_scale_inv")
    )
    mtp = layer_60 + mtp_scales + 256 + 2 * 129_280 * 7_168 + 3 * 7_168 + 7_168 * 14_336
    # FP8 scales of the built layers 0–60: the F32 total less the scales and router biases of the MTP layer and the
    # 58 stored router biases of layers 3–60 (e_score_correction_bias is an nn.Buffer in DeepseekV3TopkRouter).
    scales = DEEPSEEK_V3_API["F32"] - mtp_scales - 59 * 256
    assert explained(comparison) == {
        "extra_modules": mtp,
        "quantization_metadata": scales,
        "persistent_buffers": 58 * 256,  # REFERENCE.md §7: "+14,848 e_score_correction_bias buffers"
    }
    assert mtp == 13_464_128_568 and scales == 40_838_232
    # hfmem's fp8-block formula (memory/quantization.py tensor_bytes) predicts the stored scale bytes exactly.
    assert comparison.scheme_metadata_bytes == 4 * scales
    extra = comparison.group("extra_modules")
    assert extra is not None and extra.examples == ("model.layers.61",)


# --- GPT-2 --------------------------------------------------------------------------------------------------------


def test_gpt2_stored_without_prefix_with_mask_buffers_and_no_head() -> None:
    model = catalogue_model("openai-community/gpt2")
    inventory = count_parameters(model)
    assert inventory.total_params == 124_439_808  # REFERENCE.md §7 (KerasHub gpt2_base_en)
    n_pos = model.config["n_positions"]
    # GPT-2 checkpoints are saved from GPT2Model: names lack the ``transformer.`` base_model_prefix the LM head model
    # builds (GPT2PreTrainedModel.base_model_prefix). They hold no lm_head.weight (tied to wte:
    # GPT2LMHeadModel._tied_weights_keys) and one causal-mask buffer per layer, ``h.N.attn.bias`` of
    # [1, 1, n_positions, n_positions], which transformers 5.24 drops on load
    # (GPT2PreTrainedModel._keys_to_ignore_on_load_unexpected = ["attn.bias", "crossattention.bias"]). The older
    # ``masked_bias`` buffer was non-persistent, so it is not generated here. The real file's exact tensor list cannot
    # be checked offline; this is the layout those rules imply.
    headers: Header = [
        (p.name.removeprefix("transformer."), {"dtype": "F32", "shape": list(p.shape)}) for p in inventory.parameters
    ]
    headers += [(f"h.{i}.attn.bias", {"dtype": "F32", "shape": [1, 1, n_pos, n_pos]}) for i in range(12)]
    summary = summary_from_headers("fake", headers)
    assert summary.tensor_count == 148 + 12
    comparison = compare_checkpoint(summary, inventory, num_hidden_layers=12, scheme=None)
    assert explained(comparison) == {"persistent_buffers": 12 * 1024 * 1024}
    assert summary.total_params == 124_439_808 + 12_582_912
    assert comparison.unexplained_params == 0
    assert_balanced(comparison)


# --- Llama-style: tied head stored twice, rotary buffers stored ----------------------------------------------------


def tiny_llama(**overrides: Any) -> tuple[ResolvedModel, ParameterInventory]:
    model = ResolvedModel("tiny", "local", {**TINY_LLAMA, **overrides})
    return model, count_parameters(model)


def test_llama_tied_head_stored_twice_and_inv_freq() -> None:
    _, inventory = tiny_llama(tie_word_embeddings=True)
    vocab, hidden, layers, head_dim = 1000, 64, 2, 64 // 4
    assert inventory.total_params == TINY_LLAMA_PARAMS - vocab * hidden  # the head is the embedding
    headers: Header = [(p.name, {"dtype": "BF16", "shape": list(p.shape)}) for p in inventory.parameters]
    # A checkpoint saved without de-duplicating the tie (falcon-7b: +V·h, REFERENCE.md §7) and by code that kept
    # rotary_emb.inv_freq persistent (Llama-2: +64 per layer, REFERENCE.md §7): head_dim / 2 values per layer.
    headers.append(("lm_head.weight", {"dtype": "BF16", "shape": [vocab, hidden]}))
    headers += [
        (f"model.layers.{i}.self_attn.rotary_emb.inv_freq", {"dtype": "F32", "shape": [head_dim // 2]})
        for i in range(layers)
    ]
    comparison = compare_checkpoint(summary_from_headers("fake", headers), inventory, num_hidden_layers=2)
    assert explained(comparison) == {"persistent_buffers": layers * head_dim // 2, "tied_duplicates": vocab * hidden}
    assert comparison.unexplained_params == 0
    assert_balanced(comparison)


def test_prefix_added_or_removed_and_built_not_stored() -> None:
    _, inventory = tiny_llama()
    # Saved from the base model (no ``model.``), and missing the untied head: built but not stored.
    headers: Header = [
        (p.name.removeprefix("model."), {"dtype": "F16", "shape": list(p.shape)})
        for p in inventory.parameters
        if p.name != "lm_head.weight"
    ]
    comparison = compare_checkpoint(summary_from_headers("fake", headers), inventory, num_hidden_layers=2)
    assert explained(comparison) == {"built_not_stored": -1000 * 64}
    assert comparison.unexplained_params == 0
    assert_balanced(comparison)


def test_unmatched_tensors_are_unexplained_not_hidden() -> None:
    _, inventory = tiny_llama()
    headers: Header = [(p.name, {"dtype": "BF16", "shape": list(p.shape)}) for p in inventory.parameters]
    headers.append(("vision_tower.patch_embed.weight", {"dtype": "BF16", "shape": [64, 3, 14, 14]}))
    comparison = compare_checkpoint(summary_from_headers("fake", headers), inventory, num_hidden_layers=2)
    assert comparison.explained == ()
    assert comparison.unexplained_params == 64 * 3 * 14 * 14 and comparison.unexplained_tensors == 1
    assert comparison.unexplained_examples == ("vision_tower.patch_embed.weight",)
    assert any("unexplained" in line for line in render_comparison(comparison))


# --- bitsandbytes 4-bit --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("double_quant", [False, True])
def test_bitsandbytes_4bit_layout(double_quant: bool) -> None:
    _, inventory = tiny_llama()
    headers: Header = []
    packed_delta = metadata = 0
    for p in inventory.parameters:
        if not (p.is_linear and p.name.startswith("model.layers.")):  # embeddings, head, norms stay 16-bit
            headers.append((p.name, {"dtype": "BF16", "shape": list(p.shape)}))
            continue
        # bitsandbytes functional.quantize_4bit: codes packed two per byte in a uint8 [ceil(n/2), 1] tensor, fp32
        # absmax per 64-element block; QuantState.as_dict(packed=True) saves absmax, quant_map (16-entry code), with
        # double quant nested_absmax / nested_quant_map (absmax quantized to uint8 in blocks of 256), and the
        # non-tensor fields packed into a uint8 ``quant_state.bitsandbytes__nf4`` tensor (transformers
        # quantizer_bnb_4bit.py serialized_names). The quant_state length (JSON bytes) is arbitrary here.
        n = p.numel
        blocks = cdiv(n, BNB_4BIT_BLOCKSIZE)
        entries: Header = [
            (f"{p.name}", {"dtype": "U8", "shape": [cdiv(n, 2), 1]}),
            (f"{p.name}.absmax", {"dtype": "U8" if double_quant else "F32", "shape": [blocks]}),
            (f"{p.name}.quant_map", {"dtype": "F32", "shape": [16]}),
            (f"{p.name}.quant_state.bitsandbytes__nf4", {"dtype": "U8", "shape": [120]}),
        ]
        if double_quant:
            entries += [
                (f"{p.name}.nested_absmax", {"dtype": "F32", "shape": [cdiv(blocks, BNB_DQ_BLOCKSIZE)]}),
                (f"{p.name}.nested_quant_map", {"dtype": "F32", "shape": [256]}),
            ]
        headers += entries
        packed_delta += cdiv(n, 2) - n
        metadata += sum(math.prod(i["shape"]) for name, i in entries[1:])
    comparison = compare_checkpoint(summary_from_headers("fake", headers), inventory, num_hidden_layers=2)
    assert explained(comparison) == {"quantization_metadata": metadata, "packed_quantized_values": packed_delta}
    assert packed_delta == -(2 * (4 * 64 * 64 + 3 * 64 * 128)) // 2
    assert comparison.unexplained_params == 0
    assert_balanced(comparison)


# --- MXFP4 (gpt-oss) -----------------------------------------------------------------------------------------------


def gpt_oss_mxfp4() -> tuple[ParameterInventory, CheckpointComparison, int, int]:
    model = catalogue_model("openai/gpt-oss-20b")
    inventory = count_parameters(model)
    headers: Header = []
    packed_delta = scale_count = 0
    for p in inventory.parameters:
        if p.name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            # transformers integrations/mxfp4.py: ``{proj}_blocks`` uint8 [experts, out, in/32, 16] (32 E2M1 values in
            # 16 bytes) and ``{proj}_scales`` uint8 [experts, out, in/32] (one E8M0 exponent per 32). transformers
            # builds gate_up_proj as [E, in=hidden, out=2·inter] and down_proj as [E, in=inter, out=hidden]
            # (modeling_gpt_oss.py GptOssExperts), the checkpoint stores [E, out, …]. Expert biases stay BF16.
            experts, cols, rows = p.shape
            groups = cdiv(cols, MXFP4_BLOCKSIZE)
            headers.append((f"{p.name}_blocks", {"dtype": "U8", "shape": [experts, rows, groups, 16]}))
            headers.append((f"{p.name}_scales", {"dtype": "U8", "shape": [experts, rows, groups]}))
            packed_delta += experts * rows * groups * 16 - p.numel
            scale_count += experts * rows * groups
        else:
            headers.append((p.name, {"dtype": "BF16", "shape": list(p.shape)}))
    scheme = scheme_from_quantization_config(dict(model.config)["quantization_config"])
    summary = summary_from_headers("fake", headers)
    return (
        inventory,
        compare_checkpoint(summary, inventory, num_hidden_layers=24, scheme=scheme),
        packed_delta,
        scale_count,
    )


def test_mxfp4_gpt_oss_layout() -> None:
    _, comparison, packed_delta, scale_count = gpt_oss_mxfp4()
    assert explained(comparison) == {"quantization_metadata": scale_count, "packed_quantized_values": packed_delta}
    # 24 layers × 32 experts × (2880 × 5760 + 2880 × 2880) expert weights: half of them is the packed deficit.
    expert_weights = 24 * 32 * (2_880 * 5_760 + 2_880 * 2_880)
    assert packed_delta == -expert_weights // 2 and scale_count == expert_weights // MXFP4_BLOCKSIZE
    assert comparison.unexplained_params == 0
    assert_balanced(comparison)


def test_mxfp4_formula_matches_stored_scales() -> None:
    _, comparison, _, scale_count = gpt_oss_mxfp4()
    assert comparison.scheme_metadata_bytes == scale_count  # uint8 scales, one byte each


# --- GPTQ ----------------------------------------------------------------------------------------------------------


def test_gptq_layout() -> None:
    _, inventory = tiny_llama()
    headers: Header = []
    delta = metadata = 0
    for p in inventory.parameters:
        if not (p.is_linear and p.name.startswith("model.layers.")):
            headers.append((p.name, {"dtype": "F16", "shape": list(p.shape)}))
            continue
        # AutoGPTQ/GPTQModel QuantLinear buffers, 4 bits, group 32: qweight int32 [in/8, out], qzeros int32
        # [groups, out/8], scales fp16 [groups, out], g_idx int32 [in].
        out_f, in_f = p.shape
        base = p.name.removesuffix(".weight")
        groups = in_f // 32
        entries: Header = [
            (f"{base}.qweight", {"dtype": "I32", "shape": [in_f // 8, out_f]}),
            (f"{base}.qzeros", {"dtype": "I32", "shape": [groups, out_f // 8]}),
            (f"{base}.scales", {"dtype": "F16", "shape": [groups, out_f]}),
            (f"{base}.g_idx", {"dtype": "I32", "shape": [in_f]}),
        ]
        headers += entries
        delta += in_f // 8 * out_f - p.numel
        metadata += sum(math.prod(i["shape"]) for _, i in entries[1:])
    comparison = compare_checkpoint(summary_from_headers("fake", headers), inventory, num_hidden_layers=2)
    assert explained(comparison) == {"quantization_metadata": metadata, "packed_quantized_values": delta}
    assert comparison.unexplained_params == 0
    assert_balanced(comparison)


# --- summary, JSON and lines ---------------------------------------------------------------------------------------


def test_summary_totals_and_json() -> None:
    summary = CheckpointSummary(
        "x",
        (
            StoredTensor("a", "BF16", (3, 4)),
            StoredTensor("b", "F8_E4M3", (8,)),
            StoredTensor("c", "F32", ()),  # a scalar: one element, as huggingface_hub's TensorInfo counts it
            StoredTensor("d", "F4", (3,)),  # sub-byte: rounded up to whole bytes
        ),
    )
    assert dict(summary.params_by_dtype) == {"BF16": 12, "F32": 1, "F4": 3, "F8_E4M3": 8}
    assert dict(summary.bytes_by_dtype) == {"BF16": 24, "F32": 4, "F4": 2, "F8_E4M3": 8}
    assert (summary.total_params, summary.total_bytes, summary.tensor_count) == (24, 38, 4)


def test_comparison_json_and_lines(deepseek_v3: tuple[ResolvedModel, ParameterInventory]) -> None:
    model, inventory = deepseek_v3
    summary = summary_from_headers("hub:deepseek-ai/DeepSeek-V3@abc", deepseek_v3_headers(dict(model.config)))
    comparison = compare_checkpoint(summary, inventory, num_hidden_layers=61, scheme=None)
    doc = json.loads(json.dumps(comparison_to_dict(comparison)))
    assert doc["params_by_dtype"] == DEEPSEEK_V3_API and doc["total_params"] == DEEPSEEK_V3_API_TOTAL
    assert doc["tensors"] == summary.tensor_count and doc["built_params"] == DEEPSEEK_V3_BUILT
    assert doc["difference_params"] == sum(e["params"] for e in doc["explained"]) + doc["unexplained_params"]
    assert [e["reason"] for e in doc["explained"]] == ["extra_modules", "quantization_metadata", "persistent_buffers"]
    assert all(isinstance(e["params"], int) and isinstance(e["tensors"], int) for e in doc["explained"])
    lines = render_comparison(comparison)
    assert lines[0].startswith(f"{summary.tensor_count:,} tensors, 684,531,386,000 values, ")
    assert "GiB" in lines[0] and "F8_E4M3 680,571,043,840 (633.83 GiB)" in lines[1]
    assert lines[-1] == "  fully explained (unexplained 0)"


# --- fetch_checkpoint: local folders and skip notes (the Hub through a real client: test_hub_mirror.py) -----------


@pytest.fixture
def folder(tmp_path: Path) -> Callable[[dict[str, bytes]], ResolvedModel]:
    def make(files: dict[str, bytes]) -> ResolvedModel:
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
        return ResolvedModel(str(tmp_path), "local", TINY_LLAMA, directory=tmp_path)

    return make


SHARD_1 = {"model.embed_tokens.weight": ("BF16", [1000, 64]), "model.norm.weight": ("BF16", [64])}
SHARD_2 = {"lm_head.weight": ("BF16", [1000, 64]), "model.layers.0.self_attn.rotary_emb.inv_freq": ("F32", [8])}


def index_json(shards: dict[str, dict[str, tuple[str, list[int]]]]) -> bytes:
    weight_map = {name: file for file, tensors in shards.items() for name in tensors}
    return json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}).encode()


@pytest.mark.parametrize("layout", ["single", "sharded", "unnamed"])
def test_local_folder_headers(folder: Callable[[dict[str, bytes]], ResolvedModel], layout: str) -> None:
    shards = {"model-00001-of-00002.safetensors": SHARD_1, "model-00002-of-00002.safetensors": SHARD_2}
    if layout == "single":
        files = {"model.safetensors": safetensors_bytes({**SHARD_1, **SHARD_2})}
    else:
        files = {name: safetensors_bytes(tensors) for name, tensors in shards.items()}
        if layout == "sharded":
            files["model.safetensors.index.json"] = index_json(shards)
    summary, note = hub.fetch_checkpoint(folder(files))
    assert note is None and summary is not None
    assert dict(summary.params_by_dtype) == {"BF16": 2 * 64_000 + 64, "F32": 8}
    assert summary.tensor_count == 4
    assert summary.source.endswith("1 file" if layout == "single" else "2 files")


def test_local_folder_without_safetensors(folder: Callable[[dict[str, bytes]], ResolvedModel]) -> None:
    summary, note = hub.fetch_checkpoint(folder({"pytorch_model.bin": b"\0" * 16}))
    assert summary is None and note is not None
    assert "no *.safetensors files (only pytorch_model.bin)" in note


def test_local_folder_with_a_broken_header(folder: Callable[[dict[str, bytes]], ResolvedModel]) -> None:
    summary, note = hub.fetch_checkpoint(folder({"model.safetensors": struct.pack("<Q", 50) + b"{not json"}))
    assert summary is None and note is not None and "could not be read" in note


def test_skips_catalogue_params_and_offline() -> None:
    cat = catalogue_model("openai-community/gpt2")
    assert hub.fetch_checkpoint(cat)[0] is None and "bundled snapshot" in (hub.fetch_checkpoint(cat)[1] or "")
    summary, note = hub.fetch_checkpoint(ResolvedModel("1b", "params", {}))
    assert summary is None and "--params" in (note or "")
    # HF_HUB_OFFLINE=1 from pytest-env: no request is even attempted (sockets are blocked by conftest).
    summary, note = hub.fetch_checkpoint(ResolvedModel("org/tiny", "hub", TINY_LLAMA, revision="a" * 40))
    assert summary is None and note == "checkpoint cross-check skipped: offline mode is on (HF_HUB_OFFLINE=1)"


def _raise(error: Exception) -> Callable[..., Any]:
    def fake(*args: Any, **kwargs: Any) -> Any:
        raise error

    return fake


def _http_error(cls: type[Exception], status: int) -> Exception:
    import httpx2

    request = httpx2.Request("GET", "https://huggingface.co/org/tiny/resolve/main/model.safetensors")
    return cls("boom", response=httpx2.Response(status, request=request))  # type: ignore[call-arg]


def _seam_cases() -> Iterator[tuple[Exception, str]]:
    from huggingface_hub import errors as hf_errors

    yield hf_errors.NotASafetensorsRepoError("no"), "has no safetensors weights"
    yield _http_error(hf_errors.GatedRepoError, 401), "is gated and no token grants access"
    yield _http_error(hf_errors.HfHubHTTPError, 503), "the Hub answered HTTP 503"
    yield hf_errors.SafetensorsParsingError("bad header"), "could not be parsed (bad header)"
    yield hf_errors.OfflineModeIsEnabled("off"), "offline mode is on"


@pytest.mark.parametrize(("error", "fragment"), list(_seam_cases()))
def test_hub_errors_become_notes(
    monkeypatch: pytest.MonkeyPatch, hub_online: None, error: Exception, fragment: str
) -> None:
    monkeypatch.setattr(hub, "get_safetensors_metadata", _raise(error))
    monkeypatch.setattr(hub, "HfApi", _raise(OSError("no listing")))  # the .bin lookup fails quietly
    summary, note = hub.fetch_checkpoint(ResolvedModel("org/tiny", "hub", TINY_LLAMA), token="hf_SECRET123")
    assert summary is None and note is not None and fragment in note
    assert "hf_SECRET123" not in note and "\n" not in note


def test_unreachable_hub_is_a_note(monkeypatch: pytest.MonkeyPatch, hub_online: None) -> None:
    import httpx2

    monkeypatch.setattr(hub, "get_safetensors_metadata", _raise(httpx2.ConnectError("refused")))
    summary, note = hub.fetch_checkpoint(ResolvedModel("org/tiny", "hub", TINY_LLAMA))
    assert summary is None and note == "checkpoint cross-check skipped: the Hub is unreachable (ConnectError)"
