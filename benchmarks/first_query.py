"""Wall-clock time of the first query of every catalogue model, and of a Mamba and a Jamba, each in a fresh process.

A first query builds the model on the meta device, traces a training micro-batch at the model's context length
(capped at 4,096 tokens) and a 2,048-token prefill chunk: `python -m hfmem MODEL --json --no-cache`, offline
(HF_HUB_OFFLINE=1, so the bundled catalogue answers). Target: under 15 s each on the development machine.

Recurrent models are not in the catalogue; their configs are transformers' defaults, written to a temporary folder:

* **Mamba (mamba-130m-like)**: `model_type: mamba`, hidden 768, 24 layers, vocabulary 50,280, state 16, expand 2,
  convolution 4 (the sizes of `state-spaces/mamba-130m-hf`'s config.json).
* **Jamba**: `JambaConfig()` as transformers 5.24 defines it (32 layers, a Mamba layer in 7 of every 8, 16 experts),
  stored in bfloat16 as `ai21labs/Jamba-v0.1` is (its config.json: `"torch_dtype": "bfloat16"`).

The cost of `python -c "import torch, transformers"` is measured before and after, so a run on a loaded machine can
be read against it: the "× import" column is the first query over their mean.

Usage:
    python benchmarks/first_query.py [--repeat 1] [--models ID ...] [--markdown benchmarks/results/first_query.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 15.0
#: The sizes of state-spaces/mamba-130m-hf's config.json.
MAMBA_130M = {
    "hidden_size": 768,
    "num_hidden_layers": 24,
    "vocab_size": 50280,
    "state_size": 16,
    "expand": 2,
    "conv_kernel": 4,
}


def recurrent_configs(folder: Path) -> dict[str, Path]:
    """Config folders of the Mamba and Jamba measured besides the catalogue."""
    from transformers import AutoConfig

    found = {}
    for name, model_type, arch, sizes in (
        ("mamba (mamba-130m-like)", "mamba", "MambaForCausalLM", MAMBA_130M),
        ("jamba (transformers default, bf16)", "jamba", "JambaForCausalLM", {"dtype": "bfloat16"}),
    ):
        config = AutoConfig.for_model(model_type, **sizes).to_dict()
        config["model_type"], config["architectures"] = model_type, [arch]
        path = folder / model_type
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config, default=str, indent=1))
        found[name] = path
    return found


def import_seconds() -> float:
    """Wall seconds of `python -c "import torch, transformers"` in a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers"], check=True, capture_output=True)
    return time.perf_counter() - start


def first_query(model: str, repeat: int, *extra: str) -> tuple[float, dict[str, object]]:
    """Median wall seconds of `python -m hfmem MODEL --json --no-cache` in fresh processes, and its last answer."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HFMEM_NO_SPINNER": "1", "PYTHONPATH": str(REPO)}
    times, doc = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "hfmem", model, "--json", "--no-cache", *extra],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()}")
        doc = json.loads(done.stdout)
    return statistics.median(times), doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--models", nargs="*", help="catalogue ids (default: all, then Mamba and Jamba)")
    parser.add_argument("--markdown", type=Path, default=REPO / "benchmarks" / "results" / "first_query.md")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    import torch
    import transformers

    from hfmem import catalogue

    entries = {e.model_id: e for e in catalogue.entries()}
    with tempfile.TemporaryDirectory(prefix="hfmem-first-") as tmp:
        models: dict[str, str] = {m: m for m in (args.models or entries)}
        if not args.models:
            models.update({name: str(path) for name, path in recurrent_configs(Path(tmp)).items()})
        load_before = os.getloadavg()[0]
        import_before = import_seconds()
        rows = []
        for name, model in models.items():
            try:
                seconds, doc = first_query(model, args.repeat)
            except RuntimeError as e:  # models with no KV cache (encoder-only) plan training only
                print(f"{name}: {e}; again with --training-only", flush=True)
                seconds, doc = first_query(model, args.repeat, "--training-only")
                name += " (`--training-only`)"
            total = doc["parameters"]["total"]  # type: ignore[index]
            if model in entries:
                assert total == entries[model].total_params, (name, total)
            rows.append((name, seconds, total))
            print(f"{name}: {seconds:.2f} s", flush=True)
        load_after = os.getloadavg()[0]
        import_s = (import_before + import_seconds()) / 2

    over = [name for name, seconds, _ in rows if seconds > TARGET_S]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{'median of ' + str(args.repeat) + ' runs' if args.repeat > 1 else 'one run'} per model, each a fresh "
        f"process with `--no-cache`; 1-minute load average {load_before:.1f} before, {load_after:.1f} after; "
        f'`python -c "import torch, transformers"`: {import_s:.2f} s (mean of before and after).',
        "",
        f"**{len(rows)} models, slowest {max(s for _, s, _ in rows):.1f} s, median "
        f"{statistics.median(s for _, s, _ in rows):.1f} s; over {TARGET_S:.0f} s: "
        f"{', '.join(over) if over else 'none'}.**",
        "",
        "| model | first query | × import | parameters |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {seconds:.2f} s | {seconds / import_s:.2f}× | {total:,} |" for name, seconds, total in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
