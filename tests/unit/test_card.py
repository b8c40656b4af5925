"""The dataset card names every sensor's source item count and the catalog version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _dataset_synth import LS, S2, build_cube

from catalog import open_catalog
from catalog.writer import read_records
from flows.card import CARD_FILE, card_text, library_versions, write_dataset_card
from flows.stats import current_positions
from pipelines.stats import cube_statistics
from schemas.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cube(tmp_path_factory.mktemp("card") / "cube.zarr", n_tiles=7)


def _card(cube: Path, run_id: str = "run-2") -> str:
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml")
    stats = cube_statistics(cube, current_positions(cube))
    summary = {"splits": {"train": 4, "val": 3}, "leakage": {"min_test_train_distance_m": None}}
    write_dataset_card(cube, recipe=recipe, summary=summary, stats=stats, run_id=run_id)
    return (cube / CARD_FILE).read_text(encoding="utf-8")


def test_card_names_item_counts_and_catalog_version(cube: Path) -> None:
    text = _card(cube)
    rows = read_records(cube).to_pylist()
    for sensor in (S2, LS):
        ids = {
            i for r in rows for o in r["sensors"] if o["sensor"] == sensor for i in o["item_ids"]
        }
        assert f"| {sensor} | {len(ids)} |" in text
        for item in ids:
            assert f"`{item}`" in text
    # The synthetic catalog has one finished version; this (new) run becomes version 2.
    assert len(open_catalog(cube).versions()) == 1
    assert "Catalog version **2** (build run `run-2`)" in text
    assert "version=2" in text
    # A run that already is a version keeps its number.
    assert "Catalog version **1** (build run `run-1`)" in _card(cube, run_id="run-1")


def test_card_has_provenance_licences_and_loading(cube: Path) -> None:
    text = _card(cube)
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml")
    assert recipe.digest() in text
    for name, version in library_versions().items():
        assert f"{name} {version}" in text
    assert "Copernicus Sentinel data" in text and "U.S. Geological Survey" in text
    assert "© European Union, Copernicus Land Monitoring Service" in text
    assert "from catalog import open_catalog, TileDataset" in text
    assert f"**{7}** tiles" in text
    assert re.search(r"\| B02 \| \d+ \| ", text)
    assert not list(cube.glob(".card-*"))


def test_card_text_is_deterministic(cube: Path) -> None:
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml")
    stats = cube_statistics(cube, current_positions(cube))
    a = card_text(cube, recipe=recipe, summary={}, stats=stats, run_id="r")
    b = card_text(cube, recipe=recipe, summary={}, stats=stats, run_id="r")
    assert a.replace(a.split("Size on disk: ")[1].split("\n")[0], "") == b.replace(
        b.split("Size on disk: ")[1].split("\n")[0], ""
    )
