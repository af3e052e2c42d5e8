"""The original README's quick start in Python: answer Slack mentions with an OpenAI completion,
and keep reactions for feedback modelling.

Run it with `autonomous dev Examples/python/slackbot/main.py`. It needs OPENAI_API_KEY,
SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET in the environment (OPENAI_BASE_URL and SLACK_API_URL
point it at compatible or fake servers).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

from autonomous import Records, Request, Table, Webhook, cron, post, set_app_name, verify
from autonomous.components import OpenAiCompletion, SlackPostMessage

set_app_name("slackbot")


@dataclass
class Prompt:
    semantic_type = "llm.prompt@1"
    prompt: str
    channel: str
    thread_ts: Optional[str] = None


@dataclass
class PromptFeedback:
    """How one prompt's answers were received on one day: the daily model build's output."""

    semantic_type = "llm.prompt.feedback@1"
    day: str
    prompt: str
    completions: int
    positive: int
    negative: int
    score: float


POSITIVE = {"+1", "thumbsup", "heart", "tada", "white_check_mark", "raised_hands", "star-struck"}
NEGATIVE = {"-1", "thumbsdown", "x", "confused", "disappointed"}

# Define reactive Tables
slack_mentions = Table("slack_mentions")
prompts = Table("prompts", Prompt)
completions = Table("completions")
slack_posts = Table("slack_posts")
slack_reactions = Table("slack_reactions")
prompt_feedback = Table("prompt_feedback", PromptFeedback)
model_builds = Table("model_builds")


# Handle incoming Slack mentions for our bot (Slack signs every request).
@post("/slack-mentions", verify=verify.slack("SLACK_SIGNING_SECRET"))
def handle_slack_mentions(request: Request) -> int:
    payload = request.json()
    slack_mentions.append({"timestamp": datetime.now(timezone.utc), "payload": payload})
    return 200


# React to mentions in real time.
@slack_mentions.on_new_records(writes=[prompts])
def prompt_from_mention(records: Records) -> None:
    for record in records:
        event = record["payload"]["event"]
        prompts.append(
            Prompt(
                prompt=f"Respond to the following message with a friendly reply: {event['text']}",
                channel=event.get("channel", "general"),
                thread_ts=event.get("ts"),
            )
        )


# Pre-built components (run by the Swift runtime): a completion, then a Slack message with it.
prompts.on_new_records(OpenAiCompletion(into=completions, temperature=0.8, passthrough=["channel", "thread_ts"]))
completions.on_new_records(SlackPostMessage(text="{completion}", channel="{channel}", into=slack_posts))

# Capture reactions to the posts for feedback modelling (signed by Slack).
reactions_webhook = Webhook("/slack-reactions", slack_reactions, verify=verify.slack("SLACK_SIGNING_SECRET"))


def pages(table: Table, since: datetime, until: datetime):
    cursor = None
    while True:
        page = table.records(since=since, until=until, limit=1000, cursor=cursor)
        yield from page.entries
        cursor = page.next_cursor
        if cursor is None:
            return


# Rebuild the response model once a day: how the day's completions were received.
@cron.daily("03:00", writes=[prompt_feedback, model_builds])
def rebuild_model(tick: dict) -> None:
    until = datetime.fromisoformat(tick["fire_time"].replace("Z", "+00:00"))
    since = until - timedelta(days=1)
    prompt_of: dict[str, str] = {}  # completion id → prompt
    completions_per_prompt: dict[str, int] = {}
    for entry in pages(completions, since, until):
        prompt_of[entry.metadata.id] = entry.value["prompt"]
        completions_per_prompt[entry.value["prompt"]] = completions_per_prompt.get(entry.value["prompt"], 0) + 1
    completion_of: dict[str, str] = {}  # "channel ts" → completion id
    for entry in pages(slack_posts, since, until):
        post_record = entry.value
        if post_record.get("channel") and post_record.get("ts") and post_record.get("source_id"):
            completion_of[f"{post_record['channel']} {post_record['ts']}"] = post_record["source_id"]
    votes: dict[str, list[int]] = {}
    for entry in pages(slack_reactions, since, until):
        event = entry.value.get("event", {})
        item = event.get("item", {})
        completion = completion_of.get(f"{item.get('channel')} {item.get('ts')}")
        prompt = prompt_of.get(completion) if completion else None
        if event.get("type") != "reaction_added" or prompt is None:
            continue
        tally = votes.setdefault(prompt, [0, 0])
        if event.get("reaction") in POSITIVE:
            tally[0] += 1
        if event.get("reaction") in NEGATIVE:
            tally[1] += 1
    day = tick["fire_time"][:10]
    for prompt in sorted(completions_per_prompt):
        positive, negative = votes.get(prompt, [0, 0])
        total = positive + negative
        prompt_feedback.append(
            PromptFeedback(
                day=day,
                prompt=prompt,
                completions=completions_per_prompt[prompt],
                positive=positive,
                negative=negative,
                score=0.0 if total == 0 else (positive - negative) / total,
            )
        )
    model_builds.append({"requested_for": tick["fire_time"], "status": "built", "prompts": len(completions_per_prompt)})
