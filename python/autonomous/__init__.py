"""Autonomous for Python: tables, handlers, routes, webhooks and schedules, run on an Autonomous
cluster with the same guarantees as Swift apps (docs/python.md).

    from autonomous import Table, post, Request

    slack_mentions = Table("slack_mentions")

    @post("/slack-mentions")
    def handle_slack_mentions(request: Request) -> int:
        slack_mentions.append({"payload": request.json()})
        return 200

Run it with `autonomous dev main.py`.
"""

from .model import (
    App,
    AppGraphError,
    ConfigurationError,
    Derived,
    Entry,
    HandlerOptions,
    LineageError,
    Page,
    ReadError,
    RecordMetadata,
    Records,
    Request,
    Response,
    RouteError,
    Secret,
    Table,
    UndeclaredWriteError,
    Verification,
    Webhook,
    app,
    cron,
    daily,
    every,
    get,
    post,
    route,
    secret,
    set_app_name,
    verify,
)
from .components import OpenAICompletion, OpenAiCompletion, SlackPostMessage

__all__ = [
    "App",
    "AppGraphError",
    "ConfigurationError",
    "Derived",
    "Entry",
    "HandlerOptions",
    "LineageError",
    "Page",
    "ReadError",
    "OpenAICompletion",
    "OpenAiCompletion",
    "RecordMetadata",
    "Records",
    "Request",
    "Response",
    "RouteError",
    "Secret",
    "SlackPostMessage",
    "Table",
    "UndeclaredWriteError",
    "Verification",
    "Webhook",
    "app",
    "cron",
    "daily",
    "every",
    "get",
    "post",
    "route",
    "secret",
    "set_app_name",
    "verify",
]
