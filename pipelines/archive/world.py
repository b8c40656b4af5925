"""The procedural world: land-cover parcels, a lake, rivers, roads and buildings as vectors.

The world is generated from a seed in a local transverse-Mercator frame (metres) centred on the
AOI and stored in WGS84 (coordinates rounded to 1e-7 degree, the precision OSM XML keeps). It is
the single ground truth: truth rasters, scene pixels, CORINE polygons and OSM features are all
derived from these geometries, so they agree by construction.

Burn order when rasterising (later wins): parcels (which include the lake and the wetland), then
rivers (buffered by half their width), roads (buffered by half their width), buildings. Pixels are
burned when their centre lies inside a shape (GDAL ``ALL_TOUCHED=FALSE``); 0 means outside the
world.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio import features
from shapely.geometry import LineString, Point, Polygon, box
from shapely.geometry.base import BaseGeometry

from pipelines.archive.classes import class_by_key

__all__ = ["Feature", "ProjectedWorld", "World", "WorldSpec", "generate_world"]

Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class WorldSpec:
    """Size parameters of a world (all lengths in metres).

    Attributes:
        center_lon: Longitude of the AOI centre (near a UTM zone boundary, e.g. 12.0).
        center_lat: Latitude of the AOI centre.
        width_m: AOI width.
        height_m: AOI height.
        margin_m: Extra world around the AOI (scenes may extend into it).
        parcel_m: Mean parcel (Voronoi cell) spacing.
        lake_radius_m: Lake radius.
        town_radius_m: Town radius.
        streams: Number of small streams in addition to the river.
    """

    center_lon: float
    center_lat: float
    width_m: float
    height_m: float
    margin_m: float
    parcel_m: float
    lake_radius_m: float
    town_radius_m: float
    streams: int = 0


@dataclass(frozen=True)
class Feature:
    """One vector feature of the world, in WGS84 (lon, lat).

    Attributes:
        fid: Stable feature id (unique within the world).
        kind: ``parcel``, ``river``, ``road`` or ``building``.
        class_id: Land-cover class id burned for this feature.
        geometry: Polygon (parcels, buildings) or LineString (rivers, roads).
        tags: OSM tags written for the feature.
        width_m: Width of a line feature (0 for polygons).
    """

    fid: int
    kind: str
    class_id: int
    geometry: BaseGeometry
    tags: tuple[tuple[str, str], ...]
    width_m: float = 0.0


@dataclass(frozen=True)
class World:
    """The generated world: AOI, extent and features (WGS84)."""

    seed: int
    aoi: tuple[float, float, float, float]
    extent: tuple[float, float, float, float]
    features: tuple[Feature, ...]

    def of_kind(self, kind: str) -> tuple[Feature, ...]:
        """Features of one kind, in burn order."""
        return tuple(f for f in self.features if f.kind == kind)

    def project(self, epsg: int) -> ProjectedWorld:
        """Project the world to a CRS (line features buffered there) for rasterising."""
        return ProjectedWorld(self, epsg)

    def rasterize(self, epsg: int, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
        """Rasterise the class ids on a grid; see :meth:`ProjectedWorld.rasterize`."""
        return self.project(epsg).rasterize(transform, shape)


class ProjectedWorld:
    """A world projected to one CRS, ready to be rasterised many times."""

    def __init__(self, world: World, epsg: int) -> None:
        self.world = world
        self.epsg = epsg

    @cached_property
    def shapes(self) -> list[tuple[BaseGeometry, int]]:
        """``(geometry, class id)`` pairs in burn order, in the projected CRS."""
        tr = Transformer.from_crs(4326, self.epsg, always_xy=True)
        out: list[tuple[BaseGeometry, int]] = []
        for kind in ("parcel", "river", "road", "building"):
            for feat in self.world.of_kind(kind):
                geom = _apply(feat.geometry, tr.transform)
                if feat.width_m > 0:
                    geom = geom.buffer(feat.width_m / 2.0, cap_style="flat", quad_segs=4)
                out.append((geom, feat.class_id))
        return out

    def rasterize(self, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
        """Burn the class ids onto a grid.

        Args:
            transform: Affine transform of the grid's upper-left corner.
            shape: ``(height, width)`` in pixels.

        Returns:
            Class ids, dims ``(y, x)``, uint8; 0 outside the world (no nodata value otherwise).
        """
        out: np.ndarray = features.rasterize(
            self.shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8"
        )
        return out


def _apply(geom: BaseGeometry, func: Callable[..., tuple[np.ndarray, np.ndarray]]) -> BaseGeometry:
    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = func(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, fn)


def _field(rng: np.random.Generator, scale_m: float, n: int = 6) -> Field:
    """A smooth random field (sum of cosines, wavelengths around ``scale_m``), values ~[-1, 1]."""
    angles = rng.uniform(0, 2 * math.pi, n)
    lengths = scale_m * rng.uniform(0.6, 1.6, n)
    phases = rng.uniform(0, 2 * math.pi, n)
    kx = 2 * math.pi * np.cos(angles) / lengths
    ky = 2 * math.pi * np.sin(angles) / lengths

    def f(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        acc = np.zeros(np.broadcast(x, y).shape)
        for i in range(n):
            acc += np.cos(kx[i] * x + ky[i] * y + phases[i])
        return np.asarray(acc / math.sqrt(n / 2.0))

    return f


def _sinuous_line(
    rng: np.random.Generator, x0: float, x1: float, y0: float, amp: float, wave: float, step: float
) -> np.ndarray:
    xs = np.arange(x0, x1 + step, step)
    phase, phase2 = rng.uniform(0, 2 * math.pi, 2)
    slope = rng.uniform(-0.15, 0.15)
    ys = (
        y0
        + slope * (xs - x0)
        + amp * np.sin(2 * math.pi * xs / wave + phase)
        + 0.35 * amp * np.sin(2 * math.pi * xs / (wave / 2.7) + phase2)
    )
    return np.column_stack([xs, ys])


def _tags(key: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(t for t in class_by_key(key).osm_tags if t[1] != "*") + extra


def generate_world(spec: WorldSpec, seed: int) -> World:
    """Generate the world deterministically from a seed.

    Args:
        spec: Size parameters.
        seed: Random seed; the same seed and spec give the same world.

    Returns:
        The :class:`World` with parcels (every point of the extent in exactly one parcel),
        rivers, roads and buildings.
    """
    rng = np.random.default_rng([seed, 4242])
    local = CRS.from_proj4(
        f"+proj=tmerc +lat_0={spec.center_lat} +lon_0={spec.center_lon} +k=1 +x_0=0 +y_0=0 "
        "+ellps=WGS84 +units=m +no_defs"
    )
    to_wgs = Transformer.from_crs(local, 4326, always_xy=True)
    hw, hh = spec.width_m / 2 + spec.margin_m, spec.height_m / 2 + spec.margin_m
    frame = box(-hw, -hh, hw, hh)

    # Parcels: Voronoi cells of a jittered grid.
    s = spec.parcel_m
    gx = np.arange(-hw, hw, s) + s / 2
    gy = np.arange(-hh, hh, s) + s / 2
    px, py = np.meshgrid(gx, gy)
    px = px + rng.uniform(-0.35, 0.35, px.shape) * s
    py = py + rng.uniform(-0.35, 0.35, py.shape) * s
    pts = shapely.points(px.ravel(), py.ravel())
    cells_gc = shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=frame)
    cells = [c.intersection(frame) for c in shapely.get_parts(cells_gc)]
    cells = [c for c in cells if isinstance(c, Polygon) and c.area > 1.0]
    cells.sort(key=lambda c: (round(c.centroid.y, 3), round(c.centroid.x, 3)))
    cx = np.array([c.centroid.x for c in cells])
    cy = np.array([c.centroid.y for c in cells])

    inner_w, inner_h = spec.width_m / 2, spec.height_m / 2
    lake_c = np.array([rng.uniform(-0.5, 0.5) * inner_w, rng.uniform(-0.5, 0.5) * inner_h])
    town_c = -lake_c * 0.8 + rng.uniform(-0.1, 0.1, 2) * np.array([inner_w, inner_h])
    wet_dir = rng.uniform(0, 2 * math.pi)
    f_forest, f_kind, f_crop, f_rock = (_field(rng, 6 * s) for _ in range(4))
    rock_corner = np.array([rng.choice([-1, 1]) * inner_w, rng.choice([-1, 1]) * inner_h])

    d_lake = np.hypot(cx - lake_c[0], cy - lake_c[1])
    lake_r = spec.lake_radius_m * (1 + 0.25 * f_kind(cx, cy))
    d_town = np.hypot(cx - town_c[0], cy - town_c[1])
    town_angle = np.arctan2(cy - town_c[1], cx - town_c[0])
    d_rock = np.hypot(cx - rock_corner[0], cy - rock_corner[1])
    side = np.cos(np.arctan2(cy - lake_c[1], cx - lake_c[0]) - wet_dir)

    keys: list[str] = []
    crop_noise = rng.uniform(-0.6, 0.6, len(cells))
    for i in range(len(cells)):
        if d_lake[i] < lake_r[i]:
            key = "lake"
        elif d_lake[i] < lake_r[i] + 1.6 * s and side[i] > -0.2:
            key = "wetland"
        elif d_town[i] < spec.town_radius_m:
            key = "industrial" if (0.0 < town_angle[i] < 1.2 and d_town[i] > 2 * s) else "urban"
        elif d_rock[i] < 0.9 * spec.town_radius_m + 2 * s * (1 + f_rock(cx[i], cy[i])):
            key = "bare_rock"
        elif f_forest(cx[i], cy[i]) > 0.35:
            key = "broadleaf" if f_kind(cx[i], cy[i]) > 0 else "conifer"
        else:
            key = "arable" if f_crop(cx[i], cy[i]) + crop_noise[i] > 0 else "pasture"
        keys.append(key)

    fid = 1
    feats: list[Feature] = []

    def add(
        kind: str,
        key: str,
        geom: BaseGeometry,
        tags: tuple[tuple[str, str], ...],
        width: float = 0.0,
    ) -> None:
        nonlocal fid
        wgs = _apply(geom, to_wgs.transform)
        wgs = shapely.transform(wgs, lambda xy: np.round(xy, 7))
        feats.append(Feature(fid, kind, class_by_key(key).id, wgs, tags, width))
        fid += 1

    for cell, key in zip(cells, keys, strict=True):
        add("parcel", key, cell, _tags(key))

    # Rivers: one river west to east through the lake's latitude band, plus optional streams.
    river_y = lake_c[1] + rng.uniform(-0.3, 0.3) * spec.lake_radius_m
    river = _sinuous_line(rng, -hw - s, hw + s, river_y, 0.6 * s, 8 * s, 20.0)
    river_w = float(round(rng.uniform(18, 26)))
    add(
        "river",
        "river",
        LineString(river),
        _tags("river", ("name", "Forgebach"), ("width", f"{river_w:g}")),
        river_w,
    )
    for k in range(spec.streams):
        y0 = rng.uniform(-inner_h, inner_h)
        line = _sinuous_line(rng, -hw - s, rng.uniform(0, hw), y0, 0.4 * s, 5 * s, 20.0)
        add(
            "river",
            "river",
            LineString(line),
            (("waterway", "stream"), ("name", f"Bach {k + 1}"), ("width", "6")),
            6.0,
        )

    # Roads: a motorway across the world, a primary and a secondary through the town, streets.
    roads: list[BaseGeometry] = []
    ang = rng.uniform(0.2, 0.6)
    far = 3 * (hw + hh)
    road_specs = [
        ("motorway", 26.0, ang + math.pi / 2 + 0.5, rng.uniform(0.3, 0.5) * inner_h),
        ("primary", 12.0, ang, 0.0),
        ("secondary", 8.0, ang + math.pi / 2, 0.0),
    ]
    for hwy, width, a, offset in road_specs:
        c = town_c + offset * np.array([-math.sin(a), math.cos(a)])
        d = np.array([math.cos(a), math.sin(a)])
        t = np.linspace(-far, far, 41)
        xy = c[None, :] + t[:, None] * d[None, :]
        wiggle = 0.15 * s * np.sin(t / (5 * s) + rng.uniform(0, 6.28))
        xy += wiggle[:, None] * np.array([-d[1], d[0]])[None, :]
        line = LineString(xy).intersection(frame.buffer(s))
        roads.append(line.buffer(width / 2 + 3))
        add("road", "road", line, (("highway", hwy), ("width", f"{width:g}")), width)
    town = Point(*town_c).buffer(spec.town_radius_m, quad_segs=16)
    street_step = 160.0
    for k in np.arange(-spec.town_radius_m, spec.town_radius_m + 1, street_step).tolist():
        for horizontal in (True, False):
            a = ang if horizontal else ang + math.pi / 2
            d = np.array([math.cos(a), math.sin(a)])
            n = np.array([-d[1], d[0]])
            c = town_c + k * n
            line = LineString([c - far * d, c + far * d]).intersection(town)
            if line.is_empty or line.length < 50 or not isinstance(line, LineString):
                continue
            roads.append(line.buffer(6.0))
            add("road", "road", line, (("highway", "residential"), ("width", "6")), 6.0)
    road_zone = shapely.union_all(roads)

    # Buildings: rectangles in urban and industrial parcels, clear of roads.
    for cell, key in zip(cells, keys, strict=True):
        if key not in ("urban", "industrial"):
            continue
        big = key == "industrial"
        step = 90.0 if big else 30.0
        inner = cell.buffer(-4.0)
        minx, miny, maxx, maxy = cell.bounds
        for bx in np.arange(minx + step / 2, maxx, step):
            for by in np.arange(miny + step / 2, maxy, step):
                if rng.uniform() < (0.2 if big else 0.35):
                    continue
                w, h = (
                    (rng.uniform(40, 70), rng.uniform(30, 60))
                    if big
                    else (rng.uniform(10, 18), rng.uniform(9, 14))
                )
                rect = box(bx - w / 2, by - h / 2, bx + w / 2, by + h / 2)
                if inner.contains(rect) and not road_zone.intersects(rect):
                    btype = "industrial" if big else ("house" if w * h < 180 else "residential")
                    add("building", "building", rect, (("building", btype),))

    aoi_local = box(-inner_w, -inner_h, inner_w, inner_h)
    aoi = _apply(aoi_local, to_wgs.transform).bounds
    extent = _apply(frame, to_wgs.transform).bounds
    rnd = tuple(round(v, 7) for v in aoi)
    rext = tuple(round(v, 7) for v in extent)
    return World(
        seed, (rnd[0], rnd[1], rnd[2], rnd[3]), (rext[0], rext[1], rext[2], rext[3]), tuple(feats)
    )
