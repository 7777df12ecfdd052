"""What the EM and the DIC cells generators share: image sizes, seeds, smooth random fields and warps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

Size = int | tuple[int, int]
Seed = int | np.random.Generator | np.random.SeedSequence | None


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


def _ramp(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A linear ramp in a random direction: 0 at the image centre, about -0.5 to 0.5 across the longer side
    (uneven illumination)."""
    height, width = shape
    ys, xs = np.indices(shape, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    return (math.cos(angle) * (xs - width / 2) + math.sin(angle) * (ys - height / 2)) / max(height, width)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
