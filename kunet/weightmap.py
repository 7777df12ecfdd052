"""The paper's pixel weight maps (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (f * sigma^2))

d1 and d2 are the distances to the nearest and second-nearest object; w_c balances the class
frequencies. The paper uses w0 = 10, sigma = 5 px and f = 2; Falk et al. (2019) use w0 = 50, sigma = 6,
f = 1 with w_c = 0.1 on background and 1 on foreground. The border term is added on background pixels
only: it exists to make the net learn the thin background gaps between touching objects (the paper's
Fig. 3d), and inside an object d1 = 0 so the term would only blur the object's own border.

Distances use OpenCV's exact Euclidean distance transform, one per object, restricted to a window
around the object: beyond ``cutoff_distance`` from an object the term is below 1e-6 * w0, far under the
float16 resolution the records store, so pixels farther away never need that object's distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from kunet.config import WeightMapConfig
from kunet.errors import KunetError

# exp(-13.8) ~ 1e-6: the border term is negligible once (d1 + d2)^2 exceeds 13.8 * f * sigma^2.
_NEGLIGIBLE_EXPONENT = 13.8


@dataclass(frozen=True)
class WeightPreset:
    """The parameters of eq. 2 a ``[weights] preset`` stands for.

    Args:
        w0, sigma, sigma_factor: The border term ``w0 * exp(-(d1 + d2)^2 / (sigma_factor * sigma^2))``.
        class_weights: w_c: ``"balanced"`` (inverse class frequency of the training split, the most frequent
            class 1), ``"uniform"`` (all 1) or one value per class.
    """

    w0: float
    sigma: float
    sigma_factor: float = 2.0
    class_weights: str | tuple[float, ...] = "balanced"

    @property
    def fixed_class_weights(self) -> tuple[float, ...]:
        """The class weights when they are given values, else empty (computed from the data)."""
        return () if isinstance(self.class_weights, str) else tuple(self.class_weights)


# [weights] preset -> parameters (docs/EXTENDING.md: adding a preset). "custom" is the paper's values, kept
# for pipelines written when fields other than the preset were read only under it.
WEIGHT_PRESETS: dict[str, WeightPreset] = {
    "paper": WeightPreset(w0=10.0, sigma=5.0, sigma_factor=2.0, class_weights="balanced"),
    "falk2019": WeightPreset(w0=50.0, sigma=6.0, sigma_factor=1.0, class_weights=(0.1, 1.0)),
    "none": WeightPreset(w0=0.0, sigma=1.0, sigma_factor=2.0, class_weights="uniform"),
    "custom": WeightPreset(w0=10.0, sigma=5.0, sigma_factor=2.0, class_weights="balanced"),
}


def class_weights_for(weights: WeightMapConfig, train_counts: np.ndarray, num_classes: int) -> np.ndarray:
    """w_c of eq. 2 per class index: the configured values, else as the preset says (balanced on
    ``train_counts``, the pixels per class in the training split, or uniform)."""
    resolved = weights.resolved()
    if resolved.class_weights:
        if len(resolved.class_weights) != num_classes:
            raise KunetError(f"weights.class_weights has {len(resolved.class_weights)} values for {num_classes} "
                             "classes")  # fmt: skip
        return np.asarray(resolved.class_weights, dtype=np.float64)
    if WEIGHT_PRESETS[weights.preset].class_weights == "uniform":
        return np.ones(num_classes)
    return class_balance_weights(train_counts)


# The largest balancing weight. A class as rare as the contacts of a border class (about 1 % of the pixels
# of DIC-HeLa, weight 107 uncapped) otherwise outweighs everything else: a net trained so predicted border
# everywhere. Two-class data stay below it (ISBI's membrane about 3.6).
MAX_BALANCE_WEIGHT = 10.0


def class_balance_weights(class_counts: np.ndarray) -> np.ndarray:
    """Inverse class frequency scaled so the most frequent class has weight 1 (absent classes get 1), at most
    :data:`MAX_BALANCE_WEIGHT`."""
    counts = np.asarray(class_counts, dtype=np.float64)
    weights = np.ones_like(counts)
    present = counts > 0
    weights[present] = np.minimum(counts.max() / counts[present], MAX_BALANCE_WEIGHT)
    return weights


def cutoff_distance(params: WeightMapConfig) -> float:
    """Distance beyond which an object no longer contributes to the border term (see module docstring)."""
    return math.sqrt(_NEGLIGIBLE_EXPONENT * params.sigma_factor) * params.sigma


def nearest_two_distances(objects: np.ndarray, num_objects: int, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel distances to the nearest and second-nearest object, exact up to ``limit`` (inf beyond).

    Args:
        objects: int32 [H, W], 0 = no object, 1..num_objects.
        num_objects: Number of objects.
        limit: Distances above this are reported as inf.
    """
    height, width = objects.shape
    d1 = np.full((height, width), np.inf, dtype=np.float32)
    d2 = np.full((height, width), np.inf, dtype=np.float32)
    if num_objects == 0:
        return d1, d2
    margin = int(math.ceil(limit)) + 1
    ys, xs = np.nonzero(objects)
    ids = objects[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, ys, xs = ids[order], ys[order], xs[order]
    starts = np.searchsorted(ids, np.arange(1, num_objects + 2))
    for index in range(num_objects):
        begin, end = starts[index], starts[index + 1]
        if begin == end:
            continue
        y0, y1 = max(ys[begin:end].min() - margin, 0), min(ys[begin:end].max() + margin + 1, height)
        x0, x1 = max(xs[begin:end].min() - margin, 0), min(xs[begin:end].max() + margin + 1, width)
        # Every pixel of the object lies inside the window, so the windowed transform is exact there.
        not_object = (objects[y0:y1, x0:x1] != index + 1).astype(np.uint8)
        distance = cv2.distanceTransform(not_object, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        distance[distance > limit] = np.inf
        window_d1, window_d2 = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        np.minimum(window_d2, np.maximum(window_d1, distance), out=window_d2)
        np.minimum(window_d1, distance, out=window_d1)
    return d1, d2


def border_term(objects: np.ndarray, num_objects: int, params: WeightMapConfig) -> np.ndarray:
    """w0 * exp(-(d1 + d2)^2 / (f * sigma^2)) for every pixel (0 where fewer than two objects are near)."""
    if params.w0 == 0 or num_objects < 2:
        return np.zeros(objects.shape, dtype=np.float32)
    d1, d2 = nearest_two_distances(objects, num_objects, cutoff_distance(params))
    total = d1 + d2
    term = np.zeros(objects.shape, dtype=np.float32)
    near = np.isfinite(total)
    term[near] = params.w0 * np.exp(-np.square(total[near]) / (params.sigma_factor * params.sigma**2))
    return term


def weight_map(
    classes: np.ndarray,
    objects: np.ndarray,
    num_objects: int,
    params: WeightMapConfig,
    class_weights: np.ndarray,
) -> np.ndarray:
    """The full weight map w = w_c + border term (border term on background pixels only).

    Args:
        classes: uint8 [H, W] class index per pixel (0 = background).
        objects: int32 [H, W] object ids (0 = none), e.g. cells separated by carved ridges.
        num_objects: Number of objects in ``objects``.
        params: Resolved weight-map parameters (see :meth:`WeightMapConfig.resolved`).
        class_weights: w_c per class index.

    Returns:
        float32 [H, W].

    Example:
        >>> params = WeightMapConfig().resolved()
        >>> w = weight_map(classes, objects, n, params, class_balance_weights(np.bincount(classes.ravel())))
    """
    class_weights = np.asarray(class_weights, dtype=np.float32)
    if classes.max(initial=0) >= len(class_weights):
        raise ValueError(f"class index {classes.max()} has no class weight (got {len(class_weights)})")
    weights = class_weights[classes]
    if params.w0 > 0:
        weights = weights + border_term(objects, num_objects, params) * (classes == 0)
    return weights.astype(np.float32)
