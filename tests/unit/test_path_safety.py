"""Ids that become file or array names cannot escape the cube (path traversal)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import shapely

from catalog._parts import check_run_id, check_shard_id, part_name
from catalog.writer import CatalogWriter
from pipelines.grid import Tile
from schemas.errors import InvalidInputError
from schemas.recipe import recipe_from_data
from schemas.tile import TileRecord

EVIL = ["../x", "../../etc/passwd", "/abs", "a/b", "..", ".hidden", "a\\b", "", "x\x00y"]

BASE: dict[str, Any] = {
    "name": "unit",
    "aoi": {"bbox": [11.98, 47.93, 12.02, 47.96]},
    "time": {"start": "2024-06-01", "end": "2024-07-01"},
    "sensors": [{"id": "sentinel-2-l2a", "catalog": "archive:data/a", "resolution": 10}],
    "grid": {"tile_size": 1200},
    "output": {"path": "build/unit.zarr"},
}


@pytest.mark.parametrize("bad", EVIL)
def test_run_and_shard_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        check_run_id(bad)
    with pytest.raises(InvalidInputError):
        check_shard_id(bad)
    with pytest.raises(InvalidInputError):
        part_name(bad, "s00001")


@pytest.mark.parametrize("bad", [*EVIL, "32N-0001-0001/../x", "../32N-0001-0001"])
def test_tile_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        Tile.from_id(bad, 1200.0)


def test_commit_with_an_escaping_shard_id_writes_nothing(tmp_path: Path) -> None:
    cube = tmp_path / "deep" / "cube.zarr"
    tile = Tile(32, "N", 600, 4400, 1200.0)
    footprint = tile.footprint_wgs84()
    record = TileRecord(
        tile_id=tile.id,
        period_id="p",
        period_start=datetime(2024, 6, 1, tzinfo=UTC),
        period_end=datetime(2024, 7, 1, tzinfo=UTC),
        epsg=tile.epsg,
        transform=(10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3]),
        proj_bbox=tile.bounds,
        geometry_wkb=shapely.to_wkb(footprint),
        bbox=footprint.bounds,
        cube_position=0,
        shard_id="../../escape",
    )
    with pytest.raises(InvalidInputError):
        CatalogWriter(cube).commit_shard("../../escape", [record], "20240101T000000Z-abcdef")
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("name",), "../evil"),
        (("labels",), [{"kind": "osm", "name": "../x", "path": "a.osm"}]),
        (
            ("time",),
            {
                "start": "2024-06-01",
                "end": "2024-07-01",
                "periods": "custom",
                "custom": [{"id": "../x", "start": "2024-06-01", "end": "2024-06-10"}],
            },
        ),
    ],
    ids=["recipe-name", "label-name", "period-id"],
)
def test_recipe_names_used_in_paths_are_refused(path: tuple[str, ...], value: Any) -> None:
    data = {**BASE, path[0]: value}
    with pytest.raises(InvalidInputError) as err:
        recipe_from_data(data)
    field = {"name": "name", "labels": "labels[0].name", "time": "time.custom[0].id"}[path[0]]
    assert field in str(err.value)
