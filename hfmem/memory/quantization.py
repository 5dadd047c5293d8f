"""Bytes of the weights as a serving stack holds them: a plain dtype, or a quantized format with its metadata.

Pure functions over `ParameterInventory`; no torch. A `QuantScheme` says how the *quantizable* tensors are stored
(the weights of linear layers and routed experts, `ParameterInfo.quantizable`), and every other tensor
(embeddings, the LM head, norms, biases, routers, and modules the checkpoint lists in ``modules_to_not_convert``)
stays in 16 bits, as the Hugging Face quantization integrations leave them. Each layout names its source.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from hfmem import dtypes
from hfmem.errors import InvalidSetupError
from hfmem.memory.expr import Value, cite
from hfmem.memory.sources import SRC_AWQ, SRC_BNB_4BIT, SRC_FP8, SRC_INT8
from hfmem.types import ParameterInfo, ParameterInventory

__all__ = [
    "WeightsDtype",
    "WEIGHTS_DTYPES",
    "DTYPE_BYTES",
    "BNB_4BIT_BLOCKSIZE",
    "BNB_DQ_BLOCKSIZE",
    "QuantScheme",
    "WeightsBreakdown",
    "scheme_for_dtype",
    "scheme_from_quantization_config",
    "bnb_4bit_bytes",
    "bnb_4bit_counts",
    "bnb_4bit_metadata",
    "QuantCounts",
    "quantized_counts",
    "quantized_metadata_bytes",
    "sum_counts",
    "tensor_bytes",
    "plain_width",
    "is_16bit_model",
    "weights_total_bytes",
    "WeightOperands",
    "weight_operands",
    "plain_weight_bytes",
    "weight_bytes",
    "weights_breakdown",
]

WeightsDtype = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4", "nf4"]
WEIGHTS_DTYPES: tuple[WeightsDtype, ...] = ("fp32", "bf16", "fp16", "fp8", "int8", "int4", "nf4")

#: Bytes per element of the plain dtypes a built model's parameters can have, by torch name (a view of
#: `hfmem.dtypes`; other dtypes count as 2 bytes where this is read with a default).
DTYPE_BYTES: dict[str, int] = {
    name: dtypes.bits(name) // 8
    for name in (
        "float32",
        "float16",
        "bfloat16",
        "float64",
        "int8",
        "uint8",
        "float8_e4m3fn",
        "float8_e5m2",
        "int32",
        "int64",
        "bool",
    )
}

#: bitsandbytes 4-bit (NF4/FP4): one fp32 absmax per 64-element block (``quantize_4bit(blocksize=64)``,
#: bitsandbytes ``functional.py``). With double quantization the absmax values are themselves quantized to 8 bits
#: in blocks of 256 with one fp32 scale per block and one fp32 offset per tensor
#: (``quantize_blockwise(absmax - offset, blocksize=256)``; Dettmers et al. 2023, QLoRA §3: 0.5 → 0.127 bits).
BNB_4BIT_BLOCKSIZE = 64
BNB_DQ_BLOCKSIZE = 256
#: MXFP4 (OCP Microscaling spec v1.0, as gpt-oss ships its experts): 4-bit E2M1 values with one shared 8-bit
#: E8M0 exponent per 32-element block: ``*_blocks`` (uint8, two values a byte) + ``*_scales`` (uint8).
MXFP4_BLOCKSIZE = 32
#: FP8 block-wise (DeepSeek-V3's checkpoint, transformers ``FineGrainedFP8Config``): one fp32 ``weight_scale_inv``
#: per 128 × 128 block of the weight.
FP8_DEFAULT_BLOCK = (128, 128)
#: GPTQ/AWQ default group size along the input dimension (AutoGPTQ ``BaseQuantizeConfig.group_size = 128``).
DEFAULT_GROUP_SIZE = 128

Layout = Literal["plain", "bnb-int8", "bnb-4bit", "gptq", "awq", "fp8-tensor", "fp8-block", "mxfp4"]


@dataclass(frozen=True)
class QuantScheme:
    """How the weights are stored.

    Attributes:
        name: what the report shows (``bf16``, ``nf4``, ``fp8 block 128x128 (checkpoint)``…).
        layout: the storage layout of quantizable tensors (``plain``: every tensor in ``plain_bytes``).
        plain_bytes: bytes per element of the tensors that stay unquantized (all of them for ``plain``); None
            keeps each tensor's checkpoint dtype.
        bits: bits per quantized value (4 or 8).
        group_size: GPTQ/AWQ input-dimension group.
        double_quant: bitsandbytes 4-bit double quantization.
        block: FP8 block shape (rows, cols).
        skip_patterns: module names or globs left unquantized (``modules_to_not_convert``, ``llm_int8_skip_modules``).
        experts_only: quantize routed experts only (MXFP4 in gpt-oss).
        source: where the layout comes from (``--weights-dtype`` or the checkpoint's ``quantization_config``).
    """

    name: str
    layout: Layout
    plain_bytes: int | None = 2
    bits: int = 16
    group_size: int = DEFAULT_GROUP_SIZE
    double_quant: bool = False
    block: tuple[int, int] = FP8_DEFAULT_BLOCK
    skip_patterns: tuple[str, ...] = ()
    experts_only: bool = False
    source: str = "--weights-dtype"

    @property
    def quantized(self) -> bool:
        return self.layout != "plain"


@dataclass(frozen=True)
class WeightsBreakdown:
    """The weights of one model under a scheme (whole model, before any tensor-parallel split)."""

    scheme: QuantScheme
    quantized_params: int
    quantized_data_bytes: int
    quantization_metadata_bytes: int
    unquantized_params: int
    unquantized_bytes: int

    @property
    def total_bytes(self) -> int:
        return weights_total_bytes(  # type: ignore[return-value]
            self.quantized_data_bytes, self.quantization_metadata_bytes, self.unquantized_bytes
        )


def weights_total_bytes(data: Value, metadata: Value, plain: Value) -> Value:
    """A model's weight bytes: the packed quantized values, their metadata and the unquantized tensors."""
    return data + metadata + plain


def scheme_for_dtype(
    dtype: WeightsDtype, *, group_size: int = DEFAULT_GROUP_SIZE, double_quant: bool = False
) -> QuantScheme:
    """The scheme ``--weights-dtype`` names.

    ``fp32``/``bf16``/``fp16`` cast every tensor. ``int8`` is bitsandbytes LLM.int8 (int8 + fp32 scale per output
    row), ``nf4`` bitsandbytes NF4, ``int4`` GPTQ/AWQ-style 4-bit with fp16 scales and 4-bit zeros per
    ``group_size`` inputs (AWQ's layout: no ``g_idx``), ``fp8`` E4M3 with one fp32 scale per tensor.
    """
    if group_size < 1:
        raise InvalidSetupError(f"--group-size must be at least 1, got {group_size}")
    if dtype in ("fp32", "bf16", "fp16"):
        return QuantScheme(dtype, "plain", plain_bytes=dtypes.bits(dtype) // 8)
    if dtype == "int8":
        return QuantScheme("int8 (bitsandbytes LLM.int8)", "bnb-int8", bits=dtypes.INT8.bits)
    if dtype == "nf4":
        label = "nf4 (bitsandbytes" + (", double quant)" if double_quant else ")")
        return QuantScheme(label, "bnb-4bit", bits=dtypes.NF4.bits, double_quant=double_quant)
    if dtype == "int4":
        return QuantScheme(f"int4 (group {group_size})", "awq", bits=dtypes.INT4.bits, group_size=group_size)
    if dtype == "fp8":
        return QuantScheme("fp8 e4m3 (per-tensor scale)", "fp8-tensor", bits=dtypes.FP8_E4M3.bits)
    raise InvalidSetupError(f"unknown --weights-dtype '{dtype}'; choose one of {', '.join(WEIGHTS_DTYPES)}")


def scheme_from_quantization_config(qconfig: Mapping[str, Any]) -> QuantScheme | None:
    """The scheme a pre-quantized checkpoint's ``quantization_config`` describes; None for an unknown method.

    Field names are those of transformers' quantization configs (``utils/quantization_config.py``):
    ``FineGrainedFP8Config`` (``quant_method: fp8``, ``weight_block_size``), ``Mxfp4Config``, ``GPTQConfig``
    (``bits``, ``group_size``, ``desc_act``), ``AwqConfig``, ``BitsAndBytesConfig``.
    """
    method = str(qconfig.get("quant_method", "")).lower()
    skip = tuple(
        str(m)
        for key in ("modules_to_not_convert", "llm_int8_skip_modules")
        for m in (qconfig.get(key) or ())
        if isinstance(m, str)
    )
    source = f"checkpoint quantization_config (quant_method: {method})"
    if method == "fp8":
        block = qconfig.get("weight_block_size")
        if isinstance(block, Sequence) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block):
            rows, cols = int(block[0]), int(block[1])
            return QuantScheme(
                f"fp8 e4m3, {rows}x{cols} blocks",
                "fp8-block",
                bits=8,
                block=(rows, cols),
                skip_patterns=skip,
                source=source,
            )
        return QuantScheme("fp8 e4m3 (per-tensor scale)", "fp8-tensor", bits=8, skip_patterns=skip, source=source)
    if method == "mxfp4":
        return QuantScheme("mxfp4 experts", "mxfp4", bits=4, skip_patterns=skip, experts_only=True, source=source)
    if method in ("gptq", "awq"):
        bits = qconfig.get("bits", qconfig.get("w_bit", 4))
        group = qconfig.get("group_size", qconfig.get("q_group_size", DEFAULT_GROUP_SIZE))
        bits = bits if isinstance(bits, int) and bits in (2, 3, 4, 8) else 4
        # group_size -1 means one group per row (AutoGPTQ): treat it as the whole input dimension.
        group = group if isinstance(group, int) and group != 0 else DEFAULT_GROUP_SIZE
        return QuantScheme(
            f"{method} int{bits} (group {group})",
            method,
            bits=bits,
            group_size=group,
            skip_patterns=skip,
            source=source,
        )  # type: ignore[arg-type]
    if method == "bitsandbytes":
        if qconfig.get("load_in_4bit"):
            dq = bool(qconfig.get("bnb_4bit_use_double_quant", False))
            kind = str(qconfig.get("bnb_4bit_quant_type", "fp4"))
            return QuantScheme(
                f"{kind} (bitsandbytes{', double quant' if dq else ''})",
                "bnb-4bit",
                bits=4,
                double_quant=dq,
                skip_patterns=skip,
                source=source,
            )
        if qconfig.get("load_in_8bit"):
            return QuantScheme("int8 (bitsandbytes LLM.int8)", "bnb-int8", bits=8, skip_patterns=skip, source=source)
    return None


def bnb_4bit_bytes(numel: int, *, double_quant: bool) -> int:
    """bitsandbytes 4-bit storage of one tensor: packed codes + absmax metadata.

    Example (one 4096 × 4096 projection, 262,144 blocks of 64):
        >>> bnb_4bit_bytes(4096 * 4096, double_quant=False)  # 8 MiB codes + 262,144 fp32 absmax
        9437184
        >>> bnb_4bit_bytes(4096 * 4096, double_quant=True)  # 8 MiB + 262,144 uint8 + 1,024 fp32 + 1 fp32 offset
        8654852
    """
    counts = bnb_4bit_counts(numel)
    return counts.packed_bytes + bnb_4bit_metadata(counts, double_quant=double_quant)  # type: ignore[return-value]


def bnb_4bit_counts(numel: int) -> QuantCounts:
    """The `QuantCounts` of one bitsandbytes 4-bit tensor: ⌈n/2⌉ code bytes, ⌈n/64⌉ blocks, ⌈⌈n/64⌉/256⌉."""
    blocks = -(-numel // BNB_4BIT_BLOCKSIZE)
    return QuantCounts(numel, -(-numel // 2), 1, blocks=blocks, blocks2=-(-blocks // BNB_DQ_BLOCKSIZE))


def bnb_4bit_metadata(c: QuantCounts, *, double_quant: bool) -> Value:
    """bitsandbytes 4-bit absmax storage: 4 × K fp32 absmax, or with double quantization K uint8 absmax + 4 × K2
    fp32 scales + one fp32 offset per tensor (bitsandbytes ``functional.py`` ``quantize_4bit``)."""
    fp32 = cite(4, SRC_BNB_4BIT, c.blocks)
    if not double_quant:
        return fp32 * c.blocks
    return c.blocks + fp32 * c.blocks2 + fp32 * c.tensors


@dataclass(slots=True)
class QuantCounts:
    """Sums over quantized tensors that the metadata formulas need (ints, or symbols for ``--explain``).

    Attributes:
        elements: quantized values (Ψ_Q).
        packed_bytes: bytes of the packed values, Σ⌈n × bits / 8⌉ per tensor.
        tensors: quantized tensors.
        rows: output rows (numel / in_features) — one SCB scale each for LLM.int8.
        blocks: bnb 4-bit Σ⌈n/64⌉, MXFP4 Σ⌈n/32⌉, FP8 block-wise Σ stacks × ⌈out/r⌉ × ⌈in/c⌉.
        blocks2: bnb double quantization Σ⌈⌈n/64⌉/256⌉.
        groups: GPTQ/AWQ scales, Σ rows × ⌈in / group_size⌉ (one fp16 scale and one zero each).
        zero_bytes: GPTQ/AWQ packed zeros, Σ⌈rows × groups × bits / 8⌉ per tensor.
        inputs: GPTQ g_idx entries, Σ in_features × stacks (one int32 each).
    """

    elements: Value
    packed_bytes: Value
    tensors: Value
    rows: Value = 0
    blocks: Value = 0
    blocks2: Value = 0
    groups: Value = 0
    zero_bytes: Value = 0
    inputs: Value = 0


def quantized_counts(param: ParameterInfo, scheme: QuantScheme) -> QuantCounts:
    """The `QuantCounts` of one quantized tensor (weights are ``[..., out, in]``, as nn.Linear stores them)."""
    numel = param.numel
    in_features = param.shape[-1]
    rows = numel // in_features
    layout = scheme.layout
    if layout == "bnb-4bit":
        return bnb_4bit_counts(numel)
    if layout in ("gptq", "awq"):
        groups = -(-in_features // scheme.group_size) if scheme.group_size > 0 else 1
        stacks = numel // (rows * in_features)
        return QuantCounts(
            numel,
            -(-numel * scheme.bits // 8),
            1,
            rows=rows,
            groups=rows * groups,
            zero_bytes=-(-rows * groups * scheme.bits // 8),
            inputs=in_features * stacks if layout == "gptq" else 0,
        )
    if layout == "fp8-block":
        block_rows, block_cols = scheme.block
        out_features = param.shape[-2] if len(param.shape) >= 2 else 1
        stacks = numel // (out_features * in_features)
        blocks = stacks * -(-out_features // block_rows) * -(-in_features // block_cols)
        return QuantCounts(numel, numel, 1, rows=rows, blocks=blocks)
    if layout == "mxfp4":
        return QuantCounts(numel, -(-numel // 2), 1, blocks=-(-numel // MXFP4_BLOCKSIZE))
    if layout in ("bnb-int8", "fp8-tensor"):
        return QuantCounts(numel, numel, 1, rows=rows)
    raise InvalidSetupError(f"unknown weight layout '{scheme.layout}'")


def sum_counts(counts: Iterable[QuantCounts]) -> QuantCounts:
    """Field-by-field sums (every field is a sum over tensors, so the formulas hold for the totals)."""
    names = [f.name for f in fields(QuantCounts)]
    out = [0] * len(names)
    for c in counts:
        for i, name in enumerate(names):
            out[i] += getattr(c, name)
    return QuantCounts(*out)


def quantized_metadata_bytes(scheme: QuantScheme, c: QuantCounts) -> Value:
    """Scales, zeros and absmax values of quantized tensors, by layout (see `tensor_bytes`), over `QuantCounts`."""
    layout = scheme.layout
    if layout == "bnb-4bit":
        return bnb_4bit_metadata(c, double_quant=scheme.double_quant)
    if layout == "bnb-int8":
        return cite(4, SRC_INT8, c.rows) * c.rows
    if layout in ("gptq", "awq"):
        # one fp16 scale and one bits-bit zero per group and output; GPTQ adds an int32 g_idx per input
        meta = cite(2, SRC_AWQ, c.groups) * c.groups + c.zero_bytes
        if layout == "gptq":
            meta = meta + cite(4, SRC_AWQ, c.inputs) * c.inputs
        return meta
    if layout == "fp8-tensor":
        return cite(4, SRC_FP8, c.tensors) * c.tensors
    if layout == "fp8-block":
        return cite(4, SRC_FP8, c.blocks) * c.blocks
    if layout == "mxfp4":
        return c.blocks
    raise InvalidSetupError(f"unknown weight layout '{scheme.layout}'")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    module = name.rsplit(".", 1)[0]
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatchcase(module, pattern) or fnmatch.fnmatchcase(module, pattern + ".*"):
                return True
        elif re.search(rf"(^|\.){re.escape(pattern)}($|\.)", module):
            return True
    return False


def is_quantized(param: ParameterInfo, scheme: QuantScheme) -> bool:
    """Whether ``scheme`` stores ``param`` quantized: a linear/expert weight that no skip rule keeps in 16 bits."""
    if not scheme.quantized or not param.quantizable or param.is_embedding:
        return False
    if scheme.experts_only and not param.is_routed_expert:
        return False
    return not _matches(param.name, scheme.skip_patterns)


def plain_width(param: ParameterInfo, scheme: QuantScheme, *, model_is_16bit: bool = True) -> int:
    """Bytes per element of a tensor ``scheme`` leaves unquantized (see `tensor_bytes`)."""
    if param.dtype == dtypes.FP32.torch_name and model_is_16bit:
        return 4
    if scheme.layout == "plain":
        return scheme.plain_bytes if scheme.plain_bytes is not None else DTYPE_BYTES.get(param.dtype, 2)
    return 2


def tensor_bytes(param: ParameterInfo, scheme: QuantScheme, *, model_is_16bit: bool = True) -> tuple[int, int]:
    """``(data_bytes, metadata_bytes)`` of one tensor under ``scheme``.

    Unquantized tensors take the scheme's plain width (the checkpoint dtype when it has none; 2 bytes beside
    quantized ones, the 16-bit compute dtype bitsandbytes and GPTQ loaders default to), except that a tensor the
    model keeps in fp32 inside a 16-bit model (``_keep_in_fp32_modules``) stays 4 bytes, as ``from_pretrained``
    keeps it.

    Quantized layouts (weights are ``[..., out, in]``, as nn.Linear and transformers' fused experts store them):

    * ``bnb-int8``: int8 values + one fp32 ``SCB`` scale per output row (bitsandbytes ``Int8Params``).
    * ``bnb-4bit``: see `bnb_4bit_bytes`.
    * ``gptq`` / ``awq``: ``bits``-bit values packed in int32 + per group of ``group_size`` inputs and per output
      column one fp16 scale and one ``bits``-bit zero point (``qweight``/``scales``/``qzeros``); GPTQ also stores an
      int32 ``g_idx`` per input (AutoGPTQ ``QuantLinear``).
    * ``fp8-tensor``: 1 byte per value + one fp32 scale. ``fp8-block``: 1 byte + one fp32 ``weight_scale_inv`` per
      block (``FP8Linear``).
    * ``mxfp4``: 4 bits per value + one uint8 exponent per 32 values.
    """
    if not is_quantized(param, scheme):
        return param.numel * plain_width(param, scheme, model_is_16bit=model_is_16bit), 0
    counts = quantized_counts(param, scheme)
    return counts.packed_bytes, quantized_metadata_bytes(scheme, counts)  # type: ignore[return-value]


def is_16bit_model(inventory: ParameterInventory) -> bool:
    """Most parameters are 16-bit, so fp32 tensors among them are ones the model keeps in fp32 on purpose."""
    sixteen = sum(p.numel for p in inventory.parameters if DTYPE_BYTES.get(p.dtype) == 2)
    return sixteen * 2 > inventory.total_params


@dataclass(frozen=True)
class WeightOperands:
    """The sums the weight formula needs (`weight_operands`).

    Attributes:
        quantized: `QuantCounts` summed over the quantized tensors; None when the scheme quantizes none.
        plain_by_width: ``(bytes per element, parameters)`` of the unquantized tensors, widest first.
    """

    quantized: QuantCounts | None
    plain_by_width: tuple[tuple[int, int], ...]


def weight_operands(inventory: ParameterInventory, scheme: QuantScheme) -> WeightOperands:
    """Group ``inventory``'s tensors into what `weight_bytes` sums: quantized counts, plain parameters by width.

    Raises:
        InvalidSetupError: a quantized scheme for a ``--params`` plan, whose tensors (and so which are linear) are
            unknown.
    """
    if not inventory.has_shapes:
        if scheme.quantized:
            raise InvalidSetupError(
                "quantized weights depend on which tensors are linear layers, which --params does not know; "
                "pass a model id or config, or use --weights-dtype fp32/bf16/fp16"
            )
        return WeightOperands(None, ((scheme.plain_bytes or 2, inventory.total_params),))
    model_is_16bit = is_16bit_model(inventory)
    plain: dict[int, int] = {}
    quantized: list[QuantCounts] = []
    for param in inventory.parameters:
        if is_quantized(param, scheme):
            quantized.append(quantized_counts(param, scheme))
        else:
            width = plain_width(param, scheme, model_is_16bit=model_is_16bit)
            plain[width] = plain.get(width, 0) + param.numel
    return WeightOperands(sum_counts(quantized) if quantized else None, tuple(sorted(plain.items(), reverse=True)))


def plain_weight_bytes(plain_by_width: Iterable[tuple[Value, Value]]) -> Value:
    """Σ parameters × width over the unquantized tensors (``(width, parameters)`` pairs)."""
    out: Value = 0
    for width, params in plain_by_width:
        out = out + params * width
    return out


def weight_bytes(
    scheme: QuantScheme, quantized: QuantCounts | None, plain_by_width: Iterable[tuple[Value, Value]]
) -> Value:
    """A model's weight bytes over `weight_operands`: packed values + metadata + Σ width × parameters."""
    if quantized is None:
        return plain_weight_bytes(plain_by_width)
    return weights_total_bytes(
        quantized.packed_bytes, quantized_metadata_bytes(scheme, quantized), plain_weight_bytes(plain_by_width)
    )


def weights_breakdown(inventory: ParameterInventory, scheme: QuantScheme) -> WeightsBreakdown:
    """The model's weights under ``scheme``, from `weight_operands` (see `tensor_bytes` for each layout).

    Raises:
        InvalidSetupError: a quantized scheme for a ``--params`` plan (`weight_operands`).
    """
    ops = weight_operands(inventory, scheme)
    plain_params = sum(params for _, params in ops.plain_by_width)
    plain_bytes: int = plain_weight_bytes(ops.plain_by_width)  # type: ignore[assignment]
    q = ops.quantized
    if q is None:
        return WeightsBreakdown(scheme, 0, 0, 0, plain_params, plain_bytes)
    meta: int = quantized_metadata_bytes(scheme, q)  # type: ignore[assignment]
    return WeightsBreakdown(scheme, q.elements, q.packed_bytes, meta, plain_params, plain_bytes)  # type: ignore[arg-type]
