"""The environment variables hfmem documents, checked before huggingface_hub reads them.

huggingface_hub parses some of them when it is imported (``int(os.environ["HF_HUB_ETAG_TIMEOUT"])`` in
``huggingface_hub/constants.py``), so a bad value would fail inside an import with a traceback. `check_environment`
runs first and names the variable, its value (escaped; never a token's) and the fix in one line. Standard library only:
nothing here imports huggingface_hub, torch or click.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from hfmem.errors import EnvironmentVariableError
from hfmem.limits import MAX_TIMEOUT_SECONDS

__all__ = ["check_environment", "prepare_cli_environment", "switched_on", "header_safe", "TIMEOUT_VARIABLES"]

#: huggingface_hub's per-request timeouts (seconds, whole numbers: huggingface_hub/constants.py reads them with int()).
#: At most `MAX_TIMEOUT_SECONDS` (a day): 99999999999 s overflows the C timeval a socket timeout becomes, and
#: hfmem's own --timeout deadline bounds each network operation anyway.
TIMEOUT_VARIABLES = ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")
#: On/off switches, as huggingface_hub spells "on" (constants.ENV_VARS_TRUE_VALUES) plus their usual opposites.
_ON = ("1", "on", "yes", "true")
_OFF = ("", "0", "off", "no", "false")
_SWITCHES = ("HF_HUB_OFFLINE", "HFMEM_DEBUG")
_TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a documented environment variable whose value cannot work, before anything reads it.

    Checked: ``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT`` (whole seconds, 1 to 86,400), ``HF_HOME`` /
    ``HF_HUB_CACHE`` (a folder, or a path one can be created at; not empty), ``HF_ENDPOINT`` (an http(s) URL with a
    host), ``HF_HUB_OFFLINE`` / ``HFMEM_DEBUG`` (on or off), ``HF_TOKEN`` (characters an HTTP header can carry; its
    value is never shown). ``HFMEM_CACHE`` belongs to `hfmem.cache`.

    Raises:
        EnvironmentVariableError: naming the variable, the value and the fix.

    Example:
        >>> check_environment({"HF_HUB_ETAG_TIMEOUT": "abc"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hfmem.errors.EnvironmentVariableError: HF_HUB_ETAG_TIMEOUT='abc' is not a whole number of seconds; ...
    """
    env = os.environ if environ is None else environ
    for name in TIMEOUT_VARIABLES:
        if name in env:
            _check_timeout(name, env[name])
    for name in _SWITCHES:
        value = env.get(name)
        if value is not None and value.strip().lower() not in _ON + _OFF:
            raise EnvironmentVariableError(
                name, value, f"is neither on ({', '.join(_ON)}) nor off ({', '.join(_OFF[1:])}, or empty); set one"
            )
    for name in _TOKENS:
        token = env.get(name)
        if token and not header_safe(token):
            raise EnvironmentVariableError(
                name,
                None,
                "holds non-ASCII or control characters, which no HTTP header can carry; copy the token again from "
                "https://huggingface.co/settings/tokens (it looks like hf_ followed by letters and digits)",
            )
    if "HF_ENDPOINT" in env:
        _check_endpoint(env["HF_ENDPOINT"])
    for name in ("HF_HOME", "HF_HUB_CACHE"):
        if name in env:
            _check_folder(name, env[name])


def header_safe(token: str) -> bool:
    """A token an HTTP header can carry: printable ASCII (httpx raises UnicodeEncodeError, quoting the character,
    on anything else)."""
    return token.isascii() and token.isprintable()


def switched_on(value: str | None) -> bool:
    """An on/off variable's value is on (``1``, ``on``, ``yes``, ``true``, any case). Anything else is off; a value
    that is neither is refused by `check_environment`."""
    return value is not None and value.strip().lower() in _ON


def prepare_cli_environment() -> None:
    """What the ``hfmem`` process sets for itself before huggingface_hub is imported (a CLI run only).

    * ``HF_HUB_DISABLE_TELEMETRY=1``: hfmem's requests carry no usage telemetry (huggingface_hub/constants.py reads
      it at import; it also leaves the torch version out of the user agent, huggingface_hub/utils/_headers.py).
    * ``HF_HUB_DISABLE_XET=1``: every file hfmem downloads is a small JSON or Python file, so the plain HTTP download
      serves it, through the client whose deadline and size limits hfmem enforces (`hfmem.hub`); the Xet client is
      native code that would bypass both.
    * ``HF_HUB_VERBOSITY=error`` unless set: huggingface_hub's retry warnings ("Trying to resume download...") would
      add lines to hfmem's one-line errors (``HF_DEBUG=1`` still logs every request).
    """
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")


def _check_timeout(name: str, value: str) -> None:
    try:
        seconds = int(value)
    except ValueError:
        raise EnvironmentVariableError(
            name,
            value,
            f"is not a whole number of seconds; set it to one from 1 to {MAX_TIMEOUT_SECONDS:,.0f} (e.g. 10)",
        ) from None
    if not 1 <= seconds <= int(MAX_TIMEOUT_SECONDS):
        raise EnvironmentVariableError(
            name, value, f"is outside 1 to {MAX_TIMEOUT_SECONDS:,.0f} seconds; set a value in that range (e.g. 10)"
        )


def _check_endpoint(value: str) -> None:
    fix = "set it to a Hub mirror's URL such as https://hf-mirror.example.com, or unset it for https://huggingface.co"
    try:
        parts = urlsplit(value.strip())
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number or out of range, a malformed IPv6 host
        raise EnvironmentVariableError("HF_ENDPOINT", value, f"is not a valid URL; {fix}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise EnvironmentVariableError("HF_ENDPOINT", value, f"is not an http(s) URL with a host; {fix}")
    if any(ch.isspace() or not ch.isprintable() for ch in value.strip()):
        raise EnvironmentVariableError("HF_ENDPOINT", value, f"holds spaces or control characters; {fix}")


def _check_folder(name: str, value: str) -> None:
    """A folder, or a path where one can be made: nothing on the way is a file."""
    if not value.strip():
        raise EnvironmentVariableError(
            name, value, "is empty (huggingface_hub would use the current folder); set a folder or unset it"
        )
    try:
        path = Path(os.path.expandvars(value)).expanduser()
    except RuntimeError:  # '~name' for a user who does not exist
        raise EnvironmentVariableError(
            name, value, "starts with ~ of a user who does not exist; set an absolute folder path"
        ) from None
    try:
        probe = path
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        blocked = probe.exists() and not probe.is_dir()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a loop of links
        raise EnvironmentVariableError(
            name, value, f"cannot be used as a folder ({type(e).__name__}); set a folder path or unset it"
        ) from None
    if blocked:
        where = "" if probe == path else f" ({probe} is a file)"
        raise EnvironmentVariableError(name, value, f"is not a folder{where}; set a folder path or unset it")
