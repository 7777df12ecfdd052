"""Border thinning and the thinned V_rand / V_info of the ISBI 2012 leaderboard (Fiji's code).

Fiji's ``WatershedTransform2D`` floods the proposal's membrane pixels from its cell components, one pixel at a
time in Fiji's queue order (so plain Python: the order decides ties), then ``RandError`` /
``VariationOfInformation`` score the thinned segments. Conventions: :mod:`kunet.metrics.leaderboard`.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.typing import ArrayLike

from kunet.metrics.leaderboard import (
    THRESHOLDS,
    LeaderboardInputError,
    SweepResult,
    _components,
    _f_score,
    _information_f_score,
    _Overlap,
    _overlap,
    _rand_counts,
    _stacks,
    _sweep,
)

_MASK, _WSHED, _INIT, _INQUEUE = -2, 0, -1, -3


def _neighbours(index: int, height: int, width: int) -> list[int]:
    """4-neighbours of a column-major flat index in Fiji's order: left, up, right, down."""
    x, y = divmod(index, height)
    found = []
    if x > 0:
        found.append(index - height)
    if y > 0:
        found.append(index - 1)
    if x < width - 1:
        found.append(index + height)
    if y < height - 1:
        found.append(index + 1)
    return found


def _flood(tab: list[int], membrane: list[int], height: int, width: int) -> None:
    """Fiji's single-FIFO flood of the membrane pixels from the basins, in place on ``tab``."""
    fifo: deque[int] = deque()
    for index in membrane:
        for other in _neighbours(index, height, width):
            if tab[other] >= _WSHED:
                fifo.append(index)
                tab[index] = _INQUEUE
                break
    flag = False
    while fifo:
        index = fifo.popleft()
        for other in _neighbours(index, height, width):
            value = tab[other]
            if value > 0:
                own = tab[index]
                if own == _INQUEUE or (own == _WSHED and flag):
                    tab[index] = value
                elif own > 0 and own != value:
                    tab[index] = _WSHED
                    flag = False
            elif value == _WSHED:
                if tab[index] == _INQUEUE:
                    tab[index] = _WSHED
                    flag = True
            elif value == _MASK:
                tab[other] = _INQUEUE
                fifo.append(other)


def thin_borders(cell_mask: ArrayLike) -> np.ndarray:
    """Segments of a binary proposal after border thinning, as ``WatershedTransform2D(binary, 4).apply()``.

    The proposal's membrane pixels are flooded from the 4-connected cell components (the basins) by Fiji's
    single-FIFO Vincent-Soille flood: membrane pixels join the basin that reaches them first, and pixels
    reached by two basins at once become the 1-pixel watershed line (label 0). Membrane regions no basin
    reaches become basins of their own. Pixels are visited in Fiji's order (columns, then rows; neighbours
    left, up, right, down), so ties resolve as in Fiji.

    Args:
        cell_mask: 2-D binary proposal, nonzero = cell.

    Returns:
        int32 labels: 0 = watershed line, 1..K = thinned segments.
    """
    cells = np.asarray(cell_mask) != 0
    if cells.ndim != 2:
        raise LeaderboardInputError(f"expected a 2-D image, got shape {cells.shape}")
    height, width = cells.shape
    if cells.all() or not cells.any():
        # A flat image has one level: every connected region of it is a basin.
        return _components(np.ones_like(cells))
    # Basins in Fiji's raster order (x outer, y inner) are the cell components; numbering is irrelevant.
    labels = _components(cells).T.copy()  # [x, y], flat index x * height + y
    flat = labels.ravel().astype(np.int64)
    flat[flat == 0] = _MASK
    tab = flat.tolist()
    membrane = np.flatnonzero(~cells.T.ravel()).tolist()  # column-major order = Fiji's sorted order

    _flood(tab, membrane, height, width)
    result = np.array(tab, dtype=np.int64).reshape(width, height).T
    unreached = result == _MASK
    if unreached.any():
        extra = _components(unreached)
        result[unreached] = extra[unreached] + int(result.max(initial=0))
    result[result < 0] = 0
    return result.astype(np.int32)


def _thinned_overlaps(proposal: np.ndarray, truth: np.ndarray, thresholds) -> list[list[_Overlap]]:
    """[threshold][slice] overlaps of the thinned proposal with the truth's segments."""
    truth_segments = [_components(mask) for mask in truth]
    return [
        [_overlap(segments, thin_borders(slice_proposal > threshold)) for slice_proposal, segments in
         zip(proposal, truth_segments, strict=True)]
        for threshold in thresholds
    ]  # fmt: skip


def _v_rand(overlaps: list[_Overlap], per_slice_average: bool) -> float:
    counts = [_rand_counts(overlap) for overlap in overlaps]
    if per_slice_average:
        return float(np.mean([_f_score(*c) for c in counts]))
    return _f_score(*map(float, np.sum(counts, axis=0)))


def leaderboard_v_rand(
    proposals: ArrayLike, truths: ArrayLike, thresholds=THRESHOLDS, per_slice_average: bool = True
) -> SweepResult:
    """V_rand after border thinning, the current leaderboard's ranking score
    (``RandError.getMaximalVRandAfterThinning``).

    At each threshold t every slice's binarised proposal is thinned (:func:`thin_borders`) and scored with
    the N^2 foreground-restricted Rand counts of :func:`leaderboard_rand_error` (watershed-line pixels inside
    true cells are singletons). The challenge's script passes ``perSliceAverage = true``: the F-score of
    each slice is averaged over the slices (macro average); ``False`` sums TP/FP/FN first. V_rand is the
    maximum over thresholds (higher is better).

    Args:
        proposals: Cell probabilities [S, H, W] (or a binary decision, with ``BINARY_THRESHOLDS``).
        truths: ISBI labels [S, H, W]: 0 = membrane, nonzero = cell.
        thresholds: The sweep.
        per_slice_average: Fiji's ``perSliceAverage`` flag.

    Returns:
        The score, its first threshold and the score at every threshold.
    """
    proposal, truth = _stacks(proposals, truths)
    scores = [_v_rand(row, per_slice_average) for row in _thinned_overlaps(proposal, truth, thresholds)]
    best, threshold = _sweep(scores, tuple(thresholds), maximise=True, start=0.0)
    return SweepResult(best, threshold, tuple(scores), tuple(thresholds))


def leaderboard_v_info(proposals: ArrayLike, truths: ArrayLike, thresholds=THRESHOLDS) -> SweepResult:
    """V_info after border thinning (``VariationOfInformation.getMaximalVInfoAfterThinning``).

    Each slice's thinned proposal is scored with the information-theoretic F-score of
    ``foregroundRestrictedFscore`` (see :func:`_information_f_score`); the slice scores are averaged
    (Fiji always averages per slice here) and the maximum over thresholds is V_info (higher is better).

    Args:
        proposals: Cell probabilities [S, H, W] (or a binary decision, with ``BINARY_THRESHOLDS``).
        truths: ISBI labels [S, H, W]: 0 = membrane, nonzero = cell.
        thresholds: The sweep.

    Returns:
        The score, its first threshold and the score at every threshold.
    """
    proposal, truth = _stacks(proposals, truths)
    overlaps = _thinned_overlaps(proposal, truth, thresholds)
    scores = [float(np.mean([_information_f_score(o) for o in row])) for row in overlaps]
    best, threshold = _sweep(scores, tuple(thresholds), maximise=True, start=0.0)
    return SweepResult(best, threshold, tuple(scores), tuple(thresholds))


def leaderboard_thinned_scores(
    proposals: ArrayLike, truths: ArrayLike, thresholds=THRESHOLDS, per_slice_average: bool = True
) -> tuple[SweepResult, SweepResult]:
    """V_rand and V_info after thinning from one thinning pass (the watershed is the slow part).

    Returns:
        (V_rand, V_info) as :func:`leaderboard_v_rand` and :func:`leaderboard_v_info` return them.
    """
    proposal, truth = _stacks(proposals, truths)
    overlaps = _thinned_overlaps(proposal, truth, thresholds)
    results = []
    for score in (
        lambda row: _v_rand(row, per_slice_average),
        lambda row: float(np.mean([_information_f_score(o) for o in row])),
    ):
        values = [score(row) for row in overlaps]
        best, threshold = _sweep(values, tuple(thresholds), maximise=True, start=0.0)
        results.append(SweepResult(best, threshold, tuple(values), tuple(thresholds)))
    return results[0], results[1]
