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

import math
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from hfmem.memory.activations import ActivationEstimate
from hfmem.memory.inference import KV_DTYPE_BYTES, kv_layer_bytes
from hfmem.memory.methods import QLORA_COMPUTE_BYTES, is_qlora_quantized
from hfmem.memory.parallel import (
    PipelineStage,
    in_flight_microbatches,
    local_inventory,
    pipeline_stages,
    stage_profile,
)
from hfmem.memory.peak import fsdp_unit_params, phase_candidates, stage_activations
from hfmem.memory.quantization import (
    BNB_4BIT_BLOCKSIZE,
    BNB_DQ_BLOCKSIZE,
    MXFP4_BLOCKSIZE,
    QuantScheme,
    is_16bit_model,
    is_quantized,
    tensor_bytes,
)
from hfmem.memory.states import (
    BNB_BLOCKSIZE,
    BNB_MIN_8BIT_SIZE,
    DEEPSPEED_CPU_BUFFER_FACTOR,
    PRECISION_SPECS,
    compute_training,
    trainable_spec,
)
from hfmem.types import (
    ActivationProfile,
    InferenceEstimate,
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

Section = Literal["parameters", "training", "inference"]
Unit = Literal["bytes", "parameters", "GPUs", "micro-batches", "bytes per parameter"]
Number = int | float


# ---------------------------------------------------------------------------------------------------------------
# Expressions: one tree renders the formula, the substituted formula and the value.


def _num(value: Number) -> str:
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() else repr(value)
    return f"{value:,}"


class Expr:
    """A node of a formula. ``prec``: binding strength (1 sums, 2 products, 3 atoms), for parentheses."""

    prec: ClassVar[int] = 3

    def value(self) -> Number:
        raise NotImplementedError

    def render(self, substituted: bool) -> str:
        raise NotImplementedError

    def children(self) -> tuple[Expr, ...]:
        return ()

    def variables(self) -> Iterator[Var]:
        for child in self.children():
            yield from child.variables()

    @property
    def formula(self) -> str:
        return self.render(False)

    @property
    def substituted(self) -> str:
        return self.render(True)


def _wrap(child: Expr, substituted: bool, need: int) -> str:
    text = child.render(substituted)
    return f"({text})" if child.prec < need else text


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A named operand: ``symbol`` in the formula, ``number`` in the substituted one."""

    symbol: str
    number: Number
    meaning: str

    def value(self) -> Number:
        return self.number

    def render(self, substituted: bool) -> str:
        return _num(self.number) if substituted else self.symbol

    def variables(self) -> Iterator[Var]:
        yield self


@dataclass(frozen=True, eq=False)
class Const(Expr):
    """A literal number, the same in both renderings (2 moments, 4 bytes of fp32…; the text says what it is)."""

    number: Number

    def value(self) -> Number:
        return self.number

    def render(self, substituted: bool) -> str:
        return _num(self.number)


@dataclass(frozen=True, eq=False)
class Sum(Expr):
    """``a + b − c``: terms with signs (+1 / −1)."""

    terms: tuple[tuple[int, Expr], ...]
    prec: ClassVar[int] = 1

    def children(self) -> tuple[Expr, ...]:
        return tuple(term for _, term in self.terms)

    def value(self) -> Number:
        total: Number = 0
        for sign, term in self.terms:
            total = total + term.value() if sign > 0 else total - term.value()
        return total

    def render(self, substituted: bool) -> str:
        out = ""
        for i, (sign, term) in enumerate(self.terms):
            text = _wrap(term, substituted, 2 if sign < 0 else 1)
            if i == 0:
                out = text if sign > 0 else f"−{text}"
            else:
                out += f" {'+' if sign > 0 else '−'} {text}"
        return out


@dataclass(frozen=True, eq=False)
class Product(Expr):
    """``a × b × c``, multiplied left to right (as the code does, which matters for floats)."""

    factors: tuple[Expr, ...]
    prec: ClassVar[int] = 2

    def children(self) -> tuple[Expr, ...]:
        return self.factors

    def value(self) -> Number:
        result: Number = 1
        for factor in self.factors:
            result = result * factor.value()
        return result

    def render(self, substituted: bool) -> str:
        return " × ".join(_wrap(f, substituted, 3 if isinstance(f, Div) else 2) for f in self.factors)


@dataclass(frozen=True, eq=False)
class Div(Expr):
    """``a / b``, true division (a float), only ever inside ⌊ ⌋ or ⌈ ⌉."""

    a: Expr
    b: Expr
    prec: ClassVar[int] = 2

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def value(self) -> Number:
        return self.a.value() / self.b.value()

    def render(self, substituted: bool) -> str:
        return f"{_wrap(self.a, substituted, 2)} / {_wrap(self.b, substituted, 3)}"


@dataclass(frozen=True, eq=False)
class CeilDiv(Expr):
    """``⌈a / b⌉``: exact integer division rounded up (a shard: `hfmem.memory.states.shard_count`)."""

    a: Expr
    b: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def value(self) -> Number:
        a, b = self.a.value(), self.b.value()
        if isinstance(a, int) and isinstance(b, int):
            return -(-a // b)
        return math.ceil(a / b)

    def render(self, substituted: bool) -> str:
        return f"⌈{_wrap(self.a, substituted, 2)} / {_wrap(self.b, substituted, 3)}⌉"


@dataclass(frozen=True, eq=False)
class FloorDiv(Expr):
    """``⌊a / b⌋``: exact integer division rounded down."""

    a: Expr
    b: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)

    def value(self) -> Number:
        a, b = self.a.value(), self.b.value()
        if isinstance(a, int) and isinstance(b, int):
            return a // b
        return math.floor(a / b)

    def render(self, substituted: bool) -> str:
        return f"⌊{_wrap(self.a, substituted, 2)} / {_wrap(self.b, substituted, 3)}⌋"


@dataclass(frozen=True, eq=False)
class Round(Expr):
    """``⌈x⌉`` (``up``) or ``⌊x⌋`` of a float expression: ``math.ceil`` / ``int`` as the code applies them."""

    x: Expr
    up: bool

    def children(self) -> tuple[Expr, ...]:
        return (self.x,)

    def value(self) -> Number:
        return math.ceil(self.x.value()) if self.up else int(self.x.value())

    def render(self, substituted: bool) -> str:
        inner = self.x.render(substituted)
        return f"⌈{inner}⌉" if self.up else f"⌊{inner}⌋"


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """``min(a, b)`` / ``max(a, b)``."""

    name: Literal["min", "max"]
    args: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def value(self) -> Number:
        values = [a.value() for a in self.args]
        return min(values) if self.name == "min" else max(values)

    def render(self, substituted: bool) -> str:
        return f"{self.name}({', '.join(a.render(substituted) for a in self.args)})"


def add(*terms: Expr | None) -> Expr:
    """The sum of the terms given (None skipped); one term stays itself."""
    kept = [t for t in terms if t is not None]
    if not kept:
        return Const(0)
    if len(kept) == 1:
        return kept[0]
    flat: list[tuple[int, Expr]] = []
    for term in kept:
        flat.extend(term.terms if isinstance(term, Sum) else [(1, term)])
    return Sum(tuple(flat))


def sub(a: Expr, *b: Expr) -> Expr:
    flat = list(a.terms) if isinstance(a, Sum) else [(1, a)]
    return Sum(tuple(flat + [(-1, x) for x in b]))


def mul(*factors: Expr) -> Expr:
    return factors[0] if len(factors) == 1 else Product(tuple(factors))


def minimum(*args: Expr) -> Expr:
    return Call("min", tuple(args))


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


# ---------------------------------------------------------------------------------------------------------------
# Sources (each constant's origin; REFERENCE.md gives the commits read)

SRC_INVENTORY = (
    "measured: hfmem.inventory.count_parameters builds the checkpoint's own class on PyTorch's meta device "
    "(accelerate init_empty_weights, no storage) and sums numel over named_parameters() (tied weights once)"
)
SRC_ZERO = (
    "ZeRO paper (Rajbhandari et al. 2020, arXiv 1910.02054) §3.1: mixed-precision Adam keeps 2Ψ (16-bit weights) "
    "+ 2Ψ (16-bit gradients) + KΨ (fp32 master + Adam moments), K = 12"
)
SRC_ZERO_STAGES = (
    "ZeRO paper Fig. 1: stage 1 partitions the optimizer states (P_os), stage 2 also the gradients (P_os+g), "
    "stage 3 also the parameters (P_os+g+p), each over the N data-parallel GPUs"
)
SRC_DS_FLAT = (
    "DeepSpeed deepspeed/runtime/zero/stage_1_and_2.py (single_partition_of_fp32_groups) and stage3.py "
    "(fp32_partitioned_groups_flat): each GPU's optimizer sees one flat 1-D fp32 partition"
)
SRC_TM101 = "EleutherAI, Transformer Math 101 (blog.eleuther.ai/transformer-math): fp32 weights and gradients 4 bytes"
SRC_TORCH_STATES = (
    "torch/optim/adamw.py and adam.py: state exp_avg, exp_avg_sq = torch.zeros_like(param), so they take the "
    "parameter's dtype"
)
SRC_ADAMW = "torch/optim/adamw.py: AdamW keeps two moments per parameter, exp_avg and exp_avg_sq"
SRC_BNB_8BIT = (
    "bitsandbytes bitsandbytes/optim/optimizer.py @ 95f9af3 (Optimizer2State.init_state): uint8 states, one fp32 "
    "absmax per block of 256 (since 0.44.0, commit aa57bd89; 2048 before); tensors under min_8bit_size = 4096 "
    "elements keep fp32 states"
)
SRC_ADAFACTOR = (
    "transformers/optimization.py Adafactor.step: exp_avg_sq_row / exp_avg_sq_col for ≥ 2-D tensors, a full "
    "exp_avg_sq for 1-D, created after grad.float() (fp32); beta1=None keeps no exp_avg"
)
SRC_LION = "Chen et al. 2023, 'Symbolic Discovery of Optimization Algorithms' (Lion keeps one momentum)"
SRC_SGD = "torch/optim/sgd.py: momentum_buffer (one per parameter) only when momentum > 0"
SRC_PEFT_FP32 = (
    "peft tuners_utils.py _cast_adapter_dtype (get_peft_model autocast_adapter_dtype=True): 16-bit adapter weights "
    "are cast to fp32"
)
SRC_LORA = "Hu et al. 2021, LoRA (arXiv 2106.09685): a rank-r update B·A per adapted linear: r × (in + out) parameters"
SRC_DORA = "Liu et al. 2024, DoRA (arXiv 2402.09353): one trainable magnitude per output feature of each adapted linear"
SRC_QLORA = (
    "Dettmers et al. 2023, QLoRA (arXiv 2305.14314) §3: NF4 base weights in blocks of 64, double quantization of "
    "the absmax in blocks of 256"
)
SRC_BNB_4BIT = (
    "bitsandbytes functional.py quantize_4bit(blocksize=64): two 4-bit codes per byte + one fp32 absmax per 64 "
    "values; double quant: quantize_blockwise(absmax − offset, blocksize=256): uint8 absmax + fp32 per 256 + an "
    "fp32 offset"
)
SRC_DS_EST2 = (
    "DeepSpeed deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs: GPU 2Ψ + int(18Ψ/N) "
    "('18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit + 8_optimizer_states_32bit'), CPU × "
    "additional_buffer_factor 1.5"
)
SRC_DS_EST3 = (
    "DeepSpeed deepspeed/runtime/zero/stage3.py estimate_zero3_model_states_mem_needs: GPU 4·largest_layer_params + "
    "int(18Ψ/N), CPU × additional_buffer_factor 1.5"
)
SRC_OFFLOAD = (
    "ZeRO-Offload (Ren et al. 2021, arXiv 2101.06840): the fp32 master, the gradient partition and the optimizer "
    "states live in CPU RAM and CPU-Adam updates them in fp32"
)
SRC_TRACE = (
    "measured: hfmem.inventory.profile_activations runs the model's own forward with labels on the meta device under "
    "torch.autograd.graph.saved_tensors_hooks; every saved storage is counted once, parameters excluded"
)
SRC_CKPT = (
    "Korthikanti et al. 2022 (arXiv 2205.05198) §4 'full recomputation' (keep each layer's input, recompute one "
    "layer at a time) and §5 'selective recomputation' (recompute the attention core)"
)
SRC_TP_ACT = (
    "Korthikanti et al. 2022, Table 2: tensor parallelism splits what lies between the column- and row-parallel "
    "linears by t; sequence parallelism also splits the rest"
)
SRC_PP_1F1B = (
    "Narayanan et al. 2021 (arXiv 2104.04473) §2.2, Megatron-LM forward_backward_pipelining_without_interleaving: "
    "with 1F1B, stage k runs p − k − 1 warm-up forwards, so min(p − k, m) micro-batches are in flight"
)
SRC_PP_INTERLEAVED = (
    "Megatron-LM forward_backward_pipelining_with_interleaving warm-up count 2(p − k − 1) + (v − 1)p, + 1; "
    "Korthikanti et al. 2022 §4.2.3 (first stage: p micro-batches × (1 + (p − 1)/(p·v)))"
)
SRC_MEGATRON_TP = (
    "Megatron-LM (Shoeybi et al. 2019): column-/row-parallel linears, vocab-parallel embeddings and LM head split "
    "t ways; norms and biases replicated"
)
SRC_LOSS = (
    "transformers/loss/loss_utils.py ForCausalLMLoss: logits = logits.float(), then cross_entropy, which saves its "
    "fp32 log-softmax"
)
SRC_CUDA = (
    "pytorch/pytorch#86509 and #109888 (CUDA context 287 MB–430 MiB with lazy module loading), #120925 (32 MiB "
    "cuBLAS workspace on Hopper): hfmem's default 512 MiB, --cuda-context"
)
SRC_FRAG = (
    "REFERENCE.md §5: PyTorch's caching allocator reserves 5–30 % more than is allocated (torchtune#1185, "
    "cosmos-rl#388); hfmem's default 10 %, --fragmentation"
)
SRC_DDP = (
    "torch DistributedDataParallel docs, gradient_as_bucket_view=False (the default): 'the saved memory size will be "
    "equal to the total gradients size'"
)
SRC_DS_CONFIG = (
    "DeepSpeed deepspeed/runtime/zero/config.py defaults: reduce_bucket_size = 5e8, allgather_bucket_size = 5e8, "
    "stage3_prefetch_bucket_size = 5e7, sub_group_size = 1e9 (elements)"
)
SRC_DS_FP32_GRAD = (
    "DeepSpeed docs/code_docs memory.rst: gradients are converted to fp32 before the weight update ('need the 4 "
    "bytes per gradient')"
)
SRC_DS_GATHER = (
    "DeepSpeed stage3.py estimate_zero3_model_states_mem_needs: 4 × largest_layer_params (16-bit parameters + "
    "gradients of the largest layer, gathered)"
)
SRC_FSDP = (
    "torch FullyShardedDataParallel: forward_prefetch / backward_prefetch=BACKWARD_PRE keep the next unit gathered; "
    "the unit's gradients are unsharded until its reduce-scatter"
)
SRC_BNB_MATMUL = (
    "bitsandbytes MatMul4Bit.forward: F.dequantize_4bit(B, quant_state).to(A.dtype), a 16-bit copy of the weight "
    "for each matmul"
)
SRC_PEAK = (
    "hfmem.memory.peak: the forward, backward and optimizer-step moments are compared (README: 'Peak, not a blind sum')"
)
SRC_KV = (
    "measured: hfmem.inventory.profile_inference runs the model's own forward with transformers' DynamicCache on the "
    "meta device and reads every cached tensor (elements per token, heads, sliding windows)"
)
SRC_KV_TP = "vLLM's rule: KV heads are split over the tensor-parallel GPUs, and fewer heads than GPUs are replicated"
SRC_KV_DTYPE = "fp8 / int8 KV caches store one byte per element (their per-tensor scales are not counted)"
SRC_PREFILL = (
    "measured: hfmem.inventory.profile_inference follows every tensor the operators create during one prefill forward "
    "(a dispatch mode) until its last reference dies; the peak of live bytes, parameters and cache excluded"
)
SRC_PREFILL_CHUNK = (
    "vLLM max_num_batched_tokens, tuned around 2048 for chunked prefill: hfmem's default --prefill-chunk"
)
SRC_CAT = "transformers DynamicLayer.update: torch.cat([old, new]) allocates the grown layer beside the old one"
SRC_INT8 = "bitsandbytes LLM.int8 Int8Params: int8 values + one fp32 SCB scale per output row"
SRC_AWQ = (
    "AutoGPTQ QuantLinear / AWQ: qweight (bits-bit values packed in int32), per group of group_size inputs and per "
    "output one fp16 scale and one bits-bit zero (scales, qzeros); GPTQ adds an int32 g_idx per input; "
    "group_size default 128 (BaseQuantizeConfig)"
)
SRC_FP8 = "E4M3 weights with one fp32 scale per tensor; block-wise: transformers FineGrainedFP8Config weight_block_size"
SRC_MXFP4 = "OCP Microscaling Formats (MX) spec v1.0: 4-bit E2M1 values with one 8-bit E8M0 scale per 32"
SRC_QUANT_SKIP = (
    "Hugging Face quantization integrations leave embeddings, the LM head, norms, biases and modules_to_not_convert "
    "in 16 bits"
)

# ---------------------------------------------------------------------------------------------------------------
# Helpers

_DTYPE_WORD = {4: "fp32", 2: "16-bit", 1: "8-bit"}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _gib(num: Number) -> str:
    return f"{num / GIB:,.2f} GiB"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _stage_label(stages: Sequence[int], setup: TrainingSetup) -> str:
    if setup.parallel.fsdp is not None:
        return f"FSDP {setup.parallel.fsdp}"
    return "ZeRO-" + ", ".join(str(s) for s in stages)


def _merge_stages(rows: Sequence[tuple[int, Expr]], setup: TrainingSetup, unit: Unit = "bytes") -> list[Calculation]:
    """One calculation per distinct formula, labelled with the ZeRO stages that share it."""
    groups: dict[tuple[str, str], tuple[list[int], Expr]] = {}
    for stage, expr in rows:
        key = (expr.formula, expr.substituted)
        groups.setdefault(key, ([], expr))[0].append(stage)
    return [Calculation(_stage_label(stages, setup), expr, unit, tuple(stages)) for stages, expr in groups.values()]


def _sym(base: str, suffix: str) -> str:
    if not suffix:
        return base
    return f"{base}{suffix}" if "_" in base else f"{base}_{suffix}"


def _groups(values: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], int]]:
    """Distinct values with their counts, in order of first appearance."""
    counts: dict[tuple[Any, ...], int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return list(counts.items())


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
    per_layer: dict[int, int] = {}
    outside_before = outside_after = 0
    for p in inv.parameters:
        if p.layer_index is not None:
            per_layer[p.layer_index] = per_layer.get(p.layer_index, 0) + p.numel
        elif p.after_layers:
            outside_after += p.numel
        else:
            outside_before += p.numel
    terms: list[Expr] = []
    groups = _groups([(per_layer[i],) for i in sorted(per_layer)])
    for k, ((size,), count) in enumerate(groups, start=1):
        suffix = "" if len(groups) == 1 else str(k)
        terms.append(
            mul(
                Var(_sym("L", suffix), count, "transformer layers" + (f" of {size:,} parameters" if suffix else "")),
                Var(_sym("P_layer", suffix), size, "parameters of one layer"),
            )
        )
    if outside_before:
        terms.append(Var("P_before", outside_before, "parameters before the layers (embeddings)"))
    if outside_after:
        terms.append(Var("P_after", outside_after, "parameters after the layers (final norm, untied LM head)"))
    layers = len(per_layer)
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
            (Calculation("total", add(*terms), "parameters"),),
            (SRC_INVENTORY,),
        )
    )
    out.append(_trainable(report))
    embeddings = [p for p in inv.parameters if p.is_embedding]
    if embeddings and len(embeddings) <= 4:
        expr = add(*(mul(*(Const(d) for d in p.shape)) if len(p.shape) > 1 else Const(p.numel) for p in embeddings))
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
        expr = add(
            sub(
                Var("Ψ", inv.total_params, "all parameters"),
                Var("R", moe.routed_expert_params, "routed-expert parameters"),
            ),
            FloorDiv(
                mul(
                    Var("R", moe.routed_expert_params, "routed-expert parameters"),
                    Var("k", moe.experts_per_token, "experts per token"),
                ),
                Var("E", moe.num_experts, "routed experts"),
            ),
        )
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
    lora_sides = 0
    lora_numel = 0
    dora = 0
    other = 0
    for p in trained:
        if ".lora_" in p.name and "magnitude" not in p.name and len(p.shape) == 2 and rank in p.shape:
            # lora_A is [r, in], lora_B is [out, r] (embeddings: lora_embedding_A [r, vocab], _B [dim, r]).
            lora_sides += p.shape[1] if p.shape[0] == rank and ("_A" in p.name) else p.shape[0]
            lora_numel += p.numel
        elif "magnitude" in p.name:
            dora += p.numel
        else:
            other += p.numel
    terms: list[Expr] = []
    if lora_sides * rank == lora_numel:
        terms.append(
            mul(
                Var("r", rank, "LoRA rank (--lora-rank)"),
                Var("Σ_io", lora_sides, "Σ over adapted linears of (inputs + outputs)"),
            )
        )
    else:
        terms.append(Var("Ψ_AB", lora_numel + 0, "LoRA A and B matrices, summed tensor by tensor"))
    if dora:
        terms.append(Var("Ψ_mag", dora, "DoRA magnitudes: one per output feature of each adapted linear"))
    if other:
        terms.append(Var("Ψ_save", other, "modules_to_save: full trainable copies"))
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
        (Calculation("trainable", add(*terms), "parameters"),),
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


@dataclass(frozen=True)
class _Group:
    """Parameters that shard alike: the dense ones (or all), or the routed experts under expert parallelism."""

    suffix: str
    params: tuple[ParameterInfo, ...] | None  # None: a --params plan
    trainable: int
    frozen_count: int
    n: int
    n_meaning: str


def _state_groups(inv: ParameterInventory, setup: TrainingSetup) -> list[_Group]:
    n_meaning = "GPUs sharing the model states (data parallel" + (
        " × context parallel)" if setup.parallel.cp > 1 else ")"
    )
    if setup.parallel.fsdp == "hybrid_shard":
        n_meaning = "GPUs sharing the model states (hybrid_shard: within one node)"
    if not inv.has_shapes:
        return [_Group("", None, inv.trainable_params, 0, setup.num_gpus, n_meaning)]
    params = list(inv.parameters)

    def group(suffix: str, ps: list[ParameterInfo], n: int, meaning: str) -> _Group:
        return _Group(
            suffix,
            tuple(ps),
            sum(p.numel for p in ps if p.trainable),
            sum(p.numel for p in ps if not p.trainable),
            n,
            meaning,
        )

    if setup.parallel.ep == 1:
        return [group("", params, setup.num_gpus, n_meaning)]
    return [
        group("", [p for p in params if not p.is_routed_expert], setup.num_gpus, n_meaning),
        group(
            "E",
            [p for p in params if p.is_routed_expert],
            setup.expert_sharding_degree,
            "GPUs sharing the routed experts' states (sharding degree / ep)",
        ),
    ]


class _Symbols:
    """The operands of the model-state formulas of one group, built once."""

    def __init__(self, g: _Group, setup: TrainingSetup) -> None:
        spec = PRECISION_SPECS[setup.precision]
        tspec = trainable_spec(setup)
        s = g.suffix
        what = " (routed experts)" if s else ""
        self.group = g
        self.setup = setup
        self.psi_t = Var(_sym("Ψ_T", s), g.trainable, f"trainable parameters on this GPU before sharding{what}")
        self.n = Var(_sym("N", s), g.n, g.n_meaning)
        self.w = Var("w", tspec.weight_bytes, f"bytes per trained weight ({_DTYPE_WORD.get(tspec.weight_bytes, '')})")
        self.m = Var(
            "m",
            tspec.master_bytes,
            "bytes per fp32 master weight"
            if tspec.master_bytes
            else "bytes of master copy (none: the weights are their own)",
        )
        self.g = Var("g", tspec.grad_bytes, f"bytes per gradient ({_DTYPE_WORD.get(tspec.grad_bytes, '')})")
        self.s = Var("s", tspec.state_bytes, "bytes per optimizer-state element")
        self.w_base = Var(
            "w_B" if spec.weight_bytes != tspec.weight_bytes else "w",
            spec.weight_bytes,
            f"bytes per frozen base weight ({_DTYPE_WORD.get(spec.weight_bytes, '')})",
        )
        self.frozen = self._frozen(g, setup)

    def shard(self) -> Expr:
        return CeilDiv(self.psi_t, self.n)

    def _frozen(self, g: _Group, setup: TrainingSetup) -> Expr | None:
        """F: bytes of the frozen weights, as `hfmem.memory.methods.frozen_weight_bytes` sums them."""
        if g.params is None or not g.frozen_count:
            return None
        s = g.suffix
        frozen = [p for p in g.params if not p.trainable]
        if setup.method != "qlora":
            return mul(Var(_sym("Ψ_F", s), g.frozen_count, "frozen parameters"), self.w_base)
        quantized = [p for p in frozen if is_qlora_quantized(p)]
        plain = sum(p.numel for p in frozen) - sum(p.numel for p in quantized)
        q_count = sum(p.numel for p in quantized)
        codes = sum(-(-p.numel // 2) for p in quantized)
        blocks = sum(-(-p.numel // BNB_4BIT_BLOCKSIZE) for p in quantized)
        psi_q = Var(_sym("Ψ_Q", s), q_count, "frozen linear weights stored as NF4")
        data: Expr = (
            CeilDiv(psi_q, Const(2))
            if codes == -(-q_count // 2)
            else Var(_sym("D", s), codes, "NF4 codes, Σ⌈n/2⌉ per tensor")
        )
        k = Var(_sym("K", s), blocks, f"absmax blocks of {BNB_4BIT_BLOCKSIZE}, Σ⌈n/{BNB_4BIT_BLOCKSIZE}⌉ per tensor")
        if setup.finetune.double_quant:
            blocks2 = sum(_cdiv(_cdiv(p.numel, BNB_4BIT_BLOCKSIZE), BNB_DQ_BLOCKSIZE) for p in quantized)
            meta = add(
                k,
                mul(Const(4), Var(_sym("K2", s), blocks2, f"second-level blocks of {BNB_DQ_BLOCKSIZE} absmax values")),
                mul(Const(4), Var(_sym("T_Q", s), len(quantized), "NF4 tensors (one fp32 offset each)")),
            )
        else:
            meta = mul(Const(4), k)
        plain_term = (
            mul(
                Var(_sym("Ψ_16", s), plain, "other frozen parameters (embeddings, norms, LM head)"),
                Const(QLORA_COMPUTE_BYTES),
            )
            if plain
            else None
        )
        return add(data, meta, plain_term)


def _optimizer_expr(sym: _Symbols, setup: TrainingSetup, flat: Expr | None, state: Var | None = None) -> Expr:
    """Optimizer-state bytes: per real tensor (``flat`` None: ZeRO-0) or of one flat partition of ``flat`` elements.

    ``state``: bytes per state element (default: the trained tensors', `_Symbols.s`).
    """
    opt = setup.optimizer
    state = state or sym.s
    g = sym.group
    s = g.suffix
    if opt == "sgd":
        return Const(0)
    if flat is None and g.params is None:
        flat = sym.psi_t  # --params: one flat tensor
    if opt == "adamw":
        return mul(Const(2), flat if flat is not None else sym.psi_t, state)
    if opt in ("sgd-momentum", "lion"):
        return mul(flat if flat is not None else sym.psi_t, state)
    if opt == "adamw-8bit":
        if flat is not None:
            n = flat.value()
            if n == 0:
                return Const(0)
            if n < BNB_MIN_8BIT_SIZE:
                return mul(Const(2), flat, Const(4))
            return mul(Const(2), add(flat, mul(Const(4), CeilDiv(flat, Const(BNB_BLOCKSIZE)))))
        assert g.params is not None
        trained = [p for p in g.params if p.trainable]
        big = [p for p in trained if p.numel >= BNB_MIN_8BIT_SIZE]
        small = sum(p.numel for p in trained if p.numel < BNB_MIN_8BIT_SIZE)
        blocks = sum(-(-p.numel // BNB_BLOCKSIZE) for p in big)
        term_big = mul(
            Const(2),
            add(
                Var(
                    _sym("Ψ_8", s), sum(p.numel for p in big), f"trained elements in tensors of ≥ {BNB_MIN_8BIT_SIZE:,}"
                ),
                mul(Const(4), Var(_sym("B", s), blocks, f"blocks of {BNB_BLOCKSIZE}, Σ⌈n/{BNB_BLOCKSIZE}⌉ per tensor")),
            ),
        )
        term_small = (
            mul(
                Const(2),
                Const(4),
                Var(_sym("Ψ_32", s), small, f"trained elements in tensors under {BNB_MIN_8BIT_SIZE:,}"),
            )
            if small
            else None
        )
        return add(term_big, term_small)
    if opt == "adafactor":
        if flat is not None:
            return mul(Const(4), flat)
        assert g.params is not None
        trained = [p for p in g.params if p.trainable]
        rows = sum(p.numel // p.shape[-1] for p in trained if len(p.shape) >= 2)
        cols = sum(p.numel // p.shape[-2] for p in trained if len(p.shape) >= 2)
        ones = sum(p.numel for p in trained if len(p.shape) < 2)
        return mul(
            Const(4),
            add(
                Var(_sym("ΣR", s), rows, "Σ rows of the ≥ 2-D trained tensors (exp_avg_sq_row)"),
                Var(_sym("ΣC", s), cols, "Σ columns of the ≥ 2-D trained tensors (exp_avg_sq_col)"),
                Var(_sym("Ψ_1D", s), ones, "elements of 1-D trained tensors (full exp_avg_sq)"),
            ),
        )
    raise ValueError(f"unknown optimizer {opt}")


def _hfmem_states(sym: _Symbols, setup: TrainingSetup, zero: int) -> dict[str, Expr]:
    """weights / master / gradients / optimizer of one group at one ZeRO stage: `hfmem.memory.states.stage_memory`."""
    f = sym.frozen
    shard = sym.shard()
    if zero == 0:
        return {
            "weights": add(f, mul(sym.w, sym.psi_t)),
            "master": mul(sym.m, sym.psi_t),
            "gradients": mul(sym.g, sym.psi_t),
            "optimizer": _optimizer_expr(sym, setup, None),
        }
    if zero == 3:
        weights = add(CeilDiv(f, sym.n) if f is not None else None, mul(sym.w, shard))
    else:
        weights = add(f, mul(sym.w, sym.psi_t))
    gradients = mul(sym.g, shard if zero >= 2 else sym.psi_t)
    if setup.offload == "none":
        return {
            "weights": weights,
            "master": mul(sym.m, shard),
            "gradients": gradients,
            "optimizer": _optimizer_expr(sym, setup, shard) if shard.value() else Const(0),
        }
    if setup.offload == "optimizer+params":
        weights = Const(0)
    return {
        "weights": weights,
        "master": Const(0),
        "gradients": Const(0) if zero >= 2 else gradients,
        "optimizer": Const(0),
    }


def _cpu_expr(sym: _Symbols, setup: TrainingSetup) -> Expr:
    """CPU RAM per node with offload: the fp32 partition, its fp32 gradients and fp32 optimizer states per GPU."""
    shard = sym.shard()
    fp32 = Var("s_cpu", 4, "bytes per fp32 optimizer-state element on the CPU")
    per_gpu = add(
        mul(shard, add(Const(4), Const(4))),
        _optimizer_expr(sym, setup, shard, fp32) if shard.value() else Const(0),
    )
    if setup.offload == "optimizer+params":
        frozen = sym.group.frozen_count
        per_gpu = add(
            per_gpu,
            mul(CeilDiv(Var(_sym("Ψ_F", sym.group.suffix), frozen, "frozen parameters"), sym.n), sym.w_base)
            if frozen
            else None,
            mul(shard, sym.w),
        )
    return mul(per_gpu, Var("gpus", setup.gpus_per_node, "GPUs per node"))


def _deepspeed_states(inv: ParameterInventory, setup: TrainingSetup, zero: int) -> dict[str, Expr]:
    """DeepSpeed's estimator, split as `hfmem.memory.states.deepspeed_stage_memory` splits it."""
    p = Var("Ψ", inv.total_params, "parameters")
    n = Var("N", setup.num_gpus, "GPUs sharing the model states")
    ll = Var("LL", inv.largest_module_params, f"parameters of the largest module ({inv.largest_module_name})")
    factor = Const(DEEPSPEED_CPU_BUFFER_FACTOR)
    gpus = Var("gpus", setup.gpus_per_node, "GPUs per node")

    def part(k: int) -> Expr:
        return Round(Div(mul(Const(k), p), n), up=False)

    if zero == 2:
        if setup.offload == "none":
            return {
                "weights": mul(Const(2), p),
                "master": part(4),
                "gradients": sub(part(18), part(4), part(8)),
                "optimizer": part(8),
                "cpu": Round(mul(p, Const(4), gpus, factor), up=False),
            }
        return {
            "weights": mul(Const(2), p),
            "master": Const(0),
            "gradients": Const(0),
            "optimizer": Const(0),
            "cpu": Round(mul(p, Call("max", (mul(Const(4), n), Const(16))), factor), up=False),
        }
    gathered = mul(Const(2), ll)
    nodes = Var("nodes", setup.nodes, "nodes")
    if setup.offload == "none":
        return {
            "weights": add(gathered, part(2)),
            "master": part(4),
            "gradients": add(sub(part(18), part(2), part(4), part(8)), gathered),
            "optimizer": part(8),
            "cpu": Round(mul(ll, Const(4), gpus, factor), up=False),
        }
    k = 16 if setup.offload == "optimizer" else 18
    return {
        "weights": add(gathered, part(2)) if setup.offload == "optimizer" else gathered,
        "master": Const(0),
        "gradients": gathered,
        "optimizer": Const(0),
        "cpu": Round(mul(p, Const(k), Div(Const(1), nodes), factor), up=False),
    }


def _states_by_row(report: Report, rows: list[_Row]) -> list[dict[str, Expr]]:
    training = report.training
    assert training is not None
    setup = training.setup
    out = []
    for row in rows:
        zero = row.memory.zero_stage
        if setup.accounting == "deepspeed":
            out.append(_deepspeed_states(row.inventory, setup, zero))
            continue
        parts: dict[str, list[Expr]] = {"weights": [], "master": [], "gradients": [], "optimizer": [], "cpu": []}
        for g in _state_groups(row.inventory, setup):
            sym = _Symbols(g, setup)
            for key, expr in _hfmem_states(sym, setup, zero).items():
                parts[key].append(expr)
            if setup.offload != "none":
                parts["cpu"].append(_cpu_expr(sym, setup))
        out.append({key: add(*exprs) for key, exprs in parts.items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training: texts


def _precision_words(setup: TrainingSetup) -> str:
    return {
        "fp32": "fp32",
        "tf32": "fp32 (TF32 changes only the matmul arithmetic)",
        "bf16-mixed": "bf16",
        "fp16-mixed": "fp16",
        "bf16": "bf16",
        "fp16": "fp16",
    }[setup.precision]


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


def _model_state_explanations(report: Report, rows: list[_Row], states: list[dict[str, Expr]]) -> list[Explanation]:
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
        return tuple(_merge_stages([(r.memory.zero_stage, s[key]) for r, s in zip(rows, states, strict=True)], setup))

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
        + "They are counted as live at every moment: exact with gradient accumulation."
    )
    if setup.offload != "none":
        text += " With --offload, stages 2 and 3 stream the reduced partitions to the CPU."
    out.append(Explanation("training", "Gradients", text, calcs("gradients"), (SRC_ZERO, SRC_ZERO_STAGES)))

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
    }[opt]
    if not fsdp:
        opt_text += (
            " ZeRO stage 1 and up shards them: DeepSpeed gives each GPU's optimizer one flat 1-D partition of "
            "⌈Ψ_T / N⌉ elements"
            + (
                " (so 8-bit Adam has no small-tensor exception there and Adafactor cannot factor it)"
                if opt in ("adamw-8bit", "adafactor")
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
    }[opt]
    out.append(
        Explanation("training", "Optimizer states", opt_text, calcs("optimizer"), tuple(opt_sources + [SRC_DS_FLAT]))
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training: activations and logits


def _layer_expr(layer: LayerProfile, setup: TrainingSetup, suffix: str, *, full_ckpt: bool, tag: str = "S") -> Expr:
    """One layer's bytes on one GPU: `hfmem.memory.parallel.tensor_parallel_layer` applied to the measured layer."""
    par = setup.parallel
    t = Var("t", par.tp, "tensor-parallel degree")
    if full_ckpt:
        i = Var(_sym("I", suffix), layer.input_bytes, "bytes of one layer's inputs (measured)")
        return CeilDiv(i, t) if par.tp > 1 and par.sp else i
    s = Var(_sym(tag, suffix), layer.saved_bytes, "bytes one layer saves for backward (measured)")
    if par.tp == 1:
        return s
    if par.sp:
        return CeilDiv(s, t)
    split = Var(
        _sym("T" if tag == "S" else f"T{tag[-1]}", suffix),
        layer.tp_split_bytes,
        "the part of it tensor parallelism splits",
    )
    return add(sub(s, split), CeilDiv(split, t))


def _activation_parts(report: Report, row: _Row) -> tuple[Expr, Expr | None]:
    """(saved, recompute) for one row: `hfmem.memory.activations.estimate_activations` on the stage."""
    training = report.training
    assert training is not None and training.profile is not None
    setup = training.setup
    prof = training.profile
    ckpt = setup.grad_checkpointing
    held = row.pstage.layers
    layers = [prof.layers[i] for i in held]
    fused = [prof.fused_layers[i] for i in held]
    source = fused if ckpt == "selective" else layers
    if ckpt == "full":
        keys = [(layer.input_bytes,) for layer in source]
    else:
        keys = [(layer.saved_bytes, layer.tp_split_bytes) for layer in source]
    groups = _groups(keys)
    by_key = {}
    for layer, key in zip(source, keys, strict=True):
        by_key.setdefault(key, layer)
    terms: list[Expr] = []
    for k, (key, count) in enumerate(groups, start=1):
        suffix = "" if len(groups) == 1 else str(k)
        what = ("I" if ckpt == "full" else "S") + (f"_{suffix}" if suffix else "")
        terms.append(
            mul(
                Var(_sym("L", suffix), count, f"layers of {what} bytes each" if suffix else "layers on this GPU"),
                _layer_expr(by_key[key], setup, suffix, full_ckpt=ckpt == "full"),
            )
        )
    par = setup.parallel
    before = prof.other_bytes - prof.other_after_bytes
    if par.tp == 1 and par.pp == 1:
        other: Expr | None = (
            Var("O", prof.other_bytes, "bytes saved outside the layers (measured)") if prof.other_bytes else None
        )
    else:
        o_terms = []
        if row.pstage.holds_embeddings and before:
            o_terms.append(Var("O_b", before, "bytes saved before the layers: token ids, embeddings (measured)"))
        if row.pstage.holds_head and prof.other_after_bytes:
            o_terms.append(
                Var("O_a", prof.other_after_bytes, "bytes saved after the layers: final norm, LM head input")
            )
        other = add(*o_terms) if o_terms else None
        if other is not None and par.sp:
            other = CeilDiv(other, Var("t", par.tp, "tensor-parallel degree"))
    saved = add(*terms, other)
    factor = in_flight_microbatches(setup, row.pstage.index)
    if factor != 1:
        saved = Round(mul(saved, Var("f", factor, "micro-batches of activations in flight on this stage")), up=True)
    recompute: Expr | None = None
    if ckpt == "full" and layers:
        split = [row.profile.layers[k].saved_bytes for k in range(len(layers))] if row.profile else []
        biggest = max(range(len(layers)), key=lambda k: split[k])
        recompute = _layer_expr(layers[biggest], setup, "R", full_ckpt=False)
    elif ckpt == "selective" and layers:
        assert row.profile is not None
        gaps = [
            max(e.saved_bytes - f.saved_bytes, 0)
            for e, f in zip(row.profile.layers, row.profile.fused_layers, strict=True)
        ]
        biggest = max(range(len(layers)), key=lambda k: gaps[k])
        if gaps[biggest]:
            recompute = sub(
                _layer_expr(layers[biggest], setup, "e", full_ckpt=False, tag="S"),
                _layer_expr(fused[biggest], setup, "f", full_ckpt=False, tag="S"),
            )
    return saved, recompute


def _logits_exprs(report: Report, row: _Row) -> tuple[Expr, Expr, Expr, Expr]:
    """(G, Λ, at the loss in forward, when backward starts) for one row, as `estimate_activations` counts them."""
    training = report.training
    assert training is not None and training.profile is not None
    setup = training.setup
    prof = training.profile
    par = setup.parallel
    g: Expr = Var("G", prof.logits_bytes, "the logits tensor the model returns (measured)")
    lam: Expr = Var("Λ", prof.logits_saved_bytes, "the loss's saved fp32 log-softmax (measured)")
    if not row.pstage.holds_head:
        g, lam = Const(0), Const(0)
    elif par.tp > 1:
        t = Var("t", par.tp, "tensor-parallel degree")
        g, lam = CeilDiv(g, t), CeilDiv(lam, t)
    upcast = lam.value() > g.value()
    forward = add(g, mul(Const(2), lam)) if upcast else add(g, lam)
    backward = add(g, mul(Const(3), lam))
    return g, lam, forward, backward


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
    act_rows: list[tuple[int, Expr]] = []
    logit_rows: list[tuple[int, Expr]] = []
    for row in rows:
        saved, recompute = _activation_parts(report, row)
        _, _, fwd, bwd = _logits_exprs(report, row)
        est = row.activations
        assert est is not None
        phase = row.memory.peak_phase
        if phase == "forward":
            act_rows.append((row.memory.zero_stage, saved))
            logit_rows.append((row.memory.zero_stage, fwd))
        elif phase == "backward":
            if est.recompute_bytes > est.logits_backward_bytes and recompute is not None:
                act_rows.append((row.memory.zero_stage, add(saved, recompute)))
                logit_rows.append((row.memory.zero_stage, Const(0)))
            else:
                act_rows.append((row.memory.zero_stage, saved))
                logit_rows.append((row.memory.zero_stage, bwd))
        else:
            act_rows.append((row.memory.zero_stage, Const(0)))
            logit_rows.append((row.memory.zero_stage, Const(0)))
    seq = training.seq_len or prof.seq_len
    sizes = [layer.saved_bytes for layer in prof.layers]
    common = max(set(sizes), key=sizes.count) if sizes else 0
    tokens = prof.batch_size * prof.seq_len
    per_token = f"{common / max(tokens, 1):,.0f} bytes per token"
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
            "eager attention one layer's score matrices come back during backward. "
        )
    else:
        text += "No checkpointing: every layer's saved tensors stay until backward reaches that layer. "
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
        sources.append(SRC_CKPT)
    if par.tp > 1:
        sources.append(SRC_TP_ACT)
    if par.pp > 1:
        sources.append(SRC_PP_INTERLEAVED if par.pp_schedule == "interleaved" else SRC_PP_1F1B)
    out = [Explanation("training", "Activations", text, tuple(_merge_stages(act_rows, setup)), tuple(sources))]

    vocab = prof.vocab_size
    g_bytes = prof.logits_bytes
    elt = g_bytes // max(tokens * vocab, 1) if vocab else 0
    shape_note = (
        f" (= b × s × V × {elt} = {prof.batch_size} × {prof.seq_len:,} × {vocab:,} × {elt})"
        if vocab and elt and tokens * vocab * elt == g_bytes
        else ""
    )
    upcast = prof.logits_saved_bytes > prof.logits_bytes
    text = (
        f"The model's output scores, one per vocabulary entry per token: G = {g_bytes:,} bytes{shape_note}. "
        + (
            f"The loss upcasts them to fp32 and cross_entropy keeps its fp32 log-softmax, Λ = "
            f"{prof.logits_saved_bytes:,} bytes. At the loss in forward, G, the fp32 copy and Λ are live (G + 2Λ); "
            if upcast
            else f"cross_entropy keeps its log-softmax, Λ = {prof.logits_saved_bytes:,} bytes. At the loss in forward "
            "G and Λ are live (G + Λ); "
        )
        + "when backward starts, the loss's gradient and the gradient through the log-softmax are added (G + 3Λ). "
        + "Only the moment that is the peak is counted; when a checkpointed layer's recompute is larger, the "
        "vocabulary-sized tensors are already gone (0)."
        + (f" With tensor parallelism the LM head and loss are vocab-parallel (÷ t = {par.tp})." if par.tp > 1 else "")
        + (" With pipeline parallelism they live on the last stage only." if par.pp > 1 else "")
    )
    out.append(Explanation("training", "Logits", text, tuple(_merge_stages(logit_rows, setup)), (SRC_LOSS, SRC_TRACE)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training: overheads and the peak


_OVERHEAD_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "CUDA context + cuBLAS workspace": (
        "Memory the CUDA driver and cuBLAS take on every GPU before PyTorch allocates anything; PyTorch's own "
        "counters (memory_allocated) do not see it.",
        (SRC_CUDA,),
    ),
    "DDP gradient buckets": (
        "ZeRO-0 on several GPUs is plain DistributedDataParallel, which copies the gradients into its all-reduce "
        "buckets: a second copy of the gradients.",
        (SRC_DDP,),
    ),
    "DeepSpeed reduce bucket": (
        "ZeRO ≥ 1 reduces gradients through one bucket of reduce_bucket_size elements (5e8 by default), in the "
        "gradients' dtype, capped by the gradients there are.",
        (SRC_DS_CONFIG,),
    ),
    "ZeRO-3 gathered parameters + prefetch": (
        "ZeRO-3 gathers a whole module's weights just before it runs and frees them after: the largest module LL at "
        "16 bits (with its 16-bit gradients in backward for full fine-tuning), plus the next parameters prefetched, "
        "stage3_prefetch_bucket_size (5e7) elements.",
        (SRC_DS_GATHER, SRC_DS_CONFIG),
    ),
    "FSDP unsharded unit + prefetched unit (16-bit)": (
        "FSDP gathers one unit (one transformer layer, or the root: embeddings, final norm and LM head, if larger) "
        "whole before computing it, and prefetches the next: 2 units of U parameters at 16 bits.",
        (SRC_FSDP,),
    ),
    "FSDP unsharded gradients of one unit": (
        "In backward, one unit's gradients exist unsharded until its reduce-scatter.",
        (SRC_FSDP,),
    ),
    "QLoRA dequantized weight (16-bit)": (
        "bitsandbytes dequantizes a 4-bit weight to 16 bits for each matmul; the largest such weight, n_max "
        "elements × 2 bytes, is live while it runs.",
        (SRC_BNB_MATMUL,),
    ),
    "fp32 gradient partition at step": (
        "At the optimizer step DeepSpeed converts this GPU's gradient partition to fp32 (4 bytes per element); "
        "ZeRO-3 steps over sub-groups of at most sub_group_size (1e9) elements at a time.",
        (SRC_DS_FP32_GRAD, SRC_DS_CONFIG),
    ),
    "parameter all-gather bucket": (
        "After the step, ZeRO-1/2 all-gather the updated 16-bit weights through one bucket of allgather_bucket_size "
        "(5e8) elements.",
        (SRC_DS_CONFIG,),
    ),
    "Adafactor fp32 upcast of one tensor": (
        "Adafactor's step upcasts each 16-bit parameter (or, under ZeRO, the flat partition) to fp32, one at a time.",
        (SRC_ADAFACTOR,),
    ),
}


def _overhead_expr(
    name: str, row: _Row, setup: TrainingSetup, memory: StageMemory, activ: Expr, logits: Expr
) -> Expr | None:
    """The formula of one named overhead item, as `hfmem.memory.peak.overhead_items` computes it."""
    spec = PRECISION_SPECS[setup.precision]
    tspec = trainable_spec(setup)
    settings = setup.overheads
    inv = row.inventory
    psi_t = Var("Ψ_T", inv.trainable_params, "trainable parameters on this GPU")
    g = Var("g", tspec.grad_bytes, "bytes per gradient")
    w = Var("w", tspec.weight_bytes, "bytes per trained weight")
    w16 = Var("w" if spec.weight_bytes == tspec.weight_bytes else "w_B", spec.weight_bytes, "bytes per working weight")
    n = Var("N", setup.num_gpus, "GPUs sharing the model states")
    if name == "CUDA context + cuBLAS workspace":
        return Var("C", settings.cuda_context_bytes, "CUDA context + cuBLAS workspace per GPU")
    if name == "DDP gradient buckets":
        return mul(g, psi_t)
    if name == "DeepSpeed reduce bucket":
        return mul(minimum(Var("R_b", settings.reduce_bucket_elements, "reduce_bucket_size (elements)"), psi_t), g)
    if name == "ZeRO-3 gathered parameters + prefetch":
        ll = Var("LL", inv.largest_module_params, f"parameters of the largest module ({inv.largest_module_name})")
        per = add(w16, Var("g_B", spec.grad_bytes, "bytes per 16-bit gradient")) if setup.method == "full" else w16
        prefetch = minimum(
            Var("P_b", settings.prefetch_bucket_elements, "stage3_prefetch_bucket_size (elements)"),
            Var("Ψ", inv.total_params, "parameters on this GPU before sharding"),
        )
        return add(mul(ll, per), mul(prefetch, w16))
    if name == "FSDP unsharded unit + prefetched unit (16-bit)":
        unit, _ = fsdp_unit_params(inv)
        return mul(Const(2), Var("U", unit, "parameters of the largest FSDP unit"), w16)
    if name == "FSDP unsharded gradients of one unit":
        _, unit_t = fsdp_unit_params(inv)
        return mul(Var("U_T", unit_t, "trainable parameters of the largest FSDP unit"), g)
    if name == "QLoRA dequantized weight (16-bit)":
        largest = max((p.numel for p in inv.parameters if is_qlora_quantized(p)), default=0)
        return mul(Const(QLORA_COMPUTE_BYTES), Var("n_max", largest, "elements of the largest NF4 weight"))
    if name == "fp32 gradient partition at step":
        part: Expr = CeilDiv(psi_t, n)
        if memory.zero_stage == 3:
            part = minimum(part, Var("SG", settings.sub_group_elements, "sub_group_size (elements)"))
        return mul(Const(4), part)
    if name == "parameter all-gather bucket":
        return mul(
            minimum(Var("A_b", settings.allgather_bucket_elements, "allgather_bucket_size (elements)"), psi_t), w
        )
    if name == "Adafactor fp32 upcast of one tensor":
        if memory.zero_stage >= 1:
            return mul(Const(4), CeilDiv(psi_t, n))
        largest = max((p.numel for p in inv.parameters if p.trainable), default=0)
        return mul(Const(4), Var("n_max", largest, "elements of the largest trained tensor"))
    if name.startswith("allocator fragmentation"):
        buffers = sum(
            size
            for item, size in memory.overhead_items
            if "CUDA context" not in item and not item.startswith("allocator")
        )
        allocated = add(
            Var("weights", memory.weights_bytes, "weights"),
            Var("master", memory.master_weights_bytes, "master weights"),
            Var("grads", memory.gradients_bytes, "gradients"),
            Var("optim", memory.optimizer_states_bytes, "optimizer states"),
            Var("activ", activ.value(), "activations at this moment"),
            Var("logits", logits.value(), "logits at this moment"),
            Var("buffers", buffers, "the overhead lines above, CUDA context excluded"),
        )
        return Round(mul(allocated, Var("φ", settings.fragmentation, "fragmentation fraction")), up=False)
    return None


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
    act_by_stage = {c.zero_stages[i]: c.expr for c in acts[0].calculations for i in range(len(c.zero_stages))}
    logit_by_stage = {c.zero_stages[i]: c.expr for c in acts[1].calculations for i in range(len(c.zero_stages))}
    names: list[str] = []
    per_name: dict[str, list[tuple[int, Expr]]] = {}
    for row in rows:
        zero = row.memory.zero_stage
        for name, size in row.memory.overhead_items:
            expr = _overhead_expr(name, row, setup, row.memory, act_by_stage[zero], logit_by_stage[zero])
            if expr is None:
                expr = Var("X", size, f"{name} (as computed)")
            if name not in per_name:
                names.append(name)
            per_name.setdefault(name, []).append((zero, expr))
    names.sort(key=lambda name: name.startswith("allocator fragmentation"))
    out = []
    for name in names:
        if name.startswith("allocator fragmentation"):
            text = (
                "PyTorch's caching allocator reserves more than it hands out (rounding, freed blocks it keeps, "
                f"fragmentation): φ = {setup.overheads.fragmentation:.0%} of everything allocated at the peak moment "
                "(model states, activations, logits and the lines above; the CUDA context is not allocator memory)."
            )
            sources: tuple[str, ...] = (SRC_FRAG,)
        else:
            text, sources = _OVERHEAD_TEXT.get(name, ("An overhead hfmem adds; see README 'Overheads'.", ()))
        out.append(
            Explanation("training", f"Overhead: {name}", text, tuple(_merge_stages(per_name[name], setup)), sources)
        )

    # Peak
    peak_rows = []
    phase_notes = []
    for row in rows:
        m = row.memory
        expr = add(
            Var("weights", m.weights_bytes, "weights"),
            Var("master", m.master_weights_bytes, "master weights"),
            Var("grads", m.gradients_bytes, "gradients"),
            Var("optim", m.optimizer_states_bytes, "optimizer states"),
            Var("activ", m.activations_bytes, "activations live at the peak"),
            Var("logits", m.logits_bytes, "logits live at the peak"),
            Var("overhead", m.overhead_bytes, "the overhead lines live at the peak"),
        )
        peak_rows.append((m.zero_stage, expr))
        states = compute_training(row.inventory, replace(setup, zero_stages=(m.zero_stage,))).stages[0]
        totals = phase_candidates(row.inventory, setup, states, row.activations)
        label = _stage_label([m.zero_stage], setup)
        phase_notes.append(
            f"{label}: forward {_gib(totals[0].total_bytes)}, backward {_gib(totals[1].total_bytes)}, "
            f"step {_gib(totals[2].total_bytes)} → {_phase_words(m.peak_phase)}"
        )
    text = (
        "The predicted peak per GPU is not a blind sum of everything: hfmem compares three moments of a training "
        "step and reports the largest. At the loss in forward: the model states, every saved activation and the "
        "logits with the loss's fp32 copies. As backward starts: the loss gradients (or, with checkpointing, a "
        "re-materialised layer, whichever is larger). At the optimizer step: activations are gone and the step's "
        "buffers are live. Model states and the CUDA context are live throughout. Per row: "
        + "; ".join(phase_notes)
        + "."
    )
    out.append(Explanation("training", "Peak per GPU", text, tuple(_merge_stages(peak_rows, setup)), (SRC_PEAK,)))
    if setup.gpu is not None and training.unmeasured is None:  # unmeasured activations: the headroom is unknown
        fit_rows = [
            (
                r.memory.zero_stage,
                sub(
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


def _cpu_explanation(report: Report, rows: list[_Row], states: list[dict[str, Expr]]) -> Explanation | None:
    training = report.training
    assert training is not None
    setup = training.setup
    if not any(r.memory.cpu_bytes_per_node for r in rows):
        return None
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
    rows_cpu = [(r.memory.zero_stage, s["cpu"]) for r, s in zip(rows, states, strict=True)]
    return Explanation("training", "CPU RAM per node", text, tuple(_merge_stages(rows_cpu, setup)), sources)


def _layout_explanation(report: Report, rows: list[_Row]) -> Explanation:
    training = report.training
    assert training is not None
    setup = training.setup
    par = setup.parallel
    gpus = Var("gpus", setup.gpus_per_node, "GPUs per node")
    nodes = Var("nodes", setup.nodes, "nodes")
    world = mul(gpus, nodes) if setup.nodes > 1 else gpus
    mp = par.model_parallel_size
    if mp > 1:
        dp: Expr = FloorDiv(
            world,
            mul(
                Var("tp", par.tp, "tensor-parallel degree"),
                Var("pp", par.pp, "pipeline-parallel degree"),
                Var("cp", par.cp, "context-parallel degree"),
            ),
        )
    else:
        dp = world
    n: Expr = mul(dp, Var("cp", par.cp, "context-parallel degree")) if par.cp > 1 else dp
    if par.fsdp == "hybrid_shard":
        n = minimum(n, FloorDiv(gpus, Var("tp", par.tp, "tensor-parallel degree")) if par.tp > 1 else gpus)
    calcs = [Calculation("N", n, "GPUs")]
    text = (
        "N is how many GPUs share (shard) the model states. "
        + (
            f"Each model replica spans tp × pp × cp = {mp} GPUs, so there are gpus × nodes / {mp} data-parallel "
            "replicas; ZeRO/FSDP shard over data parallel × context parallel (context-parallel GPUs hold the same "
            "weights). "
            if mp > 1
            else "With data parallelism only, every GPU holds a replica and N = gpus × nodes. "
        )
        + ("hybrid_shard shards only within a node. " if par.fsdp == "hybrid_shard" else "")
        + ("With one GPU there is nothing to shard: every ZeRO stage holds the same. " if setup.num_gpus == 1 else "")
    )
    sources = [SRC_ZERO_STAGES]
    if par.ep > 1:
        calcs.append(
            Calculation(
                "N_E",
                FloorDiv(
                    Var("N", setup.num_gpus, "GPUs sharing the model states"),
                    Var("ep", par.ep, "expert-parallel degree"),
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
        p = Var("p", par.pp, "pipeline stages")
        k = Var("k", rows[0].pstage.index, "this stage's index")
        if par.pp_schedule == "interleaved":
            v = Var("v", par.virtual_stages, "model chunks per GPU")
            chunks = add(mul(Const(2), sub(p, k, Const(1))), mul(sub(v, Const(1)), p), Const(1))
            if par.microbatches is not None:
                chunks = minimum(chunks, mul(Var("m", par.microbatches, "micro-batches per step"), v))
            f: Expr = Div(chunks, v)
        else:
            f = sub(p, k)
            if par.microbatches is not None:
                f = minimum(f, Var("m", par.microbatches, "micro-batches per step"))
        calcs.append(Calculation(f"in flight on stage {rows[0].pstage.index}", f, "micro-batches"))
        sources.append(SRC_PP_INTERLEAVED if par.pp_schedule == "interleaved" else SRC_PP_1F1B)
    return Explanation("training", "GPUs and sharding", text.strip(), tuple(calcs), tuple(sources))


def _per_parameter(report: Report) -> Explanation | None:
    """The ZeRO paper's bytes per parameter before sharding, when every trained parameter costs the same."""
    training = report.training
    assert training is not None
    setup = training.setup
    states_per_param = {"adamw": 2, "sgd-momentum": 1, "lion": 1, "sgd": 0}.get(setup.optimizer)
    if states_per_param is None or setup.method != "full" or setup.accounting != "hfmem":
        return None
    tspec = trainable_spec(setup)
    terms: list[Expr] = [
        Var("w", tspec.weight_bytes, "bytes per weight"),
        Var("g", tspec.grad_bytes, "bytes per gradient"),
    ]
    if tspec.master_bytes:
        terms.append(Var("m", tspec.master_bytes, "bytes per fp32 master weight"))
    if states_per_param:
        terms.append(
            mul(
                Var("k", states_per_param, "optimizer states per parameter"),
                Var("s", tspec.state_bytes, "bytes per optimizer-state element"),
            )
        )
    expr = add(*terms)
    text = (
        f"Before any sharding, every trained parameter costs {expr.value()} bytes of model states: its weight (w), "
        "its gradient (g)"
        + (", an fp32 master copy (m)" if tspec.master_bytes else "")
        + (
            f" and {states_per_param} optimizer state{'s' if states_per_param > 1 else ''} (k × s)"
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


def _weights_expr(inv: ParameterInventory, scheme: QuantScheme) -> Expr:
    """The whole model's weight bytes under ``scheme``, as `hfmem.memory.quantization.weights_breakdown` sums them."""
    if not inv.has_shapes:
        width = scheme.plain_bytes or 2
        return mul(Var("Ψ", inv.total_params, "parameters"), Var("β", width, "bytes per weight"))
    model_is_16bit = is_16bit_model(inv)
    plain_by_width: dict[int, int] = {}
    quantized: list[ParameterInfo] = []
    q_data = q_meta = 0
    for p in inv.parameters:
        data, meta = tensor_bytes(p, scheme, model_is_16bit=model_is_16bit)
        if is_quantized(p, scheme):
            quantized.append(p)
            q_data += data
            q_meta += meta
        else:
            width = data // p.numel if p.numel else 0
            plain_by_width[width] = plain_by_width.get(width, 0) + p.numel
    terms: list[Expr] = []
    if quantized:
        bits = scheme.bits
        q_count = sum(p.numel for p in quantized)
        psi_q = Var("Ψ_Q", q_count, "quantized parameters (linear / expert weights)")
        exact_data = -(-q_count * bits // 8)
        data_expr: Expr = (
            CeilDiv(mul(psi_q, Var("bits", bits, "bits per quantized value")), Const(8))
            if exact_data == q_data
            else Var("D", q_data, "quantized values, summed tensor by tensor")
        )
        terms.append(data_expr)
        terms.append(_metadata_expr(quantized, scheme, q_meta))
    for width, count in sorted(plain_by_width.items(), reverse=True):
        terms.append(
            mul(
                Var(
                    f"Ψ_{width * 8}b",
                    count,
                    f"parameters kept at {width} bytes"
                    + (" (16-bit beside the quantized ones)" if quantized and width == 2 else ""),
                ),
                Const(width),
            )
        )
    return add(*terms)


def _metadata_expr(quantized: list[ParameterInfo], scheme: QuantScheme, total: int) -> Expr:
    """Scales / zeros / absmax of the quantized tensors, by layout; the summed value if no closed form is exact."""
    layout = scheme.layout
    count = len(quantized)
    expr: Expr | None = None
    if layout == "bnb-4bit":
        blocks = sum(-(-p.numel // BNB_4BIT_BLOCKSIZE) for p in quantized)
        k = Var("K", blocks, f"absmax blocks of {BNB_4BIT_BLOCKSIZE} values, Σ⌈n/{BNB_4BIT_BLOCKSIZE}⌉ per tensor")
        if scheme.double_quant:
            blocks2 = sum(_cdiv(_cdiv(p.numel, BNB_4BIT_BLOCKSIZE), BNB_DQ_BLOCKSIZE) for p in quantized)
            expr = add(
                k,
                mul(Const(4), Var("K2", blocks2, f"second-level blocks of {BNB_DQ_BLOCKSIZE} absmax values")),
                mul(Const(4), Var("T_Q", count, "quantized tensors (one fp32 offset each)")),
            )
        else:
            expr = mul(Const(4), k)
    elif layout == "bnb-int8":
        rows = sum(p.numel // p.shape[-1] for p in quantized)
        expr = mul(Const(4), Var("rows", rows, "output rows of the quantized weights (one fp32 SCB each)"))
    elif layout == "fp8-tensor":
        expr = mul(Const(4), Var("T_Q", count, "quantized tensors (one fp32 scale each)"))
    elif layout == "fp8-block":
        r, c = scheme.block
        blocks = 0
        for p in quantized:
            out_f = p.shape[-2] if len(p.shape) >= 2 else 1
            stacks = p.numel // (out_f * p.shape[-1])
            blocks += stacks * -(-out_f // r) * -(-p.shape[-1] // c)
        expr = mul(Const(4), Var("K", blocks, f"{r}×{c} blocks (one fp32 weight_scale_inv each)"))
    elif layout == "mxfp4":
        blocks = sum(-(-p.numel // MXFP4_BLOCKSIZE) for p in quantized)
        expr = Var("K", blocks, f"blocks of {MXFP4_BLOCKSIZE} values (one uint8 E8M0 scale each)")
    if expr is None or expr.value() != total:
        return Var("M", total, "scales, zeros and absmax values, summed tensor by tensor")
    return expr


def _kv_layer_expr(layer: KvLayer, suffix: str, inf: InferenceEstimate, count: Var | None) -> Expr:
    """One group's cache bytes per GPU: `hfmem.memory.inference.kv_layer_bytes` × the layers in the group."""
    setup = inf.setup
    c = Var("c", inf.context, "tokens of context per sequence")
    b = Var("b", setup.batch_size, "sequences (--batch-size)")
    beta_value = (
        layer.element_bytes if layer.kind == "state" or setup.kv_dtype is None else KV_DTYPE_BYTES[setup.kv_dtype]
    )
    beta = Var(_sym("β", suffix), beta_value, "bytes per cached element")
    if layer.kind == "state":
        core: Expr = Var(_sym("z", suffix), layer.fixed_elements, "elements of the fixed recurrent state")
    else:
        e = Var(_sym("e", suffix), layer.elements_per_token, "cached elements per token (K and V of every KV head)")
        tokens: Expr = (
            minimum(c, Var(_sym("W", suffix), layer.window_tokens, "sliding window (tokens)"))
            if layer.kind == "sliding" and layer.window_tokens
            else c
        )
        held = max(1, -(-layer.heads // setup.tp))
        if setup.tp > 1:
            growing: Expr = FloorDiv(
                mul(e, tokens, Var(_sym("h_t", suffix), held, "KV heads per GPU, ⌈h / tp⌉, at least 1")),
                Var(_sym("h", suffix), layer.heads, "KV heads"),
            )
        else:
            growing = mul(e, tokens)
        core = (
            add(growing, Var(_sym("z", suffix), layer.fixed_elements, "fixed elements"))
            if layer.fixed_elements
            else growing
        )
    per_layer = mul(core, b, beta)
    return mul(count, per_layer) if count is not None else per_layer


def _kv_key(layer: KvLayer) -> tuple[Any, ...]:
    return (
        layer.kind,
        layer.window_tokens,
        layer.heads,
        layer.elements_per_token,
        layer.fixed_elements,
        layer.element_bytes,
    )


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
        whole: Expr = (
            add(
                Var("D", inf.weights.quantized_data_bytes, "quantized values"),
                Var("M", inf.weights.quantization_metadata_bytes, "quantization metadata"),
                Var("U", inf.weights.unquantized_bytes, "unquantized tensors"),
            )
            if inf.weights.quantized_params
            else Var("U", inf.weights.unquantized_bytes, "bytes of the base model's tensors")
        )
    else:
        whole = _weights_expr(base_inv, scheme)
    calcs = [Calculation("whole model", whole)]
    if setup.tp > 1:
        split = inf.weights_bytes
        replicated = 0
        two_d = 0
        if base_inv is not None and base_inv.has_shapes:
            model_is_16bit = is_16bit_model(base_inv)
            for p in base_inv.parameters:
                data, meta = tensor_bytes(p, scheme, model_is_16bit=model_is_16bit)
                if len(p.shape) >= 2:
                    two_d += data + meta
                else:
                    replicated += data + meta
        per_gpu: Expr = add(
            CeilDiv(Var("W_2D", two_d, "bytes of the ≥ 2-D tensors (split)"), tp),
            Var("W_1D", replicated, "bytes of the 1-D tensors (norms, biases: replicated)") if replicated else None,
        )
        if per_gpu.value() != split:
            per_gpu = Var(
                "W_gpu", split, "per GPU: each ≥ 2-D tensor ⌈bytes / tp⌉, 1-D tensors whole, summed tensor by tensor"
            )
        calcs.append(Calculation("per GPU", per_gpu))
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
    src = {
        "plain": (SRC_INVENTORY,),
        "bnb-4bit": (SRC_BNB_4BIT, SRC_QLORA, SRC_QUANT_SKIP),
        "bnb-int8": (SRC_INT8, SRC_QUANT_SKIP),
        "gptq": (SRC_AWQ, SRC_QUANT_SKIP),
        "awq": (SRC_AWQ, SRC_QUANT_SKIP),
        "fp8-tensor": (SRC_FP8, SRC_QUANT_SKIP),
        "fp8-block": (SRC_FP8, SRC_QUANT_SKIP),
        "mxfp4": (SRC_MXFP4, SRC_QUANT_SKIP),
    }[layout]
    out.append(Explanation("inference", "Weights", text.strip(), tuple(calcs), src))

    # KV cache
    layers = inf.kv_layers
    groups = _groups([_kv_key(layer) for layer in layers])
    first: dict[tuple[Any, ...], KvLayer] = {}
    for layer in layers:
        first.setdefault(_kv_key(layer), layer)
    terms = []
    token_terms = []
    for k, (key, count) in enumerate(groups, start=1):
        suffix = "" if len(groups) == 1 else str(k)
        layer = first[key]
        n_var = Var(
            _sym("n", suffix),
            count,
            f"{layer.kind} layers" + (f" (window {layer.window_tokens:,})" if layer.window_tokens else ""),
        )
        terms.append(_kv_layer_expr(layer, suffix, inf, n_var))
        if layer.kind != "state":
            beta_value = layer.element_bytes if setup.kv_dtype is None else KV_DTYPE_BYTES[setup.kv_dtype]
            e = Var(_sym("e", suffix), layer.elements_per_token, "cached elements per token (K and V of every KV head)")
            beta = Var(_sym("β", suffix), beta_value, "bytes per cached element")
            if setup.tp > 1:
                held = max(1, -(-layer.heads // setup.tp))
                per_tok: Expr = FloorDiv(
                    mul(e, Var(_sym("h_t", suffix), held, "KV heads per GPU")),
                    Var(_sym("h", suffix), layer.heads, "KV heads"),
                )
            else:
                per_tok = e
            token_terms.append(mul(n_var, per_tok, beta))
    kv_calcs = [Calculation("per GPU", add(*terms)), Calculation("per token per sequence", add(*token_terms))]
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
        per_sequence = Var("s", sum(size for _, size in states), f"state bytes per sequence, {len(states)} layers")
        out.append(
            Explanation(
                "inference",
                "Recurrent state",
                "What a recurrent layer (Mamba, linear attention) caches instead of keys and values: a fixed-size "
                "state per sequence, whatever the context (Mamba: a d_inner × conv_kernel convolution state in the "
                "model's dtype and a d_inner × state_size SSM state in fp32 per layer). Read from the model's own "
                "cache after one token, tensor by tensor at the dtype it is stored in; held whole on every GPU.",
                (Calculation("per GPU", mul(Var("b", setup.batch_size, "sequences (--batch-size)"), per_sequence)),),
                (SRC_KV,),
            )
        )

    # Activations of one prefill chunk
    prof = inf.profile
    if prof is not None:
        a = Var("A", prof.activation_peak_bytes, "peak of live tensors in one prefill forward (measured)")
        lg = Var("Lg", prof.logits_bytes, "the next-token logits in fp32 (measured)")
        if prof.batch_size == setup.batch_size:
            act: Expr = add(a, lg)
        else:
            b = Var("b", setup.batch_size, "sequences")
            b0 = Var("b_0", prof.batch_size, "sequences traced")
            act = add(CeilDiv(mul(a, b), b0), FloorDiv(mul(lg, b), b0))
    else:
        act = Var("A", inf.activations_bytes, "activations of one prefill chunk")
    text = (
        f"The working memory of one prefill forward of b = {setup.batch_size} × {inf.prefill_tokens:,} prompt tokens "
        "(--prefill-chunk). Measured, not a formula: the model's own forward runs on the meta device and hfmem follows "
        "every tensor the operators create until its last reference dies, as the caching allocator sees it; A is the "
        "peak of live bytes (weights and cache excluded), Lg the fp32 next-token logits generate() keeps. It is "
        "assumed to run while the cache is full, as a serving engine prefills new requests beside running ones."
    )
    out.append(
        Explanation(
            "inference", "Activations (prefill)", text, (Calculation("per GPU", act),), (SRC_PREFILL, SRC_PREFILL_CHUNK)
        )
    )

    # Overheads
    largest_layer = max(
        layers,
        key=lambda layer: kv_layer_bytes(
            layer, context=inf.context, batch_size=setup.batch_size, kv_dtype=setup.kv_dtype, tp=setup.tp
        ),
        default=None,
    )
    buffers = 0
    for name, size in inf.overhead_items:
        if name.startswith("CUDA context"):
            expr: Expr = Var("C", setup.overheads.cuda_context_bytes, "CUDA context + cuBLAS workspace per GPU")
            text, sources_t = _OVERHEAD_TEXT["CUDA context + cuBLAS workspace"]
        elif name.startswith("DynamicCache append copy") and largest_layer is not None:
            key = _kv_key(largest_layer)
            idx = [g for g, _ in groups].index(key)
            suffix = "" if len(groups) == 1 else str(idx + 1)
            expr = _kv_layer_expr(largest_layer, suffix, inf, None)
            text = (
                "When the cache grows, DynamicCache concatenates (torch.cat) the new token onto a layer's tensors, so "
                "the grown layer is allocated beside the old one for a moment: one layer's cache, the largest."
            )
            sources_t = (SRC_CAT,)
        elif name.startswith("bitsandbytes 4-bit dequantized"):
            if base_inv is None:
                expr = mul(Var("n_gpu", size // 2, "elements of the largest quantized linear on one GPU"), Const(2))
            else:
                largest = max((p.numel for p in base_inv.parameters if is_quantized(p, scheme)), default=0)
                expr = mul(CeilDiv(Var("n_max", largest, "elements of the largest quantized linear"), tp), Const(2))
            text = (
                "Prefill matmuls with more than one token take bitsandbytes' dequantize path: the largest 4-bit "
                "linear exists as a 16-bit copy while it runs."
            )
            sources_t = (SRC_BNB_MATMUL,)
        elif name.startswith("allocator fragmentation"):
            allocated = add(
                Var("kv", inf.kv_cache_bytes, "KV cache"),
                *([state_var] if inf.recurrent_state_bytes else []),
                Var("activ", inf.activations_bytes, "prefill activations"),
                Var("buffers", buffers, "the overhead lines above, CUDA context excluded"),
            )
            expr = Round(mul(allocated, Var("φ", setup.overheads.fragmentation, "fragmentation fraction")), up=False)
            text = (
                f"Allocator slack: φ = {setup.overheads.fragmentation:.0%} of what is allocated and freed while "
                "serving (cache, activations, transients); the weights are allocated once at load and not counted."
            )
            sources_t = (SRC_FRAG,)
        else:
            expr = Var("X", size, f"{name} (as computed)")
            text, sources_t = "An overhead hfmem adds; see README 'Inference'.", ()
        if not name.startswith(("CUDA context", "allocator fragmentation")):
            buffers += size
        out.append(Explanation("inference", f"Overhead: {name}", text, (Calculation("per GPU", expr),), sources_t))

    total = add(
        Var("weights", inf.weights_bytes, "weights per GPU"),
        Var("kv", inf.kv_cache_bytes, "KV cache per GPU"),
        *([state_var] if inf.recurrent_state_bytes else []),
        Var("activ", inf.activations_bytes, "prefill activations"),
        Var("overhead", inf.overhead_bytes, "the overhead lines"),
    )
    calcs = [Calculation("per GPU", total)]
    if setup.gpu is not None:
        calcs.append(
            Calculation(
                "headroom",
                sub(
                    Var("usable", setup.gpu.usable_bytes, f"memory PyTorch sees on {setup.gpu.name}"),
                    Var("total", inf.total_bytes, "the total above"),
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
# Public API


def explain(report: Report) -> tuple[Explanation, ...]:
    """Every number of ``report``, component by component: parameters, then training, then inference.

    Example:
        >>> from hfmem import estimate  # doctest: +SKIP
        >>> records = explain(estimate(params=7_000_000_000))  # doctest: +SKIP
        >>> records[0].calculations[0].value  # doctest: +SKIP
        7000000000
    """
    return tuple(_parameters(report) + _training(report) + _inference(report))


def explanation_records(report: Report) -> list[dict[str, Any]]:
    """The ``explanation`` list of ``--json --explain``: one record per component (README: JSON output)."""
    records = []
    for item in explain(report):
        records.append(
            {
                "section": item.section,
                "component": item.component,
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
}


def _value_text(calc: Calculation) -> str:
    value = calc.value
    if calc.unit == "bytes":
        if abs(value) >= GIB // 100 or value == 0:
            return f"{value:,} B ({value / GIB:,.2f} GiB)"
        return f"{value:,} B ({value / 2**20:,.2f} MiB)"
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
