"""Catalog rows as STAC Items, the cube as a STAC Collection, stac-geoparquet/NDJSON export."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pytest
import rustac
import shapely
from shapely.geometry import shape
from typer.testing import CliRunner

from catalog.stac import (
    EO_EXTENSION,
    LABEL_EXTENSION,
    PROJECTION_EXTENSION,
    PROVIDER_API_URLS,
    cube_collection,
    cube_stac,
    read_cube_layout,
    record_to_item,
    source_links_from_plans,
    write_stac_geoparquet,
)
from catalog.stac_serve import _split_dsn, cube_queryables, stage_cube_stac
from catalog.writer import CatalogWriter
from pipelines.archive.stac_validate import schema_url_to_path, validate_collection, validate_item
from pipelines.grid import Tile
from pipelines.plan import BuildPlan, SensorPlan
from pipelines.write import open_or_create_cube
from schemas.cube import CubeLayout, LabelLayout, SensorLayout
from schemas.errors import InvalidInputError, NotFoundError
from schemas.tile import SensorObservation, TileRecord

TILE_M = 1200.0
S2, LS, S1 = "sentinel-2-l2a", "landsat-c2-l2", "sentinel-1-rtc"
JUNE = (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
JULY = (datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 8, 1, tzinfo=UTC))
CORINE = ("UNLABELED", "Pastures", "Forest, broad-leaved", "Water bodies")
OSM = ("background", "building", "road")

LAYOUT = CubeLayout.for_recipe_like(
    [
        SensorLayout(S2, ("B02", "B03", "B04", "B08"), 10.0, scale_factor=1e-4, add_offset=0.0),
        SensorLayout(LS, ("red", "nir08"), 30.0, scale_factor=1e-4, add_offset=0.0),
        SensorLayout(S1, ("vv", "vh"), 20.0, scale_factor=0.01, add_offset=0.0, units="dB"),
    ],
    tile_size_m=TILE_M,
    tiles_per_shard=2,
    labels=[LabelLayout("corine", CORINE), LabelLayout("osm", OSM)],
)


def _obs(sensor: str, day: int, month: int, ids: tuple[str, ...], cloud: float | None) -> Any:
    return SensorObservation(
        sensor=sensor,
        datetimes=(datetime(2024, month, day, 10, 30, tzinfo=UTC),),
        item_ids=ids,
        cloud_fraction=cloud,
        valid_fraction=0.8,
        shift_dy_m=None if sensor == LS else 1.25,
        shift_dx_m=None if sensor == LS else -2.5,
        shift_applied=sensor == S2,
    )


def _record(
    tile: Tile,
    period: tuple[datetime, datetime],
    position: int,
    sensors: tuple[SensorObservation, ...],
    split: str | None,
    *,
    pastures: float,
    flags: tuple[str, ...] = (),
) -> TileRecord:
    footprint = tile.footprint_wgs84()
    return TileRecord(
        tile_id=tile.id,
        period_id=f"{period[0]:%Y-%m}",
        period_start=period[0],
        period_end=period[1],
        epsg=tile.epsg,
        transform=(10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3]),
        proj_bbox=tile.bounds,
        geometry_wkb=shapely.to_wkb(footprint),
        bbox=footprint.bounds,
        cube_position=position,
        shard_id=f"s{position // 2:05d}",
        sensors=sensors,
        split=split,
        class_fractions={"corine": {"Pastures": pastures, "Water bodies": 1.0 - pastures}},
        multilabels={"corine": ("Pastures",) if pastures > 0.3 else ("Water bodies",)},
        unlabeled_fractions={"corine": 0.05 * position, "osm": 0.5},
        label_flags=flags,
    )


def make_records() -> list[TileRecord]:
    """Rows in two UTM zones and two periods; one radar-only tile, one without a split."""
    t32a, t32b = Tile(32, "N", 400, 4400, TILE_M), Tile(32, "N", 401, 4400, TILE_M)
    t33 = Tile(33, "N", 230, 4400, TILE_M)
    return [
        _record(
            t32a,
            JUNE,
            0,
            (
                _obs(S1, 4, 6, ("S1A_0604",), None),
                _obs(S2, 3, 6, ("S2A_0603", "S2B_0605"), 0.10),
                _obs(LS, 8, 6, ("LC09_0608",), 0.30),
            ),
            "train",
            pastures=0.7,
        ),
        _record(t32b, JUNE, 1, (_obs(S2, 3, 6, ("S2A_0603",), 0.02),), "val", pastures=0.2),
        _record(
            t32a,
            JULY,
            2,
            (_obs(S1, 9, 7, ("S1A_0709",), None),),
            None,
            pastures=0.5,
            flags=("osm",),
        ),
        _record(
            t33,
            JULY,
            3,
            (_obs(S2, 12, 7, ("S2A_0712",), 0.5), _obs(LS, 10, 7, ("LC08_0710",), 0.0)),
            "test",
            pastures=0.9,
        ),
    ]


def _sensor_plan(sensor: str, provider: str, items: list[dict[str, Any]], reference: bool) -> Any:
    return SensorPlan(
        sensor=sensor,
        provider=provider,
        collection=sensor,
        bands=("x",),
        resolution_m=10.0,
        mask={},
        temporal_mode="best",
        max_scenes=None,
        min_valid_fraction=0.0,
        reference=reference,
        coregister=not reference,
        items=tuple(items),
    )


def _self(href: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": href}, {"rel": "root", "href": "https://x.test/"}]


def write_plan(cube: Path) -> None:
    """A real BuildPlan JSON: Landsat is the reference; hrefs from self links or the provider."""
    plan = BuildPlan(
        recipe_name="unit",
        recipe_digest="0" * 64,
        tile_size_m=TILE_M,
        tiles_per_shard=2,
        periods=(),
        sensors=(
            _sensor_plan(
                S2,
                "earth-search",
                [
                    {"id": "S2A_0603", "links": _self("https://es.test/items/S2A_0603")},
                    {"id": "S2B_0605", "collection": "sentinel-2-c1-l2a"},  # no self link
                    {"id": "S2A_0712", "links": _self("https://es.test/items/S2A_0712")},
                ],
                reference=False,
            ),
            _sensor_plan(
                LS, "planetary-computer", [{"id": "LC09_0608"}, {"id": "LC08_0710"}], True
            ),
            _sensor_plan(S1, "archive", [{"id": "S1A_0604"}], reference=False),  # no href at all
        ),
        shards=(),
    )
    (cube / "_eoforge").mkdir(parents=True, exist_ok=True)
    (cube / "_eoforge" / "plan-20240801T000000Z-abcdef.json").write_text(plan.to_json())


def make_cube(root: Path, records: list[TileRecord], *, plan: bool = True) -> Path:
    cube = root / "unit-cube.zarr"
    open_or_create_cube(cube, LAYOUT, n_tiles_capacity=len(records))
    writer = CatalogWriter(cube)
    for shard in sorted({r.shard_id for r in records}):
        writer.commit_shard(shard, [r for r in records if r.shard_id == shard], run_id="run-1")
    if plan:
        write_plan(cube)
    return cube


@pytest.fixture()
def cube(tmp_path: Path) -> Path:
    return make_cube(tmp_path, make_records())


# --- validation against the offline STAC schemas -----------------------------------------------

#: The label extension's field rules (v1.0.1, "fields" definition, restated): used while
#: ../shared/fixtures/stac-schemas has no copy of the label schema.
LABEL_FIELDS_V101: dict[str, Any] = {
    "type": "object",
    "required": ["label:properties", "label:description", "label:type"],
    "properties": {
        "label:properties": {
            "oneOf": [
                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                {"type": "null"},
            ]
        },
        "label:classes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "classes"],
                "properties": {
                    "name": {"type": "null"},  # label:type raster
                    "classes": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "label:description": {"type": "string", "minLength": 1},
        "label:type": {"enum": ["raster", "vector"]},
        "label:tasks": {"type": "array", "items": {"type": "string"}},
        "label:methods": {"type": "array", "items": {"type": "string"}},
    },
    "patternProperties": {"^(?!label:)": {}},
    "additionalProperties": False,
}


def validate_stac(doc: Mapping[str, Any], schemas: Path) -> None:
    """Core + every declared extension; the label extension by its restated field rules when
    the fixtures hold no copy of its schema (and only that one may be missing)."""
    declared = [str(u) for u in doc.get("stac_extensions", [])]
    missing = {u for u in declared if not (p := schema_url_to_path(u, schemas)) or not p.is_file()}
    assert missing <= {LABEL_EXTENSION}, f"no local schema for {missing - {LABEL_EXTENSION}}"
    if doc["type"] == "Feature":
        validate_item(doc, schemas, skip_unavailable=bool(missing))
    else:
        validate_collection(doc, schemas, skip_unavailable=bool(missing))
    if LABEL_EXTENSION in missing:
        if doc["type"] == "Feature":
            jsonschema.validate(doc["properties"], LABEL_FIELDS_V101)
        parts = [*doc.get("assets", {}).values(), *doc.get("item_assets", {}).values()]
        for part in parts:
            jsonschema.validate(part, {**LABEL_FIELDS_V101, "required": []})


def test_every_item_and_the_collection_validate(cube: Path, shared_fixtures: Path) -> None:
    schemas = shared_fixtures / "stac-schemas"
    stac = cube_stac(cube)
    assert len(stac.items) == 4
    for item in stac.items:
        validate_stac(item, schemas)
        assert item["stac_extensions"][0] == PROJECTION_EXTENSION
        assert LABEL_EXTENSION in item["stac_extensions"]
    validate_stac(stac.collection, schemas)
    assert set(stac.collection["stac_extensions"]) == {
        PROJECTION_EXTENSION,
        EO_EXTENSION,
        LABEL_EXTENSION,
    }


def test_a_broken_item_does_not_validate(cube: Path, shared_fixtures: Path) -> None:
    """The validation above can fail: a wrong proj:shape and a percent above 100 are caught."""
    schemas = shared_fixtures / "stac-schemas"
    item = cube_stac(cube).items[0]
    bad = {**item, "properties": {**item["properties"], "proj:shape": [120]}}
    with pytest.raises(InvalidInputError, match="proj:shape"):
        validate_stac(bad, schemas)
    bad = {**item, "properties": {**item["properties"], "eo:cloud_cover": 130.0}}
    with pytest.raises(InvalidInputError, match="eo:cloud_cover"):
        validate_stac(bad, schemas)
    bad = {**item, "properties": {**item["properties"], "label:type": "pixels"}}
    with pytest.raises(jsonschema.ValidationError):
        validate_stac(bad, schemas)


# --- Item fields --------------------------------------------------------------------------------


def test_item_fields_follow_the_row(cube: Path) -> None:
    records = make_records()
    items = {i["id"]: i for i in cube_stac(cube).items}
    assert list(items) == [r.id for r in records]
    for record in records:
        item = items[record.id]
        props = item["properties"]
        assert item["collection"] == "unit-cube"
        assert item["bbox"] == list(record.bbox)
        assert shape(item["geometry"]).equals(shapely.from_wkb(record.geometry_wkb))
        assert props["datetime"] is None
        assert props["start_datetime"] == record.period_start.isoformat().replace("+00:00", "Z")
        # Half-open period [start, end): the inclusive STAC end is 1 ms before the next period.
        end = datetime.fromisoformat(props["end_datetime"].replace("Z", "+00:00"))
        assert end == record.period_end - timedelta(milliseconds=1)
        assert props["proj:code"] == f"EPSG:{record.epsg}"
        assert props["proj:bbox"] == list(record.proj_bbox)
        assert props["proj:shape"] == [120, 120]
        assert props["proj:transform"] == list(record.transform)
        assert props["eoforge:split"] == record.split
        assert props["eoforge:cube_position"] == record.cube_position
        assert props["eoforge:class_fractions"]["corine"] == dict(record.class_fractions["corine"])
        assert props["eoforge:unlabeled_fractions"] == dict(record.unlabeled_fractions)
        assert props["eoforge:label_flags"] == list(record.label_flags)
        assert props["label:classes"] == [
            {"name": None, "classes": list(CORINE)},
            {"name": None, "classes": list(OSM)},
        ]
        assert props["eoforge:label_sources"] == ["corine", "osm"]
        cube_asset = item["assets"]["cube"]
        assert cube_asset["href"] == cube.resolve().as_uri()
        assert cube_asset["type"] == "application/vnd+zarr"
        assert cube_asset["eoforge:cube_position"] == record.cube_position
    # Sensors in cube order (S2, Landsat, S1), whatever the row's order.
    first = items[records[0].id]
    assert first["properties"]["eoforge:sensor_names"] == [S2, LS, S1]
    s2 = first["properties"]["eoforge:sensors"][0]
    assert s2["item_ids"] == ["S2A_0603", "S2B_0605"]
    assert s2["datetimes"] == ["2024-06-03T10:30:00Z"]
    assert (s2["cloud_cover"], s2["shift_dy_m"], s2["shift_applied"]) == (10.0, 1.25, True)
    assert first["properties"]["eoforge:sensors"][2]["cloud_cover"] is None  # radar


def test_per_sensor_assets_carry_their_own_grid(cube: Path) -> None:
    item = cube_stac(cube, cube_href="../cubes/unit.zarr").items[0]
    ls = item["assets"][LS]
    assert ls["href"] == "../cubes/unit.zarr/landsat-c2-l2"
    assert ls["gsd"] == 30.0
    assert ls["proj:shape"] == [40, 40]
    x0, y1 = item["properties"]["proj:transform"][2], item["properties"]["proj:transform"][5]
    assert ls["proj:transform"] == [30.0, 0.0, x0, 0.0, -30.0, y1]
    assert [b["name"] for b in ls["bands"]] == ["red", "nir08"]
    assert item["assets"][S1]["proj:shape"] == [60, 60]
    corine = item["assets"]["labels-corine"]
    assert corine["href"] == "../cubes/unit.zarr/labels/corine"
    assert corine["roles"] == ["labels"]
    assert corine["label:classes"] == [{"name": None, "classes": list(CORINE)}]
    # Only sensors with data in the tile get an asset.
    radar_only = cube_stac(cube).items[2]
    assert {k for k in radar_only["assets"] if not k.startswith("labels-")} == {"cube", S1}


def test_cloud_cover_prefers_the_reference_sensor(cube: Path) -> None:
    props = [i["properties"] for i in cube_stac(cube).items]
    # Plan: Landsat is the reference. Row 0 has S2 (10 %) and Landsat (30 %): Landsat's.
    assert props[0]["eo:cloud_cover"] == 30.0
    # Row 1 has only S2: the first optical sensor present.
    assert props[1]["eo:cloud_cover"] == 2.0
    # Row 2 is radar only: no eo field, so no eo extension either (its schema needs a field).
    assert "eo:cloud_cover" not in props[2]
    assert EO_EXTENSION not in cube_stac(cube).items[2]["stac_extensions"]
    assert props[3]["eo:cloud_cover"] == 0.0
    # Without the plan (no reference known) the first optical sensor in cube order: S2.
    item = record_to_item(make_records()[0], LAYOUT, cube_href="c.zarr")
    assert item["properties"]["eo:cloud_cover"] == 10.0
    item = record_to_item(make_records()[0], LAYOUT, cube_href="c.zarr", reference_sensor=S1)
    assert item["properties"]["eo:cloud_cover"] == 10.0  # the radar reference has no cloud cover


def test_derived_from_links_come_from_the_plans(cube: Path) -> None:
    links = source_links_from_plans(cube)
    assert links == {
        "S2A_0603": "https://es.test/items/S2A_0603",
        "S2B_0605": f"{PROVIDER_API_URLS['earth-search']}/collections/sentinel-2-c1-l2a/items/"
        "S2B_0605",
        "S2A_0712": "https://es.test/items/S2A_0712",
        "LC09_0608": f"{PROVIDER_API_URLS['planetary-computer']}/collections/landsat-c2-l2/"
        "items/LC09_0608",
        "LC08_0710": f"{PROVIDER_API_URLS['planetary-computer']}/collections/landsat-c2-l2/"
        "items/LC08_0710",
    }
    # The archive's S1 item has neither a self link nor a public API: a URL given per sensor.
    overridden = source_links_from_plans(cube, catalog_urls={S1: "http://127.0.0.1:9/"})
    assert overridden["S1A_0604"] == "http://127.0.0.1:9/collections/sentinel-1-rtc/items/S1A_0604"
    first = cube_stac(cube).items[0]
    derived = [link["href"] for link in first["links"] if link["rel"] == "derived_from"]
    assert derived == [links["S2A_0603"], links["S2B_0605"], links["LC09_0608"]]
    assert [link for link in first["links"] if link["rel"] == "collection"] == [
        {"rel": "collection", "href": "collection.json", "type": "application/json"}
    ]
    # No plan: no derived_from links, the ids stay in eoforge:sensors.
    item = record_to_item(make_records()[0], LAYOUT, cube_href="c.zarr")
    assert item["links"] == [] and "collection" not in item
    assert item["properties"]["eoforge:sensors"][0]["item_ids"] == ["S2A_0603", "S2B_0605"]


def test_no_labels_no_label_extension() -> None:
    layout = CubeLayout.for_recipe_like(
        [SensorLayout(S2, ("B04",), 10.0)], tile_size_m=TILE_M, tiles_per_shard=2
    )
    record = make_records()[1]
    item = record_to_item(record, layout, cube_href="c.zarr")
    assert LABEL_EXTENSION not in item["stac_extensions"]
    assert not any(k.startswith(("label:", "eoforge:class")) for k in item["properties"])
    collection = cube_collection(layout, [record], collection_id="x")
    assert LABEL_EXTENSION not in collection["stac_extensions"]
    assert "label:classes" not in collection["summaries"]


# --- Collection ---------------------------------------------------------------------------------


def test_collection_extents_and_summaries_come_from_the_rows(cube: Path) -> None:
    records = make_records()
    collection = cube_stac(cube).collection
    assert collection["id"] == "unit-cube"
    boxes = collection["extent"]["spatial"]["bbox"]
    assert boxes[0] == [
        min(r.bbox[0] for r in records),
        min(r.bbox[1] for r in records),
        max(r.bbox[2] for r in records),
        max(r.bbox[3] for r in records),
    ]
    # Two UTM zones: one sub-extent per zone after the overall box.
    assert len(boxes) == 3
    assert boxes[2] == list(records[3].bbox)
    assert collection["extent"]["temporal"]["interval"] == [
        ["2024-06-01T00:00:00Z", "2024-07-31T23:59:59.999Z"]
    ]
    summaries = collection["summaries"]
    assert summaries["proj:code"] == ["EPSG:32632", "EPSG:32633"]
    assert summaries["eoforge:split"] == ["test", "train", "val"]
    assert summaries["eoforge:period_id"] == ["2024-06", "2024-07"]
    assert summaries["eo:cloud_cover"] == {"minimum": 0.0, "maximum": 30.0}
    assert summaries["label:classes"][0]["classes"] == list(CORINE)
    assert summaries["gsd"] == [10.0, 20.0, 30.0]
    assert set(collection["item_assets"]) == {"cube", S2, LS, S1, "labels-corine", "labels-osm"}
    assert collection["assets"]["cube"]["href"] == cube.resolve().as_uri()
    assert CubeLayout.from_root_attrs(collection["eoforge:layout"]) == LAYOUT
    assert collection["license"] == "other"
    assert collection["providers"][0]["roles"] == ["processor"]


def test_empty_catalog_gives_an_open_collection(tmp_path: Path, shared_fixtures: Path) -> None:
    cube = make_cube(tmp_path, [], plan=False)
    stac = cube_stac(cube)
    assert stac.items == []
    assert stac.collection["extent"]["temporal"]["interval"] == [[None, None]]
    validate_stac(stac.collection, shared_fixtures / "stac-schemas")
    with pytest.raises(NotFoundError, match="no committed tiles"):
        write_stac_geoparquet(cube, tmp_path / "out.parquet")


def test_not_a_cube_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"zarr\.json"):
        read_cube_layout(tmp_path / "nothing")
    with pytest.raises(NotFoundError, match=r"zarr\.json"):
        cube_stac(tmp_path)


# --- exports ------------------------------------------------------------------------------------


def _without_nulls(value: Any) -> Any:
    """What stac-geoparquet keeps: no null-valued object fields."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _ms(text: str) -> str:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_stac_geoparquet_round_trips(cube: Path, tmp_path: Path) -> None:
    out = tmp_path / "export" / "tiles.parquet"
    ndjson = tmp_path / "export" / "tiles.ndjson"
    assert write_stac_geoparquet(cube, out, ndjson_path=ndjson) == out
    expected = cube_stac(cube).items
    assert [json.loads(line) for line in ndjson.read_text().splitlines()] == expected
    collection = json.loads((out.parent / "collection.json").read_text())
    assert collection == cube_stac(cube).collection
    # Read back with pyarrow: GeoParquet geometry and the id column.
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [i["id"] for i in expected]
    for wkb, item in zip(table.column("geometry").to_pylist(), expected, strict=True):
        assert shapely.from_wkb(wkb).equals(shape(item["geometry"]))
    file_meta = pq.ParquetFile(out).metadata.metadata
    geo = json.loads(file_meta[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert b"stac-geoparquet" in file_meta
    # Read back with rustac: the same Items, less null fields, times in milliseconds.
    back = rustac.read_sync(str(out))["features"]
    assert [i["id"] for i in back] == [i["id"] for i in expected]
    for got, want in zip(back, expected, strict=True):
        want = _without_nulls(want)
        want["properties"]["datetime"] = None  # a required field: kept as null
        for key in ("start_datetime", "end_datetime"):
            want["properties"][key] = _ms(want["properties"][key])
            got["properties"][key] = _ms(got["properties"][key])
        assert got["properties"] == want["properties"]
        assert got["assets"] == want["assets"]
        assert got["links"] == want["links"]
        assert shape(got["geometry"]).equals(shape(want["geometry"]))
        assert list(got["bbox"]) == want["bbox"]


def test_export_cli(cube: Path, tmp_path: Path) -> None:
    import typer

    from flows.cli_tiles_stac import register

    app = typer.Typer()
    register(app)
    out = tmp_path / "cli" / "tiles.parquet"
    result = CliRunner().invoke(app, ["export-stac", str(cube), str(out), "--cube-href", "x.zarr"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == 4
    assert (out.parent / "collection.json").is_file()
    result = CliRunner().invoke(app, ["export-stac", str(tmp_path / "none"), str(out)])
    assert result.exit_code != 0
    assert "zarr.json missing" in result.output


# --- serving helpers ----------------------------------------------------------------------------


def test_staged_files_drop_hierarchy_links(cube: Path, tmp_path: Path) -> None:
    stac = cube_stac(cube)
    collection, items = stage_cube_stac(stac, tmp_path)
    staged = [json.loads(line) for line in items.read_text().splitlines()]
    assert [i["id"] for i in staged] == [i["id"] for i in stac.items]
    assert all(link["rel"] == "derived_from" for i in staged for link in i["links"])
    assert sum(len(i["links"]) for i in staged) == 6  # derived_from kept (S1 has no href)
    assert json.loads(collection.read_text())["id"] == "unit-cube"


def test_queryables_cover_cloud_split_and_labels() -> None:
    props = cube_queryables(LAYOUT)["properties"]
    assert props["eo:cloud_cover"]["type"] == "number"
    assert props["eoforge:split"]["type"] == "string"
    assert props["eoforge:multilabels.corine"]["type"] == "array"
    assert props["eoforge:unlabeled_fractions.osm"]["type"] == "number"
    jsonschema.Draft7Validator.check_schema(cube_queryables(LAYOUT))


def test_dsn_password_is_taken_out() -> None:
    pytest.importorskip("psycopg")
    clean, env, where = _split_dsn("postgresql://eo:s3cr3t@db.test:6543/stac", None)
    assert "s3cr3t" not in clean and "s3cr3t" not in where
    assert env == {"PGPASSWORD": "s3cr3t"}
    assert where == "db.test:6543/stac"
    clean, env, _ = _split_dsn("host=db.test dbname=stac user=eo", "pw")
    assert env == {"PGPASSWORD": "pw"} and "pw" not in clean.replace("dbname", "")
    with pytest.raises(InvalidInputError, match="DSN"):
        _split_dsn("postgresql://[broken", None)
