"""DIC images of touching HeLa-like cells with uint16 instance masks in the Cell Tracking Challenge
convention (0 = background, ids 1..N).

Neighbouring cells share borders directly; the image shows the relief of the cells' optical path length as a
directional derivative (the DIC "shadow" look), so a border between two touching cells is only weakly visible.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from kunet.metrics import label_boundaries
from kunet.synthetic._common import Seed, Size, _ramp, _shape, _smooth_noise, _to_uint8, _warp


def _place_cells(
    rng: np.random.Generator, shape: tuple[int, int], count: int, coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (y, x) and radii: most cells are placed against an earlier one so that they touch."""
    height, width = shape
    mean_radius = math.sqrt(coverage * height * width / (count * math.pi))
    radii = mean_radius * rng.uniform(0.75, 1.25, size=count)
    centres = np.zeros((count, 2), dtype=np.float64)
    for index in range(count):
        radius = radii[index]
        for attempt in range(60):
            if index and rng.random() < 0.8 and attempt < 50:
                # Overlapping an earlier cell's disc: the overlap is split between the two, giving a
                # shared border.
                other = int(rng.integers(0, index))
                direction = rng.uniform(0, 2 * math.pi)
                distance = (radius + radii[other]) * rng.uniform(0.72, 0.92)
                centre = centres[other] + distance * np.array([math.sin(direction), math.cos(direction)])
                minimum = 0.68
            else:
                centre = rng.uniform((0, 0), (height, width))
                minimum = 0.9 if attempt < 50 else 0.6
            if not (0 <= centre[0] < height and 0 <= centre[1] < width):
                continue
            # Too deep into another cell and one of the two would be swallowed.
            if index == 0 or (np.hypot(*(centres[:index] - centre).T) / (radii[:index] + radius)).min() >= minimum:
                break
        centres[index] = centre
    return centres, radii


def _cell_territories(
    rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Irregular blobs around the centres: int32 ids, 0 = background, ``i + 1`` for cell ``i``.

    Each blob is a star-shaped outline (an ellipse modulated by a few harmonics). Where two overlap, a
    pixel goes to the cell it is relatively deeper in, which splits the overlap along a curve: the two
    cells then share that border with no gap.
    """
    height, width = shape
    depth = np.full(shape, np.inf, dtype=np.float32)
    ids = np.zeros(shape, dtype=np.int32)
    for index, ((cy, cx), radius) in enumerate(zip(centres, radii)):
        elongation = rng.uniform(1.0, 1.7)
        orientation = rng.uniform(0, math.pi)
        harmonics = [(k, rng.normal(0.0, 0.16 / k), rng.uniform(0, 2 * math.pi)) for k in range(2, 7)]
        scale = radius * math.sqrt(elongation)  # elongated cells keep the area of a disc of this radius
        reach = int(scale * (1.0 + sum(abs(amplitude) for _, amplitude, _ in harmonics))) + 2
        y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        ys, xs = np.ogrid[y0:y1, x0:x1]
        dy, dx = (ys - cy).astype(np.float32), (xs - cx).astype(np.float32)
        u = dx * math.cos(orientation) + dy * math.sin(orientation)
        v = (dy * math.cos(orientation) - dx * math.sin(orientation)) * elongation
        theta = np.arctan2(v, u)
        outline = np.ones_like(theta)
        for k, amplitude, phase in harmonics:
            outline += amplitude * np.cos(k * theta + phase)
        rho = np.hypot(u, v) / (scale * np.maximum(outline, 0.3))
        window = depth[y0:y1, x0:x1]
        better = rho < window
        window[better] = rho[better]
        ids[y0:y1, x0:x1][better] = index + 1
    ids[depth > 1.0] = 0
    return ids


def _clean_instances(ids: np.ndarray, min_area: int) -> np.ndarray:
    """Keeps each id's largest 8-connected piece, gives stray pieces to a neighbour, renumbers 1..N."""
    stray = np.zeros(ids.shape, dtype=bool)
    for value in np.unique(ids):
        if value == 0:
            continue
        mask = (ids == value).astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count > 2:
            keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            stray |= (components != keep) & (components > 0)
    ids = np.where(stray, 0, ids)
    # Stray pieces lie between other cells; growing the neighbours into them avoids holes in a cluster.
    for _ in range(4):
        if not stray.any():
            break
        grown = cv2.dilate(ids.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
        fill = stray & (grown > 0)
        ids[fill] = grown[fill]
        stray &= ~fill
    values, areas = np.unique(ids, return_counts=True)
    kept = values[(values > 0) & (areas >= min_area)]
    lookup = np.zeros(int(ids.max()) + 1, dtype=np.uint16)
    lookup[kept] = np.arange(1, len(kept) + 1, dtype=np.uint16)
    return lookup[ids]


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of instance ids that are 4-adjacent somewhere (no background between).

    Args:
        instances: Integer [H, W] instance mask, 0 = background.

    Returns:
        The set of touching id pairs.
    """
    pairs: set[tuple[int, int]] = set()
    for first, second in (
        (instances[:, 1:], instances[:, :-1]),
        (instances[1:, :], instances[:-1, :]),
    ):
        contact = (first != second) & (first > 0) & (second > 0)
        low = np.minimum(first[contact], second[contact]).astype(np.int64)
        high = np.maximum(first[contact], second[contact]).astype(np.int64)
        unique = np.unique(np.stack([low, high], axis=1), axis=0)
        pairs.update((int(x), int(y)) for x, y in unique)
    return pairs


def make_cells_sample(
    size: Size = 512, rng: Seed = None, num_cells: tuple[int, int] = (8, 16)
) -> tuple[np.ndarray, np.ndarray]:
    """One DIC image of HeLa-like cells, many of them touching, with its instance mask (CTC convention).

    Args:
        size: Image size in pixels, ``n`` for n x n or ``(height, width)``. Cells scale with the image,
            so that ``num_cells`` of them cover about half of it.
        rng: Seed or generator; the same seed gives the same sample. ``None`` draws fresh entropy.
        num_cells: Inclusive range of how many cells to grow. A cell squeezed out by its neighbours or
            mostly outside the image is dropped, so a sample can hold a few fewer.

    Returns:
        ``(image, instances)``: uint8 [H, W] DIC-like image and uint16 [H, W] instance mask with 0 for
        background and consecutive ids 1..N.
    """
    rng = np.random.default_rng(rng)
    shape = _shape(size)
    low, high = int(num_cells[0]), int(num_cells[1])
    if not 1 <= low <= high:
        raise ValueError(f"num_cells must be a range (low, high) with 1 <= low <= high, got {num_cells}")

    centres, radii = _place_cells(rng, shape, int(rng.integers(low, high + 1)), rng.uniform(0.42, 0.6))
    mean_radius = float(radii.mean())
    ids = _cell_territories(rng, shape, centres, radii)
    ids = _warp(ids.astype(np.float32), rng, ((40.0, 0.05 * mean_radius), (9.0, 1.2))).astype(np.int32)
    instances = _clean_instances(ids, min_area=int(0.08 * math.pi * mean_radius**2))
    opl = _optical_path_length(rng, instances, centres, mean_radius)
    return _dic_image(rng, opl), instances


def _optical_path_length(
    rng: np.random.Generator, instances: np.ndarray, centres: np.ndarray, mean_radius: float
) -> np.ndarray:
    """Relief of the cells: float32 map of roughly 0 (background) to 1.3 (nucleoli)."""
    shape = instances.shape
    foreground = instances > 0
    # A flat-topped dome per cell (steep rise, plateau), slightly different heights per cell; where cells
    # touch the plateaus meet, so their shared border is only a shallow groove (added below).
    inside = cv2.distanceTransform(foreground.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    plateau = 1.0 - np.exp(-inside / (rng.uniform(0.12, 0.22) * mean_radius))
    opl = plateau * rng.uniform(0.8, 1.0, size=int(instances.max()) + 1).astype(np.float32)[instances]
    # A ridge just inside the outline: the cell edge shows as a bright/dark line pair, as in real DIC.
    opl += rng.uniform(0.15, 0.3) * np.exp(-(((inside - 3.0) / 2.0) ** 2)) * foreground

    nuclei = np.zeros(shape, dtype=np.float32)
    granules = np.zeros(shape, dtype=np.float32)
    for value in range(1, int(instances.max()) + 1):
        ys, xs = np.nonzero(instances == value)
        extent = math.sqrt(len(ys) / math.pi)
        cx, cy = xs.mean() + rng.normal(0, 0.1 * extent), ys.mean() + rng.normal(0, 0.1 * extent)
        axes = (int(extent * rng.uniform(0.35, 0.5)), int(extent * rng.uniform(0.3, 0.45)))
        cv2.ellipse(nuclei, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, float(rng.uniform(0.12, 0.25)), -1)
        for _ in range(rng.integers(1, 4)):  # nucleoli
            oy, ox = rng.normal(0, 0.25, size=2) * axes[::-1]
            cv2.circle(nuclei, (int(cx + ox), int(cy + oy)), int(rng.integers(2, 5)), float(rng.uniform(0.25, 0.4)), -1)
        # Granules and vesicles, denser in some cells than in others and crowded around the nucleus;
        # each looks like a bright or a dark dot with a shadow.
        scattered = rng.integers(0, len(ys), size=int(rng.uniform(0.0005, 0.003) * len(ys)))
        crowded = np.array([cy, cx]) + rng.normal(0, 0.45 * extent, size=(int(rng.integers(0, 40)), 2))
        for y, x in np.concatenate([np.stack([ys[scattered], xs[scattered]], axis=1), crowded]):
            amplitude = 0.35 * rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.0)
            cv2.circle(granules, (int(x), int(y)), max(1, int(round(rng.uniform(1.2, 2.8)))), float(amplitude), -1)
    opl += cv2.GaussianBlur(nuclei, (0, 0), 2.0) + granules * foreground

    contact = label_boundaries(instances) & (cv2.erode(foreground.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    groove = cv2.GaussianBlur(contact.astype(np.float32), (0, 0), 1.2)
    opl -= rng.uniform(0.06, 0.15) * groove / max(float(groove.max()), 1e-6)
    opl += foreground * (0.04 * _smooth_noise(rng, shape, 3.0) + 0.05 * _smooth_noise(rng, shape, 12.0))

    # Filopodia just outside the outline, pointing away from the cell (not in the mask, as in the real
    # annotations).
    outline = np.argwhere(label_boundaries(foreground) & ~foreground)
    if len(outline):
        for y, x in outline[rng.integers(0, len(outline), size=int(rng.integers(20, 60)))]:
            nearest = centres[np.argmin(np.hypot(centres[:, 0] - y, centres[:, 1] - x))]
            angle = math.atan2(y - nearest[0], x - nearest[1]) + rng.normal(0, 0.5)
            length = rng.uniform(5.0, 18.0)
            end = (int(x + length * math.cos(angle)), int(y + length * math.sin(angle)))
            cv2.line(opl, (int(x), int(y)), end, float(rng.uniform(0.3, 0.6)), 1)
    return opl


def _dic_image(rng: np.random.Generator, opl: np.ndarray) -> np.ndarray:
    """DIC rendering: the derivative of the (optically blurred) path length along the shear direction,
    a little absorption, uneven illumination, background texture and camera noise."""
    shape = opl.shape
    opl = cv2.GaussianBlur(opl, (0, 0), 1.3)
    shear = math.radians(rng.uniform(115.0, 155.0))
    gx = cv2.Sobel(opl, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(opl, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    relief = math.cos(shear) * gx - math.sin(shear) * gy
    image = rng.uniform(105.0, 130.0) + rng.uniform(300.0, 420.0) * relief - rng.uniform(10.0, 16.0) * opl
    image += 2.0 * _smooth_noise(rng, shape, 6.0)
    ramp = _ramp(rng, shape)
    image *= 1.0 + 0.05 * _smooth_noise(rng, shape, 250.0) + rng.uniform(0.0, 0.12) * ramp
    image += rng.normal(0.0, rng.uniform(2.0, 3.5), size=shape).astype(np.float32)
    return _to_uint8(image)
