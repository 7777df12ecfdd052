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
Only stateless ops driven by one explicit seed of shape [2] per sample, split into independent streams, so the
same seed gives the same tile in every placement (see :mod:`~kunet.augment.streams`).

Everything here compiles with XLA (``tf.function(jit_compile=True)``) on CPU: no ``ResizeBicubic``,
``ImageProjectiveTransformV3``, ``py_function`` or ``numpy_function``; the gathers are flat ``tf.gather``.

One module per step, re-exported here: :mod:`~kunet.augment.params` (:class:`AugmentParams`),
:mod:`~kunet.augment.streams` (random numbers), :mod:`~kunet.augment.elastic` (the elastic field),
:mod:`~kunet.augment.geometry` (the coordinate map), :mod:`~kunet.augment.sampling` (mirror folding and
sampling), :mod:`~kunet.augment.gray` (gray values) and :mod:`~kunet.augment.samplers` (the entry points).
"""

from kunet.augment.elastic import (
    KEYS_A,
    cubic_interpolation_matrix,
    elastic_displacement,
    elastic_nodes,
    interpolate_nodes,
    keys_kernel,
)
from kunet.augment.geometry import coordinate_maps, tile_basis
from kunet.augment.gray import gray_value_variation
from kunet.augment.params import AugmentParams
from kunet.augment.samplers import make_batch_sampler, make_host_sampler, sample_tiles
from kunet.augment.sampling import MIRROR_MODE, MIRROR_MODES, fold_coordinates, warp
from kunet.augment.streams import stateless_normal, stateless_uniform, table_normal

__all__ = [
    "AugmentParams",
    "sample_tiles",
    "make_host_sampler",
    "make_batch_sampler",
    "coordinate_maps",
    "warp",
    "gray_value_variation",
    "fold_coordinates",
    "MIRROR_MODES",
    "MIRROR_MODE",
    "tile_basis",
    "elastic_displacement",
    "elastic_nodes",
    "interpolate_nodes",
    "cubic_interpolation_matrix",
    "keys_kernel",
    "KEYS_A",
    "stateless_uniform",
    "stateless_normal",
    "table_normal",
]
