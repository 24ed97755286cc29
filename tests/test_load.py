"""Load: 1,000 signed commands in about 30 s — every one acknowledged, every one answered, and
memory flat. How fast (Slack's 3 s, percentiles) is the benchmarks' job (`python -m bench --only
ack`); this test checks that nothing is dropped, with only generous safety timeouts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, start_bot

COMMANDS = 1000
SECONDS = 30.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_thousand_commands_in_thirty_seconds(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    bot = start_bot(fake_openai, fake_slack, tmp_path, LOG_LEVEL="WARNING")
    h = Harness(bot, fake_openai, fake_slack)
    job = fake_openai.add_job()
    assert bot.process is not None
    started = time.monotonic()
    rss: dict[int, int] = {}

    def send(i: int) -> tuple[int, str]:
        # Paced: command i leaves at i * 30 ms, so 1,000 take about 30 s.
        delay = started + i * SECONDS / COMMANDS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        text = f"get {job['id']}" if i % 4 else "list limit=5"
        response, key = h.command(text)
        if i in (COMMANDS // 4, COMMANDS - 1):
            rss[i] = rss_kib(bot.process.pid)  # type: ignore[union-attr]
        return response.status_code, key

    try:
        with ThreadPoolExecutor(max_workers=25) as pool:
            results = list(pool.map(send, range(COMMANDS)))
        statuses = [status for status, _ in results]
        assert statuses == [200] * COMMANDS
        keys = [key for _, key in results]
        fake_slack.wait_for(lambda s: all(s.responses_for(k) for k in keys), timeout=60)
        # Memory flat: the second three quarters of the load grew the process by little.
        growth_mib = (rss[COMMANDS - 1] - rss[COMMANDS // 4]) / 1024
        assert growth_mib < 40, f"RSS grew {growth_mib:.1f} MiB under load"
    finally:
        assert bot.stop() == 0, bot.logs[-3000:]
