"""The training trace: what one micro-batch saves for backward, measured by running the model on the meta device."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import math
import re
import sys
from collections.abc import Callable, Hashable, Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from hfmem.build._util import _first_line, _quiet_transformers, _tensors_in
from hfmem.build.classes import _instantiate
from hfmem.build.config import _moe_routing, _text_config, build_transformers_config
from hfmem.build.finetune import apply_finetune
from hfmem.build.inventory import _ROUTED_EXPERT, layer_modules
from hfmem.errors import UnsupportedArchitectureError
from hfmem.types import (
    ActivationProfile,
    Attention,
    FinetuneSettings,
    LayerProfile,
    ResolvedModel,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

__all__ = [
    "profile_activations",
    "cuda_style_dropout",
    "full_length_traces",
    "Trace",
    "tracing",
    "FUSED_ATTENTION",
    "cuda_autocast",
    "AUTOCAST_LOWER_OPS",
    "AUTOCAST_FP32_OPS",
]


#: The name hfmem registers in transformers' AttentionInterface for its fused-kernel emulation.
FUSED_ATTENTION = "hfmem_fused"


def profile_activations(
    model: ResolvedModel,
    *,
    batch_size: int,
    seq_len: int,
    attn: Attention,
    dtype: str,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    finetune: FinetuneSettings | None = None,
    tensor_parallel: bool = False,
    images_per_sample: int = 0,
    autocast: str | None = None,
    target_len: int | None = None,
) -> ActivationProfile:
    """Measure what one training micro-batch saves for backward, by running the model on the meta device.

    The model's own class runs forward with labels under ``torch.autograd.graph.saved_tensors_hooks``: every
    tensor autograd keeps is seen once (by storage), parameters excluded, and attributed to the transformer layer
    that saved it. Meta tensors have shapes and dtypes but no storage, so this costs no memory and milliseconds
    per layer. Attention runs through a stand-in for a fused kernel (FlashAttention / SDPA's flash and
    memory-efficient kernels), which saves what they save: q, k and v at their own head counts, the output, and an
    fp32 log-sum-exp of shape [batch, heads, seq]. With ``attn="eager"`` the model's eager attention runs too, and
    its score matrices are measured as well.

    Args:
        batch_size: micro-batch per GPU.
        seq_len: tokens per sequence (encoder–decoder models: the encoder's).
        attn: ``sdpa`` and ``flash`` use the fused stand-in; ``eager`` the model's eager attention.
        dtype: activation dtype name (``bfloat16``, ``float16``, ``float32``).
        dropout: override every dropout probability (None: keep the config's).
        finetune: the method: a LoRA model is traced with its adapters (in the activation dtype, as under
            autocast) and frozen parameters, so what autograd does not need for frozen weights is not counted.
        tensor_parallel: also measure, per layer, the bytes Megatron TP would split (``tp_split_bytes``): a
            ``TorchFunctionMode`` follows which tensors lie between a column-parallel linear (a weight op on a
            replicated input) and a row-parallel one (a weight op on a split input). Off by default: it slows
            the trace.
        images_per_sample: for a model that takes images, feed each sample this many default images
            (`_image_inputs`); when the model cannot be traced with them, it is traced on token ids only and the
            profile says why (``images_not_traced``).
        autocast: run the forward under CUDA autocast to this 16-bit dtype name (``bfloat16``, ``float16``) over
            the ``dtype`` (fp32) model: `cuda_autocast` applies CUDA's op lists and weight cache, since
            ``torch.autocast`` does nothing on meta tensors.
        target_len: decoder tokens per sample of an encoder–decoder LM (its labels, `_task_inputs`); None: ``seq_len``.

    The model runs with the labels its head's loss takes (`_task_inputs`): token labels for an LM head, one label
    per sequence for a sequence classifier, start and end positions for question answering, and so on.

    Raises:
        UnsupportedArchitectureError: the model cannot run forward on the meta device.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    with _quiet_transformers():
        config = build_transformers_config(model, trust_remote_code=trust_remote_code)
        options = _TraceOptions(
            dropout,
            trust_remote_code,
            finetune,
            tensor_parallel,
            images_per_sample,
            getattr(torch, autocast) if autocast else None,
            target_len,
        )
        text_only = dataclasses.replace(options, images=0)
        # With images first (a model that takes none ignores them), then on token ids only; each with the fused
        # stand-in, then the model's own attention. Only a failure of the fused-kernel stand-in is fixed by the
        # model's own attention: it is tried before saying so, and measures eager attention (score matrices
        # included; `attention_calls == 0` makes the plan say so). When every attempt fails, the token-ids-only
        # fused error stands, with no advice to pass --attn eager.
        attempts = [(FUSED_ATTENTION, options)] if images_per_sample else []
        attempts += [(FUSED_ATTENTION, text_only), ("eager", text_only)]
        fused, image_error, text_error = None, None, None
        for implementation, attempt in attempts:
            try:
                fused = _trace(model, config, implementation, torch_dtype, batch_size, seq_len, attempt)
                break
            except UnsupportedArchitectureError as e:
                if attempt.images:
                    image_error = e
                else:
                    text_error = text_error or e
        if fused is None:
            assert text_error is not None
            raise text_error
        if image_error is not None and fused.images_per_sample == 0:
            fused = dataclasses.replace(fused, images_not_traced=_image_failure(image_error))
        if attn == "eager":
            used = dataclasses.replace(options, images=fused.images_per_sample and images_per_sample)
            chosen = (
                fused
                if fused.attn == "eager"
                else _trace(model, config, "eager", torch_dtype, batch_size, seq_len, used)
            )
        else:
            chosen = fused
    return ActivationProfile(
        batch_size=batch_size,
        seq_len=seq_len,
        attn=attn,
        dtype=dtype,
        vocab_size=chosen.vocab_size,
        layers=chosen.layers,
        fused_layers=fused.layers,
        other_bytes=chosen.other_bytes,
        logits_saved_bytes=chosen.logits_saved_bytes,
        logits_bytes=chosen.logits_bytes,
        attention_calls=fused.attention_calls,
        other_after_bytes=chosen.other_after_bytes,
        images_per_sample=fused.images_per_sample,
        image_tokens=fused.image_tokens,
        images_not_traced=fused.images_not_traced,
        hidden_size=chosen.hidden_size,
        head_trainable=chosen.head_trainable,
        head_saved_bytes=chosen.head_saved_bytes,
        head=chosen.head,
        logits_shape=chosen.logits_shape,
        target_len=chosen.target_len,
    )


def _register_fused_attention() -> None:
    import torch
    from transformers import AttentionInterface

    if FUSED_ATTENTION in AttentionInterface._global_mapping:
        return

    class FusedAttention(torch.autograd.Function):
        """Shapes and saved tensors of a fused attention kernel; no arithmetic (it only ever sees meta tensors)."""

        @staticmethod
        def forward(ctx: Any, query: Any, key: Any, value: Any) -> Any:
            batch, heads, seq, _ = query.shape
            # Flash / SDPA kernels return [batch, seq, heads, head_dim] memory, so the o_proj input is this tensor.
            output = query.new_empty((batch, seq, heads, value.shape[-1]))
            logsumexp = query.new_empty((batch, heads, seq), dtype=torch.float32)
            ctx.save_for_backward(query, key, value, output, logsumexp)
            trace = _CURRENT_TRACE.get()
            # A flash kernel's outputs, which op-level selective checkpointing saves.
            if trace is not None and trace.on_attention is not None:
                trace.on_attention(output, logsumexp)
            return output

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:  # pragma: no cover - never called on meta traces
            query, key, value, _, _ = ctx.saved_tensors
            return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)

    def fused_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        trace = _CURRENT_TRACE.get()
        if trace is not None:  # forwards outside a trace (the serving cache's probes) count nowhere
            trace.attention_calls += 1
        lower = _AUTOCAST.get()
        if lower is not None:  # SDPA is on CUDA autocast's 16-bit list: the kernel runs on (and saves) 16-bit q, k, v
            query, key, value = (t.to(lower) if t.dtype != lower else t for t in (query, key, value))
        return FusedAttention.apply(query, key, value), None

    AttentionInterface.register(FUSED_ATTENTION, fused_attention)


@dataclasses.dataclass
class Trace:
    """One traced forward: what hfmem's fused-attention stand-in counts while it runs (`tracing`).

    ``on_attention``: called with the stand-in's outputs (output, log-sum-exp), which a real fused kernel returns and
    op-level selective checkpointing saves (`_ops_saved_mode`).
    """

    attention_calls: int = 0
    on_attention: Callable[..., None] | None = None


#: The trace the running forward belongs to (None: no trace); set by `tracing`, read by the fused stand-in, which
#: transformers calls with no way to pass it.
_CURRENT_TRACE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("hfmem_trace", default=None)
#: Set by `full_length_traces`: every sequence traced at its full length (`_sample_lengths` gives no samples).
_FULL_LENGTH: contextvars.ContextVar[bool] = contextvars.ContextVar("hfmem_full_length", default=False)


@contextlib.contextmanager
def tracing(*, training: bool) -> Iterator[Trace]:
    """A fresh `Trace` for one forward, current while it runs; a training forward also gets `cuda_style_dropout`.

    On exit, even on error, the previous trace (if any) is current again and ``F.dropout`` is the original.
    """
    trace = Trace()
    token = _CURRENT_TRACE.set(trace)
    try:
        with cuda_style_dropout() if training else contextlib.nullcontext():
            yield trace
    finally:
        _CURRENT_TRACE.reset(token)


@dataclasses.dataclass(frozen=True)
class _TraceOptions:
    dropout: float | None
    trust_remote_code: bool
    finetune: FinetuneSettings | None
    tensor_parallel: bool
    images: int = 0
    autocast: Any = None
    target_len: int | None = None


#: CUDA autocast's float16/bfloat16 list (PyTorch ``docs/source/amp.md``@4e0ff98, "CUDA Ops that can autocast to
#: float16"; ``scaled_dot_product_attention`` from ``aten/src/ATen/autocast_mode.cpp``), by the name a
#: ``TorchFunctionMode`` sees (functions, ``Tensor`` methods and operators).
AUTOCAST_LOWER_OPS = frozenset(
    {
        "__matmul__", "__rmatmul__", "addbmm", "addmm", "addmv", "addr", "baddbmm", "bmm", "chain_matmul",
        "multi_dot", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
        "conv_tbc", "GRUCell", "linear", "LSTMCell", "matmul", "mm", "mv", "prelu", "RNNCell",
        "scaled_dot_product_attention",
    }
)  # fmt: skip
#: CUDA autocast's float32 list (same page, "CUDA Ops that can autocast to float32").
AUTOCAST_FP32_OPS = frozenset(
    {
        "__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits", "cosh",
        "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cumprod", "cumsum", "dist", "erfinv",
        "exp", "expm1", "group_norm", "hinge_embedding_loss", "kl_div", "l1_loss", "layer_norm", "log", "log_softmax",
        "log10", "log1p", "log2", "margin_ranking_loss", "mse_loss", "multilabel_margin_loss", "multi_margin_loss",
        "nll_loss", "norm", "normalize", "pdist", "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh",
        "smooth_l1_loss", "soft_margin_loss", "softmax", "softmin", "softplus", "sum", "renorm", "tan",
        "triplet_margin_loss",
    }
)  # fmt: skip

#: The 16-bit dtype of the `cuda_autocast` running now (None: none); the fused-attention stand-in reads it.
_AUTOCAST: contextvars.ContextVar[Any] = contextvars.ContextVar("hfmem_autocast", default=None)


@contextlib.contextmanager
def cuda_autocast(dtype: Any, weight_casts: set[int] | None = None) -> Iterator[dict[int, Any]]:
    """CUDA ``torch.autocast(dtype=dtype)`` as a ``TorchFunctionMode``, for meta tensors (where autocast is a no-op:
    its per-device table has no dtype for Meta) and on a CPU-only build (where ``autocast("cuda")`` disables itself).

    It sits above autograd, like autocast's dispatch key: an op on `AUTOCAST_LOWER_OPS` gets its floating inputs
    cast to ``dtype``, one on `AUTOCAST_FP32_OPS` to fp32, any other op runs on its inputs as they are (type
    promotion decides). The casts are ordinary autograd ops, so the op saves the cast copy for backward, as on a GPU.
    Weight cache (``autocast_mode.cpp::cached_cast``): an fp32 leaf that requires grad is cast once per forward and
    the copy is kept until autocast exits; the dict yielded holds those copies (by the parameter's id). Frozen
    weights are cast at every use, as autocast does. ``weight_casts`` collects the storage keys (``_cdata``) of every
    cast copy of a parameter, cached or not, so a trace can tell them from activations.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_map

    cache: dict[int, Any] = {}

    def cast(value: Any, to: Any) -> Any:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype in (to, torch.float64):
            return value
        if to is dtype and value.dtype == torch.float32 and value.is_leaf and value.requires_grad:
            if id(value) not in cache:
                cache[id(value)] = value.to(to)
            copy = cache[id(value)]
        else:
            copy = value.to(to)
        if weight_casts is not None and isinstance(value, torch.nn.Parameter):
            weight_casts.add(copy.untyped_storage()._cdata)
        return copy

    class CudaAutocast(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in AUTOCAST_LOWER_OPS:
                args, kwargs = tree_map(lambda v: cast(v, dtype), (args, kwargs))
            elif name in AUTOCAST_FP32_OPS:
                args, kwargs = tree_map(lambda v: cast(v, torch.float32), (args, kwargs))
            return func(*args, **kwargs)

    token = _AUTOCAST.set(dtype)
    try:
        with CudaAutocast():
            yield cache
    finally:
        _AUTOCAST.reset(token)


def _tensor_parallel_mode(params: set[int], replicated: set[int]) -> Any:
    """A TorchFunctionMode that marks the storages Megatron tensor parallelism would split.

    A weight op (an op taking a ≥ 2-D parameter: linear, addmm, matmul, a routed expert's slice) toggles: on an
    unsplit input it is column-parallel (output split), on a split input row-parallel (output all-reduced, whole).
    Embedding lookups, the MoE router and LoRA adapters (``replicated``) give whole outputs; any other op's output
    is split iff one of its inputs is. The mode is off inside an op, so each op is seen once, at the top level.
    """
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    class TensorParallelMode(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.split: set[int] = set()
            self.known: set[int] = set()
            self.keep_alive: list[Any] = []
            self.op_split_in = False

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            weights, activations = [], []
            for tensor in inputs:
                try:
                    key = tensor.untyped_storage()._cdata
                except Exception:  # noqa: BLE001 - tensors without storage (sparse, nested) are not tracked
                    continue
                (weights if key in params else activations).append((key, tensor))
            split_in = any(key in self.split for key, _ in activations)
            big = [key for key, t in weights if t.dim() >= 2]
            if func is torch.nn.functional.embedding or (big and all(key in replicated for key in big)):
                split_out = False
            elif big:
                split_out = not split_in
            else:
                split_out = split_in
            # Tensors an op saves that are new (its output, or copies it makes inside, such as matmul's
            # reshapes) take the side of the op's inputs.
            self.op_split_in = split_in
            out = func(*args, **kwargs)
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and not isinstance(tensor, torch.nn.Parameter):
                    with contextlib.suppress(Exception):
                        key = tensor.untyped_storage()._cdata
                        if key in params:
                            continue
                        self.known.add(key)
                        self.keep_alive.append(tensor)  # a freed storage's address must not be reused
                        if split_out:
                            self.split.add(key)
                        else:
                            self.split.discard(key)
            return out

        def is_split(self, key: int) -> bool:
            """Whether a tensor saved just now (inside the current op) lies in a split region."""
            return key in self.split if key in self.known else self.op_split_in

    return TensorParallelMode()


def _ops_policy() -> tuple[frozenset[Any], frozenset[Any]]:
    """``(always saved, alternately saved)`` ATen operators of torchtitan's op-level selective checkpointing.

    torchtitan ``torchtitan/distributed/activation_checkpoint.py`` (HEAD b5bcd76 ``SelectiveAC``; the rule of
    ``_apply_op_sac._custom_policy`` @ 1f029641): "Save all compute/comm ops, except every second mm/linear". The
    save set is torch's ``get_default_op_list().compute_intensive_ops`` plus the attention kernels, ``aten.max`` and
    ``aten.topk``; ``mm`` and ``linear`` alternate (the 1st, 3rd… of a block are saved), ``addmm`` (a biased
    ``Linear``) and ``bmm`` are always saved. A dispatch mode sees ``aten.mm``, never ``aten.linear`` (it decomposes
    above the dispatcher), as the policy does.
    """
    import torch

    aten = torch.ops.aten
    names = (
        # torch 2.13 get_default_op_list().compute_intensive_ops, mm aside
        "addmm",
        "bmm",
        "convolution",
        "upsample_bilinear2d",
        "_scaled_mm",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_flash_attention_forward",
        "_efficient_attention_forward",
        # torchtitan's additions
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_attention_math",
        "_scaled_dot_product_fused_attention_overrideable",
        "max",
        "topk",
    )
    always = [getattr(aten, name).default for name in names if hasattr(aten, name)]
    return frozenset(always), frozenset({aten.mm.default})


def _ops_saved_mode(record: Callable[[Any, bool], None], layer_entered: Callable[[], int]) -> Any:
    """A TorchDispatchMode that hands ``record(tensor, saved)`` every output of the operators op-level selective
    checkpointing saves inside a layer (`_ops_policy`); ``layer_entered()`` returns a counter that changes when a new
    layer starts, so the matmul count restarts per block (torchtitan creates its ``meta`` dict per checkpoint call)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    always, alternate = _ops_policy()

    class OpsSaved(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.block = -1
            self.mm_count = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if func in always or func in alternate:
                block = layer_entered()
                if block < 0:
                    return out
                if block != self.block:
                    self.block, self.mm_count = block, 0
                saved = True
                if func in alternate:
                    self.mm_count += 1
                    saved = self.mm_count % 2 == 1
                if saved:
                    for tensor in tree_flatten(out)[0]:
                        record(tensor, True)
            return out

    return OpsSaved()


def _trace(
    model: ResolvedModel,
    config: PretrainedConfig,
    attn_implementation: str,
    dtype: Any,
    batch_size: int,
    seq_len: int,
    options: _TraceOptions,
) -> ActivationProfile:
    """Build the model for training and measure one micro-batch (recurrent models: see `_sample_lengths`)."""
    dropout, trust_remote_code = options.dropout, options.trust_remote_code

    _register_fused_attention()
    try:
        torch_model, _ = _instantiate(
            model, config, trust_remote_code=trust_remote_code, dtype=dtype, attn_implementation=attn_implementation
        )
    except UnsupportedArchitectureError:
        if attn_implementation != FUSED_ATTENTION:
            raise
        # Models with their own attention classes (Falcon) reject registered implementations: measure their
        # eager attention instead; `attention_calls == 0` makes the plan say so.
        attn_implementation = "eager"
        torch_model, _ = _instantiate(
            model, config, trust_remote_code=trust_remote_code, dtype=dtype, attn_implementation="eager"
        )
    # Adapters in the activation dtype: under autocast their matmuls run in 16-bit like the base model's.
    torch_model = apply_finetune(torch_model, options.finetune, model.model_id, trace_dtype=dtype)
    torch_model.train()
    if dropout is not None:
        _set_dropout(torch_model, dropout)

    measured: list[ActivationProfile] = []

    def measure(tokens: int) -> tuple[Hashable, tuple[int, ...]]:
        profile = _trace_at(model, config, torch_model, attn_implementation, dtype, batch_size, tokens, options)
        measured[:] = [profile]
        return _profile_shape(profile), _profile_numbers(profile)

    # Images fill a fixed number of the positions: a model fed them is traced at its full length.
    takes_images = options.images > 0 and "pixel_values" in inspect.signature(torch_model.forward).parameters
    samples = () if takes_images else _sample_lengths(seq_len, config, torch_model)
    numbers = _at_length(measure, seq_len, samples)
    return _profile_with(measured[0], seq_len, numbers)


def _trace_at(
    model: ResolvedModel,
    config: PretrainedConfig,
    torch_model: nn.Module,
    attn_implementation: str,
    dtype: Any,
    batch_size: int,
    seq_len: int,
    options: _TraceOptions,
) -> ActivationProfile:
    """One training forward of ``batch_size`` × ``seq_len`` tokens through ``torch_model``, what it saves counted."""
    import torch

    text_config = _text_config(config)
    # Only an LM head's logits (and the loss's log-softmax of them) are vocabulary-sized; a task head's are a few
    # numbers per sequence or token, saved with the rest (`other_bytes`).
    vocab = int(getattr(text_config, "vocab_size", 0) or 0) if _head_kind(torch_model, config) in _LM_HEADS else 0

    # Outermost transformer layers, in forward order.
    layer_names = layer_modules(torch_model)
    stack: list[str] = []
    inputs: dict[str, int] = {}
    saved: dict[str, int] = {}
    order: list[str] = []

    held: set[int] = set()
    # Storages are identified by address (`_cdata`); keeping a reference to each one recorded stops a freed
    # storage's address from being reused by a new tensor during the trace.
    keep_alive: list[Any] = []

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # A checkpointed layer keeps every tensor argument until backward: the hidden states, and the mask,
        # rotary tables, position ids, T5's position biases, the encoder output… Shared ones count once.
        name = layer_names[id(module)]
        if name not in inputs:
            order.append(name)
            inputs[name] = 0
            for value in _tensors_in((*args, *kwargs.values())):
                key = value.untyped_storage()._cdata
                if key not in held and key not in params:
                    held.add(key)
                    keep_alive.append(value)
                    inputs[name] += value.untyped_storage().nbytes()
        stack.append(name)

    def post_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        stack.pop()

    # Op-level selective checkpointing: the outputs of the operators its policy saves, per layer.
    ops_keys: dict[int, str] = {}
    ops_sizes: dict[str, list[tuple[int, int]]] = {}

    def current_block() -> int:
        return len(order) - 1 if stack else -1

    def record_op_output(tensor: Any, _saved: bool) -> None:
        if not isinstance(tensor, torch.Tensor) or not stack:
            return
        with contextlib.suppress(Exception):  # tensors without storage are not tracked
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in params or key in held or key in ops_keys:
                return
            ops_keys[key] = stack[-1]
            keep_alive.append(tensor.detach())
            ops_sizes.setdefault(stack[-1], []).append((key, storage.nbytes()))

    def on_attention(*outputs: Any) -> None:
        for tensor in outputs:
            record_op_output(tensor, True)

    # The LM head: what it saves (its input) is kept apart, for a fused loss (which never runs it) and activation
    # offloading (which leaves it on the GPU).
    head = None
    with contextlib.suppress(Exception):
        head = torch_model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    in_head: list[bool] = []

    def head_pre_hook(module: nn.Module, args: Any) -> None:
        in_head.append(True)

    def head_post_hook(module: nn.Module, args: Any, output: Any) -> None:
        in_head.pop()

    params = {p.untyped_storage()._cdata for p in torch_model.parameters()}
    seen: set[int] = set()
    totals = {"other": 0, "logits": 0, "other_after": 0, "head": 0}
    reused: dict[str, int] = {}
    # Bytes each layer saves inside tensor-parallel split regions.
    split_now: dict[str, int] = {}
    mode: Any = contextlib.nullcontext()
    if options.tensor_parallel:
        routing = _moe_routing(config)
        # Whole outputs: the MoE router (replicated in Megatron) and LoRA adapters (rank-r: lora_A's output is
        # replicated; lora_B's output is added to the base layer's, whose split it takes).
        replicated = {
            p.untyped_storage()._cdata
            for name, p in torch_model.named_parameters()
            if (routing and p.dim() == 2 and p.shape[0] == routing[0] and not _ROUTED_EXPERT.search(name))
            or ".lora_" in name
        }
        mode = _tensor_parallel_mode(params, replicated)

    # Storages of autocast's 16-bit copies of parameters (amp-*): saved like activations, never logits (the LM
    # head's cast weight, saved transposed by its matmul, ends in the vocabulary).
    weight_casts: set[int] = set()

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in params or key in seen:
            return tensor.detach()  # a detached alias: returning `tensor` itself can form a reference cycle
        seen.add(key)
        keep_alive.append(tensor.detach())
        size = storage.nbytes()
        if vocab and tensor.dim() >= 1 and tensor.shape[-1] == vocab and key not in weight_casts:
            totals["logits"] += size
        elif stack:
            saved[stack[-1]] = saved.get(stack[-1], 0) + size
            if options.tensor_parallel:
                split_now[stack[-1]] = split_now.get(stack[-1], 0) + (size if mode.is_split(key) else 0)
            if ops_keys.get(key) == stack[-1]:
                reused[stack[-1]] = reused.get(stack[-1], 0) + size
        else:
            totals["other"] += size
            if order:
                totals["other_after"] += size
            if in_head:
                totals["head"] += size
        return tensor.detach()

    handles = []
    for module in torch_model.modules():
        if id(module) in layer_names:
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    if head is not None and id(head) not in layer_names:
        handles.append(head.register_forward_pre_hook(head_pre_hook))
        handles.append(head.register_forward_hook(head_post_hook))
    kwargs, head_kind = _task_inputs(torch_model, config, batch_size, seq_len, options.target_len, dtype)
    images, image_tokens = _image_inputs(torch_model, config, batch_size, seq_len, options.images, dtype)
    kwargs.update(images)
    try:
        with (
            tracing(training=True) as trace,
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            mode,
            cuda_autocast(options.autocast, weight_casts) if options.autocast is not None else contextlib.nullcontext(),
            _ops_saved_mode(record_op_output, current_block),
            _placeholder_checks_off(torch_model),
        ):
            trace.on_attention = on_attention
            output = torch_model(**kwargs)
    except Exception as e:
        raise UnsupportedArchitectureError(
            f"could not trace the activations of '{model.model_id}' on the meta device "
            f"({type(e).__name__}: {_first_line(e)}); {_forward_fix(e, torch_model, 'report it')}"
        ) from e
    finally:
        for handle in handles:
            handle.remove()

    def ops_split(name: str) -> int:
        if not options.tensor_parallel:
            return 0
        return sum(size for key, size in ops_sizes.get(name, ()) if key in mode.split)

    logits_bytes, logits_shape = _head_outputs(output)
    layers = tuple(
        LayerProfile(
            name,
            saved.get(name, 0),
            inputs.get(name, 0),
            split_now.get(name, 0),
            sum(size for _, size in ops_sizes.get(name, ())),
            reused.get(name, 0),
            ops_split(name),
        )
        for name in order
    )
    head_shape = tuple(getattr(head_weight, "shape", ()))
    return ActivationProfile(
        batch_size=batch_size,
        seq_len=seq_len,
        attn="eager" if attn_implementation == "eager" else "sdpa",
        dtype=str(dtype).removeprefix("torch."),
        vocab_size=vocab,
        layers=layers,
        fused_layers=layers,
        other_bytes=totals["other"],
        logits_saved_bytes=totals["logits"],
        logits_bytes=logits_bytes,
        attention_calls=trace.attention_calls,
        other_after_bytes=totals["other_after"],
        images_per_sample=options.images if images else 0,
        image_tokens=image_tokens,
        hidden_size=int(head_shape[1]) if len(head_shape) == 2 else 0,
        head_trainable=bool(getattr(head_weight, "requires_grad", False)),
        head_saved_bytes=totals["head"],
        head=head_kind,
        logits_shape=logits_shape,
        target_len=_decoder_len(config, seq_len, options.target_len),
    )


#: Heads whose logits are one score per vocabulary entry per token (their loss's log-softmax too): the `logits`
#: component. Every other head returns a few numbers per sequence or token.
_LM_HEADS = frozenset({"lm", "seq2seq-lm"})

#: Task heads by the class name's suffix, transformers' naming for its auto classes
#: (``AutoModelForSequenceClassification`` → ``BertForSequenceClassification``…).
_HEAD_SUFFIXES = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMultipleChoice", "multiple-choice"),
)

#: Every head the trace knows, in `ActivationProfile.head`.
HEADS = (
    "lm",
    "seq2seq-lm",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "multiple-choice",
    "none",
)

#: Choices per question of a multiple-choice head: SWAG's four endings, the data set of transformers' multiple-choice
#: guide (docs/source/en/tasks/multiple_choice.md: ``ending0`` … ``ending3``). ``--batch-size`` counts questions, as
#: the Trainer's ``per_device_train_batch_size`` does, so the encoder runs ``4 × b`` sequences.
MULTIPLE_CHOICE_CHOICES = 4


def _unwrapped(torch_model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (``PeftModel.get_base_model``), else the model itself."""
    base = getattr(torch_model, "get_base_model", None)
    return base() if callable(base) else torch_model


def _head_kind(torch_model: nn.Module, config: PretrainedConfig) -> str:
    """Which task head ``torch_model`` has (`HEADS`): from its class name, else from the labels its forward takes.

    A forward that takes no labels (``BertModel``) has no loss: ``none``. An encoder–decoder model's LM head is
    ``seq2seq-lm`` (its labels are the decoder's tokens); any other class that takes ``labels`` gets token labels.
    """
    model = _unwrapped(torch_model)
    name = type(model).__name__
    accepted = inspect.signature(model.forward).parameters
    if "labels" not in accepted and "start_positions" not in accepted:
        return "none"
    for suffix, kind in _HEAD_SUFFIXES:
        if name.endswith(suffix):
            return kind
    if "start_positions" in accepted:
        return "question-answering"
    return "seq2seq-lm" if getattr(config, "is_encoder_decoder", False) else "lm"


def _decoder_len(config: PretrainedConfig, seq_len: int, target_len: int | None) -> int | None:
    """Decoder tokens per sample: ``target_len`` (default ``seq_len``) for an encoder–decoder model, else None."""
    if not getattr(config, "is_encoder_decoder", False):
        return None
    return target_len if target_len is not None else seq_len


def _task_inputs(
    torch_model: nn.Module,
    config: PretrainedConfig,
    batch_size: int,
    seq_len: int,
    target_len: int | None,
    dtype: Any,
) -> tuple[dict[str, Any], str]:
    """The inputs and labels the head's loss takes (transformers 5.24.0; docs/techniques.md §6), and the head.

    * ``lm``: ``labels`` = the token ids ``[b, s]`` (the model shifts them: ``ForCausalLMLoss``).
    * ``seq2seq-lm``: ``labels`` and ``decoder_input_ids`` ``[b, t]``, ``t = target_len`` (T5 builds the decoder
      ids from the labels with ``_shift_right``: a tensor of its own, as here).
    * ``sequence-classification``: one label per sequence ``[b]``, int64 for ``single_label_classification``;
      ``problem_type`` ``regression`` (or none with ``num_labels == 1``: ``BertForSequenceClassification``
      decides so) takes float labels ``[b]`` (``[b, num_labels]`` when there are several),
      ``multi_label_classification`` float ``[b, num_labels]`` (``BCEWithLogitsLoss``).
    * ``token-classification``: ``labels [b, s]`` int64.
    * ``question-answering``: ``start_positions`` and ``end_positions`` ``[b]`` int64.
    * ``multiple-choice``: ``input_ids [b, 4, s]`` (`MULTIPLE_CHOICE_CHOICES`), ``labels [b]`` int64.
    * ``none``: token ids only.
    """
    import torch

    def ids(*shape: int) -> Any:
        return torch.zeros(shape, dtype=torch.long, device="meta")

    model = _unwrapped(torch_model)
    head = _head_kind(torch_model, config)
    accepted = inspect.signature(model.forward).parameters
    tokens = ids(batch_size, seq_len)
    kwargs: dict[str, Any] = {"input_ids": tokens}
    decoder_len = _decoder_len(config, seq_len, target_len)
    if head == "lm":
        kwargs["labels"] = tokens
    elif head == "seq2seq-lm":
        assert decoder_len is not None
        kwargs["labels"] = ids(batch_size, decoder_len)
    elif head == "sequence-classification":
        labels_count = int(getattr(model.config, "num_labels", 2) or 2)
        problem = getattr(model.config, "problem_type", None)
        if problem == "regression" or (problem is None and labels_count == 1):
            shape = (batch_size,) if labels_count == 1 else (batch_size, labels_count)
            kwargs["labels"] = torch.zeros(shape, dtype=dtype, device="meta")
        elif problem == "multi_label_classification":
            kwargs["labels"] = torch.zeros((batch_size, labels_count), dtype=dtype, device="meta")
        else:
            kwargs["labels"] = ids(batch_size)
    elif head == "token-classification":
        kwargs["labels"] = ids(batch_size, seq_len)
    elif head == "question-answering":
        kwargs["start_positions"] = ids(batch_size)
        kwargs["end_positions"] = ids(batch_size)
    elif head == "multiple-choice":
        kwargs["input_ids"] = ids(batch_size, MULTIPLE_CHOICE_CHOICES, seq_len)
        kwargs["labels"] = ids(batch_size)
    if decoder_len is not None and "decoder_input_ids" in accepted:
        kwargs["decoder_input_ids"] = ids(batch_size, decoder_len)
    return kwargs, head


def _head_outputs(output: Any) -> tuple[int, tuple[int, ...]]:
    """Bytes and shape of what the head returns: ``logits``, or question answering's start and end logits (two
    ``[b, s]`` tensors, shown as ``[b, s, 2]``); ``(0, ())`` for none. Each storage counts once."""
    import torch

    found = [getattr(output, name, None) for name in ("logits", "start_logits", "end_logits")]
    tensors = [t for t in found if isinstance(t, torch.Tensor)]
    if not tensors:
        return 0, ()
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    shape = tuple(tensors[0].shape)
    if len(tensors) > 1 and all(tuple(t.shape) == shape for t in tensors):
        shape = (*shape, len(tensors))
    return sum(storages.values()), shape


#: Cache layer types transformers gives layers that keep a recurrent or convolution state instead of keys and values
#: (``cache_utils.DYNAMIC_LAYER_TYPE_MAPPING``: ``LinearAttentionLayer`` and its hybrids): Mamba, Mamba-2, Jamba's
#: Mamba layers, RecurrentGemma's RG-LRU, gated delta nets, lightning attention, Zamba, Falcon-H1…
_RECURRENT_LAYER_TYPES = frozenset({"conv", "linear_attention", "hybrid", "hybrid_sliding"})


#: Model types whose forward scans the sequence token by token but whose configs name no such cache layer
#: (``modeling_rwkv.rwkv_linear_attention_cpu``, xLSTM's recurrent cells).
_SCANNING_MODEL_TYPES = frozenset({"rwkv", "xlstm"})


#: Config keys and modelling-code defaults that set a chunk or block length the sequence is padded to, or split by
#: (Mamba-2's ``chunk_size``, Bamba/Falcon-H1's ``mamba_chunk_size``, MiniMax's ``block_size``, the gated delta
#: rule's ``chunk_size: int = 64`` in ``torch_chunk_gated_delta_rule``).
_CHUNK_KEY = re.compile(r"(chunk|block)_size$")


_CHUNK_DEFAULT = re.compile(r"\b\w*(?:chunk|block)_size\s*(?::\s*int\s*)?=\s*(\d+)\b")


#: Sampled lengths are this many tokens apart at least (and start at least this long).
_SAMPLE_STEP = 8


@contextlib.contextmanager
def full_length_traces() -> Iterator[None]:
    """Trace every sequence at its full length, even where a few short traces determine it (`_sample_lengths`).

    Slow for recurrent models (their scans loop over every token on the meta device); used to check the scaling.
    """
    token = _FULL_LENGTH.set(True)
    try:
        yield
    finally:
        _FULL_LENGTH.reset(token)


def _scans_tokens(config: PretrainedConfig) -> bool:
    """Whether the model has recurrent or state-space layers (their slow path loops over the tokens in Python)."""
    text_config = _text_config(config)
    if getattr(text_config, "model_type", None) in _SCANNING_MODEL_TYPES:
        return True
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        layer_types, _ = get_layer_types_and_kwargs(text_config)
    except Exception:  # noqa: BLE001 - older transformers, or a config without layers: not recurrent
        return False
    return bool(_RECURRENT_LAYER_TYPES.intersection(layer_types))


def _sequence_period(config: PretrainedConfig, torch_model: nn.Module) -> int:
    """The least common multiple of the chunk and block lengths the config and the modelling code name (1: none).

    A chunked scan pads the sequence to a multiple of its chunk, so what it saves is a polynomial in the length only
    among lengths that leave the same remainder; the code's own defaults count because they are not in the config.
    """
    chunks = {
        value
        for key, value in _text_config(config).to_dict().items()
        if isinstance(value, int) and not isinstance(value, bool) and value > 1 and _CHUNK_KEY.search(key)
    }
    package = type(torch_model).__module__.rsplit(".", 1)[0]
    for name in sorted({type(module).__module__ for module in torch_model.modules()}):
        module = sys.modules.get(name)
        if module is None or not name.startswith(package):
            continue
        with contextlib.suppress(OSError, TypeError):  # no source on disk (compiled or frozen)
            chunks.update(int(found) for found in _CHUNK_DEFAULT.findall(inspect.getsource(module)))
    return math.lcm(*chunks) if chunks else 1


def _sample_lengths(
    seq_len: int, config: PretrainedConfig, torch_model: nn.Module, step: int = _SAMPLE_STEP
) -> tuple[tuple[int, ...], ...]:
    """Sets of four short lengths whose traces determine the one at ``seq_len``; none: trace ``seq_len`` itself.

    Only for recurrent and state-space models (`_scans_tokens`): transformers' slow path (the one that runs off
    CUDA, on the meta device too) loops over every token in Python, so a trace costs time in proportion to the
    length (issue 11: a mamba-130m-like config took 104 s at 4,096 tokens). What a forward saves is a sum of tensors
    whose sizes are products of the length and fixed sizes, a polynomial in the length, of degree 2 at most where a
    score matrix or a chunk-to-chunk state is kept (eager attention, Mamba-2's segment sums). The lengths are
    congruent to ``seq_len`` modulo every chunk length (`_sequence_period`), at least two chunks long (a single
    chunk takes shortcuts) and ``step`` tokens apart at least; a second set is 4 times as long, for what only
    settles past the shortest lengths (a peak that a fixed-size tensor holds in a very short prefill). A set is
    used only if its total is at most half of ``seq_len`` (else the full trace is as cheap).
    """
    if _FULL_LENGTH.get() or not _scans_tokens(config):
        return ()
    period = _sequence_period(config, torch_model)
    found = []
    for scale in (1, 4):
        floor = scale * step if period == 1 else 2 * period * scale
        apart = period * -(-scale * step // period)
        first = floor + (seq_len - floor) % period
        samples = tuple(first + i * apart for i in range(4))
        if 2 * sum(samples) <= seq_len:
            found.append(samples)
    return tuple(found)


def _at_length(
    measure: Callable[[int], tuple[Hashable, tuple[int, ...]]],
    seq_len: int,
    sample_sets: tuple[tuple[int, ...], ...],
) -> tuple[int, ...]:
    """The numbers ``measure`` gives at ``seq_len``, from short lengths where they determine them exactly.

    ``measure(length)`` returns a shape (the layers' names, the attention calls… which must not change with the
    length) and byte counts. For each set of lengths in turn, each count is fitted by the polynomial through the
    first lengths, of degree 1 (two, checked on a third) and else of degree 2 (three, checked on a fourth), in exact
    rational arithmetic; the value at ``seq_len`` must be a non-negative integer. When no fit checks out, or a short
    forward fails, ``seq_len`` itself is measured.
    """
    seen: dict[int, tuple[Hashable, tuple[int, ...]]] = {}
    try:
        for samples in sample_sets:
            points: list[tuple[int, Hashable, tuple[int, ...]]] = []
            for degree in (1, 2):
                while len(points) < degree + 2:
                    length = samples[len(points)]
                    if length not in seen:
                        seen[length] = measure(length)
                    points.append((length, *seen[length]))
                if len({shape for _, shape, _ in points}) > 1:
                    break
                fitted = _extrapolated(points[: degree + 1], points[degree + 1], seq_len)
                if fitted is not None:
                    return fitted
    except Exception:  # noqa: BLE001 - a forward that fails at a short length: the full length decides
        pass
    return measure(seq_len)[1]


def _extrapolated(
    fit: list[tuple[int, Hashable, tuple[int, ...]]], check: tuple[int, Hashable, tuple[int, ...]], x: int
) -> tuple[int, ...] | None:
    """Every count of the polynomial through ``fit`` (Lagrange form) at ``x``, if it also passes through ``check``."""
    xs = [length for length, _, _ in fit]

    def at(point: int, ys: list[int]) -> Fraction:
        total = Fraction(0)
        for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
            term = Fraction(yi)
            for j, xj in enumerate(xs):
                if j != i:
                    term *= Fraction(point - xj, xi - xj)
            total += term
        return total

    values = []
    for k, checked in enumerate(check[2]):
        ys = [numbers[k] for _, _, numbers in fit]
        value = at(x, ys)
        if at(check[0], ys) != checked or value.denominator != 1 or value < 0:
            return None
        values.append(int(value))
    return tuple(values)


def _profile_shape(profile: ActivationProfile) -> Hashable:
    return (tuple(layer.name for layer in profile.layers), profile.attention_calls, profile.vocab_size)


def _profile_numbers(profile: ActivationProfile) -> tuple[int, ...]:
    per_layer = (n for layer in profile.layers for n in _layer_numbers(layer))
    totals = (
        profile.other_bytes,
        profile.logits_saved_bytes,
        profile.logits_bytes,
        profile.other_after_bytes,
        profile.head_saved_bytes,
    )
    return (*per_layer, *totals)


def _layer_numbers(layer: LayerProfile) -> tuple[int, ...]:
    """A layer's byte counts, in `LayerProfile`'s field order after the name."""
    return tuple(getattr(layer, f.name) for f in dataclasses.fields(LayerProfile)[1:])


def _profile_with(profile: ActivationProfile, seq_len: int, numbers: tuple[int, ...]) -> ActivationProfile:
    """``profile`` (measured at another length) with the byte counts at ``seq_len``."""
    values = iter(numbers)
    width = len(dataclasses.fields(LayerProfile)) - 1
    layers = tuple(LayerProfile(layer.name, *(next(values) for _ in range(width))) for layer in profile.layers)
    other, logits_saved, logits, other_after, head = values
    # Per-token heads return [b, s, …]: their shape follows the length (a seq2seq LM's follows its decoder's).
    shape = profile.logits_shape
    if profile.head in ("lm", "token-classification", "question-answering") and len(shape) >= 2:
        shape = (shape[0], seq_len, *shape[2:])
    return dataclasses.replace(
        profile,
        logits_shape=shape,
        seq_len=seq_len,
        layers=layers,
        fused_layers=layers,
        other_bytes=other,
        logits_saved_bytes=logits_saved,
        logits_bytes=logits,
        other_after_bytes=other_after,
        head_saved_bytes=head,
    )


def _image_inputs(
    torch_model: nn.Module, config: PretrainedConfig, batch_size: int, seq_len: int, images: int, dtype: Any
) -> tuple[dict[str, Any], int]:
    """``pixel_values`` holding ``images`` default images per sample, and the sequence positions one image fills;
    ``({}, 0)`` for a model that takes no images or when ``images`` is 0.

    The default image is what the vision tower is built for: a square of the vision config's ``image_size``
    (Llava's CLIP 336 px, Gemma-3's SigLIP 896 px), ``num_channels`` deep, one batch of
    ``[batch_size × images, channels, size, size]`` (hfmem reads no processor config: it is not part of the model's
    config.json). Values do not matter on the meta device, so the token ids need no image placeholders: the
    image features replace the embeddings of ``image_tokens`` positions of the ``seq_len`` ones.

    Raises:
        UnsupportedArchitectureError: the vision config states no image size, the model's ``get_image_features``
            does not take a plain batch of images (Qwen2-VL's patches, Idefics3's 5-D tiles, LLaVA-NeXT's
            ``image_sizes``…), or the images' tokens do not fit ``seq_len``.
    """
    import torch

    if images <= 0 or "pixel_values" not in inspect.signature(torch_model.forward).parameters:
        return {}, 0
    vision = getattr(config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    size = (size, size) if isinstance(size, int) else size
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size)):
        raise UnsupportedArchitectureError(f"the vision config of {type(torch_model).__name__} states no image_size")
    channels = getattr(vision, "num_channels", 3) or 3
    pixel_values = torch.zeros((batch_size * images, channels, *size), dtype=dtype, device="meta")
    get_features = getattr(torch_model, "get_image_features", None) or getattr(
        getattr(torch_model, "model", None), "get_image_features", None
    )
    hidden = getattr(_text_config(config), "hidden_size", None)
    try:
        with torch.no_grad(), _placeholder_checks_off(torch_model):
            features = get_features(pixel_values=pixel_values[:1])  # type: ignore[misc]
        features = getattr(features, "pooler_output", features)
        features = features if isinstance(features, (list, tuple)) else [features]
        tokens = sum(t.numel() for t in features) // hidden  # type: ignore[operator]
    except Exception as e:
        raise UnsupportedArchitectureError(
            f"{type(torch_model).__name__}.get_image_features does not take a plain batch of "
            f"{size[0]}×{size[1]} images ({type(e).__name__}: {_first_line(e)})"
        ) from e
    if tokens * images > seq_len:
        raise UnsupportedArchitectureError(
            f"{images} image(s) of {tokens:,} tokens each do not fit a sequence of {seq_len:,} tokens"
        )
    return {"pixel_values": pixel_values}, tokens


@contextlib.contextmanager
def _placeholder_checks_off(torch_model: nn.Module) -> Iterator[None]:
    """Skip transformers' ``torch_compilable_check`` in the model's modelling modules while tracing.

    Multimodal models check that the image placeholders in the token ids match the image features
    (``get_placeholder_mask`` in transformers models/llava/modeling_llava.py, models/gemma3/modeling_gemma3.py):
    a value check, which meta tensors cannot answer (``Tensor.item()``). The trace feeds matching shapes by
    construction (`_image_inputs`); nothing else changes.
    """
    import sys

    modules = {sys.modules.get(type(m).__module__) for m in torch_model.modules()}
    patched = [(m, m.torch_compilable_check) for m in modules if m is not None and hasattr(m, "torch_compilable_check")]

    def unchecked(*args: Any, **kwargs: Any) -> None:
        return None

    for module, _ in patched:
        module.torch_compilable_check = unchecked  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, check in patched:
            module.torch_compilable_check = check  # type: ignore[attr-defined]


def _image_failure(error: UnsupportedArchitectureError) -> str:
    """Why a model was traced without images, in a phrase (the trace's own message names the model)."""
    return _first_line(error).removeprefix("could not trace the activations of ")


#: Inputs transformers' forwards ask for when they are not text models (their ValueError / TypeError name them).
_NON_TEXT_INPUTS = ("pixel_values", "input_features", "input_values", "image_embeddings", "bbox", "past_values")


def _forward_fix(error: Exception, torch_model: nn.Module, otherwise: str) -> str:
    """What to do about a forward that failed on the meta device, for the causes that recur across model types."""
    import inspect

    text = str(error)
    accepted = inspect.signature(torch_model.forward).parameters
    # CLIP-style models need their images: without pixel_values their vision tower reads `None.shape`.
    needs_images = "pixel_values" in accepted and "'NoneType' object" in text
    if "input_ids" not in accepted or needs_images or any(name in text for name in _NON_TEXT_INPUTS):
        return (
            f"{type(torch_model).__name__} takes inputs other than token ids (images, audio, boxes, series) and hfmem "
            "runs models on token ids only"
        )
    if "Expected inputs of BF16 type" in text:
        # torch.nn.functional.grouped_mm, transformers' default MoE experts kernel, is bfloat16-only.
        return (
            "PyTorch's grouped_mm (the MoE experts kernel) takes bfloat16 only: serve with --weights-dtype bf16, "
            "train with --precision bf16-mixed"
        )
    if "meta tensors" in text or "register_meta" in text:
        return "its forward reads tensor values (data-dependent shapes), which meta tensors do not have; report it"
    return otherwise


@contextlib.contextmanager
def cuda_style_dropout() -> Iterator[None]:
    """Make ``F.dropout`` keep a 1-byte mask, as CUDA's fused kernel does (``torch.native_dropout``).

    Off CUDA (on the meta device too) ATen's dropout multiplies by a noise tensor and saves it in the activation
    dtype; on a GPU the fused kernel saves a bool mask. Models call ``nn.functional.dropout`` through the module
    attribute, so replacing it reaches them all; it is restored on exit.
    """
    import torch
    from torch import nn

    original = nn.functional.dropout

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if training and 0.0 < p < 1.0:
            return torch.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    nn.functional.dropout = dropout
    try:
        yield
    finally:
        nn.functional.dropout = original


def _set_dropout(model: nn.Module, probability: float) -> None:
    """Override every dropout probability: nn.Dropout modules and the float rates attention modules keep."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability
        for attr in ("attention_dropout", "dropout", "attn_dropout", "dropout_rate"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, probability)
