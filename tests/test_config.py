"""kunet.config: pipelines as plain dataclasses, strict about unknown keys and types, checked against the
registries, with dotted overrides; and kunet.precision's ``auto``."""

from __future__ import annotations

import pytest
from helpers import REPO_ROOT, tiny_pipeline_dict

from kunet.config import ConfigError, apply_overrides, load_pipeline, pipeline_from_dict
from kunet.precision import resolve_precision


def test_every_shipped_pipeline_loads_and_resolves_paths_against_its_root():
    for toml in sorted((REPO_ROOT / "pipelines").glob("*.toml")):
        config = load_pipeline(toml)
        assert config.config_path == str(toml)
        assert config.records_dir().is_absolute() and str(config.records_dir()).startswith(str(REPO_ROOT))
        assert config.train.precision == "auto"  # fast on every CPU: bf16 only where it is native


def test_unknown_keys_and_wrong_types_name_the_file_and_the_key(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('name = "x"\n[train]\nepochs = "ten"\n')
    with pytest.raises(ConfigError, match=r"p\.toml: train\.epochs: expected int, got 'ten'"):
        load_pipeline(toml)
    toml.write_text('name = "x"\n[trian]\nepochs = 3\n')
    with pytest.raises(ConfigError, match=r"p\.toml: unknown key 'trian'"):
        load_pipeline(toml)
    toml.write_text("name = [\n")
    with pytest.raises(ConfigError, match=r"p\.toml: not valid TOML"):
        load_pipeline(toml)


def test_overrides_are_toml_values_and_bare_words_are_strings():
    data = apply_overrides({}, ["train.epochs=3", "train.optimizer=adam", "records.val_ids=['a', 'b']"])
    assert data == {"train": {"epochs": 3, "optimizer": "adam"}, "records": {"val_ids": ["a", "b"]}}
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["train.epochs"])


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("source", "kind", "zarr"),
        ("image", "normalize", "min_max"),
        ("inference", "postprocess", "opening"),
        ("inference", "tile_rule", "largest"),
        ("train", "precision", "fp8"),
        ("train", "best_metric", "val_fg_iou"),
        ("weights", "preset", "heavy"),
    ],
)
def test_names_are_checked_against_what_is_registered(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be one of \[.*\], got '{value}'"):
        pipeline_from_dict(tiny_pipeline_dict() | {section: {key: value}})


def test_settings_that_used_to_crash_or_be_ignored_are_refused_or_honoured():
    for key in ("checkpoint_every_steps", "validate_every"):  # a ZeroDivisionError in fit before
        with pytest.raises(ConfigError, match=f"train.{key} must be at least 1, got 0"):
            pipeline_from_dict(tiny_pipeline_dict() | {"train": {key: 0}})
    # [weights] w0 = 20 with the paper preset used to be ignored unless preset = "custom"
    weights = pipeline_from_dict(tiny_pipeline_dict() | {"weights": {"w0": 20.0}}).weights.resolved()
    assert (weights.preset, weights.w0, weights.sigma) == ("paper", 20.0, 5.0)


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (-1.0, 99.8, r"image.percentile_low must be in \[0, image.percentile_high\), got -1.0"),
        (99.8, 1.0, r"image.percentile_low must be in \[0, image.percentile_high\), got 99.8"),
        (50.0, 50.0, r"image.percentile_low must be in \[0, image.percentile_high\), got 50.0"),
        (1.0, 100.5, r"image.percentile_high must be at most 100, got 100.5"),
    ],
)
def test_percentiles_are_checked(low, high, message):
    image = {"normalize": "percentile", "percentile_low": low, "percentile_high": high}
    with pytest.raises(ConfigError, match=message):
        pipeline_from_dict(tiny_pipeline_dict() | {"image": image})
    config = load_pipeline(REPO_ROOT / "pipelines" / "isbi2012.toml", overrides=["image.normalize=percentile"])
    assert (config.image.normalize, config.image.percentile_low, config.image.percentile_high) == (
        "percentile",
        1,
        99.8,
    )


def test_inference_settings_give_one_tiling_object():
    config = pipeline_from_dict(tiny_pipeline_dict() | {"inference": {"tile_size": 236, "batch_size": 3}})
    tiling = config.inference.tiling()
    assert (tiling.tile_size, tiling.batch_size, tiling.rule) == (236, 3, "fewest_flops")


def test_config_round_trips_through_a_plain_dict():
    config = pipeline_from_dict(tiny_pipeline_dict())
    again = pipeline_from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it():
    no_bf16 = {"AVX2": True, "AVX-512 BF16": False, "AMX BF16": False}
    assert resolve_precision("auto", [], no_bf16) == "float32"
    assert resolve_precision("auto", [], no_bf16 | {"AVX-512 BF16": True}) == "mixed_bfloat16"
    assert resolve_precision("auto", [], no_bf16 | {"AMX BF16": True}) == "mixed_bfloat16"
    assert resolve_precision("auto", [(8, 6)], no_bf16) == "mixed_bfloat16"
    assert resolve_precision("auto", [(7, 5)], no_bf16) == "mixed_float16"
    assert resolve_precision("mixed_bfloat16", [], no_bf16) == "mixed_bfloat16"  # an explicit choice stands


def test_a_finish_phase_is_checked_against_the_run_it_ends():
    def train(**settings):
        return tiny_pipeline_dict() | {"train": tiny_pipeline_dict()["train"] | settings}

    config = pipeline_from_dict(train(epochs=4, finish={"epochs": 1, "momentum": 0.95}))
    assert (config.train.finish.epochs, config.train.finish.momentum, config.train.finish.optimizer) == (1, 0.95, "sgd")
    assert config.to_dict()["train"]["finish"]["epochs"] == 1
    refused = {
        "train.finish.epochs must be in \\[0, train.epochs\\)": train(epochs=2, finish={"epochs": 2}),
        "it needs train.optimizer = 'adam', got 'sgd'": train(optimizer="sgd", finish={"epochs": 1}),
        "train.finish.optimizer must be one of .'sgd'., got 'adam'": train(finish={"epochs": 1, "optimizer": "adam"}),
        "train.finish.schedule must be one of": train(finish={"epochs": 1, "schedule": "step"}),
        "train.finish.momentum must be in \\[0, 1\\), got 1.0": train(finish={"epochs": 1, "momentum": 1.0}),
        "train.finish.learning_rate must be positive": train(finish={"epochs": 1, "learning_rate": 0.0}),
        "unknown key 'steps'": train(finish={"steps": 100}),
    }
    for message, data in refused.items():
        with pytest.raises(ConfigError, match=message):
            pipeline_from_dict(data)


def test_a_finish_phase_longer_than_a_shortened_run_is_refused_when_the_optimizer_is_built():
    from kunet.builders import build_optimizer, learning_rate_schedule
    from kunet.optimizers import FusedAdamThenSGD

    data = tiny_pipeline_dict()
    data["train"] |= {"epochs": 4, "steps_per_epoch": 10, "finish": {"epochs": 1, "warmup_steps": 5}}
    config = pipeline_from_dict(data)
    optimizer = build_optimizer(config, 40, "float32")
    assert isinstance(optimizer, FusedAdamThenSGD) and optimizer.switch_step == 30
    schedule = learning_rate_schedule(config, 40)
    assert float(schedule(29)) > 0 and float(schedule(30)) == 0.0 and float(schedule(35)) == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="train.finish.epochs = 1 \\(10 steps\\) leaves no Adam steps in a run of 10"):
        build_optimizer(config, 10, "float32")
