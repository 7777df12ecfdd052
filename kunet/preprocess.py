"""Intensity normalisation shared by training, prediction and exported graphs.

Images enter as stored (uint8, uint16, int16 or float). They are first brought to [0, 1] (augmentation's
gray-value changes work in that range): unsigned integers are divided by their dtype's maximum, int16 is
shifted by 32768 into uint16's range first (the order of values is kept), and float images are taken as
they are (values in [0, 1] are expected under ``"scale"``; under ``"standardize"`` their scale does not
matter). They are then normalised for the net with statistics of the *whole* image, never of a tile, so
that tiling cannot change a prediction:

* ``"standardize"``: zero mean, unit variance over all pixels and channels of the image.
* ``"scale"``: the [0, 1] values as they are.

Both are registered in :data:`NORMALIZATIONS` as ``(x - shift) / scale`` with per-image statistics.

The NumPy and TensorFlow versions compute the same thing; tests check they agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Floor for the standard deviation so a blank image does not explode (1/255: one 8-bit gray level).
MIN_STD = 1.0 / 255.0


def dtype_max(dtype) -> float:
    """The value that maps to 1.0: 255 for uint8, 65535 for uint16, 1.0 for float images."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


# int16 images are shifted by this into uint16's range (TIFFs of signed 16-bit data, e.g. from some cameras).
INT16_SHIFT = 32768


def raw_to_unit(image: np.ndarray, integer_max: float) -> np.ndarray:
    """Raw values -> float32 as the net's [0, 1] range: integers divided by ``integer_max`` (int16 shifted by
    :data:`INT16_SHIFT` first), float images as they are (a float32 image is returned without a copy)."""
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    values = image.astype(np.float32)
    if image.dtype == np.int16:
        values += np.float32(INT16_SHIFT)
    return values / np.float32(integer_max)


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Scales an image to float32 in [0, 1] by its dtype's maximum: uint8 / 255, uint16 / 65535, int16
    (+ 32768) / 65535; float images pass unchanged (see the module's docstring)."""
    return raw_to_unit(image, dtype_max(np.uint16 if image.dtype == np.int16 else image.dtype))


def image_statistics(unit_image: np.ndarray) -> tuple[float, float]:
    """Mean and floored standard deviation over the whole image (all pixels and channels)."""
    values = unit_image.astype(np.float64)
    return float(values.mean()), float(max(values.std(), MIN_STD))


def streamed_image_statistics(image: np.ndarray, to_unit, chunk_values: int = 2**22) -> tuple[float, float]:
    """:func:`image_statistics` of ``to_unit(image)`` computed a block of rows at a time.

    No float copy of the whole image is made, so a memory-mapped 20000 x 20000 image costs a few
    megabytes. Blocks are merged with Chan et al.'s pairwise update of mean and squared deviations (in
    float64, as exact as the whole-image computation to ~1e-12).

    Args:
        image: Raw image [H, W] or [H, W, C] (e.g. memory-mapped).
        to_unit: Maps a block of raw rows to [0, 1] float values as the net sees them.
        chunk_values: Values per block.
    """
    rows = max(1, chunk_values // max(1, image[:1].size))
    count, mean, squared_deviations = 0, 0.0, 0.0
    for top in range(0, image.shape[0], rows):
        values = np.asarray(to_unit(image[top : top + rows]), np.float64)
        block_mean = float(values.mean())
        block_squared = float(np.square(values - block_mean).sum())
        delta, total = block_mean - mean, count + values.size
        mean += delta * values.size / total
        squared_deviations += block_squared + delta * delta * count * values.size / total
        count = total
    return mean, float(max(np.sqrt(squared_deviations / count), MIN_STD))


def tf_image_statistics(unit_images):
    """TensorFlow version of :func:`image_statistics` for a batch [B, H, W, C] -> (mean [B], std [B])."""
    import tensorflow as tf

    mean = tf.reduce_mean(unit_images, axis=[1, 2, 3])
    variance = tf.reduce_mean(tf.square(unit_images - mean[:, None, None, None]), axis=[1, 2, 3])
    return mean, tf.maximum(tf.sqrt(variance), MIN_STD)


def _whole_range(unit_image) -> tuple[float, float]:
    return 0.0, 1.0


def _tf_whole_range(unit_images):
    import tensorflow as tf

    count = tf.shape(unit_images)[0]
    return tf.zeros([count], unit_images.dtype), tf.ones([count], unit_images.dtype)


def _streamed_whole_range(image, to_unit) -> tuple[float, float]:
    return 0.0, 1.0


@dataclass(frozen=True)
class Normalization:
    """``x -> (x - shift) / scale`` of the [0, 1] image, with ``(shift, scale)`` from the whole image.

    Args:
        statistics: NumPy unit image -> ``(shift, scale)``.
        tf_statistics: TensorFlow unit images [B, H, W, C] -> ``(shift [B], scale [B])``; must agree with
            ``statistics`` (tests check every registered normalisation).
        streamed_statistics: ``(raw image, to_unit) -> (shift, scale)`` without a float copy of the image, for
            images streamed a strip at a time.
    """

    statistics: Callable
    tf_statistics: Callable
    streamed_statistics: Callable


# image.normalize -> its statistics (docs/EXTENDING.md: adding a normalisation).
NORMALIZATIONS: dict[str, Normalization] = {
    "standardize": Normalization(image_statistics, tf_image_statistics, streamed_image_statistics),
    "scale": Normalization(_whole_range, _tf_whole_range, _streamed_whole_range),
}


def normalization(mode: str) -> Normalization:
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)}, got {mode!r}")
    return NORMALIZATIONS[mode]


def normalize(unit_image: np.ndarray, mode: str, statistics: tuple[float, float] | None = None) -> np.ndarray:
    """Normalises a [0, 1] image for the net; ``statistics`` (shift, scale) default to the image's own."""
    shift, scale = statistics if statistics is not None else normalization(mode).statistics(unit_image)
    return ((unit_image - shift) / scale).astype(np.float32)


def tf_normalize(unit_images, mode: str, statistics=None):
    """TensorFlow version of :func:`normalize` for a batch [B, H, W, C] of [0, 1] images."""
    shift, scale = statistics if statistics is not None else normalization(mode).tf_statistics(unit_images)
    return (unit_images - shift[:, None, None, None]) / scale[:, None, None, None]
