"""kunet fit: the weighted loss against NumPy, learning, exact resume, SIGKILL and SIGTERM, and tf.distribute."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import REPO_ROOT, kunet_fit_command, tiny_pipeline_dict, write_tiny_toml

from kunet.config import pipeline_from_dict
from kunet.losses import segmentation_loss
from kunet.model import UNet
from kunet.train import Trainer


def _numpy_weighted_ce(labels, logits, weights):
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]
    return float(np.sum(weights * -picked) / labels.size)


def test_weighted_loss_equals_numpy_with_class_balance_border_weights_and_ignore_regions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 5, 7))
    logits = rng.normal(0, 3, (2, 5, 7, 3)).astype(np.float32)
    class_weights = np.array([3.2, 1.0, 1.7], np.float32)  # w_c: class balance
    weights = class_weights[labels] + rng.uniform(0, 10, labels.shape).astype(np.float32) * (labels == 0)
    weights[0, :2, :3] = 0.0  # an ignore region
    got = segmentation_loss(labels, logits, weights, 3, global_pixels=labels.size).numpy()
    assert got == pytest.approx(_numpy_weighted_ce(labels, logits, weights), rel=1e-5)
    # Ignored pixels really do not matter: changing their logits leaves the loss unchanged.
    changed = logits.copy()
    changed[0, :2, :3] += 50
    assert segmentation_loss(labels, changed, weights, 3, labels.size).numpy() == pytest.approx(got, rel=1e-6)
    # Stable from logits: huge logits give a finite loss.
    huge = segmentation_loss(labels, logits * 1e4, weights, 3, labels.size).numpy()
    assert np.isfinite(huge)


def test_dice_term_matches_numpy():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (1, 6, 6))
    logits = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    weights = np.ones((1, 6, 6), np.float32)
    ce = segmentation_loss(labels, logits, weights, 2, labels.size).numpy()
    both = segmentation_loss(labels, logits, weights, 2, labels.size, "weighted_ce_dice", 0.5).numpy()
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    dice = (2 * np.sum(p[..., 1] * (labels == 1)) + 1) / (p[..., 1].sum() + (labels == 1).sum() + 1)
    assert both - ce == pytest.approx(0.5 * (1 - dice), rel=1e-5)


def test_a_tiny_unet_overfits_a_small_batch():
    rng = np.random.default_rng(3)
    from helpers import blob_image

    pairs = [blob_image(rng, 124) for _ in range(2)]
    tiles = np.stack([(image.astype(np.float32) / 255 - 0.4) / 0.2 for image, _ in pairs])[..., None]
    labels = np.stack([(label[20:104, 20:104] > 0).astype(np.int32) for _, label in pairs])
    weights = np.ones(labels.shape, np.float32)
    model = UNet(base_filters=8, depth=2, seed=0, dropout=0.0)
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = segmentation_loss(labels, model(tiles, training=True), weights, 2, labels.size)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    losses = [float(step()) for _ in range(80)]
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def _weights(path: Path):
    return keras.models.load_model(path).get_weights()


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_records, tmp_path):
    config, records = tiny_records
    quiet = lambda *args, **kwargs: None  # noqa: E731
    Trainer(config, tmp_path / "straight", records, log=quiet).fit(epochs=2)
    Trainer(config, tmp_path / "split", records, log=quiet).fit(epochs=1)
    Trainer(config, tmp_path / "split", records, resume=True, log=quiet).fit(epochs=2)
    for a, b in zip(_weights(tmp_path / "straight" / "last.keras"), _weights(tmp_path / "split" / "last.keras")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    straight = (tmp_path / "straight" / "history.csv").read_text().splitlines()
    split = (tmp_path / "split" / "history.csv").read_text().splitlines()
    assert len(straight) == len(split) == 3  # header + two epochs, no duplicated rows after resuming
    seconds = [float(line.split(",")[4]) for line in split[1:]]
    assert seconds[1] > seconds[0] > 0  # wall time accumulates over the resumed session
    for name in ("config.json", "state.json", "best.keras", "last.keras", "training.png", "tensorboard"):
        assert (tmp_path / "split" / name).exists(), name


class _StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = epoch + 1 == self.epoch


@pytest.mark.slow
def test_a_run_that_finishes_with_sgd_switches_once_and_resumes_in_the_sgd_part(tiny_records, tmp_path):
    """[train.finish]: Adam for 2 epochs, then SGD for the last 2; stopped after the first SGD epoch and resumed, the
    run ends with the uninterrupted run's weights (SGD's momentum is checkpointed), unlike one trained by Adam only."""
    import copy

    from kunet.config import FinishConfig

    config, records = tiny_records
    config = copy.deepcopy(config)
    config.train.epochs = 4
    config.train.finish = FinishConfig(epochs=2, learning_rate=0.01, momentum=0.9, warmup_steps=2)
    lines = []
    Trainer(config, tmp_path / "straight", records, log=lines.append).fit()
    assert any("Adam until step 12, then SGD (momentum 0.9, learning rate 0.01, cosine)" in line for line in lines)
    quiet = lambda *args, **kwargs: None  # noqa: E731
    state = Trainer(config, tmp_path / "split", records, log=quiet, callbacks=[_StopAfterEpoch(3)]).fit()
    assert state["status"] == "stopped by callback" and state["step"] == 18
    Trainer(config, tmp_path / "split", records, resume=True, log=quiet).fit()
    straight = _weights(tmp_path / "straight" / "last.keras")
    for a, b in zip(straight, _weights(tmp_path / "split" / "last.keras")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    adam_only = copy.deepcopy(config)
    adam_only.train.finish.epochs = 0
    Trainer(adam_only, tmp_path / "adam", records, log=quiet).fit()
    assert any(not np.allclose(a, b, atol=1e-4) for a, b in zip(straight, _weights(tmp_path / "adam" / "last.keras")))
    rates = [float(line.split(",")[3]) for line in (tmp_path / "straight" / "history.csv").read_text().splitlines()[1:]]
    header = (tmp_path / "straight" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[3] == "learning_rate", header
    # At the end of epoch 2 the SGD part is at its step 0 (warm-up from 0); after epoch 3, 6 steps into it.
    assert rates[1] == 0.0 and rates[2] > 0.0


def test_fit_refuses_to_train_where_onednn_keeps_the_first_filters_it_sees(tiny_records, tmp_path, monkeypatch):
    from kunet.runs import RunError

    config, records = tiny_records
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")
    with pytest.raises(RunError, match="TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 is set: oneDNN would keep computing"):
        Trainer(config, tmp_path / "run", records)
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_not_overwritten(tiny_records, tmp_path):
    from kunet.runs import RunError

    config, records = tiny_records
    quiet = lambda *args, **kwargs: None  # noqa: E731
    Trainer(config, tmp_path / "run", records, log=quiet).fit(steps=2)
    with pytest.raises(RunError, match="already exists"):
        Trainer(config, tmp_path / "run", records, log=quiet)


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_a_trained_models_weights(tiny_records, tmp_path):
    import copy

    from kunet.runs import RunError

    config, records = tiny_records
    quiet = lambda *args, **kwargs: None  # noqa: E731
    Trainer(config, tmp_path / "donor", records, log=quiet).fit(steps=3)
    donor = _weights(tmp_path / "donor" / "last.keras")

    # With a zero learning rate the step changes nothing, so the run ends with exactly its initial weights.
    frozen = copy.deepcopy(config)
    frozen.train.learning_rate = 0.0
    frozen.train.init_from = str(tmp_path / "donor" / "last.keras")
    Trainer(frozen, tmp_path / "tuned", records, log=quiet).fit(steps=1)
    for a, b in zip(donor, _weights(tmp_path / "tuned" / "last.keras")):
        np.testing.assert_array_equal(a, b)
    fresh = copy.deepcopy(frozen)
    fresh.train.init_from = ""
    Trainer(fresh, tmp_path / "fresh", records, log=quiet).fit(steps=1)
    assert any(not np.array_equal(a, b) for a, b in zip(donor, _weights(tmp_path / "fresh" / "last.keras")))

    wider = copy.deepcopy(frozen)
    wider.model.base_filters *= 2
    with pytest.raises(RunError, match="donor/last.keras: its weights do not fit"):
        Trainer(wider, tmp_path / "wider", records, log=quiet).fit(steps=1)
    assert not (tmp_path / "wider").exists()  # nothing half made
    missing = copy.deepcopy(frozen)
    missing.train.init_from = str(tmp_path / "nowhere.keras")
    with pytest.raises(RunError, match="nowhere.keras: train.init_from names no .keras file"):
        Trainer(missing, tmp_path / "missing", records, log=quiet).fit(steps=1)
    assert not (tmp_path / "missing").exists()


def _wait_for_checkpoint(run: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        index = run / "checkpoints" / "checkpoint"
        if index.exists() and f"ckpt-{step}" in index.read_text():
            return
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"no checkpoint at step {step} in time: " + process.communicate()[1][-2000:])


def _checkpointed_step(run: Path) -> int:
    saved = tf.train.load_checkpoint(tf.train.latest_checkpoint(run / "checkpoints"))
    return int(saved.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.mark.slow
def test_sigkill_then_sigterm_mid_epoch_lose_no_checkpointed_step_and_resume_completes(tiny_records, tmp_path):
    """One run's life: SIGKILLed (loses at most the steps since its last checkpoint), resumed and SIGTERMed
    (finishes the step, checkpoints it, exits 143, which schedulers retry), resumed again to the end."""
    _, records = tiny_records
    toml = write_tiny_toml(tmp_path / "tiny.toml", records, steps_per_epoch=40, epochs=1, checkpoint_every_steps=4)
    run = tmp_path / "run"
    resume = [sys.executable, "-m", "kunet_cli.main", "fit", "--resume", str(run)]

    def start(command):
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    killed = start(kunet_fit_command(toml, run, records))
    _wait_for_checkpoint(run, 8, killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    saved_step = _checkpointed_step(run)
    assert saved_step >= 8 and saved_step % 4 == 0

    terminated = start(resume)
    _wait_for_checkpoint(run, saved_step + 4, terminated)
    terminated.send_signal(signal.SIGTERM)
    out, err = terminated.communicate(timeout=120)
    assert terminated.returncode == 143, err[-3000:]  # 128 + SIGTERM
    assert f"resumed {run} at step {saved_step}" in out
    stopped = json.loads((run / "state.json").read_text())["step"]
    assert saved_step + 4 <= stopped < 40
    assert f"stopping at step {stopped} (SIGTERM received)" in out
    assert _checkpointed_step(run) == stopped  # the step it stopped at, not the last periodic checkpoint
    assert (run / "history.csv").read_text().count("\n") == 1  # a header, no row: nothing run in a grace period

    completed = subprocess.run(resume, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"resumed {run} at step {stopped}" in completed.stdout
    assert json.loads((run / "state.json").read_text())["step"] == 40


_WORKER_SCRIPT = """
import json, os, sys
import numpy as np
import tensorflow as tf
from kunet.config import pipeline_from_dict
from kunet.builders import make_strategy
from kunet.train import Trainer
strategy = make_strategy(sys.argv[1])
config = pipeline_from_dict(json.loads(sys.argv[2]), sys.argv[3])
trainer = Trainer(config, sys.argv[4], sys.argv[5], strategy=strategy)
state = trainer.fit(steps=4)
np.savez(sys.argv[6], *[w for w in trainer.model.get_weights()])
print("replicas", strategy.num_replicas_in_sync, "step", state["step"])
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus_trains(tiny_records, tmp_path):
    config, records = tiny_records
    script = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        + _WORKER_SCRIPT.replace("make_strategy(sys.argv[1])", "tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])")
    )
    data = json.dumps(config.to_dict())
    result = subprocess.run(
        [sys.executable, "-c", script, "mirrored", data, config.base_dir, str(tmp_path / "run"), str(records),
         str(tmp_path / "w.npz")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 step 4" in result.stdout
    history = (tmp_path / "run" / "history.csv").read_text()
    assert history.count("\n") >= 2


_SKIP_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kunet.config import pipeline_from_dict
from kunet.pipeline import training_dataset
from kunet.progress import no_progress
from kunet.train import Trainer
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
config = pipeline_from_dict(json.loads(sys.argv[1]), sys.argv[2])
tiles, classes, weights = next(iter(training_dataset(config, sys.argv[4], config.train.batch_size)))
poisoned = tf.tensor_scatter_nd_update(tiles, [[0, 9, 9, 0]], [float("nan")])
trainer = Trainer(config, sys.argv[3], sys.argv[4], strategy=strategy, log=print)
session = trainer._new_session(10)
train_step = trainer._train_step_function(session, "host")
batches = iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(tf.concat([poisoned, tiles], 0)).map(lambda t: (t, classes[0], weights[0]))
    .batch(2)))
callbacks = trainer._callback_list(session, 10)
replicas = lambda v: [np.array(copy) for copy in strategy.experimental_local_results(v)]
first, last = session.model.get_layer("down0_conv1").kernel, session.model.trainable_variables[-2]
before, before_last = replicas(first), replicas(last)
trainer._step(train_step, batches, 0, 0, False, False, no_progress("step", 10), callbacks)
kept = all(np.array_equal(copy, before[0]) for copy in replicas(first))
trained = all(not np.array_equal(copy, before_last[0]) for copy in replicas(last))
alike = all(all(np.array_equal(copies[0], c) for c in copies) for copies in map(replicas, session.model.weights))
finite = all(np.all(np.isfinite(c)) for v in session.model.weights for c in replicas(v))
print("kept", kept, "trained", trained, "alike", alike, "finite", finite, "skipped", trainer.skipped_steps)
"""


@pytest.mark.slow
def test_a_variable_poisoned_on_one_replica_is_left_alone_on_both(tiny_records, tmp_path):
    """Under MirroredStrategy each variable's update sees the all-reduced gradient: one replica's NaN gradient for
    the first kernel must leave that kernel as it was on both replicas, while a variable with finite gradients
    trains on both, and the replicas stay identical and finite."""
    config, records = tiny_records
    result = subprocess.run(
        [sys.executable, "-c", _SKIP_SCRIPT, json.dumps(config.to_dict()), config.base_dir, str(tmp_path / "run"),
         str(records)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kept True trained True alike True finite True skipped 1" in result.stdout, result.stdout[-2000:]


def test_config_round_trips_through_the_run_directory(tiny_records, tmp_path):
    from kunet.runs import load_run_config

    config, records = tiny_records
    Trainer(config, tmp_path / "run", records, log=lambda *a, **k: None).fit(steps=1)
    loaded, loaded_records = load_run_config(tmp_path / "run")
    assert loaded.to_dict() == config.to_dict() and loaded_records == records.resolve()
    assert pipeline_from_dict(loaded.to_dict()).model.base_filters == 8


def test_the_trainers_step_computes_the_loss_model_fit_computes(tiny_records, tmp_path):
    """The step fit() runs (with its all-reduce and counters) gives Keras's sparse cross-entropy with the weight
    map as sample_weight, on the same weights and batch."""
    import copy

    from kunet.builders import build_model
    from kunet.pipeline import training_dataset

    config, records = tiny_records
    config = copy.deepcopy(config)
    config.model.dropout = 0.0  # no random masks: both sides see the same net
    tiles, classes, weights = next(iter(training_dataset(config, records, config.train.batch_size)))
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    expected = float(keras_loss(classes, build_model(config, "float32")(tiles, training=True), sample_weight=weights))
    trainer = Trainer(config, tmp_path / "run", records, log=lambda *a, **k: None)
    step = trainer.step_for_benchmark((tiles, classes, weights))
    assert step() == pytest.approx(expected, rel=1e-5)
    assert step() < expected  # the first step's update applied


def test_the_epochs_loss_is_the_mean_of_the_losses_its_steps_reported(tiny_records, tmp_path):
    """The epoch's loss sums are counted inside the compiled step; they must add up what the host saw."""
    config, records = tiny_records

    seen = []
    losses = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(logs["loss"]))
    state = Trainer(config, tmp_path / "run", records, log=lambda *a, **k: None, callbacks=[losses]).fit(steps=4)
    (row,) = csv.DictReader((tmp_path / "run" / "history.csv").open())
    assert state["step"] == 4 and len(seen) == 4
    assert float(row["loss"]) == pytest.approx(sum(seen) / 4, rel=1e-12)


def test_variables_with_non_finite_gradients_are_left_alone_and_a_diverged_run_stops(tiny_records, tmp_path):
    """A NaN pixel makes the first kernel's gradient NaN (ReLU maps NaN to 0 in the forward pass, so the loss and
    the other gradients stay finite): that kernel and its optimizer slots stay as they were, the other variables
    train, the log names the kernel, the next step trains everything; 25 such steps in a row stop the run with
    an error instead of training a NaN net."""
    from kunet.pipeline import training_dataset
    from kunet.progress import no_progress
    from kunet.runs import RunError
    from kunet.train import MAX_SKIPPED_STEPS_IN_A_ROW

    config, records = tiny_records
    tiles, classes, weights = next(iter(training_dataset(config, records, config.train.batch_size)))
    poisoned = tf.tensor_scatter_nd_update(tiles, [[0, 9, 9, 0]], [float("nan")])
    lines: list[str] = []
    trainer = Trainer(config, tmp_path / "run", records, log=lines.append)
    session = trainer._new_session(100)
    train_step = trainer._train_step_function(session, "host")
    order = [poisoned, tiles] + [poisoned] * MAX_SKIPPED_STEPS_IN_A_ROW
    batches = iter(tf.data.Dataset.from_tensor_slices(tf.stack(order)).map(lambda t: (t, classes, weights)))
    callbacks = trainer._callback_list(session, 100)
    advance = no_progress("step", 100)

    def step(current: int) -> float:
        return trainer._step(train_step, batches, current, current, False, False, advance, callbacks)[0]

    def snapshot():
        return {v.path: np.array(v) for v in session.model.weights + session.optimizer.variables}

    before = snapshot()
    poisoned_loss = step(0)
    after = snapshot()
    # the optimizer's variables by name without its own (fused_adam, fused_adam_1, ... in one process)
    untouched = [path for path in before if np.array_equal(before[path], after[path])]
    untouched = {path.split("/")[-1] if path.startswith("fused_adam") else path for path in untouched}
    # the layer that sees the NaN pixel, its Adam slots, and the optimizer's constant learning rate
    assert untouched == {
        "down0_conv1/kernel", "down0_conv1_kernel_momentum", "down0_conv1_kernel_velocity", "learning_rate"
    }  # fmt: skip
    assert not np.array_equal(before["down0_conv1/bias"], after["down0_conv1/bias"])
    assert "step 1: loss" in lines[-1] and "not finite: down0_conv1/kernel);" in lines[-1]
    assert "not updated" in lines[-1]
    clean_loss = step(1)
    assert np.isfinite(poisoned_loss) and np.isfinite(clean_loss)
    assert all(np.all(np.isfinite(v)) for v in snapshot().values())
    assert not np.array_equal(after["down0_conv1/kernel"], snapshot()["down0_conv1/kernel"])  # trains again
    assert float(session.loss_sum.numpy()) / int(session.loss_count.numpy()) == pytest.approx(
        (poisoned_loss + clean_loss) / 2
    )
    assert int(session.step.numpy()) == 2 and trainer.skipped_steps == 1  # the poisoned batch was consumed
    with pytest.raises(RunError, match=f"not finite in {MAX_SKIPPED_STEPS_IN_A_ROW} steps in a row"):
        for current in range(2, 2 + MAX_SKIPPED_STEPS_IN_A_ROW):
            step(current)
    assert all(np.all(np.isfinite(v)) for v in session.model.weights)


def test_the_pipelines_decision_rule_travels_with_the_model():
    from kunet.builders import build_model

    config = pipeline_from_dict(tiny_pipeline_dict())
    config.inference.threshold = 0.3
    config.inference.postprocess = "watershed"
    config.inference.seed_threshold = 0.8
    config.inference.test_time_mirroring = True
    metadata = build_model(config, "float32").metadata
    assert (metadata["threshold"], metadata["postprocess"]) == (0.3, "watershed")
    assert metadata["seed_threshold"] == 0.8 and metadata["test_time_mirroring"] is True


def test_a_fit_with_percentile_normalisation_trains_and_keeps_the_percentiles(tiny_records, tmp_path):
    from kunet.config import load_pipeline
    from kunet.segmenter import load_unet

    _, records = tiny_records
    overrides = ["image.normalize=percentile", "image.percentile_low=2"]  # as `kunet fit --set` passes them
    config = load_pipeline(write_tiny_toml(tmp_path / "tiny.toml", records), overrides=overrides)
    Trainer(config, tmp_path / "run", records, log=lambda *a, **k: None).fit(steps=3)
    metadata = load_unet(tmp_path / "run" / "last.keras").metadata
    assert (metadata["normalize"], metadata["percentile_low"], metadata["percentile_high"]) == ("percentile", 2, 99.8)


@pytest.mark.slow
def test_cli_fit_predict_and_evaluate(tiny_records, tmp_path):
    _, records = tiny_records
    toml = write_tiny_toml(tmp_path / "tiny.toml", records)
    run = tmp_path / "run"
    fitted = subprocess.run(kunet_fit_command(toml, run, records, "--steps", "6"), capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    # predict and evaluate in this process (the command line is the same; a fresh process is tested by fit).
    from kunet_cli.main import app
    from typer.testing import CliRunner

    images = Path(records).parent / "images"
    predicted = CliRunner().invoke(app, ["predict", str(run), str(images), "--out", str(tmp_path / "pred"),
                                         "--probabilities", "npy"])  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    masks = sorted((tmp_path / "pred").glob("*_mask.png"))
    assert len(masks) == 8
    probabilities = np.load(tmp_path / "pred" / "b0_probabilities.npy")
    assert probabilities.shape == (96, 96, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    evaluated = CliRunner().invoke(app, ["evaluate", str(run), str(toml), "--records", str(records), "--out",
                                         str(tmp_path / "eval")])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert set(report["frames"]) == {"b2", "b6"} or len(report["frames"]) == 2
    assert 0 <= report["mean"]["pixel_error"] <= 1


del REPO_ROOT
