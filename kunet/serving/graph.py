"""The serving graph of an export, and the registry of the signatures built from it.

:class:`ServingGraph` wraps a kunet U-Net with what a client must not have to do: scaling and normalisation
of raw pixels, mirror padding, overlap-tile prediction and stitching, the stored decision rule and the
dataset's label values, and the request bounds (:class:`~kunet.serving.signatures.ServingLimits`), checked
before anything large is allocated. A PNG's declared size is read from its header before it is decoded.

:data:`SIGNATURES` lists the exported signatures. One entry is all a new signature needs: ``kunet export``
writes an endpoint for each, describes each in ``assets.extra/kunet.json`` and the export README, writes a
warm-up request for each, and ``kunet export --check`` replays them (docs/EXTENDING.md shows an example).
String tensors end in ``_bytes`` (see :mod:`kunet.serving.signatures`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kunet.decision import DecisionRule
from kunet.inference import InferenceSettings, mirrored_probabilities, tiled_probabilities
from kunet.preprocess import dtype_shift, tf_normalize, tf_raw_to_unit, to_unit_range
from kunet.serving import signatures as names
from kunet.serving.signatures import ServingLimits
from kunet.tiling import TilePlan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_declared_size(encoded):
    """(is_png, height, width) from a PNG's IHDR chunk, read without decoding the image.

    A PNG starts with an 8-byte signature and the IHDR chunk (4-byte length, ``IHDR``, then width and
    height as big-endian 32-bit integers at bytes 16-23). Padding the string first keeps short or empty
    inputs from failing inside ``substr`` with a message that does not say what is wrong.
    """
    padded = tf.strings.join([encoded, tf.constant(b"\0" * 24)])
    is_png = tf.logical_and(
        tf.equal(tf.strings.substr(padded, 0, 8), PNG_MAGIC), tf.equal(tf.strings.substr(padded, 12, 4), b"IHDR")
    )
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
    place = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    width, height = tf.reduce_sum(header[:4] * place), tf.reduce_sum(header[4:] * place)
    return is_png, height, width


def _checked(tensor, checks: list):
    """``tensor``, available only once every assertion in ``checks`` has passed."""
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


class ServingGraph:
    """What every signature is built from.

    Args:
        model: The kunet U-Net (valid padding).
        settings: Normalisation, decision rule and label values (the model's metadata).
        plan: The tiling inside the graph (a fixed tile; the stride it implies).
        batch_size: Tiles per model call.
        limits: The request bounds.
    """

    def __init__(self, model, settings: InferenceSettings, plan: TilePlan, batch_size: int, limits: ServingLimits):
        self.model, self.settings, self.plan, self.batch_size, self.limits = model, settings, plan, batch_size, limits
        self.channels = model.input_channels
        self.rule = DecisionRule.of(settings)
        self.class_values = tf.constant(list(settings.class_values), tf.int32)
        # PNG holds unsigned integers only: models trained on int16 or float images read 16-bit PNGs, int16
        # ones as the shifted values that kunet's uint16 <-> int16 rule makes of them (kunet.preprocess).
        png_dtype = settings.image_dtype if settings.image_dtype in ("uint8", "uint16") else "uint16"
        self.png_dtype = tf.as_dtype(png_dtype)
        self.mask_dtype = tf.uint16 if max(settings.class_values) > 255 else tf.uint8

    def _probabilities(self, prepared):
        plan = self.plan
        return tiled_probabilities(
            lambda tiles: self.model(tiles, training=False), prepared, plan.input_hw, plan.stride_hw,
            (plan.border, plan.border), batch_size=self.batch_size,
        )  # fmt: skip

    def _one_image(self, image):
        unit = tf_raw_to_unit(image, self.settings.image_dtype)
        prepared = tf_normalize(unit[None], self.settings.normalize, settings=self.settings)[0]
        if self.settings.test_time_mirroring:
            return mirrored_probabilities(self._probabilities, prepared)
        return self._probabilities(prepared)

    def segment(self, images):
        """Raw images float32 [B, H, W, C] -> (probabilities [B, H, W, K], classes [B, H, W], labels [B, H, W])."""
        images = _checked(images, self._image_checks(images))
        probabilities = tf.map_fn(self._one_image, images, fn_output_signature=tf.float32, parallel_iterations=1)
        classes = tf.map_fn(self.rule.tf_classes, probabilities, fn_output_signature=tf.int32, parallel_iterations=1)
        return probabilities, classes, tf.gather(self.class_values, classes)

    def decode_png(self, encoded):
        """One PNG file -> its pixels float32 [H, W, C], after checking it is a PNG within the bounds."""
        encoded = _checked(encoded, self._png_checks(encoded))
        pixels = tf.cast(tf.io.decode_png(encoded, channels=self.channels, dtype=self.png_dtype), tf.float32)
        return pixels - dtype_shift(self.settings.image_dtype)

    def encode_mask(self, labels):
        """Label values [H, W] -> a PNG file (16-bit when the values need it)."""
        return tf.io.encode_png(tf.cast(labels[..., None], self.mask_dtype))

    def count_checked(self, strings, name: str):
        """A batch of string inputs, refused beyond ``max_batch``."""
        limit = tf.constant(self.limits.max_batch, tf.int64)
        message = f"{name}: more images in one request than this export accepts (max_batch)"
        return _checked(strings, [tf.debugging.assert_less_equal(tf.size(strings, out_type=tf.int64), limit,
                                                                 message=message)])  # fmt: skip

    def _image_checks(self, images) -> list:
        shape, limits = tf.shape(images, out_type=tf.int64), self.limits
        return [
            tf.debugging.assert_less_equal(
                shape[0], tf.constant(limits.max_batch, tf.int64),
                message=f"{names.IMAGES}: more images in one request than this export accepts (max_batch)",
            ),
            tf.debugging.assert_less_equal(
                shape[1] * shape[2], tf.constant(limits.max_pixels, tf.int64),
                message=f"{names.IMAGES}: image height x width exceeds this export's max_pixels",
            ),
            tf.debugging.assert_positive(shape[1] * shape[2], message=f"{names.IMAGES}: empty image (0 pixels)"),
            tf.debugging.Assert(
                tf.reduce_all(tf.math.is_finite(images)), [f"{names.IMAGES}: NaN or infinite pixel values"]
            ),
        ]  # fmt: skip

    def _png_checks(self, encoded) -> list:
        is_png, height, width = png_declared_size(encoded)
        return [
            tf.debugging.Assert(is_png, [f"{names.PNG_INPUT}: not a PNG file (no PNG signature and IHDR header)"]),
            tf.debugging.Assert(
                height * width <= self.limits.max_pixels,
                [f"{names.PNG_INPUT}: the PNG declares", height, "x", width,
                 f"pixels; this export accepts at most {self.limits.max_pixels} pixels per image (max_pixels)"],
            ),
        ]  # fmt: skip


# --- the signatures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One exported signature.

    Args:
        name: The signature key.
        inputs: Input tensor name -> description (``kunet.json``, the README).
        outputs: Output tensor name -> description.
        build: ``ServingGraph -> tf.function`` with an input signature naming ``inputs``.
        warmup: A raw sample image [H, W, C] (the model's image dtype) -> the inputs of one request (arrays),
            written to the warm-up file and replayed by ``kunet export --check``.
    """

    name: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    build: Callable[[ServingGraph], Callable]
    warmup: Callable[[np.ndarray], dict[str, np.ndarray]]

    def describe(self) -> dict:
        return {"inputs": dict(self.inputs), "outputs": dict(self.outputs)}


def _pixels(graph: ServingGraph):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, graph.channels], tf.float32, name=names.IMAGES)])
    def serving_default(images):
        probabilities, classes, labels = graph.segment(images)
        return {names.PROBABILITIES: probabilities, names.LABELS: labels, names.CLASSES: classes}

    return serving_default


def _png(graph: ServingGraph):
    def one(encoded):
        _, _, labels = graph.segment(graph.decode_png(encoded)[None])
        return graph.encode_mask(labels[0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.PNG_INPUT)])
    def segment_png(png_bytes):
        png_bytes = graph.count_checked(png_bytes, names.PNG_INPUT)
        return {names.MASK_PNG_OUTPUT: tf.map_fn(one, png_bytes, fn_output_signature=tf.string, parallel_iterations=1)}

    return segment_png


def _png_file(image: np.ndarray) -> bytes:
    """A PNG of ``image`` (warm-up requests): int16 and float images as 16-bit PNG of their [0, 1] values."""
    if image.dtype not in (np.uint8, np.uint16):
        image = np.round(np.clip(to_unit_range(image), 0, 1) * 65535).astype(np.uint16)
    return tf.io.encode_png(tf.constant(image)).numpy()


SIGNATURES: dict[str, Signature] = {
    names.PIXELS_SIGNATURE: Signature(
        names.PIXELS_SIGNATURE,
        {names.IMAGES: "float32 [B, H, W, C]: raw pixel values as stored in the image files, any H and W"},
        {
            names.PROBABILITIES: "float32 [B, H, W, K]: class probabilities",
            names.LABELS: "int32 [B, H, W]: the mask in the dataset's own label values",
            names.CLASSES: "int32 [B, H, W]: class indices",
        },
        _pixels,
        lambda image: {names.IMAGES: image[None].astype(np.float32)},
    ),
    names.PNG_SIGNATURE: Signature(
        names.PNG_SIGNATURE,
        {names.PNG_INPUT: 'string [B]: PNG files (REST: {"b64": ...})'},
        {names.MASK_PNG_OUTPUT: 'string [B]: the masks as PNG files in the label values (REST: {"b64": ...})'},
        _png,
        lambda image: {names.PNG_INPUT: np.array([_png_file(image)], dtype=object)},
    ),
}
