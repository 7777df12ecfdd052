"""The U-Net builder: exact parameter counts, size arithmetic, serialisation and precision policies."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kunet.model import UNet, nearest_valid_sizes, output_size, skip_crops, valid_input_size


@pytest.fixture(scope="module")
def paper_net():
    return UNet(input_channels=1, num_classes=2, seed=1)


def test_paper_net_has_exactly_the_fig1_parameter_count(paper_net):
    assert paper_net.count_params() == 31_030_658
    convs = [layer for layer in paper_net.layers if isinstance(layer, keras.layers.Conv2D)]
    upconvs = [layer for layer in paper_net.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert (len(convs), len(upconvs)) == (19, 4)  # 18 3x3 + the final 1x1; 23 conv layers in all


def test_release2015_net_has_exactly_the_caffe_parameter_count():
    model = UNet(variant="release2015")
    assert model.count_params() == 31_100_354
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert sorted(layer.name for layer in dropouts) == ["down3_dropout", "down4_dropout"]
    assert model.get_layer("up0_upconv").filters == 128


def test_one_model_object_runs_at_several_valid_sizes(paper_net):
    for height, width in [(572, 572), (188, 188), (316, 204)]:
        out = paper_net(np.zeros((1, height, width, 1), np.float32), training=False)
        assert tuple(out.shape) == (1, height - 184, width - 184, 2)


def test_size_arithmetic_matches_the_paper():
    assert output_size(572) == 388
    assert valid_input_size(388) == 572
    assert valid_input_size(512) == 700 and output_size(700) == 516
    assert skip_crops(4) == [88, 40, 16, 4]
    # Valid inputs at depth 4 are 188 + 16k.
    assert [s for s in range(150, 240) if _fits(s)] == [188, 204, 220, 236]
    # Other depths: every valid size maps to a positive output, the next invalid one raises.
    for depth in (1, 2, 3, 5):
        size = valid_input_size(1, depth)
        assert output_size(size, depth) >= 1
        assert output_size(size + 2**depth, depth) == output_size(size, depth) + 2**depth
        with pytest.raises(ValueError):
            output_size(size + 1, depth)


def _fits(size: int) -> bool:
    try:
        output_size(size)
        return True
    except ValueError:
        return False


def test_invalid_size_error_names_the_nearest_valid_sizes(paper_net):
    with pytest.raises(ValueError, match=r"input size 570 .* nearest valid sizes: 556 and 572"):
        output_size(570)
    assert nearest_valid_sizes(100) == (188, 188)
    with pytest.raises(ValueError, match="nearest valid sizes: 556 and 572"):
        paper_net(np.zeros((1, 572, 570, 1), np.float32))


def test_predict_with_a_relaxed_shape_names_the_nearest_valid_sizes():
    model = UNet(input_channels=1, num_classes=2, base_filters=4, depth=2)
    model.predict(np.zeros((1, 60, 60, 1), np.float32), verbose=0)
    model.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0)  # reduce_retracing: height and width -> None
    message = r"input size 61 does not fit a depth-2 U-Net .*valid inputs are 44 \+ 4k.*nearest valid sizes: 60 and 64"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.predict(np.zeros((1, 61, 61, 1), np.float32), verbose=0)


@pytest.mark.parametrize(
    ("padding", "valid_hw", "bad_hw", "message"),
    [
        ("valid", (60, 64), (60, 61), "input size 61 does not fit .* nearest valid sizes: 60 and 64"),
        ("valid", (44, 48), (30, 61), "input size 30 does not fit .* nearest valid sizes: 44 and 44"),
        ("same", (4, 12), (12, 10), "input size 10 does not fit .*multiples of 4.* nearest valid sizes: 8 and 12"),
    ],
)
def test_a_graph_with_unknown_sizes_checks_them_when_it_runs(padding, valid_hw, bad_hw, message):
    model = UNet(base_filters=4, depth=2, padding=padding, seed=0)
    spec = tf.TensorSpec([None, None, None, 1], tf.float32)
    predict = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    valid = np.random.default_rng(0).random((2, *valid_hw, 1), dtype=np.float32)
    np.testing.assert_allclose(predict(valid).numpy(), model(valid, training=False).numpy(), atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        predict(np.zeros((1, *bad_hw, 1), np.float32))


def test_static_sizes_add_no_check_to_the_graph():
    model = UNet(base_filters=4, depth=2, seed=0)

    def op_names(shape):
        spec = tf.TensorSpec(shape, tf.float32)
        graph = tf.function(lambda images: model(images)).get_concrete_function(spec).graph
        return [op.name for op in graph.get_operations()]

    assert not any("input_size_check" in name for name in op_names([None, 60, 64, 1]))
    assert any("input_size_check" in name for name in op_names([None, 60, None, 1]))


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    model = UNet(base_filters=4, depth=2, batch_norm=True, dropout=0.3, seed=3)
    x = np.random.default_rng(0).normal(size=(2, valid_input_size(20, 2), 44, 1)).astype(np.float32)
    x = x[:, :, : valid_input_size(20, 2)]
    before = model(x, training=False).numpy()
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, UNet)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), before)


def test_get_config_keeps_every_constructor_argument():
    kwargs = dict(
        input_channels=3,
        num_classes=4,
        variant="release2015",
        base_filters=8,
        depth=3,
        padding="same",
        batch_norm=True,
        dropout=0.2,
        activation="leaky_relu",
        output="softmax",
        compute_dtype="mixed_bfloat16",
        seed=7,
    )
    config = UNet(**kwargs).get_config()
    for key, value in kwargs.items():
        assert config[key] == value


def test_same_padding_returns_the_input_size_for_multiples_of_two_to_the_depth():
    model = UNet(base_filters=4, depth=3, padding="same")
    for size in (8, 24, 40):
        assert tuple(model(np.zeros((1, size, size + 8, 1), np.float32)).shape) == (1, size, size + 8, 2)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(np.zeros((1, 20, 24, 1), np.float32))


def test_softmax_output_sums_to_one():
    model = UNet(base_filters=4, depth=2, num_classes=3, output="softmax", seed=0)
    size = valid_input_size(8, 2)
    probs = model(np.random.default_rng(1).random((1, size, size, 1), dtype=np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_mixed_bfloat16_builds_runs_and_returns_float32():
    model = UNet(base_filters=8, depth=2, compute_dtype="mixed_bfloat16", seed=0)
    conv = model.get_layer("down0_conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    size = valid_input_size(16, 2)
    x = np.random.default_rng(2).random((2, size, size, 1), dtype=np.float32)
    out = model(x, training=False)
    assert out.dtype == "float32" and tuple(out.shape) == (2, output_size(size, 2), output_size(size, 2), 2)
    reference = UNet(base_filters=8, depth=2, seed=0)
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(out.numpy(), reference(x, training=False).numpy(), atol=0.15)


def test_initialiser_is_gaussian_with_std_sqrt_2_over_fan_in(paper_net):
    kernel = paper_net.get_layer("down3_conv2").kernel.numpy()
    fan_in = 3 * 3 * 512
    assert kernel.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.01)
    # Untruncated: a Gaussian has ~0.27 % of values beyond 3 std; a truncated one has none beyond 2 std.
    assert np.mean(np.abs(kernel) > 2.5 * np.sqrt(2 / fan_in)) > 0.005


def test_bad_options_are_rejected_with_their_name():
    with pytest.raises(ValueError, match="variant"):
        UNet(variant="resnet")
    with pytest.raises(ValueError, match="padding"):
        UNet(padding="reflect")
