"""kunet: the U-Net of Ronneberger, Fischer & Brox (2015) for microscopy segmentation.

The public API, for notebooks and scripts (each name is imported on first use, so ``import kunet`` stays
fast and does not import TensorFlow):

* :class:`UNet` — the Keras model (the paper's valid-padding net by default);
* :func:`load_pipeline` — a pipeline TOML as a :class:`PipelineConfig`;
* :func:`build_records` — labelled images as sharded TFRecords with the paper's weight maps;
* :func:`fit`, :func:`fit_arrays`, :class:`Trainer` — training from records, or from arrays in memory;
* :class:`Segmenter` — overlap-tile prediction of images of any size;
* :func:`evaluate` — a model scored on a records split;
* :func:`export` — a versioned SavedModel for TensorFlow Serving.

Example:
    >>> import kunet
    >>> kunet.fit_arrays(images, masks, "runs/cells", epochs=10)
    >>> result = kunet.Segmenter("runs/cells").segment(image)
    >>> kunet.export("runs/cells", "cells")   # saved_models/cells/1

``docs/NOTEBOOK.md`` walks through arrays -> records -> fit -> segment -> export.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it; imported on first attribute access (PEP 562).
_PUBLIC = {
    "UNet": "kunet.model",
    "PipelineConfig": "kunet.config",
    "load_pipeline": "kunet.config",
    "build_records": "kunet.records",
    "Trainer": "kunet.train",
    "fit": "kunet.fitting",
    "fit_arrays": "kunet.fitting",
    "Segmenter": "kunet.segmenter",
    "evaluate": "kunet.evaluation",
    "export": "kunet.serving.export",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kunet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
