"""MODEL → ModelConfig: a Hub repo id, a local folder or config.json, a PEFT adapter, or the bundled catalogue.

This is the only module that talks to the network, and it does so only through huggingface_hub, so the HF cache,
``HF_TOKEN`` / a saved login / ``--token``, ``HF_ENDPOINT`` mirrors and ``HF_HUB_OFFLINE`` behave as they do for
every other Hugging Face tool. huggingface_hub's errors become hfmem errors here and nowhere else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import validate_repo_id

from hfmem import catalogue
from hfmem.errors import (
    GatedModelError,
    HubError,
    InvalidConfigError,
    InvalidModelIdError,
    ModelNotFoundError,
    NoConfigError,
    OfflineError,
    RevisionNotFoundError,
)
from hfmem.types import ModelConfig

__all__ = ["resolve_model", "fetch_remote_code", "load_config_file", "describe_layout"]

CONFIG_NAME = "config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"


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
    path = Path(model).expanduser()
    if path.exists():
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
    try:
        snapshot = snapshot_download(
            model.model_id, revision=model.revision, token=token, allow_patterns=["*.py", CONFIG_NAME]
        )
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
        raise OfflineError(model.model_id, "its custom code files cannot be downloaded") from e
    except hf_errors.HTTPError as e:
        raise HubError(f"downloading the custom code of '{model.model_id}' failed ({type(e).__name__}); retry") from e
    return ModelConfig(
        model.model_id, model.source, model.config, revision=model.revision, directory=Path(snapshot), notes=model.notes
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


def _resolve_hub(repo_id: str, *, revision: str | None, token: str | None) -> ModelConfig:
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
        config_file = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, token=token))
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
        files = HfApi().list_repo_files(repo_id, revision=revision, token=token)
    except hf_errors.HTTPError as e:
        raise NoConfigError(repo_id, "the Hub has no config.json for it and its file list could not be read") from e
    if ADAPTER_CONFIG_NAME in files:
        try:
            adapter_file = Path(hf_hub_download(repo_id, ADAPTER_CONFIG_NAME, revision=revision, token=token))
        except (hf_errors.HTTPError, hf_errors.LocalEntryNotFoundError) as e:
            raise HubError(
                f"'{repo_id}' is a PEFT adapter but its adapter_config.json could not be downloaded "
                f"({type(e).__name__}); retry, or pass its base model id"
            ) from e
        return _resolve_adapter(repo_id, load_config_file(adapter_file), revision=revision, token=token)
    raise NoConfigError(repo_id, describe_layout(files)) from error
