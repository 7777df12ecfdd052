"""The fixed sets of names kunet's functions take where a caller picks one of a few, for modules that import
TensorFlow (or NumPy) themselves.

This module imports nothing, so the ``kunet`` command declares these sets as its options' choices (``--help``
lists them, a wrong name is refused by the parser before TensorFlow loads) while the module that acts on a
name imports its set from here: adding an entry here is what makes a new name reachable from both. Sets
whose own module is already light stay there: precisions (:data:`kunet.precision.PRECISIONS`), label kinds
(:data:`kunet.config.LABEL_KINDS`) and serving signatures (:data:`kunet.serving.signatures.SIGNATURE_NAMES`).
"""

from __future__ import annotations

# kunet.builders.make_strategy: the tf.distribute strategy a fit trains under.
STRATEGIES = ("default", "mirrored", "multiworker")

# kunet.records: the splits a records folder holds (each frame's frame/split; the manifest's counts).
SPLITS = ("train", "val")

# kunet.tune: name -> (metric key, minimise?) of what the threshold sweep chooses by.
OBJECTIVES = {
    "rand+pixel": ("rand_plus_pixel", True),
    "rand": ("adapted_rand_error_grown", True),
    "rand_raw": ("adapted_rand_error", True),
    "pixel": ("pixel_error", True),
    "iou": ("iou", False),
    "seg": ("seg", False),
    "ap": ("ap50", False),
    "ap50_95": ("ap50_95", False),
    # ISBI 2012: Table 1's Rand + pixel error of the rule's cut map over the split as one stack (kunet.tune).
    "leaderboard": ("leaderboard_cut_map", True),
}

# kunet.predict_files: file formats of the masks and of the probabilities prediction writes.
MASK_FORMATS = ("png", "tif")
PROBABILITY_FORMATS = ("tif", "npy", "cut")

# kunet.synthetic: the data sets ``kunet synth`` writes (write_em_dataset, write_cells_dataset).
SYNTHETIC_KINDS = ("em", "cells")

# kunet export --format: a TensorFlow Serving SavedModel version, or a bioimage.io model package.
EXPORT_FORMATS = ("tf-serving", "bioimageio")
