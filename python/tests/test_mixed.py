"""One app in two languages under kill -9: ClusterFixture's Swift handler → Python handler →
Swift handler, 20,000 records, the Python worker killed every few seconds. Every output is
stored exactly once (counted in the streams, where a duplicate would show) and every record's
lineage leads back to its order."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import nats

from conftest import REPO, eventually, free_port, http

RECORDS = 20_000
TABLES = ["mixed_orders", "mixed_enriched", "mixed_scored", "mixed_final"]


def stream_counts(url):
    async def count():
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            return {t: (await js.stream_info(f"AUT_DEFAULT_tbl_{t}")).state.messages for t in TABLES}
        finally:
            await nc.close()

    return asyncio.run(count())


def python_workers(parent):
    out = subprocess.run(["pgrep", "-P", str(parent), "-f", "autonomous worker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_swift_python_swift_under_kill_9(tmp_path):
    fixture = REPO / ".build" / "debug" / "ClusterFixture"
    assert fixture.exists(), "build the test fixture first (swift build --build-tests)"
    port = free_port()
    log = open(tmp_path / "dev.log", "wb")
    env = {**os.environ, "AUTONOMOUS_PYTHON": sys.executable, "AUTONOMOUS_LOG_LEVEL": "warning", "AUTONOMOUS_ACK_WAIT": "5"}
    dev = subprocess.Popen(
        [str(fixture), "dev", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--python-app", str(REPO / "python" / "tests" / "apps" / "mixed_handlers.py")],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    stop_killing = threading.Event()
    kills = []

    def killer():
        while not stop_killing.wait(3.5):
            for pid in python_workers(dev.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass

    try:
        eventually(lambda: http("GET", base + "/readyz")[0] == 200, timeout=120, what="the fixture's ingress")
        eventually(lambda: python_workers(dev.pid), timeout=60, what="the Python worker")
        url = eventually(
            lambda: next((w for w in (tmp_path / "dev.log").read_text(errors="replace").split() if w.startswith("nats://")), None),
            what="the NATS URL in the banner",
        )
        threading.Thread(target=killer, daemon=True).start()
        for start in range(0, RECORDS, 500):
            status, body = http("POST", base + "/v1/tables/mixed_orders/records", [{"n": n} for n in range(start, start + 500)])
            assert status == 202, body
        eventually(lambda: stream_counts(url)["mixed_final"] >= RECORDS, timeout=600, interval=1, what="20,000 final records")
        stop_killing.set()
        time.sleep(3)  # anything still in flight would show up as a duplicate now
        counts = stream_counts(url)
        assert counts == {t: RECORDS for t in TABLES}, counts
        assert len(kills) >= 3, f"the Python worker was killed only {len(kills)} times"

        def read_all(table):
            found, cursor = [], None
            while True:
                query = "order=oldest&limit=1000" + (f"&cursor={cursor}" if cursor else "")
                status, page = http("GET", f"{base}/v1/tables/{table}/records?{query}")
                assert status == 200, page
                found += page["records"]
                cursor = page.get("next_cursor")
                if not cursor:
                    return found

        tables = {t: eventually(lambda t=t: (rows := read_all(t)) and len(rows) == RECORDS and rows, timeout=120, what=f"{t} kept")
                  for t in TABLES}
        by_id = {t: {r["id"]: r for r in rows} for t, rows in tables.items()}
        for t in TABLES:
            assert len(by_id[t]) == RECORDS, t
        # Lineage: final ← scored (Python) ← enriched ← order, with the same n all the way.
        seen = set()
        for final in tables["mixed_final"]:
            scored = by_id["mixed_scored"][final["caused_by"]]
            enriched = by_id["mixed_enriched"][scored["caused_by"]]
            order = by_id["mixed_orders"][enriched["caused_by"]]
            n = order["record"]["n"]
            assert enriched["record"]["n"] == scored["record"]["n"] == final["record"]["n"] == n
            assert scored["record"]["score"] == final["record"]["score"] == 2 * n
            assert scored["record"]["language"] == "python"
            seen.add(n)
        assert seen == set(range(RECORDS))
        print(f"kill -9 of the Python worker: {len(kills)} times; every table holds {RECORDS} records once")
    finally:
        stop_killing.set()
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
        try:
            os.killpg(dev.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
