"""The names of the signatures and tensors a kunet export serves, and the bounds its serving graph enforces.

Clients, the export and its checks spell every name from here; the signatures themselves (what each
computes, its descriptions, its warm-up request) are registered in :mod:`kunet.serving.graph`. This module
imports neither TensorFlow nor Keras, so clients stay light.

TensorFlow Serving's REST API writes a string (DT_STRING) output as ``{"b64": ...}`` only when the output's
name ends in ``_bytes`` (``kBytesTensorNameSuffix`` in its ``util/json_tensor.cc``); any other string output
is written raw into the JSON, which corrupts binary data such as PNG files. Every string tensor is therefore
named ``*_bytes``. (Inputs are base64-decoded whatever their name; the suffix on inputs is for consistency.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kunet.errors import KunetError

PIXELS_SIGNATURE = "serving_default"
PNG_SIGNATURE = "segment_png"
# Every signature an export serves (kunet.serving.graph.SIGNATURES registers what each computes); the choices
# of ``kunet serve-request --signature``, the default first.
SIGNATURE_NAMES = (PNG_SIGNATURE, PIXELS_SIGNATURE)

IMAGES = "images"
PROBABILITIES = "probabilities"
LABELS = "labels"
CLASSES = "classes"
PNG_INPUT = "png_bytes"
MASK_PNG_OUTPUT = "mask_png_bytes"


@dataclass(frozen=True)
class ServingLimits:
    """Bounds checked inside the serving graph before anything large is allocated.

    A PNG's declared width and height are read from its header before it is decoded, so a small file that
    declares a huge image (a decompression bomb) is refused in microseconds instead of exhausting memory.

    Args:
        max_pixels: Most pixels (H x W) of one image. The default, 4096 x 4096, keeps one request of
            ``max_batch`` such images within a few GB for the paper's net (see docs/SERVING.md).
        max_batch: Most images in one request (the batch dimension of ``images`` or ``png_bytes``).
    """

    max_pixels: int = 4096 * 4096
    max_batch: int = 8

    def __post_init__(self):
        if self.max_pixels < 1 or self.max_batch < 1:
            raise KunetError(f"serving limits must be positive, got max_pixels {self.max_pixels}, "
                             f"max_batch {self.max_batch}")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def string_outputs_without_bytes_suffix(signatures: dict[str, dict]) -> list[str]:
    """``signature/output`` names of DT_STRING outputs that REST would write raw (should be empty).

    Args:
        signatures: ``{signature: {"outputs": {name: dtype_name}}}``, e.g. read from a loaded SavedModel.
    """
    from kunet.serving.rules import BYTES_SUFFIX  # here, not at the top: rules imports NumPy, the CLI reads this

    return [
        f"{signature}/{name}"
        for signature, parts in signatures.items()
        for name, dtype in parts["outputs"].items()
        if dtype == "string" and not name.endswith(BYTES_SUFFIX)
    ]
