"""The PyTorch dataset: :class:`TileDataset`, one sample per catalog row a query selects.

Importing this module imports torch (``import catalog`` does not).

A sample is a ``dict`` with fixed keys and dims (``T`` = time planes, ``B`` = bands, ``H``/``W``
= the sensor's pixels per tile edge, or the ``resize`` size)::

    <sensor>                 float32 (T, B, H, W)  physical values: stored * scale_factor +
                                                   add_offset (then normalised if asked); the
                                                   cube's fill (no observation) -> ``fill_value``
                                                   (NaN by default)
    <sensor>_mask            uint8   (T, H, W)     schemas.cube.MaskBit bitmask (VALID=1,
                                                   CLOUD=2, ..., NODATA=64 where not observed)
    <sensor>_time            int64   (T,)          acquisition time, ns since 1970 UTC;
                                                   schemas.cube.NAT_INT64 (int64 min) where unused
    label_<source>           int64   (H, W)        class index at the label resolution; the
                                                   source's nodata (255) where unknown, so use it
                                                   as ``ignore_index``
    multilabel_<source>      float32 (C,)          1.0 present / 0.0 absent; NaN for every class
                                                   when the tile is not labelled by the source
    index                    int64   ()            index of the sample in this dataset
    position                 int64   ()            position on the cube's tile axis
    tile_id, period, id      str                   grid tile id, period id, row id
                                                   ``<tile_id>_<period>`` (metadata=True)
    epsg                     int64   ()            EPSG of the tile's UTM CRS (metadata=True)
    transform                float64 (6,)          affine a, b, c, d, e, f of the tile at the
                                                   cube's finest resolution (metadata=True)

Every value is a tensor or a ``str``, so the default ``collate_fn`` batches samples (strings
become lists). Pixels that are observed but flagged (cloud, shadow...) keep their values: use
``<sensor>_mask`` (``mask & MaskBit.VALID``) to weight or drop them. ``fill_value=0.0`` gives
zeros instead of NaN where there is no observation.

Resolution: every sensor comes at its native resolution (S2 10 m and Landsat 30 m differ in
``H``/``W``). ``resize=(h, w)`` (or an int) resamples every raster to one size with
:func:`torch.nn.functional.interpolate`: ``resize_mode`` (bilinear by default, antialiased when
shrinking; a NaN spreads to its neighbours, so pass ``fill_value=0.0`` to avoid that) for the
sensor values, ``nearest-exact`` for masks and labels.

Normalisation: ``normalize="cube"`` uses per-band mean and standard deviation of the physical values
over VALID pixels only (mask bit VALID set and not the fill value), from :func:`cube_stats`: the
build's statistics over every current tile (``stats.json`` at the cube root, written at the end of
every build) when present; otherwise computed once from an evenly spaced sample of at most
``stats_tiles`` catalog rows (all rows of the catalog version) and cached in the cube as
``_eoforge/stats.json`` (written atomically: a temporary file renamed over, or one PUT on object
storage). Delete that file, or call ``cube_stats(..., refresh=True)``, after the cube has grown a
lot. A dict ``{sensor: {"mean": [...], "std": [...]}}`` (one value per cube band or per selected
band) gives the statistics directly. A band without valid pixels gets mean 0, and a standard
deviation of 0 or unknown is taken as 1.

Stored values: ``physical=False`` gives ``<sensor>`` in the storage dtype (the cube's fill as
stored), ``label_<source>`` and ``multilabel_<source>`` uint8 (255 = unknown); everything else is
as above. :meth:`TileDataset.to_physical` converts such a sample or batch, on whatever device it
is, into exactly the ``physical=True`` values: the float work moves to the accelerator.

Batches: the DataLoader calls ``__getitems__``; in a worker the batch is decoded into one of
``batch_buffers`` reused buffers (:mod:`catalog._ring`) that the main process maps once, and a
buffer is reused only after the main process has dropped every tensor of its batch.

Workers: the dataset holds the cube URI, a numpy array of cube positions and its options; the
array reader (:mod:`catalog._arrays`) opens the cube lazily in each process and reopens it after
a fork, so the dataset works with any DataLoader ``num_workers`` and the fork, spawn and
forkserver start methods, and pickles to a few bytes per row. ``__getitem__`` reads one chunk
per array with zarr: no Dask, no xarray, no cache beyond one handle per array.

Object storage: ``TileDataset("s3://bucket/cube.zarr", storage_options={...})`` reads the pixels
through fsspec (s3fs). The catalog reader is local-only, so give ``catalog=`` a local copy of
the cube's ``catalog`` folder's parent (or an open :class:`~catalog.query.TileCatalog`), or pass
a :class:`~catalog.query.SearchResult` as ``query``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast, overload

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as tnf
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import collate, default_collate_fn_map

from catalog._arrays import (
    ArrayReader,
    is_remote,
    open_arrays,
    read_remote_bytes,
    write_remote_bytes,
)
from catalog._ring import BatchRing, LeasedBatch, _np_dtype, ring_supported
from catalog.query import SearchResult, TileCatalog, open_catalog
from schemas.cube import (
    TILES_GROUP,
    CubeLayout,
    MaskBit,
    SensorLayout,
    data_path,
    datetime_path,
    label_path,
    mask_path,
    multilabel_path,
)
from schemas.errors import InvalidInputError

__all__ = [
    "STATS_PATH",
    "BatchSamples",
    "BatchedSample",
    "Sample",
    "TileDataset",
    "cube_stats",
    "read_layout",
]

log = logging.getLogger(__name__)

#: A sample: key -> tensor or str (module docstring).
Sample = dict[str, Any]
#: Where :func:`cube_stats` caches the statistics, relative to the cube root.
STATS_PATH = "_eoforge/stats.json"
#: The build's full statistics (``pipelines.stats``), preferred over the sampled cache.
BUILD_STATS_PATH = "stats.json"
_BUILD_STATS_FORMAT = 1
_STATS_FORMAT = 1
DEFAULT_STATS_TILES = 64
_VALID = int(MaskBit.VALID)

TimeSelection = int | Sequence[int] | None
Normalize = bool | str | Mapping[str, Mapping[str, Sequence[float]]] | None


def _cube_uri(cube: str | Path) -> str:
    text = str(cube)
    return text.rstrip("/") if is_remote(text) else str(Path(text).resolve())


def read_layout(reader: ArrayReader) -> CubeLayout:
    """The cube's layout, from its root attributes."""
    return CubeLayout.from_root_attrs(reader.root_attrs())


# --- statistics -----------------------------------------------------------------------------


def _load_stats(cube_uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    try:
        if is_remote(cube_uri):
            data = read_remote_bytes(cube_uri, dict(storage_options or {}), STATS_PATH)
            if data is None:
                return None
            text = data.decode("utf-8")
        else:
            text = (Path(cube_uri) / STATS_PATH).read_text(encoding="utf-8")
        doc = json.loads(text)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _STATS_FORMAT:
        return None
    return doc


def _load_build_stats(
    cube_uri: str, storage_options: Mapping[str, Any] | None, names: Sequence[str]
) -> dict[str, Any] | None:
    """The build's full statistics (``<cube>/stats.json``) in :func:`cube_stats`' form, if any.

    ``None`` when the file is missing, unreadable, of another format or lacks a sensor.
    """
    try:
        if is_remote(cube_uri):
            data = read_remote_bytes(cube_uri, dict(storage_options or {}), BUILD_STATS_PATH)
            if data is None:
                return None
            text = data.decode("utf-8")
        else:
            text = (Path(cube_uri) / BUILD_STATS_PATH).read_text(encoding="utf-8")
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != _BUILD_STATS_FORMAT:
            return None
        sensors: dict[str, Any] = {}
        for name in names:
            entry = doc["sensors"][name]
            bands = list(entry["bands"])
            per_band = entry["splits"]["all"]
            sensors[name] = {
                "bands": bands,
                "mean": [per_band[b]["mean"] for b in bands],
                "std": [per_band[b]["std"] for b in bands],
                "count": [int(per_band[b]["count"]) for b in bands],
            }
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None
    return {
        "format": _STATS_FORMAT,
        "method": "the build's statistics over every current tile (" + BUILD_STATS_PATH + ")",
        "source": BUILD_STATS_PATH,
        "positions": list(doc.get("positions", [])),
        "sensors": sensors,
    }


def _save_stats(
    cube_uri: str, storage_options: Mapping[str, Any] | None, doc: Mapping[str, Any]
) -> None:
    data = (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    try:
        if is_remote(cube_uri):
            # One PUT: atomic on object storage.
            write_remote_bytes(cube_uri, dict(storage_options or {}), STATS_PATH, data)
            return
        final = Path(cube_uri) / STATS_PATH
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".tmp", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            Path(tmp).replace(final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        log.warning("could not cache normalisation statistics in %s: %s", cube_uri, err)


#: Bytes of one block of rows (storage values, float32 values, fill mask) that
#: ``TileDataset.__getitems__`` decodes and converts at once: within a core's L2 cache.
_BLOCK_BYTES = 1 << 20


def _physical(raw: npt.NDArray[Any], sensor: SensorLayout) -> npt.NDArray[np.float32]:
    """Storage values -> float32 physical values (CF scale/offset); fill not yet replaced."""
    return _physical_into(raw, sensor, np.empty(raw.shape, dtype=np.float32))


def _physical_into(
    raw: npt.NDArray[Any], sensor: SensorLayout, out: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``out[:] =`` :func:`_physical` of ``raw`` (same shape); ``out``.

    float32 arithmetic: the cast to float32, times ``scale_factor``, plus ``add_offset``. The
    cast and the product are one ufunc where the cast is exact in it (raw dtypes whose product
    with float32 is float32: int8/16, uint8/16, float32), with the same result.
    """
    if sensor.scale_factor is not None and np.result_type(raw.dtype, np.float32) == np.float32:
        np.multiply(raw, np.float32(sensor.scale_factor), out=out, casting="unsafe")
    else:
        np.copyto(out, raw, casting="unsafe")
        if sensor.scale_factor is not None:
            out *= np.float32(sensor.scale_factor)
    if sensor.add_offset is not None:
        out += np.float32(sensor.add_offset)
    return out


def _fill_of(raw: npt.NDArray[Any], sensor: SensorLayout) -> npt.NDArray[np.bool_]:
    """Where ``raw`` holds the cube's fill (no observation)."""
    nodata = sensor.nodata
    if isinstance(nodata, float) and math.isnan(nodata):
        return np.asarray(~np.isfinite(raw), dtype=np.bool_)
    return np.asarray(raw == nodata, dtype=np.bool_)


def _tile_moments(
    reader: ArrayReader, sensor: SensorLayout, position: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per band: count, mean and sum of squared deviations over the tile's valid pixels."""
    raw = reader.read(data_path(sensor.name), position)  # (T, B, H, W)
    mask = reader.read(mask_path(sensor.name), position)  # (T, H, W)
    valid = ((mask & _VALID) != 0)[:, None] & ~_fill_of(raw, sensor)
    values = _physical(raw, sensor).astype(np.float64)
    nb = raw.shape[1]
    count = valid.sum(axis=(0, 2, 3)).astype(np.float64)
    moved = np.moveaxis(values, 1, 0).reshape(nb, -1)
    keep = np.moveaxis(valid, 1, 0).reshape(nb, -1)
    total = np.where(keep, moved, 0.0).sum(axis=1)
    mean = np.divide(total, count, out=np.zeros(nb), where=count > 0)
    m2 = np.where(keep, (moved - mean[:, None]) ** 2, 0.0).sum(axis=1)
    return count, mean, m2


def _sensor_stats(
    reader: ArrayReader, sensor: SensorLayout, positions: Sequence[int]
) -> dict[str, Any]:
    nb = len(sensor.bands)
    n, mean, m2 = np.zeros(nb), np.zeros(nb), np.zeros(nb)
    for position in positions:
        nt, mt, m2t = _tile_moments(reader, sensor, position)
        total = n + nt
        delta = mt - mean
        safe = np.where(total > 0, total, 1.0)
        mean = mean + delta * nt / safe
        m2 = m2 + m2t + delta**2 * n * nt / safe
        n = total
    std = np.sqrt(np.divide(m2, n, out=np.zeros(nb), where=n > 0))
    return {
        "bands": list(sensor.bands),
        "mean": [float(m) if c > 0 else None for m, c in zip(mean, n, strict=True)],
        "std": [float(s) if c > 0 else None for s, c in zip(std, n, strict=True)],
        "count": [int(c) for c in n],
    }


def _sample_positions(positions: npt.NDArray[np.int64], max_tiles: int) -> list[int]:
    unique = np.unique(positions)
    if unique.size <= max_tiles:
        return [int(p) for p in unique]
    pick = np.linspace(0, unique.size - 1, max_tiles).round().astype(np.int64)
    return [int(p) for p in unique[np.unique(pick)]]


def cube_stats(
    cube: str | Path,
    *,
    storage_options: Mapping[str, Any] | None = None,
    catalog: str | Path | TileCatalog | None = None,
    version: int | None = None,
    max_tiles: int = DEFAULT_STATS_TILES,
    refresh: bool = False,
) -> dict[str, Any]:
    """Per-band statistics of every sensor of the cube over VALID pixels, cached in the cube.

    Uses the build's statistics over every current tile (``<cube>/stats.json``, written at the end
    of every build) when they exist and cover every sensor (unless ``refresh``); else reads
    ``<cube>/_eoforge/stats.json`` when it exists and covers every sensor; otherwise computes the
    statistics from an evenly spaced sample of at most ``max_tiles`` cube positions of the catalog's
    rows and writes the file atomically. Only pixels whose mask has
    :attr:`~schemas.cube.MaskBit.VALID` and whose value is not the fill count; values are physical
    (scale_factor and add_offset applied).

    Args:
        cube: Cube directory or URL.
        storage_options: fsspec options for a URL.
        catalog: Where the catalog is (a local cube folder or an open catalog); default ``cube``.
        version: Catalog version whose rows are sampled (default: the latest rows).
        max_tiles: Most tiles read.
        refresh: Recompute even when the cache exists.

    Returns:
        ``{"format": 1, "positions": [...], "sensors": {name: {"bands", "mean", "std",
        "count"}}}``; ``mean``/``std`` are ``None`` for a band without valid pixels.
    """
    uri = _cube_uri(cube)
    reader = open_arrays(uri, storage_options)
    layout = read_layout(reader)
    names = [s.name for s in layout.sensors]
    if not refresh:
        built = _load_build_stats(uri, storage_options, names)
        if built is not None:
            return built
        doc = _load_stats(uri, storage_options)
        if doc is not None and all(n in doc.get("sensors", {}) for n in names):
            return doc
    if max_tiles < 1:
        raise InvalidInputError(f"max_tiles must be >= 1, got {max_tiles}", where="max_tiles")
    cat = _resolve_catalog(uri, catalog, version)
    positions = _sample_positions(np.asarray(cat.search().positions(), np.int64), max_tiles)
    doc = {
        "format": _STATS_FORMAT,
        "method": "mean and population std of physical values over pixels with mask bit VALID "
        "and not the fill value; evenly spaced sample of catalog positions",
        "catalog_version": cat.version,
        "positions": positions,
        "sensors": {s.name: _sensor_stats(reader, s, positions) for s in layout.sensors},
    }
    _save_stats(uri, storage_options, doc)
    return doc


# --- options --------------------------------------------------------------------------------


def _resolve_catalog(
    cube_uri: str, catalog: str | Path | TileCatalog | None, version: int | None
) -> TileCatalog:
    if isinstance(catalog, TileCatalog):
        if version is not None and catalog.version != version:
            raise InvalidInputError(
                f"the catalog given is version {catalog.version}, not {version}",
                where="version",
                fix="open the catalog with open_catalog(cube, version=...) or drop version",
            )
        return catalog
    if catalog is None:
        if is_remote(cube_uri):
            raise InvalidInputError(
                "the tile catalog can only be read from a local folder",
                where=cube_uri,
                fix="pass catalog=<local copy of the cube with its catalog/ folder>, or a "
                "SearchResult as query",
            )
        catalog = cube_uri
    return open_catalog(catalog, version=version)


def _positions_of(
    cube_uri: str,
    query: SearchResult | Mapping[str, Any] | None,
    catalog: str | Path | TileCatalog | None,
    version: int | None,
) -> tuple[npt.NDArray[np.int64], int | None]:
    if isinstance(query, SearchResult):
        if version is not None and query.catalog.version != version:
            raise InvalidInputError(
                f"the search result comes from catalog version {query.catalog.version}, "
                f"not {version}",
                where="version",
            )
        return np.asarray(query.positions(), dtype=np.int64), query.catalog.version
    if query is not None and not isinstance(query, Mapping):
        raise InvalidInputError(
            f"query must be None, a dict of search arguments or a SearchResult, got "
            f"{type(query).__name__}",
            where="query",
        )
    cat = _resolve_catalog(cube_uri, catalog, version)
    result = cat.search(**dict(query or {}))
    return np.asarray(result.positions(), dtype=np.int64), cat.version


def _compact(positions: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
    """The smallest integer dtype that holds the positions (they pickle with the dataset)."""
    if positions.size and int(positions.max()) < 2**31 and int(positions.min()) >= 0:
        return positions.astype(np.int32)
    return positions


def _plane_selection(
    time: TimeSelection | Mapping[str, TimeSelection], sensor: SensorLayout
) -> tuple[int, ...] | None:
    chosen = time.get(sensor.name) if isinstance(time, Mapping) else time
    if chosen is None:
        return None
    planes = (chosen,) if isinstance(chosen, int) else tuple(int(t) for t in chosen)
    bad = [t for t in planes if not -sensor.n_time <= t < sensor.n_time]
    if bad or not planes:
        raise InvalidInputError(
            f"time planes {list(planes)} are not within the {sensor.n_time} planes of the cube",
            where=f"time ({sensor.name})",
            fix=f"give plane indexes 0..{sensor.n_time - 1}",
        )
    return tuple(t % sensor.n_time for t in planes)


def _band_selection(chosen: Sequence[str | int], sensor: SensorLayout) -> tuple[int, ...]:
    if isinstance(chosen, str):
        chosen = [chosen]
    out: list[int] = []
    for band in chosen:
        if isinstance(band, str):
            if band not in sensor.bands:
                raise InvalidInputError(
                    f"sensor {sensor.name} has no band {band!r}",
                    where="bands",
                    fix=f"use some of {list(sensor.bands)}",
                )
            out.append(sensor.bands.index(band))
        elif -len(sensor.bands) <= int(band) < len(sensor.bands):
            out.append(int(band) % len(sensor.bands))
        else:
            raise InvalidInputError(
                f"band index {band} is out of range for {sensor.name}", where="bands"
            )
    if not out:
        raise InvalidInputError(f"no bands selected for {sensor.name}", where="bands")
    return tuple(out)


def _norm_arrays(
    stats: Mapping[str, Any], sensor: SensorLayout, bands: tuple[int, ...] | None
) -> tuple[list[float], list[float]]:
    mean = list(stats.get("mean", ()))
    std = list(stats.get("std", ()))
    nb_all, nb_sel = len(sensor.bands), len(bands) if bands is not None else len(sensor.bands)
    if len(mean) != len(std) or len(mean) not in (nb_all, nb_sel):
        raise InvalidInputError(
            f"normalisation for {sensor.name} needs {nb_all} (or {nb_sel} selected) means and "
            f"stds, got {len(mean)} and {len(std)}",
            where="normalize",
        )
    if len(mean) == nb_all and bands is not None:
        mean = [mean[b] for b in bands]
        std = [std[b] for b in bands]
    mean_f = [0.0 if m is None or not math.isfinite(m) else float(m) for m in mean]
    std_f = [1.0 if s is None or not math.isfinite(s) or s <= 0 else float(s) for s in std]
    return mean_f, std_f


def _size(resize: int | Sequence[int] | None) -> tuple[int, int] | None:
    if resize is None:
        return None
    pair = (resize, resize) if isinstance(resize, int) else tuple(int(v) for v in resize)
    if len(pair) != 2 or min(pair) < 1:
        raise InvalidInputError(f"resize must be a size or (h, w), got {resize!r}", where="resize")
    return pair[0], pair[1]


# --- the dataset ----------------------------------------------------------------------------


class TileDataset(Dataset[Sample]):
    """Map-style dataset over the catalog rows a query selects (module docstring for samples).

    Args:
        cube: Cube directory, or a URL (``s3://bucket/cube.zarr``) read through fsspec.
        query: ``None`` (every row), a dict of :meth:`~catalog.query.TileCatalog.search`
            arguments, or a :class:`~catalog.query.SearchResult`.
        version: Catalog version to pin (``None``: the latest rows).
        sensors: Sensor groups to read (default: all of the cube's).
        labels: Label sources to read (default: all; ``[]`` for none).
        time: Time plane index(es) to keep, for every sensor or ``{sensor: planes}``
            (default: all ``n_time`` planes).
        bands: ``{sensor: [band names or indexes]}`` to keep (default: every band).
        normalize: ``False``, ``"cube"`` (cached cube statistics, :func:`cube_stats`) or
            ``{sensor: {"mean": [...], "std": [...]}}``.
        transform: Called on each sample dict last; must return a sample dict (and pickle, for
            spawn workers).
        resize: Common ``(h, w)`` (or one int) for every raster; ``None`` keeps native sizes.
        resize_mode: Interpolation of sensor values when resizing (``bilinear``, ``nearest``,
            ``bicubic``, ``area``, ``nearest-exact``).
        fill_value: Value of sensor pixels with no observation (default NaN).
        metadata: Include ``tile_id``, ``period``, ``id``, ``epsg`` and ``transform``.
        catalog: The catalog to query when it is not ``cube``'s (a remote cube): a local cube
            folder or an open :class:`~catalog.query.TileCatalog`.
        storage_options: fsspec options for a URL (``endpoint_url``, ``key``, ``secret``...).
        stats_tiles: Most tiles :func:`cube_stats` samples when it computes statistics.
        physical: ``True``: sensor values as float32 physical values, labels int64 and
            multi-labels float32 (module docstring). ``False``: every array as stored (sensor
            values in the storage dtype with the fill as stored, labels and multi-labels
            uint8, 255 = unknown), half or less of the bytes to decode, move and copy; call
            :meth:`to_physical` on the batch, after moving it to the accelerator, to get the
            ``True`` values exactly. Not with ``resize``.
        batch_buffers: Batch buffers each DataLoader worker reuses (:mod:`catalog._ring`):
            batches are decoded into one of them and reach the main process without a copy, a
            new shared-memory segment or page faults. The worker falls back to a new segment
            when all are held by the training loop. ``0``: a new segment per batch.

    Raises:
        InvalidInputError: An unknown sensor, label source, band or time plane, a bad query,
            normalisation or resize argument.
        NotFoundError: No cube or catalog.
    """

    def __init__(
        self,
        cube: str | Path,
        query: SearchResult | Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        sensors: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        time: TimeSelection | Mapping[str, TimeSelection] = None,
        bands: Mapping[str, Sequence[str | int]] | None = None,
        normalize: Normalize = False,
        transform: Callable[[Sample], Sample] | None = None,
        resize: int | Sequence[int] | None = None,
        resize_mode: str = "bilinear",
        fill_value: float = math.nan,
        metadata: bool = True,
        catalog: str | Path | TileCatalog | None = None,
        storage_options: Mapping[str, Any] | None = None,
        stats_tiles: int = DEFAULT_STATS_TILES,
        physical: bool = True,
        batch_buffers: int = 4,
    ) -> None:
        self.cube_uri = _cube_uri(cube)
        self.storage_options = dict(storage_options or {})
        reader = open_arrays(self.cube_uri, self.storage_options)
        layout = read_layout(reader)
        positions, self.catalog_version = _positions_of(self.cube_uri, query, catalog, version)
        self._positions = _compact(positions)
        self.tiles_per_shard = layout.tiles_per_shard

        cube_sensors = [s.name for s in layout.sensors]
        chosen = list(cube_sensors if sensors is None else sensors)
        for name in chosen:
            if name not in cube_sensors:
                raise InvalidInputError(
                    f"the cube has no sensor {name!r}", where="sensors", fix=f"use {cube_sensors}"
                )
        self.sensors: tuple[str, ...] = tuple(chosen)
        sources = [lab.source for lab in layout.labels]
        chosen_labels = list(sources if labels is None else labels)
        for source in chosen_labels:
            if source not in sources:
                raise InvalidInputError(
                    f"the cube has no label source {source!r}", where="labels", fix=f"use {sources}"
                )
        self.labels: tuple[str, ...] = tuple(chosen_labels)
        extra = sorted(set(bands or {}) - set(self.sensors))
        if extra:
            raise InvalidInputError(
                f"bands given for sensors {extra} that are not read", where="bands"
            )
        self._bands = {
            s: _band_selection(bands[s], layout.sensor(s))
            for s in self.sensors
            if bands and s in bands
        }
        self._planes = {s: _plane_selection(time, layout.sensor(s)) for s in self.sensors}
        self._norm: dict[str, tuple[list[float], list[float]]] = {}
        if normalize is True or normalize == "cube":
            stats = cube_stats(
                self.cube_uri,
                storage_options=self.storage_options,
                catalog=catalog,
                version=version,
                max_tiles=stats_tiles,
            )["sensors"]
            normalize = stats
        if isinstance(normalize, str):
            raise InvalidInputError(
                f"normalize={normalize!r} is not known", where="normalize", fix="use 'cube'"
            )
        if isinstance(normalize, Mapping):
            for s in self.sensors:
                if s in normalize:
                    self._norm[s] = _norm_arrays(normalize[s], layout.sensor(s), self._bands.get(s))
        modes = ("bilinear", "nearest", "bicubic", "area", "nearest-exact")
        if resize_mode not in modes:
            raise InvalidInputError(
                f"resize_mode {resize_mode!r} is not known", where="resize_mode", fix=f"use {modes}"
            )
        self.resize = _size(resize)
        if self.resize is not None and not physical:
            raise InvalidInputError(
                "resize needs physical values",
                where="resize",
                fix="drop resize, or keep physical=True",
            )
        if batch_buffers < 0:
            raise InvalidInputError(
                f"batch_buffers must be >= 0, got {batch_buffers}", where="batch_buffers"
            )
        self.physical = bool(physical)
        self.batch_buffers = int(batch_buffers)
        self.resize_mode = resize_mode
        self.fill_value = float(fill_value)
        self.metadata = metadata
        self.transform = transform
        self._layout: CubeLayout | None = None
        self._reader: ArrayReader | None = None
        self._scratch: dict[str, npt.NDArray[Any]] = {}
        self._ring: BatchRing | None = None
        #: (key, per-sample shape, dtype) of a batch's tensors (``_batch_plan``), made once.
        self._plan: list[tuple[str, tuple[int, ...], torch.dtype]] | None = None

    # --- pickling and lazy state ------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_layout"] = None  # rebuilt from the root attributes in the worker
        state["_reader"] = None  # opened lazily in the worker
        state["_scratch"] = {}  # per-process read buffers of __getitems__
        state["_ring"] = None  # per-process batch buffers of __getitems__
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_scratch", {})
        self.__dict__.setdefault("_ring", None)
        self.__dict__.setdefault("_plan", None)

    def _open(self) -> tuple[ArrayReader, CubeLayout]:
        if self._reader is None:
            self._reader = open_arrays(self.cube_uri, self.storage_options)
        if self._layout is None:
            self._layout = read_layout(self._reader)
        return self._reader, self._layout

    # --- public -----------------------------------------------------------------------------

    @property
    def positions(self) -> npt.NDArray[np.int64]:
        """Cube position of every sample, in dataset order (int64, ``(len,)``)."""
        return self._positions.astype(np.int64)

    def shard_ids(self) -> npt.NDArray[np.int64]:
        """Shard index (``position // tiles_per_shard``) of every sample (samplers group by it)."""
        return self.positions // self.tiles_per_shard

    def __len__(self) -> int:
        return int(self._positions.size)

    def __repr__(self) -> str:
        return (
            f"TileDataset({self.cube_uri!r}, {len(self)} rows, sensors={list(self.sensors)}, "
            f"labels={list(self.labels)})"
        )

    def to_physical(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The ``physical=True`` values of a ``physical=False`` sample or batch, on its device.

        Meant to run on the accelerator after ``batch`` has been moved there: the DataLoader
        then carries the stored integers (half the bytes of float32 for int16 reflectance) and
        the float conversion costs the CPU workers nothing. The arithmetic is the CPU path's,
        in the same order and precision (float32 ``stored * scale_factor + add_offset``, then
        ``(x - mean) / std`` when normalising, the fill -> ``fill_value``), so the result
        equals a ``physical=True`` dataset's exactly on the CPU.

        Args:
            batch: A sample or batch of this dataset with ``physical=False`` (tensors on any
                device; other keys are passed through).

        Returns:
            A new dict: ``<sensor>`` float32 ``(..., T, B, H, W)``, ``label_<source>`` int64,
            ``multilabel_<source>`` float32 (NaN for every class of an unlabelled tile), the
            rest unchanged.

        Raises:
            InvalidInputError: The dataset already gives physical values.
        """
        if self.physical:
            raise InvalidInputError(
                "to_physical is for datasets created with physical=False",
                where="to_physical",
                fix="drop the call (this dataset's samples are physical already)",
            )
        layout = self._open()[1]
        out = dict(batch)
        for name in self.sensors:
            raw = batch[name]
            sensor = layout.sensor(name)
            scale, offset, nodata = sensor.scale_factor, sensor.add_offset, sensor.nodata
            if isinstance(nodata, float) and math.isnan(nodata):
                fill = ~torch.isfinite(raw)
            else:
                fill = raw == nodata
            values = raw.to(torch.float32)
            if scale is not None:
                values = values.mul_(torch.tensor(scale, dtype=torch.float32))
            if offset is not None:
                values = values.add_(torch.tensor(offset, dtype=torch.float32))
            norm = self._norm.get(name)
            if norm is not None:
                mean = torch.tensor(norm[0], dtype=torch.float32, device=values.device)
                std = torch.tensor(norm[1], dtype=torch.float32, device=values.device)
                values = values.sub_(mean[:, None, None]).div_(std[:, None, None])
            out[name] = values.masked_fill_(fill, self.fill_value)
        for source in self.labels:
            lab = layout.label(source)
            out[f"label_{source}"] = batch[f"label_{source}"].to(torch.int64)
            multi = batch[f"multilabel_{source}"]
            values = multi.to(torch.float32)
            if multi.shape[-1] != len(lab.class_names):
                values = values.fill_(math.nan)
            else:
                values = values.masked_fill_((multi == 255).any(dim=-1, keepdim=True), math.nan)
            out[f"multilabel_{source}"] = values
        return out

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {index} is out of range for {n} samples")
        i %= n
        position = int(self._positions[i])
        reader, layout = self._open()
        sample: Sample = {
            "index": torch.tensor(i, dtype=torch.int64),
            "position": torch.tensor(position, dtype=torch.int64),
        }
        for name in self.sensors:
            self._read_sensor(reader, layout.sensor(name), position, sample)
        for source in self.labels:
            lab = layout.label(source)
            raster = reader.read(label_path(source), position)
            multi = reader.read(multilabel_path(source), position)
            if not self.physical:
                sample[f"label_{source}"] = torch.from_numpy(np.ascontiguousarray(raster))
                sample[f"multilabel_{source}"] = torch.from_numpy(np.ascontiguousarray(multi))
                continue
            raster = raster.astype(np.int64)
            sample[f"label_{source}"] = self._resize_nearest(torch.from_numpy(raster))
            values = multi.astype(np.float32)
            if (multi == 255).any() or len(lab.class_names) != multi.size:
                values[:] = np.nan
            sample[f"multilabel_{source}"] = torch.from_numpy(values)
        if self.metadata:
            self._read_metadata(reader, position, sample)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __getitems__(self, indices: Sequence[int]) -> Sequence[Sample]:
        """The samples ``[self[i] for i in indices]``, read as one batch (the DataLoader's path).

        Every array is read for the whole batch at once: raw slabs decoded into reused
        per-process buffers, converted to float32 (scale, offset, normalisation, fill) once per
        batch, into one preallocated tensor per key (in shared memory in a DataLoader worker).
        The result is a :class:`BatchSamples` sequence of :class:`BatchedSample` dicts equal to
        ``__getitem__``'s, whose tensors are views of those batch tensors (each made when first
        accessed); the default ``collate_fn`` (and :func:`torch.utils.data.default_collate`)
        returns the batch tensors themselves when it is given these samples, without copying
        them again or making the per-sample views. With ``transform`` or ``resize`` the samples
        are read one by one (a list).
        """
        if self.transform is not None or self.resize is not None:
            return [self[i] for i in indices]
        n = len(self)
        rows: list[int] = []
        for index in indices:
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"index {index} is out of range for {n} samples")
            rows.append(i % n)
        if not rows:
            return []
        reader, layout = self._open()
        positions = [int(p) for p in self._positions[rows]]
        plan = self._plan
        if plan is None:
            plan = self._plan = self._batch_plan(reader, layout)
        batch, lease = self._alloc_batch(plan, len(rows))
        batch["index"].numpy()[:] = rows
        batch["position"].numpy()[:] = positions
        for name in self.sensors:
            self._read_sensor_batch(reader, layout.sensor(name), positions, batch)
        for source in self.labels:
            lab = layout.label(source)
            self._read_rows(reader, label_path(source), positions, batch[f"label_{source}"].numpy())
            if not self.physical:
                multi_out = batch[f"multilabel_{source}"].numpy()
                self._read_rows(reader, multilabel_path(source), positions, multi_out)
                continue
            multi = self._raw_rows(reader, multilabel_path(source), positions)
            values = batch[f"multilabel_{source}"].numpy()
            np.copyto(values, multi, casting="unsafe")
            if len(lab.class_names) != multi.shape[1]:
                values[:] = np.nan
            else:
                values[(multi == 255).any(axis=1)] = np.nan
        if self.metadata:
            tile_ids = [str(v) for v in self._raw_rows(reader, f"{TILES_GROUP}/id", positions)]
            periods = [str(v) for v in self._raw_rows(reader, f"{TILES_GROUP}/period", positions)]
            self._read_rows(reader, f"{TILES_GROUP}/epsg", positions, batch["epsg"].numpy())
            transform = batch["transform"].numpy()
            self._read_rows(reader, f"{TILES_GROUP}/transform", positions, transform)
            batch["tile_id"] = tile_ids
            batch["period"] = periods
            batch["id"] = [f"{t}_{p}" for t, p in zip(tile_ids, periods, strict=True)]
        order = [key for key, _, _ in plan]
        if self.metadata:
            order[order.index("epsg") : order.index("epsg")] = ["tile_id", "period", "id"]
        return BatchSamples({key: batch[key] for key in order}, lease)

    def _alloc_batch(
        self, plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]], n: int
    ) -> tuple[dict[str, Any], Lease]:
        """The batch's tensors (:func:`_alloc_batch`), in this worker's ring when it has one."""
        ring = None
        if self.batch_buffers > 0 and get_worker_info() is not None and ring_supported():
            ring = self._ring
            if ring is None or ring.pid != os.getpid():
                # Sized for this batch; a larger batch later falls back to a new segment.
                ring = self._ring = BatchRing(self.batch_buffers, _batch_layout(plan, n)[1])
        return _alloc_batch(plan, n, ring)

    def _batch_plan(
        self, reader: ArrayReader, layout: CubeLayout
    ) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(key, per-sample shape, dtype) of every tensor of a sample, in sample order."""
        plan: list[tuple[str, tuple[int, ...], torch.dtype]] = [
            ("index", (), torch.int64),
            ("position", (), torch.int64),
        ]
        for name in self.sensors:
            t, b, h, w = reader.shape(data_path(name))[1:]
            planes = self._planes.get(name)
            bands = self._bands.get(name)
            t = len(planes) if planes is not None else t
            b = len(bands) if bands is not None else b
            dtype = torch.float32 if self.physical else _torch_dtype(reader.dtype(data_path(name)))
            plan += [
                (name, (t, b, h, w), dtype),
                (f"{name}_mask", (t, h, w), torch.uint8),
                (f"{name}_time", (t,), torch.int64),
            ]
        for source in self.labels:
            label_t, multi_t = (
                (torch.int64, torch.float32)
                if self.physical
                else (
                    _torch_dtype(reader.dtype(label_path(source))),
                    _torch_dtype(reader.dtype(multilabel_path(source))),
                )
            )
            plan += [
                (f"label_{source}", tuple(reader.shape(label_path(source))[1:]), label_t),
                (f"multilabel_{source}", tuple(reader.shape(multilabel_path(source))[1:]), multi_t),
            ]
        if self.metadata:
            plan += [
                ("epsg", (), torch.int64),
                ("transform", tuple(reader.shape(f"{TILES_GROUP}/transform")[1:]), torch.float64),
            ]
        return plan

    def _raw_rows(
        self, reader: ArrayReader, path: str, positions: Sequence[int]
    ) -> npt.NDArray[Any]:
        """``array[positions]`` in its stored dtype, decoded into a reused per-process buffer."""
        n = len(positions)
        scratch = self._scratch.get(path)
        if scratch is None or scratch.shape[0] < n:
            shape = tuple(reader.shape(path)[1:])
            scratch = np.empty((max(n, 1), *shape), dtype=reader.dtype(path))
            self._scratch[path] = scratch
        return reader.read_rows(path, positions, scratch[:n])

    def _read_rows(
        self, reader: ArrayReader, path: str, positions: Sequence[int], out: npt.NDArray[Any]
    ) -> None:
        """``out[:] = array[positions]``: decoded straight into ``out`` when the dtypes match."""
        if reader.dtype(path) == out.dtype and out.flags.c_contiguous:
            reader.read_rows(path, positions, out)
            return
        np.copyto(out, self._raw_rows(reader, path, positions), casting="unsafe")

    def _read_sensor_batch(
        self,
        reader: ArrayReader,
        sensor: SensorLayout,
        positions: Sequence[int],
        batch: dict[str, Any],
    ) -> None:
        name = sensor.name
        planes = self._planes.get(name)
        bands = self._bands.get(name)
        values = batch[name].numpy()
        as_stored = not self.physical and planes is None and bands is None
        if as_stored:  # decoded straight into the batch
            self._read_rows(reader, data_path(name), positions, values)
        mask_out = batch[f"{name}_mask"].numpy()
        time_out = batch[f"{name}_time"].numpy()
        if planes is None:
            self._read_rows(reader, mask_path(name), positions, mask_out)
            self._read_rows(reader, datetime_path(name), positions, time_out)
        else:
            sel = list(planes)
            mask = self._raw_rows(reader, mask_path(name), positions)
            np.copyto(mask_out, mask[:, sel], casting="unsafe")
            times = self._raw_rows(reader, datetime_path(name), positions)
            np.copyto(time_out, times[:, sel].astype(np.int64), casting="unsafe")
        if as_stored:
            return
        # A few rows at a time: each block is decoded into the same small scratch and converted
        # while it is still in the CPU cache, instead of every pass going over the whole batch
        # in memory (float32 demo batches of 16 and 64 through a 2-worker DataLoader: 16-30 %
        # more samples/s than whole-batch passes).
        row_values = math.prod(values.shape[1:])
        itemsize = reader.dtype(data_path(name)).itemsize
        block = max(1, _BLOCK_BYTES // max(1, row_values * (itemsize + values.itemsize + 1)))
        for start in range(0, len(positions), block):
            stop = min(start + block, len(positions))
            raw = self._raw_rows(reader, data_path(name), positions[start:stop])
            if planes is not None:
                raw = raw[:, list(planes)]
            if bands is not None:
                raw = raw[:, :, list(bands)]
            if self.physical:
                self._sample_values_into(raw, sensor, values[start:stop])
            else:
                np.copyto(values[start:stop], raw)

    def _sample_values_into(
        self, raw: npt.NDArray[Any], sensor: SensorLayout, values: npt.NDArray[np.float32]
    ) -> None:
        """``values[:] =`` physical (scaled, offset, normalised) ``raw``; fill where no data.

        ``raw``: (rows, T, B, H, W) in the storage dtype; ``values``: float32 of the same shape.
        :func:`_physical_into`, then the normalisation, then the fill, as ``__getitem__``.
        """
        fill = _fill_of(raw, sensor)
        _physical_into(raw, sensor, values)
        norm = self._norm.get(sensor.name)
        if norm is not None:
            values -= np.asarray(norm[0], dtype=np.float32)[None, None, :, None, None]
            values /= np.asarray(norm[1], dtype=np.float32)[None, None, :, None, None]
        if fill.any():
            np.copyto(values, np.float32(self.fill_value), where=fill)

    # --- reading ----------------------------------------------------------------------------

    def _read_sensor(
        self, reader: ArrayReader, sensor: SensorLayout, position: int, sample: Sample
    ) -> None:
        name = sensor.name
        raw = reader.read(data_path(name), position)  # (T, B, H, W) storage dtype
        mask = reader.read(mask_path(name), position)  # (T, H, W)
        times = reader.read(datetime_path(name), position).astype(np.int64)  # (T,)
        planes = self._planes.get(name)
        if planes is not None:
            raw, mask, times = raw[list(planes)], mask[list(planes)], times[list(planes)]
        bands = self._bands.get(name)
        if bands is not None:
            raw = raw[:, list(bands)]
        if not self.physical:
            sample[name] = torch.from_numpy(np.ascontiguousarray(raw))
            sample[f"{name}_mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))
            sample[f"{name}_time"] = torch.from_numpy(np.ascontiguousarray(times))
            return
        fill = _fill_of(raw, sensor)
        values = _physical(raw, sensor)
        norm = self._norm.get(name)
        if norm is not None:
            mean = np.asarray(norm[0], dtype=np.float32)[None, :, None, None]
            std = np.asarray(norm[1], dtype=np.float32)[None, :, None, None]
            values = (values - mean) / std
        values[fill] = self.fill_value
        tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))
        if self.resize is not None and tuple(tensor.shape[-2:]) != self.resize:
            shrink = self.resize[0] < tensor.shape[-2] or self.resize[1] < tensor.shape[-1]
            antialias = shrink and self.resize_mode in ("bilinear", "bicubic")
            align = False if self.resize_mode in ("bilinear", "bicubic") else None
            tensor = tnf.interpolate(
                tensor,
                size=self.resize,
                mode=self.resize_mode,
                align_corners=align,
                antialias=antialias,
            )
            mask_t = self._resize_nearest(mask_t)
        sample[name] = tensor
        sample[f"{name}_mask"] = mask_t
        sample[f"{name}_time"] = torch.from_numpy(np.ascontiguousarray(times))

    def _resize_nearest(self, raster: torch.Tensor) -> torch.Tensor:
        """Nearest-exact resize of an integer ``(..., H, W)`` raster to :attr:`resize`."""
        if self.resize is None or tuple(raster.shape[-2:]) == self.resize:
            return raster
        lead = raster.shape[:-2]
        flat = raster.reshape(1, -1, *raster.shape[-2:]).to(torch.float64)
        out = tnf.interpolate(flat, size=self.resize, mode="nearest-exact")
        return out.to(raster.dtype).reshape(*lead, *self.resize)

    def _read_metadata(self, reader: ArrayReader, position: int, sample: Sample) -> None:
        tile_id = str(reader.read(f"{TILES_GROUP}/id", position).item())
        period = str(reader.read(f"{TILES_GROUP}/period", position).item())
        epsg = int(reader.read(f"{TILES_GROUP}/epsg", position).item())
        transform = reader.read(f"{TILES_GROUP}/transform", position).astype(np.float64)
        sample["tile_id"] = tile_id
        sample["period"] = period
        sample["id"] = f"{tile_id}_{period}"
        sample["epsg"] = torch.tensor(epsg, dtype=torch.int64)
        sample["transform"] = torch.from_numpy(np.ascontiguousarray(transform))


# --- batches (TileDataset.__getitems__) ----------------------------------------------------

_ALIGN = 64


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    """The torch dtype of a numeric numpy dtype (native byte order)."""
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype).newbyteorder("="))).dtype


#: A batch's slot in a worker's ring: (ring, slot, uint8 tensor over the slot); None otherwise.
Lease = tuple[BatchRing, int, torch.Tensor] | None


def _batch_layout(
    plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]], n: int
) -> tuple[list[int], int]:
    """Byte offset of every key's ``(n, *shape)`` tensor in the batch buffer, and its size."""
    offsets: list[int] = []
    total = 0
    for _, shape, dtype in plan:
        offsets.append(total)
        total += -(-(n * math.prod(shape) * dtype.itemsize) // _ALIGN) * _ALIGN
    return offsets, max(total, 1)


def _alloc_batch(
    plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
    n: int,
    ring: BatchRing | None = None,
) -> tuple[dict[str, Any], Lease]:
    """One ``(n, *shape)`` tensor per key, all views of a single buffer; and its lease.

    In a DataLoader worker the buffer is a free slot of ``ring`` when there is one (its lease
    is returned), else a new shared-memory segment for the DataLoader to hand to the main
    process; in the main process, ordinary memory. Views of a ring slot or of ordinary memory
    are made through numpy (a fifth of torch's slice + view + view); views of a shared-memory
    segment stay torch views of its storage, which the DataLoader shares as one segment.
    """
    offsets, total = _batch_layout(plan, n)
    lease: Lease = None
    slot = ring.acquire(total) if ring is not None else None
    if slot is not None:
        buffer = slot[1]
        lease = (ring, slot[0], buffer)  # type: ignore[assignment]
    elif get_worker_info() is not None:
        buffer = torch.empty(0, dtype=torch.uint8).set_(
            torch.UntypedStorage._new_shared(total)  # type: ignore[no-untyped-call]
        )
    else:
        buffer = torch.empty(total, dtype=torch.uint8)
    flat = buffer.numpy() if lease is not None or get_worker_info() is None else None
    batch: dict[str, Any] = {}
    for (key, shape, dtype), start in zip(plan, offsets, strict=True):
        nbytes = n * math.prod(shape) * dtype.itemsize
        np_dtype = _np_dtype(str(dtype).removeprefix("torch.")) if flat is not None else None
        if np_dtype is not None:
            part = flat[start : start + nbytes]  # type: ignore[index]
            batch[key] = torch.from_numpy(part.view(np_dtype).reshape(n, *shape))
        else:
            batch[key] = buffer[start : start + nbytes].view(dtype).view(n, *shape)
    return batch, lease


class BatchedSample(dict[str, Any]):
    """A sample of :meth:`TileDataset.__getitems__`, equal to ``__getitem__``'s.

    Its tensors are views of the batch's tensors; it also knows its batch and row, so that
    collating exactly the samples of one batch, in order, returns the batch without copying.
    It pickles as a plain ``dict``.
    """

    __slots__ = ("batch", "lease", "row")

    def __init__(
        self,
        batch: dict[str, Any],
        row: int,
        lease: Lease = None,
        items: Iterable[tuple[str, Any]] | None = None,
    ) -> None:
        # ``items``: the row's (key, value) pairs when the caller already has them (views
        # made for a whole batch at once by :func:`_batched_samples`).
        if items is None:
            items = ((key, value[row]) for key, value in batch.items())
        super().__init__(items)
        self.batch = batch
        self.row = row
        self.lease = lease

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class BatchSamples(Sequence[Sample]):
    """The samples of one :meth:`TileDataset.__getitems__` batch, in order.

    A read-only sequence of :class:`BatchedSample`: each is made (its tensors as views of the
    batch's) when first accessed, then kept. :func:`torch.utils.data.default_collate` of the
    whole sequence returns the batch itself, so the DataLoader's path never makes the
    per-sample views (a few microseconds per sample and key). It pickles as a ``list`` of
    plain ``dict``.
    """

    __slots__ = ("_samples", "batch", "lease")

    def __init__(self, batch: dict[str, Any], lease: Lease = None) -> None:
        self.batch = batch
        self.lease = lease
        self._samples: list[BatchedSample | None] = [None] * len(batch["index"])

    def __len__(self) -> int:
        return len(self._samples)

    @overload
    def __getitem__(self, i: int) -> Sample: ...

    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self._samples)
        if not -n <= i < n:
            raise IndexError(f"sample {i} is out of range for a batch of {n}")
        row = i % n
        sample = self._samples[row]
        if sample is None:
            sample = self._samples[row] = BatchedSample(self.batch, row, self.lease)
        return sample

    def __iter__(self) -> Iterator[Sample]:
        if any(s is None for s in self._samples):  # made all at once, keeping those made
            made = _batched_samples(self.batch, self.lease)
            self._samples[:] = [
                new if old is None else old for old, new in zip(self._samples, made, strict=True)
            ]
        return iter(cast(list[Sample], self._samples))

    def __repr__(self) -> str:
        return f"BatchSamples({len(self)} samples of keys {list(self.batch)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, ([dict(s) for s in self],))


def _batched_samples(batch: dict[str, Any], lease: Lease) -> list[BatchedSample]:
    """One :class:`BatchedSample` per row of ``batch``: its values are views of the batch.

    Each tensor is split into its rows with one ``unbind`` (a third cheaper than indexing every
    row of every key); lists give their items.
    """
    keys = list(batch)
    columns = [v.unbind(0) if isinstance(v, torch.Tensor) else v for v in batch.values()]
    return [
        BatchedSample(batch, row, lease, zip(keys, values, strict=True))
        for row, values in enumerate(zip(*columns, strict=True))
    ]


def _collate_batched(
    batch: Sequence[Any], *, collate_fn_map: dict[Any, Callable[..., Any]] | None = None
) -> Any:
    if isinstance(batch, BatchSamples):  # a whole batch of __getitems__, in order
        return _whole_batch(batch.batch, batch.lease)
    first = batch[0]
    whole = first.batch
    if all(
        isinstance(s, BatchedSample) and s.batch is whole and s.row == r
        for r, s in enumerate(batch)
    ) and len(batch) == len(whole["index"]):
        return _whole_batch(whole, first.lease)
    return collate([dict(s) for s in batch], collate_fn_map=collate_fn_map)


def _whole_batch(whole: dict[str, Any], lease: Lease) -> dict[str, Any]:
    """The batch tensors themselves, as the collated batch (a lease when in a ring slot)."""
    return dict(whole) if lease is None else LeasedBatch(dict(whole), *lease)


default_collate_fn_map[BatchedSample] = _collate_batched
