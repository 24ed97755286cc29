"""The report's loss chart: step metrics → PNG bytes, drawn in a worker process.

`render_chart` is CPU only (no I/O, no clock) and uses matplotlib's object-oriented API with the Agg
canvas: never `pyplot`, whose global figure registry is neither thread-safe nor needed, and no
backend selection, so neither a display nor `MPLBACKEND` is involved. matplotlib ships its own DejaVu
fonts, so nothing is downloaded; when no home folder is writable it keeps its font cache in a
temporary folder (slower start, same picture).

`ChartRenderer` (bot/chart_renderer.py) runs it in a separate process; the bot imports that module,
never this one, so its own process does not load matplotlib and numpy (about 40 MB).

This module is what the worker process imports: it must import only matplotlib, numpy and the
light bot.chart_renderer / bot.training_metrics / bot.crash, never Slack, Bolt or the bot's wiring.
"""

from __future__ import annotations

import gc
import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from bot.chart_renderer import ChartError, ChartInput, ChartRenderer
from bot.crash import crash_point
from bot.training_metrics import CheckpointInfo, MetricPoint

WIDTH_PX, HEIGHT_PX, DPI = 1600, 900, 100
# Font sizes in points at 100 dpi: a 1600 px picture shown ~400 px wide on a phone is scaled to a
# quarter, so 14 pt is the smallest that stays legible there.
TITLE_PT, LABEL_PT, TICK_PT, LEGEND_PT, NOTE_PT = 22, 17, 15, 14, 13
# The raw training loss is drawn from at most this many points (min and max per bucket): more
# than one point per horizontal pixel costs drawing time and PNG bytes and shows nothing more.
MAX_RAW_POINTS = 2 * WIDTH_PX
MAX_SMOOTH_POINTS = WIDTH_PX
MAX_MARKED_POINTS = 300  # beyond this, validation points are drawn as a line without markers
MAX_CHECKPOINT_LABELS = 12

TRAIN_COLOUR, VALID_COLOUR, FULL_VALID_COLOUR, CHECKPOINT_COLOUR = "#1f77b4", "#ff7f0e", "#d62728", "#555555"




# ---------------------------------------------------------------------------------------------- data


def _column(points: Sequence[MetricPoint], get: Callable[[MetricPoint], float | None]) -> np.ndarray:
    return np.fromiter(
        (math.nan if (v := get(p)) is None else v for p in points), dtype=np.float64, count=len(points)
    )


def _present(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(values)
    return steps[keep], values[keep]


def envelope(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points that draw like the full series: per bucket of consecutive points,
    its minimum and its maximum, so spikes survive the downsampling."""
    n = len(values)
    if n <= max_points:
        return steps, values
    buckets = max_points // 2
    starts = np.linspace(0, n, buckets, endpoint=False).astype(np.int64)
    low = np.minimum.reduceat(values, starts)
    high = np.maximum.reduceat(values, starts)
    ends = np.append(starts[1:], n) - 1
    xs = np.empty(2 * buckets, dtype=np.float64)
    ys = np.empty(2 * buckets, dtype=np.float64)
    xs[0::2], xs[1::2] = steps[starts], steps[ends]
    ys[0::2], ys[1::2] = low, high
    return xs, ys


def ema(values: np.ndarray, span: float) -> np.ndarray:
    """Exponential moving average, debiased at the start (as TensorBoard does), so the smoothed line
    begins at the first value rather than climbing up from zero."""
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(values)
    average = 0.0
    weight = 0.0
    for i, value in enumerate(values.tolist()):
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        out[i] = average / weight
    return out


def _smoothing_span(n: int) -> float:
    # About 2.5% of the run: a 10,000-step run is smoothed over ~250 steps, a short one over 10.
    return max(10.0, n / 40)


def _stride(steps: np.ndarray, values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    if len(values) <= max_points:
        return steps, values
    index = np.unique(
        np.append(np.linspace(0, len(values) - 1, max_points).astype(np.int64), len(values) - 1)
    )
    return steps[index], values[index]


def _loss_limits(arrays: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """Y limits that show the curves rather than the first few steps' spike: the top is the 99.5th
    percentile of the raw values (or the highest validation value if that is higher)."""
    present = [a for a in arrays if len(a)]
    if not present:
        return None
    everything = np.concatenate(present)
    low = float(np.min(everything))
    high = max([float(np.percentile(present[0], 99.5)), *(float(np.max(a)) for a in present[1:])])
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    pad = (high - low) * 0.06
    return low - pad, high + pad


# ---------------------------------------------------------------------------------------------- drawing


def _style(ax: Axes, ylabel: str) -> None:
    ax.set_ylabel(ylabel, fontsize=LABEL_PT)
    ax.tick_params(labelsize=TICK_PT)
    ax.grid(True, which="major", alpha=0.35)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))


def _mark_checkpoints(axes: Sequence[Axes], checkpoints: Sequence[CheckpointInfo], best: int | None) -> None:
    if not checkpoints:
        return
    label_every = max(1, math.ceil(len(checkpoints) / MAX_CHECKPOINT_LABELS))
    for index, checkpoint in enumerate(checkpoints):
        is_best = checkpoint.step == best
        for ax in axes:
            ax.axvline(
                checkpoint.step,
                color=CHECKPOINT_COLOUR,
                linestyle=":",
                linewidth=2.2 if is_best else 1.4,
                alpha=0.9,
                zorder=1,
            )
        if index % label_every == 0 or is_best:
            text = f"checkpoint {checkpoint.step:,}" + (" ★ best" if is_best else "")
            axes[0].annotate(
                text,
                xy=(checkpoint.step, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(-4, -6),
                textcoords="offset points",
                rotation=90,
                ha="right",
                va="top",
                fontsize=NOTE_PT,
                color=CHECKPOINT_COLOUR,
                fontweight="bold" if is_best else "normal",
                annotation_clip=False,
                parse_math=False,
            )


def _legend(loss_ax: Axes, checkpoints: bool) -> None:
    """One legend for both panels, in a row above the loss panel: the panels share colours (blue
    training, orange validation, red diamonds full validation), and inside the axes a legend would
    cover either the curves or the checkpoint labels."""
    handles, labels = loss_ax.get_legend_handles_labels()
    if checkpoints:
        handles.append(Line2D([], [], color=CHECKPOINT_COLOUR, linestyle=":", linewidth=1.6))
        labels.append("checkpoint")
    loss_ax.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncols=len(handles),
        fontsize=LEGEND_PT,
        frameon=False,
        handlelength=2.4,
    )


def _best_step(checkpoints: Sequence[CheckpointInfo]) -> int | None:
    for key in ("valid_loss", "full_valid_loss"):
        scored = [(c.metrics[key], c.step) for c in checkpoints if key in c.metrics]
        if scored:
            return min(scored)[1]
    return None


def _draw_loss(ax: Axes, steps: np.ndarray, points: Sequence[MetricPoint]) -> bool:
    train_x, train_y = _present(steps, _column(points, lambda p: p.train_loss))
    valid_x, valid_y = _present(steps, _column(points, lambda p: p.valid_loss))
    full_x, full_y = _present(steps, _column(points, lambda p: p.full_valid_loss))
    if not (len(train_y) or len(valid_y) or len(full_y)):
        return False
    if len(train_y):
        raw_x, raw_y = envelope(train_x, train_y, MAX_RAW_POINTS)
        ax.plot(raw_x, raw_y, color=TRAIN_COLOUR, linewidth=0.8, alpha=0.3, label="training (raw)")
        if len(train_y) >= 10:
            smooth_x, smooth_y = _stride(
                train_x, ema(train_y, _smoothing_span(len(train_y))), MAX_SMOOTH_POINTS
            )
            ax.plot(smooth_x, smooth_y, color=TRAIN_COLOUR, linewidth=2.6, label="training (smoothed)")
    if len(valid_y):
        marker = "o" if len(valid_y) <= MAX_MARKED_POINTS else None
        ax.plot(
            valid_x,
            valid_y,
            color=VALID_COLOUR,
            linewidth=2.0,
            marker=marker,
            markersize=5,
            label="validation",
        )
    if len(full_y):
        ax.plot(
            full_x,
            full_y,
            color=FULL_VALID_COLOUR,
            linestyle="none",
            marker="D",
            markersize=11,
            markeredgecolor="black",
            label="full validation (epoch end)",
            zorder=5,
        )
    limits = _loss_limits([train_y, valid_y, full_y] if len(train_y) else [valid_y, full_y])
    if limits is not None:
        ax.set_ylim(*limits)
    _style(ax, "loss")
    return True


def _draw_accuracy(ax: Axes, steps: np.ndarray, points: Sequence[MetricPoint]) -> None:
    train_x, train_y = _present(steps, _column(points, lambda p: p.train_accuracy))
    valid_x, valid_y = _present(steps, _column(points, lambda p: p.valid_accuracy))
    full_x, full_y = _present(steps, _column(points, lambda p: p.full_valid_accuracy))
    if len(train_y):
        raw_x, raw_y = envelope(train_x, train_y * 100, MAX_RAW_POINTS)
        ax.plot(raw_x, raw_y, color=TRAIN_COLOUR, linewidth=0.8, alpha=0.3)
        if len(train_y) >= 10:
            smooth = ema(train_y * 100, _smoothing_span(len(train_y)))
            smooth_x, smooth_y = _stride(train_x, smooth, MAX_SMOOTH_POINTS)
            ax.plot(smooth_x, smooth_y, color=TRAIN_COLOUR, linewidth=2.6)
    if len(valid_y):
        marker = "o" if len(valid_y) <= MAX_MARKED_POINTS else None
        ax.plot(
            valid_x, valid_y * 100, color=VALID_COLOUR, linewidth=2.0, marker=marker, markersize=5
        )  # fmt: skip
    if len(full_y):
        ax.plot(
            full_x, full_y * 100, color=FULL_VALID_COLOUR, linestyle="none", marker="D", markersize=11,
            markeredgecolor="black", zorder=5,
        )  # fmt: skip
    _style(ax, "token accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))


def _has_accuracy(points: Sequence[MetricPoint]) -> bool:
    return any(
        p.train_accuracy is not None or p.valid_accuracy is not None or p.full_valid_accuracy is not None
        for p in points
    )


def chart_figure(spec: ChartInput) -> Figure:
    """The chart as a matplotlib Figure on an Agg canvas (render_chart's picture, for inspection):
    loss against step (raw and smoothed training loss, validation loss, full-epoch validation loss,
    checkpoints), and token accuracy below when there is any. Raises ChartError when there is no
    loss to draw."""
    points = [p for p in spec.points if p.has_values]
    if not any(
        p.train_loss is not None or p.valid_loss is not None or p.full_valid_loss is not None for p in points
    ):
        raise ChartError("no loss values to draw")
    steps = np.fromiter((p.step for p in points), dtype=np.float64, count=len(points))
    two_panels = _has_accuracy(points)

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    if two_panels:
        loss_ax, accuracy_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        axes = [loss_ax, accuracy_ax]
    else:
        loss_ax = figure.subplots()
        axes = [loss_ax]
    _draw_loss(loss_ax, steps, points)
    if two_panels:
        _draw_accuracy(accuracy_ax, steps, points)
    axes[-1].set_xlabel("step", fontsize=LABEL_PT)
    _mark_checkpoints(axes, spec.checkpoints, _best_step(spec.checkpoints))
    _legend(loss_ax, bool(spec.checkpoints))
    # The title holds a model name from OpenAI: `parse_math=False` keeps a `$` in it from being
    # read as mathtext (which could fail to parse and lose the whole picture).
    figure.suptitle(spec.title, fontsize=TITLE_PT, parse_math=False)
    return figure


def render_chart(spec: ChartInput) -> bytes:
    """PNG bytes, 1600 by 900 pixels (see chart_figure). CPU only: no I/O, no clock.
    Raises ChartError when there is no loss to draw."""
    buffer = io.BytesIO()
    chart_figure(spec).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ worker process


def render_in_worker(spec: ChartInput) -> bytes:
    """render_chart, then a full garbage collection: a figure is a web of reference cycles that
    would otherwise wait for a rare generation-2 collection, and in a long-lived worker two or three
    uncollected 10,000-step figures double its peak memory (measured: 43 MB above the baseline
    instead of 20 MB after six renders)."""
    crash_point("chart_worker")  # the e2e tests' way to make the renderer fail for real
    try:
        return render_chart(spec)
    finally:
        gc.collect()


__all__ = ["ChartError", "ChartInput", "ChartRenderer", "chart_figure", "render_chart", "render_in_worker"]
