"""Catalog queries: every search parameter against a brute-force filter, versions, index, errors."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import shapely
from _catalog_synth import (
    ISOLATED,
    LS,
    PERIODS,
    S1,
    S2,
    SENSORS,
    SOURCES,
    TILE_M,
    Synth,
    build_catalog,
    make_record,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import mapping

import catalog
from catalog import _index
from catalog.query import SearchResult, TileCatalog, open_catalog
from catalog.versions import load_versions
from catalog.writer import CatalogWriter
from pipelines.grid import Tile
from schemas.cube import CubeLayout, LabelLayout, SensorLayout
from schemas.errors import InvalidInputError, NotFoundError
from schemas.tile import TileRecord, tile_record_arrow_schema

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return build_catalog(tmp_path_factory.mktemp("cube"))


@pytest.fixture(scope="module")
def cats(synth: Synth) -> dict[int | None, TileCatalog]:
    return {v: open_catalog(synth.cube, version=v) for v in (1, 2, None)}


# --- the brute-force reference ---------------------------------------------------------------


def _refs(term: str) -> list[tuple[str, str]]:
    source, sep, name = term.partition(":")
    if sep and source in SOURCES:
        return [(source, name)]
    return [(s, term) for s, classes in SOURCES.items() if term in classes]


def _cloud_ok(record: TileRecord, bound: Any, sensors: Sequence[str], cloud: bool) -> bool:
    obs = {s.sensor: s for s in record.sensors}

    def value(s: str) -> float | None:
        return obs[s].cloud_fraction if cloud else obs[s].valid_fraction

    def ok(v: float | None, b: float) -> bool:
        return v is None or (v <= b if cloud else v >= b)

    if isinstance(bound, dict):
        return all(s in obs and ok(value(s), b) for s, b in bound.items())
    targets = list(sensors) if sensors else list(obs)
    return all(s in obs and ok(value(s), bound) for s in targets)


def brute(rows: Sequence[TileRecord], q: dict[str, Any]) -> list[str]:
    """The ids a search must return, in order, computed row by row."""
    out = []
    query_geoms = []
    if q.get("bbox") is not None:
        query_geoms.append(shapely.box(*q["bbox"]))
    if q.get("intersects") is not None:
        query_geoms.append(shapely.geometry.shape(q["intersects"]))
    sensors = q.get("sensors") or []
    for r in rows:
        footprint = shapely.from_wkb(r.geometry_wkb)
        if not all(shapely.intersects(footprint, g) for g in query_geoms):
            continue
        if "datetime" in q:
            lo, hi = q["datetime_span"]
            if hi is not None and r.period_start > hi:
                continue
            # Periods are half-open [start, end); a zero-length one is an instant.
            if lo is not None and not (
                r.period_end > lo or (r.period_end == r.period_start and r.period_end >= lo)
            ):
                continue
        names = {s.sensor for s in r.sensors}
        if not all(s in names for s in sensors):
            continue
        if q.get("max_cloud") is not None and not _cloud_ok(r, q["max_cloud"], sensors, True):
            continue
        if q.get("min_valid") is not None and not _cloud_ok(r, q["min_valid"], sensors, False):
            continue

        def has(term: str, r: TileRecord = r) -> bool:
            return any(c in r.multilabels.get(s, ()) for s, c in _refs(term))

        if q.get("labels_any") and not any(has(t) for t in q["labels_any"]):
            continue
        if q.get("labels_all") and not all(has(t) for t in q["labels_all"]):
            continue
        if q.get("min_fraction") and not all(
            any(r.class_fractions.get(s, {}).get(c, 0.0) >= share for s, c in _refs(term))
            for term, share in q["min_fraction"].items()
        ):
            continue
        splits = [q["split"]] if isinstance(q.get("split"), str) else q.get("split")
        if splits is not None and r.split not in splits:
            continue
        ids = [q["ids"]] if isinstance(q.get("ids"), str) else q.get("ids")
        if ids is not None and r.id not in ids and r.tile_id not in ids:
            continue
        out.append(r)
    out.sort(key=lambda r: (r.cube_position, r.id))
    field = q.get("sortby") or "cube_position"
    descending = field.startswith("-")
    field = field.lstrip("-")
    value = _sort_value(field)
    have = [r for r in out if value(r) is not None]
    nulls = [r for r in out if value(r) is None]
    have.sort(key=value, reverse=descending)  # stable: ties stay in position order
    ordered = have + nulls
    if q.get("limit") is not None:
        ordered = ordered[: q["limit"]]
    return [r.id for r in ordered]


def _sort_value(field: str) -> Callable[[TileRecord], Any]:
    if field.startswith(("cloud:", "valid:")):
        kind, sensor = field.split(":", 1)

        def per_sensor(r: TileRecord) -> Any:
            for s in r.sensors:
                if s.sensor == sensor:
                    return s.cloud_fraction if kind == "cloud" else s.valid_fraction
            return None

        return per_sensor
    attr = {"start_datetime": "period_start", "end_datetime": "period_end"}.get(field, field)
    return lambda r: getattr(r, attr)


# --- hypothesis strategies -------------------------------------------------------------------

X0, Y0, X1, Y1 = 11.85, 47.6, 12.15, 47.78  # around the zone border, all tiles but the isolated

lon = st.floats(X0 - 0.02, X1 + 0.02, allow_nan=False)
lat = st.floats(Y0 - 0.02, Y1 + 0.02, allow_nan=False)


@st.composite
def bboxes(draw: st.DrawFn) -> tuple[float, float, float, float]:
    xa, xb = sorted((draw(lon), draw(lon)))
    ya, yb = sorted((draw(lat), draw(lat)))
    return (xa, ya, xb + 1e-6, yb + 1e-6)


@st.composite
def triangles(draw: st.DrawFn) -> dict[str, Any]:
    pts = [(draw(lon), draw(lat)) for _ in range(3)]
    poly = shapely.Polygon(pts)
    if poly.area < 1e-8:
        poly = shapely.box(pts[0][0], pts[0][1], pts[0][0] + 0.01, pts[0][1] + 0.01)
    return dict(mapping(poly))


JUNE, JULY = PERIODS[0][1], PERIODS[1][1]
TICK = timedelta(microseconds=1)
DATETIMES: list[tuple[Any, tuple[datetime | None, datetime | None]]] = [
    ("2024-06", (JUNE, JULY - TICK)),
    ("2024-07-31", (datetime(2024, 7, 31, tzinfo=UTC), datetime(2024, 8, 1, tzinfo=UTC) - TICK)),
    ("2024", (datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC) - TICK)),
    ("2024-06-30T23:59:59Z", (JULY - timedelta(seconds=1),) * 2),
    ("2024-06-30T23:59:59.5Z", (JULY - timedelta(seconds=0.5),) * 2),
    ("2024-07-01T02:00:00+02:00", (JULY, JULY)),
    ("2024-07-15T00:00:00Z/..", (datetime(2024, 7, 15, tzinfo=UTC), None)),
    ("../2024-06-01T00:00:00Z", (None, JUNE)),
    ("/2024-05-31", (None, JUNE - TICK)),
    ("2024-08-01T00:00:00Z/", (datetime(2024, 8, 1, tzinfo=UTC), None)),
    ("2024-05-01/2024-06-01", (datetime(2024, 5, 1, tzinfo=UTC), JUNE + timedelta(days=1) - TICK)),
    ((JUNE + timedelta(days=40), None), (JUNE + timedelta(days=40), None)),
    (datetime(2024, 6, 10, tzinfo=UTC), (datetime(2024, 6, 10, tzinfo=UTC),) * 2),
]
CLASS_TERMS = [
    *(c for classes in SOURCES.values() for c in classes),
    *(f"{s}:{c}" for s, classes in SOURCES.items() for c in classes),
]
SORT_FIELDS = [
    "cube_position",
    "id",
    "tile_id",
    "start_datetime",
    "end_datetime",
    *(f"cloud:{s}" for s in SENSORS),
    *(f"valid:{s}" for s in SENSORS),
]
share = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 0.35, 0.5, 0.6, 0.8, 0.9, 1.0])
positive_share = st.sampled_from([0.05, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0])
sensor = st.sampled_from(SENSORS)
threshold = st.one_of(share, st.dictionaries(sensor, share, min_size=1, max_size=2))


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    q: dict[str, Any] = {}

    def maybe(key: str, strategy: st.SearchStrategy[Any]) -> None:
        if draw(st.booleans()):
            q[key] = draw(strategy)

    maybe("bbox", bboxes())
    if draw(st.integers(0, 5)) == 0:
        q["intersects"] = draw(triangles())
    if draw(st.booleans()):
        text, span = draw(st.sampled_from(DATETIMES))
        q["datetime"], q["datetime_span"] = text, span
    maybe("sensors", st.lists(sensor, min_size=1, max_size=2, unique=True))
    maybe("max_cloud", threshold)
    maybe("min_valid", threshold)
    maybe("labels_any", st.lists(st.sampled_from(CLASS_TERMS), min_size=1, max_size=2))
    maybe("labels_all", st.lists(st.sampled_from(CLASS_TERMS), min_size=1, max_size=2))
    maybe(
        "min_fraction",
        st.dictionaries(st.sampled_from(CLASS_TERMS), positive_share, min_size=1, max_size=2),
    )
    maybe("split", st.lists(st.sampled_from(["train", "val", "test"]), min_size=1, max_size=2))
    maybe("limit", st.integers(0, 12))
    maybe("sortby", st.sampled_from(SORT_FIELDS).flatmap(lambda f: st.sampled_from([f, "-" + f])))
    return q


def _search(cat: TileCatalog, q: dict[str, Any]) -> SearchResult:
    kwargs = {k: v for k, v in q.items() if k != "datetime_span"}
    return cat.search(**kwargs)


# --- tests -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(q=queries(), version=st.sampled_from([1, 2, None]))
def test_search_equals_brute_force(
    synth: Synth, cats: dict[int | None, TileCatalog], q: dict[str, Any], version: int | None
) -> None:
    rows = synth.rows(version)
    result = _search(cats[version], q)
    want = brute(rows, q)
    assert result.ids() == want
    by_id = {r.id: r for r in rows}
    assert result.positions() == [by_id[i].cube_position for i in want]
    assert len(result) == len(want)


@pytest.mark.parametrize(
    "q",
    [
        {"bbox": (X0, Y0, X1, Y1)},
        {"datetime": "2024-07", "datetime_span": (JULY, JULY + timedelta(days=31) - TICK)},
        {"sensors": [LS]},
        {"sensors": [S1], "max_cloud": 0.2},
        {"max_cloud": 0.2},
        {"max_cloud": {S2: 0.1, LS: 0.5}},
        {"min_valid": 0.8},
        {"min_valid": {LS: 0.9}},
        {"sensors": [S2, LS], "min_valid": 0.6},
        {"labels_any": ["forest"]},
        {"labels_any": ["osm:forest"]},
        {"labels_all": ["corine:forest", "road"]},
        {"labels_any": ["water", "building"]},
        {"min_fraction": {"forest": 0.3}},
        {"min_fraction": {"corine:water": 0.2, "osm:road": 0.1}},
        {"split": "val"},
        {"split": ["train", "test"]},
        {"ids": [ISOLATED.id]},
        {"ids": ["32N-0600-4400_2024-07", "33N-0229-4401"]},
        {"limit": 3, "sortby": "-cloud:sentinel-2-l2a"},
        {"sortby": "-start_datetime"},
        {"sortby": "tile_id", "limit": 5},
    ],
)
def test_each_parameter_matches_and_is_selective(
    synth: Synth, cats: dict[int | None, TileCatalog], q: dict[str, Any]
) -> None:
    rows = synth.rows(None)
    want = brute(rows, q)
    assert _search(cats[None], q).ids() == want
    if "sortby" not in q and "limit" not in q:
        assert 0 < len(want) < len(rows), "the fixture should make this filter selective"


def test_every_row_round_trips(synth: Synth, cats: dict[int | None, TileCatalog]) -> None:
    for version in (1, 2, None):
        result = cats[version].search()
        assert result.to_records() == synth.rows(version)
        table = result.to_arrow()
        assert table.schema.equals(tile_record_arrow_schema(), check_metadata=True)
        assert len(cats[version]) == len(synth.rows(version))
    frame = cats[None].search(split="train").to_geodataframe()
    assert frame.crs is not None and frame.crs.to_string() == "OGC:CRS84"
    assert list(frame["id"]) == cats[None].search(split="train").ids()
    assert frame.geometry.iloc[0].equals(
        shapely.from_wkb(cats[None].search(split="train").to_records()[0].geometry_wkb)
    )


def test_exact_geometry_not_just_the_bbox(
    synth: Synth, cats: dict[int | None, TileCatalog]
) -> None:
    # UTM footprints are rotated in WGS84: a corner of the isolated tile's bbox is outside it.
    footprint = ISOLATED.footprint_wgs84()
    x0, y0, x1, y1 = footprint.bounds
    eps = 2e-5
    corners = [
        (x0, y0, x0 + eps, y0 + eps),
        (x1 - eps, y0, x1, y0 + eps),
        (x0, y1 - eps, x0 + eps, y1),
        (x1 - eps, y1 - eps, x1, y1),
    ]
    outside = [c for c in corners if not shapely.intersects(footprint, shapely.box(*c))]
    assert outside, "expected a bbox corner outside the rotated footprint"
    cat = cats[None]
    assert ISOLATED.id not in [i.rsplit("_", 1)[0] for i in cat.search(bbox=outside[0]).ids()]
    candidates = cat.sql(
        "SELECT tile_id FROM tiles WHERE xmin <= ? AND xmax >= ? AND ymin <= ? AND ymax >= ?",
        [outside[0][2], outside[0][0], outside[0][3], outside[0][1]],
    ).column("tile_id")
    assert ISOLATED.id in candidates.to_pylist()  # the bbox prefilter alone would match
    inside = [c for c in corners if shapely.intersects(footprint, shapely.box(*c))]
    if inside:
        assert {i.rsplit("_", 1)[0] for i in cat.search(bbox=inside[0]).ids()} == {ISOLATED.id}
    # The same through `intersects` (a GeoJSON dict and a shapely point on the centre).
    cx, cy = ISOLATED.centre_lonlat()
    point = {"type": "Point", "coordinates": [cx, cy]}
    assert {r.tile_id for r in cat.search(intersects=point).to_records()} == {ISOLATED.id}
    feature = {"type": "Feature", "geometry": mapping(shapely.box(*outside[0])), "properties": {}}
    assert cat.search(intersects=feature).ids() == []
    # A degenerate bbox (a point) works too.
    assert {r.tile_id for r in cat.search(bbox=(cx, cy, cx, cy)).to_records()} == {ISOLATED.id}


def test_periods_are_half_open(cats: dict[int | None, TileCatalog]) -> None:
    cat = cats[None]
    # June's rows end at 2024-07-01T00:00:00Z, the first instant of July: not a June instant.
    assert {r.period_id for r in cat.search(datetime="2024-07").to_records()} == {"2024-07"}
    boundary = {r.period_id for r in cat.search(datetime="2024-07-01T00:00:00Z").to_records()}
    assert boundary == {"2024-07"}
    assert {r.period_id for r in cat.search(datetime="2024-06-30T23:59:59.999Z").to_records()} == {
        "2024-06"
    }
    assert {r.period_id for r in cat.search(datetime="../2024-07-01").to_records()} == {
        "2024-06",
        "2024-07",
    }


def test_two_zones_in_one_bbox(cats: dict[int | None, TileCatalog]) -> None:
    epsg = {r.epsg for r in cats[None].search(bbox=(11.9, 47.6, 12.1, 47.8)).to_records()}
    assert epsg == {32632, 32633}


def test_versions_are_snapshots_in_finish_order(
    synth: Synth, cats: dict[int | None, TileCatalog]
) -> None:
    versions = cats[None].versions()
    assert [(v.number, v.run_id, v.recorded) for v in versions] == [
        (1, "run-1", True),
        (2, "run-2", True),
    ]
    assert versions[0].rows_added == len(synth.runs["run-1"])
    assert cats[1].version == 1 and cats[1].pending_parts == ()
    assert cats[2].version == 2
    latest = cats[None]
    assert latest.version == 2
    assert sorted(latest.pending_parts) == [f"run-3-s{i:05d}.parquet" for i in (10, 11, 12)]
    v1 = {r.id for r in cats[1].search().to_records()}
    assert v1 == {r.id for r in synth.runs["run-1"]}
    run3 = {r.id for r in synth.runs["run-3"]}
    assert not run3 & {r.id for r in cats[2].search().to_records()}
    assert run3 <= {r.id for r in latest.search().to_records()}
    # A tile built again in run 2: version 1 keeps the old position, version 2 the new one.
    for old_id in synth.superseded:
        (old,) = cats[1].search(ids=old_id).to_records()
        (new,) = cats[2].search(ids=old_id).to_records()
        assert old.cube_position < 52 <= new.cube_position
        assert new.split == "test"


def test_finishing_run_3_makes_version_3(tmp_path: Path) -> None:
    synth = build_catalog(tmp_path)
    CatalogWriter(tmp_path).finish_run("run-3", {})
    cat = open_catalog(tmp_path)
    assert cat.version == 3 and cat.pending_parts == ()
    assert cat.search().to_records() == synth.rows(None)
    assert (tmp_path / "catalog" / "index" / "v00000003.parquet").is_file()
    # Finishing the same run again with nothing new keeps its version.
    CatalogWriter(tmp_path).finish_run("run-3", {})
    assert [v.number for v in load_versions(tmp_path)] == [1, 2, 3]


def test_names_new_in_a_later_version(tmp_path: Path) -> None:
    rng = __import__("random").Random(4)
    tiles = [Tile(32, "N", 600 + i, 4400, TILE_M) for i in range(6)]
    recs = []
    for i, t in enumerate(tiles):
        r = make_record(t, 0, i, rng, f"s{i // 3:05d}")
        if i < 3:  # run 1: Sentinel-2 and corine only
            r = replace(
                r,
                sensors=r.sensors[:1],
                class_fractions={"corine": {"forest": 1.0}},
                multilabels={"corine": ("forest",)},
            )
        else:  # run 2: a new sensor and a new source
            obs = replace(r.sensors[0], sensor="enmap-l2a", cloud_fraction=0.4)
            r = replace(
                r,
                sensors=(*r.sensors[:1], obs),
                class_fractions={"osm": {"road": 0.5, "building": 0.5}},
                multilabels={"osm": ("building", "road")},
            )
        recs.append(r)
    writer = CatalogWriter(tmp_path)
    writer.commit_shard("s00000", recs[:3], run_id="run-1")
    writer.finish_run("run-1", {})
    writer.commit_shard("s00001", recs[3:], run_id="run-2")
    writer.finish_run("run-2", {})
    index = pq.read_table(tmp_path / "catalog" / "index" / "v00000002.parquet")
    for name in ("sensor:enmap-l2a", "label:osm:road", "label:corine:forest"):
        assert index.column(name).null_count == 0, name
    cat = open_catalog(tmp_path)
    assert cat.search(sensors="enmap-l2a").ids() == [r.id for r in recs[3:]]
    assert cat.search(max_cloud={"enmap-l2a": 0.5}).ids() == [r.id for r in recs[3:]]
    assert cat.search(labels_any=["road", "forest"]).ids() == [r.id for r in recs]
    assert cat.search(min_fraction={"osm:road": 0.5}).ids() == [r.id for r in recs[3:]]
    stats = cat.stats()
    assert stats["classes"] == {"corine": {"forest": 3}, "osm": {"building": 3, "road": 3}}
    with pytest.raises(InvalidInputError, match="unknown sensor"):
        open_catalog(tmp_path, version=1).search(sensors="enmap-l2a")


def test_resumed_build_includes_the_killed_runs_parts(tmp_path: Path) -> None:
    rng = __import__("random").Random(1)
    tiles = [Tile(32, "N", 600 + i, 4400, TILE_M) for i in range(4)]
    recs = [make_record(t, 0, i, rng, f"s{i // 2:05d}") for i, t in enumerate(tiles)]
    writer = CatalogWriter(tmp_path)
    writer.commit_shard("s00000", recs[:2], run_id="20240101T000000Z-aaaaaa")  # then killed
    writer.commit_shard("s00001", recs[2:], run_id="20240102T000000Z-bbbbbb")
    writer.finish_run("20240102T000000Z-bbbbbb", {})
    cat = open_catalog(tmp_path, version=1)
    assert cat.search().to_records() == recs


def test_catalog_without_version_files_adopts_runs_in_run_id_order(tmp_path: Path) -> None:
    synth = build_catalog(tmp_path)
    shutil.rmtree(tmp_path / "catalog" / "versions")
    shutil.rmtree(tmp_path / "catalog" / "index")
    cat = open_catalog(tmp_path, version=1)
    assert [(v.number, v.run_id, v.recorded) for v in cat.versions()] == [
        (1, "run-1", False),
        (2, "run-2", False),
    ]
    assert cat.search().to_records() == synth.rows(1)
    assert open_catalog(tmp_path, version=2).search().to_records() == synth.rows(2)
    assert open_catalog(tmp_path).search().to_records() == synth.rows(None)
    # The next finishing run writes the adopted versions first, then its own.
    CatalogWriter(tmp_path).finish_run("run-3", {})
    names = sorted(p.name for p in (tmp_path / "catalog" / "versions").iterdir())
    assert names == ["00000001.json", "00000002.json", "00000003.json"]
    docs = [json.loads((tmp_path / "catalog" / "versions" / n).read_text()) for n in names]
    assert [d["run_id"] for d in docs] == ["run-1", "run-2", "run-3"]


def test_index_is_rebuilt_when_missing_stale_or_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synth = build_catalog(tmp_path)
    index = tmp_path / "catalog" / "index"
    assert sorted(p.name for p in index.iterdir()) == ["v00000001.parquet", "v00000002.parquet"]
    shutil.rmtree(index)
    assert open_catalog(tmp_path, version=2).search().to_records() == synth.rows(2)
    assert sorted(p.name for p in index.iterdir()) == ["v00000002.parquet"]
    assert open_catalog(tmp_path, version=1).search().to_records() == synth.rows(1)
    # A damaged file and one of another version's parts are both rebuilt.
    (index / "v00000002.parquet").write_bytes(b"PAR1 not really")
    assert open_catalog(tmp_path, version=2).search().to_records() == synth.rows(2)
    shutil.copy(index / "v00000001.parquet", index / "v00000002.parquet")
    assert open_catalog(tmp_path, version=2).search().to_records() == synth.rows(2)
    # Index files are sorted, flat, with small row groups and statistics.
    meta = pq.ParquetFile(index / "v00000002.parquet").metadata
    names = meta.schema.to_arrow_schema().names
    assert {"xmin", "cloud_max", f"cloud:{S2}", "label:osm:forest", "fraction:corine:water"} <= set(
        names
    )
    group = meta.row_group(0)
    leaves = {group.column(j).path_in_schema: group.column(j) for j in range(group.num_columns)}
    for name in ("xmin", "ymax", "start_datetime", f"cloud:{S2}", "label:osm:forest"):
        stats = leaves[name].statistics
        assert stats is not None and stats.has_min_max, name
    assert leaves["geometry"].statistics is None or not leaves["geometry"].statistics.has_min_max
    # Read-only cube: the index stays in memory, results are the same.
    shutil.rmtree(index)

    def refuse(table: object, final: Path) -> None:
        raise PermissionError(13, "Permission denied", str(final))

    monkeypatch.setattr(_index, "_write_atomic", refuse)
    cat = open_catalog(tmp_path, version=1)
    assert not index.exists() or not any(index.iterdir())
    assert cat.search().to_records() == synth.rows(1)
    assert cat.search(labels_any="forest").ids() == brute(synth.rows(1), {"labels_any": ["forest"]})
    latest = open_catalog(tmp_path)  # index in memory plus the unfinished run's rows
    assert latest.search().to_records() == synth.rows(None)
    q: dict[str, Any] = {"labels_any": ["forest"], "sortby": "-valid:landsat-c2-l2", "limit": 7}
    assert latest.search(**q).ids() == brute(synth.rows(None), q)


def test_latest_without_any_finished_run(tmp_path: Path) -> None:
    rng = __import__("random").Random(2)
    recs = [
        make_record(Tile(33, "N", 229 + i, 4400, TILE_M), 1, i, rng, "s00000") for i in range(3)
    ]
    CatalogWriter(tmp_path).commit_shard("s00000", recs, run_id="run-1")
    cat = open_catalog(tmp_path)
    assert cat.version is None and cat.versions() == []
    assert cat.search().to_records() == recs
    with pytest.raises(InvalidInputError, match="no finished version yet"):
        open_catalog(tmp_path, version=1)
    empty = tmp_path / "empty"
    (empty / "catalog").mkdir(parents=True)
    assert len(open_catalog(empty).search()) == 0


def test_antimeridian_tiles_match_boxes_on_either_side(tmp_path: Path) -> None:
    rng = __import__("random").Random(3)
    tile = Tile(60, "N", 600, 4500, TILE_M)  # zone 60, straddles 180 E
    rec = make_record(tile, 0, 0, rng, "s00000")
    assert rec.bbox[0] < 180.0 < rec.bbox[2]
    CatalogWriter(tmp_path).commit_shard("s00000", [rec], run_id="run-1")
    CatalogWriter(tmp_path).finish_run("run-1", {})
    cat = open_catalog(tmp_path)
    lat = (rec.bbox[1] + rec.bbox[3]) / 2
    assert cat.search(bbox=(179.9, lat - 0.001, 180.0, lat + 0.001)).ids() == [rec.id]
    assert cat.search(bbox=(-180.0, lat - 0.001, -179.999, lat + 0.001)).ids() == [rec.id]
    assert cat.search(bbox=(-179.0, lat - 0.001, -178.9, lat + 0.001)).ids() == []


def test_names_come_from_the_cube_layout_and_the_rows(
    tmp_path: Path, cats: dict[int | None, TileCatalog]
) -> None:
    assert set(cats[None].sensors) == set(SENSORS)
    assert {k: set(v) for k, v in cats[None].class_names.items()} == {
        k: set(v) for k, v in SOURCES.items()
    }
    assert cats[None].splits == ("train", "val", "test")
    # With a zarr.json, layout names (and order) come first; a class no row has is known.
    build_catalog(tmp_path)
    layout = CubeLayout.for_recipe_like(
        [SensorLayout(S2, ("B04",), 10.0), SensorLayout("enmap-l2a", ("B001",), 30.0)],
        tile_size_m=TILE_M,
        tiles_per_shard=4,
        labels=[LabelLayout("corine", ("UNLABELED", "urban", "wetland", "forest"))],
    )
    doc = {"zarr_format": 3, "node_type": "group", "attributes": layout.root_attrs()}
    (tmp_path / "zarr.json").write_text(json.dumps(doc))
    cat = open_catalog(tmp_path)
    assert cat.sensors[:2] == (S2, "enmap-l2a")
    assert cat.class_names["corine"][:4] == ("UNLABELED", "urban", "wetland", "forest")
    assert cat.search(labels_any="wetland").ids() == []
    assert cat.search(sensors="enmap-l2a").ids() == []
    assert cat.search(max_cloud={"enmap-l2a": 0.5}).ids() == []


@pytest.mark.parametrize(
    ("kwargs", "where", "words"),
    [
        ({"bbox": (12.0, 47.0, 11.0, 48.0)}, "bbox", "min > max"),
        ({"bbox": (12.0, 48.0, 13.0, 47.0)}, "bbox", "min > max"),
        ({"bbox": (-181.0, 47.0, 11.0, 48.0)}, "bbox", "longitude -181 is outside -180..180"),
        ({"bbox": (47.0, 120.0, 48.0, 121.0)}, "bbox", "latitude 120 is outside -90..90"),
        ({"bbox": (1, 2, 3)}, "bbox", "not four numbers"),
        ({"bbox": (1, 2, 3, float("nan"))}, "bbox", "not finite"),
        ({"intersects": {"type": "Polygon"}}, "intersects", "not a GeoJSON geometry"),
        ({"intersects": "POINT (1 2)"}, "intersects", "is not a geometry"),
        ({"intersects": {"type": "Point", "coordinates": [200, 0]}}, "intersects", "WGS84"),
        ({"datetime": "2024-06-01T00:00:00"}, "datetime", "no time zone"),
        ({"datetime": "June 2024"}, "datetime", "not RFC 3339"),
        ({"datetime": "2024-02-30"}, "datetime", "not a date"),
        ({"datetime": "../.."}, "datetime", "open at both ends"),
        ({"datetime": "2024-07-01/2024-06-01"}, "datetime", "ends before it starts"),
        ({"datetime": "2024-06/2024-07/2024-08"}, "datetime", "more than one '/'"),
        ({"datetime": datetime(2024, 6, 1)}, "datetime", "no time zone"),
        ({"sensors": ["sentinel-2"]}, "sensors", "did you mean 'sentinel-2-l2a'"),
        ({"max_cloud": 1.5}, "max_cloud", "not a share"),
        ({"max_cloud": "low"}, "max_cloud", "not a number"),
        ({"max_cloud": {"landsat": 0.2}}, "max_cloud", "unknown sensor 'landsat'"),
        ({"min_valid": -0.1}, "min_valid", "not a share"),
        ({"labels_any": ["forrest"]}, "labels_any", "did you mean 'forest'"),
        ({"labels_all": ["corine:road"]}, "labels_all", "has no class 'road'"),
        ({"labels_any": ["grass"]}, "labels_any", "corine:forest"),
        ({"min_fraction": {"forest": 0}}, "min_fraction[forest]", "not a share in (0, 1]"),
        ({"min_fraction": {"wood": 0.2}}, "min_fraction", "unknown class 'wood'"),
        ({"min_fraction": ["forest"]}, "min_fraction", "not a mapping"),
        ({"split": "training"}, "split", "unknown split 'training'"),
        ({"split": ["train", ""]}, "split", "not a non-empty name"),
        ({"limit": -1}, "limit", "not a whole number"),
        ({"limit": 2.5}, "limit", "not a whole number"),
        ({"sortby": "cloud"}, "sortby", "cannot sort by 'cloud'"),
        ({"sortby": "-cloud:sentinel-3"}, "sortby", "cloud:sentinel-2-l2a"),
    ],
)
def test_bad_queries_name_the_argument(
    cats: dict[int | None, TileCatalog], kwargs: dict[str, Any], where: str, words: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        cats[None].search(**kwargs)
    assert info.value.where == where
    assert words in str(info.value)
    assert info.value.fix or "did you mean" in str(info.value) or where == "bbox"


def test_case_insensitive_class_names_are_accepted(cats: dict[int | None, TileCatalog]) -> None:
    cat = cats[None]
    assert cat.search(labels_any="Forest").ids() == cat.search(labels_any="forest").ids()
    assert cat.search(labels_any="OSM:Road").ids() == cat.search(labels_any="osm:road").ids()


def test_bad_catalog_paths_and_versions(tmp_path: Path, synth: Synth) -> None:
    with pytest.raises(NotFoundError, match="no such cube"):
        open_catalog(tmp_path / "nope")
    with pytest.raises(NotFoundError, match="no tile catalog"):
        open_catalog(tmp_path)
    for bad in (0, 3, -1):
        with pytest.raises(InvalidInputError, match=r"version .* does not exist.*1\.\.2"):
            open_catalog(synth.cube, version=bad)
    with pytest.raises(InvalidInputError, match="not a whole number"):
        open_catalog(synth.cube, version="2")  # type: ignore[arg-type]


def test_sql_over_the_tiles_view(synth: Synth, cats: dict[int | None, TileCatalog]) -> None:
    cat = cats[None]
    table = cat.sql("SELECT split, count(*) AS n FROM tiles GROUP BY split ORDER BY split")
    rows = synth.rows(None)
    want: dict[str | None, int] = {}
    for r in rows:
        want[r.split] = want.get(r.split, 0) + 1
    assert (
        dict(zip(table.column("split").to_pylist(), table.column("n").to_pylist(), strict=True))
        == want
    )
    flat = cat.sql(
        f'SELECT id FROM tiles WHERE "cloud:{S2}" <= $m AND "label:osm:forest" ORDER BY id',
        {"m": 0.2},
    )
    assert flat.column("id").to_pylist() == sorted(
        cat.search(max_cloud={S2: 0.2}, labels_any="osm:forest").ids()
    )
    with pytest.raises(InvalidInputError, match=r"the SQL query failed.*nosuch") as info:
        cat.sql("SELECT nosuch FROM tiles")
    assert "tiles" in str(info.value.fix)
    assert "\n" not in str(info.value)


def test_stats_count_splits_classes_sensors_periods(
    synth: Synth, cats: dict[int | None, TileCatalog]
) -> None:
    stats = cats[1].stats()
    rows = synth.rows(1)
    assert stats["rows"] == len(rows) and stats["version"] == 1
    assert stats["tiles"] == len({r.tile_id for r in rows})
    assert sum(stats["splits"].values()) == len(rows)
    assert stats["splits"].get("unassigned", 0) == sum(r.split is None for r in rows)
    assert stats["sensors"][LS]["rows"] == sum(any(s.sensor == LS for s in r.sensors) for r in rows)
    assert stats["sensors"][S1]["mean_cloud"] is None
    forest = sum("forest" in r.multilabels.get("osm", ()) for r in rows)
    assert stats["classes"]["osm"].get("forest", 0) == forest
    assert [p["period_id"] for p in stats["periods"]] == sorted({r.period_id for r in rows})


def test_pickle_and_threads(synth: Synth, cats: dict[int | None, TileCatalog]) -> None:
    for version in (1, None):
        cat = cats[version]
        clone = pickle.loads(pickle.dumps(cat))
        assert clone.version == cat.version and clone.pending_parts == cat.pending_parts
        assert clone.search().ids() == cat.search().ids()
    cat = cats[None]
    want = cat.search(labels_any="forest", sortby="-valid:sentinel-2-l2a").ids()
    got: list[list[str]] = []
    errors: list[BaseException] = []

    records = cat.search(labels_any="forest", sortby="-valid:sentinel-2-l2a").to_records()

    def work() -> None:
        try:
            for _ in range(5):
                result = cat.search(labels_any="forest", sortby="-valid:sentinel-2-l2a")
                got.append(result.ids())
                assert result.to_records() == records
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 20 and all(g == want for g in got)


@settings(max_examples=500, deadline=None)
@given(
    name=st.text(alphabet=st.sampled_from(list("ab09._- /Z")), min_size=1, max_size=12).flatmap(
        lambda t: st.sampled_from([t, t + ".parquet", "run-1-" + t + ".parquet", "." + t])
    )
)
def test_part_name_filter_agrees_with_parse_part_name(name: str) -> None:
    from catalog._parts import parse_part_name
    from catalog.versions import _PART_NAME

    assert bool(_PART_NAME.match(name)) == (parse_part_name(name) is not None)


def test_catalog_import_stays_light() -> None:
    code = (
        "import sys, catalog, catalog.query, catalog.writer, catalog.versions\n"
        "from catalog import open_catalog, TileCatalog, SearchResult\n"
        "heavy = ('prefect', 'dask', 'distributed', 'xarray', 'torch', 'stackstac', "
        "'geopandas', 'zarr', 'rasterio')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    assert catalog.open_catalog is open_catalog
