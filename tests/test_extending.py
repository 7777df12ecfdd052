"""docs/EXTENDING.md's recipes, each done for real: a toy extension registered in one place reaches every
command that uses it (configuration checks included), with no other file changed."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf
from helpers import blob_image, tiny_pipeline_dict

from kunet.config import ConfigError, WeightMapConfig, pipeline_from_dict
from kunet.inference import Predictor
from kunet.model import UNet
from kunet.records import build_records, iterate_frames
from kunet.tiling import TILE_RULES, TilingOptions, plan_for_tile, valid_input_size

# --- a weight-map preset -------------------------------------------------------------------------------


def test_a_weight_map_preset_registered_in_weightmap_builds_records_with_its_parameters(
    tiny_records, tmp_path, monkeypatch
):
    from kunet import weightmap

    config, _ = tiny_records
    settings = config.to_dict() | {"weights": {"preset": "strong_borders"}}
    settings["records"] = settings["records"] | {"out": str(tmp_path / "records")}
    with pytest.raises(ConfigError, match="weights.preset must be one of"):
        pipeline_from_dict(settings, base_dir=config.base_dir)
    preset = weightmap.WeightPreset(w0=25.0, sigma=4.0, sigma_factor=2.0, class_weights="uniform")
    monkeypatch.setitem(weightmap.WEIGHT_PRESETS, "strong_borders", preset)
    manifest = build_records(pipeline_from_dict(settings, base_dir=config.base_dir))
    stored = manifest["weight_map"]
    assert (stored["preset"], stored["w0"], stored["sigma"], stored["class_weights"]) == (
        "strong_borders", 25.0, 4.0, [1.0, 1.0])  # fmt: skip
    # The stored maps are eq. 2 with the preset's parameters (and differ from the paper preset's).
    from kunet.sources import interpret_label

    frame = next(iterate_frames(tmp_path / "records", "train"))
    labelled = interpret_label(frame["label"], config.labels, "frame")
    params = WeightMapConfig("strong_borders", stored["w0"], stored["sigma"], stored["sigma_factor"])
    expected = weightmap.weight_map(labelled.classes, labelled.objects, labelled.num_objects, params, np.ones(2))
    np.testing.assert_allclose(frame["weight"], expected.astype(np.float16), rtol=1e-3)
    paper_config = WeightMapConfig("paper").resolved()
    paper = weightmap.weight_map(
        labelled.classes,
        labelled.objects,
        labelled.num_objects,
        paper_config,
        weightmap.class_balance_weights(np.bincount(labelled.classes.ravel())),
    )
    assert not np.allclose(expected, paper)
    overridden = settings | {"weights": {"preset": "strong_borders", "w0": 3.0}}
    assert pipeline_from_dict(overridden, base_dir=config.base_dir).weights.resolved().w0 == 3.0


# --- a source layout -----------------------------------------------------------------------------------


def _pairs(config):
    """Toy layout: ``x.png`` beside its label ``x_label.png`` in one folder."""
    from kunet.sources import Frame

    folder = config.path(config.source.images)
    return [
        Frame(image.stem, image, image.with_name(f"{image.stem}_label.png"))
        for image in sorted(folder.glob("*.png"))
        if not image.stem.endswith("_label")
    ]


def test_a_source_layout_registered_in_sources_builds_records(tmp_path, monkeypatch):
    from kunet import sources

    rng = np.random.default_rng(0)
    for index in range(4):
        image, label = blob_image(rng)
        cv2.imwrite(str(tmp_path / f"b{index}.png"), image)
        cv2.imwrite(str(tmp_path / f"b{index}_label.png"), label)
    settings = tiny_pipeline_dict(str(tmp_path / "records")) | {"source": {"kind": "pairs", "images": "."}}
    with pytest.raises(ConfigError, match="source.kind must be one of"):
        pipeline_from_dict(settings, base_dir=tmp_path)
    monkeypatch.setitem(sources.SOURCES, "pairs", _pairs)
    manifest = build_records(pipeline_from_dict(settings, base_dir=tmp_path))
    assert manifest["counts"] == {"train": 3, "val": 1}
    frame = next(iterate_frames(tmp_path / "records", "val"))
    assert frame["label"].max() == 255 and frame["source_label"].endswith("_label.png")


# --- a tiling rule -------------------------------------------------------------------------------------


def _smallest_tile(image_hw, net, options, strip_width):
    """Toy rule: always the smallest valid tile (most tiles, least memory)."""
    period = 2**net.depth
    side = valid_input_size(period, net.depth, "valid")
    return plan_for_tile(image_hw, (side, side), net.depth)


def test_a_tiling_rule_registered_in_tiling_is_used_and_changes_nothing_but_the_tiles(monkeypatch):
    monkeypatch.setitem(TILE_RULES, "smallest", _smallest_tile)
    net = UNet(base_filters=4, depth=2, seed=0)
    image = np.random.default_rng(1).integers(0, 255, (150, 170), dtype=np.uint8)
    smallest, default = Predictor(net, tiling=TilingOptions(rule="smallest")), Predictor(net)
    assert smallest.plan(image.shape) == _smallest_tile(image.shape, net, None, None)
    assert smallest.plan(image.shape).num_tiles > default.plan(image.shape).num_tiles
    np.testing.assert_allclose(smallest.probabilities(image), default.probabilities(image), atol=2e-5)
    settings = tiny_pipeline_dict() | {"inference": {"tile_rule": "smallest"}}
    assert pipeline_from_dict(settings).inference.tiling().rule == "smallest"
    monkeypatch.delitem(TILE_RULES, "smallest")
    with pytest.raises(ConfigError, match="inference.tile_rule must be one of"):
        pipeline_from_dict(settings)


# --- a normalisation -----------------------------------------------------------------------------------


def test_a_normalisation_registered_in_preprocess_reaches_training_prediction_and_exports(monkeypatch):
    from kunet import preprocess

    def min_max(unit):
        return float(unit.min()), float(max(unit.max() - unit.min(), preprocess.MIN_STD))

    def tf_min_max(units):
        low = tf.reduce_min(units, axis=[1, 2, 3])
        return low, tf.maximum(tf.reduce_max(units, axis=[1, 2, 3]) - low, preprocess.MIN_STD)

    toy = preprocess.Normalization(min_max, tf_min_max, lambda image, to_unit: min_max(to_unit(image)))
    monkeypatch.setitem(preprocess.NORMALIZATIONS, "min_max", toy)
    assert pipeline_from_dict(tiny_pipeline_dict() | {"image": {"normalize": "min_max"}}).image.normalize == "min_max"
    unit = np.random.default_rng(2).random((30, 40, 1)).astype(np.float32) * 0.5 + 0.2
    numpy_side = preprocess.normalize(unit, "min_max")
    tf_side = preprocess.tf_normalize(tf.constant(unit[None]), "min_max")[0].numpy()
    np.testing.assert_allclose(numpy_side, tf_side, atol=1e-6)
    assert numpy_side.min() == 0.0 and abs(numpy_side.max() - 1.0) < 1e-6


# --- a post-processing step ----------------------------------------------------------------------------


def test_a_postprocessing_step_registered_in_decision_decides_alike_in_numpy_and_tensorflow(monkeypatch):
    from kunet import decision

    def erode_once(foreground, threshold, seed_threshold):
        """Toy step: cut foreground pixels with a background 4-neighbour (a one-pixel erosion)."""
        mask = tf.cast(foreground >= threshold, tf.float32)[None, ..., None]
        eroded = -tf.nn.max_pool2d(-mask, 3, 1, "SAME")[0, ..., 0] > 0.5
        return (foreground >= threshold) & ~eroded

    monkeypatch.setitem(decision.POSTPROCESSING, "erode", decision.Postprocessing(erode_once, per_pixel=False))
    probabilities = np.zeros((20, 20, 2), np.float32)
    probabilities[..., 0] = 1
    probabilities[5:15, 5:15] = (0.1, 0.9)
    rule = decision.DecisionRule(0.5, "erode")
    numpy_side = rule.classes(probabilities)
    assert numpy_side.sum() == 8 * 8 and not rule.per_pixel(2)
    np.testing.assert_array_equal(tf.function(rule.tf_classes)(tf.constant(probabilities)).numpy(), numpy_side)
    assert pipeline_from_dict(tiny_pipeline_dict() | {"inference": {"postprocess": "erode"}})


# --- an export signature -------------------------------------------------------------------------------


def _probability_png(graph):
    """Toy signature: PNG in, p(foreground) as an 8-bit PNG out."""
    from kunet.serving.signatures import PNG_INPUT

    def one(encoded):
        probabilities, _, _ = graph.segment(graph.decode_png(encoded)[None])
        return tf.io.encode_png(tf.cast(tf.round(probabilities[0, ..., -1:] * 255), tf.uint8))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=PNG_INPUT)])
    def probability_png(png_bytes):
        png_bytes = graph.count_checked(png_bytes, PNG_INPUT)
        return {"probability_png_bytes": tf.map_fn(one, png_bytes, fn_output_signature=tf.string)}

    return probability_png


@pytest.mark.slow
def test_an_export_signature_registered_in_the_serving_graph_is_exported_described_warmed_and_checked(
    trained_tiny_run, tmp_path, monkeypatch
):
    from kunet.serving import graph
    from kunet.serving.check import check
    from kunet.serving.export import export
    from kunet.serving.signatures import PNG_INPUT

    toy = graph.Signature(
        "probability_png",
        {PNG_INPUT: "string [B]: PNG files"},
        {"probability_png_bytes": "string [B]: p(foreground) x 255 as 8-bit PNG files"},
        _probability_png,
        graph.SIGNATURES["segment_png"].warmup,
    )
    monkeypatch.setitem(graph.SIGNATURES, "probability_png", toy)
    version = export(trained_tiny_run, "toy", tmp_path, log=lambda *a: None)
    info = json.loads((version / "assets.extra" / "kunet.json").read_text())
    assert info["signatures"]["probability_png"]["outputs"] == toy.outputs
    assert "`probability_png`" in (version / "assets.extra" / "README.md").read_text()
    report = check(version, log=lambda *a: None)
    assert report["warmup_requests"] == 3 and "probability_png" in report["signatures"]
    image = np.random.default_rng(4).integers(0, 255, (70, 90), np.uint8)
    served = tf.saved_model.load(str(version)).signatures["probability_png"]
    png = served(png_bytes=tf.constant([cv2.imencode(".png", image)[1].tobytes()]))["probability_png_bytes"]
    decoded = cv2.imdecode(np.frombuffer(png.numpy()[0], np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    shutil.rmtree(version)
