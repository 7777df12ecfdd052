"""Object-level detection scores: one-to-one matching of predicted and true objects at IoU thresholds.

The definitions are StarDist's (``stardist.matching.matching`` with ``criterion="iou"`` and
``matching_dataset``; Schmidt et al. 2018, Weigert et al. 2020), which Cellpose's
``metrics.average_precision`` and the 2018 Data Science Bowl share: a true and a predicted object match when
their IoU is at least the threshold, each object matches at most once, and the number of matches is as
large as possible. Then, with n_true = tp + fn objects in the truth and n_pred = tp + fp in the prediction:

* precision = tp / (tp + fp), recall = tp / (tp + fn), f1 = 2 tp / (2 tp + fp + fn);
* accuracy = tp / (tp + fp + fn): what the Data Science Bowl and Cellpose call average precision (AP);
* mean_matched_score = Σ matched IoU / tp, mean_true_score = Σ matched IoU / n_true;
* panoptic_quality = Σ matched IoU / (tp + fp/2 + fn/2) (Kirillov et al. 2019, eq. 1).

As in StarDist, each ratio is 0 when it has nothing to count (tp = 0, or a zero denominator), so a frame
with no object in truth or prediction scores 0. A data set is scored on its summed counts and IoU sums,
not as a mean of per-frame ratios (``matching_dataset`` with ``by_image=False``).

Why no assignment solver: at thresholds of at least 0.5 the pairs at or above the threshold are already
(almost) a matching. Two disjoint predicted objects B1, B2 with IoU(A, Bi) >= 1/2 against one true object
A need 3|A ∩ Bi| >= |A| + |Bi| each; summed, with |A ∩ B1| + |A ∩ B2| <= |A| and |A ∩ Bi| <= |Bi|, this
forces |Bi| = |A|/2 and A = B1 ⊔ B2 exactly, both IoUs exactly 1/2, and no third partner. So above 0.5
every object has at most one partner, and at exactly 0.5 the only conflicts are such exact halves (of a
true or of a predicted object, never both in one group), each of which yields one match of IoU 1/2
whichever half is kept. StarDist's Hungarian assignment (most matches, ties broken by summed IoU) gives the
same counts and IoU sums there. Below 0.5 partners overlap and an assignment solver is needed: those
thresholds raise instead of adding SciPy to kunet's dependencies, since the community reports 0.5 to 0.95.

IoUs come from the sparse contingency table of the two label images (``np.bincount`` of paired labels), so
a 2048x2048 frame with thousands of objects never builds a mask per object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from kunet.metrics._common import _contingency, _same_shape

# 0.5:0.05:0.95 as the decimals they name: an IoU computed as a correctly rounded float64 quotient equals the
# threshold exactly when the fraction does (np.arange would give 0.6000000000000001 and miss 3/5).
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


class ObjectIous(NamedTuple):
    """Every overlapping (true object, predicted object) pair of two label images and its IoU."""

    true_labels: np.ndarray  # label of the true object of each pair
    pred_labels: np.ndarray  # label of the predicted object of each pair
    ious: np.ndarray  # float64 IoU of each pair, > 0
    n_true: int  # objects (nonzero labels) in the truth
    n_pred: int  # objects in the prediction


@dataclass(frozen=True)
class Matching:
    """The one-to-one matching at one IoU threshold and StarDist's scores of it (see the module docstring).

    ``matched_pairs`` and ``matched_ious`` (true label, predicted label and IoU of each match, by true label)
    are filled only when asked for, and are dropped by :func:`sum_matchings`.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    sum_matched_iou: float
    matched_pairs: tuple[tuple[int, int], ...] = ()
    matched_ious: tuple[float, ...] = ()

    @property
    def n_true(self) -> int:
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def accuracy(self) -> float:
        """tp / (tp + fp + fn): the average precision (AP) of the Data Science Bowl 2018 and Cellpose."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def mean_matched_score(self) -> float:
        return _ratio(self.sum_matched_iou, self.tp)

    @property
    def mean_true_score(self) -> float:
        return _ratio(self.sum_matched_iou, self.n_true)

    @property
    def panoptic_quality(self) -> float:
        return _ratio(self.sum_matched_iou, self.tp + self.fp / 2 + self.fn / 2)

    def scores(self) -> dict[str, float]:
        """Counts and scores under StarDist's names, JSON-ready (without the matched pairs)."""
        names = ("tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "accuracy", "f1")
        names += ("mean_true_score", "mean_matched_score", "panoptic_quality")
        return {name: getattr(self, name) for name in names}


def _ratio(numerator: float, denominator: float) -> float:
    """StarDist's ``_safe_divide``, and its precision/recall/accuracy/f1 when tp = 0: 0 without a count."""
    return float(numerator / denominator) if numerator and denominator else 0.0


def object_ious(prediction_instances: ArrayLike, truth_instances: ArrayLike) -> ObjectIous:
    """IoU of every overlapping pair of objects, from the sparse contingency table of the two images.

    Args:
        prediction_instances: Integer instance labels, 0 = background.
        truth_instances: Integer instance labels of the same shape, 0 = background.

    Returns:
        The pairs with a nonzero overlap, and the object counts of both images.
    """
    prediction, truth = np.asarray(prediction_instances), np.asarray(truth_instances)
    _same_shape(prediction, truth)
    table = _contingency(truth, prediction)
    true_labels, pred_labels = table.row_labels[table.rows], table.col_labels[table.cols]
    pairs = (true_labels != 0) & (pred_labels != 0)
    overlap = table.counts[pairs]
    union = table.row_sizes()[table.rows[pairs]] + table.col_sizes()[table.cols[pairs]] - overlap
    return ObjectIous(
        true_labels[pairs],
        pred_labels[pairs],
        overlap / union,
        int(np.count_nonzero(table.row_labels)),
        int(np.count_nonzero(table.col_labels)),
    )


def match_objects(ious: ObjectIous, threshold: float, report_matches: bool = False) -> Matching:
    """The matching of the pairs with IoU >= ``threshold`` (StarDist counts a pair at the threshold).

    Args:
        ious: From :func:`object_ious`.
        threshold: IoU threshold, at least 0.5 (see the module docstring).
        report_matches: Also list the matched pairs and their IoUs.

    Raises:
        ValueError: ``threshold`` is below 0.5 (or NaN).
    """
    if not threshold >= 0.5:
        raise ValueError(f"IoU thresholds below 0.5 need an assignment solver; got {threshold}")
    chosen = np.flatnonzero(ious.ious >= threshold)
    # Only exact halves (IoU 1/2) share a partner: keep one pair per true, then per predicted object.
    chosen = chosen[np.unique(ious.true_labels[chosen], return_index=True)[1]]
    chosen = chosen[np.unique(ious.pred_labels[chosen], return_index=True)[1]]
    chosen = chosen[np.argsort(ious.true_labels[chosen], kind="stable")]
    tp = len(chosen)
    matched = ious.ious[chosen]
    pairs = zip(ious.true_labels[chosen].tolist(), ious.pred_labels[chosen].tolist(), strict=True)
    return Matching(
        threshold=float(threshold),
        tp=tp,
        fp=ious.n_pred - tp,
        fn=ious.n_true - tp,
        sum_matched_iou=float(matched.sum()),
        matched_pairs=tuple(pairs) if report_matches else (),
        matched_ious=tuple(matched.tolist()) if report_matches else (),
    )


def object_matching(
    prediction_instances: ArrayLike,
    truth_instances: ArrayLike,
    thresholds: Iterable[float] = IOU_THRESHOLDS,
    report_matches: bool = False,
) -> dict[float, Matching]:
    """StarDist's ``matching(truth, prediction, thresh, criterion="iou")`` of one frame at every threshold.

    Args:
        prediction_instances: Integer instance labels, 0 = background (note: StarDist takes the truth first).
        truth_instances: Integer instance labels of the same shape, 0 = background.
        thresholds: IoU thresholds, each at least 0.5; by default 0.5, 0.55, ..., 0.95.
        report_matches: Also list the matched pairs and their IoUs.

    Returns:
        {threshold: matching}.
    """
    ious = object_ious(prediction_instances, truth_instances)
    return {float(t): match_objects(ious, t, report_matches) for t in thresholds}


def sum_matchings(per_frame: Iterable[Mapping[float, Matching]]) -> dict[float, Matching]:
    """Data-set matchings: counts and IoU sums of frames added threshold by threshold (StarDist's
    ``matching_dataset``, ``by_image=False``), so every object weighs the same whichever frame holds it.

    Args:
        per_frame: Each frame's :func:`object_matching` result, all at the same thresholds.
    """
    total: dict[float, Matching] = {}
    for frame in per_frame:
        for threshold, matching in frame.items():
            before = total.get(threshold, Matching(threshold, 0, 0, 0, 0.0))
            total[threshold] = Matching(
                threshold,
                before.tp + matching.tp,
                before.fp + matching.fp,
                before.fn + matching.fn,
                before.sum_matched_iou + matching.sum_matched_iou,
            )
    return total


def object_matching_dataset(
    pairs: Iterable[tuple[ArrayLike, ArrayLike]], thresholds: Iterable[float] = IOU_THRESHOLDS
) -> dict[float, Matching]:
    """StarDist's ``matching_dataset`` (``by_image=False``) of (prediction, truth) instance label pairs."""
    thresholds = tuple(thresholds)
    return sum_matchings(object_matching(prediction, truth, thresholds) for prediction, truth in pairs)


def mean_average_precision(matchings: Mapping[float, Matching]) -> float:
    """Mean of the AP (``accuracy``) over the thresholds: the Data Science Bowl 2018 score at 0.5:0.05:0.95."""
    if not matchings:
        raise ValueError("no thresholds to average over")
    return float(np.mean([matching.accuracy for matching in matchings.values()]))
