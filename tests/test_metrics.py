"""Prometheus metrics and /readyz (issue 15): the pure pieces with plain values, then the real bot
after a scripted run of commands, its token, its localhost port, bounded label cardinality, and
/readyz while PostgreSQL or the Socket Mode socket is away."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot import render
from bot.commands import subcommand_name
from bot.config import load_settings
from bot.metrics import Metrics, ack_kind, one_of, openai_operation, status_class
from bot.openai_client import NotFoundError, ServerError
from bot.readiness import DatabaseProbe, readiness
from bot.server import build_asgi
from bot.store import Store
from tests.bot_process import APP_TOKEN, BOT_TOKEN, OPENAI_KEY, BotProcess, free_port
from tests.db import PG_ADMIN_URL, fresh_postgres_database
from tests.fakes import FakeOpenAI, FakeSlack, sign_slack_request
from tests.harness import Harness, bot_env, start_bot, wait_until

TOKEN = "metrics-token-" + "0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


# -- pure pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/fine_tuning/jobs", "createFineTuningJob"),
        ("GET", "/fine_tuning/jobs", "listPaginatedFineTuningJobs"),
        ("GET", "/fine_tuning/jobs/ftjob-abc", "retrieveFineTuningJob"),
        ("GET", "/fine_tuning/jobs/ftjob-abc/events", "listFineTuningEvents"),
        ("GET", "/fine_tuning/jobs/ftjob-abc/checkpoints", "listFineTuningJobCheckpoints"),
        ("POST", "/fine_tuning/jobs/ftjob-abc/cancel", "cancelFineTuningJob"),
        ("POST", "/fine_tuning/jobs/ftjob-abc/pause", "pauseFineTuningJob"),
        ("POST", "/fine_tuning/jobs/ftjob-abc/resume", "resumeFineTuningJob"),
        ("GET", "/files", "listFiles"),
        ("GET", "/files/file-1/content", "downloadFile"),
        ("DELETE", "/fine_tuning/jobs/ftjob-abc", "other"),
        ("GET", "/fine_tuning/jobs/ftjob-abc/unknown", "other"),
    ],
)
def test_openai_operations_are_the_specs_operation_ids(method: str, path: str, operation: str) -> None:
    assert openai_operation(method, path) == operation


def test_every_named_operation_is_in_the_spec() -> None:
    spec = json.loads((REPO / "tests/specs/openai-fine-tuning.openapi.json").read_text())
    ids = {op["operationId"] for ops in spec["paths"].values() for op in ops.values() if "operationId" in op}
    from bot.metrics import OPENAI_OPERATIONS

    assert OPENAI_OPERATIONS - {"other"} <= ids


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "2xx"), (201, "2xx"), (404, "4xx"), (429, "4xx"), (503, "5xx"), (None, "error")],
)
def test_status_classes(status: int | None, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.parametrize(
    ("text", "name"),
    [("", "help"), ("get ftjob-1", "get"), ("STATUS ftjob-1", "get"), ("ckpt x", "checkpoints"),
     ("ftjob-123 whatever", "unknown"), ("<@U123>", "unknown")],
)  # fmt: skip
def test_subcommand_names_are_canonical_or_unknown(text: str, name: str) -> None:
    assert subcommand_name(text) == name


def test_replies_say_what_they_came_to() -> None:
    assert render.render_job_not_found("ftjob-1").outcome == render.Outcome.REFUSED
    assert render.render_openai_error(ServerError("down", status=503)).outcome == render.Outcome.OPENAI_ERROR
    # A 404 reads exactly like a job the reader may not see (nothing to tell them apart by).
    assert (
        render.render_openai_error(NotFoundError("gone", status=404), job_id="ftjob-1").outcome == "refused"
    )
    assert render.render_channel_not_allowed(frozenset({"C1"})).outcome == render.Outcome.REFUSED
    assert render.render_restarting().outcome == render.Outcome.REFUSED
    assert render.render_button_broken().outcome == render.Outcome.BAD_INPUT
    assert render.render_internal_error().outcome == render.Outcome.ERROR
    assert render.render_help().outcome == render.Outcome.OK
    # Not part of the message: equal replies stay equal whatever they are tagged.
    assert render.Reply("a", [], render.Outcome.ERROR) == render.Reply("a", [])


def test_label_values_outside_the_fixed_sets_are_folded() -> None:
    metrics = Metrics()
    metrics.command("ftjob-abc123", "whatever")
    metrics.action("U0123456", "ok")
    metrics.slack_call("chat.postMessage", "some_new_error_code")
    metrics.slack_call("admin.users.list", "ok")
    metrics.openai_request("createFineTuningJob", 200, 0.1)
    metrics.openai_request("ftjob-xyz", 200, 0.1)
    found = samples(asyncio.run(metrics.exposition()).decode())
    assert value(found, "finetune_commands_total", subcommand="unknown", result="error") == 1
    assert value(found, "finetune_actions_total", action="other", result="ok") == 1
    assert (
        value(found, "finetune_slack_api_calls_total", method="chat.postMessage", result="other_error") == 1
    )
    assert value(found, "finetune_slack_api_calls_total", method="other", result="ok") == 1
    assert value(found, "finetune_openai_requests_total", operation="other", status_class="2xx") == 1
    assert one_of("x", frozenset({"y"})) == "other"


def test_ack_kinds() -> None:
    assert ack_kind({"command": "/finetune", "text": "x"}) == "command"
    assert ack_kind({"type": "block_actions"}) == "block_actions"
    assert ack_kind({"type": "event_callback"}) == "event"
    assert ack_kind({"type": "U-not-a-kind"}) == "other"
    assert ack_kind("nonsense") == "other"


def test_poll_cycle_counts_the_openai_requests_made_inside_it() -> None:
    metrics = Metrics()

    async def cycle() -> None:
        with metrics.poll_cycle():

            async def one() -> None:
                metrics.openai_request("retrieveFineTuningJob", 200, 0.01)

            await asyncio.gather(one(), one(), one())  # tasks copy the context: same counter

    asyncio.run(cycle())
    metrics.openai_request("retrieveFineTuningJob", 200, 0.01)  # outside any cycle
    found = samples(asyncio.run(metrics.exposition()).decode())
    assert value(found, "finetune_poll_cycle_openai_requests_sum") == 3
    assert value(found, "finetune_poll_cycle_openai_requests_count") == 1


def test_readiness_names_what_is_down() -> None:
    assert readiness(database=True, scheduler=True, socket=None) == (
        200,
        {"ready": True, "database": "up", "scheduler": "up"},
    )
    status, body = readiness(database=False, scheduler=True, socket=False)
    assert status == 503
    assert body["down"] == ["database", "slack_socket"] and body["scheduler"] == "up"


def test_database_probe_answers_down_while_a_ping_hangs() -> None:
    release = threading.Event()
    calls = []

    def ping() -> None:
        calls.append(1)
        release.wait(5)

    async def probe() -> tuple[bool, bool]:
        database = DatabaseProbe(ping, timeout=0.1)
        first = await database.up()
        second = await database.up()  # the first ping still hangs: no second thread
        release.set()
        return first, second

    assert asyncio.run(probe()) == (False, False)
    assert len(calls) == 1


def test_store_gauges_from_one_query(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        assert store.gauges().outbox_owed == 0
        watch, _ = store.add_watch(
            job_id="ftjob-g1",
            team_id="T1",
            channel_id="C1",
            user_id="U1",
            announcement_ts="1.1",
            job_created_at=None,
            status="running",
        )
        assert store.gauges().watches_active == 1
        store.finish_watch(watch, "succeeded", {"id": "ftjob-g1", "status": "succeeded"})
        gauges = store.gauges()
        # The outcome and, for a succeeded job, its completion report.
        assert gauges.outbox_owed == 2 and gauges.watches_active == 0
        assert 0 <= gauges.outbox_oldest_owed_seconds < 60
    finally:
        store.close()


def test_metrics_settings() -> None:
    base = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, "OPENAI_API_KEY": OPENAI_KEY}
    settings = load_settings({**base, "METRICS_TOKEN": TOKEN, "METRICS_PORT": "9464"})
    assert not isinstance(settings, list)
    assert settings.metrics_port == 9464 and TOKEN in settings.secrets() and TOKEN not in repr(settings)
    problems = load_settings({**base, "METRICS_TOKEN": "short", "METRICS_PORT": "3000"})
    assert isinstance(problems, list)
    assert any(p.startswith("METRICS_TOKEN must be at least 16") for p in problems)
    assert any(p.startswith("METRICS_PORT must differ from PORT") for p in problems)


# -- the dashboard and the alert rules -------------------------------------------------------------


def test_dashboard_and_alerts_use_only_metrics_the_bot_exposes() -> None:
    exposed = Metrics().names()
    dashboard = json.loads((REPO / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((REPO / "docs/alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    exprs += [rule["expr"] for rule in alerts.values()]
    used = {name for expr in exprs for name in re.findall(r"\bfinetune_[a-z_]+", expr)}
    assert used and sorted(used - exposed) == []
    # The two rules the issue asks for.
    assert "finetune_outbox_oldest_owed_seconds" in alerts["FinetuneOutboxBacklog"]["expr"]
    assert "> 600" in alerts["FinetuneOutboxBacklog"]["expr"]
    assert (
        "> 0.2" in alerts["FinetuneOpenAIErrors"]["expr"] and alerts["FinetuneOpenAIErrors"]["for"] == "10m"
    )
    # Commands, latency, OpenAI errors and the outbox backlog are on the dashboard.
    for name in ("finetune_commands_total", "finetune_ack_seconds_bucket", "finetune_openai_requests_total",
                 "finetune_outbox_owed"):  # fmt: skip
        assert name in used


# -- the real bot ----------------------------------------------------------------------------------


def scrape(h: Harness, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{h.bot.url}/metrics", headers=headers, timeout=10)


def test_metrics_after_a_scripted_run_of_commands(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    job = fake_openai.add_job(status="running")
    h = Harness(start_bot(fake_openai, fake_slack, tmp_path, METRICS_TOKEN=TOKEN), fake_openai, fake_slack)
    try:
        keys = []
        for _ in range(3):
            keys.append(h.command(f"get {job['id']}")[1])  # ok
        keys.append(h.command("get ftjob-doesnotexist1")[1])  # OpenAI 404: answered as not found
        fake_openai.fail_next(500, path=f"/fine_tuning/jobs/{job['id']}", times=3)
        keys.append(h.command(f"get {job['id']}")[1])  # OpenAI fails every attempt
        keys.append(h.command(f"cancel {job['id']}", user_id="UNOTADMIN")[1])  # not theirs
        for key in keys:
            h.reply(key, timeout=30)
        assert h.command("frobnicate now")[0].status_code == 200  # bad input, answered in the ack
        assert h.command("help")[0].status_code == 200

        found = samples(scrape(h).text)
        assert value(found, "finetune_commands_total", subcommand="get", result="ok") == 3
        assert value(found, "finetune_commands_total", subcommand="get", result="refused") == 1
        assert value(found, "finetune_commands_total", subcommand="get", result="openai_error") == 1
        assert value(found, "finetune_commands_total", subcommand="cancel", result="refused") == 1
        assert value(found, "finetune_commands_total", subcommand="unknown", result="bad_input") == 1
        assert value(found, "finetune_commands_total", subcommand="help", result="ok") == 1
        assert value(found, "finetune_ack_seconds_count", kind="command") == 8
        assert value(found, "finetune_reply_seconds_count", kind="command") == 6
        retrieve = {"operation": "retrieveFineTuningJob"}
        assert value(found, "finetune_openai_requests_total", status_class="5xx", **retrieve) == 3
        assert value(found, "finetune_openai_requests_total", status_class="2xx", **retrieve) >= 3
        assert value(found, "finetune_openai_requests_total", status_class="4xx", **retrieve) == 1
        assert value(found, "finetune_openai_retries_total", **retrieve) == 2
        assert value(found, "finetune_openai_request_seconds_count", **retrieve) >= 7
        assert value(found, "finetune_poll_cycle_seconds_count") >= 1
        assert value(found, "finetune_slack_api_calls_total", method="auth.test", result="ok") >= 0
        assert value(found, "finetune_database_up") == 1
        assert value(found, "finetune_watches_active") == 0
        assert value(found, "finetune_outbox_owed") == 0

        ready = httpx.get(f"{h.bot.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {
            "ready": True,
            "database": "up",
            "scheduler": "up",
        }
    finally:
        assert h.bot.stop() == 0, h.bot.logs


def test_metrics_on_port_need_the_token(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    h = Harness(start_bot(fake_openai, fake_slack, tmp_path, METRICS_TOKEN=TOKEN), fake_openai, fake_slack)
    try:
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
            response = scrape(h, token)
            assert response.status_code == 401, token
            assert response.headers["www-authenticate"] == "Bearer"
            assert "finetune_" not in response.text
        basic = httpx.get(f"{h.bot.url}/metrics", auth=("user", TOKEN), timeout=10)
        assert basic.status_code == 401
        good = scrape(h)
        assert good.status_code == 200 and good.headers["content-type"].startswith("text/plain")
        assert "finetune_commands_total" in good.text
        assert TOKEN not in h.bot.logs
    finally:
        assert h.bot.stop() == 0, h.bot.logs


def test_metrics_port_serves_localhost_without_token_and_port_has_no_metrics(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    port = free_port()
    h = Harness(start_bot(fake_openai, fake_slack, tmp_path, METRICS_PORT=str(port)), fake_openai, fake_slack)
    try:
        h.reply(h.command("get ftjob-abc")[1], timeout=30)
        local = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert local.status_code == 200
        found = samples(local.text)
        assert value(found, "finetune_commands_total", subcommand="get", result="refused") == 1
        assert httpx.get(f"http://127.0.0.1:{port}/slack/events", timeout=10).status_code == 404
        # No token set: nothing on PORT, with or without one.
        assert scrape(h, None).status_code == 404
        assert scrape(h).status_code == 404
    finally:
        assert h.bot.stop() == 0, h.bot.logs


def test_a_metrics_port_in_use_stops_start_up_naming_it(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bot = BotProcess(bot_env(fake_openai, fake_slack, METRICS_PORT=str(port)), tmp_path)
        bot.start(wait=False)
        assert bot.process is not None
        assert bot.process.wait(30) == 2
        assert f"METRICS_PORT {port} is already in use" in bot.logs


async def test_label_cardinality_stays_bounded_after_1000_jobs_and_users(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    """In-process (build_asgi through httpx's ASGI transport): 1,000 `get` commands for 1,000
    different jobs from 1,000 different users, half of the jobs real."""
    env = bot_env(fake_openai, fake_slack, METRICS_TOKEN=TOKEN, DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    settings = load_settings(env)
    assert not isinstance(settings, list)
    store = Store.from_url(settings.database_url)
    asgi = build_asgi(settings, store)
    metrics: Metrics = asgi.state.metrics
    real = [fake_openai.add_job(status="running")["id"] for _ in range(20)]
    users = [f"U{uuid.uuid4().hex[:10].upper()}" for _ in range(1000)]
    jobs = [real[i % 20] if i % 2 else f"ftjob-{uuid.uuid4().hex[:20]}" for i in range(1000)]
    transport = httpx.ASGITransport(app=asgi)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:

            async def command(user: str, job_id: str) -> None:
                fields = fake_slack.slash_command_payload(
                    f"get {job_id}",
                    user_id=user,
                    channel_id=f"C{user[1:]}",
                    response_url=fake_slack.response_url(user),
                )
                body = urllib.parse.urlencode(fields)
                response = await client.post(
                    "/slack/events",
                    content=body,
                    headers=sign_slack_request(body, env["SLACK_SIGNING_SECRET"]),
                )
                assert response.status_code == 200

            for start in range(0, 1000, 50):
                await asyncio.gather(
                    *(
                        command(u, j)
                        for u, j in zip(users[start : start + 50], jobs[start : start + 50], strict=True)
                    )
                )

            def counted() -> float:
                return sum(
                    s.value
                    for family in metrics.registry.collect()
                    if family.name == "finetune_commands"
                    for s in family.samples
                    if s.name == "finetune_commands_total"
                )

            deadline = time.monotonic() + 60
            while counted() < 1000 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert counted() == 1000
            text = (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
    finally:
        store.close()
    series = [(n, labels) for (n, labels) in samples(text) if n.startswith("finetune_")]
    assert len(series) < 200, len(series)  # bounded by the fixed label sets, not by the traffic
    label_values = {v for _, labels in series for _, v in labels}
    assert not any(v.startswith(("ftjob-", "U", "C")) for v in label_values), label_values
    for user in users[:50]:
        assert user not in text
    for job_id in jobs[:50]:
        assert job_id not in text
    found = samples(text)
    assert value(found, "finetune_commands_total", subcommand="get", result="ok") == 500
    assert value(found, "finetune_commands_total", subcommand="get", result="refused") == 500


def test_readyz_flips_while_postgresql_refuses_connections(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    with fresh_postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        bot = start_bot(fake_openai, fake_slack, tmp_path, DATABASE_URL=url)
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        stop = threading.Event()

        def readyz() -> httpx.Response:
            return httpx.get(f"{bot.url}/readyz", timeout=10)

        def outage() -> None:
            # As tests/test_chaos.py: this database only refuses new connections and loses its own.
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                while not stop.is_set():
                    conn.execute(
                        sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                        {"d": name},
                    )
                    time.sleep(0.2)
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))

        try:
            assert readyz().status_code == 200
            thread = threading.Thread(target=outage)
            thread.start()
            try:
                down = wait_until(lambda: (r := readyz()).status_code == 503 and r, 20, "/readyz to say 503")
                assert down.json()["down"] == ["database"] and down.json()["scheduler"] == "up"
                assert httpx.get(f"{bot.url}/healthz", timeout=10).status_code == 200  # alive all along
            finally:
                stop.set()
                thread.join()
            back = wait_until(lambda: (r := readyz()).status_code == 200 and r, 30, "/readyz back to 200")
            assert back.json()["ready"] is True
        finally:
            admin.dispose()
            assert bot.stop() == 0, bot.logs


def test_readyz_is_503_while_the_socket_mode_socket_is_down(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    with FakeSlack() as slack:
        slack.fail_next("apps.connections.open", status=503, times=10_000)
        env: dict[str, Any] = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_API_URL": slack.api_url,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": fake_openai.base_url,
        }
        bot = BotProcess(env, tmp_path).start()
        try:
            down = httpx.get(f"{bot.url}/readyz", timeout=10)
            assert down.status_code == 503
            assert down.json()["down"] == ["slack_socket"] and down.json()["database"] == "up"
            slack.clear_faults()
            slack.wait_connected(timeout=30)
            wait_until(
                lambda: httpx.get(f"{bot.url}/readyz", timeout=10).status_code == 200, 10, "/readyz 200"
            )
            # The socket drops (and cannot come back while Slack refuses): not ready again.
            slack.fail_next("apps.connections.open", status=503, times=10_000)
            slack.close_connections()
            wait_until(
                lambda: httpx.get(f"{bot.url}/readyz", timeout=10).status_code == 503, 20, "/readyz 503"
            )
        finally:
            assert bot.stop() == 0, bot.logs


async def test_failure_series_exist_at_zero_before_the_first_failure() -> None:
    """`rate()` only sees increments after a series exists: the first OpenAI 5xx, retry, Slack 429
    or refused webhook after a start must count, so their series start at 0."""
    found = samples((await Metrics().exposition()).decode())
    for operation in ("createFineTuningJob", "listPaginatedFineTuningJobs", "retrieveFineTuningJob"):
        for failed in ("5xx", "error"):
            key = ("finetune_openai_requests_total", (("operation", operation), ("status_class", failed)))
            assert found[key] == 0.0
        assert found[("finetune_openai_retries_total", (("operation", operation),))] == 0.0
    assert found[("finetune_slack_rate_limited_total", (("method", "chat.postMessage"),))] == 0.0
    assert found[("finetune_webhook_deliveries_total", (("result", "bad_signature"),))] == 0.0
    assert found[("finetune_card_edits_total", (("result", "rate_limited"),))] == 0.0
    # Nothing unbounded was created: no "other" operation, no 2xx before any request.
    assert not any(labels and ("operation", "other") in labels for _, labels in found)
    assert not any(("status_class", "2xx") in labels for _, labels in found)
