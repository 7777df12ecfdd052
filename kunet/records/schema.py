"""What a kunet records folder holds: the example schema, the manifest's name and keys, shard checksums.

Schema (version 2; version 1 had no ``image/raw``), one ``tf.train.Example`` per frame:

=================  ======  ==============================================================
key                type    meaning
=================  ======  ==============================================================
image/png          bytes   uint8/uint16 images: the image as lossless PNG, dtype as stored (else empty)
image/raw          bytes   int16/float32 images: H*W*C little-endian values of the manifest's ``storage``
                           (int16; float16 when every value of every frame is exact in it; else float32)
image/height       int64   H
image/width        int64   W
image/channels     int64   C (1 gray, 3 RGB)
label/png          bytes   the raw label exactly as in the source file (uint8 or uint16 PNG)
classes/png        bytes   uint8 PNG of class indices after label interpretation (ridges carved)
weight/f16         bytes   weight map, float16 little-endian, H*W values (paper eq. 2)
frame/id           bytes   frame id (file stem, ``<stack>_<page>`` or ``<sequence>_t<number>``)
frame/split        bytes   ``train`` or ``val``
source/image       bytes   path of the image file
source/label       bytes   path of the label file
source/page        int64   page within a multi-page TIFF (0 otherwise)
=================  ======  ==============================================================

:func:`encode_example` and :func:`parse_example` are the two sides of this table. Records of uint8/uint16
images are written as version 1 (readable by older kunet); int16/float32 images need version 2.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from kunet.choices import SPLITS as SPLITS  # re-exported: kunet.records.SPLITS
from kunet.errors import KunetError
from kunet.imageio import encode_png
from kunet.sources import Frame

SCHEMA_VERSION = 2  # the newest this kunet writes
READABLE_SCHEMA_VERSIONS = (1, 2)
# How an image of each dtype is stored: PNG (lossless) for unsigned integers, raw bytes for the others.
PNG_DTYPES = ("uint8", "uint16")
RAW_DTYPES = ("int16", "float32")
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("counts", "image", "labels", "shards", "sources")  # what readers look up


class RecordsError(KunetError):
    """Records that cannot be built or read; the message names the file or folder."""


# The features of one example and their types: the table above, for encode_example and parse_example.
_FEATURES = {
    "image/png": "bytes",
    "image/raw": "bytes",
    "image/height": "int64",
    "image/width": "int64",
    "image/channels": "int64",
    "label/png": "bytes",
    "classes/png": "bytes",
    "weight/f16": "bytes",
    "frame/id": "bytes",
    "frame/split": "bytes",
    "source/image": "bytes",
    "source/label": "bytes",
    "source/page": "int64",
}


def _feature(kind: str, value):
    import tensorflow as tf

    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def image_storage(dtype: str, exact_in_float16: bool = False) -> str:
    """How images of ``dtype`` are stored: ``png``, or the dtype of their raw bytes."""
    if dtype in PNG_DTYPES:
        return "png"
    if dtype == "float32":
        return "float16" if exact_in_float16 else "float32"
    if dtype in RAW_DTYPES:
        return dtype
    raise RecordsError(f"records cannot store {dtype} images (they store {', '.join(PNG_DTYPES + RAW_DTYPES)})")


def schema_version(storage: str) -> int:
    """The oldest schema that holds images stored as ``storage`` (older kunet reads version 1)."""
    return 1 if storage == "png" else 2


def exact_in_float16(image) -> bool:
    """Whether every value of a float32 image survives float16 (then it is stored in half the bytes)."""
    with np.errstate(over="ignore"):
        return bool(np.array_equal(image.astype(np.float16).astype(np.float32), image))


def image_format(manifest: dict) -> tuple[str, int, str]:
    """``(dtype, channels, storage)`` of a manifest's images, the arguments of :func:`parse_example`."""
    image = manifest["image"]
    return image["dtype"], image["channels"], image.get("storage", "png")


def encode_example(frame: Frame, split: str, image, label, classes, weights, storage: str = "png") -> bytes:
    """One frame as a serialised ``tf.train.Example`` (image [H, W, C], raw label, class map, weight map);
    ``storage`` is :func:`image_storage`'s answer for the records' images."""
    import tensorflow as tf

    height, width = label.shape
    raw = b"" if storage == "png" else image.astype(f"<{np.dtype(storage).str[1:]}").tobytes()
    values = {
        "image/png": encode_png(image) if storage == "png" else b"",
        "image/raw": raw,
        "image/height": height,
        "image/width": width,
        "image/channels": image.shape[2],
        "label/png": encode_png(label),
        "classes/png": encode_png(classes),
        "weight/f16": weights.astype("<f2").tobytes(),
        "frame/id": frame.frame_id.encode(),
        "frame/split": split.encode(),
        "source/image": str(frame.image_path).encode(),
        "source/label": str(frame.label_path).encode(),
        "source/page": frame.page,
    }
    features = {key: _feature(_FEATURES[key], value) for key, value in values.items()}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _sha256(path: str | os.PathLike) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(str(path), "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_example(serialized, image_dtype: str = "uint8", channels: int = 1, storage: str = "png") -> dict:
    """Parses one serialised example into decoded tensors (image as ``image_dtype``, label, classes, weight,
    ids); ``storage`` as in the manifest (:func:`image_format`)."""
    import tensorflow as tf

    types = {"bytes": tf.string, "int64": tf.int64}
    # Version-1 examples have no image/raw: it defaults to empty.
    spec = {key: tf.io.FixedLenFeature([], types[kind], default_value="" if key == "image/raw" else None)
            for key, kind in _FEATURES.items()}  # fmt: skip
    parsed = tf.io.parse_single_example(serialized, spec)
    height, width = tf.cast(parsed["image/height"], tf.int32), tf.cast(parsed["image/width"], tf.int32)
    if storage == "png":
        image = tf.io.decode_png(parsed["image/png"], channels=channels, dtype=tf.as_dtype(image_dtype))
    else:
        values = tf.io.decode_raw(parsed["image/raw"], tf.as_dtype(storage), little_endian=True)
        image = tf.cast(values, tf.as_dtype(image_dtype))
    weight = tf.reshape(tf.io.decode_raw(parsed["weight/f16"], tf.float16, little_endian=True), [height, width])
    return {
        "image": tf.reshape(image, [height, width, channels]),
        "label_png": parsed["label/png"],
        "classes": tf.reshape(tf.io.decode_png(parsed["classes/png"], channels=1), [height, width]),
        "weight": tf.cast(weight, tf.float32),
        "frame_id": parsed["frame/id"],
        "split": parsed["frame/split"],
        "source_image": parsed["source/image"],
        "source_label": parsed["source/label"],
        "source_page": parsed["source/page"],
    }
