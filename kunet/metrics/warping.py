"""The warping error of Jain et al. (2010): topology-preserving warps by flipping simple points."""

from __future__ import annotations

import functools

import cv2
import numpy as np
from numpy.typing import ArrayLike

from kunet.metrics._common import _as_binary_2d, _same_shape

# Bit k of a neighbourhood code is the neighbour at _NEIGHBOUR_OFFSETS[k] (row, column).
_NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_FOUR_NEIGHBOURS = (np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1]))
# Pixels of one parity class (row % 2, column % 2) lie outside each other's 3x3 neighbourhoods.
_PARITY_CLASSES = ((0, 0), (0, 1), (1, 0), (1, 1))


def _components_touching_centre(patch: np.ndarray, connectivity: int) -> int:
    """Number of components of a 3x3 patch's set pixels (centre excluded) adjacent to the centre."""
    ring = patch.astype(np.uint8)
    ring[1, 1] = 0
    _, labels = cv2.connectedComponents(ring, connectivity=connectivity)
    adjacent = labels[_FOUR_NEIGHBOURS] if connectivity == 4 else labels
    return len(np.unique(adjacent[adjacent > 0]))


@functools.cache
def _simple_point_table() -> np.ndarray:
    """256 booleans: is the centre simple for this 8-neighbour code (foreground 4-, background 8-adjacent)?

    A pixel is simple when flipping it changes no topology: its neighbours contain exactly one
    4-component of foreground touching it through an edge and exactly one 8-component of background
    (Bertrand & Malandain 1994, topological numbers T4 and T8). This is what Fiji's
    ``WarpingError.simple2DBertrand(patch, 4)`` computes.
    """
    table = np.zeros(256, dtype=bool)
    for code in range(256):
        patch = np.zeros((3, 3), dtype=np.uint8)
        for bit, (dy, dx) in enumerate(_NEIGHBOUR_OFFSETS):
            patch[1 + dy, 1 + dx] = (code >> bit) & 1
        table[code] = _components_touching_centre(patch, 4) == 1 and _components_touching_centre(1 - patch, 8) == 1
    return table


def warp_towards(source: ArrayLike, target: ArrayLike) -> np.ndarray:
    """Topology-preserving warp of a binary image towards another by flipping simple points.

    Jain et al. (2010), "Boundary learning by optimization with topological constraints" (CVPR), define
    the warping error through the warp L of the ground truth L* minimising ||T - L||² over warps that
    only flip simple points; Fiji's ``WarpingError`` (the ISBI 2012 implementation) relaxes the ground
    truth into the binarised proposal the same way. Here every pixel where source and target disagree
    is flipped if it is simple in the current source, repeating until no disagreeing pixel is simple.

    Foreground (nonzero) is 4-connected and background 8-connected, and the image is surrounded by
    background, as in Fiji. Flips are done for all candidates of one parity class (row % 2,
    column % 2) at once, which is safe because such pixels are outside each other's 3x3 neighbourhoods,
    cycling through the four classes until a full cycle flips nothing. Fiji flips one pixel at a time in
    column-major order, so where several warps are equally valid the two may keep different pixels.

    Args:
        source: 2-D binary image to warp (the ground truth for the warping error).
        target: 2-D binary image of the same shape to warp towards (the prediction).

    Returns:
        The warped source, bool, with the same foreground/background topology as ``source``.
    """
    source, target = _as_binary_2d(source), _as_binary_2d(target)
    _same_shape(source, target)
    height, width = source.shape
    stride = width + 2
    warped = np.pad(source, 1).ravel()
    offsets = np.array([dy * stride + dx for dy, dx in _NEIGHBOUR_OFFSETS])
    table = _simple_point_table()

    # Only disagreeing pixels are ever flipped, and a flip makes them agree, so each class's candidate
    # list only shrinks.
    rows, cols = np.nonzero(source != target)
    pending = [
        (rows[mask] + 1) * stride + cols[mask] + 1
        for mask in ((rows % 2 == pr) & (cols % 2 == pc) for pr, pc in _PARITY_CLASSES)
    ]
    flipped_any = True
    while flipped_any:
        flipped_any = False
        for index, candidates in enumerate(pending):
            if candidates.size == 0:
                continue
            codes = np.packbits(warped[candidates[:, None] + offsets], axis=1, bitorder="little")[:, 0]
            simple = table[codes]
            if simple.any():
                warped[candidates[simple]] ^= True
                pending[index] = candidates[~simple]
                flipped_any = True
    return warped.reshape(height + 2, stride)[1:-1, 1:-1].copy()


def topological_errors(prediction: ArrayLike, truth: ArrayLike) -> np.ndarray:
    """Mask of the pixels the warping error counts: where the warped truth still differs from the prediction.

    Each split, merge, missing or extra object and missing or extra hole leaves at least one pixel;
    boundary shifts leave none. Useful for visualisation.

    Args:
        prediction: 2-D binary image, nonzero = foreground (cell interior).
        truth: 2-D binary image of the same shape.

    Returns:
        bool mask, True = remaining topological disagreement.
    """
    prediction = _as_binary_2d(prediction)
    return warp_towards(truth, prediction) != prediction


def warping_error(prediction: ArrayLike, truth: ArrayLike) -> float:
    """Warping error of Jain et al. (2010) as evaluated for ISBI 2012 (Fiji ``WarpingError``).

    The ground truth is warped towards the prediction by flipping simple points only (see
    ``warp_towards``: foreground 4-connected, background 8-connected); the error is the fraction of
    pixels that still differ, so it counts topological mistakes (splits, merges, missing/extra objects
    and holes) and ignores boundary shifts. This is Fiji's classic ``getMetricValue(threshold)`` for an
    already binarised prediction. The ISBI 2012 leaderboard instead reported the minimum over
    binarisation thresholds of the pixels classified as splits or mergers only.

    Args:
        prediction: 2-D binary image, nonzero = foreground (cell interior).
        truth: 2-D binary image of the same shape.

    Returns:
        Remaining differing pixels / all pixels.
    """
    return float(topological_errors(prediction, truth).mean())
