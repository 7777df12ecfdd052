"""``kunet predict``'s throughput mode (images read ahead, several predicted at once, outputs written behind)
writes exactly what one image at a time writes: the same bytes, records, order and progress, the same files
after an error, within a bounded number of images in memory, huge images still streamed alone."""

from __future__ import annotations

import hashlib
import threading
import time

import cv2
import numpy as np
import pytest
import tifffile
from helpers import blob_image
from kunet_cli.main import app
from typer.testing import CliRunner

import kunet.predict_files as predict_files
from kunet.segmenter import Segmenter

runner = CliRunner()


def _inputs(root, sizes=((96, 96), (64, 80), (96, 96), (48, 120), (96, 96))):
    """A folder of PNGs of mixed sizes with a 3-plane TIFF stack among them, and a PNG outside it."""
    rng = np.random.default_rng(5)
    folder = root / "images"
    folder.mkdir()
    for index, (height, width) in enumerate(sizes):
        cv2.imwrite(str(folder / f"img{index}.png"), blob_image(rng, 128)[0][:height, :width])
    planes = np.stack([blob_image(rng, 56)[0] for _ in range(3)])
    tifffile.imwrite(folder / "stack.tif", planes, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX"})
    lone = root / "lone.png"
    cv2.imwrite(str(lone), blob_image(rng, 72)[0])
    return [folder, lone]


def _failing_call(function, at: int, error: BaseException):
    """``function``, except that its ``at``-th call raises ``error``."""
    calls = []

    def call(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise error
        return function(*args, **kwargs)

    return call


def _files(folder) -> dict[str, str]:
    """Every file in ``folder`` (hidden temporaries too) with the sha256 of its bytes."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.fixture
def instance_segmenter(trained_tiny_run):
    segmenter = Segmenter(trained_tiny_run)
    segmenter.settings.label_kind = "instance"  # instances written too
    return segmenter


def test_throughput_mode_writes_the_same_bytes_records_and_progress(instance_segmenter, tmp_path):
    inputs = _inputs(tmp_path)
    for probabilities, concurrencies in (("tif", (0, 2)), ("npy", (0, 1))):
        results = {}
        for concurrency in concurrencies:
            out, ticks = tmp_path / f"{probabilities}-{concurrency}", []
            options = {"probabilities": probabilities, "concurrency": concurrency}
            records = predict_files.predict_files(instance_segmenter, inputs, out, progress=lambda t=ticks: t.append(1),
                                                  **options)  # fmt: skip
            named = [{**record, "outputs": {kind: path.name for kind, path in record["outputs"].items()}}
                     for record in records]  # fmt: skip
            results[concurrency] = (_files(out), named, len(ticks))
        files, records, ticks = results[0]
        assert ticks == len(records) == 9  # 5 PNGs, 3 planes, the lone PNG: one tick per image, in order
        assert [record["name"] for record in records] == [
            "img0", "img1", "img2", "img3", "img4", "stack_p0000", "stack_p0001", "stack_p0002", "lone"
        ]  # fmt: skip
        assert {"stack_mask.tif", "stack_instances.tif", "img3_instances.tif", "lone_overlay.png"} <= set(files)
        assert not [name for name in files if name.startswith(".")]
        assert results[concurrencies[1]] == results[0]


def test_batched_images_share_model_calls_and_write_what_one_at_a_time_writes(instance_segmenter, tmp_path):
    inputs = _inputs(tmp_path, sizes=((96, 96), (96, 96), (96, 96), (96, 96), (64, 80)))
    groups = []
    segment_images = instance_segmenter.segment_images

    def spy(images):
        groups.append([image.shape for image in images])
        return segment_images(images)

    instance_segmenter.segment_images = spy
    outputs = {}
    for batch_images in (1, 3):
        out, ticks = tmp_path / f"batch{batch_images}", []
        options = {"probabilities": "npy", "concurrency": 2, "batch_images": batch_images}
        records = predict_files.predict_files(instance_segmenter, inputs, out, progress=lambda t=ticks: t.append(1),
                                              **options)  # fmt: skip
        outputs[batch_images] = ([record["name"] for record in records], len(ticks), out)
    # Consecutive images of one shape share calls, at most 3: img0-2, then img3 alone (img4 differs), the stack's 3
    # planes (its commit ends the group); the rest alone. Batch 1 never groups.
    assert groups == [[(96, 96, 1)] * 3, [(56, 56, 1)] * 3]
    assert outputs[3][:2] == outputs[1][:2] and outputs[1][1] == 9
    one, batched = outputs[1][2], outputs[3][2]
    assert _files(one).keys() == _files(batched).keys()

    def mask(folder, name):  # a stack's plane is its page of the stack's mask TIFF
        if name.startswith("stack_p"):
            return tifffile.imread(folder / "stack_mask.tif")[int(name.removeprefix("stack_p"))]
        return cv2.imread(str(folder / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)

    for name in outputs[1][0]:
        probabilities = np.load(one / f"{name}_probabilities.npy")
        np.testing.assert_allclose(np.load(batched / f"{name}_probabilities.npy"), probabilities, atol=1e-5)
        decided = np.abs(probabilities[..., 1] - instance_segmenter.settings.threshold) >= 1e-5
        assert np.array_equal(mask(one, name)[decided], mask(batched, name)[decided])


def test_batch_images_is_refused_where_it_cannot_apply(trained_tiny_run, tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), blob_image(np.random.default_rng(0), 64)[0])
    for flags, message in ((["--batch-images", "2", "--concurrency", "0"], "--batch-images above 1 needs"),
                           (["--batch-images", "2", "--shard", "0/2"], "--batch-images goes without --shard"),
                           (["--batch-images", "0"], "--batch-images")):  # fmt: skip
        args = ["predict", str(trained_tiny_run), str(image), "--out", str(tmp_path / "o"), *flags]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, result.output


def test_the_cli_reports_images_per_second_and_concurrency_0_is_the_same(trained_tiny_run, tmp_path):
    inputs = _inputs(tmp_path, sizes=((96, 96), (64, 80)))
    outputs = {}
    for flags in ((), ("--concurrency", "0")):
        out = tmp_path / f"out{len(flags)}"
        args = ["predict", str(trained_tiny_run), *map(str, inputs), "--out", str(out), "--log-every", "1", *flags]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "predicting pages of 4 file(s) 6/6" in result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith(f"wrote outputs for 6 image(s) to {out}: ") and last.endswith(" images/s"), last
        outputs[flags] = _files(out)
    assert outputs[()] == outputs[("--concurrency", "0")]
    refused = runner.invoke(app, ["predict", str(trained_tiny_run), str(inputs[1]), "--concurrency", "-1"])
    assert refused.exit_code == 2 and "--concurrency" in refused.output
    shown = " ".join(runner.invoke(app, ["predict", "--help"]).output.replace("│", " ").split())
    assert f"Default: {predict_files.DEFAULT_CONCURRENCY}." in shown  # the help says the library's default


def test_constant_weights_write_the_probabilities_and_masks_of_variable_weights(trained_tiny_run, tmp_path):
    inputs = _inputs(tmp_path, sizes=((96, 96), (64, 80)))
    outputs = {}
    for flags in ((), ("--constant-weights",)):
        out = tmp_path / f"out{len(flags)}"
        args = ["predict", str(trained_tiny_run), *map(str, inputs), "--out", str(out), "--probabilities", "npy",
                "--quiet", *flags]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs[flags] = out
    probabilities = sorted(outputs[()].glob("*.npy"))
    assert len(probabilities) == 6  # 2 PNGs, the stack's 3 planes and the lone PNG
    threshold = Segmenter(trained_tiny_run).settings.threshold
    for path in probabilities:
        variable, constant = np.load(path), np.load(outputs[("--constant-weights",)] / path.name)
        np.testing.assert_allclose(constant, variable, atol=2e-5)
        if path.name.startswith("stack"):
            continue  # the stack's masks are one TIFF, compared below
        masks = [cv2.imread(str(out / path.name.replace("_probabilities.npy", "_mask.png")), cv2.IMREAD_UNCHANGED)
                 for out in outputs.values()]  # fmt: skip
        clear = np.abs(variable[..., -1] - threshold) > 1e-4
        assert masks[0] is not None and np.array_equal(masks[0][clear], masks[1][clear])
    stacks = [tifffile.imread(out / "stack_mask.tif") for out in outputs.values()]
    assert stacks[0].shape == (3, 56, 56) and np.mean(stacks[0] != stacks[1]) < 1e-3


def test_an_unreadable_image_stops_the_run_after_every_image_before_it(trained_tiny_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "c", "d"):
        cv2.imwrite(str(folder / f"{name}.png"), blob_image(rng, 64)[0])
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    outputs = {}
    for concurrency in ("0", "2"):
        out = tmp_path / f"out{concurrency}"
        result = runner.invoke(app, ["predict", str(trained_tiny_run), str(folder), "--out", str(out),
                                     "--concurrency", concurrency])  # fmt: skip
        assert result.exit_code == 2 and f"error: {folder / 'b.png'}: unreadable or truncated image" in result.output
        outputs[concurrency] = sorted(path.name for path in out.iterdir())
    assert outputs["2"] == outputs["0"] == ["a_mask.png", "a_overlay.png"]


def test_a_failed_write_leaves_what_one_image_at_a_time_leaves(instance_segmenter, tmp_path, monkeypatch):
    inputs = _inputs(tmp_path)
    real_write_image = predict_files.write_image
    left = {}
    for concurrency in (0, 2):
        # the 8th write is the third image's instances, after its probability and mask
        full_disk = _failing_call(real_write_image, 8, OSError(28, "No space left on device"))
        monkeypatch.setattr(predict_files, "write_image", full_disk)
        out = tmp_path / f"out{concurrency}"
        with pytest.raises(OSError, match="No space left"):
            predict_files.predict_files(instance_segmenter, inputs, out, probabilities="tif", concurrency=concurrency)
        left[concurrency] = _files(out)
    assert left[2] == left[0]
    assert {"img1_overlay.png", "img2_probability.tif", "img2_mask.png"} <= set(left[0])
    assert not {"img2_instances.tif", "img2_overlay.png", "img3_mask.png", "img3_probability.tif"} & set(left[0])
    assert not [name for name in left[0] if name.startswith(".")]


def test_a_failure_inside_a_stack_removes_its_temporaries_in_both_modes(trained_tiny_run, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    planes = np.stack([blob_image(rng, 48)[0] for _ in range(4)])
    tifffile.imwrite(folder / "stack.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    segmenter = Segmenter(trained_tiny_run)
    real_segment = segmenter.segment

    def fails_on_the_third_plane(image, *args, **kwargs):
        # By the plane, not by the call count: in throughput mode plane 4 may call before plane 3.
        if np.array_equal(np.squeeze(image, -1), planes[2]):  # a plane comes as [H, W, 1]
            raise MemoryError("test")
        return real_segment(image, *args, **kwargs)

    for concurrency in (0, 2):
        monkeypatch.setattr(segmenter, "segment", fails_on_the_third_plane)
        out = tmp_path / f"out{concurrency}"
        with pytest.raises(MemoryError):
            predict_files.predict_files(segmenter, [folder], out, probabilities="tif", concurrency=concurrency)
        assert sorted(path.name for path in out.iterdir()) == ["stack_p0000_overlay.png", "stack_p0001_overlay.png"]


def test_images_in_memory_stay_bounded_by_count_and_by_pixels(trained_tiny_run, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for index in range(10):
        cv2.imwrite(str(folder / f"i{index}.png"), blob_image(rng, 48)[0])
    segmenter = Segmenter(trained_tiny_run)
    real_check, real_segment = predict_files.check_image_size, segmenter.segment
    counts = {"read": 0, "written": 0, "most": 0}

    def counted_read(*args, **kwargs):
        counts["read"] += 1
        counts["most"] = max(counts["most"], counts["read"] - counts["written"])
        return real_check(*args, **kwargs)

    def slow_segment(image, *args, **kwargs):
        time.sleep(0.02)  # the reader runs ahead as far as it may
        return real_segment(image, *args, **kwargs)

    def written():
        counts["written"] += 1

    monkeypatch.setattr(predict_files, "check_image_size", counted_read)
    monkeypatch.setattr(segmenter, "segment", slow_segment)
    predict_files.predict_files(segmenter, [folder], tmp_path / "out", overlays=False, concurrency=1, progress=written)
    # 3N + 3 for N = 1: 2N + 1 submitted and not retired, N + 1 queued, 1 in the reader's hand; + 1 released early
    assert 2 <= counts["most"] <= 7
    monkeypatch.setattr(predict_files, "READ_AHEAD_PIXELS", 1)  # the next image only once the last is written
    counts.update(read=0, written=0, most=0)
    predict_files.predict_files(segmenter, [folder], tmp_path / "out1", overlays=False, concurrency=2, progress=written)
    assert counts["most"] <= 2  # one in flight, and the next read as soon as it is written, before its tick


def test_a_streamed_image_runs_alone_and_streams_as_before(trained_tiny_run, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for index, size in enumerate((48, 100, 48, 48, 100, 48)):
        cv2.imwrite(str(folder / f"i{index}.png"), blob_image(rng, 128)[0][:size, :size])
    monkeypatch.setattr(predict_files, "STREAMING_PIXELS", 64 * 64)  # the 100x100 images stream
    segmenter = Segmenter(trained_tiny_run)
    real_segment, real_streaming = segmenter.segment, segmenter.segment_streaming
    running, lock, overlaps = [], threading.Lock(), []

    def tracked(function, streamed):
        def call(*args, **kwargs):
            with lock:
                running.append(streamed)
                overlaps.append(len(running) > 1 and any(running))
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    running.remove(streamed)

        return call

    monkeypatch.setattr(segmenter, "segment", tracked(real_segment, False))
    monkeypatch.setattr(segmenter, "segment_streaming", tracked(real_streaming, True))
    files = {}
    for concurrency in (0, 2):
        out = tmp_path / f"out{concurrency}"
        predict_files.predict_files(segmenter, [folder], out, probabilities="npy", concurrency=concurrency)
        files[concurrency] = _files(out)
    assert files[2] == files[0] and len(files[0]) == 18
    assert len(overlaps) == 12 and not any(overlaps)  # no image predicted while a streamed one was


def test_cut_maps_are_written_per_image_and_per_stack_and_refused_for_streamed_images(
    trained_tiny_run, tmp_path, monkeypatch
):
    from kunet.predict_files import PredictionInputError
    from kunet.tune import store_settings

    model = tmp_path / "watershed.keras"
    model.write_bytes((trained_tiny_run / "best.keras").read_bytes())
    store_settings(model, {"threshold": 0.4, "postprocess": "watershed", "seed_threshold": 0.6, "seed_smoothing": 0})
    inputs = _inputs(tmp_path, sizes=((96, 96), (64, 80)))
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(model), *map(str, inputs), "--out", str(out), "--probabilities", "cut",
                                 "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    segmenter = Segmenter(model)
    images = sorted((inputs[0]).glob("img*.png")) + [inputs[1]]
    lines = 0
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        expected = segmenter.rule.cut_map(segmenter.probabilities(image))
        written = tifffile.imread(out / f"{path.stem}_cut_map.tif")
        assert written.dtype == np.float32
        np.testing.assert_array_equal(written, expected)
        lines += int((written == 0).sum())
    assert lines > 0  # the watershed cut somewhere, so the maps are not plain p(cell)
    planes = tifffile.imread(inputs[0] / "stack.tif")
    written = tifffile.imread(out / "stack_cut_map.tif")
    assert written.shape == planes.shape and written.dtype == np.float32
    for plane, page in zip(planes, written, strict=True):
        np.testing.assert_array_equal(page, segmenter.rule.cut_map(segmenter.probabilities(plane)))
    monkeypatch.setattr(predict_files, "STREAMING_PIXELS", 64 * 64)  # the 96x96 images stream
    with pytest.raises(PredictionInputError, match="img0.png: --probabilities cut needs the whole probability map"):
        predict_files.predict_files(segmenter, [inputs[0]], tmp_path / "streamed", probabilities="cut", concurrency=0)


def test_constant_weights_pay_off_from_the_measured_break_even(monkeypatch):
    from kunet.inference import constant_weights_pay_off

    monkeypatch.delenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", raising=False)
    assert not constant_weights_pay_off("float32", True, 5)
    assert constant_weights_pay_off("float32", True, 6)
    assert not constant_weights_pay_off("float32", False, 23)
    assert constant_weights_pay_off("float32", False, 24)
    assert not constant_weights_pay_off("mixed_bfloat16", True, 1000)
    # Where oneDNN keeps every filter it reorders (kunet predict's process), constant weights add nothing but time.
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")
    assert not constant_weights_pay_off("float32", True, 1000)


def test_segmenter_decides_constant_weights_by_the_job_when_asked(trained_tiny_run):
    def constant(**options):
        return Segmenter(trained_tiny_run, constant_weights=None, **options).predictor.constant_weights

    assert constant(test_time_mirroring=True, expected_images=6)
    assert not constant(test_time_mirroring=True, expected_images=5)
    assert not constant(test_time_mirroring=False, expected_images=23)
    assert constant(test_time_mirroring=False, expected_images=24)
    assert not constant(test_time_mirroring=True, expected_images=64, precision="mixed_bfloat16")
    # The explicit choice stands whatever the job.
    assert not Segmenter(trained_tiny_run, expected_images=64, test_time_mirroring=True).predictor.constant_weights
    assert Segmenter(trained_tiny_run, constant_weights=True).predictor.constant_weights


def test_predict_turns_constant_weights_on_for_a_mirrored_folder_unless_told(trained_tiny_run, tmp_path):
    inputs = _inputs(tmp_path, sizes=((96, 96), (96, 96), (64, 80)))
    runs = {}
    for name, flags in (("auto", []), ("off", ["--no-constant-weights"]), ("quiet", ["--quiet"])):
        result = runner.invoke(app, ["predict", str(trained_tiny_run), *map(str, inputs), "--out",
                                     str(tmp_path / name), "--mirror", "--probabilities", "npy", *flags])  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[name] = result.output
    # 7 images: the folder's 3 PNGs and the 3 planes of its stack, and the lone PNG.
    assert "constant weights for 7 images" in runs["auto"] and "constant weights for" not in runs["off"]
    assert "constant weights for" not in runs["quiet"]
    one = runner.invoke(app, ["predict", str(trained_tiny_run), str(inputs[1]), "--out", str(tmp_path / "one"),
                              "--mirror"])  # fmt: skip
    assert one.exit_code == 0 and "constant weights for" not in one.output
    for path in sorted((tmp_path / "off").glob("*.npy")):
        np.testing.assert_allclose(np.load(tmp_path / "auto" / path.name), np.load(path), atol=2e-5)
