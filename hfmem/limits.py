"""The largest sizes hfmem plans for, checked before anything is built, traced or computed.

Meta tensors cost no memory, but building a model still creates one Python object per layer, and config classes
loop over some sizes (``layer_types`` per layer, ``id2label`` per label): a config.json saying
``"num_hidden_layers": 1000000000000`` would otherwise run until the machine runs out of memory. Every bound here
is far above any real model or run (the deepest catalogue model has 126 layers; the longest context is ~10M tokens),
so it only refuses values that are typos or garbage, with a one-line error naming the key and the bound.

Pure: no torch, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from hfmem.errors import InvalidConfigError, InvalidSetupError
from hfmem.types import InferenceSetup, TrainingSetup

__all__ = [
    "MAX_LAYERS",
    "MAX_COUNT",
    "MAX_SIZE",
    "MAX_DEPTH",
    "MAX_TOKENS",
    "MAX_BATCH",
    "MAX_DEGREE",
    "MAX_PARAMS",
    "MAX_BYTES",
    "check_config",
    "check_setup",
    "check_params",
    "MAX_CONFIG_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_ADAPTER_CHAIN",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "NetworkBudget",
    "NETWORK_BUDGET",
]

#: Layers of one stack (num_hidden_layers, n_layer, encoder_layers…): 1,024 builds in ~10 s; real models have ≤ 200.
MAX_LAYERS = 1024
#: Other repeated units (experts, heads, labels, groups: every ``num_*`` key): DeepSeek-V3 has 256 experts.
MAX_COUNT = 1_000_000
#: Any other size (hidden_size, vocab_size, max_position_embeddings, sliding_window…): the int32 range.
MAX_SIZE = 2**31 - 1
#: Nesting of objects and lists in config.json (real configs nest 3–4 deep: text_config.rope_scaling…).
MAX_DEPTH = 32
#: Tokens per sequence (--seq-len, --context, --prefill-chunk): 2^27 = 134,217,728, 13× the longest context.
MAX_TOKENS = 2**27
#: Sequences per GPU (--batch-size).
MAX_BATCH = 2**20
#: GPUs in total, and each parallel degree, micro-batch count, LoRA rank or alpha, quantization group.
MAX_DEGREE = 2**20
#: Parameters of a --params plan (a quadrillion).
MAX_PARAMS = 10**15
#: A memory size (--gpu-memory, --cuda-context): 1 EiB.
MAX_BYTES = 2**60

#: config.json / adapter_config.json: 16 MiB, read only after a size check (stat() for a file, the Hub's reported size
#: and a byte count while downloading). Real configs are 1-2 KB (the largest in the catalogue, gpt-oss-20b, is 1,806
#: bytes); the largest kind are image classifiers over ImageNet-22k, whose id2label and label2id list 21,841 classes
#: (microsoft/beit-base-patch16-224-pt22k-ft22k's model card) at ~45 bytes an entry each: ~2 MB. 16 MiB is 8× that
#: and parses in a fraction of a second; a 2 GB file would exhaust memory (MemoryError) before.
MAX_CONFIG_BYTES = 16 * 2**20
#: Any other answer hfmem reads from a server (file lists, safetensors headers, error pages): 64 MiB, above
#: huggingface_hub's own 25,000,000-byte bound on a safetensors header (constants.SAFETENSORS_MAX_HEADER_LENGTH).
MAX_RESPONSE_BYTES = 64 * 2**20
#: PEFT adapters whose base is itself an adapter, followed at most this deep (real ones: one level).
MAX_ADAPTER_CHAIN = 8
#: The default deadline of one network operation (config.json, custom code, safetensors headers), whole, in seconds:
#: every request, retry and back-off of it together (`--timeout`).
DEFAULT_TIMEOUT_SECONDS = 30.0
#: The longest --timeout: a day.
MAX_TIMEOUT_SECONDS = 86_400.0


@dataclass
class NetworkBudget:
    """One run's network deadline: ``seconds`` per operation; once one operation ran out of time (``gave_up`` says
    which), the run's later operations give up at once instead of waiting again on the same server."""

    seconds: float = DEFAULT_TIMEOUT_SECONDS
    gave_up: str | None = None


#: The current run's budget (the CLI sets one per run from --timeout); None: each operation gets the default alone.
NETWORK_BUDGET: ContextVar[NetworkBudget | None] = ContextVar("hfmem_network_budget", default=None)

_LAYER_KEY = re.compile(r"(^|_)layers?$|^n_layers?$|(^|_)blocks$")
_COUNT_KEY = re.compile(r"^num_|^n_|(^|_)(experts|heads|labels|groups)$")
_SIZE_KEY = re.compile(
    r"(^|_)(size|dim|length|positions|embeddings|window|rank|ctx|inner|ff|embd|model|kv|tokens|features)$|^d_"
)


def check_config(config: Mapping[str, Any], model_id: str) -> None:
    """Refuse a config.json whose sizes no model has, or that nests absurdly deep, before transformers reads it.

    Every key at any depth is checked by its name: layer counts against `MAX_LAYERS`, other ``num_*`` / ``n_*``
    counts against `MAX_COUNT`, sizes (``*_size``, ``*_dim``, ``*_positions``, ``vocab_size``…) against
    `MAX_SIZE`. Numbers only (ints and floats, not bools); a wrong type is left to the config class to reject.

    Raises:
        InvalidConfigError: naming the key, its value and the bound.

    Example:
        >>> check_config({"num_hidden_layers": 10**12}, "org/x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hfmem.errors.InvalidConfigError: config.json of 'org/x' has num_hidden_layers = ~1e12, ...
    """
    stack: list[tuple[Any, str, int]] = [(config, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidConfigError(
                f"config.json of '{model_id}' nests objects or lists more than {MAX_DEPTH} deep (at {where}); "
                "a transformers config nests a few levels: fix or re-download the file"
            )
        if isinstance(value, Mapping):
            for key, child in value.items():
                path = f"{where}.{key}" if where else str(key)
                if _is_number(child):
                    _check_number(str(key), path, child, model_id)
                elif isinstance(child, (Mapping, list)):
                    stack.append((child, path, depth + 1))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                if isinstance(child, (Mapping, list)):
                    stack.append((child, f"{where}[{index}]", depth + 1))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(key: str, path: str, value: float, model_id: str) -> None:
    name = key.lower()
    if _LAYER_KEY.search(name):
        bound, what = MAX_LAYERS, "layers"
    elif _SIZE_KEY.search(name) or name.startswith("vocab"):
        bound, what = MAX_SIZE, "elements"
    elif _COUNT_KEY.search(name):
        bound, what = MAX_COUNT, "units"
    else:
        return
    if (isinstance(value, float) and math.isnan(value)) or abs(value) <= bound:
        return
    raise InvalidConfigError(
        f"config.json of '{model_id}' has {path} = {_shown(value)}, more than the {bound:,} {what} hfmem plans for; "
        "no real model is that large: fix the value"
    )


#: (option, how to read it from the setups, bound, unit)
_SetupGetter = Callable[[TrainingSetup, "InferenceSetup | None"], "int | None"]
_SETUP_LIMITS: tuple[tuple[str, _SetupGetter, int, str], ...] = (
    ("--batch-size", lambda t, i: max(t.batch_size, i.batch_size if i else 0), MAX_BATCH, "sequences"),
    ("--seq-len", lambda t, i: t.seq_len, MAX_TOKENS, "tokens"),
    ("--target-len", lambda t, i: t.target_len, MAX_TOKENS, "tokens"),
    ("--context", lambda t, i: i.context if i else None, MAX_TOKENS, "tokens"),
    ("--prefill-chunk", lambda t, i: i.prefill_chunk if i else None, MAX_TOKENS, "tokens"),
    ("--gpus × --nodes", lambda t, i: t.gpus_per_node * t.nodes, MAX_DEGREE, "GPUs"),
    ("--tp", lambda t, i: max(t.parallel.tp, i.tp if i else 0), MAX_DEGREE, "GPUs"),
    ("--pp", lambda t, i: t.parallel.pp, MAX_DEGREE, "stages"),
    ("--cp", lambda t, i: t.parallel.cp, MAX_DEGREE, "GPUs"),
    ("--ep", lambda t, i: t.parallel.ep, MAX_DEGREE, "GPUs"),
    ("--microbatches", lambda t, i: t.parallel.microbatches, MAX_DEGREE, "micro-batches"),
    ("--virtual-stages", lambda t, i: t.parallel.virtual_stages, MAX_DEGREE, "chunks"),
    ("--lora-rank", lambda t, i: t.finetune.lora_rank, MAX_DEGREE, ""),
    ("--lora-alpha", lambda t, i: t.finetune.lora_alpha, MAX_DEGREE, ""),
    ("--group-size", lambda t, i: i.group_size if i else None, MAX_DEGREE, "inputs"),
    ("--cuda-context", lambda t, i: t.overheads.cuda_context_bytes, MAX_BYTES, "bytes"),
    ("--gpu-memory", lambda t, i: t.gpu.usable_bytes if t.gpu else None, MAX_BYTES, "bytes"),
)


def check_setup(setup: TrainingSetup, inference: InferenceSetup | None = None) -> None:
    """Refuse option values beyond what any run uses (a 10^12-token sequence), before anything is traced.

    Raises:
        InvalidSetupError: naming the option, its value and the bound.
    """
    for option, read, bound, unit in _SETUP_LIMITS:
        value = read(setup, inference)
        if value is not None and value > bound:
            raise InvalidSetupError(
                f"{option} {_shown(value)} is more than the {bound:,}{' ' + unit if unit else ''} hfmem plans for; "
                "pass a realistic value"
            )


def check_params(params: int) -> None:
    """Refuse a --params count beyond `MAX_PARAMS`.

    Raises:
        InvalidSetupError: naming the count and the bound.
    """
    if params > MAX_PARAMS:
        raise InvalidSetupError(
            f"--params {_shown(params)} is more than the {MAX_PARAMS:,} parameters hfmem plans for; "
            "pass a realistic count such as 7B"
        )


def _shown(value: float) -> str:
    """``1,000,000``, ``1e+30``, ``inf``: readable for any size (an int of 10^400 has no float, nor a short str)."""
    if isinstance(value, int) and abs(value) >= 10**12:
        exponent = len(str(abs(value))) - 1 if value.bit_length() < 10_000 else int(value.bit_length() * math.log10(2))
        return f"~{'-' if value < 0 else ''}1e{exponent}"
    if isinstance(value, float) and (math.isinf(value) or abs(value) >= 1e12):
        return f"{value:.3g}"
    return f"{value:,}"
