"""Hostile Hub servers on 127.0.0.1, for tests/test_hostile.py and benchmarks/fuzz_hostile.py.

Each imitates one way a server (a broken mirror, a proxy, an attacker behind ``HF_ENDPOINT``) can misbehave. Every
one is bounded and stops by itself: the drip sends at most ``DRIP_BYTES`` bytes, the huge body at most
``HUGE_BYTES``, and `serve` shuts the server down on exit. The Hub protocol imitated is the one
tests/test_hub_mirror.py documents (``X-Repo-Commit``, ``ETag``, ``X-Error-Code``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import TINY_LLAMA

SHA = "0123456789abcdef0123456789abcdef01234567"
CONFIG = json.dumps(TINY_LLAMA).encode()
#: The drip server's most bytes per answer, one a second: it stops by itself after this many seconds.
DRIP_BYTES = 120
#: The huge config.json: 1.5 GB, generated as it is sent (never held in memory).
HUGE_BYTES = 1_500_000_000

#: mode → what the server does with every request (HEAD and GET alike unless said).
MODES = {
    "drip": "answers one byte a second (each read arrives in time, the answer never completes)",
    "silent": "accepts connections and never answers",
    "garbage-json": "no config.json (EntryNotFound); the file list /api/models is not JSON",
    "huge-file-list": "no config.json; the file list /api/models is 1.5 GB without a length",
    "wrong-json-shape": "no config.json; the file list /api/models is a JSON list of numbers",
    "huge-config": "config.json's HEAD says 2 GB",
    "lying-config": "config.json's HEAD says 600 bytes; its GET sends 1.5 GB without a length",
    "short-body": "config.json's GET declares 600 bytes and sends 10, then closes",
    "redirect-loop": "every request is redirected to itself",
    "retry-after": "429 with Retry-After: 100000 on every request",
    "error-500": "HTTP 500 on every request",
}


class HostileHub(BaseHTTPRequestHandler):
    server: HostileServer

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(with_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(with_body=True)

    def _answer(self, *, with_body: bool) -> None:
        self.server.seen.append(f"{self.command} {self.path.split('?')[0]}")
        mode = self.server.mode
        path = self.path.split("?")[0]
        if mode == "drip":
            return self._drip()
        if mode == "redirect-loop":
            return self._send(302, {"Location": self.path, "Content-Length": "0"})
        if mode == "retry-after":
            return self._send(429, {"Retry-After": "100000", "Content-Length": "0"})
        if mode == "error-500":
            return self._send(500, {"Content-Length": "0"})
        if path.startswith("/api/models/") and mode == "huge-file-list":
            return self._endless(200, {"Content-Type": "application/json"})
        if path.startswith("/api/models/"):
            body = b'{"id": "org/tiny", "siblings": [' if mode == "garbage-json" else b"[1, 2, 3]"
            return self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body)
        if not path.endswith("/config.json"):
            return self._send(404, {"X-Error-Code": "EntryNotFound", "Content-Length": "0"})
        if mode in ("garbage-json", "wrong-json-shape", "huge-file-list"):
            return self._send(404, {"X-Error-Code": "EntryNotFound", "Content-Length": "0"})
        hub = {"X-Repo-Commit": SHA, "ETag": '"abc123"'}
        if mode == "huge-config":
            return self._send(200, {**hub, "Content-Length": str(2 * 2**30)}, b"{" if with_body else b"")
        if mode == "short-body":
            return self._send(200, {**hub, "Content-Length": "600"}, b'{"model_t' if with_body else b"")
        if mode == "lying-config":
            if not with_body:
                return self._send(200, {**hub, "Content-Length": "600"})
            return self._endless(200, hub)
        raise AssertionError(f"unknown mode {mode}")

    def _endless(self, status: int, headers: dict[str, str]) -> None:
        """``HUGE_BYTES`` of spaces without a length (HTTP/1.0: the body ends when the connection closes)."""
        self._send(status, {**headers, "Connection": "close"})
        chunk, sent = b" " * 2**20, 0
        try:
            while sent < HUGE_BYTES and not self.server.stopping.is_set():
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:  # the client hung up: what it should do
            pass

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _drip(self) -> None:
        answer = b"HTTP/1.1 200 OK\r\nX-Repo-Commit: " + SHA.encode() + b"\r\nX-Padding: " + b"a" * DRIP_BYTES
        try:
            for byte in answer[:DRIP_BYTES]:
                if self.server.stopping.wait(1.0):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            pass


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), HostileHub)
        self.mode = mode
        self.seen: list[str] = []
        self.stopping = threading.Event()


@contextmanager
def serve(mode: str) -> Iterator[tuple[str, list[str]]]:
    """A hostile server in ``mode`` on 127.0.0.1: yields its URL and the requests it saw ("GET /path")."""
    if mode == "silent":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # never accept(): the kernel queues connections, nobody answers
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}", []
        finally:
            listener.close()
        return
    server = HostileServer(mode)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def run_hfmem(
    args: list[str], home: Path, endpoint: str | None = None, *, limit_s: float = 120, **env: str
) -> tuple[subprocess.CompletedProcess[str] | None, float]:
    """``python -m hfmem ARGS`` as a user runs it (a fresh process, online unless ``env`` says otherwise).

    Returns the finished process (None if it ran past ``limit_s`` and was killed) and its wall time in seconds.
    """
    full_env = {
        **os.environ,
        "HF_HOME": str(home / "hf_home"),
        "HFMEM_CACHE": str(home / "hfmem_cache"),
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": "",
        "NO_PROXY": "127.0.0.1",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        **({"HF_ENDPOINT": endpoint} if endpoint else {}),
        **env,
    }
    for name in ("HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY", "PYTEST_CURRENT_TEST", "HFMEM_DEBUG"):
        if name not in env:
            full_env.pop(name, None)  # hfmem itself must turn telemetry off
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hfmem", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=limit_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - started
    return done, time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
