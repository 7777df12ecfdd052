"""The third, ``border`` class of instance labels (``[labels] border_width``): labels, decision, and the
whole journey from records to an export, which must compute the instances ``predict`` computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from kunet import metrics
from kunet.config import LabelConfig, pipeline_from_dict
from kunet.decision import DecisionRule
from kunet.errors import ConfigError
from kunet.sources import carve_separation_ridges, interpret_label


def _two_touching_squares() -> np.ndarray:
    instances = np.zeros((20, 30), np.uint16)
    instances[3:17, 3:15] = 7
    instances[3:17, 15:27] = 9  # touches 7 along a whole column
    return instances


def test_border_pixels_flank_the_separation_ridge_and_foreground_is_unchanged():
    instances = _two_touching_squares()
    two = interpret_label(instances, LabelConfig(kind="instance"), "x")
    three = interpret_label(instances, LabelConfig(kind="instance", border_width=2), "x")
    np.testing.assert_array_equal(three.classes > 0, two.classes > 0)  # the ridge stays background
    np.testing.assert_array_equal(three.objects, two.objects)  # the weight map separates the same objects
    ridge_column = 15  # the higher id loses its contact column (carve_separation_ridges)
    assert (carve_separation_ridges(instances.astype(np.int32))[3:17, ridge_column] == 0).all()
    border = three.classes == 2
    rows, columns = np.nonzero(border)
    assert set(columns) == {13, 14, 16, 17}  # 2 px on each side of the ridge, in both objects
    assert rows.min() == 3 and rows.max() == 16  # 8-connected reach ends where the objects end
    assert (three.classes[three.classes > 0][~border[three.classes > 0]] == 1).all()
    # An object that touches nothing has no border pixels.
    alone = np.zeros((20, 20), np.uint16)
    alone[5:15, 5:15] = 3
    assert (interpret_label(alone, LabelConfig(kind="instance", border_width=2), "x").classes != 2).all()


def test_the_border_class_makes_three_named_classes_and_only_for_instance_labels(tmp_path):
    config = pipeline_from_dict({"name": "b", "labels": {"kind": "instance", "class_names": ["bg", "cell"],
                                                         "border_width": 1}}, base_dir=tmp_path)  # fmt: skip
    assert config.labels.num_classes == 3 and config.labels.names() == ["bg", "cell", "border"]
    assert config.labels.class_values() == [0, 255, 128]
    with pytest.raises(ConfigError, match="border_width"):
        pipeline_from_dict({"name": "b", "labels": {"kind": "binary", "border_width": 2}}, base_dir=tmp_path)
    four = {"kind": "instance", "border_width": 2, "class_names": ["a", "b", "c", "d"]}
    with pytest.raises(ConfigError, match="class_names must name 3"):
        pipeline_from_dict({"name": "b", "labels": four}, base_dir=tmp_path)


def _touching_cells_probabilities() -> np.ndarray:
    """[40, 60, 3]: two cells whose contact (columns 26-33) the net calls border, none of it background."""
    p = np.zeros((40, 60, 3), np.float32)
    p[...] = (0.02, 0.95, 0.03)
    p[:, 26:34] = (0.05, 0.25, 0.70)
    p[:, :3] = (0.9, 0.05, 0.05)  # background at both ends
    p[:, -3:] = (0.9, 0.05, 0.05)
    return p


def test_border_watershed_separates_cells_the_threshold_merges_and_cuts_only_the_border():
    p = _touching_cells_probabilities()
    plain = DecisionRule(0.5, "none", border_class=True).classes(p)
    assert metrics.segments_from_foreground(plain).max() == 1  # 1 - p(background) joins the two cells
    split = DecisionRule(0.5, "watershed", seed_threshold=0.7, border_class=True).classes(p)
    assert metrics.segments_from_foreground(split).max() == 2
    cut = (plain == 1) & (split == 0)
    columns = np.nonzero(cut)[1]
    assert cut.sum() == 40 and columns.min() >= 26 and columns.max() < 34  # one 1-px line through the border
    # The two-class reading of the same net (p of the last class) would call the border the foreground.
    assert not np.array_equal(DecisionRule(0.5).classes(p), plain)
    with pytest.raises(ValueError, match="all its probabilities"):
        DecisionRule(0.5, border_class=True).foreground_classes(p[..., 1])


def test_border_rule_is_the_same_in_tensorflow_and_numpy_and_comes_from_the_settings():
    from kunet.inference import InferenceSettings

    rng = np.random.default_rng(3)
    noisy = _touching_cells_probabilities() + rng.normal(0, 0.05, (40, 60, 3)).astype(np.float32)
    noisy = np.clip(noisy, 0.001, None)
    noisy /= noisy.sum(-1, keepdims=True)
    settings = InferenceSettings(class_values=(0, 255, 128), label_kind="instance", threshold=0.5,
                                 postprocess="watershed", seed_threshold=0.7)  # fmt: skip
    rule = DecisionRule.of(settings)
    assert rule.border_class and rule.decided_classes(3) == 2
    assert not DecisionRule.of(InferenceSettings(class_values=(0, 1, 2), label_kind="multiclass")).border_class
    got = tf.function(rule.tf_classes)(tf.constant(noisy)).numpy()
    np.testing.assert_array_equal(got, rule.classes(noisy))


@pytest.mark.slow
def test_a_border_net_trains_tunes_predicts_and_exports_the_same_instances(tmp_path):
    """Synthetic touching cells, 3 classes: records hold the border class, fit validates on SEG, tune chooses
    a rule on p(cell) seeds, and predict and the exported graph give the same masks and instances."""
    from helpers import tiny_pipeline_dict

    from kunet.evaluation import evaluate
    from kunet.records import build_records, iterate_frames
    from kunet.segmenter import Segmenter
    from kunet.serving.export import export
    from kunet.synthetic import write_cells_dataset
    from kunet.train import Trainer
    from kunet.tune import tune

    data = write_cells_dataset(tmp_path / "cells", count=4, size=160, seed=1, sequences=("01",), log=None)
    settings = tiny_pipeline_dict(str(tmp_path / "records"))
    settings["source"] = {"kind": "ctc", "root": str(data), "sequences": ["01"]}
    settings["labels"] = {"kind": "instance", "class_names": ["background", "cell"], "border_width": 2}
    settings["records"] |= {"val_ids": ["01_t003"]}
    settings["inference"] = {"min_object_size": 20}
    config = pipeline_from_dict(settings, base_dir=tmp_path)
    manifest = build_records(config)
    assert manifest["labels"]["class_names"] == ["background", "cell", "border"]
    assert all(count > 0 for count in manifest["class_pixel_counts"]["train"])  # the samples have contacts
    run = tmp_path / "run"
    Trainer(config, run, tmp_path / "records", log=lambda *a, **k: None).fit(steps=6)
    history = (run / "history.csv").read_text().splitlines()
    assert "val_seg" in history[0] and history[-1].split(",")[history[0].split(",").index("val_seg")] != ""

    report = tune(run, tmp_path / "records", objective="seg")
    seeds = {row["seed_threshold"] for row in report["rows"] if row["postprocess"] == "watershed"}
    assert seeds == {0.5, 0.6, 0.7, 0.8, 0.9}  # on p(cell), not above the threshold
    stored = json.loads((run / "tune.json").read_text())["chosen"]
    segmenter = Segmenter(run / "best.keras")
    assert segmenter.settings.threshold == stored["threshold"] and segmenter.num_classes == 3

    image = next(iterate_frames(tmp_path / "records", "val"))["image"][..., 0]
    reference = segmenter.segment(image)
    assert set(np.unique(reference.classes)) <= {0, 1} and set(np.unique(reference.label_values)) <= {0, 255}
    np.testing.assert_array_equal(reference.instances, metrics.instances_from_foreground(reference.classes > 0, 20))
    scores = evaluate(segmenter, tmp_path / "records", out_dir=tmp_path / "eval")
    frame_scores = scores["frames"]["01_t003"]
    assert {"seg", "iou", "ap50"} <= set(frame_scores) and "objects" in scores  # scored as a two-class decision
    assert (tmp_path / "eval" / "01_t003_overlay.png").is_file()
    version_dir = export(run, "cells", tmp_path / "saved", log=lambda *a: None)
    info = json.loads((version_dir / "assets.extra" / "kunet.json").read_text())
    assert info["decision"]["rule"].startswith("1 - p(background)")
    loaded = tf.saved_model.load(str(version_dir))
    served = loaded.signatures["serving_default"](images=tf.constant(image[None, ..., None], tf.float32))
    probabilities = served["probabilities"].numpy()[0]
    assert probabilities.shape[-1] == 3
    # Pixels within float noise of a decision level may flip: the export and predict tile differently.
    rule = segmenter.rule
    steady = np.abs(rule.foreground(reference.probabilities) - rule.threshold) > 1e-4
    np.testing.assert_array_equal(served["classes"].numpy()[0][steady], reference.classes[steady])


def test_a_blur_before_seeding_keeps_a_textured_cell_whole_and_the_gap_between_cells_cut():
    from kunet.postprocess import tf_gaussian_smooth

    p = np.full((40, 80), 0.97, np.float32)
    p[:, 38:42] = 0.05  # the membrane between two cells
    p[18:22, 38:42] = 0.6  # with a faint stretch that merges them at the threshold
    p[:, 18] = 0.7  # a thin dark texture line across the left cell: below the seeds, above the threshold
    sharp = DecisionRule(0.5, "watershed", seed_threshold=0.9).foreground_classes(p)
    assert metrics.segments_from_foreground(sharp).max() == 3  # the texture line splits the left cell
    blurred = DecisionRule(0.5, "watershed", seed_threshold=0.9, smoothing=2.0)
    assert metrics.segments_from_foreground(blurred.foreground_classes(p)).max() == 2
    probabilities = np.stack([1 - p, p], axis=-1)
    got = tf.function(blurred.tf_classes)(tf.constant(probabilities)).numpy()
    np.testing.assert_array_equal(got, blurred.classes(probabilities))
    constant = tf_gaussian_smooth(np.full((9, 11), 0.25, np.float32), 3.0).numpy()
    np.testing.assert_allclose(constant, 0.25, rtol=1e-6)  # normalised kernel, mirrored borders


def test_balancing_caps_the_weight_of_a_class_as_rare_as_the_contacts():
    from kunet.weightmap import MAX_BALANCE_WEIGHT, class_balance_weights

    # DIC-HeLa's training split with border_width 2: background, cell, border pixels.
    weights = class_balance_weights(np.array([1179520, 906565, 11067]))
    np.testing.assert_allclose(weights, [1.0, 1179520 / 906565, MAX_BALANCE_WEIGHT])
    np.testing.assert_allclose(class_balance_weights(np.array([300, 1000])), [1000 / 300, 1.0])  # under the cap


def test_dic_hela_border_records_hold_contacts_on_the_real_frames(tmp_path, hela_dir):
    """pipelines/dic-hela-border.toml on the real CTC frames: every frame keeps dic-hela.toml's foreground,
    and its border class lies where two different true cells meet."""
    from pathlib import Path

    from kunet.config import load_pipeline
    from kunet.records import build_records, iterate_frames

    repo = Path(__file__).resolve().parents[1]
    config = load_pipeline(repo / "pipelines" / "dic-hela-border.toml")
    config.source.root = str(hela_dir)
    manifest = build_records(config, out=tmp_path / "rec")
    assert manifest["labels"]["class_names"] == ["background", "cell", "border"]
    assert manifest["weight_map"]["class_weights"][2] == 10.0  # the cap: 0.5 % of the pixels are contacts
    for frame in iterate_frames(tmp_path / "rec", "train"):
        two_class = interpret_label(frame["label"], LabelConfig(kind="instance"), frame["frame_id"]).classes
        np.testing.assert_array_equal(frame["classes"] > 0, two_class > 0)
        truth = frame["label"].astype(np.int64)
        padded = np.pad(truth, 3)
        near_other = np.zeros(truth.shape, bool)  # a different true cell within 3 px (ridge + 2)
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                other = padded[3 + dy : 3 + dy + truth.shape[0], 3 + dx : 3 + dx + truth.shape[1]]
                near_other |= (other > 0) & (other != truth)
        assert near_other[frame["classes"] == 2].all(), frame["frame_id"]
