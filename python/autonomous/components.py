"""Pre-built components, named in the app graph and run by the Swift runtime's workers.

`prompts.on_new_records(OpenAICompletion(into=completions))` declares a handler whose code is
the Swift component of that kind (docs/components and docs/python.md, "Components"): the
`autonomous` command builds it from the settings here and runs it beside the app's Python
functions, with the same guarantees.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Union

from .model import HandlerDefinition, HandlerOptions, Secret, Table, _as_secret


def _template_fields(template: str) -> list[str]:
    return [name.split(".")[0] for name in re.findall(r"\{([^{}]+)\}", template)]


class Component:
    """A handler written once, in Swift, that an app binds by name."""

    kind = ""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.required_fields: list[str] = []
        self.outputs: list[str] = []
        self.secrets: list[Secret] = []

    def bind(
        self,
        table: Table[Any],
        *,
        name: Optional[str] = None,
        batch_size: int = 256,
        max_wait: float = 0.5,
        concurrency: int = 2,
        max_attempts: int = 5,
        retry_backoff: Iterable[float] = (1, 5, 30, 120),
        timeout: float = 300,
    ) -> None:
        table.app.handlers.append(
            HandlerDefinition(
                name=name or f"{self.kind}-{table.name}",
                source=table.name,
                source_kind="table",
                options=HandlerOptions(
                    batch_size=batch_size,
                    max_wait=max_wait,
                    concurrency=concurrency,
                    max_attempts=max_attempts,
                    retry_backoff=tuple(retry_backoff),
                    timeout=timeout,
                ),
                outputs=list(self.outputs),
                secrets=[s.name for s in self.secrets],
                component=self.kind,
                component_config=self.config,
                component_fields=self.required_fields,
                runtime=None,
            )
        )


class OpenAICompletion(Component):
    """Chat completion through any OpenAI-compatible API (base URL from `base_url`, else
    OPENAI_BASE_URL): each record's prompt (a template over its fields) is answered into
    `into` as `{prompt, completion, model, source_id}` plus the `passthrough` fields."""

    kind = "openai-completion"

    def __init__(
        self,
        into: Table[Any],
        api_key: Union[str, Secret] = "OPENAI_API_KEY",
        model: str = "gpt-4o-mini",
        temperature: float = 0.7,
        prompt: str = "{prompt}",
        system_prompt: Optional[str] = None,
        max_tokens: Optional[int] = None,
        passthrough: Iterable[str] = (),
        base_url: Optional[str] = None,
        timeout: float = 60,
    ) -> None:
        super().__init__()
        key = _as_secret(api_key)
        self.config = {
            "into": into.name,
            "api_key_secret": key.name,
            "model": model,
            "temperature": temperature,
            "prompt": prompt,
            "system_prompt": system_prompt,
            "max_tokens": max_tokens,
            "passthrough": list(passthrough),
            "base_url": base_url,
            "timeout_seconds": timeout,
        }
        self.required_fields = _template_fields(prompt)
        self.outputs = [into.name]
        self.secrets = [key]


class SlackPostMessage(Component):
    """Posts `text` (a template) to `channel` with Slack's chat.postMessage (base URL from
    `api_url`, else SLACK_API_URL); with `into`, records each message posted as
    `{channel, ts, source_id}`."""

    kind = "slack-post-message"

    def __init__(
        self,
        text: str,
        channel: str = "{channel}",
        token: Union[str, Secret] = "SLACK_BOT_TOKEN",
        thread_ts: Optional[str] = None,
        api_url: Optional[str] = None,
        into: Optional[Table[Any]] = None,
    ) -> None:
        super().__init__()
        key = _as_secret(token)
        self.config = {
            "text": text,
            "channel": channel,
            "token_secret": key.name,
            "thread_ts": thread_ts,
            "api_url": api_url,
            "into": into.name if into is not None else None,
        }
        self.required_fields = _template_fields(channel) + _template_fields(text)
        self.outputs = [into.name] if into is not None else []
        self.secrets = [key]


# The names the original README imports them by.
OpenAiCompletion = OpenAICompletion

__all__ = ["Component", "OpenAICompletion", "OpenAiCompletion", "SlackPostMessage"]
