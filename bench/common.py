"""What every benchmark shares: the fakes, the bot subprocess, seeding, sampling and reporting."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import itertools
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from bot.store import Store, watches
from tests.bot_process import BotProcess
from tests.db import postgres_available
from tests.fakes import FakeOpenAI, FakeSlack
from tests.fakes.openapi_spec import Operation
from tests.fakes.slack import RecordedMessage
from tests.harness import bot_env

REPO = Path(__file__).resolve().parents[1]
OUTCOME_EVENT = "finetune_outcome"  # message metadata event_type of every outcome post
STORES = ("sqlite", "postgres")


class FunctionalError(Exception):
    """Something is broken, not merely slow: the bot died, a notification was lost, a duplicate."""


def log(message: str) -> None:
    # Progress goes to stderr so stdout carries only the table.
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Row:
    variant: str
    metric: str
    value: str
    goal: str = ""
    met: bool | None = None  # None: no goal for this figure
    # The deliberately naive strategy, shown for comparison: missing the goal is its point.
    baseline: bool = False


@dataclass
class Result:
    name: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    load_before: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def row(
        self,
        variant: str,
        metric: str,
        value: str,
        goal: str = "",
        met: bool | None = None,
        *,
        baseline: bool = False,
    ) -> None:
        self.rows.append(Row(variant, metric, value, goal, met, baseline))

    def fail(self, message: str) -> None:
        log(f"FAILURE in {self.name}: {message}")
        self.failures.append(message)

    def skip(self, message: str) -> None:
        log(f"skipping: {message}")
        self.skipped.append(message)


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def secs(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), p in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "min": min(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


def goal_verdict(row: Row) -> str:
    if row.met:
        return "met"
    # A baseline is expected to miss; its row must not read like a failure in a CI log.
    return "not met (naive baseline, for comparison)" if row.baseline else "**MISSED**"


def render_table(results: Sequence[Result]) -> str:
    """One Markdown table of every figure, so a run's output can be pasted into BENCHMARKS.md."""
    lines = ["| Benchmark | Variant | Figure | Value | Goal |", "| --- | --- | --- | --- | --- |"]
    for result in results:
        for row in result.rows:
            goal = row.goal
            if row.met is not None:
                goal = f"{goal} {goal_verdict(row)}".strip()
            lines.append(f"| {result.title} | {row.variant} | {row.metric} | {row.value} | {goal} |")
        for reason in result.skipped:
            lines.append(f"| {result.title} | skipped | {reason} | | |")
        for failure in result.failures:
            lines.append(f"| {result.title} | **FAILED** | {failure} | | |")
    return "\n".join(lines)


# -- the machine -----------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_head() -> str | None:
    return _git("rev-parse", "HEAD")


def _postgres_version() -> str | None:
    if postgres_available() is not None:
        return None
    import sqlalchemy as sa

    from tests.db import PG_ADMIN_URL

    engine = sa.create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


def machine_description() -> dict[str, Any]:
    packages = {}
    for name in (
        "slack-bolt",
        "slack-sdk",
        "httpx",
        "uvicorn",
        "starlette",
        "sqlalchemy",
        "psycopg",
        "aiohttp",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            packages[name] = importlib.metadata.version(name)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_mb": _mem_total_mb(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        # Uncommitted changes to tracked files mean the figures are not exactly those of the commit.
        "git_dirty": bool(status) if status is not None else None,
        "postgres_server": _postgres_version(),
        "packages": packages,
        # Other engineers share this kind of machine: a high load average means noisy figures.
        "load_average_at_start": list(os.getloadavg()),
    }


# -- fakes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One request the fake OpenAI served: when it arrived and when its response was ready."""

    method: str
    path: str
    query: dict[str, str]
    start: float
    end: float


class TimedFakeOpenAI(FakeOpenAI):
    """FakeOpenAI that records when each response was ready (its request log has only the arrival
    time), so a poll cycle's wall time can be read from the server side.

    It also skips checking its own responses against the OpenAPI spec: that check (about 1 ms per
    job object, ~120 ms for a page of 100 jobs, in Python, in this process) would be timed as
    OpenAI latency on top of the configured one. Requests are still validated; the test suite keeps
    every check on, so the payloads are the same spec-valid ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self._spans: list[Span] = []

    def _json_response(self, op: Operation, payload: Any) -> web.Response:
        return web.json_response(payload)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        start = time.time()
        try:
            return await super()._handle(request)
        finally:
            path = request.path[3:] if request.path.startswith("/v1/") else request.path
            span = Span(request.method, path, dict(request.query), start, time.time())
            with self.lock:
                self._spans.append(span)

    @property
    def spans(self) -> list[Span]:
        with self.lock:
            return sorted(self._spans, key=lambda s: s.start)

    def serving_seconds(self) -> float | None:
        """Median time the fake itself spent on a request, beyond the configured latency."""
        spans = self.spans
        if not spans:
            return None
        return statistics.median(s.end - s.start for s in spans) - self.latency


@contextlib.contextmanager
def fakes(*, rate_limit_per_channel: float | None = None) -> Iterator[tuple[TimedFakeOpenAI, FakeSlack]]:
    with TimedFakeOpenAI() as openai, FakeSlack(rate_limit_per_channel=rate_limit_per_channel) as slack:
        yield openai, slack
        if openai.schema_errors:
            raise FunctionalError(
                f"the fake OpenAI produced spec-invalid responses: {openai.schema_errors[:3]}"
            )


# -- databases -------------------------------------------------------------------------------------


def store_unavailable(kind: str) -> str | None:
    """None if this store can be benchmarked here, else why not."""
    return postgres_available() if kind == "postgres" else None


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty database URL of the given kind, as DATABASE_URL expects it."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'finetune-bot.db'}"
        return
    from tests.db import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url


def seed_jobs(openai: FakeOpenAI, count: int, *, status: str = "running") -> list[dict[str, Any]]:
    """`count` jobs, oldest first, one second apart, all in the past (the list API is newest first)."""
    base = int(time.time()) - count - 3600
    return [openai.add_job(created_at=base + i, status=status) for i in range(count)]


def seed_watches(db_url: str, jobs: Sequence[dict[str, Any]], channels: Sequence[str]) -> None:
    """Watches as `/finetune create` records them (no announcement: outcomes post top-level),
    spread round-robin over `channels`. One bulk insert: 10,000 add_watch transactions would
    dominate the set-up time."""
    store = Store.from_url(db_url)  # also creates the schema, as the bot would
    now = time.time()
    rows = [
        {
            "job_id": job["id"],
            "team_id": "T0001",
            "channel_id": channels[i % len(channels)],
            "announcement_ts": None,
            "user_id": "U123",
            "origin": "create",
            "created_at": now,
            "job_created_at": job["created_at"],
            "last_status": job["status"],
        }
        for i, job in enumerate(jobs)
    ]
    try:
        with store.engine.begin() as conn:
            for start in range(0, len(rows), 1000):
                conn.execute(watches.insert(), rows[start : start + 1000])
    finally:
        store.close()


def outbox_counts(db_url: str, channel: str | None = None) -> dict[str, int]:
    """How many notifications are sent, owed, and how many watches are still open, optionally for
    one channel (a snapshot that can be taken while the bot runs: SQLite WAL and PostgreSQL both
    allow a concurrent reader)."""
    import sqlalchemy as sa

    from bot.store import normalise_url, outbox

    mine = sa.true() if channel is None else watches.c.channel_id == channel
    joined = outbox.join(watches, outbox.c.watch_id == watches.c.id)
    # A plain engine: the bot's own takes SQLite's write lock on every transaction (BEGIN IMMEDIATE),
    # and this reader must not hold up the bot it is observing.
    engine = sa.create_engine(normalise_url(db_url))
    try:
        with engine.connect() as conn:

            def count(table: sa.FromClause, *where: sa.ColumnElement[bool]) -> int:
                query = sa.select(sa.func.count()).select_from(table).where(mine, *where)
                return int(conn.execute(query).scalar_one())

            return {
                "sent": count(joined, outbox.c.sent_at.is_not(None)),
                "owed": count(joined, outbox.c.sent_at.is_(None)),
                "open_watches": count(watches, watches.c.ended_at.is_(None)),
            }
    finally:
        engine.dispose()


# -- the bot ---------------------------------------------------------------------------------------


def read_status_kb(pid: int, field_name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bot:
    """`python -m bot` as a subprocess (tests.bot_process.BotProcess), timed from Popen to the
    first `/healthz` 200, and watched for crashes."""

    def __init__(self, openai: FakeOpenAI, slack: FakeSlack, workdir: Path, **env: str) -> None:
        # INFO, the operators' default: DEBUG (the tests' default) logs every Slack call.
        self.process = BotProcess(bot_env(openai, slack, **{"LOG_LEVEL": "INFO", **env}), workdir)
        self.startup_seconds: float | None = None

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def logs(self) -> str:
        return self.process.logs

    def start(self, timeout: float = 60.0) -> Bot:
        started = time.perf_counter()
        self.process.start(wait=False)
        deadline = started + timeout
        with httpx.Client(timeout=0.5) as client:
            while True:
                self.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        break
                if time.perf_counter() > deadline:
                    raise FunctionalError(f"bot not healthy within {timeout:g}s:\n{self.tail()}")
                time.sleep(0.01)
        self.startup_seconds = time.perf_counter() - started
        return self

    def alive(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def check_alive(self) -> None:
        if self.process.process is not None and self.process.process.poll() is not None:
            raise FunctionalError(
                f"the bot exited with code {self.process.process.returncode}:\n{self.tail()}"
            )

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.logs.splitlines()[-lines:])

    def rss_mb(self) -> float | None:
        kb = read_status_kb(self.pid, "VmRSS")
        return None if kb is None else kb / 1024

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the highest RSS the process ever had (start-up included)."""
        kb = read_status_kb(self.pid, "VmHWM")
        return None if kb is None else kb / 1024

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        self.check_alive()
        try:
            code = self.process.stop(timeout=15)
        except AssertionError as error:
            raise FunctionalError(f"the bot did not stop on SIGTERM: {str(error)[:2000]}") from None
        if code != 0:
            raise FunctionalError(f"the bot exited with code {code} on SIGTERM:\n{self.tail()}")

    def errors_logged(self) -> list[str]:
        return [line for line in self.logs.splitlines() if " ERROR " in line or "Traceback" in line]


@contextlib.contextmanager
def running_bot(openai: FakeOpenAI, slack: FakeSlack, workdir: Path, **env: str) -> Iterator[Bot]:
    bot = Bot(openai, slack, workdir, **env).start()
    ok = False
    try:
        yield bot
        ok = True
    finally:
        if ok:
            bot.stop()
        else:  # already failing: do not mask the first error with a shutdown one
            bot.process.kill()


def wait_until(
    predicate: Callable[[], object], timeout: float, *, bot: Bot | None = None, interval: float = 0.02
) -> bool:
    """Poll until `predicate()` is truthy (True) or `timeout` passes (False); a dead bot raises."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if bot is not None:
            bot.check_alive()
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class RssSampler:
    """Samples the bot's RSS every `interval` seconds in a thread; `max_mb` is the highest seen."""

    def __init__(self, bot: Bot, interval: float = 0.1) -> None:
        self._bot = bot
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[float] = []
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._bot.rss_mb()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self._interval)

    @property
    def max_mb(self) -> float | None:
        return max(self.samples) if self.samples else None


# -- reading what happened -------------------------------------------------------------------------


def outcome_key(message: RecordedMessage) -> str | None:
    metadata = message.params.get("metadata")
    if isinstance(metadata, dict) and metadata.get("event_type") == OUTCOME_EVENT:
        key = (metadata.get("event_payload") or {}).get("key")
        return str(key) if key else None
    return None


def outcome_messages(slack: FakeSlack) -> list[tuple[str, RecordedMessage]]:
    return [(key, m) for m in slack.messages if (key := outcome_key(m)) is not None]


def duplicates(keys: Sequence[str]) -> int:
    return len(keys) - len(set(keys))


def rate_limited_posts(slack: FakeSlack) -> int:
    return sum(1 for c in slack.calls_to("chat.postMessage") if c.status == 429)


@dataclass(frozen=True)
class Cycle:
    start: float  # arrival of the cycle's first list request (no `after`)
    end: float  # when the cycle's last response was ready
    requests: int
    openai_seconds: float  # summed time the fake spent on the cycle's requests


def poll_cycles(spans: Sequence[Span]) -> list[Cycle]:
    """Complete poll cycles (each followed by the next cycle's start), read from the request log.

    A cycle begins with `GET /fine_tuning/jobs` without `after` (the first, newest page) and owns
    every request that arrives before the next such request.
    """
    starts = [
        i
        for i, s in enumerate(spans)
        if s.method == "GET" and s.path == "/fine_tuning/jobs" and "after" not in s.query
    ]
    cycles = []
    for a, b in itertools.pairwise(starts):
        own = spans[a:b]
        cycles.append(
            Cycle(
                start=own[0].start,
                end=max(s.end for s in own),
                requests=len(own),
                openai_seconds=sum(s.end - s.start for s in own),
            )
        )
    return cycles


def cycle_starts(openai: TimedFakeOpenAI) -> int:
    return sum(
        1
        for r in openai.requests
        if r.method == "GET" and r.path == "/fine_tuning/jobs" and "after" not in r.query
    )


_LOG_TIME = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_RUNNING = re.compile(_LOG_TIME + r' INFO apscheduler[.\w]*: Running job "([^"]*)"')
_DONE = re.compile(_LOG_TIME + r' INFO apscheduler[.\w]*: Job "([^"]*)" executed successfully')


def _log_time(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def logged_cycle_seconds(logs: str) -> list[float]:
    """Whole poll cycles (database, OpenAI and outbox delivery) as the bot's scheduler logs them.
    Millisecond resolution; empty if the log format ever changes."""
    durations, running = [], None
    for line in logs.splitlines():
        if (m := _RUNNING.search(line)) and "poll" in m.group(2).lower():
            running = _log_time(m.group(1))
        elif (m := _DONE.search(line)) and "poll" in m.group(2).lower() and running is not None:
            durations.append(_log_time(m.group(1)) - running)
            running = None
    return durations


def skipped_cycles(logs: str) -> int:
    """Ticks APScheduler dropped because the previous cycle was still running."""
    return sum(1 for line in logs.splitlines() if "maximum number of running instances reached" in line)
