"""kunet export: SavedModels that TensorFlow's own loaders serve exactly as kunet predict does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from helpers import SHARED_DATA

from kunet.segmenter import Segmenter
from kunet.serving.check import check
from kunet.serving.export import ExportError, export, training_provenance

# Loads the export once and predicts each (image.npy, image.png, labels.npy, mask.png) quadruple of argv.
_LOAD_AND_PREDICT = r"""
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
for image_npy, image_png, labels_npy, mask_png in zip(*[iter(sys.argv[2:])] * 4):
    image = np.load(image_npy)
    out = model.signatures["serving_default"](images=tf.constant(image[None, ..., None].astype(np.float32)))
    png = model.signatures["segment_png"](png_bytes=tf.constant([open(image_png, "rb").read()]))
    open(mask_png, "wb").write(png["mask_png_bytes"].numpy()[0])
    np.save(labels_npy, out["labels"].numpy()[0])
    print(json.dumps({k: list(v.shape) for k, v in out.items()}))
"""


@pytest.fixture
def trained_run(trained_tiny_run):
    """The session's tiny trained run (read only: tests that change it copy it first)."""
    return trained_tiny_run


_QUADRUPLE = (("image", "npy"), ("image", "png"), ("labels", "npy"), ("mask", "png"))


def _export_test_images(shared_data_available: bool) -> dict[str, np.ndarray]:
    images = {}
    if shared_data_available:
        images["isbi slice"] = cv2.imread(str(SHARED_DATA / "isbi2012" / "train" / "images" / "slice_17.png"),
                                          cv2.IMREAD_UNCHANGED)  # fmt: skip
    for size in ("300x517", "96x96"):
        image = np.random.default_rng(0).integers(0, 255, tuple(map(int, size.split("x"))), dtype=np.uint8)
        image[40:70, 30:80] = 220  # something bright to segment
        images[size] = image
    return images


def test_export_loads_in_a_separate_process_and_both_signatures_match_predict(trained_run, tmp_path):
    root = tmp_path / "saved_models"
    version_dir = export(trained_run, "tiny", root, log=lambda *a: None)
    assert version_dir == root / "tiny" / "1"
    # One export and one fresh process for every image: each image still gets its own check below.
    images = _export_test_images((SHARED_DATA / "isbi2012").is_dir())
    arguments = []
    for index, image in enumerate(images.values()):
        np.save(tmp_path / f"image{index}.npy", image)
        cv2.imwrite(str(tmp_path / f"image{index}.png"), image)
        arguments += [str(tmp_path / f"{name}{index}.{suffix}") for name, suffix in _QUADRUPLE]
    result = subprocess.run([sys.executable, "-c", _LOAD_AND_PREDICT, str(version_dir), *arguments],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]
    assert len(printed) == len(images)
    segmenter = Segmenter(trained_run)
    with pytest.raises(ValueError, match="constant weights are for .keras models"):
        Segmenter(version_dir, constant_weights=True)
    for index, (source, image) in enumerate(images.items()):
        shape = image.shape
        assert printed[index] == {"probabilities": [1, *shape, 2], "labels": [1, *shape], "classes": [1, *shape]}
        reference = segmenter.segment(image)
        expected = reference.label_values
        # Same masks, except pixels whose probability sits within float noise of the threshold (tile sizes
        # differ between the export and predict, so sums are ordered differently).
        decided = np.abs(reference.probabilities[..., 1] - 0.5) > 1e-4
        served_labels = np.load(tmp_path / f"labels{index}.npy")
        served_png = cv2.imread(str(tmp_path / f"mask{index}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(served_labels[decided], expected[decided], err_msg=source)
        np.testing.assert_array_equal(served_png, served_labels.astype(np.uint8), err_msg=source)
        assert decided.mean() > 0.999, source
        assert set(np.unique(expected)) <= {0, 255}, source


def test_saved_model_cli_lists_the_documented_signatures(trained_run, tmp_path):
    version_dir = export(trained_run, "tiny", tmp_path, log=lambda *a: None)
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--dir", str(version_dir), "--all"], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = shown.stdout
    for fragment in [
        "signature_def['serving_default']", "inputs['images']", "DT_FLOAT", "shape: (-1, -1, -1, 1)",
        "outputs['probabilities']", "outputs['labels']", "DT_INT32",
        "signature_def['segment_png']", "inputs['png_bytes']", "DT_STRING", "outputs['mask_png_bytes']",
    ]:  # fmt: skip
        assert fragment in text, fragment


def test_warmup_file_holds_prediction_logs_matching_the_signatures(trained_run, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    version_dir = export(trained_run, "tiny", tmp_path, log=lambda *a: None)
    logs = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(version_dir / "assets.extra" / "tf_serving_warmup_requests"))
    ]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default", "segment_png"]
    loaded = tf.saved_model.load(str(version_dir))
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "tiny"
        signature = loaded.signatures[request.model_spec.signature_name]
        expected = signature.structured_input_signature[1]
        assert set(request.inputs) == set(expected)
        for key, proto in request.inputs.items():
            assert tf.as_dtype(proto.dtype) == expected[key].dtype
            assert expected[key].shape.is_compatible_with(tf.make_ndarray(proto).shape)
    info = json.loads((version_dir / "assets.extra" / "kunet.json").read_text())
    assert [c["label_value"] for c in info["classes"]] == [0, 255]
    assert 'name: "tiny"' in (tmp_path / "tiny" / "models.config").read_text()
    assert "max_batch_size" in (tmp_path / "tiny" / "batching_parameters.txt").read_text()
    assert "docker run" in (version_dir / "assets.extra" / "README.md").read_text()


def test_kunet_json_records_how_the_weights_were_trained(trained_run, tiny_records, tmp_path):
    version_dir = export(trained_run, "tiny", tmp_path / "saved", log=lambda *a: None)
    training = json.loads((version_dir / "assets.extra" / "kunet.json").read_text())["training"]
    manifest = json.loads((tiny_records[1] / "manifest.json").read_text())
    assert training["run"] == trained_run.name and training["run_steps"] == 12
    assert training["weight_map"] == manifest["weight_map"]
    assert training["train"]["learning_rate"] == 0.001 and training["train"]["tile_size"] == 124
    assert training["augment"]["flip"] is True
    # Runs from before config.json kept the weight map: read it from the records the run names.
    legacy = tmp_path / "legacy"
    shutil.copytree(trained_run, legacy)
    saved = json.loads((legacy / "config.json").read_text())
    del saved["records_weight_map"]
    (legacy / "config.json").write_text(json.dumps(saved))
    assert training_provenance(legacy / "last.keras")["weight_map"] == manifest["weight_map"]
    # A .keras file outside any run has no provenance to report, and says so rather than guessing.
    loose = tmp_path / "loose.keras"
    shutil.copyfile(trained_run / "last.keras", loose)
    version_dir = export(loose, "loose", tmp_path / "saved", log=lambda *a: None)
    assert json.loads((version_dir / "assets.extra" / "kunet.json").read_text())["training"] is None


def test_second_export_gets_a_new_version_and_leaves_the_first_untouched(trained_run, tmp_path):
    first = export(trained_run, "tiny", tmp_path, log=lambda *a: None)
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    second = export(trained_run, "tiny", tmp_path, log=lambda *a: None)
    assert (first.name, second.name) == ("1", "2")
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    with pytest.raises(ExportError, match="already exists"):
        export(trained_run, "tiny", tmp_path, version=1, log=lambda *a: None)


def test_an_interrupted_export_leaves_no_half_written_version(trained_run, tmp_path, monkeypatch):
    import kunet.serving.export as export_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt("interrupted while writing warm-up requests")

    monkeypatch.setattr(export_module, "write_warmup_requests", explode)
    with pytest.raises(KeyboardInterrupt):
        export(trained_run, "tiny", tmp_path, log=lambda *a: None)
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == []


@pytest.mark.slow
def test_check_validates_an_export_in_a_fresh_process(trained_run, tmp_path):
    lines = []
    version_dir = export(trained_run, "tiny", tmp_path, log=lines.append)
    report = check(version_dir, log=lines.append)
    assert report["warmup_requests"] == 2 and report["masks_identical"]
    # Progress as numbered, timed stages, each written when it starts (issue 22: export printed nothing until done).
    stages = [line for line in lines if re.match(r"\[(\d+/\d+|done), \d+s\] ", line)]
    assert [line.split("]")[0].split(",")[0] for line in stages] == ["[1/3", "[2/3", "[3/3", "[done", "[1/2", "[2/2"]
    assert "loading" in stages[0] and "exported" in stages[3] and "fresh process" in stages[4]
    assert report["max_probability_difference_vs_predict"] < 1e-4
    broken = tmp_path / "broken"
    shutil.copytree(version_dir, broken)
    (broken / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ExportError, match="fresh process"):
        check(broken, log=lambda *a: None)


@pytest.mark.slow
def test_stored_threshold_and_watershed_travel_into_the_export(trained_run, tmp_path):
    from kunet.tune import store_settings

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    store_settings(
        run / "best.keras",
        {"threshold": 0.4, "postprocess": "watershed", "seed_threshold": 0.8, "test_time_mirroring": True},
    )
    version_dir = export(run, "tiny", tmp_path / "saved", log=lambda *a: None)
    info = json.loads((version_dir / "assets.extra" / "kunet.json").read_text())
    assert info["decision"]["postprocess"] == "watershed" and info["decision"]["threshold"] == 0.4
    assert info["inference"]["test_time_mirroring"] is True
    image = np.full((150, 170), 40, np.uint8)
    for cy, cx in ((40, 40), (40, 75), (100, 120)):  # two touching bright disks and one apart
        cv2.circle(image, (cx, cy), 22, 210, -1)
    loaded = tf.saved_model.load(str(version_dir))
    served = loaded.signatures["serving_default"](images=tf.constant(image[None, ..., None], tf.float32))
    reference = Segmenter(run).segment(image)
    decided = np.abs(reference.probabilities[..., 1] - 0.4) > 1e-4
    np.testing.assert_array_equal(served["classes"].numpy()[0][decided], reference.classes[decided])


def test_predict_feeds_a_three_channel_export_three_channels(tmp_path):
    """An RGB model exported and given a gray or a color image by ``kunet predict``: the export's kunet.json
    says 3 channels, the image is given 3, and the masks equal the .keras model's."""
    from helpers import tiny_pipeline_dict
    from kunet_cli.main import app
    from typer.testing import CliRunner

    from kunet.builders import build_model
    from kunet.config import pipeline_from_dict

    settings = tiny_pipeline_dict()
    settings["image"] = {"channels": 3}
    model = build_model(pipeline_from_dict(settings, base_dir=tmp_path))
    model.save(tmp_path / "rgb.keras")
    version_dir = export(tmp_path / "rgb.keras", "rgb", tmp_path / "saved", log=lambda *a: None)
    assert Segmenter(version_dir).input_channels == 3
    rng = np.random.default_rng(5)
    color = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "color.png"), color)
    cv2.imwrite(str(tmp_path / "gray.png"), color[..., 0])
    for model_path, out in ((version_dir, "served"), (tmp_path / "rgb.keras", "keras")):
        inputs = [str(tmp_path / "color.png"), str(tmp_path / "gray.png")]
        result = CliRunner().invoke(app, ["predict", str(model_path), *inputs, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    for name in ("color_mask.png", "gray_mask.png"):
        served = cv2.imread(str(tmp_path / "served" / name), cv2.IMREAD_UNCHANGED)
        assert served.shape == (70, 90)
        np.testing.assert_array_equal(served, cv2.imread(str(tmp_path / "keras" / name), cv2.IMREAD_UNCHANGED))


def test_an_export_normalises_by_percentiles_as_predict_does(tmp_path):
    """A model stored with ``image.normalize = "percentile"`` and its percentiles (not the defaults, so that
    they must travel) serves the probabilities predict computes, hot pixels and all. An untrained net: the
    normalisation, not the weights, is under test."""
    from dataclasses import replace

    from kunet.inference import InferenceSettings, Predictor
    from kunet.model import UNet

    settings = InferenceSettings(normalize="percentile", percentile_low=2.0, percentile_high=99.5,
                                 image_dtype="uint16", typical_size=(300, 517))  # fmt: skip
    keras_file = tmp_path / "percentile.keras"
    UNet(base_filters=4, depth=2, seed=0, metadata=settings.to_metadata()).save(keras_file)
    version_dir = export(keras_file, "pct", tmp_path / "saved", log=lambda *a: None)
    info = json.loads((version_dir / "assets.extra" / "kunet.json").read_text())
    assert info["inference"]["normalize"] == "percentile" and info["inference"]["percentile_high"] == 99.5
    assert "2 and 99.5 percentiles of the whole image" in info["input"]["normalization"]

    rng = np.random.default_rng(4)
    image = rng.integers(300, 2500, (300, 517)).astype(np.uint16)
    image[100:180, 200:330] += 3000  # something bright
    image.reshape(-1)[rng.choice(image.size, 40, replace=False)] = 65535  # hot pixels
    predicted = Segmenter(keras_file).probabilities(image)
    served = Segmenter(version_dir).probabilities(image)  # the SavedModel's serving_default
    np.testing.assert_allclose(served, predicted, atol=2e-5)
    # Sensitive to the normalisation: standardising the same image gives other probabilities.
    standardized = Predictor(Segmenter(keras_file).model, replace(settings, normalize="standardize"))
    assert np.abs(standardized.probabilities(image) - predicted).max() > 100 * 2e-5
