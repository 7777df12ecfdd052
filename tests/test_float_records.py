"""Records of int16 and float32 images: stored losslessly (int16 and float32 raw bytes, float16 when every
value is exact in it), decoded bit for bit, brought to the same [0, 1] values as prediction does, and a model
trained on them predicting the same through its .keras file and its export."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile
from helpers import blob_image

from kunet.config import pipeline_from_dict
from kunet.pipeline import decoded_frames
from kunet.preprocess import dtype_max, raw_to_unit
from kunet.records import build_records, iterate_frames, read_manifest
from kunet.records.schema import RecordsError


def _write_frames(root, images, labels, **sections):
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        tifffile.imwrite(root / "images" / f"f{index}.tif", image)
        cv2.imwrite(str(root / "labels" / f"f{index}.png"), label)
    return pipeline_from_dict({
        "name": "floats",
        "source": {"kind": "folders", "images": "images", "labels": "labels"},
        "records": {"shards": 1, "val_fraction": 0.34},
        **sections,
    }, base_dir=root)  # fmt: skip


def _blobs(count=3, size=40):
    rng = np.random.default_rng(7)
    pairs = [blob_image(rng, size=size) for _ in range(count)]
    return [image.astype(np.uint16) * 257 for image, _ in pairs], [label for _, label in pairs]


def _stored(records) -> dict[str, np.ndarray]:
    return {frame["frame_id"]: frame["image"][..., 0] for split in ("train", "val")
            for frame in iterate_frames(records, split)}  # fmt: skip


@pytest.mark.parametrize(
    "kind, storage",
    [("float32", "float32"), ("float32 exact in float16", "float16"), ("int16", "int16"), ("uint16", "png")],
)
def test_images_of_every_dtype_come_back_from_records_bit_for_bit(tmp_path, kind, storage):
    images16, labels = _blobs()
    rng = np.random.default_rng(1)
    if kind == "float32":  # deconvolved-looking values: negative, above 1, not exact in float16
        images = [(im / 65535.0 * 3.7 - 0.4 + rng.normal(0, 1e-3, im.shape)).astype(np.float32) for im in images16]
    elif kind == "float32 exact in float16":
        images = [(im // 257).astype(np.float32) / 256 for im in images16]  # k/256: exact in float16
    elif kind == "int16":
        images = [(im.astype(np.int32) - 32768).astype(np.int16) for im in images16]
    else:
        images = images16
    config = _write_frames(tmp_path, images, labels)
    build_records(config, out=tmp_path / "rec")
    manifest = read_manifest(tmp_path / "rec")
    assert manifest["image"]["dtype"] == np.dtype(images[0].dtype).name
    assert manifest["image"]["storage"] == storage
    # Older kunet reads version 1 (PNG images); only raw-stored images need version 2.
    assert manifest["schema_version"] == (1 if storage == "png" else 2)
    stored = _stored(tmp_path / "rec")
    for index, image in enumerate(images):
        assert stored[f"f{index}"].dtype == image.dtype
        np.testing.assert_array_equal(stored[f"f{index}"], image)


def test_one_image_in_int16_uint16_and_float_reaches_the_net_as_the_same_values(tmp_path):
    """The training pipeline's [0, 1] frames equal prediction's raw_to_unit, and int16 (shifted) and uint16
    copies of one image give identical values; a float copy (uint16 / 65535) the same to float32 rounding."""
    images16, labels = _blobs()
    copies = {
        "uint16": images16,
        "int16": [(im.astype(np.int32) - 32768).astype(np.int16) for im in images16],
        "float32": [im.astype(np.float32) / np.float32(65535) for im in images16],
    }
    units = {}
    for name, images in copies.items():
        root = tmp_path / name
        config = _write_frames(root, images, labels)
        build_records(config, out=root / "rec")
        frames = decoded_frames(root / "rec", "train", normalize="scale")
        units[name] = [frame["image"].numpy()[..., 0] for frame in frames]
        train_ids = [f["frame_id"] for f in iterate_frames(root / "rec", "train")]
        for unit, frame_id in zip(units[name], train_ids):
            raw = images[int(frame_id[1:])]
            np.testing.assert_array_equal(unit, raw_to_unit(raw, dtype_max(raw.dtype)))
    for unit16, unit_signed, unit_float in zip(units["uint16"], units["int16"], units["float32"]):
        np.testing.assert_array_equal(unit_signed, unit16)
        np.testing.assert_allclose(unit_float, unit16, atol=1e-7)
        assert unit16.min() >= 0 and unit16.max() <= 1 and unit16.std() > 0.05


def test_float_images_of_any_range_train_as_their_16_bit_copy_would(tmp_path):
    """Deconvolved-looking float frames (values from -0.4 to 3.3) under the default standardisation: each is
    stretched by its own range before augmentation, whose gray values clip to [0, 1], so unaugmented tiles are
    those of a uint16 copy (an affine map away) and augmented tiles are not clipped flat."""
    from kunet.pipeline import training_dataset

    images16, labels = _blobs(size=64)
    floats = [(im / np.float32(65535) * np.float32(3.7) - np.float32(0.4)).astype(np.float32) for im in images16]
    sections = {"model": {"base_filters": 4, "depth": 2}, "train": {"tile_size": 44}}
    tiles = {}
    for name, images in (("uint16", images16), ("float32", floats)):
        config = _write_frames(tmp_path / name, images, labels, **sections)
        build_records(config, out=tmp_path / name / "rec")
        for augment in (False, True):
            batches = training_dataset(config, tmp_path / name / "rec", 4, augment=augment).take(3)
            tiles[name, augment] = np.concatenate([batch[0].numpy() for batch in batches])
    np.testing.assert_allclose(tiles["float32", False], tiles["uint16", False], atol=2e-4)
    augmented = tiles["float32", True]
    assert np.isfinite(augmented).all()
    at_top = np.mean(augmented >= augmented.max(axis=(1, 2, 3), keepdims=True) - 1e-6)
    assert at_top < 0.05, f"{at_top:.0%} of pixels at their tile's maximum: clipped"


def test_mixed_dtypes_and_non_finite_float_images_are_refused_naming_the_file(tmp_path):
    images16, labels = _blobs()
    images = [im.astype(np.float32) / 65535 for im in images16]
    images[2] = (images16[2].astype(np.int32) - 32768).astype(np.int16)
    config = _write_frames(tmp_path / "mixed", images, labels)
    with pytest.raises(RecordsError, match=r"f2\.tif: 16-bit \(int16\) image, but .*f0\.tif is 32-bit \(float32\)"):
        build_records(config, out=tmp_path / "mixed" / "rec")
    images[2] = images[0].copy()
    images[2][3, 4] = np.nan
    config = _write_frames(tmp_path / "nan", images, labels)
    with pytest.raises(Exception, match=r"f2\.tif: float image with NaN or infinite values"):
        build_records(config, out=tmp_path / "nan" / "rec")
    assert not (tmp_path / "mixed" / "rec").exists() and not (tmp_path / "nan" / "rec").exists()


def test_a_model_trained_on_int16_images_serves_what_it_predicts(tmp_path):
    """A model whose records held int16 images, normalised by ``scale`` (so the dtype's shift and maximum
    decide every value): the export's graph, given an int16, a uint16 and a float image and a 16-bit PNG,
    serves the probabilities and masks of the .keras model. An untrained net: the pixel path is under test."""
    from kunet.inference import InferenceSettings
    from kunet.model import UNet
    from kunet.segmenter import Segmenter
    from kunet.serving.export import export

    settings = InferenceSettings(normalize="scale", image_dtype="int16", typical_size=(64, 80))
    keras_file = tmp_path / "int16.keras"
    UNet(base_filters=4, depth=2, seed=0, metadata=settings.to_metadata()).save(keras_file)
    version_dir = export(keras_file, "i16", tmp_path / "saved", log=lambda *a: None)
    info = json.loads((version_dir / "assets.extra" / "kunet.json").read_text())
    assert info["input"]["normalization"].startswith("add 32768, divide by 65535")

    unsigned = _blobs(1, size=64)[0][0][:, :61]  # an odd width: tiled with mirrored borders
    signed = (unsigned.astype(np.int32) - 32768).astype(np.int16)
    keras_model, served = Segmenter(keras_file), Segmenter(version_dir)
    reference = keras_model.probabilities(signed)
    # Under "scale" the int16 shift matters: without it the foreground probabilities would differ.
    assert np.abs(keras_model.probabilities(signed.astype(np.float32) / 65535) - reference).max() > 1e-3
    for image in (signed, unsigned, (unsigned / np.float32(65535)).astype(np.float32)):
        np.testing.assert_allclose(keras_model.probabilities(image), reference, atol=1e-6)
        np.testing.assert_allclose(served.probabilities(image), reference, atol=2e-5)
    import tensorflow as tf

    png = cv2.imencode(".png", unsigned)[1].tobytes()
    loaded = tf.saved_model.load(str(version_dir))
    mask = loaded.signatures["segment_png"](png_bytes=tf.constant([png]))["mask_png_bytes"].numpy()[0]
    decoded = cv2.imdecode(np.frombuffer(mask, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, keras_model.segment(signed).label_values)
