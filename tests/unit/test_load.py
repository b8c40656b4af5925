"""The ``load`` stage on tiny real COGs and hand-made STAC items (tiles of 120 x 120 px).

Pixel values are value-encoded (``4 * col + row`` and friends) so a shift of one pixel, a
half-pixel grid error or a wrong band shows up as a wrong number, not only a wrong shape.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.warp
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from pipelines._warp import (
    _ReadConfig,
    _with_retries,
    classify_io_error,
    redact_href,
    warp_whole,
    warp_window,
)
from pipelines.archive.cog import write_cog
from pipelines.grid import Tile
from pipelines.load import (
    AssetCorruptError,
    AssetMissingError,
    BrokenAssetError,
    RasterioBackend,
    StackstacBackend,
    WarpRequest,
    load_sensor,
    resampling_for,
    tile_grid,
)
from schemas.errors import InvalidInputError, TransientError
from schemas.profiles import get_profile
from schemas.radiometry import LANDSAT_SR_OFFSET, LANDSAT_SR_SCALE
from schemas.sensors import Provider, SensorId

EPSG = 32632
#: 1200 m tile = 120 px at 10 m, 40 px at 30 m; origin (480000, 5340000), top 5341200.
TILE = Tile(32, "N", 400, 4450, 1200.0)
MINX, MINY, MAXX, MAXY = TILE.bounds

S2 = get_profile(SensorId.SENTINEL_2_L2A, Provider.ARCHIVE)
LANDSAT = get_profile(SensorId.LANDSAT_C2_L2, Provider.ARCHIVE)
S1 = get_profile(SensorId.SENTINEL_1_RTC, Provider.ARCHIVE)
ENMAP = get_profile(SensorId.ENMAP_L2A, Provider.ARCHIVE)

#: A Landsat-like 30 m grid: corners = 15 (mod 30) m, 5 px beyond the tile on every side.
L_X0, L_Y0 = MINX - 15 - 150, MAXY + 15 + 150
L_TRANSFORM = Affine(30, 0, L_X0, 0, -30, L_Y0)
L_SHAPE = (51, 51)


def cog(path: Path, data: np.ndarray, transform: Affine, nodata: float | None, epsg: int = EPSG):
    write_cog(path, data, transform=transform, epsg=epsg, nodata=nodata, blocksize=128)
    return {
        "href": str(path),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "proj:transform": list(transform)[:6],
        "proj:shape": list(data.shape[-2:]),
        "proj:epsg": epsg,
    }


def item(
    item_id: str,
    assets: dict[str, dict[str, Any]],
    *,
    when: str = "2024-05-01T10:00:00Z",
    collection: str | None = None,
    **props: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "Feature",
        "id": item_id,
        "properties": {"datetime": when, "proj:epsg": EPSG, **props},
        "assets": assets,
    }
    if collection:
        out["collection"] = collection
    return out


def encoded(shape: tuple[int, int], base: int = 1) -> np.ndarray:
    """uint16 ``4 * col + row + base``: a one-pixel shift changes every value."""
    rows, cols = np.indices(shape)
    return (4 * cols + rows + base).astype(np.uint16)


def smooth(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint16 Landsat-like DN (7273 = reflectance 0) with smooth and random structure."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    field = 12000 + 3000 * np.sin(cols / 4.0) * np.cos(rows / 5.0) + rng.integers(0, 500, shape)
    return field.astype(np.uint16)


@pytest.fixture
def s2_scene(tmp_path: Path):
    """An S2 scene on the tile's 10 m grid, 20 px beyond the tile on every side."""

    def make(item_id: str, dn: np.ndarray | None = None, **props: Any) -> dict[str, Any]:
        shape = (160, 160)
        tr10 = Affine(10, 0, MINX - 200, 0, -10, MAXY + 200)
        tr20 = Affine(20, 0, MINX - 200, 0, -20, MAXY + 200)
        data = encoded(shape) if dn is None else dn
        scl = np.full((80, 80), 4, np.uint8)
        scl[:, :5] = 0  # no data west of x = MINX - 100 (outside the tile)
        props.setdefault("s2:processing_baseline", "02.14")
        return item(
            item_id,
            {
                "B04": cog(tmp_path / f"{item_id}_B04.tif", data, tr10, 0),
                "SCL": cog(tmp_path / f"{item_id}_SCL.tif", scl, tr20, 0),
            },
            collection="sentinel-2-l2a",
            **props,
        )

    return make


def landsat_item(tmp_path: Path, item_id: str, sr: np.ndarray, qa: np.ndarray, **kw: Any):
    radsat = np.zeros(L_SHAPE, np.uint16)
    return item(
        item_id,
        {
            "red": cog(tmp_path / f"{item_id}_red.tif", sr, L_TRANSFORM, 0),
            "qa_pixel": cog(tmp_path / f"{item_id}_qa.tif", qa, L_TRANSFORM, 1),
            "qa_radsat": cog(tmp_path / f"{item_id}_radsat.tif", radsat, L_TRANSFORM, None),
        },
        collection="landsat-c2-l2",
        **kw,
    )


def oracle_reproject(
    source: np.ndarray, src_transform: Affine, res: float, resampling: Resampling, epsg: int = EPSG
) -> np.ndarray:
    out = np.zeros(TILE.shape(res), np.float64)
    rasterio.warp.reproject(
        source,
        out,
        src_transform=src_transform,
        src_crs=CRS.from_epsg(epsg),
        dst_transform=TILE.transform(res),
        dst_crs=CRS.from_epsg(EPSG),
        resampling=resampling,
    )
    return out


# --------------------------------------------------------------------------------------------
# (1) exact grid, no half-pixel shift
# --------------------------------------------------------------------------------------------


def test_grid_aligned_source_returns_exact_source_pixels(s2_scene) -> None:
    scene = s2_scene("S2_A")
    stack = load_sensor([scene], TILE, resolution_m=10.0, profile=S2, bands=["red"])

    assert stack.transform == TILE.transform(10.0) == Affine(10, 0, MINX, 0, -10, MAXY)
    assert stack.data.shape == (1, 1, 120, 120)
    assert stack.bands == ("B04",)
    # Tile pixel (row j, col i) is source pixel (j + 20, i + 20): DN = 4 * (i + 20) + j + 21.
    dn = encoded((160, 160))[20:140, 20:140].astype(np.float64)
    expected = (dn * 1e-4).astype(np.float32)  # PB 02.14: no offset
    np.testing.assert_array_equal(stack.data[0, 0], expected)
    # SCL (20 m) is nearest-resampled: value 4 everywhere on the tile, all inside the footprint.
    assert stack.qa["SCL"].dtype == np.uint8
    np.testing.assert_array_equal(stack.qa["SCL"], np.full((1, 120, 120), 4, np.uint8))
    assert stack.footprint.all()


def test_both_backends_agree_on_the_grid_aligned_scene(s2_scene) -> None:
    scene = s2_scene("S2_A")
    kw: dict[str, Any] = {"resolution_m": 10.0, "profile": S2, "bands": ["B04"]}
    fast = load_sensor([scene], TILE, backend=StackstacBackend(), **kw)
    oracle = load_sensor([scene], TILE, backend=RasterioBackend(), **kw)
    np.testing.assert_array_equal(fast.data, oracle.data)
    np.testing.assert_array_equal(fast.qa["SCL"], oracle.qa["SCL"])
    np.testing.assert_array_equal(fast.footprint, oracle.footprint)


# --------------------------------------------------------------------------------------------
# (2) Landsat 30 m with a 15 m phase vs the rasterio.warp.reproject oracle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", [10.0, 30.0])
def test_landsat_phase_matches_reproject_oracle(tmp_path: Path, res: float) -> None:
    sr = smooth(L_SHAPE)
    qa = np.full(L_SHAPE, 21824, np.uint16)
    scene = landsat_item(tmp_path, "LC08_A", sr, qa)
    stack = load_sensor([scene], TILE, resolution_m=res, profile=LANDSAT, bands=["red"])

    dn = oracle_reproject(sr, L_TRANSFORM, res, Resampling.bilinear)
    expected = dn * LANDSAT_SR_SCALE + LANDSAT_SR_OFFSET
    got = stack.data[0, 0]
    assert np.isfinite(got).all()  # the scene covers the tile with a 5-pixel margin
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # The 15 m phase is real: the result is not just a copy of source pixels.
    assert not np.isin(np.round(got / LANDSAT_SR_SCALE), sr.astype(np.float64)).all()


def test_other_utm_zone_source_matches_reproject_oracle(tmp_path: Path) -> None:
    # The same ground in the neighbouring zone's CRS (EPSG:32633), 30 m pixels.
    left, bottom, right, top = rasterio.warp.transform_bounds(
        CRS.from_epsg(EPSG), CRS.from_epsg(32633), MINX, MINY, MAXX, MAXY
    )
    x0, y0 = math.floor(left / 30) * 30 - 150, math.ceil(top / 30) * 30 + 150
    shape = (int((y0 - bottom) // 30) + 6, int((right - x0) // 30) + 6)
    transform = Affine(30, 0, x0, 0, -30, y0)
    sr = smooth(shape, seed=1)
    qa = np.full(shape, 21824, np.uint16)
    assets = {
        "red": cog(tmp_path / "red.tif", sr, transform, 0, epsg=32633),
        "qa_pixel": cog(tmp_path / "qa.tif", qa, transform, 1, epsg=32633),
        "qa_radsat": cog(tmp_path / "rs.tif", np.zeros(shape, np.uint16), transform, None, 32633),
    }
    scene = item("LC08_Z33", assets, collection="landsat-c2-l2", **{"proj:epsg": 32633})
    stack = load_sensor([scene], TILE, resolution_m=10.0, profile=LANDSAT, bands=["red"])
    expected = (
        oracle_reproject(sr, transform, 10.0, Resampling.bilinear, epsg=32633) * LANDSAT_SR_SCALE
        + LANDSAT_SR_OFFSET
    )
    assert np.isfinite(stack.data).all()
    np.testing.assert_allclose(stack.data[0, 0], expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# (3) average when down-sampling
# --------------------------------------------------------------------------------------------


def test_average_10m_to_30m_equals_block_mean(s2_scene) -> None:
    rng = np.random.default_rng(3)
    dn = rng.integers(1, 10000, (160, 160)).astype(np.uint16)
    scene = s2_scene("S2_AVG", dn=dn)
    stack = load_sensor([scene], TILE, resolution_m=30.0, profile=S2, bands=["B04"])

    block = dn[20:140, 20:140].astype(np.float64).reshape(40, 3, 40, 3).mean(axis=(1, 3))
    assert stack.data.shape == (1, 1, 40, 40)
    np.testing.assert_allclose(stack.data[0, 0], block * 1e-4, rtol=0, atol=1e-6)
    # Not a nearest pick or a bilinear sample: at least one block mean is not a source value.
    assert not np.isin(block, dn).all()


def test_resampling_rules() -> None:
    red, scl, qa_pixel = S2.band("B04"), S2.band("SCL"), LANDSAT.band("QA_PIXEL")
    assert resampling_for(red, 10.0, 30.0) is Resampling.average
    assert resampling_for(red, 10.0, 10.0) is Resampling.bilinear
    assert resampling_for(LANDSAT.band("red"), 30.0, 10.0) is Resampling.bilinear
    assert resampling_for(scl, 20.0, 10.0) is Resampling.nearest
    assert resampling_for(scl, 20.0, 60.0) is Resampling.nearest
    assert resampling_for(qa_pixel, 30.0, 10.0) is Resampling.nearest


# --------------------------------------------------------------------------------------------
# (4) nearest for QA layers
# --------------------------------------------------------------------------------------------


def test_nearest_qa_never_invents_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    codes = np.array([21824, 21952, 22280, 23826, 54596], np.uint16)
    qa = codes[rng.integers(0, len(codes), L_SHAPE)]
    scene = landsat_item(tmp_path, "LC08_QA", smooth(L_SHAPE), qa)
    stack = load_sensor([scene], TILE, resolution_m=10.0, profile=LANDSAT, bands=["red"])

    got = stack.qa["QA_PIXEL"][0]
    assert got.dtype == np.uint16
    assert set(np.unique(got)) <= set(codes.tolist())
    # Exactly the 30 m pixel under each 10 m pixel centre (the 15 m phase puts no centre on an
    # edge): source col = floor((x - L_X0) / 30).
    centres_x = MINX + 5 + 10 * np.arange(120)
    centres_y = MAXY - 5 - 10 * np.arange(120)
    cols = np.floor((centres_x - L_X0) / 30).astype(int)
    rows = np.floor((L_Y0 - centres_y) / 30).astype(int)
    np.testing.assert_array_equal(got, qa[np.ix_(rows, cols)])


# --------------------------------------------------------------------------------------------
# (5) Sentinel-1: average in linear power, then dB
# --------------------------------------------------------------------------------------------


def test_s1_averages_linear_power_then_converts_to_db(tmp_path: Path) -> None:
    rows, cols = np.indices((120, 120))
    linear = np.where((rows + cols) % 2 == 0, 0.01, 1.0).astype(np.float32)
    transform = Affine(10, 0, MINX, 0, -10, MAXY)
    scene = item(
        "S1_RTC",
        {"vv": cog(tmp_path / "vv.tif", linear, transform, -32768.0)},
        collection="sentinel-1-rtc",
    )
    stack = load_sensor([scene], TILE, resolution_m=30.0, profile=S1, bands=["VV"])

    blocks = linear.astype(np.float64).reshape(40, 3, 40, 3)
    right = 10 * np.log10(blocks.mean(axis=(1, 3)))
    wrong = (10 * np.log10(blocks)).mean(axis=(1, 3))
    np.testing.assert_allclose(stack.data[0, 0], right, rtol=0, atol=1e-4)
    assert np.abs(stack.data[0, 0] - wrong).min() > 5.0  # e.g. -2.8 dB vs -8.9 dB
    assert stack.footprint.all()  # no QA layer: the footprint comes from the VV mask


# --------------------------------------------------------------------------------------------
# (6) Sentinel-2 processing baseline offset, per item; time order
# --------------------------------------------------------------------------------------------


def test_s2_processing_baseline_scaling_per_item(s2_scene) -> None:
    dn = np.full((160, 160), 1000, np.uint16)
    new = s2_scene("S2_NEW", dn=dn, when="2024-05-02T10:00:00Z")
    new["properties"]["s2:processing_baseline"] = "05.10"
    old = s2_scene("S2_OLD", dn=dn, when="2020-05-02T10:00:00Z")
    stack = load_sensor([new, old], TILE, resolution_m=10.0, profile=S2, bands=["B04"])

    assert stack.item_ids == ("S2_OLD", "S2_NEW")  # sorted by datetime
    assert stack.times.dtype == np.dtype("datetime64[ns]")
    assert stack.times[0] == np.datetime64("2020-05-02T10:00:00", "ns")
    np.testing.assert_allclose(stack.data[0, 0], 0.1, atol=1e-7)  # PB 02.14: DN / 10000
    np.testing.assert_allclose(stack.data[1, 0], 0.0, atol=1e-7)  # PB 05.10: (DN - 1000) / 10000


def test_items_with_equal_times_are_ordered_by_id(s2_scene) -> None:
    scenes = [s2_scene(name) for name in ("S2_C", "S2_A", "S2_B")]
    stack = load_sensor(scenes, TILE, resolution_m=30.0, profile=S2, bands=["B04"])
    assert stack.item_ids == ("S2_A", "S2_B", "S2_C")
    assert [s["id"] for s in stack.items] == ["S2_A", "S2_B", "S2_C"]


# --------------------------------------------------------------------------------------------
# (7) validity and footprint at scene edges
# --------------------------------------------------------------------------------------------


def _kernel_cols(u: np.ndarray) -> list[set[int]]:
    """Source columns with a non-zero bilinear weight at pixel coordinates ``u``."""
    out = []
    for value in u:
        left = math.floor(value - 0.5)
        frac = value - 0.5 - left
        out.append({left} if frac == 0 else {left, left + 1})
    return out


def test_bilinear_pixels_touching_nodata_are_invalid(tmp_path: Path) -> None:
    sr = smooth(L_SHAPE)
    qa = np.full(L_SHAPE, 21824, np.uint16)
    edge = 20  # source columns < 20 are outside the swath: DN 0 and QA fill
    sr[:, :edge] = 0
    qa[:, :edge] = 1
    scene = landsat_item(tmp_path, "LC08_EDGE", sr, qa)
    stack = load_sensor([scene], TILE, resolution_m=10.0, profile=LANDSAT, bands=["red"])

    u = (MINX + 5 + 10 * np.arange(120) - L_X0) / 30  # column coordinate of each pixel centre
    valid_cols = np.array([min(k) >= edge for k in _kernel_cols(u)])
    valid = np.isfinite(stack.data[0, 0])
    np.testing.assert_array_equal(valid, np.broadcast_to(valid_cols, (120, 120)))
    # The footprint is the nearest warp of QA_PIXEL's mask: it reaches half a source pixel
    # further than the bilinear validity (the pixel under the centre is valid).
    in_footprint = np.floor(u).astype(int) >= edge
    np.testing.assert_array_equal(stack.footprint[0], np.broadcast_to(in_footprint, (120, 120)))
    assert (stack.footprint[0] & ~valid).any()
    # QA outside the footprint holds the profile's nodata (QA_PIXEL fill = 1).
    assert (stack.qa["QA_PIXEL"][0][~stack.footprint[0]] == 1).all()
    # Where valid, values equal the oracle warp (which mixes the zeros into the edge pixels).
    oracle = oracle_reproject(sr, L_TRANSFORM, 10.0, Resampling.bilinear)
    expected = oracle * LANDSAT_SR_SCALE + LANDSAT_SR_OFFSET
    np.testing.assert_allclose(stack.data[0, 0][valid], expected[valid], rtol=0, atol=1e-4)
    # The pixels we drop would be off by thousands of DN: compare with the nodata columns
    # replaced by their valid neighbour.
    touched = ~valid & in_footprint[np.newaxis, :]
    filled = sr.copy()
    filled[:, :edge] = sr[:, [edge]]
    plausible = oracle_reproject(filled, L_TRANSFORM, 10.0, Resampling.bilinear)
    assert touched.sum() >= 120 and (plausible[touched] - oracle[touched] > 500).all()
    # The oracle backend (whole-raster reads, no shortcuts) agrees pixel for pixel.
    other = load_sensor(
        [scene], TILE, resolution_m=10.0, profile=LANDSAT, bands=["red"], backend=RasterioBackend()
    )
    np.testing.assert_array_equal(other.data, stack.data)
    np.testing.assert_array_equal(other.footprint, stack.footprint)
    np.testing.assert_array_equal(other.qa["QA_PIXEL"], stack.qa["QA_PIXEL"])


@pytest.fixture(scope="module")
def patchy_rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[float, int], str]:
    """Rasters around the tile with nodata holes and a cut-off corner, by (resolution, EPSG)."""
    root = tmp_path_factory.mktemp("patchy")
    rng = np.random.default_rng(11)
    z33 = rasterio.warp.transform_bounds(
        CRS.from_epsg(EPSG), CRS.from_epsg(32633), MINX, MINY, MAXX, MAXY
    )
    out = {}
    for res, epsg in ((10.0, EPSG), (20.0, EPSG), (30.0, EPSG), (10.0, 32633), (30.0, 32633)):
        n = int(1800 // res)
        data = rng.integers(1, 30000, (n, n)).astype(np.uint16)
        data[rng.random((n, n)) < 0.02] = 0
        data[: n // 3, : n // 3] = 0
        x0, y0 = (MINX, MAXY) if epsg == EPSG else (round(z33[0]), round(z33[3]))
        transform = Affine(res, 0, x0 - 300 + 3, 0, -res, y0 + 300 - 7)
        path = root / f"r{int(res)}_{epsg}.tif"
        write_cog(path, data, transform=transform, epsg=epsg, nodata=0, blocksize=128)
        out[(res, epsg)] = str(path)
    return out


@settings(max_examples=30, deadline=None)
@given(
    source=st.sampled_from(
        [(10.0, EPSG), (20.0, EPSG), (30.0, EPSG), (10.0, 32633), (30.0, 32633)]
    ),
    dst_res=st.sampled_from([10.0, 20.0, 30.0, 60.0]),
    dx=st.floats(-400, 400, allow_nan=False),
    dy=st.floats(-400, 400, allow_nan=False),
    resampling=st.sampled_from([Resampling.nearest, Resampling.bilinear, Resampling.average]),
    footprint=st.booleans(),
)
def test_windowed_warp_equals_whole_raster_warp(
    patchy_rasters: dict[tuple[float, int], str],
    source: tuple[float, int],
    dst_res: float,
    dx: float,
    dy: float,
    resampling: Resampling,
    footprint: bool,
) -> None:
    """Reading only the window under the tile (plus shortcuts) changes no pixel."""
    grid = tile_grid(TILE, dst_res)
    href = patchy_rasters[source]
    request = WarpRequest("I", "A", href, (1,), resampling, (dx, dy), footprint=footprint)
    with rasterio.open(href) as ds:
        windowed = warp_window(ds, request, grid)
        whole = warp_whole(ds, request, grid)
    np.testing.assert_array_equal(np.isnan(windowed), np.isnan(whole))
    np.testing.assert_allclose(windowed, whole, rtol=1e-12, atol=1e-9)


def test_scene_that_misses_the_tile_is_all_nodata(tmp_path: Path, s2_scene) -> None:
    far = Affine(10, 0, MAXX + 5000, 0, -10, MAXY)
    scene = item(
        "S2_FAR",
        {
            "B04": cog(tmp_path / "far.tif", encoded((50, 50)), far, 0),
            "SCL": cog(tmp_path / "far_scl.tif", np.full((50, 50), 4, np.uint8), far, 0),
        },
        collection="sentinel-2-l2a",
        **{"s2:processing_baseline": "05.10"},
    )
    stack = load_sensor(
        [scene, s2_scene("S2_NEAR")], TILE, resolution_m=10.0, profile=S2, bands=["B04"]
    )
    assert stack.item_ids == ("S2_FAR", "S2_NEAR")
    assert np.isnan(stack.data[0]).all() and not stack.footprint[0].any()
    assert (stack.qa["SCL"][0] == 0).all()
    assert np.isfinite(stack.data[1]).all() and stack.footprint[1].all()


# --------------------------------------------------------------------------------------------
# (8) shifts
# --------------------------------------------------------------------------------------------


def test_shift_moves_the_pattern_by_whole_pixels(s2_scene) -> None:
    scene = s2_scene("S2_SHIFT")
    kw: dict[str, Any] = {"resolution_m": 10.0, "profile": S2, "bands": ["B04"]}
    base = load_sensor([scene], TILE, **kw).data[0, 0]
    east = load_sensor([scene], TILE, shifts_m={"S2_SHIFT": (10.0, 0.0)}, **kw).data[0, 0]
    north = load_sensor([scene], TILE, shifts_m={"S2_SHIFT": (0.0, 10.0)}, **kw).data[0, 0]
    np.testing.assert_array_equal(east[:, 1:], base[:, :-1])  # drawn one pixel further east
    np.testing.assert_array_equal(north[:-1, :], base[1:, :])  # one pixel further north (up)
    assert not np.array_equal(east, base)


def test_shift_sign_convention_corrects_a_displaced_scene(tmp_path: Path, s2_scene) -> None:
    truth = s2_scene("S2_TRUE")
    # The same pixels georeferenced 20 m too far east: content displaced by +20 m.
    displaced = Affine(10, 0, MINX - 200 + 20, 0, -10, MAXY + 200)
    tr20 = Affine(20, 0, MINX - 200 + 20, 0, -20, MAXY + 200)
    bad = item(
        "S2_BAD",
        {
            "B04": cog(tmp_path / "bad.tif", encoded((160, 160)), displaced, 0),
            "SCL": cog(tmp_path / "bad_scl.tif", np.full((80, 80), 4, np.uint8), tr20, 0),
        },
        collection="sentinel-2-l2a",
        **{"s2:processing_baseline": "02.14"},
    )
    kw: dict[str, Any] = {"resolution_m": 10.0, "profile": S2, "bands": ["B04"]}
    reference = load_sensor([truth], TILE, **kw).data[0, 0]
    corrected = load_sensor([bad], TILE, shifts_m={"S2_BAD": (-20.0, 0.0)}, **kw).data[0, 0]
    uncorrected = load_sensor([bad], TILE, **kw).data[0, 0]
    np.testing.assert_array_equal(corrected, reference)
    assert not np.array_equal(uncorrected[:, 2:], reference[:, 2:])


# --------------------------------------------------------------------------------------------
# Multi-band assets (EnMAP): all bands of an asset in one warp
# --------------------------------------------------------------------------------------------


def test_multiband_asset_bands_land_in_order(tmp_path: Path) -> None:
    transform = Affine(30, 0, MINX - 60, 0, -30, MAXY + 60)
    shape = (44, 44)
    image = np.stack([encoded(shape, base=1000 * b) for b in (1, 2, 3)]).astype(np.int16)
    ql = np.ones(shape, np.uint8)
    assets = {"image": cog(tmp_path / "image.tif", image, transform, -32768)}
    for band in ENMAP.mask_bands():
        assets[band.asset_key] = cog(tmp_path / f"{band.asset_key}.tif", ql, transform, None)
    scene = item("ENMAP_A", assets, collection="ENMAP_HSI_L2A")
    kw: dict[str, Any] = {"resolution_m": 30.0, "profile": ENMAP, "bands": ["B003", "B001"]}
    fast = load_sensor([scene], TILE, **kw)
    oracle = load_sensor([scene], TILE, backend=RasterioBackend(), **kw)

    assert fast.bands == ("B003", "B001")
    np.testing.assert_array_equal(fast.data, oracle.data)
    # Aligned 30 m grid offset by 2 px: band b holds 4 * (i + 2) + (j + 2) + 1000 * b, x 1e-4.
    expected = encoded(shape)[2:42, 2:42].astype(np.float64) - 1
    np.testing.assert_allclose(fast.data[0, 0], (expected + 3000) * 1e-4, atol=1e-6)
    np.testing.assert_allclose(fast.data[0, 1], (expected + 1000) * 1e-4, atol=1e-6)
    assert set(fast.qa) == {band.name for band in ENMAP.mask_bands()}
    assert (fast.qa["QL_QUALITY_CLASSES"] == 1).all()


# --------------------------------------------------------------------------------------------
# Inputs and failures
# --------------------------------------------------------------------------------------------


def test_no_items_gives_an_empty_stack() -> None:
    stack = load_sensor([], TILE, resolution_m=30.0, profile=S2, bands=["B04", "B03"])
    assert stack.data.shape == (0, 2, 40, 40)
    assert stack.qa["SCL"].shape == (0, 40, 40)
    assert stack.item_ids == ()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bands": ["B04", "red"]}, "twice"),
        ({"bands": []}, "non-empty"),
        ({"bands": ["B99"]}, "not a band"),
        ({"resolution_m": 7.0}, "not divisible"),
        ({"shifts_m": {"nope": (1.0, 0.0)}}, "not among the items"),
        ({"profile": LANDSAT, "bands": ["red"]}, "not a landsat-c2-l2 item"),
    ],
)
def test_bad_arguments_fail_before_any_io(s2_scene, kwargs: dict[str, Any], match: str) -> None:
    scene = s2_scene("S2_ARGS")
    scene["assets"]["B04"]["href"] = "/nonexistent/never-opened.tif"
    args: dict[str, Any] = {"resolution_m": 10.0, "profile": S2, "bands": ["B04"], **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        load_sensor([scene], TILE, **args)


def test_s2_item_without_baseline_fails_before_io(s2_scene) -> None:
    scene = s2_scene("S2_NOPB")
    del scene["properties"]["s2:processing_baseline"]
    scene["assets"]["B04"]["href"] = "/nonexistent/never-opened.tif"
    with pytest.raises(InvalidInputError, match="processing baseline"):
        load_sensor([scene], TILE, resolution_m=10.0, profile=S2, bands=["B04"])


def test_missing_asset_key_names_item_and_asset(s2_scene) -> None:
    scene = s2_scene("S2_NOSCL")
    del scene["assets"]["SCL"]
    with pytest.raises(AssetMissingError) as info:
        load_sensor([scene], TILE, resolution_m=10.0, profile=S2, bands=["B04"])
    assert (info.value.item_id, info.value.asset_key) == ("S2_NOSCL", "SCL")


@pytest.mark.parametrize("backend", [StackstacBackend(), RasterioBackend()])
def test_broken_assets_raise_skippable_errors(tmp_path: Path, s2_scene, backend) -> None:
    missing = s2_scene("S2_GONE")
    missing["assets"]["B04"]["href"] = str(tmp_path / "gone.tif")
    with pytest.raises(AssetMissingError) as info:
        load_sensor([missing], TILE, resolution_m=10.0, profile=S2, bands=["B04"], backend=backend)
    assert isinstance(info.value, BrokenAssetError)
    assert (info.value.item_id, info.value.asset_key) == ("S2_GONE", "B04")
    assert "S2_GONE" in str(info.value)

    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff" * 50)
    broken = s2_scene("S2_JUNK")
    broken["assets"]["SCL"]["href"] = str(junk)
    with pytest.raises(AssetCorruptError) as info2:
        load_sensor([broken], TILE, resolution_m=10.0, profile=S2, bands=["B04"], backend=backend)
    assert (info2.value.item_id, info2.value.asset_key) == ("S2_JUNK", "SCL")


def test_truncated_cog_is_corrupt(tmp_path: Path, s2_scene) -> None:
    scene = s2_scene("S2_TRUNC", dn=np.random.default_rng(0).integers(1, 9999, (160, 160)))
    path = Path(scene["assets"]["B04"]["href"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AssetCorruptError, match="S2_TRUNC"):
        load_sensor([scene], TILE, resolution_m=10.0, profile=S2, bands=["B04"])


def test_transient_errors_are_retried_then_raised(tmp_path: Path) -> None:
    path = tmp_path / "ok.tif"
    cog(path, encoded((8, 8)), Affine(10, 0, MINX, 0, -10, MAXY), 0)
    request = WarpRequest(item_id="I", asset_key="B04", href=str(path))
    sleeps: list[float] = []
    config = _ReadConfig((), retries=3, backoff_s=0.25, sleep=sleeps.append)
    calls = {"n": 0}

    def flaky(ds: Any) -> int:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RasterioIOError("HTTP response code: 503")
        return int(ds.count)

    assert _with_retries(request, config, flaky) == 1
    assert calls["n"] == 3 and sleeps == [0.25, 0.5]

    def always(ds: Any) -> int:
        raise RasterioIOError("CURL error: Operation timed out after 30000 milliseconds")

    sleeps.clear()
    with pytest.raises(TransientError, match="failed 4 times") as info:
        _with_retries(request, config, always)
    assert "item I asset B04" in str(info.value)
    assert sleeps == [0.25, 0.5, 1.0]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("HTTP response code: 404", "missing"),
        ("/x/y.tif: No such file or directory", "missing"),
        ("HTTP response code: 403", "denied"),
        ("HTTP response code: 503", "transient"),
        ("HTTP response code: 429", "transient"),
        ("Couldn't connect to server", "transient"),
        ("'/x.tif' not recognized as being in a supported file format.", "corrupt"),
        ("IReadBlock failed at X offset 2, Y offset 0: TIFFReadEncodedTile() failed.", "corrupt"),
    ],
)
def test_classify_io_error(message: str, kind: str) -> None:
    assert classify_io_error(RasterioIOError(message))[0] == kind


def test_classify_reads_the_cause_chain() -> None:
    try:
        try:
            raise RuntimeError("HTTP response code: 502")
        except RuntimeError as inner:
            raise RasterioIOError("Read failed. See previous exception for details.") from inner
    except RasterioIOError as exc:
        assert classify_io_error(exc)[0] == "transient"


def test_redact_href_drops_signatures() -> None:
    url = "https://acct.blob.core.windows.net/c/B04.tif?sv=2021&sig=SECRET"
    assert redact_href(url) == "https://acct.blob.core.windows.net/c/B04.tif"
    assert redact_href("/data/a.tif") == "/data/a.tif"


def test_request_round_trips_through_json() -> None:
    req = WarpRequest("I", "image", "http://h/a.tif?x=1", (3, 1), Resampling.average, (-2.5, 4.0))
    back = WarpRequest.from_json(req.to_json())
    assert back == WarpRequest("I", "image", "http://h/a.tif?x=1", (3, 1), Resampling.average,
                               (-2.5, 4.0))  # fmt: skip


def test_tile_grid_matches_the_tile() -> None:
    grid = tile_grid(TILE, 30.0)
    assert grid.transform == TILE.transform(30.0)
    assert grid.shape == (40, 40)
    assert grid.bounds == TILE.bounds
