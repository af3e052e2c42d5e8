"""Declaring an app: tables, handlers, routes, webhooks and schedules.

Everything declared here is described as the app graph (`python -m autonomous describe
main.py`, the same JSON as a Swift app's `describe`); the `autonomous` command serves the
ingress and coordinator from it, and `python -m autonomous worker main.py` runs the Python
functions.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import os
import re
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar, Union, overload

from . import _json, _wire

FORMAT_VERSION = 1
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class ConfigurationError(Exception):
    """The app cannot run as declared; the message names what to fix."""


class AppGraphError(ConfigurationError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the app graph is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


class LineageError(Exception):
    """An append whose source record cannot be known, so its id would not be reproducible."""


class UndeclaredWriteError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Secrets and verification


@dataclass(frozen=True)
class Secret:
    """A secret held in an environment variable, read when it is used (never logged)."""

    name: str

    def value(self) -> str:
        found = os.environ.get(self.name)
        if not found:
            raise ConfigurationError(f"missing secret: set the environment variable {self.name}")
        return found

    def __repr__(self) -> str:
        return f"secret({self.name})"


def secret(name: str) -> Secret:
    return Secret(name)


@dataclass(frozen=True)
class Verification:
    """How a route or webhook checks who sends a request (see `verify`)."""

    label: str
    secret: Optional[Secret] = None
    tolerance_seconds: Optional[float] = None


class verify:
    """The verifications the ingress performs before a route or webhook runs."""

    api_key = Verification("api-key")
    unauthenticated = Verification("unauthenticated")

    @staticmethod
    def slack(signing_secret: Union[str, Secret], tolerance_seconds: float = 300) -> Verification:
        return Verification("slack", _as_secret(signing_secret), tolerance_seconds)

    @staticmethod
    def github(secret: Union[str, Secret]) -> Verification:
        return Verification("github", _as_secret(secret))

    @staticmethod
    def stripe(signing_secret: Union[str, Secret], tolerance_seconds: float = 300) -> Verification:
        return Verification("stripe", _as_secret(signing_secret), tolerance_seconds)

    @staticmethod
    def standard_webhooks(secret: Union[str, Secret], tolerance_seconds: float = 300) -> Verification:
        return Verification("standard-webhooks", _as_secret(secret), tolerance_seconds)

    @staticmethod
    def shopify(secret: Union[str, Secret]) -> Verification:
        return Verification("shopify", _as_secret(secret))


def _as_secret(value: Union[str, Secret]) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class RecordMetadata:
    """What the stream says about a record: its id, table, lineage and place."""

    id: str
    table: str
    tenant: str
    sequence: int = 0
    delivery_count: int = 1
    caused_by: Optional[str] = None
    semantic_type: Optional[str] = None
    traceparent: Optional[str] = None
    #: When the stream stored it, in nanoseconds since 1970 (0: not known).
    timestamp_ns: int = 0
    #: The same as an ISO 8601 text, when it came that way (a read).
    stored_at: Optional[str] = None

    @property
    def timestamp(self) -> Optional[str]:
        """When the stream stored the record, ISO 8601 UTC."""
        if self.stored_at is not None:
            return self.stored_at
        if not self.timestamp_ns:
            return None
        import datetime as _datetime

        moment = _datetime.datetime.fromtimestamp(self.timestamp_ns / 1e9, _datetime.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Entry(Generic[T]):
    value: T
    metadata: RecordMetadata


class _Lineage:
    """Which record the loop over a batch is on, and in which task or thread, so that an append
    naming no source gets the id a redelivery reproduces (docs/wire.md, "Messages")."""

    def __init__(self) -> None:
        self.current: Optional[RecordMetadata] = None
        self.owner: Any = None


def _identity() -> Any:
    import asyncio

    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else ("thread", threading.get_ident())


class Records(Generic[T]):
    """A batch of new records. Iterating it yields each record's value; an append inside the
    loop is caused by the record the loop is on. `entries` carries the metadata too."""

    def __init__(self, entries: list[Entry[T]], lineage: Optional[_Lineage] = None) -> None:
        self.entries = entries
        self._lineage = lineage

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[T]:
        lineage = self._lineage
        try:
            for entry in self.entries:
                if lineage is not None:
                    lineage.current = entry.metadata
                    lineage.owner = _identity()
                yield entry.value
        finally:
            if lineage is not None:
                lineage.current = None

    def __getitem__(self, index: int) -> T:
        return self.entries[index].value

    def each(self, body: Callable[[T], Any]) -> None:
        """Runs `body` on every record, each append in it caused by that record."""
        for value in self:
            body(value)

    def map(self, transform: Callable[[T], Any]) -> "Derived":
        """Values derived record by record, each keeping its source's lineage."""
        return Derived([(transform(e.value), e.metadata) for e in self.entries])

    def filter(self, keep: Callable[[T], bool]) -> "Records[T]":
        return Records([e for e in self.entries if keep(e.value)], self._lineage)

    @property
    def ids(self) -> list[str]:
        return [e.metadata.id for e in self.entries]


@dataclass
class Page(Generic[T]):
    """One page of a read: entries (value and metadata) and the cursor of the next page."""

    entries: list[Entry[T]]
    next_cursor: Optional[str]

    def __iter__(self) -> Iterator[T]:
        return (e.value for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _time_text(value: Any) -> Optional[str]:
    import datetime as _datetime

    if value is None:
        return None
    if isinstance(value, _datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_datetime.timezone.utc)
        return value.astimezone(_datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, (int, float)):
        return repr(float(value))
    return str(value)


def _read_query(
    since: Any, until: Any, since_sequence: Optional[int], where: Optional[dict[str, Any]], order: Optional[str], limit: Optional[int], cursor: Optional[str]
) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if since is not None:
        query["since"] = _time_text(since)
    if until is not None:
        query["until"] = _time_text(until)
    if since_sequence is not None:
        query["since_sequence"] = str(since_sequence)
    if where is not None:
        query["where"] = _json.dumps(where).decode()
    if order is not None:
        query["order"] = order
    if limit is not None:
        query["limit"] = str(limit)
    if cursor is not None:
        query["cursor"] = cursor
    return query


class ReadError(Exception):
    """A read the runtime refused or could not answer (`status`, `code`, `field` as the HTTP API's)."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field


class Derived:
    """Records derived from a batch (`records.map(...)`): values with their sources."""

    def __init__(self, pairs: list[tuple[Any, RecordMetadata]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Any]:
        return (value for value, _ in self.pairs)


# ---------------------------------------------------------------------------------------------
# The context appends go to


class _Context:
    """Where appends of the running handler or route go (set by the worker)."""

    kind = "none"

    def append(self, table: "Table[Any]", bodies: list[tuple[bytes, Optional[RecordMetadata]]]) -> None:
        raise ConfigurationError(
            f"append to table '{table.name}' outside a handler, route or schedule: appends are published by the "
            "function that makes them (run the app with `autonomous dev main.py`)"
        )

    def read(self, table: "Table[Any]", query: dict[str, Any], count: bool) -> Any:
        raise ConfigurationError(f"read of table '{table.name}' outside a handler, route or schedule")

    async def aread(self, table: "Table[Any]", query: dict[str, Any], count: bool) -> Any:
        raise ConfigurationError(f"read of table '{table.name}' outside a handler, route or schedule")


_current_context: contextvars.ContextVar[_Context] = contextvars.ContextVar("autonomous_context", default=_Context())


def current_context() -> _Context:
    return _current_context.get()


# ---------------------------------------------------------------------------------------------
# Handlers, schedules, routes


@dataclass
class HandlerOptions:
    batch_size: int = 256
    max_wait: float = 0.5
    concurrency: int = 2
    max_attempts: int = 5
    retry_backoff: tuple[float, ...] = (1, 5, 30, 120)
    max_ack_pending: Optional[int] = None
    timeout: float = 300
    ordered_by: Optional[str] = None
    partitions: int = 16

    def backoff(self, attempt: int) -> float:
        if not self.retry_backoff:
            return 1.0
        return float(self.retry_backoff[min(max(attempt - 1, 0), len(self.retry_backoff) - 1)])


@dataclass
class HandlerDefinition:
    name: str
    source: str
    source_kind: str  # "table" or "schedule"
    options: HandlerOptions
    function: Optional[Callable[..., Any]] = None
    outputs: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    component: Optional[str] = None
    component_config: Optional[dict[str, Any]] = None
    component_fields: list[str] = field(default_factory=list)
    runtime: Optional[str] = "python"


@dataclass
class RouteDefinition:
    method: str
    path: str
    verification: Verification
    function: Callable[..., Any]


@dataclass
class WebhookDefinition:
    path: str
    table: str
    verification: Verification


@dataclass
class ScheduleDefinition:
    name: str
    text: str
    cron: Optional[str] = None
    every_seconds: Optional[int] = None
    time_zone: str = "UTC"
    catch_up: str = "fire-once"


class App:
    """The app every declaration in the program goes to (`autonomous.app`)."""

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = name
        self.tables: dict[str, Table[Any]] = {}
        self.handlers: list[HandlerDefinition] = []
        self.routes: list[RouteDefinition] = []
        self.webhooks: list[WebhookDefinition] = []
        self.schedules: list[ScheduleDefinition] = []
        self.problems: list[str] = []

    # -- checking -----------------------------------------------------------------------------

    def check(self) -> None:
        problems = list(self.problems)
        for table in self.tables.values():
            if p := _wire.name_problem(table.name, "table"):
                problems.append(p)
        names: set[str] = set()
        for schedule in self.schedules:
            if p := _wire.name_problem(schedule.name, "schedule"):
                problems.append(p)
        for handler in self.handlers:
            if p := _wire.name_problem(handler.name, "handler"):
                problems.append(p)
            if handler.name in names:
                problems.append(
                    f"two handlers are named '{handler.name}'; handler names must be unique (they name durable consumers)"
                )
            names.add(handler.name)
            o = handler.options
            if handler.source_kind == "table" and handler.source not in self.tables:
                problems.append(f"handler '{handler.name}' is bound to table '{handler.source}', which is not declared")
            if not 1 <= o.batch_size <= 10_000:
                problems.append(f"handler '{handler.name}': batch_size must be between 1 and 10000")
            if not 1 <= o.concurrency <= 64:
                problems.append(f"handler '{handler.name}': concurrency must be between 1 and 64")
            if o.max_attempts < 1:
                problems.append(f"handler '{handler.name}': max_attempts must be at least 1")
            if o.timeout <= 0:
                problems.append(f"handler '{handler.name}': timeout must be more than zero")
            if o.max_ack_pending is not None and o.max_ack_pending < o.batch_size:
                problems.append(f"handler '{handler.name}': max_ack_pending must be at least batch_size ({o.batch_size})")
            for output in handler.outputs:
                if output not in self.tables:
                    problems.append(f"handler '{handler.name}' writes to table '{output}', which is not declared")
            source = self.tables.get(handler.source)
            if source is not None and source.fields is not None:
                for needed in handler.component_fields:
                    if needed not in source.fields:
                        problems.append(
                            f"handler '{handler.name}' ({handler.component or 'handler'}) needs field '{needed}', but records "
                            f"of table '{source.name}' ({source.record_type_name}) have no such field"
                        )
            if o.ordered_by is not None:
                if handler.source_kind != "table":
                    problems.append(f"handler '{handler.name}': only handlers of tables can be ordered")
                if not 1 <= o.partitions <= 1024:
                    problems.append(f"handler '{handler.name}': partitions must be between 1 and 1024")
                if not o.ordered_by:
                    problems.append(f"handler '{handler.name}': ordered_by needs a field name")
                elif source is not None and source.fields is not None and o.ordered_by not in source.fields:
                    problems.append(
                        f"handler '{handler.name}' is ordered by '{o.ordered_by}', but records of table '{source.name}' "
                        f"({source.record_type_name}) have no such field"
                    )
        for table in self.tables.values():
            orderings = {(h.options.ordered_by, h.options.partitions) for h in self.handlers if h.source == table.name and h.options.ordered_by}
            if len(orderings) > 1:
                found = ", ".join(f"{f}/{n}" for f, n in sorted(orderings))
                problems.append(f"table '{table.name}': its ordered handlers must use the same key and partition count (found {found})")
        seen: set[str] = set()
        for route in self.routes:
            key = f"{route.method} {route.path}"
            if not route.path.startswith("/"):
                problems.append(f"route path '{route.path}' must start with '/'")
            if route.path in ("/healthz", "/readyz", "/metrics") or route.path.startswith("/v1/"):
                problems.append(f"route path '{route.path}' is reserved by the ingress")
            if key in seen:
                problems.append(f"route {key} is registered twice")
            seen.add(key)
        for webhook in self.webhooks:
            key = f"POST {webhook.path}"
            if key in seen:
                problems.append(f"route {key} is registered twice")
            seen.add(key)
            if webhook.table not in self.tables:
                problems.append(f"webhook {webhook.path} appends to table '{webhook.table}', which is not declared")
        if problems:
            raise AppGraphError(problems)

    # -- describing ---------------------------------------------------------------------------

    def writers(self, table: str) -> list[str]:
        return [h.name for h in self.handlers if table in h.outputs]

    def partitioning(self, table: str) -> Optional[tuple[str, int]]:
        """The key field and partition count of a table an ordered handler reads."""
        for h in self.handlers:
            if h.source == table and h.source_kind == "table" and h.options.ordered_by:
                return h.options.ordered_by, h.options.partitions
        return None

    def describe(self, tenant: str = "default") -> dict[str, Any]:
        """The app graph, as docs/wire.md ("The app graph") defines it."""
        self.check()
        tables: list[dict[str, Any]] = []
        for table in self.tables.values():
            entry: dict[str, Any] = {
                "name": table.name,
                "kind": "table",
                "semantic_type": table.semantic_type,
                "subject": _wire.table_subject(tenant, table.name),
                "stream": _wire.table_stream(tenant, table.name),
                "record_type": table.record_type_name,
            }
            if table.fields is not None:
                entry["fields"] = table.fields
                entry["required_fields"] = table.required_fields
            if table.record_api == "automatic":
                entry["record_api"] = "closed" if self.writers(table.name) else "open"
            else:
                entry["record_api"] = table.record_api
            if (partitioning := self.partitioning(table.name)) is not None:
                entry["partitioning"] = {"field": partitioning[0], "partitions": partitioning[1]}
            if table.storage:
                entry["storage"] = table.storage
            if table.retention:
                entry["retention"] = table.retention
            tables.append(entry)
        for schedule in self.schedules:
            tables.append(
                {
                    "name": schedule.name,
                    "kind": "schedule",
                    "semantic_type": "autonomous.tick@1",
                    "subject": _wire.schedule_subject(tenant, schedule.name),
                    "stream": _wire.tenant_stream(tenant),
                    "record_type": "Tick",
                    "fields": ["fire_time", "manual", "schedule"],
                    "required_fields": ["fire_time", "schedule"],
                }
            )
        handlers: list[dict[str, Any]] = []
        for h in self.handlers:
            o = h.options
            entry = {
                "name": h.name,
                "source": h.source,
                "source_kind": h.source_kind,
                "consumer": _wire.consumer_name(h.name),
                "batch_size": o.batch_size,
                "concurrency": o.concurrency,
                "max_attempts": o.max_attempts,
                "timeout_seconds": float(o.timeout),
                "dead_letter_subject": _wire.dead_letter_subject(tenant, h.name),
                "max_wait_seconds": float(o.max_wait),
                "retry_backoff_seconds": [float(b) for b in o.retry_backoff],
            }
            if h.runtime:
                entry["runtime"] = h.runtime
            if h.component:
                entry["component"] = h.component
            if h.component_config is not None:
                entry["component_config"] = h.component_config
            if h.outputs:
                entry["outputs"] = sorted(set(h.outputs))
            if h.secrets:
                entry["secrets"] = sorted(set(h.secrets))
            if o.max_ack_pending is not None:
                entry["max_ack_pending"] = o.max_ack_pending
            if o.ordered_by:
                entry["ordered_by"] = o.ordered_by
                entry["partitions"] = o.partitions
            handlers.append(entry)
        routes: list[dict[str, Any]] = []
        for r in self.routes:
            entry = {"method": r.method, "path": r.path, "kind": "route", "verification": r.verification.label, "runtime": "python"}
            _verification_fields(entry, r.verification)
            routes.append(entry)
        for w in self.webhooks:
            entry = {"method": "POST", "path": w.path, "kind": "webhook", "table": w.table, "verification": w.verification.label}
            _verification_fields(entry, w.verification)
            routes.append(entry)
        schedules: list[dict[str, Any]] = []
        for s in self.schedules:
            entry = {
                "name": s.name,
                "schedule": s.text,
                "time_zone": s.time_zone,
                "subject": _wire.schedule_subject(tenant, s.name),
                "catch_up": s.catch_up,
            }
            if s.cron is not None:
                entry["cron"] = s.cron
            if s.every_seconds is not None:
                entry["every_seconds"] = s.every_seconds
            schedules.append(entry)
        return {
            "format_version": FORMAT_VERSION,
            "app": self.name or "app",
            "tenant": tenant,
            "stream": _wire.tenant_stream(tenant),
            "tables": tables,
            "handlers": handlers,
            "routes": routes,
            "schedules": schedules,
        }


def _verification_fields(entry: dict[str, Any], verification: Verification) -> None:
    if verification.secret is not None:
        entry["secret"] = verification.secret.name
    if verification.tolerance_seconds is not None:
        entry["tolerance_seconds"] = float(verification.tolerance_seconds)


app = App()
"""The app of this program: every Table, route and schedule declared at import goes here."""


def set_app_name(name: str) -> None:
    """Names the app (`describe` shows it; deployments name processes after it)."""
    app.name = name


# ---------------------------------------------------------------------------------------------
# Tables


def _semantic_type_of(record_type: Any) -> str:
    declared = getattr(record_type, "semantic_type", None) or getattr(record_type, "__semantic_type__", None)
    if isinstance(declared, str):
        return declared if "@" in declared else declared + "@1"
    return "json@1"


def _fields_of(record_type: Any) -> tuple[Optional[list[str]], Optional[list[str]]]:
    """All top-level fields and the required ones, for dataclasses and pydantic models."""
    if dataclasses.is_dataclass(record_type):
        hints = typing.get_type_hints(record_type)
        every, required = [], []
        for f in dataclasses.fields(record_type):
            every.append(f.name)
            optional = type(None) in typing.get_args(hints.get(f.name))
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if not optional and not has_default:
                required.append(f.name)
        return sorted(every), sorted(required)
    model_fields = getattr(record_type, "model_fields", None)
    if isinstance(model_fields, dict):
        every = sorted(model_fields)
        required = sorted(name for name, info in model_fields.items() if info.is_required())
        return every, required
    return None, None


class Table(Generic[T]):
    """A reactive table: append records to it, react to its new ones.

    `Table("slack_mentions")` holds JSON objects; `Table("orders", Order)` holds records of a
    dataclass or pydantic model whose `semantic_type` class attribute names its type
    (`"shop.order@1"`).
    """

    def __init__(
        self,
        name: str,
        record_type: Optional[type[T]] = None,
        *,
        record_api: str = "automatic",
        storage: Optional[str] = None,
        retention: Optional[dict[str, int]] = None,
        app: Optional[App] = None,
    ) -> None:
        self.name = name
        self.record_type = record_type
        self.semantic_type = _semantic_type_of(record_type) if record_type is not None else "json@1"
        self.record_type_name = record_type.__name__ if record_type is not None else "JSON"
        self.fields, self.required_fields = _fields_of(record_type) if record_type is not None else (None, None)
        if record_api not in ("automatic", "open", "closed"):
            raise ConfigurationError(f"table '{name}': record_api must be 'automatic', 'open' or 'closed'")
        self.record_api = record_api
        self.storage = storage
        self.retention = retention
        self.app = app or globals()["app"]
        existing = self.app.tables.get(name)
        if existing is not None and existing.record_type_name != self.record_type_name:
            self.app.problems.append(
                f"table '{name}' is declared twice with different types ({existing.record_type_name} and {self.record_type_name})"
            )
        self.app.tables.setdefault(name, self)

    def __repr__(self) -> str:
        return f"Table({self.name!r})"

    # -- records ------------------------------------------------------------------------------

    def encode(self, record: Any) -> bytes:
        """The record's body; a typed table checks the record first."""
        if self.record_type is None:
            if not isinstance(record, dict):
                raise ConfigurationError(f"records appended to table '{self.name}' must be JSON objects (dicts)")
            return _json.dumps(record)
        value = self.decode_value(record) if isinstance(record, dict) else record
        if not isinstance(value, self.record_type):
            raise ConfigurationError(
                f"table '{self.name}' holds {self.record_type_name} records, not {type(record).__name__}"
            )
        return _json.dumps(value, sort_keys=True)

    def decode_value(self, body: Any) -> Any:
        """A record body (parsed JSON) as the table's record type."""
        if self.record_type is None:
            return body
        if not isinstance(body, dict):
            raise ValueError("a record must be a JSON object")
        validate = getattr(self.record_type, "model_validate", None)
        if callable(validate):
            return validate(body)
        if dataclasses.is_dataclass(self.record_type):
            known = {f.name for f in dataclasses.fields(self.record_type)}
            missing = [name for name in (self.required_fields or []) if name not in body]
            if missing:
                raise ValueError("missing required field" + ("s " if len(missing) > 1 else " ") + ", ".join(f"'{m}'" for m in missing))
            return self.record_type(**{k: v for k, v in body.items() if k in known})
        return self.record_type(**body)

    def append(self, record: Any, *, caused_by: Optional[Union[RecordMetadata, Entry[Any]]] = None) -> None:
        """Appends one record. In a handler its source is `caused_by`, else the record the loop
        over the batch is on; in a route it is published before the route answers."""
        cause = caused_by.metadata if isinstance(caused_by, Entry) else caused_by
        current_context().append(self, [(self.encode(record), cause)])

    def extend(self, records: Union[Iterable[Any], Records[Any], Derived]) -> None:
        """Appends many records: a batch's own (`records`), derived ones (`records.map(...)`),
        or any iterable (each caused by the record the loop is on)."""
        if isinstance(records, Records):
            bodies = [(self.encode(e.value), e.metadata) for e in records.entries]
        elif isinstance(records, Derived):
            bodies = [(self.encode(v), cause) for v, cause in records.pairs]
        else:
            bodies = [(self.encode(v), None) for v in records]
        if bodies:
            current_context().append(self, bodies)

    def append_summary(self, record: Any, records: Records[Any]) -> None:
        """Appends one record that sums up a whole batch: caused by the batch as a whole."""
        if not records.entries:
            raise LineageError(f"table '{self.name}': summarizing no records")
        first = records.entries[0].metadata
        if len(records.entries) == 1:
            cause = first
        else:
            cause = dataclasses.replace(first, id=_wire.batch_id(records.ids))
        current_context().append(self, [(self.encode(record), cause)])

    # -- reads --------------------------------------------------------------------------------

    def records(
        self,
        *,
        since: Any = None,
        until: Any = None,
        since_sequence: Optional[int] = None,
        where: Optional[dict[str, Any]] = None,
        order: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> "Page[T]":
        """A page of this tenant's records of the table, from the storage that keeps it (or its
        stream): newest first unless `order="oldest"`; `where` keeps records whose top-level
        fields equal the values given; `next_cursor` continues. In a plain (sync) function; an
        `async def` awaits `arecords` instead."""
        query = _read_query(since, until, since_sequence, where, order, limit, cursor)
        return self._page(current_context().read(self, query, False))

    async def arecords(
        self,
        *,
        since: Any = None,
        until: Any = None,
        since_sequence: Optional[int] = None,
        where: Optional[dict[str, Any]] = None,
        order: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> "Page[T]":
        query = _read_query(since, until, since_sequence, where, order, limit, cursor)
        return self._page(await current_context().aread(self, query, False))

    def count(self, *, since: Any = None, until: Any = None, where: Optional[dict[str, Any]] = None) -> int:
        """How many of this tenant's records match (as `records` selects them)."""
        return int(current_context().read(self, _read_query(since, until, None, where, None, None, None), True)["count"])

    async def acount(self, *, since: Any = None, until: Any = None, where: Optional[dict[str, Any]] = None) -> int:
        return int((await current_context().aread(self, _read_query(since, until, None, where, None, None, None), True))["count"])

    def _page(self, answer: dict[str, Any]) -> "Page[T]":
        entries = []
        for item in answer.get("records", []):
            metadata = RecordMetadata(
                id=item["id"],
                table=self.name,
                tenant="",
                sequence=int(item.get("sequence") or 0),
                caused_by=item.get("caused_by"),
                semantic_type=item.get("type"),
                stored_at=item.get("ingest_time"),
            )
            entries.append(Entry(self.decode_value(item["record"]), metadata))
        return Page(entries, answer.get("next_cursor"))

    # -- handlers -----------------------------------------------------------------------------

    @overload
    def on_new_records(self, function: F) -> F: ...

    @overload
    def on_new_records(self, function: "Component") -> None: ...

    @overload
    def on_new_records(
        self,
        function: None = None,
        *,
        name: Optional[str] = None,
        writes: Iterable["Table[Any]"] = (),
        secrets: Iterable[Union[str, Secret]] = (),
        batch_size: int = 256,
        max_wait: float = 0.5,
        concurrency: int = 2,
        max_attempts: int = 5,
        retry_backoff: Iterable[float] = (1, 5, 30, 120),
        max_ack_pending: Optional[int] = None,
        timeout: float = 300,
        ordered_by: Optional[str] = None,
        partitions: int = 16,
    ) -> Callable[[F], F]: ...

    def on_new_records(self, function: Any = None, **settings: Any) -> Any:
        """Runs a function (sync or `async def`) with every batch of new records:

            @mentions.on_new_records(writes=[prompts])
            def prompt_from_mention(records):
                for record in records:
                    prompts.append({"prompt": ...})

        also as a call (`mentions.on_new_records(fn)`), or with a component
        (`prompts.on_new_records(OpenAICompletion(...))`), which the Swift runtime runs.
        """
        from .components import Component

        if isinstance(function, Component):
            function.bind(self, **settings)
            return None
        if function is not None:
            self._add_handler(function, **settings)
            return function

        def decorate(fn: F) -> F:
            self._add_handler(fn, **settings)
            return fn

        return decorate

    def _add_handler(
        self,
        function: Callable[..., Any],
        *,
        name: Optional[str] = None,
        writes: Iterable["Table[Any]"] = (),
        secrets: Iterable[Union[str, Secret]] = (),
        batch_size: int = 256,
        max_wait: float = 0.5,
        concurrency: int = 2,
        max_attempts: int = 5,
        retry_backoff: Iterable[float] = (1, 5, 30, 120),
        max_ack_pending: Optional[int] = None,
        timeout: float = 300,
        ordered_by: Optional[str] = None,
        partitions: int = 16,
    ) -> None:
        if not callable(function):
            raise ConfigurationError(f"on_new_records of table '{self.name}' needs a function or a component")
        options = HandlerOptions(
            batch_size=batch_size,
            max_wait=max_wait,
            concurrency=concurrency,
            max_attempts=max_attempts,
            retry_backoff=tuple(retry_backoff),
            max_ack_pending=max_ack_pending,
            timeout=timeout,
            ordered_by=ordered_by,
            partitions=partitions,
        )
        self.app.handlers.append(
            HandlerDefinition(
                name=name or _handler_name(function),
                source=self.name,
                source_kind="table",
                options=options,
                function=function,
                outputs=[t.name for t in writes],
                secrets=[_as_secret(s).name for s in secrets],
            )
        )


def _handler_name(function: Callable[..., Any]) -> str:
    """A function's name as a handler name: `prompt_from_mention` → `prompt-from-mention`."""
    raw = getattr(function, "__name__", "handler")
    return re.sub(r"[^a-z0-9_-]", "-", raw.lower().replace("_", "-")).strip("-") or "handler"


# ---------------------------------------------------------------------------------------------
# Routes and webhooks


class Request:
    """An HTTP request as a route sees it (forwarded by the ingress after it checked the caller)."""

    def __init__(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        query: dict[str, str],
        parameters: dict[str, str],
        tenant: str,
    ) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.query = query
        self.parameters = parameters
        self.tenant = tenant

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The body as JSON; a malformed body makes the route answer 400."""
        try:
            return _json.loads(self.body)
        except ValueError as error:
            raise RouteError(400, "invalid_json", f"the body is not JSON: {error}", field="body") from None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Response:
    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Optional[bytes] = None
    content_type: Optional[str] = None


class RouteError(Exception):
    """Raise from a route to answer with a 4xx/5xx and `{"error": {"code", "message", "field"}}`."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def route(method: str, path: str, *, verify: Verification = verify.api_key, app: Optional[App] = None) -> Callable[[F], F]:
    """`method path` runs the decorated function (sync or async) with a `Request`. It may return
    an int (the status), a dict or list (200 with that JSON), a `Response`, or None (200)."""

    def decorate(function: F) -> F:
        (app or globals()["app"]).routes.append(RouteDefinition(method.upper(), path, verify, function))
        return function

    return decorate


def post(path: str, *, verify: Verification = verify.api_key) -> Callable[[F], F]:
    return route("POST", path, verify=verify)


def get(path: str, *, verify: Verification = verify.api_key) -> Callable[[F], F]:
    return route("GET", path, verify=verify)


def Webhook(path: str, table: Table[Any], *, verify: Verification = verify.api_key) -> WebhookDefinition:
    """`POST path` appends the verified request body (one JSON object) to `table`; the ingress
    does it alone, no Python runs."""
    definition = WebhookDefinition(path, table.name, verify)
    table.app.webhooks.append(definition)
    return definition


# ---------------------------------------------------------------------------------------------
# Schedules

_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")


def _seconds(interval: Union[int, float, str]) -> int:
    if isinstance(interval, (int, float)):
        return int(interval)
    match = _DURATION.match(interval.strip())
    if not match:
        raise ConfigurationError(f"interval '{interval}' must be a number of seconds or like '90s', '5m', '2h', '1d'")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class _Cron:
    """Schedules: `@cron("0 9 * * *")`, `@cron.daily("03:00")`, `@cron.every("5m")`,
    `@cron.hourly()`. The decorated function (sync or async) gets each tick
    (`{"schedule", "fire_time"}`); appends in it are caused by the tick."""

    def __call__(self, expression: str, *, name: Optional[str] = None, time_zone: str = "UTC", **settings: Any) -> Callable[[F], F]:
        return self._schedule(expression, name, cron=expression, time_zone=time_zone, **settings)

    def daily(self, at: Union[str, Callable[..., Any]] = "00:00", *, name: Optional[str] = None, time_zone: str = "UTC", **settings: Any) -> Any:
        if callable(at):  # `@cron.daily` without arguments: midnight UTC
            return self.daily("00:00")(at)
        match = re.match(r"^(\d{1,2}):(\d{2})$", at)
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise ConfigurationError(f"daily time '{at}' must be HH:mm")
        expression = f"{int(match.group(2))} {int(match.group(1))} * * *"
        return self._schedule(f"daily at {at}", name, cron=expression, time_zone=time_zone, **settings)

    def hourly(self, at_minute: int = 0, *, name: Optional[str] = None, **settings: Any) -> Callable[[F], F]:
        expression = f"{at_minute} * * * *"
        return self._schedule(expression, name, cron=expression, **settings)

    def every(self, interval: Union[int, float, str], *, name: Optional[str] = None, **settings: Any) -> Callable[[F], F]:
        seconds = _seconds(interval)
        if seconds < 1:
            raise ConfigurationError("an interval must be at least one second")
        return self._schedule(f"every {seconds}s", name, every_seconds=seconds, **settings)

    def _schedule(
        self,
        text: str,
        name: Optional[str],
        *,
        cron: Optional[str] = None,
        every_seconds: Optional[int] = None,
        time_zone: str = "UTC",
        catch_up: str = "fire-once",
        writes: Iterable[Table[Any]] = (),
        secrets: Iterable[Union[str, Secret]] = (),
        max_attempts: int = 5,
        timeout: float = 300,
        app: Optional[App] = None,
    ) -> Callable[[F], F]:
        def decorate(function: F) -> F:
            target = app or globals()["app"]
            schedule_name = name or _handler_name(function)
            target.schedules.append(
                ScheduleDefinition(schedule_name, text, cron=cron, every_seconds=every_seconds, time_zone=time_zone, catch_up=catch_up)
            )
            target.handlers.append(
                HandlerDefinition(
                    name=f"schedule-{schedule_name}",
                    source=schedule_name,
                    source_kind="schedule",
                    options=HandlerOptions(batch_size=16, concurrency=1, max_attempts=max_attempts, timeout=timeout),
                    function=function,
                    outputs=[t.name for t in writes],
                    secrets=[_as_secret(s).name for s in secrets],
                )
            )
            return function

        return decorate


cron = _Cron()


def every(interval: Union[int, float, str], **settings: Any) -> Callable[[F], F]:
    return cron.every(interval, **settings)


def daily(at: str = "00:00", **settings: Any) -> Callable[[F], F]:
    return cron.daily(at, **settings)


def takes_context_argument(function: Callable[..., Any]) -> bool:
    """Whether a function's signature has room for a second argument (the context)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)
