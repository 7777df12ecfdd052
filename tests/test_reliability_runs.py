"""Issue 15 (runs): a run directory is locked while a fit works in it, never restarted or mixed by a fresh
fit, keeps a consistent history across a kill during validation, survives a damaged latest checkpoint, and
has what killed runs left cleaned up."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_reliability_data import _lock_holder, _quiet, _sigkilled_at_exit, _tree
from test_train import _weights

from kunet.runs import RunError
from kunet.train import Trainer

_FIT_STOPPED_AT = """
import json, os, signal, sys, time
from kunet import train
from kunet.config import pipeline_from_dict

config_json, base_dir, run_dir, records, target, how = sys.argv[1:7]

def stop(*args, **kwargs):
    if how == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)
    time.sleep(600)

if target == "validate":
    train.validate = stop
else:
    setattr(train.Trainer, target, stop)
config = pipeline_from_dict(json.loads(config_json), base_dir)
train.Trainer(config, run_dir, records, log=lambda *args, **kwargs: None).fit(epochs=2)
"""


def _fit_process(config, run: Path, records: Path, target: str, how: str) -> subprocess.Popen:
    """A fit of ``run`` in another process that is SIGKILLed (``die``) or hangs (``hang``) on entering
    ``target`` (``validate``, or a Trainer method)."""
    command = [sys.executable, "-c", _FIT_STOPPED_AT, json.dumps(config.to_dict()), str(config.base_dir), str(run),
               str(records), target, how]  # fmt: skip
    with open(run.parent / f".{run.name}-{how}.stderr", "w") as errors:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)


def _killed_fit(config, run: Path, records: Path, target: str) -> None:
    process = _fit_process(config, run, records, target, "die")
    assert process.wait(timeout=600) == -signal.SIGKILL, (run.parent / f".{run.name}-die.stderr").read_text()[-3000:]


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def straight_run(tiny_records, tmp_path_factory) -> Path:
    """Two epochs without interruption: what every interrupted run must end up equal to."""
    config, records = tiny_records
    run = tmp_path_factory.mktemp("straight") / "run"
    Trainer(config, run, records, log=_quiet).fit(epochs=2)
    return run


@pytest.mark.slow
def test_a_kill_during_validation_is_finished_on_resume_with_the_right_losses(tiny_records, straight_run, tmp_path):
    config, records = tiny_records
    run = tmp_path / "run"
    _killed_fit(config, run, records, "validate")  # SIGKILL inside epoch 1's validation
    assert (run / "checkpoints" / "checkpoint").is_file() and not (run / "state.json").exists()
    assert not (run / "history.csv").exists() or _history(run) == []

    # A fresh fit would start this run over (or mix two runs); it is refused and changes nothing.
    before = _tree(run)
    with pytest.raises(RunError, match=r"a run already exists here \(config.json, checkpoints.*--resume"):
        Trainer(config, run, records, log=_quiet).fit(epochs=2)
    assert _tree(run) == before

    # What killed processes leave (names of kunet._fs, of older versions, of tf.train.Checkpoint).
    leftovers = [run / ".history.csv.part-0123abcd", run / ".last.keras.part-0123abcd.keras", run / ".state.json.part",
                 run / ".best.tune.keras", run / "checkpoints" / "checkpoint.tmp5e1f"]  # fmt: skip
    for path in leftovers:
        path.write_bytes(b"half")
    (run / "checkpoints" / "ckpt-9_temp").mkdir()
    lines: list[str] = []
    Trainer(config, run, records, resume=True, log=lines.append).fit(epochs=2)
    assert not any(path.exists() for path in leftovers) and not (run / "checkpoints" / "ckpt-9_temp").exists()
    assert any("removed 6 temporary file(s) left by a killed run" in line for line in lines), lines

    resumed, straight = _history(run), _history(straight_run)
    assert [row["epoch"] for row in resumed] == ["1", "2"]
    for mine, reference in zip(resumed, straight):
        assert float(mine["loss"]) == pytest.approx(float(reference["loss"]), rel=1e-4), (mine, reference)
        assert float(mine["val_loss"]) == pytest.approx(float(reference["val_loss"]), rel=1e-3)
    assert any("finishing epoch 1: its validation and history row were cut short" in line for line in lines), lines
    for a, b in zip(_weights(straight_run / "last.keras"), _weights(run / "last.keras")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert json.loads((run / "state.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_second_fit_or_tune_of_a_run_being_trained_fails_at_once_naming_the_holder(tiny_records, tmp_path):
    from kunet.tune import tune

    config, records = tiny_records
    run = tmp_path / "run"
    first = _fit_process(config, run, records, "_run_epochs", "hang")  # holds the lock, as while training
    with _sigkilled_at_exit(first):
        assert first.stdout.readline().strip() == "ready", (tmp_path / ".run-hang.stderr").read_text()[-3000:]
        holder = f"in use by another kunet process \\(pid {first.pid}\\)"
        before = _tree(run)
        with pytest.raises(RunError, match=f"{run}: {holder}"):
            Trainer(config, run, records, log=_quiet)
        with pytest.raises(RunError, match=holder):
            Trainer(config, run, records, resume=True, log=_quiet)
        (run / "best.keras").write_bytes(b"stand-in")  # tune checks the lock before loading anything
        with pytest.raises(RunError, match=holder):
            tune(run, records, "pixel")
        (run / "best.keras").unlink()
        assert _tree(run) == before


def test_two_fresh_fits_racing_for_one_directory_leave_it_to_the_first(tiny_records, tmp_path):
    config, records = tiny_records
    run = tmp_path / "run"
    second = Trainer(config, run, records, log=_quiet)  # checked while run/ was free
    run.mkdir()
    first = _lock_holder(run / "run.lock")  # the other fit got there first
    with _sigkilled_at_exit(first):
        with pytest.raises(RunError, match=f"in use by another kunet process \\(pid {first.pid}\\)"):
            second.fit(steps=1)
        assert sorted(p.name for p in run.iterdir()) == ["run.lock"]  # the loser wrote nothing


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tiny_records, tmp_path):
    config, records = tiny_records
    run = tmp_path / "run"
    _killed_fit(config, run, records, "_run_epochs")
    assert (run / "config.json").is_file() and not (run / "checkpoints" / "checkpoint").exists()
    with pytest.raises(RunError, match="a run already exists here"):
        Trainer(config, run, records, log=_quiet)
    lines: list[str] = []
    state = Trainer(config, run, records, resume=True, log=lines.append).fit(steps=2)
    assert any("killed before its first checkpoint; starting it from step 0" in line for line in lines), lines
    assert state["step"] == 2 and state["status"] == "completed"


def _data_file(run: Path, step: int) -> Path:
    [path] = (run / "checkpoints").glob(f"ckpt-{step}.data-*")
    return path


@pytest.mark.slow
def test_resume_falls_back_to_the_previous_checkpoint_when_the_latest_is_damaged(tiny_records, tmp_path):
    config, records = tiny_records
    run = tmp_path / "run"
    Trainer(config, run, records, log=_quiet).fit(steps=6)  # checkpoints at steps 3 and 6
    latest = _data_file(run, 6)
    latest.write_bytes(latest.read_bytes()[:1000])
    lines: list[str] = []
    state = Trainer(config, run, records, resume=True, log=lines.append).fit(steps=6)
    assert any("ckpt-6 cannot be restored" in line for line in lines), lines
    assert any(f"resumed {run} at step 3 from ckpt-3, the latest intact checkpoint" in line for line in lines), lines
    assert state["step"] == 6 and [row["epoch"] for row in _history(run)] == ["1"]

    for step in (3, 6):
        path = _data_file(run, step)
        path.write_bytes(path.read_bytes()[:1000])
    before = _tree(run)
    with pytest.raises(RunError, match=f"{run}: no checkpoint can be restored, .* \\(ckpt-6: .*; ckpt-3: .*\\)"):
        Trainer(config, run, records, resume=True, log=_quiet).fit(steps=9)
    assert _tree(run) == before
