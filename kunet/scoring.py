"""One per-frame scorer: validation during ``fit``, ``kunet tune`` and ``kunet evaluate`` score alike.

A frame's decided classes [H, W] (after the model's decision rule) are scored against its truth from the
records, with :mod:`kunet.metrics`. Because the three commands share this code (as nnU-Net's trainer
validates with the code its evaluate command runs), the curves of ``fit``, the sweep of ``tune`` and the
report of ``evaluate`` agree on one model and rule.

Scores of a two-class net (foreground = class 1):

* ``pixel_error``, ``iou``, ``dice``: of the foreground masks;
* ``rand_error``: classic Rand error of the 4-connected foreground components (background one segment);
* ``adapted_rand_error``: foreground-restricted Rand error (ISBI 2012's V_rand), truth boundary ignored;
* ``adapted_rand_error_grown``: the same after growing the predicted components into the boundary;
* ``warping_error``: only when asked (seconds per 512x512 frame);
* ``seg``: for instance labels, the Cell Tracking Challenge SEG of the predicted components of at least
  ``min_object_size`` pixels (the model's setting, as ``predict`` writes instances) against the true ids;
* ``ap50``, ``f1_50``, ``ap50_95``: object detection scores in StarDist's definitions
  (:mod:`kunet.metrics.matching`): AP = tp / (tp + fp + fn) and F1 at IoU >= 0.5, and the AP averaged over
  IoU 0.5:0.05:0.95. Objects are those of ``seg`` for instance labels, else the 4-connected components of
  the two masks (:func:`frame_objects`). NaN for a frame with no object on either side (StarDist says 0),
  so such a frame is left out of the mean, as an empty mask's ``iou`` is.

Other nets: ``pixel_error``, ``mean_iou`` (over the non-background classes) and ``iou_class<k>``.
"""

from __future__ import annotations

import math

import numpy as np

from kunet import metrics
from kunet.errors import KunetError

# Validation during fit logs these scores under the names history.csv, TensorBoard and train.best_metric
# have always used.
VALIDATION_NAMES = {
    "iou": "val_foreground_iou",
    "pixel_error": "val_pixel_error",
    "adapted_rand_error": "val_rand_error",
    "adapted_rand_error_grown": "val_rand_error_grown",
    "seg": "val_seg",
    "ap50": "val_ap50",
    "mean_iou": "val_mean_iou",
}
VALIDATION_METRICS = ("val_loss", *VALIDATION_NAMES.values())


def score_frame(
    classes: np.ndarray,
    frame: dict,
    num_classes: int,
    label_kind: str = "binary",
    min_object_size: int = 0,
    warping: bool = False,
) -> dict[str, float]:
    """Scores of one frame (see the module docstring for the keys).

    Args:
        classes: Decided class indices [H, W].
        frame: A frame from :func:`kunet.records.iterate_frames` (``classes``; ``label`` for instances).
        num_classes: Classes of the decided masks (:meth:`kunet.decision.DecisionRule.decided_classes`: 2 for a
            border net, whose true classes 1 and 2 are both foreground).
        label_kind: ``binary``, ``instance`` or ``multiclass`` (instances add ``seg``).
        min_object_size: Predicted objects smaller than this are dropped before SEG and AP (instances).
        warping: Also compute the warping error.
    """
    truth = frame["classes"]
    if num_classes != 2:
        iou = metrics.iou_per_class(classes, truth, num_classes)
        scores = {"pixel_error": float(np.mean(classes != truth)), "mean_iou": float(np.nanmean(iou[1:]))}
        return scores | {f"iou_class{k}": float(v) for k, v in enumerate(iou)}
    predicted, true = classes > 0, truth > 0
    predicted_segments = metrics.segments_from_foreground(predicted)
    true_segments = metrics.segments_from_foreground(true)
    scores = {
        "pixel_error": metrics.pixel_error(predicted, true),
        "iou": float(metrics.iou_per_class(predicted, true, 2)[1]),
        "dice": float(metrics.dice_per_class(predicted, true, 2)[1]),
        "rand_error": metrics.rand_error(predicted_segments, true_segments),
        "adapted_rand_error": metrics.adapted_rand_error(predicted_segments, true_segments)[0],
        "adapted_rand_error_grown": metrics.adapted_rand_error(
            metrics.grow_segments(predicted_segments), true_segments
        )[0],
    }
    if warping:
        scores["warping_error"] = metrics.warping_error(predicted, true)
    predicted_objects, true_objects = frame_objects(classes, frame, label_kind, min_object_size)
    if label_kind == "instance":
        scores["seg"] = metrics.seg_measure(predicted_objects, true_objects)
    return scores | object_scores(metrics.object_matching(predicted_objects, true_objects))


def frame_objects(
    classes: np.ndarray, frame: dict, label_kind: str = "binary", min_object_size: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true objects of a two-class frame, as instance labels (0 = background).

    Instance labels: the predicted foreground's components of at least ``min_object_size`` pixels (as
    ``predict`` writes instances) and the true ids. Other labels: the 4-connected components of both masks.
    """
    predicted = classes > 0
    if label_kind == "instance":
        return metrics.instances_from_foreground(predicted, min_object_size), frame["label"]
    return metrics.segments_from_foreground(predicted), metrics.segments_from_foreground(frame["classes"] > 0)


def object_scores(matchings: dict[float, metrics.Matching]) -> dict[str, float]:
    """``ap50``, ``f1_50`` and ``ap50_95`` of one frame's :func:`kunet.metrics.object_matching` (default
    thresholds); NaN when neither side has an object."""
    at_half = matchings[0.5]
    if at_half.n_true == 0 and at_half.n_pred == 0:
        return dict.fromkeys(("ap50", "f1_50", "ap50_95"), float("nan"))
    return {"ap50": at_half.accuracy, "f1_50": at_half.f1, "ap50_95": metrics.mean_average_precision(matchings)}


def objects_report(matchings: dict[float, metrics.Matching]) -> dict:
    """The data set's object scores for a report: every threshold's counts and scores, and the mean AP.

    Args:
        matchings: :func:`kunet.metrics.sum_matchings` of the frames' matchings (summed counts, as
            StarDist's ``matching_dataset``).
    """
    return {
        "definition": "StarDist matching_dataset: one-to-one matches at IoU >= threshold, counts summed over frames",
        "ap50_95": metrics.mean_average_precision(matchings),
        "thresholds": {f"{threshold:.2f}": matching.scores() for threshold, matching in matchings.items()},
    }


def mean_scores(per_frame: list[dict[str, float]]) -> dict[str, float]:
    """The mean of every score over frames (NaN-aware: an empty mask's IoU does not poison the mean)."""
    return {key: float(np.nanmean([scores[key] for scores in per_frame])) for key in per_frame[0]}


def validation_scores(scores: dict[str, float]) -> dict[str, float]:
    """The scores validation during fit logs, under their ``val_`` names."""
    return {VALIDATION_NAMES[key]: value for key, value in scores.items() if key in VALIDATION_NAMES}


def weighted_loss(probabilities: np.ndarray, frame: dict) -> float:
    """The paper's weighted cross-entropy (eq. 1) of a whole frame's probabilities: fit's ``val_loss``."""
    picked = np.take_along_axis(probabilities, frame["classes"][..., None].astype(np.int64), axis=-1)[..., 0]
    return float(np.mean(frame["weight"] * -np.log(np.maximum(picked, 1e-7))))


def metric_is_better(name: str, value: float, best: float) -> bool:
    """Whether ``value`` of the metric ``name`` beats ``best`` (errors and losses fall, the rest rise)."""
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    minimise = "error" in name or "loss" in name
    return value < best if minimise else value > best


def validate(model, records_dir, tiling=None) -> tuple[dict[str, float], dict]:
    """Validation during ``fit``: every validation frame predicted whole (overlap-tile) and decided by the
    model's stored rule, as ``predict`` would, then scored here.

    Args:
        model: The U-Net being trained (its metadata holds normalisation and decision rule).
        records_dir: The records folder.
        tiling: :class:`~kunet.tiling.TilingOptions` (the pipeline's ``[inference]`` section).

    Returns:
        The mean scores under their ``val_`` names (with ``val_loss``), and the first frame's image,
        probabilities and true classes for pictures.
    """
    from kunet.decision import DecisionRule
    from kunet.inference import Predictor
    from kunet.records import iterate_frames

    predictor = Predictor(model, tiling=tiling)
    settings = predictor.settings
    predictor_rule = DecisionRule.of(settings)
    decided_classes = predictor_rule.decided_classes(model.num_classes)
    per_frame, example = [], {}
    for frame in iterate_frames(records_dir, "val"):
        probabilities = predictor.probabilities(frame["image"])
        scores = score_frame(predictor.classes(probabilities), frame, decided_classes, settings.label_kind,
                             settings.min_object_size)  # fmt: skip
        per_frame.append({"val_loss": weighted_loss(probabilities, frame)} | validation_scores(scores))
        example = example or {"image": frame["image"], "foreground": predictor_rule.foreground(probabilities),
                              "classes": frame["classes"]}  # fmt: skip
    return (mean_scores(per_frame) if per_frame else {}), example


# The ISBI 2012 leaderboard's scores, in the challenge's definitions (kunet.metrics.leaderboard), and the
# definition each one uses, for the report's caption.
LEADERBOARD_DEFINITIONS = {
    "pixel_error": "1 - max F of pixel similarity over thresholds, whole-stack counts (PixelError)",
    "rand_error": "1 - max F of the foreground-restricted Rand index, N^2 pairs, whole-stack (RandError)",
    "warping_error": "min over thresholds of split + merger pixels / all pixels (WarpingError, by type)",
    "v_rand": "max foreground-restricted Rand F after border thinning, mean of slices (higher is better)",
    "v_info": "max information-theoretic F after border thinning, mean of slices (higher is better)",
}


class LeaderboardLabelError(KunetError):
    """Labels or predictions the ISBI 2012 leaderboard metrics cannot score (they need binary labels)."""


def leaderboard_scores(
    cell_probabilities: np.ndarray, decided: np.ndarray, truth: np.ndarray, cut_maps: np.ndarray | None = None
) -> dict[str, dict]:
    """The five leaderboard scores of a stack, on the probability map and on the model's decision (and on the
    cut map, if given).

    Args:
        cell_probabilities: p(cell) [S, H, W] (class 1 of a two-class net), swept over Fiji's thresholds
            0.0 ... 1.0 (warping 0.0 ... 0.9).
        decided: The stored decision rule's classes [S, H, W] (nonzero = cell), scored at the single
            threshold 0.0, as the challenge's script scores binary proposals.
        truth: True classes [S, H, W] (nonzero = cell, 0 = membrane).
        cut_maps: p(cell) [S, H, W] with the rule's watershed lines set to 0
            (:meth:`kunet.decision.DecisionRule.cut_map`), swept like the probability map.

    Returns:
        ``{"probabilities": {...}, "decision": {...}}`` (and ``"cut_map"``), each with the five values and
        ``<name>_threshold`` (the first threshold reaching it).
    """
    report = {}
    proposals = [
        ("probabilities", cell_probabilities, metrics.THRESHOLDS, metrics.WARPING_THRESHOLDS),
        ("decision", (decided > 0).astype(np.float32), metrics.BINARY_THRESHOLDS, metrics.BINARY_THRESHOLDS),
    ]
    if cut_maps is not None:
        proposals.append(("cut_map", cut_maps, metrics.THRESHOLDS, metrics.WARPING_THRESHOLDS))
    for name, proposal, sweep, warping_sweep in proposals:
        v_rand, v_info = metrics.leaderboard_thinned_scores(proposal, truth, sweep)
        results = {
            "pixel_error": metrics.leaderboard_pixel_error(proposal, truth, sweep),
            "rand_error": metrics.leaderboard_rand_error(proposal, truth, sweep),
            "warping_error": metrics.leaderboard_warping_error(proposal, truth, warping_sweep),
            "v_rand": v_rand,
            "v_info": v_info,
        }
        row = {}
        for key, result in results.items():
            row[key] = float(result.value)
            row[f"{key}_threshold"] = float(result.threshold)
        report[name] = row
    return report
