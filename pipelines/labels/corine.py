"""CORINE Land Cover labels: CLC polygons or the CLC raster, rasterised per tile.

:class:`CorineReader` implements :class:`pipelines.labels.base.LabelReader` for a recipe's
``kind: corine`` source. Output per tile: dims ``(y, x)`` = ``Tile.shape(res)``, uint8, on the
tile's UTM grid; value = class index of the recipe's nomenclature
(:func:`pipelines.labels.nomenclature.class_names`): 0 = ``UNLABELED`` (code 999, 990, 995, or a
code the nomenclature drops), :data:`~pipelines.labels.base.LABEL_NODATA` (255) = not covered by
the source (outside every polygon, outside the raster, or the raster's own nodata value).

Vector files (GeoPackage, GeoParquet, FlatGeobuf, Shapefile, ...)
    Only features touching the tiles are read (see :mod:`pipelines.labels._vector_io`); the code
    attribute (``code_field``, default ``Code_18``) may be text (``"211"``) or a number. Polygons
    are burnt by pixel centre (GDAL ``ALL_TOUCHED=FALSE``, as the CLC raster and reBEN do) unless
    ``all_touched``; where polygons overlap (CLC polygons do not), the higher class index wins.
    Codes are checked on the features read: a value that is not a CLC code raises
    :class:`~schemas.errors.InvalidInputError`.

Raster files (``.tif``/``.tiff``)
    For each tile only the window of source pixels under it is read; values are mapped to class
    indices and every label pixel takes the source pixel under its centre (nearest neighbour,
    computed exactly with pyproj per label pixel). Codings (``raster_coding``):
    ``grid_code`` = values 1..44 (CLC2018 V2020), 48 = code 999; ``code`` = 3-digit codes, 999
    (older v20 rasters); ``auto`` decides from the values read (3-digit codes if any valid value
    is above 100, else grid codes) and then keeps that decision for the reader's life. The CLC
    "NODATA" class (48 / 999) is ``UNLABELED`` (0) like vector code 999; the raster's declared
    nodata value, when it is another value, is 255. Any other value raises.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
from pyproj import CRS
from rasterio.windows import Window

from pipelines.grid import Tile
from pipelines.labels import _vector_io as vio
from pipelines.labels.base import LABEL_NODATA, LabelRasters
from pipelines.labels.nomenclature import (
    CLC_GRID_NODATA,
    LUT_INVALID,
    UNLABELED_INDEX,
    class_names,
    code_to_index,
    normalize_code,
    raster_lut,
)
from schemas.errors import InvalidInputError, NotFoundError
from schemas.recipe_labels import CorineLabels, CorineRasterCoding

__all__ = ["RASTER_SUFFIXES", "CorineReader", "decide_coding"]

#: Paths with these endings are read as CLC rasters; everything else as vector data.
RASTER_SUFFIXES = (".tif", ".tiff")
#: Raster value of CLC's NODATA class (code 999) in each coding.
_CLC_NODATA_VALUE = {CorineRasterCoding.GRID_CODE: CLC_GRID_NODATA, CorineRasterCoding.CODE: 999}
#: At most this many offending values are quoted in an error message.
_MAX_QUOTED = 10


def decide_coding(values: npt.NDArray[np.integer]) -> CorineRasterCoding | None:
    """The coding ``auto`` reads from raster values (``None`` while the values do not tell).

    Args:
        values: Raster values, any shape, the raster's declared nodata value left out.

    Returns:
        ``code`` if any value lies in 100..999 (3-digit codes), else ``grid_code`` if any lies
        in 1..48, else ``None``.

    Raises:
        InvalidInputError: Both kinds occur (1..48 and 100..999): not a CLC raster.
    """
    v = np.asarray(values)
    if v.size == 0:
        return None
    three = bool(np.any((v >= 100) & (v <= 999)))
    grid = bool(np.any((v >= 1) & (v <= 48)))
    if three and grid:
        raise InvalidInputError(
            "the raster mixes grid codes (1..48) and 3-digit CLC codes (100..999)",
            fix="give a CLC raster in one coding",
        )
    if three:
        return CorineRasterCoding.CODE
    return CorineRasterCoding.GRID_CODE if grid else None


def _quote(values: Sequence[object]) -> str:
    shown = ", ".join(repr(v) for v in values[:_MAX_QUOTED])
    more = len(values) - _MAX_QUOTED
    return shown + (f" and {more} more" if more > 0 else "")


class CorineReader:
    """CORINE Land Cover source of a recipe (see the module docstring for the rules).

    Args:
        source: The recipe's ``kind: corine`` entry (paths already resolved).

    Raises:
        NotFoundError: The file or the layer does not exist.
        InvalidInputError: No CRS, the code field is missing (the message lists the fields), or
            the file cannot be read.
    """

    def __init__(self, source: CorineLabels) -> None:
        self.source = source
        self._names = class_names(source.nomenclature)
        self._codes = code_to_index(source.nomenclature)
        self._lock = threading.Lock()
        self._coding: CorineRasterCoding | None = None
        self._layer: vio.VectorLayer | None = None
        self.features_read = 0
        """Features read so far (vector sources): a check that reads follow the tiles."""
        if self.is_raster:
            self._check_raster()
        else:
            self._layer = vio.open_vector(source.path, source.layer)
            self._layer.require_field(source.code_field, "code_field")

    @property
    def is_raster(self) -> bool:
        """Whether the source is a CLC raster (``.tif``/``.tiff``) rather than polygons."""
        return self.source.path.lower().endswith(RASTER_SUFFIXES)

    @property
    def class_names(self) -> tuple[str, ...]:
        """``("UNLABELED", ...)``: 45 names (clc44) or 20 (bigearthnet19)."""
        return self._names

    @property
    def unlabeled_index(self) -> int | None:
        """0: the ``UNLABELED`` class."""
        return UNLABELED_INDEX

    @property
    def coding(self) -> CorineRasterCoding | None:
        """Raster coding in use (``auto`` resolved once values were read); ``None`` for vectors."""
        if not self.is_raster:
            return None
        if self.source.raster_coding is not CorineRasterCoding.AUTO:
            return self.source.raster_coding
        return self._coding

    def rasterize(self, tiles: Sequence[Tile], resolution_m: float) -> LabelRasters:
        """Class rasters for ``tiles`` at ``resolution_m``.

        Args:
            tiles: Tiles of any UTM zones (usually one shard).
            resolution_m: Label pixel size in metres; must divide the tile size.

        Returns:
            Tile id -> dims ``(y, x)`` uint8 class raster, 255 where the source has no data.

        Raises:
            InvalidInputError: Codes that are not CLC codes near the tiles, a resolution that
                does not divide the tile size.
        """
        for tile in tiles:
            tile.shape(resolution_m)
        if self.is_raster:
            return self._rasterize_raster(tiles, resolution_m)
        return self._rasterize_vector(tiles, resolution_m)

    # -- vector -----------------------------------------------------------------------------

    def _rasterize_vector(self, tiles: Sequence[Tile], resolution_m: float) -> LabelRasters:
        assert self._layer is not None
        feats = vio.read_features(self._layer, self.source.code_field, tiles, resolution_m)
        with self._lock:
            self.features_read += len(feats)
        classes = self._classes(feats.values)
        return vio.rasterize_tiles(
            feats,
            classes,
            tiles,
            resolution_m,
            all_touched=self.source.all_touched,
            fill=LABEL_NODATA,
        )

    def _classes(self, values: npt.NDArray[np.object_]) -> npt.NDArray[np.uint8]:
        lookup: dict[object, int] = {}
        bad: list[object] = []
        for value in {_hashable(v) for v in values.tolist()}:
            code = normalize_code(value)
            if code is None:
                bad.append(value)
            else:
                lookup[value] = self._codes[code]
        if bad:
            assert self._layer is not None
            raise InvalidInputError(
                f"values that are not CLC level-3 codes near the tiles: "
                f"{_quote(sorted(bad, key=repr))}",
                where=f"{self._layer.where}, attribute '{self.source.code_field}'",
                fix="point labels[].code_field at the 3-digit CLC code (111..523, 999 = no data)"
                ", e.g. Code_18 in CLC2018",
            )
        out = np.fromiter(
            (lookup[_hashable(v)] for v in values.tolist()), dtype=np.uint8, count=len(values)
        )
        return out

    # -- raster -----------------------------------------------------------------------------

    def _check_raster(self) -> None:
        path = self.source.path
        if not vio.is_remote(path) and not Path(path).exists():
            raise NotFoundError(
                "CLC raster not found",
                where=path,
                fix="check labels[].path (a relative path is taken from the recipe's folder)",
            )
        try:
            # (A file without any georeferencing also makes rasterio warn; warning filters are
            # process-wide and not thread-safe, so the warning is left alone.)
            with rasterio.open(path) as ds:
                crs, dtype = ds.crs, ds.dtypes[0]
        except rasterio.errors.RasterioIOError as exc:
            raise InvalidInputError(
                f"cannot open as a raster ({exc})", where=path, fix="give a CLC GeoTIFF"
            ) from exc
        if crs is None:
            raise InvalidInputError(
                "the raster has no CRS",
                where=path,
                fix="assign one, e.g. gdal_edit.py -a_srs EPSG:3035 <file>",
            )
        if not np.issubdtype(np.dtype(dtype), np.integer):
            raise InvalidInputError(
                f"raster data type {dtype} is not an integer type",
                where=path,
                fix="give the CLC raster (Byte or 16-bit codes)",
            )

    def _rasterize_raster(self, tiles: Sequence[Tile], resolution_m: float) -> LabelRasters:
        out: dict[str, npt.NDArray[np.uint8]] = {}
        with rasterio.open(self.source.path) as ds:
            crs = CRS.from_user_input(ds.crs)
            for tile in tiles:
                out[tile.id] = self._raster_tile(ds, crs, tile, resolution_m)
        return out

    def _raster_tile(
        self, ds: rasterio.io.DatasetReader, crs: CRS, tile: Tile, resolution_m: float
    ) -> npt.NDArray[np.uint8]:
        # Nearest neighbour done exactly: every label pixel centre is projected to the raster's
        # CRS and takes the source pixel it falls in (no approximate warp transformer, no GDAL
        # in-memory datasets). Cost: one pyproj call per tile over all its label pixels.
        ny, nx = tile.shape(resolution_m)
        out = np.full((ny, nx), LABEL_NODATA, dtype=np.uint8)
        col, row = _source_pixels(ds, crs, tile, resolution_m)
        inside = (col >= 0) & (col < ds.width) & (row >= 0) & (row < ds.height)
        if not inside.any():
            return out
        c, r = col[inside], row[inside]
        c0, r0 = int(c.min()), int(r.min())
        window = Window(c0, r0, int(c.max()) + 1 - c0, int(r.max()) + 1 - r0)
        # Only the sampled source pixels are mapped (and checked).
        out[inside] = self._map_raster(ds.read(1, window=window)[r - r0, c - c0], ds.nodata)
        return out

    def _map_raster(
        self, values: npt.NDArray[np.integer], nodata: float | None
    ) -> npt.NDArray[np.uint8]:
        """Raster values (any shape) -> class indices; 255 for the declared nodata."""
        v = values.astype(np.int64)
        tag = None if nodata is None or math.isnan(nodata) else nodata
        # A declared nodata of 48 / 999 is CLC's own NODATA class: data (UNLABELED) when the
        # coding agrees, so it takes part in deciding the coding.
        clc_tag = tag in _CLC_NODATA_VALUE.values()
        coding = self._resolve_coding(v if tag is None or clc_tag else v[v != tag])
        outside = np.zeros(v.shape, dtype=bool)
        if tag is not None and (coding is None or tag != _CLC_NODATA_VALUE[coding]):
            outside = v == tag
        out = np.full(v.shape, LABEL_NODATA, dtype=np.uint8)
        inside = ~outside
        vals = v[inside]
        if coding is None:
            if vals.size:  # values that fit neither coding
                self._raise_bad_values(np.unique(vals), None)
            return out
        lut = raster_lut(self.source.nomenclature, coding)
        in_range = (vals >= 0) & (vals < lut.size)
        mapped = np.full(vals.shape, LUT_INVALID, dtype=np.int16)
        mapped[in_range] = lut[vals[in_range]]
        if np.any(mapped == LUT_INVALID):
            self._raise_bad_values(np.unique(vals[mapped == LUT_INVALID]), coding)
        out[inside] = mapped.astype(np.uint8)
        return out

    def _resolve_coding(self, values: npt.NDArray[np.int64]) -> CorineRasterCoding | None:
        if self.source.raster_coding is not CorineRasterCoding.AUTO:
            return self.source.raster_coding
        with self._lock:
            if self._coding is not None:
                return self._coding
            try:
                found = decide_coding(values)
            except InvalidInputError as exc:
                raise InvalidInputError(
                    exc.what, where=self.source.path, fix="set labels[].raster_coding explicitly"
                ) from None
            self._coding = found
            return found

    def _raise_bad_values(
        self, bad: npt.NDArray[np.int64], coding: CorineRasterCoding | None
    ) -> None:
        expected = {
            CorineRasterCoding.GRID_CODE: "grid codes 1..44 (48 = no data)",
            CorineRasterCoding.CODE: "3-digit CLC codes 111..523 (999 = no data)",
            None: "CLC grid codes (1..44, 48) or 3-digit codes (111..523, 999)",
        }[coding]
        raise InvalidInputError(
            f"raster values {_quote(bad.tolist())} are not {expected}",
            where=f"{self.source.path}, labels[].raster_coding={self.source.raster_coding.value}",
            fix="set labels[].raster_coding to the raster's coding, or declare the fill value "
            "as the raster's nodata",
        )


def _hashable(value: object) -> object:
    """NaN-safe dict key (every float NaN is one key)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _source_pixels(
    ds: rasterio.io.DatasetReader, crs: CRS, tile: Tile, resolution_m: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Source ``(col, row)`` under each label pixel centre; dims ``(y, x)``; may lie outside."""
    ny, nx = tile.shape(resolution_m)
    minx, _, _, maxy = tile.bounds
    xs = minx + (np.arange(nx) + 0.5) * resolution_m
    ys = maxy - (np.arange(ny) + 0.5) * resolution_m
    gx, gy = np.meshgrid(xs, ys)
    sx, sy = vio.transformer(vio.crs_of(tile.epsg), crs).transform(gx, gy)
    inv = ~ds.transform
    fc = inv.a * sx + inv.b * sy + inv.c
    fr = inv.d * sx + inv.e * sy + inv.f
    bad = ~(np.isfinite(fc) & np.isfinite(fr))
    fc[bad], fr[bad] = -1.0, -1.0
    return np.floor(fc).astype(np.int64), np.floor(fr).astype(np.int64)
