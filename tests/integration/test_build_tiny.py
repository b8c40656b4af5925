"""End-to-end build of the tiny archive, checked against independent warps of the sources.

The archive knows its ground truth, so the cube is checked value by value: every plane of
Sentinel-2, Landsat and Sentinel-1 equals the source scene the catalog names, warped onto the
tile grid with rasterio (the oracle, independent of the stackstac loader) and scaled by the
sensor profile; masks agree with the source QA classes; and the injected Landsat
misregistrations are estimated to within 0.2 px and corrected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from rasterio.warp import Resampling, reproject

from catalog.writer import read_records
from pipelines.grid import Tile
from schemas.cube import MaskBit
from schemas.profiles import get_profile
from schemas.sensors import Provider, SensorId

pytestmark = pytest.mark.integration

TILE_M = 1200.0
#: Storage rounding of int16 x 1e-4 reflectance is 5e-5; warps by GDAL through two code paths
#: (stackstac's VRT vs rasterio.reproject) agree to float32 precision.
REFL_TOL = 2e-4
DB_TOL = 0.01  # int16 x 0.01 dB storage
MAX_RESIDUAL_PX = 0.2


@pytest.fixture(scope="module")
def tiny_build(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build the tiny archive's own recipe once (through the CLI, as a user would)."""
    work = tmp_path_factory.mktemp("build-tiny")
    cube = work / "tiny.zarr"
    text = (tiny_archive / "recipes" / "tiny.yaml").read_text()
    recipe = work / "tiny.yaml"
    recipe.write_text(text.replace("path: build/tiny.zarr", f"path: {cube}"))
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "eoforge"), "build", str(recipe), "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    return {"cube": cube, "summary": summary, "archive": tiny_archive}


def _items(archive: Path, collection: str) -> dict[str, dict[str, Any]]:
    path = archive / "stac" / "items" / f"{collection}.ndjson"
    return {(it := json.loads(line))["id"]: it for line in path.read_text().splitlines()}


def _rows(cube: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = read_records(cube).to_pylist()
    return rows


def _obs(row: dict[str, Any], sensor: str) -> dict[str, Any] | None:
    return next((s for s in row["sensors"] if s["sensor"] == sensor), None)


def _oracle(
    archive: Path,
    item: dict[str, Any],
    asset: str,
    tile: Tile,
    res: float,
    resampling: Resampling,
    shift_m: tuple[float, float] = (0.0, 0.0),
    band_index: int = 1,
) -> np.ndarray:
    """Warp one source band onto the tile grid with rasterio (float64, no nodata handling)."""
    with rasterio.open(archive / item["assets"][asset]["href"]) as src:
        data = src.read(band_index).astype(np.float64)
        transform = Affine.translation(*shift_m) @ src.transform
        crs = src.crs
    ny, nx = tile.shape(res)
    out = np.zeros((ny, nx), dtype=np.float64)
    reproject(
        data,
        out,
        src_transform=transform,
        src_crs=crs,
        dst_transform=tile.transform(res),
        dst_crs=f"EPSG:{tile.epsg}",
        resampling=resampling,
        # Pin GDAL's kernel scale to the ratio of pixel sizes; left to itself GDAL derives it
        # from the (rotated, clipped) source window, which changes the bilinear footprint.
        XSCALE=repr(abs(transform.a) / res),
        YSCALE=repr(abs(transform.e) / res),
    )
    return out


def _cube_plane(cube: Path, sensor: str, position: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    group = zarr.open_group(cube, mode="r")
    arr = group[f"{sensor}/data"]
    attrs = dict(arr.attrs)
    raw = np.asarray(arr[position, 0]).astype(np.float64)
    data = np.where(raw == attrs["_FillValue"], np.nan, raw * attrs["scale_factor"])
    mask = np.asarray(group[f"{sensor}/mask"][position, 0])
    bands = [str(b) for b in np.asarray(group[f"{sensor}/band"][:])]
    return data, mask, bands


def test_summary_and_every_group_opens_with_named_dims(tiny_build: dict[str, Any]) -> None:
    cube, summary = tiny_build["cube"], tiny_build["summary"]
    assert summary["shards_built"] == summary["shards_total"] > 0
    assert summary["tiles"] > 4  # the AOI straddles two UTM zones
    rows = _rows(cube)
    assert len(rows) == summary["tiles"] * 3  # three monthly periods
    assert {r["epsg"] for r in rows} == {32632, 32633}
    for sensor in ("sentinel-2-l2a", "landsat-c2-l2", "sentinel-1-rtc", "enmap-l2a"):
        ds = xr.open_zarr(cube, group=sensor, mask_and_scale=False)
        assert ds["data"].dims == ("tile", "time", "band", "y", "x")
        assert ds["mask"].dims == ("tile", "time", "y", "x")
        attrs = ds["data"].attrs
        assert attrs["scale_factor"] in (1e-4, 1e-2)
        assert "_FillValue" in ds["data"].encoding or "_FillValue" in attrs
        assert ds["mask"].attrs["flag_meanings"].split()[0] == "valid"


@pytest.mark.parametrize(
    ("sensor", "collection", "res", "bands"),
    [
        ("sentinel-2-l2a", "sentinel-2-l2a", 10.0, ("B02", "B04", "B8A", "B11")),
        ("landsat-c2-l2", "landsat-c2-l2", 30.0, ("SR_B2", "SR_B4", "SR_B5")),
        ("enmap-l2a", "ENMAP_HSI_L2A", 30.0, ("B010", "B048", "B090", "B200")),
    ],
)
def test_optical_pixels_equal_independent_warp(
    tiny_build: dict[str, Any], sensor: str, collection: str, res: float, bands: tuple[str, ...]
) -> None:
    cube, archive = tiny_build["cube"], tiny_build["archive"]
    items = _items(archive, collection)
    profile = get_profile(SensorId(sensor), Provider.ARCHIVE)
    checked = 0
    for row in _rows(cube):
        obs = _obs(row, sensor)
        if obs is None or len(obs["item_ids"]) != 1 or obs["valid_fraction"] < 0.05:
            continue
        item = items[obs["item_ids"][0]]
        tile = Tile.from_id(row["tile_id"], TILE_M)
        data, mask, cube_bands = _cube_plane(cube, sensor, row["cube_position"])
        valid = (mask & MaskBit.VALID) > 0
        shift = (0.0, 0.0)
        if obs["shift_applied"]:
            shift = (-obs["shift_dx_m"], -obs["shift_dy_m"])
        for name in bands:
            spec = profile.band(name)
            scale, offset = profile.scale_offset_for_item(name, item)
            native = spec.resolution_m
            resampling = Resampling.average if native < res else Resampling.bilinear
            dn = _oracle(
                archive, item, spec.asset_key, tile, res, resampling, shift, spec.asset_band or 1
            )
            expected = dn * scale + offset
            got = data[cube_bands.index(name)]
            diff = np.abs(got[valid] - expected[valid])
            assert diff.max() <= REFL_TOL, (row["id"], name, float(diff.max()))
        checked += 1
    assert checked >= 3, f"only {checked} planes of {sensor} were checked"


def test_sentinel1_composite_equals_linear_warp_then_db(tiny_build: dict[str, Any]) -> None:
    cube, archive = tiny_build["cube"], tiny_build["archive"]
    items = _items(archive, "sentinel-1-rtc")
    checked = 0
    for row in _rows(cube):
        obs = _obs(row, "sentinel-1-rtc")
        if obs is None or len(obs["item_ids"]) != 1:
            continue
        tile = Tile.from_id(row["tile_id"], TILE_M)
        data, mask, cube_bands = _cube_plane(cube, "sentinel-1-rtc", row["cube_position"])
        valid = (mask & MaskBit.VALID) > 0
        if valid.mean() < 0.05:
            continue
        item = items[obs["item_ids"][0]]
        for name, key in (("VV", "vv"), ("VH", "vh")):
            linear = _oracle(archive, item, key, tile, 10.0, Resampling.bilinear)
            expected = 10 * np.log10(np.clip(linear, 1e-6, None))
            got = data[cube_bands.index(name)]
            diff = np.abs(got[valid] - expected[valid])
            assert diff.max() <= DB_TOL, (row["id"], name, float(diff.max()))
        checked += 1
    assert checked >= 3


def test_landsat_masks_follow_qa_pixel(tiny_build: dict[str, Any]) -> None:
    cube, archive = tiny_build["cube"], tiny_build["archive"]
    items = _items(archive, "landsat-c2-l2")
    cloudy_seen = clear_seen = 0
    for row in _rows(cube):
        obs = _obs(row, "landsat-c2-l2")
        if obs is None or len(obs["item_ids"]) != 1:
            continue
        item = items[obs["item_ids"][0]]
        tile = Tile.from_id(row["tile_id"], TILE_M)
        _, mask, _ = _cube_plane(cube, "landsat-c2-l2", row["cube_position"])
        shift = (0.0, 0.0)
        if obs["shift_applied"]:
            shift = (-obs["shift_dx_m"], -obs["shift_dy_m"])
        qa = _oracle(archive, item, "qa_pixel", tile, 30.0, Resampling.nearest, shift).astype(
            np.uint16
        )
        observed = (mask & MaskBit.NODATA) == 0
        cloud = ((qa >> 3) & 1).astype(bool) & observed
        clear = (qa == 21824) | (qa == 21952)
        assert np.all(mask[cloud] & MaskBit.CLOUD), row["id"]
        assert not np.any(mask[cloud] & MaskBit.VALID), row["id"]
        assert np.all(mask[clear & observed] & MaskBit.VALID), row["id"]
        cloudy_seen += int(cloud.sum())
        clear_seen += int((clear & observed).sum())
    assert cloudy_seen > 0 and clear_seen > 100


def test_injected_landsat_shifts_are_corrected_within_02_px(tiny_build: dict[str, Any]) -> None:
    cube, archive = tiny_build["cube"], tiny_build["archive"]
    truth = json.loads((archive / "truth" / "scenes.json").read_text())["scenes"]
    applied = 0
    for row in _rows(cube):
        obs = _obs(row, "landsat-c2-l2")
        if obs is None or not obs["shift_applied"]:
            continue
        (item_id,) = obs["item_ids"]
        dx, dy = truth[item_id]["shift_m"]
        residual_px = np.hypot(obs["shift_dx_m"] - dx, obs["shift_dy_m"] - dy) / 30.0
        assert residual_px <= MAX_RESIDUAL_PX, (row["id"], obs["shift_dx_m"], dx)
        applied += 1
    assert applied >= 5, "too few tiles had a confident co-registration"


def test_sentinel2_masks_follow_scl(tiny_build: dict[str, Any]) -> None:
    """SCL cloud/shadow/cirrus classes are never valid; clear classes away from them are."""
    from scipy import ndimage

    cube, archive = tiny_build["cube"], tiny_build["archive"]
    items = _items(archive, "sentinel-2-l2a")
    invalid_seen = valid_seen = 0
    for row in _rows(cube):
        obs = _obs(row, "sentinel-2-l2a")
        if obs is None or len(obs["item_ids"]) != 1:
            continue
        item = items[obs["item_ids"][0]]
        tile = Tile.from_id(row["tile_id"], TILE_M)
        _, mask, _ = _cube_plane(cube, "sentinel-2-l2a", row["cube_position"])
        scl = _oracle(archive, item, "SCL", tile, 10.0, Resampling.nearest).astype(np.uint8)
        observed = (mask & MaskBit.NODATA) == 0
        bad = np.isin(scl, [3, 8, 9, 10]) & observed
        # The recipe dilates cloud and shadow by 20 m (2 px): clear means 3 px away from them.
        near_bad = ndimage.binary_dilation(np.isin(scl, [3, 8, 9, 10]), iterations=3)
        clear = np.isin(scl, [4, 5, 6]) & ~near_bad & observed
        assert not np.any(mask[bad] & MaskBit.VALID), row["id"]
        assert np.all(mask[clear] & MaskBit.VALID), row["id"]
        assert np.all(mask[np.isin(scl, [8, 9]) & observed] & MaskBit.CLOUD), row["id"]
        invalid_seen += int(bad.sum())
        valid_seen += int(clear.sum())
    assert invalid_seen > 100 and valid_seen > 1000


# -- labels and splits ----------------------------------------------------------------------

MIN_AGREEMENT = 0.98


def _distinct_tiles(cube: Path) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for row in _rows(cube):
        seen.setdefault(row["tile_id"], row["cube_position"])
    return sorted(seen.items())


def test_corine_labels_agree_with_truth_in_both_zones(tiny_build: dict[str, Any]) -> None:
    """The built cube's CORINE labels vs the truth map, as the reader test measures them.

    Pixels 2 label pixels from any truth class boundary, in parcel regions CORINE maps (at
    least its minimum mapping unit; smaller ones are generalised away by design).
    """
    from test_labels_corine_truth import _classes, _lut, _Truth

    cube, archive = tiny_build["cube"], tiny_build["archive"]
    classes = _classes(archive)
    lut = _lut(classes, "bigearthnet19")
    group = zarr.open_group(cube, mode="r")
    assert float(group["labels"].attrs["resolution_m"]) == 10.0
    truths = {epsg: _Truth(archive, epsg, classes) for epsg in (32632, 32633)}
    counts = {epsg: [0, 0] for epsg in truths}
    for tile_id, position in _distinct_tiles(cube):
        tile = Tile.from_id(tile_id, TILE_M)
        ids, _, interior, mapped = truths[tile.epsg].sample(tile)
        use = interior & mapped
        got = np.asarray(group["labels/corine"][position])
        counts[tile.epsg][0] += int((got[use] == lut[ids][use]).sum())
        counts[tile.epsg][1] += int(use.sum())
    for epsg, (agree, total) in counts.items():
        assert total > 20_000, epsg
        assert agree / total >= MIN_AGREEMENT, (epsg, agree / total)


def test_label_arrays_catalog_and_splits_are_consistent(tiny_build: dict[str, Any]) -> None:
    from pipelines.grid import TileGrid
    from pipelines.labels import open_reader
    from pipelines.labels.summary import summarize
    from schemas.recipe import load_recipe

    cube, summary = tiny_build["cube"], tiny_build["summary"]
    recipe = load_recipe(tiny_build["archive"] / "recipes" / "tiny.yaml")
    sources = {s.name: s for s in recipe.labels}
    group = zarr.open_group(cube, mode="r")
    res = float(group["labels"].attrs["resolution_m"])
    grid = TileGrid(TILE_M, (res,))
    rows = _rows(cube)
    split_of: dict[str, str] = {}
    for row in rows:
        assert row["split"] in ("train", "val", "test")
        # A tile keeps its split in every period.
        assert split_of.setdefault(row["tile_id"], row["split"]) == row["split"]
    for name, source in sources.items():
        ds = xr.open_zarr(cube, group="labels", mask_and_scale=False)
        assert ds[name].dims == ("tile", "y", "x")
        assert ds[f"{name}_multilabel"].dims == ("tile", f"{name}_class")
        names = [str(v) for v in np.asarray(group[f"labels/{name}_class"][:])]
        reader = open_reader(source)
        assert tuple(names) == reader.class_names
        for row in rows:
            tile = grid.tile_from_id(row["tile_id"])
            got = np.asarray(group[f"labels/{name}"][row["cube_position"]])
            # The cube holds what the reader burns for this tile, in every period.
            np.testing.assert_array_equal(got, reader.rasterize([tile], res)[tile.id])
            stats = summarize(
                got,
                names,
                reader.unlabeled_index,
                threshold=source.multilabel_threshold,
                max_unlabeled=source.max_unlabeled,
            )
            fractions = dict(dict(row["class_fractions"])[name])
            assert fractions == pytest.approx(stats.fractions, abs=1e-6)
            if fractions:
                assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-4)
            assert tuple(dict(row["multilabels"])[name]) == stats.multilabels
            multi = np.asarray(group[f"labels/{name}_multilabel"][row["cube_position"]])
            np.testing.assert_array_equal(multi, stats.multilabel)
            unl = dict(row["unlabeled_fractions"])[name]
            assert unl == pytest.approx(stats.unlabeled_fraction, abs=1e-6)
            assert (name in row["label_flags"]) == stats.flagged
    counts = {k: sum(1 for v in split_of.values() if v == k) for k in set(split_of.values())}
    assert summary["splits"] == dict(sorted(counts.items()))
    assert summary["leakage"]["counts"]["test"] == counts.get("test", 0) > 0
    # The guard: no test tile touches a train tile (adjacent tiles are 0 m apart).
    assert summary["leakage"]["min_test_train_distance_m"] > 1.0
