"""Sentinel-1 RTC scenes as Planetary Computer serves them: VV and VH gamma0, float32, linear.

Pixels are 10 m in UTM with corners off the 10 m lattice (RTC products are "not shifted to any
specific grid"); nodata -32768 outside the world. Values are the area-weighted mean of the class
backscatter over each pixel, **without speckle**, so pure pixels equal ``truth/classes.json``
exactly (to float32 precision). Radar sees through clouds: no cloud or shadow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.archive.classes import s1_values
from pipelines.archive.cog import write_cog
from pipelines.archive.plan import Acquisition
from pipelines.archive.render import label_counts, label_table, mix, render_labels
from pipelines.archive.scene import SceneResult, class_values, masks_from_counts, rel
from pipelines.archive.world import ProjectedWorld
from schemas.radiometry import RTC_NODATA

__all__ = ["write_sentinel1"]


def write_sentinel1(acq: Acquisition, world: ProjectedWorld, root: Path) -> SceneResult:
    """Render and write one Sentinel-1 RTC scene under ``root/data/sentinel-1-rtc/<id>/``.

    Args:
        acq: The acquisition (10 m grid, off-lattice corners).
        world: The world projected to the scene's CRS.
        root: Archive root.

    Returns:
        The written scene (assets ``vv`` and ``vh``; no masks).
    """
    out = root / "data" / acq.collection / acq.item_id / "measurement"
    counts = label_counts(render_labels(world, acq.grid, None), 2)
    valid = masks_from_counts(counts).valid
    gamma = mix(counts, label_table(class_values(s1_values(), ["vv", "vh"]), None))
    assets: dict[str, dict[str, object]] = {}
    for i, pol in enumerate(("vv", "vh")):
        data = gamma[i].astype(np.float32)
        data[~valid] = RTC_NODATA
        path = out / f"iw-{pol}.rtc.tiff"
        write_cog(
            path,
            data,
            transform=acq.grid.transform,
            epsg=acq.grid.epsg,
            nodata=RTC_NODATA,
            resampling="average",
        )
        assets[pol] = {"href": rel(path, root), "grid": acq.grid}
    stats = {"nodata": 100.0 * float((~valid).sum()) / valid.size}
    return SceneResult(assets, acq.grid, None, stats)
