"""kunet as a library and in a log file (issue 22): the public API, Keras callbacks, log-friendly progress."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest
from helpers import kunet_fit_command, write_blob_folders, write_tiny_toml
from kunet_cli.main import app
from typer.testing import CliRunner

import kunet
from kunet.progress import LineProgress, reporting, resolve_mode
from kunet.train import Trainer

PROGRESS_LINE = re.compile(r"epoch \d+/\d+: step (\d+)/(\d+)")


def test_import_kunet_is_cheap_and_names_the_public_api():
    script = "import sys, kunet; print(sorted(kunet.__all__)); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    names, tensorflow_imported = out.splitlines()
    assert tensorflow_imported == "False"
    expected = {"UNet", "build_records", "Trainer", "fit", "fit_arrays", "Segmenter", "evaluate", "export"}
    assert expected <= set(eval(names))  # noqa: S307 - our own printed list
    import kunet.evaluation
    import kunet.serving.export  # importing the modules must not shadow the functions of the same name

    for name in kunet.__all__:
        value = getattr(kunet, name)
        assert callable(value) and len(value.__doc__ or "") > 40, name
    assert kunet.evaluate is kunet.evaluation.evaluate and kunet.export is kunet.serving.export.export
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kunet.nope  # noqa: B018


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))


def test_callbacks_get_every_epoch_and_early_stopping_ends_the_run(tiny_records, tmp_path):
    config, records = tiny_records
    recorder = Recorder()
    # min_delta larger than any change: epoch 2 is no improvement, so patience 1 stops after it (of 4).
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=100.0, patience=1)
    lines = []
    trainer = Trainer(config, tmp_path / "run", records, log=lines.append, callbacks=[recorder, stopper],
                      progress="lines", log_every=3)  # fmt: skip
    state = trainer.fit(epochs=4)
    steps = config.train.steps_per_epoch
    assert state["status"] == "stopped by callback" and state["step"] == 2 * steps
    assert stopper.stopped_epoch == 1
    epoch_ends = [call for call in recorder.calls if call[0] == "epoch_end"]
    assert [call[1] for call in epoch_ends] == [0, 1]
    for _, _, logs in epoch_ends:
        assert {"loss", "learning_rate", "val_loss", "val_pixel_error"} <= set(logs)
        assert all(isinstance(value, float) and math.isfinite(value) for value in logs.values())
    batch_ends = [call for call in recorder.calls if call[0] == "batch_end"]
    assert [call[1] for call in batch_ends] == list(range(steps)) * 2
    assert all(math.isfinite(call[2]["loss"]) for call in batch_ends)
    assert recorder.calls[0] == ("train_begin",) and recorder.calls[-1] == ("train_end",)
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + the two epochs trained
    # Everything the run wrote went to ``log``: progress lines every 3 steps and the epoch summaries.
    progress = [line for line in lines if PROGRESS_LINE.search(line)]
    assert [PROGRESS_LINE.search(line).group(1) for line in progress] == ["3", "6", "3", "6"]
    assert any(line.startswith("epoch 2: loss") for line in lines)
    assert any("a callback stopped training" in line for line in lines)


def test_fit_redirected_to_a_file_writes_plain_lines_only(tiny_records, tmp_path):
    _, records = tiny_records
    toml = write_tiny_toml(tmp_path / "tiny.toml", records)
    log_file = tmp_path / "fit.log"
    with open(log_file, "w") as stream:  # as nohup or Slurm would: stdout and stderr to one file
        command = kunet_fit_command(toml, tmp_path / "run", records, "--steps", "6", "--log-every", "2")
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, timeout=600)
    text = log_file.read_text()
    assert result.returncode == 0, text
    for control in ("\x1b", "\b", "\r"):
        assert control not in text, f"{control!r} in a log file"
    progress = [line for line in text.splitlines() if PROGRESS_LINE.search(line)]
    assert len(progress) == 3 and PROGRESS_LINE.search(progress[-1]).groups() == ("6", "6")  # one line per 2 steps
    assert "epoch 1: loss" in text and "run: " in text


def test_quiet_writes_no_progress(tmp_path):
    # --quiet is the same switch on every command (progress mode "none"); build-records needs no training.
    write_blob_folders(tmp_path, count=4)
    common = ["build-records", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
              "--log-every", "1"]  # fmt: skip
    loud = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "loud")])
    quiet = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "quiet"), "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0, loud.output + quiet.output
    assert "checking labels 4/4" in loud.output and "writing records 4/4" in loud.output
    assert [line.split(" frames")[0] for line in quiet.output.splitlines()] == ["wrote 3 train + 1 val"]


def test_line_progress_writes_at_most_one_line_per_interval_and_the_last():
    lines = []
    advance = LineProgress("scoring", 10, lines.append, every=4)
    for _ in range(10):
        advance(loss=0.5)
    assert [line.split(" (")[0] for line in lines] == ["scoring 4/10", "scoring 8/10", "scoring 10/10"]
    assert lines[0].endswith(", loss 0.5")
    resumed_lines = []
    resumed = LineProgress("epoch 2/2: step", 6, resumed_lines.append, every=2, completed=3)
    for _ in range(3):
        resumed()
    assert [line.split(" (")[0] for line in resumed_lines] == ["epoch 2/2: step 4/6", "epoch 2/2: step 6/6"]


def test_progress_mode_follows_the_output():
    class Terminal:
        def isatty(self):
            return True

    assert resolve_mode("auto", Terminal()) == "bar"
    assert resolve_mode("auto", open(__file__)) == "lines"
    assert resolve_mode("none") == "none"
    with pytest.raises(ValueError, match="unknown progress mode"):
        resolve_mode("loud")
    with reporting("none") as factory:
        factory("anything", 3)()  # reports nothing, and does not fail


def test_tune_reports_its_progress(trained_tiny_run, tiny_records):
    from kunet.tune import tune

    _, records = tiny_records
    lines = []
    with reporting("lines", log=lines.append, every=1) as factory:
        tune(trained_tiny_run / "best.keras", records, "pixel", store=False, progress_factory=factory)
    assert any(line.startswith("predicting 2/2") for line in lines)
    rules = [line for line in lines if line.startswith("scoring decision rules")]
    total = int(re.search(r"/(\d+)", rules[-1]).group(1))
    assert len(rules) == total > 10 and rules[-1].startswith(f"scoring decision rules {total}/{total}")


def test_predict_counts_the_pages_of_a_stack(trained_tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    pages = [rng.integers(0, 255, (96, 96), dtype=np.uint8) for _ in range(3)]
    assert cv2.imwritemulti(str(tmp_path / "stack.tif"), pages)
    cv2.imwrite(str(tmp_path / "single.png"), pages[0])
    result = CliRunner().invoke(app, ["predict", str(trained_tiny_run), str(tmp_path / "stack.tif"),
                                      str(tmp_path / "single.png"), "--out", str(tmp_path / "out"),
                                      "--log-every", "1", "--no-overlays"])  # fmt: skip
    assert result.exit_code == 0, result.output
    progress = [line for line in result.output.splitlines() if line.startswith("predicting")]
    assert [line.split(" (")[0] for line in progress] == [f"predicting pages of 2 file(s) {i}/4" for i in range(1, 5)]
    assert "wrote outputs for 4 image(s)" in result.output


def test_model_fit_with_the_weight_map_as_sample_weight_is_the_paper_loss(tiny_records):
    """The documented escape hatch: Keras's weighted sparse cross-entropy equals kunet's training loss."""
    import tensorflow as tf

    from kunet.losses import segmentation_loss
    from kunet.pipeline import training_dataset

    config, records = tiny_records
    tiles, classes, weights = next(iter(training_dataset(config, records, batch_size=2)))
    model = kunet.UNet(input_channels=1, num_classes=2, base_filters=4, depth=2, seed=0)
    logits = model(tiles)
    ours = segmentation_loss(classes, logits, weights, 2, global_pixels=tf.size(classes, tf.float32))
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(classes, logits, sample_weight=weights)
    assert float(ours) == pytest.approx(float(keras_loss), rel=1e-5)
    assert float(tf.reduce_max(weights)) > 1.5  # the border weights are in play, not a uniform map
