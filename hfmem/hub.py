"""MODEL → ModelConfig: a Hub repo id, a local folder or config.json, a PEFT adapter, or the bundled catalogue.

This is the only module that talks to the network, and it does so only through huggingface_hub, so the HF cache,
``HF_TOKEN`` / a saved login / ``--token``, ``HF_ENDPOINT`` mirrors and ``HF_HUB_OFFLINE`` behave as they do for
every other Hugging Face tool. huggingface_hub's errors become hfmem errors here and nowhere else.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_hf_file_metadata, get_token, hf_hub_download, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import disable_progress_bars, validate_repo_id

from hfmem import catalogue
from hfmem.errors import (
    GatedModelError,
    HubError,
    InvalidConfigError,
    InvalidModelIdError,
    InvalidSetupError,
    ModelNotFoundError,
    NoConfigError,
    OfflineError,
    RevisionNotFoundError,
)
from hfmem.memory.checkpoint import CheckpointSummary, summary_from_headers
from hfmem.types import ModelConfig

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
#     60 s and backoff: bounded, but minutes);
#   * a repo's file list: HfApi.model_info(timeout=HF_HUB_DOWNLOAD_TIMEOUT);
#   * safetensors headers: get_safetensors_metadata(timeout=HF_HUB_DOWNLOAD_TIMEOUT) (its HEADs use the etag timeout).


def resolve_model(model: str, *, revision: str | None = None, token: str | None = None) -> ModelConfig:
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
        The resolved `ModelConfig`.

    Raises:
        InvalidModelIdError, ModelNotFoundError, RevisionNotFoundError, GatedModelError, NoConfigError,
        OfflineError, HubError, InvalidConfigError.

    Example:
        >>> resolve_model("meta-llama/Llama-2-7b-hf").config["hidden_size"]  # doctest: +SKIP
        4096
    """
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # '~name' for a user who does not exist
        path = Path(model)
    if _exists(path):
        return _resolve_local(model, path, revision=revision, token=token)
    if _looks_like_path(model):
        raise InvalidModelIdError(model, "no such file or directory")
    try:
        validate_repo_id(model)
    except hf_errors.HFValidationError as e:
        reason = str(e).replace("Use `repo_type` argument if needed.", "").strip().rstrip(".")
        raise InvalidModelIdError(model, reason) from e
    return _resolve_hub(model, revision=revision, token=token)


def fetch_remote_code(model: ModelConfig, *, token: str | None = None) -> ModelConfig:
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
    try:
        names = [name for name in _list_files(repo_id, revision, token) if fnmatch(name, "*.py")]
        # One file at a time with bounded timeouts (snapshot_download lists the repo without a timeout); they land in
        # the snapshot folder of `revision`, config.json last so its folder is that snapshot's root.
        paths = [_download(repo_id, name, revision, token) for name in [*names, CONFIG_NAME]]
        snapshot = str(Path(paths[-1]).parent)
    except hf_errors.HfHubHTTPError as e:
        raise HubError(f"downloading the custom code of '{repo_id}' failed ({type(e).__name__}); retry") from e
    except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError, hf_errors.HTTPError):
        try:  # offline or no answer: the HF cache may hold the code from an earlier run (no network here)
            snapshot = snapshot_download(
                repo_id, revision=revision, token=token, allow_patterns=code_patterns, local_files_only=True
            )
        except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
            raise OfflineError(repo_id, "its custom code files cannot be downloaded") from e
    return ModelConfig(
        model.model_id, model.source, model.config, revision=model.revision, directory=Path(snapshot), notes=model.notes
    )


def _list_files(repo_id: str, revision: str | None, token: str | None) -> list[str]:
    """Every file of a Hub repo, from its model info (``list_repo_files`` takes no timeout, and its client has none).

    Raises:
        huggingface_hub's HTTP errors, ``httpx`` timeouts (after ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds).
    """
    info = HfApi().model_info(repo_id, revision=revision, token=token, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT)
    return [sibling.rfilename for sibling in info.siblings or []]


def _download(repo_id: str, filename: str, revision: str | None, token: str | None) -> str:
    """``hf_hub_download`` with an explicit, bounded HEAD timeout (see the note on timeouts above)."""
    return hf_hub_download(
        repo_id, filename, revision=revision, token=token, etag_timeout=constants.HF_HUB_ETAG_TIMEOUT
    )


def load_config_file(path: Path) -> dict[str, Any]:
    """Parse a config.json, refusing anything that is not a JSON object with a ``model_type``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidConfigError(f"cannot read {path} ({e.__class__.__name__}: {e}); check the file") from e
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidConfigError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "fix the file or download it again"
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


def _resolve_local(model: str, path: Path, *, revision: str | None, token: str | None) -> ModelConfig:
    if path.is_file():
        if path.name == ADAPTER_CONFIG_NAME:
            return _resolve_adapter(model, load_config_file(path), revision=revision, token=token)
        return ModelConfig(model, "local", load_config_file(path), directory=path.parent)
    config_path = path / CONFIG_NAME
    if config_path.is_file():
        return ModelConfig(model, "local", load_config_file(config_path), directory=path)
    adapter_path = path / ADAPTER_CONFIG_NAME
    if adapter_path.is_file():
        return _resolve_adapter(model, load_config_file(adapter_path), revision=revision, token=token)
    files = [str(p.relative_to(path)) for p in sorted(path.rglob("*")) if p.is_file()][:200]
    raise NoConfigError(model, describe_layout(files))


def _resolve_adapter(model: str, adapter: dict[str, Any], *, revision: str | None, token: str | None) -> ModelConfig:
    base = adapter.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise InvalidConfigError(
            f"'{model}' is a PEFT adapter whose adapter_config.json names no base_model_name_or_path; "
            "pass the base model instead"
        )
    resolved = resolve_model(base, token=token)
    kind = adapter.get("peft_type", "PEFT")
    note = f"'{model}' is a {kind} adapter (adapter_config.json): planning for its base model '{base}'"
    return ModelConfig(
        resolved.model_id,
        resolved.source,
        resolved.config,
        revision=resolved.revision,
        directory=resolved.directory,
        notes=(note, *resolved.notes),
    )


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
    if token and not (token.isascii() and token.isprintable()):
        raise InvalidSetupError(
            f"{where} holds non-ASCII or control characters, which no HTTP header can carry; copy the token again "
            "from https://huggingface.co/settings/tokens (it looks like hf_ followed by letters and digits)"
        )


def _resolve_hub(repo_id: str, *, revision: str | None, token: str | None) -> ModelConfig:
    check_token(token)
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
        return _resolve_without_config(repo_id, revision, token, e)
    except hf_errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status is not None and status >= 500:
            return _resolve_unreachable(repo_id, revision, token, why=f"the Hub answered HTTP {status}")
        raise HubError(f"the Hub refused config.json of '{repo_id}' (HTTP {status}); retry, or pass --token") from e
    except hf_errors.HTTPError as e:  # connection refused, DNS failure, timeout: no answer at all
        return _resolve_unreachable(repo_id, revision, token, why=f"the Hub is unreachable ({type(e).__name__})")

    try:
        # Download by the name the user gave (not the sha) so the cache records that ref for later offline runs.
        config_file = Path(_download(repo_id, CONFIG_NAME, revision, token))
    except (hf_errors.HTTPError, hf_errors.LocalEntryNotFoundError) as e:  # the connection dropped after the HEAD
        return _resolve_unreachable(
            repo_id, revision, token, why=f"downloading config.json failed ({type(e).__name__})"
        )
    return ModelConfig(
        repo_id,
        "hub",
        load_config_file(config_file),
        revision=_snapshot_sha(config_file) or metadata.commit_hash,
        directory=config_file.parent,
    )


def _resolve_unreachable(repo_id: str, revision: str | None, token: str | None, *, why: str) -> ModelConfig:
    """The Hub gave no answer: use the HF cache, then the catalogue."""
    try:
        cached = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, token=token, local_files_only=True))
    except hf_errors.LocalEntryNotFoundError:
        fallback = _from_catalogue(repo_id, revision, why=why)
        if fallback is None:
            raise OfflineError(repo_id, why) from None
        return fallback
    return ModelConfig(
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


def _from_catalogue(repo_id: str, revision: str | None, *, why: str) -> ModelConfig | None:
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
    return ModelConfig(repo_id, "catalogue", entry.load_config(), directory=entry.directory, notes=(note,))


def _resolve_without_config(repo_id: str, revision: str | None, token: str | None, error: Exception) -> ModelConfig:
    """The repo exists but has no top-level config.json: a PEFT adapter, or some other layout to describe."""
    try:
        files = _list_files(repo_id, revision, token)
    except (hf_errors.HTTPError, hf_errors.OfflineModeIsEnabled) as e:
        raise NoConfigError(repo_id, "the Hub has no config.json for it and its file list could not be read") from e
    if ADAPTER_CONFIG_NAME in files:
        try:
            adapter_file = Path(_download(repo_id, ADAPTER_CONFIG_NAME, revision, token))
        except (hf_errors.HTTPError, hf_errors.LocalEntryNotFoundError) as e:
            raise HubError(
                f"'{repo_id}' is a PEFT adapter but its adapter_config.json could not be downloaded "
                f"({type(e).__name__}); retry, or pass its base model id"
            ) from e
        return _resolve_adapter(repo_id, load_config_file(adapter_file), revision=revision, token=token)
    raise NoConfigError(repo_id, describe_layout(files)) from error


def fetch_checkpoint(model: ModelConfig, *, token: str | None = None) -> tuple[CheckpointSummary | None, str | None]:
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
    model: ModelConfig, *, token: str | None, skipped: str
) -> tuple[CheckpointSummary | None, str | None]:
    repo_id = model.model_id
    if constants.HF_HUB_OFFLINE:
        return None, f"{skipped}: offline mode is on (HF_HUB_OFFLINE=1)"
    check_token(token)
    try:
        # The per-shard progress bar would land on stderr; HF_HUB_DISABLE_PROGRESS_BARS=0 keeps it (and a warning).
        quiet = disable_progress_bars() if constants.HF_HUB_DISABLE_PROGRESS_BARS is not False else nullcontext()
        with quiet:
            metadata = get_safetensors_metadata(
                repo_id, revision=model.revision, token=token, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            )
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
    headers = [
        (name, {"dtype": info.dtype, "shape": info.shape})
        for file_metadata in metadata.files_metadata.values()
        for name, info in file_metadata.tensors.items()
    ]
    at = f"@{model.revision}" if model.revision else ""
    files = len(metadata.files_metadata)
    return summary_from_headers(f"hub:{repo_id}{at}, {files} file{'s' if files != 1 else ''}", headers), None


def _other_weights(repo_id: str, model: ModelConfig, token: str | None) -> str:
    """``' (only pytorch_model.bin)'`` when the repo lists other weight files; ``''`` when that cannot be told."""
    try:
        files = _list_files(repo_id, model.revision, token)
    except (hf_errors.HTTPError, hf_errors.OfflineModeIsEnabled, OSError):
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
