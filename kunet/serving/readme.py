"""The README written beside every export: exact commands for TensorFlow Serving and its clients.

Every shell and Python block under "Requests" is run by the tests against a stand-in applying TensorFlow
Serving's rules (tests/test_serving.py), with only the host and port replaced. The signature list is written
from the export's own description (``kunet.json``), so a newly registered signature appears by itself.
"""

from __future__ import annotations

README_TEMPLATE = """# {name} (kunet export, version {version})

A U-Net SavedModel for TensorFlow Serving. Tiling, mirror padding, normalisation and the decision rule run
inside the graph: send whole images of any size in raw pixel values, get whole masks back.
Exported with TensorFlow {tf_version}: serve it with TensorFlow Serving >= {tf_version}
(a SavedModel from a newer TF can fail in an older Serving binary).

## Serve

```sh
docker run --rm -p 8500:8500 -p 8501:8501 \\
  -v "$PWD/saved_models/{name}:/models/{name}" -e MODEL_NAME={name} \\
  tensorflow/serving:{tf_version} --enable_model_warmup=true

tensorflow_model_server --port=8500 --rest_api_port=8501 \\
  --model_config_file=saved_models/{name}/models.config --enable_model_warmup=true \\
  --enable_batching --batching_parameters_file=saved_models/{name}/batching_parameters.txt
```
(`models.config` names `base_path: "/models/{name}"`; edit it to the absolute path outside Docker.)

## Signatures

{signatures}

Label values {label_values}; {channels} input channel(s). String tensors end in `_bytes`, so the REST API sends and
returns them as `{{"b64": "..."}}`.

Limits (set by `kunet export --max-pixels/--max-batch`): at most {max_pixels} pixels per image and
{max_batch} images per request. Larger requests, PNGs whose header declares a larger image (checked
before decoding), non-PNG data and images holding NaN or infinity are refused with INVALID_ARGUMENT
(HTTP 400) and a message saying which bound was hit.

## Requests

PNG in, PNG mask out, with curl (the response's `predictions[0]` is `{{"b64": "..."}}`):

```sh
curl -s -X POST localhost:8501/v1/models/{name}:predict \\
  -d "{{\\"signature_name\\": \\"segment_png\\", \\"instances\\": [{{\\"b64\\": \\"$(base64 -w0 image.png)\\"}}]}}" \\
  | python3 -c 'import base64, json, sys
open("mask.png", "wb").write(base64.b64decode(json.load(sys.stdin)["predictions"][0]["b64"]))'
```

Python, REST, standard library only:

```python
import base64, json, urllib.request

png = base64.b64encode(open("image.png", "rb").read()).decode()
body = {{"signature_name": "segment_png", "instances": [{{"b64": png}}]}}
request = urllib.request.Request("http://localhost:8501/v1/models/{name}:predict", json.dumps(body).encode())
reply = json.load(urllib.request.urlopen(request, timeout=600))
open("mask.png", "wb").write(base64.b64decode(reply["predictions"][0]["b64"]))
```

Python, gRPC (`pip install tensorflow-serving-api`):

```python
import grpc, tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

channel = grpc.insecure_channel("localhost:8500", options=[("grpc.max_receive_message_length", 1 << 30)])
stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
request = predict_pb2.PredictRequest()
request.model_spec.name = "{name}"
request.model_spec.signature_name = "segment_png"
request.inputs["png_bytes"].CopyFrom(tf.make_tensor_proto([open("image.png", "rb").read()]))
reply = stub.Predict(request, 600.0)
open("mask.png", "wb").write(reply.outputs["mask_png_bytes"].string_val[0])
```

Raw pixels in, labels and probabilities out, with kunet's clients (any image size; gRPC carries large
images far more compactly than REST's JSON):

```python
import cv2
from kunet.serving.client import GrpcClient, RestClient

image = cv2.imread("image.png", cv2.IMREAD_UNCHANGED)
for client in (RestClient("http://localhost:8501/v1/models/{name}"), GrpcClient("grpc://localhost:8500/{name}")):
    result = client.predict(image)           # {{"probabilities": [H, W, K], "labels": [H, W], "classes": [H, W]}}
    cv2.imwrite("labels.png", result["labels"].astype("uint8" if max({label_values}) < 256 else "uint16"))
```
or from a shell: `kunet serve-request http://localhost:8501/v1/models/{name} image.png --out mask.png`
(`grpc://localhost:8500/{name}` for gRPC; `--signature serving_default` to send raw pixels).

## Batching

`batching_parameters.txt` never changes an answer: requests are split into single images
(`enable_large_batch_splitting`, `max_execution_batch_size: 1`), so images of different requests are never
concatenated, and one batch thread runs one image at a time, which bounds memory when many requests arrive
at once. It does not make serving faster: the graph runs the images of a batch one after another and one
image already keeps a CPU busy. Do not set `pad_variable_length_inputs`: TensorFlow Serving would pad
smaller images with their first pixel value to the largest image of the batch and return masks of the wrong
size with changed labels. Without padding, a larger `max_execution_batch_size` makes requests of different
image sizes fail together (FAILED_PRECONDITION) whenever they share a batch.

## Without a server

```python
import tensorflow as tf
model = tf.saved_model.load("saved_models/{name}/{version}")
out = model.signatures["serving_default"](images=tf.zeros([1, 512, 512, {channels}]))
```
`assets.extra/kunet.json` lists classes, label values, normalisation, limits, tiling and signatures;
`assets.extra/unet.keras` is the same net for Keras users (`keras.models.load_model` after `import kunet.model`).
"""


def _signature_lines(signatures: dict) -> str:
    lines = []
    for key, parts in signatures.items():
        inputs = "; ".join(f"`{name}` {text}" for name, text in parts["inputs"].items())
        outputs = "; ".join(f"`{name}` {text}" for name, text in parts["outputs"].items())
        lines.append(f"- `{key}`: {inputs} ->\n  {outputs}")
    return "\n".join(lines)


def serving_readme(name: str, version: int, info: dict) -> str:
    """The README of version ``version`` of the model ``name`` whose ``kunet.json`` is ``info``."""
    return README_TEMPLATE.format(
        name=name,
        version=version,
        tf_version=info["tensorflow_version"],
        signatures=_signature_lines(info["signatures"]),
        label_values=[c["label_value"] for c in info["classes"]],
        channels=info["input"]["channels"],
        max_pixels=info["limits"]["max_pixels"],
        max_batch=info["limits"]["max_batch"],
    )
