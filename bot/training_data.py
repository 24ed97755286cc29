"""Check a fine-tuning JSONL file before it is uploaded, and count its tokens exactly, offline.

Pure apart from reading the vendored vocabulary: bytes in (fed in chunks of any size, as a download
streams), a `ValidationReport` out. Memory stays flat whatever the file's size: one line at a time
(never more than MAX_LINE_BYTES of one), a bounded number of examples waiting for their token count,
and one 4-byte count per example.

The checks are those of OpenAI's cookbook notebook (examples/Chat_finetuning_data_prep.ipynb) and
more: what a file must look like for `POST /fine_tuning/jobs` to accept it, so that a broken file is
caught here in seconds rather than by a job that fails after queueing. Token counts follow the
cookbook's formula (3 per message + each value encoded + 1 per name + 3 per example) with the
model's own encoding (o200k_base for current models, where the cookbook still says cl100k_base).

Speed (bench/validate.py): the common line shape is decoded and checked by msgspec in C, every other
line by the full Python checks; tokens are counted in worker threads, a batch per tokenizer call.
The tokenizer itself is what bounds the throughput now.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import msgspec

from bot import tokens

Severity = Literal["error", "warning"]

MIN_EXAMPLES = 10  # the API refuses fewer
RECOMMENDED_EXAMPLES = 50  # OpenAI's guide: 50 to 100 well-crafted examples is the usual start
# Larger than any sane example (65,536 tokens is ~260 KB of text) with room for a few base64 images,
# small enough that one line never costs much memory: anything longer is refused unread.
MAX_LINE_BYTES = 8 * 1024 * 1024
FIRST_LINES = 5  # line numbers kept per problem kind
EXCERPT_CHARS = 40  # longest piece of file content a message may quote

# Training context per base model: an example longer than this is truncated by OpenAI.
# gpt-4o-mini-2024-07-18: 65,536 (OpenAI's fine-tuning guide, FACTS-interactive §11, 2nd-hand);
# gpt-3.5-turbo: 16,385 (the cookbook's MAX_TOKENS_PER_EXAMPLE).
TRAINING_CONTEXT_TOKENS: dict[str, int] = {
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-4o-mini": 65_536,
    "gpt-3.5-turbo": 16_385,
}
# gpt-4o-2024-08-06 and the gpt-4.1 family are unconfirmed: their sibling's 65,536 is assumed. Lower
# would flag more examples, but would also understate the billed tokens (capped at the context).
DEFAULT_TRAINING_CONTEXT = 65_536

SUPERVISED_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# A {"role", "content"} message with one of these roles and string content needs no other check.
_SIMPLE_ROLES = frozenset({"system", "developer", "user", "assistant"})
_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
)
_EXAMPLE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
_DPO_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
_DPO_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
_CONTENT_PART_TYPES = frozenset({"text", "image_url"})
# Content that repeats across examples (system prompts, tool definitions) is counted once.
_CACHE_ROLES = frozenset({"system", "developer"})
_CACHE_ENTRIES = 256
_CACHE_MAX_CHARS = 32_768

# Token counting runs in worker threads (tiktoken releases the GIL) while this thread parses the
# next lines; batches bound how many examples wait, so memory stays flat.
_BATCH_EXAMPLES = 1024
_BATCH_CHARS = 1_000_000
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_IN_FLIGHT = 2 * _WORKERS

_BOM = b"\xef\xbb\xbf"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a zip archive (or an .xlsx/.docx file)"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


# The shape nearly every supervised line has, decoded and checked in C by msgspec in one call: an
# object with only "messages", each message only a simple role and string content. A line msgspec
# accepts this way is one the full check below accepts with the same strings (both take the last of
# duplicate keys); anything else (an error, a warning, a name, a weight, tools, content parts) takes
# the full path, which stays the reference for every problem reported.
class _FastMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class _FastExample(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    messages: list[_FastMessage]


_decode_fast = msgspec.json.Decoder(_FastExample).decode
# The full path's parser: msgspec's strict RFC 8259 parser, about twice json's speed. What it
# refuses (NaN, Infinity, 1e400, lone surrogate escapes, invalid UTF-8, broken JSON) goes to `json`,
# whose verdict and messages stay those reported.
_decode_any = msgspec.json.Decoder().decode
_DecodeErrors = (msgspec.DecodeError, msgspec.ValidationError)

# What each problem means and what would work. Messages that quote the file get their excerpt
# (≤ EXCERPT_CHARS) from the first occurrence.
_KINDS: dict[str, tuple[Severity, str]] = {
    "empty_file": ("error", "The file is empty: put one JSON object (one training example) on each line."),
    "binary_file": (
        "error",
        "Not JSONL: the file is {detail}. Upload a .jsonl text file, one example per line.",
    ),
    "utf16": ("error", "Not JSONL: the file is UTF-16 text. Save it as UTF-8."),
    "json_array": (
        "error",
        "Not JSONL: the file is one JSON array (it starts with `[`). Put each example on its own line "
        "as a JSON object, with no surrounding brackets and no commas between lines.",
    ),
    "csv": (
        "error",
        "Not JSONL: the first line looks like CSV ({detail}). Convert each row to a JSON object with a "
        '"messages" list, one object per line.',
    ),
    "not_jsonl": (
        "error",
        "Not JSONL: the first line is not a JSON object (it starts with {detail}). Each line must be "
        'one JSON object such as {{"messages": [...]}}.',
    ),
    "too_few_examples": ("error", "{detail}: OpenAI requires at least 10. Add more examples."),
    "few_examples": (
        "warning",
        "{detail}: that is accepted, but 50 to 100 good examples is the usual starting point.",
    ),
    "bom": ("warning", "The file starts with a byte-order mark (BOM); it is skipped here."),
    "crlf": ("warning", "Windows line ends (CRLF); they are tolerated."),
    "blank_line": ("warning", "Blank lines are skipped; remove them to be safe."),
    "line_too_long": (
        "error",
        f"A line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB: each example must be one line, "
        "and no example needs to be that long.",
    ),
    "invalid_utf8": ("error", "Not valid UTF-8 ({detail}). Save the file as UTF-8."),
    "invalid_json": ("error", "Not valid JSON ({detail}). Each line must be one complete JSON object."),
    "not_object": (
        "error",
        'The line is {detail}, not a JSON object. Each line must be {{"messages": [...]}}.',
    ),
    "legacy_format": (
        "error",
        'prompt/completion pairs are the legacy format; chat models need {{"messages": [{{"role": "user", '
        '...}}, {{"role": "assistant", ...}}]}}.',
    ),
    "missing_messages": ("error", 'No "messages" list. Each example needs {{"messages": [...]}}.'),
    "messages_not_list": ("error", '"messages" must be a non-empty list of message objects.'),
    "message_not_object": ("error", "A message is {detail}, not an object with a role and content."),
    "missing_role": ("error", 'A message has no "role". Use system, developer, user, assistant or tool.'),
    "unknown_role": ("error", "Unknown role {detail}. Use system, developer, user, assistant or tool."),
    "missing_content": (
        "error",
        'A message has no "content". Only an assistant message that makes tool_calls may leave it out.',
    ),
    "bad_content": (
        "error",
        '"content" must be a string or a list of parts like {{"type": "text", "text": "..."}} ({detail}).',
    ),
    "bad_weight": ("error", '"weight" must be 0 or 1 (got {detail}).'),
    "weight_not_assistant": ("error", '"weight" is only allowed on assistant messages.'),
    "bad_tool_call": (
        "error",
        'A malformed tool call ({detail}). Each needs "id", "type": "function" and "function" with '
        '"name" and "arguments" (a JSON string).',
    ),
    "bad_function_call": (
        "error",
        'A malformed function_call ({detail}). It needs "name" and "arguments" (a JSON string).',
    ),
    "bad_tools": (
        "error",
        '"tools" must be a list of {{"type": "function", "function": {{"name": ...}}}} ({detail}).',
    ),
    "missing_assistant": (
        "error",
        "No assistant message: the model learns from assistant messages, so each example needs one.",
    ),
    "unknown_example_key": ("warning", "Unknown key {detail} in an example; it is ignored by this check."),
    "unknown_message_key": ("warning", "Unknown key {detail} in a message; it is ignored by this check."),
    "dpo_missing_input": (
        "error",
        'DPO examples need "input": {{"messages": [...]}} (the conversation so far, no answer).',
    ),
    "dpo_bad_output": (
        "error",
        "{detail} must be a list of exactly one assistant message. DPO examples need both "
        '"preferred_output" and "non_preferred_output".',
    ),
    "over_context": (
        "warning",
        "Examples longer than the model's training context ({detail} tokens) are truncated; shorten or "
        "split them.",
    ),
}


@dataclass(frozen=True)
class ProblemSummary:
    kind: str
    severity: Severity
    count: int  # lines with this problem (or 1 for a problem with the whole file)
    lines: tuple[int, ...]  # the first few (1-based); empty for a problem with the whole file
    message: str  # plain text: what is wrong and what would work; may quote ≤ 40 chars of the file


@dataclass(frozen=True)
class TokenStats:
    examples: int  # examples counted (those without errors)
    total: int
    min: int
    median: int
    p90: int
    max: int
    billed_per_epoch: int  # sum of min(context, tokens): what one epoch costs
    over_context: int
    over_context_lines: tuple[int, ...]


@dataclass(frozen=True)
class ValidationReport:
    filename: str
    method: str
    model: str
    encoding: str
    bytes_read: int
    examples: int  # non-blank lines: each one is meant to be an example
    problems: tuple[ProblemSummary, ...]  # errors first, then warnings, each in the order first seen
    tokens: TokenStats | None  # None when nothing could be counted

    @property
    def errors(self) -> tuple[ProblemSummary, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[ProblemSummary, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        return not self.errors and self.examples >= MIN_EXAMPLES


def training_context_tokens(model: str) -> int:
    base = tokens.base_model(model)
    if base in TRAINING_CONTEXT_TOKENS:
        return TRAINING_CONTEXT_TOKENS[base]
    # A dated snapshot of a listed model (gpt-3.5-turbo-0125) has its context.
    for name in sorted(TRAINING_CONTEXT_TOKENS, key=len, reverse=True):
        if base.startswith(name):
            return TRAINING_CONTEXT_TOKENS[name]
    return DEFAULT_TRAINING_CONTEXT


def excerpt(value: Any) -> str:
    """At most EXCERPT_CHARS of something from the file, quoted, on one line."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return f'"{text}"'


def _kind_of(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "an object"
    return type(value).__name__  # pragma: no cover - json.loads makes nothing else


class _Problem:
    __slots__ = ("count", "kind", "lines", "message", "severity")

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.severity, _ = _KINDS[kind]
        self.message = message
        self.count = 0
        self.lines: list[int] = []


# One example waiting for its count: (line number, fixed tokens, strings to encode, cacheable strings).
_Pending = tuple[int, int, list[str], list[str]]


@cache
def _executor() -> ThreadPoolExecutor:
    # One per process, shared by every validation: threads are cheap to keep and slow to churn.
    return ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="token-count")


class _Counter:
    """Counts examples' tokens in worker threads, in order, with a bounded number in flight.

    A batch of examples is counted in ONE tokenizer call: its strings joined with `<|endoftext|>`
    between strings and `<|endofprompt|>` between examples, both allowed as special tokens. tiktoken
    encodes the text between special tokens independently, so each string's count is exactly its
    `encode_ordinary` count, and the separators are single tokens that are subtracted. One long
    call releases the GIL for its whole length; thousands of short ones would fight over it. A batch
    whose text already holds either marker (seen as more marker tokens than were put in) is counted
    string by string instead.
    """

    def __init__(self, encoding_name: str) -> None:
        self.encoding = tokens.get_encoding(encoding_name)
        self._encode = self.encoding.encode_ordinary
        self._string_sep = self.encoding.encode_single_token(tokens.ENDOFTEXT)
        self._example_sep = self.encoding.encode_single_token(tokens.ENDOFPROMPT)
        self._separators = {tokens.ENDOFTEXT, tokens.ENDOFPROMPT}
        self._cache: dict[str, int] = {}
        self._batch: list[_Pending] = []
        self._batch_chars = 0
        self._in_flight: deque[Future[list[tuple[int, int]]]] = deque()
        self.results: list[tuple[int, int]] = []  # drained by the validator as they arrive
        self.role_tokens = {role: len(self._encode(role)) for role in SUPERVISED_ROLES}

    def add(self, line: int, fixed: int, strings: list[str], cached: list[str]) -> None:
        self._batch.append((line, fixed, strings, cached))
        self._batch_chars += sum(map(len, strings))
        if len(self._batch) >= _BATCH_EXAMPLES or self._batch_chars >= _BATCH_CHARS:
            self._submit()

    def _count_cached(self, text: str) -> int:
        found = self._cache.get(text)
        if found is None:
            # ordinary: `<|endoftext|>` inside training text is text, and `encode` would refuse it.
            found = len(self._encode(text))
            # Races between workers only mean a string is counted twice; dict updates are atomic.
            if len(self._cache) < _CACHE_ENTRIES and len(text) <= _CACHE_MAX_CHARS:
                self._cache[text] = found
        return found

    def _run(self, batch: list[_Pending]) -> list[tuple[int, int]]:
        string_sep, example_sep = tokens.ENDOFTEXT, tokens.ENDOFPROMPT
        text = example_sep.join([string_sep.join(strings) for _, _, strings, _ in batch])
        inner = [max(len(strings) - 1, 0) for _, _, strings, _ in batch]
        import numpy  # here, not at the top: the bot's idle process never loads it (~15 MB)

        ids = self.encoding.encode_to_numpy(text, allowed_special=self._separators, disallowed_special=())
        ends = numpy.flatnonzero(ids == self._example_sep)
        # A marker written in the file's own text comes out as one more marker token (no special token
        # can straddle a marker: none holds "<|" or "|>" but at its ends). Counted on the tokens
        # rather than searched in the text, which would cost a pass over it holding the GIL.
        if len(ends) != len(batch) - 1 or numpy.count_nonzero(ids == self._string_sep) != sum(inner):
            return self._run_one_by_one(batch)
        lengths = numpy.diff(ends, prepend=-1, append=len(ids)) - 1  # tokens between the markers
        count = self._count_cached
        return [
            (line, fixed + int(length) - separators + sum(map(count, cached)))
            for (line, fixed, _, cached), length, separators in zip(batch, lengths, inner, strict=True)
        ]

    def _run_one_by_one(self, batch: list[_Pending]) -> list[tuple[int, int]]:
        encode, count = self._encode, self._count_cached
        return [
            (line, fixed + sum(len(encode(s)) for s in strings) + sum(map(count, cached)))
            for line, fixed, strings, cached in batch
        ]

    def _submit(self) -> None:
        batch, self._batch, self._batch_chars = self._batch, [], 0
        if not batch:
            return
        if _WORKERS == 1:
            self.results.extend(self._run(batch))
            return
        while len(self._in_flight) >= _IN_FLIGHT:
            self.results.extend(self._in_flight.popleft().result())
        self._in_flight.append(_executor().submit(self._run, batch))

    def finish(self) -> None:
        self._submit()
        while self._in_flight:
            self.results.extend(self._in_flight.popleft().result())


class TrainingFileValidator:
    """Feed the file's bytes in chunks of any size, then `finish()` for the report."""

    def __init__(self, *, filename: str, method: str = "supervised", model: str) -> None:
        if method not in ("supervised", "dpo"):
            raise ValueError(f"method must be supervised or dpo, not {method!r}")
        self.filename = filename
        self.method = method
        self.model = model
        self.encoding_name = tokens.encoding_name_for_model(model)
        self.context = training_context_tokens(model)
        self._counter = _Counter(self.encoding_name)
        self._fast = method == "supervised"
        # 3 per message plus its role's own tokens (the cookbook's formula, as in `_fixed_tokens`).
        self._message_tokens = {role: 3 + n for role, n in self._counter.role_tokens.items()}
        self._problems: dict[str, _Problem] = {}
        self._line_kinds: set[str] = set()
        self._line = 0
        self._examples = 0
        self._bytes = 0
        self._pending = b""
        self._skipping = False  # inside a line longer than MAX_LINE_BYTES: dropped until its end
        self._head = b""  # the first bytes, to recognise a file that is not JSONL at all
        self._sniffed = False
        self._refused = False  # not JSONL: the rest is not looked at
        self._counts = array("I")
        self._over_lines: list[int] = []
        self._over = 0
        self._billed = 0
        self._finished = False

    # -------------------------------------------------------------------------------- problems

    def _add(self, kind: str, detail: str = "", line: int | None = None) -> None:
        """Record `kind` for `line` (default: the current line), once per line."""
        line = self._line if line is None else line
        if line:
            key = kind
            if key in self._line_kinds:
                return
            self._line_kinds.add(key)
        problem = self._problems.get(kind)
        if problem is None:
            problem = self._problems[kind] = _Problem(kind, _KINDS[kind][1].format(detail=detail))
        problem.count += 1
        if line and len(problem.lines) < FIRST_LINES:
            problem.lines.append(line)

    def _file_problem(self, kind: str, detail: str = "") -> None:
        self._add(kind, detail, line=0)

    # -------------------------------------------------------------------------------- reading

    def feed(self, chunk: bytes) -> None:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not chunk:
            return
        self._bytes += len(chunk)
        if not self._sniffed:
            self._head += chunk[: 4096 - len(self._head)]
            # Judged once the first line with content is whole (blank lines before it say nothing),
            # and no line is taken before: the verdict must not depend on where the chunks break.
            if len(self._head) >= 4096 or b"\n" in self._head.removeprefix(_BOM).lstrip():
                self._sniff()
            else:
                self._pending += chunk  # all of the file so far: less than 4096 bytes
                return
        self._take_data(chunk)

    def _take_data(self, chunk: bytes) -> None:
        if self._refused:
            return
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                return
            self._skipping = False
            chunk = chunk[end + 1 :]
        data = self._pending + chunk if self._pending else chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        for raw in lines:
            if self._refused:
                return
            self._take_line(raw)
        if len(self._pending) > MAX_LINE_BYTES:
            self._start_line()
            self._examples += 1
            self._add("line_too_long")
            self._pending, self._skipping = b"", True

    def _sniff(self) -> None:
        """Whole-file verdicts from the first bytes: a binary file, UTF-16, a JSON array."""
        self._sniffed = True
        head = self._head
        for signature, what in _SIGNATURES:
            if head.startswith(signature):
                return self._refuse("binary_file", what)
        if head.startswith(_UTF16_BOMS):
            return self._refuse("utf16")
        if head.removeprefix(_BOM).lstrip().startswith(b"["):
            return self._refuse("json_array")
        return None

    def _refuse(self, kind: str, detail: str = "") -> None:
        self._file_problem(kind, detail)
        self._refused = True
        self._pending = b""

    def _start_line(self) -> None:
        self._line += 1
        self._line_kinds = set()

    def _take_line(self, raw: bytes) -> None:
        self._start_line()
        # CR and length are a warning and an error of their own, left to the full path (as is a BOM,
        # which msgspec refuses).
        if self._fast and len(raw) <= MAX_LINE_BYTES and not raw.endswith(b"\r"):
            try:
                example = _decode_fast(raw)
            except _DecodeErrors:
                pass
            else:
                if self._take_fast(example):
                    return
        if raw.endswith(b"\r"):
            raw = raw[:-1]
            self._add("crlf")
        if self._line == 1 and raw.startswith(_BOM):
            raw = raw[3:]
            self._add("bom")
        if not raw.strip():
            self._add("blank_line")
            return
        self._examples += 1
        if len(raw) > MAX_LINE_BYTES:
            self._add("line_too_long")
            return
        try:
            value = _decode_any(raw)
        except _DecodeErrors:
            value = self._decode_lenient(raw)
            if value is None:
                return
        if not isinstance(value, dict):
            self._add("not_object", _kind_of(value))
            return
        if self.method == "dpo":
            self._check_dpo(value)
        else:
            self._check_supervised(value)

    def _decode_lenient(self, raw: bytes) -> Any:
        """What `json` makes of a line msgspec refused: the problem recorded and None, or the value."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            self._add("invalid_utf8", f"byte {error.start + 1} of the line")
            return None
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as error:
            if self._line == 1 and self._first_line_not_json(text):
                return None
            detail = (
                f"{error.msg} at column {error.colno}"
                if isinstance(error, json.JSONDecodeError)
                else "too deep"
            )
            self._add("invalid_json", detail)
            return None
        try:
            # `json` accepts an escaped lone surrogate ("\ud800"), which no UTF-8 text can hold:
            # OpenAI cannot read it, and the tokenizer would raise on it.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            self._add("invalid_utf8", f"an escaped lone surrogate \\u{ord(error.object[error.start]):04x}")
            return None
        return value

    def _take_fast(self, example: _FastExample) -> bool:
        """Count a line of the common shape; False (nothing recorded) when it needs the full check."""
        messages = example.messages
        strings: list[str] = []
        cached: list[str] = []
        fixed = 3
        assistant = False
        costs = self._message_tokens
        for message in messages:
            role = message.role
            fixed += costs[role]
            if role == "assistant":
                assistant = True
                strings.append(message.content)
            elif role in _CACHE_ROLES:
                cached.append(message.content)
            else:
                strings.append(message.content)
        if not assistant:  # also an empty list: both are errors
            return False
        self._examples += 1
        self._counter.add(self._line, fixed, strings, cached)
        self._drain()
        return True

    def _first_line_not_json(self, text: str) -> bool:
        """A first line that is not JSON at all means the whole file is something else."""
        stripped = text.lstrip()
        if stripped.startswith("{"):
            return False  # a JSONL file with a broken first line: report it like any other line
        first = stripped.split("\n", 1)[0]
        if "," in first or "\t" in first:
            self._refuse("csv", f"first line {excerpt(first)}")
        else:
            self._refuse("not_jsonl", excerpt(first))
        return True

    # -------------------------------------------------------------------------------- checks

    def _check_supervised(self, example: dict[str, Any]) -> None:
        if "messages" not in example:
            if "prompt" in example or "completion" in example:
                self._add("legacy_format")
            else:
                self._add("missing_messages")
            return
        self._unknown_keys(example, _EXAMPLE_KEYS, "unknown_example_key")
        messages = example["messages"]
        strings: list[str] = []
        cached: list[str] = []
        fixed = 3  # every reply is primed with <|start|>assistant<|message|>
        ok = self._check_messages(messages, strings, cached)
        if ok:
            fixed += self._fixed_tokens(messages)
            if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
                self._add("missing_assistant")
                ok = False
        ok = self._check_tools(example, cached) and ok
        if ok:
            self._counter.add(self._line, fixed, strings, cached)
            self._drain()

    def _check_dpo(self, example: dict[str, Any]) -> None:
        self._unknown_keys(example, _DPO_KEYS, "unknown_example_key")
        strings: list[str] = []
        cached: list[str] = []
        ok = True
        fixed = 3
        given = example.get("input")
        if not isinstance(given, dict) or "messages" not in given:
            self._add("dpo_missing_input")
            ok = False
        else:
            self._unknown_keys(given, _DPO_INPUT_KEYS, "unknown_example_key")
            if self._check_messages(given["messages"], strings, cached):
                fixed += self._fixed_tokens(given["messages"])
            else:
                ok = False
            ok = self._check_tools(given, cached) and ok
        for key in ("preferred_output", "non_preferred_output"):
            output = example.get(key)
            if (
                not isinstance(output, list)
                or len(output) != 1
                or not isinstance(output[0], dict)
                or output[0].get("role") != "assistant"
            ):
                self._add("dpo_bad_output", f'"{key}"')
                ok = False
            elif self._check_messages(output, strings, cached):
                # Both answers are billed: each is trained against the same input.
                fixed += self._fixed_tokens(output)
            else:
                ok = False
        if ok:
            self._counter.add(self._line, fixed, strings, cached)
            self._drain()

    def _unknown_keys(self, obj: Mapping[str, Any], known: frozenset[str], kind: str) -> None:
        for key in obj:
            if key not in known:
                self._add(kind, excerpt(key))
                return

    def _fixed_tokens(self, messages: list[dict[str, Any]]) -> int:
        # 3 per message, 1 more per name (the cookbook's formula), and the role's own tokens, which
        # the cookbook encodes like any other value: counted here without asking the tokenizer.
        role_tokens = self._counter.role_tokens
        return sum(3 + role_tokens[m["role"]] + ("name" in m) for m in messages)

    def _check_messages(self, messages: Any, strings: list[str], cached: list[str]) -> bool:
        """Check each message and collect the strings whose tokens count; False on any error."""
        if not isinstance(messages, list) or not messages:
            self._add("messages_not_list")
            return False
        ok = True
        for message in messages:
            # The shape nearly every message has, checked in a few dictionary lookups: validation
            # runs on the parsing thread, which is what bounds the speed on a machine with few cores.
            if type(message) is dict and len(message) == 2:
                content, role = message.get("content"), message.get("role")
                if type(content) is str and role in _SIMPLE_ROLES:
                    (cached if role in _CACHE_ROLES else strings).append(content)
                    continue
            if not isinstance(message, dict):
                self._add("message_not_object", _kind_of(message))
                ok = False
                continue
            ok = self._check_message(message, strings, cached) and ok
        return ok

    def _check_message(self, message: dict[str, Any], strings: list[str], cached: list[str]) -> bool:
        ok = True
        for key in message:
            if key not in _MESSAGE_KEYS:
                self._add("unknown_message_key", excerpt(key))
                break
        role = message.get("role")
        if role is None:
            self._add("missing_role")
            return False
        if not isinstance(role, str) or role not in SUPERVISED_ROLES:
            self._add("unknown_role", excerpt(role))
            return False
        calls = role == "assistant" and ("tool_calls" in message or "function_call" in message)
        content = message.get("content")
        into = cached if role in _CACHE_ROLES else strings
        if isinstance(content, str):
            into.append(content)
        elif isinstance(content, list):
            ok = self._check_parts(content, into) and ok
        elif content is None and calls:
            pass
        elif content is None:
            self._add("missing_content")
            ok = False
        else:
            self._add("bad_content", f"got {_kind_of(content)}")
            ok = False
        if "weight" in message:
            weight = message["weight"]
            if isinstance(weight, bool) or weight not in (0, 1):
                self._add("bad_weight", excerpt(weight))
                ok = False
            elif role != "assistant":
                self._add("weight_not_assistant")
                ok = False
        name = message.get("name")
        if name is not None:
            if isinstance(name, str):
                strings.append(name)
            else:
                self._add("bad_content", '"name" must be a string')
                ok = False
        if "tool_calls" in message:
            ok = self._check_tool_calls(message["tool_calls"], role, strings) and ok
        if "function_call" in message:
            ok = self._check_function_call(message["function_call"], role, strings) and ok
        for key in ("tool_call_id", "refusal"):
            value = message.get(key)
            if isinstance(value, str):
                strings.append(value)
        return ok

    def _check_parts(self, parts: list[Any], into: list[str]) -> bool:
        if not parts:
            self._add("bad_content", "an empty list")
            return False
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _CONTENT_PART_TYPES:
                self._add(
                    "bad_content", f"a part of type {excerpt(kind)}" if kind else "a part without a type"
                )
                return False
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    self._add("bad_content", 'a text part needs "text"')
                    return False
                into.append(part["text"])
            else:
                image = part.get("image_url")
                if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                    self._add("bad_content", 'an image part needs "image_url": {"url": ...}')
                    return False
                # Images are billed by size, not by their URL's text: not counted here.
        return True

    def _check_tool_calls(self, calls: Any, role: str, strings: list[str]) -> bool:
        if role != "assistant":
            self._add("bad_tool_call", "only assistant messages make tool calls")
            return False
        if not isinstance(calls, list) or not calls:
            self._add("bad_tool_call", '"tool_calls" must be a non-empty list')
            return False
        for call in calls:
            if not isinstance(call, dict):
                self._add("bad_tool_call", f"a call is {_kind_of(call)}")
                return False
            function = call.get("function")
            if not isinstance(call.get("id"), str) or not call["id"]:
                problem = 'no "id"'
            elif call.get("type") != "function":
                problem = f'"type" is {excerpt(call.get("type"))}, not "function"'
            elif not isinstance(function, dict):
                problem = 'no "function" object'
            elif not isinstance(function.get("name"), str) or not function["name"]:
                problem = 'no "function.name"'
            elif not isinstance(function.get("arguments"), str):
                problem = '"function.arguments" is not a string'
            else:
                continue
            self._add("bad_tool_call", problem)
            return False
        strings.append(_compact(calls))
        return True

    def _check_function_call(self, call: Any, role: str, strings: list[str]) -> bool:
        if role != "assistant":
            problem = "only assistant messages make function calls"
        elif not isinstance(call, dict):
            problem = f"it is {_kind_of(call)}"
        elif not isinstance(call.get("name"), str) or not call["name"]:
            problem = 'no "name"'
        elif not isinstance(call.get("arguments"), str):
            problem = '"arguments" is not a string'
        else:
            strings.append(_compact(call))
            return True
        self._add("bad_function_call", problem)
        return False

    def _check_tools(self, example: Mapping[str, Any], cached: list[str]) -> bool:
        ok = True
        for key in ("tools", "functions"):
            if key not in example:
                continue
            tools = example[key]
            if not isinstance(tools, list):
                self._add("bad_tools", f'"{key}" is {_kind_of(tools)}')
                ok = False
                continue
            for tool in tools:
                function = tool.get("function") if isinstance(tool, dict) and key == "tools" else tool
                if (
                    not isinstance(function, dict)
                    or (key == "tools" and tool.get("type") != "function")
                    or not isinstance(function.get("name"), str)
                ):
                    self._add("bad_tools", f'an entry of "{key}"')
                    ok = False
                    break
            else:
                # Tool definitions are part of what the model reads (and is billed for); the cookbook
                # leaves them out. They usually repeat from example to example: cached.
                cached.append(_compact(tools))
        return ok

    # -------------------------------------------------------------------------------- counts

    def _drain(self) -> None:
        results = self._counter.results
        if not results:
            return
        context = self.context
        for line, count in results:
            self._counts.append(count)
            self._billed += min(context, count)
            if count > context:
                self._over += 1
                if len(self._over_lines) < FIRST_LINES:
                    self._over_lines.append(line)
        results.clear()

    def finish(self) -> ValidationReport:
        if self._finished:
            raise RuntimeError("finish() called twice")
        if not self._sniffed:
            self._sniff()
            # What was held back for the verdict may be several lines.
            held, self._pending = self._pending, b""
            self._take_data(held)
        if self._pending and not self._refused:
            self._take_line(self._pending)
        self._pending = b""
        self._finished = True
        self._counter.finish()
        self._drain()
        if not self._refused:
            if self._bytes == 0 or (self._examples == 0 and "blank_line" in self._problems):
                self._file_problem("empty_file")
            elif self._examples < MIN_EXAMPLES:
                self._file_problem("too_few_examples", _examples_words(self._examples))
            elif self._examples < RECOMMENDED_EXAMPLES:
                self._file_problem("few_examples", _examples_words(self._examples))
        stats = self._stats()
        if stats is not None and stats.over_context:
            problem = self._problems["over_context"] = _Problem(
                "over_context", _KINDS["over_context"][1].format(detail=f"{self.context:,}")
            )
            problem.count, problem.lines = stats.over_context, list(stats.over_context_lines)
        ordered = sorted(self._problems.values(), key=lambda p: p.severity != "error")
        return ValidationReport(
            filename=self.filename,
            method=self.method,
            model=self.model,
            encoding=self.encoding_name,
            bytes_read=self._bytes,
            examples=self._examples,
            problems=tuple(
                ProblemSummary(p.kind, p.severity, p.count, tuple(p.lines), p.message) for p in ordered
            ),
            tokens=stats,
        )

    def _stats(self) -> TokenStats | None:
        if not self._counts:
            return None
        ordered = sorted(self._counts)
        return TokenStats(
            examples=len(ordered),
            total=sum(ordered),
            min=ordered[0],
            median=_nearest_rank(ordered, 50),
            p90=_nearest_rank(ordered, 90),
            max=ordered[-1],
            billed_per_epoch=self._billed,
            over_context=self._over,
            over_context_lines=tuple(self._over_lines),
        )


def _nearest_rank(ordered: list[int], percent: int) -> int:
    """The smallest value with at least `percent`% of values at or below it (a value that occurs)."""
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[rank - 1]


def _examples_words(count: int) -> str:
    return "1 example" if count == 1 else f"{count} examples"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# Text of the kind training files hold, to build each thread's tokenizer state before a first file.
_WARM_TEXT = (
    "You are a helpful assistant. What's the refund policy for order #12345, placed 2024-07-18? "
    "The answer is `x**2` → 3.00 USD; naïve café 日本語 🤖 …\n\n"
) * 8


def prepare(model: str) -> None:
    """Do once what every process would otherwise do during its first check: load the vocabulary
    (~0.5 s) and numpy, and warm each counting thread's tokenizer. tiktoken keeps a regex per thread
    whose matching state is built lazily: a thread's first megabyte costs about 0.1 s more than the
    next. Optional; a check works the same without it. Blocks: call it off the event loop."""
    encoding = tokens.get_encoding(tokens.encoding_name_for_model(model))
    import numpy  # noqa: F401 - see `_Counter._run`

    separators = {tokens.ENDOFTEXT, tokens.ENDOFPROMPT}
    encoding.encode_ordinary(_WARM_TEXT)
    if _WORKERS == 1:
        return
    # One task per thread: each waits at the barrier until all have started, so no thread takes two.
    barrier = threading.Barrier(_WORKERS)

    def warm() -> None:
        # A thread busy with a check breaks the barrier: it is warm already, or soon will be.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)
        encoding.encode_to_numpy(_WARM_TEXT, allowed_special=separators, disallowed_special=())

    for future in [_executor().submit(warm) for _ in range(_WORKERS)]:
        future.result()


def validate_bytes(data: bytes, chunk_size: int = 1 << 20, **kwargs: Any) -> ValidationReport:
    """The whole file at once (tests, small files); fed in chunks as a download would be."""
    validator = TrainingFileValidator(**kwargs)
    for start in range(0, len(data), chunk_size):
        validator.feed(data[start : start + chunk_size])
    return validator.finish()


def count_example_tokens(messages: list[dict[str, Any]], encode: Callable[[str], list[int]]) -> int:
    """The cookbook's formula for one conversation, for comparison and tests: 3 per message, every
    (string) value encoded, 1 more per name, 3 for the reply's primer."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if isinstance(value, str):
                total += len(encode(value))
            if key == "name":
                total += 1
    return total
