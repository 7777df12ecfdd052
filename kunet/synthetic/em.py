"""Serial-section EM of neural tissue in the ISBI 2012 convention: label 0 = membrane, 255 = cell interior.

A curved, weighted Voronoi tessellation gives cells of very different sizes; membranes vary in thickness and
contrast and are faint or broken in places where the label still has them; dark organelles (mitochondria,
vesicles, dense granules, ER strands) sit inside cells and stay 255; granular texture, blur, noise and smooth
illumination changes complete the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import cv2
import numpy as np

from kunet.metrics import label_boundaries
from kunet.synthetic._common import Seed, Size, _ramp, _shape, _smooth_noise, _to_uint8, _warp

MEMBRANE = 0
INTERIOR = 255


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest ``True`` pixel of ``mask``."""
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)


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
    boundary = label_boundaries(cells)
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


class _Interior:
    """The cells' interiors as the organelle painters see them: a darkness map to draw into, every pixel's
    distance to the nearest membrane, and random interior points."""

    def __init__(self, rng: np.random.Generator, membrane: np.ndarray):
        self.rng = rng
        self.height, self.width = membrane.shape
        self.darkness = np.zeros((self.height, self.width), dtype=np.float32)
        self.clearance = _distance_to(membrane)
        self.area_factor = self.height * self.width / 512.0**2

    def count(self, per_512_squared: float) -> int:
        """A Poisson number of structures, ``per_512_squared`` of them on average in a 512 x 512 image."""
        return self.rng.poisson(per_512_squared * self.area_factor)

    def place(self, extent: float) -> tuple[int, int] | None:
        """A random interior point at least ``extent`` + 3 px from every membrane (a few tries)."""
        for _ in range(20):
            y, x = int(self.rng.integers(0, self.height)), int(self.rng.integers(0, self.width))
            if self.clearance[y, x] > extent + 3.0:
                return x, y
        return None

    def contains(self, x: int, y: int) -> bool:
        return 0 <= x < self.width and 0 <= y < self.height


def _mitochondria(interior: _Interior) -> None:
    """Dark-rimmed ellipses with cristae across the short axis."""
    rng, darkness = interior.rng, interior.darkness
    for _ in range(interior.count(12)):
        a, b = rng.uniform(10.0, 28.0), rng.uniform(6.0, 13.0)
        centre = interior.place(b + 1.0)
        if centre is None:
            continue
        angle = rng.uniform(0, 180)
        # Shorten the long axis so that the ellipse stays inside its cell.
        a = min(a, max(b, float(interior.clearance[centre[1], centre[0]]) - 3.0))
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


def _vesicle_clusters(interior: _Interior) -> None:
    """Small dark rings with lighter centres, in clusters."""
    rng, darkness = interior.rng, interior.darkness
    for _ in range(interior.count(8)):
        spread = rng.uniform(8.0, 20.0)
        centre = interior.place(spread * 0.5)
        if centre is None:
            continue
        ring = float(rng.uniform(0.35, 0.55))
        for _ in range(rng.integers(4, 16)):
            x, y = (np.asarray(centre) + rng.normal(0.0, spread * 0.5, size=2)).astype(int)
            radius = int(rng.integers(2, 5))
            if interior.contains(x, y) and interior.clearance[y, x] > radius + 2:
                cv2.circle(darkness, (int(x), int(y)), radius, 0.08, -1)
                cv2.circle(darkness, (int(x), int(y)), radius, ring, 1)


def _dense_granules(interior: _Interior) -> None:
    """Small, very dark dots."""
    rng = interior.rng
    for _ in range(interior.count(30)):
        radius = float(rng.uniform(1.5, 3.5))
        centre = interior.place(radius)
        if centre is not None:
            cv2.circle(interior.darkness, centre, int(round(radius)), float(rng.uniform(0.5, 0.75)), -1)


def _er_strands(interior: _Interior) -> None:
    """Short, curved dark lines that look like a piece of membrane when seen up close."""
    rng = interior.rng
    for _ in range(interior.count(16)):
        start = interior.place(4.0)
        if start is None:
            continue
        heading, points = rng.uniform(0, 2 * math.pi), [np.asarray(start, dtype=np.float64)]
        for _ in range(rng.integers(3, 7)):
            heading += rng.normal(0.0, 0.35)
            step = points[-1] + rng.uniform(5.0, 9.0) * np.array([math.cos(heading), math.sin(heading)])
            x, y = int(step[0]), int(step[1])
            if not interior.contains(x, y) or interior.clearance[y, x] < 6.0:
                break
            points.append(step)
        if len(points) >= 3:
            cv2.polylines(
                interior.darkness,
                [np.asarray(points, dtype=np.int32)],
                False,
                float(rng.uniform(0.35, 0.6)),
                int(rng.integers(2, 4)),
            )


def _speckle(interior: _Interior, blobs: np.ndarray) -> None:
    """Tiny dark particles (ribosomes, glycogen): part of the cytoplasm's grainy texture, too small and faint
    to count as blobs."""
    rng = interior.rng
    for _ in range(interior.count(500)):
        x, y = int(rng.integers(0, interior.width)), int(rng.integers(0, interior.height))
        if interior.clearance[y, x] > 3.0 and not blobs[y, x]:
            cv2.circle(interior.darkness, (x, y), int(rng.integers(1, 3)), float(rng.uniform(0.15, 0.35)), -1)


def _em_organelles(rng: np.random.Generator, membrane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dark intracellular structures: (darkness in [0, 1] float32, blob mask bool), never on membranes."""
    interior = _Interior(rng, membrane)
    for paint in (_mitochondria, _vesicle_clusters, _dense_granules, _er_strands):
        paint(interior)
    darkness = interior.darkness
    darkness[membrane] = 0.0
    blobs = darkness > 0.0
    _speckle(interior, blobs)
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
    ramp = _ramp(rng, shape)
    image *= 1.0 + 0.12 * _smooth_noise(rng, shape, 200.0) + rng.uniform(0.0, 0.35) * ramp
    image = 255.0 * (rng.uniform(-0.12, 0.02) + rng.uniform(0.85, 1.05) * image)
    image += rng.normal(0.0, rng.uniform(4.0, 9.0), size=shape).astype(np.float32)

    label = np.where(membrane, MEMBRANE, INTERIOR).astype(np.uint8)
    image = _to_uint8(image)
    if return_parts:
        return image, label, EMParts(cells=cells, membrane=membrane, blobs=blobs, faint=faint)
    return image, label
