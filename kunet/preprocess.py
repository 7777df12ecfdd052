"""Intensity normalisation shared by training, prediction and exported graphs.

Images enter as stored (uint8, uint16, int16 or float). They are first brought to [0, 1] (augmentation's
gray-value changes work in that range): unsigned integers are divided by their dtype's maximum, int16 is
shifted by 32768 into uint16's range first (the order of values is kept), and float images are taken as
they are (values in [0, 1] are expected under ``"scale"``; under ``"standardize"`` their scale does not
matter). They are then normalised for the net with statistics of the *whole* image, never of a tile, so
that tiling cannot change a prediction:

* ``"standardize"``: zero mean, unit variance over all pixels and channels of the image.
* ``"scale"``: the [0, 1] values as they are.
* ``"percentile"``: ``(x - p_low) / (p_high - p_low)`` with the ``percentile_low`` and ``percentile_high``
  percentiles of all pixels and channels (CSBDeep's ``normalize(x, 1, 99.8)``; robust to hot pixels).

All are registered in :data:`NORMALIZATIONS` as ``(x - shift) / scale`` with per-image statistics.

The NumPy and TensorFlow versions compute the same thing; tests check they agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

# Floor for the standard deviation so a blank image does not explode (1/255: one 8-bit gray level).
MIN_STD = 1.0 / 255.0
# Floor for p_high - p_low: a guard against dividing by 0 (a constant image becomes all zeros), far below one
# 16-bit gray level (1/65535 = 1.5e-5) so that a dim 16-bit image is still stretched to its own range.
MIN_PERCENTILE_RANGE = 1e-6
# Values per block when statistics are gathered a block at a time (16 MB of float32).
CHUNK_VALUES = 2**22


def dtype_max(dtype) -> float:
    """The value that maps to 1.0: 255 for uint8, 65535 for uint16 and for int16 (shifted by
    :data:`INT16_SHIFT` into uint16's range first), 1.0 for float images."""
    dtype = np.dtype(dtype)
    if dtype == np.int16:
        return float(np.iinfo(np.uint16).max)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


# int16 images are shifted by this into uint16's range (TIFFs of signed 16-bit data, e.g. from some cameras).
INT16_SHIFT = 32768


def dtype_shift(dtype) -> float:
    """What is added to raw values of ``dtype`` before dividing by :func:`dtype_max`: 32768 for int16, else 0."""
    return float(INT16_SHIFT) if np.dtype(dtype) == np.int16 else 0.0


def raw_to_unit(image: np.ndarray, integer_max: float) -> np.ndarray:
    """Raw values -> float32 as the net's [0, 1] range: integers divided by ``integer_max`` (int16 shifted by
    :data:`INT16_SHIFT` first), float images as they are (a float32 image is returned without a copy)."""
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    values = image.astype(np.float32)
    if image.dtype == np.int16:
        values += np.float32(INT16_SHIFT)
    return values / np.float32(integer_max)


def tf_raw_to_unit(image, dtype: str):
    """TensorFlow's :func:`raw_to_unit` for a tensor holding values of ``dtype`` (as stored): the same
    float32 arithmetic, so records, predictions and exports bring one image to the same [0, 1] values."""
    import tensorflow as tf

    if np.issubdtype(np.dtype(dtype), np.floating):
        return tf.cast(image, tf.float32)
    values = tf.cast(image, tf.float32)
    if dtype_shift(dtype):
        values = values + np.float32(dtype_shift(dtype))
    return values / np.float32(dtype_max(dtype))


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Scales an image to float32 in [0, 1] by its dtype's maximum: uint8 / 255, uint16 / 65535, int16
    (+ 32768) / 65535; float images pass unchanged (see the module's docstring)."""
    return raw_to_unit(image, dtype_max(image.dtype))


def image_statistics(unit_image: np.ndarray) -> tuple[float, float]:
    """Mean and floored standard deviation over the whole image (all pixels and channels)."""
    values = unit_image.astype(np.float64)
    return float(values.mean()), float(max(values.std(), MIN_STD))


def streamed_image_statistics(image: np.ndarray, to_unit, chunk_values: int = CHUNK_VALUES) -> tuple[float, float]:
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


# --- percentiles -----------------------------------------------------------------------------------
#
# "percentile" needs order statistics of the whole image. NumPy's own np.percentile is the definition (for a
# [0, 1] image in memory). The TensorFlow and streamed versions select the same values exactly, without
# sorting and a block of values at a time (memory of a block, not of the image): float32 values map to int32
# keys in the same order, and a radix selection finds each wanted key with two 65536-bin histograms, one of
# the keys' top 16 bits, then one of the low 16 bits of the keys in the bin where the wanted rank fell.

_RADIX = 2**16
# Values per image in one block of the TensorFlow selection: a few 4 MB temporaries per block.
TF_CHUNK_VALUES = 2**20


def check_percentiles(percentile_low: float, percentile_high: float) -> None:
    if not 0.0 <= percentile_low < percentile_high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= percentile_low < percentile_high <= 100, got "
                         f"{percentile_low} and {percentile_high}")  # fmt: skip


def percentile_position(count: int, percentile: float) -> tuple[int, int, float]:
    """Where ``np.percentile`` (linear method) finds a percentile among ``count`` sorted values: the 0-based
    ranks of its two neighbours and the weight of the upper one, computed as NumPy 2 computes them."""
    q = percentile / 100.0
    virtual = count * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0  # NumPy's _compute_virtual_index, alpha = beta = 1
    if virtual >= count - 1:
        return count - 1, count - 1, 0.0
    below = int(np.floor(virtual))
    return below, below + 1, virtual - below


def percentile_lerp(below: np.float32, above: np.float32, gamma: float) -> np.float32:
    """NumPy's interpolation between neighbours, in float32 as for a float32 image and a scalar percentile."""
    diff = np.float32(above) - np.float32(below)
    if gamma >= 0.5:
        return np.float32(np.float32(above) - diff * np.float32(1.0 - gamma))
    return np.float32(np.float32(below) + diff * np.float32(gamma))


def percentile_statistics(unit_image: np.ndarray, percentile_low: float = 1.0,
                          percentile_high: float = 99.8) -> tuple[float, float]:  # fmt: skip
    """``(p_low, max(p_high - p_low, MIN_PERCENTILE_RANGE))``, each ``np.percentile(unit_image, q)`` over all
    pixels and channels (``axis=None``, as CSBDeep's ``normalize``), in float32."""
    check_percentiles(percentile_low, percentile_high)
    values = np.asarray(unit_image, np.float32)
    low = np.float32(np.percentile(values, percentile_low))
    high = np.float32(np.percentile(values, percentile_high))
    return float(low), float(max(high - low, np.float32(MIN_PERCENTILE_RANGE)))


def _float_keys(values: np.ndarray) -> np.ndarray:
    """float32 values -> int32 keys in the same order: the IEEE bits, with negative values' magnitude flipped."""
    bits = np.ascontiguousarray(values, np.float32).reshape(-1).view(np.int32)
    return np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)


def _key_values(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, np.int32)
    return np.where(keys < 0, keys ^ np.int32(0x7FFFFFFF), keys).view(np.float32)


def _bins_of_ranks(histogram: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bin holding each rank (0-based, in sorted order) and the rank within that bin."""
    cumulative = np.cumsum(histogram)
    bins = np.searchsorted(cumulative, ranks, side="right")
    return bins, ranks - np.where(bins > 0, cumulative[np.maximum(bins - 1, 0)], 0)


def streamed_percentiles(blocks: Callable, percentiles) -> list[np.float32]:
    """``np.percentile`` of all the values of ``blocks()`` (an iterable of float32 arrays, gone through twice)
    for each of ``percentiles``, exactly, with the memory of one block (radix selection, see above)."""
    top, count = np.zeros(_RADIX, np.int64), 0
    for block in blocks():
        keys = _float_keys(block)
        top += np.bincount((keys >> 16) + _RADIX // 2, minlength=_RADIX)
        count += keys.size
    positions = [percentile_position(count, percentile) for percentile in percentiles]
    ranks = np.array([rank for below, above, _ in positions for rank in (below, above)], np.int64)
    bins, within = _bins_of_ranks(top, ranks)
    low = {int(b): np.zeros(_RADIX, np.int64) for b in bins}
    for block in blocks():
        keys = _float_keys(block)
        top_bits = (keys >> 16) + _RADIX // 2
        for b, histogram in low.items():
            histogram += np.bincount(keys[top_bits == b] & 0xFFFF, minlength=_RADIX)
    low_bits = [_bins_of_ranks(low[int(b)], np.array([w]))[0][0] for b, w in zip(bins, within)]
    values = _key_values((bins.astype(np.int64) - _RADIX // 2) * _RADIX + np.array(low_bits, np.int64))
    return [percentile_lerp(values[2 * i], values[2 * i + 1], gamma) for i, (_, _, gamma) in enumerate(positions)]


def streamed_percentile_statistics(image: np.ndarray, to_unit, percentile_low: float = 1.0,
                                   percentile_high: float = 99.8,
                                   chunk_values: int = CHUNK_VALUES) -> tuple[float, float]:  # fmt: skip
    """:func:`percentile_statistics` of ``to_unit(image)`` gathered a block of rows at a time (no float copy)."""
    check_percentiles(percentile_low, percentile_high)
    rows = max(1, chunk_values // max(1, image[:1].size))

    def blocks():
        for top in range(0, image.shape[0], rows):
            yield np.asarray(to_unit(image[top : top + rows]), np.float32)

    low, high = streamed_percentiles(blocks, (percentile_low, percentile_high))
    return float(low), float(max(high - low, np.float32(MIN_PERCENTILE_RANGE)))


def _tf_float_keys(values):
    import tensorflow as tf

    bits = tf.bitcast(values, tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, 0x7FFFFFFF), bits)


def _tf_blockwise_sum(flat, histogram_of, initial, chunk: int):
    """The sum of ``histogram_of(block)`` over blocks of ``chunk`` columns of ``flat`` [B, N] (a while loop, so
    only one block's temporaries exist at a time)."""
    import tensorflow as tf

    count = tf.shape(flat)[1]

    def body(start, total):
        return start + chunk, total + histogram_of(flat[:, start : start + chunk])

    return tf.while_loop(lambda start, _: start < count, body, [tf.constant(0), initial], parallel_iterations=1)[1]


def _tf_bins_of_ranks(histograms, ranks):
    """[M, bins] histograms and int64 ranks [M, R] -> (bin of each rank [M, R] int32, rank within it int64)."""
    import tensorflow as tf

    cumulative = tf.cumsum(histograms, axis=-1)
    bins = tf.searchsorted(cumulative, ranks, side="right")
    before = tf.gather(cumulative, tf.maximum(bins - 1, 0), batch_dims=1)
    return bins, ranks - tf.where(bins > 0, before, tf.zeros_like(before))


def tf_order_statistics(flat, ranks, chunk: int = TF_CHUNK_VALUES):
    """The ``ranks``-th smallest values (0-based, int64 [R], the same for every row) of each row of float32
    ``flat`` [B, N] -> [B, R], exactly (radix selection, see above) with the memory of ``chunk`` values a row."""
    import tensorflow as tf

    batch, wanted = tf.shape(flat)[0], tf.shape(ranks)[0]
    ranks = tf.broadcast_to(ranks[None], [batch, wanted])

    def top_histogram(block):
        ids = tf.bitwise.right_shift(_tf_float_keys(block), 16) + (_RADIX // 2 + tf.range(batch)[:, None] * _RADIX)
        return tf.math.bincount(ids, minlength=batch * _RADIX, maxlength=batch * _RADIX, dtype=tf.int64)

    top = _tf_blockwise_sum(flat, top_histogram, tf.zeros([batch * _RADIX], tf.int64), chunk)
    bins, within = _tf_bins_of_ranks(tf.reshape(top, [batch, _RADIX]), ranks)
    # One histogram of the low 16 bits per (image, rank), of the keys in that rank's bin; one spare bin
    # per histogram takes the keys of other bins.
    slot = (_RADIX + 1) * tf.reshape(tf.range(batch * wanted), [batch, wanted, 1])

    def low_histogram(block):
        keys = _tf_float_keys(block)[:, None, :]
        in_bin = tf.equal(tf.bitwise.right_shift(keys, 16) + _RADIX // 2, bins[:, :, None])
        ids = tf.where(in_bin, tf.bitwise.bitwise_and(keys, 0xFFFF), _RADIX) + slot
        size = batch * wanted * (_RADIX + 1)
        return tf.math.bincount(ids, minlength=size, maxlength=size, dtype=tf.int64)

    low = _tf_blockwise_sum(flat, low_histogram, tf.zeros([batch * wanted * (_RADIX + 1)], tf.int64), chunk)
    low = tf.reshape(low, [batch * wanted, _RADIX + 1])[:, :_RADIX]
    low_bits = tf.reshape(_tf_bins_of_ranks(low, tf.reshape(within, [-1, 1]))[0], [batch, wanted])
    keys = (bins - _RADIX // 2) * _RADIX + low_bits  # no overflow: -2^31 .. 2^31 - 1
    return tf.bitcast(tf.where(keys < 0, tf.bitwise.bitwise_xor(keys, 0x7FFFFFFF), keys), tf.float32)


def tf_percentile_statistics(unit_images, percentile_low: float = 1.0, percentile_high: float = 99.8):
    """TensorFlow version of :func:`percentile_statistics` for a batch [B, H, W, C] -> (shift [B], scale [B])."""
    import tensorflow as tf

    check_percentiles(percentile_low, percentile_high)
    flat = tf.reshape(unit_images, [tf.shape(unit_images)[0], -1])
    count = tf.cast(tf.shape(flat)[1], tf.int64)
    ranks, gammas = [], []
    for percentile in (percentile_low, percentile_high):  # percentile_position in TensorFlow (count is dynamic)
        q = percentile / 100.0
        virtual = tf.cast(count, tf.float64) * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0
        at_end = virtual >= tf.cast(count - 1, tf.float64)
        below = tf.where(at_end, count - 1, tf.cast(tf.floor(virtual), tf.int64))
        ranks += [below, tf.where(at_end, below, below + 1)]
        gammas.append(tf.where(at_end, tf.constant(0.0, tf.float64), virtual - tf.cast(below, tf.float64)))
    values = tf_order_statistics(flat, tf.stack(ranks))
    low, high = (_tf_percentile_lerp(values[:, 2 * i], values[:, 2 * i + 1], gammas[i]) for i in range(2))
    return low, tf.maximum(high - low, MIN_PERCENTILE_RANGE)


def _tf_percentile_lerp(below, above, gamma):
    """:func:`percentile_lerp` of [B] neighbours with a float64 weight."""
    import tensorflow as tf

    diff = above - below
    upper = above - diff * tf.cast(1.0 - gamma, tf.float32)
    return tf.where(gamma >= 0.5, upper, below + diff * tf.cast(gamma, tf.float32))


@dataclass(frozen=True)
class Normalization:
    """``x -> (x - shift) / scale`` of the [0, 1] image, with ``(shift, scale)`` from the whole image.

    Args:
        statistics: NumPy unit image -> ``(shift, scale)``.
        tf_statistics: TensorFlow unit images [B, H, W, C] -> ``(shift [B], scale [B])``; must agree with
            ``statistics`` (tests check every registered normalisation).
        streamed_statistics: ``(raw image, to_unit) -> (shift, scale)`` without a float copy of the image, for
            images streamed a strip at a time.
        parameters: Settings the three take as keyword arguments, by their names in ``[image]`` and in the
            model's inference metadata (:class:`kunet.inference.InferenceSettings`), which carry them alike.
        description: What it does, for an export's ``kunet.json`` (``{name}`` fields: the parameters).
    """

    statistics: Callable
    tf_statistics: Callable
    streamed_statistics: Callable
    parameters: tuple[str, ...] = ()
    description: str = ""

    def bound(self, settings) -> Normalization:
        """This normalisation with its parameters read from ``settings`` (``config.image``, inference settings)."""
        if not self.parameters or settings is None:
            return self
        values = {name: getattr(settings, name) for name in self.parameters}
        return replace(self, statistics=partial(self.statistics, **values),
                       tf_statistics=partial(self.tf_statistics, **values),
                       streamed_statistics=partial(self.streamed_statistics, **values),
                       description=self.description.format(**values))  # fmt: skip


# image.normalize -> its statistics (docs/EXTENDING.md: adding a normalisation).
NORMALIZATIONS: dict[str, Normalization] = {
    "standardize": Normalization(
        image_statistics,
        tf_image_statistics,
        streamed_image_statistics,
        description="per-image standardisation over the whole image",
    ),
    "scale": Normalization(_whole_range, _tf_whole_range, _streamed_whole_range, description="none"),
    "percentile": Normalization(
        percentile_statistics,
        tf_percentile_statistics,
        streamed_percentile_statistics,
        parameters=("percentile_low", "percentile_high"),
        description="(x - p_low) / (p_high - p_low) with p_low, p_high the {percentile_low:g} and "
        "{percentile_high:g} percentiles of the whole image, all channels together (numpy.percentile, linear)",
    ),
}


def normalization(mode: str, settings=None) -> Normalization:
    """The registered normalisation ``mode``, its parameters read from ``settings`` (``config.image`` or
    :class:`kunet.inference.InferenceSettings`; without, the functions' defaults)."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)}, got {mode!r}")
    return NORMALIZATIONS[mode].bound(settings)


def normalize(unit_image: np.ndarray, mode: str, statistics: tuple[float, float] | None = None,
              settings=None) -> np.ndarray:  # fmt: skip
    """Normalises a [0, 1] image for the net; ``statistics`` (shift, scale) default to the image's own, with
    the normalisation's parameters from ``settings`` (see :func:`normalization`)."""
    shift, scale = statistics if statistics is not None else normalization(mode, settings).statistics(unit_image)
    return ((unit_image - shift) / scale).astype(np.float32)


def tf_normalize(unit_images, mode: str, statistics=None, settings=None):
    """TensorFlow version of :func:`normalize` for a batch [B, H, W, C] of [0, 1] images."""
    if statistics is None:
        statistics = normalization(mode, settings).tf_statistics(unit_images)
    shift, scale = statistics
    return (unit_images - shift[:, None, None, None]) / scale[:, None, None, None]
