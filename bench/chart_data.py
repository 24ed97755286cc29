"""A realistic synthetic result file: what OpenAI's `result_files[0]` of a long job looks like.

Standard library only: the chart benchmark's measuring subprocess imports it, and so does
`docs/make_report_example.py`.
"""

from __future__ import annotations

import math
import random

HEADER = (
    "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,"
    "full_valid_loss,full_valid_mean_token_accuracy"
)


def _accuracy(loss: float, noise: float) -> float:
    # Token accuracy rises as the loss falls; the mapping is made up but has the right shape.
    return min(0.99, max(0.05, 1.0 - 0.55 * loss / (1.0 + 0.55 * loss) + noise))


def synthetic_result_csv(
    steps: int = 10_000, *, seed: int = 7, valid_every: int = 50, epochs: int = 3, accuracy: bool = True
) -> bytes:
    """Noisy training loss that falls fast then slowly, with a small drop at each epoch boundary;
    validation every `valid_every` steps that follows it and turns up a little in the last epoch
    (mild overfitting); full-epoch validation at each epoch's end; token accuracy to match."""
    rng = random.Random(seed)
    per_epoch = max(1, steps // epochs)
    lines = [HEADER if accuracy else "step,train_loss,valid_loss,full_valid_loss"]
    for step in range(1, steps + 1):
        epoch = (step - 1) // per_epoch
        progress = step / steps
        base = 0.32 + 2.1 * math.exp(-step / (0.06 * steps)) + 0.25 * (1 - progress) - 0.05 * epoch
        train = max(0.01, base * math.exp(rng.gauss(0, 0.16)))
        cells = [str(step), f"{train:.6f}"]
        if accuracy:
            cells.append(f"{_accuracy(train, rng.gauss(0, 0.01)):.6f}")
        valid = full = ""
        valid_acc = full_acc = ""
        if step % valid_every == 0:
            overfit = 0.18 * max(0.0, progress - 0.62) ** 1.5 * 4
            value = max(0.01, (base + 0.06 + 0.05 * epoch + overfit) * math.exp(rng.gauss(0, 0.06)))
            valid, valid_acc = f"{value:.6f}", f"{_accuracy(value, rng.gauss(0, 0.008)):.6f}"
        if step % per_epoch == 0 or step == steps:
            overfit = 0.18 * max(0.0, progress - 0.62) ** 1.5 * 4
            value = base + 0.07 + 0.05 * epoch + overfit
            full, full_acc = f"{value:.6f}", f"{_accuracy(value, 0):.6f}"
        if accuracy:
            cells += [valid, valid_acc, full, full_acc]
        else:
            cells += [valid, full]
        lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode()


def synthetic_checkpoints(
    steps: int = 10_000, epochs: int = 3, model: str = "ft:gpt-4o-mini-2024-07-18:acme:support-bot:AbC123"
) -> list[dict[str, object]]:
    """The API's checkpoint objects for the synthetic run: one at each epoch's end (OpenAI keeps
    the last three), with metrics taken from the same curve."""
    per_epoch = max(1, steps // epochs)
    items: list[dict[str, object]] = []
    for epoch in range(1, epochs + 1):
        step = min(steps, epoch * per_epoch)
        progress = step / steps
        base = 0.32 + 2.1 * math.exp(-step / (0.06 * steps)) + 0.25 * (1 - progress) - 0.05 * (epoch - 1)
        overfit = 0.18 * max(0.0, progress - 0.62) ** 1.5 * 4
        valid = base + 0.06 + 0.05 * (epoch - 1) + overfit
        items.append(
            {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt_{epoch}",
                "created_at": 1_717_000_000 + step,
                "fine_tuning_job_id": "ftjob-5Ua8bK2nR7xQ",
                "fine_tuned_model_checkpoint": f"{model}:ckpt-step-{step}",
                "step_number": step,
                "metrics": {
                    "step": step,
                    "train_loss": round(base, 4),
                    "valid_loss": round(valid, 4),
                    "full_valid_loss": round(valid + 0.01, 4),
                },
            }
        )
    return items
