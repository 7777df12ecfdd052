"""The entry points: augmented tiles for a batch (:func:`sample_tiles`) and the ``tf.function`` samplers of the
"host" and "device" placements."""

from __future__ import annotations

import tensorflow as tf

from kunet.augment.geometry import _draw_coordinates
from kunet.augment.gray import _gray
from kunet.augment.params import AugmentParams, _check_tiles
from kunet.augment.sampling import MIRROR_MODE, _warp_yx
from kunet.augment.streams import _seeds


def sample_tiles(
    images,
    classes,
    weights,
    image_sizes,
    seeds,
    params: AugmentParams,
    input_tile: int,
    output_tile: int,
    mirror: str = MIRROR_MODE,
):
    """Augmented training tiles for a batch, all geometry through one coordinate map per sample.

    Args:
        images: [B, Hmax, Wmax, C] float32 in [0, 1] (integer images are scaled by their dtype's maximum).
        classes: [B, Hmax, Wmax] class indices (uint8/int32).
        weights: [B, Hmax, Wmax] float32 weight maps.
        image_sizes: [B, 2] int32 true (H, W) of each image inside the zero-padded batch; mirror folding
            uses the true size and the padding is never sampled.
        seeds: [B, 2] int32/int64, one stateless seed per sample.
        params: :class:`AugmentParams`.
        input_tile: side of the image tile (e.g. 572).
        output_tile: side of the label/weight tile cut from the centre of the same map (e.g. 388);
            ``output_tile == input_tile`` means no crop.
        mirror: ``"reflect"`` (default) or ``"symmetric"``.

    Returns:
        (tiles [B, input_tile, input_tile, C] float32, tile_classes [B, output_tile, output_tile] with the
        dtype of ``classes``, tile_weights [B, output_tile, output_tile] float32).
    """
    input_tile, output_tile = int(input_tile), int(output_tile)
    _check_tiles(input_tile, output_tile)
    seeds = _seeds(seeds)
    y, x, uniforms = _draw_coordinates(seeds, image_sizes, params, input_tile, classes)
    tiles, tile_classes, tile_weights = _warp_yx(images, classes, weights, y, x, image_sizes, output_tile, mirror)
    if params.has_gray_values:
        tiles = _gray(tiles, uniforms, seeds, params)
    return tiles, tile_classes, tile_weights


def make_host_sampler(
    params: AugmentParams, input_tile: int, output_tile: int, jit_compile: bool = True, mirror: str = MIRROR_MODE
):
    """Per-sample function for ``Dataset.map``: (image [H, W, C], classes [H, W], weight [H, W], seed [2])
    -> (tile, tile_classes, tile_weight); :func:`sample_tiles` with B = 1 in a ``tf.function``.

    With ``jit_compile`` XLA compiles once per distinct image shape.
    """
    input_tile, output_tile = int(input_tile), int(output_tile)
    _check_tiles(input_tile, output_tile)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def sampler(image, classes, weight, seed):
        image = tf.convert_to_tensor(image)
        if image.shape.rank == 2:
            image = image[..., None]
        sizes = tf.shape(image)[None, :2]
        tiles, tile_classes, tile_weights = sample_tiles(
            image[None],
            tf.convert_to_tensor(classes)[None],
            tf.convert_to_tensor(weight)[None],
            sizes,
            tf.convert_to_tensor(seed)[None],
            params,
            input_tile,
            output_tile,
            mirror=mirror,
        )
        return tiles[0], tile_classes[0], tile_weights[0]

    return sampler


def make_batch_sampler(
    params: AugmentParams, input_tile: int, output_tile: int, jit_compile: bool = True, mirror: str = MIRROR_MODE
):
    """Batched :func:`sample_tiles` in its own ``tf.function(jit_compile=...)`` for the "device" placement.

    Call it from the training step (a ``tf.function``, XLA or not): the augmentation then compiles as its
    own XLA cluster even when the step itself is not jit-compiled (graph mode is ~4x slower on CPU).
    Signature: (images, classes, weights, image_sizes, seeds) -> (tiles, tile_classes, tile_weights).
    """
    input_tile, output_tile = int(input_tile), int(output_tile)
    _check_tiles(input_tile, output_tile)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def sampler(images, classes, weights, image_sizes, seeds):
        return sample_tiles(
            images, classes, weights, image_sizes, seeds, params, input_tile, output_tile, mirror=mirror
        )

    return sampler
