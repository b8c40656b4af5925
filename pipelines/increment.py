"""Incremental builds: decide what a rerun of a recipe on an existing cube must (re)build.

A catalog row is one tile in one period. Its **inputs digest** (:func:`inputs_digest`) hashes
everything its pixels, masks, labels and row depend on:

* the build settings that change content but not the cube layout (per sensor: provider,
  collection, bands, resolution, mask rules, temporal mode, scene limits, co-registration; the
  label sources; the split; the tile size);
* the period's bounds;
* per sensor, the ids (and ``updated`` stamps, when the catalog gives them) of every STAC item
  acquired in the period whose footprint meets the tile: the *candidates*, not only the scene
  that won, so a clearer scene that arrives later changes the digest.

The digest of every committed row is stored with its catalog part. A rerun computes the digests
of the new plan and compares them with the rows of the latest finished catalog version
(:class:`CurrentRow`):

* same digest: the row is **unchanged**; nothing is read or written for it;
* a different digest: the tile is **rebuilt** at new cube positions (the cube is append-only, so
  older catalog versions still point at the old pixels);
* no row yet (a new period, or a tile of a grown AOI): the tile is **added**.

Work tiles are grouped into shards per period with :func:`pipelines.grid.shards`, numbered after
the highest shard index any finished version uses. The plan is therefore deterministic for a
given cube state and set of sources: a build killed midway and run again plans the same shards,
and the shards its first attempt committed (with the same digests) are skipped.

Layout changes (bands, grid, resolution, codec) are refused by
:func:`pipelines.write.open_or_create_cube`; this module only sees cubes of the same layout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipelines.grid import Tile, TileGrid, shards
from pipelines.plan import BuildPlan, ShardTask
from schemas.recipe import Period

__all__ = [
    "CurrentRow",
    "Manifest",
    "inputs_digest",
    "plan_digests",
    "reconcile",
    "settings_digest",
]

#: Bump when the digest's recipe changes, so that old digests never match new ones.
_DIGEST_FORMAT = 1


def _sha(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_digest(plan: BuildPlan) -> str:
    """Digest of the plan's content settings (module docstring), without items, AOI or dates."""
    sensors = [
        {
            "sensor": s.sensor,
            "provider": s.provider,
            "collection": s.collection,
            "bands": list(s.bands),
            "resolution_m": s.resolution_m,
            "mask": s.mask,
            "temporal_mode": s.temporal_mode,
            "max_scenes": s.max_scenes,
            "min_valid_fraction": s.min_valid_fraction,
            "reference": s.reference,
            "coregister": s.coregister,
        }
        for s in plan.sensors
    ]
    return _sha(
        {
            "format": _DIGEST_FORMAT,
            "tile_size_m": plan.tile_size_m,
            "sensors": sensors,
            "labels": list(plan.labels),
            "label_resolution_m": plan.label_resolution_m,
            "split": plan.split,
        }
    )


def _candidate(item: Mapping[str, Any]) -> list[str]:
    updated = (item.get("properties") or {}).get("updated")
    return [str(item.get("id")), str(updated) if updated is not None else ""]


def inputs_digest(plan: BuildPlan, tile: Tile, period: Period, settings: str) -> str:
    """The inputs digest of one tile in one period (module docstring).

    Args:
        plan: The build plan (its sensors hold every item found for the recipe's time range).
        tile: The tile.
        period: One of the plan's periods.
        settings: :func:`settings_digest` of ``plan`` (computed once per plan).

    Returns:
        A hex SHA-256.
    """
    candidates = {
        s.sensor: sorted(_candidate(item) for item in s.items_for(tile, period))
        for s in plan.sensors
    }
    return _sha(
        {
            "settings": settings,
            "tile": tile.id,
            "period": [period.id, period.start.isoformat(), period.end.isoformat()],
            "candidates": candidates,
        }
    )


def plan_digests(plan: BuildPlan) -> dict[tuple[str, str], str]:
    """``{(tile id, period id): inputs digest}`` for every tile and period of ``plan``."""
    settings = settings_digest(plan)
    grid = plan.grid()
    tiles: dict[str, Tile] = {}
    out: dict[tuple[str, str], str] = {}
    for task in plan.shards:
        period = plan.period(task.period_id)
        for tid in task.tile_ids:
            tile = tiles.setdefault(tid, grid.tile_from_id(tid))
            out[(tid, task.period_id)] = inputs_digest(plan, tile, period, settings)
    return out


@dataclass(frozen=True)
class CurrentRow:
    """A row of the latest finished catalog version, as the reconciliation needs it.

    Attributes:
        tile_id: Grid tile id.
        period_id: Period id.
        digest: Its stored inputs digest; ``None`` for rows written without one (they are
            rebuilt, since nothing proves they are current).
    """

    tile_id: str
    period_id: str
    digest: str | None


@dataclass
class Manifest:
    """What a run changes, relative to the latest finished catalog version.

    Attributes:
        base_version: Catalog version compared against (``None`` for a new cube).
        added: Record ids (``<tile>_<period>``) new in this run.
        rebuilt: Record id -> why it is rebuilt (its inputs changed).
        unchanged: How many rows of the base version stay as they are.
        outside: Record ids of the base version that the recipe no longer covers (kept).
        shards: Shard ids this run plans, in order.
        positions: ``[start, stop)`` of each planned shard's cube positions.
    """

    base_version: int | None
    added: list[str] = field(default_factory=list)
    rebuilt: dict[str, str] = field(default_factory=dict)
    unchanged: int = 0
    outside: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists)."""
        out = asdict(self)
        out["positions"] = [list(p) for p in self.positions]
        return out

    def summary_line(self) -> str:
        """One line for logs and the CLI."""
        base = "a new cube" if self.base_version is None else f"version {self.base_version}"
        return (
            f"against {base}: {len(self.added)} rows added, {len(self.rebuilt)} rebuilt, "
            f"{self.unchanged} unchanged, in {len(self.shards)} shards"
        )


def _why(old: str | None) -> str:
    if old is None:
        return "the row has no inputs record (written by an older eoforge)"
    return "its inputs changed (new or updated source items, or changed build settings)"


def reconcile(
    plan: BuildPlan,
    current: Iterable[CurrentRow],
    *,
    next_shard_index: int,
    base_version: int | None,
) -> tuple[BuildPlan, Manifest, dict[tuple[str, str], str]]:
    """The plan of what this run must build, given the rows of the latest finished version.

    Args:
        plan: The full plan of the recipe (:func:`pipelines.plan.make_plan`).
        current: Rows of the latest finished catalog version (empty for a new cube).
        next_shard_index: First free shard index: one past the highest shard index used by
            any finished version (0 for a new cube).
        base_version: Number of that version, for the manifest.

    Returns:
        ``(work_plan, manifest, digests)``: the plan restricted to the shards that need
        building (numbered from ``next_shard_index``, ``K``-aligned positions), what changes,
        and the inputs digest of every planned ``(tile id, period id)`` (work and unchanged).
    """
    digests = plan_digests(plan)
    have = {(r.tile_id, r.period_id): r.digest for r in current}
    manifest = Manifest(base_version=base_version)
    grid: TileGrid = plan.grid()
    tasks: list[ShardTask] = []
    index = next_shard_index
    for period_id, _start, _end in plan.periods:
        work: list[Tile] = []
        for task in plan.shards:
            if task.period_id != period_id:
                continue
            for tid in task.tile_ids:
                key = (tid, period_id)
                record_id = f"{tid}_{period_id}"
                if key not in have:
                    manifest.added.append(record_id)
                elif have[key] != digests[key]:
                    manifest.rebuilt[record_id] = _why(have[key])
                else:
                    manifest.unchanged += 1
                    continue
                work.append(grid.tile_from_id(tid))
        for sh in shards(work, plan.tiles_per_shard, first_index=index):
            tasks.append(ShardTask(sh.index, period_id, tuple(t.id for t in sh.tiles), sh.start))
            manifest.shards.append(sh.id)
            manifest.positions.append((sh.start, sh.start + len(sh.tiles)))
        if tasks:
            index = tasks[-1].index + 1
    manifest.outside = sorted(f"{t}_{p}" for (t, p) in have if (t, p) not in digests)
    manifest.added.sort()
    manifest.rebuilt = dict(sorted(manifest.rebuilt.items()))
    return replace(plan, shards=tuple(tasks)), manifest, digests
