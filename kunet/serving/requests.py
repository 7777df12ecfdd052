"""``kunet serve-request``: image files to a served kunet model, masks back to files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kunet._fs import atomic_write_bytes
from kunet.serving import signatures as names
from kunet.serving.client import ServingRequestError, client_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _targets(inputs: list[Path], out: Path) -> list[Path]:
    """Where each input's mask goes: ``out`` itself for one input (unless it is a folder), else
    ``out/<stem>_mask.png``."""
    if len(inputs) == 1 and not out.is_dir() and out.suffix.lower() == ".png":
        return [out]
    stems = [path.stem for path in inputs]
    if len(set(stems)) != len(stems):
        raise ServingRequestError("two inputs share a file name stem; their masks would overwrite each other")
    return [out / f"{stem}_mask.png" for stem in stems]


def _labels_png(labels: np.ndarray) -> bytes:
    from kunet.imageio import encode_png

    return encode_png(labels.astype(np.uint16 if labels.max(initial=0) > 255 else np.uint8))


def request_masks(
    url: str, inputs: list[str | os.PathLike], out: str | os.PathLike, signature: str = names.PNG_SIGNATURE,
    timeout: float = 600.0,
) -> list[Path]:  # fmt: skip
    """Sends every input to the model at ``url`` and writes the masks it returns; returns the files written.

    Args:
        url: ``http://host:8501/v1/models/<name>`` (REST) or ``grpc://host:8500/<name>`` (gRPC).
        inputs: Image files: PNG for ``segment_png``; PNG or TIFF (first page) for ``serving_default``.
        out: The mask file for one input, or a folder (``<stem>_mask.png`` per input).
        signature: ``segment_png`` (PNG sent as is, PNG returned) or ``serving_default`` (raw pixels sent,
            the ``labels`` output written as PNG).
        timeout: Seconds to wait for each answer.
    """
    if signature not in names.SIGNATURE_NAMES:
        raise ServingRequestError(f"--signature must be {' or '.join(names.SIGNATURE_NAMES)}")
    paths = [Path(path) for path in inputs]
    for path in paths:
        if not path.is_file():
            raise ServingRequestError(f"{path}: no such file")
    targets = _targets(paths, Path(out))
    client = client_for(url, timeout)
    written = []
    for path, target in zip(paths, targets):
        if signature == names.PNG_SIGNATURE:
            data = path.read_bytes()
            if not data.startswith(PNG_MAGIC):
                raise ServingRequestError(f"{path}: not a PNG file ({names.PNG_SIGNATURE} takes PNG; use "
                                          f"--signature {names.PIXELS_SIGNATURE} for other formats)")  # fmt: skip
            mask = client.segment_png(data)
        else:
            from kunet.imageio import read_image

            mask = _labels_png(client.predict(read_image(path))[names.LABELS])
        written.append(atomic_write_bytes(target, mask))
    return written
