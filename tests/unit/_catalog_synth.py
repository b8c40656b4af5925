"""A small synthetic tile catalog written with CatalogWriter, and the rows each version holds.

25 tiles of 1200 m (12 in UTM 32N and 12 in 33N on both sides of the zone border at 12 E, plus
one isolated 32N tile), two monthly periods, three sensors (Sentinel-2 and Landsat with cloud
fractions, Sentinel-1 without), two label sources that share a class name (``forest``), splits
(and unassigned rows). Shards of 4 positions; three runs:

* ``run-1`` commits shards s00000-s00005 and finishes (version 1);
* ``run-2`` commits s00006-s00009 and s00013, which re-commits two ids of run 1 at new
  positions with other values, and finishes (version 2);
* ``run-3`` commits s00010-s00012 and does not finish (latest rows only).
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import shapely

from catalog.writer import CatalogWriter
from pipelines.grid import Tile
from schemas.tile import SensorObservation, TileRecord

TILE_M = 1200.0
S2, S1, LS = "sentinel-2-l2a", "sentinel-1-rtc", "landsat-c2-l2"
SENSORS = (S2, S1, LS)
SOURCES = {"corine": ("forest", "pasture", "water", "urban"), "osm": ("building", "road", "forest")}
SPLITS = ("train", "val", "test", None)
# As a build writes them: the end is the first instant after the period (exclusive).
PERIODS = (
    ("2024-06", datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC)),
    ("2024-07", datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 8, 1, tzinfo=UTC)),
)
ISOLATED = Tile(32, "N", 640, 4420, TILE_M)
TILES = (
    [Tile(32, "N", c, r, TILE_M) for r in (4400, 4401, 4402) for c in range(600, 604)]
    + [Tile(33, "N", c, r, TILE_M) for r in (4400, 4401, 4402) for c in range(229, 233)]
    + [ISOLATED]
)
K = 4


def _sensors(rng: random.Random, start: datetime) -> tuple[SensorObservation, ...]:
    out = []
    for sensor in SENSORS:
        if sensor != S2 and rng.random() < 0.35:
            continue
        cloud = None if sensor == S1 else rng.choice([0.0, 0.05, 0.2, 0.35, 0.5, 0.9])
        when = start + timedelta(days=rng.randrange(28), hours=10)
        out.append(
            SensorObservation(
                sensor=sensor,
                datetimes=(when,),
                item_ids=(f"{sensor}-{rng.randrange(10**6)}",),
                cloud_fraction=cloud,
                valid_fraction=rng.choice([0.3, 0.6, 0.8, 0.95, 1.0]),
            )
        )
    return tuple(out)


def _labels(
    rng: random.Random,
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[str, ...]]]:
    fractions: dict[str, dict[str, float]] = {}
    multilabels: dict[str, tuple[str, ...]] = {}
    for source, classes in SOURCES.items():
        if rng.random() < 0.2:
            continue  # this source did not label the tile
        chosen = rng.sample(classes, rng.randint(0, len(classes)))
        weights = [rng.choice([1, 2, 3, 5]) for _ in chosen]
        total = sum(weights)
        fractions[source] = {c: round(w / total, 4) for c, w in zip(chosen, weights, strict=True)}
        multilabels[source] = tuple(c for c in classes if fractions[source].get(c, 0.0) >= 0.25)
    return fractions, multilabels


def make_record(
    tile: Tile, period: int, position: int, rng: random.Random, shard_id: str
) -> TileRecord:
    """One row with random but valid values."""
    footprint = tile.footprint_wgs84()
    period_id, start, end = PERIODS[period]
    fractions, multilabels = _labels(rng)
    return TileRecord(
        tile_id=tile.id,
        period_id=period_id,
        period_start=start,
        period_end=end,
        epsg=tile.epsg,
        transform=(10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3]),
        proj_bbox=tile.bounds,
        geometry_wkb=shapely.to_wkb(footprint),
        bbox=footprint.bounds,
        cube_position=position,
        shard_id=shard_id,
        sensors=_sensors(rng, start),
        split=rng.choice(SPLITS),
        class_fractions=fractions,
        multilabels=multilabels,
        unlabeled_fractions={s: round(rng.random() * 0.3, 3) for s in fractions},
        label_flags=(),
    )


class Synth:
    """The written catalog and the rows of each run (in commit order)."""

    def __init__(self, cube: Path) -> None:
        self.cube = cube
        self.runs: dict[str, list[TileRecord]] = {}
        self.superseded: list[str] = []

    def __repr__(self) -> str:  # short: hypothesis prints the fixtures of a failing example
        return f"Synth({str(self.cube)!r})"

    def rows(self, version: int | None) -> list[TileRecord]:
        """Rows visible in ``version`` (``None``: latest), a later run's row winning per id."""
        runs = ["run-1", "run-2", "run-3"]
        upto = runs if version is None else runs[:version]
        by_id: dict[str, TileRecord] = {}
        for run in upto:
            for record in self.runs[run]:
                by_id[record.id] = record
        return sorted(by_id.values(), key=lambda r: (r.cube_position, r.id))


def build_catalog(cube: Path, seed: int = 0) -> Synth:
    """Write the catalog described in the module docstring into ``cube``."""
    rng = random.Random(seed)
    writer = CatalogWriter(cube)
    pairs = [(tile, p) for p in range(len(PERIODS)) for tile in TILES]
    records = []
    for position, (tile, period) in enumerate(pairs):
        records.append(make_record(tile, period, position, rng, f"s{position // K:05d}"))
    shards: dict[str, list[TileRecord]] = {}
    for r in records:
        shards.setdefault(r.shard_id, []).append(r)
    synth = Synth(cube)
    plan = {"run-1": range(0, 6), "run-2": range(6, 10), "run-3": range(10, 13)}
    for run, shard_indexes in plan.items():
        synth.runs[run] = []
        for i in shard_indexes:
            shard_id = f"s{i:05d}"
            writer.commit_shard(shard_id, shards[shard_id], run_id=run)
            synth.runs[run].extend(shards[shard_id])
        if run == "run-2":
            # Two tiles of run 1 built again: new positions, new values.
            again = []
            for j, old in enumerate(synth.runs["run-1"][1:3]):
                fresh = make_record(
                    Tile.from_id(old.tile_id, TILE_M),
                    [p[0] for p in PERIODS].index(old.period_id),
                    52 + j,
                    rng,
                    "s00013",
                )
                again.append(replace(fresh, split="test", sensors=fresh.sensors[:1]))
                synth.superseded.append(old.id)
            writer.commit_shard("s00013", again, run_id=run)
            synth.runs[run].extend(again)
        if run != "run-3":
            writer.finish_run(run, {"run": run})
    return synth
