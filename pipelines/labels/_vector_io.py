"""Shared vector plumbing of the label readers: bbox-filtered reads, reprojection and burning.

Reading (:func:`open_vector`, :func:`read_features`)
    Only the features that touch the given tiles are read, with only the geometry and the one
    attribute needed. Each tile's box, padded by :func:`pad_m` and densified, is projected to the
    file's CRS; the union of these footprints is the read filter:

    * OGR formats (GeoPackage, FlatGeobuf, Shapefile, GeoJSON, ...): ``pyogrio`` hands the
      footprint to GDAL as the layer's spatial filter, so candidates come from the file's spatial
      index (GeoPackage R-tree, FlatGeobuf packed R-tree, Shapefile ``.qix`` if present) and only
      intersecting features are materialised.
    * GeoParquet (``.parquet``/``.geoparquet``, WKB encoding): record batches are streamed with
      ``pyarrow``; with a bbox covering column (GeoParquet 1.1, e.g. ``geopandas`` ``to_parquet(
      write_covering_bbox=True)``) the row groups outside the footprint's bbox are skipped on
      their statistics and the remaining rows are filtered on it; without one every batch is
      decoded and filtered in turn. Memory follows the batch and the hits, never the file.

Burning (:func:`rasterize_tiles`, :func:`burn`)
    Features are clipped to the footprints, projected to each tile's UTM CRS and burnt with
    ``rasterio.features.rasterize`` on exactly the tile grid (``Tile.transform(res)``,
    ``Tile.shape(res)``). Burn order = order of the shapes: later shapes win where they overlap.
    :func:`rasterize_tiles` sorts features by class index ascending (stable, so file order within
    a class), so the higher class index wins on overlaps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyogrio
import shapely
from pyproj import CRS, Transformer
from rasterio import features as rio_features
from shapely.geometry.base import BaseGeometry

from pipelines.grid import Tile
from schemas.errors import InvalidInputError, NotFoundError

__all__ = [
    "GEOPARQUET_SUFFIXES",
    "Features",
    "VectorLayer",
    "burn",
    "crs_of",
    "is_remote",
    "open_vector",
    "pad_m",
    "rasterize_tiles",
    "read_features",
    "tile_footprint",
    "tiles_footprint",
    "transformer",
]

#: File name endings read as GeoParquet with pyarrow (GDAL builds often lack the driver).
GEOPARQUET_SUFFIXES = (".parquet", ".geoparquet")
#: Rows per streamed GeoParquet record batch.
_PARQUET_BATCH = 16_384
#: Vertices per tile edge when projecting a footprint (exact to well under a metre).
_EDGE_VERTICES = 16

_local = threading.local()

ObjectArray = npt.NDArray[np.object_]
UInt8Array = npt.NDArray[np.uint8]


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL or GDAL virtual path rather than a local file."""
    return "://" in path or path.startswith("/vsi")


def pad_m(tile: Tile, resolution_m: float) -> float:
    """Margin (metres) added around a tile before filtering features: 2 pixels + 1 % of the tile."""
    return 2.0 * resolution_m + 0.01 * tile.tile_size_m


@dataclass(frozen=True)
class VectorLayer:
    """An opened (validated) vector layer, ready for bbox-filtered reads.

    Attributes:
        path: File path or URL as given.
        layer: Layer name (OGR formats; ``None`` for GeoParquet).
        crs: The layer's CRS.
        fields: Attribute names.
        kind: ``"ogr"`` (read through pyogrio/GDAL) or ``"geoparquet"`` (pyarrow).
        geometry_column: GeoParquet primary geometry column (``""`` for OGR).
        covering: GeoParquet bbox covering: ``{"xmin": [col, field], ...}``, or ``None``.
    """

    path: str
    layer: str | None
    crs: CRS
    fields: tuple[str, ...]
    kind: Literal["ogr", "geoparquet"]
    geometry_column: str = ""
    covering: dict[str, list[str]] | None = None

    @property
    def where(self) -> str:
        """``path`` or ``path (layer L)`` for error messages."""
        return f"{self.path} (layer {self.layer})" if self.layer else self.path

    def require_field(self, field: str, recipe_field: str) -> None:
        """Raise a clear error unless ``field`` is an attribute of the layer.

        Raises:
            InvalidInputError: The field is missing; the message lists the fields present.
        """
        if field in self.fields:
            return
        close = [f for f in self.fields if f.lower() == field.lower()]
        hint = f" (did you mean '{close[0]}'? names are case-sensitive)" if close else ""
        present = ", ".join(self.fields) if self.fields else "none"
        raise InvalidInputError(
            f"attribute '{field}' not found{hint}; the layer has: {present}",
            where=f"{self.where}, labels[].{recipe_field}",
            fix=f"set labels[].{recipe_field} to the attribute holding the classes",
        )


@dataclass(frozen=True)
class Features:
    """Features read for some tiles, in the file's CRS.

    Attributes:
        geometries: Shapely geometries, dims ``(n,)`` object.
        values: The attribute's values as read (str, int, float or None), dims ``(n,)`` object.
        crs: CRS of the geometries.
    """

    geometries: ObjectArray
    values: ObjectArray
    crs: CRS

    def __len__(self) -> int:
        return len(self.geometries)


def open_vector(path: str, layer: str | None) -> VectorLayer:
    """Open a vector file's layer and read its metadata (no features).

    Args:
        path: Local path or URL. ``.parquet``/``.geoparquet`` are read with pyarrow, everything
            else through GDAL (GeoPackage, FlatGeobuf, Shapefile, GeoJSON, ...).
        layer: Layer name; ``None`` = the first layer.

    Raises:
        NotFoundError: The file or the layer does not exist (the message lists the layers).
        InvalidInputError: The file cannot be read as vector data, or has no CRS.
    """
    if not is_remote(path) and not Path(path).exists():
        raise NotFoundError(
            "label file not found",
            where=path,
            fix="check labels[].path (a relative path is taken from the recipe's folder)",
        )
    if path.lower().endswith(GEOPARQUET_SUFFIXES):
        return _open_geoparquet(path, layer)
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError (a RuntimeError) and others
        raise InvalidInputError(
            f"cannot open as a vector file ({exc})",
            where=path,
            fix="give a GeoPackage, GeoParquet, FlatGeobuf or Shapefile",
        ) from exc
    if not layers:
        raise NotFoundError("the file has no layers", where=path, fix="give a non-empty file")
    if layer is None:
        layer = layers[0]
    elif layer not in layers:
        raise NotFoundError(
            f"layer '{layer}' not found; the file has: {', '.join(layers)}",
            where=f"{path}, labels[].layer",
            fix="set labels[].layer to one of them (or remove it to use the first)",
        )
    info = pyogrio.read_info(path, layer=layer)
    crs_text = info.get("crs")
    if not crs_text:
        raise InvalidInputError(
            "the layer has no CRS",
            where=f"{path} (layer {layer})",
            fix="assign one, e.g. ogr2ogr -a_srs EPSG:3035 out.gpkg in.gpkg",
        )
    fields = tuple(str(f) for f in info["fields"])
    return VectorLayer(path, layer, CRS.from_user_input(crs_text), fields, "ogr")


def _open_geoparquet(path: str, layer: str | None) -> VectorLayer:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise InvalidInputError(
            f"cannot open as Parquet ({exc})", where=path, fix="give a GeoParquet file"
        ) from exc
    raw = (schema.metadata or {}).get(b"geo")
    if raw is None:
        raise InvalidInputError(
            "not a GeoParquet file (no 'geo' metadata)",
            where=path,
            fix="write it with geopandas GeoDataFrame.to_parquet or GDAL",
        )
    geo: dict[str, Any] = json.loads(raw)
    primary = str(geo["primary_column"])
    column: dict[str, Any] = geo["columns"][primary]
    encoding = str(column.get("encoding", "WKB"))
    if encoding.upper() != "WKB":
        raise InvalidInputError(
            f"GeoParquet geometry encoding '{encoding}' is not supported",
            where=path,
            fix="write the file with WKB geometries (geopandas to_parquet(geometry_encoding="
            "'WKB'), the default)",
        )
    if "crs" not in column:
        crs = CRS.from_user_input("OGC:CRS84")  # the GeoParquet default
    elif column["crs"] is None:
        raise InvalidInputError(
            "the GeoParquet geometry column has no CRS (crs: null)",
            where=path,
            fix="write the file with a CRS",
        )
    else:
        value = column["crs"]
        crs = CRS.from_json_dict(value) if isinstance(value, dict) else CRS.from_user_input(value)
    bbox = (column.get("covering") or {}).get("bbox")
    covering = (
        {k: [str(p) for p in bbox[k]] for k in ("xmin", "ymin", "xmax", "ymax")} if bbox else None
    )
    skip = {primary, *(v[0] for v in (covering or {}).values())}
    fields = tuple(n for n in schema.names if n not in skip)
    return VectorLayer(path, layer, crs, fields, "geoparquet", primary, covering)


def tile_footprint(tile: Tile, crs: CRS, margin_m: float) -> BaseGeometry:
    """A tile's box grown by ``margin_m`` metres, densified and projected to ``crs``."""
    minx, miny, maxx, maxy = tile.bounds
    box = shapely.box(minx - margin_m, miny - margin_m, maxx + margin_m, maxy + margin_m)
    side = tile.tile_size_m + 2 * margin_m
    ring = shapely.segmentize(box, side / _EDGE_VERTICES)
    if crs_of(tile.epsg) == crs:
        return ring
    return _project(ring, transformer(crs_of(tile.epsg), crs))


def tiles_footprint(tiles: Sequence[Tile], crs: CRS, resolution_m: float) -> BaseGeometry:
    """Union of the padded footprints (:func:`pad_m`) of ``tiles`` in ``crs``."""
    return shapely.union_all([tile_footprint(t, crs, pad_m(t, resolution_m)) for t in tiles])


@cache
def crs_of(epsg: int) -> CRS:
    """``CRS.from_epsg`` (cached)."""
    return CRS.from_epsg(epsg)


def transformer(src: CRS, dst: CRS) -> Transformer:
    """An ``always_xy`` transformer, cached per thread (pyproj transformers are not thread-safe)."""
    cache: dict[tuple[CRS, CRS], Transformer] = _local.__dict__.setdefault("transformers", {})
    found = cache.get((src, dst))
    if found is None:
        found = cache[(src, dst)] = Transformer.from_crs(src, dst, always_xy=True)
    return found


def _project(geom: Any, tr: Transformer) -> Any:
    def xy(coords: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, xy)


def read_features(
    layer: VectorLayer, field: str, tiles: Sequence[Tile], resolution_m: float
) -> Features:
    """Read the features that touch ``tiles`` (padded by :func:`pad_m`), one attribute only.

    Args:
        layer: From :func:`open_vector`.
        field: Attribute to read (checked with :meth:`VectorLayer.require_field` by the caller).
        tiles: Tiles of any UTM zones.
        resolution_m: Label resolution (sets the padding).

    Returns:
        The features in file order, in the file's CRS (2-D).
    """
    empty = Features(np.empty(0, dtype=object), np.empty(0, dtype=object), layer.crs)
    if not tiles:
        return empty
    mask = tiles_footprint(tiles, layer.crs, resolution_m)
    if layer.kind == "geoparquet":
        return _read_geoparquet(layer, field, mask)
    meta, table = pyogrio.read_arrow(layer.path, layer=layer.layer, columns=[field], mask=mask)
    if table.num_rows == 0:
        return empty
    geom_name = str(meta.get("geometry_name") or "wkb_geometry")
    if geom_name not in table.column_names:
        geom_name = next(n for n in table.column_names if n != field)
    wkb = table.column(geom_name).to_numpy(zero_copy_only=False)
    geoms = shapely.from_wkb(wkb)
    values = _objects(table.column(field).to_pylist())
    keep = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    return Features(geoms[keep], values[keep], layer.crs)


def _read_geoparquet(layer: VectorLayer, field: str, mask: BaseGeometry) -> Features:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    dataset = pads.dataset(layer.path, format="parquet")
    row_filter = None
    if layer.covering is not None:
        minx, miny, maxx, maxy = mask.bounds
        c = layer.covering
        row_filter = ~(
            (pc.field(*c["xmin"]) > maxx)
            | (pc.field(*c["ymin"]) > maxy)
            | (pc.field(*c["xmax"]) < minx)
            | (pc.field(*c["ymax"]) < miny)
        )
    shapely.prepare(mask)
    geoms: list[ObjectArray] = []
    values: list[ObjectArray] = []
    scanner = dataset.scanner(
        columns=[layer.geometry_column, field], filter=row_filter, batch_size=_PARQUET_BATCH
    )
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        g = shapely.from_wkb(batch.column(layer.geometry_column).to_numpy(zero_copy_only=False))
        if shapely.get_coordinate_dimension(g).max(initial=2) > 2:
            g = shapely.force_2d(g)
        hit = ~shapely.is_missing(g) & shapely.intersects(mask, g)
        if hit.any():
            geoms.append(g[hit])
            vals = _objects(batch.column(field).to_pylist())
            values.append(vals[hit])
    if not geoms:
        return Features(np.empty(0, dtype=object), np.empty(0, dtype=object), layer.crs)
    return Features(np.concatenate(geoms), np.concatenate(values), layer.crs)


def _objects(items: list[Any]) -> ObjectArray:
    """A 1-D object array of ``items`` (never a 2-D one, whatever the items are)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _clip(geoms: ObjectArray, region: BaseGeometry) -> ObjectArray:
    """``geoms`` intersected with ``region``; invalid geometries are repaired first."""
    try:
        out: ObjectArray = shapely.intersection(geoms, region)
    except shapely.errors.GEOSException:
        out = shapely.intersection(shapely.make_valid(geoms), region)
    return out


def rasterize_tiles(
    features: Features,
    classes: UInt8Array,
    tiles: Sequence[Tile],
    resolution_m: float,
    *,
    all_touched: bool,
    fill: int,
) -> dict[str, UInt8Array]:
    """Burn features with their class indices onto each tile's grid.

    Args:
        features: Features in their file CRS (from :func:`read_features`).
        classes: Class index per feature, dims ``(n,)`` uint8; burnt in ascending order (ties in
            file order), so the higher index wins where features overlap.
        tiles: Tiles of any UTM zones.
        resolution_m: Label pixel size in metres; must divide the tile size.
        all_touched: Burn every touched pixel instead of pixel centres.
        fill: Value where no feature is burnt.

    Returns:
        Tile id -> class raster, dims ``(y, x)`` = ``Tile.shape(resolution_m)``, uint8.
    """
    order = np.argsort(classes, kind="stable")
    geoms, values = features.geometries[order], classes[order]
    out: dict[str, UInt8Array] = {}
    by_epsg: dict[int, list[Tile]] = {}
    for tile in tiles:
        by_epsg.setdefault(tile.epsg, []).append(tile)
    for epsg, zone_tiles in by_epsg.items():
        region = tiles_footprint(zone_tiles, features.crs, resolution_m)
        shapely.prepare(region)
        hit = np.flatnonzero(shapely.intersects(region, geoms)) if len(geoms) else np.empty(0, int)
        clipped = _clip(geoms[hit], region)
        dst = crs_of(epsg)
        if features.crs != dst:
            clipped = _project(clipped, transformer(features.crs, dst))
        zone_values = values[hit]
        tree = shapely.STRtree(clipped)
        for tile in zone_tiles:
            pad = pad_m(tile, resolution_m)
            minx, miny, maxx, maxy = tile.bounds
            rect = (minx - pad, miny - pad, maxx + pad, maxy + pad)
            idx = np.sort(tree.query(shapely.box(*rect), predicate="intersects"))
            local = shapely.clip_by_rect(clipped[idx], *rect)
            shapes = zip(local.tolist(), zone_values[idx].tolist(), strict=True)
            out[tile.id] = burn(shapes, tile, resolution_m, all_touched=all_touched, fill=fill)
    return out


def burn(
    shapes: Iterable[tuple[BaseGeometry, int]],
    tile: Tile,
    resolution_m: float,
    *,
    all_touched: bool = False,
    fill: int = 0,
) -> UInt8Array:
    """Burn ``(geometry, value)`` pairs onto a tile's grid.

    Args:
        shapes: Geometries in the tile's CRS (``tile.epsg``) with values 0..255, in burn order:
            a later shape overwrites an earlier one. Empty or missing geometries are skipped.
        tile: The tile; the grid is ``tile.transform(resolution_m)``/``tile.shape(resolution_m)``.
        resolution_m: Pixel size in metres; must divide the tile size.
        all_touched: Burn every pixel a shape touches; default: pixels whose centre is inside
            (lines: the pixels GDAL's Bresenham walk selects).
        fill: Value of pixels no shape burns (0 = background, 255 = no data).

    Returns:
        Dims ``(y, x)`` = ``tile.shape(resolution_m)``, uint8, north-up, pixel ``(0, 0)`` at the
        tile's top-left corner.

    Raises:
        InvalidInputError: The resolution does not divide the tile size.
    """
    shape = tile.shape(resolution_m)
    transform = tile.transform(resolution_m)
    valid = list(_valid_shapes(shapes))
    if not valid:
        return np.full(shape, fill, dtype=np.uint8)
    with _gdal_memory_lock():
        out: UInt8Array = rio_features.rasterize(
            valid,
            out_shape=shape,
            transform=transform,
            fill=fill,
            all_touched=all_touched,
            dtype="uint8",
        )
    return out


def _gdal_memory_lock() -> AbstractContextManager[bool]:
    """The process-wide lock around rasterio calls on in-memory datasets.

    ``rasterio.features.rasterize`` wraps its output array in a ``MemoryDataset`` whose
    constructor uses ``warnings.catch_warnings()``, which is not thread-safe (see
    :mod:`pipelines._warp`); build threads that rasterise labels while others warp must share
    one lock, the one the warp code already takes. Rasterising a tile takes milliseconds.
    """
    from pipelines._warp import _REPROJECT_LOCK

    return _REPROJECT_LOCK


def _valid_shapes(
    shapes: Iterable[tuple[BaseGeometry, int]],
) -> Iterator[tuple[BaseGeometry, int]]:
    for geom, value in shapes:
        if geom is None or geom.is_empty:
            continue
        if not 0 <= int(value) <= 255:
            raise InvalidInputError(f"burn value {value} does not fit in uint8 (0..255)")
        yield geom, int(value)
