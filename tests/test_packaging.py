"""kunet and its CLI work from an installed wheel (not only from the source tree) and import cheaply."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import REPO_ROOT


def _run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv holding only the kunet wheel; third-party dependencies come from the test venv.

    The test venv's site-packages is appended through a .pth file: its own .pth hooks (the editable
    install's finder among them) are not processed there, so `kunet` can only come from the wheel.
    """
    root = tmp_path_factory.mktemp("wheel")
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root), str(REPO_ROOT)]
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = root.glob("kunet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {str(Path(name).parent) for name in archive.namelist() if name.endswith("/__init__.py")}
    in_tree = {str(path.parent.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "kunet").rglob("__init__.py")}
    assert in_tree <= packaged, f"packages missing from the wheel (list them in pyproject.toml): {in_tree - packaged}"
    venv = root / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    python = venv / "bin" / "python"
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)])
    assert installed.returncode == 0, installed.stderr
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "kunet_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


@pytest.mark.slow
def test_wheel_contains_library_and_cli_and_runs_help_and_info(wheel_venv, tmp_path):
    python = wheel_venv / "bin" / "python"
    where = _run(
        [str(python), "-c", "import kunet, kunet_cli.main; print(kunet.__file__); print(kunet_cli.main.__file__)"],
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert str(wheel_venv) in line, f"imported from outside the wheel: {line}"
    env = dict(os.environ, PYTHONPATH="")
    help_run = _run([str(wheel_venv / "bin" / "kunet"), "--help"], cwd=tmp_path, env=env)
    assert help_run.returncode == 0, help_run.stderr
    assert "info" in help_run.stdout
    info_run = _run([str(wheel_venv / "bin" / "kunet"), "info"], cwd=tmp_path, env=env)
    assert info_run.returncode == 0, info_run.stderr
    assert "tensorflow: 2.21" in info_run.stdout and "AVX-512F" in info_run.stdout


@pytest.mark.slow
def test_the_wheel_carries_the_demos_pipeline(wheel_venv, tmp_path):
    """`kunet demo` from a wheel must find its pipeline without the source tree."""
    program = (
        "from kunet.demo import DEFAULT_PIPELINE; from kunet.config import load_pipeline; "
        "print(DEFAULT_PIPELINE); print(load_pipeline(DEFAULT_PIPELINE).name)"
    )
    shown = _run([str(wheel_venv / "bin" / "python"), "-c", program], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    path, name = shown.stdout.split()
    assert path.startswith(str(wheel_venv)) and name == "synthetic-em"


def test_kunet_imports_without_typer_or_tensorflow():
    code = (
        "import sys; sys.modules['typer'] = None\n"
        "import kunet, kunet.config\n"
        "assert 'tensorflow' not in sys.modules, 'import kunet pulled in TensorFlow'\n"
        "print(kunet.__version__)"
    )
    result = _run([sys.executable, "-c", code], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_version_flag_prints_the_package_version():
    import kunet

    result = _run([sys.executable, "-m", "kunet_cli.main", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kunet {kunet.__version__}"
