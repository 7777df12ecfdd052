"""Exclusive ``flock`` locks: on a file (a run directory's ``run.lock``) or on a folder being built.

The kernel drops a dead process's locks however it died (SIGKILL included), so a lock never outlives its
holder and "not locked" reliably means "its writer is gone". Local files only: object stores have no locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class LockHeldError(FileExistsError):
    """Another process holds a lock; ``holder`` is its process id (``None`` until it has written it)."""

    def __init__(self, path: Path, holder: int | None):
        self.path, self.holder = path, holder
        super().__init__(f"{path}: locked by process {holder if holder else '(unknown)'}")


def _holder(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Holds an exclusive ``flock`` on the file ``path`` (created if needed, this process's id written in
    it) for the ``with`` block. The kernel drops the lock when the process ends however it ends, so a lock
    file left behind never blocks anyone.

    Raises:
        LockHeldError: another process holds the lock (at once, without waiting).
    """
    path = Path(path)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not try_lock(descriptor):
            raise LockHeldError(path, _holder(descriptor))
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(descriptor)


def check_unlocked(path: str | os.PathLike) -> None:
    """Raises :class:`LockHeldError` if another process holds the lock file ``path``; creates nothing."""
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        if not try_lock(descriptor):
            raise LockHeldError(path, _holder(descriptor))
    finally:
        os.close(descriptor)  # also releases the probe's lock


def unlocked_folder(path: Path) -> bool:
    """True if ``path`` is a folder no process holds a lock on (its builder is gone)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        return try_lock(descriptor)
    finally:
        os.close(descriptor)
