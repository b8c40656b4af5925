"""Layout contract of an eoforge offline archive (written by ``eoforge archive create``/``index``).

An archive is a directory that looks to eoforge exactly like a remote provider once served::

    DIR/
      archive.json                         # manifest: preset, seed, bbox, collections, counts
      stac/collections/<collection>.json   # STAC Collections (provider-like)
      stac/items/<collection>.ndjson       # STAC Items, one per line, sorted by id
      data/<collection>/<item_id>/<file>   # COGs (and EnMAP METADATA.XML) referenced by the items
      labels/corine.gpkg                   # CORINE-like polygons, layer "corine", attribute Code_18
      labels/osm.osm                       # OSM XML with real tags (building, highway, ...)
      truth/classes.json                   # class id, name, CORINE code, OSM tags, per-band values
      truth/landcover_<epsg>.tif           # class ids on a fine grid per UTM zone
      truth/scenes.json                    # per item id: injected shift (m), cloud fraction, ...
      truth/masks/<item_id>_{cloud,shadow}.tif

Asset hrefs inside stored items are *relative to DIR* (``data/<collection>/<item>/<file>``). The
serving code rewrites them to ``http://127.0.0.1:<port>/data/...`` (HTTP range server) when it
loads the items into a STAC API, so a build reads them through real HTTP range requests.

Collection ids and asset keys mirror real providers (see SENSORS.md and ../shared/fixtures):
Sentinel-2 L2A and Landsat C2 L2 and Sentinel-1 RTC use Planetary Computer's keys and property
names; EnMAP uses DLR's ``ENMAP_HSI_L2A`` keys (``image``, ``metadata``, ``quality_*``, ...).
"""

from __future__ import annotations

from pathlib import PurePosixPath

__all__ = [
    "ARCHIVE_COLLECTIONS",
    "COLLECTIONS_DIR",
    "DATA_DIR",
    "ITEMS_DIR",
    "LABELS_CORINE",
    "LABELS_OSM",
    "MANIFEST",
    "TRUTH_CLASSES",
    "TRUTH_DIR",
    "TRUTH_MASKS_DIR",
    "TRUTH_SCENES",
    "items_path",
    "landcover_truth_path",
]

MANIFEST = "archive.json"
COLLECTIONS_DIR = "stac/collections"
ITEMS_DIR = "stac/items"
DATA_DIR = "data"
LABELS_CORINE = "labels/corine.gpkg"
LABELS_OSM = "labels/osm.osm"
TRUTH_DIR = "truth"
TRUTH_CLASSES = "truth/classes.json"
TRUTH_SCENES = "truth/scenes.json"
TRUTH_MASKS_DIR = "truth/masks"

#: Collection id in the archive for each sensor id used in recipes.
ARCHIVE_COLLECTIONS: dict[str, str] = {
    "sentinel-2-l2a": "sentinel-2-l2a",
    "landsat-c2-l2": "landsat-c2-l2",
    "sentinel-1-rtc": "sentinel-1-rtc",
    "enmap-l2a": "ENMAP_HSI_L2A",
}


def items_path(collection: str) -> PurePosixPath:
    """Relative path of the NDJSON file holding a collection's items."""
    return PurePosixPath(ITEMS_DIR) / f"{collection}.ndjson"


def landcover_truth_path(epsg: int) -> PurePosixPath:
    """Relative path of the land-cover truth raster for one UTM zone."""
    return PurePosixPath(TRUTH_DIR) / f"landcover_{epsg}.tif"
