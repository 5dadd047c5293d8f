"""Measure the GPU memory of real LoRA training steps on catalogue models, as raw numbers for hfmem.

Each case builds the class named in a bundled catalogue config with random weights directly on the GPU in bf16
(SDPA, no gradient checkpointing, ``use_cache`` as the config says), wraps it with peft
``LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)`` and ``get_peft_model`` (peft's
defaults otherwise: ``autocast_adapter_dtype=True`` keeps bf16 adapters in fp32), and takes two steps of
``torch.optim.AdamW`` over the trainable parameters on random token ids (labels = input ids): forward,
``loss.backward()``, ``optimizer.step()``, ``optimizer.zero_grad()``. The first step allocates AdamW's states; the
second runs with them live. ``max_memory_allocated`` is reset at every phase boundary, so each phase's peak is
recorded, with the weights, the adapter bytes and dtypes, the gradients and optimizer states, peft's
``get_nb_trainable_parameters()`` and the library versions. Nothing here asks hfmem: compare later.

QLoRA is not measured: it needs bitsandbytes, which the GPU image lacks and whose wheel is too large to carry.

Usage:
    HF_HUB_OFFLINE=1 python benchmarks/measure_lora_cuda.py --out benchmarks/results/lora_h100.json
    python benchmarks/measure_lora_cuda.py --tiny --out /tmp/tiny.json   # cut-down configs, on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_inference_cuda import (  # noqa: E402  (a sibling script, not a package)
    TINY,
    Memory,
    build_model,
    environment,
    log,
    unique_bytes,
)

CATALOGUE = Path(__file__).resolve().parent.parent / "hfmem" / "catalogue"
SEED = 0
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "lora_dropout": 0.0}
CASES = (("Qwen/Qwen2.5-0.5B-Instruct", 4, 1024), ("meta-llama/Llama-3.2-1B", 4, 1024))


def case_config(model_id: str, tiny: bool) -> tuple[dict[str, Any], str]:
    path = CATALOGUE / model_id.replace("/", "__") / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if tiny:
        for key, value in TINY.items():
            if key in config:
                config[key] = value
        if "head_dim" in config:
            config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    return config, str(path.relative_to(CATALOGUE.parent.parent))


def step(model: Any, optimizer: torch.optim.Optimizer, ids: torch.Tensor, memory: Memory) -> dict[str, Any]:
    """One forward + backward + AdamW step; the peak allocated (and reserved) of each phase."""
    phases: dict[str, Any] = {}

    def phase_end(name: str) -> None:
        phases[name] = memory.peak()
        phases[name + "_reserved"] = memory.peak_reserved()
        memory.reset()

    phases["allocated_at_start"] = memory.reset()
    loss = model(input_ids=ids, labels=ids).loss
    phase_end("forward")
    loss.backward()
    del loss
    trainable = [p for p in model.parameters() if p.requires_grad]
    phases["gradient_bytes"] = unique_bytes(p.grad for p in trainable if p.grad is not None)
    phases["frozen_params_with_grad"] = sum(1 for p in model.parameters() if not p.requires_grad and p.grad is not None)
    phase_end("backward")
    optimizer.step()
    phase_end("optimizer_step")
    optimizer.zero_grad(set_to_none=True)
    names = ("forward", "backward", "optimizer_step")
    phases["peak_allocated"] = max(phases[name] for name in names)
    phases["peak_reserved"] = max(phases[name + "_reserved"] for name in names)
    phases["peak_phase"] = max(names, key=lambda name: phases[name])
    return phases


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(per-element states, 0-d scalars such as AdamW's ``step``)."""
    states = scalars = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                nbytes = value.numel() * value.element_size()
                if value.dim() == 0:
                    scalars += nbytes
                else:
                    states += nbytes
    return states, scalars


def measure(model_id: str, batch: int, seq_len: int, device: str, tiny: bool) -> dict[str, Any]:
    import peft

    memory = Memory(device)
    config_dict, config_path = case_config(model_id, tiny)
    if tiny:
        batch, seq_len = 2, 32
    record: dict[str, Any] = {
        "model_id": model_id,
        "config_path": config_path,
        "dtype": "torch.bfloat16",
        "attn_implementation": "sdpa",
        "gradient_checkpointing": False,
        "batch": batch,
        "seq_len": seq_len,
        "lora_config": LORA,
        "optimizer": "torch.optim.AdamW(lr=1e-4) over the trainable parameters",
    }
    if tiny:
        record["config"] = config_dict
    memory.release()
    before = memory.reset()
    model, config = build_model(config_dict, device, "sdpa")
    memory.sync()
    record["weights_bytes"] = memory.allocated() - before
    record["base_param_bytes"] = unique_bytes(model.parameters())
    record["base_param_count"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    record["use_cache"] = bool(getattr(model.config, "use_cache", False))
    before = memory.allocated()
    lora = peft.LoraConfig(task_type="CAUSAL_LM", **LORA)
    model = peft.get_peft_model(model, lora)
    memory.sync()
    model.train()
    record["adapter_alloc_bytes"] = memory.allocated() - before
    trainable = [p for p in model.parameters() if p.requires_grad]
    record["trainable_dtypes"] = dict(Counter(str(p.dtype) for p in trainable))
    record["trainable_bytes"] = unique_bytes(trainable)
    trainable_count, all_count = model.get_nb_trainable_parameters()
    record["peft_trainable_params"] = int(trainable_count)
    record["peft_all_params"] = int(all_count)
    record["lora_target_modules"] = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, peft.tuners.lora.Linear)
        }
    )
    record["lora_module_count"] = sum(1 for m in model.modules() if isinstance(m, peft.tuners.lora.Linear))
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator).to(device)
    began = time.perf_counter()
    record["step_1"] = step(model, optimizer, ids, memory)
    record["step_2"] = step(model, optimizer, ids, memory)
    record["step_seconds"] = round(time.perf_counter() - began, 3)
    record["optimizer_state_bytes"], record["optimizer_scalar_bytes"] = optimizer_bytes(optimizer)
    record["optimizer_state_dtypes"] = dict(
        Counter(str(v.dtype) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    )
    record["allocated_after"] = memory.allocated()
    record["device_used_after"] = memory.used()
    record["peak_allocated"] = record["step_2"]["peak_allocated"]
    del model, optimizer
    memory.release()
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (rewritten after every case)")
    parser.add_argument("--tiny", action="store_true", help="cut-down configs on the CPU: tests the code paths")
    args = parser.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU: torch.cuda.is_available() is False (use --tiny for a CPU check)")
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    info = environment(device)
    info["peft"] = peft.__version__
    with contextlib.suppress(ImportError):
        import accelerate

        info["accelerate"] = accelerate.__version__
    document: dict[str, Any] = {"environment": info, "tiny": args.tiny, "cases": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    for model_id, batch, seq_len in CASES:
        log(f"{model_id} LoRA b={batch} s={seq_len}")
        try:
            record = measure(model_id, batch, seq_len, device, args.tiny)
        except Exception as e:  # one case failing must not lose the other
            failures += 1
            record = {"model_id": model_id, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            log(f"  FAILED: {record['error']}")
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        document["cases"].append(record)
        args.out.write_text(json.dumps(document, indent=1), encoding="utf-8")
        if "error" not in record:
            log(
                f"  trainable {record['peft_trainable_params']:,} ({record['trainable_dtypes']}), "
                f"peak {record['peak_allocated']:,} B at {record['step_2']['peak_phase']}"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
