"""``kunet predict``: masks, probabilities and overlays for image files, folders and multi-page TIFF stacks.

Whatever can be checked before the model is loaded is checked first (:func:`plan_predictions`): the
output options, that the output folder can be created and written, that every input exists and every
TIFF stack is complete, and that no two inputs, and no input and output, share a name. Every output is
written to a temporary sibling and renamed when complete (:mod:`kunet._fs`), so a full disk or a kill
leaves whole files or none.

Images above :data:`STREAMING_PIXELS` are predicted one row of tiles at a time
(:meth:`kunet.segmenter.Segmenter.segment_streaming`): probabilities go straight to their file strip by
strip, threshold rules decide each strip as it comes, and the working memory stays within the predictor's
streaming budget. What still grows with the image is the image itself, its uint8 classes and label mask, the
uint8 RGB overlay and the encoded PNGs (about 1 + 2 + 3 + 1-2 bytes per pixel for an 8-bit gray image), and
for the watershed rule the float32 foreground map plus the watershed's own working memory.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kunet import visualize
from kunet._fs import atomic_save, temporary_sibling
from kunet.choices import MASK_FORMATS, PROBABILITY_FORMATS
from kunet.errors import KunetError
from kunet.imageio import (
    READABLE_SUFFIXES,
    ImageReadError,
    as_channels,
    check_image_dtype,
    count_pages,
    iter_pages,
    naming_errors,
    write_image,
    write_npy_strips,
)
from kunet.segmenter import Segmentation, Segmenter
from kunet.tiff import write_float_strips

# Above this many pixels an image is predicted one row of tiles at a time (bounded memory).
STREAMING_PIXELS = 4096 * 4096


class PredictionInputError(KunetError):
    """An option, input or output folder that prediction cannot use; the message names it."""


@dataclass
class PlannedImage:
    path: Path
    page: int
    name: str  # output stem, unique per run


@dataclass
class PredictionPlan:
    """What one ``kunet predict`` run reads and writes, checked before the model is loaded."""

    out: Path
    images: list[PlannedImage]
    skipped: list[Path] = field(default_factory=list)  # files in input folders that are no images kunet reads
    mask_format: str = "png"
    probabilities: str | None = None
    overlays: bool = True

    def output_paths(self, name: str) -> dict[str, Path]:
        """Every file an image's prediction may write (instances only for instance pipelines)."""
        paths = {"mask": self.out / f"{name}_mask.{self.mask_format}", "instances": self.out / f"{name}_instances.tif"}
        if self.probabilities == "tif":
            paths["probability"] = self.out / f"{name}_probability.tif"
        elif self.probabilities == "npy":
            paths["probabilities"] = self.out / f"{name}_probabilities.npy"
        if self.overlays:
            paths["overlay"] = self.out / f"{name}_overlay.png"
        return paths


def check_output_options(mask_format: str, probabilities: str | None) -> None:
    if mask_format not in MASK_FORMATS:
        raise PredictionInputError(f"--mask-format must be png or tif, got {mask_format!r}")
    if probabilities is not None and probabilities not in PROBABILITY_FORMATS:
        raise PredictionInputError(
            f"--probabilities must be tif (foreground probability) or npy (all classes), got {probabilities!r}"
        )


def check_output_folder(out: str | os.PathLike) -> None:
    """Raises unless ``out`` is, or can be created as, a folder this process can write into.

    Creates nothing: a probe file is written into ``out`` or its nearest existing ancestor and removed.
    """
    out = Path(out)
    existing = out
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies under {existing}, which is a file"
        raise PredictionInputError(f"{out}: {where}, not a folder; choose another --out")
    probe = temporary_sibling(existing / "write-probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise PredictionInputError(f"{out}: cannot write predictions into {existing} ({error.strerror})") from None
    os.unlink(probe)


def expand_inputs(inputs: list[str | os.PathLike], skipped: list[Path] | None = None) -> list[Path]:
    """Files as given and the image files inside folders, sorted; a missing input is an error.

    Files in a folder that are not images kunet reads (by suffix) are appended to ``skipped``, so the
    caller can name them instead of dropping them silently.
    """
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith("."))
            found = [p for p in entries if p.suffix.lower() in READABLE_SUFFIXES]
            if skipped is not None:
                skipped += [p for p in entries if p.suffix.lower() not in READABLE_SUFFIXES]
            if not found:
                raise FileNotFoundError(f"{item}: no images in this folder ({', '.join(READABLE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def plan_predictions(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    mask_format: str = "png",
    probabilities: str | None = None,
    overlays: bool = True,
) -> PredictionPlan:
    """Checks options, output folder and inputs, and names every output, before any model is loaded.

    Raises:
        PredictionInputError: a bad option, an unwritable output folder, two inputs with the same output
            name, or an output that would overwrite an input.
        ImageReadError: a truncated TIFF stack.
        FileNotFoundError: a missing input.
    """
    check_output_options(mask_format, probabilities)
    check_output_folder(out_dir)
    skipped: list[Path] = []
    files = expand_inputs(inputs, skipped)
    images, owners = [], {}
    for path in files:
        pages = count_pages(path)
        for page in range(pages):
            name = path.stem if pages == 1 else f"{path.stem}_p{page:04d}"
            if name in owners:
                raise PredictionInputError(
                    f"{path}: would write outputs named {name!r}, as {owners[name]} does; predict them separately"
                )
            owners[name] = path
            images.append(PlannedImage(path, page, name))
    plan = PredictionPlan(Path(out_dir), images, skipped, mask_format, probabilities, overlays)
    _check_inputs_survive(plan, files)
    return plan


def _check_inputs_survive(plan: PredictionPlan, files: list[Path]) -> None:
    """Refuses a run whose outputs would replace one of its inputs (e.g. ``a_mask.png`` beside ``a.png``)."""
    inputs = {path.resolve(): path for path in files}
    for image in plan.images:
        for kind, output in plan.output_paths(image.name).items():
            if output.resolve() in inputs:
                raise PredictionInputError(
                    f"{inputs[output.resolve()]}: the {kind} of {image.path} would overwrite this input; "
                    "choose another --out"
                )


def check_image_size(image: np.ndarray, where: str, depth: int) -> None:
    """Refuses images narrower than the net's pooling period (16 px for the paper's depth-4 net)."""
    minimum = 2**depth
    height, width = image.shape[:2]
    if min(height, width) < minimum:
        raise ImageReadError(
            f"{where}: {height}x{width} px is smaller than the {minimum}x{minimum} px a depth-{depth} net needs: "
            f"it pools {minimum}x{minimum} pixels into one, so a smaller image would be predicted mostly from "
            "mirrored copies of itself"
        )


def _probability_writer(plan: PredictionPlan, paths: dict[str, Path], shape: tuple[int, int], classes: int):
    """A consumer of probability strips [rows, W, K] that writes the requested file atomically, or None."""
    if plan.probabilities is None:
        return None
    height, width = shape
    path = paths["probability" if plan.probabilities == "tif" else "probabilities"]

    def save(temporary: Path, strips) -> None:
        if plan.probabilities == "tif":
            write_float_strips(temporary, height, width, (strip[..., -1] for strip in strips))
        else:
            write_npy_strips(temporary, (height, width, classes), np.float32, strips)

    def write(strips) -> None:
        with naming_errors(path):
            atomic_save(path, lambda temporary: save(temporary, strips))

    return write


def _segment(segmenter: Segmenter, image: np.ndarray, plan: PredictionPlan, paths: dict[str, Path]) -> Segmentation:
    """Predicts one image and writes its probabilities (streamed strip by strip for large images)."""
    write_probabilities = _probability_writer(plan, paths, image.shape[:2], segmenter.num_classes)
    if segmenter.streams and image.shape[0] * image.shape[1] > STREAMING_PIXELS:
        return segmenter.segment_streaming(image, write_probabilities)
    result = segmenter.segment(image)
    if write_probabilities:
        write_probabilities(iter([result.probabilities]))
    return result


def _write_outputs(image: np.ndarray, result: Segmentation, plan: PredictionPlan, paths: dict[str, Path]) -> dict:
    outputs = {kind: paths[kind] for kind in ("probability", "probabilities") if kind in paths}
    outputs["mask"] = write_image(paths["mask"], result.label_values)
    if result.instances is not None:
        outputs["instances"] = write_image(paths["instances"], result.instances.astype(np.uint16))
    if plan.overlays:
        overlay = visualize.overlay_prediction(image, result.classes, legend=True)
        outputs["overlay"] = write_image(paths["overlay"], overlay, reuse=True)
    return outputs


def predict_planned(segmenter: Segmenter, plan: PredictionPlan, channels: int | None = None, progress=None):
    """Predicts every image of ``plan`` and writes its outputs; returns one record per image.

    Args:
        segmenter: The loaded model.
        plan: From :func:`plan_predictions`.
        channels: Image channels the model expects (default: the model's).
        progress: Called once per image.
    """
    channels = channels or segmenter.input_channels
    plan.out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, planned in itertools.groupby(plan.images, key=lambda image: image.path):
        for item, image in zip(planned, iter_pages(path)):
            where = str(path) if item.name == path.stem else f"{path} (page {item.page + 1})"
            check_image_dtype(image, where)
            image = as_channels(image, channels, where)
            check_image_size(image, where, segmenter.depth)
            paths = plan.output_paths(item.name)
            outputs = _write_outputs(image, _segment(segmenter, image, plan, paths), plan, paths)
            written.append({"name": item.name, "source": str(path), "page": item.page, "outputs": outputs})
            if progress:
                progress()
    return written


def predict_files(
    segmenter: Segmenter,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    channels: int | None = None,
    mask_format: str = "png",
    probabilities: str | None = None,
    overlays: bool = True,
    progress=None,
) -> list[dict]:
    """Predicts every input image and writes its outputs into ``out_dir``.

    Args:
        segmenter: The loaded model.
        inputs: Files or folders (PNG/TIFF/JPEG/BMP; multi-page TIFFs give one output per page).
        out_dir: Output folder (created).
        channels: Image channels the model expects (default: the model's).
        mask_format: ``png`` or ``tif`` for label masks (written in the dataset's label values).
        probabilities: ``None``, ``tif`` (foreground probability, float32) or ``npy`` (all classes).
        overlays: Also write ``<name>_overlay.png`` (with a band below the image naming the colours).

    Returns:
        One record per image: name, source, outputs written.
    """
    plan = plan_predictions(inputs, out_dir, mask_format, probabilities, overlays)
    return predict_planned(segmenter, plan, channels, progress)
