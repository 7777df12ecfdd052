"""Object-level matching scores (kunet.metrics.matching): hand-worked cases, a brute-force reference, StarDist
itself where installed, and their wiring into score_frame, evaluate and tune."""

from __future__ import annotations

import itertools
import json
import math

import cv2
import numpy as np
import pytest

from kunet import metrics
from kunet.metrics import IOU_THRESHOLDS, object_matching
from kunet.scoring import VALIDATION_NAMES, frame_objects, metric_is_better, object_scores, score_frame

SHAPE = (6, 12)
SCORE_NAMES = ("precision", "recall", "accuracy", "f1", "mean_true_score", "mean_matched_score", "panoptic_quality")


def paint(*boxes: tuple[int, slice, slice], shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """An int32 label image with each (label, rows, cols) box painted in order."""
    image = np.zeros(shape, np.int32)
    for label, rows, cols in boxes:
        image[rows, cols] = label
    return image


def expect(matching: metrics.Matching, **expected: float) -> None:
    scores = matching.scores()
    assert {key: scores[key] for key in expected} == pytest.approx(expected, abs=1e-12)


ZEROS = dict.fromkeys(SCORE_NAMES, 0.0)


# --- hand-worked cases -------------------------------------------------------------------------------------


def test_a_perfect_prediction_matches_at_every_threshold_whatever_its_label_values():
    truth = paint((1, slice(0, 2), slice(0, 3)), (2, slice(3, 6), slice(0, 4)), (3, slice(0, 6), slice(6, 12)))
    prediction = paint((30, slice(0, 2), slice(0, 3)), (10, slice(3, 6), slice(0, 4)), (20, slice(0, 6), slice(6, 12)))
    result = object_matching(prediction, truth, report_matches=True)
    assert tuple(result) == IOU_THRESHOLDS
    for matching in result.values():
        expect(matching, tp=3, fp=0, fn=0, n_true=3, n_pred=3, **dict.fromkeys(SCORE_NAMES, 1.0))
        assert matching.matched_pairs == ((1, 30), (2, 10), (3, 20)) and matching.matched_ious == (1.0, 1.0, 1.0)
    assert metrics.mean_average_precision(result) == 1.0


def test_one_object_split_in_two():
    # A = 4x10 = 40 px; B1 = its left 4x6 = 24 px (IoU 24/40 = 0.6), B2 = the right 4x4 = 16 px (IoU 0.4).
    truth = paint((1, slice(0, 4), slice(0, 10)))
    prediction = paint((5, slice(0, 4), slice(0, 6)), (9, slice(0, 4), slice(6, 10)))
    result = object_matching(prediction, truth, report_matches=True)
    # IoU >= 0.5, 0.55, 0.6: A-B1 matches (0.6 counts at 0.6), B2 is a false positive: tp 1, fp 1, fn 0.
    # precision 1/2, recall 1/1, AP 1/(1+1+0), F1 2/(2+1+0), PQ 0.6/(1 + 1/2 + 0), matched 0.6/1, true 0.6/1.
    for threshold in (0.5, 0.55, 0.6):
        expect(result[threshold], tp=1, fp=1, fn=0, precision=0.5, recall=1.0, accuracy=0.5, f1=2 / 3,
               panoptic_quality=0.4, mean_matched_score=0.6, mean_true_score=0.6)  # fmt: skip
    assert result[0.5].matched_pairs == ((1, 5),) and result[0.5].matched_ious == pytest.approx((0.6,))
    # From 0.65 nothing matches: tp 0, fp 2, fn 1, every ratio 0.
    for threshold in IOU_THRESHOLDS[3:]:
        expect(result[threshold], tp=0, fp=2, fn=1, **ZEROS)
    # AP50:95 = (3 x 1/2 + 7 x 0) / 10.
    assert metrics.mean_average_precision(result) == pytest.approx(0.15)


def test_two_objects_merged_into_one():
    # A1 = 4x6 = 24 px, A2 = 4x4 = 16 px side by side; B covers both, 40 px: IoU 24/40 = 0.6 and 16/40 = 0.4.
    truth = paint((1, slice(0, 4), slice(0, 6)), (2, slice(0, 4), slice(6, 10)))
    prediction = paint((3, slice(0, 4), slice(0, 10)))
    result = object_matching(prediction, truth)
    # tp 1 (A1-B), fp 0, fn 1 (A2): precision 1/1, recall 1/2, AP 1/(1+0+1), F1 2/(2+0+1),
    # PQ 0.6/(1 + 0 + 1/2), matched 0.6/1, true 0.6/2.
    expect(result[0.6], tp=1, fp=0, fn=1, precision=1.0, recall=0.5, accuracy=0.5, f1=2 / 3,
           panoptic_quality=0.4, mean_matched_score=0.6, mean_true_score=0.3)  # fmt: skip
    expect(result[0.65], tp=0, fp=1, fn=2, **ZEROS)


def test_one_missed_object():
    truth = paint((1, slice(0, 3), slice(0, 3)), (2, slice(0, 3), slice(6, 9)))
    prediction = paint((4, slice(0, 3), slice(0, 3)))
    # tp 1 (IoU 1), fp 0, fn 1: precision 1, recall 1/2, AP 1/(1+0+1), F1 2/(2+0+1), PQ 1/(1 + 0 + 1/2),
    # matched 1/1, true 1/2; the same at every threshold, so AP50:95 = 1/2.
    result = object_matching(prediction, truth)
    for matching in result.values():
        expect(matching, tp=1, fp=0, fn=1, precision=1.0, recall=0.5, accuracy=0.5, f1=2 / 3,
               panoptic_quality=2 / 3, mean_matched_score=1.0, mean_true_score=0.5)  # fmt: skip
    assert metrics.mean_average_precision(result) == pytest.approx(0.5)


def test_one_extra_object():
    truth = paint((1, slice(0, 3), slice(0, 3)))
    prediction = paint((1, slice(0, 3), slice(0, 3)), (2, slice(4, 6), slice(8, 12)))
    # tp 1, fp 1, fn 0: precision 1/2, recall 1, AP 1/(1+1+0), F1 2/(2+1+0), PQ 1/(1 + 1/2 + 0), matched 1/1,
    # true 1/1.
    for matching in object_matching(prediction, truth).values():
        expect(matching, tp=1, fp=1, fn=0, precision=0.5, recall=1.0, accuracy=0.5, f1=2 / 3,
               panoptic_quality=2 / 3, mean_matched_score=1.0, mean_true_score=1.0)  # fmt: skip


def test_empty_truth_empty_prediction_and_both_score_zero_as_in_stardist():
    # StarDist's precision/recall/accuracy/f1 are 0 when tp = 0 and its _safe_divide returns 0 on a zero
    # denominator: no ratio is NaN, not even with nothing on either side.
    objects = paint((1, slice(0, 3), slice(0, 3)), (2, slice(4, 6), slice(8, 12)))
    empty = np.zeros(SHAPE, np.int32)
    for prediction, truth, counts in (
        (objects, empty, {"tp": 0, "fp": 2, "fn": 0, "n_true": 0, "n_pred": 2}),
        (empty, objects, {"tp": 0, "fp": 0, "fn": 2, "n_true": 2, "n_pred": 0}),
        (empty, empty, {"tp": 0, "fp": 0, "fn": 0, "n_true": 0, "n_pred": 0}),
    ):
        for matching in object_matching(prediction, truth).values():
            expect(matching, **counts, **ZEROS)


def test_an_iou_equal_to_the_threshold_matches():
    # StarDist: `match_ok = scores[true_ind, pred_ind] >= thr`. B = 4x6 = 24 px inside A = 4x8 = 32 px:
    # IoU 24/32 = 0.75 exactly.
    truth = paint((1, slice(0, 4), slice(0, 8)))
    prediction = paint((2, slice(0, 4), slice(0, 6)))
    result = object_matching(prediction, truth)
    assert [result[t].tp for t in IOU_THRESHOLDS] == [1] * 6 + [0] * 4  # 0.5 ... 0.75 match, 0.8 ... 0.95 not
    # Thresholds that are not binary fractions: 7 of 10 pixels is IoU 0.7, 11 of 20 is 0.55. np.arange's
    # thresholds (0.7000000000000002) would miss the first.
    line = paint((1, slice(0, 1), slice(0, 10)))
    seven = paint((2, slice(0, 1), slice(0, 7)))
    assert [m.tp for m in object_matching(seven, line, (0.65, 0.7, 0.75)).values()] == [1, 1, 0]
    row = paint((1, slice(0, 2), slice(0, 10)))
    eleven = paint((2, slice(0, 1), slice(0, 10)), (2, slice(1, 2), slice(0, 1)))
    assert [m.tp for m in object_matching(eleven, row, (0.55, 0.6)).values()] == [1, 0]


def test_exact_halves_at_iou_one_half_give_one_match():
    # The only case where pairs at IoU >= 0.5 share an object: halves of exactly half the size, IoU 20/40 each.
    whole = paint((1, slice(0, 4), slice(0, 10)))
    halves = paint((1, slice(0, 4), slice(0, 5)), (2, slice(0, 4), slice(5, 10)))
    # Prediction splits A: tp 1, fp 1, fn 0; precision 1/2, recall 1, AP 1/2, F1 2/3, PQ 0.5/(1 + 1/2),
    # matched 0.5/1, true 0.5/1.
    split = object_matching(halves, whole, (0.5, 0.55), report_matches=True)
    expect(split[0.5], tp=1, fp=1, fn=0, precision=0.5, recall=1.0, accuracy=0.5, f1=2 / 3,
           panoptic_quality=1 / 3, mean_matched_score=0.5, mean_true_score=0.5)  # fmt: skip
    assert len(split[0.5].matched_pairs) == 1 and split[0.5].matched_ious == (0.5,)
    expect(split[0.55], tp=0, fp=2, fn=1)
    # Prediction merges A1 and A2: tp 1, fp 0, fn 1; precision 1, recall 1/2, AP 1/2, F1 2/3, PQ 0.5/(1 + 1/2),
    # matched 0.5/1, true 0.5/2.
    merged = object_matching(whole, halves, (0.5,))
    expect(merged[0.5], tp=1, fp=0, fn=1, precision=1.0, recall=0.5, accuracy=0.5, f1=2 / 3,
           panoptic_quality=1 / 3, mean_matched_score=0.5, mean_true_score=0.25)  # fmt: skip


def test_thresholds_below_one_half_are_refused():
    labels = paint((1, slice(0, 3), slice(0, 3)))
    for threshold in (0.49, 0.1, math.nan):
        with pytest.raises(ValueError, match="below 0.5"):
            object_matching(labels, labels, (threshold,))


def test_a_data_set_sums_counts_instead_of_averaging_frame_ratios():
    truth = paint((1, slice(0, 2), slice(0, 3)), (2, slice(3, 6), slice(0, 4)), (3, slice(0, 6), slice(6, 12)))
    lonely = paint((1, slice(0, 3), slice(0, 3)))
    frames = [(truth, truth), (np.zeros(SHAPE, np.int32), lonely)]  # (prediction, truth): perfect, then missed
    total = metrics.object_matching_dataset(frames)
    # Summed: tp 3 + 0, fp 0, fn 0 + 1, IoU sum 3: precision 3/3, recall 3/4, AP 3/(3+0+1), F1 6/(6+0+1),
    # PQ 3/(3 + 0 + 1/2), matched 3/3, true 3/4. The mean of the frames' APs would be (1 + 0)/2.
    for matching in total.values():
        expect(matching, tp=3, fp=0, fn=1, precision=1.0, recall=0.75, accuracy=0.75, f1=6 / 7,
               panoptic_quality=6 / 7, mean_matched_score=1.0, mean_true_score=0.75)  # fmt: skip
    assert metrics.mean_average_precision(total) == pytest.approx(0.75)
    per_frame = [object_matching(p, t) for p, t in frames]
    assert np.mean([metrics.mean_average_precision(m) for m in per_frame]) == pytest.approx(0.5)
    assert metrics.sum_matchings(per_frame) == total


# --- an independent brute-force reference ------------------------------------------------------------------


def brute_force(prediction: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """Every one-to-one assignment tried: the most pairs with IoU >= threshold, then the largest IoU sum, and
    StarDist's formulas applied to them. Dense masks, one per object."""
    true_masks = [truth == label for label in np.unique(truth) if label]
    pred_masks = [prediction == label for label in np.unique(prediction) if label]
    iou = [[(t & p).sum() / (t | p).sum() for p in pred_masks] for t in true_masks]
    n_true, n_pred = len(true_masks), len(pred_masks)
    best = (0, 0.0)
    # Truth object i takes slot assignment[i]; slots n_pred and above mean "unmatched".
    for assignment in itertools.permutations(range(n_pred + n_true), n_true):
        matched = [iou[i][j] for i, j in enumerate(assignment) if j < n_pred and iou[i][j] >= threshold]
        best = max(best, (len(matched), float(sum(matched))))
    tp, total = best
    fp, fn = n_pred - tp, n_true - tp

    def safe(x: float, y: float) -> float:
        return x / y if y else 0.0

    return {
        "tp": tp, "fp": fp, "fn": fn, "n_true": n_true, "n_pred": n_pred,
        "precision": safe(tp, tp + fp), "recall": safe(tp, tp + fn), "accuracy": safe(tp, tp + fp + fn),
        "f1": safe(2 * tp, 2 * tp + fp + fn), "mean_true_score": safe(total, n_true),
        "mean_matched_score": safe(total, tp), "panoptic_quality": safe(total, tp + fp / 2 + fn / 2),
    }  # fmt: skip


def random_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) of up to 4 true and 5 predicted objects: the truth shifted by a pixel, some labels
    merged, a box erased (splitting or shrinking objects) and an extra object; sometimes huge label values."""
    shape = (10, 12)
    truth = np.zeros(shape, np.int64)
    for label in range(1, int(rng.integers(0, 5)) + 1):
        (row, col), (height, width) = rng.integers(0, (8, 10)), rng.integers(2, 7, size=2)
        truth[row : row + height, col : col + width] = label
    new_labels = np.concatenate([[0], rng.permutation(np.arange(1, 30))[:4]])
    if rng.random() < 0.3:
        new_labels[2] = new_labels[1]
    prediction = new_labels[np.roll(truth, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))]
    if rng.random() < 0.5:
        (row, col), (height, width) = rng.integers(0, (9, 11)), rng.integers(1, 4, size=2)
        prediction[row : row + height, col : col + width] = 0
    if rng.random() < 0.5:
        (row, col), (height, width) = rng.integers(0, (8, 10)), rng.integers(1, 5, size=2)
        prediction[row : row + height, col : col + width] = 99
    if rng.random() < 0.3:
        prediction *= 10**9  # past _compact_labels' bincount range: the np.unique path
    return prediction, truth


def test_matches_a_brute_force_reference_on_random_label_images():
    rng = np.random.default_rng(20)
    partial = 0
    for _ in range(20):
        prediction, truth = random_pair(rng)
        result = object_matching(prediction, truth)
        for threshold, matching in result.items():
            assert matching.scores() == pytest.approx(brute_force(prediction, truth, threshold), abs=1e-12)
        partial += 0 < result[0.5].accuracy < 1
    assert partial >= 5  # the sample exercises splits, merges, misses and extras, not only perfect or empty frames


def test_sparse_ious_equal_dense_ones():
    rng = np.random.default_rng(3)
    for _ in range(5):
        prediction, truth = random_pair(rng)
        ious = metrics.object_ious(prediction, truth)
        dense = {
            (int(t), int(p)): ((truth == t) & (prediction == p)).sum() / ((truth == t) | (prediction == p)).sum()
            for t in np.unique(truth)
            for p in np.unique(prediction)
            if t and p and ((truth == t) & (prediction == p)).any()
        }
        sparse = dict(zip(zip(ious.true_labels.tolist(), ious.pred_labels.tolist()), ious.ious.tolist()))
        assert sparse == pytest.approx(dense)
        assert (ious.n_true, ious.n_pred) == (
            len(np.unique(truth[truth > 0])),
            len(np.unique(prediction[prediction > 0])),
        )


# --- StarDist itself, where installed (not a kunet dependency) -------------------------------------------


def discs(rng: np.random.Generator, count: int, shape=(96, 96)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for label in range(1, count + 1):
        centre = tuple(int(v) for v in rng.integers(0, shape[0], size=2))
        cv2.circle(labels, centre, int(rng.integers(4, 12)), label, -1)
    return labels


def test_agrees_with_stardist_matching():
    stardist_matching = pytest.importorskip("stardist.matching")
    rng = np.random.default_rng(7)
    pairs = []
    for _ in range(10):
        truth = discs(rng, 12)
        shifted = np.roll(truth, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
        extra = discs(rng, 3)
        prediction = np.where(extra > 0, 50 + extra, shifted * 3)  # relabelled, shifted, extras drawn over
        pairs.append((prediction, truth))
    # Boundary cases in binary fractions, which StarDist's float32 IoUs hold exactly: IoU 24/32 = 0.75 and
    # exact halves at 0.5.
    whole, halves = (
        paint((1, slice(0, 4), slice(0, 10))),
        paint((1, slice(0, 4), slice(0, 5)), (2, slice(0, 4), slice(5, 10))),
    )
    pairs += [
        (paint((2, slice(0, 4), slice(0, 6))), paint((1, slice(0, 4), slice(0, 8)))),
        (halves, whole),
        (whole, halves),
    ]
    for prediction, truth in pairs:
        ours = object_matching(prediction, truth)
        theirs = stardist_matching.matching(truth, prediction, thresh=IOU_THRESHOLDS)
        for matching, reference in zip(ours.values(), theirs, strict=True):
            reference = {key: float(getattr(reference, key)) for key in matching.scores()}
            assert matching.scores() == pytest.approx(reference, abs=1e-6)
    ours = metrics.object_matching_dataset(pairs)
    theirs = stardist_matching.matching_dataset([t for _, t in pairs], [p for p, _ in pairs], IOU_THRESHOLDS,
                                                show_progress=False)  # fmt: skip
    for matching, reference in zip(ours.values(), theirs, strict=True):
        reference = {key: float(getattr(reference, key)) for key in matching.scores()}
        assert matching.scores() == pytest.approx(reference, abs=1e-6)


# --- score_frame, evaluate, tune ---------------------------------------------------------------------------


def test_score_frame_scores_the_components_of_binary_labels():
    # Truth: three 4-connected components (the two diagonal neighbours at the bottom are two objects).
    true_mask = paint((1, slice(0, 3), slice(0, 3)), (1, slice(4, 6), slice(4, 6)), (1, slice(3, 4), slice(6, 8)))
    predicted = paint((1, slice(0, 3), slice(0, 3)), (1, slice(4, 6), slice(4, 6)))
    scores = score_frame(predicted, {"classes": true_mask}, 2, "binary")
    # tp 2, fp 0, fn 1 at every threshold: AP 2/(2+0+1), F1 4/(4+0+1).
    assert scores["ap50"] == pytest.approx(2 / 3) and scores["ap50_95"] == pytest.approx(2 / 3)
    assert scores["f1_50"] == pytest.approx(0.8)


def test_score_frame_scores_instances_as_seg_does():
    # Instance labels: the truth's ids (two touching cells) against the predicted components of at least
    # min_object_size pixels; the 1-pixel speck is dropped, so it is no false positive.
    label = paint((1, slice(0, 4), slice(0, 4)), (2, slice(0, 4), slice(4, 8)))
    classes = paint((1, slice(0, 4), slice(0, 3)), (1, slice(0, 4), slice(5, 8)), (1, slice(5, 6), slice(11, 12)))
    frame = {"classes": (label > 0).astype(np.uint8), "label": label}
    predicted, truth = frame_objects(classes, frame, "instance", min_object_size=2)
    assert truth is label and np.unique(predicted).tolist() == [0, 1, 2]
    scores = score_frame(classes, frame, 2, "instance", min_object_size=2)
    # IoUs 12/16 = 0.75 for both: tp 2, fp 0, fn 0 up to 0.75, nothing from 0.8: AP50:95 = 6/10.
    assert (scores["ap50"], scores["f1_50"]) == (1.0, 1.0) and scores["ap50_95"] == pytest.approx(0.6)
    assert score_frame(classes, frame, 2, "instance")["ap50"] == pytest.approx(2 / 3)  # the speck kept: fp 1
    three_classes = paint((1, slice(0, 3), slice(0, 3)), (2, slice(3, 6), slice(3, 6)))
    assert "ap50" not in score_frame(three_classes, {"classes": three_classes}, 3)  # no objects without instances


def test_a_frame_without_objects_is_nan_so_the_mean_skips_it():
    empty = np.zeros(SHAPE, np.uint8)
    assert all(math.isnan(object_scores(object_matching(empty, empty))[k]) for k in ("ap50", "f1_50", "ap50_95"))
    scores = score_frame(empty, {"classes": paint((1, slice(0, 2), slice(0, 2)))}, 2)
    assert (scores["ap50"], scores["f1_50"], scores["ap50_95"]) == (0.0, 0.0, 0.0)


def test_fit_logs_ap50_and_keeps_the_model_with_the_highest():
    assert VALIDATION_NAMES["ap50"] == "val_ap50"
    assert metric_is_better("val_ap50", 0.6, 0.5) and not metric_is_better("val_ap50", 0.4, 0.5)


def test_evaluate_reports_summed_object_counts_and_tune_sweeps_ap(trained_tiny_run, tiny_records, tmp_path):
    from kunet_cli.main import app
    from typer.testing import CliRunner

    from kunet.choices import OBJECTIVES
    from kunet.records import iterate_frames
    from kunet.segmenter import Segmenter
    from kunet.tune import choose, sweep

    _, records = tiny_records
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\n[model]\nbase_filters = 4\ndepth = 2\n[train]\ntile_size = 124\n')
    result = CliRunner().invoke(app, ["evaluate", str(trained_tiny_run), str(toml), "--records", str(records),
                                      "--out", str(tmp_path / "eval")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Objects, all frames' counts summed" in result.output and "AP50:95" in result.output
    report = json.loads((tmp_path / "eval" / "scores.json").read_text())
    objects = report["objects"]
    assert list(objects["thresholds"]) == [f"{t:.2f}" for t in IOU_THRESHOLDS]
    # The true objects do not depend on the model: the val frames' 4-connected components, summed.
    true_objects = sum(
        int(metrics.segments_from_foreground(f["classes"]).max()) for f in iterate_frames(records, "val")
    )
    for row in objects["thresholds"].values():
        assert row["tp"] + row["fn"] == row["n_true"] == true_objects
        assert row["accuracy"] == pytest.approx(row["tp"] / max(1, row["tp"] + row["fp"] + row["fn"]))
    assert objects["ap50_95"] == pytest.approx(np.mean([r["accuracy"] for r in objects["thresholds"].values()]))
    assert {"ap50", "f1_50", "ap50_95"} <= set(report["mean"])

    assert OBJECTIVES["ap"] == ("ap50", False) and OBJECTIVES["ap50_95"] == ("ap50_95", False)
    rows = sweep(Segmenter(trained_tiny_run), records, thresholds=(0.3, 0.5, 0.7), watershed_thresholds=())
    assert all({"ap50", "ap50_95"} <= set(row) for row in rows)
    assert choose(rows, "ap")["ap50"] == np.nanmax([row["ap50"] for row in rows])
