"""The ISBI 2012 leaderboard's five scores, as the challenge's Fiji code computes them.

Source of truth: fiji/Trainable_Segmentation, ``src/main/java/trainableSegmentation/metrics/``
(``PixelError``, ``RandError``, ``WarpingError``, ``VariationOfInformation``, ``ClassificationStatistics``)
and ``trainableSegmentation/utils/WatershedTransform2D``. The Java facts each function follows:

* Inputs are stacks: ``proposals`` [S, H, W] (the probability of *cell*, i.e. non-membrane, so a pixel is
  cell where ``proposal > threshold``) and ``truths`` [S, H, W] in the ISBI convention (0 = membrane,
  255 = cell; any nonzero value is cell). A single 2-D image is a stack of one.
* Thresholds are Fiji's ``for (th = min; th <= max; th += step)`` loop in doubles, so 0.1 steps give
  0.0, 0.1, 0.2, 0.30000000000000004, ..., 0.9999999999999999 (11 values for 0..1); pixels are float32
  (ImageJ's ``convertToFloat``) compared with those doubles. A binary decision is scored at the single
  threshold 0.0, as the challenge's script does for binary proposals.
* Segments are 4-connected components of the cell pixels (Fiji's ``Utils.connectedComponents(im, 4)``).
* Rand and information scores use N^2 normalisation: pairs include a pixel with itself, and a pixel the
  proposal calls membrane inside a true cell is a singleton segment of its own.
* ``ClassificationStatistics``: precision = 1 when FP = 0, else TP / (TP + FP); recall = 1 when FN = 0,
  else TP / (TP + FN); F = 2PR / (P + R), or 0 when P + R = 0. The best threshold is the first one that
  reaches the maximum (Fiji keeps a strictly better score only).

Counts here are exact integers; Fiji divides by n and multiplies back in doubles, so its scores can differ
in the last bits (~1e-15).
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import ArrayLike

from kunet.errors import KunetError
from kunet.metrics.warping import _simple_point_table


class LeaderboardInputError(KunetError):
    """Stacks the leaderboard metrics cannot score (shape, dimensions or value range)."""


class SweepResult(NamedTuple):
    """A leaderboard score maximised (or minimised) over binarisation thresholds.

    Attributes:
        value: The reported number (an error for pixel, Rand and warping errors; a score for V_rand and V_info).
        threshold: The first threshold that reached it.
        per_threshold: The value at every threshold, in sweep order.
        thresholds: The thresholds swept.
    """

    value: float
    threshold: float
    per_threshold: tuple[float, ...]
    thresholds: tuple[float, ...]


def fiji_thresholds(minimum: float = 0.0, maximum: float = 1.0, step: float = 0.1) -> tuple[float, ...]:
    """The thresholds of Fiji's sweep loop ``for (th = min; th <= max; th += step)``, accumulated in doubles.

    Args:
        minimum: First threshold.
        maximum: Last threshold allowed (included if the accumulated value does not overshoot it).
        step: Increment.

    Returns:
        The thresholds, e.g. 11 values 0.0 ... 0.9999999999999999 for the defaults.
    """
    if minimum < 0 or minimum > maximum or maximum > 1 or step <= 0:
        raise LeaderboardInputError(
            f"invalid threshold sweep {minimum}..{maximum} step {step} (Fiji needs 0<=min<=max<=1)"
        )
    values, threshold = [], float(minimum)
    while threshold <= maximum:
        values.append(threshold)
        threshold += step
    return tuple(values)


THRESHOLDS = fiji_thresholds(0.0, 1.0, 0.1)
"""The sweep of the challenge's scripts: 0.0 to 1.0 in steps of 0.1."""
WARPING_THRESHOLDS = fiji_thresholds(0.0, 0.9, 0.1)
"""The sweep of Fiji's documented minimum-splits-and-mergers call, ``(0.0, 0.9, 0.1, false)``."""
BINARY_THRESHOLDS = (0.0,)
"""The one threshold the challenge's script uses for binary proposals (``maxThres = binaryProposal ? 0 : 1``)."""


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _stacks(proposals: ArrayLike, truths: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """float32 proposals [S, H, W] (as ImageJ's convertToFloat) and bool cell masks of the truth [S, H, W]."""
    proposal = np.asarray(proposals)
    truth = np.asarray(truths)
    if proposal.ndim == 2:
        proposal = proposal[None]
    if truth.ndim == 2:
        truth = truth[None]
    if proposal.ndim != 3 or truth.ndim != 3:
        raise LeaderboardInputError(
            f"expected stacks [S, H, W] or single images, got {proposal.shape} and {truth.shape}"
        )
    if proposal.shape != truth.shape:
        raise LeaderboardInputError(f"proposal stack {proposal.shape} and truth stack {truth.shape} differ in shape")
    if proposal.dtype == bool:
        proposal = proposal.astype(np.uint8)
    return proposal.astype(np.float32), truth > 0


def _sweep(values: list[float], thresholds: tuple[float, ...], maximise: bool, start: float) -> tuple[float, float]:
    """Fiji's best-value loop: only a strictly better value replaces the running best (NaN never does)."""
    best, best_threshold = start, thresholds[0]
    for value, threshold in zip(values, thresholds, strict=True):
        if (value > best) if maximise else (value < best):
            best, best_threshold = value, threshold
    return best, best_threshold


def _f_score(tp: float, fp: float, fn: float) -> float:
    """``ClassificationStatistics``' F-score (precision 1 without false positives, recall 1 without misses)."""
    if any(math.isnan(v) for v in (tp, fp, fn)):
        return float("nan")
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    return 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean mask, int32 labels 1..K, 0 elsewhere."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    return labels


# ---------------------------------------------------------------------------------------------------------
# Pixel error


def pixel_error_counts(proposals: ArrayLike, truths: ArrayLike, thresholds=THRESHOLDS) -> np.ndarray:
    """TP, FP, FN of pixel similarity at each threshold, summed over the stack (``getPrecisionRecallStats``).

    A positive is a cell pixel: truth > 0, proposal > threshold.

    Returns:
        int64 [len(thresholds), 3].
    """
    proposal, truth = _stacks(proposals, truths)
    cells = np.sort(proposal[truth].astype(np.float64))
    membrane = np.sort(proposal[~truth].astype(np.float64))
    edges = np.asarray(thresholds, dtype=np.float64)
    tp = cells.size - np.searchsorted(cells, edges, side="right")
    fp = membrane.size - np.searchsorted(membrane, edges, side="right")
    fn = cells.size - tp
    return np.stack([tp, fp, fn], axis=1).astype(np.int64)


def leaderboard_pixel_error(proposals: ArrayLike, truths: ArrayLike, thresholds=THRESHOLDS) -> SweepResult:
    """ISBI 2012 pixel error: 1 - the maximal F-score of pixel similarity (``PixelError.getPixelErrorMaximalFScore``).

    At each threshold t, over the whole stack (micro-averaged, not a mean of slices):

        TP = #{truth > 0, p > t},  FP = #{truth = 0, p > t},  FN = #{truth > 0, p <= t}
        F(t) = 2 P R / (P + R),  P = TP / (TP + FP),  R = TP / (TP + FN)
        pixel error = 1 - max_t F(t)

    F at one threshold is the Dice of the cell class, so this is never larger than 1 - Dice at the model's
    own threshold, and usually much smaller than the fraction of misclassified pixels.

    Args:
        proposals: Cell probabilities [S, H, W] (or [H, W]); a binary decision is 0/1 (or bool, or 0/255).
        truths: ISBI labels [S, H, W]: 0 = membrane, nonzero = cell.
        thresholds: The sweep (default 0.0 ... 1.0 step 0.1; ``BINARY_THRESHOLDS`` for a binary decision).

    Returns:
        The error, the threshold of the best F-score and the error at every threshold.
    """
    counts = pixel_error_counts(proposals, truths, thresholds)
    scores = [_f_score(*map(float, row)) for row in counts]
    best, threshold = _sweep(scores, tuple(thresholds), maximise=True, start=0.0)
    return SweepResult(1.0 - best, threshold, tuple(1.0 - s for s in scores), tuple(thresholds))


# ---------------------------------------------------------------------------------------------------------
# Foreground-restricted Rand (N^2) and information scores of one slice


class _Overlap(NamedTuple):
    """Pixel counts of one slice restricted to the truth's cell pixels."""

    cells: np.ndarray  # n_ij, truth segment i >= 1 x proposed segment j >= 1 (non-empty cells only)
    truth_sizes: np.ndarray  # a_i: size of every truth segment
    proposed_sizes: np.ndarray  # b_j: pixels of proposed segment j inside truth cells (j >= 1)
    unassigned: int  # c_0: truth cell pixels the proposal labels 0 (each a singleton segment)
    n: int  # truth cell pixels


def _overlap(truth_segments: np.ndarray, proposed_segments: np.ndarray) -> _Overlap:
    inside = truth_segments > 0
    rows = truth_segments[inside].astype(np.int64)
    cols = proposed_segments[inside].astype(np.int64)
    truth_sizes = np.bincount(rows)[1:]
    truth_sizes = truth_sizes[truth_sizes > 0]
    assigned = cols > 0
    unassigned = int(rows.size - assigned.sum())
    keys = rows[assigned] * (int(cols.max(initial=0)) + 1) + cols[assigned]
    _, cells = np.unique(keys, return_counts=True)
    proposed_sizes = np.bincount(cols[assigned])
    proposed_sizes = proposed_sizes[proposed_sizes > 0]
    return _Overlap(cells, truth_sizes, proposed_sizes, unassigned, int(rows.size))


def _rand_counts(overlap: _Overlap) -> tuple[float, float, float]:
    """TP, FP, FN of ``RandError.getForegroundRestrictedRandIndexStatsN2`` (pairs counted with self-pairs).

    TP = Σ_ij n_ij² + c0,  FP = Σ_j b_j² + c0 - TP,  FN = Σ_i a_i² - TP (a pixel the proposal leaves at 0
    inside a true cell is a segment of its own). NaN for a slice without cell pixels, as in Fiji.
    """
    if overlap.n == 0:
        return float("nan"), float("nan"), float("nan")
    square = lambda values: int(np.sum(values.astype(np.int64) ** 2))  # noqa: E731
    tp = square(overlap.cells) + overlap.unassigned
    fp = square(overlap.proposed_sizes) + overlap.unassigned - tp
    fn = square(overlap.truth_sizes) - tp
    return float(tp), float(fp), float(fn)


def _entropy_sum(sizes: np.ndarray, n: int) -> float:
    """Σ p log p with p = size / n (natural log), over non-empty sizes."""
    p = sizes[sizes > 0].astype(np.float64) / n
    return float(np.sum(p * np.log(p)))


def _information_f_score(overlap: _Overlap) -> float:
    """``VariationOfInformation.foregroundRestrictedFscore`` of one slice.

    With p = counts / n over the truth's cell pixels, H(A) and H(B) the entropies of the truth and proposed
    segments (unassigned pixels singletons), H(A|B) = H(A,B) - H(B), H(B|A) = H(A,B) - H(A):

        precision = (H(A) - H(A|B)) / H(A),  recall = (H(B) - H(B|A)) / H(B),  F = 2PR / (P + R)

    with Fiji's special cases H(A) = 0 -> (P, R) = (0, 1) and then H(B) = 0 -> (1, 0).
    """
    n = overlap.n
    if n == 0:
        return float("nan")
    singletons = overlap.unassigned / n * math.log(n)
    sum_a = _entropy_sum(overlap.truth_sizes, n)
    sum_b = _entropy_sum(overlap.proposed_sizes, n) - singletons
    sum_ab = _entropy_sum(overlap.cells, n) - singletons
    ha, hb = -sum_a, -sum_b
    hab, hba = sum_b - sum_ab, sum_a - sum_ab
    precision = (ha - hab) / ha if ha != 0 else 0.0
    recall = (hb - hba) / hb if hb != 0 else 0.0
    if ha == 0:
        precision, recall = 0.0, 1.0
    if hb == 0:
        precision, recall = 1.0, 0.0
    return 2.0 * precision * recall / (precision + recall) if precision + recall != 0 else float("nan")


# ---------------------------------------------------------------------------------------------------------
# Foreground-restricted Rand error (the 2012 ranking)


def leaderboard_rand_error(proposals: ArrayLike, truths: ArrayLike, thresholds=THRESHOLDS) -> SweepResult:
    """ISBI 2012 Rand error: 1 - the maximal F-score of the foreground-restricted Rand index
    (``RandError.getForegroundRestrictedRandIndexMaximalFScore``).

    At each threshold t, every slice is binarised (proposal > t), its 4-connected cell components are the
    proposed segments and the truth's 4-connected cell components the true ones; on the truth's cell pixels
    only (membrane pruned), with n_ij the overlap counts, a_i and b_j the segment sizes and c0 the truth cell
    pixels the proposal calls membrane (singletons):

        TP = Σ n_ij² + c0,  FP = Σ b_j² + c0 - TP,  FN = Σ a_i² - TP

    TP, FP and FN are summed over the slices (whole-stack, micro-averaged) before F(t) is formed;
    Rand error = 1 - max_t F(t).

    Args:
        proposals: Cell probabilities [S, H, W] (or a binary decision, with ``BINARY_THRESHOLDS``).
        truths: ISBI labels [S, H, W]: 0 = membrane, nonzero = cell.
        thresholds: The sweep.

    Returns:
        The error, the threshold of the best F-score and the error at every threshold.
    """
    proposal, truth = _stacks(proposals, truths)
    truth_segments = [_components(mask) for mask in truth]
    scores = []
    for threshold in thresholds:
        totals = np.zeros(3)
        for slice_proposal, segments in zip(proposal, truth_segments, strict=True):
            proposed = _components(slice_proposal > threshold)
            totals += _rand_counts(_overlap(segments, proposed))
        scores.append(_f_score(*map(float, totals)))
    best, threshold = _sweep(scores, tuple(thresholds), maximise=True, start=0.0)
    return SweepResult(1.0 - best, threshold, tuple(1.0 - s for s in scores), tuple(thresholds))


# ---------------------------------------------------------------------------------------------------------
# Border thinning: Fiji's WatershedTransform2D on a binarised proposal

_MASK, _WSHED, _INIT, _INQUEUE = -2, 0, -1, -3


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

    def neighbours(index: int) -> list[int]:
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

    fifo: deque[int] = deque()
    for index in membrane:
        for other in neighbours(index):
            if tab[other] >= _WSHED:
                fifo.append(index)
                tab[index] = _INQUEUE
                break
    flag = False
    while fifo:
        index = fifo.popleft()
        for other in neighbours(index):
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


# ---------------------------------------------------------------------------------------------------------
# Warping error, minimum splits and mergers

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
