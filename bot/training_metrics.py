"""Step metrics of a fine-tuning job, from its result file or its `metrics` events. Pure: no I/O.

The result file (`result_files[0]`) is a CSV whose columns OpenAI has never documented in full
(`step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy` is what people see; the
`full_valid_*` columns may or may not be there), which some users get back base64-encoded. So it is
read by header name, every value is optional, and a bad row costs that row, never the report: the
only error is `ResultFileError`, for bytes that are not a metrics CSV at all.

This module is imported by the chart worker process, so it imports nothing but the standard library.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SOURCE_RESULT_FILE = "result file"
SOURCE_EVENTS = "events"

# Column (or event key) → MetricPoint field. Several names for one field: the CSV says
# `train_accuracy` where events and checkpoints say `train_mean_token_accuracy`.
_ALIASES: dict[str, str] = {
    "train_loss": "train_loss",
    "train_accuracy": "train_accuracy",
    "train_mean_token_accuracy": "train_accuracy",
    "valid_loss": "valid_loss",
    "valid_accuracy": "valid_accuracy",
    "valid_mean_token_accuracy": "valid_accuracy",
    "full_valid_loss": "full_valid_loss",
    "full_valid_accuracy": "full_valid_accuracy",
    "full_valid_mean_token_accuracy": "full_valid_accuracy",
}
_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_WHITESPACE = frozenset(b" \t\r\n\v\f")
_BOM = b"\xef\xbb\xbf"
_SNIFF = 256  # bytes looked at before deciding whether base64 decoding is worth a try


class ResultFileError(ValueError):
    """The bytes are not a metrics CSV at all (no `step` column, binary junk, empty)."""


@dataclass(frozen=True, slots=True)
class MetricPoint:
    step: int
    train_loss: float | None = None
    train_accuracy: float | None = None  # CSV `train_accuracy` / event `train_mean_token_accuracy`
    valid_loss: float | None = None
    valid_accuracy: float | None = None  # `valid_mean_token_accuracy` (or `valid_accuracy`)
    full_valid_loss: float | None = None
    full_valid_accuracy: float | None = None  # `full_valid_mean_token_accuracy`

    @property
    def has_values(self) -> bool:
        return any(getattr(self, name) is not None for name in _FIELDS)


_FIELDS = tuple(dict.fromkeys(_ALIASES.values()))


@dataclass(frozen=True)
class MetricSeries:
    points: tuple[MetricPoint, ...]  # sorted by step; one per step (a later duplicate row wins)
    skipped_rows: int  # rows that were junk (no usable step) and were skipped
    source: str  # "result file" or "events"


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    model: str  # fine_tuned_model_checkpoint
    metrics: Mapping[str, float]
    created_at: int | None = None


# ---------------------------------------------------------------------------------------------- values


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (junk text, NaN, ±inf, bools, None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip().strip("\"'")
        if not value:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _step(value: Any) -> int | None:
    """A non-negative whole number; `12.0` is accepted (some writers print every number as a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    number = _number(value)
    if number is None or number < 0 or not number.is_integer():
        return None
    return int(number)


# ---------------------------------------------------------------------------------------------- CSV


def _lines(data: bytes) -> Iterator[str]:
    """The lines of `data`, decoded one at a time: a 50 MB file is never held twice as text.
    BytesIO shares the buffer of the bytes it is given, so this copies nothing up front."""
    if b"\n" not in data and b"\r" in data:  # old Mac line ends, CR only
        data = data.replace(b"\r", b"\n")
    for raw in io.BytesIO(data):
        yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


def _cells(line: str) -> list[str]:
    # Not the csv module: a stray quote there swallows every following line into one field, and a
    # metrics CSV holds only numbers, so a quote is junk around a value at worst.
    return [cell.strip().strip("\"'") for cell in line.split(",")]


def _header(line: str) -> tuple[int, dict[int, str]] | None:
    """The `step` column's index and the metric columns' indexes → field, or None without `step`."""
    names = [name.lstrip("\ufeff").lower() for name in _cells(line)]
    if "step" not in names:
        return None
    columns: dict[int, str] = {}
    taken: set[str] = set()
    for index, name in enumerate(names):
        field = _ALIASES.get(name)
        if field is not None and field not in taken:  # the first of two columns for a field wins
            columns[index] = field
            taken.add(field)
    return names.index("step"), columns


def _first_line(data: bytes) -> str | None:
    for line in _lines(data[:4096]):
        if line.strip():
            return line
    return None


def _looks_like_metrics_csv(data: bytes) -> bool:
    line = _first_line(data)
    return line is not None and _header(line) is not None


def _maybe_base64(data: bytes) -> bytes | None:
    """The decoded bytes when `data` is base64 of a metrics CSV; None when it is anything else."""
    head = data[:_SNIFF]
    if not head.strip() or any(b not in _BASE64_ALPHABET and b not in _WHITESPACE for b in head):
        return None  # a plain CSV has commas in its first line: no need to look further
    try:
        decoded = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    decoded = decoded.removeprefix(_BOM)
    # A CSV whose whole text happens to be base64 alphabet (a lone `step` header) decodes to junk:
    # only a decoded metrics CSV counts.
    return decoded if _looks_like_metrics_csv(decoded) else None


def parse_result_file(data: bytes) -> MetricSeries:
    """Parse a job's result file. Raises only `ResultFileError`, for something not a metrics CSV."""
    data = data.removeprefix(_BOM)
    decoded = _maybe_base64(data)
    if decoded is not None:
        data = decoded
    if b"\x00" in data[:4096]:
        raise ResultFileError("binary data, not a CSV")
    lines = _lines(data)
    header = None
    for line in lines:
        if line.strip():
            header = _header(line)
            if header is None:
                raise ResultFileError("no `step` column in the first line")
            break
    if header is None:
        raise ResultFileError("empty")
    step_index, columns = header
    by_step: dict[int, MetricPoint] = {}
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        cells = _cells(line)
        step = _step(cells[step_index]) if step_index < len(cells) else None
        if step is None:
            skipped += 1
            continue
        values = {field: _number(cells[i]) for i, field in columns.items() if i < len(cells)}
        by_step[step] = MetricPoint(step, **values)  # a later row for the same step replaces it
    points = tuple(by_step[step] for step in sorted(by_step))
    return MetricSeries(points=points, skipped_rows=skipped, source=SOURCE_RESULT_FILE)


# ---------------------------------------------------------------------------------------------- events


def _created(item: Mapping[str, Any]) -> int:
    created = item.get("created_at")
    return created if isinstance(created, int) and not isinstance(created, bool) else -1


def series_from_events(events: Iterable[Mapping[str, Any]]) -> MetricSeries:
    """Step metrics from `fine_tuning.job.event` dicts (any order; the API sends newest first).
    Other event types are ignored; a metrics event without a usable `data.step` is counted skipped.
    For models.JobEvent objects pass `event.raw`."""
    by_step: dict[int, tuple[int, MetricPoint]] = {}
    skipped = 0
    for item in events:
        if not isinstance(item, Mapping) or item.get("type") != "metrics":
            continue
        data = item.get("data")
        step = _step(data.get("step")) if isinstance(data, Mapping) else None
        if step is None or not isinstance(data, Mapping):
            skipped += 1
            continue
        values: dict[str, float | None] = {}
        for key, field in _ALIASES.items():
            if field not in values or values[field] is None:
                values[field] = _number(data.get(key))
        created = _created(item)
        # Two events for one step (a retried step): the newer one wins, and on a tie the later one.
        previous = by_step.get(step)
        if previous is None or created >= previous[0]:
            by_step[step] = (created, MetricPoint(step, **values))
    points = tuple(by_step[step][1] for step in sorted(by_step))
    return MetricSeries(points=points, skipped_rows=skipped, source=SOURCE_EVENTS)


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoints_from_api(items: Iterable[Mapping[str, Any]]) -> tuple[CheckpointInfo, ...]:
    """`fine_tuning.job.checkpoint` dicts → CheckpointInfo sorted by step; malformed entries (no
    step number or no model name) are skipped, non-numeric metrics dropped.
    For models.Checkpoint objects pass `checkpoint.raw`."""
    found: list[CheckpointInfo] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        step = item.get("step_number")
        model = item.get("fine_tuned_model_checkpoint")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            continue
        if not isinstance(model, str) or not model.strip():
            continue
        raw_metrics = item.get("metrics")
        metrics: dict[str, float] = {}
        if isinstance(raw_metrics, Mapping):
            for key, value in raw_metrics.items():
                number = _number(value) if not isinstance(value, str) else None
                if isinstance(key, str) and number is not None:
                    metrics[key] = number
        created = item.get("created_at")
        created_at = created if isinstance(created, int) and not isinstance(created, bool) else None
        found.append(CheckpointInfo(step=step, model=model, metrics=metrics, created_at=created_at))
    return tuple(sorted(found, key=lambda c: (c.step, c.created_at or 0)))
