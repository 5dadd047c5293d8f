"""Model-state formulas against published figures and hand computations, plus invariants (hypothesis).

Every expected number below is either quoted from a cited source or computed by hand in the test from the
source's formula — never pasted from hfmem's output.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfmem.errors import InvalidSetupError
from hfmem.memory.states import (
    BNB_BLOCKSIZE,
    compute_training,
    deepspeed_stage_memory,
    optimizer_state_bytes,
)
from hfmem.rules import check_setup
from hfmem.types import OPTIMIZERS, PRECISIONS, ParameterInfo, ParameterInventory, TrainingSetup


def inventory_of(*shapes: tuple[int, ...]) -> ParameterInventory:
    params = [ParameterInfo(f"p{i}", shape, "float32") for i, shape in enumerate(shapes)]
    return ParameterInventory.from_parameters(
        params,
        buffer_params=0,
        largest_module=("p0", math.prod(shapes[0])),
        module_params=[],
        architecture=None,
        model_type=None,
    )


def totals(inventory: ParameterInventory, **setup: object) -> list[int]:
    estimate = compute_training(inventory, TrainingSetup(**setup))  # type: ignore[arg-type]
    return [s.total_bytes for s in estimate.stages]


# --- ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054) -------------------------------------------------

PSI = 7_500_000_000  # Figure 1: Ψ = 7.5B, N_d = 64, K = 12, fp16 mixed precision Adam


def test_zero_paper_figure_1_exact() -> None:
    # Figure 1: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device (decimal GB).
    # By the paper's formulas: (2+2+K)Ψ, 2Ψ+2Ψ+KΨ/N, 2Ψ+(2+K)Ψ/N, (2+2+K)Ψ/N with K = 12.
    got = totals(
        ParameterInventory.from_count(PSI), precision="fp16-mixed", optimizer="adamw", gpus_per_node=8, nodes=8
    )
    assert got == [120_000_000_000, 31_406_250_000, 16_640_625_000, 1_875_000_000]
    assert [round(b / 1e9, 1) for b in got] == [120.0, 31.4, 16.6, 1.9]


def test_zero_paper_components_stage_0() -> None:
    # §3.1: 2Ψ fp16 parameters, 2Ψ fp16 gradients, KΨ = 4Ψ fp32 master + 4Ψ momentum + 4Ψ variance.
    stage0 = compute_training(ParameterInventory.from_count(PSI), TrainingSetup(precision="fp16-mixed")).stages[0]
    assert (stage0.weights_bytes, stage0.gradients_bytes) == (2 * PSI, 2 * PSI)
    assert (stage0.master_weights_bytes, stage0.optimizer_states_bytes) == (4 * PSI, 8 * PSI)


@pytest.mark.parametrize(
    ("gpus", "expected_bytes"),
    # ZeRO paper Table 1, Ψ = 7.5B row, P_os / P_os+g / P_os+g+p: N_d = 4 → 52.5 / 41.3 / 30 GB (41.25 printed
    # rounded half up). The same three formulas give N_d = 16: 4Ψ + 12Ψ/16, 2Ψ + 14Ψ/16, 16Ψ/16.
    [
        (4, [52_500_000_000, 41_250_000_000, 30_000_000_000]),
        (16, [35_625_000_000, 21_562_500_000, 7_500_000_000]),
    ],
)
def test_zero_paper_table_1(gpus: int, expected_bytes: list[int]) -> None:
    got = totals(ParameterInventory.from_count(PSI), precision="fp16-mixed", zero_stages=(1, 2, 3), gpus_per_node=gpus)
    assert got == expected_bytes


def test_shards_round_up_to_the_largest_gpu() -> None:
    # 10 parameters over 3 GPUs: the largest shard holds ceil(10/3) = 4.
    got = compute_training(ParameterInventory.from_count(10), TrainingSetup(zero_stages=(3,), gpus_per_node=3))
    assert got.stages[0].weights_bytes == 4 * 2


# --- bytes per parameter by precision and optimizer (REFERENCE.md §1.5) -------------------------------------

LLAMA2_7B = 6_738_415_616  # keras-hub llama2_7b_en "params"; GGUF general.parameter_count


@pytest.mark.parametrize(
    ("precision", "optimizer", "bytes_per_param"),
    [
        ("fp32", "adamw", 16),  # 4 + 4 + 8: Transformer Math 101; DeepSpeed memory.rst "16b for fp32"
        ("tf32", "adamw", 16),  # same storage as fp32
        ("bf16-mixed", "adamw", 16),  # ZeRO §3.1: 2 + 2 + 12
        ("fp16-mixed", "adamw", 16),
        ("bf16", "adamw", 8),  # torch AdamW states are zeros_like(param): 2 + 2 + 4
        ("fp32", "sgd-momentum", 12),  # 4 + 4 + 4 momentum (HF model_memory_anatomy)
        ("fp32", "sgd", 8),  # no state
        ("bf16-mixed", "lion", 12),  # 2 + 2 + 4 master + 4 momentum
        ("fp16", "sgd", 4),
    ],
)
def test_bytes_per_parameter(precision: str, optimizer: str, bytes_per_param: int) -> None:
    got = totals(ParameterInventory.from_count(LLAMA2_7B), precision=precision, optimizer=optimizer, zero_stages=(0,))
    assert got == [bytes_per_param * LLAMA2_7B]


def test_frozen_parameters_have_no_gradients_or_states() -> None:
    frozen = ParameterInfo("frozen", (1000,), "float32", trainable=False)
    live = ParameterInfo("live", (10,), "float32")
    inv = ParameterInventory.from_parameters(
        [frozen, live],
        buffer_params=0,
        largest_module=("frozen", 1000),
        module_params=[],
        architecture=None,
        model_type=None,
    )
    stage = compute_training(inv, TrainingSetup(zero_stages=(0,))).stages[0]
    assert (stage.weights_bytes, stage.gradients_bytes, stage.master_weights_bytes) == (1010 * 2, 10 * 2, 10 * 4)
    assert stage.optimizer_states_bytes == 10 * 8


# --- shape-aware optimizers ---------------------------------------------------------------------------------


def test_adafactor_factors_matrices_and_keeps_vectors() -> None:
    # HF Adafactor: exp_avg_sq_row (4096) + exp_avg_sq_col (11008) fp32 for a 4096×11008 weight; a full fp32
    # exp_avg_sq for a 1-D tensor; a 3-D (8, 16, 32) tensor keeps rows of shape (8, 16) and cols of shape (8, 32).
    assert optimizer_state_bytes("adafactor", (4096, 11008), 2) == (4096 + 11008) * 4
    assert optimizer_state_bytes("adafactor", (4096,), 2) == 4096 * 4
    assert optimizer_state_bytes("adafactor", (8, 16, 32), 4) == (8 * 16 + 8 * 32) * 4


def test_adamw_8bit_block_layout() -> None:
    # bitsandbytes: two uint8 states + one fp32 absmax per 256-element block for each; < 4096 elements → fp32.
    n = 4096 * 4096
    assert BNB_BLOCKSIZE == 256
    assert optimizer_state_bytes("adamw-8bit", (4096, 4096), 4) == 2 * n + 2 * (n // 256) * 4
    assert optimizer_state_bytes("adamw-8bit", (4095,), 4) == 4095 * 8
    assert optimizer_state_bytes("adamw-8bit", (4097,), 4) == 2 * 4097 + 2 * 17 * 4  # ceil(4097/256) = 17 blocks


def test_zero_partitions_are_flat_for_shape_aware_optimizers() -> None:
    # DeepSpeed gives the optimizer flat 1-D partitions: Adafactor cannot factor them (4 B/element).
    inv = inventory_of((1024, 1024), (1024,))
    stage0, stage1 = compute_training(
        inv, TrainingSetup(optimizer="adafactor", zero_stages=(0, 1), gpus_per_node=2)
    ).stages
    assert stage0.optimizer_states_bytes == (1024 + 1024) * 4 + 1024 * 4
    assert stage1.optimizer_states_bytes == math.ceil((1024 * 1024 + 1024) / 2) * 4


def test_adafactor_needs_shapes() -> None:
    with pytest.raises(InvalidSetupError, match="--params"):
        compute_training(ParameterInventory.from_count(10**9), TrainingSetup(optimizer="adafactor"))


# --- offload -------------------------------------------------------------------------------------------------


def test_optimizer_offload_moves_master_states_and_gradient_partitions() -> None:
    setup = TrainingSetup(precision="fp16-mixed", zero_stages=(1, 2), offload="optimizer", gpus_per_node=8, nodes=8)
    stage1, stage2 = compute_training(ParameterInventory.from_count(PSI), setup).stages
    shard = PSI // 64
    assert (stage1.weights_bytes, stage1.gradients_bytes, stage1.master_weights_bytes) == (2 * PSI, 2 * PSI, 0)
    assert (stage2.weights_bytes, stage2.gradients_bytes, stage2.optimizer_states_bytes) == (2 * PSI, 0, 0)
    # CPU per node: 8 GPUs × shard × (fp32 params 4 + fp32 grads 4 + Adam 8), as ZeRO-Offload keeps them.
    assert stage2.cpu_bytes_per_node == 8 * shard * 16


def test_param_offload_leaves_no_model_state_on_gpu() -> None:
    setup = TrainingSetup(zero_stages=(3,), offload="optimizer+params", gpus_per_node=4)
    stage3 = compute_training(ParameterInventory.from_count(4000), setup).stages[0]
    assert stage3.total_bytes == 0
    assert stage3.cpu_bytes_per_node == 4 * (1000 * 16 + 1000 * 2)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (TrainingSetup(offload="optimizer", zero_stages=(0, 1)), "drop --zero 0"),
        (TrainingSetup(offload="optimizer+params", zero_stages=(2,)), "--zero 3"),
        (TrainingSetup(accounting="deepspeed", zero_stages=(1,)), "ZeRO-2 and ZeRO-3 only"),
        (TrainingSetup(accounting="deepspeed", zero_stages=(2,), optimizer="sgd"), "mixed precision with Adam"),
        (TrainingSetup(zero_stages=(4,)), "does not exist"),
        (TrainingSetup(zero_stages=(2,), offload="optimizer", optimizer="adamw-8bit"), "CPU-Adam"),
    ],
)
def test_impossible_setups_are_refused(setup: TrainingSetup, message: str) -> None:
    with pytest.raises(InvalidSetupError, match=message):
        check_setup(setup)


# --- DeepSpeed's estimator (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py) -------------------------------

# DeepSpeed docs/code-docs/source/memory.rst print these for t5-3b on 1 node × 8 GPUs ("2851M total params,
# 32M largest layer params"). The exact counts: T5ForConditionalGeneration with d_model 1024, d_ff 16384,
# 24 layers, 32 heads, d_kv 128, vocab 32128 → 2,851,598,336 params; largest module = the shared embedding
# 32128 × 1024 = 32,899,072.
T5_3B = ParameterInventory(
    total_params=2_851_598_336,
    trainable_params=2_851_598_336,
    embedding_params=0,
    buffer_params=0,
    largest_module_params=32128 * 1024,
    active_params_per_token=2_851_598_336,
)


@pytest.mark.parametrize(
    ("stage", "offload", "gpu_gib", "cpu_gib", "digits"),
    [
        (2, "optimizer", 5.31, 127.48, 2),  # memory.rst: "127.48GB |   5.31GB | offload_optimizer=cpu"
        (3, "optimizer+params", 0.12, 71.7, 1),  # "offload_param=cpu , offload_optimizer=cpu , zero_init=1"
        (3, "optimizer", 0.79, 63.7, 1),  # "offload_param=none, offload_optimizer=cpu , zero_init=1"
        (3, "none", 6.10, 1.47, 2),  # "offload_param=none, offload_optimizer=none, zero_init=1"
    ],
)
def test_deepspeed_memory_rst_examples(stage: int, offload: str, gpu_gib: float, cpu_gib: float, digits: int) -> None:
    setup = TrainingSetup(zero_stages=(stage,), gpus_per_node=8, offload=offload, accounting="deepspeed")  # type: ignore[arg-type]
    row = deepspeed_stage_memory(T5_3B, setup, stage)
    assert round(row.total_bytes / 2**30, 2) == gpu_gib
    assert round(row.cpu_bytes_per_node / 2**30, digits) == cpu_gib


def test_deepspeed_zero2_current_code_formula() -> None:
    # Current code: gpu_mem = 2 * total_params + int(18 * total_params / total_gpus). (memory.rst's older
    # "4 * params + 16 * params / total_gpus" = 15.93 GiB for t5-3b is out of date.)
    row = deepspeed_stage_memory(T5_3B, TrainingSetup(zero_stages=(2,), gpus_per_node=8, accounting="deepspeed"), 2)
    p = 2_851_598_336
    assert row.total_bytes == 2 * p + int(18 * p / 8)
    assert row.cpu_bytes_per_node == int(p * 4 * 8 * 1.5)


def test_deepspeed_vs_hfmem_zero2_differ_by_the_fp32_gradient_copy() -> None:
    # DeepSpeed counts 4 extra bytes per sharded parameter (fp32 gradients at step time): 18 vs 14 per shard.
    hfmem_row, ds_row = (
        compute_training(T5_3B, TrainingSetup(zero_stages=(2,), gpus_per_node=8, accounting=a)).stages[0]  # type: ignore[arg-type]
        for a in ("hfmem", "deepspeed")
    )
    p = 2_851_598_336
    assert ds_row.total_bytes - hfmem_row.total_bytes == int(18 * p / 8) - 14 * math.ceil(p / 8)


# --- invariants ------------------------------------------------------------------------------------------------

counts = st.integers(min_value=1, max_value=10**12)
gpu_counts = st.integers(min_value=1, max_value=1024)
STATELESS_OF_SHAPE = [o for o in OPTIMIZERS if o not in ("adafactor", "adamw-8bit", "paged-adamw-8bit")]


@settings(max_examples=200, deadline=None)
@given(
    count=counts, gpus=gpu_counts, precision=st.sampled_from(PRECISIONS), optimizer=st.sampled_from(STATELESS_OF_SHAPE)
)
def test_higher_stages_never_use_more_per_gpu(count: int, gpus: int, precision: str, optimizer: str) -> None:
    got = totals(ParameterInventory.from_count(count), precision=precision, optimizer=optimizer, gpus_per_node=gpus)
    assert got == sorted(got, reverse=True)


@settings(max_examples=200, deadline=None)
@given(
    count=counts,
    gpus=gpu_counts,
    precision=st.sampled_from(PRECISIONS),
    optimizer=st.sampled_from([o for o in OPTIMIZERS if o != "adafactor"]),
)
def test_stage_0_ignores_gpu_count_and_shards_cover_the_model(
    count: int, gpus: int, precision: str, optimizer: str
) -> None:
    inv = ParameterInventory.from_count(count)
    one = totals(inv, precision=precision, optimizer=optimizer, gpus_per_node=1)
    many = totals(inv, precision=precision, optimizer=optimizer, gpus_per_node=gpus)
    assert one[0] == many[0]
    assert many[3] * gpus >= one[3]  # per-GPU × N ≥ the unsharded total


@settings(max_examples=100, deadline=None)
@given(count=counts, gpus=gpu_counts, optimizer=st.sampled_from(STATELESS_OF_SHAPE))
def test_memory_grows_with_bytes_per_element(count: int, gpus: int, optimizer: str) -> None:
    inv = ParameterInventory.from_count(count)
    pure16 = totals(inv, precision="bf16", optimizer=optimizer, gpus_per_node=gpus)
    mixed = totals(inv, precision="bf16-mixed", optimizer=optimizer, gpus_per_node=gpus)
    fp32 = totals(inv, precision="fp32", optimizer=optimizer, gpus_per_node=gpus)
    assert all(a <= b for a, b in zip(pure16, mixed, strict=True))
    assert all(a <= b for a, b in zip(pure16, fp32, strict=True))
