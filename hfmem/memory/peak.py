"""Peak memory per GPU: model states + activations + logits + overheads at the moment that is largest; pure.

Three moments of a training step are compared (docs/formulas.md: "Peak memory: activations, logits, overheads"):

* ``forward``: at the loss. States, every saved activation, the logits with the loss's fp32 copies.
* ``backward``: as backward starts at the loss, with the loss gradients, or (checkpointing) while a layer is
  re-materialised; communication buffers are live.
* ``optimizer_step``: activations are gone; the step's transients (torch AdamW's foreach / for-loop
  temporaries, DeepSpeed's fp32 gradient copy, the parameter all-gather bucket, Adafactor's fp32 upcast) are live.
  With the optimizer in backward there is no separate step: each parameter steps in backward, so its (one
  parameter's) temporaries are a backward line and the step moment holds the model states only.

Gradients (`phase_gradient_bytes`): with one micro-batch per step (``--grad-accumulation 1``) the loops free them
after each step (``zero_grad(set_to_none=True)``), so none exist in forward, none yet as backward starts at the loss
(autograd runs the loss's nodes before the first parameter's gradient), and all of them at the step. They persist
through the whole step with gradient accumulation (> 1), a pipeline schedule's micro-batches, and DeepSpeed ZeRO-3's
flat gradient buffer (allocated once); DeepSpeed's estimator (``--accounting deepspeed``) keeps its own formula.
Mid-backward, earlier layers' activations and later layers' gradients coexist, both roughly linear in the layer
index, so the backward-start moment (all activations) and the step (all gradients) bound it. With the optimizer in
backward only the largest gradient is live at any time (`hfmem.memory.states`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from hfmem.memory.activations import ActivationEstimate, estimate_activations, extrapolate_profile
from hfmem.memory.expr import Value, ceil, cite, minimum, trunc, value_of
from hfmem.memory.memo import IdentityMemo
from hfmem.memory.methods import QLORA_COMPUTE_BYTES, is_qlora_quantized, qlora_largest_nf4_params
from hfmem.memory.parallel import (
    PipelineStage,
    in_flight_microbatches,
    local_inventory,
    pipeline_stages,
    stage_profile,
)
from hfmem.memory.quantization import QuantCounts, bnb_4bit_counts, bnb_4bit_metadata, sum_counts
from hfmem.memory.sources import (
    SRC_ADAFACTOR,
    SRC_ADAM_FOREACH,
    SRC_ADAM_LOOP,
    SRC_BNB_MATMUL,
    SRC_DS_FP32_GRAD,
    SRC_FSDP,
    SRC_FSDP_PP,
    SRC_GRAD_FREED,
    SRC_GRAD_ORDER,
)
from hfmem.memory.states import PRECISION_SPECS, compute_training, shard_count, trainable_spec
from hfmem.types import (
    ActivationProfile,
    OverheadItem,
    ParameterInventory,
    PeakPhase,
    StageMemory,
    TrainingEstimate,
    TrainingSetup,
)

__all__ = [
    "plan_training",
    "overhead_items",
    "overhead_terms",
    "overhead_inputs",
    "OverheadInputs",
    "optimizer_step_bytes",
    "autocast_cast_params",
    "OVERHEAD_LABELS",
    "fragmentation_bytes",
    "fsdp_unit_params",
    "fsdp_gathered_bytes",
    "fsdp_replicated_quant_state_bytes",
    "headroom_bytes",
    "allocator_buffer_bytes",
    "phase_candidates",
    "stage_activations",
    "phase_bytes",
    "phase_gradient_bytes",
    "gradients_persist",
    "activation_offload_cpu_bytes",
    "bisect_boundary",
    "MAX_GPUS_SEARCHED",
    "MAX_BATCH_SEARCHED",
]

MAX_GPUS_SEARCHED = 4096
MAX_BATCH_SEARCHED = 1 << 20
FP32_BYTES = 4


def fsdp_unit_params(inventory: ParameterInventory, *, qlora: bool = False) -> tuple[int, int, int, int]:
    """``(params, trainable params, NF4 params, NF4 packed bytes)`` of the largest FSDP unit: one transformer layer
    (the usual ``transformer_auto_wrap_policy``), or the root unit (embeddings, final norm, LM head) if larger.

    Under QLoRA "largest" is by the bytes FSDP gathers (`fsdp_gathered_bytes` at 16 bits): a layer's NF4 weights
    gather ⌈n/2⌉ bytes each, so the 16-bit root unit is often the largest. Without QLoRA the NF4 counts are 0.
    """
    if not inventory.has_shapes:
        return 0, 0, 0, 0
    units: dict[int | None, list[int]] = {}
    for p in inventory.parameters:
        unit = units.setdefault(p.layer_index, [0, 0, 0, 0])
        unit[0] += p.numel
        unit[1] += p.numel if p.trainable else 0
        if qlora and is_qlora_quantized(p):
            unit[2] += p.numel
            unit[3] += bnb_4bit_counts(p.numel).packed_bytes  # type: ignore[operator]
    largest = max(
        units.values(), key=lambda u: fsdp_gathered_bytes(u[0], u[2], u[3], QLORA_COMPUTE_BYTES), default=[0, 0, 0, 0]
    )
    return largest[0], largest[1], largest[2], largest[3]


def fsdp_gathered_bytes(params: Value, nf4_params: Value, nf4_packed: Value, weight_bytes: Value) -> Value:
    """Bytes FSDP all-gathers for ``params`` parameters of which ``nf4_params`` are QLoRA's NF4 weights:
    ``(P − P_Q) × w + B_Q``, ``B_Q`` the NF4 weights' packed bytes (Σ⌈n/2⌉).

    FSDP-QLoRA stores the packed 4-bit codes in a float tensor (``bnb_4bit_quant_storage=torch.bfloat16``) so FSDP
    can flatten and shard them with the 16-bit weights, and gathers those bytes as they are stored (bitsandbytes
    docs ``fsdp_qlora.md``, "Quantized data storage"; PR #970). The quant state (absmax) is not a parameter: it
    stays on each ``Linear4bit`` module, whole on every GPU (bitsandbytes ``nn/modules.py``
    ``fix_4bit_weight_quant_state_from_module``), and is never gathered (`fsdp_replicated_quant_state_bytes`).
    """
    return (params - nf4_params) * weight_bytes + nf4_packed


def fsdp_replicated_quant_state_bytes(quant_state: Value, n: Value) -> Value:
    """The part of QLoRA's quant state that FSDP does not shard: ``Q − ⌈Q / N⌉``. hfmem's weights shard every
    frozen byte over the N GPUs (`hfmem.memory.states`); the absmax blocks stay whole on every GPU
    (`fsdp_gathered_bytes`)."""
    return quant_state - shard_count(quant_state, n)


def autocast_cast_params(inventory: ParameterInventory) -> int:
    """Trainable elements inside the transformer layers that autocast casts to 16-bit and caches: the weights of
    the linears (and routed experts) and the linears' biases (``F.linear`` is on the 16-bit list and casts every
    floating argument; aten ``cached_cast`` caches fp32 leaves that require grad). Parameters outside the layers
    (embeddings, LM head) belong to modules that are never checkpointed: their cast copies are saved activations."""
    linear_modules = {p.name.rsplit(".", 1)[0] for p in inventory.parameters if p.quantizable}
    return sum(
        p.numel
        for p in inventory.parameters
        if p.trainable
        and p.layer_index is not None
        and (p.quantizable or (p.name.endswith(".bias") and p.name.rsplit(".", 1)[0] in linear_modules))
    )


@dataclass(slots=True)
class OverheadInputs:
    """The operands of the training overhead formulas (ints, or symbols for ``--explain``).

    Attributes:
        cuda_context: C, the CUDA context + cuBLAS workspace per GPU (`OverheadSettings.cuda_context_bytes`).
        trainable, total: Ψ_T and Ψ on this GPU before sharding. n: N, the sharding degree.
        grad_bytes, weight_bytes: g and w of the trained tensors. base_weight_bytes, base_grad_bytes: 16-bit
            working weights and gradients of the precision (what ZeRO-3 / FSDP gather).
        largest_module: LL, parameters of the largest module. unit, unit_trainable: U and U_T of the largest FSDP
            unit (`fsdp_unit_params`). nf4_largest: the largest NF4 weight (QLoRA). largest_trained: the largest
            trained tensor (Adafactor's upcast at ZeRO-0).
        reduce_bucket, allgather_bucket, prefetch_bucket, sub_group: DeepSpeed's bucket sizes (elements).
        state_bytes: s, bytes per optimizer-state element of the trained tensors (AdamW's temporaries are
            state-sized). largest_tensor: n_max, the largest trained tensor (AdamW's for-loop, the optimizer in
            backward). cast_params: Ψ_A, the trainable layer elements autocast caches (`autocast_cast_params`).
            cast_bytes: a, bytes of one autocast element (2).
        unit_nf4, unit_nf4_packed: U_Q and B_UQ, the NF4 weights of that FSDP unit and their packed bytes (QLoRA).
        nf4_params, nf4_packed: Ψ_Q and B_Q, the NF4 weights on this GPU before sharding and their packed bytes.
        quant_state: Q, their quant-state (absmax) bytes (`hfmem.memory.quantization.bnb_4bit_metadata`).
    """

    cuda_context: Value
    trainable: Value
    total: Value
    n: Value
    grad_bytes: Value
    weight_bytes: Value
    base_weight_bytes: Value
    base_grad_bytes: Value
    largest_module: Value
    unit: Value
    unit_trainable: Value
    nf4_largest: Value
    largest_trained: Value
    reduce_bucket: Value
    allgather_bucket: Value
    prefetch_bucket: Value
    sub_group: Value
    state_bytes: Value = 0
    largest_tensor: Value = 0
    cast_params: Value = 0
    cast_bytes: Value = 0
    unit_nf4: Value = 0
    unit_nf4_packed: Value = 0
    nf4_params: Value = 0
    nf4_packed: Value = 0
    quant_state: Value = 0


#: Stable keys and labels of the training overhead lines (`hfmem.types.OverheadItem`).
OVERHEAD_LABELS = {
    "cuda_context": "CUDA context + cuBLAS workspace",
    "fsdp_unsharded_unit": "FSDP unsharded unit + prefetched unit (16-bit)",
    "fsdp_unsharded_gradients": "FSDP unsharded gradients of one unit",
    "fsdp_pp_unsharded_stage": "FSDP + pipeline: the stage's unsharded parameters",
    "fsdp_pp_unsharded_gradients": "FSDP + pipeline: the stage's unsharded fp32 gradients",
    "fsdp_replicated_quant_state": "FSDP-QLoRA quant state kept whole",
    "ddp_gradient_buckets": "DDP gradient buckets",
    "deepspeed_reduce_bucket": "DeepSpeed reduce bucket",
    "zero3_gathered_params": "ZeRO-3 gathered parameters + prefetch",
    "qlora_dequantized_weight": "QLoRA dequantized weight (16-bit)",
    "fp32_gradient_partition": "fp32 gradient partition at step",
    "param_allgather_bucket": "parameter all-gather bucket",
    "adafactor_fp32_upcast": "Adafactor fp32 upcast of one tensor",
    "adamw_foreach_temporary": "AdamW foreach step temporary (_foreach_sqrt)",
    "adamw_loop_temporary": "AdamW for-loop step temporary (one parameter)",
    "autocast_weight_cache": "autocast's cached 16-bit weight copies",
    "allocator_fragmentation": "allocator fragmentation",
}


def optimizer_step_bytes(setup: TrainingSetup, stage: int, x: OverheadInputs) -> tuple[str, Value] | None:
    """``(key, bytes)`` of torch AdamW's step temporaries (`TrainingSetup.optimizer_impl`), or None.

    * ``foreach`` (torch's CUDA default): ``_foreach_sqrt`` of the whole group's ``exp_avg_sq``, one state-sized
      tensor per parameter, all live until the step returns: ``s × Ψ_T`` (under FSDP each GPU steps its shards:
      ``s × ⌈Ψ_T / N⌉``; in backward, one parameter's list: ``s × n_max``).
    * ``fused`` (``torch._fused_adamw_``; the HF Trainer's ``adamw_torch_fused``, its default with torch ≥ 2.8): none.
    * ``loop`` (``foreach=False``): ``sqrt()`` and the division coexist for one parameter: ``2 × s × n_max``.

    Torch's AdamW steps at ZeRO 0 (DDP) and under FSDP. DeepSpeed's ZeRO ≥ 1 steps its own optimizer on flat fp32
    partitions (FusedAdam / CPU-Adam), so no term there; nor for the other optimizers (bitsandbytes' kernels update in
    place; Adafactor has its own line).
    """
    if setup.optimizer != "adamw" or setup.offload != "none" or (stage >= 1 and setup.parallel.fsdp is None):
        return None
    sharded = setup.parallel.fsdp is not None
    largest = shard_count(x.largest_tensor, x.n) if sharded else x.largest_tensor
    if setup.optimizer_impl == "foreach":
        elements = largest if setup.optimizer_in_backward else shard_count(x.trainable, x.n) if sharded else x.trainable
        return "adamw_foreach_temporary", cite(1, SRC_ADAM_FOREACH, elements) * x.state_bytes * elements
    if setup.optimizer_impl == "loop":
        return "adamw_loop_temporary", cite(2, SRC_ADAM_LOOP, largest) * x.state_bytes * largest
    return None


def overhead_terms(setup: TrainingSetup, stage: int, phase: PeakPhase, x: OverheadInputs) -> list[tuple[str, Value]]:
    """``(key, bytes)`` of the overheads live at ``phase`` (before allocator fragmentation): one formula each.

    Sources: the CUDA context figure in `OverheadSettings`; DDP's bucket copy of the gradients
    (``gradient_as_bucket_view=False`` by default, "the saved memory size will be equal to the total gradients
    size" — torch ``DistributedDataParallel`` docs); DeepSpeed's ``reduce_bucket_size``,
    ``allgather_bucket_size`` and ``stage3_prefetch_bucket_size`` defaults (``deepspeed/runtime/zero/config.py``);
    DeepSpeed's fp32 copy of the gradient partition at ``step()`` (docs ``memory.rst``); the gathered largest
    module at ZeRO-3 (DeepSpeed's estimator, 16-bit params + grads of the largest layer). With ``--fsdp``, FSDP's
    own buffers replace DeepSpeed's: the unsharded 16-bit unit being computed and the next one prefetched
    (torch ``FullyShardedDataParallel`` ``forward_prefetch`` / ``backward_prefetch=BACKWARD_PRE``; REFERENCE §2.5),
    plus that unit's unsharded gradients before the reduce-scatter. QLoRA: bitsandbytes' dequantized 16-bit copy of
    the largest 4-bit weight during its matmul. torch AdamW's step temporaries (`optimizer_step_bytes`) at the step,
    or in backward with the optimizer in backward. Autocast with checkpointed layers: the 16-bit weight copies
    autocast caches until the forward ends, ``a × Ψ_A`` at the loss (without checkpointing the linears save the same
    copies, so the traced activations hold them; once the forward's autocast exits only saved ones stay).
    """
    fsdp = setup.parallel.fsdp
    sharded = value_of(x.n) > 1
    hfmem_accounting = setup.accounting == "hfmem"
    items: list[tuple[str, Value]] = [("cuda_context", x.cuda_context)]
    if fsdp is not None:
        qlora = setup.method == "qlora"
        gathers = fsdp in ("full_shard", "hybrid_shard") and sharded
        if setup.parallel.pp > 1 and sharded and fsdp != "no_shard":
            # Under a pipeline schedule a stage keeps its parameters gathered and its gradients unsharded across
            # the step's micro-batches, reduce-scattering once after the last (`SRC_FSDP_PP`).
            if phase in ("forward", "backward") and gathers:
                stage = (
                    fsdp_gathered_bytes(x.total, x.nf4_params, x.nf4_packed, x.base_weight_bytes)
                    if qlora
                    else x.total * x.base_weight_bytes
                )
                items.append(("fsdp_pp_unsharded_stage", stage))
            if phase == "backward":
                fp32_reduce = cite(FP32_BYTES, SRC_FSDP_PP, x.trainable)
                items.append(("fsdp_pp_unsharded_gradients", x.trainable * fp32_reduce))
        else:
            if phase in ("forward", "backward") and gathers:
                unit = (
                    fsdp_gathered_bytes(x.unit, x.unit_nf4, x.unit_nf4_packed, x.base_weight_bytes)
                    if qlora
                    else x.unit * x.base_weight_bytes
                )
                items.append(("fsdp_unsharded_unit", cite(2, SRC_FSDP, x.unit) * unit))
            if phase == "backward" and sharded and fsdp != "no_shard":
                items.append(("fsdp_unsharded_gradients", x.unit_trainable * x.grad_bytes))
        if qlora and gathers:
            items.append(("fsdp_replicated_quant_state", fsdp_replicated_quant_state_bytes(x.quant_state, x.n)))
    else:
        if stage == 0 and sharded:
            items.append(("ddp_gradient_buckets", x.grad_bytes * x.trainable))
        if stage >= 1 and sharded:
            items.append(("deepspeed_reduce_bucket", minimum(x.reduce_bucket, x.trainable) * x.grad_bytes))
        if phase in ("forward", "backward") and stage == 3 and hfmem_accounting:
            per_param = x.base_weight_bytes + x.base_grad_bytes if setup.method == "full" else x.base_weight_bytes
            gathered = x.largest_module * per_param + minimum(x.prefetch_bucket, x.total) * x.base_weight_bytes
            items.append(("zero3_gathered_params", gathered))
    if phase == "forward" and value_of(x.cast_params) and setup.grad_checkpointing not in ("none", "selective"):
        cache = x.cast_bytes * x.cast_params
        items.append(("autocast_weight_cache", cache))
    if phase in ("forward", "backward") and setup.method == "qlora":
        compute_bytes = cite(QLORA_COMPUTE_BYTES, SRC_BNB_MATMUL, x.trainable)
        items.append(("qlora_dequantized_weight", compute_bytes * x.nf4_largest))
    if phase == "optimizer_step" and setup.offload == "none":
        fp32 = cite(FP32_BYTES, SRC_DS_FP32_GRAD, x.trainable)
        if stage >= 1 and hfmem_accounting and fsdp is None and value_of(x.grad_bytes) < FP32_BYTES:
            partition = shard_count(x.trainable, x.n)
            if stage == 3:  # ZeRO-3 steps over sub-groups of at most `sub_group_size` (1e9) elements at a time
                partition = minimum(partition, x.sub_group)
            items.append(("fp32_gradient_partition", fp32 * partition))
        if stage in (1, 2) and sharded and fsdp is None:
            items.append(("param_allgather_bucket", minimum(x.allgather_bucket, x.trainable) * x.weight_bytes))
        if setup.optimizer == "adafactor":
            largest_tensor = shard_count(x.trainable, x.n) if stage >= 1 else x.largest_trained
            items.append(("adafactor_fp32_upcast", cite(FP32_BYTES, SRC_ADAFACTOR, x.trainable) * largest_tensor))
    if phase == ("backward" if setup.optimizer_in_backward else "optimizer_step"):
        step = optimizer_step_bytes(setup, stage, x)
        if step is not None:
            items.append(step)
    return [(key, size) for key, size in items if size]


def fragmentation_bytes(allocated: Value, fraction: Value) -> Value:
    """Allocator slack: ``int(allocated × φ)`` (REFERENCE.md §5: 5–30 % reported; `OverheadSettings`)."""
    if allocated.__class__ is int and fraction.__class__ is float:  # the plan's path, first
        return int(allocated * fraction)  # type: ignore[operator]
    return trunc(allocated * fraction)


def allocator_buffer_bytes(terms: Iterable[tuple[str, int]]) -> int:
    """The overhead lines the caching allocator holds: all but the CUDA context (not allocator memory)."""
    return sum(size for key, size in terms if key != "cuda_context")


def headroom_bytes(usable: Value, peak: Value) -> Value:
    """What is left on the GPU at the peak (negative: it does not fit): usable − peak."""
    return usable - peak


def overhead_inputs(inventory: ParameterInventory, setup: TrainingSetup) -> OverheadInputs:
    """The `OverheadInputs` of one GPU holding ``inventory``."""
    spec = PRECISION_SPECS[setup.precision]
    tspec = trainable_spec(setup)
    settings = setup.overheads
    qlora = setup.method == "qlora"
    fsdp = setup.parallel.fsdp is not None
    unit, unit_trainable, unit_nf4, unit_nf4_packed = fsdp_unit_params(inventory, qlora=qlora) if fsdp else (0, 0, 0, 0)
    nf4 = QuantCounts(0, 0, 0)
    if fsdp and qlora:
        nf4 = sum_counts(bnb_4bit_counts(p.numel) for p in inventory.parameters if is_qlora_quantized(p))
    nf4_largest = qlora_largest_nf4_params(inventory) if qlora else 0
    largest_trained = (
        max((p.numel for p in inventory.parameters if p.trainable), default=0) if setup.optimizer == "adafactor" else 0
    )
    largest_tensor = 0
    if setup.optimizer == "adamw" and (setup.optimizer_impl == "loop" or setup.optimizer_in_backward):
        # Without shapes (--params) the model is one tensor.
        largest_tensor = max((p.numel for p in inventory.parameters if p.trainable), default=inventory.trainable_params)
    autocast = spec.autocast
    cast_params = autocast_cast_params(inventory) if autocast is not None else 0
    return OverheadInputs(
        settings.cuda_context_bytes,
        inventory.trainable_params,
        inventory.total_params,
        setup.sharding_degree,
        tspec.grad_bytes,
        tspec.weight_bytes,
        spec.weight_bytes,
        spec.grad_bytes,
        inventory.largest_module_params,
        unit,
        unit_trainable,
        nf4_largest,
        largest_trained,
        settings.reduce_bucket_elements,
        settings.allgather_bucket_elements,
        settings.prefetch_bucket_elements,
        settings.sub_group_elements,
        tspec.state_bytes,
        largest_tensor,
        cast_params,
        autocast.bits // 8 if autocast is not None else 0,
        unit_nf4,
        unit_nf4_packed,
        nf4.elements,
        nf4.packed_bytes,
        bnb_4bit_metadata(nf4, double_quant=setup.finetune.double_quant) if nf4.tensors else 0,
    )


def overhead_items(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, phase: PeakPhase
) -> list[OverheadItem]:
    """Named overheads live at ``phase`` (before allocator fragmentation, which `plan_training` adds on top):
    `overhead_terms` over this GPU's numbers."""
    terms = overhead_terms(setup, states.zero_stage, phase, overhead_inputs(inventory, setup))
    return list(_items(setup, terms))  # type: ignore[arg-type]


def gradients_persist(setup: TrainingSetup, zero_stage: int) -> bool:
    """Whether every gradient is live at every moment of the step (sources: `SRC_GRAD_PERSIST`): gradient
    accumulation over more than one micro-batch, a pipeline schedule (it accumulates its micro-batches), DeepSpeed
    ZeRO-3 (``grad_partitions_flat_buffer`` is allocated once, at init), the optimizer in backward (the states
    already hold its one live gradient) and DeepSpeed's estimator (its own formula)."""
    return (
        setup.grad_accumulation > 1
        or setup.parallel.pp > 1
        or setup.optimizer_in_backward
        or setup.accounting != "hfmem"
        or (zero_stage == 3 and setup.parallel.fsdp is None)
    )


def phase_gradient_bytes(setup: TrainingSetup, zero_stage: int, phase: PeakPhase, gradients: Value) -> Value:
    """Gradient bytes live at ``phase``, of the ``gradients`` the model states hold at the step.

    With one micro-batch per step the gradients are freed after each step (``zero_grad(set_to_none=True)``:
    torch's default, the HF Trainer, torchtune; DeepSpeed ZeRO-1/2 free theirs at step): ``0 × grads`` in forward,
    and ``0 × grads`` as backward starts, because autograd runs every node of the loss before the LM head's
    backward creates the first parameter gradient (a fused loss's head gradient is made in forward and is already
    in its saved bytes). At the step, and whenever they persist (`gradients_persist`), all of them.
    """
    if phase == "optimizer_step" or gradients_persist(setup, zero_stage):
        return gradients
    return cite(0, SRC_GRAD_FREED if phase == "forward" else SRC_GRAD_ORDER, gradients) * gradients


def phase_bytes(activations: ActivationEstimate | None, phase: PeakPhase) -> tuple[Value, Value]:
    """``(activations, logits)`` live at ``phase``."""
    if activations is None or phase == "optimizer_step":
        return 0, 0
    saved = activations.saved_bytes
    if phase == "forward":
        if value_of(activations.offloaded_bytes):  # the offload copies still in flight
            saved = saved + activations.offload_forward_bytes
        return saved, activations.logits_forward_bytes
    # Backward: the loss gradients come first; the recompute of a checkpointed layer happens later, when the
    # vocabulary-sized tensors are gone, so the two do not add up. With offloading, the layer being back-propagated
    # has its saved tensors back on the GPU then.
    layer = activations.recompute_bytes
    if value_of(activations.offloaded_bytes):
        layer = layer + activations.offload_backward_bytes
    if value_of(layer) > value_of(activations.logits_backward_bytes):
        return saved + layer, 0
    return saved, activations.logits_backward_bytes


def _phases(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, activations: ActivationEstimate | None
) -> Iterator[tuple[PeakPhase, int, int, int, list[tuple[str, int]]]]:
    """``(phase, activations, logits, gradients, (key, bytes) of the overheads)`` at forward, backward and the
    optimizer step."""
    x = overhead_inputs(inventory, setup)
    stored = _stored_gradients(states)
    others = states.states_bytes - states.gradients_bytes  # weights, master weights, optimizer states: always live
    for phase in ("forward", "backward", "optimizer_step"):
        acts, logits = phase_bytes(activations, phase)  # type: ignore[arg-type]
        grads: int = phase_gradient_bytes(setup, states.zero_stage, phase, stored)  # type: ignore[arg-type, assignment]
        terms: list[tuple[str, int]] = overhead_terms(setup, states.zero_stage, phase, x)  # type: ignore[arg-type, assignment]
        # Paged optimizer states are CUDA managed memory: not the caching allocator's, so no slack on them.
        allocated = others + grads - states.paged_states_bytes + acts + logits + allocator_buffer_bytes(terms)
        fragmentation: int = fragmentation_bytes(allocated, setup.overheads.fragmentation)  # type: ignore[assignment]
        if fragmentation:
            terms.append(("allocator_fragmentation", fragmentation))
        yield phase, acts, logits, grads, terms  # type: ignore[misc]


def _stored_gradients(states: StageMemory) -> int:
    """All the gradients of ``states``: its gradients, or, for a row already placed at its peak, those at the step."""
    return states.gradients_bytes if states.gradients_at_step_bytes is None else states.gradients_at_step_bytes


def _items(setup: TrainingSetup, terms: list[tuple[str, int]]) -> tuple[OverheadItem, ...]:
    """The typed overhead lines of the chosen moment (the fragmentation label shows its percentage)."""
    out = []
    for key, size in terms:
        label = OVERHEAD_LABELS[key]
        if key == "allocator_fragmentation":
            label = f"{label} ({setup.overheads.fragmentation:.0%})"
        out.append(OverheadItem(key, label, size))
    return tuple(out)


def _at_phase(
    setup: TrainingSetup,
    states: StageMemory,
    activations: ActivationEstimate | None,
    phase: PeakPhase,
    acts: int,
    logits: int,
    grads: int,
    terms: list[tuple[str, int]],
) -> StageMemory:
    return replace(
        states,
        gradients_bytes=grads,
        gradients_at_step_bytes=_stored_gradients(states),
        activations_bytes=acts,
        logits_bytes=logits,
        overhead_bytes=sum(size for _, size in terms),
        overhead_items=_items(setup, terms),
        peak_phase=phase,
        activation_saved_bytes=activations.saved_bytes if activations else 0,
        activation_recompute_bytes=activations.recompute_bytes if activations else 0,
        logits_saved_bytes=activations.logits_saved_bytes if activations else 0,
        activation_offloaded_bytes=activations.offloaded_bytes if activations else 0,
        cpu_bytes_per_node=states.cpu_bytes_per_node
        + (activation_offload_cpu_bytes(activations.offloaded_bytes, setup.gpus_per_node) if activations else 0),
    )


def activation_offload_cpu_bytes(offloaded: Value, gpus_per_node: Value) -> Value:
    """CPU RAM per node that offloaded activations take: each GPU's offloaded tensors, in pinned host memory
    (torchtune ``OffloadActivations(use_pin_memory=True)``), × the GPUs of a node."""
    return offloaded * gpus_per_node


def phase_candidates(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, activations: ActivationEstimate | None
) -> list[StageMemory]:
    """The memory of one GPU at each of the three moments (forward, backward, optimizer step), in that order.

    The peak is the largest of them; `hfmem.explain` shows all three.
    """
    return [_at_phase(setup, states, activations, *parts) for parts in _phases(inventory, setup, states, activations)]


def _peak(
    inventory: ParameterInventory, setup: TrainingSetup, states: StageMemory, activations: ActivationEstimate | None
) -> StageMemory:
    # The largest moment; the first wins ties (the peak is reached there first). One StageMemory is built, not
    # three: sweeps and the GPU-count bisection call this thousands of times.
    chosen = max(
        _phases(inventory, setup, states, activations),
        key=lambda parts: states.states_bytes - states.gradients_bytes + sum(parts[1:4]) + sum(s for _, s in parts[4]),
    )
    best = _at_phase(setup, states, activations, *chosen)
    if setup.gpu is not None:
        headroom: int = headroom_bytes(setup.gpu.usable_bytes, best.total_bytes)  # type: ignore[assignment]
        best = replace(best, fits=headroom >= 0, headroom_bytes=headroom)
    return best


@dataclass(frozen=True)
class _Rank:
    """One GPU of one pipeline stage: what it holds before ZeRO/FSDP sharding, and its activations."""

    stage: PipelineStage
    inventory: ParameterInventory
    activations: ActivationEstimate | None


def stage_activations(
    profile: ActivationProfile | None,
    setup: TrainingSetup,
    stage: PipelineStage,
    *,
    t: Value | None = None,
    factor: Value | None = None,
) -> ActivationEstimate | None:
    """Activations of pipeline ``stage``: one micro-batch's (TP/SP split) × the micro-batches it keeps in flight.

    The stored activations scale with the in-flight micro-batches, ``⌈saved × f⌉``; the re-materialised layer of
    full checkpointing and the logits (one micro-batch at the loss at a time) do not. ``t`` and ``factor``: the TP
    degree and in-flight micro-batches as operands (default: the setup's numbers).
    """
    if profile is None:
        return None
    estimate = estimate_activations(
        stage_profile(profile, setup, stage, t=t),
        setup.grad_checkpointing,
        loss=setup.loss,
        loss_chunks=setup.loss_chunks,
        checkpoint_every=setup.checkpoint_every,
        activation_offload=setup.activation_offload,
    )
    if factor is None:
        factor = in_flight_microbatches(setup, stage.index)
    if value_of(factor) != 1:
        estimate = replace(
            estimate,
            saved_bytes=ceil(estimate.saved_bytes * factor),
            offloaded_bytes=ceil(estimate.offloaded_bytes * factor) if estimate.offloaded_bytes else 0,
        )
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


#: Overhead lines that belong to the optimizer step (what makes a row peak there), largest first when named.
_STEP_KEYS = (
    "adamw_foreach_temporary",
    "adamw_loop_temporary",
    "fp32_gradient_partition",
    "param_allgather_bucket",
    "adafactor_fp32_upcast",
)


def step_notes(setup: TrainingSetup, stages: list[StageMemory]) -> list[str]:
    """Why a row peaks at the optimizer step (its largest step line), and how the optimizer in backward moves it."""
    notes = []
    groups: dict[str, list[StageMemory]] = {}  # the rows at the step, by the step line that is largest in each
    for stage in stages:
        items = [i for i in stage.overhead_items if i.key in _STEP_KEYS] if stage.peak_phase == "optimizer_step" else []
        if items:
            groups.setdefault(max(items, key=lambda i: i.size_bytes).key, []).append(stage)
    for key, at_step in groups.items():
        largest = next(i for i in at_step[0].overhead_items if i.key == key)
        rows = ", ".join(f"ZeRO-{s.zero_stage}" for s in at_step)
        why = f"{rows} peak{'s' if len(at_step) == 1 else ''} at the optimizer step, where the activations are "
        why += f"gone but the {largest.label} ({largest.size_bytes / 2**30:,.2f} GiB) is live"
        if key == "adamw_foreach_temporary":
            why += " (--optimizer-impl fused, the HF Trainer's adamw_torch_fused, allocates none)"
        notes.append(why)
    if setup.optimizer_in_backward:
        notes.append(
            "--optimizer-in-backward: each parameter steps in backward as soon as its gradient is complete, so one "
            "gradient is live at a time and there is no separate step peak"
        )
    return notes


#: The note of `--grad-checkpointing selective` with a fused kernel, which recomputes nothing that kernel keeps.
SELECTIVE_NOTE = (
    "--grad-checkpointing selective recomputes the attention scores, which sdpa/flash kernels never keep: it saves "
    "nothing here (--grad-checkpointing ops or full do)"
)

#: The note of a row whose peak is before the step with the gradients freed (`phase_gradient_bytes`).
GRADS_FREED_NOTE = (
    "gradients are freed after each optimizer step (zero_grad(set_to_none=True)) and re-created in backward, so the "
    "peak before the step holds none; --grad-accumulation N (N > 1) keeps them between micro-batches"
)

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
    notes = list(base.notes) + step_notes(setup, stages)
    if any(s.peak_phase != "optimizer_step" and s.gradients_bytes != s.gradients_at_step_bytes for s in stages):
        notes.append(GRADS_FREED_NOTE)
    if profile is None:
        notes.append(NO_MODEL_NOTE)
    else:
        if setup.grad_checkpointing == "selective" and profile.attn != "eager" and profile.attention_calls:
            notes.append(SELECTIVE_NOTE)
        if setup.loss != "hf" and not profile.hidden_size:
            notes.append(
                f"--loss {setup.loss} replaces a language-model head's cross-entropy, and this model has no such "
                "head: its own loss was planned"
            )
    if (
        profile is not None
        and profile.attention_calls == 0
        and profile.attn != "eager"
        and inventory.attention_modules != 0
    ):
        notes.append(
            "this model does not route attention through transformers' AttentionInterface, so its own (eager) "
            "attention was measured, score matrices included: an over-estimate for a fused kernel"
        )
    return replace(
        base, stages=tuple(stages), notes=tuple(notes), seq_len=seq_len, seq_len_source=seq_len_source, profile=profile
    )
