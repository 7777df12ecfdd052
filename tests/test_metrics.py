"""Tests for kunet.metrics: hand-worked cases, invariances, scikit-image as a reference, real labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kunet import metrics

# An odd size so that no code path silently assumes even or square images.
SHAPE = (37, 53)


def cell_grid(shape: tuple[int, int] = SHAPE, step: int = 9) -> np.ndarray:
    """Foreground = square cells separated by 1-pixel background "membranes" (ISBI-like)."""
    rows, cols = np.indices(shape)
    return (rows % step != 0) & (cols % step != 0)


def rectangle(rows: slice, cols: slice, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def read_label(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def count_topology(mask: np.ndarray) -> tuple[int, int]:
    """(4-connected foreground components, 8-connected background components), outside = background."""
    padded = np.pad(mask, 1).astype(np.uint8)
    foreground = cv2.connectedComponents(padded, connectivity=4)[0] - 1
    background = cv2.connectedComponents(1 - padded, connectivity=8)[0] - 1
    return foreground, background


# ------------------------------------------------------------------------------------------------
# Perfect predictions
# ------------------------------------------------------------------------------------------------


def test_perfect_prediction_scores_perfectly():
    truth = cell_grid()
    instances = metrics.instances_from_foreground(truth)
    scores = metrics.binary_segmentation_scores(truth, truth, truth_instances=instances)
    assert scores == {
        "pixel_error": 0.0,
        "iou": 1.0,
        "dice": 1.0,
        "rand_error": 0.0,
        "adapted_rand_error": 0.0,
        "adapted_rand_error_grown": 0.0,
        "warping_error": 0.0,
        "seg": 1.0,
    }
    assert metrics.adapted_rand_error(instances, instances) == (0.0, 1.0, 1.0)
    assert not metrics.topological_errors(truth, truth).any()


def test_seg_key_only_with_reference_instances():
    truth = cell_grid()
    assert "seg" not in metrics.binary_segmentation_scores(truth, truth)


# ------------------------------------------------------------------------------------------------
# Pixel error, IoU, Dice
# ------------------------------------------------------------------------------------------------


def test_pixel_error_counts_differing_pixels_and_respects_ignore():
    truth = rectangle(slice(5, 15), slice(5, 25))
    prediction = truth.copy()
    prediction[5, 5:25] = False  # 20 wrong pixels
    assert metrics.pixel_error(prediction, truth) == pytest.approx(20 / truth.size)
    ignore = np.zeros(SHAPE, dtype=bool)
    ignore[5, :] = True
    assert metrics.pixel_error(prediction, truth, ignore=ignore) == 0.0
    # 0/255 labels and booleans mean the same thing.
    assert metrics.pixel_error(prediction * 255, truth.astype(np.uint8)) == pytest.approx(20 / truth.size)
    assert np.isnan(metrics.pixel_error(prediction, truth, ignore=np.ones(SHAPE, dtype=bool)))


def test_iou_and_dice_by_hand_with_absent_class_nan():
    truth = np.array([[0, 0, 1, 1, 1]])
    prediction = np.array([[0, 1, 1, 1, 0]])
    # class 0: P = {0, 4}, T = {0, 1}: |P∩T| = 1, |P∪T| = 3; class 1: |P∩T| = 2, |P∪T| = 4; class 2: absent.
    iou = metrics.iou_per_class(prediction, truth, num_classes=3)
    np.testing.assert_allclose(iou[:2], [1 / 3, 2 / 4])
    assert np.isnan(iou[2])
    dice = metrics.dice_per_class(prediction, truth, num_classes=3)
    np.testing.assert_allclose(dice[:2], [2 * 1 / 4, 2 * 2 / 6])
    assert np.isnan(dice[2])
    ignore = np.array([[False, True, False, False, True]])
    np.testing.assert_allclose(metrics.iou_per_class(prediction, truth, 2, ignore=ignore), [1.0, 1.0])


def test_iou_rejects_classes_out_of_range():
    with pytest.raises(ValueError, match="prediction_classes"):
        metrics.iou_per_class(np.array([0, 3]), np.array([0, 1]), num_classes=2)


def test_iou_on_odd_size_matches_set_definition():
    rng = np.random.default_rng(1)
    prediction, truth = rng.random(SHAPE) < 0.5, rng.random(SHAPE) < 0.4
    expected = (prediction & truth).sum() / (prediction | truth).sum()
    assert metrics.iou_per_class(prediction, truth, 2)[1] == pytest.approx(expected)
    expected_dice = 2 * (prediction & truth).sum() / (prediction.sum() + truth.sum())
    assert metrics.dice_per_class(prediction, truth, 2)[1] == pytest.approx(expected_dice)


# ------------------------------------------------------------------------------------------------
# Rand and adapted Rand
# ------------------------------------------------------------------------------------------------


def test_rand_error_hand_worked_2x3():
    truth = np.array([[1, 1, 2], [1, 2, 2]])
    prediction = np.array([[1, 1, 1], [2, 2, 2]])
    # N = 6 pixels, C(6, 2) = 15 pairs. Contingency (truth row, prediction column):
    #   n(1,1) = 2, n(1,2) = 1, n(2,1) = 1, n(2,2) = 2; truth sizes 3, 3; prediction sizes 3, 3.
    # Pairs together in both:      C(2,2) + C(2,2)          = 2
    # Pairs together in truth:     C(3,2) + C(3,2)          = 6
    # Pairs together in prediction: C(3,2) + C(3,2)         = 6
    # Pairs apart in both:          15 - 6 - 6 + 2          = 5
    # Rand index = (2 + 5) / 15 = 7/15, Rand error = 8/15.
    assert metrics.rand_error(prediction, truth) == pytest.approx(8 / 15)
    # Adapted Rand with nothing ignored: ordered pairs Σn(n-1) = 2 + 2 = 4 in both, 12 in truth and in
    # the prediction, so precision = recall = F = 1/3 and the error is 2/3.
    error, precision, recall = metrics.adapted_rand_error(prediction, truth, ignore_truth_labels=())
    assert (error, precision, recall) == pytest.approx((2 / 3, 1 / 3, 1 / 3))


def _relabel(labels: np.ndarray, rng: np.random.Generator, keep_zero: bool) -> np.ndarray:
    distinct = np.unique(labels)
    new_ids = rng.permutation(1000)[: len(distinct)] + 1
    if keep_zero:
        new_ids[distinct == 0] = 0
    return new_ids[np.searchsorted(distinct, labels)]


def test_rand_scores_invariant_to_relabelling():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 6, size=SHAPE)
    prediction = rng.integers(0, 9, size=SHAPE)
    permuted_truth = _relabel(truth, rng, keep_zero=True)  # 0 is the ignored label: keep it
    permuted_prediction = _relabel(prediction, rng, keep_zero=False)  # a predicted 0 is a plain label
    assert not np.array_equal(permuted_prediction, prediction)
    assert metrics.rand_error(permuted_prediction, permuted_truth) == pytest.approx(
        metrics.rand_error(prediction, truth), abs=1e-15
    )
    np.testing.assert_allclose(
        metrics.adapted_rand_error(permuted_prediction, permuted_truth),
        metrics.adapted_rand_error(prediction, truth),
        rtol=1e-13,
    )


def test_rand_error_is_symmetric_and_handles_any_integer_labels():
    rng = np.random.default_rng(3)
    a = rng.integers(-5, 5, size=SHAPE)  # negative labels take the np.unique path
    b = rng.integers(0, 1 << 40, size=SHAPE)  # huge labels too
    assert metrics.rand_error(a, b) == pytest.approx(metrics.rand_error(b, a))


def test_split_and_merge_both_increase_rand_errors():
    truth = np.ones(SHAPE, dtype=np.int32)
    truth[:, 26:] = 2
    split = truth.copy()
    split[:18, :26] = 3  # truth segment 1 split in two
    merged = np.ones(SHAPE, dtype=np.int32)  # both truth segments merged
    assert metrics.rand_error(truth, truth) == 0.0
    assert metrics.rand_error(split, truth) > 0
    assert metrics.rand_error(merged, truth) > 0

    error, precision, recall = metrics.adapted_rand_error(split, truth, ignore_truth_labels=())
    assert error > 0 and precision == 1.0 and recall < 1.0  # a split costs recall (Rand split score)
    error, precision, recall = metrics.adapted_rand_error(merged, truth, ignore_truth_labels=())
    assert error > 0 and precision < 1.0 and recall == 1.0  # a merge costs precision (Rand merge score)


def test_adapted_rand_ignores_only_truth_boundary():
    truth = np.array([[1, 1, 0, 2, 2]])
    # Whatever the prediction does on the ignored truth pixel does not matter ...
    assert metrics.adapted_rand_error(np.array([[1, 1, 7, 2, 2]]), truth)[0] == 0.0
    assert metrics.adapted_rand_error(np.array([[1, 1, 1, 2, 2]]), truth)[0] == 0.0
    # ... but a predicted 0 inside true segments is one segment (scikit-image's convention): a merge.
    error, precision, recall = metrics.adapted_rand_error(np.array([[1, 0, 0, 0, 2]]), truth)
    assert error > 0 and precision < 1.0
    assert all(np.isnan(metrics.adapted_rand_error(truth, np.zeros_like(truth))))


def test_adapted_rand_matches_skimage_on_random_segmentations():
    sk_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    for num_truth, num_prediction in [(2, 2), (5, 40), (60, 3), (300, 300)]:
        truth = rng.integers(0, num_truth, size=SHAPE)
        # Spatially coherent predictions: blocks of the truth with part of them relabelled.
        prediction = np.where(rng.random(SHAPE) < 0.3, rng.integers(0, num_prediction, size=SHAPE), truth)
        ours = metrics.adapted_rand_error(prediction, truth)
        error, sk_precision, sk_recall = sk_metrics.adapted_rand_error(truth, prediction, ignore_labels=(0,))
        assert ours[0] == pytest.approx(error, rel=1e-12, abs=1e-15)
        # scikit-image returns precision and recall swapped (scikit-image issue #6485).
        assert ours[1] == pytest.approx(sk_recall, rel=1e-12)
        assert ours[2] == pytest.approx(sk_precision, rel=1e-12)


def test_adapted_rand_matches_skimage_on_isbi_labels(isbi_dir):
    sk_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(5)
    for name in ("slice_00.png", "slice_17.png"):
        truth_foreground = read_label(isbi_dir / "train" / "labels" / name) > 0
        truth_segments = metrics.segments_from_foreground(truth_foreground)
        # Perturbed prediction: eroded (splits thin necks), shifted and with salt-and-pepper noise.
        eroded = cv2.erode(truth_foreground.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        prediction = np.roll(eroded, 2, axis=1) ^ (rng.random(eroded.shape) < 0.01)
        raw = metrics.segments_from_foreground(prediction)
        grown = metrics.grow_segments(raw)
        assert raw.max() > truth_segments.max()
        for segments in (raw, grown):
            ours = metrics.adapted_rand_error(segments, truth_segments)
            reference = sk_metrics.adapted_rand_error(truth_segments, segments, ignore_labels=(0,))
            np.testing.assert_allclose(ours, (reference[0], reference[2], reference[1]), rtol=1e-12)
        # Growing predicted components into the predicted boundary removes the big "0 segment" merge.
        assert metrics.adapted_rand_error(grown, truth_segments)[0] < metrics.adapted_rand_error(raw, truth_segments)[0]


# ------------------------------------------------------------------------------------------------
# Segments, growing, instances
# ------------------------------------------------------------------------------------------------


def test_segments_from_foreground_connectivity():
    mask = np.zeros(SHAPE, dtype=bool)
    mask[3, 3] = mask[4, 4] = True  # diagonal neighbours
    assert metrics.segments_from_foreground(mask).max() == 2
    assert metrics.segments_from_foreground(mask, connectivity=8).max() == 1
    assert metrics.segments_from_foreground(cell_grid()).dtype == np.int32


def test_grow_segments_assigns_nearest_segment():
    segments = np.zeros(SHAPE, dtype=np.int32)
    segments[:, :10] = 4
    segments[:, 40:] = 9
    grown = metrics.grow_segments(segments)
    assert (grown != 0).all()
    assert (grown[:, :24] == 4).all() and (grown[:, 26:] == 9).all()
    np.testing.assert_array_equal(grown[segments != 0], segments[segments != 0])

    into = np.zeros(SHAPE, dtype=bool)
    into[:, 20] = True
    only_into = metrics.grow_segments(segments, into=into)
    assert (only_into[:, 20] == 4).all()
    assert (only_into[:, 11:20] == 0).all() and (only_into[:, 21:40] == 0).all()
    assert (metrics.grow_segments(np.zeros(SHAPE, np.int32)) == 0).all()


def test_instances_from_foreground_drops_small_objects_and_relabels_consecutively():
    mask = rectangle(slice(2, 12), slice(2, 12)) | rectangle(slice(20, 22), slice(20, 22))
    mask |= rectangle(slice(25, 35), slice(40, 50))
    instances = metrics.instances_from_foreground(mask, min_size=5)
    assert set(np.unique(instances)) == {0, 1, 2}
    assert (instances[20:22, 20:22] == 0).all()
    assert (instances[25:35, 40:50] == 2).all()
    assert metrics.instances_from_foreground(mask).max() == 3


# ------------------------------------------------------------------------------------------------
# Warping error
# ------------------------------------------------------------------------------------------------


def test_simple_point_table_examples():
    table = metrics._simple_point_table()

    def code(patch: list[list[int]]) -> int:
        bits = [patch[1 + dy][1 + dx] for dy, dx in metrics._NEIGHBOUR_OFFSETS]
        return sum(bit << index for index, bit in enumerate(bits))

    assert not table[code([[0, 0, 0], [0, 0, 0], [0, 0, 0]])]  # isolated pixel: deleting removes an object
    assert not table[code([[1, 1, 1], [1, 0, 1], [1, 1, 1]])]  # enclosed pixel: flipping changes a hole
    assert table[code([[0, 0, 0], [0, 0, 0], [0, 1, 0]])]  # end of a line
    assert table[code([[1, 1, 1], [0, 0, 0], [0, 0, 0]])]  # on a straight border
    assert not table[code([[0, 1, 0], [0, 0, 0], [0, 1, 0]])]  # bridge between two foreground parts
    # Diagonal foreground neighbours are not 4-connected: joining them merges two objects.
    assert not table[code([[1, 0, 0], [0, 0, 0], [0, 0, 1]])]


def test_boundary_shift_has_zero_warping_error_but_pixel_error():
    truth = rectangle(slice(10, 21), slice(10, 31))
    shifted = rectangle(slice(11, 22), slice(9, 30))
    assert metrics.pixel_error(shifted, truth) > 0
    assert metrics.warping_error(shifted, truth) == 0.0
    # Thicker membranes everywhere (cells eroded by one pixel) only move boundaries, too.
    grid = cell_grid()
    eroded = cv2.erode(grid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert metrics.pixel_error(eroded, grid) > 0.2
    assert metrics.warping_error(eroded, grid) == 0.0


def test_one_pixel_bridge_merging_two_objects_is_a_warping_error():
    truth = rectangle(slice(10, 21), slice(5, 21)) | rectangle(slice(10, 21), slice(22, 41))
    merged = truth.copy()
    merged[15, 21] = True  # closes the 1-pixel gap in one place
    errors = metrics.topological_errors(merged, truth)
    assert np.argwhere(errors).tolist() == [[15, 21]]
    assert metrics.warping_error(merged, truth) == pytest.approx(1 / truth.size)
    assert metrics.pixel_error(merged, truth) == pytest.approx(1 / truth.size)


def test_cut_splitting_one_object_is_a_warping_error():
    truth = rectangle(slice(10, 21), slice(5, 41))
    split = truth.copy()
    split[:, 20] = False
    errors = metrics.topological_errors(split, truth)
    assert errors.sum() >= 1
    assert not errors[:, np.arange(SHAPE[1]) != 20].any()  # only on the cut
    assert metrics.warping_error(split, truth) > 0


def test_holes_and_missing_or_extra_objects_are_warping_errors():
    truth = rectangle(slice(10, 21), slice(5, 41))
    with_hole = truth.copy()
    with_hole[15, 12] = False
    assert np.argwhere(metrics.topological_errors(with_hole, truth)).tolist() == [[15, 12]]

    small_object = rectangle(slice(30, 33), slice(45, 48))
    missing = metrics.topological_errors(truth, truth | small_object)
    assert 1 <= missing.sum() <= 9 and not (missing & ~small_object).any()
    extra = metrics.topological_errors(truth | small_object, truth)
    assert extra.sum() >= 1 and not (extra & ~small_object).any()


def test_warped_truth_keeps_truth_topology_and_ends_where_nothing_is_simple():
    rng = np.random.default_rng(6)
    truth = cell_grid()
    truth[rng.random(SHAPE) < 0.05] = False  # a few holes and nicks
    prediction = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 1.5) + rng.normal(0, 0.3, SHAPE) > 0.5
    warped = metrics.warp_towards(truth, prediction)
    assert count_topology(warped) == count_topology(truth)
    assert metrics.pixel_error(prediction, warped) <= metrics.pixel_error(prediction, truth)
    # No remaining disagreement can be flipped without changing the topology.
    table = metrics._simple_point_table()
    padded = np.pad(warped, 1)
    for row, col in np.argwhere(warped != prediction):
        bits = [padded[row + 1 + dy, col + 1 + dx] for dy, dx in metrics._NEIGHBOUR_OFFSETS]
        assert not table[sum(int(bit) << index for index, bit in enumerate(bits))]


def test_warping_error_on_isbi_labels(isbi_dir):
    truth = read_label(isbi_dir / "train" / "labels" / "slice_03.png") > 0
    shifted = np.roll(truth, 1, axis=0)
    assert metrics.warping_error(truth, truth) == 0.0
    # A one-pixel shift of a real membrane map is almost only boundary movement.
    assert metrics.warping_error(shifted, truth) < 0.05 * metrics.pixel_error(shifted, truth)
    other = read_label(isbi_dir / "train" / "labels" / "slice_04.png") > 0
    assert count_topology(metrics.warp_towards(truth, other)) == count_topology(truth)
    assert metrics.warping_error(other, truth) > 0


# ------------------------------------------------------------------------------------------------
# Cell Tracking Challenge SEG
# ------------------------------------------------------------------------------------------------


def test_seg_partial_annotation_and_half_coverage():
    truth = np.zeros(SHAPE, dtype=np.uint16)
    truth[5:15, 5:15] = 3  # 100 pixels
    truth[20:30, 30:40] = 8  # 100 pixels
    prediction = np.zeros(SHAPE, dtype=np.int32)
    prediction[5:15, 5:15] = 1
    prediction[20:30, 30:36] = 2  # covers 60 of 100 pixels: Jaccard 60/100
    assert metrics.seg_per_object(prediction, truth) == pytest.approx({3: 1.0, 8: 0.6})
    assert metrics.seg_measure(prediction, truth) == pytest.approx(0.8)

    # Extra predicted objects where the reference has no annotation change nothing.
    with_extras = prediction.copy()
    with_extras[30:36, 2:20] = 5
    with_extras[0:4, 45:53] = 6
    assert metrics.seg_measure(with_extras, truth) == pytest.approx(0.8)

    # Exactly half (50 of 100 pixels) is not a match, nor is less; more than half is.
    half = prediction.copy()
    half[20:30, 35] = 0  # now 50 pixels
    assert metrics.seg_per_object(half, truth)[8] == 0.0
    half[20, 35] = 2  # 51 pixels, prediction entirely inside: Jaccard 51/100
    assert metrics.seg_per_object(half, truth)[8] == pytest.approx(0.51)


def test_seg_jaccard_counts_predicted_pixels_outside_the_reference():
    truth = np.zeros(SHAPE, dtype=np.int32)
    truth[10:20, 10:20] = 1  # 100 pixels
    prediction = np.zeros(SHAPE, dtype=np.int32)
    prediction[10:20, 10:25] = 4  # 100 inside + 50 outside: 100/150
    assert metrics.seg_measure(prediction, truth) == pytest.approx(100 / 150)


def test_seg_without_reference_objects_is_nan():
    prediction = metrics.instances_from_foreground(cell_grid())
    assert np.isnan(metrics.seg_measure(prediction, np.zeros(SHAPE, dtype=np.int32)))
    assert metrics.seg_per_object(prediction, np.zeros(SHAPE, dtype=np.int32)) == {}


def test_seg_on_hela_reference(hela_dir):
    path = sorted((hela_dir / "01_GT" / "SEG").glob("man_seg*.tif"))[0]
    truth = read_label(path)
    assert truth.dtype == np.uint16
    rng = np.random.default_rng(7)
    assert metrics.seg_measure(_relabel(truth, rng, keep_zero=True), truth) == 1.0
    # Components of the foreground merge the touching cells of this frame, which SEG must punish.
    merged = metrics.instances_from_foreground(truth > 0)
    assert merged.max() < len(np.unique(truth)) - 1
    assert metrics.seg_measure(merged, truth) < 1.0
    scores = metrics.binary_segmentation_scores(truth > 0, truth > 0, truth_instances=truth)
    assert scores["seg"] == pytest.approx(metrics.seg_measure(merged, truth))
