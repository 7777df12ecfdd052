"""Clients for kunet exports served by TensorFlow Serving: REST (standard library) and gRPC.

Both send one image per request and return what ``kunet predict`` computes for it: ``segment_png`` sends a
PNG file and returns the mask as a PNG file; ``predict`` sends raw pixel values of any size and returns
``probabilities`` [H, W, K], ``labels`` [H, W] (the dataset's label values) and ``classes`` [H, W].

Model addresses are URLs: ``http://host:8501/v1/models/<name>[/versions/<n>]`` for REST,
``grpc://host:8500/<name>[/versions/<n>]`` for gRPC.

Example:
    >>> client = client_for("http://localhost:8501/v1/models/isbi")
    >>> mask_png = client.segment_png(open("slice.png", "rb").read())
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np

from kunet.errors import KunetError
from kunet.serving import signatures as names

GRPC_MAX_MESSAGE_BYTES = 1 << 30  # gRPC's default 4 MB is less than one 512x512 probability map
_REST_URL = re.compile(r"^(https?://[^/]+)/v1/models/([^/:]+)(?:/versions/(\d+))?/?$")
_GRPC_URL = re.compile(r"^grpc://([^/]+)/([^/:]+)(?:/versions/(\d+))?/?$")


class ServingRequestError(KunetError):
    """A request the server refused or could not answer; the message is the server's."""


@dataclass(frozen=True)
class ModelAddress:
    protocol: str  # "rest" or "grpc"
    host: str  # "http://host:port" for REST, "host:port" for gRPC
    name: str
    version: int | None = None

    @classmethod
    def parse(cls, url: str) -> ModelAddress:
        for protocol, pattern in (("rest", _REST_URL), ("grpc", _GRPC_URL)):
            match = pattern.match(url)
            if match:
                host, name, version = match.groups()
                return cls(protocol, host, name, int(version) if version else None)
        raise ServingRequestError(
            f"{url}: not a model URL (http://HOST:8501/v1/models/NAME[/versions/N] or grpc://HOST:8500/NAME)"
        )


def as_batch(image: np.ndarray) -> np.ndarray:
    """One image [H, W] or [H, W, C] as a float32 batch [1, H, W, C] in raw pixel values."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ServingRequestError(f"expected one image [H, W] or [H, W, C], got shape {image.shape}")
    return image[None].astype(np.float32)


# --- request bodies ----------------------------------------------------------------------------------


def rest_png_body(pngs: list[bytes]) -> dict:
    """REST row-format body for ``segment_png``: one ``{"b64": ...}`` per PNG file."""
    return {
        "signature_name": names.PNG_SIGNATURE,
        "instances": [{"b64": base64.b64encode(png).decode("ascii")} for png in pngs],
    }


def rest_pixels_body(image: np.ndarray) -> dict:
    """REST row-format body for ``serving_default``: the image as nested lists [H][W][C]."""
    return {"signature_name": names.PIXELS_SIGNATURE, "instances": as_batch(image).tolist()}


def predict_request(name: str, signature: str, inputs: dict[str, np.ndarray], version: int | None = None, outputs=()):
    """A gRPC ``PredictRequest``: ``inputs`` (name -> array; object arrays of bytes for strings) to ``signature``;
    ``outputs`` limits which outputs come back."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, array in inputs.items():
        dtype = tf.string if np.asarray(array).dtype == object else None
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
    request.output_filter.extend(outputs)
    return request


def grpc_png_request(name: str, pngs: list[bytes], version: int | None = None):
    """``PredictRequest`` for ``segment_png``."""
    return predict_request(name, names.PNG_SIGNATURE, {names.PNG_INPUT: np.array(list(pngs), object)}, version)


def grpc_pixels_request(name: str, image: np.ndarray, version: int | None = None, outputs=()):
    """``PredictRequest`` for ``serving_default``; ``outputs`` limits which outputs come back."""
    return predict_request(name, names.PIXELS_SIGNATURE, {names.IMAGES: as_batch(image)}, version, outputs)


def prediction_log(request):
    """A ``PredictionLog`` holding ``request`` (the record format of TensorFlow Serving's warm-up file)."""
    from tensorflow_serving.apis import prediction_log_pb2

    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


# --- responses ---------------------------------------------------------------------------------------


def png_array(data: bytes) -> np.ndarray:
    """A PNG file's pixels in their stored dtype (8- or 16-bit), gray as [H, W]."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ServingRequestError("the server's answer is not a readable PNG file")
    return array


def _pixel_outputs(arrays: dict) -> dict[str, np.ndarray]:
    dtypes = {names.PROBABILITIES: np.float32, names.LABELS: np.int32, names.CLASSES: np.int32}
    return {key: np.asarray(value, dtypes.get(key)) for key, value in arrays.items()}


def decode_rest_png(reply: dict) -> list[bytes]:
    """The mask PNG files of a ``segment_png`` REST reply (one output, so each prediction is its value)."""
    return [base64.b64decode(prediction["b64"]) for prediction in reply["predictions"]]


def decode_rest_pixels(reply: dict) -> dict[str, np.ndarray]:
    """Outputs of the first image of a ``serving_default`` REST reply (several outputs: objects by name)."""
    return _pixel_outputs(reply["predictions"][0])


def decode_grpc_png(response) -> list[bytes]:
    return list(response.outputs[names.MASK_PNG_OUTPUT].string_val)


def decode_grpc_pixels(response) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return _pixel_outputs({key: tf.make_ndarray(proto)[0] for key, proto in response.outputs.items()})


# --- clients -----------------------------------------------------------------------------------------


class RestClient:
    """TensorFlow Serving's REST API (``POST .../v1/models/<name>:predict``), standard library only.

    Args:
        url: ``http://host:8501/v1/models/<name>[/versions/<n>]``.
        timeout: Seconds to wait for an answer.
    """

    def __init__(self, url: str, timeout: float = 600.0):
        address = ModelAddress.parse(url)
        if address.protocol != "rest":
            raise ServingRequestError(f"{url}: not a REST model URL (http://...)")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(
            f"{self.url}:predict", json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise ServingRequestError(f"{self.url}: HTTP {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise ServingRequestError(f"{self.url}: {error.reason}") from None

    def segment_png(self, png: bytes) -> bytes:
        """The mask of one PNG file, as a PNG file."""
        return decode_rest_png(self._post(rest_png_body([png])))[0]

    def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """``probabilities``, ``labels`` and ``classes`` of one raw image."""
        return decode_rest_pixels(self._post(rest_pixels_body(image)))


class GrpcClient:
    """TensorFlow Serving's gRPC ``PredictionService`` (``tensorflow-serving-api``).

    Args:
        url: ``grpc://host:8500/<name>[/versions/<n>]``.
        timeout: Seconds to wait for an answer.
    """

    def __init__(self, url: str, timeout: float = 600.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.address = ModelAddress.parse(url)
        if self.address.protocol != "grpc":
            raise ServingRequestError(f"{url}: not a gRPC model URL (grpc://...)")
        self.url = url
        self.timeout = timeout
        limits = [("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
                  ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES)]  # fmt: skip
        self.channel = grpc.insecure_channel(self.address.host, options=limits)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def _predict(self, request):
        import grpc

        try:
            return self.stub.Predict(request, self.timeout)
        except grpc.RpcError as error:
            raise ServingRequestError(f"{self.url}: {error.code().name}: {error.details()}") from None

    def segment_png(self, png: bytes) -> bytes:
        """The mask of one PNG file, as a PNG file."""
        request = grpc_png_request(self.address.name, [png], self.address.version)
        return decode_grpc_png(self._predict(request))[0]

    def predict(self, image: np.ndarray, outputs=()) -> dict[str, np.ndarray]:
        """``probabilities``, ``labels`` and ``classes`` of one raw image (or only ``outputs``)."""
        request = grpc_pixels_request(self.address.name, image, self.address.version, outputs)
        return decode_grpc_pixels(self._predict(request))


def client_for(url: str, timeout: float = 600.0) -> RestClient | GrpcClient:
    """The client for a model URL: REST for ``http(s)://``, gRPC for ``grpc://``."""
    if ModelAddress.parse(url).protocol == "rest":
        return RestClient(url, timeout)
    return GrpcClient(url, timeout)
