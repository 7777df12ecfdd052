"""Synthetic datasets: determinism, conventions, hardness against a naive baseline, atomic writers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from kunet import synthetic
from kunet.synthetic import (
    make_cells_sample,
    make_em_sample,
    sample_rng,
    touching_pairs,
    write_cells_dataset,
    write_em_dataset,
)

ODD_SIZE = (301, 257)


def _files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def _read(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


# --- EM ---------------------------------------------------------------------------------------------


def test_em_same_seed_same_sample_and_different_seed_different():
    image, label = make_em_sample(160, rng=7)
    again_image, again_label = make_em_sample(160, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    other_image, other_label = make_em_sample(160, rng=8)
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(label, other_label)


@pytest.mark.parametrize("size, shape", [(96, (96, 96)), (ODD_SIZE, ODD_SIZE), ((64, 200), (64, 200))])
def test_em_shapes_dtypes_and_label_values(size, shape):
    image, label = make_em_sample(size, rng=3)
    assert image.shape == shape and label.shape == shape
    assert image.dtype == np.uint8 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {0, 255}
    assert image.std() > 10  # not blank


def test_em_membrane_fraction_thickness_and_exact_labels():
    for seed in range(4):
        image, label, parts = make_em_sample(512, rng=seed, return_parts=True)
        membrane = label == 0
        np.testing.assert_array_equal(membrane, parts.membrane)
        assert 0.15 <= membrane.mean() <= 0.30, (seed, membrane.mean())
        # Thickness about 2-8 px: twice the distance to the nearest interior pixel, read on the membranes'
        # medial ridges (local maxima of that distance).
        depth = cv2.distanceTransform(membrane.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        ridge = membrane & (depth >= cv2.dilate(depth, np.ones((3, 3), np.uint8)))
        low, median, high = np.percentile(2 * depth[ridge], [10, 50, 90])
        assert low >= 2.0 and 3.0 <= median <= 7.0 and high <= 10.0, (seed, low, median, high)
        # Membranes are drawn darker than the cell interiors around them.
        assert image[membrane].mean() < image[~membrane].mean() - 30


def test_em_dark_blobs_inside_cells_are_labelled_interior():
    image, label, parts = make_em_sample(512, rng=11, return_parts=True)
    blobs = parts.blobs
    assert blobs.mean() > 0.01  # mitochondria, vesicles, granules, ER strands
    assert not (blobs & parts.membrane).any()
    assert (label[blobs] == 255).all()
    interior = (label == 255) & ~blobs
    membrane = label == 0
    # Dark: clearly darker than the cytoplasm, and the darkest blob pixels as dark as typical membrane.
    assert image[blobs].mean() < image[interior].mean() - 25
    assert np.percentile(image[blobs], 20) <= np.median(image[membrane])


def test_em_faint_membranes_are_still_labelled():
    image, label, parts = make_em_sample(512, rng=5, return_parts=True)
    faint = parts.faint
    assert faint.sum() > 200
    assert (label[faint] == 0).all()
    strong = parts.membrane & ~faint
    assert image[faint].mean() > image[strong].mean() + 15


def test_em_otsu_baseline_is_clearly_worse_than_perfect():
    scores = []
    for seed in range(3):
        image, label = make_em_sample(512, rng=100 + seed)
        scores.append(synthetic.foreground_iou(synthetic.otsu_foreground(image, sigma=1.0), label == 255))
    assert max(scores) < 0.85, scores


def test_em_generation_is_fast():
    make_em_sample(512, rng=0)  # warm-up (imports, allocator)
    start = time.perf_counter()
    for seed in range(3):
        make_em_sample(512, rng=seed)
    # Typically well under 0.1 s per image; the bound leaves room for a busy shared machine.
    assert (time.perf_counter() - start) / 3 < 1.0


# --- DIC cells ---------------------------------------------------------------------------------------


def test_cells_same_seed_same_sample_and_different_seed_different():
    image, instances = make_cells_sample(160, rng=4)
    again_image, again_instances = make_cells_sample(160, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(instances, again_instances)
    other_image, other_instances = make_cells_sample(160, rng=5)
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(instances, other_instances)


@pytest.mark.parametrize("size, shape", [(128, (128, 128)), (ODD_SIZE, ODD_SIZE)])
def test_cells_shapes_dtypes_and_consecutive_ids(size, shape):
    image, instances = make_cells_sample(size, rng=2)
    assert image.shape == shape and instances.shape == shape
    assert image.dtype == np.uint8 and instances.dtype == np.uint16
    ids = np.unique(instances)
    assert ids[0] == 0 and len(ids) >= 2
    np.testing.assert_array_equal(ids, np.arange(len(ids)))


def test_cells_many_touching_with_shared_borders():
    for seed in range(3):
        image, instances = make_cells_sample(512, rng=seed)
        count = int(instances.max())
        assert 6 <= count <= 16, count
        pairs = touching_pairs(instances)
        assert len(pairs) >= 4, (seed, pairs)
        for value in range(1, count + 1):  # each cell is one piece
            pieces, _ = cv2.connectedComponents((instances == value).astype(np.uint8), connectivity=8)
            assert pieces == 2, (seed, value)
        # Touching cells have no gap: the foreground alone merges them into fewer connected components.
        pieces, _ = cv2.connectedComponents((instances > 0).astype(np.uint8), connectivity=4)
        assert pieces - 1 < count


def test_cells_num_cells_is_respected_and_validated():
    _, instances = make_cells_sample(512, rng=1, num_cells=(3, 3))
    assert 1 <= instances.max() <= 3
    with pytest.raises(ValueError, match="num_cells"):
        make_cells_sample(64, rng=1, num_cells=(5, 2))


def test_touching_pairs_finds_4_adjacent_different_ids_only():
    instances = np.array(
        [
            [1, 1, 0, 3],
            [1, 2, 0, 3],
            [0, 2, 2, 0],
        ],
        dtype=np.uint16,
    )
    assert touching_pairs(instances) == {(1, 2)}


def test_cells_otsu_components_merge_touching_cells():
    merged = total = recovered = cells = 0
    for seed in range(3):
        image, instances = make_cells_sample(512, rng=200 + seed)
        foreground = synthetic.otsu_foreground(image, sigma=2.0, dark=True)
        _, components = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=8)
        majority = {}
        for value in range(1, int(instances.max()) + 1):
            hits = components[(instances == value) & foreground]
            majority[value] = int(np.bincount(hits).argmax()) if hits.size else -1
            if majority[value] > 0:
                component, cell = components == majority[value], instances == value
                recovered += synthetic.foreground_iou(component, cell) > 0.5
            cells += 1
        for a, b in touching_pairs(instances):
            total += 1
            merged += majority[a] == majority[b] != -1
    assert merged >= 0.5 * total, (merged, total)
    assert recovered <= cells / 4, (recovered, cells)


# --- writers -----------------------------------------------------------------------------------------


def test_write_em_dataset_layout_and_bit_exact_reload(tmp_path):
    out = write_em_dataset(tmp_path / "em", count=3, size=ODD_SIZE, seed=9)
    assert out == (tmp_path / "em").absolute()
    names = [f"slice_{i:02d}.png" for i in range(3)]
    expected = {f"images/{n}" for n in names} | {f"labels/{n}" for n in names} | {"SYNTHETIC.json"}
    assert _files(out) == expected
    for index, name in enumerate(names):
        image, label = make_em_sample(ODD_SIZE, sample_rng(9, index))
        np.testing.assert_array_equal(_read(out / "images" / name), image)
        reloaded = _read(out / "labels" / name)
        assert reloaded.dtype == np.uint8
        np.testing.assert_array_equal(reloaded, label)
    manifest = json.loads((out / "SYNTHETIC.json").read_text())
    assert manifest["generator"] == "kunet.synthetic.make_em_sample"
    assert manifest["seed"] == 9 and manifest["count"] == 3
    assert manifest["parameters"]["size"] == list(ODD_SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em"]  # no temporary leftovers


def test_write_cells_dataset_ctc_layout_and_bit_exact_reload(tmp_path):
    out = write_cells_dataset(tmp_path / "hela", count=2, size=96, seed=3, sequences=("01", "02"))
    expected = {"SYNTHETIC.json"}
    for sequence in ("01", "02"):
        for number in ("000", "001"):
            expected |= {f"{sequence}/t{number}.tif", f"{sequence}_GT/SEG/man_seg{number}.tif"}
    assert _files(out) == expected
    for stream, sequence in enumerate(("01", "02")):
        for index, number in enumerate(("000", "001")):
            image, instances = make_cells_sample(96, sample_rng(3, index, stream))
            reloaded_image = _read(out / sequence / f"t{number}.tif")
            reloaded_mask = _read(out / f"{sequence}_GT" / "SEG" / f"man_seg{number}.tif")
            assert reloaded_image.dtype == np.uint8 and reloaded_mask.dtype == np.uint16
            np.testing.assert_array_equal(reloaded_image, image)
            np.testing.assert_array_equal(reloaded_mask, instances)
    # The two sequences are different samples.
    assert not np.array_equal(_read(out / "01" / "t000.tif"), _read(out / "02" / "t000.tif"))
    manifest = json.loads((out / "SYNTHETIC.json").read_text())
    assert manifest["generator"] == "kunet.synthetic.make_cells_sample"
    assert manifest["sequences"] == ["01", "02"] and manifest["count"] == 2 and manifest["seed"] == 3


def test_writer_refuses_existing_folder_and_leaves_it_alone(tmp_path):
    out = tmp_path / "em"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="em"):
        write_em_dataset(out, count=1, size=48)
    assert _files(out) == {"keep.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["em"]


def test_writer_overwrite_replaces_only_a_folder_kunet_made(tmp_path):
    out = tmp_path / "hela"
    write_cells_dataset(out, count=2, size=48)
    (out / "extra.txt").write_text("old")
    write_cells_dataset(out, count=1, size=48, overwrite=True)
    assert _files(out) == {"SYNTHETIC.json", "01/t000.tif", "01_GT/SEG/man_seg000.tif"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hela"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="mine: not made by kunet"):
        write_cells_dataset(foreign, count=1, size=48, overwrite=True)
    assert _files(foreign) == {"keep.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hela", "mine"]


@pytest.mark.parametrize("existing", [False, True])
def test_writer_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch, existing):
    out = tmp_path / "em"
    if existing:
        out.mkdir()
        (out / "SYNTHETIC.json").write_text("{}")
        (out / "keep.txt").write_text("old")
    real_write = synthetic.datasets._write
    calls = []

    def failing_write(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        real_write(path, image)

    monkeypatch.setattr(synthetic.datasets, "_write", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        write_em_dataset(out, count=3, size=48, overwrite=True)
    assert len(calls) == 3
    if existing:
        assert _files(out) == {"SYNTHETIC.json", "keep.txt"}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["em"]
    else:
        assert not out.exists()
        assert list(tmp_path.iterdir()) == []


def test_writers_validate_arguments(tmp_path):
    with pytest.raises(ValueError, match="count"):
        write_em_dataset(tmp_path / "em", count=0)
    with pytest.raises(ValueError, match="sequence"):
        write_cells_dataset(tmp_path / "hela", count=1, size=48, sequences=("01", "01"))
    with pytest.raises(ValueError, match="sequence"):
        write_cells_dataset(tmp_path / "hela", count=1, size=48, sequences=("../01",))
    assert list(tmp_path.iterdir()) == []
