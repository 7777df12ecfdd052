"""kunet.serving.rules against TensorFlow Serving's own definitions.

The expected values are those of TensorFlow Serving's unit tests of the same functions
(``tensorflow_serving/util/json_tensor_test.cc``: FillPredictRequestFromJson, MakeJsonFromTensors) and of
its batching code (``batching/batching_session.cc``, ``batching/batching_util.cc``), so these tests check the
rules kunet relies on against the server's definition, not against kunet's reading of it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2

from kunet.serving import rules
from kunet.serving.batching import Batching, run_batched
from kunet.serving.rules import ServingError, json_from_tensors, predict_request_from_json


def _request(body: dict | str, inputs: dict[str, str]):
    text = body if isinstance(body, str) else json.dumps(body)
    return predict_request_from_json(text, "m", None, lambda signature: inputs)


def _proto(text: str):
    return text_format.Parse(text, tensor_pb2.TensorProto())


def test_row_format_stacks_instances_into_a_batch():
    request, layout = _request({"instances": [[1, 2], [3, 4], [5, 6]]}, {"default": "int32"})
    assert layout == "row"
    assert request.inputs["default"] == _proto(
        "dtype: DT_INT32 tensor_shape { dim { size: 3 } dim { size: 2 } } "
        "int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6"
    )


def test_b64_objects_become_string_elements_whatever_the_input_is_called():
    request, _ = _request({"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}, {"default": "string"})
    assert request.inputs["default"] == _proto(
        'dtype: DT_STRING tensor_shape { dim { size: 2 } } string_val: "hello" string_val: "world"'
    )
    request, _ = _request({"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}, {"default": "string"})
    assert [d.size for d in request.inputs["default"].tensor_shape.dim] == [2, 1]
    named = {"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}
    request, _ = _request(named, {"default": "string"})
    assert [d.size for d in request.inputs["default"].tensor_shape.dim] == [1, 2, 1]
    assert list(request.inputs["default"].string_val) == [b"hello", b"world"]


def test_columnar_inputs_and_several_named_inputs():
    request, layout = _request({"inputs": [[1.5, 2], [3, 4]]}, {"x": "float32"})
    assert layout == "columnar"
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["x"]), [[1.5, 2.0], [3.0, 4.0]])
    body = {"instances": [{"a": [1, 2], "b": {"b64": "dGY="}}, {"a": [3, 4], "b": {"b64": "c2VydmluZw=="}}]}
    request, _ = _request(body, {"a": "int32", "b": "string"})
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["a"]), [[1, 2], [3, 4]])
    assert list(request.inputs["b"].string_val) == [b"tf", b"serving"]


@pytest.mark.parametrize(
    ("body", "inputs", "message"),
    [
        ({"instances": [[1, 2], [3]]}, {"x": "int32"}, "Expecting tensor size"),
        ({"instances": [[1, 2], [[3, 4]]]}, {"x": "int32"}, r"Expecting shape \[2\] but got: \[1, 2\]"),
        ({"instances": [[[1], 2]]}, {"x": "int32"}, "found at incorrect level"),
        ({"instances": [[1, [2]]]}, {"x": "int32"}, "Encountered list at unexpected level"),
        ({"instances": [[1]], "inputs": [[1]]}, {"x": "int32"}, "only one of 'inputs' or 'instances'"),
        ({"signature_name": "s"}, {"x": "int32"}, "Missing 'inputs' or 'instances' key"),
        ({"instances": []}, {"x": "int32"}, "No values in 'instances' array"),
        ({"instances": [["a"]]}, {"x": "float32"}, "is not of expected type: float32"),
        ({"instances": [[1.5]]}, {"x": "int32"}, "is not of expected type: int32"),
        ({"instances": [{"b64": "aGVsbG8="}]}, {"x": "float32"}, "is not of expected type: float32"),
        ({"instances": [[1]]}, {"a": "int32", "b": "int32"}, "expecting list of objects"),
        ("[1, 2]", {"x": "int32"}, "Is not object"),
        ("{not json", {"x": "int32"}, "JSON Parse error"),
    ],
)
def test_malformed_requests_are_refused_as_invalid_argument(body, inputs, message):
    with pytest.raises(ServingError, match=message) as caught:
        _request(body, inputs)
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.http_status == 400


def test_response_json_in_row_and_columnar_layouts():
    ints = rules.as_proto_field(np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32))
    assert json.loads(json_from_tensors({"int_tensor": ints}, "row")) == {
        "predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    }
    assert json.loads(json_from_tensors({"int_tensor": ints}, "columnar"))["outputs"][1][2] == [1, 2]
    several = {
        "int_tensor": ints,
        "str_tensor": rules.as_proto_field(np.array([[b"foo", b"bar"], [b"baz", b"bat"]], object)),
        "str_tensor_bytes": rules.as_proto_field(np.array([[b"hello", b"world"], [b"tf", b"serving"]], object)),
        "float_tensor": rules.as_proto_field(np.array([[1.0], [2.0]], np.float32)),
    }
    assert json.loads(json_from_tensors(several, "row"))["predictions"][1] == {
        "int_tensor": [[7, 8], [9, 0], [1, 2]],
        "str_tensor": ["baz", "bat"],
        "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
        "float_tensor": [2.0],
    }
    assert json.loads(json_from_tensors(several, "columnar"))["outputs"]["str_tensor_bytes"][0] == [
        {"b64": "aGVsbG8="},
        {"b64": "d29ybGQ="},
    ]


def test_floats_are_written_with_six_digits_unless_that_loses_the_value():
    values = np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32)
    body = json_from_tensors({"f": rules.as_proto_field(values)}, "row")
    assert body == b'{"predictions":[[9e+06,999999.0,0.5],[0.0003,3e-05,555557.5]]}'
    special = json_from_tensors({"f": rules.as_proto_field(np.array([[np.nan, np.inf], [3, -np.inf]], np.float32))})
    assert special == b'{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'


def test_binary_string_output_is_only_valid_json_when_its_name_ends_in_bytes():
    png = tf.io.encode_png(np.arange(64, dtype=np.uint8).reshape(8, 8, 1)).numpy()
    raw = json_from_tensors({"png": rules.as_proto_field(np.array([png], object))})
    with pytest.raises(UnicodeDecodeError):
        json.loads(raw)  # what kunet's old `png` output gave REST clients
    named = json_from_tensors({"mask_png_bytes": rules.as_proto_field(np.array([png], object))})
    import base64

    assert base64.b64decode(json.loads(named)["predictions"][0]["b64"]) == png


def test_predict_checks_the_request_names_exactly_the_signatures_inputs():
    request, _ = _request({"instances": [[1]]}, {"x": "int32"})
    with pytest.raises(ServingError, match=r"input size does not match signature: 1!=2.*Missing but required: \{y\}"):
        rules.request_arrays(request, {"x": "int32", "y": "int32"})
    with pytest.raises(ServingError, match="Expects arg"):
        rules.request_arrays(request, {"x": "float32"})


# --- batching -----------------------------------------------------------------------------------------


def test_batching_files_are_parsed_strictly_as_batching_parameters():
    text = (
        "max_batch_size { value: 8 }\nenable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 1 }\nnum_batch_threads { value: 1 }\n"
        "allowed_batch_sizes: 1\npad_variable_length_inputs: false\n# a comment\n"
    )
    batching = Batching.parse(text)
    assert (batching.max_batch_size, batching.max_execution_batch_size, batching.allowed_batch_sizes) == (8, 1, (1,))
    assert Batching.parse("max_batch_size { value: 4 }").max_execution_batch_size == 4  # splitting off
    with pytest.raises(text_format.ParseError):
        Batching.parse("max_batch_size: 4")  # a wrapper message, not a scalar
    with pytest.raises(text_format.ParseError):
        Batching.parse("max_batch_sise { value: 4 }")


def _echo(inputs):
    """A model that returns its input and the sum of each example: shows padding and mixing in answers."""
    images = inputs["images"]
    return {"echo": images, "total": images.reshape(len(images), -1).sum(axis=1)}


def _image(height, width, value):
    return {"images": np.full((1, height, width, 1), value, np.float32)}


def test_padding_returns_answers_of_the_wrong_size_and_without_it_mixed_sizes_fail_together():
    requests = [_image(4, 4, 1.0), _image(4, 8, 2.0)]
    padded = run_batched(Batching(max_batch_size=4, max_execution_batch_size=4, pad_variable_length_inputs=True),
                         requests, _echo)  # fmt: skip
    assert padded[0]["echo"].shape == (1, 4, 8, 1)  # the 4x4 request comes back 4x8, padded with its first value
    assert padded[0]["total"][0] == 32.0 != 16.0
    unpadded = run_batched(Batching(max_batch_size=4, max_execution_batch_size=4), requests, _echo)
    assert all(isinstance(r, ServingError) and r.code == "FAILED_PRECONDITION" for r in unpadded)


def test_splitting_into_single_image_batches_never_changes_an_answer():
    requests = [_image(4, 4, 1.0), {"images": np.arange(3 * 32, dtype=np.float32).reshape(3, 4, 8, 1)},
                _image(5, 3, 7.0)]  # fmt: skip
    batching = Batching(max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=1)
    for got, request in zip(run_batched(batching, requests, _echo), requests):
        expected = _echo(request)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_allowed_batch_sizes_pad_the_batch_axis_and_the_padding_is_dropped():
    calls = []

    def recording(inputs):
        calls.append(len(inputs["images"]))
        return _echo(inputs)

    requests = [_image(4, 4, float(i)) for i in range(3)]
    results = run_batched(Batching(max_batch_size=4, max_execution_batch_size=4, allowed_batch_sizes=(4,)),
                          requests, recording)  # fmt: skip
    assert calls == [4]
    assert [r["total"][0] for r in results] == [0.0, 16.0, 32.0]


def test_a_request_larger_than_max_batch_size_is_refused():
    (result,) = run_batched(Batching(max_batch_size=2), [{"images": np.zeros((3, 2, 2, 1), np.float32)}], _echo)
    assert result.code == "INVALID_ARGUMENT"
    assert result.message == "Task size 3 is larger than maximum input batch size 2"
