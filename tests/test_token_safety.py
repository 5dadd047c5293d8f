"""A Hub token never shows: not on stdout, stderr or in --json, not in log records, not in --debug tracebacks.

The fake Hub here is the worst case: every error it raises quotes the token (a real server does not, but an HTTP
client or a proxy might). The token reaches hfmem by --token or by HF_TOKEN, and each Hub path is driven: gated,
403, 404, 5xx, no answer, no config.json, a gated repo the catalogue covers, success with a safetensors header that
cannot be parsed, and a bug (an unexpected exception). tests/test_timeouts.py drives huggingface_hub's real HTTP
client against a server on 127.0.0.1 with HF_DEBUG=1.
"""

from __future__ import annotations

import logging
import random
import string
from pathlib import Path

import httpx2
import pytest
from click.testing import CliRunner
from huggingface_hub import errors as hf_errors

from hfmem import hub
from hfmem.cli import cli
from tests.conftest import TINY_LLAMA
from tests.test_hub import FakeHub, http_error

#: A fake token shaped like a real one: hf_ and 34 letters.
TOKEN = "hf_" + "".join(random.Random(6).choices(string.ascii_letters, k=34))

#: (model, exit code): the codes of the README's table (0 ok, 1 bug, 4 model unavailable).
CASES = [
    ("org/gated", 4),
    ("org/forbidden", 4),
    ("org/private", 4),
    ("org/broken", 4),
    ("org/down", 4),
    ("org/odd", 4),
    ("meta-llama/Llama-2-7b-hf", 0),  # gated, answered from the bundled catalogue
    ("org/tiny", 0),
    ("org/crash", 1),
]
LOGGERS = ("", "hfmem", "huggingface_hub", "httpx2", "transformers")


class LeakyHub(FakeHub):
    """A fake Hub whose every error message quotes the token."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        leak = f"token={TOKEN}"
        self.metadata_errors.update(
            {
                "org/gated": http_error(hf_errors.GatedRepoError, 401, f"gated, {leak}"),
                "org/forbidden": http_error(hf_errors.HfHubHTTPError, 403, f"forbidden, {leak}"),
                "org/private": http_error(hf_errors.RepositoryNotFoundError, 404, f"not found, {leak}"),
                "org/broken": http_error(hf_errors.HfHubHTTPError, 500, f"server error, {leak}"),
                "org/down": httpx2.ConnectError(f"refused, {leak}"),
                "org/odd": http_error(hf_errors.RemoteEntryNotFoundError, 404, f"no config, {leak}"),
                "meta-llama/Llama-2-7b-hf": http_error(hf_errors.GatedRepoError, 401, f"gated, {leak}"),
                "org/crash": RuntimeError(f"a bug, {leak}"),
            }
        )
        self.listing["org/odd"] = http_error(hf_errors.HfHubHTTPError, 500, f"listing failed, {leak}")
        self.remote[("org/tiny", "config.json")] = TINY_LLAMA

    def get_safetensors_metadata(self, repo_id: str, **kwargs: object) -> object:
        self.metadata_calls.append({"safetensors": repo_id, **kwargs})
        raise hf_errors.SafetensorsParsingError(f"bad header, token={TOKEN}")


@pytest.fixture
def leaky(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub_online: None) -> LeakyHub:
    fake = LeakyHub(tmp_path)
    return fake.install(monkeypatch)


@pytest.mark.parametrize("via", ["--token", "HF_TOKEN"])
@pytest.mark.parametrize(
    "extra", [(), ("--json",), ("--debug",), ("--json", "--debug")], ids=["", "json", "debug", "both"]
)
@pytest.mark.parametrize(("model", "code"), CASES, ids=[m for m, _ in CASES])
def test_the_token_never_shows(
    leaky: LeakyHub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    model: str,
    code: int,
    via: str,
    extra: tuple[str, ...],
) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    args = [model, "--training-only", "--zero", "3", "--seq-len", "8", *extra]
    if model == "org/tiny":
        args.remove("--training-only")  # serving runs the checkpoint cross-check, whose note quotes the error
        args += ["--context", "8"]
    if via == "--token":
        args += ["--token", TOKEN]
    else:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    # As users run it: a bug becomes the one-line "internal error" (and its traceback under --debug), not a re-raise.
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, (result.stdout[-500:], result.stderr[-2000:])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert TOKEN not in result.stdout
    assert TOKEN not in result.stderr
    assert TOKEN not in caplog.text
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]
    if "--debug" in extra and code != 0:
        assert "Traceback" in result.stderr  # the traceback is there, and its quotes of the token are cut out
        if model in ("org/gated", "org/forbidden", "org/private", "org/crash"):  # the Hub's error is in the chain
            assert "token=<token>" in result.stderr
    if via == "--token":  # the token did reach the Hub calls
        assert {call.get("token") for call in leaky.metadata_calls if "url" in call} == {TOKEN}


def test_a_checkpoint_note_never_quotes_the_token(hub_online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def parsing_error(*args: object, **kwargs: object) -> object:
        raise hf_errors.SafetensorsParsingError(f"bad header for {TOKEN}")

    monkeypatch.setattr(hub, "get_safetensors_metadata", parsing_error)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    _, note = hub.fetch_checkpoint(hub.ResolvedModel("org/tiny", "hub", TINY_LLAMA))
    assert note is not None and TOKEN not in note and "<token>" in note
