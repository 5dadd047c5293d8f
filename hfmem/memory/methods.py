"""What a fine-tuning method trains and how its frozen weights are stored; pure.

* ``full``: every parameter is trained.
* ``lora`` (Hu et al. 2021) / DoRA (Liu et al. 2024): peft's adapters are the only trainable tensors (with any
  ``modules_to_save`` copies); the base model is frozen in the working precision. The adapters themselves are
  built by peft on the meta model (`hfmem.inventory.apply_finetune`), so their count is exactly peft's.
* ``qlora`` (Dettmers et al. 2023): LoRA on a base whose linear weights bitsandbytes stores as 4-bit NF4
  (`hfmem.memory.quantization.bnb_4bit_bytes`); embeddings, the LM head, norms, biases and routers stay 16-bit.
* ``freeze``: only the parameters ``--train-modules`` matches are trained.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from hfmem.memory.quantization import bnb_4bit_bytes, is_quantized, scheme_for_dtype
from hfmem.types import FinetuneSettings, ParameterInfo, ParameterInventory

__all__ = [
    "ADAPTER_WEIGHT_BYTES",
    "QLORA_COMPUTE_BYTES",
    "matches_patterns",
    "is_qlora_quantized",
    "frozen_weight_bytes",
    "qlora_dequant_transient_bytes",
]

#: peft keeps adapters in fp32 on a 16-bit base: ``get_peft_model(..., autocast_adapter_dtype=True)`` (the default)
#: "will only cast adapter weights using float16 and bfloat16 to float32" (peft ``tuners_utils.py``
#: ``_cast_adapter_dtype``). The fp32 adapter is its own master copy: fp32 gradients, fp32 optimizer states.
ADAPTER_WEIGHT_BYTES = 4
#: bitsandbytes dequantizes a 4-bit weight to the compute dtype (``bnb_4bit_compute_dtype``, bf16 in QLoRA
#: recipes) for each matmul (``MatMul4Bit.forward``: ``F.dequantize_4bit(B, quant_state).to(A.dtype)``).
QLORA_COMPUTE_BYTES = 2


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


def frozen_weight_bytes(param: ParameterInfo, finetune: FinetuneSettings, weight_bytes: int) -> int:
    """Bytes of one frozen parameter: NF4 with its absmax metadata under QLoRA, else the working precision."""
    if finetune.method == "qlora" and is_qlora_quantized(param):
        return bnb_4bit_bytes(param.numel, double_quant=finetune.double_quant)
    if finetune.method == "qlora":
        return param.numel * QLORA_COMPUTE_BYTES
    return param.numel * weight_bytes


def qlora_dequant_transient_bytes(inventory: ParameterInventory) -> int:
    """The 16-bit dequantized copy of the largest 4-bit weight, live during its matmul (forward and backward)."""
    return QLORA_COMPUTE_BYTES * max((p.numel for p in inventory.parameters if is_qlora_quantized(p)), default=0)
