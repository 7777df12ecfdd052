"""``kunet export``: SavedModels for TensorFlow Serving with the overlap-tile strategy inside the graph.

Layout (the TensorFlow Serving convention; a version folder that is not an integer is ignored)::

    saved_models/<name>/
      models.config              model_config_list for tensorflow_model_server --model_config_file
      batching_parameters.txt    for --enable_batching --batching_parameters_file (safe: see below)
      README.md                  docker / tensorflow_model_server command lines, REST, gRPC, Python clients
      <version>/
        saved_model.pb, variables/, assets/
        assets.extra/kunet.json                  what a client needs without kunet
        assets.extra/tf_serving_warmup_requests  PredictionLog records (--enable_model_warmup)
        assets.extra/unet.keras                  the Keras model, for Keras users
        assets.extra/README.md                   the same README

Signatures (:mod:`kunet.serving.signatures` is the table): ``serving_default`` takes ``images`` float32
[B, H, W, C] of any H, W in raw pixel values and returns ``probabilities``, ``labels`` (the dataset's label
values) and ``classes``; ``segment_png`` takes ``png_bytes`` and returns ``mask_png_bytes`` (string outputs end
in ``_bytes`` so TensorFlow Serving's REST API returns them as ``{"b64": ...}``). Normalisation, mirror
padding, tiling, stitching and the stored decision rule all run in the graph.

The graph refuses, with an INVALID_ARGUMENT that says why, requests beyond the export's
:class:`~kunet.serving.signatures.ServingLimits` (a PNG's declared size is read from its header before it is
decoded) and images holding NaN or infinite values.

The shipped batching file never changes an answer: one image per execution batch (tasks are split, never
merged or padded) and one batch thread, which bounds memory under a burst of requests.

A version is written to a temporary folder and renamed into place only when complete; an existing version is
never overwritten, and two exports racing for one version number end up in two versions.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import kunet
from kunet._fs import atomic_write_json, atomic_write_text, building_directory, remove_paths, sweep_temporaries
from kunet.inference import (
    InferenceSettings,
    choose_tile,
    mirrored_probabilities,
    net_border,
    plan_for_tile,
    tiled_probabilities,
)
from kunet.postprocess import tf_foreground_mask
from kunet.preprocess import dtype_max, tf_normalize
from kunet.records import RecordsError, read_manifest
from kunet.segmenter import resolve_model_path, with_precision
from kunet.serving import signatures as names
from kunet.serving.readme import serving_readme
from kunet.serving.signatures import SIGNATURES, ServingLimits
from kunet.train import RunPaths

WARMUP_FILE = "tf_serving_warmup_requests"
# Versions are built in a hidden, locked ``.export.tmp-*`` folder beside them (kunet._fs.building_directory).
EXPORT_FOLDER = "export"
# Older kunet versions built in unlocked ``.export-*`` folders: one a day old belongs to a killed export.
LEGACY_STALE_SECONDS = 24 * 3600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ExportError(ValueError):
    """An export that cannot be written or does not check out; the message names the path."""


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.iterdir() if p.name.isdigit()] if model_root.is_dir() else []
    return max(versions, default=0) + 1


def _decision(probabilities, settings: InferenceSettings):
    """Class indices [B, H, W]: the stored threshold and post-processing, or the argmax."""
    if probabilities.shape[-1] != 2:
        return tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    seed_threshold = max(settings.seed_threshold, settings.threshold)

    def one(foreground):
        mask = tf_foreground_mask(foreground, settings.threshold, settings.postprocess, seed_threshold)
        return tf.cast(mask, tf.int32)

    return tf.map_fn(one, probabilities[..., 1], fn_output_signature=tf.int32, parallel_iterations=1)


def png_declared_size(encoded):
    """(is_png, height, width) from a PNG's IHDR chunk, read without decoding the image.

    A PNG starts with an 8-byte signature and the IHDR chunk (4-byte length, ``IHDR``, then width and
    height as big-endian 32-bit integers at bytes 16-23). Padding the string first keeps short or empty
    inputs from failing inside ``substr`` with a message that does not say what is wrong.
    """
    padded = tf.strings.join([encoded, tf.constant(b"\0" * 24)])
    is_png = tf.logical_and(
        tf.equal(tf.strings.substr(padded, 0, 8), PNG_MAGIC), tf.equal(tf.strings.substr(padded, 12, 4), b"IHDR")
    )
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
    place = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    width, height = tf.reduce_sum(header[:4] * place), tf.reduce_sum(header[4:] * place)
    return is_png, height, width


def _request_checks(images, limits: ServingLimits) -> list:
    """Assertions on a batch [B, H, W, C] of raw images, run before any large tensor is made from it."""
    shape = tf.shape(images, out_type=tf.int64)
    return [
        tf.debugging.assert_less_equal(
            shape[0], tf.constant(limits.max_batch, tf.int64),
            message=f"{names.IMAGES}: more images in one request than this export accepts (max_batch)",
        ),
        tf.debugging.assert_less_equal(
            shape[1] * shape[2], tf.constant(limits.max_pixels, tf.int64),
            message=f"{names.IMAGES}: image height x width exceeds this export's max_pixels",
        ),
        tf.debugging.assert_positive(shape[1] * shape[2], message=f"{names.IMAGES}: empty image (0 pixels)"),
        tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(images)), [f"{names.IMAGES}: NaN or infinite pixel values"]
        ),
    ]  # fmt: skip


def _png_checks(encoded, limits: ServingLimits) -> list:
    """Assertions on one encoded PNG: that it is one, and that its declared size is within the bounds."""
    is_png, height, width = png_declared_size(encoded)
    return [
        tf.debugging.Assert(is_png, [f"{names.PNG_INPUT}: not a PNG file (no PNG signature and IHDR header)"]),
        tf.debugging.Assert(
            height * width <= limits.max_pixels,
            [f"{names.PNG_INPUT}: the PNG declares", height, "x", width,
             f"pixels; this export accepts at most {limits.max_pixels} pixels per image (max_pixels)"],
        ),
    ]  # fmt: skip


def build_serving_functions(
    model, settings: InferenceSettings, tile_hw, batch_size: int = 1, limits: ServingLimits | None = None
):
    """The two signature functions (serving_default, segment_png) around ``model``, and the tile plan."""
    limits = limits or ServingLimits()
    plan = plan_for_tile(settings.typical_size, tile_hw, model.depth)
    border = net_border(model.depth, model.padding)
    channels = model.input_channels
    scale = 1.0 / dtype_max(settings.image_dtype)
    class_values = tf.constant(list(settings.class_values), tf.int32)

    def predict(prepared):
        return tiled_probabilities(
            lambda tiles: model(tiles, training=False), prepared, plan.input_hw, plan.stride_hw, (border, border),
            batch_size=batch_size,
        )  # fmt: skip

    def one_image(image):
        prepared = tf_normalize((image * scale)[None], settings.normalize)[0]
        return mirrored_probabilities(predict, prepared) if settings.test_time_mirroring else predict(prepared)

    def segment(images):
        with tf.control_dependencies(_request_checks(images, limits)):
            images = tf.identity(images)
        probabilities = tf.map_fn(one_image, images, fn_output_signature=tf.float32, parallel_iterations=1)
        classes = _decision(probabilities, settings)
        return probabilities, classes, tf.gather(class_values, classes)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32, name=names.IMAGES)])
    def serving_default(images):
        probabilities, classes, labels = segment(images)
        return {names.PROBABILITIES: probabilities, names.LABELS: labels, names.CLASSES: classes}

    png_dtype = tf.uint16 if max(settings.class_values) > 255 else tf.uint8
    image_dtype = tf.as_dtype(settings.image_dtype)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.PNG_INPUT)])
    def segment_png(png_bytes):
        def one(encoded):
            with tf.control_dependencies(_png_checks(encoded, limits)):
                image = tf.io.decode_png(encoded, channels=channels, dtype=image_dtype)
            _, _, labels = segment(tf.cast(image, tf.float32)[None])
            return tf.io.encode_png(tf.cast(labels[0][..., None], png_dtype))

        count_check = tf.debugging.assert_less_equal(
            tf.size(png_bytes, out_type=tf.int64), tf.constant(limits.max_batch, tf.int64),
            message=f"{names.PNG_INPUT}: more images in one request than this export accepts (max_batch)",
        )  # fmt: skip
        with tf.control_dependencies([count_check]):
            png_bytes = tf.identity(png_bytes)
        masks = tf.map_fn(one, png_bytes, fn_output_signature=tf.string, parallel_iterations=1)
        return {names.MASK_PNG_OUTPUT: masks}

    return serving_default, segment_png, plan


def training_provenance(model_file: Path) -> dict | None:
    """How the exported weights were trained, from the kunet run the ``.keras`` file sits in (None if not in one).

    The decision rule already travels in the model's metadata; this adds what produced the weights (weight
    map actually in the records, augmentation, optimiser and schedule, steps done) so an export can be
    reproduced or compared without the run directory.
    """
    paths = RunPaths(model_file.parent)
    if not paths.config.is_file():
        return None
    saved = json.loads(paths.config.read_text())
    pipeline = saved.get("pipeline", {})
    state = json.loads(paths.state.read_text()) if paths.state.is_file() else {}
    weight_map = saved.get("records_weight_map")
    if weight_map is None and saved.get("records"):  # runs made before config.json recorded it
        try:
            weight_map = read_manifest(saved["records"]).get("weight_map")
        except RecordsError:
            pass  # records gone or unreadable: fall back to the configured weights below
    return {
        "run": paths.root.name,
        "model_file": model_file.name,
        "run_status": state.get("status"),
        "run_steps": state.get("step"),
        "pipeline": pipeline.get("name"),
        # Without the records, only the configured weights are known (`--records` may have differed).
        "weight_map": weight_map or {"as_configured": pipeline.get("weights")},
        "augment": pipeline.get("augment"),
        "train": pipeline.get("train"),
    }


def client_info(model, settings: InferenceSettings, plan, training: dict | None = None,
                limits: ServingLimits | None = None) -> dict:  # fmt: skip
    """``assets.extra/kunet.json``: everything a client needs, without kunet."""
    period = 2**model.depth
    return {
        "format": "kunet-export-2",
        "kunet_version": kunet.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "classes": [
            {"index": i, "label_value": int(v), "name": n}
            for i, (v, n) in enumerate(zip(settings.class_values, settings.class_names))
        ],
        "input": {
            "channels": model.input_channels,
            "dtype": "float32 (raw pixel values as stored in the image files)",
            "image_dtype_trained_on": settings.image_dtype,
            "normalization": f"divide by {dtype_max(settings.image_dtype):g}, then "
            + ("per-image standardisation over the whole image" if settings.normalize == "standardize" else "none"),
            "any_size": True,
        },
        "limits": (limits or ServingLimits()).to_dict(),
        "tiling": {
            "input_tile": list(plan.input_hw),
            "output_tile": list(plan.output_hw),
            "stride": list(plan.stride_hw),
            "mirror_border": net_border(model.depth, model.padding),
            "valid_tile_sizes": f"{valid_tile_start(model.depth)} + {period}k (valid padding, depth {model.depth})",
        },
        "decision": {
            "threshold": settings.threshold,
            "rule": "p(class 1) >= threshold" if model.num_classes == 2 else "argmax",
            "postprocess": settings.postprocess,
            "seed_threshold": settings.seed_threshold,
        },
        "inference": settings.to_metadata(),
        "model": model.get_config(),
        "training": training,
        "signatures": SIGNATURES,
    }


def valid_tile_start(depth: int) -> int:
    from kunet.model import valid_input_size

    return valid_input_size(1, depth, "valid")


def sample_image(settings: InferenceSettings, channels: int) -> np.ndarray:
    """A deterministic image of the typical size for warm-up requests and checks."""
    height, width = settings.typical_size
    rng = np.random.default_rng(0)
    maximum = dtype_max(settings.image_dtype)
    return (rng.random((height, width, channels)) * maximum).astype(settings.image_dtype)


def write_warmup_requests(path: Path, name: str, settings: InferenceSettings, channels: int) -> int:
    """PredictionLog records for both signatures (TensorFlow Serving replays them before serving)."""
    from kunet.serving import client

    image = sample_image(settings, channels)
    png = tf.io.encode_png(tf.constant(image)).numpy()
    requests = [client.grpc_pixels_request(name, image), client.grpc_png_request(name, [png])]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            writer.write(client.prediction_log(request).SerializeToString())
    return len(requests)


def models_config(name: str, base_path: str) -> str:
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )


def batching_parameters(limits: ServingLimits) -> str:
    """``batching_parameters.txt`` (protobuf text format of TensorFlow Serving's BatchingParameters).

    One image per execution batch: TensorFlow Serving splits a request into single images and never
    concatenates images of different requests, so it never pads one image to another's size (with
    ``pad_variable_length_inputs`` it would pad with the first pixel value and return masks of the wrong
    size). One batch thread runs one image at a time, which bounds memory under a burst of requests; on a
    CPU one image already keeps every core busy.
    """
    return (
        "# kunet export: TensorFlow Serving batching that never changes an answer (see README.md).\n"
        f"max_batch_size {{ value: {limits.max_batch} }}\n"
        "enable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 1 }\n"
        "batch_timeout_micros { value: 0 }\n"
        "num_batch_threads { value: 1 }\n"
        f"max_enqueued_batches {{ value: {4 * limits.max_batch} }}\n"
    )


def _version_folder_for(model_root: Path, temporary: Path, version: int, explicit: bool, write_readme) -> Path:
    """Renames the finished ``temporary`` to the version folder; takes the next free number when another
    export claimed ``version`` meanwhile (an explicit ``version`` is never replaced: that is an error)."""
    while True:
        destination = model_root / str(version)
        write_readme(version)
        try:
            if destination.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(destination))
            os.rename(temporary, destination)  # fails on a non-empty folder: a racing export's version
            return destination
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if explicit:
                raise ExportError(
                    f"{destination}: version {version} already exists (versions are never overwritten)"
                ) from None
            version = max(version + 1, next_version(model_root))


def _remove_stale_exports(model_root: Path, log) -> None:
    """What killed exports left in ``model_root``: ``.export.tmp-*`` folders no running export holds a lock on,
    and ``.export-*`` folders of kunet versions that did not lock them, once they are a day old."""
    sweep_temporaries(model_root / EXPORT_FOLDER, log)
    now = time.time()
    legacy = [p for p in model_root.glob(".export-*") if now - p.stat().st_mtime >= LEGACY_STALE_SECONDS]
    for path in remove_paths(legacy):
        log(f"removed {path} (left by an interrupted export)")


def _write_version(folder: Path, model, source: Path, name: str, settings, tile_hw, batch_size, limits, log):
    """Writes the SavedModel and ``assets.extra`` into ``folder``; returns the client info."""
    log("tracing the serving graph and writing the SavedModel")
    serving_default, segment_png, plan = build_serving_functions(model, settings, tile_hw, batch_size, limits)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(names.PIXELS_SIGNATURE, serving_default)
    archive.add_endpoint(names.PNG_SIGNATURE, segment_png)
    archive.write_out(str(folder), verbose=False)
    extra = folder / "assets.extra"
    extra.mkdir(exist_ok=True)
    info = client_info(model, settings, plan, training_provenance(source), limits)
    atomic_write_json(extra / "kunet.json", info)
    log("writing warm-up requests")
    write_warmup_requests(extra / WARMUP_FILE, name, settings, model.input_channels)
    shutil.copyfile(source, extra / "unet.keras")
    return info


def export(
    model_path,
    name: str,
    base_dir="saved_models",
    version: int | None = None,
    tile_size: int = 0,
    precision: str = "float32",
    batch_size: int = 1,
    log=print,
    limits: ServingLimits | None = None,
) -> Path:
    """Exports a trained model as ``<base_dir>/<name>/<version>``; returns the version folder.

    Args:
        model_path: Run directory or ``.keras`` file.
        name: Model name (the serving URL's ``/v1/models/<name>``).
        base_dir: Export root (default ``saved_models``).
        version: Integer version; default the next free one. An existing version is an error.
        tile_size: Input tile side inside the graph; 0 picks the cheapest for the training frame size.
        precision: ``float32`` or ``mixed_bfloat16``.
        batch_size: Tiles per model call inside the graph.
        log: Prints progress lines.
        limits: Request bounds the serving graph enforces (default :class:`ServingLimits`).

    Example:
        >>> export("runs/isbi2012", "isbi")   # saved_models/isbi/1
    """
    limits = limits or ServingLimits()
    source = resolve_model_path(model_path)
    if source.suffix != ".keras":
        raise ExportError(f"{model_path}: export needs a run directory or a .keras file, not a SavedModel")
    model_root = Path(base_dir) / name
    if version is not None and (model_root / str(version)).exists():
        raise ExportError(f"{model_root / str(version)}: version {version} already exists (versions are never "
                          "overwritten)")  # fmt: skip
    log(f"loading {source}")
    loaded = keras.models.load_model(source)
    model = with_precision(loaded, precision)
    settings = InferenceSettings.from_metadata(getattr(loaded, "metadata", {}))
    if tile_size:
        tile_hw = (tile_size, tile_size)
    else:
        tile_hw = choose_tile(settings.typical_size, model.depth, model.base_filters, model.input_channels,
                              model.num_classes, model.variant).input_hw  # fmt: skip
    model_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_exports(model_root, log)
    with building_directory(model_root / EXPORT_FOLDER) as temporary:
        info = _write_version(temporary, model, source, name, settings, tile_hw, batch_size, limits, log)
        readme = temporary / "assets.extra" / "README.md"
        first_version = version if version is not None else next_version(model_root)
        destination = _version_folder_for(
            model_root, temporary, first_version, version is not None,
            lambda v: atomic_write_text(readme, serving_readme(name, v, info)),
        )  # fmt: skip
    atomic_write_text(model_root / "models.config", models_config(name, f"/models/{name}"))
    atomic_write_text(model_root / "batching_parameters.txt", batching_parameters(limits))
    atomic_write_text(model_root / "README.md", serving_readme(name, int(destination.name), info))
    tile = info["tiling"]["input_tile"]
    log(f"exported {source} -> {destination} (tile {tile[0]}x{tile[1]})")
    return destination
