"""Reading and writing image files with errors that name the file and the problem.

OpenCV reads PNG and (multi-page) TIFF at 8 or 16 bit; colour comes back as BGR and is turned into RGB
here so the rest of kunet never sees channel order surprises. Writers go through a temporary file and a
rename, so an interrupted run never leaves a half-written image behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file that cannot be used; the message starts with the file's path."""


def _to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    return array


def read_pages(path: str | os.PathLike) -> list[np.ndarray]:
    """All pages of an image file (one for PNG, one or more for TIFF), RGB order, original dtype."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    if path.suffix.lower() in (".tif", ".tiff"):
        ok, pages = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
        if not ok or not pages:
            raise ImageReadError(f"{path}: unreadable or truncated TIFF")
        return [_to_rgb(page) for page in pages]
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"{path}: unreadable or truncated image")
    return [_to_rgb(image)]


def read_image(path: str | os.PathLike, page: int = 0) -> np.ndarray:
    """One page of an image file as stored (uint8/uint16/float), RGB channel order."""
    pages = read_pages(path)
    if page >= len(pages):
        raise ImageReadError(f"{path}: has {len(pages)} page(s), page {page} requested")
    return pages[page]


def count_pages(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        count = cv2.imcount(str(path))
        if count <= 0:
            raise ImageReadError(f"{path}: unreadable or truncated TIFF")
        return int(count)
    return 1


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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8/uint16 gray or RGB image."""
    array = image
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {image.shape} and dtype {image.dtype}")
    return encoded.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Writes a PNG or TIFF (by suffix) atomically; float32 arrays need TIFF."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        data = encode_png(image)
    elif suffix in (".tif", ".tiff"):
        array = image
        if array.ndim == 3 and array.shape[2] == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".tif", array)
        if not ok:
            raise ValueError(f"{path}: TIFF encoding failed for {image.shape} {image.dtype}")
        data = encoded.tobytes()
    else:
        raise ValueError(f"{path}: unsupported output format (use .png, .tif or .tiff)")
    _atomic_write(path, data)
    return path
