"""Dataset statistics over the current tiles of a cube: streaming, bounded memory, per split.

What :func:`cube_statistics` computes, for the cube positions a caller names (the catalog's current
rows: a rebuilt tile's superseded position must not be passed) and their split:

* per sensor and band, over VALID pixels only (mask bit :attr:`~schemas.cube.MaskBit.VALID` set
  and the stored value not the sensor's nodata), of the physical values
  ``stored * scale_factor + add_offset`` (float64): ``count``, ``mean``, ``std`` (population),
  ``min``, ``max`` and percentiles ``p1 p5 p50 p95 p99``; for ``"all"`` and every split;
* per label source, per split: pixel counts and fractions of every class (nodata excluded) and
  the number of tiles in which each class occurs;
* per sensor: histograms of the per-plane valid fraction (VALID pixels / all pixels) and cloud
  fraction (CLOUD pixels / pixels without NODATA), 10 bins on [0, 1], over the time planes that
  hold an observation (not all NODATA), for ``"all"`` and every split.

Method: one tile at a time (memory is one tile plus fixed-size accumulators). Mean and std use
per-tile moments merged with Chan et al.'s parallel update in float64 (exact up to rounding).
Percentiles need a second pass over the same tiles: a fixed-bin histogram (``n_bins`` bins per
band) between the band's overall min and max; each needed order statistic is taken as the centre
of its bin and numpy's ``linear`` interpolation is applied between the two order statistics, so
the error of a percentile is at most half a bin (``percentile_tolerance`` in the output states
the bin width per band).

The result is JSON-able (:func:`write_stats` writes it atomically); :func:`summary_attrs` is the
compact per-band mean/std that goes into the cube's root attributes (:data:`ATTRS_KEY`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from schemas.cube import (
    CubeLayout,
    LabelLayout,
    MaskBit,
    SensorLayout,
    data_path,
    label_path,
    mask_path,
)
from schemas.errors import InvalidInputError

__all__ = [
    "ATTRS_KEY",
    "PERCENTILES",
    "STATS_FILE",
    "STATS_FORMAT",
    "cube_statistics",
    "record_stats",
    "summary_attrs",
    "write_stats",
]

#: Name of the statistics file at the cube root.
STATS_FILE = "stats.json"
#: Format number of :data:`STATS_FILE`.
STATS_FORMAT = 1
#: Root attribute holding the compact summary (:func:`summary_attrs`).
ATTRS_KEY = "eoforge_stats"
#: Percentiles reported per band.
PERCENTILES: tuple[float, ...] = (1.0, 5.0, 50.0, 95.0, 99.0)
#: Default histogram bins per band for the percentiles.
DEFAULT_BINS = 4096
#: Bins of the valid/cloud fraction histograms on [0, 1].
FRACTION_BINS = 10
ALL = "all"
UNASSIGNED = "unassigned"

_VALID = int(MaskBit.VALID)
_CLOUD = int(MaskBit.CLOUD)
_NODATA = int(MaskBit.NODATA)


@dataclass
class _Bands:
    """Accumulators of one sensor and one split: float64 arrays of shape ``(band,)``."""

    nb: int
    count: npt.NDArray[np.float64] = field(init=False)
    mean: npt.NDArray[np.float64] = field(init=False)
    m2: npt.NDArray[np.float64] = field(init=False)
    lo: npt.NDArray[np.float64] = field(init=False)
    hi: npt.NDArray[np.float64] = field(init=False)
    hist: npt.NDArray[np.int64] | None = None
    valid_hist: npt.NDArray[np.int64] = field(init=False)
    cloud_hist: npt.NDArray[np.int64] = field(init=False)
    planes: int = 0

    def __post_init__(self) -> None:
        self.count = np.zeros(self.nb)
        self.mean = np.zeros(self.nb)
        self.m2 = np.zeros(self.nb)
        self.lo = np.full(self.nb, np.inf)
        self.hi = np.full(self.nb, -np.inf)
        self.valid_hist = np.zeros(FRACTION_BINS, np.int64)
        self.cloud_hist = np.zeros(FRACTION_BINS, np.int64)

    def merge(
        self,
        count: npt.NDArray[np.float64],
        mean: npt.NDArray[np.float64],
        m2: npt.NDArray[np.float64],
        lo: npt.NDArray[np.float64],
        hi: npt.NDArray[np.float64],
    ) -> None:
        """Chan et al.'s merge of one tile's per-band moments into these."""
        total = self.count + count
        delta = mean - self.mean
        safe = np.where(total > 0, total, 1.0)
        self.mean = self.mean + delta * count / safe
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / safe
        self.count = total
        self.lo = np.minimum(self.lo, lo)
        self.hi = np.maximum(self.hi, hi)


def _physical(raw: npt.NDArray[Any], sensor: SensorLayout) -> npt.NDArray[np.float64]:
    """Stored values -> float64 physical values (CF scale/offset)."""
    values = raw.astype(np.float64)
    if sensor.scale_factor is not None:
        values *= float(sensor.scale_factor)
    if sensor.add_offset is not None:
        values += float(sensor.add_offset)
    return values


def _valid_values(
    raw: npt.NDArray[Any], mask: npt.NDArray[np.uint8], sensor: SensorLayout
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """``(values, keep)`` of shape ``(band, time*y*x)``: physical values and the VALID pixels.

    Args:
        raw: ``(time, band, y, x)`` stored values of one tile.
        mask: ``(time, y, x)`` uint8 MaskBit flags of the same tile.
        sensor: The sensor's layout (nodata, scale, offset).
    """
    nodata = sensor.nodata
    nan_fill = isinstance(nodata, float) and math.isnan(nodata)
    fill = ~np.isfinite(raw) if nan_fill else raw == nodata
    valid = ((mask & _VALID) != 0)[:, None] & ~fill
    nb = raw.shape[1]
    values = np.moveaxis(_physical(raw, sensor), 1, 0).reshape(nb, -1)
    keep = np.moveaxis(valid, 1, 0).reshape(nb, -1)
    return values, keep


def _tile_moments(
    values: npt.NDArray[np.float64], keep: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float64], ...]:
    """Per band: count, mean, sum of squared deviations, min, max over the kept pixels."""
    nb = values.shape[0]
    count = keep.sum(axis=1).astype(np.float64)
    total = np.where(keep, values, 0.0).sum(axis=1)
    mean = np.divide(total, count, out=np.zeros(nb), where=count > 0)
    m2 = np.where(keep, (values - mean[:, None]) ** 2, 0.0).sum(axis=1)
    lo = np.where(keep, values, np.inf).min(axis=1, initial=np.inf)
    hi = np.where(keep, values, -np.inf).max(axis=1, initial=-np.inf)
    return count, mean, m2, lo, hi


def _fraction_bin(fraction: float) -> int:
    return min(int(fraction * FRACTION_BINS), FRACTION_BINS - 1)


def _splits_of(positions: Mapping[int, str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for position, split in positions.items():
        if int(position) < 0:
            raise InvalidInputError(f"cube position {position} is negative", where="positions")
        out[int(position)] = split or UNASSIGNED
    return dict(sorted(out.items()))


def _edges(lo: float, hi: float, n_bins: int) -> tuple[float, float]:
    """``(start, width)`` of the histogram of one band; width 0 when every value is equal."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return (lo if math.isfinite(lo) else 0.0), 0.0
    return lo, (hi - lo) / n_bins


def _percentiles(
    hist: npt.NDArray[np.int64], start: float, width: float, count: int
) -> dict[str, float | None]:
    """Percentiles (numpy ``linear`` method) from one band's histogram; error <= width / 2."""
    if count == 0:
        return {f"p{q:g}": None for q in PERCENTILES}
    if width == 0.0:
        return {f"p{q:g}": start for q in PERCENTILES}
    cum = np.cumsum(hist)
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        rank = q / 100.0 * (count - 1)
        below, above = math.floor(rank), math.ceil(rank)
        # Order statistic k (0-based) lies in the first bin whose cumulative count exceeds k.
        b0 = int(np.searchsorted(cum, below, side="right"))
        b1 = int(np.searchsorted(cum, above, side="right"))
        v0 = start + (b0 + 0.5) * width
        v1 = start + (b1 + 0.5) * width
        out[f"p{q:g}"] = v0 + (rank - below) * (v1 - v0)
    return out


def _band_doc(
    acc: _Bands, hist: npt.NDArray[np.int64], b: int, start: float, width: float
) -> dict[str, Any]:
    n = int(acc.count[b])
    doc: dict[str, Any] = {"count": n}
    if n == 0:
        doc.update({"mean": None, "std": None, "min": None, "max": None})
    else:
        doc.update(
            {
                "mean": float(acc.mean[b]),
                "std": float(math.sqrt(max(acc.m2[b], 0.0) / n)),
                "min": float(acc.lo[b]),
                "max": float(acc.hi[b]),
            }
        )
    doc.update(_percentiles(hist, start, width, n))
    doc["percentile_tolerance"] = width
    return doc


def _label_doc(
    counts: npt.NDArray[np.int64], tiles: npt.NDArray[np.int64], n_tiles: int, lab: LabelLayout
) -> dict[str, Any]:
    total = int(counts.sum())
    return {
        "tiles": n_tiles,
        "labelled_pixels": total,
        "classes": {
            name: {
                "pixels": int(counts[i]),
                "fraction": (float(counts[i]) / total) if total else 0.0,
                "tiles": int(tiles[i]),
            }
            for i, name in enumerate(lab.class_names)
        },
    }


def _fraction_doc(acc: _Bands) -> dict[str, Any]:
    edges = [round(i / FRACTION_BINS, 6) for i in range(FRACTION_BINS + 1)]
    return {
        "bin_edges": edges,
        "planes": acc.planes,
        "valid_fraction": [int(v) for v in acc.valid_hist],
        "cloud_fraction": [int(v) for v in acc.cloud_hist],
    }


def cube_statistics(
    cube: str | Path | zarr.Group,
    positions: Mapping[int, str],
    *,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """Statistics of the cube's tiles at ``positions`` (module docstring), as a JSON-able dict.

    Args:
        cube: Cube path or an open zarr group (read only).
        positions: Cube position -> split name (``""`` counts as ``"unassigned"``) of every
            current catalog row; superseded positions must be left out by the caller.
        n_bins: Histogram bins per band for the percentiles.

    Returns:
        ``{"format", "method", "n_positions", "splits": {split: n_tiles}, "percentiles",
        "sensors": {sensor: {"bands", "units", "splits": {split: {band: {count, mean, std, min,
        max, p1, p5, p50, p95, p99, percentile_tolerance}}}, "fractions": {split: {...}}}},
        "labels": {source: {split: {"tiles", "labelled_pixels", "classes": {name: {pixels,
        fraction, tiles}}}}}}``. Split ``"all"`` covers every position.

    Raises:
        InvalidInputError: ``n_bins < 1`` or a negative position.
    """
    if n_bins < 1:
        raise InvalidInputError(f"n_bins must be >= 1, got {n_bins}", where="n_bins")
    group = cube if isinstance(cube, zarr.Group) else zarr.open_group(str(cube), mode="r")
    layout = CubeLayout.from_root_attrs(dict(group.attrs))
    splits = _splits_of(positions)
    names = [ALL, *sorted(set(splits.values()))]
    split_tiles = {ALL: len(splits), **{s: 0 for s in names[1:]}}
    for s in splits.values():
        split_tiles[s] += 1

    sensors_doc: dict[str, Any] = {}
    for sensor in layout.sensors:
        sensors_doc[sensor.name] = _sensor_statistics(group, sensor, splits, names, n_bins)
    labels_doc: dict[str, Any] = {}
    for lab in layout.labels:
        labels_doc[lab.source] = _label_statistics(group, lab, splits, names)
    return {
        "format": STATS_FORMAT,
        "method": "over pixels with mask bit VALID and not the nodata value; physical values "
        "(stored * scale_factor + add_offset) in float64; mean/std (population) by Chan's "
        f"parallel merge of per-tile moments; percentiles from a {n_bins}-bin histogram per "
        "band between its min and max (error <= half of percentile_tolerance, the bin width)",
        "n_positions": len(splits),
        "positions": list(splits),
        "splits": split_tiles,
        "percentiles": list(PERCENTILES),
        "sensors": sensors_doc,
        "labels": labels_doc,
    }


def _sensor_statistics(
    group: zarr.Group,
    sensor: SensorLayout,
    splits: Mapping[int, str],
    names: list[str],
    n_bins: int,
) -> dict[str, Any]:
    nb = len(sensor.bands)
    acc = {s: _Bands(nb) for s in names}
    data, mask_arr = group[data_path(sensor.name)], group[mask_path(sensor.name)]
    assert isinstance(data, zarr.Array) and isinstance(mask_arr, zarr.Array)

    def tiles() -> Iterable[tuple[str, npt.NDArray[Any], npt.NDArray[np.uint8]]]:
        for position, split in splits.items():
            yield split, np.asarray(data[position]), np.asarray(mask_arr[position])

    # Pass 1: moments, min/max, fraction histograms.
    for split, raw, mask in tiles():
        values, keep = _valid_values(raw, mask, sensor)
        moments = _tile_moments(values, keep)
        for plane in mask:
            observed = int(np.count_nonzero((plane & _NODATA) == 0))
            if observed == 0:
                continue
            vf = float(np.count_nonzero(plane & _VALID)) / plane.size
            cf = float(np.count_nonzero(plane & _CLOUD)) / observed
            for s in (ALL, split):
                acc[s].planes += 1
                acc[s].valid_hist[_fraction_bin(vf)] += 1
                acc[s].cloud_hist[_fraction_bin(cf)] += 1
        for s in (ALL, split):
            acc[s].merge(*moments)
    # Pass 2: one histogram per band on the overall [min, max], shared by every split.
    edges = [_edges(float(acc[ALL].lo[b]), float(acc[ALL].hi[b]), n_bins) for b in range(nb)]
    for s in names:
        acc[s].hist = np.zeros((nb, n_bins), np.int64)
    for split, raw, mask in tiles():
        values, keep = _valid_values(raw, mask, sensor)
        for b, (start, width) in enumerate(edges):
            v = values[b][keep[b]]
            if v.size == 0:
                continue
            if width == 0.0:
                counts = np.zeros(n_bins, np.int64)
                counts[0] = v.size
            else:
                idx = np.clip(((v - start) / width).astype(np.int64), 0, n_bins - 1)
                counts = np.bincount(idx, minlength=n_bins)
            for s in (ALL, split):
                hist = acc[s].hist
                assert hist is not None
                hist[b] += counts
    split_docs: dict[str, Any] = {}
    for s in names:
        hist = acc[s].hist
        assert hist is not None
        split_docs[s] = {
            band: _band_doc(acc[s], hist[b], b, *edges[b]) for b, band in enumerate(sensor.bands)
        }
    return {
        "bands": list(sensor.bands),
        "units": sensor.units,
        "resolution_m": sensor.resolution_m,
        "splits": split_docs,
        "fractions": {s: _fraction_doc(acc[s]) for s in names},
    }


def _label_statistics(
    group: zarr.Group, lab: LabelLayout, splits: Mapping[int, str], names: list[str]
) -> dict[str, Any]:
    nc = len(lab.class_names)
    counts = {s: np.zeros(nc, np.int64) for s in names}
    tiles = {s: np.zeros(nc, np.int64) for s in names}
    n_tiles = dict.fromkeys(names, 0)
    arr = group[label_path(lab.source)]
    assert isinstance(arr, zarr.Array)
    for position, split in splits.items():
        raster = np.asarray(arr[position]).ravel()
        classes = raster[(raster != lab.nodata) & (raster < nc)].astype(np.int64)
        tile_counts = np.bincount(classes, minlength=nc)[:nc]
        for s in (ALL, split):
            counts[s] += tile_counts
            tiles[s] += tile_counts > 0
            n_tiles[s] += 1
    return {s: _label_doc(counts[s], tiles[s], n_tiles[s], lab) for s in names}


def summary_attrs(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The compact form for the cube's root attributes: per sensor, per band mean/std (``all``).

    Returns:
        ``{"format", "file": "stats.json", "n_positions", "sensors": {name: {"bands", "mean",
        "std", "count"}}}``; ``mean``/``std`` are ``None`` for a band without valid pixels.
    """
    sensors: dict[str, Any] = {}
    for name, doc in stats["sensors"].items():
        per_band = doc["splits"][ALL]
        bands = list(doc["bands"])
        sensors[name] = {
            "bands": bands,
            "mean": [per_band[b]["mean"] for b in bands],
            "std": [per_band[b]["std"] for b in bands],
            "count": [per_band[b]["count"] for b in bands],
        }
    return {
        "format": stats["format"],
        "file": STATS_FILE,
        "n_positions": stats["n_positions"],
        "sensors": sensors,
    }


def write_stats(cube: str | Path, stats: Mapping[str, Any]) -> Path:
    """Write ``stats`` to ``<cube>/stats.json`` atomically (temporary file + ``os.replace``).

    Returns:
        The file's path.
    """
    final = Path(cube) / STATS_FILE
    text = json.dumps(stats, indent=1, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o644)
        Path(tmp).replace(final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def record_stats(group: zarr.Group, cube: str | Path, stats: Mapping[str, Any]) -> Path:
    """Write ``stats.json`` and put :func:`summary_attrs` in the root attrs (:data:`ATTRS_KEY`).

    The caller consolidates the metadata afterwards (the attributes changed).
    """
    path = write_stats(cube, stats)
    group.update_attributes({ATTRS_KEY: summary_attrs(stats)})
    return path
