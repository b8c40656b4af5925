"""STAC Collections of the archive, modelled on Planetary Computer's and DLR's collections.

Each collection's extent is computed from its items, ``item_assets`` is derived from the items'
assets (hrefs and per-scene ``proj:*`` removed), and the description says plainly that the data
are synthetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["build_collection"]

_EXT = "https://stac-extensions.github.io/{}/schema.json"
_META: dict[str, dict[str, Any]] = {
    "sentinel-2-l2a": {
        "title": "Sentinel-2 Level-2A",
        "what": "Sentinel-2 L2A surface reflectance (B01..B12 without B10 at 10/20/60 m, SCL), "
        "as Planetary Computer serves it (raw DN, +1000 for processing baselines "
        ">= 04.00; this archive mixes baselines on purpose)",
        "keywords": ["Sentinel", "Copernicus", "ESA", "Satellite", "Imagery", "Reflectance"],
        "providers": [
            (
                "ESA",
                "https://sentinel.esa.int/web/sentinel/missions/sentinel-2",
                ["producer", "licensor"],
            )
        ],
        "license": "proprietary",
        "summaries": {
            "gsd": [10, 20, 60],
            "platform": ["Sentinel-2A", "Sentinel-2B"],
            "instruments": ["msi"],
            "constellation": ["sentinel-2"],
        },
    },
    "landsat-c2-l2": {
        "title": "Landsat Collection 2 Level-2",
        "what": "Landsat 8/9 Collection 2 Level-2 surface reflectance and temperature with "
        "QA_PIXEL/QA_RADSAT, 30 m pixels with corners at 15 (mod 30) m",
        "keywords": [
            "Landsat",
            "USGS",
            "NASA",
            "Satellite",
            "Global",
            "Imagery",
            "Reflectance",
            "Temperature",
        ],
        "providers": [
            (
                "USGS",
                "https://www.usgs.gov/landsat-missions/landsat-collection-2-level-2-science-products",
                ["producer", "processor", "licensor"],
            )
        ],
        "license": "proprietary",
        "summaries": {
            "gsd": [30],
            "platform": ["landsat-8", "landsat-9"],
            "instruments": ["oli", "tirs"],
        },
    },
    "sentinel-1-rtc": {
        "title": "Sentinel 1 Radiometrically Terrain Corrected (RTC)",
        "what": "Sentinel-1 IW radiometrically terrain corrected gamma0 (VV, VH; float32, "
        "linear, nodata -32768) on 10 m UTM pixels not aligned to any specific grid",
        "keywords": ["ESA", "Copernicus", "Sentinel", "C-Band", "SAR", "RTC"],
        "providers": [("Catalyst", "https://catalyst.earth", ["processor"])],
        "license": "CC-BY-4.0",
        "summaries": {
            "platform": ["SENTINEL-1A"],
            "constellation": ["Sentinel-1"],
            "sar:instrument_mode": ["IW"],
            "sar:frequency_band": ["C"],
            "sar:polarizations": [["VV", "VH"]],
            "sar:product_type": ["GRD"],
        },
    },
    "ENMAP_HSI_L2A": {
        "title": "EnMAP HSI L2A - Land",
        "what": "EnMAP hyperspectral L2A surface reflectance (224 bands, int16 x 10000, nodata "
        "-32768) with DLR quality layers and METADATA.XML",
        "keywords": ["EnMAP", "DLR", "Hyperspectral", "Imaging Spectroscopy", "Reflectance"],
        "providers": [("DLR", "https://www.enmap.org", ["producer", "licensor"])],
        "license": "proprietary",
        "summaries": {"platform": ["enmap"], "instruments": ["hsi"], "gsd": [30]},
    },
}

_PER_SCENE = (
    "href",
    "proj:bbox",
    "proj:shape",
    "proj:transform",
    "proj:geometry",
    "proj:epsg",
    "file:size",
    "file:checksum",
)


def build_collection(collection: str, items: Sequence[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Build one collection from its items.

    Args:
        collection: Collection id (a value of :data:`schemas.archive.ARCHIVE_COLLECTIONS`).
        items: The collection's items (at least one).
        seed: The archive's seed (named in the description).

    Returns:
        The STAC 1.0.0 Collection as a JSON-ready dict.
    """
    meta = _META[collection]
    bboxes = [it["bbox"] for it in items]
    bbox = [
        min(b[0] for b in bboxes),
        min(b[1] for b in bboxes),
        max(b[2] for b in bboxes),
        max(b[3] for b in bboxes),
    ]
    times = sorted(
        it["properties"].get("start_datetime") or it["properties"]["datetime"] for it in items
    )
    ends = sorted(
        it["properties"].get("end_datetime") or it["properties"]["datetime"] for it in items
    )
    item_assets: dict[str, Any] = {}
    for it in items:
        for key, asset in it["assets"].items():
            item_assets.setdefault(key, {k: v for k, v in asset.items() if k not in _PER_SCENE})
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [_EXT.format("item-assets/v1.0.0")],
        "id": collection,
        "title": meta["title"],
        "description": f"Synthetic {meta['what']}. Generated by eoforge's offline archive "
        f"generator (seed {seed}) from a procedural world; not real observations.",
        "license": meta["license"],
        "keywords": meta["keywords"],
        "providers": [
            *({"name": n, "url": u, "roles": r} for n, u, r in meta["providers"]),
            {"name": "eoforge offline archive", "roles": ["processor", "host"]},
        ],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[times[0], ends[-1]]]}},
        "summaries": meta["summaries"],
        "item_assets": item_assets,
        "links": [],
    }
