"""The dataset writers: samples laid out as the real data sets are, written atomically with a SYNTHETIC.json.

EM samples in the ISBI 2012 layout (``images/slice_NN.png`` + ``labels/slice_NN.png``), cells in the Cell
Tracking Challenge layout (``NN/tXXX.tif`` + ``NN_GT/SEG/man_segXXX.tif``). A sample depends only on the
dataset seed, its stream and its index (:func:`sample_rng`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from kunet import __version__
from kunet._fs import building_directory, check_output, commit_directory, sweep_temporaries
from kunet.synthetic._common import Size, _shape
from kunet.synthetic.cells import make_cells_sample
from kunet.synthetic.em import INTERIOR, MEMBRANE, make_em_sample

MARKER = "SYNTHETIC.json"  # proof that kunet made a dataset folder (so --overwrite may replace it)


def _write(path: Path, image: np.ndarray) -> None:
    # cv2.imwrite reports most failures by returning False rather than raising.
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: cv2.imwrite failed for a {image.dtype} array of shape {image.shape}")


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator the dataset writers use for sample ``index`` of a dataset with seed ``seed``.

    A sample depends only on ``(seed, stream, index)``, so a larger dataset starts with a smaller one's
    samples and any written sample can be regenerated in memory.

    Args:
        seed: Dataset seed (non-negative).
        index: Sample (frame) number, from 0.
        stream: 0 for EM datasets; the position of the sequence for cells datasets.

    Returns:
        A fresh ``numpy.random.Generator``.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _write_dataset(
    out_dir: str | os.PathLike,
    overwrite: bool,
    fill: Callable[[Path], None],
    manifest: dict,
    log: Callable[[str], None] | None,
) -> Path:
    """Builds a dataset in a temporary sibling of ``out_dir`` and moves it into place once complete.

    ``fill`` writes the samples into the temporary folder; ``manifest`` (plus the kunet version) then goes
    to its ``SYNTHETIC.json``. An existing ``out_dir`` is refused unless ``overwrite``, and even then unless
    kunet made it (it holds a ``SYNTHETIC.json``, or is empty) and it is not the working directory, the home
    folder or one holding them; this is checked before generating anything and again before replacing. On
    any error the temporary directory is removed and ``out_dir`` is left as it was. Temporaries of writers
    that were killed are removed first (see :func:`kunet._fs.sweep_temporaries`).
    """
    out = Path(out_dir).absolute()
    check_output(out, overwrite, [MARKER])
    sweep_temporaries(out, log)
    with building_directory(out) as temporary:
        fill(temporary)
        manifest = {**manifest, "kunet_version": __version__}
        (temporary / MARKER).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        commit_directory(temporary, out, overwrite, [MARKER])
    return out


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")


def _sequence_names(sequences: Sequence[str]) -> tuple[str, ...]:
    """The sequence names as a tuple of strings; raises unless they are distinct folder names."""
    if isinstance(sequences, str):
        sequences = (sequences,)
    sequences = tuple(str(name) for name in sequences)
    if not sequences or len(set(sequences)) != len(sequences):
        raise ValueError(f"sequences must be distinct names, got {sequences}")
    for name in sequences:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"invalid sequence name {name!r}")
    return sequences


def write_em_dataset(
    out_dir: str | os.PathLike,
    count: int,
    size: Size = 512,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Writes ``count`` EM samples in the ISBI 2012 layout: ``images/slice_NN.png``, ``labels/slice_NN.png``.

    Args:
        out_dir: Dataset folder to create.
        count: Number of image/label pairs (at least 1).
        size: Image size, ``n`` or ``(height, width)``.
        seed: Seed of the whole dataset; sample ``i`` is ``make_em_sample(size, sample_rng(seed, i))``.
        overwrite: Replace an existing ``out_dir`` made by kunet (only once the new dataset is complete).
        log: Reports the temporaries of killed writers that were removed (or kept, and why).

    Returns:
        The absolute path of the dataset folder.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False, or (UnsafeOverwriteError) it is not
            a kunet dataset folder, or is or holds the working directory or the home folder.
    """
    _check_count(count)
    height, width = _shape(size)
    digits = max(2, len(str(count - 1)))

    def fill(folder: Path) -> None:
        (folder / "images").mkdir()
        (folder / "labels").mkdir()
        for index in range(count):
            image, label = make_em_sample((height, width), sample_rng(seed, index))
            name = f"slice_{index:0{digits}d}.png"
            _write(folder / "images" / name, image)
            _write(folder / "labels" / name, label)

    manifest = {
        "generator": "kunet.synthetic.make_em_sample",
        "layout": "isbi2012",
        "parameters": {"size": [height, width]},
        "seed": seed,
        "count": count,
        "labels": {"membrane": MEMBRANE, "interior": INTERIOR},
    }
    return _write_dataset(out_dir, overwrite, fill, manifest, log)


def write_cells_dataset(
    out_dir: str | os.PathLike,
    count: int,
    size: Size = 512,
    seed: int = 0,
    sequences: Sequence[str] = ("01",),
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Writes DIC cell samples in the Cell Tracking Challenge layout.

    Every sequence ``NN`` gets ``count`` frames ``NN/tXXX.tif`` (uint8) with instance masks
    ``NN_GT/SEG/man_segXXX.tif`` (uint16, 0 = background, ids 1..N). Frames are independent samples, not
    a time series. ``out_dir``, ``size``, ``overwrite`` and ``log`` are as for :func:`write_em_dataset`, and
    so are the return value and the errors.

    Args:
        count: Frames per sequence (at least 1).
        seed: Seed of the whole dataset; frame ``i`` of the ``k``-th sequence is
            ``make_cells_sample(size, sample_rng(seed, i, stream=k))``.
        sequences: Sequence names, e.g. ``("01", "02")``.
    """
    _check_count(count)
    sequences = _sequence_names(sequences)
    height, width = _shape(size)
    digits = max(3, len(str(count - 1)))

    def fill(folder: Path) -> None:
        for stream, name in enumerate(sequences):
            (folder / name).mkdir()
            (folder / f"{name}_GT" / "SEG").mkdir(parents=True)
            for index in range(count):
                image, instances = make_cells_sample((height, width), sample_rng(seed, index, stream))
                number = f"{index:0{digits}d}"
                _write(folder / name / f"t{number}.tif", image)
                _write(folder / f"{name}_GT" / "SEG" / f"man_seg{number}.tif", instances)

    manifest = {
        "generator": "kunet.synthetic.make_cells_sample",
        "layout": "cell-tracking-challenge",
        "parameters": {"size": [height, width], "num_cells": [8, 16]},
        "seed": seed,
        "count": count,
        "sequences": list(sequences),
    }
    return _write_dataset(out_dir, overwrite, fill, manifest, log)
