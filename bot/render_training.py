"""Messages about training data: the check of a file, its cost, the Start button, `files`.

Pure like bot/render.py, whose pieces (and escaping) it reuses: everything that came from the file,
its name or OpenAI is escaped, and no message quotes more than a short excerpt of the file.
"""

from __future__ import annotations

from typing import Any

from bot.pricing import PRICES_VARIABLE, CostEstimate
from bot.render import (
    ID_CHARS,
    MAX_BLOCKS,
    NAME_CHARS,
    Outcome,
    Reply,
    _chunk,
    _clip,
    _code,
    _context,
    _mention,
    _plural,
    _reply,
    _section,
    size_words,
)
from bot.training_data import MIN_EXAMPLES, ProblemSummary, ValidationReport

TRAINING_START = "training_start"
TRAINING_BLOCK_ID = "training_actions"
# Slack's limits (FACTS-interactive §6).
BUTTON_TEXT_CHARS = 75
VALUE_CHARS = 2000
CONFIRM_TEXT_CHARS = 300
# Problem lines take at most this many blocks, so the stats, cost and button always fit.
PROBLEM_BLOCKS = 20
FILENAME_CHARS = 120
REASON_CHARS = 1500
_TIMES = "\u00d7"  # the multiplication sign (ruff flags the literal one as ambiguous)


def tokens_words(count: int) -> str:
    """2,104,332 → "2.1M"; smaller counts in full."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    return f"{count:,}"


def usd(amount: float) -> str:
    if 0 < amount < 0.01:
        return "< $0.01"
    return f"${amount:,.2f}"


def approx_usd(amount: float) -> str:
    """ "≈ $12.34", or "< $0.01" for a tiny amount (never "≈ < $0.01")."""
    return usd(amount) if 0 < amount < 0.01 else f"≈ {usd(amount)}"


def _filename(name: str) -> str:
    return _code(name or "(no name)", FILENAME_CHARS)


def _plain_filename(name: str) -> str:
    # plain_text is shown as typed: it needs cutting, not escaping.
    name = " ".join((name or "(no name)").split())
    return name if len(name) <= 60 else name[:59] + "…"


def render_checking(filename: str, user_id: str) -> Reply:
    text = f":hourglass_flowing_sand: Checking {_filename(filename)}…"
    return _reply(text, [_section(text), _context(f"For {_mention(user_id)}")])


def _lines_words(problem: ProblemSummary) -> str:
    if not problem.lines:
        return ""
    shown = ", ".join(str(n) for n in problem.lines)
    more = ", …" if problem.count > len(problem.lines) else ""
    word = "line" if problem.count == 1 else "lines"
    return f" ({word} {shown}{more})"


def _problem_line(problem: ProblemSummary) -> str:
    marker = ":red_circle:" if problem.severity == "error" else ":warning:"
    where = f"*{_plural(problem.count, 'line')}*: " if problem.lines else ""
    return f"{marker} {where}{_clip(problem.message, 600)}{_lines_words(problem)}"


def _verdict(report: ValidationReport) -> str:
    name = _filename(report.filename)
    errors = len(report.errors)
    if report.ok:
        return f":white_check_mark: *Ready to fine-tune*: {name}"
    if errors == 0:  # not reachable today (too few examples is an error), kept for safety
        return f":x: {name} needs at least {MIN_EXAMPLES} examples"
    return f":x: *{_plural(errors, 'problem')} must be fixed* in {name}"


def _summary(report: ValidationReport) -> str:
    method = "DPO" if report.method == "dpo" else "supervised"
    return (
        f"{_plural(report.examples, 'example')} · {method} · {_code(report.model, NAME_CHARS)} "
        f"· {size_words(report.bytes_read)}"
    )


def _token_line(report: ValidationReport) -> str | None:
    stats = report.tokens
    if stats is None:
        return None
    counted = (
        "" if stats.examples == report.examples else f" in the {_plural(stats.examples, 'valid example')}"
    )
    return (
        f"*Tokens* ({report.encoding}, exact): {tokens_words(stats.total)}{counted} · per example "
        f"min {stats.min:,} · median {stats.median:,} · p90 {stats.p90:,} · max {stats.max:,}"
    )


def _cost_line(estimate: CostEstimate) -> str:
    epochs = f"{_plural(estimate.epochs, 'epoch')}{' (auto)' if estimate.epochs_auto else ''}"
    per_epoch = estimate.billed_tokens // max(estimate.epochs, 1)
    if estimate.usd is None or estimate.price is None:
        return (
            f"*Cost*: no price known for {_code(estimate.model, NAME_CHARS)} "
            f"({tokens_words(per_epoch)} tokens {_TIMES} {epochs}); set `{PRICES_VARIABLE}` to estimate it."
        )
    price = estimate.price
    when = (
        f"price set by the operator ({_clip(price.as_of, 40)})"
        if "operator" in price.source
        else f"prices as of {_clip(price.as_of, 40)}"
    )
    return (
        f"*Cost*: {approx_usd(estimate.usd)} estimated ({tokens_words(per_epoch)} tokens {_TIMES} "
        f"{epochs} at ${price.usd_per_million_training_tokens:,.2f}/M, {when})"
    )


def _start_button(report: ValidationReport, estimate: CostEstimate | None, value: str) -> dict[str, Any]:
    cost = f" ({approx_usd(estimate.usd)})" if estimate is not None and estimate.usd is not None else ""
    confirm_cost = (
        f" Estimated cost {approx_usd(estimate.usd)}." if estimate and estimate.usd is not None else ""
    )
    question = (
        f'Upload "{_plain_filename(report.filename)}" to OpenAI and start fine-tuning '
        f"{' '.join(report.model.split())[:80]}?{confirm_cost}"
    )
    return {
        "type": "actions",
        "block_id": TRAINING_BLOCK_ID,
        "elements": [
            {
                "type": "button",
                "action_id": TRAINING_START,
                "text": {"type": "plain_text", "text": f"Start fine-tuning{cost}"[:BUTTON_TEXT_CHARS]},
                "value": value[:VALUE_CHARS],
                "style": "primary",
                "confirm": {
                    "title": {"type": "plain_text", "text": "Start fine-tuning?"},
                    "text": {"type": "plain_text", "text": question[:CONFIRM_TEXT_CHARS]},
                    "confirm": {"type": "plain_text", "text": "Upload and start"},
                    "deny": {"type": "plain_text", "text": "Not yet"},
                    "style": "primary",
                },
            }
        ],
    }


def render_validation(
    report: ValidationReport, estimate: CostEstimate | None, *, user_id: str, start_value: str | None
) -> Reply:
    """The check's result: verdict, problems with their first lines, tokens, cost, and a Start button
    (action_id "training_start", value `start_value`) only when the file can go on."""
    verdict = _verdict(report)
    blocks: list[dict[str, Any]] = [_section(f"{verdict}\n{_summary(report)}")]
    problem_chunks = _chunk(_problem_line(p) for p in report.problems)
    blocks += [_section(chunk) for chunk in problem_chunks[:PROBLEM_BLOCKS]]
    if len(problem_chunks) > PROBLEM_BLOCKS:
        blocks.append(_context("More problems were found than fit in one message; fix these first."))
    token_line = _token_line(report)
    if token_line is not None:
        blocks.append(_section(token_line))
    if estimate is not None and report.tokens is not None:
        blocks.append(_section(_cost_line(estimate)))
    notes = [
        "Token counts follow OpenAI's cookbook (3 per message + content + 3 per example); the cost is "
        "an estimate: OpenAI bills the tokens it counts.",
        f"Checked for {_mention(user_id)}." if user_id else "",
    ]
    blocks.append(_context(" ".join(n for n in notes if n)))
    if report.ok and start_value is not None:
        blocks.append(_start_button(report, estimate, start_value))
    # The verdict, summary and problems lead: cut from the middle if something ever overflows.
    if len(blocks) > MAX_BLOCKS:
        blocks = blocks[: MAX_BLOCKS - 3] + blocks[-3:]
    return _reply(verdict, blocks)


def render_validation_failed(filename: str, reason: str) -> Reply:
    """The file could not be read or checked at all (download refused, too big, deleted…)."""
    text = f":warning: Could not check {_filename(filename)}: {_clip(reason, REASON_CHARS)}"
    return _reply(text, [_section(text)])


def render_training_started(filename: str, job_id: str) -> Reply:
    text = (
        f":rocket: Uploaded {_filename(filename)} to OpenAI and started {_code(job_id, ID_CHARS)}; "
        "its card follows in this channel."
    )
    return _reply(text, [_section(text)])


def with_note(reply: Reply, note: str) -> Reply:
    """The same message with one more line of context (plain text from us, escaped anyway)."""
    blocks = [*reply.blocks[: MAX_BLOCKS - 1], _context(_clip(note, REASON_CHARS))]
    # The Start button, if any, stays last.
    starts = [b for b in blocks if b.get("block_id") == TRAINING_BLOCK_ID]
    rest = [b for b in blocks if b.get("block_id") != TRAINING_BLOCK_ID]
    return _reply(reply.text, [*rest, *starts])


def render_start_refused(reason: str) -> Reply:
    """Why a Start click did nothing (for the clicker alone). `reason` is ours: mentions stay."""
    text = f":information_source: {reason}"
    return _reply(text, [_section(text)])


def render_uploading(filename: str) -> Reply:
    text = f":arrow_up: Uploading {_filename(filename)} to OpenAI, then starting the job…"
    return _reply(text, [_section(text)])


def render_starting(filename: str) -> Reply:
    """Start was clicked on a file already in OpenAI: the job is being created."""
    text = f":hourglass_flowing_sand: Starting fine-tuning on {_filename(filename)}…"
    return _reply(text, [_section(text)])


def render_start_unconfirmed(filename: str, check_for: float) -> Reply:
    """OpenAI's answer to the create was lost, so the job may exist. No Start button: a second
    job could be billed. The message is edited again once the bot knows (the job, or Start)."""
    minutes = max(1, round(check_for / 60))
    text = (
        f":hourglass_flowing_sand: OpenAI did not confirm the start of fine-tuning on {_filename(filename)}, "
        f"so the job *may or may not have started*. I'm looking for it and will update this message "
        f"within {_plural(minutes, 'minute')}: with the job, or with Start again if nothing was started."
    )
    return _reply(text, [_section(text)])


def render_start_unconfirmed_note(filename: str, check_for: float) -> Reply:
    """For the clicker alone, when OpenAI's answer to the create was lost: the report in the
    channel is where the news comes (the reconciler's private notes speak of `create`, a command
    this person never typed), so this points there and asks for nothing."""
    minutes = max(1, round(check_for / 60))
    text = (
        f":warning: OpenAI didn't confirm the start of fine-tuning on {_filename(filename)}, so the job "
        f"*may or may not have started*. There is nothing to click meanwhile: within "
        f"{_plural(minutes, 'minute')} the file's report in this channel shows the job, or offers "
        "Start again if nothing was started."
    )
    return _reply(text, [_section(text)], Outcome.OPENAI_ERROR)


# Why the report offers Start again (`render_ready_again`): what the last try came to.
UPLOAD_FAILED = "The last upload to OpenAI failed"
CREATE_REFUSED = "OpenAI refused to start the job"
CREATE_NEVER_CONFIRMED = "OpenAI never confirmed the last start, and no job from it appeared"
CREATE_NEVER_SENT = "The last start stopped before it reached OpenAI"


def render_ready_again(filename: str, start_value: str, summary: dict[str, Any], why: str) -> Reply:
    """After a try that started nothing (`why`: an upload that failed, a create OpenAI refused or
    never made): the file is still good; Start may be clicked again."""
    examples = summary.get("examples")
    cost = summary.get("usd")
    parts = [f":white_check_mark: {_filename(filename)} is ready to fine-tune"]
    if isinstance(examples, int):
        parts.append(f"({_plural(examples, 'example')})")
    text = " ".join(parts) + f". {why}; nothing was started."
    label = "Start fine-tuning" + (f" ({approx_usd(cost)})" if isinstance(cost, int | float) else "")
    button = {
        "type": "actions",
        "block_id": TRAINING_BLOCK_ID,
        "elements": [
            {
                "type": "button",
                "action_id": TRAINING_START,
                "text": {"type": "plain_text", "text": label[:BUTTON_TEXT_CHARS]},
                "value": start_value[:VALUE_CHARS],
                "style": "primary",
                "confirm": {
                    "title": {"type": "plain_text", "text": "Start fine-tuning?"},
                    "text": {
                        "type": "plain_text",
                        "text": f'Start fine-tuning on "{_plain_filename(filename)}" now?'[
                            :CONFIRM_TEXT_CHARS
                        ],
                    },
                    "confirm": {"type": "plain_text", "text": "Start"},
                    "deny": {"type": "plain_text", "text": "Not yet"},
                    "style": "primary",
                },
            }
        ],
    }
    return _reply(text, [_section(text), button])
