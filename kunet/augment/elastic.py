"""The paper's elastic deformation: N(0, sigma) displacements of a coarse grid of nodes, interpolated to every
pixel by Keys' cubic convolution (matrices built with NumPy at trace time, applied as two small matmuls)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from kunet.augment.streams import _STREAM_ELASTIC, _map_samples, _seeds, _stream, stateless_normal

KEYS_A = -0.5  # Keys (1981) cubic convolution parameter: the "bicubic" of most image libraries


def keys_kernel(s: np.ndarray, a: float = KEYS_A) -> np.ndarray:
    """Keys' cubic convolution kernel W(s) (a = -0.5 reproduces quadratics; W(0) = 1, W(+-1) = W(+-2) = 0)."""
    s = np.abs(np.asarray(s, dtype=np.float64))
    near = (a + 2) * s**3 - (a + 3) * s**2 + 1
    far = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return np.where(s <= 1, near, np.where(s < 2, far, 0.0))


def cubic_interpolation_matrix(points: int, size: int) -> np.ndarray:
    """[size, points] matrix M with M @ g = the Keys-cubic interpolation of node values g at every pixel.

    Nodes sit at the first and last pixel and evenly between (pixel ``k (size - 1) / (points - 1)``), NOT at
    cell centres, so the border is interpolated, never extrapolated. Boundary condition: the missing
    neighbours beyond the end nodes are linearly extrapolated (g[-1] = 2 g[0] - g[1], g[P] = 2 g[P-1] -
    g[P-2]), i.e. a zero second difference at the ends. Rows sum to 1 (constants and linear ramps are
    reproduced exactly), rows at node pixels are exactly one-hot (the field passes through the nodes), and
    every row has sum(M**2) <= 1: the displacement's pointwise variance never exceeds sigma**2 anywhere,
    the border included (bicubic resizing with cell-centre nodes inflates it at the corners).
    """
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    matrix = np.zeros((size, points), dtype=np.float64)
    for i in range(size):
        t = (i * (points - 1)) / (size - 1) if size > 1 else 0.0
        k0 = min(int(math.floor(t)), points - 2)
        s = t - k0
        weights = keys_kernel(np.array([s + 1, s, 1 - s, 2 - s]))
        for k, w in zip(range(k0 - 1, k0 + 3), weights):
            if k < 0:
                matrix[i, 0] += 2 * w
                matrix[i, 1] -= w
            elif k > points - 1:
                matrix[i, points - 1] += 2 * w
                matrix[i, points - 2] -= w
            else:
                matrix[i, k] += w
    return matrix


def interpolate_nodes(nodes, size: int):
    """Upsamples node displacements [B, P, P, 2] to a per-pixel field [B, size, size, 2] (M G M^T per channel)."""
    nodes = tf.convert_to_tensor(nodes, tf.float32)
    points = nodes.shape[1]
    if points is None or nodes.shape[2] != points:
        raise ValueError(f"nodes must be [B, P, P, 2] with a static P, got {nodes.shape}")
    matrix = tf.constant(cubic_interpolation_matrix(points, size), tf.float32)  # [T, P]
    channels_first = tf.transpose(nodes, [0, 3, 1, 2])  # [B, 2, P, P]
    field = _sandwich(channels_first, matrix)  # [B, 2, T, T]
    return tf.transpose(field, [0, 2, 3, 1])


def _sandwich(grid, matrix):
    """M @ G @ M^T per sample and channel as two small matmuls: G [B, 2, K, K], M [T, K] -> [B, 2, T, T].

    Interpolates node displacements here, and composes the whole coordinate map in
    :func:`kunet.augment.geometry._coordinates`.
    """
    rows = tf.einsum("bckl,jl->bckj", grid, matrix)  # [B, 2, K, T]
    return tf.einsum("ik,bckj->bcij", matrix, rows)  # [B, 2, T, T]


def elastic_nodes(seeds, points: int, sigma: float):
    """[B, P, P, 2] node displacements (dy, dx), N(0, sigma) px, x and y drawn independently."""
    seeds = _seeds(seeds)

    def one(seed):
        return stateless_normal([points, points, 2], _stream(seed, _STREAM_ELASTIC), stddev=sigma)

    return _map_samples(one, (seeds,), tf.TensorSpec([points, points, 2], tf.float32))


def elastic_displacement(seeds, points: int, sigma: float, size: int):
    """The paper's elastic deformation: [B, size, size, 2] per-pixel displacements (dy, dx) in pixels.

    A coarse ``points`` x ``points`` grid over the tile (nodes at the corners and evenly between) gets
    N(0, ``sigma``) displacements, independently for x and y; they are upsampled to every pixel by Keys
    bicubic interpolation (:func:`cubic_interpolation_matrix`), two small matmuls per channel.
    """
    return interpolate_nodes(elastic_nodes(seeds, points, sigma), size)
