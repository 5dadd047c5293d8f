"""--method lora / qlora / freeze: trainable counts are peft's own, states and activations follow the method."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from hfmem import estimate
from hfmem.build.config import build_transformers_config
from hfmem.build.inventory import count_parameters
from hfmem.build.trace import profile_activations
from hfmem.cli import cli
from hfmem.hub import resolve_model
from hfmem.memory.methods import matches_patterns
from hfmem.types import FinetuneSettings, ResolvedModel, TrainingSetup
from tests.conftest import TINY_LLAMA

LORA = FinetuneSettings("lora")


def peft_trainable(model_id: str, **lora_kwargs: object) -> int:
    """peft's own count: get_peft_model on the meta model, then ``get_nb_trainable_parameters()``."""
    import peft
    from accelerate import init_empty_weights

    from hfmem.build.classes import _instantiate

    resolved = resolve_model(model_id)
    config = build_transformers_config(resolved)
    model, _ = _instantiate(resolved, config, trust_remote_code=False)
    with init_empty_weights(include_buffers=True):
        peft_model = peft.get_peft_model(model, peft.LoraConfig(**lora_kwargs))  # type: ignore[arg-type]
    return int(peft_model.get_nb_trainable_parameters()[0])


CASES = [
    ("meta-llama/Llama-2-7b-hf", FinetuneSettings("lora"), {}),
    (
        "meta-llama/Llama-2-7b-hf",
        FinetuneSettings("lora", lora_rank=16, lora_targets=("all-linear",)),
        {"r": 16, "target_modules": "all-linear"},
    ),
    (
        "meta-llama/Llama-2-7b-hf",
        FinetuneSettings("lora", lora_rank=4, lora_targets=("q_proj", "k_proj", "down_proj")),
        {"r": 4, "target_modules": ["q_proj", "k_proj", "down_proj"]},
    ),
    (
        "meta-llama/Llama-2-7b-hf",
        FinetuneSettings("lora", lora_rank=16, lora_targets=("all-linear",), dora=True),
        {"r": 16, "target_modules": "all-linear", "use_dora": True},
    ),
    (
        "Qwen/Qwen2.5-0.5B-Instruct",
        FinetuneSettings("lora", modules_to_save=("lm_head",)),
        {"modules_to_save": ["lm_head"]},
    ),
    ("openai-community/gpt2", FinetuneSettings("lora"), {}),  # Conv1D
    (
        "openai-community/gpt2",
        FinetuneSettings("qlora", lora_targets=("all-linear",)),
        {"target_modules": "all-linear"},
    ),
    (
        "mistralai/Mixtral-8x7B-v0.1",
        FinetuneSettings("lora", lora_targets=("all-linear",)),
        {"target_modules": "all-linear"},
    ),
    ("google-bert/bert-base-uncased", FinetuneSettings("lora"), {}),
    # peft has no default targets for qwen3_moe: name them.
    (
        "Qwen/Qwen3-30B-A3B",
        FinetuneSettings("lora", lora_targets=("q_proj", "k_proj", "v_proj", "o_proj")),
        {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    ),
]


@pytest.mark.parametrize(("model_id", "finetune", "lora_kwargs"), CASES)
def test_trainable_count_is_pefts_own(model_id: str, finetune: FinetuneSettings, lora_kwargs: dict) -> None:  # type: ignore[type-arg]
    inventory = count_parameters(resolve_model(model_id), finetune=finetune)
    assert inventory.trainable_params == peft_trainable(model_id, **lora_kwargs)
    assert 0 < inventory.trainable_params < inventory.total_params


def test_llama2_lora_counts_by_hand() -> None:
    # Llama-2-7B (h 4096, i 11008, 32 layers), rank 16 on every linear but the head: r·(in + out) per linear.
    h, i, r = 4096, 11008, 16
    per_layer = 4 * r * (h + h) + 2 * r * (h + i) + r * (i + h)
    all_linear = FinetuneSettings("lora", lora_rank=16, lora_targets=("all-linear",))
    assert count_parameters(resolve_model("meta-llama/Llama-2-7b-hf"), finetune=all_linear).trainable_params == (
        32 * per_layer
    )
    # DoRA adds one magnitude per output feature of each adapted linear.
    dora = FinetuneSettings("lora", lora_rank=16, lora_targets=("all-linear",), dora=True)
    magnitudes = 32 * (4 * h + 2 * i + h)
    inventory = count_parameters(resolve_model("meta-llama/Llama-2-7b-hf"), finetune=dora)
    assert inventory.trainable_params == 32 * per_layer + magnitudes
    # peft's default for llama is q_proj, v_proj (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING), r = 8.
    default = count_parameters(resolve_model("meta-llama/Llama-2-7b-hf"), finetune=LORA)
    assert default.trainable_params == 32 * 2 * 8 * (h + h)


def test_freeze_trains_only_the_patterns() -> None:
    h, i, vocab = 4096, 11008, 32000
    layer = 4 * h * h + 3 * h * i + 2 * h  # attention, SwiGLU MLP, two RMSNorms
    freeze = FinetuneSettings("freeze", train_modules=("lm_head", "layers.31"))
    inventory = count_parameters(resolve_model("meta-llama/Llama-2-7b-hf"), finetune=freeze)
    assert inventory.trainable_params == vocab * h + layer
    assert inventory.total_params == 6_738_415_616  # unchanged: freezing adds nothing


@pytest.mark.parametrize(
    ("name", "patterns", "expected"),
    [
        ("model.layers.31.mlp.up_proj.weight", ["layers.31"], True),
        ("model.layers.3.mlp.up_proj.weight", ["layers.31"], False),
        ("model.layers.30.mlp.up_proj.weight", ["model.layers.3?.*"], True),
        ("lm_head.weight", ["lm_head"], True),
        ("model.layers.0.self_attn.q_proj.weight", ["*.mlp.*"], False),
        ("model.layers.30.input_layernorm.weight", [r"re:layers\.(30|31)\."], True),
    ],
)
def test_pattern_matching(name: str, patterns: list[str], expected: bool) -> None:
    assert matches_patterns(name, patterns) is expected


def test_lora_states_freeze_the_base_and_keep_fp32_adapters() -> None:
    report = estimate("meta-llama/Llama-2-7b-hf", setup=TrainingSetup(zero_stages=(0,), seq_len=16, finetune=LORA))
    adapters = 32 * 2 * 8 * (4096 + 4096)
    base = 6_738_415_616
    stage = report.training.stages[0]
    # Frozen base in bf16 (2 B), adapters fp32 (4 B, peft autocast_adapter_dtype): their own master, fp32 grads,
    # AdamW 2 × fp32 states. The gradients: all of them at the step (the peak is before it, where they are freed).
    assert stage.weights_bytes == 2 * base + 4 * adapters
    assert (stage.master_weights_bytes, stage.gradients_at_step_bytes, stage.optimizer_states_bytes) == (
        0,
        4 * adapters,
        8 * adapters,
    )
    assert report.inventory.trainable_params == adapters


def _nf4(numel: int, double_quant: bool = False) -> int:
    """bitsandbytes NF4 by hand: 4 bits per value + one fp32 absmax per 64 (double quant: uint8 absmax +
    fp32 per 256 blocks + one fp32 offset) — REFERENCE §4.5, bitsandbytes functional.quantize_4bit."""
    blocks = math.ceil(numel / 64)
    if not double_quant:
        return numel // 2 + 4 * blocks
    return numel // 2 + blocks + 4 * math.ceil(blocks / 256) + 4


@pytest.mark.parametrize("double_quant", [False, True])
def test_qlora_base_is_nf4(tmp_path, double_quant: bool) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    finetune = FinetuneSettings("qlora", lora_targets=("all-linear",), double_quant=double_quant)
    report = estimate(str(tmp_path), setup=TrainingSetup(zero_stages=(0,), seq_len=8, finetune=finetune))
    h, i, vocab, r = 64, 128, 1000, 8
    linears = [h * h] * 4 + [h * i] * 3  # q, k, v, o; gate, up, down
    quantized = 2 * sum(_nf4(n, double_quant) for n in linears)
    sixteen_bit = 2 * (2 * vocab * h + 2 * 2 * h + h)  # embeddings, untied head, 2 × 2 norms, final norm
    adapters = 2 * (4 * r * (h + h) + 3 * r * (h + i))
    stage = report.training.stages[0]
    assert stage.weights_bytes == quantized + sixteen_bit + 4 * adapters
    items = dict(stage.overhead_items)
    if stage.peak_phase != "optimizer_step":
        assert items["QLoRA dequantized weight (16-bit)"] == 2 * h * i  # the largest 4-bit linear, in bf16


def test_lora_activations_by_hand(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A middle layer of a Llama with all-linear LoRA, bf16, fused attention, per token (traced on meta)."""
    model = ResolvedModel("tiny", "local", TINY_LLAMA)
    finetune = FinetuneSettings("lora", lora_targets=("all-linear",))
    profile = profile_activations(model, batch_size=2, seq_len=8, attn="sdpa", dtype="bfloat16", finetune=finetune)
    h, i, a, r = 64, 128, 4, 8
    # Frozen base linears save nothing; each RMSNorm keeps its fp32 input (4h) and fp32 rsqrt (4): its bf16
    # output feeds frozen weights only. Attention: q, k, v, output (8h) + fp32 log-sum-exp (4a). Each of the 7
    # adapted linears: lora_A's 16-bit copy of its input (autocast) — 2h for q, k, v, o, gate, up, 2i for down —
    # and lora_B's input (2r). SwiGLU: gate output, SiLU output, up output (6i).
    per_token = 2 * (4 * h + 4) + 8 * h + 4 * a + 6 * 2 * h + 2 * i + 7 * 2 * r + 6 * i
    assert profile.layers[1].saved_bytes == per_token * 2 * 8


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--params", "7B", "--method", "lora"], "--method lora needs the model's modules"),
        (["openai-community/gpt2", "--method", "lora", "--lora-targets", "nope"], "peft could not add LoRA"),
        (["Qwen/Qwen3-30B-A3B", "--method", "lora"], "check --lora-targets"),  # peft has no qwen3_moe default
        (["openai-community/gpt2", "--method", "freeze", "--train-modules", "nope"], "matches no parameter"),
        (["openai-community/gpt2", "--method", "freeze"], "needs --train-modules"),
        (["openai-community/gpt2", "--dora"], "add --method lora or qlora"),
        (["openai-community/gpt2", "--method", "lora", "--double-quant"], "add --method qlora"),
    ],
)
def test_method_errors_are_one_line(runner: CliRunner, args: list[str], needle: str) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert result.stderr.count("\n") <= 2 and "Traceback" not in result.stderr


def test_lora_json_settings(runner: CliRunner) -> None:
    args = ["openai-community/gpt2", "--method", "lora", "--lora-rank", "16", "--lora-targets", "c_attn,c_proj"]
    result = runner.invoke(cli, [*args, "--seq-len", "8", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    settings = doc["training"]["settings"]
    assert settings["method"] == "lora"
    assert settings["adapter"]["lora_rank"] == 16
    assert settings["adapter"]["lora_targets"] == ["c_attn", "c_proj"]
    # GPT-2: 12 layers × (c_attn 768 → 2304, attn.c_proj 768 → 768, mlp.c_proj 3072 → 768), r = 16.
    assert doc["parameters"]["trainable"] == 12 * 16 * ((768 + 2304) + (768 + 768) + (3072 + 768))


def test_serving_plans_the_base_model_under_lora(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """LoRA trains adapters; the inference section serves the base model (adapters merged), so its weights are the
    base model's parameters at 2 bytes each, not the peft model's (which also has the rank-8 adapters)."""
    from hfmem.types import InferenceSetup
    from tests.conftest import TINY_LLAMA_PARAMS

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_LLAMA, "torch_dtype": "bfloat16"}))
    setup = TrainingSetup(seq_len=16, finetune=FinetuneSettings(method="lora"))
    report = estimate(str(folder), setup=setup, inference=InferenceSetup(context=64))
    assert report.inference is not None
    # peft's default targets for llama are q_proj and v_proj: 2 layers × 2 modules × r·(64 + 64) with r = 8.
    assert report.inventory.total_params == TINY_LLAMA_PARAMS + 2 * 2 * 8 * (64 + 64)
    assert report.inference.weights.unquantized_params == TINY_LLAMA_PARAMS
    assert report.inference.weights_bytes == 2 * TINY_LLAMA_PARAMS
    assert any("LoRA adapters merged" in note for note in report.notes)
