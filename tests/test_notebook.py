"""docs/NOTEBOOK.md runs as written: arrays -> records -> fit -> segment -> evaluate -> export, and model.fit."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import REPO_ROOT

NOTEBOOK = REPO_ROOT / "docs" / "NOTEBOOK.md"


def notebook_cells() -> list[str]:
    return re.findall(r"```python\n(.*?)```", NOTEBOOK.read_text(), flags=re.S)


@pytest.mark.slow
def test_the_notebook_example_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cells = notebook_cells()
    assert len(cells) >= 6
    namespace: dict = {}
    for index, cell in enumerate(cells):
        exec(compile(cell, f"{NOTEBOOK.name} cell {index + 1}", "exec"), namespace)  # noqa: S102
    # What each stage promised, checked on what it left behind.
    state = namespace["state"]
    assert state["status"] == "completed" and state["step"] == 18
    assert (tmp_path / "runs" / "blobs" / "best.keras").is_file()
    assert (tmp_path / "runs" / "blobs" / "training.png").is_file()
    log_rows = (tmp_path / "blobs-log.csv").read_text().splitlines()
    assert len(log_rows) == 4 and "val_loss" in log_rows[0]  # CSVLogger: a header and one row per epoch
    result = namespace["result"]
    assert result.label_values.shape == (96, 96) and set(np.unique(result.label_values)) <= {0, 255}
    assert 0.0 <= namespace["report"]["mean"]["pixel_error"] <= 1.0
    assert (tmp_path / "saved_models" / "blobs" / "1" / "saved_model.pb").is_file()
    assert np.isfinite(namespace["history"].history["loss"][0])
    printed = capsys.readouterr().out
    assert "epoch 3/3: step 6/6" in printed and "\x1b" not in printed  # progress="lines"
