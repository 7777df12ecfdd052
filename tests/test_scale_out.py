"""Scale-out as a cluster lives it: two localhost workers killed and resumed, SIGTERM, one signalled worker.

The workers are real ``MultiWorkerMirroredStrategy`` processes (``TF_CONFIG`` on localhost ports, one shared
run directory on this disk), as Kubeflow's TFJob, Vertex AI and Slurm launchers start them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import free_port

from kunet.model import UNet  # noqa: F401  (registers the class that load_model finds)
from kunet.stopping import StopRequests, stop_exit_code

# A worker: trains the pipeline's 2 epochs x 4 steps (validation after each, on the chief) and saves its
# weights. With KILL_AT set, it SIGKILLs itself right after its checkpoint at that step is written, so both
# workers die mid-epoch 2 at the same point however the two processes are scheduled.
_WORKER = """
import json, os, signal, sys
import numpy as np
import tensorflow as tf
from kunet.builders import make_strategy
from kunet.config import pipeline_from_dict
from kunet.train import Trainer
kill_at = int(os.environ.get("KILL_AT", "0"))
if kill_at:
    save = tf.train.CheckpointManager.save
    def save_then_die(self, checkpoint_number=None, **kwargs):
        path = save(self, checkpoint_number=checkpoint_number, **kwargs)
        if checkpoint_number == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    tf.train.CheckpointManager.save = save_then_die
import keras
class StopAfterFirstEpoch(keras.callbacks.Callback):  # as EarlyStopping does, on the chief only
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = "val_loss" in logs
callbacks = [StopAfterFirstEpoch()] if os.environ.get("STOP_BY_CALLBACK") else []
config = pipeline_from_dict(json.loads(sys.argv[1]), sys.argv[2])
trainer = Trainer(config, sys.argv[3], sys.argv[4], strategy=make_strategy("multiworker"), callbacks=callbacks)
state = trainer.fit()
np.savez(sys.argv[5], *trainer.model.get_weights())
print("replicas", trainer.strategy.num_replicas_in_sync, "step", state["step"], "status", state["status"])
"""


def _tf_config(ports: list[int], index: int) -> str:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def _start_workers(commands: list[list[str]], **env) -> list[subprocess.Popen]:
    ports = [free_port() for _ in commands]
    return [
        subprocess.Popen(
            command,
            env=dict(os.environ, TF_CONFIG=_tf_config(ports, index), **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for index, command in enumerate(commands)
    ]


def _finish(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        results.append((process.returncode, out, err))
    return results


def _two_epoch_config(tiny_records) -> tuple[str, str, Path]:
    config, records = tiny_records
    data = config.to_dict()
    data["train"] |= {"batch_size": 1, "epochs": 2, "steps_per_epoch": 4, "checkpoint_every_steps": 2}
    return json.dumps(data), config.base_dir, records


def _worker_commands(data: str, base_dir: str, run: Path, records: Path, out: Path) -> list[list[str]]:
    return [[sys.executable, "-c", _WORKER, data, base_dir, str(run), str(records), str(out / f"w{i}.npz")]
            for i in range(2)]  # fmt: skip


@pytest.mark.slow
def test_two_workers_killed_mid_epoch_two_resume_to_the_uninterrupted_runs_weights(tiny_records, tmp_path):
    data, base_dir, records = _two_epoch_config(tiny_records)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for folder in (whole, broken):
        folder.mkdir()

    uninterrupted = _finish(_start_workers(_worker_commands(data, base_dir, whole / "run", records, whole)))
    for code, out, err in uninterrupted:
        assert code == 0, err[-3000:]
        assert "replicas 2 step 8" in out
    first, second = np.load(whole / "w0.npz"), np.load(whole / "w1.npz")
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])  # the workers agree

    killed = _finish(_start_workers(_worker_commands(data, base_dir, broken / "run", records, broken), KILL_AT="6"))
    assert [code for code, _, _ in killed] == [-signal.SIGKILL] * 2, [err[-2000:] for _, _, err in killed]
    history = (broken / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "val_" in history[0]  # epoch 1's row, validated on the chief, then the kill

    # Both restarted with the CLI: each reads the run's config.json and the chief's checkpoints.
    resume = [sys.executable, "-m", "kunet_cli.main", "fit", "--resume", str(broken / "run"), "--strategy",
              "multiworker"]  # fmt: skip
    resumed = _finish(_start_workers([resume, resume]))
    for code, out, err in resumed:
        assert code == 0, err[-3000:]
        assert "(completed, step 8/8)" in out
    assert f"resumed {broken / 'run'} at step 6" in resumed[0][1]
    rows = [line.split(",") for line in (broken / "run" / "history.csv").read_text().splitlines()]
    assert [row[0] for row in rows] == ["epoch", "1", "2"]
    after_resume = keras.saving.load_model(broken / "run" / "last.keras", compile=False).get_weights()
    # Bit-identical: the stream replays from step 6 and a two-value all-reduce sum does not depend on order.
    for key, weights in zip(first.files, after_resume):
        np.testing.assert_array_equal(first[key], weights)


@pytest.mark.slow
def test_a_callback_on_the_chief_stops_every_worker_at_the_same_epoch_end(tiny_records, tmp_path):
    # Callbacks run on the chief, where validation scores exist; its stop request reaches the other worker
    # through an all-reduce at the epoch's end, so neither waits for the other at the next step's all-reduce.
    data, base_dir, records = _two_epoch_config(tiny_records)
    commands = _worker_commands(data, base_dir, tmp_path / "run", records, tmp_path)
    results = _finish(_start_workers(commands, STOP_BY_CALLBACK="1"))
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "replicas 2 step 4 status stopped by callback" in out
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(rows) == 2  # the header and epoch 1


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_after_the_same_step_with_a_checkpoint(tiny_records, tmp_path):
    config, records = tiny_records
    data = config.to_dict()
    data["train"] |= {"batch_size": 1, "epochs": 1, "steps_per_epoch": 400, "checkpoint_every_steps": 5}
    run = tmp_path / "run"
    commands = _worker_commands(json.dumps(data), config.base_dir, run, records, tmp_path)
    processes = _start_workers(commands)
    _wait_for_checkpoint(run, 5, processes)
    processes[1].send_signal(signal.SIGTERM)  # the non-chief only, as when one preemptible VM goes
    results = _finish(processes)
    steps = set()
    for code, out, err in results:
        assert code == 0, err[-3000:]  # Trainer.fit returns; the CLI turns "stopped" into its exit code
        steps.add(int(out.split("step ")[-1].split()[0]))
    (stopped,) = steps  # the same step on both workers
    assert 5 <= stopped < 400
    assert json.loads((run / "state.json").read_text())["status"] == "stopped"
    assert tf.train.latest_checkpoint(run / "checkpoints").endswith(f"ckpt-{stopped}")


def _wait_for_checkpoint(run: Path, step: int, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 300
    index = run / "checkpoints" / "checkpoint"
    while time.monotonic() < deadline:
        if index.exists() and f"ckpt-{step}" in index.read_text():
            return
        if any(process.poll() is not None for process in processes):
            break
        time.sleep(0.2)
    for process in processes:
        process.kill()
    pytest.fail(f"no checkpoint at step {step}: " + processes[0].communicate()[1][-2000:])


def test_the_first_ctrl_c_is_recorded_and_the_second_interrupts():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a pytest-xdist worker
    with StopRequests() as stops:
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_sigterm_is_recorded_and_the_handler_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequests() as stops:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_signals_keep_their_default_effect():
    seen = {}

    def body():
        with StopRequests() as stops:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["requested"] = stops.requested

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"handler": signal.getsignal(signal.SIGTERM), "requested": None}


def test_stop_exit_codes_are_the_ones_schedulers_retry():
    # Kubeflow's training operator (restartPolicy ExitCode) retries 130, 137, 138 and 143 only.
    assert (stop_exit_code("SIGTERM"), stop_exit_code("SIGINT"), stop_exit_code(None)) == (143, 130, 143)
