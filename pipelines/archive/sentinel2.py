"""Sentinel-2 L2A scenes: B01..B12 (no B10) at 10/20/60 m, SCL, AOT, WVP, TCI and metadata XML.

Pixel values follow Planetary Computer's (not harmonised) COGs: ``DN = round(refl * 10000)``,
plus 1000 when the processing baseline is >= 04.00; uint16, nodata 0 (pixels with any part
outside the swath). SCL (20 m): 0 nodata, 3 cloud shadow, 4/5/6 the majority class's
vegetation / not-vegetated / water code, 8 cloud edge (medium probability), 9 thick cloud.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np

from pipelines.archive.classes import CLASSES, S2_BANDS, cloud_values, s2_values
from pipelines.archive.cog import write_cog
from pipelines.archive.plan import Acquisition
from pipelines.archive.render import (
    coarsen_counts,
    label_counts,
    label_table,
    mix,
    render_labels,
)
from pipelines.archive.scene import SceneResult, class_values, masks_from_counts, rel
from pipelines.archive.world import ProjectedWorld

__all__ = ["S2_AOT", "S2_WVP", "absolute_orbit", "baseline_offset", "write_sentinel2"]

#: Constant aerosol optical thickness (DN, scale 0.001) and water vapour (DN, scale 0.001 cm).
S2_AOT = 120
S2_WVP = 1650
_SCL_OF_CLASS = np.array([0] + [c.scl for c in CLASSES], dtype=np.uint8)


def baseline_offset(baseline: str) -> int:
    """DN offset Planetary Computer's COGs carry: 1000 for baselines >= "04.00", else 0."""
    return 1000 if baseline >= "04.00" else 0


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return data + b"\n"


def _product_xml(acq: Acquisition, cloud_pct: float) -> bytes:
    pb = str(acq.props["baseline"])
    ns = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    root = ET.Element("n1:Level-2A_User_Product", {"xmlns:n1": ns})
    info = ET.SubElement(ET.SubElement(root, "n1:General_Info"), "Product_Info")
    t = acq.when.strftime("%Y-%m-%dT%H:%M:%S.024Z")
    uri = _product_uri(acq)
    for tag, text in (
        ("PRODUCT_START_TIME", t),
        ("PRODUCT_STOP_TIME", t),
        ("PRODUCT_URI", uri),
        ("PROCESSING_LEVEL", "Level-2A"),
        ("PRODUCT_TYPE", "S2MSI2A"),
        ("PROCESSING_BASELINE", pb),
        ("GENERATION_TIME", str(acq.props["generated"])),
    ):
        ET.SubElement(info, tag).text = text
    dtk = ET.SubElement(info, "Datatake", {"datatakeIdentifier": _datatake(acq)})
    ET.SubElement(dtk, "SPACECRAFT_NAME").text = str(acq.props["platform"])
    ET.SubElement(dtk, "DATATAKE_SENSING_START").text = t
    ET.SubElement(dtk, "SENSING_ORBIT_NUMBER").text = str(acq.props["rel_orbit"])
    ET.SubElement(dtk, "SENSING_ORBIT_DIRECTION").text = "DESCENDING"
    chars = ET.SubElement(root.find("n1:General_Info"), "Product_Image_Characteristics")  # type: ignore[arg-type]
    q = ET.SubElement(chars, "QUANTIFICATION_VALUES_LIST")
    ET.SubElement(q, "BOA_QUANTIFICATION_VALUE", {"unit": "none"}).text = "10000"
    ET.SubElement(q, "AOT_QUANTIFICATION_VALUE", {"unit": "none"}).text = "1000.0"
    ET.SubElement(q, "WVP_QUANTIFICATION_VALUE", {"unit": "cm"}).text = "1000.0"
    if baseline_offset(pb):
        offs = ET.SubElement(chars, "BOA_ADD_OFFSET_VALUES_LIST")
        for band_id in range(13):
            ET.SubElement(offs, "BOA_ADD_OFFSET", {"band_id": str(band_id)}).text = "-1000"
    qi = ET.SubElement(root, "n1:Quality_Indicators_Info")
    ET.SubElement(qi, "Cloud_Coverage_Assessment").text = f"{cloud_pct:.6f}"
    return _xml_bytes(root)


def _granule_xml(acq: Acquisition) -> bytes:
    g = acq.grid
    root = ET.Element(
        "n1:Level-2A_Tile_ID",
        {"xmlns:n1": "https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd"},
    )
    geo = ET.SubElement(ET.SubElement(root, "n1:Geometric_Info"), "Tile_Geocoding")
    ET.SubElement(geo, "HORIZONTAL_CS_NAME").text = f"WGS84 / UTM zone {g.epsg - 32600}N"
    ET.SubElement(geo, "HORIZONTAL_CS_CODE").text = f"EPSG:{g.epsg}"
    for res in (10, 20, 60):
        size = ET.SubElement(geo, "Size", {"resolution": str(res)})
        ET.SubElement(size, "NROWS").text = str(round(g.height * g.res / res))
        ET.SubElement(size, "NCOLS").text = str(round(g.width * g.res / res))
    for res in (10, 20, 60):
        pos = ET.SubElement(geo, "Geoposition", {"resolution": str(res)})
        for tag, text in (("ULX", g.x0), ("ULY", g.y0), ("XDIM", res), ("YDIM", -res)):
            ET.SubElement(pos, tag).text = f"{text:g}"
    ang = ET.SubElement(
        ET.SubElement(root.find("n1:Geometric_Info"), "Tile_Angles"),  # type: ignore[arg-type]
        "Mean_Sun_Angle",
    )
    ET.SubElement(ang, "ZENITH_ANGLE", {"unit": "deg"}).text = f"{90 - acq.sun_elevation:.6f}"
    ET.SubElement(ang, "AZIMUTH_ANGLE", {"unit": "deg"}).text = f"{acq.sun_azimuth:.6f}"
    return _xml_bytes(root)


def absolute_orbit(acq: Acquisition) -> int:
    """Plausible absolute orbit number of a Sentinel-2 acquisition (14.3 orbits per day)."""
    ref = 37185 if str(acq.props["platform"]).endswith("B") else 46500
    return ref + round((acq.when.date() - date(2024, 4, 19)).days * 143 / 10)


def _datatake(acq: Acquisition) -> str:
    sat = str(acq.props["platform"])[-1]
    t = acq.when.strftime("%Y%m%dT%H%M%S")
    return f"GS2{sat}_{t}_{absolute_orbit(acq):06d}_N{acq.props['baseline']}"


def _product_uri(acq: Acquisition) -> str:
    parts = acq.item_id.split("_")
    pb = "N" + str(acq.props["baseline"]).replace(".", "")
    return "_".join([*parts[:3], pb, *parts[3:]]) + ".SAFE"


def write_sentinel2(acq: Acquisition, world: ProjectedWorld, root: Path) -> SceneResult:
    """Render and write one Sentinel-2 L2A scene under ``root/data/sentinel-2-l2a/<id>/``.

    Args:
        acq: The acquisition (grid at 10 m on the tile lattice).
        world: The world projected to the scene's CRS.
        root: Archive root.

    Returns:
        The written scene (assets, 10 m truth masks, SCL statistics in percent).
    """
    out = root / "data" / acq.collection / acq.item_id
    labels = render_labels(world, acq.grid, acq.sky, acq.shift_m)
    counts = {10: label_counts(labels, 2)}
    del labels
    counts[20] = coarsen_counts(counts[10], 2)
    counts[60] = coarsen_counts(counts[20], 3)
    values = s2_values()
    cloud = cloud_values(np.array([b.center_um for b in S2_BANDS]))
    cloud_of = {b.key: cloud[i : i + 1] for i, b in enumerate(S2_BANDS)}
    offset = baseline_offset(str(acq.props["baseline"]))
    stamp = f"T{acq.props['tile']}_{acq.when.strftime('%Y%m%dT%H%M%S')}"
    assets: dict[str, dict[str, object]] = {}
    masks = {res: masks_from_counts(c) for res, c in counts.items()}

    def put(
        key: str,
        name: str,
        data: np.ndarray,
        res: int,
        nodata: int | None,
        resampling: Literal["nearest", "average"] = "nearest",
    ) -> None:
        path = out / name
        grid = acq.grid.with_res(float(res))
        write_cog(
            path,
            data,
            transform=grid.transform,
            epsg=grid.epsg,
            nodata=nodata,
            resampling=resampling,
        )
        assets[key] = {"href": rel(path, root), "grid": grid}

    refl10: dict[str, np.ndarray] = {}
    for band in S2_BANDS:
        table = label_table(class_values(values, [band.key]), cloud_of[band.key])
        refl = mix(counts[band.gsd], table)[0]
        dn = np.clip(np.rint(refl * 10000.0) + offset, 1, 65535).astype(np.uint16)
        dn[~masks[band.gsd].valid] = 0
        if band.key in ("B02", "B03", "B04"):
            refl10[band.key] = refl
        put(band.key, f"{stamp}_{band.key}_{band.gsd}m.tif", dn, band.gsd, 0, "average")

    m20 = masks[20]
    scl = _SCL_OF_CLASS[m20.majority]
    scl[m20.shadow] = 3
    scl[m20.cloud] = 8
    scl[m20.thick] = 9
    scl[~m20.valid] = 0
    put("SCL", f"{stamp}_SCL_20m.tif", scl, 20, 0)
    valid10 = masks[10].valid
    for key, const in (("AOT", S2_AOT), ("WVP", S2_WVP)):
        arr = np.where(valid10, const, 0).astype(np.uint16)
        put(key, f"{stamp}_{key}_10m.tif", arr, 10, 0, "average")
    rgb = np.stack([refl10["B04"], refl10["B03"], refl10["B02"]])
    tci = np.clip(np.rint(rgb * 10000.0 * 255.0 / 2000.0), 1, 255).astype(np.uint8)
    tci[:, ~valid10] = 0
    put("visual", f"{stamp}_TCI_10m.tif", tci, 10, 0, "average")

    n_valid = max(1, int(m20.valid.sum()))
    pct = {code: 100.0 * float((scl == code).sum()) / n_valid for code in range(12)}
    stats = {
        "cloud": 100.0 * masks[10].fraction(masks[10].cloud),
        "shadow": 100.0 * masks[10].fraction(masks[10].shadow),
        "nodata": 100.0 * float((~m20.valid).sum()) / m20.valid.size,
        **{f"scl_{k}": v for k, v in pct.items()},
    }
    for name, data in (
        ("MTD_MSIL2A.xml", _product_xml(acq, stats["cloud"])),
        ("MTD_TL.xml", _granule_xml(acq)),
    ):
        (out / name).write_bytes(data)
    assets["product-metadata"] = {"href": rel(out / "MTD_MSIL2A.xml", root)}
    assets["granule-metadata"] = {"href": rel(out / "MTD_TL.xml", root)}
    extra = {"product_uri": _product_uri(acq), "datatake": _datatake(acq)}
    return SceneResult(assets, acq.grid, masks[10], stats, extra)
