"""The cube layout contract (schemas.cube) and the tile catalog record (schemas.tile)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.metadata import ArrayV3Metadata

import schemas.tile as tile_module
from pipelines.grid import Tile
from schemas.cube import (
    DATA_DIMS,
    FLAG_BITS,
    MASK_FILL,
    NAT_INT64,
    CodecSpec,
    CubeLayout,
    LabelLayout,
    MaskBit,
    SensorLayout,
    mask_flag_attrs,
    mask_stac_bitfields,
)
from schemas.errors import InvalidInputError, NotFoundError
from schemas.tile import (
    SensorObservation,
    TileRecord,
    geoparquet_metadata,
    tile_record_arrow_schema,
)

S2 = SensorLayout(
    name="sentinel-2-l2a",
    bands=("blue", "green", "red", "nir"),
    resolution_m=10.0,
    n_time=3,
    dtype="int16",
    nodata=-32768,
    scale_factor=1e-4,
    add_offset=0.0,
    units="1",
)
LANDSAT = SensorLayout(
    name="landsat-c2-l2",
    bands=("coastal", "blue", "green", "red", "nir08", "swir16", "swir22"),
    resolution_m=30.0,
    n_time=2,
    dtype="uint16",
    nodata=0,
    scale_factor=1e-4,
)
CORINE = LabelLayout(source="corine", class_names=("urban", "agriculture", "forest", "water"))


def _layout(**overrides: object) -> CubeLayout:
    kwargs: dict[str, object] = {"tile_size_m": 1200.0, "tiles_per_shard": 4, "labels": (CORINE,)}
    kwargs.update(overrides)
    return CubeLayout.for_recipe_like([S2, LANDSAT], **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# layout as data


def test_two_sensor_layout_dims_dtypes_chunks_and_shards() -> None:
    layout = _layout()
    s2 = layout.array("sentinel-2-l2a/data")
    assert s2.dims == DATA_DIMS == ("tile", "time", "band", "y", "x")
    assert s2.dtype == "int16" and s2.fill_value == -32768
    assert s2.chunks == (1, 1, 4, 120, 120)
    assert s2.shards == (4, 1, 4, 120, 120)
    assert s2.shape(10) == (10, 3, 4, 120, 120)
    assert s2.attributes()["scale_factor"] == 1e-4 and s2.attributes()["_FillValue"] == -32768
    ls = layout.array("landsat-c2-l2/data")
    assert ls.chunks == (1, 1, 7, 40, 40)
    assert ls.shards == (4, 1, 7, 40, 40)
    assert ls.dtype == "uint16" and ls.fill_value == 0
    assert "add_offset" not in ls.attributes()  # None values are left out
    mask = layout.array("landsat-c2-l2/mask")
    assert mask.dims == ("tile", "time", "y", "x")
    assert (mask.dtype, mask.fill_value, mask.chunks) == ("uint8", 64, (1, 1, 40, 40))
    assert mask.shards == (4, 1, 40, 40)
    times = layout.array("sentinel-2-l2a/datetime")
    assert (times.dims, times.dtype, times.fill_value) == (("tile", "time"), "int64", NAT_INT64)
    assert times.chunks == (4, 3) and times.shards is None
    assert times.attributes()["units"] == "nanoseconds since 1970-01-01"
    items = layout.array("landsat-c2-l2/source_items")
    assert (items.dims, items.dtype, items.fixed_shape) == (("tile", "time"), "str", (2,))
    labels = layout.array("labels/corine")
    assert (labels.dims, labels.chunks, labels.shards) == (
        ("tile", "y", "x"),
        (1, 120, 120),
        (4, 120, 120),
    )
    multi = layout.array("labels/corine_multilabel")
    assert multi.dims == ("tile", "corine_class") and multi.fixed_shape == (4,)
    transform = layout.array("tiles/transform")
    assert transform.dims == ("tile", "affine") and transform.chunks == (4, 6)
    assert layout.reference_resolution_m == 10.0
    assert layout.groups == ("sentinel-2-l2a", "landsat-c2-l2", "labels", "tiles")
    assert [a.path for a in layout.arrays if a.group == "tiles"] == [
        "tiles/id",
        "tiles/period",
        "tiles/epsg",
        "tiles/transform",
        "tiles/split",
    ]


def test_layout_pixel_shape_matches_the_grid_tile_shape() -> None:
    layout = _layout()
    tile = Tile(32, "N", 345, 5670, layout.tile_size_m)
    for sensor in layout.sensors:
        spec = layout.array(f"{sensor.name}/data")
        assert spec.fixed_shape[-2:] == tile.shape(sensor.resolution_m)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size_m": 1000.0}, r"1000 m is not divisible by resolution 30 m"),
        ({"tiles_per_shard": 0}, "tiles_per_shard must be >= 1"),
        ({"labels": (CORINE, CORINE)}, "duplicate label sources"),
    ],
)
def test_layout_rejects_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        _layout(**kwargs)


def test_sensor_and_label_validation() -> None:
    with pytest.raises(InvalidInputError, match="duplicate sensor"):
        CubeLayout.for_recipe_like([S2, S2], tile_size_m=1200.0, tiles_per_shard=4)
    with pytest.raises(InvalidInputError, match="cannot be a cube group"):
        SensorLayout(name="tiles", bands=("a",), resolution_m=10.0)
    with pytest.raises(InvalidInputError, match="cannot be a cube group"):
        SensorLayout(name="s2/data", bands=("a",), resolution_m=10.0)
    with pytest.raises(InvalidInputError, match="does not fit uint16"):
        SensorLayout(name="s2", bands=("a",), resolution_m=10.0, dtype="uint16", nodata=-1)
    with pytest.raises(InvalidInputError, match="NaN nodata needs a float"):
        SensorLayout(name="s2", bands=("a",), resolution_m=10.0, nodata=math.nan)
    with pytest.raises(InvalidInputError, match="unique"):
        SensorLayout(name="s2", bands=("a", "a"), resolution_m=10.0)
    with pytest.raises(InvalidInputError, match="collides with class index 1"):
        LabelLayout(source="osm", class_names=("a", "b", "c"), nodata=1)
    with pytest.raises(InvalidInputError, match="different resolutions"):
        _layout(labels=(CORINE, LabelLayout(source="osm", class_names=("a",), resolution_m=30.0)))


def test_lookups_and_shard_positions() -> None:
    layout = _layout()
    with pytest.raises(NotFoundError, match="no array 'sentinel-2-l2a/nope'"):
        layout.array("sentinel-2-l2a/nope")
    assert layout.sensor("landsat-c2-l2") == LANDSAT
    corine = layout.label("corine")  # CORINE with the grid's resolution filled in
    assert (corine.source, corine.class_names) == (CORINE.source, CORINE.class_names)
    assert corine.resolution_m == 10.0
    with pytest.raises(NotFoundError, match="no labels 'osm'"):
        layout.label("osm")
    assert layout.shard_positions(3) == range(12, 16)
    assert [layout.first_free_shard(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    assert layout.group_attrs("landsat-c2-l2")["pixels_per_tile"] == 40
    assert layout.group_attrs("labels")["resolution_m"] == 10.0
    assert layout.group_attrs("tiles") == {"transform_resolution_m": 10.0}


def test_root_attrs_are_json_and_rebuild_the_same_layout() -> None:
    float_sensor = SensorLayout(
        name="sentinel-1-rtc",
        bands=("vv", "vh"),
        resolution_m=20.0,
        dtype="float32",
        nodata=math.nan,
    )
    layout = CubeLayout.for_recipe_like(
        [S2, LANDSAT, float_sensor],
        tile_size_m=1200.0,
        tiles_per_shard=16,
        codec=CodecSpec.zstd(5),
        labels=(CORINE,),
    )
    attrs = json.loads(json.dumps(layout.root_attrs(), allow_nan=False))
    rebuilt = CubeLayout.from_root_attrs(attrs)
    assert rebuilt == layout
    assert hash(rebuilt) == hash(layout)
    assert math.isnan(rebuilt.sensor("sentinel-1-rtc").nodata)
    assert rebuilt.codec == CodecSpec(name="zstd", level=5, shuffle="noshuffle")
    assert [a.path for a in rebuilt.arrays] == [a.path for a in layout.arrays]
    with pytest.raises(InvalidInputError, match="version"):
        CubeLayout.from_root_attrs({**attrs, "eoforge_cube_version": 99})


# ---------------------------------------------------------------------------------------------
# mask bits and codecs


def test_mask_bits_are_single_distinct_uint8_bits() -> None:
    assert {b.name: int(b) for b in MaskBit} == {
        "VALID": 1,
        "CLOUD": 2,
        "SHADOW": 4,
        "SNOW": 8,
        "CIRRUS": 16,
        "HAZE": 32,
        "NODATA": 64,
        "SATURATED": 128,
    }
    assert MASK_FILL == MaskBit.NODATA
    combined = MaskBit.CLOUD | MaskBit.SHADOW
    assert np.uint8(combined) & MaskBit.SHADOW and not np.uint8(combined) & MaskBit.VALID
    attrs = mask_flag_attrs()
    assert attrs["flag_masks"] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert attrs["flag_meanings"].split() == [
        "valid",
        "cloud",
        "shadow",
        "snow",
        "cirrus",
        "haze",
        "nodata",
        "saturated",
    ]
    fields = mask_stac_bitfields()
    assert [(f["name"], f["offset"], f["length"]) for f in fields][:2] == [
        ("valid", 0, 1),
        ("cloud", 1, 1),
    ]
    assert fields[-1]["offset"] == 7 and fields[-1]["classes"][1] == {
        "value": 1,
        "name": "saturated",
    }


def test_flag_bits_cover_every_qa_flag_plane() -> None:
    qa = pytest.importorskip("schemas.qa")
    assert set(FLAG_BITS) == set(qa.QA_FLAGS)
    assert MaskBit.VALID not in FLAG_BITS.values()


def test_codec_spec_validation_and_zarr_codecs() -> None:
    (default,) = CodecSpec().zarr_compressors()
    assert isinstance(default, BloscCodec)
    assert (default.cname.value, default.clevel, default.shuffle.value) == ("lz4", 5, "bitshuffle")
    (one_byte,) = CodecSpec().zarr_compressors(itemsize=1)  # masks, labels: no bit-shuffle
    assert (one_byte.cname.value, one_byte.shuffle.value) == ("lz4", "noshuffle")
    (two_bytes,) = CodecSpec().zarr_compressors(itemsize=2)
    assert two_bytes.shuffle.value == "bitshuffle"
    (zstd,) = CodecSpec.zstd(7).zarr_compressors()
    assert isinstance(zstd, ZstdCodec) and zstd.level == 7
    assert CodecSpec.from_dict(CodecSpec("blosc-zstd", 3, "shuffle").to_dict()) == CodecSpec(
        "blosc-zstd", 3, "shuffle"
    )
    with pytest.raises(InvalidInputError, match="level 10 is out of range"):
        CodecSpec(level=10)
    with pytest.raises(InvalidInputError, match="no shuffle"):
        CodecSpec(name="zstd", level=3, shuffle="bitshuffle")


# ---------------------------------------------------------------------------------------------
# real zarr v3 arrays from the specs


def _create_all(root: Path, layout: CubeLayout, n_tiles: int) -> zarr.Group:
    group = zarr.open_group(root, mode="w", zarr_format=3, attributes=layout.root_attrs())
    for name in layout.groups:
        group.create_group(name, attributes=layout.group_attrs(name))
    for spec in layout.arrays:
        zarr.create_array(group.store, **spec.zarr_create_kwargs(n_tiles))
    return group


def _arr(group: zarr.Group, path: str) -> zarr.Array[Any]:
    array = group[path]
    assert isinstance(array, zarr.Array)
    return array


def test_zarr_arrays_from_specs_have_the_chunks_shards_and_codecs(tmp_path: Path) -> None:
    layout = _layout()
    n_tiles = 10  # K = 4: two full shards and a partial one
    group = _create_all(tmp_path / "cube.zarr", layout, n_tiles)
    data = _arr(group, "sentinel-2-l2a/data")
    assert isinstance(data, zarr.Array)
    assert data.shape == (10, 3, 4, 120, 120)
    assert data.chunks == (1, 1, 4, 120, 120) and data.shards == (4, 1, 4, 120, 120)
    (codec,) = data.compressors
    assert isinstance(codec, BloscCodec) and codec.cname.value == "lz4"
    assert codec.shuffle.value == "bitshuffle"
    (mask_codec,) = _arr(group, "sentinel-2-l2a/mask").compressors
    assert isinstance(mask_codec, BloscCodec) and mask_codec.shuffle.value == "noshuffle"
    assert isinstance(data.metadata, ArrayV3Metadata)
    assert data.metadata.dimension_names == DATA_DIMS
    # never-written planes read as the fills
    assert data[9, 2, 0, 0, 0] == -32768
    assert _arr(group, "sentinel-2-l2a/mask")[9, 2, 0, 0] == MaskBit.NODATA
    # value-encoded pixels round-trip through one shard (tiles 4..7, time 1)
    values = (np.arange(4 * 4 * 120 * 120) % 20011).astype(np.int16).reshape(4, 4, 120, 120)
    data[4:8, 1] = values
    np.testing.assert_array_equal(data[4:8, 1], values)
    shard_files = sorted(
        p.relative_to(tmp_path / "cube.zarr/sentinel-2-l2a/data").as_posix()
        for p in (tmp_path / "cube.zarr/sentinel-2-l2a/data").rglob("c/*/*/*/*/*")
    )
    assert shard_files == ["c/1/1/0/0/0"]  # one file for the whole shard
    ls = _arr(group, "landsat-c2-l2/data")
    assert isinstance(ls, zarr.Array)
    assert ls.chunks == (1, 1, 7, 40, 40) and ls.shards == (4, 1, 7, 40, 40)
    strings = _arr(group, "sentinel-2-l2a/source_items")
    strings[0, 0] = "S2A_32TMT_20240501_0_L2A,S2B_32TMT_20240501_0_L2A"
    assert strings[0, 0] == "S2A_32TMT_20240501_0_L2A,S2B_32TMT_20240501_0_L2A"
    assert strings[1, 0] == ""


def test_zstd_codec_reaches_the_array(tmp_path: Path) -> None:
    layout = _layout(codec=CodecSpec.zstd(3))
    group = _create_all(tmp_path / "z.zarr", layout, 4)
    (codec,) = _arr(group, "landsat-c2-l2/mask").compressors
    assert isinstance(codec, ZstdCodec) and codec.level == 3


def test_xarray_reads_the_cube_with_cf_decoding(tmp_path: Path) -> None:
    layout = _layout()
    group = _create_all(tmp_path / "cube.zarr", layout, 4)
    _arr(group, "sentinel-2-l2a/band")[:] = np.array(S2.bands)
    _arr(group, "sentinel-2-l2a/data")[0, 0, 2] = 1234
    _arr(group, "sentinel-2-l2a/mask")[0, 0] = MaskBit.VALID | MaskBit.SNOW
    when = np.datetime64("2024-05-01T10:30:00", "ns")
    _arr(group, "sentinel-2-l2a/datetime")[0, 0] = when.astype(np.int64)
    ds = xr.open_zarr(tmp_path / "cube.zarr", group="sentinel-2-l2a", consolidated=False)
    assert ds["data"].dims == DATA_DIMS
    assert float(ds["data"].sel(band="red")[0, 0, 5, 5]) == pytest.approx(0.1234)
    assert np.isnan(ds["data"].sel(band="red")[1, 0, 5, 5])  # fill -> NaN via _FillValue
    assert ds["mask"].dtype == np.uint8  # the bitmask is not CF-masked into floats
    assert int(ds["mask"][0, 0, 0, 0]) == 9 and int(ds["mask"][1, 0, 0, 0]) == 64
    assert ds["datetime"].dtype == np.dtype("datetime64[ns]")
    assert ds["datetime"].values[0, 0] == when and np.isnat(ds["datetime"].values[0, 1])


# ---------------------------------------------------------------------------------------------
# tile catalog record


def _record(**overrides: object) -> TileRecord:
    tile = Tile(32, "N", 345, 5670, 1200.0)
    footprint = tile.footprint_wgs84()
    kwargs: dict[str, object] = {
        "tile_id": tile.id,
        "period_id": "2024-05",
        "period_start": datetime(2024, 5, 1, tzinfo=UTC),
        "period_end": datetime(2024, 5, 31, 23, 59, 59, tzinfo=UTC),
        "epsg": tile.epsg,
        "transform": tuple(tile.transform(10.0))[:6],
        "proj_bbox": tile.bounds,
        "geometry_wkb": shapely.to_wkb(footprint),
        "bbox": footprint.bounds,
        "cube_position": 17,
        "shard_id": "s00004",
        "sensors": (
            SensorObservation(
                sensor="sentinel-2-l2a",
                datetimes=(datetime(2024, 5, 3, 10, 20, 31, 24000, tzinfo=UTC),),
                item_ids=("S2A_32VNM_20240503_0_L2A",),
                cloud_fraction=0.125,
                valid_fraction=0.8,
            ),
            SensorObservation(
                sensor="landsat-c2-l2",
                datetimes=(
                    datetime(2024, 5, 4, 10, 1, tzinfo=UTC),
                    datetime(2024, 5, 20, 10, 1, tzinfo=UTC),
                ),
                item_ids=("LC09_L2SP_196018_20240504_02_T1", "LC08_L2SP_196018_20240520_02_T1"),
                cloud_fraction=None,
                valid_fraction=0.5,
                shift_dy_m=-3.5,
                shift_dx_m=4.25,
                shift_applied=True,
            ),
        ),
        "split": None,
        "class_fractions": {"corine": {"forest": 0.75, "water": 0.25}},
        "multilabels": {"corine": ("forest", "water")},
    }
    kwargs.update(overrides)
    return TileRecord(**kwargs)  # type: ignore[arg-type]


def test_arrow_schema_accepts_records_and_round_trips(tmp_path: Path) -> None:
    records = [_record(), _record(cube_position=18, split="train", class_fractions={}, sensors=())]
    schema = tile_record_arrow_schema()
    assert tile_module.TILE_RECORD_ARROW_SCHEMA is schema
    table = pa.Table.from_pylist([r.to_arrow_row() for r in records], schema=schema)
    assert table.column("id").to_pylist() == ["32N-0345-5670_2024-05"] * 2
    assert table.column("bbox").type.names == ["xmin", "ymin", "xmax", "ymax"]
    pq.write_table(table, tmp_path / "part-0.parquet")
    back = pq.read_table(tmp_path / "part-0.parquet")
    assert back.schema.equals(schema)  # (map entry names differ only in field metadata)
    assert back.schema.metadata == schema.metadata
    assert json.loads(back.schema.metadata[b"geo"]) == geoparquet_metadata()
    rows = back.to_pylist()
    assert [TileRecord.from_arrow_row(row) for row in rows] == records
    footprint = shapely.from_wkb(rows[0]["geometry"])
    assert footprint.bounds == pytest.approx(tuple(rows[0]["bbox"].values()))
    assert rows[0]["sensors"][1]["shift_dx_m"] == 4.25


def test_record_keeps_utc_and_rejects_bad_values() -> None:
    cet = timezone(timedelta(hours=2))
    rec = _record(period_start=datetime(2024, 5, 1, 2, 0, tzinfo=cet))
    row = pa.Table.from_pylist([rec.to_arrow_row()], schema=tile_record_arrow_schema()).to_pylist()
    assert row[0]["start_datetime"] == datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
    with pytest.raises(InvalidInputError, match="no time zone"):
        _record(period_start=datetime(2024, 5, 1))
    with pytest.raises(InvalidInputError, match="before period_start"):
        _record(period_end=datetime(2024, 4, 1, tzinfo=UTC))
    with pytest.raises(InvalidInputError, match=r"valid_fraction 1\.5 is not in \[0, 1\]"):
        SensorObservation("s2", (), (), None, 1.5)
    with pytest.raises(InvalidInputError, match="both shift components"):
        SensorObservation("s2", (), (), 0.1, 0.5, shift_dy_m=1.0)
    with pytest.raises(InvalidInputError, match="class fraction corine/forest"):
        _record(class_fractions={"corine": {"forest": -0.1}})
    with pytest.raises(InvalidInputError, match="split must be None"):
        _record(split="")
