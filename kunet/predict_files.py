"""``kunet predict``: masks, probabilities and overlays for image files, folders and multi-page TIFF stacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kunet import visualize
from kunet.imageio import IMAGE_SUFFIXES, as_channels, check_image_dtype, read_pages, write_image
from kunet.segmenter import Segmenter

# Above this many pixels an image is predicted one row of tiles at a time (bounded memory).
STREAMING_PIXELS = 4096 * 4096


@dataclass
class InputImage:
    name: str  # output stem, unique per run
    path: Path
    page: int
    image: np.ndarray


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files as given and the PNG/TIFF files inside folders, sorted; a missing input is an error."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                raise FileNotFoundError(f"{item}: no PNG or TIFF images in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def iterate_images(files: list[Path], channels: int) -> Iterator[InputImage]:
    seen: set[str] = set()
    for path in files:
        pages = read_pages(path)
        for page, image in enumerate(pages):
            check_image_dtype(image, str(path))
            name = path.stem if len(pages) == 1 else f"{path.stem}_p{page:04d}"
            if name in seen:
                raise ValueError(f"{path}: two inputs would write outputs named {name!r}; predict them separately")
            seen.add(name)
            yield InputImage(name, path, page, as_channels(image, channels, str(path)))


def predict_files(
    segmenter: Segmenter,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    channels: int = 1,
    mask_format: str = "png",
    probabilities: str | None = None,
    overlays: bool = True,
    progress=None,
) -> list[dict]:
    """Predicts every input image and writes its outputs into ``out_dir``.

    Args:
        segmenter: The loaded model.
        inputs: Files or folders (PNG/TIFF; multi-page TIFFs give one output per page).
        out_dir: Output folder (created).
        channels: Image channels the model expects.
        mask_format: ``png`` or ``tif`` for label masks (written in the dataset's label values).
        probabilities: ``None``, ``tif`` (foreground probability, float32) or ``npy`` (all classes).
        overlays: Also write ``<name>_overlay.png``.

    Returns:
        One record per image: name, source, outputs written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for item in iterate_images(expand_inputs(inputs), channels):
        streaming = item.image.shape[0] * item.image.shape[1] > STREAMING_PIXELS
        result = segmenter.segment(item.image, streaming=streaming)
        outputs = {"mask": write_image(out / f"{item.name}_mask.{mask_format}", result.label_values)}
        if result.instances is not None:
            outputs["instances"] = write_image(out / f"{item.name}_instances.tif", result.instances.astype(np.uint16))
        if probabilities == "tif":
            outputs["probability"] = write_image(out / f"{item.name}_probability.tif", result.probabilities[..., -1])
        elif probabilities == "npy":
            path = out / f"{item.name}_probabilities.npy"
            temporary = path.with_name(f".{path.name}.part.npy")
            np.save(temporary, result.probabilities)
            os.replace(temporary, path)
            outputs["probabilities"] = path
        if overlays:
            overlay = visualize.overlay_prediction(item.image, result.classes)
            outputs["overlay"] = visualize.save_png(out / f"{item.name}_overlay.png", overlay)
        written.append({"name": item.name, "source": str(item.path), "page": item.page, "outputs": outputs})
        if progress:
            progress()
    return written
