"""The Grafana dashboard and the alert rules in docs/, checked by Prometheus' own tools (issue 15).

promtool checks docs/alerts.yml and runs its unit tests (docs/alerts.test.yml); a real
`prometheus` scrapes a real bot while commands move its counters, then evaluates every query of
every panel of docs/grafana-dashboard.json through its HTTP API. The dashboard's structure is
checked the way Grafana reads it without any tool.

promtool and prometheus come from Debian's `prometheus` package (`.ci/run` installs it). Without
them these tests skip, saying why, unless FINETUNE_REQUIRE_PROMETHEUS is set (`.ci/run` sets it):
then a missing tool fails the run, as FINETUNE_REQUIRE_POSTGRES does for PostgreSQL (tests/db.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.bot_process import free_port
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, query_db, start_bot, wait_until

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs/grafana-dashboard.json"
ALERTS = REPO / "docs/alerts.yml"
ALERTS_TEST = REPO / "docs/alerts.test.yml"
TOKEN = "prometheus-scrape-" + "0123456789abcdef"


def require_tool(name: str) -> str:
    """The path of one of Prometheus' programs; skip (or, in CI, fail) when it is not installed."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"`{name}` is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("FINETUNE_REQUIRE_PROMETHEUS"):
        pytest.fail(f"FINETUNE_REQUIRE_PROMETHEUS is set but {reason}")
    print(f"\nskipping Prometheus test: {reason}")
    pytest.skip(reason)


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


# -- the alert rules -------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = run_tool(require_tool("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    """docs/alerts.test.yml feeds synthetic series and says, minute by minute, when each alert
    fires and when it stays silent (9 minutes of trouble is silent)."""
    result = run_tool(require_tool("promtool"), "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # Every rule has a case that makes it fire, and one where it must stay silent.
    rules = [r["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    cases = [
        case
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in rules:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert} is never expected to fire"
        assert any(not case["exp_alerts"] for case in mine), f"{alert} is never expected to stay silent"


# -- the dashboard's structure ---------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What Grafana (10.x, schemaVersion 39) needs of an importable dashboard, and what this one promises:
# every panel and query on the data source the importer picks.
DASHBOARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "templating", "panels", "time"],
    "properties": {
        # A numeric id belongs to the Grafana that exported it; an import must not carry one.
        "id": {"type": "null"},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "contains": {
                        "type": "object",
                        "required": ["name", "type", "query"],
                        "properties": {
                            "name": {"const": "datasource"},
                            "type": {"const": "datasource"},
                            "query": {"const": "prometheus"},
                        },
                    },
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "datasource", "targets"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["timeseries", "stat", "gauge", "bargauge", "table", "heatmap"]},
                    "datasource": {"const": DATASOURCE},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                            "y": {"type": "integer", "minimum": 0},
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "h": {"type": "integer", "minimum": 1},
                        },
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr", "datasource"],
                            "properties": {
                                "refId": {"type": "string", "pattern": "^[A-Z]$"},
                                "expr": {"type": "string", "minLength": 1},
                                "datasource": {"const": DATASOURCE},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_dashboard_is_shaped_the_way_grafana_imports_it() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in panels:
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {panel['id']}: refIds repeat: {refs}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['id']} overflows Grafana's 24 columns"
    # No two panels overlap on the grid.
    cells = [
        (panel["id"], x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    taken: dict[tuple[int, int], int] = {}
    for panel_id, x, y in cells:
        assert (x, y) not in taken, f"panels {taken[(x, y)]} and {panel_id} overlap at {(x, y)}"
        taken[(x, y)] = panel_id


def test_a_broken_dashboard_fails_the_schema() -> None:
    """The schema has teeth: each of these is a dashboard Grafana would import broken."""
    good = json.loads(DASHBOARD.read_text())
    breakages: list[Callable[[dict[str, Any]], None]] = [
        lambda d: d["panels"][0].pop("id"),
        lambda d: d["panels"][0]["targets"][0].update(datasource={"type": "prometheus", "uid": "prom-1"}),
        lambda d: d["templating"].update(list=[]),
        lambda d: d.update(schemaVersion="39"),
        lambda d: d.update(id=17),
    ]
    for breakage in breakages:
        broken = json.loads(json.dumps(good))
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, DASHBOARD_SCHEMA)


# -- Grafana's variables, filled in ----------------------------------------------------------------


@dataclass(frozen=True)
class GrafanaRange:
    """What Grafana would fill in for a panel: `$__interval` is its time range divided by the
    points it draws, and `$__rate_interval` is max($__interval + scrape interval, 4 * scrape
    interval), Grafana's rule for a rate() window that always holds at least two samples."""

    interval_seconds: int
    scrape_interval_seconds: int

    @property
    def rate_interval_seconds(self) -> int:
        return max(self.interval_seconds + self.scrape_interval_seconds, 4 * self.scrape_interval_seconds)


def promql_of(expr: str, grafana: GrafanaRange) -> str:
    """A panel's query as Grafana sends it to Prometheus. Only the variables this dashboard uses
    are known; any other `$…` is left in place, and the caller's check that none remains fails."""
    return (
        expr.replace("$__rate_interval", f"{grafana.rate_interval_seconds}s")
        .replace("${__rate_interval}", f"{grafana.rate_interval_seconds}s")
        .replace("$__interval", f"{grafana.interval_seconds}s")
        .replace("${__interval}", f"{grafana.interval_seconds}s")
    )


@pytest.mark.parametrize(
    ("expr", "grafana", "promql"),
    [
        ("rate(x[$__rate_interval])", GrafanaRange(60, 1), "rate(x[61s])"),
        ("rate(x[$__rate_interval])", GrafanaRange(15, 15), "rate(x[60s])"),  # Grafana's 15 s default
        ("avg_over_time(x[${__interval}])", GrafanaRange(20, 15), "avg_over_time(x[20s])"),
        ("x{job=\"$job\"}", GrafanaRange(60, 1), "x{job=\"$job\"}"),  # unknown: left for the check
    ],
)  # fmt: skip
def test_grafana_variables_are_filled_in_as_grafana_does(
    expr: str, grafana: GrafanaRange, promql: str
) -> None:
    assert promql_of(expr, grafana) == promql


@dataclass(frozen=True)
class PanelQuery:
    panel_id: int
    title: str
    ref_id: str
    expr: str


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(panel["id"], panel["title"], target["refId"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


# -- a real Prometheus -----------------------------------------------------------------------------

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
Series = dict[frozenset[tuple[str, str]], float]


class Prometheus:
    """A `prometheus` server on 127.0.0.1 with its data in a temporary directory, queried over its
    HTTP API (prometheus.io/docs/prometheus/latest/querying/api/)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> dict[str, Any]:
        """The API's whole answer: {"status": "success", "data": …} or {"status": "error", …}."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        answer: dict[str, Any] = response.json()
        return answer

    def series(self, promql: str) -> Series:
        """An instant vector's series (without job and instance) and their values."""
        answer = self.query(promql)
        assert answer["status"] == "success", (promql, answer)
        assert answer["data"]["resultType"] == "vector", (promql, answer["data"]["resultType"])
        return {
            frozenset((k, v) for k, v in item["metric"].items() if k not in TARGET_LABELS): float(
                item["value"][1]
            )
            for item in answer["data"]["result"]
        }

    def scraped_after(self, moment: float, jobs: int) -> bool:
        """Every target has been scraped since `moment` (a Unix time), successfully: it saw what was
        there then. (`timestamp()` of a bare selector is the scrape's time; of anything else, such
        as `up == 1`, it would be the query's.)"""
        up = self.query("up")["data"]["result"]
        scraped_at = self.query("timestamp(up)")["data"]["result"]
        return (
            len(up) >= jobs
            and all(item["value"][1] == "1" for item in up)
            and all(float(item["value"][1]) > moment for item in scraped_at)
        )


@contextmanager
def running_prometheus(workdir: Path, config: dict[str, Any]) -> Iterator[Prometheus]:
    """Starts `prometheus` with `config` (the prometheus.yml as a dict), waits until it is ready,
    and kills it at the end whatever happened."""
    binary = require_tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited {process.returncode}: {log_path.read_text()}")
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 30, "prometheus to be ready")
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the dashboard against a real Prometheus scraping a real bot -----------------------------------

SCRAPE_SECONDS = 1
# Two scrape jobs of the one bot stand for two replicas over one database: the numbers read from
# the database (watches, outbox) are then exposed twice, as two replicas expose them.
REPLICAS = ("finetune-bot-web-1", "finetune-bot-web-2")
# Grafana's variables as it fills them for this Prometheus: a panel drawing one point a minute
# (the dashboard's 6 hours on 360 points) over a 1 s scrape interval gives rate() a 61 s window,
# which holds the whole scripted run below.
GRAFANA = GrafanaRange(interval_seconds=60, scrape_interval_seconds=SCRAPE_SECONDS)


def finite(value: float) -> bool:
    return not math.isnan(value) and not math.isinf(value)


def labelled(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def bot_samples(h: Harness) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{h.bot.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def watches(h: Harness, job_id: str) -> int:
    return int(
        query_db(h.db_url, "SELECT count(*) FROM finetune_watches WHERE job_id = :job", job=job_id)[0][0]
    )


def click(h: Harness, action_id: str, value: str) -> str:
    key = uuid.uuid4().hex
    payload = h.slack.block_actions_payload(action_id, value, response_url=h.slack.response_url(key))
    response = h.interact(payload)
    assert response.status_code == 200, response.text
    return key


def drive(h: Harness, job_id: str) -> None:
    """One round of traffic, each reply awaited: commands (ok, refused, one whose OpenAI request
    fails every retry), a button, help."""
    keys = [h.command(f"get {job_id}")[1], h.command("get ftjob-doesnotexist1")[1]]
    h.openai.fail_next(500, path=f"/fine_tuning/jobs/{job_id}", times=3)
    keys.append(h.command(f"get {job_id}")[1])
    keys.append(click(h, "job_events", job_id))
    for key in keys:
        h.reply(key, timeout=30)
    assert h.command("help")[0].status_code == 200


# What the scripted run must make visible, by panel id and refId; every other query must still
# parse and evaluate (an empty answer is fine: nothing in the run moves it).
Check = Callable[[Series], bool]


def positive(**labels: str) -> Check:
    return lambda series: series.get(labelled(**labels), 0) > 0


def a_number(**labels: str) -> Check:
    """A finite value (a quantile of a histogram that did not move is NaN)."""
    return lambda series: finite(series.get(labelled(**labels), math.nan))


def a_ratio(series: Series) -> bool:
    return set(series) == {frozenset()} and 0 < series[frozenset()] < 1


def exactly(value: float) -> Check:
    return lambda series: series == {frozenset(): value}


def at_least(value: float) -> Check:
    return lambda series: series.get(frozenset(), -math.inf) >= value


def all_of(*checks: Check) -> Check:
    return lambda series: all(check(series) for check in checks)


EXPECTED: dict[tuple[int, str], tuple[str, Check]] = {
    (1, "A"): ("get commands, ok and OpenAI errors", all_of(
        positive(subcommand="get", result="ok"), positive(subcommand="get", result="openai_error"))),
    (2, "A"): ("the Events button", positive(action="job_events", result="ok")),
    (3, "A"): ("ack latency p50", a_number()),
    (3, "B"): ("ack latency p99", a_number()),
    (4, "A"): ("reply latency p50", a_number(kind="command")),
    (4, "B"): ("reply latency p99", a_number(kind="command")),
    (5, "A"): ("OpenAI requests, answered and failed", all_of(
        positive(operation="retrieveFineTuningJob", status_class="2xx"),
        positive(operation="retrieveFineTuningJob", status_class="5xx"))),
    (6, "A"): ("OpenAI error ratio", a_ratio),
    (6, "B"): ("OpenAI retried ratio", a_ratio),
    (7, "A"): ("OpenAI latency", a_number(operation="retrieveFineTuningJob")),
    # Read from the one database: one outbox and one watch, however many replicas expose them.
    (9, "A"): ("outbox owed", exactly(0)),
    (9, "B"): ("watches active", exactly(1)),
    (10, "A"): ("oldest owed", exactly(0)),
    (11, "A"): ("poll cycle p90", a_number()),
    (11, "B"): ("requests per cycle: the watched job's at least", at_least(1)),
}  # fmt: skip


def test_every_dashboard_query_evaluates_against_a_real_prometheus(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    require_tool("prometheus")
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    assert set(EXPECTED) <= {(q.panel_id, q.ref_id) for q in queries}, "a panel this test reads is gone"
    job_id = fake_openai.add_job(status="running")["id"]
    h = Harness(
        start_bot(fake_openai, fake_slack, tmp_path, METRICS_TOKEN=TOKEN, POLL_INTERVAL_SECONDS="1"),
        fake_openai,
        fake_slack,
    )
    bot_target = h.bot.url.removeprefix("http://")
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "scrape_timeout": f"{SCRAPE_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_SECONDS}s",
        },
        # The alert rules too: Prometheus evaluates them on the bot's real series.
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": replica,
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": TOKEN},
                "static_configs": [{"targets": [bot_target]}],
            }
            for replica in REPLICAS
        ],
    }
    try:
        with running_prometheus(tmp_path / "prometheus", config) as prometheus:
            # The scripted run: a watch, then the same round of traffic twice, each scraped before
            # the next. A labelled series appears at its first increment, already counting it,
            # and rate() sees only increases between samples: the second round is what moves the
            # panels' rates.
            wait_until(lambda: prometheus.scraped_after(0, len(REPLICAS)), 30, "a first scrape")
            assert h.command(f"watch {job_id}")[0].status_code == 200  # answered by an announcement
            wait_until(lambda: watches(h, job_id) == 1, 30, "the watch to be recorded")
            for _ in range(2):
                drive(h, job_id)
                settled = time.time()
                wait_until(lambda s=settled: prometheus.scraped_after(s, len(REPLICAS)), 30, "a scrape")
            # The database's numbers are read at most every 5 s (bot/metrics.py): wait for the watch.
            wait_until(
                lambda: bot_samples(h).get(("finetune_watches_active", frozenset())) == 1,
                30,
                "the watch gauge",
            )
            settled = time.time()
            wait_until(lambda: prometheus.scraped_after(settled, len(REPLICAS)), 30, "a scrape")

            problems = []
            for query in queries:
                promql = promql_of(query.expr, GRAFANA)
                where = f"panel {query.panel_id} {query.title!r} {query.ref_id}: {promql}"
                if "$" in promql:
                    problems.append(f"{where}: a Grafana variable promql_of does not know")
                    continue
                answer = prometheus.query(promql)
                if answer["status"] != "success":
                    problems.append(f"{where}: {answer.get('errorType')}: {answer.get('error')}")
                    continue
                if (query.panel_id, query.ref_id) in EXPECTED:
                    what, check = EXPECTED[(query.panel_id, query.ref_id)]
                    series = prometheus.series(promql)
                    if not check(series):
                        problems.append(f"{where}: expected {what}, got {series}")
            assert problems == [], "\n".join(problems)

            # Both alert rules evaluate on the real series without error.
            def rules_evaluated() -> list[dict[str, Any]]:
                answer = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()
                rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
                return rules if rules and all(rule["health"] != "unknown" for rule in rules) else []

            rules = wait_until(rules_evaluated, 30, "the alert rules to be evaluated")
            assert {rule["name"]: (rule["health"], rule.get("lastError", "")) for rule in rules} == {
                "FinetuneOutboxBacklog": ("ok", ""),
                "FinetuneOpenAIErrors": ("ok", ""),
                "FinetuneDatabaseDown": ("ok", ""),
            }
    finally:
        assert h.bot.stop() == 0, h.bot.logs
