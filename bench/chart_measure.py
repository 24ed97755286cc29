"""`python -m bench.chart_measure RESULT_CSV CHECKPOINTS_JSON REPEATS`: parse and render the chart,
print one JSON line of figures. Run by bench/chart.py in a fresh process, so that the memory figure
is this work's alone: it imports what the chart worker imports (bot.chart, bot.training_metrics)
and nothing of the benchmark harness, and renders with the function the worker runs.

Peak memory: after the imports, the kernel's peak-RSS counter (VmHWM) is reset by writing 5 to
/proc/self/clear_refs (Linux 4.0+), so VmHWM afterwards is the peak during parse + render; where
that is refused, the process's lifetime peak (ru_maxrss) is used, which can only overstate.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

from bot.chart import ChartInput, render_in_worker
from bot.training_metrics import checkpoints_from_api, parse_result_file


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(csv_path: Path, checkpoints_path: Path, repeats: int) -> dict[str, object]:
    data = csv_path.read_bytes()
    checkpoint_items = json.loads(checkpoints_path.read_text())
    baseline_kb = _status_kb("VmRSS") or 0
    peak_reset = _reset_peak()
    totals: list[float] = []
    parses: list[float] = []
    renders: list[float] = []
    png = b""
    points = 0
    for _ in range(repeats):
        started = time.perf_counter()
        series = parse_result_file(data)
        checkpoints = checkpoints_from_api(checkpoint_items)
        parsed = time.perf_counter()
        png = render_in_worker(
            ChartInput("ftjob-bench · ft:gpt-4o-mini:bench::chart", series.points, checkpoints)
        )
        done = time.perf_counter()
        points = len(series.points)
        parses.append(parsed - started)
        renders.append(done - parsed)
        totals.append(done - started)
        del series
    # ru_maxrss is in kilobytes on Linux, like /proc's figures.
    lifetime_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_kb = (_status_kb("VmHWM") or lifetime_kb) if peak_reset else lifetime_kb
    return {
        "points": points,
        "csv_bytes": len(data),
        "seconds": totals,
        "seconds_median": statistics.median(totals),
        "parse_seconds_median": statistics.median(parses),
        "render_seconds_median": statistics.median(renders),
        "baseline_rss_mb": baseline_kb / 1024,
        "peak_extra_mb": max(0, peak_kb - baseline_kb) / 1024,
        "peak_method": "VmHWM reset after imports" if peak_reset else "ru_maxrss (lifetime peak)",
        "png_bytes": len(png),
        "png_head_hex": png[:24].hex(),
    }


if __name__ == "__main__":
    csv_arg, checkpoints_arg, repeats_arg = sys.argv[1:4]
    print(json.dumps(measure(Path(csv_arg), Path(checkpoints_arg), int(repeats_arg))))
