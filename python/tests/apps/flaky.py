"""A handler that fails until a file named `fixed` appears in the working directory."""

import os

from autonomous import Request, RouteError, Table, get, post, verify

inbox = Table("inbox")
outbox = Table("outbox")


@inbox.on_new_records(writes=[outbox], max_attempts=3, retry_backoff=[0.2])
def flaky(records):
    for record in records:
        if record.get("poison") and not os.path.exists("fixed"):
            raise RuntimeError(f"cannot handle {record['n']} yet")
        outbox.append({"n": record["n"]})


@post("/slow", verify=verify.unauthenticated)
async def slow(request: Request):
    import asyncio

    await asyncio.sleep(float(request.query.get("seconds", "5")))
    return {"slept": True}


@post("/refuse", verify=verify.unauthenticated)
def refuse(request: Request):
    raise RouteError(409, "conflict", "refused on purpose", field="n")


@post("/crash", verify=verify.unauthenticated)
def crash(request: Request):
    raise ZeroDivisionError("secret-value-must-not-leak")


@post("/append", verify=verify.api_key)
def append(request: Request):
    body = request.json()
    inbox.append(body)
    return {"tenant": request.tenant}, 202


@get("/inbox", verify=verify.unauthenticated)
def inbox_page(request: Request):
    """Reads a table back (through the ingress nodes): a page, its cursor, and a count."""
    limit = int(request.query.get("limit", "2"))
    page = inbox.records(order="oldest", limit=limit, cursor=request.query.get("cursor"))
    return {
        "ns": [value["n"] for value in page],
        "ids": [entry.metadata.id for entry in page.entries],
        "next": page.next_cursor,
        "count": inbox.count(),
    }


@get("/inbox-async", verify=verify.unauthenticated)
async def inbox_async(request: Request):
    page = await inbox.arecords(where={"n": int(request.query["n"])})
    return {"ns": [value["n"] for value in page], "count": await inbox.acount(where={"n": int(request.query["n"])})}


@get("/bad-read", verify=verify.unauthenticated)
def bad_read(request: Request):
    return {"page": len(inbox.records(limit=0))}
