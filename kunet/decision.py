"""The decision rule: class probabilities -> class indices, one rule for NumPy and for TensorFlow.

Two-class nets decide ``p(class 1) >= threshold``, then apply a post-processing step from
:data:`POSTPROCESSING`; other nets take the argmax. ``predict``, ``evaluate``, ``tune`` and validation during
``fit`` decide with :meth:`DecisionRule.classes`, the exported serving graph with
:meth:`DecisionRule.tf_classes`; the NumPy path runs the same TensorFlow post-processing, compiled, so both
give the same masks bit for bit, and the masks that were scored are the masks users get.

Post-processing steps, by name (docs/EXTENDING.md shows how to add one):

* ``none``: the threshold alone;
* ``grow``: the threshold alone (kept for models tuned under this name, when it only changed how the
  second Rand variant formed segments);
* ``watershed``: 1-px cuts through faint gaps between confident interiors (:mod:`kunet.postprocess`), which
  keep one gap in a membrane from merging two cells.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _watershed_cut(foreground, threshold, seed_threshold):
    from kunet.postprocess import tf_watershed_lines

    return tf_watershed_lines(foreground, threshold, seed_threshold)


@dataclass(frozen=True)
class Postprocessing:
    """A post-processing step of two-class decisions.

    Args:
        cut: ``(p(foreground) [H, W] float32, threshold, seed_threshold) -> bool [H, W]`` in TensorFlow ops:
            foreground pixels to turn into background. None: nothing is cut.
        per_pixel: Whether a pixel's class depends on its own probability only (then an image can be decided
            a strip at a time, as streaming prediction does).
    """

    cut: Callable | None = None
    per_pixel: bool = True


POSTPROCESSING: dict[str, Postprocessing] = {
    "none": Postprocessing(),
    "grow": Postprocessing(),
    "watershed": Postprocessing(_watershed_cut, per_pixel=False),
}


@functools.cache
def _compiled(cut: Callable):
    import tensorflow as tf

    scalar, image = tf.TensorSpec([], tf.float32), tf.TensorSpec([None, None], tf.float32)
    return tf.function(cut, input_signature=[image, scalar, scalar])


@dataclass(frozen=True)
class DecisionRule:
    """Threshold and post-processing of a two-class net (other nets: argmax), stored with each model.

    Args:
        threshold: Pixels with ``p(class 1) >= threshold`` are foreground.
        postprocess: A name in :data:`POSTPROCESSING`.
        seed_threshold: For post-processing that grows from confident seeds (never below ``threshold``).
    """

    threshold: float = 0.5
    postprocess: str = "none"
    seed_threshold: float = 0.9

    @classmethod
    def of(cls, settings) -> DecisionRule:
        """The rule of an :class:`~kunet.inference.InferenceSettings` (or anything with its three fields)."""
        return cls(settings.threshold, settings.postprocess, settings.seed_threshold)

    @property
    def step(self) -> Postprocessing:
        if self.postprocess not in POSTPROCESSING:
            raise ValueError(f"postprocess must be one of {sorted(POSTPROCESSING)}, got {self.postprocess!r}")
        return POSTPROCESSING[self.postprocess]

    @property
    def seeds(self) -> float:
        return max(self.seed_threshold, self.threshold)

    def per_pixel(self, num_classes: int) -> bool:
        """Whether each pixel's class depends on its own probabilities only (strips can be decided alone)."""
        return num_classes != 2 or self.step.per_pixel

    def classes(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices, uint8 [H, W], of probabilities [H, W, K]."""
        if probabilities.shape[-1] != 2:
            return np.argmax(probabilities, axis=-1).astype(np.uint8)
        return self.foreground_classes(probabilities[..., 1])

    def foreground_classes(self, foreground: np.ndarray) -> np.ndarray:
        """Class indices (0/1), uint8 [H, W], of a two-class net from p(class 1) [H, W]."""
        mask = foreground >= self.threshold
        if self.step.cut is not None:
            cut = _compiled(self.step.cut)(np.asarray(foreground, np.float32), self.threshold, self.seeds)
            mask &= ~cut.numpy()
        return mask.astype(np.uint8)

    def tf_classes(self, probabilities):
        """Class indices, int32 [H, W], of probabilities [H, W, K] inside a TensorFlow graph."""
        import tensorflow as tf

        if probabilities.shape[-1] != 2:
            return tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        foreground = probabilities[..., 1]
        mask = foreground >= self.threshold
        if self.step.cut is not None:
            mask &= ~self.step.cut(
                foreground, tf.constant(self.threshold, tf.float32), tf.constant(self.seeds, tf.float32)
            )
        return tf.cast(mask, tf.int32)
