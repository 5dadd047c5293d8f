"""The persistent cache's reproducers (issue 11), each run as real ``python -m hfmem`` processes, and a tally.

Each case prepares a work folder (a cache folder, some of the user's own files, a model folder), then runs its steps:
an optional change to the files, then ``python -m hfmem …`` with the case's ``HFMEM_CACHE``, ``HF_HUB_OFFLINE=1`` and
a throw-away ``HF_HOME`` and ``XDG_CACHE_HOME``. Every step is checked for:

* a traceback or an "internal error" line (a bug), or a non-zero exit without exactly one ``Error: …`` line;
* the documented exit code (0, or 2 for a cache folder hfmem must not use);
* a hang: each process is killed after `HANG_S` seconds;
* a foreign file deleted or changed: every file a case marks as the user's is compared byte for byte at the end;
* a stale answer: the parameter count after a change is the one computed by hand (or published, for the bundled
  Llama-3.2-1B), and a change that must invalidate the cache (hfmem's code, the torch, transformers or peft version)
  writes a new entry instead of reading the old one, while an unchanged repeat writes none.

Versions are changed without touching the installed packages: a ``<name>-<version>.post1.dist-info`` folder early on
``PYTHONPATH`` is what ``importlib.metadata`` finds first, while ``import <name>`` still loads the real package.
hfmem's code is changed in a copy of the package, never in the real one.

Usage:
    python benchmarks/fuzz_cache.py [--fast] [--only NAME] [--out benchmarks/results/fuzz_cache]

``--fast`` runs the cases that import no torch and the FIFO case (tests/test_fuzz_cache.py runs those); ``--out``
writes ``<out>.json`` and ``<out>.md``. Exits 1 if any step went wrong.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The tiny custom-code model whose code the key must follow (shared with tests/test_cache.py).
REMOTE_CODE = ROOT / "fixtures" / "remote_code_counted"
#: A process still running after this long counts as a hang (the issue's bar: no hang over 60 s).
HANG_S = 60
ENTRY = re.compile(r"[0-9a-f]{64}\.json")
CATALOGUE_MODEL = "meta-llama/Llama-3.2-1B"


def catalogue_params() -> int:
    """The published count of the bundled Llama-3.2-1B (its expected.json cites the source)."""
    expected = ROOT / "hfmem" / "catalogue" / "meta-llama__Llama-3.2-1B" / "expected.json"
    return int(json.loads(expected.read_text(encoding="utf-8"))["total_params"])


def tiny_llama(layers: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 1000,
        "tie_word_embeddings": False,
    }


def tiny_llama_params(layers: int) -> int:
    """By hand: embedding + untied head 2·1000·64; per layer 4·64² attention + 3·64·128 MLP + 2·64 norms; final
    norm 64 (tests/conftest.py: TINY_LLAMA_PARAMS)."""
    return 2 * 1000 * 64 + layers * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


#: A custom-code model as a Hub repo with ``auto_map`` ships it (the fixture tests/test_cache.py uses too).
REMOTE_CONFIG = json.loads((REMOTE_CODE / "config.json").read_text(encoding="utf-8"))
REMOTE_CONFIGURATION = (REMOTE_CODE / "configuration_tiny.py").read_text(encoding="utf-8")
REMOTE_MODELING = (REMOTE_CODE / "modeling_tiny.py").read_text(encoding="utf-8")


def remote_params(layers: int) -> int:
    """By hand: embedding 16·8; per layer Linear(8, 8) with bias 8·8 + 8; head 8·16 without bias."""
    return 16 * 8 + layers * (8 * 8 + 8) + 8 * 16


# --- the work folder of one case -------------------------------------------------------------------------------------


@dataclass
class Work:
    """One case's folders: ``cache`` is its HFMEM_CACHE unless a step says otherwise; ``protected`` the user's files."""

    root: Path
    protected: dict[str, bytes | str] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def user(self) -> Path:
        return self.root / "user"

    def entries(self, folder: Path | None = None) -> list[str]:
        folder = self.cache if folder is None else folder
        return sorted(p.name for p in folder.iterdir() if ENTRY.fullmatch(p.name)) if folder.is_dir() else []

    def protect(self, *paths: Path) -> None:
        """Remember every file, folder and symlink under ``paths`` as the user's (checked at the end of the case)."""
        for top in paths:
            for path in [top, *sorted(top.rglob("*"))] if top.is_dir() and not top.is_symlink() else [top]:
                self.protected[str(path)] = _fingerprint(path)

    def damaged(self) -> list[str]:
        """The user's files that are gone or changed."""
        return [path for path, seen in self.protected.items() if _fingerprint(Path(path)) != seen]


def _fingerprint(path: Path) -> bytes | str:
    if path.is_symlink():
        return "symlink -> " + os.readlink(path)
    if path.is_dir():
        return "folder"
    if path.is_file():
        return path.read_bytes()
    return "missing" if not os.path.lexists(path) else "other"


def user_files(folder: Path) -> Path:
    """The issue's reproducer: a folder of the user's photos and notes, with a stray config.json."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "photos" / "me.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "todo.txt").write_text("buy milk\n")
    (folder / "config.json").write_text(json.dumps(tiny_llama(2)))
    return folder


def write_model(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_remote_model(folder: Path) -> Path:
    write_model(folder, REMOTE_CONFIG)
    (folder / "configuration_tiny.py").write_text(REMOTE_CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(REMOTE_MODELING)
    return folder


def fake_version(work: Path, package: str) -> Path:
    """A folder to put first on PYTHONPATH in which ``importlib.metadata`` finds ``package`` one post-release on."""
    bumped = f"{version(package).split('+')[0]}.post1"
    dist = work / "fake-dists" / f"{package}-{bumped}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {bumped}\n")
    return dist.parent


# --- cases -----------------------------------------------------------------------------------------------------------


#: Tiny local model, training plan only, short sequence: the cheapest build and trace.
TINY_ARGS = ["--json", "--training-only", "--seq-len", "16"]


@dataclass
class Step:
    """One ``python -m hfmem`` run (``parallel`` copies at once), after ``before`` changed the files."""

    args: Callable[[Work], list[str]]
    exit_codes: tuple[int, ...] = (0,)
    params: int | None = None  # the total parameter count the JSON on stdout must give
    before: Callable[[Work], None] | None = None
    env: Callable[[Work], dict[str, str | None]] | None = None  # None as a value: unset
    cwd: Callable[[Work], Path] | None = None
    stderr_has: str | None = None
    new_entry: bool | None = None  # True: a miss under a new key (a new entry file); False: no new entry file
    check: Callable[[Work, str], str | None] | None = None  # (work, stdout) → a problem, or None
    parallel: int = 1


@dataclass
class Case:
    name: str
    prepare: Callable[[Work], None]
    steps: list[Step]
    fast: bool = False  # imports no torch (or is the FIFO case): tests/test_fuzz_cache.py runs these


def _tiny(work: Path) -> list[str]:
    return [str(work / "model"), *TINY_ARGS]


def _in_model(work: Work) -> list[str]:
    return _tiny(work.root)


def _clear(work: Work) -> list[str]:
    return ["--clear-cache", "--json"]


def _cache_at(value: Callable[[Work], str | None]) -> Callable[[Work], dict[str, str | None]]:
    return lambda work: {"HFMEM_CACHE": value(work)}


def _removed(expected: list[str]) -> Callable[[Work, str], str | None]:
    def check(work: Work, stdout: str) -> str | None:
        got = json.loads(stdout)["removed_files"]
        return None if got == sorted(expected) else f"removed {got}, expected {sorted(expected)}"

    return check


def _no_cache_written(folder: Callable[[Work], Path]) -> Callable[[Work, str], str | None]:
    def check(work: Work, stdout: str) -> str | None:
        where = folder(work)
        written = [p.name for p in where.iterdir() if p.name == "CACHEDIR.TAG" or ENTRY.fullmatch(p.name)]
        return f"wrote {written} into {where}" if written else None

    return check


def _replace_entries(make: Callable[[Path], None]) -> Callable[[Work], None]:
    def before(work: Work) -> None:
        for name in work.entries():
            path = work.cache / name
            path.unlink()
            make(path)

    return before


def _rewrite_entries(change: Callable[[dict[str, Any]], Any]) -> Callable[[Work], None]:
    def before(work: Work) -> None:
        for name in work.entries():
            path = work.cache / name
            path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return before


def _write_entries(data: bytes) -> Callable[[Work], None]:
    def before(work: Work) -> None:
        for name in work.entries():
            (work.cache / name).write_bytes(data)

    return before


def _edit_source(work: Work) -> None:
    source = work.root / "src" / "hfmem" / "memory" / "states.py"
    source.write_text(source.read_text() + "\n# one more line: the same hfmem version string, other code\n")


def _tagged_cache_with_user_files(work: Work) -> None:
    work.cache.mkdir()
    (work.cache / "CACHEDIR.TAG").write_text(
        "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by hfmem.\n"
    )
    for key in ("1" * 64, "2" * 64):
        (work.cache / f"{key}.json").write_text("{}")
    (work.cache / f".{'3' * 64}.json.abcd1234.tmp").write_text("{half")
    (work.cache / "notes.txt").write_text("mine, in hfmem's folder")
    (work.cache / ("4" * 64 + ".json")).mkdir()
    user_files(work.user)
    (work.cache / ("5" * 64 + ".json")).symlink_to(work.user / "todo.txt")
    work.protect(
        work.user, work.cache / "notes.txt", work.cache / ("4" * 64 + ".json"), work.cache / ("5" * 64 + ".json")
    )


def _leftover_temps(work: Work) -> None:
    write_model(work.model, tiny_llama(2))
    work.cache.mkdir()
    old = work.cache / f".{'6' * 64}.json.old12345.tmp"
    fresh = work.cache / f".{'7' * 64}.json.new12345.tmp"
    old.write_text("{killed mid-write")
    fresh.write_text("{being written")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))


def _temps_swept(work: Work, stdout: str) -> str | None:
    names = {p.name for p in work.cache.iterdir()}
    if f".{'6' * 64}.json.old12345.tmp" in names:
        return "a temporary file two hours old was not swept"
    if f".{'7' * 64}.json.new12345.tmp" not in names:
        return "a fresh temporary file (a write in flight) was removed"
    return None


def _one_entry_no_temp(work: Work, stdout: str) -> str | None:
    names = sorted(p.name for p in work.cache.iterdir())
    temps = [n for n in names if n.endswith(".tmp")]
    return None if len(work.entries()) == 1 and not temps else f"left {names}"


def _still_there(kind: Callable[[Path], bool]) -> Callable[[Work, str], str | None]:
    def check(work: Work, stdout: str) -> str | None:
        odd = [p for p in work.cache.iterdir() if ENTRY.fullmatch(p.name)]
        return None if odd and all(kind(p) for p in odd) else f"the odd entries were replaced: {odd}"

    return check


def _entries_whole(work: Work, stdout: str) -> str | None:
    """Every entry is a JSON object again (the spoiled one was overwritten)."""
    for name in work.entries():
        try:
            doc = json.loads((work.cache / name).read_text())
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not doc or not all(isinstance(v, dict) for v in doc.values()):
            return f"{name} was not rewritten"
    return None


def _peft_args(work: Work) -> list[str]:
    return [*_tiny(work.root), "--method", "lora"]


def _with_path(*parts: Callable[[Work], Path]) -> Callable[[Work], dict[str, str | None]]:
    return lambda work: {"PYTHONPATH": os.pathsep.join([*(str(p(work)) for p in parts), str(ROOT)])}


def cases() -> list[Case]:
    catalogue = catalogue_params()
    catalogue_args: Callable[[Work], list[str]] = lambda work: [CATALOGUE_MODEL, *TINY_ARGS]  # noqa: E731
    tiny2, tiny3 = tiny_llama_params(2), tiny_llama_params(3)
    found: list[Case] = [
        # --- folders hfmem does not own ---------------------------------------------------------------------------
        Case(
            "clear-cache refuses a folder of the user's files",
            lambda w: (user_files(w.user), w.protect(w.user)),
            [Step(_clear, (2,), env=_cache_at(lambda w: str(w.user)), stderr_has="nothing was deleted")],
            fast=True,
        ),
        Case(
            "HFMEM_CACHE=. among the user's files: clear-cache refuses",
            lambda w: (user_files(w.user), w.protect(w.user)),
            [Step(_clear, (2,), env=_cache_at(lambda w: "."), cwd=lambda w: w.user, stderr_has="is not hfmem's")],
            fast=True,
        ),
        Case(
            "HFMEM_CACHE=. among the user's files: a query warns, answers and writes nothing there",
            lambda w: (user_files(w.user), w.protect(w.user), write_model(w.model, tiny_llama(2))),
            [
                Step(
                    _in_model,
                    params=tiny2,
                    env=_cache_at(lambda w: "."),
                    cwd=lambda w: w.user,
                    stderr_has="continuing without the cache",
                    check=_no_cache_written(lambda w: w.user),
                )
            ],
        ),
        Case(
            "a CACHEDIR.TAG another tool wrote does not make a folder hfmem's",
            lambda w: (
                w.user.mkdir(),
                (w.user / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n# another tool\n"),
                (w.user / ("8" * 64 + ".json")).write_text("{}"),
                w.protect(w.user),
            ),
            [Step(_clear, (2,), env=_cache_at(lambda w: str(w.user)), stderr_has="is not hfmem's")],
            fast=True,
        ),
        Case(
            "clear-cache in hfmem's folder removes only hfmem's files",
            _tagged_cache_with_user_files,
            [Step(_clear, check=_removed(["1" * 64 + ".json", "2" * 64 + ".json", f".{'3' * 64}.json.abcd1234.tmp"]))],
            fast=True,
        ),
        Case(
            "a cache from before the tag (only entry-named files) is cleared",
            lambda w: (w.cache.mkdir(), *((w.cache / f"{k * 64}.json").write_text("{}") for k in "9a")),
            [Step(_clear, check=_removed(["9" * 64 + ".json", "a" * 64 + ".json"]))],
            fast=True,
        ),
        Case(
            "clear-cache of an absent folder removes nothing and creates nothing",
            lambda w: None,
            [Step(_clear, check=lambda w, out: "the folder was created" if w.cache.exists() else None)],
            fast=True,
        ),
        # --- HFMEM_CACHE values -------------------------------------------------------------------------------------
        Case(
            "HFMEM_CACHE='~nosuchuser/x': a query",
            lambda w: write_model(w.model, tiny_llama(2)),
            [Step(_in_model, (2,), env=_cache_at(lambda w: "~nosuchuser-hfmem/x"), stderr_has="HFMEM_CACHE")],
            fast=True,
        ),
        Case(
            "HFMEM_CACHE='~nosuchuser/x': clear-cache",
            lambda w: None,
            [Step(_clear, (2,), env=_cache_at(lambda w: "~nosuchuser-hfmem/x"), stderr_has="HFMEM_CACHE")],
            fast=True,
        ),
        Case(
            "HFMEM_CACHE is a file: a query and clear-cache refuse, the file stays",
            lambda w: (user_files(w.user), write_model(w.model, tiny_llama(2)), w.protect(w.user)),
            [
                Step(_in_model, (2,), env=_cache_at(lambda w: str(w.user / "todo.txt")), stderr_has="it is a file"),
                Step(_clear, (2,), env=_cache_at(lambda w: str(w.user / "todo.txt")), stderr_has="it is a file"),
            ],
            fast=True,
        ),
        Case(
            "HFMEM_CACHE is under a file",
            lambda w: (user_files(w.user), write_model(w.model, tiny_llama(2)), w.protect(w.user)),
            [Step(_in_model, (2,), env=_cache_at(lambda w: str(w.user / "todo.txt" / "cache")))],
            fast=True,
        ),
        Case(
            "the default location is under a file: clear-cache refuses",
            lambda w: (user_files(w.user), w.protect(w.user)),
            [Step(_clear, (2,), env=lambda w: {"HFMEM_CACHE": None, "XDG_CACHE_HOME": str(w.user / "todo.txt")})],
            fast=True,
        ),
        Case(
            "the default location is under a file: a query warns and answers",
            lambda w: (user_files(w.user), write_model(w.model, tiny_llama(2)), w.protect(w.user)),
            [
                Step(
                    _in_model,
                    params=tiny2,
                    env=lambda w: {"HFMEM_CACHE": None, "XDG_CACHE_HOME": str(w.user / "todo.txt")},
                    stderr_has="continuing without the cache",
                )
            ],
        ),
        Case(
            "HFMEM_CACHE is a file, with --no-cache: answers",
            lambda w: (user_files(w.user), write_model(w.model, tiny_llama(2)), w.protect(w.user)),
            [
                Step(
                    lambda w: [*_in_model(w), "--no-cache"],
                    params=tiny2,
                    env=_cache_at(lambda w: str(w.user / "todo.txt")),
                )
            ],
        ),
        Case(
            "HFMEM_CACHE empty (the default) and relative (from the current folder)",
            lambda w: write_model(w.model, tiny_llama(2)),
            [
                Step(
                    _in_model,
                    params=tiny2,
                    env=_cache_at(lambda w: ""),
                    check=lambda w, out: None if w.entries(w.root / "xdg" / "hfmem") else "no entry at the default",
                ),
                Step(
                    _in_model,
                    params=tiny2,
                    env=_cache_at(lambda w: "rel/cache"),
                    cwd=lambda w: w.root,
                    check=lambda w, out: None if w.entries(w.root / "rel" / "cache") else "no entry in ./rel/cache",
                ),
            ],
        ),
        # --- odd entries --------------------------------------------------------------------------------------------
        Case(
            "a FIFO where an entry should be: skipped with a warning, no hang",
            lambda w: None,
            [
                Step(catalogue_args, params=catalogue),
                Step(
                    catalogue_args,
                    params=catalogue,
                    before=_replace_entries(os.mkfifo),
                    stderr_has="it is a FIFO",
                    check=_still_there(lambda p: p.is_fifo()),
                ),
            ],
            fast=True,
        ),
        Case(
            "a folder where an entry should be",
            lambda w: write_model(w.model, tiny_llama(2)),
            [
                Step(_in_model, params=tiny2),
                Step(
                    _in_model,
                    params=tiny2,
                    before=_replace_entries(lambda p: p.mkdir()),
                    stderr_has="it is a folder",
                    check=_still_there(lambda p: p.is_dir()),
                ),
            ],
        ),
        Case(
            "a symlink to the user's file where an entry should be: never followed, never written through",
            lambda w: (user_files(w.user), write_model(w.model, tiny_llama(2)), w.protect(w.user)),
            [
                Step(_in_model, params=tiny2),
                Step(
                    _in_model,
                    params=tiny2,
                    before=lambda w: _replace_entries(lambda p: p.symlink_to(w.user / "config.json"))(w),
                    stderr_has="it is a symlink",
                    check=_still_there(lambda p: p.is_symlink()),
                ),
            ],
        ),
    ]
    wrong_shapes: list[tuple[str, Callable[[Work], None]]] = [
        ("every slot a list (the issue's)", _rewrite_entries(lambda doc: {slot: [1, 2] for slot in doc})),
        ("every slot an empty object", _rewrite_entries(lambda doc: {slot: {} for slot in doc})),
        (
            "counts as strings",
            _rewrite_entries(
                lambda doc: {
                    s: {k: str(v) if isinstance(v, int) else v for k, v in slot.items()} for s, slot in doc.items()
                }
            ),
        ),
        ("the entry a list", _rewrite_entries(lambda doc: list(doc))),
        (
            "the entry truncated",
            lambda w: [(w.cache / n).write_text((w.cache / n).read_text()[:100]) for n in w.entries()],
        ),
        ("the entry binary", _write_entries(bytes(range(256)) * 4)),
        ("the entry empty", _write_entries(b"")),
        ("the entry nested 100,000 deep", _write_entries(b"[" * 100_000 + b"]" * 100_000)),
    ]
    for label, spoil in wrong_shapes:
        found.append(
            Case(
                f"a wrongly shaped entry: {label}",
                lambda w: write_model(w.model, tiny_llama(2)),
                [
                    Step(_in_model, params=tiny2),
                    Step(_in_model, params=tiny2, before=spoil, new_entry=False, check=_entries_whole),
                    Step(_in_model, params=tiny2, new_entry=False),
                ],
            )
        )
    found += [
        # --- stale answers ----------------------------------------------------------------------------------------
        Case(
            "the config changes: 2 → 3 layers",
            lambda w: write_model(w.model, tiny_llama(2)),
            [
                Step(_in_model, params=tiny2),
                Step(_in_model, params=tiny3, before=lambda w: write_model(w.model, tiny_llama(3)), new_entry=True),
            ],
        ),
        Case(
            "trusted remote code changes: 10 more layers in the modelling file (2 → 12 layers)",
            lambda w: write_remote_model(w.model),
            [
                Step(lambda w: [*_in_model(w), "--trust-remote-code"], params=remote_params(2)),
                Step(
                    lambda w: [*_in_model(w), "--trust-remote-code"],
                    params=remote_params(12),
                    before=lambda w: (w.model / "modeling_tiny.py").write_text(
                        REMOTE_MODELING.replace("EXTRA_LAYERS = 0", "EXTRA_LAYERS = 10")
                    ),
                    new_entry=True,
                ),
                Step(lambda w: [*_in_model(w), "--trust-remote-code"], params=remote_params(12), new_entry=False),
            ],
        ),
        Case(
            "hfmem's code changes (one line of a copy), same version string",
            lambda w: (
                write_model(w.model, tiny_llama(2)),
                shutil.copytree(ROOT / "hfmem", w.root / "src" / "hfmem", ignore=shutil.ignore_patterns("__pycache__")),
            ),
            [
                Step(_in_model, params=tiny2, env=_with_path(lambda w: w.root / "src")),
                Step(_in_model, params=tiny2, env=_with_path(lambda w: w.root / "src"), new_entry=False),
                Step(
                    _in_model,
                    params=tiny2,
                    env=_with_path(lambda w: w.root / "src"),
                    before=_edit_source,
                    new_entry=True,
                ),
            ],
        ),
    ]
    for package in ("torch", "transformers"):
        found.append(
            Case(
                f"the {package} version changes",
                lambda w: write_model(w.model, tiny_llama(2)),
                [
                    Step(_in_model, params=tiny2),
                    Step(
                        _in_model,
                        params=tiny2,
                        env=_with_path(lambda w, p=package: fake_version(w.root, p)),
                        new_entry=True,
                    ),
                ],
            )
        )
    found += [
        Case(
            "the peft version changes (LoRA), and not for a full fine-tune",
            lambda w: write_model(w.model, tiny_llama(2)),
            [
                Step(_peft_args),
                Step(_peft_args, env=_with_path(lambda w: fake_version(w.root, "peft")), new_entry=True),
                Step(_in_model, params=tiny2),
                Step(_in_model, params=tiny2, env=_with_path(lambda w: fake_version(w.root, "peft")), new_entry=False),
            ],
        ),
        # --- writes ------------------------------------------------------------------------------------------------
        Case(
            "leftover temporary files: an old one is swept by the next write, clear-cache takes the rest",
            _leftover_temps,
            [
                Step(_in_model, params=tiny2, check=_temps_swept),
                Step(_clear, check=lambda w, out: None if json.loads(out)["removed"] == 1 else out),
            ],
        ),
        Case(
            "two processes write the same entry at once",
            lambda w: write_model(w.model, tiny_llama(2)),
            [Step(_in_model, params=tiny2, parallel=2, check=_one_entry_no_temp)],
        ),
    ]
    return found


# --- running ---------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float


def run_hfmem(args: list[str], env: dict[str, str], cwd: Path) -> Run:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hfmem", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=HANG_S
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        return Run(None, out, "", time.perf_counter() - start)
    return Run(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def base_env(work: Work) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HFMEM_DEBUG", "PYTEST_CURRENT_TEST", "PYTHONPATH")}
    env.update(
        HFMEM_CACHE=str(work.cache),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(work.root / "hf"),
        HF_TOKEN="",
        XDG_CACHE_HOME=str(work.root / "xdg"),
        PYTHONPATH=str(ROOT),
        NO_COLOR="1",
        HFMEM_NO_SPINNER="1",
    )
    return env


def problems_of(step: Step, run: Run, work: Work, entries_before: list[str]) -> list[tuple[str, str]]:
    """(kind, detail) for everything wrong with one run; kinds: hang, traceback, exit, message, stale, check."""
    if run.exit_code is None:
        return [("hang", f"still running after {HANG_S} s")]
    found: list[tuple[str, str]] = []
    output = run.stdout + run.stderr
    if "Traceback" in output or "internal error" in output:
        found.append(("traceback", run.stderr[-2000:]))
    if run.exit_code not in step.exit_codes:
        found.append(("exit", f"exit {run.exit_code}, expected {step.exit_codes}: {run.stderr[-500:]}"))
    if run.exit_code != 0:
        errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
        if len(errors) != 1 or run.stdout:
            found.append(("message", f"not one Error line: {run.stderr[-500:]!r}"))
    if step.stderr_has and step.stderr_has not in run.stderr:
        found.append(("message", f"stderr lacks {step.stderr_has!r}: {run.stderr[-500:]!r}"))
    if step.params is not None and run.exit_code == 0:
        try:
            total = json.loads(run.stdout)["parameters"]["total"]
        except (ValueError, KeyError, TypeError):
            total = None
        if total != step.params:
            found.append(("stale", f"{total} parameters, expected {step.params:,}"))
    if step.new_entry is not None and run.exit_code == 0:
        added = sorted(set(work.entries()) - set(entries_before))
        if step.new_entry and not added:
            found.append(("stale", "the old entry answered: no new key after a change that must invalidate it"))
        if not step.new_entry and added:
            found.append(("check", f"a new entry {added} without a change: the key is unstable"))
    if step.check is not None and run.exit_code == 0:
        try:
            problem = step.check(work, run.stdout)
        except (ValueError, KeyError, TypeError) as e:  # output of another shape than this hfmem's
            problem = f"unexpected output ({type(e).__name__}: {e}): {run.stdout[:200]!r}"
        if problem:
            found.append(("check", problem))
    return found


def run_case(case: Case, scratch: Path) -> dict[str, Any]:
    work = Work(Path(tempfile.mkdtemp(prefix="case-", dir=scratch)))
    case.prepare(work)
    runs: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for step in case.steps:
        if step.before is not None:
            step.before(work)
        env = base_env(work)
        for key, value in (step.env(work) if step.env else {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        args = step.args(work)
        cwd = step.cwd(work) if step.cwd else work.root
        entries_before = work.entries()
        with ThreadPoolExecutor(max_workers=step.parallel) as pool:
            done = list(pool.map(run_hfmem, [args] * step.parallel, [env] * step.parallel, [cwd] * step.parallel))
        for run in done:
            found = problems_of(step, run, work, entries_before)
            problems += found
            shown = [arg.replace(str(work.root), "<work>") for arg in args]
            runs.append({"args": shown, "exit": run.exit_code, "wall_s": round(run.wall_s, 2), "problems": found})
    deleted = work.damaged()
    problems += [("deleted", path) for path in deleted]
    shutil.rmtree(work.root, ignore_errors=True)  # the benchmark's own scratch folder, made by mkdtemp above
    return {"name": case.name, "runs": runs, "problems": problems, "foreign_files_damaged": len(deleted)}


def summarise(results: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    runs = [run for result in results for run in result["runs"]]
    kinds = [kind for result in results for kind, _ in result["problems"]]
    return {
        "cases": len(results),
        "processes": len(runs),
        "tracebacks": kinds.count("traceback"),
        "hangs": kinds.count("hang"),
        "foreign_files_deleted": sum(r["foreign_files_damaged"] for r in results),
        "stale_answers": kinds.count("stale"),
        "wrong_exit_codes": kinds.count("exit"),
        "bad_messages": kinds.count("message"),
        "failed_checks": kinds.count("check"),
        "max_wall_s": max((run["wall_s"] for run in runs), default=0.0),
        "wall_s": round(wall_s, 1),
    }


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    lines = [
        f"Cache reproducers (`{doc['command']}`, {doc['date']}; {doc['python']}, torch {doc['torch']}, "
        f"transformers {doc['transformers']}):",
        "",
        f"**{s['cases']} cases, {s['processes']} `python -m hfmem` processes**: tracebacks {s['tracebacks']}, "
        f"hangs {s['hangs']}, foreign files deleted {s['foreign_files_deleted']}, stale answers {s['stale_answers']}, "
        f"wrong exit codes {s['wrong_exit_codes']}, bad messages {s['bad_messages']}, failed checks "
        f"{s['failed_checks']}; slowest process {s['max_wall_s']:.1f} s (limit {HANG_S} s).",
        "",
        "| case | processes | problems |",
        "|---|---:|---|",
    ]
    for result in doc["results"]:
        problems = "; ".join(f"{kind}: {detail[:80]}" for kind, detail in result["problems"]) or "none"
        lines.append(f"| {result['name']} | {len(result['runs'])} | {problems} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fast", action="store_true", help="only the cases that import no torch, and the FIFO case")
    parser.add_argument("--only", help="only the cases whose name contains this")
    parser.add_argument("--out", help="write <out>.json and <out>.md")
    args = parser.parse_args(argv)
    chosen = [c for c in cases() if (c.fast or not args.fast) and (args.only is None or args.only in c.name)]
    scratch = Path(tempfile.mkdtemp(prefix="hfmem-fuzz-cache-"))
    start = time.perf_counter()
    results = []
    for case in chosen:
        result = run_case(case, scratch)
        results.append(result)
        mark = "ok" if not result["problems"] else f"{len(result['problems'])} PROBLEM(S)"
        print(f"{mark:>14}  {case.name}", file=sys.stderr)
        for kind, detail in result["problems"]:
            print(f"{'':>16}{kind}: {detail}", file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = summarise(results, time.perf_counter() - start)
    print(json.dumps(summary, indent=2))
    if args.out:
        doc = {
            "summary": summary,
            "command": "python benchmarks/fuzz_cache.py" + (" --fast" if args.fast else ""),
            "date": datetime.date.today().isoformat(),
            "python": f"Python {platform.python_version()}",
            "torch": version("torch"),
            "transformers": version("transformers"),
            "results": results,
        }
        Path(f"{args.out}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        Path(f"{args.out}.md").write_text(markdown(doc), encoding="utf-8")
    return 1 if any(result["problems"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
