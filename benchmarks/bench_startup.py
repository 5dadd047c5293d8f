"""Wall-clock cost of `hfmem MODEL --json` for every catalogue model, against `python -c "import torch, transformers"`.

Each command runs in a fresh process, offline (HF_HUB_OFFLINE=1, so the bundled catalogue answers), `--repeat`
times; the table reports medians. The floor column is what importing the model's own modelling module costs —
the part hfmem cannot avoid when it builds the real class on the meta device.

Usage:
    python benchmarks/bench_startup.py [--repeat 3] [--models meta-llama/Llama-2-7b-hf ...] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    """Median wall seconds of `cmd` over `repeat` runs (after one warm-up run for the page cache)."""
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def modeling_module(architecture: str) -> str:
    """`transformers.models.<x>.modeling_<x>` for an architecture class name (imported to find its module)."""
    import transformers

    return getattr(transformers, architecture).__module__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="*", help="catalogue ids (default: all)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    from hfmem import catalogue

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    hfmem = shutil.which("hfmem") or sys.exit("hfmem is not on PATH: pip install -e . first")
    python = sys.executable
    baseline = timed([python, "-c", "import torch, transformers"], env, args.repeat)
    help_s = timed([hfmem, "--help"], env, args.repeat)
    import torch
    import transformers

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"median of {args.repeat} runs.",
        "",
        f'`python -c "import torch, transformers"`: **{baseline:.2f} s**; `hfmem --help`: **{help_s:.2f} s** '
        f"({help_s / baseline:.2f}×).",
        "",
        "| model | parameters | `hfmem MODEL --json` | × baseline | floor: import torch + its modelling module |",
        "|---|---:|---:|---:|---:|",
    ]
    chosen = [e for e in catalogue.entries() if not args.models or e.model_id in args.models]
    for entry in chosen:
        run_s = timed([hfmem, entry.model_id, "--json"], env, args.repeat)
        out = subprocess.run([hfmem, entry.model_id, "--json"], env=env, check=True, capture_output=True, text=True)
        assert json.loads(out.stdout)["parameters"]["total"] == entry.total_params
        module = modeling_module(entry.architecture or "")
        floor_s = timed([python, "-c", f"import torch, {module}"], env, args.repeat)
        lines.append(
            f"| {entry.model_id} | {entry.total_params:,} | {run_s:.2f} s | {run_s / baseline:.2f}× | {floor_s:.2f} s |"
        )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
