"""CorineReader: vector and raster CLC sources on exact tile grids, errors, and bounded reads."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_bounds

from pipelines.grid import Tile, shards
from pipelines.labels.base import LABEL_NODATA, LabelReader
from pipelines.labels.corine import CorineReader, decide_coding
from pipelines.labels.nomenclature import CLC_CLASSES, raster_lut
from schemas.errors import InvalidInputError, NotFoundError
from schemas.recipe_labels import CorineLabels, CorineRasterCoding

RES = 10.0
#: A tile in zone 32 near 12 E / 48 N (where the tiny archive lies) and one in zone 33, 5 km
#: further north (tiles of both zones overlap at the seam; these two do not).
TILE = Tile(32, "N", 602, 4430, 1200.0)
TILE33 = Tile(33, "N", 229, 4434, 1200.0)


def _apply(tr: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tr`` applied to coordinate arrays."""
    return tr.a * x + tr.b * y + tr.c, tr.d * x + tr.e * y + tr.f


def _origin(left: float, top: float, xres: float, yres: float) -> Affine:
    """North-up transform (rasterio's ``from_origin`` without affine's ``*`` deprecation)."""
    return Affine(xres, 0.0, left, 0.0, -yres, top)


def _to_3035(geoms: list[Any], epsg: int) -> list[Any]:
    tr = Transformer.from_crs(epsg, 3035, always_xy=True)

    def xy(c: np.ndarray) -> np.ndarray:
        x, y = tr.transform(c[:, 0], c[:, 1])
        return np.column_stack([x, y])

    return [shapely.transform(shapely.segmentize(g, 10.0), xy) for g in geoms]


def _squares(tile: Tile) -> tuple[list[Any], list[str], np.ndarray]:
    """Squares on ``tile`` (edges 2.5 m off the 10 m lattice) and the raster they must give."""
    minx, _, _, maxy = tile.bounds
    # (code, col0, row0, col1, row1) in 10 m pixels of the tile; edges at +0.25 px.
    spec = [("211", 0, 0, 60, 120), ("311", 60, 0, 120, 60), ("999", 60, 60, 90, 90)]
    spec += [("122", 90, 60, 120, 90)]  # dropped by BigEarthNet-19; rows 90..119 of x>=60 empty
    geoms, codes = [], []
    expected = np.full((120, 120), LABEL_NODATA, dtype=np.uint8)
    grid = {c.code: c.grid_code for c in CLC_CLASSES}
    for code, c0, r0, c1, r1 in spec:
        e0 = 0.25 if c0 else -1.0  # the tile's outer edges: extend past them
        s0 = 0.25 if r0 else -1.0
        e1 = 0.25 if c1 < 120 else 1.0
        s1 = 0.25 if r1 < 120 else 1.0
        geoms.append(
            shapely.box(
                minx + (c0 + e0) * RES,
                maxy - (r1 + s1) * RES,
                minx + (c1 + e1) * RES,
                maxy - (r0 + s0) * RES,
            )
        )
        codes.append(code)
        # Centres (k + 0.5) inside (c0 + 0.25, c1 + 0.25): columns c0 .. c1 - 1; rows alike.
        expected[r0:r1, c0:c1] = 0 if code == "999" else grid[code]
    return geoms, codes, expected


def _write(path: Path, geoms: list[Any], values: dict[str, list[Any]], crs: int = 3035) -> Path:
    gdf = gpd.GeoDataFrame(values, geometry=geoms, crs=f"EPSG:{crs}")
    if path.suffix == ".parquet":
        gdf.to_parquet(path)
    else:
        pyogrio.write_dataframe(gdf, path, layer="corine" if path.suffix == ".gpkg" else None)
    return path


@pytest.fixture(scope="module")
def squares_gpkg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    geoms, codes, expected = _squares(TILE)
    path = tmp_path_factory.mktemp("corine") / "squares.gpkg"
    return _write(path, _to_3035(geoms, TILE.epsg), {"Code_18": codes}), expected


def _reader(path: Path | str, **kw: Any) -> CorineReader:
    return CorineReader(CorineLabels(kind="corine", path=str(path), **kw))


# -- vector ------------------------------------------------------------------------------------


def test_reader_follows_the_label_reader_protocol(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    reader: LabelReader = _reader(squares_gpkg[0])
    assert reader.unlabeled_index == 0
    assert len(reader.class_names) == 45 and reader.class_names[0] == "UNLABELED"
    assert len(_reader(squares_gpkg[0], nomenclature="bigearthnet19").class_names) == 20


def test_vector_burns_pixel_centres_on_the_exact_tile_grid(
    squares_gpkg: tuple[Path, np.ndarray],
) -> None:
    path, expected = squares_gpkg
    out = _reader(path).rasterize([TILE], RES)
    assert set(out) == {TILE.id}
    got = out[TILE.id]
    assert got.dtype == np.uint8 and got.shape == (120, 120)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0] == 12 and got[0, 119] == 23 and got[70, 70] == 0 and got[70, 100] == 4
    assert got[119, 119] == LABEL_NODATA  # outside every polygon


def test_vector_bigearthnet19_maps_and_drops(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    path, expected = squares_gpkg
    got = _reader(path, nomenclature="bigearthnet19").rasterize([TILE], RES)[TILE.id]
    # 211 -> Arable land (3), 311 -> Broad-leaved forest (9), 999 and 122 -> UNLABELED (0).
    remap = {12: 3, 23: 9, 0: 0, 4: 0, LABEL_NODATA: LABEL_NODATA}
    np.testing.assert_array_equal(got, np.vectorize(remap.__getitem__)(expected).astype(np.uint8))


def test_vector_all_touched_grows_polygons(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    path, expected = squares_gpkg
    got = _reader(path, all_touched=True).rasterize([TILE], RES)[TILE.id]
    # Each square now also takes the pixel column/row its +0.25 px edges cut into.
    assert (got != LABEL_NODATA).sum() > (expected != LABEL_NODATA).sum()
    assert got[119, 60] == 12  # the arable square's east edge touches column 60
    assert got[119, 119] == LABEL_NODATA


def test_tiles_of_both_zones_and_resolutions(tmp_path: Path) -> None:
    geoms32, codes32, exp32 = _squares(TILE)
    geoms33, codes33, exp33 = _squares(TILE33)
    path = _write(
        tmp_path / "two.gpkg",
        _to_3035(geoms32, 32632) + _to_3035(geoms33, 32633),
        {"Code_18": codes32 + codes33},
    )
    reader = _reader(path)
    out = reader.rasterize([TILE, TILE33], RES)
    np.testing.assert_array_equal(out[TILE.id], exp32)
    np.testing.assert_array_equal(out[TILE33.id], exp33)
    assert reader.features_read == 8
    coarse = reader.rasterize([TILE33], 20.0)[TILE33.id]
    assert coarse.shape == (60, 60)
    assert coarse[0, 0] == 12 and coarse[0, 59] == 23


def test_integer_codes_are_accepted(tmp_path: Path) -> None:
    geoms, codes, expected = _squares(TILE)
    path = _write(
        tmp_path / "int.fgb", _to_3035(geoms, TILE.epsg), {"CODE": [int(c) for c in codes]}
    )
    got = _reader(path, code_field="CODE").rasterize([TILE], RES)[TILE.id]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("suffix", [".fgb", ".shp", ".parquet", ".geojson"])
def test_other_vector_formats_give_the_same_raster(tmp_path: Path, suffix: str) -> None:
    geoms, codes, expected = _squares(TILE)
    path = _write(tmp_path / f"clc{suffix}", _to_3035(geoms, TILE.epsg), {"Code_18": codes})
    got = _reader(path).rasterize([TILE], RES)[TILE.id]
    np.testing.assert_array_equal(got, expected)


def test_a_tile_without_polygons_is_all_nodata(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    far = Tile(32, "N", 700, 4430, 1200.0)
    reader = _reader(squares_gpkg[0])
    out = reader.rasterize([far], RES)
    assert reader.features_read == 0
    assert (out[far.id] == LABEL_NODATA).all()
    assert reader.rasterize([], RES) == {}


# -- errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    for name in ("nope.gpkg", "nope.tif"):
        path = tmp_path / name
        with pytest.raises(NotFoundError, match="not found") as err:
            _reader(path)
        assert err.value.where == str(path)
        assert err.value.fix is not None and "labels[].path" in err.value.fix


def test_missing_layer_lists_the_layers(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(NotFoundError, match="layer 'clc' not found; the file has: corine") as err:
        _reader(squares_gpkg[0], layer="clc")
    assert err.value.where is not None and "labels[].layer" in err.value.where


def test_missing_code_field_lists_the_fields(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(InvalidInputError, match="attribute 'Code_12' not found") as err:
        _reader(squares_gpkg[0], code_field="Code_12")
    assert "Code_18" in err.value.what
    assert err.value.where is not None and str(squares_gpkg[0]) in err.value.where
    assert err.value.fix is not None and "code_field" in err.value.fix
    with pytest.raises(InvalidInputError, match="did you mean 'Code_18'"):
        _reader(squares_gpkg[0], code_field="code_18")


def test_codes_that_are_not_clc_codes_raise(tmp_path: Path) -> None:
    geoms, _, _ = _squares(TILE)
    path = _write(
        tmp_path / "bad.gpkg", _to_3035(geoms, TILE.epsg), {"Code_18": ["211", "abc", "100", None]}
    )
    reader = _reader(path)  # codes are checked on what a read returns, not up front
    with pytest.raises(InvalidInputError, match="not CLC level-3 codes") as err:
        reader.rasterize([TILE], RES)
    assert "'100'" in err.value.what and "'abc'" in err.value.what and "None" in err.value.what
    assert "'211'" not in err.value.what
    assert err.value.where is not None and "Code_18" in err.value.where


def test_file_without_crs_raises(tmp_path: Path) -> None:
    geoms, codes, _ = _squares(TILE)
    gdf = gpd.GeoDataFrame({"Code_18": codes}, geometry=geoms)  # no CRS
    path = tmp_path / "nocrs.gpkg"
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        pyogrio.write_dataframe(gdf, path)
    with pytest.raises(InvalidInputError, match="no CRS"):
        _reader(path)


def test_resolution_must_divide_the_tile(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(InvalidInputError):
        _reader(squares_gpkg[0]).rasterize([TILE], 7.0)


# -- raster -------------------------------------------------------------------------------------

#: CLC raster pixel size (the real product: 100 m, EPSG:3035, origin on multiples of 100 m).
CLC_RES = 100.0


def _clc_raster(
    path: Path, coding: str, *, nodata: int | None, tiles: tuple[Tile, ...] = (TILE, TILE33)
) -> tuple[np.ndarray, Any]:
    """A CLC-style raster in EPSG:3035 covering ``tiles``; returns (grid codes, transform).

    Pixel (r, c) holds grid code ``(r * 7 + c) % 44 + 1``; the first 3x3 block under each tile
    holds 48 (code 999) and the last row (600 m or more from the tiles) holds the declared nodata
    (or 0 when there is none).
    """
    boxes = [transform_bounds(t.crs, "EPSG:3035", *t.bounds, densify_pts=21) for t in tiles]
    left = np.floor(min(b[0] for b in boxes) / CLC_RES) * CLC_RES - 600
    top = np.ceil(max(b[3] for b in boxes) / CLC_RES) * CLC_RES + 600
    right = max(b[2] for b in boxes) + 600
    bottom = min(b[1] for b in boxes) - 600
    width, height = int((right - left) / CLC_RES) + 1, int((top - bottom) / CLC_RES) + 1
    rr, cc = np.mgrid[0:height, 0:width]
    grid = ((rr * 7 + cc) % 44 + 1).astype(np.int64)
    for b in boxes:
        r0, c0 = int((top - b[3]) // CLC_RES) + 2, int((b[0] - left) // CLC_RES) + 2
        grid[r0 : r0 + 3, c0 : c0 + 3] = 48
    transform = _origin(left, top, CLC_RES, CLC_RES)
    codes = {c.grid_code: int(c.code) for c in CLC_CLASSES} | {48: 999}
    if coding == "grid_code":
        data, dtype = grid.copy(), "uint8"
    else:
        data, dtype = np.vectorize(codes.__getitem__)(grid), "uint16"
    data[-1, :] = 0 if nodata is None else nodata
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype=dtype,
        crs="EPSG:3035",
        transform=transform,
        nodata=nodata,
    ) as ds:
        ds.write(data.astype(dtype), 1)
    grid[-1, :] = -1  # marks the nodata row
    return grid, transform


def _expected_from_raster(grid: np.ndarray, transform: Any, tile: Tile, lut: np.ndarray) -> Any:
    """Expected labels: the source pixel under each label pixel centre (exact pyproj maths)."""
    n = tile.shape(RES)[0]
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    xs, ys = _apply(tile.transform(RES), jj + 0.5, ii + 0.5)
    x, y = Transformer.from_crs(tile.epsg, 3035, always_xy=True).transform(xs, ys)
    fc, fr = _apply(~transform, x, y)
    c, r = np.floor(fc).astype(int), np.floor(fr).astype(int)
    value = grid[r, c]
    expected = np.where(value < 0, LABEL_NODATA, lut[np.clip(value, 0, None)]).astype(np.uint8)
    # Label centres within 0.5 m of a source pixel edge may fall either way (rounding in the
    # projection); everything else must match exactly.
    edge = np.minimum.reduce([fc % 1, 1 - fc % 1, fr % 1, 1 - fr % 1]) * CLC_RES
    return expected, edge >= 0.5


@pytest.mark.parametrize(
    ("coding", "nodata"),
    [("grid_code", 0), ("grid_code", 255), ("grid_code", None), ("code", 65535), ("code", 0)],
)
@pytest.mark.parametrize("declared", ["auto", "explicit"])
def test_raster_maps_values_and_nodata_and_geolocates(
    tmp_path: Path, coding: str, nodata: int | None, declared: str
) -> None:
    path = tmp_path / "clc.tif"
    grid, transform = _clc_raster(path, coding, nodata=nodata)
    for nomenclature in ("clc44", "bigearthnet19"):
        reader = _reader(
            path,
            nomenclature=nomenclature,
            raster_coding=coding if declared == "explicit" else "auto",
        )
        out = reader.rasterize([TILE, TILE33], RES)
        assert reader.coding == CorineRasterCoding(coding)
        lut = raster_lut(nomenclature, "grid_code").astype(np.int64)
        for tile in (TILE, TILE33):
            expected, sure = _expected_from_raster(grid, transform, tile, lut)
            got = out[tile.id]
            assert got.shape == (120, 120) and got.dtype == np.uint8
            assert sure.mean() > 0.95
            np.testing.assert_array_equal(got[sure], expected[sure])
            assert (got == 0).sum() >= 200  # the 48 block: UNLABELED
            assert (got != LABEL_NODATA).all()  # the tiles lie inside the raster


def test_raster_clc_nodata_is_unlabeled_and_declared_nodata_is_255(tmp_path: Path) -> None:
    # A raster covering only the southern half of TILE: west half 48 (code 999), east half
    # 23 (311), its 3 southern rows the declared nodata (0).
    box = transform_bounds(TILE.crs, "EPSG:3035", *TILE.bounds, densify_pts=21)
    left = np.floor(box[0] / CLC_RES) * CLC_RES - 300
    top = np.floor((box[1] + box[3]) / 2 / CLC_RES) * CLC_RES
    width, height = int((box[2] - left) / CLC_RES) + 4, int((top - box[1]) / CLC_RES) + 4
    grid = np.full((height, width), 23, dtype=np.int64)
    grid[:, : width // 2] = 48
    grid[-3:, :] = -1
    transform = _origin(left, top, CLC_RES, CLC_RES)
    path = tmp_path / "half.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint8",
        crs="EPSG:3035",
        transform=transform,
        nodata=0,
    ) as ds:
        ds.write(np.where(grid < 0, 0, grid).astype(np.uint8), 1)
    got = _reader(path).rasterize([TILE], RES)[TILE.id]
    # Expected from exact maths where the raster is; beyond it (north half) 255.
    n = 120
    jj, ii = np.meshgrid(np.arange(n), np.arange(n))
    xs, ys = _apply(TILE.transform(RES), jj + 0.5, ii + 0.5)
    x, y = Transformer.from_crs(TILE.epsg, 3035, always_xy=True).transform(xs, ys)
    fc, fr = _apply(~transform, x, y)
    c, r = np.floor(fc).astype(int), np.floor(fr).astype(int)
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    value = np.where(inside, grid[np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)], -1)
    expected = np.select([value == 48, value == 23], [0, 23], LABEL_NODATA).astype(np.uint8)
    edge = np.minimum.reduce([fc % 1, 1 - fc % 1, fr % 1, 1 - fr % 1]) * CLC_RES
    sure = edge >= 0.5
    np.testing.assert_array_equal(got[sure], expected[sure])
    counts = {v: int((got == v).sum()) for v in (0, 23, LABEL_NODATA)}
    assert min(counts.values()) > 1000, counts  # all three occur: UNLABELED, class, no data
    assert (got[:50] == LABEL_NODATA).all()  # the northern part lies beyond the raster


def test_raster_known_pixel_lands_where_expected(tmp_path: Path) -> None:
    # A raster of 211 (arable) with one 100 m pixel of 512 (water bodies).
    minx, _, _, maxy = TILE.bounds
    cx, cy = minx + 600.0, maxy - 600.0  # the tile centre
    x, y = Transformer.from_crs(TILE.epsg, 3035, always_xy=True).transform(cx, cy)
    left, top = np.floor(x / CLC_RES) * CLC_RES - 1000, np.ceil(y / CLC_RES) * CLC_RES + 1000
    data = np.full((21, 21), 211, dtype=np.uint16)
    col, row = int((x - left) // CLC_RES), int((top - y) // CLC_RES)
    data[row, col] = 512
    path = tmp_path / "one.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=21,
        height=21,
        count=1,
        dtype="uint16",
        crs="EPSG:3035",
        transform=_origin(left, top, CLC_RES, CLC_RES),
    ) as ds:
        ds.write(data, 1)
    got = _reader(path).rasterize([TILE], RES)[TILE.id]
    water = np.argwhere(got == 41)  # 512 = grid code 41
    assert 80 <= len(water) <= 120  # one 100 m pixel = ~100 label pixels (rotated a little)
    # The water pixel's centre in the tile: its label pixels sit around it.
    pcx, pcy = Transformer.from_crs(3035, TILE.epsg, always_xy=True).transform(
        left + (col + 0.5) * CLC_RES, top - (row + 0.5) * CLC_RES
    )
    centre_rc = np.array([(maxy - pcy) / RES - 0.5, (pcx - minx) / RES - 0.5])
    np.testing.assert_allclose(water.mean(axis=0), centre_rc, atol=0.6)
    assert set(np.unique(got).tolist()) == {12, 41}


def test_raster_bad_values_raise(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    _clc_raster(path, "grid_code", nodata=None)  # last row 0, not declared nodata
    south = Tile(32, "N", 602, 4429, 1200.0)  # reaches the last row (0, not declared nodata)
    with rasterio.open(path) as ds:
        assert ds.nodata is None
    with pytest.raises(InvalidInputError, match=r"raster values 0 are not grid codes") as err:
        _reader(path, raster_coding="grid_code").rasterize([TILE, south], RES)
    assert err.value.where is not None and str(path) in err.value.where
    with pytest.raises(InvalidInputError, match="3-digit CLC codes"):
        _reader(path, raster_coding="code").rasterize([TILE], RES)


def test_decide_coding() -> None:
    assert decide_coding(np.array([1, 12, 48])) is CorineRasterCoding.GRID_CODE
    assert decide_coding(np.array([211, 999])) is CorineRasterCoding.CODE
    assert decide_coding(np.array([], dtype=np.int64)) is None
    assert decide_coding(np.array([0, 60])) is None
    with pytest.raises(InvalidInputError, match="mixes"):
        decide_coding(np.array([12, 211]))


def test_raster_without_crs_raises(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=2,
        height=2,
        count=1,
        dtype="uint8",
        transform=_origin(4_000_000, 3_000_000, CLC_RES, CLC_RES),
    ) as ds:
        ds.write(np.ones((2, 2), np.uint8), 1)
    with pytest.raises(InvalidInputError, match="no CRS"):
        _reader(path)


# -- memory follows the shard, not the file ----------------------------------------------------

BIG_NX, BIG_NY = 500, 400  # 200,000 polygons, 1 km apart: 500 km x 400 km in EPSG:3035


@pytest.fixture(scope="session")
def big_clc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """200k overlapping 12-gons (1.6 km wide, 1 km apart) around TILE as GPKG, FGB, GeoParquet.

    The GeoParquet comes with a bbox covering column and 5,000-row row groups (so row groups
    can be skipped) and without (every batch is scanned).
    """
    x, y = Transformer.from_crs(TILE.epsg, 3035, always_xy=True).transform(
        *shapely.box(*TILE.bounds).centroid.coords[0]
    )
    ix, iy = (a.ravel() for a in np.meshgrid(np.arange(BIG_NX), np.arange(BIG_NY)))
    cx = x - BIG_NX * 500.0 + (ix + 0.5) * 1000.0
    cy = y - BIG_NY * 500.0 + (iy + 0.5) * 1000.0
    ang = np.linspace(0, 2 * np.pi, 13)[:-1]
    ring = np.stack(
        [cx[:, None] + 800 * np.cos(ang)[None], cy[:, None] + 800 * np.sin(ang)[None]], axis=-1
    )
    polys = shapely.polygons(np.concatenate([ring, ring[:, :1]], axis=1))
    codes = np.array(["211", "231", "311", "312", "512"])[(ix * 3 + iy) % 5]
    gdf = gpd.GeoDataFrame({"Code_18": codes}, geometry=polys, crs="EPSG:3035")
    root = tmp_path_factory.mktemp("big-clc")
    out = {"gpkg": root / "big.gpkg", "fgb": root / "big.fgb"}
    for path in out.values():
        pyogrio.write_dataframe(gdf, path, use_arrow=True)
    out["parquet"] = root / "big.parquet"
    gdf.to_parquet(out["parquet"], write_covering_bbox=True, row_group_size=5000)
    out["parquet-no-bbox"] = root / "big-no-bbox.parquet"
    gdf.to_parquet(out["parquet-no-bbox"])
    return out


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    original: Callable[..., Any] = pyogrio.read_arrow

    def spy(*args: Any, **kwargs: Any) -> Any:
        meta, table = original(*args, **kwargs)
        seen.append((table.num_rows, table.nbytes))
        return meta, table

    monkeypatch.setattr(pyogrio, "read_arrow", spy)
    return seen


@pytest.mark.parametrize("fmt", ["gpkg", "fgb", "parquet", "parquet-no-bbox"])
def test_reads_follow_the_shard_not_the_file(
    big_clc: dict[str, Path], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _spy_reads(monkeypatch)
    tiles = [Tile(32, "N", 602 + dc, 4430 - dr, 1200.0) for dr in range(4) for dc in range(2)]
    shard = shards(tiles, 8)[0].tiles
    path = big_clc[fmt]
    size = path.stat().st_size
    reader = _reader(path)
    tracemalloc.start()
    t0 = time.perf_counter()
    out = reader.rasterize(shard, RES)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = BIG_NX * BIG_NY
    print(
        f"\n{fmt}: file {size / 1e6:.1f} MB, {total} features; read {reader.features_read} "
        f"features for {len(shard)} tiles in {seconds:.2f} s; tracemalloc peak "
        f"{peak / 1e6:.2f} MB; arrow reads {seen}"
    )
    # The shard spans 2.4 x 4.8 km: polygons 1 km apart and 1.6 km wide -> a few dozen.
    assert 0 < reader.features_read < 100
    assert reader.features_read / total < 1e-3
    if fmt.startswith("parquet"):
        assert not seen  # read with pyarrow, not GDAL
    else:
        assert len(seen) == 1 and seen[0][0] == reader.features_read
        assert seen[0][1] < size / 1000  # bytes handed over by GDAL << the file
    if fmt == "parquet-no-bbox":
        # No bbox covering: every record batch is decoded and filtered in turn, so the peak is
        # one batch (16,384 rows), not the file.
        assert peak < 16e6
    else:
        assert peak < size / 10
    assert all(np.isin(a, [12, 18, 23, 24, 41]).all() for a in out.values())  # no gaps
    assert seconds < 10


def test_one_reader_serves_threads(squares_gpkg: tuple[Path, np.ndarray]) -> None:
    """Build workers share one reader per process (``open_reader`` caches it)."""
    from concurrent.futures import ThreadPoolExecutor

    path, expected = squares_gpkg
    reader = _reader(path)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: reader.rasterize([TILE], RES)[TILE.id], range(16)))
    for got in results:
        np.testing.assert_array_equal(got, expected)
    assert reader.features_read == 16 * 4
