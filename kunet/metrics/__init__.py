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

Pair-counting scores (Rand, adapted Rand), SEG and the object matching use a sparse contingency table
built with ``np.bincount`` (or ``np.unique`` when the label product is large), so a 512x512 image with
hundreds of segments takes a few milliseconds.

One module per family of scores, re-exported here: :mod:`~kunet.metrics.pixels` (pixel error, IoU,
Dice), :mod:`~kunet.metrics.rand` (Rand errors), :mod:`~kunet.metrics.warping` (warping error),
:mod:`~kunet.metrics.instances` (components, label boundaries, SEG), :mod:`~kunet.metrics.matching`
(one-to-one object matching at IoU thresholds: StarDist's precision, recall, AP, F1 and panoptic quality)
and :mod:`~kunet.metrics.scores` (the pixel, Rand, warping and SEG scores of one binary prediction);
``_common`` holds the input checks and the contingency table. The ISBI 2012 leaderboard's five scores,
exactly as the challenge's Fiji code sweeps thresholds, aggregates stacks and thins borders, are in
:mod:`~kunet.metrics.leaderboard` (they differ from the per-image scores above: see its docstring and the
README's Metrics section). A new family is a new module here whose public names this package re-exports.
"""

from kunet.metrics.instances import (
    grow_segments,
    instances_from_foreground,
    label_boundaries,
    seg_measure,
    seg_per_object,
    segments_from_foreground,
)
from kunet.metrics.leaderboard import (
    BINARY_THRESHOLDS,
    THRESHOLDS,
    WARPING_THRESHOLDS,
    LeaderboardInputError,
    SweepResult,
    fiji_thresholds,
    leaderboard_pixel_error,
    leaderboard_rand_error,
)
from kunet.metrics.leaderboard_thinning import (
    leaderboard_thinned_scores,
    leaderboard_v_info,
    leaderboard_v_rand,
    thin_borders,
)
from kunet.metrics.leaderboard_warping import leaderboard_warping_error
from kunet.metrics.matching import (
    IOU_THRESHOLDS,
    Matching,
    ObjectIous,
    match_objects,
    mean_average_precision,
    object_ious,
    object_matching,
    object_matching_dataset,
    sum_matchings,
)
from kunet.metrics.pixels import dice_per_class, iou_per_class, pixel_error
from kunet.metrics.rand import adapted_rand_error, rand_error
from kunet.metrics.scores import binary_segmentation_scores

# The simple-point table and its bit order, which the tests check pixel by pixel.
from kunet.metrics.warping import _NEIGHBOUR_OFFSETS as _NEIGHBOUR_OFFSETS
from kunet.metrics.warping import _simple_point_table as _simple_point_table
from kunet.metrics.warping import topological_errors, warp_towards, warping_error

__all__ = [
    "pixel_error",
    "rand_error",
    "adapted_rand_error",
    "segments_from_foreground",
    "grow_segments",
    "instances_from_foreground",
    "label_boundaries",
    "warp_towards",
    "topological_errors",
    "warping_error",
    "iou_per_class",
    "dice_per_class",
    "seg_per_object",
    "seg_measure",
    "binary_segmentation_scores",
    "IOU_THRESHOLDS",
    "Matching",
    "ObjectIous",
    "object_ious",
    "match_objects",
    "object_matching",
    "object_matching_dataset",
    "sum_matchings",
    "mean_average_precision",
    "THRESHOLDS",
    "WARPING_THRESHOLDS",
    "BINARY_THRESHOLDS",
    "LeaderboardInputError",
    "SweepResult",
    "fiji_thresholds",
    "leaderboard_pixel_error",
    "leaderboard_rand_error",
    "leaderboard_warping_error",
    "leaderboard_v_rand",
    "leaderboard_v_info",
    "leaderboard_thinned_scores",
    "thin_borders",
]
