"""Labelled frames from the layouts people actually have, and what their label values mean.

Three layouts (``source.kind`` in the pipeline TOML):

* ``folders``: ``images/`` and ``labels/`` matched by file stem (PNG or TIFF, 8/16 bit, gray or RGB).
* ``tiff_stack``: a multi-page image TIFF and a label TIFF with the same number of pages
  (the ISBI 2012 distribution: ``train-volume.tif`` + ``train-labels.tif``).
* ``ctc``: the Cell Tracking Challenge layout ``NN/tXXX.tif`` + ``NN_GT/SEG/man_segXXX.tif``; only
  frames that have ground truth are used.

Enumeration only pairs files (a missing partner is an error before anything is read); pixels are read
lazily by :meth:`Frame.load`, so a dataset streams through record building one frame at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kunet.config import LabelConfig, PipelineConfig
from kunet.errors import KunetError
from kunet.imageio import (
    IMAGE_SUFFIXES,
    ImageReadError,
    as_channels,
    as_label_plane,
    check_image_dtype,
    count_pages,
    read_image,
)


class SourceError(KunetError):
    """A dataset layout or label that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class Frame:
    """One labelled image: where it lives and how to load it."""

    frame_id: str
    image_path: Path
    label_path: Path
    page: int = 0

    def load(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Reads the image [H, W, C] (uint8/uint16/int16/float32) and the raw label [H, W] (uint8/uint16)."""
        try:
            image = read_image(self.image_path, self.page)
            check_image_dtype(image, str(self.image_path))
            image = as_channels(image, channels, str(self.image_path))
            label = as_label_plane(read_image(self.label_path, self.page), str(self.label_path))
        except ImageReadError as error:
            raise SourceError(str(error)) from None
        if image.shape[:2] != label.shape:
            raise SourceError(
                f"{self.image_path} is {image.shape[1]}x{image.shape[0]} but its label {self.label_path} "
                f"is {label.shape[1]}x{label.shape[0]} (width x height)"
            )
        return image, label


@dataclass(frozen=True, eq=False)
class ArrayFrame:
    """One labelled image held in memory (:func:`kunet.fit_arrays`), with :class:`Frame`'s interface.

    ``image_path``/``label_path`` are names such as ``images[3]``: they name the array in errors and in the
    records' manifest.
    """

    frame_id: str
    image: np.ndarray
    label: np.ndarray
    image_path: str
    label_path: str
    page: int = 0

    def load(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            check_image_dtype(self.image, self.image_path)
            image = as_channels(self.image, channels, self.image_path)
            label = as_label_plane(self.label, self.label_path)
        except ImageReadError as error:
            raise SourceError(str(error)) from None
        if image.shape[:2] != label.shape:
            raise SourceError(f"{self.image_path} is {image.shape[1]}x{image.shape[0]} but {self.label_path} is "
                              f"{label.shape[1]}x{label.shape[0]} (width x height)")  # fmt: skip
        return image, label


def array_frames(images, labels, prefix: str = "") -> list[ArrayFrame]:
    """Frames of in-memory images [N, H, W(, C)] (or a list of [H, W(, C)] arrays of any sizes) and labels.

    Args:
        images: uint8, uint16, int16 or float32 images (float64 is taken as float32), as they would be stored
            in image files: one dtype for all.
        labels: Integer label images of the same sizes (0/255 masks, instance ids, class ids: as
            ``labels.kind`` says); booleans are read as 0/1.
        prefix: Put before the argument names and frame ids (``val_``: the validation arrays).
    """
    if len(images) != len(labels):
        raise SourceError(f"{len(images)} {prefix}images but {len(labels)} {prefix}labels")
    if len(images) == 0:
        raise SourceError(f"no {prefix}images")
    frames = []
    for index, (image, label) in enumerate(zip(images, labels)):
        image, label = np.asarray(image), np.asarray(label)
        if image.dtype == np.float64:
            image = image.astype(np.float32)  # the net computes in float32; TIFFs of float64 are read so too
        if label.dtype == bool:
            label = label.astype(np.uint8)
        frames.append(ArrayFrame(f"{prefix}{index:05d}", image, label, f"{prefix}images[{index}]",
                                 f"{prefix}labels[{index}]"))  # fmt: skip
    return frames


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise SourceError(f"{folder}: folder not found")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in files:
                raise SourceError(
                    f"{folder}: two files share the stem {path.stem!r} ({files[path.stem].name}, {path.name})"
                )
            files[path.stem] = path
    return files


def folder_frames(images: Path, labels: Path) -> list[Frame]:
    """Pairs ``images/`` with ``labels/`` by file stem; any unpaired file is an error."""
    image_files, label_files = _image_files(images), _image_files(labels)
    if not image_files:
        raise SourceError(f"{images}: no PNG or TIFF images found")
    missing_labels = sorted(set(image_files) - set(label_files))
    if missing_labels:
        raise SourceError(
            f"{image_files[missing_labels[0]]}: no label file with stem {missing_labels[0]!r} in {labels}"
        )
    missing_images = sorted(set(label_files) - set(image_files))
    if missing_images:
        raise SourceError(
            f"{label_files[missing_images[0]]}: no image file with stem {missing_images[0]!r} in {images}"
        )
    return [Frame(stem, image_files[stem], label_files[stem]) for stem in sorted(image_files)]


def tiff_stack_frames(images: Path, labels: Path) -> list[Frame]:
    """One frame per page of a multi-page image TIFF paired with the same page of the label TIFF."""
    for path in (images, labels):
        if not path.is_file():
            raise SourceError(f"{path}: file not found")
    try:
        image_pages, label_pages = count_pages(images), count_pages(labels)
    except ImageReadError as error:
        raise SourceError(str(error)) from None
    if image_pages != label_pages:
        raise SourceError(f"{images} has {image_pages} pages but {labels} has {label_pages}")
    return [Frame(f"{images.stem}_{page:04d}", images, labels, page) for page in range(image_pages)]


_CTC_MASK = re.compile(r"^man_seg(\d+)\.tif{1,2}$")


def ctc_frames(root: Path, sequences: list[str]) -> list[Frame]:
    """Frames of a Cell Tracking Challenge dataset that have a ``man_seg`` ground-truth mask."""
    if not root.is_dir():
        raise SourceError(f"{root}: folder not found")
    frames = []
    for sequence in sequences:
        seg_dir = root / f"{sequence}_GT" / "SEG"
        if not seg_dir.is_dir():
            raise SourceError(f"{seg_dir}: ground-truth folder not found")
        for mask in sorted(seg_dir.iterdir()):
            match = _CTC_MASK.match(mask.name)
            if not match:
                continue
            number = match.group(1)
            image = root / sequence / f"t{number}.tif"
            if not image.is_file():
                raise SourceError(f"{mask}: no image t{number}.tif in {root / sequence}")
            frames.append(Frame(f"{sequence}_t{number}", image, mask))
    return frames


def _folders(config: PipelineConfig) -> list[Frame]:
    return folder_frames(config.path(config.source.images), config.path(config.source.labels))


def _tiff_stack(config: PipelineConfig) -> list[Frame]:
    return tiff_stack_frames(config.path(config.source.images), config.path(config.source.labels))


def _ctc(config: PipelineConfig) -> list[Frame]:
    return ctc_frames(config.path(config.source.root), list(config.source.sequences))


# source.kind -> frames(config): the labelled frames of one layout (docs/EXTENDING.md: adding a layout).
SOURCES: dict[str, Callable[[PipelineConfig], list[Frame]]] = {
    "folders": _folders,
    "tiff_stack": _tiff_stack,
    "ctc": _ctc,
}


def list_frames(config: PipelineConfig) -> list[Frame]:
    """The labelled frames described by ``config.source``; an empty source is an error."""
    source = config.source
    if source.kind not in SOURCES:  # validated by kunet.config
        raise SourceError(f"unknown source kind {source.kind!r} (known: {', '.join(SOURCES)})")
    frames = SOURCES[source.kind](config)
    if not frames:
        raise SourceError(f"{config.config_path or 'pipeline'}: the {source.kind} source holds no labelled frames")
    return frames


# --- label semantics -----------------------------------------------------------------------------


def carve_separation_ridges(instances: np.ndarray) -> np.ndarray:
    """Separates touching instances by a 1-px background ridge (the paper's "separation borders").

    A pixel of object ``a`` becomes background when one of its 8 neighbours belongs to an object
    ``b < a``. Only one side of each contact is carved, so the ridge is one pixel wide, and afterwards
    no two different objects are 8-adjacent.
    """
    padded = np.pad(instances, 1, mode="constant")
    height, width = instances.shape
    carve = np.zeros(instances.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            carve |= (neighbour > 0) & (neighbour < instances)
    carved = instances.copy()
    carved[carve] = 0
    return carved


def contact_borders(instances: np.ndarray, carved: np.ndarray, width: int) -> np.ndarray:
    """The object pixels within ``width`` px (8-connected) of a separation ridge: where touching objects meet.

    ``carved`` is :func:`carve_separation_ridges` of ``instances``; its ridges are the object pixels it carved.
    The ridge pixels themselves stay background, so the border class never changes what is foreground.
    """
    ridges = ((instances > 0) & (carved == 0)).astype(np.uint8)
    near = cv2.dilate(ridges, np.ones((2 * width + 1, 2 * width + 1), np.uint8)) > 0
    return near & (carved > 0)


@dataclass
class LabelledFrame:
    """A frame's class map and the objects its weight map separates."""

    classes: np.ndarray  # uint8 [H, W], class index per pixel
    objects: np.ndarray  # int32 [H, W], 0 = no object, 1..N objects (after ridge carving)
    num_objects: int


def interpret_label(label: np.ndarray, labels: LabelConfig, where: str) -> LabelledFrame:
    """Turns raw label values into class indices and objects, rejecting values the config does not declare."""
    if labels.kind == "instance":
        carved = carve_separation_ridges(label.astype(np.int32))
        classes = (carved > 0).astype(np.uint8)
        # Relabel consecutively: ids in the file may be sparse; carving can split an object in two.
        count, objects = cv2.connectedComponents(classes, connectivity=4, ltype=cv2.CV_32S)
        num_objects = count - 1
        if num_objects == 0:
            raise SourceError(f"{where}: no objects in an instance mask (all pixels are 0)")
        if labels.border_class:
            classes[contact_borders(label, carved, labels.border_width)] = 2
        return LabelledFrame(classes, objects, num_objects)

    values = labels.class_values()
    present = np.unique(label)
    unknown = sorted(set(present.tolist()) - set(values))
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:8])
        raise SourceError(f"{where}: label values {shown} are not among the declared classes {values}")
    lookup = np.zeros(int(max(present.max(), max(values))) + 1, dtype=np.uint8)
    for index, value in enumerate(values):
        lookup[value] = index
    classes = lookup[label]
    count, objects = cv2.connectedComponents((classes > 0).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    return LabelledFrame(classes, objects, count - 1)
