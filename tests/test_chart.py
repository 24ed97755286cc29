"""The loss chart (bot/chart.py): a valid PNG of the stated size, its panels, and the worker process."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.chart_data import synthetic_checkpoints, synthetic_result_csv
from bot.chart import (
    chart_figure,
    ema,
    envelope,
    render_chart,
)
from bot.chart_renderer import ChartError, ChartInput, ChartRenderer
from bot.training_metrics import (
    CheckpointInfo,
    MetricPoint,
    ResultFileError,
    checkpoints_from_api,
    parse_result_file,
)

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG format requires to come first."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def loss_only(n: int = 40) -> tuple[MetricPoint, ...]:
    return tuple(
        MetricPoint(
            step,
            train_loss=2.0 * math.exp(-step / 10) + 0.3 + 0.05 * math.sin(step),
            valid_loss=2.1 * math.exp(-step / 10) + 0.35 if step % 5 == 0 else None,
        )
        for step in range(1, n + 1)
    )


def with_accuracy(n: int = 40) -> tuple[MetricPoint, ...]:
    return tuple(
        MetricPoint(
            p.step,
            train_loss=p.train_loss,
            valid_loss=p.valid_loss,
            train_accuracy=0.5 + p.step / (2 * n),
            valid_accuracy=0.45 + p.step / (2 * n) if p.valid_loss is not None else None,
        )
        for p in loss_only(n)
    )


CHECKPOINTS = (
    CheckpointInfo(10, "ft:gpt-4o-mini:acme::x:ckpt-step-10", {"valid_loss": 1.1}),
    CheckpointInfo(20, "ft:gpt-4o-mini:acme::x:ckpt-step-20", {"valid_loss": 0.6}),
    CheckpointInfo(30, "ft:gpt-4o-mini:acme::x:ckpt-step-30", {"valid_loss": 0.7}),
)


def legend_labels(spec: ChartInput) -> list[str]:
    legend = chart_figure(spec).axes[0].get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


# ---------------------------------------------------------------------------------------------- pictures


def test_a_valid_png_at_least_1200_by_700() -> None:
    png = render_chart(ChartInput("ftjob-abc · ft:gpt-4o-mini:acme::x", loss_only(), CHECKPOINTS))
    width, height = png_size(png)
    assert width >= 1200 and height >= 700
    assert (width, height) == (1600, 900)
    assert png.endswith(b"IEND\xaeB`\x82")  # complete, not cut short


def test_one_panel_without_accuracy() -> None:
    figure = chart_figure(ChartInput("one panel", loss_only(), CHECKPOINTS))
    assert len(figure.axes) == 1
    (ax,) = figure.axes
    assert ax.get_ylabel() == "loss" and ax.get_xlabel() == "step"
    assert figure.get_suptitle() == "one panel"
    png_size(render_chart(ChartInput("one panel", loss_only(), CHECKPOINTS)))


def test_two_panels_with_accuracy() -> None:
    figure = chart_figure(ChartInput("two panels", with_accuracy(), CHECKPOINTS))
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "token accuracy"]
    assert figure.axes[1].get_xlabel() == "step"
    assert png_size(render_chart(ChartInput("two panels", with_accuracy(), CHECKPOINTS))) == (1600, 900)


def test_legend_names_every_series_and_checkpoints() -> None:
    points = (*loss_only(30), MetricPoint(31, train_loss=0.3, full_valid_loss=0.4))
    assert legend_labels(ChartInput("t", points, CHECKPOINTS)) == [
        "training (raw)",
        "training (smoothed)",
        "validation",
        "full validation (epoch end)",
        "checkpoint",
    ]
    assert legend_labels(ChartInput("t", loss_only(5))) == ["training (raw)", "validation"]


def test_checkpoints_are_vertical_lines_labelled_with_step_and_the_best_marked() -> None:
    figure = chart_figure(ChartInput("t", with_accuracy(), CHECKPOINTS))
    for ax in figure.axes:
        vertical = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert sorted(line.get_xdata()[0] for line in vertical) == [10, 20, 30]
    labels = sorted(text.get_text() for text in figure.axes[0].texts)
    assert labels == ["checkpoint 10", "checkpoint 20 ★ best", "checkpoint 30"]


def test_only_validation_loss_still_draws() -> None:
    points = tuple(MetricPoint(s, valid_loss=1 / s) for s in range(1, 6))
    assert legend_labels(ChartInput("t", points)) == ["validation"]


def test_a_single_point_draws() -> None:
    png_size(render_chart(ChartInput("t", (MetricPoint(1, train_loss=0.5),))))


def test_a_dollar_sign_in_the_title_is_not_mathtext() -> None:
    title = "ftjob-x · ft:$\\frac{a}{$ <!channel> *x*"
    figure = chart_figure(ChartInput(title, loss_only()))
    assert figure.get_suptitle() == title
    png_size(render_chart(ChartInput(title, loss_only())))


@pytest.mark.parametrize(
    "points",
    [
        (),
        (MetricPoint(1), MetricPoint(2)),
        (MetricPoint(1, train_accuracy=0.5), MetricPoint(2, valid_accuracy=0.6)),
    ],
)
def test_nothing_to_draw_is_a_chart_error(points: tuple[MetricPoint, ...]) -> None:
    with pytest.raises(ChartError):
        render_chart(ChartInput("t", points))


def test_ten_thousand_steps_from_a_result_file() -> None:
    series = parse_result_file(synthetic_result_csv(10_000))
    assert len(series.points) == 10_000
    checkpoints = checkpoints_from_api(synthetic_checkpoints(10_000))
    figure = chart_figure(ChartInput("ftjob-long", series.points, checkpoints))
    # Downsampled for drawing: no line holds more than a few points per horizontal pixel.
    assert max(len(line.get_xdata()) for ax in figure.axes for line in ax.get_lines()) <= 3200
    png = render_chart(ChartInput("ftjob-long", series.points, checkpoints))
    assert png_size(png) == (1600, 900)
    assert len(png) < 500_000


# ---------------------------------------------------------------------------------------------- helpers


def test_envelope_keeps_the_extremes_of_each_bucket() -> None:
    steps = np.arange(1, 10_001, dtype=np.float64)
    values = np.ones(10_000)
    values[1234], values[7777] = 9.0, -3.0
    xs, ys = envelope(steps, values, 200)
    assert len(xs) == len(ys) == 200
    assert ys.max() == 9.0 and ys.min() == -3.0
    assert xs[0] == 1 and xs[-1] == 10_000
    assert np.all(np.diff(xs) >= 0)
    short = np.arange(5.0)
    assert envelope(short, short, 200)[1].tolist() == short.tolist()


def test_ema_starts_at_the_first_value_and_follows_a_constant() -> None:
    assert ema(np.array([3.0, 3.0, 3.0]), 10).tolist() == pytest.approx([3.0, 3.0, 3.0])
    smoothed = ema(np.array([1.0, 0.0, 0.0, 0.0]), 3)  # alpha 0.5, debiased
    assert smoothed[0] == pytest.approx(1.0)
    assert smoothed[1] == pytest.approx(0.5 * 0.5 / 0.75)
    assert np.all(np.diff(smoothed) < 0)


# ---------------------------------------------------------------------------------------------- processes


def _run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_worker_module_imports_no_slack_or_bot_wiring() -> None:
    out = _run_python(
        "import sys, bot.chart\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'slack_bolt', 'slack_sdk', 'aiohttp', 'httpx', 'sqlalchemy', 'apscheduler', 'matplotlib.pyplot'}"
        " or (m.startswith('bot.') and m not in "
        "{'bot.chart', 'bot.chart_renderer', 'bot.training_metrics', 'bot.crash'}))\n"
        "print(bad)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_bot_process_never_loads_the_drawing_libraries() -> None:
    """Only the worker draws: the bot's own process (everything bot.server wires up) stays without
    matplotlib and numpy, which would add about 40 MB to every replica's idle memory."""
    out = _run_python(
        "import sys, bot.server, bot.reporter, bot.reports\n"
        "print(sorted(m for m in ('matplotlib', 'numpy', 'bot.chart') if m in sys.modules))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_renders_with_no_writable_home() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in {"MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"}
    }
    env["HOME"] = "/proc/no-such-home"  # not even root can create a folder there
    out = _run_python(
        "from bot.chart import render_chart, ChartInput\n"
        "from bot.training_metrics import MetricPoint\n"
        "points = (MetricPoint(1, train_loss=1.0), MetricPoint(2, train_loss=0.5))\n"
        "print(render_chart(ChartInput('t', points))[:8].hex())\n",
        env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == PNG_SIGNATURE.hex()


async def test_renderer_renders_in_a_worker_process() -> None:
    renderer = ChartRenderer(timeout=120)
    try:
        png = await renderer.render(ChartInput("async", with_accuracy(), CHECKPOINTS))
        assert png_size(png) == (1600, 900)
        assert png == render_chart(ChartInput("async", with_accuracy(), CHECKPOINTS))  # same picture
        with pytest.raises(ChartError, match="no loss"):
            await renderer.render(ChartInput("empty", ()))
        # The result file can be read there too, off the event loop, with the same answers.
        csv = synthetic_result_csv(500)
        assert await renderer.parse(csv) == parse_result_file(csv)
        with pytest.raises(ResultFileError):
            await renderer.parse(b"not, a, metrics file\n")
        # Turns are taken: several at once all succeed.
        many = await asyncio.gather(*(renderer.render(ChartInput(f"n{i}", loss_only())) for i in range(3)))
        assert all(png_size(p) == (1600, 900) for p in many)
    finally:
        renderer.close()


async def test_a_timeout_is_a_chart_error_kills_the_worker_and_the_next_render_works() -> None:
    renderer = ChartRenderer(timeout=120)
    try:
        await renderer.render(ChartInput("warm", loss_only()))  # the worker is up
        pool = renderer._pool
        assert pool is not None
        processes = list(pool._processes.values())  # type: ignore[union-attr]
        with pytest.raises(ChartError, match="longer than"):
            await renderer.render(ChartInput("slow", loss_only()), timeout=0.0001)
        for process in processes:
            process.join(timeout=30)
            assert not process.is_alive()
        assert renderer._pool is None
        png = await renderer.render(ChartInput("after", loss_only()))
        assert png_size(png) == (1600, 900)
    finally:
        renderer.close()


async def test_a_worker_that_died_is_replaced() -> None:
    renderer = ChartRenderer(timeout=120)
    try:
        await renderer.render(ChartInput("warm", loss_only()))
        pool = renderer._pool
        assert pool is not None
        for process in list(pool._processes.values()):  # type: ignore[union-attr]
            process.kill()
            process.join(timeout=30)
        # The pool notices the death on the next submit or while waiting: either way one ChartError
        # at most, then a fresh worker.
        try:
            png = await renderer.render(ChartInput("after death", loss_only()))
        except ChartError:
            png = await renderer.render(ChartInput("after death", loss_only()))
        assert png_size(png) == (1600, 900)
    finally:
        renderer.close()


async def test_timeout_on_a_first_render_with_the_constructor_timeout() -> None:
    renderer = ChartRenderer(timeout=0.0001)  # spawning the worker alone takes longer
    try:
        with pytest.raises(ChartError):
            await renderer.render(ChartInput("t", loss_only()))
        png = await renderer.render(ChartInput("t", loss_only()), timeout=120)
        assert png_size(png) == (1600, 900)
    finally:
        renderer.close()
