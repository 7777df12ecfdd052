"""Reading and writing image files with errors that name the file and the problem.

OpenCV reads PNG and (multi-page) TIFF at 8 or 16 bit; colour comes back as BGR and is turned into RGB
here so the rest of kunet never sees channel order surprises. A TIFF's pages are first counted from its
structure (:mod:`kunet.tiff`), so a stack cut short is an error instead of fewer pages. Writers go through
a temporary file and a rename (:mod:`kunet._fs`), so an interrupted run or a full disk never leaves a
half-written image behind, and outputs get the usual permissions of the user's umask.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from kunet import tiff, uris
from kunet._fs import atomic_write_bytes
from kunet.errors import KunetError

# Lossless formats: the only ones accepted for training images and labels.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
# Prediction also reads JPEG and BMP (OpenCV decodes them; JPEG's loss matters for labels, not for inputs).
READABLE_SUFFIXES = IMAGE_SUFFIXES + (".jpg", ".jpeg", ".bmp")


class ImageReadError(KunetError):
    """An image file that cannot be used; the message starts with the file's path."""


def _to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return array


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Keeps libtiff/libpng complaints off the terminal: kunet reports a bad file in its own words."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def iter_pages(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The pages of an image file one at a time (one for PNG/JPEG/BMP, one or more for TIFF), RGB order,
    original dtype; a long stack is never held in memory whole.

    Raises:
        ImageReadError: missing, empty, unreadable, or a TIFF with pages cut off (naming the first lost page),
            checked before the first page is returned.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    if not _is_tiff(path):
        data = np.fromfile(str(path), dtype=np.uint8)
        with _quiet_opencv():
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ImageReadError(f"{path}: unreadable or truncated image")
        yield _to_rgb(image)
        return
    expected = count_pages(path)
    for page in range(expected):
        with _quiet_opencv():
            ok, decoded = cv2.imreadmulti(str(path), page, 1, flags=cv2.IMREAD_UNCHANGED)
        if not ok or len(decoded) != 1:
            raise ImageReadError(f"{path}: damaged TIFF: page {page + 1} of {expected} cannot be decoded")
        yield _to_rgb(decoded[0])


def read_pages(path: str | os.PathLike) -> list[np.ndarray]:
    """All pages of an image file as a list (see :func:`iter_pages`)."""
    return list(iter_pages(path))


def read_image(path: str | os.PathLike, page: int = 0) -> np.ndarray:
    """One page of an image file as stored (uint8/uint16/float), RGB channel order."""
    pages = read_pages(path)
    if page >= len(pages):
        raise ImageReadError(f"{path}: has {len(pages)} page(s), page {page} requested")
    return pages[page]


def count_pages(path: str | os.PathLike) -> int:
    """Pages in an image file: 1, or a TIFF's pages, each checked to lie whole inside the file."""
    path = Path(path)
    if not _is_tiff(path):
        return 1
    try:
        return tiff.page_count(path)
    except tiff.TiffStructureError as error:
        raise ImageReadError(f"{path}: truncated TIFF: {error}") from None
    except ValueError as error:
        raise ImageReadError(f"{path}: unreadable TIFF: {error}") from None


def as_channels(image: np.ndarray, channels: int, where: str) -> np.ndarray:
    """Returns ``image`` as [H, W, channels]; gray stored as identical RGB channels is accepted for 1."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == channels:
        return image
    if (
        channels == 1
        and image.shape[2] == 3
        and np.array_equal(image[..., :1], image[..., 1:2])
        and (np.array_equal(image[..., :1], image[..., 2:3]))
    ):
        return image[..., :1]
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    raise ImageReadError(
        f"{where}: has {image.shape[2]} channel(s), the pipeline expects {channels} (set image.channels)"
    )


def check_image_dtype(image: np.ndarray, where: str) -> None:
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{where}: images must be 8- or 16-bit unsigned integers, got {image.dtype}")


def as_label_plane(label: np.ndarray, where: str) -> np.ndarray:
    """A label image as a 2-D unsigned integer array; rejects float, negative and colour labels."""
    if label.ndim == 3:
        if label.shape[2] == 1 or all(np.array_equal(label[..., 0], label[..., c]) for c in range(1, 3)):
            label = label[..., 0]
        else:
            raise ImageReadError(f"{where}: colour label image; labels must be single-channel integers")
    if np.issubdtype(label.dtype, np.floating):
        raise ImageReadError(f"{where}: float label image ({label.dtype}); labels must be integers")
    if np.issubdtype(label.dtype, np.signedinteger):
        if label.size and label.min() < 0:
            raise ImageReadError(f"{where}: negative label values (min {label.min()})")
        if label.size and label.max() > np.iinfo(np.uint16).max:
            raise ImageReadError(f"{where}: label values above 65535 are not supported")
        label = label.astype(np.uint16 if label.max() > 255 else np.uint8)
    if label.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{where}: unsupported label dtype {label.dtype}")
    return label


@contextlib.contextmanager
def naming_errors(path: str | os.PathLike) -> Iterator[None]:
    """Gives an OSError raised while writing ``path`` that path as its file name.

    A failed ``write()`` (a full disk) names no file, and a failed temporary names a hidden sibling; the
    user wants to hear which output could not be written.
    """
    path = Path(path)
    try:
        yield
    except OSError as error:
        named = error.filename is not None and not Path(error.filename).name.startswith(f".{path.name}.")
        if named or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error


def write_npy_strips(path: str | os.PathLike, shape: tuple[int, ...], dtype, strips: Iterable[np.ndarray]) -> None:
    """Writes a ``.npy`` array of ``shape`` from row strips [rows, ...] given top to bottom (one strip in memory)."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    rows = 0
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, header)
        for strip in strips:
            stream.write(np.ascontiguousarray(strip, dtype).tobytes())
            rows += strip.shape[0]
    if rows != shape[0]:
        raise ValueError(f"{path}: strips gave {rows} rows for an array of shape {shape}")


def _encode(image: np.ndarray, extension: str, where: str, reuse: bool = False) -> np.ndarray:
    """The encoded file (PNG or TIFF) as a uint8 array, RGB turned into OpenCV's BGR (in place if ``reuse``)."""
    array = image
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR, dst=array if reuse else None)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    ok, encoded = cv2.imencode(extension, array)
    if not ok:
        raise ValueError(f"{where}: encoding failed for an array of shape {image.shape} and dtype {image.dtype}")
    return encoded


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8/uint16 gray or RGB image."""
    return _encode(image, ".png", "PNG").tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray, reuse: bool = False) -> Path:
    """Writes a PNG or TIFF (by suffix) atomically; float32 arrays need TIFF.

    Args:
        path: The file to write.
        image: Gray [H, W] or RGB [H, W, 3].
        reuse: The caller is done with ``image``: its channels may be reordered in place instead of copied
            (saves 3 bytes per pixel for a large RGB overlay).
    """
    path = uris.location(path)  # a URI (a remote run's training.png) stays a string
    suffix = Path(uris.name(path)).suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise ValueError(f"{path}: unsupported output format (use .png, .tif or .tiff)")
    encoded = _encode(image, ".png" if suffix == ".png" else ".tif", str(path), reuse)
    with naming_errors(path):
        atomic_write_bytes(path, memoryview(encoded))  # no bytes copy of a large encoded image
    return path
