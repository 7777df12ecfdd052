"""The paper's data augmentation as pure TensorFlow ops: one coordinate map per tile, sampled once.

Training samples tiles for the overlap-tile strategy of a valid-padding U-Net: an *input* tile of
``input_tile`` pixels whose context beyond the image border is mirror-extrapolated, and the label and weight
map cropped at the matching centre to ``output_tile`` pixels (572 -> 388 for the paper's net). Every geometric
step is composed into ONE map from tile pixel to source image coordinate,

    source(p) = origin + c + A (p - c) + d(p),        c = (input_tile - 1) / 2 (the tile centre),

computed per axis as one small bilinear form ``basis @ G @ basis.T`` (:func:`tile_basis`) plus the origin,

* ``origin``: integer tile placement (``shift``: the tile centre is uniform over the image, otherwise the
  image centre; with probability ``foreground_bias`` it is a uniformly chosen pixel whose class is > 0);
* ``A = s R(theta) F``: rotation by theta ~ U(-rotation_degrees, +rotation_degrees), isotropic scale
  s ~ U(1 - scale_range, 1 + scale_range) and one of the 8 dihedral symmetries F (``flip``: vertical flip,
  horizontal flip and transpose, each with probability 1/2), all about the tile centre (s > 1 takes in
  more of the image: one tile pixel step covers s source pixels);
* ``d``: the paper's elastic deformation (see :func:`elastic_displacement`),

then folded back into the image by mirroring (:func:`fold_coordinates`) and sampled once: image and weight
map bilinearly, the label by nearest neighbour, all three through the same map (label and weight use its
central ``output_tile`` crop). Gray-value variation (:func:`gray_value_variation`) follows on the image tile.

Conventions
-----------
* Coordinates are (y, x) = (row, column) in pixels with pixel centres at integers; maps are
  ``[B, T, T, 2]`` float32 with ``[..., 0] = y`` and ``[..., 1] = x``.
* Mirror mode ``"reflect"`` (:data:`MIRROR_MODE`): the mirror axis is the centre of the edge pixel, which is
  not repeated, exactly like ``np.pad(mode="reflect")``: ``... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...``. Folding
  is periodic (period 2(n - 1)), so coordinates any number of image sizes outside fold back correctly. The
  folded continuous coordinate stays in [0, n - 1]; the bilinear interpolant of the mirrored image is
  therefore continuous across the mirror axes. ``"symmetric"`` (``np.pad(mode="symmetric")``, edge pixel
  repeated, period 2n) is available through the ``mirror`` argument.
* The true size of each image inside a zero-padded batch (``image_sizes``) is what folding uses; neighbour
  indices are clamped into the true image, so the padding is never read.
* Bilinear sampling is written (1 - f) a + f b, exact at f in {0, 1}: with identity geometry and no
  gray-value change the tile equals the input bit for bit.
* Identity geometry (no rotation, scale, flip or elastic deformation) maps tile pixels to integer source
  coordinates: the tile origin is rounded to whole pixels, so a pure shift never blurs.

Randomness
----------
Only stateless ops (``tf.random.stateless_*``, Philox), driven by one explicit seed of shape [2] per sample.
Each sample's seed is split into independent streams (scalar parameters, elastic nodes, pixel noise,
foreground choice), so the same seed gives the same tile in every placement (per-sample inside
``Dataset.map`` with any parallelism, or batched on the device; batched == per-sample) and switching one
augmentation on or off does not change the random numbers of the others. Floats are made here from the
Philox integer bits (:func:`stateless_uniform`, :func:`stateless_normal`), which XLA and the TF kernels
produce identically; TF's own float conversion differs between the two, so a seed would otherwise give
another tile with ``jit_compile=True`` than without.

Everything here compiles with XLA (``tf.function(jit_compile=True)``) on CPU: no ``ResizeBicubic``,
``ImageProjectiveTransformV3``, ``py_function`` or ``numpy_function``; the gathers are flat ``tf.gather``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

MIRROR_MODES = ("reflect", "symmetric")
MIRROR_MODE = "reflect"  # the mode sample_tiles uses unless told otherwise
KEYS_A = -0.5  # Keys (1981) cubic convolution parameter: the "bicubic" of most image libraries

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


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """The augmentation's parameters; mirrors :class:`kunet.config.AugmentConfig` minus ``on``.

    ``elastic_points`` x ``elastic_points`` grid nodes over the input tile with N(0, ``elastic_sigma``)
    displacements (pixels); ``rotation_degrees``: uniform angle in +-that; ``shift``: tile centre uniform
    over the image (else the image centre); ``flip``: the 8 dihedral symmetries; ``scale_range``: isotropic
    scale in [1 - r, 1 + r]; gray values in [0, 1] intensity space: ``brightness`` shift U(-b, b),
    ``contrast`` factor U(1 - c, 1 + c) about the tile mean, ``gamma`` exponent exp(U(-g, g)) (brightness
    and contrast saturate at 0 and 1 before it), additive Gaussian noise of std ``noise_std`` (not clipped);
    ``foreground_bias``: probability that the tile is centred on a random pixel of class > 0. Zero disables
    each of them.
    """

    elastic_points: int = 3
    elastic_sigma: float = 10.0
    rotation_degrees: float = 180.0
    shift: bool = True
    flip: bool = True
    scale_range: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    noise_std: float = 0.02
    foreground_bias: float = 0.0

    def __post_init__(self):
        if self.elastic_sigma < 0:
            raise ValueError(f"elastic_sigma must be >= 0, got {self.elastic_sigma}")
        if self.elastic_sigma > 0 and self.elastic_points < 2:
            raise ValueError(f"elastic_points must be >= 2, got {self.elastic_points}")
        if not 0.0 <= self.scale_range < 1.0:
            raise ValueError(f"scale_range must be in [0, 1), got {self.scale_range}")
        if not 0.0 <= self.contrast <= 1.0:
            raise ValueError(f"contrast must be in [0, 1], got {self.contrast}")
        if not 0.0 <= self.foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {self.foreground_bias}")
        for name in ("rotation_degrees", "brightness", "gamma", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, config) -> AugmentParams:
        """From a :class:`kunet.config.AugmentConfig` (or anything with its fields; ``on`` is ignored)."""
        config = getattr(config, "augment", config)  # a whole PipelineConfig works too
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def disabled(cls) -> AugmentParams:
        """Identity geometry, no gray-value change, the tile centred on the image."""
        return cls(
            elastic_sigma=0.0,
            rotation_degrees=0.0,
            shift=False,
            flip=False,
            scale_range=0.0,
            brightness=0.0,
            contrast=0.0,
            gamma=0.0,
            noise_std=0.0,
            foreground_bias=0.0,
        )

    @property
    def has_affine(self) -> bool:
        return self.rotation_degrees > 0 or self.scale_range > 0 or self.flip

    @property
    def has_elastic(self) -> bool:
        return self.elastic_sigma > 0

    @property
    def has_gray_values(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.gamma > 0 or self.noise_std > 0


# --------------------------------------------------------------------------------------------------------
# Cubic interpolation of the coarse grid (NumPy, at trace time)


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
    field = _interpolate_channels_first(channels_first, matrix)  # [B, 2, T, T]
    return tf.transpose(field, [0, 2, 3, 1])


def _interpolate_channels_first(nodes, matrix):
    """[B, 2, P, P] -> [B, 2, T, T] as two small matmuls: M @ G @ M^T."""
    rows = tf.einsum("bckl,jl->bckj", nodes, matrix)  # [B, 2, P, T]
    return tf.einsum("ik,bckj->bcij", matrix, rows)  # [B, 2, T, T]


# --------------------------------------------------------------------------------------------------------
# Per-sample stateless random numbers


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


def _noise(seeds, shape, std: float):
    """[B, *shape] Gaussian pixel noise, one independent stream per sample."""

    def one(seed):
        return table_normal(shape, _stream(seed, _STREAM_NOISE), stddev=std)

    return _map_samples(one, (seeds,), tf.TensorSpec(None, tf.float32))


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


def _between(u, low, high):
    return low + (high - low) * u


# --------------------------------------------------------------------------------------------------------
# The coordinate map


def _check_tiles(input_tile: int, output_tile: int | None) -> None:
    if int(input_tile) < 1:
        raise ValueError(f"input_tile must be >= 1, got {input_tile}")
    if output_tile is not None and not 1 <= int(output_tile) <= int(input_tile):
        raise ValueError(f"output_tile must be in [1, input_tile={input_tile}], got {output_tile}")


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
    rows = tf.einsum("bckl,jl->bckj", coefficients, basis)  # [B, 2, K, T]
    relative = tf.einsum("ik,bckj->bcij", basis, rows)  # [B, 2, T, T]
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


# --------------------------------------------------------------------------------------------------------
# Mirror folding and sampling


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


# --------------------------------------------------------------------------------------------------------
# Gray values


def _gray(tiles, uniforms, seeds, params: AugmentParams):
    if params.brightness > 0 or params.contrast > 0 or params.gamma > 0:
        if params.brightness > 0:
            shift = _between(uniforms[:, _U_BRIGHTNESS], -params.brightness, params.brightness)
            tiles = tiles + shift[:, None, None, None]
        if params.contrast > 0:
            factor = _between(uniforms[:, _U_CONTRAST], 1.0 - params.contrast, 1.0 + params.contrast)
            mean = tf.reduce_mean(tiles, axis=[1, 2, 3], keepdims=True)
            tiles = (tiles - mean) * factor[:, None, None, None] + mean
        tiles = tf.clip_by_value(tiles, 0.0, 1.0)
        if params.gamma > 0:
            gamma = tf.exp(_between(uniforms[:, _U_GAMMA], -params.gamma, params.gamma))
            # exp(g log v) (0 stays 0) is ~4x faster than tf.pow under XLA on CPU.
            tiles = tf.exp(gamma[:, None, None, None] * tf.math.log(tiles))
    if params.noise_std > 0:
        tiles = tf.ensure_shape(tiles + _noise(seeds, tf.shape(tiles)[1:], params.noise_std), tiles.shape)
    return tiles


def gray_value_variation(tiles, seeds, params: AugmentParams):
    """Brightness, contrast (about the tile mean), gamma and Gaussian noise on [B, T, T, C] tiles in [0, 1].

    Same random numbers as :func:`sample_tiles` draws for the same seeds.
    """
    seeds = _seeds(seeds)
    tiles = tf.convert_to_tensor(tiles, tf.float32)
    if not params.has_gray_values:
        return tiles
    return _gray(tiles, _uniform_scalars(seeds), seeds, params)


# --------------------------------------------------------------------------------------------------------
# The public entry points


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
