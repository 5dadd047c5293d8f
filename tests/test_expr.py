"""The expression type, and the law that makes ``--explain`` exact: every formula of `hfmem.memory` gives the same
number on the integer path and on the symbolic path evaluated.

Each formula is called twice with random integers: once with the plain ints (what the plan does), once with every
operand wrapped in a named `Var` (what ``--explain`` does). The tree's value must equal the int result, and its
substituted rendering, evaluated here with exact fractions (`tests.test_explain._evaluate`, not hfmem's code), must
too.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hfmem.memory import expr as E
from hfmem.memory.activations import (
    ActivationEstimate,
    bytes_per_token,
    logit_element_bytes,
    logits_backward_bytes,
    logits_forward_bytes,
    micro_batch_tokens,
    profile_logit_element_bytes,
    profile_tokens,
    typical_layer_saved_bytes,
)
from hfmem.memory.expr import Const, Expr, Var, ceil_div, cite, floor_div, lift, maximum, minimum, total, trunc
from hfmem.memory.inference import (
    dequant_transient_bytes,
    kv_cache_bytes,
    kv_cache_bytes_per_token,
    largest_kv_layer_bytes,
    prefill_activation_bytes,
)
from hfmem.memory.methods import FrozenCounts, adapter_params, count_adapters, frozen_bytes
from hfmem.memory.parallel import (
    active_params_per_token,
    data_parallel_degree,
    expert_sharding_degree,
    in_flight,
    layer_sums,
    parameter_count,
    sharding_degree,
    stage_other_bytes,
    tensors_params,
    tp_input_bytes,
    tp_saved_bytes,
)
from hfmem.memory.peak import OverheadInputs, fragmentation_bytes, headroom_bytes, overhead_terms, phase_bytes
from hfmem.memory.quantization import (
    QuantCounts,
    QuantScheme,
    bnb_4bit_metadata,
    is_16bit_model,
    quantized_metadata_bytes,
    scheme_for_dtype,
    tensor_bytes,
    weight_bytes,
    weight_operands,
    weights_breakdown,
    weights_total_bytes,
)
from hfmem.memory.states import (
    StateInputs,
    TensorCounts,
    deepspeed_state_bytes,
    flat_partition_state_bytes,
    group_state_bytes,
    paged_state_bytes,
    tensor_state_bytes,
)
from hfmem.types import (
    ActivationProfile,
    FinetuneSettings,
    KvLayer,
    LayerProfile,
    OverheadSettings,
    ParallelSettings,
    ParameterInfo,
    ParameterInventory,
    TrainingSetup,
)
from tests.test_explain import _evaluate

OPTIMIZERS = ("adamw", "adamw-8bit", "sgd", "sgd-momentum", "adafactor", "lion", "paged-adamw", "paged-adamw-8bit")
COUNTS = st.integers(min_value=0, max_value=10**12)
POSITIVE = st.integers(min_value=1, max_value=4096)
BYTES = st.sampled_from((1, 2, 4))
PHASES = ("forward", "backward", "optimizer_step")


def symbolic(obj: Any, prefix: str = "") -> Any:
    """The dataclass ``obj`` with every int field a `Var` named after the field (0 stays 0, as explain does)."""
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and value:
            changes[f.name] = Var(f"{prefix}{f.name}", value, f.name)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = symbolic(value, f"{f.name}.")
    return dataclasses.replace(obj, **changes)


def same(plain: Any, symbolic_result: Any) -> None:
    """The int result equals the tree's value and its substituted rendering evaluated exactly."""
    if dataclasses.is_dataclass(plain):
        for f in dataclasses.fields(plain):
            same(getattr(plain, f.name), getattr(symbolic_result, f.name))
        return
    tree = lift(symbolic_result)
    assert tree.value() == plain, tree.formula
    assert type(tree.value()) is type(plain)
    if isinstance(plain, int):
        assert _evaluate(tree.substituted) == plain, tree.substituted


# ---------------------------------------------------------------------------------------------------------------
# The type itself


def test_helpers_return_plain_numbers_on_plain_input() -> None:
    assert ceil_div(7, 2) == 4 and type(ceil_div(7, 2)) is int
    assert floor_div(7, 2) == 3
    assert minimum(3, 5) == 3 and maximum(3, 5) == 5
    assert trunc(2.9) == 2 and E.ceil(2.1) == 3
    assert total([1, 2, 3]) == 6
    assert cite(4, "fp32") == 4 and type(cite(4, "fp32")) is int


def test_a_formula_renders_in_symbols_and_values() -> None:
    w = Var("w", 2, "bytes per weight", "ZeRO §3.1")
    psi = Var("Ψ_T", 6_738_415_616, "trainable parameters")
    n = Var("N", 8, "GPUs")
    shard = w * ceil_div(psi, n)
    assert shard.formula == "w × ⌈Ψ_T / N⌉"
    assert shard.substituted == "2 × ⌈6,738,415,616 / 8⌉"
    assert shard.value() == 2 * 6_738_415_616 // 8
    assert shard.sources() == ("ZeRO §3.1",)
    assert (shard + 0).formula == shard.formula  # adding a literal 0 drops out
    assert (psi - (w + n)).formula == "Ψ_T − (w + N)"
    assert ceil_div(0, n) == 0 and floor_div(psi, 1) is psi


def test_sources_come_from_the_leaves() -> None:
    tree = cite(2, "torch/optim/adamw.py", Var("x", 1, "")) * Var("Ψ", 10, "p", "inventory") * Const(4, "IEEE 754")
    assert tree.sources() == ("torch/optim/adamw.py", "inventory", "IEEE 754")


@given(a=st.integers(0, 10**15), b=st.integers(1, 10**6), c=st.integers(0, 10**9), f=st.floats(0, 1))
def test_nodes_evaluate_as_python_does(a: int, b: int, c: int, f: float) -> None:
    x, y, z, phi = Var("a", a, ""), Var("b", b, ""), Var("c", c, ""), Var("φ", f, "")
    cases: list[tuple[Expr, Any]] = [
        (ceil_div(x, y), -(-a // b)),
        (floor_div(x, y), a // y.number),
        (minimum(x, z) * y, min(a, c) * b),
        (maximum(4 * y, 16), max(4 * b, 16)),
        (trunc(x * phi), int(a * f)),
        (trunc(4 * x / y), int(4 * a / b)),
        (x - z + y, a - c + b),
        (x - (z + y), a - (c + b)),
        (E.ceil(z * (y / y)), math.ceil(c * (b / b))),
    ]
    for tree, expected in cases:
        assert tree.value() == expected, tree.formula
        if isinstance(expected, int) and "φ" not in tree.formula:
            assert _evaluate(tree.substituted) == Fraction(expected), tree.substituted


# ---------------------------------------------------------------------------------------------------------------
# Every formula: integer path == symbolic path evaluated


def _setup(
    optimizer: str,
    offload: str,
    stage: int,
    fsdp: str | None = None,
    method: str = "full",
    in_backward: bool = False,
    impl: str = "foreach",
) -> TrainingSetup:
    finetune = FinetuneSettings(method) if method == "full" else FinetuneSettings(method)  # type: ignore[arg-type]
    return TrainingSetup(
        optimizer=optimizer,  # type: ignore[arg-type]
        offload=offload,  # type: ignore[arg-type]
        zero_stages=(stage,),
        parallel=ParallelSettings(fsdp=fsdp),  # type: ignore[arg-type]
        finetune=finetune,
        optimizer_in_backward=in_backward,
        optimizer_impl=impl,  # type: ignore[arg-type]
    )


tensor_counts = st.builds(TensorCounts, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS)


@settings(max_examples=100, deadline=None)
@given(optimizer=st.sampled_from(OPTIMIZERS), counts=tensor_counts, state=BYTES, flat=COUNTS)
def test_optimizer_formulas(optimizer: str, counts: TensorCounts, state: int, flat: int) -> None:
    s = Var("s", state, "")
    same(tensor_state_bytes(optimizer, counts, state), tensor_state_bytes(optimizer, symbolic(counts), s))  # type: ignore[arg-type]
    n = Var("n", flat, "") if flat else 0
    same(flat_partition_state_bytes(optimizer, flat, state), flat_partition_state_bytes(optimizer, n, s))  # type: ignore[arg-type]
    same(paged_state_bytes(optimizer, counts), paged_state_bytes(optimizer, symbolic(counts)))  # type: ignore[arg-type]


state_inputs = st.builds(
    StateInputs,
    COUNTS,
    COUNTS,
    COUNTS,
    POSITIVE,
    BYTES,
    st.sampled_from((0, 4)),
    BYTES,
    BYTES,
    BYTES,
    COUNTS,
    POSITIVE,
    COUNTS,
    COUNTS,
)


@settings(max_examples=150, deadline=None)
@given(
    optimizer=st.sampled_from(OPTIMIZERS),
    offload=st.sampled_from(("none", "optimizer", "optimizer+params")),
    stage=st.sampled_from((0, 1, 2, 3)),
    x=state_inputs,
    in_backward=st.booleans(),
)
def test_model_state_formulas(optimizer: str, offload: str, stage: int, x: StateInputs, in_backward: bool) -> None:
    setup = _setup(optimizer, offload, stage, in_backward=in_backward)
    plain, sym = group_state_bytes(setup, stage, x), group_state_bytes(setup, stage, symbolic(x))
    same(plain, sym)
    same(plain.gpu_bytes, sym.gpu_bytes)
    assert plain.gpu_bytes == plain.weights + plain.master + plain.gradients + plain.optimizer


@settings(max_examples=100, deadline=None)
@given(
    offload=st.sampled_from(("none", "optimizer", "optimizer+params")),
    stage=st.sampled_from((2, 3)),
    p=COUNTS,
    n=POSITIVE,
    ll=COUNTS,
    gpus=POSITIVE,
    nodes=POSITIVE,
)
def test_deepspeed_formulas(offload: str, stage: int, p: int, n: int, ll: int, gpus: int, nodes: int) -> None:
    setup = _setup("adamw", offload, stage)
    plain = deepspeed_state_bytes(setup, stage, p, n, ll, gpus, nodes)
    names = ("Ψ", "N", "LL", "gpus", "nodes")
    operands = [Var(k, v, k) if v else 0 for k, v in zip(names, (p, n, ll, gpus, nodes), strict=True)]
    symbolic_result = deepspeed_state_bytes(setup, stage, *operands)
    for f in dataclasses.fields(plain):  # float arithmetic inside int(): compare values, not exact renderings
        assert lift(getattr(symbolic_result, f.name)).value() == getattr(plain, f.name)


@given(gpus=POSITIVE, nodes=POSITIVE, tp=POSITIVE, pp=POSITIVE, cp=POSITIVE, ep=POSITIVE, hybrid=st.booleans())
def test_parallel_degree_formulas(gpus: int, nodes: int, tp: int, pp: int, cp: int, ep: int, hybrid: bool) -> None:
    v = {k: Var(k, x, k) for k, x in (("gpus", gpus), ("nodes", nodes), ("tp", tp), ("pp", pp), ("cp", cp))}
    same(
        sharding_degree(gpus, nodes, tp, pp, cp, hybrid_shard=hybrid),
        sharding_degree(v["gpus"], v["nodes"], v["tp"], v["pp"], v["cp"], hybrid_shard=hybrid),
    )
    same(
        data_parallel_degree(gpus * nodes, tp, pp, cp),
        data_parallel_degree(v["gpus"] * v["nodes"], v["tp"], v["pp"], v["cp"]),
    )
    same(expert_sharding_degree(gpus, ep), expert_sharding_degree(v["gpus"], Var("ep", ep, "")))


overhead_inputs = st.builds(
    OverheadInputs,
    COUNTS,
    COUNTS,
    COUNTS,
    POSITIVE,
    BYTES,
    BYTES,
    BYTES,
    BYTES,
    COUNTS,
    COUNTS,
    COUNTS,
    COUNTS,
    COUNTS,
    COUNTS,
    COUNTS,
    COUNTS,
    COUNTS,
    BYTES,
    COUNTS,
    COUNTS,
    BYTES,
)


@settings(max_examples=150, deadline=None)
@given(
    optimizer=st.sampled_from(OPTIMIZERS),
    stage=st.sampled_from((0, 1, 2, 3)),
    phase=st.sampled_from(("forward", "backward", "optimizer_step")),
    fsdp=st.sampled_from((None, "full_shard", "shard_grad_op", "hybrid_shard", "no_shard")),
    method=st.sampled_from(("full", "lora", "qlora")),
    x=overhead_inputs,
    in_backward=st.booleans(),
    impl=st.sampled_from(("foreach", "fused", "loop")),
    checkpointing=st.sampled_from(("none", "full")),
)
def test_overhead_formulas(
    optimizer: str,
    stage: int,
    phase: str,
    fsdp: str | None,
    method: str,
    x: Any,
    in_backward: bool,
    impl: str,
    checkpointing: str,
) -> None:
    setup = dataclasses.replace(
        _setup(optimizer, "none", stage, fsdp, method, in_backward=in_backward, impl=impl),
        grad_checkpointing=checkpointing,  # type: ignore[arg-type]
    )
    plain = overhead_terms(setup, stage, phase, x)  # type: ignore[arg-type]
    tree = overhead_terms(setup, stage, phase, symbolic(x))  # type: ignore[arg-type]
    assert [k for k, _ in plain] == [k for k, _ in tree]
    for (_, a), (_, b) in zip(plain, tree, strict=True):
        same(a, b)


@given(allocated=COUNTS, fraction=st.sampled_from((0.0, 0.05, 0.1, 0.15, 0.3)))
def test_fragmentation_formula(allocated: int, fraction: float) -> None:
    tree = fragmentation_bytes(Var("a", allocated, ""), Var("φ", fraction, ""))
    assert lift(tree).value() == fragmentation_bytes(allocated, fraction) == int(allocated * fraction)


quant_counts = st.builds(QuantCounts, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, COUNTS)


@settings(max_examples=100, deadline=None)
@given(
    layout=st.sampled_from(("bnb-int8", "bnb-4bit", "gptq", "awq", "fp8-tensor", "fp8-block", "mxfp4")),
    double_quant=st.booleans(),
    c=quant_counts,
    plain=COUNTS,
    width=BYTES,
)
def test_quantization_formulas(layout: str, double_quant: bool, c: QuantCounts, plain: int, width: int) -> None:
    scheme = QuantScheme("q", layout, bits=4, double_quant=double_quant)  # type: ignore[arg-type]
    same(quantized_metadata_bytes(scheme, c), quantized_metadata_bytes(scheme, symbolic(c)))
    same(bnb_4bit_metadata(c, double_quant=double_quant), bnb_4bit_metadata(symbolic(c), double_quant=double_quant))
    qlora = FinetuneSettings("qlora", double_quant=double_quant)
    frozen = FrozenCounts(plain, c)
    same(frozen_bytes(qlora, frozen, width), frozen_bytes(qlora, symbolic(frozen), Var("w", width, "")))
    same(
        frozen_bytes(FinetuneSettings("lora"), FrozenCounts(plain), width),
        frozen_bytes(FinetuneSettings("lora"), symbolic(FrozenCounts(plain)), Var("w", width, "")),
    )


@given(largest=COUNTS, tp=POSITIVE)
def test_dequant_formula(largest: int, tp: int) -> None:
    same(
        dequant_transient_bytes(largest, tp),
        dequant_transient_bytes(Var("n", largest, "") if largest else 0, Var("tp", tp, "")),
    )


def test_overhead_settings_have_no_formula_of_their_own() -> None:
    # The settings are operands, never computed: the defaults are the cited figures (README: Overheads).
    settings_ = OverheadSettings()
    assert settings_.cuda_context_bytes == 512 * 2**20
    assert settings_.reduce_bucket_elements == settings_.allgather_bucket_elements == 500_000_000


@pytest.mark.parametrize("fn", [ceil_div, floor_div])
def test_division_by_a_symbol_of_one_still_renders(fn: Any) -> None:
    tree = fn(Var("a", 9, ""), Var("b", 1, ""))
    assert tree.value() == 9 and "b" in tree.formula


@given(p=st.integers(1, 64), k=st.integers(0, 63), m=st.none() | POSITIVE, v=st.none() | st.integers(1, 8))
def test_pipeline_in_flight_formula(p: int, k: int, m: int | None, v: int | None) -> None:
    k = min(k, p - 1)
    plain = in_flight(p, k, m, v)
    tree = in_flight(
        Var("p", p, ""), Var("k", k, "") if k else 0, Var("m", m, "") if m else None, Var("v", v, "") if v else None
    )
    assert lift(tree).value() == plain


@given(saved=COUNTS, split=COUNTS, inputs=COUNTS, t=POSITIVE, sp=st.booleans(), before=COUNTS, after=COUNTS)
def test_tensor_parallel_activation_formulas(
    saved: int, split: int, inputs: int, t: int, sp: bool, before: int, after: int
) -> None:
    split = min(split, saved)
    s, tt, i = Var("S", saved, ""), Var("t", t, ""), Var("I", inputs, "")
    same(tp_saved_bytes(saved, split, t, sp), tp_saved_bytes(s, Var("T", split, "") if split else 0, tt, sp))
    same(tp_input_bytes(inputs, t, sp), tp_input_bytes(i, tt, sp))
    b, a = (Var("O_b", before, "") if before else 0), (Var("O_a", after, "") if after else 0)
    same(stage_other_bytes(before, after, t, sp), stage_other_bytes(b, a, tt, sp))


@given(logits=COUNTS, log_softmax=COUNTS, saved=COUNTS, recompute=COUNTS, phase=st.sampled_from(PHASES))
def test_logits_and_phase_formulas(logits: int, log_softmax: int, saved: int, recompute: int, phase: str) -> None:
    g, lam = Var("G", logits, "") if logits else 0, Var("Λ", log_softmax, "") if log_softmax else 0
    same(logits_forward_bytes(logits, log_softmax), logits_forward_bytes(g, lam))
    same(logits_backward_bytes(logits, log_softmax), logits_backward_bytes(g, lam))
    plain = ActivationEstimate(
        saved,
        recompute,
        log_softmax,
        logits_forward_bytes(logits, log_softmax),
        logits_backward_bytes(logits, log_softmax),
    )
    tree = ActivationEstimate(
        Var("S", saved, "") if saved else 0,  # type: ignore[arg-type]
        Var("R", recompute, "") if recompute else 0,  # type: ignore[arg-type]
        lam,  # type: ignore[arg-type]
        logits_forward_bytes(g, lam),  # type: ignore[arg-type]
        logits_backward_bytes(g, lam),  # type: ignore[arg-type]
    )
    for a, b in zip(phase_bytes(plain, phase), phase_bytes(tree, phase), strict=True):  # type: ignore[arg-type]
        same(a, b)


kv_layers = st.builds(
    KvLayer,
    st.just("0"),
    st.sampled_from(("full", "sliding", "cross", "state")),
    st.integers(0, 10**5),
    heads=st.integers(1, 128),
    window_tokens=st.none() | st.integers(1, 10**5),
    fixed_elements=st.integers(0, 10**6),
    element_bytes=BYTES,
)


def _symbolic_layer(layer: KvLayer) -> KvLayer:
    def v(name: str, x: int | None) -> Any:
        return Var(name, x, name) if x else (None if x is None else 0)

    return dataclasses.replace(
        layer,
        elements_per_token=v("e", layer.elements_per_token),
        heads=v("h", layer.heads),
        window_tokens=v("W", layer.window_tokens),
        fixed_elements=v("z", layer.fixed_elements),
        element_bytes=v("β", layer.element_bytes),
    )


@settings(max_examples=100, deadline=None)
@given(layers=st.lists(kv_layers, min_size=1, max_size=4), context=POSITIVE, batch=POSITIVE, tp=POSITIVE)
def test_kv_cache_formulas(layers: list[KvLayer], context: int, batch: int, tp: int) -> None:
    plain_layers, sym_layers = tuple(layers), tuple(_symbolic_layer(layer) for layer in layers)
    c, b, t = Var("c", context, ""), Var("b", batch, ""), (Var("tp", tp, "") if tp > 1 else 1)
    for fn in (kv_cache_bytes, largest_kv_layer_bytes):
        same(fn(plain_layers, context=context, batch_size=batch, tp=tp), fn(sym_layers, context=c, batch_size=b, tp=t))
    same(kv_cache_bytes_per_token(plain_layers, tp=tp), kv_cache_bytes_per_token(sym_layers, tp=t))


@given(peak=COUNTS, logits=COUNTS, batch=POSITIVE, traced=POSITIVE, usable=COUNTS)
def test_prefill_and_headroom_formulas(peak: int, logits: int, batch: int, traced: int, usable: int) -> None:
    a, lg = Var("A", peak, "") if peak else 0, Var("Lg", logits, "") if logits else 0
    same(
        prefill_activation_bytes(peak, logits, batch, traced),
        prefill_activation_bytes(a, lg, Var("b", batch, ""), Var("b_0", traced, "")),
    )
    assert lift(headroom_bytes(Var("u", usable, ""), Var("p", peak, ""))).value() == headroom_bytes(usable, peak)


@given(total_=COUNTS, routed=COUNTS, k=POSITIVE, e=POSITIVE)
def test_moe_active_parameters_formula(total_: int, routed: int, k: int, e: int) -> None:
    routed = min(routed, total_)
    same(
        active_params_per_token(total_, routed, k, e),
        active_params_per_token(
            Var("Ψ", total_, ""), Var("R", routed, "") if routed else 0, Var("k", k, ""), Var("E", e, "")
        ),
    )


# ---------------------------------------------------------------------------------------------------------------
# The operands explain used to sum itself: one function groups them, the int and symbolic paths share the formula

param_infos = st.lists(
    st.builds(
        ParameterInfo,
        name=st.sampled_from(("model.layers.0.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight", "x.weight")),
        shape=st.lists(st.integers(1, 300), min_size=1, max_size=3).map(tuple),
        dtype=st.sampled_from(("float32", "bfloat16", "float16")),
        is_linear=st.booleans(),
        is_embedding=st.booleans(),
        layer_index=st.none() | st.integers(0, 5),
        after_layers=st.booleans(),
    ),
    min_size=1,
    max_size=12,
).map(lambda ps: [dataclasses.replace(p, name=f"{p.name}.{i}") for i, p in enumerate(ps)])


def inventory_from(params: list[ParameterInfo]) -> ParameterInventory:
    return ParameterInventory.from_parameters(
        params, buffer_params=0, largest_module=("m", 1), module_params=[], architecture=None, model_type=None
    )


@settings(max_examples=100, deadline=None)
@given(params=param_infos, dtype=st.sampled_from(("bf16", "fp32", "int8", "nf4", "int4", "fp8")), dq=st.booleans())
def test_weight_formula(params: list[ParameterInfo], dtype: Any, dq: bool) -> None:
    inv = inventory_from(params)
    scheme = scheme_for_dtype(dtype, double_quant=dq)
    ops = weight_operands(inv, scheme)
    plain = weight_bytes(scheme, ops.quantized, ops.plain_by_width)
    # independent of the grouping: tensor by tensor, as `tensor_bytes` stores each one
    by_tensor = sum(sum(tensor_bytes(p, scheme, model_is_16bit=is_16bit_model(inv))) for p in params)
    assert plain == by_tensor == weights_breakdown(inv, scheme).total_bytes
    sym_plain = [(w, Var(f"Ψ_{w}", n, "")) for w, n in ops.plain_by_width]
    sym_q = symbolic(ops.quantized) if ops.quantized is not None else None
    same(plain, weight_bytes(scheme, sym_q, sym_plain))
    b = weights_breakdown(inv, scheme)
    parts = (b.quantized_data_bytes, b.quantization_metadata_bytes, b.unquantized_bytes)
    same(b.total_bytes, weights_total_bytes(*(Var(f"x{i}", x, "") if x else 0 for i, x in enumerate(parts))))


@settings(max_examples=100, deadline=None)
@given(params=param_infos)
def test_parameter_count_formula(params: list[ParameterInfo]) -> None:
    inv = inventory_from(params)
    sums = layer_sums(inv)
    per_layer = {p.layer_index for p in params if p.layer_index is not None}
    assert sums.layers == len(per_layer)
    plain = parameter_count(sums.layer_groups, sums.before_params, sums.after_params)
    assert plain == sum(p.numel for p in params) == inv.total_params
    sym = parameter_count(
        [(Var(f"L{i}", c, ""), Var(f"P{i}", s, "")) for i, (c, s) in enumerate(sums.layer_groups)],
        Var("B", sums.before_params, "") if sums.before_params else 0,
        Var("A", sums.after_params, "") if sums.after_params else 0,
    )
    same(plain, sym)
    shapes = [p.shape for p in params]
    assert tensors_params(shapes) == inv.total_params
    same(tensors_params(shapes), tensors_params([tuple(Const(d) for d in s) for s in shapes]))


@given(
    rank=st.integers(1, 64),
    adapted=st.lists(st.tuples(st.integers(1, 4096), st.integers(1, 4096)), max_size=6),
    dora=st.booleans(),
    saved=st.integers(0, 10**6),
)
def test_adapter_formula(rank: int, adapted: list[tuple[int, int]], dora: bool, saved: int) -> None:
    trained = []
    for i, (n_in, n_out) in enumerate(adapted):
        trained.append(ParameterInfo(f"l{i}.lora_A.default.weight", (rank, n_in), "float32"))
        trained.append(ParameterInfo(f"l{i}.lora_B.default.weight", (n_out, rank), "float32"))
        if dora:
            trained.append(ParameterInfo(f"l{i}.lora_magnitude_vector.default.weight", (n_out,), "float32"))
    if saved:
        trained.append(ParameterInfo("score.modules_to_save.default.weight", (saved,), "float32"))
    c = count_adapters(trained, rank)
    # LoRA (Hu et al. 2021): A is r × in, B is out × r; DoRA adds one magnitude per output
    assert c.lora_sides == sum(n_in + n_out for n_in, n_out in adapted)
    assert c.dora_magnitudes == (sum(n_out for _, n_out in adapted) if dora else 0)
    plain = adapter_params(rank, c.lora_sides, c.dora_magnitudes, c.other_params)
    assert plain == sum(p.numel for p in trained)
    same(
        plain,
        adapter_params(
            Var("r", rank, ""),
            *(Var(f"x{i}", v, "") if v else 0 for i, v in enumerate((c.lora_sides, c.dora_magnitudes, c.other_params))),
        ),
    )


@given(batch=POSITIVE, seq=POSITIVE, vocab=POSITIVE, elt=st.sampled_from((2, 4)), odd=st.booleans())
def test_token_and_logit_formulas(batch: int, seq: int, vocab: int, elt: int, odd: bool) -> None:
    tokens = micro_batch_tokens(batch, seq)
    assert tokens == batch * seq
    same(tokens, micro_batch_tokens(Var("b", batch, ""), Var("s", seq, "")))
    assume(not odd or tokens * vocab > 1)  # one logit of 3 bytes is b × s × V elements of one (3-byte) width
    logits = tokens * vocab * elt + (1 if odd else 0)
    same(logit_element_bytes(logits, tokens, vocab), logit_element_bytes(Var("G", logits, ""), tokens, vocab))
    prof = ActivationProfile(batch, seq, "sdpa", "bf16", vocab, (), (), 0, 0, logits)
    assert profile_tokens(prof) == batch * seq
    assert profile_logit_element_bytes(prof) == (0 if odd else elt)  # not b × s × V elements of one width: none
    layers = tuple(LayerProfile(f"l{i}", s, 0, 0) for i, s in enumerate((8, 8, 6)))
    assert typical_layer_saved_bytes(dataclasses.replace(prof, layers=layers)) == 8
    assert bytes_per_token(3 * tokens, tokens) == 3.0
