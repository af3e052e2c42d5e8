"""Test support: runs apps with the real `autonomous` command (`autonomous dev main.py`: an
embedded nats-server -js, SQLite, the Swift ingress and coordinator, and Python workers) on
free loopback ports, and fakes remote APIs as loopback HTTP servers."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def autonomous_binary() -> str:
    path = os.environ.get("AUTONOMOUS_BIN") or str(REPO / ".build" / "debug" / "autonomous")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} not found: build it first (swift build --product autonomous) or set AUTONOMOUS_BIN")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check: Callable[[], Any], timeout: float = 60, interval: float = 0.2, what: str = "condition") -> Any:
    """Polls `check` until it returns a truthy value; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, OSError) as error:  # not yet: a refused connection, a check not met
            last = error
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def http(method: str, url: str, body: Any = None, headers: Optional[dict[str, str]] = None, raw: Optional[bytes] = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        text = error.read()
        status = error.code
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


class DevApp:
    """`autonomous dev <app>` in the background, with its output in a log file."""

    def __init__(self, app: pathlib.Path, directory: pathlib.Path, env: Optional[dict[str, str]] = None, extra: Optional[list[str]] = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.log_path = directory / "dev.log"
        environment = dict(os.environ)
        environment["AUTONOMOUS_PYTHON"] = sys.executable
        environment.setdefault("AUTONOMOUS_LOG_LEVEL", "info")
        environment.update(env or {})
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [autonomous_binary(), "dev", str(app), "--port", str(self.port), "--data-dir", str(directory / "data"), *(extra or [])],
            cwd=directory,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.nats_url = eventually(self._nats_url, timeout=120, what="the dev banner")
        eventually(lambda: "Python worker started" in self.output(), timeout=120, what="the Python worker")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _nats_url(self) -> Optional[str]:
        if self.process.poll() is not None:
            pytest.fail(f"autonomous dev exited with {self.process.returncode}:\n{self.output()}")
        match = re.search(r"(nats://127\.0\.0\.1:\d+) \(JetStream", self.output())
        return match.group(1) if match and f":{self.port}/" in self.output() else None

    def http(self, method: str, path: str, body: Any = None, headers: Optional[dict[str, str]] = None, raw: Optional[bytes] = None) -> tuple[int, Any]:
        return http(method, self.base + path, body, headers, raw)

    def records(self, table: str, **query: str) -> list[dict[str, Any]]:
        """Every record of `table` (oldest first), through the ingress's read API."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"order": "oldest", "limit": "1000", **query}
            if cursor:
                params["cursor"] = cursor
            status, page = self.http("GET", f"/v1/tables/{table}/records?" + "&".join(f"{k}={urllib.request.quote(v)}" for k, v in params.items()))
            assert status == 200, page
            found += page["records"]
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    def cli(self, *arguments: str) -> str:
        result = subprocess.run(
            [autonomous_binary(), *arguments, "--nats-url", self.nats_url], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout

    def python_worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", "-P", str(self.process.pid), "autonomous worker"], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Children the dev process left behind (it should leave none).
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture
def run_app(tmp_path):
    apps: list[DevApp] = []

    def start(app: pathlib.Path, env: Optional[dict[str, str]] = None, extra: Optional[list[str]] = None) -> DevApp:
        directory = tmp_path / f"app{len(apps)}"
        directory.mkdir()
        started = DevApp(app, directory, env, extra)
        apps.append(started)
        return started

    yield start
    for started in apps:
        started.stop()


@pytest.fixture
def nats_server(tmp_path):
    """A real nats-server -js on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"nats://127.0.0.1:{port}"

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    eventually(listening, timeout=30, what="nats-server")
    yield url
    process.terminate()
    process.wait(timeout=30)


class FakeServer:
    """A loopback HTTP server answering with `respond(path, body, headers) -> (status, json)`;
    it records every request."""

    def __init__(self, respond: Callable[[str, Any, dict[str, str]], tuple[int, Any]]) -> None:
        self.requests: list[tuple[str, Any, dict[str, str]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    outer.requests.append((self.path, body, headers))
                status, answer = respond(self.path, body, headers)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    return "v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
