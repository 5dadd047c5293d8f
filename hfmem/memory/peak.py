"""Peak memory per GPU: model states + activations + logits + overheads at the moment that is largest; pure.

Three moments of a training step are compared (README: "Peak, not a sum"):

* ``forward``: at the loss. States, every saved activation, the logits with the loss's fp32 copies.
* ``backward``: as backward starts at the loss, with the loss gradients, or (checkpointing) while a layer is
  re-materialised; communication buffers are live.
* ``optimizer_step``: activations are gone; the step's transients (DeepSpeed's fp32 gradient copy, the
  parameter all-gather bucket, Adafactor's fp32 upcast) are live.

Gradients are counted as live at every moment. That is exact with gradient accumulation (they persist between
micro-batches) and conservative by at most the gradient term otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from hfmem.memory.activations import ActivationEstimate, estimate_activations, extrapolate_profile
from hfmem.memory.memo import IdentityMemo
from hfmem.memory.methods import qlora_dequant_transient_bytes
from hfmem.memory.parallel import (
    PipelineStage,
    in_flight_microbatches,
    local_inventory,
    pipeline_stages,
    stage_profile,
)
from hfmem.memory.states import PRECISION_SPECS, compute_training, shard_count, trainable_spec
from hfmem.types import (
    ActivationProfile,
    ParameterInventory,
    PeakPhase,
    StageMemory,
    TrainingEstimate,
    TrainingSetup,
)

__all__ = [
    "plan_training",
    "overhead_items",
    "phase_candidates",
    "stage_activations",
    "bisect_boundary",
    "MAX_GPUS_SEARCHED",
    "MAX_BATCH_SEARCHED",
]

MAX_GPUS_SEARCHED = 4096
MAX_BATCH_SEARCHED = 1 << 20
FP32_BYTES = 4


def fsdp_unit_params(inventory: ParameterInventory) -> tuple[int, int]:
    """``(params, trainable params)`` of the largest FSDP unit: one transformer layer (the usual
    ``transformer_auto_wrap_policy``), or the root unit (embeddings, final norm, LM head) if larger."""
    if not inventory.has_shapes:
        return 0, 0
    units: dict[int | None, list[int]] = {}
    for p in inventory.parameters:
        unit = units.setdefault(p.layer_index, [0, 0])
        unit[0] += p.numel
        unit[1] += p.numel if p.trainable else 0
    largest = max(units.values(), key=lambda u: u[0], default=[0, 0])
    return largest[0], largest[1]


def overhead_items(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, phase: PeakPhase
) -> list[tuple[str, int]]:
    """Named overheads live at ``phase`` (before allocator fragmentation, which `plan_training` adds on top).

    Sources: the CUDA context figure in `OverheadSettings`; DDP's bucket copy of the gradients
    (``gradient_as_bucket_view=False`` by default, "the saved memory size will be equal to the total gradients
    size" — torch ``DistributedDataParallel`` docs); DeepSpeed's ``reduce_bucket_size``,
    ``allgather_bucket_size`` and ``stage3_prefetch_bucket_size`` defaults (``deepspeed/runtime/zero/config.py``);
    DeepSpeed's fp32 copy of the gradient partition at ``step()`` (docs ``memory.rst``); the gathered largest
    module at ZeRO-3 (DeepSpeed's estimator, 16-bit params + grads of the largest layer). With ``--fsdp``, FSDP's
    own buffers replace DeepSpeed's: the unsharded 16-bit unit being computed and the next one prefetched
    (torch ``FullyShardedDataParallel`` ``forward_prefetch`` / ``backward_prefetch=BACKWARD_PRE``; REFERENCE §2.5),
    plus that unit's unsharded gradients before the reduce-scatter. QLoRA: bitsandbytes' dequantized 16-bit copy of
    the largest 4-bit weight during its matmul.
    """
    spec = PRECISION_SPECS[setup.precision]
    tspec = trainable_spec(setup)
    settings = setup.overheads
    stage = states.zero_stage
    fsdp = setup.parallel.fsdp
    total, trainable = inventory.total_params, inventory.trainable_params
    n = setup.num_gpus
    hfmem_accounting = setup.accounting == "hfmem"
    items = [("CUDA context + cuBLAS workspace", settings.cuda_context_bytes)]
    if fsdp is not None:
        unit, unit_trainable = fsdp_unit_params(inventory)
        if phase in ("forward", "backward") and fsdp in ("full_shard", "hybrid_shard") and n > 1:
            items.append(("FSDP unsharded unit + prefetched unit (16-bit)", 2 * unit * spec.weight_bytes))
        if phase == "backward" and n > 1 and fsdp != "no_shard":
            items.append(("FSDP unsharded gradients of one unit", unit_trainable * tspec.grad_bytes))
    else:
        if stage == 0 and n > 1:
            items.append(("DDP gradient buckets", trainable * tspec.grad_bytes))
        if stage >= 1 and n > 1:
            items.append(
                ("DeepSpeed reduce bucket", min(settings.reduce_bucket_elements, trainable) * tspec.grad_bytes)
            )
        if phase in ("forward", "backward") and stage == 3 and hfmem_accounting:
            grad_bytes = spec.grad_bytes if setup.method == "full" else 0
            gathered = inventory.largest_module_params * (spec.weight_bytes + grad_bytes)
            gathered += min(settings.prefetch_bucket_elements, total) * spec.weight_bytes
            items.append(("ZeRO-3 gathered parameters + prefetch", gathered))
    if phase in ("forward", "backward") and setup.method == "qlora":
        items.append(("QLoRA dequantized weight (16-bit)", qlora_dequant_transient_bytes(inventory)))
    if phase == "optimizer_step" and setup.offload == "none":
        if stage >= 1 and hfmem_accounting and fsdp is None and tspec.grad_bytes < FP32_BYTES:
            partition = shard_count(trainable, n)
            if stage == 3:  # ZeRO-3 steps over sub-groups of at most `sub_group_size` (1e9) elements at a time
                partition = min(partition, settings.sub_group_elements)
            items.append(("fp32 gradient partition at step", partition * FP32_BYTES))
        if stage in (1, 2) and n > 1 and fsdp is None:
            items.append(
                (
                    "parameter all-gather bucket",
                    min(settings.allgather_bucket_elements, trainable) * tspec.weight_bytes,
                )
            )
        if setup.optimizer == "adafactor":
            largest_tensor = (
                shard_count(trainable, n)
                if stage >= 1
                else max((p.numel for p in inventory.parameters if p.trainable), default=0)
            )
            items.append(("Adafactor fp32 upcast of one tensor", largest_tensor * FP32_BYTES))
    return [(name, size) for name, size in items if size]


def _phase_bytes(activations: ActivationEstimate | None, phase: PeakPhase) -> tuple[int, int]:
    """``(activations, logits)`` live at ``phase``."""
    if activations is None or phase == "optimizer_step":
        return 0, 0
    if phase == "forward":
        return activations.saved_bytes, activations.logits_forward_bytes
    # Backward: the loss gradients come first; the recompute of a checkpointed layer happens later, when the
    # vocabulary-sized tensors are gone, so the two do not add up.
    if activations.recompute_bytes > activations.logits_backward_bytes:
        return activations.saved_bytes + activations.recompute_bytes, 0
    return activations.saved_bytes, activations.logits_backward_bytes


def _phases(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, activations: ActivationEstimate | None
) -> Iterator[tuple[PeakPhase, int, int, list[tuple[str, int]]]]:
    """``(phase, activations, logits, overhead items)`` at forward, backward and the optimizer step, in order."""
    for phase in ("forward", "backward", "optimizer_step"):
        acts, logits = _phase_bytes(activations, phase)  # type: ignore[arg-type]
        items = overhead_items(inventory, setup, states, phase)  # type: ignore[arg-type]
        allocated = (
            states.states_bytes + acts + logits + sum(size for name, size in items if "CUDA context" not in name)
        )
        fragmentation = int(allocated * setup.overheads.fragmentation)
        if fragmentation:
            items.append((f"allocator fragmentation ({setup.overheads.fragmentation:.0%})", fragmentation))
        yield phase, acts, logits, items  # type: ignore[misc]


def _at_phase(
    states: StageMemory,
    activations: ActivationEstimate | None,
    phase: PeakPhase,
    acts: int,
    logits: int,
    items: list[tuple[str, int]],
) -> StageMemory:
    return replace(
        states,
        activations_bytes=acts,
        logits_bytes=logits,
        overhead_bytes=sum(size for _, size in items),
        overhead_items=tuple(items),
        peak_phase=phase,
        activation_saved_bytes=activations.saved_bytes if activations else 0,
        activation_recompute_bytes=activations.recompute_bytes if activations else 0,
        logits_saved_bytes=activations.logits_saved_bytes if activations else 0,
    )


def phase_candidates(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, activations: ActivationEstimate | None
) -> list[StageMemory]:
    """The memory of one GPU at each of the three moments (forward, backward, optimizer step), in that order.

    The peak is the largest of them; `hfmem.explain` shows all three.
    """
    return [_at_phase(states, activations, *parts) for parts in _phases(inventory, setup, states, activations)]


def _peak(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, activations: ActivationEstimate | None
) -> StageMemory:
    # The largest moment; the first wins ties (the peak is reached there first). One StageMemory is built, not
    # three: sweeps and the GPU-count bisection call this thousands of times.
    chosen = max(
        _phases(inventory, setup, states, activations),
        key=lambda parts: states.states_bytes + parts[1] + parts[2] + sum(size for _, size in parts[3]),
    )
    best = _at_phase(states, activations, *chosen)
    if setup.gpu is not None:
        headroom = setup.gpu.usable_bytes - best.total_bytes
        best = replace(best, fits=headroom >= 0, headroom_bytes=headroom)
    return best


@dataclass(frozen=True)
class _Rank:
    """One GPU of one pipeline stage: what it holds before ZeRO/FSDP sharding, and its activations."""

    stage: PipelineStage
    inventory: ParameterInventory
    activations: ActivationEstimate | None


def stage_activations(
    profile: ActivationProfile | None, setup: TrainingSetup, stage: PipelineStage
) -> ActivationEstimate | None:
    """Activations of pipeline ``stage``: one micro-batch's (TP/SP split) × the micro-batches it keeps in flight.

    The stored activations scale with the in-flight micro-batches; the re-materialised layer of full
    checkpointing and the logits (one micro-batch at the loss at a time) do not.
    """
    if profile is None:
        return None
    estimate = estimate_activations(stage_profile(profile, setup, stage), setup.grad_checkpointing)
    factor = in_flight_microbatches(setup, stage.index)
    if factor != 1:
        estimate = replace(estimate, saved_bytes=math.ceil(estimate.saved_bytes * factor))
    return estimate


def _ranks(inventory: ParameterInventory, setup: TrainingSetup, profile: ActivationProfile | None) -> list[_Rank]:
    stages = pipeline_stages(len(inventory.layer_names), setup)
    return [_Rank(s, local_inventory(inventory, setup, s), stage_activations(profile, setup, s)) for s in stages]


def _busiest(ranks: list[_Rank], setup: TrainingSetup, zero_stage: int) -> StageMemory:
    """The peak of the busiest GPU over the pipeline stages (the only one without pipelining)."""
    best: StageMemory | None = None
    for rank in ranks:
        states = compute_training(rank.inventory, replace(setup, zero_stages=(zero_stage,))).stages[0]
        candidate = _peak(rank.inventory, setup, states, rank.activations)
        if setup.parallel.pp > 1:
            layers = rank.stage.layers
            candidate = replace(
                candidate,
                pipeline_stage=rank.stage.index,
                stage_layers=(min(layers), max(layers)) if layers else None,
                stage_holds=rank.stage.holds,
            )
        if best is None or candidate.total_bytes > best.total_bytes:
            best = candidate
    assert best is not None
    return best


def _min_gpus(ranks: list[_Rank], setup: TrainingSetup, stage: int) -> int | None:
    """The fewest GPUs on which this stage fits, if any up to 4096: whole model replicas of tp·pp·cp GPUs.

    Per-GPU memory only falls as ZeRO >= 1 shards over more data-parallel replicas (the communication buckets
    appear once, from 2 on), so 2..4096 GPUs are searched by bisection. ZeRO-0 replicates the model states: more
    replicas never help.
    """
    replica = setup.parallel.model_parallel_size

    def fits(replicas: int) -> bool:
        trial = replace(setup, gpus_per_node=replicas * replica, nodes=1)
        return bool(_busiest(ranks, trial, stage).fits)

    most = max(1, MAX_GPUS_SEARCHED // replica)
    if fits(1):
        return replica
    if stage == 0 or most == 1 or not fits(most):
        return None
    return bisect_boundary(fits, 1, most)[1] * replica


#: `_min_gpus` by (inventory, profile; setup without its GPU count, stage): the answer does not depend on the GPU
#: count planned, so a sweep over --gpus searches once.
_MIN_GPUS: IdentityMemo[int | None] = IdentityMemo(4096)


def _min_gpus_memo(
    inventory: ParameterInventory,
    profile: ActivationProfile | None,
    ranks: list[_Rank],
    setup: TrainingSetup,
    stage: int,
) -> int | None:
    key = (replace(setup, gpus_per_node=1, nodes=1), stage)
    return _MIN_GPUS.get((inventory, profile), key, lambda: _min_gpus(ranks, setup, stage))


def _max_batch(
    inventory: ParameterInventory,
    setup: TrainingSetup,
    stage: int,
    profiles: tuple[ActivationProfile, ActivationProfile],
) -> int | None:
    """The largest micro-batch per GPU that fits (binary search; activations grow linearly with the batch)."""

    def fits(batch: int) -> bool:
        profile = extrapolate_profile(*profiles, batch)
        trial = replace(setup, batch_size=batch)
        return bool(_busiest(_ranks(inventory, trial, profile), trial, stage).fits)

    if not fits(1):
        return None
    low, high = 1, 2
    while high <= MAX_BATCH_SEARCHED and fits(high):
        low, high = high, high * 2
    return bisect_boundary(fits, low, high)[0]


def bisect_boundary(predicate: Callable[[int], bool], low: int, high: int) -> tuple[int, int]:
    """Narrow ``low < high``, where ``predicate`` differs at the two ends, to two adjacent integers."""
    at_low = predicate(low)
    while high - low > 1:
        middle = (low + high) // 2
        if predicate(middle) == at_low:
            low = middle
        else:
            high = middle
    return low, high


#: The note of a plan without an activation profile (``--params``; `hfmem.api` replaces it when a trace failed).
NO_MODEL_NOTE = "--params has no model to run, so activations and logits are not included"


def plan_training(
    inventory: ParameterInventory,
    setup: TrainingSetup,
    profile: ActivationProfile | None,
    *,
    batch_profiles: tuple[ActivationProfile, ActivationProfile] | None = None,
    seq_len: int | None = None,
    seq_len_source: str | None = None,
) -> TrainingEstimate:
    """Peak memory per GPU for every requested ZeRO stage, with its phase and, given a GPU, the verdict.

    Args:
        profile: the activation profile at the planned batch and sequence length (None: a ``--params`` plan,
            which has no model to run, so no activations or logits).
        batch_profiles: profiles at batch 1 and 2, to search the largest micro-batch that fits (needs a GPU).
    """
    base = compute_training(
        local_inventory(inventory, setup, pipeline_stages(len(inventory.layer_names), setup)[0]), setup
    )
    ranks = _ranks(inventory, setup, profile)
    stages = []
    for states in base.stages:
        stage = _busiest(ranks, setup, states.zero_stage)
        if setup.gpu is not None:
            stage = replace(
                stage,
                min_gpus=_min_gpus_memo(inventory, profile, ranks, setup, states.zero_stage),
                max_batch_size=_max_batch(inventory, setup, states.zero_stage, batch_profiles)
                if batch_profiles is not None
                else None,
            )
        stages.append(stage)
    notes = list(base.notes)
    if profile is None:
        notes.append(NO_MODEL_NOTE)
    elif profile.attention_calls == 0 and profile.attn != "eager" and inventory.attention_modules != 0:
        notes.append(
            "this model does not route attention through transformers' AttentionInterface, so its own (eager) "
            "attention was measured, score matrices included: an over-estimate for a fused kernel"
        )
    return replace(
        base, stages=tuple(stages), notes=tuple(notes), seq_len=seq_len, seq_len_source=seq_len_source, profile=profile
    )
