"""The ISBI 2012 leaderboard's five scores, as the challenge's Fiji code computes them.

Source of truth: fiji/Trainable_Segmentation, ``src/main/java/trainableSegmentation/metrics/``
(``PixelError``, ``RandError``, ``WarpingError``, ``VariationOfInformation``, ``ClassificationStatistics``)
and ``trainableSegmentation/utils/WatershedTransform2D``. Pixel and Rand errors are here; border thinning
with V_rand / V_info in :mod:`kunet.metrics.leaderboard_thinning`, the warping error in
:mod:`kunet.metrics.leaderboard_warping`. The Java facts each function follows:

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
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import ArrayLike

from kunet.errors import KunetError


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
