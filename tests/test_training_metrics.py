"""Result-file CSV, metrics events and checkpoints → typed metrics (bot/training_metrics.py)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.training_metrics import (
    CheckpointInfo,
    MetricPoint,
    MetricSeries,
    ResultFileError,
    checkpoints_from_api,
    parse_result_file,
    series_from_events,
)

OPENAI_CSV = (
    b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
    b"1,2.5,0.41,2.6,0.40\n"
    b"2,2.1,0.45,,\n"
    b"3,1.9,0.50,2.0,0.48\n"
)


def steps(series: MetricSeries) -> list[int]:
    return [p.step for p in series.points]


# ---------------------------------------------------------------------------------------------- CSV


def test_the_documented_header_is_read_by_name() -> None:
    series = parse_result_file(OPENAI_CSV)
    assert series.source == "result file"
    assert series.skipped_rows == 0
    assert series.points == (
        MetricPoint(1, train_loss=2.5, train_accuracy=0.41, valid_loss=2.6, valid_accuracy=0.40),
        MetricPoint(2, train_loss=2.1, train_accuracy=0.45),
        MetricPoint(3, train_loss=1.9, train_accuracy=0.50, valid_loss=2.0, valid_accuracy=0.48),
    )


def test_columns_in_another_order_with_other_case_and_spaces() -> None:
    data = b" Valid_Loss , STEP ,Train_Loss\n0.9, 7 ,0.8\n"
    assert parse_result_file(data).points == (MetricPoint(7, train_loss=0.8, valid_loss=0.9),)


def test_missing_columns_leave_none() -> None:
    series = parse_result_file(b"step,train_loss\n1,0.5\n2,0.4\n")
    assert series.points == (MetricPoint(1, train_loss=0.5), MetricPoint(2, train_loss=0.4))
    assert all(p.valid_loss is None and p.train_accuracy is None for p in series.points)


def test_event_style_and_full_validation_column_names() -> None:
    data = (
        b"step,train_mean_token_accuracy,valid_mean_token_accuracy,full_valid_loss,"
        b"full_valid_mean_token_accuracy\n10,0.7,0.6,1.25,0.65\n"
    )
    assert parse_result_file(data).points == (
        MetricPoint(
            10, train_accuracy=0.7, valid_accuracy=0.6, full_valid_loss=1.25, full_valid_accuracy=0.65
        ),
    )


def test_empty_cells_and_short_rows_are_none() -> None:
    data = b"step,train_loss,valid_loss,train_accuracy\n1,,0.3,\n2\n3,0.2\n"
    assert parse_result_file(data).points == (
        MetricPoint(1, valid_loss=0.3),
        MetricPoint(2),
        MetricPoint(3, train_loss=0.2),
    )


def test_extra_columns_and_extra_cells_are_ignored() -> None:
    data = b"step,train_loss,learning_rate,notes\n1,0.5,1e-5,hello,surplus,cells\n"
    assert parse_result_file(data).points == (MetricPoint(1, train_loss=0.5),)


def test_crlf_and_utf8_bom() -> None:
    data = b"\xef\xbb\xbfstep,train_loss\r\n1,0.5\r\n2,0.25\r\n"
    assert parse_result_file(data).points == (MetricPoint(1, train_loss=0.5), MetricPoint(2, train_loss=0.25))


def test_carriage_return_only_line_ends() -> None:
    assert steps(parse_result_file(b"step,train_loss\r1,0.5\r2,0.4\r")) == [1, 2]


def test_blank_lines_before_the_header_and_between_rows() -> None:
    data = b"\n\n  \nstep,train_loss\n\n1,0.5\n\n\n2,0.4\n"
    series = parse_result_file(data)
    assert steps(series) == [1, 2]
    assert series.skipped_rows == 0  # blank lines are not junk rows


def test_junk_values_become_none_and_the_row_stays() -> None:
    data = (
        b'step,train_loss,valid_loss,train_accuracy\n1,abc,0x1f,\xff\xfe\n2,nan,inf,-inf\n3,1e400,0.5,"0.9"\n'
    )
    assert parse_result_file(data).points == (
        MetricPoint(1),
        MetricPoint(2),
        MetricPoint(3, valid_loss=0.5, train_accuracy=0.9),  # 1e400 overflows to inf: dropped
    )


def test_rows_without_a_usable_step_are_skipped_and_counted() -> None:
    data = (
        b"step,train_loss\n"
        b"1,0.5\n"
        b",0.4\n"  # no step
        b"two,0.3\n"  # not a number
        b"2.5,0.3\n"  # not a whole step
        b"-1,0.3\n"  # negative
        b"nan,0.3\n"
        b"3.0,0.2\n"  # a whole number printed as a float is fine
        b'"4",0.1\n'  # so is a quoted one
        b'5,"0.05\n'  # a stray quote costs that value only, not the lines after it
        b"6,0.01\n"
    )
    series = parse_result_file(data)
    assert steps(series) == [1, 3, 4, 5, 6]
    assert series.points[-2] == MetricPoint(5, train_loss=0.05)
    assert series.skipped_rows == 5


def test_duplicate_steps_later_row_wins_and_points_are_sorted() -> None:
    data = b"step,train_loss,valid_loss\n3,0.3,\n1,0.9,0.8\n2,0.5,\n1,0.7,\n"
    series = parse_result_file(data)
    assert series.points == (
        MetricPoint(1, train_loss=0.7),
        MetricPoint(2, train_loss=0.5),
        MetricPoint(3, train_loss=0.3),
    )


def test_header_only_is_an_empty_series_not_an_error() -> None:
    series = parse_result_file(b"step,train_loss,valid_loss\n")
    assert series.points == () and series.skipped_rows == 0


def test_base64_encoded_content_is_decoded() -> None:
    encoded = base64.b64encode(OPENAI_CSV)
    assert parse_result_file(encoded) == parse_result_file(OPENAI_CSV)


def test_base64_wrapped_in_lines_with_trailing_newline_and_bom_inside() -> None:
    encoded = base64.encodebytes(b"\xef\xbb\xbf" + OPENAI_CSV) + b"\n"  # 76-char lines, MIME style
    assert b"\n" in encoded.strip()
    assert parse_result_file(encoded) == parse_result_file(OPENAI_CSV)


def test_base64_looking_text_that_is_not_base64_of_a_csv_is_read_as_is() -> None:
    # "step" is valid base64 (it decodes to three junk bytes): the CSV itself must win.
    assert parse_result_file(b"step\n").points == ()
    assert parse_result_file(b"step\n12\n13\n").points == (MetricPoint(12), MetricPoint(13))
    # Base64 of something that is not a metrics CSV stays an error, not a garbage series.
    with pytest.raises(ResultFileError):
        parse_result_file(base64.b64encode(b"hello, world\n1,2\n"))


def test_base64_that_does_not_decode_cleanly_is_not_a_csv() -> None:
    with pytest.raises(ResultFileError):
        parse_result_file(b"c3RlcCx0cmFpbl9sb3Nz*\n")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n\r\n",
        b"train_loss,valid_loss\n0.5,0.4\n",  # no step column
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\x00\x01\x02step,train_loss\n1,2\n",
        b"PK\x03\x04 a zip file",
        b'{"error": {"message": "not found"}}',
    ],
)
def test_not_a_metrics_csv_raises_result_file_error(data: bytes) -> None:
    with pytest.raises(ResultFileError):
        parse_result_file(data)


def test_result_file_error_is_a_value_error() -> None:
    assert issubclass(ResultFileError, ValueError)


def test_a_large_file_parses_every_row() -> None:
    rows = "".join(f"{i},{1 / i:.6f},0.5,{'' if i % 50 else 0.4},\n" for i in range(1, 10_001))
    data = ("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n" + rows).encode()
    series = parse_result_file(data)
    assert len(series.points) == 10_000
    assert series.points[-1] == MetricPoint(10_000, train_loss=0.0001, train_accuracy=0.5, valid_loss=0.4)
    assert sum(p.valid_loss is not None for p in series.points) == 200


_CSV_PIECES = st.sampled_from(
    [
        "step", "train_loss", "valid_loss", "train_accuracy", "STEP", "1", "2.5", "-3", "nan", "inf", "",
        ",", ",", ",", "\n", "\r\n", "\r", '"', "\ufeff", "abc", "1e999", "0x10", " ", "\x00", "é",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=400), st.lists(_CSV_PIECES, max_size=60).map(lambda p: "".join(p).encode()))
)
def test_fuzz_never_raises_anything_but_result_file_error(data: bytes) -> None:
    for candidate in (data, base64.b64encode(data), b"step,train_loss\n" + data):
        try:
            series = parse_result_file(candidate)
        except ResultFileError:
            continue
        assert list(steps(series)) == sorted(set(steps(series)))
        assert series.skipped_rows >= 0
        for point in series.points:
            assert point.step >= 0


# ---------------------------------------------------------------------------------------------- events


def metrics_event(step: Any, created_at: int, **data: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{created_at}",
        "created_at": created_at,
        "level": "info",
        "message": f"Step {step}",
        "type": "metrics",
        "data": {"step": step, **data},
    }


def message_event(created_at: int, message: str) -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", "id": f"m{created_at}", "created_at": created_at,
            "level": "info", "message": message, "type": "message"}  # fmt: skip


def test_events_newest_first_become_sorted_points_and_messages_are_ignored() -> None:
    events = [
        message_event(105, "The job has successfully completed"),
        metrics_event(3, 103, total_steps=3, train_loss=1.5, train_mean_token_accuracy=0.6,
                      valid_loss=1.6, valid_mean_token_accuracy=0.55, full_valid_loss=1.58,
                      full_valid_mean_token_accuracy=0.56),
        metrics_event(2, 102, total_steps=3, train_loss=1.8, train_mean_token_accuracy=0.5),
        message_event(101, "Step 1/3: training loss=2.00"),
        metrics_event(1, 100, total_steps=3, train_loss=2.0, some_future_key="x"),
    ]  # fmt: skip
    series = series_from_events(events)
    assert series.source == "events"
    assert series.skipped_rows == 0
    assert series.points == (
        MetricPoint(1, train_loss=2.0),
        MetricPoint(2, train_loss=1.8, train_accuracy=0.5),
        MetricPoint(3, train_loss=1.5, train_accuracy=0.6, valid_loss=1.6, valid_accuracy=0.55,
                    full_valid_loss=1.58, full_valid_accuracy=0.56),
    )  # fmt: skip


def test_metrics_events_without_a_usable_step_are_counted() -> None:
    events: list[Any] = [
        metrics_event(None, 1, train_loss=1.0),
        metrics_event("x", 2, train_loss=1.0),
        metrics_event(True, 3, train_loss=1.0),
        {"type": "metrics", "data": "not a dict"},
        {"type": "metrics"},
        metrics_event(4, 5, train_loss="junk", valid_loss=float("nan")),
        "not an event",
        {"type": "message", "data": {"step": 9}},
    ]
    series = series_from_events(events)
    assert series.points == (MetricPoint(4),)
    assert series.skipped_rows == 5


def test_two_events_for_one_step_the_newer_wins_whatever_the_order() -> None:
    older, newer = metrics_event(5, 10, train_loss=1.0), metrics_event(5, 20, train_loss=0.9)
    assert series_from_events([newer, older]).points == (MetricPoint(5, train_loss=0.9),)
    assert series_from_events([older, newer]).points == (MetricPoint(5, train_loss=0.9),)


def test_no_events_is_an_empty_series() -> None:
    assert series_from_events([]) == MetricSeries(points=(), skipped_rows=0, source="events")


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint(
    step: Any, model: Any = "ft:gpt-4o-mini:org::abc:ckpt-step-{step}", **extra: Any
) -> dict[str, Any]:
    item = {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt_{step}",
        "created_at": 1_700_000_000 + (step if isinstance(step, int) else 0),
        "fine_tuning_job_id": "ftjob-abc",
        "fine_tuned_model_checkpoint": model.format(step=step) if isinstance(model, str) else model,
        "step_number": step,
        "metrics": {"step": step, "train_loss": 0.5, "valid_loss": 0.6, "full_valid_loss": 0.61},
    }
    item.update(extra)
    return item


def test_checkpoints_sorted_by_step_with_numeric_metrics() -> None:
    items = [checkpoint(300), checkpoint(100), checkpoint(200, metrics={"valid_loss": 0.4, "x": "junk"})]
    result = checkpoints_from_api(items)
    assert [c.step for c in result] == [100, 200, 300]
    assert result[0] == CheckpointInfo(
        step=100,
        model="ft:gpt-4o-mini:org::abc:ckpt-step-100",
        metrics={"step": 100.0, "train_loss": 0.5, "valid_loss": 0.6, "full_valid_loss": 0.61},
        created_at=1_700_000_100,
    )
    assert result[1].metrics == {"valid_loss": 0.4}


def test_malformed_checkpoints_are_skipped() -> None:
    items: list[Any] = [
        checkpoint(None),
        checkpoint("10"),
        checkpoint(True),
        checkpoint(-5),
        checkpoint(20, model=None),
        checkpoint(30, model=""),
        "junk",
        checkpoint(40, metrics="junk", created_at="yesterday"),
        checkpoint(50, metrics={"valid_loss": float("inf"), "train_loss": True, "ok": 1}),
    ]
    result = checkpoints_from_api(items)
    assert [(c.step, dict(c.metrics), c.created_at) for c in result] == [
        (40, {}, None),
        (50, {"ok": 1.0}, 1_700_000_050),
    ]
