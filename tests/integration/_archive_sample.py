"""A small hand-made offline archive in the layout of :mod:`schemas.archive`, for serving tests.

Two collections, six items with distinct datetimes, bboxes and ``eo:cloud_cover`` values, and one
real tiled GeoTIFF per item (256 x 256 uint16, 128 x 128 tiles, uncompressed noise, so a window
read needs only part of the file). The real generator (``pipelines.archive.create``) replaces this
through the ``tiny_archive`` fixture once it exists; the serving tests only rely on the layout.

``SAMPLE_ITEMS`` is the ground truth the tests search against.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pystac_client import Client
from pystac_client.stac_api_io import StacApiIO
from shapely import box, unary_union
from shapely.geometry import shape

from schemas.archive import COLLECTIONS_DIR, DATA_DIR, ITEMS_DIR, MANIFEST, items_path

SIZE = 256
BLOCK = 128
EPSG = 32632


@dataclass(frozen=True)
class SampleItem:
    """What the sample archive holds for one item (WGS84 bbox as west, south, east, north)."""

    id: str
    collection: str
    datetime: str
    bbox: tuple[float, float, float, float]
    cloud_cover: float


_S2, _LS = "sentinel-2-l2a", "landsat-c2-l2"
SAMPLE_ITEMS: tuple[SampleItem, ...] = (
    SampleItem("S2A_T32UNU_20240103", _S2, "2024-01-03T10:30:00Z", (9.0, 48.0, 9.5, 48.5), 5.0),
    SampleItem("S2A_T32UNU_20240113", _S2, "2024-01-13T10:30:00Z", (9.0, 48.0, 9.5, 48.5), 60.0),
    SampleItem("S2B_T32UPU_20240123", _S2, "2024-01-23T10:30:00Z", (9.4, 48.0, 9.9, 48.5), 15.0),
    SampleItem("S2B_T32UNV_20240210", _S2, "2024-02-10T10:30:00Z", (9.0, 48.6, 9.5, 49.1), 2.5),
    SampleItem("LC09_194026_20240108", _LS, "2024-01-08T10:12:00Z", (8.8, 47.9, 9.7, 48.7), 12.0),
    SampleItem("LC08_194026_20240201", _LS, "2024-02-01T10:12:00Z", (8.8, 47.9, 9.7, 48.7), 80.0),
)

ASSET_KEY = {_S2: "B04", _LS: "red"}


def asset_relpath(item: SampleItem) -> str:
    """Archive-relative path of the item's one COG."""
    return f"{DATA_DIR}/{item.collection}/{item.id}/{ASSET_KEY[item.collection]}.tif"


def _write_tif(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 10000, size=(1, SIZE, SIZE), dtype=np.uint16)
    profile = {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": 1,
        "dtype": "uint16",
        "crs": f"EPSG:{EPSG}",
        "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5400000.0),
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "none",
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _item_json(item: SampleItem) -> dict[str, object]:
    w, s, e, n = item.bbox
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": item.id,
        "collection": item.collection,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        },
        "bbox": [w, s, e, n],
        "properties": {"datetime": item.datetime, "eo:cloud_cover": item.cloud_cover},
        "links": [{"rel": "collection", "href": f"../../collections/{item.collection}.json"}],
        "assets": {
            ASSET_KEY[item.collection]: {
                "href": asset_relpath(item),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            }
        },
    }


def _collection_json(collection: str, items: list[SampleItem]) -> dict[str, object]:
    west = min(i.bbox[0] for i in items)
    south = min(i.bbox[1] for i in items)
    east = max(i.bbox[2] for i in items)
    north = max(i.bbox[3] for i in items)
    times = sorted(i.datetime for i in items)
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection,
        "description": f"Sample {collection} collection for serving tests.",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[west, south, east, north]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": [],
    }


def write_sample_archive(root: Path) -> Path:
    """Write the sample archive under ``root`` (created if needed) and return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    collections = sorted({i.collection for i in SAMPLE_ITEMS})
    for collection in collections:
        members = sorted(
            (i for i in SAMPLE_ITEMS if i.collection == collection), key=lambda i: i.id
        )
        coll_path = root / COLLECTIONS_DIR / f"{collection}.json"
        coll_path.parent.mkdir(parents=True, exist_ok=True)
        coll_path.write_text(json.dumps(_collection_json(collection, members), indent=2))
        ndjson = root / items_path(collection)
        ndjson.parent.mkdir(parents=True, exist_ok=True)
        ndjson.write_text("".join(json.dumps(_item_json(i)) + "\n" for i in members))
    for seed, item in enumerate(SAMPLE_ITEMS):
        _write_tif(root / asset_relpath(item), seed)
    manifest = {
        "preset": "sample",
        "seed": 0,
        "collections": collections,
        "items": len(SAMPLE_ITEMS),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return root


# --- Search oracle: what a conforming STAC API must return for an archive ---------------------


@dataclass(frozen=True)
class SearchCase:
    """One search and the item ids a correct server returns for it (computed from the files)."""

    name: str
    collections: tuple[str, ...]
    bbox: tuple[float, float, float, float]
    datetime: str
    max_cloud: float | None
    expected: frozenset[str]


def read_archive_items(root: Path) -> list[dict[str, Any]]:
    """Every item of an archive, straight from its NDJSON files."""
    items: list[dict[str, Any]] = []
    for path in sorted((root / ITEMS_DIR).glob("*.ndjson")):
        items.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return items


def cloud_of(item: dict[str, Any]) -> float | None:
    """The item's ``eo:cloud_cover``, or ``None`` (radar items have none)."""
    value = item["properties"].get("eo:cloud_cover")
    return float(value) if isinstance(value, int | float) else None


def clouded_collections(items: list[dict[str, Any]]) -> list[str]:
    """Collections in which every item has a cloud cover, sorted."""
    collections = {i["collection"] for i in items}
    return sorted(
        c
        for c in collections
        if all(cloud_of(i) is not None for i in items if i["collection"] == c)
    )


def _parse_dt(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _item_interval(item: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    props = item["properties"]
    if props.get("datetime"):
        moment = _parse_dt(props["datetime"])
        return moment, moment
    return _parse_dt(props["start_datetime"]), _parse_dt(props["end_datetime"])


def oracle(
    items: list[dict[str, Any]],
    collections: tuple[str, ...],
    bbox: tuple[float, float, float, float],
    datetime: str,
    max_cloud: float | None,
) -> frozenset[str]:
    """Ids matching a search, by geometry intersection, closed time interval and cloud cover."""
    start_s, _, end_s = datetime.partition("/")
    start, end = _parse_dt(start_s), _parse_dt(end_s or start_s)
    area = box(*bbox)
    hits = set()
    for item in items:
        first, last = _item_interval(item)
        cloud = cloud_of(item)
        if (
            item["collection"] in collections
            and shape(item["geometry"]).intersects(area)
            and first <= end
            and last >= start
            and (max_cloud is None or (cloud is not None and cloud <= max_cloud))
        ):
            hits.add(item["id"])
    return frozenset(hits)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def search_cases(root: Path) -> list[SearchCase]:
    """Searches derived from any archive: per collection, one narrowed by time and cloud cover
    and one by a small bbox; plus one over all collections with a cloud threshold."""
    items = read_archive_items(root)
    collections = sorted({i["collection"] for i in items})
    cases: list[SearchCase] = []

    def add(name: str, colls: tuple[str, ...], bbox: Any, when: str, cloud: float | None) -> None:
        west, south, east, north = (round(float(v), 6) for v in bbox)
        bbox_t = (west, south, east, north)
        expected = oracle(items, colls, bbox_t, when, cloud)
        cases.append(SearchCase(name, colls, bbox_t, when, cloud, expected))

    everything = unary_union([shape(i["geometry"]) for i in items]).bounds
    for coll in collections:
        members = [i for i in items if i["collection"] == coll]
        starts = sorted(_item_interval(i)[0] for i in members)
        clouds = sorted(c for c in map(cloud_of, members) if c is not None)
        middle = starts[len(starts) // 2]
        add(
            f"{coll}-early-clear",
            (coll,),
            everything,
            f"{_iso(starts[0])}/{_iso(middle)}",
            clouds[(len(clouds) - 1) // 2] if clouds else None,
        )
        point = shape(members[-1]["geometry"]).representative_point()
        add(
            f"{coll}-point",
            (coll,),
            (point.x - 0.01, point.y - 0.01, point.x + 0.01, point.y + 0.01),
            f"{_iso(starts[0])}/{_iso(starts[-1])}",
            None,
        )
    all_starts = sorted(_item_interval(i)[0] for i in items)
    add(
        "all-cloud-20",
        tuple(collections),
        everything,
        f"{_iso(all_starts[0])}/{_iso(all_starts[-1])}",
        20.0,
    )
    return cases


# --- Small client-side helpers shared by the serving tests ------------------------------------


@contextlib.contextmanager
def open_client(url: str) -> Iterator[Client]:
    """pystac-client Client whose HTTP session is closed afterwards (no ResourceWarning)."""
    stac_io = StacApiIO()
    try:
        yield Client.open(url, stac_io=stac_io)
    finally:
        stac_io.session.close()


def port_is_closed(url: str) -> bool:
    """True when nothing accepts connections at ``http://host:port``."""
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) != 0


def eoforge_argv() -> list[str]:
    """Command line that runs the ``eoforge`` CLI of this environment."""
    script = Path(sys.executable).parent / "eoforge"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from flows.cli import main; main()"]


def stop_cli(proc: subprocess.Popen[bytes]) -> None:
    """Stop a CLI left running by a failed test: SIGTERM first, so its servers stop too."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
