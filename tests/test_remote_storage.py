"""Remote storage: records, exports and models at ``scheme://`` URIs, through TensorFlow's ``ram://`` file system.

``ram://`` lives inside one process, so the CLI is driven in-process (``CliRunner``), never as a subprocess.
It takes the same ``tf.io.gfile`` code paths as ``gs://``; a real bucket is not reachable from the tests.
"""

from __future__ import annotations

import json
import uuid

import cv2
import numpy as np
import pytest
import tensorflow as tf
from helpers import blob_image, write_blob_folders
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet import uris
from kunet._fs import INCOMPLETE_MARKER, UnsafeOverwriteError, check_output, commit_remote_directory
from kunet.records import RecordsError, check_shards, iterate_frames, read_manifest, verify_checksums
from kunet.segmenter import Segmenter
from kunet.serving.export import export

runner = CliRunner()


def fresh_uri(what: str) -> str:
    """A ``ram://`` location no other test uses (the in-memory file system is shared by the whole process)."""
    return f"ram://bucket-{uuid.uuid4().hex[:8]}/{what}"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """A local folder of 8 labelled blob images (the tiny_records source), for building remote records."""
    return write_blob_folders(tmp_path_factory.mktemp("blobs"))


def build_cli(blobs, out: str, *extra: str):
    arguments = ["build-records", "--images", str(blobs / "images"), "--labels", str(blobs / "labels"),
                 "--out", out, "--shards", "2", "--val-fraction", "0.25", *extra]  # fmt: skip
    return runner.invoke(app, arguments)


# --- the path layer -----------------------------------------------------------------------------------------


def test_uris_keep_their_double_slash_and_local_paths_stay_paths(tmp_path):
    assert uris.join("gs://bucket/records/", "x", "manifest.json") == "gs://bucket/records/x/manifest.json"
    assert uris.parent("gs://bucket/records/x") == "gs://bucket/records"
    assert uris.name("gs://bucket/records/x/") == "x"
    assert uris.is_bucket_root("gs://bucket/") and not uris.is_bucket_root("gs://bucket/x")
    assert uris.join(tmp_path, "a") == tmp_path / "a"
    assert uris.location(f"file://{tmp_path}") == tmp_path
    assert not uris.is_remote(tmp_path) and not uris.is_remote(f"file://{tmp_path}") and uris.is_remote("ram://b/x")


@pytest.mark.parametrize("scheme", ["s3", "hdfs"])
def test_schemes_tensorflow_does_not_implement_are_named_with_the_fix(scheme):
    with pytest.raises(uris.RemoteStorageError, match=f"no file system for {scheme}://.*tensorflow-io"):
        uris.exists(f"{scheme}://bucket/records")


# --- records ------------------------------------------------------------------------------------------------


def test_build_records_cli_writes_a_verified_set_to_a_uri_kept_intact(blobs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = fresh_uri("records/tiny")
    result = build_cli(blobs, out)
    assert result.exit_code == 0, result.output
    assert f"to {out}" in result.output  # the "//" of the URI was not folded on the way through the CLI
    assert list(tmp_path.iterdir()) == []  # and nothing was written to a local "ram:" folder
    manifest = read_manifest(out)
    assert manifest["counts"] == {"train": 6, "val": 2}
    assert sorted(uris.listdir(out)) == sorted(["manifest.json"] + [s["file"] for s in manifest["shards"]])
    assert uris.listdir(uris.parent(out)) == ["tiny"]  # no temporary or incomplete marker left behind
    for shard in manifest["shards"]:
        assert uris.size(uris.join(out, shard["file"])) == shard["bytes"]
    verify_checksums(out)
    frames = list(iterate_frames(out, "train"))
    assert len(frames) == 6 and {f["source_image"] for f in frames} <= {str(p) for p in blobs.glob("images/*")}
    original = cv2.imread(frames[0]["source_image"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(frames[0]["image"][..., 0], original)


def test_a_remote_set_is_not_overwritten_without_the_flag_nor_a_foreign_folder_with_it(blobs):
    out = fresh_uri("records/tiny")
    assert build_cli(blobs, out).exit_code == 0
    created = read_manifest(out)["created"]
    refused = build_cli(blobs, out)
    assert refused.exit_code == 2 and f"{out}: already exists (use --overwrite" in refused.output
    assert read_manifest(out)["created"] == created
    replaced = build_cli(blobs, out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    verify_checksums(out)
    foreign = fresh_uri("notes")
    uris.write_bytes(uris.join(foreign, "thesis.tex"), b"\\documentclass{article}")
    with pytest.raises(UnsafeOverwriteError, match="not made by kunet"):
        check_output(foreign, True, ["manifest.json"])
    with pytest.raises(UnsafeOverwriteError, match="whole bucket"):
        check_output(uris.parent(foreign), True, ["manifest.json"])
    assert uris.read_bytes(uris.join(foreign, "thesis.tex")) == b"\\documentclass{article}"


def test_a_damaged_remote_shard_is_named(blobs):
    out = fresh_uri("records/tiny")
    assert build_cli(blobs, out).exit_code == 0
    shard = read_manifest(out)["shards"][0]
    path = uris.join(out, shard["file"])
    data = bytearray(uris.read_bytes(path))
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    uris.write_bytes(path, bytes(data))
    check_shards(out)  # sizes match
    with pytest.raises(RecordsError, match=f"{path}: sha256 differs"):
        verify_checksums(out)
    inspected = runner.invoke(app, ["inspect-records", out, "--verify", "--preview", ""])
    assert inspected.exit_code == 2 and f"{path}: sha256 differs" in inspected.output
    uris.write_bytes(path, bytes(data[:100]))
    with pytest.raises(RecordsError, match=f"{path}: 100 bytes, the manifest says {shard['bytes']}"):
        check_shards(out)


def test_a_remote_commit_moves_the_manifest_last_under_an_incomplete_marker(tmp_path, monkeypatch):
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in ("manifest.json", "train-0.tfrecord.gz", "val-0.tfrecord.gz"):
        (staged / name).write_text(name)
    out = fresh_uri("records/x")
    seen = []
    copy = uris.copy

    def recording_copy(source, destination, overwrite=False):
        seen.append((uris.name(destination), uris.exists(uris.join(out, INCOMPLETE_MARKER))))
        copy(source, destination, overwrite)

    monkeypatch.setattr(uris, "copy", recording_copy)
    commit_remote_directory(staged, out, markers=["manifest.json"])
    assert seen[-1] == ("manifest.json", True) and all(marker for _, marker in seen)
    assert uris.listdir(out) == ["manifest.json", "train-0.tfrecord.gz", "val-0.tfrecord.gz"]


def test_an_interrupted_remote_commit_is_refused_by_readers_and_replaced_by_overwrite(blobs):
    out = fresh_uri("records/tiny")
    uris.write_bytes(uris.join(out, INCOMPLETE_MARKER), b"")
    uris.write_bytes(uris.join(out, "train-00000-of-00002.tfrecord.gz"), b"half")
    with pytest.raises(RecordsError, match="no manifest.json"):
        read_manifest(out)
    assert build_cli(blobs, out).exit_code == 2  # exists: still needs the flag
    replaced = build_cli(blobs, out, "--overwrite")  # kunet's own unfinished folder may be replaced
    assert replaced.exit_code == 0, replaced.output
    assert INCOMPLETE_MARKER not in uris.listdir(out)
    verify_checksums(out)


def test_evaluate_reads_remote_records(trained_tiny_run, tiny_records, tmp_path):
    from kunet.evaluation import evaluate

    _, local = tiny_records
    remote = fresh_uri("records/tiny")
    uris.makedirs(remote)
    for name in uris.listdir(local):
        uris.copy(local / name, uris.join(remote, name))
    segmenter = Segmenter(trained_tiny_run)
    remote_report = evaluate(segmenter, remote, "val", tmp_path / "remote")
    local_report = evaluate(segmenter, local, "val", tmp_path / "local")
    assert remote_report["frames"] == local_report["frames"] and remote_report["records"] == remote


def test_fit_trains_from_remote_records(blobs, tmp_path):
    records = fresh_uri("records/tiny")
    assert build_cli(blobs, records).exit_code == 0
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\n[model]\nbase_filters = 4\ndepth = 2\n[train]\ntile_size = 124\n'
                    'batch_size = 2\nsteps_per_epoch = 2\nepochs = 1\nprecision = "float32"\n')  # fmt: skip
    run = tmp_path / "run"
    result = runner.invoke(app, ["fit", str(toml), "--records", records, "--run-dir", str(run), "--verify-records"])
    assert result.exit_code == 0, result.output
    assert "step 2/2" in result.output and (run / "last.keras").is_file()
    assert json.loads((run / "config.json").read_text())["records"] == records


# --- exports ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote_export(trained_tiny_run):
    """``kunet export`` of the session's tiny run to a ram:// export root, twice."""
    base = fresh_uri("models")
    outputs = [runner.invoke(app, ["export", str(trained_tiny_run), "--name", "tiny", "--base-dir", base])
               for _ in range(2)]  # fmt: skip
    return base, outputs


def test_export_to_a_uri_writes_complete_numbered_versions(remote_export):
    base, outputs = remote_export
    for output in outputs:
        assert output.exit_code == 0, output.output
    root = uris.join(base, "tiny")
    assert f"-> {root}/1 " in outputs[0].output and f"-> {root}/2 " in outputs[1].output
    assert uris.listdir(root) == ["1", "2", "README.md", "batching_parameters.txt", "models.config"]
    assert 'base_path: "/models/tiny"' in uris.read_text(uris.join(root, "models.config"))
    assert "max_execution_batch_size { value: 1 }" in uris.read_text(uris.join(root, "batching_parameters.txt"))
    for version in ("1", "2"):
        files = set(uris.walk_files(uris.join(root, version)))
        assert {"saved_model.pb", "assets.extra/kunet.json", "assets.extra/unet.keras", "assets.extra/README.md",
                "assets.extra/tf_serving_warmup_requests"} <= files  # fmt: skip
        assert INCOMPLETE_MARKER not in files and any(f.startswith("variables/") for f in files)
    info = json.loads(uris.read_text(uris.join(root, "2", "assets.extra", "kunet.json")))
    assert info["format"] == "kunet-export-2" and info["training"]["run_steps"] == 12
    warmup = list(tf.data.TFRecordDataset(str(uris.join(root, "1", "assets.extra", "tf_serving_warmup_requests"))))
    assert len(warmup) == 2


def test_predicting_from_a_remote_export_equals_the_local_export(remote_export, trained_tiny_run, tmp_path):
    base, _ = remote_export
    local = export(trained_tiny_run, "tiny", tmp_path / "models", log=lambda *a: None)
    image, _ = blob_image(np.random.default_rng(7), size=120)
    remote = Segmenter(uris.join(base, "tiny", "1"))
    assert remote.saved_model is not None and remote.path == uris.join(base, "tiny", "1")
    expected = Segmenter(local).segment(image)
    result = remote.segment(image)
    assert np.array_equal(result.probabilities, expected.probabilities)
    assert np.array_equal(result.label_values, expected.label_values)
    from_keras = Segmenter(uris.join(base, "tiny", "1", "assets.extra", "unet.keras")).segment(image)
    assert np.array_equal(from_keras.label_values, Segmenter(trained_tiny_run).segment(image).label_values)
    cv2.imwrite(str(tmp_path / "blob.png"), image)
    predicted = runner.invoke(
        app, ["predict", uris.join(base, "tiny", "1"), str(tmp_path / "blob.png"), "--out", str(tmp_path / "p")]
    )
    assert predicted.exit_code == 0, predicted.output
    assert np.array_equal(cv2.imread(str(tmp_path / "p" / "blob_mask.png"), cv2.IMREAD_UNCHANGED),
                          expected.label_values)  # fmt: skip


def test_an_explicit_remote_version_that_exists_is_refused(remote_export, trained_tiny_run):
    base, _ = remote_export
    result = runner.invoke(
        app, ["export", str(trained_tiny_run), "--name", "tiny", "--base-dir", base, "--version", "1"]
    )
    assert result.exit_code == 2 and f"{base}/tiny/1: version 1 already exists" in result.output


def test_a_missing_remote_model_is_named():
    missing = fresh_uri("models/tiny/9")
    result = runner.invoke(app, ["predict", missing, "image.png"])
    assert result.exit_code == 2 and f"{missing}: not found" in result.output


@pytest.mark.slow
def test_check_validates_a_remote_export(remote_export):
    from kunet.serving.check import check

    base, _ = remote_export
    report = check(uris.join(base, "tiny", "2"), log=lambda *a: None)
    assert report["warmup_requests"] == 2 and report["masks_identical"]
