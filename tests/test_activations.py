"""Activations, logits and the peak against hand computations from the modelling code, and the fit verdict.

The per-token figures come from reading transformers 5.24's `modeling_llama.py` (RMSNorm upcasts to fp32 and
keeps the normalised tensor; SwiGLU keeps gate, SiLU, up and product; attention keeps q, k, v and the output) and
`loss/loss_utils.py` (logits upcast to fp32, log-softmax kept), not from running hfmem.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import hfmem
from hfmem.build.trace import profile_activations
from hfmem.cli import cli
from hfmem.hub import resolve_model
from hfmem.memory.activations import context_length, default_seq_len, estimate_activations, extrapolate_profile
from hfmem.types import GpuTarget, TrainingSetup
from tests.conftest import CATALOGUE, FIXTURES

LLAMA2 = "meta-llama/Llama-2-7b-hf"
H, INTER, HEADS, LAYERS, VOCAB = 4096, 11008, 32, 32, 32000  # Llama-2-7b config.json


def llama2_layer_bytes_per_token(kv_heads: int = 32) -> int:
    """Bytes one Llama-2-7B layer keeps per token in bf16 with a fused attention kernel."""
    head_dim = H // HEADS
    norms = 2 * (4 * H + 2 * H + 2 * H)  # fp32 upcast + normalised bf16 + output (the next linear's input)
    attention = 2 * H + 2 * 2 * kv_heads * head_dim + 2 * H + 4 * HEADS  # q, k, v, output, fp32 log-sum-exp
    mlp = 4 * 2 * INTER  # gate, SiLU(gate), up, product
    rsqrt = 2 * 4  # one fp32 value per token per norm
    return norms + attention + mlp + rsqrt


@pytest.fixture(scope="module")
def llama2() -> object:
    return resolve_model(str(CATALOGUE / "meta-llama__Llama-2-7b-hf"))


def test_llama2_layer_matches_the_hand_count(llama2: object) -> None:
    tokens = 4096
    profile = profile_activations(llama2, batch_size=1, seq_len=tokens, attn="sdpa", dtype="bfloat16")  # type: ignore[arg-type]
    assert len(profile.layers) == LAYERS
    # Layer 0 also keeps the rotary cos/sin tables it uses first: 2 × seq × head_dim × 2 bytes.
    assert profile.layers[0].saved_bytes == llama2_layer_bytes_per_token() * tokens + 2 * tokens * 128 * 2
    assert all(layer.saved_bytes == llama2_layer_bytes_per_token() * tokens for layer in profile.layers[1:])
    # Outside the layers: the final norm (8h + 4 per token), token ids and labels (int64), 3 loss scalars.
    assert profile.other_bytes == (8 * H + 4) * tokens + 16 * tokens + 12
    assert all(layer.input_bytes == 2 * H * tokens for layer in profile.layers[1:])
    # Logits: bf16 output, fp32 log-softmax.
    assert (profile.logits_bytes, profile.logits_saved_bytes) == (2 * tokens * VOCAB, 4 * tokens * VOCAB)


def test_eager_keeps_the_softmax(llama2: object) -> None:
    tokens = 1024
    fused = profile_activations(llama2, batch_size=1, seq_len=tokens, attn="sdpa", dtype="bfloat16")  # type: ignore[arg-type]
    eager = profile_activations(llama2, batch_size=1, seq_len=tokens, attn="eager", dtype="bfloat16")  # type: ignore[arg-type]
    # Eager keeps the fp32 softmax (4·a·s) and its bf16 copy (2·a·s) per token, and no log-sum-exp (4·a).
    extra = (6 * HEADS * tokens - 4 * HEADS) * tokens
    assert eager.layers[1].saved_bytes - fused.layers[1].saved_bytes == extra
    assert eager.fused_layers == fused.layers


def test_gqa_keeps_k_and_v_at_their_own_heads() -> None:
    # Llama-3.1-8B: 8 KV heads of 32, i = 14336: attention keeps q 2h + k, v 2·(h/4) + output 2h.
    model = resolve_model(str(CATALOGUE / "meta-llama__Llama-3.1-8B"))
    tokens = 512
    profile = profile_activations(model, batch_size=1, seq_len=tokens, attn="sdpa", dtype="bfloat16")
    per_token = 16 * H + (2 * H + 2 * 2 * H // 4 + 2 * H + 4 * 32) + 8 * 14336 + 8
    assert profile.layers[1].saved_bytes == per_token * tokens


def test_checkpointing_and_logits_formulas(llama2: object) -> None:
    tokens = 2048
    profile = profile_activations(llama2, batch_size=1, seq_len=tokens, attn="sdpa", dtype="bfloat16")  # type: ignore[arg-type]
    none = estimate_activations(profile, "none")
    full = estimate_activations(profile, "full")
    selective = estimate_activations(profile, "selective")
    assert none.recompute_bytes == 0
    # Full: 2·h bytes per token per layer kept (Korthikanti et al. 2022, "2sbh"), plus what every checkpointed
    # layer is handed once: rotary cos/sin (2 × seq × head_dim, bf16) and the position ids (int64); one layer
    # recomputed.
    shared = 2 * tokens * 128 * 2 + 8 * tokens
    assert full.saved_bytes == LAYERS * 2 * H * tokens + shared + profile.other_bytes
    assert full.recompute_bytes == max(layer.saved_bytes for layer in profile.layers)
    # Selective with a fused kernel changes nothing.
    assert (selective.saved_bytes, selective.recompute_bytes) == (none.saved_bytes, 0)
    # Logits, bytes per logit: 2 + 4 + 4 at the loss, 2 + 4 + 4 + 4 when backward starts.
    assert none.logits_forward_bytes == 10 * tokens * VOCAB
    assert none.logits_backward_bytes == 14 * tokens * VOCAB


def test_activations_are_linear_in_the_batch(llama2: object) -> None:
    one, two, five = (
        profile_activations(llama2, batch_size=b, seq_len=256, attn="sdpa", dtype="bfloat16")  # type: ignore[arg-type]
        for b in (1, 2, 5)
    )
    guess = extrapolate_profile(one, two, 5)
    assert guess.layers == five.layers and guess.logits_bytes == five.logits_bytes
    assert guess.logits_saved_bytes == five.logits_saved_bytes
    assert abs(guess.other_bytes - five.other_bytes) <= 64  # a few loss scalars are not per-sample


def test_dropout_override_removes_the_masks() -> None:
    # GPT-2 keeps 1-byte dropout masks (resid/attn/embd_pdrop 0.1); --dropout 0 removes them.
    model = resolve_model(str(CATALOGUE / "openai-community__gpt2"))
    kept = profile_activations(model, batch_size=1, seq_len=128, attn="eager", dtype="bfloat16")
    none = profile_activations(model, batch_size=1, seq_len=128, attn="eager", dtype="bfloat16", dropout=0.0)
    # Per layer: attention-probability mask a·s² + two residual masks 2·s·h; plus the embedding mask s·h.
    heads, hidden, seq = 12, 768, 128
    masks_per_layer = heads * seq * seq + 2 * seq * hidden
    # Dropout also keeps its (16-bit) output where the next op saves it: check the masks are at least gone.
    assert sum(layer.saved_bytes for layer in kept.layers) - sum(layer.saved_bytes for layer in none.layers) >= (
        12 * masks_per_layer
    )


def test_default_sequence_length() -> None:
    assert context_length({"max_position_embeddings": 131072}) == 131072
    assert context_length({"n_positions": 1024}) == 1024
    assert context_length({"text_config": {"max_position_embeddings": 8192}}) == 8192
    assert default_seq_len({"max_position_embeddings": 131072})[0] == 4096
    assert default_seq_len({"n_positions": 1024}) == (1024, "the model's context length 1,024")
    assert default_seq_len({})[0] == 4096


# --- peak and verdict ---------------------------------------------------------------------------------------


def plan(**kwargs: object) -> hfmem.Report:
    return hfmem.estimate(LLAMA2, setup=TrainingSetup(**kwargs))  # type: ignore[arg-type]


def test_peak_components_add_up_and_name_their_phase() -> None:
    stage = plan(zero_stages=(3,), gpus_per_node=8, seq_len=1024).training.stages[0]
    parts = (
        stage.weights_bytes,
        stage.master_weights_bytes,
        stage.gradients_bytes,
        stage.optimizer_states_bytes,
        stage.activations_bytes,
        stage.logits_bytes,
        stage.overhead_bytes,
    )
    assert stage.total_bytes == sum(parts)
    assert stage.peak_phase == "backward"
    assert stage.logits_bytes == 14 * 1024 * VOCAB
    assert dict(stage.overhead_items)["CUDA context + cuBLAS workspace"] == 512 * 2**20


def test_optimizer_step_peaks_when_activations_are_small() -> None:
    # One token: activations are tiny, DeepSpeed's fp32 gradient copy at the step dominates.
    stage = plan(zero_stages=(2,), gpus_per_node=2, seq_len=1).training.stages[0]
    assert stage.peak_phase == "optimizer_step"
    assert stage.activations_bytes == stage.logits_bytes == 0
    assert dict(stage.overhead_items)["fp32 gradient partition at step"] == 4 * -(-6_738_415_616 // 2)


def test_verdict_min_gpus_and_max_batch_are_consistent() -> None:
    gpu = GpuTarget("80 GiB", 80 * 2**30)
    report = hfmem.estimate(
        LLAMA2,
        setup=TrainingSetup(zero_stages=(3,), gpus_per_node=8, seq_len=2048, grad_checkpointing="full", gpu=gpu),
        find_max_batch=True,
    )
    stage = report.training.stages[0]
    assert stage.fits is True and stage.headroom_bytes == gpu.usable_bytes - stage.total_bytes
    assert stage.max_batch_size is not None and stage.min_gpus is not None

    def fits(**overrides: object) -> bool:
        setup = dict(zero_stages=(3,), gpus_per_node=8, seq_len=2048, grad_checkpointing="full", gpu=gpu)
        setup.update(overrides)
        return bool(hfmem.estimate(LLAMA2, setup=TrainingSetup(**setup)).training.stages[0].fits)  # type: ignore[arg-type]

    assert fits(batch_size=stage.max_batch_size) and not fits(batch_size=stage.max_batch_size + 1)
    assert fits(gpus_per_node=stage.min_gpus)
    if stage.min_gpus > 1:
        assert not fits(gpus_per_node=stage.min_gpus - 1)


def test_params_plan_has_no_activations() -> None:
    report = hfmem.estimate(params=7_000_000_000)
    assert all(s.activations_bytes == s.logits_bytes == 0 for s in report.training.stages)
    assert report.training.unmeasured is not None and "--params has no model to run" in report.training.unmeasured


@pytest.mark.parametrize(("memory", "code"), [("1000GiB", 0), ("16GiB", 3)])
def test_check_gates_on_the_verdict(memory: str, code: int) -> None:
    args = [LLAMA2, "--zero", "3", "--gpus", "8", "--gpu-memory", memory, "--check", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.stderr
    doc = json.loads(result.stdout)
    assert doc["gpu"]["usable_bytes"] == int(memory.removesuffix("GiB")) * 2**30
    assert doc["training"]["stages"][0]["fits"] is (code == 0)


def test_gpu_by_name_in_table() -> None:
    result = CliRunner().invoke(cli, [LLAMA2, "--gpus", "8", "--gpu", "h100-sxm", "--zero", "3"])
    assert result.exit_code == 0
    assert "Fit on NVIDIA H100" in result.stdout and "79.11 GiB usable by PyTorch" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((LLAMA2, "--check"), "--check needs a GPU"),
        ((LLAMA2, "--gpu", "h100-sxm", "--gpu-memory", "80GiB"), "not both"),
        ((LLAMA2, "--gpu", "z9000"), "--gpu-memory"),
        ((LLAMA2, "--gpu-memory", "lots"), "--gpu-memory"),
        ((LLAMA2, "--max-batch"), "--max-batch needs a GPU"),
        ((LLAMA2, "--batch-size", "0"), "--batch-size"),
        ((LLAMA2, "--dropout", "1.5"), "--dropout"),
        ((LLAMA2, "--attn", "flash3"), "--attn"),
    ],
)
def test_bad_peak_options(args: tuple[str, ...], fragment: str) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.stderr


def test_list_gpus() -> None:
    result = CliRunner().invoke(cli, ["--list-gpus"])
    assert result.exit_code == 0 and "h100-sxm" in result.stdout and "79.11 GiB" in result.stdout
    rows = json.loads(CliRunner().invoke(cli, ["--list-gpus", "--json"]).stdout)
    assert all(row["source"] for row in rows)


def test_remote_code_model_is_traced_too(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from pathlib import Path

    monkeypatch.setenv("HF_MODULES_CACHE", str(Path(str(tmp_path)) / "modules"))
    folder = Path(str(tmp_path)) / "repo"
    shutil.copytree(FIXTURES / "remote_code", folder)
    report = hfmem.estimate(str(folder), trust_remote_code=True, setup=TrainingSetup(zero_stages=(0,), seq_len=16))
    # modeling_tiny.py: embedding → 2 linears → head; no labels argument, so no loss and no saved logits.
    stage = report.training.stages[0]
    # what the trace saved (the tiny model peaks at the optimizer step, where no activation is live)
    assert stage.activation_saved_bytes > 0


def catalogue_trace_cases() -> list[object]:
    """Every catalogue folder; all but the smallest entry of each model_type are marked ``slow``.

    Tracing all 100+ entries takes minutes on two cores; one entry per model type runs by default and still reaches
    every modelling class the catalogue uses, and ``-m slow`` (CI) runs the rest.
    """
    folders = sorted(p.parent for p in CATALOGUE.glob("*/expected.json"))
    smallest: dict[str, tuple[int, Path]] = {}
    for folder in folders:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]
        total = json.loads((folder / "expected.json").read_text(encoding="utf-8"))["total_params"]
        if model_type not in smallest or total < smallest[model_type][0]:
            smallest[model_type] = (total, folder)
    fast = {folder for _, folder in smallest.values()}
    return [pytest.param(f, id=f.name, marks=() if f in fast else pytest.mark.slow) for f in folders]


@pytest.mark.parametrize("folder", catalogue_trace_cases())
def test_every_catalogue_model_is_traced(folder: object) -> None:
    report = hfmem.estimate(str(folder), setup=TrainingSetup(zero_stages=(0,), seq_len=64))
    stage = report.training.stages[0]
    assert stage.activation_saved_bytes > 0
    # A bare encoder (BertModel, MPNetModel: what sentence-transformers checkpoints name) has no head, so no logits.
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    architecture = json.loads((Path(str(folder)) / "expected.json").read_text(encoding="utf-8"))["architecture"]
    assert (stage.logits_saved_bytes > 0) == (architecture not in MODEL_MAPPING_NAMES.values())
