"""How well a split keeps test away from train: counts, shares and the test-train distance.

Distances are measured between tile footprints. Tiles of one UTM zone and hemisphere are
compared in that zone's CRS, where the footprints are exact boxes; tiles of two different
zones (or hemispheres) in a transverse Mercator (scale 1) on the meridian halfway between the
two zones' central meridians. Both are conformal with scale >= 0.9996, and near the meridian,
so distances are exact to better than 0.1 % where it matters: between tiles a few zones apart
at most. Zone pairs more than 90 degrees of longitude apart are compared by the great-circle
distance of tile centres less half of both diagonals (a lower bound, on the mean-radius sphere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.strtree import STRtree

from pipelines.grid import Tile
from pipelines.splits._base import SPLITS, Split
from schemas.errors import InvalidInputError

__all__ = ["TOUCH_DISTANCE_M", "LeakageReport", "leakage_report"]

#: A test tile counts as touching train when a train footprint comes this close (metres).
TOUCH_DISTANCE_M = 1.0
_EARTH_RADIUS_M = 6_371_008.8
_FAR_DEG = 90.0
#: Dot products held at once by the far-zone fallback (bounds memory to ~128 MiB).
_DOTS_PER_CHUNK = 1 << 24


@dataclass(frozen=True, slots=True)
class LeakageReport:
    """Split sizes and the spatial separation of test from train.

    Attributes:
        counts: Tiles per split, ``{"train": n, "val": n, "test": n}``.
        fractions: ``counts`` over the number of tiles (0 for each when there are none).
        min_test_train_distance_m: Smallest distance in metres between a test and a train tile
            footprint; ``inf`` when there is no test or no train tile.
        nearest_pair: ``(test id, train id)`` at that distance, or ``None``.
        test_touching_train: Test tiles with a train footprint within :data:`TOUCH_DISTANCE_M`
            (0 for a leakage-free split).
        class_counts: ``{split: {class: total}}`` summed over the tiles of each split, when
            class counts were given; every split lists every class.
        class_shares: ``{split: {class: share}}``: each class's total in a split over its total
            in all splits (0 for a class that never occurs).
    """

    counts: dict[Split, int]
    fractions: dict[Split, float]
    min_test_train_distance_m: float
    nearest_pair: tuple[str, str] | None
    test_touching_train: int
    class_counts: dict[Split, dict[str, float]] | None = None
    class_shares: dict[Split, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field; an infinite distance becomes ``None``."""
        distance = self.min_test_train_distance_m
        return {
            "counts": dict(self.counts),
            "fractions": dict(self.fractions),
            "min_test_train_distance_m": distance if math.isfinite(distance) else None,
            "nearest_pair": list(self.nearest_pair) if self.nearest_pair else None,
            "test_touching_train": self.test_touching_train,
            "class_counts": _copy(self.class_counts),
            "class_shares": _copy(self.class_shares),
        }


def _copy(table: dict[Split, dict[str, float]] | None) -> dict[str, dict[str, float]] | None:
    return None if table is None else {k: dict(v) for k, v in table.items()}


def _central(zone: int) -> float:
    return -183.0 + 6.0 * zone


def _boxes(tiles: Sequence[Tile]) -> np.ndarray[Any, Any]:
    b = np.array([t.bounds for t in tiles], dtype=float).reshape(-1, 4)
    return shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])  # type: ignore[no-any-return]


def _project(tiles: Sequence[Tile], dst: str) -> np.ndarray[Any, Any]:
    """Footprints (edges densified) of tiles of one EPSG, in the CRS ``dst``."""
    t = tiles[0].tile_size_m
    geoms = shapely.segmentize(_boxes(tiles), max(t / 8.0, 1.0))
    tr = Transformer.from_crs(tiles[0].epsg, dst, always_xy=True)

    def xy(coords: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, xy)  # type: ignore[no-any-return]


def _nearest(
    tests: np.ndarray[Any, Any], trains: np.ndarray[Any, Any]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """For each test geometry: the index of the nearest train geometry and its distance."""
    tree = STRtree(trains)
    (src, dst), dist = tree.query_nearest(tests, return_distance=True, all_matches=False)
    idx = np.full(len(tests), -1)
    out = np.full(len(tests), math.inf)
    idx[src] = dst
    out[src] = dist
    return idx, out


def _centres_unit(tiles: Sequence[Tile]) -> tuple[np.ndarray[Any, Any], float]:
    b = np.array([t.bounds for t in tiles], dtype=float)
    tr = Transformer.from_crs(tiles[0].epsg, 4326, always_xy=True)
    lon, lat = tr.transform((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2)
    lon, lat = np.radians(lon), np.radians(lat)
    xyz = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    return xyz, tiles[0].tile_size_m * math.sqrt(2) / 2


def _far_nearest(
    tests: Sequence[Tile], trains: Sequence[Tile]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """:func:`_nearest` for zones far apart: great-circle lower bound between centres."""
    a, ha = _centres_unit(tests)
    b, hb = _centres_unit(trains)
    idx = np.empty(len(tests), dtype=int)
    dist = np.empty(len(tests))
    rows = max(1, _DOTS_PER_CHUNK // len(b))
    for s in range(0, len(tests), rows):
        dots = np.clip(a[s : s + rows] @ b.T, -1.0, 1.0)
        best = dots.argmax(axis=1)
        idx[s : s + rows] = best
        angle = np.arccos(dots[np.arange(len(best)), best])
        dist[s : s + rows] = np.maximum(0.0, angle * _EARTH_RADIUS_M - ha - hb)
    return idx, dist


def _test_train_distances(
    tests: Sequence[Tile], trains: Sequence[Tile]
) -> tuple[np.ndarray[Any, Any], list[str | None]]:
    """Per test tile: distance to the nearest train footprint and that tile's id."""
    best = np.full(len(tests), math.inf)
    partner: list[str | None] = [None] * len(tests)
    if not tests or not trains:
        return best, partner
    test_groups: dict[int, list[int]] = {}
    train_groups: dict[int, list[Tile]] = {}
    for i, tile in enumerate(tests):
        test_groups.setdefault(tile.epsg, []).append(i)
    for tile in trains:
        train_groups.setdefault(tile.epsg, []).append(tile)
    for epsg, idx in test_groups.items():
        group = [tests[i] for i in idx]
        for other_epsg, others in train_groups.items():
            if other_epsg == epsg:
                near, dist = _nearest(_boxes(group), _boxes(others))
            else:
                delta = (_central(others[0].zone) - _central(group[0].zone) + 540.0) % 360.0
                delta -= 180.0
                if abs(delta) > _FAR_DEG:
                    near, dist = _far_nearest(group, others)
                else:
                    mid = (_central(group[0].zone) + delta / 2 + 540.0) % 360.0 - 180.0
                    crs = f"+proj=tmerc +lat_0=0 +lon_0={mid!r} +k=1 +x_0=0 +y_0=0 +ellps=WGS84"
                    near, dist = _nearest(_project(group, crs), _project(others, crs))
            for k, i in enumerate(idx):
                if dist[k] < best[i]:
                    best[i] = dist[k]
                    partner[i] = others[int(near[k])].id
    return best, partner


def leakage_report(
    tiles: Sequence[Tile],
    splits: Mapping[str, str],
    class_counts: Mapping[str, Mapping[str, float]] | None = None,
) -> LeakageReport:
    """Counts per split and how close test tiles come to train tiles.

    Args:
        tiles: The build's tiles (one tile size), any zones; duplicates are counted once.
        splits: ``{tile id: "train" | "val" | "test"}`` covering every tile (extra ids are
            ignored), e.g. from :func:`~pipelines.splits.assign.assign_splits`.
        class_counts: Optional ``{tile id: {class: pixels or 0/1 presence}}``; tiles without an
            entry add nothing.

    Returns:
        The report (see :class:`LeakageReport`).

    Raises:
        InvalidInputError: A tile has no split, or an unknown split name.
    """
    unique = list({t.id: t for t in tiles}.values())
    by_split: dict[Split, list[Tile]] = {s: [] for s in SPLITS}
    for tile in unique:
        name = splits.get(tile.id)
        if name not in by_split:
            raise InvalidInputError(
                f"tile {tile.id} has split {name!r}, not one of train/val/test",
                "leakage report",
                "pass the splits of every tile, e.g. from assign_splits",
            )
        by_split[name].append(tile)
    counts = {s: len(by_split[s]) for s in SPLITS}
    total = len(unique)
    fractions = {s: (counts[s] / total if total else 0.0) for s in SPLITS}
    dist, partner = _test_train_distances(by_split["test"], by_split["train"])
    if dist.size and math.isfinite(float(dist.min())):
        k = int(dist.argmin())
        min_dist = float(dist[k])
        pair_id = partner[k]
        pair = (by_split["test"][k].id, pair_id) if pair_id is not None else None
    else:
        min_dist, pair = math.inf, None
    touching = int(np.count_nonzero(dist <= TOUCH_DISTANCE_M))
    per_class: dict[Split, dict[str, float]] | None = None
    shares: dict[Split, dict[str, float]] | None = None
    if class_counts is not None:
        names = sorted({c for tile in unique for c in class_counts.get(tile.id, {})})
        per_class = {s: dict.fromkeys(names, 0.0) for s in SPLITS}
        for split in SPLITS:
            for tile in by_split[split]:
                for name, value in class_counts.get(tile.id, {}).items():
                    per_class[split][name] += float(value)
        totals = {c: sum(per_class[s][c] for s in SPLITS) for c in names}
        shares = {
            s: {c: (per_class[s][c] / totals[c] if totals[c] else 0.0) for c in names}
            for s in SPLITS
        }
    return LeakageReport(
        counts=counts,
        fractions=fractions,
        min_test_train_distance_m=min_dist,
        nearest_pair=pair,
        test_touching_train=touching,
        class_counts=per_class,
        class_shares=shares,
    )
