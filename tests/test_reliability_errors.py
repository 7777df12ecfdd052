"""Issue 15: every careless or hostile input ends in one red line naming the file, and nothing is lost.

Each test asserts the message and that no file was deleted or half written.
"""

from __future__ import annotations

import errno
import os
import time

import cv2
import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO_ROOT
from kunet_cli.common import user_errors
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet.errors import KunetError

runner = CliRunner()
ISBI_TOML = REPO_ROOT / "pipelines" / "isbi2012.toml"


def _write_png(path, shape, seed: int = 0) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


def _one_red_line(result) -> str:
    """The single error line of a failed command (exit code 2, no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _raise_inside_user_errors_from(function) -> str:
    """The red line ``user_errors`` prints for what ``function`` raises, from a one-command Typer app."""
    import typer

    app_ = typer.Typer()

    @app_.command()
    def explode():
        with user_errors():
            function()

    return _one_red_line(runner.invoke(app_, []))


def _raise_inside_user_errors(error: BaseException) -> str:
    def throw():
        raise error

    return _raise_inside_user_errors_from(throw)


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/a_mask.png"),
         "error: /data/out/a_mask.png: No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), "error: /ro/out: Permission denied"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "/a/x", None, "/b/x"),
         "error: /a/x -> /b/x: Invalid cross-device link"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "img.png/out"), "error: img.png/out: Not a directory"),
        (MemoryError("Unable to allocate 5.8 GiB for an array with shape (20000, 20000, 2)"),
         "error: out of memory (Unable to allocate 5.8 GiB"),
        (KunetError("x.png: first line\n  second line"), "error: x.png: first line second line"),
    ],
)  # fmt: skip
def test_os_memory_and_library_errors_become_one_line(error, expected):
    assert _raise_inside_user_errors(error).startswith(expected)


def test_tensorflow_op_errors_become_one_line_without_graph_noise():
    try:
        tf.io.read_file("/nonexistent-kunet/checkpoint.index")
    except tf.errors.OpError as error:
        line = _raise_inside_user_errors(error)
    assert line.startswith("error: TensorFlow NotFoundError: /nonexistent-kunet/checkpoint.index")
    assert "function_node" not in line and "[Op:" not in line
    exhausted = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1,64,9000,9000]")
    assert "smaller tiles" in _raise_inside_user_errors(exhausted)


def test_genuine_bugs_keep_their_traceback_and_kunet_debug_shows_every_traceback(monkeypatch):
    import typer

    app_ = typer.Typer()

    @app_.command()
    def explode(kind: str):
        bugs = {"type": TypeError("bug"), "value": ValueError("a bug inside Keras"), "key": KeyError("bug")}
        with user_errors():
            raise bugs.get(kind) or OSError(errno.ENOSPC, "No space left on device", "/x")

    for kind, expected in (("type", TypeError), ("value", ValueError), ("key", KeyError)):
        assert isinstance(runner.invoke(app_, [kind]).exception, expected)  # a traceback, not one line
    assert runner.invoke(app_, ["disk"]).exit_code == 2
    monkeypatch.setenv("KUNET_DEBUG", "1")
    assert isinstance(runner.invoke(app_, ["disk"]).exception, OSError)


def test_the_debug_flag_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch):
    from kunet.errors import KunetError

    monkeypatch.setenv("KUNET_DEBUG", "0")  # restored after the test: --debug sets it for the process
    assert runner.invoke(app, ["fit", str(tmp_path), "--dry-run"]).exit_code == 2
    debugged = runner.invoke(app, ["--debug", "fit", str(tmp_path), "--dry-run"])
    assert isinstance(debugged.exception, KunetError) and str(tmp_path) in str(debugged.exception)


def test_a_folder_or_a_binary_file_as_the_pipeline_is_named(tmp_path):
    folder = _one_red_line(runner.invoke(app, ["fit", str(tmp_path), "--dry-run"]))
    assert str(tmp_path) in folder and "is a folder" in folder
    binary = tmp_path / "model.keras"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00garbage")
    assert "not a text file" in _one_red_line(runner.invoke(app, ["fit", str(binary), "--dry-run"]))
    assert binary.read_bytes().startswith(b"PK")  # read, never touched


def test_depth_40_is_refused_at_once_with_the_reason():
    started = time.monotonic()
    line = _one_red_line(runner.invoke(app, ["fit", str(ISBI_TOML), "--dry-run", "--set", "model.depth=40"]))
    assert time.monotonic() - started < 30  # used to hang searching for a valid tile size
    assert "isbi2012.toml" in line and "model.depth must be between 1 and 6, got 40" in line
    assert "smallest valid tile grows as 2^depth" in line


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rate=-0.1", "train.learning_rate must be positive, got -0.1"),
        ("train.learning_rate=nan", "train.learning_rate must be positive, got nan"),
        ("model.base_filters=0", "model.base_filters must be at least 1, got 0"),
        ("model.dropout=1.5", "model.dropout must be in [0, 1), got 1.5"),
        ("train.momentum=1.0", "train.momentum must be in [0, 1), got 1.0"),
        ("inference.memory_budget_mb=0", "inference.memory_budget_mb must be positive, got 0"),
        ("model.padding=reflect", "model.padding must be one of ['valid', 'same'], got 'reflect'"),
        ("train.tile_size=570", "train.tile_size: input size 570 does not fit a depth-4 U-Net"),
        ("inference.tile_size=100", "inference.tile_size: input size 100 does not fit"),
    ],
)
def test_obviously_bad_numbers_are_refused_before_anything_runs(override, message):
    from kunet.config import ConfigError, load_pipeline

    with pytest.raises(ConfigError) as error:
        load_pipeline(ISBI_TOML, [override])
    assert str(error.value).startswith(f"{ISBI_TOML}: {message}")


def test_settings_read_back_from_a_run_name_their_source():
    from kunet.config import ConfigError, pipeline_from_dict

    with pytest.raises(ConfigError, match=r"^runs/x/config.json: expected a table of pipeline settings, got NoneType"):
        pipeline_from_dict(None, where="runs/x/config.json")
    with pytest.raises(ConfigError, match=r"^runs/x/config.json: model.depth: expected int, got 'deep'"):
        pipeline_from_dict({"model": {"depth": "deep"}}, where="runs/x/config.json")
    with pytest.raises(ConfigError, match=r"^runs/x/config.json: model.depth must be between 1 and 6, got 9"):
        pipeline_from_dict({"model": {"depth": 9}}, where="runs/x/config.json")


def test_the_model_itself_refuses_a_depth_beyond_the_cap_instead_of_hanging():
    from kunet.model import UNet, valid_input_size

    with pytest.raises(ValueError, match="depth must be between 1 and 6, got 40"):
        UNet(depth=40)
    started = time.monotonic()
    assert valid_input_size(1, 40) > 2**40  # closed form: a search from 1 took 2^40 steps
    assert time.monotonic() - started < 1


# --- models that are not kunet models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """A depth-2 U-Net with 4 base filters saved as .keras (about 100 kB)."""
    from kunet.model import UNet

    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    UNet(base_filters=4, depth=2, seed=0).save(path)
    return path


def _foreign_models(folder, tiny_model_file):
    """Files a careless user may give as MODEL, each with the words its error must contain."""
    import zipfile

    import keras

    sequential = folder / "sequential.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(sequential)
    unrelated_zip = folder / "photos.keras"
    with zipfile.ZipFile(unrelated_zip, "w") as archive:
        archive.writestr("holiday.txt", "not a model")
    data = tiny_model_file.read_bytes()
    truncated = folder / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    middle = len(data) // 3
    flipped = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]
    damaged = folder / "damaged.keras"
    damaged.write_bytes(flipped)  # 64 inverted bytes inside the weights
    weights = folder / "weights.h5"
    weights.write_bytes(b"\x89HDF\r\n")
    return {
        sequential: "a Keras Sequential, not a kunet U-Net",
        unrelated_zip: "a zip archive but no Keras model (no config.json or model.weights.h5 inside)",
        truncated: "not a .keras model archive (the file is truncated or of another kind)",
        damaged: "cannot load the model, the file is damaged",
        weights: "not a model kunet reads",
    }


def test_foreign_truncated_and_damaged_keras_files_are_named_by_predict(tmp_path, tiny_model_file):
    image = tmp_path / "img.png"
    _write_png(image, (64, 80))
    for model, words in _foreign_models(tmp_path, tiny_model_file).items():
        before = model.read_bytes()
        line = _one_red_line(runner.invoke(app, ["predict", str(model), str(image), "--out", str(tmp_path / "out")]))
        assert line.startswith(f"error: {model}: {words}"), line
        assert model.read_bytes() == before
        assert not (tmp_path / "out").exists()


def _saved_model(folder):
    """A minimal SavedModel with a serving_default signature, as TensorFlow writes it."""

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
        def serve(self, images):
            return {"probabilities": tf.concat([1.0 - images, images], -1)}

    module = Module()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def test_saved_models_that_are_not_kunet_exports_or_are_damaged_are_named(tmp_path):
    from kunet.segmenter import ModelLoadError, Segmenter

    plain = _saved_model(tmp_path / "plain")
    with pytest.raises(ModelLoadError, match=f"^{plain}: a SavedModel but not a kunet export"):
        Segmenter(plain)
    info = plain / "assets.extra" / "kunet.json"
    info.parent.mkdir()
    info.write_text('{"inference": {}, "input": {')
    with pytest.raises(ModelLoadError, match=f"^{info}: damaged export description"):
        Segmenter(plain)
    info.write_text('{"inference": {}, "input": {"channels": 1}}')
    with pytest.raises(ModelLoadError, match=r"damaged export description \(no 'model' entry\)"):
        Segmenter(plain)
    info.write_text('{"inference": {}, "input": {"channels": 1}, "model": {"depth": 2}}')
    assert Segmenter(plain).depth == 2
    graph = plain / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=f"^{plain}: cannot load the SavedModel, it is damaged"):
        Segmenter(plain)


# --- image files: truncated stacks, permissions, a full disk ----------------------------------------


def _stack(path, pages: int = 5, size: int = 64) -> bytes:
    rng = np.random.default_rng(1)
    assert cv2.imwritemulti(str(path), [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(pages)])
    return path.read_bytes()


@pytest.mark.parametrize("fraction, lost_page", [(0.1, 1), (0.3, 2), (0.5, 3), (0.9, 5), (0.999, 5)])
def test_a_truncated_multi_page_tiff_names_the_first_lost_page(tmp_path, fraction, lost_page):
    from kunet.imageio import ImageReadError, read_pages

    data = _stack(tmp_path / "whole.tif")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageReadError, match=f"^{cut}: truncated TIFF: page {lost_page} of at least {lost_page} "):
        read_pages(cut)  # OpenCV alone returned the pages before the cut and said nothing
    assert len(read_pages(tmp_path / "whole.tif")) == 5


@pytest.mark.parametrize("bigtiff", [False, True])
def test_streamed_float_tiffs_read_back_exactly(tmp_path, bigtiff):
    from kunet.tiff import page_count, write_float_strips

    image = np.random.default_rng(2).random((300, 170)).astype(np.float32)
    path = tmp_path / "p.tif"
    write_float_strips(path, 300, 170, (image[top : top + 64] for top in range(0, 300, 64)), bigtiff=bigtiff)
    assert page_count(path) == 1
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), image)
    with pytest.raises(ValueError, match="do not tile 300 rows"):
        write_float_strips(path, 300, 170, [image[:100], image[100:150], image[150:]])


def test_written_images_get_the_umask_permissions_not_0600(tmp_path):
    import os
    import stat

    from kunet.imageio import write_image

    previous = os.umask(0o027)
    try:
        path = write_image(tmp_path / "mask.png", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # mkstemp gave 0600 whatever the umask


class _DiskFullAfter:
    """A stand-in for ``open`` whose files take ``room`` bytes, then fail like a full disk (ENOSPC)."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, file, mode="r", *args, **kwargs):
        stream = open(file, mode, *args, **kwargs)  # noqa: SIM115 - handed to the caller
        if "r" in mode:
            return stream
        room, write = self.room, stream.write

        def limited_write(data):
            nonlocal room
            if len(data) > room:
                write(bytes(data)[:room])
                room = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            room -= len(data)
            return write(data)

        stream.write = limited_write
        return stream


def test_a_full_disk_leaves_the_old_image_and_no_partial_file(tmp_path, monkeypatch):
    from kunet.imageio import write_image

    old = tmp_path / "mask.png"
    old.write_bytes(b"the previous mask")
    monkeypatch.setattr("kunet._fs.open", _DiskFullAfter(room=10), raising=False)
    with pytest.raises(OSError) as error:
        write_image(old, np.full((64, 64), 255, np.uint8))
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(old)
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"] and old.read_bytes() == b"the previous mask"


def test_predict_stops_at_a_truncated_stack_before_loading_the_model(tmp_path, tiny_model_file):
    data = _stack(tmp_path / "whole.tif")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    out = tmp_path / "out"
    line = _one_red_line(runner.invoke(app, ["predict", str(tiny_model_file), str(cut), "--out", str(out)]))
    assert line.startswith(f"error: {cut}: truncated TIFF: page 2 of at least 2 unreadable")
    assert not out.exists() and cut.read_bytes() == data[: int(len(data) * 0.3)]


# --- predict: options, output folders and inputs are checked before the model is loaded --------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Makes loading a model fail loudly, proving a check happened before it."""
    import kunet.segmenter

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(kunet.segmenter, "load_unet", refuse)


@pytest.mark.parametrize(
    "flags, words",
    [  # a name outside an option's choices is refused by the parser (tests/test_cli.py checks every such option)
        (["--probabilities", "png"], "Invalid value for '--probabilities'"),
        (["--mask-format", "jpg"], "Invalid value for '--mask-format'"),
        (["--precision", "fp8"], "Invalid value for '--precision'"),
        (["--threshold", "1.5"], "error: --threshold must be in (0, 1), got 1.5"),
    ],
)
def test_predict_refuses_bad_options_before_loading_the_model(tmp_path, tiny_model_file, no_model_load, flags, words):
    image = tmp_path / "img.png"
    _write_png(image, (40, 40))
    command = ["predict", str(tiny_model_file), str(image), "--out", str(tmp_path / "o"), *flags]
    result = runner.invoke(app, command, env={"COLUMNS": "400"})  # rich wraps the parser's message at 80
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len([line for line in result.output.splitlines() if words in line]) == 1, result.output
    assert not (tmp_path / "o").exists()


def test_library_functions_refuse_a_name_outside_their_choices(tmp_path):
    # Library callers do not pass through the CLI's parser: each function still names the bad value.
    from kunet.builders import make_strategy
    from kunet.predict_files import check_output_options
    from kunet.segmenter import check_prediction_options
    from kunet.serving.requests import request_masks
    from kunet.tune import tune

    cases = [
        (lambda: check_output_options("jpg", None), "--mask-format must be png or tif, got 'jpg'"),
        (lambda: check_output_options("png", "png"), "--probabilities must be tif (foreground probability), npy"),
        (lambda: check_prediction_options("fp8", 0, None), "--precision must be one of"),
        (lambda: make_strategy("tpu"), "unknown strategy 'tpu' (default, mirrored, multiworker)"),
        (lambda: tune(tmp_path, tmp_path, "dice"), "objective must be one of"),
        (lambda: request_masks("http://h/v1/models/m", [], tmp_path, "x"), "--signature must be segment_png or"),
    ]
    for call, words in cases:
        with pytest.raises(KunetError) as error:
            call()
        assert words in str(error.value)


def test_an_output_folder_under_a_regular_file_is_named_before_the_model_loads(
    tmp_path, tiny_model_file, no_model_load
):
    image = tmp_path / "img.png"
    original = _write_png(image, (40, 40))
    for out, words in ((image / "masks", "lies under"), (image, "is a file")):
        line = _one_red_line(runner.invoke(app, ["predict", str(tiny_model_file), str(image), "--out", str(out)]))
        assert line.startswith(f"error: {out}: {words}")  # was "[Errno 17] File exists" after predicting
    np.testing.assert_array_equal(cv2.imread(str(image), cv2.IMREAD_UNCHANGED), original)


def test_a_read_only_output_folder_is_named_before_the_model_loads(
    tmp_path, tiny_model_file, no_model_load, monkeypatch
):
    image = tmp_path / "img.png"
    _write_png(image, (40, 40))
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_open = os.open

    def read_only_file_system(path, flags, *args, **kwargs):
        if str(path).startswith(str(read_only)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_file_system)  # root ignores chmod, so the refusal is simulated
    out = read_only / "masks"
    line = _one_red_line(runner.invoke(app, ["predict", str(tiny_model_file), str(image), "--out", str(out)]))
    assert line == f"error: {out}: cannot write predictions into {read_only} (Read-only file system)"
    assert list(read_only.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_chmod_read_only_output_folder_is_named(tmp_path, tiny_model_file, no_model_load):
    image = tmp_path / "img.png"
    _write_png(image, (40, 40))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    line = _one_red_line(runner.invoke(app, ["predict", str(tiny_model_file), str(image), "--out", str(locked)]))
    assert line.startswith(f"error: {locked}: cannot write predictions into {locked} (Permission denied)")


def test_outputs_never_overwrite_inputs_and_name_clashes_are_found_before_writing(tmp_path, tiny_model_file):
    folder = tmp_path / "images"
    folder.mkdir()
    _write_png(folder / "a.png", (40, 40))
    truth = _write_png(folder / "a_mask.png", (40, 40), seed=1)  # the user's own mask beside the image
    line = _one_red_line(runner.invoke(app, ["predict", str(tiny_model_file), str(folder), "--out", str(folder)]))
    assert line.startswith(f"error: {folder / 'a_mask.png'}: the mask of {folder / 'a.png'} would overwrite this input")
    np.testing.assert_array_equal(cv2.imread(str(folder / "a_mask.png"), cv2.IMREAD_UNCHANGED), truth)
    _write_png(tmp_path / "a.tif", (40, 40))
    out = tmp_path / "out"
    clash = runner.invoke(app, ["predict", str(tiny_model_file), str(folder / "a.png"), str(tmp_path / "a.tif"),
                                "--out", str(out)])  # fmt: skip
    assert "would write outputs named 'a', as" in _one_red_line(clash) and not out.exists()


def test_jpeg_and_bmp_inputs_are_predicted_and_other_files_are_named(tmp_path, tiny_model_file):
    folder = tmp_path / "images"
    folder.mkdir()
    image = _write_png(folder / "png.png", (40, 48))
    assert cv2.imwrite(str(folder / "photo.jpg"), image) and cv2.imwrite(str(folder / "scan.bmp"), image)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(tiny_model_file), str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"skipped {folder / 'notes.txt'}: not an image kunet reads" in result.output
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["photo_mask.png", "png_mask.png", "scan_mask.png"]


def test_images_smaller_than_the_pooling_period_are_refused_with_the_reason(tmp_path, tiny_model_file):
    from kunet.imageio import ImageReadError
    from kunet.inference import Predictor
    from kunet.model import UNet
    from kunet.predict_files import check_image_size

    model = UNet(base_filters=2, depth=4, seed=0)
    # The library itself predicts any size (a 4-px image used to fail with "operands could not be broadcast").
    assert Predictor(model).probabilities(np.full((4, 3), 9, np.uint8)).shape == (4, 3, 2)
    with pytest.raises(ImageReadError, match=r"^tiny.png: 4x3 px is smaller than the 16x16 px a depth-4 net needs"):
        check_image_size(np.zeros((4, 3), np.uint8), "tiny.png", depth=4)
    check_image_size(np.zeros((16, 16), np.uint8), "ok.png", depth=4)
    crumb = tmp_path / "crumb.png"
    _write_png(crumb, (3, 5))
    out = tmp_path / "out"
    line = _one_red_line(runner.invoke(app, ["predict", str(tiny_model_file), str(crumb), "--out", str(out)]))
    assert line.startswith(f"error: {crumb}: 3x5 px is smaller than the 4x4 px a depth-2 net needs: it pools")
    assert list(out.iterdir()) == []


def test_a_full_disk_during_predict_ends_in_one_line_and_leaves_no_partial_file(tmp_path, tiny_model_file, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        _write_png(images / f"i{index}.png", (64, 64), seed=index)
    out = tmp_path / "out"
    out.mkdir()
    (out / "i0_mask.png").write_bytes(b"from an earlier run")
    monkeypatch.setattr("kunet._fs.open", _DiskFullAfter(room=200), raising=False)
    line = _one_red_line(runner.invoke(app, ["predict", str(tiny_model_file), str(images), "--out", str(out)]))
    assert line == f"error: {out / 'i0_mask.png'}: No space left on device"
    assert [p.name for p in out.iterdir()] == ["i0_mask.png"]  # no temporary, no half-written mask
    assert (out / "i0_mask.png").read_bytes() == b"from an earlier run"


# --- large images: streamed strip by strip, within a memory bound ------------------------------------


def _predict_folder(model_file, image, out, streaming: bool, monkeypatch, postprocess: str = "none", **options):
    import kunet.predict_files as predict_files
    from kunet.segmenter import Segmenter
    from kunet.tiling import TilingOptions

    monkeypatch.setattr(predict_files, "STREAMING_PIXELS", 0 if streaming else 10**12)
    segmenter = Segmenter(model_file, tiling=TilingOptions(tile_size=60, streaming_memory_mb=1))  # many strips
    segmenter.settings.postprocess = postprocess
    return predict_files.predict_files(segmenter, [image], out, **options)


@pytest.mark.parametrize("postprocess", ["none", "watershed"])
def test_streamed_outputs_equal_whole_image_outputs(tmp_path, tiny_model_file, monkeypatch, postprocess):
    image = tmp_path / "img.png"
    _write_png(image, (203, 151))
    for probabilities in ("npy", "tif"):
        whole, streamed = tmp_path / f"whole-{probabilities}", tmp_path / f"streamed-{probabilities}"
        for out, streaming in ((whole, False), (streamed, True)):
            _predict_folder(
                tiny_model_file, image, out, streaming, monkeypatch, postprocess, probabilities=probabilities
            )
        for name in ("img_mask.png", "img_overlay.png"):
            np.testing.assert_array_equal(cv2.imread(str(streamed / name)), cv2.imread(str(whole / name)))
        read = np.load if probabilities == "npy" else (lambda path: cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        name = "img_probabilities.npy" if probabilities == "npy" else "img_probability.tif"
        np.testing.assert_allclose(read(streamed / name), read(whole / name), atol=2e-5)


def test_a_full_disk_while_streaming_probabilities_leaves_no_partial_file(tmp_path, tiny_model_file, monkeypatch):
    image = tmp_path / "img.png"
    _write_png(image, (120, 90))
    out = tmp_path / "out"
    monkeypatch.setattr("kunet.imageio.open", _DiskFullAfter(room=5000), raising=False)
    with pytest.raises(OSError) as error:
        _predict_folder(tiny_model_file, image, out, True, monkeypatch, probabilities="npy")
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(out / "img_probabilities.npy")
    assert list(out.iterdir()) == []


def test_streamed_statistics_equal_whole_image_statistics():
    from kunet.preprocess import image_statistics, streamed_image_statistics, to_unit_range

    image = np.random.default_rng(4).integers(0, 65536, (517, 263, 2), dtype=np.uint16)
    expected = image_statistics(to_unit_range(image))
    streamed = streamed_image_statistics(image, to_unit_range, chunk_values=5000)  # 9 rows per block
    np.testing.assert_allclose(streamed, expected, rtol=1e-12)


def test_streaming_tiles_keep_strip_and_activations_within_the_budget():
    from kunet.sizes import activation_bytes
    from kunet.tiling import choose_tile, strip_bytes

    plans = {}
    for budget in (256, 512, 1024):
        plans[budget] = choose_tile((8000, 8000), memory_budget_mb=budget, strip_width=8000)
        used = activation_bytes(*plans[budget].input_hw) + strip_bytes(plans[budget].input_hw[0], 8000, 1, 2)
        assert used <= budget * 1e6
    assert plans[256].input_hw[0] < plans[1024].input_hw[0]
    assert choose_tile((8000, 8000), memory_budget_mb=1, strip_width=8000).input_hw == (204, 204)  # the floor
    whole = choose_tile((8000, 8000), depth=2, base_filters=4)
    assert whole.num_tiles == 1  # without a strip budget a tiny net takes the image in one tile


_PEAK_MEMORY_SCRIPT = """
import sys
import numpy as np, cv2
import kunet.predict_files as predict_files
from kunet.segmenter import Segmenter
from kunet.tiling import TilingOptions


def peak_rss() -> int:
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS when forked (a big pytest process).
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


model, side, streaming, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "stream", sys.argv[4]
small = np.random.default_rng(0).integers(0, 256, (side // 64 + 1, side // 64 + 1), dtype=np.uint8)
# Smooth blobs compress like a micrograph (random noise would make every PNG as large as the image).
cv2.imwrite(out + "/big.png", cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC))
cv2.imwrite(out + "/warm.png", small)
predict_files.STREAMING_PIXELS = 0 if streaming else 10**12
segmenter = Segmenter(model, tiling=TilingOptions(streaming_memory_mb=128))
predict_files.predict_files(segmenter, [out + "/warm.png"], out + "/warm", probabilities="npy")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # resets the peak to the current RSS: start-up peaks must not hide what follows
before = peak_rss()
predict_files.predict_files(segmenter, [out + "/big.png"], out + "/out", probabilities="npy")
print(peak_rss() - before)
"""


def _peak_memory_increase(model_file, side: int, streaming: bool, folder) -> int:
    """Bytes the peak RSS of a fresh process grows while predicting a ``side`` x ``side`` image."""
    import subprocess
    import sys

    folder.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, str(model_file), str(side), "stream" if streaming else "whole",
         str(folder)],
        capture_output=True, text=True, timeout=1200, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return int(run.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
def test_streaming_a_large_image_stays_far_below_the_whole_image_cost(tmp_path):
    """The audit's 20000^2 image ran out of memory at 5.8 GB; streamed, the cost per pixel is a few bytes."""
    from kunet.model import UNet

    model_file = tmp_path / "tiny.keras"
    UNet(base_filters=2, depth=2, seed=0).save(model_file)
    whole_per_pixel = _peak_memory_increase(model_file, 2000, False, tmp_path / "whole") / 2000**2
    side = 5000  # 25 M pixels: whole-image prediction would need about 1.7 GB here
    streamed = _peak_memory_increase(model_file, side, True, tmp_path / "streamed")
    streamed_per_pixel = (streamed - 128e6) / side**2  # beyond the 128 MB streaming budget
    assert np.load(tmp_path / "streamed" / "out" / "big_probabilities.npy", mmap_mode="r").shape == (side, side, 2)
    # Whole-image prediction holds float32 copies of the image and of the [H, W, 2] output and all tiles at
    # once (some 70 bytes per pixel here); streamed, what grows is the 8-bit image, its classes and mask and
    # the RGB overlay with its encoding copy, about 9 bytes per pixel.
    assert whole_per_pixel > 30, whole_per_pixel
    assert streamed_per_pixel < 12, streamed_per_pixel
    assert streamed < whole_per_pixel * side**2 / 4


def test_damaged_run_configs_and_manifests_are_named_in_one_line(tmp_path):
    # A truncated checkpoint is named by fit itself (test_reliability_runs: the fall-back test); here the
    # other kunet files a command reads back: a run's config.json and a records manifest.
    run = tmp_path / "run"
    run.mkdir()
    for text in ('{"records": "somewhere"}', "{not json", '{"pipeline": {"model": {"depth": 40}}, "records": "x"}'):
        (run / "config.json").write_text(text)
        line = _one_red_line(runner.invoke(app, ["fit", "--resume", str(run)]))
        assert f"{run / 'config.json'}:" in line
    records = tmp_path / "records"
    records.mkdir()
    (records / "manifest.json").write_text('{"schema_version": 1, "counts": {"train": 1, "val": 0}}')
    line = _one_red_line(runner.invoke(app, ["inspect-records", str(records)]))
    assert line == f"error: {records / 'manifest.json'}: damaged manifest, missing image, labels, shards, sources"
    assert sorted(p.name for p in records.iterdir()) == ["manifest.json"]


@pytest.fixture
def tiny_file_system(tmp_path):
    """A real 256 kB file system (a tmpfs; needs root and mount permission, skipped where there is none)."""
    import shutil
    import subprocess

    mount_point = tmp_path / "tiny-fs"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_really_full_disk_and_a_read_only_one(tmp_path, tiny_model_file, tiny_file_system, monkeypatch, streaming):
    import subprocess

    import kunet.predict_files as predict_files

    monkeypatch.setattr(predict_files, "STREAMING_PIXELS", 0 if streaming else 10**12)
    image = tmp_path / "img.png"
    _write_png(image, (300, 300))  # its .npy probabilities take 720 kB of the 256 kB
    out = tiny_file_system / "out"
    command = ["predict", str(tiny_model_file), str(image), "--out", str(out), "--probabilities", "npy"]
    line = _one_red_line(runner.invoke(app, command))
    assert line == f"error: {out / 'img_probabilities.npy'}: No space left on device"
    assert list(out.iterdir()) == []  # the temporary is gone, and nothing else was begun
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_file_system)], check=True)
    line = _one_red_line(runner.invoke(app, [*command[:3], "--out", str(tiny_file_system / "other")]))
    assert line == f"error: {tiny_file_system / 'other'}: cannot write predictions into {tiny_file_system} " + (
        "(Read-only file system)"
    )
