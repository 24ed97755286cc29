"""`python -m bench.validate_measure {ours|cookbook} FILE MODEL`: check FILE one way, print one JSON
line of figures. Run by bench/validate.py, each approach in a fresh process so that the memory
figures are its own.

- ours: bot.training_data.TrainingFileValidator fed 1 MiB chunks, as a download streams.
- cookbook: OpenAI's notebook (examples/Chat_finetuning_data_prep.ipynb): the whole file loaded,
  `json.loads` per line, its format checks, then `num_tokens_from_messages` (encoding.encode per
  value), with the model's encoding rather than the notebook's fixed cl100k_base, so that the two
  totals must be identical. Its assistant-only token count (a second pass) is left out: ours does
  not compute that figure.

Both do what a process does once before the clock starts (a long-running bot does it for its first
file only), and its time is reported as `warmup_seconds`: load the encoding and warm the tokenizer of
each thread that counts (tiktoken builds its regex state lazily, per thread: ~0.1 s each): the main
thread for the cookbook, `training_data.prepare` (numpy and the counting threads) for ours. Peak RSS
is the kernel's VmHWM for the whole process (interpreter, tiktoken's vocabulary and all).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bot import tokens, training_data
from bot.training_data import TrainingFileValidator


def _status_mb(field: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def ours(path: Path, model: str) -> dict[str, Any]:
    validator = TrainingFileValidator(filename=path.name, model=model)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            validator.feed(chunk)
    report = validator.finish()
    assert report.tokens is not None
    return {
        "tokens_total": report.tokens.total,
        "examples": report.tokens.examples,
        "errors": len(report.errors),
    }


def cookbook(path: Path, model: str) -> dict[str, Any]:
    encoding = tokens.get_encoding(tokens.encoding_name_for_model(model))
    with path.open(encoding="utf-8") as f:
        dataset = [json.loads(line) for line in f]
    format_errors: dict[str, int] = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict):
            format_errors["data_type"] += 1
            continue
        messages = ex.get("messages", None)
        if not messages:
            format_errors["missing_messages_list"] += 1
            continue
        for message in messages:
            if "role" not in message or "content" not in message:
                format_errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
                format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function"):
                format_errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None)
            if (not content and not function_call) or not isinstance(content, str):
                format_errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            format_errors["example_missing_assistant_message"] += 1

    def num_tokens_from_messages(messages: list[dict[str, Any]], tokens_per_message: int = 3) -> int:
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                num_tokens += len(encoding.encode(value))
                if key == "name":
                    num_tokens += 1
        num_tokens += 3
        return num_tokens

    counts = [num_tokens_from_messages(ex["messages"]) for ex in dataset]
    return {"tokens_total": sum(counts), "examples": len(counts), "errors": sum(format_errors.values())}


def main(argv: list[str]) -> None:
    approach, path, model = argv[0], Path(argv[1]), argv[2]
    started = time.perf_counter()
    if approach == "ours":
        training_data.prepare(model)
    else:
        encoding = tokens.get_encoding(tokens.encoding_name_for_model(model))
        encoding.encode(training_data._WARM_TEXT)
    warmup = time.perf_counter() - started
    baseline = _status_mb("VmRSS")
    run = {"ours": ours, "cookbook": cookbook}[approach]
    started = time.perf_counter()
    figures = run(path, model)
    seconds = time.perf_counter() - started
    figures |= {
        "approach": approach,
        "seconds": seconds,
        "mb_per_second": path.stat().st_size / 1e6 / seconds,
        "warmup_seconds": warmup,
        "rss_after_load_mb": baseline,
        "peak_rss_mb": _status_mb("VmHWM"),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
