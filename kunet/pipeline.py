"""The tf.data training pipeline: records -> decode -> cache -> shuffle -> repeat -> tiles -> batches.

Tiles follow the overlap-tile strategy: an input tile of the model's input size whose context beyond
the image border is mirror-extrapolated, with class map and weight map cropped to the model's output
size at the matching centre. Tile sampling and the paper's augmentation are one coordinate map per
sample (:mod:`kunet.augment`), placed by ``augment.on``:

* ``host``: per sample, XLA-compiled, inside ``Dataset.map`` with parallel calls;
* ``device``: whole frames are batched (zero-padded, with their true sizes) and the same code runs
  batched inside the training step, so on a GPU it runs on the GPU;
* ``auto``: ``device`` when a GPU is visible, else ``host``.

Determinism: frame order comes from a seeded shuffle and every tile's randomness from a stateless seed
``(seed + 7919 * pipeline_id, element_index)``, so a given seed gives the same stream regardless of
parallelism, and resuming at step ``n`` is ``skip(n * batch_size)`` on the frame stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kunet.augment import AugmentParams, make_host_sampler, sample_tiles
from kunet.config import PipelineConfig
from kunet.model import output_size
from kunet.preprocess import normalization, tf_normalize, tf_raw_to_unit
from kunet.records import assert_split, image_format, parse_example, read_manifest, shard_paths

# Keeps per-worker seeds apart (any odd constant larger than typical seeds works).
_WORKER_SEED_STRIDE = 7919


def resolve_placement(placement: str) -> str:
    """``auto`` -> ``device`` when TensorFlow sees a GPU, else ``host``."""
    if placement not in ("auto", "host", "device"):
        raise ValueError(f"augment.on must be auto, host or device, got {placement!r}")
    if placement == "auto":
        return "device" if tf.config.list_physical_devices("GPU") else "host"
    return placement


@dataclass(frozen=True)
class TileShape:
    input: int
    output: int


def tile_shape(config: PipelineConfig) -> TileShape:
    model = config.model
    return TileShape(config.train.tile_size, output_size(config.train.tile_size, model.depth, model.padding))


def decoded_frames(
    records_dir: str | os.PathLike,
    split: str,
    num_shards: int = 1,
    shard_index: int = 0,
    normalize: str = "standardize",
    settings=None,
):
    """Dataset of decoded frames: image in [0, 1] [H, W, C], classes uint8 [H, W], weight float32 [H, W], and
    the whole frame's normalisation statistics (``norm_shift``, ``norm_scale``) for ``normalize``, whose
    parameters (e.g. the percentiles) come from ``settings`` (``config.image``).

    ``num_shards``/``shard_index`` split the frames between input pipelines (tf.distribute workers).
    The shards are checked against the manifest first (existence, size), and every example must belong to
    ``split`` (an ``InvalidArgumentError`` naming the shard when iterated otherwise).
    """
    manifest = read_manifest(records_dir)
    paths = shard_paths(records_dir, split, manifest)
    if not paths:
        raise ValueError(f"{records_dir}: no {split} records")
    image_dtype, channels, storage = image_format(manifest)
    statistics = normalization(normalize, settings).tf_statistics
    # Float images may hold any values (deconvolved: negative, above 1), but augmentation's gray values work in
    # [0, 1] and clip to it. Under a normalisation that does not see the scale (all but "scale", which takes
    # float values in [0, 1] as given), each frame is first stretched to [0, 1] by its own minimum and maximum:
    # an affine map, so the normalised net input is prediction's (which takes the floats as they are).
    stretch_floats = np.issubdtype(np.dtype(image_dtype), np.floating) and normalize != "scale"
    files = tf.data.Dataset.from_tensor_slices(paths)
    dataset = files.interleave(
        # Each example travels with its shard's path, so a failed check can name the shard.
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP").map(lambda example: (path, example)),
        cycle_length=max(1, min(len(paths), 4)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if num_shards > 1:
        dataset = dataset.shard(num_shards, shard_index)

    def decode(path, serialized):
        parsed = parse_example(serialized, image_dtype, channels, storage)
        with tf.control_dependencies([assert_split(parsed, split, path)]):
            image = tf_raw_to_unit(parsed["image"], image_dtype)
        if stretch_floats:
            image = _frame_min_max_stretched(image)
        # Whole-frame statistics, computed once here: tiles are normalised as the whole image would be.
        shift, scale = statistics(image[None])
        return {
            "image": image,
            "classes": parsed["classes"],
            "weight": parsed["weight"],
            "norm_shift": shift[0],
            "norm_scale": scale[0],
        }

    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _frame_min_max_stretched(image):
    low, high = tf.reduce_min(image), tf.reduce_max(image)
    return (image - low) / tf.maximum(high - low, np.float32(1e-30))


def training_dataset(
    config: PipelineConfig,
    records_dir: str | os.PathLike,
    batch_size: int,
    placement: str = "host",
    start_step: int = 0,
    num_pipelines: int = 1,
    pipeline_id: int = 0,
    augment: bool = True,
):
    """The infinite stream of training batches for one input pipeline.

    Args:
        config: Pipeline configuration (augment, train, model, image sections).
        records_dir: Records written by ``kunet build-records``.
        batch_size: Tiles per batch of this pipeline (per worker).
        placement: ``host`` or ``device`` (resolve ``auto`` with :func:`resolve_placement` first).
        start_step: Batches already consumed (resume); the stream continues exactly where it stopped.
        num_pipelines: Input pipelines in the job (tf.distribute workers).
        pipeline_id: This pipeline's index.
        augment: ``False`` samples centred, unaugmented tiles (for checks and previews).

    Returns:
        host: batches ``(tiles [B, T, T, C], classes [B, t, t] int32, weights [B, t, t])``, normalised.
        device: batches of whole frames ``{"image", "classes", "weight", "size", "seed"}`` zero-padded to
        the largest frame, for :func:`device_tiles` inside the training step.
    """
    indexed = _seeded_frames(config, records_dir, batch_size, start_step, num_pipelines, pipeline_id)
    if placement == "device":

        def add_size(frame):
            frame["size"] = tf.shape(frame["classes"], out_type=tf.int32)
            return frame

        batches = indexed.map(add_size).padded_batch(batch_size, drop_remainder=True)
    else:
        batches = indexed.map(_host_tiles(config, augment), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        batches = batches.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def training_splits(config: PipelineConfig) -> tuple[str, ...]:
    """The records' splits a run trains on: ``train``, and ``val`` too for a final run (``train.final``)."""
    return ("train", "val") if config.train.final else ("train",)


def training_frame_count(config: PipelineConfig, manifest: dict) -> int:
    """How many frames a run of ``config`` trains on, from the records' manifest."""
    return sum(manifest["counts"][split] for split in training_splits(config))


def _seeded_frames(config: PipelineConfig, records_dir, batch_size: int, start_step: int, num_pipelines: int,
                   pipeline_id: int):  # fmt: skip
    """The shuffled, repeated frames of one input pipeline from ``start_step`` on, each with its own seed
    (the pipeline's seed and the element's position in the stream, so a resumed stream draws the same)."""
    manifest = read_manifest(records_dir)
    frame_count = training_frame_count(config, manifest)
    splits = [split for split in training_splits(config) if manifest["counts"][split]]
    shard = num_pipelines > 1 and frame_count >= num_pipelines
    frames = None
    for split in splits:
        part = decoded_frames(records_dir, split, num_pipelines if shard else 1, pipeline_id if shard else 0,
                              config.image.normalize, config.image)  # fmt: skip
        frames = part if frames is None else frames.concatenate(part)
    if config.train.cache == "memory":
        frames = frames.cache()
    seed = config.train.seed + _WORKER_SEED_STRIDE * pipeline_id
    frames = frames.shuffle(
        max(1, min(config.train.shuffle_buffer, frame_count)), seed=seed, reshuffle_each_iteration=True
    )
    first_element = start_step * batch_size
    frames = frames.repeat().skip(first_element)
    indexed = tf.data.Dataset.zip((tf.data.Dataset.counter(first_element, dtype=tf.int64), frames))

    def with_seed(index, frame):
        frame = dict(frame)
        frame["seed"] = tf.stack([tf.constant(seed, tf.int64), index])
        return frame

    return indexed.map(with_seed, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _host_tiles(config: PipelineConfig, augment: bool):
    """frame -> (normalised augmented tile, classes, weights), per sample on the host (XLA unless
    ``augment.jit_compile`` is off)."""
    shape = tile_shape(config)
    params = AugmentParams.from_config(config.augment) if augment else AugmentParams.disabled()
    sampler = make_host_sampler(params, shape.input, shape.output, jit_compile=config.augment.jit_compile)
    normalize = config.image.normalize

    def sample(frame):
        tile, classes, weight = sampler(frame["image"], frame["classes"], frame["weight"], frame["seed"])
        tile = tf_normalize(tile[None], normalize, (frame["norm_shift"][None], frame["norm_scale"][None]))[0]
        return tile, tf.cast(classes, tf.int32), weight

    return sample


def device_tiles(batch: dict, config: PipelineConfig, augment: bool = True):
    """The device-placement half: tiles from a batch of whole frames, inside the training step."""
    shape = tile_shape(config)
    params = AugmentParams.from_config(config.augment) if augment else AugmentParams.disabled()
    tiles, classes, weights = sample_tiles(
        batch["image"],
        batch["classes"],
        batch["weight"],
        batch["size"],
        batch["seed"],
        params,
        shape.input,
        shape.output,
    )
    tiles = tf_normalize(tiles, config.image.normalize, (batch["norm_shift"], batch["norm_scale"]))
    return tiles, tf.cast(classes, tf.int32), weights
