"""The thin CLI layer: each command reaches the library and reports errors as one line with exit code 2."""

from __future__ import annotations

import cv2
import numpy as np
from helpers import REPO_ROOT, write_tiny_toml
from kunet_cli.main import app
from typer.testing import CliRunner

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


def test_predict_and_evaluate_leave_mirroring_to_the_model_unless_told(tmp_path, monkeypatch):
    # `kunet tune --mirror` stores test-time mirroring with the model; a CLI default of False silently
    # dropped it, so predict/evaluate scored a different decision rule than the one tuned.
    import kunet.segmenter

    seen = []

    class Recorder:
        def __init__(self, model, precision, tile_size, mirror, threshold):
            seen.append(mirror)
            raise kunet.segmenter.ModelLoadError("recorded")

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
    _, records = tiny_records
    toml = write_tiny_toml(tmp_path / "tiny.toml", records)
    result = runner.invoke(app, ["evaluate", str(trained_tiny_run), str(toml), "--split", "test"])
    assert result.exit_code == 2, result.output  # one line, not a KeyError traceback
    assert f"{records}: no 'test' split; these records hold train and val" in " ".join(result.output.split())
    assert not (trained_tiny_run / "eval-test").exists()
