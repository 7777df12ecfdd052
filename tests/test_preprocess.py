"""kunet.preprocess: every registered normalisation computes the same in NumPy, TensorFlow and streamed."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kunet.preprocess import NORMALIZATIONS, dtype_max, normalize, tf_normalize, to_unit_range


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
        normalize(unit, "percentile")
