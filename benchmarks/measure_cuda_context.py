"""Measure the device memory PyTorch's CUDA context takes, outside its caching allocator (hfmem assumes 512 MiB).

In a fresh process: ``nvidia-smi`` before CUDA is touched, then after ``torch.cuda.init()``, after a tiny bf16
matmul (cuBLAS handle and workspace), and after a tiny bf16 training step (SDPA forward and backward, cross-entropy,
AdamW: more kernels loaded). At each point the device's used bytes (``mem_get_info``: total − free) are split into
what PyTorch's allocator holds (``memory_reserved``, of which ``memory_allocated`` is in tensors) and the rest,
which is the context: the driver's and runtime's own memory, the loaded kernel modules (lazily, unless
``CUDA_MODULE_LOADING=EAGER``), library handles. ``nvidia-smi``'s per-process figure is recorded too.

Usage:
    python benchmarks/measure_cuda_context.py --out cuda_context.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

MIB = 2**20


def nvidia_smi() -> dict[str, Any]:
    """Device memory used (MiB) and each compute process's memory (MiB), as nvidia-smi reports them."""
    result: dict[str, Any] = {}
    try:
        used = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used,memory.total,driver_version,name", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        fields = [f.strip() for f in used.split(",")]
        result.update(
            {
                "memory_used_mib": int(fields[0]),
                "memory_total_mib": int(fields[1]),
                "driver": fields[2],
                "name": fields[3],
            }
        )
        apps = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        result["processes_mib"] = {
            line.split(",")[0].strip(): int(line.split(",")[1]) for line in apps.splitlines() if "," in line
        }
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    return result


def snapshot(label: str, torch: Any) -> dict[str, Any]:
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    used = int(total - free)
    reserved = int(torch.cuda.memory_reserved())
    smi = nvidia_smi()
    own = smi.get("processes_mib", {}).get(str(os.getpid()))
    return {
        "label": label,
        "device_used_bytes": used,
        "memory_reserved_bytes": reserved,
        "memory_allocated_bytes": int(torch.cuda.memory_allocated()),
        "used_minus_reserved_bytes": used - reserved,
        "nvidia_smi": smi,
        "nvidia_smi_this_process_mib": own,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    before = nvidia_smi()  # before torch touches CUDA
    import torch
    import torch.nn.functional as F

    torch.cuda.init()
    points = [snapshot("after torch.cuda.init()", torch)]
    a = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()
    points.append(snapshot("after a 64x64 bf16 matmul", torch))
    b = torch.randn(64, 64, device="cuda")
    (b @ b).sum().item()
    points.append(snapshot("after a 64x64 fp32 matmul too", torch))
    # A tiny training step: linear, SDPA (flash in bf16), cross-entropy, AdamW.
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 3 * 128, device="cuda", dtype=torch.bfloat16)
    head = torch.nn.Linear(128, 1000, device="cuda", dtype=torch.bfloat16)
    optimizer = torch.optim.AdamW([*layer.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(2, 256, 128, device="cuda", dtype=torch.bfloat16)
    q, k, v = layer(x).view(2, 256, 3, 2, 64).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 256, 128)
    loss = F.cross_entropy(head(out).float().view(-1, 1000), torch.randint(0, 1000, (512,), device="cuda"))
    loss.backward()
    optimizer.step()
    points.append(snapshot("after a tiny bf16 training step (linear, SDPA, cross-entropy, AdamW)", torch))

    baseline_mib = before.get("memory_used_mib")
    for point in points:
        smi_used = point["nvidia_smi"].get("memory_used_mib")
        if baseline_mib is not None and smi_used is not None:
            point["nvidia_smi_used_over_before_mib"] = smi_used - baseline_mib
        point["context_bytes"] = point["used_minus_reserved_bytes"]  # other processes: none on this machine
        if baseline_mib is not None:
            point["context_bytes_over_before"] = point["used_minus_reserved_bytes"] - baseline_mib * MIB
    document = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "device": torch.cuda.get_device_name(),
        "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING", "(unset: LAZY by default)"),
        "before_cuda": before,
        "points": points,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1), encoding="utf-8")
    for point in points:
        print(
            f"{point['label']}: used {point['device_used_bytes'] / MIB:,.1f} MiB, reserved "
            f"{point['memory_reserved_bytes'] / MIB:,.1f} MiB, used − reserved "
            f"{point['context_bytes'] / MIB:,.1f} MiB; "
            f"nvidia-smi this process {point['nvidia_smi_this_process_mib']} MiB",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
