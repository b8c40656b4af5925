"""STAC Items of the archive, shaped like the real providers' ones.

Sentinel-2 L2A, Landsat C2 L2 and Sentinel-1 RTC items mirror Planetary Computer's (asset keys,
titles, roles, ``proj:*``, ``eo:bands``, ``raster:bands``, property names); EnMAP items come from
:func:`pipelines.archive.enmap.enmap_item` (DLR-like). Intentional differences: hrefs are relative
to the archive root; links point into the archive; the Landsat extension URL is the one with an
offline schema (see :mod:`pipelines.archive.stac_landsat`); datetimes are RFC 3339 everywhere;
provider-only assets (``tilejson``, ``rendered_preview``, SAFE manifests, MTL files, Landsat ST
auxiliary bands) are not produced.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from shapely.geometry import Polygon

from pipelines.archive.classes import S2_BANDS
from pipelines.archive.plan import Acquisition
from pipelines.archive.render import Grid
from pipelines.archive.scene import SceneResult
from pipelines.archive.sentinel2 import absolute_orbit
from pipelines.archive.stac_common import (
    COG,
    EXT,
    base_item,
    eo_band,
    footprint,
    proj_fields,
    rnd,
    stac_time,
)
from pipelines.archive.stac_landsat import landsat_item

__all__ = ["build_item"]

S2_EXTENSIONS = [EXT.format(e) for e in ("eo/v1.0.0", "sat/v1.0.0", "projection/v1.1.0")]
S1_EXTENSIONS = [
    EXT.format(e) for e in ("sar/v1.0.0", "sat/v1.0.0", "projection/v1.1.0", "raster/v1.1.0")
]


def _s2_item(acq: Acquisition, res: SceneResult, geom: Polygon) -> dict[str, Any]:
    item = base_item(acq, geom, S2_EXTENSIONS)
    p, s = acq.props, res.stats
    pb, tile = str(p["baseline"]), str(p["tile"])
    sat = f"S2{str(p['platform'])[-1]}"
    orbit = absolute_orbit(acq)
    t = acq.when.strftime("%Y%m%dT%H%M%S")
    gen = str(p["generated"])
    gen_c = gen.replace("-", "").replace(":", "").split(".")[0].rstrip("Z")
    item["properties"] = {
        "datetime": stac_time(acq.when),
        "platform": p["platform"],
        "proj:epsg": acq.grid.epsg,
        "instruments": ["msi"],
        "s2:mgrs_tile": tile,
        "constellation": "Sentinel 2",
        "s2:granule_id": f"{sat}_OPER_MSI_L2A_TL_EOFG_{gen_c}_A{orbit:06d}_T{tile}_N{pb}",
        "eo:cloud_cover": rnd(s["cloud"]),
        "s2:datatake_id": res.extra["datatake"],
        "s2:product_uri": res.extra["product_uri"],
        "s2:datastrip_id": f"{sat}_OPER_MSI_L2A_DS_EOFG_{gen_c}_S{t}_N{pb}",
        "s2:product_type": "S2MSI2A",
        "sat:orbit_state": "descending",
        "s2:datatake_type": "INS-NOBS",
        "s2:generation_time": gen,
        "sat:relative_orbit": p["rel_orbit"],
        "s2:water_percentage": rnd(s["scl_6"]),
        "s2:mean_solar_zenith": rnd(90 - acq.sun_elevation),
        "s2:mean_solar_azimuth": rnd(acq.sun_azimuth),
        "s2:processing_baseline": pb,
        "s2:snow_ice_percentage": rnd(s["scl_11"]),
        "s2:vegetation_percentage": rnd(s["scl_4"]),
        "s2:thin_cirrus_percentage": rnd(s["scl_10"]),
        "s2:cloud_shadow_percentage": rnd(s["scl_3"]),
        "s2:nodata_pixel_percentage": rnd(s["nodata"]),
        "s2:unclassified_percentage": rnd(s["scl_7"]),
        "s2:dark_features_percentage": rnd(s["scl_2"]),
        "s2:not_vegetated_percentage": rnd(s["scl_5"]),
        "s2:degraded_msi_data_percentage": 0.0,
        "s2:high_proba_clouds_percentage": rnd(s["scl_9"]),
        "s2:reflectance_conversion_factor": rnd(
            1 + 0.0334 * math.cos(2 * math.pi * (acq.when.timetuple().tm_yday - 4) / 365.25), 9
        ),
        "s2:medium_proba_clouds_percentage": rnd(s["scl_8"]),
        "s2:saturated_defective_pixel_percentage": 0.0,
    }
    assets: dict[str, Any] = {}
    titles = {
        "AOT": "Aerosol optical thickness (AOT)",
        "SCL": "Scene classfication map (SCL)",
        "WVP": "Water vapour (WVP)",
        "visual": "True color image",
    }
    bands = {b.key: b for b in S2_BANDS}
    for key in sorted(res.assets):
        a = res.assets[key]
        if "grid" not in a:
            title = {
                "product-metadata": "Product metadata",
                "granule-metadata": "Granule metadata",
            }[key]
            assets[key] = {
                "href": a["href"],
                "type": "application/xml",
                "roles": ["metadata"],
                "title": title,
            }
            continue
        grid: Grid = a["grid"]
        asset: dict[str, Any] = {
            "href": a["href"],
            **proj_fields(grid),
            "gsd": grid.res,
            "type": COG,
            "roles": ["data"],
        }
        if key in bands:
            b = bands[key]
            asset["title"] = f"{b.description} - {b.gsd}m"
            asset["eo:bands"] = [eo_band(b)]
        else:
            asset["title"] = titles[key]
            if key == "visual":
                asset["eo:bands"] = [eo_band(bands[k]) for k in ("B04", "B03", "B02")]
        assets[key] = asset
    item["assets"] = assets
    return item


def _s1_item(acq: Acquisition, res: SceneResult, geom: Polygon) -> dict[str, Any]:
    item = base_item(acq, geom, S1_EXTENSIONS)
    p, g = acq.props, acq.grid
    start = acq.when
    end = start + timedelta(seconds=25)
    minx, miny, maxx, maxy = g.bounds
    item["properties"] = {
        "datetime": stac_time(start),
        "platform": p["platform"],
        "s1:shape": [g.width, g.height],
        "proj:bbox": [minx, miny, maxx, maxy],
        "proj:epsg": g.epsg,
        "proj:shape": [g.height, g.width],
        "end_datetime": stac_time(end),
        "constellation": "Sentinel-1",
        "s1:resolution": "high",
        "proj:transform": [g.res, 0.0, g.x0, 0.0, -g.res, g.y0],
        "s1:datatake_id": str(p["datatake"]),
        "start_datetime": stac_time(start),
        "s1:orbit_source": "RESORB",
        "s1:slice_number": "12",
        "s1:total_slices": "20",
        "sar:looks_range": 5,
        "sat:orbit_state": p["orbit_state"],
        "sar:product_type": "GRD",
        "sar:looks_azimuth": 1,
        "sar:polarizations": ["VV", "VH"],
        "sar:frequency_band": "C",
        "sat:absolute_orbit": p["abs_orbit"],
        "sat:relative_orbit": p["rel_orbit"],
        "s1:processing_level": "1",
        "sar:instrument_mode": "IW",
        "sar:center_frequency": 5.405,
        "sar:resolution_range": 20,
        "s1:product_timeliness": "Fast-24h",
        "sar:resolution_azimuth": 22,
        "sar:pixel_spacing_range": 10,
        "sar:observation_direction": "right",
        "sar:pixel_spacing_azimuth": 10,
        "sar:looks_equivalent_number": 4.4,
        "s1:instrument_configuration_ID": "7",
        "sat:platform_international_designator": "2014-016A",
    }
    item["assets"] = {
        pol: {
            "href": res.assets[pol]["href"],
            "type": COG,
            "roles": ["data"],
            "title": f"{pol.upper()}: vertical transmit, {name} receive",
            "description": "Terrain-corrected gamma naught values of signal transmitted with "
            f"vertical polarization and received with {name} polarization with "
            "radiometric terrain correction applied.",
            "raster:bands": [
                {"nodata": -32768, "data_type": "float32", "spatial_resolution": 10.0}
            ],
        }
        for pol, name in (("vh", "horizontal"), ("vv", "vertical"))
    }
    return item


def _enmap_extra(acq: Acquisition) -> dict[str, Any]:
    """DLR item properties the delivery metadata does not carry (typed as DLR types them)."""
    dt = int(acq.props["datatake"])
    return {
        "card4l:eastern_geometric_accuracy": -999.0,
        "card4l:geometric_accuracy_radial_rmse": -999.0,
        "card4l:northern_geometric_accuracy": -999.0,
        "card4l:specification": "SR",
        "card4l:specification_version": "5.0",
        "constellation": "enmap",
        "enmap:SWIRAorSWIRBSelected": "SWIRA",
        "enmap:acquisitionConfiguration": "earth",
        "enmap:acquisitionType": "EARTH",
        "enmap:biomeType": "Temperate Broadleaf and Mixed Forests",
        "enmap:compressionType": "COMPRESSED",
        "enmap:defectivePixelsSWIR": "0",
        "enmap:defectivePixelsVNIR": "0",
        "enmap:imageID": f"{dt % 100000:010d}",
        "enmap:instrumentStatusOK": "true",
        "enmap:missionPhase": "routine",
        "enmap:non_cloud_shadow": "0",
        "enmap:numberOfTiles": "01",
        "enmap:overallQuality": "0",
        "enmap:overallQualitySWIR": "0",
        "enmap:overallQualityVNIR": "0",
        "enmap:ozoneValue": "330",
        "enmap:phase": "routine",
        "enmap:productScreeningFailedGroups": "",
        "enmap:productScreeningResultStatus": "OK",
        "enmap:qualityAtmosphere": "0",
        "enmap:saturationCrosstalkSWIR": "0",
        "enmap:saturationCrosstalkVNIR": "0",
        "enmap:sceneAOT": "120",
        "enmap:sceneAtmospericParameters": "0",
        "enmap:sceneSunglint": "0",
        "enmap:sceneTerrain": "0",
        "enmap:sceneWV": "1650",
        "enmap:season": "summer",
        "enmap:status": "NOMINAL",
        "enmap:statusSWIR": "on",
        "enmap:statusVNIR": "on",
        "sci:citation": f"Synthetic EnMAP L2A product DT{dt:010d} generated by eoforge "
        "(offline archive); not a DLR product",
    }


def build_item(acq: Acquisition, res: SceneResult) -> dict[str, Any]:
    """Build the STAC Item of a written scene (EnMAP: the item the writer already built)."""
    if res.item is not None:
        item = dict(res.item)
        props = dict(item["properties"])
        for key, value in _enmap_extra(acq).items():
            props.setdefault(key, value)
        item["properties"] = props
        item["links"] = [
            {
                "rel": "collection",
                "type": "application/json",
                "href": f"stac/collections/{acq.collection}.json",
            }
        ]
        return item
    geom = footprint(acq.grid, acq.sky.swath if acq.sky else None)
    builders = {
        "sentinel-2-l2a": _s2_item,
        "landsat-c2-l2": landsat_item,
        "sentinel-1-rtc": _s1_item,
    }
    return builders[acq.collection](acq, res, geom)
