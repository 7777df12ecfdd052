"""The naive baseline the tests hold the synthetic data against (a global Otsu threshold) and its score."""

from __future__ import annotations

import cv2
import numpy as np


def otsu_foreground(image: np.ndarray, sigma: float = 1.0, dark: bool = False) -> np.ndarray:
    """The naive baseline: a global Otsu threshold of the Gaussian-blurred image.

    Args:
        image: uint8 [H, W] image.
        sigma: Standard deviation of the blur in pixels (0 for none).
        dark: Foreground is darker than the threshold (DIC cells) instead of brighter (EM cell interiors).

    Returns:
        bool [H, W] foreground mask.
    """
    blurred = cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image
    _, thresholded = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    foreground = thresholded > 0
    return ~foreground if dark else foreground


def foreground_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean foreground masks (1.0 when both are empty)."""
    union = np.count_nonzero(prediction | truth)
    return np.count_nonzero(prediction & truth) / union if union else 1.0
