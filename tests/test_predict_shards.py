"""``kunet predict --shard``: N shards equal one unsharded run, reruns skip complete inputs, the scheduler's
environment names the shard, and a crash mid-image leaves nothing that looks complete."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from helpers import blob_image
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet._fs import exclusive_lock
from kunet.predict_shards import main as status_main
from kunet.predict_shards import read_completions, shard_status
from kunet.sharding import Shard, ShardError, parse_shard, shard_from_environment, shard_members

runner = CliRunner()
SLURM_ARRAY = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT")
SCHEDULER_VARIABLES = (*SLURM_ARRAY, "SLURM_ARRAY_TASK_STEP", "JOB_COMPLETION_INDEX", "TF_CONFIG")
# Six single images of different sizes and one three-page TIFF stack: seven inputs, nine images.
SIZES = [(40, 52), (64, 64), (96, 80), (50, 70), (33, 45), (72, 38)]


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch):
    for name in SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def collection(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for index, (height, width) in enumerate(SIZES):
        image, _ = blob_image(rng, size=max(height, width))
        assert cv2.imwrite(str(folder / f"img{index}.png"), image[:height, :width])
    pages = [blob_image(rng, size=48)[0] for _ in range(3)]
    assert cv2.imwritemulti(str(folder / "stack.tif"), pages)
    return folder


def _predict(run, folder, out, *flags):
    result = runner.invoke(app, ["predict", str(run), str(folder), "--out", str(out), "--probabilities", "tif", *flags])
    return result


def _outputs(out) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}


def _stats(out) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.iterdir() if path.is_file()}


def _summary(out, shard: str) -> dict:
    index, count = shard.split("/")
    return json.loads((out / "_shards" / f"shard-{index}-of-{count}.json").read_text())


# --- the shard a task takes -------------------------------------------------------------------------------


def test_shard_values_parse_and_bad_ones_name_the_option():
    assert parse_shard("2/8") == Shard(2, 8) and parse_shard(" 0/1 ") == Shard(0, 1)
    for bad, words in [("3/3", "not in 0..2"), ("-1/3", "not in 0..2"), ("1/0", "at least 1"), ("a/3", "whole"),
                       ("1", "I/N"), ("", "I/N"), ("1/x", "whole")]:  # fmt: skip
        with pytest.raises(ShardError) as caught:
            parse_shard(bad, environ={})
        assert "--shard" in str(caught.value) and words in str(caught.value), (bad, str(caught.value))


def test_bad_shard_on_the_command_line_is_one_red_line_before_anything_is_read(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "no-model"), str(tmp_path / "no-images"), "--shard", "3/3"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --shard: shard index 3 is not in 0..2 (shards are numbered from 0)"]
    auto = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path), "--shard", "auto"])
    assert auto.exit_code == 2 and "none of SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or TF_CONFIG" in auto.output
    lonely = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path), "--overwrite"])
    assert lonely.exit_code == 2 and "--overwrite goes with --shard" in lonely.output


def _slurm(task, low, high, count, step=None) -> dict:
    environ = dict(zip(SLURM_ARRAY, map(str, (task, low, high, count))))
    return environ | ({"SLURM_ARRAY_TASK_STEP": str(step)} if step else {})


def _position(text: str, environ: dict) -> tuple[int, int]:
    shard = parse_shard(text, environ)
    return shard.index, shard.count


def test_slurm_arrays_give_the_task_its_position_whatever_the_first_index():
    assert _position("auto", _slurm(0, 0, 7, 8, 1)) == (0, 8)
    assert _position("auto", _slurm(5, 1, 8, 8)) == (4, 8)  # --array=1-8 (no STEP variable: step 1)
    stepped = shard_from_environment(_slurm(6, 0, 20, 11, 2))  # --array=0-20:2
    assert (stepped.index, stepped.count) == (3, 11) and "SLURM_ARRAY_TASK_ID=6" in stepped.origin
    with pytest.raises(ShardError, match="evenly stepped"):
        shard_from_environment(_slurm(9, 1, 9, 3))  # --array=1,2,9
    with pytest.raises(ShardError, match="makes 8 shards, not 4"):
        parse_shard("auto/4", environ=_slurm(3, 0, 7, 8))
    with pytest.raises(ShardError, match="SLURM_ARRAY_TASK_COUNT"):
        shard_from_environment({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"})
    # A Slurm array wins over a TF_CONFIG that happens to be set too.
    tf_config = json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})
    assert shard_from_environment(_slurm(2, 0, 3, 4) | {"TF_CONFIG": tf_config}).count == 4


def test_kubernetes_indexed_jobs_need_the_count_and_tf_config_numbers_chief_then_workers():
    pod = {"JOB_COMPLETION_INDEX": "2"}
    assert _position("auto/5", pod) == (2, 5) and "JOB_COMPLETION_INDEX=2" in parse_shard("auto/5", pod).origin
    with pytest.raises(ShardError, match="auto/N"):
        parse_shard("auto", environ=pod)
    with pytest.raises(ShardError, match="not in 0..1"):
        parse_shard("auto/2", environ=pod)

    def tf(task_type, index, chief=True):
        cluster = {"worker": ["w0:1", "w1:1"], **({"chief": ["c:1"]} if chief else {}), "ps": ["p:1"]}
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}

    tasks = [("chief", 0), ("worker", 0), ("worker", 1)]
    assert [_position("auto", tf(*task)) for task in tasks] == [(0, 3), (1, 3), (2, 3)]
    assert _position("auto/2", tf("worker", 1, chief=False)) == (1, 2)
    with pytest.raises(ShardError, match="'ps' takes no shard"):
        parse_shard("auto", tf("ps", 0))
    with pytest.raises(ShardError, match="TF_CONFIG"):
        parse_shard("auto", {"TF_CONFIG": "{not json"})


def test_inputs_are_dealt_by_name_whatever_their_order():
    keys = [f"slice_{index:03d}" for index in range(23)]
    shards = [shard_members(keys, Shard(index, 4)) for index in range(4)]
    assert sorted(sum(shards, [])) == sorted(keys)  # disjoint (no repeats) and complete
    assert [len(members) for members in shards] == [6, 6, 6, 5]
    assert shard_members(list(reversed(keys)), Shard(1, 4)) == shards[1]
    assert shard_members(keys, Shard(0, 1)) == sorted(keys)


# --- predicting shards through the command line --------------------------------------------------------------


def test_three_shards_equal_one_unsharded_run_and_a_rerun_skips_them(trained_tiny_run, collection, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    whole = _predict(trained_tiny_run, collection, tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "sharded"
    # One shard per way of naming it: the option, a Slurm array starting at 1, a Kubernetes indexed Job.
    assert _predict(trained_tiny_run, collection, out, "--shard", "0/3").exit_code == 0
    for name, value in _slurm(2, 1, 3, 3, 1).items():
        monkeypatch.setenv(name, value)
    slurm = _predict(trained_tiny_run, collection, out, "--shard", "auto")
    assert slurm.exit_code == 0 and "shard 1/3 (SLURM_ARRAY_TASK_ID=2" in slurm.output, slurm.output
    for name in SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    kubernetes = _predict(trained_tiny_run, collection, out, "--shard", "auto/3")
    assert kubernetes.exit_code == 0 and "shard 2/3 (JOB_COMPLETION_INDEX=2" in kubernetes.output, kubernetes.output
    monkeypatch.delenv("JOB_COMPLETION_INDEX")

    expected = _outputs(tmp_path / "whole")
    # mask, probability and overlay of each single image; the stack: one mask and one probability stack, and
    # an overlay per page
    assert len(expected) == 6 * 3 + 2 + 3
    assert _outputs(out) == expected  # byte for byte
    summaries = [_summary(out, f"{index}/3") for index in range(3)]
    predicted = [{item["input"] for item in summary["predicted"]} for summary in summaries]
    assert sum(len(keys) for keys in predicted) == 7 and set.union(*predicted) == {f"img{i}" for i in range(6)} | {
        "stack_p0000"
    }
    assert [len(keys) for keys in predicted] == [3, 2, 2]  # disjoint: seven inputs in all, none twice
    assert all(s["status"] == "complete" and not s["skipped"] and not s["failed"] for s in summaries)
    assert {s["collection"]["sha256"] for s in summaries} == {summaries[0]["collection"]["sha256"]}
    assert shard_status(out)[3] == {"shards": {0: "complete", 1: "complete", 2: "complete"}, "missing": [],
                                    "same_inputs": True, "complete": True}  # fmt: skip
    assert status_main([str(out)]) == 0

    # A rerun finds everything complete: it loads no model and rewrites nothing.
    before = _stats(out)
    import kunet.segmenter

    def no_model(*args, **kwargs):
        raise AssertionError("a rerun of a complete shard loaded the model")

    monkeypatch.setattr(kunet.segmenter.Segmenter, "__init__", no_model)
    again = _predict(trained_tiny_run, collection, out, "--shard", "1/3")
    assert again.exit_code == 0, again.output
    assert "2 already complete, skipped" in again.output and "predicted 0, skipped 2" in again.output
    assert _stats(out) == before  # no output replaced: same inode and mtime for every file in out/
    rerun = _summary(out, "1/3")
    assert rerun["predicted"] == [] and sorted(rerun["skipped"]) == sorted(predicted[1])
    monkeypatch.undo()

    # Other options, or --overwrite, make the outputs incomplete for this run: predicted again.
    threshold = _predict(trained_tiny_run, collection, out, "--shard", "1/3", "--threshold", "0.3")
    assert threshold.exit_code == 0 and "predicted 2, skipped 0" in threshold.output, threshold.output
    overwrite = _predict(trained_tiny_run, collection, out, "--shard", "1/3", "--threshold", "0.3", "--overwrite")
    assert overwrite.exit_code == 0 and "predicted 2, skipped 0" in overwrite.output, overwrite.output


def test_a_crash_mid_image_is_finished_by_a_rerun_that_predicts_exactly_the_rest(trained_tiny_run, collection,
                                                                                 tmp_path, monkeypatch):  # fmt: skip
    import kunet.predict_files

    whole = _predict(trained_tiny_run, collection, tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    out, writes = tmp_path / "out", []
    real_write_image = kunet.predict_files.write_image

    def full_disk_at_the_sixth_write(path, *args, **kwargs):
        writes.append(path)
        if len(writes) == 6:  # the third input's overlay: its mask and probability are already on disk
            raise OSError(28, "No space left on device", str(path))
        return real_write_image(path, *args, **kwargs)

    monkeypatch.setattr(kunet.predict_files, "write_image", full_disk_at_the_sixth_write)
    crashed = _predict(trained_tiny_run, collection, out, "--shard", "0/1")
    assert crashed.exit_code == 2 and "No space left on device" in crashed.output, crashed.output
    monkeypatch.undo()
    summary = _summary(out, "0/1")
    assert summary["status"] == "interrupted" and "No space left" in summary["error"]
    assert [item["input"] for item in summary["predicted"]] == ["img0", "img1"]
    assert summary["left"] == ["img2", "img3", "img4", "img5", "stack_p0000"]
    assert set(read_completions(out / "_shards")) == {"img0", "img1"}
    assert (out / "img2_mask.png").is_file() and not (out / "img2_overlay.png").exists()  # half an input
    assert not [path for path in out.iterdir() if path.name.startswith(".")]  # no temporaries left behind

    done_before = {name: stat for name, stat in _stats(out).items() if name.startswith(("img0_", "img1_"))}
    rerun = _predict(trained_tiny_run, collection, out, "--shard", "0/1")
    assert rerun.exit_code == 0, rerun.output
    summary = _summary(out, "0/1")
    assert summary["status"] == "complete" and summary["left"] == [] and summary["failed"] == []
    assert summary["skipped"] == ["img0", "img1"]
    assert [item["input"] for item in summary["predicted"]] == ["img2", "img3", "img4", "img5", "stack_p0000"]
    assert {name: stat for name, stat in _stats(out).items() if name.startswith(("img0_", "img1_"))} == done_before
    assert _outputs(out) == _outputs(tmp_path / "whole")


def test_an_unusable_input_fails_alone_and_a_running_shard_cannot_be_started_twice(trained_tiny_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a", "c"):
        assert cv2.imwrite(str(folder / f"{name}.png"), blob_image(rng, size=40)[0])
    assert cv2.imwrite(str(folder / "b.png"), np.zeros((3, 3), np.uint8))  # smaller than the depth-2 net's 4 px
    out = tmp_path / "out"
    result = _predict(trained_tiny_run, folder, out, "--shard", "0/1")
    assert result.exit_code == 2 and "1 input(s) of shard 0/1 failed" in result.output, result.output
    summary = _summary(out, "0/1")
    assert summary["status"] == "failed" and [item["input"] for item in summary["predicted"]] == ["a", "c"]
    assert [item["input"] for item in summary["failed"]] == ["b"] and "3x3 px" in summary["failed"][0]["error"]
    assert status_main([str(out)]) == 1 and shard_status(out)[1]["complete"] is False

    with exclusive_lock(out / "_shards" / "shard-0-of-1.lock"):
        second = _predict(trained_tiny_run, folder, out, "--shard", "0/1")
    assert second.exit_code == 2 and f"locked by process {os.getpid()}" in second.output, second.output
