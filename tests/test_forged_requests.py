"""Requests that did not come from Slack, or came from Slack too long ago, change nothing.

Each case builds a real slash-command body for a command with visible effects (`create` starts a job
and posts an announcement; `list` calls OpenAI and answers through response_url), spoils one part of
Slack's signing scheme (v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}"), timestamp within 5
minutes), and checks that the bot answers 401 and that nothing reached OpenAI or Slack.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.bot_process import SIGNING_SECRET
from tests.fakes import sign_slack_request
from tests.harness import Harness, all_text, fresh, module_bot

TEXTS = ("create file-abc123", "list")
OTHER_SECRET = "a-different-apps-signing-secret-77"

Headers = dict[str, str | bytes]


@dataclass(frozen=True)
class Forged:
    body: str | bytes
    headers: Headers


def v0(secret: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


def signed(body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    return sign_slack_request(body, secret, timestamp)


def without(headers: dict[str, str], name: str) -> Headers:
    return {k: v for k, v in headers.items() if k != name}


def replace(headers: dict[str, str], name: str, value: str | bytes) -> Headers:
    return {**headers, name: value}


SIG = "X-Slack-Signature"
TS = "X-Slack-Request-Timestamp"
NOW: Callable[[], int] = lambda: int(time.time())  # noqa: E731 - read at request time, not import time


def _altered_text(body: str) -> Forged:
    headers = signed(body)
    # Signed as `list`/`create`, delivered as a cancel: the signature covers the text it was made for.
    text = urllib.parse.parse_qs(body)["text"][0]
    return Forged(body.replace(urllib.parse.urlencode({"text": text}), "text=cancel+ftjob-abc123"), headers)


# name -> how to spoil a correctly built request (the body is the urlencoded slash command)
CASES: dict[str, Callable[[str], Forged]] = {
    # -- the signature header
    "signature-missing": lambda b: Forged(b, without(signed(b), SIG)),
    "signature-empty": lambda b: Forged(b, replace(signed(b), SIG, "")),
    "signature-wrong": lambda b: Forged(b, replace(signed(b), SIG, "v0=" + uuid.uuid4().hex * 2)),
    "signature-truncated-by-one": lambda b: Forged(b, replace(signed(b), SIG, signed(b)[SIG][:-1])),
    "signature-truncated-to-half": lambda b: Forged(b, replace(signed(b), SIG, signed(b)[SIG][:35])),
    "signature-only-version": lambda b: Forged(b, replace(signed(b), SIG, "v0=")),
    "signature-one-extra-char": lambda b: Forged(b, replace(signed(b), SIG, signed(b)[SIG] + "0")),
    "signature-without-v0-prefix": lambda b: Forged(b, replace(signed(b), SIG, signed(b)[SIG][3:])),
    "signature-other-version": lambda b: Forged(b, replace(signed(b), SIG, "v1=" + signed(b)[SIG][3:])),
    "signature-upper-case-hex": lambda b: Forged(
        b, replace(signed(b), SIG, "v0=" + signed(b)[SIG][3:].upper())
    ),
    "signature-for-another-secret": lambda b: Forged(b, signed(b, secret=OTHER_SECRET)),
    "signature-of-another-body": lambda b: Forged(b, signed(b.replace("alice", "mallory"))),
    "signature-for-another-timestamp": lambda b: Forged(
        b, replace(signed(b, timestamp=NOW() - 10), TS, str(NOW()))
    ),
    "signature-with-empty-secret-hmac": lambda b: Forged(b, replace(signed(b), SIG, v0("", str(NOW()), b))),
    # -- the timestamp header
    "timestamp-missing": lambda b: Forged(b, without(signed(b), TS)),
    "timestamp-zero": lambda b: Forged(b, replace(signed(b), TS, "0")),
    "timestamp-6-minutes-old": lambda b: Forged(b, signed(b, timestamp=NOW() - 6 * 60)),
    "timestamp-6-minutes-ahead": lambda b: Forged(b, signed(b, timestamp=NOW() + 6 * 60)),
    # A valid request captured and replayed later looks exactly like this to the server.
    "replayed-after-301-seconds": lambda b: Forged(b, signed(b, timestamp=NOW() - 301)),
    "replayed-after-an-hour": lambda b: Forged(b, signed(b, timestamp=NOW() - 3600)),
    "replayed-after-a-day": lambda b: Forged(b, signed(b, timestamp=NOW() - 86400)),
    # -- the body, altered after signing
    "body-user-changed": lambda b: Forged(b.replace("U123", "U999"), signed(b)),
    "body-channel-changed": lambda b: Forged(b.replace("C123", "C999"), signed(b)),
    "body-text-changed": _altered_text,
    "body-field-appended": lambda b: Forged(b + "&user_id=U999", signed(b)),
    "body-truncated": lambda b: Forged(b[:-12], signed(b)),
    "body-response-url-changed": lambda b: Forged(
        b.replace("%2Fresponse%2F", "%2Fresponse%2Fevil-"), signed(b)
    ),
    "body-empty": lambda b: Forged("", signed(b)),
}

# Malformed headers Bolt does not expect: slack_sdk's SignatureVerifier calls int(timestamp) and
# hmac.compare_digest(str, str) unguarded; the bot refuses them before Bolt sees them (401).
MALFORMED: dict[str, Callable[[str], Forged]] = {
    "timestamp-not-a-number": lambda b: Forged(b, replace(signed(b), TS, "yesterday")),
    "timestamp-empty": lambda b: Forged(b, replace(signed(b), TS, "")),
    "timestamp-with-fraction": lambda b: Forged(b, replace(signed(b), TS, f"{time.time():.3f}")),
    "signature-non-ascii": lambda b: Forged(
        b, replace(signed(b), SIG, ("v0=é" + signed(b)[SIG][4:]).encode("latin-1"))
    ),
}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("forged")
    # No poll cycle after the first: a leftover watch must not post into a later test's window.
    with module_bot(workdir, FINETUNE_ADMINS="U123", POLL_INTERVAL_SECONDS="86400") as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)


def slash_body(h: Harness, text: str, key: str) -> str:
    fields = h.slack.slash_command_payload(text, response_url=h.slack.response_url(key))
    return urllib.parse.urlencode(fields)


def post(h: Harness, forged: Forged) -> httpx.Response:
    return httpx.post(f"{h.bot.url}/slack/events", content=forged.body, headers=forged.headers, timeout=10)


def assert_refused_and_inert(h: Harness, spoil: Callable[[str], Forged]) -> None:
    keys = []
    for text in TEXTS:
        key = uuid.uuid4().hex
        keys.append(key)
        response = post(h, spoil(slash_body(h, text, key)))
        assert response.status_code == 401, (text, response.status_code, response.text)
        assert SIGNING_SECRET not in response.text
    assert_nothing_reached_openai_or_slack(h, keys)


def assert_nothing_reached_openai_or_slack(h: Harness, keys: list[str]) -> None:
    """After a genuine command sent later has been answered: the refused ones left no trace."""
    control = h.control()
    assert h.openai_requests_besides(control) == [], h.openai.describe()
    assert h.slack.calls == [] and h.slack.messages == [], h.slack.describe()
    assert h.responses_besides(control) == []
    assert all(h.slack.responses_for(k) == [] for k in keys)
    assert h.openai.jobs == {}


def test_a_correctly_signed_request_is_accepted(h: Harness) -> None:
    """The control: the same bodies, signed properly, do reach OpenAI and Slack."""
    key = uuid.uuid4().hex
    body = slash_body(h, "list", key)
    response = post(h, Forged(body, signed(body)))
    assert response.status_code == 200
    h.slack.wait_for(lambda s: s.responses_for(key))
    assert "No fine-tuning jobs" in all_text(h.slack.responses_for(key)[0].json)
    # Signed 299 s ago: still inside Slack's five minutes.
    key = uuid.uuid4().hex
    body = slash_body(h, "create file-abc123", key)
    response = post(h, Forged(body, signed(body, timestamp=int(time.time()) - 299)))
    assert response.status_code == 200
    h.slack.wait_for(lambda s: s.messages)
    assert len(h.openai.jobs) == 1


@pytest.mark.parametrize("case", list(CASES))
def test_forged_or_replayed_request_is_refused(h: Harness, case: str) -> None:
    assert_refused_and_inert(h, CASES[case])


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_signing_headers_are_refused_with_401(h: Harness, case: str) -> None:
    assert_refused_and_inert(h, MALFORMED[case])


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_signing_headers_change_nothing(h: Harness, case: str) -> None:
    """Whatever the status code, a malformed request never reaches a listener."""
    keys = []
    for text in TEXTS:
        keys.append(uuid.uuid4().hex)
        response = post(h, MALFORMED[case](slash_body(h, text, keys[-1])))
        assert response.status_code == 401
    assert_nothing_reached_openai_or_slack(h, keys)


def test_the_bot_survives_a_burst_of_forgeries(h: Harness) -> None:
    keys = [uuid.uuid4().hex for _ in [*CASES, *MALFORMED]]
    for spoil, key in zip([*CASES.values(), *MALFORMED.values()], keys, strict=True):
        assert post(h, spoil(slash_body(h, "create file-abc123", key))).status_code == 401
    assert httpx.get(f"{h.bot.url}/healthz", timeout=5).status_code == 200
    # and still serves the real thing (the control), while none of the forgeries left a trace
    assert_nothing_reached_openai_or_slack(h, keys)
