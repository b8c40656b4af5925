"""Landsat 8/9 Collection 2 Level-2 scenes: SR_B1..B7, ST_B10, QA_PIXEL, QA_RADSAT, QA_AEROSOL.

SR bands are uint16 with ``refl = DN * 2.75e-5 - 0.2`` (nodata 0), ST_B10 uint16 with
``K = DN * 0.00341802 + 149`` (nodata 0). QA_PIXEL (nodata 1) uses the real bit layout: bit 0 fill,
1 dilated cloud (1 pixel ring around clouds), 3 cloud, 4 cloud shadow, 6 clear (neither cloud nor
dilated cloud), 7 water, and 2-bit confidences (cloud 8-9, shadow 10-11, snow 12-13, cirrus
14-15) that are "high" for flagged pixels and "low" otherwise; so clear land is 21824, clear water
21952, cloud 22280, shadow over land 23888, fill 1. QA_RADSAT is 0 (nothing saturated).

Each scene's pixels are rendered from the world shifted by the scene's ``shift_m`` while its
geotransform stays nominal (see :mod:`pipelines.archive.render`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from pipelines.archive.classes import CLOUD_LST_K, LANDSAT_BANDS, cloud_values, landsat_values
from pipelines.archive.cog import write_cog
from pipelines.archive.plan import Acquisition
from pipelines.archive.render import (
    CLOUD_EDGE,
    CLOUD_THICK,
    N_CLASSES,
    N_LABELS,
    label_counts,
    label_table,
    mix,
    render_labels,
)
from pipelines.archive.scene import SceneResult, class_values, masks_from_counts, rel
from pipelines.archive.world import ProjectedWorld
from schemas.radiometry import (
    LANDSAT_SR_OFFSET,
    LANDSAT_SR_SCALE,
    LANDSAT_ST_OFFSET,
    LANDSAT_ST_SCALE,
)

__all__ = ["SHADOW_COOLING_K", "qa_pixel", "write_landsat"]

#: Surface temperature drop inside cloud shadows (K).
SHADOW_COOLING_K = 4.0
_LOW_CONF = (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)
_FILES = {
    "coastal": "SR_B1",
    "blue": "SR_B2",
    "green": "SR_B3",
    "red": "SR_B4",
    "nir08": "SR_B5",
    "swir16": "SR_B6",
    "swir22": "SR_B7",
    "lwir11": "ST_B10",
    "qa_pixel": "QA_PIXEL",
    "qa_radsat": "QA_RADSAT",
    "qa_aerosol": "SR_QA_AEROSOL",
}


def qa_pixel(
    valid: np.ndarray, cloud: np.ndarray, shadow: np.ndarray, water: np.ndarray
) -> np.ndarray:
    """Encode QA_PIXEL from truth masks (all dims ``(y, x)``, bool).

    Returns:
        QA_PIXEL, dims ``(y, x)``, uint16; fill (nodata) pixels are 1.
    """
    dilated = ndimage.binary_dilation(cloud, structure=np.ones((3, 3), bool)) & ~cloud
    qa = np.full(valid.shape, _LOW_CONF, dtype=np.uint16)
    qa[cloud] += (1 << 3) | (2 << 8)
    qa[shadow] += (1 << 4) | (2 << 10)
    qa[dilated] |= 1 << 1
    qa[~cloud & ~dilated] |= 1 << 6
    qa[water & ~cloud] |= 1 << 7
    qa[~valid] = 1
    return qa


def write_landsat(acq: Acquisition, world: ProjectedWorld, root: Path) -> SceneResult:
    """Render and write one Landsat C2 L2 scene under ``root/data/landsat-c2-l2/<id>/``.

    Args:
        acq: The acquisition (30 m grid, corners at 15 mod 30 m, injected shift).
        world: The world projected to the scene's CRS.
        root: Archive root.

    Returns:
        The written scene (assets, 30 m truth masks on the nominal grid, statistics).
    """
    out = root / "data" / acq.collection / acq.item_id
    counts = label_counts(render_labels(world, acq.grid, acq.sky, acq.shift_m), 6)
    masks = masks_from_counts(counts)
    values = landsat_values()
    sr_keys = [b.key for b in LANDSAT_BANDS]
    table = label_table(
        class_values(values, sr_keys), cloud_values(np.array([b.center_um for b in LANDSAT_BANDS]))
    )
    lst = np.zeros((N_LABELS, 1))
    lst[:N_CLASSES, 0] = values["lwir11"]
    lst[N_CLASSES : 2 * N_CLASSES, 0] = values["lwir11"] - SHADOW_COOLING_K
    lst[CLOUD_THICK, 0] = lst[CLOUD_EDGE, 0] = CLOUD_LST_K
    product = str(acq.props["product_id"])
    assets: dict[str, dict[str, object]] = {}

    def put(
        key: str,
        data: np.ndarray,
        nodata: int | None,
        resampling: Literal["nearest", "average"] = "nearest",
    ) -> None:
        path = out / f"{product}_{_FILES[key]}.TIF"
        write_cog(
            path,
            data,
            transform=acq.grid.transform,
            epsg=acq.grid.epsg,
            nodata=nodata,
            resampling=resampling,
        )
        assets[key] = {"href": rel(path, root), "grid": acq.grid}

    refl = mix(counts, table)
    for i, key in enumerate(sr_keys):
        dn = np.rint((refl[i] - LANDSAT_SR_OFFSET) / LANDSAT_SR_SCALE)
        dn = np.clip(dn, 1, 65535).astype(np.uint16)
        dn[~masks.valid] = 0
        put(key, dn, 0, "average")
    temp = mix(counts, lst)[0]
    st = np.clip(np.rint((temp - LANDSAT_ST_OFFSET) / LANDSAT_ST_SCALE), 1, 65535)
    st = st.astype(np.uint16)
    st[~masks.valid] = 0
    put("lwir11", st, 0, "average")
    put("qa_pixel", qa_pixel(masks.valid, masks.cloud, masks.shadow, masks.water), 1)
    put("qa_radsat", np.zeros(acq.grid.shape, dtype=np.uint16), None)
    aerosol = np.where(masks.water, 70, 66).astype(np.uint8)
    aerosol[masks.cloud] = 96
    aerosol[~masks.valid] = 1
    put("qa_aerosol", aerosol, 1)

    land = masks.valid & ~masks.water
    stats = {
        "cloud": 100.0 * masks.fraction(masks.cloud),
        "shadow": 100.0 * masks.fraction(masks.shadow),
        "cloud_land": 100.0 * float((masks.cloud & land).sum()) / max(1, int(land.sum())),
    }
    return SceneResult(assets, acq.grid, masks, stats)
