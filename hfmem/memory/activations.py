"""Activations and logits of one micro-batch, from the meta-device `ActivationProfile`; pure functions.

The profile says what each layer of the real model saves for backward at the planned batch and sequence length
(see `hfmem.build.trace.profile_activations`); here it becomes bytes per GPU under each checkpointing policy, and
the vocabulary-sized terms of the loss become their own component.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hfmem.memory.expr import Value, cite, floor_div, maximum, total, value_of
from hfmem.memory.sources import SRC_LOSS
from hfmem.memory.states import PRECISION_SPECS
from hfmem.types import ActivationProfile, Checkpointing, LayerProfile, Precision

__all__ = [
    "micro_batch_tokens",
    "profile_tokens",
    "logit_element_bytes",
    "profile_logit_element_bytes",
    "typical_layer_saved_bytes",
    "bytes_per_token",
    "ActivationEstimate",
    "CONTEXT_KEYS",
    "DEFAULT_SEQ_LEN_CAP",
    "activation_dtype",
    "context_length",
    "default_seq_len",
    "estimate_activations",
    "extrapolate_profile",
    "logits_forward_bytes",
    "logits_backward_bytes",
]

#: Config keys that hold the context length, most common first (Llama/Mistral/Qwen/BERT, GPT-2, others).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx", "max_sequence_length")
#: `--seq-len` defaults to the model's context length capped here: long contexts are rarely trained at full length.
DEFAULT_SEQ_LEN_CAP = 4096


def activation_dtype(precision: Precision) -> str:
    """The torch dtype name activations are kept in: the working weights' dtype of the precision (`PRECISION_SPECS`),
    16-bit for mixed and pure 16-bit training, fp32 otherwise."""
    return PRECISION_SPECS[precision].weights.torch_name  # type: ignore[return-value]


def context_length(config: Mapping[str, Any], built: int | None = None) -> int | None:
    """The model's context length, or None (e.g. T5's relative positions).

    ``built`` is the context length of the config transformers built (`ParameterInventory.context_tokens`) and wins
    when known: it reads a composite model's text config and fills in the config class's defaults (Gemma-3's
    config.json states none; ``Gemma3TextConfig`` defaults to 131,072). Without it, config.json's keys are read.
    """
    if built is not None:
        return built
    for source in (config, config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = source.get(key) if isinstance(source, Mapping) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def default_seq_len(config: Mapping[str, Any], built: int | None = None) -> tuple[int, str]:
    """``(seq_len, why)``: the context length capped at 4096, and a phrase saying where it came from."""
    context = context_length(config, built)
    if context is None:
        return DEFAULT_SEQ_LEN_CAP, f"default {DEFAULT_SEQ_LEN_CAP}: the config states no context length"
    if context > DEFAULT_SEQ_LEN_CAP:
        return DEFAULT_SEQ_LEN_CAP, f"the model's context {context:,} capped at {DEFAULT_SEQ_LEN_CAP}"
    return context, f"the model's context length {context:,}"


def micro_batch_tokens(batch_size: Value, seq_len: Value) -> Value:
    """Tokens in one micro-batch: b × s."""
    return batch_size * seq_len


def profile_tokens(profile: ActivationProfile) -> int:
    """Tokens of the traced micro-batch (`micro_batch_tokens`)."""
    return micro_batch_tokens(profile.batch_size, profile.seq_len)  # type: ignore[return-value]


def logit_element_bytes(logits_bytes: Value, tokens: Value, vocab: Value) -> Value:
    """Bytes per logit: G / (tokens × V), the logits tensor being tokens × vocabulary elements."""
    return floor_div(logits_bytes, tokens * vocab)


def profile_logit_element_bytes(profile: ActivationProfile) -> int:
    """Bytes per logit of the traced micro-batch, or 0 when the logits are not exactly b × s × V elements of one
    width (no vocabulary, or a tensor of another shape). An encoder–decoder LM's logits are the decoder's,
    b × t × V (t = ``target_len``)."""
    length = profile.target_len if profile.target_len is not None else profile.seq_len
    tokens, vocab = micro_batch_tokens(profile.batch_size, length), profile.vocab_size
    if not vocab or not tokens:
        return 0
    elt: int = logit_element_bytes(profile.logits_bytes, tokens, vocab)  # type: ignore[assignment]
    return elt if elt and tokens * vocab * elt == profile.logits_bytes else 0


def typical_layer_saved_bytes(profile: ActivationProfile) -> int:
    """The saved bytes most layers have (the first seen on a tie; 0 without layers)."""
    sizes = [layer.saved_bytes for layer in profile.layers]
    return max(set(sizes), key=sizes.count) if sizes else 0


def bytes_per_token(nbytes: int, tokens: int) -> float:
    """``nbytes`` per token (for display; 0 tokens count as 1)."""
    return nbytes / max(tokens, 1)


@dataclass(frozen=True)
class ActivationEstimate:
    """Bytes per GPU for one micro-batch.

    Attributes:
        saved_bytes: tensors kept from forward to backward (what autograd saves), vocabulary-sized ones excluded.
        recompute_bytes: transient during backward: one layer re-materialised (full checkpointing) or one layer's
            attention scores (selective checkpointing with eager attention).
        logits_saved_bytes: vocabulary-sized tensors autograd saves (the loss's log-softmax).
        logits_forward_bytes: vocabulary-sized memory live at the loss in forward.
        logits_backward_bytes: vocabulary-sized memory live when backward starts at the loss.
    """

    saved_bytes: int
    recompute_bytes: int
    logits_saved_bytes: int
    logits_forward_bytes: int
    logits_backward_bytes: int


def estimate_activations(profile: ActivationProfile, checkpointing: Checkpointing) -> ActivationEstimate:
    """Activation and logits bytes under a checkpointing policy.

    * ``none``: every layer's saved tensors (Korthikanti et al. 2022 call this "no recomputation").
    * ``full``: only each layer's input is kept (HF ``gradient_checkpointing_enable`` checkpoints every
      `GradientCheckpointingLayer`); backward re-runs one layer at a time, so the largest layer's saved tensors
      come back transiently (Korthikanti et al. 2022, §4: "full recomputation", 2sbh per layer stored).
    * ``selective``: the attention core is recomputed (Korthikanti et al. 2022, §5). What stays is what a fused
      kernel keeps (q, k, v, output, log-sum-exp); with eager attention the score matrices of one layer come back
      transiently. With a fused kernel selective recomputation changes nothing: it already recomputes them.

    Logits (``transformers/loss/loss_utils.py`` ``ForCausalLMLoss``): the model returns 16-bit logits, the loss
    upcasts them to fp32 (``logits.float()``) and ``cross_entropy`` saves its fp32 log-softmax. At the loss in
    forward: logits + log-softmax + the fp32 copy (10 bytes per logit in bf16). When backward starts: logits +
    log-softmax + the dense gradient of the loss + the gradient through log-softmax (14 bytes per logit).
    """
    other = profile.other_bytes
    if checkpointing == "none":
        saved = total([layer.saved_bytes for layer in profile.layers]) + other
        recompute: Value = 0
    elif checkpointing == "full":
        saved = total([layer.input_bytes for layer in profile.layers]) + other
        recompute = maximum(*(layer.saved_bytes for layer in profile.layers)) if profile.layers else 0
    else:
        saved = total([layer.saved_bytes for layer in profile.fused_layers]) + other
        gaps = [
            maximum(e.saved_bytes - f.saved_bytes, 0) for e, f in zip(profile.layers, profile.fused_layers, strict=True)
        ]
        recompute = maximum(*gaps) if gaps else 0
    logits, logits_saved = profile.logits_bytes, profile.logits_saved_bytes
    return ActivationEstimate(
        saved_bytes=saved,  # type: ignore[arg-type]
        recompute_bytes=recompute,  # type: ignore[arg-type]
        logits_saved_bytes=logits_saved,
        logits_forward_bytes=logits_forward_bytes(logits, logits_saved),  # type: ignore[arg-type]
        logits_backward_bytes=logits_backward_bytes(logits, logits_saved),  # type: ignore[arg-type]
    )


def logits_forward_bytes(logits: Value, log_softmax: Value) -> Value:
    """Vocabulary-sized bytes live at the loss in forward: the logits G, the loss's fp32 copy of them when it upcasts
    (its log-softmax Λ is then larger than G; the copy is as large as Λ) and Λ: ``G + 2Λ``, else ``G + Λ``
    (transformers ``ForCausalLMLoss``: ``logits.float()``, then ``cross_entropy``)."""
    if value_of(log_softmax) > value_of(logits):
        return logits + cite(2, SRC_LOSS, log_softmax) * log_softmax
    return logits + log_softmax


def logits_backward_bytes(logits: Value, log_softmax: Value) -> Value:
    """Vocabulary-sized bytes live when backward starts at the loss: G + Λ + the loss's gradient + the gradient
    through the log-softmax, ``G + 3Λ``."""
    return logits + cite(3, SRC_LOSS, log_softmax) * log_softmax


def extrapolate_profile(one: ActivationProfile, two: ActivationProfile, batch_size: int) -> ActivationProfile:
    """The profile at ``batch_size`` from profiles measured at batch 1 and 2.

    Every saved tensor is either per-sample (grows linearly with the batch) or shared by the batch (rotary
    tables: constant), so ``bytes(b) = bytes(1) + (b − 1)·(bytes(2) − bytes(1))`` holds exactly for the layers and
    the logits (a few bytes of loss scalars aside).
    """

    def line(a: int, b: int) -> int:
        return a + (batch_size - 1) * (b - a)

    def layers(xs: tuple[LayerProfile, ...], ys: tuple[LayerProfile, ...]) -> tuple[LayerProfile, ...]:
        return tuple(
            LayerProfile(
                x.name,
                line(x.saved_bytes, y.saved_bytes),
                line(x.input_bytes, y.input_bytes),
                line(x.tp_split_bytes, y.tp_split_bytes),
            )
            for x, y in zip(xs, ys, strict=True)
        )

    return replace(
        one,
        batch_size=batch_size,
        layers=layers(one.layers, two.layers),
        fused_layers=layers(one.fused_layers, two.fused_layers),
        other_bytes=line(one.other_bytes, two.other_bytes),
        logits_saved_bytes=line(one.logits_saved_bytes, two.logits_saved_bytes),
        logits_bytes=line(one.logits_bytes, two.logits_bytes),
        logits_shape=(batch_size, *one.logits_shape[1:]) if one.logits_shape else (),
    )
