"""The paper's final-model protocol: settings and decision rule chosen on the validation frames, then a model
trained on every labelled frame (``kunet fit --final --rule-from``)."""

from __future__ import annotations

import copy
import csv
import hashlib
import json

import keras
import numpy as np
import pytest
from helpers import write_tiny_toml
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet.errors import KunetError
from kunet.model import UNet
from kunet.pipeline import _seeded_frames, decoded_frames
from kunet.train import Trainer
from kunet.tune import RULE_KEYS, rule_overrides


def _final(config):
    config = copy.deepcopy(config)
    config.train.final = True
    return config


def _digests(frames) -> set[str]:
    return {hashlib.sha1(np.asarray(frame["image"]).tobytes()).hexdigest() for frame in frames}


def test_a_final_run_draws_the_validation_frames_as_well(tiny_records):
    config, records = tiny_records
    train = _digests(decoded_frames(records, "train"))
    val = _digests(decoded_frames(records, "val"))
    assert train and val and not train & val
    passes = 3 * (len(train) + len(val))  # the shuffled stream covers each frame every pass
    usual = _digests(_seeded_frames(config, records, 1, 0, 1, 0).take(passes))
    final = _digests(_seeded_frames(_final(config), records, 1, 0, 1, 0).take(passes))
    assert usual == train
    assert final == train | val


def test_a_final_fit_validates_nothing_and_ships_its_last_model(tiny_records, tmp_path):
    config, records = tiny_records
    run = tmp_path / "final"
    lines = []
    state = Trainer(_final(config), run, records, log=lambda line, **k: lines.append(str(line))).fit(epochs=2)
    assert state["step"] == 2 * config.train.steps_per_epoch
    assert lines[-1] == f"completed at step {state['step']}; nothing validated", lines[-3:]
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert len(rows) == 2 and not [key for key in rows[0] if key.startswith("val_")]
    best, last = keras.models.load_model(run / "best.keras"), keras.models.load_model(run / "last.keras")
    assert all(np.array_equal(a, b) for a, b in zip(best.get_weights(), last.get_weights()))
    assert json.loads((run / "config.json").read_text())["pipeline"]["train"]["final"] is True


def _tuned_model(path, config, **rule) -> None:
    metadata = {"class_names": config.labels.names(), "class_values": [0, 255], **rule}
    UNet(input_channels=1, num_classes=2, base_filters=4, depth=2, metadata=metadata).save(path)


def test_rule_from_gives_a_new_run_the_rule_a_tuned_model_stores(tiny_records, tmp_path):
    config, records = tiny_records
    rule = {"threshold": 0.3, "postprocess": "watershed", "seed_threshold": 0.7, "seed_smoothing": 2.0,
            "test_time_mirroring": True, "min_object_size": 5}  # fmt: skip
    _tuned_model(tmp_path / "tuned.keras", config, **rule)
    assert len(rule_overrides(tmp_path / "tuned.keras", config.labels.names())) == len(RULE_KEYS)
    with pytest.raises(KunetError, match="decides between the classes"):
        rule_overrides(tmp_path / "tuned.keras", ["background", "cell", "border"])

    toml = write_tiny_toml(tmp_path / "tiny.toml", records)
    run = tmp_path / "final"
    result = CliRunner().invoke(app, ["fit", str(toml), "--run-dir", str(run), "--final", "--steps", "2", "--quiet",
                                      "--rule-from", str(tmp_path / "tuned.keras")])  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = keras.models.load_model(run / "last.keras").metadata
    assert {key: metadata[key] for key in rule} == rule
    assert json.loads((run / "config.json").read_text())["pipeline"]["train"]["final"] is True
    refused = CliRunner().invoke(app, ["fit", "--resume", str(run), "--rule-from", str(tmp_path / "tuned.keras")])
    assert refused.exit_code != 0 and "--rule-from sets the rule of a new run" in refused.output
