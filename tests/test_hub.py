"""`hfmem.hub.resolve_model` and the CLI's Hub error paths, with huggingface_hub's own exceptions.

The seam is the three names hub.py imports from huggingface_hub (`get_hf_file_metadata`, `hf_hub_download`,
`HfApi`); `FakeHub` replaces them and records every call. Sockets are blocked by conftest, so a path that escaped the
fakes would fail loudly. Tests marked "real offline" patch nothing and rely on HF_HUB_OFFLINE=1 from pytest-env.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner, Result
from huggingface_hub import constants
from huggingface_hub import errors as hf_errors

from hfmem import catalogue, hub
from hfmem.cli import cli
from hfmem.errors import (
    ExitCode,
    GatedModelError,
    HubError,
    InvalidModelIdError,
    ModelNotFoundError,
    NoConfigError,
    OfflineError,
    RevisionNotFoundError,
)
from hfmem.types import FinetuneSettings
from tests.conftest import TINY_LLAMA, TINY_LLAMA_PARAMS

SHA = "a" * 40
CACHED_SHA = "c" * 40
TOKEN = "hf_SECRET123"
LLAMA2 = "meta-llama/Llama-2-7b-hf"
# Exact count of Llama-2-7b: keras-team/keras-hub preset 'llama2_7b_en' and GGUF general.parameter_count
# (also recorded in hfmem/catalogue/meta-llama__Llama-2-7b-hf/expected.json).
LLAMA2_PARAMS = 6738415616


def http_error(cls: type[hf_errors.HfHubHTTPError], status: int, message: str = "boom") -> hf_errors.HfHubHTTPError:
    request = httpx2.Request("HEAD", "https://huggingface.co/x/y/resolve/main/config.json")
    return cls(message, response=httpx2.Response(status, request=request))


class FakeHub:
    """Stands in for huggingface_hub's network functions; records calls; never touches a socket."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "fakehub"
        self.metadata_errors: dict[str, Exception] = {}  # repo id -> exception from get_hf_file_metadata
        self.remote: dict[tuple[str, str], dict[str, Any]] = {}  # (repo id, filename) -> JSON served
        self.cached: dict[str, dict[str, Any]] = {}  # repo id -> config.json in the (fake) HF cache
        self.listing: dict[str, list[str] | Exception] = {}
        self.metadata_calls: list[dict[str, Any]] = []
        self.download_calls: list[dict[str, Any]] = []
        self.list_calls: list[dict[str, Any]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        monkeypatch.setattr(hub, "get_hf_file_metadata", self.get_hf_file_metadata)
        monkeypatch.setattr(hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(hub, "HfApi", lambda: self)
        monkeypatch.setattr(hub, "get_safetensors_metadata", self.get_safetensors_metadata)
        return self

    def get_safetensors_metadata(self, repo_id: str, *, token: Any = None, **kwargs: Any) -> Any:
        # The checkpoint cross-check's header read: these fake repos hold no safetensors files.
        self.metadata_calls.append({"safetensors": repo_id, "token": token, **kwargs})
        raise hf_errors.NotASafetensorsRepoError(f"{repo_id} has no model.safetensors")

    def get_hf_file_metadata(self, url: str, token: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        self.metadata_calls.append({"url": url, "token": token, "timeout": timeout, **kwargs})
        for repo_id, error in self.metadata_errors.items():
            if f"/{repo_id}/resolve/" in url:
                raise error
        return SimpleNamespace(commit_hash=SHA, etag="e", size=1, location=url)

    def hf_hub_download(
        self,
        repo_id: str,
        filename: str,
        *,
        revision: Any = None,
        token: Any = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> str:
        self.download_calls.append(
            {
                "repo_id": repo_id,
                "filename": filename,
                "revision": revision,
                "token": token,
                "local_files_only": local_files_only,
                **kwargs,
            }
        )
        if local_files_only:
            if repo_id not in self.cached:
                raise hf_errors.LocalEntryNotFoundError(f"{repo_id}/{filename} is not in the cache")
            folder = self.root / "cache" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / CACHED_SHA
            content = self.cached[repo_id]
        else:
            folder = self.root / "remote" / repo_id
            content = self.remote[(repo_id, filename)]
        (folder / filename).parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content)  # a str is a file's text (code)
        (folder / filename).write_text(text, encoding="utf-8")
        return str(folder / filename)

    def model_info(self, repo_id: str, *, revision: Any = None, token: Any = None, **kwargs: Any) -> Any:
        # hub.py lists a repo's files from its model info (the one listing call that takes a timeout).
        self.list_calls.append({"repo_id": repo_id, "revision": revision, "token": token, **kwargs})
        listing = self.listing.get(repo_id, ["config.json", "pytorch_model.bin"])
        if isinstance(listing, Exception):
            raise listing
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in listing])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub_online: None) -> FakeHub:
    return FakeHub(tmp_path).install(monkeypatch)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_cli_error(result: Result, code: ExitCode, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def catalogue_config(model_id: str) -> dict[str, Any]:
    match = catalogue.find(model_id)
    assert match is not None
    return match[0].load_config()


# --- 1. success ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("revision", [None, "v1"])
def test_hub_success_passes_revision_and_token(fake: FakeHub, revision: str | None) -> None:
    fake.remote[("org/tiny", "config.json")] = TINY_LLAMA
    resolved = hub.resolve_model("org/tiny", revision=revision, token=TOKEN)
    assert (resolved.source, resolved.revision, resolved.model_id) == ("hub", SHA, "org/tiny")
    assert resolved.config == TINY_LLAMA and resolved.notes == ()
    assert resolved.directory is not None and (resolved.directory / "config.json").is_file()
    [meta] = fake.metadata_calls
    assert meta["url"].endswith(f"/org/tiny/resolve/{revision or 'main'}/config.json")
    assert meta["token"] == TOKEN and meta["timeout"] == constants.HF_HUB_ETAG_TIMEOUT
    [download] = fake.download_calls
    # the download asks for the user's revision, not the sha, so the HF cache records that ref and a later
    # offline run finds the file (tests/test_hub_mirror.py checks it through the real client)
    assert download["revision"] == revision and download["token"] == TOKEN and not download["local_files_only"]


def test_hub_success_without_commit_hash_downloads_requested_revision(fake: FakeHub, monkeypatch) -> None:
    monkeypatch.setattr(hub, "get_hf_file_metadata", lambda url, **kw: SimpleNamespace(commit_hash=None))
    fake.remote[("org/tiny", "config.json")] = TINY_LLAMA
    resolved = hub.resolve_model("org/tiny", revision="v1", token=TOKEN)
    assert resolved.revision is None and resolved.source == "hub"
    assert fake.download_calls[0]["revision"] == "v1" and fake.download_calls[0]["token"] == TOKEN


def test_cli_hub_success_json(fake: FakeHub) -> None:
    fake.remote[("org/tiny", "config.json")] = TINY_LLAMA
    result = invoke("org/tiny", "--json", "--token", TOKEN)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["source"] == "hub" and doc["model"]["revision"] == SHA
    assert doc["parameters"]["total"] == TINY_LLAMA_PARAMS
    assert result.stderr == ""
    assert TOKEN not in result.stdout + result.stderr
    assert fake.metadata_calls[0]["token"] == TOKEN and fake.download_calls[0]["token"] == TOKEN


# --- 2. invalid ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("bad name!", "Repo id must use alphanumeric chars"),
        ("a/b/c", "no such file or directory"),
        ("./missing-folder", "no such file or directory"),
        ("missing/config.json", "no such file or directory"),
        ("x/y.git", "Repo_id cannot end by '.git'"),
        ("a--b/c", "Cannot have -- or .. in repo_id"),
    ],
)
def test_invalid_model_id(fake: FakeHub, model: str, reason: str) -> None:
    with pytest.raises(InvalidModelIdError) as info:
        hub.resolve_model(model)
    message = str(info.value)
    assert f"'{model}'" in message and reason in message and "meta-llama/Llama-2-7b-hf" in message
    assert info.value.model_id == model
    assert fake.metadata_calls == [] and fake.download_calls == []  # rejected before any Hub call
    assert_cli_error(invoke(model), ExitCode.USAGE, f"'{model}'", reason)


# --- 3-5, 8. Hub answers with an error ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected", "fragments"),
    [
        (
            http_error(hf_errors.RepositoryNotFoundError, 404),
            ModelNotFoundError,
            ["'org/nope'", "hf auth login", "--token"],
        ),
        (
            http_error(hf_errors.RevisionNotFoundError, 404),
            RevisionNotFoundError,
            ["'org/nope'", "'v9'", "drop --revision"],
        ),
        (
            http_error(hf_errors.GatedRepoError, 401),
            GatedModelError,
            ["'org/nope'", "https://huggingface.co/org/nope", "hf auth login", "HF_TOKEN", "--token"],
        ),
        (http_error(hf_errors.HfHubHTTPError, 403), HubError, ["'org/nope'", "HTTP 403", "--token"]),
        (http_error(hf_errors.HfHubHTTPError, 429), HubError, ["'org/nope'", "HTTP 429"]),
    ],
    ids=["repo-not-found", "revision-not-found", "gated", "http-403", "http-429"],
)
def test_hub_errors(fake: FakeHub, error: Exception, expected: type[Exception], fragments: list[str]) -> None:
    fake.metadata_errors["org/nope"] = error
    with pytest.raises(expected) as info:
        hub.resolve_model("org/nope", revision="v9", token=TOKEN)
    assert info.value.__cause__ is error
    for fragment in fragments:
        assert fragment in str(info.value)
    assert fake.download_calls == []  # no cache/catalogue fallback for a definite answer
    line = assert_cli_error(
        invoke("org/nope", "--revision", "v9", "--token", TOKEN), ExitCode.MODEL_UNAVAILABLE, *fragments
    )
    assert TOKEN not in line


def test_revision_not_found_without_revision_names_main(fake: FakeHub) -> None:
    fake.metadata_errors["org/nope"] = http_error(hf_errors.RevisionNotFoundError, 404)
    with pytest.raises(RevisionNotFoundError, match="revision 'main' does not exist in 'org/nope'"):
        hub.resolve_model("org/nope")


def test_gated_in_catalogue_falls_back(fake: FakeHub) -> None:
    fake.metadata_errors[LLAMA2] = http_error(hf_errors.GatedRepoError, 401)
    resolved = hub.resolve_model(LLAMA2, token=TOKEN)
    assert (resolved.source, resolved.model_id, resolved.revision) == ("catalogue", LLAMA2, None)
    assert resolved.config == catalogue_config(LLAMA2)
    [note] = resolved.notes
    assert "gated" in note and "catalogue" in note and LLAMA2 in note
    assert fake.download_calls == []


def test_cli_gated_not_in_catalogue(fake: FakeHub) -> None:
    fake.metadata_errors["org/gated"] = http_error(hf_errors.GatedRepoError, 403)
    assert_cli_error(invoke("org/gated"), ExitCode.MODEL_UNAVAILABLE, "'org/gated' is gated", "hf auth login")


# --- 6. no config.json at the top of the repo ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "fragments"),
    [
        (["model.Q4_K_M.gguf", "README.md"], ["GGUF", "model.Q4_K_M.gguf", "original repo"]),
        (["model_index.json", "unet/config.json"], ["diffusers", "model_index.json"]),
        (["modules.json", "0_Transformer/config.json"], ["sentence-transformers", "0_Transformer/config.json"]),
        (["unet/config.json", "README.md"], ["sub-folders", "unet/config.json"]),
        (["README.md"], ["README.md"]),
    ],
    ids=["gguf", "diffusers", "sentence-transformers", "nested", "other"],
)
def test_no_config_describes_layout(fake: FakeHub, files: list[str], fragments: list[str]) -> None:
    fake.metadata_errors["org/odd"] = http_error(hf_errors.RemoteEntryNotFoundError, 404)
    fake.listing["org/odd"] = files
    with pytest.raises(NoConfigError) as info:
        hub.resolve_model("org/odd", revision="v1", token=TOKEN)
    assert str(info.value).startswith("'org/odd' has no config.json: ")
    for fragment in fragments:
        assert fragment in str(info.value)
    assert fake.list_calls == [
        {"repo_id": "org/odd", "revision": "v1", "token": TOKEN, "timeout": constants.HF_HUB_DOWNLOAD_TIMEOUT}
    ]
    assert_cli_error(invoke("org/odd"), ExitCode.MODEL_UNAVAILABLE, "'org/odd' has no config.json", fragments[0])


def test_no_config_and_listing_fails(fake: FakeHub) -> None:
    fake.metadata_errors["org/odd"] = http_error(hf_errors.RemoteEntryNotFoundError, 404)
    fake.listing["org/odd"] = http_error(hf_errors.HfHubHTTPError, 500)
    with pytest.raises(NoConfigError, match="'org/odd' has no config.json: the Hub has no config.json"):
        hub.resolve_model("org/odd")


def test_hub_adapter_resolves_to_base(fake: FakeHub) -> None:
    fake.metadata_errors["org/lora"] = http_error(hf_errors.RemoteEntryNotFoundError, 404)
    fake.listing["org/lora"] = ["adapter_config.json", "adapter_model.safetensors"]
    fake.remote[("org/lora", "adapter_config.json")] = {"base_model_name_or_path": LLAMA2, "peft_type": "LORA"}
    fake.remote[(LLAMA2, "config.json")] = catalogue_config(LLAMA2)
    resolved = hub.resolve_model("org/lora", revision="v1", token=TOKEN)
    assert (resolved.source, resolved.model_id, resolved.revision) == ("hub", LLAMA2, SHA)
    assert resolved.config == catalogue_config(LLAMA2)
    [note] = resolved.notes
    assert "'org/lora'" in note and "adapter" in note and LLAMA2 in note
    assert resolved.adapter == FinetuneSettings("lora")  # peft's LoraConfig defaults: r 8, targets per architecture
    assert resolved.adapter_origin == "org/lora adapter_config.json"
    adapter_download, base_download = fake.download_calls
    assert (adapter_download["filename"], adapter_download["revision"]) == ("adapter_config.json", "v1")
    assert (base_download["repo_id"], base_download["filename"]) == (LLAMA2, "config.json")
    assert all(call["token"] == TOKEN for call in fake.download_calls + fake.metadata_calls)
    # the adapter's revision is not applied to the base repo
    assert fake.metadata_calls[1]["url"].endswith(f"/{LLAMA2}/resolve/main/config.json")


def test_hub_adapter_with_gated_base_uses_catalogue(fake: FakeHub) -> None:
    fake.metadata_errors["org/lora"] = http_error(hf_errors.RemoteEntryNotFoundError, 404)
    fake.metadata_errors[LLAMA2] = http_error(hf_errors.GatedRepoError, 401)
    fake.listing["org/lora"] = ["adapter_config.json"]
    fake.remote[("org/lora", "adapter_config.json")] = {"base_model_name_or_path": LLAMA2, "peft_type": "LORA"}
    resolved = hub.resolve_model("org/lora")
    assert resolved.source == "catalogue" and resolved.config == catalogue_config(LLAMA2)
    assert len(resolved.notes) == 2 and "adapter" in resolved.notes[0] and "gated" in resolved.notes[1]


# --- 7, 8. the Hub gives no answer: cache, then catalogue ---------------------------------------------------

NO_ANSWER = [
    pytest.param(lambda: hf_errors.OfflineModeIsEnabled("offline"), "offline mode is on", id="offline"),
    pytest.param(lambda: httpx2.ConnectError("x"), "unreachable (ConnectError)", id="connect-error"),
    pytest.param(lambda: httpx2.ConnectTimeout("x"), "unreachable (ConnectTimeout)", id="timeout"),
    pytest.param(lambda: http_error(hf_errors.HfHubHTTPError, 503), "HTTP 503", id="http-503"),
]


@pytest.mark.parametrize(("make_error", "why"), NO_ANSWER)
def test_no_answer_uses_hf_cache(fake: FakeHub, make_error: Any, why: str) -> None:
    fake.metadata_errors[LLAMA2] = make_error()
    fake.cached[LLAMA2] = TINY_LLAMA  # the cache wins over the catalogue
    resolved = hub.resolve_model(LLAMA2, revision="v1", token=TOKEN)
    assert (resolved.source, resolved.revision, resolved.config) == ("hub", CACHED_SHA, TINY_LLAMA)
    [note] = resolved.notes
    assert why in note and "Hugging Face cache" in note
    [download] = fake.download_calls
    assert download["local_files_only"] is True
    assert (download["revision"], download["token"]) == ("v1", TOKEN)


@pytest.mark.parametrize(("make_error", "why"), NO_ANSWER)
def test_no_answer_uses_catalogue(fake: FakeHub, make_error: Any, why: str) -> None:
    fake.metadata_errors[LLAMA2] = make_error()
    resolved = hub.resolve_model(LLAMA2)
    assert (resolved.source, resolved.revision) == ("catalogue", None)
    assert resolved.config == catalogue_config(LLAMA2)
    [note] = resolved.notes
    assert why in note and "bundled catalogue" in note and "may differ" not in note
    assert fake.download_calls[0]["local_files_only"] is True


@pytest.mark.parametrize(("make_error", "why"), NO_ANSWER)
def test_no_answer_nowhere(fake: FakeHub, make_error: Any, why: str) -> None:
    fake.metadata_errors["org/unknown"] = make_error()
    with pytest.raises(OfflineError) as info:
        hub.resolve_model("org/unknown")
    message = str(info.value)
    for fragment in ("'org/unknown'", why, "Hugging Face cache", "local folder", "--params"):
        assert fragment in message
    fake.metadata_errors["org/unknown"] = make_error()
    assert_cli_error(invoke("org/unknown"), ExitCode.MODEL_UNAVAILABLE, "'org/unknown'", why, "--params")


def test_real_offline_reads_hf_cache(tmp_path: Path) -> None:
    """No patching: HF_HUB_OFFLINE=1, and a real HF cache layout under the isolated HF_HUB_CACHE."""
    repo = Path(constants.HF_HUB_CACHE) / "models--org--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(CACHED_SHA)
    (repo / "snapshots" / CACHED_SHA).mkdir(parents=True)
    (repo / "snapshots" / CACHED_SHA / "config.json").write_text(json.dumps(TINY_LLAMA))
    resolved = hub.resolve_model("org/cached")
    assert (resolved.source, resolved.revision, resolved.config) == ("hub", CACHED_SHA, TINY_LLAMA)
    [note] = resolved.notes
    assert "offline mode is on" in note and "Hugging Face cache" in note


def test_real_offline_nowhere() -> None:
    with pytest.raises(OfflineError, match="offline mode is on"):
        hub.resolve_model("org/not-cached")
    assert_cli_error(invoke("org/not-cached"), ExitCode.MODEL_UNAVAILABLE, "offline mode is on", "--params")


# --- 9. catalogue matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "revision", "differs"),
    [
        ("META-LLAMA/llama-2-7b-hf", None, False),
        (LLAMA2, "main", False),
        (LLAMA2, "v1", True),
    ],
)
def test_catalogue_fallback_offline(model: str, revision: str | None, differs: bool) -> None:
    resolved = hub.resolve_model(model, revision=revision)
    assert (resolved.source, resolved.model_id) == ("catalogue", model)
    assert resolved.config == catalogue_config(LLAMA2)
    [note] = resolved.notes
    assert "offline" in note and f"snapshot of '{LLAMA2}'" in note
    assert ("it may differ from revision 'v1'" in note) is differs


# --- 10, 11. the CLI end to end -----------------------------------------------------------------------------


def test_cli_catalogue_end_to_end_offline() -> None:
    result = invoke(LLAMA2, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["parameters"]["total"] == LLAMA2_PARAMS
    assert (doc["model"]["source"], doc["model"]["id"]) == ("catalogue", LLAMA2)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hfmem: ") and "catalogue" in lines[0] and "offline" in lines[0]


def test_cli_token_never_printed(fake: FakeHub) -> None:
    fake.metadata_errors["org/private"] = http_error(hf_errors.RepositoryNotFoundError, 404, f"bad token {TOKEN}")
    fake.metadata_errors["org/forbidden"] = http_error(hf_errors.HfHubHTTPError, 403, f"bad token {TOKEN}")
    fake.metadata_errors["org/down"] = httpx2.ConnectError(f"token {TOKEN}")
    fake.remote[("org/tiny", "config.json")] = TINY_LLAMA
    for model, code in [("org/private", 4), ("org/forbidden", 4), ("org/down", 4), ("org/tiny", 0)]:
        for extra in ([], ["--json"]):
            result = invoke(model, "--token", TOKEN, *extra)
            assert result.exit_code == code, (model, result.output)
            assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert {call["token"] for call in fake.metadata_calls} == {TOKEN}


# --- custom code (--trust-remote-code) --------------------------------------------------------------------------


def test_remote_code_is_fetched_into_the_snapshot(fake: FakeHub) -> None:
    from tests.conftest import FIXTURES

    code = FIXTURES / "remote_code"
    config = json.loads((code / "config.json").read_text())
    fake.listing["org/tiny"] = ["README.md", "config.json", "configuration_tiny.py", "modeling_tiny.py", "w.bin"]
    fake.remote[("org/tiny", "config.json")] = config
    for name in ("configuration_tiny.py", "modeling_tiny.py"):
        fake.remote[("org/tiny", name)] = (code / name).read_text()
    model = hub.ResolvedModel("org/tiny", "hub", config, revision=SHA)
    fetched = hub.fetch_remote_code(model, token=TOKEN)
    assert fetched.directory is not None
    assert sorted(p.name for p in fetched.directory.iterdir()) == [
        "config.json",
        "configuration_tiny.py",
        "modeling_tiny.py",
    ]
    assert [(c["filename"], c["revision"], c["token"]) for c in fake.download_calls] == [
        ("configuration_tiny.py", SHA, TOKEN),
        ("modeling_tiny.py", SHA, TOKEN),
        ("config.json", SHA, TOKEN),
    ]
    # Every request has a bounded timeout, huggingface_hub's own (so HF_HUB_*_TIMEOUT apply).
    assert fake.list_calls == [
        {"repo_id": "org/tiny", "revision": SHA, "token": TOKEN, "timeout": constants.HF_HUB_DOWNLOAD_TIMEOUT}
    ]
    assert all(c["etag_timeout"] == constants.HF_HUB_ETAG_TIMEOUT for c in fake.download_calls)
    # Nothing to fetch for configs without auto_map or from the catalogue.
    plain = hub.ResolvedModel("org/plain", "hub", TINY_LLAMA, revision=SHA)
    assert hub.fetch_remote_code(plain) is plain


def test_remote_code_offline_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(repo_id: str, **kwargs: Any) -> str:
        raise hf_errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    model = hub.ResolvedModel("org/tiny", "hub", {"model_type": "x", "auto_map": {"AutoConfig": "a.B"}}, revision=SHA)
    with pytest.raises(OfflineError, match="custom code files cannot be downloaded"):
        hub.fetch_remote_code(model)


def test_alias_fallback_says_same_architecture() -> None:
    # Real offline (HF_HUB_OFFLINE=1): google/gemma-2-9b is served by the -it snapshot, and says so.
    resolved = hub.resolve_model("google/gemma-2-9b")
    assert resolved.source == "catalogue"
    assert "google/gemma-2-9b-it" in resolved.notes[0] and "same architecture" in resolved.notes[0]
