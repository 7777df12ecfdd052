"""kunet.preprocess: every registered normalisation computes the same in NumPy, TensorFlow and streamed."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kunet.inference import InferenceSettings
from kunet.preprocess import (
    MIN_PERCENTILE_RANGE,
    NORMALIZATIONS,
    dtype_max,
    normalization,
    normalize,
    percentile_statistics,
    streamed_percentile_statistics,
    tf_normalize,
    tf_order_statistics,
    tf_percentile_statistics,
    to_unit_range,
)


@pytest.mark.parametrize("mode", sorted(NORMALIZATIONS))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_numpy_tensorflow_and_streamed_normalisation_agree(mode, dtype):
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max // 3, (37, 53, 2)).astype(dtype)
    unit = to_unit_range(image)
    numpy_side = normalize(unit, mode)
    tf_side = tf_normalize(tf.constant(unit[None]), mode)[0].numpy()
    np.testing.assert_allclose(numpy_side, tf_side, rtol=1e-5, atol=1e-5)
    streamed = NORMALIZATIONS[mode].streamed_statistics(image, to_unit_range)
    np.testing.assert_allclose(normalize(unit, mode, streamed), numpy_side, rtol=1e-6, atol=1e-6)


def test_standardize_uses_whole_image_statistics_and_scale_keeps_the_unit_range():
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8, 1)
    standardized = normalize(unit, "standardize")
    assert abs(float(standardized.mean())) < 1e-6 and abs(float(standardized.std()) - 1) < 1e-5
    np.testing.assert_array_equal(normalize(unit, "scale"), unit)
    blank = normalize(np.full((4, 4, 1), 0.5, np.float32), "standardize")  # floored std: no division by 0
    assert np.isfinite(blank).all()
    assert dtype_max(np.uint16) == 65535.0 and dtype_max(np.float32) == 1.0
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize(unit, "min_max")


def _percentile_cases():
    """Images with hot pixels, odd sizes, constant ones, and float ones with negative values."""
    rng = np.random.default_rng(1)
    cases = {}
    for dtype in (np.uint8, np.uint16):
        image = rng.integers(0, np.iinfo(dtype).max // 4, (37, 53, 1)).astype(dtype)
        image.reshape(-1)[rng.choice(image.size, 5, replace=False)] = np.iinfo(dtype).max  # hot pixels
        cases[f"{dtype.__name__} 37x53 hot pixels"] = image
        cases[f"{dtype.__name__} 1x7x3"] = rng.integers(0, np.iinfo(dtype).max, (1, 7, 3)).astype(dtype)
        cases[f"{dtype.__name__} constant"] = np.full((29, 31, 1), 77, dtype)
    cases["float32 with negatives"] = (rng.standard_normal((41, 19, 2)) * 5).astype(np.float32)
    cases["float32 one pixel"] = np.full((1, 1, 1), 0.25, np.float32)
    return cases


@pytest.mark.parametrize("percentiles", [(1.0, 99.8), (0.0, 100.0), (3.0, 99.8), (49.9, 50.0)])
@pytest.mark.parametrize("case", sorted(_percentile_cases()))
def test_percentile_statistics_are_numpys_percentiles_in_numpy_tensorflow_and_streamed(case, percentiles):
    image = _percentile_cases()[case]
    unit = to_unit_range(image)
    low, high = (np.float32(np.percentile(unit, q)) for q in percentiles)  # the definition (CSBDeep's, axis=None)
    expected = (float(low), float(max(high - low, np.float32(MIN_PERCENTILE_RANGE))))
    assert percentile_statistics(unit, *percentiles) == expected
    # TensorFlow's radix selection and the streamed one (blocks of a few rows) select the same values exactly.
    tf_shift, tf_scale = tf_percentile_statistics(tf.constant(unit[None]), *percentiles)
    assert (float(tf_shift[0]), float(tf_scale[0])) == expected
    assert streamed_percentile_statistics(image, to_unit_range, *percentiles, chunk_values=100) == expected
    settings = InferenceSettings(normalize="percentile", percentile_low=percentiles[0], percentile_high=percentiles[1])
    numpy_side = normalize(unit, "percentile", settings=settings)
    tf_side = tf_normalize(tf.constant(unit[None]), "percentile", settings=settings)[0].numpy()
    assert np.abs(numpy_side - tf_side).max() < 1e-5
    if "constant" in case:
        assert not numpy_side.any()  # the range floor: zeros, not NaN


def test_order_statistics_are_exact_across_blocks_and_images_of_a_batch():
    rng = np.random.default_rng(2)
    flat = np.concatenate([rng.standard_normal((3, 500)), rng.integers(0, 9, (3, 500)) / 255], axis=1)
    flat = flat.astype(np.float32)
    flat[1, :7] = [np.inf, -np.inf, -0.0, 0.0, 1e-40, -1e-40, np.finfo(np.float32).max]
    ranks = np.array([0, 1, 10, 499, 500, 998, 999])
    selected = tf_order_statistics(tf.constant(flat), tf.constant(ranks, tf.int64), chunk=64).numpy()
    np.testing.assert_array_equal(selected, np.sort(flat, axis=1)[:, ranks])


def test_percentile_normalisation_ignores_hot_pixels_and_stretches_dim_16_bit_images():
    rng = np.random.default_rng(3)
    image = rng.integers(1000, 1200, (64, 64)).astype(np.uint16)  # a dim 16-bit image: 200 of 65535 gray levels
    image[5, 5] = image[9, 20] = 65535
    settings = InferenceSettings(normalize="percentile")
    normalized = normalize(to_unit_range(image), "percentile", settings=settings)
    inside = np.delete(normalized.ravel(), [5 * 64 + 5, 9 * 64 + 20])
    assert -0.05 < inside.min() < 0.0 and 1.0 <= inside.max() < 1.05
    assert normalized[5, 5] > 300  # the hot pixels stay far out instead of squeezing the image
    _, scale = normalization("percentile", settings).statistics(to_unit_range(image))
    assert scale > 150 / 65535  # the tiny floor does not clamp a dim image's range (standardize's 1/255 would)
    # The parameters come from the settings: other percentiles, other statistics.
    whole = normalization("percentile", InferenceSettings(percentile_low=0.0, percentile_high=100.0))
    lowest = float(np.float32(image.min()) / np.float32(65535))
    assert whole.statistics(to_unit_range(image)) == (lowest, pytest.approx(1 - lowest))
    with pytest.raises(ValueError, match="0 <= percentile_low < percentile_high <= 100"):
        percentile_statistics(to_unit_range(image), 99.0, 2.0)
