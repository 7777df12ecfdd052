"""Input checks and the sparse contingency table the pair-counting scores and SEG are built on."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike


def _same_shape(*arrays: np.ndarray) -> None:
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1:
        raise ValueError(f"inputs must have the same shape, got {[a.shape for a in arrays]}")


def _as_binary(image: ArrayLike) -> np.ndarray:
    return np.asarray(image) != 0


def _as_binary_2d(image: ArrayLike) -> np.ndarray:
    binary = _as_binary(image)
    if binary.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {binary.shape}")
    return binary


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps a label array to indices 0..K-1 (flattened) and returns them with the K distinct labels."""
    flat = labels.ravel()
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    dense = (
        np.issubdtype(flat.dtype, np.integer)
        and flat.size > 0
        and flat.min() >= 0
        and flat.max() <= max(4 * flat.size, 1 << 16)
    )
    if dense:
        present = np.bincount(flat) > 0
        lookup = np.cumsum(present) - 1
        return lookup[flat], np.flatnonzero(present)
    distinct, indices = np.unique(flat, return_inverse=True)
    return indices.ravel(), distinct


class _Contingency(NamedTuple):
    """Non-empty cells of the contingency table of two label arrays a (rows) and b (columns)."""

    rows: np.ndarray  # index into row_labels, one per cell
    cols: np.ndarray  # index into col_labels, one per cell
    counts: np.ndarray  # int64 pixel count n_ij of each cell
    row_labels: np.ndarray
    col_labels: np.ndarray

    def row_sizes(self) -> np.ndarray:
        return np.bincount(self.rows, weights=self.counts, minlength=len(self.row_labels)).astype(np.int64)

    def col_sizes(self) -> np.ndarray:
        return np.bincount(self.cols, weights=self.counts, minlength=len(self.col_labels)).astype(np.int64)


def _contingency(a: np.ndarray, b: np.ndarray) -> _Contingency:
    a_index, a_labels = _compact_labels(a)
    b_index, b_labels = _compact_labels(b)
    num_cols = len(b_labels)
    keys = a_index.astype(np.int64) * num_cols + b_index
    if len(a_labels) * num_cols <= max(4 * keys.size, 1 << 16):
        counts = np.bincount(keys, minlength=len(a_labels) * num_cols)
        cells = np.flatnonzero(counts)
        counts = counts[cells]
    else:
        cells, counts = np.unique(keys, return_counts=True)
    return _Contingency(cells // num_cols, cells % num_cols, counts.astype(np.int64), a_labels, b_labels)


def _ordered_pairs(sizes: np.ndarray) -> int:
    """Σ n(n-1): ordered pairs of distinct pixels sharing a cell (twice the unordered pairs)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return int(np.sum(sizes * (sizes - 1)))
