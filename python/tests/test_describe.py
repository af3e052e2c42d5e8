"""The app graph a Python app describes, and the checks that run before anything starts."""

import asyncio
import dataclasses
import json
from typing import ClassVar, Optional

import pydantic
import pytest

from autonomous import App, AppGraphError, ConfigurationError, LineageError, Records, Table, cron, verify
from autonomous.model import Entry, RecordMetadata, _current_context, route
from autonomous.components import OpenAICompletion


@dataclasses.dataclass
class Order:
    semantic_type = "shop.order@2"
    order_id: str
    total: float
    note: Optional[str] = None


class Refund(pydantic.BaseModel):
    semantic_type: ClassVar[str] = "shop.refund@1"  # a class variable, not a field
    order_id: str
    amount: float
    reason: str = "unknown"


def test_describe_typed_tables_handlers_and_schedules():
    app = App("shop")
    orders = Table("orders", Order, app=app)
    refunds = Table("refunds", Refund, app=app, storage="warehouse", retention={"max_age_seconds": 86400})
    Table("audit", app=app)
    orders.on_new_records(lambda records: None, name="audit-orders", writes=[app.tables["audit"]], batch_size=10, retry_backoff=[2])

    @route("POST", "/refunds", verify=verify.stripe("STRIPE_SECRET"), app=app)
    def post_refund(request):
        return 200

    cron.every("5m", name="tick", app=app)(lambda tick: None)
    graph = app.describe("acme")
    assert graph["format_version"] == 1 and graph["app"] == "shop" and graph["stream"] == "AUT_ACME"
    tables = {t["name"]: t for t in graph["tables"]}
    assert tables["orders"]["semantic_type"] == "shop.order@2"
    assert tables["orders"]["record_type"] == "Order"
    assert tables["orders"]["fields"] == ["note", "order_id", "total"]
    assert tables["orders"]["required_fields"] == ["order_id", "total"]
    assert tables["orders"]["stream"] == "AUT_ACME_tbl_orders"
    assert tables["refunds"]["required_fields"] == ["amount", "order_id"]
    assert tables["refunds"]["fields"] == ["amount", "order_id", "reason"]
    assert tables["refunds"]["semantic_type"] == "shop.refund@1"
    assert tables["refunds"]["storage"] == "warehouse"
    assert tables["audit"]["record_api"] == "closed"
    assert tables["orders"]["record_api"] == "open"
    assert tables["tick"]["kind"] == "schedule" and tables["tick"]["subject"] == "aut.acme.sched.tick"
    handlers = {h["name"]: h for h in graph["handlers"]}
    assert handlers["audit-orders"]["batch_size"] == 10
    assert handlers["audit-orders"]["retry_backoff_seconds"] == [2.0]
    assert handlers["audit-orders"]["runtime"] == "python"
    assert handlers["schedule-tick"]["source_kind"] == "schedule"
    assert graph["schedules"] == [
        {"name": "tick", "schedule": "every 300s", "time_zone": "UTC", "subject": "aut.acme.sched.tick", "catch_up": "fire-once", "every_seconds": 300}
    ]
    assert graph["routes"][0] == {
        "method": "POST", "path": "/refunds", "kind": "route", "verification": "stripe", "runtime": "python",
        "secret": "STRIPE_SECRET", "tolerance_seconds": 300.0,
    }
    json.dumps(graph)  # plain JSON


def test_graph_problems_name_their_culprit():
    app = App("bad")
    orders = Table("Orders", app=app)
    orders.on_new_records(lambda r: None, name="x", writes=[Table("elsewhere", app=App("other"))])
    orders.on_new_records(lambda r: None, name="x", batch_size=0)
    prompts = Table("prompts", Order, app=app)
    prompts.on_new_records(OpenAICompletion(into=orders, prompt="{question}"))
    with pytest.raises(AppGraphError) as error:
        app.describe()
    text = str(error.value)
    assert "table name 'Orders' may contain only lowercase letters" in text
    assert "two handlers are named 'x'" in text
    assert "handler 'x': batch_size must be between 1 and 10000" in text
    assert "handler 'x' writes to table 'elsewhere', which is not declared" in text
    assert "handler 'openai-completion-prompts' (openai-completion) needs field 'question'" in text


def test_typed_tables_check_what_is_appended():
    app = App("typed")
    orders = Table("orders", Order, app=app)
    assert json.loads(orders.encode(Order("A-1", 12.5))) == {"note": None, "order_id": "A-1", "total": 12.5}
    assert json.loads(orders.encode({"order_id": "A-2", "total": 1})) == {"note": None, "order_id": "A-2", "total": 1}
    with pytest.raises(ValueError, match="missing required field 'total'"):
        orders.encode({"order_id": "A-3"})
    with pytest.raises(ConfigurationError, match="holds Order records"):
        orders.encode(Refund(order_id="A", amount=1))
    with pytest.raises(ConfigurationError, match="must be JSON objects"):
        Table("loose", app=app).encode([1, 2])


def test_append_outside_a_function_is_refused():
    with pytest.raises(ConfigurationError, match="outside a handler, route or schedule"):
        Table("lonely", app=App("x")).append({"a": 1})


class TablesOnly:
    """What a HandlerContext asks of its worker when appending: the table's wire settings."""

    def table_info(self, name, table=None):
        from autonomous.worker import TableInfo

        return TableInfo(name, "json@1")


def handler_context(lineage):
    from autonomous.model import HandlerDefinition, HandlerOptions
    from autonomous.worker import HandlerContext

    return HandlerContext(TablesOnly(), HandlerDefinition("h", "t", "table", HandlerOptions()), "default", lineage)


def records_of(ids, lineage):
    return Records([Entry({"n": i}, RecordMetadata(id=i, table="t", tenant="default")) for i in ids], lineage)


def test_lineage_in_every_handler_shape():
    """Appends in a loop are caused by the record the loop is on; in tasks of their own (gather)
    they must name their source, or fail rather than get an id a redelivery would not repeat."""
    from autonomous.model import _Lineage

    table = Table("out", app=App("lineage"))

    def run(body):
        lineage = _Lineage()
        ctx = handler_context(lineage)
        token = _current_context.set(ctx)
        try:
            outcome = body(records_of(["a", "b", "c"], lineage))
            if asyncio.iscoroutine(outcome):
                asyncio.run(outcome)
        finally:
            _current_context.reset(token)
        return [(json.loads(body), headers["Aut-Caused-By"]) for _, body, headers in ctx.outputs]

    def loop(records):
        for r in records:
            table.append({"m": r["n"]})

    assert run(loop) == [({"m": "a"}, "a"), ({"m": "b"}, "b"), ({"m": "c"}, "c")]
    assert run(lambda records: table.extend(records.map(lambda r: {"m": r["n"]}))) == [({"m": "a"}, "a"), ({"m": "b"}, "b"), ({"m": "c"}, "c")]
    assert run(lambda records: records.each(lambda r: table.append({"m": r["n"]})))[2] == ({"m": "c"}, "c")

    async def awaiting(records):
        for r in records:
            await asyncio.sleep(0)
            table.append({"m": r["n"]})

    assert [cause for _, cause in run(awaiting)] == ["a", "b", "c"]

    async def gathered(records):
        async def one(r):
            table.append({"m": r["n"]})

        await asyncio.gather(*(one(r) for r in records))

    # The tasks run after the loop has ended (or beside it): refused either way.
    with pytest.raises(LineageError, match="task other than|outside any loop"):
        run(gathered)

    async def spawned(records):
        tasks = []
        for r in records:
            tasks.append(asyncio.create_task(asyncio.sleep(0, result=r)))
            await asyncio.sleep(0)
            tasks.append(asyncio.create_task(one_later(r)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    async def one_later(r):
        table.append({"m": r["n"]})

    with pytest.raises(LineageError, match="task other than"):
        run(spawned)

    async def gathered_with_sources(records):
        async def one(entry):
            table.append({"m": entry.value["n"]}, caused_by=entry)

        await asyncio.gather(*(one(e) for e in records.entries))

    assert sorted(cause for _, cause in run(gathered_with_sources)) == ["a", "b", "c"]
    # Output ids follow the wire rule: source, handler, index among that source's outputs.
    lineage = _Lineage()
    ctx = handler_context(lineage)
    token = _current_context.set(ctx)
    try:
        for r in records_of(["a"], lineage):
            table.append({"first": 1})
            table.append({"second": 2})
    finally:
        _current_context.reset(token)
    from autonomous import _wire

    assert [h["Nats-Msg-Id"] for _, _, h in ctx.outputs] == [_wire.output_id("a", "h", 0), _wire.output_id("a", "h", 1)]
    with pytest.raises(LineageError, match="outside any loop"):
        run(lambda records: table.append({"m": 0}))
