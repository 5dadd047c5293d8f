"""Measure a whole training step on the CPU (forward, backward, optimizer step) per memory technique of issue 13.

For small, randomly initialised transformers models (Llama, Mistral, Qwen2, a BERT sequence classifier and a T5
seq2seq, built from small configs written here), one REAL training step runs on the CPU under `LiveTensorTracker`,
a ``TorchDispatchMode`` that sees the output of every ATen op and counts each untyped storage once (by its data
pointer, released when the storage dies). Nothing is excluded: parameters, buffers, inputs, optimizer states,
gradients, activations, logits and step temporaries all count. Per phase (forward = model call and loss; backward =
``loss.backward()``; step = ``optimizer.step()``) it records the peak of live bytes and what was alive at that peak,
by component (parameters, gradients and optimizer states by identity; the rest by the phase that created them;
logits and loss temporaries from the output head onwards), and what is alive at each phase boundary.

The step measured is the SECOND one (the first creates the optimizer states, as in any training loop), with the
gradients set to ``None`` before it (``zero_grad(set_to_none=True)``, torch's default) and the loss kept alive
until the step ends, only the loss (not the model outputs) kept across backward, as the Hugging Face ``Trainer``
does (``training_step``: ``loss = self.compute_loss(...)``, then ``backward``).

Techniques (issue 13, item 4; what each one keeps is read from the framework source in docs/techniques.md):

* ``baseline``: transformers' own loss (labels passed to the model), no recompute, ``AdamW(foreach=True)`` (the
  CUDA default, `torch/optim/adam.py::adam`; on the CPU torch would default to the for-loop, so it is asked for).
* ``outputs-kept`` (and ``X+kept`` for technique X): the same step in a loop that keeps the model outputs
  (``out = model(...)``; ``out.loss.backward()``; ``optimizer.step()``), so the logits live through backward and
  the step. hfmem's logits term follows this convention (docs/techniques.md §1.1).
* ``eager``: the baseline with ``attn_implementation="eager"`` (hfmem's ``--attn eager``): a like-for-like
  comparison for T5, whose SDPA calls with a position bias take the CPU math kernel.
* ``loss-chunked``: torchtune ``CEWithChunkedOutputLoss`` (8 chunks): the output projection per chunk, all chunks'
  logits kept in a list, fp32 upcast and cross-entropy per chunk, eager (not compiled); ``del logits`` before
  backward as the recipe does (`recipes/full_finetune_single_device.py@1814feb17::_loss_step`).
* ``loss-fused``: Liger's ``LigerFusedLinearCrossEntropyFunction`` re-implemented in plain torch (Liger needs
  Triton, which does not run on a CPU): `fused_linear_cross_entropy_forward` of liger-kernel 0.8.5
  (``liger_kernel/ops/fused_linear_cross_entropy.py``; same algorithm at ``ead96b6``): token chunks of
  ``next_pow2(ceil(BT / ceil(V / H)))`` rows, each chunk's logits turned into their gradient in place, the
  gradients of the hidden states and of the head weight computed in the forward and saved; backward only scales.
* ``ckpt-full``: ``activation_checkpointing_enable()`` (transformers 5.24 default ``use_reentrant=False``).
* ``ckpt-every-2``: the same with ``every_n_layers=2`` (HF counts from 0: layer 0 of 2 is checkpointed).
* ``ckpt-ops``: torchtitan's op-level selective checkpointing (`torchtitan/distributed/activation_checkpoint.py
  @1f029641::_apply_op_sac`, save list `torchtitan/models/llama3/parallelize.py@1f029641::_op_sac_save_list`
  plus ``b5bcd76``'s ``compute_intensive_ops``): outputs of mm/linear (every second one recomputed), addmm, bmm,
  SDPA and ``max`` kept; everything else recomputed. CPU SDPA
  runs ``_scaled_dot_product_flash_attention_for_cpu``, which is not in torchtitan's list; it is added as the
  stand-in for the GPU flash op (as in docs/techniques.md, Appendix A ``sac.py``).
* ``offload+ckpt`` / ``offload``: torchtune ``OffloadActivations`` (`torchtune/training/_activation_offloading.py
  @bd2a0fc`): saved tensors of ≥ 1024 bytes that are not ``nn.Parameter`` leave the device during the forward and
  come back when backward needs them; the output head is not offloaded (its ``NoOpManager``), and the loss runs
  outside the context as in the recipe. Emulation: the off-device copy is made with the tracker switched off, so
  it is not counted (it would be in CPU RAM); the copy back is counted. The copies are synchronous (no stream, no
  5-tensor stash). ``offload+ckpt`` adds full checkpointing, which the torchtune recipe requires.
* ``adamw-fused`` / ``adamw-loop``: ``AdamW(fused=True)`` / ``AdamW(foreach=False)`` (both run on the CPU in
  torch 2.13).
* ``optim-in-bwd``: one ``AdamW(foreach=True)`` per parameter, stepped and ``zero_grad``-ed in
  ``register_post_accumulate_grad_hook`` (`torchtune/training/memory.py@bd2a0fc::register_optim_in_bwd_hooks`);
  there is no separate optimizer step.
* ``amp-bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward (and the loss inside it) on the
  fp32 model, as accelerate does for the Trainer's ``bf16=True``. CPU autocast's op lists differ from CUDA's
  (`docs/source/amp.md`: on CUDA softmax, layer_norm, log_softmax… run in fp32; on the CPU softmax and layer_norm
  run in bf16, docs/techniques.md §5): the bf16/fp32 split of what is saved is the CPU's, not a GPU's.
* ``amp-ckpt``: ``amp-bf16`` with full checkpointing: autocast's cached bf16 weight copies live to the end of the
  forward though no checkpointed layer saves them (hfmem's ``autocast_weight_cache`` line).
* ``bf16``: the whole model and AdamW in bf16 (hfmem's ``--precision bf16``).

hfmem's prediction (``hfmem.estimate`` on the same config folder, ``training=True``, cache off, ZeRO 0, dropout 0,
with the CUDA context and allocator fragmentation set to 0, which a CPU run has none of) is put beside the
measurement where this hfmem has the technique's option; otherwise the cell says which option is missing.
Predictions run in a child process, so nothing hfmem patches while tracing can leak into what is measured.

What the dispatch mode cannot see: memory a kernel allocates internally (scratch buffers inside one ATen op), and
storages that existed before the step and were not registered (none here: parameters, buffers, inputs, optimizer
states are registered). Dropout is 0 in every config (CPU dropout saves a noise tensor where CUDA saves a mask).

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/validate_step.py [--models llama ...] [--techniques baseline ...]
                                                        [--out benchmarks/results/step_cpu] [--no-predict]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

SEED = 0
PHASES = ("forward", "backward", "step")
#: Components a live storage is attributed to (see `LiveTensorTracker.components`).
COMPONENTS = (
    "params",
    "buffers",
    "inputs",
    "grads",
    "optimizer_states",
    "activations",
    "weight_casts",
    "logits_loss",
    "backward_temps",
    "step_temps",
)
#: What a storage created during each tag is called (before identity re-attribution of grads and states).
TAG_COMPONENT = {
    "forward": "activations",
    "loss": "logits_loss",
    "backward": "backward_temps",
    "step": "step_temps",
}
#: torchtune `CEWithChunkedOutputLoss(num_output_chunks=8)` default and `OffloadActivations(min_offload_size=1024)`.
LOSS_CHUNKS = 8
OFFLOAD_MIN_BYTES = 1024
IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss / transformers' default ignore_index


# ---------------------------------------------------------------------------------------------------------------
# The tracker


class LiveTensorTracker(TorchDispatchMode):
    """Live bytes of every storage an ATen op returns, each untyped storage once, with per-phase peaks.

    Storages that exist before the mode starts (parameters, buffers, inputs, optimizer states) are added with
    `register`. A storage leaves the count when it is freed (``weakref.finalize`` on its ``UntypedStorage``,
    which torch keeps alive exactly as long as the C++ storage). ``tag`` names the part of the step running now
    (``forward``, ``loss``, ``backward``, ``step``): a new storage is attributed to it. ``identity`` returns, at any
    moment, ``{data_ptr: component}`` for the storages known by identity (gradients, optimizer states), which
    override the tag; a ``_to_copy`` of a parameter (autocast's cached weight casts) is ``weight_casts``.
    """

    def __init__(self, identity: Callable[[], dict[int, str]] | None = None) -> None:
        super().__init__()
        self.identity = identity or dict
        self.live: dict[int, tuple[int, str, int]] = {}  # ptr -> (bytes, component, serial)
        self.by_component: dict[str, int] = defaultdict(int)
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_components: dict[str, int] = {}
        self.tag = "forward"
        self.param_ptrs: set[int] = set()
        self.offloaded_bytes = 0
        self._serial = itertools.count()
        self.phases: dict[str, dict[str, Any]] = {}
        self.boundaries: dict[str, dict[str, Any]] = {}

    # -- counting --

    def register(self, tensors: Iterable[torch.Tensor | None], component: str) -> None:
        """Count storages that already exist (parameters: ``component="params"`` also marks them for casts)."""
        for tensor in tensors:
            if tensor is None:
                continue
            if component == "params":
                self.param_ptrs.add(tensor.untyped_storage().data_ptr())
            self._add(tensor, component)

    def _add(self, tensor: torch.Tensor, component: str) -> None:
        if tensor.device.type == "meta" or tensor.is_sparse:
            return
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or ptr in self.live:
            return
        serial = next(self._serial)
        self.live[ptr] = (nbytes, component, serial)
        self.by_component[component] += nbytes
        self.current_bytes += nbytes
        weakref.finalize(storage, self._remove, ptr, serial)
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self.peak_components = self.components()

    def _remove(self, ptr: int, serial: int) -> None:
        entry = self.live.get(ptr)
        if entry is None or entry[2] != serial:
            return
        del self.live[ptr]
        self.by_component[entry[1]] -= entry[0]
        self.current_bytes -= entry[0]

    def components(self) -> dict[str, int]:
        """Live bytes by component now: the creation tag, overridden by identity (gradients, states)."""
        parts = dict(self.by_component)
        for ptr, component in self.identity().items():
            entry = self.live.get(ptr)
            if entry is not None and entry[1] != component:
                parts[entry[1]] -= entry[0]
                parts[component] = parts.get(component, 0) + entry[0]
        return {name: parts[name] for name in COMPONENTS if parts.get(name)}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        component = TAG_COMPONENT[self.tag]
        if (
            func is torch.ops.aten._to_copy.default
            and isinstance(args[0], torch.Tensor)
            and args[0].untyped_storage().data_ptr() in self.param_ptrs
        ):
            component = "weight_casts"
        for tensor in _tensors(out):
            self._add(tensor, component)
        return out

    # -- phases --

    def boundary(self, name: str) -> None:
        """Record what is alive now (``name``: ``start``, ``after_forward``, ``after_backward``, ``after_step``)."""
        self.boundaries[name] = {"bytes": self.current_bytes, "components": self.components()}

    @contextlib.contextmanager
    def phase(self, name: str, tag: str | None = None) -> Iterator[None]:
        """Measure the peak of phase ``name`` from the live bytes at its start; new storages are tagged ``tag``."""
        self.peak_bytes = self.current_bytes
        self.peak_components = self.components()
        previous, self.tag = self.tag, tag or name
        try:
            yield
        finally:
            self.tag = previous
            self.phases[name] = {"peak_bytes": self.peak_bytes, "components": self.peak_components}

    @contextlib.contextmanager
    def tagged(self, tag: str) -> Iterator[None]:
        previous, self.tag = self.tag, tag
        try:
            yield
        finally:
            self.tag = previous


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def identity_map(params: list[nn.Parameter], optimizers: Callable[[], Iterable[torch.optim.Optimizer]]) -> dict:
    """``{data_ptr: component}`` of the gradients and optimizer states that exist now."""
    ptrs: dict[int, str] = {}
    for optimizer in optimizers():
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    ptrs[value.untyped_storage().data_ptr()] = "optimizer_states"
    for param in params:
        if param.grad is not None:
            ptrs[param.grad.untyped_storage().data_ptr()] = "grads"
    return ptrs


@dataclass
class StepResult:
    """One measured step: the peak per phase with its components, and what is alive at each boundary."""

    phases: dict[str, dict[str, Any]]
    boundaries: dict[str, dict[str, Any]]
    offloaded_bytes: int = 0

    @property
    def peak_bytes(self) -> int:
        return max(p["peak_bytes"] for p in self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: self.phases[name]["peak_bytes"])


@dataclass
class Step:
    """What one training step does; `measure_step` runs it twice and measures the second run.

    ``loss_fn(tracker)`` runs the forward and returns the loss (it may call ``tracker.tagged("loss")``);
    ``optimizers`` are stepped in the step phase (empty for optimizer-in-backward); ``all_optimizers`` holds every
    optimizer with state (for the identity of the states).
    """

    params: list[nn.Parameter]
    loss_fn: Callable[[LiveTensorTracker | None], torch.Tensor]
    optimizers: list[torch.optim.Optimizer]
    all_optimizers: list[torch.optim.Optimizer]
    buffers: list[torch.Tensor] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    #: What the loop keeps alive until the step ends besides the loss (the model outputs, for ``outputs-kept``).
    kept: list[Any] = field(default_factory=list)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def run(self, tracker: LiveTensorTracker | None) -> None:
        if tracker is None:
            loss = self.loss_fn(None)
            loss.backward()
            for optimizer in self.optimizers:
                optimizer.step()
            del loss
            self.kept.clear()
            self.zero_grad()
            return
        tracker.boundary("start")
        with tracker.phase("forward"):
            loss = self.loss_fn(tracker)
        tracker.boundary("after_forward")
        with tracker.phase("backward"):
            loss.backward()
        tracker.boundary("after_backward")
        with tracker.phase("step"):
            for optimizer in self.optimizers:
                optimizer.step()
        tracker.boundary("after_step")
        del loss
        self.kept.clear()
        self.zero_grad()


def measure_step(step: Step) -> StepResult:
    """Run ``step`` once to create the optimizer states, then once under the tracker."""
    step.run(None)
    tracker = LiveTensorTracker(partial(identity_map, step.params, lambda: step.all_optimizers))
    tracker.register(step.params, "params")
    tracker.register(step.buffers, "buffers")
    tracker.register(step.inputs, "inputs")
    tracker.register(
        (v for o in step.all_optimizers for s in o.state.values() for v in s.values() if isinstance(v, torch.Tensor)),
        "optimizer_states",
    )
    step.tracker = tracker  # type: ignore[attr-defined]  # for techniques that need it inside hooks
    with tracker:
        step.run(tracker)
    return StepResult(tracker.phases, tracker.boundaries, tracker.offloaded_bytes)


# ---------------------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class ModelCase:
    """A small config; ``target_len`` is the decoder length of an encoder-decoder model."""

    name: str
    config: Callable[[], transformers.PretrainedConfig]
    batch_size: int = 2
    seq_len: int = 128
    target_len: int | None = None
    decoder: bool = True  # a causal LM with a vocabulary head (the loss techniques apply)


def _llama() -> transformers.PretrainedConfig:
    return transformers.LlamaConfig(
        vocab_size=2048, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, attention_dropout=0.0,
    )  # fmt: skip


def _mistral() -> transformers.PretrainedConfig:
    return transformers.MistralConfig(
        vocab_size=2048, hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, max_position_embeddings=512, sliding_window=None, attention_dropout=0.0,
    )  # fmt: skip


def _qwen2() -> transformers.PretrainedConfig:
    # Tied embeddings and biased q/k/v, as in Qwen2.5-0.5B.
    return transformers.Qwen2Config(
        vocab_size=4096, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, attention_dropout=0.0,
    )  # fmt: skip


def _bert() -> transformers.PretrainedConfig:
    return transformers.BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=256, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )  # fmt: skip


def _t5() -> transformers.PretrainedConfig:
    return transformers.T5Config(
        vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip


ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "bert-cls": "BertForSequenceClassification",
    "t5": "T5ForConditionalGeneration",
    "t5-target": "T5ForConditionalGeneration",
}
MODELS = {
    "llama": ModelCase("llama", _llama),
    "mistral": ModelCase("mistral", _mistral),
    "qwen2": ModelCase("qwen2", _qwen2),
    "bert-cls": ModelCase("bert-cls", _bert, decoder=False),
    "t5": ModelCase("t5", _t5, decoder=False),
    "t5-target": ModelCase("t5-target", _t5, target_len=32, decoder=False),
}


def write_config(case: ModelCase, root: Path) -> Path:
    """The config folder both sides read (``config.json`` with ``architectures``)."""
    config = case.config()
    config.architectures = [ARCHITECTURES[case.name]]
    folder = root / case.name
    config.save_pretrained(folder)
    return folder


def build(folder: Path, dtype: torch.dtype) -> nn.Module:
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = getattr(transformers, config.architectures[0])
    torch.manual_seed(SEED)
    model = cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.train()


def make_inputs(model: nn.Module, case: ModelCase) -> dict[str, torch.Tensor]:
    """Random ids; causal LM labels = ids; BERT: one class per row ``(b,)``; T5: labels of ``target_len``."""
    generator = torch.Generator().manual_seed(SEED)
    vocab = model.config.vocab_size
    b, s = case.batch_size, case.seq_len
    ids = torch.randint(1, vocab, (b, s), generator=generator)
    if isinstance(model, transformers.BertForSequenceClassification):
        return {"input_ids": ids, "labels": torch.randint(0, model.config.num_labels, (b,), generator=generator)}
    if model.config.is_encoder_decoder:
        target = case.target_len or s
        return {"input_ids": ids, "labels": torch.randint(1, vocab, (b, target), generator=generator)}
    return {"input_ids": ids, "labels": ids}


def output_head(model: nn.Module) -> nn.Module:
    head = getattr(model, "classifier", None)
    return head if isinstance(head, nn.Module) else model.get_output_embeddings()


@contextlib.contextmanager
def head_tags_loss(model: nn.Module, tracker: LiveTensorTracker | None) -> Iterator[None]:
    """From the output head's forward on, new storages are ``logits_loss`` (the loss runs inside HF's forward)."""
    if tracker is None:
        yield
        return
    handle = output_head(model).register_forward_pre_hook(lambda *_: setattr(tracker, "tag", "loss"))
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------------------------
# Losses


def hf_loss(model: nn.Module, inputs: dict[str, torch.Tensor], tracker: LiveTensorTracker | None) -> torch.Tensor:
    """transformers' loss: labels passed to the model; the outputs are dropped, the loss kept (the Trainer)."""
    with head_tags_loss(model, tracker):
        return model(**inputs).loss


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets, the last position ignored (transformers ``ForCausalLMLoss``: pad then ``[..., 1:]``)."""
    return nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def chunked_loss(model: nn.Module, inputs: dict[str, torch.Tensor], tracker: LiveTensorTracker | None) -> torch.Tensor:
    """torchtune ``CEWithChunkedOutputLoss`` with the model's ``chunked_output`` (eager, 8 chunks).

    `torchtune/modules/transformer.py@bd2a0fc::TransformerDecoder.chunked_output`:
    ``[self.output(chunk) for chunk in last_hidden_state.tensor_split(self.num_output_chunks, dim=1)]``;
    `torchtune/modules/loss/ce_chunked_output_loss.py@bd2a0fc`: per chunk
    ``F.cross_entropy(logits.float(), labels, ignore_index, reduction="sum")``, summed, divided by the number of
    non-ignored labels; the recipe then ``del logits`` before backward.
    """
    hidden = model.model(input_ids=inputs["input_ids"]).last_hidden_state
    with tracker.tagged("loss") if tracker else contextlib.nullcontext():
        head = model.get_output_embeddings()
        logits = [head(chunk) for chunk in hidden.tensor_split(LOSS_CHUNKS, dim=1)]
        labels = shifted_labels(inputs["labels"])
        total_elements = (labels != IGNORE_INDEX).sum()
        label_chunks = [c.reshape(-1) for c in labels.tensor_split(LOSS_CHUNKS, dim=1)]
        total = 0.0
        for logits_chunk, labels_chunk in zip(logits, label_chunks, strict=True):
            total = total + nn.functional.cross_entropy(
                logits_chunk.reshape(-1, logits_chunk.size(-1)).float(),
                labels_chunk,
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        loss = total / total_elements
        del logits  # the recipe: "free logits otherwise it peaks backward memory"
    return loss


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Liger's fused linear + cross-entropy, the algorithm of ``fused_linear_cross_entropy_forward`` in plain torch.

    liger-kernel 0.8.5, ``liger_kernel/ops/fused_linear_cross_entropy.py`` (the non-CUDA path; ``chunk_mem_const``
    = 1, ``reduction="mean"``, no bias, no softcap, no z-loss): ``grad_input = zeros_like(_input)``,
    ``grad_weight = zeros_like(weight)``, ``loss_1d = zeros(BT, fp32)``; per chunk ``logits_chunk = _input_chunk @
    weight.t()``, which ``liger_cross_entropy_kernel`` overwrites in place with its gradient ``(softmax − onehot) /
    n_non_ignore`` (the loss goes to ``loss_1d``); ``grad_input[chunk] = grad_logits_chunk @ weight``;
    ``grad_weight += torch.mm(grad_logits_chunk.t(), _input_chunk).float()``. ``ctx.save_for_backward(grad_input,
    grad_weight)``; backward multiplies them by ``grad_output`` (``fused_linear_cross_entropy_backward``, skipped
    when it is 1). The Triton kernel's in-register work is done here with per-row temporaries (log-sum-exp), so no
    extra per-logit storage appears.
    """

    @staticmethod
    def forward(ctx: Any, _input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bt, h = _input.shape
        v = weight.shape[0]
        inc_factor = math.ceil(v / h)
        chunk_size = min(2 ** math.ceil(math.log2(math.ceil(bt / inc_factor))), bt)
        num_chunks = math.ceil(bt / chunk_size)
        grad_input = torch.zeros_like(_input)
        grad_weight = torch.zeros_like(weight)
        loss_1d = torch.zeros(bt, dtype=torch.float32)
        target_mask = target != IGNORE_INDEX
        n_non_ignore = int(target_mask.sum().item())
        for chunk_id in range(num_chunks):
            start, end = chunk_id * chunk_size, min((chunk_id + 1) * chunk_size, bt)
            input_chunk = _input[start:end]
            logits_chunk = input_chunk @ weight.t()
            target_chunk = target[start:end]
            valid = target_mask[start:end]
            safe_target = target_chunk.clamp(min=0).unsqueeze(-1)
            # liger_cross_entropy_kernel, in place: loss = lse - x_y; X <- (softmax(X) - onehot(y)) / n
            lse = torch.logsumexp(logits_chunk, dim=-1, keepdim=True)
            loss_1d[start:end] = torch.where(valid, (lse - logits_chunk.gather(-1, safe_target)).squeeze(-1), 0.0)
            logits_chunk.sub_(lse).exp_()
            logits_chunk.scatter_add_(-1, safe_target, torch.full_like(safe_target, -1, dtype=logits_chunk.dtype))
            logits_chunk.mul_(valid.unsqueeze(-1).to(logits_chunk.dtype) / n_non_ignore)
            grad_logits_chunk = logits_chunk
            grad_input[start:end] = grad_logits_chunk @ weight
            grad_weight += torch.mm(grad_logits_chunk.t(), input_chunk).float()
            del logits_chunk, grad_logits_chunk, lse
        loss = torch.sum(loss_1d) / n_non_ignore
        ctx.save_for_backward(grad_input.detach(), grad_weight.detach())
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_input, grad_weight = ctx.saved_tensors
        if not torch.equal(grad_output, torch.tensor(1.0, device=grad_output.device)):
            grad_input = grad_input * grad_output
            grad_weight = grad_weight * grad_output
        return grad_input, grad_weight, None


def fused_loss(model: nn.Module, inputs: dict[str, torch.Tensor], tracker: LiveTensorTracker | None) -> torch.Tensor:
    """Liger's ``lce_forward``: no logits in training; ``LigerForCausalLMLoss`` on the flattened hidden states."""
    hidden = model.model(input_ids=inputs["input_ids"]).last_hidden_state
    with tracker.tagged("loss") if tracker else contextlib.nullcontext():
        labels = shifted_labels(inputs["labels"]).reshape(-1)
        weight = model.get_output_embeddings().weight
        return FusedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.size(-1)), weight, labels)


# ---------------------------------------------------------------------------------------------------------------
# Recompute and offloading


def enable_checkpointing(model: nn.Module, every_n_layers: int = 1, **kwargs: Any) -> None:
    """transformers 5.24 ``activation_checkpointing_enable`` (non-reentrant, its default)."""
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False, **kwargs}, every_n_layers=every_n_layers
    )


def torchtitan_op_sac_context() -> Any:
    """``selective_checkpointing_context_fn`` of torchtitan ``1f029641``: a fresh mm counter per checkpoint call; the
    save set of ``b5bcd76`` (``SelectiveAC``), which adds torch's ``compute_intensive_ops`` (``addmm``, ``bmm``…,
    always saved: only ``mm``/``linear`` alternate), as hfmem's trace does (`hfmem.build.trace._ops_policy`)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    # torchtitan/models/llama3/parallelize.py@1f029641::_op_sac_save_list (the ops present in torch 2.13 CPU),
    # plus the CPU flash SDPA as the stand-in for the GPU kernels in that list.
    save_list = {
        aten.mm.default,
        aten.linear.default,
        # b5bcd76: torch._functorch.partitioners.get_default_op_list().compute_intensive_ops (torch 2.13) and topk.
        aten.addmm.default,
        aten.bmm.default,
        aten.convolution.default,
        aten._scaled_mm.default,
        aten._flash_attention_forward.default,
        aten._efficient_attention_forward.default,
        aten.topk.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_cudnn_attention.default,
        aten._scaled_dot_product_attention_math.default,
        aten._scaled_dot_product_fused_attention_overrideable.default,
        aten.max.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
    }
    mm_ops = (aten.mm.default, aten.linear.default)
    meta: dict[str, int] = defaultdict(int)

    def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        # torchtitan/distributed/activation_checkpoint.py@1f029641::_apply_op_sac._custom_policy
        mode = "recompute" if ctx.is_recompute else "forward"
        mm_count_key = f"{mode}_mm_count"
        if func in mm_ops:
            meta[mm_count_key] += 1
        # "Saves output of all compute ops, except every second mm"
        to_save = func in save_list and not (func in mm_ops and meta[mm_count_key] % 2 == 0)
        return CheckpointPolicy.MUST_SAVE if to_save else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


class OffloadActivations(torch.autograd.graph.saved_tensors_hooks):
    """torchtune ``OffloadActivations`` (``@bd2a0fc``), synchronous, with "off the device" = out of the tracker.

    ``pack_tensor``: ``num_bytes >= min_offload_size and not isinstance(activation, torch.nn.Parameter)`` → a copy
    goes to the host and the device tensor is released; otherwise it stays. ``unpack_tensor`` copies it back.
    """

    def __init__(self, tracker_ref: Callable[[], LiveTensorTracker | None]) -> None:
        def pack(activation: torch.Tensor) -> tuple[bool, torch.Tensor]:
            num_bytes = activation.element_size() * activation.nelement()
            if num_bytes >= OFFLOAD_MIN_BYTES and not isinstance(activation, nn.Parameter):
                with _disable_current_modes():  # the host copy is not device memory
                    host = activation.detach().clone()
                tracker = tracker_ref()
                if tracker is not None:
                    tracker.offloaded_bytes += num_bytes
                return True, host
            return False, activation

        def unpack(packed: tuple[bool, torch.Tensor]) -> torch.Tensor:
            offloaded, tensor = packed
            return torch.empty_like(tensor).copy_(tensor) if offloaded else tensor

        super().__init__(pack, unpack)


@contextlib.contextmanager
def no_offload_in(module: nn.Module) -> Iterator[None]:
    """torchtune's ``NoOpManager`` around the output head: identity hooks while it runs."""
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    handles = [
        module.register_forward_pre_hook(lambda *_: hooks.__enter__()),
        module.register_forward_hook(lambda *_: hooks.__exit__(None, None, None)),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def offload_loss(step_ref: Callable[[], Step], model: nn.Module, inputs: dict[str, torch.Tensor]) -> Callable:
    """The torchtune recipe: ``with activations_handling_ctx: logits = model(...)``, the loss outside, then
    ``del logits``."""

    def loss_fn(tracker: LiveTensorTracker | None) -> torch.Tensor:
        labels = inputs["labels"]
        with OffloadActivations(lambda: tracker), no_offload_in(output_head(model)), head_tags_loss(model, tracker):
            logits = model(input_ids=inputs["input_ids"]).logits
        with tracker.tagged("loss") if tracker else contextlib.nullcontext():
            loss = model.loss_function(logits=logits, labels=labels, vocab_size=model.config.vocab_size)
        del logits
        return loss

    return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# Techniques


@dataclass(frozen=True)
class Technique:
    """One column of the matrix: how the step runs, and the hfmem setup that predicts it (None: not expressible)."""

    name: str
    description: str
    dtype: torch.dtype = torch.float32
    #: TrainingSetup fields for hfmem, or the reason hfmem cannot predict it.
    hfmem: dict[str, Any] | str = field(default_factory=dict)
    decoder_only: bool = False


TECHNIQUES = {
    t.name: t
    for t in (
        Technique("baseline", "HF loss, no recompute, AdamW foreach, fp32", hfmem={}),
        Technique(
            "outputs-kept",
            "baseline, but the loop keeps the model outputs (logits) across backward",
            hfmem={},
        ),
        Technique(
            "loss-chunked",
            "torchtune chunked CE (8 chunks, eager)",
            hfmem={"loss": "chunked"},
            decoder_only=True,
        ),
        Technique(
            "loss-fused",
            "Liger fused linear+CE (pure-torch reimplementation)",
            hfmem={"loss": "fused"},
            decoder_only=True,
        ),
        Technique("ckpt-full", "HF activation checkpointing, every layer", hfmem={"grad_checkpointing": "full"}),
        Technique(
            "ckpt-every-2",
            "HF checkpointing every_n_layers=2 (layer 0 of 2)",
            hfmem={"grad_checkpointing": "full", "checkpoint_every": 2},
        ),
        Technique(
            "ckpt-ops",
            "torchtitan op-level SAC (1f029641 rule, b5bcd76 save set)",
            hfmem={"grad_checkpointing": "ops"},
            decoder_only=True,
        ),
        Technique(
            "offload+ckpt",
            "torchtune OffloadActivations + full checkpointing",
            hfmem={"grad_checkpointing": "full", "activation_offload": True},
            decoder_only=True,
        ),
        Technique(
            "offload",
            "torchtune OffloadActivations, no checkpointing",
            hfmem="n/a (hfmem refuses --activation-offload without checkpointing, as torchtune's recipes do)",
            decoder_only=True,
        ),
        Technique("adamw-fused", "AdamW fused=True", hfmem={"optimizer_impl": "fused"}),
        Technique("adamw-loop", "AdamW foreach=False", hfmem={"optimizer_impl": "loop"}),
        Technique(
            "optim-in-bwd",
            "per-parameter AdamW in post-accumulate-grad hooks",
            hfmem={"optimizer_in_backward": True},
        ),
        Technique("amp-bf16", "torch.autocast('cpu', bfloat16) on fp32 weights", hfmem={"precision": "amp-bf16"}),
        Technique(
            "amp-bf16+kept",
            "amp-bf16, outputs kept across backward",
            hfmem={"precision": "amp-bf16"},
        ),
        Technique(
            "amp-ckpt",
            "amp-bf16 with HF activation checkpointing (the weight-cast cache lives to the end of the forward)",
            hfmem={"precision": "amp-bf16", "grad_checkpointing": "full"},
        ),
        Technique("bf16", "pure bf16 model and AdamW", dtype=torch.bfloat16, hfmem={"precision": "bf16"}),
        Technique("ckpt-full+kept", "ckpt-full, outputs kept across backward", hfmem={"grad_checkpointing": "full"}),
        Technique("bf16+kept", "bf16, outputs kept across backward", dtype=torch.bfloat16, hfmem={"precision": "bf16"}),
        Technique("eager", "baseline with eager attention", hfmem={"attn": "eager"}),
        Technique("eager+kept", "eager attention, outputs kept across backward", hfmem={"attn": "eager"}),
    )
}
DECODER_TECHNIQUES = tuple(name for name in TECHNIQUES if not name.startswith("eager"))
DEFAULT_TECHNIQUES = {
    "llama": DECODER_TECHNIQUES,
    "mistral": DECODER_TECHNIQUES,
    "qwen2": DECODER_TECHNIQUES,
    "bert-cls": ("baseline", "ckpt-full", "adamw-fused", "adamw-loop", "optim-in-bwd", "amp-bf16", "bf16", "eager"),
    "t5": ("baseline", "outputs-kept", "ckpt-full", "ckpt-full+kept", "amp-bf16", "bf16", "eager", "eager+kept"),
    "t5-target": ("baseline", "ckpt-full", "amp-bf16"),
}


def build_step(case: ModelCase, technique: Technique, folder: Path) -> Step:
    """The model, inputs, loss and optimizer(s) of one technique, ready for `measure_step`."""
    model = build(folder, technique.dtype)
    inputs = make_inputs(model, case)
    params = [p for p in model.parameters() if p.requires_grad]
    # "X+kept": technique X in a loop that keeps the model outputs (logits) across backward, hfmem's convention.
    name = technique.name.removesuffix("+kept")
    keep_outputs = technique.name.endswith("+kept") or name == "outputs-kept"
    if name == "eager":
        model.set_attn_implementation("eager")
    adamw: dict[str, Any] = {"lr": 1e-4, "foreach": True}
    if name == "adamw-fused":
        adamw = {"lr": 1e-4, "fused": True}
    elif name == "adamw-loop":
        adamw = {"lr": 1e-4, "foreach": False}

    if name in ("ckpt-full", "offload+ckpt", "amp-ckpt"):
        enable_checkpointing(model)
    elif name == "ckpt-every-2":
        enable_checkpointing(model, every_n_layers=2)
    elif name == "ckpt-ops":
        enable_checkpointing(model, context_fn=torchtitan_op_sac_context)

    step_holder: list[Step] = []
    if name == "loss-chunked":
        loss_fn: Callable = partial(chunked_loss, model, inputs)
    elif name == "loss-fused":
        loss_fn = partial(fused_loss, model, inputs)
    elif name in ("offload", "offload+ckpt"):
        loss_fn = offload_loss(lambda: step_holder[0], model, inputs)
    elif name in ("amp-bf16", "amp-ckpt"):

        def loss_fn(tracker: LiveTensorTracker | None) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if not keep_outputs:
                    return hf_loss(model, inputs, tracker)
                with head_tags_loss(model, tracker):
                    outputs = model(**inputs)
            step_holder[0].kept.append(outputs)
            return outputs.loss

    elif keep_outputs:

        def loss_fn(tracker: LiveTensorTracker | None) -> torch.Tensor:
            with head_tags_loss(model, tracker):
                outputs = model(**inputs)
            step_holder[0].kept.append(outputs)  # `out = model(...); out.loss.backward()`: the logits stay
            return outputs.loss

    else:
        loss_fn = partial(hf_loss, model, inputs)

    if name == "optim-in-bwd":
        per_param = {p: torch.optim.AdamW([p], **adamw) for p in params}

        def optim_step(param: torch.Tensor) -> None:
            # torchtune/training/memory.py::register_optim_in_bwd_hooks: step, then zero_grad (set_to_none)
            tracker = getattr(step_holder[0], "tracker", None)
            with tracker.tagged("step") if tracker else contextlib.nullcontext():
                per_param[param].step()
                per_param[param].zero_grad()

        for param in params:
            param.register_post_accumulate_grad_hook(optim_step)
        optimizers: list[torch.optim.Optimizer] = []
        all_optimizers: list[torch.optim.Optimizer] = list(per_param.values())
    else:
        optimizer = torch.optim.AdamW(params, **adamw)
        optimizers = all_optimizers = [optimizer]

    step = Step(
        params=params,
        loss_fn=loss_fn,
        optimizers=optimizers,
        all_optimizers=all_optimizers,
        buffers=list(model.buffers()),
        inputs=list(inputs.values()),
    )
    step_holder.append(step)
    step.model = model  # type: ignore[attr-defined]  # keeps the model alive with the step
    return step


# ---------------------------------------------------------------------------------------------------------------
# hfmem's side (a child process)


def hfmem_setup_fields(case: ModelCase, technique: Technique) -> dict[str, Any] | str:
    """The TrainingSetup fields of one prediction, or why hfmem cannot make it."""
    if isinstance(technique.hfmem, str):
        return technique.hfmem
    import dataclasses

    import hfmem

    target: dict[str, Any] = {}
    if case.target_len is not None and case.target_len != case.seq_len:
        if "target_len" not in {f.name for f in dataclasses.fields(hfmem.TrainingSetup)}:
            return "n/a (option not in this hfmem: --target-len)"
        target = {"target_len": case.target_len}
    return {
        "precision": "fp32",
        "optimizer": "adamw",
        "zero_stages": [0],
        "batch_size": case.batch_size,
        "seq_len": case.seq_len,
        "attn": "sdpa",
        "grad_checkpointing": "none",
        "dropout": 0.0,
        **target,
        **technique.hfmem,
    }


def predict(folder: str, fields: dict[str, Any]) -> dict[str, Any]:
    """hfmem's allocated peak (no CUDA context, no fragmentation) and, where available, its three phases."""
    import hfmem
    from hfmem.types import OverheadSettings

    fields = {**fields, "zero_stages": tuple(fields["zero_stages"])}
    setup = hfmem.TrainingSetup(**fields, overheads=OverheadSettings(cuda_context_bytes=0, fragmentation=0.0))
    report = hfmem.estimate(folder, setup=setup, training=True, cache=False)
    stage = report.training.stages[0]
    context_and_slack = sum(
        size for name, size in stage.overhead_items if "CUDA context" in name or "fragmentation" in name
    )
    result: dict[str, Any] = {
        "peak_bytes": stage.total_bytes - context_and_slack,
        "peak_phase": {"optimizer_step": "step"}.get(stage.peak_phase, stage.peak_phase),
        "gradients_at_step_bytes": stage.gradients_at_step_bytes,  # all of them (components: live at the peak)
        "components": {
            "weights": stage.weights_bytes,
            "master_weights": stage.master_weights_bytes,
            "gradients": stage.gradients_bytes,
            "optimizer_states": stage.optimizer_states_bytes,
            "activations": stage.activations_bytes,
            "logits": stage.logits_bytes,
            "overhead": stage.overhead_bytes - context_and_slack,
        },
    }
    try:  # the per-phase totals hfmem's --explain prints (internal API: skipped if it moved)
        from hfmem.memory.parallel import pipeline_stages
        from hfmem.memory.peak import phase_candidates, stage_activations

        pstage = pipeline_stages(len(report.inventory.layer_names), setup)[0]
        acts = stage_activations(report.training.profile, setup, pstage)
        phases = phase_candidates(report.inventory, setup, stage, acts)
        result["phases"] = dict(zip(PHASES, (p.total_bytes for p in phases), strict=True))
    except (ImportError, AttributeError, TypeError) as e:
        result["phases_error"] = f"{type(e).__name__}: {e}"
    return result


def predict_worker(requests_path: Path, results_path: Path) -> None:
    requests = json.loads(requests_path.read_text(encoding="utf-8"))
    results = []
    for request in requests:
        try:
            results.append(predict(request["folder"], request["fields"]))
        except Exception as e:  # noqa: BLE001 — reported in the table (e.g. hfmem's exit-5 task heads)
            message = (str(e).splitlines() or [""])[0].replace(request["folder"], "<config folder>")
            results.append({"error": f"{type(e).__name__}: {message}"})
    results_path.write_text(json.dumps(results), encoding="utf-8")


def predict_all(requests: list[dict[str, Any]], workdir: Path) -> list[dict[str, Any]]:
    if not requests:
        return []
    inp, out = workdir / "requests.json", workdir / "predictions.json"
    inp.write_text(json.dumps(requests), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, __file__, "--predict-worker", str(inp), str(out)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise SystemExit(f"hfmem prediction worker failed: {tail[0]}")
    return json.loads(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------------------
# The run and its table


@dataclass
class Row:
    model: str
    technique: str
    description: str
    result: StepResult
    prediction: dict[str, Any] | str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_bytes(self) -> int | None:
        if isinstance(self.prediction, dict) and "peak_bytes" in self.prediction:
            return int(self.prediction["peak_bytes"])
        return None

    @property
    def error_pct(self) -> float | None:
        predicted = self.predicted_bytes
        return None if predicted is None else 100.0 * (predicted - self.result.peak_bytes) / self.result.peak_bytes

    @property
    def grads_adjusted_bytes(self) -> int | None:
        """The measured peak plus the gradients hfmem counts at its peak beyond those alive there. Since issue 13
        hfmem counts none before the step with --grad-accumulation 1 (hfmem/memory/peak.py phase_gradient_bytes),
        so this equals the measured peak unless a row keeps gradients through the step."""
        if self.predicted_bytes is None:
            return None
        assert isinstance(self.prediction, dict)
        missing = self.prediction["components"]["gradients"]
        missing -= self.result.phases[self.result.peak_phase]["components"].get("grads", 0)
        return self.result.peak_bytes + max(0, missing)

    @property
    def grads_adjusted_error_pct(self) -> float | None:
        adjusted = self.grads_adjusted_bytes
        if adjusted is None or self.predicted_bytes is None:
            return None
        return 100.0 * (self.predicted_bytes - adjusted) / adjusted

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "technique": self.technique,
            "description": self.description,
            "measured": {
                "peak_bytes": self.result.peak_bytes,
                "peak_phase": self.result.peak_phase,
                "phases": self.result.phases,
                "boundaries": self.result.boundaries,
                "offloaded_bytes": self.result.offloaded_bytes,
            },
            "hfmem": self.prediction,
            "error_pct": self.error_pct,
            "grads_adjusted_bytes": self.grads_adjusted_bytes,
            "grads_adjusted_error_pct": self.grads_adjusted_error_pct,
            "setup": self.config,
        }


def run(models: list[str], techniques: list[str] | None, predict_: bool, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    requests: list[tuple[Row, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="hfmem-step-") as tmp:
        for model_name in models:
            case = MODELS[model_name]
            folder = write_config(case, Path(tmp))
            for technique_name in techniques or DEFAULT_TECHNIQUES[model_name]:
                technique = TECHNIQUES[technique_name]
                if technique.decoder_only and not case.decoder:
                    continue
                start = time.perf_counter()
                step = build_step(case, technique, folder)
                result = measure_step(step)
                del step
                log(
                    f"{model_name:9s} {technique_name:13s} peak {result.peak_bytes:>11,} B at {result.peak_phase:8s}"
                    f" ({time.perf_counter() - start:.1f} s)"
                )
                config = {
                    "batch_size": case.batch_size,
                    "seq_len": case.seq_len,
                    "target_len": case.target_len,
                    "dtype": str(technique.dtype).removeprefix("torch."),
                }
                row = Row(model_name, technique_name, technique.description, result, config=config)
                fields = hfmem_setup_fields(case, technique)
                if isinstance(fields, str):
                    row.prediction = fields
                elif predict_:
                    requests.append((row, {"folder": str(folder), "fields": fields}))
                rows.append(row)
        if requests:
            log(f"asking hfmem for {len(requests)} predictions (child process)")
            for (row, _), prediction in zip(requests, predict_all([r for _, r in requests], Path(tmp)), strict=True):
                row.prediction = prediction
    return rows


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3f}"


def _components_text(components: dict[str, int]) -> str:
    return ", ".join(f"{name} {_mib(size)}" for name, size in components.items())


def environment() -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


NOTES = (
    "## Reading the table",
    "",
    "- **HF loss, where the logits go.** With the outputs dropped before backward (the HF Trainer, `baseline`), "
    "the backward peak holds the fp32 log-softmax and two logits-sized gradients (12 B/logit in fp32); a loop "
    "that keeps `out` across `out.loss.backward()` (`outputs-kept`) adds the logits themselves. hfmem's logits "
    "term is the second convention (G + 3Λ, docs/techniques.md §1.1), so it overshoots `baseline` by the logits; "
    "the `+kept` rows measure hfmem's convention (summary above).",
    "- **Optimizer step.** The `foreach` step temporary is one state-sized list of all parameters "
    "(`_foreach_sqrt`); `fused` has none; the for-loop keeps 2 × one parameter plus the previous parameter's "
    "`denom`, still bound to the loop variable of `_single_tensor_adam` (largest at the biggest parameter: "
    "tests/test_validate_step.py). hfmem's `--optimizer-impl` lines (`adamw_foreach_temporary`, "
    "`adamw_loop_temporary`, none for `fused`) give its step phase within a few KiB of each measured step column. "
    "With these small models and large vocabularies the step never holds the overall peak (the logits do), so "
    "the step temporaries show only in the step column; at 7B scale the step peaks (issue 13, §3; "
    "tests/test_optim.py against fms-acceleration's published 7B peak).",
    "- **Optimizer in backward.** Each gradient is freed by its own step in backward, so the measured step column "
    "holds the states only; hfmem counts the largest gradient (and the backward line of one parameter's foreach "
    "temporary) as live at every moment, which puts its step phase one embedding gradient above the "
    "measurement. The backward peak does not fall in these runs: it sits where backward starts at the loss, "
    "before any gradient exists.",
    "- **T5.** 4 of T5's 6 attention calls (the self-attentions, whose relative position bias needs a gradient; all "
    "6 under checkpointing, which makes the cross-attention's zero bias require a gradient too) take "
    "CPU SDPA's math kernel (`_safe_softmax` + matmuls) and save the s × s probabilities, which a GPU's "
    "memory-efficient kernel does not: the measured activations exceed hfmem's there (same caveat as "
    "`docs/validation.md`). T5's loss does not upcast (no fp32 copy of the logits).",
    "- **BERT classifier.** Both sides pass one label per sequence `(b,)` (hfmem's trace builds the labels each "
    "head's loss takes); the head's logits are `b × num_labels` scores, so the logits columns are ~0. hfmem counts "
    "gradients at every moment (exact with gradient accumulation), which the first step's forward does not hold.",
    "- **Autocast.** CPU autocast (`amp-bf16`) runs softmax and layer norm in bf16 where CUDA autocast runs them in "
    "fp32, so the activation bytes are the CPU's; the weight-cast cache (`weight_casts`: `_to_copy` of a "
    "parameter) is the same mechanism on both. hfmem's `--precision amp-bf16` emulates CUDA's lists; for Llama, "
    "Mistral and Qwen2 the ops they run are on the same side of both lists, so the `amp-bf16+kept` rows compare "
    "like with like (T5: the SDPA caveat above).",
    "- **Op-level SAC.** CPU SDPA (`_scaled_dot_product_flash_attention_for_cpu`) is added to torchtitan's save "
    "list as the stand-in for the GPU flash/efficient kernels; Qwen2's biased q/k/v projections dispatch to "
    "`addmm`, which the `b5bcd76` save set (torch's `compute_intensive_ops`) always saves and does not count, as "
    "hfmem's trace does. What `ckpt-ops` keeps beyond `ckpt-full` equals docs/techniques.md's per-token formula "
    "exactly on Llama and Qwen2 (tests/test_validate_step.py); hfmem's `--grad-checkpointing ops` activations "
    "match the measured ones within 0.01 MiB (the components above).",
    "- **Fused loss.** The re-implementation follows Liger's non-CUDA path, which is also its CUDA path for fp32: "
    "`grad_weight += torch.mm(grad_logits_chunk.t(), input_chunk).float()` allocates a head-sized temporary per "
    "chunk (bf16 on a GPU with compute capability ≥ 8 uses `addmm(out=grad_weight)` instead). hfmem's `--loss "
    "fused` models that bf16 GPU path (no temporary), so it is under the fp32 CPU measurement by about one "
    "V × h × 4 head (0.5 MiB here).",
    "- **Offload.** The off-device copies are not counted (`offloaded_bytes` in the JSON); copies are synchronous, "
    "so torchtune's 5-tensor forward stash is not reproduced (hfmem counts it: up to 5 × the largest layer input "
    "at the end of forward). What stays: the head's saved tensors, tensors under 1 KiB and parameters. hfmem "
    "refuses `--activation-offload` without checkpointing, as torchtune's recipes do, so `offload` has no "
    "prediction.",
    "- Not visible to a dispatch mode: scratch memory inside one ATen kernel.",
)


def render_markdown(rows: list[Row], env: dict[str, str], elapsed_s: float) -> str:
    lines = [
        "# One training step on the CPU, measured per technique",
        "",
        "Generated by `benchmarks/validate_step.py` "
        f"({env['date']}, torch {env['torch']}, transformers {env['transformers']}, {elapsed_s:.0f} s). "
        "What it measures and how each technique is run: the script's docstring.",
        "",
        "- Measured: live bytes of every storage returned by an ATen op (each untyped storage once), plus the "
        "parameters, buffers, inputs and optimizer states that exist before the step; the second step of a "
        "loop; the loss kept until the step ends, the model outputs dropped before backward (HF Trainer) except in "
        "the `outputs-kept` and `+kept` rows. Peak per phase; components alive at that peak.",
        "- Predicted: hfmem's allocated peak (`total` less the CUDA context and allocator fragmentation, both set to "
        "0), ZeRO 0, fp32 (bf16 row: `--precision bf16`), dropout 0. `n/a` = the option does not exist in this "
        "hfmem yet.",
        "- Peaks in bytes; components (and the phase comparison below) in MiB (2^20 bytes). The JSON beside this "
        "file has every value in bytes, and the live components at every phase boundary.",
        "- *error*: hfmem vs the measured peak. *error, grads live*: vs the measured peak plus the gradients hfmem "
        "counts at its peak beyond those alive there (with `--grad-accumulation 1`, the default, hfmem counts none "
        "before the step, as the real step: `hfmem/memory/peak.py` `phase_gradient_bytes`).",
        "",
        "| model | technique | fwd peak B | bwd peak B | step peak B | peak phase | alive at the peak (MiB) | "
        "hfmem peak B (phase) | error | error, grads live |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        phases = row.result.phases
        peak = phases[row.result.peak_phase]
        adjusted = "—"
        if isinstance(row.prediction, dict) and "peak_bytes" in row.prediction:
            predicted = f"{row.prediction['peak_bytes']:,} ({row.prediction['peak_phase']})"
            error = f"{row.error_pct:+.1f} %"
            adjusted = f"{row.grads_adjusted_error_pct:+.2f} %"
        elif isinstance(row.prediction, dict):
            predicted, error = f"hfmem failed: {row.prediction.get('error', '?')}", "—"
        else:
            predicted, error = row.prediction or "not asked (--no-predict)", "—"
        lines.append(
            f"| {row.model} | {row.technique} | {phases['forward']['peak_bytes']:,} | "
            f"{phases['backward']['peak_bytes']:,} | {phases['step']['peak_bytes']:,} | "
            f"{row.result.peak_phase} | {_components_text(peak['components'])} | {predicted} | {error} | "
            f"{adjusted} |"
        )
    lines += ["", "## hfmem's phases beside the measured ones (rows hfmem can predict)", ""]
    lines += [
        "| model | technique | measured fwd / bwd / step | hfmem fwd / bwd / step | hfmem components at its peak |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if not (isinstance(row.prediction, dict) and "peak_bytes" in row.prediction):
            continue
        measured = " / ".join(_mib(row.result.phases[p]["peak_bytes"]) for p in PHASES)
        predicted_phases = row.prediction.get("phases")
        predicted = " / ".join(_mib(predicted_phases[p]) for p in PHASES) if predicted_phases else "—"
        parts = {k: v for k, v in row.prediction["components"].items() if v}
        lines.append(f"| {row.model} | {row.technique} | {measured} | {predicted} | {_components_text(parts)} |")
    kept = [
        row
        for row in rows
        if row.grads_adjusted_error_pct is not None
        and (row.technique == "outputs-kept" or row.technique.endswith("+kept"))
    ]
    summary = []
    if kept:
        summary = [
            "## Under hfmem's conventions",
            "",
            "Rows that keep the outputs across backward (hfmem's convention for the logits; with --grad-accumulation "
            "1 it counts no gradient before the step, as the real step, so *error* and *error, grads live* agree): "
            + ", ".join(f"{row.model} {row.technique} {row.grads_adjusted_error_pct:+.3f} %" for row in kept)
            + ". T5's SDPA rows differ by what CPU SDPA's math kernel saves (below); its `eager+kept` row runs the "
            "same kernel on both sides.",
            "",
        ]
    return "\n".join([*lines, "", *summary, *NOTES]) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--techniques", nargs="+", choices=tuple(TECHNIQUES), help="default: each model's list")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "step_cpu",
        metavar="STEM",
        help="write STEM.md and STEM.json (default: benchmarks/results/step_cpu)",
    )
    parser.add_argument("--no-predict", action="store_true", help="measure only; do not ask hfmem")
    parser.add_argument("--predict-worker", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.predict_worker:
        predict_worker(*args.predict_worker)
        return 0
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    rows = run(args.models, args.techniques, not args.no_predict, lambda line: print(line, file=sys.stderr))
    env = environment()
    text = render_markdown(rows, env, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    document = {"environment": env, "rows": [row.to_dict() for row in rows]}
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=1), encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
