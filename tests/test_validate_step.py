"""benchmarks/validate_step.py: the live-tensor tracker on a step computed by hand, and one model against hfmem.

The tracker is checked on ``nn.Linear(16, 8, bias=False)`` (fp32) with an input ``x`` of shape (4, 16) that needs
no gradient, ``loss = linear(x).sum()`` and ``SGD(momentum=0.9, nesterov=True, foreach=False)``, whose every
allocation follows from the torch 2.13 source:

* forward: ``linear`` on 2-D input without bias is ``mm(x, W.t())`` (``t`` is a view): the output ``y`` (4×8),
  then ``sum`` (a 0-d fp32 tensor). ``mm`` saves ``x`` and ``W.t()``, not ``y``, so ``y`` dies after ``sum``.
* backward: ``torch.autograd._make_grads`` allocates ``ones_like(loss)`` (4 B); ``SumBackward0`` expands it (a
  view); ``mm_mat2_backward`` (``tools/autograd/templates/FunctionsManual.cpp``) computes ``grad.t().mm(x).t()``
  for the column-major ``W.t()``: one 8×16 tensor, which ``AccumulateGrad`` takes as ``W.grad`` without a copy.
* step: ``_single_tensor_sgd``: ``buf.mul_(momentum).add_(grad)`` in place, then for Nesterov
  ``grad = grad.add(buf, alpha=momentum)`` (a new W-sized tensor), ``param.add_`` in place.

The step measured is the second (the momentum buffer exists), so at the start: W 512 + x 256 + buffer 512 bytes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "validate_step.py"


@pytest.fixture(scope="module")
def validate_step():  # noqa: ANN201 — the benchmark script, imported as a module
    spec = importlib.util.spec_from_file_location("validate_step", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_step"] = module  # dataclasses resolve their module's globals through sys.modules
    spec.loader.exec_module(module)
    return module


FP32 = 4
W_BYTES = 8 * 16 * FP32  # 512
X_BYTES = 4 * 16 * FP32  # 256
Y_BYTES = 4 * 8 * FP32  # 128
LOSS_BYTES = FP32  # a 0-d fp32 storage
ONES_BYTES = FP32  # the loss's ones_like gradient


def test_tracker_matches_a_step_computed_by_hand(validate_step) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    linear = nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)
    params = list(linear.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, foreach=False)
    step = validate_step.Step(
        params=params,
        loss_fn=lambda tracker: linear(x).sum(),
        optimizers=[optimizer],
        all_optimizers=[optimizer],
        inputs=[x],
    )
    result = validate_step.measure_step(step)

    start = W_BYTES + X_BYTES + W_BYTES  # weight, input, momentum buffer
    assert result.boundaries["start"]["bytes"] == start
    assert result.phases["forward"]["peak_bytes"] == start + Y_BYTES + LOSS_BYTES
    assert result.boundaries["after_forward"]["bytes"] == start + LOSS_BYTES
    assert result.phases["backward"]["peak_bytes"] == start + LOSS_BYTES + ONES_BYTES + W_BYTES
    assert result.boundaries["after_backward"]["bytes"] == start + LOSS_BYTES + W_BYTES
    assert result.phases["step"]["peak_bytes"] == start + LOSS_BYTES + W_BYTES + W_BYTES
    assert result.boundaries["after_step"]["bytes"] == start + LOSS_BYTES + W_BYTES
    assert result.peak_phase == "step"
    # What is alive at the step's peak, by identity (weight, gradient, buffer) and by creation phase.
    assert result.phases["step"]["components"] == {
        "params": W_BYTES,
        "inputs": X_BYTES,
        "grads": W_BYTES,
        "optimizer_states": W_BYTES,
        "activations": LOSS_BYTES,
        "step_temps": W_BYTES,
    }
    # At the backward peak W's gradient has just been computed and is not yet ``W.grad`` (AccumulateGrad runs
    # next), so it is a backward temporary there; after backward it is the gradient.
    assert result.phases["backward"]["components"]["backward_temps"] == ONES_BYTES + W_BYTES
    assert "grads" not in result.phases["backward"]["components"]
    assert result.boundaries["after_backward"]["components"]["grads"] == W_BYTES


def test_tracker_counts_a_storage_once_and_releases_it(validate_step) -> None:  # noqa: ANN001
    tracker = validate_step.LiveTensorTracker()
    with tracker, tracker.phase("forward"):
        a = torch.zeros(100)  # 400 bytes
        view = a[10:20]  # same storage: not counted again
        b = view * 2  # 40 bytes
        del a, view  # the storage dies with its last view
        c = torch.zeros(25)  # 100 bytes
    assert tracker.phases["forward"]["peak_bytes"] == 440
    assert tracker.current_bytes == 140
    del b, c


@pytest.mark.slow  # a real CPU training step against hfmem (CI runs the slow marks)
def test_llama_baseline_step_against_hfmem(validate_step) -> None:  # noqa: ANN001
    """Tiny Llama, HF loss, fp32 AdamW: hfmem's allocated peak vs the measured one, under hfmem's conventions.

    hfmem keeps the logits alive across backward (`outputs-kept`: a loop doing ``out = model(...)``,
    ``out.loss.backward()``). With one micro-batch per step (the default --grad-accumulation 1) it counts no
    gradient at the start of backward, as the real step, whose gradients were set to None by zero_grad (issue 13).
    So the measured backward peak must equal hfmem's backward peak within 1 %, and each AdamW
    implementation's measured step (foreach: the baseline, whose outputs are gone by the step; fused; for-loop)
    hfmem's step phase with that --optimizer-impl within 1 %.
    """
    rows = validate_step.run(
        ["llama"], ["outputs-kept", "baseline", "adamw-fused", "adamw-loop"], True, lambda line: None
    )
    kept, foreach, fused, loop = rows
    assert isinstance(kept.prediction, dict) and "phases" in kept.prediction, kept.prediction
    assert kept.prediction["components"]["gradients"] == 0  # none at the start of backward
    grads_bytes = kept.prediction["gradients_at_step_bytes"]
    # by hand: embeddings + untied head 2·2048·64, 2 layers × (q,o 2·64² + k,v 2·64·32 + MLP 3·64·176 + 2 norms
    # 2·64), final norm 64 — fp32
    assert grads_bytes == FP32 * (2 * 2048 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 176 + 2 * 64) + 64)
    assert kept.prediction["peak_phase"] == kept.result.peak_phase == "backward"
    predicted_backward = kept.prediction["peak_bytes"]
    assert predicted_backward == kept.prediction["phases"]["backward"]
    measured_backward = kept.result.phases["backward"]["peak_bytes"]
    assert abs(predicted_backward - measured_backward) / measured_backward <= 0.01
    for row in (foreach, fused, loop):
        assert isinstance(row.prediction, dict), row.prediction
        measured_step = row.result.phases["step"]["peak_bytes"] - LOSS_BYTES
        assert abs(row.prediction["phases"]["step"] - measured_step) / measured_step <= 0.01, row.technique
    # the three steps differ by what docs/techniques.md §4.1 says: foreach − fused = one fp32 state of every
    # parameter (4 B × the parameter count above); loop − fused = 2 × the largest parameter's (2 × 4 × 2048 × 64)
    params = grads_bytes // FP32
    assert foreach.prediction["phases"]["step"] - fused.prediction["phases"]["step"] == FP32 * params
    assert loop.prediction["phases"]["step"] - fused.prediction["phases"]["step"] == 2 * FP32 * 2048 * 64


@pytest.mark.slow  # a real CPU training step against hfmem (CI runs the slow marks)
def test_recompute_options_predict_the_measured_activations(validate_step) -> None:  # noqa: ANN001
    """hfmem's activations under ``--grad-checkpointing full``, ``--checkpoint-every 2`` and ``--grad-checkpointing
    ops`` against what a real CPU step keeps alive after its forward (HF's ``every_n_layers=2``; torchtitan's op
    policy through ``create_selective_checkpoint_contexts``), tiny Llama: within 8 KiB (the loss's scalars and the
    labels' shift, which the measurement tags as the loss's), and ordered full < ops < every-2 on both sides; and
    with the chunked loss the peak within 1 % once the gradients hfmem counts as live are added."""
    techniques = ["ckpt-full", "ckpt-every-2", "ckpt-ops", "loss-chunked"]
    rows = {row.technique: row for row in validate_step.run(["llama"], techniques, True, lambda line: None)}
    acts = {}
    for name in techniques[:3]:
        row = rows[name]
        assert isinstance(row.prediction, dict), row.prediction
        measured = row.result.boundaries["after_forward"]["components"]["activations"]
        predicted = row.prediction["components"]["activations"]
        assert abs(predicted - measured) <= 8 * 1024, (name, predicted, measured)
        acts[name] = (predicted, measured)
    assert acts["ckpt-full"][0] < acts["ckpt-ops"][0] < acts["ckpt-every-2"][0]
    assert acts["ckpt-full"][1] < acts["ckpt-ops"][1] < acts["ckpt-every-2"][1]
    chunked = rows["loss-chunked"]
    assert chunked.prediction["peak_phase"] == chunked.result.peak_phase == "forward"
    assert abs(chunked.grads_adjusted_error_pct) <= 1.0


def test_fused_and_chunked_losses_compute_the_hf_loss(validate_step, tmp_path: Path) -> None:  # noqa: ANN001
    """The re-implemented losses are the same function as transformers' (value and gradients), so what they save is
    the only difference being measured."""
    case = validate_step.MODELS["llama"]
    model = validate_step.build(validate_step.write_config(case, tmp_path), torch.float32)
    inputs = validate_step.make_inputs(model, case)
    inputs["labels"] = inputs["labels"].clone()  # (the same tensor as input_ids)
    inputs["labels"][0, :5] = validate_step.IGNORE_INDEX  # ignored tokens must be ignored the same way

    def loss_and_grads(loss_fn) -> tuple[torch.Tensor, list[torch.Tensor]]:  # noqa: ANN001
        model.zero_grad(set_to_none=True)
        loss = loss_fn(None)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    reference, reference_grads = loss_and_grads(lambda _: model(**inputs).loss)
    for fn in (validate_step.chunked_loss, validate_step.fused_loss):
        loss, grads = loss_and_grads(lambda tracker, fn=fn: fn(model, inputs, tracker))
        torch.testing.assert_close(loss, reference)
        for grad, expected in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_adamw_step_temporaries_follow_the_torch_source(validate_step) -> None:  # noqa: ANN001
    """Extra live bytes during ``AdamW.step()`` on the tiny fp32 Llama, from torch 2.13 ``torch/optim/adam.py``:
    foreach ``exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)`` = one state-sized list of all parameters;
    fused ``torch._fused_adamw_`` = none; for-loop ``denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)``
    = two tensors the size of one parameter while the previous parameter's ``denom`` is still bound to the loop
    variable: largest at the LM head (2048×64, the last parameter), preceded by the final norm (64);
    optimizer-in-backward has no step phase at all. The rest of ``step()`` is in place."""
    rows = validate_step.run(["llama"], ["baseline", "adamw-fused", "adamw-loop", "optim-in-bwd"], False, print)
    extra = {
        row.technique: row.result.phases["step"]["peak_bytes"] - row.result.boundaries["after_backward"]["bytes"]
        for row in rows
    }
    all_params_bytes = FP32 * (2 * 2048 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 176 + 2 * 64) + 64)
    assert extra == {
        "baseline": all_params_bytes,
        "adamw-fused": 0,
        "adamw-loop": 2 * FP32 * 2048 * 64 + FP32 * 64,
        "optim-in-bwd": 0,
    }
    in_bwd = rows[-1].result
    # gradients are freed as they are applied: none is alive after backward, the states are
    assert "grads" not in in_bwd.boundaries["after_backward"]["components"]
    assert in_bwd.boundaries["after_backward"]["components"]["optimizer_states"] >= 2 * all_params_bytes


@pytest.mark.slow  # a real CPU training step against hfmem (CI runs the slow marks)
def test_op_level_sac_keeps_what_torchtitans_policy_saves(validate_step) -> None:  # noqa: ANN001
    """Beyond full checkpointing, torchtitan's op-level policy (`1f029641` rule) keeps the outputs of every
    odd-numbered ``mm`` of a block (counted per block) and of SDPA (output + fp32 logsumexp per head), and (the
    `b5bcd76` save set, torch's ``compute_intensive_ops``) every ``addmm``/``bmm``, docs/techniques.md §2.2.

    Llama block, in call order q, k, v, o, gate, up, down = mm 1..7: q (h), v (kv), gate (f), down (h) + SDPA out
    (h) + lse (n_heads), fp32: ``4(3h + kv + f) + 4·n_heads`` bytes per token and layer. Qwen2's q/k/v have a bias
    and dispatch to ``addmm``, saved but not counted: q (h), k (kv), v (kv) kept; o, gate, up, down are mm 1..4, so
    o (h) and up (f) are kept: ``4(h + 2kv) + 4(2h + f) + 4·n_heads``.
    """
    rows = validate_step.run(["llama", "qwen2"], ["ckpt-full", "ckpt-ops"], False, print)
    kept = {}
    for row in rows:
        kept.setdefault(row.model, {})[row.technique] = row.result.boundaries["after_forward"]["components"][
            "activations"
        ]
    tokens_times_layers = 2 * 128 * 2  # batch 2 × seq 128 × 2 layers
    h, n_heads = 64, 4
    llama = (4 * (3 * h + 2 * 16 + 176) + 4 * n_heads) * tokens_times_layers  # kv = 2 heads × 16, f = 176
    qwen2 = (4 * (h + 2 * 2 * 16) + 4 * (2 * h + 192) + 4 * n_heads) * tokens_times_layers  # kv = 2 × 16, f = 192
    assert kept["llama"]["ckpt-ops"] - kept["llama"]["ckpt-full"] == llama
    assert kept["qwen2"]["ckpt-ops"] - kept["qwen2"]["ckpt-full"] == qwen2


def test_fused_loss_keeps_two_gradients_and_no_logits(validate_step) -> None:  # noqa: ANN001
    """Liger's fused linear + cross-entropy keeps, from its forward to backward, ``grad_input`` (T × h) and
    ``grad_weight`` (V × h) and nothing per logit (docs/techniques.md §1.4); plus the 0-d loss. Tiny Llama, fp32:
    T = 2 × 128 tokens, h = 64, V = 2048."""
    (row,) = validate_step.run(["llama"], ["loss-fused"], False, print)
    loss_bytes = row.result.boundaries["after_forward"]["components"]["logits_loss"]
    assert loss_bytes == FP32 * (2 * 128 * 64 + 2048 * 64) + FP32


@pytest.mark.slow  # a real CPU training step against hfmem (CI runs the slow marks)
def test_amp_weight_cast_cache_under_checkpointing(validate_step) -> None:  # noqa: ANN001
    """CPU autocast with full checkpointing: at the forward's peak the live bf16 weight copies are the cache of every
    layer linear (no checkpointed layer saves them) plus the LM head's copy (saved by its matmul). By hand for the
    tiny Llama: per layer q 64·64 + k, v 32·64 + o 64·64 + gate/up/down 3·176·64 = 46,080 elements, 2 layers, and
    the 2048 × 64 head, 2 bytes each. hfmem's autocast_weight_cache line is the layers' part (tests/test_optim.py);
    the head's copy is in its traced activations."""
    (row,) = validate_step.run(["llama"], ["amp-ckpt"], True, lambda line: None)
    casts = row.result.phases["forward"]["components"]["weight_casts"]
    assert casts == 2 * (2 * 46_080 + 2048 * 64)
    assert isinstance(row.prediction, dict) and row.prediction["phases"]["forward"] > 0
