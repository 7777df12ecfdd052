"""A whole job on remote storage through the CLI: records, run directory and export at ``ram://`` URIs.

``ram://`` is TensorFlow's in-memory file system: the same ``tf.io.gfile`` code paths as ``gs://``, inside one
process, so the CLI is driven in-process (``CliRunner``). A real bucket is not reachable from the tests.
"""

from __future__ import annotations

import json
import uuid

import cv2
import numpy as np
import tensorflow as tf
from helpers import write_blob_folders, write_tiny_toml
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet import uris
from kunet.runs import RunPaths, load_run_config, read_history, read_state

runner = CliRunner()


def _invoke(*arguments: str):
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 0, (arguments, result.output, result.exception)
    return result


def test_records_run_and_export_on_ram_through_the_cli_with_a_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_blob_folders(tmp_path)
    bucket = f"ram://bucket-{uuid.uuid4().hex[:8]}"
    records, run, models = f"{bucket}/records/tiny", f"{bucket}/runs/tiny", f"{bucket}/saved_models"
    _invoke("build-records", "--images", "images", "--labels", "labels", "--out", records, "--shards", "2",
            "--val-fraction", "0.25")  # fmt: skip
    toml = write_tiny_toml(tmp_path / "tiny.toml", records, steps_per_epoch=3, epochs=2, checkpoint_every_steps=2)

    # --auto-resume, the command a restarted job repeats: it starts the run, then resumes it.
    first = _invoke("fit", str(toml), "--run-dir", run, "--records", records, "--steps", "3", "--auto-resume")
    assert f"run: {run} (completed, step 3/3)" in first.output
    assert load_run_config(run)[1] == records  # the records URI is kept a string, not folded into a Path
    resumed = _invoke("fit", str(toml), "--run-dir", run, "--records", records, "--steps", "6", "--auto-resume")
    assert f"resumed {run} at step 3" in resumed.output and "(completed, step 6/6)" in resumed.output

    paths = RunPaths(run)
    assert read_state(paths)["step"] == 6
    assert [row["epoch"] for row in read_history(paths)] == ["1", "2"]
    for name in ("config.json", "state.json", "last.keras", "best.keras", "history.csv", "training.png"):
        assert uris.isfile(uris.join(run, name)), name
    assert tf.train.latest_checkpoint(str(paths.checkpoints)).endswith("ckpt-6")
    assert not list(tmp_path.glob("ram*"))  # nothing landed in a local folder named after the scheme

    _invoke("export", run, "--name", "tiny", "--base-dir", models)
    version = f"{models}/tiny/1"
    info = json.loads(uris.read_text(f"{version}/assets.extra/kunet.json"))
    assert info["training"]["run_steps"] == 6 and info["training"]["run"] == "tiny"
    _invoke("predict", version, "images/b0.png", "--out", "from-remote", "--no-overlays")
    _invoke("predict", run, "images/b0.png", "--out", "from-run", "--no-overlays")
    served = cv2.imread("from-remote/b0_mask.png", cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(served, cv2.imread("from-run/b0_mask.png", cv2.IMREAD_UNCHANGED))
    _invoke("predict", version, "images/b0.png", "--out", "sharded", "--no-overlays", "--shard", "0/1")
    np.testing.assert_array_equal(served, cv2.imread("sharded/b0_mask.png", cv2.IMREAD_UNCHANGED))
