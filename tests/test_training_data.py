"""The training-file validator: each bad input gets its own clear problem, counts are exact, and
the report does not depend on how the bytes were chunked."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import tokens, training_data
from bot.training_data import (
    MAX_LINE_BYTES,
    TrainingFileValidator,
    ValidationReport,
    count_example_tokens,
    validate_bytes,
)

MODEL = "gpt-4o-mini-2024-07-18"


def example(user: str = "What is 2+2?", answer: str = "4", **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }


def jsonl(examples: list[Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in examples)


def good(n: int = 60) -> list[dict[str, Any]]:
    return [example(f"question {i}", f"answer {i}") for i in range(n)]


def check(data: bytes, **kwargs: Any) -> ValidationReport:
    kwargs.setdefault("filename", "train.jsonl")
    kwargs.setdefault("model", MODEL)
    return validate_bytes(data, **kwargs)


def kinds(report: ValidationReport) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {p.kind: (p.count, p.lines) for p in report.problems}


def with_line(bad: Any, at: int = 12, total: int = 60) -> bytes:
    rows: list[Any] = good(total)
    rows[at - 1] = bad
    return jsonl(rows)


# ------------------------------------------------------------------------------------------ good files


def test_a_good_file_is_ok_with_exact_counts() -> None:
    rows = good(60)
    report = check(jsonl(rows))
    assert report.ok and report.problems == () and report.examples == 60
    encode = tokens.get_encoding("o200k_base").encode_ordinary
    expected = [count_example_tokens(r["messages"], encode) for r in rows]
    assert report.tokens is not None
    assert report.tokens.total == sum(expected) and report.tokens.examples == 60
    assert report.tokens.min == min(expected) and report.tokens.max == max(expected)
    assert report.tokens.billed_per_epoch == sum(expected)
    assert report.encoding == "o200k_base"


def test_known_count_for_one_example() -> None:
    # 3 + (3 + "user" 1 + "hello world" 2) + (3 + "assistant" 1 + "hi" 1) = 14 with o200k_base.
    line = {"messages": [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "hi"}]}
    report = check(jsonl([line] * 10))
    assert report.tokens is not None and report.tokens.min == report.tokens.max == 14
    cl100k = check(jsonl([line] * 10), model="gpt-3.5-turbo-0125")
    assert cl100k.encoding == "cl100k_base" and cl100k.tokens is not None and cl100k.tokens.max == 14


def test_name_adds_one_token_and_endoftext_is_plain_text() -> None:
    line = {
        "messages": [
            {"role": "user", "content": "<|endoftext|> is text here", "name": "bob"},
            {"role": "assistant", "content": "hi"},
        ]
    }
    report = check(jsonl([line] * 10))
    # 3 + (3 + 1 + 10 + name 1 + 1) + (3 + 1 + 1) = 24
    assert report.ok and report.tokens is not None and report.tokens.max == 24


def test_crlf_bom_blank_lines_are_warnings() -> None:
    data = b"\xef\xbb\xbf" + jsonl(good(60)).replace(b"\n", b"\r\n") + b"\r\n\n"
    report = check(data)
    assert report.ok
    found = kinds(report)
    assert found["bom"] == (1, (1,))
    assert found["crlf"][0] == 61 and found["crlf"][1] == (1, 2, 3, 4, 5)
    assert found["blank_line"] == (2, (61, 62))
    assert all(p.severity == "warning" for p in report.problems)


def test_tool_calls_weights_and_content_parts_are_accepted() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    rich = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "assistant", "tool_calls": [call], "weight": 0},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "content": "It is 42.", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "parallel_tool_calls": False,
    }
    report = check(jsonl([rich] * 60))
    assert report.ok, report.problems
    assert report.tokens is not None and report.tokens.min > 20


def test_fewer_than_fifty_examples_is_a_warning() -> None:
    report = check(jsonl(good(12)))
    assert report.ok and kinds(report) == {"few_examples": (1, ())}


def test_over_context_is_flagged_and_billing_capped(monkeypatch: Any) -> None:
    monkeypatch.setattr("bot.training_data.DEFAULT_TRAINING_CONTEXT", 30)
    rows = good(60)
    rows[4] = example("word " * 100)
    report = check(jsonl(rows), model="gpt-4.1-2025-04-14")
    assert report.tokens is not None and report.tokens.over_context == 1
    assert report.tokens.over_context_lines == (5,)
    assert kinds(report)["over_context"] == (1, (5,))
    assert report.ok  # truncated, not refused
    assert report.tokens.billed_per_epoch < report.tokens.total


# ------------------------------------------------------------------------------------------ bad files


def test_empty_file() -> None:
    for data in (b"", b"\n\n  \n"):
        report = check(data)
        assert not report.ok and "empty_file" in kinds(report)


def test_json_array() -> None:
    report = check(json.dumps(good(20), indent=2).encode())
    assert not report.ok and list(kinds(report)) == ["json_array"]
    assert "JSON array" in report.problems[0].message


def test_blank_lines_before_a_json_array_do_not_hide_it_whatever_the_chunks() -> None:
    for chunk_size in (1, 2, 1 << 20):
        report = check(b"\n\n[1, 2]\n", chunk_size=chunk_size)
        assert list(kinds(report)) == ["json_array"]


def test_csv() -> None:
    report = check(b"prompt,completion\nhello,world\n" * 20)
    assert list(kinds(report)) == ["csv"] and "CSV" in report.problems[0].message


def test_png_and_zip() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    assert list(kinds(check(png))) == ["binary_file"]
    assert "PNG" in check(png).problems[0].message
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train.jsonl", jsonl(good(20)))
    report = check(buffer.getvalue())
    assert list(kinds(report)) == ["binary_file"] and "zip" in report.problems[0].message


def test_invalid_utf8_names_the_line() -> None:
    report = check(with_line(None, 12).replace(b"null", b'{"messages": "\xff\xfe"}'))
    assert not report.ok and kinds(report)["invalid_utf8"] == (1, (12,))


def test_invalid_json_and_non_objects() -> None:
    data = jsonl(good(60)).replace(b"\n", b"\n{broken\n", 1) + b"[1, 2]\n"
    found = kinds(check(data))
    assert found["invalid_json"] == (1, (2,))
    assert found["not_object"] == (1, (62,))


def test_one_giant_line_is_refused_without_buffering_it() -> None:
    validator = TrainingFileValidator(filename="train.jsonl", model=MODEL)
    validator.feed(jsonl(good(30)))
    validator.feed(b'{"messages": "')
    piece = b"x" * (1024 * 1024)
    for _ in range(MAX_LINE_BYTES // len(piece) + 2):
        validator.feed(piece)
        assert len(validator._pending) <= MAX_LINE_BYTES + len(piece)
    validator.feed(b'"}\n' + jsonl(good(30)))
    report = validator.finish()
    assert kinds(report)["line_too_long"] == (1, (31,))
    assert report.tokens is not None and report.tokens.examples == 60


def test_missing_assistant_bad_weight_bad_tool_call() -> None:
    no_assistant = {"messages": [{"role": "user", "content": "hi"}]}
    bad_weight = example()
    bad_weight["messages"][2]["weight"] = 0.5
    bad_call = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]},
        ]
    }
    rows: list[Any] = good(60)
    rows[2], rows[4], rows[6] = no_assistant, bad_weight, bad_call
    found = kinds(check(jsonl(rows)))
    assert found["missing_assistant"] == (1, (3,))
    assert found["bad_weight"] == (1, (5,))
    assert found["bad_tool_call"] == (1, (7,))


def test_roles_content_and_unknown_keys() -> None:
    rows: list[Any] = good(60)
    rows[0] = {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    rows[1] = {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}
    rows[2] = {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}
    rows[3] = example(extra_key=1)
    rows[4] = {"prompt": "a", "completion": "b"}
    rows[5] = {"messages": []}
    report = check(jsonl(rows))
    found = kinds(report)
    assert found["unknown_role"] == (1, (1,)) and '"bot"' in next(
        p.message for p in report.problems if p.kind == "unknown_role"
    )
    assert found["missing_content"] == (1, (2,))
    assert found["bad_content"] == (1, (3,))
    assert found["unknown_example_key"] == (1, (4,))
    assert found["legacy_format"] == (1, (5,))
    assert found["messages_not_list"] == (1, (6,))
    assert report.tokens is not None and report.tokens.examples == 55  # the others are not counted


def test_fewer_than_ten_examples_is_an_error() -> None:
    report = check(jsonl(good(3)))
    assert not report.ok and kinds(report)["too_few_examples"] == (1, ())
    assert "3 examples" in report.problems[0].message


def test_first_five_lines_and_the_full_count() -> None:
    rows: list[Any] = good(60)
    for i in range(0, 60, 3):
        rows[i] = {"messages": [{"role": "user", "content": "no answer"}]}
    assert kinds(check(jsonl(rows)))["missing_assistant"] == (20, (1, 4, 7, 10, 13))


def test_messages_quote_at_most_a_short_excerpt() -> None:
    secret = "A" * 500
    rows: list[Any] = good(60)
    rows[0] = {"messages": [{"role": secret, "content": "x"}, {"role": "assistant", "content": "y"}]}
    rows[1] = {
        "messages": [{"role": "user", "content": "x", secret: 1}, {"role": "assistant", "content": "y"}]
    }
    for problem in check(jsonl(rows)).problems:
        assert "A" * 41 not in problem.message


# ------------------------------------------------------------------------------------------ DPO


def dpo(i: int = 0) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"q{i}"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }


def test_dpo_good_and_bad_shapes() -> None:
    rows = [dpo(i) for i in range(60)]
    assert check(jsonl(rows), method="dpo").ok
    rows[0] = {**dpo(), "preferred_output": [{"role": "assistant", "content": "a"}] * 2}
    rows[1] = {k: v for k, v in dpo().items() if k != "non_preferred_output"}
    rows[2] = {**dpo(), "input": {"prompt": "x"}}
    rows[3] = {**dpo(), "preferred_output": [{"role": "user", "content": "a"}]}
    found = kinds(check(jsonl(rows), method="dpo"))
    assert found["dpo_bad_output"] == (3, (1, 2, 4))
    assert found["dpo_missing_input"] == (1, (3,))
    # A supervised file checked as DPO (and the reverse) says so.
    assert "dpo_missing_input" in kinds(check(jsonl(good(20)), method="dpo"))
    assert "missing_messages" in kinds(check(jsonl([dpo()] * 20)))


# ------------------------------------------------------------------------------------------ properties

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": _text})
_good_example = st.lists(_message, min_size=1, max_size=4).map(
    lambda ms: {"messages": [*ms, {"role": "assistant", "content": "ok"}]}
)
_bad_line = st.sampled_from(
    [
        b"{broken",
        b"[1]",
        b'"x"',
        b'{"messages": 3}',
        b'{"messages": [{"role": "user", "content": "x"}]}',
        b"\xff\xfe",
        b"",
        b"   ",
    ]
)


@st.composite
def files(draw: st.DrawFn) -> bytes:
    lines = [
        json.dumps(e, ensure_ascii=draw(st.booleans())).encode()
        for e in draw(st.lists(_good_example, max_size=25))
    ]
    for _ in range(draw(st.integers(0, 4))):
        lines.insert(draw(st.integers(0, len(lines))), draw(_bad_line))
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return ending.join(lines) + draw(st.sampled_from([b"", ending]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=files(), cuts=st.lists(st.integers(1, 400), max_size=8))
def test_the_report_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    whole = check(data, chunk_size=max(1, len(data)))
    validator = TrainingFileValidator(filename="train.jsonl", model=MODEL)
    position = 0
    for cut in cuts:
        validator.feed(data[position : position + cut])
        position += cut
    validator.feed(data[position:])
    assert validator.finish() == whole
    assert check(data, chunk_size=1) == whole


@settings(max_examples=40, deadline=None)
@given(st.lists(_good_example, min_size=10, max_size=30))
def test_good_files_pass_with_the_cookbook_count(rows: list[dict[str, Any]]) -> None:
    report = check(jsonl(rows))
    assert not report.errors
    encode = tokens.get_encoding("o200k_base").encode_ordinary
    assert report.tokens is not None
    assert report.tokens.total == sum(count_example_tokens(r["messages"], encode) for r in rows)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    report = check(data)
    assert report.bytes_read == len(data)
    assert report.ok == (not report.errors and report.examples >= 10)


# ------------------------------------------------------------------------------ fast path vs full path


def _refuse(raw: bytes) -> Any:
    raise msgspec.DecodeError("refused: the reference path parses with json")


def reference(data: bytes) -> ValidationReport:
    """The report with msgspec out of the way: every line decoded by `json` and fully checked."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_data, "_decode_any", _refuse)
        validator = TrainingFileValidator(filename="train.jsonl", model=MODEL)
        validator._fast = False
        validator.feed(data)
        return validator.finish()


_any_role = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot", 7])
_content = st.one_of(
    _text,
    st.none(),
    st.integers(-1, 2),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}), max_size=2),
)
_extras = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(_text, st.integers()),
        "weight": st.sampled_from([0, 1, 2, 1.0, True]),
        "tool_call_id": _text,
        "surprise": st.just(1),
    },
)
_any_message = st.one_of(
    st.builds(
        lambda role, content, extra: {"role": role, "content": content, **extra}, _any_role, _content, _extras
    ),
    st.fixed_dictionaries({"content": _text}),
    st.just("not a message"),
)
_any_example = st.one_of(
    _good_example,
    st.builds(lambda ms: {"messages": ms}, st.lists(_any_message, max_size=4)),
    st.builds(lambda ms: {"messages": ms, "extra": 1}, st.lists(_message, max_size=3)),
    st.fixed_dictionaries({"prompt": _text, "completion": _text}),
)
# Lines where json and msgspec part ways (NaN, 1e400, lone surrogates, big integers) or where the
# last of duplicate keys wins; and lines msgspec's fast shape would accept but that carry a warning.
_tricky_line = st.sampled_from(
    [
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\ud800"}]}',
        b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\udc00 x"}]}',
        b'{"messages": [{"role": "assistant", "content": "a", "weight": NaN}]}',
        b'{"messages": [{"role": "assistant", "content": "a", "weight": 1e400}]}',
        b'{"messages": [{"role": "assistant", "content": "a", "weight": 123456789012345678901234567890}]}',
        b'{"messages": [{"role": "assistant", "content": "a", "content": 3}]}',
        b'{"messages": [{"role": "assistant", "content": 3, "content": "a"}]}',
        b'{"messages": 3, "messages": [{"role": "assistant", "content": "a"}]}',
        b'{"messages": [{"role": "assistant", "content": "a"}]}\r',
        b'\xef\xbb\xbf{"messages": [{"role": "assistant", "content": "a"}]}',
        b'  {"messages": [{"role": "assistant", "content": "a"}]}  ',
        b'{"messages": [{"role": "assistant", "content": "a"}]} {"messages": []}',
        b'{"messages": [{"role": "us\\u0065r", "content": "a"}, {"role": "assistant", "content": "b"}]}',
        b'{"messages": [{"role": "assistant", "content": "\xff"}]}',
    ]
)


@st.composite
def mixed_files(draw: st.DrawFn) -> bytes:
    lines = [
        json.dumps(e, ensure_ascii=draw(st.booleans())).encode()
        for e in draw(st.lists(_any_example, max_size=15))
    ]
    for _ in range(draw(st.integers(0, 4))):
        lines.insert(draw(st.integers(0, len(lines))), draw(_tricky_line))
    return b"\n".join(lines) + b"\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_files())
def test_the_fast_path_reports_exactly_what_the_full_path_does(data: bytes) -> None:
    assert check(data) == reference(data)


def test_an_escaped_lone_surrogate_is_reported_not_a_crash() -> None:
    bad = b'{"messages": [{"role": "user", "content": "\\ud83e"}, {"role": "assistant", "content": "x"}]}'
    report = check(with_line(None, 12).replace(b"null", bad))
    assert kinds(report)["invalid_utf8"] == (1, (12,))
    assert "\\ud83e" in next(p.message for p in report.problems if p.kind == "invalid_utf8")
    assert report.tokens is not None and report.tokens.examples == 59


def test_numbers_msgspec_refuses_get_json_verdicts() -> None:
    start = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight":'
    for weight, shown in ((b"NaN", '"NaN"'), (b"1e400", '"Infinity"'), (b"12345678901234567890123", None)):
        report = check(with_line(None, 12).replace(b"null", start + weight + b"}]}"))
        assert kinds(report)["bad_weight"] == (1, (12,))
        if shown:
            assert shown in next(p.message for p in report.problems if p.kind == "bad_weight")


def test_prepare_is_optional_and_changes_no_count() -> None:
    data = jsonl(good(60))
    before = check(data)
    training_data.prepare(MODEL)
    training_data.prepare(MODEL)
    assert check(data) == before
