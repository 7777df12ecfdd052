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

``base_dir`` may be a remote URI (``gs://bucket/models``; any ``tf.io.gfile`` scheme). The version is then
built in a local temporary folder and uploaded file by file with ``saved_model.pb`` last, under a
``.kunet-incomplete`` marker (object stores cannot rename a folder atomically): TensorFlow Serving, which
loads a version through its ``saved_model.pb``, never loads a partial one, but it does see the version folder
during the upload (it fails to load it and keeps serving the previous version until the upload completes).
Version numbers come from listing the model folder and there is no lock, so two exports racing to one remote
model folder may pick the same number; the second then fails before uploading (one exporter at a time).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import kunet
from kunet import uris
from kunet._fs import (
    atomic_write_json,
    atomic_write_text,
    building_directory,
    commit_remote_directory,
    remove_paths,
    sweep_temporaries,
)
from kunet.decision import DecisionRule
from kunet.errors import KunetError
from kunet.inference import InferenceSettings
from kunet.preprocess import dtype_max, dtype_shift, normalization
from kunet.progress import Stages
from kunet.records import RecordsError, read_manifest
from kunet.runs import read_run_config, read_state, resolve_model_path, run_of
from kunet.segmenter import load_unet, with_precision
from kunet.serving.graph import SIGNATURES, ServingGraph
from kunet.serving.readme import serving_readme
from kunet.serving.signatures import ServingLimits
from kunet.tiling import TilingOptions, net_border, plan_for_tile, plan_tiles

WARMUP_FILE = "tf_serving_warmup_requests"
# Versions are built in a hidden, locked ``.export.tmp-*`` folder beside them (kunet._fs.building_directory).
EXPORT_FOLDER = "export"
# Older kunet versions built in unlocked ``.export-*`` folders: one a day old belongs to a killed export.
LEGACY_STALE_SECONDS = 24 * 3600


class ExportError(KunetError):
    """An export that cannot be written or does not check out; the message names the path."""


def next_version(model_root: Path | str) -> int:
    """One more than the highest integer version folder in ``model_root`` (local or remote), or 1."""
    return max((int(entry) for entry in uris.listdir(model_root) if entry.isdigit()), default=0) + 1


def export_source(model_path) -> Path | str:
    """The ``.keras`` file a run directory or ``.keras`` path names (an export cannot be exported again).

    Raises:
        ExportError: ``model_path`` is a SavedModel.
    """
    source = resolve_model_path(model_path)
    if not uris.name(source).endswith(".keras"):
        raise ExportError(f"{model_path}: export needs a run directory or a .keras file, not a SavedModel")
    return source


def load_for_export(source, precision: str) -> tuple[object, InferenceSettings]:
    """The U-Net of the ``.keras`` file ``source`` in ``precision``, and its inference settings."""
    loaded = load_unet(source)
    return with_precision(loaded, precision), InferenceSettings.from_metadata(getattr(loaded, "metadata", {}))


def serving_graph(
    model, settings: InferenceSettings, tiling: TilingOptions, limits: ServingLimits | None = None
) -> ServingGraph:
    """The graph every exported signature is built from, tiling with ``tiling``'s tile (or rule's choice for
    the frame size the model was trained on)."""
    tile_hw = plan_tiles(settings.typical_size, model, tiling).input_hw
    plan = plan_for_tile(settings.typical_size, tile_hw, model.depth)
    return ServingGraph(model, settings, plan, tiling.batch_size, limits or ServingLimits())


def build_serving_functions(graph: ServingGraph) -> dict:
    """The registered signatures' functions around ``graph`` (name -> ``tf.function``)."""
    return {signature.name: signature.build(graph) for signature in SIGNATURES.values()}


def training_provenance(model_file: Path | str) -> dict | None:
    """How the exported weights were trained, from the kunet run the ``.keras`` file sits in (None if not in one).

    The decision rule already travels in the model's metadata; this adds what produced the weights (weight
    map actually in the records, augmentation, optimiser and schedule, steps done) so an export can be
    reproduced or compared without the run directory.
    """
    paths = run_of(model_file)
    if paths is None:
        return None
    saved = read_run_config(paths.root)
    pipeline = saved["pipeline"]
    state = read_state(paths)
    weight_map = saved.get("records_weight_map")
    if weight_map is None:  # runs made before config.json recorded it
        try:
            weight_map = read_manifest(saved["records"]).get("weight_map")
        except RecordsError:
            pass  # records gone or unreadable: fall back to the configured weights below
    return {
        "run": uris.name(paths.root),
        "model_file": uris.name(model_file),
        "run_status": state.get("status"),
        "run_steps": state.get("step"),
        "best_metric": state.get("best_metric"),
        "best_value": state.get("best_value"),
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
            "normalization": f"{_unit_description(settings.image_dtype)}, then "
            f"{normalization(settings.normalize, settings).description or settings.normalize}",
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
            "rule": DecisionRule.of(settings).describe(model.num_classes),
            "postprocess": settings.postprocess,
            "seed_threshold": settings.seed_threshold,
            "seed_smoothing": settings.seed_smoothing,
        },
        "inference": settings.to_metadata(),
        "model": model.get_config(),
        "training": training,
        "signatures": {signature.name: signature.describe() for signature in SIGNATURES.values()},
    }


def valid_tile_start(depth: int) -> int:
    from kunet.model import valid_input_size

    return valid_input_size(1, depth, "valid")


def sample_image(settings: InferenceSettings, channels: int) -> np.ndarray:
    """A deterministic image of the typical size for warm-up requests and checks."""
    height, width = settings.typical_size
    rng = np.random.default_rng(0)
    dtype = np.dtype(settings.image_dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.random((height, width, channels)).astype(dtype)
    return rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (height, width, channels), endpoint=True, dtype=dtype)


def _unit_description(image_dtype: str) -> str:
    """How the graph brings raw pixel values of the training dtype to [0, 1] (kunet.preprocess.raw_to_unit)."""
    if dtype_shift(image_dtype):
        return f"add {dtype_shift(image_dtype):g}, divide by {dtype_max(image_dtype):g}"
    return f"divide by {dtype_max(image_dtype):g}"


def write_warmup_requests(path: Path, name: str, settings: InferenceSettings, channels: int) -> int:
    """PredictionLog records, one request per signature (TensorFlow Serving replays them before serving)."""
    from kunet.serving import client

    image = sample_image(settings, channels)
    requests = [client.predict_request(name, key, signature.warmup(image)) for key, signature in SIGNATURES.items()]
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


def _partial_remote_versions(model_root: str) -> list[str]:
    """Version folders without ``saved_model.pb``: uploads that were cut short (or are running now)."""
    versions = [uris.join(model_root, entry) for entry in uris.listdir(model_root) if entry.isdigit()]
    return [version for version in versions if not uris.exists(uris.join(version, "saved_model.pb"))]


def _export_remote(model_root: str, version: int | None, write, readme, log, stage) -> tuple[str, dict]:
    """Builds a version in a local temporary folder with ``write(folder) -> info`` and uploads it to the next
    free version of the remote ``model_root`` (``version`` if given), ``saved_model.pb`` last."""
    uris.makedirs(model_root)
    for partial in _partial_remote_versions(model_root):
        log(f"{partial}: no saved_model.pb (an upload that was cut short, or one running now); "
            "TensorFlow Serving cannot load it: delete it once no export is running")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kunet-export-") as scratch:
        folder = Path(scratch) / "version"
        folder.mkdir()
        info = write(folder)
        number = version if version is not None else next_version(model_root)
        destination = uris.join(model_root, str(number))
        if uris.exists(destination):
            raise ExportError(f"{destination}: version {number} already exists (another export wrote it meanwhile; "
                              "versions are never overwritten)")  # fmt: skip
        atomic_write_text(folder / "assets.extra" / "README.md", readme(number, info))
        stage(f"uploading to {destination} (saved_model.pb last)")
        commit_remote_directory(folder, destination, markers=["saved_model.pb"])
    return destination, info


def _write_version(folder: Path, graph: ServingGraph, source: Path | str, name: str, stage):
    """Writes the SavedModel and ``assets.extra`` into ``folder``; returns the client info."""
    stage("tracing the serving graph and writing the SavedModel")
    model, settings, plan, limits = graph.model, graph.settings, graph.plan, graph.limits
    functions = build_serving_functions(graph)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for key, function in functions.items():
        archive.add_endpoint(key, function)
    archive.write_out(str(folder), verbose=False)
    extra = folder / "assets.extra"
    extra.mkdir(exist_ok=True)
    info = client_info(model, settings, plan, training_provenance(source), limits)
    atomic_write_json(extra / "kunet.json", info)
    stage("writing warm-up requests")
    write_warmup_requests(extra / WARMUP_FILE, name, settings, model.input_channels)
    if uris.is_remote(source):
        uris.copy(source, extra / "unet.keras", overwrite=True)
    else:
        shutil.copyfile(source, extra / "unet.keras")
    return info


def _export_local(model_root: Path, version: int | None, write, name: str, log) -> tuple[Path, dict]:
    """Builds a version in a locked temporary folder beside the versions and renames it into place."""
    model_root.mkdir(parents=True, exist_ok=True)
    _remove_stale_exports(model_root, log)
    with building_directory(model_root / EXPORT_FOLDER) as temporary:
        info = write(temporary)
        readme = temporary / "assets.extra" / "README.md"
        first_version = version if version is not None else next_version(model_root)
        destination = _version_folder_for(
            model_root, temporary, first_version, version is not None,
            lambda v: atomic_write_text(readme, serving_readme(name, v, info)),
        )  # fmt: skip
    return destination, info


def export(
    model_path,
    name: str,
    base_dir="saved_models",
    version: int | None = None,
    tiling: TilingOptions | None = None,
    precision: str = "float32",
    log=print,
    limits: ServingLimits | None = None,
) -> Path | str:
    """Exports a trained model as ``<base_dir>/<name>/<version>``; returns the version folder (a string for a
    remote ``base_dir``).

    Args:
        model_path: Run directory or ``.keras`` file.
        name: Model name (the serving URL's ``/v1/models/<name>``).
        base_dir: Export root (default ``saved_models``), or a remote URI such as ``gs://bucket/models``
            (see the module docstring for what is atomic there).
        version: Integer version; default the next free one. An existing version is an error.
        tiling: The tile inside the graph (``tile_size``, or chosen by ``rule`` for the frame size the
            model was trained on) and tiles per model call.
        precision: ``float32``, ``mixed_bfloat16`` or ``auto``.
        log: Receives the progress lines (numbered, timed stages: :class:`kunet.progress.Stages`) and warnings.
        limits: Request bounds the serving graph enforces (default :class:`ServingLimits`).

    Example:
        >>> export("runs/isbi2012", "isbi")   # saved_models/isbi/1
    """
    source = export_source(model_path)
    model_root = uris.join(base_dir, name)
    if version is not None and uris.exists(uris.join(model_root, str(version))):
        raise ExportError(f"{uris.join(model_root, str(version))}: version {version} already exists (versions are "
                          "never overwritten)")  # fmt: skip
    stages = Stages(log, total=4 if uris.is_remote(model_root) else 3)
    stages(f"loading {source}")
    model, settings = load_for_export(source, precision)
    graph = serving_graph(model, settings, tiling or TilingOptions(), limits)

    def write(folder: Path) -> dict:
        return _write_version(folder, graph, source, name, stages)

    if uris.is_remote(model_root):
        destination, info = _export_remote(
            model_root, version, write, lambda v, info: serving_readme(name, v, info), log, stages
        )
    else:
        destination, info = _export_local(model_root, version, write, name, log)
    atomic_write_text(uris.join(model_root, "models.config"), models_config(name, f"/models/{name}"))
    atomic_write_text(uris.join(model_root, "batching_parameters.txt"), batching_parameters(graph.limits))
    atomic_write_text(uris.join(model_root, "README.md"), serving_readme(name, int(uris.name(destination)), info))
    tile = info["tiling"]["input_tile"]
    stages.done(f"exported {source} -> {destination} (tile {tile[0]}x{tile[1]})")
    return destination
