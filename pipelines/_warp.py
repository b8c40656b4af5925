"""Warp backends of the ``load`` stage: raster assets of STAC items onto one tile grid.

A :class:`WarpRequest` names one asset of one item (href, 1-based band indexes, resampling and a
georeferencing shift); a :class:`WarpBackend` turns a batch of requests into float64 planes on a
:class:`TargetGrid`, NaN where the result is not valid. Two backends implement it:

* :class:`StackstacBackend` (the default): ``stackstac.stack`` builds the lazy dask graph (one
  synthetic single-asset item per request, ``bounds`` = the tile bounds, ``epsg``,
  ``resolution``, ``xy_coords="center"``, ``rescale=False``, float64 with ``fill_value=NaN``,
  one chunk per tile) and a custom ``reader=`` does the pixel work. ``stackstac.stack`` alone
  cannot warp without the source nodata: its ``AutoParallelRioReader`` always opens a
  ``WarpedVRT`` whose ``src_nodata`` is the file's nodata (and an alpha band when there is none),
  and no argument of ``stack()`` changes that; its ``reader`` parameter is the extension point.
  Multi-band assets (EnMAP ``image``), which stackstac refuses, are warped by the same core as
  ``dask.delayed`` tasks in the same compute, all requested bands of an asset in one pass.
* :class:`RasterioBackend`: reads each source raster whole and calls
  ``rasterio.warp.reproject``; no dask, no windows. It is the test oracle.

How a pixel is warped (both backends)
    The data are warped with GDAL **without** a source nodata (the fast warp kernel; the
    nodata-aware kernel re-normalises the weights around nodata pixels and hides that an edge
    value came from half a neighbourhood). Validity is warped **separately**: the source mask
    (``read_masks``: the nodata value, an internal mask or the raster extent) as 0/1 weights
    with the same resampling as the data. A pixel is valid only where that weight is 1 (within
    ``1e-9``): every source pixel with a non-zero weight in its kernel (bilinear 2x2, the area of
    an ``average``, the one pixel of ``nearest``) is valid, so a nodata value never leaks into a
    valid pixel. Footprint requests return the ``nearest`` warp of the same mask (1.0/0.0).
    GDAL's kernel scale is pinned to the pixel-size ratio (warp options ``XSCALE``/``YSCALE``);
    left to GDAL it is derived from the window shapes, so a rotated (other UTM zone) or
    edge-clipped source window would blur or sharpen the kernel and results would depend on
    how much of the file was read.

    The windowed core (:func:`warp_window`, used by the stackstac backend) reads only the source
    window under the tile plus a kernel margin, and takes two exact shortcuts: a source grid
    that coincides with the tile grid (same CRS and pixel size, whole-pixel offset: S2 10 m on
    a 10 m tile) is copied, not warped; and when the window holds no invalid pixel and is not
    cut by the raster edge, the validity weights are 1 without warping them. The oracle takes
    neither shortcut, so comparing the backends checks both.

Shifts
    ``WarpRequest.shift_m = (dx, dy)`` translates the source geotransform by ``dx`` metres east
    and ``dy`` metres north before warping (``Affine.translation(dx, dy) @ transform``): a pixel
    drawn at ``x`` is then drawn at ``x + dx``. A scene whose content is displaced by ``+d``
    (a feature at true ``x`` appears at ``x + d``) is corrected with ``shift_m = -d``.

Failure policy (per asset, in every backend)
    Each asset is opened and warped inside a retry loop. GDAL I/O errors (rasterio's
    ``RasterioError`` family; nothing else is caught) are classified by their message chain:
    HTTP 408/425/429/5xx, timeouts and dropped connections are retried ``retries`` times with
    exponential backoff (``backoff_s * 2**attempt``; retries bypass GDAL's /vsicurl cache, which
    otherwise remembers the failure), then raise :class:`TransientError` naming the href. HTTP
    404/410 and missing files raise :class:`AssetMissingError`; undecodable files and band
    mismatches raise :class:`AssetCorruptError`; both are :class:`BrokenAssetError` and name the
    item id and asset key so the caller can drop that scene. HTTP 401/403 raises a plain
    :class:`InvalidInputError` (credentials or signing are wrong for every asset, so skipping
    scenes would hide it). Hrefs in messages and logs lose their query string (signatures).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import rasterio
import rasterio.warp
import stackstac
from affine import Affine
from dask.base import compute as _dask_compute
from dask.delayed import delayed
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from schemas.errors import EoforgeError, InvalidInputError, NotFoundError, TransientError

__all__ = [
    "DEFAULT_GDAL_ENV",
    "VALID_WEIGHT",
    "AssetCorruptError",
    "AssetMissingError",
    "BrokenAssetError",
    "RasterioBackend",
    "StackstacBackend",
    "TargetGrid",
    "WarpBackend",
    "WarpRequest",
    "classify_io_error",
    "misses_grid",
    "redact_href",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A warped validity weight at or above this is valid (1 minus float64 rounding slack). A nodata
#: neighbour with weight w leaves 1 - w; at 1e-9 even a -32768 nodata shifts a value by < 4e-5.
VALID_WEIGHT = 1.0 - 1e-9

#: GDAL configuration used for every open and read; ``load_sensor(gdal_env=...)`` overrides keys.
DEFAULT_GDAL_ENV: Mapping[str, str] = MappingProxyType(
    {
        # Do not list the remote "directory" or probe for .aux/.msk side-car files.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # GDAL's own retries for HTTP 429/5xx inside one open/read (ours wrap them).
        "GDAL_HTTP_MAX_RETRY": "2",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "GDAL_HTTP_TIMEOUT": "30",
        "GDAL_HTTP_CONNECTTIMEOUT": "10",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }
)

_SCHEME = "eoforge-warp:"

#: rasterio wraps every ndarray in a ``MemoryDataset`` whose constructor silences a warning with
#: ``warnings.catch_warnings()``, which is not thread-safe: two threads inside it at once can
#: leave the process with the other thread's warning filters (and raise NotGeoreferencedWarning
#: under ``-W error``). In-memory warps are therefore serialised; they take milliseconds per
#: tile, and the reads they wait for run outside the lock.
_REPROJECT_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def redact_href(href: str) -> str:
    """An href without query string, fragment or ``user:password@`` (credentials live there)."""
    parts = urllib.parse.urlsplit(href)
    if parts.scheme in ("", "file") or len(parts.scheme) == 1:  # local path (or a drive letter)
        return href
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class BrokenAssetError(EoforgeError):
    """An asset of one scene is permanently unreadable: the caller may drop that scene.

    Attributes:
        item_id: STAC item id of the scene.
        asset_key: Asset key of the broken asset.
        href: The asset href (query string removed).
    """

    def __init__(self, what: str, *, item_id: str, asset_key: str, href: str, fix: str) -> None:
        self.item_id = item_id
        self.asset_key = asset_key
        self.href = redact_href(href)
        super().__init__(what, where=f"item {item_id} asset {asset_key} ({self.href})", fix=fix)


class AssetMissingError(BrokenAssetError, NotFoundError):
    """The asset does not exist (HTTP 404/410, no such file, no such asset key)."""


class AssetCorruptError(BrokenAssetError, InvalidInputError):
    """The asset exists but cannot be decoded or lacks the requested band or georeferencing."""


ErrorKind = Literal["transient", "missing", "denied", "corrupt"]

_MISSING = re.compile(
    r"http response code: (404|410)\b|no such file or directory|does not exist", re.IGNORECASE
)
_DENIED = re.compile(r"http response code: (401|403)\b", re.IGNORECASE)
_TRANSIENT = re.compile(
    r"http response code: (408|425|429|5\d\d)\b|timed? ?out|couldn't connect|could not connect|"
    r"connection (refused|reset|was reset|closed)|recv failure|send failure|empty reply|"
    r"could not resolve|transfer closed|operation too slow|ssl|curl error",
    re.IGNORECASE,
)


#: A block read that got fewer bytes than the file promised.
_SHORT_READ = re.compile(r"got \d+ bytes, expected \d+|read error at|short read", re.IGNORECASE)


def _message_chain(exc: BaseException) -> str:
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(texts)


def classify_io_error(exc: BaseException) -> tuple[ErrorKind, str]:
    """Classify a GDAL/rasterio I/O error by the messages of its exception chain.

    Args:
        exc: The exception (rasterio wraps GDAL's message, sometimes in ``__cause__``).

    Returns:
        ``(kind, message)``: ``"missing"`` (HTTP 404/410, no such file), ``"denied"`` (HTTP
        401/403), ``"transient"`` (HTTP 408/425/429/5xx, timeouts, connection failures) or
        ``"corrupt"`` (anything else: undecodable file, failed block read), and the joined
        messages.
    """
    text = _message_chain(exc)
    if _MISSING.search(text):
        return "missing", text
    if _DENIED.search(text):
        return "denied", text
    if _TRANSIENT.search(text):
        return "transient", text
    return "corrupt", text


# --------------------------------------------------------------------------------------------
# Grid and requests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetGrid:
    """A north-up pixel grid to warp onto.

    Attributes:
        epsg: EPSG code of the CRS.
        transform: Affine transform of the top-left corner.
        shape: ``(ny, nx)``.
    """

    epsg: int
    transform: Affine
    shape: tuple[int, int]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)``."""
        ny, nx = self.shape
        x0, y0 = self.transform.c, self.transform.f
        x1, y1 = self.transform @ (nx, ny)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def resolution_m(self) -> float:
        """Pixel size (x) in CRS units."""
        return abs(self.transform.a)

    def window(self, window: Window) -> TargetGrid:
        """The sub-grid covered by ``window`` (integer offsets and sizes)."""
        col, row = int(window.col_off), int(window.row_off)
        return TargetGrid(
            self.epsg,
            self.transform @ Affine.translation(col, row),
            (int(window.height), int(window.width)),
        )


@dataclass(frozen=True, slots=True)
class WarpRequest:
    """One asset of one item to warp onto the grid.

    Attributes:
        item_id: STAC item id (for error messages and provenance).
        asset_key: Asset key (for error messages).
        href: URL or local path GDAL opens.
        bands: 1-based band indexes inside the asset's file.
        resampling: GDAL resampling of the data and of the validity weights.
        shift_m: ``(dx, dy)`` metres east/north added to the source geotransform (module doc).
        footprint: Return the nearest-neighbour warped source mask (1.0/0.0) of ``bands[0]``
            instead of data.
        src_epsg: EPSG of ``src_bbox`` (from ``proj:*``), if known.
        src_bbox: The (shifted) source extent from ``proj:*``; used only to skip assets that
            cannot overlap the grid without opening them (:func:`misses_grid`).
    """

    item_id: str
    asset_key: str
    href: str
    bands: tuple[int, ...] = (1,)
    resampling: Resampling = Resampling.nearest
    shift_m: tuple[float, float] = (0.0, 0.0)
    footprint: bool = False
    src_epsg: int | None = None
    src_bbox: tuple[float, float, float, float] | None = None

    def to_json(self) -> str:
        """Serialise (the stackstac backend hands requests to its reader as the asset href)."""
        payload = {
            "item_id": self.item_id,
            "asset_key": self.asset_key,
            "href": self.href,
            "bands": list(self.bands),
            "resampling": self.resampling.name,
            "shift_m": list(self.shift_m),
            "footprint": self.footprint,
        }
        return json.dumps(payload, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WarpRequest:
        """Inverse of :meth:`to_json` (``src_*`` are not carried)."""
        raw = json.loads(text)
        dx, dy = raw["shift_m"]
        return cls(
            item_id=str(raw["item_id"]),
            asset_key=str(raw["asset_key"]),
            href=str(raw["href"]),
            bands=tuple(int(b) for b in raw["bands"]),
            resampling=Resampling[raw["resampling"]],
            shift_m=(float(dx), float(dy)),
            footprint=bool(raw["footprint"]),
        )


class WarpBackend(Protocol):
    """Turns warp requests into planes on one grid (the I/O boundary of the ``load`` stage)."""

    def warp(
        self, requests: Sequence[WarpRequest], grid: TargetGrid, *, gdal_env: Mapping[str, str]
    ) -> list[np.ndarray]:
        """Warp every request onto ``grid``.

        Args:
            requests: The requests.
            grid: The target grid.
            gdal_env: GDAL configuration options for every open and read.

        Returns:
            One array per request, in order: dims ``(len(request.bands), y, x)``, float64, raw
            source values (no scale/offset), NaN where not valid; for a footprint request
            ``(1, y, x)`` float64 1.0 inside the source mask and 0.0 elsewhere.

        Raises:
            BrokenAssetError: An asset is permanently unreadable (missing or corrupt).
            TransientError: An asset kept failing with transient errors.
            InvalidInputError: Access to an asset was denied.
        """
        ...


# --------------------------------------------------------------------------------------------
# The warp core (shared by both backends)
# --------------------------------------------------------------------------------------------


def _shifted(transform: Affine, shift_m: tuple[float, float]) -> Affine:
    dx, dy = shift_m
    return Affine.translation(dx, dy) @ transform if (dx or dy) else transform


def _is_remote(href: str) -> bool:
    return urllib.parse.urlsplit(href).scheme in ("http", "https", "s3", "gs", "az")


def _reproject(
    source: np.ndarray,
    src_transform: Affine,
    src_crs: CRS,
    grid: TargetGrid,
    resampling: Resampling,
) -> np.ndarray:
    """``(band, y, x)`` float64 on ``grid``; no source nodata, 0 outside the source.

    XSCALE/YSCALE fix the kernel scale GDAL otherwise derives per chunk from the shapes of the
    source and destination windows: without them a bilinear down-sampling kernel, and so the
    result, depends on how much of the source raster was read (a window or the whole file).
    """
    out = np.zeros((source.shape[0], *grid.shape), np.float64)
    scale = {
        "XSCALE": repr(abs(src_transform.a) / abs(grid.transform.a)),
        "YSCALE": repr(abs(src_transform.e) / abs(grid.transform.e)),
    }
    with _REPROJECT_LOCK:
        rasterio.warp.reproject(
            source,
            out,
            src_transform=src_transform,
            src_crs=src_crs,
            src_nodata=None,
            dst_transform=grid.transform,
            dst_crs=CRS.from_epsg(grid.epsg),
            dst_nodata=None,
            resampling=resampling,
            num_threads=1,
            **scale,
        )
    return out


def _finish(
    request: WarpRequest,
    values: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """Apply the validity rule: data NaN where the warped weight < 1; footprint as 1.0/0.0."""
    if request.footprint:
        return (weights[:1] >= VALID_WEIGHT).astype(np.float64)
    return np.where(weights >= VALID_WEIGHT, values, np.nan)


def _source_window(
    src_transform: Affine, src_crs: CRS, width: int, height: int, grid: TargetGrid
) -> tuple[Window, bool] | None:
    """The source pixels under the grid plus a kernel margin, or None when they do not meet.

    Returns:
        ``(window, inside)``; ``inside`` is True when the padded window was not clipped by the
        raster's edges (every kernel of every target pixel then lies inside the raster).
    """
    bounds = grid.bounds
    if src_crs != CRS.from_epsg(grid.epsg):
        bounds = rasterio.warp.transform_bounds(
            CRS.from_epsg(grid.epsg), src_crs, *bounds, densify_pts=21
        )
    inverse = ~src_transform
    corners = [inverse @ (x, y) for x in (bounds[0], bounds[2]) for y in (bounds[1], bounds[3])]
    cols = [c for c, _ in corners]
    rows = [r for _, r in corners]
    # GDAL widens bilinear/cubic kernels by the down-sampling ratio; 2 px more covers rounding.
    ratio = grid.resolution_m / max(abs(src_transform.a), 1e-12)
    pad = 2 + math.ceil(max(1.0, ratio))
    want = (
        math.floor(min(cols)) - pad,
        math.floor(min(rows)) - pad,
        math.ceil(max(cols)) + pad,
        math.ceil(max(rows)) + pad,
    )
    c0, r0 = max(0, want[0]), max(0, want[1])
    c1, r1 = min(width, want[2]), min(height, want[3])
    if c0 >= c1 or r0 >= r1:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0), (c0, r0, c1, r1) == want


def _nodata_mask(band: np.ndarray, nodata: float) -> np.ndarray:
    """``band != nodata``, the rule of GDAL's nodata mask band.

    A NaN nodata matches NaN pixels; a nodata value the integer dtype cannot hold matches none.
    """
    if math.isnan(nodata):
        return ~np.isnan(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
    if band.dtype.kind in "iu":
        info = np.iinfo(band.dtype)
        if not (info.min <= nodata <= info.max) or nodata != int(nodata):
            return np.ones(band.shape, bool)
    return np.asarray(band != np.asarray(nodata).astype(band.dtype))


def read_valid(
    ds: Any, indexes: Sequence[int], window: Window, *, with_data: bool = True
) -> tuple[np.ndarray | None, np.ndarray]:
    """Read ``(band, y, x)`` data and its validity (bool) in one pass where possible.

    GDAL's ``read_masks`` on a nodata mask re-reads every band through the mask band; on a
    pixel-interleaved many-band file (EnMAP: 224 bands) and a window across block edges that
    took ~17 s per window here, against ~0.1 s for reading the data once. So: masks that are
    the nodata value are computed from the data just read (the same rule GDAL applies);
    a per-dataset mask (internal mask or alpha band) is read once and shared by every band;
    an all-valid raster needs no read. Other cases fall back to ``read_masks``.

    Returns:
        ``(data or None, valid)``; ``data`` is ``None`` when ``with_data`` is False.
    """
    flags = [ds.mask_flag_enums[i - 1] for i in indexes]
    nodatas = [ds.nodatavals[i - 1] for i in indexes]
    data = ds.read(list(indexes), window=window) if with_data else None
    shape = (len(indexes), int(window.height), int(window.width))
    if all(f == [MaskFlags.all_valid] for f in flags):
        return data, np.ones(shape, bool)
    if all(f == [MaskFlags.nodata] for f in flags) and all(n is not None for n in nodatas):
        values = data if data is not None else ds.read(list(indexes), window=window)
        valid = np.empty(shape, bool)
        for j, nd in enumerate(nodatas):
            valid[j] = _nodata_mask(values[j], float(nd))
        return data, valid
    if all(MaskFlags.per_dataset in f for f in flags):
        one = ds.read_masks(indexes[0], window=window) > 0
        return data, np.broadcast_to(one, shape)
    return data, ds.read_masks(list(indexes), window=window) > 0


def _reproject_weights(
    valid: np.ndarray, src_transform: Affine, src_crs: CRS, grid: TargetGrid, resampling: Resampling
) -> np.ndarray:
    """Warp 0/1 validity as weights; one plane when every band has the same validity."""
    if valid.shape[0] > 1 and (valid == valid[:1]).all():
        one = _reproject(valid[:1].astype(np.float64), src_transform, src_crs, grid, resampling)
        return np.broadcast_to(one, (valid.shape[0], *one.shape[1:]))
    return _reproject(valid.astype(np.float64), src_transform, src_crs, grid, resampling)


def _aligned_offset(
    src_transform: Affine, src_crs: CRS, grid: TargetGrid
) -> tuple[int, int] | None:
    """``(col, row)`` of the grid's origin in the source when both grids coincide, else None.

    Same CRS, same north-up pixel size and a whole-pixel offset: every resampling is then the
    identity, and warping reduces to copying a window.
    """
    g = grid.transform
    if src_crs != CRS.from_epsg(grid.epsg) or src_transform.b or src_transform.d or g.b or g.d:
        return None
    if not (
        math.isclose(src_transform.a, g.a, rel_tol=1e-12)
        and math.isclose(src_transform.e, g.e, rel_tol=1e-12)
    ):
        return None
    col, row = ~src_transform @ (g.c, g.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def _copy_aligned(
    ds: Any, request: WarpRequest, grid: TargetGrid, col: int, row: int
) -> np.ndarray:
    """:func:`warp_window` for coinciding grids: a window copy, NaN where the mask is 0."""
    indexes = list(request.bands[:1] if request.footprint else request.bands)
    ny, nx = grid.shape
    fill = 0.0 if request.footprint else np.nan
    values = np.full((len(indexes), ny, nx), fill, np.float64)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + nx, ds.width), min(row + ny, ds.height)
    if c0 < c1 and r0 < r1:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        data, valid = read_valid(ds, indexes, window, with_data=not request.footprint)
        part = valid.astype(np.float64) if data is None else data
        values[:, r0 - row : r1 - row, c0 - col : c1 - col] = np.where(valid, part, fill)
    return values


def _check_dataset(ds: Any, request: WarpRequest) -> None:
    if ds.crs is None:
        raise AssetCorruptError(
            "the raster has no CRS",
            item_id=request.item_id,
            asset_key=request.asset_key,
            href=request.href,
            fix="republish the asset as a georeferenced GeoTIFF/COG",
        )
    missing = [b for b in request.bands if not 1 <= b <= ds.count]
    if missing:
        raise AssetCorruptError(
            f"the raster has {ds.count} band(s), band(s) {missing} were requested",
            item_id=request.item_id,
            asset_key=request.asset_key,
            href=request.href,
            fix="check the profile's asset_band numbering against the asset",
        )


def warp_window(ds: Any, request: WarpRequest, grid: TargetGrid) -> np.ndarray:
    """Warp one request from an open dataset, reading only the source window it needs.

    Args:
        ds: Open rasterio dataset of ``request.href``.
        request: The request.
        grid: Target grid.

    Returns:
        See :meth:`WarpBackend.warp`: ``(band, y, x)`` float64, NaN where invalid (footprint:
        1.0/0.0).
    """
    _check_dataset(ds, request)
    src_transform = _shifted(ds.transform, request.shift_m)
    aligned = _aligned_offset(src_transform, ds.crs, grid)
    if aligned is not None:
        return _copy_aligned(ds, request, grid, *aligned)
    found = _source_window(src_transform, ds.crs, ds.width, ds.height, grid)
    if found is None:
        return _empty(request, grid)
    window, inside = found
    indexes = list(request.bands[:1] if request.footprint else request.bands)
    win_transform = src_transform @ Affine.translation(window.col_off, window.row_off)
    data, valid = read_valid(ds, indexes, window, with_data=not request.footprint)
    resampling = Resampling.nearest if request.footprint else request.resampling
    if inside and valid.all():
        # No invalid source pixel and no raster edge under any kernel: weight 1 everywhere.
        weights = np.ones((len(indexes), *grid.shape), np.float64)
    else:
        weights = _reproject_weights(valid, win_transform, ds.crs, grid, resampling)
    if data is None:
        return _finish(request, weights, weights)
    values = _reproject(data, win_transform, ds.crs, grid, resampling)
    return _finish(request, values, weights)


def warp_whole(ds: Any, request: WarpRequest, grid: TargetGrid) -> np.ndarray:
    """Oracle: like :func:`warp_window` but reading the whole source raster (no window).

    Args:
        ds: Open rasterio dataset of ``request.href``.
        request: The request.
        grid: Target grid.

    Returns:
        ``(band, y, x)`` float64, NaN where invalid (footprint: 1.0/0.0).
    """
    _check_dataset(ds, request)
    indexes = list(request.bands[:1] if request.footprint else request.bands)
    src_transform = _shifted(ds.transform, request.shift_m)
    resampling = Resampling.nearest if request.footprint else request.resampling
    valid = (ds.read_masks(indexes) > 0).astype(np.float64)
    weights = _reproject(valid, src_transform, ds.crs, grid, resampling)
    values = _reproject(ds.read(indexes), src_transform, ds.crs, grid, resampling)
    return _finish(request, values, weights)


@dataclass(frozen=True, slots=True)
class _ReadConfig:
    """How one asset is opened: GDAL options and the retry policy."""

    env: tuple[tuple[str, str], ...]
    retries: int
    backoff_s: float
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


@functools.cache
def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL library rasterio runs on (its bundled copy, else the system's), or ``None``."""
    here = Path(rasterio.__file__).resolve().parent
    candidates = sorted((here.parent / "rasterio.libs").glob("libgdal*"))
    found = ctypes.util.find_library("gdal")
    for name in [*map(str, candidates), *([found] if found else [])]:
        try:
            lib = ctypes.CDLL(name)
            lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
            lib.VSICurlClearCache.argtypes = []
            return lib
        except (OSError, AttributeError):
            continue
    return None


def clear_remote_cache(href: str) -> bool:
    """Forget what GDAL's ``/vsicurl`` family cached for ``href`` (size, header blocks, errors).

    GDAL keeps, per URL and per process, the result of a failed or truncated open; a retry would
    meet the same cached failure without sending a request. (``CPL_VSIL_CURL_NON_CACHED`` takes a
    colon-separated list, which an ``http://host:port`` URL cannot be part of.)

    Returns:
        Whether the cache could be cleared (``False`` if GDAL's library was not found).
    """
    lib = _gdal_library()
    if lib is None:
        return False
    try:
        from rasterio._path import _parse_path

        lib.VSICurlPartialClearCache(_parse_path(href).as_vsi().encode())
    except Exception:  # a private rasterio helper: clear everything instead
        lib.VSICurlClearCache()
    return True


def _back_off(
    config: _ReadConfig, request: WarpRequest, attempt: int, what: str, detail: object
) -> None:
    """Log ``what`` (``%s``: the href without its query) and sleep before the next attempt."""
    delay = config.backoff_s * 2**attempt
    logger.warning(
        what + " (attempt %d/%d), retrying in %.2fs: %s",
        redact_href(request.href),
        attempt + 1,
        config.retries + 1,
        delay,
        detail,
    )
    config.sleep(delay)


def _with_retries(
    request: WarpRequest,
    config: _ReadConfig,
    work: Callable[[Any], T],
) -> T:
    """Open ``request.href`` and run ``work(dataset)`` under the failure policy (module doc)."""
    last: RasterioError | None = None
    attempts = config.retries + 1
    for attempt in range(attempts):
        env = dict(config.env)
        if attempt and _is_remote(request.href):
            # /vsicurl caches a failed open (and a truncated header) per URL: forget it first.
            clear_remote_cache(request.href)
        try:
            with rasterio.Env(**env), rasterio.open(request.href) as ds:
                return work(ds)
        except AssetCorruptError as exc:
            # Over HTTP a header cut short can open as a raster without its CRS or bands: the
            # file is called damaged only if it still reads so on the last attempt.
            if not _is_remote(request.href) or attempt + 1 >= attempts:
                raise
            _back_off(config, request, attempt, "%s reads as damaged", exc)
        except RasterioError as exc:
            kind, text = classify_io_error(exc)
            if (
                kind == "corrupt"
                and _is_remote(request.href)
                and (_SHORT_READ.search(text) or attempt + 1 < attempts)
            ):
                # Over HTTP a short block read means the transfer broke (server gone, connection
                # dropped: GDAL logs response_code=0), not that the file is damaged. And a header
                # that reads as garbage ("not recognized as a supported file format") may be a
                # truncated or throttled response: the file is called damaged only if it still
                # reads so on the last attempt (bypassing /vsicurl's cache).
                kind = "transient"
            ids = {"item_id": request.item_id, "asset_key": request.asset_key}
            if kind == "missing":
                raise AssetMissingError(
                    f"the asset does not exist ({text})",
                    **ids,
                    href=request.href,
                    fix="drop this scene, or re-index the catalog if the file moved",
                ) from exc
            if kind == "corrupt":
                raise AssetCorruptError(
                    f"the asset cannot be read ({text})",
                    **ids,
                    href=request.href,
                    fix="drop this scene; the file is damaged or not a raster",
                ) from exc
            if kind == "denied":
                raise InvalidInputError(
                    f"access to the asset was denied ({text})",
                    where=f"item {request.item_id} asset {request.asset_key} "
                    f"({redact_href(request.href)})",
                    fix="sign the hrefs or pass credentials in gdal_env",
                ) from exc
            last = exc
            if attempt + 1 < attempts:
                _back_off(config, request, attempt, "transient error reading %s", text)
    raise TransientError(
        f"reading {redact_href(request.href)} failed {attempts} times ({last})",
        where=f"item {request.item_id} asset {request.asset_key}",
        fix="retry later; the server or network is failing",
    ) from last


def _bound(
    fn: Callable[[Any, WarpRequest, TargetGrid], np.ndarray], request: WarpRequest, grid: TargetGrid
) -> Callable[[Any], np.ndarray]:
    def work(ds: Any) -> np.ndarray:
        return fn(ds, request, grid)

    return work


def _compute(*collections: Any, **kwargs: Any) -> tuple[Any, ...]:
    result: tuple[Any, ...] = _dask_compute(*collections, **kwargs)  # type: ignore[no-untyped-call]
    return result


def misses_grid(request: WarpRequest, grid: TargetGrid) -> bool:
    """Whether the request's ``proj:*`` extent (if known) cannot overlap the grid."""
    if request.src_bbox is None or request.src_epsg is None:
        return False
    bbox = request.src_bbox
    if request.src_epsg != grid.epsg:
        bbox = rasterio.warp.transform_bounds(
            CRS.from_epsg(request.src_epsg), CRS.from_epsg(grid.epsg), *bbox, densify_pts=21
        )
    minx, miny, maxx, maxy = grid.bounds
    return bool(bbox[0] >= maxx or bbox[2] <= minx or bbox[1] >= maxy or bbox[3] <= miny)


def _empty(request: WarpRequest, grid: TargetGrid) -> np.ndarray:
    """The result of a request whose source does not meet the grid."""
    if request.footprint:
        return np.zeros((1, *grid.shape), np.float64)
    return np.full((len(request.bands), *grid.shape), np.nan, np.float64)


def _env_items(gdal_env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in gdal_env.items()))


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RasterioBackend:
    """Oracle backend: whole-raster reads and ``rasterio.warp.reproject``, one asset at a time.

    Attributes:
        retries: Retries of an asset after a transient error.
        backoff_s: First retry delay in seconds (doubles each retry).
    """

    retries: int = 5
    backoff_s: float = 0.1

    def warp(
        self, requests: Sequence[WarpRequest], grid: TargetGrid, *, gdal_env: Mapping[str, str]
    ) -> list[np.ndarray]:
        """See :meth:`WarpBackend.warp`."""
        config = _ReadConfig(_env_items(gdal_env), self.retries, self.backoff_s)
        return [_with_retries(req, config, _bound(warp_whole, req, grid)) for req in requests]


class _StackstacReader:
    """stackstac ``Reader`` whose "url" is a serialised :class:`WarpRequest`.

    stackstac hands every reader its ``gdal_env`` argument unchanged; the backend passes its
    :class:`_ReadConfig` there. Reads warp with :func:`warp_window` (no source nodata, separate
    validity) under the retry policy.
    """

    def __init__(
        self,
        *,
        url: str,
        spec: Any,
        resampling: Resampling,
        dtype: np.dtype[Any],
        fill_value: float,
        scale_offset: tuple[float, float],
        gdal_env: Any,
        errors_as_nodata: tuple[Exception, ...] = (),
    ) -> None:
        if not url.startswith(_SCHEME) or not isinstance(gdal_env, _ReadConfig):
            raise TypeError("_StackstacReader only reads requests made by StackstacBackend")
        self._url = url
        self._request = WarpRequest.from_json(url.removeprefix(_SCHEME))
        self._grid = TargetGrid(int(spec.epsg), spec.transform, tuple(spec.shape))
        self._config = gdal_env
        self._dtype = np.dtype(dtype)
        self._args = (spec, resampling, dtype, fill_value, scale_offset, errors_as_nodata)

    def read(self, window: Window, **_: Any) -> np.ndarray:
        """Warp the request onto ``window`` of the spec: ``(y, x)``, NaN where invalid."""
        grid = self._grid.window(window)
        planes = _with_retries(
            self._request, self._config, _bound(warp_window, self._request, grid)
        )
        plane: np.ndarray = planes[0].astype(self._dtype, copy=False)
        return plane

    def close(self) -> None:
        """Nothing is held open between reads."""

    def __getstate__(self) -> dict[str, Any]:
        spec, resampling, dtype, fill_value, scale_offset, errors = self._args
        return {
            "url": self._url,
            "spec": spec,
            "resampling": resampling,
            "dtype": dtype,
            "fill_value": fill_value,
            "scale_offset": scale_offset,
            "gdal_env": self._config,
            "errors_as_nodata": errors,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class StackstacBackend:
    """Default backend: stackstac's lazy graph with a no-nodata reader (module docstring).

    The graph is computed with dask's local threaded scheduler (``max_threads`` threads) inside
    the calling task: the load of one tile is a small I/O-bound graph, GDAL releases the GIL,
    and shipping it to a distributed scheduler from inside a shard task would only add
    serialisation.

    Attributes:
        retries: Retries of an asset after a transient error.
        backoff_s: First retry delay in seconds (doubles each retry).
        max_threads: Threads of the local scheduler.
    """

    retries: int = 5
    backoff_s: float = 0.1
    max_threads: int = 4

    def warp(
        self, requests: Sequence[WarpRequest], grid: TargetGrid, *, gdal_env: Mapping[str, str]
    ) -> list[np.ndarray]:
        """See :meth:`WarpBackend.warp`."""
        if not requests:
            return []
        config = _ReadConfig(_env_items(gdal_env), self.retries, self.backoff_s)
        out: list[np.ndarray | None] = [None] * len(requests)
        single: list[int] = []
        multi: list[int] = []
        for i, req in enumerate(requests):
            if misses_grid(req, grid):
                out[i] = _empty(req, grid)
            elif len(req.bands) == 1 or req.footprint:
                single.append(i)
            else:
                multi.append(i)
        lazy: list[Any] = []
        slots: list[tuple[str, list[int]]] = []
        by_resampling: dict[Resampling, list[int]] = {}
        for i in single:
            key = Resampling.nearest if requests[i].footprint else requests[i].resampling
            by_resampling.setdefault(key, []).append(i)
        for resampling, indexes in by_resampling.items():
            lazy.append(self._stack([requests[i] for i in indexes], grid, resampling, config))
            slots.append(("stack", indexes))
        for i in multi:
            req = requests[i]
            task = delayed(_with_retries, pure=False)(req, config, _bound(warp_window, req, grid))
            lazy.append(task)
            slots.append(("delayed", [i]))
        computed = _compute(*lazy, scheduler="threads", num_workers=self.max_threads)
        for (kind, indexes), value in zip(slots, computed, strict=True):
            if kind == "stack":
                for j, i in enumerate(indexes):
                    out[i] = np.asarray(value[j, 0], dtype=np.float64)[np.newaxis]
            else:
                out[indexes[0]] = np.asarray(value)
        return [plane for plane in out if plane is not None]

    def _stack(
        self,
        requests: Sequence[WarpRequest],
        grid: TargetGrid,
        resampling: Resampling,
        config: _ReadConfig,
    ) -> Any:
        items = [_synthetic_item(i, req, grid) for i, req in enumerate(requests)]
        arr = stackstac.stack(
            items,
            assets=["asset"],
            epsg=grid.epsg,
            resolution=grid.resolution_m,
            bounds=grid.bounds,
            snap_bounds=False,
            resampling=resampling,
            chunksize=(1, 1, *grid.shape),
            dtype=np.dtype("float64"),
            fill_value=np.float64(np.nan),
            rescale=False,
            sortby_date=False,
            xy_coords="center",
            properties=False,
            band_coords=False,
            gdal_env=config,
            errors_as_nodata=(),
            reader=_StackstacReader,
        )
        if arr.attrs["transform"] != grid.transform or tuple(arr.shape[2:]) != grid.shape:
            raise RuntimeError(
                f"stackstac grid {arr.attrs['transform']} {arr.shape[2:]} differs from the tile "
                f"grid {grid.transform} {grid.shape}"
            )
        return arr.data


def _synthetic_item(index: int, request: WarpRequest, grid: TargetGrid) -> dict[str, Any]:
    """A one-asset STAC item whose href is the serialised request (for stackstac).

    Every asset claims the whole grid, so stackstac never drops an item (it removes items
    without an overlapping asset, which would misalign results and requests); assets that
    cannot overlap are filtered before by :func:`misses_grid`.
    """
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"request-{index}",
        "properties": {"datetime": "1970-01-01T00:00:00Z"},
        "assets": {
            "asset": {
                "href": _SCHEME + request.to_json(),
                "type": "image/tiff; application=geotiff",
                "proj:epsg": grid.epsg,
                "proj:bbox": list(grid.bounds),
            }
        },
    }
