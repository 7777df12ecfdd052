"""The demo's steps end to end on a tiny configuration, and its idempotence."""

from __future__ import annotations

import json

from kunet import demo


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
