"""Model-state memory per GPU: weights, fp32 master weights, gradients and optimizer states, per ZeRO stage.

Pure functions over `ParameterInventory` and `TrainingSetup`; no torch, no I/O. Every constant names its source.

Conventions (the README explains them at length):

* ``hfmem`` accounting follows the ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054, §3.1 and Fig. 1):
  mixed precision keeps 16-bit working weights and gradients (2Ψ + 2Ψ) and an fp32 master copy plus the
  optimizer states (KΨ, K = 4 + 8 for Adam). Stage 1 shards master + optimizer states over the N data-parallel
  GPUs, stage 2 also the gradients, stage 3 also the weights. Shards are ``ceil(Ψ / N)`` elements.
* ``deepspeed`` accounting reproduces DeepSpeed's own estimators exactly
  (``estimate_zero2_model_states_mem_needs`` in ``deepspeed/runtime/zero/stage_1_and_2.py`` and
  ``estimate_zero3_model_states_mem_needs`` in ``deepspeed/runtime/zero/stage3.py``, DeepSpeed @ 02aa38c).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hfmem.errors import InvalidSetupError
from hfmem.memory.memo import IdentityMemo
from hfmem.memory.methods import ADAPTER_WEIGHT_BYTES, frozen_weight_bytes
from hfmem.rules import planned_stages
from hfmem.types import (
    Optimizer,
    ParameterInfo,
    ParameterInventory,
    Precision,
    StageMemory,
    TrainingEstimate,
    TrainingSetup,
)

__all__ = [
    "PrecisionSpec",
    "PRECISION_SPECS",
    "OPTIMIZER_DESCRIPTIONS",
    "BNB_BLOCKSIZE",
    "BNB_MIN_8BIT_SIZE",
    "optimizer_state_bytes",
    "model_optimizer_state_bytes",
    "flat_partition_state_bytes",
    "shard_count",
    "stage_memory",
    "trainable_spec",
    "ADAPTER_SPEC",
    "deepspeed_stage_memory",
    "compute_training",
]

#: bitsandbytes 8-bit optimizers quantize each state in blocks of 256 elements with one fp32 absmax per block
#: (bitsandbytes >= 0.44.0; it was 2048 before commit aa57bd89). Source: bitsandbytes
#: ``bitsandbytes/optim/optimizer.py`` @ 95f9af3, ``Optimizer2State.init_state`` (blocks = ceil(n / 256)).
BNB_BLOCKSIZE = 256
#: Tensors with fewer elements keep 32-bit states (``min_8bit_size=4096``, same file, L414).
BNB_MIN_8BIT_SIZE = 4096
FP32_BYTES = 4
UINT8_BYTES = 1
#: DeepSpeed's estimators multiply CPU memory by ``additional_buffer_factor=1.5`` (stage_1_and_2.py, stage3.py).
DEEPSPEED_CPU_BUFFER_FACTOR = 1.5


@dataclass(frozen=True)
class PrecisionSpec:
    """Bytes per element of each model state under one precision regime.

    Attributes:
        weight_bytes: the working copy used in forward/backward.
        master_bytes: a separate fp32 master copy held by the optimizer (0 if the weights are the master).
        grad_bytes: gradients as stored.
        state_bytes: one optimizer-state element (Adam's m or v, a momentum).
    """

    weight_bytes: int
    master_bytes: int
    grad_bytes: int
    state_bytes: int
    description: str


PRECISION_SPECS: dict[Precision, PrecisionSpec] = {
    # Transformer Math 101 (EleutherAI) and HF "model memory anatomy": fp32 = 4 B weights, 4 B gradients.
    "fp32": PrecisionSpec(4, 0, 4, 4, "fp32 weights, gradients and optimizer states"),
    "tf32": PrecisionSpec(
        4, 0, 4, 4, "fp32 storage; TF32 changes only the matmul arithmetic, so memory is the same as fp32"
    ),
    # ZeRO paper §3.1: fp16 (or bf16) parameters and gradients (2Ψ + 2Ψ), fp32 master copy (4Ψ) + Adam (8Ψ).
    "bf16-mixed": PrecisionSpec(2, 4, 2, 4, "bf16 weights and gradients, fp32 master weights and optimizer states"),
    "fp16-mixed": PrecisionSpec(2, 4, 2, 4, "fp16 weights and gradients, fp32 master weights and optimizer states"),
    # torch.optim creates states with zeros_like(param) (torch/optim/adam.py), so pure 16-bit training keeps
    # its optimizer states in the parameter dtype and has no master copy.
    "bf16": PrecisionSpec(2, 0, 2, 2, "everything bf16: weights, gradients and optimizer states; no master copy"),
    "fp16": PrecisionSpec(2, 0, 2, 2, "everything fp16: weights, gradients and optimizer states; no master copy"),
}

OPTIMIZER_DESCRIPTIONS: dict[Optimizer, str] = {
    "adamw": "AdamW: exp_avg + exp_avg_sq, 2 states per parameter (torch/optim/adamw.py)",
    "adamw-8bit": "bitsandbytes AdamW8bit: 2 uint8 states + one fp32 absmax per 256-element block; "
    "tensors under 4096 elements keep fp32 states",
    "sgd": "SGD without momentum: no state",
    "sgd-momentum": "SGD with momentum: one momentum_buffer per parameter",
    "adafactor": "HF Adafactor (beta1=None): fp32 row + column second-moment factors for >=2-D tensors, "
    "a full fp32 second moment for 1-D tensors",
    "lion": "Lion: one momentum per parameter (Chen et al. 2023)",
}


def shard_count(count: int, num_shards: int) -> int:
    """Elements held by the GPU with the largest shard: ``ceil(count / num_shards)``."""
    return -(-count // num_shards)


def optimizer_state_bytes(optimizer: Optimizer, shape: tuple[int, ...], state_bytes: int) -> int:
    """Bytes of optimizer state for one parameter tensor of ``shape``.

    Args:
        optimizer: the optimizer name.
        shape: the tensor's shape as the optimizer sees it (a flat ZeRO partition is 1-D).
        state_bytes: bytes of one state element for optimizers whose states follow the parameter dtype.

    Example:
        >>> optimizer_state_bytes("adamw", (4096, 4096), 4)
        134217728
        >>> optimizer_state_bytes("adafactor", (4096, 11008), 4)  # (4096 + 11008) * 4
        60416
    """
    numel = 1
    for dim in shape:
        numel *= dim
    if optimizer == "adamw":
        return 2 * numel * state_bytes
    if optimizer in ("sgd-momentum", "lion"):
        return numel * state_bytes
    if optimizer == "sgd":
        return 0
    if optimizer == "adamw-8bit":
        if numel < BNB_MIN_8BIT_SIZE:
            return 2 * numel * FP32_BYTES
        blocks = shard_count(numel, BNB_BLOCKSIZE)
        return 2 * (numel * UINT8_BYTES + blocks * FP32_BYTES)
    if optimizer == "adafactor":
        # transformers/optimization.py Adafactor.step: 16-bit grads are upcast with grad.float() before the
        # states are created from them, so states are fp32 whatever the parameter dtype; a tensor is factored
        # when it has >= 2 dims: exp_avg_sq_row = shape[:-1], exp_avg_sq_col = shape[:-2] + shape[-1:].
        if len(shape) >= 2:
            rows = numel // shape[-1]
            cols = numel // shape[-2]
            return (rows + cols) * FP32_BYTES
        return numel * FP32_BYTES
    raise InvalidSetupError(f"unknown optimizer '{optimizer}'")


def model_optimizer_state_bytes(inventory: ParameterInventory, optimizer: Optimizer, state_bytes: int) -> int:
    """Optimizer state of the whole model with every trainable tensor kept in its own shape (no ZeRO)."""
    if inventory.has_shapes:
        return sum(optimizer_state_bytes(optimizer, p.shape, state_bytes) for p in inventory.parameters if p.trainable)
    if optimizer == "adafactor":
        raise InvalidSetupError(
            "Adafactor's memory depends on every tensor's shape, which --params does not know; "
            "pass a model id or config instead, or choose another --optimizer"
        )
    # Shapes unknown (--params): treat the model as one flat tensor.
    return optimizer_state_bytes(optimizer, (inventory.trainable_params,), state_bytes)


def flat_partition_state_bytes(optimizer: Optimizer, partition_params: int, state_bytes: int) -> int:
    """Optimizer state for one flat 1-D ZeRO partition.

    With ZeRO >= 1 DeepSpeed hands the optimizer flat 1-D fp32 partitions instead of the model's tensors
    (``single_partition_of_fp32_groups`` in ``deepspeed/runtime/zero/stage_1_and_2.py``;
    ``fp32_partitioned_groups_flat`` in ``stage3.py``). Shape-aware optimizers see one long vector:
    Adafactor cannot factor it, and 8-bit Adam quantizes it block by block with no small-tensor exception.
    """
    if partition_params == 0:
        return 0
    return optimizer_state_bytes(optimizer, (partition_params,), state_bytes)





def trainable_spec(setup: TrainingSetup) -> PrecisionSpec:
    """Bytes per element of the trained tensors: the precision's, or fp32 adapters under LoRA/QLoRA.

    peft keeps adapters in fp32 (`hfmem.memory.methods.ADAPTER_WEIGHT_BYTES`): the fp32 adapter is its own master
    copy, with fp32 gradients and optimizer states (4 + 4 + 8 = 16 B per parameter with AdamW, the same total as
    the ZeRO paper's 2 + 4 + 2 + 8).
    """
    if setup.finetune.uses_peft:
        return ADAPTER_SPEC
    return PRECISION_SPECS[setup.precision]


ADAPTER_SPEC = PrecisionSpec(
    ADAPTER_WEIGHT_BYTES, 0, ADAPTER_WEIGHT_BYTES, ADAPTER_WEIGHT_BYTES, "fp32 adapters (peft autocast_adapter_dtype)"
)


def _frozen_bytes(params: list[ParameterInfo], setup: TrainingSetup) -> int:
    spec = PRECISION_SPECS[setup.precision]
    return sum(frozen_weight_bytes(p, setup.finetune, spec.weight_bytes) for p in params)


_SPLITS: IdentityMemo[tuple[ParameterInventory, int, int, int]] = IdentityMemo(256)
_STATE_BYTES: IdentityMemo[int] = IdentityMemo(1024)


def _split_group(
    inventory: ParameterInventory, params: list[ParameterInfo], setup: TrainingSetup
) -> tuple[ParameterInventory, int, int, int]:
    """The trained part of ``params`` as an inventory, its element count, and the frozen elements and bytes.

    Remembered per inventory, group (all, dense or experts), precision and method (`IdentityMemo`).
    """

    def compute() -> tuple[ParameterInventory, int, int, int]:
        trained = [p for p in params if p.trainable]
        frozen = [p for p in params if not p.trainable]
        trainable = sum(p.numel for p in trained)
        return (
            replace(inventory, parameters=tuple(trained), trainable_params=trainable),
            trainable,
            sum(p.numel for p in frozen),
            _frozen_bytes(frozen, setup),
        )

    group = (len(params), params[0].name if params else None, params[-1].name if params else None)
    return _SPLITS.get((inventory,), (group, setup.precision, setup.finetune), compute)


def _whole_model_state_bytes(inventory: ParameterInventory, optimizer: Optimizer, state_bytes: int) -> int:
    """`model_optimizer_state_bytes`, remembered for the (remembered) trained inventory of `_split_group`."""
    return _STATE_BYTES.get(
        (inventory,), (optimizer, state_bytes), lambda: model_optimizer_state_bytes(inventory, optimizer, state_bytes)
    )


def _group_memory(
    inventory: ParameterInventory,
    params: list[ParameterInfo] | None,
    setup: TrainingSetup,
    zero_stage: int,
    n: int,
) -> StageMemory:
    """Model states of one group of parameters that shard alike over ``n`` GPUs (see `stage_memory`)."""
    spec = PRECISION_SPECS[setup.precision]
    tspec = trainable_spec(setup)
    if params is None:  # --params: one flat, fully trainable model
        trainable, frozen_params, frozen_bytes = inventory.trainable_params, 0, 0
        trained_inventory = inventory
    else:
        trained_inventory, trainable, frozen_params, frozen_bytes = _split_group(inventory, params, setup)
    trainable_shard = shard_count(trainable, n)

    if zero_stage == 0:
        weights = frozen_bytes + trainable * tspec.weight_bytes
        master = trainable * tspec.master_bytes
        gradients = trainable * tspec.grad_bytes
        states = _whole_model_state_bytes(trained_inventory, setup.optimizer, tspec.state_bytes)
        return StageMemory(zero_stage, weights, master, gradients, states)

    if zero_stage == 3:
        weights = shard_count(frozen_bytes, n) + trainable_shard * tspec.weight_bytes
    else:
        weights = frozen_bytes + trainable * tspec.weight_bytes
    gradients = (trainable_shard if zero_stage >= 2 else trainable) * tspec.grad_bytes
    if setup.offload == "none":
        master = trainable_shard * tspec.master_bytes
        states = flat_partition_state_bytes(setup.optimizer, trainable_shard, tspec.state_bytes)
        return StageMemory(zero_stage, weights, master, gradients, states)

    # CPU side of one GPU's shard: fp32 params + fp32 grads + fp32 optimizer states (CPU-Adam).
    cpu_per_gpu = trainable_shard * (FP32_BYTES + FP32_BYTES) + flat_partition_state_bytes(
        setup.optimizer, trainable_shard, FP32_BYTES
    )
    if zero_stage >= 2:
        gradients = 0  # reduced gradient partitions stream to CPU (only the reduce buckets stay)
    if setup.offload == "optimizer+params":
        cpu_per_gpu += shard_count(frozen_params, n) * spec.weight_bytes + trainable_shard * tspec.weight_bytes
        weights = 0
    return StageMemory(zero_stage, weights, 0, gradients, 0, cpu_bytes_per_node=cpu_per_gpu * setup.gpus_per_node)


def stage_memory(inventory: ParameterInventory, setup: TrainingSetup, zero_stage: int) -> StageMemory:
    """Per-GPU model states for one ZeRO stage under the ZeRO-paper convention (``hfmem`` accounting).

    Per GPU, with Ψ parameters (Ψ_T trainable, Ψ_F = Ψ − Ψ_T frozen), N = the sharding degree
    (`TrainingSetup.num_gpus`), and bytes w / m / g per element (`PRECISION_SPECS`; `trainable_spec` for the
    trained tensors), following ZeRO Fig. 1:

    ========  =====================  =============  ============  ===========================
    stage     weights                master         gradients     optimizer states
    ========  =====================  =============  ============  ===========================
    0         F + w·Ψ_T              m·Ψ_T          g·Ψ_T         per tensor, real shapes
    1         F + w·Ψ_T              m·⌈Ψ_T/N⌉      g·Ψ_T         flat partition of ⌈Ψ_T/N⌉
    2         F + w·Ψ_T              m·⌈Ψ_T/N⌉      g·⌈Ψ_T/N⌉     flat partition of ⌈Ψ_T/N⌉
    3         ⌈F/N⌉ + w·⌈Ψ_T/N⌉      m·⌈Ψ_T/N⌉      g·⌈Ψ_T/N⌉     flat partition of ⌈Ψ_T/N⌉
    ========  =====================  =============  ============  ===========================

    F is the frozen weights' bytes: w·Ψ_F, or NF4 + absmax for QLoRA's quantized linears
    (`hfmem.memory.methods.frozen_weight_bytes`). With full fine-tuning F = 0 and this is the paper's table.
    With expert parallelism the routed experts form their own group, sharded over
    `TrainingSetup.expert_sharding_degree`.

    Offload (ZeRO-Offload, Ren et al. 2021): ``optimizer`` moves the fp32 master, the optimizer states and the
    gradient partition to CPU (CPU-Adam updates in fp32, so the CPU holds an fp32 parameter partition, an fp32
    gradient partition and fp32 states whatever the precision); the GPU keeps 16-bit weights (and, at stage 1,
    the full gradients it reduces at the step). ``optimizer+params`` (ZeRO-3) also moves the weight partition:
    the GPU holds no model state between uses, only the layers being computed (not a model state).
    """
    if not inventory.has_shapes:
        return _group_memory(inventory, None, setup, zero_stage, setup.num_gpus)
    params = list(inventory.parameters)
    if setup.parallel.ep == 1:
        return _group_memory(inventory, params, setup, zero_stage, setup.num_gpus)
    dense = _group_memory(inventory, [p for p in params if not p.is_routed_expert], setup, zero_stage, setup.num_gpus)
    experts = _group_memory(
        inventory, [p for p in params if p.is_routed_expert], setup, zero_stage, setup.expert_sharding_degree
    )
    return StageMemory(
        zero_stage,
        dense.weights_bytes + experts.weights_bytes,
        dense.master_weights_bytes + experts.master_weights_bytes,
        dense.gradients_bytes + experts.gradients_bytes,
        dense.optimizer_states_bytes + experts.optimizer_states_bytes,
        cpu_bytes_per_node=dense.cpu_bytes_per_node + experts.cpu_bytes_per_node,
    )


def deepspeed_stage_memory(inventory: ParameterInventory, setup: TrainingSetup, zero_stage: int) -> StageMemory:
    """DeepSpeed's own estimate, split into hfmem's components so the rows compare.

    ZeRO-2 (``estimate_zero2_model_states_mem_needs``): GPU = 2Ψ + int(18Ψ/N) without offload, where the code
    comment reads "18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit"; 2Ψ with
    ``offload_optimizer``. CPU = Ψ·4·gpus_per_node·1.5 (the fp32 model materialised at start-up), or
    Ψ·max(4·total_gpus, 16)·1.5 with offload.

    ZeRO-3 (``estimate_zero3_model_states_mem_needs``, ``zero_init=True``): GPU = 4·LL + int(18Ψ/N),
    4·LL + int(2Ψ/N) with optimizer offload, 4·LL with both offloads, where LL is the largest module's
    parameter count (2-byte gathered params + 2-byte grads). CPU = LL·4·gpus_per_node·1.5, Ψ·16·1.5/nodes,
    Ψ·18·1.5/nodes. The code gives no breakdown of ZeRO-3's 18; hfmem shows 2 as weights, 4 + 8 as master and
    optimizer states, and the remaining 4 as (fp32) gradients.
    """
    p, n, ll = inventory.total_params, setup.num_gpus, inventory.largest_module_params
    factor = DEEPSPEED_CPU_BUFFER_FACTOR
    master = int(4 * p / n)
    states = int(8 * p / n)
    if zero_stage == 2:
        if setup.offload == "none":
            gradients = int(18 * p / n) - master - states
            cpu = int(p * 4 * setup.gpus_per_node * factor)
            return StageMemory(2, 2 * p, master, gradients, states, cpu_bytes_per_node=cpu)
        cpu = int(p * max(4 * n, 16) * factor)
        return StageMemory(2, 2 * p, 0, 0, 0, cpu_bytes_per_node=cpu)
    if zero_stage != 3:
        raise InvalidSetupError(f"DeepSpeed's estimator has no ZeRO-{zero_stage} formula")
    gathered = 2 * ll  # 16-bit params (and, below, 16-bit grads) of the largest module
    if setup.offload == "none":
        weights = gathered + int(2 * p / n)
        gradients = int(18 * p / n) - int(2 * p / n) - master - states + gathered
        cpu = int(ll * 4 * setup.gpus_per_node * factor)
        return StageMemory(3, weights, master, gradients, states, cpu_bytes_per_node=cpu)
    if setup.offload == "optimizer":
        cpu = int(p * 16 * (1 / setup.nodes) * factor)
        return StageMemory(3, gathered + int(2 * p / n), 0, gathered, 0, cpu_bytes_per_node=cpu)
    cpu = int(p * 18 * (1 / setup.nodes) * factor)
    return StageMemory(3, gathered, 0, gathered, 0, cpu_bytes_per_node=cpu)


HFMEM_CONVENTION = (
    "model states by the ZeRO paper (Rajbhandari et al. 2020): 16-bit weights and gradients, fp32 master weights "
    "and optimizer states, sharded per stage, exact bytes; activations and logits as the model's own code saves "
    "them (traced on the meta device); overheads as listed below"
)
DEEPSPEED_CONVENTION = (
    "DeepSpeed estimator accounting (estimate_zero2/zero3_model_states_mem_needs): 18 bytes per sharded "
    "parameter, 4 x largest module gathered at ZeRO-3, CPU x 1.5 buffer factor"
)


def compute_training(inventory: ParameterInventory, setup: TrainingSetup) -> TrainingEstimate:
    """Model-state memory for every requested ZeRO stage.

    ``setup`` has passed `hfmem.rules.check_setup` (the API checks every plan once, before anything is built).
    """
    zero_stages = planned_stages(setup)
    notes: list[str] = []
    if setup.accounting == "deepspeed":
        stages = tuple(deepspeed_stage_memory(inventory, setup, s) for s in zero_stages)
        convention = DEEPSPEED_CONVENTION
        if 3 in zero_stages and not inventory.has_shapes:
            notes.append("--params gives no largest module, so DeepSpeed's ZeRO-3 term 4 x largest module is 0")
    else:
        stages = tuple(stage_memory(inventory, setup, s) for s in zero_stages)
        convention = HFMEM_CONVENTION
        if setup.optimizer in ("adafactor", "adamw-8bit") and any(s >= 1 for s in zero_stages):
            notes.append(
                "ZeRO >= 1 gives the optimizer flat 1-D partitions (DeepSpeed), so "
                + (
                    "Adafactor cannot factor its second moment there"
                    if setup.optimizer == "adafactor"
                    else "8-bit Adam quantizes every element, small tensors included"
                )
            )
        if setup.offload == "optimizer+params":
            notes.append(
                "with parameter offload the GPU holds no model state between uses; it gathers one layer at a time "
                f"(largest module: {inventory.largest_module_params:,} parameters)"
            )
    if setup.num_gpus == 1 and any(s >= 1 for s in zero_stages):
        notes.append("with 1 GPU ZeRO has nothing to shard, so every stage holds the same; pass --gpus / --nodes")
    if setup.precision == "tf32":
        notes.append(PRECISION_SPECS["tf32"].description)
    return TrainingEstimate(setup=setup, stages=stages, convention=convention, notes=tuple(notes))
