"""A local stand-in for TensorFlow Serving that answers Predict requests on a kunet export by its rules.

The real ``tensorflow_model_server`` cannot run where kunet is developed, so this process loads an export
with TensorFlow's own SavedModel loader and speaks TensorFlow Serving's two protocols over real sockets:
REST (``POST /v1/models/<name>[/versions/<n>]:predict``, ``GET /v1/models/<name>``) and gRPC
(``tensorflow.serving.PredictionService/Predict``), converting requests and responses exactly as
:mod:`kunet.serving.rules` writes down from TensorFlow Serving's sources, and replaying the export's warm-up
requests at load as ``--enable_model_warmup`` does. Clients, the README's commands and ``kunet export
--check`` are tested against it. It is a test fixture, not a server for production: no model reloading,
no version policies, no batching over time.

Usage::

    python -m kunet.serving.standin serve saved_models/isbi --rest-port 8501 --grpc-port 8500
    python -m kunet.serving.standin check saved_models/isbi/3 --out /tmp/check
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from kunet.errors import KunetError
from kunet.serving import client
from kunet.serving import signatures as names
from kunet.serving.rules import (
    PREDICT_PATH,
    STATUS_CODES,
    ServingError,
    as_proto_field,
    json_from_tensors,
    predict_request_from_json,
    request_arrays,
)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


@dataclass
class Signature:
    function: object
    inputs: dict[str, str]  # name -> dtype name
    outputs: dict[str, str]


class StandIn:
    """One model: a version folder, or a model folder whose highest integer version is served by default.

    Args:
        base_path: ``saved_models/<name>`` or ``saved_models/<name>/<version>``.
        name: The model name requests must use (default: the model folder's name).
    """

    def __init__(self, base_path: str | Path, name: str | None = None):
        base_path = Path(base_path)
        if (base_path / "saved_model.pb").is_file():
            self.versions = {int(base_path.name) if base_path.name.isdigit() else 1: base_path}
            default_name = base_path.parent.name
        else:
            self.versions = {int(p.name): p for p in base_path.iterdir() if p.name.isdigit()}
            default_name = base_path.name
        if not self.versions:
            raise KunetError(f"{base_path}: no SavedModel version folders")
        self.name = name or default_name
        self._loaded: dict[int, dict[str, Signature]] = {}
        self._objects: dict[int, object] = {}  # the loaded SavedModels, which own the variables
        self.warmup_requests = {version: self._load(version) for version in self.versions}

    def _load(self, version: int) -> int:
        """Loads a version and replays its warm-up requests (as TF Serving does before serving it)."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        loaded = self._objects[version] = tf.saved_model.load(str(self.versions[version]))
        self._loaded[version] = {
            key: Signature(
                function,
                {k: v.dtype.name for k, v in function.structured_input_signature[1].items()},
                {k: v.dtype.name for k, v in function.structured_outputs.items()},
            )
            for key, function in loaded.signatures.items()
        }
        replayed = 0
        warmup = self.versions[version] / WARMUP_FILE
        if warmup.is_file():
            for record in tf.data.TFRecordDataset(str(warmup)):
                log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
                self._run(version, log.predict_log.request)
                replayed += 1
        return replayed

    def describe(self, version: int | None = None) -> dict:
        """``{signature: {"inputs": {name: dtype}, "outputs": {name: dtype}}}``."""
        signatures = self._loaded[version or max(self.versions)]
        return {key: {"inputs": s.inputs, "outputs": s.outputs} for key, s in signatures.items()}

    def _signature(self, version: int, key: str) -> Signature:
        key = key or names.PIXELS_SIGNATURE
        signature = self._loaded[version].get(key)
        if signature is None:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
        return signature

    def _version(self, request) -> int:
        if request.model_spec.name != self.name:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({request.model_spec.name})")
        if not request.model_spec.HasField("version"):
            return max(self.versions)
        version = request.model_spec.version.value
        if version not in self.versions:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({self.name}, {version})")
        return version

    def predict(self, request):
        """A gRPC ``PredictRequest`` -> ``PredictResponse``; raises :class:`ServingError` as the server would."""
        return self._run(self._version(request), request)

    def _run(self, version: int, request):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        signature_key = request.model_spec.signature_name or names.PIXELS_SIGNATURE
        signature = self._signature(version, signature_key)
        arrays = request_arrays(request, signature.inputs)
        wanted = list(request.output_filter) or sorted(signature.outputs)
        for alias in wanted:
            if alias not in signature.outputs:
                raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {alias}")
        try:
            outputs = signature.function(**{key: tf.constant(value) for key, value in arrays.items()})
        except tf.errors.OpError as error:
            raise ServingError(STATUS_CODES.get(error.error_code, "UNKNOWN"), error.message) from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature_key
        for alias in wanted:
            response.outputs[alias].CopyFrom(as_proto_field(outputs[alias].numpy()))
        return response

    def rest(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """One HTTP request -> (status, body), as TensorFlow Serving's REST handler answers it."""
        try:
            if method == "GET":
                return 200, self._status(path)
            match = PREDICT_PATH.fullmatch(path)
            if method != "POST" or not match:
                raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
            name, version, label, verb = match.groups()
            if verb != "predict" or label:
                raise ServingError("UNIMPLEMENTED", f"the stand-in answers only :predict by version, not {path}")
            request, layout = predict_request_from_json(
                body, name, int(version) if version else None, self._input_dtypes_for(name, version)
            )
            response = self.predict(request)
            return 200, json_from_tensors(dict(response.outputs), layout)
        except ServingError as error:
            return error.http_status, error.rest_body()

    def _input_dtypes_for(self, name: str, version: str | None):
        def input_dtypes(signature: str) -> dict[str, str]:
            chosen = int(version) if version else max(self.versions)
            if name != self.name or chosen not in self.versions:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return self._signature(chosen, signature).inputs

        return input_dtypes

    def _status(self, path: str) -> bytes:
        if path.rstrip("/") != f"/v1/models/{self.name}":
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {path.rsplit('/', 1)[-1]}")
        states = [{"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                  for v in sorted(self.versions, reverse=True)]  # fmt: skip
        return json.dumps({"model_version_status": states}).encode()


# --- servers -----------------------------------------------------------------------------------------


def _http_handler(standin: StandIn):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, body = standin.rest(method, self.path, self.rfile.read(length))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 - http.server's naming
            self._answer("POST")

        def do_GET(self):  # noqa: N802
            self._answer("GET")

        def log_message(self, *args):  # keep test output clean
            pass

    return Handler


def start_servers(standin: StandIn, rest_port: int = 0, grpc_port: int = 0, host: str = "127.0.0.1"):
    """Starts the REST and gRPC servers on ``host``; returns (http server, grpc server, rest port, grpc port)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    class Predictions(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - the service's method name
            try:
                return standin.predict(request)
            except ServingError as error:
                context.abort(getattr(grpc.StatusCode, error.code), error.message)

    http = ThreadingHTTPServer((host, rest_port), _http_handler(standin))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    limits = [("grpc.max_receive_message_length", client.GRPC_MAX_MESSAGE_BYTES),
              ("grpc.max_send_message_length", client.GRPC_MAX_MESSAGE_BYTES)]  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=limits)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictions(), server)
    bound = server.add_insecure_port(f"{host}:{grpc_port}")
    server.start()
    return http, server, http.server_address[1], bound


# --- the fresh-process half of `kunet export --check` -------------------------------------------------


def _rest_reply(standin: StandIn, body: dict) -> tuple[dict | None, str | None]:
    """A REST round trip: (the decoded JSON reply, None) or (None, what went wrong)."""
    status, reply = standin.rest("POST", f"/v1/models/{standin.name}:predict", json.dumps(body).encode())
    if status != 200:
        return None, f"HTTP {status}: {reply[:2000].decode(errors='replace')}"
    try:
        return json.loads(reply), None
    except (UnicodeDecodeError, ValueError) as error:
        return None, f"the reply is not valid JSON ({error.__class__.__name__}: {error})"


def check(version_dir: Path, out: Path) -> dict:
    """Loads an export, replays its warm-up requests, and sends the sample image through REST and gRPC.

    Writes ``report.json``, ``probabilities.npy`` (gRPC ``serving_default``) and, when REST answered with
    valid JSON, ``rest_mask.png`` (REST ``segment_png``) into ``out`` for the parent process to compare with
    ``kunet predict``. Problems with the REST replies are reported, not raised.
    """
    import tensorflow as tf

    from kunet.inference import InferenceSettings
    from kunet.serving.export import sample_image

    standin = StandIn(version_dir)
    info = json.loads((version_dir / "assets.extra" / "kunet.json").read_text())
    image = sample_image(InferenceSettings.from_metadata(info["inference"]), info["input"]["channels"])
    png = tf.io.encode_png(tf.constant(image)).numpy()
    sent = client.grpc_pixels_request(standin.name, image)  # through the wire format both ways
    response = standin.predict(type(sent).FromString(sent.SerializeToString()))
    grpc_outputs = client.decode_grpc_pixels(type(response).FromString(response.SerializeToString()))
    labels = grpc_outputs[names.LABELS]
    report = {"signatures": standin.describe(), "warmup_requests": standin.warmup_requests[max(standin.versions)]}
    out.mkdir(parents=True, exist_ok=True)
    reply, report["rest_png_problem"] = _rest_reply(standin, client.rest_png_body([png]))
    if reply is not None:
        mask = client.decode_rest_png(reply)[0]
        (out / "rest_mask.png").write_bytes(mask)
        report["png_mask_equals_grpc_labels"] = bool(np.array_equal(client.png_array(mask), labels))
    reply, report["rest_pixels_problem"] = _rest_reply(standin, client.rest_pixels_body(image))
    if reply is not None:
        rest_labels = client.decode_rest_pixels(reply)[names.LABELS]
        report["rest_labels_equal_grpc_labels"] = bool(np.array_equal(rest_labels, labels))
    np.save(out / "probabilities.npy", grpc_outputs[names.PROBABILITIES])
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kunet.serving.standin", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="answer REST and gRPC requests until killed")
    serve.add_argument("base_path", type=Path)
    serve.add_argument("--name")
    serve.add_argument("--rest-port", type=int, default=8501)
    serve.add_argument("--grpc-port", type=int, default=8500)
    checking = commands.add_parser("check", help="replay requests on one version folder (export --check)")
    checking.add_argument("version_dir", type=Path)
    checking.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "check":
        check(args.version_dir, args.out)
        return
    standin = StandIn(args.base_path, args.name)
    http, server, rest_port, grpc_port = start_servers(standin, args.rest_port, args.grpc_port)
    print(json.dumps({"name": standin.name, "rest_port": rest_port, "grpc_port": grpc_port}), flush=True)
    try:
        server.wait_for_termination()
    finally:
        http.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
