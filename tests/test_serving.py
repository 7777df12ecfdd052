"""Exports served by TensorFlow Serving's rules give every client the mask ``kunet predict`` gives.

The ``tensorflow_model_server`` binary cannot run here, so a stand-in (``python -m kunet.serving.standin``,
a fresh process) loads the export with TensorFlow's SavedModel loader and answers REST and gRPC over real
sockets by TensorFlow Serving's request/response rules (kunet.serving.rules, themselves tested against the
server's own test vectors in test_serving_rules.py). The README's curl line, its Python snippets, kunet's
clients and ``kunet serve-request`` all run unchanged against it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from kunet.predict_files import predict_files
from kunet.segmenter import Segmenter
from kunet.serving import client, rules
from kunet.serving import export as export_module
from kunet.serving import signatures as names
from kunet.serving.batching import Batching, run_batched
from kunet.serving.check import check
from kunet.serving.export import ExportError, export
from kunet.serving.graph import SIGNATURES
from kunet.serving.signatures import ServingLimits
from kunet.serving.standin import StandIn

quiet = lambda *args, **kwargs: None  # noqa: E731


@pytest.fixture(scope="module")
def served(trained_tiny_run, tmp_path_factory):
    """The session's tiny trained run, its export, a test image and ``kunet predict``'s mask of it from the export."""
    root = tmp_path_factory.mktemp("serving")
    version = export(trained_tiny_run, "tiny", root / "saved_models", log=quiet)
    rng = np.random.default_rng(3)
    image = rng.integers(20, 90, (100, 131), dtype=np.uint8)
    for cy, cx in ((30, 40), (30, 70), (70, 100)):
        cv2.circle(image, (cx, cy), 16, 210, -1)
    work = root / "work"
    work.mkdir()
    cv2.imwrite(str(work / "image.png"), image)
    predict_files(Segmenter(version), [work / "image.png"], root / "predicted", overlays=False)
    mask = cv2.imread(str(root / "predicted" / "image_mask.png"), cv2.IMREAD_UNCHANGED)
    return SimpleNamespace(run=trained_tiny_run, version=version, models=root / "saved_models" / "tiny", image=image,
                           work=work, mask=mask)  # fmt: skip


@pytest.fixture(scope="module")
def server(served):
    """The stand-in serving the export in a fresh process: (rest port, grpc port)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kunet.serving.standin", "serve", str(served.models), "--rest-port", "0",
         "--grpc-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = process.stdout.readline()
    if not line:
        process.kill()
        pytest.fail(f"stand-in did not start: {process.stderr.read()[-3000:]}")
    ports = json.loads(line)
    yield ports["rest_port"], ports["grpc_port"]
    process.terminate()
    process.wait(timeout=30)


def test_an_export_predicts_a_folder_in_throughput_mode_exactly_as_one_image_at_a_time(served, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, image in (("a", served.image), ("b", served.image[:64, 10:110]), ("c", served.image[::-1])):
        cv2.imwrite(str(folder / f"{name}.png"), image)
    segmenter, files = Segmenter(served.version), {}
    for concurrency in (0, 2):
        out = tmp_path / f"out{concurrency}"
        predict_files(segmenter, [folder], out, probabilities="npy", concurrency=concurrency)
        files[concurrency] = {path.name: path.read_bytes() for path in sorted(out.iterdir())}
    assert files[2] == files[0] and len(files[0]) == 9
    assert files[0]["a_mask.png"] == (served.work.parent / "predicted" / "image_mask.png").read_bytes()


def test_saved_model_cli_shows_no_string_output_without_the_bytes_suffix(served):
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run([str(cli), "show", "--dir", str(served.version), "--all"], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    string_outputs, signature, section, tensor = [], None, None, None
    for line in shown.stdout.splitlines():
        if match := re.match(r"signature_def\['(\w+)'\]", line):
            signature = match.group(1)
        elif match := re.search(r"The given SavedModel SignatureDef contains the following (input|output)", line):
            section = match.group(1)
        elif match := re.search(r"(?:inputs|outputs)\['(\w+)'\] tensor_info", line):
            tensor = match.group(1)
        elif "dtype: DT_STRING" in line and section == "output":
            string_outputs.append(f"{signature}/{tensor}")
    assert string_outputs == ["segment_png/mask_png_bytes"]
    assert "inputs['png_bytes']" in shown.stdout


def test_server_files_and_warmup_parse_with_tf_servings_own_messages(served):
    from tensorflow_serving.apis import prediction_log_pb2
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((served.models / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())  # fmt: skip
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("tiny", "/models/tiny", "tensorflow")
    batching = Batching.parse((served.models / "batching_parameters.txt").read_text())
    assert batching.max_batch_size == ServingLimits().max_batch
    assert batching.enable_large_batch_splitting and batching.max_execution_batch_size == 1
    assert not batching.pad_variable_length_inputs and batching.num_batch_threads == 1
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(served.version / "assets.extra" / "tf_serving_warmup_requests"))
    ]
    assert [(log.predict_log.request.model_spec.signature_name, sorted(log.predict_log.request.inputs))
            for log in logs] == [("serving_default", ["images"]), ("segment_png", ["png_bytes"])]  # fmt: skip
    info = json.loads((served.version / "assets.extra" / "kunet.json").read_text())
    assert info["signatures"] == {key: s.describe() for key, s in SIGNATURES.items()}
    assert info["limits"] == ServingLimits().to_dict()


def _readme_blocks(readme: str, language: str) -> list[str]:
    requests = readme.split("## Requests", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", requests, re.DOTALL)


def _run_in(work: Path, command: list[str], ports) -> subprocess.CompletedProcess:
    rest, grpc = ports
    command = [part.replace("localhost:8501", f"127.0.0.1:{rest}").replace("localhost:8500", f"127.0.0.1:{grpc}")
               for part in command]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readmes_curl_line_returns_predicts_mask(served, server, tmp_path):
    readme = (served.models / "README.md").read_text()
    (curl,) = [block for block in _readme_blocks(readme, "sh") if "curl" in block]
    shutil.copy(served.work / "image.png", tmp_path / "image.png")
    result = _run_in(tmp_path, ["bash", "-c", curl], server)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_UNCHANGED), served.mask)


def test_readmes_python_snippets_return_predicts_mask(served, server, tmp_path):
    readme = (served.models / "README.md").read_text()
    blocks = _readme_blocks(readme, "python")
    assert len(blocks) == 3  # REST (standard library), gRPC, kunet's clients
    shutil.copy(served.work / "image.png", tmp_path / "image.png")
    for block in blocks:
        for output in ("mask.png", "labels.png"):
            (tmp_path / output).unlink(missing_ok=True)
        result = _run_in(tmp_path, [sys.executable, "-c", block], server)
        assert result.returncode == 0, f"{block}\n{result.stderr[-3000:]}"
        (written,) = [tmp_path / name for name in ("mask.png", "labels.png") if (tmp_path / name).exists()]
        np.testing.assert_array_equal(cv2.imread(str(written), cv2.IMREAD_UNCHANGED), served.mask, err_msg=block)


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_kunets_clients_give_predicts_mask_and_probabilities(served, server, protocol):
    rest, grpc = server
    url = f"http://127.0.0.1:{rest}/v1/models/tiny" if protocol == "rest" else f"grpc://127.0.0.1:{grpc}/tiny"
    served_client = client.client_for(url)
    png = (served.work / "image.png").read_bytes()
    np.testing.assert_array_equal(client.png_array(served_client.segment_png(png)), served.mask)
    result = served_client.predict(served.image)
    np.testing.assert_array_equal(result["labels"], served.mask)
    reference = Segmenter(served.version).probabilities(served.image)
    # gRPC carries float32 exactly; REST writes 6 significant digits (TF Serving's WriteDecimal).
    np.testing.assert_allclose(result["probabilities"], reference, rtol=0 if protocol == "grpc" else 1e-5, atol=0)
    with pytest.raises(client.ServingRequestError, match="not found|NOT_FOUND|404"):
        client.client_for(url.replace("tiny", "nosuchmodel")).segment_png(png)


def test_serve_request_cli_writes_predicts_mask(served, server, tmp_path):
    from kunet_cli.main import app
    from typer.testing import CliRunner

    rest, grpc = server
    for url, signature in ((f"http://127.0.0.1:{rest}/v1/models/tiny", "segment_png"),
                           (f"grpc://127.0.0.1:{grpc}/tiny", "serving_default")):  # fmt: skip
        out = tmp_path / f"{signature}.png"
        result = CliRunner().invoke(app, ["serve-request", url, str(served.work / "image.png"), "--out", str(out),
                                          "--signature", signature])  # fmt: skip
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), served.mask)
    bad = CliRunner().invoke(app, ["serve-request", "ftp://x/y", str(served.work / "image.png"), "--out", "m.png"])
    assert bad.exit_code == 2 and "not a model URL" in bad.output


def _answers(standin: StandIn, requests: list[dict], batching: Batching | None, signature: str):
    """Each request's outputs from the stand-in, unbatched or through TF Serving's batching rules."""
    function = standin._signature(max(standin.versions), signature).function

    def run(inputs):
        try:
            outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            raise rules.ServingError("INVALID_ARGUMENT", error.message) from None
        return {key: value.numpy() for key, value in outputs.items()}

    return [run(r) for r in requests] if batching is None else run_batched(batching, requests, run)


def test_the_shipped_batching_file_never_changes_an_answer(served):
    standin = StandIn(served.version)
    rng = np.random.default_rng(5)
    sizes = [(64, 64, 1), (64, 96, 2), (80, 64, 1), (64, 64, 3)]  # (height, width, images in the request)
    pixels = [{"images": rng.integers(0, 255, (n, h, w, 1)).astype(np.float32)} for h, w, n in sizes]
    pngs = [{"png_bytes": np.array([tf.io.encode_png(r["images"][0].astype(np.uint8)).numpy()], object)}
            for r in pixels]  # fmt: skip
    shipped = Batching.parse((served.models / "batching_parameters.txt").read_text())
    for signature, requests in ((names.PIXELS_SIGNATURE, pixels), (names.PNG_SIGNATURE, pngs)):
        alone = _answers(standin, requests, None, signature)
        batched = _answers(standin, requests, shipped, signature)
        for got, expected in zip(batched, alone):
            assert not isinstance(got, rules.ServingError), got
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key])
    # What the old batching file (pad_variable_length_inputs, batches of 4) did to the same requests:
    padded = Batching(max_batch_size=4, max_execution_batch_size=4, pad_variable_length_inputs=True)
    first = _answers(standin, pixels[:2], padded, names.PIXELS_SIGNATURE)[0]
    assert first["labels"].shape == (1, 64, 96)  # a 64x64 request answered with a 64x96 mask


def test_requests_beyond_the_bounds_or_with_nan_are_refused_with_the_reason(served, server):
    rest, _ = server
    url = f"http://127.0.0.1:{rest}/v1/models/tiny"
    refused = {
        "max_batch": client.rest_pixels_body(np.zeros((8, 8), np.float32)) | {
            "instances": np.zeros((ServingLimits().max_batch + 1, 8, 8, 1)).tolist()},
        "NaN or infinite": client.rest_pixels_body(np.full((8, 8), np.nan, np.float32)),
        "not a PNG": client.rest_png_body([b"GIF89a" + bytes(40)]),
        "at most 16777216 pixels": client.rest_png_body([_png_declaring(5000, 4000)]),
    }  # fmt: skip
    for reason, body in refused.items():
        with pytest.raises(client.ServingRequestError, match=f"(?s)HTTP 400: .*{reason}"):
            client.RestClient(url)._post(body)


def _png_declaring(height: int, width: int) -> bytes:
    """A small PNG file (all zeros compress to almost nothing) that declares a large image."""
    return cv2.imencode(".png", np.zeros((height, width), np.uint8))[1].tobytes()


_BOMB = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from kunet.serving import client
from kunet.serving.standin import StandIn
standin = StandIn(sys.argv[1])
bomb = open(sys.argv[3], "rb").read()
ordinary = open(sys.argv[4], "rb").read()
answers = []
for png in (bomb, ordinary):  # the ordinary image shows the cap leaves room to serve: the bound refused the bomb
    started = time.monotonic()
    status, body = standin.rest("POST", "/v1/models/tiny:predict", json.dumps(client.rest_png_body([png])).encode())
    seconds = time.monotonic() - started
    answers.append({"status": status, "error": json.loads(body).get("error", ""), "seconds": seconds})
print(json.dumps(answers))
"""


@pytest.mark.slow
@pytest.mark.parametrize("side", [8000, 23000])
def test_a_decompression_bomb_fails_fast_with_the_bound_under_a_memory_cap(served, tmp_path, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(side, side))
    assert bomb.stat().st_size < 600_000  # tens of kilobytes that would decode to gigabytes
    cap = 5 * 2**30  # address space: TensorFlow reserves ~2.6 GB; decoding 23000^2 would need far more
    ordinary = tmp_path / "ordinary.png"
    ordinary.write_bytes(cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (700, 900), np.uint8))[1])
    result = subprocess.run([sys.executable, "-c", _BOMB, str(served.version), str(cap), str(bomb), str(ordinary)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    bombed, served_ordinary = json.loads(result.stdout.strip().splitlines()[-1])
    assert bombed["status"] == 400
    assert f"the PNG declares] [{side}] [x] [{side}]" in bombed["error"] and "max_pixels" in bombed["error"]
    assert bombed["seconds"] < 2.0
    assert served_ordinary["status"] == 200, served_ordinary["error"]


def test_limits_set_at_export_bound_exactly(served, tmp_path):
    limits = ServingLimits(max_pixels=60 * 50, max_batch=2)
    version = export(served.run, "small", tmp_path, log=quiet, limits=limits)
    serving_default = tf.saved_model.load(str(version)).signatures["serving_default"]
    assert serving_default(images=tf.zeros([2, 60, 50, 1]))["labels"].shape == (2, 60, 50)
    for shape, reason in (([1, 61, 50, 1], "max_pixels"), ([3, 10, 10, 1], "max_batch"), ([1, 0, 5, 1], "empty")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=reason):
            serving_default(images=tf.zeros(shape))
    assert json.loads((version / "assets.extra" / "kunet.json").read_text())["limits"] == limits.to_dict()
    assert "max_batch_size { value: 2 }" in (tmp_path / "small" / "batching_parameters.txt").read_text()


def test_an_export_racing_for_the_same_version_takes_the_next_one(served, tmp_path, monkeypatch):
    first = export(served.run, "race", tmp_path, log=quiet)
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    monkeypatch.setattr(export_module, "next_version", lambda root: 1)  # as if it looked before `first` landed
    second = export(served.run, "race", tmp_path, log=quiet)
    assert (first.name, second.name) == ("1", "2")
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert "version 2)" in (second / "assets.extra" / "README.md").read_text()
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == [
        "1", "2", "README.md", "batching_parameters.txt", "models.config"]  # fmt: skip


def test_killed_exports_temporaries_are_removed_and_a_running_ones_kept(served, tmp_path):
    from kunet._fs import building_directory

    model_root = tmp_path / "tiny"
    killed = model_root / ".export.tmp-0badf00d"  # no process holds its lock: its export was killed
    legacy_old, legacy_new = model_root / ".export-1234abcd", model_root / ".export-5678abcd"
    for folder in (killed, legacy_old, legacy_new):
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"half")
    old = time.time() - export_module.LEGACY_STALE_SECONDS - 60
    os.utime(legacy_old, (old, old))
    lines = []
    with building_directory(model_root / export_module.EXPORT_FOLDER) as running:  # another export, running
        export(served.run, "tiny", tmp_path, log=lines.append)
        assert running.is_dir()
    assert not killed.exists() and not legacy_old.exists() and legacy_new.exists()
    assert sum(line.endswith(("that was killed)", "an interrupted export)")) for line in lines) == 2
    assert any("being written by another running process" in line for line in lines)


@pytest.mark.slow
def test_an_export_with_the_old_names_still_predicts_and_check_says_why_rest_breaks(served, tmp_path, monkeypatch):
    monkeypatch.setattr(names, "PNG_INPUT", "png")
    monkeypatch.setattr(names, "MASK_PNG_OUTPUT", "png")
    legacy = export(served.run, "legacy", tmp_path, log=quiet)
    monkeypatch.undo()
    signatures = tf.saved_model.load(str(legacy)).signatures
    assert list(signatures["segment_png"].structured_outputs) == ["png"]
    result = Segmenter(legacy).segment(served.image)
    np.testing.assert_array_equal(result.label_values, served.mask)
    with pytest.raises(ExportError) as refused:
        check(legacy, log=quiet)
    assert "['segment_png/png'] lack the _bytes suffix" in str(refused.value)
    assert "not valid JSON" in str(refused.value)  # what a REST client of that export receives


def test_check_rejects_an_unsafe_batching_file(served, tmp_path):
    models = tmp_path / "tiny"
    shutil.copytree(served.models, models)
    batching = models / "batching_parameters.txt"
    batching.write_text(batching.read_text().replace("value: 1 }", "value: 4 }") + "pad_variable_length_inputs: true\n")
    from kunet.serving.check import server_file_problems

    (problem,) = server_file_problems(models)
    assert "answers can change" in problem
    batching.write_text("max_batch_size: 4\n")
    assert "not a BatchingParameters file" in server_file_problems(models)[0]
