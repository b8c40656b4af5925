"""``eoforge recipe validate`` and ``eoforge recipe schema``: exit codes, messages, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from schemas.recipe import SCHEMA_PATH, recipe_json_schema

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
TINY = REPO / "recipes" / "tiny.yaml"

runner = CliRunner()


def _bad_recipe(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.yaml"
    text = TINY.read_text(encoding="utf-8").replace("tile_size: 1200", "tile_size: 1000")
    bad.write_text(text, encoding="utf-8")
    return bad


def test_validate_accepts_every_shipped_recipe() -> None:
    assert len(RECIPES) >= 3
    result = runner.invoke(app, ["recipe", "validate", *map(str, RECIPES)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ok: ") == len(RECIPES)
    assert "'tiny', 4 sensor(s), 3 period(s) 2024-06..2024-08, tile 1200 m" in result.stdout


def test_validate_names_the_field_and_exits_2(tmp_path: Path) -> None:
    bad = _bad_recipe(tmp_path)
    result = runner.invoke(app, ["recipe", "validate", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: 3 problems:" in result.stderr
    # brackets in field paths survive rich's markup
    assert "sensors[1].resolution: 30 m does not divide grid.tile_size 1000 m" in result.stderr
    assert "sensors[3].resolution: 30 m does not divide" in result.stderr
    assert "split.block_size: 4800 m is not a multiple of grid.tile_size 1000 m" in result.stderr
    assert "\nFix: correct each field named above" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_reports_every_file(tmp_path: Path) -> None:
    bad = _bad_recipe(tmp_path)
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(app, ["recipe", "validate", str(TINY), str(bad), str(missing)])
    assert result.exit_code == 2
    assert result.stdout.count("ok: ") == 1
    assert f"{missing}: recipe file not found" in result.stderr
    assert result.stderr.count("error:") == 2


def test_validate_show_prints_defaults() -> None:
    result = runner.invoke(app, ["recipe", "validate", "--show", str(TINY)])
    assert result.exit_code == 0, result.output
    assert "provider: archive" in result.stdout
    assert "codec: blosc-lz4" in result.stdout


def test_schema_prints_the_json_schema() -> None:
    result = runner.invoke(app, ["recipe", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == recipe_json_schema()


def test_schema_output_writes_the_committed_file(tmp_path: Path) -> None:
    target = tmp_path / "recipe.schema.json"
    result = runner.invoke(app, ["recipe", "schema", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8") == SCHEMA_PATH.read_text(encoding="utf-8")
    unwritable = runner.invoke(app, ["recipe", "schema", "-o", str(tmp_path / "no" / "dir.json")])
    assert unwritable.exit_code == 2
    assert "cannot write the schema" in unwritable.stderr


def test_installed_console_script_has_no_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "eoforge"
    if not script.exists():
        pytest.skip(f"console script not installed at {script}")
    bad = _bad_recipe(tmp_path)
    proc = subprocess.run(
        [str(script), "recipe", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "sensors[1].resolution" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = subprocess.run(
        [str(script), "recipe", "validate", str(TINY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok: " in ok.stdout
