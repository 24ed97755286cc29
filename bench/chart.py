"""6. Report chart: parsing a 10,000-step result file and drawing its chart.

A realistic synthetic result file (bench/chart_data.py: noisy falling loss, validation every 50
steps, full validation and a checkpoint at each of 3 epochs, token accuracy; ~270 KB) is parsed
and drawn in a fresh process (bench/chart_measure.py) that imports only what the chart worker
imports: the time is parse + render (median of 3 in full mode, 1 in quick, the first included),
the memory is the peak RSS above that process's own after its imports. Then, for the record, the
same chart through ChartRenderer as the bot uses it: the first render pays for spawning the worker
process and its imports, the next ones do not.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.chart_data import synthetic_checkpoints, synthetic_result_csv
from bench.common import REPO, FunctionalError, Result, log, secs
from bot.chart_renderer import ChartInput, ChartRenderer
from bot.training_metrics import checkpoints_from_api, parse_result_file

STEPS = 10_000
GOAL_SECONDS = 1.0
GOAL_EXTRA_MB = 100.0
GOAL_PNG_KB = 500.0
MIN_WIDTH, MIN_HEIGHT = 1200, 700


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _measure_in_fresh_process(csv: bytes, checkpoints: list[dict[str, object]], repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-chart-") as tmp:
        csv_path, checkpoints_path = Path(tmp) / "result.csv", Path(tmp) / "checkpoints.json"
        csv_path.write_bytes(csv)
        checkpoints_path.write_text(json.dumps(checkpoints))
        out = subprocess.run(
            [sys.executable, "-m", "bench.chart_measure", str(csv_path), str(checkpoints_path), str(repeats)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if out.returncode != 0:
        raise FunctionalError(f"parse + render failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as error:
        raise FunctionalError(f"the measuring process printed no figures: {out.stdout[-300:]!r}") from error


async def _through_renderer(spec: ChartInput, renders: int) -> list[float]:
    renderer = ChartRenderer(timeout=120)
    seconds = []
    try:
        for _ in range(renders):
            started = time.perf_counter()
            png = await renderer.render(spec)
            seconds.append(time.perf_counter() - started)
            if _png_size(png[:24]) is None:
                raise FunctionalError("ChartRenderer returned something that is not a PNG")
    finally:
        renderer.close()
    return seconds


def run(quick: bool) -> Result:
    repeats = 1 if quick else 3
    result = Result("chart", "6. Report chart", params={"steps": STEPS, "repeats": repeats})
    csv = synthetic_result_csv(STEPS)
    checkpoints = synthetic_checkpoints(STEPS)
    log(f"chart: {STEPS:,}-step result file ({len(csv) / 1024:.0f} KB), parse + render x{repeats}")
    figures = _measure_in_fresh_process(csv, checkpoints, repeats)
    size = _png_size(bytes.fromhex(str(figures["png_head_hex"])))
    if size is None:
        raise FunctionalError("the chart is not a PNG")
    if size[0] < MIN_WIDTH or size[1] < MIN_HEIGHT:
        raise FunctionalError(f"the chart is {size[0]}x{size[1]}, smaller than {MIN_WIDTH}x{MIN_HEIGHT}")
    if figures["points"] != STEPS:
        raise FunctionalError(f"parsed {figures['points']} points of {STEPS}")

    log("chart: the same through ChartRenderer (worker process)")
    series = parse_result_file(csv)
    spec = ChartInput(
        "ftjob-bench · ft:gpt-4o-mini:bench::chart", series.points, checkpoints_from_api(checkpoints)
    )
    renderer_seconds = asyncio.run(_through_renderer(spec, 2 if quick else 3))

    figures["png_width"], figures["png_height"] = size
    figures["renderer_seconds"] = renderer_seconds
    result.figures = figures
    variant = f"{STEPS:,} steps, {len(csv) / 1024:.0f} KB CSV"
    median = float(figures["seconds_median"])
    result.row(
        variant,
        f"parse + render (median of {repeats})",
        f"{secs(median)} (parse {secs(float(figures['parse_seconds_median']))}, "
        f"render {secs(float(figures['render_seconds_median']))})",
        f"< {GOAL_SECONDS:g} s",
        median < GOAL_SECONDS,
    )
    extra = float(figures["peak_extra_mb"])
    result.row(
        variant,
        "peak extra RSS (over the process after imports)",
        f"{extra:.1f} MB (baseline {float(figures['baseline_rss_mb']):.0f} MB)",
        f"< {GOAL_EXTRA_MB:g} MB",
        extra < GOAL_EXTRA_MB,
    )
    png_kb = int(figures["png_bytes"]) / 1024
    result.row(
        variant,
        "PNG size",
        f"{png_kb:.0f} KB ({size[0]}x{size[1]})",
        f"< {GOAL_PNG_KB:g} KB",
        png_kb < GOAL_PNG_KB,
    )
    later = renderer_seconds[1:]
    result.row(
        "ChartRenderer (worker process)",
        "first render (spawn + imports) / later",
        f"{secs(renderer_seconds[0])} / {secs(sorted(later)[len(later) // 2]) if later else 'n/a'}",
    )
    if figures["peak_method"] != "VmHWM reset after imports":
        result.notes.append(f"peak memory from {figures['peak_method']}: it may overstate")
    return result
