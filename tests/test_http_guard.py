"""No unauthenticated request can hurt the service (HTTP mode).

End to end against `python -m bot`, over raw sockets where a request must be half-sent: huge
bodies (declared and streamed), bodies that forge log lines, bodies Bolt used to choke on, slow
bodies and slow-loris connections at a low open-file limit. Each is answered 401/408/413 before
the server reads the rest, the process's memory stays flat, nothing logs a traceback or a body,
and `/healthz` keeps answering. The guard's pure parts have plain unit tests at the end.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import resource
import select
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot import http_guard
from bot.logs import OneLine, QuietLibraries, RateLimit, one_line
from tests.bot_process import SIGNING_SECRET, BotProcess
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.harness import Harness, bot_env, fresh, module_bot

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"finetune-bot-test-webhook-key-32b").decode()
MiB = 1024 * 1024
# A made-up signature of the right shape: it gets past the header checks, never past the HMAC.
FORGED = "v0=" + "ab" * 32


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def slack_head(path: str = "/slack/events", *, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: {FORGED}\r\n"
        f"{extra}{framing}\r\n"
    ).encode()


def read_status(sock: socket.socket, timeout: float = 10.0) -> int:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split()[1])


def stream_until_answered(port: int, head: bytes, total: int, *, chunked: bool) -> tuple[int, int]:
    """Send `head`, then up to `total` body bytes in 64 KiB pieces, stopping as soon as the server
    answers. Returns (status, body bytes sent before the answer)."""
    piece = b"x" * (64 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            try:
                sock.sendall(frame)
            except OSError:  # the server answered and closed: read the answer
                break
            sent += len(piece)
        return read_status(sock), sent


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with module_bot(tmp_path_factory.mktemp("guard"), OPENAI_WEBHOOK_SECRET=WEBHOOK_SECRET) as harness:
        yield harness


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    yield from fresh(harness)
    assert "Traceback" not in harness.bot.logs, harness.bot.logs[-3000:]
    assert harness.openai.requests == [], harness.openai.describe()  # nothing reached OpenAI


def pid(h: Harness) -> int:
    assert h.bot.process is not None
    return h.bot.process.pid


@pytest.mark.parametrize("path", ["/slack/events", "/openai/webhook"])
def test_a_declared_100_mb_body_is_refused_before_it_is_sent(h: Harness, path: str) -> None:
    before = rss_kib(pid(h))
    for _ in range(5):
        head = slack_head(path, length=100 * MiB)
        status, sent = stream_until_answered(h.bot.port, head, 100 * MiB, chunked=False)
        assert status == 413
        # The answer came while almost all of the 100 MB was still unsent.
        assert sent < 8 * MiB, sent
    growth = rss_kib(pid(h)) - before
    print(f"\n{path} declared 100 MB x5: RSS +{growth} KiB, {sent} bytes sent before the answer")
    assert growth < 8 * 1024, (before, growth)


@pytest.mark.parametrize("path", ["/slack/events", "/openai/webhook"])
def test_a_streamed_body_without_length_is_cut_at_the_cap(h: Harness, path: str) -> None:
    before = rss_kib(pid(h))
    for _ in range(3):
        head = slack_head(path, length=None)
        status, sent = stream_until_answered(h.bot.port, head, 90 * MiB, chunked=True)
        assert status == 413
        assert sent < 16 * MiB, sent  # the cap is 1 MiB; the rest is socket buffers
    growth = rss_kib(pid(h)) - before
    print(f"\n{path} chunked 90 MB x3: RSS +{growth} KiB, {sent} bytes sent before the answer")
    assert growth < 8 * 1024, (before, growth)


def test_a_content_length_that_lies_is_still_capped(h: Harness) -> None:
    # Declares 1 KiB, sends 20 MiB: h11 stops at the declared length; nothing past it is a body.
    status, _ = stream_until_answered(h.bot.port, slack_head(length=1024), 20 * MiB, chunked=False)
    assert status in (400, 401)


def test_a_forged_body_under_the_cap_is_refused_unparsed_and_unlogged(h: Harness) -> None:
    forged_line = f"ERROR bot.runner: created ftjob-{uuid.uuid4().hex}"
    body = ("text=x\n2026-01-01 00:00:00,000 " + forged_line + "\n" + "y" * 900_000).encode()
    log_before = len(h.bot.logs)
    rss_before = rss_kib(pid(h))
    for _ in range(10):
        headers = {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": FORGED}
        response = httpx.post(f"{h.bot.url}/slack/events", content=body, headers=headers, timeout=10)
        assert response.status_code == 401
    # Positive control: the same endpoint still serves a correctly signed command.
    response, _ = h.command("help")
    assert response.status_code == 200
    new_log = h.bot.logs[log_before:]
    assert forged_line not in new_log
    assert "yyyyyyyy" not in new_log
    assert len(new_log) < 10_000, len(new_log)
    growth = rss_kib(pid(h)) - rss_before
    print(f"\n10 forged 900 kB bodies: RSS +{growth} KiB, log +{len(new_log)} bytes")
    assert growth < 8 * 1024


HOSTILE_BODIES = {
    "not-utf-8": b"text=\xff\xfe\xfa&payload=\xc3\x28",
    "payload-not-json": b"payload=%7Bnot+json",
    "deeply-nested-json": b"payload=" + urllib.parse.quote("[" * 100_000 + "]" * 100_000).encode(),
    "json-body-deeply-nested": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_bodies_bolt_choked_on_get_401_without_a_traceback(h: Harness, name: str) -> None:
    content_type = "application/json" if name.startswith("json") else "application/x-www-form-urlencoded"
    headers = {
        "X-Slack-Request-Timestamp": str(int(time.time())),
        "X-Slack-Signature": FORGED,
        "Content-Type": content_type,
    }
    url = f"{h.bot.url}/slack/events"
    response = httpx.post(url, content=HOSTILE_BODIES[name], headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid request"}
    # The fixture checks the log has no traceback.


def test_a_signed_but_unparseable_body_gets_a_400_not_a_traceback(h: Harness) -> None:
    body = b"payload=%7Bnot+json"
    headers = sign_slack_request(body, SIGNING_SECRET)
    response = httpx.post(f"{h.bot.url}/slack/events", content=body, headers=headers, timeout=10)
    assert response.status_code == 400


def test_a_slow_body_is_timed_out_with_408(h: Harness) -> None:
    with socket.create_connection(("127.0.0.1", h.bot.port), timeout=30) as sock:
        sock.sendall(slack_head(length=1000) + b"text=")
        started = time.monotonic()
        assert read_status(sock, timeout=30) == 408
        # Safety bound only: the deadline is BODY_TIMEOUT.
        assert time.monotonic() - started < http_guard.BODY_TIMEOUT + 15


class LimitedBot(BotProcess):
    """The bot with a low open-file limit (soft and hard), as on a small container."""

    nofile = 256

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> BotProcess:
        BotProcess.started.append(self)
        with self.log_path.open("ab") as log:
            limit = self.nofile
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot"],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
            )
        if wait:
            self.wait_healthy(timeout)
        return self


def test_slow_loris_beyond_the_open_file_limit_leaves_healthz_answering(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = LimitedBot(bot_env(fake_openai, fake_slack), tmp_path).start()
    try:
        log_before = len(bot.logs)
        held: list[socket.socket] = []
        try:
            # More half-sent requests than the process has file descriptors.
            for _ in range(LimitedBot.nofile + 100):
                sock = socket.create_connection(("127.0.0.1", bot.port), timeout=10)
                sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                held.append(sock)
            started = time.monotonic()
            answered = False
            while not answered and time.monotonic() - started < 30:
                try:
                    answered = httpx.get(f"{bot.url}/healthz", timeout=2).status_code == 200
                except httpx.TransportError:
                    time.sleep(0.2)
            assert answered, bot.logs[-3000:]
            healthz_seconds = time.monotonic() - started
            # Every held connection is closed by the server: evicted, or its headers timed out.
            deadline = time.monotonic() + http_guard.HEADER_TIMEOUT + 30
            for sock in held:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1) == b""
        finally:
            for sock in held:
                sock.close()
        assert httpx.get(f"{bot.url}/healthz", timeout=5).status_code == 200
        new_log = bot.logs[log_before:]
        assert len(new_log) < 50_000, (len(new_log), new_log[-2000:])
        # The only tracebacks are asyncio's accept errors while every descriptor was taken
        # (a burst is accepted before any connection is seen), and those are rate-limited.
        accept_errors = new_log.count("socket.accept() out of system resource")
        assert new_log.count("Traceback") == accept_errors <= 30, new_log[-3000:]
        print(
            f"\nhealthz answered after {healthz_seconds:.2f}s; log grew {len(new_log)} bytes, "
            f"{accept_errors} accept errors logged"
        )
    finally:
        assert bot.stop() == 0, bot.logs[-3000:]


def test_a_half_sent_request_line_is_closed_after_the_header_timeout(h: Harness) -> None:
    with socket.create_connection(("127.0.0.1", h.bot.port), timeout=10) as sock:
        sock.sendall(b"GET /heal")
        # Positive control in the same window: a complete request on another connection is served.
        assert httpx.get(f"{h.bot.url}/healthz", timeout=5).status_code == 200
        sock.settimeout(http_guard.HEADER_TIMEOUT + 20)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started >= http_guard.HEADER_TIMEOUT - 2


def test_a_body_trickled_after_the_answer_does_not_hold_the_connection(h: Harness) -> None:
    with socket.create_connection(("127.0.0.1", h.bot.port), timeout=10) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n")
        assert read_status(sock) == 404
        started = time.monotonic()
        closed = False
        # One byte every 0.5 s would reset uvicorn's keep-alive timer forever.
        while not closed and time.monotonic() - started < http_guard.HEADER_TIMEOUT + 20:
            try:
                sock.sendall(b"x")
                if select.select([sock], [], [], 0.5)[0]:
                    closed = sock.recv(1) == b""
            except OSError:
                closed = True
        assert closed


# -- unit tests of the pure parts


def test_signature_checks() -> None:
    body = b"token=x&text=list"
    headers = sign_slack_request(body, SIGNING_SECRET, 1_700_000_000)
    ts, sig = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
    assert http_guard.slack_signature_valid(SIGNING_SECRET, ts, body, sig)
    assert not http_guard.slack_signature_valid(SIGNING_SECRET, ts, body + b"&x=1", sig)
    assert not http_guard.slack_signature_valid("other-secret", ts, body, sig)
    assert not http_guard.slack_signature_valid(SIGNING_SECRET, ts, body, FORGED)
    assert not http_guard.slack_signature_valid(SIGNING_SECRET, ts, body, "v0=é")
    assert http_guard.fresh("1000", now=1300) and http_guard.fresh("1000", now=700)
    assert not http_guard.fresh("1000", now=1301) and not http_guard.fresh("1000", now=699)


def test_header_shapes() -> None:
    good = {"x-slack-request-timestamp": "1700000000", "x-slack-signature": FORGED}
    assert http_guard.well_formed_headers(good)
    assert not http_guard.well_formed_headers({**good, "x-slack-request-timestamp": "1.5"})
    assert not http_guard.well_formed_headers({**good, "x-slack-signature": FORGED.upper()})
    assert not http_guard.well_formed_headers({})


def test_declared_length() -> None:
    assert http_guard.declared_length({}, 10) is None
    assert http_guard.declared_length({"content-length": "10"}, 10) == 10
    for raw, status in (("11", 413), ("9" * 40, 400), ("-1", 400), ("1e3", 400), ("\u0661\u0660", 400)):
        with pytest.raises(http_guard.Refused) as refused:
            http_guard.declared_length({"content-length": raw}, 10)
        assert refused.value.status == status, raw


def test_one_line_escapes_and_cuts() -> None:
    assert one_line("plain message") == "plain message"
    assert one_line("a\nERROR forged\r\x1b[31m") == "a\\nERROR forged\\r\\x1b[31m"
    cut = one_line("z" * 5000, limit=100)
    assert cut.startswith("z" * 100) and "4900 more characters" in cut and len(cut) < 150


def record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_quiet_libraries_drop_only_their_chatter() -> None:
    quiet = QuietLibraries()
    body_dump = "Invalid request signature detected (signature: v0=…, body: text=…)"
    assert not quiet.filter(record("bot.slack", logging.INFO, body_dump))
    assert not quiet.filter(record("slack_bolt.AsyncRequestVerification", logging.INFO, body_dump))
    assert not quiet.filter(record("bot.slack:AsyncRequestVerification", logging.DEBUG, body_dump))
    assert not quiet.filter(record("slack_sdk.webhook.async_client", logging.DEBUG, "url: https://…"))
    assert quiet.filter(record("bot.slack", logging.WARNING, "could not reply"))
    assert quiet.filter(record("bot.slackware", logging.INFO, "not Bolt"))
    assert quiet.filter(record("bot.runner", logging.INFO, "created ftjob-abc"))


def test_one_line_filter_rewrites_the_record() -> None:
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "body: %s", ("a\nb",), None)
    assert OneLine().filter(rec)
    assert rec.getMessage() == "body: a\\nb"


def test_rate_limit_suppresses_storms_and_reports_them() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, window=10.0, clock=lambda: now[0])
    accept_error = "socket.accept() out of system resource"
    storm = [limit.filter(record("asyncio", logging.ERROR, accept_error)) for _ in range(50)]
    assert storm == [True] * 3 + [False] * 47
    # Positive control in the same window: a different message is not affected.
    assert limit.filter(record("bot.runner", logging.INFO, "created ftjob-abc"))
    now[0] = 10.0
    later = record("asyncio", logging.ERROR, "socket.accept() out of system resource")
    assert limit.filter(later)
    assert "[47 similar lines suppressed]" in later.getMessage()
    assert limit.filter(record("asyncio", logging.ERROR, "socket.accept() out of system resource"))
