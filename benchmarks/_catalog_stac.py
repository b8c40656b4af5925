"""The synthetic catalog of ``bench_catalog`` served as a STAC API, searched with pystac-client.

The synthetic catalog has no Zarr cube (no layout, no plans), so ``catalog.stac.cube_stac`` cannot
describe it; the Items are built here straight from the synthetic rows, one per row, with what
the queries need and the shape ``catalog.stac.record_to_item`` gives them:

* ``id`` (``<tile>_<period>``), WGS84 ``geometry`` (the densified footprint) and ``bbox``,
  ``datetime: null``, ``start_datetime``, ``end_datetime`` (the half-open period's end - 1 ms:
  STAC's end is inclusive);
* ``eo:cloud_cover`` (Sentinel-2's, percent), ``eoforge:tile_id``, ``eoforge:period_id``,
  ``eoforge:cube_position``, ``eoforge:split``, ``eoforge:multilabels`` (``{source: [class]}``);
* two flat fields for CQL2, which cannot reach into arrays of objects or map values:
  ``eoforge:max_cloud_fraction`` (the highest cloud fraction over the tile's sensors, 0-1; null
  when none has a cloud mask) and ``eoforge:labels`` (every multi-label class, any source).

The embedded query ``max_cloud=c, labels_any=[k], split=s`` is then the CQL2 filter
``eoforge:split = s and (eoforge:max_cloud_fraction is null or <= c) and
a_overlaps(eoforge:labels, [k])``, and both return the same Items.

Backends (``pipelines.archive``'s process handling: free port, readiness, clean stop):

* ``rustac``: ``rustac serve`` with its in-memory backend over NDJSON. It does not conform to
  STAC API Filter (no CQL2), so the server filters by bbox + datetime only and the client applies
  split, cloud and label to the Items it pages through (timed as part of the query). rustac's
  DuckDB backend (stac-geoparquet) needs DuckDB's spatial extension, which it downloads at
  start: it hangs without network, so it is not used.
* ``pgstac``: stac-fastapi-pgstac over a throwaway PostgreSQL + PostGIS loaded with pypgstac
  (queryables typed, so CQL2 compares numbers as numbers): bbox + datetime + CQL2 on the server.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Backend = Literal["rustac", "pgstac"]
COLLECTION_ID = "eoforge-synthetic"
EO_EXTENSION = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
REFERENCE_SENSOR = "sentinel-2-l2a"
#: Items per page asked of the API (more than any query here returns).
PAGE_LIMIT = 1000
_CHUNK = 50_000
_ONE_MS = timedelta(milliseconds=1)
QUERYABLES: dict[str, Any] = {
    "type": "object",
    "title": "eoforge synthetic tile queryables",
    "properties": {
        "eo:cloud_cover": {"type": "number", "minimum": 0, "maximum": 100},
        "eoforge:max_cloud_fraction": {"type": "number", "minimum": 0, "maximum": 1},
        "eoforge:split": {"type": "string"},
        "eoforge:period_id": {"type": "string"},
        "eoforge:labels": {"type": "array", "items": {"type": "string"}},
    },
}


def _iso(moment: datetime) -> str:
    us = moment.microsecond
    spec = "seconds" if us == 0 else "milliseconds" if us % 1000 == 0 else "microseconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _clouds(sensors: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row: highest cloud fraction over its sensors, and the reference sensor's (NaN: none)."""
    n = len(sensors)
    parent = pc.list_parent_indices(sensors).to_numpy()
    flat = pc.list_flatten(sensors)
    cloud = np.asarray(flat.field("cloud_fraction").to_numpy(zero_copy_only=False), dtype=float)
    highest = np.full(n, np.nan)
    np.fmax.at(highest, parent, cloud)
    reference = np.full(n, np.nan)
    names = flat.field("sensor").to_numpy(zero_copy_only=False)
    is_ref = (names == REFERENCE_SENSOR) & ~np.isnan(cloud)
    reference[parent[is_ref]] = cloud[is_ref]
    return highest, reference


def _rings(wkb: pa.Array) -> list[list[list[float]]]:
    import shapely

    geoms = shapely.from_wkb(wkb.to_numpy(zero_copy_only=False))
    counts = shapely.get_num_coordinates(geoms)
    if counts.size and (counts == counts[0]).all():
        coords = shapely.get_coordinates(geoms).reshape(len(geoms), int(counts[0]), 2)
        return [[ring] for ring in np.round(coords, 9).tolist()]
    return [json.loads(shapely.to_geojson(g))["coordinates"] for g in geoms]


def _nan_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _items(rows: pa.Table) -> Iterator[dict[str, Any]]:
    """One STAC Item per row of one chunk of the synthetic catalog."""
    rings = _rings(rows.column("geometry").combine_chunks())
    bb = rows.column("bbox").combine_chunks()
    boxes = np.stack([bb.field(i).to_numpy() for i in range(4)], 1).tolist()
    highest, reference = _clouds(rows.column("sensors").combine_chunks())
    cols = {
        name: rows.column(name).to_pylist()
        for name in (
            "id",
            "tile_id",
            "period_id",
            "cube_position",
            "split",
            "start_datetime",
            "end_datetime",
            "multilabels",
        )
    }
    for i in range(rows.num_rows):
        labels = {source: list(classes) for source, classes in cols["multilabels"][i]}
        start, end = cols["start_datetime"][i], cols["end_datetime"][i]
        ref = _nan_none(float(reference[i]))
        yield {
            "type": "Feature",
            "stac_version": "1.1.0",
            "stac_extensions": [EO_EXTENSION],
            "id": cols["id"][i],
            "collection": COLLECTION_ID,
            "geometry": {"type": "Polygon", "coordinates": rings[i]},
            "bbox": boxes[i],
            "properties": {
                "datetime": None,
                "start_datetime": _iso(start),
                "end_datetime": _iso(end - _ONE_MS if end > start else end),
                "eo:cloud_cover": None if ref is None else round(100.0 * ref, 6),
                "eoforge:tile_id": cols["tile_id"][i],
                "eoforge:period_id": cols["period_id"][i],
                "eoforge:cube_position": cols["cube_position"][i],
                "eoforge:split": cols["split"][i],
                "eoforge:multilabels": labels,
                "eoforge:max_cloud_fraction": _nan_none(float(highest[i])),
                "eoforge:labels": sorted({c for classes in labels.values() for c in classes}),
            },
            "links": [],
            "assets": {},
        }


def write_items(table: pa.Table, path: Path) -> int:
    """Write every row of ``table`` as a STAC Item (NDJSON, in chunks); returns the count."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for offset in range(0, table.num_rows, _CHUNK):
            for item in _items(table.slice(offset, _CHUNK)):
                out.write(json.dumps(item, separators=(",", ":")) + "\n")
                count += 1
    return count


def write_collection(table: pa.Table, path: Path) -> Path:
    """The Collection of the synthetic Items (one-line JSON)."""
    bb = table.column("bbox").combine_chunks()
    extent = [float(pc.min(bb.field(i)).as_py()) for i in (0, 1)] + [
        float(pc.max(bb.field(i)).as_py()) for i in (2, 3)
    ]
    start = pc.min(table.column("start_datetime")).as_py()
    end = pc.max(table.column("end_datetime")).as_py()
    doc = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": COLLECTION_ID,
        "description": f"eoforge synthetic tile catalog ({table.num_rows} tiles x periods)",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [extent]},
            "temporal": {"interval": [[_iso(start), _iso(end - _ONE_MS)]]},
        },
        "links": [],
    }
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def pgstac_missing() -> list[str]:
    """What the pgstac backend lacks here (empty: it can run)."""
    from pipelines.archive.pgstac import missing_pgstac_requirements

    return missing_pgstac_requirements()


@contextlib.contextmanager
def serve(
    backend: Backend, collection: Path, items: Path, count: int, workdir: Path
) -> Iterator[str]:
    """Serve the staged Collection and Items on 127.0.0.1; yields the API's base URL."""
    from pipelines.archive.staging import StacFiles

    files = StacFiles((collection,), (items,), count)
    api: contextlib.AbstractContextManager[str]
    if backend == "pgstac":
        from pipelines.archive.pgstac import serve_pgstac

        api = serve_pgstac(
            files,
            host="127.0.0.1",
            port=0,
            workdir=workdir,
            timeout_s=900.0,
            queryables=QUERYABLES,
            title="eoforge synthetic tiles",
            description="bench_catalog's synthetic tile catalog",
            landing_id="eoforge-synthetic",
        )
    else:
        from pipelines.archive.serve import serve_rustac

        api = serve_rustac(files, host="127.0.0.1", port=0, workdir=workdir, timeout_s=300.0)
    with api as url:
        yield url


def cql2(query: Mapping[str, Any]) -> dict[str, Any]:
    """The CQL2-JSON filter of an embedded query's split, max_cloud and labels_any."""
    cloud = {"property": "eoforge:max_cloud_fraction"}
    return {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"property": "eoforge:split"}, query["split"]]},
            {
                "op": "or",
                "args": [
                    {"op": "isNull", "args": [cloud]},
                    {"op": "<=", "args": [cloud, query["max_cloud"]]},
                ],
            },
            {
                "op": "a_overlaps",
                "args": [{"property": "eoforge:labels"}, list(query["labels_any"])],
            },
        ],
    }


def _keep(item: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """The client-side part of a query (what rustac cannot filter)."""
    props = item["properties"]
    cloud = props.get("eoforge:max_cloud_fraction")
    labels = set(props.get("eoforge:labels") or ())
    return (
        props.get("eoforge:split") == query["split"]
        and (cloud is None or cloud <= query["max_cloud"])
        and not labels.isdisjoint(query["labels_any"])
    )


def time_queries(
    url: str, queries: Sequence[Mapping[str, Any]], *, server_filter: bool
) -> tuple[list[float], list[set[str]], float]:
    """Latency (s) and Item ids of each query through pystac-client, and the first (untimed) one.

    Args:
        url: The STAC API.
        queries: Embedded-search keyword sets (bbox, datetime, max_cloud, labels_any, split).
        server_filter: Send the CQL2 filter (else: bbox + datetime on the server, the rest on
            the client, inside the timing).
    """
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    stac_io = StacApiIO()
    stac_io.session.trust_env = False  # loopback: no proxy
    try:
        client = Client.open(url, stac_io=stac_io)

        def one(query: Mapping[str, Any]) -> set[str]:
            kwargs: dict[str, Any] = {
                "collections": [COLLECTION_ID],
                "bbox": list(query["bbox"]),
                "datetime": query["datetime"],
                "limit": PAGE_LIMIT,
            }
            if server_filter:
                kwargs.update(filter=cql2(query), filter_lang="cql2-json")
            items = client.search(**kwargs).items_as_dicts()
            if server_filter:
                return {str(i["id"]) for i in items}
            return {str(i["id"]) for i in items if _keep(i, query)}

        t0 = time.perf_counter()
        one(queries[0])
        first = time.perf_counter() - t0
        latencies, hits = [], []
        for query in queries:
            t0 = time.perf_counter()
            hits.append(one(query))
            latencies.append(time.perf_counter() - t0)
    finally:
        stac_io.session.close()
    return latencies, hits, first


def stage(table: pa.Table, workdir: Path) -> tuple[Path, Path, int]:
    """Write the Collection and every row as an Item (NDJSON) into ``workdir``."""
    collection = write_collection(table, workdir / "collection.json")
    items = workdir / "items.ndjson"
    return collection, items, write_items(table, items)


def measure_stac(
    backend: Backend,
    staged: tuple[Path, Path, int],
    queries: Sequence[Mapping[str, Any]],
    expected: Sequence[set[str]],
    workdir: Path,
) -> dict[str, float]:
    """Serve the staged catalog with one backend and time the queries (seconds).

    ``expected`` holds the embedded search's ids per query; ``agree`` is the share of queries
    whose Item ids are the same set.
    """
    collection, items, count = staged
    t0 = time.perf_counter()
    with serve(backend, collection, items, count, workdir) as url:
        t_start = time.perf_counter() - t0
        lat, hits, first = time_queries(url, queries, server_filter=backend == "pgstac")
    same = sum(h == e for h, e in zip(hits, expected, strict=True))
    return {
        "start_s": t_start,
        "first_query_s": first,
        "p50_s": statistics.median(lat),
        "p95_s": float(np.percentile(lat, 95)),
        "mean_hits": float(np.mean([len(h) for h in hits])),
        "agree": same / len(queries),
    }
