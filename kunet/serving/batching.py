"""TensorFlow Serving's server-side batching, as its sources define it, to show which settings change answers.

From ``batching/batching_session.cc``, ``batching/batching_util.cc`` and ``servables/tensorflow/
bundle_factory_util.cc`` of github.com/tensorflow/serving (commit 9d981c5c, 2026-07-30); the scheduler is
TensorFlow's ``kernels/batching_util/shared_batch_scheduler.h``:

* a task (one request) larger than ``max_batch_size`` is refused (INVALID_ARGUMENT);
* with ``enable_large_batch_splitting`` tasks are split to fill batches of ``max_execution_batch_size``;
  without it a task that does not fit the open batch starts the next one;
* a batch concatenates its tasks along axis 0. With ``pad_variable_length_inputs`` every other axis is first
  padded to the batch's largest size with the tensor's *first element*; without it, differently shaped tasks
  fail the whole batch (FAILED_PRECONDITION);
* ``allowed_batch_sizes`` pad the batch axis with the last task's first row;
* outputs are split along axis 0 only, never cropped back.

Requests are modelled as arriving together (the case where batching matters); queue capacity
(``max_enqueued_batches``) and timing are not modelled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kunet.serving.rules import ServingError, invalid_argument

# message BatchingParameters of tensorflow_serving/servables/tensorflow/session_bundle_config.proto:
# (field, number, type). The message is not shipped in tensorflow-serving-api, so it is rebuilt from this
# field list to parse batching files strictly (unknown fields and wrong types are errors, as in the server).
BATCHING_PARAMETER_FIELDS = (
    ("max_batch_size", 1, "Int64Value"),
    ("batch_timeout_micros", 2, "Int64Value"),
    ("max_enqueued_batches", 3, "Int64Value"),
    ("num_batch_threads", 4, "Int64Value"),
    ("thread_pool_name", 5, "StringValue"),
    ("allowed_batch_sizes", 6, "repeated int64"),
    ("pad_variable_length_inputs", 7, "bool"),
    ("enable_large_batch_splitting", 8, "BoolValue"),
    ("max_execution_batch_size", 9, "Int64Value"),
)


def batching_parameters_class():
    """The ``tensorflow.serving.BatchingParameters`` message class, built from its field list."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    message = file.message_type.add(name="BatchingParameters")
    kinds = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in BATCHING_PARAMETER_FIELDS:
        field = message.field.add(name=name, number=number, label=kinds.LABEL_OPTIONAL)
        if kind == "repeated int64":
            field.label, field.type = kinds.LABEL_REPEATED, kinds.TYPE_INT64
        elif kind == "bool":
            field.type = kinds.TYPE_BOOL
        else:
            field.type, field.type_name = kinds.TYPE_MESSAGE, f".google.protobuf.{kind}"
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


@dataclass
class Batching:
    """The batching settings that change what a request gets back (defaults as in TensorFlow Serving)."""

    max_batch_size: int = 1000
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 1000
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    num_batch_threads: int = 0
    max_enqueued_batches: int = 10

    @classmethod
    def parse(cls, text: str) -> Batching:
        """Reads a ``--batching_parameters_file`` (protobuf text format, parsed strictly)."""
        from google.protobuf import text_format

        message = text_format.Parse(text, batching_parameters_class()())

        def value(name: str, default):
            return getattr(message, name).value if message.HasField(name) else default

        max_batch = value("max_batch_size", cls.max_batch_size)
        splitting = value("enable_large_batch_splitting", False)
        return cls(
            max_batch_size=max_batch,
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=value("max_execution_batch_size", max_batch) if splitting else max_batch,
            allowed_batch_sizes=tuple(message.allowed_batch_sizes),
            pad_variable_length_inputs=message.pad_variable_length_inputs,
            num_batch_threads=value("num_batch_threads", 0),
            max_enqueued_batches=value("max_enqueued_batches", cls.max_enqueued_batches),
        )


@dataclass
class _Piece:
    request: int  # index of the request this piece belongs to
    inputs: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


def _form_batches(batching: Batching, requests: list[dict[str, np.ndarray]], errors: dict) -> list[list[_Piece]]:
    """All requests arriving at once, in order: the batches the scheduler forms from them."""
    limit = max(1, batching.max_execution_batch_size)
    batches: list[list[_Piece]] = [[]]
    for index, inputs in enumerate(requests):
        sizes = {array.shape[0] for array in inputs.values()}
        if len(sizes) != 1:
            errors[index] = invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
            continue
        size = sizes.pop()
        if size > batching.max_batch_size:
            errors[index] = invalid_argument(
                f"Task size {size} is larger than maximum input batch size {batching.max_batch_size}"
            )
            continue
        start = 0
        while start < size:
            room = limit - sum(piece.size for piece in batches[-1])
            if room <= 0 or (not batching.enable_large_batch_splitting and size > room):
                batches.append([])
                continue
            take = min(room, size - start) if batching.enable_large_batch_splitting else size
            batches[-1].append(_Piece(index, {k: v[start : start + take] for k, v in inputs.items()}))
            start += take
    return [batch for batch in batches if batch]


def _pad_to(array: np.ndarray, shape: list[int]) -> np.ndarray:
    """batching_util.cc PadTensor: pad after each axis but the first, with the tensor's first element."""
    if list(array.shape[1:]) == shape[1:]:
        return array
    if array.size == 0:
        raise invalid_argument("Got empty tensor in batch of non-empty tensors.")
    widths = [(0, 0)] + [(0, target - size) for target, size in zip(shape[1:], array.shape[1:])]
    return np.pad(array, widths, constant_values=array.flat[0])


def _merge(batching: Batching, batch: list[_Piece]) -> tuple[dict[str, np.ndarray], int]:
    """MergeInputTensors: the batch's inputs and the number of padding rows added on axis 0."""
    size = sum(piece.size for piece in batch)
    allowed = [s for s in batching.allowed_batch_sizes if s >= size]
    padding = (allowed[0] if allowed else size) - size
    merged = {}
    for name in batch[0].inputs:
        tensors = [piece.inputs[name] for piece in batch]
        if batching.pad_variable_length_inputs:
            largest = [max(t.shape[axis] for t in tensors) for axis in range(tensors[0].ndim)]
            tensors = [_pad_to(t, largest) for t in tensors]
        elif any(t.shape[1:] != tensors[0].shape[1:] for t in tensors):
            raise ServingError(
                "FAILED_PRECONDITION",
                f"Tensors with name '{name}' from different tasks have different shapes and padding is turned off. "
                "Set pad_variable_length_inputs to true, or ensure that all tensors with the same name have equal "
                "dimensions starting with the first dim.",
            )
        tensors += [tensors[-1][:1]] * padding
        merged[name] = np.concatenate(tensors, axis=0)
    return merged, padding


def run_batched(
    batching: Batching,
    requests: list[dict[str, np.ndarray]],
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
) -> list[dict[str, np.ndarray] | ServingError]:
    """What each of ``requests`` (arriving together) gets back from a batching server running ``run``.

    Returns, per request, its outputs or the :class:`ServingError` it receives.
    """
    errors: dict[int, ServingError] = {}
    pieces: dict[int, list[dict[str, np.ndarray]]] = {}
    for batch in _form_batches(batching, requests, errors):
        try:
            merged, padding = _merge(batching, batch)
            outputs = run(merged)
        except ServingError as error:
            for piece in batch:
                errors[piece.request] = error
            continue
        start = 0
        for piece in batch:  # SplitOutputTensors: along axis 0 only
            pieces.setdefault(piece.request, []).append(
                {name: value[start : start + piece.size] for name, value in outputs.items()}
            )
            start += piece.size
    results: list[dict[str, np.ndarray] | ServingError] = []
    for index in range(len(requests)):
        if index in errors:
            results.append(errors[index])
        else:
            parts = pieces[index]
            results.append({name: np.concatenate([part[name] for part in parts], axis=0) for name in parts[0]})
    return results
