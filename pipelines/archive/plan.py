"""Presets and the acquisition plan of an archive: which scenes, when, on which grid.

Everything here is drawn from the seed, so the same preset and seed give the same plan. Scenes
cover the AOI in the UTM zone of their tile/path (EPSG 32632 or 32633; the AOI straddles 12 E),
on each product's real pixel lattice:

* Sentinel-2: a window of the MGRS-like 100 km tile of the zone; the window's corners lie on the
  tile's 60 m lattice (tile origin ``(E100k*100000 - 40, (N100k+1)*100000 + 20)``), so the 10, 20
  and 60 m bands nest exactly, as in a real tile. Processing baselines alternate between "05.10"
  and "02.14" on purpose (a synthetic archive mixing baselines, to exercise the +1000 DN branch).
* Landsat: 30 m pixels with corners at 15 (mod 30) m; each scene carries an injected sub-pixel
  shift (see :mod:`pipelines.archive.render` for the sign convention).
* Sentinel-1 RTC: 10 m pixels whose corners are offset by a non-multiple of 10 m.
* EnMAP: 30 m pixels with corners at 15 (mod 30) m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
from pyproj import Transformer

from pipelines.archive.render import Grid, Sky
from pipelines.archive.world import WorldSpec
from schemas.errors import InvalidInputError

__all__ = ["PRESETS", "Acquisition", "Preset", "mgrs_tile", "plan_acquisitions"]

ZONES = (32632, 32633)


@dataclass(frozen=True)
class Preset:
    """Size of an archive: the world, how many scenes per sensor, and the recipe it ships."""

    name: str
    world: WorldSpec
    n_s2: int
    n_landsat: int
    n_s1: int
    n_enmap: int
    start: date
    end: date
    scene_margin_m: float
    corine_mmu_ha: float
    recipe_bbox: tuple[float, float, float, float]


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        WorldSpec(12.0, 47.945, 4000, 3500, 800, 220, 300, 650, 0),
        4,
        3,
        3,
        2,
        date(2024, 6, 1),
        date(2024, 8, 31),
        120.0,
        5.0,
        (11.98, 47.93, 12.02, 47.96),
    ),
    "demo": Preset(
        "demo",
        WorldSpec(12.0, 47.95, 15600, 11600, 1400, 280, 800, 1500, 2),
        8,
        6,
        6,
        3,
        date(2024, 6, 1),
        date(2024, 8, 31),
        150.0,
        25.0,
        (11.9, 47.9, 12.1, 48.0),
    ),
}


@dataclass(frozen=True)
class Acquisition:
    """One scene to write.

    Attributes:
        collection: Archive collection id.
        item_id: STAC item id.
        when: Acquisition time (UTC).
        grid: The scene's nominal grid at its finest native resolution.
        sky: Clouds and shadows; ``None`` for radar.
        shift_m: Injected misregistration (dx, dy) in metres.
        sun_azimuth: Sun azimuth (degrees from north).
        sun_elevation: Sun elevation (degrees).
        props: Sensor-specific values (platform, baseline, orbit, tile, path/row, ...).
    """

    collection: str
    item_id: str
    when: datetime
    grid: Grid
    sky: Sky | None
    shift_m: tuple[float, float]
    sun_azimuth: float
    sun_elevation: float
    props: dict[str, str | int | float] = field(default_factory=dict)


_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_COL_SETS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_BANDS = "CDEFGHJKLMNPQRSTUVWX"


def mgrs_tile(epsg: int, x: float, y: float) -> tuple[str, float, float]:
    """MGRS 100 km tile name and the S2-like tile origin for a UTM point (northern zones).

    The latitude band letter is the one of the 100 km square's centre.

    Args:
        epsg: UTM north EPSG code (326zz).
        x: Easting in metres.
        y: Northing in metres.

    Returns:
        ``(name, x_origin, y_origin)``, e.g. ``("32UQU", 699960.0, 5400020.0)``.
    """
    zone = epsg - 32600
    e100k, n100k = int(x // 100_000), int(y // 100_000)
    col = _COL_SETS[(zone - 1) % 3][e100k - 1]
    row = _ROW_LETTERS[(n100k + (5 if zone % 2 == 0 else 0)) % 20]
    to_wgs = Transformer.from_crs(epsg, 4326, always_xy=True)
    _, lat = to_wgs.transform(e100k * 100_000 + 50_000, n100k * 100_000 + 50_000)
    band = _BANDS[int((lat + 80) // 8)]
    return f"{zone}{band}{col}{row}", e100k * 100_000 - 40.0, (n100k + 1) * 100_000 + 20.0


def _aoi_bounds(aoi: tuple[float, float, float, float], epsg: int) -> tuple[float, ...]:
    tr = Transformer.from_crs(4326, epsg, always_xy=True)
    lon = np.linspace(aoi[0], aoi[2], 21)
    lat = np.linspace(aoi[1], aoi[3], 21)
    lo, la = np.meshgrid(lon, lat)
    x, y = tr.transform(lo.ravel(), la.ravel())
    return (float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y)))


def _snap(
    bounds: tuple[float, ...], step: float, ox: float, oy: float, epsg: int, res: float
) -> Grid:
    """Smallest grid on the lattice ``ox + k*step`` / ``oy + k*step`` that covers ``bounds``."""
    x0 = ox + math.floor((bounds[0] - ox) / step) * step
    x1 = ox + math.ceil((bounds[2] - ox) / step) * step
    y0 = oy + math.ceil((bounds[3] - oy) / step) * step
    y1 = oy + math.floor((bounds[1] - oy) / step) * step
    return Grid(epsg, x0, y0, res, round((x1 - x0) / res), round((y0 - y1) / res))


def _days(rng: np.random.Generator, preset: Preset, n: int) -> list[date]:
    span = (preset.end - preset.start).days
    offs = np.sort(rng.choice(span + 1, size=n, replace=False))
    return [preset.start + timedelta(days=int(d)) for d in offs]


def _clouds(rng: np.random.Generator, n: int) -> list[float]:
    first = [float(rng.uniform(0.02, 0.08))]
    rest = [
        float(rng.choice([0.0, 1.0], p=[0.2, 0.8]) * rng.uniform(0.05, 0.65)) for _ in range(n - 1)
    ]
    return first + rest


def _sky(
    rng: np.random.Generator, cloud: float, az: float, elev: float, grid: Grid, cut: bool
) -> Sky:
    length = 900.0 * math.tan(math.radians(90 - elev))
    shadow = (
        round(-length * math.sin(math.radians(az)), 1),
        round(-length * math.cos(math.radians(az)), 1),
    )
    swath = None
    if cut:  # a swath edge cutting off about a fifth of the scene, from one corner
        minx, miny, maxx, maxy = grid.bounds
        a = math.radians(float(rng.uniform(100, 115)))
        nx, ny = math.cos(a), math.sin(a)
        pts = [nx * x + ny * y for x in (minx, maxx) for y in (miny, maxy)]
        c = max(pts) - 0.2 * (max(pts) - min(pts))
        swath = (round(nx, 6), round(ny, 6), round(c, 3))
    return Sky(int(rng.integers(2**31)), round(cloud, 4), shadow, swath=swath)


def _stamp(d: date, hh: int, mm: int, ss: int) -> datetime:
    return datetime(d.year, d.month, d.day, hh, mm, ss, tzinfo=UTC)


def plan_acquisitions(
    preset: Preset, seed: int, aoi: tuple[float, float, float, float]
) -> list[Acquisition]:
    """Plan every scene of an archive.

    Args:
        preset: Archive size.
        seed: Random seed.
        aoi: AOI bounds in WGS84 ``(west, south, east, north)``.

    Returns:
        Acquisitions ordered by collection, then time.

    Raises:
        InvalidInputError: If the AOI does not fit the tile lattice (never for the presets).
    """
    rng = np.random.default_rng([seed, 1717])
    margin = preset.scene_margin_m
    out: list[Acquisition] = []
    bounds = {}
    for epsg in ZONES:
        b = _aoi_bounds(aoi, epsg)
        bounds[epsg] = (b[0] - margin, b[1] - margin, b[2] + margin, b[3] + margin)

    # Sentinel-2 L2A.
    for i, (day, cloud) in enumerate(
        zip(_days(rng, preset, preset.n_s2), _clouds(rng, preset.n_s2), strict=True)
    ):
        epsg = ZONES[i % 2]
        b = bounds[epsg]
        name, tx, ty = mgrs_tile(epsg, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
        grid = _snap(b, 60.0, tx, ty, epsg, 10.0)
        if grid.x0 < tx or grid.y0 > ty or grid.bounds[2] > tx + 109_800:
            raise InvalidInputError("AOI leaves its S2 tile", where=name)
        platform = "Sentinel-2A" if (i // 2) % 2 == 0 else "Sentinel-2B"
        rel_orbit = (65, 22, 108)[i % 3]
        when = _stamp(day, 10, 20 + (i % 3) * 5, int(rng.integers(10, 59)))
        pb = "02.14" if (i + i // 2) % 2 else "05.10"
        gen = when + timedelta(hours=2, minutes=int(rng.integers(10, 50)), seconds=7)
        az, elev = float(rng.uniform(145, 160)), float(rng.uniform(55, 63))
        t = when.strftime("%Y%m%dT%H%M%S")
        gen_t = gen.strftime("%Y%m%dT%H%M%S")
        item_id = f"S2{platform[-1]}_MSIL2A_{t}_R{rel_orbit:03d}_T{name}_{gen_t}"
        sky = _sky(rng, cloud, az, elev, grid, cut=(i == 2))
        out.append(
            Acquisition(
                "sentinel-2-l2a",
                item_id,
                when,
                grid,
                sky,
                (0.0, 0.0),
                az,
                elev,
                {
                    "platform": platform,
                    "baseline": pb,
                    "rel_orbit": rel_orbit,
                    "tile": name,
                    "tile_x": tx,
                    "tile_y": ty,
                    "generated": gen.isoformat().replace("+00:00", "Z"),
                },
            )
        )

    # Landsat 8/9 Collection 2 Level-2.
    for i, (day, cloud) in enumerate(
        zip(_days(rng, preset, preset.n_landsat), _clouds(rng, preset.n_landsat), strict=True)
    ):
        epsg = ZONES[(i + 1) % 2]
        grid = _snap(bounds[epsg], 30.0, 15.0, 15.0, epsg, 30.0)
        path = 193 if epsg == 32632 else 192
        sat = 8 if (i // 2) % 2 == 0 else 9
        when = _stamp(day, 10, 1 + (i % 2) * 6, int(rng.integers(10, 59)))
        az, elev = float(rng.uniform(140, 150)), float(rng.uniform(58, 63))
        shift = tuple(
            round(float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.45)) * 30.0, 2) for _ in range(2)
        )
        processed = day + timedelta(days=int(rng.integers(6, 12)))
        ymd, doy = day.strftime("%Y%m%d"), day.timetuple().tm_yday
        item_id = f"LC0{sat}_L2SP_{path:03d}027_{ymd}_02_T1"
        props: dict[str, str | int | float] = {
            "platform": f"landsat-{sat}",
            "path": f"{path:03d}",
            "row": "027",
            "scene_id": f"LC{sat}{path:03d}027{day.year}{doy:03d}LGN00",
            "product_id": f"LC0{sat}_L2SP_{path:03d}027_{ymd}_{processed.strftime('%Y%m%d')}_02_T1",
        }
        sky = _sky(rng, cloud, az, elev, grid, cut=(i == 1))
        out.append(
            Acquisition(
                "landsat-c2-l2", item_id, when, grid, sky, (shift[0], shift[1]), az, elev, props
            )
        )

    # Sentinel-1 RTC (no clouds; corners off the 10 m lattice).
    for i, day in enumerate(_days(rng, preset, preset.n_s1)):
        epsg = ZONES[i % 2]
        off = round(float(rng.uniform(1.0, 9.0)), 1)
        grid = _snap(bounds[epsg], 10.0, off, off, epsg, 10.0)
        ascending = i % 2 == 1
        when = _stamp(day, 17 if ascending else 5, 10 + i, int(rng.integers(10, 50)))
        platform = "SENTINEL-1A"
        abs_orbit = 53498 + round((day - date(2024, 4, 19)).days * 175 / 12)
        dt_id = int(rng.integers(0x67000, 0x6FFFF))
        t0 = when.strftime("%Y%m%dT%H%M%S")
        t1 = (when + timedelta(seconds=25)).strftime("%Y%m%dT%H%M%S")
        item_id = f"S1A_IW_GRDH_1SDV_{t0}_{t1}_{abs_orbit:06d}_{dt_id:06X}_rtc"
        out.append(
            Acquisition(
                "sentinel-1-rtc",
                item_id,
                when,
                grid,
                None,
                (0.0, 0.0),
                0.0,
                0.0,
                {
                    "platform": platform,
                    "abs_orbit": abs_orbit,
                    "rel_orbit": (117, 44, 95, 168)[i % 4],
                    "orbit_state": "ascending" if ascending else "descending",
                    "datatake": dt_id,
                    "offset_m": off,
                },
            )
        )

    # EnMAP HSI L2A.
    for i, (day, cloud) in enumerate(
        zip(_days(rng, preset, preset.n_enmap), _clouds(rng, preset.n_enmap), strict=True)
    ):
        epsg = ZONES[(i + 1) % 2]
        grid = _snap(bounds[epsg], 30.0, 15.0, 15.0, epsg, 30.0)
        when = _stamp(day, 10, 44, int(rng.integers(0, 59)))
        az, elev = float(rng.uniform(150, 170)), float(rng.uniform(55, 62))
        dt = 140000 + int(rng.integers(0, 9999))
        proc = when + timedelta(hours=17, minutes=15)
        item_id = (
            f"ENMAP01-____L2A-DT{dt:010d}_{when.strftime('%Y%m%dT%H%M%S')}Z_001_V010502_"
            f"{proc.strftime('%Y%m%dT%H%M%S')}Z"
        )
        sky = _sky(rng, cloud, az, elev, grid, cut=False)
        out.append(
            Acquisition(
                "ENMAP_HSI_L2A",
                item_id,
                when,
                grid,
                sky,
                (0.0, 0.0),
                az,
                elev,
                {"platform": "enmap", "datatake": dt},
            )
        )
    return out
