"""Landsat Collection 2 Level-2 STAC items shaped like Planetary Computer's.

Same asset keys, titles, roles, ``eo:bands``, ``raster:bands`` and ``classification:bitfields``
as PC (for the assets the archive produces); the Landsat extension is declared with the
offline-resolvable ``stac-extensions.github.io/landsat/v2.0.0`` URL.
"""

from __future__ import annotations

from typing import Any

from shapely.geometry import Polygon

from pipelines.archive.classes import LANDSAT_BANDS
from pipelines.archive.plan import Acquisition
from pipelines.archive.scene import SceneResult
from pipelines.archive.stac_common import COG, EXT, base_item, eo_band, rnd, stac_time
from schemas.radiometry import (
    LANDSAT_SR_OFFSET,
    LANDSAT_SR_SCALE,
    LANDSAT_ST_OFFSET,
    LANDSAT_ST_SCALE,
)

__all__ = ["LANDSAT_EXTENSIONS", "landsat_item"]

LANDSAT_EXTENSIONS = [
    EXT.format(e)
    for e in (
        "raster/v1.1.0",
        "eo/v1.0.0",
        "view/v1.0.0",
        "projection/v1.1.0",
        "landsat/v2.0.0",
        "classification/v1.0.0",
        "scientific/v1.0.0",
    )
]


_LS_TEXT = {
    "coastal": ("Coastal/Aerosol Band", "Coastal/Aerosol Band (SR_B1)"),
    "blue": ("Blue Band", "Blue Band (SR_B2)"),
    "green": ("Green Band", "Green Band (SR_B3)"),
    "red": ("Red Band", "Red Band (SR_B4)"),
    "nir08": ("Near Infrared Band 0.8", "Near Infrared Band 0.8 (SR_B5)"),
    "swir16": ("Short-wave Infrared Band 1.6", "Short-wave Infrared Band 1.6 (SR_B6)"),
    "swir22": ("Short-wave Infrared Band 2.2", "Short-wave Infrared Band 2.2 (SR_B7)"),
}


def _bitfield(name: str, offset: int, length: int, desc: str, classes: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "length": length,
        "offset": offset,
        "description": desc,
        "classes": [
            {"name": c, "value": i, "description": c.replace("_", " ").capitalize()}
            for i, c in enumerate(classes)
            if c
        ],
    }


def _qa_pixel_bitfields() -> list[dict[str, Any]]:
    flags = [
        ("fill", 0, "Image or fill data", ["not_fill", "fill"]),
        ("dilated_cloud", 1, "Dilated cloud", ["not_dilated", "dilated"]),
        ("cirrus", 2, "Cirrus mask", ["not_cirrus", "cirrus"]),
        ("cloud", 3, "Cloud mask", ["not_cloud", "cloud"]),
        ("cloud_shadow", 4, "Cloud shadow mask", ["not_shadow", "shadow"]),
        ("snow", 5, "Snow/Ice mask", ["not_snow", "snow"]),
        ("clear", 6, "Clear mask", ["not_clear", "clear"]),
        ("water", 7, "Water mask", ["not_water", "water"]),
    ]
    out = [_bitfield(n, o, 1, d, c) for n, o, d, c in flags]
    conf = ["not_set", "low", "reserved", "high"]
    for name, off, d in (
        ("cloud_confidence", 8, "Cloud confidence levels"),
        ("cloud_shadow_confidence", 10, "Cloud shadow confidence levels"),
        ("snow_confidence", 12, "Snow/Ice confidence levels"),
        ("cirrus_confidence", 14, "Cirrus confidence levels"),
    ):
        levels = ["not_set", "low", "medium", "high"] if off == 8 else conf
        out.append(_bitfield(name, off, 2, d, levels))
    return out


def _radsat_bitfields() -> list[dict[str, Any]]:
    out = [
        _bitfield(
            f"band{b}", b - 1, 1, f"Band {b} radiometric saturation", ["not_saturated", "saturated"]
        )
        for b in (1, 2, 3, 4, 5, 6, 7)
    ]
    out.append(
        _bitfield("band9", 8, 1, "Band 9 radiometric saturation", ["not_saturated", "saturated"])
    )
    out.append(
        _bitfield(
            "occlusion",
            11,
            1,
            "Terrain not visible from sensor due to intervening terrain",
            ["not_occluded", "occluded"],
        )
    )
    return out


def landsat_item(acq: Acquisition, res: SceneResult, geom: Polygon) -> dict[str, Any]:
    """The STAC item of a written Landsat scene."""
    item = base_item(acq, geom, LANDSAT_EXTENSIONS)
    p, g = acq.props, acq.grid
    item["properties"] = {
        "gsd": 30,
        "created": stac_time(acq.when.replace(hour=23, minute=0, second=0)),
        "sci:doi": "10.5066/P9OGBGM6",
        "datetime": stac_time(acq.when),
        "platform": p["platform"],
        "proj:epsg": g.epsg,
        "proj:shape": [g.height, g.width],
        "proj:transform": [g.res, 0.0, g.x0, 0.0, -g.res, g.y0],
        "description": "Landsat Collection 2 Level-2",
        "instruments": ["oli", "tirs"],
        "eo:cloud_cover": rnd(res.stats["cloud"], 2),
        "view:off_nadir": 0,
        "landsat:wrs_row": p["row"],
        "landsat:scene_id": p["scene_id"],
        "landsat:wrs_path": p["path"],
        "landsat:wrs_type": "2",
        "view:sun_azimuth": rnd(acq.sun_azimuth, 8),
        "landsat:correction": "L2SP",
        "view:sun_elevation": rnd(acq.sun_elevation, 8),
        "landsat:cloud_cover_land": rnd(res.stats["cloud_land"], 2),
        "landsat:collection_number": "02",
        "landsat:collection_category": "T1",
    }
    bands = {b.key: b for b in LANDSAT_BANDS}
    assets: dict[str, Any] = {}
    for key in sorted(res.assets):
        href = res.assets[key]["href"]
        if key in bands:
            title, what = _LS_TEXT[key]
            assets[key] = {
                "href": href,
                "eo:bands": [eo_band(bands[key])],
                "type": COG,
                "roles": ["data", "reflectance"],
                "title": title,
                "description": f"Collection 2 Level-2 {what} Surface Reflectance",
                "raster:bands": [
                    {
                        "scale": LANDSAT_SR_SCALE,
                        "nodata": 0,
                        "offset": LANDSAT_SR_OFFSET,
                        "data_type": "uint16",
                        "spatial_resolution": 30,
                    }
                ],
            }
        elif key == "lwir11":
            assets[key] = {
                "href": href,
                "gsd": 100,
                "type": COG,
                "roles": ["data", "temperature"],
                "title": "Surface Temperature Band",
                "eo:bands": [
                    {
                        "name": "TIRS_B10",
                        "common_name": "lwir11",
                        "description": "Long-wave infrared",
                        "center_wavelength": 10.9,
                        "full_width_half_max": 0.59,
                    }
                ],
                "description": "Collection 2 Level-2 Thermal Infrared Band (ST_B10) Surface "
                "Temperature",
                "raster:bands": [
                    {
                        "unit": "kelvin",
                        "scale": LANDSAT_ST_SCALE,
                        "nodata": 0,
                        "offset": LANDSAT_ST_OFFSET,
                        "data_type": "uint16",
                        "spatial_resolution": 30,
                    }
                ],
            }
        elif key == "qa_pixel":
            assets[key] = {
                "href": href,
                "classification:bitfields": _qa_pixel_bitfields(),
                "type": COG,
                "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
                "title": "Pixel Quality Assessment Band",
                "description": "Collection 2 Level-1 Pixel Quality Assessment Band (QA_PIXEL)",
                "raster:bands": [
                    {
                        "unit": "bit index",
                        "nodata": 1,
                        "data_type": "uint16",
                        "spatial_resolution": 30,
                    }
                ],
            }
        elif key == "qa_radsat":
            assets[key] = {
                "href": href,
                "title": "Radiometric Saturation and Terrain Occlusion Quality Assessment Band",
                "description": "Collection 2 Level-1 Radiometric Saturation and Terrain "
                "Occlusion Quality Assessment Band (QA_RADSAT)",
                "classification:bitfields": _radsat_bitfields(),
                "type": COG,
                "roles": ["saturation"],
                "raster:bands": [
                    {"unit": "bit index", "data_type": "uint16", "spatial_resolution": 30}
                ],
            }
        elif key == "qa_aerosol":
            assets[key] = {
                "href": href,
                "type": COG,
                "roles": ["data-mask", "water-mask"],
                "title": "Aerosol Quality Assessment Band",
                "description": "Collection 2 Level-2 Aerosol Quality Assessment Band "
                "(SR_QA_AEROSOL) Surface Reflectance Product",
                "raster:bands": [
                    {
                        "unit": "bit index",
                        "nodata": 1,
                        "data_type": "uint8",
                        "spatial_resolution": 30,
                    }
                ],
                "classification:bitfields": [
                    _bitfield("fill", 0, 1, "Image or fill data", ["not_fill", "fill"]),
                    _bitfield("retrieval", 1, 1, "Valid aerosol retrieval", ["not_valid", "valid"]),
                    _bitfield("water", 2, 1, "Water mask", ["not_water", "water"]),
                    _bitfield(
                        "interpolated",
                        5,
                        1,
                        "Aerosol interpolation",
                        ["not_interpolated", "interpolated"],
                    ),
                    _bitfield(
                        "level", 6, 2, "Aerosol level", ["climatology", "low", "medium", "high"]
                    ),
                ],
            }
    item["assets"] = assets
    return item
