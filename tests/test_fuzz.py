"""Fuzzed `/finetune` text: the parser never raises, only well-formed ids get through, every error
renders inert, and a running bot answers every text (200, a message) without a bad OpenAI path.

Hypothesis is derandomized (the same examples on every run) and keeps no example database, so the
suite is reproducible and writes nothing into the checkout.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot import ids, render
from bot.commands import (
    MAX_LIMIT,
    MAX_SEED,
    METHODS,
    MODEL_NAME,
    SUFFIX,
    CancelCommand,
    CreateCommand,
    EventsCommand,
    FilesCommand,
    GetCommand,
    HelpCommand,
    ListCommand,
    OpenCreateFormCommand,
    ParseError,
    UnwatchCommand,
    WatchCommand,
    parse_command,
)
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.openai import RecordedRequest
from tests.fakes.slack import _block_errors
from tests.harness import Harness, all_text, start_bot

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
COMMAND_TYPES = (
    HelpCommand,
    CreateCommand,
    ListCommand,
    GetCommand,
    EventsCommand,
    CancelCommand,
    WatchCommand,
    UnwatchCommand,
    OpenCreateFormCommand,  # bare `create`: the form
    FilesCommand,
)
# Mentions and links Slack would act on if they reached mrkdwn unescaped.
LIVE_TOKENS = ("<!", "<@", "<#", "<http", "<mailto")

PURE = settings(
    max_examples=400,
    deadline=timedelta(seconds=2),  # catches catastrophic regex backtracking, tolerates a busy CI box
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies ----------------------------------------------------------------------------------

WORDS = [
    "help",
    "create",
    "start",
    "list",
    "ls",
    "get",
    "status",
    "retrieve",
    "show",
    "events",
    "logs",
    "cancel",
    "watch",
    "follow",
    "unwatch",
    "unfollow",
    "files",
    "file",
    "CREATE",
    "Get",
    "deploy",
    "",
]
OPTION_KEYS = [
    "model",
    "validation_file",
    "validation",
    "suffix",
    "epochs",
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "lr",
    "seed",
    "method",
    "beta",
    "limit",
    "LIMIT",
    "--limit",
    "after",
    "colour",
    "",
]
HOSTILE = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<!subteam^S123|@team>",
    "<@U123>",
    "<@U123|alice>",
    "<#C123|general>",
    "<https://evil.example|click me>",
    "<mailto:a@b.example|mail>",
    "&lt;!channel&gt;",
    "&lt;@U123&gt;",
    "&amp;lt;!here&amp;gt;",
    "&amp;",
    "&",
    "<",
    ">",
    "`",
    "```",
    "```<!channel>```",
    "'",
    '"',
    "\u201c",
    "\u2019",
    "=",
    "==",
    "a=b=c",
    "\n",
    "\r\n",
    "\t",
    "\x00",
    "\x1b[31m",
    "\u200b",
    "\u202e",
    "\ufeff",
    "../../files",
    "%2e%2e%2f",
    "ftjob-abc/../../files",
    "ftjob-abc%2F..%2Ffiles",
    "ftjob-abc?limit=100",
    "ftjob-abc#frag",
    "ftjob-abc\\..\\x",
    "ftjob-\u0430bc",  # Cyrillic a
    "\uff46\uff54\uff4a\uff4f\uff42-abc",  # fullwidth "ftjob"
    "ftjob-" + "a" * 64,
    "ftjob-" + "a" * 65,
    "ftjob-",
    "file-abc123",
    "file-val456",
    "file-",
    "file-abc/../x",
    "file-" + "z" * 65,
    "gpt-4o-mini-2024-07-18",
    "ft:gpt-4o-mini:acme:x:abc",
    "auto",
    "AUTO",
    "dpo",
    "supervised",
    "nan",
    "inf",
    "-1",
    "0",
    "1e309",
    "+7",
    "2147483648",
    "١٢",  # Arabic-Indic digits: int() accepts them, the parser must not
    "\U0001f600",
]

safe_id_chars = string.ascii_letters + string.digits + "_-"
valid_job_ids = st.from_regex(ids.JOB_ID, fullmatch=True)
valid_file_ids = st.from_regex(ids.FILE_ID, fullmatch=True)
near_ids = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["ftjob-", "file-", "FTJOB-", "ftjob_", "ftjob", "ftckpt_", ""]),
    st.text(min_size=0, max_size=70),
)
values = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=30),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=safe_id_chars + ".:", max_size=70),
)
options = st.builds(
    lambda key, sep, value: f"{key}{sep}{value}",
    st.one_of(st.sampled_from(OPTION_KEYS), st.text(max_size=10)),
    st.sampled_from(["=", "=", "==", "= ", " ="]),
    values,
)
tokens = st.one_of(st.sampled_from(HOSTILE), valid_job_ids, valid_file_ids, near_ids, options, values)
separators = st.sampled_from([" ", " ", "  ", "\n", "\t", "\u00a0", "\u3000", ""])


@st.composite
def command_texts(draw: st.DrawFn) -> str:
    """A real subcommand word (or a near miss) followed by a handful of mixed arguments."""
    word = draw(st.one_of(st.sampled_from(WORDS), st.text(max_size=8)))
    parts = [word, *draw(st.lists(tokens, max_size=7))]
    out = ""
    for part in parts:
        out += part + draw(separators)
    if draw(st.booleans()):
        out = slack_escape(out)
    return out


@st.composite
def long_texts(draw: st.DrawFn) -> str:
    """Around 4,000 characters (Slack's limit for slash command text)."""
    head = draw(st.sampled_from(WORDS))
    chunk = draw(st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=40), valid_job_ids))
    size = draw(st.integers(3_900, 4_000))
    unit = chunk + draw(separators)
    body = unit * (size // len(unit) + 1)
    return (head + " " + body)[:size]


any_text = st.one_of(
    st.text(),  # any unicode, control characters included
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn"])),
    command_texts(),
)


def slack_escape(text: str) -> str:
    """What Slack does to the text before sending it to the app."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- checks --------------------------------------------------------------------------------------


def mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    """The strings Slack parses as mrkdwn: the top-level fallback text and every mrkdwn object."""
    found = [message.get("text") or ""]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") == "mrkdwn" and isinstance(value.get("text"), str):
                found.append(value["text"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(message.get("blocks") or [])
    return found


def assert_inert_reply(message: dict[str, Any]) -> None:
    for text in mrkdwn_texts(message):
        for token in LIVE_TOKENS:
            assert token not in text, (token, text)
        # Nothing from the input may form a new entity or half of one.
        assert re.search(r"&(?!amp;|lt;|gt;)", text) is None, text
    assert _block_errors(message.get("blocks") or []) == [], _block_errors(message.get("blocks") or [])
    assert len(message.get("text") or "") <= 40_000


def check_command(result: Any) -> None:
    assert isinstance(result, (*COMMAND_TYPES, ParseError)), type(result)
    for attr, pattern in (
        ("job_id", ids.JOB_ID),
        ("training_file", ids.FILE_ID),
        ("validation_file", ids.FILE_ID),
    ):
        value = getattr(result, attr, None)
        if value is not None:
            assert isinstance(value, str) and pattern.fullmatch(value), (attr, value)
    if isinstance(result, ListCommand | EventsCommand | FilesCommand):
        assert 1 <= result.limit <= MAX_LIMIT
    if isinstance(result, CreateCommand):
        assert MODEL_NAME.fullmatch(result.model), result.model
        assert result.suffix is None or SUFFIX.fullmatch(result.suffix), result.suffix
        assert result.seed is None or 0 <= result.seed <= MAX_SEED
        assert result.method in METHODS
        for key, value in result.hyperparameters.items():
            if value == "auto":
                continue
            if key == "n_epochs":
                assert isinstance(value, int) and 1 <= value <= 50
            elif key == "batch_size":
                assert isinstance(value, int) and 1 <= value <= 256
            elif key == "learning_rate_multiplier":
                assert isinstance(value, float) and math.isfinite(value) and value > 0
            elif key == "beta":
                assert result.method == "dpo" and isinstance(value, float) and 0 < value <= 2
            else:
                raise AssertionError(f"unexpected hyperparameter {key}={value!r}")
    if isinstance(result, ParseError):
        assert isinstance(result.message, str) and result.message
        reply = render.render_parse_error(result)
        assert_inert_reply(reply.as_kwargs())


def parse(text: str) -> Any:
    return parse_command(text, default_model=DEFAULT_MODEL)


# -- property tests on the parser ----------------------------------------------------------------


@PURE
@given(any_text)
def test_parse_never_raises_and_only_valid_ids_pass(text: str) -> None:
    result = parse(text)
    check_command(result)
    assert parse(text) == result  # pure: same text, same answer


@PURE
@given(command_texts())
def test_real_subcommands_with_random_arguments(text: str) -> None:
    check_command(parse(text))


@settings(PURE, max_examples=60)
@given(long_texts())
def test_four_thousand_character_inputs(text: str) -> None:
    assert 3_900 <= len(text) <= 4_000
    result = parse(text)
    check_command(result)
    if isinstance(result, ParseError):
        # The echo of a pasted essay is cut short, whatever it is made of.
        assert len(result.message) < 1_000


@PURE
@given(st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=8), st.sampled_from(WORDS))
def test_slack_markup_never_survives_into_an_error(pieces: list[str], word: str) -> None:
    for text in (f"{word} {' '.join(pieces)}", f"{word} {''.join(pieces)}", " ".join(pieces)):
        for variant in (text, slack_escape(text)):
            check_command(parse(variant))


@PURE
@given(st.sampled_from(WORDS), st.lists(options, max_size=6), st.sampled_from(["", "=", '"', "'", "\n"]))
def test_injected_equals_quotes_and_newlines(word: str, opts: list[str], junk: str) -> None:
    text = f"{word} file-abc123 ftjob-abc123 " + junk.join(opts)
    check_command(parse(text))


@PURE
@given(any_text)
def test_slacks_escaping_does_not_change_the_meaning(text: str) -> None:
    # Slack escapes & < > before sending; typed text that already holds `&` is ambiguous by design.
    assume("&" not in text)
    assert parse(slack_escape(text)) == parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "get <@U123>",
        "cancel <!channel>",
        "events <https://evil.example|x>",
        "create <#C123|general>",
        "create file-abc123 suffix=<!here>",
        "create file-abc123 model=<@U123>",
        "&lt;!channel&gt;",
        "get &lt;@U123&gt;",
        "list limit=<!everyone>",
        "<mailto:a@b.example|x>",
    ],
)
def test_known_hostile_texts(text: str) -> None:
    result = parse(text)
    assert isinstance(result, ParseError)
    check_command(result)


# -- through HTTP: a running bot answers every fuzzed text ----------------------------------------

_JOB_PATH = re.compile(r"/fine_tuning/jobs/(?P<id>[^/]*)(?:/(?P<action>events|cancel))?")


def check_openai_request(request: RecordedRequest) -> None:
    """Only spec paths, and ids in them that match bot/ids.py."""
    path = request.path
    if path == "/fine_tuning/jobs":
        assert request.method in ("GET", "POST"), request
        if request.method == "POST":
            body = request.json or {}
            assert ids.FILE_ID.fullmatch(body.get("training_file", "")), body
            if body.get("validation_file") is not None:
                assert ids.FILE_ID.fullmatch(body["validation_file"]), body
    elif path == "/files":  # `files`: the fine-tune files, read only
        assert request.method == "GET" and request.query.get("purpose") == "fine-tune", request
    elif path.startswith("/files/"):  # `validate file-…`: one file's content, read only
        match = re.fullmatch(r"/files/(?P<id>[^/]+)/content", path)
        assert match is not None and request.method == "GET", f"unexpected OpenAI path {path!r}"
        assert ids.FILE_ID.fullmatch(match["id"]), f"bad file id in OpenAI path {path!r}"
    else:
        match = _JOB_PATH.fullmatch(path)
        assert match is not None, f"unexpected OpenAI path {request.method} {path!r}"
        assert ids.JOB_ID.fullmatch(match["id"]), f"bad job id in OpenAI path {path!r}"
    if "after" in request.query:
        assert ids.JOB_ID.fullmatch(request.query["after"]), request.query
    if "limit" in request.query:
        assert re.fullmatch(r"\d{1,3}", request.query["limit"]) and 1 <= int(request.query["limit"]) <= 100


@pytest.fixture(scope="module")
def fuzz_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with FakeOpenAI() as openai, FakeSlack() as slack:
        workdir: Path = tmp_path_factory.mktemp("fuzz")
        # U123 is an admin, so fuzzed cancels with a well-formed id do reach OpenAI.
        bot = start_bot(openai, slack, workdir, FINETUNE_ADMINS="U123", POLL_INTERVAL_SECONDS="30")
        for job_id, status in zip(KNOWN_JOBS, ("queued", "running", "succeeded"), strict=True):
            openai.add_job(id=job_id, status=status)
        try:
            yield Harness(bot, openai, slack)
        finally:
            code = bot.stop()
            assert code == 0, bot.logs
        assert openai.schema_errors == []


class LogTail:
    """New lines of the bot's log since the last call (the file grows; never re-read it whole)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace")


# Jobs that exist in the fuzzing bot's OpenAI, so some fuzzed ids hit a real job.
KNOWN_JOBS = ("ftjob-fuzzQueued", "ftjob-fuzzRunning", "ftjob-fuzzDone")
job_ids = st.one_of(st.sampled_from(KNOWN_JOBS), valid_job_ids, near_ids)
job_words = st.sampled_from(["get", "status", "events", "logs", "cancel", "watch", "unwatch", "follow"])

# Options that are often valid, so that fuzzed commands get past the parser and reach OpenAI.
good_options = st.one_of(
    st.integers(0, 120).map(lambda n: f"limit={n}"),
    st.one_of(st.integers(0, 60).map(str), st.just("auto")).map(lambda v: f"epochs={v}"),
    st.one_of(st.integers(0, 300).map(str), st.just("auto")).map(lambda v: f"batch_size={v}"),
    st.floats(0, 20).map(lambda v: f"lr={v:g}"),
    st.from_regex(SUFFIX, fullmatch=True).map(lambda v: f"suffix={v}"),
    st.integers(-1, MAX_SEED + 1).map(lambda v: f"seed={v}"),
    st.sampled_from(["method=dpo beta=0.5", "method=supervised", "validation_file=file-val456"]),
    st.from_regex(MODEL_NAME, fullmatch=True).map(lambda v: f"model={v}"),
    options,
)
http_texts = st.one_of(
    st.text(max_size=200),
    command_texts(),
    command_texts().map(slack_escape),
    st.lists(st.sampled_from(HOSTILE), max_size=6).map(" ".join),
    st.builds(lambda w, i: f"{w} {i}", job_words, job_ids),
    st.builds(lambda w, i: f"{w} {i}", job_words, st.sampled_from(KNOWN_JOBS)),
    st.builds(lambda i, o: f"events {i} {o}", job_ids, good_options),
    st.builds(
        lambda i, o: f"create {i} {' '.join(o)}",
        st.one_of(st.just("file-abc123"), valid_file_ids, near_ids),
        st.lists(good_options, max_size=2),
    ),
    st.builds(
        lambda i, o: f"create {i} {' '.join(o)}", st.just("file-abc123"), st.lists(good_options, max_size=3)
    ),
    st.lists(good_options, max_size=1).map(lambda o: "list " + " ".join(o)),
)


@dataclass
class FuzzRun:
    """One pass of the HTTP fuzzing over the module's bot: whichever test asks for it first runs it."""

    harness: Harness
    texts: int = 0
    failure: BaseException | None = None


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(text=http_texts)
def answer_every_fuzzed_text(run: FuzzRun, tail: LogTail, text: str) -> None:
    h = run.harness
    run.texts += 1
    channel = f"CFUZZ{run.texts:04d}"  # one channel per text, so an announcement can be traced to it
    before = len(h.openai.requests)
    forms_before = len([v for v in h.slack.views if v.ok])
    response, key = h.command(text, channel_id=channel)
    assert response.status_code == 200, (text, response.status_code, response.text[:500])
    if response.content.strip():
        body = response.json()
        assert body.get("text") or body.get("blocks"), body
        assert_inert_reply(body)
    else:
        # Acknowledged empty: the answer comes by response_url, as a channel post (create/watch),
        # or (a bare `create`) as the create form opened for the user.
        h.slack.wait_for(
            lambda s: s.responses_for(key)
            or s.messages_in(channel)
            or len([v for v in s.views if v.ok]) > forms_before,
            timeout=20,
            message=f"an answer to {text!r}",
        )
        for reply in h.slack.responses_for(key):
            assert reply.json is not None, reply.body
            assert "Something went wrong on my side" not in all_text(reply.json), (text, reply.json)
    for request in h.openai.requests[before:]:
        check_openai_request(request)
    assert h.bot.process is not None and h.bot.process.poll() is None, h.bot.logs[-3000:]
    logs = tail.new()
    assert " ERROR " not in logs and "Traceback" not in logs, (text, logs[-3000:])


@pytest.fixture(scope="module")
def fuzz_run(fuzz_bot: Harness) -> FuzzRun:
    """The fuzzing itself, run once for the module whichever test comes first (or alone): a failing
    example is kept, not raised, so each test reports on the run its own way."""
    run = FuzzRun(fuzz_bot)
    try:
        answer_every_fuzzed_text(run, LogTail(fuzz_bot.bot.log_path))
    except Exception as failure:  # hypothesis' falsifying example, re-raised by the test below
        run.failure = failure
    return run


def test_http_every_fuzzed_text_is_answered(fuzz_run: FuzzRun) -> None:
    if fuzz_run.failure is not None:
        raise fuzz_run.failure
    assert fuzz_run.texts >= 300


def test_http_fuzz_aftermath(fuzz_run: FuzzRun) -> None:
    """After the fuzzing: no reply was sent twice, every OpenAI request was well-formed."""
    h = fuzz_run.harness
    # The coverage below means something only for a whole run (a failing one stops early).
    assert fuzz_run.failure is None, "the fuzzing failed: see test_http_every_fuzzed_text_is_answered"
    keys = [r.key for r in h.slack.responses]
    assert len(keys) == len(set(keys)), "a response_url got more than one reply"
    for request in h.openai.requests:
        check_openai_request(request)
    assert all(r.status is not None and r.status < 500 for r in h.openai.requests)
    # The fuzzing reached every operation a command can call, with both outcomes.
    reached = {
        (r.method, _JOB_PATH.sub(r"/fine_tuning/jobs/ID/\g<action>", r.path), r.status)
        for r in h.openai.requests
    }
    for wanted in [
        ("GET", "/fine_tuning/jobs", 200),
        ("POST", "/fine_tuning/jobs", 200),
        ("POST", "/fine_tuning/jobs", 400),
        ("GET", "/fine_tuning/jobs/ID/", 200),
        ("GET", "/fine_tuning/jobs/ID/", 404),
        ("GET", "/fine_tuning/jobs/ID/events", 200),
    ]:
        assert wanted in reached, (wanted, sorted(reached))
    assert any(path.endswith("/cancel") for _, path, _ in reached), sorted(reached)
    assert h.bot.process is not None and h.bot.process.poll() is None
