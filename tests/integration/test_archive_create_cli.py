"""``eoforge archive create`` on the command line: clear errors, atomic replacement."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipelines.archive.create as create_mod
from flows.cli import app
from schemas.errors import ConflictError, InvalidInputError


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["archive", "create", *args])
    text = result.output
    with contextlib.suppress(ValueError):  # older Click mixes stderr into output
        text += result.stderr
    return result.exit_code, " ".join(text.split())


def test_bad_preset_is_a_clear_error(tmp_path: Path) -> None:
    code, text = _run(str(tmp_path / "a"), "--preset", "huge")
    assert code == 2
    assert "unknown preset 'huge'" in text and "demo, tiny" in text
    assert not (tmp_path / "a").exists()


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="negative"):
        create_mod.create_archive(tmp_path / "a", seed=-1)


def test_non_empty_folder_is_refused_without_force(tmp_path: Path) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code, text = _run(str(target))
    assert code == 4 and "not empty" in text and "--force" in text
    assert (target / "keep.txt").read_text() == "mine"


def test_create_then_force_replace(tmp_path: Path) -> None:
    target = tmp_path / "arch"
    code, text = _run(str(target), "--preset", "tiny", "--seed", "2")
    assert code == 0, text
    assert "created" in text and "recipes/tiny.yaml" in text
    assert json.loads((target / "archive.json").read_text())["seed"] == 2
    (target / "junk.txt").write_text("old")
    code, text = _run(str(target), "--seed", "3", "--force")
    assert code == 0, text
    assert not (target / "junk.txt").exists()
    assert json.loads((target / "archive.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch"]  # no staging folders left


def test_a_failure_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(create_mod._WRITERS, "landsat-c2-l2", boom)
    target = tmp_path / "new"
    with pytest.raises(RuntimeError, match="disk on fire"):
        create_mod.create_archive(target)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "previous.txt").write_text("still here")
    with pytest.raises(RuntimeError, match="disk on fire"):
        create_mod.create_archive(old, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert (old / "previous.txt").read_text() == "still here"


def test_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        create_mod.create_archive(path, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x").write_text("y")
    with pytest.raises(ConflictError):
        create_mod.create_archive(empty)
