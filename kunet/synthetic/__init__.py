"""Synthetic microscopy datasets that kunet generates itself (for ``make demo`` and the tests).

Two generators mimic the paper's data sets closely enough that a U-Net has something real to learn,
while needing nothing but NumPy and OpenCV:

* :func:`make_em_sample` (:mod:`~kunet.synthetic.em`): serial-section EM of neural tissue in the ISBI 2012
  convention (label 0 = membrane, 255 = cell interior).
* :func:`make_cells_sample` (:mod:`~kunet.synthetic.cells`): DIC images of touching HeLa-like cells with
  uint16 instance masks in the Cell Tracking Challenge convention (0 = background, ids 1..N).

:func:`write_em_dataset` and :func:`write_cells_dataset` (:mod:`~kunet.synthetic.datasets`) lay samples out
as the real data sets are laid out (``images/slice_NN.png`` + ``labels/slice_NN.png``; ``NN/tXXX.tif`` +
``NN_GT/SEG/man_segXXX.tif``), atomically, with a ``SYNTHETIC.json`` that records how they were made. What
both generators share lives in ``_common``; this package re-exports the public names of its modules.

Every generator takes ``rng``: a seed or a ``numpy.random.Generator``; the same seed gives the same arrays.
:func:`otsu_foreground` (:mod:`~kunet.synthetic.baselines`) is the naive baseline the tests hold the data
against: a global Otsu threshold scores a foreground IoU of about 0.57-0.76 on the EM samples, and its
connected components merge most touching cells.
"""

# ``name as name``: importable from here as before the split, but not part of ``import *``.
from kunet.synthetic._common import Seed as Seed
from kunet.synthetic._common import Size as Size
from kunet.synthetic.baselines import foreground_iou, otsu_foreground
from kunet.synthetic.cells import make_cells_sample, touching_pairs
from kunet.synthetic.datasets import MARKER as MARKER
from kunet.synthetic.datasets import sample_rng, write_cells_dataset, write_em_dataset
from kunet.synthetic.em import INTERIOR as INTERIOR
from kunet.synthetic.em import MEMBRANE as MEMBRANE
from kunet.synthetic.em import EMParts, make_em_sample

__all__ = [
    "EMParts",
    "make_em_sample",
    "make_cells_sample",
    "write_em_dataset",
    "write_cells_dataset",
    "sample_rng",
    "otsu_foreground",
    "foreground_iou",
    "touching_pairs",
]
