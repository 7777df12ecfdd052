"""TensorFlow Serving's rules for Predict requests and responses, as its own sources define them.

The ``tensorflow_model_server`` binary cannot be installed where kunet is developed (not on PyPI or in Debian,
no Docker engine). So what TensorFlow Serving does with a request is written down here from its sources
(github.com/tensorflow/serving, read at commit 9d981c5c of 2026-07-30) and applied with the real protos of
``tensorflow-serving-api``; ``kunet export --check`` and the tests check exports and clients against it.

* REST JSON -> tensors (``util/json_tensor.cc``, FillPredictRequestFromJson): ``instances`` (row format: one
  element per example, stacked on a new batch axis; objects keyed by input name when the signature has several
  inputs) or ``inputs`` (columnar); ``{"b64": ...}`` is base64-decoded into a DT_STRING element; DT_FLOAT takes
  any JSON number, integer types only integers; NaN and Infinity literals are accepted.
* tensors -> REST JSON (MakeJsonFromTensors): ``predictions`` (row; an object per example keyed by output name
  when there are several outputs) or ``outputs`` (columnar). A DT_STRING output is written as ``{"b64": ...}``
  only when its name ends in ``_bytes``, otherwise raw, byte for byte. Floats are written with 6 significant
  digits when that reads back to the same float, else with 9; NaN, Infinity, -Infinity as literals.
* Predict (``servables/tensorflow/predict_util.cc``): the request must name exactly the signature's inputs;
  responses carry typed value fields (``float_val``, ``int_val``, ``string_val``: kAsProtoField).
* Errors (``model_servers/http_server.cc``, ``util/json_tensor.cc``): REST answers ``{"error": message}``,
  INVALID_ARGUMENT and FAILED_PRECONDITION as HTTP 400, NOT_FOUND 404, UNAVAILABLE 503, INTERNAL 500.
* Batching: :mod:`kunet.serving.batching`.

One module (about 400 lines) because it is one translation of one file pair, JSON <-> tensors, whose
directions share the type table and the error wording; split, each half would need the other's.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable

import numpy as np

# Codes of google.rpc / tensorflow::error, by number (tf.errors.OpError.error_code).
STATUS_CODES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}  # fmt: skip
# model_servers/http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503,
    "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}  # fmt: skip
# model_servers/http_rest_api_util.cc kPredictionApiGegex.
PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
BYTES_SUFFIX = "_bytes"  # kBytesTensorNameSuffix

# Numeric TensorProto value fields by dtype (kAsProtoField), and what JSON each dtype accepts.
_VALUE_FIELDS = {
    "float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val", "int8": "int_val",
    "uint8": "int_val", "int64": "int64_val", "bool": "bool_val", "string": "string_val",
}  # fmt: skip
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int16": (-(2**31), 2**31 - 1), "int8": (-(2**31), 2**31 - 1),
               "uint8": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}  # fmt: skip


class ServingError(Exception):
    """An error TensorFlow Serving would answer with: a status code name and its message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def rest_body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


def invalid_argument(message: str) -> ServingError:
    """An INVALID_ARGUMENT error (HTTP 400)."""
    return ServingError("INVALID_ARGUMENT", message)


def _debug(value) -> str:
    return json.dumps(value)[:256]


def _dtype_name(dtype) -> str:
    import tensorflow as tf

    return tf.as_dtype(dtype).name


# --- REST request JSON -> PredictRequest -------------------------------------------------------------


def _dense_shape(value) -> list[int]:
    """GetDenseTensorShape: the shape read along the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _add_value(value, dtype: str, values: list) -> None:
    """AddValueToTensor: one JSON scalar appended to the tensor's values, if its JSON type fits ``dtype``."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in ("float32", "float64") and is_number:
        values.append(float(value))
    elif dtype in _INT_RANGES and isinstance(value, int) and not isinstance(value, bool):
        low, high = _INT_RANGES[dtype]
        if not low <= value <= high:
            raise invalid_argument(f"JSON Value: {_debug(value)} Type: Number is not of expected type: {dtype}")
        values.append(value)
    elif dtype == "bool" and isinstance(value, bool):
        values.append(value)
    elif dtype == "string" and isinstance(value, str):
        values.append(value.encode("utf-8"))
    elif dtype not in _VALUE_FIELDS:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: {_debug(value)} to type: {dtype}")
    else:
        raise invalid_argument(f"JSON Value: {_debug(value)} is not of expected type: {dtype}")


def _fill(value, level: int, shape: list[int], dtype: str, values: list) -> int:
    """FillTensorProto: appends the leaves of ``value`` (checked against ``shape``); returns how many."""
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(
                f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        if isinstance(value, dict):
            if dtype != "string":
                raise invalid_argument(f"JSON Value: {_debug(value)} Type: Object is not of expected type: {dtype}")
            if not _is_b64(value):
                raise invalid_argument(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
            try:
                values.append(base64.b64decode(value["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise invalid_argument("Unable to base64 decode") from None
        else:
            _add_value(value, dtype, values)
        return 1
    if level >= len(shape):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    return sum(_fill(item, level + 1, shape, dtype, values) for item in value)


def _tensor_proto(dtype: str, shape: list[int], values: list):
    """A TensorProto with typed value fields, as TensorFlow Serving's JSON conversion builds it."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    proto = tensor_pb2.TensorProto(
        dtype=tf.as_dtype(dtype).as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": size} for size in shape]),
    )
    getattr(proto, _VALUE_FIELDS.get(dtype, "float_val")).extend(values)
    return proto


def _instances(instances: list, input_dtypes: dict[str, str]) -> dict:
    """FillTensorMapFromInstancesList: row format."""
    names = sorted(input_dtypes)
    first = instances[0]
    if not isinstance(first, dict) and len(names) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    objects = isinstance(first, dict) and not _is_b64(first)
    values: dict[str, list] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add(item, name: str, index: int) -> None:
        if name not in input_dtypes:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        count = _fill(item, 0, shape, input_dtypes[name], values.setdefault(name, []))
        if name not in sizes:
            sizes[name], shapes[name] = count, shape
        elif sizes[name] != count:
            where = f"Failed to process element: {index} of 'instances' list. Error:"
            raise invalid_argument(f"{where} Expecting tensor size: {sizes[name]} but got: {count}")
        elif shapes[name] != shape:
            where = f"Failed to process element: {index} of 'instances' list. Error:"
            raise invalid_argument(f"{where} Expecting shape {shapes[name]} but got: {shape}")

    for index, element in enumerate(instances):
        is_object = isinstance(element, dict) and not _is_b64(element)
        if objects != is_object:
            raise invalid_argument(f"Expecting {'object' if objects else 'value/list'} at item {index} of input list")
        if objects:
            for name, item in element.items():
                add(item, name, index)
            if set(element) != set(names):
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                               f"{_debug(element)} keys must be equal to: {','.join(names)}")  # fmt: skip
        else:
            add(element, names[0], index)
    return {name: _tensor_proto(input_dtypes[name], [len(instances), *shapes[name]], values[name]) for name in values}


def _columnar(inputs, input_dtypes: dict[str, str]) -> dict:
    """FillTensorMapFromInputsMap: columnar format."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(input_dtypes) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                           "required as per tensorinfo_map")  # fmt: skip
        inputs = {next(iter(input_dtypes)): inputs}
    tensors = {}
    for name, dtype in sorted(input_dtypes.items()):
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        shape = _dense_shape(inputs[name])
        values: list = []
        _fill(inputs[name], 0, shape, dtype, values)
        tensors[name] = _tensor_proto(dtype, shape, values)
    return tensors


def predict_request_from_json(
    body: bytes | str, model_name: str, version: int | None, input_dtypes_of: Callable[[str], dict[str, str]]
):
    """FillPredictRequestFromJson: a REST body -> (``PredictRequest``, ``"row"`` or ``"columnar"``).

    Args:
        body: The HTTP request body.
        model_name: From the URL.
        version: From the URL (``/versions/N``), or None.
        input_dtypes_of: Signature name (``""`` for the default) -> ``{input name: dtype name}``.
    """
    from tensorflow_serving.apis import predict_pb2

    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from None
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {_debug(document)} Is not object")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    if version is not None:
        request.model_spec.version.value = version
    signature = document.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid_argument("'signature_name' key must be a string value.")
    request.model_spec.signature_name = signature
    input_dtypes = input_dtypes_of(signature)
    if "instances" in document and "inputs" in document:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise invalid_argument("Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument("No values in 'instances' array")
        tensors, layout = _instances(instances, input_dtypes), "row"
    elif "inputs" in document:
        tensors, layout = _columnar(document["inputs"], input_dtypes), "columnar"
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    for name, proto in tensors.items():
        request.inputs[name].CopyFrom(proto)
    return request, layout


# --- Predict: request tensors in, typed response tensors out -------------------------------------------


def request_arrays(request, signature_inputs: dict[str, str]) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, checked against the signature as TensorFlow Serving checks them."""
    import tensorflow as tf

    sent, expected = set(request.inputs), set(signature_inputs)
    if sent != expected:
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sorted(sent))}}}) "
            f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    arrays = {}
    for name, proto in request.inputs.items():
        dtype = _dtype_name(proto.dtype)
        if dtype != signature_inputs[name]:
            raise invalid_argument(f"Expects arg[{name}] to be {signature_inputs[name]} but {dtype} is provided")
        arrays[name] = tf.make_ndarray(proto)
    return arrays


def as_proto_field(array: np.ndarray):
    """Tensor::AsProtoField: a response TensorProto with typed value fields (what TensorFlow Serving sends)."""
    array = np.asarray(array)
    dtype = "string" if array.dtype.kind in "OSU" else array.dtype.name
    flat = array.ravel().tolist()
    return _tensor_proto(dtype, list(array.shape), flat)


# --- response tensors -> REST JSON -------------------------------------------------------------------


def _decimal(value: float) -> bytes:
    """WriteDecimal: 6 significant digits if they read back to the same float32, else 9; '.0' on whole numbers."""
    value = np.float32(value)
    if np.isnan(value):
        return b"NaN"
    if np.isinf(value):
        return b"-Infinity" if value < 0 else b"Infinity"
    text = f"{float(value):.6g}"
    if np.float32(float(text)) != value:
        text = f"{float(value):.9g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text.encode()


_ESCAPES = {ord('"'): b'\\"', ord("\\"): b"\\\\", 8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r"}


def _raw_string(data: bytes) -> bytes:
    """rapidjson's Writer::String: quotes, backslashes and control characters escaped, other bytes as they are
    (no UTF-8 validation), which is why binary data in a string not named ``*_bytes`` yields invalid JSON."""
    out = bytearray(b'"')
    for byte in data:
        if byte in _ESCAPES:
            out += _ESCAPES[byte]
        elif byte < 0x20:
            out += b"\\u%04X" % byte
        else:
            out.append(byte)
    return bytes(out + b'"')


def _scalar(value, dtype: str, as_bytes: bool) -> bytes:
    if dtype == "string":
        if as_bytes:
            return b'{"b64":"' + base64.b64encode(value) + b'"}'
        return _raw_string(value)
    if dtype in ("float32", "float64"):
        return _decimal(value)
    if dtype == "bool":
        return b"true" if value else b"false"
    return str(int(value)).encode()


def _values(array, dtype: str, as_bytes: bool) -> bytes:
    """AddTensorValues: nested JSON lists down to the scalars (items of string arrays are plain bytes)."""
    if isinstance(array, np.ndarray) and array.ndim > 0:
        return b"[" + b",".join(_values(item, dtype, as_bytes) for item in array) + b"]"
    return _scalar(array.item() if isinstance(array, (np.ndarray, np.generic)) else array, dtype, as_bytes)


def json_from_tensors(outputs: dict, layout: str = "row") -> bytes:
    """MakeJsonFromTensors: response tensors (TensorProtos) -> REST response body, as bytes.

    The result is what the server sends; it is not always valid JSON (a DT_STRING output whose name lacks the
    ``_bytes`` suffix is written raw).
    """
    import tensorflow as tf

    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    arrays = {name: tf.make_ndarray(proto) for name, proto in sorted(outputs.items())}
    dtypes = {name: _dtype_name(proto.dtype) for name, proto in outputs.items()}
    several = len(arrays) > 1

    def encode(name: str, array) -> bytes:
        return _values(array, dtypes[name], dtypes[name] == "string" and name.endswith(BYTES_SUFFIX))

    if layout == "columnar":
        if not several:
            ((name, array),) = arrays.items()
            return b'{"outputs":' + encode(name, array) + b"}"
        parts = [json.dumps(name).encode() + b":" + encode(name, array) for name, array in arrays.items()]
        return b'{"outputs":{' + b",".join(parts) + b"}}"
    batch_sizes = set()
    for name, array in arrays.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        batch_sizes.add(array.shape[0])
    if len(batch_sizes) > 1:
        raise invalid_argument(f"Tensor outputs have inconsistent batch sizes {sorted(batch_sizes)}")
    rows = []
    for index in range(batch_sizes.pop()):
        if several:
            items = [json.dumps(name).encode() + b":" + encode(name, array[index]) for name, array in arrays.items()]
            rows.append(b"{" + b",".join(items) + b"}")
        else:
            ((name, array),) = arrays.items()
            rows.append(encode(name, array[index]))
    return b'{"predictions":[' + b",".join(rows) + b"]}"
