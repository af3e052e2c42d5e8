"""A handler that kills its process on a poison record, and one slower than the ack wait."""

import os
import time

from autonomous import Table

poison_in = Table("poison_in")
poison_out = Table("poison_out")
slow_in = Table("slow_in")
slow_out = Table("slow_out")


@poison_in.on_new_records(writes=[poison_out], max_attempts=3, batch_size=20)
def poison(records):
    for record in records:
        if record.get("poison"):
            os._exit(3)  # as a crash or an out-of-memory kill would
        poison_out.append({"n": record["n"]})


@slow_in.on_new_records(writes=[slow_out], batch_size=5, concurrency=1)
def slow(records):
    with open("slow-runs.txt", "a") as runs:
        runs.write(",".join(str(r["n"]) for r in records) + "\n")
    time.sleep(float(os.environ.get("SLOW_SECONDS", "8")))
    for record in records:
        slow_out.append({"n": record["n"]})
