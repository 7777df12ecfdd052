"""Per-sample stateless random numbers: independent streams split from each sample's seed.

Only stateless ops (``tf.random.stateless_*``, Philox), driven by one explicit seed of shape [2] per sample.
Each sample's seed is split into independent streams (scalar parameters, elastic nodes, pixel noise,
foreground choice), so the same seed gives the same tile in every placement (per-sample inside
``Dataset.map`` with any parallelism, or batched on the device; batched == per-sample) and switching one
augmentation on or off does not change the random numbers of the others. Floats are made here from the
Philox integer bits (:func:`stateless_uniform`, :func:`stateless_normal`), which XLA and the TF kernels
produce identically; TF's own float conversion differs between the two, so a seed would otherwise give
another tile with ``jit_compile=True`` than without.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

# Independent random streams split from each sample's seed.
_STREAM_SCALARS, _STREAM_ELASTIC, _STREAM_NOISE, _STREAM_FOREGROUND = range(4)
_NUM_STREAMS = 4
# Layout of the per-sample vector of U(0, 1) scalars (fixed, whatever is enabled).
(
    _U_ANGLE,
    _U_SCALE,
    _U_FLIP_Y,
    _U_FLIP_X,
    _U_TRANSPOSE,
    _U_CENTRE_Y,
    _U_CENTRE_X,
    _U_FOREGROUND,
    _U_BRIGHTNESS,
    _U_CONTRAST,
    _U_GAMMA,
) = range(11)
_NUM_UNIFORMS = 11
# Batches up to this static size draw their per-sample random numbers in an unrolled Python loop;
# larger or unknown batch sizes use tf.map_fn (same ops per sample, same numbers).
_MAX_UNROLL = 64


def _seeds(seeds):
    seeds = tf.convert_to_tensor(seeds)
    if seeds.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"seeds must be int32 or int64, got {seeds.dtype}")
    return tf.cast(seeds, tf.int64)


def _map_samples(fn: Callable, elems: tuple, signature):
    """fn applied to each sample's slice of elems, stacked: unrolled for a small static batch, else map_fn."""
    batch = elems[0].shape[0]
    if batch is not None and batch <= _MAX_UNROLL:
        outputs = [fn(*(e[b] for e in elems)) for b in range(batch)]
        if isinstance(outputs[0], tuple):
            return tuple(tf.stack(parts) for parts in zip(*outputs))
        return tf.stack(outputs)
    return tf.map_fn(lambda args: fn(*args), elems, fn_output_signature=signature)


def _stream(seed, stream: int):
    """The seed [2] of one independent stream of a sample."""
    return tf.random.experimental.stateless_split(seed, num=_NUM_STREAMS, alg="philox")[stream]


def stateless_uniform(shape, seed):
    """U[0, 1) float32 with 24-bit resolution from Philox bits: identical with and without XLA.

    (``tf.random.stateless_uniform`` with a float dtype converts bits to floats differently under XLA than
    in the TF kernels; the integer bits agree, so the conversion is done here.)
    """
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox")
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (2.0**-24)


def stateless_normal(shape, seed, stddev: float = 1.0):
    """N(0, stddev) float32 by Box-Muller from :func:`stateless_uniform` (both cos and sin used).

    Agrees with and without XLA up to the last bits of log/cos/sin; tails are cut at 5.8 stddev.
    """
    shape = tf.convert_to_tensor(shape, tf.int32)
    count = tf.reduce_prod(shape)
    pairs = (count + 1) // 2
    u = stateless_uniform(tf.stack([2, pairs]), seed)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0])) * stddev
    angle = (2.0 * math.pi) * u[1]
    values = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=0)
    return tf.reshape(values[:count], shape)


def _uniform_scalars(seeds):
    """[B, _NUM_UNIFORMS] U(0, 1), one vector per sample seed."""

    def one(seed):
        return stateless_uniform([_NUM_UNIFORMS], _stream(seed, _STREAM_SCALARS))

    return _map_samples(one, (seeds,), tf.TensorSpec([_NUM_UNIFORMS], tf.float32))


@functools.lru_cache(maxsize=1)
def _normal_quantiles() -> np.ndarray:
    """Phi^-1((i + 0.5) / 2^16), i = 0..65535: the inverse normal CDF at 65536 equiprobable points."""
    from statistics import NormalDist

    count = 2**16
    inverse = NormalDist().inv_cdf
    return np.array([inverse((i + 0.5) / count) for i in range(count)], np.float32)


def table_normal(shape, seed, stddev: float = 1.0):
    """N(0, stddev) pixel noise by inverse-CDF table lookup: 16 Philox bits pick one of 65536 quantiles.

    The distribution is the normal discretised to 65536 equiprobable levels (tails cut at 4.3 stddev).
    Box-Muller needs log/cos/sin per pixel, which XLA's CPU backend computes slowly (it made the noise
    cost 3x all the geometry together); one table gather per pixel costs about as much as sampling
    the image. Integer bits agree with and without XLA, so the noise does too.
    """
    shape = tf.convert_to_tensor(shape, tf.int32)
    count = tf.reduce_prod(shape)
    words = (count + 1) // 2
    bits = tf.random.stateless_uniform([words], seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox")
    halves = tf.concat([tf.bitwise.bitwise_and(bits, 0xFFFF), tf.bitwise.right_shift(bits, 16)], axis=0)
    values = tf.gather(tf.constant(_normal_quantiles()), tf.cast(halves[:count], tf.int32)) * stddev
    return tf.reshape(values, shape)


def _between(u, low, high):
    return low + (high - low) * u
