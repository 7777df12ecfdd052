"""Reading records: the manifest, shard checks, and frames decoded from the shards.

Reading checks the shards against the manifest first (each exists and has its recorded size; sha256 on
request, :func:`check_shards`), checks that every example belongs to the split being read, and reports a
shard that cannot be read as a :class:`RecordsError` naming it.

Every read goes through ``tf.io.gfile``, so a records folder may be local or a remote URI (``gs://``;
``ram://`` in the tests). A remote folder whose ``manifest.json`` is missing is refused like a local one:
the manifest is written last (see :mod:`kunet.records.build`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from kunet import uris
from kunet.records.schema import (
    MANIFEST,
    MANIFEST_KEYS,
    READABLE_SCHEMA_VERSIONS,
    SPLITS,
    RecordsError,
    _sha256,
    image_format,
    parse_example,
)


def _join(records_dir: str | os.PathLike, name: str) -> str:
    """A path inside a records folder, as the string TensorFlow takes (a URI's ``//`` kept)."""
    return str(uris.join(records_dir, name))


def read_manifest(records_dir: str | os.PathLike) -> dict:
    """The manifest of a records folder on any ``tf.io.gfile`` file system."""
    import tensorflow as tf

    path = _join(records_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise RecordsError(f"{records_dir}: no {MANIFEST} (not a kunet records folder, or an unfinished one)")
    with tf.io.gfile.GFile(path, "r") as stream:
        try:
            manifest = json.loads(stream.read())
        except ValueError as error:
            raise RecordsError(f"{path}: damaged manifest, not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        readable = " and ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
        raise RecordsError(f"{path}: records schema version {version}, this kunet reads versions {readable}")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise RecordsError(f"{path}: damaged manifest, missing {', '.join(missing)}")
    return manifest


def check_shards(
    records_dir: str | os.PathLike, splits=SPLITS, checksums: bool = False, manifest: dict | None = None
) -> None:
    """Checks the shards of ``splits`` against the manifest before they are read.

    Each must exist with the byte size the manifest gives (one stat per shard, so it is always done: it
    catches a truncated, emptied or swapped shard); with ``checksums`` its sha256 must match too (reads
    every byte).

    Raises:
        RecordsError: naming the first shard that is missing or differs.
    """
    import tensorflow as tf

    manifest = manifest or read_manifest(records_dir)
    for shard in manifest["shards"]:
        if shard["split"] not in splits:
            continue
        path = _join(records_dir, shard["file"])
        if not tf.io.gfile.exists(path):
            raise RecordsError(f"{path}: shard listed in the manifest is missing")
        size = tf.io.gfile.stat(path).length
        if size != shard["bytes"]:
            raise RecordsError(
                f"{path}: {size} bytes, the manifest says {shard['bytes']} (truncated, emptied or replaced); "
                "rebuild the records"
            )
        if checksums and _sha256(path) != shard["sha256"]:
            raise RecordsError(f"{path}: sha256 differs from the manifest (damaged or modified); rebuild the records")


def verify_checksums(records_dir: str | os.PathLike) -> None:
    """Raises if a shard's size or sha256 differs from the manifest (a damaged or edited records set)."""
    check_shards(records_dir, checksums=True)


def shard_paths(records_dir: str | os.PathLike, split: str, manifest: dict | None = None) -> list[str]:
    """The shards of ``split``, checked with :func:`check_shards` (existence and size) first."""
    manifest = manifest or read_manifest(records_dir)
    check_shards(records_dir, [split], manifest=manifest)
    return [_join(records_dir, shard["file"]) for shard in manifest["shards"] if shard["split"] == split]


def unreadable_shard(path: str, error: Exception) -> RecordsError:
    """The one-line error for a shard TensorFlow failed to read or decode."""
    detail = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
    return RecordsError(f"{path}: cannot be read ({detail}); the shard is damaged, rebuild the records")


def _wrong_split(path: str, frame_id: str, found: str, split: str) -> str:
    return f"{path}: holds frame {frame_id} of the {found} split, but is read as {split} (a shard copied over another?)"


def assert_split(parsed: dict, split: str, path):
    """In-graph check that a parsed example belongs to ``split``: a val shard copied over a train shard of
    the same size passes :func:`check_shards`, not this. Use the op as a control dependency."""
    import tensorflow as tf

    message = tf.strings.join([path, ": holds frame ", parsed["frame_id"], " of the ", parsed["split"],
                               " split, but is read as ", split])  # fmt: skip
    return tf.debugging.Assert(tf.equal(parsed["split"], split), [message])


def iterate_frames(records_dir: str | os.PathLike, split: str) -> Iterator[dict]:
    """Eagerly decoded frames of one split as NumPy arrays (for evaluation, inspection and tests).

    Raises:
        RecordsError: a shard is missing, has the wrong size, cannot be read, or holds another split's
            frames; the message names it.
    """
    manifest = read_manifest(records_dir)
    for path in shard_paths(records_dir, split, manifest):
        yield from _shard_frames(path, split, manifest)


def _shard_frames(path: str, split: str, manifest: dict) -> Iterator[dict]:
    import tensorflow as tf

    try:
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            parsed = parse_example(serialized, *image_format(manifest))
            frame_id, found = parsed["frame_id"].numpy().decode(), parsed["split"].numpy().decode()
            if found != split:
                raise RecordsError(_wrong_split(path, frame_id, found, split))
            label = tf.io.decode_png(parsed["label_png"], dtype=tf.as_dtype(manifest["labels"]["dtype"]))
            yield {
                "frame_id": frame_id,
                "image": parsed["image"].numpy(),
                "label": label.numpy()[..., 0],
                "classes": parsed["classes"].numpy(),
                "weight": parsed["weight"].numpy(),
                "source_image": parsed["source_image"].numpy().decode(),
                "source_label": parsed["source_label"].numpy().decode(),
                "source_page": int(parsed["source_page"].numpy()),
            }
    except tf.errors.OpError as error:
        raise unreadable_shard(path, error) from None


def find_damaged_shard(records_dir: str | os.PathLike, split: str) -> RecordsError | None:
    """Reads every frame of ``split`` to name the shard a failed ``tf.data`` read came from (an error path:
    it decodes everything); ``None`` if every shard reads cleanly."""
    try:
        for _ in iterate_frames(records_dir, split):
            pass
    except RecordsError as error:
        return error
    return None
