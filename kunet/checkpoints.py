"""A run's checkpoints: restoring the latest intact one, and saving one per step number.

Every worker of a multi-worker job restores from the run's own checkpoint folder (the chief's; shared
storage), while only the chief writes there: the other workers save to throw-away folders, as TensorFlow's
multi-worker checkpointing requires every worker to save. All read the same files, so all resume at one step.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from kunet import uris
from kunet.errors import first_line
from kunet.runs import RunError


def restore_latest_intact(
    checkpoint: tf.train.Checkpoint, folder, log: Callable[[str], None], where=None
) -> tuple[str | None, bool]:
    """Restores the newest checkpoint in ``folder`` that loads; a damaged one is reported and the one before
    it tried. Returns the restored path (None when the folder holds no checkpoint) and whether a newer,
    damaged one was passed over.

    Raises:
        RunError: checkpoints exist but none can be restored (all damaged, or of another model); the message
            names ``where`` (the run directory), else ``folder``.
    """
    saved = tf.train.get_checkpoint_state(str(folder))
    candidates = list(reversed(saved.all_model_checkpoint_paths)) if saved else []
    failures = []
    for path in candidates:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        # A damaged file surfaces as any of OpError, IndexError, ValueError, a protobuf DecodeError...
        except Exception as error:  # every one of them means: use the one before
            failures.append(f"{uris.name(path)}: {first_line(error)}")
            log(f"checkpoint {path} cannot be restored ({first_line(error)}); trying the one before it")
            continue
        return path, bool(failures)
    if failures:
        raise RunError(f"{where or folder}: no checkpoint can be restored, all damaged or not of this model "
                       f"({'; '.join(failures)})")  # fmt: skip
    return None, False


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> None:
    """Saves ``ckpt-<step>``. The one taken at an epoch's end is saved again after its validation (with the
    epoch's loss sums reset): a remote one is deleted first, because some gfile file systems (TF 2.21's
    ram://) append to an existing file instead of replacing it, which corrupts it."""
    latest = manager.latest_checkpoint
    if latest and latest.endswith(f"-{step}") and uris.is_remote(latest):
        for part in uris.glob(f"{latest}.*"):
            uris.remove(part)
    manager.save(checkpoint_number=step)
