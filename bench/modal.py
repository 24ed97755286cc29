"""9. Create form: the modal opens within Slack's 3 s trigger window even while OpenAI is slow.

`/finetune create` with no arguments opens the create form with the command's trigger_id, which
Slack honours for 3 seconds; the form's OpenAI-file menu (an external select) loads its options
separately, and Slack waits 3 seconds for that answer too. Both must hold whatever OpenAI's latency,
so every phase runs twice: every OpenAI call answering at once, then every call taking 5 s.

Per phase: Slack-signed `/finetune create` commands one at a time (each waits for its views.open)
and in a burst of 20 at once, then options requests (`block_suggestion`, nothing typed) for the
forms those opened, one at a time and 20 at once. Figures: the ack, command sent → views.open
received by the fake Slack (whose trigger ids expire 3 s after they were issued, as Slack's do),
and the options request → its answer. Functional failures: a command without a views.open, a
views.open Slack refused (an expired trigger), an options answer that is not HTTP 200, comes after
3 s, or is neither the files nor the "OpenAI is slow" option.

The load generator is bench/ack.py's, in its own process, for the reason given there.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ack import fire_read
from bench.common import (
    Bot,
    FunctionalError,
    Result,
    TimedFakeOpenAI,
    fakes,
    log,
    ms,
    running_bot,
    secs,
    summary,
    wait_until,
)
from bot import ids, modal
from tests.fakes import FakeSlack

# Slack's trigger_id lives 3 s, and Slack waits 3 s for an options answer (FACTS-interactive §2, §4).
SLACK_WINDOW = 3.0
SLOW_OPENAI = 5.0
# Enough fine-tune files that the menu's answer is a full page of Slack's 100 options.
SEEDED_FILES = 150

# What bench/ack.py's load generator hands back per request: (key, wall-clock send time, seconds to
# the HTTP response, status, body).
Sent = tuple[str, float, float, int, bytes]
Submit = Callable[[list[tuple[str, str]], int], list[Sent]]


@dataclass(frozen=True)
class Opened:
    """One `/finetune create` as Slack would see it."""

    sent_at: float  # wall clock, when the request was written
    ack_seconds: float
    status: int  # of the HTTP ack
    opened_after: float | None  # seconds from sending to views.open reaching Slack; None: never
    error: str | None  # Slack's refusal of the views.open (e.g. expired_trigger_id)
    view_id: str | None  # of the form, when it opened


@dataclass(frozen=True)
class Answered:
    """One options request for the form's OpenAI-file menu."""

    seconds: float
    status: int
    kind: str  # "files" | "slow" | "other" (what the menu showed)
    options: int


def duration(seconds: float | None) -> str:
    """Milliseconds below a second, seconds above (the slow menu answers at about 2 s)."""
    return ms(seconds) if seconds is None or seconds < 1 else secs(seconds)


def classify(body: bytes) -> tuple[str, int]:
    """What the menu's answer showed: the files (their count), the "OpenAI is slow" option, or
    anything else (an error option, no JSON)."""
    try:
        options = json.loads(body or b"{}").get("options")
    except (ValueError, AttributeError):
        return "other", 0
    if not isinstance(options, list) or not options:
        return "other", 0
    values = [o.get("value") for o in options if isinstance(o, dict)]
    if values == [modal.NO_FILE_VALUE]:
        text = str((options[0].get("text") or {}).get("text") or "")
        return ("slow" if "slow" in text.lower() else "other"), 0
    if all(isinstance(v, str) and ids.is_file_id(v) for v in values):
        return "files", len(values)
    return "other", len(values)


def send_commands(submit: Submit, slack: FakeSlack, count: int, concurrency: int) -> list[Sent]:
    """`count` `/finetune create` commands. Their payloads, and so their triggers, are made right
    before they are sent: Slack issues a trigger when the user runs the command, and its 3 s start
    then, not when it reaches the bot."""
    requests = []
    for _ in range(count):
        fields = slack.slash_command_payload("create", response_url=slack.response_url(uuid.uuid4().hex))
        requests.append((fields["trigger_id"], urllib.parse.urlencode(fields)))
    return submit(requests, concurrency)


def opened(slack: FakeSlack, sent: list[Sent], bot: Bot) -> list[Opened]:
    """Waits (up to 15 s) for every command's views.open and reads what Slack made of it."""

    def records() -> dict[str, Any]:
        return {v.trigger_id: v for v in slack.views if v.method == "views.open" and v.trigger_id}

    wait_until(lambda: all(trigger in records() for trigger, *_ in sent), 15, bot=bot)
    found = records()
    out = []
    for trigger, sent_at, seconds, status, _ in sent:
        record = found.get(trigger)
        out.append(
            Opened(
                sent_at=sent_at,
                ack_seconds=seconds,
                status=status,
                opened_after=None if record is None else record.time - sent_at,
                error="no views.open" if record is None else record.error,
                view_id=record.view_id if record is not None and record.ok else None,
            )
        )
    return out


def suggestions(
    submit: Submit, slack: FakeSlack, view_ids: list[str], count: int, concurrency: int
) -> list[Answered]:
    """`count` options requests (nothing typed, the way the menu first loads) on the training-file
    menu of the forms `view_ids`, round-robin."""
    requests = []
    for i in range(count):
        view = slack.view(view_ids[i % len(view_ids)])
        payload = slack.block_suggestion_payload(
            modal.OPENAI_FILE_ACTION, "", block_id=modal.TRAINING_OPENAI, view=view
        )
        requests.append((uuid.uuid4().hex, FakeSlack.interactive_form(payload)))
    answers = []
    for _, _, seconds, status, body in submit(requests, concurrency):
        kind, options = classify(body) if status == 200 else ("other", 0)
        answers.append(Answered(seconds, status, kind, options))
    return answers


def check_opened(result: Result, phase: str, commands: list[Opened]) -> None:
    """One failure per kind of breakage, with its count (a broken bot would repeat it per command)."""
    bad_acks = Counter(c.status for c in commands if c.status != 200)
    for status, count in sorted(bad_acks.items()):
        result.fail(f"{phase}: {count} of {len(commands)} /finetune create answered HTTP {status}")
    # Slack refused the form (expired_trigger_id above all): the user saw nothing open.
    refused = Counter(c.error for c in commands if c.status == 200 and c.error is not None)
    for error, count in sorted(refused.items()):
        result.fail(f"{phase}: {count} of {len(commands)} views.open refused: {error}")


def check_answers(result: Result, phase: str, answers: list[Answered], expected: str) -> None:
    """One failure per kind of breakage, with its count."""
    total = len(answers)
    bad = Counter(a.status for a in answers if a.status != 200)
    for status, count in sorted(bad.items()):
        result.fail(f"{phase}: {count} of {total} options requests answered HTTP {status}")
    fine = [a for a in answers if a.status == 200]
    # Slack has given up by then: the menu shows an error instead of any answer.
    late = [a.seconds for a in fine if a.seconds >= SLACK_WINDOW]
    if late:
        result.fail(
            f"{phase}: {len(late)} of {total} options answers after Slack's {SLACK_WINDOW:g} s "
            f"(latest {max(late):.2f} s)"
        )
    other = sum(1 for a in fine if a.kind == "other")
    if other:
        result.fail(f"{phase}: {other} of {total} menus answered neither files nor 'OpenAI is slow'")
    listed = sum(1 for a in fine if a.kind == "files")
    if listed and expected == "slow":
        # Files listed while every OpenAI call takes 5 s: the answer waited for OpenAI.
        result.fail(f"{phase}: {listed} of {total} menus listed files though OpenAI takes {SLOW_OPENAI:g} s")


def report_commands(result: Result, variant: str, commands: list[Opened]) -> dict[str, Any]:
    acks = summary([c.ack_seconds for c in commands])
    delays = [c.opened_after for c in commands if c.opened_after is not None]
    stats = summary(delays)
    refused = [c.error for c in commands if c.error is not None]
    late = sum(1 for d in delays if d >= SLACK_WINDOW)
    result.row(variant, "ack p50 / max", f"{ms(acks['p50'])} / {ms(acks['max'])}")
    result.row(
        variant,
        "command → views.open at Slack, p50 / p95 / max",
        f"{duration(stats['p50'])} / {duration(stats['p95'])} / {duration(stats['max'])}",
        "< 3 s",
        stats["max"] is not None and stats["max"] < SLACK_WINDOW and not refused,
    )
    result.row(
        variant,
        "forms opened / refused by Slack",
        f"{len(commands) - len(refused)} of {len(commands)} / {len(refused)}"
        + (f" ({', '.join(sorted(set(refused)))})" if refused else ""),
        "all / 0",
        not refused,
    )
    return {
        "ack_seconds": acks,
        "views_open_seconds": stats,
        "views_open_samples": delays,
        "refused": refused,
        "views_open_over_3s": late,
    }


def report_answers(result: Result, variant: str, answers: list[Answered], expected: str) -> dict[str, Any]:
    stats = summary([a.seconds for a in answers])
    kinds = {k: sum(1 for a in answers if a.kind == k) for k in ("files", "slow", "other")}
    over = sum(1 for a in answers if a.seconds >= SLACK_WINDOW)
    result.row(
        variant,
        "options request → answer, p50 / max",
        f"{duration(stats['p50'])} / {duration(stats['max'])}",
        "< 3 s",
        stats["max"] is not None and stats["max"] < SLACK_WINDOW,
    )
    sizes = sorted({a.options for a in answers if a.kind == "files"})
    said = {
        "files": f"{kinds['files']} listed files ({'/'.join(map(str, sizes)) or 0} options)",
        "slow": f"{kinds['slow']} said 'OpenAI is slow'",
    }
    result.row(
        variant,
        "menu answers",
        f"{said[expected]} of {len(answers)}"
        + "".join(f"; {said[k]}" for k in said if k != expected and kinds[k])
        + (f"; {kinds['other']} other" if kinds["other"] else ""),
        "all " + ("files" if expected == "files" else "'slow'"),
        kinds[expected] == len(answers),
    )
    return {
        "answer_seconds": stats,
        "answer_samples": [a.seconds for a in answers],
        "kinds": kinds,
        "over_3s": over,
    }


def run(quick: bool) -> Result:
    one_by_one, burst, bursts = (3, 20, 1) if quick else (20, 20, 3)
    options_one_by_one = 2 if quick else 10
    result = Result(
        "modal",
        "9. Create form",
        params={
            "openai_latencies_s": [0.0, SLOW_OPENAI],
            "commands_one_at_a_time": one_by_one,
            "burst_size": burst,
            "bursts": bursts,
            "options_one_at_a_time": options_one_by_one,
            "options_burst": burst,
            "fine_tune_files": SEEDED_FILES,
            "slack_window_s": SLACK_WINDOW,
            "store": "sqlite",
        },
    )
    with fakes() as (openai, slack), tempfile.TemporaryDirectory(prefix="bench-modal-") as tmp:
        seed_files(openai)
        with running_bot(openai, slack, Path(tmp)) as bot:
            url = f"{bot.url}/slack/events"
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:

                def submit(requests: list[tuple[str, str]], concurrency: int) -> list[Sent]:
                    return pool.submit(fire_read, url, requests, concurrency).result(120)

                # Warm-up: the first requests pay for lazy imports and new connections.
                log("modal: warm-up")
                warm = opened(slack, send_commands(submit, slack, 3, 3), bot)
                check_opened(result, "warm-up", warm)
                warm_views = [c.view_id for c in warm if c.view_id]
                if not warm_views:
                    raise FunctionalError(f"no create form opened during the warm-up:\n{bot.tail()}")
                suggestions(submit, slack, warm_views, 3, 3)

                for latency, expected in ((0.0, "files"), (SLOW_OPENAI, "slow")):
                    openai.latency = latency
                    tag = f"OpenAI {latency:g} s"
                    figures = result.figures.setdefault(tag, {})
                    log(f"modal: {tag}: {one_by_one} commands one at a time")
                    alone: list[Opened] = []
                    for _ in range(one_by_one):
                        alone += opened(slack, send_commands(submit, slack, 1, 1), bot)
                    check_opened(result, f"{tag}, one at a time", alone)
                    figures["commands_one_at_a_time"] = report_commands(
                        result, f"{tag}, commands one at a time", alone
                    )

                    log(f"modal: {tag}: {bursts} burst(s) of {burst} commands at once")
                    crowd: list[Opened] = []
                    for _ in range(bursts):
                        crowd += opened(slack, send_commands(submit, slack, burst, burst), bot)
                    check_opened(result, f"{tag}, burst", crowd)
                    figures["commands_burst"] = report_commands(
                        result, f"{tag}, {burst} commands at once (x{bursts})", crowd
                    )

                    views = [c.view_id for c in alone + crowd if c.view_id] or warm_views
                    log(
                        f"modal: {tag}: {options_one_by_one} options requests one at a time, "
                        f"then {burst} at once"
                    )
                    single = suggestions(submit, slack, views, options_one_by_one, 1)
                    check_answers(result, f"{tag}, options one at a time", single, expected)
                    figures["options_one_at_a_time"] = report_answers(
                        result, f"{tag}, options one at a time", single, expected
                    )
                    many = suggestions(submit, slack, views, burst, burst)
                    check_answers(result, f"{tag}, options burst", many, expected)
                    figures["options_burst"] = report_answers(
                        result, f"{tag}, {burst} options requests at once", many, expected
                    )
                openai.latency = 0.0
            result.figures["bot_startup_seconds"] = bot.startup_seconds
            errors = bot.errors_logged()
            if errors:
                result.notes.append(f"the bot logged {len(errors)} error line(s), first: {errors[0][:200]}")
    result.notes.append(
        f"the fake Slack refuses a trigger used {SLACK_WINDOW:g} s or more after it was issued "
        f"(expired_trigger_id), so 'refused 0' is Slack's rule, not this benchmark's clock; "
        f"bot start-up {secs(result.figures.get('bot_startup_seconds'))}"
    )
    return result


def seed_files(openai: TimedFakeOpenAI) -> None:
    base = int(time.time()) - SEEDED_FILES - 3600
    for i in range(SEEDED_FILES):
        openai.add_file(f"support-{i:03d}.jsonl", created_at=base + i)
