"""`hfmem` against a local fake of the Hub's HTTP API, reached through `HF_ENDPOINT` like a real mirror.

No patched functions: huggingface_hub's own HTTP code talks to a server on 127.0.0.1, so these tests cover what
the seam tests cannot — the headers huggingface_hub turns into its exceptions, the revision sha it reads, and its
cache. The server imitates the Hub's documented behaviour: `X-Repo-Commit` and `ETag` on file responses,
`X-Error-Code` (`GatedRepo`, `RepoNotFound`, `EntryNotFound`) on errors, and `Range` requests answered with 206 (how
`get_safetensors_metadata` reads a safetensors header: huggingface_hub `HfApi.parse_safetensors_file_metadata` GETs
`bytes=0-100000`, then `bytes=8-{n+7}` when the header is longer). hfmem runs in a subprocess, so
`HF_ENDPOINT` is read at import as it is for users.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import TINY_LLAMA, TINY_LLAMA_PARAMS, safetensors_bytes

SHA = "0123456789abcdef0123456789abcdef01234567"
CONFIG = json.dumps(TINY_LLAMA).encode()
#: Checkpoint tensors: two shards of a tiny Llama-style checkpoint (a stored rotary buffer included).
SHARDS = {
    "model-00001-of-00002.safetensors": {
        "model.embed_tokens.weight": ("BF16", [1000, 64]),
        "model.norm.weight": ("BF16", [64]),
    },
    "model-00002-of-00002.safetensors": {
        "lm_head.weight": ("BF16", [1000, 64]),
        "model.layers.0.self_attn.rotary_emb.inv_freq": ("F32", [8]),
    },
}
#: A header longer than the 100,000 bytes huggingface_hub fetches first, so the second ranged GET is exercised.
BIG_HEADER = {f"model.layers.{i}.mlp.down_proj.weight": ("F8_E4M3", [4, 4]) for i in range(2_000)}
INDEX = {"metadata": {"total_size": 0}, "weight_map": {n: f for f, ts in SHARDS.items() for n in ts}}
FILES = {
    "org/tiny": {"config.json": CONFIG},
    "org/sharded": {
        "config.json": CONFIG,
        "model.safetensors.index.json": json.dumps(INDEX).encode(),
        **{name: safetensors_bytes(tensors) for name, tensors in SHARDS.items()},
    },
    "org/single": {"config.json": CONFIG, "model.safetensors": safetensors_bytes(BIG_HEADER)},
    "org/binonly": {"config.json": CONFIG, "pytorch_model.bin": b"\0" * 64},
}
TREES = {"org/gguf": ["model.Q4_K_M.gguf", "README.md"], **{repo: sorted(files) for repo, files in FILES.items()}}


class FakeHub(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, with_body: bool) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/api/models/"):  # /api/models/{repo}[/revision/{rev}] (info) or …/tree/{rev} (listing)
            repo = "/".join(path.split("/")[3:5])
            if "/tree/" in path:
                doc: object = [{"type": "file", "path": p, "oid": "0" * 40, "size": 1} for p in TREES[repo]]
            else:
                doc = {"id": repo, "sha": SHA, "siblings": [{"rfilename": p} for p in TREES[repo]]}
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)
            return
        parts = path.strip("/").split("/")  # org / name / resolve / revision / filename
        repo, filename = "/".join(parts[:2]), parts[-1]
        if repo in ("org/gated", "meta-llama/Llama-2-7b-hf"):
            return self._error(401, "GatedRepo")
        if repo not in FILES and repo in TREES:
            return self._error(404, "EntryNotFound")
        if repo not in FILES:
            return self._error(401, "RepoNotFound")
        if parts[3] not in ("main", SHA):
            return self._error(404, "RevisionNotFound")
        if filename not in FILES[repo]:
            return self._error(404, "EntryNotFound")
        body = FILES[repo][filename]
        etag = f'"{hashlib.sha1(body).hexdigest()}"'
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):  # RFC 9110 §14: a single "start-end" range, end inclusive and clipped
            first, last = (int(x) for x in ranged.removeprefix("bytes=").split("-"))
            last = min(last, len(body) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
            body = body[first : last + 1]
        else:
            self.send_response(200)
        self.send_header("X-Repo-Commit", SHA)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
        self._serve(with_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(with_body=True)


@pytest.fixture(scope="module")
def mirror() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def hfmem(mirror: str, home: Path, *args: str, offline: bool = False) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": mirror,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
    }
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "hfmem", *args], env=env, capture_output=True, text=True, timeout=120)


def test_fetch_then_cache(mirror: str, tmp_path: Path) -> None:
    done = hfmem(mirror, tmp_path, "org/tiny", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["model"]["source"] == "hub" and doc["model"]["revision"] == SHA
    assert doc["parameters"]["total"] == TINY_LLAMA_PARAMS
    assert done.stderr == ""
    # Offline afterwards: the HF cache answers, with the same sha, and says so.
    again = hfmem(mirror, tmp_path, "org/tiny", "--json", offline=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["model"]["revision"] == SHA
    assert "from the Hugging Face cache" in again.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("org/gated",), "is gated and no token grants access"),
        (("org/missing",), "was not found on the Hub"),
        (("org/tiny", "--revision", "v9"), "revision 'v9' does not exist"),
        (("org/gguf",), "GGUF files only (model.Q4_K_M.gguf)"),
    ],
)
def test_errors_through_the_real_client(mirror: str, tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    done = hfmem(mirror, tmp_path, *args)
    assert done.returncode == 4
    assert fragment in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_gated_repo_in_catalogue_falls_back(mirror: str, tmp_path: Path) -> None:
    done = hfmem(mirror, tmp_path, "meta-llama/Llama-2-7b-hf", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["source"] == "catalogue"
    assert "gated" in done.stderr and "bundled catalogue" in done.stderr


FETCH = """
import json, sys
from hfmem.hub import fetch_checkpoint
from hfmem.types import ResolvedModel
summary, note = fetch_checkpoint(ResolvedModel(sys.argv[1], "hub", {}, revision=SHA), token=sys.argv[2] or None)
print(json.dumps(None if summary is None else {
    "source": summary.source, "tensors": summary.tensor_count, "params_by_dtype": dict(summary.params_by_dtype),
    "bytes_by_dtype": dict(summary.bytes_by_dtype),
}))
print(json.dumps(note))
""".replace("SHA", repr(SHA))


def fetch_checkpoint(
    mirror: str, home: Path, repo: str, *, token: str = "", offline: bool = False
) -> tuple[dict[str, object] | None, str | None, str]:
    """Run `hfmem.hub.fetch_checkpoint` in a fresh interpreter (HF_ENDPOINT is read at import, as for users)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": mirror,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "HF_TOKEN": "",
    }
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", FETCH, repo, token], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    summary_line, note_line = done.stdout.splitlines()
    return json.loads(summary_line), json.loads(note_line), done.stderr


def test_checkpoint_headers_of_a_sharded_repo(mirror: str, tmp_path: Path) -> None:
    summary, note, stderr = fetch_checkpoint(mirror, tmp_path, "org/sharded")
    assert note is None and summary is not None
    assert summary == {
        "source": f"hub:org/sharded@{SHA}, 2 files",
        "tensors": 4,
        "params_by_dtype": {"BF16": 2 * 64_000 + 64, "F32": 8},
        "bytes_by_dtype": {"BF16": 2 * (2 * 64_000 + 64), "F32": 32},
    }
    assert stderr == ""  # no progress bar


def test_checkpoint_header_longer_than_the_first_range(mirror: str, tmp_path: Path) -> None:
    assert len(FILES["org/single"]["model.safetensors"]) > 100_008  # needs the second ranged GET
    summary, note, _ = fetch_checkpoint(mirror, tmp_path, "org/single")
    assert note is None and summary is not None
    assert summary["tensors"] == 2_000 and summary["params_by_dtype"] == {"F8_E4M3": 2_000 * 16}


@pytest.mark.parametrize(
    ("repo", "offline", "fragment"),
    [
        ("org/binonly", False, "'org/binonly' has no safetensors weights (only pytorch_model.bin)"),
        ("org/gated", False, "'org/gated' is gated and no token grants access"),
        ("org/sharded", True, "offline mode is on (HF_HUB_OFFLINE=1)"),
    ],
)
def test_checkpoint_skipped_with_a_note(mirror: str, tmp_path: Path, repo: str, offline: bool, fragment: str) -> None:
    summary, note, stderr = fetch_checkpoint(mirror, tmp_path, repo, token="hf_SECRET123", offline=offline)
    assert summary is None and note is not None
    assert note.startswith("checkpoint cross-check skipped: ") and fragment in note
    assert "hf_SECRET123" not in note + stderr


def test_checkpoint_skipped_when_the_hub_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    summary, note, _ = fetch_checkpoint(f"http://127.0.0.1:{port}", tmp_path, "org/sharded")
    assert summary is None and note is not None and "the Hub is unreachable" in note
