"""The Zarr v3 cube writer: layout on disk, encoding, read-back with zarr and xarray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.grid import Shard, Tile
from pipelines.stack import PeriodStack
from pipelines.write import (
    TileLabels,
    encode_values,
    ensure_tile_capacity,
    open_or_create_cube,
    tile_capacity,
    write_shard,
)
from schemas.cube import CubeLayout, LabelLayout, MaskBit, SensorLayout
from schemas.errors import ConflictError, InvalidInputError

TILE_M = 240.0
S2 = SensorLayout(
    name="sentinel-2-l2a",
    bands=("B02", "B03", "B04", "B08"),
    resolution_m=10.0,
    n_time=2,
    dtype="int16",
    nodata=-32768,
    scale_factor=1e-4,
    add_offset=-0.1,
    units="1",
)
LANDSAT = SensorLayout(
    name="landsat-c2-l2",
    bands=("coastal", "blue", "green", "red", "nir08", "swir16", "swir22"),
    resolution_m=30.0,
    n_time=1,
    dtype="uint16",
    nodata=0,
    scale_factor=2.75e-5,
    add_offset=-0.2,
    units="1",
)
CORINE = LabelLayout(source="corine", class_names=("urban", "agriculture", "forest", "water"))
TILES = (Tile(32, "N", 2000, 22000, TILE_M), Tile(32, "N", 2001, 22000, TILE_M))
SHARD = Shard(index=1, tiles=TILES, tiles_per_shard=2)  # positions 2 and 3


def _layout(**overrides: Any) -> CubeLayout:
    sensors = overrides.pop("sensors", (S2, LANDSAT))
    kwargs: dict[str, Any] = {"tile_size_m": TILE_M, "tiles_per_shard": 2, "labels": (CORINE,)}
    kwargs.update(overrides)
    return CubeLayout.for_recipe_like(sensors, **kwargs)


def _stack(sensor: SensorLayout, tile: Tile, n_time: int, seed: int) -> PeriodStack:
    rng = np.random.default_rng(seed)
    n = round(TILE_M / sensor.resolution_m)
    data = rng.uniform(0.0, 0.6, (n_time, len(sensor.bands), n, n)).astype(np.float32)
    data[0, 1, 0, :3] = np.nan  # a few missing pixels
    mask = np.full((n_time, n, n), MaskBit.VALID, np.uint8)
    mask[:, 0, :3] = MaskBit.CLOUD | MaskBit.NODATA
    times = np.array(
        [f"2024-06-{3 + 5 * t:02d}T10:3{seed % 10}:00.123456789" for t in range(n_time)],
        dtype="datetime64[ns]",
    )
    return PeriodStack(
        sensor=sensor.name,
        tile_id=tile.id,
        period_id="2024-06",
        epsg=tile.epsg,
        transform=tile.transform(sensor.resolution_m),
        resolution_m=sensor.resolution_m,
        bands=sensor.bands,
        data=data,
        mask=mask,
        times=times,
        sources=tuple((f"{sensor.name}-{seed}-{t}", f"extra-{t}") for t in range(n_time)),
        valid_fraction=0.9,
        cloud_fraction=0.1,
    )


def _results() -> dict[str, dict[str, PeriodStack]]:
    # Tile 0: S2 with 2 planes and Landsat; tile 1: S2 with 1 plane, no Landsat.
    return {
        TILES[0].id: {
            S2.name: _stack(S2, TILES[0], 2, 1),
            LANDSAT.name: _stack(LANDSAT, TILES[0], 1, 2),
        },
        TILES[1].id: {S2.name: _stack(S2, TILES[1], 1, 3)},
    }


def _labels() -> dict[str, dict[str, TileLabels]]:
    raster = (np.arange(24 * 24) % 4).astype(np.uint8).reshape(24, 24)
    return {TILES[0].id: {"corine": TileLabels(raster, np.array([1, 1, 1, 1], np.uint8))}}


def _build(path: Path, layout: CubeLayout | None = None) -> zarr.Group:
    layout = layout or _layout()
    group = open_or_create_cube(path, layout, n_tiles_capacity=4)
    write_shard(group, layout, SHARD, _results(), _labels())
    return group


# ---------------------------------------------------------------------------------------------
# read back


def test_shard_reads_back_with_zarr(tmp_path: Path) -> None:
    group = _build(tmp_path / "cube.zarr")
    results = _results()
    data = group["sentinel-2-l2a/data"]
    assert isinstance(data, zarr.Array)
    assert data.shape == (4, 2, 4, 24, 24)
    first = results[TILES[0].id][S2.name]
    np.testing.assert_array_equal(data[2], encode_values(first.data, S2))
    assert data[2, 0, 1, 0, 0] == -32768  # NaN -> nodata
    assert data[3, 1, 0, 5, 5] == -32768  # unused second plane of tile 1
    assert (data[0:2] == -32768).all()  # positions of shard 0 untouched
    mask = group["sentinel-2-l2a/mask"]
    assert isinstance(mask, zarr.Array)
    np.testing.assert_array_equal(mask[2], first.mask)
    assert mask[3, 1, 4, 4] == MaskBit.NODATA
    ls = group["landsat-c2-l2/data"]
    assert isinstance(ls, zarr.Array)
    assert ls.shape == (4, 1, 7, 8, 8)
    assert (ls[3] == 0).all()  # tile 1 has no Landsat stack
    assert group["sentinel-2-l2a/source_items"][2, 1] == "sentinel-2-l2a-1-1,extra-1"
    assert list(group["tiles/id"][:]) == ["", "", TILES[0].id, TILES[1].id]
    assert list(group["tiles/period"][:]) == ["", "", "2024-06", "2024-06"]
    assert list(group["tiles/epsg"][:]) == [0, 0, 32632, 32632]
    np.testing.assert_array_equal(
        group["tiles/transform"][3],
        [10.0, 0.0, 2001 * TILE_M, 0.0, -10.0, 22001 * TILE_M],
    )
    assert list(group["tiles/split"][2:4]) == ["", ""]
    np.testing.assert_array_equal(
        group["labels/corine"][2], _labels()[TILES[0].id]["corine"].raster
    )
    assert (group["labels/corine"][3] == 255).all()
    assert list(group["labels/corine_multilabel"][2]) == [1, 1, 1, 1]
    assert list(group["labels/corine_multilabel"][3]) == [255] * 4


def test_shard_reads_back_with_xarray_cf_decoding(tmp_path: Path) -> None:
    _build(tmp_path / "cube.zarr")
    first = _results()[TILES[0].id][S2.name]
    ds = xr.open_zarr(tmp_path / "cube.zarr", group=S2.name, consolidated=False)
    assert ds["data"].dims == ("tile", "time", "band", "y", "x")
    assert list(ds["band"].values) == list(S2.bands)
    values = ds["data"].isel(tile=2).values
    finite = np.isfinite(first.data)
    assert np.isnan(values[~finite]).all()
    assert np.abs(values[finite] - first.data[finite]).max() <= 0.5e-4 + 1e-7
    assert float(ds["data"].sel(band="B04")[2, 0, 3, 3]) == pytest.approx(
        float(first.data[0, 2, 3, 3]), abs=0.5e-4 + 1e-7
    )
    assert ds["mask"].dtype == np.uint8
    np.testing.assert_array_equal(ds["mask"].isel(tile=2).values, first.mask)
    assert ds["datetime"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(ds["datetime"].values[2], first.times)
    assert np.isnat(ds["datetime"].values[3, 1])
    ls = xr.open_zarr(tmp_path / "cube.zarr", group=LANDSAT.name, consolidated=False)
    assert ls["data"].sizes == {"tile": 4, "time": 1, "band": 7, "y": 8, "x": 8}
    got = ls["data"].isel(tile=2).values
    want = _results()[TILES[0].id][LANDSAT.name].data
    ok = np.isfinite(want)
    assert np.abs(got[ok] - want[ok]).max() <= 2.75e-5 / 2 + 1e-7
    assert np.isnan(ls["data"].isel(tile=3).values).all()


def test_chunks_and_shards_on_disk_follow_the_layout(tmp_path: Path) -> None:
    layout = _layout()
    _build(tmp_path / "cube.zarr", layout)
    root = tmp_path / "cube.zarr"
    for sensor in (S2, LANDSAT):
        spec = layout.array(f"{sensor.name}/data")
        meta = json.loads((root / sensor.name / "data" / "zarr.json").read_text())
        assert meta["dimension_names"] == list(spec.dims)
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == list(spec.shards or ())
        (sharding,) = meta["codecs"]
        assert sharding["configuration"]["chunk_shape"] == list(spec.chunks)
        assert meta["attributes"]["scale_factor"] == sensor.scale_factor
        assert meta["attributes"]["_FillValue"] == sensor.nodata
        # One file per shard and time plane: shard 1 only, since shard 0 was never written.
        array_dir = root / sensor.name / "data"
        files = sorted(
            p.relative_to(array_dir).as_posix() for p in array_dir.rglob("c/**/*") if p.is_file()
        )
        assert files == [f"c/1/{t}/0/0/0" for t in range(sensor.n_time)]
    mask_meta = json.loads((root / S2.name / "mask" / "zarr.json").read_text())
    assert mask_meta["attributes"]["flag_masks"] == [1, 2, 4, 8, 16, 32, 64, 128]
    root_meta = json.loads((root / "zarr.json").read_text())
    assert root_meta["attributes"] == json.loads(json.dumps(layout.root_attrs()))


def test_identical_writes_give_identical_bytes(tmp_path: Path) -> None:
    _build(tmp_path / "a.zarr")
    _build(tmp_path / "b.zarr")

    def contents(root: Path) -> dict[str, bytes]:
        files = (p for p in root.rglob("*") if p.is_file())
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}

    a, b = contents(tmp_path / "a.zarr"), contents(tmp_path / "b.zarr")
    assert len(a) > 20
    assert a == b


# ---------------------------------------------------------------------------------------------
# opening, layout checks and capacity


def test_reopening_checks_the_layout(tmp_path: Path) -> None:
    path = tmp_path / "cube.zarr"
    _build(path)
    again = open_or_create_cube(path, _layout())
    assert tile_capacity(again) == 4  # kept, not reset
    assert again["tiles/id"][2] == TILES[0].id
    longer = SensorLayout(**{**{f: getattr(S2, f) for f in S2.__slots__}, "n_time": 3})
    with pytest.raises(ConflictError, match=r"sensors\[0\]\.n_time = 2, the recipe asks for 3"):
        open_or_create_cube(path, _layout(sensors=(longer, LANDSAT)))
    with pytest.raises(ConflictError, match=r"tiles_per_shard = 2.*asks for 4.*build a new cube"):
        open_or_create_cube(path, _layout(tiles_per_shard=4))


def test_foreign_group_and_interrupted_creation(tmp_path: Path) -> None:
    foreign = zarr.open_group(tmp_path / "other.zarr", mode="w")
    foreign.create_group("something")
    with pytest.raises(ConflictError, match="not an eoforge cube"):
        open_or_create_cube(tmp_path / "other.zarr", _layout())
    # A creation that crashed before the root attributes: the next call completes it.
    half = zarr.open_group(tmp_path / "half.zarr", mode="w")
    half.create_group(S2.name)
    group = open_or_create_cube(tmp_path / "half.zarr", _layout(), n_tiles_capacity=2)
    assert group.attrs["eoforge_cube_version"] == 1
    assert tile_capacity(group) == 2
    assert list(group["sentinel-2-l2a/band"][:]) == list(S2.bands)


def test_tile_axis_grows_append_only(tmp_path: Path) -> None:
    group = _build(tmp_path / "cube.zarr")
    assert ensure_tile_capacity(group, 3) == 4  # never shrinks
    assert ensure_tile_capacity(group, 7) == 7
    assert group["landsat-c2-l2/mask"].shape == (7, 1, 8, 8)
    assert group["labels/corine_multilabel"].shape == (7, 4)
    assert group["tiles/transform"].shape == (7, 6)
    assert group["sentinel-2-l2a/band"].shape == (4,)  # not a tile-axis array
    assert group["sentinel-2-l2a/data"][2, 0, 0, 5, 5] != -32768
    # An interrupted resize left one array shorter: the next call evens them out.
    short = group["tiles/epsg"]
    assert isinstance(short, zarr.Array)
    short.resize((5,))
    assert group["tiles/epsg"].shape == (5,)
    assert ensure_tile_capacity(group, 0) == 7
    assert group["tiles/epsg"].shape == (7,)
    with pytest.raises(InvalidInputError, match=">= 0"):
        ensure_tile_capacity(group, -1)


# ---------------------------------------------------------------------------------------------
# refusals


def test_write_shard_refuses_bad_input(tmp_path: Path) -> None:
    layout = _layout()
    group = open_or_create_cube(tmp_path / "cube.zarr", layout, n_tiles_capacity=3)
    with pytest.raises(InvalidInputError, match="needs positions up to 4, the cube holds 3"):
        write_shard(group, layout, SHARD, _results())
    ensure_tile_capacity(group, 4)
    mixed = _results()
    other = mixed[TILES[1].id][S2.name]
    mixed[TILES[1].id][S2.name] = PeriodStack(**{**other.__dict__, "period_id": "2024-07"})
    with pytest.raises(InvalidInputError, match=r"one period, got \['2024-06', '2024-07'\]"):
        write_shard(group, layout, SHARD, mixed)
    wrong_bands = _results()
    ls = wrong_bands[TILES[0].id][LANDSAT.name]
    wrong_bands[TILES[0].id][LANDSAT.name] = PeriodStack(
        **{**ls.__dict__, "bands": (*ls.bands[:-1], "lwir11")}
    )
    with pytest.raises(InvalidInputError, match="are not the cube's"):
        write_shard(group, layout, SHARD, wrong_bands)
    with pytest.raises(InvalidInputError, match="not in shard s00001"):
        write_shard(group, layout, SHARD, {"32N-9999-9999": {}})
    with pytest.raises(InvalidInputError, match="sensors"):
        write_shard(group, layout, SHARD, {TILES[0].id: {"sentinel-1-rtc": ls}})
    with pytest.raises(InvalidInputError, match="period_id"):
        write_shard(group, layout, SHARD, {})
    write_shard(group, layout, SHARD, {}, period_id="2024-08")  # an empty shard is fine
    assert list(group["tiles/period"][2:4]) == ["2024-08", "2024-08"]


def test_band_order_follows_the_layout(tmp_path: Path) -> None:
    layout = _layout()
    group = open_or_create_cube(tmp_path / "cube.zarr", layout, n_tiles_capacity=4)
    stack = _results()[TILES[0].id][S2.name]
    reordered = PeriodStack(
        **{**stack.__dict__, "bands": stack.bands[::-1], "data": stack.data[:, ::-1].copy()}
    )
    write_shard(group, layout, SHARD, {TILES[0].id: {S2.name: reordered}})
    np.testing.assert_array_equal(group["sentinel-2-l2a/data"][2], encode_values(stack.data, S2))


# ---------------------------------------------------------------------------------------------
# encoding


def test_encode_rounds_half_to_even_clips_and_keeps_nodata_free() -> None:
    plain = SensorLayout(name="s", bands=("a",), resolution_m=10.0, dtype="int16",
                         nodata=-32768, scale_factor=1.0, add_offset=0.0)  # fmt: skip
    values = np.array([0.5, 1.5, 2.5, -0.5, np.nan, np.inf, 1e9, -1e9], np.float32)
    assert encode_values(values, plain).tolist() == [0, 2, 2, 0, -32768, -32768, 32767, -32767]
    zero_fill = SensorLayout(name="s", bands=("a",), resolution_m=10.0, dtype="uint16",
                             nodata=0, scale_factor=1e-4, add_offset=-0.1)  # fmt: skip
    # -0.1 encodes to 0 = nodata: moved one step up so it stays a value.
    encoded = encode_values(np.array([-0.1, -0.5, 0.0, np.nan], np.float32), zero_fill)
    assert encoded.tolist() == [1, 1, 1000, 0]
    assert encoded.dtype == np.uint16
    floats = SensorLayout(name="s", bands=("a",), resolution_m=10.0, dtype="float32",
                          nodata=float("nan"), units="dB")  # fmt: skip
    out = encode_values(np.array([-12.25, np.nan], np.float32), floats)
    assert out[0] == np.float32(-12.25) and np.isnan(out[1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-0.09375, 3.0, allow_nan=False, width=32), min_size=1, max_size=20))
def test_encoded_reflectance_decodes_within_half_a_step(values: list[float]) -> None:
    phys = np.array(values, np.float32)
    stored = encode_values(phys, S2)
    decoded = stored.astype(np.float64) * 1e-4 - 0.1
    assert np.abs(decoded - phys).max() <= 0.5e-4 + 1e-7


def test_remove_orphaned_partials_removes_only_zarrs_temporary_files(tmp_path: Path) -> None:
    import uuid

    from pipelines.write import remove_orphaned_partials

    cube = tmp_path / "cube.zarr"
    arr = zarr.create_array(str(cube), name="s2/data", shape=(4, 2), chunks=(1, 2), dtype="int16")
    arr[:] = 7
    chunk_dir = cube / "s2" / "data" / "c"
    orphans = [
        chunk_dir / f"0.{uuid.uuid4().hex}.partial",
        cube / "s2" / "data" / f"zarr.json.{uuid.uuid4().hex}.partial",
    ]
    for path in orphans:
        path.write_bytes(b"half")
    kept = [chunk_dir / "notes.partial", cube / f".{'z' * 32}.partial"]
    for path in kept:
        path.write_bytes(b"not zarr's")
    before = sorted(p for p in cube.rglob("*") if p.is_file() and p not in orphans)

    assert sorted(remove_orphaned_partials(cube)) == sorted(orphans)
    assert sorted(p for p in cube.rglob("*") if p.is_file()) == before
    np.testing.assert_array_equal(zarr.open_array(str(cube / "s2/data"))[:], np.full((4, 2), 7))
    assert remove_orphaned_partials(tmp_path / "absent.zarr") == []
