"""The thin CLI layer: each command reaches the library and reports errors as one line with exit code 2."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import typer
from helpers import REPO_ROOT, write_tiny_toml
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet.choices import MASK_FORMATS, OBJECTIVES, PROBABILITY_FORMATS, SPLITS, STRATEGIES, SYNTHETIC_KINDS
from kunet.config import LABEL_KINDS
from kunet.errors import KunetError
from kunet.precision import PRECISIONS
from kunet.serving.graph import SIGNATURES

runner = CliRunner()


def test_synth_writes_both_layouts_and_refuses_to_overwrite(tmp_path):
    result = runner.invoke(app, ["synth", "em", "--out", str(tmp_path / "em"), "--count", "2", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "em" / "labels" / "slice_01.png"), cv2.IMREAD_UNCHANGED).shape == (64, 64)
    again = runner.invoke(app, ["synth", "em", "--out", str(tmp_path / "em"), "--count", "2", "--size", "64"])
    assert again.exit_code == 2 and "exists" in again.output
    cells = runner.invoke(app, ["synth", "cells", "--out", str(tmp_path / "ctc"), "--count", "1", "--size", "96"])
    assert cells.exit_code == 0, cells.output
    assert (tmp_path / "ctc" / "01_GT" / "SEG" / "man_seg000.tif").is_file()


def test_show_augment_writes_a_grid(tiny_records, tmp_path):
    _, records = tiny_records
    out = tmp_path / "grid.png"
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\n[model]\nbase_filters = 4\ndepth = 2\n[train]\ntile_size = 124\n')
    result = runner.invoke(
        app, ["show-augment", str(toml), "--records", str(records), "--out", str(out), "--count", "3"]
    )
    assert result.exit_code == 0, result.output
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[0] * grid.shape[1] >= 4 * 124 * 124  # original + 3 tiles


def test_configuration_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[model]\nbase_filter = 8\n')
    result = runner.invoke(app, ["fit", str(bad), "--dry-run"])
    assert result.exit_code == 2
    assert "bad.toml" in result.output and "base_filter" in result.output
    wrong_type = runner.invoke(app, ["fit", str(REPO_ROOT / "pipelines" / "isbi2012.toml"), "--dry-run",
                                     "--set", "train.epochs=many"])  # fmt: skip
    assert wrong_type.exit_code == 2 and "train.epochs" in wrong_type.output


def test_predict_reports_a_missing_model_clearly(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "nope"), str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "nope" in result.output and "not found" in result.output


def _import_segmenter_users() -> None:
    """Imports the modules that bind ``kunet.segmenter.Segmenter`` by name, before a test patches it: the
    predict and evaluate commands import them on first use, and imported under the patch they would keep the
    fake for the rest of the worker process (a later evaluate test then failed, depending on test order)."""
    import kunet.evaluation  # noqa: F401
    import kunet.predict_files  # noqa: F401


def test_predict_and_evaluate_leave_mirroring_to_the_model_unless_told(tmp_path, monkeypatch):
    # `kunet tune --mirror` stores test-time mirroring with the model; a CLI default of False silently
    # dropped it, so predict/evaluate scored a different decision rule than the one tuned.
    import kunet.segmenter

    seen = []

    class Recorder:
        def __init__(self, model, precision, tile_size, mirror, threshold, constant_weights=False, **job):
            seen.append(mirror)
            raise kunet.segmenter.ModelLoadError("recorded")

    _import_segmenter_users()
    monkeypatch.setattr(kunet.segmenter, "Segmenter", Recorder)
    toml = REPO_ROOT / "pipelines" / "isbi2012.toml"
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"")  # predict checks the model path and inputs before loading
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((32, 32), np.uint8))
    for flags, expected in (([], None), (["--mirror"], True), (["--no-mirror"], False)):
        runner.invoke(app, ["predict", str(run), str(image), "--out", str(tmp_path / "out"), *flags])
        assert seen.pop() is expected
        runner.invoke(app, ["evaluate", str(run), str(toml), *flags])
        assert seen.pop() is expected


def test_evaluate_names_a_split_the_records_do_not_hold(trained_tiny_run, tiny_records, tmp_path):
    # The parser refuses a split name outside SPLITS; records whose manifest counts no frames of a split
    # (written by another tool, or edited) are named in one line, not with a KeyError traceback.
    _, original = tiny_records
    records = tmp_path / "records"
    shutil.copytree(original, records)
    manifest = json.loads((records / "manifest.json").read_text())
    del manifest["counts"]["val"]
    (records / "manifest.json").write_text(json.dumps(manifest))
    toml = write_tiny_toml(tmp_path / "tiny.toml", records)
    result = runner.invoke(app, ["evaluate", str(trained_tiny_run), str(toml), "--split", "val", "--out",
                                 str(tmp_path / "eval")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"{records}: no 'val' split; these records hold train" in " ".join(result.output.split())
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("command", sorted(typer.main.get_command(app).commands))
def test_every_command_shows_its_help(command):
    # Help texts are rich markup: "NAME[/versions/N]" in serve-request's once made its --help crash.
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage: kunet" in result.output, (result.output, result.exception)


# --- options whose value is one of a fixed set -----------------------------------------------------------
# The choices come from the library's own registries, so a name added there that the CLI does not offer (or
# an option the CLI stops declaring as a choice) fails here.
ENUMERATED = [
    ("fit", "--precision", PRECISIONS),
    ("fit", "--strategy", STRATEGIES),
    ("build-records", "--label-kind", LABEL_KINDS),
    ("synth", "kind", SYNTHETIC_KINDS),
    ("predict", "--precision", PRECISIONS),
    ("predict", "--probabilities", PROBABILITY_FORMATS),
    ("predict", "--mask-format", MASK_FORMATS),
    ("evaluate", "--split", SPLITS),
    ("evaluate", "--precision", PRECISIONS),
    ("tune", "--objective", tuple(OBJECTIVES)),
    ("tune", "--precision", PRECISIONS),
    ("export", "--precision", PRECISIONS),
    ("serve-request", "--signature", tuple(SIGNATURES)),
]
WIDE = {"COLUMNS": "400"}  # rich wraps help and errors at the terminal's width; one row per option here


@pytest.mark.parametrize("command, option, choices", ENUMERATED)
def test_help_lists_every_choice_of_an_enumerated_option(command, option, choices):
    result = runner.invoke(app, [command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if re.search(rf"[│*]\s+{re.escape(option)}\s", line)]
    assert len(rows) == 1, result.output
    listed = re.search(r"<([^<>]*\|[^<>]*)>", rows[0])
    assert listed is not None, rows[0]
    assert set(listed.group(1).split("|")) == set(choices), rows[0]


# Arguments before the bad option are only placeholders: the parser refuses it before any of them is used.
BAD_VALUES = [
    (["fit", "x.toml", "--precision", "fp8"], "--precision", PRECISIONS),
    (["fit", "x.toml", "--strategy", "tpu"], "--strategy", STRATEGIES),
    (["build-records", "--label-kind", "semantic"], "--label-kind", LABEL_KINDS),
    (["synth", "--out", "x", "nuclei"], "kind", SYNTHETIC_KINDS),
    (["predict", "run", "a.png", "--precision", "float16"], "--precision", PRECISIONS),
    (["predict", "run", "a.png", "--probabilities", "png"], "--probabilities", PROBABILITY_FORMATS),
    (["predict", "run", "a.png", "--mask-format", "jpg"], "--mask-format", MASK_FORMATS),
    (["evaluate", "run", "x.toml", "--split", "test"], "--split", SPLITS),
    (["tune", "run", "x.toml", "--objective", "dice"], "--objective", tuple(OBJECTIVES)),
    (["export", "run", "--precision", "int8"], "--precision", PRECISIONS),
    (["serve-request", "http://h/v1/models/m", "a.png", "--out", "m.png", "--signature", "x"], "--signature",
     tuple(SIGNATURES)),
]  # fmt: skip


@pytest.mark.parametrize("argv, option, choices", BAD_VALUES, ids=[" ".join(a[:1] + a[-2:]) for a, _, _ in BAD_VALUES])
def test_a_value_outside_the_choices_is_refused_by_the_parser_in_one_line(argv, option, choices, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, argv, env=WIDE)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "Invalid value" in line]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"Invalid value for '{option}'" in lines[0] and f"{argv[-1]!r} is not one of" in lines[0], lines[0]
    assert all(repr(choice) in lines[0] for choice in choices), lines[0]
    assert os.listdir() == [], "the command ran"


def test_the_kunet_command_refuses_a_bad_choice_before_importing_tensorflow(tmp_path):
    # The console script imports TensorFlow (seconds) only once the command line has parsed.
    program = (
        "import sys\n"
        "from kunet_cli.main import main\n"
        "sys.argv = ['kunet', 'fit', 'x.toml', '--strategy', 'tpu']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, **WIDE})  # fmt: skip
    assert result.stdout.split() == ["exit", "2", "False"], (result.stdout, result.stderr)
    # One plain line, as kunet's own errors: no rich box (a log file would keep its drawing characters).
    assert result.stderr.splitlines() == [
        "error: kunet fit: Invalid value for '--strategy': 'tpu' is not one of 'default', 'mirrored', "
        "'multiworker'. (see kunet fit --help)"
    ], result.stderr


class _Recorded(KunetError):
    """Raised by a stand-in for a library function once it has recorded what the CLI passed to it."""


def _recorder(seen: dict, read):
    def record(*args, **kwargs):
        seen.update(read(*args, **kwargs))
        raise _Recorded("recorded")

    return record


@pytest.mark.parametrize(
    "argv, target, read, expected",
    [
        (["fit", "PIPELINE", "--dry-run", "--precision", "mixed_bfloat16"], "kunet.builders.dry_run",
         lambda config: {"precision": config.train.precision}, {"precision": "mixed_bfloat16"}),
        (["fit", "PIPELINE", "--strategy", "mirrored"], "kunet.builders.make_strategy",
         lambda name: {"strategy": name}, {"strategy": "mirrored"}),
        (["build-records", "--images", "IMAGES", "--labels", "IMAGES", "--out", "r", "--label-kind", "instance"],
         "kunet.records.build_records", lambda config, **_: {"kind": config.labels.kind}, {"kind": "instance"}),
        (["predict", "MODEL", "IMAGE", "--precision", "auto", "--mask-format", "tif", "--probabilities", "npy"],
         "kunet.predict_files.plan_predictions",
         lambda inputs, out, mask_format, probabilities, overlays, *_: {"formats": (mask_format, probabilities)},
         {"formats": ("tif", "npy")}),
        (["evaluate", "MODEL", "PIPELINE", "--precision", "mixed_float16", "--split", "train"],
         "kunet.segmenter.Segmenter", lambda model, precision, *_: {"precision": precision},
         {"precision": "mixed_float16"}),
        (["tune", "MODEL", "PIPELINE", "--objective", "rand+pixel", "--precision", "mixed_bfloat16"], "kunet.tune.tune",
         lambda model, records, objective, precision, **_: {"objective": objective, "precision": precision},
         {"objective": "rand+pixel", "precision": "mixed_bfloat16"}),
        (["export", "MODEL", "--precision", "auto"], "kunet.serving.export.export",
         lambda model, name, base_dir, version, tiling, precision, **_: {"precision": precision},
         {"precision": "auto"}),
        (["serve-request", "http://h:8501/v1/models/m", "IMAGE", "--out", "m.png", "--signature", "serving_default"],
         "kunet.serving.requests.request_masks", lambda url, inputs, out, signature, timeout: {"signature": signature},
         {"signature": "serving_default"}),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)  # fmt: skip
def test_a_chosen_value_reaches_the_library_as_a_plain_string(argv, target, read, expected, tmp_path, monkeypatch):
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((32, 32), np.uint8))
    model = tmp_path / "run"
    model.mkdir()
    (model / "best.keras").write_bytes(b"")
    places = {"PIPELINE": str(REPO_ROOT / "pipelines" / "isbi2012.toml"), "MODEL": str(model), "IMAGE": str(image),
              "IMAGES": str(tmp_path)}  # fmt: skip
    module, name = target.rsplit(".", 1)
    seen = {}
    _import_segmenter_users()
    monkeypatch.setattr(importlib.import_module(module), name, _recorder(seen, read))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [places.get(arg, arg) for arg in argv])
    assert result.exit_code == 2 and "recorded" in result.output, result.output
    assert repr(seen) == repr(expected)  # repr: an Enum member equal to its string would show here
