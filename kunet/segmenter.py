"""Loading a trained model for prediction, whatever form it comes in, and turning probabilities into masks.

``MODEL`` may be a run directory (its ``best.keras``, else ``last.keras``), a ``.keras`` file, or an
exported SavedModel version folder (``saved_models/<name>/<version>``), which carries the tiling in
its graph and needs no kunet code. All three give the same :class:`Segmenter` interface, and each may be a
remote URI (``gs://bucket/models/isbi/3``; any ``tf.io.gfile`` scheme): a SavedModel is loaded from there, a
``.keras`` file is copied to a local temporary file first (Keras opens it as a zip archive).
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kunet import metrics, uris
from kunet.decision import DecisionRule
from kunet.errors import KunetError, first_line
from kunet.inference import InferenceSettings, Predictor
from kunet.model import UNet, output_size
from kunet.precision import PRECISIONS, resolve_precision
from kunet.preprocess import dtype_max, dtype_shift
from kunet.runs import ModelLoadError, resolve_model_path
from kunet.sizes import activation_bytes
from kunet.tiling import TilingOptions


def with_precision(model, precision: str):
    """The same net with another dtype policy (weights copied), e.g. ``mixed_bfloat16`` for fast CPU inference;
    ``auto`` as :func:`kunet.precision.resolve_precision` resolves it."""
    precision = resolve_precision(precision)
    policy = None if precision == "float32" else precision
    if model.get_config().get("compute_dtype") == policy:
        return model
    clone = model.__class__.from_config({**model.get_config(), "compute_dtype": policy})
    clone.set_weights(model.get_weights())
    return clone


def check_prediction_options(precision: str, tile_size: int, threshold: float | None) -> None:
    """Raises ValueError naming the option for settings no model can use (checked before loading one)."""
    if precision not in PRECISIONS:
        raise KunetError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if tile_size < 0:
        raise KunetError(f"--tile-size must be 0 (automatic) or a tile side in pixels, got {tile_size}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise KunetError(f"--threshold must be in (0, 1), got {threshold}")


def _check_tile_size(tile_size: int, model: UNet) -> None:
    try:
        output_size(tile_size, model.depth, model.padding)
    except ValueError as error:
        raise KunetError(f"--tile-size: {error}") from None


def load_unet(path: Path | str) -> UNet:
    """A kunet U-Net from a ``.keras`` file (a local path, or a URI: copied to a local temporary file first,
    as Keras reads a local archive), with an error naming the file for anything else.

    Raises:
        ModelLoadError: a truncated or corrupted file, a zip that is no Keras model, or a Keras model that
            kunet did not make (e.g. a plain ``keras.Sequential``).
    """
    if uris.is_remote(path):
        return _load_remote_unet(uris.location(path))
    with open(path, "rb") as stream:  # an unreadable file fails here, naming itself, not as "truncated"
        is_zip = zipfile.is_zipfile(stream)
    if not is_zip:
        raise ModelLoadError(f"{path}: not a .keras model archive (the file is truncated or of another kind)")
    with zipfile.ZipFile(path) as archive:
        missing = sorted({"config.json", "model.weights.h5"} - set(archive.namelist()))
    if missing:
        raise ModelLoadError(f"{path}: a zip archive but no Keras model (no {' or '.join(missing)} inside)")
    try:
        model = keras.models.load_model(path)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelLoadError(f"{path}: cannot load the model, the file is damaged ({first_line(error)})") from None
    if not isinstance(model, UNet):
        raise ModelLoadError(
            f"{path}: a Keras {type(model).__name__}, not a kunet U-Net; predict needs a model made by kunet fit"
        )
    return model


def _load_remote_unet(uri: str) -> UNet:
    """:func:`load_unet` of a local copy of ``uri``, its errors naming ``uri``."""
    with tempfile.TemporaryDirectory(prefix="kunet-model-") as scratch:
        local = Path(scratch) / uris.name(uri)
        uris.copy(uri, local)
        try:
            return load_unet(local)
        except ModelLoadError as error:
            raise ModelLoadError(str(error).replace(str(local), uri)) from None


def read_export_description(path: Path | str) -> dict:
    """An export's ``assets.extra/kunet.json``, with an error naming it when it is missing or not JSON."""
    info_path = uris.join(path, "assets.extra", "kunet.json")
    if not uris.isfile(info_path):
        raise ModelLoadError(f"{path}: a SavedModel but not a kunet export (no assets.extra/kunet.json)")
    try:
        return json.loads(uris.read_text(info_path))
    except ValueError as error:
        raise ModelLoadError(f"{info_path}: damaged export description ({first_line(error)})") from None


def read_export_info(path: Path | str, info: dict | None = None) -> tuple[InferenceSettings, int, int]:
    """The decision rule, input channels and net depth from an export's ``assets.extra/kunet.json`` (``info``:
    that file, already read)."""
    info_path = uris.join(path, "assets.extra", "kunet.json")
    info = read_export_description(path) if info is None else info
    try:
        return (
            InferenceSettings.from_metadata(info["inference"]),
            int(info["input"]["channels"]),
            int(info["model"]["depth"]),
        )
    except (ValueError, KeyError, TypeError) as error:
        detail = f"no {error} entry" if isinstance(error, KeyError) else first_line(error)
        raise ModelLoadError(f"{info_path}: damaged export description ({detail})") from None


def load_saved_model(path: Path | str):
    """The serving SavedModel, with an error naming the folder when TensorFlow cannot load it."""
    import tensorflow as tf

    try:
        saved_model = tf.saved_model.load(str(path))
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - TensorFlow raises OpError, ValueError, OSError, ...
        raise ModelLoadError(f"{path}: cannot load the SavedModel, it is damaged ({first_line(error)})") from None
    if "serving_default" not in saved_model.signatures:
        raise ModelLoadError(f"{path}: the SavedModel has no serving_default signature")
    return saved_model


def _export_tile(info: dict) -> tuple[tuple[int, int], int, int]:
    """(input tile, base filters, tiles per call) of an export's graph, for :meth:`Segmenter.working_bytes`;
    the paper's net on a 700x700 tile where the description does not say."""
    try:
        tile = tuple(int(side) for side in info["tiling"]["input_tile"])
        return (tile[0], tile[1]), int(info["model"].get("base_filters", 64)), 1
    except (KeyError, TypeError, ValueError, IndexError):
        return (700, 700), 64, 1


def _exhaust(iterator) -> None:
    for _ in iterator:
        pass


@dataclass
class Segmentation:
    probabilities: np.ndarray | None  # float32 [H, W, K]; None when streamed to a file
    classes: np.ndarray  # uint8 [H, W] class indices
    label_values: np.ndarray  # [H, W] in the dataset's own label values (e.g. 0/255)
    instances: np.ndarray | None  # int32 [H, W] for instance pipelines


def _graph_pixels(image: np.ndarray, image_dtype: str) -> np.ndarray:
    """An image as an export's graph takes it: pixel values in the terms of the dtype the model was trained on
    (the graph adds that dtype's shift and divides by its maximum, :func:`kunet.preprocess.tf_raw_to_unit`).
    The Keras path brings integers of any dtype to [0, 1] by their own shift and the trained dtype's maximum,
    and takes float images as they are; the values given here make the graph compute the same."""
    trained_shift = np.float32(dtype_shift(image_dtype))
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32) * np.float32(dtype_max(image_dtype)) - trained_shift
    shift = np.float32(dtype_shift(image.dtype)) - trained_shift
    return image.astype(np.float32) + shift if shift else image


class Segmenter:
    """Predicts masks for raw images with a loaded model.

    Args:
        model_path: Run directory, ``.keras`` file or SavedModel folder, local or a remote URI.
        precision: ``float32`` or ``mixed_bfloat16`` (Keras models only).
        tiling: Tile size or rule, tiles per call, memory budgets (Keras models; an export tiles in its graph).
        test_time_mirroring: Average the four flips (default: as stored with the model).
        threshold: Overrides the model's stored decision threshold.
        constant_weights: Compile the weights into the graph (:class:`kunet.inference.Predictor`; Keras
            models only): faster in float32 once compiled, slower to compile. ``None`` lets the Predictor decide
            by :func:`kunet.inference.constant_weights_pay_off` for ``expected_images`` (always off for an export).
        expected_images: How many images this segmenter will predict (used when ``constant_weights`` is None).

    Example:
        >>> segmenter = Segmenter("runs/isbi2012")
        >>> result = segmenter.segment(image)
        >>> result.label_values   # 0 = membrane, 255 = cell for ISBI 2012
    """

    def __init__(
        self,
        model_path,
        precision: str = "float32",
        tiling: TilingOptions | None = None,
        test_time_mirroring: bool | None = None,
        threshold: float | None = None,
        constant_weights: bool | None = False,
        expected_images: int = 1,
    ):
        tiling = tiling or TilingOptions()
        check_prediction_options(precision, tiling.tile_size, threshold)
        self.path = resolve_model_path(model_path)
        self.saved_model = None
        if str(self.path).endswith(".keras"):
            model = load_unet(self.path)
            if tiling.tile_size:
                _check_tile_size(tiling.tile_size, model)
            self.model = with_precision(model, precision)
            self.settings = InferenceSettings.from_metadata(getattr(model, "metadata", {}))
            self.predictor = Predictor(self.model, self.settings, tiling, test_time_mirroring, constant_weights,
                                       expected_images)  # fmt: skip
            self.input_channels, self.depth = model.input_channels, model.depth
        else:
            if constant_weights:
                raise ValueError(f"{self.path}: constant weights are for .keras models; an export's graph is fixed")
            info = read_export_description(self.path)
            self.settings, self.input_channels, self.depth = read_export_info(self.path, info)
            self._export_tile = _export_tile(info)
            self.saved_model = load_saved_model(self.path)
            self.model = None
            self.predictor = None
        if threshold is not None:
            self.settings.threshold = threshold

    @property
    def rule(self) -> DecisionRule:
        return DecisionRule.of(self.settings)

    @property
    def num_classes(self) -> int:
        return len(self.settings.class_values)

    def probabilities(self, image: np.ndarray, streaming: bool = False) -> np.ndarray:
        """Class probabilities [H, W, K] for a raw image [H, W] or [H, W, C] as stored in its file."""
        if self.saved_model is not None:
            import tensorflow as tf

            batch = _graph_pixels(image, self.settings.image_dtype)
            batch = batch[None, ..., None] if batch.ndim == 2 else batch[None]
            outputs = self.saved_model.signatures["serving_default"](images=tf.constant(batch, tf.float32))
            return outputs["probabilities"].numpy()[0]
        if streaming:
            return self.predictor.probabilities_streaming(image)
        return self.predictor.probabilities(image)

    def segment(self, image: np.ndarray, streaming: bool = False) -> Segmentation:
        return self._segmentation(self.probabilities(image, streaming))

    def _segmentation(self, probabilities: np.ndarray) -> Segmentation:
        classes = self.decide(probabilities)
        return Segmentation(probabilities, classes, self.label_values(classes), self.instances(classes))

    def segment_images(self, images: list[np.ndarray]) -> list[Segmentation]:
        """:meth:`segment` of several images of one shape, their tiles batched into shared model calls
        (:meth:`kunet.inference.Predictor.probabilities_of_images`: faster per image, and in float32 the
        probabilities can differ from :meth:`segment`'s in the 6th-7th digit). An export's graph takes one
        image per call here, so it segments them one by one."""
        if self.predictor is None or len(images) == 1:
            return [self.segment(image) for image in images]
        return [self._segmentation(probabilities) for probabilities in self.predictor.probabilities_of_images(images)]

    @property
    def streams(self) -> bool:
        """Whether :meth:`segment_streaming` is available: Keras models; an export's graph takes whole images."""
        return self.predictor is not None

    def segment_streaming(self, image: np.ndarray, consume_probabilities=None) -> Segmentation:
        """:meth:`segment` one row of tiles at a time, for images too large to hold their probabilities.

        Per-pixel rules (threshold, argmax) decide each strip as it comes. The watershed cuts depend on the
        whole map, so for it p(foreground) is kept (4 bytes per pixel) and decided at the end, at the
        watershed's own cost (tens of bytes per pixel in TensorFlow).

        Args:
            image: Raw image [H, W] or [H, W, C].
            consume_probabilities: Called once with an iterator over the probability strips [rows, W, K]
                (top to bottom), e.g. a file writer; None discards them.

        Returns:
            The segmentation without ``probabilities`` (None).
        """
        height, width = image.shape[:2]
        rule = self.rule
        per_pixel = rule.per_pixel(self.num_classes)
        decided = np.zeros((height, width), np.uint8) if per_pixel else np.zeros((height, width), np.float32)
        # A border net's watershed also needs p(cell), its seeds and flooding surface: 4 more bytes per pixel.
        interior = np.zeros((height, width), np.float32) if not per_pixel and rule.border_class else None

        def strips():
            for top, probabilities in self.predictor.probability_strips(image):
                rows = slice(top, top + len(probabilities))
                if per_pixel:
                    decided[rows] = self.decide(probabilities)
                else:
                    decided[rows] = rule.foreground(probabilities)
                    if interior is not None:
                        interior[rows] = rule.interior(probabilities)
                yield probabilities

        stream = strips()
        (consume_probabilities or _exhaust)(stream)
        _exhaust(stream)  # a consumer that stopped early must not leave rows undecided
        classes = decided if per_pixel else rule.decide_maps(decided, decided if interior is None else interior)
        return Segmentation(None, classes, self.label_values(classes), self.instances(classes))

    def working_bytes(self, image_shape) -> int:
        """Rough working memory of predicting one image of ``image_shape`` (the net's activations for one model
        call, as the tile choice estimates them, and the whole-image float buffers): what lets
        :func:`kunet.predict_files.predict_planned` run several images at once within :meth:`memory_budget_bytes`."""
        height, width = image_shape[:2]
        if self.predictor is not None:
            plan = self.predictor.plan((height, width))
            tile, base_filters, batch = plan.input_hw, self.model.base_filters, self.predictor.tiling.batch_size
        else:
            tile, base_filters, batch = self._export_tile
        activations = activation_bytes(tile[0], tile[1], base_filters, self.depth) * batch
        return int(activations + height * width * 4 * (3 * self.input_channels + 3 * self.num_classes))

    def memory_budget_bytes(self) -> float:
        """The bound on the activations of the model calls running at once (:class:`TilingOptions`)."""
        tiling = self.predictor.tiling if self.predictor is not None else TilingOptions()
        return tiling.memory_budget_mb * 1e6

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices by the model's decision rule (:class:`kunet.decision.DecisionRule`)."""
        return self.rule.classes(probabilities)

    def label_values(self, classes: np.ndarray) -> np.ndarray:
        values = np.asarray(self.settings.class_values)
        dtype = np.uint8 if values.max() <= 255 else np.uint16
        return values.astype(dtype)[classes]

    def instances(self, classes: np.ndarray) -> np.ndarray | None:
        if self.settings.label_kind != "instance":
            return None
        return metrics.instances_from_foreground(classes > 0, self.settings.min_object_size)
