"""Per-pixel scores: the ISBI 2012 pixel error and per-class IoU (Jaccard) and Dice."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from kunet.metrics._common import _as_binary, _same_shape


def pixel_error(prediction: ArrayLike, truth: ArrayLike, ignore: ArrayLike | None = None) -> float:
    """Fraction of pixels whose binary label differs (ISBI 2012 "pixel error").

    The ISBI 2012 challenge describes the pixel error as the squared Euclidean distance between the
    binary label images; divided by the pixel count, that is this rate. (Its leaderboard, and so the
    U-Net paper's 0.0611, report 1 - the maximal pixel F-score over binarisation thresholds instead.)

    Args:
        prediction: Binary image, nonzero = foreground.
        truth: Binary image of the same shape.
        ignore: Optional boolean mask, True = pixel left out of the score.

    Returns:
        Disagreeing pixels / evaluated pixels, or NaN when no pixel is evaluated.
    """
    prediction, truth = _as_binary(prediction), _as_binary(truth)
    _same_shape(prediction, truth)
    differs = prediction != truth
    if ignore is not None:
        keep = ~_as_binary(ignore)
        _same_shape(keep, differs)
        differs = differs[keep]
    return float(differs.mean()) if differs.size else float("nan")


def _confusion(
    prediction_classes: ArrayLike, truth_classes: ArrayLike, num_classes: int, ignore: ArrayLike | None
) -> np.ndarray:
    """num_classes x num_classes counts, rows = truth class, columns = predicted class."""
    prediction, truth = np.asarray(prediction_classes), np.asarray(truth_classes)
    _same_shape(prediction, truth)
    if ignore is not None:
        keep = ~_as_binary(ignore)
        _same_shape(keep, truth)
        prediction, truth = prediction[keep], truth[keep]
    prediction, truth = prediction.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    for name, values in (("prediction_classes", prediction), ("truth_classes", truth)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{values.min()}, {values.max()}]")
    counts = np.bincount(truth * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(
    prediction_classes: ArrayLike, truth_classes: ArrayLike, num_classes: int, ignore: ArrayLike | None = None
) -> np.ndarray:
    """Intersection over union (Jaccard index) |P ∩ T| / |P ∪ T| of every class.

    The "IoU" of the ISBI cell tracking results in the U-Net paper (Table 2) for the foreground class.

    Args:
        prediction_classes: Integer class image, values in [0, num_classes).
        truth_classes: Integer class image of the same shape.
        num_classes: Number of classes.
        ignore: Optional boolean mask, True = pixel left out.

    Returns:
        float64 array [num_classes]; NaN for a class absent from both prediction and truth (its IoU is
        undefined, and NaN lets ``np.nanmean`` skip it).
    """
    confusion = _confusion(prediction_classes, truth_classes, num_classes, ignore)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def dice_per_class(
    prediction_classes: ArrayLike, truth_classes: ArrayLike, num_classes: int, ignore: ArrayLike | None = None
) -> np.ndarray:
    """Dice coefficient 2 |P ∩ T| / (|P| + |T|) of every class (Dice 1945, Ecology 26:297).

    Arguments as for :func:`iou_per_class`.

    Returns:
        float64 array [num_classes]; NaN for a class absent from both prediction and truth.
    """
    confusion = _confusion(prediction_classes, truth_classes, num_classes, ignore)
    intersection = np.diag(confusion).astype(np.float64)
    total = confusion.sum(axis=0) + confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * intersection / total, np.nan)
