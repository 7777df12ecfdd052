"""Cross-field checks of a pipeline's settings that the dataclasses alone cannot express.

The allowed names of every extension point come from its registry (sources, normalisations, weight-map
presets, post-processing, tile rules, precisions, validation metrics), so adding an entry there is enough
for a pipeline to name it; fixed vocabularies are spelled here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kunet.errors import ConfigError

SCHEDULES = ("constant", "poly", "cosine")

if TYPE_CHECKING:
    from kunet.config import PipelineConfig


def validate(config: PipelineConfig, where: str) -> None:
    """Cross-field checks that the dataclasses alone cannot express."""

    def fail(message: str):
        raise ConfigError(f"{where}: {message}")

    from kunet.config import LABEL_KINDS
    from kunet.decision import POSTPROCESSING
    from kunet.precision import PRECISIONS
    from kunet.preprocess import NORMALIZATIONS
    from kunet.scoring import VALIDATION_METRICS
    from kunet.sources import SOURCES
    from kunet.tiling import TILE_RULES
    from kunet.weightmap import WEIGHT_PRESETS

    choices = {  # the registries hold what can be named; fixed vocabularies are spelled here
        "source.kind": (config.source.kind, tuple(SOURCES)),
        "labels.kind": (config.labels.kind, LABEL_KINDS),
        "image.normalize": (config.image.normalize, tuple(NORMALIZATIONS)),
        "augment.on": (config.augment.on, ("auto", "host", "device")),
        "model.variant": (config.model.variant, ("paper", "release2015")),
        "model.padding": (config.model.padding, ("valid", "same")),
        "model.activation": (config.model.activation, ("relu", "leaky_relu")),
        "train.optimizer": (config.train.optimizer, ("sgd", "adam")),
        "train.schedule": (config.train.schedule, SCHEDULES),
        "train.finish.optimizer": (config.train.finish.optimizer, ("sgd",)),
        "train.finish.schedule": (config.train.finish.schedule, SCHEDULES),
        "train.loss": (config.train.loss, ("weighted_ce", "weighted_ce_dice")),
        "train.precision": (config.train.precision, PRECISIONS),
        "train.cache": (config.train.cache, ("memory", "none")),
        "train.best_metric": (config.train.best_metric, VALIDATION_METRICS),
        "weights.preset": (config.weights.preset, tuple(WEIGHT_PRESETS)),
        "inference.postprocess": (config.inference.postprocess, tuple(POSTPROCESSING)),
        "inference.tile_rule": (config.inference.tile_rule, tuple(TILE_RULES)),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            fail(f"{key} must be one of {list(allowed)}, got {value!r}")
    if config.labels.kind == "multiclass" and len(config.labels.values) < 2:
        fail("labels.values needs at least two values for multiclass labels")
    if len(set(config.labels.class_values())) != len(config.labels.class_values()):
        fail(f"label values must be distinct, got {config.labels.class_values()}")
    if config.labels.border_width < 0 or config.labels.border_width and config.labels.kind != "instance":
        fail(f"labels.border_width must be 0, or a positive width for instance labels, got "
             f"{config.labels.border_width} for {config.labels.kind} labels")  # fmt: skip
    if config.labels.border_class and len(config.labels.names()) != 3:
        fail(f"labels.class_names must name 3 classes (background, cell, border) when labels.border_width > 0, "
             f"got {config.labels.class_names}")  # fmt: skip
    if config.labels.kind == "binary" and config.labels.foreground_value == config.labels.background_value:
        fail("labels.foreground_value and labels.background_value must differ")
    if not 0.0 <= config.records.val_fraction < 1.0:
        fail(f"records.val_fraction must be in [0, 1), got {config.records.val_fraction}")
    if config.records.shards < 1 or config.records.workers < 1:
        fail("records.shards and records.workers must be at least 1")
    if config.train.batch_size < 1 or config.train.steps_per_epoch < 1 or config.train.epochs < 1:
        fail("train.batch_size, train.steps_per_epoch and train.epochs must be at least 1")
    finish = config.train.finish
    if not 0 <= finish.epochs < config.train.epochs:
        fail(f"train.finish.epochs must be in [0, train.epochs), the run's last epochs; got {finish.epochs} "
             f"of train.epochs = {config.train.epochs}")  # fmt: skip
    if finish.epochs and config.train.optimizer != "adam":
        fail(f"train.finish switches from Adam to SGD; it needs train.optimizer = 'adam', got "
             f"{config.train.optimizer!r}")  # fmt: skip
    if not 0.0 < config.inference.threshold < 1.0:
        fail(f"inference.threshold must be in (0, 1), got {config.inference.threshold}")
    for key, value, ok, requirement in _number_checks(config):
        if not ok:
            fail(f"{key} must be {requirement}, got {value!r}")
    for problem in config.augment.problems():
        fail(f"augment.{problem}")
    _validate_model(config, fail)


def _number_checks(config: PipelineConfig) -> list[tuple[str, Any, bool, str]]:
    """(key, value, acceptable, requirement) for every number with an obvious range; NaN fails them all."""
    model, train, inference, weights = config.model, config.train, config.inference, config.weights.resolved()
    low, high = config.image.percentile_low, config.image.percentile_high
    at_least_one = {
        "image.channels": config.image.channels,
        "model.base_filters": model.base_filters,
        "train.validate_every": train.validate_every,
        "train.checkpoint_every_steps": train.checkpoint_every_steps,
        "train.shuffle_buffer": train.shuffle_buffer,
        "inference.batch_size": inference.batch_size,
    }
    not_negative = {
        "train.warmup_steps": train.warmup_steps,
        "train.finish.warmup_steps": train.finish.warmup_steps,
        "train.clip_norm": train.clip_norm,
        "train.max_minutes": train.max_minutes,
        "train.dice_weight": train.dice_weight,
        "inference.tile_size": inference.tile_size,
        "inference.min_object_size": inference.min_object_size,
        "weights.w0": weights.w0,
    }
    checks = [(key, value, value >= 1, "at least 1") for key, value in at_least_one.items()]
    checks += [(key, value, value >= 0, "at least 0") for key, value in not_negative.items()]
    return checks + [
        ("model.dropout", model.dropout, 0.0 <= model.dropout < 1.0, "in [0, 1)"),
        ("image.percentile_low", low, 0.0 <= low < high, "in [0, image.percentile_high)"),
        ("image.percentile_high", high, high <= 100.0, "at most 100"),
        ("train.learning_rate", train.learning_rate, train.learning_rate > 0, "positive"),
        ("train.momentum", train.momentum, 0.0 <= train.momentum < 1.0, "in [0, 1)"),
        ("train.finish.learning_rate", train.finish.learning_rate, train.finish.learning_rate > 0, "positive"),
        ("train.finish.momentum", train.finish.momentum, 0.0 <= train.finish.momentum < 1.0, "in [0, 1)"),
        ("inference.memory_budget_mb", inference.memory_budget_mb, inference.memory_budget_mb > 0, "positive"),
        ("inference.seed_threshold", inference.seed_threshold, 0.0 < inference.seed_threshold <= 1.0, "in (0, 1]"),
        ("inference.seed_smoothing", inference.seed_smoothing, 0.0 <= inference.seed_smoothing <= 16.0, "in [0, 16]"),
        ("weights.sigma", weights.sigma, weights.sigma > 0, "positive"),
        ("weights.sigma_factor", weights.sigma_factor, weights.sigma_factor > 0, "positive"),
        ("weights.class_weights", weights.class_weights, all(w >= 0 for w in weights.class_weights), "at least 0"),
    ]


def _validate_model(config: PipelineConfig, fail) -> None:
    """The net's depth (capped: the smallest tile grows as 2^depth) and tile sizes that fit it."""
    from kunet.sizes import check_depth, output_size

    model = config.model
    tile_sizes = {"train.tile_size": config.train.tile_size}
    if config.inference.tile_size:
        tile_sizes["inference.tile_size"] = config.inference.tile_size
    try:
        check_depth(model.depth)
    except ValueError as error:
        fail(f"model.{error}")
    for key, size in tile_sizes.items():
        try:
            output_size(size, model.depth, model.padding)
        except ValueError as error:
            fail(f"{key}: {error}")
