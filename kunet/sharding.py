"""Which share of a collection one task of a job array predicts: ``--shard I/N``, or ``auto`` from the scheduler.

A shard is a 0-based index ``I`` of ``N`` shards. ``auto`` reads the index (and, where the scheduler says
it, the count) from the environment, in this order:

* Slurm job arrays: ``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_MIN``, ``_MAX``, ``_STEP`` and
  ``_COUNT``. Array indices need not start at 0 (``--array=1-8``) or be consecutive (``--array=0-14:2``), so
  the shard is the task's position in the array, ``(ID - MIN) / STEP``; an array with gaps
  (``--array=1,2,9``) is refused, since no task can tell its position from its own environment.
* Kubernetes indexed Jobs: ``JOB_COMPLETION_INDEX`` (0-based). Kubernetes does not pass the Job's
  ``completions`` to its pods, so the count is given as ``auto/N``.
* ``TF_CONFIG``: the task's id among the chief and the workers, as TensorFlow's ``multi_worker_util``
  numbers them (the chief is 0, worker ``i`` is ``i + 1`` when there is a chief).

Inputs are dealt to shards by :func:`shard_members`: sorted by their key (the unique name of their first
output), then dealt round robin. The order of folder listings, of the command-line arguments and the
spelling of paths (``/scratch/x`` on one node, ``./x`` on another) change nothing, shard sizes differ by
at most one input, and neighbours in name order (often neighbours in size) land in different shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kunet.errors import KunetError

OPTION = "--shard"
USAGE = "I/N (0-based shard I of N, e.g. 0/4), auto, or auto/N"


class ShardError(KunetError):
    """A ``--shard`` value, or a scheduler environment, that names no valid shard; the message says which."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``; ``origin`` says where it came from (an option or a variable)."""

    index: int
    count: int
    origin: str = OPTION

    @property
    def label(self) -> str:
        """``shard-I-of-N``: the stem of this shard's files in ``<out>/_shards/``."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def checked_shard(index: int, count: int, origin: str = OPTION) -> Shard:
    """A :class:`Shard`, or a :class:`ShardError` naming ``origin`` if ``count < 1`` or ``index`` is out of range."""
    if count < 1:
        raise ShardError(f"{origin}: the number of shards must be at least 1, got {count}")
    if not 0 <= index < count:
        raise ShardError(f"{origin}: shard index {index} is not in 0..{count - 1} (shards are numbered from 0)")
    return Shard(index, count, origin)


def _integer(text: str, what: str, origin: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ShardError(f"{origin}: {what} must be a whole number, got {text!r}") from None


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> Shard:
    """The shard a ``--shard`` value names: ``I/N``, ``auto`` or ``auto/N`` (see the module docstring).

    Args:
        text: The option's value.
        environ: The environment ``auto`` reads (default: ``os.environ``).

    Raises:
        ShardError: a malformed value, an index outside ``0..N-1``, or ``auto`` without a usable scheduler
            environment.
    """
    index_text, slash, count_text = text.strip().partition("/")
    if index_text.strip().lower() == "auto":
        count = _integer(count_text, "the number of shards N in auto/N", OPTION) if slash else None
        return shard_from_environment(os.environ if environ is None else environ, count)
    if not slash:
        raise ShardError(f"{OPTION} must be {USAGE}; got {text!r}")
    index = _integer(index_text, "the shard index I in I/N", OPTION)
    return checked_shard(index, _integer(count_text, "the number of shards N in I/N", OPTION))


def shard_from_environment(environ: Mapping[str, str], count: int | None = None) -> Shard:
    """This task's shard from Slurm, a Kubernetes indexed Job or ``TF_CONFIG``, in that order.

    Args:
        environ: The environment variables.
        count: The number of shards if the user gave it (``auto/N``); it must agree with the scheduler's.

    Raises:
        ShardError: no scheduler variable is set, a variable is malformed, or the counts disagree.
    """
    if count is not None and count < 1:
        raise ShardError(f"{OPTION} auto/N: the number of shards must be at least 1, got {count}")
    if environ.get("SLURM_ARRAY_TASK_ID", "").strip():
        shard = _slurm_shard(environ)
    elif environ.get("JOB_COMPLETION_INDEX", "").strip():
        index = _integer(environ["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX", f"{OPTION} auto")
        if count is None:
            raise ShardError(
                f"{OPTION} auto: JOB_COMPLETION_INDEX={index} gives this pod's index but not the number of "
                "shards (Kubernetes does not pass the Job's completions to its pods); use --shard auto/N "
                "with N = spec.completions"
            )
        return checked_shard(index, count, f"JOB_COMPLETION_INDEX={index} with {OPTION} auto/{count}")
    elif environ.get("TF_CONFIG", "").strip():
        shard = _tf_config_shard(environ["TF_CONFIG"])
    else:
        raise ShardError(
            f"{OPTION} auto: none of SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or TF_CONFIG is set; "
            f"run inside a job array or give {OPTION} I/N"
        )
    if count is not None and count != shard.count:
        raise ShardError(f"{OPTION} auto/{count}: {shard.origin} makes {shard.count} shards, not {count}")
    return shard


def _slurm_shard(environ: Mapping[str, str]) -> Shard:
    origin = f"{OPTION} auto (Slurm array)"
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT")
    missing = [name for name in names if not environ.get(name, "").strip()]
    if missing:
        raise ShardError(f"{origin}: SLURM_ARRAY_TASK_ID is set but {', '.join(missing)} not; give {OPTION} I/N")
    task, low, high, count = (_integer(environ[name], name, origin) for name in names)
    step = _integer(environ.get("SLURM_ARRAY_TASK_STEP") or "1", "SLURM_ARRAY_TASK_STEP", origin)
    if step < 1 or low + (count - 1) * step != high or (task - low) % step or not low <= task <= high:
        raise ShardError(
            f"{origin}: the array's indices ({low}..{high}, {count} tasks, step {step}) are not one evenly "
            f"stepped range holding task {task}, so a task cannot tell its position; submit with "
            f"--array=0-{count - 1} or give {OPTION} I/N"
        )
    return checked_shard((task - low) // step, count, f"SLURM_ARRAY_TASK_ID={task} (array {low}-{high}:{step})")


def _tf_config_shard(text: str) -> Shard:
    origin = f"{OPTION} auto (TF_CONFIG)"
    try:
        config = json.loads(text)
        cluster, task = config.get("cluster") or {}, config.get("task") or {}
        kind, index = task.get("type"), int(task.get("index", 0))
        chiefs, workers = len(cluster.get("chief") or []), len(cluster.get("worker") or [])
    except (ValueError, TypeError, AttributeError) as error:
        raise ShardError(f"{origin}: not the JSON TensorFlow expects ({error})") from None
    if kind not in ("chief", "worker"):
        raise ShardError(f"{origin}: task type {kind!r} takes no shard; only chief and worker tasks predict")
    position = index if kind == "chief" else chiefs + index
    return checked_shard(position, chiefs + workers, f"TF_CONFIG task {kind}:{index}")


def shard_members(keys: Iterable[str], shard: Shard) -> list[str]:
    """The keys of ``shard``: sorted, then dealt round robin (position ``p`` goes to shard ``p mod N``)."""
    return sorted(set(keys))[shard.index :: shard.count]
