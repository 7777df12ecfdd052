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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kunet.errors import ConfigError  # noqa: F401  (kunet.config.ConfigError stays importable)
from kunet.pipeline_checks import validate
from kunet.toml_tables import (  # noqa: F401  (apply_overrides: kunet.config's public name)
    apply_overrides,
    dataclass_from_table,
    is_internal,
    read_toml,
)


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


# What labels.kind may name (LabelConfig below says what each means); also `kunet build-records --label-kind`.
LABEL_KINDS = ("binary", "instance", "multiclass")


@dataclass
class LabelConfig:
    """What the label values mean.

    ``kind``: ``"binary"`` (``foreground_value`` is class 1, ``background_value`` class 0; ISBI 2012 uses
    255 = cell interior, 0 = membrane), ``"instance"`` (0 = background, every other id one object; touching
    objects are separated by a carved 1-px background ridge) or ``"multiclass"`` (``values[i]`` is class i).

    ``border_width`` (instance labels only): 0 keeps the paper's two classes. N > 0 adds a third class,
    ``border``: the object pixels within N px (8-connected) of a separation ridge, the contacts between
    touching objects. The net then learns where cells touch as a class of its own rather than only
    through the weight map, and the decision rule seeds its watershed from the confident ``cell`` class
    (:mod:`kunet.decision`); the decided masks are two-class foreground, scored like the paper's.
    """

    kind: str = "binary"
    foreground_value: int = 255
    background_value: int = 0
    values: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=lambda: ["background", "foreground"])
    border_width: int = 0

    @property
    def border_class(self) -> bool:
        """Whether the net has the third, ``border`` class of instance labels (``border_width`` > 0)."""
        return self.kind == "instance" and self.border_width > 0

    @property
    def num_classes(self) -> int:
        if self.kind == "multiclass":
            return len(self.values)
        return 3 if self.border_class else 2

    def class_values(self) -> list[int]:
        """The label value written for each class index in output masks."""
        if self.kind == "multiclass":
            return list(self.values)
        if self.kind == "binary":
            return [self.background_value, self.foreground_value]
        return [0, 255, 128] if self.border_class else [0, 255]

    def names(self) -> list[str]:
        """One name per class: ``class_names``, with ``"border"`` appended for a border class not named."""
        if self.border_class and len(self.class_names) == 2:
            return [*self.class_names, "border"]
        return list(self.class_names)


@dataclass
class WeightMapConfig:
    """Paper eq. 2: w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (sigma_factor * sigma^2)).

    ``preset`` names an entry of :data:`kunet.weightmap.WEIGHT_PRESETS` (``"paper"``: w0 10, sigma 5, factor 2,
    w_c balancing class frequencies; ``"falk2019"``: w0 50, sigma 6, factor 1, w_c 0.1 / 1; ``"none"``: all
    ones). Each of ``w0``, ``sigma``, ``sigma_factor`` and ``class_weights`` that is set overrides the preset's
    value; unset (``None``, or an empty list) it is the preset's.
    """

    preset: str = "paper"
    w0: float | None = None
    sigma: float | None = None
    sigma_factor: float | None = None
    class_weights: list[float] = field(default_factory=list)

    def resolved(self) -> WeightMapConfig:
        """The effective parameters: the preset's, overridden by every field that is set.

        ``class_weights`` stays empty where the preset computes them from the data (see
        :func:`kunet.weightmap.class_weights_for`).
        """
        from kunet.weightmap import WEIGHT_PRESETS

        if self.preset not in WEIGHT_PRESETS:
            raise ConfigError(f"weights.preset must be one of {sorted(WEIGHT_PRESETS)}, got {self.preset!r}")
        preset = WEIGHT_PRESETS[self.preset]
        return WeightMapConfig(
            self.preset,
            preset.w0 if self.w0 is None else self.w0,
            preset.sigma if self.sigma is None else self.sigma,
            preset.sigma_factor if self.sigma_factor is None else self.sigma_factor,
            list(self.class_weights) or list(preset.fixed_class_weights),
        )


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
    tile, so tiling never changes the result), ``"scale"`` (divide by the dtype's maximum) or
    ``"percentile"`` (``(x - p_low) / (p_high - p_low)`` with the ``percentile_low`` and ``percentile_high``
    percentiles of the whole image, all channels together, as ``np.percentile``: CSBDeep's
    ``normalize(x, 1, 99.8)``, robust to hot pixels). The percentiles are used by ``"percentile"`` only.
    """

    channels: int = 1
    normalize: str = "standardize"
    percentile_low: float = 1.0
    percentile_high: float = 99.8


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
class AugmentSettings:
    """The paper's augmentation, composed into one coordinate map per tile (``kunet.augment``, whose
    ``AugmentParams`` are these settings, checked).

    ``elastic_points`` x ``elastic_points`` grid nodes over the input tile with N(0, ``elastic_sigma``)
    displacements (pixels); ``rotation_degrees``: uniform angle in +-that; ``shift``: tile centre uniform
    over the image (else the image centre); ``flip``: the 8 dihedral symmetries; ``scale_range``: isotropic
    scale in [1 - r, 1 + r]; gray values in [0, 1] intensity space: ``brightness`` shift U(-b, b),
    ``contrast`` factor U(1 - c, 1 + c) about the tile mean, ``gamma`` exponent exp(U(-g, g)), additive
    Gaussian noise of std ``noise_std``; ``foreground_bias``: probability that the tile is centred on a
    random pixel of class > 0. Zero disables each of them.
    """

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

    def problems(self) -> list[str]:
        """What is out of range, as ``name must be ..., got value`` phrases (empty when all is well)."""
        found = []
        if self.elastic_sigma < 0:
            found.append(f"elastic_sigma must be >= 0, got {self.elastic_sigma}")
        if self.elastic_sigma > 0 and self.elastic_points < 2:
            found.append(f"elastic_points must be >= 2, got {self.elastic_points}")
        if not 0.0 <= self.scale_range < 1.0:
            found.append(f"scale_range must be in [0, 1), got {self.scale_range}")
        for name in ("contrast", "foreground_bias"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                found.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("rotation_degrees", "brightness", "gamma", "noise_std"):
            if not getattr(self, name) >= 0:
                found.append(f"{name} must be >= 0, got {getattr(self, name)}")
        return found


@dataclass
class AugmentConfig(AugmentSettings):
    """``[augment]``: the augmentation, and where it runs (``on``: auto, host or device). ``jit_compile``:
    the host placement's per-tile sampler compiled by XLA (about 4x the tiles/s on a CPU, for a few seconds
    of compilation per process and frame size; off, short runs such as tests start sooner)."""

    on: str = "auto"
    jit_compile: bool = True


@dataclass
class FinishConfig:
    """``[train.finish]``: the run's last ``epochs`` with SGD and momentum, after Adam (``epochs = 0``: none).

    Issue 19's Rand lever: Adam for most of the schedule, then the paper's optimiser (momentum 0.99) for its last
    part, with a schedule of its own that starts where Adam stops (``warmup_steps`` from a learning rate of 0,
    then ``schedule`` over the remaining steps). The SGD momentum starts at 0; the weights carry over. One run
    and one checkpoint: a run stopped in either part resumes where it was.
    """

    epochs: int = 0  # counted within train.epochs: the run's last epochs
    optimizer: str = "sgd"
    learning_rate: float = 0.001
    momentum: float = 0.99
    schedule: str = "cosine"
    warmup_steps: int = 0


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
    # The paper's final model: the records' validation frames join the training stream and nothing is
    # validated, after the settings (and the decision rule) were chosen on them; best.keras is the last model.
    final: bool = False
    finish: FinishConfig = field(default_factory=FinishConfig)


@dataclass
class InferenceConfig:
    """Overlap-tile prediction and the decision rule that turns probabilities into masks."""

    # How validation during training tiles its images (predict/evaluate take --tile-size instead):
    # a fixed tile_size, or 0 and a rule of kunet.tiling.TILE_RULES.
    tile_size: int = 0
    tile_rule: str = "fewest_flops"
    memory_budget_mb: int = 4096
    batch_size: int = 1
    # The decision rule, stored with the model; `kunet tune` replaces it with the one it measures best.
    test_time_mirroring: bool = False
    threshold: float = 0.5
    postprocess: str = "none"
    seed_threshold: float = 0.9
    seed_smoothing: float = 0.0  # Gaussian sigma (px) of p(interior) before the watershed's seeds; 0 = none
    min_object_size: int = 0

    def tiling(self):
        """These settings as :class:`kunet.tiling.TilingOptions`."""
        from kunet.tiling import TilingOptions

        return TilingOptions(self.tile_size, self.tile_rule, self.batch_size, self.memory_budget_mb)


@dataclass
class PackageConfig:
    """What a bioimage.io package says about the model (``kunet export --format bioimageio``; flags override).

    ``name`` defaults to the pipeline's name; ``license`` is an SPDX identifier; ``documentation`` is Markdown
    added to the package's README (the data set, its source, how the labels were made).
    """

    name: str = ""
    description: str = ""
    authors: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=lambda: ["segmentation", "unet", "kunet"])
    license: str = "CC-BY-4.0"
    documentation: str = ""


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
    package: PackageConfig = field(default_factory=PackageConfig)
    # Where relative paths resolve; set by load_pipeline, not read from TOML.
    base_dir: str = field(default=".", metadata={"internal": True})
    config_path: str = field(default="", metadata={"internal": True})

    def path(self, value: str) -> Path:
        """Resolves a path from the config: absolute as given, relative against ``base_dir``."""
        expanded = Path(os.path.expandvars(os.path.expanduser(value)))
        return expanded if expanded.is_absolute() else Path(self.base_dir) / expanded

    def records_dir(self) -> Path | str:
        """``records.out`` resolved like other paths; a URI (``gs://bucket/x``) stays a string as written."""
        from kunet import uris

        out = self.records.out or f"records/{self.name}"
        return uris.location(out) if uris.is_remote(out) else self.path(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the TOML-visible settings (for manifests, run directories and exports)."""
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        data.pop("config_path")
        return data


def load_pipeline(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    """Reads a pipeline TOML file and applies ``section.key=value`` overrides.

    Args:
        path: The TOML file.
        overrides: e.g. ``["train.epochs=3", "source.images=/data/em"]``.

    Raises:
        ConfigError: unreadable TOML, unknown keys or wrong types; the message names the file.
    """
    path = Path(path)
    raw = read_toml(path)
    apply_overrides(raw, list(overrides or []), where=f"{path}: override")
    try:
        config = dataclass_from_table(PipelineConfig, raw, "")
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
        config = dataclass_from_table(PipelineConfig, dict(data), "")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    config.base_dir = str(Path(base_dir).resolve())
    validate(config, where)
    return config
