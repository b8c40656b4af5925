"""Incremental planning: what a rerun rebuilds, and the catalog state it starts from."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import box, mapping

from catalog.state import INPUTS_METADATA_KEY, cube_state
from catalog.writer import CatalogWriter, committed_parts
from pipelines.grid import Tile, TileGrid, shards, tiles_for_aoi
from pipelines.increment import (
    CurrentRow,
    inputs_digest,
    plan_digests,
    reconcile,
    settings_digest,
)
from pipelines.plan import BuildPlan, SensorPlan, ShardTask
from schemas.tile import TileRecord

K = 4
GRID = TileGrid(1200.0, (10.0,))
AOI = box(11.98, 47.93, 12.02, 47.96)  # both sides of the UTM 32/33 boundary
JUNE = ("2024-06", "2024-06-01T00:00:00+00:00", "2024-07-01T00:00:00+00:00")
JULY = ("2024-07", "2024-07-01T00:00:00+00:00", "2024-08-01T00:00:00+00:00")


def _item(item_id: str, when: str, geom: Any = AOI, updated: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"datetime": when}
    if updated is not None:
        props["updated"] = updated
    return {"id": item_id, "geometry": mapping(geom), "properties": props}


ITEMS = (
    _item("S2_0603", "2024-06-03T10:00:00Z"),
    _item("S2_0618", "2024-06-18T10:00:00Z"),
    _item("S2_0712", "2024-07-12T10:00:00Z"),
)


def _sensor(items: tuple[dict[str, Any], ...] = ITEMS, **changes: Any) -> SensorPlan:
    base = SensorPlan(
        sensor="sentinel-2-l2a",
        provider="archive",
        collection="sentinel-2-l2a",
        bands=("B04",),
        resolution_m=10.0,
        mask={"dilation_m": 20},
        temporal_mode="best",
        max_scenes=None,
        min_valid_fraction=0.0,
        reference=True,
        coregister=False,
        items=items,
    )
    return replace(base, **changes)


def _plan(
    periods: tuple[tuple[str, str, str], ...] = (JUNE, JULY),
    aoi: Any = AOI,
    sensor: SensorPlan | None = None,
) -> BuildPlan:
    """A plan laid out like ``pipelines.plan.make_plan``: one run of shards per period."""
    tiles = tiles_for_aoi(aoi, GRID)
    tasks: list[ShardTask] = []
    index = 0
    for pid, _s, _e in periods:
        for sh in shards(tiles, K, first_index=index):
            tasks.append(ShardTask(sh.index, pid, tuple(t.id for t in sh.tiles), sh.start))
        index = tasks[-1].index + 1
    return BuildPlan(
        recipe_name="unit",
        recipe_digest="0" * 64,
        tile_size_m=1200.0,
        tiles_per_shard=K,
        periods=periods,
        sensors=(sensor or _sensor(),),
        shards=tuple(tasks),
        split={"method": "block", "seed": 1},
    )


def _rows(plan: BuildPlan) -> list[CurrentRow]:
    return [CurrentRow(t, p, d) for (t, p), d in plan_digests(plan).items()]


def _record_ids(plan: BuildPlan) -> list[str]:
    return sorted(f"{t}_{s.period_id}" for s in plan.shards for t in s.tile_ids)


def test_a_new_cube_plans_exactly_the_full_plan() -> None:
    plan = _plan()
    work, manifest, digests = reconcile(plan, [], next_shard_index=0, base_version=None)
    assert work.shards == plan.shards
    assert manifest.added == _record_ids(plan)
    assert manifest.rebuilt == {} and manifest.unchanged == 0 and manifest.outside == []
    assert manifest.shards == [s.id for s in plan.shards]
    assert len(digests) == len(manifest.added) > 2 * K


def test_nothing_new_plans_nothing() -> None:
    plan = _plan()
    work, manifest, _ = reconcile(plan, _rows(plan), next_shard_index=99, base_version=3)
    assert work.shards == () and work.n_positions == 0
    assert manifest.unchanged == len(_record_ids(plan))
    assert manifest.added == [] and manifest.rebuilt == {} and manifest.shards == []
    assert "version 3" in manifest.summary_line()


def test_extending_the_time_range_adds_only_the_new_period_where_a_full_build_puts_it() -> None:
    first_half = _plan(periods=(JUNE,))
    full = _plan()
    # The June digests do not depend on the recipe's end date.
    june = {k: v for k, v in plan_digests(full).items() if k[1] == "2024-06"}
    assert june == plan_digests(first_half)
    next_index = len(first_half.shards)
    work, manifest, _ = reconcile(
        full, _rows(first_half), next_shard_index=next_index, base_version=1
    )
    july = [s for s in full.shards if s.period_id == "2024-07"]
    assert work.shards == tuple(july)  # same ids, tiles and positions as one full build
    assert manifest.added == sorted(f"{t}_2024-07" for s in july for t in s.tile_ids)
    assert manifest.unchanged == sum(len(s.tile_ids) for s in first_half.shards)


def test_a_clearer_scene_arriving_rebuilds_only_the_tiles_it_covers_at_new_positions() -> None:
    before = _plan()
    tiles = tiles_for_aoi(AOI, GRID)
    lon, lat = tiles[0].centre_lonlat()
    geom = box(lon - 1e-3, lat - 1e-3, lon + 1e-3, lat + 1e-3)
    covered = [t for t in tiles if t.footprint_wgs84().intersects(geom)]
    assert 1 <= len(covered) < len(tiles) // 2
    new_item = _item("S2_0725", "2024-07-25T10:00:00Z", geom)
    after = _plan(sensor=_sensor(items=(*ITEMS, new_item)))
    next_index = 40
    work, manifest, _ = reconcile(after, _rows(before), next_shard_index=next_index, base_version=2)
    assert sorted(manifest.rebuilt) == sorted(f"{t.id}_2024-07" for t in covered)
    assert all("inputs changed" in why for why in manifest.rebuilt.values())
    assert manifest.added == []
    assert manifest.unchanged == len(_record_ids(before)) - len(covered)
    assert [s.index for s in work.shards] == [next_index]
    (shard,) = work.shards
    assert shard.start == next_index * K and shard.period_id == "2024-07"
    assert sorted(shard.tile_ids) == sorted(t.id for t in covered)


def test_an_updated_item_and_changed_settings_invalidate_digests() -> None:
    plan = _plan()
    tile = tiles_for_aoi(AOI, GRID)[0]
    june = plan.period("2024-06")
    settings = settings_digest(plan)
    d0 = inputs_digest(plan, tile, june, settings)
    reprocessed = (replace_item_updated(ITEMS[0], "2025-01-01T00:00:00Z"), *ITEMS[1:])
    plan2 = _plan(sensor=_sensor(items=reprocessed))
    assert inputs_digest(plan2, tile, june, settings_digest(plan2)) != d0
    # July tiles do not see a June item.
    july = plan.period("2024-07")
    assert inputs_digest(plan2, tile, july, settings_digest(plan2)) == inputs_digest(
        plan, tile, july, settings
    )
    masked = _plan(sensor=_sensor(mask={"dilation_m": 40}))
    assert settings_digest(masked) != settings
    work, manifest, _ = reconcile(masked, _rows(plan), next_shard_index=10, base_version=1)
    assert sorted(manifest.rebuilt) == _record_ids(plan)
    assert len(work.shards) == len(plan.shards)


def replace_item_updated(item: dict[str, Any], updated: str) -> dict[str, Any]:
    return {**item, "properties": {**item["properties"], "updated": updated}}


def test_a_grown_aoi_adds_new_tiles_and_keeps_rows_outside_a_shrunk_one() -> None:
    small_aoi = box(11.98, 47.93, 11.995, 47.96)
    small = _plan(aoi=small_aoi)
    big = _plan()
    work, manifest, _ = reconcile(big, _rows(small), next_shard_index=7, base_version=1)
    small_ids = set(_record_ids(small))
    assert set(manifest.added) == set(_record_ids(big)) - small_ids
    assert manifest.unchanged == len(small_ids)
    assert all(s.index >= 7 for s in work.shards)
    _, back, _ = reconcile(small, _rows(big), next_shard_index=20, base_version=2)
    assert set(back.outside) == set(_record_ids(big)) - small_ids
    assert back.added == [] and back.rebuilt == {}


def test_rows_without_a_stored_digest_are_rebuilt_with_a_reason() -> None:
    plan = _plan()
    rows = [replace(r, digest=None) for r in _rows(plan)]
    _, manifest, _ = reconcile(plan, rows, next_shard_index=10, base_version=1)
    assert len(manifest.rebuilt) == len(rows)
    assert all("older eoforge" in why for why in manifest.rebuilt.values())


# -- catalog state ---------------------------------------------------------------------------


def _record(tile: Tile, period: str, position: int, shard_id: str) -> TileRecord:
    footprint = tile.footprint_wgs84()
    return TileRecord(
        tile_id=tile.id,
        period_id=period,
        period_start=datetime(2024, 6, 1, tzinfo=UTC),
        period_end=datetime(2024, 7, 1, tzinfo=UTC),
        epsg=tile.epsg,
        transform=(10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3]),
        proj_bbox=tile.bounds,
        geometry_wkb=shapely.to_wkb(footprint),
        bbox=footprint.bounds,
        cube_position=position,
        shard_id=shard_id,
    )


def test_cube_state_reads_digests_versions_and_pending_parts(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    cube = tmp_path / "cube.zarr"
    writer = CatalogWriter(cube)
    t = [Tile(32, "N", 600 + i, 4400, 1200.0) for i in range(3)]
    run1, run2, run3 = "20240801T000000Z-aaaaaa", "20240901T000000Z-bbbbbb", "20241001T0000Z-c"
    writer.commit_shard("s00000", [_record(t[0], "p", 0, "s00000")], run1, {(t[0].id, "p"): "d0"})
    writer.commit_shard("s00001", [_record(t[1], "p", 4, "s00001")], run1, {(t[1].id, "p"): "d1"})
    writer.finish_run(run1, {})
    meta = pq.read_schema(committed_parts(cube)["s00000"]).metadata
    assert INPUTS_METADATA_KEY in meta
    # Run 2 rebuilds tile 0 at a new position (shard 2).
    writer.commit_shard("s00002", [_record(t[0], "p", 8, "s00002")], run2, {(t[0].id, "p"): "d0b"})
    writer.finish_run(run2, {})
    # Run 3 is killed after one commit (no digest given: an older writer).
    writer.commit_shard("s00003", [_record(t[2], "p", 12, "s00003")], run3)
    state = cube_state(cube)
    assert state.version == 2
    assert state.current == {(t[0].id, "p"): "d0b", (t[1].id, "p"): "d1"}
    assert state.next_shard_index == 3
    assert set(state.pending) == {"s00003"}
    assert state.pending["s00003"].rows == {(t[2].id, "p"): None}
    moved = state.set_aside("s00003", "unit test")
    assert moved.parent.name == "set-aside" and moved.is_file()
    assert "s00003" not in committed_parts(cube) and cube_state(cube).pending == {}


def test_cube_state_of_a_new_cube_is_empty(tmp_path: Path) -> None:
    state = cube_state(tmp_path / "nothing.zarr")
    assert state.version is None and state.current == {} and state.next_shard_index == 0


@pytest.mark.parametrize("k", [1, 3, 4])
def test_work_shards_are_k_aligned(k: int) -> None:
    plan = replace(_plan(), tiles_per_shard=k)
    plan = replace(plan, shards=_plan_shards(k))
    work, _, _ = reconcile(plan, [], next_shard_index=5, base_version=None)
    assert all(s.start == s.index * k and len(s.tile_ids) <= k for s in work.shards)


def _plan_shards(k: int) -> tuple[ShardTask, ...]:
    tiles = tiles_for_aoi(AOI, GRID)
    out: list[ShardTask] = []
    index = 0
    for pid in ("2024-06", "2024-07"):
        for sh in shards(tiles, k, first_index=index):
            out.append(ShardTask(sh.index, pid, tuple(t.id for t in sh.tiles), sh.start))
        index = out[-1].index + 1
    return tuple(out)
