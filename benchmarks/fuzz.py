"""Fuzz the hfmem CLI at length: mutated config.json files and fuzzed command lines, counting how each input ended.

The strategies and the property are those of the test suite (tests/fuzzing.py, run briefly by tests/test_fuzz.py);
this script runs them for thousands of inputs, in rounds of hypothesis examples with different seeds until the
time budget is spent, and writes what it saw:

* ``result``: exit 0 (or 3, ``--check``'s "does not fit") with the report on stdout;
* ``error``: a non-zero exit with exactly one ``Error: …`` line on stderr and nothing on stdout;
* ``internal``: the CLI's one-line "internal error" (a bug in hfmem, caught);
* ``traceback``: an exception escaped the CLI, or "Traceback" was printed;
* ``malformed``: anything else (several error lines, an empty result, invalid ``--json``).

The last three are findings: the run exits 1 if there is any, and lists the first few.
Offline throughout: HF_HUB_OFFLINE=1, a throw-away HF_HOME, and sockets refused.

Usage:
    python benchmarks/fuzz.py [--minutes 8] [--round 200] [--seed 0] [--out benchmarks/results/fuzz]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOME = tempfile.mkdtemp(prefix="hfmem-fuzz-")
os.environ.update({"HF_HUB_OFFLINE": "1", "HF_HOME": HOME, "HF_TOKEN": "", "NO_COLOR": "1", "COLUMNS": "100"})
os.environ.pop("HFMEM_DEBUG", None)
os.environ.pop("PYTEST_CURRENT_TEST", None)  # outside pytest the CLI turns bugs into one "internal error" line
sys.path.insert(0, str(ROOT))


def _refuse(*args: object, **kwargs: object) -> None:
    raise OSError("benchmarks/fuzz.py runs offline")


socket.socket.connect = _refuse  # type: ignore[method-assign]
socket.create_connection = _refuse  # type: ignore[assignment]

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.conftest import TINY_LLAMA  # noqa: E402
from tests.fuzzing import (  # noqa: E402
    CHEAP_RUNS,
    ConfigCase,
    Outcome,
    command_lines,
    fuzzed_options,
    mutated_configs,
    run_cli,
)

FINDINGS = ("internal", "traceback", "malformed")
REPLAYS = 60  # set from --replays
#: HFMEM_FUZZ_LOG=path: write each input there before running it (to find one that kills the process).
LOG = os.environ.get("HFMEM_FUZZ_LOG")


def _log(label: str, args: list[str]) -> None:
    if LOG:
        with open(LOG, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{label} | {args!r}\n")


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, collections.Counter[str]] = {
            "config": collections.Counter(),
            "cli": collections.Counter(),
        }
        self.exit_codes: dict[str, collections.Counter[int]] = {
            "config": collections.Counter(),
            "cli": collections.Counter(),
        }
        self.distinct: dict[str, set[str]] = {"config": set(), "cli": set()}
        self.findings: list[dict[str, Any]] = []
        self.seconds: dict[str, float] = {"config": 0.0, "cli": 0.0}
        self.sample: list[tuple[str, list[str], str | bytes | None]] = []  # (family, args, config content)
        self.random = random.Random(0)
        self.seen = 0

    def keep(self, family: str, args: list[str], content: str | bytes | None, size: int) -> None:
        """Reservoir-sample inputs to replay in real processes at the end."""
        self.seen += 1
        if len(self.sample) < size:
            self.sample.append((family, args, content))
        elif (slot := self.random.randrange(self.seen)) < size:
            self.sample[slot] = (family, args, content)

    def add(self, family: str, key: str, label: str, args: list[str], outcome: Outcome) -> None:
        self.counts[family][outcome.kind] += 1
        self.exit_codes[family][outcome.exit_code] += 1
        self.distinct[family].add(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest())
        if not outcome.ok and len(self.findings) < 50:
            self.findings.append(
                {"family": family, "kind": outcome.kind, "input": label, "args": args, "detail": outcome.detail[-3000:]}
            )


def replay(tally: Tally, folder: Path) -> dict[str, Any]:
    """Rerun the sampled inputs as real ``python -m hfmem`` processes: what a terminal shows, tracebacks included."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    counts: collections.Counter[str] = collections.Counter()
    case_dir = folder / "replay"
    case_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    for family, args, content in tally.sample:
        if content is not None:
            ConfigCase("replay", content).write(case_dir)
            args = [str(case_dir / "config.json"), *args]
        done = subprocess.run(
            [sys.executable, "-m", "hfmem", *args], env=env, capture_output=True, timeout=600, check=False
        )
        err = done.stderr.decode("utf-8", errors="replace")
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        if "Traceback" in err or done.returncode < 0:
            counts["traceback"] += 1
            tally.findings.append(
                {
                    "family": family,
                    "kind": "traceback (process)",
                    "input": " ".join(args)[:300],
                    "args": args,
                    "detail": err[-3000:],
                }
            )
        elif done.returncode in (0, 3):
            counts["result"] += 1
        elif len(errors) == 1:
            counts["internal" if "internal error" in errors[0] else "error"] += 1
        else:
            counts["malformed"] += 1
    return {"inputs": len(tally.sample), **counts, "seconds": round(time.perf_counter() - started, 1)}


def run_round(tally: Tally, family: str, round_seed: int, examples: int, folder: Path) -> None:
    config_dir = folder / "case"
    config_dir.mkdir(exist_ok=True)
    tiny = folder / "tiny"
    tiny.mkdir(exist_ok=True)
    (tiny / "config.json").write_text(json.dumps(TINY_LLAMA), encoding="utf-8")
    options = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )

    if family == "config":

        @seed(round_seed)
        @options
        @given(case=mutated_configs(), run=st.sampled_from(CHEAP_RUNS))
        def fuzz(case: Any, run: tuple[str, ...]) -> None:
            path = case.write(config_dir)
            args = [str(path), *run]
            _log(case.label, args)
            outcome = run_cli(args)
            content = case.content if isinstance(case.content, str) else case.content.decode("latin-1")
            tally.add("config", content + "\0" + " ".join(run), case.label, list(run), outcome)
            tally.keep("config", list(run), case.content, REPLAYS)

    else:

        @seed(round_seed)
        @options
        @given(args=command_lines(tiny))
        def fuzz(args: list[str]) -> None:
            _log("", args)
            outcome = run_cli(args)
            tally.add("cli", "\0".join(args), " ".join(args)[:300], args, outcome)
            tally.keep("cli", args, None, REPLAYS)

    started = time.perf_counter()
    fuzz()
    tally.seconds[family] += time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget, split evenly between the families")
    parser.add_argument("--round", type=int, default=200, help="hypothesis examples per round (one seed each)")
    parser.add_argument("--seed", type=int, default=0, help="first round's seed; later rounds count up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz", help="path stem")
    parser.add_argument("--replays", type=int, default=60, help="inputs rerun as real processes at the end")
    args = parser.parse_args()
    global REPLAYS
    REPLAYS = args.replays

    tally = Tally()
    budget = args.minutes * 60 / 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hfmem-fuzz-cases-") as tmp:
        for family in ("config", "cli"):
            round_seed = args.seed
            while tally.seconds[family] < budget:
                run_round(tally, family, round_seed, args.round, Path(tmp))
                round_seed += 1
                total = sum(tally.counts[family].values())
                print(
                    f"{family}: {total} inputs, {dict(tally.counts[family])}, {tally.seconds[family]:.0f} s", flush=True
                )
        replays = replay(tally, Path(tmp))
        print(f"replayed as processes: {replays}", flush=True)
    wall = time.perf_counter() - started
    doc = report(tally, args, wall, replays)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")
    print(markdown(doc))
    return 1 if doc["totals"]["findings"] else 0


def report(tally: Tally, args: argparse.Namespace, wall: float, replays: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    import hypothesis
    import torch
    import transformers

    from hfmem.api import hfmem_version

    families = {}
    for family in ("config", "cli"):
        counts = tally.counts[family]
        families[family] = {
            "inputs": sum(counts.values()),
            "distinct_inputs": len(tally.distinct[family]),
            "results": counts["result"],
            "one_line_errors": counts["error"],
            "internal_errors": counts["internal"],
            "tracebacks": counts["traceback"],
            "malformed": counts["malformed"],
            "exit_codes": {str(k): v for k, v in sorted(tally.exit_codes[family].items())},
            "seconds": round(tally.seconds[family], 1),
        }
    totals = {
        key: sum(f[key] for f in families.values())
        for key in (
            "inputs",
            "distinct_inputs",
            "results",
            "one_line_errors",
            "internal_errors",
            "tracebacks",
            "malformed",
        )
    }
    totals["findings"] = (
        totals["internal_errors"]
        + totals["tracebacks"]
        + totals["malformed"]
        + replays.get("traceback", 0)
        + replays.get("internal", 0)
        + replays.get("malformed", 0)
    )
    return {
        "date": datetime.date.today().isoformat(),
        "command": f"python benchmarks/fuzz.py --minutes {args.minutes:g} --round {args.round} --seed {args.seed} "
        f"--replays {args.replays}",
        "environment": {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "hfmem": hfmem_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "click": version("click"),
            "hypothesis": hypothesis.__version__,
        },
        "options_fuzzed": sorted(p.opts[0] for p in fuzzed_options()),
        "wall_seconds": round(wall, 1),
        "families": families,
        "totals": totals,
        "process_replays": replays,
        "findings": tally.findings,
    }


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        "# Fuzzing the hfmem CLI",
        "",
        f"`{doc['command']}` on {doc['date']}: {env['machine']}; Python {env['python']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, hypothesis {env['hypothesis']}; {doc['wall_seconds']:.0f} s.",
        "",
        "| inputs | tried | distinct | results | one-line errors | internal errors | tracebacks | malformed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"config": "mutated config.json", "cli": "fuzzed command lines"}
    for family, f in [*doc["families"].items(), ("total", doc["totals"])]:
        name = names.get(family, "**total**")
        lines.append(
            f"| {name} | {f['inputs']:,} | {f['distinct_inputs']:,} | {f['results']:,} | {f['one_line_errors']:,} | "
            f"{f['internal_errors']} | {f['tracebacks']} | {f['malformed']} |"
        )
    lines += [
        "",
        "Exit codes: "
        + "; ".join(
            f"{names[family]} " + ", ".join(f"{code}: {n:,}" for code, n in f["exit_codes"].items())
            for family, f in doc["families"].items()
        )
        + ".",
        "",
        f"Replayed as real `python -m hfmem` processes (a random sample, to see what a terminal shows): "
        f"{doc['process_replays']['inputs']} inputs, {doc['process_replays'].get('result', 0)} results, "
        f"{doc['process_replays'].get('error', 0)} one-line errors, "
        f"{doc['process_replays'].get('traceback', 0)} tracebacks, {doc['process_replays'].get('internal', 0)} "
        f"internal errors, {doc['process_replays'].get('malformed', 0)} malformed.",
        "",
        f"Options fuzzed ({len(doc['options_fuzzed'])}, read from the click command): "
        + " ".join(f"`{o}`" for o in doc["options_fuzzed"])
        + ".",
        "",
    ]
    if doc["findings"]:
        lines += ["## Findings", ""]
        for finding in doc["findings"][:20]:
            lines.append(
                f"* {finding['family']} / {finding['kind']}: `{finding['input']}` — {finding['detail'][-300:]}"
            )
        lines.append("")
    else:
        lines += ["No input produced a traceback, an internal error or a malformed answer.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
