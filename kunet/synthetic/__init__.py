"""Synthetic microscopy datasets that kunet generates itself (for ``make demo`` and the tests).

Two generators mimic the paper's data sets closely enough that a U-Net has something real to learn,
while needing nothing but NumPy and OpenCV:

* :func:`make_em_sample`: serial-section EM of neural tissue in the ISBI 2012 convention (label 0 =
  membrane, 255 = cell interior). A curved, weighted Voronoi tessellation gives cells of very different
  sizes; membranes vary in thickness and contrast and are faint or broken in places where the label still
  has them; dark organelles (mitochondria, vesicles, dense granules, ER strands) sit inside cells and stay
  255; granular texture, blur, noise and smooth illumination changes complete the picture.
* :func:`make_cells_sample`: DIC images of touching HeLa-like cells with uint16 instance masks in the
  Cell Tracking Challenge convention (0 = background, ids 1..N). Neighbouring cells share borders
  directly; the image shows the relief of the cells' optical path length as a directional derivative
  (the DIC "shadow" look), so a border between two touching cells is only weakly visible.

:func:`write_em_dataset` and :func:`write_cells_dataset` lay samples out as the real data sets are laid
out (``images/slice_NN.png`` + ``labels/slice_NN.png``; ``NN/tXXX.tif`` + ``NN_GT/SEG/man_segXXX.tif``),
atomically, with a ``SYNTHETIC.json`` that records how they were made.

Every generator takes ``rng``: a seed or a ``numpy.random.Generator``; the same seed gives the same arrays.
:func:`otsu_foreground` is the naive baseline the tests hold the data against: a global Otsu threshold
scores a foreground IoU of about 0.57-0.76 on the EM samples, and its connected components merge most
touching cells.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import cv2
import numpy as np

from kunet import __version__
from kunet._fs import building_directory, check_output, commit_directory, sweep_temporaries

__all__ = [
    "EMParts",
    "make_em_sample",
    "make_cells_sample",
    "write_em_dataset",
    "write_cells_dataset",
    "sample_rng",
    "otsu_foreground",
    "foreground_iou",
    "touching_pairs",
]

Size = int | tuple[int, int]
Seed = int | np.random.Generator | np.random.SeedSequence | None

MEMBRANE = 0
INTERIOR = 255
MARKER = "SYNTHETIC.json"  # proof that kunet made a dataset folder (so --overwrite may replace it)


# --- small helpers ------------------------------------------------------------------------------------


def _shape(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        height = width = int(size)
    else:
        height, width = (int(v) for v in size)
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least 16x16 pixels, got {height}x{width}")
    return height, width


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth random field of unit standard deviation whose features are about ``scale`` pixels wide."""
    height, width = shape
    grid_h = max(2, int(math.ceil(height / scale)) + 2)
    grid_w = max(2, int(math.ceil(width / scale)) + 2)
    coarse = rng.standard_normal((grid_h, grid_w)).astype(np.float32)
    # Smoothing the coarse grid (cheap) rather than the full-size field keeps the grid from showing.
    coarse = cv2.GaussianBlur(coarse, (0, 0), 0.7, borderType=cv2.BORDER_REFLECT)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    std = float(field.std())
    return (field - float(field.mean())) / (std if std > 1e-6 else 1.0)


def _warp(image: np.ndarray, rng: np.random.Generator, bends: Sequence[tuple[float, float]]) -> np.ndarray:
    """Looks ``image`` up through a smooth random displacement (nearest neighbour, so ids stay ids).

    ``bends`` lists (feature size, amplitude) pairs in pixels; large bends plus small wiggles turn
    straight Voronoi edges into curved, slightly irregular borders. Amplitudes well below the feature
    size keep the mapping from folding over.
    """
    shape = image.shape[:2]
    ys, xs = np.indices(shape, dtype=np.float32)
    for scale, amplitude in bends:
        xs += amplitude * _smooth_noise(rng, shape, scale)
        ys += amplitude * _smooth_noise(rng, shape, scale)
    return cv2.remap(image, xs, ys, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (both sides of every border are marked)."""
    edge = np.zeros(labels.shape, dtype=bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest ``True`` pixel of ``mask``."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --- EM (ISBI 2012 convention) ------------------------------------------------------------------------


@dataclass(frozen=True)
class EMParts:
    """What an EM sample is made of (for tests and debugging).

    Attributes:
        cells: int32 [H, W] id of the tessellation cell of every pixel (membranes included).
        membrane: bool [H, W], True where a membrane was drawn (exactly where the label is 0).
        blobs: bool [H, W], dark intracellular structures (mitochondria, vesicles, granules, ER strands);
            never overlaps ``membrane``.
        faint: bool [H, W], membrane pixels drawn with little or no contrast (still labelled 0).
    """

    cells: np.ndarray
    membrane: np.ndarray
    blobs: np.ndarray
    faint: np.ndarray


def _em_seeds(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres and seed radii: a few big cells, then dart throwing with a varying spacing."""
    height, width = shape
    margin = 40
    big_h, big_w = height + 2 * margin, width + 2 * margin
    occupied = np.zeros((big_h, big_w), dtype=np.uint8)
    centres: list[tuple[float, float]] = []
    radii: list[float] = []

    # Big cells (large dendrites / somata sections): seeds drawn as discs make an additively weighted
    # Voronoi diagram, whose cells are large and rounded.
    area_factor = (height * width) / 512.0**2
    for _ in range(rng.poisson(3.5 * area_factor)):
        radius = rng.uniform(35.0, 75.0)
        y, x = rng.uniform(0, big_h), rng.uniform(0, big_w)
        if occupied[int(y), int(x)]:
            continue
        centres.append((y, x))
        radii.append(radius * rng.uniform(0.45, 0.7))
        cv2.circle(occupied, (int(x), int(y)), int(radius * 1.15), 1, -1)

    # Spacing varies smoothly: bundles of thin axons next to regions of medium-sized profiles.
    log_spacing = _smooth_noise(rng, (big_h, big_w), 120.0)
    spacing = np.clip(np.exp(np.log(34.0) + 0.4 * log_spacing), 14.0, 80.0).astype(np.float32)
    candidates = rng.uniform((0, 0), (big_h, big_w), size=(int(big_h * big_w / 150), 2))
    for y, x in candidates:
        iy, ix = int(y), int(x)
        if occupied[iy, ix]:
            continue
        local = float(spacing[iy, ix]) * rng.uniform(0.8, 1.2)
        centres.append((y, x))
        radii.append(rng.uniform(0.0, 0.2) * local)
        cv2.circle(occupied, (ix, iy), int(local), 1, -1)
    return np.asarray(centres, dtype=np.float32) - margin, np.asarray(radii, dtype=np.float32)


def _em_tessellation(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Curved, additively weighted Voronoi tessellation: int32 cell ids."""
    height, width = shape
    margin = 40
    big_h, big_w = height + 2 * margin, width + 2 * margin
    centres, radii = _em_seeds(rng, shape)
    seeds = np.full((big_h, big_w), 255, dtype=np.uint8)
    for (y, x), radius in zip(centres + margin, radii):
        cv2.circle(seeds, (int(x), int(y)), int(radius), 0, -1)
    # Each seed (a point or a disc) is one connected component of zeros; the labelled distance transform
    # assigns every pixel to its nearest seed, i.e. computes the Voronoi diagram in one pass.
    _, ids = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_CCOMP)
    ids = _warp(ids.astype(np.float32), rng, bends=((110.0, 8.0), (30.0, 3.5), (12.0, 0.8)))
    return ids[margin : margin + height, margin : margin + width].astype(np.int32)


def _em_membranes(rng: np.random.Generator, cells: np.ndarray) -> np.ndarray:
    """Membrane mask: the tessellation's borders thickened to about 2-8 px, thickness varying smoothly."""
    boundary = _boundaries(cells)
    if not boundary.any():  # a tiny image inside a single cell
        return boundary
    distance = _distance_to(boundary)
    # Each side of a border gets its own cell's half-width, so one membrane can be lopsided and two
    # membranes of the same cell look alike; a smooth factor varies it along the membrane.
    half_width = rng.uniform(0.8, 2.8, size=int(cells.max()) + 1).astype(np.float32)[cells]
    half_width *= np.clip(1.0 + 0.3 * _smooth_noise(rng, cells.shape, 40.0), 0.5, 1.5)
    # Scale all widths so that the membrane fraction approaches a target like the real data's 17-27 %;
    # the limits keep every membrane 2-9 px thick when a tessellation is unusually coarse or fine.
    target = rng.uniform(0.15, 0.22)
    scale = float(np.clip(np.quantile(distance / half_width, target), 0.7, 1.5))
    membrane = boundary | (distance <= np.clip(scale * half_width, 0.0, 3.5))
    # Opening the interiors rounds the polygon corners, so profiles look round and membranes widen into
    # small dark wedges where three cells meet (as in real tissue); it never removes membrane.
    radius = int(rng.integers(4, 8))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx((~membrane).astype(np.uint8), cv2.MORPH_OPEN, disc) == 0


def _em_organelles(rng: np.random.Generator, membrane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dark intracellular structures: (darkness in [0, 1] float32, blob mask bool), never on membranes."""
    height, width = membrane.shape
    darkness = np.zeros((height, width), dtype=np.float32)
    clearance = _distance_to(membrane)
    area_factor = height * width / 512.0**2

    def place(extent: float) -> tuple[int, int] | None:
        """A random interior point at least ``extent`` + 3 px from every membrane (a few tries)."""
        for _ in range(20):
            y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
            if clearance[y, x] > extent + 3.0:
                return x, y
        return None

    # Mitochondria: dark-rimmed ellipses with cristae across the short axis.
    for _ in range(rng.poisson(12 * area_factor)):
        a, b = rng.uniform(10.0, 28.0), rng.uniform(6.0, 13.0)
        centre = place(b + 1.0)
        if centre is None:
            continue
        angle = rng.uniform(0, 180)
        # Shorten the long axis so that the ellipse stays inside its cell.
        a = min(a, max(b, float(clearance[centre[1], centre[0]]) - 3.0))
        axes = (int(a), int(b))
        cv2.ellipse(darkness, centre, axes, angle, 0, 360, float(rng.uniform(0.25, 0.45)), -1)
        cv2.ellipse(darkness, centre, axes, angle, 0, 360, float(rng.uniform(0.5, 0.7)), 2)
        theta = math.radians(angle)
        along, across = np.array([math.cos(theta), math.sin(theta)]), np.array([-math.sin(theta), math.cos(theta)])
        for u in rng.uniform(-0.55, 0.55, size=rng.integers(2, 6)) * a:
            half = 0.85 * b * math.sqrt(max(0.0, 1.0 - (u / a) ** 2))
            p = np.asarray(centre) + u * along
            cv2.line(
                darkness,
                tuple(int(v) for v in p - half * across),
                tuple(int(v) for v in p + half * across),
                float(rng.uniform(0.4, 0.6)),
                1,
            )

    # Vesicle clusters: small dark rings with lighter centres.
    for _ in range(rng.poisson(8 * area_factor)):
        spread = rng.uniform(8.0, 20.0)
        centre = place(spread * 0.5)
        if centre is None:
            continue
        ring = float(rng.uniform(0.35, 0.55))
        for _ in range(rng.integers(4, 16)):
            x, y = (np.asarray(centre) + rng.normal(0.0, spread * 0.5, size=2)).astype(int)
            radius = int(rng.integers(2, 5))
            if 0 <= x < width and 0 <= y < height and clearance[y, x] > radius + 2:
                cv2.circle(darkness, (int(x), int(y)), radius, 0.08, -1)
                cv2.circle(darkness, (int(x), int(y)), radius, ring, 1)

    # Dense granules: small, very dark dots.
    for _ in range(rng.poisson(30 * area_factor)):
        radius = float(rng.uniform(1.5, 3.5))
        centre = place(radius)
        if centre is not None:
            cv2.circle(darkness, centre, int(round(radius)), float(rng.uniform(0.5, 0.75)), -1)

    # ER strands: short, curved dark lines that look like a piece of membrane when seen up close.
    for _ in range(rng.poisson(16 * area_factor)):
        start = place(4.0)
        if start is None:
            continue
        heading, points = rng.uniform(0, 2 * math.pi), [np.asarray(start, dtype=np.float64)]
        for _ in range(rng.integers(3, 7)):
            heading += rng.normal(0.0, 0.35)
            step = points[-1] + rng.uniform(5.0, 9.0) * np.array([math.cos(heading), math.sin(heading)])
            x, y = int(step[0]), int(step[1])
            if not (0 <= x < width and 0 <= y < height) or clearance[y, x] < 6.0:
                break
            points.append(step)
        if len(points) >= 3:
            cv2.polylines(
                darkness,
                [np.asarray(points, dtype=np.int32)],
                False,
                float(rng.uniform(0.35, 0.6)),
                int(rng.integers(2, 4)),
            )

    darkness[membrane] = 0.0
    blobs = darkness > 0.0

    # Speckle of tiny dark particles (ribosomes, glycogen): part of the cytoplasm's grainy texture, too
    # small and faint to count as blobs.
    for _ in range(rng.poisson(500 * area_factor)):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if clearance[y, x] > 3.0 and not blobs[y, x]:
            cv2.circle(darkness, (x, y), int(rng.integers(1, 3)), float(rng.uniform(0.15, 0.35)), -1)
    darkness[membrane] = 0.0
    return darkness, blobs


@overload
def make_em_sample(
    size: Size = 512, rng: Seed = None, *, return_parts: Literal[False] = False
) -> tuple[np.ndarray, np.ndarray]: ...


@overload
def make_em_sample(
    size: Size = 512, rng: Seed = None, *, return_parts: Literal[True]
) -> tuple[np.ndarray, np.ndarray, EMParts]: ...


def make_em_sample(size: Size = 512, rng: Seed = None, *, return_parts: bool = False):
    """One EM image of neural tissue with its membrane label, in the ISBI 2012 convention.

    Args:
        size: Image size in pixels, ``n`` for n x n or ``(height, width)``.
        rng: Seed or generator; the same seed gives the same sample. ``None`` draws fresh entropy.
        return_parts: Also return the :class:`EMParts` the sample was made of.

    Returns:
        ``(image, label)``: uint8 [H, W] gray image and uint8 [H, W] label with 0 where a membrane was
        drawn and 255 elsewhere; with ``return_parts`` a third element, the :class:`EMParts`.
    """
    rng = np.random.default_rng(rng)
    shape = _shape(size)
    height, width = shape

    cells = _em_tessellation(rng, shape)
    membrane = _em_membranes(rng, cells)
    organelles, blobs = _em_organelles(rng, membrane)

    # Cytoplasm: a brightness per cell (some processes are much darker), mottling and fine grain.
    count = int(cells.max()) + 1
    level = rng.uniform(0.66, 0.8, size=count)
    dark_cells = rng.random(count) < 0.1
    level[dark_cells] = rng.uniform(0.5, 0.62, size=int(dark_cells.sum()))
    grain = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 1.5)
    grain *= rng.uniform(0.1, 0.16) / float(grain.std())
    image = level.astype(np.float32)[cells] * (1.0 + 0.07 * _smooth_noise(rng, shape, 25.0) + grain)

    # Membrane contrast varies along the membranes; where a coarse random field is high the membrane
    # almost vanishes (still labelled), so only its context tells the net it is there.
    contrast = np.clip(0.58 + 0.14 * _smooth_noise(rng, shape, 40.0), 0.3, 0.85)
    faint = membrane & (_smooth_noise(rng, shape, 22.0) > 1.35)
    contrast[faint] *= rng.uniform(0.05, 0.3)
    darkness = np.where(membrane, contrast, organelles)
    image *= 1.0 - darkness

    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(1.0, 1.6))
    # Uneven section thickness / illumination: a smooth multiplicative field and a linear ramp.
    ys, xs = np.indices(shape, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(angle) * (xs - width / 2) + math.sin(angle) * (ys - height / 2)) / max(height, width)
    image *= 1.0 + 0.12 * _smooth_noise(rng, shape, 200.0) + rng.uniform(0.0, 0.35) * ramp
    image = 255.0 * (rng.uniform(-0.12, 0.02) + rng.uniform(0.85, 1.05) * image)
    image += rng.normal(0.0, rng.uniform(4.0, 9.0), size=shape).astype(np.float32)

    label = np.where(membrane, MEMBRANE, INTERIOR).astype(np.uint8)
    image = _to_uint8(image)
    if return_parts:
        return image, label, EMParts(cells=cells, membrane=membrane, blobs=blobs, faint=faint)
    return image, label


# --- DIC cells (Cell Tracking Challenge convention) ---------------------------------------------------


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

    contact = _boundaries(instances) & (cv2.erode(foreground.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    groove = cv2.GaussianBlur(contact.astype(np.float32), (0, 0), 1.2)
    opl -= rng.uniform(0.06, 0.15) * groove / max(float(groove.max()), 1e-6)
    opl += foreground * (0.04 * _smooth_noise(rng, shape, 3.0) + 0.05 * _smooth_noise(rng, shape, 12.0))

    # Filopodia just outside the outline, pointing away from the cell (not in the mask, as in the real
    # annotations).
    outline = np.argwhere(_boundaries(foreground) & ~foreground)
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
    height, width = shape = opl.shape
    opl = cv2.GaussianBlur(opl, (0, 0), 1.3)
    shear = math.radians(rng.uniform(115.0, 155.0))
    gx = cv2.Sobel(opl, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(opl, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    relief = math.cos(shear) * gx - math.sin(shear) * gy
    image = rng.uniform(105.0, 130.0) + rng.uniform(300.0, 420.0) * relief - rng.uniform(10.0, 16.0) * opl
    image += 2.0 * _smooth_noise(rng, shape, 6.0)
    ys, xs = np.indices(shape, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(angle) * (xs - width / 2) + math.sin(angle) * (ys - height / 2)) / max(height, width)
    image *= 1.0 + 0.05 * _smooth_noise(rng, shape, 250.0) + rng.uniform(0.0, 0.12) * ramp
    image += rng.normal(0.0, rng.uniform(2.0, 3.5), size=shape).astype(np.float32)
    return _to_uint8(image)


# --- dataset writers -----------------------------------------------------------------------------------


def _write(path: Path, image: np.ndarray) -> None:
    # cv2.imwrite reports most failures by returning False rather than raising.
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: cv2.imwrite failed for a {image.dtype} array of shape {image.shape}")


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator the dataset writers use for sample ``index`` of a dataset with seed ``seed``.

    A sample depends only on ``(seed, stream, index)``, so a larger dataset starts with a smaller one's
    samples and any written sample can be regenerated in memory.

    Args:
        seed: Dataset seed (non-negative).
        index: Sample (frame) number, from 0.
        stream: 0 for EM datasets; the position of the sequence for cells datasets.

    Returns:
        A fresh ``numpy.random.Generator``.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _write_dataset(
    out_dir: str | os.PathLike, overwrite: bool, fill: Callable[[Path], None], log: Callable[[str], None] | None
) -> Path:
    """Builds a dataset in a temporary sibling of ``out_dir`` and moves it into place once complete.

    An existing ``out_dir`` is refused unless ``overwrite``, and even then unless kunet made it (it holds a
    ``SYNTHETIC.json``, or is empty) and it is not the working directory, the home folder or one holding
    them; this is checked before generating anything and again before replacing. On any error the
    temporary directory is removed and ``out_dir`` is left as it was. Temporaries of writers that were
    killed are removed first (see :func:`kunet._fs.sweep_temporaries`).
    """
    out = Path(out_dir).absolute()
    check_output(out, overwrite, [MARKER])
    sweep_temporaries(out, log)
    with building_directory(out) as temporary:
        fill(temporary)
        commit_directory(temporary, out, overwrite, [MARKER])
    return out


def _write_manifest(folder: Path, manifest: dict) -> None:
    manifest = {**manifest, "kunet_version": __version__}
    (folder / MARKER).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def write_em_dataset(
    out_dir: str | os.PathLike,
    count: int,
    size: Size = 512,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Writes ``count`` EM samples in the ISBI 2012 layout: ``images/slice_NN.png``, ``labels/slice_NN.png``.

    Args:
        out_dir: Dataset folder to create.
        count: Number of image/label pairs (at least 1).
        size: Image size, ``n`` or ``(height, width)``.
        seed: Seed of the whole dataset; sample ``i`` is ``make_em_sample(size, sample_rng(seed, i))``.
        overwrite: Replace an existing ``out_dir`` made by kunet (only once the new dataset is complete).
        log: Reports the temporaries of killed writers that were removed (or kept, and why).

    Returns:
        The absolute path of the dataset folder.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or (UnsafeOverwriteError) it is not
            a kunet dataset folder, or is or holds the working directory or the home folder.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    height, width = _shape(size)
    digits = max(2, len(str(count - 1)))

    def fill(folder: Path) -> None:
        (folder / "images").mkdir()
        (folder / "labels").mkdir()
        for index in range(count):
            image, label = make_em_sample((height, width), sample_rng(seed, index))
            name = f"slice_{index:0{digits}d}.png"
            _write(folder / "images" / name, image)
            _write(folder / "labels" / name, label)
        _write_manifest(
            folder,
            {
                "generator": "kunet.synthetic.make_em_sample",
                "layout": "isbi2012",
                "parameters": {"size": [height, width]},
                "seed": seed,
                "count": count,
                "labels": {"membrane": MEMBRANE, "interior": INTERIOR},
            },
        )

    return _write_dataset(out_dir, overwrite, fill, log)


def write_cells_dataset(
    out_dir: str | os.PathLike,
    count: int,
    size: Size = 512,
    seed: int = 0,
    sequences: Sequence[str] = ("01",),
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Writes DIC cell samples in the Cell Tracking Challenge layout.

    Every sequence ``NN`` gets ``count`` frames ``NN/tXXX.tif`` (uint8) with instance masks
    ``NN_GT/SEG/man_segXXX.tif`` (uint16, 0 = background, ids 1..N). Frames are independent samples, not
    a time series.

    Args:
        out_dir: Dataset folder to create.
        count: Frames per sequence (at least 1).
        size: Image size, ``n`` or ``(height, width)``.
        seed: Seed of the whole dataset; frame ``i`` of the ``k``-th sequence is
            ``make_cells_sample(size, sample_rng(seed, i, stream=k))``.
        sequences: Sequence names, e.g. ``("01", "02")``.
        overwrite: Replace an existing ``out_dir`` made by kunet (only once the new dataset is complete).
        log: Reports the temporaries of killed writers that were removed (or kept, and why).

    Returns:
        The absolute path of the dataset folder.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or (UnsafeOverwriteError) it is not
            a kunet dataset folder, or is or holds the working directory or the home folder.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if isinstance(sequences, str):
        sequences = (sequences,)
    sequences = tuple(str(name) for name in sequences)
    if not sequences or len(set(sequences)) != len(sequences):
        raise ValueError(f"sequences must be distinct names, got {sequences}")
    for name in sequences:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"invalid sequence name {name!r}")
    height, width = _shape(size)
    digits = max(3, len(str(count - 1)))

    def fill(folder: Path) -> None:
        for stream, name in enumerate(sequences):
            (folder / name).mkdir()
            (folder / f"{name}_GT" / "SEG").mkdir(parents=True)
            for index in range(count):
                image, instances = make_cells_sample((height, width), sample_rng(seed, index, stream))
                number = f"{index:0{digits}d}"
                _write(folder / name / f"t{number}.tif", image)
                _write(folder / f"{name}_GT" / "SEG" / f"man_seg{number}.tif", instances)
        _write_manifest(
            folder,
            {
                "generator": "kunet.synthetic.make_cells_sample",
                "layout": "cell-tracking-challenge",
                "parameters": {"size": [height, width], "num_cells": [8, 16]},
                "seed": seed,
                "count": count,
                "sequences": list(sequences),
            },
        )

    return _write_dataset(out_dir, overwrite, fill, log)


# --- naive baselines ------------------------------------------------------------------------------------


def otsu_foreground(image: np.ndarray, sigma: float = 1.0, dark: bool = False) -> np.ndarray:
    """The naive baseline: a global Otsu threshold of the Gaussian-blurred image.

    Args:
        image: uint8 [H, W] image.
        sigma: Standard deviation of the blur in pixels (0 for none).
        dark: Foreground is darker than the threshold (DIC cells) instead of brighter (EM cell interiors).

    Returns:
        bool [H, W] foreground mask.
    """
    blurred = cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image
    _, thresholded = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    foreground = thresholded > 0
    return ~foreground if dark else foreground


def foreground_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean foreground masks (1.0 when both are empty)."""
    union = np.count_nonzero(prediction | truth)
    return np.count_nonzero(prediction & truth) / union if union else 1.0
