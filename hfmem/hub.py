"""MODEL → ResolvedModel: a Hub repo id, a local folder or config.json, a PEFT adapter, or the bundled catalogue.

This is the only module that talks to the network, and it does so only through huggingface_hub, so the HF cache,
``HF_TOKEN`` / a saved login / ``--token``, ``HF_ENDPOINT`` mirrors and ``HF_HUB_OFFLINE`` behave as they do for
every other Hugging Face tool. huggingface_hub's errors become hfmem errors here and nowhere else.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_download, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import disable_progress_bars, validate_repo_id

from hfmem import catalogue
from hfmem.environment import header_safe
from hfmem.errors import (
    AdapterCycleError,
    ConfigTooLargeError,
    GatedModelError,
    HubError,
    HubTimeoutError,
    InvalidConfigError,
    InvalidModelIdError,
    InvalidSetupError,
    ModelNotFoundError,
    NoConfigError,
    OfflineError,
    RevisionNotFoundError,
)
from hfmem.limits import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_ADAPTER_CHAIN,
    MAX_CONFIG_BYTES,
    MAX_RESPONSE_BYTES,
    NETWORK_BUDGET,
    NetworkBudget,
)
from hfmem.memory.checkpoint import CheckpointSummary, summary_from_headers
from hfmem.types import FinetuneSettings, ResolvedModel

__all__ = [
    "resolve_model",
    "fetch_remote_code",
    "fetch_checkpoint",
    "load_config_file",
    "describe_layout",
    "check_token",
]


# huggingface_hub's HfApi module costs ~50 ms to import and only the checkpoint cross-check, remote code and error
# diagnosis need it; a repeat query served from hfmem's cache should not pay for it. These forward to it on use.
def HfApi(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - huggingface_hub's name
    from huggingface_hub import HfApi as _HfApi

    return _HfApi(*args, **kwargs)


def snapshot_download(*args: Any, **kwargs: Any) -> Any:
    from huggingface_hub import snapshot_download as _snapshot_download

    return _snapshot_download(*args, **kwargs)


def get_safetensors_metadata(*args: Any, **kwargs: Any) -> Any:
    from huggingface_hub import get_safetensors_metadata as _get_safetensors_metadata

    return _get_safetensors_metadata(*args, **kwargs)


def get_local_safetensors_metadata(*args: Any, **kwargs: Any) -> Any:
    from huggingface_hub import get_local_safetensors_metadata as _get_local_safetensors_metadata

    return _get_local_safetensors_metadata(*args, **kwargs)


CONFIG_NAME = "config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
# NOTE: timeouts. Every request hfmem makes has one, read at call time from huggingface_hub's constants so the user's
# HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT (seconds, 10 each by default) apply. huggingface_hub's shared HTTP
# client has no timeout of its own, so calls that take none (`list_repo_files`, `snapshot_download` online) are not
# used:
#   * config.json's metadata (HEAD): get_hf_file_metadata(timeout=HF_HUB_ETAG_TIMEOUT);
#   * config.json, adapter_config.json and custom code: hf_hub_download(etag_timeout=HF_HUB_ETAG_TIMEOUT), whose GET
#     uses HF_HUB_DOWNLOAD_TIMEOUT (when its HEAD times out and nothing is cached, huggingface_hub retries it with
#     60 s and backoff: bounded, and cut short by the operation's deadline below);
#   * a repo's file list: HfApi.model_info(timeout=HF_HUB_DOWNLOAD_TIMEOUT);
#   * safetensors headers: get_safetensors_metadata(timeout=HF_HUB_DOWNLOAD_TIMEOUT) (its HEADs use the etag timeout).
#
# NOTE: deadlines and sizes. Per-request timeouts bound each read, not the whole: a server that sends one byte a second
# meets every read timeout forever, and huggingface_hub's retries sleep between attempts (a 429 with a large
# Retry-After sleeps that long). So each network operation (`_online`) runs in a worker thread that the caller waits
# for at most the run's --timeout (30 s by default), then gives up with `HubTimeoutError`. Inside, two event hooks on
# huggingface_hub's HTTP client (installed with its documented seam, `set_client_factory`) bound each request's
# timeouts by the time left, stop a late worker at its next read, and count the bytes of every answer: config.json and
# adapter_config.json stop at `MAX_CONFIG_BYTES` (after the size the Hub reports is checked), anything else at
# `MAX_RESPONSE_BYTES`, so a huge answer is never written to disk or memory in full.

T = TypeVar("T")


@dataclass
class _Operation:
    """One network operation in flight: its deadline, and the byte limit of the bodies it downloads now."""

    what: str
    seconds: float
    deadline: float  # time.monotonic()
    cancelled: threading.Event
    body_limit: tuple[int, str] | None = None  # (bytes, what the body is) while downloading a config file

    def check_time(self) -> float:
        """Seconds left; `HubTimeoutError` when none (the caller has already given up)."""
        left = self.deadline - time.monotonic()
        if left <= 0 or self.cancelled.is_set():
            raise HubTimeoutError(self.what, self.seconds)
        return left


_OPERATION: contextvars.ContextVar[_Operation | None] = contextvars.ContextVar("hfmem_hub_operation", default=None)


def _online(what: str, fn: Callable[[], T]) -> T:
    """``fn()`` (huggingface_hub calls) within the run's network deadline.

    Runs ``fn`` in a daemon thread and waits at most ``NETWORK_BUDGET.seconds`` for it; past that the thread is told
    to stop (at its next request or read) and abandoned. Nested calls (an adapter's base model) share the outer
    deadline. Ctrl-C interrupts the wait.

    Raises:
        HubTimeoutError: the deadline passed, or an earlier operation of this run already ran out of time.
        whatever ``fn`` raises.
    """
    if _OPERATION.get() is not None:
        return fn()
    budget = NETWORK_BUDGET.get() or NetworkBudget(DEFAULT_TIMEOUT_SECONDS)
    if budget.gave_up is not None:
        raise HubTimeoutError(what, budget.seconds)
    _install_client_hooks()
    operation = _Operation(what, budget.seconds, time.monotonic() + budget.seconds, threading.Event())
    context = contextvars.copy_context()
    context.run(_OPERATION.set, operation)
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def work() -> None:
        try:
            outcome.append((True, context.run(fn)))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, which re-raises it
            outcome.append((False, e))
        finally:
            done.set()

    threading.Thread(target=work, name=f"hfmem: {what}", daemon=True).start()
    if not done.wait(budget.seconds):
        operation.cancelled.set()
        budget.gave_up = what
        raise HubTimeoutError(what, budget.seconds)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


@contextmanager
def _body_limit(limit_bytes: int, what: str) -> Iterator[None]:
    """Within an operation: the bodies downloaded here stop at ``limit_bytes`` (a config file)."""
    operation = _OPERATION.get()
    if operation is None:
        yield
        return
    previous, operation.body_limit = operation.body_limit, (limit_bytes, what)
    try:
        yield
    finally:
        operation.body_limit = previous


_HOOKS_INSTALLED = threading.Lock()
_hooks_installed = False


def _install_client_hooks() -> None:
    """Give huggingface_hub's shared HTTP client hfmem's two event hooks (once per process).

    The hooks act only inside an hfmem operation (`_OPERATION` set in that thread's context); any other use of the
    client in the process is untouched. A client factory set earlier with `set_client_factory` is replaced by
    huggingface_hub's default one plus these hooks.
    """
    global _hooks_installed
    with _HOOKS_INSTALLED:
        if _hooks_installed:
            return
        from huggingface_hub import set_client_factory

        # NOTE: huggingface_hub exports set_client_factory but not its default factory (utils/_http.py), which adds
        # its own request hook (offline mode, request ids); the guarded client is that one plus hfmem's hooks.
        from huggingface_hub.utils._http import default_client_factory

        def guarded_client() -> Any:
            client = default_client_factory()
            hooks = client.event_hooks
            client.event_hooks = {
                "request": [*hooks.get("request", []), _on_request],
                "response": [*hooks.get("response", []), _on_response],
            }
            return client

        set_client_factory(guarded_client)
        _hooks_installed = True


def _on_request(request: Any) -> None:
    """Bound every timeout of the request by the operation's time left; refuse it once the deadline has passed."""
    operation = _OPERATION.get()
    if operation is None:
        return
    left = operation.check_time()
    timeouts = dict(request.extensions.get("timeout") or {})
    request.extensions["timeout"] = {
        phase: left if timeouts.get(phase) is None else min(timeouts[phase], left)
        for phase in ("connect", "read", "write", "pool")
    }
    if operation.body_limit is not None:
        request.headers["Accept-Encoding"] = "identity"  # the size on the wire is the size on disk


def _on_response(response: Any) -> None:
    """Refuse an answer whose declared size is over the limit; count the bytes of the others as they arrive."""
    operation = _OPERATION.get()
    if operation is None or response.request.method == "HEAD":
        return
    limit = operation.body_limit if operation.body_limit and 200 <= response.status_code < 300 else None
    if limit is not None and response.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise HubError(
            f"the server sent {limit[1]} compressed ({response.headers['Content-Encoding']!r}) though hfmem asked for "
            "it uncompressed, so its size cannot be checked before it is unpacked; check HF_ENDPOINT"
        )
    limit_bytes, what = limit or (MAX_RESPONSE_BYTES, f"the answer to {response.request.url.path}")
    length = response.headers.get("Content-Length", "")
    if length.strip().isdigit() and int(length) > limit_bytes:
        raise _too_large(what, int(length), limit_bytes, config=limit is not None)
    response.stream = _capped_stream_type(type(response.stream))(response.stream, operation, limit_bytes, what, limit)


def _too_large(what: str, size_bytes: int | None, limit_bytes: int, *, config: bool) -> HubError | ConfigTooLargeError:
    if config:
        return ConfigTooLargeError(what, size_bytes, limit_bytes)
    size = f"is {size_bytes:,} bytes, more" if size_bytes is not None else "is larger"
    return HubError(f"{what} {size} than the {limit_bytes // 2**20} MiB hfmem reads from a server; check HF_ENDPOINT")


@functools.cache
def _capped_stream_type(stream_type: type) -> type:
    """A byte stream over a response's, of the same HTTP library (httpx or httpx2: its ``SyncByteStream`` base)."""
    base = next((c for c in stream_type.__mro__ if c.__name__ == "SyncByteStream"), object)

    class CappedStream(base):  # type: ignore[valid-type, misc]
        def __init__(self, inner: Any, operation: _Operation, limit_bytes: int, what: str, config: object) -> None:
            self._inner, self._operation, self._limit_bytes, self._what = inner, operation, limit_bytes, what
            self._config = config is not None

        def __iter__(self) -> Iterator[bytes]:
            seen_bytes = 0
            for chunk in self._inner:
                self._operation.check_time()
                seen_bytes += len(chunk)
                if seen_bytes > self._limit_bytes:
                    raise _too_large(self._what, None, self._limit_bytes, config=self._config)
                yield chunk

        def close(self) -> None:
            self._inner.close()

        @property
        def elapsed(self) -> Any:  # httpx reads Response.elapsed from its stream
            return getattr(self._inner, "elapsed", None)

    return CappedStream


def resolve_model(model: str, *, revision: str | None = None, token: str | None = None) -> ResolvedModel:
    """Find ``model``'s config.json and parse it.

    Order: an existing local path (folder or file); otherwise a Hub repo id, fetched with huggingface_hub; when
    the Hub cannot answer (offline, unreachable, gated without access) the HF cache, then the bundled catalogue,
    each with a note saying which fallback was taken and why.

    Args:
        model: a Hub repo id (``org/name``), a folder holding config.json or adapter_config.json, or a path to a
            config.json.
        revision: branch, tag or commit sha on the Hub.
        token: a Hub token; ``None`` lets huggingface_hub use ``HF_TOKEN`` or the saved login.

    Returns:
        The resolved `ResolvedModel`.

    Each Hub operation has a deadline (the run's ``NETWORK_BUDGET``, 30 s by default): past it the HF cache and the
    catalogue answer, as for an unreachable Hub. config.json and adapter_config.json over `MAX_CONFIG_BYTES` are
    refused before they are read or downloaded.

    Raises:
        InvalidModelIdError, ModelNotFoundError, RevisionNotFoundError, GatedModelError, NoConfigError,
        OfflineError, HubError, InvalidConfigError (ConfigTooLargeError, AdapterCycleError among them).

    Example:
        >>> resolve_model("meta-llama/Llama-2-7b-hf").config["hidden_size"]  # doctest: +SKIP
        4096
    """
    return _resolve(model, revision=revision, token=token, chain=())


#: The adapters followed so far, as (identity, name as given): an adapter_config.json that leads back is a cycle.
_Chain = tuple[tuple[str, str], ...]


def _resolve(model: str, *, revision: str | None, token: str | None, chain: _Chain) -> ResolvedModel:
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # '~name' for a user who does not exist
        path = Path(model)
    if _exists(path):
        return _resolve_local(model, path, revision=revision, token=token, chain=chain)
    if _looks_like_path(model):
        raise InvalidModelIdError(model, "no such file or directory")
    try:
        validate_repo_id(model)
    except hf_errors.HFValidationError as e:
        reason = str(e).replace("Use `repo_type` argument if needed.", "").strip().rstrip(".")
        raise InvalidModelIdError(model, reason) from e
    return _resolve_hub(model, revision=revision, token=token, chain=chain)


def fetch_remote_code(model: ResolvedModel, *, token: str | None = None) -> ResolvedModel:
    """Download the Python files of a Hub repo whose config.json points at its own code (``auto_map``).

    Called only after the user passed ``--trust-remote-code``. The files land in the same HF cache snapshot as
    config.json, so transformers loads them from ``model.directory`` without touching the network itself.

    Raises:
        OfflineError: the code is neither downloadable nor cached.
        HubError: the Hub refused the download.
    """
    if model.source != "hub" or not model.config.get("auto_map"):
        return model
    check_token(token)
    repo_id, revision = model.model_id, model.revision
    code_patterns = ["*.py", CONFIG_NAME]

    def download_code() -> str:
        names = [name for name in _list_files(repo_id, revision, token) if fnmatch(name, "*.py")]
        # One file at a time with bounded timeouts (snapshot_download lists the repo without a timeout); they land in
        # the snapshot folder of `revision`, config.json last so its folder is that snapshot's root.
        paths = [_download(repo_id, name, revision, token) for name in names]
        with _body_limit(MAX_CONFIG_BYTES, f"config.json of '{repo_id}'"):
            paths.append(_download(repo_id, CONFIG_NAME, revision, token))
        return str(Path(paths[-1]).parent)

    try:
        snapshot = _online(f"downloading the custom code of '{repo_id}'", download_code)
    except hf_errors.HfHubHTTPError as e:
        raise HubError(f"downloading the custom code of '{repo_id}' failed ({type(e).__name__}); retry") from e
    except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError, hf_errors.HTTPError, HubTimeoutError):
        try:  # offline or no answer: the HF cache may hold the code from an earlier run (no network here)
            snapshot = snapshot_download(
                repo_id, revision=revision, token=token, allow_patterns=code_patterns, local_files_only=True
            )
        except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
            raise OfflineError(repo_id, "its custom code files cannot be downloaded") from e
    return ResolvedModel(
        model.model_id, model.source, model.config, revision=model.revision, directory=Path(snapshot), notes=model.notes
    )


def _list_files(repo_id: str, revision: str | None, token: str | None) -> list[str]:
    """Every file of a Hub repo, from its model info (``list_repo_files`` takes no timeout, and its client has none).

    Raises:
        huggingface_hub's HTTP errors, ``httpx`` timeouts (after ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds).
    """
    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT)
        return [s.rfilename for s in info.siblings or [] if isinstance(getattr(s, "rfilename", None), str)]
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # not the JSON the Hub documents
        raise HubError(
            f"the file list of '{repo_id}' from {constants.ENDPOINT} is not the JSON the Hub answers "
            f"({type(e).__name__}); retry, or check HF_ENDPOINT"
        ) from e


def _download(repo_id: str, filename: str, revision: str | None, token: str | None) -> str:
    """``hf_hub_download`` with an explicit, bounded HEAD timeout (see the note on timeouts above)."""
    return hf_hub_download(
        repo_id, filename, revision=revision, token=token, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT
    )


def load_config_file(path: Path) -> dict[str, Any]:
    """Parse a config.json, refusing anything that is not a JSON object with a ``model_type``.

    Files over `MAX_CONFIG_BYTES` are refused before they are read (their size from ``stat``, then a bounded read
    for files whose size ``stat`` does not tell).

    Raises:
        ConfigTooLargeError, InvalidConfigError.
    """
    try:
        size_bytes = path.stat().st_size
        if size_bytes > MAX_CONFIG_BYTES:
            raise ConfigTooLargeError(str(path), size_bytes, MAX_CONFIG_BYTES)
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigTooLargeError(str(path), None, MAX_CONFIG_BYTES)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidConfigError(f"cannot read {path} ({e.__class__.__name__}: {e}); check the file") from e
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidConfigError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "fix the file or download it again"
        ) from e
    except ValueError as e:  # Python's int limit: "Exceeds the limit (4300 digits) for integer string conversion"
        raise InvalidConfigError(
            f"{path} holds a number no config has ({_first_line(e).split(';')[0]}); fix the value"
        ) from e
    except RecursionError as e:
        raise InvalidConfigError(
            f"{path} nests JSON arrays or objects thousands deep; it is no config.json: fix the file or download it "
            "again"
        ) from e
    if not isinstance(config, dict):
        raise InvalidConfigError(f"{path} holds a JSON {type(config).__name__}, not an object; is it a config.json?")
    return config


def describe_layout(files: list[str]) -> str:
    """Say what a repo or folder without config.json holds, and what to do about it."""
    names = sorted(files)
    ggufs = [f for f in names if f.lower().endswith(".gguf")]
    if ggufs:
        shown = ", ".join(ggufs[:3]) + (", …" if len(ggufs) > 3 else "")
        return (
            f"it holds GGUF files only ({shown}); hfmem reads transformers configs: pass the original repo the "
            "GGUF was converted from"
        )
    if "model_index.json" in names:
        return "it is a diffusers pipeline (model_index.json); hfmem covers transformers models only"
    nested = [f for f in names if f.endswith("/" + CONFIG_NAME)]
    if "modules.json" in names or "config_sentence_transformers.json" in names:
        where = f" (its transformer config is at {nested[0]})" if nested else ""
        return (
            f"it is a sentence-transformers layout{where}; pass the folder holding that config.json, or the "
            "base transformers model id"
        )
    if nested:
        return f"config.json files sit in sub-folders ({', '.join(nested[:3])}); pass one of those folders"
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "") if names else "nothing"
    return f"found {shown}; pass a repo or folder with a transformers config.json"


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name the OS refuses (too long, a NUL byte) instead of raising."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~"))
        or model.endswith(".json")
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


def _resolve_local(model: str, path: Path, *, revision: str | None, token: str | None, chain: _Chain) -> ResolvedModel:
    try:
        is_file = path.is_file()
        config_path, adapter_path = path / CONFIG_NAME, path / ADAPTER_CONFIG_NAME
        has_config = not is_file and config_path.is_file()
        has_adapter = not is_file and not has_config and adapter_path.is_file()
    except OSError as e:  # a folder without search permission
        raise NoConfigError(model, f"it cannot be read ({type(e).__name__}); check its permissions") from e
    if is_file:
        if path.name == ADAPTER_CONFIG_NAME:
            return _resolve_adapter(model, load_config_file(path), str(path), token=token, chain=chain)
        return ResolvedModel(model, "local", load_config_file(path), directory=path.parent)
    if has_config:
        return ResolvedModel(model, "local", load_config_file(config_path), directory=path)
    if has_adapter:
        return _resolve_adapter(model, load_config_file(adapter_path), str(adapter_path), token=token, chain=chain)
    if not path.is_dir():
        raise NoConfigError(model, "it is neither a folder nor a regular file; pass a folder holding config.json")
    raise NoConfigError(model, describe_layout(_folder_files(path)))


def _folder_files(folder: Path, *, depth: int = 2, limit: int = 200) -> list[str]:
    """Up to ``limit`` file names in ``folder`` and its sub-folders ``depth`` levels down, relative to it.

    Bounded, so that ``hfmem /`` does not walk the whole disk; unreadable entries (``/proc``) are skipped.
    """
    found: list[str] = []
    pending = [(folder, "", 1)]
    while pending and len(found) < limit:
        current, prefix, level = pending.pop(0)
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_file():
                    found.append(prefix + entry.name)
                elif level < depth and entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), f"{prefix}{entry.name}/", level + 1))
            except OSError:
                continue
    return sorted(found)[:limit]


def _identity(model: str) -> str:
    """What an adapter or model name points at: the resolved folder of a local path, else the Hub id itself."""
    try:
        path = Path(model).expanduser()
        if path.exists():
            path = path.resolve()
            return str(path.parent if path.is_file() else path)
    except (OSError, RuntimeError, ValueError):  # a loop of links, '~nobody', a NUL byte
        pass
    return model


def _resolve_adapter(
    model: str, adapter: dict[str, Any], origin: str, *, token: str | None, chain: _Chain
) -> ResolvedModel:
    base = adapter.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise InvalidConfigError(
            f"'{model}' is a PEFT adapter whose adapter_config.json names no base_model_name_or_path; "
            "pass the base model instead"
        )
    chain = (*chain, (_identity(model), model))
    names = tuple(name for _, name in chain)
    if _identity(base) in {identity for identity, _ in chain}:
        raise AdapterCycleError((*names, base))
    if len(chain) >= MAX_ADAPTER_CHAIN:
        raise AdapterCycleError((*names, base), too_long=True)
    settings, adapter_notes = adapter_settings(adapter, model, origin)
    resolved = _resolve(base, revision=None, token=token, chain=chain)
    kind = adapter.get("peft_type", "PEFT")
    note = f"'{model}' is a {kind} adapter (adapter_config.json): planning for its base model '{base}'"
    return ResolvedModel(
        resolved.model_id,
        resolved.source,
        resolved.config,
        revision=resolved.revision,
        directory=resolved.directory,
        notes=(note, *adapter_notes, *resolved.notes),
        adapter=settings,
        adapter_origin=origin,
    )


#: LoraConfig fields that change what peft adds or trains but that `FinetuneSettings` does not carry, with the value
#: that changes nothing (peft ``tuners/lora/config.py`` ``LoraConfig`` defaults): an adapter setting one is planned
#: without it, with a note.
_UNMODELLED_LORA_FIELDS: dict[str, Any] = {
    "rank_pattern": {},  # per-module r
    "layers_to_transform": None,  # only some layers adapted
    "exclude_modules": None,
    "bias": "none",  # "all" / "lora_only" train biases
    "lora_bias": False,  # a bias on lora_B
    "layer_replication": None,
    "target_parameters": None,  # adapters on nn.Parameter (MoE experts)
    "trainable_token_indices": None,
}


def adapter_settings(
    adapter: dict[str, Any], model: str, origin: str
) -> tuple[FinetuneSettings | None, tuple[str, ...]]:
    """A PEFT adapter_config.json → the LoRA it trains (`FinetuneSettings`, method ``lora``) and notes.

    Read: ``r``, ``lora_alpha``, ``target_modules`` (a list; ``"all-linear"``; another string is a regex peft
    full-matches against module names, kept as ``re:<regex>``), ``modules_to_save`` (null: none) and ``use_dora``
    (peft ``tuners/lora/config.py`` ``LoraConfig``). QLoRA adapters look the same (the 4-bit base is a loading
    choice, not in the file): ``--method qlora`` plans one. A ``peft_type`` other than ``LORA`` (IA3, prefix
    tuning, AdaLoRA…) is not modelled: None, with a note that the base is planned as the flags say.

    Raises:
        InvalidConfigError: a LoRA field of the wrong type (``r`` not a positive integer, targets not names…).
    """
    kind = adapter.get("peft_type")
    if kind != "LORA":
        return None, (
            f"hfmem models LoRA adapters only; '{model}' is {kind or 'of no peft_type'}, so its own settings are not "
            "planned: the base model is planned as the options say (default: a full fine-tune)",
        )

    def bad(field: str, value: Any, want: str) -> InvalidConfigError:
        return InvalidConfigError(f"{origin}: {field} is {value!r}, not {want}; fix the adapter or pass its base model")

    rank = adapter.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise bad("r", rank, "a positive integer")
    alpha = adapter.get("lora_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 1):
        raise bad("lora_alpha", alpha, "a positive integer")
    targets = adapter.get("target_modules")
    if isinstance(targets, str):
        targets = ("all-linear",) if targets == "all-linear" else (f"re:{targets}",)
    elif targets is not None:
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise bad("target_modules", targets, "a list of module names, a regex or null")
        targets = tuple(targets)
    saved = adapter.get("modules_to_save") or []
    if not isinstance(saved, list) or not all(isinstance(m, str) and m for m in saved):
        raise bad("modules_to_save", saved, "a list of module names or null")
    dora = adapter.get("use_dora", False)
    if not isinstance(dora, bool):
        raise bad("use_dora", dora, "true or false")
    settings = FinetuneSettings(
        method="lora", lora_rank=rank, lora_alpha=alpha, lora_targets=targets, modules_to_save=tuple(saved), dora=dora
    )
    unmodelled = [
        f"{field}={adapter[field]!r}"
        for field, neutral in _UNMODELLED_LORA_FIELDS.items()
        if adapter.get(field, neutral) not in (neutral, None, {}, [])
    ]
    notes = ()
    if unmodelled:
        notes = (
            f"{origin} sets {', '.join(unmodelled)}, which hfmem does not model: planned as if unset "
            f"(r={rank} on every target)",
        )
    return settings, notes


def check_token(token: str | None) -> None:
    """Refuse a Hub token that no HTTP header can carry (non-ASCII or control characters), without showing it.

    ``None`` checks the token huggingface_hub would use instead (``HF_TOKEN`` or the saved login). httpx would raise
    a ``UnicodeEncodeError`` quoting the offending character while building the request.

    Raises:
        InvalidSetupError: naming where the token came from, never its value.
    """
    where = "--token"
    if token is None:
        token, where = get_token(), "the token from HF_TOKEN or `hf auth login`"
    if token and not header_safe(token):
        raise InvalidSetupError(
            f"{where} holds non-ASCII or control characters, which no HTTP header can carry; copy the token again "
            "from https://huggingface.co/settings/tokens (it looks like hf_ followed by letters and digits)"
        )


def _resolve_hub(repo_id: str, *, revision: str | None, token: str | None, chain: _Chain) -> ResolvedModel:
    check_token(token)
    try:
        return _online(
            f"fetching config.json of '{repo_id}'",
            lambda: _resolve_hub_online(repo_id, revision=revision, token=token, chain=chain),
        )
    except HubTimeoutError as e:
        why = f"the Hub did not finish answering within {e.seconds:g} s (--timeout)"
        return _resolve_unreachable(repo_id, revision, token, why=why)


def _resolve_hub_online(repo_id: str, *, revision: str | None, token: str | None, chain: _Chain) -> ResolvedModel:
    try:
        metadata = get_hf_file_metadata(
            hf_hub_url(repo_id, CONFIG_NAME, revision=revision), token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    except hf_errors.OfflineModeIsEnabled:
        return _resolve_unreachable(repo_id, revision, token, why="offline mode is on (HF_HUB_OFFLINE=1)")
    except hf_errors.GatedRepoError as e:
        fallback = _from_catalogue(repo_id, revision, why="it is gated and no token grants access")
        if fallback is None:
            raise GatedModelError(repo_id) from e
        return fallback
    except hf_errors.RepositoryNotFoundError as e:
        raise ModelNotFoundError(repo_id) from e
    except hf_errors.RevisionNotFoundError as e:
        raise RevisionNotFoundError(repo_id, revision or "main") from e
    except hf_errors.RemoteEntryNotFoundError as e:
        return _resolve_without_config(repo_id, revision, token, e, chain=chain)
    except hf_errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status is not None and status >= 500:
            return _resolve_unreachable(repo_id, revision, token, why=f"the Hub answered HTTP {status}")
        raise HubError(f"the Hub refused config.json of '{repo_id}' (HTTP {status}); retry, or pass --token") from e
    except hf_errors.HTTPError as e:  # connection refused, DNS failure, timeout: no answer at all
        return _resolve_unreachable(repo_id, revision, token, why=f"the Hub is unreachable ({type(e).__name__})")

    reported_bytes = getattr(metadata, "size", None)  # HfFileMetadata.size: the size the Hub reports, before a GET
    if isinstance(reported_bytes, int) and reported_bytes > MAX_CONFIG_BYTES:
        raise ConfigTooLargeError(f"config.json of '{repo_id}'", reported_bytes, MAX_CONFIG_BYTES)
    try:
        # Download by the name the user gave (not the sha) so the cache records that ref for later offline runs.
        with _body_limit(MAX_CONFIG_BYTES, f"config.json of '{repo_id}'"):
            config_file = Path(_download(repo_id, CONFIG_NAME, revision, token))
    except (hf_errors.HTTPError, hf_errors.LocalEntryNotFoundError) as e:  # the connection dropped after the HEAD
        return _resolve_unreachable(
            repo_id, revision, token, why=f"downloading config.json failed ({type(e).__name__})"
        )
    return ResolvedModel(
        repo_id,
        "hub",
        load_config_file(config_file),
        revision=_snapshot_sha(config_file) or metadata.commit_hash,
        directory=config_file.parent,
    )


def _resolve_unreachable(repo_id: str, revision: str | None, token: str | None, *, why: str) -> ResolvedModel:
    """The Hub gave no answer: use the HF cache, then the catalogue."""
    try:
        cached = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, token=token, local_files_only=True))
    except hf_errors.LocalEntryNotFoundError:
        fallback = _from_catalogue(repo_id, revision, why=why)
        if fallback is None:
            raise OfflineError(repo_id, why) from None
        return fallback
    return ResolvedModel(
        repo_id,
        "hub",
        load_config_file(cached),
        revision=_snapshot_sha(cached),
        directory=cached.parent,
        notes=(f"{why}: using config.json of '{repo_id}' from the Hugging Face cache",),
    )


def _snapshot_sha(cached_file: Path) -> str | None:
    """The commit sha of a file in the HF cache: it lives at ``…/snapshots/<sha>/config.json``."""
    return cached_file.parent.name if cached_file.parent.parent.name == "snapshots" else None


def _from_catalogue(repo_id: str, revision: str | None, *, why: str) -> ResolvedModel | None:
    match = catalogue.find(repo_id)
    if match is None:
        return None
    entry, via_alias = match
    what = f"the bundled catalogue snapshot of '{entry.model_id}'"
    if via_alias:
        what += " (same architecture)"
    note = f"'{repo_id}': {why}; using {what}"
    if revision not in (None, "main"):
        note += f" (it may differ from revision '{revision}')"
    return ResolvedModel(repo_id, "catalogue", entry.load_config(), directory=entry.directory, notes=(note,))


def _resolve_without_config(
    repo_id: str, revision: str | None, token: str | None, error: Exception, *, chain: _Chain
) -> ResolvedModel:
    """The repo exists but has no top-level config.json: a PEFT adapter, or some other layout to describe."""
    try:
        files = _list_files(repo_id, revision, token)
    except (hf_errors.HTTPError, hf_errors.OfflineModeIsEnabled) as e:
        raise NoConfigError(repo_id, "the Hub has no config.json for it and its file list could not be read") from e
    if ADAPTER_CONFIG_NAME in files:
        try:
            with _body_limit(MAX_CONFIG_BYTES, f"adapter_config.json of '{repo_id}'"):
                adapter_file = Path(_download(repo_id, ADAPTER_CONFIG_NAME, revision, token))
        except (hf_errors.HTTPError, hf_errors.LocalEntryNotFoundError) as e:
            raise HubError(
                f"'{repo_id}' is a PEFT adapter but its adapter_config.json could not be downloaded "
                f"({type(e).__name__}); retry, or pass its base model id"
            ) from e
        origin = f"{repo_id} {ADAPTER_CONFIG_NAME}"
        return _resolve_adapter(repo_id, load_config_file(adapter_file), origin, token=token, chain=chain)
    raise NoConfigError(repo_id, describe_layout(files)) from error


def fetch_checkpoint(model: ResolvedModel, *, token: str | None = None) -> tuple[CheckpointSummary | None, str | None]:
    """The tensors the model's safetensors checkpoint stores, read from the file headers only.

    A Hub model is read at the commit its config came from with `huggingface_hub.get_safetensors_metadata` (ranged
    GETs of each file's first 100 kB, never the weights); a local folder's ``*.safetensors`` headers are read from
    disk (the 8-byte length and the JSON header, no tensor data). Nothing here raises for a checkpoint that cannot be
    read: the cross-check is optional, so it is skipped with a one-line note saying why.

    Args:
        model: the resolved model (see `resolve_model`).
        token: a Hub token; ``None`` lets huggingface_hub use ``HF_TOKEN`` or the saved login. Never logged.

    Returns:
        ``(summary, None)``, or ``(None, note)`` when skipped: a catalogue or ``--params`` model, offline mode, an
        unreachable Hub, a repo without safetensors files, a gated repo without access.

    Example:
        >>> summary, note = fetch_checkpoint(resolve_model("openai-community/gpt2"))  # doctest: +SKIP
        >>> summary.params_by_dtype  # doctest: +SKIP
        {'F32': 137022720}
    """
    skipped = "checkpoint cross-check skipped"
    if model.source == "hub":
        return _hub_checkpoint(model, token=token, skipped=skipped)
    if model.source == "local" and model.directory is not None:
        return _local_checkpoint(model.directory, skipped=skipped)
    if model.source == "catalogue":
        return None, f"{skipped}: the config is hfmem's bundled snapshot, not a checkpoint it can read"
    return None, f"{skipped}: there is no checkpoint for a --params plan"


def _hub_checkpoint(
    model: ResolvedModel, *, token: str | None, skipped: str
) -> tuple[CheckpointSummary | None, str | None]:
    repo_id = model.model_id
    if constants.HF_HUB_OFFLINE:
        return None, f"{skipped}: offline mode is on (HF_HUB_OFFLINE=1)"
    check_token(token)

    def read_headers() -> Any:
        # The per-shard progress bar would land on stderr; HF_HUB_DISABLE_PROGRESS_BARS=0 keeps it (and a warning).
        quiet = disable_progress_bars() if constants.HF_HUB_DISABLE_PROGRESS_BARS is not False else nullcontext()
        with quiet:
            return get_safetensors_metadata(
                repo_id, revision=model.revision, token=token, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            )

    try:
        metadata = _online(f"reading the safetensors headers of '{repo_id}'", read_headers)
    except HubTimeoutError as e:
        return None, f"{skipped}: the Hub did not finish answering within {e.seconds:g} s (--timeout)"
    except HubError as e:
        return None, f"{skipped}: {_first_line(e).split(';')[0]}"
    except hf_errors.OfflineModeIsEnabled:
        return None, f"{skipped}: offline mode is on (HF_HUB_OFFLINE=1)"
    except hf_errors.NotASafetensorsRepoError:
        return None, f"{skipped}: '{repo_id}' has no safetensors weights{_other_weights(repo_id, model, token)}"
    except hf_errors.GatedRepoError:
        return None, f"{skipped}: '{repo_id}' is gated and no token grants access (pass --token or hf auth login)"
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.RemoteEntryNotFoundError):
        return None, f"{skipped}: the Hub has no safetensors index or file for '{repo_id}' at this revision"
    except hf_errors.SafetensorsParsingError as e:
        why = _without_tokens(_first_line(e), token)
        return None, f"{skipped}: a safetensors header of '{repo_id}' could not be parsed ({why})"
    except hf_errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        return None, f"{skipped}: the Hub answered HTTP {status} for the safetensors headers of '{repo_id}'"
    except (hf_errors.HTTPError, hf_errors.LocalEntryNotFoundError, OSError) as e:
        return None, f"{skipped}: the Hub is unreachable ({type(e).__name__})"
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # not the JSON the Hub answers
        why = f"the Hub's answer for the safetensors headers of '{repo_id}' is malformed ({type(e).__name__})"
        return None, f"{skipped}: {why}"
    headers = [
        (name, {"dtype": info.dtype, "shape": info.shape})
        for file_metadata in metadata.files_metadata.values()
        for name, info in file_metadata.tensors.items()
    ]
    at = f"@{model.revision}" if model.revision else ""
    files = len(metadata.files_metadata)
    return summary_from_headers(f"hub:{repo_id}{at}, {files} file{'s' if files != 1 else ''}", headers), None


def _other_weights(repo_id: str, model: ResolvedModel, token: str | None) -> str:
    """``' (only pytorch_model.bin)'`` when the repo lists other weight files; ``''`` when that cannot be told."""
    try:
        files = _online(f"listing the files of '{repo_id}'", lambda: _list_files(repo_id, model.revision, token))
    except (hf_errors.HTTPError, hf_errors.OfflineModeIsEnabled, OSError, HubError):
        return ""
    weights = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")))
    if not weights:
        return ""
    return f" (only {', '.join(weights[:3])}{', …' if len(weights) > 3 else ''})"


def _local_checkpoint(directory: Path, *, skipped: str) -> tuple[CheckpointSummary | None, str | None]:
    single = directory / constants.SAFETENSORS_SINGLE_FILE
    index = directory / constants.SAFETENSORS_INDEX_FILE
    try:
        if single.is_file() or index.is_file():
            repo = get_local_safetensors_metadata(directory)
            files = {name: meta.tensors for name, meta in repo.files_metadata.items()}
        else:
            found = sorted(directory.glob("*.safetensors"))
            if not found:
                others = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
                what = f" (only {', '.join(others[:3])})" if others else ""
                return None, f"{skipped}: {directory} holds no *.safetensors files{what}"
            files = {p.name: get_local_safetensors_metadata(p).files_metadata[p.name].tensors for p in found}
    except (hf_errors.SafetensorsParsingError, hf_errors.NotASafetensorsRepoError, OSError, ValueError) as e:
        return None, f"{skipped}: the safetensors headers in {directory} could not be read ({_first_line(e)})"
    headers = [
        (name, {"dtype": info.dtype, "shape": info.shape})
        for tensors in files.values()
        for name, info in tensors.items()
    ]
    count = len(files)
    return summary_from_headers(f"{directory}, {count} file{'s' if count != 1 else ''}", headers), None


def _without_tokens(text: str, token: str | None) -> str:
    """Text from the Hub or its client, with the token cut out (``token``, or HF_TOKEN / the saved login)."""
    for secret in {token, get_token()}:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "<token>")
    return text


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
