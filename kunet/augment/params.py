"""The augmentation's parameters and the tile-size check every entry point makes."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """The augmentation's parameters; mirrors :class:`kunet.config.AugmentConfig` minus ``on``.

    ``elastic_points`` x ``elastic_points`` grid nodes over the input tile with N(0, ``elastic_sigma``)
    displacements (pixels); ``rotation_degrees``: uniform angle in +-that; ``shift``: tile centre uniform
    over the image (else the image centre); ``flip``: the 8 dihedral symmetries; ``scale_range``: isotropic
    scale in [1 - r, 1 + r]; gray values in [0, 1] intensity space: ``brightness`` shift U(-b, b),
    ``contrast`` factor U(1 - c, 1 + c) about the tile mean, ``gamma`` exponent exp(U(-g, g)) (brightness
    and contrast saturate at 0 and 1 before it), additive Gaussian noise of std ``noise_std`` (not clipped);
    ``foreground_bias``: probability that the tile is centred on a random pixel of class > 0. Zero disables
    each of them.
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

    def __post_init__(self):
        if self.elastic_sigma < 0:
            raise ValueError(f"elastic_sigma must be >= 0, got {self.elastic_sigma}")
        if self.elastic_sigma > 0 and self.elastic_points < 2:
            raise ValueError(f"elastic_points must be >= 2, got {self.elastic_points}")
        if not 0.0 <= self.scale_range < 1.0:
            raise ValueError(f"scale_range must be in [0, 1), got {self.scale_range}")
        if not 0.0 <= self.contrast <= 1.0:
            raise ValueError(f"contrast must be in [0, 1], got {self.contrast}")
        if not 0.0 <= self.foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {self.foreground_bias}")
        for name in ("rotation_degrees", "brightness", "gamma", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config) -> AugmentParams:
        """From a :class:`kunet.config.AugmentConfig` (or anything with its fields; ``on`` is ignored)."""
        config = getattr(config, "augment", config)  # a whole PipelineConfig works too
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

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
