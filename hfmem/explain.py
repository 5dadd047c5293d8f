"""``--explain``: every number of a `Report` with its formula, the values put in it and where its constants come from.

Pure: no torch, no I/O. The explanation is rebuilt from the report (its inventory, setup and measured profiles) with
the same public functions of `hfmem.memory` that produced it, and written as expression trees: one tree renders the
formula in symbols (``w × ⌈Ψ_T / N⌉``), the same formula with the values substituted
(``2 × ⌈6,738,415,616 / 8⌉``) and evaluates to the bytes, so the three cannot disagree. The tests check that every
value equals the report's own number.

Notation in the rendered formulas: ``×`` multiplication, ``⌈a / b⌉`` integer division rounded up, ``⌊x⌋`` rounded
down, ``min``/``max``; integers are printed with thousands separators. Symbols are explained in each record
(``operands``), constants' sources in ``sources``.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from hfmem.memory.activations import (
    ActivationEstimate,
    bytes_per_token,
    profile_logit_element_bytes,
    profile_tokens,
    typical_layer_saved_bytes,
)
from hfmem.memory.engine import (
    SRC_SGLANG_BUDGET,
    SRC_SGLANG_DEFAULTS,
    SRC_SGLANG_POOL,
    SRC_VLLM_BLOCKS,
    SRC_VLLM_BUDGET,
    SRC_VLLM_DEFAULTS,
    SRC_VLLM_MAMBA,
    SRC_VLLM_NON_TORCH,
    SRC_VLLM_PROFILE,
    SRC_VLLM_REFUSE,
    SRC_VLLM_SPEC,
    SRC_VLLM_WEIGHTS,
    full_blocks_per_request,
    hidden_size,
    hybrid_num_blocks,
    kv_tokens,
    max_concurrency,
    needed_bytes,
    page_bytes,
    rotary_dim,
    sglang_max_num_reqs,
    sglang_max_total_tokens,
    sglang_rest_bytes,
    sliding_blocks_per_request,
    uniform_num_blocks,
    vllm_activation_peak_bytes,
    vllm_available_kv_bytes,
    vllm_default_max_model_len,
    vllm_requested_bytes,
    vllm_rope_cache_bytes,
    vllm_sampler_bytes,
)
from hfmem.memory.expr import (
    Const,
    Expr,
    Number,
    Value,
    Var,
    lift,
    minimum,
    total,
    value_of,
)
from hfmem.memory.inference import (
    dequant_transient_bytes,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    kv_element_bytes,
    largest_kv_layer_bytes,
    prefill_activation_bytes,
    recurrent_state_bytes,
    weights_per_gpu_bytes,
)
from hfmem.memory.methods import FrozenCounts, adapter_params, count_adapters, count_frozen, frozen_bytes
from hfmem.memory.parallel import (
    PipelineStage,
    active_params_per_token,
    expert_sharding_degree,
    in_flight,
    in_flight_microbatches,
    layer_sums,
    local_inventory,
    parameter_count,
    pipeline_stages,
    sharding_degree,
    stage_profile,
    tensors_params,
)
from hfmem.memory.peak import (
    OverheadInputs,
    activation_offload_cpu_bytes,
    allocator_buffer_bytes,
    fragmentation_bytes,
    gradients_persist,
    headroom_bytes,
    overhead_inputs,
    overhead_terms,
    phase_bytes,
    phase_candidates,
    phase_gradient_bytes,
    stage_activations,
)
from hfmem.memory.quantization import (
    BNB_4BIT_BLOCKSIZE,
    BNB_DQ_BLOCKSIZE,
    MXFP4_BLOCKSIZE,
    QuantCounts,
    QuantScheme,
    plain_weight_bytes,
    weight_bytes,
    weight_operands,
    weights_total_bytes,
)
from hfmem.memory.sources import (
    SRC_ACT_OFFLOAD,
    SRC_ADAFACTOR,
    SRC_ADAM_FOREACH,
    SRC_ADAM_FUSED,
    SRC_ADAM_LOOP,
    SRC_ADAMW,
    SRC_AUTOCAST_CACHE,
    SRC_AUTOCAST_LISTS,
    SRC_AWQ,
    SRC_BNB_4BIT,
    SRC_BNB_8BIT,
    SRC_BNB_MATMUL,
    SRC_BNB_PAGED,
    SRC_CAT,
    SRC_CHUNKED_LOSS,
    SRC_CKPT,
    SRC_CKPT_EVERY,
    SRC_CUDA,
    SRC_DDP,
    SRC_DORA,
    SRC_DS_CONFIG,
    SRC_DS_EST2,
    SRC_DS_EST3,
    SRC_DS_FLAT,
    SRC_DS_FP32_GRAD,
    SRC_DS_GATHER,
    SRC_FP8,
    SRC_FRAG,
    SRC_FSDP,
    SRC_FSDP_PP,
    SRC_FSDP_QLORA,
    SRC_FUSED_LOSS,
    SRC_GRAD_FREED,
    SRC_GRAD_ORDER,
    SRC_GRAD_PERSIST,
    SRC_INT8,
    SRC_INVENTORY,
    SRC_KV,
    SRC_KV_DTYPE,
    SRC_KV_TP,
    SRC_LION,
    SRC_LORA,
    SRC_LOSS,
    SRC_MEGATRON_TP,
    SRC_MXFP4,
    SRC_OFFLOAD,
    SRC_OPS_SAC,
    SRC_OPTIM_IN_BWD,
    SRC_PEAK,
    SRC_PEFT_FP32,
    SRC_PP_1F1B,
    SRC_PP_INTERLEAVED,
    SRC_PREFILL,
    SRC_PREFILL_CHUNK,
    SRC_QLORA,
    SRC_QUANT_SKIP,
    SRC_SGD,
    SRC_TM101,
    SRC_TORCH_STATES,
    SRC_TP_ACT,
    SRC_TRACE,
    SRC_ZERO,
    SRC_ZERO_STAGES,
)
from hfmem.memory.states import (
    BNB_BLOCKSIZE,
    BNB_MIN_8BIT_SIZE,
    BNB_MIN_PAGED_SIZE,
    PER_ELEMENT_STATES,
    PRECISION_SPECS,
    StateBytes,
    StateInputs,
    TensorCounts,
    add_state_bytes,
    compute_training,
    count_tensors,
    deepspeed_state_bytes,
    group_state_bytes,
    paged_state_bytes,
    per_element_state_bytes,
    split_group,
    state_groups,
    tensor_state_bytes,
    trainable_spec,
)
from hfmem.types import (
    ActivationProfile,
    EngineEstimate,
    KvLayer,
    LayerProfile,
    ParameterInfo,
    ParameterInventory,
    Report,
    StageMemory,
    TrainingSetup,
)
from hfmem.units import GIB

__all__ = [
    "Expr",
    "Var",
    "Const",
    "Calculation",
    "Explanation",
    "explain",
    "explanation_records",
    "render_explanation",
]

Section = Literal["parameters", "training", "inference", "engine"]
Unit = Literal[
    "bytes", "parameters", "GPUs", "micro-batches", "bytes per parameter", "blocks", "tokens", "requests", "x"
]


# ---------------------------------------------------------------------------------------------------------------
# Expressions: one tree renders the formula, the substituted formula and the value.


# ---------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Calculation:
    """One computed number: its label (``ZeRO-0, 1, 2``, ``per GPU``…), expression and unit.

    ``zero_stages``: the ZeRO stages whose row this number is (training only; identical lines are merged).
    """

    label: str
    expr: Expr
    unit: Unit = "bytes"
    zero_stages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[str, Number] = {}
        for var in self.expr.variables():
            if seen.setdefault(var.symbol, var.number) != var.number:
                raise ValueError(f"symbol {var.symbol} has two values in one formula: {seen[var.symbol]}, {var.number}")

    @property
    def value(self) -> Number:
        return self.expr.value()

    @property
    def operands(self) -> dict[str, Var]:
        out: dict[str, Var] = {}
        for var in self.expr.variables():
            out.setdefault(var.symbol, var)
        return out


@dataclass(frozen=True)
class Explanation:
    """One component: a plain-English paragraph, its calculations and the sources of its constants."""

    section: Section
    component: str
    text: str
    calculations: tuple[Calculation, ...] = ()
    sources: tuple[str, ...] = ()
    key: str | None = None  # an overhead line's stable key (`hfmem.types.OverheadItem.key`)


# ---------------------------------------------------------------------------------------------------------------
# Sources (each constant's origin; REFERENCE.md gives the commits read)

# ---------------------------------------------------------------------------------------------------------------
# Helpers

_DTYPE_WORD = {4: "fp32", 2: "16-bit", 1: "8-bit"}


def _gib(num: Number) -> str:
    return f"{num / GIB:,.2f} GiB"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _stage_label(stages: Sequence[int], setup: TrainingSetup) -> str:
    if setup.parallel.fsdp is not None:
        return f"FSDP {setup.parallel.fsdp}"
    return "ZeRO-" + ", ".join(str(s) for s in stages)


def _merge_stages(rows: Sequence[tuple[int, Value]], setup: TrainingSetup, unit: Unit = "bytes") -> list[Calculation]:
    """One calculation per distinct formula, labelled with the ZeRO stages that share it."""
    groups: dict[tuple[str, str], tuple[list[int], Value]] = {}
    for stage, value in rows:
        expr = lift(value)
        key = (expr.formula, expr.substituted)
        groups.setdefault(key, ([], expr))[0].append(stage)
    return [
        Calculation(_stage_label(stages, setup), lift(expr), unit, tuple(stages)) for stages, expr in groups.values()
    ]


def _sym(base: str, suffix: str) -> str:
    if not suffix:
        return base
    return f"{base}{suffix}" if "_" in base else f"{base}_{suffix}"


def _groups(values: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], int]]:
    """Distinct values with their counts, in order of first appearance (a `Counter` keeps insertion order)."""
    return list(Counter(values).items())


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def _parameters(report: Report) -> list[Explanation]:
    inv = report.inventory
    out: list[Explanation] = []
    if not inv.has_shapes:
        out.append(
            Explanation(
                "parameters",
                "Parameters",
                "A --params plan: a hypothetical dense model of this many parameters, all trained. No tensor shapes "
                "are known, so nothing here depends on them (no activations, no largest module).",
                (Calculation("total", Var("Ψ", inv.total_params, "parameters (--params)"), "parameters"),),
            )
        )
        return out
    sums = layer_sums(inv)
    layer_terms: list[tuple[Value, Value]] = []
    for k, (count, size) in enumerate(sums.layer_groups, start=1):
        suffix = "" if len(sums.layer_groups) == 1 else str(k)
        layers_var = Var(
            _sym("L", suffix), count, "transformer layers" + (f" of {size:,} parameters" if suffix else "")
        )
        layer_terms.append((layers_var, Var(_sym("P_layer", suffix), size, "parameters of one layer", SRC_INVENTORY)))
    psi = parameter_count(
        layer_terms,
        _v("P_before", sums.before_params, "parameters before the layers (embeddings)"),
        _v("P_after", sums.after_params, "parameters after the layers (final norm, untied LM head)"),
    )
    layers = sums.layers
    text = (
        f"Ψ, the number of weights, is counted exactly, not estimated: hfmem builds {inv.architecture or 'the model'} "
        "on PyTorch's meta device (shapes without storage) and adds up every tensor, a tied weight once. "
    )
    if layers:
        text += f"The model is {_plural(layers, 'layer')} plus what comes before and after them. "
    if inv.buffer_params:
        text += (
            f"Buffers ({inv.buffer_params:,} elements, e.g. rotary inv_freq) are not parameters and are never trained. "
        )
    if report.training is not None and report.training.setup.finetune.uses_peft:
        text += "The count includes the LoRA adapters peft adds. "
    out.append(
        Explanation(
            "parameters",
            "Parameters",
            text.strip(),
            (Calculation("total", lift(psi), "parameters"),),
            (SRC_INVENTORY,),
        )
    )
    out.append(_trainable(report))
    embeddings = [p for p in inv.parameters if p.is_embedding]
    if embeddings and len(embeddings) <= 4:
        # ParameterInfo.numel: the product of the shape
        shapes = [tuple(map(Const, p.shape)) if len(p.shape) > 1 else (p.numel,) for p in embeddings]
        expr = lift(tensors_params(shapes))
        out.append(
            Explanation(
                "parameters",
                "Embeddings",
                "The token (and position) embedding tables, vocabulary × hidden size, plus an untied output head: "
                + ", ".join(f"{p.name} {' × '.join(f'{d:,}' for d in p.shape)}" for p in embeddings)
                + ". Tensor parallelism splits them over the vocabulary; quantization leaves them 16-bit.",
                (Calculation("embedding", expr, "parameters"),),
                (SRC_INVENTORY,),
            )
        )
    if inv.moe is not None:
        moe = inv.moe
        active = active_params_per_token(
            Var("Ψ", inv.total_params, "all parameters", SRC_INVENTORY),
            Var("R", moe.routed_expert_params, "routed-expert parameters", SRC_INVENTORY),
            Var("k", moe.experts_per_token, "experts per token (config)"),
            Var("E", moe.num_experts, "routed experts (config)"),
        )
        expr = lift(active)
        out.append(
            Explanation(
                "parameters",
                "Active parameters per token (MoE)",
                f"Each token is routed to k = {moe.experts_per_token} of E = {moe.num_experts} experts, so it uses "
                "k/E of the routed-expert weights and all of the rest (attention, shared experts, router, embeddings). "
                "Memory still holds every expert; only compute follows the active count.",
                (Calculation("active per token", expr, "parameters"),),
                (SRC_INVENTORY,),
            )
        )
    return out


def _trainable(report: Report) -> Explanation:
    inv = report.inventory
    setup = report.training.setup if report.training is not None else None
    method = setup.method if setup is not None else "full"
    trained = [p for p in inv.parameters if p.trainable]
    if method == "full" or not trained:
        expr: Expr = Var("Ψ_T", inv.trainable_params, "trainable parameters: every parameter")
        return Explanation(
            "parameters",
            "Trainable parameters",
            "Full fine-tuning trains every parameter, so Ψ_T = Ψ: each one has a gradient and optimizer state.",
            (Calculation("trainable", expr, "parameters"),),
            (SRC_INVENTORY,),
        )
    assert setup is not None
    if method == "freeze":
        expr = Var("Ψ_T", inv.trainable_params, "parameters of the modules --train-modules matches")
        return Explanation(
            "parameters",
            "Trainable parameters",
            f"--method freeze trains only the tensors matching {', '.join(setup.finetune.train_modules)}; the rest "
            "is frozen (weights only: no gradient, no optimizer state, no master copy).",
            (Calculation("trainable", expr, "parameters"),),
            (SRC_INVENTORY,),
        )
    rank = setup.finetune.lora_rank
    counts = count_adapters(trained, rank)
    dora = counts.dora_magnitudes
    trainable = adapter_params(
        Var("r", rank, "LoRA rank (--lora-rank)", SRC_LORA),
        _v("Σ_io", counts.lora_sides, "Σ over adapted linears of (inputs + outputs)", SRC_INVENTORY),
        _v("Ψ_mag", dora, "DoRA magnitudes: one per output feature of each adapted linear"),
        _v("Ψ_save", counts.other_params, "modules_to_save: full trainable copies"),
    )
    text = (
        f"{'QLoRA' if method == 'qlora' else 'LoRA'} freezes the base model and trains small adapters beside chosen "
        f"linears: for a linear of `in` inputs and `out` outputs, A is r × in and B is out × r, so r × (in + out) "
        f"parameters (r = {rank}). peft builds them on the meta model, so the count is peft's own."
    )
    sources = [SRC_LORA, SRC_INVENTORY]
    if dora:
        sources.append(SRC_DORA)
    return Explanation(
        "parameters",
        "Trainable parameters",
        text,
        (Calculation("trainable", lift(trainable), "parameters"),),
        tuple(sources),
    )


# ---------------------------------------------------------------------------------------------------------------
# Training: per-row context


@dataclass(frozen=True)
class _Row:
    """One ZeRO stage row: its memory, the GPU it describes and what that GPU holds."""

    memory: StageMemory
    pstage: PipelineStage
    inventory: ParameterInventory
    profile: ActivationProfile | None
    activations: ActivationEstimate | None


def _rows(report: Report) -> list[_Row]:
    training = report.training
    assert training is not None
    setup = training.setup
    stages = pipeline_stages(len(report.inventory.layer_names), setup)
    rows = []
    for memory in training.stages:
        pstage = stages[memory.pipeline_stage or 0]
        local = local_inventory(report.inventory, setup, pstage)
        prof = stage_profile(training.profile, setup, pstage) if training.profile is not None else None
        rows.append(_Row(memory, pstage, local, prof, stage_activations(training.profile, setup, pstage)))
    return rows


def _v(symbol: str, value: Number, meaning: str, source: str | None = None) -> Value:
    """An operand; a 0 stays a plain 0, so the formula drops the term it would multiply."""
    return Var(symbol, value, meaning, source) if value else 0


def _n_meaning(setup: TrainingSetup) -> str:
    if setup.parallel.fsdp == "hybrid_shard":
        return "GPUs sharing the model states (hybrid_shard: within one node)"
    return "GPUs sharing the model states (data parallel" + (" × context parallel)" if setup.parallel.cp > 1 else ")")


def _tensor_counts(params: Sequence[ParameterInfo], setup: TrainingSetup, psi_t: Value, s: str) -> TensorCounts:
    """The optimizer's per-tensor sums as operands (`hfmem.memory.states.count_tensors`)."""
    c = count_tensors(p.shape for p in params if p.trainable)
    return TensorCounts(
        psi_t,
        _v(_sym("Ψ_8", s), c.elements_8bit, f"trained elements in tensors of ≥ {BNB_MIN_8BIT_SIZE:,}"),  # type: ignore[arg-type]
        _v(_sym("B", s), c.blocks_8bit, f"blocks of {BNB_BLOCKSIZE}, Σ⌈n/{BNB_BLOCKSIZE}⌉ per tensor"),  # type: ignore[arg-type]
        _v(_sym("Ψ_32", s), c.elements_32bit, f"trained elements in tensors under {BNB_MIN_8BIT_SIZE:,}"),  # type: ignore[arg-type]
        _v(_sym("ΣR", s), c.factored_rows, "Σ rows of the ≥ 2-D trained tensors (exp_avg_sq_row)"),  # type: ignore[arg-type]
        _v(_sym("ΣC", s), c.factored_cols, "Σ columns of the ≥ 2-D trained tensors (exp_avg_sq_col)"),  # type: ignore[arg-type]
        _v(_sym("Ψ_1D", s), c.elements_1d, "elements of 1-D trained tensors (full exp_avg_sq)"),  # type: ignore[arg-type]
        _v(_sym("Ψ_P", s), c.elements_paged, f"trained elements in tensors of ≥ {BNB_MIN_PAGED_SIZE:,} (paged)"),  # type: ignore[arg-type]
        _v(_sym("n_max", s), c.largest, "elements of the largest trained tensor", SRC_OPTIM_IN_BWD),  # type: ignore[arg-type]
    )


def _frozen_counts(params: Sequence[ParameterInfo], setup: TrainingSetup, s: str) -> FrozenCounts:
    """The frozen tensors' sums as operands (`hfmem.memory.methods.count_frozen`)."""
    c = count_frozen(params, setup.finetune)
    if c.nf4 is None:
        return FrozenCounts(_v(_sym("Ψ_F", s), c.plain_params, "frozen parameters"))  # type: ignore[arg-type]
    q = c.nf4
    nf4 = QuantCounts(
        _v(_sym("Ψ_Q", s), q.elements, "frozen linear weights stored as NF4"),  # type: ignore[arg-type]
        _v(_sym("D", s), q.packed_bytes, "NF4 code bytes, Σ⌈n/2⌉ per tensor", SRC_BNB_4BIT),  # type: ignore[arg-type]
        _v(_sym("T_Q", s), q.tensors, "NF4 tensors (one fp32 offset each)"),  # type: ignore[arg-type]
        blocks=_v(  # type: ignore[arg-type]
            _sym("K", s), q.blocks, f"absmax blocks of {BNB_4BIT_BLOCKSIZE}, Σ⌈n/{BNB_4BIT_BLOCKSIZE}⌉ per tensor"
        ),
        blocks2=_v(_sym("K2", s), q.blocks2, f"second-level blocks of {BNB_DQ_BLOCKSIZE} absmax values"),  # type: ignore[arg-type]
    )
    plain = _v(_sym("Ψ_16", s), c.plain_params, "other frozen parameters (embeddings, norms, LM head)")  # type: ignore[arg-type]
    return FrozenCounts(plain, nf4)


def _state_inputs(
    inv: ParameterInventory, params: list[ParameterInfo] | None, n: int, setup: TrainingSetup, zero: int, s: str
) -> StateInputs:
    """`hfmem.memory.states.StateInputs` of one group as named operands."""
    spec = PRECISION_SPECS[setup.precision]
    tspec = trainable_spec(setup)
    what = " (routed experts)" if s else ""
    if params is None:
        trainable = inv.trainable_params
        frozen_count = 0
    else:
        _, trainable, frozen_count, _ = split_group(inv, params, setup)
    psi_t = _v(_sym("Ψ_T", s), trainable, f"trainable parameters on this GPU before sharding{what}")
    w_base = Var(
        "w_B" if spec.weight_bytes != tspec.weight_bytes else "w",
        spec.weight_bytes,
        f"bytes per frozen base weight ({_DTYPE_WORD.get(spec.weight_bytes, '')})",
        SRC_ZERO,
    )
    frozen: Value = 0
    if params is not None and frozen_count:
        frozen = frozen_bytes(setup.finetune, _frozen_counts(params, setup, s), w_base)
    w_source = SRC_PEFT_FP32 if setup.finetune.uses_peft else SRC_TM101 if spec.weight_bytes == 4 else SRC_ZERO
    states: Value = 0
    paged: Value = 0
    largest: Value = 0
    if zero == 0 or setup.optimizer_in_backward:
        counts = _tensor_counts(params, setup, psi_t, s) if params is not None else _flat_counts(inv, psi_t, s)
        largest = counts.largest
        if zero == 0:
            states = tensor_state_bytes(setup.optimizer, counts, _state_var(setup))
            paged = paged_state_bytes(setup.optimizer, counts)
    return StateInputs(
        psi_t,
        _v(_sym("Ψ_F", s), frozen_count, "frozen parameters"),
        frozen,
        Var(_sym("N", s), n, _n_meaning(setup) if not s else "GPUs sharing the routed experts' states (N / ep)"),
        Var("w", tspec.weight_bytes, f"bytes per trained weight ({_DTYPE_WORD.get(tspec.weight_bytes, '')})", w_source),
        Var(
            "m",
            tspec.master_bytes,
            "bytes per fp32 master weight"
            if tspec.master_bytes
            else "bytes of master copy (none: the weights are their own)",
            SRC_ZERO,
        ),
        Var("g", tspec.grad_bytes, f"bytes per gradient ({_DTYPE_WORD.get(tspec.grad_bytes, '')})", w_source),
        _state_var(setup),
        w_base,
        states,
        Var("gpus", setup.gpus_per_node, "GPUs per node"),
        paged,
        largest,
    )


def _state_var(setup: TrainingSetup) -> Var:
    tspec = trainable_spec(setup)
    source = SRC_PEFT_FP32 if setup.finetune.uses_peft else SRC_TORCH_STATES
    return Var("s", tspec.state_bytes, "bytes per optimizer-state element", source)


def _flat_counts(inv: ParameterInventory, psi_t: Value, s: str) -> TensorCounts:
    """A --params plan's one flat tensor of Ψ_T elements, as operands."""
    c = count_tensors(((inv.trainable_params,),))
    blocks = _v(_sym("B", s), c.blocks_8bit, f"blocks of {BNB_BLOCKSIZE}, ⌈Ψ_T / {BNB_BLOCKSIZE}⌉")
    return TensorCounts(
        psi_t,
        psi_t if c.elements_8bit else 0,
        blocks,
        psi_t if c.elements_32bit else 0,
        elements_1d=psi_t,
        elements_paged=psi_t if c.elements_paged else 0,
        largest=psi_t,
    )


def _states_by_row(report: Report, rows: list[_Row]) -> list[StateBytes]:
    """Each row's model states as expressions: `hfmem.memory.states.group_state_bytes` (or DeepSpeed's estimator)
    called with named operands; each evaluates to the report's number."""
    training = report.training
    assert training is not None
    setup = training.setup
    out = []
    for row in rows:
        zero = row.memory.zero_stage
        inv = row.inventory
        if setup.accounting == "deepspeed":
            out.append(
                deepspeed_state_bytes(
                    setup,
                    zero,
                    Var("Ψ", inv.total_params, "parameters"),
                    Var("N", setup.sharding_degree, "GPUs sharing the model states"),
                    Var(
                        "LL", inv.largest_module_params, f"parameters of the largest module ({inv.largest_module_name})"
                    ),
                    Var("gpus", setup.gpus_per_node, "GPUs per node"),
                    Var("nodes", setup.nodes, "nodes"),
                )
            )
            continue
        groups = state_groups(inv, setup)
        suffixes = ["", "E"] if len(groups) == 2 else [""]
        out.append(
            add_state_bytes(
                group_state_bytes(setup, zero, _state_inputs(inv, params, n, setup, zero, s))
                for (params, n), s in zip(groups, suffixes, strict=True)
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training: texts


def _precision_words(setup: TrainingSetup) -> str:
    """The dtype of the working weights under ``setup.precision`` (`PRECISION_SPECS`), in words."""
    name = PRECISION_SPECS[setup.precision].weights.name
    return name + " (TF32 changes only the matmul arithmetic)" if setup.precision == "tf32" else name


def _layout_text(setup: TrainingSetup, row: _Row) -> str:
    par = setup.parallel
    parts = []
    if par.tp > 1:
        parts.append(f"tensor parallelism splits the linears and embeddings {par.tp} ways")
    if par.pp > 1:
        first, last = (min(row.pstage.layers), max(row.pstage.layers)) if row.pstage.layers else (0, -1)
        holds = f" and the {' and '.join(row.pstage.holds)}" if row.pstage.holds else ""
        parts.append(f"this is pipeline stage {row.pstage.index} (layers {first}–{last}{holds}), the busiest GPU")
    if par.ep > 1:
        parts.append(f"expert parallelism gives each GPU 1/{par.ep} of the routed experts")
    return ("Ψ_T counts what one GPU holds: " + "; ".join(parts) + ". ") if parts else ""


def _model_state_explanations(report: Report, rows: list[_Row], states: list[StateBytes]) -> list[Explanation]:
    training = report.training
    assert training is not None
    setup = training.setup
    tspec = trainable_spec(setup)
    method = setup.method
    deepspeed = setup.accounting == "deepspeed"
    layout = _layout_text(setup, rows[0])
    fsdp = setup.parallel.fsdp
    sharder = f"FSDP ({fsdp})" if fsdp else "ZeRO"
    out: list[Explanation] = []

    def calcs(key: str) -> tuple[Calculation, ...]:
        values = [(r.memory.zero_stage, getattr(s, key)) for r, s in zip(rows, states, strict=True)]
        if key == "gradients":  # those live at the row's peak moment (`phase_gradient_bytes`)
            values = [
                (zero, phase_gradient_bytes(setup, zero, r.memory.peak_phase or "optimizer_step", value))
                for r, (zero, value) in zip(rows, values, strict=True)
            ]
        return tuple(_merge_stages(values, setup))

    if deepspeed:
        text = (
            "DeepSpeed's own estimator (--accounting deepspeed) counts 2 bytes of 16-bit weights per parameter on "
            "every GPU (ZeRO-2) plus 18 bytes per parameter divided over the N GPUs; at ZeRO-3 the weights are "
            "sharded too and 4 bytes per parameter of the largest module (LL) are added for the layer being "
            "gathered. hfmem splits the 18 as 4 master + 8 optimizer + the rest (16-bit and fp32 gradients) so the "
            "rows compare with its own accounting; int() rounds each part down, as the estimator does."
        )
        sources = (SRC_DS_EST2, SRC_DS_EST3)
        texts = {
            "weights": text,
            "master": "4 of the estimator's 18 bytes per parameter: the fp32 master partition, ⌊4Ψ / N⌋ "
            "(0 with --offload: it is in CPU RAM).",
            "gradients": "The rest of the 18 bytes: the 16-bit and fp32 gradient partitions (2 + 4 in the "
            "estimator's comment). At ZeRO-3 the 18 also covers the 16-bit weight shard, shown under Weights, so "
            "it is subtracted here, and the gathered largest module's 16-bit gradients (2 × LL) are added.",
            "optimizer": "8 of the 18 bytes per parameter: Adam's two fp32 moments, ⌊8Ψ / N⌋ (0 with --offload).",
        }
        for key, name in (
            ("weights", "Weights"),
            ("master", "Master weights"),
            ("gradients", "Gradients"),
            ("optimizer", "Optimizer states"),
        ):
            out.append(Explanation("training", name, texts[key], calcs(key), sources))
        return out

    # Weights
    if method == "full":
        what = (
            f"The copy of the weights the GPU computes with, in {_precision_words(setup)}: w = {tspec.weight_bytes} "
            "bytes per parameter. "
        )
    elif method == "freeze":
        what = (
            f"Every weight in {_precision_words(setup)} (w = {tspec.weight_bytes} bytes): F = w × Ψ_F for the frozen "
            "ones plus w × Ψ_T for the trained ones. "
        )
    elif method == "lora":
        what = (
            f"The frozen base model stays in {_precision_words(setup)} (F = w_B × Ψ_F) and the adapters are fp32 "
            f"(w = {tspec.weight_bytes} bytes each), as peft keeps them. "
        )
    else:
        what = (
            "The frozen base model is QLoRA's: its linear weights are NF4, two 4-bit codes per byte plus one fp32 "
            "absmax per block of 64 values"
            + (
                " (double quantization: the absmax values themselves in 8 bits, one byte per block, with one fp32 "
                "scale per 256 blocks and one fp32 offset per tensor)"
                if setup.finetune.double_quant
                else ""
            )
            + "; embeddings, norms and the LM head stay 16-bit (2 bytes). The frozen terms below are summed tensor by "
            f"tensor. The adapters are fp32 (w = {tspec.weight_bytes}). "
        )
    if fsdp:
        shard_words = (
            f"FSDP {fsdp} keeps the weights sharded N ways like ZeRO-3"
            if fsdp in ("full_shard", "hybrid_shard")
            else f"FSDP {fsdp} keeps a full copy of the weights on every GPU"
        )
        what += shard_words + "; the unit being computed is gathered whole (an overhead line below). "
    else:
        what += (
            "ZeRO-0, 1 and 2 keep a full copy on every GPU; ZeRO-3 cuts it into N equal shards, ⌈Ψ_T / N⌉ elements "
            "each, and gathers a layer's shards just before it runs (that gathered copy is an overhead line below). "
        )
    if setup.offload == "optimizer+params":
        what += "With --offload optimizer+params the shard lives in CPU RAM between uses, so 0 stays on the GPU. "
    sources = [SRC_ZERO, SRC_ZERO_STAGES]
    if setup.precision in ("fp32", "tf32"):
        sources.append(SRC_TM101)
    if setup.finetune.uses_peft:
        sources.append(SRC_PEFT_FP32)
    if method == "qlora":
        sources += [SRC_QLORA, SRC_BNB_4BIT]
    out.append(Explanation("training", "Weights", (layout + what).strip(), calcs("weights"), tuple(sources)))

    # Master weights
    if tspec.master_bytes:
        text = (
            "Mixed precision updates an fp32 copy of every trained weight (m = 4 bytes): 16-bit weights are too "
            "coarse to accumulate small updates, so the optimizer steps the fp32 copy and casts it back. "
            f"{sharder} stage 1 and up keeps only this GPU's 1/N of it."
        )
    elif setup.finetune.uses_peft:
        text = "None: the fp32 adapters are their own master copy (m = 0)."
    else:
        text = f"None: in {setup.precision} the optimizer updates the weights themselves (m = 0)."
    if setup.offload != "none":
        text += " With --offload it lives in CPU RAM (see CPU RAM below): 0 on the GPU."
    out.append(Explanation("training", "Master weights", text, calcs("master"), (SRC_ZERO, SRC_ZERO_STAGES)))

    # Gradients
    text = (
        f"One gradient per trained weight, in the trained tensors' dtype (g = {tspec.grad_bytes} bytes). Frozen "
        "weights have none. "
        + (
            f"{sharder} stage 2 and 3 keep only this GPU's 1/N after each reduce-scatter; stages 0 and 1 hold all of "
            "them until the step. "
            if not fsdp
            else ("FSDP reduce-scatters each unit's gradients, keeping 1/N. " if fsdp != "no_shard" else "")
        )
    )
    if any(not gradients_persist(setup, r.memory.zero_stage) for r in rows):
        text += (
            "With one micro-batch per step (--grad-accumulation 1) the training loop frees them after every step "
            "(zero_grad(set_to_none=True): torch's default, the HF Trainer, torchtune; DeepSpeed ZeRO-1/2 at its "
            "step), so none exist in forward, none yet as backward starts at the loss (autograd runs the loss's "
            "nodes before the first parameter gradient), and all of them at the optimizer step; a row whose peak is "
            "before the step counts 0 × grads. "
        )
    if any(gradients_persist(setup, r.memory.zero_stage) for r in rows) and not setup.optimizer_in_backward:
        text += (
            "They are live at every moment where they persist through the step: gradient accumulation (> 1), a "
            "pipeline schedule's micro-batches, DeepSpeed ZeRO-3's flat gradient buffer (allocated once at init)."
        )
    if setup.offload != "none":
        text += " With --offload, stages 2 and 3 stream the reduced partitions to the CPU."
    grad_sources: tuple[str, ...] = (SRC_ZERO, SRC_ZERO_STAGES, SRC_GRAD_FREED, SRC_GRAD_ORDER, SRC_GRAD_PERSIST)
    if setup.optimizer_in_backward:
        text = (
            f"One gradient per trained weight (g = {tspec.grad_bytes} bytes), but with --optimizer-in-backward each "
            "parameter steps as soon as its gradient is complete and the gradient is freed (set to None) right "
            "after, so one is live at a time: the largest, n_max elements"
            + (" (its shard under FSDP)." if fsdp and fsdp != "no_shard" else ".")
        )
        grad_sources = (SRC_OPTIM_IN_BWD,)
    out.append(Explanation("training", "Gradients", text, calcs("gradients"), grad_sources))

    # Optimizer states
    opt = setup.optimizer
    opt_text = {
        "adamw": f"AdamW keeps two moments per trained parameter (exp_avg and exp_avg_sq), s = {tspec.state_bytes} "
        "bytes each"
        + (
            ": 8 bytes, which with the 4-byte master is the ZeRO paper's K = 12"
            if tspec.state_bytes == 4 and tspec.master_bytes
            else (", in the parameters' own dtype" if tspec.state_bytes == 2 else "")
        )
        + ".",
        "adamw-8bit": "bitsandbytes' 8-bit AdamW keeps both moments as one byte per element plus one fp32 absmax per "
        f"block of {BNB_BLOCKSIZE} elements: 2 × (n + 4 × ⌈n / {BNB_BLOCKSIZE}⌉) bytes for a tensor of n elements; "
        f"tensors under {BNB_MIN_8BIT_SIZE:,} elements keep fp32 moments (8 bytes each).",
        "sgd": "Plain SGD keeps no state.",
        "sgd-momentum": f"SGD with momentum keeps one momentum buffer per trained parameter (s = {tspec.state_bytes}).",
        "adafactor": "Adafactor (beta1=None) keeps, for each ≥ 2-D tensor, fp32 row and column second-moment "
        "factors (rows + columns values instead of rows × columns), and a full fp32 second moment for 1-D tensors.",
        "lion": f"Lion keeps one momentum per trained parameter (s = {tspec.state_bytes}).",
        "paged-adamw": "bitsandbytes' paged 32-bit AdamW keeps both moments in fp32 (8 bytes per element, whatever "
        f"the parameter dtype); those of tensors with ≥ {BNB_MIN_PAGED_SIZE:,} elements live in CUDA managed memory, "
        "outside PyTorch's allocator statistics (the report's paged line).",
        "paged-adamw-8bit": "bitsandbytes' paged 8-bit AdamW keeps both moments as one byte per element plus one fp32 "
        f"absmax per block of {BNB_BLOCKSIZE}; the moments of tensors with ≥ {BNB_MIN_PAGED_SIZE:,} elements live in "
        "CUDA managed memory, outside PyTorch's allocator statistics (the report's paged line); the absmax and "
        f"tensors under {BNB_MIN_8BIT_SIZE:,} elements (fp32 moments) stay in the allocator.",
    }[opt]
    if not fsdp:
        opt_text += (
            " ZeRO stage 1 and up shards them: DeepSpeed gives each GPU's optimizer one flat 1-D partition of "
            "⌈Ψ_T / N⌉ elements"
            + (
                " (so 8-bit Adam has no small-tensor exception there and Adafactor cannot factor it)"
                if opt in ("adamw-8bit", "paged-adamw-8bit", "adafactor")
                else ""
            )
            + "."
        )
    else:
        opt_text += " FSDP shards them with the parameters they belong to." if fsdp != "no_shard" else ""
    if setup.offload != "none":
        opt_text += " With --offload they live in CPU RAM: 0 on the GPU."
    opt_sources = {
        "adamw": [SRC_ADAMW, SRC_TORCH_STATES, SRC_ZERO],
        "adamw-8bit": [SRC_BNB_8BIT],
        "sgd": [SRC_SGD],
        "sgd-momentum": [SRC_SGD, SRC_TORCH_STATES],
        "adafactor": [SRC_ADAFACTOR],
        "lion": [SRC_LION, SRC_TORCH_STATES],
        "paged-adamw": [SRC_ADAMW, SRC_BNB_PAGED],
        "paged-adamw-8bit": [SRC_BNB_8BIT, SRC_BNB_PAGED],
    }[opt]
    out.append(
        Explanation("training", "Optimizer states", opt_text, calcs("optimizer"), tuple(opt_sources + [SRC_DS_FLAT]))
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training: activations and logits


def _symbolic_profile(prof: ActivationProfile) -> ActivationProfile:
    """The measured profile with its numbers as named operands: one set of symbols per group of alike layers (S, I,
    T; the fused-kernel emulation's S_f, T_f where it differs), O and O_a outside the layers, G and Λ."""
    keys = [
        (
            a.saved_bytes,
            a.input_bytes,
            a.tp_split_bytes,
            b.saved_bytes,
            b.tp_split_bytes,
            a.ops_saved_bytes,
            a.ops_reused_bytes,
            a.ops_tp_split_bytes,
        )
        for a, b in zip(prof.layers, prof.fused_layers, strict=True)
    ]
    groups = _groups(keys)
    symbols: dict[tuple[Any, ...], tuple[LayerProfile, LayerProfile]] = {}
    for k, (key, count) in enumerate(groups, start=1):
        x = "" if len(groups) == 1 else str(k)
        how_many = f" (group {k}: {_plural(count, 'layer')} of the model)" if x else ""
        saved = _v(_sym("S", x), key[0], f"bytes one layer saves for backward (measured){how_many}", SRC_TRACE)
        inputs = _v(_sym("I", x), key[1], f"bytes of one layer's inputs (measured){how_many}", SRC_TRACE)
        split = _v(_sym("T", x), key[2], "the part of S tensor parallelism splits (measured)", SRC_TP_ACT)
        ops = (
            _v(_sym("P", x), key[5], "outputs op-level checkpointing saves in one layer (measured)", SRC_OPS_SAC),
            _v(_sym("P_r", x), key[6], "of S, the part the recompute takes from those outputs (measured)", SRC_OPS_SAC),
            _v(_sym("T_p", x), key[7], "the part of P tensor parallelism splits", SRC_TP_ACT),
        )
        layer = LayerProfile("", saved, inputs, split, *ops)  # type: ignore[arg-type]
        fused = layer
        if (key[3], key[4]) != (key[0], key[2]):
            fused_saved = _v(_sym("S_f", x), key[3], "what it saves with a fused attention kernel (measured)", SRC_CKPT)
            fused_split = _v(_sym("T_f", x), key[4], "the part of S_f tensor parallelism splits", SRC_TP_ACT)
            fused = LayerProfile("", fused_saved, inputs, fused_split, *ops)  # type: ignore[arg-type]
        symbols[key] = (layer, fused)
    other = _v("O", prof.other_bytes, "bytes saved outside the layers (measured)", SRC_TRACE)
    after = _v("O_a", prof.other_after_bytes, "of O, saved after the layers: final norm, LM head input", SRC_TRACE)
    return replace(
        prof,
        layers=tuple(symbols[k][0] for k in keys),
        fused_layers=tuple(symbols[k][1] for k in keys),
        other_bytes=other,  # type: ignore[arg-type]
        other_after_bytes=after,  # type: ignore[arg-type]
        logits_bytes=_v("G", prof.logits_bytes, "the logits tensor the model returns (measured)", SRC_TRACE),  # type: ignore[arg-type]
        logits_saved_bytes=_v("Λ", prof.logits_saved_bytes, "the loss's saved fp32 log-softmax (measured)", SRC_LOSS),  # type: ignore[arg-type]
        hidden_size=_v("h", prof.hidden_size, "the LM head's input features (the model's)", SRC_TRACE),  # type: ignore[arg-type]
        head_saved_bytes=_v("H", prof.head_saved_bytes, "what the LM head saves: its input (measured)", SRC_TRACE),  # type: ignore[arg-type]
    )


def _row_activations(report: Report, row: _Row) -> tuple[Value, Value]:
    """(activations, logits) live at the row's peak: `hfmem.memory.peak.stage_activations` and `phase_bytes` called
    with the measured profile as operands."""
    return phase_bytes(_row_estimate(report, row), row.memory.peak_phase or "forward")


def _row_estimate(report: Report, row: _Row) -> ActivationEstimate | None:
    """`hfmem.memory.peak.stage_activations` of the row's pipeline stage, with the measured profile as operands."""
    training = report.training
    assert training is not None and training.profile is not None
    setup = training.setup
    par = setup.parallel
    factor = in_flight_microbatches(setup, row.pstage.index)
    estimate = stage_activations(
        _symbolic_profile(training.profile),
        setup,
        row.pstage,
        t=Var("t", par.tp, "tensor-parallel degree", SRC_TP_ACT) if par.tp > 1 else None,
        factor=Var("f", factor, "micro-batches of activations in flight on this stage") if factor != 1 else None,
    )
    return estimate


def _activation_explanations(report: Report, rows: list[_Row]) -> list[Explanation]:
    training = report.training
    assert training is not None
    setup = training.setup
    prof = training.profile
    if prof is None:
        zero = [(r.memory.zero_stage, Const(0)) for r in rows]
        text = (
            f"Not measured: {training.unmeasured.rstrip('.')}. Counted as 0 here, so the peak below is a lower bound."
            if training.unmeasured is not None
            else "A --params plan has no model to run, so activations and logits are not included (0)."
        )
        return [
            Explanation("training", "Activations", text, tuple(_merge_stages(zero, setup))),
            Explanation("training", "Logits", text, tuple(_merge_stages(zero, setup))),
        ]
    par = setup.parallel
    ckpt = setup.grad_checkpointing
    act_rows: list[tuple[int, Value]] = []
    logit_rows: list[tuple[int, Value]] = []
    for row in rows:
        acts, logits = _row_activations(report, row)
        act_rows.append((row.memory.zero_stage, acts))
        logit_rows.append((row.memory.zero_stage, logits))
    seq = training.seq_len or prof.seq_len
    sizes = [layer.saved_bytes for layer in prof.layers]
    common = typical_layer_saved_bytes(prof)
    per_token = f"{bytes_per_token(common, profile_tokens(prof)):,.0f} bytes per token"
    if len(set(sizes)) <= 1:
        measured = f"each of the {len(sizes)} layers saves S = {common:,} bytes ({per_token})"
    else:
        measured = (
            f"most of the {len(sizes)} layers save {common:,} bytes each ({per_token}); the groups below differ "
            "(a tensor shared by every layer, such as the rotary tables or the attention mask, is counted at the "
            "first layer that saves it)"
        )
    text = (
        "Activations are the tensors the forward pass keeps for the backward pass. hfmem does not use a closed "
        "formula for them: it runs the model's own forward on the meta device (shapes, no memory) at the planned "
        f"micro-batch, b = {prof.batch_size} × s = {seq:,} tokens"
        + (f" (this GPU's 1/{par.cp} of the sequence: {prof.seq_len:,})" if par.cp > 1 else "")
        + f", in {prof.dtype}, with {prof.attn} attention, and records every tensor autograd saves, layer by layer. "
        f"Measured: {measured}, and O = {prof.other_bytes:,} bytes "
        "are saved outside the layers (token ids, the final norm, the LM head's input). "
    )
    if ckpt == "full":
        text += (
            "With full gradient checkpointing only each layer's input I is kept; backward re-runs one layer at a "
            "time, so the largest layer's saved bytes R come back for a while (added when that moment is the peak). "
        )
    elif ckpt == "selective":
        text += (
            "Selective checkpointing recomputes the attention core: what stays is what a fused kernel keeps, and with "
            "eager attention one layer's score matrices come back during backward (with sdpa/flash it saves nothing "
            "extra: the fused kernel never keeps the scores). "
        )
    elif ckpt == "ops":
        text += (
            "Op-level selective checkpointing (torchtitan) keeps each layer's input I and the outputs P of the "
            "operators its policy saves (every matmul but every second mm, the attention kernel's output and "
            "log-sum-exp), measured per layer; backward re-runs one layer at a time, allocating all it saves but the "
            "cached outputs it reuses, S − P_r. "
        )
    else:
        text += "No checkpointing: every layer's saved tensors stay until backward reaches that layer. "
    if ckpt != "none" and setup.checkpoint_every > 1:
        text += (
            f"Only one layer in {setup.checkpoint_every} is checkpointed (layers 0, {setup.checkpoint_every}, "
            f"{2 * setup.checkpoint_every}…, as transformers' every_n_layers counts); the others keep S. "
        )
    if setup.activation_offload:
        text += (
            "With --activation-offload the tensors saved in forward move to CPU RAM (torchtune's "
            "OffloadActivations), except the LM head's input H"
            + (
                " and the outputs op-level checkpointing caches (they are not saved through autograd's hooks)"
                if ckpt == "ops"
                else ""
            )
            + "; up to 5 tensors (5 × the largest layer input) are still being copied when forward ends, and in "
            "backward one layer's saved tensors come back while it runs. "
        )
    if par.tp > 1:
        text += (
            f"Tensor parallelism (t = {par.tp}) splits the part T of each layer's bytes that lies between the "
            "column- and row-parallel linears (measured separately); "
            + (
                "sequence parallelism splits the rest too, so every term is divided by t. "
                if par.sp
                else "the rest (norms, the linears' inputs) is replicated: S − T + ⌈T / t⌉. "
            )
        )
    if par.pp > 1:
        text += (
            f"Pipeline parallelism: the GPU holds only its stage's layers and keeps f micro-batches of their "
            f"activations in flight ({par.pp_schedule} schedule). "
        )
    text += "Activations are freed before the optimizer step, so a row whose peak is the step counts 0."
    sources = [SRC_TRACE]
    if ckpt != "none":
        sources.append(SRC_OPS_SAC if ckpt == "ops" else SRC_CKPT)
        if setup.checkpoint_every > 1:
            sources.append(SRC_CKPT_EVERY)
    if setup.activation_offload:
        sources.append(SRC_ACT_OFFLOAD)
    if par.tp > 1:
        sources.append(SRC_TP_ACT)
    if par.pp > 1:
        sources.append(SRC_PP_INTERLEAVED if par.pp_schedule == "interleaved" else SRC_PP_1F1B)
    out = [Explanation("training", "Activations", text, tuple(_merge_stages(act_rows, setup)), tuple(sources))]

    vocab = prof.vocab_size
    g_bytes = prof.logits_bytes
    loss_sources = {"hf": (SRC_LOSS, SRC_TRACE), "chunked": (SRC_CHUNKED_LOSS, SRC_LOSS, SRC_TRACE)}
    if prof.head in ("lm", "seq2seq-lm"):
        elt = profile_logit_element_bytes(prof)
        tokens = "b × t × V" if prof.target_len is not None else "b × s × V"
        length = prof.target_len if prof.target_len is not None else prof.seq_len
        shape_note = f" (= {tokens} × {elt} = {prof.batch_size} × {length:,} × {vocab:,} × {elt})" if elt else ""
        text = (
            f"The model's output scores, one per vocabulary entry per token: G = {g_bytes:,} bytes{shape_note}. "
            + _loss_text(setup, prof)
            + (
                f" With tensor parallelism the LM head and loss are vocab-parallel (÷ t = {par.tp})."
                if par.tp > 1
                else ""
            )
            + (" With pipeline parallelism they live on the last stage only." if par.pp > 1 else "")
        )
        sources = loss_sources.get(setup.loss, (SRC_FUSED_LOSS, SRC_TRACE))
    else:
        shape = " × ".join(f"{n:,}" for n in prof.logits_shape) or "nothing"
        text = (
            f"The {prof.head.replace('-', ' ')} head returns a few scores per sequence or token, not one per "
            f"vocabulary entry: G = {g_bytes:,} bytes, a tensor of {shape} ({prof.dtype}), live from the loss until "
            "backward ends. Its loss keeps tensors of the same small size, counted with the activations (Λ = 0 here)."
            + (" With pipeline parallelism they live on the last stage only." if par.pp > 1 else "")
        )
        sources = (SRC_LOSS, SRC_TRACE)
    out.append(Explanation("training", "Logits", text, tuple(_merge_stages(logit_rows, setup)), sources))
    return out


def _loss_text(setup: TrainingSetup, prof: ActivationProfile) -> str:
    """How the vocabulary-sized tensors live under ``--loss``, in words (the formulas are in the rows)."""
    upcast = prof.logits_saved_bytes > prof.logits_bytes
    if setup.loss == "chunked":
        return (
            f"With --loss chunked (torchtune's chunked cross-entropy, N = {setup.loss_chunks} chunks) every chunk "
            "keeps its fp32 log-softmax (Λ in all), but only one chunk is upcast at a time: G + Λ + ⌈Λ / N⌉ at the "
            "last chunk in forward. The recipe deletes the logits before backward, where one chunk's two fp32 "
            "gradients exist at a time: Λ + 2 × ⌈Λ / N⌉. Only the moment that is the peak is counted."
        )
    if setup.loss == "fused":
        return (
            "With --loss fused (Liger's fused linear + cross-entropy) the full logits never exist: the kernel "
            "computes the logits of C tokens at a time and their gradients in the forward, and keeps the gradient of "
            "the LM head's input (T × h × e) and, when the head is trained, of its weight (V × h × e) until backward; "
            "inside the forward one chunk's logits (C × V × e) and a 4-byte loss per token also exist. The head's "
            "input H is not saved. Cut Cross-Entropy keeps less (a log-sum-exp per token), so this bounds it."
        )
    return (
        (
            f"The loss upcasts them to fp32 and cross_entropy keeps its fp32 log-softmax, Λ = "
            f"{prof.logits_saved_bytes:,} bytes. At the loss in forward, G, the fp32 copy and Λ are live (G + 2Λ); "
            if upcast
            else f"cross_entropy keeps its log-softmax, Λ = {prof.logits_saved_bytes:,} bytes. At the loss in forward "
            "G and Λ are live (G + Λ); "
        )
        + "when backward starts, the loss's gradient and the gradient through the log-softmax are added (G + 3Λ). "
        + "Only the moment that is the peak is counted; when a checkpointed layer's recompute is larger, the "
        "vocabulary-sized tensors are already gone (0)."
    )


# ---------------------------------------------------------------------------------------------------------------
# Training: overheads and the peak


#: Prose of each overhead line, by its key (`hfmem.types.OverheadItem`).
_OVERHEAD_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "cuda_context": (
        "Memory the CUDA driver and cuBLAS take on every GPU before PyTorch allocates anything; PyTorch's own "
        "counters (memory_allocated) do not see it.",
        (SRC_CUDA,),
    ),
    "ddp_gradient_buckets": (
        "ZeRO-0 on several GPUs is plain DistributedDataParallel, which copies the gradients into its all-reduce "
        "buckets: a second copy of the gradients.",
        (SRC_DDP,),
    ),
    "deepspeed_reduce_bucket": (
        "ZeRO ≥ 1 reduces gradients through one bucket of reduce_bucket_size elements (5e8 by default), in the "
        "gradients' dtype, capped by the gradients there are.",
        (SRC_DS_CONFIG,),
    ),
    "zero3_gathered_params": (
        "ZeRO-3 gathers a whole module's weights just before it runs and frees them after: the largest module LL at "
        "16 bits (with its 16-bit gradients in backward for full fine-tuning), plus the next parameters prefetched, "
        "stage3_prefetch_bucket_size (5e7) elements.",
        (SRC_DS_GATHER, SRC_DS_CONFIG),
    ),
    "fsdp_unsharded_unit": (
        "FSDP gathers one unit (one transformer layer, or the root: embeddings, final norm and LM head, if larger) "
        "whole before computing it, and prefetches the next: 2 units of U parameters at 16 bits. Under QLoRA the "
        "unit's NF4 weights are gathered as FSDP-QLoRA stores them, packed 4-bit codes (B_UQ bytes for U_Q "
        "weights), not at 16 bits.",
        (SRC_FSDP, SRC_FSDP_QLORA),
    ),
    "fsdp_unsharded_gradients": (
        "In backward, one unit's gradients exist unsharded until its reduce-scatter.",
        (SRC_FSDP,),
    ),
    "fsdp_pp_unsharded_stage": (
        "Under a pipeline schedule FSDP keeps the stage's parameters gathered from its first forward until the "
        "step (torchtitan: reshard_after_forward = not pp_enabled; torch pipelining: no reshard after each "
        "micro-batch's backward): all Ψ parameters of the stage at 16 bits (QLoRA: its NF4 weights as stored, "
        "packed 4-bit codes).",
        (SRC_FSDP_PP, SRC_FSDP_QLORA),
    ),
    "fsdp_pp_unsharded_gradients": (
        "Under a pipeline schedule FSDP accumulates the stage's gradients unsharded over the micro-batches, in its "
        "fp32 reduce dtype, and reduce-scatters them once after the last.",
        (SRC_FSDP_PP,),
    ),
    "fsdp_replicated_quant_state": (
        "FSDP-QLoRA: the NF4 weights' quant state (absmax) is not a parameter, so FSDP neither shards nor gathers "
        "it; every GPU keeps all of it, Q, where the weights line counts ⌈Q / N⌉.",
        (SRC_FSDP_QLORA,),
    ),
    "qlora_dequantized_weight": (
        "bitsandbytes dequantizes a 4-bit weight to 16 bits for each matmul; the largest such weight, n_max "
        "elements × 2 bytes, is live while it runs.",
        (SRC_BNB_MATMUL,),
    ),
    "fp32_gradient_partition": (
        "At the optimizer step DeepSpeed converts this GPU's gradient partition to fp32 (4 bytes per element); "
        "ZeRO-3 steps over sub-groups of at most sub_group_size (1e9) elements at a time.",
        (SRC_DS_FP32_GRAD, SRC_DS_CONFIG),
    ),
    "param_allgather_bucket": (
        "After the step, ZeRO-1/2 all-gather the updated 16-bit weights through one bucket of allgather_bucket_size "
        "(5e8) elements.",
        (SRC_DS_CONFIG,),
    ),
    "adafactor_fp32_upcast": (
        "Adafactor's step upcasts each 16-bit parameter (or, under ZeRO, the flat partition) to fp32, one at a time.",
        (SRC_ADAFACTOR,),
    ),
    "adamw_foreach_temporary": (
        "torch's foreach AdamW (its CUDA default, --optimizer-impl foreach) takes the square root of every exp_avg_sq "
        "of the group at once (torch._foreach_sqrt): one state-sized tensor per parameter, all live until step() "
        "returns. Under FSDP each GPU steps its shards; with the optimizer in backward the list is one parameter. "
        "--optimizer-impl fused (torch._fused_adamw_, the HF Trainer's adamw_torch_fused) allocates none.",
        (SRC_ADAM_FOREACH, SRC_ADAM_FUSED),
    ),
    "adamw_loop_temporary": (
        "torch's for-loop AdamW (foreach=False) computes denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps) "
        "one parameter at a time: the sqrt() result and the division's coexist, 2 × the largest parameter's state.",
        (SRC_ADAM_LOOP,),
    ),
    "autocast_weight_cache": (
        "Under torch.autocast every trainable fp32 weight a 16-bit op uses (the linears, their biases) is cast once "
        "per forward and the copy is cached until autocast exits at the end of the forward. With checkpointed "
        "layers nothing else holds those copies, so they are counted here at the loss (without checkpointing the "
        "linears save them for backward and the traced activations hold them).",
        (SRC_AUTOCAST_CACHE, SRC_AUTOCAST_LISTS),
    ),
}


def _overhead_exprs(row: _Row, setup: TrainingSetup, activ: Expr, logits: Expr) -> dict[str, Value]:
    """Every overhead line of one row as an expression: `hfmem.memory.peak.overhead_terms` (and
    `fragmentation_bytes`) called with named operands, keyed like the report's items."""
    memory = row.memory
    inv = row.inventory
    spec = PRECISION_SPECS[setup.precision]
    tspec = trainable_spec(setup)
    settings = setup.overheads
    x = overhead_inputs(inv, setup)
    w16_symbol = "w" if spec.weight_bytes == tspec.weight_bytes else "w_B"
    operands = OverheadInputs(
        Var("C", x.cuda_context, "CUDA context + cuBLAS workspace per GPU", SRC_CUDA),
        Var("Ψ_T", x.trainable, "trainable parameters on this GPU"),
        Var("Ψ", x.total, "parameters on this GPU before sharding"),
        Var("N", x.n, "GPUs sharing the model states"),
        Var("g", x.grad_bytes, "bytes per gradient"),
        Var("w", x.weight_bytes, "bytes per trained weight"),
        Var(w16_symbol, x.base_weight_bytes, "bytes per working weight"),
        Var("g_B", x.base_grad_bytes, "bytes per 16-bit gradient"),
        Var("LL", x.largest_module, f"parameters of the largest module ({inv.largest_module_name})", SRC_DS_GATHER),
        Var("U", x.unit, "parameters of the largest FSDP unit"),
        Var("U_T", x.unit_trainable, "trainable parameters of the largest FSDP unit"),
        Var("n_max", x.nf4_largest, "elements of the largest NF4 weight"),
        Var("n_max", x.largest_trained, "elements of the largest trained tensor"),
        Var("R_b", x.reduce_bucket, "reduce_bucket_size (elements)", SRC_DS_CONFIG),
        Var("A_b", x.allgather_bucket, "allgather_bucket_size (elements)", SRC_DS_CONFIG),
        Var("P_b", x.prefetch_bucket, "stage3_prefetch_bucket_size (elements)", SRC_DS_CONFIG),
        Var("SG", x.sub_group, "sub_group_size (elements)", SRC_DS_CONFIG),
        Var("s", x.state_bytes, "bytes per optimizer-state element"),
        Var("n_max", x.largest_tensor, "elements of the largest trained tensor"),
        Var("Ψ_A", x.cast_params, "trainable layer elements autocast casts to 16-bit", SRC_AUTOCAST_CACHE),
        Var("a", x.cast_bytes, "bytes per autocast element", SRC_AUTOCAST_LISTS),
        Var("U_Q", x.unit_nf4, "NF4 weights of the largest FSDP unit"),
        Var("B_UQ", x.unit_nf4_packed, "packed bytes of those NF4 weights (⌈n/2⌉ each)", SRC_FSDP_QLORA),
        Var("Ψ_Q", x.nf4_params, "NF4 weights on this GPU before sharding"),
        Var("B_Q", x.nf4_packed, "packed bytes of those NF4 weights (⌈n/2⌉ each)", SRC_FSDP_QLORA),
        Var("Q", x.quant_state, "quant-state (absmax) bytes of those NF4 weights", SRC_BNB_4BIT),
    )
    terms = dict(overhead_terms(setup, memory.zero_stage, memory.peak_phase or "forward", operands))
    if "allocator_fragmentation" in {item.key for item in memory.overhead_items}:
        buffers = allocator_buffer_bytes((k, value_of(v)) for k, v in terms.items())
        allocated = total(
            [
                Var("weights", memory.weights_bytes, "weights"),
                Var("master", memory.master_weights_bytes, "master weights"),
                Var("grads", memory.gradients_bytes, "gradients"),
                Var(
                    "optim",
                    memory.optimizer_states_bytes - memory.paged_states_bytes,
                    "optimizer states in PyTorch's allocator (paged states excluded)",
                ),
                Var("activ", activ.value(), "activations at this moment"),
                Var("logits", logits.value(), "logits at this moment"),
                Var("buffers", buffers, "the overhead lines above, CUDA context excluded"),
            ]
        )
        terms["allocator_fragmentation"] = fragmentation_bytes(
            allocated, Var("φ", settings.fragmentation, "fragmentation fraction", SRC_FRAG)
        )
    return terms


def _phase_words(phase: str | None) -> str:
    return {
        "forward": "at the loss in forward",
        "backward": "as backward starts",
        "optimizer_step": "at the optimizer step",
    }.get(phase or "", "—")


def _overhead_and_peak(report: Report, rows: list[_Row], acts: list[Explanation]) -> list[Explanation]:
    training = report.training
    assert training is not None
    setup = training.setup
    act_by_stage = {s: c.expr for c in acts[0].calculations for s in c.zero_stages}
    logit_by_stage = {s: c.expr for c in acts[1].calculations for s in c.zero_stages}
    labels: dict[str, str] = {}
    per_key: dict[str, list[tuple[int, Value]]] = {}
    for row in rows:
        zero = row.memory.zero_stage
        exprs = _overhead_exprs(row, setup, act_by_stage[zero], logit_by_stage[zero])
        for item in row.memory.overhead_items:
            labels.setdefault(item.key, item.label)
            per_key.setdefault(item.key, []).append((zero, exprs[item.key]))
    keys = sorted(labels, key=lambda key: key == "allocator_fragmentation")
    out = []
    for key in keys:
        if key == "allocator_fragmentation":
            text = (
                "PyTorch's caching allocator reserves more than it hands out (rounding, freed blocks it keeps, "
                f"fragmentation): φ = {setup.overheads.fragmentation:.0%} of everything allocated at the peak moment "
                "(model states, activations, logits and the lines above; the CUDA context is not allocator memory)."
            )
            sources: tuple[str, ...] = (SRC_FRAG,)
        else:
            text, sources = _OVERHEAD_TEXT[key]
        calcs = tuple(_merge_stages(per_key[key], setup))
        out.append(Explanation("training", f"Overhead: {labels[key]}", text, calcs, sources, key=key))

    # Peak
    peak_rows = []
    phase_notes = []
    for row in rows:
        m = row.memory
        expr = total(  # StageMemory.total_bytes: the components live at the peak
            [
                Var("weights", m.weights_bytes, "weights"),
                Var("master", m.master_weights_bytes, "master weights"),
                Var("grads", m.gradients_bytes, "gradients live at the peak"),
                Var("optim", m.optimizer_states_bytes, "optimizer states"),
                Var("activ", m.activations_bytes, "activations live at the peak"),
                Var("logits", m.logits_bytes, "logits live at the peak"),
                Var("overhead", m.overhead_bytes, "the overhead lines live at the peak"),
            ]
        )
        peak_rows.append((m.zero_stage, expr))
        states = compute_training(row.inventory, replace(setup, zero_stages=(m.zero_stage,))).stages[0]
        totals = phase_candidates(row.inventory, setup, states, row.activations)
        label = _stage_label([m.zero_stage], setup)
        grads = (
            "gradients live throughout"
            if totals[0].gradients_bytes == totals[2].gradients_bytes
            else "gradients only at the step"
        )
        phase_notes.append(
            f"{label}: forward {_gib(totals[0].total_bytes)}, backward {_gib(totals[1].total_bytes)}, "
            f"step {_gib(totals[2].total_bytes)} ({grads}) → {_phase_words(m.peak_phase)}"
        )
    text = (
        "The predicted peak per GPU is not a blind sum of everything: hfmem compares three moments of a training "
        "step and reports the largest. At the loss in forward: the model states, every saved activation and the "
        "logits with the loss's fp32 copies. As backward starts: the loss gradients (or, with checkpointing, a "
        "re-materialised layer, whichever is larger). Gradients freed after each step (--grad-accumulation 1) "
        "exist only at the step; mid-backward, earlier layers' activations and later layers' gradients coexist, so "
        "the backward-start and step moments bound it. At the optimizer step: activations are gone and the step's "
        "buffers are live (torch AdamW's foreach or for-loop temporaries, DeepSpeed's fp32 gradient partition…; with "
        "--optimizer-in-backward each parameter steps in backward instead, so there is no separate step peak). "
        "Model states and the CUDA context are live throughout. Per row: " + "; ".join(phase_notes) + "."
    )
    out.append(Explanation("training", "Peak per GPU", text, tuple(_merge_stages(peak_rows, setup)), (SRC_PEAK,)))
    if setup.gpu is not None and training.unmeasured is None:  # unmeasured activations: the headroom is unknown
        fit_rows = [
            (
                r.memory.zero_stage,
                headroom_bytes(
                    Var("usable", setup.gpu.usable_bytes, f"memory PyTorch sees on {setup.gpu.name}"),
                    Var("peak", r.memory.total_bytes, "the peak above"),
                ),
            )
            for r in rows
        ]
        out.append(
            Explanation(
                "training",
                "Headroom",
                f"What is left on {setup.gpu.name} at the peak (negative: it does not fit). The usable memory is what "
                "torch.cuda.get_device_properties().total_memory reports, not the marketing figure (hfmem/gpus.py).",
                tuple(_merge_stages(fit_rows, setup)),
            )
        )
    return out


def _cpu_explanation(report: Report, rows: list[_Row], states: list[StateBytes]) -> Explanation | None:
    training = report.training
    assert training is not None
    setup = training.setup
    if not any(r.memory.cpu_bytes_per_node for r in rows):
        return None
    offload_rows = []
    for row in rows:
        estimate = _row_estimate(report, row) if setup.activation_offload and training.profile is not None else None
        offloaded = estimate.offloaded_bytes if estimate is not None else 0
        offload_rows.append(
            activation_offload_cpu_bytes(offloaded, Var("gpus", setup.gpus_per_node, "GPUs per node"))
            if value_of(offloaded)
            else 0
        )
    activation_text = (
        " With --activation-offload each GPU's offloaded activations (saved in forward, pinned host memory) add "
        "× the GPUs per node."
        if any(value_of(x) for x in offload_rows)
        else ""
    )
    if setup.offload == "none" and setup.accounting != "deepspeed":
        rows_cpu = [(r.memory.zero_stage, x) for r, x in zip(rows, offload_rows, strict=True)]
        return Explanation(
            "training",
            "CPU RAM per node",
            activation_text.strip(),
            tuple(_merge_stages(rows_cpu, setup)),
            (SRC_ACT_OFFLOAD,),
        )
    if setup.accounting == "deepspeed":
        text = (
            "DeepSpeed's estimator also gives CPU RAM per node, × 1.5 (additional_buffer_factor): without offload "
            "the fp32 model materialised at start-up (4 bytes per parameter per GPU process; ZeRO-3 with zero.Init: "
            "of the largest module), with offload the fp32 states."
        )
        sources: tuple[str, ...] = (SRC_DS_EST2, SRC_DS_EST3)
    else:
        text = (
            "With --offload, each GPU's shard of fp32 master weights (4 bytes), fp32 gradients (4 bytes) and fp32 "
            "optimizer states lives in CPU RAM, where CPU-Adam updates it"
            + ("; with optimizer+params also the 16-bit weight shard" if setup.offload == "optimizer+params" else "")
            + ". Per node: × the GPUs per node."
        )
        sources = (SRC_OFFLOAD,)
    if activation_text:
        text += activation_text
        sources = (*sources, SRC_ACT_OFFLOAD)
    rows_cpu = [(r.memory.zero_stage, s.cpu_per_node + x) for r, s, x in zip(rows, states, offload_rows, strict=True)]
    return Explanation("training", "CPU RAM per node", text, tuple(_merge_stages(rows_cpu, setup)), sources)


def _layout_explanation(report: Report, rows: list[_Row]) -> Explanation:
    training = report.training
    assert training is not None
    setup = training.setup
    par = setup.parallel
    mp = par.model_parallel_size

    def degree(symbol: str, value: int, meaning: str) -> Value:
        return Var(symbol, value, meaning) if value != 1 else 1  # a degree of 1 drops out of the formula

    n = sharding_degree(
        Var("gpus", setup.gpus_per_node, "GPUs per node"),
        degree("nodes", setup.nodes, "nodes"),
        degree("tp", par.tp, "tensor-parallel degree"),
        degree("pp", par.pp, "pipeline-parallel degree"),
        degree("cp", par.cp, "context-parallel degree"),
        hybrid_shard=par.fsdp == "hybrid_shard",
    )
    calcs = [Calculation("N", lift(n), "GPUs")]
    text = (
        "N is how many GPUs share (shard) the model states. "
        + (
            f"Each model replica spans tp × pp × cp = {mp} GPUs, so there are gpus × nodes / {mp} data-parallel "
            "replicas; ZeRO/FSDP shard over data parallel × context parallel (context-parallel GPUs hold the same "
            "weights). "
            if mp > 1
            else "With data parallelism only, every GPU holds a replica and N = gpus × nodes. "
        )
        + (
            "hybrid_shard shards only within a node: over ⌊gpus / tp⌋ GPUs, at least 1 (a tensor-parallel group that "
            "spans the node leaves nothing to shard). "
            if par.fsdp == "hybrid_shard"
            else ""
        )
        + (
            "With one GPU there is nothing to shard: every ZeRO stage holds the same. "
            if setup.sharding_degree == 1
            else ""
        )
    )
    sources = [SRC_ZERO_STAGES]
    if par.ep > 1:
        calcs.append(
            Calculation(
                "N_E",
                lift(
                    expert_sharding_degree(
                        Var("N", setup.sharding_degree, "GPUs sharing the model states"),
                        Var("ep", par.ep, "expert-parallel degree"),
                    )
                ),
                "GPUs",
            )
        )
        text += "Routed experts are split over ep GPUs carved out of that group, so their states shard over N / ep. "
    if par.tp > 1 or par.pp > 1 or par.ep > 1:
        text += (
            "Ψ_T in the model-state formulas counts only what one GPU holds: "
            + (
                f"tensor parallelism splits the linears and embeddings {par.tp} ways (norms and biases stay whole); "
                if par.tp > 1
                else ""
            )
            + (
                "pipeline stage k holds layers ⌊k·L/p⌋ … ⌊(k+1)·L/p⌋ − 1 (the first the embeddings, the last the "
                "final norm and LM head); "
                if par.pp > 1
                else ""
            )
            + (f"expert parallelism gives each GPU 1/{par.ep} of the experts; " if par.ep > 1 else "")
            + "the rows describe the busiest GPU."
        )
        sources.append(SRC_MEGATRON_TP)
        for row in rows[:1]:
            calcs.append(
                Calculation(
                    f"parameters on the busiest GPU (stage {row.pstage.index})" if par.pp > 1 else "parameters per GPU",
                    Var("Ψ_local", row.inventory.total_params, "parameters this GPU holds, summed tensor by tensor"),
                    "parameters",
                )
            )
    if par.pp > 1:
        f = in_flight(
            Var("p", par.pp, "pipeline stages"),
            _v("k", rows[0].pstage.index, "this stage's index"),
            Var("m", par.microbatches, "micro-batches per step") if par.microbatches is not None else None,
            Var("v", par.virtual_stages, "model chunks per GPU") if par.pp_schedule == "interleaved" else None,
        )
        calcs.append(Calculation(f"in flight on stage {rows[0].pstage.index}", lift(f), "micro-batches"))
        sources.append(SRC_PP_INTERLEAVED if par.pp_schedule == "interleaved" else SRC_PP_1F1B)
    return Explanation("training", "GPUs and sharding", text.strip(), tuple(calcs), tuple(sources))


def _per_parameter(report: Report) -> Explanation | None:
    """The ZeRO paper's bytes per parameter before sharding, when every trained parameter costs the same."""
    training = report.training
    assert training is not None
    setup = training.setup
    states_per_param = PER_ELEMENT_STATES.get(setup.optimizer)
    if states_per_param is None or setup.method != "full" or setup.accounting != "hfmem":
        return None
    tspec = trainable_spec(setup)
    s = _state_var(setup)
    one = StateInputs(  # ZeRO-0's formula for one trained parameter
        1,
        0,
        0,
        1,
        Var("w", tspec.weight_bytes, "bytes per weight", SRC_ZERO),
        _v("m", tspec.master_bytes, "bytes per fp32 master weight", SRC_ZERO),
        Var("g", tspec.grad_bytes, "bytes per gradient", SRC_ZERO),
        s,
        0,
        per_element_state_bytes(setup.optimizer, 1, s),
        1,
    )
    parts = group_state_bytes(setup, 0, one)
    expr = lift(parts.gpu_bytes)
    text = (
        f"Before any sharding, every trained parameter costs {expr.value()} bytes of model states: its weight (w), "
        "its gradient (g)"
        + (", an fp32 master copy (m)" if tspec.master_bytes else "")
        + (
            f" and {states_per_param} optimizer state{'s' if states_per_param > 1 else ''} ({states_per_param} × s)"
            if states_per_param
            else ""
        )
        + (
            ": the ZeRO paper's 2 + 2 + K with K = 12 for mixed-precision Adam. "
            if expr.value() == 16 and tspec.master_bytes
            else ". "
        )
        + "ZeRO divides them over N GPUs step by step: stage 1 the master and optimizer states, stage 2 also the "
        "gradients, stage 3 also the weights. The sections below show each part per ZeRO stage."
    )
    calc = Calculation("per parameter", expr, "bytes per parameter")
    return Explanation("training", "Model states per parameter", text, (calc,), (SRC_ZERO, SRC_ZERO_STAGES))


def _training(report: Report) -> list[Explanation]:
    if report.training is None:
        return []
    rows = _rows(report)
    states = _states_by_row(report, rows)
    out = [_layout_explanation(report, rows)]
    summary = _per_parameter(report)
    if summary is not None:
        out.append(summary)
    out += _model_state_explanations(report, rows, states)
    acts = _activation_explanations(report, rows)
    out += acts
    out += _overhead_and_peak(report, rows, acts)
    cpu = _cpu_explanation(report, rows, states)
    if cpu is not None:
        out.insert(len(out) - (2 if report.training.setup.gpu is not None else 1), cpu)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Inference


def _weights_expr(inv: ParameterInventory, scheme: QuantScheme) -> Value:
    """The whole model's weight bytes under ``scheme``: `hfmem.memory.quantization.weight_bytes` over
    `weight_operands` as named operands, as `weights_breakdown` computes them with ints."""
    ops = weight_operands(inv, scheme)
    if not inv.has_shapes:
        ((width, params),) = ops.plain_by_width
        return plain_weight_bytes([(Var("β", width, "bytes per weight"), Var("Ψ", params, "parameters"))])
    c = ops.quantized
    operands = None
    if c is not None:
        bits, group = scheme.bits, scheme.group_size
        src = _LAYOUT_SOURCES[scheme.layout][0]
        operands = QuantCounts(
            _v("Ψ_Q", c.elements, "quantized parameters (linear / expert weights)"),  # type: ignore[arg-type]
            _v("D", c.packed_bytes, f"bytes of the packed {bits}-bit values, Σ⌈n × {bits} / 8⌉ per tensor", src),  # type: ignore[arg-type]
            _v("T_Q", c.tensors, "quantized tensors"),  # type: ignore[arg-type]
            rows=_v("rows", c.rows, "output rows of the quantized weights (one fp32 SCB each)"),  # type: ignore[arg-type]
            blocks=_v("K", c.blocks, _BLOCK_MEANING.get(scheme.layout, "blocks").format(*scheme.block)),  # type: ignore[arg-type]
            blocks2=_v("K2", c.blocks2, f"second-level blocks of {BNB_DQ_BLOCKSIZE} absmax values"),  # type: ignore[arg-type]
            groups=_v(  # type: ignore[arg-type]
                "G", c.groups, f"scales: Σ rows × ⌈in / {group}⌉ per tensor (one fp16 scale + one {bits}-bit zero)"
            ),
            zero_bytes=_v("Z", c.zero_bytes, f"bytes of the packed {bits}-bit zeros, Σ⌈G × {bits} / 8⌉ per tensor"),  # type: ignore[arg-type]
            inputs=_v("I", c.inputs, "input features of the quantized weights (one int32 g_idx each)"),  # type: ignore[arg-type]
        )
    plain = [
        (
            width,
            _v(
                f"Ψ_{width * 8}b",
                count,
                f"parameters kept at {width} bytes"
                + (" (16-bit beside the quantized ones)" if c is not None and width == 2 else ""),
            ),
        )
        for width, count in ops.plain_by_width
    ]
    return weight_bytes(scheme, operands, plain)


_BLOCK_MEANING = {
    "bnb-4bit": f"absmax blocks of {BNB_4BIT_BLOCKSIZE} values, Σ⌈n/{BNB_4BIT_BLOCKSIZE}⌉ per tensor",
    "fp8-block": "{}×{} blocks (one fp32 weight_scale_inv each)",
    "mxfp4": f"blocks of {MXFP4_BLOCKSIZE} values (one uint8 E8M0 scale each)",
}

_LAYOUT_SOURCES: dict[str, tuple[str, ...]] = {
    "plain": (SRC_INVENTORY,),
    "bnb-4bit": (SRC_BNB_4BIT, SRC_QLORA, SRC_QUANT_SKIP),
    "bnb-int8": (SRC_INT8, SRC_QUANT_SKIP),
    "gptq": (SRC_AWQ, SRC_QUANT_SKIP),
    "awq": (SRC_AWQ, SRC_QUANT_SKIP),
    "fp8-tensor": (SRC_FP8, SRC_QUANT_SKIP),
    "fp8-block": (SRC_FP8, SRC_QUANT_SKIP),
    "mxfp4": (SRC_MXFP4, SRC_QUANT_SKIP),
}


def _symbolic_kv_layers(layers: Sequence[KvLayer], kv_dtype: str | None) -> tuple[KvLayer, ...]:
    """The measured cache layout with its numbers as named operands, one set per group of alike layers (e, h, W, z
    and β, the bytes per element `hfmem.memory.inference.kv_element_bytes` chooses)."""
    keys = [
        (
            layer.kind,
            layer.window_tokens,
            layer.heads,
            layer.elements_per_token,
            layer.fixed_elements,
            kv_element_bytes(layer, kv_dtype),
        )
        for layer in layers
    ]
    groups = _groups(keys)
    symbolic: dict[tuple[Any, ...], KvLayer] = {}
    for k, (key, count) in enumerate(groups, start=1):
        x = "" if len(groups) == 1 else str(k)
        kind, window, heads, elements, fixed, beta = key
        what = f" ({_plural(count, kind + ' layer')}" + (f", window {window:,})" if window else ")")
        symbolic[key] = KvLayer(
            "",
            kind,
            _v(_sym("e", x), elements, "cached elements per token (K and V of every KV head)" + what, SRC_KV),  # type: ignore[arg-type]
            heads=_v(_sym("h", x), heads, "KV heads", SRC_KV),  # type: ignore[arg-type]
            window_tokens=_v(_sym("W", x), window or 0, "sliding window (tokens)", SRC_KV) or None,  # type: ignore[arg-type]
            fixed_elements=_v(_sym("z", x), fixed, "elements of the fixed (recurrent) state", SRC_KV),  # type: ignore[arg-type]
            element_bytes=Var(_sym("β", x), beta, "bytes per cached element", SRC_KV_DTYPE if kv_dtype else SRC_KV),  # type: ignore[arg-type]
        )
    return tuple(symbolic[key] for key in keys)


def _inference(report: Report) -> list[Explanation]:
    inf = report.inference
    if inf is None:
        return []
    setup = inf.setup
    # Under LoRA the report's inventory is peft's (adapters, renamed base layers); serving was planned on the base
    # model, whose tensors the report does not keep: its weights are shown from the breakdown.
    lora = report.training is not None and report.training.setup.finetune.uses_peft
    base_inv = None if lora else report.inventory
    scheme: QuantScheme = inf.weights.scheme
    out: list[Explanation] = []
    tp = Var("tp", setup.tp, "tensor-parallel GPUs")

    # Weights
    if base_inv is None:
        whole: Value = (
            weights_total_bytes(  # WeightsBreakdown.total_bytes
                Var("D", inf.weights.quantized_data_bytes, "quantized values"),
                Var("M", inf.weights.quantization_metadata_bytes, "quantization metadata"),
                Var("U", inf.weights.unquantized_bytes, "unquantized tensors"),
            )
            if inf.weights.quantized_params
            else Var("U", inf.weights.unquantized_bytes, "bytes of the base model's tensors")
        )
    else:
        whole = _weights_expr(base_inv, scheme)
    calcs = [Calculation("whole model", lift(whole))]
    if setup.tp > 1:
        per_gpu: Value = (
            weights_per_gpu_bytes(base_inv, scheme, tp)
            if base_inv is not None
            else Var("W_gpu", inf.weights_bytes, "the base model's weights per GPU (the adapters' model is not kept)")
        )
        calcs.append(Calculation("per GPU", lift(per_gpu)))
    layout = scheme.layout
    bits, group = scheme.bits, scheme.group_size
    what = {
        "plain": "Every tensor stored plainly: its bytes are parameters × bytes per element",
        "bnb-4bit": "bitsandbytes 4-bit (NF4/FP4): the linear weights as two 4-bit codes per byte (Ψ_Q × 4 / 8) "
        f"plus one fp32 absmax per {BNB_4BIT_BLOCKSIZE} values"
        + (
            " — with double quantization the absmax values are stored in 8 bits (one byte per block), plus one fp32 "
            f"scale per {BNB_DQ_BLOCKSIZE} blocks and one fp32 offset per tensor"
            if scheme.double_quant
            else " (4 × K)"
        ),
        "bnb-int8": "bitsandbytes LLM.int8: one byte per linear weight plus one fp32 scale per output row",
        "gptq": f"GPTQ: {bits}-bit values plus, per group of {group} inputs and per output, an fp16 scale and a "
        f"{bits}-bit zero, and an int32 g_idx per input",
        "awq": f"AWQ-style int{bits}: {bits}-bit values plus, per group of {group} inputs and per output, an fp16 "
        f"scale and a {bits}-bit zero",
        "fp8-tensor": "FP8 E4M3: one byte per linear weight plus one fp32 scale per tensor",
        "fp8-block": f"FP8 E4M3 in {scheme.block[0]}×{scheme.block[1]} blocks: one byte per value plus one fp32 "
        "scale per block",
        "mxfp4": "MXFP4 experts: 4 bits per value plus one 8-bit shared exponent per 32 values",
    }[layout]
    text = (
        f"The weights as the serving stack holds them ({inf.weights_name}; source: {inf.weights_source}). {what}. "
        + (
            "Embeddings, the LM head, norms and biases stay 16-bit, as the Hugging Face quantization integrations "
            "leave them. "
            if scheme.quantized
            else ""
        )
        + (
            f"Tensor parallelism splits every ≥ 2-D tensor {setup.tp} ways (with its metadata) and replicates 1-D "
            "tensors. "
            if setup.tp > 1
            else ""
        )
        + ("Planned for the base model with the LoRA adapters merged. " if base_inv is None else "")
    )
    src = _LAYOUT_SOURCES[layout]
    out.append(Explanation("inference", "Weights", text.strip(), tuple(calcs), src))

    # KV cache
    layers = inf.kv_layers
    symbolic_layers = _symbolic_kv_layers(layers, setup.kv_dtype)
    context = Var("c", inf.context, "tokens of context per sequence")
    batch = Var("b", setup.batch_size, "sequences (--batch-size)")
    kv_tp: Value = Var("tp", setup.tp, "tensor-parallel GPUs", SRC_KV_TP) if setup.tp > 1 else 1
    kv_calcs = [
        Calculation("per GPU", lift(kv_cache_bytes(symbolic_layers, context=context, batch_size=batch, tp=kv_tp))),
        Calculation("per token per sequence", lift(kv_cache_bytes_per_token(symbolic_layers, tp=kv_tp))),
    ]
    kinds = {layer.kind for layer in layers}
    head = layers[0] if layers else None
    text = (
        "The keys and values of every past token, kept so that each new token attends to them without recomputing. "
        "hfmem reads the layout from the model's own cache (not from config keys): per layer, e cached elements per "
        "token — for ordinary attention K and V of every KV head, 2 × kv_heads × head_dim"
        + (f" (here e = {head.elements_per_token:,})" if head is not None and head.kind != "state" else "")
        + " — stored in β bytes each"
        + (f" (--kv-dtype {setup.kv_dtype})" if setup.kv_dtype else f" ({inf.kv_dtype}, the compute dtype)")
        + f", for c = {inf.context:,} tokens ({inf.context_source}) of each of b = {setup.batch_size} sequences. "
        + ("Sliding-window layers keep at most W tokens. " if "sliding" in kinds else "")
        + ("Cross-attention layers hold the encoder's tokens (counted at c). " if "cross" in kinds else "")
        + ("Recurrent layers hold a fixed state z. " if "state" in kinds else "")
        + ("With tensor parallelism each GPU holds ⌈h / tp⌉ of the h KV heads (at least one). " if setup.tp > 1 else "")
    )
    if not layers:
        text += (
            "This model has no attention layer caching keys and values, so it shows 0."
            if inf.recurrent_state_bytes
            else "This model's cache held no tensor hfmem could read, so it shows 0."
        )
    sources = [SRC_KV]
    if setup.tp > 1:
        sources.append(SRC_KV_TP)
    if setup.kv_dtype in ("fp8", "int8"):
        sources.append(SRC_KV_DTYPE)
    out.append(Explanation("inference", "KV cache", text.strip(), tuple(kv_calcs), tuple(sources)))
    state_var = Var("state", inf.recurrent_state_bytes, "recurrent state")
    if inf.recurrent_state_bytes and inf.profile is not None:
        # `hfmem.memory.inference.recurrent_state_bytes`: the layers' state bytes per sequence × the sequences.
        states = inf.profile.state_layers
        distinct = list(dict.fromkeys(size for _, size in states))
        per_layer = {
            size: Var(_sym("s", str(k) if len(distinct) > 1 else ""), size, "state bytes per sequence of one layer")
            for k, size in enumerate(distinct, start=1)
        }
        state_expr = recurrent_state_bytes(tuple((name, per_layer[size]) for name, size in states), batch_size=batch)
        out.append(
            Explanation(
                "inference",
                "Recurrent state",
                "What a recurrent layer (Mamba, linear attention) caches instead of keys and values: a fixed-size "
                "state per sequence, whatever the context (Mamba: a d_inner × conv_kernel convolution state in the "
                "model's dtype and a d_inner × state_size SSM state in fp32 per layer). Read from the model's own "
                "cache after one token, tensor by tensor at the dtype it is stored in; held whole on every GPU.",
                (Calculation("per GPU", lift(state_expr)),),
                (SRC_KV,),
            )
        )

    # Activations of one prefill chunk
    prof = inf.profile
    if prof is None:
        raise ValueError("a serving plan without its measured prefill profile cannot be explained")
    act = prefill_activation_bytes(
        Var("A", prof.activation_peak_bytes, "peak of live tensors in one prefill forward (measured)", SRC_PREFILL),
        _v("Lg", prof.logits_bytes, "the next-token logits in fp32 (measured)", SRC_PREFILL),
        batch,
        Var("b_0", prof.batch_size, "sequences traced"),
    )
    text = (
        f"The working memory of one prefill forward of b = {setup.batch_size} × {inf.prefill_tokens:,} prompt tokens "
        "(--prefill-chunk). Measured, not a formula: the model's own forward runs on the meta device and hfmem follows "
        "every tensor the operators create until its last reference dies, as the caching allocator sees it; A is the "
        "peak of live bytes (weights and cache excluded), Lg the fp32 next-token logits generate() keeps. It is "
        "assumed to run while the cache is full, as a serving engine prefills new requests beside running ones."
    )
    out.append(
        Explanation(
            "inference",
            "Activations (prefill)",
            text,
            (Calculation("per GPU", lift(act)),),
            (SRC_PREFILL, SRC_PREFILL_CHUNK),
        )
    )

    # Overheads
    # the lines the allocator holds besides the cache and activations (fragmentation is computed on them)
    buffers = allocator_buffer_bytes(
        (i.key, i.size_bytes) for i in inf.overhead_items if i.key != "allocator_fragmentation"
    )
    for item in inf.overhead_items:
        expr: Value
        if item.key == "cuda_context":
            expr = Var("C", setup.overheads.cuda_context_bytes, "CUDA context + cuBLAS workspace per GPU", SRC_CUDA)
            text, sources_t = _OVERHEAD_TEXT["cuda_context"]
        elif item.key == "kv_append_copy":
            expr = largest_kv_layer_bytes(symbolic_layers, context=context, batch_size=batch, tp=kv_tp)
            text = (
                "When the cache grows, DynamicCache concatenates (torch.cat) the new token onto a layer's tensors, so "
                "the grown layer is allocated beside the old one for a moment: one layer's cache, the largest."
            )
            sources_t = (SRC_CAT,)
        elif item.key == "bnb_dequantized_weight":
            n_max = Var("n_max", inf.dequant_params, "elements of the largest quantized linear")
            expr = dequant_transient_bytes(n_max, tp)
            text = (
                "Prefill matmuls with more than one token take bitsandbytes' dequantize path: the largest 4-bit "
                "linear exists as a 16-bit copy while it runs."
            )
            sources_t = ()
        elif item.key == "allocator_fragmentation":
            allocated = total(
                [
                    Var("kv", inf.kv_cache_bytes, "KV cache"),
                    *([state_var] if inf.recurrent_state_bytes else []),
                    Var("activ", inf.activations_bytes, "prefill activations"),
                    Var("buffers", buffers, "the overhead lines above, CUDA context excluded"),
                ]
            )
            expr = fragmentation_bytes(
                allocated, Var("φ", setup.overheads.fragmentation, "fragmentation fraction", SRC_FRAG)
            )
            text = (
                f"Allocator slack: φ = {setup.overheads.fragmentation:.0%} of what is allocated and freed while "
                "serving (cache, activations, transients); the weights are allocated once at load and not counted."
            )
            sources_t = ()
        else:
            raise ValueError(f"no explanation for the serving overhead line {item.key!r}")
        out.append(
            Explanation(
                "inference",
                f"Overhead: {item.label}",
                text,
                (Calculation("per GPU", lift(expr)),),
                tuple(dict.fromkeys(sources_t + lift(expr).sources())),
                key=item.key,
            )
        )

    grand = total(  # InferenceEstimate.total_bytes
        [
            Var("weights", inf.weights_bytes, "weights per GPU"),
            Var("kv", inf.kv_cache_bytes, "KV cache per GPU"),
            *([state_var] if inf.recurrent_state_bytes else []),
            Var("activ", inf.activations_bytes, "prefill activations"),
            Var("overhead", inf.overhead_bytes, "the overhead lines"),
        ]
    )
    calcs = [Calculation("per GPU", lift(grand))]
    if setup.gpu is not None:
        calcs.append(
            Calculation(
                "headroom",
                lift(
                    headroom_bytes(
                        Var("usable", setup.gpu.usable_bytes, f"memory PyTorch sees on {setup.gpu.name}"),
                        Var("total", inf.total_bytes, "the total above"),
                    )
                ),
            )
        )
    out.append(
        Explanation(
            "inference",
            "Total per GPU",
            "Serving memory is the sum: the weights, the full KV cache, one prefill chunk's working set and the "
            "overheads." + (" Headroom: what is left on the GPU (negative: it does not fit)." if setup.gpu else ""),
            tuple(calcs),
        )
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Serving engines (`hfmem.memory.engine`)


def _engine_weights(eng: EngineEstimate, config_rotary: tuple[int, int, int] | None) -> Value:
    """The weights line: the tensors as split over TP, the vocabulary padding and the RoPE cache."""
    core = eng.weights_bytes - eng.vocab_padding_bytes - eng.rope_cache_bytes
    parts: list[Value] = [
        Var(
            "W_tp",
            core,
            "the checkpoint's tensors on this GPU: every ≥ 2-D tensor ⌈bytes / tp⌉, 1-D tensors whole (INFERENCE: "
            "Weights)",
            SRC_INVENTORY,
        )
    ]
    if eng.vocab_padding_bytes:
        parts.append(
            Var(
                "pad",
                eng.vocab_padding_bytes,
                "embedding / LM-head rows added to pad the vocabulary to 64",
                SRC_VLLM_WEIGHTS,
            )
        )
    if eng.rope_cache_bytes and config_rotary is not None:
        positions, rotary, width = config_rotary
        parts.append(
            vllm_rope_cache_bytes(
                Var("P", positions, "RoPE positions (the derived max_model_len)", SRC_VLLM_WEIGHTS),
                Var("d_rot", rotary, "rotary dimensions per head"),
                Var("w", width, "bytes per element of the model dtype"),
            )
        )
    elif eng.rope_cache_bytes:
        parts.append(Var("rope", eng.rope_cache_bytes, "the RoPE cos_sin_cache buffer", SRC_VLLM_WEIGHTS))
    return total(parts)


def _engine(report: Report) -> list[Explanation]:
    eng = report.engine
    if eng is None:
        return []
    config = report.model.config
    positions = vllm_default_max_model_len(config) or eng.max_model_len
    rotary = (positions, rotary_dim(config), eng.logits_element_bytes) if eng.rope_cache_bytes else None
    weights = _engine_weights(eng, rotary)
    if value_of(weights) != eng.weights_bytes:
        weights = Var("W", eng.weights_bytes, "weights per GPU")
    out: list[Explanation] = []
    total_var = Var("total", eng.total_bytes, f"memory of {eng.gpu.name} (torch.cuda.mem_get_info total)")
    bs = Var("bs", eng.block_size, "tokens per block" if eng.engine == "vllm" else "tokens per page")
    length = Var("len", eng.max_model_len, f"the longest request ({eng.max_model_len_source})")
    if eng.engine == "sglang":
        return _sglang_explanations(eng, weights, total_var, bs, length)
    util = Var("u", eng.gpu_memory_utilization or 0.0, "--gpu-memory-utilization", SRC_VLLM_DEFAULTS)
    requested = vllm_requested_bytes(total_var, util)
    out.append(
        Explanation(
            "engine",
            "Memory vLLM may use",
            f"vLLM {eng.engine_version} takes a fraction u of the GPU's total memory (not of the free memory): the "
            "CUDA context and NCCL buffers created before its start-up snapshot are outside it.",
            (Calculation("requested", lift(requested)),),
            (SRC_VLLM_BUDGET,),
        )
    )
    out.append(
        Explanation(
            "engine",
            'Weights ("Model loading took")',
            "What the model's layers allocate while loading: the checkpoint's tensors (quantized as stored), split "
            "over the tensor-parallel GPUs, the vocabulary padded to a multiple of 64, and RoPE's cos/sin cache.",
            (Calculation("per GPU", lift(weights)),),
            (SRC_VLLM_WEIGHTS,),
        )
    )
    reqs = Var("r", min(eng.max_num_seqs, eng.batched_tokens), "requests in the profile run, min(max_num_seqs, T)")
    width = Var("w", eng.logits_element_bytes, "bytes per element of the model dtype")
    sampler = vllm_sampler_bytes(reqs, Var("V", eng.vocab_size, "vocabulary"), width)
    activation = vllm_activation_peak_bytes(
        Var(
            "A", eng.activation_trace_bytes, "peak of one forward of T tokens (measured by hfmem's trace)", SRC_PREFILL
        ),
        Var("T", eng.batched_tokens, "--max-num-batched-tokens"),
        reqs,
        Var("H", hidden_size(config), "hidden size"),
        width,
        sampler,
    )
    out.append(
        Explanation(
            "engine",
            "PyTorch activation peak (profile run)",
            "vLLM measures the peak of torch-allocated memory during a dummy forward of T tokens and a dummy sampler "
            "run on one row of logits per request (top-k and top-p set: the PyTorch-native sampler sorts the fp32 "
            "logits). hfmem takes the larger of its trace of that forward and the sampler's moment, which runs while "
            "the forward's hidden states are alive.",
            (Calculation("per GPU", lift(activation)), Calculation("sampler", lift(sampler))),
            (SRC_VLLM_PROFILE, SRC_PREFILL),
        )
    )
    available = vllm_available_kv_bytes(
        Var("req", eng.requested_bytes, "what vLLM may use (above)"),
        Var("W", eng.weights_bytes, "weights (above)"),
        Var("act", eng.activation_peak_bytes, "activation peak (above)"),
        Var(
            "nt",
            eng.non_torch_bytes,
            "non-torch memory allocated after the snapshot (cuBLAS, attention workspaces)",
            SRC_VLLM_NON_TORCH,
        ),
    )
    out.append(
        Explanation(
            "engine",
            '"Available KV cache memory"',
            f"Everything vLLM may use that the weights, the activation peak and non-torch memory do not take goes to "
            f"the KV cache. CUDA graphs are captured later, out of the 1 − u left over (vLLM {eng.engine_version} "
            "does not subtract them).",
            (Calculation("per GPU", lift(available)),),
            (SRC_VLLM_BUDGET, SRC_VLLM_NON_TORCH),
        )
    )
    avail_var = Var("avail", eng.kv_budget_bytes, "Available KV cache memory (above)")
    page_calcs = []
    pages: list[Value] = []
    per_request: list[Value] = []
    needed: list[tuple[Value, Value]] = []
    batched = Var("T", eng.batched_tokens, "--max-num-batched-tokens")
    for k, g in enumerate(eng.kv_groups, start=1):
        x = "" if len(eng.kv_groups) == 1 else str(k)
        if g.kind == "mamba":
            page: Value = Var(
                _sym("page", x), g.page_bytes, "a Mamba state padded to the attention page", SRC_VLLM_MAMBA
            )
            blocks: Value = 1
        else:
            page = page_bytes(
                bs,
                Var(
                    _sym("e", x), g.elements_per_token, f"elements per token of one {g.kind} layer on this GPU", SRC_KV
                ),
                Var(_sym("β", x), g.element_bytes, "bytes per element (--kv-cache-dtype)"),
            )
            if g.kind == "sliding":
                blocks = sliding_blocks_per_request(
                    Var(_sym("W", x), g.window_tokens or 0, "sliding window", SRC_KV), batched, length, bs
                )
            else:
                blocks = full_blocks_per_request(length, bs)
        page_calcs.append(Calculation(f"page, {g.layers} × {g.kind}", lift(page)))
        pages.append(page)
        per_request.append(g.groups * blocks if g.groups != 1 else blocks)
        needed += [(blocks, page)] * g.layers
    out.append(
        Explanation(
            "engine",
            "KV cache spec (one block of one layer)",
            "vLLM allocates the KV cache in blocks of bs tokens per layer: K and V of this GPU's KV heads (e = 2 × "
            "heads × head_size; MLA caches one latent of kv_lora_rank + qk_rope_head_dim, no factor 2); a sliding "
            "layer keeps only its window's blocks, a Mamba layer one state.",
            tuple(page_calcs),
            (SRC_VLLM_SPEC,),
        )
    )
    if eng.grouping == "uniform":
        num_blocks = uniform_num_blocks(avail_var, pages[0], Var("L", eng.kv_groups[0].layers, "layers on this GPU"))
    elif eng.grouping == "uniform_type":  # one block spans every layer (`UniformTypeKVCacheSpecs`)
        num_blocks = avail_var // total([g.layers * page for g, page in zip(eng.kv_groups, pages, strict=True)])
        per_request = per_request[:1]
    else:
        num_blocks = hybrid_num_blocks(
            avail_var, pages[0], Var("n", eng.group_size, "layers per KV-cache group (the fewest of any kind)")
        )
    blocks_var = Var("blocks", eng.num_blocks, "blocks per layer (above)")
    groups = eng.num_groups
    capacity = [
        Calculation("blocks", lift(num_blocks), "blocks"),
        Calculation(
            '"GPU KV cache size"',
            lift(kv_tokens(blocks_var, Var("g", groups, "KV-cache groups") if groups > 1 else 1, bs)),
            "tokens",
        ),
        Calculation(
            f'"Maximum concurrency for {eng.max_model_len:,} tokens per request"',
            lift(max_concurrency(blocks_var, total(per_request))),
            "x",
        ),
        Calculation(f"KV cache of one {eng.max_model_len:,}-token request", lift(needed_bytes(needed))),
    ]
    verdict = "It starts: one request of max_model_len fits." if eng.starts else f"It does not start: {eng.refusal}"
    out.append(
        Explanation(
            "engine",
            "Blocks, tokens, concurrency",
            "Every layer gets its own tensor of the same number of blocks (hybrid models: groups of n layers share "
            "tensors and all groups draw on one pool); the tokens line divides the pool between the groups, the "
            "concurrency counts the blocks one max_model_len request needs in every group. vLLM refuses to start "
            f"when that request's KV cache exceeds the budget. {verdict}",
            tuple(capacity),
            (SRC_VLLM_BLOCKS, SRC_VLLM_REFUSE),
        )
    )
    return out


def _sglang_explanations(
    eng: EngineEstimate, weights: Value, total_var: Var, page: Var, length: Var
) -> list[Explanation]:
    context = Var("C", eng.cuda_context_bytes, "CUDA context + NCCL before the weights (--cuda-context)", SRC_CUDA)
    free_before = total_var - context
    rest = sglang_rest_bytes(
        Var("F", eng.requested_bytes, "free memory before the weights (above)"),
        Var("W", eng.weights_bytes, "weights (above)"),
        Var("f", eng.mem_fraction_static or 0.0, "--mem-fraction-static", SRC_SGLANG_DEFAULTS),
    )
    cell_terms = [
        g.layers
        * (
            Var(_sym("e", str(k)), g.elements_per_token, f"elements per token of one {g.kind} layer", SRC_KV)
            * Var(_sym("β", str(k)), g.element_bytes, "bytes per element")
        )
        for k, g in enumerate(eng.kv_groups, start=1)
    ]
    tokens = sglang_max_total_tokens(
        Var("rest", eng.kv_budget_bytes, "the KV pool budget (above)"),
        Var("cell", eng.kv_bytes_per_token, "KV bytes of one token over all layers (above)"),
        page,
    )
    tokens_var = Var("N", eng.kv_tokens, "max_total_num_tokens (above)")
    return [
        Explanation(
            "engine",
            "Free memory before the weights",
            "SGLang reads the free memory after NCCL is initialised and before the weights load; mem_fraction_static "
            "is a share of it.",
            (Calculation("per GPU", lift(free_before)),),
            (SRC_SGLANG_BUDGET,),
        ),
        Explanation(
            "engine",
            "Weights",
            "The checkpoint's tensors split over the tensor-parallel GPUs (SGLang's layers are vLLM's: padded "
            "vocabulary, RoPE cache).",
            (Calculation("per GPU", lift(weights)),),
            (SRC_VLLM_WEIGHTS,),
        ),
        Explanation(
            "engine",
            "KV pool budget",
            "What is free after the weights, less the 1 − f share of the pre-weights memory SGLang keeps for "
            "activations and CUDA graphs (nothing is profiled).",
            (Calculation("per GPU", lift(rest)),),
            (SRC_SGLANG_BUDGET,),
        ),
        Explanation(
            "engine",
            "Tokens and requests",
            "The pool holds rest // cell tokens (whole pages); every layer counts as full attention in SGLang "
            f"{eng.engine_version}. SGLang does not refuse a long context_length: it caps requests at max_req_len.",
            (
                Calculation("cell", lift(total(cell_terms))),
                Calculation("max_total_num_tokens", lift(tokens), "tokens"),
                Calculation(
                    "max_num_reqs",
                    lift(sglang_max_num_reqs(tokens_var, length)),
                    "requests",
                ),
                Calculation(
                    "concurrent full-length requests",
                    lift(minimum(tokens_var / length, Var("R", eng.max_running_requests or 0, "max_running_requests"))),
                    "x",
                ),
            ),
            (SRC_SGLANG_BUDGET, SRC_SGLANG_POOL),
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Public API


def explain(report: Report) -> tuple[Explanation, ...]:
    """Every number of ``report``, component by component: parameters, then training, then inference.

    Example:
        >>> from hfmem import estimate  # doctest: +SKIP
        >>> records = explain(estimate(params=7_000_000_000))  # doctest: +SKIP
        >>> records[0].calculations[0].value  # doctest: +SKIP
        7000000000
    """
    # With an engine, the serving story is the engine's (its transformers plan only measured the model).
    serving = _engine(report) if report.engine is not None else _inference(report)
    items = _parameters(report) + _training(report) + serving
    return tuple(replace(item, sources=_sources(item)) for item in items)


def _sources(item: Explanation) -> tuple[str, ...]:
    """The component's sources: those its prose cites, then those its formulas' operands and constants carry."""
    found: dict[str, None] = dict.fromkeys(item.sources)
    for calc in item.calculations:
        found.update(dict.fromkeys(calc.expr.sources()))
    return tuple(found)


def explanation_records(report: Report) -> list[dict[str, Any]]:
    """The ``explanation`` list of ``--json --explain``: one record per component (docs/json.md)."""
    records = []
    for item in explain(report):
        records.append(
            {
                "section": item.section,
                "component": item.component,
                "key": item.key,
                "text": item.text,
                "calculations": [
                    {
                        "label": calc.label,
                        "zero_stages": list(calc.zero_stages) or None,
                        "formula": calc.expr.formula,
                        "substituted": calc.expr.substituted,
                        "operands": {
                            symbol: {"value": var.number, "meaning": var.meaning}
                            for symbol, var in calc.operands.items()
                        },
                        "value": calc.value,
                        "unit": calc.unit,
                    }
                    for calc in item.calculations
                ],
                "sources": list(item.sources),
            }
        )
    return records


_SECTION_TITLES = {
    "parameters": "PARAMETERS",
    "training": "TRAINING — per GPU",
    "inference": "INFERENCE — per GPU",
    "engine": "SERVING ENGINE — start-up accounting, per GPU",
}


def _value_text(calc: Calculation) -> str:
    value = calc.value
    if calc.unit == "bytes":
        if abs(value) >= GIB // 100 or value == 0:
            return f"{value:,} B ({value / GIB:,.2f} GiB)"
        return f"{value:,} B ({value / 2**20:,.2f} MiB)"
    if calc.unit == "x":
        return f"{value:,.2f}x"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3g} {calc.unit}"
    unit = calc.unit[:-1] if value == 1 and calc.unit in ("GPUs", "parameters", "micro-batches") else calc.unit
    return f"{int(value):,} {unit}"


def render_explanation(report: Report, *, width: int = 100) -> str:
    """The ``--explain`` text: a heading per section, a paragraph per component, its formulas and sources.

    Sources are numbered in order of first use and listed at the end.
    """
    width = max(width, 60)
    lines = [""]
    lines += textwrap.wrap(
        "Explanation: every number, its formula, the values in it and where the constants come from.", width
    )
    lines += textwrap.wrap(
        "Notation: × times, ⌈a / b⌉ divided and rounded up, ⌊x⌋ rounded down; B = bytes, GiB = 2^30 bytes. "
        "[n] = the numbered sources at the end.",
        width,
    )
    section = None
    body = textwrap.TextWrapper(width=width, initial_indent="  ", subsequent_indent="  ")
    note = textwrap.TextWrapper(width=width, initial_indent="    ", subsequent_indent="      ")
    references: dict[str, int] = {}
    for item in explain(report):
        if item.section != section:
            section = item.section
            lines += ["", _SECTION_TITLES[section]]
        lines += ["", f"{item.component}"]
        if item.text:
            lines += body.wrap(item.text)
        meanings: dict[str, str] = {}
        for calc in item.calculations:
            formula, subst = calc.expr.formula, calc.expr.substituted
            result = _value_text(calc)
            if isinstance(calc.expr, Const):
                parts = []
            elif formula == subst or isinstance(calc.expr, Var):
                parts = [formula]
            else:
                parts = [formula, subst]
            one = f"    {calc.label}: " + " = ".join(parts + [result])
            if len(one) <= width:
                lines.append(one)
            else:
                lines.append(f"    {calc.label}:")
                lines += textwrap.wrap(formula, width, initial_indent="      ", subsequent_indent="        ")
                if len(parts) > 1:
                    lines += textwrap.wrap("= " + subst, width, initial_indent="      ", subsequent_indent="        ")
                lines.append(f"      = {result}")
            for symbol, var in calc.operands.items():
                meanings.setdefault(symbol, var.meaning)
        if meanings:
            lines += note.wrap("where " + "; ".join(f"{s} = {m}" for s, m in meanings.items()) + ".")
        if item.sources:
            numbers = [references.setdefault(source, len(references) + 1) for source in item.sources]
            lines += note.wrap("Sources: " + " ".join(f"[{n}]" for n in numbers))
    if references:
        lines += ["", "SOURCES"]
        for source, number in references.items():
            lines += textwrap.wrap(source, width, initial_indent=f"  [{number}] ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"
