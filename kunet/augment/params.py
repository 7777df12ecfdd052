"""The augmentation's parameters and the tile-size check every entry point makes."""

from __future__ import annotations

import dataclasses

from kunet.config import AugmentSettings


@dataclasses.dataclass
class AugmentParams(AugmentSettings):
    """The augmentation's parameters (the settings of :class:`kunet.config.AugmentSettings`), checked.

    Raises:
        ValueError: a setting out of range.
    """

    def __post_init__(self):
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_config(cls, config) -> AugmentParams:
        """From a :class:`kunet.config.AugmentConfig` (or anything with its fields; ``on`` is ignored)."""
        config = getattr(config, "augment", config)  # a whole PipelineConfig works too
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(AugmentSettings)})

    @classmethod
    def disabled(cls) -> AugmentParams:
        """Identity geometry, no gray-value change, the tile centred on the image."""
        return cls(
            elastic_sigma=0.0,
            rotation_degrees=0.0,
            shift=False,
            flip=False,
            scale_range=0.0,
            brightness=0.0,
            contrast=0.0,
            gamma=0.0,
            noise_std=0.0,
            foreground_bias=0.0,
        )

    @property
    def has_affine(self) -> bool:
        return self.rotation_degrees > 0 or self.scale_range > 0 or self.flip

    @property
    def has_elastic(self) -> bool:
        return self.elastic_sigma > 0

    @property
    def has_gray_values(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.gamma > 0 or self.noise_std > 0


def _check_tiles(input_tile: int, output_tile: int | None) -> None:
    if int(input_tile) < 1:
        raise ValueError(f"input_tile must be >= 1, got {input_tile}")
    if output_tile is not None and not 1 <= int(output_tile) <= int(input_tile):
        raise ValueError(f"output_tile must be in [1, input_tile={input_tile}], got {output_tile}")
