"""Gap closing for membrane maps: the seeded watershed behind ``postprocess = "watershed"``.

A thresholded membrane map leaves small gaps where a membrane is faint; one gap merges two cells and
costs far more Rand error than the few pixels it costs in pixel error. ``postprocess = "watershed"``
closes such gaps with a seeded watershed computed by flooding:

1. seeds are the confident cell interiors, p(cell) >= ``seed_threshold``, 4-connected components of at
   least ``min_seed_size`` pixels;
2. the seeds are flooded over the foreground, level by level from ``seed_threshold`` down to the decision
   ``threshold`` (``levels`` steps), so fronts advance through bright interiors first and meet in the
   dim gaps, as in a watershed on the membrane probability;
3. pixels where two different fronts meet become boundary: a 1-px cut through the gap.

Everything else is the plain threshold decision, so pixel error barely moves while merges disappear.
It is written in TensorFlow ops (no OpenCV, no Python loops over pixels) so the very same computation
runs in ``kunet predict`` and inside exported SavedModels. ``"grow"`` and ``"none"`` use the plain
threshold (``grow`` only changes how ``kunet evaluate`` forms segments for the second Rand variant).
"""

from __future__ import annotations

import tensorflow as tf

_NO_LABEL = 2**30  # larger than any seed id


def _neighbours(values, fill):
    """The four 4-neighbours of every pixel of a 2-D tensor (outside the image: ``fill``)."""
    padded = tf.pad(values, [[1, 1], [1, 1]], constant_values=fill)
    return [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]


def label_components(mask):
    """4-connected components of a boolean [H, W] tensor: every pixel gets the largest pixel id of its
    component (ids are 1 + linear index, 0 outside the mask), by propagation until nothing changes."""
    height, width = tf.shape(mask)[0], tf.shape(mask)[1]
    labels = tf.where(mask, tf.reshape(tf.range(1, height * width + 1), [height, width]), 0)

    def spread(labels, _):
        grown = tf.where(mask, tf.reduce_max(tf.stack([labels, *_neighbours(labels, 0)]), 0), 0)
        return grown, tf.reduce_any(grown != labels)

    labels, _ = tf.while_loop(lambda labels, changed: changed, spread, [labels, tf.constant(True)])
    return labels


def tf_gaussian_smooth(image, sigma):
    """A 2-D float32 [H, W] map blurred by a Gaussian of ``sigma`` px (a scalar tensor), borders mirrored.

    Separable, truncated at 3 sigma (and at the image's own size, for mirroring), normalised to sum 1, so a
    constant map stays constant; ``sigma`` may change from call to call without retracing.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    sigma = tf.cast(sigma, tf.float32)
    radius = tf.cast(tf.math.ceil(3.0 * sigma), tf.int32)
    radius = tf.minimum(radius, tf.minimum(tf.shape(image)[0], tf.shape(image)[1]) - 1)
    offsets = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-(offsets**2) / (2.0 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    padded = tf.pad(image, [[radius, radius], [radius, radius]], mode="REFLECT")[None, :, :, None]
    rows = tf.nn.conv2d(padded, tf.reshape(kernel, [-1, 1, 1, 1]), 1, "VALID")
    return tf.nn.conv2d(rows, tf.reshape(kernel, [1, -1, 1, 1]), 1, "VALID")[0, :, :, 0]


def tf_watershed_lines(
    foreground, threshold, seed_threshold, levels: int = 8, min_seed_size: int = 10, interior=None, floor=None
):
    """Boolean [H, W] cut lines between seeds (see the module docstring); ``foreground`` is p(cell) [H, W].

    ``interior`` (default ``foreground``) is the map seeds are taken from and flooded over, level by level from
    ``seed_threshold`` down to ``floor`` (default ``threshold``), always within ``foreground >= threshold``.
    A three-class net passes ``p(cell)`` with floor 0: seeds are confident cell interiors, and the fronts meet
    in the pixels it calls border.
    """
    foreground = tf.convert_to_tensor(foreground, tf.float32)
    threshold = tf.cast(threshold, tf.float32)
    seed_threshold = tf.cast(seed_threshold, tf.float32)
    interior = foreground if interior is None else tf.convert_to_tensor(interior, tf.float32)
    floor = threshold if floor is None else tf.cast(floor, tf.float32)
    region = foreground >= threshold
    seeds = label_components((interior >= seed_threshold) & region)
    sizes = tf.math.unsorted_segment_sum(tf.ones_like(seeds), seeds, tf.size(seeds) + 1)
    labels = tf.where(tf.gather(sizes, seeds) >= min_seed_size, seeds, 0)
    lines = tf.zeros_like(labels, tf.bool)
    for step in range(1, levels + 1):
        level = seed_threshold + (floor - seed_threshold) * (step / levels)
        allowed = (interior >= level) & region

        def flood(labels, lines, _, allowed=allowed):
            around = _neighbours(labels, 0)
            highest = tf.reduce_max(tf.stack(around), 0)
            lowest = tf.reduce_min(tf.stack([tf.where(n > 0, n, _NO_LABEL) for n in around]), 0)
            free = allowed & (labels == 0) & ~lines & (highest > 0)
            grow = free & (lowest == highest)
            meet = free & (lowest != highest)
            return tf.where(grow, highest, labels), lines | meet, tf.reduce_any(free)

        labels, lines, _ = tf.while_loop(
            lambda labels, lines, changed: changed, flood, [labels, lines, tf.constant(True)]
        )
    # Fronts that reached neighbouring pixels in the same step touch without a line: cut the larger id.
    touching = tf.reduce_any(tf.stack([(n > 0) & (n < labels) for n in _neighbours(labels, 0)]), 0)
    return lines | touching
