"""Pipeline configuration: plain dataclasses loaded from ``pipelines/*.toml`` with dotted CLI overrides.

One TOML file describes one dataset/experiment. Sections map one-to-one onto the dataclasses below;
an unknown section or key is an error that names the file and the key (a typo must not silently fall
back to a default). Relative paths resolve against ``root``, which is itself relative to the TOML
file's folder (the shipped pipelines set ``root = ".."``, the repository root).

Example:
    >>> config = load_pipeline("pipelines/isbi2012.toml", overrides=["train.steps_per_epoch=50"])
    >>> config.model.base_filters
    64
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A pipeline file or override that cannot be used; the message names the file and the key."""


@dataclass
class SourceConfig:
    """Where the labelled frames come from.

    ``kind``: ``"folders"`` (``images/`` + ``labels/`` matched by file stem), ``"tiff_stack"`` (multi-page
    image and label TIFFs, e.g. ISBI 2012's ``train-volume.tif``/``train-labels.tif``) or ``"ctc"``
    (Cell Tracking Challenge: ``root/NN/tXXX.tif`` + ``root/NN_GT/SEG/man_segXXX.tif``).
    """

    kind: str = "folders"
    images: str = ""
    labels: str = ""
    root: str = ""
    sequences: list[str] = field(default_factory=lambda: ["01", "02"])


@dataclass
class LabelConfig:
    """What the label values mean.

    ``kind``: ``"binary"`` (``foreground_value`` is class 1, ``background_value`` class 0; ISBI 2012 uses
    255 = cell interior, 0 = membrane), ``"instance"`` (0 = background, every other id one object; touching
    objects are separated by a carved 1-px background ridge) or ``"multiclass"`` (``values[i]`` is class i).
    """

    kind: str = "binary"
    foreground_value: int = 255
    background_value: int = 0
    values: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])

    @property
    def num_classes(self) -> int:
        return len(self.values) if self.kind == "multiclass" else 2

    def class_values(self) -> list[int]:
        """The label value written for each class index in output masks."""
        if self.kind == "multiclass":
            return list(self.values)
        if self.kind == "binary":
            return [self.background_value, self.foreground_value]
        return [0, 255]


@dataclass
class WeightMapConfig:
    """Paper eq. 2: w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (sigma_factor * sigma^2)).

    ``preset``: ``"paper"`` (w0 10, sigma 5, factor 2, w_c balancing class frequencies), ``"falk2019"``
    (w0 50, sigma 6, factor 1, w_c = 0.1 background / 1 foreground), ``"none"`` (all ones) or ``"custom"``
    (the fields below as given). ``class_weights`` empty means "balance the measured class frequencies".
    """

    preset: str = "paper"
    w0: float = 10.0
    sigma: float = 5.0
    sigma_factor: float = 2.0
    class_weights: list[float] = field(default_factory=list)

    def resolved(self) -> WeightMapConfig:
        """The effective parameters after applying ``preset``."""
        if self.preset == "paper":
            return WeightMapConfig("paper", 10.0, 5.0, 2.0, list(self.class_weights))
        if self.preset == "falk2019":
            return WeightMapConfig("falk2019", 50.0, 6.0, 1.0, list(self.class_weights) or [0.1, 1.0])
        if self.preset == "none":
            return WeightMapConfig("none", 0.0, 1.0, 2.0, list(self.class_weights) or [])
        if self.preset == "custom":
            return dataclasses.replace(self)
        raise ConfigError(f"weights.preset must be paper, falk2019, none or custom, got {self.preset!r}")


@dataclass
class RecordsConfig:
    """Where and how ``kunet build-records`` writes the TFRecords."""

    out: str = ""
    shards: int = 2
    val_fraction: float = 0.25
    val_ids: list[str] = field(default_factory=list)
    workers: int = 2


@dataclass
class ImageConfig:
    """Input images: channels and the normalisation applied before the net (also inside exports).

    ``normalize``: ``"standardize"`` (per-image zero mean, unit variance over the whole image, not the
    tile, so tiling never changes the result) or ``"scale"`` (divide by the dtype's maximum).
    """

    channels: int = 1
    normalize: str = "standardize"


@dataclass
class ModelConfig:
    """Arguments of :class:`kunet.model.UNet` (``num_classes`` and channels come from labels/image)."""

    variant: str = "paper"
    base_filters: int = 64
    depth: int = 4
    padding: str = "valid"
    batch_norm: bool = False
    dropout: float = 0.5
    activation: str = "relu"


@dataclass
class AugmentConfig:
    """The paper's augmentation, composed into one coordinate map per tile (see ``kunet.augment``)."""

    on: str = "auto"
    elastic_points: int = 3
    elastic_sigma: float = 10.0
    rotation_degrees: float = 180.0
    shift: bool = True
    flip: bool = True
    scale_range: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    noise_std: float = 0.02
    foreground_bias: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation and run settings for ``kunet fit``."""

    tile_size: int = 572
    batch_size: int = 1
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    momentum: float = 0.99
    schedule: str = "constant"
    warmup_steps: int = 0
    clip_norm: float = 0.0
    loss: str = "weighted_ce"
    dice_weight: float = 1.0
    epochs: int = 10
    steps_per_epoch: int = 100
    max_minutes: float = 0.0
    precision: str = "float32"
    jit_compile: bool = False
    seed: int = 0
    validate_every: int = 1
    best_metric: str = "val_foreground_iou"
    checkpoint_every_steps: int = 50
    shuffle_buffer: int = 64
    cache: str = "memory"
    # A .keras model of the same architecture whose weights start the run (fine-tuning); relative paths
    # resolve against the pipeline's root like every other path.
    init_from: str = ""


@dataclass
class InferenceConfig:
    """Overlap-tile prediction and the decision rule that turns probabilities into masks."""

    # How validation during training tiles its images (predict/evaluate take --tile-size instead).
    tile_size: int = 0
    memory_budget_mb: int = 4096
    batch_size: int = 1
    # The decision rule, stored with the model; `kunet tune` replaces it with the one it measures best.
    test_time_mirroring: bool = False
    threshold: float = 0.5
    postprocess: str = "none"
    seed_threshold: float = 0.9
    min_object_size: int = 0


@dataclass
class PipelineConfig:
    """One dataset/experiment: the whole TOML file."""

    name: str = "unnamed"
    root: str = "."
    source: SourceConfig = field(default_factory=SourceConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    weights: WeightMapConfig = field(default_factory=WeightMapConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Where relative paths resolve; set by load_pipeline, not read from TOML.
    base_dir: str = field(default=".", metadata={"internal": True})
    config_path: str = field(default="", metadata={"internal": True})

    def path(self, value: str) -> Path:
        """Resolves a path from the config: absolute as given, relative against ``base_dir``."""
        expanded = Path(os.path.expandvars(os.path.expanduser(value)))
        return expanded if expanded.is_absolute() else Path(self.base_dir) / expanded

    def records_dir(self) -> Path:
        return self.path(self.records.out or f"records/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the TOML-visible settings (for manifests, run directories and exports)."""
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        data.pop("config_path")
        return data


def _is_internal(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("internal"))


def _coerce(value: Any, target_type: Any, where: str) -> Any:
    """Checks and converts one TOML value to the dataclass field type."""
    origin = getattr(target_type, "__origin__", None)
    if target_type is bool:
        if isinstance(value, bool):
            return value
    elif target_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif target_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif target_type is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item_type,) = target_type.__args__
        if isinstance(value, list):
            return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    else:  # pragma: no cover - every field type is covered above
        return value
    type_name = getattr(target_type, "__name__", str(target_type))
    raise ConfigError(f"{where}: expected {type_name}, got {value!r}")


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not _is_internal(f)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(fields))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _parse_override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare words are strings: --set train.optimizer=adam


def apply_overrides(data: dict, overrides: list[str], where: str = "override") -> dict:
    """Applies ``section.key=value`` strings (TOML values; bare words are strings) to a raw TOML dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where} {item!r}: expected section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_override_value(text.strip())
    return data


def _read_toml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the pipeline's .toml file (e.g. pipelines/isbi2012.toml)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the pipeline file ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a pipeline is a TOML text file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def load_pipeline(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Reads a pipeline TOML file and applies ``section.key=value`` overrides.

    Args:
        path: The TOML file.
        overrides: e.g. ``["train.epochs=3", "source.images=/data/em"]``.

    Raises:
        ConfigError: unreadable TOML, unknown keys or wrong types; the message names the file.
    """
    path = Path(path)
    raw = _read_toml(path)
    apply_overrides(raw, list(overrides or []), where=f"{path}: override")
    try:
        config = _build(PipelineConfig, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    config.config_path = str(path)
    config.base_dir = str((path.parent / config.root).resolve())
    validate(config, str(path))
    return config


def pipeline_from_dict(data: dict, base_dir: str | os.PathLike = ".", where: str = "<dict>") -> PipelineConfig:
    """Builds a config from a plain dict (as stored in run directories and manifests).

    Args:
        data: The TOML-shaped settings.
        base_dir: Where relative paths resolve.
        where: Names the source in errors, e.g. a run's ``config.json``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of pipeline settings, got {type(data).__name__}")
    try:
        config = _build(PipelineConfig, dict(data), "")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    config.base_dir = str(Path(base_dir).resolve())
    validate(config, where)
    return config


def validate(config: PipelineConfig, where: str) -> None:
    """Cross-field checks that the dataclasses alone cannot express."""

    def fail(message: str):
        raise ConfigError(f"{where}: {message}")

    choices = {
        "source.kind": (config.source.kind, ("folders", "tiff_stack", "ctc")),
        "labels.kind": (config.labels.kind, ("binary", "instance", "multiclass")),
        "image.normalize": (config.image.normalize, ("standardize", "scale")),
        "augment.on": (config.augment.on, ("auto", "host", "device")),
        "model.variant": (config.model.variant, ("paper", "release2015")),
        "model.padding": (config.model.padding, ("valid", "same")),
        "model.activation": (config.model.activation, ("relu", "leaky_relu")),
        "train.optimizer": (config.train.optimizer, ("sgd", "adam")),
        "train.schedule": (config.train.schedule, ("constant", "poly", "cosine")),
        "train.loss": (config.train.loss, ("weighted_ce", "weighted_ce_dice")),
        "train.precision": (config.train.precision, ("float32", "mixed_bfloat16", "mixed_float16")),
        "train.cache": (config.train.cache, ("memory", "none")),
        "inference.postprocess": (config.inference.postprocess, ("none", "grow", "watershed")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            fail(f"{key} must be one of {list(allowed)}, got {value!r}")
    config.weights.resolved()  # raises for an unknown preset
    if config.labels.kind == "multiclass" and len(config.labels.values) < 2:
        fail("labels.values needs at least two values for multiclass labels")
    if len(set(config.labels.class_values())) != len(config.labels.class_values()):
        fail(f"label values must be distinct, got {config.labels.class_values()}")
    if config.labels.kind == "binary" and config.labels.foreground_value == config.labels.background_value:
        fail("labels.foreground_value and labels.background_value must differ")
    if not 0.0 <= config.records.val_fraction < 1.0:
        fail(f"records.val_fraction must be in [0, 1), got {config.records.val_fraction}")
    if config.records.shards < 1 or config.records.workers < 1:
        fail("records.shards and records.workers must be at least 1")
    if config.train.batch_size < 1 or config.train.steps_per_epoch < 1 or config.train.epochs < 1:
        fail("train.batch_size, train.steps_per_epoch and train.epochs must be at least 1")
    if not 0.0 < config.inference.threshold < 1.0:
        fail(f"inference.threshold must be in (0, 1), got {config.inference.threshold}")
    for key, value, ok, requirement in _number_checks(config):
        if not ok:
            fail(f"{key} must be {requirement}, got {value!r}")
    _validate_model(config, fail)


def _number_checks(config: PipelineConfig) -> list[tuple[str, Any, bool, str]]:
    """(key, value, acceptable, requirement) for every number with an obvious range; NaN fails them all."""
    model, train, inference, weights = config.model, config.train, config.inference, config.weights.resolved()
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
        ("train.learning_rate", train.learning_rate, train.learning_rate > 0, "positive"),
        ("train.momentum", train.momentum, 0.0 <= train.momentum < 1.0, "in [0, 1)"),
        ("inference.memory_budget_mb", inference.memory_budget_mb, inference.memory_budget_mb > 0, "positive"),
        ("inference.seed_threshold", inference.seed_threshold, 0.0 < inference.seed_threshold <= 1.0, "in (0, 1]"),
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
