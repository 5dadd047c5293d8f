"""Model-state memory per GPU: weights, fp32 master weights, gradients and optimizer states, per ZeRO stage.

Pure functions over `ParameterInventory` and `TrainingSetup`; no torch, no I/O. Every constant names its source.

Conventions (docs/formulas.md explains them at length):

* ``hfmem`` accounting follows the ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054, §3.1 and Fig. 1):
  mixed precision keeps 16-bit working weights and gradients (2Ψ + 2Ψ) and an fp32 master copy plus the
  optimizer states (KΨ, K = 4 + 8 for Adam). Stage 1 shards master + optimizer states over the N data-parallel
  GPUs, stage 2 also the gradients, stage 3 also the weights. Shards are ``ceil(Ψ / N)`` elements.
* ``deepspeed`` accounting reproduces DeepSpeed's own estimators exactly
  (``estimate_zero2_model_states_mem_needs`` in ``deepspeed/runtime/zero/stage_1_and_2.py`` and
  ``estimate_zero3_model_states_mem_needs`` in ``deepspeed/runtime/zero/stage3.py``, DeepSpeed @ 02aa38c).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from hfmem.dtypes import BF16, FP16, FP32, Dtype
from hfmem.errors import InvalidSetupError
from hfmem.memory.expr import Value, ceil_div, cite, maximum, trunc, value_of
from hfmem.memory.memo import IdentityMemo
from hfmem.memory.methods import ADAPTER_DTYPE, FrozenCounts, count_frozen, frozen_bytes
from hfmem.memory.sources import (
    SRC_ADAFACTOR,
    SRC_ADAMW,
    SRC_BNB_8BIT,
    SRC_BNB_PAGED,
    SRC_DS_EST2,
    SRC_FP32,
    SRC_OFFLOAD,
)
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
    "BNB_BLOCKSIZE",
    "BNB_MIN_8BIT_SIZE",
    "BNB_MIN_PAGED_SIZE",
    "PAGED_OPTIMIZERS",
    "paged_state_bytes",
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
#: bitsandbytes pages the states of tensors with at least this many elements (``get_state_buffer``: ``if not
#: self.is_paged or p.numel() < 1e5: return torch.zeros_like(...)``, bitsandbytes/optim/optimizer.py @ 95f9af3).
BNB_MIN_PAGED_SIZE = 100_000
#: The bitsandbytes paged optimizers and the unpaged optimizer whose states they keep (``PagedAdamW`` = AdamW with
#: ``optim_bits=32, is_paged=True``; ``PagedAdamW8bit`` = ``optim_bits=8, is_paged=True``).
PAGED_OPTIMIZERS: dict[Optimizer, Optimizer] = {"paged-adamw": "adamw", "paged-adamw-8bit": "adamw-8bit"}
FP32_BYTES = 4
#: DeepSpeed's estimators multiply CPU memory by ``additional_buffer_factor=1.5`` (stage_1_and_2.py, stage3.py).
DEEPSPEED_CPU_BUFFER_FACTOR = 1.5


@dataclass(frozen=True)
class PrecisionSpec:
    """The dtype of each model state under one precision regime; bytes per element from `hfmem.dtypes`.

    Attributes:
        weights: the working copy used in forward/backward.
        master: a separate master copy held by the optimizer (None if the weights are the master).
        grads: gradients as stored.
        states: one optimizer-state element (Adam's m or v, a momentum).
        autocast: the 16-bit dtype ``torch.autocast`` computes matmuls in over these (fp32) weights, or None.
    """

    weights: Dtype
    master: Dtype | None
    grads: Dtype
    states: Dtype
    description: str
    autocast: Dtype | None = None

    @property
    def weight_bytes(self) -> int:
        return self.weights.bits // 8

    @property
    def master_bytes(self) -> int:
        """0 when the weights are the master."""
        return 0 if self.master is None else self.master.bits // 8

    @property
    def grad_bytes(self) -> int:
        return self.grads.bits // 8

    @property
    def state_bytes(self) -> int:
        return self.states.bits // 8


PRECISION_SPECS: dict[Precision, PrecisionSpec] = {
    # Transformer Math 101 (EleutherAI) and HF "model memory anatomy": fp32 = 4 B weights, 4 B gradients.
    "fp32": PrecisionSpec(FP32, None, FP32, FP32, "fp32 weights, gradients and optimizer states"),
    "tf32": PrecisionSpec(
        FP32, None, FP32, FP32, "fp32 storage; TF32 changes only the matmul arithmetic, so memory is the same as fp32"
    ),
    # ZeRO paper §3.1: fp16 (or bf16) parameters and gradients (2Ψ + 2Ψ), fp32 master copy (4Ψ) + Adam (8Ψ).
    "bf16-mixed": PrecisionSpec(
        BF16, FP32, BF16, FP32, "bf16 weights and gradients, fp32 master weights and optimizer states"
    ),
    "fp16-mixed": PrecisionSpec(
        FP16, FP32, FP16, FP32, "fp16 weights and gradients, fp32 master weights and optimizer states"
    ),
    # torch.optim creates states with zeros_like(param) (torch/optim/adam.py), so pure 16-bit training keeps
    # its optimizer states in the parameter dtype and has no master copy.
    "bf16": PrecisionSpec(
        BF16, None, BF16, BF16, "everything bf16: weights, gradients and optimizer states; no master copy"
    ),
    "fp16": PrecisionSpec(
        FP16, None, FP16, FP16, "everything fp16: weights, gradients and optimizer states; no master copy"
    ),
    # The HF Trainer's bf16=True / fp16=True on an fp32 model: accelerate wraps the forward in torch.autocast, the
    # model stays fp32, so gradients (autograd accumulates into the leaf's dtype) and AdamW states are fp32; the
    # matmuls run on cached 16-bit copies of the weights (aten autocast_mode.cpp cached_cast; docs/techniques.md §5).
    "amp-bf16": PrecisionSpec(
        FP32,
        None,
        FP32,
        FP32,
        "autocast bf16 on an fp32 model: fp32 weights, gradients and optimizer states; bf16 matmuls on cached copies",
        autocast=BF16,
    ),
    "amp-fp16": PrecisionSpec(
        FP32,
        None,
        FP32,
        FP32,
        "autocast fp16 on an fp32 model: fp32 weights, gradients and optimizer states; fp16 matmuls on cached copies",
        autocast=FP16,
    ),
}


#: The training note when ZeRO stages ≥ 1 are planned with nothing to shard them over.
ONE_GPU_NOTE = "with 1 GPU ZeRO has nothing to shard, so every stage holds the same; pass --gpus / --nodes"


def shard_count(count: Value, num_shards: Value) -> Value:
    """Elements held by the GPU with the largest shard: ``ceil(count / num_shards)``."""
    return ceil_div(count, num_shards)


@dataclass(slots=True)
class TensorCounts:
    """Per-tensor sums over the trained tensors that the optimizer-state formulas need (ints or symbols).

    Attributes:
        elements: every trained element (Ψ_T).
        elements_8bit: elements of tensors with at least `BNB_MIN_8BIT_SIZE` elements (8-bit Adam quantizes them).
        blocks_8bit: Σ⌈n / `BNB_BLOCKSIZE`⌉ over those tensors (one fp32 absmax each).
        elements_32bit: elements of the smaller tensors (8-bit Adam keeps fp32 states for them).
        factored_rows: Σ rows (numel / last dim) of the ≥ 2-D tensors (Adafactor's exp_avg_sq_row).
        factored_cols: Σ columns (numel / second-to-last dim) of the ≥ 2-D tensors (exp_avg_sq_col).
        elements_1d: elements of the 1-D tensors (Adafactor's full exp_avg_sq).
        elements_paged: elements of tensors with at least `BNB_MIN_PAGED_SIZE` elements (paged optimizers page them).
        largest: elements of the largest tensor (the one gradient live with the optimizer in backward).
    """

    elements: Value
    elements_8bit: Value = 0
    blocks_8bit: Value = 0
    elements_32bit: Value = 0
    factored_rows: Value = 0
    factored_cols: Value = 0
    elements_1d: Value = 0
    elements_paged: Value = 0
    largest: Value = 0


def count_tensors(shapes: Iterable[tuple[int, ...]]) -> TensorCounts:
    """The `TensorCounts` of tensors of these shapes (a flat tensor is one 1-D shape)."""
    elements = e8 = b8 = e32 = rows = cols = ones = paged = largest = 0
    for shape in shapes:
        numel = 1
        for dim in shape:
            numel *= dim
        elements += numel
        largest = max(largest, numel)
        if numel >= BNB_MIN_PAGED_SIZE:
            paged += numel
        if numel < BNB_MIN_8BIT_SIZE:
            e32 += numel
        else:
            e8 += numel
            b8 += -(-numel // BNB_BLOCKSIZE)
        if len(shape) >= 2:
            rows += numel // shape[-1]
            cols += numel // shape[-2]
        else:
            ones += numel
    return TensorCounts(elements, e8, b8, e32, rows, cols, ones, paged, largest)


#: Optimizers whose states are whole tensors like the parameter: how many per element (torch/optim/adamw.py:
#: exp_avg + exp_avg_sq; sgd.py: momentum_buffer only with momentum; Lion, Chen et al. 2023: one momentum).
PER_ELEMENT_STATES = {"adamw": 2, "sgd-momentum": 1, "lion": 1, "sgd": 0}


def per_element_state_bytes(optimizer: Optimizer, elements: Value, state_bytes: Value) -> Value:
    """``k × n × s`` for an optimizer keeping ``k`` states shaped like its ``n`` elements (`PER_ELEMENT_STATES`)."""
    k = PER_ELEMENT_STATES[optimizer]
    if k == 0:
        return 0
    if k == 1:
        return elements * state_bytes
    return cite(k, SRC_ADAMW, elements, state_bytes) * elements * state_bytes


def tensor_state_bytes(optimizer: Optimizer, counts: TensorCounts, state_bytes: Value) -> Value:
    """Optimizer state of tensors kept in their own shapes (no ZeRO), summed: one formula over `TensorCounts`.

    AdamW keeps 2 states per element (torch/optim/adamw.py), SGD with momentum and Lion one, SGD none. bitsandbytes
    8-bit AdamW: 2 uint8 states + one fp32 absmax per block of 256 per tensor, fp32 states for tensors under 4096
    elements (bitsandbytes/optim/optimizer.py). Adafactor (transformers/optimization.py ``Adafactor.step``): 16-bit
    grads are upcast with grad.float() before the states are created from them, so states are fp32 whatever the
    parameter dtype; a tensor is factored when it has >= 2 dims: exp_avg_sq_row = shape[:-1], exp_avg_sq_col =
    shape[:-2] + shape[-1:].
    """
    c = counts
    if optimizer == "paged-adamw":  # bitsandbytes 32-bit states are fp32 whatever the parameter dtype
        return per_element_state_bytes("adamw", c.elements, cite(FP32_BYTES, SRC_BNB_PAGED, c.elements))
    optimizer = PAGED_OPTIMIZERS.get(optimizer, optimizer)
    if optimizer in PER_ELEMENT_STATES:
        return per_element_state_bytes(optimizer, c.elements, state_bytes)
    fp32 = cite(FP32_BYTES, SRC_FP32, c.elements)
    if optimizer == "adamw-8bit":
        quantized = 0
        if value_of(c.elements_8bit):
            # one uint8 per element of each of the 2 states, one fp32 absmax per block of each
            quantized = cite(2, SRC_BNB_8BIT, c.elements) * (c.elements_8bit + c.blocks_8bit * fp32)
        return quantized + 2 * c.elements_32bit * fp32
    if optimizer == "adafactor":
        return (c.factored_rows + c.factored_cols + c.elements_1d) * cite(FP32_BYTES, SRC_ADAFACTOR, c.elements)
    raise InvalidSetupError(f"unknown optimizer '{optimizer}'")


def paged_state_bytes(optimizer: Optimizer, counts: TensorCounts) -> Value:
    """The part of `tensor_state_bytes` a bitsandbytes paged optimizer keeps in CUDA managed memory (0 for others).

    ``state1``/``state2`` of every tensor with ≥ `BNB_MIN_PAGED_SIZE` elements are paged (``get_state_buffer``):
    fp32 (4 + 4 bytes per element) for ``paged-adamw``, uint8 (1 + 1) for ``paged-adamw-8bit`` (a paged tensor is
    far above ``min_8bit_size``, so it is always quantized). The fp32 absmax of the 8-bit blocks and the states of
    smaller tensors are ordinary CUDA tensors, inside PyTorch's allocator statistics.

    Example:
        >>> paged_state_bytes("paged-adamw-8bit", count_tensors([(4096, 4096), (4096,)]))  # 2 × 16,777,216
        33554432
    """
    n = counts.elements_paged
    if optimizer not in PAGED_OPTIMIZERS or not value_of(n):
        return 0
    per_state = cite(FP32_BYTES, SRC_BNB_PAGED, n) if optimizer == "paged-adamw" else cite(1, SRC_BNB_PAGED, n)
    return cite(2, SRC_ADAMW, n) * n * per_state


def optimizer_state_bytes(optimizer: Optimizer, shape: tuple[int, ...], state_bytes: int) -> int:
    """Bytes of optimizer state for one parameter tensor of ``shape`` (`tensor_state_bytes` of one tensor).

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
    return tensor_state_bytes(optimizer, count_tensors((shape,)), state_bytes)  # type: ignore[return-value]


def model_optimizer_state_bytes(inventory: ParameterInventory, optimizer: Optimizer, state_bytes: int) -> int:
    """Optimizer state of the whole model with every trainable tensor kept in its own shape (no ZeRO)."""
    return tensor_state_bytes(optimizer, model_tensor_counts(inventory, optimizer), state_bytes)  # type: ignore[return-value]


def model_tensor_counts(inventory: ParameterInventory, optimizer: Optimizer) -> TensorCounts:
    """The `TensorCounts` of the trainable tensors; without shapes (``--params``) the model is one flat tensor.

    Raises:
        InvalidSetupError: Adafactor without shapes (its memory depends on every tensor's shape).
    """
    if inventory.has_shapes:
        return count_tensors(p.shape for p in inventory.parameters if p.trainable)
    if optimizer == "adafactor":
        raise InvalidSetupError(
            "Adafactor's memory depends on every tensor's shape, which --params does not know; "
            "pass a model id or config instead, or choose another --optimizer"
        )
    return count_tensors(((inventory.trainable_params,),))


def flat_partition_state_bytes(optimizer: Optimizer, partition_params: Value, state_bytes: Value) -> Value:
    """Optimizer state for one flat 1-D ZeRO partition.

    With ZeRO >= 1 DeepSpeed hands the optimizer flat 1-D fp32 partitions instead of the model's tensors
    (``single_partition_of_fp32_groups`` in ``deepspeed/runtime/zero/stage_1_and_2.py``;
    ``fp32_partitioned_groups_flat`` in ``stage3.py``). Shape-aware optimizers see one long vector:
    Adafactor cannot factor it, and 8-bit Adam quantizes it block by block with no small-tensor exception.
    """
    n = partition_params
    if optimizer in PER_ELEMENT_STATES or optimizer == "paged-adamw":
        return tensor_state_bytes(optimizer, TensorCounts(n), state_bytes)
    count = value_of(n)
    if count == 0:
        return 0
    if PAGED_OPTIMIZERS.get(optimizer, optimizer) == "adamw-8bit":
        if count < BNB_MIN_8BIT_SIZE:
            return tensor_state_bytes(optimizer, TensorCounts(n, elements_32bit=n), state_bytes)
        blocks = ceil_div(n, cite(BNB_BLOCKSIZE, SRC_BNB_8BIT, n))
        return tensor_state_bytes(optimizer, TensorCounts(n, elements_8bit=n, blocks_8bit=blocks), state_bytes)
    return tensor_state_bytes(optimizer, TensorCounts(n, elements_1d=n), state_bytes)


def flat_partition_paged_bytes(optimizer: Optimizer, partition_params: Value) -> Value:
    """`paged_state_bytes` of one flat 1-D ZeRO partition (paged whole when it has ≥ 1e5 elements)."""
    n = partition_params
    if optimizer not in PAGED_OPTIMIZERS or value_of(n) < BNB_MIN_PAGED_SIZE:
        return 0
    return paged_state_bytes(optimizer, TensorCounts(n, elements_paged=n))


def trainable_spec(setup: TrainingSetup) -> PrecisionSpec:
    """Bytes per element of the trained tensors: the precision's, or fp32 adapters under LoRA/QLoRA.

    peft keeps adapters in fp32 (`hfmem.memory.methods.ADAPTER_DTYPE`): the fp32 adapter is its own master
    copy, with fp32 gradients and optimizer states (4 + 4 + 8 = 16 B per parameter with AdamW, the same total as
    the ZeRO paper's 2 + 4 + 2 + 8).
    """
    if setup.finetune.uses_peft:
        return ADAPTER_SPEC
    return PRECISION_SPECS[setup.precision]


ADAPTER_SPEC = PrecisionSpec(
    ADAPTER_DTYPE, None, ADAPTER_DTYPE, ADAPTER_DTYPE, "fp32 adapters (peft autocast_adapter_dtype)"
)


@dataclass(slots=True)
class StateInputs:
    """The operands of the model-state formulas for one group of parameters that shard alike (ints or symbols).

    Attributes:
        trainable: Ψ_T, trained elements on this GPU before ZeRO/FSDP sharding.
        frozen_params: Ψ_F, frozen elements.
        frozen_bytes: F, bytes of the frozen weights (`hfmem.memory.methods.frozen_bytes`).
        n: N, the GPUs the group's states are sharded over.
        weight_bytes, master_bytes, grad_bytes, state_bytes: w, m, g, s of the trained tensors (`trainable_spec`).
        frozen_weight_bytes: bytes per frozen weight in the working precision (offloaded with optimizer+params).
        tensor_states: optimizer states with every tensor in its own shape (`tensor_state_bytes`; ZeRO-0).
        gpus_per_node: GPUs per node (CPU RAM is per node).
        tensor_paged: the part of ``tensor_states`` a paged optimizer keeps in managed memory (`paged_state_bytes`).
        largest: elements of the largest trained tensor (the one gradient live with the optimizer in backward).
    """

    trainable: Value
    frozen_params: Value
    frozen_bytes: Value
    n: Value
    weight_bytes: Value
    master_bytes: Value
    grad_bytes: Value
    state_bytes: Value
    frozen_weight_bytes: Value
    tensor_states: Value
    gpus_per_node: Value
    tensor_paged: Value = 0
    largest: Value = 0


@dataclass(slots=True)
class StateBytes:
    """Model-state bytes per GPU (CPU RAM per node), ints or expressions."""

    weights: Value
    master: Value
    gradients: Value
    optimizer: Value
    cpu_per_node: Value = 0
    #: the part of ``optimizer`` in CUDA managed memory (bitsandbytes paged optimizers)
    paged: Value = 0

    @property
    def gpu_bytes(self) -> Value:
        """The GPU's model states: weights + gradients + master weights + optimizer states."""
        return self.weights + self.gradients + self.master + self.optimizer


def group_state_bytes(setup: TrainingSetup, zero_stage: int, x: StateInputs) -> StateBytes:
    """Model states of one group of parameters at one ZeRO stage (the table of `stage_memory`)."""
    shard = shard_count(x.trainable, x.n)
    if setup.optimizer_in_backward:
        return _in_backward_state_bytes(setup, zero_stage, x, shard)
    if zero_stage == 0:
        return StateBytes(
            x.frozen_bytes + x.weight_bytes * x.trainable,
            x.master_bytes * x.trainable,
            x.grad_bytes * x.trainable,
            x.tensor_states,
            paged=x.tensor_paged,
        )
    if zero_stage == 3:
        weights = shard_count(x.frozen_bytes, x.n) + x.weight_bytes * shard
    else:
        weights = x.frozen_bytes + x.weight_bytes * x.trainable
    gradients = x.grad_bytes * (shard if zero_stage >= 2 else x.trainable)
    if setup.offload == "none":
        return StateBytes(
            weights,
            x.master_bytes * shard,
            gradients,
            flat_partition_state_bytes(setup.optimizer, shard, x.state_bytes),
            paged=flat_partition_paged_bytes(setup.optimizer, shard),
        )
    # CPU side of one GPU's shard: fp32 params + fp32 grads + fp32 optimizer states (CPU-Adam).
    fp32 = cite(FP32_BYTES, SRC_OFFLOAD, shard)
    cpu_per_gpu = shard * (fp32 + fp32) + flat_partition_state_bytes(setup.optimizer, shard, fp32)
    if zero_stage >= 2:
        gradients = 0  # reduced gradient partitions stream to CPU (only the reduce buckets stay)
    if setup.offload == "optimizer+params":
        cpu_per_gpu = cpu_per_gpu + x.frozen_weight_bytes * shard_count(x.frozen_params, x.n) + x.weight_bytes * shard
        weights = 0
    return StateBytes(weights, 0, gradients, 0, cpu_per_gpu * x.gpus_per_node)


def _in_backward_state_bytes(setup: TrainingSetup, zero_stage: int, x: StateInputs, shard: Value) -> StateBytes:
    """Model states with the optimizer in backward (`hfmem.rules` allows it at ZeRO 0 and under FSDP only).

    Each parameter's optimizer steps as soon as its gradient is complete and sets the gradient to None (torchtune
    ``register_optim_in_bwd_hooks``), so one gradient is live at a time: the largest trained tensor's, ``g × n_max``
    (under FSDP its shard, ``g × ⌈n_max / N⌉``; FSDP's unsharded gradients of one unit are an overhead line). The
    optimizer states are the same as with a separate step: one optimizer per parameter keeps that parameter's.
    """
    largest = x.largest if value_of(x.largest) else x.trainable  # n_max (explain: SRC_OPTIM_IN_BWD)
    if zero_stage == 0:
        weights = x.frozen_bytes + x.weight_bytes * x.trainable
        return StateBytes(
            weights, x.master_bytes * x.trainable, x.grad_bytes * largest, x.tensor_states, paged=x.tensor_paged
        )
    if zero_stage == 3:
        weights = shard_count(x.frozen_bytes, x.n) + x.weight_bytes * shard
    else:
        weights = x.frozen_bytes + x.weight_bytes * x.trainable
    # FSDP gives each GPU's optimizer the shards of every parameter (torch fully_shard: Shard(0) per parameter).
    return StateBytes(
        weights,
        x.master_bytes * shard,
        x.grad_bytes * shard_count(largest, x.n),
        flat_partition_state_bytes(setup.optimizer, shard, x.state_bytes),
        paged=flat_partition_paged_bytes(setup.optimizer, shard),
    )


def add_state_bytes(parts: Iterable[StateBytes]) -> StateBytes:
    """Component-wise sum (the dense group and the routed experts)."""
    parts = parts if isinstance(parts, list) else list(parts)
    if len(parts) == 1:
        return parts[0]
    out = StateBytes(0, 0, 0, 0, 0)
    for p in parts:
        out = StateBytes(
            out.weights + p.weights,
            out.master + p.master,
            out.gradients + p.gradients,
            out.optimizer + p.optimizer,
            out.cpu_per_node + p.cpu_per_node,
            out.paged + p.paged,
        )
    return out


_SPLITS: IdentityMemo[tuple[ParameterInventory, int, int, FrozenCounts]] = IdentityMemo(256)
_COUNTS: IdentityMemo[TensorCounts] = IdentityMemo(1024)


def split_group(
    inventory: ParameterInventory, params: Sequence[ParameterInfo], setup: TrainingSetup
) -> tuple[ParameterInventory, int, int, FrozenCounts]:
    """The trained part of ``params`` as an inventory, its element count, the frozen elements and their counts.

    Remembered per inventory, group (all, dense or experts) and method (`IdentityMemo`).
    """

    def compute() -> tuple[ParameterInventory, int, int, FrozenCounts]:
        trained = [p for p in params if p.trainable]
        trainable = sum(p.numel for p in trained)
        return (
            replace(inventory, parameters=tuple(trained), trainable_params=trainable),
            trainable,
            sum(p.numel for p in params if not p.trainable),
            count_frozen(params, setup.finetune),
        )

    group = (len(params), params[0].name if params else None, params[-1].name if params else None)
    return _SPLITS.get((inventory,), (group, setup.finetune), compute)


def trained_tensor_counts(inventory: ParameterInventory, optimizer: Optimizer) -> TensorCounts:
    """`model_tensor_counts`, remembered for the (remembered) trained inventory of `split_group`."""
    key = optimizer == "adafactor" and not inventory.has_shapes
    return _COUNTS.get((inventory,), key, lambda: model_tensor_counts(inventory, optimizer))


def state_groups(
    inventory: ParameterInventory, setup: TrainingSetup
) -> list[tuple[Sequence[ParameterInfo] | None, int]]:
    """The groups of parameters that shard alike, with their sharding degree: all (or the dense ones) over
    `TrainingSetup.sharding_degree`, and with expert parallelism the routed experts over
    `TrainingSetup.expert_sharding_degree`. ``None``: a ``--params`` plan (one flat, fully trainable model)."""
    if not inventory.has_shapes:
        return [(None, setup.sharding_degree)]
    params = inventory.parameters
    if setup.parallel.ep == 1:
        return [(params, setup.sharding_degree)]
    return [
        ([p for p in params if not p.is_routed_expert], setup.sharding_degree),
        ([p for p in params if p.is_routed_expert], setup.expert_sharding_degree),
    ]


_OPERANDS: IdentityMemo[tuple[Value, ...]] = IdentityMemo(4096)


def _group_inputs(
    inventory: ParameterInventory,
    params: Sequence[ParameterInfo] | None,
    setup: TrainingSetup,
    n: int,
    zero_stage: int,
) -> StateInputs:
    """`StateInputs` of one group as numbers. All but N and the GPUs per node depend only on the group, precision,
    method and optimizer, so they are remembered (`IdentityMemo`): sweeps and the GPU-count search vary N."""

    def compute() -> tuple[Value, ...]:
        spec = PRECISION_SPECS[setup.precision]
        tspec = trainable_spec(setup)
        if params is None:
            trained_inventory, trainable, frozen_params = inventory, inventory.trainable_params, 0
            frozen: Value = 0
        else:
            trained_inventory, trainable, frozen_params, counts = split_group(inventory, params, setup)
            frozen = frozen_bytes(setup.finetune, counts, spec.weight_bytes)
        tensor_states: Value = 0
        tensor_paged: Value = 0
        largest: Value = 0
        if zero_stage == 0 or setup.optimizer_in_backward:
            counts_t = trained_tensor_counts(trained_inventory, setup.optimizer)
            largest = counts_t.largest
            if zero_stage == 0:
                tensor_states = tensor_state_bytes(setup.optimizer, counts_t, tspec.state_bytes)
                tensor_paged = paged_state_bytes(setup.optimizer, counts_t)
        return (
            trainable,
            frozen_params,
            frozen,
            tspec.weight_bytes,
            tspec.master_bytes,
            tspec.grad_bytes,
            tspec.state_bytes,
            spec.weight_bytes,
            tensor_states,
            tensor_paged,
            largest,
        )

    group = (len(params), params[0].name, params[-1].name) if params else (0, None, None)
    # The fine-tuning settings are compared by identity (`replace` keeps the object; hashing it costs more).
    key = (group, setup.precision, setup.optimizer, zero_stage == 0, setup.optimizer_in_backward)
    t, f, fb, w, m, g, s, wb, ts, tp, largest = _OPERANDS.get((inventory, setup.finetune), key, compute)
    return StateInputs(t, f, fb, n, w, m, g, s, wb, ts, setup.gpus_per_node, tp, largest)


def stage_memory(inventory: ParameterInventory, setup: TrainingSetup, zero_stage: int) -> StageMemory:
    """Per-GPU model states for one ZeRO stage under the ZeRO-paper convention (``hfmem`` accounting).

    Per GPU, with Ψ parameters (Ψ_T trainable, Ψ_F = Ψ − Ψ_T frozen), N = the sharding degree
    (`TrainingSetup.sharding_degree`), and bytes w / m / g per element (`PRECISION_SPECS`; `trainable_spec` for the
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
    total_ = add_state_bytes(
        [
            group_state_bytes(setup, zero_stage, _group_inputs(inventory, params, setup, n, zero_stage))
            for params, n in state_groups(inventory, setup)
        ]
    )
    return StageMemory(
        zero_stage,
        total_.weights,  # type: ignore[arg-type]
        total_.master,  # type: ignore[arg-type]
        total_.gradients,  # type: ignore[arg-type]
        total_.optimizer,  # type: ignore[arg-type]
        cpu_bytes_per_node=total_.cpu_per_node,  # type: ignore[arg-type]
        paged_states_bytes=total_.paged,  # type: ignore[arg-type]
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
    if zero_stage not in (2, 3):
        raise InvalidSetupError(f"DeepSpeed's estimator has no ZeRO-{zero_stage} formula")
    parts = deepspeed_state_bytes(
        setup,
        zero_stage,
        inventory.total_params,
        setup.sharding_degree,
        inventory.largest_module_params,
        setup.gpus_per_node,
        setup.nodes,
    )
    return StageMemory(
        zero_stage,
        parts.weights,  # type: ignore[arg-type]
        parts.master,  # type: ignore[arg-type]
        parts.gradients,  # type: ignore[arg-type]
        parts.optimizer,  # type: ignore[arg-type]
        cpu_bytes_per_node=parts.cpu_per_node,  # type: ignore[arg-type]
    )


def deepspeed_state_bytes(
    setup: TrainingSetup, zero_stage: int, p: Value, n: Value, ll: Value, gpus_per_node: Value, nodes: Value
) -> StateBytes:
    """`deepspeed_stage_memory` over Ψ = ``p``, N = ``n``, LL = ``ll`` (ints or symbols)."""
    factor = cite(DEEPSPEED_CPU_BUFFER_FACTOR, SRC_DS_EST2, p)
    master = trunc(4 * p / n)
    states = trunc(8 * p / n)
    if zero_stage == 2:
        if setup.offload == "none":
            gradients = trunc(18 * p / n) - master - states
            cpu = trunc(p * 4 * gpus_per_node * factor)
            return StateBytes(2 * p, master, gradients, states, cpu)
        cpu = trunc(p * maximum(4 * n, 16) * factor)
        return StateBytes(2 * p, 0, 0, 0, cpu)
    gathered = 2 * ll  # 16-bit params (and, below, 16-bit grads) of the largest module
    if setup.offload == "none":
        weights = gathered + trunc(2 * p / n)
        gradients = trunc(18 * p / n) - trunc(2 * p / n) - master - states + gathered
        cpu = trunc(ll * 4 * gpus_per_node * factor)
        return StateBytes(weights, master, gradients, states, cpu)
    if setup.offload == "optimizer":
        cpu = trunc(p * 16 * (1 / nodes) * factor)
        return StateBytes(gathered + trunc(2 * p / n), 0, gathered, 0, cpu)
    cpu = trunc(p * 18 * (1 / nodes) * factor)
    return StateBytes(gathered, 0, gathered, 0, cpu)


def compute_training(inventory: ParameterInventory, setup: TrainingSetup) -> TrainingEstimate:
    """Model-state memory for every requested ZeRO stage.

    ``setup`` has passed `hfmem.rules.check_setup` (the API checks every plan once, before anything is built).
    """
    zero_stages = planned_stages(setup)
    notes: list[str] = []
    if setup.accounting == "deepspeed":
        stages = tuple(deepspeed_stage_memory(inventory, setup, s) for s in zero_stages)
        if 3 in zero_stages and not inventory.has_shapes:
            notes.append("--params gives no largest module, so DeepSpeed's ZeRO-3 term 4 x largest module is 0")
    else:
        stages = tuple(stage_memory(inventory, setup, s) for s in zero_stages)
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
    if setup.sharding_degree == 1 and any(s >= 1 for s in zero_stages):
        notes.append(ONE_GPU_NOTE)
    if setup.precision == "tf32":
        notes.append(PRECISION_SPECS["tf32"].description)
    if setup.optimizer_in_backward and not inventory.has_shapes:
        notes.append(
            "--params has no tensor shapes, so with --optimizer-in-backward the model is one tensor and all its "
            "gradient is counted live (an upper bound)"
        )
    return TrainingEstimate(setup=setup, stages=stages, notes=tuple(notes))
