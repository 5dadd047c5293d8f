"""Loss paths, op-level checkpointing, every-k-th-layer checkpointing and activation offloading (issue 13).

Every expected number is computed here by hand from the model's config.json (bundled catalogue) and the framework
source the formulas cite (docs/techniques.md §1–3), never from running hfmem:

* logits: G = T·V·2 (bf16), Λ = T·V·4 (the fp32 log-softmax of transformers' ForCausalLMLoss);
* torchtune CEWithChunkedOutputLoss (num_output_chunks = N): forward G + Λ + Λ/N, backward Λ + 2Λ/N;
* Liger LigerFusedLinearCrossEntropy: grad_input T·h·2 + grad_weight V·h·2 kept, one chunk of
  next_pow2(⌈T / ⌈V/h⌉⌉) tokens' logits and a 4-byte loss per token inside the forward;
* torchtitan op-level SAC (HEAD SelectiveAC rule): per block, every matmul output but every second ``mm``, plus the
  attention kernel's output and fp32 log-sum-exp;
* transformers every_n_layers: layers 0, k, 2k… are checkpointed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import hfmem
from hfmem.build.trace import profile_activations
from hfmem.cli import cli
from hfmem.hub import resolve_model
from hfmem.memory.activations import estimate_activations, liger_chunk_tokens
from hfmem.memory.parallel import pipeline_stages
from hfmem.memory.peak import phase_candidates, stage_activations
from hfmem.types import ActivationProfile, FinetuneSettings, LayerProfile, ParallelSettings, TrainingSetup
from tests.conftest import CATALOGUE

LLAMA_1B = str(CATALOGUE / "meta-llama__Llama-3.2-1B")
# meta-llama/Llama-3.2-1B config.json
H, F, HEADS, KV_HEADS, LAYERS, VOCAB = 2048, 8192, 32, 8, 16, 128256
KV = KV_HEADS * (H // HEADS)  # 512: k (and v) features per token
SEQ = 256
T = SEQ  # batch 1


@pytest.fixture(scope="module")
def llama() -> ActivationProfile:
    return profile_activations(resolve_model(LLAMA_1B), batch_size=1, seq_len=SEQ, attn="sdpa", dtype="bfloat16")


def test_the_profile_knows_the_head(llama: ActivationProfile) -> None:
    assert llama.hidden_size == H
    assert llama.head_trainable  # full fine-tuning trains the (tied) head
    assert llama.head_saved_bytes == T * H * 2  # the LM head's Linear saves its bf16 input
    assert (llama.logits_bytes, llama.logits_saved_bytes) == (T * VOCAB * 2, T * VOCAB * 4)


def test_hf_loss_is_unchanged(llama: ActivationProfile) -> None:
    est = estimate_activations(llama, "none")
    assert est.logits_forward_bytes == 10 * T * VOCAB  # G + fp32 copy + Λ = 2 + 4 + 4 bytes per logit
    assert est.logits_backward_bytes == 14 * T * VOCAB  # G + Λ + two fp32 gradients


@pytest.mark.parametrize("chunks", [1, 8, 16])
def test_chunked_loss(llama: ActivationProfile, chunks: int) -> None:
    est = estimate_activations(llama, "none", loss="chunked", loss_chunks=chunks)
    logits, log_softmax = 2 * T * VOCAB, 4 * T * VOCAB
    chunk = -(-log_softmax // chunks)
    assert est.logits_saved_bytes == log_softmax
    assert est.logits_forward_bytes == logits + log_softmax + chunk
    assert est.logits_backward_bytes == log_softmax + 2 * chunk
    if chunks == 8:  # 6.5 and 5 bytes per logit
        assert 2 * est.logits_forward_bytes == 13 * T * VOCAB and est.logits_backward_bytes == 5 * T * VOCAB
    # The other activations do not change.
    assert est.saved_bytes == estimate_activations(llama, "none").saved_bytes


def test_liger_chunk_size() -> None:
    # The source's own comment (fused_linear_cross_entropy.py): T = 16384, V = 32000, h = 4096 → 2048.
    assert liger_chunk_tokens(16384, 32000, 4096) == 2048
    # Llama-3.2-1B: ⌈128256 / 2048⌉ = 63, ⌈256 / 63⌉ = 5 → 8.
    assert liger_chunk_tokens(256, VOCAB, H) == 8
    assert liger_chunk_tokens(3, VOCAB, H) == 1  # ⌈3 / 63⌉ = 1


def test_fused_loss(llama: ActivationProfile) -> None:
    est = estimate_activations(llama, "none", loss="fused")
    kept = T * H * 2 + VOCAB * H * 2  # grad_input + grad_weight, bf16
    assert est.logits_saved_bytes == kept
    assert est.logits_forward_bytes == kept + 8 * VOCAB * 2 + 4 * T  # one chunk of 8 tokens' logits + loss_1d
    assert est.logits_backward_bytes == kept
    # The head never runs, so its input (T·h·2) is not saved.
    assert estimate_activations(llama, "none").saved_bytes - est.saved_bytes == T * H * 2


def test_fused_loss_with_a_frozen_head_keeps_no_weight_gradient() -> None:
    lora = profile_activations(
        resolve_model(LLAMA_1B),
        batch_size=1,
        seq_len=SEQ,
        attn="sdpa",
        dtype="bfloat16",
        finetune=FinetuneSettings(method="lora"),
    )
    assert not lora.head_trainable
    est = estimate_activations(lora, "none", loss="fused")
    assert est.logits_saved_bytes == T * H * 2


def test_ops_checkpointing_saves_the_policy_outputs(llama: ActivationProfile) -> None:
    # HF Llama block order: q (mm 1, saved), k (mm 2), v (mm 3, saved), attention (output + fp32 lse, saved),
    # o (mm 4), gate (mm 5, saved), up (mm 6), down (mm 7, saved).
    per_token = 2 * H + 2 * KV + (2 * H + 4 * HEADS) + 2 * F + 2 * H
    assert per_token == 29_824
    assert all(layer.ops_saved_bytes == per_token * T for layer in llama.layers)
    assert all(0 < layer.ops_reused_bytes <= layer.saved_bytes for layer in llama.layers)
    ops = estimate_activations(llama, "ops")
    assert ops.saved_bytes == sum(layer.input_bytes + per_token * T for layer in llama.layers) + llama.other_bytes
    # Less than no checkpointing, more than full; the recompute reuses the cached outputs.
    full = estimate_activations(llama, "full")
    none = estimate_activations(llama, "none")
    assert full.saved_bytes < ops.saved_bytes < none.saved_bytes
    assert ops.recompute_bytes == max(layer.saved_bytes - layer.ops_reused_bytes for layer in llama.layers)
    assert ops.recompute_bytes < full.recompute_bytes


def test_ops_checkpointing_under_tensor_parallelism() -> None:
    # Megatron TP splits what lies between the column-parallel q/k/v, gate/up and the row-parallel o, down: of the
    # saved outputs q, v, the attention output + lse and gate are split, down's output (after the all-reduce) is
    # replicated.
    profile = profile_activations(
        resolve_model(LLAMA_1B), batch_size=1, seq_len=SEQ, attn="sdpa", dtype="bfloat16", tensor_parallel=True
    )
    split = 2 * H + 2 * KV + (2 * H + 4 * HEADS) + 2 * F
    assert all(layer.ops_tp_split_bytes == split * T for layer in profile.layers)
    assert all(layer.ops_saved_bytes == (split + 2 * H) * T for layer in profile.layers)
    setup = TrainingSetup(
        seq_len=SEQ, gpus_per_node=2, zero_stages=(1,), grad_checkpointing="ops", parallel=ParallelSettings(tp=2)
    )
    est = stage_activations(profile, setup, pipeline_stages(LAYERS, setup)[0])
    assert est is not None
    # Each layer keeps its (replicated) input and ⌈split / 2⌉ + the replicated rest of the cached outputs.
    per_layer = [layer.input_bytes + -(-split * T // 2) + 2 * H * T for layer in profile.layers]
    outside = estimate_activations(profile, "ops").saved_bytes - sum(
        layer.input_bytes + layer.ops_saved_bytes for layer in profile.layers
    )
    assert est.saved_bytes == sum(per_layer) + outside


def test_ops_checkpointing_always_saves_biased_projections() -> None:
    # Qwen2.5-0.5B: q, k, v have biases, so they run as addmm, which torchtitan's HEAD policy always saves and does
    # not count; the mm count then runs o (1, saved), gate (2), up (3, saved), down (4).
    h, f, heads, kv = 896, 4864, 14, 2 * 64
    profile = profile_activations(
        resolve_model(str(CATALOGUE / "Qwen__Qwen2.5-0.5B-Instruct")),
        batch_size=1,
        seq_len=64,
        attn="sdpa",
        dtype="bfloat16",
    )
    per_token = (2 * h + 2 * kv + 2 * kv) + (2 * h + 4 * heads) + 2 * h + 2 * f
    assert all(layer.ops_saved_bytes == per_token * 64 for layer in profile.layers)


@pytest.mark.parametrize("every", [1, 2, 3, 16, 17])
def test_checkpoint_every_k_layers(llama: ActivationProfile, every: int) -> None:
    checkpointed = [i for i in range(LAYERS) if i % every == 0]  # transformers: layer_index % every_n_layers == 0
    assert len(checkpointed) == -(-LAYERS // every)
    est = estimate_activations(llama, "full", checkpoint_every=every)
    kept = sum(layer.input_bytes if i in checkpointed else layer.saved_bytes for i, layer in enumerate(llama.layers))
    assert est.saved_bytes == kept + llama.other_bytes
    assert est.recompute_bytes == max(llama.layers[i].saved_bytes for i in checkpointed)


def test_activation_offload_keeps_the_head_and_the_stash(llama: ActivationProfile) -> None:
    est = estimate_activations(llama, "full", activation_offload=True)
    inputs = sum(layer.input_bytes for layer in llama.layers)
    assert est.saved_bytes == T * H * 2  # only the LM head's input stays (torchtune's NoOpManager)
    assert est.offloaded_bytes == inputs + llama.other_bytes - T * H * 2
    largest_input = max(layer.input_bytes for layer in llama.layers)
    assert est.offload_forward_bytes == 5 * largest_input  # max_fwd_stash_size = 5
    assert est.offload_backward_bytes == largest_input  # one checkpointed layer's input comes back
    # With op-level checkpointing the cached op outputs are not saved through autograd's hooks: they stay.
    ops = estimate_activations(llama, "ops", activation_offload=True)
    assert ops.saved_bytes == T * H * 2 + sum(layer.ops_saved_bytes for layer in llama.layers)
    assert ops.offloaded_bytes == est.offloaded_bytes


def _plan(**kwargs: Any) -> hfmem.Report:
    # The fused AdamW step allocates no temporary, so these rows peak where the activations and logits are (with
    # torch's foreach default a 1B full fine-tune peaks at the step: docs/techniques.md §4.1), and gradient
    # accumulation keeps the gradients live at the loss (without it they are freed after each step and these short
    # rows would peak at the step, where all the gradients are).
    kwargs.setdefault("optimizer_impl", "fused")
    kwargs.setdefault("grad_accumulation", 4)
    setup = TrainingSetup(batch_size=1, seq_len=SEQ, zero_stages=(0,), **kwargs)
    return hfmem.estimate(LLAMA_1B, setup=setup, cache=False)


def test_the_peak_is_the_largest_phase_and_offload_shows_in_cpu_ram() -> None:
    for kwargs in (
        {},
        {"loss": "chunked"},
        {"loss": "fused"},
        {"grad_checkpointing": "ops"},
        {"grad_checkpointing": "full", "checkpoint_every": 4, "activation_offload": True, "gpus_per_node": 2},
    ):
        report = _plan(**kwargs)
        assert report.training is not None and report.training.profile is not None
        row = report.training.stages[0]
        profile = report.training.profile
        assert profile is not None
        estimate = estimate_activations(
            profile,
            kwargs.get("grad_checkpointing", "none"),
            loss=kwargs.get("loss", "hf"),
            checkpoint_every=kwargs.get("checkpoint_every", 1),
            activation_offload=kwargs.get("activation_offload", False),
        )
        phases = phase_candidates(report.inventory, report.training.setup, row, estimate)
        assert row.total_bytes == max(p.total_bytes for p in phases)
        assert row.peak_phase == max(phases, key=lambda p: p.total_bytes).peak_phase
        assert row.activation_offloaded_bytes == estimate.offloaded_bytes
        if kwargs.get("activation_offload"):
            assert row.cpu_bytes_per_node == 2 * estimate.offloaded_bytes > 0  # 2 GPUs per node, no ZeRO-Offload


def test_fused_loss_at_short_sequences_costs_more_than_it_saves() -> None:
    # Liger keeps grad_weight, a whole LM-head-sized tensor (V·h·2 = 525 MB here), from forward to backward
    # (docs/techniques.md §10.3): at 256 tokens that exceeds HF's 14 bytes per logit (459 MB).
    hf, fused = _plan(), _plan(loss="fused")
    assert hf.training is not None and fused.training is not None
    assert hf.training.stages[0].logits_bytes == 14 * T * VOCAB == 459_669_504  # backward, G + 3Λ
    forward = T * H * 2 + VOCAB * H * 2 + 8 * VOCAB * 2 + 4 * T  # kept + one chunk of logits + loss_1d
    assert fused.training.stages[0].logits_bytes == forward == 528_438_272
    assert fused.training.stages[0].peak_phase == "forward"


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _json(runner: CliRunner, *args: str) -> dict[str, Any]:
    result = runner.invoke(
        cli,
        [
            LLAMA_1B,
            "--seq-len",
            str(SEQ),
            "--zero",
            "0",
            "--training-only",
            "--json",
            "--optimizer-impl",
            "fused",
            "--grad-accumulation",  # the gradients live at the loss, as in `_plan`
            "4",
            *args,
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_flags_reach_the_plan_and_the_json(runner: CliRunner) -> None:
    doc = _json(
        runner,
        "--loss",
        "chunked",
        "--loss-chunks",
        "4",
        "--grad-checkpointing",
        "full",
        "--checkpoint-every",
        "2",
        "--activation-offload",
    )
    settings = doc["training"]["settings"]
    assert (settings["loss"], settings["loss_chunks"]) == ("chunked", 4)
    assert (settings["grad_checkpointing"], settings["checkpoint_every"], settings["activation_offload"]) == (
        "full",
        2,
        True,
    )
    stage = doc["training"]["stages"][0]
    assert stage["activation_detail"]["offloaded_bytes"] > 0
    assert stage["cpu_bytes_per_node"] == stage["activation_detail"]["offloaded_bytes"]
    # Defaults: the new keys are there, existing ones unchanged.
    plain = _json(runner)["training"]["settings"]
    assert (plain["loss"], plain["loss_chunks"], plain["checkpoint_every"], plain["activation_offload"]) == (
        "hf",
        None,
        1,
        False,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--checkpoint-every", "0", "--grad-checkpointing", "full"], "--checkpoint-every must be at least 1"),
        (["--checkpoint-every", "2"], "add --grad-checkpointing"),
        (["--activation-offload"], "add --grad-checkpointing"),
        (["--loss", "chunked", "--loss-chunks", "0"], "--loss-chunks must be at least 1"),
        (["--loss", "softmax"], "'softmax' is not one of"),
        (["--grad-checkpointing", "layers"], "'layers' is not one of"),
    ],
)
def test_bad_loss_and_recompute_options(runner: CliRunner, args: list[str], fragment: str) -> None:
    result = runner.invoke(cli, [LLAMA_1B, "--training-only", *args])
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1


def test_a_torchtune_recipe_with_chunked_loss_gives_the_flags_numbers(runner: CliRunner, tmp_path: Any) -> None:
    # The keys torchtune's recipes read (recipes/full_finetune_single_device.py): loss._component_ and its
    # num_output_chunks, enable_activation_checkpointing, enable_activation_offloading.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "batch_size: 2\n"
        "loss:\n  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss\n  num_output_chunks: 4\n"
        "enable_activation_checkpointing: True\nenable_activation_offloading: True\ndtype: bf16\n"
    )
    launched = _json(runner, "--launch-config", str(recipe))
    typed = _json(
        runner,
        *("--batch-size", "2", "--loss", "chunked", "--loss-chunks", "4", "--grad-checkpointing", "full"),
        *("--activation-offload", "--precision", "bf16"),
    )
    assert launched["training"] == typed["training"]
    applied = {a["option"] for a in launched["launch"]["applied"]}
    assert {"--loss", "--loss-chunks", "--grad-checkpointing", "--activation-offload"} <= applied
    # And the file's settings matter: the default loss path would give other logits.
    plain = _json(runner, "--batch-size", "2", "--grad-checkpointing", "full", "--precision", "bf16")
    stage, plain_stage = launched["training"]["stages"][0], plain["training"]["stages"][0]
    assert stage["per_gpu_bytes"]["logits"] != plain_stage["per_gpu_bytes"]["logits"]
    assert stage["activation_detail"]["offloaded_bytes"] > 0 == plain_stage["activation_detail"]["offloaded_bytes"]


def test_selective_with_a_fused_kernel_says_it_saves_nothing(llama: ActivationProfile) -> None:
    # A fused kernel never keeps the scores that selective recomputation drops: the same bytes as no checkpointing.
    assert estimate_activations(llama, "selective") == estimate_activations(llama, "none")
    report = _plan(grad_checkpointing="selective")
    assert report.training is not None
    assert any("selective recomputes the attention scores" in note for note in report.training.notes)
    assert not any("selective" in note for note in (_plan().training.notes or ()))  # type: ignore[union-attr]


def test_a_typed_loss_overrides_a_recipes_chunked_loss(runner: CliRunner, tmp_path: Any) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("loss:\n  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss\n  num_output_chunks: 4\n")
    launched = _json(runner, "--launch-config", str(recipe), "--loss", "fused")
    assert launched["training"] == _json(runner, "--loss", "fused")["training"]  # the file's chunks do not matter
    assert launched["training"]["settings"]["loss_chunks"] is None


def test_loss_is_a_sweepable_list(runner: CliRunner) -> None:
    result = runner.invoke(
        cli,
        [LLAMA_1B, "--seq-len", str(SEQ), "--zero", "0", "--training-only", "--loss", "hf,chunked"]
        + ["--optimizer-impl", "fused"],
    )
    assert result.exit_code == 0, result.stderr
    assert "--loss" in result.stdout and "chunked" in result.stdout
    one = {
        loss: _json(runner, "--loss", loss)["training"]["stages"][0]["per_gpu_bytes"]["total"]
        for loss in ("hf", "chunked")
    }
    assert one["chunked"] < one["hf"]  # 6.5 against 14 bytes per logit at each one's peak


# ---------------------------------------------------------------------------------------------------------------
# Laws over any profile

_bytes = st.integers(min_value=0, max_value=2**34)


@st.composite
def _profiles(draw: Any) -> ActivationProfile:
    layers = []
    for i in range(draw(st.integers(min_value=1, max_value=12))):
        inputs = draw(_bytes)
        ops = draw(_bytes)
        saved = inputs + ops + draw(_bytes)  # a layer saves at least its input and what the ops policy caches
        layers.append(LayerProfile(f"l{i}", saved, inputs, 0, ops, draw(st.integers(0, saved))))
    tokens, vocab = draw(st.integers(1, 4096)), draw(st.integers(2, 300_000))
    element = draw(st.sampled_from([2, 4]))
    head = draw(st.integers(0, tokens * 8192))
    return ActivationProfile(
        batch_size=1,
        seq_len=tokens,
        attn="sdpa",
        dtype={2: "bfloat16", 4: "float32"}[element],
        vocab_size=vocab,
        layers=tuple(layers),
        fused_layers=tuple(layers),
        other_bytes=head + draw(_bytes),
        logits_saved_bytes=tokens * vocab * 4,
        logits_bytes=tokens * vocab * element,
        hidden_size=draw(st.integers(1, 16384)),
        head_trainable=draw(st.booleans()),
        head_saved_bytes=head,
    )


@settings(max_examples=200, deadline=None)
@given(_profiles(), st.integers(1, 64))
def test_chunking_never_costs_more_than_the_hf_loss(profile: ActivationProfile, chunks: int) -> None:
    hf = estimate_activations(profile, "none")
    chunked = estimate_activations(profile, "none", loss="chunked", loss_chunks=chunks)
    fewer = estimate_activations(profile, "none", loss="chunked", loss_chunks=max(1, chunks // 2))
    assert chunked.logits_forward_bytes <= hf.logits_forward_bytes
    assert chunked.logits_backward_bytes <= hf.logits_backward_bytes
    assert chunked.logits_forward_bytes <= fewer.logits_forward_bytes  # more chunks, smaller transients
    assert chunked.logits_backward_bytes <= fewer.logits_backward_bytes


@settings(max_examples=200, deadline=None)
@given(_profiles(), st.sampled_from(["full", "selective", "ops"]), st.integers(1, 13))
def test_offloading_moves_bytes_and_checkpointing_fewer_layers_keeps_more(
    profile: ActivationProfile, policy: Any, every: int
) -> None:
    kept = estimate_activations(profile, policy, checkpoint_every=every)
    moved = estimate_activations(profile, policy, checkpoint_every=every, activation_offload=True)
    assert moved.saved_bytes + moved.offloaded_bytes == kept.saved_bytes  # nothing lost, nothing counted twice
    assert moved.saved_bytes <= kept.saved_bytes and moved.offloaded_bytes >= 0
    assert moved.offload_forward_bytes <= moved.offloaded_bytes
    # Checkpointing one layer in 2·every keeps at least what one in every keeps; no checkpointing keeps the most.
    sparser = estimate_activations(profile, policy, checkpoint_every=2 * every)
    assert kept.saved_bytes <= sparser.saved_bytes <= estimate_activations(profile, "none").saved_bytes
    assert (
        estimate_activations(profile, "full", checkpoint_every=every).saved_bytes
        <= estimate_activations(profile, "ops", checkpoint_every=every).saved_bytes
    )


def test_a_model_without_a_language_model_head_keeps_its_own_loss() -> None:
    roberta = str(CATALOGUE / "FacebookAI__roberta-base")  # RobertaModel: no LM head, no logits

    def plan(loss: Any) -> hfmem.Report:
        return hfmem.estimate(roberta, setup=TrainingSetup(seq_len=64, zero_stages=(0,), loss=loss), cache=False)

    hf, fused = plan("hf"), plan("fused")
    assert hf.training is not None and fused.training is not None
    assert fused.training.stages[0].total_bytes == hf.training.stages[0].total_bytes
    assert any("has no such head" in note for note in fused.training.notes)
