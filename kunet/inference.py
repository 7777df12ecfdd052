"""Overlap-tile prediction (paper Fig. 2) for images of any size, seamless by construction.

The image is mirror-extended by the net's border (92 px per side for the paper's net) and cut into
input tiles whose outputs tile the image. Two details make tiling invisible:

* Tiles advance by a multiple of 2^depth (16). Max-pooling then sees every tile on the same pooling grid
  as a single pass over the whole mirror-extended image, so the stitched result *equals* that single
  pass (to float tolerance). A stride of the full output size (388 = 4 + 16k) would shift the pooling
  grid from tile to tile and leave faint seams.
* Mirror extension is coordinate folding (``np.pad(mode="reflect")`` at any distance), so images smaller
  than the border still extend correctly where ``tf.pad(REFLECT)`` would fail.

The tile size is chosen per image: the valid tile (height and width separately) that needs the fewest
FLOPs for the whole image within a memory budget. A 512x512 image takes one 700x700 tile (0.55 TFLOP)
instead of four 572x572 tiles (1.34 TFLOP). The same TensorFlow function serves ``kunet predict``,
validation during training and the exported SavedModel, where it runs inside the serving graph.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kunet.decision import DecisionRule
from kunet.onednn import weights_assumed_frozen
from kunet.preprocess import dtype_max, normalization, normalize, raw_to_unit
from kunet.tiling import TilePlan, TilingOptions, plan_tiles


def fold_indices(start, count, size):
    """Indices start..start+count-1 mirrored into [0, size) at any distance (np.pad mode="reflect")."""
    positions = tf.range(count, dtype=tf.int32) + start
    if isinstance(size, int) and size == 1:
        return tf.zeros_like(positions)
    period = 2 * (size - 1)
    folded = tf.math.floormod(positions, tf.maximum(period, 1))
    folded = tf.where(folded >= size, period - folded, folded)
    return tf.where(tf.equal(size, 1), tf.zeros_like(folded), folded)


def mirror_extend(image, top: int, left: int, height, width):
    """The window [top, top + height) x [left, left + width) of the mirror-extended image [H, W, C] (or of
    each image of a batch [N, H, W, C])."""
    axis = len(image.shape) - 3  # 1 for a batch
    shape = tf.shape(image)
    rows = fold_indices(top, height, shape[axis])
    cols = fold_indices(left, width, shape[axis + 1])
    return tf.gather(tf.gather(image, rows, axis=axis), cols, axis=axis + 1)


def tiled_probabilities(model_fn, image, input_hw, stride_hw, border_hw, out_hw=None, batch_size: int = 1):
    """Class probabilities of a normalised image [H, W, C] by overlap-tile prediction.

    Output pixel (y, x) is predicted from input tiles whose top-left corner sits at
    (y - border_y, x - border_x) in mirror-extended image coordinates; tiles advance by ``stride_hw``.

    Args:
        model_fn: Maps tiles [n, th, tw, C] to logits [n, th - 2*border, tw - 2*border, K].
        image: Normalised float32 [H, W, C]; H and W may be dynamic (graph mode).
        input_hw: Input tile size (Python ints, valid for the net).
        stride_hw: Tile stride, a multiple of 2^depth (see module docstring).
        border_hw: Context rows/columns in front of the first output pixel; (0, b) for a strip that
            already carries its vertical context.
        out_hw: Output size; defaults to the image's (H, W).
        batch_size: Tiles per model call.

    Returns:
        float32 [out_h, out_w, K].
    """
    return tiled_probabilities_batch(model_fn, image[None], input_hw, stride_hw, border_hw, out_hw, batch_size)[0]


def tiled_probabilities_batch(model_fn, images, input_hw, stride_hw, border_hw, out_hw=None, batch_size=1):
    """:func:`tiled_probabilities` of N images of one size [N, H, W, C] -> [N, out_h, out_w, K].

    The tiles of all N images are cut alike and go through the net together, ``batch_size`` tiles per
    call (the image's own tiles first, in row-major order): with N = 1 the calls are exactly those of
    :func:`tiled_probabilities`.
    """
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    out_h, out_w = (height, width) if out_hw is None else out_hw
    (tile_h, tile_w), (stride_h, stride_w) = input_hw, stride_hw
    tiles_y = tf.maximum(1, (out_h + stride_h - 1) // stride_h)
    tiles_x = tf.maximum(1, (out_w + stride_w - 1) // stride_w)
    extended = mirror_extend(
        images, -border_hw[0], -border_hw[1], (tiles_y - 1) * stride_h + tile_h, (tiles_x - 1) * stride_w + tile_w
    )
    row_index = (tf.range(tiles_y) * stride_h)[:, None] + tf.range(tile_h)[None, :]
    col_index = (tf.range(tiles_x) * stride_w)[:, None] + tf.range(tile_w)[None, :]
    tiles = tf.gather(tf.gather(extended, row_index, axis=1), col_index, axis=3)  # [N, ty, th, tx, tw, C]
    images_n, channels = tf.shape(images)[0], tf.shape(images)[3]
    tiles = tf.reshape(tf.transpose(tiles, [0, 1, 3, 2, 4, 5]), [-1, tile_h, tile_w, channels])

    count = images_n * tiles_y * tiles_x
    chunks = (count + batch_size - 1) // batch_size
    filler = tf.zeros([chunks * batch_size - count, tile_h, tile_w, channels], tiles.dtype)
    batches = tf.reshape(tf.concat([tiles, filler], 0), [chunks, batch_size, tile_h, tile_w, channels])

    def run(batch):
        return tf.nn.softmax(tf.cast(model_fn(batch), tf.float32), axis=-1)

    probabilities = tf.map_fn(run, batches, fn_output_signature=tf.float32, parallel_iterations=1)
    shape = tf.shape(probabilities)
    classes = shape[4]
    probabilities = tf.reshape(probabilities, [chunks * batch_size, shape[2], shape[3], classes])[:count]
    # Keep `stride` pixels of each tile's output (a tile yields 4 + 16k; the stride is 16k).
    probabilities = probabilities[:, :stride_h, :stride_w, :]
    probabilities = tf.reshape(probabilities, [images_n, tiles_y, tiles_x, stride_h, stride_w, classes])
    probabilities = tf.reshape(
        tf.transpose(probabilities, [0, 1, 3, 2, 4, 5]), [images_n, tiles_y * stride_h, tiles_x * stride_w, classes]
    )
    return probabilities[:, :out_h, :out_w, :]


def mirrored_probabilities(predict, image):
    """Test-time mirroring: mean of the predictions for the four flips of the image (flipped back); an
    image [H, W, C] or a batch of them [N, H, W, C].

    The flips run one after another in a loop with a single call of ``predict``: four calls would put four
    copies of the net into the graph (four times the graph optimisation on the first call, and with
    constant weights four copies of every filter), and TensorFlow could run them side by side, each with
    its own activations.
    """
    rows = len(image.shape) - 3
    cols = rows + 1

    def flip(values, flip_index):  # flip_index 0..3: bit 0 flips rows, bit 1 columns
        values = tf.cond(flip_index % 2 == 1, lambda: tf.reverse(values, [rows]), lambda: values)
        return tf.cond(flip_index // 2 == 1, lambda: tf.reverse(values, [cols]), lambda: values)

    prediction_shapes = []

    def add_flip(flip_index, total):
        prediction = predict(flip(image, flip_index))
        prediction_shapes.append(prediction.shape)
        return flip_index + 1, total + flip(prediction, flip_index)

    # The sum starts as a scalar 0 and takes the prediction's shape on the first pass.
    _, total = tf.while_loop(
        lambda flip_index, _: flip_index < 4,
        add_flip,
        [tf.constant(0), tf.constant(0.0)],
        shape_invariants=[tf.TensorShape([]), tf.TensorShape([None] * (rows + 3))],
        parallel_iterations=1,
    )
    # The loop forgets the static shape (the class count, which decision rules in graphs read); give it back.
    total.set_shape(prediction_shapes[-1])
    return total / 4.0


@dataclass
class InferenceSettings:
    """What turns raw pixels into a mask: stored in the model's metadata and in exports."""

    normalize: str = "standardize"
    percentile_low: float = 1.0
    percentile_high: float = 99.8
    class_values: tuple[int, ...] = (0, 255)
    class_names: tuple[str, ...] = ("background", "foreground")
    threshold: float = 0.5
    postprocess: str = "none"
    seed_threshold: float = 0.9
    seed_smoothing: float = 0.0
    test_time_mirroring: bool = False
    min_object_size: int = 0
    label_kind: str = "binary"
    image_dtype: str = "uint8"
    typical_size: tuple[int, int] = (512, 512)

    @classmethod
    def from_metadata(cls, metadata: dict) -> InferenceSettings:
        known = {k: v for k, v in (metadata or {}).items() if k in cls.__dataclass_fields__}
        for key in ("class_values", "class_names", "typical_size"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def to_metadata(self) -> dict:
        return {
            "normalize": self.normalize,
            "percentile_low": self.percentile_low,
            "percentile_high": self.percentile_high,
            "class_values": list(self.class_values),
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "postprocess": self.postprocess,
            "seed_threshold": self.seed_threshold,
            "seed_smoothing": self.seed_smoothing,
            "test_time_mirroring": self.test_time_mirroring,
            "min_object_size": self.min_object_size,
            "label_kind": self.label_kind,
            "image_dtype": self.image_dtype,
            "typical_size": list(self.typical_size),
        }


def _constant_weights_call(model):
    """A ``tf.function`` computing ``model(tiles)`` with today's filters as graph constants.

    The filters must sit in the graph that calls the convolutions (not be captured from an outer one): only
    then does TensorFlow mark a filter constant and let oneDNN cache its reordered copy. Biases and other
    vectors are eager tensors the function captures (TensorFlow embeds the small ones itself): made with
    ``tf.constant`` inside the function they left oneDNN's convolutions without their fused bias and ReLU
    (``ONEDNN_VERBOSE``: ``bia:undef``, tested), for a reason not found. One shared function keeps a single
    copy of the weights however often the tiling code calls the net.
    """

    def snapshot(variables):
        # Kernels (rank > 1) become constants when traced; vectors are captured now, as eager tensors.
        values = [variable.numpy() for variable in variables]
        return [value if value.ndim > 1 else tf.constant(value) for value in values]

    trainable, non_trainable = snapshot(model.trainable_variables), snapshot(model.non_trainable_variables)

    def in_graph(values):
        return [tf.constant(value) if isinstance(value, np.ndarray) else value for value in values]

    @tf.function(reduce_retracing=True)
    def call(tiles):
        logits, _ = model.stateless_call(in_graph(trainable), in_graph(non_trainable), tiles, training=False)
        return logits

    return call


class _FirstCallAlone:
    """A ``tf.function`` whose first call runs alone: threads calling it meanwhile wait, then run it compiled.

    Why: ``kunet predict`` predicts two images at once, and two concurrent first calls each optimise the graph.
    With constant weights (a graph holding every filter) that made a 6-image float32 job about 2 s slower than
    with one image at a time (``--concurrency 0``). Later calls run concurrently as before.
    """

    def __init__(self, function):
        self.function = function
        self._first_call = threading.Lock()
        self._compiled = False

    def __call__(self, *args):
        if not self._compiled:
            with self._first_call:
                if not self._compiled:
                    result = self.function(*args)
                    self._compiled = True
                    return result
        return self.function(*args)

    def __getattr__(self, name):  # get_concrete_function and the rest of tf.function's interface
        return getattr(self.function, name)


def constant_weights_pay_off(precision: str, test_time_mirroring: bool, images: int) -> bool:
    """Whether :class:`Predictor`'s ``constant_weights`` saves time over a job of ``images`` images of one size.

    Measured end to end with ``benchmarks/predict_constant_auto.py`` (``kunet predict`` on a folder of 512x512
    images, paper net, float32, 2 cores of an Intel Xeon with AMX; docs/BENCHMARKS.md): constant weights add
    about 6.5 s to the first image and save 1.65 s on every later one with test-time mirroring, 0.44 s without,
    so they break even at about 4 and 15 images; the thresholds below leave a margin. In bf16 they save
    0.02-0.2 s an image (``benchmarks/first_call.py``): not within a typical folder. Never where oneDNN already
    keeps every filter it reorders (:mod:`kunet.onednn`, the default of ``kunet predict``): the same speed there
    (paper net, 700 tile: float32 1.62 s an image without, 1.68 s with), for 7 s more on the first call.

    Args:
        precision: The resolved dtype policy (``float32``, ``mixed_bfloat16``, ...).
        test_time_mirroring: Whether each image is predicted in its four flips.
        images: How many images the job predicts (of the size the first call compiles for).
    """
    if precision != "float32" or weights_assumed_frozen():
        return False
    return images >= (6 if test_time_mirroring else 24)


class Predictor:
    """Overlap-tile prediction with one compiled ``tf.function`` per tile size (not ``model.predict``).

    Args:
        model: A valid-padding :class:`kunet.model.UNet` returning logits.
        settings: Normalisation and decision rule; defaults to the model's metadata.
        tiling: Tile size or rule, tiles per call and memory budgets (default :class:`TilingOptions`).
        test_time_mirroring: Average over the four flips (default: the settings').
        constant_weights: Compile the weights into the graph as constants, from a snapshot taken now:
            TensorFlow's oneDNN convolutions then keep each filter in their own blocked layout instead of
            reading the variable's plain one every call. Faster once compiled, but the first call per tile
            size takes 4-6 s more (paper net), and later changes to the model's weights are not seen (make a new
            Predictor). In a process where oneDNN keeps every filter (:mod:`kunet.onednn`, as in ``kunet predict``)
            it adds nothing. See docs/BENCHMARKS.md. ``None`` decides by :func:`constant_weights_pay_off`.
        expected_images: How many images the job predicts (used when ``constant_weights`` is None).

    Example:
        >>> predictor = Predictor(model, tiling=TilingOptions(tile_size=572))
        >>> probabilities = predictor.probabilities(image)   # [H, W, K] for a raw uint8/uint16 image
    """

    def __init__(
        self,
        model,
        settings: InferenceSettings | None = None,
        tiling: TilingOptions | None = None,
        test_time_mirroring: bool | None = None,
        constant_weights: bool | None = False,
        expected_images: int = 1,
    ):
        self.model = model
        self.settings = settings or InferenceSettings.from_metadata(getattr(model, "metadata", {}))
        self.tiling = tiling or TilingOptions()
        if test_time_mirroring is None:
            test_time_mirroring = self.settings.test_time_mirroring
        self.test_time_mirroring = test_time_mirroring
        if constant_weights is None:
            precision = model.get_config().get("compute_dtype") or "float32"  # the policy the net computes in
            constant_weights = constant_weights_pay_off(precision, test_time_mirroring, expected_images)
        self.constant_weights = constant_weights
        self._model_call = _constant_weights_call(model) if constant_weights else None
        self._functions: dict = {}
        self._functions_lock = threading.Lock()  # threads predicting images share one function per tile

    def plan(self, image_hw, strip_width: int | None = None) -> TilePlan:
        """The tiling of an image; with ``strip_width`` one that streams within the streaming budget."""
        return plan_tiles(image_hw, self.model, self.tiling, strip_width)

    def _function(self, plan: TilePlan, strip: bool = False, images: bool = False):
        """A compiled function for one tile size; ``strip`` predicts a row of tiles from a context strip,
        ``images`` a batch of images of one size."""
        key = (plan.input_hw, plan.stride_hw, strip, images)
        with self._functions_lock:
            if key not in self._functions:
                self._functions[key] = _FirstCallAlone(self._compile(plan, strip, images))
            return self._functions[key]

    def _compile(self, plan: TilePlan, strip: bool, images: bool = False):
        """The ``tf.function`` of :meth:`_function` (traced on its first call)."""
        model, batch = self.model, self.tiling.batch_size
        border_hw = (0, plan.border) if strip else (plan.border, plan.border)
        # A strip is one row of tiles and yields its tile's whole output height, so that a vertically
        # flipped strip (test-time mirroring) maps back onto the same rows.
        stride_hw = (plan.output_hw[0], plan.stride_hw[1]) if strip else plan.stride_hw

        def model_fn(tiles):
            if self._model_call is not None:
                return self._model_call(tiles)
            return model(tiles, training=False)

        def predict(image):
            out_hw = (plan.output_hw[0], tf.shape(image)[1]) if strip else None
            return tiled_probabilities(model_fn, image, plan.input_hw, stride_hw, border_hw, out_hw, batch)

        def predict_images(stack):  # each model call takes `batch` tiles of every image
            tiles_per_call = tf.shape(stack)[0] * batch
            return tiled_probabilities_batch(model_fn, stack, plan.input_hw, stride_hw, border_hw, None, tiles_per_call)

        if images:
            predict = predict_images
        height = plan.input_hw[0] if strip else None
        spec = tf.TensorSpec([None] * images + [height, None, self.model.input_channels], tf.float32)
        function = (lambda image: mirrored_probabilities(predict, image)) if self.test_time_mirroring else predict
        return tf.function(function, input_signature=[spec], reduce_retracing=True)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Raw image [H, W] or [H, W, C] -> normalised float32 [H, W, C] (whole-image statistics)."""
        return normalize(self._unit(image), self.settings.normalize, settings=self.settings)

    def _unit(self, image: np.ndarray) -> np.ndarray:
        """Raw values -> [0, 1]: integers by the maximum of the dtype the model was trained on (int16 shifted
        into uint16's range first), float images as they are (:func:`kunet.preprocess.raw_to_unit`)."""
        if image.ndim == 2:
            image = image[:, :, None]
        return raw_to_unit(image, dtype_max(self.settings.image_dtype))

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities [H, W, K] of a raw image of any size."""
        prepared = self.prepare(image)
        plan = self.plan(prepared.shape[:2])
        return self._function(plan)(tf.constant(prepared)).numpy()

    def probabilities_of_images(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities [N, H, W, K] of raw images of one size, their tiles batched into shared model
        calls (each call takes ``tiling.batch_size`` tiles of every image).

        Faster per image than :meth:`probabilities` where one image's tiles leave the cores idle, but in
        float32 oneDNN picks other kernels for another batch size, so the probabilities can differ from
        :meth:`probabilities`' in the 6th-7th digit, and an image's result depends on how many images shared
        its calls.
        """
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ValueError(f"probabilities_of_images takes images of one shape, got {sorted(shapes)}")
        prepared = np.stack([self.prepare(image) for image in images])
        plan = self.plan(prepared.shape[1:3])
        return self._function(plan, images=True)(tf.constant(prepared)).numpy()

    def probability_strips(self, image: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Class probabilities one row of tiles at a time, top to bottom: ``(top row, [rows, W, K])``.

        Memory is bounded by ``streaming_memory_mb`` (tiles and strip buffers), not by the image: the
        whole-image statistics are computed a block at a time and each strip is normalised on its own
        (with those statistics), so no float copy of the image is ever made. The concatenated strips equal
        :meth:`probabilities` (to float tolerance) without test-time mirroring. With it they are a mirrored
        average too, but not the same one: a strip flipped upside down is pooled on its own 16-px grid, not on
        the grid of the whole image flipped, so the two can differ (by up to 0.28 for an untrained net).

        Args:
            image: Raw image [H, W] or [H, W, C] (may be a memory-mapped array).
        """
        height, width = image.shape[:2]
        statistics = normalization(self.settings.normalize, self.settings).streamed_statistics(image, self._unit)
        plan = self.plan((height, width), strip_width=width)
        function = self._function(plan, strip=True)
        for top in range(0, height, plan.stride_hw[0]):
            rows = fold_indices(top - plan.border, plan.input_hw[0], height).numpy()
            strip = normalize(self._unit(image[rows]), self.settings.normalize, statistics)
            take = min(plan.stride_hw[0], height - top)
            yield top, function(tf.constant(strip)).numpy()[:take]

    def probabilities_streaming(self, image: np.ndarray, out: np.ndarray | None = None, progress=None) -> np.ndarray:
        """:meth:`probability_strips` gathered into ``out`` (float32 [H, W, K], e.g. memory-mapped).

        Args:
            image: Raw image [H, W] or [H, W, C] (may be a memory-mapped array).
            out: Optional preallocated array to fill; a new one otherwise.
            progress: Called once per tile row.
        """
        if out is None:
            out = np.zeros((*image.shape[:2], self.model.num_classes), np.float32)
        for top, probabilities in self.probability_strips(image):
            out[top : top + len(probabilities)] = probabilities
            if progress:
                progress()
        return out

    def classes(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices [H, W] by the settings' decision rule."""
        return DecisionRule.of(self.settings).classes(probabilities)
