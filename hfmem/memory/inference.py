"""Per-GPU serving memory: weights + KV cache + recurrent state + one prefill chunk's activations + overheads; pure
functions.

The KV cache layout and the prefill working set come from the model's own code, measured on the meta device
(`hfmem.build.serve.profile_inference`); the weights from the inventory and a `QuantScheme`
(`hfmem.memory.quantization`). Everything here is arithmetic on those, so a sweep over contexts or batches costs
microseconds.

What is modelled (docs/formulas.md: "Inference: weights, KV cache, a prefill chunk, overheads"):

* **KV cache** as transformers' ``DynamicCache`` holds it after ``context`` tokens: a full layer keeps every token,
  a sliding layer at most its window (it keeps ``window − 1`` between steps and appends one, so ``window`` during
  a step), cross-attention keeps the encoder's tokens, a Mamba / linear-attention layer a fixed state. Elements are
  those the cache really stores (MLA: the compressed latent, ``kv_lora_rank + qk_rope_head_dim`` per token).
* **Recurrent state**: what a Mamba / linear-attention layer caches instead of keys and values, a fixed-size state
  per sequence (Mamba: a ``d_inner × conv_kernel`` convolution state and a ``d_inner × state_size`` SSM state),
  measured from the same cache; it does not grow with the context, so it is its own component, not KV cache.
* **Tensor parallelism** (``tp``): linear weights and embeddings split ``tp`` ways, 1-D tensors (norms, biases)
  replicated; KV heads split ``tp`` ways, and a head count below ``tp`` is replicated so every rank holds at least
  one head (vLLM's rule; MLA's single latent head is therefore held whole on every rank).
* **Activations**: the peak of live tensors in one prefill forward of ``batch × prefill_chunk`` tokens (measured),
  assumed to run while the cache is full (a serving engine prefills new requests beside running ones).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hfmem.dtypes import ALIASES, BF16, FP16, FP32, parse_dtype
from hfmem.errors import InvalidSetupError
from hfmem.memory.activations import context_length, default_seq_len
from hfmem.memory.expr import Value, ceil_div, cite, floor_div, maximum, minimum, total, value_of
from hfmem.memory.peak import allocator_buffer_bytes, bisect_boundary, fragmentation_bytes, headroom_bytes
from hfmem.memory.quantization import (
    QuantScheme,
    WeightsBreakdown,
    is_16bit_model,
    is_quantized,
    scheme_for_dtype,
    scheme_from_quantization_config,
    tensor_bytes,
    weights_breakdown,
)
from hfmem.memory.sources import SRC_BNB_MATMUL
from hfmem.types import (
    KV_DTYPES,
    InferenceEstimate,
    InferenceProfile,
    InferenceSetup,
    KvLayer,
    OverheadItem,
    ParameterInventory,
)

__all__ = [
    "KV_DTYPE_BYTES",
    "DEFAULT_PREFILL_CHUNK",
    "choose_scheme",
    "compute_dtype",
    "default_context",
    "serving_context",
    "kv_layer_bytes",
    "kv_cache_bytes",
    "kv_cache_bytes_per_token",
    "recurrent_state_bytes",
    "weights_per_gpu_bytes",
    "kv_element_bytes",
    "kv_heads_share",
    "largest_kv_layer_bytes",
    "prefill_activation_bytes",
    "dequant_transient_bytes",
    "dequant_largest_params",
    "plan_inference",
]

#: Bytes per cached element for ``--kv-dtype`` (fp8 E4M3/E5M2 and int8 caches store one byte per element; their
#: per-tensor scales are not counted): the widths of `hfmem.dtypes`.
KV_DTYPE_BYTES: dict[str, int] = {name: parse_dtype(name).bits // 8 for name in KV_DTYPES}
#: Tokens per sequence in one prefill forward unless ``--prefill-chunk`` says otherwise: a common chunked-prefill
#: budget (vLLM's ``max_num_batched_tokens`` is tuned around 2048 for interactive serving). HF ``generate()``
#: prefills the whole prompt in one forward: pass the prompt length.
DEFAULT_PREFILL_CHUNK = 2048
#: `--context max` when the config states no context length (T5's relative positions).
FALLBACK_CONTEXT = 2048
MAX_BATCH_SEARCHED = 1 << 20


def choose_scheme(
    config: Mapping[str, Any], setup: InferenceSetup, inventory: ParameterInventory
) -> tuple[QuantScheme, list[str]]:
    """The weight layout to plan with, and notes: ``--weights-dtype`` if given, else the checkpoint's.

    A checkpoint's ``quantization_config`` is used when its method is known; an unknown one falls back to the
    stored dtype with a note.
    """
    notes: list[str] = []
    qconfig = config.get("quantization_config")
    if setup.weights_dtype is not None:
        scheme = scheme_for_dtype(setup.weights_dtype, group_size=setup.group_size, double_quant=setup.double_quant)  # type: ignore[arg-type]
        if isinstance(qconfig, Mapping):
            notes.append(
                f"--weights-dtype {setup.weights_dtype} replaces the checkpoint's own quantization "
                f"({qconfig.get('quant_method', 'unknown')})"
            )
        return scheme, notes
    if isinstance(qconfig, Mapping):
        scheme = scheme_from_quantization_config(qconfig)
        if scheme is not None:
            if scheme.layout == "mxfp4":
                notes.append(
                    "MXFP4 experts stay 4-bit only with the MXFP4 kernels (transformers' `kernels` integration, "
                    "vLLM); without them transformers dequantizes them to bf16 at load: pass --weights-dtype bf16"
                )
            return scheme, notes
        notes.append(
            f"quant_method '{qconfig.get('quant_method')}' is not modelled; weights counted in the checkpoint dtype "
            "(pass --weights-dtype to choose)"
        )
    dtypes = {p.dtype for p in inventory.parameters}
    name = "checkpoint dtype (" + ", ".join(sorted(_short_name(d) for d in dtypes)) + ")"
    return QuantScheme(
        name if dtypes else BF16.name, "plain", plain_bytes=None if dtypes else BF16.bits // 8, source="checkpoint"
    ), notes


def compute_dtype(scheme: QuantScheme, inventory: ParameterInventory) -> str:
    """The dtype activations and the KV cache are computed in: fp32 for fp32 weights, else 16-bit.

    Quantized weights compute in 16 bits (the loaders' default torch dtype beside bitsandbytes/GPTQ/FP8 layers);
    checkpoint-dtype weights compute in the dtype most of their parameters have.
    """
    if scheme.layout == "plain" and scheme.plain_bytes == FP32.bits // 8:
        return FP32.torch_name  # type: ignore[return-value]
    if scheme.layout == "plain" and scheme.plain_bytes is None and inventory.has_shapes:
        counts: dict[str, int] = {}
        for param in inventory.parameters:
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel
        dominant = max(counts, key=lambda d: counts[d])
        if dominant in (FP32.torch_name, FP16.torch_name, BF16.torch_name):
            return dominant
    return (FP16 if scheme.name == FP16.name else BF16).torch_name  # type: ignore[return-value]


def default_context(config: Mapping[str, Any], built: int | None = None, *, full: bool = False) -> tuple[int, str]:
    """``(context, why)``: the serving context when ``--context`` is not given.

    By default the same tokens per sequence as training (`hfmem.memory.activations.default_seq_len`: the model's
    context length capped at 4096), so that the two plans of one query agree; ``full`` (``--context max``) is the
    model's whole context length (see `context_length`), or `FALLBACK_CONTEXT` when the config states none.
    """
    context = context_length(config, built)
    if not full:
        tokens, why = default_seq_len(config, built)
        if context is not None and context > tokens:
            why += f"; --context max serves all {context:,}"
        return tokens, why
    if context is None:
        return FALLBACK_CONTEXT, f"--context max; default {FALLBACK_CONTEXT}: the config states no context length"
    return context, f"--context max: the model's context length {context:,}"


def serving_context(config: Mapping[str, Any], setup: InferenceSetup, built: int | None = None) -> tuple[int, str]:
    """``(context, why)`` of a serving plan: ``--context N``, else `default_context` (``--context max``: full)."""
    if setup.context is not None:
        return setup.context, "--context"
    return default_context(config, built, full=setup.full_context)


def kv_element_bytes(layer: KvLayer, kv_dtype: str | None) -> int:
    """Bytes per cached element: ``--kv-dtype``'s (`KV_DTYPE_BYTES`), or the layer's own; a recurrent state keeps
    its own dtype."""
    if layer.kind == "state" or kv_dtype is None:
        return layer.element_bytes
    return KV_DTYPE_BYTES[kv_dtype]


def kv_heads_share(elements: Value, heads: Value, tp: Value) -> Value:
    """The part of ``elements`` spread over ``heads`` KV heads that one of ``tp`` GPUs holds:
    ``⌊x × max(1, ⌈h / tp⌉) / h⌋`` (vLLM: heads split over TP, fewer heads than GPUs replicated); ``x`` without TP."""
    if tp.__class__ is int and tp == 1:
        return elements
    return floor_div(elements * maximum(1, ceil_div(heads, tp)), heads)


def kv_layer_bytes(
    layer: KvLayer, *, context: Value, batch_size: Value, kv_dtype: str | None = None, tp: Value = 1
) -> Value:
    """Bytes one layer's cache holds per GPU after ``context`` tokens of each of ``batch_size`` sequences:
    ``(e × tokens, its share of the heads, + z) × b × β``, tokens = ``min(c, W)`` for a sliding layer.

    Example (Llama-3-8B: 8 KV heads × 128 dims × K and V = 2,048 elements per token per layer, bf16):
        >>> layer = KvLayer("0", "full", elements_per_token=2048, heads=8)
        >>> kv_layer_bytes(layer, context=8192, batch_size=1)
        33554432
        >>> kv_layer_bytes(KvLayer("0", "sliding", 2048, heads=8, window_tokens=4096), context=8192, batch_size=1)
        16777216
    """
    tokens = minimum(context, layer.window_tokens) if layer.kind == "sliding" and layer.window_tokens else context
    growing = kv_heads_share(layer.elements_per_token * tokens, layer.heads, tp)
    return (growing + layer.fixed_elements) * batch_size * kv_element_bytes(layer, kv_dtype)


def kv_cache_bytes(
    layers: tuple[KvLayer, ...], *, context: Value, batch_size: Value, kv_dtype: str | None = None, tp: Value = 1
) -> Value:
    """The whole cache per GPU: `kv_layer_bytes` summed over the layers."""
    return total(
        [kv_layer_bytes(layer, context=context, batch_size=batch_size, kv_dtype=kv_dtype, tp=tp) for layer in layers]
    )


def largest_kv_layer_bytes(
    layers: tuple[KvLayer, ...], *, context: Value, batch_size: Value, kv_dtype: str | None = None, tp: Value = 1
) -> Value:
    """The largest layer's cache per GPU (DynamicCache's ``torch.cat`` allocates a grown layer beside the old one)."""
    if not layers:
        return 0
    return maximum(
        *(kv_layer_bytes(layer, context=context, batch_size=batch_size, kv_dtype=kv_dtype, tp=tp) for layer in layers)
    )


def kv_cache_bytes_per_token(layers: tuple[KvLayer, ...], *, kv_dtype: str | None = None, tp: Value = 1) -> Value:
    """Bytes each new token adds per sequence and GPU while no sliding window is full (states excluded).

    Example (DeepSeek-V3 MLA: 61 layers × (512 + 64) latent elements × 2 bytes):
        >>> kv_cache_bytes_per_token(tuple(KvLayer(str(i), "full", 576) for i in range(61)))
        70272
    """
    return total(
        [
            kv_heads_share(layer.elements_per_token, layer.heads, tp) * kv_element_bytes(layer, kv_dtype)
            for layer in layers
        ]
    )


def prefill_activation_bytes(peak: Value, logits: Value, batch_size: Value, traced_batch: Value) -> Value:
    """One prefill chunk's working set for ``batch_size`` sequences from the trace at ``traced_batch``:
    ``⌈A × b / b₀⌉ + ⌊Lg × b / b₀⌋`` (per-sequence tensors scale with the batch)."""
    if value_of(batch_size) == value_of(traced_batch):
        return peak + logits
    return ceil_div(peak * batch_size, traced_batch) + floor_div(logits * batch_size, traced_batch)


def recurrent_state_bytes(state_layers: tuple[tuple[str, Value], ...], *, batch_size: Value) -> Value:
    """Bytes of the recurrent states of ``batch_size`` sequences: each layer's state bytes per sequence, summed.

    Independent of the context. Held whole on each GPU (tensor parallelism is not assumed to split it).

    Example (Mamba-130m: 24 layers of d_inner 1,536, a bf16 conv state of 4 and an fp32 SSM state of 16 per channel):
        >>> recurrent_state_bytes(tuple((str(i), 1536 * 4 * 2 + 1536 * 16 * 4) for i in range(24)), batch_size=2)
        5308416
    """
    return total([size for _, size in state_layers]) * batch_size


def weights_per_gpu_bytes(inventory: ParameterInventory, scheme: QuantScheme, tp: Value) -> Value:
    """Weights held by each of ``tp`` tensor-parallel GPUs: ≥2-D tensors split, ``⌈bytes / tp⌉`` each (their
    metadata with them), 1-D tensors (norms, biases) replicated. Without shapes (``--params``) the whole is split."""
    if not inventory.has_shapes:
        return ceil_div(weights_breakdown(inventory, scheme).total_bytes, tp)
    model_is_16bit = is_16bit_model(inventory)
    sizes = []
    for param in inventory.parameters:
        data, meta = tensor_bytes(param, scheme, model_is_16bit=model_is_16bit)
        sizes.append(ceil_div(data + meta, tp) if len(param.shape) >= 2 else data + meta)
    return total(sizes)


def dequant_largest_params(inventory: ParameterInventory, scheme: QuantScheme) -> int:
    """Elements of the largest bitsandbytes 4-bit linear (0 for other layouts): ``bnb.matmul_4bit`` takes the
    dequantize path for inputs with more than one token, so a prefill matmul holds a 16-bit copy of it."""
    if scheme.layout != "bnb-4bit":
        return 0
    return max((p.numel for p in inventory.parameters if is_quantized(p, scheme)), default=0)


def dequant_transient_bytes(largest: Value, tp: Value) -> Value:
    """The 16-bit dequantized copy of the largest 4-bit linear on one of ``tp`` GPUs: ``⌈n_max / tp⌉ × 2``
    (bitsandbytes ``MatMul4Bit.forward``)."""
    return ceil_div(largest, tp) * cite(2, SRC_BNB_MATMUL, largest, tp)


#: Stable keys and labels of the serving overhead lines (`hfmem.types.OverheadItem`).
SERVING_OVERHEAD_LABELS = {
    "cuda_context": "CUDA context + cuBLAS workspace",
    "kv_append_copy": "DynamicCache append copy (torch.cat of one layer)",
    "bnb_dequantized_weight": "bitsandbytes 4-bit dequantized weight (largest linear, 16-bit)",
    "allocator_fragmentation": "allocator fragmentation",
}


def plan_inference(
    config: Mapping[str, Any],
    inventory: ParameterInventory,
    profile: InferenceProfile,
    setup: InferenceSetup,
) -> InferenceEstimate:
    """Per-GPU serving memory for ``setup``, from the measured ``profile`` (traced at ``setup.batch_size`` and the
    prefill chunk).

    Raises:
        InvalidSetupError: impossible settings (``--tp`` not dividing the attention heads, non-positive sizes).
    """
    if setup.batch_size < 1 or setup.tp < 1:
        raise InvalidSetupError("--batch-size and --tp must be at least 1")
    if setup.context is not None and setup.context < 1:
        raise InvalidSetupError(f"--context must be at least 1, got {setup.context}")
    if setup.kv_dtype is not None and setup.kv_dtype not in KV_DTYPE_BYTES:
        raise InvalidSetupError(f"unknown --kv-dtype '{setup.kv_dtype}'; choose one of {', '.join(KV_DTYPE_BYTES)}")
    check_tp(config, setup.tp)
    scheme, notes = choose_scheme(config, setup, inventory)
    context, context_source = serving_context(config, setup, inventory.context_tokens)
    model_context = context_length(config, inventory.context_tokens)
    if model_context is not None and context > model_context:
        notes.append(f"--context {context:,} is beyond the model's context length {model_context:,}")
    breakdown: WeightsBreakdown = weights_breakdown(inventory, scheme)
    weights = weights_per_gpu_bytes(inventory, scheme, setup.tp)
    layers = profile.layers
    kv_dtype = setup.kv_dtype

    dequant_params = dequant_largest_params(inventory, scheme)
    dequant: int = dequant_transient_bytes(dequant_params, setup.tp)  # type: ignore[assignment]

    def memory(ctx: int, batch: int) -> tuple[int, int, list[OverheadItem]]:
        kv = kv_cache_bytes(layers, context=ctx, batch_size=batch, kv_dtype=kv_dtype, tp=setup.tp)
        activations: int = prefill_activation_bytes(  # type: ignore[assignment]
            profile.activation_peak_bytes, profile.logits_bytes, batch, profile.batch_size
        )
        labels = SERVING_OVERHEAD_LABELS
        items = [OverheadItem("cuda_context", labels["cuda_context"], setup.overheads.cuda_context_bytes)]
        largest_layer = largest_kv_layer_bytes(layers, context=ctx, batch_size=batch, kv_dtype=kv_dtype, tp=setup.tp)
        if largest_layer:
            items.append(OverheadItem("kv_append_copy", labels["kv_append_copy"], largest_layer))
        if dequant:
            items.append(OverheadItem("bnb_dequantized_weight", labels["bnb_dequantized_weight"], dequant))
        # Weights are allocated once at load; the slack grows with what is allocated and freed while serving.
        state = recurrent_state_bytes(profile.state_layers, batch_size=batch)
        allocated = kv + state + activations + allocator_buffer_bytes((i.key, i.size_bytes) for i in items)
        fraction = setup.overheads.fragmentation
        label = f"{labels['allocator_fragmentation']} ({fraction:.0%})"
        frag = fragmentation_bytes(allocated, fraction)
        items.append(OverheadItem("allocator_fragmentation", label, frag))  # type: ignore[arg-type]
        return kv, activations, items

    kv, activations, items = memory(context, setup.batch_size)
    overhead = sum(i.size_bytes for i in items)
    state: int = recurrent_state_bytes(profile.state_layers, batch_size=setup.batch_size)  # type: ignore[assignment]
    total_bytes = weights + kv + state + activations + overhead
    fits = headroom = max_context = max_batch = None
    if setup.gpu is not None:
        usable = setup.gpu.usable_bytes
        fits = total_bytes <= usable
        headroom = headroom_bytes(usable, total_bytes)

        def total_at(ctx: int, batch: int) -> int:
            k, a, its = memory(ctx, batch)
            return (
                weights
                + k
                + recurrent_state_bytes(profile.state_layers, batch_size=batch)
                + a
                + sum(i.size_bytes for i in its)
            )

        limit = model_context or max(context, FALLBACK_CONTEXT)
        max_context = _largest(lambda c: total_at(c, setup.batch_size) <= usable, limit)
        max_batch = _largest(lambda b: total_at(context, b) <= usable, MAX_BATCH_SEARCHED)
    if not layers and not profile.state_layers:
        notes.append("the model's cache held no tensor hfmem could read, so the KV cache shows 0; report it")
    if setup.tp > 1:
        notes.append("activations are those of one unsplit GPU (tensor parallelism would split part of them)")
        if profile.state_layers:
            notes.append("the recurrent state is counted whole on every GPU (tensor parallelism may split it)")
    if profile.attention_calls == 0 and layers:
        notes.append("this model computes attention itself; its prefill working set is measured as it runs")
    if setup.prefill_chunk is None:
        notes.append(
            f"activations of a {profile.prefill_tokens:,}-token prefill chunk per sequence; HF generate() prefills "
            "the whole prompt at once: pass --prefill-chunk <prompt tokens>"
        )
    return InferenceEstimate(
        setup=setup,
        context=context,
        context_source=context_source,
        prefill_tokens=profile.prefill_tokens,
        weights_name=scheme.name,
        weights_source=scheme.source,
        weights=breakdown,
        kv_dtype=kv_dtype or _short_name(profile.dtype),
        kv_layers=layers,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(layers, kv_dtype=kv_dtype, tp=setup.tp),
        activations_bytes=activations,
        overhead_bytes=overhead,
        overhead_items=tuple(items),
        fits=fits,
        headroom_bytes=headroom,
        max_context=max_context,
        max_batch_size=max_batch,
        notes=tuple(notes),
        profile=profile,
        recurrent_state_bytes=state,
        dequant_params=dequant_params,
    )


def check_tp(config: Mapping[str, Any], tp: int) -> None:
    """Tensor parallelism splits attention heads: ``--tp`` must divide the query heads (vLLM and Megatron refuse
    otherwise)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    heads = next(
        (text.get(k) for k in ("num_attention_heads", "n_head", "num_heads") if isinstance(text.get(k), int)), None
    )
    if tp > 1 and isinstance(heads, int) and heads % tp:
        raise InvalidSetupError(
            f"--tp {tp} does not divide the model's {heads} attention heads; choose a divisor of {heads}"
        )


def _short_name(torch_name: str) -> str:
    """A parameter's torch dtype name as hfmem writes it (``"bfloat16"`` → ``"bf16"``), or itself if unknown."""
    known = ALIASES.get(torch_name)
    return known.name if known is not None else torch_name


def _largest(predicate: Callable[[int], bool], high: int) -> int | None:
    """The largest n in [1, high] with ``predicate(n)`` (monotone), or None if even 1 fails."""
    if not predicate(1):
        return None
    if predicate(high):
        return high
    return bisect_boundary(predicate, 1, high)[0]
