"""8. Training data check: validating and counting a 100 MB, 100,000-example JSONL file.

A realistic synthetic file (a handful of system prompts shared by all examples, unique user and
assistant turns of varied length, a fifth of the conversations with two turns, some non-ASCII) is
checked by our validator and by the cookbook's approach (bench/validate_measure.py), each in a
fresh process, on the same file: throughput, the ratio (goal: at least 3 times), identical token totals (a
FunctionalError otherwise) and our peak RSS (goal < 150 MB, whatever the file's size). What a process
does once (load the vocabulary, warm the tokenizer of each counting thread) is outside the clock for
both, and reported. Quick mode: a 20 MB file; at 5 MB the fixed costs of a pipeline (the first batch
parsed before any counting starts, the last counted after parsing ends) are a third of our time, and
the cookbook, which holds every parsed line, is at its fastest per MB (it slows as its heap grows).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, FunctionalError, Result, log, secs

MODEL = "gpt-4o-mini-2024-07-18"
GOAL_RATIO = 3.0
GOAL_PEAK_MB = 150.0
_WORDS = " ".join(
    [
        "the of and to in is that for it as was with be by on not this are or from at which but have an they "
        "you were there been one all we their has would when if so no will can more about up out them what "
        "into time only some could new other than then also two like these may first any way its our over "
        "now after just most made such where many those how well back much before good should very through "
        "long because both each same under last great while another still here why day must take year work "
        "life used between three down world people state system data model answer question user example "
        "result error value number function file line report customer order refund invoice account"
    ]
).split()
_EXTRA = ["naïve", "café", "日本語", "🤖", "`code`", "x**2", '{"k": 1}', "2024-07-18", "$3.00", "→", "…"]


def _sentence(rng: random.Random, words: int) -> str:
    picked = [rng.choice(_EXTRA) if rng.random() < 0.03 else rng.choice(_WORDS) for _ in range(words)]
    text = " ".join(picked)
    return text[:1].upper() + text[1:] + rng.choice([".", "?", "!", ".\n\n"])


def write_file(path: Path, examples: int, seed: int = 14) -> int:
    """~1 KB per example; returns the size in bytes."""
    rng = random.Random(seed)
    systems = [_sentence(rng, rng.randint(20, 80)) for _ in range(5)]
    with path.open("w", encoding="utf-8") as file:
        for _ in range(examples):
            messages = [{"role": "system", "content": rng.choice(systems)}]
            for _ in range(1 if rng.random() < 0.8 else 2):
                messages.append({"role": "user", "content": _sentence(rng, rng.randint(15, 60))})
                messages.append({"role": "assistant", "content": _sentence(rng, rng.randint(30, 120))})
            file.write(json.dumps({"messages": messages}, ensure_ascii=rng.random() < 0.5) + "\n")
    return path.stat().st_size


def _measure(approach: str, path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.validate_measure", approach, str(path), MODEL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise FunctionalError(f"{approach} failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> Result:
    examples = 20_000 if quick else 100_000
    result = Result("validate", "8. Training data check", params={"examples": examples, "model": MODEL})
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        path = Path(tmp) / "train.jsonl"
        size = write_file(path, examples)
        log(f"validate: {examples:,} examples, {size / 1e6:.0f} MB; cookbook, then ours")
        cookbook = _measure("cookbook", path)
        ours = _measure("ours", path)
    if ours["tokens_total"] != cookbook["tokens_total"] or ours["examples"] != cookbook["examples"]:
        raise FunctionalError(
            f"different counts: ours {ours['tokens_total']} tokens in {ours['examples']} examples, "
            f"cookbook {cookbook['tokens_total']} in {cookbook['examples']}"
        )
    if ours["errors"] or cookbook["errors"]:
        raise FunctionalError(
            f"the generated file has errors: ours {ours['errors']}, cookbook {cookbook['errors']}"
        )
    result.figures = {"file_bytes": size, "ours": ours, "cookbook": cookbook}
    variant = f"{examples:,} examples, {size / 1e6:.0f} MB"
    result.row(
        variant,
        "cookbook approach (load all, json.loads, encode per value)",
        f"{cookbook['mb_per_second']:.1f} MB/s ({secs(cookbook['seconds'])}), "
        f"peak RSS {cookbook['peak_rss_mb']:.0f} MB; once per process: {secs(cookbook['warmup_seconds'])}",
        baseline=True,
    )
    ratio = ours["mb_per_second"] / cookbook["mb_per_second"]
    result.row(
        variant,
        "our validator (streamed, batched counting)",
        f"{ours['mb_per_second']:.1f} MB/s ({secs(ours['seconds'])}), {ratio:.1f}x the cookbook's; "
        f"once per process: {secs(ours['warmup_seconds'])}",
        f">= {GOAL_RATIO:g}x",
        ratio >= GOAL_RATIO,
    )
    result.row(
        variant,
        "our peak RSS (whole process, vocabulary included)",
        f"{ours['peak_rss_mb']:.0f} MB (after loading the vocabulary: {ours['rss_after_load_mb']:.0f} MB)",
        f"< {GOAL_PEAK_MB:g} MB",
        ours["peak_rss_mb"] < GOAL_PEAK_MB,
    )
    result.row(variant, "token total (identical in both)", f"{ours['tokens_total']:,}")
    return result
