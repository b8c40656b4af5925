"""Ground truth files of the archive: classes, land cover per UTM zone, scenes and masks.

* ``truth/classes.json``: every class with id, key, name, CORINE code, OSM tags, SCL code and its
  value in every band of every sensor (reflectance; Landsat ``lwir11`` in kelvin; Sentinel-1
  gamma0 linear; EnMAP one value per band, with the band centres listed once).
* ``truth/landcover_<epsg>.tif``: class ids (uint8, 0 = none) on a 5 m grid per zone whose origin
  is a multiple of 60 m, so the pixels of every S2, Landsat and EnMAP scene nest in it.
* ``truth/scenes.json``: per item id the injected shift, cloud/shadow/valid fractions, the grid
  and mask files; ``truth/masks/<item_id>_{cloud,shadow}.tif``: uint8 1/0, 255 outside the swath,
  on the scene's finest grid (S2 10 m, Landsat and EnMAP 30 m).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.archive.classes import (
    CLASSES,
    CLOUD_LST_K,
    CLOUD_SPECTRUM,
    SHADOW_FACTOR,
    enmap_values,
    landsat_values,
    s1_values,
    s2_values,
)
from pipelines.archive.cog import write_cog
from pipelines.archive.enmap import enmap_band_table
from pipelines.archive.plan import Acquisition
from pipelines.archive.render import EDGE_BRIGHTNESS, FINE_RES, Grid
from pipelines.archive.scene import SceneResult
from pipelines.archive.world import ProjectedWorld
from schemas.archive import TRUTH_MASKS_DIR, landcover_truth_path

__all__ = [
    "SHIFT_CONVENTION",
    "classes_doc",
    "scene_entry",
    "truth_grid",
    "write_json",
    "write_landcover",
    "write_masks",
]

SHIFT_CONVENTION = (
    "shift_m = [dx, dy] (east, north, metres): the image content is displaced by (dx, dy) "
    "relative to its nominal geotransform, i.e. an object at map position P appears at the "
    "nominal position P + (dx, dy). To correct, move the content by (-dx, -dy) (or add "
    "(-dx, -dy) to the geotransform origin)."
)


def write_json(path: Path, doc: Any) -> None:
    """Write JSON deterministically (2-space indent, keys in insertion order, final newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def classes_doc() -> dict[str, Any]:
    """The content of ``truth/classes.json``."""
    wl, _ = enmap_band_table()
    s2, ls, s1 = s2_values(), landsat_values(), s1_values()
    en = enmap_values(wl)
    classes = []
    for i, c in enumerate(CLASSES):
        classes.append(
            {
                "id": c.id,
                "key": c.key,
                "name": c.name,
                "corine_code": c.corine,
                "osm_tags": dict(c.osm_tags),
                "scl": c.scl,
                "water": c.water,
                "values": {
                    "sentinel-2-l2a": {k: float(v[i]) for k, v in s2.items()},
                    "landsat-c2-l2": {k: float(v[i]) for k, v in ls.items()},
                    "sentinel-1-rtc": {k: float(v[i]) for k, v in s1.items()},
                    "enmap-l2a": [float(v) for v in en[i]],
                },
            }
        )
    return {
        "description": "Classes of the synthetic world. Values are what a pure, clear pixel of "
        "the class shows after the product's scaling (reflectance; Landsat lwir11 "
        "in kelvin; Sentinel-1 gamma0 linear). corine_code is the class's nominal "
        "CLC level-3 code; labels/corine.gpkg is generalised (MMU), so narrow "
        "roads, rivers and buildings fall inside the surrounding polygons there.",
        "fine_resolution_m": FINE_RES,
        "burn_order": ["parcels", "rivers", "roads", "buildings"],
        "mixing": "a pixel's value is the mean of its 5 m cells' values; shadowed cells are "
        f"{SHADOW_FACTOR} x the surface reflectance (Landsat lwir11: minus 4 K), thick "
        f"cloud cells the cloud spectrum, cloud-edge cells {EDGE_BRIGHTNESS} x it",
        "cloud_spectrum": {
            "anchor_um": [
                0.40,
                0.49,
                0.56,
                0.665,
                0.705,
                0.74,
                0.783,
                0.865,
                0.945,
                1.61,
                2.19,
                2.50,
            ],
            "reflectance": list(CLOUD_SPECTRUM),
            "lwir11_k": CLOUD_LST_K,
        },
        "enmap_wavelengths_nm": [float(v) for v in wl],
        "classes": classes,
    }


def truth_grid(epsg: int, grids: list[Grid]) -> Grid:
    """The 5 m truth grid of a zone: covers all given scene grids, origin a multiple of 60 m."""
    minx = min(g.bounds[0] for g in grids)
    miny = min(g.bounds[1] for g in grids)
    maxx = max(g.bounds[2] for g in grids)
    maxy = max(g.bounds[3] for g in grids)
    x0, y0 = math.floor(minx / 60) * 60.0, math.ceil(maxy / 60) * 60.0
    x1, y1 = math.ceil(maxx / 60) * 60.0, math.floor(miny / 60) * 60.0
    return Grid(epsg, x0, y0, FINE_RES, round((x1 - x0) / FINE_RES), round((y0 - y1) / FINE_RES))


def write_landcover(root: Path, world: ProjectedWorld, grid: Grid) -> str:
    """Rasterise the world on a zone's truth grid; returns the archive-relative path."""
    rel = landcover_truth_path(grid.epsg).as_posix()
    data = world.rasterize(grid.transform, grid.shape)
    write_cog(
        root / rel,
        data,
        transform=grid.transform,
        epsg=grid.epsg,
        nodata=0,
        band_descriptions=["class_id"],
        blocksize=512,
    )
    return rel


def write_masks(root: Path, acq: Acquisition, res: SceneResult) -> dict[str, str]:
    """Write the cloud and shadow truth masks of a scene; returns ``{kind: relative path}``."""
    if res.masks is None:
        return {}
    out: dict[str, str] = {}
    g = res.mask_grid
    for kind, mask in (("cloud", res.masks.cloud), ("shadow", res.masks.shadow)):
        data = mask.astype(np.uint8)
        data[~res.masks.valid] = 255
        rel = f"{TRUTH_MASKS_DIR}/{acq.item_id}_{kind}.tif"
        write_cog(root / rel, data, transform=g.transform, epsg=g.epsg, nodata=255)
        out[kind] = rel
    return out


def scene_entry(acq: Acquisition, res: SceneResult, masks: dict[str, str]) -> dict[str, Any]:
    """One ``truth/scenes.json`` entry."""
    m = res.masks
    g = res.mask_grid
    return {
        "collection": acq.collection,
        "datetime": acq.when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "epsg": acq.grid.epsg,
        "shift_m": [acq.shift_m[0], acq.shift_m[1]],
        "cloud_fraction": round(m.fraction(m.cloud), 6) if m is not None else 0.0,
        "shadow_fraction": round(m.fraction(m.shadow), 6) if m is not None else 0.0,
        "valid_fraction": round(float(m.valid.mean()), 6) if m is not None else 1.0,
        "cloud_target": acq.sky.cloud_target if acq.sky else 0.0,
        "shadow_offset_m": list(acq.sky.shadow_m) if acq.sky else None,
        "swath_edge": list(acq.sky.swath) if acq.sky and acq.sky.swath else None,
        "mask_grid": {
            "transform": [g.res, 0.0, g.x0, 0.0, -g.res, g.y0],
            "shape": [g.height, g.width],
        },
        "masks": masks,
    }
