"""Measure the GPU memory of inference (prefill + greedy decode) for catalogue models, as raw numbers for hfmem.

Each case builds the class named in a bundled catalogue config (``hfmem/catalogue/<org>__<name>/config.json``,
optionally with a few keys overridden, e.g. a cut-down DeepSeek-V3) with random weights directly on the GPU in
bf16, SDPA attention (eager for Gemma-2, which transformers refuses to run with SDPA), ``model.eval()`` under
``torch.inference_mode()``, and records:

* ``weights_bytes``: ``memory_allocated()`` after building minus before; ``param_bytes`` and ``buffers_bytes``
  (unique tensors, ``numel × element_size``);
* a prefill: one forward of the ``batch × prompt`` random tokens with ``use_cache=True``, its peak allocated
  (``reset_peak_memory_stats`` first), the logits' bytes and the cache it returns; the same with
  ``logits_to_keep=1`` (what ``generate`` passes) when the model's ``forward`` takes it;
* ``generate(max_new_tokens=G, min_new_tokens=G, do_sample=False)`` with the default cache: the peak allocated
  over the whole call and the cache it returns: ``kv_cache_bytes`` (every tensor held by the cache, by
  ``numel × element_size``), the bytes of the storages behind them (a sliding-window layer keeps a view whose
  storage can be larger), the cache's class and its layers' classes and shapes;
* the hand-computed KV bytes from the config: 2 × kv_heads × head_dim × tokens × batch × 2 bytes per attention
  layer (a sliding layer holds at most its window), or for MLA (DeepSeek-V3) (kv_lora_rank + qk_rope_head_dim) ×
  tokens × batch × 2 bytes per layer, which is what transformers' ``DeepseekV3Attention`` hands
  ``cache.update`` (the latent, before ``kv_b_proj``). Tokens = prompt + generated − 1: the last token is never
  fed back.

Absolute figures are ``torch.cuda`` counters (bytes); each also appears minus the allocated bytes before the
phase (``*_over_start``), which hold the weights. Nothing here asks hfmem: compare later.

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/measure_inference_cuda.py --out benchmarks/results/inference_h100.json
    python benchmarks/measure_inference_cuda.py --tiny --out /tmp/tiny.json   # cut-down configs, on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import inspect
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

CATALOGUE = Path(__file__).resolve().parent.parent / "hfmem" / "catalogue"
SEED = 0
DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Case:
    """One measurement: a catalogue config (with overrides), a batch, a prompt length and a number of new tokens."""

    model_id: str
    batch: int
    prompt_tokens: int
    new_tokens: int = 64
    overrides: dict[str, Any] = field(default_factory=dict)
    drop_keys: tuple[str, ...] = ()
    attn: str = "sdpa"
    note: str = ""


#: DeepSeek-V3 cut to fit one GPU: 4 layers (1 dense), 16 routed experts, top-2; MLA dimensions and heads as is.
DEEPSEEK_CUT = {
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "n_routed_experts": 16,
    "num_experts_per_tok": 2,
}

CASES = (
    Case("Qwen/Qwen2.5-0.5B-Instruct", 1, 4096, note="GQA"),
    Case("Qwen/Qwen2.5-0.5B-Instruct", 8, 2048, note="GQA"),
    Case("meta-llama/Llama-3.2-1B", 4, 4096, note="GQA"),
    # NOTE: transformers 5.24 refuses SDPA for Gemma2ForCausalLM ("does not support an attention implementation
    # through torch.nn.functional.scaled_dot_product_attention yet"; its attention logits are soft-capped), so
    # Gemma-2 runs with eager attention, which materialises the heads × q × k scores during prefill.
    Case(
        "google/gemma-2-2b-it",
        1,
        8192,
        attn="eager",
        note="sliding window 4096 on alternate layers; eager attention (transformers refuses SDPA for Gemma-2)",
    ),
    Case("mistralai/Mistral-7B-v0.1", 1, 8192, note="sliding window 4096"),
    Case(
        "deepseek-ai/DeepSeek-V3",
        1,
        4096,
        overrides=DEEPSEEK_CUT,
        drop_keys=("quantization_config",),
        note="MLA; cut down: 4 layers, first_k_dense_replace 1, 16 routed experts, top-2",
    ),
)

#: --tiny: every size key present is replaced, so each case runs on a CPU in seconds (shapes, not figures).
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "num_hidden_layers": 2,
    "sliding_window": 32,
    "kv_lora_rank": 32,
    "q_lora_rank": 48,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "n_routed_experts": 8,
    "n_group": 2,
    "topk_group": 1,
    "query_pre_attn_scalar": 16,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Config and model


def case_config(case: Case, tiny: bool) -> tuple[dict[str, Any], str]:
    """The config dict a case runs with, and the catalogue file it came from."""
    path = CATALOGUE / case.model_id.replace("/", "__") / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in case.drop_keys:
        config.pop(key, None)
    config.update(case.overrides)
    if tiny:
        for key, value in TINY.items():
            if key in config:
                config[key] = value
        if config.get("model_type") == "deepseek_v3":
            config["num_key_value_heads"] = config["num_attention_heads"]  # MLA: as many kv heads as heads
        if "head_dim" in config and "num_attention_heads" in config:
            config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    return config, str(path.relative_to(CATALOGUE.parent.parent))


def build_model(config_dict: dict[str, Any], device: str, attn: str) -> tuple[torch.nn.Module, Any]:
    """Random weights, bf16, attention ``attn``, built directly on ``device``; the class in ``architectures``."""
    config_dict = copy.deepcopy(config_dict)
    model_type = config_dict.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    cls = getattr(transformers, config.architectures[0])
    torch.manual_seed(SEED)
    with torch.device(device):
        model = cls._from_config(config, dtype=DTYPE, attn_implementation=attn)
    return model.eval(), config


def unique_bytes(tensors: Any) -> int:
    unique = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())


# ---------------------------------------------------------------------------------------------------------------
# The cache


def _tensors_of(obj: Any) -> dict[str, torch.Tensor]:
    """Tensors held in ``obj``'s attributes (directly, or in lists/tuples/dicts one level down)."""
    found: dict[str, torch.Tensor] = {}
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    found[f"{name}[{i}]"] = item
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, torch.Tensor):
                    found[f"{name}[{key!r}]"] = item
    return found


def cache_report(cache: Any) -> dict[str, Any]:
    """Every tensor a transformers cache holds: ``cache.layers[i]`` attributes (``keys``, ``values``, any other)
    and the cache's own tensor attributes. Bytes as ``numel × element_size`` and as unique storages."""
    if cache is None:
        return {"cache_class": None}
    storages: dict[tuple[str, int], int] = {}
    layers = []
    total = kv = other = 0
    holders = [(f"layers[{i}]", layer) for i, layer in enumerate(getattr(cache, "layers", []) or [])]
    holders.append(("cache", cache))
    for where, holder in holders:
        entry: dict[str, Any] = {"class": type(holder).__name__, "tensors": {}}
        for attr in ("sliding_window", "cumulative_length", "is_sliding"):
            value = getattr(holder, attr, None)
            if isinstance(value, (int, bool)):
                entry[attr] = value
        for name, tensor in _tensors_of(holder).items():
            if name == "layers" or name.startswith("layers["):
                continue
            nbytes = tensor.numel() * tensor.element_size()
            storage = tensor.untyped_storage()
            storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
            entry["tensors"][name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype), "bytes": nbytes}
            total += nbytes
            if name in ("keys", "values"):
                kv += nbytes
            else:
                other += nbytes
        if where != "cache" or entry["tensors"]:
            layers.append({"where": where, **entry})
    return {
        "cache_class": type(cache).__name__,
        "kv_cache_bytes": total,
        "keys_values_bytes": kv,
        "other_tensor_bytes": other,
        "storage_bytes": sum(storages.values()),
        "layers": layers,
    }


def output_cache(output: Any) -> Any:
    """The cache of a model or generate output (``cache`` in transformers ≥ 5.2x, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def layer_types(config: Any) -> list[str]:
    """The attention type of every layer as transformers derives it from the config (for the cache)."""
    with contextlib.suppress(ImportError, AttributeError, TypeError):
        from transformers.cache_utils import get_layer_types_and_kwargs

        return list(get_layer_types_and_kwargs(config.get_text_config(decoder=True))[0])
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    window = getattr(config, "sliding_window", None)
    return ["sliding_attention" if window else "full_attention"] * config.num_hidden_layers


def hand_kv_bytes(config: Any, tokens: int, batch: int, element_bytes: int = 2) -> dict[str, Any]:
    """KV bytes from the config alone (see the module docstring)."""
    types = layer_types(config)
    if getattr(config, "kv_lora_rank", None) and getattr(config, "qk_rope_head_dim", None):
        per_token = config.kv_lora_rank + config.qk_rope_head_dim
        total = len(types) * per_token * tokens * batch * element_bytes
        formula = (
            f"{len(types)} layers × ({config.kv_lora_rank} + {config.qk_rope_head_dim}) × {tokens} tokens × {batch} "
            f"× {element_bytes} B"
        )
        return {"kind": "MLA latent", "bytes": total, "formula": formula, "layer_types": types}
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    window = getattr(config, "sliding_window", None)
    total = 0
    counts: dict[str, int] = {}
    for kind in types:
        kept = min(tokens, window) if kind == "sliding_attention" and window else tokens
        total += 2 * heads * head_dim * kept * batch * element_bytes
        counts[kind] = counts.get(kind, 0) + 1
    formula = " + ".join(
        f"{n} {kind} layers × 2 × {heads} × {head_dim} × "
        f"{min(tokens, window) if kind == 'sliding_attention' and window else tokens} tokens × {batch} × "
        f"{element_bytes} B"
        for kind, n in counts.items()
    ) + ("" if not window else f" (window {window})")
    return {"kind": "K and V per kv head", "bytes": total, "formula": formula, "layer_types": types}


# ---------------------------------------------------------------------------------------------------------------
# Measurements


class Memory:
    """``torch.cuda`` counters on a GPU; zeros on the CPU (``--tiny`` checks shapes and code paths only)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> int:
        """Reset the peak; return the bytes allocated now."""
        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated()) if self.cuda else 0

    def peak(self) -> int:
        self.sync()
        return int(torch.cuda.max_memory_allocated()) if self.cuda else 0

    def peak_reserved(self) -> int:
        return int(torch.cuda.max_memory_reserved()) if self.cuda else 0

    def used(self) -> int:
        if not self.cuda:
            return 0
        free, total = torch.cuda.mem_get_info()
        return int(total - free)

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def prefill(model: Any, ids: torch.Tensor, memory: Memory, **kwargs: Any) -> dict[str, Any]:
    start = memory.reset()
    began = time.perf_counter()
    output = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs)
    peak = memory.peak()
    result = {
        "peak_allocated": peak,
        "peak_allocated_over_start": peak - start,
        "allocated_at_start": start,
        "allocated_after": memory.allocated(),
        "logits_shape": list(output.logits.shape),
        "logits_dtype": str(output.logits.dtype),
        "logits_bytes": output.logits.numel() * output.logits.element_size(),
        "cache": cache_report(output_cache(output)),
        "seconds": round(time.perf_counter() - began, 3),
    }
    del output
    memory.release()
    return result


def measure(case: Case, device: str, tiny: bool) -> dict[str, Any]:
    memory = Memory(device)
    config_dict, config_path = case_config(case, tiny)
    batch = min(case.batch, 2) if tiny else case.batch
    prompt = 48 if tiny else case.prompt_tokens
    new = 4 if tiny else case.new_tokens
    record: dict[str, Any] = {
        "model_id": case.model_id,
        "note": case.note,
        "config_path": config_path,
        "config_overrides": case.overrides,
        "config_dropped_keys": list(case.drop_keys),
        "attn_implementation": case.attn,
        "dtype": str(DTYPE),
        "batch": batch,
        "prompt_tokens": prompt,
        "generated_tokens": new,
    }
    if case.overrides or case.drop_keys or tiny:
        record["config"] = config_dict  # the exact config, to repeat the computation
    memory.release()
    before = memory.reset()
    model, config = build_model(config_dict, device, case.attn)
    memory.sync()
    record["weights_bytes"] = memory.allocated() - before
    record["param_bytes"] = unique_bytes(model.parameters())
    record["param_count"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    record["buffers_bytes"] = unique_bytes(model.buffers())
    record["model_class"] = type(model).__name__
    record["attn_implementation_used"] = model.config._attn_implementation
    record["layer_types"] = layer_types(config)
    record["generation_cache_implementation"] = model.generation_config.cache_implementation
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, config.get_text_config().vocab_size, (batch, prompt), generator=generator).to(device)
    tokens = prompt + new - 1
    record["cache_tokens_expected"] = tokens
    record["hand_kv"] = hand_kv_bytes(config, tokens, batch)
    record["hand_kv_after_prefill"] = hand_kv_bytes(config, prompt, batch)
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    with torch.inference_mode():
        log("  prefill (all logits)")
        record["prefill"] = prefill(model, ids, memory)
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            log("  prefill (logits_to_keep=1)")
            record["prefill_logits_to_keep_1"] = prefill(model, ids, memory, logits_to_keep=1)
        else:
            record["prefill_logits_to_keep_1"] = None
        log("  generate")
        start = memory.reset()
        began = time.perf_counter()
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            return_dict_in_generate=True,
            pad_token_id=pad,
        )
        peak = memory.peak()
        record["generate"] = {
            "peak_allocated": peak,
            "peak_allocated_over_start": peak - start,
            "allocated_at_start": start,
            "allocated_after": memory.allocated(),
            "peak_reserved": memory.peak_reserved(),
            "device_used_after": memory.used(),
            "sequences_shape": list(output.sequences.shape),
            "cache": cache_report(output_cache(output)),
            "seconds": round(time.perf_counter() - began, 3),
        }
        del output
    record["kv_cache_bytes"] = record["generate"]["cache"].get("kv_cache_bytes")
    record["max_memory_reserved"] = memory.peak_reserved()
    del model
    memory.release()
    return record


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name()
        info["cuda_runtime"] = torch.version.cuda
        info["total_memory_bytes"] = int(torch.cuda.mem_get_info()[1])
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
    info["cuda_module_loading"] = os.environ.get("CUDA_MODULE_LOADING", "(unset: LAZY by default)")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (rewritten after every case)")
    parser.add_argument("--tiny", action="store_true", help="cut-down configs on the CPU: tests the code paths")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only the cases of these catalogue ids")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU: torch.cuda.is_available() is False (use --tiny for a CPU check)")
    transformers.logging.set_verbosity_error()
    cases = [c for c in CASES if not args.only or c.model_id in args.only]
    document: dict[str, Any] = {"environment": environment(device), "tiny": args.tiny, "cases": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    for case in cases:
        log(f"{case.model_id} b={case.batch} P={case.prompt_tokens} G={case.new_tokens}")
        began = time.perf_counter()
        try:
            record = measure(case, device, args.tiny)
        except Exception as e:  # one case failing (OOM, an unsupported config) must not lose the others
            failures += 1
            record = {
                "model_id": case.model_id,
                "batch": case.batch,
                "prompt_tokens": case.prompt_tokens,
                "generated_tokens": case.new_tokens,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-4000:],
            }
            log(f"  FAILED: {record['error']}")
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        record["seconds"] = round(time.perf_counter() - began, 2)
        document["cases"].append(record)
        args.out.write_text(json.dumps(document, indent=1), encoding="utf-8")
        if "error" not in record:
            log(
                f"  weights {record['weights_bytes']:,} B, generate peak {record['generate']['peak_allocated']:,} B, "
                f"kv {record['kv_cache_bytes']:,} B (hand {record['hand_kv']['bytes']:,} B), "
                f"cache {record['generate']['cache']['cache_class']} ({record['seconds']} s)"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
