"""The one dtype vocabulary (`hfmem.dtypes`): every name and alias parses to its canonical dtype with the width its
definition gives, unknown names are a usage error, and every other dtype table in hfmem is a lookup in it.

Widths (bits per element), from the definitions, not from hfmem:
* IEEE 754-2019 §3.6 Table 3.5: binary64 = 64, binary32 = 32, binary16 = 16.
* bfloat16 (Google Brain; torch.bfloat16): 1 sign + 8 exponent + 7 mantissa = 16.
* OCP 8-bit Floating Point Specification (OFP8) v1.0 / Micikevicius et al. 2022: E4M3 and E5M2 = 8 (the AMD
  ``fnuz`` variants are also 8-bit encodings).
* OCP Microscaling Formats (MX) v1.0 §5: E8M0 scale = 8, FP6 E2M3 / E3M2 = 6, FP4 E2M1 = 4.
* Two's-complement integers: their width (int8 8 … int64 64); bool is stored in one byte (safetensors
  ``Dtype::BOOL`` ``bitsize`` 8, torch ``torch.bool.itemsize`` 1); complex64 = two binary32 = 64.
* QLoRA (Dettmers et al. 2023) §3: NF4 = 4 bits; GPTQ/AWQ int4 = 4 bits.
"""

from __future__ import annotations

import pytest

from hfmem import dtypes
from hfmem.dtypes import ALIASES, DTYPES, Dtype, bits, bytes_per_element, parse_dtype
from hfmem.errors import ExitCode, HfmemError, UnknownDtypeError

# name (as a user, a config or a header writes it) → (canonical name, bits, floating)
CASES: list[tuple[str, str, int, bool]] = [
    # IEEE 754 binary64 / binary32 / binary16
    ("fp64", "fp64", 64, True),
    ("float64", "fp64", 64, True),
    ("torch.float64", "fp64", 64, True),
    ("F64", "fp64", 64, True),
    ("double", "fp64", 64, True),
    ("fp32", "fp32", 32, True),
    ("float32", "fp32", 32, True),
    ("torch.float32", "fp32", 32, True),
    ("F32", "fp32", 32, True),
    ("float", "fp32", 32, True),
    ("fp16", "fp16", 16, True),
    ("float16", "fp16", 16, True),
    ("torch.float16", "fp16", 16, True),
    ("F16", "fp16", 16, True),
    ("half", "fp16", 16, True),
    # bfloat16
    ("bf16", "bf16", 16, True),
    ("bfloat16", "bf16", 16, True),
    ("torch.bfloat16", "bf16", 16, True),
    ("BF16", "bf16", 16, True),
    # OFP8
    ("fp8", "fp8_e4m3", 8, True),
    ("fp8_e4m3", "fp8_e4m3", 8, True),
    ("float8_e4m3fn", "fp8_e4m3", 8, True),
    ("torch.float8_e4m3fn", "fp8_e4m3", 8, True),
    ("F8_E4M3", "fp8_e4m3", 8, True),
    ("fp8_e5m2", "fp8_e5m2", 8, True),
    ("float8_e5m2", "fp8_e5m2", 8, True),
    ("F8_E5M2", "fp8_e5m2", 8, True),
    ("float8_e4m3fnuz", "fp8_e4m3fnuz", 8, True),
    ("F8_E4M3FNUZ", "fp8_e4m3fnuz", 8, True),
    ("float8_e5m2fnuz", "fp8_e5m2fnuz", 8, True),
    ("F8_E5M2FNUZ", "fp8_e5m2fnuz", 8, True),
    # OCP MX
    ("F8_E8M0", "fp8_e8m0", 8, True),
    ("float8_e8m0fnu", "fp8_e8m0", 8, True),
    ("F6_E2M3", "fp6_e2m3", 6, True),
    ("F6_E3M2", "fp6_e3m2", 6, True),
    ("F4", "fp4", 4, True),
    ("fp4", "fp4", 4, True),
    # 4-bit quantized
    ("nf4", "nf4", 4, True),
    ("int4", "int4", 4, False),
    # integers, bool, complex
    ("int8", "int8", 8, False),
    ("torch.int8", "int8", 8, False),
    ("I8", "int8", 8, False),
    ("uint8", "uint8", 8, False),
    ("U8", "uint8", 8, False),
    ("int16", "int16", 16, False),
    ("I16", "int16", 16, False),
    ("U16", "uint16", 16, False),
    ("int32", "int32", 32, False),
    ("I32", "int32", 32, False),
    ("U32", "uint32", 32, False),
    ("int64", "int64", 64, False),
    ("I64", "int64", 64, False),
    ("U64", "uint64", 64, False),
    ("bool", "bool", 8, False),
    ("BOOL", "bool", 8, False),
    ("complex64", "c64", 64, False),
    ("C64", "c64", 64, False),
]


@pytest.mark.parametrize(("name", "canonical", "width", "floating"), CASES)
def test_parse(name: str, canonical: str, width: int, floating: bool) -> None:
    dtype = parse_dtype(name)
    assert dtype.name == canonical
    assert dtype.bits == width == bits(name)
    assert dtype.is_floating is floating
    assert parse_dtype(dtype) is dtype


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fp32", 4),
        ("bf16", 2),
        ("fp16", 2),
        ("fp8", 1),
        ("int8", 1),
        ("F64", 8),
        ("nf4", 0.5),
        ("F4", 0.5),
        ("int4", 0.5),
        ("F6_E2M3", 0.75),
    ],
)
def test_bytes_per_element(name: str, expected: float) -> None:
    """Bits / 8: whole bytes as ints, 4-bit = 0.5, 6-bit = 0.75."""
    assert bytes_per_element(name) == expected
    assert isinstance(bytes_per_element(name), int) is (expected == int(expected))


def test_names_of_one_dtype() -> None:
    bf16 = parse_dtype("bf16")
    assert (bf16.torch_name, bf16.safetensors_name) == ("bfloat16", "BF16")
    assert str(bf16) == "bf16"
    assert parse_dtype("nf4").torch_name is None and parse_dtype("nf4").safetensors_name is None


def test_every_dtype_is_in_the_table_and_names_are_unique() -> None:
    canonical = {dtype.name for dtype in DTYPES}
    assert len(canonical) == len(DTYPES)
    assert canonical == {case[1] for case in CASES}
    for dtype in DTYPES:
        for name in (dtype.name, dtype.torch_name, dtype.safetensors_name):
            if name is not None:
                assert ALIASES[name] is dtype
        if dtype.torch_name is not None:
            assert ALIASES["torch." + dtype.torch_name] is dtype
    # the names of each dtype, plus torch's own aliases (torch.half / torch.float / torch.double) and vLLM's "fp8"
    names = {n for d in DTYPES for n in (d.name, d.torch_name, d.safetensors_name) if n is not None}
    names |= {"torch." + d.torch_name for d in DTYPES if d.torch_name is not None}
    assert set(ALIASES) == names | {"half", "float", "double", "fp8"}
    assert {case[0] for case in CASES} <= set(ALIASES)


@pytest.mark.parametrize(
    "name", ["bf17", "", "BFLOAT16", "Bf16", "torch.half", "float8", "tf32", "bf16-mixed", " bf16", "x" * 200]
)
def test_unknown_dtype(name: str) -> None:
    """Exact spelling: anything else is a usage error naming the value and the accepted names."""
    with pytest.raises(UnknownDtypeError) as info:
        parse_dtype(name)
    err = info.value
    assert isinstance(err, HfmemError) and isinstance(err, ValueError)
    assert err.exit_code == ExitCode.USAGE == 2
    assert err.name == name
    message = str(err)
    assert "\n" not in message and "bf16" in message and "fp32" in message
    assert repr(name) in message if len(name) <= 80 else (name[:80] + "…" in message and name not in message)


def test_unknown_dtype_of_another_type() -> None:
    with pytest.raises(UnknownDtypeError):
        parse_dtype(None)  # type: ignore[arg-type]
    with pytest.raises(UnknownDtypeError):
        bytes_per_element("fp9")


# --- every other vocabulary is a lookup in this one -------------------------------------------------------------
# The literal tables are the values these vocabularies had before they were derived (each cited at its definition):
# deriving them must not change a number.


def test_safetensors_bits_are_the_vocabulary() -> None:
    from hfmem.types import SAFETENSORS_DTYPE_BITS

    # safetensors ``Dtype::bitsize`` (Rust safetensors/src/tensor.rs)
    assert dict(SAFETENSORS_DTYPE_BITS) == {
        "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U64": 64,
        "U32": 32, "U16": 16, "U8": 8, "BOOL": 8, "C64": 64, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2": 8,
        "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4,
    }  # fmt: skip
    for name, width in SAFETENSORS_DTYPE_BITS.items():
        assert parse_dtype(name).safetensors_name == name and parse_dtype(name).bits == width


def test_torch_bytes_are_the_vocabulary() -> None:
    from hfmem.memory.quantization import DTYPE_BYTES

    # torch ``dtype.itemsize``
    assert DTYPE_BYTES == {
        "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1, "float8_e4m3fn": 1,
        "float8_e5m2": 1, "int32": 4, "int64": 8, "bool": 1,
    }  # fmt: skip
    for name, size in DTYPE_BYTES.items():
        assert parse_dtype(name).torch_name == name and parse_dtype(name).bytes_per_element == size


def test_kv_dtypes_are_the_vocabulary() -> None:
    from hfmem.memory.inference import KV_DTYPE_BYTES
    from hfmem.types import KV_DTYPES

    assert KV_DTYPES == ("fp32", "bf16", "fp16", "fp8", "int8")  # the --kv-dtype choices: a CLI contract
    assert KV_DTYPE_BYTES == {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
    assert list(KV_DTYPE_BYTES) == list(KV_DTYPES)
    for name in KV_DTYPES:
        assert KV_DTYPE_BYTES[name] == parse_dtype(name).bits // 8


def test_weights_dtypes_are_the_vocabulary() -> None:
    from hfmem.memory.quantization import WEIGHTS_DTYPES, scheme_for_dtype

    assert WEIGHTS_DTYPES == ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "nf4")  # --weights-dtype: a contract
    widths = {"fp32": 32, "bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4, "nf4": 4}
    for name in WEIGHTS_DTYPES:
        assert parse_dtype(name).bits == widths[name]
        scheme = scheme_for_dtype(name)
        if scheme.layout == "plain":
            assert scheme.plain_bytes == widths[name] // 8
        else:
            assert scheme.bits == widths[name]


def test_precision_specs_refer_to_dtypes() -> None:
    from hfmem.memory.activations import activation_dtype
    from hfmem.memory.states import ADAPTER_SPEC, PRECISION_SPECS
    from hfmem.types import PRECISIONS

    # (w, m, g, s) bytes: ZeRO paper §3.1 (mixed: 2 + 4 + 2, fp32 states), Transformer Math 101 (fp32: 4, 4),
    # torch.optim zeros_like(param) (pure 16-bit: states in the parameter dtype, no master).
    expected = {
        "fp32": (4, 0, 4, 4), "tf32": (4, 0, 4, 4), "bf16-mixed": (2, 4, 2, 4), "fp16-mixed": (2, 4, 2, 4),
        "bf16": (2, 0, 2, 2), "fp16": (2, 0, 2, 2),
        # autocast on an fp32 model (docs/techniques.md §5): the model stays fp32, autograd accumulates fp32
        # gradients, AdamW's zeros_like states are fp32; only the matmuls run on 16-bit copies.
        "amp-bf16": (4, 0, 4, 4), "amp-fp16": (4, 0, 4, 4),
    }  # fmt: skip
    assert set(PRECISION_SPECS) == set(PRECISIONS) == set(expected)
    assert {p: s.autocast for p, s in PRECISION_SPECS.items() if s.autocast} == {
        "amp-bf16": dtypes.BF16,
        "amp-fp16": dtypes.FP16,
    }
    for precision, spec in PRECISION_SPECS.items():
        assert (spec.weight_bytes, spec.master_bytes, spec.grad_bytes, spec.state_bytes) == expected[precision]
        for dtype in (spec.weights, spec.grads, spec.states, spec.master):
            assert dtype is None or (isinstance(dtype, Dtype) and dtype is parse_dtype(dtype.name))
        assert activation_dtype(precision) == spec.weights.torch_name
    assert [activation_dtype(p) for p in ("fp32", "tf32", "bf16-mixed", "fp16-mixed", "bf16", "fp16")] == [
        "float32", "float32", "bfloat16", "float16", "bfloat16", "float16",
    ]  # fmt: skip
    # peft autocast_adapter_dtype: fp32 adapters, their own master (4 + 4 + 4 per state element)
    assert (ADAPTER_SPEC.weights, ADAPTER_SPEC.master, ADAPTER_SPEC.weight_bytes) == (dtypes.FP32, None, 4)


def test_launch_files_read_dtypes_through_the_vocabulary() -> None:
    from hfmem.launch import _canonical_dtype

    # the spellings transformers/accelerate configs use for the loaded dtype (any case)
    for name, expected in [("bfloat16", "bf16"), ("torch.bfloat16", "bf16"), ("BF16", "bf16"), ("half", "fp16"),
                           ("torch.float16", "fp16"), ("Float32", "fp32"), ("float", "fp32")]:  # fmt: skip
        assert _canonical_dtype(name) == expected
    for name in ("float64", "int8", "fp8", "auto", "F32"):  # not a dtype hfmem trains in (F32: no config writes it)
        assert _canonical_dtype(name) is None


def test_checkpoint_dtype_label_uses_canonical_names() -> None:
    """A model planned in its checkpoint dtype is labelled with the canonical names of its parameters' dtypes."""
    from hfmem.memory.inference import choose_scheme, compute_dtype
    from hfmem.types import InferenceSetup, ParameterInfo, ParameterInventory

    inventory = ParameterInventory.from_parameters(
        [
            ParameterInfo("model.w", (4, 4), "bfloat16"),
            ParameterInfo("model.norm", (4,), "float32"),
            ParameterInfo("model.x", (2,), "float8_e4m3fn"),
        ],
        buffer_params=0,
        largest_module=("model", 22),
        module_params=[("model", 22)],
        architecture=None,
        model_type=None,
    )
    scheme, _ = choose_scheme({}, InferenceSetup(), inventory)
    assert scheme.name == "checkpoint dtype (bf16, fp32, fp8_e4m3)"
    assert scheme.plain_bytes is None
    assert compute_dtype(scheme, inventory) == "bfloat16"  # 16 of the 22 elements are bf16
