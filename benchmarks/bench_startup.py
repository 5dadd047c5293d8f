"""Wall-clock cost of hfmem's queries against the cost of importing torch, and the throughput of sweeps.

Every command runs in a fresh process, offline (HF_HUB_OFFLINE=1, so the bundled catalogue answers), `--repeat`
times; the tables report medians.

* **first query**: `hfmem MODEL --json` with an empty cache (a fresh HFMEM_CACHE folder each run): fetch, build on
  the meta device, trace. Target ≤ 1.2× `python -c "import torch, transformers"`.
* **repeat query**: the same command again with the cache filled. Target ≤ 0.3× `python -c "import torch"`.
* **floor**: `python -c "import torch, <the model's modelling module>"`, what building the real class costs at
  least (transformers' modelling modules import its generation and integration machinery).
* **sweep**: combinations per second of one in-process sweep once the inventory and traces exist
  (`--batch-size 1,2,4,8 --seq-len 1024,2048` × GPUs × precisions × optimizers × ZeRO stages; JSON rendering
  included). Target ≥ 1,000 per second.

Usage:
    python benchmarks/bench_startup.py [--repeat 5] [--models meta-llama/Llama-2-7b-hf ...] [--markdown out.md]
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
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = (
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-3.1-70B-Instruct",
    "mistralai/Mixtral-8x7B-v0.1",
    "google/gemma-2-9b-it",
    "Qwen/Qwen2.5-7B",
    "deepseek-ai/DeepSeek-V3",
    "google-t5/t5-base",
    "openai-community/gpt2",
)


def timed(cmd: list[str], env: dict[str, str], repeat: int, *, fresh_cache: bool = False) -> float:
    """Median wall seconds of `cmd` over `repeat` runs (after one warm-up run for the page cache)."""
    times = []
    for i in range(repeat + 1):
        run_env = dict(env)
        if fresh_cache:
            run_env["HFMEM_CACHE"] = tempfile.mkdtemp(prefix="hfmem-bench-")
        start = time.perf_counter()
        subprocess.run(cmd, env=run_env, check=True, capture_output=True)
        if i:  # the first run warms the page cache
            times.append(time.perf_counter() - start)
        if fresh_cache:
            shutil.rmtree(run_env["HFMEM_CACHE"], ignore_errors=True)
    return statistics.median(times)


def modeling_module(architecture: str) -> str:
    """`transformers.models.<x>.modeling_<x>` for an architecture class name (imported to find its module)."""
    import transformers

    return getattr(transformers, architecture).__module__


SWEEP_ARGS = (
    "--batch-size", "1,2,4,8",
    "--seq-len", "1024,2048",
    "--gpus", "1,2,4,8,16,32,64,128",
    "--precision", "bf16-mixed,fp16-mixed,fp32",
    "--optimizer", "adamw,adamw-8bit,sgd,lion",
    "--gpu", "h100-sxm",
    "--training-only",
)  # fmt: skip


def sweep_rates(model: str) -> tuple[int, dict[str, float]]:
    """Rows per second of one in-process sweep with the cache warm, per output format (the first, tracing run
    is not timed). Each row plans the 4 ZeRO stages, their fit and their smallest GPU count."""
    from click.testing import CliRunner

    from hfmem.cli import cli

    args = [model, *SWEEP_ARGS]
    warm = CliRunner().invoke(cli, [*args, "--json"])
    assert warm.exit_code == 0, warm.output
    rows = len(json.loads(warm.stdout)["rows"])
    rates = {}
    for fmt in ("json", "markdown", "table"):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            result = CliRunner().invoke(cli, [*args, "--format", fmt])
            times.append(time.perf_counter() - start)
            assert result.exit_code == 0, result.output
        rates[fmt] = rows / statistics.median(times)
    return rows, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), help="catalogue ids")
    parser.add_argument(
        "--markdown", type=Path, default=Path(__file__).parent / "results" / "speed.md", help="write the tables here"
    )
    args = parser.parse_args()

    from hfmem import catalogue

    cache = tempfile.mkdtemp(prefix="hfmem-bench-warm-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HFMEM_CACHE": cache, "HFMEM_NO_SPINNER": "1"}
    os.environ.update(HF_HUB_OFFLINE="1", HFMEM_CACHE=cache)
    hfmem = shutil.which("hfmem") or sys.exit("hfmem is not on PATH: pip install -e . first")
    python = sys.executable
    torch_s = timed([python, "-c", "import torch"], env, args.repeat)
    both_s = timed([python, "-c", "import torch, transformers"], env, args.repeat)
    help_s = timed([hfmem, "--help"], env, args.repeat)
    import torch
    import transformers

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"median of {args.repeat} runs, each in a fresh process.",
        "",
        f'`python -c "import torch"`: **{torch_s:.2f} s** · `python -c "import torch, transformers"`: '
        f"**{both_s:.2f} s** · `hfmem --help`: **{help_s:.2f} s**.",
        "",
        "| model | first query | × torch+transformers | repeat query | × import torch "
        "| floor: torch + modelling module |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    entries = {e.model_id: e for e in catalogue.entries()}
    for model_id in args.models:
        entry = entries[model_id]
        cmd = [hfmem, model_id, "--json"]
        first_s = timed(cmd, env, args.repeat, fresh_cache=True)
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)  # fills the warm cache
        assert json.loads(out.stdout)["parameters"]["total"] == entry.total_params
        repeat_s = timed(cmd, env, args.repeat)
        floor_s = timed([python, "-c", f"import torch, {modeling_module(entry.architecture or '')}"], env, args.repeat)
        lines.append(
            f"| {model_id} | {first_s:.2f} s | {first_s / both_s:.2f}× | {repeat_s:.2f} s | "
            f"{repeat_s / torch_s:.2f}× | {floor_s:.2f} s |"
        )
        print(lines[-1], flush=True)
    rows, rates = sweep_rates(args.models[0])
    lines += [
        "",
        f"Sweep of {args.models[0]} with the cache warm, `{' '.join(SWEEP_ARGS)}`: {rows:,} combinations (each "
        "with 4 ZeRO stages, their fit and smallest GPU count), in one process:",
        "",
        "| output | combinations per second |",
        "|---|---:|",
        *(f"| --format {fmt} | {rate:,.0f} |" for fmt, rate in rates.items()),
    ]
    shutil.rmtree(cache, ignore_errors=True)
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
