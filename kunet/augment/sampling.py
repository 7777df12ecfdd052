"""Mirror folding and sampling through a coordinate map: images and weights bilinearly, classes by nearest
neighbour."""

from __future__ import annotations

import tensorflow as tf

from kunet.augment.params import _check_tiles

MIRROR_MODES = ("reflect", "symmetric")
MIRROR_MODE = "reflect"  # the mode sample_tiles uses unless told otherwise


def fold_coordinates(coords, size, mode: str = MIRROR_MODE):
    """Folds float coordinates into [0, size - 1] by mirroring at the image border, at any distance.

    ``mode="reflect"``: mirror axis through the edge pixel's centre (period 2 (size - 1)), integer
    coordinates reproduce ``np.pad(mode="reflect")``; ``"symmetric"``: axis on the edge pixel's outer side
    (period 2 size), reproduces ``np.pad(mode="symmetric")``. ``size`` broadcasts against ``coords``.
    """
    if mode not in MIRROR_MODES:
        raise ValueError(f"mirror mode must be one of {MIRROR_MODES}, got {mode!r}")
    coords = tf.convert_to_tensor(coords, tf.float32)
    size = tf.cast(size, tf.float32)
    last = size - 1.0
    if mode == "reflect":
        # Period 2 (n - 1); within a period the position is a triangle wave: n-1 - |n-1 - m|.
        period = tf.maximum(2.0 * last, 1.0)
        folded = last - tf.abs(last - tf.math.floormod(coords, period))
    else:
        # Period 2 n about the outer pixel edges (-0.5 and n - 0.5).
        folded = (size - 0.5) - tf.abs(size - tf.math.floormod(coords + 0.5, 2.0 * size))
    return tf.clip_by_value(folded, 0.0, tf.maximum(last, 0.0))


def _sample_points(y, x, height_true, width_true, width, base):
    """Flat index of the upper-left neighbour, fractions and neighbour steps for folded coordinates.

    The upper-left neighbour is clamped to <= size - 2 (the fraction then reaches 1), so every neighbour
    lies inside the true image and the zero padding of a batch is never read.
    """
    y0 = tf.clip_by_value(tf.floor(y), 0.0, tf.maximum(height_true - 2.0, 0.0))
    x0 = tf.clip_by_value(tf.floor(x), 0.0, tf.maximum(width_true - 2.0, 0.0))
    index = base + tf.cast(y0, tf.int32) * width + tf.cast(x0, tf.int32)
    step_y = tf.where(height_true > 1.0, width, 0)  # [B, 1, 1]: a 1-pixel-high image has no row below
    step_x = tf.where(width_true > 1.0, 1, 0)
    return index, y - y0, x - x0, step_y, step_x


def _bilinear(flat, index, fy, fx, step_y, step_x):
    """(1 - f) a + f b in both directions (exact at f in {0, 1}); flat [N, C] -> [B, t, t, C]."""
    a = tf.gather(flat, index)
    b = tf.gather(flat, index + step_x)
    c = tf.gather(flat, index + step_y)
    d = tf.gather(flat, index + step_y + step_x)
    fy = fy[..., None]
    fx = fx[..., None]
    return (1.0 - fy) * ((1.0 - fx) * a + fx * b) + fy * ((1.0 - fx) * c + fx * d)


def _nearest(flat, index, fy, fx, step_y, step_x):
    """Nearest neighbour (halves round up, like floor(y + 0.5)); only values of flat can appear."""
    zero = tf.zeros_like(index)
    index = index + tf.where(fy >= 0.5, step_y + zero, zero) + tf.where(fx >= 0.5, step_x + zero, zero)
    return tf.gather(flat, index)


def _to_unit(images):
    images = tf.convert_to_tensor(images)
    if images.dtype.is_integer:
        return tf.cast(images, tf.float32) / float(images.dtype.max)
    return tf.cast(images, tf.float32)


def _crop(tensor, input_tile: int, output_tile: int):
    start = (input_tile - output_tile) // 2
    if start == 0 and output_tile == input_tile:
        return tensor
    return tensor[:, start : start + output_tile, start : start + output_tile]


def _warp_yx(images, classes, weights, y, x, image_sizes, output_tile, mode):
    images = _to_unit(images)
    input_tile = y.shape[1]
    output_tile = input_tile if output_tile is None else int(output_tile)
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    sizes = tf.cast(tf.convert_to_tensor(image_sizes, tf.int32), tf.float32)
    height_true = sizes[:, 0, None, None]
    width_true = sizes[:, 1, None, None]
    y = fold_coordinates(y, height_true, mode)
    x = fold_coordinates(x, width_true, mode)
    base = (tf.range(batch, dtype=tf.int32) * (height * width))[:, None, None]
    index, fy, fx, step_y, step_x = _sample_points(y, x, height_true, width_true, width, base)
    flat = tf.reshape(images, [-1, channels])
    if images.shape[3] is not None:
        flat = tf.ensure_shape(flat, [None, images.shape[3]])
    tiles = _bilinear(flat, index, fy, fx, step_y, step_x)
    # Label and weight: the central crop of the same map (same indices and fractions).
    index, fy, fx = (_crop(t, input_tile, output_tile) for t in (index, fy, fx))
    tile_weights = tile_classes = None
    if weights is not None:
        flat_weights = tf.reshape(tf.cast(weights, tf.float32), [-1, 1])
        tile_weights = _bilinear(flat_weights, index, fy, fx, step_y, step_x)[..., 0]
    if classes is not None:
        flat_classes = tf.reshape(tf.convert_to_tensor(classes), [-1])
        tile_classes = _nearest(flat_classes, index, fy, fx, step_y, step_x)
    return tiles, tile_classes, tile_weights


def warp(
    images, coords, image_sizes, classes=None, weights=None, output_tile: int | None = None, mirror: str = MIRROR_MODE
):
    """Samples images (bilinear), classes (nearest) and weights (bilinear) through one coordinate map.

    Args:
        images: [B, Hmax, Wmax, C] (float in [0, 1]; integer images are scaled by their dtype's maximum).
        coords: [B, T, T, 2] source coordinates (y, x), folded here by mirroring.
        image_sizes: [B, 2] int32 true (H, W) of each image inside the zero-padded batch.
        classes: optional [B, Hmax, Wmax]; sampled at the central ``output_tile`` crop of the map.
        weights: optional [B, Hmax, Wmax] float; same crop, bilinear.
        output_tile: crop size for classes/weights (default: T, no crop).
        mirror: ``"reflect"`` or ``"symmetric"`` (see :func:`fold_coordinates`).

    Returns:
        (tiles [B, T, T, C] float32, tile_classes [B, t, t] or None, tile_weights [B, t, t] or None).
    """
    coords = tf.convert_to_tensor(coords, tf.float32)
    _check_tiles(coords.shape[1], output_tile)
    return _warp_yx(images, classes, weights, coords[..., 0], coords[..., 1], image_sizes, output_tile, mirror)
