"""Paths that may be URIs: a local path stays a :class:`~pathlib.Path`, ``scheme://...`` stays a string.

``pathlib`` folds ``gs://bucket/x`` into ``gs:/bucket/x``, so a remote location must never pass through
``Path``. Everything here takes either form and reaches the local file system through ``os``/``pathlib``
(so local guarantees such as ``flock``, ``O_EXCL`` and ``os.rename`` stay what they were) and a remote one
through ``tf.io.gfile``.

Which schemes work is TensorFlow's business: TF 2.21 registers ``gs://`` (Google Cloud Storage), ``ram://``
(in-memory, per process; the tests use it) and ``file://``. ``s3://`` and ``hdfs://`` moved to the
separate ``tensorflow-io`` package and fail here with "File system scheme 's3' not implemented" unless that
package is installed and imported. ``file://x`` is treated as the local path ``x``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from kunet.errors import KunetError

Location = str | os.PathLike
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


class RemoteStorageError(KunetError):
    """A remote location that cannot be used (unknown scheme, unreachable); the message names it."""


def scheme(path: Location) -> str | None:
    """``gs`` for ``gs://bucket/x``; None for a local path."""
    match = _SCHEME.match(os.fspath(path)) if isinstance(path, str) else None
    return match["scheme"].lower() if match else None


def is_remote(path: Location) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a :class:`~pathlib.Path` is always local)."""
    return scheme(path) not in (None, "file")


def location(path: Location) -> str | Path:
    """A remote URI as a string without a trailing ``/``; anything else (``file://`` too) as a ``Path``."""
    if is_remote(path):
        text = str(path)
        return text.rstrip("/") if not text.endswith("://") else text
    text = os.fspath(path)
    return Path(text[len("file://") :] if scheme(text) == "file" else text)


def join(base: Location, *names: str) -> str | Path:
    """``base/name/...``; for a URI by string concatenation, so ``//`` after the scheme survives."""
    base = location(base)
    if isinstance(base, Path):
        return base.joinpath(*names)
    return "/".join([base, *(name.strip("/") for name in names)])


def name(path: Location) -> str:
    """The last component (``x`` for ``gs://bucket/x``)."""
    path = location(path)
    return path.name if isinstance(path, Path) else path.rsplit("/", 1)[-1]


def parent(path: Location) -> str | Path:
    """The folder holding ``path`` (``gs://bucket`` for ``gs://bucket/x``)."""
    path = location(path)
    if isinstance(path, Path):
        return path.parent
    head, _, tail = path.rpartition("/")
    return path if head.endswith(":/") or not tail else head


def is_bucket_root(path: Location) -> bool:
    """True for ``gs://bucket`` itself (no folder below the bucket): never a folder to replace."""
    return is_remote(path) and "/" not in str(location(path)).split("://", 1)[1]


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _checked(path: str, call):
    """Runs a gfile call, turning "scheme not implemented" into an error naming the path and the fix."""
    import tensorflow as tf

    try:
        return call()
    except tf.errors.UnimplementedError:
        raise RemoteStorageError(
            f"{path}: TensorFlow {tf.__version__} has no file system for {scheme(path)}:// "
            "(it has gs://, ram:// and local paths; s3:// and hdfs:// need the tensorflow-io package)"
        ) from None


def exists(path: Location) -> bool:
    path = location(path)
    if isinstance(path, Path):
        return os.path.lexists(path)
    return _checked(path, lambda: _gfile().exists(path))


def isdir(path: Location) -> bool:
    path = location(path)
    if isinstance(path, Path):
        return path.is_dir()
    return _checked(path, lambda: _gfile().isdir(path))


def isfile(path: Location) -> bool:
    path = location(path)
    if isinstance(path, Path):
        return path.is_file()
    return exists(path) and not isdir(path)


def makedirs(path: Location) -> None:
    path = location(path)
    if isinstance(path, Path):
        path.mkdir(parents=True, exist_ok=True)
    else:
        _checked(path, lambda: _gfile().makedirs(path))


def listdir(path: Location) -> list[str]:
    """Names in the folder ``path`` (empty if it does not exist); object stores list "folders" with a
    trailing ``/``, which is dropped."""
    path = location(path)
    if isinstance(path, Path):
        return sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    if not isdir(path):
        return []
    return sorted({entry.rstrip("/") for entry in _gfile().listdir(path)})


def walk_files(path: Location) -> Iterator[str]:
    """Paths of the files below the folder ``path``, relative to it, with ``/`` separators."""
    for entry in listdir(path):
        child = join(path, entry)
        if isdir(child):
            yield from (f"{entry}/{inner}" for inner in walk_files(child))
        else:
            yield entry


def size(path: Location) -> int:
    path = location(path)
    if isinstance(path, Path):
        return path.stat().st_size
    return _checked(path, lambda: _gfile().stat(path).length)


def read_bytes(path: Location) -> bytes:
    path = location(path)
    if isinstance(path, Path):
        return path.read_bytes()
    with _checked(path, lambda: _gfile().GFile(path, "rb")) as stream:
        return stream.read()


def read_text(path: Location) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: Location, data: bytes) -> None:
    """Writes a whole file in place (not atomic by itself: see :func:`kunet._fs.atomic_write_bytes`)."""
    path = location(path)
    if isinstance(path, Path):
        path.write_bytes(data)
        return
    makedirs(parent(path))  # ram:// lists only files whose folder was made; gs:// does not mind
    if exists(path):  # TF 2.21's ram:// appends to an existing file opened with "wb" instead of truncating it
        _gfile().remove(path)
    with _checked(path, lambda: _gfile().GFile(path, "wb")) as stream:
        stream.write(bytes(data))  # a memoryview too (no copy for bytes: bytes(b) is b)


def rename(source: Location, destination: Location, overwrite: bool = False) -> None:
    """Renames a file. Remote: ``tf.io.gfile.rename`` (on gs:// a server-side copy, then a delete)."""
    source, destination = location(source), location(destination)
    if isinstance(source, Path) and isinstance(destination, Path):
        (os.replace if overwrite else os.rename)(source, destination)
    else:
        _checked(str(destination), lambda: _gfile().rename(str(source), str(destination), overwrite=overwrite))


def copy(source: Location, destination: Location, overwrite: bool = False) -> None:
    """Copies one file between any two locations (local to remote included)."""
    source, destination = location(source), location(destination)
    _checked(str(destination), lambda: _gfile().copy(str(source), str(destination), overwrite=overwrite))


def remove(path: Location) -> None:
    """Deletes a file or a folder with everything in it; a missing one is fine."""
    import shutil

    path = location(path)
    if isinstance(path, Path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    import tensorflow as tf

    try:
        if isdir(path):
            _gfile().rmtree(path)
        elif exists(path):
            _gfile().remove(path)
    except tf.errors.NotFoundError:
        pass


def glob(pattern: Location) -> list[str | Path]:
    """Paths matching a shell pattern (``*``, ``?``, ``[...]``) in its last components."""
    import glob as globbing

    pattern = location(pattern)
    if isinstance(pattern, Path):
        return sorted(Path(found) for found in globbing.glob(str(pattern)))
    return sorted(_checked(pattern, lambda: _gfile().glob(pattern)))
