"""Files and folders written so that nothing is lost or half written, and nothing kunet did not make is deleted.

* A file is written to a hidden temporary sibling and renamed over its final name when complete (a rename
  inside one folder is atomic on POSIX file systems), so a reader sees the old file or the new one, never a
  mix. The temporary is opened with ``O_EXCL`` and the process umask, so outputs get the usual permissions
  (``tempfile.mkstemp`` would leave them at 0600).
* A folder (records, a synthetic dataset, an export version) is built in a hidden temporary sibling and
  moved into place with :func:`commit_directory`.
* ``--overwrite`` replaces only what kunet made: :func:`check_replaceable` refuses a folder that is not
  empty and holds none of kunet's marker files, and refuses the working directory, the home folder, the
  file system root and any folder that holds a path the job reads from.
* Temporary names share one pattern (``.<name>.tmp-<8 hex>``), so :func:`stale_temporaries` can find what
  a killed process left behind.
* A folder being built is ``flock``-ed by its builder (:func:`building_directory`), so
  :func:`sweep_temporaries` removes only the temporaries of processes that are gone (the kernel drops a
  dead process's locks, SIGKILL included), never one that a running process is still filling.
  :func:`exclusive_lock` is the same kind of lock on a file, for a folder a job works in (a run directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

# ``partial`` is the name older kunet versions gave a synthetic dataset being written.
TEMPORARY_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|part|partial|old)-[0-9a-f]{8}(\..*)?$")


class UnsafeOverwriteError(FileExistsError):
    """An ``--overwrite`` that would delete something kunet did not make; the message names the folder."""


def temporary_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<tag>-<8 hex>`` (``tag`` is tmp, part or old)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` through a temporary sibling and a rename; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path, "part")
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_save(path: str | os.PathLike, save) -> Path:
    """Calls ``save(temporary_path)`` and renames the result over ``path`` (for writers that want a path,
    such as ``model.save`` or ``np.save``); the temporary keeps ``path``'s suffix, which such writers check."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path, "part")
    temporary = temporary.with_name(temporary.name + path.suffix)
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_replaceable(
    out: str | os.PathLike, markers: Iterable[str], protected: Iterable[str | os.PathLike] = ()
) -> None:
    """Raises :class:`UnsafeOverwriteError` unless ``out`` may be deleted and replaced.

    Args:
        out: The existing output that ``--overwrite`` would replace.
        markers: File names of which at least one must exist in ``out`` (proof that kunet made it), e.g.
            ``manifest.json`` for records or ``SYNTHETIC.json`` for a synthetic dataset. An empty folder
            needs none.
        protected: Paths the job reads from (source images, labels); ``out`` may not hold any of them.
    """
    out_path = _resolved(out)
    if not out_path.exists():
        return
    if not out_path.is_dir():
        raise UnsafeOverwriteError(f"{out}: exists and is not a folder; refusing to replace it")
    refused = {Path("/"): "the file system root", _resolved(Path.home()): "your home folder",
               _resolved(Path.cwd()): "the working directory"}  # fmt: skip
    for place, what in refused.items():
        if _is_within(place, out_path):
            raise UnsafeOverwriteError(f"{out}: is or holds {what}; refusing to replace it")
    for source in protected:
        if _is_within(_resolved(source), out_path):
            raise UnsafeOverwriteError(f"{out}: holds {source}, which this job reads; refusing to replace it")
    markers = list(markers)
    if any(out_path.iterdir()) and not any((out_path / marker).is_file() for marker in markers):
        raise UnsafeOverwriteError(
            f"{out}: not made by kunet (no {' or '.join(markers)}) and not empty; "
            "refusing to replace it (choose another output folder or empty it yourself)"
        )


def check_output(
    out: str | os.PathLike,
    overwrite: bool,
    markers: Iterable[str],
    protected: Iterable[str | os.PathLike] = (),
) -> None:
    """Raises unless a job may write ``out``: it does not exist, or ``overwrite`` is set and
    :func:`check_replaceable` allows replacing it. Call it before the expensive work, so a refusal comes first.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        UnsafeOverwriteError: ``out`` is not something kunet made (see :func:`check_replaceable`).
    """
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise FileExistsError(f"{out}: already exists (use --overwrite to replace it)")
    check_replaceable(out, markers, protected)


def commit_directory(
    temporary: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    markers: Iterable[str] = (),
    protected: Iterable[str | os.PathLike] = (),
) -> Path:
    """Moves a finished folder into place.

    An existing ``out`` is an error without ``overwrite``; with it, ``out`` must pass
    :func:`check_replaceable`, and is moved aside, replaced and only then deleted, so a crash in between
    leaves the old or the new folder in place (and a hidden ``.old-`` one to clean up), never neither.
    """
    temporary, out = Path(temporary), Path(out)
    if out.exists() or out.is_symlink():
        check_output(out, overwrite, markers, protected)
        retired = temporary_sibling(out, "old")
        os.rename(out, retired)
        try:
            os.rename(temporary, out)
        except BaseException:
            os.rename(retired, out)
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(temporary, out)
    return out


def stale_temporaries(folder: str | os.PathLike, older_than_seconds: float = 0.0) -> list[Path]:
    """Hidden temporaries (``.<name>.tmp|part|old-<hex>``) in ``folder`` not modified for ``older_than_seconds``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    found = []
    for entry in folder.iterdir():
        if TEMPORARY_PATTERN.match(entry.name):
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:  # removed meanwhile by its owner
                continue
            if age >= older_than_seconds:
                found.append(entry)
    return sorted(found)


def remove_paths(paths: Iterable[Path]) -> list[Path]:
    """Deletes files and folders; returns those removed."""
    removed = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path)
    return removed


# --- locks, and the temporaries of processes that were killed ------------------------------------------


class LockHeldError(FileExistsError):
    """Another process holds a lock; ``holder`` is its process id (``None`` until it has written it)."""

    def __init__(self, path: Path, holder: int | None):
        self.path, self.holder = path, holder
        super().__init__(f"{path}: locked by process {holder if holder else '(unknown)'}")


def _holder(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _try_lock(descriptor: int) -> bool:
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
        if not _try_lock(descriptor):
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
        if not _try_lock(descriptor):
            raise LockHeldError(path, _holder(descriptor))
    finally:
        os.close(descriptor)  # also releases the probe's lock


@contextlib.contextmanager
def building_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden sibling folder of ``out`` to build in, ``flock``-ed while the ``with`` block runs so
    that :func:`sweep_temporaries` in another process leaves it alone. Commit it with
    :func:`commit_directory` inside the block; if the block raises or ends without committing, it is deleted."""
    temporary = temporary_sibling(out)
    temporary.parent.mkdir(parents=True, exist_ok=True)
    temporary.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stay with the finished folder
    descriptor = os.open(temporary, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already once committed (renamed)
        os.close(descriptor)


def _unlocked_folder(path: Path) -> bool:
    """True if ``path`` is a folder no process holds a lock on (its builder is gone)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        return _try_lock(descriptor)
    finally:
        os.close(descriptor)


def sweep_temporaries(out: str | os.PathLike, log: Callable[[str], None] | None = None) -> tuple[list[Path], list[str]]:
    """Removes the temporaries that killed processes left beside the output folder ``out``.

    * ``.<out>.tmp-*`` (and the older ``.partial-*``) folders: removed unless a running process holds their
      lock (see :func:`building_directory`); a locked one is being built and is left alone.
    * ``.<out>.old-*`` folders (a previous ``out`` moved aside by :func:`commit_directory`): removed when
      ``out`` exists (the commit finished, its clean-up was cut short). Without ``out`` such a folder is the
      only copy of the previous output, so it is kept and named.

    Returns:
        The paths removed, and one sentence for each temporary kept (both also passed to ``log``).
    """
    out = Path(out)
    removable, kept = [], []
    for path in stale_temporaries(out.parent):
        match = TEMPORARY_PATTERN.match(path.name)
        if match["name"] != out.name or not path.is_dir() or path.is_symlink():
            continue
        if match["tag"] == "old" and not out.exists():
            kept.append(f"{path}: the previous {out.name}, moved aside by a process that was killed; "
                        f"rename it back to {out} to recover it")  # fmt: skip
        elif match["tag"] == "old" or _unlocked_folder(path):
            removable.append(path)
        else:
            kept.append(f"{path}: being written by another running process; left alone")
    removed = remove_paths(removable)
    if log:
        for line in [f"removed {path} (left behind by a process that was killed)" for path in removed] + kept:
            log(line)
    return removed, kept
