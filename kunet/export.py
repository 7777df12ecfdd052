"""``kunet export``: SavedModels for TensorFlow Serving with the overlap-tile strategy inside the graph.

Layout (the TensorFlow Serving convention; a version folder that is not an integer is ignored)::

    saved_models/<name>/
      models.config              model_config_list for tensorflow_model_server --model_config_file
      batching_parameters.txt    for --enable_batching --batching_parameters_file
      README.md                  docker / tensorflow_model_server command lines, REST and gRPC examples
      <version>/
        saved_model.pb, variables/, assets/
        assets.extra/kunet.json                  what a client needs without kunet
        assets.extra/tf_serving_warmup_requests  PredictionLog records (--enable_model_warmup)
        assets.extra/unet.keras                  the Keras model, for Keras users
        assets.extra/README.md                   the same README

Signatures:

* ``serving_default``: ``images`` float32 [B, H, W, C] of any H, W, raw pixel values as stored in the
  image files -> ``probabilities`` float32 [B, H, W, K], ``labels`` int32 [B, H, W] in the dataset's own
  label values, ``classes`` int32 [B, H, W] class indices. Normalisation, mirror padding, tiling and
  stitching all happen in the graph.
* ``segment_png``: ``png`` string [B] (encoded PNGs; REST clients send ``{"b64": ...}``) -> ``png``
  string [B], masks encoded as PNG in the dataset's label values (e.g. 0 = membrane, 255 = cell).

A version is written to a temporary folder and renamed into place only when complete; an existing
version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import kunet
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
from kunet.train import RunPaths

WARMUP_FILE = "tf_serving_warmup_requests"


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


def build_serving_functions(model, settings: InferenceSettings, tile_hw, batch_size: int = 1):
    """The two signature functions (serving_default, segment_png) around ``model``."""
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
        probabilities = tf.map_fn(one_image, images, fn_output_signature=tf.float32, parallel_iterations=1)
        classes = _decision(probabilities, settings)
        return probabilities, classes, tf.gather(class_values, classes)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32, name="images")])
    def serving_default(images):
        probabilities, classes, labels = segment(images)
        return {"probabilities": probabilities, "labels": labels, "classes": classes}

    png_dtype = tf.uint16 if max(settings.class_values) > 255 else tf.uint8
    image_dtype = tf.as_dtype(settings.image_dtype)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="png")])
    def segment_png(png):
        def one(encoded):
            image = tf.cast(tf.io.decode_png(encoded, channels=channels, dtype=image_dtype), tf.float32)
            _, _, labels = segment(image[None])
            return tf.io.encode_png(tf.cast(labels[0][..., None], png_dtype))

        return {"png": tf.map_fn(one, png, fn_output_signature=tf.string, parallel_iterations=1)}

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


def client_info(model, settings: InferenceSettings, plan, training: dict | None = None) -> dict:
    """``assets.extra/kunet.json``: everything a client needs, without kunet."""
    period = 2**model.depth
    return {
        "format": "kunet-export-1",
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
        "signatures": {
            "serving_default": {
                "inputs": {"images": "float32 [B, H, W, C]"},
                "outputs": {
                    "probabilities": "float32 [B, H, W, K]",
                    "labels": "int32 [B, H, W] label values",
                    "classes": "int32 [B, H, W] class indices",
                },
            },
            "segment_png": {"inputs": {"png": "string [B] PNG bytes"}, "outputs": {"png": "string [B] PNG masks"}},
        },
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
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    image = sample_image(settings, channels)
    png = tf.io.encode_png(tf.constant(image)).numpy()
    requests = [
        ("serving_default", {"images": tf.make_tensor_proto(image[None].astype(np.float32))}),
        ("segment_png", {"png": tf.make_tensor_proto([png], dtype=tf.string)}),
    ]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
            for key, proto in inputs.items():
                request.inputs[key].CopyFrom(proto)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(requests)


def serving_readme(name: str, version: int, info: dict) -> str:
    height, width = 512, 512
    return f"""# {name} (kunet export, version {version})

A U-Net SavedModel for TensorFlow Serving. Tiling, mirror padding and normalisation run inside the graph:
send whole images of any size in raw pixel values, get whole masks back.
Exported with TensorFlow {info["tensorflow_version"]}: serve it with TensorFlow Serving >= {info["tensorflow_version"]}
(a SavedModel from a newer TF can fail in an older Serving binary).

## Serve

```sh
docker run --rm -p 8500:8500 -p 8501:8501 \\
  -v "$PWD/saved_models/{name}:/models/{name}" -e MODEL_NAME={name} \\
  tensorflow/serving:{info["tensorflow_version"]} --enable_model_warmup=true

tensorflow_model_server --port=8500 --rest_api_port=8501 \\
  --model_config_file=saved_models/{name}/models.config --enable_model_warmup=true \\
  --enable_batching --batching_parameters_file=saved_models/{name}/batching_parameters.txt
```
(`models.config` names `base_path: "/models/{name}"`; edit it to the absolute path outside Docker.)

## REST

```sh
# raw pixels -> probabilities, labels, classes
curl -X POST localhost:8501/v1/models/{name}:predict \\
  -d '{{"signature_name": "serving_default", "instances": [[[[0.0], ...]]]}}'   # one [H][W][C] image

# PNG in, PNG mask out (label values {[c["label_value"] for c in info["classes"]]})
curl -X POST localhost:8501/v1/models/{name}:predict \\
  -d "{{\\"signature_name\\": \\"segment_png\\", \\"instances\\": [{{\\"b64\\": \\"$(base64 -w0 image.png)\\"}}]}}"
```
The response's `predictions[0]` is `{{"b64": "..."}}`: base64-decode it to get the mask PNG.

## gRPC (Python)

```python
import grpc, tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:8500"))
request = predict_pb2.PredictRequest()
request.model_spec.name = "{name}"
request.model_spec.signature_name = "segment_png"
request.inputs["png"].CopyFrom(tf.make_tensor_proto([open("image.png", "rb").read()]))
mask_png = stub.Predict(request, 60.0).outputs["png"].string_val[0]
```

## Without a server

```python
import tensorflow as tf
model = tf.saved_model.load("saved_models/{name}/{version}")
out = model.signatures["serving_default"](images=tf.zeros([1, {height}, {width}, {info["input"]["channels"]}]))
```
`assets.extra/kunet.json` lists classes, label values, normalisation and tiling; `assets.extra/unet.keras`
is the same net for Keras users (`keras.models.load_model` after `import kunet.model`).
"""


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


BATCHING_PARAMETERS = """max_batch_size { value: 4 }
batch_timeout_micros { value: 2000 }
num_batch_threads { value: 2 }
max_enqueued_batches { value: 16 }
pad_variable_length_inputs: true
"""


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_text(text)
    os.replace(temporary, path)


def export(
    model_path,
    name: str,
    base_dir="saved_models",
    version: int | None = None,
    tile_size: int = 0,
    precision: str = "float32",
    batch_size: int = 1,
    log=print,
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
    """
    source = resolve_model_path(model_path)
    if source.suffix != ".keras":
        raise ExportError(f"{model_path}: export needs a run directory or a .keras file, not a SavedModel")
    loaded = keras.models.load_model(source)
    model = with_precision(loaded, precision)
    settings = InferenceSettings.from_metadata(getattr(loaded, "metadata", {}))
    if tile_size:
        tile_hw = (tile_size, tile_size)
    else:
        tile_hw = choose_tile(settings.typical_size, model.depth, model.base_filters, model.input_channels,
                              model.num_classes, model.variant).input_hw  # fmt: skip
    model_root = Path(base_dir) / name
    version = version if version is not None else next_version(model_root)
    destination = model_root / str(version)
    if destination.exists():
        raise ExportError(f"{destination}: version {version} already exists (versions are never overwritten)")
    model_root.mkdir(parents=True, exist_ok=True)
    temporary = model_root / f".export-{uuid.uuid4().hex[:8]}"
    try:
        serving_default, segment_png, plan = build_serving_functions(model, settings, tile_hw, batch_size)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", serving_default)
        archive.add_endpoint("segment_png", segment_png)
        archive.write_out(str(temporary), verbose=False)
        extra = temporary / "assets.extra"
        extra.mkdir(exist_ok=True)
        info = client_info(model, settings, plan, training_provenance(source))
        (extra / "kunet.json").write_text(json.dumps(info, indent=2))
        write_warmup_requests(extra / WARMUP_FILE, name, settings, model.input_channels)
        shutil.copyfile(source, extra / "unet.keras")
        readme = serving_readme(name, version, info)
        (extra / "README.md").write_text(readme)
        if destination.exists():  # another export took this version meanwhile
            raise ExportError(f"{destination}: version {version} appeared while exporting")
        os.rename(temporary, destination)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _write_text_atomically(model_root / "models.config", models_config(name, f"/models/{name}"))
    _write_text_atomically(model_root / "batching_parameters.txt", BATCHING_PARAMETERS)
    _write_text_atomically(model_root / "README.md", serving_readme(name, version, info))
    log(f"exported {source} -> {destination} (tile {plan.input_hw[0]}x{plan.input_hw[1]})")
    return destination


# --- checking an export in a fresh process ------------------------------------------------------------

_CHECK_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

path = sys.argv[1]
loaded = tf.saved_model.load(path)
report = {"signatures": {}}
for key, function in loaded.signatures.items():
    inputs = {k: [v.dtype.name, v.shape.as_list()] for k, v in function.structured_input_signature[1].items()}
    outputs = {k: [v.dtype.name, v.shape.as_list()] for k, v in function.structured_outputs.items()}
    report["signatures"][key] = {"inputs": inputs, "outputs": outputs}
warmups = 0
for record in tf.data.TFRecordDataset(path + "/assets.extra/tf_serving_warmup_requests"):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    outputs = loaded.signatures[request.model_spec.signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
    warmups += 1
    if request.model_spec.signature_name == "serving_default":
        np.save(sys.argv[2], outputs["probabilities"].numpy()[0])
        image = inputs["images"][0]
report["warmup_requests"] = warmups
print(json.dumps(report))
"""


def check(export_dir, log=print) -> dict:
    """Validates an export in a fresh Python process: signatures, warm-up requests, and agreement with
    ``kunet predict`` (the exported ``unet.keras`` through the Python overlap-tile path) on a sample image.
    """
    from kunet.segmenter import Segmenter

    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").is_file():
        raise ExportError(f"{export_dir}: not a SavedModel version folder (no saved_model.pb)")
    with tempfile_path(".npy") as probabilities_path:
        result = subprocess.run(
            [sys.executable, "-c", _CHECK_SCRIPT, str(export_dir), str(probabilities_path)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            raise ExportError(f"{export_dir}: loading in a fresh process failed:\n{result.stderr[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        served = np.load(probabilities_path)
    missing = {"serving_default", "segment_png"} - set(report["signatures"])
    if missing:
        raise ExportError(f"{export_dir}: missing signatures {sorted(missing)}")
    info = json.loads((export_dir / "assets.extra" / "kunet.json").read_text())
    settings = InferenceSettings.from_metadata(info["inference"])
    image = sample_image(settings, info["input"]["channels"])
    reference = Segmenter(export_dir / "assets.extra" / "unet.keras").probabilities(image)
    difference = float(np.abs(served - reference).max())
    report["max_probability_difference_vs_predict"] = difference
    report["masks_identical"] = bool(
        np.array_equal(served[..., -1] >= settings.threshold, reference[..., -1] >= settings.threshold)
    )
    for key, signature in report["signatures"].items():
        log(f"signature {key}: inputs {signature['inputs']} -> outputs {signature['outputs']}")
    log(f"warm-up requests replayed: {report['warmup_requests']}")
    log(f"max |p_export - p_predict| = {difference:.2e}; masks identical: {report['masks_identical']}")
    if difference > 1e-3:
        raise ExportError(f"{export_dir}: exported model disagrees with kunet predict (max diff {difference:.3g})")
    return report


class tempfile_path:
    """A temporary file path removed on exit (the file itself is created by someone else)."""

    def __init__(self, suffix: str):
        import tempfile

        self.path = Path(tempfile.mkdtemp(prefix="kunet-check-")) / f"out{suffix}"

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path.parent, ignore_errors=True)
