"""The one dtype vocabulary: every element type hfmem speaks of, under each name it is known by.

A `Dtype` carries its canonical short name (``"bf16"``, as the CLI and the reports write it), its torch name
(``"bfloat16"``, as ``str(torch.bfloat16)`` without ``"torch."`` and as ``config.json``'s ``torch_dtype`` holds it),
its safetensors name (``"BF16"``, as a safetensors header and ``huggingface_hub``'s ``TensorInfo.dtype`` report it),
its width in bits and its kind. `parse_dtype` turns any of those names (and ``"torch.bfloat16"``, ``"half"``…) into
the `Dtype`, or raises `UnknownDtypeError`. Every other table of dtypes in hfmem is a lookup in `DTYPES`.

Widths, from the definitions:

* IEEE 754-2019: binary64 / binary32 / binary16 = 64 / 32 / 16 bits (fp64, fp32, fp16).
* bfloat16: 16 bits, 1 sign + 8 exponent + 7 mantissa (Google "BFloat16", torch ``torch.bfloat16``).
* FP8 E4M3 / E5M2: 8 bits (Micikevicius et al. 2022, "FP8 Formats for Deep Learning"; OCP 8-bit Floating Point
  Specification (OFP8) v1.0); torch ``float8_e4m3fn``/``float8_e5m2`` and the AMD ``…fnuz`` variants, also 8 bits.
* OCP Microscaling (MX) Formats Specification v1.0: E8M0 scale = 8 bits, FP6 E2M3 / E3M2 = 6 bits, FP4 E2M1 = 4 bits.
* safetensors ``Dtype`` (Rust ``safetensors/src/tensor.rs`` ``Dtype::bitsize``): BOOL 8, C64 64, F4 4, F6_* 6,
  F8_* 8, the integers their width.
* int4 (GPTQ/AWQ values, packed eight to an int32) and NF4 (QLoRA, Dettmers et al. 2023 §3: 4-bit NormalFloat,
  16 codes) = 4 bits.

Pure: no torch import, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from hfmem.errors import UnknownDtypeError

__all__ = [
    "Dtype",
    "DTYPES",
    "ALIASES",
    "FP64",
    "FP32",
    "FP16",
    "BF16",
    "FP8_E4M3",
    "FP8_E5M2",
    "INT8",
    "INT4",
    "NF4",
    "parse_dtype",
    "bits",
    "bytes_per_element",
]

DtypeKind = Literal["float", "int", "bool", "complex"]


@dataclass(frozen=True)
class Dtype:
    """One element type.

    Attributes:
        name: canonical short name (``"bf16"``).
        torch_name: the ``torch.dtype``'s name without ``"torch."`` (``"bfloat16"``), or None where torch has no
            dtype of this width per element.
        safetensors_name: the safetensors ``Dtype`` name (``"BF16"``), or None where safetensors has none.
        bits: bits per element.
        kind: ``"float"``, ``"int"`` (signed or unsigned), ``"bool"`` or ``"complex"``.
    """

    name: str
    torch_name: str | None
    safetensors_name: str | None
    bits: int
    kind: DtypeKind

    @property
    def is_floating(self) -> bool:
        """A floating-point element (IEEE, bfloat16, FP8/FP6/FP4, NF4's float codes)."""
        return self.kind == "float"

    @property
    def is_integer(self) -> bool:
        """An integer element, signed or unsigned (not bool)."""
        return self.kind == "int"

    @property
    def bytes_per_element(self) -> int | float:
        """Bytes per element: an int for whole-byte types, else a fraction (4-bit = 0.5, 6-bit = 0.75)."""
        return self.bits // 8 if self.bits % 8 == 0 else self.bits / 8

    def __str__(self) -> str:
        return self.name


FP64 = Dtype("fp64", "float64", "F64", 64, "float")
FP32 = Dtype("fp32", "float32", "F32", 32, "float")
FP16 = Dtype("fp16", "float16", "F16", 16, "float")
BF16 = Dtype("bf16", "bfloat16", "BF16", 16, "float")
FP8_E4M3 = Dtype("fp8_e4m3", "float8_e4m3fn", "F8_E4M3", 8, "float")
FP8_E5M2 = Dtype("fp8_e5m2", "float8_e5m2", "F8_E5M2", 8, "float")
INT8 = Dtype("int8", "int8", "I8", 8, "int")
INT4 = Dtype("int4", None, None, 4, "int")
NF4 = Dtype("nf4", None, None, 4, "float")

#: Every element type, canonical names unique.
DTYPES: tuple[Dtype, ...] = (
    FP64,
    FP32,
    FP16,
    BF16,
    FP8_E4M3,
    FP8_E5M2,
    Dtype("fp8_e4m3fnuz", "float8_e4m3fnuz", "F8_E4M3FNUZ", 8, "float"),
    Dtype("fp8_e5m2fnuz", "float8_e5m2fnuz", "F8_E5M2FNUZ", 8, "float"),
    Dtype("fp8_e8m0", "float8_e8m0fnu", "F8_E8M0", 8, "float"),
    Dtype("fp6_e2m3", None, "F6_E2M3", 6, "float"),
    Dtype("fp6_e3m2", None, "F6_E3M2", 6, "float"),
    # torch's float4_e2m1fn_x2 holds two values per element (8 bits), so it is not this 4-bit element.
    Dtype("fp4", None, "F4", 4, "float"),
    NF4,
    Dtype("int64", "int64", "I64", 64, "int"),
    Dtype("int32", "int32", "I32", 32, "int"),
    Dtype("int16", "int16", "I16", 16, "int"),
    INT8,
    INT4,
    Dtype("uint64", "uint64", "U64", 64, "int"),
    Dtype("uint32", "uint32", "U32", 32, "int"),
    Dtype("uint16", "uint16", "U16", 16, "int"),
    Dtype("uint8", "uint8", "U8", 8, "int"),
    Dtype("bool", "bool", "BOOL", 8, "bool"),
    Dtype("c64", "complex64", "C64", 64, "complex"),
)

#: Names accepted besides the canonical, torch, ``torch.``-prefixed torch and safetensors names: torch's own
#: aliases (``torch.half`` is ``torch.float16``, ``torch.float`` is ``float32``, ``torch.double`` is ``float64``)
#: and ``"fp8"``, which vLLM's ``kv_cache_dtype`` and the FP8 checkpoints hfmem models read as E4M3
#: (vLLM ``CacheConfig``: "fp8" and "fp8_e4m3" are the same; DeepSeek-V3 / transformers ``FP8Linear`` store
#: ``float8_e4m3fn``).
_EXTRA_ALIASES = {"half": FP16, "float": FP32, "double": FP64, "fp8": FP8_E4M3}


def _aliases() -> Mapping[str, Dtype]:
    table: dict[str, Dtype] = {}
    for dtype in DTYPES:
        names = [dtype.name, dtype.torch_name, dtype.safetensors_name]
        if dtype.torch_name is not None:
            names.append("torch." + dtype.torch_name)
        for name in names:
            if name is None:
                continue
            if table.get(name, dtype) is not dtype:
                raise AssertionError(f"dtype name {name!r} names both {table[name].name} and {dtype.name}")
            table[name] = dtype
    for name, dtype in _EXTRA_ALIASES.items():
        if name in table:
            raise AssertionError(f"dtype alias {name!r} is already a name of {table[name].name}")
        table[name] = dtype
    return MappingProxyType(table)


#: Every accepted name (exact spelling) → its `Dtype`.
ALIASES: Mapping[str, Dtype] = _aliases()


def parse_dtype(name: str | Dtype) -> Dtype:
    """The `Dtype` a name means: canonical (``"bf16"``), torch (``"bfloat16"``, ``"torch.bfloat16"``), safetensors
    (``"BF16"``) or an alias (``"half"``, ``"fp8"``). Exact spelling; a `Dtype` is returned as is.

    Raises:
        UnknownDtypeError: no dtype has that name.

    Examples:
        >>> parse_dtype("torch.bfloat16").name, parse_dtype("F8_E4M3").bits
        ('bf16', 8)
    """
    if isinstance(name, Dtype):
        return name
    try:
        return ALIASES[name]
    except (KeyError, TypeError):
        raise UnknownDtypeError(str(name), tuple(d.name for d in DTYPES)) from None


def bits(name: str | Dtype) -> int:
    """Bits per element of the dtype ``name`` names (`parse_dtype`)."""
    return parse_dtype(name).bits


def bytes_per_element(name: str | Dtype) -> int | float:
    """Bytes per element of the dtype ``name`` names: an int for whole bytes, 0.5 for 4-bit, 0.75 for 6-bit."""
    return parse_dtype(name).bytes_per_element
