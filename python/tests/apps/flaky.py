"""A handler that fails until a file named `fixed` appears in the working directory."""

import os

from autonomous import Table, post, verify, RouteError, Request

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
