"""An ordered Python handler: records of one key are handled one at a time, in order."""

import os

from autonomous import Table

moves = Table("moves")
applied = Table("applied")


@moves.on_new_records(writes=[applied], ordered_by="account", partitions=4, batch_size=20, max_attempts=4, retry_backoff=[0.2])
def apply(records):
    for record in records:
        # Fails once on a marked record: retried in place, before any later record of its key.
        marker = f"failed-{record['account']}-{record['seq']}"
        if record.get("fail_once") and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("the first try fails")
        applied.append({"account": record["account"], "seq": record["seq"], "pid": os.getpid()})
