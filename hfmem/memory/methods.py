"""What a fine-tuning method trains and how its frozen weights are stored; pure.

* ``full``: every parameter is trained.
* ``lora`` (Hu et al. 2021) / DoRA (Liu et al. 2024): peft's adapters are the only trainable tensors (with any
  ``modules_to_save`` copies); the base model is frozen in the working precision. The adapters themselves are
  built by peft on the meta model (`hfmem.build.finetune.apply_finetune`), so their count is exactly peft's.
* ``qlora`` (Dettmers et al. 2023): LoRA on a base whose linear weights bitsandbytes stores as 4-bit NF4
  (`hfmem.memory.quantization.bnb_4bit_bytes`); embeddings, the LM head, norms, biases and routers stay 16-bit.
* ``freeze``: only the parameters ``--train-modules`` matches are trained.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hfmem.dtypes import BF16, FP32
from hfmem.memory.expr import Value, cite
from hfmem.memory.quantization import (
    QuantCounts,
    bnb_4bit_counts,
    bnb_4bit_metadata,
    is_quantized,
    scheme_for_dtype,
    sum_counts,
)
from hfmem.memory.sources import SRC_BNB_MATMUL
from hfmem.types import FinetuneSettings, ParameterInfo, ParameterInventory

__all__ = [
    "AdapterCounts",
    "count_adapters",
    "adapter_params",
    "ADAPTER_DTYPE",
    "ADAPTER_WEIGHT_BYTES",
    "QLORA_COMPUTE_BYTES",
    "matches_patterns",
    "is_qlora_quantized",
    "frozen_weight_bytes",
    "FrozenCounts",
    "count_frozen",
    "frozen_bytes",
    "qlora_largest_nf4_params",
]

#: peft keeps adapters in fp32 on a 16-bit base: ``get_peft_model(..., autocast_adapter_dtype=True)`` (the default)
#: "will only cast adapter weights using float16 and bfloat16 to float32" (peft ``tuners_utils.py``
#: ``_cast_adapter_dtype``). The fp32 adapter is its own master copy: fp32 gradients, fp32 optimizer states.
ADAPTER_DTYPE = FP32
ADAPTER_WEIGHT_BYTES = ADAPTER_DTYPE.bits // 8
#: bitsandbytes dequantizes a 4-bit weight to the compute dtype (``bnb_4bit_compute_dtype``, bf16 in QLoRA
#: recipes) for each matmul (``MatMul4Bit.forward``: ``F.dequantize_4bit(B, quant_state).to(A.dtype)``).
QLORA_COMPUTE_BYTES = BF16.bits // 8


@dataclass(frozen=True)
class AdapterCounts:
    """The trainable tensors of a LoRA/DoRA model, as `adapter_params` sums them (`count_adapters`).

    Attributes:
        lora_sides: Σ over the adapted linears of (inputs + outputs), each LoRA matrix counted by its side that is
            not the rank.
        dora_magnitudes: DoRA magnitude vectors' elements (one per output feature of each adapted linear).
        other_params: every other trainable tensor (``modules_to_save`` copies).
    """

    lora_sides: int
    dora_magnitudes: int
    other_params: int


def count_adapters(trained: Iterable[ParameterInfo], rank: int) -> AdapterCounts:
    """Classify the trainable tensors of a peft model of LoRA rank ``rank``."""
    sides = dora = other = 0
    for p in trained:
        if ".lora_" in p.name and "magnitude" not in p.name and len(p.shape) == 2 and rank in p.shape:
            # lora_A is [r, in], lora_B is [out, r] (embeddings: lora_embedding_A [r, vocab], _B [dim, r]): the
            # side that is not the rank, numel / r exactly.
            sides += p.numel // rank
        elif "magnitude" in p.name:
            dora += p.numel
        else:
            other += p.numel
    return AdapterCounts(sides, dora, other)


def adapter_params(rank: Value, lora_sides: Value, dora_magnitudes: Value, other_params: Value) -> Value:
    """Trainable parameters of a LoRA model: r × Σ(in + out) over adapted linears (Hu et al. 2021: A is r × in,
    B is out × r) + DoRA magnitudes (Liu et al. 2024) + modules_to_save copies."""
    return rank * lora_sides + dora_magnitudes + other_params


def matches_patterns(name: str, patterns: Sequence[str]) -> bool:
    """Whether parameter ``name`` belongs to a module ``patterns`` names.

    A pattern is a module name or dotted path matched on whole components (``lm_head``, ``mlp``,
    ``model.layers.31``), a glob over the parameter or module path (``model.layers.3?.*``, ``*.mlp.*``), or a
    regular expression searched in the name after ``re:`` (``re:layers\\.(30|31)\\.``).

    Example:
        >>> matches_patterns("model.layers.31.mlp.up_proj.weight", ["layers.31"])
        True
        >>> matches_patterns("model.layers.3.mlp.up_proj.weight", ["layers.31"])
        False
    """
    module = name.rsplit(".", 1)[0]
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.search(pattern[3:], name):
                return True
        elif any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(module, pattern):
                return True
        elif re.search(rf"(^|\.){re.escape(pattern)}($|\.)", name):
            return True
    return False


def is_qlora_quantized(param: ParameterInfo) -> bool:
    """A frozen linear (or routed-expert) weight that bitsandbytes 4-bit stores as NF4 under QLoRA.

    The rule is `hfmem.memory.quantization.is_quantized` for NF4 (embeddings and the LM head stay 16-bit, as
    transformers' bitsandbytes integration skips the output embeddings), restricted to frozen tensors: peft's
    adapters and ``modules_to_save`` copies are trained in full precision.
    """
    return not param.trainable and is_quantized(param, scheme_for_dtype("nf4"))


@dataclass(slots=True)
class FrozenCounts:
    """Sums over frozen tensors that the frozen-weight formula needs (ints, or symbols for ``--explain``).

    Attributes:
        plain_params: frozen elements stored plainly (all of them, or under QLoRA those bitsandbytes leaves 16-bit).
        nf4: QLoRA's NF4 tensors (`hfmem.memory.quantization.QuantCounts`), None without QLoRA.
    """

    plain_params: Value
    nf4: QuantCounts | None = None


def count_frozen(params: Iterable[ParameterInfo], finetune: FinetuneSettings) -> FrozenCounts:
    """The `FrozenCounts` of the frozen tensors among ``params``."""
    frozen = [p for p in params if not p.trainable]
    if finetune.method != "qlora":
        return FrozenCounts(sum(p.numel for p in frozen))
    quantized = [p for p in frozen if is_qlora_quantized(p)]
    plain = sum(p.numel for p in frozen) - sum(p.numel for p in quantized)
    return FrozenCounts(plain, sum_counts(bnb_4bit_counts(p.numel) for p in quantized))


def frozen_bytes(finetune: FinetuneSettings, counts: FrozenCounts, weight_bytes: Value) -> Value:
    """Bytes of frozen weights: NF4 codes + absmax metadata and 16-bit others under QLoRA, else the working
    precision (``weight_bytes`` per element)."""
    if counts.nf4 is None:
        return counts.plain_params * weight_bytes
    nf4 = counts.nf4
    return (
        nf4.packed_bytes
        + bnb_4bit_metadata(nf4, double_quant=finetune.double_quant)
        + counts.plain_params * cite(QLORA_COMPUTE_BYTES, SRC_BNB_MATMUL, counts.plain_params)
    )


def frozen_weight_bytes(param: ParameterInfo, finetune: FinetuneSettings, weight_bytes: int) -> int:
    """Bytes of one frozen parameter: `frozen_bytes` of that one tensor."""
    return frozen_bytes(finetune, count_frozen([param], finetune), weight_bytes)  # type: ignore[return-value]


def qlora_largest_nf4_params(inventory: ParameterInventory) -> int:
    """Elements of the largest NF4 weight: its 16-bit dequantized copy (`QLORA_COMPUTE_BYTES` each) is live during
    its matmul, forward and backward (`hfmem.memory.peak.overhead_terms`)."""
    return max((p.numel for p in inventory.parameters if is_qlora_quantized(p)), default=0)
