"""The serving trace: the KV / state cache and the prefill peak of one forward with transformers' cache."""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any

from hfmem.build._util import _first_line, _quiet_transformers
from hfmem.build.classes import _instantiate
from hfmem.build.config import build_transformers_config
from hfmem.build.trace import (
    _SAMPLE_STEP,
    FUSED_ATTENTION,
    _at_length,
    _forward_fix,
    _image_inputs,
    _placeholder_checks_off,
    _register_fused_attention,
    _sample_lengths,
    tracing,
)
from hfmem.errors import NoKvCacheError, UnsupportedArchitectureError
from hfmem.types import (
    InferenceProfile,
    KvLayer,
    ResolvedModel,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

__all__ = ["profile_inference"]


def profile_inference(
    model: ResolvedModel,
    *,
    batch_size: int,
    prefill_tokens: int,
    dtype: str,
    trust_remote_code: bool = False,
    images_per_sample: int = 0,
) -> InferenceProfile:
    """Measure the KV cache layout and the transient memory of one prefill chunk on the meta device.

    Two things, both from the model's own code (``DynamicCache``, the cache ``generate()`` uses):

    * **Cache layout.** The model runs forward with ``use_cache=True`` on 1 and then 2 tokens, and every tensor the
      returned cache holds is read per layer: elements that grow with each token (keys and values, MLA's
      compressed latent, cross-attention over the encoder) and elements that do not (Mamba / linear-attention
      states), the number of heads a tensor-parallel split divides, and each sliding layer's window.
    * **Prefill working set.** One forward of ``batch_size`` × ``prefill_tokens`` tokens under
      ``torch.inference_mode`` with a ``TorchDispatchMode`` that follows every tensor the operators create until its
      last reference dies, as the caching allocator sees them. The peak of live bytes, parameters and the cache
      being filled excluded, is the chunk's activation memory; the last position's logits are kept and upcast
      to fp32 as ``generate()`` does (``logits_to_keep=1``). Attention runs through hfmem's fused-kernel stand-in
      (no score matrices, as FlashAttention and SDPA's fused kernels). A model that takes images gets
      ``images_per_sample`` default images per sequence in the chunk (`_image_inputs`), so the vision tower runs
      too; when it cannot, the chunk is token ids only and the profile says why.

    Raises:
        UnsupportedArchitectureError: the model cannot run forward with a cache on the meta device.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    with _quiet_transformers():
        config = build_transformers_config(model, trust_remote_code=trust_remote_code)
        _register_fused_attention()
        try:
            torch_model, _ = _instantiate(
                model,
                config,
                trust_remote_code=trust_remote_code,
                dtype=torch_dtype,
                attn_implementation=FUSED_ATTENTION,
            )
            fused = True
        except UnsupportedArchitectureError:
            torch_model, _ = _instantiate(
                model, config, trust_remote_code=trust_remote_code, dtype=torch_dtype, attn_implementation="sdpa"
            )
            fused = False
        torch_model.eval()
        try:
            one = _cache_tensors(_forward_with_cache(torch_model, config, 1, 1)[1])
            two = _cache_tensors(_forward_with_cache(torch_model, config, 1, 2)[1])
            layers, states = _kv_layers(one, two)
            images, image_tokens, images_not_traced = {}, 0, None
            try:
                images, image_tokens = _image_inputs(
                    torch_model, config, batch_size, prefill_tokens, images_per_sample, torch_dtype
                )
                calls, peak, logits_bytes = _prefill_peak(torch_model, config, batch_size, prefill_tokens, images)
            except Exception as e:  # noqa: BLE001 - any failure with images: measure token ids alone
                if not images_per_sample or "pixel_values" not in inspect.signature(torch_model.forward).parameters:
                    raise
                images, image_tokens, images_not_traced = {}, 0, _first_line(e)
                calls, peak, logits_bytes = _prefill_peak(torch_model, config, batch_size, prefill_tokens, images)
        except UnsupportedArchitectureError:
            raise
        except Exception as e:
            raise UnsupportedArchitectureError(
                f"could not run '{model.model_id}' with a KV cache on the meta device "
                f"({type(e).__name__}: {_first_line(e)}); {_forward_fix(e, torch_model, 'report it')}"
            ) from e
    return InferenceProfile(
        layers=layers,
        batch_size=batch_size,
        prefill_tokens=prefill_tokens,
        dtype=dtype,
        activation_peak_bytes=peak,
        logits_bytes=logits_bytes,
        attention_calls=calls if fused else 0,
        state_layers=states,
        images_per_sample=images_per_sample if images else 0,
        image_tokens=image_tokens,
        images_not_traced=images_not_traced,
    )


def _forward_with_cache(
    torch_model: nn.Module, config: PretrainedConfig, batch: int, tokens: int, extra: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """One forward with a fresh cache (what ``generate()`` builds), ``extra`` inputs (images) added; returns the
    output and the cache."""
    import inspect

    import torch

    ids = torch.zeros((batch, tokens), dtype=torch.long, device="meta")
    accepted = inspect.signature(torch_model.forward).parameters
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
    if getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids
    else:
        from transformers import DynamicCache

        # transformers 5.24 names the argument `cache`; earlier 5.x releases call it `past_key_values`.
        kwargs["cache" if "cache" in accepted else "past_key_values"] = DynamicCache(config=config)
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    kwargs.update(extra or {})
    with torch.inference_mode(), _placeholder_checks_off(torch_model):
        output = torch_model(**kwargs)
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    if cache is None:
        raise NoKvCacheError(type(torch_model).__name__)
    return output, cache


def _cache_tensors(cache: Any) -> list[tuple[str, str, Any, int | None]]:
    """``(layer, kind, tensor, window)`` for every tensor a cache holds, layer by layer.

    Walks transformers' cache objects: ``DynamicCache.layers`` (``keys``/``values`` and any state tensors a
    layer keeps, such as the conv/recurrent states ``LinearAttentionLayer`` holds in dicts),
    ``EncoderDecoderCache`` (its self- and cross-attention caches) and, for other cache classes, tensors in their
    attributes. 0-d bookkeeping tensors are skipped.
    """
    import torch

    found: list[tuple[str, str, Any, int | None]] = []

    def tensors_of(obj: Any) -> Iterator[Any]:
        for value in vars(obj).values():
            # Linear-attention / Mamba layers keep their states in dicts by state index (transformers
            # cache_utils.py `LinearAttentionCacheLayerMixin.conv_states` / `.recurrent_states`).
            if isinstance(value, dict):
                items = list(value.values())
            else:
                items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                if isinstance(item, torch.Tensor) and item.dim() > 0:
                    yield item

    def walk(obj: Any, prefix: str, kind: str) -> None:
        if hasattr(obj, "self_attention_cache") and hasattr(obj, "cross_attention_cache"):
            walk(obj.self_attention_cache, prefix + "self.", kind)
            walk(obj.cross_attention_cache, prefix + "cross.", "cross")
            return
        layers = getattr(obj, "layers", None)
        if isinstance(layers, (list, tuple)) and layers and not isinstance(layers[0], torch.Tensor):
            for index, layer in enumerate(layers):
                window = getattr(layer, "sliding_window", None)
                window = int(window) if isinstance(window, int) and window > 0 else None
                for tensor in tensors_of(layer):
                    found.append((f"{prefix}{index}", kind, tensor, window))
            return
        for tensor in tensors_of(obj):
            found.append((f"{prefix}0", kind, tensor, None))

    walk(cache, "", "self")
    return found


def _kv_layers(
    one: list[tuple[str, str, Any, int | None]], two: list[tuple[str, str, Any, int | None]]
) -> tuple[tuple[KvLayer, ...], tuple[tuple[str, int], ...]]:
    """The KV layers (elements per token) and the recurrent states (bytes per sequence), from the caches after 1
    and 2 tokens of one sequence.

    A tensor's growth between the two is its elements per token; what it holds beyond that does not grow with the
    tokens: a recurrent state (Mamba's conv state, ``[1, d_inner, conv_kernel]``, and SSM state,
    ``[1, d_inner, state_size]``, in transformers' ``LinearAttentionLayer``), counted in bytes tensor by tensor
    because a layer's states need not share a dtype (Mamba: a 16-bit conv state, an fp32 SSM state).
    """
    if len(one) != len(two):
        raise UnsupportedArchitectureError("the KV cache changed structure between 1 and 2 tokens; report it")
    per_layer: dict[str, dict[str, Any]] = {}
    for (name, kind, t1, window), (_, _, t2, _) in zip(one, two, strict=True):
        entry = per_layer.setdefault(
            name,
            {"kind": kind, "per_token": 0, "fixed": 0, "state_bytes": 0, "heads": 0, "bytes": 0, "window": window},
        )
        growth = t2.numel() - t1.numel()
        entry["per_token"] += growth
        if growth or kind == "cross":
            entry["bytes"] = entry["bytes"] or t1.element_size()
        if kind == "cross":
            entry["fixed"] += t1.numel() - growth
        else:
            entry["state_bytes"] += (t1.numel() - growth) * t1.element_size()
        if growth and t1.dim() == 4:  # [batch, heads, tokens, head_dim]: tensor parallelism splits heads
            entry["heads"] = max(entry["heads"], int(t1.shape[1]))
    layers = []
    states = []
    for name, e in per_layer.items():
        kind = e["kind"]
        if e["state_bytes"]:
            states.append((name, e["state_bytes"]))
        if kind == "self":
            if not e["per_token"]:
                continue  # a recurrent layer: its state is all it caches
            kind = "sliding" if e["window"] else "full"
        layers.append(
            KvLayer(
                name=name,
                kind=kind,
                elements_per_token=e["per_token"],
                fixed_elements=e["fixed"],
                heads=e["heads"] or 1,
                window_tokens=e["window"] if kind == "sliding" else None,
                element_bytes=e["bytes"] or 2,
            )
        )
    return tuple(layers), tuple(states)


def _prefill_peak(
    torch_model: nn.Module, config: PretrainedConfig, batch: int, tokens: int, extra: dict[str, Any]
) -> tuple[int, int, int]:
    """The attention calls of one prefill forward, its peak live bytes (parameters, buffers and the cache excluded)
    and the logits' bytes.

    Recurrent models fed token ids only: from short prefills where they determine it (`_sample_lengths`); the
    attention calls are those of one forward (each measured forward is its own `Trace`; the fit needs them equal).
    """
    calls: list[int] = []

    def measure(length: int) -> tuple[Hashable, tuple[int, ...]]:
        with tracing(training=False) as trace:
            peak, logits_bytes = _prefill_peak_at(torch_model, config, batch, length, extra)
        calls[:] = [trace.attention_calls]
        return trace.attention_calls, (peak, logits_bytes)

    # A peak is the largest of the moments' live bytes, each a polynomial in the length: a fixed-size moment (the
    # last logits) can be the largest in a very short prefill, so the samples are twice as long as a trace's.
    samples = () if extra else _sample_lengths(tokens, config, torch_model, step=2 * _SAMPLE_STEP)
    peak, logits_bytes = _at_length(measure, tokens, samples)
    return calls[0], peak, logits_bytes


def _prefill_peak_at(
    torch_model: nn.Module, config: PretrainedConfig, batch: int, tokens: int, extra: dict[str, Any]
) -> tuple[int, int]:
    """`_prefill_peak` of a prefill of exactly ``tokens`` tokens (``extra``: the images' inputs, if any)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    excluded = {t.untyped_storage()._cdata for t in (*torch_model.parameters(), *torch_model.buffers())}
    live: dict[int, list[int]] = {}  # storage key -> [bytes, references, serial]
    events: list[tuple[int, int]] = []  # (serial, +bytes / -bytes) in order
    serial = iter(range(1, 1 << 62))

    def release(key: int) -> None:
        entry = live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del live[key]
            events.append((entry[2], -entry[0]))

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    key = tensor.untyped_storage()._cdata
                    if key in excluded:
                        continue
                    if key in live:
                        live[key][1] += 1
                    else:
                        live[key] = [tensor.untyped_storage().nbytes(), 1, next(serial)]
                        events.append((live[key][2], live[key][0]))
                    weakref.finalize(tensor, release, key)
            return out

    with Track():
        output, cache = _forward_with_cache(torch_model, config, batch, tokens, extra)
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor):
            with torch.inference_mode():
                logits = logits[:, -1:, :].float()  # generate(): next-token logits copied to fp32
    cached = {
        live[t.untyped_storage()._cdata][2]
        for _, _, t, _ in _cache_tensors(cache)
        if t.untyped_storage()._cdata in live
    }
    current = peak = 0
    for event_serial, change in events:
        if event_serial in cached:
            continue
        current += change
        peak = max(peak, current)
    logits_bytes = logits.untyped_storage().nbytes() if isinstance(logits, torch.Tensor) else 0
    del output, cache, logits
    return peak, logits_bytes
