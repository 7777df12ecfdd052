"""TIFF through tifffile: any dtype read exactly, axes kept (ImageJ hyperstacks, declared with --axes), one
channel picked with --channel, and a stack predicted into one ImageJ mask stack with the input's resolution."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from helpers import blob_image
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet.imageio import ImageReadError, count_pages, read_image, read_pages, tiff_layout

runner = CliRunner()


def _blobs(count: int, size: int = 48, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([blob_image(rng, size=size)[0] for _ in range(count)])


def _predict(run, inputs, out, *flags):
    args = ["predict", str(run), *map(str, inputs), "--out", str(out), "--log-every", "1", *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_int16_float32_and_float64_tiffs_are_read_exactly(tmp_path):
    rng = np.random.default_rng(0)
    signed = rng.integers(-32768, 32767, (20, 30)).astype(np.int16)
    floats = rng.normal(size=(20, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "i16.tif", signed)
    tifffile.imwrite(tmp_path / "f32.tif", floats)
    tifffile.imwrite(tmp_path / "f64.tif", floats.astype(np.float64))
    np.testing.assert_array_equal(read_image(tmp_path / "i16.tif"), signed)
    assert read_image(tmp_path / "i16.tif").dtype == np.int16
    np.testing.assert_array_equal(read_image(tmp_path / "f32.tif"), floats)
    as_float32 = read_image(tmp_path / "f64.tif")
    assert as_float32.dtype == np.float32 and np.array_equal(as_float32, floats)


def test_imagej_hyperstacks_give_one_image_per_plane_with_channels_last(tmp_path):
    data = np.random.default_rng(1).integers(0, 65535, (2, 3, 2, 24, 32), dtype=np.uint16)  # TZCYX
    for name, compression in (("raw.tif", None), ("zlib.tif", "zlib")):  # memory-mapped, and page by page
        path = tmp_path / name
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"}, compression=compression)
        layout = tiff_layout(path)
        assert (layout.axes, layout.planes, layout.channels) == ("TZCYX", 6, 2)
        assert layout.memory_mappable == (compression is None)
        images = read_pages(path)
        assert count_pages(path) == 6 and [image.shape for image in images] == [(24, 32, 2)] * 6
        np.testing.assert_array_equal(images[4], np.moveaxis(data[1, 1], 0, -1))  # t=1, z=1
        np.testing.assert_array_equal(read_pages(path, channel=1)[5], data[1, 2, 1])
        np.testing.assert_array_equal(read_image(path, 3, channel=0), data[1, 0, 0])
    # Axes declared: a plain 4-page stack whose pages are two planes of two channels.
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data[0, :2].reshape(4, 24, 32), photometric="minisblack")  # 4 pages
    assert count_pages(plain) == 4
    assert [image.shape for image in read_pages(plain, axes="QYX")] == [(24, 32)] * 4
    with pytest.raises(ImageReadError, match="--axes ZCYX does not fit the file's 3 axes"):
        read_pages(plain, axes="ZCYX")
    with pytest.raises(ImageReadError, match="--channel 2 is not in 0..1"):
        read_pages(tmp_path / "raw.tif", channel=2)


def test_a_stack_is_predicted_into_one_imagej_mask_stack_with_its_resolution(trained_tiny_run, tmp_path):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, _blobs(3), imagej=True, resolution=(4.0, 4.0), metadata={"axes": "ZYX", "spacing": 0.5,
                     "unit": "um"})  # fmt: skip
    result = _predict(trained_tiny_run, [stack], tmp_path / "out", "--probabilities", "tif")
    assert "predicting pages of 1 file(s) 3/3" in result.output
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == ["stack_mask.tif", "stack_p0000_overlay.png", "stack_p0001_overlay.png",
                     "stack_p0002_overlay.png", "stack_probability.tif"]  # fmt: skip
    for name, dtype in (("stack_mask.tif", np.uint8), ("stack_probability.tif", np.float32)):
        with tifffile.TiffFile(tmp_path / "out" / name) as tif:
            assert tif.is_imagej and tif.series[0].axes == "ZYX"
            assert tif.asarray().shape == (3, 48, 48) and tif.asarray().dtype == dtype
            assert tif.pages[0].tags["XResolution"].value == (4, 1) and tif.pages[0].tags["YResolution"].value == (4, 1)
            assert tif.imagej_metadata["spacing"] == 0.5 and tif.imagej_metadata["unit"] == "um"
    masks = tifffile.imread(tmp_path / "out" / "stack_mask.tif")
    assert set(np.unique(masks)) <= {0, 255}
    # Each page equals the prediction of that page alone (a PNG input keeps a PNG mask).
    import cv2

    cv2.imwrite(str(tmp_path / "page1.png"), _blobs(3)[1])
    _predict(trained_tiny_run, [tmp_path / "page1.png"], tmp_path / "single", "--no-overlays")
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "single" / "page1_mask.png"), cv2.IMREAD_UNCHANGED),
                                  masks[1])  # fmt: skip


def test_float32_and_int16_images_predict_as_the_same_image_in_uint16(trained_tiny_run, tmp_path):
    image = _blobs(1, size=64)[0].astype(np.uint16) * 257  # 16-bit contrast (std well above the floor)
    tifffile.imwrite(tmp_path / "u16.tif", image)
    tifffile.imwrite(tmp_path / "f32.tif", image.astype(np.float32) / 65535)
    tifffile.imwrite(tmp_path / "i16.tif", (image.astype(np.int32) - 32768).astype(np.int16))
    out = tmp_path / "out"
    flags = ("--probabilities", "tif", "--no-overlays")
    _predict(trained_tiny_run, [tmp_path / "u16.tif", tmp_path / "f32.tif", tmp_path / "i16.tif"], out, *flags)
    reference = tifffile.imread(out / "u16_probability.tif")
    for name in ("f32", "i16"):
        np.testing.assert_allclose(tifffile.imread(out / f"{name}_probability.tif"), reference, atol=1e-5)
        np.testing.assert_array_equal(_png(out / f"{name}_mask.png"), _png(out / "u16_mask.png"))


def _png(path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_channel_and_axes_options_pick_what_a_one_channel_model_sees(trained_tiny_run, tmp_path):
    blobs = _blobs(2)
    hyperstack = np.stack([np.zeros_like(blobs[0]), blobs[0]])[None]  # ZCYX: 1 plane, channel 1 holds the cells
    tifffile.imwrite(tmp_path / "two.tif", hyperstack, imagej=True, metadata={"axes": "ZCYX"})
    cv2_png = tmp_path / "cells.png"
    import cv2

    cv2.imwrite(str(cv2_png), blobs[0])
    _predict(trained_tiny_run, [cv2_png], tmp_path / "reference", "--no-overlays")
    reference = _png(tmp_path / "reference" / "cells_mask.png")
    refused = runner.invoke(app, ["predict", str(trained_tiny_run), str(tmp_path / "two.tif"), "--out",
                                  str(tmp_path / "x")])  # fmt: skip
    assert refused.exit_code != 0 and "has 2 channel(s), the pipeline expects 1" in refused.output
    _predict(trained_tiny_run, [tmp_path / "two.tif"], tmp_path / "picked", "--channel", "1", "--no-overlays")
    np.testing.assert_array_equal(_png(tmp_path / "picked" / "two_mask.png"), reference)
    # A plain 4-page TIFF declared as two planes' channels: --axes CYX makes it one image of 4 channels.
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.stack([blobs[1], blobs[0], blobs[1], blobs[0]]), photometric="minisblack")
    result = _predict(trained_tiny_run, [plain], tmp_path / "declared", "--axes", "CYX", "--channel", "1",
                      "--no-overlays")  # fmt: skip
    assert "predicting 1/1" in result.output
    np.testing.assert_array_equal(_png(tmp_path / "declared" / "plain_mask.png"), reference)
    bad = runner.invoke(app, ["predict", str(trained_tiny_run), str(plain), "--out", str(tmp_path / "y"),
                              "--axes", "ZCYX"])  # fmt: skip
    assert bad.exit_code == 2 and "--axes ZCYX does not fit the file's 3 axes" in bad.output
