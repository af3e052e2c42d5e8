"""The raw ceiling of scenario h: the same hop as the app's Python handler, written directly on
nats-py with no framework.

Streams RAW_PY_IN and RAW_PY_OUT; W asyncio fetch loops share one durable pull consumer, fetch
batches, parse each event and wrap it into the same derived JSON object the app's handler
makes, publish it to RAW_PY_OUT (pipelined with publish_async, Nats-Msg-Id per output) and wait
for every PubAck of the batch, then ack the inputs. The events come from the nats.c producer the cluster scenarios use
(`pipeline publish`), started after the consumer exists; the clock runs from its start to the
N-th acknowledged input. Prints one JSON object.

    python pipeline.py <nats-url> <events> <workers> <batch> <producer-binary>
"""

import asyncio
import json
import sys
import time

import nats


async def main(url: str, total: int, workers: int, batch: int, producer: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=30)
    await js.add_stream(name="RAW_PY_IN", subjects=["raw.py.in"])
    await js.add_stream(name="RAW_PY_OUT", subjects=["raw.py.out"])
    await js.add_consumer("RAW_PY_IN", durable_name="W", ack_policy="explicit", max_ack_pending=65536, ack_wait=30)
    acked = 0
    done = asyncio.Event()

    async def worker() -> None:
        nonlocal acked
        subscription = await js.pull_subscribe_bind(consumer="W", stream="RAW_PY_IN")
        while not done.is_set():
            try:
                messages = await subscription.fetch(batch, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            started = time.time_ns()
            pending = []
            for msg in messages:
                event = json.loads(msg.data)
                out = {"event": event, "handled": True, "step": 1, "handler_start_ns": started, "sent_ns": event.get("sent_ns")}
                body = json.dumps(out, separators=(",", ":")).encode()
                headers = {"Nats-Msg-Id": "out-" + msg.headers["Nats-Msg-Id"]}
                pending.append(await js.publish_async("raw.py.out", body, headers=headers, wait_stall=30))
            await asyncio.gather(*pending)  # outputs before acks
            await asyncio.gather(*(msg.ack() for msg in messages))
            acked += len(messages)
            if acked >= total:
                done.set()

    start = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        producer, "publish", url, "raw.py.in", str(total), "raw", "default", stdout=asyncio.subprocess.PIPE
    )
    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    await done.wait()
    elapsed = time.monotonic() - start
    produced = json.loads((await process.communicate())[0])
    await asyncio.gather(*tasks)
    outputs = (await js.stream_info("RAW_PY_OUT")).state.messages
    await nc.close()
    print(json.dumps({"events_per_second": total / elapsed, "outputs": outputs, "published": produced.get("published"), "seconds": elapsed}))


if __name__ == "__main__":
    url, total, workers, batch, producer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    asyncio.run(main(url, total, workers, batch, producer))
