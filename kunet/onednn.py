"""oneDNN's filter cache for processes that only predict (``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS``).

TensorFlow's oneDNN convolutions reorder a filter into oneDNN's blocked layout on every call unless the filter
is a graph constant; with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`` they treat every filter as constant, reorder it
once and keep the copy (``AreWeightsFrozen()`` in ``tensorflow/core/util/onednn_env_vars.cc``, read once per
process, when the first oneDNN kernel is built). That is the speed of :class:`kunet.inference.Predictor`'s
``constant_weights`` without compiling the weights into the graph, so without its seconds-long first call.

The copy is never refreshed: in a process that trains, the convolutions would keep computing with the filters
they first saw. So only the ``kunet`` commands that load a model and predict (:data:`INFERENCE_COMMANDS`) turn it
on, before TensorFlow starts, and :class:`kunet.train.Trainer` refuses to run where it is on.
"""

from __future__ import annotations

import os

FROZEN_WEIGHTS_VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"

# The kunet commands whose process never changes a weight after its first prediction.
INFERENCE_COMMANDS = frozenset({"predict", "evaluate", "tune", "export", "serve-request"})


def assume_frozen_weights() -> bool:
    """Turns the filter cache on for this process unless the environment already says otherwise (``=0`` keeps it
    off); returns whether it is on. Effective only before TensorFlow builds its first oneDNN kernel."""
    os.environ.setdefault(FROZEN_WEIGHTS_VARIABLE, "1")
    return weights_assumed_frozen()


def weights_assumed_frozen() -> bool:
    """Whether ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS`` is on, as TensorFlow reads it (``ReadBoolFromEnvVar``)."""
    return os.environ.get(FROZEN_WEIGHTS_VARIABLE, "").strip().lower() in ("1", "true")
