"""Land-cover classes of the synthetic world and their per-sensor signatures.

Every class has a CORINE level-3 code, the OSM tags the world writes for it, and one smooth
reflectance spectrum (a PCHIP curve through a few anchor wavelengths). Sentinel-2, Landsat and
EnMAP band values are all read off that same curve at the band centre, so the sensors agree with
each other. Sentinel-1 backscatter (linear gamma0) and Landsat surface temperature are given per
class. Band values are rounded to 1e-4 reflectance (S1: 1e-5 linear, ST: 0.1 K); the rounded
numbers are the truth written to ``truth/classes.json`` and used to render scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = [
    "ANCHOR_UM",
    "CLASSES",
    "CLOUD_LST_K",
    "CLOUD_SPECTRUM",
    "LANDSAT_BANDS",
    "S2_BANDS",
    "SHADOW_FACTOR",
    "BandSpec",
    "LandClass",
    "class_by_key",
    "cloud_values",
    "reflectance_at",
]

#: Wavelengths (micrometres) at which class spectra are specified.
ANCHOR_UM: tuple[float, ...] = (
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
)

#: Factor applied to surface reflectance (and backscatter untouched) inside cloud shadows.
SHADOW_FACTOR = 0.35

#: Reflectance of a thick cloud at :data:`ANCHOR_UM`; cloud edges are 0.6 times this.
CLOUD_SPECTRUM: tuple[float, ...] = (
    0.62,
    0.64,
    0.65,
    0.65,
    0.65,
    0.65,
    0.64,
    0.63,
    0.60,
    0.45,
    0.30,
    0.25,
)

#: Brightness temperature (K) Landsat ST reports for cloud tops.
CLOUD_LST_K = 265.0


@dataclass(frozen=True)
class LandClass:
    """One land-cover class of the world.

    Attributes:
        id: Class id in truth rasters (1..255; 0 is "no class").
        key: Short identifier (``arable``).
        name: Human-readable name (CORINE label where one exists).
        corine: Nominal CORINE level-3 code as 3-digit text (``"211"``).
        osm_tags: OSM tags the world writes for features of this class.
        scl: Sentinel-2 SCL class of a clear pixel of this class (4 veg, 5 not veg, 6 water).
        water: Whether Landsat QA_PIXEL / EnMAP QL_QUALITY_CLASSES call it water.
        spectrum: Reflectance at :data:`ANCHOR_UM`.
        vv: Sentinel-1 VV gamma0 (linear).
        vh: Sentinel-1 VH gamma0 (linear).
        lst_k: Landsat surface temperature (K).
    """

    id: int
    key: str
    name: str
    corine: str
    osm_tags: tuple[tuple[str, str], ...]
    scl: int
    water: bool
    spectrum: tuple[float, ...]
    vv: float
    vh: float
    lst_k: float


def _c(*values: float) -> tuple[float, ...]:
    return tuple(values)


#: The classes, in id order. Burn order in rasters is documented in :mod:`pipelines.archive.world`.
CLASSES: tuple[LandClass, ...] = (
    LandClass(
        1,
        "urban",
        "Discontinuous urban fabric",
        "112",
        (("landuse", "residential"),),
        5,
        False,
        _c(0.08, 0.10, 0.12, 0.14, 0.15, 0.16, 0.17, 0.19, 0.20, 0.24, 0.21, 0.19),
        0.25,
        0.05,
        303.0,
    ),
    LandClass(
        2,
        "industrial",
        "Industrial or commercial units",
        "121",
        (("landuse", "industrial"),),
        5,
        False,
        _c(0.12, 0.14, 0.16, 0.18, 0.19, 0.20, 0.21, 0.22, 0.23, 0.28, 0.25, 0.22),
        0.30,
        0.06,
        306.0,
    ),
    LandClass(
        3,
        "road",
        "Road and rail networks and associated land",
        "122",
        (("highway", "*"),),
        5,
        False,
        _c(0.06, 0.07, 0.08, 0.09, 0.095, 0.10, 0.105, 0.11, 0.115, 0.13, 0.12, 0.11),
        0.02,
        0.004,
        308.0,
    ),
    LandClass(
        4,
        "building",
        "Buildings (continuous urban fabric)",
        "111",
        (("building", "*"),),
        5,
        False,
        _c(0.06, 0.07, 0.09, 0.20, 0.24, 0.26, 0.27, 0.29, 0.30, 0.35, 0.30, 0.27),
        0.60,
        0.10,
        307.0,
    ),
    LandClass(
        5,
        "arable",
        "Non-irrigated arable land",
        "211",
        (("landuse", "farmland"),),
        5,
        False,
        _c(0.05, 0.07, 0.10, 0.13, 0.15, 0.17, 0.19, 0.22, 0.23, 0.30, 0.24, 0.22),
        0.08,
        0.015,
        301.0,
    ),
    LandClass(
        6,
        "pasture",
        "Pastures",
        "231",
        (("landuse", "meadow"),),
        4,
        False,
        _c(0.03, 0.04, 0.09, 0.05, 0.12, 0.28, 0.36, 0.40, 0.40, 0.25, 0.12, 0.10),
        0.06,
        0.012,
        298.0,
    ),
    LandClass(
        7,
        "broadleaf",
        "Broad-leaved forest",
        "311",
        (("landuse", "forest"), ("leaf_type", "broadleaved")),
        4,
        False,
        _c(0.02, 0.03, 0.07, 0.03, 0.10, 0.30, 0.40, 0.45, 0.44, 0.22, 0.10, 0.08),
        0.12,
        0.030,
        295.0,
    ),
    LandClass(
        8,
        "conifer",
        "Coniferous forest",
        "312",
        (("natural", "wood"), ("leaf_type", "needleleaved")),
        4,
        False,
        _c(0.015, 0.02, 0.045, 0.02, 0.06, 0.17, 0.22, 0.25, 0.24, 0.13, 0.06, 0.05),
        0.10,
        0.025,
        294.0,
    ),
    LandClass(
        9,
        "bare_rock",
        "Bare rocks",
        "332",
        (("natural", "bare_rock"),),
        5,
        False,
        _c(0.15, 0.18, 0.21, 0.24, 0.25, 0.26, 0.27, 0.28, 0.28, 0.32, 0.28, 0.26),
        0.15,
        0.020,
        304.0,
    ),
    LandClass(
        10,
        "wetland",
        "Inland marshes",
        "411",
        (("natural", "wetland"), ("wetland", "marsh")),
        4,
        False,
        _c(0.025, 0.035, 0.06, 0.04, 0.08, 0.15, 0.18, 0.20, 0.18, 0.10, 0.05, 0.04),
        0.04,
        0.008,
        293.0,
    ),
    LandClass(
        11,
        "river",
        "Water courses",
        "511",
        (("waterway", "river"),),
        6,
        True,
        _c(0.05, 0.06, 0.07, 0.04, 0.03, 0.02, 0.015, 0.01, 0.008, 0.005, 0.004, 0.003),
        0.004,
        0.0008,
        291.0,
    ),
    LandClass(
        12,
        "lake",
        "Water bodies",
        "512",
        (("natural", "water"), ("water", "lake")),
        6,
        True,
        _c(0.04, 0.05, 0.06, 0.03, 0.02, 0.012, 0.01, 0.008, 0.006, 0.004, 0.003, 0.002),
        0.003,
        0.0005,
        290.0,
    ),
)


def class_by_key(key: str) -> LandClass:
    """Return the class with this key (``KeyError`` if unknown)."""
    for cls in CLASSES:
        if cls.key == key:
            return cls
    raise KeyError(key)


@dataclass(frozen=True)
class BandSpec:
    """A multispectral band: asset key, band name, centre and width (micrometres), GSD (m)."""

    key: str
    name: str
    common_name: str | None
    description: str
    center_um: float
    fwhm_um: float
    gsd: int


#: Sentinel-2 L2A reflectance bands as Planetary Computer lists them (asset key = band name).
S2_BANDS: tuple[BandSpec, ...] = (
    BandSpec("B01", "B01", "coastal", "Band 1 - Coastal aerosol", 0.443, 0.027, 60),
    BandSpec("B02", "B02", "blue", "Band 2 - Blue", 0.49, 0.098, 10),
    BandSpec("B03", "B03", "green", "Band 3 - Green", 0.56, 0.045, 10),
    BandSpec("B04", "B04", "red", "Band 4 - Red", 0.665, 0.038, 10),
    BandSpec("B05", "B05", "rededge", "Band 5 - Vegetation red edge 1", 0.704, 0.019, 20),
    BandSpec("B06", "B06", "rededge", "Band 6 - Vegetation red edge 2", 0.74, 0.018, 20),
    BandSpec("B07", "B07", "rededge", "Band 7 - Vegetation red edge 3", 0.783, 0.028, 20),
    BandSpec("B08", "B08", "nir", "Band 8 - NIR", 0.842, 0.145, 10),
    BandSpec("B8A", "B8A", "rededge", "Band 8A - Vegetation red edge 4", 0.865, 0.033, 20),
    BandSpec("B09", "B09", None, "Band 9 - Water vapor", 0.945, 0.026, 60),
    BandSpec("B11", "B11", "swir16", "Band 11 - SWIR (1.6)", 1.61, 0.143, 20),
    BandSpec("B12", "B12", "swir22", "Band 12 - SWIR (2.2)", 2.19, 0.242, 20),
)

#: Landsat 8/9 OLI surface-reflectance bands with Planetary Computer asset keys.
LANDSAT_BANDS: tuple[BandSpec, ...] = (
    BandSpec("coastal", "OLI_B1", "coastal", "Coastal/Aerosol", 0.44, 0.02, 30),
    BandSpec("blue", "OLI_B2", "blue", "Visible blue", 0.48, 0.06, 30),
    BandSpec("green", "OLI_B3", "green", "Visible green", 0.56, 0.06, 30),
    BandSpec("red", "OLI_B4", "red", "Visible red", 0.65, 0.04, 30),
    BandSpec("nir08", "OLI_B5", "nir08", "Near infrared", 0.87, 0.03, 30),
    BandSpec("swir16", "OLI_B6", "swir16", "Short-wave infrared", 1.61, 0.09, 30),
    BandSpec("swir22", "OLI_B7", "swir22", "Short-wave infrared", 2.2, 0.19, 30),
)


def reflectance_at(spectrum: tuple[float, ...], wavelengths_um: np.ndarray) -> np.ndarray:
    """Evaluate a spectrum given at :data:`ANCHOR_UM` at other wavelengths.

    Args:
        spectrum: Reflectance at the anchor wavelengths.
        wavelengths_um: Wavelengths in micrometres, any shape.

    Returns:
        Reflectance, same shape as ``wavelengths_um``, float64, rounded to 1e-4 (no nodata).
    """
    curve = PchipInterpolator(np.asarray(ANCHOR_UM), np.asarray(spectrum), extrapolate=True)
    wl = np.clip(np.asarray(wavelengths_um, dtype=np.float64), ANCHOR_UM[0], ANCHOR_UM[-1])
    return np.asarray(np.round(np.clip(curve(wl), 0.0005, 1.0), 4), dtype=np.float64)


def cloud_values(wavelengths_um: np.ndarray) -> np.ndarray:
    """Reflectance of a thick cloud at the given wavelengths (float64, rounded to 1e-4)."""
    return reflectance_at(CLOUD_SPECTRUM, wavelengths_um)


def s2_values() -> dict[str, np.ndarray]:
    """Sentinel-2 reflectance per band key, each dims ``(class,)`` float64 in class-id order."""
    return {
        b.key: np.array([reflectance_at(c.spectrum, np.array(b.center_um)) for c in CLASSES])
        for b in S2_BANDS
    }


def landsat_values() -> dict[str, np.ndarray]:
    """Landsat SR per band key plus ``lwir11`` (kelvin), each dims ``(class,)`` float64."""
    out = {
        b.key: np.array([reflectance_at(c.spectrum, np.array(b.center_um)) for c in CLASSES])
        for b in LANDSAT_BANDS
    }
    out["lwir11"] = np.array([c.lst_k for c in CLASSES])
    return out


def s1_values() -> dict[str, np.ndarray]:
    """Sentinel-1 RTC gamma0 (linear) for ``vv`` and ``vh``, each dims ``(class,)`` float64."""
    return {"vv": np.array([c.vv for c in CLASSES]), "vh": np.array([c.vh for c in CLASSES])}


def enmap_values(wavelengths_nm: np.ndarray) -> np.ndarray:
    """EnMAP reflectance, dims ``(class, band)`` float64, at the given band centres (nm)."""
    wl = np.asarray(wavelengths_nm, dtype=np.float64) / 1000.0
    return np.stack([reflectance_at(c.spectrum, wl) for c in CLASSES])
