"""Pictures people look at instead of numbers: overlays, weight-map panels, grids and training curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from kunet.imageio import write_image
from kunet.metrics import label_boundaries

OUTLINE_COLOUR = (255, 64, 32)  # RGB
PREDICTION_COLOUR = (40, 220, 255)


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


def overlay_prediction(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """Predicted foreground tinted, its outline in cyan and (if given) the true outline in red.

    Drawn a block of rows at a time (with one row of context for the outlines), so the memory beyond the
    uint8 RGB result does not grow with the image.
    """
    value_range = display_range(image)
    height, rows = image.shape[0], _block_rows(image)
    canvas = np.empty((height, image.shape[1], 3), np.uint8)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        context = slice(max(top - 1, 0), min(bottom + 1, height))
        block = _overlay_block(
            image[context], predicted[context], None if truth is None else truth[context], value_range
        )
        canvas[top:bottom] = block[top - context.start : bottom - context.start]
    return canvas


def _overlay_block(image, predicted, truth, value_range) -> np.ndarray:
    canvas = to_display(image, value_range).astype(np.float32)
    tint = np.array(PREDICTION_COLOUR, np.float32)
    mask = predicted > 0
    canvas[mask] = 0.75 * canvas[mask] + 0.25 * tint
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


def plot_curves(
    path: str | os.PathLike, series: dict[str, Sequence[tuple[float, float]]], title: str = "", x_label: str = ""
) -> Path:
    """A small line plot of named (x, y) series drawn with OpenCV (no matplotlib dependency).

    The legend sits right of the axes so it never hides a curve.
    """
    width, height, margin, legend_width = 900, 400, 50, 190
    right = width - legend_width
    canvas = np.full((height, width, 3), 255, np.uint8)
    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (90, 90, 90)
    points = [p for values in series.values() for p in values if np.isfinite(p[1])]
    if points:
        xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        x0, x1 = float(xs.min()), float(max(xs.max(), xs.min() + 1e-9))
        y0, y1 = float(min(ys.min(), 0.0)), float(max(ys.max(), 1e-9))
        to_px = lambda x, y: (  # noqa: E731
            int(margin + (x - x0) / (x1 - x0) * (right - margin)),
            int(height - margin - (y - y0) / (y1 - y0) * (height - 2 * margin)),
        )
        cv2.rectangle(canvas, (margin, margin), (right, height - margin), (180, 180, 180), 1)
        for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
            value = y0 + fraction * (y1 - y0)
            _, py = to_px(x0, value)
            cv2.line(canvas, (margin, py), (right, py), (235, 235, 235), 1)
            cv2.putText(canvas, f"{value:.3g}", (2, py + 4), font, 0.4, grey, 1)
        cv2.putText(canvas, f"{x0:g}", (margin, height - margin + 16), font, 0.4, grey, 1)
        cv2.putText(canvas, f"{x1:g}", (right - 30, height - margin + 16), font, 0.4, grey, 1)
        if x_label:
            cv2.putText(canvas, x_label, ((margin + right) // 2 - 20, height - margin + 30), font, 0.45, grey, 1)
        palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
        for index, (name, values) in enumerate(series.items()):
            colour = palette[index % len(palette)]
            finite = [to_px(x, y) for x, y in values if np.isfinite(y)]
            for a, b in zip(finite, finite[1:]):
                cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
            for p in finite if len(finite) < 40 else []:
                cv2.circle(canvas, p, 3, colour, -1, cv2.LINE_AA)
            label_y = margin + 16 + 20 * index
            cv2.line(canvas, (right + 12, label_y - 4), (right + 32, label_y - 4), colour, 2, cv2.LINE_AA)
            cv2.putText(canvas, name, (right + 38, label_y), font, 0.42, colour, 1, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (margin, 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return save_png(path, canvas)


def validation_triptych(example: dict) -> np.ndarray:
    """Input, predicted foreground probability and true outlines of a validation frame, uint8 [3, H, W, 3]."""
    image = to_display(example["image"])
    foreground = example["probabilities"][..., -1]
    prediction = (np.stack([foreground] * 3, -1) * 255).astype(np.uint8)
    label = overlay_outlines(example["image"], example["classes"])
    return np.stack([image, prediction, label])


def plot_history(rows: list[dict], path: str | os.PathLike, title: str, metrics: Sequence[str]) -> Path:
    """``training.png``: the training loss and every metric of ``metrics`` a run's history holds, per epoch."""
    series = {"train loss": [(float(r["epoch"]), float(r["loss"])) for r in rows]}
    for key in metrics:
        if rows and key in rows[-1]:
            series[key] = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return plot_curves(path, series, title=title, x_label="epoch")
