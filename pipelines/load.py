"""Build stage ``load``: the STAC items of one sensor -> pixels on one tile's exact grid.

:func:`load_sensor` warps every requested band of every item onto the tile grid (CRS = the
tile's UTM EPSG, bounds = the tile bounds, the given resolution; the output transform is
``tile.transform(res)`` exactly, pixel centres at ``minx + (i + 0.5) * res``: no half-pixel
shift), converts raw values to physical units with the sensor profile, and returns a
:class:`pipelines.stack.LoadedStack`.

Resampling per band (SENSORS.md §6.3)
    * QA and classification layers (SCL, QA_PIXEL, QA_RADSAT, EnMAP QL_*): ``nearest``, always;
      a bitfield is never interpolated and no value is invented.
    * Continuous bands whose native pixel is finer than the target (10 m -> 30 m): ``average``.
    * Continuous bands at the same or a coarser native resolution: ``bilinear``.
    * Sentinel-1 RTC gamma0 is resampled in **linear** power and converted to dB afterwards
      (``profile.radiometry.to_db``); averaging dB values would bias dark pixels.

    The native pixel size is read from the asset's (or item's) ``proj:transform``, else taken
    from the profile's band table.

Validity and footprint
    Data are warped without a source nodata and the source mask is warped separately
    (:mod:`pipelines._warp`): a data pixel is NaN unless every source pixel in its resampling
    kernel is valid. ``footprint`` is the nearest-neighbour warp of the source mask of the
    sensor's first quality layer (SCL, QA_PIXEL, QL_QUALITY_CLASSES), or of the first data band
    for sensors without one (Sentinel-1).

Radiometry
    ``physical = raw * scale + offset`` with the profile's per-item rule
    (:meth:`SensorProfile.scale_offset_for_item`: the Sentinel-2 processing-baseline offset,
    Landsat C2 scale/offset, EnMAP gains), applied after resampling in float64, stored float32.

Shifts
    ``shifts_m[item_id] = (dx, dy)`` translates that item's source geotransform by ``dx`` metres
    east and ``dy`` metres north before warping. If a scene's content is displaced by ``+d``
    (a feature at true ``x`` appears at ``x + d`` in the image's georeferencing), pass ``-d``:
    the translation moves every source pixel by ``-d`` back onto the truth. Co-registration
    re-loads a scene this way.

Failures
    Per asset, as :mod:`pipelines._warp` documents: transient HTTP errors are retried with
    backoff inside the loader and end in :class:`TransientError` naming the href; a missing or
    corrupt asset raises :class:`BrokenAssetError` (``AssetMissingError`` / ``AssetCorruptError``)
    with ``item_id`` and ``asset_key``, so the caller can drop that scene and load again. An
    item without the asset a band needs raises ``AssetMissingError`` before any I/O.

Execution
    The backend builds a lazy dask graph (stackstac) and computes it with dask's local threaded
    scheduler inside the calling task, so ``load_sensor`` returns numpy arrays (it runs inside
    one shard task on a Dask worker).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from affine import Affine
from rasterio.enums import Resampling

from pipelines._warp import (
    DEFAULT_GDAL_ENV,
    AssetCorruptError,
    AssetMissingError,
    BrokenAssetError,
    RasterioBackend,
    StackstacBackend,
    TargetGrid,
    WarpBackend,
    WarpRequest,
)
from pipelines.grid import Tile
from pipelines.stack import LoadedStack
from schemas.errors import InvalidInputError
from schemas.profiles import BandRole, BandSpec, SensorProfile
from schemas.radiometry import db

__all__ = [
    "DEFAULT_GDAL_ENV",
    "AssetCorruptError",
    "AssetMissingError",
    "BrokenAssetError",
    "GdalEnv",
    "RasterioBackend",
    "StackstacBackend",
    "TargetGrid",
    "WarpBackend",
    "WarpRequest",
    "load_sensor",
    "resampling_for",
    "tile_grid",
]

#: GDAL configuration options (``rasterio.Env`` keywords), e.g. ``{"GDAL_HTTP_TIMEOUT": 60}``.
GdalEnv = Mapping[str, str | int | float | bool]

#: Relative slack when comparing a native pixel size with the target resolution.
_RES_EPS = 1e-6


def tile_grid(tile: Tile, resolution_m: float) -> TargetGrid:
    """The tile's pixel grid at ``resolution_m``: ``tile.transform(res)`` and ``tile.shape(res)``.

    Raises:
        InvalidInputError: The resolution does not divide the tile size.
    """
    return TargetGrid(tile.epsg, tile.transform(resolution_m), tile.shape(resolution_m))


def resampling_for(band: BandSpec, native_m: float, target_m: float) -> Resampling:
    """The resampling of one band onto a target resolution (module docstring).

    Args:
        band: The band.
        native_m: The source pixel size in metres.
        target_m: The target pixel size in metres.

    Returns:
        ``nearest`` for QA/classification bands, ``average`` when the source is finer than the
        target, else ``bilinear``.
    """
    if band.categorical:
        return Resampling.nearest
    if native_m < target_m * (1.0 - _RES_EPS):
        return Resampling.average
    return Resampling.bilinear


# --------------------------------------------------------------------------------------------
# Item metadata
# --------------------------------------------------------------------------------------------


def _item_time(item: Mapping[str, Any]) -> datetime:
    props = item.get("properties") or {}
    text = props.get("datetime") or props.get("start_datetime")
    if not isinstance(text, str):
        raise InvalidInputError(
            "the item has neither datetime nor start_datetime",
            where=f"item {item.get('id', '?')}",
            fix="give every STAC item an RFC 3339 datetime",
        )
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(
            f"datetime {text!r} is not RFC 3339",
            where=f"item {item.get('id', '?')}",
            fix="use e.g. 2024-05-01T10:20:30Z",
        ) from exc
    if when.tzinfo is None:  # STAC datetimes are UTC
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _epsg_of(meta: Mapping[str, Any]) -> int | None:
    epsg = meta.get("proj:epsg")
    if isinstance(epsg, int) and not isinstance(epsg, bool):
        return epsg
    code = meta.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class _AssetProj:
    epsg: int | None
    transform: Affine | None
    shape: tuple[int, int] | None


def _asset_proj(item: Mapping[str, Any], asset: Mapping[str, Any]) -> _AssetProj:
    props: Mapping[str, Any] = item.get("properties") or {}
    epsg = _epsg_of(asset) if _epsg_of(asset) is not None else _epsg_of(props)
    raw_tr = asset.get("proj:transform", props.get("proj:transform"))
    raw_shape = asset.get("proj:shape", props.get("proj:shape"))
    transform = None
    if isinstance(raw_tr, list | tuple) and len(raw_tr) >= 6:
        transform = Affine(*(float(v) for v in raw_tr[:6]))
    shape = None
    if isinstance(raw_shape, list | tuple) and len(raw_shape) == 2:
        shape = (int(raw_shape[0]), int(raw_shape[1]))
    return _AssetProj(epsg, transform, shape)


def _src_bbox(
    proj: _AssetProj, shift_m: tuple[float, float]
) -> tuple[float, float, float, float] | None:
    if proj.transform is None or proj.shape is None or proj.epsg is None:
        return None
    tr = Affine.translation(*shift_m) @ proj.transform
    ny, nx = proj.shape
    xs, ys = zip(*(tr @ (c, r) for c in (0, nx) for r in (0, ny)), strict=True)
    return (min(xs), min(ys), max(xs), max(ys))


def _sorted_items(items: Sequence[Mapping[str, Any]]) -> list[tuple[datetime, Mapping[str, Any]]]:
    seen: set[str] = set()
    timed: list[tuple[datetime, Mapping[str, Any]]] = []
    for item in items:
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise InvalidInputError("a STAC item has no id", fix="pass STAC item dicts")
        if item_id in seen:
            raise InvalidInputError(f"item {item_id!r} is given twice", fix="pass every scene once")
        seen.add(item_id)
        timed.append((_item_time(item), item))
    timed.sort(key=lambda pair: (pair[0], str(pair[1]["id"])))
    return timed


def _check_collection(item: Mapping[str, Any], profile: SensorProfile) -> None:
    collection = item.get("collection")
    if isinstance(collection, str) and collection not in profile.collections:
        raise InvalidInputError(
            f"item of collection {collection!r} is not a {profile.sensor.value} item of "
            f"{profile.provider.value} (collections {list(profile.collections)})",
            where=f"item {item.get('id')}",
            fix="load the items of one sensor with that sensor's profile",
        )


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """Requests and where each (item, band) plane comes from: ``(request index, band pos)``."""

    requests: list[WarpRequest]
    keys: dict[tuple[Any, ...], int]

    def add(self, key: tuple[Any, ...], make: WarpRequest) -> int:
        index = self.keys.get(key)
        if index is None:
            index = self.keys[key] = len(self.requests)
            self.requests.append(make)
        return index


def _band_source(
    item: Mapping[str, Any],
    band: BandSpec,
    shift: tuple[float, float],
    target_m: float,
    *,
    footprint: bool = False,
) -> WarpRequest:
    item_id = str(item["id"])
    assets: Mapping[str, Any] = item.get("assets") or {}
    asset = assets.get(band.asset_key)
    href = asset.get("href") if isinstance(asset, Mapping) else None
    if not isinstance(asset, Mapping) or not isinstance(href, str) or not href:
        raise AssetMissingError(
            f"the item has no asset {band.asset_key!r} with an href (band {band.name})",
            item_id=item_id,
            asset_key=band.asset_key,
            href="",
            fix="drop this scene or load without that band",
        )
    proj = _asset_proj(item, asset)
    native = abs(proj.transform.a) if proj.transform is not None else band.resolution_m
    return WarpRequest(
        item_id=item_id,
        asset_key=band.asset_key,
        href=href,
        bands=(band.asset_band or 1,),
        resampling=Resampling.nearest if footprint else resampling_for(band, native, target_m),
        shift_m=shift,
        footprint=footprint,
        src_epsg=proj.epsg,
        src_bbox=_src_bbox(proj, shift),
    )


def _plan_item(
    plan: _Plan,
    item: Mapping[str, Any],
    layers: Sequence[BandSpec],
    shift: tuple[float, float],
    target_m: float,
) -> list[tuple[int, int]]:
    """Add one item's requests; bands of one asset with one resampling share a request."""
    where: list[tuple[int, int]] = []
    for band in layers:
        single = _band_source(item, band, shift, target_m)
        key = (single.item_id, single.asset_key, single.resampling)
        index = plan.add(key, single)
        req = plan.requests[index]
        bidx = single.bands[0]
        if bidx not in req.bands:
            req = plan.requests[index] = _with_band(req, bidx)
        where.append((index, req.bands.index(bidx)))
    return where


def _with_band(req: WarpRequest, band: int) -> WarpRequest:
    return WarpRequest(
        item_id=req.item_id,
        asset_key=req.asset_key,
        href=req.href,
        bands=(*req.bands, band),
        resampling=req.resampling,
        shift_m=req.shift_m,
        footprint=req.footprint,
        src_epsg=req.src_epsg,
        src_bbox=req.src_bbox,
    )


def _check_shifts(
    shifts_m: Mapping[str, tuple[float, float]] | None, ids: set[str]
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for item_id, shift in (shifts_m or {}).items():
        if item_id not in ids:
            raise InvalidInputError(
                f"shifts_m names item {item_id!r}, which is not among the items",
                fix="key shifts_m by the ids of the items being loaded",
            )
        dx, dy = (float(v) for v in shift)
        if not (math.isfinite(dx) and math.isfinite(dy)):
            raise InvalidInputError(
                f"shift {shift!r} of item {item_id!r} is not finite", fix="give metres"
            )
        out[item_id] = (dx, dy)
    return out


def _resolve_bands(
    profile: SensorProfile, bands: Sequence[str]
) -> tuple[list[BandSpec], list[BandSpec]]:
    if isinstance(bands, str) or not bands:
        raise InvalidInputError(
            f"bands must be a non-empty list of band names, got {bands!r}",
            fix=f"e.g. {list(profile.default_band_names[:4])}",
        )
    specs = [profile.band(name) for name in bands]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"bands {list(bands)} name a band twice", fix="name each once")
    data = [spec for spec in specs if not spec.categorical]
    qa = list(profile.mask_bands())
    qa += [spec for spec in specs if spec.categorical and spec not in qa]
    return data, qa


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def load_sensor(
    items: Sequence[Mapping[str, Any]],
    tile: Tile,
    *,
    resolution_m: float,
    profile: SensorProfile,
    bands: Sequence[str],
    shifts_m: Mapping[str, tuple[float, float]] | None = None,
    gdal_env: GdalEnv | None = None,
    backend: WarpBackend | None = None,
) -> LoadedStack:
    """Warp the items of one sensor onto one tile's grid, in physical units.

    Args:
        items: STAC item dicts of one sensor (one time plane each); any order.
        tile: The tile; its grid at ``resolution_m`` is the output grid.
        resolution_m: Output pixel size in metres (must divide the tile size).
        profile: The sensor profile of the items (asset keys, resampling roles, radiometry).
        bands: Band names in output order (canonical, common name or asset key). QA and
            classification bands named here go to ``qa``, not ``data``; the profile's mask
            bands are always loaded into ``qa``.
        shifts_m: Per item id, ``(dx, dy)`` metres east/north added to that item's source
            geotransform before warping (module docstring for the sign).
        gdal_env: GDAL configuration options, merged over :data:`DEFAULT_GDAL_ENV`.
        backend: Warp backend; default :class:`StackstacBackend`.

    Returns:
        A LoadedStack, time sorted by (datetime, item id): ``data`` ``(time, band, y, x)``
        float32 in physical units (dB for Sentinel-1 RTC), NaN where the source is not valid;
        ``qa[name]`` ``(time, y, x)`` in the band's dtype, the profile's nodata (else 0) outside
        the source mask; ``footprint`` ``(time, y, x)`` bool; ``times`` datetime64[ns] UTC.

    Raises:
        InvalidInputError: Bad bands, resolution, datetimes, duplicate items, items of another
            collection, shifts for unknown items, an S2 item without processing baseline, or
            access denied to an asset. All but the last are raised before any I/O.
        BrokenAssetError: An asset is missing or corrupt (``item_id``/``asset_key`` name it).
        TransientError: An asset kept failing with transient HTTP errors.
    """
    grid = tile_grid(tile, resolution_m)
    data_bands, qa_bands = _resolve_bands(profile, bands)
    timed = _sorted_items(items)
    for _, item in timed:
        _check_collection(item, profile)
    shifts = _check_shifts(shifts_m, {str(item["id"]) for _, item in timed})
    env = {**DEFAULT_GDAL_ENV, **{k: _env_value(v) for k, v in (gdal_env or {}).items()}}

    # Everything that can fail on metadata fails here, before any I/O.
    scales = [
        [profile.scale_offset_for_item(spec.name, item) for spec in data_bands] for _, item in timed
    ]
    layout = _layout([item for _, item in timed], data_bands, qa_bands, shifts, float(resolution_m))
    chosen: WarpBackend = backend if backend is not None else StackstacBackend()
    planes = chosen.warp(layout.plan.requests, grid, gdal_env=env) if layout.plan.requests else []

    n = len(timed)
    ny, nx = grid.shape
    data = np.full((n, len(data_bands), ny, nx), np.nan, np.float32)
    qa = {spec.name: np.zeros((n, ny, nx), np.dtype(spec.dtype)) for spec in qa_bands}
    footprint = np.zeros((n, ny, nx), np.bool_)
    for t in range(n):
        for b, spec in enumerate(data_bands):
            index, pos = layout.data_at[t][b]
            data[t, b] = _physical(planes[index][pos], spec, profile, scales[t][b])
        for q, spec in enumerate(qa_bands):
            index, pos = layout.qa_at[t][q]
            qa[spec.name][t] = _raw_layer(planes[index][pos], spec)
        ref = layout.footprint_at[t]
        if ref is None:  # the first QA layer's nearest-neighbour validity
            index, pos = layout.qa_at[t][0]
            footprint[t] = ~np.isnan(planes[index][pos])
        else:
            footprint[t] = planes[ref][0] > 0.5

    return LoadedStack(
        sensor=profile.sensor.value,
        tile_id=tile.id,
        epsg=grid.epsg,
        transform=grid.transform,
        resolution_m=float(resolution_m),
        bands=tuple(spec.name for spec in data_bands),
        data=data,
        qa=qa,
        footprint=footprint,
        times=np.array(
            [np.datetime64(when.replace(tzinfo=None), "ns") for when, _ in timed],
            dtype="datetime64[ns]",
        ).reshape(n),
        item_ids=tuple(str(item["id"]) for _, item in timed),
        items=tuple(dict(item) for _, item in timed),
    )


@dataclass(slots=True)
class _Layout:
    """The requests of a load and where each output plane comes from.

    ``data_at[t][b]`` and ``qa_at[t][q]`` are ``(request index, band position)``;
    ``footprint_at[t]`` is a footprint request index, or None to use the first QA layer.
    """

    plan: _Plan
    data_at: list[list[tuple[int, int]]]
    qa_at: list[list[tuple[int, int]]]
    footprint_at: list[int | None]


def _layout(
    items: Sequence[Mapping[str, Any]],
    data_bands: Sequence[BandSpec],
    qa_bands: Sequence[BandSpec],
    shifts: Mapping[str, tuple[float, float]],
    target_m: float,
) -> _Layout:
    layout = _Layout(_Plan([], {}), [], [], [])
    for item in items:
        shift = shifts.get(str(item["id"]), (0.0, 0.0))
        layout.data_at.append(_plan_item(layout.plan, item, data_bands, shift, target_m))
        layout.qa_at.append(_plan_item(layout.plan, item, qa_bands, shift, target_m))
        if qa_bands:
            layout.footprint_at.append(None)
        else:
            req = _band_source(item, data_bands[0], shift, target_m, footprint=True)
            key = (req.item_id, req.asset_key, "footprint")
            layout.footprint_at.append(layout.plan.add(key, req))
    return layout


def _raw_layer(raw: np.ndarray, band: BandSpec) -> np.ndarray:
    """``(y, x)`` QA values in the band's dtype; the band's nodata (else 0) where NaN."""
    fill = band.nodata if band.nodata is not None else 0
    out: np.ndarray = np.where(np.isnan(raw), fill, raw).astype(np.dtype(band.dtype))
    return out


def _env_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "YES" if value else "NO"
    return str(value)


def _physical(
    raw: np.ndarray, band: BandSpec, profile: SensorProfile, scale_offset: tuple[float, float]
) -> np.ndarray:
    """``(y, x)`` float32 physical values of one warped band; NaN stays NaN."""
    scale, offset = scale_offset
    values = raw * scale + offset
    if band.role is BandRole.BACKSCATTER and profile.radiometry.to_db:
        return db(values)
    return values.astype(np.float32)
