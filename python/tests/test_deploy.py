"""`autonomous deploy main.py` with the process engine: the Swift roles serve the Python app's
graph (`autonomous serve`), Python workers run as a role of their own under the supervisor,
scale, and stop with `autonomous down`."""

import json
import random
import socket
import subprocess
import sys
import time

from conftest import autonomous_binary, eventually, http

import pathlib

APPS = pathlib.Path(__file__).resolve().parent / "apps"


def free_range(span=320):
    for _ in range(50):
        base = random.randrange(20000, 50000)
        ok = True
        for port in list(range(base, base + 5)) + list(range(base + 100, base + 100 + 100)):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def cli(cwd, *arguments):
    result = subprocess.run([autonomous_binary(), *arguments], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_process_engine_runs_python_workers(tmp_path):
    (tmp_path / "main.py").write_text((APPS / "flaky.py").read_text())
    port = free_range()
    (tmp_path / "autonomous.json").write_text(
        json.dumps({"deployment": {"engine": "process", "target": "pytest", "http_port": port, "replicas": {"python-worker": 2}}})
    )
    try:
        out = cli(tmp_path, "deploy", "main.py", "--python", sys.executable)
        assert "Deploying 'main' to 'pytest' with process... DONE" in out
        status = json.loads((tmp_path / ".autonomous/process/pytest/status.json").read_text())
        assert len(status["processes"]["python-worker"]) == 2
        base = f"http://127.0.0.1:{port}"
        assert http("POST", base + "/refuse", {})[0] == 409
        status_code, _ = http("POST", base + "/v1/tables/inbox/records", [{"n": n} for n in range(20)])
        assert status_code == 202
        eventually(lambda: len(http("GET", base + "/v1/tables/outbox/records?limit=100")[1]["records"]) == 20, what="20 outputs")
        # Each Python worker serves its health and metrics.
        metrics = [http("GET", f"http://127.0.0.1:{port + 100 + 60 + slot}/metrics")[1] for slot in (0, 1)]
        processed = sum(
            int(line.rsplit(" ", 1)[1]) for text in metrics for line in text.decode().splitlines() if line.startswith("autonomous_worker_records_processed_total")
        )
        assert processed == 20, metrics
        out = cli(tmp_path, "deploy", "main.py", "--python", sys.executable, "--scale", "python-worker=1")
        status = json.loads((tmp_path / ".autonomous/process/pytest/status.json").read_text())
        eventually(
            lambda: len(json.loads((tmp_path / ".autonomous/process/pytest/status.json").read_text())["processes"]["python-worker"]) == 1,
            what="one Python worker",
        )
        assert http("POST", base + "/refuse", {})[0] == 409
    finally:
        out = subprocess.run([autonomous_binary(), "down", "--target", "pytest"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert "no process is left" in out.stdout, out.stdout + out.stderr
