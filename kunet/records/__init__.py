"""``kunet build-records``: labelled frames -> GZIP-compressed, sharded TFRecords plus a manifest.

Schema (version 1), one ``tf.train.Example`` per frame:

=================  ======  ==============================================================
key                type    meaning
=================  ======  ==============================================================
image/png          bytes   the image as lossless PNG, dtype as stored (uint8 or uint16)
image/height       int64   H
image/width        int64   W
image/channels     int64   C (1 gray, 3 RGB)
label/png          bytes   the raw label exactly as in the source file (uint8 or uint16 PNG)
classes/png        bytes   uint8 PNG of class indices after label interpretation (ridges carved)
weight/f16         bytes   weight map, float16 little-endian, H*W values (paper eq. 2)
frame/id           bytes   frame id (file stem, ``<stack>_<page>`` or ``<sequence>_t<number>``)
frame/split        bytes   ``train`` or ``val``
source/image       bytes   path of the image file
source/label       bytes   path of the label file
source/page        int64   page within a multi-page TIFF (0 otherwise)
=================  ======  ==============================================================

Building makes two streaming passes over the frames: the first interprets every label and checks that
all images share one bit depth and all labels another (catching bad input, with the file named, before
anything is written) and counts class frequencies for w_c; the second encodes frames with ``workers``
threads (OpenCV releases the GIL) and writes them in order. Everything goes to a temporary sibling
directory (locked while it is written) that is renamed into place only when complete; ``overwrite``
replaces only a records folder (one with a ``manifest.json``, or an empty one) that holds no source file,
and is checked before the passes and again at the end. The temporaries of builds that were killed are
removed by the next build of the same folder.

Reading checks the shards against the manifest first (each exists and has its recorded size; sha256 on
request, :func:`check_shards`), checks that every example belongs to the split being read, and reports a
shard that cannot be read as a :class:`RecordsError` naming it.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import kunet
from kunet._fs import building_directory, check_output, commit_directory, sweep_temporaries
from kunet.config import PipelineConfig
from kunet.imageio import encode_png
from kunet.sources import Frame, interpret_label, list_frames
from kunet.weightmap import class_balance_weights, weight_map

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("counts", "image", "labels", "shards", "sources")  # what readers look up
SPLITS = ("train", "val")


class RecordsError(ValueError):
    """Records that cannot be built or read; the message names the file or folder."""


@dataclass
class EncodedFrame:
    frame: Frame
    split: str
    example: bytes
    height: int
    width: int


def split_frames(frames: list[Frame], val_fraction: float, val_ids: list[str]) -> dict[str, str]:
    """Frame id -> split. Explicit ``val_ids`` win; otherwise every k-th frame (evenly spread, deterministic)."""
    ids = [frame.frame_id for frame in frames]
    if val_ids:
        unknown = sorted(set(val_ids) - set(ids))
        if unknown:
            raise RecordsError(f"validation ids not in the source: {', '.join(unknown)}")
        chosen = set(val_ids)
    else:
        count = int(round(val_fraction * len(ids)))
        if val_fraction > 0 and count == 0 and len(ids) > 1:
            count = 1
        picks = {int((i + 0.5) * len(ids) / count) for i in range(count)} if count else set()
        chosen = {ids[i] for i in picks}
    return {frame_id: ("val" if frame_id in chosen else "train") for frame_id in ids}


def _interpret(frame: Frame, config: PipelineConfig):
    image, label = frame.load(config.image.channels)
    labelled = interpret_label(label, config.labels, str(frame.label_path))
    return image, label, labelled


def _ordered_map(function: Callable, items: list, workers: int) -> Iterator:
    """Like ``map`` with a thread pool, but with at most ``2 * workers`` items in flight (bounded memory)."""
    if workers <= 1:
        yield from map(function, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: list[concurrent.futures.Future] = []
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _bits(dtype: str) -> str:
    return f"{np.dtype(dtype).itemsize * 8}-bit ({dtype})"


@dataclass
class FrameSummary:
    """What pass 1 learns about the frames: their one bit depth, channels and class pixel counts."""

    first: Frame
    image_dtype: str
    label_dtype: str
    channels: int
    class_counts: np.ndarray  # all frames
    train_counts: np.ndarray  # training frames (w_c balances these)

    def check_bit_depth(self, frame: Frame, image: np.ndarray, label: np.ndarray) -> None:
        """Raises naming ``frame``'s file if its image or label bit depth differs from the first frame's."""
        for what, path, dtype, first_path, first_dtype in (
            ("image", frame.image_path, str(image.dtype), self.first.image_path, self.image_dtype),
            ("label", frame.label_path, str(label.dtype), self.first.label_path, self.label_dtype),
        ):
            if dtype != first_dtype:
                raise RecordsError(
                    f"{path}: {_bits(dtype)} {what}, but {first_path} is {_bits(first_dtype)}; "
                    f"records need one bit depth for all {what}s (convert them first)"
                )


def check_frames(
    frames: list[Frame], splits: dict[str, str], config: PipelineConfig, workers: int, progress=None
) -> FrameSummary:
    """Pass 1: interprets every label and checks every bit depth (raising on bad input, naming the file),
    and counts pixels per class over all frames and over the training frames."""
    num_classes = config.labels.num_classes

    def check(frame: Frame):
        image, label, labelled = _interpret(frame, config)
        return frame, image, label, np.bincount(labelled.classes.ravel(), minlength=num_classes)[:num_classes]

    summary = None
    for frame, image, label, counts in _ordered_map(check, frames, workers):
        if summary is None:
            zeros = np.zeros(num_classes, dtype=np.int64)
            summary = FrameSummary(frame, str(image.dtype), str(label.dtype), image.shape[2], zeros, zeros.copy())
        summary.check_bit_depth(frame, image, label)
        summary.class_counts += counts
        if splits[frame.frame_id] == "train":
            summary.train_counts += counts
        if progress:
            progress()
    return summary


def _bytes_feature(value: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(frame: Frame, split: str, image, label, classes, weights) -> bytes:
    import tensorflow as tf

    height, width = label.shape
    features = {
        "image/png": _bytes_feature(encode_png(image)),
        "image/height": _int_feature(height),
        "image/width": _int_feature(width),
        "image/channels": _int_feature(image.shape[2]),
        "label/png": _bytes_feature(encode_png(label)),
        "classes/png": _bytes_feature(encode_png(classes)),
        "weight/f16": _bytes_feature(weights.astype("<f2").tobytes()),
        "frame/id": _bytes_feature(frame.frame_id.encode()),
        "frame/split": _bytes_feature(split.encode()),
        "source/image": _bytes_feature(str(frame.image_path).encode()),
        "source/label": _bytes_feature(str(frame.label_path).encode()),
        "source/page": _int_feature(frame.page),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _sha256(path: str | os.PathLike) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(str(path), "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord.gz"


def source_paths(config: PipelineConfig) -> list[Path]:
    """The files and folders a build reads: an ``--overwrite`` may not delete a folder that holds them."""
    source = config.source
    if source.kind == "ctc":
        return [config.path(source.root)]
    return [config.path(source.images), config.path(source.labels)]


def _class_weights(config: PipelineConfig, params, train_counts: np.ndarray) -> np.ndarray:
    """w_c of eq. 2: as configured, ones without a preset, or balancing the training class frequencies."""
    if params.class_weights:
        if len(params.class_weights) != config.labels.num_classes:
            raise RecordsError(
                f"weights.class_weights has {len(params.class_weights)} values for {config.labels.num_classes} classes"
            )
        return np.asarray(params.class_weights, dtype=np.float64)
    if params.preset == "none":
        return np.ones(config.labels.num_classes)
    return class_balance_weights(train_counts)


def _write_shards(
    folder: Path, encoded_frames: Iterator[EncodedFrame], split_sizes: dict[str, int], shards: int, advance
) -> tuple[list[dict], list[dict]]:
    """Pass 2: writes the encoded frames round-robin into each split's shards; returns the shard and source lists."""
    import tensorflow as tf

    shard_counts = {split: min(shards, size) for split, size in split_sizes.items()}
    names = {(split, index): _shard_name(split, index, count) for split, count in shard_counts.items()
             for index in range(count)}  # fmt: skip
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = {key: tf.io.TFRecordWriter(str(folder / name), options) for key, name in names.items()}
    written = {key: 0 for key in writers}
    position = {split: 0 for split in SPLITS}
    sources = []
    try:
        for encoded in encoded_frames:
            key = (encoded.split, position[encoded.split] % shard_counts[encoded.split])
            position[encoded.split] += 1
            writers[key].write(encoded.example)
            written[key] += 1
            frame = encoded.frame
            sources.append({"frame_id": frame.frame_id, "split": encoded.split, "shard": names[key],
                            "image": str(frame.image_path), "label": str(frame.label_path), "page": frame.page,
                            "height": encoded.height, "width": encoded.width})  # fmt: skip
            if advance:
                advance()
    finally:
        for writer in writers.values():
            writer.close()
    shard_list = [
        {"file": name, "split": key[0], "count": written[key], "sha256": _sha256(folder / name),
         "bytes": (folder / name).stat().st_size}
        for key, name in names.items()
    ]  # fmt: skip
    return shard_list, sources


def build_records(
    config: PipelineConfig,
    out: Path | None = None,
    shards: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress_factory=None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Builds the records set described by ``config`` and returns its manifest.

    Args:
        config: The pipeline (source, labels, weights, records sections are used).
        out: Output folder; defaults to ``config.records_dir()``.
        shards: Shards per split (a split never gets more shards than frames).
        workers: Threads encoding frames in parallel.
        overwrite: Replace an existing output folder (only once the new one is complete), if kunet made it
            (it holds a manifest.json, or is empty) and it holds none of the source files.
        progress_factory: ``(description, total) -> callable`` advancing a progress bar by one.
        log: Reports the temporaries of killed builds that were removed (or kept, and why).

    Raises:
        SourceError, RecordsError: bad input, with the file named; nothing is left on disk.
        FileExistsError: ``out`` exists and ``overwrite`` is False, or (UnsafeOverwriteError) ``out`` is not
            a kunet records folder or holds the source; checked before any work, and again at the end.
    """
    out = Path(out) if out is not None else config.records_dir()
    shards = shards or config.records.shards
    workers = workers or config.records.workers
    protected = source_paths(config)
    check_output(out, overwrite, [MANIFEST], protected)
    sweep_temporaries(out, log)
    frames = list_frames(config)
    splits = split_frames(frames, config.records.val_fraction, list(config.records.val_ids))
    params = config.weights.resolved()
    progress_factory = progress_factory or (lambda description, total: None)
    summary = check_frames(frames, splits, config, workers, progress_factory("checking labels", len(frames)))
    class_weights = _class_weights(config, params, summary.train_counts)

    def encode(frame: Frame) -> EncodedFrame:
        image, label, labelled = _interpret(frame, config)
        summary.check_bit_depth(frame, image, label)  # a file replaced since pass 1
        weights = weight_map(labelled.classes, labelled.objects, labelled.num_objects, params, class_weights)
        example = encode_example(frame, splits[frame.frame_id], image, label, labelled.classes, weights)
        return EncodedFrame(frame, splits[frame.frame_id], example, label.shape[0], label.shape[1])

    split_sizes = {split: sum(1 for s in splits.values() if s == split) for split in SPLITS}
    with building_directory(out) as temporary:
        shard_list, source_list = _write_shards(
            temporary, _ordered_map(encode, frames, workers), split_sizes, shards,
            progress_factory("writing records", len(frames)),
        )  # fmt: skip
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": config.name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kunet_version": kunet.__version__,
            "counts": split_sizes,
            "image": {"dtype": summary.image_dtype, "channels": summary.channels},
            "labels": {
                "kind": config.labels.kind,
                "dtype": summary.label_dtype,
                "class_names": list(config.labels.class_names),
                "class_values": config.labels.class_values(),
            },
            "class_pixel_counts": {"all": summary.class_counts.tolist(), "train": summary.train_counts.tolist()},
            "class_frequencies": (summary.train_counts / max(summary.train_counts.sum(), 1)).tolist(),
            "weight_map": {
                "preset": params.preset,
                "w0": params.w0,
                "sigma": params.sigma,
                "sigma_factor": params.sigma_factor,
                "class_weights": [float(w) for w in class_weights],
                "border_term_on": "background pixels",
            },
            "shards": shard_list,
            "sources": source_list,
            "pipeline": config.to_dict(),
        }
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2))
        commit_directory(temporary, out, overwrite, [MANIFEST], protected)
    return manifest


# --- reading -----------------------------------------------------------------------------------


def _join(records_dir: str | os.PathLike, name: str) -> str:
    """A path inside a records folder, kept as a string so gs://, s3:// and hdfs:// folders work."""
    return f"{str(records_dir).rstrip('/')}/{name}"


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
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise RecordsError(f"{path}: records schema version {version}, this kunet reads {SCHEMA_VERSION}")
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


def parse_example(serialized, image_dtype: str = "uint8", channels: int = 1) -> dict:
    """Parses one serialised example into decoded tensors (image, label, classes, weight, ids)."""
    import tensorflow as tf

    spec = {
        "image/png": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/channels": tf.io.FixedLenFeature([], tf.int64),
        "label/png": tf.io.FixedLenFeature([], tf.string),
        "classes/png": tf.io.FixedLenFeature([], tf.string),
        "weight/f16": tf.io.FixedLenFeature([], tf.string),
        "frame/id": tf.io.FixedLenFeature([], tf.string),
        "frame/split": tf.io.FixedLenFeature([], tf.string),
        "source/image": tf.io.FixedLenFeature([], tf.string),
        "source/label": tf.io.FixedLenFeature([], tf.string),
        "source/page": tf.io.FixedLenFeature([], tf.int64),
    }
    parsed = tf.io.parse_single_example(serialized, spec)
    height, width = tf.cast(parsed["image/height"], tf.int32), tf.cast(parsed["image/width"], tf.int32)
    image = tf.io.decode_png(parsed["image/png"], channels=channels, dtype=tf.as_dtype(image_dtype))
    weight = tf.reshape(tf.io.decode_raw(parsed["weight/f16"], tf.float16, little_endian=True), [height, width])
    return {
        "image": tf.reshape(image, [height, width, channels]),
        "label_png": parsed["label/png"],
        "classes": tf.reshape(tf.io.decode_png(parsed["classes/png"], channels=1), [height, width]),
        "weight": tf.cast(weight, tf.float32),
        "frame_id": parsed["frame/id"],
        "split": parsed["frame/split"],
        "source_image": parsed["source/image"],
        "source_label": parsed["source/label"],
        "source_page": parsed["source/page"],
    }


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
            parsed = parse_example(serialized, manifest["image"]["dtype"], manifest["image"]["channels"])
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
