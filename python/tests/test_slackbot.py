"""The Python SlackBot (Examples/python/slackbot/main.py) end to end, started with the one
documented command, against loopback fakes of OpenAI and Slack that speak their wire formats."""

import json
import time

from conftest import REPO, FakeServer, eventually, slack_signature

SIGNING_SECRET = "test-signing-secret-0123456789"


def openai_answer(path, body, headers):
    assert path == "/v1/chat/completions", path
    prompt = body["messages"][-1]["content"]
    return 200, {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Happy to help! (" + prompt[-20:] + ")"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def slack_answer(path, body, headers):
    assert path == "/api/chat.postMessage", path
    if headers.get("authorization") != "Bearer xoxb-test":
        return 200, {"ok": False, "error": "invalid_auth"}
    return 200, {"ok": True, "channel": body["channel"], "ts": "1700000000.000100", "message": {"text": body["text"]}}


def test_slackbot_answers_a_mention(run_app):
    openai = FakeServer(openai_answer)
    slack = FakeServer(slack_answer)
    try:
        app = run_app(
            REPO / "Examples" / "python" / "slackbot" / "main.py",
            env={
                "OPENAI_API_KEY": "sk-test",
                "OPENAI_BASE_URL": openai.url + "/v1",
                "SLACK_BOT_TOKEN": "xoxb-test",
                "SLACK_API_URL": slack.url + "/api",
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            },
        )
        event = {
            "type": "event_callback",
            "event_id": "Ev0PYTHON1",
            "event": {"type": "app_mention", "text": "how do I deploy?", "channel": "C123", "ts": "1700000000.000001"},
        }
        raw = json.dumps(event).encode()
        timestamp = str(int(time.time()))
        headers = {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": slack_signature(SIGNING_SECRET, timestamp, raw)}

        # A forged signature is refused by the ingress before any Python runs.
        status, answer = app.http("POST", "/slack-mentions", raw=raw, headers={**headers, "X-Slack-Signature": "v0=" + "0" * 64})
        assert status == 401, answer
        assert answer["error"]["field"] == "X-Slack-Signature"

        status, answer = app.http("POST", "/slack-mentions", raw=raw, headers=headers)
        assert status == 200, answer

        posted = eventually(lambda: slack.requests, timeout=90, what="a chat.postMessage to the fake Slack")
        path, body, _ = posted[0]
        assert body["channel"] == "C123"
        prompt = openai.requests[0][1]["messages"][-1]["content"]
        assert prompt == "Respond to the following message with a friendly reply: how do I deploy?"
        assert body["text"] == "Happy to help! (" + prompt[-20:] + ")"

        # The lineage from the mention to the post is intact.
        mentions = app.records("slack_mentions")
        prompts = app.records("prompts")
        completions = eventually(lambda: app.records("completions"), what="the completion record")
        posts = eventually(lambda: app.records("slack_posts"), what="the post record")
        assert len(mentions) == len(prompts) == len(completions) == len(posts) == 1
        assert prompts[0]["caused_by"] == mentions[0]["id"]
        assert completions[0]["caused_by"] == prompts[0]["id"]
        assert posts[0]["caused_by"] == completions[0]["id"]
        assert prompts[0]["record"]["channel"] == "C123"

        # Slack retries the same event: stored once (the event id names the record).
        status, _ = app.http("POST", "/slack-mentions", raw=raw, headers=headers)
        assert status == 200
        time.sleep(2)
        assert len(app.records("slack_mentions")) == 1
        assert len(slack.requests) == 1
    finally:
        openai.close()
        slack.close()
