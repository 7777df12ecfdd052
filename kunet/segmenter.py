"""Loading a trained model for prediction, whatever form it comes in, and turning probabilities into masks.

``MODEL`` may be a run directory (its ``best.keras``, else ``last.keras``), a ``.keras`` file, or an
exported SavedModel version folder (``saved_models/<name>/<version>``), which carries the tiling in
its graph and needs no kunet code. All three give the same :class:`Segmenter` interface.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kunet import metrics
from kunet.inference import InferenceSettings, Predictor, decide


class ModelLoadError(ValueError):
    """A path that is not a usable model; the message names it."""


def with_precision(model, precision: str):
    """The same net with another dtype policy (weights copied), e.g. ``mixed_bfloat16`` for fast CPU inference."""
    policy = None if precision == "float32" else precision
    if model.get_config().get("compute_dtype") == policy:
        return model
    clone = model.__class__.from_config({**model.get_config(), "compute_dtype": policy})
    clone.set_weights(model.get_weights())
    return clone


def resolve_model_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return path
    if path.is_dir():
        for name in ("best.keras", "last.keras"):
            if (path / name).is_file():
                return path / name
        raise ModelLoadError(f"{path}: neither a run directory with best.keras/last.keras nor a SavedModel")
    if path.suffix == ".keras" and path.is_file():
        return path
    raise ModelLoadError(f"{path}: not found (expected a run directory, a .keras file or a SavedModel folder)")


@dataclass
class Segmentation:
    probabilities: np.ndarray  # float32 [H, W, K]
    classes: np.ndarray  # uint8 [H, W] class indices
    label_values: np.ndarray  # [H, W] in the dataset's own label values (e.g. 0/255)
    instances: np.ndarray | None  # int32 [H, W] for instance pipelines


class Segmenter:
    """Predicts masks for raw images with a loaded model.

    Args:
        model_path: Run directory, ``.keras`` file or SavedModel folder.
        precision: ``float32`` or ``mixed_bfloat16`` (Keras models only).
        tile_size: Input tile side; 0 picks the cheapest tiling per image.
        test_time_mirroring: Average the four flips (default: as stored with the model).
        threshold: Overrides the model's stored decision threshold.

    Example:
        >>> segmenter = Segmenter("runs/isbi2012")
        >>> result = segmenter.segment(image)
        >>> result.label_values   # 0 = membrane, 255 = cell for ISBI 2012
    """

    def __init__(
        self,
        model_path,
        precision: str = "float32",
        tile_size: int = 0,
        test_time_mirroring: bool | None = None,
        threshold: float | None = None,
        batch_size: int = 1,
        memory_budget_mb: float = 4096,
    ):
        self.path = resolve_model_path(model_path)
        self.saved_model = None
        if self.path.suffix == ".keras":
            try:
                model = keras.models.load_model(self.path)
            except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
                raise ModelLoadError(f"{self.path}: cannot load the model ({error})") from None
            self.model = with_precision(model, precision)
            self.settings = InferenceSettings.from_metadata(getattr(model, "metadata", {}))
            self.predictor = Predictor(
                self.model, self.settings, tile_size, batch_size, memory_budget_mb, test_time_mirroring
            )
        else:
            import tensorflow as tf

            self.saved_model = tf.saved_model.load(str(self.path))
            info = json.loads((self.path / "assets.extra" / "kunet.json").read_text())
            self.settings = InferenceSettings.from_metadata(info["inference"])
            self.model = None
            self.predictor = None
        if threshold is not None:
            self.settings.threshold = threshold

    @property
    def num_classes(self) -> int:
        return len(self.settings.class_values)

    def probabilities(self, image: np.ndarray, streaming: bool = False) -> np.ndarray:
        """Class probabilities [H, W, K] for a raw image [H, W] or [H, W, C] as stored in its file."""
        if self.saved_model is not None:
            import tensorflow as tf

            batch = image[None, ..., None] if image.ndim == 2 else image[None]
            outputs = self.saved_model.signatures["serving_default"](images=tf.constant(batch, tf.float32))
            return outputs["probabilities"].numpy()[0]
        if streaming:
            return self.predictor.probabilities_streaming(image)
        return self.predictor.probabilities(image)

    def segment(self, image: np.ndarray, streaming: bool = False) -> Segmentation:
        probabilities = self.probabilities(image, streaming)
        classes = self.decide(probabilities)
        return Segmentation(probabilities, classes, self.label_values(classes), self.instances(classes))

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Class indices: the threshold (and post-processing) for two classes, the argmax otherwise."""
        return decide(probabilities, self.settings)

    def label_values(self, classes: np.ndarray) -> np.ndarray:
        values = np.asarray(self.settings.class_values)
        dtype = np.uint8 if values.max() <= 255 else np.uint16
        return values.astype(dtype)[classes]

    def instances(self, classes: np.ndarray) -> np.ndarray | None:
        if self.settings.label_kind != "instance":
            return None
        return metrics.instances_from_foreground(classes > 0, self.settings.min_object_size)
