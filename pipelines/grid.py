"""The deterministic UTM tile grid: tiles, their ids and transforms, AOI tiling, and shards.

Grid definition
    Tiles are squares of ``tile_size`` metres in a UTM CRS (EPSG 326zz north, 327zz south with
    the 10,000,000 m false northing, as Sentinel-2 uses; regular 6-degree zones, without the
    Norway/Svalbard exceptions). A tile's origin is snapped to multiples of the tile size:
    ``bounds = (col*T, row*T, (col+1)*T, (row+1)*T)``. Because every resolution divides ``T``,
    every pixel grid is aligned to its own resolution (SENSORS.md invariant 10).

Tile ids
    ``<zone:02d><N|S>-<col:04d>-<row:04d>``, e.g. ``32N-0345-5670`` = zone 32 north, easting
    index 345, northing index 5670 (origin ``(345*T, 5670*T)``). The indexes are zero-padded to
    at least 4 digits and grow wider for small tiles. The id does not name ``T``, so parsing it
    back needs it: :meth:`Tile.from_id`.

Which tiles exist (zone seams)
    A tile of zone ``z`` is used where it covers ground of zone ``z``'s 6-degree strip (and of its
    hemisphere). Away from the seams this is the zone of the tile centre. Exactly at a seam,
    keeping only the tiles whose centre lies in their own zone leaves holes: the two zones' grids
    have unrelated phases, so the last tile kept on one side can end before the first tile kept
    on the other begins (``tests/unit/test_grid.py`` shows one). eoforge therefore keeps, on both
    sides, the tiles that straddle the seam: tiles of neighbouring zones overlap by less than one
    tile width along a seam, and the AOI is covered without holes. The equator is handled the
    same way (326zz tiles north of it, 327zz tiles south of it, overlapping by less than one
    tile where ``T`` does not divide 10,000,000 m).

    A polygonal AOI must reach more than 5 cm into a tile for it to count (thinner overlaps
    are below the accuracy of projected AOI edges). Apart from that margin the rule does not
    depend on the rest of the AOI: ``tiles_for_aoi(A | B) == tiles_for_aoi(A) |
    tiles_for_aoi(B)``, and a tile id names the same pixels in every build.

Limits
    UTM is used from 80 S to 84 N; a polar AOI raises :class:`InvalidInputError`. An AOI that
    crosses the antimeridian must be given as a MultiPolygon split at +/-180 degrees (RFC 7946);
    a single polygon wider than 180 degrees of longitude is rejected.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from schemas.cube import pixels_per_tile
from schemas.errors import InvalidInputError

__all__ = [
    "SOUTH_FALSE_NORTHING",
    "Hemisphere",
    "Shard",
    "Tile",
    "TileGrid",
    "shards",
    "subpixel_phase",
    "tiles_for_aoi",
    "utm_epsg",
    "utm_zone",
]

Hemisphere = Literal["N", "S"]

#: False northing of southern-hemisphere UTM (EPSG 327zz).
SOUTH_FALSE_NORTHING = 10_000_000.0
#: Latitude limits of UTM (beyond them the polar UPS grids apply).
LAT_MIN, LAT_MAX = -80.0, 84.0
#: Longitude step (degrees) when densifying an AOI before projecting it (about 1 km).
_AOI_SEGMENT_DEG = 0.01
#: Footprint edges are densified to vertices at most this far apart (metres); the chord error is
#: then far below 1 m (it grows with the square of the spacing: ~2 cm at 1 km).
_FOOTPRINT_SEGMENT_M = 1000.0
#: A polygonal AOI must reach this far (metres) into a tile for the tile to be kept; thinner
#: overlaps are below the accuracy of the projected AOI edges (a few millimetres).
_MIN_DEPTH_M = 0.05
#: Tile boxes tested per vectorised batch (bounds memory for continental AOIs).
_BATCH = 200_000

_ID_RE = re.compile(r"^(\d{2})([NS])-(\d{4,})-(\d{4,})$")
_local = threading.local()


def utm_zone(lon: float) -> int:
    """The regular 6-degree UTM zone (1-60) of a longitude; 180 E belongs to zone 60."""
    return min(60, max(1, math.floor((lon + 180.0) / 6.0) + 1))


def utm_epsg(zone: int, hemisphere: Hemisphere) -> int:
    """EPSG code of a WGS84 UTM zone: 326zz north, 327zz south."""
    return (32600 if hemisphere == "N" else 32700) + zone


def _zone_lon_range(zone: int) -> tuple[float, float]:
    west = -180.0 + 6.0 * (zone - 1)
    return west, west + 6.0


def _transformer(src: int, dst: int) -> Transformer:
    # pyproj transformers must not be shared across threads (Dask workers run several): one
    # cache per thread.
    cache: dict[tuple[int, int], Transformer] = _local.__dict__.setdefault("cache", {})
    found = cache.get((src, dst))
    if found is None:
        found = cache[(src, dst)] = Transformer.from_crs(src, dst, always_xy=True)
    return found


def _reproject(geom: BaseGeometry, src: int, dst: int) -> BaseGeometry:
    tr = _transformer(src, dst)

    def xy(coords: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, xy)


@dataclass(frozen=True, slots=True)
class Tile:
    """One square tile of the grid (see the module docstring for the id format).

    Attributes:
        zone: UTM zone, 1-60.
        hemisphere: ``"N"`` (EPSG 326zz) or ``"S"`` (EPSG 327zz).
        col: Easting index: ``minx = col * tile_size_m``.
        row: Northing index: ``miny = row * tile_size_m`` (false northing included in the south).
        tile_size_m: Edge length in metres.
    """

    zone: int
    hemisphere: Hemisphere
    col: int
    row: int
    tile_size_m: float

    def __post_init__(self) -> None:
        if not 1 <= self.zone <= 60:
            raise InvalidInputError(f"UTM zone {self.zone} is outside 1-60")
        if self.hemisphere not in ("N", "S"):
            raise InvalidInputError(f"hemisphere {self.hemisphere!r} is not 'N' or 'S'")
        if self.col < 0 or self.row < 0:
            raise InvalidInputError(f"tile indexes must be >= 0, got col={self.col} row={self.row}")
        if not (math.isfinite(self.tile_size_m) and self.tile_size_m > 0):
            raise InvalidInputError(f"tile size must be positive, got {self.tile_size_m!r}")

    @property
    def id(self) -> str:
        """Stable id, e.g. ``32N-0345-5670``."""
        return f"{self.zone:02d}{self.hemisphere}-{self.col:04d}-{self.row:04d}"

    @property
    def epsg(self) -> int:
        """EPSG code of the tile's UTM CRS."""
        return utm_epsg(self.zone, self.hemisphere)

    @property
    def crs(self) -> str:
        """``"EPSG:<code>"``."""
        return f"EPSG:{self.epsg}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in metres of the tile's CRS."""
        t = self.tile_size_m
        return (self.col * t, self.row * t, (self.col + 1) * t, (self.row + 1) * t)

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """``(epsg, -row, col)``: by CRS, then north to south, then west to east."""
        return (self.epsg, -self.row, self.col)

    @classmethod
    def from_id(cls, tile_id: str, tile_size_m: float) -> Tile:
        """Parse an id made by :attr:`id`.

        Raises:
            InvalidInputError: The id does not have the ``32N-0345-5670`` form.
        """
        match = _ID_RE.match(tile_id)
        if match is None:
            raise InvalidInputError(
                f"{tile_id!r} is not a tile id",
                fix="use the form <zone:2 digits><N|S>-<col:4+ digits>-<row:4+ digits>, "
                "e.g. 32N-0345-5670",
            )
        zone, hemi, col, row = match.groups()
        hemisphere: Hemisphere = "N" if hemi == "N" else "S"
        return cls(int(zone), hemisphere, int(col), int(row), float(tile_size_m))

    def shape(self, resolution_m: float) -> tuple[int, int]:
        """``(ny, nx)`` pixels at ``resolution_m``.

        Raises:
            InvalidInputError: The resolution does not divide the tile size.
        """
        n = pixels_per_tile(self.tile_size_m, resolution_m)
        return (n, n)

    def transform(self, resolution_m: float) -> Affine:
        """North-up affine transform at ``resolution_m``, top-left corner at ``(minx, maxy)``.

        Raises:
            InvalidInputError: The resolution does not divide the tile size.
        """
        pixels_per_tile(self.tile_size_m, resolution_m)
        minx, _, _, maxy = self.bounds
        return Affine(resolution_m, 0.0, minx, 0.0, -resolution_m, maxy)

    def footprint_wgs84(self) -> Polygon:
        """The tile outline in WGS84 lon/lat, edges densified so it is exact to well under 1 m.

        Longitudes are unwrapped around the zone's central meridian, so a zone-60 (zone-1) tile
        that straddles the antimeridian has longitudes above 180 (below -180).
        """
        n_seg = max(1, math.ceil(self.tile_size_m / _FOOTPRINT_SEGMENT_M))
        minx, miny, maxx, maxy = self.bounds
        t = np.linspace(0.0, 1.0, n_seg + 1)[:-1]
        xs = np.concatenate(
            [minx + t * (maxx - minx), np.full(n_seg, maxx), maxx - t * (maxx - minx),
             np.full(n_seg, minx)]
        )  # fmt: skip
        ys = np.concatenate(
            [np.full(n_seg, miny), miny + t * (maxy - miny), np.full(n_seg, maxy),
             maxy - t * (maxy - miny)]
        )  # fmt: skip
        lon, lat = _transformer(self.epsg, 4326).transform(xs, ys)
        central = -183.0 + 6.0 * self.zone
        lon = central + (np.asarray(lon) - central + 180.0) % 360.0 - 180.0
        return Polygon(np.column_stack([lon, lat]))

    def centre_lonlat(self) -> tuple[float, float]:
        """``(lon, lat)`` of the tile centre."""
        minx, miny, maxx, maxy = self.bounds
        lon, lat = _transformer(self.epsg, 4326).transform((minx + maxx) / 2, (miny + maxy) / 2)
        return float(lon), float(lat)

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("eoforge.Tile", self.zone, self.hemisphere, self.col, self.row, self.tile_size_m)


@dataclass(frozen=True, slots=True)
class TileGrid:
    """Tile size and the resolutions that must nest in it.

    Attributes:
        tile_size_m: Tile edge length in metres.
        resolutions_m: Every pixel size the cube uses; each must divide ``tile_size_m``.

    Raises:
        InvalidInputError: A resolution does not divide the tile size, or none is given.
    """

    tile_size_m: float
    resolutions_m: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.resolutions_m:
            raise InvalidInputError(
                "a tile grid needs at least one resolution", fix="give e.g. (10.0,)"
            )
        for res in self.resolutions_m:
            pixels_per_tile(self.tile_size_m, res)

    def tile(self, zone: int, hemisphere: Hemisphere, col: int, row: int) -> Tile:
        """The tile at grid indexes ``(col, row)`` of a zone."""
        return Tile(zone, hemisphere, col, row, float(self.tile_size_m))

    def tile_from_id(self, tile_id: str) -> Tile:
        """:meth:`Tile.from_id` with this grid's tile size."""
        return Tile.from_id(tile_id, self.tile_size_m)

    def tile_at(self, lon: float, lat: float) -> Tile:
        """The tile of the point's own zone and hemisphere that contains it.

        Raises:
            InvalidInputError: The point is outside the UTM latitude range.
        """
        _check_lat(lat, lat)
        zone = utm_zone(lon)
        hemisphere: Hemisphere = "N" if lat >= 0 else "S"
        epsg = utm_epsg(zone, hemisphere)
        x, y = _transformer(4326, epsg).transform(lon, lat)
        t = self.tile_size_m
        return self.tile(zone, hemisphere, math.floor(x / t), math.floor(y / t))

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return ("eoforge.TileGrid", self.tile_size_m, self.resolutions_m)


def _check_lat(miny: float, maxy: float) -> None:
    if miny < LAT_MIN or maxy > LAT_MAX:
        raise InvalidInputError(
            f"the AOI reaches latitude {miny if miny < LAT_MIN else maxy:g}, outside UTM's "
            f"{LAT_MIN:g} to {LAT_MAX:g} degrees",
            fix="cut the AOI to 80 S - 84 N; polar regions need a polar (UPS) grid, which eoforge "
            "does not provide",
        )


def _validated_aoi(aoi: BaseGeometry) -> BaseGeometry:
    if not isinstance(aoi, BaseGeometry):
        raise InvalidInputError(
            f"the AOI must be a shapely geometry, got {type(aoi).__name__}",
            fix="pass shapely.geometry.shape(geojson)",
        )
    if aoi.is_empty:
        raise InvalidInputError("the AOI is empty", fix="give a geometry with an area")
    if not aoi.is_valid:
        raise InvalidInputError(
            f"the AOI is not a valid geometry ({shapely.is_valid_reason(aoi)})",
            fix="repair it, e.g. with shapely.make_valid",
        )
    minx, miny, maxx, maxy = aoi.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise InvalidInputError(
            f"AOI bounds {aoi.bounds} are not WGS84 longitude/latitude",
            fix="give the AOI in EPSG:4326 degrees (lon -180..180, lat -90..90)",
        )
    _check_lat(miny, maxy)
    for part in shapely.get_parts(aoi):
        pminx, _, pmaxx, _ = part.bounds
        if pmaxx - pminx > 180:
            raise InvalidInputError(
                f"an AOI part spans {pmaxx - pminx:g} degrees of longitude, which reads as a "
                "polygon crossing the antimeridian",
                fix="split it at +/-180 degrees into a MultiPolygon (RFC 7946 section 3.1.9)",
            )
    return aoi


def _zone_hemispheres(aoi: BaseGeometry) -> list[tuple[int, Hemisphere]]:
    found: set[tuple[int, Hemisphere]] = set()
    for part in shapely.get_parts(aoi):
        minx, miny, maxx, maxy = part.bounds
        hemis: list[Hemisphere] = []
        if maxy >= 0:
            hemis.append("N")
        if miny < 0:
            hemis.append("S")
        for zone in range(utm_zone(minx), utm_zone(maxx) + 1):
            found.update((zone, h) for h in hemis)
    return sorted(found)


def _core(projected: BaseGeometry) -> BaseGeometry:
    """The projected polygonal AOI part shrunk by :data:`_MIN_DEPTH_M` (made valid first).

    Edges densified in lon/lat and then projected are chords of the true curves, off by a few
    millimetres; where two such edges nearly coincide (an AOI vertex a hair across a seam) they
    leave artefact slivers that are long but not wide. Shrinking removes every part narrower
    than twice the depth, so whether a tile is kept does not hinge on rounding.
    """
    if not projected.is_valid:
        projected = shapely.make_valid(projected)
    polygons = [p for p in shapely.get_parts(projected) if p.area > 0]
    if not polygons:
        return shapely.Polygon()
    return shapely.buffer(shapely.union_all(polygons), -_MIN_DEPTH_M)


def _tiles_meeting(part: BaseGeometry, zone: int, hemisphere: Hemisphere, t: float) -> list[Tile]:
    """Tiles of one zone whose closed box meets ``part`` (projected into the zone's CRS)."""
    minx, miny, maxx, maxy = part.bounds
    c0, c1 = max(0, math.floor(minx / t)), math.floor(maxx / t)
    r0, r1 = max(0, math.floor(miny / t)), math.floor(maxy / t)
    if hemisphere == "S":
        # The top southern row is the one that starts below the equator.
        r1 = min(r1, math.ceil(SOUTH_FALSE_NORTHING / t) - 1)
    if c1 < c0 or r1 < r0:
        return []
    shapely.prepare(part)
    cols = np.arange(c0, c1 + 1)
    rows_per_batch = max(1, _BATCH // cols.size)
    out: list[Tile] = []
    for start in range(r0, r1 + 1, rows_per_batch):
        rows = np.arange(start, min(r1, start + rows_per_batch - 1) + 1)
        cc, rr = (a.ravel() for a in np.meshgrid(cols, rows))
        hit = shapely.intersects(part, shapely.box(cc * t, rr * t, (cc + 1) * t, (rr + 1) * t))
        out.extend(
            Tile(zone, hemisphere, c, r, t)
            for c, r in zip(cc[hit].tolist(), rr[hit].tolist(), strict=True)
        )
    return out


def tiles_for_aoi(aoi: BaseGeometry, grid: TileGrid) -> list[Tile]:
    """All tiles of ``grid`` that cover part of the AOI (module docstring: seams, limits).

    A tile is returned iff the part of a polygonal AOI that lies in the tile's own zone strip and
    hemisphere reaches more than 5 cm into it (overlaps thinner than that are below the accuracy
    of the projected AOI edges; the AOI is still covered up to such 5 cm margins). For points and
    lines: iff the tile touches that part. An AOI thinner than 10 cm everywhere gets the tile
    under its representative point.

    Args:
        aoi: Geometry in WGS84 lon/lat (EPSG:4326, x = lon); polygons, lines and points, or a
            MultiPolygon split at the antimeridian.
        grid: The tile grid.

    Returns:
        Distinct tiles sorted by :attr:`Tile.sort_key` (EPSG, then north to south, then west
        to east). Their footprints cover the AOI without holes.

    Raises:
        InvalidInputError: Empty/invalid AOI, coordinates not in degrees, latitude beyond 80 S /
            84 N, or a single polygon wider than 180 degrees (antimeridian).
    """
    geom = _validated_aoi(aoi)
    parts = shapely.get_parts(geom)
    areal = [p for p in parts if p.area > 0]
    other = [p for p in parts if p.area == 0]
    groups: list[tuple[BaseGeometry, bool]] = []
    if areal:
        groups.append((shapely.union_all(areal), True))
    if other:
        groups.append((shapely.union_all(other), False))
    t = float(grid.tile_size_m)
    found: set[Tile] = set()
    for zone, hemisphere in _zone_hemispheres(geom):
        west, east = _zone_lon_range(zone)
        lat0, lat1 = (0.0, LAT_MAX) if hemisphere == "N" else (LAT_MIN, 0.0)
        domain = shapely.box(west, lat0, east, lat1)
        epsg = utm_epsg(zone, hemisphere)
        for g, is_areal in groups:
            part = shapely.intersection(g, domain)
            if is_areal:
                # Drop the lines/points where the AOI only touches the domain's edge.
                part = shapely.union_all([p for p in shapely.get_parts(part) if p.area > 0])
            if part.is_empty:
                continue
            projected = _reproject(shapely.segmentize(part, _AOI_SEGMENT_DEG), 4326, epsg)
            if is_areal:
                projected = _core(projected)
                if projected.is_empty:
                    continue
            found.update(_tiles_meeting(projected, zone, hemisphere, t))
    if not found and areal:
        # An AOI narrower than 2 * _MIN_DEPTH_M everywhere: the tile under its middle.
        lon, lat = shapely.get_coordinates(geom.representative_point())[0]
        found.add(grid.tile_at(float(lon), float(lat)))
    return sorted(found, key=lambda tile: tile.sort_key)


@dataclass(frozen=True, slots=True)
class Shard:
    """``K`` consecutive cube positions and the tiles written there by one build task.

    Attributes:
        index: Shard index along the tile axis.
        tiles: The tiles, in cube order.
        tiles_per_shard: ``K``.
    """

    index: int
    tiles: tuple[Tile, ...]
    tiles_per_shard: int

    @property
    def id(self) -> str:
        """``s00000``-style id (zero-padded to 5 digits, wider past 99,999 shards)."""
        return f"s{self.index:05d}"

    @property
    def start(self) -> int:
        """Cube position of the first tile: ``index * K``."""
        return self.index * self.tiles_per_shard

    def positions(self) -> range:
        """Cube positions of :attr:`tiles`, in order."""
        return range(self.start, self.start + len(self.tiles))

    def __dask_tokenize__(self) -> tuple[object, ...]:
        return (
            "eoforge.Shard",
            self.index,
            self.tiles_per_shard,
            tuple(t.__dask_tokenize__() for t in self.tiles),
        )


def _shard_order_key(tile: Tile, block: int) -> tuple[int, ...]:
    return (tile.epsg, -(tile.row // block), tile.col // block, -tile.row, tile.col)


def shards(tiles: Sequence[Tile], tiles_per_shard: int, *, first_index: int = 0) -> list[Shard]:
    """Group tiles into shards of ``K`` cube positions, deterministically and spatially compact.

    Tiles are ordered by EPSG, then in square blocks of ``b x b`` grid cells (``b =
    floor(sqrt(K))``, blocks north to south then west to east, fixed to the grid so the order
    does not depend on the AOI), then north to south and west to east inside a block; the order
    is cut into runs of ``K``. A full block is then one shard when ``K`` is a square. Tile ``i``
    of shard ``s`` sits at cube position ``s*K + i``, so shard boundaries are Zarr shard
    boundaries along the tile axis. The last shard may hold fewer than ``K`` tiles; nothing pads
    it (the tile axis length need not be a multiple of ``K``).

    Args:
        tiles: Distinct tiles of one tile size, in any order.
        tiles_per_shard: ``K`` >= 1.
        first_index: Index of the first shard (``CubeLayout.first_free_shard`` when appending).

    Returns:
        Shards with indexes ``first_index, first_index + 1, ...``.

    Raises:
        InvalidInputError: ``K < 1``, ``first_index < 0``, duplicate tiles or mixed tile sizes.
    """
    if tiles_per_shard < 1:
        raise InvalidInputError(f"tiles_per_shard must be >= 1, got {tiles_per_shard}")
    if first_index < 0:
        raise InvalidInputError(f"first_index must be >= 0, got {first_index}")
    if len({t.tile_size_m for t in tiles}) > 1:
        raise InvalidInputError("tiles of different sizes cannot share a cube")
    if len({t.id for t in tiles}) != len(tiles):
        raise InvalidInputError("the tile list holds duplicates", fix="pass each tile once")
    block = max(1, math.isqrt(tiles_per_shard))
    ordered = sorted(tiles, key=lambda tile: _shard_order_key(tile, block))
    return [
        Shard(first_index + i, tuple(ordered[s : s + tiles_per_shard]), tiles_per_shard)
        for i, s in enumerate(range(0, len(ordered), tiles_per_shard))
    ]


def subpixel_phase(src_transform: Affine, dst_transform: Affine) -> tuple[float, float]:
    """Offset of a source pixel grid against a destination grid, in destination pixels.

    Example: a Landsat scene (origin 491985, 5353215; corners = 15 mod 30 m) against a 10 m
    grid snapped to multiples of 10 m gives ``(0.5, 0.5)``: a 5 m phase (SENSORS.md D6).

    Args:
        src_transform: North-up affine of the source grid.
        dst_transform: North-up affine of the destination grid.

    Returns:
        ``(dx_px, dy_px)``, each in ``[0, 1)``: where the source origin falls inside a
        destination pixel along x (east) and y (down). ``(0, 0)`` means the source corners lie
        on destination pixel corners.

    Raises:
        InvalidInputError: A transform is rotated or sheared.
    """
    for name, tr in (("source", src_transform), ("destination", dst_transform)):
        if tr.b != 0 or tr.d != 0:
            raise InvalidInputError(
                f"{name} transform {tuple(tr)[:6]} is rotated or sheared",
                fix="give north-up transforms",
            )

    def phase(offset: float, step: float) -> float:
        value = offset / step
        frac = value - math.floor(value)
        # Round away float noise so a whole number of pixels reads 0, not 0.9999999.
        frac = round(frac, 9)
        return 0.0 if frac >= 1.0 else frac

    return (
        phase(src_transform.c - dst_transform.c, dst_transform.a),
        phase(src_transform.f - dst_transform.f, dst_transform.e),
    )
