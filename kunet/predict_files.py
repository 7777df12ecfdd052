"""``kunet predict``: masks, probabilities and overlays for image files, folders and multi-page TIFF stacks.

Whatever can be checked before the model is loaded is checked first (:func:`plan_predictions`): the
output options, that the output folder can be created and written, that every input exists and every
TIFF stack is complete, and that no two inputs, and no input and output, share a name. Every output is
written to a temporary sibling and renamed when complete (:mod:`kunet._fs`), so a full disk or a kill
leaves whole files or none.

A TIFF stack's masks, instances and ``--probabilities tif`` are written as one ImageJ stack per input
(axes ``ZYX``, or ``TZYX``/``TYX`` as the input's planes were, with the input's resolution and ImageJ
spacing/unit); its pages are gathered in a memory-mapped temporary beside the output (1 byte per mask pixel,
4 per probability) and the stack is written from it once the input's last plane is predicted. Overlays and
``npy`` probabilities stay one file per plane (``<stem>_p0000_overlay.png``).

Images above :data:`STREAMING_PIXELS` are predicted one row of tiles at a time
(:meth:`kunet.segmenter.Segmenter.segment_streaming`): probabilities go straight to their file strip by
strip, threshold rules decide each strip as it comes, and the working memory stays within the predictor's
streaming budget. What still grows with the image is the image itself, its uint8 classes and label mask, the
uint8 RGB overlay and the encoded PNGs (about 1 + 2 + 3 + 1-2 bytes per pixel for an 8-bit gray image), and
for the watershed rule the float32 foreground map plus the watershed's own working memory.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from kunet import visualize
from kunet._fs import atomic_save, temporary_sibling
from kunet.choices import MASK_FORMATS, PROBABILITY_FORMATS
from kunet.errors import KunetError
from kunet.imageio import (
    READABLE_SUFFIXES,
    ImageReadError,
    TiffLayout,
    as_channels,
    check_image_dtype,
    count_pages,
    iter_pages,
    naming_errors,
    tiff_layout,
    write_image,
    write_npy_strips,
)
from kunet.segmenter import Segmentation, Segmenter
from kunet.tiff import write_float_strips

# Above this many pixels an image is predicted one row of tiles at a time (bounded memory).
STREAMING_PIXELS = 4096 * 4096
# Images the net works on at once in predict_planned (each in a thread; the next images are read and the
# previous written meanwhile); 0 is one image at a time. See benchmarks/predict_throughput.py.
DEFAULT_CONCURRENCY = 2
# The reader decodes the next image only while the images read and not yet written total fewer pixels.
READ_AHEAD_PIXELS = STREAMING_PIXELS


class PredictionInputError(KunetError):
    """An option, input or output folder that prediction cannot use; the message names it."""


@dataclass
class PlannedImage:
    path: Path
    page: int
    name: str  # output stem, unique per run
    stack: str | None = None  # a TIFF stack's plane: the stem of the stack outputs it is one page of


@dataclass
class PredictionPlan:
    """What one ``kunet predict`` run reads and writes, checked before the model is loaded."""

    out: Path
    images: list[PlannedImage]
    skipped: list[Path] = field(default_factory=list)  # files in input folders that are no images kunet reads
    mask_format: str = "png"
    probabilities: str | None = None
    overlays: bool = True
    axes: str | None = None  # --axes: the axes of every input TIFF, declared
    channel: int | None = None  # --channel: the one channel of each image to predict
    stacks: dict[Path, TiffLayout] = field(default_factory=dict)  # inputs with several planes

    def output_paths(self, name: str, stack: str | None = None) -> dict[str, Path]:
        """Every file an image's prediction may write (instances only for instance pipelines); a stack's plane
        (``stack``: the stack's stem) shares one mask, instances and probability TIFF with its other planes."""
        whole = stack or name
        mask_format = "tif" if stack else self.mask_format
        paths = {"mask": self.out / f"{whole}_mask.{mask_format}", "instances": self.out / f"{whole}_instances.tif"}
        if self.probabilities == "tif":
            paths["probability"] = self.out / f"{whole}_probability.tif"
        elif self.probabilities == "cut":
            paths["probability"] = self.out / f"{whole}_cut_map.tif"
        elif self.probabilities == "npy":
            paths["probabilities"] = self.out / f"{name}_probabilities.npy"
        if self.overlays:
            paths["overlay"] = self.out / f"{name}_overlay.png"
        return paths


def check_output_options(mask_format: str, probabilities: str | None) -> None:
    if mask_format not in MASK_FORMATS:
        raise PredictionInputError(f"--mask-format must be png or tif, got {mask_format!r}")
    if probabilities is not None and probabilities not in PROBABILITY_FORMATS:
        raise PredictionInputError(
            f"--probabilities must be tif (foreground probability), npy (all classes) or cut (the foreground "
            f"probability with the decision rule's cut lines at 0), got {probabilities!r}"
        )


def check_output_folder(out: str | os.PathLike) -> None:
    """Raises unless ``out`` is, or can be created as, a folder this process can write into.

    Creates nothing: a probe file is written into ``out`` or its nearest existing ancestor and removed.
    """
    out = Path(out)
    existing = out
    while not (existing.exists() or existing.is_symlink()):
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == out else f"lies under {existing}, which is a file"
        raise PredictionInputError(f"{out}: {where}, not a folder; choose another --out")
    probe = temporary_sibling(existing / "write-probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise PredictionInputError(f"{out}: cannot write predictions into {existing} ({error.strerror})") from None
    os.unlink(probe)


def expand_inputs(inputs: list[str | os.PathLike], skipped: list[Path] | None = None) -> list[Path]:
    """Files as given and the image files inside folders, sorted; a missing input is an error.

    Files in a folder that are not images kunet reads (by suffix) are appended to ``skipped``, so the
    caller can name them instead of dropping them silently.
    """
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            entries = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith("."))
            found = [p for p in entries if p.suffix.lower() in READABLE_SUFFIXES]
            if skipped is not None:
                skipped += [p for p in entries if p.suffix.lower() not in READABLE_SUFFIXES]
            if not found:
                raise FileNotFoundError(f"{item}: no images in this folder ({', '.join(READABLE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def plan_predictions(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    mask_format: str = "png",
    probabilities: str | None = None,
    overlays: bool = True,
    axes: str | None = None,
    channel: int | None = None,
) -> PredictionPlan:
    """Checks options, output folder and inputs, and names every output, before any model is loaded.

    ``axes`` declares the axes of every input TIFF (see :func:`kunet.imageio.tiff_layout`); ``channel`` picks
    one channel of each image (checked against every TIFF here, against other images when read).

    Raises:
        PredictionInputError: a bad option, an unwritable output folder, two inputs with the same output
            name, or an output that would overwrite an input.
        ImageReadError: a truncated TIFF stack.
        FileNotFoundError: a missing input.
    """
    check_output_options(mask_format, probabilities)
    check_output_folder(out_dir)
    skipped: list[Path] = []
    files = expand_inputs(inputs, skipped)
    if channel is not None and channel < 0:
        raise PredictionInputError(f"--channel must be 0 or more (the first channel is 0), got {channel}")
    images, owners, stacks = [], {}, {}
    for path in files:
        pages = count_pages(path, axes)
        if pages > 1 or (axes or channel is not None) and path.suffix.lower() in (".tif", ".tiff"):
            layout = tiff_layout(path, axes)
            if channel is not None and channel >= max(layout.channels, 1):
                raise PredictionInputError(
                    f"{path}: --channel {channel} is not in 0..{layout.channels - 1} (axes {layout.axes}, "
                    f"{layout.channels} channel(s))"
                )
            if pages > 1:
                stacks[path] = layout
        names = [path.stem] if pages == 1 else [path.stem] + [f"{path.stem}_p{page:04d}" for page in range(pages)]
        for name in names:
            if owners.get(name, path) != path:
                raise PredictionInputError(
                    f"{path}: would write outputs named {name!r}, as {owners[name]} does; predict them separately"
                )
            owners[name] = path
        for page in range(pages):
            stack = path.stem if pages > 1 else None
            images.append(PlannedImage(path, page, names[-pages:][page], stack))
    plan = PredictionPlan(Path(out_dir), images, skipped, mask_format, probabilities, overlays, axes, channel, stacks)
    _check_inputs_survive(plan, files)
    return plan


def _check_inputs_survive(plan: PredictionPlan, files: list[Path]) -> None:
    """Refuses a run whose outputs would replace one of its inputs (e.g. ``a_mask.png`` beside ``a.png``)."""
    inputs = {path.resolve(): path for path in files}
    for image in plan.images:
        for kind, output in plan.output_paths(image.name, image.stack).items():
            if output.resolve() in inputs:
                raise PredictionInputError(
                    f"{inputs[output.resolve()]}: the {kind} of {image.path} would overwrite this input; "
                    "choose another --out"
                )


def check_image_size(image: np.ndarray, where: str, depth: int) -> None:
    """Refuses images narrower than the net's pooling period (16 px for the paper's depth-4 net)."""
    minimum = 2**depth
    height, width = image.shape[:2]
    if min(height, width) < minimum:
        raise ImageReadError(
            f"{where}: {height}x{width} px is smaller than the {minimum}x{minimum} px a depth-{depth} net needs: "
            f"it pools {minimum}x{minimum} pixels into one, so a smaller image would be predicted mostly from "
            "mirrored copies of itself"
        )


def _probability_writer(plan: PredictionPlan, paths: dict[str, Path], shape: tuple[int, int], rule, classes: int):
    """A consumer of probability strips [rows, W, K] that writes the requested file atomically, or None; the
    TIFF holds p(foreground) as ``rule`` (a :class:`~kunet.decision.DecisionRule`, or :class:`_CutMaps` of one)
    defines it."""
    if plan.probabilities is None:
        return None
    height, width = shape
    path = paths["probabilities" if plan.probabilities == "npy" else "probability"]

    def save(temporary: Path, strips) -> None:
        if plan.probabilities != "npy":
            write_float_strips(temporary, height, width, (rule.foreground(strip) for strip in strips))
        else:
            write_npy_strips(temporary, (height, width, classes), np.float32, strips)

    def write(strips) -> None:
        with naming_errors(path):
            atomic_save(path, lambda temporary: save(temporary, strips))

    return write


def _streams(segmenter: Segmenter, image: np.ndarray) -> bool:
    """Whether ``image`` is predicted one row of tiles at a time (its probabilities written as they come)."""
    return segmenter.streams and image.shape[0] * image.shape[1] > STREAMING_PIXELS


def _overlay(image: np.ndarray, result: Segmentation) -> np.ndarray:
    """The overlay PNG's picture: predicted instances each in a tint of their own where there are any."""
    if result.instances is None:
        return visualize.overlay_prediction(image, result.classes, legend=True)
    return visualize.overlay_prediction(image, result.instances, legend=True, instances=True)


def _write_outputs(image: np.ndarray, result: Segmentation, plan: PredictionPlan, paths: dict[str, Path]) -> dict:
    outputs = {kind: paths[kind] for kind in ("probability", "probabilities") if kind in paths}
    outputs["mask"] = write_image(paths["mask"], result.label_values)
    if result.instances is not None:
        outputs["instances"] = write_image(paths["instances"], result.instances.astype(np.uint16))
    if plan.overlays:
        overlay = _overlay(image, result)
        outputs["overlay"] = write_image(paths["overlay"], overlay, reuse=True)
    return outputs


class _StackFile:
    """One output TIFF stack of an input stack: planes go into a memory-mapped temporary beside it, and
    :meth:`commit` writes the ImageJ stack from that (atomically) with the input's resolution."""

    def __init__(self, path: Path, layout: TiffLayout, planes: int, height_width: tuple[int, int], dtype):
        self.path, self.layout = path, layout
        self.raw = temporary_sibling(path, "part")  # swept like any partial output
        self.pages = np.memmap(self.raw, np.dtype(dtype), "w+", shape=(planes, *height_width))

    def put(self, plane: int, image: np.ndarray) -> None:
        self.pages[plane] = image

    def put_strips(self, plane: int, strips, rule) -> None:
        """Probability strips [rows, W, K] of one plane, top to bottom, stored as ``rule.foreground`` of them."""
        top = 0
        for strip in strips:
            self.pages[plane, top : top + len(strip)] = rule.foreground(strip)
            top += len(strip)

    def _axes(self) -> tuple[str, tuple[int, ...]]:
        """ImageJ's axes for the planes: the input's T/Z axes when they are all there is, else one Z axis."""
        planes, axes = len(self.pages), self.layout.plane_axes
        if planes == self.layout.planes and axes in ("T", "Z", "TZ"):
            return axes + "YX", self.layout.plane_shape
        return "ZYX", (planes,)

    def commit(self) -> Path:
        axes, plane_shape = self._axes()
        options = {key: value for key, value in self.layout.resolution.items() if key != "imagej"}
        metadata = {"axes": axes, **self.layout.resolution.get("imagej", {})}
        shape = plane_shape + self.pages.shape[1:]

        def save(temporary: Path) -> None:
            tifffile.imwrite(temporary, iter(self.pages), shape=shape, dtype=self.pages.dtype, imagej=True,
                             metadata=metadata, **options)  # fmt: skip

        with naming_errors(self.path):
            atomic_save(self.path, save)
        self.close()
        return self.path

    def close(self) -> None:
        self.pages = None
        Path(self.raw).unlink(missing_ok=True)


class _Stacks:
    """The output stacks of one input stack, opened as their first plane arrives."""

    def __init__(self, layout: TiffLayout, planes: int):
        self.layout, self.planes, self.files = layout, planes, {}
        self._lock = threading.Lock()  # opened from the writer thread or, for a streamed plane, the main thread

    def file(self, kind: str, path: Path, height_width: tuple[int, int], dtype) -> _StackFile:
        with self._lock:
            if kind not in self.files:
                self.files[kind] = _StackFile(path, self.layout, self.planes, height_width, dtype)
            return self.files[kind]

    def commit(self) -> dict[str, Path]:
        return {kind: stack.commit() for kind, stack in self.files.items()}

    def close(self) -> None:
        for stack in self.files.values():
            stack.close()


@dataclass
class _Job:
    """One image (a file, or one plane of a stack) on its way from its file to its outputs; or, with
    ``commit``, the point after a stack's last plane where its mask, instances and probability stacks are
    written."""

    item: PlannedImage | None
    index: int = 0  # the plane's index among its file's planes
    image: np.ndarray | None = None
    stacks: _Stacks | None = None
    commit: bool = False
    result: Segmentation | None = None
    probabilities_written: bool = False  # streamed: written strip by strip while the net ran

    @property
    def pixels(self) -> int:
        return 0 if self.image is None else self.image.shape[0] * self.image.shape[1]


def _jobs(plan: PredictionPlan, channels: int, depth: int, opened: list[_Stacks]) -> Iterator[_Job]:
    """Reads and checks every image of ``plan`` in order; a stack's planes are followed by its commit job.
    Every :class:`_Stacks` made is appended to ``opened``, for the caller to close (removing its temporaries)."""
    for path, planned in itertools.groupby(plan.images, key=lambda image: image.path):
        planned = list(planned)
        stacks = _Stacks(plan.stacks[path], len(planned)) if planned[0].stack and path in plan.stacks else None
        if stacks is not None:
            opened.append(stacks)
        for index, (item, image) in enumerate(zip(planned, iter_pages(path, plan.axes, plan.channel))):
            where = str(path) if item.name == path.stem else f"{path} (page {item.page + 1})"
            check_image_dtype(image, where)
            image = as_channels(image, channels, where)
            check_image_size(image, where, depth)
            yield _Job(item, index, image, stacks)
        if stacks is not None:
            yield _Job(None, stacks=stacks, commit=True)


def _probability_sink(segmenter: Segmenter, plan: PredictionPlan, job: _Job, paths: dict[str, Path]):
    """Where ``job``'s probability strips go: its file, its plane of the stack's probability TIFF, or None."""
    hw = job.image.shape[:2]
    rule = _CutMaps(segmenter.rule) if plan.probabilities == "cut" else segmenter.rule
    if job.stacks is not None and plan.probabilities in ("tif", "cut"):
        probability = job.stacks.file("probability", paths["probability"], hw, np.float32)
        return lambda strips: probability.put_strips(job.index, strips, rule)
    return _probability_writer(plan, paths, hw, rule, segmenter.num_classes)


class _CutMaps:
    """A decision rule whose ``foreground`` of whole-image probabilities is the rule's cut map (what
    ``--probabilities cut`` writes; :meth:`kunet.decision.DecisionRule.cut_map`)."""

    def __init__(self, rule):
        self.rule = rule

    def foreground(self, probabilities: np.ndarray) -> np.ndarray:
        return self.rule.cut_map(probabilities)


def _compute(segmenter: Segmenter, plan: PredictionPlan, job: _Job) -> None:
    """Predicts ``job``'s image into ``job.result``; an image above :data:`STREAMING_PIXELS` is streamed, its
    probabilities written strip by strip as they come."""
    streamed = _streams(segmenter, job.image)
    if streamed and plan.probabilities == "cut":
        raise PredictionInputError(
            f"{job.item.path}: --probabilities cut needs the whole probability map at once, and this image "
            f"({job.image.shape[0]}x{job.image.shape[1]}) is predicted a row of tiles at a time"
        )
    if streamed:
        sink = _probability_sink(segmenter, plan, job, plan.output_paths(job.item.name, job.item.stack))
        job.result = segmenter.segment_streaming(job.image, sink)
        job.probabilities_written = True
    else:
        job.result = segmenter.segment(job.image)


def _write(segmenter: Segmenter, plan: PredictionPlan, job: _Job) -> dict:
    """Writes ``job``'s outputs (probabilities, mask, instances, overlay, in this order) and returns its
    record; a stack's plane goes into the stack's files, written by its commit job."""
    item, image, result = job.item, job.image, job.result
    paths = plan.output_paths(item.name, item.stack)
    if not job.probabilities_written:
        sink = _probability_sink(segmenter, plan, job, paths)
        if sink is not None:
            sink(iter([result.probabilities]))
    if job.stacks is None:
        outputs = _write_outputs(image, result, plan, paths)
    else:
        hw = image.shape[:2]
        job.stacks.file("mask", paths["mask"], hw, result.label_values.dtype).put(job.index, result.label_values)
        if result.instances is not None:
            instances = job.stacks.file("instances", paths["instances"], hw, np.uint16)
            instances.put(job.index, result.instances.astype(np.uint16))
        outputs = {"probabilities": paths["probabilities"]} if plan.probabilities == "npy" else {}
        if plan.overlays:
            overlay = _overlay(image, result)
            outputs["overlay"] = write_image(paths["overlay"], overlay, reuse=True)
    job.image = job.result = None  # a job waiting to be retired holds no pixels
    return {"name": item.name, "source": str(item.path), "page": item.page, "outputs": outputs}


def _one_at_a_time(segmenter: Segmenter, plan: PredictionPlan, jobs: Iterator[_Job], progress) -> list[dict]:
    """Reads, predicts and writes each image before the next is read (``concurrency=0``)."""
    written = []
    for job in jobs:
        if job.commit:
            written[-1]["outputs"].update(job.stacks.commit())
            continue
        _compute(segmenter, plan, job)
        written.append(_write(segmenter, plan, job))
        if progress:
            progress()
    return written


class _ReadAhead:
    """Iterates ``jobs`` (reading and decoding images) in a thread of its own, a bounded distance ahead.

    At most ``items`` jobs wait in the queue, and the next image is read only while the images read and not
    yet released (:meth:`release`, once written) total fewer than ``pixels``: an image larger than that is
    the only one read until it is written. The reader's error is raised where its image would have been.
    """

    def __init__(self, jobs: Iterator[_Job], items: int, pixels: int):
        self._queue: queue.Queue = queue.Queue(maxsize=items)
        self._budget, self._held = pixels, 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(jobs,), name="kunet-read", daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, jobs: Iterator[_Job]) -> None:
        try:
            for job in jobs:  # each step reads and decodes one image
                with self._changed:
                    self._held += job.pixels
                if not self._put(("job", job)):
                    return
                with self._changed:
                    self._changed.wait_for(lambda: self._held < self._budget or self._stop.is_set())
            self._put(("end", None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there in order
            self._put(("error", error))
        finally:
            jobs.close()  # a stack's page iterator closes its file

    def __iter__(self) -> Iterator[_Job]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def release(self, pixels: int) -> None:
        with self._changed:
            self._held -= pixels
            self._changed.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join()


class _MemoryBudget:
    """Working memory of the model calls running at once: a call waits while others run and its estimate
    would take the total above ``limit`` bytes (a call alone always runs, as in the one-at-a-time path)."""

    def __init__(self, limit: float):
        self.limit, self.used = limit, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, amount: int):
        with self._changed:
            self._changed.wait_for(lambda: self.used == 0 or self.used + amount <= self.limit)
            self.used += amount
        try:
            yield
        finally:
            with self._changed:
                self.used -= amount
                self._changed.notify_all()


def _return_freed_memory() -> None:
    """Gives memory freed in other threads' malloc arenas back to the system (glibc's ``malloc_trim``).

    The reader thread decodes images in an arena of its own; what it frees there (decoding buffers, a copy
    of an image) the main thread cannot reuse, so a streamed image, whose outputs grow with its size, would
    otherwise cost about a byte per pixel more than one at a time. A no-op where there is no glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Abandoned(Exception):
    """A job after one that failed: never written (the failure is what the caller sees)."""


def _pipelined(segmenter: Segmenter, plan: PredictionPlan, jobs: Iterator[_Job], progress, concurrency: int,
               batch_images: int = 1):  # fmt: skip
    """:func:`_one_at_a_time` with reading, the net and writing overlapped: a reader thread decodes the next
    images, ``concurrency`` threads run the net on as many groups of up to ``batch_images`` consecutive
    images of one shape at once, and one writer thread writes the outputs in input order. Records, progress
    and errors come in input order, as one at a time: when an image fails, every image before it is written
    and none after it is (a group that fails: none of its images)."""
    written: list[dict] = []
    failed = threading.Event()  # set, in input order, by the writer: later jobs are skipped
    window: collections.deque = collections.deque()  # (job, future of its record), in input order
    capacity = (2 * concurrency + 1) * batch_images  # images between read and written: computing, waiting, writing
    memory = _MemoryBudget(segmenter.memory_budget_bytes())
    reader = _ReadAhead(jobs, (concurrency + 1) * batch_images, READ_AHEAD_PIXELS)
    compute = ThreadPoolExecutor(concurrency, thread_name_prefix="kunet-predict")
    writer = ThreadPoolExecutor(1, thread_name_prefix="kunet-write")
    group: list[_Job] = []  # images read, waiting to share a model call

    def predict(batch: list[_Job]) -> None:
        if failed.is_set():
            return
        with memory.hold(len(batch) * segmenter.working_bytes(batch[0].image.shape)):  # one shape per group
            if len(batch) == 1:
                _compute(segmenter, plan, batch[0])
                return
            for job, result in zip(batch, segmenter.segment_images([job.image for job in batch]), strict=True):
                job.result = result

    def flush() -> None:
        if group:
            computed = compute.submit(predict, list(group))
            for job in group:
                window.append((job, writer.submit(write, job, computed)))
            group.clear()

    def joins(job: _Job) -> bool:
        """Whether ``job`` may share the waiting group's model calls: same shape and dtype, within memory."""
        if not group:
            return True
        first = group[0].image
        if job.image.shape != first.shape or job.image.dtype != first.dtype:
            return False
        return (len(group) + 1) * segmenter.working_bytes(first.shape) <= segmenter.memory_budget_bytes()

    def write(job: _Job, computed: Future | None):
        pixels = job.pixels
        try:
            if failed.is_set():
                raise _Abandoned
            if computed is not None:
                computed.result()
            return job.stacks.commit() if job.commit else _write(segmenter, plan, job)
        except BaseException:
            failed.set()
            raise
        finally:
            reader.release(pixels)

    def retire() -> None:
        job, future = window.popleft()
        record = future.result()
        if job.commit:
            written[-1]["outputs"].update(record)
        else:
            written.append(record)
            if progress:
                progress()

    try:
        source, pending = iter(reader), None
        while True:
            try:
                job = next(source)
            except StopIteration:
                break
            except Exception as error:  # the next image's: raised after every image before it is written
                pending = error
                break
            streamed = not job.commit and _streams(segmenter, job.image)
            if job.commit or streamed or not joins(job):
                flush()
            if streamed:
                # Alone and in this thread, as one at a time: its probabilities go to their file while the net
                # runs, and Ctrl-C stops it between two rows of tiles.
                while window:
                    retire()
                _return_freed_memory()
                pixels = job.pixels
                try:
                    _compute(segmenter, plan, job)
                    written.append(_write(segmenter, plan, job))
                finally:
                    reader.release(pixels)
                if progress:
                    progress()
                continue
            if job.commit:
                window.append((job, writer.submit(write, job, None)))
            else:
                group.append(job)
                if len(group) == batch_images:
                    flush()
            while window and (len(window) > capacity or window[0][1].done()):
                retire()
        flush()
        while window:
            retire()
        if pending is not None:
            raise pending
    finally:
        failed.set()
        reader.close()
        compute.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
    return written


def predict_planned(segmenter: Segmenter, plan: PredictionPlan, channels: int | None = None, progress=None,
                    concurrency: int | None = None, batch_images: int = 1) -> list[dict]:  # fmt: skip
    """Predicts every image of ``plan`` and writes its outputs; returns one record per image.

    A stack's mask, instances and probability TIFFs are renamed into place after its last plane and are
    listed in that plane's record. Outputs, records and progress are the same for every ``concurrency``, bit
    for bit; an image that fails stops the run with every image before it written and none after it.
    ``batch_images`` above 1 trades that for speed: up to that many consecutive images of one shape share
    their model calls (:meth:`kunet.segmenter.Segmenter.segment_images`), which keeps two cores busier on
    small images; in float32 their probabilities can then differ from one image at a time in the 6th-7th digit.

    Args:
        segmenter: The loaded model.
        plan: From :func:`plan_predictions`.
        channels: Image channels the model expects (default: the model's).
        progress: Called once per image (plane), in input order.
        concurrency: Images the net works on at once while the next images are read and the previous ones
            written, each in a thread of its own; 0 reads, predicts and writes one image at a time (the least
            memory); None: :data:`DEFAULT_CONCURRENCY`.
        batch_images: Images of one shape per model call (1: each image alone); needs ``concurrency`` >= 1.
    """
    channels = channels or segmenter.input_channels
    concurrency = DEFAULT_CONCURRENCY if concurrency is None else concurrency
    if concurrency < 0:
        raise PredictionInputError(f"--concurrency must be 0 (one image at a time) or more, got {concurrency}")
    if batch_images < 1:
        raise PredictionInputError(f"--batch-images must be 1 (each image alone) or more, got {batch_images}")
    if batch_images > 1 and concurrency == 0:
        raise PredictionInputError("--batch-images above 1 needs --concurrency 1 or more (images read ahead)")
    plan.out.mkdir(parents=True, exist_ok=True)
    opened: list[_Stacks] = []
    jobs = _jobs(plan, channels, segmenter.depth, opened)
    try:
        if concurrency == 0:
            return _one_at_a_time(segmenter, plan, jobs, progress)
        return _pipelined(segmenter, plan, jobs, progress, concurrency, batch_images)
    finally:
        jobs.close()
        for stacks in opened:  # a stack cut short by an error leaves no temporary behind
            stacks.close()


def predict_files(
    segmenter: Segmenter,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    channels: int | None = None,
    mask_format: str = "png",
    probabilities: str | None = None,
    overlays: bool = True,
    progress=None,
    axes: str | None = None,
    channel: int | None = None,
    concurrency: int | None = None,
    batch_images: int = 1,
) -> list[dict]:
    """Predicts every input image and writes its outputs into ``out_dir``.

    Args:
        segmenter: The loaded model.
        inputs: Files or folders (PNG/TIFF/JPEG/BMP; a TIFF stack gives one mask stack, and overlays per plane).
        out_dir: Output folder (created).
        channels: Image channels the model expects (default: the model's).
        mask_format: ``png`` or ``tif`` for label masks (written in the dataset's label values).
        probabilities: ``None``, ``tif`` (foreground probability, float32) or ``npy`` (all classes).
        overlays: Also write ``<name>_overlay.png`` (with a band below the image naming the colours).
        progress: Called once per image (plane).
        axes: Declares the axes of the input TIFFs (e.g. ``ZCYX``) instead of what the files say.
        channel: Predict only this channel (0-based) of each image, for a 1-channel model.
        concurrency: Images the net works on at once (see :func:`predict_planned`); 0: one at a time.
        batch_images: Images of one shape sharing model calls (see :func:`predict_planned`); 1: each alone.

    Returns:
        One record per image: name, source, outputs written.
    """
    plan = plan_predictions(inputs, out_dir, mask_format, probabilities, overlays, axes, channel)
    return predict_planned(segmenter, plan, channels, progress, concurrency, batch_images)
