"""VectorReader: class names or class indices from an attribute, burn order, background."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import Transformer

from pipelines.grid import Tile
from pipelines.labels import _vector_io as vio
from pipelines.labels.base import LABEL_NODATA, LabelReader
from pipelines.labels.vector import VectorReader
from schemas.errors import InvalidInputError, NotFoundError
from schemas.recipe_labels import VectorLabels

RES = 10.0
TILE = Tile(32, "N", 602, 4430, 1200.0)
MINX, _, _, MAXY = TILE.bounds


def _box(c0: float, r0: float, c1: float, r1: float) -> Any:
    """A box in the tile's CRS from pixel column/row edges (+0.25 px: centres are unambiguous)."""
    return shapely.box(
        MINX + (c0 + 0.25) * RES, MAXY - (r1 + 0.25) * RES, MINX + (c1 + 0.25) * RES,
        MAXY - (r0 + 0.25) * RES,
    )  # fmt: skip


def _write(path: Path, geoms: list[Any], values: list[Any], epsg: int = 32632) -> Path:
    if epsg != TILE.epsg:
        tr = Transformer.from_crs(TILE.epsg, epsg, always_xy=True)

        def xy(c: np.ndarray) -> np.ndarray:
            x, y = tr.transform(c[:, 0], c[:, 1])
            return np.column_stack([x, y])

        geoms = [shapely.transform(shapely.segmentize(g, 10.0), xy) for g in geoms]
    gdf = gpd.GeoDataFrame({"cls": values}, geometry=geoms, crs=f"EPSG:{epsg}")
    pyogrio.write_dataframe(gdf, path)
    return path


def _reader(path: Path, **kw: Any) -> VectorReader:
    return VectorReader(VectorLabels(kind="vector", path=str(path), class_field="cls", **kw))


def test_class_names_map_to_position_plus_one_and_background_is_zero(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "v.gpkg",
        [_box(10, 10, 30, 30), _box(40, 10, 60, 30), _box(70, 10, 90, 30)],
        ["urban", "water", "forest"],
    )
    reader: LabelReader = _reader(path, class_names=["water", "forest", "urban"])
    assert reader.class_names == ("background", "water", "forest", "urban")
    assert reader.unlabeled_index is None
    got = reader.rasterize([TILE], RES)[TILE.id]
    expected = np.zeros((120, 120), np.uint8)
    expected[10:30, 10:30] = 3
    expected[10:30, 40:60] = 1
    expected[10:30, 70:90] = 2
    np.testing.assert_array_equal(got, expected)
    assert not (got == LABEL_NODATA).any()


def test_higher_class_index_wins_on_overlaps_whatever_the_file_order(tmp_path: Path) -> None:
    geoms = [_box(0, 0, 60, 60), _box(30, 30, 90, 90), _box(20, 20, 40, 40)]
    names = ["urban", "water", "forest"]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        path = _write(
            tmp_path / f"o{''.join(map(str, order))}.gpkg",
            [geoms[i] for i in order],
            [names[i] for i in order],
        )
        got = _reader(path, class_names=["water", "forest", "urban"]).rasterize([TILE], RES)
        a = got[TILE.id]
        assert a[35, 35] == 3  # urban (3) over forest (2) over water (1)
        assert a[50, 50] == 3  # urban over water
        assert a[70, 70] == 1  # water alone
        assert a[25, 25] == 3  # forest under urban
        assert a[100, 100] == 0


def test_attribute_holds_the_index_without_class_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "i.gpkg",
        [_box(0, 0, 20, 20), _box(20, 0, 40, 20), _box(40, 0, 60, 20)],
        [5, 200, 254],
    )
    reader = _reader(path)
    assert len(reader.class_names) == 255
    assert reader.class_names[0] == "background" and reader.class_names[200] == "200"
    got = reader.rasterize([TILE], RES)[TILE.id]
    assert got[5, 5] == 5 and got[5, 25] == 200 and got[5, 45] == 254 and got[50, 50] == 0


def test_numeric_text_and_float_values(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.gpkg", [_box(0, 0, 20, 20), _box(20, 0, 40, 20)], [3.0, 7.0])
    assert _reader(path).rasterize([TILE], RES)[TILE.id][5, 25] == 7
    named = _reader(path, class_names=["1", "2", "3", "4", "5", "6", "7"])
    got = named.rasterize([TILE], RES)[TILE.id]
    assert got[5, 5] == 3 and got[5, 25] == 7


@pytest.mark.parametrize(
    ("values", "class_names", "shown"),
    [
        (["water", "lava"], ["water"], "'lava'"),
        ([1, 0], None, "0"),
        ([1, 255], None, "255"),
        (["1", "x"], None, "'x'"),
    ],
)
def test_values_that_are_not_classes_raise(
    tmp_path: Path, values: list[Any], class_names: list[str] | None, shown: str
) -> None:
    path = _write(tmp_path / "bad.gpkg", [_box(0, 0, 20, 20), _box(20, 0, 40, 20)], values)
    reader = _reader(path, class_names=class_names)
    with pytest.raises(InvalidInputError, match="not classes") as err:
        reader.rasterize([TILE], RES)
    assert shown in err.value.what
    assert err.value.where is not None and "'cls'" in err.value.where


def test_missing_file_layer_and_field(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        _reader(tmp_path / "nope.gpkg")
    path = _write(tmp_path / "v.gpkg", [_box(0, 0, 20, 20)], ["water"])
    with pytest.raises(NotFoundError, match="layer 'x' not found; the file has: v"):
        _reader(path, layer="x")
    with pytest.raises(InvalidInputError, match="attribute 'klass' not found; the layer has: cls"):
        VectorReader(VectorLabels(kind="vector", path=str(path), class_field="klass"))


def test_geographic_file_geolocates_exactly(tmp_path: Path) -> None:
    path = _write(tmp_path / "ll.fgb", [_box(10, 20, 50, 70)], [9], epsg=4326)
    got = _reader(path).rasterize([TILE], RES)[TILE.id]
    expected = np.zeros((120, 120), np.uint8)
    expected[20:70, 10:50] = 9
    np.testing.assert_array_equal(got, expected)


def test_lines_and_all_touched(tmp_path: Path) -> None:
    line = shapely.LineString([(MINX + 5.0, MAXY - 5.0), (MINX + 1195.0, MAXY - 1195.0)])
    path = _write(tmp_path / "l.gpkg", [line], [1])
    thin = _reader(path).rasterize([TILE], RES)[TILE.id]
    wide = _reader(path, all_touched=True).rasterize([TILE], RES)[TILE.id]
    assert (np.diag(thin) == 1).all() and (np.diag(wide) == 1).all()
    assert wide.sum() >= thin.sum()


def test_burn_helper_is_exact_and_ordered() -> None:
    a = vio.burn([(_box(0, 0, 10, 10), 7), (_box(5, 5, 15, 15), 3)], TILE, RES, fill=0)
    assert a.shape == (120, 120) and a.dtype == np.uint8
    assert a[7, 7] == 3 and a[2, 2] == 7 and a[12, 12] == 3 and a[20, 20] == 0
    empty = vio.burn([(shapely.Polygon(), 1)], TILE, RES, fill=LABEL_NODATA)
    assert (empty == LABEL_NODATA).all()
    with pytest.raises(InvalidInputError, match="uint8"):
        vio.burn([(_box(0, 0, 10, 10), 300)], TILE, RES)
