"""Every model_type transformers registers: can transformers build it, does hfmem inventory it, does the estimate run.

For each ``model_type`` in ``CONFIG_MAPPING_NAMES`` the default config (``CONFIG_MAPPING[model_type]()``) goes
through three stages, each recorded with a status and, on failure, a one-line reason:

1. **transformers**: transformers' own auto classes build the model from that config on the meta device, in hfmem's
   order of preference (causal LM, seq2seq LM, masked LM, base model, then any task class or ``AutoBackbone`` whose
   mapping names the type), under ``torch.device("meta")`` and, if that fails, accelerate's ``init_empty_weights``.
   The first class that builds is the reference; its unique parameters (tied weights once) are counted.
2. **hfmem**: ``hfmem.build.inventory.count_parameters`` on a `ResolvedModel` holding ``config.to_dict()`` (what a
   config.json with every field written out holds). The count is compared with transformers' when both built the
   same class. A failure must be a one-line `HfmemError`; anything else is a bug and is recorded as such.
3. **estimate** (secondary): ``hfmem.estimate`` on that config written to a folder, once for training (the
   activation trace, batch 1 × 64 tokens) and once for serving (the KV-cache probe, 128-token context).

Each model type runs in a worker process that is killed and replaced when a stage exceeds ``--timeout`` seconds,
its memory passes ``--max-rss-gib``, or it crashes, so one bad model cannot stop the run.

Usage:
    python benchmarks/architectures.py                     # every model type; writes benchmarks/results/
    python benchmarks/architectures.py --types llama bert  # some types, merged into the existing results
    python benchmarks/architectures.py --failed            # rerun the types hfmem failed last time, merged
    python benchmarks/architectures.py --markdown-only     # rewrite architectures.md from architectures.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("transformers", "hfmem", "training", "inference")
#: hfmem's own order (hfmem/build/classes.py `_AUTO_CLASSES`); other task classes follow, by name.
PREFERRED_AUTO = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")
#: Raw exceptions (transformers', or a crash) are cut to this length; hfmem's own one-line errors are kept whole.
REASON_CHARS = 300


def one_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


# --- worker side ------------------------------------------------------------------------------------------------


def auto_classes(config: Any) -> list[str]:
    """The auto classes whose mapping holds ``type(config)``: hfmem's preferred ones first, then the rest by name."""
    import transformers
    from transformers.models.auto import modeling_auto

    found = []
    others = sorted(
        name
        for name in dir(modeling_auto)
        if (name.startswith("AutoModel") or name == "AutoBackbone")
        and name not in PREFERRED_AUTO
        and hasattr(transformers, name)
    )
    for name in (*PREFERRED_AUTO, *others):
        mapping = getattr(getattr(transformers, name), "_model_mapping", None)
        try:
            if mapping is not None and type(config) in mapping:
                found.append(name)
        except Exception:  # noqa: BLE001 - a lazy mapping whose module does not import
            continue
    return found


def unique_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once


def stage_transformers(model_type: str) -> tuple[dict[str, Any], Any]:
    """Build the default config's model with transformers' auto classes on the meta device."""
    import torch
    from accelerate import init_empty_weights
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config = CONFIG_MAPPING[model_type]()
    except Exception as e:  # noqa: BLE001
        return {"status": "no_default_config", "reason": one_line(e)}, None
    candidates = auto_classes(config)
    if not candidates:
        return {"status": "no_auto_class", "reason": f"no auto class maps {type(config).__name__}"}, config
    import transformers

    errors = []
    for name in candidates:
        auto_cls = getattr(transformers, name)
        for how, context in (("torch.device('meta')", lambda: torch.device("meta")), ("init_empty_weights", None)):
            try:
                with context() if context else init_empty_weights(include_buffers=True):
                    model = auto_cls.from_config(config)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{name} ({how}): {one_line(e)}")
                continue
            result = {
                "status": "ok",
                "auto_class": name,
                "class": type(model).__name__,
                "meta": how,
                "params": unique_params(model),
            }
            del model
            return result, config
    return {"status": "build_failed", "reason": errors[0], "tried": candidates}, config


def stage_hfmem(model_type: str, config_dict: dict[str, Any]) -> dict[str, Any]:
    from hfmem.build.inventory import count_parameters
    from hfmem.errors import HfmemError
    from hfmem.types import ResolvedModel

    model = ResolvedModel(model_id=f"default-{model_type}", source="local", config=config_dict)
    try:
        inventory = count_parameters(model)
    except HfmemError as e:
        message = str(e)
        return {
            "status": "unsupported",
            "error": type(e).__name__,
            "reason": message,
            "one_line": "\n" not in message,
        }
    except Exception as e:  # noqa: BLE001 - a bug: hfmem should have translated it
        return {"status": "crash", "error": type(e).__name__, "reason": one_line(e)}
    return {"status": "ok", "class": inventory.architecture, "params": inventory.total_params}


def stage_estimate(model_type: str, config_dict: dict[str, Any], training: bool) -> dict[str, Any]:
    import hfmem
    from hfmem.errors import HfmemError
    from hfmem.types import InferenceSetup, TrainingSetup

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config_dict))
        try:
            if training:
                report = hfmem.estimate(folder, setup=TrainingSetup(zero_stages=(0,), seq_len=64))
                missing = report.training.unmeasured if report.training is not None else None
            else:
                report = hfmem.estimate(folder, training=False, inference=InferenceSetup(context=128, prefill_chunk=64))
                missing = report.inference_unmeasured
            if missing is not None:  # counted, but not traced: the report says "not measured"
                reason = missing.replace(folder, f"default-{model_type}")
                return {"status": "unsupported", "error": "not measured", "reason": reason}
        except HfmemError as e:
            reason = str(e).replace(folder, f"default-{model_type}")  # the same text on every run
            return {"status": "unsupported", "error": type(e).__name__, "reason": reason}
        except Exception as e:  # noqa: BLE001
            return {"status": "crash", "error": type(e).__name__, "reason": one_line(e)}
    return {"status": "ok"}


def worker(conn: Connection, estimate: bool) -> None:
    """Serve model types from ``conn``: one ``(stage, result)`` message per stage, then ``("done", None)``."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - models print and warn while building

    while True:
        try:
            model_type = conn.recv()
        except EOFError:
            return
        if model_type is None:
            return
        start = time.perf_counter()
        result, config = stage_transformers(model_type)
        result["seconds"] = round(time.perf_counter() - start, 2)
        conn.send(("transformers", result))
        config_dict = None
        if config is not None:
            try:
                config_dict = json.loads(config.to_json_string(use_diff=False))
            except Exception as e:  # noqa: BLE001
                conn.send(("hfmem", {"status": "no_config_json", "reason": one_line(e)}))
        if config_dict is not None:
            start = time.perf_counter()
            result = stage_hfmem(model_type, config_dict)
            result["seconds"] = round(time.perf_counter() - start, 2)
            conn.send(("hfmem", result))
            if estimate and result["status"] == "ok":
                for name in ("training", "inference"):
                    start = time.perf_counter()
                    result = stage_estimate(model_type, config_dict, training=name == "training")
                    result["seconds"] = round(time.perf_counter() - start, 2)
                    conn.send((name, result))
        conn.send(("done", None))


# --- parent side ------------------------------------------------------------------------------------------------


class Slot:
    """One worker process and the model type it is running."""

    def __init__(self, ctx: Any, estimate: bool) -> None:
        self.ctx, self.estimate = ctx, estimate
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.process = self.ctx.Process(target=worker, args=(child, self.estimate), daemon=True)
        self.process.start()
        child.close()
        self.model_type: str | None = None
        self.deadline = 0.0

    def assign(self, model_type: str, timeout: float) -> None:
        self.model_type, self.deadline = model_type, time.monotonic() + timeout
        self.conn.send(model_type)

    def rss_bytes(self) -> int:
        try:
            with open(f"/proc/{self.process.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def restart(self) -> None:
        self.process.kill()
        self.process.join(10)
        self.conn.close()
        self.start()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


def run(types: list[str], *, workers: int, timeout: float, max_rss: int, estimate: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    slots = [Slot(ctx, estimate) for _ in range(min(workers, len(types)))]
    queue = list(types)
    results: dict[str, dict[str, Any]] = {}
    done = 0
    started = time.monotonic()

    def finish(slot: Slot, why: str | None) -> None:
        nonlocal done
        assert slot.model_type is not None
        entry = results.setdefault(slot.model_type, {})
        if why is not None:
            for stage in STAGES:
                if stage not in entry:
                    entry[stage] = {"status": why.split(":")[0], "reason": why}
                    break
            slot.restart()
        done += 1
        summary = " ".join(f"{s}={entry[s]['status']}" for s in STAGES if s in entry)
        print(f"[{done}/{len(types)} {time.monotonic() - started:5.0f}s] {slot.model_type}: {summary}", flush=True)
        slot.model_type = None

    while queue or any(s.model_type for s in slots):
        for slot in slots:
            if slot.model_type is None and queue:
                slot.assign(queue.pop(0), timeout)
        busy = [s for s in slots if s.model_type]
        ready = wait([s.conn for s in busy], timeout=1.0)
        for slot in busy:
            if slot.conn in ready:
                try:
                    stage, result = slot.conn.recv()
                except (EOFError, OSError):
                    slot.process.join(5)
                    finish(slot, f"crash: the worker died (exit code {slot.process.exitcode})")
                    continue
                if stage == "done":
                    finish(slot, None)
                else:
                    results.setdefault(slot.model_type, {})[stage] = result  # type: ignore[index]
                    slot.deadline = time.monotonic() + timeout
            elif time.monotonic() > slot.deadline:
                finish(slot, f"timeout: a stage ran past {timeout:.0f} s")
            elif slot.rss_bytes() > max_rss:
                finish(slot, f"memory: the worker passed {max_rss / 2**30:.0f} GiB")
    for slot in slots:
        slot.stop()
    return results


# --- summary ------------------------------------------------------------------------------------------------------


def status(entry: dict[str, Any], stage: str) -> str:
    return entry.get(stage, {}).get("status", "not_run")


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    types = data["types"]
    buildable = [t for t, e in types.items() if status(e, "transformers") == "ok"]
    inventoried = [t for t in buildable if status(types[t], "hfmem") == "ok"]
    mismatched = [
        t
        for t in inventoried
        if types[t]["hfmem"].get("class") == types[t]["transformers"].get("class")
        and types[t]["hfmem"]["params"] != types[t]["transformers"]["params"]
    ]
    trained = [t for t in inventoried if status(types[t], "training") == "ok"]
    served = [t for t in inventoried if status(types[t], "inference") == "ok"]
    both = [t for t in trained if t in served]
    unclean = [
        t
        for t, e in types.items()
        if status(e, "hfmem") == "crash" or (status(e, "hfmem") == "unsupported" and not e["hfmem"].get("one_line"))
    ]
    causes: dict[str, dict[str, int]] = {"training": {}, "inference": {}}
    for t in inventoried:
        for stage, counts in causes.items():
            if status(types[t], stage) not in ("ok", "not_run"):
                cause = estimate_cause(types[t][stage].get("reason", ""))
                counts[cause] = counts.get(cause, 0) + 1
    unbuilt: dict[str, int] = {}
    for e in types.values():
        if status(e, "transformers") != "ok":
            cause = transformers_cause(e["transformers"])
            unbuilt[cause] = unbuilt.get(cause, 0) + 1
    return {
        "registered": len(types),
        "transformers_ok": len(buildable),
        "hfmem_ok": len(inventoried),
        "hfmem_ok_percent": round(100 * len(inventoried) / len(buildable), 2) if buildable else 0.0,
        "hfmem_ok_outside": len([t for t, e in types.items() if status(e, "hfmem") == "ok"]) - len(inventoried),
        "same_class_count_mismatch": mismatched,
        "training_ok": len(trained),
        "inference_ok": len(served),
        "estimate_ok": len(both),
        "hfmem_not_clean": unclean,
        "transformers_failure_causes": dict(sorted(unbuilt.items(), key=lambda kv: -kv[1])),
        "estimate_failure_causes": {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in causes.items()},
    }


#: Why an estimate stage failed, from the fix hfmem's message names (hfmem/build/trace.py `_forward_fix`).
ESTIMATE_CAUSES = (
    ("takes inputs other than token ids", "needs non-text inputs"),
    ("returned no KV cache", "no KV cache"),
    ("bfloat16 only", "fp32 MoE (grouped_mm is bf16-only)"),
    ("reads tensor values", "data-dependent shapes"),
    ("timeout", "timeout"),
)


def transformers_cause(result: dict[str, Any]) -> str:
    if result["status"] == "no_auto_class":
        return "component config (no auto class)"
    if "ImportError" in result.get("reason", ""):
        return "a package not installed"
    return "the default config cannot build a model"


def estimate_cause(reason: str) -> str:
    return next((cause for key, cause in ESTIMATE_CAUSES if key in reason), "other (default config or model code)")


def markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    types = data["types"]
    env = data["environment"]

    def reason(entry: dict[str, Any], stage: str) -> str:
        text = entry.get(stage, {}).get("reason", "")
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Architecture coverage",
        "",
        f"Generated by `python benchmarks/architectures.py` on {data['generated']} "
        f"(transformers {env['transformers']}, torch {env['torch']}, Python {env['python']}; "
        f"{data['seconds']:.0f} s with {data['workers']} workers, {data['timeout_s']:.0f} s per stage).",
        "",
        "Each `model_type` transformers registers is built from its default config (`CONFIG_MAPPING[t]()`). "
        "*transformers* = its auto classes build it on the meta device; *hfmem* = `count_parameters` inventories it; "
        "*training* / *inference* = `hfmem.estimate` runs the activation trace (batch 1 × 64 tokens) / the KV-cache "
        "probe (128-token context).",
        "",
        "| | model types |",
        "|---|---:|",
        f"| registered (`CONFIG_MAPPING_NAMES`) | {s['registered']} |",
        f"| transformers builds from a default config | {s['transformers_ok']} |",
        f"| hfmem inventories, of those | **{s['hfmem_ok']} ({s['hfmem_ok_percent']:.1f} %)** |",
        f"| same class, parameter counts differ | {len(s['same_class_count_mismatch'])} |",
        f"| hfmem also inventories, where transformers' auto classes fail | {s['hfmem_ok_outside']} |",
        f"| training estimate runs (of those hfmem inventories) | {s['training_ok']} |",
        f"| inference estimate runs | {s['inference_ok']} |",
        f"| both (the full estimate) | {s['estimate_ok']} |",
        f"| hfmem failures that are not a one-line hfmem error | {len(s['hfmem_not_clean'])} |",
        "",
    ]
    for stage, counts in s["estimate_failure_causes"].items():
        if counts:
            listed = ", ".join(f"{cause} {n}" for cause, n in counts.items())
            lines += [f"Why the {stage} estimate fails: {listed}.", ""]
    missed = sorted(t for t, e in types.items() if status(e, "transformers") == "ok" and status(e, "hfmem") != "ok")
    lines += ["## transformers builds it, hfmem does not", ""]
    if missed:
        lines += ["| model_type | transformers class | hfmem's reason |", "|---|---|---|"]
        lines += [f"| `{t}` | {types[t]['transformers']['class']} | {reason(types[t], 'hfmem')} |" for t in missed]
    else:
        lines.append("None.")
    if s["same_class_count_mismatch"]:
        lines += ["", "## Same class, different parameter count", "", "| model_type | transformers | hfmem |"]
        lines.append("|---|---:|---:|")
        for t in s["same_class_count_mismatch"]:
            lines.append(f"| `{t}` | {types[t]['transformers']['params']:,} | {types[t]['hfmem']['params']:,} |")
    failed = sorted(t for t, e in types.items() if status(e, "transformers") != "ok")
    listed = ", ".join(f"{cause} {n}" for cause, n in s["transformers_failure_causes"].items())
    lines += [
        "",
        f"## transformers cannot build it from a default config ({len(failed)})",
        "",
        f"By cause: {listed}.",
        "",
        "Component configs (a vision tower, a text half, a prompt encoder) that no auto class maps, models that need "
        "a package not installed here (timm, PIL, scipy, natten, detectron2, torchaudio), and default configs that "
        "cannot build a model (`prediction_length` or `rope_theta` left unset). hfmem's answer for each is its "
        "one-line error.",
        "",
        "| model_type | transformers | why | hfmem says |",
        "|---|---|---|---|",
    ]
    for t in failed:
        e = types[t]
        hf = "inventories it" if status(e, "hfmem") == "ok" else reason(e, "hfmem") or status(e, "hfmem")
        lines.append(f"| `{t}` | {status(e, 'transformers')} | {reason(e, 'transformers')} | {hf} |")
    estimate_failed = sorted(
        t
        for t, e in types.items()
        if status(e, "hfmem") == "ok" and {status(e, "training"), status(e, "inference")} - {"ok", "not_run"}
    )
    lines += [
        "",
        f"## The estimate fails for a model hfmem inventories ({len(estimate_failed)})",
        "",
        "The training estimate feeds `input_ids` (and `labels`) to the model; the inference estimate needs a KV "
        "cache. Vision, audio and encoder-only models fail here by design, with a one-line message.",
        "",
        "| model_type | training | inference |",
        "|---|---|---|",
    ]
    for t in estimate_failed:
        e = types[t]
        cells = [
            "ok" if status(e, stage) == "ok" else f"{status(e, stage)}: {reason(e, stage)}"
            for stage in ("training", "inference")
        ]
        lines.append(f"| `{t}` | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def to_json(data: dict[str, Any]) -> str:
    """The results as JSON with one line per model type, so a rerun's diff shows what changed."""
    head = {k: v for k, v in data.items() if k != "types"}
    lines = [json.dumps(head, ensure_ascii=False)[:-1] + ', "types": {']
    rows = [f"  {json.dumps(t)}: {json.dumps(e, ensure_ascii=False)}" for t, e in data["types"].items()]
    return "\n".join(lines) + "\n" + ",\n".join(rows) + "\n}}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", nargs="*", help="model types to run (default: all); merged into the results")
    parser.add_argument("--failed", action="store_true", help="rerun the types hfmem failed on, merged")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per stage before the worker is killed")
    parser.add_argument("--max-rss-gib", type=float, default=6.0, help="kill a worker above this resident memory")
    parser.add_argument("--no-estimate", action="store_true", help="skip the training/inference estimate stages")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    json_path, md_path = args.out / "architectures.json", args.out / "architectures.md"
    if args.markdown_only:
        data = json.loads(json_path.read_text())
        data["summary"] = summarise(data)
        json_path.write_text(to_json(data))
        md_path.write_text(markdown(data))
        return
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    previous = json.loads(json_path.read_text()) if json_path.exists() else None
    if args.failed:
        assert previous is not None, f"--failed needs {json_path}"
        types = [t for t, e in previous["types"].items() if status(e, "hfmem") != "ok"]
    else:
        types = args.types or list(CONFIG_MAPPING_NAMES)
    partial = bool(args.types or args.failed)
    started = time.monotonic()
    results = run(
        types,
        workers=args.workers,
        timeout=args.timeout,
        max_rss=int(args.max_rss_gib * 2**30),
        estimate=not args.no_estimate,
    )
    seconds = time.monotonic() - started
    merged = dict(previous["types"]) if (partial and previous) else {}
    merged.update(results)
    data = {
        "generated": dt.date.today().isoformat(),
        "environment": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "workers": args.workers,
        "timeout_s": args.timeout,
        "seconds": previous["seconds"] if (partial and previous) else seconds,
        "types": {t: merged[t] for t in sorted(merged)},
    }
    data["summary"] = summarise(data)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(to_json(data))
    md_path.write_text(markdown(data))
    s = data["summary"]
    print(
        f"{s['registered']} registered, transformers builds {s['transformers_ok']}, hfmem inventories "
        f"{s['hfmem_ok']} of those ({s['hfmem_ok_percent']:.1f} %); full estimate runs for {s['estimate_ok']}"
    )


if __name__ == "__main__":
    main()
