"""Pictures people look at instead of numbers: overlays, weight-map panels, grids and training curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from kunet.imageio import write_image
from kunet.metrics import label_boundaries

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OUTLINE_COLOUR = (255, 64, 32)  # RGB
PREDICTION_COLOUR = (40, 220, 255)
LEGEND_BACKGROUND = (32, 32, 32)
LEGEND_TEXT = (235, 235, 235)
LEGEND_ROWS = 24
# Tints of predicted instances (by id, cycling): neighbours rarely share one, so a merge or a split shows.
INSTANCE_COLOURS = np.array([(40, 220, 255), (255, 200, 40), (120, 255, 90), (255, 110, 220), (150, 130, 255),
                             (255, 150, 90), (60, 255, 200), (230, 255, 80), (255, 80, 120)], np.float32)  # fmt: skip


DISPLAY_PERCENTILES = (0.5, 99.5)
# Large images are counted and drawn in blocks of rows of about this many pixels, so they never get a float
# copy of themselves (an overlay block's float temporaries are some 40 bytes per pixel).
_BLOCK_PIXELS = 2**20


def _block_rows(image: np.ndarray) -> int:
    return max(1, _BLOCK_PIXELS // max(1, image.shape[1]))


def display_range(image: np.ndarray) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles of an image's values (as ``np.percentile``, linear interpolation).

    8- and 16-bit images are counted in a histogram a block of rows at a time (exact, no float copy).
    """
    if image.size == 0:
        return 0.0, 1.0
    if image.dtype not in (np.uint8, np.uint16):
        low, high = np.percentile(image.astype(np.float32), DISPLAY_PERCENTILES)
        return float(low), float(high)
    counts = np.zeros(np.iinfo(image.dtype).max + 1, np.int64)
    rows = _block_rows(image)
    for top in range(0, image.shape[0], rows):
        counts += np.bincount(image[top : top + rows].ravel(), minlength=counts.size)
    cumulative = np.cumsum(counts)
    values = []
    for percentile in DISPLAY_PERCENTILES:
        position = percentile / 100 * (cumulative[-1] - 1)
        below = int(np.floor(position))
        # The k-th smallest value (0-based) is the first whose cumulative count exceeds k.
        low, high = np.searchsorted(cumulative, [below, min(below + 1, cumulative[-1] - 1)], side="right")
        values.append(float(low + (position - below) * (high - low)))
    return values[0], values[1]


def to_display(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Any image (uint8/uint16/float, gray or RGB) as uint8 RGB stretched to ``value_range``
    (default: its :func:`display_range`)."""
    low, high = display_range(image) if value_range is None else value_range
    array = image.astype(np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    scaled = np.clip((array - low) / max(high - low, 1e-6), 0, 1)
    gray = (scaled * 255).astype(np.uint8)
    return np.stack([gray] * 3, axis=-1) if gray.ndim == 2 else gray


def overlay_outlines(image: np.ndarray, labels: np.ndarray, colour=OUTLINE_COLOUR) -> np.ndarray:
    """The image in gray with the boundaries of ``labels`` drawn in ``colour`` (uint8 RGB)."""
    canvas = to_display(image).copy()
    canvas[label_boundaries(labels)] = colour
    return canvas


def overlay_prediction(
    image: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray | None = None,
    legend: bool = False,
    instances: bool = False,
) -> np.ndarray:
    """Predicted foreground tinted, its outline in cyan and (if given) the true outline in red.

    Drawn a block of rows at a time (with one row of context for the outlines), so the memory beyond the
    uint8 RGB result does not grow with the image.

    Args:
        image: Gray or RGB, any dtype.
        predicted: Class indices [H, W] (foreground > 0).
        truth: True class indices [H, W], outlined if given.
        legend: Add the :func:`legend_band` naming the colours below the image (for an overlay file); the image
            keeps its pixel coordinates. Drawn into the result directly: appending it would copy the overlay.
        instances: ``predicted`` (and ``truth``) hold instance ids: each predicted object gets a tint of its own
            (:data:`INSTANCE_COLOURS`) and the outlines separate objects, so merged and split cells show.

    Returns:
        uint8 RGB [H, W, 3], or [H + legend_height(W), W, 3] with ``legend``.
    """
    value_range = display_range(image)
    height, rows = image.shape[0], _block_rows(image)
    band = legend_band(image.shape[1], overlay_legend(truth is not None)) if legend else None
    canvas = np.empty((height + (0 if band is None else band.shape[0]), image.shape[1], 3), np.uint8)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        context = slice(max(top - 1, 0), min(bottom + 1, height))
        block = _overlay_block(
            image[context], predicted[context], None if truth is None else truth[context], value_range, instances
        )
        canvas[top:bottom] = block[top - context.start : bottom - context.start]
    if band is not None:
        canvas[height:] = band
    return canvas


def overlay_legend(truth: bool) -> list[tuple[str, tuple[int, int, int]]]:
    """The legend entries of :func:`overlay_prediction`: the prediction and, if drawn, the truth."""
    entries = [("prediction", PREDICTION_COLOUR)]
    return entries + [("truth (label)", OUTLINE_COLOUR)] if truth else entries


def _legend_scale(width: int) -> int:
    # The band grows with wide images, so it stays legible when a large overlay is viewed whole.
    return max(1, width // 1000)


def legend_height(width: int) -> int:
    """Rows of the :func:`legend_band` of an image ``width`` pixels wide (24, more above 2000 pixels)."""
    return LEGEND_ROWS * _legend_scale(width)


def legend_band(width: int, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """A dark strip ``width`` pixels wide with a colour swatch and a name per entry, uint8 RGB.

    Where the entries do not fit side by side (a narrow image), each gets an equal share of the width: every
    swatch is drawn and the names are cut at the next entry's share, so no colour goes unexplained.
    """
    scale = _legend_scale(width)
    band = np.full((legend_height(width), width, 3), LEGEND_BACKGROUND, np.uint8)
    font, font_scale, swatch = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, 12 * scale
    top = (band.shape[0] - swatch) // 2
    sizes = [cv2.getTextSize(text, font, font_scale, scale)[0] for text, _ in entries]
    widths = [swatch + 5 * scale + text_width + 14 * scale for text_width, _ in sizes]
    if 6 * scale + sum(widths) <= width:  # side by side, each name whole
        starts = [6 * scale + sum(widths[:index]) for index in range(len(entries))]
        ends = [width] * len(entries)
    else:
        share = width // max(1, len(entries))
        starts = [index * share + 3 * scale for index in range(len(entries))]
        ends = [(index + 1) * share for index in range(len(entries))]
    for (text, colour), (_, text_height), x, end in zip(entries, sizes, starts, ends):
        cv2.rectangle(band, (x, top), (x + swatch - 1, top + swatch - 1), colour, cv2.FILLED)
        x += swatch + 5 * scale
        baseline = top + (swatch + text_height) // 2
        if x < end:  # drawn into a view of its share, so OpenCV cuts the name at the share's edge
            cv2.putText(band[:, x:end], text, (0, baseline), font, font_scale, LEGEND_TEXT, scale, cv2.LINE_AA)
    return band


def _overlay_block(image, predicted, truth, value_range, instances: bool = False) -> np.ndarray:
    canvas = to_display(image, value_range).astype(np.float32)
    mask = predicted > 0
    if instances:
        tint = INSTANCE_COLOURS[(predicted[mask].astype(np.int64) - 1) % len(INSTANCE_COLOURS)]
        canvas[mask] = 0.6 * canvas[mask] + 0.4 * tint
    else:
        canvas[mask] = 0.75 * canvas[mask] + 0.25 * np.array(PREDICTION_COLOUR, np.float32)
    canvas = canvas.astype(np.uint8)
    canvas[label_boundaries(predicted)] = PREDICTION_COLOUR
    if truth is not None:
        canvas[label_boundaries(truth)] = OUTLINE_COLOUR
    return canvas


def heatmap(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A float map as an RGB heat map (0 -> dark, vmax -> bright)."""
    vmax = float(values.max()) if vmax is None else vmax
    scaled = np.clip(values / max(vmax, 1e-6), 0, 1)
    coloured = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)


def label_text(panel: np.ndarray, text: str) -> np.ndarray:
    out = panel.copy()
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def grid(panels: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Tiles equally sized RGB panels into one image with a white gap."""
    height = max(p.shape[0] for p in panels)
    width = max(p.shape[1] for p in panels)
    rows = (len(panels) + columns - 1) // columns
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        y, x = row * (height + gap), column * (width + gap)
        canvas[y : y + panel.shape[0], x : x + panel.shape[1]] = panel
    return canvas


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    return write_image(path, rgb)


def validation_triptych(example: dict) -> np.ndarray:
    """Input, predicted foreground probability and true outlines of a validation frame, uint8 [3, H, W, 3]."""
    image = to_display(example["image"])
    foreground = example["foreground"]
    prediction = (np.stack([foreground] * 3, -1) * 255).astype(np.uint8)
    label = overlay_outlines(example["image"], example["classes"])
    return np.stack([image, prediction, label])


def _number(value) -> float:
    """A history value as a float; missing, empty (an epoch without validation) or unparsable is NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _points(rows: list[dict], values: Sequence[float]) -> list[tuple[float, float]]:
    """(epoch, value) of each row whose epoch and value are finite numbers."""
    pairs = ((_number(row.get("epoch")), value) for row, value in zip(rows, values))
    return [(epoch, value) for epoch, value in pairs if np.isfinite(epoch) and np.isfinite(value)]


def _column(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return _points(rows, [_number(row.get(key)) for row in rows])


def _epoch_seconds(rows: list[dict]) -> list[tuple[float, float]]:
    """Seconds of each epoch from the cumulative ``seconds`` of the run (the first epoch's is its own)."""
    previous, durations = 0.0, []
    for row in rows:
        total = _number(row.get("seconds"))
        durations.append(total - previous)
        previous = total if np.isfinite(total) else previous
    return _points(rows, durations)


def history_panels(rows: list[dict], metrics: Sequence[str]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """The data :func:`plot_history` draws: panel title -> series name -> (epoch, value) points.

    Args:
        rows: History rows (dicts as ``history.csv`` holds them; values may be strings, empty when an epoch had
            no validation).
        metrics: Validation columns to show; ``val_loss`` goes with the training loss, the others (scores in
            [0, 1]) share a panel. Columns without a single value are left out.

    Returns:
        Four panels in drawing order: loss, validation metrics, learning rate and seconds per epoch.
    """
    loss = {"loss": _column(rows, "loss")}
    if "val_loss" in metrics:
        loss["val_loss"] = _column(rows, "val_loss")
    panels = {
        "loss": loss,
        "validation metrics": {key: _column(rows, key) for key in metrics if key != "val_loss"},
        "learning rate": {"learning_rate": _column(rows, "learning_rate")},
        "seconds per epoch": {"seconds": _epoch_seconds(rows)},
    }
    return {title: {name: points for name, points in series.items() if points} for title, series in panels.items()}


def history_figure(rows: list[dict], title: str, metrics: Sequence[str]) -> Figure:
    """The four panels of :func:`history_panels` as a matplotlib Figure (no pyplot: no global state).

    Args:
        rows: History rows (see :func:`history_panels`).
        title: The figure's title.
        metrics: Validation columns to show.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7), dpi=100)
    # Fixed margins (room for the legends right of the top panels): matplotlib's constrained layout drew
    # the same figure in 0.55 s instead of 0.2 s, and training.png is redrawn at every epoch's end.
    figure.subplots_adjust(left=0.10, right=0.82, bottom=0.08, top=0.91, wspace=0.6, hspace=0.22)
    figure.suptitle(title)
    grid_axes = figure.subplots(2, 2, sharex=True)
    epochs = sorted({epoch for epoch, _ in _column(rows, "epoch")})
    for axes, (name, series) in zip(grid_axes.ravel(), history_panels(rows, metrics).items()):
        _draw_panel(axes, name, series)
    for axes in grid_axes[1]:
        axes.set_xlabel("epoch")
    _epoch_ticks(grid_axes[0, 0], epochs)
    return figure


_Y_LABELS = {"loss": "loss", "validation metrics": "score", "learning rate": "learning rate",
             "seconds per epoch": "seconds"}  # fmt: skip
# Curves of up to this many points get a marker per epoch (a single epoch would otherwise draw nothing).
_MARKER_POINTS = 40


def _draw_panel(axes, name: str, series: dict[str, list[tuple[float, float]]]) -> None:
    axes.set_title(name)
    axes.grid(True, color="0.9")
    for label, points in series.items():
        epochs, values = zip(*points)
        marker = "o" if len(points) <= _MARKER_POINTS else None
        axes.plot(epochs, values, label=label, marker=marker, markersize=4, linewidth=1.5)
    if not series:
        note = "no validation" if name == "validation metrics" else "no data"
        axes.text(0.5, 0.5, note, transform=axes.transAxes, ha="center", va="center", color="0.5")
        axes.set_yticks([])
        return
    axes.set_ylabel(_Y_LABELS[name])
    values = [value for points in series.values() for _, value in points]
    if name == "learning rate" and min(values) > 0 and max(values) > 10 * min(values):
        axes.set_yscale("log")
    else:
        axes.ticklabel_format(axis="y", useOffset=False)  # a constant rate reads 0.001, not 1e-3 + 0
    if name == "seconds per epoch":
        # From 0: a few seconds of jitter should not look like a doubling (all zero: 0 to 1, not a singular axis).
        axes.set_ylim(0, 1.08 * max(values) or 1.0)
    if name in ("loss", "validation metrics"):
        # Outside the axes, so it never hides a curve.
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _epoch_ticks(axes, epochs: list[float]) -> None:
    """Integer epoch ticks on the (shared) x axis; one epoch gets one tick, not an axis from 1 to 1."""
    from matplotlib.ticker import MaxNLocator

    if len(epochs) == 1:
        axes.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        axes.set_xticks(epochs)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(rows: list[dict], path: str | os.PathLike, title: str, metrics: Sequence[str]) -> Path:
    """Writes ``training.png`` (atomically, also to a URI): the four panels of :func:`history_figure`.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(history_figure(rows, title, metrics))
    canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])
    return write_image(path, rgb, reuse=True)
