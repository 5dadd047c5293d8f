"""A persistent cache of what building and tracing a model on the meta device measured.

The inventory and the traced profiles depend only on the config, hfmem's own code, the installed torch, transformers,
accelerate (and peft for LoRA), the repo's own code when it is trusted, and what is trained (the fine-tuning method),
so a repeat query of a model already seen reads them from one JSON file per model and never imports torch. The key
is the SHA-256 of exactly those inputs (`cache_key`); change any of them and it is a new key, never a stale answer.

Where: ``$HFMEM_CACHE``, else ``$XDG_CACHE_HOME/hfmem``, else ``~/.cache/hfmem`` (`cache_dir`). ``--no-cache``
bypasses it.

The cache owns only what it wrote. The folder carries a ``CACHEDIR.TAG`` (the Cache Directory Tagging
Specification, https://bford.info/cachedir/) whose second line says hfmem wrote it; entries are named
``<64 hex digits>.json`` and written atomically through hidden ``.<name>.<random>.tmp`` files renamed into place, so
two processes never read a half-written entry. hfmem writes only into a folder that is absent, empty, tagged by hfmem,
or holds nothing but files named like its own; ``hfmem --clear-cache`` deletes only regular files named like
entries or temporary files in such a folder (never a sub-folder, never the tag, never the folder itself) and refuses
any other folder with `CacheFolderError`. Entries are opened without following symlinks and without blocking, and
anything that is not a regular file where an entry should be (a FIFO, a folder, a symlink) is skipped with a warning.
An unreadable, corrupt or wrongly shaped entry is a miss, rebuilt and overwritten.

Errors and warnings: an ``HFMEM_CACHE`` that cannot name a folder (``~nosuchuser/x``, a path to a file or under one)
is a `CacheFolderError` (exit 2), since the user asked for it; a folder that exists but cannot be used (someone
else's files, no permission to write, a full disk) and any problem with the default location are one warning on
stderr, and the run continues without the cache, which only saves time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TypeVar

from hfmem.errors import CacheFolderError
from hfmem.types import FinetuneSettings, ResolvedModel

__all__ = [
    "ProfileCache",
    "ClearResult",
    "cache_dir",
    "clear_cache",
    "cache_key",
    "code_digest",
    "remote_code_digest",
    "MARKER_NAME",
]

#: Bumped when the stored layout of the cached types changes in a way older entries cannot be read as.
CACHE_FORMAT = 1

#: The marker file of the Cache Directory Tagging Specification (https://bford.info/cachedir/): a file of this name
#: whose first bytes are exactly this signature marks its folder as a cache (``tar --exclude-caches``, borg and restic
#: skip such folders). The spec allows any text after the signature: the second line says that hfmem wrote it, so a
#: tag another tool wrote does not make a folder hfmem's.
MARKER_NAME = "CACHEDIR.TAG"
MARKER_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
MARKER_OWNER = b"# This file is a cache directory tag created by hfmem."
MARKER_TEXT = (
    MARKER_SIGNATURE
    + b"\n"
    + MARKER_OWNER
    + b"\n# It marks this folder as hfmem's cache; `hfmem --clear-cache` removes the entries.\n"
    + b"# For information about cache directory tags, see https://bford.info/cachedir/\n"
)

#: An entry: the SHA-256 key in hex, ``.json``.
ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.json")
#: A temporary file of an atomic write: ``tempfile.mkstemp(prefix=".<final name>.", suffix=".tmp")``.
TEMP_NAME = re.compile(r"\.(?:[0-9a-f]{64}\.json|CACHEDIR\.TAG)\.[A-Za-z0-9_]+\.tmp")
#: A temporary file older than this was left by a process that died mid-write (a write takes milliseconds); writes
#: sweep such files away. hfmem's own choice: far above any write, short enough that leftovers do not pile up.
STALE_TEMP_S = 3600

#: hfmem's own source: every ``*.py`` under this folder is part of the key (`code_digest`).
SOURCE_ROOT = Path(__file__).resolve().parent

#: The packages whose versions change what a build or a trace measures (hfmem/build/ imports them).
BUILD_PACKAGES = ("torch", "transformers", "accelerate")

T = TypeVar("T")


# --- where, and whose ------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache folder: ``$HFMEM_CACHE``, ``$XDG_CACHE_HOME/hfmem`` or ``~/.cache/hfmem``, as an absolute path.

    An empty variable counts as unset; a relative ``HFMEM_CACHE`` is taken from the current folder; a relative
    ``XDG_CACHE_HOME`` is ignored, as the XDG Base Directory Specification says.

    Raises:
        CacheFolderError: ``HFMEM_CACHE`` starts with ``~user`` for a user who does not exist, or (the default
            location) the home folder cannot be determined.
    """
    raw = os.environ.get("HFMEM_CACHE", "")
    if raw:
        try:
            return Path(raw).expanduser().absolute()
        except RuntimeError as e:  # pathlib: "Could not determine home directory." for '~nosuchuser' or no $HOME
            user = raw.split("/", 1)[0]
            raise CacheFolderError(
                raw,
                f"HFMEM_CACHE={raw!r} cannot be expanded: there is no home folder for {user!r}; set HFMEM_CACHE to "
                "an absolute path, or unset it to use ~/.cache/hfmem",
            ) from e
        except OSError as e:  # a relative path, and the current folder was deleted
            raise CacheFolderError(
                raw,
                f"HFMEM_CACHE={raw!r} is relative and the current folder is gone ({_reason(e)}); set it to an "
                "absolute path",
            ) from e
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "hfmem"
    try:
        return Path.home() / ".cache" / "hfmem"
    except RuntimeError as e:
        raise CacheFolderError(
            "~/.cache/hfmem",
            "the default cache folder ~/.cache/hfmem has no home folder to live in; set HFMEM_CACHE to a folder",
        ) from e


FolderState = Literal["absent", "hfmem", "empty", "hfmem-named", "foreign", "not a folder", "inaccessible"]


@dataclasses.dataclass(frozen=True)
class _Inspection:
    """What a would-be cache folder is: ``hfmem`` (tagged by hfmem), ``empty``, ``hfmem-named`` (untagged, but every
    file is named like hfmem's: a cache written before the tag existed), ``foreign`` (``others`` are the names that
    make it so), ``absent``, ``not a folder`` or ``inaccessible`` (``why``)."""

    state: FolderState
    others: tuple[str, ...] = ()
    why: str = ""

    @property
    def usable(self) -> bool:
        return self.state in ("absent", "hfmem", "empty", "hfmem-named")


def _inspect(folder: Path) -> _Inspection:
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        return _Inspection("absent")
    except NotADirectoryError:  # a part of the path is a file
        return _Inspection("not a folder", why="a part of the path is a file")
    except (OSError, ValueError) as e:
        return _Inspection("inaccessible", why=_reason(e))
    if not stat.S_ISDIR(mode):
        return _Inspection("not a folder", why=f"it is {_kind(mode)}")
    if _tagged_by_hfmem(folder):
        return _Inspection("hfmem")
    try:
        names = os.listdir(folder)
    except OSError as e:
        return _Inspection("inaccessible", why=_reason(e))
    if not names:
        return _Inspection("empty")
    others = tuple(sorted(n for n in names if not (ENTRY_NAME.fullmatch(n) or TEMP_NAME.fullmatch(n))))
    return _Inspection("foreign", others) if others else _Inspection("hfmem-named")


def _tagged_by_hfmem(folder: Path) -> bool:
    try:
        head = _read_regular(folder / MARKER_NAME, follow_symlinks=False, limit=4096)
    except (OSError, _NotRegularError):
        return False
    return head.startswith(MARKER_SIGNATURE) and MARKER_OWNER in head.splitlines()


def _claim(folder: Path) -> bool:
    """Create ``folder`` if needed and tag it as hfmem's; False (with a warning) if it is someone else's.

    Raises:
        OSError: the folder or its tag cannot be written.
    """
    found = _inspect(folder)
    if found.state == "hfmem":
        return True
    if not found.usable:
        cause, fix = _unusable(folder, found)
        _warn(f"hfmem: {cause}; continuing without the cache: {fix}")
        return False
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / MARKER_NAME, MARKER_TEXT)
    return True


def _usable_folder() -> Path | None:
    """The cache folder for a query, or None (with a warning) when it cannot be used.

    Raises:
        CacheFolderError: ``HFMEM_CACHE`` was set and cannot name a folder.
    """
    explicit = bool(os.environ.get("HFMEM_CACHE"))
    try:
        folder = cache_dir()
    except CacheFolderError as e:
        if explicit:
            raise
        _warn(f"hfmem: {e}; continuing without the cache")
        return None
    found = _inspect(folder)
    if found.usable:
        return folder
    cause, fix = _unusable(folder, found)
    if explicit and found.state == "not a folder":
        raise CacheFolderError(str(folder), f"{cause}; {fix}, or pass --no-cache")
    _warn(f"hfmem: {cause}; continuing without the cache: {fix}")
    return None


def _unusable(folder: Path, found: _Inspection) -> tuple[str, str]:
    """Why ``folder`` cannot be hfmem's cache, and the fix (two one-line phrases)."""
    where = f"the cache folder {_quoted(folder)}"
    if found.state == "foreign":
        shown = ", ".join(_quoted(n) for n in found.others[:3]) + (", …" if len(found.others) > 3 else "")
        cause = f"{where} is not hfmem's: it has no {MARKER_NAME} written by hfmem and holds other files ({shown})"
        if os.environ.get("HFMEM_CACHE"):
            return cause, "point HFMEM_CACHE at an empty folder or one hfmem created"
        return cause, "move those files out of it, or point HFMEM_CACHE at an empty folder"
    if found.state == "not a folder":
        return f"{where} cannot be a folder ({found.why})", "point HFMEM_CACHE at an empty folder or one hfmem created"
    return f"{where} cannot be used ({found.why})", "point HFMEM_CACHE at a folder you can write"


# --- clearing --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClearResult:
    """What `clear_cache` did: the folder, the entries and leftover temporary files it removed (names), and the
    entry-named things it left alone because they are not regular files."""

    folder: Path
    removed_entries: tuple[str, ...] = ()
    removed_temp_files: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def clear_cache() -> ClearResult:
    """Delete hfmem's entries (and leftover temporary files) from the cache folder, and nothing else.

    Only regular files whose names match hfmem's entry or temporary-file pattern are removed, one by one; the tag,
    other files, sub-folders and the folder itself stay. An absent folder is nothing to do.

    Raises:
        CacheFolderError: the folder is not hfmem's (other files and no tag hfmem wrote), is not a folder, cannot
            be listed, or its location cannot be determined. Nothing is deleted then.
    """
    folder = cache_dir()
    found = _inspect(folder)
    if found.state == "absent":
        return ClearResult(folder)
    if not found.usable:
        cause, fix = _unusable(folder, found)
        raise CacheFolderError(str(folder), f"{cause}; nothing was deleted: {fix}")
    entries: list[str] = []
    temps: list[str] = []
    skipped: list[str] = []
    try:
        listing = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise CacheFolderError(str(folder), f"cannot list the cache folder {_quoted(folder)} ({_reason(e)})") from e
    for item in listing:
        is_entry = ENTRY_NAME.fullmatch(item.name) is not None
        if not (is_entry or TEMP_NAME.fullmatch(item.name)):
            continue
        if not item.is_file(follow_symlinks=False):
            skipped.append(item.name)
            _warn(f"hfmem: left {_quoted(item.path)} alone: it is not a regular file, so hfmem did not write it")
            continue
        try:
            os.unlink(item.path)
        except FileNotFoundError:  # another process cleared it first
            continue
        except OSError as e:
            skipped.append(item.name)
            _warn(f"hfmem: could not remove {_quoted(item.path)} ({_reason(e)})")
            continue
        (entries if is_entry else temps).append(item.name)
    return ClearResult(folder, tuple(entries), tuple(temps), tuple(skipped))


# --- the key ---------------------------------------------------------------------------------------------------------


def code_digest() -> str:
    """SHA-256 of hfmem's own code: every ``*.py`` under the package folder, by relative path and content.

    Hashed once per process (about half a megabyte: a few milliseconds). The bundled catalogue's JSON is left out on
    purpose: a catalogue config.json that answers a query is the config, already in the key by content, and
    ``expected.json`` (published counts for tests and ``--list-catalogue``) changes no cached value.
    """
    return _tree_digest(SOURCE_ROOT)


@functools.cache
def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def remote_code_digest(directory: Path | None) -> str | None:
    """SHA-256 of the code ``--trust-remote-code`` runs: every ``*.py`` file at the top of the model's folder (a local
    folder, or the HF cache snapshot `hub.fetch_remote_code` downloads into), by name and content.

    transformers loads the ``module`` of each ``auto_map`` entry ``"module.Class"`` as ``module.py`` from that folder
    and copies the files it imports relatively (``from .x import y``) from the same folder
    (``transformers.dynamic_module_utils.get_cached_module_file``), so these are all the files it can run. A file that
    is not regular (a FIFO) is hashed as what it is, never opened for reading. None without a folder.
    """
    if directory is None:
        return None
    digest = hashlib.sha256()
    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(".py"))
    except OSError as e:  # the build reads the same folder and fails too, so nothing gets cached under this key
        digest.update(f"unlistable: {type(e).__name__}".encode())
        paths = []
    for path in paths:
        digest.update(path.name.encode("utf-8", "surrogateescape") + b"\0")
        try:
            digest.update(hashlib.sha256(_read_regular(path, follow_symlinks=True)).digest())
        except _NotRegularError as e:
            digest.update(e.kind.encode())
        except OSError as e:
            digest.update(f"unreadable: {type(e).__name__}".encode())
    return digest.hexdigest()


@functools.cache
def _package_version(name: str) -> str:
    """The installed version of ``name``, from its metadata (importing torch to ask would cost seconds)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def cache_key(model: ResolvedModel, finetune: FinetuneSettings, *, trust_remote_code: bool) -> str:
    """SHA-256 of everything the cached measurements depend on.

    The config's content; hfmem's code (`code_digest`); the torch, transformers and accelerate versions (peft's for
    LoRA/QLoRA); the fine-tuning method and its settings; and with ``trust_remote_code`` the revision and the content
    of the repo's code files (`remote_code_digest`). The model's name and where the config came from are left out:
    the same config is the same model.
    """
    lora = finetune.method in ("lora", "qlora")
    parts = {
        "format": CACHE_FORMAT,
        "config": model.config,
        "hfmem_code": code_digest(),
        "packages": {name: _package_version(name) for name in (*BUILD_PACKAGES, *(("peft",) if lora else ()))},
        "finetune": dataclasses.asdict(finetune),
        "trust_remote_code": trust_remote_code,
        "revision": model.revision if trust_remote_code else None,
        "remote_code": remote_code_digest(model.directory) if trust_remote_code else None,
    }
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- entries ---------------------------------------------------------------------------------------------------------


class ProfileCache:
    """The inventory and traced profiles of one model and method, in memory and (unless disabled) on disk.

    ``get_or_build(kind, args, build, cls)`` returns the stored value for ``(kind, args)`` or calls ``build()``
    (which may import torch), stores the result and writes the entry back. In-process the values are memoised either
    way, so a sweep traces each distinct (batch, sequence) once.

    Raises:
        CacheFolderError: (constructor) ``HFMEM_CACHE`` was set and cannot name a folder.
    """

    def __init__(self, key: str | None, *, persistent: bool = True) -> None:
        if key is not None and not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"a cache key is a SHA-256 in hex (cache_key), got {key!r}")
        self.key = key
        folder = _usable_folder() if persistent and key is not None else None
        self.path = folder / f"{key}.json" if folder is not None else None
        self.persistent = self.path is not None
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
                value = None  # not what this hfmem writes (edited, or an older layout): a miss, overwritten below
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
            data = _read_regular(self.path, follow_symlinks=False)
        except _NotRegularError as e:
            _warn(
                f"hfmem: skipped the cache entry {_quoted(self.path)}: it is {e.kind}, not a file hfmem wrote; "
                "remove it to cache this model again"
            )
            self.persistent = False  # never written over either
            return {}
        except OSError:  # absent or unreadable: a miss (a write that fails says so)
            return {}
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write(self) -> None:
        assert self.path is not None
        folder = self.path.parent
        try:
            if not _claim(folder):
                self.persistent = False
                return
            with contextlib.suppress(FileNotFoundError):
                mode = os.lstat(self.path).st_mode
                if not stat.S_ISREG(mode):  # appeared since it was read: leave it alone
                    _warn(f"hfmem: left {_quoted(self.path)} alone: it is {_kind(mode)}, not a file hfmem wrote")
                    self.persistent = False
                    return
            _atomic_write(self.path, json.dumps(self._stored, separators=(",", ":")).encode())
            _remove_stale_temp_files(folder)
        except OSError as e:  # a read-only home or a full disk: the cache is an optimisation, never an error
            _warn(f"hfmem: could not write the cache at {_quoted(folder)} ({_reason(e)}); continuing without it")
            self.persistent = False


# --- files, safely ---------------------------------------------------------------------------------------------------


class _NotRegularError(Exception):
    """Something other than a regular file is where a file was expected; ``kind`` says what ("a FIFO")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(kind)


def _read_regular(path: Path, *, follow_symlinks: bool, limit: int = -1) -> bytes:
    """The bytes of ``path`` (at most ``limit``) if it is a regular file.

    Never blocks: the type is checked before opening, and the file is opened non-blocking (and, unless following
    symlinks, refusing one) and checked again, so a FIFO swapped in between is not read either.

    Raises:
        _NotRegularError: it is a FIFO, a folder, a socket, a device (or a symlink, when not following them).
        OSError: it cannot be read (FileNotFoundError when absent).
    """
    mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
    if not stat.S_ISREG(mode):
        raise _NotRegularError(_kind(mode))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(path, flags), "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegularError(_kind(mode))
        return f.read(limit)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it into place (atomic on POSIX and
    Windows: `os.replace`); the temporary file is removed if anything fails, Ctrl-C included."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_stale_temp_files(folder: Path) -> None:
    """Remove temporary files that processes killed mid-write left behind (older than `STALE_TEMP_S`)."""
    cutoff = time.time() - STALE_TEMP_S
    with contextlib.suppress(OSError), os.scandir(folder) as listing:
        for item in listing:
            if TEMP_NAME.fullmatch(item.name) and item.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if item.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(item.path)


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a file"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _reason(error: BaseException) -> str:
    return (error.strerror if isinstance(error, OSError) and error.strerror else str(error)) or type(error).__name__


def _quoted(path: Path | str) -> str:
    """A path in quotes, with control characters escaped (``repr``), so a message about it stays one line."""
    return repr(str(path))


#: Warnings already shown by this process: each is shown once, however many models or methods a run plans.
_warned: set[str] = set()


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)


# --- a small, strict JSON codec for the frozen dataclasses the cache stores -----------------------------------------


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
    return typing.get_type_hints(cls)


def _decode(data: Any, hint: Any) -> Any:
    """``data`` read back as ``hint``, checked all the way down.

    Raises:
        TypeError, ValueError, KeyError: ``data`` is not what `_encode` writes for ``hint`` (a list for an object, a
            string for a count, a missing or extra field): the caller treats the slot as a miss.
        NotImplementedError: ``hint`` is a type this codec does not know (a bug: teach it the new type).
    """
    if hint is Any:
        return data
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            with contextlib.suppress(TypeError, ValueError, KeyError):
                return _decode(data, option)
        raise TypeError(f"no option of {hint} fits")
    if origin is Literal:
        if any(type(data) is type(a) and data == a for a in args):
            return data
        raise ValueError(f"{data!r:.40} is not one of {args}")
    if origin is tuple:
        if not isinstance(data, list):
            raise TypeError(f"expected a list for {hint}, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in data)
        return tuple(_decode(v, a) for v, a in zip(data, args, strict=True))
    if origin is dict or hint is dict:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {hint}, got {type(data).__name__}")
        value_hint = args[1] if args else Any
        return {k: _decode(v, value_hint) for k, v in data.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {hint.__name__}, got {type(data).__name__}")
        hints = _hints(hint)
        names = [f.name for f in dataclasses.fields(hint) if f.init]
        if set(data) != set(names):
            raise KeyError(f"{hint.__name__} fields differ: {sorted(set(data) ^ set(names))}")
        return hint(**{name: _decode(data[name], hints[name]) for name in names})
    if hint is bool:
        if isinstance(data, bool):
            return data
        raise TypeError("expected true or false")
    if hint is int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
        raise TypeError("expected an integer")
    if hint is float:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
        raise TypeError("expected a number")
    if hint is str:
        if isinstance(data, str):
            return data
        raise TypeError("expected a string")
    if hint is type(None):
        if data is None:
            return None
        raise TypeError("expected null")
    raise NotImplementedError(f"the cache cannot decode {hint!r}: teach hfmem.cache._decode this type")
