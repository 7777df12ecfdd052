"""Every score of one binary foreground prediction at once."""

from __future__ import annotations

from numpy.typing import ArrayLike

from kunet.metrics._common import _as_binary_2d, _same_shape
from kunet.metrics.instances import grow_segments, seg_measure, segments_from_foreground
from kunet.metrics.pixels import dice_per_class, iou_per_class, pixel_error
from kunet.metrics.rand import adapted_rand_error, rand_error
from kunet.metrics.warping import warping_error


def binary_segmentation_scores(
    pred_foreground: ArrayLike, truth_foreground: ArrayLike, truth_instances: ArrayLike | None = None
) -> dict[str, float]:
    """All scores for a binary foreground prediction (cell interior = True).

    Objects are the 4-connected foreground components of each mask (``segments_from_foreground``).

    Args:
        pred_foreground: 2-D binary prediction.
        truth_foreground: 2-D binary ground truth of the same shape.
        truth_instances: Optional reference instance labels (e.g. a CTC ``man_seg`` image) for SEG.

    Returns:
        A dict with the keys

        * ``pixel_error``: ``pixel_error`` of the two masks.
        * ``iou``, ``dice``: foreground IoU and Dice (NaN if both masks are empty).
        * ``rand_error``: classic ``rand_error`` of the component images (background = one segment).
        * ``adapted_rand_error``: ``adapted_rand_error`` of the raw predicted components against the true
          components, truth boundary ignored, predicted boundary one segment.
        * ``adapted_rand_error_grown``: the same after growing the predicted components into the
          predicted boundary (``grow_segments``), the ISBI-style V_rand.
        * ``warping_error``: ``warping_error`` of the two masks.
        * ``seg`` (only with ``truth_instances``): ``seg_measure`` of the predicted components against
          ``truth_instances``.
    """
    prediction, truth = _as_binary_2d(pred_foreground), _as_binary_2d(truth_foreground)
    _same_shape(prediction, truth)
    prediction_segments = segments_from_foreground(prediction)
    truth_segments = segments_from_foreground(truth)
    iou = iou_per_class(prediction, truth, 2)[1]
    dice = dice_per_class(prediction, truth, 2)[1]
    scores = {
        "pixel_error": pixel_error(prediction, truth),
        "iou": float(iou),
        "dice": float(dice),
        "rand_error": rand_error(prediction_segments, truth_segments),
        "adapted_rand_error": adapted_rand_error(prediction_segments, truth_segments)[0],
        "adapted_rand_error_grown": adapted_rand_error(grow_segments(prediction_segments), truth_segments)[0],
        "warping_error": warping_error(prediction, truth),
    }
    if truth_instances is not None:
        scores["seg"] = seg_measure(prediction_segments, truth_instances)
    return scores
