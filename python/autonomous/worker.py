"""The Python worker: runs an app's Python handlers, schedules and routes on the cluster.

It follows docs/wire.md, as the Swift worker does:

- each handler's durable pull consumer (`h_<handler>`, provisioned by the coordinator) is read
  by `concurrency` fetch loops per process, and every replica binds the same consumer;
- outputs get deterministic ids (`output_id`), and a batch is acknowledged only after every
  output has its PubAck;
- a failed batch is retried record by record; a record is retried with the handler's backoff
  (`-NAK` with a delay) and dead-lettered after `max_attempts` deliveries with the documented
  headers, so `autonomous dlq replay` works for Python handlers too;
- a redelivered record runs alone, under a run note that counts the runs the process never
  finished (poison records);
- long runs send in-progress acks every third of the ack wait, and a run longer than the
  handler's timeout fails;
- SIGTERM or SIGINT drains: no new batches, the running ones finish, are acknowledged, and the
  process exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import datetime
import inspect
import json
import logging
import os
import signal
import ssl
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from . import _json, _wire
from .model import (
    App,
    ConfigurationError,
    Entry,
    HandlerDefinition,
    LineageError,
    ReadError,
    RecordMetadata,
    Records,
    Request,
    Response,
    RouteDefinition,
    RouteError,
    Table,
    UndeclaredWriteError,
    _Context,
    _current_context,
    _identity,
    _Lineage,
    takes_context_argument,
)

log = logging.getLogger("autonomous.worker")

# How long outputs may wait for their PubAcks before the batch counts as failed (retried).
PUBLISH_TIMEOUT = 30.0


class UndecodableRecordError(Exception):
    """A record that does not fit its table's type: dead-lettered at once."""


class ProcessStoppedError(Exception):
    def __init__(self, stops: int) -> None:
        super().__init__(
            f"the process stopped while handling this record {stops} times (crashed or was killed before the run ended)"
        )


class HandlerTimeoutError(Exception):
    pass


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_transient(error: BaseException) -> bool:
    """NATS and storage outages: retried with backoff, never dead-lettered."""
    if isinstance(error, ReadError):
        return error.status >= 500
    return isinstance(
        error,
        (
            nats.errors.ConnectionClosedError,
            nats.errors.NoRespondersError,
            nats.errors.TimeoutError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.StaleConnectionError,
            nats.errors.ConnectionReconnectingError,
        ),
    )


@dataclass
class TableInfo:
    """What the worker needs to append to a table: names, type and partitioning."""

    name: str
    semantic_type: str
    partition_field: Optional[str] = None
    partitions: int = 0

    def subject(self, tenant: str, body: bytes, parsed: Any = None) -> str:
        base = _wire.table_subject(tenant, self.name)
        if not self.partition_field:
            return base
        record = parsed if parsed is not None else json.loads(body)
        return f"{base}.{_wire.partition(_wire.partition_key(record, self.partition_field), self.partitions)}"


class _Reading:
    """Reads of kept tables through the ingress nodes (`aut._tables.read`)."""

    worker: "Worker"
    tenant: str

    async def aread(self, table: Table[Any], query: dict[str, Any], count: bool) -> Any:
        return await self.worker.read(self.tenant, table.name, query, count)

    def read(self, table: Table[Any], query: dict[str, Any], count: bool) -> Any:
        loop = self.worker.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise ConfigurationError(
                f"table.records()/count() would block the event loop in an async function: use await {table.name}.arecords(...) "
                "or acount(...)"
            )
        return asyncio.run_coroutine_threadsafe(self.aread(table, query, count), loop).result()


class _Lease:
    """One partition lease as this process sees it (monotonic deadlines)."""

    def __init__(self, partition: int, token: int, deadline: float) -> None:
        self.partition = partition
        self.token = token
        self.deadline = deadline
        self.draining = False
        self.finished = False

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.deadline

    @property
    def may_work(self) -> bool:
        return not self.draining and self.valid

    @property
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def extend(self, deadline: float) -> None:
        self.deadline = max(self.deadline, deadline)

    def drain(self) -> None:
        self.draining = True

    def lose(self) -> None:
        self.deadline = time.monotonic()


class HandlerContext(_Reading, _Context):
    """A handler run's context: appends are buffered with their ids and published (and their
    PubAcks awaited) when the handler returns, before its records are acknowledged."""

    kind = "handler"

    def __init__(self, worker: "Worker", handler: HandlerDefinition, tenant: str, lineage: _Lineage) -> None:
        self.worker = worker
        self.handler = handler.name
        self.tenant = tenant
        self.logger = logging.getLogger(f"autonomous.handler.{handler.name}")
        self._declared = set(handler.outputs)
        self._lineage = lineage
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self.outputs: list[tuple[str, bytes, dict[str, str]]] = []

    def _implicit_cause(self, table: str) -> RecordMetadata:
        current = self._lineage.current
        if current is None:
            raise LineageError(
                f"handler '{self.handler}' appends to table '{table}' outside any loop over its records, naming no "
                "source record: loop over the records, use records.map, or pass caused_by="
            )
        if self._lineage.owner != _identity():
            raise LineageError(
                f"handler '{self.handler}' appends to table '{table}' from a task other than the one looping over its "
                "records: pass caused_by= (the entry's metadata)"
            )
        return current

    def append(self, table: Table[Any], bodies: list[tuple[bytes, Optional[RecordMetadata]]]) -> None:
        if self._declared and table.name not in self._declared:
            raise UndeclaredWriteError(
                f"handler '{self.handler}' appends to table '{table.name}', which its writes= list "
                f"({', '.join(sorted(self._declared))}) does not name"
            )
        info = self.worker.table_info(table.name, table)
        implicit = self._implicit_cause(table.name) if any(cause is None for _, cause in bodies) else None
        fixed = None if info.partition_field else info.subject(self.tenant, b"")
        name, tenant, kind, handler = table.name, self.tenant, info.semantic_type, self.handler
        counters, outputs = self._counters, self.outputs
        with self._lock:
            for body, cause in bodies:
                source = cause or implicit
                assert source is not None
                index = counters.get(source.id, 0)
                counters[source.id] = index + 1
                headers = {
                    "Nats-Msg-Id": _wire.output_id(source.id, handler, index),
                    "Aut-Table": name,
                    "Aut-Tenant": tenant,
                    "Aut-Type": kind,
                    "Aut-Caused-By": source.id,
                }
                if source.traceparent:
                    headers["traceparent"] = source.traceparent
                outputs.append((fixed or info.subject(tenant, body), body, headers))


class RouteContext(_Reading, _Context):
    """A route's context: appends are buffered and published, PubAcks awaited, before the route
    answers; ids follow the request's idempotency key (`<key>`, `<key>-1`, …) or are new."""

    kind = "route"

    def __init__(self, worker: "Worker", tenant: str, idempotency_key: Optional[str], traceparent: Optional[str]) -> None:
        self.worker = worker
        self.tenant = tenant
        self._key = idempotency_key
        self._traceparent = traceparent
        self._count = 0
        self._lock = threading.Lock()
        self.outputs: list[tuple[str, bytes, dict[str, str]]] = []

    def append(self, table: Table[Any], bodies: list[tuple[bytes, Optional[RecordMetadata]]]) -> None:
        info = self.worker.table_info(table.name, table)
        with self._lock:
            for body, cause in bodies:
                if self._key is not None:
                    record_id = self._key if self._count == 0 else f"{self._key}-{self._count}"
                    self._count += 1
                else:
                    record_id = self.worker.ids.next()
                headers = {
                    _wire.Header.MESSAGE_ID: record_id,
                    _wire.Header.TABLE: table.name,
                    _wire.Header.TENANT: self.tenant,
                    _wire.Header.TYPE: info.semantic_type,
                }
                if cause is not None:
                    headers[_wire.Header.CAUSED_BY] = cause.id
                trace = cause.traceparent if cause is not None else self._traceparent
                if trace:
                    headers[_wire.Header.TRACEPARENT] = trace
                self.outputs.append((info.subject(self.tenant, body), body, headers))


def _delivery(msg: Msg) -> tuple[int, int, int]:
    """(stream sequence, delivery count, stored time in ns) from the message's ack subject,
    parsed once: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`,
    or with a domain and account hash after `$JS.ACK` (12 or more tokens)."""
    cached = getattr(msg, "_aut_delivery", None)
    if cached is not None:
        return cached
    tokens = (msg.reply or "").split(".")
    try:
        if len(tokens) == 9:
            found = (int(tokens[5]), int(tokens[4]), int(tokens[7]))
        else:
            found = (int(tokens[7]), int(tokens[6]), int(tokens[9]))
    except (IndexError, ValueError):
        found = (0, 1, 0)
    msg._aut_delivery = found  # type: ignore[attr-defined]
    return found


def _metadata(msg: Msg, table: str, tenant: str) -> RecordMetadata:
    headers = msg.headers or {}
    sequence, delivered, stored = _delivery(msg)
    return RecordMetadata(
        headers.get(_wire.Header.MESSAGE_ID) or f"seq-{sequence}",
        table,
        tenant,
        sequence,
        delivered,
        headers.get(_wire.Header.CAUSED_BY),
        headers.get(_wire.Header.TYPE),
        headers.get(_wire.Header.TRACEPARENT),
        stored,
    )


class Worker:
    """Runs the Python handlers and routes of `app` for `tenant` until stopped."""

    def __init__(
        self,
        app: App,
        *,
        nats_url: str,
        tenant: str = "default",
        ack_wait: float = 30.0,
        shutdown_timeout: float = 30.0,
        graph: Optional[dict[str, Any]] = None,
        handlers: Optional[set[str]] = None,
        health_port: Optional[int] = None,
        health_host: str = "127.0.0.1",
    ) -> None:
        self.health_port = health_port
        self.health_host = health_host
        self.app = app
        self.nats_url = nats_url
        self.tenant = tenant
        self.ack_wait = ack_wait
        self.shutdown_timeout = shutdown_timeout
        self.ids = _wire.ServerIDs()
        self.selected = handlers
        self._tables: dict[str, TableInfo] = {}
        self._graph = graph
        self._stopping = asyncio.Event()
        self._gates: dict[str, asyncio.Lock] = {}
        self._first_failures: dict[str, str] = {}
        self.nc: Any = None
        self.loop: Any = None
        self.js: Any = None
        self.processed = 0
        self.dead_lettered = 0
        self.retried = 0
        # Per handler, for /metrics: processed, retried, dead-lettered.
        self.counts: dict[str, list[int]] = {}
        self._bound: set[str] = set()
        self._expected_loops = 0
        self._routes_live = False
        self._route_tasks: set[asyncio.Task[Any]] = set()
        for table in app.tables.values():
            partitioning = app.partitioning(table.name)
            self._tables[table.name] = TableInfo(
                table.name, table.semantic_type, partitioning[0] if partitioning else None, partitioning[1] if partitioning else 0
            )
        if graph is not None:
            for entry in graph.get("tables", []):
                if entry.get("kind") != "table":
                    continue
                partitioning = entry.get("partitioning") or {}
                self._tables[entry["name"]] = TableInfo(
                    entry["name"], entry.get("semantic_type", "json@1"), partitioning.get("field"), int(partitioning.get("partitions", 0))
                )

    # -- tables -------------------------------------------------------------------------------

    async def read(self, tenant: str, table: str, query: dict[str, Any], count: bool) -> Any:
        request = json.dumps({"v": 1, "tenant": tenant, "table": table, "query": query, "count": count}).encode()
        try:
            reply = await self.nc.request(_wire.TABLE_READ_SUBJECT, request, timeout=30)
        except nats.errors.NoRespondersError:
            raise ReadError(503, "unavailable", "no ingress serves table reads right now; try again") from None
        except nats.errors.TimeoutError:
            raise ReadError(504, "timeout", f"reading table '{table}' did not answer within 30 s") from None
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error:
            raise ReadError(error.get("status", 500), error.get("code", "error"), error.get("message", "read failed"), error.get("field"))
        return answer

    def table_info(self, name: str, table: Optional[Table[Any]] = None) -> TableInfo:
        info = self._tables.get(name)
        if info is None:
            raise ConfigurationError(f"table '{name}' is not declared")
        return info

    def python_handlers(self) -> list[HandlerDefinition]:
        chosen = [h for h in self.app.handlers if h.runtime == "python" and h.function is not None]
        if self._graph is not None:
            # A graph of another app (a Swift app naming Python handlers): its settings win,
            # this module gives the functions.
            by_name = {h.name: h for h in chosen}
            chosen = []
            for entry in self._graph.get("handlers", []):
                if entry.get("runtime") != "python":
                    continue
                handler = by_name.get(entry["name"])
                if handler is None:
                    raise ConfigurationError(
                        f"the graph names Python handler '{entry['name']}', which this module does not define"
                    )
                handler.source = entry.get("source", handler.source)
                handler.source_kind = entry.get("source_kind", handler.source_kind)
                handler.options.batch_size = entry.get("batch_size", handler.options.batch_size)
                handler.options.concurrency = entry.get("concurrency", handler.options.concurrency)
                handler.options.max_attempts = entry.get("max_attempts", handler.options.max_attempts)
                handler.options.timeout = entry.get("timeout_seconds", handler.options.timeout)
                handler.options.max_wait = entry.get("max_wait_seconds", handler.options.max_wait)
                if entry.get("retry_backoff_seconds"):
                    handler.options.retry_backoff = tuple(entry["retry_backoff_seconds"])
                handler.options.ordered_by = entry.get("ordered_by")
                handler.options.partitions = entry.get("partitions", handler.options.partitions)
                handler.outputs = entry.get("outputs", handler.outputs)
                chosen.append(handler)
        if self.selected is not None:
            unknown = self.selected - {h.name for h in chosen}
            if unknown:
                raise ConfigurationError(f"unknown Python handler(s): {', '.join(sorted(unknown))}")
            chosen = [h for h in chosen if h.name in self.selected]
        return chosen

    # -- running ------------------------------------------------------------------------------

    async def connect(self) -> None:
        options: dict[str, Any] = {
            "servers": [u.strip() for u in self.nats_url.split(",") if u.strip()],
            "name": f"{self.app.name or 'app'}-python-worker",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
        }
        env = os.environ
        if env.get("AUTONOMOUS_NATS_USER"):
            options["user"] = env["AUTONOMOUS_NATS_USER"]
            options["password"] = env.get("AUTONOMOUS_NATS_PASSWORD", "")
        if env.get("AUTONOMOUS_NATS_CREDS"):
            options["user_credentials"] = env["AUTONOMOUS_NATS_CREDS"]
        if env.get("AUTONOMOUS_NATS_CA") or env.get("AUTONOMOUS_NATS_CERT"):
            context = ssl.create_default_context(cafile=env.get("AUTONOMOUS_NATS_CA"))
            if env.get("AUTONOMOUS_NATS_CERT"):
                context.load_cert_chain(env["AUTONOMOUS_NATS_CERT"], env.get("AUTONOMOUS_NATS_KEY"))
            options["tls"] = context

        async def on_error(error: Exception) -> None:
            log.warning("NATS connection problem: %s", error)

        options["error_cb"] = on_error
        self.nc = await nats.connect(**options)
        self.js = self.nc.jetstream(timeout=5)

    def stop(self) -> None:
        """Begins the graceful drain (what SIGTERM and SIGINT do)."""
        self._stopping.set()

    async def run(self, install_signals: bool = True) -> None:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        handlers = self.python_handlers()
        self.loop = asyncio.get_running_loop()
        await self.connect()
        log.info(
            "Python worker started (tenant %s): handlers %s; routes %s",
            self.tenant,
            ", ".join(h.name for h in handlers) or "none",
            ", ".join(f"{r.method} {r.path}" for r in self.app.routes) or "none",
        )
        health = None
        if self.health_port is not None:
            health = await self._serve_health(self.health_host, self.health_port)
        route_subscription = None
        if self.app.routes:
            route_subscription = await self.nc.subscribe(
                _wire.route_subject("python"), queue=_wire.ROUTE_QUEUE, cb=self._on_route_request
            )
            self._routes_live = True
        loops = [
            asyncio.create_task(self._fetch_loop(handler, slot), name=f"{handler.name}-{slot}")
            for handler in handlers
            if not handler.options.ordered_by
            for slot in range(handler.options.concurrency)
        ]
        self._expected_loops = len(loops)
        loops += [
            asyncio.create_task(self._ordered(handler), name=f"{handler.name}-ordered") for handler in handlers if handler.options.ordered_by
        ]
        await self._stopping.wait()
        log.info("Stopping: finishing the batches under way")
        if route_subscription is not None:
            await route_subscription.unsubscribe()
        done, pending = await asyncio.wait(loops, timeout=self.shutdown_timeout) if loops else (set(), set())
        for task in pending:
            task.cancel()
        if self._route_tasks:
            await asyncio.wait(self._route_tasks, timeout=self.shutdown_timeout)
        try:
            await self.nc.drain()
        except Exception:  # a connection already closed has nothing to drain
            pass
        if health is not None:
            health.close()
        log.info("Python worker stopped: %d processed, %d retried, %d dead-lettered", self.processed, self.retried, self.dead_lettered)

    async def _wait_for_consumer(self, stream: str, consumer: str) -> None:
        warned = False
        while not self._stopping.is_set():
            try:
                await self.js.consumer_info(stream, consumer)
                return
            except nats.js.errors.NotFoundError:
                if not warned:
                    log.info("Waiting for the coordinator to provision consumer %s on stream %s", consumer, stream)
                    warned = True
            except Exception as error:  # the connection is (re)connecting
                log.debug("consumer check failed: %s", error)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=1)
            except asyncio.TimeoutError:
                pass

    def _source(self, handler: HandlerDefinition) -> tuple[str, str]:
        if handler.source_kind == "schedule":
            return _wire.tenant_stream(self.tenant), _wire.schedule_subject(self.tenant, handler.source)
        return _wire.table_stream(self.tenant, handler.source), _wire.table_subject(self.tenant, handler.source)

    async def _fetch_loop(self, handler: HandlerDefinition, slot: int) -> None:
        stream, _ = self._source(handler)
        consumer = _wire.consumer_name(handler.name)
        await self._wait_for_consumer(stream, consumer)
        subscription = await self.js.pull_subscribe_bind(consumer=consumer, stream=stream)
        self._bound.add(f"{handler.name}-{slot}")
        failures = 0
        while not self._stopping.is_set():
            try:
                messages = await subscription.fetch(handler.options.batch_size, timeout=max(handler.options.max_wait, 0.05))
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning("Fetching records for %s failed (will retry): %s", handler.name, error)
                await asyncio.sleep(min(1.0 * failures, 5.0))
                continue
            failures = 0
            if messages:
                await self._process(handler, messages)
        # Records that arrived for this loop but were never handled go back at once.
        pending = getattr(getattr(subscription, "_sub", None), "_pending_queue", None)
        while pending is not None and not pending.empty():
            msg = pending.get_nowait()
            if msg.reply and not (msg.headers or {}).get("Status"):
                try:
                    await msg.nak()
                except Exception:
                    break
        try:
            await subscription.unsubscribe()
        except Exception:
            pass

    def _count(self, handler: HandlerDefinition, which: int, n: int) -> None:
        self.counts.setdefault(handler.name, [0, 0, 0])[which] += n

    # -- health -------------------------------------------------------------------------------

    def ready(self) -> Optional[str]:
        """Why the worker is not ready, or None."""
        if self.nc is None or not self.nc.is_connected:
            return "not connected to NATS"
        if len(self._bound) < self._expected_loops:
            return f"{self._expected_loops - len(self._bound)} fetch loop(s) not bound to their consumers yet"
        if self.app.routes and not self._routes_live:
            return "not serving routes yet"
        return None

    def metrics(self) -> str:
        lines = []
        for name, index in (
            ("autonomous_worker_records_processed_total", 0),
            ("autonomous_worker_records_retried_total", 1),
            ("autonomous_worker_records_dead_lettered_total", 2),
        ):
            lines.append(f"# TYPE {name} counter")
            for handler, counts in sorted(self.counts.items()):
                lines.append(f'{name}{{handler="{handler}",runtime="python"}} {counts[index]}')
        return "\n".join(lines) + "\n"

    async def _serve_health(self, host: str, port: int) -> Any:
        async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=5)
                parts = line.decode("latin-1").split()
                path = parts[1] if len(parts) > 1 else "/"
                while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                    pass
                if path == "/healthz":
                    status, body, kind = 200, b'{"status":"ok"}', "application/json"
                elif path == "/readyz":
                    problem = self.ready()
                    status = 200 if problem is None else 503
                    body = json.dumps({"status": "ready"} if problem is None else {"status": "not ready", "reason": problem}).encode()
                    kind = "application/json"
                elif path == "/metrics":
                    status, body, kind = 200, self.metrics().encode(), "text/plain; version=0.0.4"
                else:
                    status, body, kind = 404, b'{"error":{"code":"not_found","message":"no such path"}}', "application/json"
                reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except Exception:
                pass
            finally:
                writer.close()

        return await asyncio.start_server(respond, host, port)

    # -- ordered handlers (docs/wire.md, "Partitioned tables") --------------------------------

    async def _ordered(self, handler: HandlerDefinition) -> None:
        """Holds the partitions the coordinators lease this process (renewed every third of the
        lease), runs each one's records in order, and hands them back when stopping."""
        worker_id = f"python-{uuid.uuid4().hex}"
        held: dict[int, int] = {}
        released: list[int] = []
        leases: dict[int, _Lease] = {}
        tasks: set[asyncio.Task[Any]] = set()
        ttl = 6.0
        warned = False
        log.info("Ordered handler %s started (%d partitions, worker %s)", handler.name, handler.options.partitions, worker_id)
        while not self._stopping.is_set():
            for partition, lease in list(leases.items()):
                if lease.finished:
                    del leases[partition]
                    if held.pop(partition, None) is not None:
                        released.append(partition)
            sent = time.monotonic()
            try:
                answer = await self._assign(handler, worker_id, sorted(held), released)
                warned = False
                released = []
                ttl = max(0.3, answer["ttl_ms"] / 1000)
                deadline = sent + ttl - max(ttl / 10, 0.1)
                granted = {int(p): int(t) for p, t in answer["granted"].items() if 0 <= int(p) < handler.options.partitions}
                for partition, token in sorted(granted.items()):
                    if held.get(partition) == token and partition in leases:
                        leases[partition].extend(deadline)
                        continue
                    if partition in leases:
                        leases.pop(partition).lose()
                    held[partition] = token
                    lease = _Lease(partition, token, deadline)
                    leases[partition] = lease
                    task = asyncio.create_task(self._run_partition(handler, lease))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                for partition in [p for p in held if p not in granted]:
                    del held[partition]
                    if partition in leases:
                        leases.pop(partition).lose()
                for partition in set(answer.get("revoke", [])):
                    if partition in leases:
                        leases[partition].drain()
            except Exception as error:
                if not warned:
                    log.warning("Cannot renew the partition leases of %s; working on until they expire: %s", handler.name, error)
                    warned = True
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=max(ttl / 3, 0.1))
            except asyncio.TimeoutError:
                pass
        for lease in leases.values():
            lease.drain()
        if tasks:
            await asyncio.wait(tasks, timeout=self.shutdown_timeout)
        hand_back = sorted(set(held) | set(released))
        if hand_back:
            try:
                await self._assign(handler, worker_id, [], hand_back)
            except Exception:
                pass  # the leases expire on their own
        log.info("Ordered handler %s stopped", handler.name)

    async def _assign(self, handler: HandlerDefinition, worker_id: str, held: list[int], released: list[int]) -> dict[str, Any]:
        request = {"v": 1, "tenant": self.tenant, "handler": handler.name, "worker": worker_id, "held": held, "released": released}
        reply = await self.nc.request(_wire.PARTITION_SUBJECT, json.dumps(request).encode(), timeout=5)
        answer = json.loads(reply.data)
        if "error" in answer:
            raise RuntimeError(f"{answer['error'].get('code')}: {answer['error'].get('message')}")
        return answer

    async def _run_partition(self, handler: HandlerDefinition, lease: "_Lease") -> None:
        stream = _wire.table_stream(self.tenant, handler.source)
        consumer = _wire.partition_consumer_name(handler.name, lease.partition)
        subscription = None
        try:
            while subscription is None and lease.may_work and not self._stopping.is_set():
                try:
                    await self._resume_at_ack_floor(handler, stream, consumer, lease.partition)
                    subscription = await self.js.pull_subscribe_bind(consumer=consumer, stream=stream)
                except Exception as error:
                    log.info("Waiting for the consumer of partition %d of %s: %s", lease.partition, handler.name, error)
                    await asyncio.sleep(0.25)
            failures = 0
            while subscription is not None and lease.may_work and not self._stopping.is_set():
                try:
                    wait = min(max(handler.options.max_wait, 0.05), max(0.05, lease.remaining))
                    messages = await subscription.fetch(handler.options.batch_size, timeout=wait)
                except nats.errors.TimeoutError:
                    continue
                except Exception as error:
                    failures += 1
                    if failures == 1 or failures % 50 == 0:
                        log.warning("Fetching partition %d of %s failed: %s", lease.partition, handler.name, error)
                    await asyncio.sleep(min(2.0, 0.1 * failures))
                    continue
                failures = 0
                # A batch fetched as the lease ran out stays unacknowledged: the next holder
                # starts from the ack floor.
                if not lease.valid:
                    break
                await self._process_ordered(handler, messages, lease)
        finally:
            lease.finished = True
            if subscription is not None:
                try:
                    await subscription.unsubscribe()
                except Exception:
                    pass

    async def _resume_at_ack_floor(self, handler: HandlerDefinition, stream: str, consumer: str, partition: int) -> None:
        """Re-creates the consumer at its ack floor when a previous holder left a batch
        unacknowledged, so it is delivered again now and in order."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        info = await self.js.consumer_info(stream, consumer)
        if not info.num_ack_pending:
            return
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        log.info("Partition %d of %s taken over with %d unacknowledged; resuming at %d", partition, handler.name, info.num_ack_pending, floor)
        await self.js.delete_consumer(stream, consumer)
        await self.js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=consumer,
                filter_subject=f"{_wire.table_subject(self.tenant, handler.source)}.{partition}",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_ack_pending=handler.options.batch_size,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=floor + 1,
                description=f"Autonomous ordered handler {handler.name}, partition {partition}",
            ),
        )

    async def _process_ordered(self, handler: HandlerDefinition, messages: list[Msg], lease: "_Lease") -> None:
        """A batch in stream order: at once, else record by record, each failing record retried
        in place before any later one."""
        ordered: list[Msg] = []
        for msg in sorted(messages, key=lambda m: _delivery(m)[0]):
            replay_for = (msg.headers or {}).get(_wire.Header.REPLAY_FOR)
            if replay_for is not None and replay_for != handler.name:
                await msg.ack()
            elif ordered and _delivery(ordered[-1])[0] == _delivery(msg)[0]:
                if _delivery(msg)[1] > _delivery(ordered[-1])[1]:
                    ordered[-1] = msg
            else:
                ordered.append(msg)
        if not ordered:
            return
        if all(_delivery(m)[1] == 1 for m in ordered):
            if await self._attempt(handler, ordered) is None:
                await asyncio.gather(*(m.ack() for m in ordered))
                self.processed += len(ordered)
                self._count(handler, 0, len(ordered))
                return
        gate = self._gates.setdefault(handler.name, asyncio.Lock())
        for msg in ordered:
            stopped = None
            noted = _delivery(msg)[1] > 1
            sequence = _delivery(msg)[0]
            if noted:
                await gate.acquire()
                try:
                    stops = await self._note_run_starts(handler, sequence)
                except Exception:
                    gate.release()
                    return  # NATS is not answering: the batch comes back after the ack wait
                if stops >= 1 and stops + 1 >= handler.options.max_attempts:
                    stopped = ProcessStoppedError(stops + 1)
            try:
                settled = await self._settle(handler, msg, lease, stopped)
            finally:
                if noted:
                    await self._note_run_ended(handler, sequence)
                    gate.release()
            if not settled:
                return

    async def _settle(self, handler: HandlerDefinition, msg: Msg, lease: "_Lease", stopped: Optional[BaseException]) -> bool:
        """Runs one record until it is acknowledged or dead-lettered, retrying in place; False
        when the lease ran out first."""
        attempt = _delivery(msg)[1]
        metadata = _metadata(msg, handler.source, self.tenant)
        first = _now()
        while True:
            if not lease.valid:
                return False
            if stopped is not None:
                error, stopped = stopped, None
            else:
                error = await self._attempt(handler, [msg])
            if error is None:
                await msg.ack()
                self.processed += 1
                self._count(handler, 0, 1)
                return True
            if _is_transient(error):
                await asyncio.sleep(0.5)
                continue
            if isinstance(error, (UndecodableRecordError, ProcessStoppedError)) or attempt >= handler.options.max_attempts:
                try:
                    await self._dead_letter(handler, msg, metadata, error, attempt, first)
                except Exception as publish_error:
                    log.warning("Dead-letter publish failed, will retry: %s", publish_error)
                    await asyncio.sleep(0.5)
                    continue
                await msg.term()
                self.dead_lettered += 1
                self._count(handler, 2, 1)
                log.warning("Record %s moved to dead-letter subject of %s; its partition moves on: %s", metadata.id, handler.name, error)
                return True
            log.info("Ordered handler %s failed on record %s (attempt %d); retrying it before any later one: %s", handler.name, metadata.id, attempt, error)
            self.retried += 1
            self._count(handler, 1, 1)
            delay = min(handler.options.backoff(attempt), max(0.0, lease.remaining))
            beat = asyncio.create_task(self._heartbeat([msg]))
            try:
                await asyncio.sleep(delay)
            finally:
                beat.cancel()
            attempt += 1

    # -- batches ------------------------------------------------------------------------------

    async def _process(self, handler: HandlerDefinition, messages: list[Msg]) -> None:
        fresh: list[Msg] = []
        again: list[Msg] = []
        for msg in messages:
            replay_for = (msg.headers or {}).get(_wire.Header.REPLAY_FOR)
            if replay_for is not None and replay_for != handler.name:
                # A replayed dead letter for another handler of this table: not ours.
                await msg.ack()
                continue
            if _delivery(msg)[1] > 1:
                again.append(msg)
            else:
                fresh.append(msg)
        gate = self._gates.setdefault(handler.name, asyncio.Lock())
        for msg in again:
            sequence = _delivery(msg)[0]
            async with gate:
                try:
                    stops = await self._note_run_starts(handler, sequence)
                except Exception as error:
                    await self._fail(handler, msg, error)
                    continue
                try:
                    if stops >= 1 and stops + 1 >= handler.options.max_attempts:
                        await self._fail(handler, msg, ProcessStoppedError(stops + 1))
                    else:
                        await self._run_alone(handler, msg)
                finally:
                    await self._note_run_ended(handler, sequence)
        if fresh:
            error = await self._attempt(handler, fresh)
            if error is None:
                await asyncio.gather(*(msg.ack() for msg in fresh))
                self.processed += len(fresh)
                self._count(handler, 0, len(fresh))
            elif len(fresh) > 1 and not _is_transient(error):
                for msg in fresh:
                    await self._run_alone(handler, msg)
            else:
                for msg in fresh:
                    await self._fail(handler, msg, error)

    async def _run_alone(self, handler: HandlerDefinition, msg: Msg) -> None:
        error = await self._attempt(handler, [msg])
        if error is None:
            await msg.ack()
            self._first_failures.pop(_metadata(msg, handler.source, self.tenant).id, None)
            self.processed += 1
            self._count(handler, 0, 1)
        else:
            await self._fail(handler, msg, error)

    def _records(self, handler: HandlerDefinition, messages: list[Msg], lineage: _Lineage) -> Records[Any]:
        table = self.app.tables.get(handler.source)
        entries: list[Entry[Any]] = []
        for msg in messages:
            metadata = _metadata(msg, handler.source, self.tenant)
            try:
                body = _json.loads(msg.data)
                value = table.decode_value(body) if table is not None else body
            except Exception as error:
                raise UndecodableRecordError(f"record {metadata.id} does not fit its table's type: {error}") from None
            entries.append(Entry(value, metadata))
        return Records(entries, lineage)

    async def _attempt(self, handler: HandlerDefinition, messages: list[Msg]) -> Optional[BaseException]:
        """Runs the handler on `messages` and publishes its outputs; returns the error, if any."""
        lineage = _Lineage()
        ctx = HandlerContext(self, handler, self.tenant, lineage)
        heartbeat = asyncio.create_task(self._heartbeat(messages))
        try:
            records = self._records(handler, messages, lineage)
            await asyncio.wait_for(self._invoke(handler, records, ctx, lineage), timeout=handler.options.timeout)
            await self._publish(ctx.outputs)
            return None
        except asyncio.TimeoutError:
            return HandlerTimeoutError(f"the handler did not finish within {handler.options.timeout} s (its timeout); it was cancelled")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not isinstance(error, (UndecodableRecordError, LineageError, UndeclaredWriteError)):
                log.debug("handler %s failed: %s", handler.name, "".join(traceback.format_exception(error)))
            return error
        finally:
            heartbeat.cancel()

    async def _invoke(self, handler: HandlerDefinition, records: Records[Any], ctx: HandlerContext, lineage: _Lineage) -> None:
        function = handler.function
        assert function is not None
        with_context = takes_context_argument(function)
        if handler.source_kind == "schedule":

            def run_ticks() -> Any:
                # One tick at a time, each the source of what is appended while it runs.
                results = []
                for entry in records.entries:
                    lineage.current = entry.metadata
                    lineage.owner = _identity()
                    results.append(function(entry.value, ctx) if with_context else function(entry.value))
                return results

            if inspect.iscoroutinefunction(function):
                for entry in records.entries:
                    lineage.current = entry.metadata
                    lineage.owner = _identity()
                    await _in_context(ctx, lambda e=entry: function(e.value, ctx) if with_context else function(e.value))
                lineage.current = None
                return
            await _in_thread(ctx, run_ticks)
            return
        if inspect.iscoroutinefunction(function):
            await _in_context(ctx, lambda: function(records, ctx) if with_context else function(records))
        else:
            await _in_thread(ctx, lambda: function(records, ctx) if with_context else function(records))

    async def _publish(self, outputs: list[tuple[str, bytes, dict[str, str]]]) -> None:
        """Publishes outputs in order, pipelined, and waits for every PubAck (a stream stores
        one table's outputs in the order they were appended, which ordered handlers rely on)."""
        if not outputs:
            return
        futures = []
        try:
            for subject, body, headers in outputs:
                futures.append(await self.js.publish_async(subject, body, headers=headers, wait_stall=PUBLISH_TIMEOUT))
            await asyncio.wait_for(asyncio.gather(*futures), timeout=PUBLISH_TIMEOUT)
        except BaseException:
            for future in futures:
                future.cancel()  # frees its slot; a late PubAck is ignored
            raise

    async def _heartbeat(self, messages: list[Msg]) -> None:
        interval = max(self.ack_wait / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            for msg in messages:
                try:
                    await msg.in_progress()
                except Exception:
                    pass

    async def _fail(self, handler: HandlerDefinition, msg: Msg, error: BaseException) -> None:
        attempt = _delivery(msg)[1]
        metadata = _metadata(msg, handler.source, self.tenant)
        first = self._first_failures.get(metadata.id)
        if first is None:
            if len(self._first_failures) >= 10_000:
                self._first_failures.pop(next(iter(self._first_failures)))
            first = self._first_failures[metadata.id] = _now()
        permanent = isinstance(error, (UndecodableRecordError, ProcessStoppedError))
        if _is_transient(error) or (not permanent and attempt < handler.options.max_attempts):
            delay = handler.options.backoff(attempt)
            log.info("Handler %s failed on record %s (attempt %d), will retry: %s", handler.name, metadata.id, attempt, error)
            try:
                await msg.nak(delay=delay)
            except Exception:
                pass
            self.retried += 1
            self._count(handler, 1, 1)
            return
        try:
            await self._dead_letter(handler, msg, metadata, error, attempt, first)
        except Exception as publish_error:
            log.warning("Dead-letter publish failed, will retry: %s", publish_error)
            try:
                await msg.nak(delay=handler.options.backoff(attempt))
            except Exception:
                pass
            return
        self._first_failures.pop(metadata.id, None)
        await msg.term()
        self.dead_lettered += 1
        self._count(handler, 2, 1)
        log.warning("Record %s moved to dead-letter subject of %s after %d attempts: %s", metadata.id, handler.name, attempt, error)

    async def _dead_letter(
        self, handler: HandlerDefinition, msg: Msg, metadata: RecordMetadata, error: BaseException, attempts: int, first: str
    ) -> None:
        text = " ".join(str(error).splitlines()) or type(error).__name__
        if len(text.encode()) > 1024:
            text = text[:1000] + "…"
        _, subject = self._source(handler)
        headers = {
            _wire.Header.MESSAGE_ID: f"dlq-{handler.name}-{metadata.id}",
            _wire.Header.RECORD_ID: metadata.id,
            _wire.Header.TABLE: handler.source,
            _wire.Header.TENANT: self.tenant,
            _wire.Header.HANDLER: handler.name,
            _wire.Header.ERROR: text,
            _wire.Header.ATTEMPTS: str(attempts),
            _wire.Header.FIRST_FAILURE: first,
            _wire.Header.LAST_FAILURE: _now(),
            _wire.Header.SOURCE_SUBJECT: msg.subject or subject,
        }
        if metadata.semantic_type:
            headers[_wire.Header.TYPE] = metadata.semantic_type
        if metadata.caused_by:
            headers[_wire.Header.CAUSED_BY] = metadata.caused_by
        await self.js.publish(_wire.dead_letter_subject(self.tenant, handler.name), msg.data, headers=headers)

    # -- run notes (docs/wire.md, "Poison records") ---------------------------------------------

    async def _note_run_starts(self, handler: HandlerDefinition, sequence: int) -> int:
        subject = _wire.run_subject(self.tenant, handler.name, sequence)
        try:
            previous = await self.js.get_last_msg(_wire.tenant_stream(self.tenant), subject)
            stops = int(previous.data.decode()) if previous.data else 0
        except nats.js.errors.NotFoundError:
            stops = 0
        except ValueError:
            stops = 0
        await self.js.publish(subject, str(stops + 1).encode())
        return stops

    async def _note_run_ended(self, handler: HandlerDefinition, sequence: int) -> None:
        subject = _wire.run_subject(self.tenant, handler.name, sequence)
        try:
            await self.js.purge_stream(_wire.tenant_stream(self.tenant), subject=subject)
        except Exception as error:
            log.warning("Could not remove run note %s: %s", subject, error)

    # -- routes -------------------------------------------------------------------------------

    def _find_route(self, method: str, path: str) -> Optional[RouteDefinition]:
        for route in self.app.routes:
            if route.method == method and route.path == path:
                return route
        return None

    async def _on_route_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._serve_route(msg))
        self._route_tasks.add(task)
        task.add_done_callback(self._route_tasks.discard)

    async def _serve_route(self, msg: Msg) -> None:
        reply = await self._route_reply(msg.data)
        data = json.dumps(reply, default=_json._default, separators=(",", ":"), ensure_ascii=False).encode()
        if len(data) > self.nc.max_payload - 1024:
            data = json.dumps(
                {"error": {"status": 500, "code": "response_too_large", "message": "the route's response is larger than NATS carries"}}
            ).encode()
        if msg.reply:
            await self.nc.publish(msg.reply, data)

    async def _route_reply(self, data: bytes) -> dict[str, Any]:
        try:
            envelope = json.loads(data)
            if envelope.get("v") != 1:
                raise ValueError(f"envelope version {envelope.get('v')}")
            tenant = envelope["tenant"]
            if _wire.name_problem(tenant, "tenant"):
                raise ValueError("bad tenant")
            method, pattern = envelope["method"], envelope["route"]
            body = base64.b64decode(envelope.get("body", ""))
        except Exception as error:
            log.error("A route request could not be read: %s", error)
            return {"error": {"status": 502, "code": "bad_route_request", "message": "the route request was malformed"}}
        route = self._find_route(method, pattern)
        if route is None:
            return {"error": {"status": 404, "code": "not_found", "message": f"no Python route {method} {pattern} in this app"}}
        request = Request(
            method=method,
            path=envelope.get("path", pattern),
            body=body,
            headers={k.lower(): v for k, v in (envelope.get("headers") or {}).items()},
            query=envelope.get("query") or {},
            parameters=envelope.get("parameters") or {},
            tenant=tenant,
        )
        ctx = RouteContext(self, tenant, envelope.get("idempotency_key"), envelope.get("traceparent"))
        function = route.function
        try:
            if inspect.iscoroutinefunction(function):
                result = await _in_context(ctx, lambda: function(request))
            else:
                result = await _in_thread(ctx, lambda: function(request))
        except RouteError as error:
            return {"error": _route_error(error)}
        except ReadError as error:
            body = {"status": error.status, "code": error.code, "message": str(error)}
            if error.field:
                body["field"] = error.field
            return {"error": body}
        except (ConfigurationError, ValueError, TypeError) as error:
            if ctx.outputs or "record" in str(error) or "JSON" in str(error):
                return {"error": {"status": 422, "code": "invalid_record", "message": str(error)}}
            log.error("Route %s %s failed:\n%s", method, pattern, traceback.format_exc())
            return {"error": {"status": 500, "code": "internal_error", "message": "the route failed; see the Python worker's log"}}
        except Exception:
            log.error("Route %s %s failed:\n%s", method, pattern, traceback.format_exc())
            return {"error": {"status": 500, "code": "internal_error", "message": "the route failed; see the Python worker's log"}}
        try:
            await self._publish(ctx.outputs)
        except Exception as error:
            log.warning("A route's appends were not stored: %s", error)
            return {"error": {"status": 503, "code": "unavailable", "message": "the records could not be stored; try again", "retry_after": 1}}
        return _route_response(result)


def _route_error(error: RouteError) -> dict[str, Any]:
    body: dict[str, Any] = {"status": error.status, "code": error.code, "message": error.message}
    if error.field:
        body["field"] = error.field
    return body


def _route_response(result: Any) -> dict[str, Any]:
    if result is None:
        return {"status": 200, "json": {"status": "ok"}}
    if isinstance(result, bool):
        return {"status": 200, "json": result}
    if isinstance(result, int):
        return {"status": result}
    if isinstance(result, Response):
        reply: dict[str, Any] = {"status": result.status, "headers": result.headers}
        if result.body is not None:
            reply["body"] = base64.b64encode(result.body).decode()
            if result.content_type:
                reply["content_type"] = result.content_type
        elif result.json is not None:
            reply["json"] = result.json
        return reply
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int):
        return {"status": result[1], "json": result[0]}
    return {"status": 200, "json": result}


async def _in_context(ctx: _Context, call: Callable[[], Any]) -> Any:
    """Runs an async function with `ctx` as the target of its appends."""
    token = _current_context.set(ctx)
    try:
        return await call()
    finally:
        _current_context.reset(token)


async def _in_thread(ctx: _Context, call: Callable[[], Any]) -> Any:
    """Runs a plain function in a thread (it may block: HTTP calls, files), with `ctx` as the
    target of its appends."""
    context = contextvars.copy_context()
    context.run(_current_context.set, ctx)
    return await asyncio.get_running_loop().run_in_executor(None, context.run, call)
