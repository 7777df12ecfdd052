"""Pair-counting errors: the classic Rand error and the foreground-restricted (adapted) Rand error."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from kunet.metrics._common import _contingency, _ordered_pairs, _same_shape


def rand_error(prediction_segments: ArrayLike, truth_segments: ArrayLike) -> float:
    """Classic Rand error, 1 - Rand index over all pixel pairs (Rand 1971, J. Am. Stat. Assoc. 66:846).

    With the contingency table n_ij (pixels in truth segment i and predicted segment j), row sums a_i,
    column sums b_j and N pixels, the number of pairs placed differently by the two segmentations is

        D = Σ_i C(a_i, 2) + Σ_j C(b_j, 2) - 2 Σ_ij C(n_ij, 2),     Rand error = D / C(N, 2),

    the formula of Fiji's ``RandError.classicRandIndex`` used by the ISBI 2012 evaluation. Every label,
    including 0, is one segment: for binary images pass their components (see
    ``segments_from_foreground``), whose 0 is then the background "segment", as Fiji does.

    Args:
        prediction_segments: Integer label image.
        truth_segments: Integer label image of the same shape.

    Returns:
        The Rand error in [0, 1] (0 for fewer than two pixels).
    """
    prediction_segments, truth_segments = np.asarray(prediction_segments), np.asarray(truth_segments)
    _same_shape(prediction_segments, truth_segments)
    n = truth_segments.size
    if n < 2:
        return 0.0
    table = _contingency(truth_segments, prediction_segments)
    same_in_both = _ordered_pairs(table.counts)
    disagreements = _ordered_pairs(table.row_sizes()) + _ordered_pairs(table.col_sizes()) - 2 * same_in_both
    return disagreements / (n * (n - 1))


def adapted_rand_error(
    prediction_segments: ArrayLike,
    truth_segments: ArrayLike,
    ignore_truth_labels: tuple[int, ...] = (0,),
) -> tuple[float, float, float]:
    """Foreground-restricted ("adapted") Rand error V_rand of the ISBI 2012 leaderboard.

    Definition of Arganda-Carreras et al. (2015), "Crowdsourcing the creation of image segmentation
    algorithms for connectomics", Front. Neuroanat. 9:142 (Rand split / merge scores and their F-score);
    the same quantity as SNEMI3D's adapted Rand error. Pixels whose *truth* label is in
    ``ignore_truth_labels`` (the ground-truth boundary) are dropped. On the rest, with contingency counts
    n_ij (truth segment i, predicted segment j), truth sizes t_i and predicted sizes s_j:

        precision = Σ n_ij(n_ij - 1) / Σ s_j(s_j - 1)    (Rand merge score: pairs joined by the prediction
                                                          that the truth also joins)
        recall    = Σ n_ij(n_ij - 1) / Σ t_i(t_i - 1)    (Rand split score)
        error     = 1 - F,  F = 2 precision recall / (precision + recall)

    Pairs are of distinct pixels, n(n-1), as in Fiji and scikit-image; the paper's Σp_ij² with
    probabilities differs only by these self-pairs. A predicted label 0 is an ordinary segment here
    (scikit-image's convention): predicted boundary pixels inside true cells all count as one segment,
    which is a large merge. The ISBI "grown" variant avoids this by first assigning them to the nearest
    predicted segment (``grow_segments``).

    The error equals ``skimage.metrics.adapted_rand_error(truth, prediction, ignore_labels=(0,))[0]``.
    Note that scikit-image returns its precision and recall swapped relative to this definition
    (scikit-image issue #6485): its "precision" divides by the *truth* pair count.

    Args:
        prediction_segments: Integer label image.
        truth_segments: Integer label image of the same shape.
        ignore_truth_labels: Truth labels whose pixels are left out.

    Returns:
        (error, precision, recall). A denominator without pairs counts as a perfect score (1.0); all
        three are NaN when no pixel is left to evaluate.
    """
    prediction_segments, truth_segments = np.asarray(prediction_segments), np.asarray(truth_segments)
    _same_shape(prediction_segments, truth_segments)
    keep = ~np.isin(truth_segments, np.asarray(ignore_truth_labels))
    if not keep.any():
        return float("nan"), float("nan"), float("nan")
    table = _contingency(truth_segments[keep], prediction_segments[keep])
    same_in_both = _ordered_pairs(table.counts)
    same_in_truth = _ordered_pairs(table.row_sizes())
    same_in_prediction = _ordered_pairs(table.col_sizes())
    precision = same_in_both / same_in_prediction if same_in_prediction else 1.0
    recall = same_in_both / same_in_truth if same_in_truth else 1.0
    denominator = same_in_prediction + same_in_truth
    f_score = 2 * same_in_both / denominator if denominator else 1.0
    return 1.0 - f_score, precision, recall
