"""Helpers shared by the archive's STAC item builders (times, numbers, footprints, proj)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import Polygon, box, mapping

from pipelines.archive.plan import Acquisition
from pipelines.archive.render import Grid

__all__ = ["COG", "EXT", "base_item", "eo_band", "footprint", "proj_fields", "rnd", "stac_time"]

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
EXT = "https://stac-extensions.github.io/{}/schema.json"


def stac_time(dt: datetime) -> str:
    """RFC 3339 UTC time with microseconds."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rnd(v: float, nd: int = 6) -> float:
    """Round to ``nd`` decimals (as a float)."""
    return round(float(v), nd)


def footprint(grid: Grid, swath: tuple[float, float, float] | None) -> Polygon:
    """The valid footprint of a scene in WGS84 (grid bounds, cut by the swath edge if any)."""
    poly: Polygon = box(*grid.bounds)
    if swath is not None:
        nx, ny, c = swath
        minx, miny, maxx, maxy = grid.bounds
        big = 10 * max(maxx - minx, maxy - miny)
        # The point of the edge line nearest the grid centre (the foot of the perpendicular from
        # the CRS origin can lie thousands of km away, outside the half-plane polygon below).
        mx, my = (minx + maxx) / 2, (miny + maxy) / 2
        off = nx * mx + ny * my - c
        cx, cy = mx - off * nx, my - off * ny
        half = Polygon(
            [
                (cx - ny * big, cy + nx * big),
                (cx + ny * big, cy - nx * big),
                (cx + ny * big - nx * big, cy - nx * big - ny * big),
                (cx - ny * big - nx * big, cy + nx * big - ny * big),
            ]
        )
        poly = poly.intersection(half)
    poly = shapely.segmentize(poly, max(grid.width, grid.height) * grid.res / 8)
    tr = Transformer.from_crs(grid.epsg, 4326, always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.round(np.column_stack([x, y]), 7)

    out: Polygon = shapely.transform(poly, fn)
    return out


def proj_fields(grid: Grid) -> dict[str, Any]:
    """``proj:bbox``, ``proj:shape`` and ``proj:transform`` of a grid."""
    minx, miny, maxx, maxy = grid.bounds
    return {
        "proj:bbox": [minx, miny, maxx, maxy],
        "proj:shape": [grid.height, grid.width],
        "proj:transform": [grid.res, 0.0, grid.x0, 0.0, -grid.res, grid.y0],
    }


def eo_band(band: Any) -> dict[str, Any]:
    """``eo:bands`` entry of a :class:`~pipelines.archive.classes.BandSpec`."""
    out: dict[str, Any] = {"name": band.name}
    if band.common_name:
        out["common_name"] = band.common_name
    out.update(
        description=band.description,
        center_wavelength=band.center_um,
        full_width_half_max=band.fwhm_um,
    )
    return out


def base_item(acq: Acquisition, geom: Polygon, extensions: list[str]) -> dict[str, Any]:
    """Item skeleton: type, version, extensions, id, collection, geometry, bbox, links."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": list(extensions),
        "id": acq.item_id,
        "collection": acq.collection,
        "geometry": mapping(geom),
        "bbox": [rnd(v, 7) for v in geom.bounds],
        "links": [
            {
                "rel": "collection",
                "type": "application/json",
                "href": f"stac/collections/{acq.collection}.json",
            }
        ],
    }
