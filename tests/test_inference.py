"""Overlap-tile prediction: tiled equals one pass over the whole mirror-extended image, at any size."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from kunet.decision import DecisionRule
from kunet.inference import InferenceSettings, Predictor, fold_indices, mirror_extend
from kunet.model import UNet
from kunet.sizes import forward_flops, valid_input_size
from kunet.tiling import TilingOptions, choose_tile, plan_for_tile


@pytest.fixture(scope="module")
def small_net():
    # Depth 4 like the paper (so the 16-px pooling period and 92-px border are real), few channels.
    return UNet(base_filters=4, depth=4, seed=3)


def _whole_image_pass(model, prepared: np.ndarray) -> np.ndarray:
    """The reference: the net once over the image mirror-extended by its border (no tiling at all)."""
    height, width = prepared.shape[:2]
    extended = mirror_extend(tf.constant(prepared), -92, -92, valid_input_size(height), valid_input_size(width))
    logits = model(extended[None], training=False)[0]
    return tf.nn.softmax(logits).numpy()[:height, :width]


@pytest.mark.parametrize("height,width", [(300, 517), (37, 53), (100, 100), (229, 130)])
def test_tiled_prediction_equals_a_single_whole_image_pass(small_net, height, width):
    image = np.random.default_rng(height * width).integers(0, 255, (height, width), dtype=np.uint8)
    # 220 -> 36 output, stride 32: many tiles, many seams
    predictor = Predictor(small_net, tiling=TilingOptions(tile_size=220))
    plan = predictor.plan((height, width))
    reference = _whole_image_pass(small_net, predictor.prepare(image))
    tiled = predictor.probabilities(image)
    assert tiled.shape == (height, width, 2)
    np.testing.assert_allclose(tiled, reference, atol=2e-5)
    assert plan.num_tiles >= 4 or min(height, width) < 64
    streamed = predictor.probabilities_streaming(image)
    np.testing.assert_allclose(streamed, reference, atol=2e-5)


def test_automatic_tiles_and_batched_tiles_give_the_same_result(small_net):
    image = np.random.default_rng(7).integers(0, 65535, (260, 310), dtype=np.uint16)
    automatic = Predictor(small_net).probabilities(image)
    batched = Predictor(small_net, tiling=TilingOptions(tile_size=236, batch_size=3)).probabilities(image)
    np.testing.assert_allclose(automatic, batched, atol=2e-5)


@pytest.mark.parametrize(
    "height,width,mirror,batch_size", [(229, 130, False, 1), (37, 53, True, 2), (100, 100, True, 1)]
)
def test_images_batched_into_shared_calls_give_each_image_its_own_probabilities(
    small_net, height, width, mirror, batch_size
):
    rng = np.random.default_rng(height + width)
    images = [rng.integers(0, 255, (height, width), dtype=np.uint8) for _ in range(3)]
    images[1] = images[1] // 4  # another intensity range: normalisation stays per image
    tiling = TilingOptions(tile_size=220, batch_size=batch_size)
    predictor = Predictor(small_net, tiling=tiling, test_time_mirroring=mirror)
    batched = predictor.probabilities_of_images(images)
    assert batched.shape == (3, height, width, 2)
    for image, probabilities in zip(images, batched, strict=True):
        np.testing.assert_allclose(probabilities, predictor.probabilities(image), atol=2e-5)
    assert predictor.plan((height, width)).num_tiles >= 4 or min(height, width) < 64
    with pytest.raises(ValueError, match="one shape"):
        predictor.probabilities_of_images([images[0], images[0][:, :-1]])


def test_a_stride_that_is_not_a_multiple_of_16_would_leave_seams(small_net):
    """Why tiles advance by 16k: with the full 36-px output as stride the pooling grid shifts per tile."""
    from kunet.inference import tiled_probabilities

    image = np.random.default_rng(5).normal(size=(120, 120, 1)).astype(np.float32)
    reference = _whole_image_pass(small_net, image)
    model_fn = lambda tiles: small_net(tiles, training=False)  # noqa: E731
    aligned = tiled_probabilities(model_fn, tf.constant(image), (220, 220), (32, 32), (92, 92)).numpy()
    shifted = tiled_probabilities(model_fn, tf.constant(image), (220, 220), (36, 36), (92, 92)).numpy()
    np.testing.assert_allclose(aligned, reference, atol=2e-5)
    assert np.abs(shifted - reference).max() > 1e-3


def test_mirror_extension_equals_numpy_reflect_padding_at_any_distance():
    image = np.arange(5 * 7).reshape(5, 7, 1).astype(np.float32)
    extended = mirror_extend(tf.constant(image), -23, -30, 5 + 2 * 23, 7 + 2 * 30).numpy()
    np.testing.assert_array_equal(extended, np.pad(image, ((23, 23), (30, 30), (0, 0)), mode="reflect"))
    assert fold_indices(-3, 8, 1).numpy().tolist() == [0] * 8


def test_tile_choice_minimises_flops_for_the_whole_image():
    plan = choose_tile((512, 512))
    assert plan.input_hw == (700, 700) and plan.num_tiles == 1
    naive = plan_for_tile((512, 512), (572, 572))
    assert naive.num_tiles == 4
    assert forward_flops(700, 700) < 0.45 * 4 * forward_flops(572, 572)
    # A small memory budget forces smaller tiles.
    small = choose_tile((512, 512), memory_budget_mb=150)
    assert small.input_hw[0] < 700 and small.num_tiles > 1


def test_test_time_mirroring_is_the_mean_over_flips(small_net):
    image = np.random.default_rng(2).integers(0, 255, (64, 80), dtype=np.uint8)
    plain = Predictor(small_net, tiling=TilingOptions(tile_size=220))
    mirrored = Predictor(small_net, tiling=TilingOptions(tile_size=220), test_time_mirroring=True).probabilities(image)
    flips = [
        plain.probabilities(image),
        plain.probabilities(image[::-1])[::-1],
        plain.probabilities(image[:, ::-1])[:, ::-1],
        plain.probabilities(image[::-1, ::-1])[::-1, ::-1],
    ]
    np.testing.assert_allclose(mirrored, np.mean(flips, axis=0), atol=2e-5)


def _convolutions_in(function) -> int:
    """Conv2D ops in a traced function's graph, each called function (nested function, loop body, branch)
    counted once per call site: the copies graph optimisation will see once calls are inlined."""
    graph_def = function.get_concrete_function().graph.as_graph_def()
    library = {f.signature.name: f.node_def for f in graph_def.library.function}

    def count(nodes) -> int:
        called = [value.func.name for node in nodes for value in node.attr.values() if value.func.name]
        return sum(node.op == "Conv2D" for node in nodes) + sum(count(library[name]) for name in called)

    return count(graph_def.node)


@pytest.mark.parametrize("constant_weights", [False, True])
def test_test_time_mirroring_puts_the_net_into_the_graph_once(small_net, constant_weights):
    """The four flips share one call of the net in a loop: four calls would mean four copies of the net to
    optimise on the first call (and with constant weights, four copies of every filter)."""
    plan = Predictor(small_net).plan((64, 80))
    plain, mirrored = (
        Predictor(small_net, test_time_mirroring=mirroring, constant_weights=constant_weights)._function(plan)
        for mirroring in (False, True)
    )
    assert _convolutions_in(plain) == (4 + 1 + 4) * 2 + 1  # the net's 3x3 convolutions and the last 1x1
    assert _convolutions_in(mirrored) == _convolutions_in(plain)
    # The loop keeps the static class count, which the decision rules inside an export's graph read.
    assert mirrored.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 2]


def test_decision_rule_uses_the_threshold_for_binary_and_argmax_otherwise():
    probabilities = np.array([[[0.7, 0.3], [0.4, 0.6]]], np.float32)
    assert DecisionRule(0.5).classes(probabilities).tolist() == [[0, 1]]
    assert DecisionRule(0.25).classes(probabilities).tolist() == [[1, 1]]
    three = np.array([[[0.2, 0.3, 0.5]]], np.float32)
    assert DecisionRule(0.5).classes(three).tolist() == [[2]]
    settings = InferenceSettings.from_metadata({"threshold": 0.3, "class_values": [0, 255], "unknown": 1})
    assert settings.threshold == 0.3 and settings.class_values == (0, 255)


def test_percentile_settings_travel_in_the_model_and_streaming_normalises_alike(small_net, tmp_path):
    from helpers import tiny_pipeline_dict

    from kunet.builders import build_model
    from kunet.config import pipeline_from_dict
    from kunet.segmenter import load_unet

    image = {"normalize": "percentile", "percentile_low": 2.0, "percentile_high": 99.5}
    config = pipeline_from_dict(tiny_pipeline_dict() | {"image": image})
    build_model(config).save(tmp_path / "net.keras")
    settings = Predictor(load_unet(tmp_path / "net.keras")).settings
    assert (settings.normalize, settings.percentile_low, settings.percentile_high) == ("percentile", 2.0, 99.5)
    # Models saved before the percentiles existed load with the defaults.
    old = InferenceSettings.from_metadata({"normalize": "standardize", "class_values": [0, 255]})
    assert (old.percentile_low, old.percentile_high) == (1.0, 99.8)

    pixels = np.random.default_rng(5).integers(200, 900, (229, 130), dtype=np.uint16)
    pixels[10, 10] = pixels[100, 50] = 65535
    predictor = Predictor(small_net, replace(settings, image_dtype="uint16"), TilingOptions(tile_size=220))
    prepared = predictor.prepare(pixels)
    assert np.percentile(prepared, 2.0) == pytest.approx(0.0, abs=1e-6)
    assert np.percentile(prepared, 99.5) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(predictor.probabilities_streaming(pixels), predictor.probabilities(pixels), atol=2e-5)


def _filter_inputs(concrete_function) -> list[str]:
    """The op types feeding each convolution's filter in a traced function, looking through Identity."""
    kinds = []
    for op in concrete_function.graph.get_operations():
        if op.type in ("Conv2D", "Conv2DBackpropInput"):
            source = op.inputs[1].op
            while source.type == "Identity":
                source = source.inputs[0].op
            kinds.append(source.type)
    return kinds


def test_constant_weights_predict_the_same_and_put_constant_filters_in_the_graph():
    net = UNet(base_filters=4, depth=4, num_classes=3, seed=5)
    image = np.random.default_rng(11).integers(0, 255, (131, 229), dtype=np.uint8)
    tiling = TilingOptions(tile_size=220)
    variables = Predictor(net, tiling=tiling, test_time_mirroring=True)
    constants = Predictor(net, tiling=tiling, test_time_mirroring=True, constant_weights=True)
    np.testing.assert_allclose(constants.probabilities(image), variables.probabilities(image), atol=2e-5)
    stack = [image, image[::-1] // 2]
    np.testing.assert_allclose(constants.probabilities_of_images(stack), variables.probabilities_of_images(stack),
                               atol=2e-5)  # fmt: skip
    streamed = constants.probabilities_streaming(image)
    np.testing.assert_allclose(streamed, variables.probabilities_streaming(image), atol=2e-5)
    # What makes it faster: oneDNN caches a reordered filter only when the filter is a constant in the graph.
    traced = constants._model_call.get_concrete_function(tf.TensorSpec([1, 220, 220, 1], tf.float32))
    kinds = _filter_inputs(traced)
    assert len(kinds) == (4 + 1 + 4) * 2 + 1 + 4  # 3x3 convolutions, the last 1x1 and the 4 up-convolutions
    assert set(kinds) == {"Const"}
    plain = tf.function(lambda tiles: net(tiles, training=False))
    assert "Const" not in _filter_inputs(plain.get_concrete_function(tf.TensorSpec([1, 220, 220, 1], tf.float32)))


def test_constant_weights_are_a_snapshot_taken_when_the_predictor_is_made():
    net = UNet(base_filters=4, depth=4, seed=6)
    image = np.random.default_rng(12).integers(0, 255, (60, 70), dtype=np.uint8)
    tiling = TilingOptions(tile_size=220)
    snapshot = Predictor(net, tiling=tiling, constant_weights=True)
    before = snapshot.probabilities(image)
    last_bias = net.trainable_variables[-1]
    last_bias.assign(last_bias + tf.constant([3.0, -3.0]))
    np.testing.assert_array_equal(snapshot.probabilities(image), before)
    after = Predictor(net, tiling=tiling, constant_weights=True).probabilities(image)
    assert np.abs(after - before).max() > 0.1
    np.testing.assert_allclose(after, Predictor(net, tiling=tiling).probabilities(image), atol=2e-5)


_ONEDNN_PRIMITIVES = """
import sys
import numpy as np
from kunet.inference import Predictor
from kunet.model import UNet
from kunet.tiling import TilingOptions
net = UNet(base_filters=16, depth=2, seed=0)
predictor = Predictor(net, tiling=TilingOptions(tile_size=124), constant_weights=sys.argv[1] == "constant")
image = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
for _ in range(2):
    predictor.probabilities(image)
"""


def test_constant_weights_give_onednn_blocked_filters_and_keep_bias_and_relu_fused():
    """Checked against oneDNN itself (ONEDNN_VERBOSE): with constant weights every 3x3 convolution gets a filter
    in oneDNN's blocked layout, and still has its bias and ReLU fused, as the variable path has."""
    import os
    import subprocess
    import sys

    layouts = {}
    for mode in ("variable", "constant"):
        # TensorFlow's default, pinned: a library run earlier in this process may have switched oneDNN off.
        environment = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}
        result = subprocess.run([sys.executable, "-c", _ONEDNN_PRIMITIVES, mode], capture_output=True, text=True,
                                env=environment, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        convolutions = [line for line in result.stdout.splitlines()
                        if ",exec,cpu,convolution," in line and "kh3" in line]  # fmt: skip
        if not convolutions:
            verbose = sum(line.startswith("onednn_verbose") for line in result.stdout.splitlines())
            pytest.skip(f"no oneDNN 3x3 convolution in the {mode} run's log ({verbose} oneDNN lines; "
                        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')!r})")  # fmt: skip
        layouts[mode] = convolutions
    plain = [line for line in layouts["variable"] if "wei:f32::blocked:cdba" in line]
    assert plain and len(plain) == len(layouts["variable"])  # the variable's own layout, every call
    for line in layouts["constant"]:
        assert "wei:f32:a:blocked:" in line and "cdba" not in line, line
        assert "bia:f32" in line and "eltwise_relu" in line, line


_KUNET_PREDICT = """
import sys
from kunet_cli.main import main
sys.argv = ["kunet", "predict", *sys.argv[1:]]
main()
"""


def test_kunet_predict_has_onednn_keep_each_filter_it_reorders_and_predicts_the_same(trained_tiny_run, tmp_path):
    """Checked against oneDNN itself (ONEDNN_VERBOSE): `kunet predict` turns TF_ONEDNN_ASSUME_FROZEN_WEIGHTS on, so its
    3x3 convolutions read each filter in oneDNN's blocked layout (reordered once), not the variable's plain one;
    `=0` from the user keeps it off; both write the same masks."""
    import os
    import re
    import subprocess
    import sys

    import cv2
    from helpers import write_blob_folders

    images = write_blob_folders(tmp_path / "data", count=3) / "images"
    layouts, masks = {}, {}
    for frozen in ("default", "0"):
        environment = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}
        environment.pop("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", None)
        if frozen != "default":
            environment["TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"] = frozen
        out = tmp_path / f"out-{frozen}"
        result = subprocess.run(
            [sys.executable, "-c", _KUNET_PREDICT, str(trained_tiny_run), str(images), "--out", str(out),
             "--precision", "float32", "--no-constant-weights", "--quiet"],
            capture_output=True, text=True, env=environment, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        convolutions = [line for line in result.stdout.splitlines()
                        if ",exec,cpu,convolution," in line and "kh3" in line]  # fmt: skip
        if not convolutions:
            pytest.skip(f"no oneDNN 3x3 convolution in kunet predict's log (TF_ENABLE_ONEDNN_OPTS="
                        f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')!r})")  # fmt: skip
        layouts[frozen] = convolutions
        masks[frozen] = {path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in out.glob("*_mask.png")}
    assert all("wei:f32::blocked:cdba" in line for line in layouts["0"])  # the variable's own layout, every call
    for line in layouts["default"]:  # "a": oneDNN's own choice of layout (a blocked one here), "p": padded
        assert re.search(r"wei:f32:ap?:blocked:", line) and "cdba" not in line, line
        assert "eltwise_relu" in line, line
    assert len(masks["default"]) == 3 and masks["default"].keys() == masks["0"].keys()
    for name, mask in masks["default"].items():
        np.testing.assert_array_equal(mask, masks["0"][name])


def test_a_compiled_function_runs_its_first_call_alone():
    # predict works on two images at once; two concurrent first calls each optimised the graph (slow with
    # constant weights), so the second waits for the first, then runs the compiled function.
    import threading
    import time

    from kunet.inference import _FirstCallAlone

    events = []

    def slow_first(index):
        events.append(("start", index))
        time.sleep(0.3 if index == 0 else 0.0)
        events.append(("end", index))
        return index

    gated = _FirstCallAlone(slow_first)
    threads = [threading.Thread(target=gated, args=(index,)) for index in range(3)]
    threads[0].start()
    time.sleep(0.05)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    assert events[:2] == [("start", 0), ("end", 0)] and len(events) == 6
    assert gated(7) == 7  # later calls go straight through
