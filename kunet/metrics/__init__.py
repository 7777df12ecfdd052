"""Segmentation metrics of the U-Net paper's benchmarks: ISBI 2012 (EM) and the Cell Tracking Challenge.

NumPy and OpenCV only (no TensorFlow, SciPy or scikit-image), so evaluation runs anywhere kunet installs.

Conventions shared by every function:

* Binary images: any nonzero value is foreground. For ISBI 2012 labels the foreground is the cell
  interior (255) and the background the membrane (0).
* Label images ("segments", "instances"): integer arrays; 0 means boundary / background wherever a
  function gives it a meaning, and is otherwise a label like any other (see each function).
* Objects of a binary image are its 4-connected foreground components (the background is then
  8-connected). This is the pairing the ISBI 2012 evaluation in Fiji uses, both for its Rand scores
  and for the simple-point test of its warping error, so components and topology agree.
* Inputs of one call must have the same shape; any 2-D size works.

Pair-counting scores (Rand, adapted Rand) use a sparse contingency table built with ``np.bincount``
(or ``np.unique`` when the label product is large), so a 512x512 image with hundreds of segments takes
a few milliseconds.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import cv2
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "pixel_error",
    "rand_error",
    "adapted_rand_error",
    "segments_from_foreground",
    "grow_segments",
    "instances_from_foreground",
    "warp_towards",
    "topological_errors",
    "warping_error",
    "iou_per_class",
    "dice_per_class",
    "seg_per_object",
    "seg_measure",
    "binary_segmentation_scores",
]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _same_shape(*arrays: np.ndarray) -> None:
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"inputs must have the same shape, got {[a.shape for a in arrays]}")


def _as_binary(image: ArrayLike) -> np.ndarray:
    return np.asarray(image) != 0


def _as_binary_2d(image: ArrayLike) -> np.ndarray:
    binary = _as_binary(image)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {binary.shape}")
    return binary


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps a label array to indices 0..K-1 (flattened) and returns them with the K distinct labels."""
    flat = labels.ravel()
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    dense = (
        np.issubdtype(flat.dtype, np.integer)
        and flat.size > 0
        and flat.min() >= 0
        and flat.max() <= max(4 * flat.size, 1 << 16)
    )
    if dense:
        present = np.bincount(flat) > 0
        lookup = np.cumsum(present) - 1
        return lookup[flat], np.flatnonzero(present)
    distinct, indices = np.unique(flat, return_inverse=True)
    return indices.ravel(), distinct


class _Contingency(NamedTuple):
    """Non-empty cells of the contingency table of two label arrays a (rows) and b (columns)."""

    rows: np.ndarray  # index into row_labels, one per cell
    cols: np.ndarray  # index into col_labels, one per cell
    counts: np.ndarray  # int64 pixel count n_ij of each cell
    row_labels: np.ndarray
    col_labels: np.ndarray

    def row_sizes(self) -> np.ndarray:
        return np.bincount(self.rows, weights=self.counts, minlength=len(self.row_labels)).astype(np.int64)

    def col_sizes(self) -> np.ndarray:
        return np.bincount(self.cols, weights=self.counts, minlength=len(self.col_labels)).astype(np.int64)


def _contingency(a: np.ndarray, b: np.ndarray) -> _Contingency:
    a_index, a_labels = _compact_labels(a)
    b_index, b_labels = _compact_labels(b)
    num_cols = len(b_labels)
    keys = a_index.astype(np.int64) * num_cols + b_index
    if len(a_labels) * num_cols <= max(4 * keys.size, 1 << 16):
        counts = np.bincount(keys, minlength=len(a_labels) * num_cols)
        cells = np.flatnonzero(counts)
        counts = counts[cells]
    else:
        cells, counts = np.unique(keys, return_counts=True)
    return _Contingency(cells // num_cols, cells % num_cols, counts.astype(np.int64), a_labels, b_labels)


def _ordered_pairs(sizes: np.ndarray) -> int:
    """Σ n(n-1): ordered pairs of distinct pixels sharing a cell (twice the unordered pairs)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return int(np.sum(sizes * (sizes - 1)))


# --------------------------------------------------------------------------------------------------
# Pixel and pair-counting errors
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Segments and instances from binary masks
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Warping error
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Overlap scores
# --------------------------------------------------------------------------------------------------


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

    Args:
        prediction_classes: Integer class image, values in [0, num_classes).
        truth_classes: Integer class image of the same shape.
        num_classes: Number of classes.
        ignore: Optional boolean mask, True = pixel left out.

    Returns:
        float64 array [num_classes]; NaN for a class absent from both prediction and truth.
    """
    confusion = _confusion(prediction_classes, truth_classes, num_classes, ignore)
    intersection = np.diag(confusion).astype(np.float64)
    total = confusion.sum(axis=0) + confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * intersection / total, np.nan)


# --------------------------------------------------------------------------------------------------
# Cell Tracking Challenge SEG
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Everything for one binary prediction
# --------------------------------------------------------------------------------------------------


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
