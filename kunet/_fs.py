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

Remote locations (``gs://``, any ``tf.io.gfile`` scheme; see :mod:`kunet.uris`) take the same calls with
weaker guarantees, because object stores have no atomic folder rename and no locks:

* A file is still written to a temporary name and renamed (``tf.io.gfile.rename``; on gs:// an object only
  appears once its upload is complete, and the rename is a server-side copy), so a reader sees the old
  object or the new one.
* A folder cannot be moved into place atomically. :func:`commit_directory` moves its files one by one with
  the marker files (a records ``manifest.json``, an export's ``saved_model.pb``) LAST, and keeps an
  ``.kunet-incomplete`` file in the folder until they are in, so a reader never takes a partial folder for a
  complete one, and a later ``--overwrite`` knows kunet made it. With ``--overwrite`` the old folder is
  deleted (its markers first) before the new files arrive: a crash in between leaves neither, where the
  local rename leaves one or the other.
* There are no locks: one writer per output is assumed. :func:`building_directory` does not lock, and
  :func:`sweep_temporaries` names a remote temporary it finds instead of deleting it, since it cannot tell a
  killed build's from a running one's.
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

from kunet import uris
from kunet.locks import (  # noqa: F401  (LockHeldError, check_unlocked, exclusive_lock: kunet._fs's names)
    LockHeldError,
    check_unlocked,
    exclusive_lock,
    try_lock,
    unlocked_folder,
)

# ``partial`` is the name older kunet versions gave a synthetic dataset being written.
TEMPORARY_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|part|partial|old)-[0-9a-f]{8}(\..*)?$")
# In a remote folder while commit_directory moves files into it: kunet's folder, not complete yet.
INCOMPLETE_MARKER = ".kunet-incomplete"


class UnsafeOverwriteError(FileExistsError):
    """An ``--overwrite`` that would delete something kunet did not make; the message names the folder."""


def temporary_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path | str:
    """A fresh hidden name beside ``path``: ``.<name>.<tag>-<8 hex>`` (``tag`` is tmp, part or old); a
    string for a remote ``path``."""
    hidden = f".{uris.name(path)}.{tag}-{uuid.uuid4().hex[:8]}"
    if uris.is_remote(path):
        return uris.join(uris.parent(path), hidden)
    return Path(path).with_name(hidden)


def _atomic_write_remote(path: str, data: bytes) -> str:
    temporary = temporary_sibling(path, "part")
    try:
        uris.write_bytes(temporary, data)
        uris.rename(temporary, path, overwrite=True)
    except BaseException:
        uris.remove(temporary)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path | str:
    """Writes ``data`` to ``path`` through a temporary sibling and a rename; returns ``path``."""
    if uris.is_remote(path):
        return _atomic_write_remote(uris.location(path), data)
    path = uris.location(path)
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


def atomic_write_text(path: str | os.PathLike, text: str) -> Path | str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data) -> Path | str:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_save(path: str | os.PathLike, save) -> Path | str:
    """Calls ``save(temporary_path)`` and renames the result over ``path`` (for writers that want a path,
    such as ``model.save`` or ``np.save``); the temporary keeps ``path``'s suffix, which such writers check.
    For a remote ``path`` the writer writes a local temporary file, which is uploaded to a temporary
    object and renamed."""
    if uris.is_remote(path):
        import tempfile

        remote = uris.location(path)
        with tempfile.TemporaryDirectory(prefix="kunet-save-") as scratch:
            local = Path(scratch) / uris.name(remote)
            save(local)
            return _atomic_write_remote(remote, local.read_bytes())
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

    A remote ``out`` is read through ``tf.io.gfile``: a bucket itself is refused, and a folder holding
    :data:`INCOMPLETE_MARKER` (a commit that was cut short) counts as kunet's.
    """
    if uris.is_remote(out):
        _check_replaceable_remote(uris.location(out), list(markers), protected)
        return
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


def _check_replaceable_remote(out: str, markers: list[str], protected: Iterable[str | os.PathLike]) -> None:
    if not uris.exists(out):
        return
    if uris.is_bucket_root(out):
        raise UnsafeOverwriteError(f"{out}: is a whole bucket; refusing to replace it")
    if not uris.isdir(out):
        raise UnsafeOverwriteError(f"{out}: exists and is not a folder; refusing to replace it")
    for source in protected:
        if uris.is_remote(source) and (str(source) + "/").startswith(out + "/"):
            raise UnsafeOverwriteError(f"{out}: holds {source}, which this job reads; refusing to replace it")
    entries = uris.listdir(out)
    if entries and not any(marker in entries for marker in [*markers, INCOMPLETE_MARKER]):
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
    if not uris.exists(out):
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

    A remote ``out`` cannot be renamed atomically: see :func:`commit_remote_directory` (``markers`` are
    moved last).
    """
    if uris.is_remote(out):
        return commit_remote_directory(temporary, out, overwrite, markers, protected)
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


def commit_remote_directory(
    temporary: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    markers: Iterable[str] = (),
    protected: Iterable[str | os.PathLike] = (),
) -> str:
    """Moves the files of a finished folder (``temporary``, local or remote) into the remote folder ``out``.

    Not atomic: object stores have no folder rename. Instead ``out`` holds :data:`INCOMPLETE_MARKER` from
    the first file moved until the last, and the files named in ``markers`` (at the top of the folder) are
    moved last, so a reader that looks for a marker never sees a partial folder as complete. An existing
    ``out`` (allowed as in :func:`check_output`) is deleted first, its markers before anything else; a
    crash before the new markers arrive leaves an incomplete folder that a later ``--overwrite`` replaces.
    Local files are copied (the local ``temporary`` is left for its owner to delete); remote ones renamed.
    """
    markers = list(markers)
    out = uris.location(out)
    check_output(out, overwrite, markers, protected)
    uris.makedirs(out)
    uris.write_bytes(uris.join(out, INCOMPLETE_MARKER), b"kunet is writing this folder\n")
    for marker in markers:
        uris.remove(uris.join(out, marker))
    for entry in uris.listdir(out):
        if entry != INCOMPLETE_MARKER:
            uris.remove(uris.join(out, entry))
    files = list(uris.walk_files(temporary))
    move = uris.copy if not uris.is_remote(temporary) else uris.rename
    for relative in sorted(files, key=lambda f: f in markers):  # markers last
        destination = uris.join(out, relative)
        uris.makedirs(uris.parent(destination))
        move(uris.join(temporary, relative), destination, overwrite=True)
    uris.remove(uris.join(out, INCOMPLETE_MARKER))
    if uris.is_remote(temporary):
        uris.remove(temporary)
    return out


def stale_temporaries(folder: str | os.PathLike, older_than_seconds: float = 0.0) -> list[Path | str]:
    """Hidden temporaries (``.<name>.tmp|part|old-<hex>``) in ``folder`` not modified for ``older_than_seconds``
    (remote: every one, since an object store's folders have no modification time)."""
    if uris.is_remote(folder):
        return [uris.join(folder, entry) for entry in uris.listdir(folder) if TEMPORARY_PATTERN.match(entry)]
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


# --- folders being built, and the temporaries of processes that were killed (locks: kunet.locks) --------


@contextlib.contextmanager
def building_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh hidden sibling folder of ``out`` to build in, ``flock``-ed while the ``with`` block runs so
    that :func:`sweep_temporaries` in another process leaves it alone. Commit it with
    :func:`commit_directory` inside the block; if the block raises or ends without committing, it is deleted.

    A remote folder is not locked (object stores have none): one writer per output is assumed."""
    if uris.is_remote(out):
        yield from _building_remote_directory(uris.location(out))
        return
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


def _building_remote_directory(out: str) -> Iterator[str]:
    temporary = temporary_sibling(out)
    uris.makedirs(temporary)
    try:
        yield temporary
    finally:
        uris.remove(temporary)  # gone already once committed


def sweep_temporaries(out: str | os.PathLike, log: Callable[[str], None] | None = None) -> tuple[list[Path], list[str]]:
    """Removes the temporaries that killed processes left beside the output folder ``out``.

    * ``.<out>.tmp-*`` (and the older ``.partial-*``) folders: removed unless a running process holds their
      lock (see :func:`building_directory`); a locked one is being built and is left alone.
    * ``.<out>.old-*`` folders (a previous ``out`` moved aside by :func:`commit_directory`): removed when
      ``out`` exists (the commit finished, its clean-up was cut short). Without ``out`` such a folder is the
      only copy of the previous output, so it is kept and named.

    A remote ``out`` has no locks, so its temporaries are named (kept), never removed: kunet cannot tell a
    killed build's from a running one's.

    Returns:
        The paths removed, and one sentence for each temporary kept (both also passed to ``log``).
    """
    if uris.is_remote(out):
        return _name_remote_temporaries(uris.location(out), log)
    out = Path(out)
    removable, kept = [], []
    for path in stale_temporaries(out.parent):
        match = TEMPORARY_PATTERN.match(path.name)
        if match["name"] != out.name or not path.is_dir() or path.is_symlink():
            continue
        if match["tag"] == "old" and not out.exists():
            kept.append(f"{path}: the previous {out.name}, moved aside by a process that was killed; "
                        f"rename it back to {out} to recover it")  # fmt: skip
        elif match["tag"] == "old" or unlocked_folder(path):
            removable.append(path)
        else:
            kept.append(f"{path}: being written by another running process; left alone")
    removed = remove_paths(removable)
    if log:
        for line in [f"removed {path} (left behind by a process that was killed)" for path in removed] + kept:
            log(line)
    return removed, kept


def _name_remote_temporaries(out: str, log: Callable[[str], None] | None) -> tuple[list, list[str]]:
    kept = [
        f"{path}: a temporary of an earlier {uris.name(out)} (kunet cannot lock remote folders, so it cannot "
        "tell whether a build is still writing it); delete it once no build of this output is running"
        for path in stale_temporaries(uris.parent(out))
        if TEMPORARY_PATTERN.match(uris.name(path))["name"] == uris.name(out)
    ]
    for line in kept if log else ():
        log(line)
    return [], kept
