"""``kunet export --format bioimageio``: a BioImage Model Zoo package of a trained model.

Fiji (deepImageJ), ilastik, napari and QuPath load models as bioimage.io packages: a zip holding a
``bioimageio.yaml`` description (model spec 0.5), the weights, test tensors, documentation and a cover.
kunet's package holds:

* ``tf_saved_model_bundle.zip`` — a TensorFlow SavedModel whose ``serve`` endpoint takes raw pixel values
  float32 ``[B, Y, X, C]`` of any size (at least ``2**depth``) and returns ``{"probabilities": [B, Y, X, K]}``.
  Normalisation, mirror padding and the overlap-tile strategy run inside the graph, as in the TensorFlow
  Serving export (:class:`kunet.serving.graph.ServingGraph`), so the description declares no preprocessing but
  a cast to float32 and the output has the input's size;
* ``test_input.npy``/``test_output.npy`` — a frame of the run's validation records (or a synthetic image) and
  the probabilities this very SavedModel computes for it;
* ``README.md`` — usage, the decision rule to turn probabilities into a mask, the paper's citation and how
  the weights were trained (the run's provenance, as ``kunet.json`` of an export has it);
* ``cover.png`` — the test image beside its prediction;
* ``unet.keras`` — the Keras model itself (an attachment: a valid-padding net wants sizes and normalisation
  that the description's single input does not describe, so it is not a second weights entry).

The zip is written to a temporary file and renamed when complete; an existing package is never replaced.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import kunet
from kunet import uris, visualize
from kunet._fs import atomic_write_bytes
from kunet.decision import DecisionRule
from kunet.errors import KunetError
from kunet.imageio import encode_png
from kunet.inference import InferenceSettings
from kunet.progress import Stages
from kunet.runs import resolve_model_path
from kunet.serving.export import export_source, load_for_export, sample_image, serving_graph, training_provenance
from kunet.serving.signatures import ServingLimits
from kunet.tiling import TilingOptions

FORMAT_VERSION = "0.5.4"  # bioimage.io model spec; readers of any later 0.5.x read it
WEIGHTS_FILE = "tf_saved_model_bundle.zip"
ENDPOINT = "serve"  # the endpoint bioimageio.core's TensorFlow 2 adapter calls (keras.layers.TFSMLayer)
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
PAPER = {
    "text": "Ronneberger, O., Fischer, P. and Brox, T. U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
# Test tensors larger than this are cropped: the package's own test runs the model on them.
TEST_IMAGE_SIDE = 256


class PackageError(KunetError):
    """A bioimage.io package that cannot be written; the message names the file."""


@dataclass
class PackageInfo:
    """What the description says about the model (``[package]`` of the pipeline TOML, or flags).

    Args:
        name: Human-readable model name.
        description: One or two sentences.
        authors: Names of the people who made the model (at least one).
        tags: Search words (``segmentation``, ``unet``, the modality, the organism...).
        license: SPDX identifier of the weights' licence.
        documentation: Extra Markdown put into README.md (e.g. the data set and its source).
    """

    name: str
    description: str = ""
    authors: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=lambda: ["segmentation", "unet", "kunet"])
    license: str = "CC-BY-4.0"
    documentation: str = ""


def package_info(model_path, flags: dict) -> PackageInfo:
    """The ``[package]`` settings of the run the model belongs to, with the non-empty ``flags`` on top.

    The name defaults to the pipeline's name (or the model file's stem outside a run).
    """
    from kunet.runs import read_run_config, run_of

    source = resolve_model_path(model_path)
    settings: dict = {}
    paths = run_of(source)
    if paths is not None:
        pipeline = read_run_config(paths.root)["pipeline"]
        settings = {key: value for key, value in pipeline.get("package", {}).items() if value}
        settings.setdefault("name", pipeline.get("name", ""))
    settings |= {key: value for key, value in flags.items() if value}
    settings.setdefault("name", Path(uris.name(source)).stem)
    return PackageInfo(**settings)


def _serving_function(model, settings: InferenceSettings, tiling: TilingOptions, limits: ServingLimits | None):
    graph = serving_graph(model, settings, tiling, limits)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, model.input_channels], tf.float32, name=INPUT_ID)])
    def serve(raw):
        probabilities, _, _ = graph.segment(raw)
        return {OUTPUT_ID: probabilities}

    return serve


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _test_image(model_path, settings: InferenceSettings, channels: int) -> np.ndarray:
    """A validation frame of the run's records (cropped to :data:`TEST_IMAGE_SIDE`), else a synthetic image."""
    from kunet.records import RecordsError, iterate_frames
    from kunet.runs import read_run_config, run_of

    paths = run_of(model_path)
    if paths is not None:
        try:
            records = read_run_config(paths.root)["records"]
            for frame in iterate_frames(records, "val"):
                image = np.asarray(frame["image"])
                image = image if image.ndim == 3 else image[..., None]
                return image[:TEST_IMAGE_SIDE, :TEST_IMAGE_SIDE]
        except (RecordsError, KeyError, OSError):
            pass  # records moved or gone: a synthetic image still tests the package
    image = sample_image(settings, channels)
    return image[:TEST_IMAGE_SIDE, :TEST_IMAGE_SIDE]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe(info: PackageInfo, model, settings: InferenceSettings, files: dict[str, bytes]) -> dict:
    """The ``bioimageio.yaml`` content (model spec 0.5) for the files of the package."""
    space_in = [{"id": axis, "type": "space", "size": {"min": 2**model.depth, "step": 1}} for axis in ("y", "x")]
    space_out = [{"id": axis, "type": "space", "size": {"tensor_id": INPUT_ID, "axis_id": axis}} for axis in ("y", "x")]
    channels_in = [f"channel{i}" for i in range(model.input_channels)]
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": info.name,
        "description": info.description or f"U-Net (Ronneberger et al. 2015) trained with kunet: {info.name}",
        "authors": [{"name": author} for author in info.authors],
        "cite": [PAPER],
        "license": info.license,
        "tags": list(info.tags),
        "documentation": {"source": "README.md", "sha256": _sha256(files["README.md"])},
        "covers": [{"source": "cover.png", "sha256": _sha256(files["cover.png"])}],
        "attachments": [{"source": "unet.keras", "sha256": _sha256(files["unet.keras"])}],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [
            {
                "id": INPUT_ID,
                "description": "raw pixel values as stored in the image files (normalised inside the model)",
                "axes": [{"type": "batch"}, *space_in, {"type": "channel", "channel_names": channels_in}],
                "test_tensor": {"source": "test_input.npy", "sha256": _sha256(files["test_input.npy"])},
                "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": "class probabilities (softmax over the classes); the mask is "
                + _decision_text(model, settings),
                "axes": [
                    {"type": "batch"},
                    *space_out,
                    {"type": "channel", "channel_names": [str(name) for name in settings.class_names]},
                ],
                "test_tensor": {"source": "test_output.npy", "sha256": _sha256(files["test_output.npy"])},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "tensorflow_saved_model_bundle": {
                "source": WEIGHTS_FILE,
                "sha256": _sha256(files[WEIGHTS_FILE]),
                "tensorflow_version": tf.__version__,
                "authors": [{"name": author} for author in info.authors],
            }
        },
        "config": {
            "kunet": {
                "version": kunet.__version__,
                "keras_version": keras.__version__,
                "inference": settings.to_metadata(),
            }
        },  # fmt: skip
    }


def _decision_text(model, settings: InferenceSettings) -> str:
    if DecisionRule.of(settings).border_class:
        return f"1 - probability of class {settings.class_names[0]!r} >= {settings.threshold:g}"
    if model.num_classes == 2:
        return f"probability of class {settings.class_names[1]!r} >= {settings.threshold:g}"
    return "the most probable class"


def _readme(info: PackageInfo, model, settings: InferenceSettings, training: dict | None) -> str:
    lines = [
        f"# {info.name}",
        "",
        info.description or "A U-Net for microscopy segmentation, trained with kunet.",
        "",
        "## Use",
        "",
        f"Input `{INPUT_ID}`: raw pixel values, float32 `[batch, y, x, channel]` with {model.input_channels} "
        f"channel(s), any size of at least {2**model.depth} x {2**model.depth} pixels. Normalisation "
        f"({settings.normalize}), mirrored borders and the overlap-tile strategy run inside the model.",
        f"Output `{OUTPUT_ID}`: float32 `[batch, y, x, class]`, the input's size; classes "
        + ", ".join(
            f"{i} = {name!r} (label value {value})"
            for i, (name, value) in enumerate(zip(settings.class_names, settings.class_values))
        )  # fmt: skip
        + ".",
        f"The mask: {_decision_text(model, settings)}"
        + (f", then {settings.postprocess} post-processing in kunet" if settings.postprocess != "none" else "")
        + ".",
        "",
        "In Fiji (deepImageJ), ilastik or napari: install the package's zip as a bioimage.io model and run it on",
        "an image. With kunet: `kunet predict unet.keras image.tif` (the attached Keras model).",
        "",
        "## Cite",
        "",
        f"{PAPER['text']} doi:{PAPER['doi']}",
        "",
        "## Training",
        "",
        f"Trained with kunet {kunet.__version__} (TensorFlow {tf.__version__}, Keras {keras.__version__}).",
    ]
    if info.documentation:
        lines += ["", info.documentation]
    lines += ["", "## Validation", "", _validation_text(training)]
    if training:
        lines += ["", "```json", json.dumps(training, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def _validation_text(training: dict | None) -> str:
    if not training or training.get("best_value") is None:
        return "No validation scores travel with this model (it was not exported from a kunet run)."
    return (f"Best validation {training['best_metric']} during training: {training['best_value']:.4f} (kunet's "
            "definitions: `kunet evaluate` prints every score). The package's test tensors are reproduced by "
            "`bioimageio test`.")  # fmt: skip


def to_yaml(value, indent: int = 0) -> str:
    """YAML for the description's dicts, lists, strings and numbers (strings JSON-quoted: valid YAML 1.2)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        out = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                out.append(f"{pad}{key}: {to_yaml(item)}")
        return "\n".join(out)
    if isinstance(value, list):
        if not value:
            return "[]"
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 2)
                out.append(f"{pad}- {body.lstrip()}")
            else:
                out.append(f"{pad}- {to_yaml(item)}")
        return "\n".join(out)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(str(value))


def write_package(
    model_path,
    out: str | os.PathLike,
    info: PackageInfo,
    tiling: TilingOptions | None = None,
    precision: str = "float32",
    log=print,
    limits: ServingLimits | None = None,
) -> Path:
    """Writes the bioimage.io package of a run or ``.keras`` file to the zip ``out``; returns its path.

    Raises:
        PackageError: ``out`` exists, or no author is given (the model zoo requires one).
    """
    out = Path(out)
    if out.exists():
        raise PackageError(f"{out}: exists; packages are never replaced (choose another --out)")
    if not info.authors:
        raise PackageError(f"{out}: a bioimage.io package needs at least one author (--author NAME)")
    stages = Stages(log, total=3)
    source = export_source(model_path)
    stages(f"loading {source}")
    model, settings = load_for_export(source, precision)
    serve = _serving_function(model, settings, tiling or TilingOptions(), limits)
    stages("tracing the model and writing the SavedModel")
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="kunet-bioimageio-") as scratch:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(ENDPOINT, serve)
        archive.write_out(str(Path(scratch) / "saved_model"), verbose=False)
        files[WEIGHTS_FILE] = _zip_folder(Path(scratch) / "saved_model")
    stages("computing the test tensors and the cover")
    image = _test_image(source, settings, model.input_channels)
    test_input = image.astype(np.float32)[None]
    probabilities = serve(tf.constant(test_input))[OUTPUT_ID].numpy()
    files["test_input.npy"], files["test_output.npy"] = _npy(test_input), _npy(probabilities)
    predicted = DecisionRule.of(settings).classes(probabilities[0])
    overlay = visualize.overlay_prediction(image, predicted)
    files["cover.png"] = encode_png(np.concatenate([visualize.to_display(image), overlay], axis=1))
    files["unet.keras"] = uris.read_bytes(source)
    files["README.md"] = _readme(info, model, settings, training_provenance(source)).encode()
    files["bioimageio.yaml"] = (to_yaml(describe(info, model, settings, files)) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
        for name in ("bioimageio.yaml", *sorted(set(files) - {"bioimageio.yaml"})):
            package.writestr(name, files[name])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    stages.done(f"wrote {out} (bioimage.io model spec {FORMAT_VERSION})")
    return out
