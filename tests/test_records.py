"""build-records: bit-exact round trips on real data, eq. 2 weight maps, bad input that leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT

from kunet.config import LabelConfig, WeightMapConfig, load_pipeline, pipeline_from_dict
from kunet.records import RecordsError, build_records, iterate_frames, read_manifest, split_frames, verify_checksums
from kunet.sources import SourceError, carve_separation_ridges, interpret_label
from kunet.weightmap import class_balance_weights, weight_map


def _config(tmp_path: Path, **sections):
    data = {
        "name": "t",
        "source": {"kind": "folders", "images": "images", "labels": "labels"},
        "records": {"shards": 1},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return pipeline_from_dict(data, base_dir=tmp_path)


def _write_pair(tmp_path: Path, stem: str, image: np.ndarray, label: np.ndarray, suffix=".png"):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    assert cv2.imwrite(str(tmp_path / "images" / f"{stem}{suffix}"), image)
    assert cv2.imwrite(str(tmp_path / "labels" / f"{stem}{suffix}"), label)


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("images", "labels"))


def _pipeline_with_data(name: str, data_dir: Path):
    config = load_pipeline(REPO_ROOT / "pipelines" / f"{name}.toml")
    if name == "isbi2012":
        config.source.images = str(data_dir / "train" / "images")
        config.source.labels = str(data_dir / "train" / "labels")
    else:
        config.source.root = str(data_dir)
    return config


def test_isbi_records_decode_bit_exactly_to_the_sources(tmp_path, isbi_dir):
    config = _pipeline_with_data("isbi2012", isbi_dir)
    manifest = build_records(config, out=tmp_path / "rec")
    assert manifest["counts"] == {"train": 15, "val": 5}
    seen = {}
    for split in ("train", "val"):
        for frame in iterate_frames(tmp_path / "rec", split):
            seen[frame["frame_id"]] = split
            image = cv2.imread(frame["source_image"], cv2.IMREAD_UNCHANGED)
            label = cv2.imread(frame["source_label"], cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(frame["image"][..., 0], image)
            np.testing.assert_array_equal(frame["label"], label)
            np.testing.assert_array_equal(frame["classes"], (label == 255).astype(np.uint8))
            assert frame["weight"].dtype == np.float32 and frame["weight"].shape == label.shape
    assert {k for k, v in seen.items() if v == "val"} == {f"slice_{i}" for i in range(15, 20)}
    verify_checksums(tmp_path / "rec")
    # Class balance: the rarer membrane class gets w_c = n_cell / n_membrane, cells 1.
    counts = manifest["class_pixel_counts"]["train"]
    assert manifest["weight_map"]["class_weights"] == pytest.approx([counts[1] / counts[0], 1.0])


def test_hela_records_decode_bit_exactly_and_weights_peak_on_separation_ridges(tmp_path, hela_dir):
    config = _pipeline_with_data("dic-hela", hela_dir)
    manifest = build_records(config, out=tmp_path / "rec")
    assert manifest["counts"] == {"train": 8, "val": 4} and manifest["labels"]["dtype"] == "uint16"
    ridge_frames = 0
    for split in ("train", "val"):
        for frame in iterate_frames(tmp_path / "rec", split):
            image = cv2.imread(frame["source_image"], cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(frame["source_label"], cv2.IMREAD_UNCHANGED)
            assert mask.dtype == np.uint16
            np.testing.assert_array_equal(frame["image"][..., 0], image)
            np.testing.assert_array_equal(frame["label"], mask)
            ridge = (mask > 0) & (frame["classes"] == 0)  # carved between touching cells
            if not ridge.any():
                continue
            ridge_frames += 1
            weight = frame["weight"]
            # The highest weights of the frame sit on the ridges: w_c(bg) + ~w0 * exp(-4 / 50).
            assert weight[ridge].max() == pytest.approx(weight.max(), rel=1e-3)
            assert np.median(weight[ridge]) > 8.0
            far_background = (frame["classes"] == 0) & (cv2.dilate((mask > 0).astype(np.uint8), np.ones((61, 61))) == 0)
            if far_background.any():
                assert weight[far_background].max() < 1.5
    assert ridge_frames >= 6  # most HeLa frames have touching cells


def _brute_force_weights(classes, objects, params: WeightMapConfig, class_weights):
    """Eq. 2 straight from the definition: distance to every pixel of every object."""
    height, width = classes.shape
    yy, xx = np.mgrid[0:height, 0:width]
    distances = []
    for k in range(1, objects.max() + 1):
        oy, ox = np.nonzero(objects == k)
        d = np.sqrt((yy[..., None] - oy) ** 2 + (xx[..., None] - ox) ** 2).min(axis=-1)
        distances.append(d)
    distances = np.sort(np.stack(distances), axis=0)
    border = params.w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (params.sigma_factor * params.sigma**2))
    return np.asarray(class_weights)[classes] + border * (classes == 0)


@pytest.mark.parametrize("preset", ["paper", "falk2019"])
def test_golden_weight_map_on_three_objects_matches_the_formula(preset):
    objects = np.zeros((23, 31), np.int32)
    objects[3:9, 4:10] = 1
    objects[3:9, 12:18] = 2  # 2-px gap to object 1
    objects[13:20, 5:25] = 3
    classes = (objects > 0).astype(np.uint8)
    params = WeightMapConfig(preset=preset).resolved()
    class_weights = params.class_weights or class_balance_weights(np.bincount(classes.ravel()))
    got = weight_map(classes, objects, 3, params, class_weights)
    expected = _brute_force_weights(classes, objects, params, class_weights)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    # A hand-checked value: pixel (5, 10) lies in the gap, 1 px from object 1 and 2 px from object 2.
    w_bg = class_weights[0]
    assert got[5, 10] == pytest.approx(
        w_bg + params.w0 * np.exp(-9 / (params.sigma_factor * params.sigma**2)), rel=1e-5
    )


def test_ridge_carving_separates_touching_instances_by_one_pixel():
    instances = np.zeros((12, 12), np.int32)
    instances[2:10, 1:6] = 4
    instances[2:10, 6:11] = 2
    carved = carve_separation_ridges(instances)
    # The higher id (4) loses its contact column: a 1-px ridge, the other object untouched.
    assert np.all(carved[2:10, 5] == 0) and np.all(carved[2:10, 6] == 2) and np.all(carved[2:10, 4] == 4)
    padded = np.pad(carved, 1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = padded[1 + dy : 13 + dy, 1 + dx : 13 + dx]
            assert not np.any((carved > 0) & (neighbour > 0) & (neighbour != carved))
    labelled = interpret_label(instances.astype(np.uint16), LabelConfig(kind="instance"), "x")
    assert labelled.num_objects == 2


def test_split_is_deterministic_and_spread(tmp_path):
    class F:
        def __init__(self, i):
            self.frame_id = f"f{i:02d}"

    frames = [F(i) for i in range(20)]
    first = split_frames(frames, 0.25, [])
    assert first == split_frames(frames, 0.25, [])
    val = sorted(k for k, v in first.items() if v == "val")
    assert val == ["f02", "f06", "f10", "f14", "f18"]
    with pytest.raises(RecordsError, match="nope"):
        split_frames(frames, 0.25, ["nope"])


def test_tiff_stack_source(tmp_path, isbi_dir):
    pages = [cv2.imread(str(isbi_dir / "train" / "images" / f"slice_0{i}.png"), cv2.IMREAD_UNCHANGED) for i in range(3)]
    labels = [
        cv2.imread(str(isbi_dir / "train" / "labels" / f"slice_0{i}.png"), cv2.IMREAD_UNCHANGED) for i in range(3)
    ]
    assert cv2.imwritemulti(str(tmp_path / "train-volume.tif"), pages)
    assert cv2.imwritemulti(str(tmp_path / "train-labels.tif"), labels)
    config = _config(
        tmp_path,
        source={"kind": "tiff_stack", "images": "train-volume.tif", "labels": "train-labels.tif"},
        records={"val_fraction": 0.34},
    )
    manifest = build_records(config, out=tmp_path / "rec")
    assert manifest["counts"] == {"train": 2, "val": 1}
    frames = {f["frame_id"]: f for split in ("train", "val") for f in iterate_frames(tmp_path / "rec", split)}
    for page in range(3):
        frame = frames[f"train-volume_{page:04d}"]
        assert frame["source_page"] == page
        np.testing.assert_array_equal(frame["image"][..., 0], pages[page])
        np.testing.assert_array_equal(frame["label"], labels[page])


def test_existing_output_is_never_overwritten_without_the_flag(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _write_pair(tmp_path, f"a{i}", rng.integers(0, 255, (40, 50), dtype=np.uint8), _two_blobs(40, 50))
    config = _config(tmp_path, labels={"kind": "binary"})
    first = build_records(config, out=tmp_path / "rec")
    with pytest.raises(FileExistsError, match="rec"):
        build_records(config, out=tmp_path / "rec")
    assert read_manifest(tmp_path / "rec")["created"] == first["created"]
    second = build_records(config, out=tmp_path / "rec", overwrite=True)
    assert read_manifest(tmp_path / "rec")["shards"] == second["shards"]
    assert _leftovers(tmp_path) == ["rec"]


def _two_blobs(height, width, fg=255):
    label = np.zeros((height, width), np.uint8)
    label[5:15, 5:20] = fg
    label[20:35, 25:45] = fg
    return label


def _bad_case(tmp_path: Path, case: str):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    good = _two_blobs(40, 50)
    _write_pair(tmp_path, "ok0", image, good)
    _write_pair(tmp_path, "ok1", image, good)
    config = _config(tmp_path)
    if case == "size mismatch":
        _write_pair(tmp_path, "bad", image, good[:30])
        return config, "bad.png"
    if case == "missing partner":
        cv2.imwrite(str(tmp_path / "images" / "lonely.png"), image)
        return config, "lonely"
    if case == "truncated":
        _write_pair(tmp_path, "bad", image, good)
        data = (tmp_path / "images" / "bad.png").read_bytes()
        (tmp_path / "images" / "bad.png").write_bytes(data[: len(data) // 2])
        return config, "bad.png"
    if case == "unreadable":
        _write_pair(tmp_path, "bad", image, good)
        (tmp_path / "labels" / "bad.png").write_bytes(b"this is not a png")
        return config, "bad.png"
    if case == "float labels":
        cv2.imwrite(str(tmp_path / "images" / "bad.tif"), image)
        cv2.imwrite(str(tmp_path / "labels" / "bad.tif"), good.astype(np.float32))
        return config, "bad.tif"
    if case == "negative labels":
        cv2.imwrite(str(tmp_path / "images" / "bad.tif"), image)
        negative = good.astype(np.int16)
        negative[0, 0] = -3
        assert cv2.imwrite(str(tmp_path / "labels" / "bad.tif"), negative)
        return config, "bad.tif"
    if case == "undeclared value":
        label = good.copy()
        label[0, 0] = 128
        _write_pair(tmp_path, "bad", image, label)
        return config, "bad.png.*128"
    if case == "empty source":
        for path in list((tmp_path / "images").iterdir()) + list((tmp_path / "labels").iterdir()):
            path.unlink()
        return config, "no PNG or TIFF images"
    if case == "zero objects":
        cv2.imwrite(str(tmp_path / "labels" / "ok0.png"), np.zeros((40, 50), np.uint16))
        return _config(tmp_path, labels={"kind": "instance"}), "ok0.png.*no objects"
    raise AssertionError(case)


BAD_CASES = [
    "size mismatch",
    "missing partner",
    "truncated",
    "unreadable",
    "float labels",
    "negative labels",
    "undeclared value",
    "empty source",
    "zero objects",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_names_the_file_and_leaves_no_output(tmp_path, case):
    config, pattern = _bad_case(tmp_path, case)
    with pytest.raises((SourceError, RecordsError)) as error:
        build_records(config, out=tmp_path / "rec")
    import re

    assert re.search(pattern, str(error.value)), str(error.value)
    assert _leftovers(tmp_path) == [], "no output or temporary folder may remain"


def test_cli_build_and_inspect_records(tmp_path, isbi_dir):
    from kunet_cli.main import app
    from typer.testing import CliRunner

    runner = CliRunner()
    out = tmp_path / "rec"
    result = runner.invoke(
        app,
        [
            "build-records",
            "--images", str(isbi_dir / "train" / "images"),
            "--labels", str(isbi_dir / "train" / "labels"),
            "--out", str(out),
            "--val-ids", "slice_18,slice_19",
            "--shards", "3",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 18, "val": 2}
    assert len([s for s in manifest["shards"] if s["split"] == "train"]) == 3
    again = runner.invoke(app, ["build-records", "--images", str(isbi_dir / "train" / "images"), "--labels",
                                str(isbi_dir / "train" / "labels"), "--out", str(out)])  # fmt: skip
    assert again.exit_code == 2 and "already exists" in again.output
    shown = runner.invoke(app, ["inspect-records", str(out), "--verify", "--preview", str(tmp_path / "p.png")])
    assert shown.exit_code == 0, shown.output
    assert "18 train, 2 val" in shown.output and "all shards match" in shown.output
    preview = cv2.imread(str(tmp_path / "p.png"))
    assert preview is not None and preview.shape[1] > 1000
