"""Tile catalog queries: latency of ``open_catalog(...).search(...)`` at 10^4, 10^5, 10^6 rows.

A synthetic catalog is written the way a build writes it: one GeoParquet part per shard (the
writer's schema and names, ``K`` = 64 rows), two runs, each finished with
``CatalogWriter.finish_run`` (which records the version and builds the query index). Rows: tiles
of 1200 m in two UTM zones (32N, 33N; real densified footprints), 12 monthly periods, three
sensors (Sentinel-2 and Landsat with cloud fractions, Sentinel-1 without), CORINE-like class
fractions and multi-labels, splits.

Query (the DESIGN example): a ~0.2 x 0.2 degree bbox at a random place, one month, max cloud 0.3,
one class label, split train. Baseline: the same filter in DuckDB straight over the parts
(``read_parquet(parts/*.parquet)``, bbox columns only, no exact geometry), i.e. no index.
Run standalone for one size: ``python -m benchmarks.bench_catalog 1000000``.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._harness import Measurement

NAME = "catalog"

TILE_M = 1200.0
PERIODS = 12
K = 64
CLASSES = (
    "Continuous urban fabric",
    "Non-irrigated arable land",
    "Pastures",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grasslands",
    "Transitional woodland-shrub",
    "Water bodies",
    "Vineyards",
)
OSM_CLASSES = ("building", "road", "water")


def _footprints(zone: int, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WKB footprints (8 vertices, densified like ``Tile.footprint_wgs84``) and bboxes."""
    import shapely
    from pyproj import Transformer

    tr = Transformer.from_crs(32600 + zone, 4326, always_xy=True)
    fx = np.array([0, 0.5, 1, 1, 1, 0.5, 0, 0])
    fy = np.array([0, 0, 0, 0.5, 1, 1, 1, 0.5])
    xs = (cols[:, None] + fx[None, :]) * TILE_M
    ys = (rows[:, None] + fy[None, :]) * TILE_M
    lon, lat = tr.transform(xs.ravel(), ys.ravel())
    lon = np.asarray(lon).reshape(xs.shape)
    lat = np.asarray(lat).reshape(xs.shape)
    coords = np.stack([lon, lat], axis=-1)
    polys = shapely.polygons(coords)
    bbox = np.stack([lon.min(1), lat.min(1), lon.max(1), lat.max(1)], axis=1)
    return shapely.to_wkb(polys), bbox


def _tiles(n_tiles: int) -> dict[str, np.ndarray]:
    half = (n_tiles + 1) // 2
    side = math.ceil(math.sqrt(half))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("zone", "col", "row", "wkb", "bbox")}
    for zone, col0, count in ((32, 400, half), (33, 230, n_tiles - half)):
        idx = np.arange(count)
        cols = col0 + idx % side
        rows = 4000 + idx // side
        wkb, bbox = _footprints(zone, cols, rows)
        out["zone"].append(np.full(count, zone))
        out["col"].append(cols)
        out["row"].append(rows)
        out["wkb"].append(wkb)
        out["bbox"].append(bbox)
    return {k: np.concatenate(v) for k, v in out.items()}


def _a(values: object, type: pa.DataType | None = None, from_pandas: bool = False) -> pa.Array:
    """``pa.array`` as one chunk (large string arrays come back chunked)."""
    out = pa.array(values, type=type, from_pandas=from_pandas)
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def _list(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def _map(offsets: np.ndarray, keys: pa.Array, items: pa.Array) -> pa.Array:
    return pa.MapArray.from_arrays(pa.array(offsets, type=pa.int32()), keys, items)


def synthetic_rows(n_rows: int, seed: int = 0) -> pa.Table:
    """``n_rows`` catalog rows (tile-record schema) in cube-position order."""
    from schemas.tile import tile_record_arrow_schema

    rng = np.random.default_rng(seed)
    n_tiles = math.ceil(n_rows / PERIODS)
    tiles = _tiles(n_tiles)
    period = np.arange(n_rows) // n_tiles
    tile = np.arange(n_rows) % n_tiles
    zone, col, row = tiles["zone"][tile], tiles["col"][tile], tiles["row"][tile]
    tile_ids = np.char.add(
        np.char.add(np.char.add(np.char.mod("%02dN-", zone), np.char.mod("%04d", col)), "-"),
        np.char.mod("%04d", row),
    )
    period_ids = np.char.mod("2024-%02d", period + 1)
    ids = np.char.add(np.char.add(tile_ids, "_"), period_ids)
    starts = np.array([f"2024-{m + 1:02d}-01" for m in range(PERIODS)], dtype="datetime64[us]")
    ends = np.array(
        [f"{2024 + (m + 1) // 12}-{(m + 1) % 12 + 1:02d}-01" for m in range(PERIODS)],
        dtype="datetime64[us]",
    ) - np.timedelta64(1, "s")
    ts = pa.timestamp("us", tz="UTC")
    # Sensors: S2 always (cloud), S1 80 % (no cloud), Landsat 40 % (cloud).
    has = np.stack([np.ones(n_rows, bool), rng.random(n_rows) < 0.8, rng.random(n_rows) < 0.4], 1)
    names = np.array(["sentinel-2-l2a", "sentinel-1-rtc", "landsat-c2-l2"])
    counts = has.sum(1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    which = np.nonzero(has)[1]
    m = which.size
    cloud = np.where(which == 1, np.nan, rng.beta(0.6, 2.0, m))
    acq = starts[np.repeat(period, counts)] + rng.integers(0, 28 * 86400, m).astype(
        "timedelta64[s]"
    )
    sensors = pa.StructArray.from_arrays(
        [
            _a(names[which]),
            _list(np.arange(m + 1), _a(acq, type=ts)),
            _list(np.arange(m + 1), _a(np.char.add("item-", np.arange(m).astype(str)))),
            _a(cloud, type=pa.float64(), from_pandas=True),
            _a(rng.uniform(0.5, 1.0, m)),
            pa.nulls(m, pa.float64()),
            pa.nulls(m, pa.float64()),
            _a(np.zeros(m, bool)),
        ],
        names=[
            "sensor",
            "datetimes",
            "item_ids",
            "cloud_fraction",
            "valid_fraction",
            "shift_dy_m",
            "shift_dx_m",
            "shift_applied",
        ],
    )
    # Labels: corine (1-4 classes, Dirichlet shares) on every row, osm on half of them.
    n_cls = rng.integers(1, 5, n_rows)
    c_off = np.concatenate([[0], np.cumsum(n_cls)])
    perm = rng.permuted(np.tile(np.arange(len(CLASSES)), (n_rows, 1)), axis=1)
    c_idx = perm[np.arange(len(CLASSES))[None, :] < n_cls[:, None]]
    raw = rng.gamma(1.0, 1.0, c_off[-1])
    sums = np.add.reduceat(raw, c_off[:-1])
    shares = raw / np.repeat(sums, n_cls)
    has_osm = rng.random(n_rows) < 0.5
    o_idx = rng.integers(0, len(OSM_CLASSES), n_rows)
    inner_corine = _map(c_off, _a(np.array(CLASSES)[c_idx]), _a(shares))
    osm_rows = np.flatnonzero(has_osm)
    inner_osm = _map(
        np.arange(osm_rows.size + 1),
        _a(np.array(OSM_CLASSES)[o_idx[osm_rows]]),
        _a(rng.uniform(0.05, 0.5, osm_rows.size)),
    )
    # Outer map entries: corine for every row, then osm for some; interleave per row.
    n_src = 1 + has_osm.astype(int)
    s_off = np.concatenate([[0], np.cumsum(n_src)])
    entry_is_osm = np.zeros(s_off[-1], bool)
    entry_is_osm[s_off[:-1][has_osm] + 1] = True
    take_inner = np.empty(s_off[-1], dtype=np.int64)
    take_inner[~entry_is_osm] = np.arange(n_rows)
    take_inner[entry_is_osm] = n_rows + np.arange(osm_rows.size)
    inner_all = pa.concat_arrays([inner_corine, inner_osm]).take(_a(take_inner))
    src_keys = _a(np.where(entry_is_osm, "osm", "corine"))
    class_fractions = _map(s_off, src_keys, inner_all)
    # Multi-labels: classes with a share >= 0.1 (corine), the osm class.
    ml_keep = shares >= 0.1
    ml_count = np.add.reduceat(ml_keep.astype(int), c_off[:-1])
    ml_corine = _list(
        np.concatenate([[0], np.cumsum(ml_count)]), _a(np.array(CLASSES)[c_idx[ml_keep]])
    )
    ml_osm = _list(np.arange(osm_rows.size + 1), _a(np.array(OSM_CLASSES)[o_idx[osm_rows]]))
    ml_all = pa.concat_arrays([ml_corine, ml_osm]).take(_a(take_inner))
    multilabels = _map(s_off, src_keys, ml_all)
    bbox = tiles["bbox"][tile]
    x0 = col * TILE_M
    y0 = row * TILE_M
    table = pa.table(
        {
            "id": _a(ids),
            "tile_id": _a(tile_ids),
            "period_id": _a(period_ids),
            "start_datetime": _a(starts[period], type=ts),
            "end_datetime": _a(ends[period], type=ts),
            "epsg": _a(32600 + zone, type=pa.int32()),
            "transform": pa.FixedSizeListArray.from_arrays(
                _a(
                    np.stack(
                        [
                            np.full(n_rows, 10.0),
                            np.zeros(n_rows),
                            x0,
                            np.zeros(n_rows),
                            np.full(n_rows, -10.0),
                            y0 + TILE_M,
                        ],
                        1,
                    ).ravel()
                ),
                6,
            ),
            "proj_bbox": pa.FixedSizeListArray.from_arrays(
                _a(np.stack([x0, y0, x0 + TILE_M, y0 + TILE_M], 1).ravel().astype(float)),
                4,
            ),
            "geometry": _a(tiles["wkb"][tile], type=pa.binary()),
            "bbox": pa.StructArray.from_arrays(
                [_a(bbox[:, i]) for i in range(4)], names=["xmin", "ymin", "xmax", "ymax"]
            ),
            "cube_position": _a(np.arange(n_rows, dtype=np.int64)),
            "shard_id": _a(np.char.mod("s%05d", np.arange(n_rows) // K)),
            "sensors": _list(offsets, sensors),
            "split": _a(rng.choice(["train", "train", "train", "val", "test"], n_rows)),
            "class_fractions": class_fractions,
            "multilabels": multilabels,
            "unlabeled_fractions": _map(
                np.arange(n_rows + 1), _a(np.full(n_rows, "corine")), _a(rng.random(n_rows) * 0.1)
            ),
            "label_flags": _list(np.zeros(n_rows + 1, dtype=np.int64), _a([], pa.string())),
        }
    )
    schema = tile_record_arrow_schema()
    return table.cast(schema).replace_schema_metadata(schema.metadata)


def write_catalog(cube: Path, n_rows: int, seed: int = 0) -> dict[str, float]:
    """Write a two-run synthetic catalog into ``cube``; returns timings (seconds)."""
    from catalog._parts import part_name, parts_dir
    from catalog.writer import CatalogWriter

    t0 = time.perf_counter()
    table = synthetic_rows(n_rows, seed)
    t_rows = time.perf_counter() - t0
    parts = parts_dir(cube)
    parts.mkdir(parents=True, exist_ok=True)
    writer = CatalogWriter(cube)
    n_shards = math.ceil(n_rows / K)
    timings = {"generate_s": t_rows}
    t0 = time.perf_counter()
    for shard in range(n_shards):
        run = "run-1" if shard < n_shards // 2 else "run-2"
        rows = table.slice(shard * K, K)
        pq.write_table(rows, parts / part_name(run, f"s{shard:05d}"), compression="zstd")
        if shard == n_shards // 2 - 1:
            timings["write_parts_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            writer.finish_run("run-1", {})
            timings["finish_run_1_s"] = time.perf_counter() - t1
            t0 = time.perf_counter()
    timings["write_parts_s"] = timings.get("write_parts_s", 0.0) + time.perf_counter() - t0
    t1 = time.perf_counter()
    writer.finish_run("run-2", {})
    timings["finish_run_2_s"] = time.perf_counter() - t1
    return timings


def _queries(centres: np.ndarray, seed: int = 1) -> list[dict[str, Any]]:
    """A query around each ``(lon, lat)`` centre (a tile of the catalog, picked at random)."""
    rng = np.random.default_rng(seed)
    out = []
    for x, y in centres.tolist():
        out.append(
            {
                "bbox": (x - 0.1, y - 0.1, x + 0.1, y + 0.1),
                "datetime": f"2024-{int(rng.integers(1, 13)):02d}",
                "max_cloud": 0.3,
                "labels_any": [str(rng.choice(CLASSES))],
                "split": "train",
            }
        )
    return out


def measure(cube: Path, n_queries: int = 50) -> dict[str, float]:
    """Open times and query latencies (seconds) on a written catalog."""
    import duckdb

    from catalog.query import open_catalog

    t0 = time.perf_counter()
    cat = open_catalog(cube)
    t_open = time.perf_counter() - t0
    sample = cat.sql(
        f"SELECT (xmin + xmax) / 2 AS x, (ymin + ymax) / 2 AS y FROM tiles "
        f"USING SAMPLE {int(n_queries)} ROWS (reservoir, 7)"
    )
    centres = np.stack([sample.column("x").to_numpy(), sample.column("y").to_numpy()], 1)
    queries = _queries(centres)
    t0 = time.perf_counter()
    first = cat.search(**queries[0])
    first.positions()
    t_first = time.perf_counter() - t0
    lat = []
    hits = []
    for q in queries:
        t0 = time.perf_counter()
        res = cat.search(**q)
        res.positions()
        lat.append(time.perf_counter() - t0)
        hits.append(len(res))
    t0 = time.perf_counter()
    res.to_arrow()
    t_arrow = time.perf_counter() - t0
    # Baseline: DuckDB over every part, no index (bbox columns, no exact geometry).
    con = duckdb.connect()
    glob = f"{cube}/catalog/parts/*.parquet"
    base = []
    for q in queries[:5]:
        x0, y0, x1, y1 = q["bbox"]
        month = str(q["datetime"])
        t0 = time.perf_counter()
        con.execute(
            f"SELECT cube_position FROM read_parquet('{glob}') WHERE bbox.xmin <= ? AND "
            "bbox.xmax >= ? AND bbox.ymin <= ? AND bbox.ymax >= ? AND period_id = ? AND "
            "split = 'train' AND list_contains(multilabels['corine'], ?) AND "
            "len(list_filter(sensors, lambda s: s.cloud_fraction > 0.3)) = 0 "
            "ORDER BY cube_position",
            [x1, x0, y1, y0, month, q["labels_any"][0]],
        ).fetchall()
        base.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    pinned = open_catalog(cube, version=1)
    t_open_v1 = time.perf_counter() - t0
    pinned.search(**queries[0]).positions()
    return {
        "open_s": t_open,
        "open_v1_s": t_open_v1,
        "first_query_s": t_first,
        "p50_s": statistics.median(lat),
        "p90_s": float(np.percentile(lat, 90)),
        "mean_hits": float(np.mean(hits)),
        "to_arrow_last_s": t_arrow,
        "baseline_parts_p50_s": statistics.median(base),
    }


def run(quick: bool = False) -> list[Measurement]:
    """Latency of the indexed search vs DuckDB over the raw parts, per catalog size."""
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    results: list[Measurement] = []
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"eoforge-cat-{n}-"))
        try:
            build = write_catalog(root, n)
            m = measure(root, n_queries=20 if quick else 50)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        extra = {
            "p90_ms": round(m["p90_s"] * 1e3, 1),
            "open_ms": round(m["open_s"] * 1e3, 1),
            "first_query_ms": round(m["first_query_s"] * 1e3, 1),
            "hits": round(m["mean_hits"], 1),
            "finish_run_s": round(build["finish_run_2_s"], 1),
        }
        base = f"{n} rows: duckdb over parts"
        results.append(Measurement(NAME, base, None, m["baseline_parts_p50_s"], 5, 1, "queries"))
        case = f"{n} rows: search (index)"
        results.append(Measurement(NAME, case, base, m["p50_s"], 50, 1, "queries", extra=extra))
    return results


if __name__ == "__main__":
    n_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    keep = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    root = keep or Path(tempfile.mkdtemp(prefix="eoforge-cat-"))
    if not (root / "catalog").exists():
        print("write", n_rows, "rows:", write_catalog(root, n_rows))
    print("measure:", measure(root))
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
