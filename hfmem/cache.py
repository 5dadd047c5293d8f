"""A persistent cache of what building and tracing a model on the meta device measured.

The inventory and the traced profiles depend only on the config, the installed transformers (and peft), hfmem
itself and what is trained (the fine-tuning method), so a repeat query of a model already seen reads them from one
JSON file per model and never imports torch. The key is the SHA-256 of exactly those inputs; a changed config,
upgrade or method is a new key, never a stale answer.

Where: ``$HFMEM_CACHE``, else ``$XDG_CACHE_HOME/hfmem``, else ``~/.cache/hfmem``. ``--no-cache`` bypasses it and
``hfmem --clear-cache`` deletes it. Writes are atomic (a temporary file renamed into place), so two processes
never read a half-written entry; an unreadable entry is treated as missing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import types
import typing
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

from hfmem import types as hfmem_types
from hfmem.types import FinetuneSettings, ModelConfig

__all__ = ["ProfileCache", "cache_dir", "clear_cache", "cache_key"]

#: Bumped when the stored layout of the cached types changes in a way older entries cannot be read as.
CACHE_FORMAT = 1

T = TypeVar("T")


def cache_dir() -> Path:
    """The cache folder: ``$HFMEM_CACHE``, ``$XDG_CACHE_HOME/hfmem`` or ``~/.cache/hfmem``."""
    if os.environ.get("HFMEM_CACHE"):
        return Path(os.environ["HFMEM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hfmem"


def clear_cache() -> tuple[Path, int]:
    """Delete every cached entry; returns the folder and how many entries were removed."""
    folder = cache_dir()
    entries = list(folder.glob("*.json")) if folder.is_dir() else []
    if folder.is_dir():
        shutil.rmtree(folder)
    return folder, len(entries)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def cache_key(model: ModelConfig, finetune: FinetuneSettings, *, trust_remote_code: bool) -> str:
    """SHA-256 of the config's content, the library versions, the method and the remote-code choice.

    Remote code is keyed by the resolved revision too: the same config at another commit may ship other code.
    """
    from hfmem.api import hfmem_version

    parts = {
        "format": CACHE_FORMAT,
        "config": model.config,
        "hfmem": hfmem_version(),
        "transformers": _package_version("transformers"),
        "peft": _package_version("peft") if finetune.method in ("lora", "qlora") else None,
        "finetune": dataclasses.asdict(finetune),
        "trust_remote_code": trust_remote_code,
        "revision": model.revision if trust_remote_code else None,
    }
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ProfileCache:
    """The inventory and traced profiles of one model and method, in memory and (unless disabled) on disk.

    ``get_or_build(kind, args, build)`` returns the stored value for ``(kind, args)`` or calls ``build()`` (which
    may import torch), stores the result and writes the entry back. In-process the values are memoised either way,
    so a sweep traces each distinct (batch, sequence) once.
    """

    def __init__(self, key: str | None, *, persistent: bool = True) -> None:
        self.key = key
        self.persistent = persistent and key is not None
        self.path = cache_dir() / f"{key}.json" if key is not None else None
        self._values: dict[str, Any] = {}
        self._stored: dict[str, Any] = self._read() if self.persistent else {}
        self.hits = 0
        self.misses = 0

    def get_or_build(self, kind: str, args: dict[str, Any], build: Callable[[], T], cls: type[T]) -> T:
        slot = kind + json.dumps(args, sort_keys=True, default=str)
        if slot in self._values:
            self.hits += 1
            return typing.cast(T, self._values[slot])
        if slot in self._stored:
            try:
                value = _decode(self._stored[slot], cls)
            except (TypeError, ValueError, KeyError):
                value = None  # an entry written by an incompatible layout: rebuild it
            if value is not None:
                self.hits += 1
                self._values[slot] = value
                return typing.cast(T, value)
        self.misses += 1
        value = build()
        self._values[slot] = value
        if self.persistent:
            self._stored[slot] = _encode(value)
            self._write()
        return value

    def _read(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._stored, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only home or a full disk: the cache is an optimisation, never an error
            print(
                f"hfmem: could not write the cache at {self.path.parent} ({e}); continuing without it", file=sys.stderr
            )
            self.persistent = False


# --- a small JSON codec for the frozen dataclasses in hfmem.types ---------------------------------------------------


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(hfmem_types))


def _decode(data: Any, hint: Any) -> Any:
    """``data`` read back as ``hint``: dataclasses by their field types, tuples as tuples, optionals as either."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if data is None:
            return None
        return _decode(data, options[0]) if len(options) == 1 else data
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(data, list):
            raise TypeError(f"expected a list for {hint}, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in data)
        return tuple(_decode(v, a) for v, a in zip(data, args, strict=True))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {hint.__name__}")
        hints = _hints(hint)
        kwargs = {f.name: _decode(data[f.name], hints[f.name]) for f in dataclasses.fields(hint) if f.init}
        return hint(**kwargs)
    if hint is int and (not isinstance(data, int) or isinstance(data, bool)):
        raise TypeError("expected an integer")
    return data
