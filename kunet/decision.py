"""The decision rule: class probabilities -> class indices, one rule for NumPy and for TensorFlow.

Two-class nets decide ``p(class 1) >= threshold``, then apply a post-processing step from
:data:`POSTPROCESSING`; other nets take the argmax, except the three-class nets of instance labels
(background / cell / border, ``[labels] border_width``): they decide foreground as ``1 - p(background) >=
threshold`` and their watershed grows seeds of confident ``cell`` pixels over ``p(cell)``, so fronts meet in
the predicted borders; their decided masks are two-class (0 background, 1 cell) like a two-class net's.
``predict``, ``evaluate``, ``tune`` and validation during ``fit`` decide with :meth:`DecisionRule.classes`,
the exported serving graph with :meth:`DecisionRule.tf_classes`; the NumPy path runs the same TensorFlow
post-processing, compiled, so both give the same masks bit for bit, and the masks that were scored are the
masks users get.

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


def _watershed_cut(foreground, interior, threshold, seed_threshold, floor):
    from kunet.postprocess import tf_watershed_lines

    return tf_watershed_lines(foreground, threshold, seed_threshold, interior=interior, floor=floor)


@dataclass(frozen=True)
class Postprocessing:
    """A post-processing step of two-class decisions.

    Args:
        cut: ``(p(foreground) [H, W] float32, threshold, seed_threshold) -> bool [H, W]`` in TensorFlow ops:
            foreground pixels to turn into background. None: nothing is cut.
        per_pixel: Whether a pixel's class depends on its own probability only (then an image can be decided
            a strip at a time, as streaming prediction does).
        interior_cut: Instead of ``cut``, a step that also reads a second map: ``(p(foreground), p(interior),
            threshold, seed_threshold, floor) -> bool [H, W]``. ``p(interior)`` is ``p(foreground)`` for
            two-class nets and ``p(cell)`` for border nets (blurred if the rule says so); ``floor`` is the lowest
            ``p(interior)`` to grow into (the threshold, or 0 for border nets and blurred maps, which no longer
            bound the foreground).
    """

    cut: Callable | None = None
    per_pixel: bool = True
    interior_cut: Callable | None = None

    @property
    def cuts(self) -> bool:
        """Whether the step cuts anything (either form)."""
        return self.cut is not None or self.interior_cut is not None


POSTPROCESSING: dict[str, Postprocessing] = {
    "none": Postprocessing(),
    "grow": Postprocessing(),
    "watershed": Postprocessing(per_pixel=False, interior_cut=_watershed_cut),
}


@functools.cache
def _compiled(cut: Callable, images: int, scalars: int):
    """``cut`` as a ``tf.function`` taking ``images`` float32 [H, W] maps and then ``scalars`` float32 scalars."""
    import tensorflow as tf

    scalar, image = tf.TensorSpec([], tf.float32), tf.TensorSpec([None, None], tf.float32)
    return tf.function(cut, input_signature=[image] * images + [scalar] * scalars)


def _smooth(interior, sigma):
    from kunet.postprocess import tf_gaussian_smooth

    return tf_gaussian_smooth(interior, sigma)


def _cut(step: Postprocessing, foreground, interior, threshold, seeds, floor, compiled: bool, smoothing=0.0):
    """The pixels ``step`` cuts (a bool tensor), through whichever of its two forms it has; ``smoothing`` > 0
    blurs p(interior) first (Gaussian sigma in px)."""
    if step.interior_cut is not None:
        if smoothing > 0:
            interior = (_compiled(_smooth, 1, 1) if compiled else _smooth)(interior, smoothing)
        cut = _compiled(step.interior_cut, 2, 3) if compiled else step.interior_cut
        return cut(foreground, interior, threshold, seeds, floor)
    cut = _compiled(step.cut, 1, 2) if compiled else step.cut
    return cut(foreground, threshold, seeds)


@dataclass(frozen=True)
class DecisionRule:
    """Threshold and post-processing of a two-class net or a border net (other nets: argmax), stored with
    each model.

    Args:
        threshold: Pixels with ``p(foreground) >= threshold`` are foreground (``p(class 1)`` of a two-class
            net, ``1 - p(background)`` of a border net).
        postprocess: A name in :data:`POSTPROCESSING`.
        seed_threshold: For post-processing that grows from confident seeds (never below ``threshold`` in
            a two-class net; on ``p(cell)`` in a border net).
        border_class: The net's classes are background / cell / border (``[labels] border_width`` > 0).
        smoothing: Gaussian sigma (px) that blurs p(interior) before a watershed takes seeds from it and floods
            it, so texture inside a cell does not break its seed in two (0: no blur).
    """

    threshold: float = 0.5
    postprocess: str = "none"
    seed_threshold: float = 0.9
    border_class: bool = False
    smoothing: float = 0.0

    @classmethod
    def of(cls, settings) -> DecisionRule:
        """The rule of an :class:`~kunet.inference.InferenceSettings` (or anything with its fields)."""
        border = getattr(settings, "label_kind", "") == "instance" and len(getattr(settings, "class_values", ())) == 3
        smoothing = getattr(settings, "seed_smoothing", 0.0)
        return cls(settings.threshold, settings.postprocess, settings.seed_threshold, border, smoothing)

    @property
    def step(self) -> Postprocessing:
        if self.postprocess not in POSTPROCESSING:
            raise ValueError(f"postprocess must be one of {sorted(POSTPROCESSING)}, got {self.postprocess!r}")
        return POSTPROCESSING[self.postprocess]

    @property
    def seeds(self) -> float:
        # A border net's seeds are on p(cell), which is below p(foreground) wherever borders are likely.
        return self.seed_threshold if self.border_class else max(self.seed_threshold, self.threshold)

    @property
    def floor(self) -> float:
        """The lowest p(interior) a watershed floods: the threshold, or 0 where p(interior) is p(cell) or blurred
        (then it no longer bounds the foreground, and every foreground pixel must be reachable)."""
        return 0.0 if self.border_class or self.smoothing > 0 else self.threshold

    def describe(self, num_classes: int) -> str:
        """The rule in words, for export descriptions."""
        if self.decided_classes(num_classes) != 2:
            return "argmax"
        if self.border_class:
            return "1 - p(background) >= threshold (classes background, cell, border)"
        return "p(class 1) >= threshold"

    def decided_classes(self, num_classes: int) -> int:
        """Classes of the decided masks: 2 for two-class and border nets, else the net's."""
        return 2 if self.border_class else num_classes

    def per_pixel(self, num_classes: int) -> bool:
        """Whether each pixel's class depends on its own probabilities only (strips can be decided alone)."""
        return self.decided_classes(num_classes) != 2 or self.step.per_pixel

    def foreground(self, probabilities):
        """p(foreground) [H, W] of probabilities [H, W, K] (NumPy or TensorFlow): a border net's
        ``1 - p(background)``, else the last class's probability (``p(class 1)`` of a two-class net)."""
        return 1.0 - probabilities[..., 0] if self.border_class else probabilities[..., -1]

    def interior(self, probabilities):
        """p(interior) [H, W], what a watershed seeds and floods: a border net's ``p(cell)``, else
        :meth:`foreground`."""
        return probabilities[..., 1] if self.border_class else self.foreground(probabilities)

    def classes(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices, uint8 [H, W], of probabilities [H, W, K]."""
        if self.decided_classes(probabilities.shape[-1]) != 2:
            return np.argmax(probabilities, axis=-1).astype(np.uint8)
        return self.decide_maps(self.foreground(probabilities), self.interior(probabilities))

    def foreground_classes(self, foreground: np.ndarray) -> np.ndarray:
        """Class indices (0/1), uint8 [H, W], of a two-class net from p(class 1) [H, W]."""
        if self.border_class:
            raise ValueError("a border net's decision needs all its probabilities: call classes()")
        return self.decide_maps(foreground, foreground)

    def decide_maps(self, foreground: np.ndarray, interior: np.ndarray) -> np.ndarray:
        """Class indices (0/1), uint8 [H, W], from p(foreground) and p(interior) [H, W] (see ``Postprocessing``)."""
        mask = foreground >= self.threshold
        if self.step.cuts:
            foreground, interior = np.asarray(foreground, np.float32), np.asarray(interior, np.float32)
            cut = _cut(self.step, foreground, interior, self.threshold, self.seeds, self.floor, True, self.smoothing)
            mask &= ~cut.numpy()
        return mask.astype(np.uint8)

    def cut_map(self, probabilities: np.ndarray) -> np.ndarray:
        """p(foreground), float32 [H, W], with the rule's cut lines set to 0, flooded down to p = 0.

        One map that serves both of the ISBI 2012 leaderboard's sweeps: thresholded at 0 it is every pixel but
        the 1-px lines between seeds (thin membranes, what its Rand error rewards); thresholded higher it is
        the plain map cut (what its pixel error rewards). The 2015 leaderboard scored one such map per method
        (:mod:`kunet.metrics.leaderboard`). A rule that cuts nothing returns p(foreground).
        """
        return self.cut_map_from_maps(self.foreground(probabilities), self.interior(probabilities))

    def cut_map_from_maps(self, foreground: np.ndarray, interior: np.ndarray) -> np.ndarray:
        """:meth:`cut_map` from p(foreground) and p(interior) [H, W] (as :meth:`decide_maps` takes them)."""
        foreground = np.asarray(foreground, np.float32)
        if not self.step.cuts:
            return foreground
        interior = np.asarray(interior, np.float32)
        cut = _cut(self.step, foreground, interior, 0.0, self.seed_threshold, 0.0, True, self.smoothing)
        return np.where(cut.numpy(), np.float32(0.0), foreground)

    def tf_classes(self, probabilities):
        """Class indices, int32 [H, W], of probabilities [H, W, K] inside a TensorFlow graph."""
        import tensorflow as tf

        if self.decided_classes(probabilities.shape[-1]) != 2:
            return tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        foreground = self.foreground(probabilities)
        mask = foreground >= self.threshold
        if self.step.cuts:
            interior = self.interior(probabilities)
            constants = [tf.constant(value, tf.float32) for value in (self.threshold, self.seeds, self.floor)]
            mask &= ~_cut(self.step, foreground, interior, *constants, False, self.smoothing)
        return tf.cast(mask, tf.int32)
