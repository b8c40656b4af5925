"""The UTM tile grid: ids, transforms, AOI tiling across zone seams, shards, sub-pixel phase."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import shapely
from affine import Affine
from dask.base import tokenize
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pyproj import Geod, Transformer

from pipelines.grid import (
    Hemisphere,
    Shard,
    Tile,
    TileGrid,
    shards,
    subpixel_phase,
    tiles_for_aoi,
    utm_epsg,
    utm_zone,
)
from schemas.errors import InvalidInputError

GRID = TileGrid(1200.0, (10.0, 20.0, 30.0, 60.0))
# Area (deg^2) below which an uncovered remainder is rounding, not a hole: ~1 m^2.
HOLE_TOL_DEG2 = 1e-10
FAST = settings(max_examples=60, deadline=None)
MEDIUM = settings(max_examples=200, deadline=None)


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    # Rounded to 1e-9 (0.1 mm): GEOS overlays of boxes with coordinates like 1e-307 drop
    # vertices, so the test's own AOI union would be wrong.
    return st.floats(lo, hi).map(lambda v: round(v, 9))


def _to_utm(epsg: int, lon: float, lat: float) -> tuple[float, float]:
    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    return float(x), float(y)


def _zone_strip(zone: int, hemisphere: str) -> shapely.Geometry:
    west = -180.0 + 6.0 * (zone - 1)
    return (
        shapely.box(west, 0.0, west + 6.0, 84.0)
        if hemisphere == "N"
        else shapely.box(west, -80.0, west + 6.0, 0.0)
    )


def _uncovered(aoi: shapely.Geometry, tiles: list[Tile]) -> float:
    union = shapely.union_all([t.footprint_wgs84() for t in tiles])
    return float(aoi.difference(union).area)


# ---------------------------------------------------------------------------------------------
# TileGrid and Tile


def test_grid_rejects_resolution_that_does_not_divide_tile() -> None:
    with pytest.raises(InvalidInputError, match=r"1000 m is not divisible by resolution 30 m"):
        TileGrid(1000.0, (10.0, 30.0))
    with pytest.raises(InvalidInputError, match="at least one resolution"):
        TileGrid(1200.0, ())
    with pytest.raises(InvalidInputError, match="positive"):
        TileGrid(-1200.0, (10.0,))


def test_tile_id_bounds_and_crs_of_known_tiles() -> None:
    north = Tile(32, "N", 345, 5670, 1200.0)
    assert north.id == "32N-0345-5670"
    assert north.epsg == 32632
    assert north.crs == "EPSG:32632"
    assert north.bounds == (414000.0, 6804000.0, 415200.0, 6805200.0)
    south = Tile(33, "S", 345, 8000, 1200.0)
    assert south.id == "33S-0345-8000"
    assert south.epsg == 32733
    assert south.bounds[1] == 9_600_000.0
    # Small tiles: indexes grow past 4 digits and still round-trip.
    small = Tile(1, "N", 41234, 512345, 10.0)
    assert small.id == "01N-41234-512345"
    assert Tile.from_id(small.id, 10.0) == small


@pytest.mark.parametrize(
    "bad", ["32X-0345-5670", "3N-0345-5670", "32N-345-5670", "32N-0345", "61N-0001-0001", ""]
)
def test_from_id_rejects_malformed_ids(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        Tile.from_id(bad, 1200.0)


tiles_st = st.builds(
    Tile,
    zone=st.integers(1, 60),
    hemisphere=st.sampled_from(["N", "S"]),
    col=st.integers(0, 9999),
    row=st.integers(0, 99999),
    tile_size_m=st.sampled_from([120.0, 600.0, 1200.0, 2400.0, 3840.0, 10980.0]),
)


@MEDIUM
@given(tile=tiles_st, res_index=st.integers(0, 3))
def test_tile_transform_shape_and_id_roundtrip(tile: Tile, res_index: int) -> None:
    # every resolution that divides the tile size, e.g. 10 m for 10980 m (S2 tile extent)
    divisors = [r for r in (10.0, 20.0, 30.0, 60.0) if (tile.tile_size_m / r).is_integer()]
    res = divisors[res_index % len(divisors)]
    minx, miny, maxx, maxy = tile.bounds
    # origins are multiples of the tile size (so of every resolution: SENSORS.md invariant 10)
    assert minx == tile.col * tile.tile_size_m and miny == tile.row * tile.tile_size_m
    assert math.fmod(minx, res) == 0.0 and math.fmod(maxy, res) == 0.0
    tr = tile.transform(res)
    assert tr @ (0, 0) == (minx, maxy)
    ny, nx = tile.shape(res)
    assert ny * res == tile.tile_size_m and nx * res == tile.tile_size_m
    assert tr @ (nx, ny) == pytest.approx((maxx, miny), abs=1e-6)
    assert Tile.from_id(tile.id, tile.tile_size_m) == tile


def test_transform_rejects_resolution_that_does_not_divide_tile() -> None:
    with pytest.raises(InvalidInputError, match="not divisible"):
        Tile(32, "N", 1, 1, 1000.0).transform(30.0)


@MEDIUM
@given(lon=_floats(-179.99, 179.99), lat=_floats(-79.9, 83.9))
def test_tile_at_contains_the_point_in_its_own_zone(lon: float, lat: float) -> None:
    tile = GRID.tile_at(lon, lat)
    assert tile.zone == utm_zone(lon)
    assert tile.hemisphere == ("N" if lat >= 0 else "S")
    x, y = _to_utm(tile.epsg, lon, lat)
    minx, miny, maxx, maxy = tile.bounds
    assert minx <= x < maxx and miny <= y < maxy


def test_tile_is_dask_tokenisable_and_stable() -> None:
    a = Tile(32, "N", 345, 5670, 1200.0)
    assert tokenize(a) == tokenize(Tile.from_id("32N-0345-5670", 1200.0))
    assert tokenize(a) != tokenize(Tile(32, "N", 345, 5671, 1200.0))
    assert tokenize(a) != tokenize(Tile(32, "S", 345, 5670, 1200.0))
    assert a.__dask_tokenize__() == ("eoforge.Tile", 32, "N", 345, 5670, 1200.0)


@FAST
@given(
    zone=st.integers(1, 60),
    offset=_floats(-3.0, 3.0),
    lat=_floats(-79.0, 83.0),
    size=st.sampled_from([600.0, 1200.0, 10980.0, 100_000.0]),
)
def test_footprint_is_exact_to_under_a_metre(
    zone: int, offset: float, lat: float, size: float
) -> None:
    # the tile under a point anywhere across the zone (offset from the central meridian)
    hemi: Hemisphere = "N" if lat >= 0 else "S"
    x0, y0 = _to_utm(utm_epsg(zone, hemi), -183.0 + 6.0 * zone + offset, lat)
    tile = Tile(zone, hemi, int(x0 // size), int(y0 // size), size)
    footprint = tile.footprint_wgs84()
    assert footprint.is_valid
    ring = np.asarray(footprint.exterior.coords)
    mids = (ring[:-1] + ring[1:]) / 2
    to_utm = Transformer.from_crs(4326, tile.epsg, always_xy=True)
    box = shapely.box(*tile.bounds).exterior
    vx, vy = to_utm.transform(ring[:, 0], ring[:, 1])
    mx, my = to_utm.transform(mids[:, 0], mids[:, 1])
    assert shapely.distance(box, shapely.points(vx, vy)).max() < 1e-6
    # straight lon/lat chords between vertices stay within 1 m of the true (straight UTM) edge
    assert shapely.distance(box, shapely.points(mx, my)).max() < 1.0


# ---------------------------------------------------------------------------------------------
# tiles_for_aoi


def test_aoi_across_the_12E_seam_gets_tiles_of_both_zones_without_holes() -> None:
    aoi = shapely.box(11.98, 47.99, 12.02, 48.01)
    tiles = tiles_for_aoi(aoi, GRID)
    zones = {t.zone for t in tiles}
    assert zones == {32, 33}
    assert all(t.id.startswith(("32N-", "33N-")) for t in tiles)
    assert len({t.id for t in tiles}) == len(tiles)
    assert tiles == sorted(tiles, key=lambda t: (t.epsg, -t.row, t.col))
    assert _uncovered(aoi, tiles) < HOLE_TOL_DEG2
    # every tile overlaps the AOI inside its own zone strip
    for t in tiles:
        assert t.footprint_wgs84().intersection(aoi).intersection(_zone_strip(t.zone, "N")).area > 0


def test_keeping_only_centre_zone_tiles_would_leave_a_hole_at_the_seam() -> None:
    aoi = shapely.box(11.98, 47.99, 12.02, 48.01)
    tiles = tiles_for_aoi(aoi, GRID)
    centre_only = [t for t in tiles if utm_zone(t.centre_lonlat()[0]) == t.zone]
    straddling = [t for t in tiles if t not in centre_only]
    # the seam tiles are what this rule adds, and they straddle 12 E
    assert straddling
    for t in straddling:
        lon_min, _, lon_max, _ = t.footprint_wgs84().bounds
        assert lon_min < 12.0 < lon_max
    assert _uncovered(aoi, centre_only) > 1e-8  # > ~100 m^2 of the AOI uncovered
    assert _uncovered(aoi, tiles) < HOLE_TOL_DEG2


GEOD = Geod(ellps="WGS84")
DEPTH_M = 0.05  # pipelines.grid._MIN_DEPTH_M


def _overlaps(aoi: shapely.Geometry, grid: TileGrid) -> dict[str, float]:
    """Reference: geodesic area (m^2) of each tile's WGS84 footprint inside AOI and own strip."""
    found: dict[str, float] = {}
    t = grid.tile_size_m
    minx, _, maxx, _ = aoi.bounds
    for zone in range(utm_zone(minx), utm_zone(maxx) + 1):
        for hemi in ("N", "S"):
            part = aoi.intersection(_zone_strip(zone, hemi))
            if part.area == 0:
                continue
            epsg = utm_epsg(zone, hemi)
            corners = [_to_utm(epsg, x, y) for x, y in part.exterior.coords]
            xs, ys = zip(*corners, strict=True)
            for col in range(int(min(xs) // t) - 1, int(max(xs) // t) + 2):
                for row in range(max(0, int(min(ys) // t) - 1), int(max(ys) // t) + 2):
                    tile = Tile(zone, hemi, col, row, t)
                    overlap = tile.footprint_wgs84().intersection(part)
                    if overlap.area > 0:
                        found[tile.id] = abs(GEOD.geometry_area_perimeter(overlap)[0])
    return found


@FAST
@given(
    lon=_floats(-179.9, 179.85),
    lat=_floats(-79.9, 83.85),
    w=_floats(0.002, 0.04),
    h=_floats(0.002, 0.04),
    seam=st.booleans(),
)
def test_tiles_match_brute_force_reference(
    lon: float, lat: float, w: float, h: float, seam: bool
) -> None:
    if seam:  # pull half of the cases onto a zone seam
        lon = -180.0 + 6.0 * round((lon + 180.0) / 6.0) - w / 2
        lon = min(max(lon, -179.99), 179.9)
    aoi = shapely.box(lon, lat, min(lon + w, 180.0), lat + h)
    got = {t.id for t in tiles_for_aoi(aoi, GRID)}
    overlaps = _overlaps(aoi, GRID)
    # Every returned tile overlaps the AOI in its own strip; every tile that overlaps by more
    # than any strip thinner than 2 * DEPTH_M can hold (with 50 % margin for scale) is returned.
    assert got <= set(overlaps)
    thin = 1.5 * 2 * DEPTH_M * math.sqrt(2) * GRID.tile_size_m
    assert {tid for tid, area in overlaps.items() if area > thin} <= got


box_st = st.tuples(
    _floats(-179.9, 179.85),
    _floats(-79.9, 83.85),
    _floats(0.002, 0.04),
    _floats(0.002, 0.04),
)


@FAST
@given(
    box=box_st,
    size=st.sampled_from([600.0, 1200.0, 2400.0]),
    seam=st.booleans(),
    equator=st.booleans(),
    px=_floats(0.01, 0.99),
    py=_floats(0.01, 0.99),
)
def test_tiles_cover_the_aoi_and_points_fall_in_one_own_zone_tile(
    box: tuple[float, float, float, float],
    size: float,
    seam: bool,
    equator: bool,
    px: float,
    py: float,
) -> None:
    lon, lat, w, h = box
    if seam:
        lon = min(max(-180.0 + 6.0 * round((lon + 180.0) / 6.0) - w / 2, -179.99), 179.9)
    if equator:
        lat = -h / 2
    aoi = shapely.box(lon, lat, min(lon + w, 180.0), lat + h)
    grid = TileGrid(size, (10.0, 20.0, 30.0, 60.0))
    tiles = tiles_for_aoi(aoi, grid)
    assert len({t.id for t in tiles}) == len(tiles)
    assert tiles == sorted(tiles, key=lambda t: t.sort_key)
    assert _uncovered(aoi, tiles) < HOLE_TOL_DEG2
    # a point inside the AOI lies in exactly one tile of its own zone and hemisphere, and in at
    # most one tile of any other zone (seam overlap)
    plon, plat = aoi.bounds[0] + px * (aoi.bounds[2] - aoi.bounds[0]), lat + py * h
    assume(abs(plat) > 1e-9)
    zone, hemi = utm_zone(plon), ("N" if plat >= 0 else "S")
    containing: dict[tuple[int, str], int] = {}
    for t in tiles:
        x, y = _to_utm(t.epsg, plon, plat)
        minx, miny, maxx, maxy = t.bounds
        if minx <= x < maxx and miny <= y < maxy:
            containing[(t.zone, t.hemisphere)] = containing.get((t.zone, t.hemisphere), 0) + 1
    assert containing.get((zone, hemi)) == 1
    assert all(n == 1 for n in containing.values())


@FAST
@given(a=box_st, dx=_floats(-0.03, 0.03), dy=_floats(-0.03, 0.03), seam=st.booleans())
def test_tiling_does_not_depend_on_the_rest_of_the_aoi(
    a: tuple[float, float, float, float], dx: float, dy: float, seam: bool
) -> None:
    lon, lat, w, h = a
    if seam:
        lon = min(max(-180.0 + 6.0 * round((lon + 180.0) / 6.0) - w / 2, -179.95), 179.8)
    box_a = shapely.box(lon, lat, lon + w, lat + h)
    box_b = shapely.box(
        min(max(lon + dx, -180.0), 179.9),
        min(max(lat + dy, -79.99), 83.9),
        min(max(lon + dx, -180.0), 179.9) + 0.01,
        min(max(lat + dy, -79.99), 83.9) + 0.01,
    )
    union = {t.id for t in tiles_for_aoi(box_a.union(box_b), GRID)}
    separate = {t.id for t in tiles_for_aoi(box_a, GRID)} | {
        t.id for t in tiles_for_aoi(box_b, GRID)
    }
    assert union == separate


def test_equator_tiles_overlap_only_when_tile_size_does_not_divide_false_northing() -> None:
    aoi = shapely.box(9.0, -0.02, 9.02, 0.02)
    for size, straddles in ((1000.0, False), (1200.0, True)):
        tiles = tiles_for_aoi(aoi, TileGrid(size, (10.0,)))
        assert {t.epsg for t in tiles} == {32632, 32732}
        north_rows = {t.row for t in tiles if t.hemisphere == "N"}
        assert min(north_rows) == 0
        top_south = max(t.bounds[3] for t in tiles if t.hemisphere == "S")
        assert (top_south > 10_000_000.0) is straddles
        assert _uncovered(aoi, tiles) < HOLE_TOL_DEG2


def test_point_and_line_aois() -> None:
    point = shapely.Point(12.345, 48.123)
    assert tiles_for_aoi(point, GRID) == [GRID.tile_at(12.345, 48.123)]
    line = shapely.LineString([(11.99, 48.0), (12.01, 48.0)])
    tiles = tiles_for_aoi(line, GRID)
    assert {t.zone for t in tiles} == {32, 33}
    for t in tiles:
        assert t.footprint_wgs84().intersects(line)


def test_antimeridian_multipolygon_is_tiled_and_single_polygon_is_rejected() -> None:
    east = shapely.box(179.98, -17.02, 180.0, -17.0)
    west = shapely.box(-180.0, -17.02, -179.98, -17.0)
    tiles = tiles_for_aoi(shapely.MultiPolygon([east, west]), GRID)
    assert {(t.zone, t.hemisphere) for t in tiles} == {(60, "S"), (1, "S")}
    # zone-1 footprints are unwrapped below -180; shift them back to compare with the west part
    west_tiles = [t for t in tiles if t.zone == 1]
    east_tiles = [t for t in tiles if t.zone == 60]
    assert _uncovered(east, east_tiles) < HOLE_TOL_DEG2
    assert _uncovered(west, west_tiles) < HOLE_TOL_DEG2
    wrapped = shapely.Polygon([(179.9, 0.0), (-179.9, 0.0), (-179.9, 0.1), (179.9, 0.1)])
    with pytest.raises(InvalidInputError, match="antimeridian"):
        tiles_for_aoi(wrapped, GRID)


@pytest.mark.parametrize(
    ("aoi", "message"),
    [
        (shapely.box(10.0, 84.1, 11.0, 84.5), "polar"),
        (shapely.box(10.0, -80.5, 11.0, -79.5), "polar"),
        (shapely.box(400000.0, 5300000.0, 401000.0, 5301000.0), "WGS84"),
        (shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)]), "not a valid geometry"),
        (shapely.Polygon(), "empty"),
    ],
)
def test_bad_aois_raise_clear_errors(aoi: shapely.Geometry, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tiles_for_aoi(aoi, GRID)


# ---------------------------------------------------------------------------------------------
# shards


def _block(zone: int, col0: int, row0: int, n: int) -> list[Tile]:
    return [Tile(zone, "N", col0 + c, row0 + r, 1200.0) for r in range(n) for c in range(n)]


def test_shards_are_square_blocks_in_fixed_order() -> None:
    tiles = _block(32, 400, 4000, 8)  # 8 x 8 tiles, block-aligned (multiples of 4)
    random.Random(0).shuffle(tiles)
    out = shards(tiles, 16)
    assert [s.id for s in out] == ["s00000", "s00001", "s00002", "s00003"]
    # each shard is one 4x4 block; blocks go north to south, then west to east
    blocks = [({t.col // 4 for t in s.tiles}, {t.row // 4 for t in s.tiles}) for s in out]
    assert blocks == [({100}, {1001}), ({101}, {1001}), ({100}, {1000}), ({101}, {1000})]
    first = out[0].tiles
    assert (first[0].col, first[0].row) == (400, 4007)
    assert (first[-1].col, first[-1].row) == (403, 4004)
    assert out == shards(sorted(tiles, key=lambda t: t.id), 16)


def test_shards_positions_partial_last_shard_and_first_index() -> None:
    tiles = _block(32, 10, 10, 5) + _block(33, 10, 10, 2)  # 25 + 4 tiles
    out = shards(tiles, 8, first_index=3)
    assert [len(s.tiles) for s in out] == [8, 8, 8, 5]
    assert [s.start for s in out] == [24, 32, 40, 48]
    assert out[-1].positions() == range(48, 53)
    assert out[0].id == "s00003"
    # CRS order: every zone-32 tile comes before every zone-33 tile
    flat = [t for s in out for t in s.tiles]
    assert [t.zone for t in flat] == [32] * 25 + [33] * 4
    with pytest.raises(InvalidInputError, match="duplicates"):
        shards([*tiles, tiles[0]], 8)
    with pytest.raises(InvalidInputError, match=">= 1"):
        shards(tiles, 0)
    with pytest.raises(InvalidInputError, match="different sizes"):
        shards([Tile(32, "N", 1, 1, 1200.0), Tile(32, "N", 1, 1, 600.0)], 4)


@MEDIUM
@given(
    cells=st.sets(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=120),
    k=st.integers(1, 40),
    seed=st.integers(0, 1000),
)
def test_shard_positions_are_a_bijection(cells: set[tuple[int, int]], k: int, seed: int) -> None:
    tiles = [Tile(32, "N", c, r, 1200.0) for c, r in cells]
    random.Random(seed).shuffle(tiles)
    out = shards(tiles, k)
    positions = {t.id: p for s in out for t, p in zip(s.tiles, s.positions(), strict=True)}
    assert sorted(positions.values()) == list(range(len(tiles)))
    assert set(positions) == {t.id for t in tiles}
    assert all(len(s.tiles) == k for s in out[:-1]) and 1 <= len(out[-1].tiles) <= k
    assert all(s.start == s.index * k for s in out)
    assert out == shards(sorted(tiles, key=lambda t: t.id), k)


def test_shard_is_dask_tokenisable() -> None:
    a = Shard(0, (Tile(32, "N", 1, 1, 1200.0),), 4)
    b = Shard(0, (Tile(32, "N", 1, 2, 1200.0),), 4)
    assert tokenize(a) == tokenize(Shard(0, (Tile(32, "N", 1, 1, 1200.0),), 4))
    assert tokenize(a) != tokenize(b)


# ---------------------------------------------------------------------------------------------
# sub-pixel phase (SENSORS.md D6 and invariant 10)


def test_landsat_scene_on_a_10m_tile_grid_has_a_5m_phase() -> None:
    landsat = Affine(*[30.0, 0.0, 491985.0, 0.0, -30.0, 5353215.0])
    tile = GRID.tile(32, "N", int(491985.0 // 1200), int(5353215.0 // 1200))
    dst = tile.transform(10.0)
    # target grid origin is a multiple of the target pixel size
    assert dst.c % 10.0 == 0.0 and dst.f % 10.0 == 0.0
    dx, dy = subpixel_phase(landsat, dst)
    assert (dx, dy) == (0.5, 0.5)
    assert (dx * dst.a, dy * -dst.e) == (5.0, 5.0)
    # the S2 grid (corners on multiples of 10 m, e.g. 600000 / 6500020) has no phase
    s2 = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 6500020.0)
    s2_tile = GRID.tile(32, "N", 500, 5416)
    assert subpixel_phase(s2, s2_tile.transform(10.0)) == (0.0, 0.0)
    # and Landsat against its own 30 m tile grid is off by half a pixel too
    assert subpixel_phase(landsat, tile.transform(30.0)) == (0.5, 0.5)


@MEDIUM
@given(
    kx=st.integers(-5000, 5000),
    ky=st.integers(-5000, 5000),
    fx=st.integers(0, 99),
    fy=st.integers(0, 99),
    res=st.sampled_from([10.0, 20.0, 30.0]),
)
def test_subpixel_phase_recovers_known_offsets(
    kx: int, ky: int, fx: int, fy: int, res: float
) -> None:
    dst = Affine(res, 0.0, 600000.0, 0.0, -res, 5400000.0)
    src = Affine(
        30.0, 0.0, dst.c + (kx + fx / 100) * res, 0.0, -30.0, dst.f - (ky + fy / 100) * res
    )
    dx, dy = subpixel_phase(src, dst)
    assert dx == pytest.approx(fx / 100, abs=1e-8)
    assert dy == pytest.approx(fy / 100, abs=1e-8)
    assert 0.0 <= dx < 1.0 and 0.0 <= dy < 1.0


def test_subpixel_phase_rejects_rotated_transforms() -> None:
    north_up = Affine(10.0, 0.0, 0.0, 0.0, -10.0, 0.0)
    with pytest.raises(InvalidInputError, match="rotated"):
        subpixel_phase(Affine(10.0, 0.5, 0.0, 0.0, -10.0, 0.0), north_up)
