"""One watch the OpenAI client refuses (a stored id that is not `ftjob-…`) must not hold up the
others: the poll cycle goes on, the good job is announced, and the bad watch ends with a note."""

from __future__ import annotations

from pathlib import Path

from bot.store import Store
from tests.fakes import FakeOpenAI, FakeSlack
from tests.harness import Harness, start_bot
from tests.test_e2e_notifications import outcomes, text_of, wait_outcome


def test_a_malformed_job_id_does_not_block_other_watches(
    fake_openai: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    good = fake_openai.add_job(status="running")
    store = Store.from_url(f"sqlite:///{tmp_path / 'finetune-bot.db'}")
    for job_id, created_at in (("not-a-job", None), (good["id"], good["created_at"])):
        store.add_watch(
            job_id=job_id,
            team_id="T1",
            channel_id="C1",
            user_id="U1",
            announcement_ts=None,
            job_created_at=created_at,
            status="running",
        )
    store.close()
    bot = start_bot(fake_openai, fake_slack, tmp_path, POLL_INTERVAL_SECONDS="1")
    h = Harness(bot, fake_openai, fake_slack)
    try:
        fake_openai.set_status(good["id"], "succeeded")
        message = wait_outcome(h, good["id"])
        assert message.channel == "C1" and "succeeded" in text_of(message)
        note = wait_outcome(h, "not-a-job")
        assert "no longer" in text_of(note)
        assert len(outcomes(h, good["id"])) == 1
        # The client never sent the malformed id anywhere.
        assert not [r for r in fake_openai.requests if "not-a-job" in r.path]
    finally:
        assert bot.stop() == 0, bot.logs
    h.assert_no_secrets()
