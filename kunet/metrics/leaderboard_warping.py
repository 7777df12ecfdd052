"""The ISBI 2012 leaderboard's warping error (minimum splits and mergers), as Fiji's ``WarpingError`` computes it.

The ground truth is warped towards the binarised proposal by flipping simple points one at a time in Fiji's
order (most confident first, then column by column), so plain Python; the simple-point table is kunet's own
(:mod:`kunet.metrics.warping`), checked equal to Fiji's ``simple3d`` on all 256 neighbourhoods. Conventions:
:mod:`kunet.metrics.leaderboard`.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike

from kunet.metrics.leaderboard import WARPING_THRESHOLDS, SweepResult, _components, _stacks, _sweep
from kunet.metrics.warping import _simple_point_table

_SPLIT, _MERGE, _OTHER = 1, 2, 0


def _fiji_warp(truth: np.ndarray, proposal: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``WarpingError.simplePointWarp2d`` without a mask: the truth relaxed towards the binarised proposal.

    Every sweep visits the current mismatches sorted by |p - t| (most confident first; ties in Fiji's
    column-major order) and flips each one that is simple *at that moment* (foreground 4-, background
    8-connected; the table equals Fiji's ``simple2DBertrand(patch, 4)`` on all 256 neighbourhoods), one at a
    time, so later pixels see earlier flips. Sweeps repeat until one flips nothing. The image is surrounded
    by background.

    Returns:
        The warped truth (bool [H, W]) and the remaining mismatches as (row, col) [M, 2].
    """
    height, width = truth.shape
    target = proposal > threshold
    stride = height + 2  # column-major padded layout, index = (x + 1) * stride + (y + 1)
    warped = np.pad(truth, 1).T.ravel().astype(np.uint8).tolist()
    priority = np.abs(proposal.astype(np.float64) - threshold).astype(np.float32)
    xs, ys = np.nonzero((truth != target).T)  # column-major order
    order = np.argsort(-priority[ys, xs], kind="stable")
    xs, ys = xs[order], ys[order]
    candidates = ((xs + 1) * stride + ys + 1).tolist()
    table = _simple_point_table().tolist()
    # Neighbour bits in kunet's table order (row offset, column offset), as flat offsets of this layout.
    offsets = [dx * stride + dy for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))]
    o0, o1, o2, o3, o4, o5, o6, o7 = offsets
    while candidates:
        remaining = []
        for index in candidates:
            code = (warped[index + o0] | warped[index + o1] << 1 | warped[index + o2] << 2 | warped[index + o3] << 3
                    | warped[index + o4] << 4 | warped[index + o5] << 5 | warped[index + o6] << 6
                    | warped[index + o7] << 7)  # fmt: skip
            if table[code]:
                warped[index] ^= 1
            else:
                remaining.append(index)
        if len(remaining) == len(candidates):
            break
        candidates = remaining
    warped_image = np.array(warped, dtype=bool).reshape(width + 2, height + 2).T[1:-1, 1:-1]
    flat = np.asarray(candidates, dtype=np.int64)
    return warped_image, np.stack([flat % stride - 1, flat // stride - 1], axis=1)


def _flip_splits(components: np.ndarray, boxes: np.ndarray, row: int, col: int, radius: int) -> int:
    """Distinct component ids around (row, col) after it is set to background (``classifyMismatches2d``)."""
    height, width = components.shape
    if radius < 1 or radius > width or radius > height:
        top, left = max(row - 1, 0), max(col - 1, 0)
        neighbours = components[top : row + 2, left : col + 2]
        own = components[row, col]
        ids = {int(v) for v in np.unique(neighbours) if v != own}
        # Only the pixel's own component can fall apart; find its pieces within its bounding box.
        x0, y0, box_width, box_height = boxes[own, :4]
        piece = (components[y0 : y0 + box_height, x0 : x0 + box_width] == own).astype(np.uint8)
        piece[row - y0, col - x0] = 0
        pieces = _components(piece)
        window = pieces[max(row - 1 - y0, 0) : row + 2 - y0, max(col - 1 - x0, 0) : col + 2 - x0]
        return len(ids) + len({int(v) for v in np.unique(window) if v != 0})
    # A window of side 2r+1 around the pixel, outside the image read as background (ImageJ's getPixel).
    padded = np.pad(components != 0, radius)
    window = padded[row : row + 2 * radius + 1, col : col + 2 * radius + 1].copy()
    window[radius, radius] = False
    pieces = _components(window)
    around = pieces[radius - 1 : radius + 2, radius - 1 : radius + 2].copy().ravel().tolist()
    del around[4]
    return len(set(around))


def _classify(warped: np.ndarray, mismatches: np.ndarray, radius: int) -> np.ndarray:
    """SPLIT, MERGE or other for each remaining mismatch, by ``WarpingError.classifyMismatches2d``.

    From the 4-connected components of the warped truth and the ids among a mismatch's 8 neighbours
    (inside the image): background mismatches next to two or more objects are mergers; foreground mismatches
    next to two or more objects are splits, and so are those next to background and one object whose
    removal leaves more than two ids around (the object falls apart). Everything else (object and hole
    additions and deletions) is neither.
    """
    _, components, boxes, _ = cv2.connectedComponentsWithStats(warped.astype(np.uint8), connectivity=4)
    padded = np.pad(components, 1, constant_values=-1)
    rows, cols = mismatches[:, 0], mismatches[:, 1]
    around = np.stack([padded[rows + 1 + dy, cols + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx], 1)
    around = np.sort(around, axis=1)
    distinct = (around >= 0) & np.concatenate([np.ones((len(around), 1), bool), around[:, 1:] != around[:, :-1]], 1)
    count = distinct.sum(axis=1)
    foreground = components[rows, cols] != 0
    kinds = np.full(len(mismatches), _OTHER, dtype=np.int8)
    kinds[(count > 2) & ~foreground] = _MERGE
    kinds[(count > 2) & foreground] = _SPLIT
    for index in np.flatnonzero((count == 2) & foreground):
        if _flip_splits(components, boxes, int(rows[index]), int(cols[index]), radius) > 2:
            kinds[index] = _SPLIT
    return kinds


def _splits_and_mergers(warped: np.ndarray, mismatches: np.ndarray, radius: int, cluster_by_error: bool) -> int:
    """Splits + mergers of one slice: pixels (by type) or clusters (by error; mergers 8-, splits 4-connected)."""
    if len(mismatches) == 0:
        return 0
    kinds = _classify(warped, mismatches, radius)
    if not cluster_by_error:
        return int(np.count_nonzero(kinds != _OTHER))
    total = 0
    for kind, connectivity in ((_MERGE, 8), (_SPLIT, 4)):
        mask = np.zeros(warped.shape, dtype=np.uint8)
        mask[mismatches[kinds == kind, 0], mismatches[kinds == kind, 1]] = 1
        total += cv2.connectedComponents(mask, connectivity=connectivity)[0] - 1
    return total


def leaderboard_warping_error(
    proposals: ArrayLike,
    truths: ArrayLike,
    thresholds=WARPING_THRESHOLDS,
    cluster_by_error: bool = False,
    radius: int = -1,
) -> SweepResult:
    """ISBI 2012 warping error: the minimum over thresholds of splits and mergers per pixel
    (``WarpingError.getMinimumSplitsAndMergersErrorValue``).

    At each threshold t every slice's truth is warped towards the binarised proposal by flipping simple
    points (:func:`_fiji_warp`); the remaining mismatches are classified (:func:`_classify`) and

        error(t) = Σ_slices (splits + mergers) / (S · H · W),     warping error = min_t error(t)

    counting mismatch pixels when ``cluster_by_error`` is False (Fiji's ``clusterMismatchesByType``), or
    connected groups of them when True (``clusterMismatchesByError``).

    Args:
        proposals: Cell probabilities [S, H, W] (or a binary decision, with ``BINARY_THRESHOLDS``).
        truths: ISBI labels [S, H, W]: 0 = membrane, nonzero = cell.
        thresholds: The sweep (default that of Fiji's documented call, 0.0 to 0.9).
        cluster_by_error: Fiji's ``clusterByError``.
        radius: Fiji's ``radius`` for the split test (-1 = whole image).

    Returns:
        The error, the first threshold reaching it and the error at every threshold.
    """
    proposal, truth = _stacks(proposals, truths)
    pixels = truth.size
    errors = []
    for threshold in thresholds:
        total = 0
        for slice_proposal, slice_truth in zip(proposal, truth, strict=True):
            warped, mismatches = _fiji_warp(slice_truth, slice_proposal, threshold)
            total += _splits_and_mergers(warped, mismatches, radius, cluster_by_error)
        errors.append(total / pixels)
    best, threshold = _sweep(errors, tuple(thresholds), maximise=False, start=float(np.finfo(np.float64).max))
    return SweepResult(best, threshold, tuple(errors), tuple(thresholds))
