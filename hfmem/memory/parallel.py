"""Tensor, sequence, pipeline, context and expert parallelism: what one GPU holds; pure.

Megatron-LM's layout (Shoeybi et al. 2019; Narayanan et al. 2021; Korthikanti et al. 2022):

* **TP** (``t``): attention and MLP linears are split column-/row-parallel, embeddings and the LM head
  vocab-parallel, so each of those weights is ``1/t`` per GPU; norms, biases and MoE routers are replicated (a
  column-parallel bias is split in Megatron; hfmem keeps every 1-D tensor whole, a few KB per layer). Activations:
  what lies between a column- and a row-parallel linear is split ``1/t``; the rest (norm inputs, the linears'
  inputs, residual dropout: ``10·s·b·h`` of a GPT layer) is replicated — Korthikanti et al. 2022, Table 2.
* **SP** (with TP): the replicated regions are split along the sequence too, so every activation is ``1/t``.
* **PP** (``p``): stage ``k`` holds consecutive layers (``floor(k·L/p)`` to ``floor((k+1)·L/p) − 1``), the first
  stage the embeddings, the last the final norm and LM head (and, with tied embeddings, a copy of the word
  embeddings, as Megatron keeps one on the last stage). With 1F1B, stage ``k`` keeps ``min(p − k, m)`` micro-batches
  of activations in flight; with the interleaved schedule (``v`` model chunks per GPU) ``2(p − k − 1) + (v − 1)p + 1``
  chunks (Megatron ``schedules.py`` warm-up count + 1), i.e. the first stage holds ``p·(1 + (p − 1)/(p·v))``
  micro-batches' worth of its layers (Korthikanti et al. 2022 §4.2.3).
* **CP** (``c``): the sequence is split, so activations are traced at ``s/c`` tokens.
* **EP** (``e``): routed experts are split over ``e`` GPUs carved from data parallelism (Megatron's expert-DP is
  ``dp·c/e``). With balanced routing each EP rank computes ``1/e`` of the ``e·b·s·top_k`` token-expert pairs of its
  group: the same routed activations per GPU as without EP.
* **DP** = ``gpus × nodes / (t·p·c)``; ZeRO / FSDP shard over ``dp·c`` (see `TrainingSetup.sharding_degree`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from hfmem.memory.expr import Value, ceil_div, floor_div, maximum, minimum, total
from hfmem.types import ActivationProfile, LayerProfile, ParameterInfo, ParameterInventory, TrainingSetup

__all__ = [
    "LayerSums",
    "layer_sums",
    "parameter_count",
    "tensors_params",
    "PipelineStage",
    "pipeline_stages",
    "in_flight_microbatches",
    "local_inventory",
    "tensor_parallel_layer",
    "stage_profile",
    "korthikanti_layer_bytes",
    "in_flight",
    "active_params_per_token",
    "tp_saved_bytes",
    "tp_input_bytes",
    "stage_other_bytes",
    "sharding_degree",
    "data_parallel_degree",
    "expert_sharding_degree",
]


@dataclass(frozen=True)
class LayerSums:
    """A model's parameters by where they sit (`layer_sums`).

    Attributes:
        layer_groups: ``(layers, parameters of one such layer)`` for each distinct layer size, in order of first
            appearance.
        before_params: outside the layers and before them (embeddings).
        after_params: outside the layers and after them (final norm, untied LM head).
    """

    layer_groups: tuple[tuple[int, int], ...]
    before_params: int
    after_params: int

    @property
    def layers(self) -> int:
        return sum(count for count, _ in self.layer_groups)


def layer_sums(inventory: ParameterInventory) -> LayerSums:
    """Sum ``inventory``'s parameters per transformer layer and outside the layers, and group equal layers."""
    per_layer: dict[int, int] = {}
    before = after = 0
    for p in inventory.parameters:
        if p.layer_index is not None:
            per_layer[p.layer_index] = per_layer.get(p.layer_index, 0) + p.numel
        elif p.after_layers:
            after += p.numel
        else:
            before += p.numel
    groups: dict[int, int] = {}
    for i in sorted(per_layer):
        groups[per_layer[i]] = groups.get(per_layer[i], 0) + 1
    return LayerSums(tuple((count, size) for size, count in groups.items()), before, after)


def tensors_params(shapes: Iterable[Sequence[Value]]) -> Value:
    """Σ over tensors of the product of their shape: the elements of those tensors."""
    return total([math.prod(shape) for shape in shapes])


def parameter_count(layer_groups: Iterable[tuple[Value, Value]], before: Value, after: Value) -> Value:
    """Ψ = Σ layers × parameters of one layer + the parameters before and after the layers."""
    return total([count * size for count, size in layer_groups] + [before, after])


@dataclass(frozen=True)
class PipelineStage:
    """One pipeline rank: its index, the layers it holds (indices into the model's layers) and extras."""

    index: int
    layers: tuple[int, ...]
    holds_embeddings: bool
    holds_head: bool

    @property
    def holds(self) -> tuple[str, ...]:
        return tuple(
            name for name, held in (("embeddings", self.holds_embeddings), ("LM head", self.holds_head)) if held
        )


def data_parallel_degree(world: Value, tp: Value, pp: Value, cp: Value) -> Value:
    """``max(1, ⌊gpus × nodes / (tp · pp · cp)⌋)``: the model replicas (`check_parallel` makes it exact)."""
    return maximum(1, floor_div(world, tp * pp * cp))


def sharding_degree(
    gpus_per_node: Value, nodes: Value, tp: Value, pp: Value, cp: Value, *, hybrid_shard: bool = False
) -> Value:
    """N, the ZeRO / FSDP sharding degree of the dense parameters: data parallel × context parallel.

    CP ranks hold the same weights, so Megatron's distributed optimizer
    (``get_data_parallel_group(with_context_parallel=True)``) and torchtitan's FSDP mesh (``dp_shard_cp``) shard
    over both. ``hybrid_shard`` shards only over the ranks inside one node, ``max(1, ⌊gpus / tp⌋)`` (ranks ordered
    tp-cp-dp-pp, Megatron's default ``--order``), and replicates across nodes.

    Example:
        >>> sharding_degree(4, 2, 8, 1, 1, hybrid_shard=True)  # a TP group spans the node: nothing to shard
        1
    """
    degree = data_parallel_degree(gpus_per_node * nodes, tp, pp, cp) * cp
    if hybrid_shard:
        degree = minimum(degree, maximum(1, floor_div(gpus_per_node, tp)))
    return degree


def active_params_per_token(total: Value, routed: Value, top_k: Value, num_experts: Value) -> Value:
    """Parameters one token uses in an MoE: all but the routed experts, plus ``k / E`` of them:
    ``Ψ − R + ⌊R × k / E⌋``."""
    return total - routed + floor_div(routed * top_k, num_experts)


def expert_sharding_degree(n: Value, ep: Value) -> Value:
    """ZeRO / FSDP degree of routed experts: ``max(1, ⌊N / ep⌋)`` (Megatron's expert-DP)."""
    return maximum(1, floor_div(n, ep))


def pipeline_stages(num_layers: int, setup: TrainingSetup) -> tuple[PipelineStage, ...]:
    """The layers each pipeline rank holds.

    1F1B: stage ``k`` holds layers ``floor(k·L/p) … floor((k+1)·L/p) − 1`` (earlier stages get the smaller share
    when ``p`` does not divide ``L``). Interleaved: ``C = p·v`` chunks split the same way, chunk ``c`` holding
    layers ``floor(c·L/C) … floor((c+1)·L/C) − 1``, on rank ``c mod p`` (Megatron's virtual pipeline). ``C`` need not
    divide ``L``: torch.distributed.pipelining runs whatever stage modules it is given (torch 2.13
    ``schedules.py`` ``ScheduleInterleaved1F1B``), torchtitan splits uneven layer counts as evenly as it can
    (``pipeline_parallel.py`` ``generate_llm_fqn_per_model_part``: ``num_effective_layers % num_stages`` stages get
    one more), and Megatron takes any ``--pipeline-model-parallel-layout``; every chunk needs one layer at least
    (`hfmem.rules.check_parallel`). Chunks then differ by one layer at most.

    Example:
        >>> [s.layers for s in pipeline_stages(5, TrainingSetup())]
        [(0, 1, 2, 3, 4)]
    """
    par = setup.parallel
    p = par.pp
    if p == 1:
        return (PipelineStage(0, tuple(range(num_layers)), True, True),)
    if par.pp_schedule == "interleaved":
        chunks = p * par.virtual_stages
        layers: list[list[int]] = [[] for _ in range(p)]
        for chunk in range(chunks):
            layers[chunk % p].extend(range(chunk * num_layers // chunks, (chunk + 1) * num_layers // chunks))
        return tuple(PipelineStage(k, tuple(layers[k]), k == 0, k == p - 1) for k in range(p))
    return tuple(
        PipelineStage(k, tuple(range(k * num_layers // p, (k + 1) * num_layers // p)), k == 0, k == p - 1)
        for k in range(p)
    )


def in_flight_microbatches(setup: TrainingSetup, stage: int) -> float:
    """Micro-batches of activations pipeline rank ``stage`` holds at its peak (in units of its layers).

    1F1B (Narayanan et al. 2021 §2.2; Megatron ``forward_backward_pipelining_without_interleaving``): the
    warm-up runs ``p − k − 1`` forwards before the first backward, so ``min(p − k, m)`` are in flight.
    Interleaved (``forward_backward_pipelining_with_interleaving``): ``2(p − k − 1) + (v − 1)·p`` warm-up chunks + 1,
    at most ``m·v``, each ``1/v`` of the rank's layers; on the first rank that is ``p + (p − 1)/v`` micro-batches,
    Korthikanti et al. 2022's factor ``1 + (p − 1)/(p·v)`` on ``p`` micro-batches.

    Example:
        >>> from hfmem.types import ParallelSettings
        >>> in_flight_microbatches(TrainingSetup(parallel=ParallelSettings(pp=4)), 0)
        4.0
    """
    par = setup.parallel
    if par.pp == 1:
        return 1.0
    interleaved = par.pp_schedule == "interleaved"
    return float(in_flight(par.pp, stage, par.microbatches, par.virtual_stages if interleaved else None))


def in_flight(p: Value, k: Value, m: Value | None, v: Value | None) -> Value:
    """The formula of `in_flight_microbatches` for ``p`` stages, stage ``k``, ``m`` micro-batches (None: as many as
    the warm-up needs) and, for the interleaved schedule, ``v`` model chunks per GPU (None: 1F1B)."""
    if v is not None:
        chunks = 2 * (p - k - 1) + (v - 1) * p + 1
        if m is not None:
            chunks = minimum(chunks, m * v)
        return chunks / v
    return minimum(p - k, m) if m is not None else p - k


def _tp_split(param: ParameterInfo, setup: TrainingSetup, moe_experts: int | None) -> int:
    """How many ways TP (and EP) split one parameter; 1 = replicated."""
    par = setup.parallel
    ways = 1
    if len(param.shape) >= 2:
        router = moe_experts is not None and not param.is_routed_expert and param.shape[0] == moe_experts
        if (param.quantizable or param.is_embedding) and not router:
            ways *= par.tp
    if param.is_routed_expert:
        ways *= par.ep
    return ways


def local_inventory(inventory: ParameterInventory, setup: TrainingSetup, stage: PipelineStage) -> ParameterInventory:
    """The parameters one GPU of pipeline ``stage`` holds before ZeRO/FSDP sharding, TP/EP splits applied.

    A split tensor keeps ``ceil(dim0 / ways)`` rows (the first dimension, which holds the experts of a fused
    expert tensor and the vocabulary of an embedding); only the element count matters, except to Adafactor.
    A ``--params`` plan (no tensors) is divided evenly by ``tp × pp``.
    """
    par = setup.parallel
    if par.tp == 1 and par.pp == 1 and par.ep == 1:
        return inventory
    if not inventory.has_shapes:
        share = -(-inventory.total_params // (par.tp * par.pp))
        return ParameterInventory.from_count(share)
    moe_experts = inventory.moe.num_experts if inventory.moe else None
    keep: list[ParameterInfo] = []
    layer_set = set(stage.layers)
    for param in inventory.parameters:
        if param.layer_index is not None:
            held = param.layer_index in layer_set
        elif param.after_layers:
            held = stage.holds_head
        else:
            held = stage.holds_embeddings
        ways = _tp_split(param, setup, moe_experts)
        if not held:
            continue
        if ways > 1:
            param = replace(param, shape=(-(-param.shape[0] // ways), *param.shape[1:]))
        keep.append(param)
    if stage.holds_head and not stage.holds_embeddings and inventory.tied_embeddings:
        # Megatron keeps a copy of the tied word embeddings on the last stage (`shared_embedding_or_output_weight`).
        tied = next((p for p in inventory.parameters if p.is_embedding and not p.after_layers), None)
        if tied is not None:
            ways = _tp_split(tied, setup, moe_experts)
            keep.append(replace(tied, shape=(-(-tied.shape[0] // ways), *tied.shape[1:]), after_layers=True))
    owned: dict[str, int] = {}
    for param in keep:
        module = param.name.rsplit(".", 1)[0]
        owned[module] = owned.get(module, 0) + param.numel
    largest = max(owned.items(), key=lambda item: item[1], default=("", 0))
    local = ParameterInventory.from_parameters(
        keep,
        buffer_params=inventory.buffer_params,
        largest_module=largest,
        module_params=inventory.module_params,
        architecture=inventory.architecture,
        model_type=inventory.model_type,
        moe_routing=(inventory.moe.num_experts // par.ep, inventory.moe.experts_per_token) if inventory.moe else None,
        layer_names=inventory.layer_names,
        tied_embeddings=inventory.tied_embeddings,
    )
    return local


def tensor_parallel_layer(layer: LayerProfile, tp: Value, sp: bool) -> LayerProfile:
    """One layer's saved bytes on one GPU of a TP group (Korthikanti et al. 2022, Table 2).

    Without SP the replicated part stays whole and the split part is ``1/t``; with SP both are ``1/t``, and so is
    the layer input that full checkpointing keeps (it is sequence-parallel).
    """
    if tp.__class__ is int and tp == 1:
        return layer
    return LayerProfile(
        layer.name,
        tp_saved_bytes(layer.saved_bytes, layer.tp_split_bytes, tp, sp),  # type: ignore[arg-type]
        tp_input_bytes(layer.input_bytes, tp, sp),  # type: ignore[arg-type]
        ceil_div(layer.tp_split_bytes, tp),  # type: ignore[arg-type]
        tp_saved_bytes(layer.ops_saved_bytes, layer.ops_tp_split_bytes, tp, sp),  # type: ignore[arg-type]
        # The recompute's reuse of the cache: its split part is taken as large as it can be (the least reuse, so
        # the recompute is never under-counted).
        tp_saved_bytes(layer.ops_reused_bytes, minimum(layer.ops_reused_bytes, layer.ops_tp_split_bytes), tp, sp),  # type: ignore[arg-type]
        ceil_div(layer.ops_tp_split_bytes, tp),  # type: ignore[arg-type]
    )


def tp_saved_bytes(saved: Value, split: Value, t: Value, sp: bool) -> Value:
    """A layer's saved bytes on one of ``t`` TP GPUs: ``⌈S / t⌉`` with SP, else ``S − T + ⌈T / t⌉`` (the part T
    between the column- and row-parallel linears split, the rest replicated)."""
    if sp:
        return ceil_div(saved, t)
    return saved - split + ceil_div(split, t)


def tp_input_bytes(inputs: Value, t: Value, sp: bool) -> Value:
    """A layer's input (what full checkpointing keeps) on one of ``t`` TP GPUs: ``⌈I / t⌉`` with SP, else whole."""
    return ceil_div(inputs, t) if sp else inputs


def korthikanti_layer_bytes(
    *, s: int, b: int, h: int, a: int, t: int = 1, sp: bool = False, selective: bool = False
) -> float:
    """Korthikanti et al. 2022 per-layer activation bytes of a GPT layer, via hfmem's TP/SP split.

    The paper's own breakdown (§4.1): ``10·sbh`` replicated under TP (two LayerNorm inputs, the QKV and first MLP
    linear inputs, two dropout masks) and ``24·sbh + 5·a·s²·b`` between the column- and row-parallel linears
    (Q, K, V, softmax and its dropout, the output projection's input, GeLU input and output). Selective
    recomputation drops the ``5·a·s²·b`` attention core. The result is `tensor_parallel_layer` applied to that
    layer, so the test of this function against Table 2 checks hfmem's split rule.
    """
    core = 0 if selective else 5 * a * s * s * b
    split = 24 * s * b * h + core
    saved = 10 * s * b * h + split
    layer = tensor_parallel_layer(LayerProfile("gpt", saved, 2 * s * b * h, split), t, sp)
    return float(layer.saved_bytes)


def stage_other_bytes(before: Value, after: Value, t: Value, sp: bool) -> Value:
    """Bytes saved outside the layers on one GPU: before them (first stage) + after them (last stage), ``⌈· / t⌉``
    with SP (the embeddings' output and the final norm are sequence-parallel)."""
    other = before + after
    return ceil_div(other, t) if sp else other


def stage_profile(
    profile: ActivationProfile, setup: TrainingSetup, stage: PipelineStage, *, t: Value | None = None
) -> ActivationProfile:
    """The activation profile of one micro-batch on one GPU of pipeline ``stage``, TP/SP split.

    Layers are those the stage holds; saved outside the layers: before them (token ids, embeddings) on the first
    stage, after them (final norm, LM head input) on the last; the logits on the last stage, split ``1/t``
    (vocab-parallel LM head and cross-entropy; a task head's are whole). With SP the embeddings' output and the
    final norm are sequence-parallel too (``1/t``). ``t``: the TP degree as an operand (default: the setup's number).
    """
    par = setup.parallel
    if par.tp == 1 and par.pp == 1:
        return profile
    held = set(stage.layers)
    tp: Value = par.tp if t is None else t

    def pick(layers: tuple[LayerProfile, ...]) -> tuple[LayerProfile, ...]:
        return tuple(tensor_parallel_layer(layer, tp, par.sp) for i, layer in enumerate(layers) if i in held)

    other_before = profile.other_bytes - profile.other_after_bytes
    other = stage_other_bytes(
        other_before if stage.holds_embeddings else 0,
        profile.other_after_bytes if stage.holds_head else 0,
        tp,
        par.sp,
    )
    # Only an LM head is vocab-parallel; a task head's few scores (a classifier's b × num_labels) are whole.
    split: Value = tp if profile.head in ("lm", "seq2seq-lm") else 1
    logits = (ceil_div(profile.logits_bytes, split) if split != 1 else profile.logits_bytes) if stage.holds_head else 0
    logits_saved = (
        (ceil_div(profile.logits_saved_bytes, split) if split != 1 else profile.logits_saved_bytes)
        if stage.holds_head
        else 0
    )
    return replace(
        profile,
        layers=pick(profile.layers),
        fused_layers=pick(profile.fused_layers),
        other_bytes=other,
        other_after_bytes=profile.other_after_bytes if stage.holds_head else 0,
        logits_bytes=logits,
        logits_saved_bytes=logits_saved,
        head_saved_bytes=(ceil_div(profile.head_saved_bytes, tp) if par.sp else profile.head_saved_bytes)
        if stage.holds_head
        else 0,
    )
