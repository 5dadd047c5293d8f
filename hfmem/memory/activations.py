"""Activations and logits of one micro-batch, from the meta-device `ActivationProfile`; pure functions.

The profile says what each layer of the real model saves for backward at the planned batch and sequence length
(see `hfmem.build.trace.profile_activations`); here it becomes bytes per GPU under each checkpointing policy, and
the vocabulary-sized terms of the loss become their own component.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hfmem.dtypes import bytes_per_element
from hfmem.memory.expr import Value, ceil_div, cite, floor_div, maximum, minimum, total, value_of
from hfmem.memory.sources import (
    SRC_ACT_OFFLOAD,
    SRC_CHUNKED_LOSS,
    SRC_FUSED_LOSS,
    SRC_LOSS,
)
from hfmem.memory.states import PRECISION_SPECS
from hfmem.types import DEFAULT_LOSS_CHUNKS, ActivationProfile, Checkpointing, LayerProfile, Loss, Precision

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
    "logits_terms",
    "chunked_logits_forward_bytes",
    "chunked_logits_backward_bytes",
    "liger_chunk_tokens",
    "fused_loss_saved_bytes",
    "fused_loss_transient_bytes",
    "checkpointed_layer",
    "layer_kept_bytes",
    "layer_recompute_bytes",
    "offload_stash_bytes",
    "OFFLOAD_STASH_TENSORS",
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
        saved_bytes: tensors kept on the GPU from forward to backward (what autograd saves, and what op-level
            checkpointing caches), vocabulary-sized ones excluded; with activation offloading, what stays on the GPU.
        recompute_bytes: transient during backward: one checkpointed layer re-materialised (full / ops
            checkpointing) or one layer's attention scores (selective checkpointing with eager attention).
        logits_saved_bytes: vocabulary-sized tensors kept for backward (the loss's log-softmax; a fused loss's
            gradients of the head's input and weight).
        logits_forward_bytes: vocabulary-sized memory live at the loss in forward.
        logits_backward_bytes: vocabulary-sized memory live when backward starts at the loss.
        offloaded_bytes: saved tensors moved to CPU RAM (``--activation-offload``), per GPU.
        offload_forward_bytes: offloaded tensors still on the GPU at the end of forward (the copy stash).
        offload_backward_bytes: offloaded tensors back on the GPU while a layer's backward runs.
    """

    saved_bytes: int
    recompute_bytes: int
    logits_saved_bytes: int
    logits_forward_bytes: int
    logits_backward_bytes: int
    offloaded_bytes: int = 0
    offload_forward_bytes: int = 0
    offload_backward_bytes: int = 0


def checkpointed_layer(index: int, every: int) -> bool:
    """Whether layer ``index`` (0-based) is checkpointed when every ``every``-th one is: transformers'
    ``_set_gradient_checkpointing`` sets ``layer_index % every_n_layers == 0`` (layers 0, k, 2k…: ⌈L / k⌉ of them)."""
    return index % every == 0


def layer_kept_bytes(layer: LayerProfile, fused: LayerProfile, checkpointing: Checkpointing) -> Value:
    """What one layer keeps on the GPU from forward to backward under ``checkpointing``.

    * ``none``: every tensor it saves, S.
    * ``full``: its inputs, I (Korthikanti et al. 2022 §4; HF ``GradientCheckpointingLayer``).
    * ``selective``: what a fused attention kernel keeps, S_f (the attention core is recomputed; §5).
    * ``ops``: its inputs and the outputs of the operators torchtitan's policy saves, I + P (`SRC_OPS_SAC`).
    """
    if checkpointing == "none":
        return layer.saved_bytes
    if checkpointing == "full":
        return layer.input_bytes
    if checkpointing == "selective":
        return fused.saved_bytes
    return layer.input_bytes + layer.ops_saved_bytes


def layer_recompute_bytes(layer: LayerProfile, fused: LayerProfile, checkpointing: Checkpointing) -> Value:
    """What re-materialising one checkpointed layer allocates during backward: all it saves, S (``full``); the
    score matrices a fused kernel does not keep, S − S_f (``selective``); all it saves but the op outputs the
    checkpoint cached and hands back, S − P_r (``ops``)."""
    if checkpointing == "full":
        return layer.saved_bytes
    if checkpointing == "selective":
        return maximum(layer.saved_bytes - fused.saved_bytes, 0)
    if checkpointing == "ops":
        return maximum(layer.saved_bytes - layer.ops_reused_bytes, 0)
    return 0


def estimate_activations(
    profile: ActivationProfile,
    checkpointing: Checkpointing,
    *,
    loss: Loss = "hf",
    loss_chunks: Value = DEFAULT_LOSS_CHUNKS,
    checkpoint_every: int = 1,
    activation_offload: bool = False,
) -> ActivationEstimate:
    """Activation and logits bytes under a checkpointing policy, a loss path and activation offloading.

    Layers (`layer_kept_bytes`, `layer_recompute_bytes`): with ``checkpoint_every`` = k only layers 0, k, 2k… are
    checkpointed (`checkpointed_layer`); the others keep all they save. Backward re-runs one checkpointed layer at
    a time, so the largest recompute comes back transiently.

    Logits by ``loss`` (`logits_terms`): transformers' ``ForCausalLMLoss`` on the whole logits, torchtune's chunked
    cross-entropy, or a fused linear + cross-entropy kernel.

    ``activation_offload`` (`offload_terms`): the saved tensors go to CPU RAM except the LM head's and op-level
    checkpointing's cached outputs.
    """
    every = checkpoint_every if checkpointing != "none" else 1
    kept: list[Value] = []
    recomputes: list[Value] = []
    for index, (layer, fused) in enumerate(zip(profile.layers, profile.fused_layers, strict=True)):
        if checkpointing != "none" and checkpointed_layer(index, every):
            kept.append(layer_kept_bytes(layer, fused, checkpointing))
            recomputes.append(layer_recompute_bytes(layer, fused, checkpointing))
        else:
            kept.append(layer.saved_bytes)
    other: Value = profile.other_bytes
    if loss == "fused":  # the fused kernel takes the head's input itself; the head's Linear never runs
        other = other - profile.head_saved_bytes
    saved = total(kept) + other
    recompute: Value = maximum(*recomputes) if recomputes else 0
    logits_saved, logits_forward, logits_backward = logits_terms(profile, loss, loss_chunks)
    if not activation_offload:
        return ActivationEstimate(saved, recompute, logits_saved, logits_forward, logits_backward)  # type: ignore[arg-type]
    stays = profile.head_saved_bytes if loss != "fused" else 0
    if checkpointing == "ops":
        stays = stays + total(
            [layer.ops_saved_bytes for i, layer in enumerate(profile.layers) if checkpointed_layer(i, every)]
        )
    per_layer = [
        kept_bytes - (layer.ops_saved_bytes if checkpointing == "ops" and checkpointed_layer(i, every) else 0)
        for i, (layer, kept_bytes) in enumerate(zip(profile.layers, kept, strict=True))
    ]
    offloaded = saved - stays
    inputs = [layer.input_bytes for layer in profile.layers]
    stash = offload_stash_bytes(maximum(*inputs) if inputs else 0, offloaded)
    back = maximum(*per_layer) if per_layer else 0
    return ActivationEstimate(
        stays,  # type: ignore[arg-type]
        recompute,  # type: ignore[arg-type]
        logits_saved,  # type: ignore[arg-type]
        logits_forward,  # type: ignore[arg-type]
        logits_backward,  # type: ignore[arg-type]
        offloaded_bytes=offloaded,  # type: ignore[arg-type]
        offload_forward_bytes=stash,  # type: ignore[arg-type]
        offload_backward_bytes=back,  # type: ignore[arg-type]
    )


#: torchtune ``OffloadActivations(max_fwd_stash_size=5)``: offloaded tensors kept on the GPU until their copy ends.
OFFLOAD_STASH_TENSORS = 5


def offload_stash_bytes(largest_input: Value, offloaded: Value) -> Value:
    """Offloaded tensors still on the GPU when forward ends: at most 5 (torchtune's ``max_fwd_stash_size``), each
    taken as large as the largest layer input (a checkpointed layer's saved tensor), and never more than was
    offloaded: ``min(5 × I_max, offloaded)``."""
    return minimum(cite(OFFLOAD_STASH_TENSORS, SRC_ACT_OFFLOAD, largest_input) * largest_input, offloaded)


def logits_terms(profile: ActivationProfile, loss: Loss, chunks: Value) -> tuple[Value, Value, Value]:
    """``(saved, forward, backward)`` vocabulary-sized bytes of the loss path (G the logits, Λ the log-softmax the
    HF loss keeps, both measured). 0 on a pipeline stage without the LM head (no logits). A model without a
    language-model head (``hidden_size`` 0: a classifier) takes the HF path whatever ``loss`` says."""
    logits, log_softmax = profile.logits_bytes, profile.logits_saved_bytes
    if loss == "hf" or not value_of(logits) or not value_of(profile.hidden_size):
        return log_softmax, logits_forward_bytes(logits, log_softmax), logits_backward_bytes(logits, log_softmax)
    if loss == "chunked":
        return (
            log_softmax,
            chunked_logits_forward_bytes(logits, log_softmax, chunks),
            chunked_logits_backward_bytes(log_softmax, chunks),
        )
    tokens = micro_batch_tokens(profile.batch_size, profile.seq_len)
    element = bytes_per_element(profile.dtype)
    saved = fused_loss_saved_bytes(tokens, profile.vocab_size, profile.hidden_size, element, profile.head_trainable)
    forward = saved + fused_loss_transient_bytes(tokens, profile.vocab_size, profile.hidden_size, element)
    return saved, forward, saved


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


def chunked_logits_forward_bytes(logits: Value, log_softmax: Value, chunks: Value) -> Value:
    """Vocabulary-sized bytes at the last chunk of torchtune's chunked cross-entropy in forward: every chunk's
    16-bit logits G (the model returns them as a list), every chunk's saved fp32 log-softmax Λ, and the fp32 copy of
    one chunk when the loss upcasts: ``G + Λ + ⌈Λ / N⌉``, else ``G + Λ``."""
    if value_of(log_softmax) > value_of(logits):
        return logits + log_softmax + ceil_div(log_softmax, chunks)
    return logits + log_softmax


def chunked_logits_backward_bytes(log_softmax: Value, chunks: Value) -> Value:
    """Vocabulary-sized bytes when backward reaches the chunked loss: the logits list is deleted before backward
    (torchtune's recipe), every chunk's Λ stays until its own backward, and one chunk's two fp32 gradients (of the
    log-softmax, and through it) exist at a time: ``Λ + 2 × ⌈Λ / N⌉``."""
    return log_softmax + cite(2, SRC_CHUNKED_LOSS, log_softmax) * ceil_div(log_softmax, chunks)


def liger_chunk_tokens(tokens: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk of Liger's fused linear + cross-entropy: ``next_pow2(⌈T / ⌈V / h⌉⌉)`` (``inc_factor =
    triton.cdiv(V, H)``, ``chunk_size = triton.next_power_of_2(triton.cdiv(BT, inc_factor))``), at most T."""
    if tokens <= 0 or vocab <= 0 or hidden <= 0:
        return 0
    rows = -(-tokens // -(-vocab // hidden))
    return min(1 << (rows - 1).bit_length(), tokens)


def fused_loss_saved_bytes(tokens: Value, vocab: Value, hidden: Value, element: Value, head_trained: bool) -> Value:
    """What a fused linear + cross-entropy keeps from forward to backward: the gradient of the head's input,
    ``T × h × e``, and of the head's weight, ``V × h × e``, when the head is trained (Liger computes both in the
    forward and saves them; Cut Cross-Entropy keeps less, so this bounds it)."""
    grad_input = tokens * hidden * element
    if not head_trained:
        return grad_input
    return grad_input + vocab * hidden * element


def fused_loss_transient_bytes(tokens: Value, vocab: Value, hidden: Value, element: Value) -> Value:
    """What exists only inside the fused loss's forward: one chunk's logits, ``C × V × e`` (C = `liger_chunk_tokens`),
    and the fp32 loss per token, ``4 × T``."""
    chunk = cite(
        liger_chunk_tokens(value_of(tokens), value_of(vocab), value_of(hidden)),  # type: ignore[arg-type]
        SRC_FUSED_LOSS,
        tokens,
        vocab,
        hidden,
    )
    return chunk * vocab * element + cite(4, SRC_FUSED_LOSS, tokens) * tokens


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
                line(x.ops_saved_bytes, y.ops_saved_bytes),
                line(x.ops_reused_bytes, y.ops_reused_bytes),
                line(x.ops_tp_split_bytes, y.ops_tp_split_bytes),
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
        head_saved_bytes=line(one.head_saved_bytes, two.head_saved_bytes),
        logits_shape=(batch_size, *one.logits_shape[1:]) if one.logits_shape else (),
    )
