"""TIFF files at the level of their structure: counting pages that are really there, and streaming a float image.

OpenCV decodes a multi-page TIFF up to its first damaged page and reports success, so a stack cut short by
an interrupted copy silently lost pages. :func:`page_count` walks the chain of image file directories (one
per page) and checks that every directory and every page's pixel data lie inside the file, so a truncated
stack is reported with the first page it lost.

:func:`write_float_strips` writes a float32 gray TIFF from row strips as they are predicted: pixel data
first, the directory last, so only one strip is ever held in memory (classic TIFF below 4 GiB, BigTIFF above).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from kunet.errors import KunetError

# Field type -> NumPy dtype character (1 BYTE, 3 SHORT, 4 LONG, 16 LONG8) for the arrays read here.
_ARRAY_TYPES = {1: "u1", 3: "u2", 4: "u4", 16: "u8"}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
# (offsets tag, byte counts tag): StripOffsets/StripByteCounts and TileOffsets/TileByteCounts.
_PIXEL_DATA_TAGS = ((273, 279), (324, 325))
_SHORT, _LONG, _LONG8 = 3, 4, 16


class TiffStructureError(KunetError):
    """A TIFF whose structure is incomplete; ``page`` (1-based) is the first page that cannot be read."""

    def __init__(self, page: int, pages_seen: int, reason: str, chain_broken: bool):
        self.page, self.pages_seen, self.reason, self.chain_broken = page, pages_seen, reason, chain_broken
        total = f"at least {pages_seen}" if chain_broken else str(pages_seen)
        super().__init__(f"page {page} of {total} unreadable ({reason})")


@dataclass(frozen=True)
class _Layout:
    """Classic TIFF (4-byte offsets, 12-byte entries) or BigTIFF (8-byte offsets, 20-byte entries)."""

    endian: str
    big: bool

    @property
    def offset_format(self) -> str:
        return "Q" if self.big else "I"

    @property
    def entry_count_format(self) -> str:
        return "Q" if self.big else "H"

    @property
    def entry_size(self) -> int:
        return 20 if self.big else 12

    @property
    def inline_bytes(self) -> int:
        return 8 if self.big else 4

    def unpack(self, fmt: str, data: bytes):
        return struct.unpack(self.endian + fmt, data)[0]


_CLASSIC, _BIG = _Layout("<", big=False), _Layout("<", big=True)


def _read_header(stream) -> tuple[_Layout, int]:
    head = stream.read(16)
    endian = {b"II": "<", b"MM": ">"}.get(head[:2])
    if endian is None or len(head) < 8:
        raise ValueError("not a TIFF file (no II/MM byte-order mark)")
    magic = struct.unpack(endian + "H", head[2:4])[0]
    if magic not in (42, 43) or (magic == 43 and len(head) < 16):
        raise ValueError(f"not a TIFF file (version {magic})")
    layout = _Layout(endian, big=magic == 43)
    first = layout.unpack(layout.offset_format, head[8:16] if layout.big else head[4:8])
    return layout, first


def _read_directory(stream, layout: _Layout, offset: int, file_size: int) -> tuple[dict, int]:
    """The entries {tag: (type, count, value bytes)} of the directory at ``offset`` and the next offset.

    Raises:
        ValueError: the directory does not lie inside the file.
    """
    count_size = struct.calcsize(layout.entry_count_format)
    if offset + count_size > file_size:
        raise ValueError(f"its directory at byte {offset} lies past the end of the {file_size}-byte file")
    stream.seek(offset)
    count = layout.unpack(layout.entry_count_format, stream.read(count_size))
    end = offset + count_size + count * layout.entry_size + struct.calcsize(layout.offset_format)
    if end > file_size:
        raise ValueError(f"its directory ends at byte {end}, past the end of the {file_size}-byte file")
    block = stream.read(count * layout.entry_size)
    entries = {}
    for index in range(count):
        raw = block[index * layout.entry_size : (index + 1) * layout.entry_size]
        tag, kind = struct.unpack(layout.endian + "HH", raw[:4])
        value_count = layout.unpack(layout.offset_format, raw[4 : 4 + struct.calcsize(layout.offset_format)])
        entries[tag] = (kind, value_count, raw[-layout.inline_bytes :])
    next_offset = layout.unpack(layout.offset_format, stream.read(struct.calcsize(layout.offset_format)))
    return entries, next_offset


def _values(stream, layout: _Layout, entry, file_size: int) -> np.ndarray:
    """The integer array of one directory entry, inline or at its offset."""
    kind, count, inline = entry
    if kind not in _ARRAY_TYPES:
        raise ValueError(f"unexpected field type {kind} for pixel data locations")
    nbytes = _TYPE_SIZES[kind] * count
    if nbytes <= layout.inline_bytes:
        data = inline[:nbytes]
    else:
        where = layout.unpack(layout.offset_format, inline)
        if where + nbytes > file_size:
            raise ValueError(f"its list of pixel data locations lies past the end of the {file_size}-byte file")
        stream.seek(where)
        data = stream.read(nbytes)
    return np.frombuffer(data, layout.endian + _ARRAY_TYPES[kind]).astype(np.uint64)


def _check_pixel_data(stream, layout: _Layout, entries: dict, file_size: int) -> None:
    for offsets_tag, counts_tag in _PIXEL_DATA_TAGS:
        if offsets_tag in entries and counts_tag in entries:
            starts = _values(stream, layout, entries[offsets_tag], file_size)
            lengths = _values(stream, layout, entries[counts_tag], file_size)
            end = int((starts + lengths).max()) if starts.size else 0
            if end > file_size:
                raise ValueError(f"its pixel data ends at byte {end}, past the end of the {file_size}-byte file")


def page_count(path: str | os.PathLike) -> int:
    """The number of pages of a TIFF, each checked to lie whole inside the file.

    Raises:
        TiffStructureError: a directory or a page's pixel data lies (partly) past the end of the file, or
            the directory chain loops; names the first unreadable page.
        ValueError: not a TIFF file.
    """
    file_size = os.path.getsize(path)
    pages, problem, chain_broken, seen = 0, None, False, set()
    with open(path, "rb") as stream:
        layout, offset = _read_header(stream)
        while offset:
            if offset in seen:
                problem, chain_broken = problem or (pages + 1, "its directory loops back to an earlier page"), True
                break
            seen.add(offset)
            try:
                entries, offset = _read_directory(stream, layout, offset, file_size)
            except ValueError as error:
                problem, chain_broken = problem or (pages + 1, str(error)), True
                break
            pages += 1
            try:
                _check_pixel_data(stream, layout, entries, file_size)
            except ValueError as error:
                problem = problem or (pages, str(error))
    if problem:
        raise TiffStructureError(problem[0], max(pages, problem[0]), problem[1], chain_broken)
    return pages


def _entry(layout: _Layout, tag: int, kind: int, values: list[int], data_offset: int) -> tuple[bytes, bytes]:
    """One directory entry and the bytes it points to (empty when the values fit inline)."""
    fmt = layout.endian + {_SHORT: "H", _LONG: "I", _LONG8: "Q"}[kind] * len(values)
    payload = struct.pack(fmt, *values)
    if len(payload) <= layout.inline_bytes:
        value, extra = payload.ljust(layout.inline_bytes, b"\0"), b""
    else:
        value, extra = struct.pack(layout.endian + layout.offset_format, data_offset), payload
    head = struct.pack(layout.endian + "HH" + layout.offset_format, tag, kind, len(values))
    return head + value, extra


def _write_directory(stream, layout: _Layout, fields: list[tuple[int, int, list[int]]]) -> int:
    """Appends a directory (and the arrays it points to) at the end of ``stream``; returns its offset."""
    stream.seek(0, os.SEEK_END)
    if stream.tell() % 2:
        stream.write(b"\0")  # directories start on a word boundary
    offset = stream.tell()
    count_format = layout.endian + layout.entry_count_format
    next_format = layout.endian + layout.offset_format
    directory_size = struct.calcsize(count_format) + len(fields) * layout.entry_size + struct.calcsize(next_format)
    extra_offset, entries, extras = offset + directory_size, [], []
    for tag, kind, values in sorted(fields):
        entry, extra = _entry(layout, tag, kind, values, extra_offset)
        entries.append(entry)
        extras.append(extra)
        extra_offset += len(extra)
    stream.write(struct.pack(count_format, len(fields)) + b"".join(entries))
    stream.write(struct.pack(next_format, 0) + b"".join(extras))
    return offset


def write_float_strips(
    path: str | os.PathLike, height: int, width: int, strips: Iterable[np.ndarray], bigtiff: bool | None = None
) -> None:
    """Writes a float32 gray ``height`` x ``width`` TIFF from row strips [rows, width], top to bottom.

    Every strip but the last must have the same number of rows (TIFF's RowsPerStrip). ``bigtiff`` None
    chooses BigTIFF only when the pixels approach classic TIFF's 4 GiB limit.
    """
    if bigtiff is None:
        bigtiff = height * width * 4 > 2**32 - 2**20
    layout = _BIG if bigtiff else _CLASSIC
    offsets, counts, rows = [], [], []
    with open(path, "wb") as stream:
        # Byte order, version (42, or 43 with 8-byte offsets for BigTIFF), and the directory offset (set last).
        stream.write(b"II+\0\x08\0\0\0" + bytes(8) if layout.big else b"II*\0" + bytes(4))
        for strip in strips:
            data = np.ascontiguousarray(strip, "<f4")
            if data.ndim != 2 or data.shape[1] != width:
                raise ValueError(f"{path}: strip of shape {data.shape} for a {height} x {width} image")
            offsets.append(stream.tell())
            counts.append(data.nbytes)
            rows.append(data.shape[0])
            stream.write(data.tobytes())
        if sum(rows) != height or len(set(rows[:-1])) > 1 or (len(rows) > 1 and rows[-1] > rows[0]):
            raise ValueError(f"{path}: strips of {rows} rows do not tile {height} rows evenly")
        location = _LONG8 if layout.big else _LONG
        fields = [
            (256, _LONG, [width]), (257, _LONG, [height]), (258, _SHORT, [32]), (259, _SHORT, [1]),
            (262, _SHORT, [1]), (273, location, offsets), (277, _SHORT, [1]), (278, _LONG, [rows[0]]),
            (279, location, counts), (284, _SHORT, [1]), (339, _SHORT, [3]),
        ]  # fmt: skip
        directory = _write_directory(stream, layout, fields)
        stream.seek(8 if layout.big else 4)
        stream.write(struct.pack("<" + layout.offset_format, directory))
