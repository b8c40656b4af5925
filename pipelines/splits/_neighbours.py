"""The tiles a tile touches in the global grid: its 8 neighbours and, near a seam, other zones'.

Neighbours are enumerated from the grid definition (:mod:`pipelines.grid`), never from the tiles
of a build, so the guard that uses them is a pure function of the tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely

from pipelines.grid import (
    LAT_MAX,
    LAT_MIN,
    SOUTH_FALSE_NORTHING,
    Hemisphere,
    Tile,
    _reproject,
    _transformer,
    _zone_lon_range,
    utm_epsg,
)

__all__ = ["SEAM_MARGIN_M", "GridKey", "other_zone_neighbours", "own_zone_neighbours", "zones_near"]

#: A tile of another zone (or hemisphere) counts as touching when its footprint comes this close
#: (metres). Tiles of one zone touch at distance 0 or are a whole tile apart; across a seam the
#: gap is arbitrary, and 10 m also absorbs projection round-off.
SEAM_MARGIN_M = 10.0

#: ``(zone, hemisphere, col, row)`` of a grid tile.
GridKey = tuple[int, Hemisphere, int, int]

_HEMISPHERES: tuple[Hemisphere, Hemisphere] = ("N", "S")


def _max_row(hemisphere: Hemisphere, t: float) -> int | None:
    # The top southern row is the one that starts below the equator (as in pipelines.grid).
    return math.ceil(SOUTH_FALSE_NORTHING / t) - 1 if hemisphere == "S" else None


def own_zone_neighbours(tile: Tile) -> list[GridKey]:
    """The up to 8 tiles of the tile's own zone that share an edge or a corner with it."""
    top = _max_row(tile.hemisphere, tile.tile_size_m)
    out: list[GridKey] = []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            col, row = tile.col + dc, tile.row + dr
            if (dc or dr) and col >= 0 and row >= 0 and (top is None or row <= top):
                out.append((tile.zone, tile.hemisphere, col, row))
    return out


def _domain(zone: int, hemisphere: Hemisphere) -> tuple[float, float, float, float]:
    west, east = _zone_lon_range(zone)
    lat0, lat1 = (0.0, LAT_MAX) if hemisphere == "N" else (LAT_MIN, 0.0)
    return west, lat0, east, lat1


def zones_near(tiles: Sequence[Tile]) -> list[list[tuple[int, Hemisphere]]]:
    """For each tile, the other (zone, hemisphere) pairs whose ground comes near it.

    Cheap and generous (it checks the tile's lon/lat box widened by more than a tile), so the
    exact test in :func:`other_zone_neighbours` runs only for the few tiles along a seam.

    Args:
        tiles: Tiles of one tile size, any zones.

    Returns:
        One list per tile, in order; empty for a tile away from every zone seam and the equator.
    """
    out: list[list[tuple[int, Hemisphere]]] = [[] for _ in tiles]
    by_epsg: dict[int, list[int]] = {}
    for i, tile in enumerate(tiles):
        by_epsg.setdefault(tile.epsg, []).append(i)
    for epsg, idx in by_epsg.items():
        bounds = np.array([tiles[i].bounds for i in idx])
        xs = bounds[:, [0, 2, 2, 0]]
        ys = bounds[:, [1, 1, 3, 3]]
        lon, lat = _transformer(epsg, 4326).transform(xs, ys)
        first = tiles[idx[0]]
        central = -183.0 + 6.0 * first.zone
        lon = central + (np.asarray(lon) - central + 180.0) % 360.0 - 180.0
        lat = np.asarray(lat)
        margin_m = 2.0 * first.tile_size_m + SEAM_MARGIN_M
        dlat = margin_m / 110_000.0
        far_lat = np.minimum(np.abs(lat).max(axis=1) + dlat, 89.0)
        dlon = margin_m / (111_000.0 * np.cos(np.radians(far_lat)))
        lo_lon, hi_lon = lon.min(axis=1) - dlon, lon.max(axis=1) + dlon
        lo_lat, hi_lat = lat.min(axis=1) - dlat, lat.max(axis=1) + dlat
        west, _ = _zone_lon_range(first.zone)
        for dz in (-1, 0, 1):
            zone = (first.zone - 1 + dz) % 60 + 1
            # The neighbour's strip in this zone's unwrapped longitudes.
            w, e = west + 6.0 * dz, west + 6.0 * dz + 6.0
            for hemisphere in _HEMISPHERES:
                if dz == 0 and hemisphere == first.hemisphere:
                    continue
                s, n = (0.0, LAT_MAX) if hemisphere == "N" else (LAT_MIN, 0.0)
                near = (lo_lon <= e) & (hi_lon >= w) & (lo_lat <= n) & (hi_lat >= s)
                for k in np.flatnonzero(near).tolist():
                    out[idx[k]].append((zone, hemisphere))
    return out


def other_zone_neighbours(tile: Tile, zone: int, hemisphere: Hemisphere) -> list[GridKey]:
    """Tiles of another zone/hemisphere that exist and lie within :data:`SEAM_MARGIN_M` of ``tile``.

    A tile exists in the global grid when its footprint meets its own zone strip and hemisphere
    (the rule of :func:`pipelines.grid.tiles_for_aoi`, counted generously: touching is enough).

    Args:
        tile: The tile.
        zone: The other zone (1-60).
        hemisphere: Its hemisphere.

    Returns:
        Their grid keys, in column-then-row order.
    """
    t = tile.tile_size_m
    dst = utm_epsg(zone, hemisphere)
    own = shapely.segmentize(shapely.box(*tile.bounds), max(t / 8.0, 1.0))
    projected = _reproject(own, tile.epsg, dst)
    minx, miny, maxx, maxy = projected.bounds
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        return []
    m = SEAM_MARGIN_M
    c0, c1 = max(0, math.floor((minx - m) / t)), math.floor((maxx + m) / t)
    r0, r1 = max(0, math.floor((miny - m) / t)), math.floor((maxy + m) / t)
    top = _max_row(hemisphere, t)
    if top is not None:
        r1 = min(r1, top)
    if c1 < c0 or r1 < r0:
        return []
    cols, rows = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1), indexing="ij")
    cc, rr = cols.ravel(), rows.ravel()
    boxes = shapely.box(cc * t, rr * t, (cc + 1) * t, (rr + 1) * t)
    close = shapely.dwithin(boxes, projected, m)
    domain = shapely.box(*_domain(zone, hemisphere))
    out: list[GridKey] = []
    for c, r in zip(cc[close].tolist(), rr[close].tolist(), strict=True):
        other = Tile(zone, hemisphere, c, r, t)
        if shapely.intersects(other.footprint_wgs84(), domain):
            out.append((zone, hemisphere, c, r))
    return out
