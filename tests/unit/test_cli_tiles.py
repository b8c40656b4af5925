"""``eoforge tiles search|show|stats|versions``: formats, options, one-line errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import shapely
from _catalog_synth import ISOLATED, S2, Synth, build_catalog
from typer.testing import CliRunner

from catalog.query import open_catalog
from flows.cli import app
from schemas.tile import TileRecord, tile_record_arrow_schema

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return build_catalog(tmp_path_factory.mktemp("cube"))


def _ok(*args: str) -> str:
    result = runner.invoke(app, ["tiles", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _fails(code: int, *args: str) -> str:
    result = runner.invoke(app, ["tiles", *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_search_json_matches_the_python_api(synth: Synth) -> None:
    cube = str(synth.cube)
    args = ["--bbox", "11.9,47.6,12.1,47.8", "--max-cloud", "0.5", "--label", "forest"]
    rows = json.loads(_ok("search", cube, *args, "--format", "json"))
    want = open_catalog(cube).search(
        bbox=(11.9, 47.6, 12.1, 47.8), max_cloud=0.5, labels_any=["forest"]
    )
    assert [r["id"] for r in rows] == want.ids()
    assert rows and rows[0]["geometry"]["type"] == "Polygon"
    assert rows[0]["start_datetime"].endswith("Z")
    first = want.to_records()[0]
    assert rows[0]["class_fractions"] == {k: dict(v) for k, v in first.class_fractions.items()}
    assert rows[0]["sensors"][0]["sensor"] == first.sensors[0].sensor


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (["--datetime", "2024-07-15T00:00:00Z/.."], {"datetime": "2024-07-15T00:00:00Z/.."}),
        (["--max-cloud", f"{S2}=0.2", "--max-cloud", "landsat-c2-l2=0.5"],
         {"max_cloud": {S2: 0.2, "landsat-c2-l2": 0.5}}),
        (["--sensor", "sentinel-1-rtc", "--min-valid", "0.8"],
         {"sensors": ["sentinel-1-rtc"], "min_valid": 0.8}),
        (["--sensor", "sentinel-1-rtc,landsat-c2-l2"],
         {"sensors": ["sentinel-1-rtc", "landsat-c2-l2"]}),
        (["--label-all", "corine:forest", "--label-all", "osm:forest"],
         {"labels_all": ["corine:forest", "osm:forest"]}),
        (["--min-fraction", "water=0.2", "--min-fraction", "osm:road=0.1"],
         {"min_fraction": {"water": 0.2, "osm:road": 0.1}}),
        (["--split", "train,val"], {"split": ["train", "val"]}),
        (["--split", "test", "--split", "val"], {"split": ["test", "val"]}),
        (["--id", ISOLATED.id], {"ids": [ISOLATED.id]}),
        (["--sortby", "-cloud:sentinel-2-l2a", "--limit", "4"],
         {"sortby": "-cloud:sentinel-2-l2a", "limit": 4}),
        (["--version", "1", "--label-any", "water"], {"labels_any": ["water"], "version": 1}),
    ],
)  # fmt: skip
def test_each_option_reaches_the_search(
    synth: Synth, args: list[str], kwargs: dict[str, object]
) -> None:
    version = kwargs.pop("version", None)
    rows = json.loads(_ok("search", str(synth.cube), *args, "-f", "json"))
    want = open_catalog(synth.cube, version=version).search(**kwargs)  # type: ignore[arg-type]
    assert [r["id"] for r in rows] == want.ids()


def test_intersects_inline_and_from_a_file(synth: Synth, tmp_path: Path) -> None:
    cx, cy = ISOLATED.centre_lonlat()
    point = json.dumps({"type": "Point", "coordinates": [cx, cy]})
    rows = json.loads(_ok("search", str(synth.cube), "--intersects", point, "-f", "json"))
    assert {r["tile_id"] for r in rows} == {ISOLATED.id}
    path = tmp_path / "aoi.geojson"
    feature = {"type": "Feature", "properties": {}, "geometry": json.loads(point)}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    rows = json.loads(_ok("search", str(synth.cube), "--intersects", str(path), "-f", "json"))
    assert {r["tile_id"] for r in rows} == {ISOLATED.id}


def test_geojson_is_a_feature_collection(synth: Synth, tmp_path: Path) -> None:
    out = tmp_path / "tiles.geojson"
    text = _ok("search", str(synth.cube), "--split", "train", "-f", "geojson", "-o", str(out))
    assert text == ""
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection"
    want = open_catalog(synth.cube).search(split="train")
    assert [f["id"] for f in doc["features"]] == want.ids() and doc["numberMatched"] == len(want)
    feature = doc["features"][0]
    assert feature["type"] == "Feature" and feature["properties"]["split"] == "train"
    geom = shapely.geometry.shape(feature["geometry"])
    assert geom.equals(shapely.from_wkb(want.to_records()[0].geometry_wkb))
    assert feature["bbox"] == list(want.to_records()[0].bbox)


def test_parquet_is_geoparquet_with_the_tile_schema(synth: Synth, tmp_path: Path) -> None:
    out = tmp_path / "tiles.parquet"
    text = _ok("search", str(synth.cube), "--datetime", "2024-06", "-f", "parquet", "-o", str(out))
    assert "wrote" in text and str(out.name) in text
    table = pq.read_table(out)
    assert table.schema.equals(tile_record_arrow_schema(), check_metadata=False)
    assert b"geo" in (table.schema.metadata or {})
    back = [TileRecord.from_arrow_row(r) for r in table.to_pylist()]
    assert back == open_catalog(synth.cube).search(datetime="2024-06").to_records()


def test_table_prints_rows_and_a_count(synth: Synth, tmp_path: Path) -> None:
    text = _ok("search", str(synth.cube), "--label", "urban", "--limit", "3")
    assert "tile row(s), version 2 + 3 unfinished part(s)" in text
    want = open_catalog(synth.cube).search(labels_any="urban", limit=3).ids()
    for row_id in want:
        assert row_id.split("_")[0] in text
    out = tmp_path / "table.txt"
    _ok("search", str(synth.cube), "--version", "1", "-o", str(out))
    assert "version 1" in out.read_text()


def test_show_prints_every_period(synth: Synth) -> None:
    text = _ok("show", str(synth.cube), ISOLATED.id)
    assert f"{ISOLATED.id}_2024-06" in text and f"{ISOLATED.id}_2024-07" in text
    assert "cube position" in text and "multi-labels" in text and "cloud" in text
    doc = json.loads(_ok("show", str(synth.cube), ISOLATED.id, "--json"))
    assert [d["period_id"] for d in doc] == ["2024-06", "2024-07"]
    one = json.loads(_ok("show", str(synth.cube), f"{ISOLATED.id}_2024-07", "--json"))
    assert len(one) == 1
    # In version 1 only June of this tile exists (its July row is in the unfinished run).
    doc = json.loads(_ok("show", str(synth.cube), ISOLATED.id, "--json", "--version", "2"))
    assert [d["period_id"] for d in doc] == ["2024-06"]


def test_stats_counts(synth: Synth) -> None:
    doc = json.loads(_ok("stats", str(synth.cube), "--version", "1", "--json"))
    rows = synth.rows(1)
    assert doc["rows"] == len(rows) and doc["version"] == 1
    assert sum(doc["splits"].values()) == len(rows)
    assert doc["sensors"][S2]["rows"] == len(rows)
    text = _ok("stats", str(synth.cube))
    for word in ("splits", "periods", "sensors", "corine", "building", "2024-07"):
        assert word in text


def test_versions_lists_runs(synth: Synth) -> None:
    doc = json.loads(_ok("versions", str(synth.cube), "--json"))
    assert [(v["version"], v["run_id"]) for v in doc["versions"]] == [(1, "run-1"), (2, "run-2")]
    assert doc["pending_parts"] == 3
    assert "run-2" in _ok("versions", str(synth.cube))


@pytest.mark.parametrize(
    ("code", "args", "words"),
    [
        (2, ["--bbox", "1,2,3"], "--bbox: '1,2,3' is not four numbers"),
        (2, ["--bbox", "12,48,11,47"], "--bbox: bbox (12.0, 48.0, 11.0, 47.0) has min > max"),
        (2, ["--bbox", "a,b,c,d"], "--bbox: 'a' is not a number"),
        (2, ["--datetime", "yesterday"], "--datetime: datetime 'yesterday' is not RFC 3339"),
        (2, ["--label", "forrest"], "did you mean 'forest'?"),
        (2, ["--sensor", "s2"], "--sensor: unknown sensor 's2'"),
        (2, ["--split", "tain"], "did you mean 'train'?"),
        (2, ["--sortby", "clouds"], "--sortby: cannot sort by 'clouds'"),
        (2, ["--max-cloud", "0.2", "--max-cloud", f"{S2}=0.1"], "mixes a bare share"),
        (2, ["--max-cloud", "lots"], "--max-cloud: 'lots' is not a number"),
        (2, ["--min-fraction", "forest"], "is not CLASS=share"),
        (2, ["--intersects", "{nope"], "--intersects: not JSON"),
        (2, ["--intersects", "/no/such.geojson"], "cannot read the geometry file"),
        (2, ["--version", "9"], "--version: catalog version 9 does not exist"),
        (2, ["-f", "parquet"], "parquet output needs a file"),
    ],
)
def test_errors_are_one_line_and_exit_non_zero(
    synth: Synth, code: int, args: list[str], words: str
) -> None:
    line = _fails(code, "search", str(synth.cube), *args)
    assert words in line


def test_missing_cube_and_tile_exit_3(synth: Synth, tmp_path: Path) -> None:
    assert "no such cube" in _fails(3, "search", str(tmp_path / "nope"))
    assert "no tile catalog" in _fails(3, "stats", str(tmp_path))
    assert "no tile '99N-0000-0000'" in _fails(3, "show", str(synth.cube), "99N-0000-0000")
