"""The hfmem exception hierarchy: one class per cause, each with the fix in its message and an exit code.

Nothing here imports click, torch or huggingface_hub. Errors from those libraries are translated into these
classes in exactly one place each (`hub.py` for the Hub, `hfmem/build/` for transformers), with ``raise … from``.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ExitCode",
    "HfmemError",
    "InvalidModelIdError",
    "ModelNotFoundError",
    "RevisionNotFoundError",
    "GatedModelError",
    "NoConfigError",
    "OfflineError",
    "HubError",
    "InvalidConfigError",
    "UnsupportedArchitectureError",
    "RemoteCodeRequiredError",
    "NoKvCacheError",
    "InvalidSetupError",
    "EnvironmentVariableError",
    "AdapterCycleError",
    "ConfigTooLargeError",
    "HubTimeoutError",
    "NotMeasuredError",
    "LaunchConfigError",
    "CacheFolderError",
    "UnknownDtypeError",
    "WebExtraMissingError",
    "WebPortError",
]


class ExitCode(IntEnum):
    """Process exit codes, documented in the README and docs/errors.md."""

    OK = 0
    INTERNAL = 1  # a bug in hfmem: rerun with --debug and report it
    USAGE = 2  # bad command-line option or argument (click's own convention)
    DOES_NOT_FIT = 3  # reserved for `--check` (the plan does not fit the GPU)
    MODEL_UNAVAILABLE = 4  # the Hub or the disk could not give us a config.json
    CONFIG = 5  # a config.json was found but cannot be turned into a model
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + signal 2, the shells' convention
    OUTPUT_CLOSED = 141  # the reader of stdout went away (SIGPIPE): 128 + signal 13


class HfmemError(Exception):
    """Base class. ``str(err)`` is a one-line message naming the cause and the fix."""

    exit_code: ExitCode = ExitCode.INTERNAL


class InvalidModelIdError(HfmemError, ValueError):
    """MODEL is neither an existing path nor a valid Hub repo id."""

    exit_code = ExitCode.USAGE

    def __init__(self, model_id: str, reason: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"'{model_id}' is not a local path and not a valid Hub repo id ({reason}); "
            "pass an id like 'meta-llama/Llama-2-7b-hf', a folder holding config.json, or a config.json path"
        )


class ModelNotFoundError(HfmemError):
    exit_code = ExitCode.MODEL_UNAVAILABLE

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"repository '{model_id}' was not found on the Hub (or it is private); check the spelling, "
            "and for a private repo log in with `hf auth login` or pass --token"
        )


class RevisionNotFoundError(HfmemError):
    exit_code = ExitCode.MODEL_UNAVAILABLE

    def __init__(self, model_id: str, revision: str) -> None:
        self.model_id = model_id
        self.revision = revision
        super().__init__(
            f"revision '{revision}' does not exist in '{model_id}'; pass a branch, tag or commit sha "
            "that exists, or drop --revision to use main"
        )


class GatedModelError(HfmemError):
    exit_code = ExitCode.MODEL_UNAVAILABLE

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"'{model_id}' is gated and no token grants access, and it is not in the bundled catalogue; "
            f"accept its licence at https://huggingface.co/{model_id}, then run `hf auth login` "
            "(or set HF_TOKEN, or pass --token)"
        )


class NoConfigError(HfmemError):
    """The repo (or folder) exists but holds no transformers config.json."""

    exit_code = ExitCode.MODEL_UNAVAILABLE

    def __init__(self, model_id: str, found: str) -> None:
        self.model_id = model_id
        self.found = found
        super().__init__(f"'{model_id}' has no config.json: {found}")


class OfflineError(HfmemError):
    exit_code = ExitCode.MODEL_UNAVAILABLE

    def __init__(self, model_id: str, why: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"cannot fetch config.json of '{model_id}': {why}, it is not in the Hugging Face cache and not in the "
            "bundled catalogue (`hfmem --list-catalogue`); connect and retry, or pass a local folder holding its "
            "config.json, or plan with --params"
        )


class HubError(HfmemError):
    """Any other Hub failure (server error, unexpected HTTP status)."""

    exit_code = ExitCode.MODEL_UNAVAILABLE


class InvalidConfigError(HfmemError):
    """config.json exists but is not a usable transformers config (bad JSON, missing keys, bad values)."""

    exit_code = ExitCode.CONFIG


class UnsupportedArchitectureError(HfmemError):
    exit_code = ExitCode.CONFIG


class NoKvCacheError(UnsupportedArchitectureError):
    """The model keeps no KV cache (``use_cache=True`` returns none): an encoder-only model (BERT, RoBERTa,
    DeBERTa…) reads its whole input in one forward and generates nothing, so hfmem's serving plan (weights + the KV
    cache of generation) does not apply. The default plan skips serving with a note (``reason``); asked for alone
    (``--inference-only``) it is a usage error."""

    exit_code = ExitCode.USAGE

    def __init__(self, architecture: str) -> None:
        self.architecture = architecture
        self.reason = (
            f"{architecture} keeps no KV cache (use_cache=True returns none: an encoder-only model reads its whole "
            "input in one forward and generates nothing), so there is no serving plan"
        )
        super().__init__(f"{self.reason}; drop --inference-only to plan its training")


class RemoteCodeRequiredError(HfmemError):
    exit_code = ExitCode.CONFIG

    def __init__(self, model_id: str, what: str) -> None:
        self.model_id = model_id
        super().__init__(
            f"'{model_id}' needs custom code from its repo ({what}); read that code, then rerun with "
            "--trust-remote-code to let hfmem run it, or point model_type and architectures at a transformers model"
        )


class InvalidSetupError(HfmemError, ValueError):
    """A combination of training options that cannot exist (e.g. CPU offload with ZeRO-0)."""

    exit_code = ExitCode.USAGE


class EnvironmentVariableError(HfmemError, ValueError):
    """A documented environment variable holds a value that cannot work (checked before anything reads it)."""

    exit_code = ExitCode.USAGE

    def __init__(self, name: str, value: str | None, problem: str) -> None:
        """``value`` None: a secret (a token), never shown."""
        self.name = name
        shown = "" if value is None else "=" + repr(value if len(value) <= 80 else value[:80] + "…")
        super().__init__(f"environment variable {name}{shown} {problem}")


class AdapterCycleError(InvalidConfigError):
    """PEFT adapters whose base_model_name_or_path lead back to one of them (or a chain too long to be real)."""

    def __init__(self, chain: tuple[str, ...], *, too_long: bool = False) -> None:
        self.chain = chain
        path = " → ".join(chain)
        problem = f"adapter chain longer than {len(chain) - 1}: {path}" if too_long else f"adapter cycle: {path}"
        super().__init__(
            f"{problem}; point base_model_name_or_path in adapter_config.json at a base model (a folder with "
            "config.json or a Hub id), or pass that base model instead"
        )


class ConfigTooLargeError(InvalidConfigError):
    """A config.json / adapter_config.json larger than hfmem reads (`hfmem.limits.MAX_CONFIG_BYTES`)."""

    def __init__(self, where: str, size_bytes: int | None, limit_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        size = f"is {size_bytes:,} bytes, more" if size_bytes is not None else "is larger"
        super().__init__(
            f"{where} {size} than the {limit_bytes // 2**20} MiB hfmem reads (real configs are a few KB, "
            "a few MB with tens of thousands of labels); it is no config file: fix or replace it"
        )


class HubTimeoutError(HubError):
    """A network operation did not finish within the deadline (``--timeout``)."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self.seconds = seconds
        super().__init__(
            f"{what}: the Hub did not finish answering within {seconds:g} s; retry, raise --timeout, or set "
            "HF_HUB_OFFLINE=1 to use the Hugging Face cache"
        )


class NotMeasuredError(HfmemError):
    """``--check`` asked for a verdict that needs a number hfmem could not measure (the model was built and counted,
    but not traced); without ``--check`` the report says what is missing and exits 0."""

    exit_code = ExitCode.CONFIG

    def __init__(self, model_id: str, what: str, reason: str) -> None:
        self.model_id = model_id
        self.reason = reason
        super().__init__(
            f"--check cannot give a verdict for '{model_id}': its {what} could not be measured ({reason.rstrip('.')}); "
            "drop --check to see the exact parameters and model states"
        )


class LaunchConfigError(HfmemError, ValueError):
    """A ``--launch-config`` file that cannot be read, parsed or recognised, or two files that disagree."""

    exit_code = ExitCode.USAGE

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"--launch-config {path}: {problem}")


class CacheFolderError(HfmemError):
    """``HFMEM_CACHE`` cannot name a folder, or ``--clear-cache`` was pointed at a folder that is not hfmem's cache.

    Attributes:
        folder: the folder (or the value of ``HFMEM_CACHE``) at fault.
    """

    exit_code = ExitCode.USAGE

    def __init__(self, folder: str, message: str) -> None:
        self.folder = folder
        super().__init__(message)


class UnknownDtypeError(HfmemError, ValueError):
    """A dtype name that no `hfmem.dtypes.Dtype` has (`hfmem.dtypes.parse_dtype`).

    Attributes:
        name: the name given.
    """

    exit_code = ExitCode.USAGE

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        shown = name if len(name) <= 80 else name[:80] + "…"
        super().__init__(
            f"unknown dtype {shown!r}; use one of {', '.join(known)} (or a torch name like 'bfloat16', "
            "'torch.bfloat16', or a safetensors name like 'BF16')"
        )


class WebExtraMissingError(HfmemError, ImportError):
    """``hfmem web`` without Gradio, which the optional ``web`` extra installs."""

    exit_code = ExitCode.USAGE

    def __init__(self) -> None:
        super().__init__("hfmem web needs Gradio, which is not installed; install it with: pip install 'hfmem[web]'")


class WebPortError(HfmemError, OSError):
    """``hfmem web`` found no port to listen on: the one asked for is taken, or none is free in Gradio's range.

    Attributes:
        port: the port asked for (None: any free one).
    """

    exit_code = ExitCode.USAGE

    def __init__(self, port: int | None, reason: str) -> None:
        self.port = port
        where = f"port {port} on 127.0.0.1 is not free" if port else "no free port on 127.0.0.1 from 7860 up"
        fix = "pass another --port, or none for a free one" if port else "pass a free one with --port"
        super().__init__(f"{where} ({reason}); {fix}")
