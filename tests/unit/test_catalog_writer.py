"""Catalog commits: GeoParquet parts, atomic visibility, resume, DuckDB and geopandas reads."""

from __future__ import annotations

import errno
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import geopandas as gpd
import pyarrow.parquet as pq
import pytest
import shapely

from catalog.writer import (
    CatalogWriter,
    committed_shards,
    finished_runs,
    read_records,
)
from pipelines.grid import Tile
from schemas.errors import ConflictError, InvalidInputError
from schemas.tile import SensorObservation, TileRecord

TILE_M = 1200.0


def _record(col: int, position: int, shard_id: str) -> TileRecord:
    tile = Tile(32, "N", col, 4400, TILE_M)  # ~47.6 N, 9 E
    footprint = tile.footprint_wgs84()
    return TileRecord(
        tile_id=tile.id,
        period_id="2024-06",
        period_start=datetime(2024, 6, 1, tzinfo=UTC),
        period_end=datetime(2024, 6, 30, 23, 59, 59, tzinfo=UTC),
        epsg=tile.epsg,
        transform=(10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3]),
        proj_bbox=tile.bounds,
        geometry_wkb=shapely.to_wkb(footprint),
        bbox=footprint.bounds,
        cube_position=position,
        shard_id=shard_id,
        sensors=(
            SensorObservation(
                sensor="sentinel-2-l2a",
                datetimes=(datetime(2024, 6, 3, 10, 30, tzinfo=UTC),),
                item_ids=(f"S2B_32TNT_20240603_{col}",),
                cloud_fraction=0.1 * (col % 3),
                valid_fraction=0.9,
                shift_dx_m=1.5,
                shift_dy_m=-0.5,
                shift_applied=True,
            ),
        ),
    )


# Shard s00000 = positions 0-1 (cols 400, 401); s00001 = positions 2-3 (cols 402, 403).
SHARDS = {
    "s00000": [_record(400, 0, "s00000"), _record(401, 1, "s00000")],
    "s00001": [_record(403, 3, "s00001"), _record(402, 2, "s00001")],
}


def test_committed_rows_read_back_equal_the_records(tmp_path: Path) -> None:
    writer = CatalogWriter(tmp_path)
    assert committed_shards(tmp_path) == set()
    assert read_records(tmp_path).num_rows == 0
    for shard_id, records in SHARDS.items():
        path = writer.commit_shard(shard_id, records, run_id="run-1")
        assert path == tmp_path / "catalog" / "parts" / f"run-1-{shard_id}.parquet"
    assert committed_shards(tmp_path) == {"s00000", "s00001"}
    table = read_records(tmp_path)
    back = [TileRecord.from_arrow_row(row) for row in table.to_pylist()]
    want = sorted((r for rs in SHARDS.values() for r in rs), key=lambda r: r.cube_position)
    assert back == want
    assert table.column("cube_position").to_pylist() == [0, 1, 2, 3]
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]


def test_leftover_temp_file_is_invisible_and_cleaned_on_recommit(tmp_path: Path) -> None:
    writer = CatalogWriter(tmp_path)
    writer.commit_shard("s00000", SHARDS["s00000"], run_id="run-1")
    parts = tmp_path / "catalog" / "parts"
    # A crash while writing s00001: a half-written temporary file is all that is left.
    leftover = parts / ".run-1-s00001.parquet.0123abcd.tmp"
    leftover.write_bytes(b"PAR1 half a parquet file")
    stale_other = parts / ".run-0-s00007.parquet.feed.tmp"
    stale_other.write_bytes(b"")
    assert committed_shards(tmp_path) == {"s00000"}
    assert read_records(tmp_path).num_rows == 2
    glob = f"{parts}/*.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(2,)]
    # The rerun commits s00001 and removes its leftover; another shard's file stays.
    writer.commit_shard("s00001", SHARDS["s00001"], run_id="run-1")
    assert not leftover.exists()
    assert stale_other.exists()
    assert read_records(tmp_path).num_rows == 4
    # Stale temporary files of other shards go once they are old enough.
    assert writer.remove_stale_temp_files(older_than_s=3600.0) == []
    old = time.time() - 7200
    os.utime(stale_other, (old, old))
    assert writer.remove_stale_temp_files(older_than_s=3600.0) == [stale_other]
    assert sorted(p.name for p in parts.iterdir()) == [
        "run-1-s00000.parquet",
        "run-1-s00001.parquet",
    ]


def test_failed_write_leaves_no_part_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CatalogWriter(tmp_path)
    writer.commit_shard("s00000", SHARDS["s00000"], run_id="run-1")

    def disk_full(table: object, where: str | Path, **kwargs: object) -> None:
        Path(where).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space left"):
        writer.commit_shard("s00001", SHARDS["s00001"], run_id="run-1")
    assert committed_shards(tmp_path) == {"s00000"}
    assert [p.name for p in (tmp_path / "catalog" / "parts").iterdir()] == ["run-1-s00000.parquet"]


def test_retry_in_the_same_run_replaces_and_another_run_conflicts(tmp_path: Path) -> None:
    writer = CatalogWriter(tmp_path)
    writer.commit_shard("s00000", SHARDS["s00000"][:1], run_id="run-1")
    writer.commit_shard("s00000", SHARDS["s00000"], run_id="run-1")  # a retried task
    assert read_records(tmp_path).num_rows == 2
    with pytest.raises(ConflictError, match="already committed by another run"):
        writer.commit_shard("s00000", SHARDS["s00000"], run_id="run-2")
    assert read_records(tmp_path).num_rows == 2
    # An empty shard is committed (and skipped by a rerun) with no rows.
    writer.commit_shard("s00002", [], run_id="run-1")
    assert committed_shards(tmp_path) == {"s00000", "s00002"}


def test_bad_ids_and_records_are_refused(tmp_path: Path) -> None:
    writer = CatalogWriter(tmp_path)
    with pytest.raises(InvalidInputError, match="records of shards"):
        writer.commit_shard("s00001", SHARDS["s00000"], run_id="run-1")
    with pytest.raises(InvalidInputError, match="given twice"):
        writer.commit_shard("s00000", SHARDS["s00000"][:1] * 2, run_id="run-1")
    with pytest.raises(InvalidInputError, match="run id"):
        writer.commit_shard("s00000", SHARDS["s00000"], run_id="../evil")
    with pytest.raises(InvalidInputError, match="shard id"):
        writer.commit_shard("s-1", [], run_id="run-1")
    assert not (tmp_path / "catalog").exists()


def test_duckdb_filters_parts_on_bbox_columns(tmp_path: Path) -> None:
    writer = CatalogWriter(tmp_path)
    for shard_id, records in SHARDS.items():
        writer.commit_shard(shard_id, records, run_id="run-1")
    # A query box around the centre of the tile at col 402 only.
    target = SHARDS["s00001"][1]
    cx = (target.bbox[0] + target.bbox[2]) / 2
    cy = (target.bbox[1] + target.bbox[3]) / 2
    glob = f"{tmp_path}/catalog/parts/*.parquet"
    rows = duckdb.execute(
        f"SELECT tile_id, cube_position FROM read_parquet('{glob}') "
        "WHERE bbox.xmin <= ? AND bbox.xmax >= ? AND bbox.ymin <= ? AND bbox.ymax >= ? "
        "ORDER BY cube_position",
        [cx + 1e-4, cx - 1e-4, cy + 1e-4, cy - 1e-4],
    ).fetchall()
    assert rows == [(target.tile_id, 2)]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(4,)]


def test_geopandas_reads_the_geometry(tmp_path: Path) -> None:
    path = CatalogWriter(tmp_path).commit_shard("s00000", SHARDS["s00000"], run_id="run-1")
    frame = gpd.read_parquet(path)
    assert frame.crs is not None and frame.crs.to_string() == "OGC:CRS84"
    assert list(frame["tile_id"]) == [r.tile_id for r in SHARDS["s00000"]]
    first = frame.geometry.iloc[0]
    assert first.equals(shapely.from_wkb(SHARDS["s00000"][0].geometry_wkb))
    lon, lat = Tile(32, "N", 400, 4400, TILE_M).centre_lonlat()
    assert first.centroid.x == pytest.approx(lon, abs=1e-6)
    assert first.centroid.y == pytest.approx(lat, abs=1e-6)


def test_finish_run_records_the_runs_parts(tmp_path: Path) -> None:
    writer = CatalogWriter(tmp_path)
    writer.commit_shard("s00000", SHARDS["s00000"], run_id="run-1")
    writer.commit_shard("s00001", SHARDS["s00001"], run_id="run-2")
    path = writer.finish_run("run-2", {"recipe_sha256": "ab12", "tiles": 2})
    assert path == tmp_path / "catalog" / "runs" / "run-2.json"
    document = json.loads(path.read_text())
    assert document == {
        "run_id": "run-2",
        "parts": ["run-2-s00001.parquet"],
        "shards": ["s00001"],
        "n_records": 2,
        "summary": {"recipe_sha256": "ab12", "tiles": 2},
    }
    assert finished_runs(tmp_path) == ["run-2"]
    with pytest.raises(InvalidInputError, match="not JSON-able"):
        writer.finish_run("run-1", {"when": datetime(2024, 1, 1, tzinfo=UTC)})
    assert finished_runs(tmp_path) == ["run-2"]
    assert [p.name for p in (tmp_path / "catalog" / "runs").iterdir()] == ["run-2.json"]
