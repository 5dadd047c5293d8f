"""Fuzz hfmem with what an adversarial tester used (issue 11): bad environments, hostile servers, odd inputs.

Every case runs as a real ``python -m hfmem`` process with a wall-clock limit, as a user would meet it, and ends as:

* ``result``: exit 0 with the report on stdout;
* ``error``: a documented non-zero exit code (2, 4, 5 or 130) with exactly one line on stderr;
* ``internal``: exit 1 or "internal error" (a bug in hfmem, caught);
* ``traceback``: "Traceback" on stderr, or the process died of a signal;
* ``hang``: still running after ``--limit`` seconds (60 by default), then killed;
* ``malformed``: anything else (several lines on stderr, an undocumented exit code).

The last four are findings. Families:

* ``environment``: each bad value of the issue (``HF_HUB_ETAG_TIMEOUT=abc`` …) and values generated from a seed for
  every documented variable, on a local model folder;
* ``server``: each hostile server of tests/hostile.py (drip, silent, garbage JSON, huge and lying config.json, short
  body, redirect loop, 429 Retry-After, 500) behind ``HF_ENDPOINT``, with ``--timeout 5`` and the default 30 s;
* ``input``: the issue's internal-error reproducers (adapter cycles, a 4,301-digit integer, ``--fragmentation nan``,
  ``hfmem /``, a 2 GB config.json …);
* ``interrupt``: Ctrl-C (SIGINT) to a process blocked on a silent server.

Results: ``benchmarks/results/fuzz_hostile.json`` and ``.md``; README's Fuzzing section shows them (cog).

Usage:
    python benchmarks/fuzz_hostile.py [--generated 12] [--seed 0] [--limit 60] [--out benchmarks/results/fuzz_hostile]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_LLAMA  # noqa: E402
from tests.hostile import MODES, serve  # noqa: E402
from tests.test_hostile import BAD_ENVIRONMENTS  # noqa: E402

#: Exit codes README "Errors and exit codes" documents for a refused input (hfmem/errors.py ExitCode).
ERROR_CODES = {2, 3, 4, 5, 130}
FINDINGS = ("internal", "traceback", "hang", "malformed")
#: The variables check_environment covers, with how to generate values for them.
GENERATED_VARIABLES = (
    "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HFMEM_DEBUG",
    "HF_TOKEN",
    "NO_COLOR",
    "COLUMNS",
)


@dataclass
class Case:
    family: str
    label: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    server: str | None = None
    interrupt_after_s: float | None = None


@dataclass
class Outcome:
    kind: str
    exit_code: int | None
    wall_s: float
    stderr: str


def generated_value(rng: random.Random, name: str, folder: Path) -> str:
    """A value for ``name``: numbers of every shape, paths to files and odd places, URLs, noise, control characters."""
    numbers = ["0", "1", "-5", "3.5", "1e3", "nan", "-inf", "0x10", "１０", "1_000", "9" * 30, " 7 ", "+8", ""]
    paths = ["/etc/hostname", "/etc/hostname/x", "/dev/null", "/proc/self", "", " ", "~nosuchuser/x", str(folder)]
    urls = ["", "http://", "https://", "file:///etc", "http://[::1", "http://h:0", "http://a b", "javascript:x"]
    noise = "".join(rng.choice("aZ9 -_./:~%$\\\x01\x1b\x7f\u2028é✓") for _ in range(rng.randint(0, 12)))
    pool = {
        "HF_HUB_ETAG_TIMEOUT": numbers,
        "HF_HUB_DOWNLOAD_TIMEOUT": numbers,
        "HF_HOME": paths,
        "HF_HUB_CACHE": paths,
        "HF_ENDPOINT": urls,
        "COLUMNS": numbers,
    }.get(name, ["1", "0", "yes", "no", "TRUE", "", "maybe", "2"])
    return rng.choice(pool) if rng.random() < 0.7 else noise


def cases(folder: Path, generated: int, seed: int) -> list[Case]:
    model = folder / "tiny"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(TINY_LLAMA), encoding="utf-8")
    plan = [str(model), "--no-checkpoint", "--training-only", "--zero", "0"]
    found: list[Case] = []
    for name, value in BAD_ENVIRONMENTS:
        found.append(Case("environment", f"{name}={value!r}", plan, {name: value}))
    rng = random.Random(seed)
    for name in GENERATED_VARIABLES:
        for _ in range(generated):
            value = generated_value(rng, name, folder)
            found.append(Case("environment", f"{name}={value!r} (generated)", plan, {name: value}))
    for mode in MODES:
        found.append(Case("server", f"{mode} --timeout 5", ["org/tiny", "--timeout", "5"], server=mode))
    for mode in ("drip", "silent", "short-body"):
        found.append(Case("server", f"{mode} (default --timeout 30)", ["org/tiny"], server=mode))
    for mode in ("drip", "garbage-json"):
        found.append(
            Case(
                "server",
                f"{mode} --trust-remote-code",
                ["org/tiny", "--trust-remote-code", "--timeout", "5"],
                server=mode,
            )
        )
    found += input_cases(folder)
    found += model_cases(folder)
    found.append(
        Case("interrupt", "Ctrl-C while waiting on a silent server", ["org/tiny"], server="silent", interrupt_after_s=4)
    )
    return found


def input_cases(folder: Path) -> list[Case]:
    """The issue's internal-error reproducers, as files on disk."""

    def adapter(name: str, base: str) -> str:
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        return str(folder / name)

    self_adapter = adapter("self", str(folder / "self"))
    adapter("pair_b", str(folder / "pair_a"))
    pair_adapter = adapter("pair_a", str(folder / "pair_b"))
    digits = folder / "digits"
    digits.mkdir(exist_ok=True)
    (digits / "config.json").write_text('{"model_type": "llama", "hidden_size": ' + "7" * 4301 + "}")
    huge = folder / "huge"
    huge.mkdir(exist_ok=True)
    with open(huge / "config.json", "wb") as f:
        f.truncate(2 * 2**30)  # sparse
    tiny = str(folder / "tiny")
    return [
        Case("input", "adapter whose base is itself", [self_adapter]),
        Case("input", "two adapters based on each other", [pair_adapter]),
        Case("input", "an integer of 4,301 digits", [str(digits)]),
        Case("input", "a 2 GB config.json", [str(huge)]),
        Case("input", "hfmem /", ["/"]),
        Case("input", "hfmem /proc", ["/proc"]),
        Case("input", "hfmem /dev/null", ["/dev/null"]),
        *(Case("input", f"--fragmentation {v}", [tiny, "--fragmentation", v]) for v in ("nan", "inf", "-1", "1e400")),
        *(Case("input", f"--dropout {v}", [tiny, "--dropout", v]) for v in ("nan", "-inf")),
        *(Case("input", f"--timeout {v}", [tiny, "--timeout", v]) for v in ("0", "nan", "-1", "1e400", "x")),
    ]


#: The odd real architectures of issue 11's adversarial run, from transformers' own default configs (offline):
#: state-space and hybrid models whose slow path loops over tokens, vision-language models, untraceable models.
ODD_MODEL_TYPES = (
    "mamba",
    "mamba2",
    "jamba",
    "recurrent_gemma",
    "llava",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "gemma3",
    "clip",
    "llama4",
    "phimoe",
    "dbrx",
)
#: A state-spaces/mamba-130m-like config (hidden 768, 24 layers, vocab 50,280, state 16, expand 2, conv 4).
MAMBA_130M = {
    "model_type": "mamba",
    "architectures": ["MambaForCausalLM"],
    "hidden_size": 768,
    "num_hidden_layers": 24,
    "vocab_size": 50280,
    "state_size": 16,
    "expand": 2,
    "conv_kernel": 4,
}


def model_cases(folder: Path) -> list[Case]:
    """Each odd architecture as a local config.json, planned from scratch (no cache) as a first query would be."""
    from transformers import AutoConfig

    found = []
    configs = {"mamba-130m-like": MAMBA_130M}
    for model_type in ODD_MODEL_TYPES:
        configs[f"{model_type} (transformers default)"] = AutoConfig.for_model(model_type).to_dict()
    for index, (label, config) in enumerate(configs.items()):
        model = folder / f"model{index}"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text(json.dumps(config, default=str), encoding="utf-8")
        found.append(Case("model", label, [str(model), "--no-cache"]))
    return found


def run_case(case: Case, home: Path, limit_s: float) -> Outcome:
    env = {
        **os.environ,
        "HF_HOME": str(home / "hf_home"),
        "HFMEM_CACHE": str(home.parent / "hfmem_cache"),  # shared: the plan of the local model is traced once
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "",
        "NO_PROXY": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
        **case.env,
    }
    for name in ("HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY", "PYTEST_CURRENT_TEST", "HFMEM_DEBUG", "HF_ENDPOINT"):
        if name not in case.env:
            env.pop(name, None)
    context = serve(case.server) if case.server else nullcontext(("", []))
    with context as (url, _):
        if case.server and "HF_ENDPOINT" not in case.env:
            env["HF_ENDPOINT"] = url
        return _run(case, env, limit_s, home)


def _run(case: Case, env: dict[str, str], limit_s: float, home: Path) -> Outcome:
    started = time.perf_counter()
    process = subprocess.Popen(  # in its own folder: a relative HF_HOME lands there
        [sys.executable, "-m", "hfmem", *case.args],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if case.interrupt_after_s is not None:
            try:
                process.wait(timeout=case.interrupt_after_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=max(1.0, limit_s - (time.perf_counter() - started)))
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return Outcome("hang", None, time.perf_counter() - started, "")
    wall_s = time.perf_counter() - started
    err = stderr.decode("utf-8", errors="replace")
    code = process.returncode
    lines = err.splitlines()
    if "Traceback" in err or code < 0:
        kind = "traceback"
    elif code == 1 or "internal error" in err:
        kind = "internal"
    elif code == 0 and stdout:
        kind = "result"
    elif code in ERROR_CODES and _one_error_line(lines, code):
        kind = "error"
    elif code == 2 and lines[-1:] and lines[-1].startswith("Error: ") and err.count("Error: ") == 1:
        kind = "error"  # click's usage errors: "Usage: …" and "Try 'hfmem --help'" above the one Error line
    else:
        kind = "malformed"
    return Outcome(kind, code, wall_s, err)


def _one_error_line(lines: list[str], code: int) -> bool:
    """One ``Error: …`` line (or ``hfmem: interrupted`` for 130), after at most the one-line ``hfmem: …`` notes that
    precede a build (the 'building … on the meta device' line, fallbacks taken)."""
    *notes, last = lines or [""]
    return all(line.startswith("hfmem: ") for line in notes) and (last.startswith("Error: ") or code == 130)


@contextmanager
def _workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hfmem-hostile-") as tmp:
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=int, default=12, help="generated values per environment variable")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated values")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds before a run counts as a hang")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz_hostile", help="stem")
    args = parser.parse_args()
    started = time.perf_counter()
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    codes: dict[str, collections.Counter[int | None]] = collections.defaultdict(collections.Counter)
    walls: dict[str, float] = collections.defaultdict(float)
    findings: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    with _workspace() as folder:
        todo = cases(folder, args.generated, args.seed)
        for index, case in enumerate(todo):
            home = folder / f"home{index}"
            home.mkdir()
            outcome = run_case(case, home, args.limit)
            counts[case.family][outcome.kind] += 1
            codes[case.family][outcome.exit_code] += 1
            walls[case.family] = max(walls[case.family], outcome.wall_s)
            row = {
                "family": case.family,
                "case": case.label,
                "kind": outcome.kind,
                "exit_code": outcome.exit_code,
                "wall_s": round(outcome.wall_s, 1),
                "stderr": outcome.stderr[-400:],
            }
            rows.append(row)
            if outcome.kind in FINDINGS:
                findings.append(row)
            print(
                f"[{index + 1}/{len(todo)}] {case.family}: {case.label}: {outcome.kind} "
                f"(exit {outcome.exit_code}, {outcome.wall_s:.1f} s)",
                flush=True,
            )
    doc = report(args, counts, codes, walls, rows, findings, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")
    print(markdown(doc))
    return 1 if findings else 0


def report(
    args: argparse.Namespace,
    counts: dict[str, collections.Counter[str]],
    codes: dict[str, collections.Counter[int | None]],
    walls: dict[str, float],
    rows: list[dict[str, Any]],
    findings: list[dict[str, Any]],
    wall_s: float,
) -> dict[str, Any]:
    from importlib.metadata import version

    families = {
        family: {
            "cases": sum(c.values()),
            **{kind: c[kind] for kind in ("result", "error", *FINDINGS)},
            "exit_codes": {str(k): v for k, v in sorted(codes[family].items(), key=lambda kv: str(kv[0]))},
            "max_wall_s": round(walls[family], 1),
        }
        for family, c in counts.items()
    }
    totals = {key: sum(f[key] for f in families.values()) for key in ("cases", "result", "error", *FINDINGS)}
    totals["max_wall_s"] = max(f["max_wall_s"] for f in families.values())
    return {
        "date": datetime.date.today().isoformat(),
        "command": f"python benchmarks/fuzz_hostile.py --generated {args.generated} --seed {args.seed} "
        f"--limit {args.limit:g}",
        "environment": {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "huggingface_hub": version("huggingface_hub"),
        },
        "hang_limit_s": args.limit,
        "wall_seconds": round(wall_s, 1),
        "families": families,
        "totals": totals,
        "findings": findings,
        "cases": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        "# Fuzzing hfmem with bad environments, hostile servers and odd inputs",
        "",
        f"`{doc['command']}` on {doc['date']}: {env['machine']}; Python {env['python']}, huggingface_hub "
        f"{env['huggingface_hub']}; {doc['wall_seconds']:.0f} s. Each case is a real `python -m hfmem` process; a "
        f"hang is one still running after {doc['hang_limit_s']:g} s.",
        "",
        "| family | cases | results | one-line errors | internal errors | tracebacks | hangs | malformed | "
        "longest run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family, f in [*doc["families"].items(), ("**total**", doc["totals"])]:
        lines.append(
            f"| {family} | {f['cases']} | {f['result']} | {f['error']} | {f['internal']} | {f['traceback']} | "
            f"{f['hang']} | {f['malformed']} | {f['max_wall_s']:.1f} s |"
        )
    lines += ["", "| family | case | outcome | exit | wall |", "|---|---|---|---:|---:|"]
    for row in doc["cases"]:
        case = row["case"].replace("|", "\\|").replace("`", "'")
        lines.append(f"| {row['family']} | `{case}` | {row['kind']} | {row['exit_code']} | {row['wall_s']:.1f} s |")
    lines.append("")
    if doc["findings"]:
        lines += ["## Findings", ""]
        lines += [f"* {f['family']} / {f['case']}: {f['kind']} — {f['stderr'][-300:]!r}" for f in doc["findings"]]
        lines.append("")
    else:
        lines += ["No case produced a traceback, an internal error, a hang or a malformed answer.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
