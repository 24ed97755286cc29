"""Regenerate docs/report-example.png, the completion report's chart shown in the README.

    .venv/bin/python docs/make_report_example.py

A synthetic but realistic job (bench/chart_data.py: 3 epochs, validation every 50 steps, mild
overfitting in the last epoch) goes through the same path as a real one: result-file CSV →
parse_result_file → build_scorecard → render_chart. The scorecard text that goes with the picture is
printed, so the README can quote it. Deterministic: the same commit gives the same picture.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script, the repository root is not on sys.path
    sys.path.insert(0, str(_REPO))

from bench.chart_data import JOB_ID, MODEL, synthetic_checkpoints, synthetic_result_csv  # noqa: E402
from bot.chart import ChartInput, render_chart  # noqa: E402
from bot.models import FineTuningJob  # noqa: E402
from bot.scorecard import build_scorecard, chart_alt_text, chart_title, render_scorecard  # noqa: E402
from bot.training_metrics import checkpoints_from_api, parse_result_file  # noqa: E402

STEPS = 2_400
OUT = _REPO / "docs" / "report-example.png"


def main() -> None:
    job = FineTuningJob.from_api(
        {
            "id": JOB_ID,
            "object": "fine_tuning.job",
            "status": "succeeded",
            "model": "gpt-4o-mini-2024-07-18",
            "created_at": 1_717_000_000,
            "finished_at": 1_717_000_000 + 4_335,
            "fine_tuned_model": MODEL,
            "trained_tokens": 2_406_117,
            "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.8},
            "result_files": ["file-7kBq"],
        }
    )
    series = parse_result_file(synthetic_result_csv(STEPS))
    checkpoints = checkpoints_from_api(synthetic_checkpoints(STEPS, model=MODEL))
    card = build_scorecard(job, series, checkpoints)
    OUT.write_bytes(render_chart(ChartInput(chart_title(card), series.points, checkpoints)))
    print(f"wrote {OUT.relative_to(_REPO)}\n")
    print(render_scorecard(card))
    print(f"\nalt text: {chart_alt_text(card)}")


if __name__ == "__main__":
    main()
