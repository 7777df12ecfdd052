"""The demo's steps end to end on a tiny configuration, and its idempotence."""

from __future__ import annotations

import json

import pytest

from kunet import demo


@pytest.mark.slow
def test_demo_runs_every_step_and_reuses_its_outputs(tmp_path):
    lines: list[str] = []
    result = demo.run(tmp_path / "work", size=demo.TINY, export_root=tmp_path / "saved_models", log=lines.append)
    assert (tmp_path / "work" / "data" / "train" / "images").is_dir()
    assert json.loads((result["run"] / "state.json").read_text())["status"] == "completed"
    assert (result["export"] / "saved_model.pb").is_file() and result["export"].name == "1"
    assert len(list(result["results"].glob("*_mask.png"))) == demo.TINY.test_images
    assert len(list((tmp_path / "work" / "evaluation").glob("*_overlay.png"))) == demo.TINY.test_images
    assert 0.0 <= result["scores"]["iou"] <= 1.0
    assert any(line.startswith("$ kunet fit") for line in lines)

    again: list[str] = []
    second = demo.run(tmp_path / "work", size=demo.TINY, export_root=tmp_path / "saved_models", log=again.append)
    assert not any(line.startswith(("$ kunet fit", "$ kunet synth", "$ kunet build-records", "$ kunet export"))
                   for line in again)  # fmt: skip
    assert second["export"] == result["export"]
    assert second["scores"] == result["scores"]


@pytest.mark.slow
def test_every_shipped_pipeline_passes_a_dry_run_without_data():
    from pathlib import Path

    from kunet.builders import dry_run
    from kunet.config import load_pipeline

    pipelines = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.toml"))
    assert {p.stem for p in pipelines} >= {"isbi2012", "dic-hela", "phc-u373", "synthetic-em"}
    for path in pipelines:
        config = load_pipeline(path, ["model.base_filters=4"])  # the architecture as configured, narrower
        report = dry_run(config)
        assert report["logits"][-1] == config.labels.num_classes, path
        assert report["loss"] > 0, path
