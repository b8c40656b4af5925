"""Vector labels derived from the world: CORINE-like polygons (GeoPackage) and OSM XML.

* ``labels/corine.gpkg``, layer ``corine``, EPSG:3035 like the real CLC vector: parcels dissolved
  by class, then generalised like CLC: polygons smaller than the minimum mapping unit are merged
  into the neighbour they share the longest border with. Attributes ``ID`` (``EU-<n>``),
  ``Code_18`` (3-digit text), ``Remark`` and ``Area_Ha``. Rivers, roads and buildings are not
  polygons of their own (narrower than the MMU, as in CLC).
* ``labels/osm.osm``: OSM XML 0.6 that GDAL's OSM driver and osmium read. Parcels are closed ways
  with their class's land-use tags, rivers and roads are ways with ``waterway``/``highway`` and a
  ``width``, buildings closed ways with ``building``. Nodes are shared between features that share
  a vertex; every element has ``version="1"`` and a fixed timestamp, so output is reproducible.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from pyproj import Transformer
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from pipelines.archive.classes import CLASSES
from pipelines.archive.world import World

__all__ = ["CORINE_EPSG", "OSM_TIMESTAMP", "corine_polygons", "write_corine", "write_osm"]

CORINE_EPSG = 3035
OSM_TIMESTAMP = "2024-08-01T00:00:00Z"
_CODE = {c.id: c.corine for c in CLASSES}


def corine_polygons(world: World, mmu_ha: float) -> list[tuple[Polygon, str]]:
    """Dissolve and generalise the parcels into CORINE polygons in EPSG:3035.

    Args:
        world: The world.
        mmu_ha: Minimum mapping unit in hectares (CLC uses 25).

    Returns:
        ``(polygon, Code_18)`` pairs, ordered by code then by position (north to south).
    """
    tr = Transformer.from_crs(4326, CORINE_EPSG, always_xy=True)

    def proj(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    by_code: dict[str, list[BaseGeometry]] = {}
    for f in world.of_kind("parcel"):
        by_code.setdefault(_CODE[f.class_id], []).append(shapely.transform(f.geometry, proj))
    polys: list[Polygon] = []
    codes: list[str] = []
    for code in sorted(by_code):
        merged = shapely.union_all(by_code[code], grid_size=0.01)
        for part in shapely.get_parts(merged):
            polys.append(part)
            codes.append(code)
    limit = mmu_ha * 10_000.0
    while True:
        areas = np.array([p.area for p in polys])
        small = [i for i in np.argsort(areas, kind="stable") if areas[i] < limit]
        if not small or len(polys) < 2:
            break
        i = int(small[0])
        shared = shapely.length(
            shapely.intersection(polys[i].boundary, shapely.boundary(np.array(polys)))
        )
        shared[i] = 0.0
        j = int(np.argmax(shared))
        if shared[j] <= 0:  # isolated (cannot happen in a tessellation); keep it
            limit = min(limit, float(areas[i]))
            continue
        union = shapely.union(polys[j], polys[i], grid_size=0.01)
        parts = shapely.get_parts(union)
        polys[j] = parts[np.argmax(shapely.area(parts))] if len(parts) > 1 else parts[0]
        del polys[i], codes[i]
    order = sorted(
        range(len(polys)),
        key=lambda k: (codes[k], -round(polys[k].bounds[3], 2), round(polys[k].bounds[0], 2)),
    )
    return [(shapely.normalize(polys[k]), codes[k]) for k in order]


def write_corine(world: World, path: Path, mmu_ha: float) -> int:
    """Write ``labels/corine.gpkg`` (layer ``corine``); returns the number of polygons."""
    pairs = corine_polygons(world, mmu_ha)
    gdf = gpd.GeoDataFrame(
        {
            "ID": [f"EU-{world.seed % 1000:03d}{k + 1:05d}" for k in range(len(pairs))],
            "Code_18": [c for _, c in pairs],
            "Remark": [None] * len(pairs),
            "Area_Ha": [round(p.area / 10_000.0, 5) for p, _ in pairs],
        },
        geometry=[p for p, _ in pairs],
        crs=f"EPSG:{CORINE_EPSG}",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2024-08-01T00:00:00.000Z"})
    try:
        pyogrio.write_dataframe(
            gdf,
            path,
            layer="corine",
            driver="GPKG",
            geometry_type="MultiPolygon",
            promote_to_multi=True,
        )
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})
    return len(pairs)


def _osm_tags(tags: tuple[tuple[str, str], ...]) -> str:
    return "".join(f"\n\t\t<tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags)


def write_osm(world: World, path: Path) -> tuple[int, int]:
    """Write ``labels/osm.osm``; returns ``(nodes, ways)``."""
    node_ids: dict[tuple[float, float], int] = {}
    ways: list[str] = []
    for f in world.features:
        geom = f.geometry
        coords = list(geom.exterior.coords if isinstance(geom, Polygon) else geom.coords)
        refs = []
        for x, y in coords:
            key = (round(x, 7), round(y, 7))
            if key not in node_ids:
                node_ids[key] = len(node_ids) + 1
            refs.append(node_ids[key])
        if isinstance(geom, Polygon) and refs[0] != refs[-1]:
            refs.append(refs[0])
        nds = "".join(f'\n\t\t<nd ref="{r}"/>' for r in refs)
        ways.append(
            f'\t<way id="{f.fid}" version="1" timestamp="{OSM_TIMESTAMP}">'
            f"{nds}{_osm_tags(f.tags)}\n\t</way>\n"
        )
    w, s, e, n = world.extent
    lines = [
        "<?xml version='1.0' encoding='UTF-8'?>\n",
        f'<osm version="0.6" generator="eoforge archive" timestamp="{OSM_TIMESTAMP}">\n',
        f'\t<bounds minlat="{s:.7f}" minlon="{w:.7f}" maxlat="{n:.7f}" maxlon="{e:.7f}"/>\n',
    ]
    for (x, y), nid in node_ids.items():
        lines.append(
            f'\t<node id="{nid}" lat="{y:.7f}" lon="{x:.7f}" version="1" '
            f'timestamp="{OSM_TIMESTAMP}"/>\n'
        )
    lines.extend(ways)
    lines.append("</osm>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return len(node_ids), len(ways)
