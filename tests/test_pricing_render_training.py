"""The cost estimate, the price override, and the check's messages (escaped, within Block Kit limits)."""

from __future__ import annotations

import json
from typing import Any

from bot.pricing import PRICES, Price, default_epochs, estimate_cost, load_prices, price_for
from bot.render import Outcome
from bot.render_training import (
    CREATE_NEVER_CONFIRMED,
    CREATE_NEVER_SENT,
    CREATE_REFUSED,
    TRAINING_START,
    UPLOAD_FAILED,
    render_checking,
    render_ready_again,
    render_start_refused,
    render_start_unconfirmed,
    render_start_unconfirmed_note,
    render_starting,
    render_training_started,
    render_uploading,
    render_validation,
    render_validation_failed,
    with_note,
)
from bot.training_data import validate_bytes
from tests.fakes.slack import _block_errors


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def good(n: int, text: str = "hello") -> bytes:
    return jsonl(
        [
            {"messages": [{"role": "user", "content": f"{text} {i}"}, {"role": "assistant", "content": "hi"}]}
            for i in range(n)
        ]
    )


def test_default_epochs_is_the_cookbook_rule() -> None:
    assert default_epochs(10) == 10  # 100 // 10
    assert default_epochs(3) == 25  # capped
    assert default_epochs(34) == 3 and default_epochs(1000) == 3
    assert default_epochs(10_000) == 2  # 25,000 // 10,000
    assert default_epochs(100_000) == 1


def test_estimate_uses_billed_tokens_epochs_and_price() -> None:
    report = validate_bytes(good(100), filename="t.jsonl", model="ft:gpt-4o-mini-2024-07-18:acme::x")
    assert report.tokens is not None
    auto = estimate_cost(report, epochs=None, prices=PRICES)
    assert auto.epochs == 3 and auto.epochs_auto
    assert auto.billed_tokens == 3 * report.tokens.billed_per_epoch
    assert auto.price == PRICES["gpt-4o-mini"]  # not gpt-4o's
    assert auto.usd is not None and abs(auto.usd - auto.billed_tokens * 3.00 / 1e6) < 1e-12
    fixed = estimate_cost(report, epochs=5, prices=PRICES)
    assert fixed.epochs == 5 and not fixed.epochs_auto
    unknown = estimate_cost(
        validate_bytes(good(100), filename="t", model="gpt-9"), epochs=None, prices=PRICES
    )
    assert unknown.usd is None and unknown.price is None


def test_prices_are_dated_and_overridable() -> None:
    assert all(p.as_of and p.source for p in PRICES.values())
    assert load_prices({}) == PRICES
    prices = load_prices({"FINETUNE_TRAINING_PRICES": "gpt-4o-mini=2.5, gpt-5-mini=7"}, today="2026-07-01")
    assert isinstance(prices, dict)
    assert prices["gpt-4o-mini"] == Price(2.5, "2026-07-01", "set by the operator (FINETUNE_TRAINING_PRICES)")
    assert price_for("gpt-5-mini-2026-01-01", prices) == prices["gpt-5-mini"]
    assert prices["gpt-4o"] == PRICES["gpt-4o"]
    for bad in ("gpt-4o-mini", "gpt-4o=cheap", "=3", "gpt-4o=0", "gpt-4o=-1"):
        error = load_prices({"FINETUNE_TRAINING_PRICES": bad})
        assert isinstance(error, str) and error.startswith("FINETUNE_TRAINING_PRICES"), bad


def _all_text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_validation_report_with_start_button() -> None:
    report = validate_bytes(good(200), filename="train.jsonl", model="gpt-4o-mini-2024-07-18")
    estimate = estimate_cost(report, epochs=None, prices=PRICES)
    reply = render_validation(report, estimate, user_id="U123", start_value="upload-1")
    assert _block_errors(reply.blocks) == []
    assert reply.text.startswith(":white_check_mark: *Ready to fine-tune*")
    text = _all_text(reply.blocks)
    assert "estimated" in text and "prices as of 2026-06-01" in text and "3 epochs (auto)" in text
    button = reply.blocks[-1]["elements"][0]
    assert button["action_id"] == TRAINING_START and button["value"] == "upload-1"
    assert button["style"] == "primary" and button["text"]["text"].startswith("Start fine-tuning (")
    assert "gpt-4o-mini-2024-07-18" in button["confirm"]["text"]["text"]
    # No button without a value, or for a file with errors.
    assert TRAINING_START not in _all_text(
        render_validation(report, estimate, user_id="U1", start_value=None).blocks
    )
    bad = validate_bytes(good(3), filename="train.jsonl", model="gpt-4o-mini")
    bad_reply = render_validation(bad, None, user_id="U1", start_value="x")
    assert TRAINING_START not in _all_text(bad_reply.blocks)
    assert bad_reply.text.startswith(":x: *1 problem must be fixed*")


def test_hostile_content_is_escaped_and_limits_hold() -> None:
    hostile = "<!channel> *x* <https://evil|click>"
    rows: list[Any] = []
    for i in range(300):  # many kinds of problems, many lines
        rows.append({"messages": [{"role": f"{hostile}{i}", "content": "x"}], f"{hostile}{i}": 1})
        rows.append({"messages": [{"role": "user", "content": "x", hostile: 1}]})
    report = validate_bytes(jsonl(rows) + b"{oops\n", filename=f"{hostile}.jsonl", model=hostile)
    estimate = estimate_cost(report, epochs=None, prices=PRICES)
    for reply in (
        render_validation(report, estimate, user_id=hostile, start_value="v"),
        render_checking(f"{hostile}.jsonl", hostile),
        render_validation_failed(hostile, hostile),
        render_training_started(hostile, "ftjob-abc"),
    ):
        assert _block_errors(reply.blocks) == []
        text = _all_text(reply.blocks) + reply.text
        assert "<!channel>" not in text and "<https://evil" not in text
        assert "&lt;!channel&gt;" in text


def test_start_refusals_uploading_and_ready_again() -> None:
    assert "<@U1>" in str(render_start_refused("Only <@U1> can start this job.").as_kwargs())
    assert "Uploading" in str(render_uploading("t<!channel>.jsonl").as_kwargs())
    assert "<!channel>" not in str(render_uploading("t<!channel>.jsonl").as_kwargs())
    again = render_ready_again("train.jsonl", "a" * 32, {"examples": 12, "usd": 1.5}, UPLOAD_FAILED)
    assert "upload to OpenAI failed; nothing was started" in again.text
    assert _block_errors(again.blocks) == []
    [button] = again.blocks[-1]["elements"]
    assert (
        button["action_id"] == TRAINING_START
        and button["value"] == "a" * 32
        and "$1.50" in button["text"]["text"]
    )
    noted = with_note(again, "also this")
    assert noted.blocks[-1]["block_id"] == again.blocks[-1]["block_id"] and "also this" in str(noted.blocks)


def test_the_reports_messages_while_a_start_is_under_way_are_escaped_and_offer_no_start() -> None:
    name = "t<!channel>.jsonl"
    note = render_start_unconfirmed_note(name, 600.0)
    under_way = (render_starting(name), render_start_unconfirmed(name, 600.0), note)
    for reply in under_way:
        text = str(reply.as_kwargs())
        assert _block_errors(reply.blocks) == [] and "<!channel>" not in text and TRAINING_START not in text
    assert "within 10 minutes" in render_start_unconfirmed(name, 600.0).text
    assert "within 1 minute:" in render_start_unconfirmed(name, 20.0).text
    assert "within 10 minutes" in note.text and "report" in note.text and "create" not in note.text
    assert note.outcome == Outcome.OPENAI_ERROR  # counted like the command's lost answer
    for why in (CREATE_REFUSED, CREATE_NEVER_CONFIRMED, CREATE_NEVER_SENT):
        again = render_ready_again(name, "a" * 32, {}, why)
        assert _block_errors(again.blocks) == [] and f"{why}; nothing was started." in again.text
