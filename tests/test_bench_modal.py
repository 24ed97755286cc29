"""bench/modal.py's reading of an options answer: what the create form's file menu showed."""

from __future__ import annotations

import json

import pytest

from bench.modal import classify
from bot import modal


def body(options: object) -> bytes:
    return json.dumps({"options": options}).encode()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (body(modal.unavailable_options("OpenAI is slow to answer: type again to retry")), ("slow", 0)),
        (body(modal.unavailable_options("OpenAI couldn't list the files: try again later")), ("other", 0)),
        (body([{"text": {"type": "plain_text", "text": "a.jsonl"}, "value": "file-1"}] * 3), ("files", 3)),
        (body([{"text": {"type": "plain_text", "text": "odd"}, "value": "F123"}]), ("other", 1)),
        (body([]), ("other", 0)),
        (b"", ("other", 0)),
        (b"not json", ("other", 0)),
        (b"[1, 2]", ("other", 0)),
    ],
)
def test_classify(answer: bytes, expected: tuple[str, int]) -> None:
    assert classify(answer) == expected
