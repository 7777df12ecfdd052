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
