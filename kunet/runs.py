"""Run directories: their layout, the files read and written in them, and the lock that protects them.

One home for the run-directory convention (as nnU-Net keeps its output-folder convention in one module):
``kunet fit`` writes runs, and ``tune``, ``evaluate``, ``predict``, ``export`` and the demo read them,
all through :class:`RunPaths` and the functions here. No training code is imported.

Layout::

    runs/NAME/
      config.json          pipeline settings and the records used
      state.json           step, epoch, best metric, status (rewritten atomically)
      checkpoints/         tf.train.Checkpoint: weights, optimizer state, step, running epoch loss
      last.keras           model after the latest validation (weights + inference metadata)
      best.keras           model with the best validation metric so far
      history.csv          one row per epoch: loss, learning rate, validation metrics, time
      training.png         loss and validation curves, refreshed every epoch
      tensorboard/         scalars and image summaries (input, prediction, label)
      tune.json            the sweep of ``kunet tune`` and the rule it chose
      run.lock             flock-ed by the fit (or tune) working in the run; holds its pid

Protection: a fresh fit refuses a directory that already holds a run; a second fit (or tune) of a run being
written fails at once naming the holder's pid (:func:`locked_run`); temporaries a killed run left are
removed under the lock (:func:`remove_run_temporaries`).

A run directory may be a URI (``gs://bucket/runs/x``, any ``tf.io.gfile`` scheme; :mod:`kunet.uris`): every
file is then read and written through ``tf.io.gfile`` and still replaced through a temporary and a rename.
An object store has no locks, so a remote run is not locked: one fit per remote run is the user's rule (a
multi-worker job's workers count as one fit: only the chief writes), and a killed fit's temporaries there
are left in place (nothing can tell them from a running fit's).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kunet import uris
from kunet._fs import (
    LockHeldError,
    atomic_write_json,
    atomic_write_text,
    check_unlocked,
    exclusive_lock,
    remove_paths,
    stale_temporaries,
)
from kunet.errors import KunetError

HISTORY_FIELDS = ["epoch", "step", "loss", "learning_rate", "seconds"]
# A directory holding any of these is a run: a fresh fit refuses it (--resume continues it).
RUN_FILES = ("config.json", "state.json", "checkpoints", "history.csv", "best.keras", "last.keras")
# The models a run directory offers, in the order a run directory given as a model is read.
MODEL_FILES = ("best.keras", "last.keras")
# Fixed temporary names of run files written by kunet versions before kunet._fs (which adds a random part).
_LEGACY_TEMPORARIES = (".*.part", ".*.part.keras", ".*.tune.keras")


class RunError(KunetError):
    """A run directory that cannot be started or resumed; the message names it."""


@dataclass(frozen=True)
class RunPaths:
    """The files of the run directory ``root``: :class:`~pathlib.Path` objects, or URI strings for a remote run."""

    root: Path | str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", uris.location(self.root))

    @property
    def remote(self) -> bool:
        return uris.is_remote(self.root)

    def _file(self, name: str) -> Path | str:
        return uris.join(self.root, name)

    config = property(lambda self: self._file("config.json"))
    state = property(lambda self: self._file("state.json"))
    checkpoints = property(lambda self: self._file("checkpoints"))
    last_model = property(lambda self: self._file("last.keras"))
    best_model = property(lambda self: self._file("best.keras"))
    history = property(lambda self: self._file("history.csv"))
    plot = property(lambda self: self._file("training.png"))
    tensorboard = property(lambda self: self._file("tensorboard"))
    tune_report = property(lambda self: self._file("tune.json"))
    lock = property(lambda self: self._file("run.lock"))

    def models(self) -> list[Path | str]:
        """The run's ``.keras`` files that exist, best first."""
        return [self._file(name) for name in MODEL_FILES if uris.isfile(self._file(name))]

    def existing_run_files(self) -> list[str]:
        """Which of a run's files this directory already holds (none for a fresh run)."""
        return [name for name in RUN_FILES if uris.exists(self._file(name))]


# --- the run's settings and state ----------------------------------------------------------------


def write_run_config(paths: RunPaths, config, records_dir, records_weight_map: dict | None) -> None:
    """``config.json``: the pipeline, where its paths resolve, the records, and the weight map they hold.

    The weight map is baked into the records, which ``--records`` may take from another pipeline's build:
    keep what the net actually trained on, not only what was configured.
    """
    atomic_write_json(
        paths.config,
        {
            "pipeline": config.to_dict(),
            "base_dir": config.base_dir,
            "records": str(records_dir),
            "records_weight_map": records_weight_map,
        },
    )


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """A run's ``config.json`` as written by :func:`write_run_config`, checked for the entries readers use."""
    paths = RunPaths(run_dir)
    if not uris.isfile(paths.config):
        raise RunError(f"{run_dir}: not a kunet run (no config.json)")
    try:
        saved = json.loads(uris.read_text(paths.config))
        saved["pipeline"], saved["records"]  # noqa: B018 - the entries every reader needs
    except (ValueError, KeyError, TypeError) as error:  # not JSON, or an entry missing
        raise RunError(f"{paths.config}: damaged or not a kunet run configuration ({error!r})") from None
    return saved


def load_run_config(run_dir: str | os.PathLike):
    """The configuration (a :class:`~kunet.config.PipelineConfig`) and records folder a run was started with."""
    from kunet.config import pipeline_from_dict

    saved = read_run_config(run_dir)
    where = str(RunPaths(run_dir).config)
    # uris.location keeps a remote records URI a string (Path would fold gs:// into gs:/).
    return pipeline_from_dict(saved["pipeline"], saved.get("base_dir", "."), where=where), uris.location(
        saved["records"]
    )


def read_state(paths: RunPaths) -> dict:
    """``state.json`` (step, epoch, status, best metric), or ``{}`` for a run that has none yet."""
    return json.loads(uris.read_text(paths.state)) if uris.isfile(paths.state) else {}


def write_state(paths: RunPaths, state: dict) -> None:
    atomic_write_json(paths.state, state)


# --- history.csv ---------------------------------------------------------------------------------


def read_history(paths: RunPaths) -> list[dict]:
    if not uris.exists(paths.history):
        return []
    return list(csv.DictReader(io.StringIO(uris.read_text(paths.history), newline="")))


def write_history(paths: RunPaths, rows: list[dict]) -> None:
    """Rewrites ``history.csv`` atomically; columns are the fixed ones, then every metric seen, in order."""
    fields = list(HISTORY_FIELDS)
    for row in rows:
        fields += [key for key in row if key not in fields]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths.history, text.getvalue())


def append_history(paths: RunPaths, row: dict) -> None:
    write_history(paths, read_history(paths) + [{key: str(value) for key, value in row.items()}])


def truncate_history(paths: RunPaths, completed_epochs: int) -> None:
    """Drops rows of epochs a resumed run will redo (written after the checkpoint it resumes from)."""
    write_history(paths, [row for row in read_history(paths) if int(row["epoch"]) <= completed_epochs])


# --- protection ----------------------------------------------------------------------------------


def refuse_existing_run(paths: RunPaths) -> None:
    """A fresh fit never writes into a run: it would mix two runs' checkpoints and history."""
    found = paths.existing_run_files()
    if found:
        raise RunError(
            f"{paths.root}: a run already exists here ({', '.join(found)}); continue it with "
            f"--resume {paths.root}, or choose another --run-dir"
        )


def _busy(root: Path | str, error: LockHeldError) -> RunError:
    holder = f"pid {error.holder}" if error.holder else "pid unknown"
    return RunError(
        f"{root}: in use by another kunet process ({holder}); wait for it to end, or use another run directory"
    )


def check_run_free(root: str | os.PathLike) -> None:
    """Raises :class:`RunError` naming the holder if a fit (or tune) is working in ``root`` now."""
    paths = RunPaths(root)
    if paths.remote:  # no locks on an object store (see the module's docstring)
        return
    try:
        check_unlocked(paths.lock)
    except LockHeldError as error:
        raise _busy(paths.root, error) from None


@contextlib.contextmanager
def locked_run(root: str | os.PathLike) -> Iterator[None]:
    """Holds the run directory's lock for the ``with`` block: every command that writes a run (fit, tune)
    takes it, so a second one fails at once instead of mixing its files into the first one's."""
    paths = RunPaths(root)
    stack = contextlib.ExitStack()
    try:
        if not paths.remote:  # no locks on an object store (see the module's docstring)
            stack.enter_context(exclusive_lock(paths.lock))
    except LockHeldError as error:
        raise _busy(paths.root, error) from None
    with stack:
        yield


def remove_run_temporaries(paths: RunPaths) -> list[Path]:
    """Removes what a killed fit or tune left in a run directory: hidden temporaries of its files (also the
    fixed names older versions used) and TensorFlow's unfinished checkpoint folders and index files.

    Call it only while holding :func:`locked_run`: every process that writes a run holds that lock, so
    nothing found here can still be in use. A remote run has no lock, so nothing is removed there.
    """
    if paths.remote:
        return []
    stale = set(stale_temporaries(paths.root))
    stale.update(path for pattern in _LEGACY_TEMPORARIES for path in paths.root.glob(pattern))
    stale.update(paths.checkpoints.glob("*_temp"))  # tf.train.Checkpoint writes <prefix>_temp/ first
    stale.update(paths.checkpoints.glob("checkpoint.tmp*"))  # ... and its index through a temporary
    return remove_paths(sorted(stale))


# --- a model, whatever form it is given in -------------------------------------------------------


class ModelLoadError(KunetError):
    """A path that is not a usable model; the message names it and says what was expected."""


def resolve_model_path(path: str | os.PathLike) -> Path | str:
    """The model file or folder a user's ``MODEL`` argument names (a URI stays a string).

    A SavedModel version folder as it is; a run directory's ``best.keras``, else its ``last.keras``; a
    ``.keras`` file as it is.
    """
    path = uris.location(path)
    if uris.isdir(path):  # one round trip for a remote path
        if uris.isfile(uris.join(path, "saved_model.pb")):
            return path
        models = RunPaths(path).models()
        if models:
            return models[0]
        raise ModelLoadError(f"{path}: neither a run directory with best.keras/last.keras nor a SavedModel")
    if uris.isfile(path):
        if uris.name(path).endswith(".keras"):
            return path
        raise ModelLoadError(f"{path}: not a model kunet reads (a run directory, a .keras file or a SavedModel folder)")
    raise ModelLoadError(f"{path}: not found (expected a run directory, a .keras file or a SavedModel folder)")


def run_of(model_file: Path | str) -> RunPaths | None:
    """The run directory a ``.keras`` file sits in, or None for a file outside any run."""
    paths = RunPaths(uris.parent(model_file))
    return paths if uris.isfile(paths.config) else None
