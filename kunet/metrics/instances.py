"""Objects of label images: segments and instances from binary masks, the boundaries between labels, and the
Cell Tracking Challenge SEG."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike

from kunet.metrics._common import _as_binary, _as_binary_2d, _contingency, _same_shape


def segments_from_foreground(mask: ArrayLike, connectivity: int = 4) -> np.ndarray:
    """Connected components of the foreground, the segments the ISBI 2012 Rand scores compare.

    Args:
        mask: 2-D binary image, nonzero = foreground (cell interior).
        connectivity: 4 (the ISBI/Fiji choice) or 8.

    Returns:
        int32 labels: 0 = background/boundary, 1..K = components in raster order.
    """
    mask = _as_binary_2d(mask).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=connectivity, ltype=cv2.CV_32S)
    return labels


def grow_segments(segments: ArrayLike, into: ArrayLike | None = None) -> np.ndarray:
    """Assigns unlabelled (0) pixels to the nearest segment: components "grown into" the boundary.

    Used for the ISBI 2012 Rand variant in which predicted boundary pixels do not form a segment of their
    own. Nearness is Euclidean distance to the closest segment pixel, from OpenCV's
    ``distanceTransformWithLabels`` (5x5 mask, ``DIST_LABEL_PIXEL``; ties follow OpenCV).

    Args:
        segments: 2-D integer labels, 0 = unlabelled.
        into: Optional binary mask; only unlabelled pixels inside it are assigned, the others stay 0.

    Returns:
        A copy of ``segments`` (same dtype) with the assigned pixels filled. Returned unchanged when there
        is no segment to grow from.
    """
    segments = np.asarray(segments)
    if segments.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {segments.shape}")
    unlabelled = segments == 0
    targets = unlabelled
    if into is not None:
        into = _as_binary(into)
        _same_shape(into, segments)
        targets = unlabelled & into
    grown = segments.copy()
    if not targets.any() or unlabelled.all():
        return grown
    # Zero pixels of the input are the sites: every labelled pixel gets its own site id.
    _, nearest_site = cv2.distanceTransformWithLabels(
        unlabelled.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    site_to_segment = np.zeros(int(nearest_site.max()) + 1, dtype=segments.dtype)
    site_to_segment[nearest_site[~unlabelled]] = segments[~unlabelled]
    grown[targets] = site_to_segment[nearest_site[targets]]
    return grown


def instances_from_foreground(foreground_mask: ArrayLike, min_size: int = 0, connectivity: int = 4) -> np.ndarray:
    """Instance labels from a binary mask: connected components, small ones removed.

    Args:
        foreground_mask: 2-D binary image, nonzero = foreground.
        min_size: Components with fewer pixels are set to background.
        connectivity: 4 or 8.

    Returns:
        int32 labels 1..K, consecutive in raster order of the kept components; 0 = background.
    """
    mask = _as_binary_2d(foreground_mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity, ltype=cv2.CV_32S)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False
    relabel = np.zeros(count, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels]


def label_boundaries(labels: ArrayLike) -> np.ndarray:
    """Pixels with a 4-neighbour of another label: both sides of every border between two labels (class
    or instance ids; a boolean mask gives the pixels on either side of its outline).

    Args:
        labels: 2-D label image of any dtype.

    Returns:
        bool mask of the same shape.
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def seg_per_object(prediction_instances: ArrayLike, truth_instances: ArrayLike) -> dict[int, float]:
    """Cell Tracking Challenge SEG score of every reference object.

    Maška et al. (2014), Bioinformatics 30:1609, and Ulman et al. (2017), Nat. Methods 14:1141: a
    reference object R is matched by the predicted object S with |R ∩ S| > 0.5 |R| (at most one S can
    satisfy this) and scores the Jaccard index |R ∩ S| / |R ∪ S|; unmatched reference objects score 0.
    Predicted objects that match nothing are not counted, so partially annotated frames work.

    Args:
        prediction_instances: Integer instance labels, 0 = background.
        truth_instances: Integer instance labels of the same shape, 0 = background (unannotated).

    Returns:
        {reference label: score in [0, 1]} for every nonzero truth label.
    """
    prediction, truth = np.asarray(prediction_instances), np.asarray(truth_instances)
    _same_shape(prediction, truth)
    table = _contingency(truth, prediction)
    reference = table.row_labels[table.rows]
    candidate = table.col_labels[table.cols]
    overlaps = (reference != 0) & (candidate != 0)
    counts = table.counts[overlaps]
    reference_size = table.row_sizes()[table.rows[overlaps]]
    candidate_size = table.col_sizes()[table.cols[overlaps]]
    matched = 2 * counts > reference_size
    jaccard = counts / (reference_size + candidate_size - counts)
    scores = {int(label): 0.0 for label in table.row_labels if label != 0}
    scores.update(zip(reference[overlaps][matched].tolist(), jaccard[matched].tolist(), strict=True))
    return scores


def seg_measure(prediction_instances: ArrayLike, truth_instances: ArrayLike) -> float:
    """Cell Tracking Challenge SEG: mean of ``seg_per_object`` over the reference objects.

    Args:
        prediction_instances: Integer instance labels, 0 = background.
        truth_instances: Integer instance labels of the same shape, 0 = background.

    Returns:
        SEG in [0, 1], or NaN when the reference has no object (nothing to score).
    """
    scores = seg_per_object(prediction_instances, truth_instances)
    return float(np.mean(list(scores.values()))) if scores else float("nan")
