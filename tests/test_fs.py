"""kunet._fs: atomic files and folders, and overwrites that delete only what kunet made."""

from __future__ import annotations

import os
import stat

import pytest

from kunet._fs import (
    UnsafeOverwriteError,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    commit_directory,
    stale_temporaries,
    temporary_sibling,
)


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    atomic_write_json(tmp_path / "a.json", {"k": 1})
    assert (tmp_path / "a.json").read_text() == '{\n  "k": 1\n}\n'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")

    def explode(temporary):
        temporary.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save(path, explode)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_atomic_save_keeps_the_suffix_writers_check(tmp_path):
    seen = []
    atomic_save(tmp_path / "x.keras", lambda temporary: (seen.append(temporary.suffix), temporary.write_text("m")))
    assert seen == [".keras"] and (tmp_path / "x.keras").read_text() == "m"


def test_overwrite_refuses_folders_kunet_did_not_make(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "records"
    mine.mkdir()
    (mine / "manifest.json").write_text("{}")
    check_replaceable(mine, ["manifest.json"])  # kunet's marker: allowed
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", ["manifest.json"])  # empty: allowed
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"x")
    with pytest.raises(UnsafeOverwriteError, match="photos: not made by kunet"):
        check_replaceable(foreign, ["manifest.json"])
    with pytest.raises(UnsafeOverwriteError, match="working directory"):
        check_replaceable(".", ["manifest.json"])
    with pytest.raises(UnsafeOverwriteError, match="working directory"):
        check_replaceable(tmp_path, ["manifest.json"])  # holds the working directory
    monkeypatch.setenv("HOME", str(tmp_path / "records"))
    with pytest.raises(UnsafeOverwriteError, match="home folder"):
        check_replaceable(mine, ["manifest.json"])
    monkeypatch.setenv("HOME", "/nonexistent-home")
    (mine / "images").mkdir()
    with pytest.raises(UnsafeOverwriteError, match="which this job reads"):
        check_replaceable(mine, ["manifest.json"], protected=[mine / "images" / "a.png"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafeOverwriteError, match="not a folder"):
        check_replaceable(tmp_path / "file", ["manifest.json"])


def test_commit_directory_replaces_only_with_overwrite_and_keeps_the_old_on_refusal(tmp_path):
    out = tmp_path / "out"
    first = temporary_sibling(out)
    first.mkdir()
    (first / "manifest.json").write_text("1")
    commit_directory(first, out)
    second = temporary_sibling(out)
    second.mkdir()
    (second / "manifest.json").write_text("2")
    with pytest.raises(FileExistsError, match="--overwrite"):
        commit_directory(second, out)
    commit_directory(second, out, overwrite=True, markers=["manifest.json"])
    assert (out / "manifest.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out / "manifest.json").unlink()
    (out / "notes.txt").write_text("mine")
    third = temporary_sibling(out)
    third.mkdir()
    with pytest.raises(UnsafeOverwriteError):
        commit_directory(third, out, overwrite=True, markers=["manifest.json"])
    assert (out / "notes.txt").read_text() == "mine"


def test_stale_temporaries_are_found_by_name_and_age(tmp_path):
    stale = temporary_sibling(tmp_path / "records")
    stale.mkdir()
    part = temporary_sibling(tmp_path / "history.csv", "part")
    part.write_text("x")
    (tmp_path / ".hidden-but-mine").mkdir()
    (tmp_path / "records").mkdir()
    assert stale_temporaries(tmp_path) == sorted([stale, part])
    assert stale_temporaries(tmp_path, older_than_seconds=3600) == []
