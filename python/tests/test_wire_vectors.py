"""docs/wire-vectors.json: the Python package computes the wire contract's ids, keys,
partitions and names exactly as the vectors (and the Swift implementation) do."""

import json
import pathlib

import pytest

from autonomous import _wire
from autonomous.model import Records, Entry, RecordMetadata, Table, App

VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[2] / "docs" / "wire-vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["output_ids"])
def test_output_ids(vector):
    assert _wire.output_id(vector["source"], vector["handler"], vector["index"]) == vector["id"]


@pytest.mark.parametrize("vector", VECTORS["batch_ids"])
def test_batch_ids(vector):
    """A summary of one record is caused by that record; of several, by the set of their ids."""
    ids = vector["ids"]
    expected = ids[0] if len(ids) == 1 else _wire.batch_id(ids)
    assert expected == vector["id"]


@pytest.mark.parametrize("vector", VECTORS["scoped_keys"])
def test_scoped_keys(vector):
    assert _wire.scoped_key(vector["key"], vector["tenant"], vector["caller"], vector["path"]) == vector["id"]


@pytest.mark.parametrize("vector", VECTORS["partitions"])
def test_partitions(vector):
    key = _wire.partition_key(vector["record"], vector["field"])
    assert _wire.partition(key, vector["partitions"]) == vector["partition"]


@pytest.mark.parametrize("vector", VECTORS["names"])
def test_names(vector):
    tenant, table, handler = vector["tenant"], vector["table"], vector["handler"]
    assert _wire.table_subject(tenant, table) == vector["subject"]
    assert _wire.table_stream(tenant, table) == vector["stream"]
    assert _wire.tenant_stream(tenant) == vector["tenant_stream"]
    assert _wire.consumer_name(handler) == vector["consumer"]
    assert _wire.dead_letter_subject(tenant, handler) == vector["dead_letter_subject"]
    assert _wire.run_subject(tenant, handler, 42) == vector["run_note_subject"]


def test_summary_append_uses_the_batch_id():
    """Table.append_summary names the batch id of the vectors as the cause."""
    captured = []

    class Capture:
        kind = "handler"

        def append(self, table, bodies):
            captured.extend(bodies)

    from autonomous.model import _current_context

    app = App("vectors")
    table = Table("sums", app=app)
    vector = next(v for v in VECTORS["batch_ids"] if len(v["ids"]) > 1)
    records = Records([Entry({}, RecordMetadata(id=i, table="t", tenant="default")) for i in vector["ids"]])
    token = _current_context.set(Capture())
    try:
        table.append_summary({"total": 1}, records)
    finally:
        _current_context.reset(token)
    assert captured[0][1].id == vector["id"]
