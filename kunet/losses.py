"""The paper's pixel-weighted softmax cross-entropy, and an optional soft Dice term.

Paper eq. 1: E = sum_x w(x) * log(p_{l(x)}(x)); as a loss to minimise,

    L = (1 / N) * sum_x w(x) * (-log p_{l(x)}(x)),

N = the number of output pixels in the (global) batch. Dividing by N rather than by sum(w) keeps the
loss scale independent of how many border pixels a tile happens to contain, so the learning rate means
the same thing for every tile. Pixels with w(x) = 0 (ignore regions) contribute nothing. The cross-entropy
is computed from logits (log-softmax, numerically stable) in float32 even under mixed precision.
"""

from __future__ import annotations

import tensorflow as tf


def pixel_cross_entropy(labels, logits):
    """-log p_{l(x)}(x) per pixel: labels [B, H, W] int, logits [B, H, W, K] -> [B, H, W] float32."""
    logits = tf.cast(logits, tf.float32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def weighted_cross_entropy_sum(labels, logits, weights):
    """sum_x w(x) * -log p_{l(x)}(x) over a batch; divide by the global pixel count to get L."""
    return tf.reduce_sum(tf.cast(weights, tf.float32) * pixel_cross_entropy(labels, logits))


def soft_dice_loss(labels, logits, weights, num_classes: int, epsilon: float = 1.0):
    """1 - mean soft Dice over the foreground classes (1..K-1); pixels with weight 0 are ignored.

    Dice_k = (2 * sum p_k * y_k + eps) / (sum p_k + sum y_k + eps), over all pixels of the batch.
    """
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    valid = tf.cast(tf.cast(weights, tf.float32) > 0, tf.float32)[..., None]
    probabilities, one_hot = probabilities * valid, one_hot * valid
    intersection = tf.reduce_sum(probabilities * one_hot, axis=[0, 1, 2])
    totals = tf.reduce_sum(probabilities, axis=[0, 1, 2]) + tf.reduce_sum(one_hot, axis=[0, 1, 2])
    dice = (2.0 * intersection + epsilon) / (totals + epsilon)
    return 1.0 - tf.reduce_mean(dice[1:])


def segmentation_loss(
    labels, logits, weights, num_classes: int, global_pixels, kind: str = "weighted_ce", dice_weight: float = 1.0
):
    """The training loss of one replica's batch, scaled so summing over replicas gives the global loss.

    Args:
        labels: [B, H, W] class indices.
        logits: [B, H, W, K].
        weights: [B, H, W] weight map (paper eq. 2); 0 marks ignored pixels.
        num_classes: K.
        global_pixels: Output pixels in the global batch (B_global * H * W), the N of the module docstring.
        kind: ``"weighted_ce"`` or ``"weighted_ce_dice"``.
        dice_weight: Factor of the Dice term.

    Example:
        >>> loss = segmentation_loss(y, model(x, training=True), w, 2, global_pixels=tf.size(y, tf.float32))
    """
    loss = weighted_cross_entropy_sum(labels, logits, weights) / tf.cast(global_pixels, tf.float32)
    if kind == "weighted_ce_dice":
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss += dice_weight * soft_dice_loss(labels, logits, weights, num_classes) / replicas
    elif kind != "weighted_ce":
        raise ValueError(f"unknown loss {kind!r}")
    return loss
