"""Issue 15 (data side): nothing kunet did not make is deleted, damaged records are named, runs are locked,
and what killed processes leave behind is cleaned up without touching the work of running ones."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_records import _config, _two_blobs, _write_pair

from kunet import records
from kunet._fs import (
    LockHeldError,
    UnsafeOverwriteError,
    building_directory,
    check_unlocked,
    exclusive_lock,
    sweep_temporaries,
    temporary_sibling,
)
from kunet.records import RecordsError, build_records, iterate_frames, read_manifest
from kunet.synthetic import write_em_dataset
from kunet.train import Trainer

_HOLD_LOCK = """
import sys, time
from kunet._fs import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def _sigkilled_at_exit(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Kills ``process`` with SIGKILL when the ``with`` block ends, however it ends."""
    try:
        yield process
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _lock_holder(path) -> subprocess.Popen:
    """A process that holds ``path``'s lock until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


# --- kunet._fs: locks and stale temporaries -------------------------------------------------------------


def test_a_held_lock_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    lock = tmp_path / "run.lock"
    holder = _lock_holder(lock)
    with _sigkilled_at_exit(holder):
        with pytest.raises(LockHeldError, match=f"locked by process {holder.pid}") as error:
            with exclusive_lock(lock):
                pytest.fail("a second holder got the lock")
        assert error.value.holder == holder.pid
        with pytest.raises(LockHeldError):
            check_unlocked(lock)
    check_unlocked(lock)  # SIGKILL released it: a lock file left behind blocks no one
    with exclusive_lock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
    check_unlocked(tmp_path / "never-created.lock")
    assert not (tmp_path / "never-created.lock").exists()


def test_sweep_removes_only_temporaries_of_dead_processes_and_keeps_a_lone_previous_output(tmp_path):
    out = tmp_path / "records"
    dead = temporary_sibling(out)
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "shard").write_bytes(b"half")
    legacy = tmp_path / ".records.partial-0123abcd"  # the name older versions used
    legacy.mkdir()
    other = temporary_sibling(tmp_path / "other")  # another output's temporary: not ours to judge
    other.mkdir()
    lone_old = temporary_sibling(out, "old")
    lone_old.mkdir()
    (lone_old / "manifest.json").write_text("{}")
    with building_directory(out) as alive:
        (alive / "shard").write_bytes(b"being written")
        removed, kept = sweep_temporaries(out)
        assert sorted(removed) == sorted([dead, legacy])
        assert alive.is_dir() and (alive / "shard").read_bytes() == b"being written"
        assert any(str(alive) in line and "another running process" in line for line in kept)
        assert any(str(lone_old) in line and "rename it back" in line for line in kept)
        assert other.is_dir() and lone_old.is_dir()
    assert not alive.exists()  # not committed: building_directory removes it on the way out
    out.mkdir()  # the commit finished: a leftover .old- is now only clutter
    removed, kept = sweep_temporaries(out)
    assert removed == [lone_old] and kept == []


def test_a_failed_build_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError, match="disk full"):
        with building_directory(tmp_path / "out") as temporary:
            (temporary / "part").write_text("x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


# --- build-records: --overwrite replaces only kunet's records, bit depths checked in the first pass ------


def _source(tmp_path: Path, count: int = 3) -> Path:
    """images/ + labels/ of ``count`` small 8-bit frames and a notes file, all in ``tmp_path``."""
    rng = np.random.default_rng(0)
    for index in range(count):
        _write_pair(tmp_path, f"a{index}", rng.integers(0, 255, (40, 50), dtype=np.uint8), _two_blobs(40, 50))
    (tmp_path / "notes.txt").write_text("my notes")
    return tmp_path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(output: str, phrase: str) -> bool:
    """The CLI's answer to bad input: a single ``error:`` line with ``phrase`` (blank lines aside), no traceback."""
    lines = [line for line in output.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0]


def _never(*args, **kwargs):
    raise AssertionError("the expensive work started before the output was checked")


def test_overwrite_refuses_the_folder_holding_the_source_before_reading_it(tmp_path, monkeypatch):
    source = _source(tmp_path)
    before = _tree(source)
    monkeypatch.setattr(records.build, "check_frames", _never)
    with pytest.raises(UnsafeOverwriteError, match="which this job reads"):
        build_records(_config(source), out=source, overwrite=True)
    assert _tree(source) == before


def test_overwrite_refuses_a_folder_kunet_did_not_make(tmp_path, monkeypatch):
    _source(tmp_path)
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "thesis.docx").write_bytes(b"years of work")
    monkeypatch.setattr(records.build, "check_frames", _never)
    with pytest.raises(UnsafeOverwriteError, match="results: not made by kunet"):
        build_records(_config(tmp_path), out=foreign, overwrite=True)
    assert _tree(foreign) == {"thesis.docx": b"years of work"}


def test_overwrite_is_checked_again_when_the_records_are_committed(tmp_path, monkeypatch):
    _source(tmp_path)
    out = tmp_path / "rec"
    real_write = records.build._write_shards

    def someone_else_creates_out(*args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("not kunet's")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(records.build, "_write_shards", someone_else_creates_out)
    with pytest.raises(UnsafeOverwriteError, match="rec: not made by kunet"):
        build_records(_config(tmp_path), out=out, overwrite=True)
    assert _tree(out) == {"theirs.txt": b"not kunet's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels", "notes.txt", "rec"]


def test_cli_build_records_overwrite_of_the_source_folder_is_one_red_line_and_deletes_nothing(tmp_path):
    from kunet_cli.main import app
    from typer.testing import CliRunner

    source = _source(tmp_path)
    before = _tree(source)
    result = CliRunner().invoke(app, ["build-records", "--images", str(source / "images"), "--labels",
                                      str(source / "labels"), "--out", str(source), "--overwrite"])  # fmt: skip
    assert result.exit_code == 2
    assert _one_error_line(result.output, "refusing to replace it")
    assert _tree(source) == before


def test_a_mix_of_bit_depths_names_the_first_differing_file_before_anything_is_encoded(tmp_path, monkeypatch):
    _source(tmp_path)
    deep = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 20).astype(np.uint16)
    _write_pair(tmp_path, "a1", deep, _two_blobs(40, 50))  # 16-bit image among 8-bit ones
    monkeypatch.setattr(records.build, "encode_example", _never)
    with pytest.raises(RecordsError, match=r"images/a1\.png: 16-bit \(uint16\) image, but .*images/a0\.png is 8-bit"):
        build_records(_config(tmp_path), out=tmp_path / "rec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels", "notes.txt"]


_BUILD_THEN_HANG_OR_DIE = """
import os, signal, sys, time
from kunet import records
from kunet.config import pipeline_from_dict

def stop(*args, **kwargs):
    if sys.argv[3] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)
    time.sleep(600)

records.build.commit_directory = stop
config = pipeline_from_dict({"name": "t", "source": {"kind": "folders", "images": "images", "labels": "labels"},
                             "records": {"shards": 1}}, base_dir=sys.argv[1])
records.build_records(config, out=sys.argv[2])
"""


def _builder(source: Path, out: Path, how: str) -> subprocess.Popen:
    """A build of ``source`` into ``out`` in another process that dies (SIGKILL) or hangs just before its commit."""
    command = [sys.executable, "-c", _BUILD_THEN_HANG_OR_DIE, str(source), str(out), how]
    with open(source / f".{how}.stderr", "w") as errors:  # a file, not a pipe: reading a pipe waits for the end
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)


def _stderr(source: Path, how: str) -> str:
    return (source / f".{how}.stderr").read_text()[-2000:]


def test_a_killed_builds_temporary_is_removed_by_the_next_build_but_a_running_ones_is_not(tmp_path):
    source = _source(tmp_path)
    out = tmp_path / "rec"
    running = _builder(source, out, "hang")
    with _sigkilled_at_exit(running):
        assert running.stdout.readline().strip() == "ready", _stderr(source, "hang")
        [being_written] = [p for p in tmp_path.iterdir() if p.name.startswith(".rec.tmp-")]
        killed = _builder(source, out, "die")
        assert killed.wait(timeout=300) == -signal.SIGKILL, _stderr(source, "die")
        [left_by_killed] = [p for p in tmp_path.iterdir() if p.name.startswith(".rec.tmp-") and p != being_written]
        assert any(left_by_killed.glob("*.tfrecord.gz"))  # a real, complete-but-uncommitted build
        lines: list[str] = []
        build_records(_config(source), out=out, log=lines.append)
        assert not left_by_killed.exists() and being_written.is_dir()
        assert any(str(left_by_killed) in line and "killed" in line for line in lines), lines
        assert any(str(being_written) in line and "another running process" in line for line in lines), lines
        assert read_manifest(out)["counts"]["train"] == 2
    build_records(_config(source), out=out, overwrite=True, log=lines.append)
    assert not being_written.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".stderr")) == [
        "images", "labels", "notes.txt", "rec"
    ]  # fmt: skip


# --- synth: --overwrite never empties a folder kunet did not make --------------------------------------


def test_cli_synth_overwrite_of_the_working_directory_refuses_before_generating(tmp_path, monkeypatch):
    from kunet_cli.main import app
    from typer.testing import CliRunner

    from kunet import synthetic

    (tmp_path / "paper.tex").write_text("draft")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "SYNTHETIC.json").write_text("{}")  # even a kunet marker deeper down does not matter
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(synthetic.datasets, "make_em_sample", _never)
    result = CliRunner().invoke(app, ["synth", "em", "--out", ".", "--count", "2", "--size", "32", "--overwrite"])
    assert result.exit_code == 2 and _one_error_line(result.output, "working directory"), result.output
    assert _tree(tmp_path) == {"paper.tex": b"draft", "data/SYNTHETIC.json": b"{}"}
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")) == []


_WRITE_THEN_DIE = """
import os, signal, sys
from kunet import synthetic

real_write, calls = synthetic.datasets._write, []

def write_then_die(path, image):
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, image)

synthetic.datasets._write = write_then_die
synthetic.write_em_dataset(sys.argv[1], count=4, size=32)
"""


def test_a_killed_synth_leaves_a_temporary_that_the_next_synth_removes(tmp_path):
    out = tmp_path / "em"
    killed = subprocess.run([sys.executable, "-c", _WRITE_THEN_DIE, str(out)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    [left] = list(tmp_path.iterdir())
    assert left.name.startswith(".em.tmp-") and len(list(left.rglob("*.png"))) == 2 and not out.exists()
    legacy = tmp_path / ".em.partial-0badcafe"  # what older kunet versions left
    legacy.mkdir()
    lines: list[str] = []
    write_em_dataset(out, count=2, size=32, log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em"]
    assert sum("killed" in line for line in lines) == 2, lines


# --- fit, evaluate, tune: records are checked before use, and a damaged shard is named ------------------


def _copy_records(records: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny records (6 train frames in 2 shards, 2 val frames in 2 shards)."""
    return Path(shutil.copytree(records, tmp_path / "records"))


def _shard(records: Path, split: str, index: int = 0) -> Path:
    [path] = records.glob(f"{split}-{index:05d}-of-*.tfrecord.gz")
    return path


def _pretend_manifest_size(records: Path, shard: Path) -> None:
    """Records the shard's current size in the manifest: a swap the size check cannot see."""
    manifest = json.loads((records / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["file"] == shard.name:
            entry["bytes"] = shard.stat().st_size
    (records / "manifest.json").write_text(json.dumps(manifest))


def _quiet(*args, **kwargs):
    pass


@pytest.mark.parametrize("damage", ["truncated", "emptied", "missing"])
def test_fit_refuses_records_whose_shard_differs_from_the_manifest_before_creating_the_run(
    tiny_records, tmp_path, damage
):
    config, original = tiny_records
    records = _copy_records(original, tmp_path)
    shard = _shard(records, "train", 1)
    data = shard.read_bytes()
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    expected = "is missing" if damage == "missing" else f"bytes, the manifest says {len(data)}"
    with pytest.raises(RecordsError, match=f"{shard.name}: .*{expected}|{shard.name}: shard listed .*{expected}"):
        Trainer(config, tmp_path / "run", records, log=_quiet)
    assert not (tmp_path / "run").exists()


def test_cli_fit_on_a_truncated_shard_is_one_red_line_naming_it(tiny_records, tmp_path):
    from helpers import write_tiny_toml
    from kunet_cli.main import app
    from typer.testing import CliRunner

    _, original = tiny_records
    records = _copy_records(original, tmp_path)
    shard = _shard(records, "train")
    shard.write_bytes(shard.read_bytes()[:100])
    toml = write_tiny_toml(tmp_path / "tiny.toml", records)
    result = CliRunner().invoke(app, ["fit", str(toml), "--run-dir", str(tmp_path / "run"), "--records", str(records)])
    assert result.exit_code == 2 and _one_error_line(result.output, f"{shard}: 100 bytes"), result.output
    assert not (tmp_path / "run").exists()


def test_a_val_shard_copied_over_a_train_shard_is_named_even_at_equal_size_and_never_trained_on(tiny_records, tmp_path):
    config, original = tiny_records
    records = _copy_records(original, tmp_path)
    train_shard = _shard(records, "train")
    shutil.copyfile(_shard(records, "val"), train_shard)
    _pretend_manifest_size(records, train_shard)
    wrong_split = f"{train_shard.name}: holds frame b[0-9] of the val split, but is read as train"
    with pytest.raises(RecordsError, match=wrong_split):
        Trainer(config, tmp_path / "run", records, log=_quiet).fit(steps=2)
    assert not (tmp_path / "run").exists()  # no checkpoint was reached: the half-started run is removed
    with pytest.raises(RecordsError, match=wrong_split):
        list(iterate_frames(records, "train"))  # evaluate --split train, inspect-records, show-augment
    with pytest.raises(RecordsError, match=f"{train_shard.name}: sha256 differs"):
        Trainer(config, tmp_path / "run", records, log=_quiet, verify_records=True)


def test_a_corrupted_shard_of_unchanged_size_is_named_instead_of_a_data_loss_traceback(tiny_records, tmp_path):
    config, original = tiny_records
    records = _copy_records(original, tmp_path)
    shard = _shard(records, "train", 1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size: only the content is damaged
    shard.write_bytes(bytes(data))
    with pytest.raises(RecordsError, match=f"{shard.name}: cannot be read .*damaged"):
        Trainer(config, tmp_path / "run", records, log=_quiet).fit(steps=3)
    assert not (tmp_path / "run").exists()
    with pytest.raises(RecordsError, match=f"{shard.name}: sha256 differs"):
        Trainer(config, tmp_path / "run", records, log=_quiet, verify_records=True)


def test_evaluate_and_tune_name_a_damaged_val_shard_and_keep_what_they_wrote_before(tiny_records, tmp_path):
    from kunet.builders import build_model
    from kunet.evaluation import evaluate
    from kunet.segmenter import Segmenter
    from kunet.tune import tune

    config, original = tiny_records
    records = _copy_records(original, tmp_path)
    model_file = tmp_path / "model.keras"
    build_model(config, "float32", read_manifest(records)).save(model_file)
    out = tmp_path / "evaluation"
    evaluate(Segmenter(model_file), records, "val", out)
    before, model_before = _tree(out), model_file.read_bytes()
    shard = _shard(records, "val", 1)
    data = bytearray(shard.read_bytes())
    data[40:80] = bytes(40)
    shard.write_bytes(bytes(data))
    with pytest.raises(RecordsError, match=f"{shard.name}: cannot be read"):
        evaluate(Segmenter(model_file), records, "val", out)
    assert _tree(out) == before  # the previous evaluation, whole: not half overwritten with new overlays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation", "model.keras", "records"]
    with pytest.raises(RecordsError, match=f"{shard.name}: cannot be read"):
        tune(model_file, records, "pixel")
    assert model_file.read_bytes() == model_before
    foreign = tmp_path / "my-figures"
    foreign.mkdir()
    (foreign / "figure1.png").write_bytes(b"mine")
    with pytest.raises(UnsafeOverwriteError, match="my-figures: not made by kunet"):
        evaluate(Segmenter(model_file), original, "val", foreign)
    assert _tree(foreign) == {"figure1.png": b"mine"}


# --- demo: reuses or replaces only its own outputs --------------------------------------------------


@pytest.mark.parametrize("foreign", ["data/train", "records/held-out", "runs/synthetic-em", "evaluation"])
def test_demo_refuses_a_folder_in_its_way_that_kunet_did_not_make_before_doing_anything(tmp_path, foreign):
    from kunet import demo

    workdir = tmp_path / "work"
    (workdir / foreign).mkdir(parents=True)
    (workdir / foreign / "mine.tif").write_bytes(b"my own data")
    lines: list[str] = []
    with pytest.raises(UnsafeOverwriteError, match=f"{foreign}: not made by kunet"):
        demo.run(workdir, size=demo.TINY, export_root=tmp_path / "saved_models", log=lines.append)
    assert _tree(workdir) == {f"{foreign}/mine.tif": b"my own data"} and lines == []
    assert not (tmp_path / "saved_models").exists()


def test_cli_demo_with_a_foreign_data_folder_is_one_red_line(tmp_path):
    from kunet_cli.main import app
    from typer.testing import CliRunner

    workdir = tmp_path / "work"
    (workdir / "data" / "train").mkdir(parents=True)
    (workdir / "data" / "train" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--workdir", str(workdir), "--export-root", str(tmp_path / "sm")])
    assert result.exit_code == 2 and _one_error_line(result.output, "train: not made by kunet"), result.output
    assert _tree(workdir) == {"data/train/notes.txt": b"mine"}
