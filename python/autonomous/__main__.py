"""`python -m autonomous describe main.py` prints the app graph; `python -m autonomous worker
main.py` runs its handlers and routes (the `autonomous` command starts both for you)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import runpy
import sys
from typing import Any, Optional

from . import model as app_module
from ._wire import name_problem
from .model import AppGraphError, ConfigurationError


def load(path: str) -> app_module.App:
    """Runs the app module once, so that its declarations fill `autonomous.app`."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    runpy.run_path(path, run_name="__autonomous_app__")
    app = app_module.app
    if app.name is None:
        app.name = os.path.splitext(os.path.basename(path))[0]
    return app


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"{name}='{text}' is not a number of seconds") from None
    if not 1 <= value <= 3600:
        raise SystemExit(f"{name}={text} must be 1 to 3600 seconds")
    return value


def _port(name: str) -> Optional[int]:
    text = os.environ.get(name)
    if not text:
        return None
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise SystemExit(f"{name}='{text}' is not a port number (0-65535)")
    return int(text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autonomous", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="print the app graph as JSON")
    describe.add_argument("app", help="the app, e.g. main.py")
    describe.add_argument("--tenant", default="default", help="tenant whose subjects to show [default: default]")
    worker = commands.add_parser(
        "worker",
        help="run the app's Python handlers and routes",
        description="Environment: AUTONOMOUS_NATS_URL (required), AUTONOMOUS_TENANT (default: default), "
        "AUTONOMOUS_ACK_WAIT (seconds, default 30; as the coordinator's), AUTONOMOUS_HEALTH_PORT and "
        "AUTONOMOUS_HEALTH_HOST (/healthz, /readyz and /metrics; default none, 127.0.0.1), AUTONOMOUS_SHUTDOWN_TIMEOUT "
        "(default 30), AUTONOMOUS_HANDLERS (only these, comma separated), AUTONOMOUS_LOG_LEVEL, "
        "AUTONOMOUS_NATS_USER/PASSWORD, AUTONOMOUS_NATS_CREDS, AUTONOMOUS_NATS_CA/CERT/KEY.",
    )
    worker.add_argument("app", help="the app, e.g. main.py")
    worker.add_argument("--graph", help="the graph of the app that names these Python handlers (a Swift app's describe), as a file")
    args = parser.parse_args(argv)

    level = os.environ.get("AUTONOMOUS_LOG_LEVEL", "info").upper()
    logging.basicConfig(
        level={"TRACE": "DEBUG", "NOTICE": "INFO", "CRITICAL": "CRITICAL"}.get(level, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        app = load(args.app)
        if args.command == "describe":
            if problem := name_problem(args.tenant, "tenant"):
                raise ConfigurationError(problem)
            json.dump(app.describe(args.tenant), sys.stdout, indent=2, sort_keys=True)
            sys.stdout.write("\n")
            return 0
        from .worker import Worker

        url = os.environ.get("AUTONOMOUS_NATS_URL")
        if not url:
            raise ConfigurationError("the worker needs a NATS server: set AUTONOMOUS_NATS_URL")
        tenant = os.environ.get("AUTONOMOUS_TENANT", "default")
        if problem := name_problem(tenant, "tenant"):
            raise ConfigurationError(problem)
        graph: Any = None
        if args.graph:
            with open(args.graph, encoding="utf-8") as file:
                graph = json.load(file)
        app.check()
        selected = os.environ.get("AUTONOMOUS_HANDLERS")
        runner = Worker(
            app,
            nats_url=url,
            tenant=tenant,
            ack_wait=_seconds("AUTONOMOUS_ACK_WAIT", 30),
            shutdown_timeout=_seconds("AUTONOMOUS_SHUTDOWN_TIMEOUT", 30),
            graph=graph,
            handlers={h.strip() for h in selected.split(",") if h.strip()} if selected else None,
            health_port=_port("AUTONOMOUS_HEALTH_PORT"),
            health_host=os.environ.get("AUTONOMOUS_HEALTH_HOST") or "127.0.0.1",
        )
        asyncio.run(runner.run())
        return 0
    except AppGraphError as error:
        print(f"{args.app}: {error}", file=sys.stderr)
        return 1
    except ConfigurationError as error:
        print(f"{args.app}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
