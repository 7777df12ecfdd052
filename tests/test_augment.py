"""kunet.augment: one coordinate map per tile, mirror folding, the paper's elastic field, stateless seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kunet import augment
from kunet.augment import AugmentParams
from kunet.config import AugmentConfig

GEOMETRY = dataclasses.replace(AugmentParams(), brightness=0.0, contrast=0.0, gamma=0.0, noise_std=0.0)
DISABLED = AugmentParams.disabled()
FORBIDDEN_OPS = {
    "PyFunc",
    "PyFuncStateless",
    "EagerPyFunc",
    "NumpyFunction",
    "ResizeBicubic",
    "ImageProjectiveTransformV2",
    "ImageProjectiveTransformV3",
}


def _example(height=64, width=48, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((height, width, channels), dtype=np.float32)
    classes = rng.integers(0, 3, (height, width)).astype(np.uint8)
    weight = rng.random((height, width), dtype=np.float32) * 10
    return image, classes, weight


def _batch(examples, pad_image=0.0, pad_class=0, pad_weight=0.0):
    """Zero- (or value-) padded batch of (image, classes, weight) plus the true sizes."""
    hmax = max(e[0].shape[0] for e in examples)
    wmax = max(e[0].shape[1] for e in examples)
    channels = examples[0][0].shape[2]
    images = np.full((len(examples), hmax, wmax, channels), pad_image, np.float32)
    classes = np.full((len(examples), hmax, wmax), pad_class, examples[0][1].dtype)
    weights = np.full((len(examples), hmax, wmax), pad_weight, np.float32)
    for i, (image, cls, weight) in enumerate(examples):
        h, w = image.shape[:2]
        images[i, :h, :w], classes[i, :h, :w], weights[i, :h, :w] = image, cls, weight
    sizes = np.array([e[0].shape[:2] for e in examples], np.int32)
    return images, classes, weights, sizes


def _seeds(*values):
    return np.array([[v, 17] for v in values], np.int64)


def _sample(example, params, input_tile, output_tile, seed=1):
    image, classes, weight = example
    out = augment.sample_tiles(
        image[None],
        classes[None],
        weight[None],
        np.array([image.shape[:2]], np.int32),
        _seeds(seed),
        params,
        input_tile,
        output_tile,
    )
    return tuple(t.numpy()[0] for t in out)


def _grid(tile):
    rows, cols = np.meshgrid(np.arange(tile, dtype=np.float32), np.arange(tile, dtype=np.float32), indexing="ij")
    return np.stack([rows, cols], axis=-1)


# ---------------------------------------------------------------------------------------------- params


def test_params_from_config_and_disabled():
    config = AugmentConfig(elastic_sigma=7.0, flip=False, foreground_bias=0.25, on="device")
    params = AugmentParams.from_config(config)
    assert params.elastic_sigma == 7.0 and params.flip is False and params.foreground_bias == 0.25
    assert {f.name for f in dataclasses.fields(AugmentParams)} == {
        f.name for f in dataclasses.fields(AugmentConfig)
    } - {"on", "jit_compile"}  # where and how it runs, not what it does
    assert AugmentParams.from_config(AugmentConfig()) == AugmentParams()
    off = AugmentParams.disabled()
    assert not off.has_affine and not off.has_elastic and not off.has_gray_values and not off.shift
    with pytest.raises(ValueError):
        AugmentParams(elastic_points=1)
    with pytest.raises(ValueError):
        AugmentParams(foreground_bias=1.5)


# ---------------------------------------------------------------------------------------- identity / shift


def test_identity_is_bit_exact():
    example = _example(40, 40)
    tile, classes, weight = _sample(example, DISABLED, 40, 40)
    assert np.array_equal(tile, example[0])
    assert np.array_equal(classes, example[1]) and classes.dtype == np.uint8
    assert np.array_equal(weight, example[2])


def test_zero_displacement_map_is_bit_exact():
    image, classes, weight = _example(30, 30, channels=2)
    coords = _grid(30)[None]
    for mirror in augment.MIRROR_MODES:
        tiles, tile_classes, tile_weights = augment.warp(
            image[None], coords, [[30, 30]], classes[None], weight[None], mirror=mirror
        )
        assert np.array_equal(tiles[0], image)
        assert np.array_equal(tile_classes[0], classes)
        assert np.array_equal(tile_weights[0], weight)


@pytest.mark.parametrize("mirror", augment.MIRROR_MODES)
@pytest.mark.parametrize("shift", [(3, -5), (-40, 90), (131, -77)])
def test_integer_displacement_is_a_mirrored_shift(mirror, shift):
    image, classes, weight = _example(23, 17, channels=1)
    tile, crop = 32, 20
    coords = _grid(tile) + np.array(shift, np.float32)
    tiles, tile_classes, tile_weights = augment.warp(
        image[None], coords[None], [[23, 17]], classes[None], weight[None], output_tile=crop, mirror=mirror
    )
    pad = 200
    dy, dx = shift
    expect = np.pad(image[..., 0], pad, mode=mirror)[pad + dy : pad + dy + tile, pad + dx : pad + dx + tile]
    assert np.array_equal(tiles.numpy()[0, ..., 0], expect)
    start = (tile - crop) // 2
    window = (slice(pad + dy + start, pad + dy + start + crop), slice(pad + dx + start, pad + dx + start + crop))
    assert np.array_equal(tile_classes.numpy()[0], np.pad(classes, pad, mode=mirror)[window])
    assert np.array_equal(tile_weights.numpy()[0], np.pad(weight, pad, mode=mirror)[window])


@pytest.mark.parametrize("mirror", augment.MIRROR_MODES)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 10])
def test_fold_matches_numpy_pad_far_outside(mirror, size):
    pad = 9 * size + 5  # several periods on either side
    coords = np.arange(-pad, size + pad, dtype=np.float32)
    folded = augment.fold_coordinates(coords, size, mirror).numpy()
    expected = np.pad(np.arange(size), pad, mode=mirror)
    assert np.array_equal(folded, expected.astype(np.float32))


def test_fold_is_continuous_and_in_range():
    coords = np.linspace(-100, 100, 4001, dtype=np.float32)
    for mirror in augment.MIRROR_MODES:
        folded = augment.fold_coordinates(coords, 9, mirror).numpy()
        assert folded.min() >= 0 and folded.max() <= 8
        assert np.abs(np.diff(folded)).max() <= 0.05 + 1e-4  # no jumps: a mirror, not a wrap


# -------------------------------------------------------------------------------- one shared field


def test_image_label_and_weight_share_one_field():
    height, width = 45, 38
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([rows, cols], -1).astype(np.float32) / 64.0  # [0, 1): the coordinate, bilinear-exact
    classes = (rows * width + cols).astype(np.int32)  # encoded label: which source pixel
    weight = cols.astype(np.float32)
    params = dataclasses.replace(GEOMETRY, scale_range=0.2)
    tiles, tile_classes, tile_weights = augment.sample_tiles(
        image[None].repeat(4, 0),
        classes[None].repeat(4, 0),
        weight[None].repeat(4, 0),
        np.array([[height, width]] * 4, np.int32),
        _seeds(1, 2, 3, 4),
        params,
        60,
        40,
    )
    assert tile_classes.dtype == tf.int32
    y = tiles.numpy()[:, 10:50, 10:50, 0] * 64.0
    x = tiles.numpy()[:, 10:50, 10:50, 1] * 64.0
    label_y, label_x = np.divmod(tile_classes.numpy(), width)
    # The label is the nearest source pixel of the very point the image was sampled at.
    assert np.abs(label_y - y).max() <= 0.5 + 1e-3
    assert np.abs(label_x - x).max() <= 0.5 + 1e-3
    np.testing.assert_allclose(tile_weights.numpy(), x, atol=1e-3)
    # And the map is really deformed (not a trivial identity).
    assert np.abs(x - np.round(x)).max() > 0.1


def test_warped_labels_only_contain_original_values():
    image, _, weight = _example(50, 70)
    classes = np.random.default_rng(3).choice(np.array([0, 3, 7, 200], np.uint8), (50, 70))
    params = dataclasses.replace(AugmentParams(), scale_range=0.3, elastic_sigma=15.0)
    _, tile_classes, _ = augment.sample_tiles(
        image[None].repeat(3, 0),
        classes[None].repeat(3, 0),
        weight[None].repeat(3, 0),
        np.array([[50, 70]] * 3, np.int32),
        _seeds(5, 6, 7),
        params,
        96,
        60,
    )
    assert set(np.unique(tile_classes.numpy())) <= {0, 3, 7, 200}


def test_flips_alone_give_the_eight_dihedral_symmetries():
    image, classes, weight = _example(20, 20)
    params = dataclasses.replace(DISABLED, flip=True)
    seeds = _seeds(*range(40))
    tiles, tile_classes, _ = augment.sample_tiles(
        image[None].repeat(40, 0),
        classes[None].repeat(40, 0),
        weight[None].repeat(40, 0),
        np.array([[20, 20]] * 40, np.int32),
        seeds,
        params,
        20,
        20,
    )
    variants = []
    for k in range(4):
        rotated = np.rot90(image[..., 0], k)
        variants += [rotated, rotated.T]
    found = set()
    for tile, cls in zip(tiles.numpy()[..., 0], tile_classes.numpy()):
        matches = [i for i, v in enumerate(variants) if np.array_equal(tile, v)]
        assert len(matches) == 1, "a flip must be an exact dihedral symmetry"
        found.add(matches[0])
        k, transposed = divmod(matches[0], 2)
        expected = np.rot90(classes, k)
        assert np.array_equal(cls, expected.T if transposed else expected)
    assert len(found) == 8


# ---------------------------------------------------------------------------------------- elastic field


def test_cubic_matrix_properties():
    for points, size in [(2, 50), (3, 33), (3, 572), (5, 101), (4, 7)]:
        matrix = augment.cubic_interpolation_matrix(points, size)
        np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-12)  # constants reproduced
        ramp = np.arange(points, dtype=np.float64)
        np.testing.assert_allclose(matrix @ ramp, np.arange(size) * (points - 1) / (size - 1), atol=1e-9)
        assert (matrix**2).sum(1).max() <= 1.0 + 1e-12  # variance never exceeds sigma^2
        assert np.array_equal(matrix[0], np.eye(points)[0]) and np.array_equal(matrix[-1], np.eye(points)[-1])


def test_field_passes_exactly_through_nodes():
    nodes = np.random.default_rng(0).normal(0, 10, (2, 3, 3, 2)).astype(np.float32)
    field = augment.interpolate_nodes(nodes, 33).numpy()  # nodes at pixels 0, 16, 32
    assert np.array_equal(field[:, ::16, ::16], nodes)
    field = augment.interpolate_nodes(nodes, 572).numpy()  # corners are nodes at every size
    assert np.array_equal(field[:, ::571, ::571], nodes[:, ::2, ::2])


def test_displacement_statistics_over_many_seeds():
    sigma, count = 10.0, 3000
    seeds = np.stack([np.arange(count), np.full(count, 99)], 1)
    field = tf.function(lambda s: augment.elastic_displacement(s, 3, sigma, 33), jit_compile=True)(seeds)
    field = field.numpy()
    assert field.shape == (count, 33, 33, 2)
    at_nodes = field[:, ::16, ::16]  # [count, 3, 3, 2]
    std = at_nodes.std(axis=0)
    assert np.all(np.abs(std - sigma) < 0.1 * sigma), std
    # dy and dx independent (keras' elastic_transform draws both from one seed: correlation 1).
    dy, dx = at_nodes[..., 0].ravel(), at_nodes[..., 1].ravel()
    assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.05
    # Neighbouring nodes independent too.
    assert abs(np.corrcoef(at_nodes[:, 0, 0, 0], at_nodes[:, 0, 1, 0])[0, 1]) < 0.1
    # No overshoot at the border: pointwise std along the tile's edges never above sigma (resizing with
    # cell-centre nodes gives ~1.4 sigma at the corners), exactly sigma at the corners.
    pixel_std = field.std(axis=0)
    border = np.concatenate([pixel_std[0], pixel_std[-1], pixel_std[:, 0], pixel_std[:, -1]])
    assert border.max() < 1.08 * sigma
    assert np.all(np.abs(pixel_std[::32, ::32] - sigma) < 0.1 * sigma)
    # Between nodes the interpolated field is smoother (lower variance), as predicted by sum(M^2).
    matrix = augment.cubic_interpolation_matrix(3, 33)
    predicted = sigma * np.sqrt((matrix[8] ** 2).sum() * (matrix[8] ** 2).sum())
    assert abs(pixel_std[8, 8].mean() - predicted) < 0.1 * predicted


# ------------------------------------------------------------------------------------ seeds / batching


def test_same_seed_same_output_different_seed_different():
    example = _example(50, 60)
    first = _sample(example, AugmentParams(), 72, 40, seed=11)
    again = _sample(example, AugmentParams(), 72, 40, seed=11)
    other = _sample(example, AugmentParams(), 72, 40, seed=12)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[2], other[2])


def test_batched_equals_per_sample_with_padding():
    examples = [_example(50, 60, seed=0), _example(37, 41, seed=1), _example(64, 29, seed=2)]
    params = dataclasses.replace(AugmentParams(), scale_range=0.1)
    images, classes, weights, sizes = _batch(examples)
    seeds = _seeds(21, 22, 23)
    batched = [t.numpy() for t in augment.sample_tiles(images, classes, weights, sizes, seeds, params, 60, 28)]
    for i, example in enumerate(examples):
        single = _sample(example, params, 60, 28, seed=21 + i)
        np.testing.assert_allclose(batched[0][i], single[0], atol=1e-5)
        assert np.array_equal(batched[1][i], single[1])
        np.testing.assert_allclose(batched[2][i], single[2], atol=1e-4)


def test_padding_is_never_sampled():
    examples = [_example(33, 21, seed=4), _example(12, 40, seed=5)]
    images, classes, weights, sizes = _batch(examples, pad_image=np.nan, pad_class=250, pad_weight=np.nan)
    params = dataclasses.replace(AugmentParams(), elastic_sigma=20.0, scale_range=0.3)
    for seed in range(6):
        tiles, tile_classes, tile_weights = augment.sample_tiles(
            images, classes, weights, sizes, _seeds(seed, seed + 100), params, 76, 60
        )
        assert np.isfinite(tiles.numpy()).all() and np.isfinite(tile_weights.numpy()).all()
        assert 250 not in tile_classes.numpy()


@pytest.mark.slow
def test_xla_compiles_and_matches_graph_mode():
    examples = [_example(50, 60, seed=0), _example(41, 37, seed=1)]
    images, classes, weights, sizes = _batch(examples)
    seeds = _seeds(3, 4)

    def run(images, classes, weights, sizes, seeds):
        return augment.sample_tiles(images, classes, weights, sizes, seeds, GEOMETRY, 64, 32)

    xla = [t.numpy() for t in tf.function(run, jit_compile=True)(images, classes, weights, sizes, seeds)]
    graph = [t.numpy() for t in tf.function(run)(images, classes, weights, sizes, seeds)]
    np.testing.assert_allclose(xla[0], graph[0], atol=1e-4)
    assert (xla[1] == graph[1]).mean() > 0.999  # nearest may differ at an exact .5 tie by an ulp
    np.testing.assert_allclose(xla[2], graph[2], atol=1e-3)

    # With gray values too (noise included): the same random numbers with and without XLA.
    def run_full(*args):
        return augment.sample_tiles(*args, AugmentParams(), 64, 32)

    xla = tf.function(run_full, jit_compile=True)(images, classes, weights, sizes, seeds)
    graph = tf.function(run_full)(images, classes, weights, sizes, seeds)
    assert xla[0].shape == (2, 64, 64, 1)
    np.testing.assert_allclose(xla[0].numpy(), graph[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(xla[2].numpy(), graph[2].numpy(), atol=1e-3)


def _all_op_types(concrete):
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def test_traced_graph_has_no_python_or_forbidden_ops():
    params = dataclasses.replace(AugmentParams(), foreground_bias=0.5, scale_range=0.1)
    fn = tf.function(lambda *a: augment.sample_tiles(*a, params, 572, 388))
    for batch in (2, None):  # static batch (unrolled draws) and unknown batch (map_fn)
        concrete = fn.get_concrete_function(
            tf.TensorSpec([batch, None, None, 1], tf.float32),
            tf.TensorSpec([batch, None, None], tf.uint8),
            tf.TensorSpec([batch, None, None], tf.float32),
            tf.TensorSpec([batch, 2], tf.int32),
            tf.TensorSpec([batch, 2], tf.int64),
        )
        types = _all_op_types(concrete)
        assert "GatherV2" in types and types.isdisjoint(FORBIDDEN_OPS), types & FORBIDDEN_OPS
        assert not any(t.startswith("RandomUniform") or t == "RandomStandardNormal" for t in types)


def test_unknown_batch_size_matches_static():
    examples = [_example(30, 30, seed=0), _example(30, 30, seed=1), _example(30, 30, seed=2)]
    images, classes, weights, sizes = _batch(examples)
    seeds = _seeds(7, 8, 9)
    params = dataclasses.replace(AugmentParams(), foreground_bias=0.5)
    fn = tf.function(
        lambda *a: augment.sample_tiles(*a, params, 40, 20),
        input_signature=[
            tf.TensorSpec([None, 30, 30, 1], tf.float32),
            tf.TensorSpec([None, 30, 30], tf.uint8),
            tf.TensorSpec([None, 30, 30], tf.float32),
            tf.TensorSpec([None, 2], tf.int32),
            tf.TensorSpec([None, 2], tf.int64),
        ],
    )
    dynamic = fn(images, classes, weights, sizes, seeds)
    static = augment.sample_tiles(images, classes, weights, sizes, seeds, params, 40, 20)
    for a, b in zip(dynamic, static):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.slow
def test_host_sampler_in_dataset_map_is_deterministic():
    image, classes, weight = _example(48, 52)
    sampler = augment.make_host_sampler(AugmentParams(), 60, 28, jit_compile=True)

    def collect():
        seeds = tf.data.Dataset.range(6).map(lambda i: tf.stack([i, tf.constant(5, tf.int64)]))
        tiles = seeds.map(
            lambda s: (s, *sampler(image, classes, weight, s)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
        )
        return {int(s[0]): rest for s, *rest in tiles}

    first, second = collect(), collect()
    assert sorted(first) == list(range(6))
    for key in first:
        for x, y in zip(first[key], second[key]):
            assert np.array_equal(x.numpy(), y.numpy())
    assert not np.array_equal(first[0][0].numpy(), first[1][0].numpy())
    tile, tile_classes, tile_weight = first[0]
    assert tile.shape == (60, 60, 1) and tile_classes.shape == (28, 28) and tile_weight.shape == (28, 28)
    assert tile_classes.dtype == tf.uint8
    # Frames of unknown, varying size (as decoded from records): one trace, XLA compiles per shape.
    frames = tf.data.Dataset.from_generator(
        lambda: iter([_example(48, 52, seed=1), _example(35, 61, channels=1, seed=2)]),
        output_signature=(
            tf.TensorSpec([None, None, 1], tf.float32),
            tf.TensorSpec([None, None], tf.uint8),
            tf.TensorSpec([None, None], tf.float32),
        ),
    )
    shapes = [
        tuple(t.shape for t in out)
        for out in frames.map(lambda i, c, w: sampler(i, c, w, tf.constant([1, 2], tf.int64)))
    ]
    assert shapes == [((60, 60, 1), (28, 28), (28, 28))] * 2
    # The per-sample function is sample_tiles with B = 1 (XLA on both sides).
    direct = tf.function(lambda *a: augment.sample_tiles(*a, AugmentParams(), 60, 28), jit_compile=True)(
        image[None], classes[None], weight[None], np.array([[48, 52]], np.int32), np.array([[3, 5]], np.int64)
    )
    single = sampler(image, classes, weight, np.array([3, 5], np.int64))
    for a, b in zip(single, direct):
        np.testing.assert_allclose(a.numpy(), b.numpy()[0], atol=1e-6)


# ------------------------------------------------------------------------------- sizes, centre, grays


@pytest.mark.parametrize("tiles", [(188, 4), (220, 36)])
def test_odd_image_sizes_and_small_outputs(tiles):
    input_tile, output_tile = tiles
    example = _example(301, 257, seed=9)
    tile, classes, weight = _sample(example, DISABLED, input_tile, output_tile)
    top = int(np.floor((301 - 1) / 2 - (input_tile - 1) / 2 + 0.5))
    left = int(np.floor((257 - 1) / 2 - (input_tile - 1) / 2 + 0.5))
    assert np.array_equal(tile, example[0][top : top + input_tile, left : left + input_tile])
    offset = (input_tile - output_tile) // 2
    window = (slice(top + offset, top + offset + output_tile), slice(left + offset, left + offset + output_tile))
    assert np.array_equal(classes, example[1][window]) and np.array_equal(weight, example[2][window])
    full = _sample(example, AugmentParams(), input_tile, output_tile, seed=4)
    assert full[0].shape == (input_tile, input_tile, 1) and full[1].shape == (output_tile, output_tile)
    assert full[2].shape == (output_tile, output_tile)


def test_foreground_bias_centres_tiles_on_foreground():
    image, _, weight = _example(80, 90)
    classes = np.zeros((80, 90), np.uint8)
    classes[70:73, 3:6] = 2  # a small blob near a corner
    params = dataclasses.replace(DISABLED, foreground_bias=1.0)
    count = 12
    _, tile_classes, _ = augment.sample_tiles(
        image[None].repeat(count, 0),
        classes[None].repeat(count, 0),
        weight[None].repeat(count, 0),
        np.array([[80, 90]] * count, np.int32),
        _seeds(*range(count)),
        params,
        40,
        2,
    )
    assert (tile_classes.numpy() > 0).any(axis=(1, 2)).all()
    # Without the bias (and without shift) the centre stays on the image centre: background.
    _, centred, _ = _sample((image, classes, weight), DISABLED, 40, 2)
    assert not centred.any()


def test_shift_covers_the_image():
    height, width = 61, 83
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    classes = (rows * width + cols).astype(np.int32)
    image, _, weight = _example(height, width)
    params = dataclasses.replace(DISABLED, shift=True)
    count = 400
    _, centre, _ = augment.sample_tiles(
        image[None].repeat(count, 0),
        classes[None].repeat(count, 0),
        weight[None].repeat(count, 0),
        np.array([[height, width]] * count, np.int32),
        _seeds(*range(count)),
        params,
        41,
        1,
    )
    y, x = np.divmod(centre.numpy().ravel(), width)
    assert y.min() < 5 and y.max() > height - 6 and x.min() < 5 and x.max() > width - 6
    assert abs(y.mean() - (height - 1) / 2) < 4 and abs(x.mean() - (width - 1) / 2) < 5


def test_gray_value_variation():
    image, classes, weight = _example(40, 40, channels=2)
    clean = _sample((image, classes, weight), DISABLED, 40, 40, seed=3)[0]
    assert np.array_equal(clean, image)
    bright = _sample((image, classes, weight), dataclasses.replace(DISABLED, brightness=0.3), 40, 40, seed=3)[0]
    shift = (bright - image)[(bright > 0) & (bright < 1)]
    assert np.ptp(shift) < 1e-5 and 0 < abs(shift.mean()) <= 0.3  # one shift per tile, saturating at 0/1
    contrast = _sample((image, classes, weight), dataclasses.replace(DISABLED, contrast=0.5), 40, 40, seed=3)[0]
    np.testing.assert_allclose(contrast.mean(), image.mean(), atol=1e-3)  # about the tile mean
    assert abs(contrast.std() / image.std() - 1) > 1e-3
    gamma = _sample((image, classes, weight), dataclasses.replace(DISABLED, gamma=0.5), 40, 40, seed=3)[0]
    assert gamma.min() >= 0 and gamma.max() <= 1 and not np.allclose(gamma, image)
    noisy = [
        _sample((image, classes, weight), dataclasses.replace(DISABLED, noise_std=0.05), 40, 40, seed=s)[0]
        for s in range(5)
    ]
    noise = np.stack(noisy) - image
    assert abs(noise.std() - 0.05) < 0.005 and abs(noise.mean()) < 0.005
    # Gray values never touch labels or weights, and the geometry does not depend on them.
    full = _sample((image, classes, weight), AugmentParams(), 60, 30, seed=8)
    geometry = _sample((image, classes, weight), GEOMETRY, 60, 30, seed=8)
    assert np.array_equal(full[1], geometry[1]) and np.array_equal(full[2], geometry[2])
    assert not np.array_equal(full[0], geometry[0])


def test_coordinate_maps_is_the_sampled_map():
    image, classes, weight = _example(50, 60, channels=1)
    sizes, seeds = np.array([[50, 60]], np.int32), _seeds(13)
    coords = augment.coordinate_maps(seeds, sizes, GEOMETRY, 48)
    assert coords.shape == (1, 48, 48, 2)
    by_map = augment.warp(image[None], coords, sizes, classes[None], weight[None], output_tile=24)
    direct = augment.sample_tiles(image[None], classes[None], weight[None], sizes, seeds, GEOMETRY, 48, 24)
    for a, b in zip(by_map, direct):
        assert np.array_equal(a.numpy(), b.numpy())


def test_gray_values_after_warp_equal_sample_tiles():
    image, classes, weight = _example(50, 60, channels=2)
    sizes, seeds = np.array([[50, 60]] * 2, np.int32), _seeds(13, 14)
    params = dataclasses.replace(AugmentParams(), foreground_bias=0.5)
    batch = (image[None].repeat(2, 0), classes[None].repeat(2, 0), weight[None].repeat(2, 0))
    coords = augment.coordinate_maps(seeds, sizes, params, 48, classes=batch[1])
    tiles, tile_classes, _ = augment.warp(batch[0], coords, sizes, batch[1], batch[2], output_tile=24)
    composed = augment.gray_value_variation(tiles, seeds, params)
    direct = augment.sample_tiles(*batch, sizes, seeds, params, 48, 24)
    assert np.array_equal(composed.numpy(), direct[0].numpy())
    assert np.array_equal(tile_classes.numpy(), direct[1].numpy())


def test_batch_sampler_matches_sample_tiles():
    examples = [_example(40, 44, seed=0), _example(33, 44, seed=1)]
    images, classes, weights, sizes = _batch(examples)
    sampler = augment.make_batch_sampler(GEOMETRY, 52, 20)
    got = sampler(images, classes, weights, sizes, _seeds(1, 2))
    want = augment.sample_tiles(images, classes, weights, sizes, _seeds(1, 2), GEOMETRY, 52, 20)
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), atol=1e-4)
    assert (got[1].numpy() == want[1].numpy()).mean() > 0.999


def test_preview_grid_png(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from kunet.augment_preview import write_augmentation_grid

    height, width = 90, 80
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    classes = (((rows // 15) + (cols // 15)) % 2).astype(np.uint8)  # checkerboard: many boundaries
    image = (0.2 + 0.6 * classes).astype(np.float32)
    path = write_augmentation_grid(
        tmp_path / "grid.png", image, classes, 1 + classes.astype(np.float32), AugmentParams(), 92, 40, seed=3, count=3
    )
    sheet = cv2.imread(str(path))
    assert sheet is not None and sheet.shape[2] == 3
    # 4 panels in a 2 x 2 sheet, each caption + tile + weight image.
    assert sheet.shape[1] == 2 * 92 + 8 and sheet.shape[0] == 2 * (24 + 2 * 92) + 8
    red = (sheet[..., 2] > 200) & (sheet[..., 1] < 80) & (sheet[..., 0] < 80)
    cyan = (sheet[..., 0] > 150) & (sheet[..., 1] > 120) & (sheet[..., 2] < 120)
    assert red.sum() > 100 and cyan.sum() > 100  # label boundaries and the warped reference grid


def test_table_normal_noise_is_gaussian_and_identical_with_and_without_xla():
    from kunet.augment import table_normal

    seed = tf.constant([3, 11], tf.int64)
    eager = table_normal([200, 300], seed, stddev=2.0).numpy()
    compiled = tf.function(lambda s: table_normal([200, 300], s, stddev=2.0), jit_compile=True)(seed).numpy()
    np.testing.assert_array_equal(eager, compiled)
    values = eager.ravel() / 2.0
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1.0) < 0.02
    # Normal shape, not just the first two moments: kurtosis 3 and the 1-sigma / 2-sigma masses.
    assert abs(np.mean(values**4) - 3.0) < 0.1
    assert abs(np.mean(np.abs(values) < 1) - 0.6827) < 0.01 and abs(np.mean(np.abs(values) < 2) - 0.9545) < 0.005
    other = table_normal([200, 300], tf.constant([3, 12], tf.int64)).numpy()
    assert abs(np.corrcoef(values, other.ravel())[0, 1]) < 0.02
