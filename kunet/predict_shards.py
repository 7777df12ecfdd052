"""``kunet predict --shard``: one task's share of a collection, resumable, with a summary per shard.

An input (an image file; a multi-page TIFF is one input, all its pages together) counts as complete only
through its completion record: a line appended to ``<out>/_shards/shard-I-of-N.done.jsonl`` after every
output of every page of the input has been renamed into place. The record holds the input's size and
modification time, a digest of the model's bytes and of every option that changes an output, and each
output's size and modification time. A rerun skips an input only if a record matches all of these on
disk now, so a kill mid-image (some outputs written, no record), an output replaced since, another model,
threshold or output format, or a changed input is predicted again. ``overwrite`` predicts everything.

Each shard holds an ``flock`` on ``shard-I-of-N.lock`` while it runs (a second copy of the same shard fails
at once), and writes ``shard-I-of-N.json`` atomically: ``running`` at the start, then ``complete``,
``failed`` (some inputs could not be read; the others are done) or ``interrupted`` (the job stopped: disk
full, a signal, an error), with the inputs predicted, skipped, failed and left, timings, the model and the
kunet version. :func:`shard_status` reads them all; ``python -m kunet.predict_shards OUT`` prints it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import kunet
from kunet import uris
from kunet._fs import atomic_write_json, exclusive_lock
from kunet.errors import KunetError
from kunet.sharding import Shard, shard_members

if TYPE_CHECKING:  # kunet.predict_files imports TensorFlow, which a status check does not need
    from kunet.predict_files import PlannedImage, PredictionPlan

SHARDS_FOLDER = "_shards"
_CHUNK = 1 << 20


@dataclass
class Source:
    """One input file and the images (pages) planned for it; ``key`` is its first output's unique name."""

    key: str
    path: Path
    images: list[PlannedImage]


def plan_sources(plan: PredictionPlan) -> list[Source]:
    """The plan's inputs, one per file (a stack's pages stay together), in plan order."""
    groups = itertools.groupby(plan.images, key=lambda image: image.path)
    return [Source(images[0].name, path, images) for path, images in ((p, list(g)) for p, g in groups)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stat(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def model_digest(model_path: str | os.PathLike) -> str:
    """sha256 of a model's bytes (a SavedModel folder: of its files' relative paths and bytes).

    Its bytes, not its path or time stamp: a job array often copies the model to each node's local disk.
    """
    if uris.is_remote(model_path):  # a model at a URI (gs://): read through tf.io.gfile
        digest = hashlib.sha256()
        folder = uris.isdir(model_path)
        for relative in sorted(uris.walk_files(model_path)) if folder else [""]:
            if folder:
                digest.update(relative.encode() + b"\0")
            digest.update(uris.read_bytes(uris.join(model_path, relative) if folder else model_path))
        return digest.hexdigest()
    model_path = Path(model_path)
    folder = model_path.is_dir()
    files = sorted(p for p in model_path.rglob("*") if p.is_file()) if folder else [model_path]
    digest = hashlib.sha256()
    for file in files:
        if folder:
            digest.update(str(file.relative_to(model_path)).encode() + b"\0")
        with open(file, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def read_completions(folder: Path) -> dict[str, list[dict]]:
    """Every completion record in ``folder``'s journals (of any shard count), by input key.

    A line cut short by a kill is not valid JSON and is ignored: its input is predicted again.
    """
    records: dict[str, list[dict]] = {}
    for journal in sorted(folder.glob("*.done.jsonl")):
        for line in journal.read_bytes().splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                record = json.loads(line)
                records.setdefault(record["input"], []).append(record)
    return records


def append_completion(journal: Path, record: dict) -> None:
    """Appends one record as a line; first ends a line a killed writer left unfinished."""
    with open(journal, "a+b") as stream:
        end = stream.seek(0, os.SEEK_END)
        if end:
            stream.seek(end - 1)
            if stream.read(1) != b"\n":
                stream.write(b"\n")  # append mode: writes go to the end wherever the read left off
        stream.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")


class ShardJob:
    """A shard of a prediction plan as a resumable job; use it as a context manager around model loading.

    Entering it takes the shard's lock, reads the completion records and writes a ``running`` summary;
    leaving it with an exception writes an ``interrupted`` one. :meth:`run` predicts what is left.

    Args:
        plan: From :func:`kunet.predict_files.plan_predictions` (the whole collection).
        shard: This task's shard.
        model_path: The model file or SavedModel folder (its bytes are part of what makes an output complete).
        options: The prediction options that change outputs (precision, tile size, mirroring, threshold).
        overwrite: Predict every input of the shard, even those with complete outputs.
    """

    def __init__(self, plan: PredictionPlan, shard: Shard, model_path: str | os.PathLike, options: Mapping,
                 overwrite: bool = False):  # fmt: skip
        self.plan, self.shard, self.overwrite = plan, shard, overwrite
        self.folder = plan.out / SHARDS_FOLDER
        self.summary_path = self.folder / f"{shard.label}.json"
        self.journal = self.folder / f"{shard.label}.done.jsonl"
        sources = plan_sources(plan)
        mine = set(shard_members((source.key for source in sources), shard))
        self.sources = sorted((source for source in sources if source.key in mine), key=lambda s: s.key)
        keys = sorted(source.key for source in sources)
        self.collection = {"inputs": len(sources), "images": len(plan.images),
                           "sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest()}  # fmt: skip
        self.model = {"path": str(model_path), "sha256": model_digest(model_path)}
        self.settings = {**options, "mask_format": plan.mask_format, "probabilities": plan.probabilities,
                         "overlays": plan.overlays}  # fmt: skip
        identity = json.dumps({"model": self.model["sha256"], **self.settings}, sort_keys=True, default=str)
        self.settings_digest = hashlib.sha256(identity.encode()).hexdigest()
        self.todo: list[Source] = []
        self.skipped: list[str] = []
        self.processed: list[dict] = []
        self.failed: list[dict] = []
        self._started, self._clock = "", 0.0
        self._stack = contextlib.ExitStack()

    @property
    def image_count(self) -> int:
        """Images (pages) this run will predict: the progress bar's total."""
        return sum(len(source.images) for source in self.todo)

    def __enter__(self) -> ShardJob:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(exclusive_lock(self.folder / f"{self.shard.label}.lock"))
        self._started, self._clock = _now(), time.monotonic()
        records = {} if self.overwrite else read_completions(self.folder)
        for source in self.sources:
            if any(self._complete(source, record) for record in records.get(source.key, ())):
                self.skipped.append(source.key)
            else:
                self.todo.append(source)
        self._write_summary("running")
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is not None:
                message = str(error).strip() or type(error).__name__
                self._write_summary("interrupted", f"{type(error).__name__}: {message}")
        finally:
            self._stack.close()

    def _complete(self, source: Source, record: dict) -> bool:
        if record.get("settings") != self.settings_digest:
            return False
        try:
            if record.get("input_stat") != _stat(source.path):
                return False
            outputs = record.get("outputs") or {}
            return bool(outputs) and all(_stat(self.plan.out / name) == stat for name, stat in outputs.items())
        except OSError:  # an output (or the input) is gone
            return False

    def run(self, segmenter, channels: int | None = None, progress: Callable[[], None] | None = None,
            concurrency: int | None = None) -> dict:  # fmt: skip
        """Predicts the shard's inputs without complete outputs; returns the final summary.

        An input kunet cannot use (a :class:`~kunet.errors.KunetError`: unreadable, too small, ...) is
        listed as failed and the others go on; any other error stops the job (the summary says
        ``interrupted``) and propagates.

        Args:
            segmenter: The loaded model (unused, and may be None, when nothing is left to predict).
            channels: Image channels the model expects (default: the model's).
            progress: Called once per image (page).
            concurrency: As :func:`kunet.predict_files.predict_planned`'s (the planes of a stack overlap).
        """
        for source in self.todo:
            self._predict(segmenter, source, channels, progress, concurrency)
        return self._write_summary("failed" if self.failed else "complete")

    def _predict(self, segmenter, source: Source, channels: int | None, progress: Callable[[], None] | None,
                 concurrency: int | None) -> None:  # fmt: skip
        from kunet.predict_files import predict_planned

        started, done = time.monotonic(), 0

        def advance() -> None:
            nonlocal done
            done += 1
            if progress:
                progress()

        try:
            written = predict_planned(segmenter, dataclasses.replace(self.plan, images=source.images), channels,
                                      advance, concurrency)  # fmt: skip
        except KunetError as error:
            self.failed.append({"input": source.key, "source": str(source.path), "error": str(error)})
            for _ in range(len(source.images) - done):  # the bar still ends at its total
                advance()
            return
        seconds = round(time.monotonic() - started, 3)
        outputs = {path.name: _stat(path) for item in written for path in map(Path, item["outputs"].values())}
        # Appended only now, after every output of every page was renamed into place: a kill before this
        # line leaves the input without a record, so the next run predicts it again.
        append_completion(self.journal, {
            "input": source.key, "source": str(source.path), "input_stat": _stat(source.path),
            "settings": self.settings_digest, "outputs": outputs, "shard": str(self.shard), "seconds": seconds,
        })  # fmt: skip
        self.processed.append({"input": source.key, "source": str(source.path), "images": len(source.images),
                               "seconds": seconds})  # fmt: skip

    def _write_summary(self, status: str, error: str | None = None) -> dict:
        finished = {item["input"] for item in self.processed + self.failed} | set(self.skipped)
        summary = {
            "status": status,
            "shard": {"index": self.shard.index, "count": self.shard.count, "from": self.shard.origin},
            "collection": self.collection,
            "assigned": [source.key for source in self.sources],
            "predicted": self.processed,
            "skipped": self.skipped,
            "failed": self.failed,
            "left": [source.key for source in self.sources if source.key not in finished],
            "error": error,
            "started": self._started,
            "finished": None if status == "running" else _now(),
            "seconds": round(time.monotonic() - self._clock, 3),
            "model": self.model,
            "settings": self.settings,
            "kunet_version": kunet.__version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        atomic_write_json(self.summary_path, summary)
        return summary


def shard_status(out: str | os.PathLike) -> dict[int, dict]:
    """What the shard summaries in ``<out>/_shards`` say, per shard count N.

    Returns:
        For each N with a summary: ``shards`` (index -> status), ``missing`` (indices without a summary),
        ``same_inputs`` (all shards saw the same collection) and ``complete`` (all N complete, same inputs).
    """
    found: dict[int, dict[int, dict]] = {}
    for path in sorted((Path(out) / SHARDS_FOLDER).glob("shard-*-of-*.json")):
        summary = json.loads(path.read_text())
        found.setdefault(summary["shard"]["count"], {})[summary["shard"]["index"]] = summary
    report = {}
    for count, summaries in sorted(found.items()):
        statuses = {index: summaries[index]["status"] for index in sorted(summaries)}
        same = len({summary["collection"]["sha256"] for summary in summaries.values()}) == 1
        missing = [index for index in range(count) if index not in summaries]
        complete = not missing and same and set(statuses.values()) == {"complete"}
        report[count] = {"shards": statuses, "missing": missing, "same_inputs": same, "complete": complete}
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m kunet.predict_shards OUT``: one line per shard count; exit status 0 if one is complete."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kunet.predict_shards OUT", file=sys.stderr)
        return 2
    report = shard_status(args[0])
    if not report:
        print(f"{args[0]}: no shard summaries in {Path(args[0]) / SHARDS_FOLDER}")
    for count, state in report.items():
        statuses = ", ".join(f"{index}: {status}" for index, status in state["shards"].items())
        notes = ([f"missing {state['missing']}"] if state["missing"] else []) + (
            [] if state["same_inputs"] else ["shards saw different inputs"]
        )
        verdict = "complete" if state["complete"] else "incomplete"
        print(f"{count} shard(s): {verdict} ({statuses}){'; ' + '; '.join(notes) if notes else ''}")
    return 0 if any(state["complete"] for state in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
