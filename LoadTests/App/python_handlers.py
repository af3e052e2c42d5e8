"""LoadApp's handler in Python (scenario h): the same small JSON transform as the Swift
`transform` and the raw nats-py pipeline (LoadTests/raw/pipeline.py)."""

import time

from autonomous import Table

py_events = Table("py_events")
py_events_out = Table("py_events_out")


@py_events.on_new_records(name="py-transform", writes=[py_events_out])
def transform(records):
    started = time.time_ns()
    py_events_out.extend(
        records.map(lambda event: {"event": event, "handled": True, "step": 1, "handler_start_ns": started, "sent_ns": event.get("sent_ns")})
    )
