"""Issue 15 (data side): nothing kunet did not make is deleted, damaged records are named, runs are locked,
and what killed processes leave behind is cleaned up without touching the work of running ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from kunet._fs import (
    LockHeldError,
    building_directory,
    check_unlocked,
    exclusive_lock,
    sweep_temporaries,
    temporary_sibling,
)

_HOLD_LOCK = """
import sys, time
from kunet._fs import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _lock_holder(path) -> subprocess.Popen:
    """A process that holds ``path``'s lock until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


# --- kunet._fs: locks and stale temporaries -------------------------------------------------------------


def test_a_held_lock_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    lock = tmp_path / "run.lock"
    holder = _lock_holder(lock)
    try:
        with pytest.raises(LockHeldError, match=f"locked by process {holder.pid}") as error:
            with exclusive_lock(lock):
                pytest.fail("a second holder got the lock")
        assert error.value.holder == holder.pid
        with pytest.raises(LockHeldError):
            check_unlocked(lock)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
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
