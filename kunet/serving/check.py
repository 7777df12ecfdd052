"""``kunet export --check``: an export validated as TensorFlow Serving would serve it.

A fresh Python process (:func:`kunet.serving.standin.check`) loads the version folder, replays its warm-up
requests and sends a sample image through both signatures as REST and gRPC requests under TensorFlow
Serving's rules (:mod:`kunet.serving.rules`). This process compares the answers with ``kunet predict`` on the
exported ``unet.keras``, checks that string outputs carry the ``_bytes`` suffix, and parses ``models.config``
and ``batching_parameters.txt`` with TensorFlow Serving's own messages.

A remote version folder (``gs://...``; any ``tf.io.gfile`` scheme) is first copied to a local temporary
folder with its model folder's ``models.config`` and ``batching_parameters.txt``, and checked there: the
fresh process cannot see an in-memory ``ram://`` folder, and the bytes checked are the bytes served.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kunet import uris
from kunet.decision import DecisionRule
from kunet.inference import InferenceSettings
from kunet.progress import Stages
from kunet.serving import signatures as names
from kunet.serving.batching import Batching
from kunet.serving.client import png_array
from kunet.serving.export import ExportError, sample_image


def check(export_dir, log=print) -> dict:
    """Validates an export version folder as TensorFlow Serving would serve it (see the module docstring).

    Returns:
        The report: signatures, warm-up requests replayed, agreement with ``kunet predict``.

    Raises:
        ExportError: naming the folder and every problem found.
    """
    from kunet.segmenter import Segmenter

    if uris.is_remote(export_dir):
        return _check_remote(uris.location(export_dir), log)
    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").is_file():
        raise ExportError(f"{export_dir}: not a SavedModel version folder (no saved_model.pb)")
    stages = Stages(log, total=2)
    stages(f"loading {export_dir} in a fresh process and replaying requests")
    report, served, rest_mask = _replay_in_fresh_process(export_dir)
    info = json.loads((export_dir / "assets.extra" / "kunet.json").read_text())
    problems = _signature_problems(report, info)
    settings = InferenceSettings.from_metadata(info["inference"])
    stages("predicting the sample image with kunet predict's code path")
    reference = Segmenter(export_dir / "assets.extra" / "unet.keras").segment(
        sample_image(settings, info["input"]["channels"])
    )
    difference = float(np.abs(served - reference.probabilities).max())
    # Pixels within float noise of the threshold may flip: the export and predict tile differently.
    foreground = DecisionRule.of(settings).foreground(reference.probabilities)
    decided = np.abs(foreground - settings.threshold) > 1e-4
    report["max_probability_difference_vs_predict"] = difference
    report["masks_identical"] = rest_mask is not None and bool(
        np.array_equal(rest_mask[decided], reference.label_values[decided])
    )
    if difference > 1e-3 or (rest_mask is not None and not report["masks_identical"]):
        problems.append(f"exported model disagrees with kunet predict (max diff {difference:.3g})")
    problems += server_file_problems(export_dir.parent)
    for key, signature in report["signatures"].items():
        log(f"signature {key}: inputs {signature['inputs']} -> outputs {signature['outputs']}")
    log(f"warm-up requests replayed: {report['warmup_requests']}")
    log(f"max |p_export - p_predict| = {difference:.2e}; REST mask equals predict's: {report['masks_identical']}")
    if problems:
        raise ExportError(f"{export_dir}: " + "; ".join(problems))
    return report


def _check_remote(export_dir: str, log) -> dict:
    """Copies the remote version folder and its model folder's server files to a local folder and checks that."""
    if not uris.exists(uris.join(export_dir, "saved_model.pb")):
        raise ExportError(f"{export_dir}: not a SavedModel version folder (no saved_model.pb)")
    with tempfile.TemporaryDirectory(prefix="kunet-check-remote-") as scratch:
        model_root = uris.parent(export_dir)
        local = Path(scratch) / uris.name(model_root) / uris.name(export_dir)
        log(f"copying {export_dir} to {local}")
        for relative in uris.walk_files(export_dir):
            (local / relative).parent.mkdir(parents=True, exist_ok=True)
            uris.copy(uris.join(export_dir, relative), local / relative)
        for server_file in ("models.config", "batching_parameters.txt"):
            if uris.exists(uris.join(model_root, server_file)):
                uris.copy(uris.join(model_root, server_file), local.parent / server_file)
        try:
            return check(local, log)
        except ExportError as error:
            message = str(error).replace(str(local), export_dir).replace(str(local.parent), model_root)
            raise ExportError(message) from None


def _replay_in_fresh_process(export_dir: Path) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """(report, gRPC probabilities of the sample image, REST segment_png mask or None)."""
    with tempfile.TemporaryDirectory(prefix="kunet-check-") as scratch:
        result = subprocess.run(
            [sys.executable, "-m", "kunet.serving.standin", "check", str(export_dir), "--out", scratch],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if result.returncode != 0:
            raise ExportError(f"{export_dir}: loading in a fresh process failed:\n{result.stderr[-3000:]}")
        report = json.loads((Path(scratch) / "report.json").read_text())
        served = np.load(Path(scratch) / "probabilities.npy")
        mask_path = Path(scratch) / "rest_mask.png"
        return report, served, png_array(mask_path.read_bytes()) if mask_path.is_file() else None


def _signature_problems(report: dict, info: dict) -> list[str]:
    problems = [f"REST request failed: {report[key]}" for key in ("rest_png_problem", "rest_pixels_problem")
                if report[key]]  # fmt: skip
    missing = set(info["signatures"]) - set(report["signatures"])
    if missing:
        problems.append(f"missing signatures {sorted(missing)}")
    raw_strings = names.string_outputs_without_bytes_suffix(report["signatures"])
    if raw_strings:
        problems.append(f"string outputs {raw_strings} lack the _bytes suffix: REST would return raw bytes in JSON")
    for agreement in ("rest_labels_equal_grpc_labels", "png_mask_equals_grpc_labels"):
        if report.get(agreement) is False:
            problems.append(f"signatures disagree with each other ({agreement} is false)")
    return problems


def server_file_problems(model_root: Path) -> list[str]:
    """Problems with ``models.config`` and ``batching_parameters.txt``, parsed as TensorFlow Serving parses them."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    problems = []
    config_path, batching_path = model_root / "models.config", model_root / "batching_parameters.txt"
    if config_path.is_file():
        try:
            text_format.Parse(config_path.read_text(), model_server_config_pb2.ModelServerConfig())
        except text_format.ParseError as error:
            problems.append(f"{config_path}: not a ModelServerConfig ({error})")
    if batching_path.is_file():
        try:
            batching = Batching.parse(batching_path.read_text())
        except text_format.ParseError as error:
            return problems + [f"{batching_path}: not a BatchingParameters file ({error})"]
        if batching.pad_variable_length_inputs or batching.max_execution_batch_size != 1:
            problems.append(f"{batching_path}: batches may merge images of different sizes (answers can change)")
    return problems
