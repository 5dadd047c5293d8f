"""What a checkpoint stores (safetensors headers) beside what transformers builds, with the difference explained.

Pure: no torch, no I/O. `hfmem.hub.fetch_checkpoint` reads the headers (Hub or local folder) into a
`CheckpointSummary`; `compare_checkpoint` matches the stored tensor names to the built model's parameters
(`ParameterInventory`) and sorts every stored-minus-built element into named, counted groups: persistent buffers,
tied heads stored twice, modules transformers does not build, quantization metadata, packed quantized values and
parameters built but not stored. Whatever no rule explains is reported as ``unexplained``, never hidden.

Counts are elements ("values", as the Hub's ``safetensors.parameters`` counts them), whatever their dtype.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from hfmem.dtypes import DTYPES
from hfmem.memory.quantization import QuantScheme, weights_breakdown
from hfmem.types import (
    DIFFERENCE_REASONS as REASONS,
)
from hfmem.types import (
    SAFETENSORS_DTYPE_BITS,
    CheckpointComparison,
    CheckpointSummary,
    DifferenceGroup,
    ParameterInfo,
    ParameterInventory,
    StoredTensor,
)

__all__ = [
    "SAFETENSORS_DTYPE_BITS",
    "StoredTensor",
    "CheckpointSummary",
    "DifferenceGroup",
    "CheckpointComparison",
    "summary_from_headers",
    "compare_checkpoint",
]

#: Integer dtypes that quantizers pack several low-bit values into (bitsandbytes 4-bit: uint8 two per byte; GPTQ/AWQ
#: ``qweight``: int32 eight 4-bit values; MXFP4 ``*_blocks``: uint8 two per byte).
#: Every whole-byte integer safetensors dtype of `hfmem.dtypes`: U8, I8, U16, I16, U32, I32, U64, I64.
_PACKED_DTYPES = frozenset(d.safetensors_name for d in DTYPES if d.is_integer and d.safetensors_name is not None)

# --- Quantized-storage names -------------------------------------------------------------------------------------
#: Metadata tensors named by their last component:
#: * ``weight_scale_inv``: FP8 block scales (transformers ``integrations/finegrained_fp8.py`` ``FP8Linear``; the
#:   DeepSeek-V3 checkpoint), ``weight_scale``/``input_scale``/``weight_scale_2`` (compressed-tensors / ModelOpt FP8
#:   and NVFP4 layouts);
#: * ``SCB``, ``weight_format``: bitsandbytes LLM.int8 row scales (``bitsandbytes/nn/modules.py`` ``Int8Params``;
#:   transformers ``integrations/bitsandbytes.py``);
#: * ``qzeros``, ``g_idx``: GPTQ/AWQ zero points and act-order index (AutoGPTQ/GPTQModel ``QuantLinear.__init__``
#:   ``register_buffer("qweight"|"qzeros"|"scales"|"g_idx")``).
_METADATA_LAST = frozenset(
    {"weight_scale_inv", "weight_scale", "input_scale", "weight_scale_2", "input_scale_inv", "SCB", "weight_format"}
    | {"qzeros", "g_idx"}
)
#: bitsandbytes 4-bit: the quant state saved beside each packed ``weight`` (transformers
#: ``quantizers/quantizer_bnb_4bit.py`` ``serialized_names``: ``weight.absmax``, ``weight.quant_map``,
#: ``weight.nested_absmax``, ``weight.nested_quant_map``, ``weight.quant_state.bitsandbytes__nf4|fp4``).
_BNB_4BIT_METADATA = re.compile(r"\.weight\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..+)$")
#: MXFP4 (transformers ``integrations/mxfp4.py``: ``{proj}_blocks`` uint8 packed values, ``{proj}_scales`` uint8 E8M0
#: exponents, one per 32 values), e.g. gpt-oss ``mlp.experts.gate_up_proj_blocks``.
_MXFP4_BLOCKS = re.compile(r"^(?P<base>.+)_blocks$")
_MXFP4_SCALES = re.compile(r"^(?P<base>.+)_scales$")

# --- Names transformers builds differently ------------------------------------------------------------------------
#: Per-expert checkpoint tensors that transformers >= 5 fuses into 3-D ``experts.gate_up_proj`` / ``experts.down_proj``
#: (transformers ``conversion_mapping.py``: ``qwen2_moe`` — used by deepseek_v2/v3, qwen3_moe, … — merges
#: ``mlp.experts.*.gate_proj.weight`` + ``up_proj`` into ``mlp.experts.gate_up_proj``; ``mixtral`` merges
#: ``experts.*.w1``/``w3`` and renames ``w2`` to ``down_proj``).
_PER_EXPERT = re.compile(r"^(?P<pre>.*\.experts)\.\d+\.(?P<proj>[A-Za-z0-9_]+)\.weight$")
_FUSED_EXPERT = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "w1": "gate_up_proj", "w3": "gate_up_proj"}
_FUSED_EXPERT |= {"down_proj": "down_proj", "w2": "down_proj"}
#: Module renames transformers applies on load (``conversion_mapping.py``: mixtral ``WeightRenaming(
#: ".block_sparse_moe.", ".mlp.")``).
_RENAMES = ((".block_sparse_moe.", ".mlp."),)

#: Buffers (not parameters) that checkpoints store, or stale keys transformers now drops on load:
#: * ``inv_freq``: rotary tables saved by older code (Llama-2's checkpoint stores 64 per layer, REFERENCE.md §7;
#:   transformers 5.24 ``LlamaRotaryEmbedding`` registers it ``persistent=False``);
#: * ``attn.bias``/``masked_bias`` (and ``crossattention.*``): GPT-2's causal-mask buffers, in transformers 5.24
#:   ``GPT2PreTrainedModel._keys_to_ignore_on_load_unexpected = ["attn.bias", "crossattention.bias"]``;
#: * ``position_ids``/``token_type_ids``: BERT-style index buffers (``BertEmbeddings``, ``persistent=False`` in 5.24,
#:   persistent in older checkpoints);
#: * ``e_score_correction_bias``: DeepSeek-V3's router bias, an ``nn.Buffer`` in transformers 5.24
#:   ``DeepseekV3TopkRouter``;
#: * ``running_mean``/``running_var``/``num_batches_tracked``: ``torch.nn.BatchNorm*`` buffers.
_BUFFER = re.compile(
    r"(^|\.)(inv_freq|masked_bias|position_ids|token_type_ids|e_score_correction_bias|running_mean|running_var|"
    r"num_batches_tracked)$|(^|\.)(attn|attention|crossattention)\.bias$"
)
#: A decoder-layer index in a tensor name (``model.layers.61.``, GPT-2 ``h.11.``, BERT ``layer.3.``, T5 ``block.0.``).
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def summary_from_headers(source: str, headers: Iterable[tuple[str, Mapping[str, Any]]]) -> CheckpointSummary:
    """A summary from ``(tensor name, {"dtype": …, "shape": […]})`` pairs (a safetensors header's entries).

    The ``__metadata__`` entry of a raw header is skipped.

    Example:
        >>> summary_from_headers("x", [("w", {"dtype": "BF16", "shape": [2, 3]})]).bytes_by_dtype["BF16"]
        12
    """
    tensors = tuple(
        StoredTensor(name, str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        for name, info in headers
        if name != "__metadata__"
    )
    return CheckpointSummary(source, tensors)


class _Matcher:
    """Maps a stored tensor name to the built parameter it loads into, as transformers' loader would."""

    def __init__(self, parameters: Iterable[ParameterInfo]) -> None:
        self.built = {p.name: p for p in parameters}
        # Base-model prefixes: the first component of built names (``model``, ``transformer``, ``bert``…). A checkpoint
        # saved from the base model lacks it (GPT-2's ``h.0…`` for ``transformer.h.0…``); one saved from a head model
        # has it when the built class is the base model (``bert.encoder…`` for ``BertModel``'s ``encoder…``).
        self.prefixes = sorted({name.split(".", 1)[0] for name in self.built if "." in name})

    def _variants(self, name: str) -> Iterable[str]:
        for old, new in _RENAMES:
            if old in f".{name}":
                name = f".{name}".replace(old, new)[1:]
        yield name
        for prefix in self.prefixes:
            yield f"{prefix}.{name}"
        if "." in name:
            yield name.split(".", 1)[1]

    def find(self, name: str) -> str | None:
        for candidate in self._variants(name):
            if candidate in self.built:
                return candidate
        per_expert = _PER_EXPERT.match(name)
        if per_expert and per_expert["proj"] in _FUSED_EXPERT:
            fused = f"{per_expert['pre']}.{_FUSED_EXPERT[per_expert['proj']]}"
            for candidate in self._variants(fused):
                if candidate in self.built:
                    return candidate
        return None


def _value_name(name: str, stored: set[str]) -> str | None:
    """The name a quantized value tensor stands for (``x.qweight`` → ``x.weight``, ``p_blocks`` → ``p``), else None."""
    if name.endswith(".qweight"):
        return name[: -len("qweight")] + "weight"
    blocks = _MXFP4_BLOCKS.match(name)
    if blocks and f"{blocks['base']}_scales" in stored:
        return blocks["base"]
    return None


def _is_metadata(name: str, stored: set[str]) -> bool:
    last = name.rsplit(".", 1)[-1]
    if last in _METADATA_LAST or _BNB_4BIT_METADATA.search(name):
        return True
    if last == "scales" and name[: -len("scales")] + "qweight" in stored:  # GPTQ/AWQ group scales
        return True
    scales = _MXFP4_SCALES.match(name)
    return bool(scales and f"{scales['base']}_blocks" in stored)


def _layer_index(name: str) -> int | None:
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def compare_checkpoint(
    summary: CheckpointSummary,
    inventory: ParameterInventory,
    *,
    num_hidden_layers: int | None,
    scheme: QuantScheme | None = None,
) -> CheckpointComparison:
    """Match stored tensors to built parameters and explain ``stored − built`` in named groups.

    Each stored tensor is, in this order: the data of a built parameter (exact name, base-model prefix added or
    removed, quantized value names ``qweight``/``*_blocks`` mapped back, per-expert tensors summed into transformers'
    fused experts); part of a layer with index ≥ ``num_hidden_layers`` (``extra_modules``: DeepSeek-V3's MTP layer
    ``model.layers.61.*``, which ``DeepseekV3PreTrainedModel._keys_to_ignore_on_load_unexpected`` drops); quantization
    metadata; a buffer; a tied weight stored twice (the shape of a built embedding, under a name the model does not
    have because it ties it); or unexplained. A built parameter whose stored elements differ in number is packed
    quantized data when stored in an integer dtype, otherwise unexplained; one with no stored tensor is
    ``built_not_stored``.

    Args:
        summary: the stored tensors.
        inventory: the built model (with shapes; a ``--params`` inventory matches nothing).
        num_hidden_layers: the config's layer count; None skips the extra-layer rule.
        scheme: the checkpoint's quantization scheme, to put hfmem's predicted metadata bytes beside the stored ones.

    Returns:
        The comparison; ``difference_params == sum(g.params for g in explained) + unexplained_params``.

    Example:
        >>> from hfmem.types import ParameterInfo, ParameterInventory
        >>> inv = ParameterInventory.from_parameters([ParameterInfo("model.w", (4, 4), "bfloat16")],
        ...     buffer_params=0, largest_module=("model", 16), module_params=[], architecture=None, model_type=None)
        >>> s = summary_from_headers("x", [("w", {"dtype": "BF16", "shape": [4, 4]}),
        ...     ("rotary.inv_freq", {"dtype": "F32", "shape": [2]})])
        >>> compare_checkpoint(s, inv, num_hidden_layers=None).explained[0].reason
        'persistent_buffers'
    """
    matcher = _Matcher(inventory.parameters)
    stored_names = {t.name for t in summary.tensors}
    embedding_shapes = {p.shape for p in inventory.parameters if p.is_embedding}
    groups: dict[str, list[StoredTensor]] = {reason: [] for reason in REASONS}
    matched: dict[str, list[StoredTensor]] = {}
    unexplained: list[str] = []
    unexplained_params = 0

    for tensor in summary.tensors:
        target = matcher.find(_value_name(tensor.name, stored_names) or tensor.name)
        index = _layer_index(tensor.name)
        if target is not None and not _is_metadata(tensor.name, stored_names):
            matched.setdefault(target, []).append(tensor)
        elif num_hidden_layers is not None and index is not None and index >= num_hidden_layers:
            groups["extra_modules"].append(tensor)
        elif _is_metadata(tensor.name, stored_names):
            groups["quantization_metadata"].append(tensor)
        elif _BUFFER.search(tensor.name):
            groups["persistent_buffers"].append(tensor)
        elif tensor.shape in embedding_shapes and tensor.name.endswith("weight"):
            groups["tied_duplicates"].append(tensor)
        else:
            unexplained.append(tensor.name)
            unexplained_params += tensor.numel

    packed: list[tuple[str, int, int, int]] = []  # (name, stored tensors, stored − built, bytes)
    not_stored: list[ParameterInfo] = []
    for param in inventory.parameters:
        stored = matched.get(param.name)
        if not stored:
            not_stored.append(param)
            continue
        delta = sum(t.numel for t in stored) - param.numel
        if delta == 0:
            continue
        if all(t.dtype in _PACKED_DTYPES for t in stored):
            packed.append((param.name, len(stored), delta, sum(t.nbytes for t in stored)))
        else:
            unexplained.append(param.name)
            unexplained_params += delta

    explained: list[DifferenceGroup] = []
    for reason in REASONS:
        if reason == "packed_quantized_values":
            if packed:
                explained.append(
                    DifferenceGroup(
                        reason,
                        tensors=sum(n for _, n, _, _ in packed),
                        params=sum(d for _, _, d, _ in packed),
                        bytes=sum(b for _, _, _, b in packed),
                        examples=tuple(name for name, _, _, _ in packed[:3]),
                    )
                )
        elif reason == "built_not_stored":
            if not_stored:
                explained.append(
                    DifferenceGroup(
                        reason,
                        tensors=len(not_stored),
                        params=-sum(p.numel for p in not_stored),
                        examples=tuple(p.name for p in not_stored[:3]),
                    )
                )
        elif groups[reason]:
            tensors = groups[reason]
            explained.append(
                DifferenceGroup(
                    reason,
                    tensors=len(tensors),
                    params=sum(t.numel for t in tensors),
                    bytes=sum(t.nbytes for t in tensors),
                    examples=_examples(tensors, reason, num_hidden_layers),
                )
            )

    scheme_bytes = None
    if scheme is not None and scheme.quantized and inventory.has_shapes:
        scheme_bytes = weights_breakdown(inventory, scheme).quantization_metadata_bytes
    return CheckpointComparison(
        summary=summary,
        built_params=inventory.total_params,
        explained=tuple(explained),
        unexplained_params=unexplained_params,
        unexplained_tensors=len(unexplained),
        unexplained_examples=tuple(unexplained[:5]),
        num_hidden_layers=num_hidden_layers,
        scheme_name=scheme.name if scheme is not None else None,
        scheme_metadata_bytes=scheme_bytes,
    )


def _examples(tensors: list[StoredTensor], reason: str, num_hidden_layers: int | None) -> tuple[str, ...]:
    if reason == "extra_modules":  # name the modules (``model.layers.61``), not their hundreds of tensors
        modules: dict[str, None] = {}
        for tensor in tensors:
            match = _LAYER_INDEX.search(tensor.name)
            modules[tensor.name[: match.end() - 1] if match else tensor.name] = None
        return tuple(modules)[:3]
    names: dict[str, None] = {}
    for tensor in tensors:  # one example per distinct last component (``weight_scale_inv``, ``inv_freq``…)
        key = re.sub(r"\.\d+\.", ".N.", tensor.name)
        names.setdefault(key, None)
    return tuple(names)[:3]
