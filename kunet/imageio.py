"""Reading and writing image files with errors that name the file and the problem.

OpenCV reads PNG, JPEG and BMP at 8 or 16 bit; colour comes back as BGR and is turned into RGB here so the
rest of kunet never sees channel order surprises. TIFF goes through ``tifffile``: any dtype (uint8, uint16,
int16, float32; float64 is read as float32), with the axes of the file kept (ImageJ hyperstacks ``TZCYX``,
OME-TIFF, or axes declared by the caller): a file yields one image per plane (every combination of its Z,
T and other non-channel axes), and channels, whether samples of a pixel or separate pages, are the last axis
of that image. Planes are read one at a time (memory-mapped when the data allow), so a long stack is never
held whole. A TIFF's pages are first checked against its structure (:mod:`kunet.tiff`), so a stack cut
short is an error naming the first lost page instead of fewer images. Writers go through a temporary file
and a rename (:mod:`kunet._fs`), so an interrupted run or a full disk never leaves a half-written image
behind, and outputs get the usual permissions of the user's umask.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

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


# Axes letters that make the channels of one image: C (channels, often separate pages) and S (samples of a
# pixel, e.g. RGB). Y and X are the image; every other axis (Z, T, and tifffile's Q/I/E/...) makes planes.
CHANNEL_AXES = "CS"
# Dtypes a TIFF may give as they are; float64 and float16 are read as float32.
_FLOAT_AS_FLOAT32 = (np.float64, np.float16)


@dataclass(frozen=True)
class TiffLayout:
    """The first image series of a TIFF: its axes (as stored or as declared), shape, dtype and resolution.

    ``planes`` images come out of the file, each [Y, X] or [Y, X, C] with ``channels`` channels (C and S
    together, in file order).
    """

    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype
    pages: int  # TIFF pages (directories) of the series, in C order over the leading axes
    memory_mappable: bool
    resolution: dict  # tifffile.imwrite keywords: resolution, resolutionunit, and ImageJ spacing/unit

    @property
    def plane_axes(self) -> str:
        return "".join(axis for axis in self.axes if axis not in "YX" + CHANNEL_AXES)

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return tuple(size for axis, size in zip(self.axes, self.shape) if axis in self.plane_axes)

    @property
    def planes(self) -> int:
        return math.prod(self.plane_shape)

    @property
    def channels(self) -> int:
        return math.prod(size for axis, size in zip(self.axes, self.shape) if axis in CHANNEL_AXES)


def _resolution(tif: tifffile.TiffFile) -> dict:
    """The first page's XResolution/YResolution/ResolutionUnit and ImageJ spacing/unit, as imwrite keywords."""
    page, found = tif.pages.first, {}
    tags = page.tags
    if "XResolution" in tags and "YResolution" in tags:
        found["resolution"] = (tags["XResolution"].value, tags["YResolution"].value)
        if "ResolutionUnit" in tags:
            found["resolutionunit"] = int(tags["ResolutionUnit"].value)
    metadata = tif.imagej_metadata or {}
    found["imagej"] = {key: metadata[key] for key in ("spacing", "unit", "finterval") if key in metadata}
    return found


_EXAMPLE_AXES = {2: "YX", 3: "ZYX", 4: "ZCYX", 5: "TZCYX", 6: "TZCYXS"}


def _declared_axes(axes: str, shape: tuple[int, ...], stored: str, where: str) -> str:
    axes = axes.upper()
    if len(axes) != len(shape) or len(set(axes)) != len(axes) or "Y" not in axes or "X" not in axes:
        example = _EXAMPLE_AXES.get(len(shape), "TZCYX")
        raise ImageReadError(
            f"{where}: --axes {axes} does not fit the file's {len(shape)} axes {stored} of shape "
            f"{'x'.join(map(str, shape))}: name each axis once, with Y and X (e.g. {example})"
        )
    if axes[-2:] != "YX" and axes[-3:] not in ("YXS", "YXC"):
        raise ImageReadError(f"{where}: --axes {axes}: Y and X must be the last axes (a channel axis may follow)")
    return axes


def tiff_layout(path: str | os.PathLike, axes: str | None = None) -> TiffLayout:
    """The layout of a TIFF's first series (see :class:`TiffLayout`); ``axes`` declares its axes instead of
    the file's own (same number of axes as the file's, e.g. ``ZCYX`` for a 4-D stack tifffile calls ``QQYX``)."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, stored = tuple(series.shape), series.axes
            if len(shape) < 2:
                raise ImageReadError(f"{path}: not an image (TIFF series of shape {shape})")
            declared = _declared_axes(axes, shape, stored, str(path)) if axes else stored
            mappable = series.dataoffset is not None and tif.pages.first.is_memmappable
            dtype = np.dtype(series.dtype)
            return TiffLayout(declared, shape, dtype, len(series), mappable, _resolution(tif))
    except ImageReadError:
        raise
    except Exception as error:  # tifffile's errors (TiffFileError, ValueError, struct errors) name no file
        raise ImageReadError(f"{path}: unreadable TIFF: {error}") from None


def _plane(tif: tifffile.TiffFile, layout: TiffLayout, mapped, plane: int, channel: int | None) -> np.ndarray:
    """Image ``plane`` of the file as [Y, X] or [Y, X, C] (one channel: [Y, X]), read alone."""
    fixed = dict(zip(layout.plane_axes, np.unravel_index(plane, layout.plane_shape))) if layout.plane_axes else {}
    channel_axes = [axis for axis in layout.axes if axis in CHANNEL_AXES]
    if channel is not None and len(channel_axes) == 1:
        fixed[channel_axes[0]] = channel
    index = tuple(int(fixed[axis]) if axis in fixed else slice(None) for axis in layout.axes)
    if mapped is not None:
        block = np.array(mapped[index])
    else:
        block = _read_pages(tif, layout, index)
    kept = [axis for axis, item in zip(layout.axes, index) if isinstance(item, slice)]
    order = [kept.index("Y"), kept.index("X")] + [i for i, axis in enumerate(kept) if axis in CHANNEL_AXES]
    block = block.transpose(order)
    block = block.reshape(block.shape[:2] + ((math.prod(block.shape[2:]),) if block.ndim > 2 else ()))
    if channel is not None and block.ndim == 3:
        block = block[..., channel]
    if block.dtype in _FLOAT_AS_FLOAT32:
        block = block.astype(np.float32)
    return np.ascontiguousarray(block)


def _read_pages(tif: tifffile.TiffFile, layout: TiffLayout, index: tuple) -> np.ndarray:
    """The part of the series at ``index`` (ints and full slices), decoding only the pages it lies in."""
    leading, count = 0, 1
    while count < layout.pages and leading < len(layout.shape):
        count *= layout.shape[leading]
        leading += 1
    if count != layout.pages:  # pages that do not split the leading axes: read the series (rare, small files)
        return np.asarray(tif.asarray(series=0).reshape(layout.shape)[index])
    if not leading:  # one page holds the whole series
        return np.asarray(tif.asarray(key=0, series=0).reshape(layout.shape)[index])
    ranges = [range(size) if isinstance(item, slice) else [item] for item, size in zip(index, layout.shape)]
    grid = np.stack(np.meshgrid(*ranges[:leading], indexing="ij"), axis=-1).reshape(-1, leading)
    keys = np.ravel_multi_index(tuple(grid.T), layout.shape[:leading]).tolist()
    data = tif.asarray(key=keys, series=0).reshape([len(r) for r in ranges[:leading]] + list(layout.shape[leading:]))
    inner = tuple(0 if isinstance(item, int) else slice(None) for item in index[:leading]) + index[leading:]
    return data[inner]


def _check_channel(layout: TiffLayout, channel: int | None, where: str) -> None:
    if channel is not None and not 0 <= channel < max(layout.channels, 1):
        raise ImageReadError(
            f"{where}: --channel {channel} is not in 0..{layout.channels - 1} (axes {layout.axes}, "
            f"{layout.channels} channel(s))"
        )


def iter_pages(path: str | os.PathLike, axes: str | None = None, channel: int | None = None) -> Iterator[np.ndarray]:
    """The images of a file one at a time: one for PNG/JPEG/BMP, one per plane for TIFF (see
    :class:`TiffLayout`), RGB order, the dtype as stored (float64 as float32); a long stack is never held
    in memory whole.

    Args:
        path: The image file.
        axes: TIFF only: the file's axes declared (e.g. ``ZCYX``), instead of what the file says.
        channel: Only this channel (0-based) of each image, which then is [Y, X].

    Raises:
        ImageReadError: missing, empty, unreadable, or a TIFF with pages cut off (naming the first lost page),
            checked before the first image is returned.
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
        image = _to_rgb(image)
        if channel is not None:
            channels = image.shape[2] if image.ndim == 3 else 1
            if not 0 <= channel < channels:
                raise ImageReadError(f"{path}: --channel {channel} is not in 0..{channels - 1}")
            image = image[..., channel] if image.ndim == 3 else image
        yield image
        return
    count_pages(path)  # the structure check: a truncated stack is named before any image is read
    layout = tiff_layout(path, axes)
    _check_channel(layout, channel, str(path))
    yield from _tiff_planes(path, layout, channel)


def _tiff_planes(path: Path, layout: TiffLayout, channel: int | None) -> Iterator[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        mapped = None
        if layout.memory_mappable:
            with contextlib.suppress(ValueError, OSError):
                mapped = tifffile.memmap(path, series=0, mode="r").reshape(layout.shape)
        for plane in range(layout.planes):
            try:
                image = _plane(tif, layout, mapped, plane, channel)
            except Exception as error:
                raise ImageReadError(
                    f"{path}: damaged TIFF: image {plane + 1} of {layout.planes} cannot be decoded ({error})"
                ) from None
            yield image


def read_pages(path: str | os.PathLike, axes: str | None = None, channel: int | None = None) -> list[np.ndarray]:
    """All images of a file as a list (see :func:`iter_pages`)."""
    return list(iter_pages(path, axes, channel))


def read_image(
    path: str | os.PathLike, page: int = 0, axes: str | None = None, channel: int | None = None
) -> np.ndarray:
    """One image of a file as stored (uint8/uint16/int16/float32), RGB channel order; ``page`` counts the
    images :func:`iter_pages` yields (a TIFF's planes)."""
    path = Path(path)
    if _is_tiff(path) and path.is_file() and path.stat().st_size:
        count_pages(path)
        layout = tiff_layout(path, axes)
        _check_channel(layout, channel, str(path))
        if page >= layout.planes:
            raise ImageReadError(f"{path}: has {layout.planes} image(s), image {page} requested")
        with tifffile.TiffFile(path) as tif:
            try:
                return _plane(tif, layout, None, page, channel)
            except Exception as error:
                raise ImageReadError(f"{path}: damaged TIFF: image {page + 1} cannot be decoded ({error})") from None
    pages = read_pages(path, axes, channel)
    if page >= len(pages):
        raise ImageReadError(f"{path}: has {len(pages)} page(s), page {page} requested")
    return pages[page]


def count_pages(path: str | os.PathLike, axes: str | None = None) -> int:
    """Images in a file: 1, or a TIFF's planes (its pages, each checked to lie whole inside the file, unless
    pages are channels or the file's axes say otherwise)."""
    path = Path(path)
    if not _is_tiff(path):
        return 1
    try:
        tiff.page_count(path)
    except tiff.TiffStructureError as error:
        raise ImageReadError(f"{path}: truncated TIFF: {error}") from None
    except ValueError as error:
        raise ImageReadError(f"{path}: unreadable TIFF: {error}") from None
    return tiff_layout(path, axes).planes


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


# What prediction takes and records store (kunet.preprocess.raw_to_unit says how each reaches the net's [0, 1]
# range; kunet.records.schema.image_storage how records keep each losslessly).
PREDICTABLE_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


def check_image_dtype(image: np.ndarray, where: str) -> None:
    """Refuses an image kunet cannot take: other dtypes, and float images with NaN or infinite values."""
    if image.dtype not in PREDICTABLE_DTYPES:
        raise ImageReadError(
            f"{where}: images must be uint8, uint16, int16 or float32 (float64 is read as float32), got {image.dtype}"
        )
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise ImageReadError(f"{where}: float image with NaN or infinite values")


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
