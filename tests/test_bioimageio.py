"""bioimage.io packages pass the BioImage Model Zoo's own validator and model test (bioimageio.core)."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from kunet_cli.main import app
from typer.testing import CliRunner

from kunet.serving.bioimageio import PackageError, PackageInfo, to_yaml, write_package

bioimageio_core = pytest.importorskip("bioimageio.core")


@pytest.mark.slow
def test_a_package_passes_the_official_bioimageio_model_test(trained_tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bioimageio.core unzips the weights into ./bioimageio_unzipped_tf_weights
    # bioimageio.core sets TF_ENABLE_ONEDNN_OPTS=0 in this process's environment for good; restore it afterwards,
    # or every later subprocess of this test worker runs TensorFlow without oneDNN.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1"))
    lines = []
    info = PackageInfo(name="kunet tiny blobs", description="Bright disks.", authors=["kunet tests"])
    package = write_package(trained_tiny_run, tmp_path / "tiny.zip", info, log=lines.append)
    # bioimageio.core's own loader, validator and runner: format checks, then the model run on the test
    # tensor (and on other sizes the description allows) with TensorFlow's SavedModel loader.
    summary = bioimageio_core.test_model(package)
    assert summary.status == "passed", summary.display() or [d for d in summary.details if d.status != "passed"]
    names = set(zipfile.ZipFile(package).namelist())
    assert {"bioimageio.yaml", "tf_saved_model_bundle.zip", "test_input.npy", "test_output.npy", "README.md",
            "cover.png", "unet.keras"} <= names  # fmt: skip
    with zipfile.ZipFile(package) as archive:
        readme = archive.read("README.md").decode()
        test_input = np.load(archive.open("test_input.npy"))
        test_output = np.load(archive.open("test_output.npy"))
    assert "10.1007/978-3-319-24574-4_28" in readme and '"run_steps": 12' in readme  # citation, provenance
    assert test_input.shape[:3] == test_output.shape[:3] and test_output.shape[-1] == 2
    np.testing.assert_allclose(test_output.sum(axis=-1), 1.0, atol=1e-5)
    assert [line.split(",")[0] for line in lines] == ["[1/3", "[2/3", "[3/3", "[done"]  # numbered stages
    with pytest.raises(PackageError, match="exists"):
        write_package(trained_tiny_run, package, info, log=lines.append)


def test_a_package_needs_an_author(trained_tiny_run, tmp_path):
    with pytest.raises(PackageError, match="author"):
        write_package(trained_tiny_run, tmp_path / "x.zip", PackageInfo(name="x"), log=lambda line: None)
    assert not (tmp_path / "x.zip").exists()


def test_the_cli_takes_the_package_settings_from_flags(trained_tiny_run, tmp_path, monkeypatch):
    import kunet.serving.bioimageio as packaging

    seen = {}
    monkeypatch.setattr(packaging, "write_package", lambda model, out, info, *a, **k: seen.update(out=out, info=info))
    result = CliRunner().invoke(app, ["export", str(trained_tiny_run), "--format", "bioimageio", "--name", "blobs",
                                      "--author", "A. Person", "--author", "B. Person", "--tag", "nuclei",
                                      "--license", "MIT", "--base-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    info = seen["info"]
    assert (info.name, info.authors, info.tags, info.license) == ("blobs", ["A. Person", "B. Person"], ["nuclei"],
                                                                 "MIT")  # fmt: skip
    assert seen["out"] == tmp_path / "blobs.bioimageio.zip"


def test_yaml_writer_round_trips_through_a_yaml_parser():
    yaml = pytest.importorskip("ruyaml")  # bioimageio.spec's own YAML parser
    document = {"a": [{"b": 1, "c": ["x", "y: z"]}, {"d": {"e": 0.5}}], "f": "quote \" and 'both'", "g": [],
                "h": {}, "i": None, "j": True}  # fmt: skip
    parsed = yaml.YAML(typ="safe").load(to_yaml(document))
    assert json.loads(json.dumps(parsed)) == document
