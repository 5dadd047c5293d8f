"""`hfmem` against a local fake of the Hub's HTTP API, reached through `HF_ENDPOINT` like a real mirror.

No patched functions: huggingface_hub's own HTTP code talks to a server on 127.0.0.1, so these tests cover what
the seam tests cannot — the headers huggingface_hub turns into its exceptions, the revision sha it reads, and its
cache. The server imitates the Hub's documented behaviour: `X-Repo-Commit` and `ETag` on file responses,
`X-Error-Code` (`GatedRepo`, `RepoNotFound`, `EntryNotFound`) on errors. hfmem runs in a subprocess, so
`HF_ENDPOINT` is read at import as it is for users.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import TINY_LLAMA, TINY_LLAMA_PARAMS

SHA = "0123456789abcdef0123456789abcdef01234567"
FILES = {"org/tiny": {"config.json": json.dumps(TINY_LLAMA).encode()}}
TREES = {"org/gguf": ["model.Q4_K_M.gguf", "README.md"]}


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
        if path.startswith("/api/models/"):
            repo = "/".join(path.split("/")[3:5])
            body = json.dumps([{"type": "file", "path": p, "oid": "0" * 40, "size": 1} for p in TREES[repo]]).encode()
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
        if repo in TREES:
            return self._error(404, "EntryNotFound")
        if repo not in FILES:
            return self._error(401, "RepoNotFound")
        if parts[3] not in ("main", SHA):
            return self._error(404, "RevisionNotFound")
        body = FILES[repo][filename]
        self.send_response(200)
        self.send_header("X-Repo-Commit", SHA)
        self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
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
