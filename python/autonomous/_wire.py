"""The wire contract (docs/wire.md): names, subjects, streams, consumers, headers and record ids.

Written against docs/wire.md, not against the Swift code; docs/wire-vectors.json holds test
vectors that this module and the Swift implementation both check.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading

MAX_NAME_BYTES = 64
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Header:
    MESSAGE_ID = "Nats-Msg-Id"
    TABLE = "Aut-Table"
    TENANT = "Aut-Tenant"
    TYPE = "Aut-Type"
    CAUSED_BY = "Aut-Caused-By"
    TRACEPARENT = "traceparent"
    ERROR = "Aut-Error"
    ATTEMPTS = "Aut-Attempts"
    HANDLER = "Aut-Handler"
    FIRST_FAILURE = "Aut-First-Failure"
    LAST_FAILURE = "Aut-Last-Failure"
    SOURCE_SUBJECT = "Aut-Source-Subject"
    RECORD_ID = "Aut-Record-Id"
    REPLAY_FOR = "Aut-Replay-For"


def name_problem(name: str, kind: str) -> str | None:
    """Why `name` cannot be a tenant, table, schedule or handler name, or None."""
    if not isinstance(name, str) or not name:
        return f"{kind} name must not be empty"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"{kind} name '{name[:80]}' is longer than {MAX_NAME_BYTES} characters"
    if name[0] in "_-":
        return f"{kind} name '{name}' must start with a lowercase letter or digit"
    if not _NAME.match(name):
        return f"{kind} name '{name}' may contain only lowercase letters, digits, '_' and '-'"
    return None


def is_valid_record_id(value: str) -> bool:
    return bool(_RECORD_ID.match(value))


def table_subject(tenant: str, table: str) -> str:
    return f"aut.{tenant}.tbl.{table}"


def schedule_subject(tenant: str, schedule: str) -> str:
    return f"aut.{tenant}.sched.{schedule}"


def dead_letter_subject(tenant: str, handler: str) -> str:
    return f"aut.{tenant}.dlq.{handler}"


def run_subject(tenant: str, handler: str, sequence: int) -> str:
    return f"aut.{tenant}.run.{handler}.{sequence}"


def tenant_stream(tenant: str) -> str:
    return "AUT_" + tenant.upper()


def table_stream(tenant: str, table: str) -> str:
    return "AUT_" + tenant.upper() + "_tbl_" + table


def consumer_name(handler: str) -> str:
    return "h_" + handler


def partition_consumer_name(handler: str, partition: int) -> str:
    return f"h_{handler}_p{partition}"


ROUTE_QUEUE = "routes"
TABLE_READ_SUBJECT = "aut._tables.read"
PARTITION_SUBJECT = "aut._coord.partitions"


def route_subject(runtime: str) -> str:
    return f"aut._route.{runtime}"


def base32(data: bytes) -> str:
    """Lower-case RFC 4648 base 32 without padding."""
    return base64.b32encode(data).decode().rstrip("=").lower()


def output_id(source: str, handler: str, index: int) -> str:
    """`o` + hex(SHA-256(source ‖ 0 ‖ handler ‖ 0 ‖ decimal(index)))[0..<30]."""
    digest = hashlib.sha256(source.encode() + b"\0" + handler.encode() + b"\0" + str(index).encode()).digest()
    return "o" + digest[:15].hex()


def batch_id(record_ids: list[str]) -> str:
    """The cause of an output that sums up a batch: the same set of records, the same id."""
    return "batch-" + output_id(",".join(sorted(record_ids)), "", 0)


def scoped_key(key: str, tenant: str, caller: str, path: str) -> str:
    """The record id of a client's Idempotency-Key, scoped to tenant, caller and path."""
    digest = hashlib.sha256(b"".join(part.encode() + b"\0" for part in (tenant, caller, path, key))).digest()
    return "k" + base32(digest[:15])


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def partition_key(record: object, field: str) -> bytes:
    """A string field's UTF-8, another value's compact JSON text, nothing when missing or null."""
    from . import _json

    if not isinstance(record, dict):
        return b""
    value = record.get(field)
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return _json.dumps(value)


def partition(key: bytes, partitions: int) -> int:
    return fnv1a32(key) % max(1, partitions)


class ServerIDs:
    """Ids of records a route appends without an idempotency key: `s` + base32(SHA-256(a secret
    per-process random key ‖ counter))[0..<24], unguessable, like the ingress's own."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._counter = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self._counter += 1
            n = self._counter
        digest = hashlib.sha256(self._key + n.to_bytes(8, "little")).digest()
        return "s" + base32(digest[:15])
