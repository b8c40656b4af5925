"""Build one shard: load -> masks -> temporal -> co-registration per tile, then labels, splits.

This is the pixel work of one shard task; the flow wraps it in a Prefect task, writes the result
with :func:`pipelines.write.write_shard` and then commits the catalog rows. Everything here is
numpy on one tile at a time, so memory is bounded by one tile x the scenes of one period.

Per-asset failure policy: a scene whose asset is permanently broken
(:class:`pipelines._warp.BrokenAssetError`) is dropped from that tile and reported in
:attr:`ShardBuild.skipped`; transient errors propagate (the flow retries the shard).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from affine import Affine
from shapely import to_wkb

from pipelines._warp import BrokenAssetError
from pipelines.coregister import ShiftResult, comparable_band, decide, estimate_tile_shift
from pipelines.grid import Shard, Tile
from pipelines.labels import TileLabel, label_tiles
from pipelines.load import load_sensor
from pipelines.masks import build_mask
from pipelines.plan import BuildPlan, SensorPlan, ShardTask
from pipelines.splits import assign_split
from pipelines.stack import PeriodStack
from pipelines.temporal import reduce_period
from pipelines.write import TileLabels
from schemas.profiles import BandSpec
from schemas.recipe import Period
from schemas.recipe_sensors import MaskRules
from schemas.tile import SensorObservation, TileRecord

__all__ = ["ShardBuild", "SkippedScene", "build_shard", "grid_shard"]

logger = logging.getLogger(__name__)

#: Largest residual shift eoforge corrects automatically (metres). Larger ones are recorded only.
MAX_CORRECTABLE_SHIFT_M = 30.0
#: Least phase-correlation peak ratio for a correction.
MIN_SHIFT_CONFIDENCE = 3.0
#: Shifts below this fraction of the moving sensor's pixel are not worth a re-warp.
MIN_CORRECTION_PX = 0.05


def _applies(shift: ShiftResult | None, resolution_m: float) -> bool:
    """Whether a shift estimate is corrected: confident, within bounds and not negligible."""
    if shift is None or not decide(shift, MAX_CORRECTABLE_SHIFT_M, MIN_SHIFT_CONFIDENCE):
        return False
    magnitude = shift.magnitude_m
    return magnitude is not None and magnitude >= MIN_CORRECTION_PX * resolution_m


@dataclass(frozen=True)
class SkippedScene:
    """A scene dropped from a tile, and why."""

    tile_id: str
    sensor: str
    item_id: str
    reason: str


@dataclass(frozen=True, eq=False)
class ShardBuild:
    """What one shard produced, ready to write and commit.

    Attributes:
        task: The shard task.
        shard: The same shard as a :class:`pipelines.grid.Shard` (what the writer takes).
        results: Tile id -> sensor -> the period's stack (missing when no scene covered it).
        shifts: Tile id -> sensor -> the co-registration estimate (non-reference sensors).
        records: One catalog row per tile, in shard order.
        skipped: Scenes dropped because an asset was unreadable.
        labels: Tile id -> label source -> class raster and summary (empty without labels).
    """

    task: ShardTask
    shard: Shard
    results: dict[str, dict[str, PeriodStack]]
    shifts: dict[str, dict[str, ShiftResult]]
    records: list[TileRecord]
    skipped: list[SkippedScene] = field(default_factory=list)
    labels: dict[str, dict[str, TileLabel]] = field(default_factory=dict)

    def writer_labels(self) -> dict[str, dict[str, TileLabels]] | None:
        """The labels as :func:`pipelines.write.write_shard` takes them (``None``: no labels)."""
        if not self.labels:
            return None
        return {
            tile_id: {
                name: TileLabels(raster=lab.raster, multilabel=lab.summary.multilabel)
                for name, lab in per_source.items()
            }
            for tile_id, per_source in self.labels.items()
        }


def grid_shard(plan: BuildPlan, task: ShardTask) -> Shard:
    """The :class:`pipelines.grid.Shard` of a plan's shard task."""
    grid = plan.grid()
    tiles = tuple(grid.tile_from_id(t) for t in task.tile_ids)
    return Shard(task.index, tiles, plan.tiles_per_shard)


def _period_stack(
    sp: SensorPlan,
    tile: Tile,
    period: Period,
    items: Sequence[dict[str, Any]],
    skipped: list[SkippedScene],
    shifts_m: Mapping[str, tuple[float, float]] | None = None,
) -> PeriodStack | None:
    """Load, mask and reduce one sensor's scenes of one period on one tile."""
    profile = sp.profile()
    todo = list(items)
    while todo:
        try:
            loaded = load_sensor(
                todo,
                tile,
                resolution_m=sp.resolution_m,
                profile=profile,
                bands=sp.bands,
                shifts_m={k: v for k, v in (shifts_m or {}).items() if k in _ids(todo)} or None,
            )
        except BrokenAssetError as exc:
            logger.warning("dropping scene %s from tile %s: %s", exc.item_id, tile.id, exc)
            skipped.append(SkippedScene(tile.id, sp.sensor, exc.item_id, str(exc)))
            todo = [it for it in todo if it.get("id") != exc.item_id]
            continue
        scenes = build_mask(loaded, profile, MaskRules.model_validate(sp.mask))
        return reduce_period(
            scenes,
            period,
            sp.temporal_mode,
            sp.max_scenes,
            sp.min_valid_fraction,
        )
    return None


def _ids(items: Sequence[Mapping[str, Any]]) -> set[str]:
    return {str(it.get("id")) for it in items}


def _item_wavelengths(
    bands: Sequence[BandSpec], items: Sequence[Mapping[str, Any]]
) -> dict[str, float] | None:
    """Centre wavelengths (µm) of bands the profile leaves open, read from the items' eo:bands.

    EnMAP wavelengths vary per scene, so its profile has none; the scene's item carries them.
    """
    if not items or all(b.center_wavelength_um is not None for b in bands):
        return None
    assets = items[0].get("assets", {})
    out: dict[str, float] = {}
    for b in bands:
        if b.center_wavelength_um is not None:
            out[b.name] = b.center_wavelength_um
            continue
        eo = assets.get(b.asset_key, {}).get("eo:bands") or []
        index = (b.asset_band or 1) - 1
        if 0 <= index < len(eo) and eo[index].get("center_wavelength") is not None:
            out[b.name] = float(eo[index]["center_wavelength"])
    return out or None


def _coregister(
    plan: BuildPlan,
    tile: Tile,
    period: Period,
    stacks: dict[str, PeriodStack],
    tile_items: Mapping[str, list[dict[str, Any]]],
    skipped: list[SkippedScene],
    applied: set[str],
) -> dict[str, ShiftResult]:
    """Estimate every non-reference sensor's shift; re-load it corrected when confident.

    Sensors whose stored planes were re-loaded with the correction are added to ``applied``.
    """
    ref_plan = next((s for s in plan.sensors if s.reference), None)
    out: dict[str, ShiftResult] = {}
    if ref_plan is None or ref_plan.sensor not in stacks:
        return out
    ref_stack = stacks[ref_plan.sensor]
    ref_bands = [ref_plan.profile().band(b) for b in ref_plan.bands]
    for sp in plan.sensors:
        if sp.reference or not sp.coregister or sp.sensor not in stacks:
            continue
        moving = stacks[sp.sensor]
        moving_bands = [sp.profile().band(b) for b in sp.bands]
        pair = comparable_band(
            ref_bands,
            moving_bands,
            wavelengths_um=_item_wavelengths(moving_bands, tile_items[sp.sensor]),
        )
        if pair is None:
            out[sp.sensor] = ShiftResult.not_estimated("no comparable band (e.g. SAR vs optical)")
            continue
        result = estimate_tile_shift(ref_stack, moving, pair[0], pair[1])
        out[sp.sensor] = result
        if _applies(result, sp.resolution_m):
            assert result.dx_m is not None and result.dy_m is not None
            correction = (-result.dx_m, -result.dy_m)
            shifts = {str(it["id"]): correction for it in tile_items[sp.sensor]}
            corrected = _period_stack(sp, tile, period, tile_items[sp.sensor], skipped, shifts)
            if corrected is not None and corrected.sources == moving.sources:
                stacks[sp.sensor] = corrected
                applied.add(sp.sensor)
            else:
                # The corrected re-load lost a scene: keep the uncorrected planes, say so.
                logger.warning("shift of %s on %s measured but not applied", sp.sensor, tile.id)
    return out


def _as_utc(t: np.datetime64) -> datetime:
    ns = int(t.astype("datetime64[ns]").astype(np.int64))
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _record(
    tile: Tile,
    period: Period,
    position: int,
    task: ShardTask,
    stacks: Mapping[str, PeriodStack],
    shifts: Mapping[str, ShiftResult],
    applied: set[str],
    finest_m: float,
    labels: Mapping[str, TileLabel],
    split: str,
) -> TileRecord:
    footprint = tile.footprint_wgs84()
    observations = []
    for sensor, st in stacks.items():
        shift = shifts.get(sensor)
        observations.append(
            SensorObservation(
                sensor=sensor,
                datetimes=tuple(_as_utc(t) for t in st.times),
                item_ids=tuple(sorted({i for plane in st.sources for i in plane})),
                cloud_fraction=st.cloud_fraction,
                valid_fraction=st.valid_fraction,
                shift_dy_m=shift.dy_m if shift is not None else None,
                shift_dx_m=shift.dx_m if shift is not None else None,
                shift_applied=sensor in applied,
            )
        )
    t: Affine = tile.transform(finest_m)
    return TileRecord(
        tile_id=tile.id,
        period_id=period.id,
        period_start=period.start,
        period_end=period.end,
        epsg=tile.epsg,
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        proj_bbox=tile.bounds,
        geometry_wkb=to_wkb(footprint),
        bbox=tuple(float(v) for v in footprint.bounds),  # type: ignore[arg-type]
        cube_position=position,
        shard_id=task.id,
        sensors=tuple(sorted(observations, key=lambda o: o.sensor)),
        split=split,
        class_fractions={name: lab.summary.fractions for name, lab in labels.items()},
        multilabels={name: lab.summary.multilabels for name, lab in labels.items()},
        unlabeled_fractions={name: lab.summary.unlabeled_fraction for name, lab in labels.items()},
        label_flags=tuple(name for name, lab in labels.items() if lab.summary.flagged),
    )


def build_shard(plan: BuildPlan, task: ShardTask) -> ShardBuild:
    """Compute every tile of one shard for its period (no I/O besides reading sources).

    Args:
        plan: The build plan.
        task: One of ``plan.shards``.

    Returns:
        The stacks, shift estimates, catalog rows and skipped scenes of the shard.
    """
    shard = grid_shard(plan, task)
    period = plan.period(task.period_id)
    finest = min(s.resolution_m for s in plan.sensors)
    if plan.label_resolution_m is not None:
        finest = min(finest, plan.label_resolution_m)
    labels: dict[str, dict[str, TileLabel]] = {}
    if plan.labels and plan.label_resolution_m is not None:
        labels = label_tiles(
            plan.label_sources(),
            shard.tiles,
            plan.label_resolution_m,
            prefetch_bbox=plan.aoi_bbox,
        )
    split_config = plan.split_config()
    results: dict[str, dict[str, PeriodStack]] = {}
    shifts: dict[str, dict[str, ShiftResult]] = {}
    records: list[TileRecord] = []
    skipped: list[SkippedScene] = []
    for offset, tile in enumerate(shard.tiles):
        stacks: dict[str, PeriodStack] = {}
        tile_items: dict[str, list[dict[str, Any]]] = {}
        for sp in plan.sensors:
            items = sp.items_for(tile, period)
            tile_items[sp.sensor] = items
            if not items:
                continue
            st = _period_stack(sp, tile, period, items, skipped)
            if st is not None:
                stacks[sp.sensor] = st
        applied: set[str] = set()
        tile_shifts = _coregister(plan, tile, period, stacks, tile_items, skipped, applied)
        results[tile.id] = stacks
        shifts[tile.id] = tile_shifts
        records.append(
            _record(
                tile,
                period,
                shard.start + offset,
                task,
                stacks,
                tile_shifts,
                applied,
                finest,
                labels.get(tile.id, {}),
                assign_split(tile, split_config, round(plan.tile_size_m)),
            )
        )
    return ShardBuild(task, shard, results, shifts, records, skipped, labels)
