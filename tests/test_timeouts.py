"""Every request hfmem makes gives up after huggingface_hub's timeout, against a server that never answers.

A socket on 127.0.0.1 listens and never accepts: connections open (the kernel completes them) and requests go out,
but no byte ever comes back. hfmem runs in a subprocess with ``HF_ENDPOINT`` pointing there and
``HF_HUB_ETAG_TIMEOUT=1`` / ``HF_HUB_DOWNLOAD_TIMEOUT=1``, as a user would set them (huggingface_hub reads them at
import). Without a timeout any of these calls would wait forever: huggingface_hub's shared client has none, and
``list_repo_files`` / ``snapshot_download`` take none.

The same server shape, answering 401 with the token quoted in its body, checks that huggingface_hub's own debug
logging (``HF_DEBUG=1``, which logs every request as curl) does not print the token either.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.test_token_safety import TOKEN

#: Each call, in a fresh process: (what it is, Python that runs it and prints a one-line outcome).
CALLS = {
    "config.json (HEAD, then the cache and the catalogue)": (
        "from hfmem.hub import resolve_model\n"
        "try:\n    resolve_model('org/tiny')\nexcept Exception as e:\n    print(type(e).__name__, e)"
    ),
    "file list (model_info)": (
        "from hfmem.hub import _list_files\n"
        "try:\n    _list_files('org/tiny', None, None)\nexcept Exception as e:\n    print(type(e).__name__)"
    ),
    "custom code (model_info, hf_hub_download)": (
        "from hfmem.hub import fetch_remote_code\nfrom hfmem.types import ResolvedModel\n"
        "m = ResolvedModel('org/tiny', 'hub', {'model_type': 'x', 'auto_map': {'AutoConfig': 'a.B'}},\n"
        "                  revision='main')\n"
        "try:\n    fetch_remote_code(m)\nexcept Exception as e:\n    print(type(e).__name__, e)"
    ),
    "safetensors headers (get_safetensors_metadata)": (
        "from hfmem.hub import fetch_checkpoint\nfrom hfmem.types import ResolvedModel\n"
        "print(fetch_checkpoint(ResolvedModel('org/tiny', 'hub', {}, revision='main'))[1])"
    ),
}


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # never accept(): the kernel queues connections, nobody ever answers
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def run_python(code: str, endpoint: str, tmp_path: object, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_ETAG_TIMEOUT": "1",
        "HF_HUB_DOWNLOAD_TIMEOUT": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join(sys.path),
        **env,
    }
    full_env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("call", list(CALLS))
def test_each_request_gives_up_after_the_timeout(silent_server: str, tmp_path: object, call: str) -> None:
    timed = (
        f"import time\nstarted = time.perf_counter()\n{CALLS[call]}\nprint('SECONDS', time.perf_counter() - started)"
    )
    done = run_python(timed, silent_server, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome, seconds_line = done.stdout.strip().splitlines()[-2:]
    seconds = float(seconds_line.split()[1])
    # One request of 1 s (the environment's timeout, not huggingface_hub's default of 10 s), then the HF cache.
    assert seconds < 9.5, (call, seconds, outcome)
    assert "Timeout" in outcome or "unreachable" in outcome or "cannot be downloaded" in outcome, outcome


def test_the_cli_says_the_hub_is_unreachable(silent_server: str, tmp_path: object) -> None:
    code = "import sys\nfrom hfmem.cli import main\nsys.argv = ['hfmem', 'org/tiny']\nmain()"
    done = run_python(code, silent_server, tmp_path)
    assert done.returncode == 4
    assert len(done.stderr.splitlines()) == 1 and "the Hub is unreachable (ReadTimeout)" in done.stderr


class EchoingHub(BaseHTTPRequestHandler):
    """Answers everything with 401 and the request's Authorization header in the body (a worst-case server)."""

    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, with_body: bool) -> None:
        auth = self.headers.get("Authorization", "")
        EchoingHub.seen.append(auth)
        body = json.dumps({"error": f"Invalid credentials in Authorization header: {auth}"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Message", f"Invalid credentials: {auth}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(True)


@pytest.fixture(scope="module")
def echoing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("via", ["--token", "HF_TOKEN"])
def test_the_real_client_with_debug_logging_never_prints_the_token(
    echoing_server: str, tmp_path: object, via: str
) -> None:
    args = ["hfmem", "org/tiny", "--debug", *(["--token", TOKEN] if via == "--token" else [])]
    code = f"import sys\nfrom hfmem.cli import main\nsys.argv = {args!r}\nmain()"
    env = {"HF_DEBUG": "1", "HF_TOKEN": TOKEN if via == "HF_TOKEN" else ""}
    EchoingHub.seen.clear()
    done = run_python(code, echoing_server, tmp_path, **env)
    assert f"Bearer {TOKEN}" in EchoingHub.seen  # the token was sent, and the server echoed it back
    assert done.returncode == 4, done.stderr[-2000:]
    assert "Traceback" in done.stderr and "curl" in done.stderr  # --debug traceback and HF_DEBUG request log shown
    assert TOKEN not in done.stdout and TOKEN not in done.stderr
