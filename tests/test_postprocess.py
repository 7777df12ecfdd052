"""Gap closing for membrane maps, and tuning the decision rule on the validation split."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kunet import metrics
from kunet.decision import DecisionRule
from kunet.segmenter import Segmenter
from kunet.train import Trainer
from kunet.tune import choose, tune


def _two_cells_with_a_faint_gap():
    """p(cell): two bright interiors, a membrane (p 0.05) with a 4-px gap where p is 0.6."""
    p = np.full((40, 60), 0.97, np.float32)
    p[:, 28:32] = 0.05
    p[18:22, 28:32] = 0.6  # the faint stretch of membrane
    return p


def test_watershed_lines_close_a_membrane_gap_that_merges_cells_at_the_threshold():
    p = _two_cells_with_a_faint_gap()
    plain = DecisionRule(0.5, "none").foreground_classes(p)
    assert metrics.segments_from_foreground(plain).max() == 1  # merged through the gap
    closed = DecisionRule(0.5, "watershed", seed_threshold=0.9).foreground_classes(p)
    assert metrics.segments_from_foreground(closed).max() == 2
    assert np.sum(plain != closed) == 4  # only the 1-px cut through the 4-px gap changes
    one_seed = np.full((30, 30), 0.99, np.float32)
    assert DecisionRule(0.5, "watershed").foreground_classes(one_seed).all()  # nothing to separate


def test_predictor_and_validation_during_fit_decide_with_the_stored_watershed_rule():
    # Validation during `fit` decides through Predictor.classes: it must score the masks `predict` returns,
    # not plain threshold components, or best.keras and the curves judge a different rule.
    from kunet.inference import InferenceSettings, Predictor
    from kunet.model import UNet

    p = _two_cells_with_a_faint_gap()
    probabilities = np.stack([1 - p, p], axis=-1)
    model = UNet(base_filters=2, depth=2, seed=0)
    watershed = InferenceSettings(threshold=0.5, postprocess="watershed", seed_threshold=0.9)
    classes = Predictor(model, watershed).classes(probabilities)
    assert metrics.segments_from_foreground(classes > 0).max() == 2
    np.testing.assert_array_equal(classes, DecisionRule(0.5, "watershed", 0.9).foreground_classes(p))
    plain = Predictor(model, InferenceSettings(threshold=0.5)).classes(probabilities)
    assert metrics.segments_from_foreground(plain > 0).max() == 1


def test_watershed_cut_follows_the_dimmest_path_not_the_midpoint():
    """Fronts cross bright interiors first, so the cut lands on the faint membrane, off-centre."""
    p = np.full((20, 60), 0.98, np.float32)
    p[:, 40] = 0.55  # a faint membrane two thirds across, no gap-free separation at threshold 0.5
    lines = DecisionRule(0.5).foreground_classes(p) & ~DecisionRule(0.5, "watershed", 0.9).foreground_classes(p)
    assert lines[:, 40].all() and lines.sum() == 20


def test_the_cut_map_is_thin_where_the_leaderboard_sweeps_low_and_thick_above():
    """One map for both leaderboard sweeps: at 0.0 only the 1-px cut lines are membrane, above the plain map's
    thresholded membrane remains (with the cut), and a rule that cuts nothing leaves p as it is."""
    p = _two_cells_with_a_faint_gap()
    probabilities = np.stack([1 - p, p], axis=-1)
    rule = DecisionRule(0.5, "watershed", seed_threshold=0.9)
    cut_map = rule.cut_map(probabilities)
    lines = cut_map == 0
    # The fronts meet in a 1-px line through the membrane's whole height (flooded down to p = 0).
    assert lines.sum() == 40 and (lines.sum(axis=1) == 1).all() and lines[:, 28:32].all(axis=1).sum() == 0
    assert lines[:, 28:32].any(axis=1).all()
    np.testing.assert_array_equal(cut_map[~lines], p[~lines])
    assert metrics.segments_from_foreground(cut_map > 0.0).max() == 2  # thin membrane, cells apart
    at_half = cut_map > 0.5
    np.testing.assert_array_equal(at_half, (p > 0.5) & ~lines)
    assert metrics.segments_from_foreground(at_half).max() == 2
    np.testing.assert_array_equal(DecisionRule(0.5).cut_map(probabilities), p)
    # Scored as the 2015 leaderboard did, against a 1-px membrane (the net's 4-px one is thick): the plain map's
    # membrane pixels inside true cells are singleton segments at every threshold; the cut map's line is exact.
    truth = np.full(p.shape, 255, np.uint8)
    truth[:, 30] = 0
    cut_error = metrics.leaderboard_rand_error(cut_map[None], truth[None])
    plain_error = metrics.leaderboard_rand_error(p[None], truth[None])
    assert cut_error.value == 0.0 and cut_error.threshold == 0.0 and plain_error.value > 0.05


def test_tensorflow_and_numpy_decisions_agree():
    p = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    p = (p + np.roll(p, 1, 0) + np.roll(p, 1, 1)) / 3  # some spatial structure
    probabilities = np.stack([1 - p, p], axis=-1)
    three = np.random.default_rng(1).dirichlet([1, 1, 1], (20, 30)).astype(np.float32)
    for rule, values in ((DecisionRule(0.45, "watershed", 0.6), probabilities), (DecisionRule(0.3), probabilities),
                         (DecisionRule(0.5), three)):  # fmt: skip
        got = tf.function(rule.tf_classes)(tf.constant(values)).numpy()
        np.testing.assert_array_equal(got, rule.classes(values))


@pytest.mark.slow
def test_tune_picks_the_best_row_and_stores_it_with_the_model(tiny_records, tmp_path):
    config, records = tiny_records
    run = tmp_path / "run"
    Trainer(config, run, records, log=lambda *a, **k: None).fit(steps=8)
    result = tune(run, records, objective="pixel")
    values = [row["pixel_error"] for row in result["rows"]]
    assert result["chosen"]["pixel_error"] == min(values)
    assert choose(result["rows"], "iou")["iou"] == max(row["iou"] for row in result["rows"])
    stored = keras.models.load_model(run / "best.keras").metadata
    assert stored["threshold"] == result["chosen"]["threshold"]
    assert stored["postprocess"] == result["chosen"]["postprocess"]
    assert Segmenter(run).settings.threshold == result["chosen"]["threshold"]
    assert json.loads((run / "tune.json").read_text())["objective"] == "pixel"


def test_tune_for_the_leaderboard_picks_the_cut_map_that_scores_best_as_one_stack(trained_tiny_run, tiny_records):
    from kunet.records import iterate_frames

    _, records = tiny_records
    result = tune(trained_tiny_run, records, objective="leaderboard", store=False)
    rows, chosen = result["rows"], result["chosen"]
    best = min(row["leaderboard_cut_map"] for row in rows)
    assert chosen["leaderboard_cut_map"] == best
    ties = [row for row in rows if row["leaderboard_cut_map"] == best]
    assert chosen["rand_plus_pixel"] == min(row["rand_plus_pixel"] for row in ties)
    assert {row["seed_threshold"] for row in rows if row["postprocess"] == "watershed"} >= {0.98}
    # The chosen value is Table 1's Rand + pixel error of that rule's cut maps, frames stacked in id order.
    segmenter = Segmenter(trained_tiny_run)
    rule = DecisionRule(chosen["threshold"], chosen["postprocess"], chosen["seed_threshold"] or 0.9, False,
                        chosen["seed_smoothing"])  # fmt: skip
    frames = sorted(iterate_frames(records, "val"), key=lambda frame: frame["frame_id"])
    cut_maps = np.stack([rule.cut_map(segmenter.probabilities(frame["image"])) for frame in frames])
    truth = np.stack([frame["classes"] for frame in frames])
    expected = (
        metrics.leaderboard_rand_error(cut_maps, truth).value + metrics.leaderboard_pixel_error(cut_maps, truth).value
    )
    assert chosen["leaderboard_cut_map"] == pytest.approx(expected, abs=1e-6)
    # Rows that share seeds and blur share the cut map, whatever their threshold.
    by_rule = {}
    for row in rows:
        by_rule.setdefault((row["postprocess"], row["seed_threshold"], row["seed_smoothing"]), set()).add(
            row["leaderboard_cut_map"]
        )
    assert all(len(values) == 1 for values in by_rule.values())
