"""Inference memory: KV bytes per token by hand from each config, and the cache of a real generate() on CPU.

Hand computations follow REFERENCE.md §4.2-§4.4: ``2 (K and V) × layers × kv_heads × head_dim × bytes`` per token,
sliding layers capped at their window, MLA caching ``kv_lora_rank + qk_rope_head_dim`` per token per layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfmem import estimate
from hfmem.catalogue import find
from hfmem.errors import InvalidSetupError
from hfmem.memory.inference import kv_layer_bytes
from hfmem.memory.quantization import bnb_4bit_bytes, scheme_for_dtype, scheme_from_quantization_config, tensor_bytes
from hfmem.types import GpuTarget, InferenceSetup, KvLayer, ParameterInfo, TrainingSetup

BF16 = 2


def config_of(model_id: str) -> dict:
    found = find(model_id)
    assert found is not None
    return json.loads((found[0].directory / "config.json").read_text())


def serve(model_id: str, **settings: object):
    report = estimate(model_id, training=False, inference=InferenceSetup(**settings))  # type: ignore[arg-type]
    assert report.inference is not None
    return report.inference


# --- KV bytes per token, by hand from the config -----------------------------------------------------------------


def gqa_bytes_per_token(config: dict) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", config["num_attention_heads"])
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * BF16


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("meta-llama/Llama-3.1-8B", 131_072),  # REFERENCE.md §4.2 table (the figure)
        ("meta-llama/Llama-2-7b-hf", 524_288),  # MHA
        ("meta-llama/Llama-2-70b-hf", 327_680),  # GQA 8 KV heads
        ("Qwen/Qwen2.5-7B", 57_344),
        ("google/gemma-2b", 18_432),  # MQA with head_dim 256
        ("tiiuae/falcon-7b", 8_192),  # MQA
        ("mistralai/Mistral-7B-v0.1", 131_072),  # below the window
        ("google/gemma-2-9b-it", 344_064),  # below the window
        ("openai/gpt-oss-20b", 49_152),
        ("openai-community/gpt2", 36_864 * 2),  # an fp32 checkpoint caches fp32: 36,864 B/token in bf16 × 2
    ],
)
def test_kv_bytes_per_token_matches_hand_count(model_id: str, expected: int) -> None:
    config = config_of(model_id)
    if "n_layer" in config:  # GPT-2's keys; its checkpoint is fp32, so the cache is too
        hand = 2 * config["n_layer"] * config["n_embd"] * 4
    else:
        if config.get("multi_query"):  # Falcon-7B: one KV head
            config = {**config, "num_key_value_heads": 1}
        hand = gqa_bytes_per_token(config)
    assert hand == expected
    assert serve(model_id, context=1024).kv_cache_bytes_per_token == expected


def test_mla_caches_the_compressed_latent() -> None:
    config = config_of("deepseek-ai/DeepSeek-V3")
    latent = config["kv_lora_rank"] + config["qk_rope_head_dim"]  # 512 + 64 (REFERENCE.md §4.3)
    assert config["num_hidden_layers"] * latent * BF16 == 70_272
    inference = serve("deepseek-ai/DeepSeek-V3", context=32768, tp=8)
    assert inference.kv_cache_bytes_per_token == 70_272
    # One latent "head": every tensor-parallel rank holds the whole cache.
    assert inference.kv_cache_bytes == 70_272 * 32768


def test_sliding_layers_cap_at_their_window() -> None:
    config = config_of("google/gemma-2-9b-it")
    per_layer = 2 * config["num_key_value_heads"] * config["head_dim"] * BF16  # 8,192 B per token per layer
    layers, window = config["num_hidden_layers"], config["sliding_window"]  # 42, 4096; alternate layers slide
    context = 8192
    expected = (layers // 2) * per_layer * context + (layers // 2) * per_layer * min(context, window)
    assert serve("google/gemma-2-9b-it", context=context).kv_cache_bytes == expected
    # Mistral-7B-v0.1: every layer slides at 4,096 (rolling cache), so 32k tokens cost as much as 4k.
    mistral = serve("mistralai/Mistral-7B-v0.1", context=32768)
    assert mistral.kv_cache_bytes == 131_072 * 4096


def test_gpt_oss_alternates_128_token_windows() -> None:
    config = config_of("openai/gpt-oss-20b")
    per_layer = 2 * config["num_key_value_heads"] * config["head_dim"] * BF16
    sliding = config["layer_types"].count("sliding_attention")
    full = config["layer_types"].count("full_attention")
    context = 4096
    expected = full * per_layer * context + sliding * per_layer * config["sliding_window"]
    assert serve("openai/gpt-oss-20b", context=context, weights_dtype="bf16").kv_cache_bytes == expected


def test_encoder_decoder_caches_self_and_cross_attention() -> None:
    config = config_of("google-t5/t5-base")
    per_layer = 2 * config["num_heads"] * config["d_kv"] * 4  # fp32 checkpoint
    inference = serve("google-t5/t5-base", context=512)
    kinds = {layer.kind for layer in inference.kv_layers}
    assert kinds == {"full", "cross"}
    assert inference.kv_cache_bytes == 2 * config.get("num_decoder_layers", config["num_layers"]) * per_layer * 512


def test_kv_dtype_and_tensor_parallel_split() -> None:
    base = serve("meta-llama/Llama-3.1-8B", context=8192)
    fp8 = serve("meta-llama/Llama-3.1-8B", context=8192, kv_dtype="fp8")
    assert fp8.kv_cache_bytes * 2 == base.kv_cache_bytes
    tp4 = serve("meta-llama/Llama-3.1-8B", context=8192, tp=4)  # 8 KV heads: 2 per GPU
    assert tp4.kv_cache_bytes * 4 == base.kv_cache_bytes
    tp16 = KvLayer("0", "full", elements_per_token=2048, heads=8)  # 16 ranks > 8 heads: one head each
    assert kv_layer_bytes(tp16, context=1, batch_size=1, tp=16) == 256 * BF16


def test_tp_must_divide_the_heads() -> None:
    with pytest.raises(InvalidSetupError, match="does not divide"):
        serve("meta-llama/Llama-3.1-8B", tp=3)


def test_max_context_and_batch_fit_the_gpu() -> None:
    gpu = GpuTarget("a 24 GiB GPU", 24 * 2**30)
    inference = serve("meta-llama/Llama-3.1-8B", context=8192, gpu=gpu)
    assert inference.fits and inference.headroom_bytes == gpu.usable_bytes - inference.total_bytes
    assert inference.max_context is not None and inference.max_batch_size is not None
    assert serve("meta-llama/Llama-3.1-8B", context=inference.max_context, gpu=gpu).fits
    assert (
        inference.max_context == 131_072
        or not serve("meta-llama/Llama-3.1-8B", context=inference.max_context + 1, gpu=gpu).fits
    )


# --- quantized weights --------------------------------------------------------------------------------------------


def test_nf4_block_constants() -> None:
    # bitsandbytes: 4-bit codes + one fp32 absmax per 64 (QLoRA paper: 4 + 32/64 = 4.5 bits per parameter).
    numel = 4096 * 11008
    assert bnb_4bit_bytes(numel, double_quant=False) * 8 == numel * 4 + numel // 64 * 32
    # Double quantization: 8-bit absmax + fp32 per 256 absmax + one fp32 offset (≈ 4.127 bits per parameter).
    assert bnb_4bit_bytes(numel, double_quant=True) == numel // 2 + numel // 64 + 4 * (numel // 64 // 256) + 4


def test_int4_gptq_awq_and_int8_layouts() -> None:
    weight = ParameterInfo("model.layers.0.mlp.down_proj.weight", (4096, 11008), "bfloat16", is_linear=True)
    awq = scheme_for_dtype("int4", group_size=128)
    # 4 bits per value + per (output row, group of 128 inputs) an fp16 scale and a 4-bit zero.
    groups = 4096 * (11008 // 128)
    assert tensor_bytes(weight, awq) == (4096 * 11008 // 2, groups * 2 + groups // 2)
    gptq = scheme_from_quantization_config({"quant_method": "gptq", "bits": 4, "group_size": 128})
    assert gptq is not None
    assert tensor_bytes(weight, gptq)[1] == groups * 2 + groups // 2 + 4 * 11008  # + int32 g_idx per input
    int8 = scheme_for_dtype("int8")
    assert tensor_bytes(weight, int8) == (4096 * 11008, 4 * 4096)  # LLM.int8: fp32 SCB per output row
    norm = ParameterInfo("model.norm.weight", (4096,), "bfloat16")
    assert tensor_bytes(norm, int8) == (4096 * 2, 0)


def test_deepseek_v3_fp8_checkpoint_is_used_by_default() -> None:
    inference = serve("deepseek-ai/DeepSeek-V3", context=4096, tp=8)
    assert inference.weights.scheme.layout == "fp8-block"
    # Every quantized tensor stores one byte per value; embeddings and LM head (2 × 926,679,040) stay bf16.
    weights = inference.weights
    assert weights.quantized_data_bytes == weights.quantized_params
    assert 2 * 926_679_040 <= weights.unquantized_params


def test_mxfp4_quantizes_experts_only() -> None:
    inference = serve("openai/gpt-oss-20b", context=4096)
    weights = inference.weights
    assert weights.scheme.layout == "mxfp4"
    assert weights.quantized_data_bytes * 2 == weights.quantized_params  # 4 bits per value
    assert weights.quantization_metadata_bytes * 32 == weights.quantized_params  # one E8M0 byte per 32 values


def test_nf4_keeps_embeddings_and_head_in_16_bit() -> None:
    inference = serve("meta-llama/Llama-2-7b-hf", context=4096, weights_dtype="nf4")
    weights = inference.weights
    embeddings = 2 * 32000 * 4096  # embed_tokens + untied lm_head
    norms = 32 * 2 * 4096 + 4096
    assert weights.unquantized_params == embeddings + norms
    assert weights.quantized_params == 6_738_415_616 - embeddings - norms
    assert weights.unquantized_bytes == 2 * weights.unquantized_params


def test_inference_needs_a_model_not_params() -> None:
    with pytest.raises(InvalidSetupError, match="KV-cache layout"):
        estimate(params=7_000_000_000, training=False, inference=InferenceSetup())


# --- the real cache of generate() on CPU --------------------------------------------------------------------------


TINY = {
    "llama-gqa": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "max_position_embeddings": 256,
    },
    "mistral-sliding": {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
        "sliding_window": 8,
        "max_position_embeddings": 256,
    },
    "gemma2-alternating": {
        "model_type": "gemma2",
        "architectures": ["Gemma2ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 128,
        "sliding_window": 8,
        "max_position_embeddings": 256,
    },
    "deepseek-v3-mla": {
        "model_type": "deepseek_v3",
        "architectures": ["DeepseekV3ForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "first_k_dense_replace": 1,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_group": 1,
        "topk_group": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 32,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "vocab_size": 128,
        "max_position_embeddings": 256,
    },
}


def cache_storage_bytes(cache: object) -> int:
    """Bytes of every storage the cache keeps (a sliding layer's view keeps its whole storage alive)."""
    import torch

    storages: dict[int, int] = {}
    for layer in cache.layers:  # type: ignore[attr-defined]
        for value in vars(layer).values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                storages[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("name", list(TINY))
def test_prediction_equals_real_generate_cache(name: str, tmp_path: Path) -> None:
    """A small random model's generate(): the cache's bytes equal hfmem's prediction for the tokens it holds."""
    import torch
    import transformers

    (tmp_path / "config.json").write_text(json.dumps({**TINY[name], "torch_dtype": "bfloat16"}))
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    torch.manual_seed(0)
    model = getattr(transformers, TINY[name]["architectures"][0])(config).to(torch.bfloat16).eval()
    prompt, new = 20, 5
    batch = 2
    ids = torch.randint(0, 128, (batch, prompt))
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    cache = getattr(out, "cache", None) or out.past_key_values
    # The last generated token is never fed back, so the cache holds prompt + new - 1 tokens.
    held = prompt + new - 1
    inference = estimate(
        str(tmp_path), training=False, inference=InferenceSetup(context=held, batch_size=batch)
    ).inference
    assert inference is not None
    assert cache_storage_bytes(cache) == inference.kv_cache_bytes


# --- recurrent state: Mamba and Jamba keep a fixed state per sequence, not keys and values ------------------------

TINY_RECURRENT = {
    "mamba": {
        "model_type": "mamba",
        "architectures": ["MambaForCausalLM"],
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "vocab_size": 128,
        "state_size": 8,
        "expand": 2,
        "conv_kernel": 4,
        "torch_dtype": "bfloat16",
    },
    "jamba": {  # layers 1 and 3 attention (i % period == offset), 0 and 2 Mamba
        "model_type": "jamba",
        "architectures": ["JambaForCausalLM"],
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "vocab_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "mamba_d_state": 8,
        "mamba_expand": 2,
        "mamba_d_conv": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "use_mamba_kernels": False,
        "torch_dtype": "bfloat16",
    },
}


def recurrent_state_by_hand(config: dict) -> tuple[int, int]:
    """``(Mamba layers, state bytes per sequence)`` from the config.

    transformers models/mamba/modeling_mamba.py (Jamba's modeling_jamba.py copies it): ``MambaMixer.forward`` caches
    ``hidden_states_B_C``, the in_proj output in the model's dtype, as the conv state (``cache.update_conv_state``),
    which cache_utils.py ``LinearAttentionLayer.lazy_initialization`` allocates as ``(batch, d_inner,
    conv_kernel)``; ``mamba_selective_scan`` returns the last SSM state, ``(batch, d_inner, state_size)``, in fp32
    (``deltaB_u = discrete_B * hidden_states[...].float()``), kept by ``zeros_like``. d_inner = expand × hidden_size.
    """
    if config["model_type"] == "mamba":
        layers, d_inner = config["num_hidden_layers"], config["expand"] * config["hidden_size"]
        conv, state = config["conv_kernel"], config["state_size"]
    else:
        period, offset = config["attn_layer_period"], config["attn_layer_offset"]
        layers = sum(i % period != offset for i in range(config["num_hidden_layers"]))
        d_inner = config["mamba_expand"] * config["hidden_size"]
        conv, state = config["mamba_d_conv"], config["mamba_d_state"]
    return layers, layers * (d_inner * conv * BF16 + d_inner * state * 4)


@pytest.mark.parametrize("name", list(TINY_RECURRENT))
def test_recurrent_state_matches_hand_count(name: str, tmp_path: Path) -> None:
    config = TINY_RECURRENT[name]
    (tmp_path / "config.json").write_text(json.dumps(config))
    layers, per_sequence = recurrent_state_by_hand(config)
    assert per_sequence == 10_240  # 2 layers × (128 × 4 × 2 + 128 × 8 × 4)
    inference = estimate(str(tmp_path), training=False, inference=InferenceSetup(context=100, batch_size=3)).inference
    assert inference is not None and inference.profile is not None
    assert len(inference.profile.state_layers) == layers
    assert sum(size for _, size in inference.profile.state_layers) == per_sequence
    assert inference.recurrent_state_bytes == 3 * per_sequence
    if name == "mamba":  # no attention: no KV cache, and no note about attention
        assert inference.kv_layers == () and inference.kv_cache_bytes == 0
        assert not any("attention" in note for note in inference.notes)
    else:  # 2 attention layers × K and V × 2 KV heads × head_dim 64 / 4 = 16 × bf16, for 100 tokens × 3
        assert inference.kv_cache_bytes_per_token == 2 * 2 * 2 * 16 * BF16
        assert inference.kv_cache_bytes == 2 * 2 * 2 * 16 * BF16 * 100 * 3
    assert inference.total_bytes == (
        inference.weights_bytes
        + inference.kv_cache_bytes
        + inference.recurrent_state_bytes
        + inference.activations_bytes
        + inference.overhead_bytes
    )


def test_recurrent_state_equals_real_generate_cache(tmp_path: Path) -> None:
    """A small random Mamba's generate() on CPU: its cache's bytes (conv and SSM states) are hfmem's state."""
    import torch
    import transformers

    config_dict = TINY_RECURRENT["mamba"]
    (tmp_path / "config.json").write_text(json.dumps(config_dict))
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, 128, (2, 12))
    out = model.generate(
        ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True, pad_token_id=0
    )
    cache = getattr(out, "cache", None) or out.past_key_values
    held = 0
    for layer in cache.layers:
        for states in (layer.conv_states, layer.recurrent_states):
            held += sum(t.untyped_storage().nbytes() for t in states.values() if t is not None)
    inference = estimate(str(tmp_path), training=False, inference=InferenceSetup(context=15, batch_size=2)).inference
    assert inference is not None
    assert held == inference.kv_cache_bytes + inference.recurrent_state_bytes == 2 * 10_240


def test_a_model_without_attention_says_so(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hfmem.cli import cli

    (tmp_path / "config.json").write_text(json.dumps(TINY_RECURRENT["mamba"]))
    result = CliRunner().invoke(cli, [str(tmp_path), "--inference-only", "--batch-size", "2"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "KV cache: none (no attention layer caches keys and values)." in result.stdout
    assert "Recurrent state: 10,240 bytes per sequence (2 layers)" in result.stdout
    assert "attention itself" not in result.stdout and "bytes per token per sequence; ." not in result.stdout
    doc = json.loads(CliRunner().invoke(cli, [str(tmp_path), "--inference-only", "--batch-size", "2", "--json"]).stdout)
    assert doc["inference"]["per_gpu_bytes"]["recurrent_state"] == 2 * 10_240
    assert doc["inference"]["recurrent_state"] == {"layers": 2, "bytes_per_sequence": 10_240}
    assert doc["inference"]["kv_cache_layers"] == []


# --- the context length comes from the config transformers builds ---------------------------------------------------

#: Gemma-3 as its Hub config.json states it: the text config names no max_position_embeddings (sizes shrunk).
TINY_GEMMA3 = {
    "model_type": "gemma3",
    "architectures": ["Gemma3ForConditionalGeneration"],
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 400,
        "sliding_window": 8,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
    },
    "mm_tokens_per_image": 4,
    "image_token_index": 300,
    "boi_token_index": 301,
    "eoi_token_index": 302,
    "torch_dtype": "bfloat16",
}


def test_context_length_comes_from_the_built_config(tmp_path: Path) -> None:
    """transformers models/gemma3/configuration_gemma3.py: ``Gemma3TextConfig.max_position_embeddings = 131_072``."""
    from hfmem.memory.activations import context_length

    assert context_length(TINY_GEMMA3) is None  # config.json alone states none
    (tmp_path / "config.json").write_text(json.dumps(TINY_GEMMA3))
    report = estimate(str(tmp_path), inference=InferenceSetup(), setup=TrainingSetup(zero_stages=(0,)))
    assert report.inventory.context_tokens == 131_072
    assert report.inference is not None and report.training is not None
    # One default for both plans (issue 14): serving holds the tokens training trains on, and says how to get all.
    assert (report.inference.context, report.inference.context_source) == (
        4096,
        "the model's context 131,072 capped at 4096; --context max serves all 131,072",
    )
    assert (report.training.seq_len, report.training.seq_len_source) == (
        4096,
        "the model's context 131,072 capped at 4096",
    )
    full = estimate(str(tmp_path), training=False, inference=InferenceSetup(full_context=True))
    assert full.inference is not None
    assert (full.inference.context, full.inference.context_source) == (
        131_072,
        "--context max: the model's context length 131,072",
    )
    with pytest.raises(InvalidSetupError, match="--context max"):
        estimate(str(tmp_path), training=False, inference=InferenceSetup(context=8, full_context=True))


def test_jamba_v0_1_holds_28_mamba_states(tmp_path: Path) -> None:
    """transformers' default JambaConfig is Jamba-v0.1's shape (models/jamba/configuration_jamba.py): 32 layers, an
    attention layer every 8 from layer 4, so 28 Mamba layers of d_inner = 2 × 4,096, conv kernel 4, SSM state 16."""
    from transformers import JambaConfig

    config = json.loads(JambaConfig(use_mamba_kernels=False).to_json_string(use_diff=False))
    config["architectures"], config["torch_dtype"] = ["JambaForCausalLM"], "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(config))
    layers, per_sequence = recurrent_state_by_hand(config)
    assert (layers, per_sequence) == (28, 28 * (8192 * 4 * 2 + 8192 * 16 * 4)) == (28, 16_515_072)
    inference = estimate(
        str(tmp_path), training=False, inference=InferenceSetup(context=16, prefill_chunk=8, batch_size=2)
    ).inference
    assert inference is not None and inference.profile is not None
    assert len(inference.profile.state_layers) == 28
    assert inference.recurrent_state_bytes == 2 * 16_515_072
    # 4 attention layers × K and V × 8 KV heads × 128 head dim × bf16 per token.
    assert inference.kv_cache_bytes_per_token == 4 * 2 * 8 * 128 * BF16


def test_training_a_model_without_attention_has_no_attention_note(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_RECURRENT["mamba"]))
    report = estimate(str(tmp_path), setup=TrainingSetup(zero_stages=(0,), seq_len=16))
    assert report.inventory.attention_modules == 0
    assert report.training is not None and not any("attention" in note for note in report.training.notes)
    (tmp_path / "config.json").write_text(json.dumps(TINY_RECURRENT["jamba"]))
    assert estimate(str(tmp_path), setup=TrainingSetup(zero_stages=(0,), seq_len=16)).inventory.attention_modules
