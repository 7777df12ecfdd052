"""The coordinate map: tile placement, rotation/scale/flips and the elastic field composed into one map per tile.

Per axis the map is ``basis @ G @ basis.T`` (:func:`tile_basis`) with a small per-sample ``G``
(:func:`_map_coefficients`), plus the source position of the tile centre."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from kunet.augment.elastic import _sandwich, cubic_interpolation_matrix, elastic_nodes
from kunet.augment.params import AugmentParams, _check_tiles
from kunet.augment.streams import (
    _STREAM_FOREGROUND,
    _U_ANGLE,
    _U_CENTRE_X,
    _U_CENTRE_Y,
    _U_FLIP_X,
    _U_FLIP_Y,
    _U_FOREGROUND,
    _U_SCALE,
    _U_TRANSPOSE,
    _between,
    _map_samples,
    _seeds,
    _stream,
    _uniform_scalars,
    stateless_uniform,
)


def _foreground_centres(seeds, classes, image_sizes):
    """[B, 2] float (y, x) of a uniformly chosen pixel of class > 0 per sample, and [B] bool: any found."""
    height = tf.shape(classes)[1]
    width = tf.shape(classes)[2]

    def one(seed, sample_classes, size):
        rows = tf.range(height)[:, None] < size[0]
        cols = tf.range(width)[None, :] < size[1]
        mask = (sample_classes > 0) & rows & cols
        noise = stateless_uniform(tf.shape(sample_classes), _stream(seed, _STREAM_FOREGROUND))
        # U(0, 1) noise on foreground pixels, -1 elsewhere: the argmax is a uniform foreground pixel.
        score = tf.reshape(tf.where(mask, noise, -tf.ones_like(noise)), [-1])
        index = tf.argmax(score, output_type=tf.int32)
        centre = tf.cast(tf.stack([index // width, index % width]), tf.float32)
        return centre, tf.reduce_any(mask)

    signature = (tf.TensorSpec([2], tf.float32), tf.TensorSpec([], tf.bool))
    return _map_samples(one, (seeds, classes, image_sizes), signature)


def _tile_offsets(input_tile: int) -> np.ndarray:
    """Tile pixel positions relative to the tile centre: [T] float32, exact half-integers or integers."""
    return (np.arange(input_tile, dtype=np.float64) - (input_tile - 1) / 2.0).astype(np.float32)


def tile_basis(input_tile: int, elastic_points: int = 0) -> np.ndarray:
    """[T, K] basis of the coordinate map along one tile axis: [cubic matrix (P columns) | offset | 1].

    Every coordinate map is ``basis @ G @ basis.T`` per channel (y, x) with a small per-sample
    ``G`` [K, K] (:func:`_map_coefficients`): the elastic node block, the affine entries against the
    offset-from-centre column and the tile centre's source position against the ones column. One pair of
    small matmuls thus composes placement, rotation/scale/flips and the elastic field into one map.
    """
    columns = [] if elastic_points == 0 else [cubic_interpolation_matrix(elastic_points, input_tile)]
    columns += [_tile_offsets(input_tile)[:, None].astype(np.float64), np.ones((input_tile, 1))]
    return np.concatenate(columns, axis=1)


def _map_coefficients(uniforms, nodes, fg_centres, image_sizes, params: AugmentParams, input_tile: int):
    """Per-sample coefficients G [B, 2, K, K] of the coordinate map (see :func:`tile_basis`) and the
    source position of the tile centre [B, 2] (added outside the matmul, see :func:`_coordinates`)."""
    centre_offset = (input_tile - 1) / 2.0
    sizes = tf.cast(image_sizes, tf.float32)  # [B, 2]
    if params.shift:
        centre = tf.stack([uniforms[:, _U_CENTRE_Y], uniforms[:, _U_CENTRE_X]], axis=1) * (sizes - 1.0)
    else:
        centre = (sizes - 1.0) / 2.0
    if fg_centres is not None:
        fg_centre, found = fg_centres
        use = (uniforms[:, _U_FOREGROUND] < params.foreground_bias) & found
        centre = tf.where(use[:, None], fg_centre, centre)
    # Whole-pixel origin, so identity geometry samples exactly at pixel centres; this is the source
    # position of the tile centre.
    origin = tf.floor(centre - centre_offset + 0.5) + centre_offset  # [B, 2]
    if params.has_affine:
        a00, a01, a10, a11 = _affine(uniforms, params)
    else:
        a00 = a11 = tf.ones_like(origin[:, 0])
        a01 = a10 = tf.zeros_like(origin[:, 0])
    zero = tf.zeros_like(a00)
    # Affine block in the (offset, 1) rows/columns: y - origin_y = A00 off_i + A01 off_j (likewise x).
    affine = tf.stack(
        [
            tf.stack([tf.stack([zero, a00], -1), tf.stack([a01, zero], -1)], -2),
            tf.stack([tf.stack([zero, a10], -1), tf.stack([a11, zero], -1)], -2),
        ],
        axis=1,
    )  # [B, 2, 2, 2]
    if nodes is None:
        return affine, origin
    points = nodes.shape[1]
    node_block = tf.transpose(nodes, [0, 3, 1, 2])  # [B, 2, P, P]
    batch = tf.shape(nodes)[0]
    top = tf.concat([node_block, tf.zeros([batch, 2, points, 2])], axis=3)
    bottom = tf.concat([tf.zeros([batch, 2, 2, points]), affine], axis=3)
    return tf.concat([top, bottom], axis=2), origin  # [B, 2, P + 2, P + 2], [B, 2]


def _coordinates(uniforms, nodes, fg_centres, image_sizes, params: AugmentParams, input_tile: int):
    """Unfolded source coordinates (y [B, T, T], x [B, T, T]) from the drawn random numbers."""
    tile = int(input_tile)
    coefficients, origin = _map_coefficients(uniforms, nodes, fg_centres, image_sizes, params, tile)
    points = 0 if nodes is None else nodes.shape[1]
    basis = tf.constant(tile_basis(tile, points), tf.float32)  # [T, K]
    # basis @ G @ basis^T as two small matmuls. Besides composing the map, the matmul materialises it,
    # which keeps XLA from recomputing per-sample scalars (cos, sin, ...) inside every per-pixel loop.
    # The origin (up to the image size) is added in float32 outside the matmul: GPUs may run matmuls in
    # TF32 (11 significant bits); inside, only offsets (exact half-integers below 1024), A and the
    # elastic nodes pass through it, so TF32 merely rounds A and the node values slightly.
    relative = _sandwich(coefficients, basis)  # [B, 2, T, T]
    return relative[:, 0] + origin[:, 0, None, None], relative[:, 1] + origin[:, 1, None, None]


def _affine(uniforms, params: AugmentParams):
    """Entries of A = s R(theta) F per sample ([B] each) mapping tile offsets (dy, dx) to source offsets."""
    batch_ones = tf.ones_like(uniforms[:, 0])
    if params.rotation_degrees > 0:
        theta = _between(uniforms[:, _U_ANGLE], -1.0, 1.0) * (params.rotation_degrees * math.pi / 180.0)
        cos, sin = tf.cos(theta), tf.sin(theta)
    else:
        cos, sin = batch_ones, tf.zeros_like(batch_ones)
    if params.flip:
        fy = tf.where(uniforms[:, _U_FLIP_Y] < 0.5, -batch_ones, batch_ones)
        fx = tf.where(uniforms[:, _U_FLIP_X] < 0.5, -batch_ones, batch_ones)
        transpose = tf.cast(uniforms[:, _U_TRANSPOSE] < 0.5, tf.float32)
        keep = 1.0 - transpose
        # F = Transpose^t diag(fy, fx): exactly 0 or +-1.
        f00, f01, f10, f11 = fy * keep, fx * transpose, fy * transpose, fx * keep
    else:
        f00, f01, f10, f11 = batch_ones, 0.0 * batch_ones, 0.0 * batch_ones, batch_ones
    # R in (y, x) coordinates: [[cos, -sin], [sin, cos]].
    r00, r01, r10, r11 = cos, -sin, sin, cos
    a00 = r00 * f00 + r01 * f10
    a01 = r00 * f01 + r01 * f11
    a10 = r10 * f00 + r11 * f10
    a11 = r10 * f01 + r11 * f11
    if params.scale_range > 0:
        scale = _between(uniforms[:, _U_SCALE], 1.0 - params.scale_range, 1.0 + params.scale_range)
        a00, a01, a10, a11 = a00 * scale, a01 * scale, a10 * scale, a11 * scale
    return a00, a01, a10, a11


def coordinate_maps(seeds, image_sizes, params: AugmentParams, input_tile: int, classes=None):
    """[B, T, T, 2] source coordinates (y, x) of every input-tile pixel, before mirror folding.

    ``classes`` [B, Hmax, Wmax] is needed only for ``foreground_bias > 0``. This is the map
    :func:`sample_tiles` samples through (same seeds, same map).
    """
    seeds = _seeds(seeds)
    _check_tiles(input_tile, None)
    y, x = _draw_coordinates(seeds, image_sizes, params, int(input_tile), classes)[:2]
    return tf.stack([y, x], axis=-1)


def _draw_coordinates(seeds, image_sizes, params: AugmentParams, input_tile: int, classes):
    image_sizes = tf.convert_to_tensor(image_sizes, tf.int32)
    uniforms = _uniform_scalars(seeds)
    nodes = elastic_nodes(seeds, params.elastic_points, params.elastic_sigma) if params.has_elastic else None
    fg_centres = None
    if params.foreground_bias > 0:
        if classes is None:
            raise ValueError("foreground_bias > 0 needs the classes")
        fg_centres = _foreground_centres(seeds, tf.convert_to_tensor(classes), image_sizes)
    y, x = _coordinates(uniforms, nodes, fg_centres, image_sizes, params, input_tile)
    return y, x, uniforms
