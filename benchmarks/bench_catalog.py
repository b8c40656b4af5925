"""Tile catalog queries at 10^4, 10^5, 10^6 rows: the indexed search vs the naive ways.

A synthetic catalog is written the way a build writes it: one GeoParquet part per shard (the
writer's schema and names, ``K`` = 64 rows), two runs, each finished with
``CatalogWriter.finish_run`` (which records the version and builds the query index). Rows: tiles
of 1200 m in two UTM zones (32N, 33N; real densified footprints), 12 monthly periods, three
sensors (Sentinel-2 and Landsat with cloud fractions, Sentinel-1 without), CORINE-like class
fractions and multi-labels, splits.

Query (the DESIGN example): a ~0.2 x 0.2 degree bbox at a random place, one month, max cloud 0.3,
one class label, split train; 50 such queries (20 with ``--quick``). Cases per size, all in the
same run on the same queries:

* ``geopandas read + mask (naive)``, the baseline: ``geopandas.read_parquet`` of the parts
  folder (every part; only the columns the filter needs, which favours it), then one boolean
  mask over every row: ``intersects`` the query box (exact geometry), period, split, every
  sensor's cloud fraction, the class among the multi-labels. Each repeat reads everything
  again (a new query each time); 5 repeats, 3 at 10^6 and with ``--quick``. Median; ``max_ms``.
* ``search (index)``: ``open_catalog(cube).search(...)`` (catalog opened once) and its
  positions, per query: median (the row's figure), ``p95_ms``, ``p90_ms``; ``first_query_ms``
  (connection set-up), ``open_ms``, ``vs_duckdb`` (speed-up over the next case). Ratio: x
  faster than the naive baseline.
* ``duckdb over parts (bbox only)``: the same filter in DuckDB straight over the parts
  (``read_parquet(parts/*.parquet)``, bbox columns only, no exact geometry), i.e. no index;
  median of 5 queries.
* ``STAC API <backend>``: the same catalog served on 127.0.0.1 and searched with pystac-client
  (Items built from the synthetic rows, see ``benchmarks/_catalog_stac.py``; staging and server
  start are not timed, they are ``stage_s`` and ``start_s``). ``rustac`` (``rustac serve``,
  in-memory; no CQL2): bbox + datetime on the server, split, cloud and label on the client
  while paging, at every size. ``pgstac`` (stac-fastapi-pgstac over a throwaway PostgreSQL,
  skipped when PostgreSQL/PostGIS are missing): bbox + datetime + CQL2 filter on the server, at
  10^4 and 10^5 only (loading 10^6 Items with pypgstac takes minutes). Median, ``p95_ms``;
  compared with the search (a ratio below 1: the API is slower).

``same_hits``: share of the queries where the case returned the same ids as the search (the
DuckDB case checks bbox columns only and is not compared).
Run standalone for one size: ``python -m benchmarks.bench_catalog 1000000 [KEEP_DIR]``.
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
#: Largest catalog each STAC API serves here: pypgstac loads about 10^4 Items/s on two cores
#: (10^6: minutes more per full run); rustac loads 10^6 Items in seconds.
STAC_MAX_ROWS = {"rustac": 1_000_000, "pgstac": 100_000}
STAC_BACKENDS = tuple(STAC_MAX_ROWS)
#: How each STAC API runs the query (in the case name).
STAC_CASES = {
    "rustac": "bbox+datetime on server, split/cloud/label on client",
    "pgstac": "bbox+datetime+CQL2",
}


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


def write_catalog(
    cube: Path, n_rows: int, seed: int = 0, *, table: pa.Table | None = None
) -> dict[str, float]:
    """Write a two-run synthetic catalog into ``cube``; returns timings (seconds).

    ``table``: the rows, if already generated (``synthetic_rows(n_rows, seed)``).
    """
    from catalog._parts import part_name, parts_dir
    from catalog.writer import CatalogWriter

    t0 = time.perf_counter()
    if table is None:
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


def _embedded(
    cube: Path, n_queries: int
) -> tuple[dict[str, float], list[dict[str, Any]], list[set[str]]]:
    """Open times and latencies of the embedded search; its queries and ids per query."""
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
        hits.append(set(res.ids()))
    t0 = time.perf_counter()
    res.to_arrow()
    t_arrow = time.perf_counter() - t0
    t0 = time.perf_counter()
    pinned = open_catalog(cube, version=1)
    t_open_v1 = time.perf_counter() - t0
    pinned.search(**queries[0]).positions()
    out = {
        "open_s": t_open,
        "open_v1_s": t_open_v1,
        "first_query_s": t_first,
        "p50_s": statistics.median(lat),
        "p90_s": float(np.percentile(lat, 90)),
        "p95_s": float(np.percentile(lat, 95)),
        "mean_hits": float(np.mean([len(h) for h in hits])),
        "to_arrow_last_s": t_arrow,
    }
    return out, queries, hits


def _duckdb_parts(cube: Path, queries: list[dict[str, Any]]) -> list[float]:
    """DuckDB over every part, no index (bbox columns, no exact geometry); seconds per query."""
    import duckdb

    con = duckdb.connect()
    glob = f"{cube}/catalog/parts/*.parquet"
    base = []
    for q in queries:
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
    con.close()
    return base


#: Columns the GeoPandas baseline reads (all the filter needs, plus ids; fewer than a naive user
#: would read, which only favours the baseline).
NAIVE_COLUMNS = ("id", "cube_position", "geometry", "period_id", "split", "sensors", "multilabels")


def naive_geopandas(cube: Path, query: dict[str, Any]) -> set[str]:
    """GeoPandas: read every part, then one boolean mask over every row; the ids that pass."""
    import geopandas as gpd
    import shapely

    gdf = gpd.read_parquet(cube / "catalog" / "parts", columns=list(NAIVE_COLUMNS))
    cls = query["labels_any"][0]
    limit = query["max_cloud"]
    cloud_ok = np.fromiter(
        (
            all(s["cloud_fraction"] is None or not s["cloud_fraction"] > limit for s in sensors)
            for sensors in gdf["sensors"]
        ),
        bool,
        len(gdf),
    )
    label_ok = np.fromiter(
        (any(cls in classes for _, classes in labels) for labels in gdf["multilabels"]),
        bool,
        len(gdf),
    )
    mask = (
        gdf.intersects(shapely.box(*query["bbox"])).to_numpy()
        & (gdf["period_id"] == query["datetime"]).to_numpy()
        & (gdf["split"] == query["split"]).to_numpy()
        & cloud_ok
        & label_ok
    )
    hits = gdf.loc[mask].sort_values("cube_position")
    return {str(v) for v in hits["id"]}


def _naive(
    cube: Path, queries: list[dict[str, Any]], expected: list[set[str]], repeats: int
) -> dict[str, float]:
    """``repeats`` GeoPandas queries (one each, different places); no warm-up (OS cache warm)."""
    times = []
    same = 0
    for i in range(repeats):
        t0 = time.perf_counter()
        hits = naive_geopandas(cube, queries[i % len(queries)])
        times.append(time.perf_counter() - t0)
        same += hits == expected[i % len(queries)]
    return {
        "naive_p50_s": statistics.median(times),
        "naive_max_s": max(times),
        "naive_repeats": float(repeats),
        "naive_agree": same / repeats,
    }


def _stac(
    table: pa.Table,
    queries: list[dict[str, Any]],
    expected: list[set[str]],
    backends: tuple[str, ...],
) -> dict[str, float]:
    """Each backend's figures, keys prefixed ``<backend>_``; Items staged once for all."""
    from benchmarks import _catalog_stac as stac

    out: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="eoforge-cat-stac-"))
    try:
        t0 = time.perf_counter()
        staged = stac.stage(table, workdir)
        out["stac_stage_s"] = time.perf_counter() - t0
        for backend in backends:
            if backend == "pgstac" and stac.pgstac_missing():
                continue
            sub = workdir / backend
            sub.mkdir()
            kind: stac.Backend = "pgstac" if backend == "pgstac" else "rustac"
            got = stac.measure_stac(kind, staged, queries, expected, sub)
            out.update({f"{backend}_{k}": v for k, v in got.items()})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def measure(
    cube: Path,
    n_queries: int = 50,
    *,
    naive_repeats: int = 3,
    duckdb_queries: int = 5,
    stac_table: pa.Table | None = None,
    stac_backends: tuple[str, ...] = STAC_BACKENDS,
) -> dict[str, float]:
    """Every figure (seconds, hits, shares) on a written catalog.

    Args:
        cube: Folder holding the written catalog.
        n_queries: Queries of the embedded search (and of each STAC API).
        naive_repeats: GeoPandas queries (each reads the whole catalog); 0 skips it.
        duckdb_queries: DuckDB-over-parts queries; 0 skips it.
        stac_table: The catalog's rows, to serve as a STAC API (``None``: no STAC API).
        stac_backends: Which STAC APIs (``rustac``, ``pgstac``).
    """
    out, queries, expected = _embedded(cube, n_queries)
    if duckdb_queries:
        base = _duckdb_parts(cube, queries[:duckdb_queries])
        out["duckdb_parts_p50_s"] = statistics.median(base)
    if naive_repeats:
        out.update(_naive(cube, queries, expected, naive_repeats))
    if stac_table is not None and stac_backends:
        out.update(_stac(stac_table, queries, expected, stac_backends))
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 1)


def run(quick: bool = False) -> list[Measurement]:
    """Per catalog size: GeoPandas naive (baseline), indexed search, DuckDB, STAC APIs."""
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    n_queries = 20 if quick else 50
    results: list[Measurement] = []
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"eoforge-cat-{n}-"))
        table = synthetic_rows(n)
        try:
            build = write_catalog(root, n, table=table)
            m = measure(
                root,
                n_queries=n_queries,
                naive_repeats=3 if quick or n >= 1_000_000 else 5,
                stac_table=table,
                stac_backends=tuple(b for b, most in STAC_MAX_ROWS.items() if n <= most),
            )
        finally:
            del table
            shutil.rmtree(root, ignore_errors=True)
        naive = f"{n} rows: geopandas read + mask (naive)"
        results.append(
            Measurement(
                NAME,
                naive,
                None,
                m["naive_p50_s"],
                int(m["naive_repeats"]),
                1,
                "queries",
                extra={"max_ms": _ms(m["naive_max_s"]), "same_hits": m["naive_agree"]},
            )
        )
        search = f"{n} rows: search (index)"
        results.append(
            Measurement(
                NAME,
                search,
                naive,
                m["p50_s"],
                n_queries,
                1,
                "queries",
                extra={
                    "p95_ms": _ms(m["p95_s"]),
                    "p90_ms": _ms(m["p90_s"]),
                    "open_ms": _ms(m["open_s"]),
                    "first_query_ms": _ms(m["first_query_s"]),
                    "hits": round(m["mean_hits"], 1),
                    "vs_duckdb": f"{m['duckdb_parts_p50_s'] / m['p50_s']:.0f}x",
                    "finish_run_s": round(build["finish_run_2_s"], 1),
                },
            )
        )
        duck = f"{n} rows: duckdb over parts (bbox only)"
        results.append(Measurement(NAME, duck, naive, m["duckdb_parts_p50_s"], 5, 1, "queries"))
        for backend, how in STAC_CASES.items():
            if f"{backend}_p50_s" not in m:
                continue
            results.append(
                Measurement(
                    NAME,
                    f"{n} rows: STAC API {backend} ({how})",
                    search,
                    m[f"{backend}_p50_s"],
                    n_queries,
                    1,
                    "queries",
                    extra={
                        "p95_ms": _ms(m[f"{backend}_p95_s"]),
                        "first_query_ms": _ms(m[f"{backend}_first_query_s"]),
                        "start_s": round(m[f"{backend}_start_s"], 1),
                        "stage_s": round(m["stac_stage_s"], 1),
                        "hits": round(m[f"{backend}_mean_hits"], 1),
                        "same_hits": m[f"{backend}_agree"],
                    },
                )
            )
    return results


if __name__ == "__main__":
    n_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    keep = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    root = keep or Path(tempfile.mkdtemp(prefix="eoforge-cat-"))
    rows = synthetic_rows(n_rows)
    if not (root / "catalog").exists():
        print("write", n_rows, "rows:", write_catalog(root, n_rows, table=rows))
    backends = tuple(b for b, most in STAC_MAX_ROWS.items() if n_rows <= most)
    print("measure:", measure(root, stac_table=rows, stac_backends=backends))
    if keep is None:
        shutil.rmtree(root, ignore_errors=True)
