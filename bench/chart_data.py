"""A realistic synthetic fine-tuning run: its result file (`result_files[0]`) and its checkpoints.

Standard library only: the chart benchmark's measuring subprocess imports it, and so do the tests
and `docs/make_report_example.py`. Deterministic for a given seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

HEADER = (
    "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,"
    "full_valid_loss,full_valid_mean_token_accuracy"
)
MODEL = "ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123"
JOB_ID = "ftjob-5Ua8bK2nR7xQ"


def _accuracy(loss: float, noise: float) -> float:
    # Token accuracy rises as the loss falls; the mapping is made up but has the right shape.
    return min(0.99, max(0.05, 1.0 - 0.55 * loss / (1.0 + 0.55 * loss) + noise))


def _rows(steps: int, seed: int, valid_every: int, epochs: int) -> Iterator[dict[str, float | int | None]]:
    """Noisy training loss that falls fast then slowly, with a small drop at each epoch boundary;
    validation every `valid_every` steps that follows it and turns up a little in the last epoch
    (mild overfitting); full-epoch validation at each epoch's end; token accuracy to match."""
    rng = random.Random(seed)
    per_epoch = max(1, steps // epochs)
    for step in range(1, steps + 1):
        epoch = min(epochs - 1, (step - 1) // per_epoch)
        progress = step / steps
        base = 0.32 + 2.1 * math.exp(-step / (0.06 * steps)) + 0.25 * (1 - progress) - 0.05 * epoch
        overfit = 0.72 * max(0.0, progress - 0.62) ** 1.5
        train = max(0.01, base * math.exp(rng.gauss(0, 0.16)))
        row: dict[str, float | int | None] = {
            "step": step,
            "train_loss": train,
            "train_accuracy": _accuracy(train, rng.gauss(0, 0.01)),
            "valid_loss": None,
            "valid_mean_token_accuracy": None,
            "full_valid_loss": None,
            "full_valid_mean_token_accuracy": None,
        }
        if step % valid_every == 0:
            valid = max(0.01, (base + 0.06 + 0.05 * epoch + overfit) * math.exp(rng.gauss(0, 0.06)))
            row["valid_loss"] = valid
            row["valid_mean_token_accuracy"] = _accuracy(valid, rng.gauss(0, 0.008))
        if step % per_epoch == 0 and step // per_epoch <= epochs:
            full = base + 0.07 + 0.05 * epoch + overfit
            row["full_valid_loss"] = full
            row["full_valid_mean_token_accuracy"] = _accuracy(full, 0)
        yield row


def synthetic_result_csv(
    steps: int = 10_000, *, seed: int = 7, valid_every: int = 50, epochs: int = 3, accuracy: bool = True
) -> bytes:
    """The result file of the run, as OpenAI's content endpoint serves it (plain CSV)."""
    columns = HEADER.split(",") if accuracy else ["step", "train_loss", "valid_loss", "full_valid_loss"]
    lines = [",".join(columns)]
    for row in _rows(steps, seed, valid_every, epochs):
        cells = []
        for column in columns:
            value = row[column]
            cells.append("" if value is None else str(value) if column == "step" else f"{value:.6f}")
        lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode()


def synthetic_checkpoints(
    steps: int = 10_000, *, seed: int = 7, valid_every: int = 50, epochs: int = 3, model: str = MODEL
) -> list[dict[str, object]]:
    """The API's checkpoint objects of the same run (same seed → same numbers as the CSV): one at
    each epoch's end, with the metrics of that step; valid_loss is the latest one measured."""
    per_epoch = max(1, steps // epochs)
    wanted = {epoch * per_epoch for epoch in range(1, epochs + 1)}
    items: list[dict[str, object]] = []
    latest_valid: float | None = None
    for row in _rows(steps, seed, valid_every, epochs):
        if row["valid_loss"] is not None:
            latest_valid = float(row["valid_loss"])
        step = int(row["step"] or 0)
        if step not in wanted:
            continue
        metrics: dict[str, float] = {"step": step, "train_loss": round(float(row["train_loss"] or 0), 4)}
        if latest_valid is not None:
            metrics["valid_loss"] = round(latest_valid, 4)
        if row["full_valid_loss"] is not None:
            metrics["full_valid_loss"] = round(float(row["full_valid_loss"]), 4)
        items.append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt_{len(items) + 1}",
                "created_at": 1_717_000_000 + step,
                "fine_tuning_job_id": JOB_ID,
                "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{step}",
                "step_number": step,
                "metrics": metrics,
            }
        )
    return items
