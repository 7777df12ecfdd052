"""Building records: labelled frames -> GZIP-compressed, sharded TFRecords plus a manifest.

Building makes two streaming passes over the frames: the first interprets every label and checks that
all images share one bit depth and all labels another (catching bad input, with the file named, before
anything is written) and counts class frequencies for w_c; the second encodes frames with ``workers``
threads (OpenCV releases the GIL) and writes them in order. Everything goes to a temporary sibling
directory (locked while it is written) that is renamed into place only when complete; ``overwrite``
replaces only a records folder (one with a ``manifest.json``, or an empty one) that holds no source file,
and is checked before the passes and again at the end. The temporaries of builds that were killed are
removed by the next build of the same folder.

``out`` may be a remote URI (``gs://bucket/records/x``; any ``tf.io.gfile`` scheme): the shards are written
to a hidden sibling folder there and moved into ``out`` file by file with ``manifest.json`` last (object
stores cannot rename a folder atomically; a folder without its manifest is refused by every reader), and
nothing is locked, so one build per output at a time (see :mod:`kunet._fs`).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import kunet
from kunet import uris
from kunet._fs import building_directory, check_output, commit_directory, sweep_temporaries
from kunet.config import PipelineConfig, load_pipeline
from kunet.records.schema import (
    MANIFEST,
    SPLITS,
    RecordsError,
    _sha256,
    encode_example,
    exact_in_float16,
    image_storage,
    schema_version,
)
from kunet.sources import Frame, interpret_label, list_frames
from kunet.weightmap import class_weights_for, weight_map


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
    float16_exact: bool = True  # every float32 image seen so far survives float16 unchanged

    @property
    def storage(self) -> str:
        """How the images are stored (:func:`kunet.records.schema.image_storage`)."""
        return image_storage(self.image_dtype, self.float16_exact)

    def note_values(self, frame: Frame, image: np.ndarray) -> None:
        """Pass 1: a float32 image that float16 would change makes float32 the storage of every image."""
        if image.dtype == np.float32 and self.float16_exact:
            self.float16_exact = exact_in_float16(image)

    def check_storable(self, frame: Frame, image: np.ndarray) -> None:
        """Pass 2: refuses an image that changed since pass 1 so that the chosen storage would alter it."""
        if self.storage == "float16" and not exact_in_float16(image):
            raise RecordsError(f"{frame.image_path}: changed while the records were built (values not exact in "
                               "float16 any more); build them again")  # fmt: skip

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
        summary.note_values(frame, image)
        summary.class_counts += counts
        if splits[frame.frame_id] == "train":
            summary.train_counts += counts
        if progress:
            progress()
    return summary


def _shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord.gz"


def source_paths(config: PipelineConfig) -> list[Path]:
    """The files and folders a build reads: an ``--overwrite`` may not delete a folder that holds them."""
    source = config.source
    if source.kind == "ctc":
        return [config.path(source.root)]
    return [config.path(source.images), config.path(source.labels)]


def _write_shards(
    folder: Path | str, encoded_frames: Iterator[EncodedFrame], split_sizes: dict[str, int], shards: int, advance
) -> tuple[list[dict], list[dict]]:
    """Pass 2: writes the encoded frames round-robin into each split's shards; returns the shard and source lists."""
    import tensorflow as tf

    shard_counts = {split: min(shards, size) for split, size in split_sizes.items()}
    names = {(split, index): _shard_name(split, index, count) for split, count in shard_counts.items()
             for index in range(count)}  # fmt: skip
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = {key: tf.io.TFRecordWriter(str(uris.join(folder, name)), options) for key, name in names.items()}
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
        {"file": name, "split": key[0], "count": written[key], "sha256": _sha256(uris.join(folder, name)),
         "bytes": uris.size(uris.join(folder, name))}
        for key, name in names.items()
    ]  # fmt: skip
    return shard_list, sources


def _encoder(
    config: PipelineConfig, splits: dict[str, str], summary: FrameSummary, params, class_weights: np.ndarray
) -> Callable[[Frame], EncodedFrame]:
    """Pass 2's work on one frame: interpret its label again, compute its weight map, encode the example."""

    def encode(frame: Frame) -> EncodedFrame:
        image, label, labelled = _interpret(frame, config)
        summary.check_bit_depth(frame, image, label)  # a file replaced since pass 1
        summary.check_storable(frame, image)
        weights = weight_map(labelled.classes, labelled.objects, labelled.num_objects, params, class_weights)
        example = encode_example(frame, splits[frame.frame_id], image, label, labelled.classes, weights,
                                 summary.storage)  # fmt: skip
        return EncodedFrame(frame, splits[frame.frame_id], example, label.shape[0], label.shape[1])

    return encode


def _manifest(
    config: PipelineConfig,
    summary: FrameSummary,
    params,
    class_weights: np.ndarray,
    split_sizes: dict[str, int],
    shard_list: list[dict],
    source_list: list[dict],
) -> dict:
    """The manifest of a build whose shards are written (``created`` is now)."""
    return {
        "schema_version": schema_version(summary.storage),
        "name": config.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kunet_version": kunet.__version__,
        "counts": split_sizes,
        "image": {"dtype": summary.image_dtype, "channels": summary.channels, "storage": summary.storage},
        "labels": {
            "kind": config.labels.kind,
            "dtype": summary.label_dtype,
            "class_names": config.labels.names(),
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


def build_records(
    config: PipelineConfig,
    out: str | os.PathLike | None = None,
    shards: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress_factory=None,
    log: Callable[[str], None] | None = print,
    frames: list | None = None,
) -> dict:
    """Builds the records set described by ``config`` and returns its manifest.

    Args:
        config: The pipeline (source, labels, weights, records sections are used), or its TOML file.
        out: Output folder or remote URI (``gs://...``, kept as a string); defaults to ``config.records_dir()``.
        shards: Shards per split (a split never gets more shards than frames).
        workers: Threads encoding frames in parallel.
        overwrite: Replace an existing output folder (only once the new one is complete), if kunet made it
            (it holds a manifest.json, or is empty) and it holds none of the source files.
        progress_factory: ``(description, total) -> callable`` advancing a progress bar by one.
        log: Reports the temporaries of killed builds that were removed (or kept, and why).
        frames: The labelled frames to write instead of ``config.source``'s, e.g.
            :func:`kunet.sources.array_frames` of arrays in memory.

    Raises:
        SourceError, RecordsError: bad input, with the file named; nothing is left on disk.
        FileExistsError: ``out`` exists and ``overwrite`` is False, or (UnsafeOverwriteError) ``out`` is not
            a kunet records folder or holds the source; checked before any work, and again at the end.
    """
    if not isinstance(config, PipelineConfig):
        config = load_pipeline(config)
    out = uris.location(out if out is not None else config.records_dir())
    shards = shards or config.records.shards
    workers = workers or config.records.workers
    protected = source_paths(config) if frames is None else []
    check_output(out, overwrite, [MANIFEST], protected)
    sweep_temporaries(out, log)
    frames = list_frames(config) if frames is None else list(frames)
    splits = split_frames(frames, config.records.val_fraction, list(config.records.val_ids))
    params = config.weights.resolved()
    progress_factory = progress_factory or (lambda description, total: None)
    summary = check_frames(frames, splits, config, workers, progress_factory("checking labels", len(frames)))
    class_weights = class_weights_for(config.weights, summary.train_counts, config.labels.num_classes)
    encode = _encoder(config, splits, summary, params, class_weights)
    split_sizes = {split: sum(1 for s in splits.values() if s == split) for split in SPLITS}
    with building_directory(out) as temporary:
        shard_list, source_list = _write_shards(
            temporary, _ordered_map(encode, frames, workers), split_sizes, shards,
            progress_factory("writing records", len(frames)),
        )  # fmt: skip
        manifest = _manifest(config, summary, params, class_weights, split_sizes, shard_list, source_list)
        uris.write_bytes(uris.join(temporary, MANIFEST), json.dumps(manifest, indent=2).encode("utf-8"))
        commit_directory(temporary, out, overwrite, [MANIFEST], protected)
    return manifest
