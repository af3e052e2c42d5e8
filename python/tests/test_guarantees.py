"""Guarantees of Python handlers and routes, shown end to end with `autonomous dev`."""

import os
import pathlib
import signal
import subprocess
import sys
import time

from conftest import autonomous_binary, eventually, free_port, http

APPS = pathlib.Path(__file__).resolve().parent / "apps"


def test_dead_letter_then_replay_processes_once(run_app):
    app = run_app(APPS / "flaky.py")
    for n in range(5):
        status, _ = app.http("POST", "/v1/tables/inbox/records", {"n": n, "poison": n == 3})
        assert status == 202
    # The four good records pass even though they shared a batch with the bad one.
    eventually(lambda: len(app.records("outbox")) == 4, what="4 outputs")
    listing = eventually(
        lambda: (out := app.cli("dlq", "list")) and "1 dead letter(s)." in out and out, timeout=60, what="the dead letter"
    )
    assert "flaky" in listing and "inbox" in listing and "attempts=3" in listing
    assert "cannot handle 3 yet" in listing
    # Fixed: replayed, processed once.
    (app.directory / "fixed").write_text("yes")
    assert "Replayed 1 dead letter(s)." in app.cli("dlq", "replay")
    eventually(lambda: len(app.records("outbox")) == 5, what="the replayed record's output")
    assert "No dead letters." in app.cli("dlq", "list")
    # A second replay finds nothing, and nothing is processed twice.
    assert "Replayed 0 dead letter(s)." in app.cli("dlq", "replay")
    time.sleep(2)
    outputs = app.records("outbox")
    assert sorted(r["record"]["n"] for r in outputs) == [0, 1, 2, 3, 4]
    assert len({r["id"] for r in outputs}) == 5


def test_route_errors_and_timeouts(run_app):
    app = run_app(APPS / "flaky.py", env={"AUTONOMOUS_ROUTE_TIMEOUT": "2"})
    status, body = app.http("POST", "/refuse", {})
    assert status == 409
    assert body == {"error": {"code": "conflict", "message": "refused on purpose", "field": "n"}}
    status, body = app.http("POST", "/crash", {})
    assert status == 500
    assert "secret-value-must-not-leak" not in str(body)
    assert body["error"]["code"] == "internal_error"
    status, body = app.http("POST", "/slow?seconds=5", {})
    assert status == 504, body
    assert body["error"]["code"] == "route_timeout"
    status, body = app.http("POST", "/slow?seconds=0.1", {})
    assert status == 200 and body == {"slept": True}
    # Bad JSON is the route's 400, naming the body.
    status, body = app.http("POST", "/append", raw=b"{not json")
    assert status == 400 and body["error"]["field"] == "body"
    status, body = app.http("POST", "/append", {"n": 7}, headers={"Idempotency-Key": "order-7"})
    assert status == 202 and body == {"tenant": "default"}
    status, body = app.http("POST", "/append", {"n": 7}, headers={"Idempotency-Key": "order-7"})
    assert status == 202
    time.sleep(1)
    # The same idempotency key, retried: stored once.
    assert [r["record"]["n"] for r in app.records("inbox")].count(7) == 1


def test_serve_roles_and_a_separate_python_worker(nats_server, tmp_path):
    """The deployment shape: `autonomous serve all main.py` (ingress, coordinator, sinks) and a
    Python worker started on its own. Before the worker runs, its routes answer 503; after, they
    work, and its handler consumes what arrived meanwhile."""
    port = free_port()
    env = {**os.environ, "AUTONOMOUS_PYTHON": sys.executable, "AUTONOMOUS_NATS_URL": nats_server}
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen(
        [autonomous_binary(), "serve", "all", str(APPS / "flaky.py"), "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        base = f"http://127.0.0.1:{port}"
        eventually(lambda: http("GET", base + "/readyz")[0] == 200, timeout=120, what="the ingress")
        status, body = http("POST", base + "/refuse", {})
        assert status == 503, body
        assert body["error"]["code"] == "route_unavailable"
        status, _ = http("POST", base + "/v1/tables/inbox/records", {"n": 1})
        assert status == 202
        worker = subprocess.Popen(
            [sys.executable, "-m", "autonomous", "worker", str(APPS / "flaky.py")],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        eventually(lambda: http("POST", base + "/refuse", {})[0] == 409, timeout=60, what="the Python worker's routes")
        eventually(
            lambda: http("GET", base + "/v1/tables/outbox/records")[1]["records"], timeout=60, what="the handler's output"
        )
        # SIGTERM: the worker drains and exits cleanly.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        for process in (worker, serve):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
        log.close()


def test_poison_record_is_dead_lettered_and_the_rest_pass(run_app):
    """A record that kills the Python process: run alone under run notes after its first
    crash, dead-lettered once the process stopped on it max_attempts times; its batch-mates
    are handled."""
    app = run_app(APPS / "crashy.py", env={"AUTONOMOUS_ACK_WAIT": "2"})
    status, _ = app.http("POST", "/v1/tables/poison_in/records", [{"n": n, "poison": n == 4} for n in range(10)])
    assert status == 202
    listing = eventually(
        lambda: (out := app.cli("dlq", "list")) and "1 dead letter(s)." in out and out, timeout=120, what="the poison record's dead letter"
    )
    assert "poison" in listing and "the process stopped while handling this record 3 times" in listing
    eventually(lambda: sorted(r["record"]["n"] for r in app.records("poison_out")) == [0, 1, 2, 3, 5, 6, 7, 8, 9], timeout=60, what="the others")


def test_long_handler_keeps_its_records_with_heartbeats(run_app):
    """A batch that runs longer than the ack wait is not redelivered meanwhile: the worker
    sends in-progress acks, so it runs once."""
    app = run_app(APPS / "crashy.py", env={"AUTONOMOUS_ACK_WAIT": "2", "SLOW_SECONDS": "7"})
    status, _ = app.http("POST", "/v1/tables/slow_in/records", [{"n": n} for n in range(5)])
    assert status == 202
    eventually(lambda: len(app.records("slow_out")) == 5, timeout=60, what="the slow batch's outputs")
    time.sleep(4)  # a redelivery after the 2 s ack wait would have started by now
    runs = (app.directory / "slow-runs.txt").read_text().splitlines()
    assert runs == ["0,1,2,3,4"], runs


def test_ordered_handler_keeps_each_keys_order(run_app):
    """An ordered Python handler on leased partitions, two worker processes: every record once,
    each account's records applied in the order they were stored, a failing record retried
    before any later record of its account, and the partitions of a worker killed with kill -9
    taken over by the other (at their ack floor) without breaking the order."""
    import signal

    app = run_app(APPS / "ordered.py", extra=["--python-workers", "2"])
    accounts = [f"acct-{i}" for i in range(10)]

    def send(round_):
        batch = [{"account": accounts[(n * 7) % 10], "seq": round_ * 100 + n, "fail_once": round_ == 1 and n == 5} for n in range(100)]
        status, _ = app.http("POST", "/v1/tables/moves/records", batch)
        assert status == 202

    send(0)
    send(1)
    first = eventually(lambda: (rows := app.records("applied")) and len(rows) >= 200 and rows, timeout=120, what="200 applied")
    holder = first[-1]["record"]["pid"]
    os.kill(holder, signal.SIGKILL)
    for round_ in (2, 3, 4):
        send(round_)
    applied = eventually(lambda: (rows := app.records("applied")) and len(rows) >= 500 and rows, timeout=120, what="500 applied")
    time.sleep(2)
    applied = app.records("applied")
    assert len(applied) == 500
    assert len({(r["record"]["account"], r["record"]["seq"]) for r in applied}) == 500
    for account in accounts:
        seqs = [r["record"]["seq"] for r in applied if r["record"]["account"] == account]
        assert seqs == sorted(seqs), (account, seqs)
    # The records after the kill were applied by the surviving worker or the restarted one.
    assert holder not in {r["record"]["pid"] for r in applied[200:]}


def test_reads_from_python(run_app):
    """table.records / count (sync) and arecords / acount (async) read the kept table through
    the ingress, with its cursors and its errors."""
    app = run_app(APPS / "flaky.py")
    status, _ = app.http("POST", "/v1/tables/inbox/records", [{"n": n} for n in range(5)])
    assert status == 202
    eventually(lambda: len(app.records("inbox")) == 5, what="5 kept records")
    status, first = app.http("GET", "/inbox?limit=2")
    assert status == 200 and first["ns"] == [0, 1] and first["count"] == 5 and first["next"]
    status, second = app.http("GET", f"/inbox?limit=10&cursor={first['next']}")
    assert status == 200 and second["ns"] == [2, 3, 4] and second["next"] is None
    assert set(first["ids"]).isdisjoint(second["ids"])
    status, found = app.http("GET", "/inbox-async?n=3")
    assert status == 200 and found == {"ns": [3], "count": 1}
    # A read the runtime refuses is the route's error, naming the parameter.
    status, body = app.http("GET", "/bad-read")
    assert status == 400 and body["error"]["field"] == "limit", body
