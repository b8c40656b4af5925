"""EnMAP L2A product deliveries as DLR ships them: write, read, and describe as a STAC Item.

A delivery is a folder (or a ``<product>.ZIP`` holding ``<product>/``) of files named
``<product>-<LAYER>.<EXT>``, where ``<product>`` matches the DLR product-name pattern, e.g.
``ENMAP01-____L2A-DT0000140097_20250708T104407Z_001_V010502_20250709T035921Z``:

* ``SPECTRAL_IMAGE.TIF``: int16 surface reflectance x 10000 (``refl = DN * gain + offset``),
  224 bands ordered by wavelength, nodata -32768;
* ``METADATA.XML``: the ``level_X`` document (band characterisation, coverage, statistics);
* ``QL_QUALITY_{CLASSES,CLOUD,CLOUDSHADOW,HAZE,SNOW,CIRRUS,TESTFLAGS}.TIF``, ``QL_PIXELMASK.TIF``:
  uint8 quality layers on the same grid;
* ``QL_VNIR.TIF``, ``QL_SWIR.TIF``: 3-band uint8 quicklooks.

The XML is a faithful subset of the DLR L2A METADATA.XML: the element paths that EnMAP-Box, ESA
SNAP and EnPT read (``specific/bandCharacterisation/bandID[@number]/wavelengthCenterOfBand``,
``.../FWHMOfBand``, ``GainOfBand``, ``OffsetOfBand``, ``{vnir,swir}ProductQuality/
expectedChannelsList``, ``product/bandStatistics``, ``product/image/merge``, ``base/
temporalCoverage``, ``base/spatialCoverage/boundingPolygon``, ``product/ortho/projection``) are
those of the real product. Cover percentages and the map info are written where no public
example shows DLR's own element names (``specific/cloudCover``, ``product/ortho/mapInfo``).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.errors import RasterioError

from pipelines.archive.cog import write_cog
from schemas.errors import ConflictError, InvalidInputError

__all__ = [
    "ENMAP_COLLECTION",
    "ENMAP_EXTENSIONS",
    "ENMAP_NODATA",
    "ENMAP_SWIR_BANDS",
    "ENMAP_VNIR_BANDS",
    "EXTRA_DEFAULTS",
    "LAYER_ASSET_KEYS",
    "N_BANDS",
    "PRODUCT_NAME_RE",
    "QUALITY_LAYERS",
    "SPECTRAL_EARTH_DROP",
    "EnmapDelivery",
    "enmap_band_table",
    "enmap_item",
    "find_products",
    "read_enmap_delivery",
    "spectral_earth_keep",
    "write_enmap_delivery",
    "zip_delivery",
]

log = logging.getLogger(__name__)

#: DLR's STAC collection id for EnMAP L2A.
ENMAP_COLLECTION = "ENMAP_HSI_L2A"
#: Number of spectral bands in an L2A product.
N_BANDS = 224
#: int16 no-data value of the spectral image.
ENMAP_NODATA = -32768
#: Product name (SENSORS.md §5.1), without the ``-<LAYER>.<EXT>`` suffix.
PRODUCT_NAME_RE = re.compile(
    r"^ENMAP(\d{2})-(____L[12][ABC])-DT(\d{10})_(\d{8}T\d{6})Z_(\d{3})_V(\d{6})_(\d{8}T\d{6})Z$"
)
_FILE_RE = re.compile(
    r"^(?P<product>ENMAP\d{2}-____L[12][ABC]-DT\d{10}_\d{8}T\d{6}Z_\d{3}_V\d{6}_\d{8}T\d{6}Z)"
    r"-(?P<layer>SPECTRAL_IMAGE|METADATA|QL_PIXELMASK|QL_QUALITY_[A-Z]+|QL_VNIR|QL_SWIR)"
    r"(?:_COG)?\.(?:TIFF?|XML)$",
    re.IGNORECASE,
)
#: Quality layers, in the order of the file set (key of ``quality`` in the writer).
QUALITY_LAYERS = ("CLASSES", "CLOUD", "CLOUDSHADOW", "HAZE", "SNOW", "CIRRUS", "TESTFLAGS")
#: Delivery layer (file suffix) -> DLR STAC asset key.
LAYER_ASSET_KEYS: dict[str, str] = {
    "SPECTRAL_IMAGE": "image",
    "METADATA": "metadata",
    "QL_VNIR": "vnir",
    "QL_SWIR": "swir",
    "QL_QUALITY_CLASSES": "quality_classes",
    "QL_QUALITY_CLOUD": "quality_cloud",
    "QL_QUALITY_CLOUDSHADOW": "quality_cloud_shadow",
    "QL_QUALITY_HAZE": "quality_haze",
    "QL_QUALITY_SNOW": "quality_snow",
    "QL_QUALITY_CIRRUS": "quality_cirrus",
    "QL_QUALITY_TESTFLAGS": "quality_testflags",
    "QL_PIXELMASK": "defective_pixel_mask",
}
_REQUIRED_LAYERS = ("SPECTRAL_IMAGE", "METADATA")
_VSIZIP_RE = re.compile(r"^/vsizip/(?P<zip>.+?\.zip)/(?P<member>.+)$", re.IGNORECASE)
_EXT = {"METADATA": "XML"}

#: 1-based band numbers dropped by SpectralEarth/HySpecNet-11k (water vapour): 224 -> 202 bands.
SPECTRAL_EARTH_DROP: frozenset[int] = frozenset([*range(127, 142), *range(161, 168)])

# Band centres and FWHM (nm) of DLR L2A processor V01.05.02, in file order (sorted by wavelength,
# VNIR and SWIR channels interleaved in the 900-1000 nm detector overlap), as published in the
# ``eo:bands`` of DLR's ENMAP_HSI_L2A STAC items. Real scenes differ slightly: read METADATA.XML.
# fmt: off
_DLR_CENTRES_NM: tuple[float, ...] = (
    418.416, 424.043, 429.457, 434.686, 439.757, 444.699, 449.539, 454.306, 459.031, 463.73,
    468.411, 473.08, 477.744, 482.411, 487.087, 491.78, 496.497, 501.243, 506.02, 510.828, 515.672,
    520.55, 525.467, 530.424, 535.422, 540.463, 545.551, 550.687, 555.873, 561.112, 566.405,
    571.756, 577.166, 582.636, 588.171, 593.773, 599.446, 605.193, 611.017, 616.923, 622.92,
    628.987, 635.112, 641.294, 647.537, 653.841, 660.207, 666.637, 673.131, 679.691, 686.319,
    693.014, 699.78, 706.617, 713.524, 720.501, 727.545, 734.654, 741.826, 749.06, 756.353,
    763.703, 771.108, 778.567, 786.078, 793.639, 801.248, 808.905, 816.608, 824.355, 832.145,
    839.976, 847.847, 855.757, 863.703, 871.683, 879.692, 887.729, 895.789, 901.962, 903.87,
    911.572, 911.968, 920.08, 921.32, 928.204, 931.204, 936.335, 941.218, 944.47, 951.361, 952.608,
    960.748, 961.629, 968.891, 972.017, 977.037, 982.524, 985.186, 993.145, 993.338, 1003.88,
    1014.72, 1025.66, 1036.7, 1047.84, 1059.07, 1070.39, 1081.79, 1093.26, 1104.81, 1116.43,
    1128.11, 1139.84, 1151.62, 1163.44, 1175.31, 1187.2, 1199.11, 1211.05, 1223.0, 1234.97,
    1246.95, 1258.93, 1270.92, 1282.92, 1294.91, 1306.9, 1318.88, 1330.86, 1342.82, 1354.76,
    1366.69, 1378.6, 1390.48, 1449.43, 1461.11, 1472.74, 1484.34, 1495.89, 1507.4, 1518.87,
    1530.29, 1541.68, 1553.01, 1564.31, 1575.55, 1586.76, 1597.91, 1609.02, 1620.09, 1631.11,
    1642.08, 1653.0, 1663.87, 1674.7, 1685.47, 1696.2, 1706.87, 1717.5, 1728.08, 1738.6, 1749.08,
    1759.51, 1769.89, 1780.22, 1967.66, 1977.08, 1986.45, 1995.79, 2005.08, 2014.33, 2023.54,
    2032.71, 2041.83, 2050.92, 2059.96, 2068.97, 2077.93, 2086.86, 2095.74, 2104.59, 2113.4,
    2122.17, 2130.9, 2139.6, 2148.26, 2156.88, 2165.47, 2174.02, 2182.53, 2191.01, 2199.46,
    2207.86, 2216.24, 2224.58, 2232.89, 2241.16, 2249.4, 2257.61, 2265.79, 2273.93, 2282.04,
    2290.12, 2298.17, 2306.19, 2314.18, 2322.13, 2330.05, 2337.94, 2345.81, 2353.64, 2361.44,
    2369.21, 2376.95, 2384.66, 2392.34, 2400.0, 2407.62, 2415.21, 2422.78, 2430.32, 2437.83,
    2445.3,
)
_DLR_FWHM_NM: tuple[float, ...] = (
    6.99561, 6.6675, 6.42408, 6.25124, 6.13485, 6.06076, 6.01486, 5.98302, 5.95232, 5.9199,
    5.88775, 5.8579, 5.83239, 5.81325, 5.8025, 5.8022, 5.81407, 5.83751, 5.87076, 5.91208, 5.95969,
    6.01183, 6.06674, 6.12279, 6.1794, 6.23648, 6.29397, 6.35179, 6.40987, 6.46815, 6.52654,
    6.58497, 6.64338, 6.70177, 6.76072, 6.82113, 6.88388, 6.94987, 7.01999, 7.09511, 7.17533,
    7.25495, 7.33145, 7.40537, 7.47729, 7.54777, 7.61738, 7.68669, 7.75628, 7.8267, 7.89853,
    7.97235, 8.04871, 8.1281, 8.2102, 8.29433, 8.3798, 8.46592, 8.552, 8.63735, 8.72128, 8.80311,
    8.88214, 8.95779, 9.03034, 9.1005, 9.16897, 9.23646, 9.30368, 9.37133, 9.44012, 9.51076,
    9.58396, 9.66032, 9.73971, 9.82161, 9.90551, 9.99089, 10.0772, 9.17725, 10.164, 9.31901,
    10.2508, 10.3369, 9.45441, 10.422, 9.58399, 10.5054, 9.7083, 10.5862, 9.82789, 10.6589, 10.716,
    9.94331, 10.75, 10.0551, 10.7533, 10.1638, 10.7183, 10.27, 10.6375, 10.3742, 10.4768, 10.5775,
    10.6753, 10.769, 10.8578, 10.9405, 11.0162, 11.0839, 11.1437, 11.196, 11.2414, 11.2806,
    11.3139, 11.3421, 11.3656, 11.385, 11.4009, 11.4135, 11.4229, 11.4292, 11.4325, 11.4329,
    11.4305, 11.4253, 11.4176, 11.4073, 11.3946, 11.3796, 11.3624, 11.343, 11.3215, 11.2981,
    11.2728, 11.122, 11.0876, 11.052, 11.0151, 10.9772, 10.9383, 10.8984, 10.8577, 10.8161,
    10.7738, 10.7308, 10.6872, 10.643, 10.5985, 10.5535, 10.5082, 10.4626, 10.4169, 10.371,
    10.3251, 10.2793, 10.2335, 10.1879, 10.1425, 10.0974, 10.0525, 10.0079, 9.96359, 9.91949,
    9.87564, 9.83203, 9.04694, 9.00775, 8.96875, 8.92995, 8.89134, 8.85292, 8.81469, 8.77665,
    8.73878, 8.70111, 8.66361, 8.62632, 8.58923, 8.55236, 8.51572, 8.47932, 8.44317, 8.40728,
    8.37166, 8.33632, 8.30128, 8.26653, 8.2321, 8.198, 8.16422, 8.13079, 8.09771, 8.065, 8.03267,
    8.00072, 7.96916, 7.93802, 7.90728, 7.87694, 7.84695, 7.81727, 7.78785, 7.75866, 7.72966,
    7.70079, 7.67203, 7.64333, 7.61464, 7.58593, 7.55715, 7.52827, 7.49924, 7.47001, 7.44055,
    7.41082, 7.38077, 7.35037, 7.31957, 7.28832, 7.25659, 7.22434, 7.19152, 7.1581,
)
# fmt: on

# Detector of each channel. Below 900 nm only VNIR exists; in the overlap the two detectors
# alternate and are told apart by their FWHM sequences (VNIR ~9.2-10.3 nm rising by ~0.12 nm per
# channel, SWIR ~10.2-10.8 nm). [P]: DLR's own lists are in each product's METADATA.XML.
_VNIR_OVERLAP = (80, 82, 85, 87, 89, 91, 94, 96, 98, 100)
#: 1-based band numbers recorded by the VNIR detector.
ENMAP_VNIR_BANDS: tuple[int, ...] = (*range(1, 80), *_VNIR_OVERLAP)
#: 1-based band numbers recorded by the SWIR detector.
ENMAP_SWIR_BANDS: tuple[int, ...] = tuple(
    b for b in range(80, N_BANDS + 1) if b not in set(_VNIR_OVERLAP)
)

#: Keys accepted in the writer's ``extra`` with their defaults (angles in degrees).
EXTRA_DEFAULTS: dict[str, float | int | str] = {
    "sun_azimuth": 160.0,
    "sun_elevation": 50.0,
    "across_off_nadir": 0.0,
    "along_off_nadir": 0.0,
    "scene_azimuth": 14.0,
    "absolute_orbit": 1,
    "relative_orbit": 1,
    "orbit_direction": "descending",
    "processing_facility": "NZ",
}
_ANGLES = {
    "sun_azimuth": "sunAzimuthAngle",
    "sun_elevation": "sunElevationAngle",
    "across_off_nadir": "acrossOffNadirAngle",
    "along_off_nadir": "alongOffNadirAngle",
    "scene_azimuth": "sceneAzimuthAngle",
}
_COVERS = {
    "cloud_shadow": "cloudShadowCover",
    "haze": "hazeCover",
    "snow": "snowCover",
    "cirrus": "cirrusCover",
    "water": "waterCover",
}
_BAD_BAND_MEAN = -1_000_000.0


def enmap_band_table() -> tuple[np.ndarray, np.ndarray]:
    """Return the L2A band centres and widths of DLR processor V01.05.02.

    Returns:
        ``(wavelengths_nm, fwhm_nm)``: two arrays, dims ``(band,)``, float64, 224 values in file
        order (ascending wavelength, 418.416-2445.3 nm); no nodata.
    """
    return np.array(_DLR_CENTRES_NM, dtype=np.float64), np.array(_DLR_FWHM_NM, dtype=np.float64)


def spectral_earth_keep() -> tuple[int, ...]:
    """1-based numbers of the 202 bands SpectralEarth keeps (all but the dropped ones)."""
    return tuple(b for b in range(1, N_BANDS + 1) if b not in SPECTRAL_EARTH_DROP)


@dataclass(frozen=True)
class EnmapDelivery:
    """One EnMAP L2A delivery as read from disk or from a zip.

    Band-indexed tuples have one value per band of the spectral image, in file order.
    """

    product_name: str
    source: str
    files: dict[str, str]
    epsg: int
    transform: Affine
    shape: tuple[int, int]
    start: datetime
    end: datetime
    cloud_cover: float
    wavelengths_nm: tuple[float, ...]
    fwhm_nm: tuple[float, ...]
    gains: tuple[float, ...]
    offsets: tuple[float, ...]
    bad_bands: tuple[int, ...]
    vnir_bands: tuple[int, ...]
    swir_bands: tuple[int, ...]
    footprint_lonlat: tuple[tuple[float, float], ...]
    cog_layers: frozenset[str] = frozenset()
    properties: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def n_bands(self) -> int:
        """Number of spectral bands."""
        return len(self.wavelengths_nm)

    @property
    def processing_version(self) -> str:
        """Processor version from the product name, e.g. ``"01.05.02"``."""
        digits = _name_parts(self.product_name)["version"]
        return f"{digits[0:2]}.{digits[2:4]}.{digits[4:6]}"

    def file_name(self, layer: str) -> str:
        """Base name of the file holding ``layer`` (e.g. ``"SPECTRAL_IMAGE"``)."""
        return PurePosixPath(self.files[layer]).name


# --------------------------------------------------------------------------------------------
# writing


def _fmt(value: float) -> str:
    return format(float(value), ".10g")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _name_parts(product_name: str) -> dict[str, str]:
    m = PRODUCT_NAME_RE.match(product_name)
    if m is None:
        raise InvalidInputError(
            f"{product_name!r} is not an EnMAP product name",
            fix="use the DLR pattern, e.g. "
            "ENMAP01-____L2A-DT0000140097_20250708T104407Z_001_V010502_20250709T035921Z",
        )
    return dict(
        zip(
            ("satellite", "level", "datatake", "start", "tile", "version", "processed"),
            m.groups(),
            strict=True,
        )
    )


def _projection_name(epsg: int) -> str:
    if 32601 <= epsg <= 32660:
        return f"UTM_Zone{epsg - 32600}_North"
    if 32701 <= epsg <= 32760:
        return f"UTM_Zone{epsg - 32700}_South"
    return str(CRS.from_epsg(epsg).name)


def _corners_lonlat(
    transform: Affine, shape: tuple[int, int], epsg: int
) -> list[tuple[str, float, float]]:
    """Image corners as ``(frame, lon, lat)``, counter-clockwise from upper-left, closed."""
    h, w = shape
    to_ll = Transformer.from_crs(CRS.from_epsg(epsg), CRS.from_epsg(4326), always_xy=True)
    frames = [
        ("upper_left", 0, 0),
        ("lower_left", 0, h),
        ("lower_right", w, h),
        ("upper_right", w, 0),
        ("upper_left", 0, 0),
    ]
    out = []
    for frame, col, row in frames:
        x = transform.c + transform.a * col + transform.b * row
        y = transform.f + transform.d * col + transform.e * row
        lon, lat = to_ll.transform(x, y)
        out.append((frame, round(float(lon), 7), round(float(lat), 7)))
    return out


def _band_stats(dn: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Per band ``(min, max, mean, std)`` of valid DN; DLR's fill values for an empty band."""
    out = []
    for band in dn:
        valid = band[band != ENMAP_NODATA]
        if valid.size == 0:
            out.append((float(ENMAP_NODATA), float(ENMAP_NODATA), _BAD_BAND_MEAN, 0.0))
        else:
            v = valid.astype(np.float64)
            out.append(
                (
                    float(v.min()),
                    float(v.max()),
                    round(float(v.mean()), 4),
                    round(float(v.std()), 4),
                )
            )
    return out


def _quicklook(
    reflectance: np.ndarray, wavelengths: np.ndarray, rgb_nm: tuple[float, ...]
) -> np.ndarray:
    """3-band uint8 quicklook, dims ``(band, y, x)``; reflectance 0-0.4 -> 1-255, nodata 0."""
    idx = [int(np.argmin(np.abs(wavelengths - nm))) for nm in rgb_nm]
    rgb = reflectance[idx]
    scaled = np.clip(np.nan_to_num(rgb, nan=0.0) / 0.4 * 254.0, 0.0, 254.0) + 1.0
    return np.where(np.isnan(rgb), 0, np.round(scaled)).astype(np.uint8)


def _cover(mask: np.ndarray, scene: np.ndarray) -> float:
    n = int(scene.sum())
    return round(100.0 * float((mask & scene).sum()) / n, 2) if n else 0.0


def write_enmap_delivery(
    out_dir: Path,
    *,
    product_name: str,
    reflectance: np.ndarray,
    quality: Mapping[str, np.ndarray],
    pixelmask: np.ndarray | None,
    transform: Affine,
    epsg: int,
    start: datetime,
    end: datetime,
    cloud_cover: float,
    wavelengths_nm: np.ndarray,
    fwhm_nm: np.ndarray,
    gains: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    extra: Mapping[str, float | int | str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the file set of one DLR EnMAP L2A delivery as COGs plus METADATA.XML.

    Files are written into a hidden staging folder and renamed into place at the end, so an
    interrupted write leaves no partial delivery.

    Args:
        out_dir: Parent folder; the delivery goes to ``out_dir/<product_name>/``.
        product_name: DLR product name (see :data:`PRODUCT_NAME_RE`); level must be L2A.
        reflectance: Surface reflectance, dims ``(band, y, x)``, float32, NaN = nodata. A band
            that is NaN everywhere is written as a DLR "no-data band" (mean -1e6, std 0).
        quality: uint8 ``(y, x)`` layers keyed by :data:`QUALITY_LAYERS`; CLASSES uses 0
            background, 1 land, 2 water, 3 outside the scene (its nodata).
        pixelmask: Defective-pixel mask, uint8 ``(y, x)`` or ``(band, y, x)``; ``None`` writes
            one band of zeros.
        transform: Affine transform of the upper-left pixel corner.
        epsg: EPSG code of the grid (UTM for real products).
        start: Sensing start (timezone-aware).
        end: Sensing stop (timezone-aware).
        cloud_cover: Scene cloud cover in percent (0-100).
        wavelengths_nm: Band centres, dims ``(band,)``, ascending.
        fwhm_nm: Band FWHM, dims ``(band,)``.
        gains: Per-band gain, dims ``(band,)``; default 1e-4 (``refl = DN * gain + offset``).
        offsets: Per-band offset, dims ``(band,)``; default 0.
        extra: Optional scene values, keys of :data:`EXTRA_DEFAULTS` (angles, orbit, facility).
        overwrite: Replace an existing delivery folder instead of raising.

    Returns:
        The delivery folder ``out_dir/<product_name>``.

    Raises:
        InvalidInputError: If a name, shape, dtype or value is inconsistent.
        ConflictError: If the delivery folder exists and ``overwrite`` is false.
    """
    parts = _name_parts(product_name)
    where = f"EnMAP delivery {product_name}"
    if parts["level"] != "____L2A":
        raise InvalidInputError("only L2A products can be written", where=where)
    refl = np.asarray(reflectance, dtype=np.float32)
    wl = np.asarray(wavelengths_nm, dtype=np.float64)
    fw = np.asarray(fwhm_nm, dtype=np.float64)
    if refl.ndim != 3 or wl.shape != (refl.shape[0],) or fw.shape != wl.shape:
        raise InvalidInputError(
            f"reflectance {refl.shape}, wavelengths {wl.shape} and fwhm {fw.shape} disagree",
            where=where,
            fix="pass reflectance as (band, y, x) and one wavelength and FWHM per band",
        )
    if np.any(np.diff(wl) <= 0):
        raise InvalidInputError("wavelengths are not strictly ascending", where=where)
    n, h, w = refl.shape
    gain = np.full(n, 1e-4) if gains is None else np.asarray(gains, dtype=np.float64)
    offset = np.zeros(n) if offsets is None else np.asarray(offsets, dtype=np.float64)
    if gain.shape != (n,) or offset.shape != (n,) or np.any(gain <= 0):
        raise InvalidInputError("gains/offsets need one value per band, gains > 0", where=where)
    if start.tzinfo is None or end.tzinfo is None or end < start:
        raise InvalidInputError(
            "start/end must be timezone-aware and start <= end", where=where, fix="use UTC times"
        )
    if not 0.0 <= cloud_cover <= 100.0:
        raise InvalidInputError(f"cloud cover {cloud_cover} outside 0-100 %", where=where)
    missing = [k for k in QUALITY_LAYERS if k not in quality]
    unknown = sorted(set(quality) - set(QUALITY_LAYERS))
    if missing or unknown:
        raise InvalidInputError(
            f"quality layers missing {missing} / unknown {unknown}",
            where=where,
            fix=f"pass exactly the keys {list(QUALITY_LAYERS)}",
        )
    ql = {k: np.asarray(v) for k, v in quality.items()}
    for k, arr in ql.items():
        if arr.shape != (h, w) or arr.dtype != np.uint8:
            raise InvalidInputError(
                f"quality layer {k} is {arr.dtype} {arr.shape}, expected uint8 {(h, w)}",
                where=where,
            )
    pm = np.zeros((h, w), np.uint8) if pixelmask is None else np.asarray(pixelmask)
    if pm.dtype != np.uint8 or pm.shape[-2:] != (h, w) or pm.ndim not in (2, 3):
        raise InvalidInputError(f"pixelmask is {pm.dtype} {pm.shape}", where=where)
    scene_extra = dict(EXTRA_DEFAULTS)
    bad_keys = sorted(set(extra or {}) - set(EXTRA_DEFAULTS))
    if bad_keys:
        raise InvalidInputError(
            f"unknown extra keys {bad_keys}", where=where, fix=f"use {sorted(EXTRA_DEFAULTS)}"
        )
    scene_extra.update(extra or {})

    target = Path(out_dir) / product_name
    if target.exists() and not overwrite:
        raise ConflictError(
            "delivery folder already exists", where=str(target), fix="pass overwrite=True"
        )
    stage = Path(out_dir) / f".{product_name}.partial"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        # Band by band, so the float64 scratch is one band, not the whole cube.
        dn = np.empty(refl.shape, dtype=np.int16)
        for i in range(n):
            scaled = np.round((refl[i] - offset[i]) / gain[i])
            clipped = np.clip(np.nan_to_num(scaled), -32767, 32767)
            dn[i] = np.where(np.isnan(refl[i]), ENMAP_NODATA, clipped)
        names = {
            layer: f"{product_name}-{layer}.{_EXT.get(layer, 'TIF')}" for layer in LAYER_ASSET_KEYS
        }
        descriptions = [f"band {i + 1} ({_fmt(v)} nm)" for i, v in enumerate(wl)]
        write_cog(
            stage / names["SPECTRAL_IMAGE"],
            dn,
            transform=transform,
            epsg=epsg,
            nodata=ENMAP_NODATA,
            band_descriptions=descriptions,
        )
        for key in QUALITY_LAYERS:
            write_cog(
                stage / names[f"QL_QUALITY_{key}"],
                ql[key],
                transform=transform,
                epsg=epsg,
                nodata=3 if key == "CLASSES" else None,
            )
        write_cog(stage / names["QL_PIXELMASK"], pm, transform=transform, epsg=epsg, nodata=None)
        for layer, rgb_nm in (
            ("QL_VNIR", (640.0, 550.0, 460.0)),
            ("QL_SWIR", (2200.0, 1650.0, 850.0)),
        ):
            write_cog(
                stage / names[layer],
                _quicklook(refl, wl, rgb_nm),
                transform=transform,
                epsg=epsg,
                nodata=0,
                resampling="average",
            )
        scene = np.isin(ql["CLASSES"], (1, 2))
        covers = {
            "cloud_shadow": _cover(ql["CLOUDSHADOW"] == 1, scene),
            "haze": _cover(ql["HAZE"] == 1, scene),
            "snow": _cover(ql["SNOW"] == 1, scene),
            "cirrus": _cover(ql["CIRRUS"] >= 1, scene),
            "water": _cover(ql["CLASSES"] == 2, scene),
        }
        xml = _metadata_xml(
            names=names,
            sizes={k: (stage / v).stat().st_size for k, v in names.items() if k != "METADATA"},
            product_name=product_name,
            parts=parts,
            shape=(h, w),
            transform=transform,
            epsg=epsg,
            start=start,
            end=end,
            cloud_cover=float(cloud_cover),
            covers=covers,
            wavelengths=wl,
            fwhm=fw,
            gains=gain,
            offsets=offset,
            stats=_band_stats(dn),
            extra=scene_extra,
        )
        (stage / names["METADATA"]).write_bytes(xml)
        if target.exists():
            shutil.rmtree(target)
        stage.rename(target)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return target


def _metadata_xml(
    *,
    names: dict[str, str],
    sizes: dict[str, int],
    product_name: str,
    parts: dict[str, str],
    shape: tuple[int, int],
    transform: Affine,
    epsg: int,
    start: datetime,
    end: datetime,
    cloud_cover: float,
    covers: dict[str, float],
    wavelengths: np.ndarray,
    fwhm: np.ndarray,
    gains: np.ndarray,
    offsets: np.ndarray,
    stats: list[tuple[float, float, float, float]],
    extra: dict[str, float | int | str],
) -> bytes:
    """Serialise the ``level_X`` METADATA.XML document (UTF-8 bytes, indented)."""
    version = parts["version"]
    dotted = f"{version[0:2]}.{version[2:4]}.{version[4:6]}"
    h, w = shape
    n = len(wavelengths)
    root = ET.Element("level_X")
    meta = _sub(root, "metadata")
    schema = _sub(meta, "schema")
    _sub(schema, "processingLevel", "L2A")
    _sub(schema, "versionSchema", "01.05.00")
    _sub(meta, "name", names["METADATA"])
    _sub(meta, "comment", "Written by eoforge: structure of a DLR EnMAP L2A delivery.")

    base = _sub(root, "base")
    _sub(base, "format", "ENMAP_L2A")
    _sub(base, "level", "L2A")
    _sub(base, "revision", dotted)
    _sub(base, "archivedVersion", dotted)
    _sub(base, "datatakeID", parts["datatake"])
    _sub(base, "tileID", parts["tile"])
    _sub(
        base,
        "processingDate",
        datetime.strptime(parts["processed"], "%Y%m%dT%H%M%S").strftime(
            "%Y-%m-%dT%H:%M:%S.000000Z"
        ),
    )
    spatial = _sub(base, "spatialCoverage")
    poly = _sub(spatial, "boundingPolygon")
    for frame, lon, lat in _corners_lonlat(transform, shape, epsg):
        pt = _sub(poly, "point")
        _sub(pt, "frame", frame)
        _sub(pt, "latitude", _fmt(lat))
        _sub(pt, "longitude", _fmt(lon))
    temporal = _sub(base, "temporalCoverage")
    _sub(temporal, "startTime", _iso(start))
    _sub(temporal, "stopTime", _iso(end))

    processing = _sub(root, "processing")
    _sub(processing, "productFormat", "GeoTIFF+Metadata")
    _sub(processing, "processingFacility", str(extra["processing_facility"]))
    _sub(processing, "atmosphericCorrection", "land")

    specific = _sub(root, "specific")
    _sub(specific, "widthOfOrthoScene", str(w))
    _sub(specific, "heightOfOrthoScene", str(h))
    _sub(specific, "pixelSizeOfOrthoScene", _fmt(abs(transform.a)))
    for key, tag in _ANGLES.items():
        el = _sub(specific, tag)
        value = _fmt(float(extra[key]))
        for corner in ("center", "upper_left", "upper_right", "lower_left", "lower_right"):
            _sub(el, corner, value)
    orbit = _sub(specific, "orbit")
    _sub(orbit, "absoluteOrbitNumber", str(int(extra["absolute_orbit"])))
    _sub(orbit, "relativeOrbitNumber", str(int(extra["relative_orbit"])))
    _sub(orbit, "orbitDirection", str(extra["orbit_direction"]).upper())
    _sub(specific, "cloudCover", _fmt(cloud_cover))
    for key, tag in _COVERS.items():
        _sub(specific, tag, _fmt(covers[key]))
    _sub(specific, "backgroundValue", str(ENMAP_NODATA))
    for detector, bands in (("vnir", ENMAP_VNIR_BANDS), ("swir", ENMAP_SWIR_BANDS)):
        chosen = (
            [b for b in bands if b <= n]
            if n == N_BANDS
            else _split_detectors(wavelengths)[detector]
        )
        quality = _sub(specific, f"{detector}ProductQuality")
        _sub(quality, "expectedChannelsList", ",".join(str(b) for b in chosen))
        _sub(quality, "numChannelsExpected", str(len(chosen)))
        _sub(quality, "numChannelsMissing", "0")
    bc = _sub(specific, "bandCharacterisation")
    for i in range(n):
        band = _sub(bc, "bandID", number=str(i + 1))
        _sub(band, "wavelengthCenterOfBand", _fmt(wavelengths[i]))
        _sub(band, "FWHMOfBand", _fmt(fwhm[i]))
        _sub(band, "GainOfBand", _fmt(gains[i]))
        _sub(band, "OffsetOfBand", _fmt(offsets[i]))

    product = _sub(root, "product")
    image = _sub(product, "image")
    merge = _sub(image, "merge")
    _sub(merge, "name", names["SPECTRAL_IMAGE"])
    _sub(merge, "channels", str(n))
    _sub(merge, "rows", str(h))
    _sub(merge, "columns", str(w))
    _sub(merge, "dataFormat", "INT16")
    ortho = _sub(product, "ortho")
    _sub(ortho, "projection", _projection_name(epsg))
    _sub(ortho, "EPSG", str(epsg))
    _sub(ortho, "resolution", _fmt(abs(transform.a)))
    map_info = _sub(ortho, "mapInfo")
    _sub(map_info, "upperLeftX", _fmt(transform.c))
    _sub(map_info, "upperLeftY", _fmt(transform.f))
    _sub(map_info, "pixelSizeX", _fmt(transform.a))
    _sub(map_info, "pixelSizeY", _fmt(-transform.e))
    files = _sub(product, "productFileInformation")
    for layer, name in names.items():
        entry = _sub(files, "file")
        _sub(entry, "name", name)
        if layer in sizes:
            _sub(entry, "size", str(math.ceil(sizes[layer] / 1024)), unit="Kbyte")
        _sub(entry, "version", dotted)
    statistics = _sub(product, "bandStatistics")
    for i, (lo, hi, mean, std) in enumerate(stats):
        band = _sub(statistics, "bandID", number=str(i + 1))
        _sub(band, "minimum", _fmt(lo))
        _sub(band, "maximum", _fmt(hi))
        _sub(band, "mean", _fmt(mean))
        _sub(band, "stdDeviation", _fmt(std))
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return data + b"\n"


def _split_detectors(wavelengths: np.ndarray) -> dict[str, list[int]]:
    """VNIR/SWIR band numbers for a non-standard band set: split at 1000 nm."""
    nums = list(range(1, len(wavelengths) + 1))
    return {
        "vnir": [b for b in nums if wavelengths[b - 1] < 1000.0],
        "swir": [b for b in nums if wavelengths[b - 1] >= 1000.0],
    }


def zip_delivery(delivery_dir: Path, zip_path: Path | None = None) -> Path:
    """Pack a delivery folder as DLR ships it: ``<product>.ZIP`` holding ``<product>/<files>``.

    The zip is reproducible (fixed member timestamps, sorted members, stored uncompressed since
    the COGs are compressed already) and written atomically.

    Args:
        delivery_dir: Folder written by :func:`write_enmap_delivery`.
        zip_path: Output file; default ``<delivery_dir>.ZIP`` beside the folder.

    Returns:
        The zip path.
    """
    product = delivery_dir.name
    out = zip_path or delivery_dir.with_name(f"{product}.ZIP")
    tmp = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for path in sorted(delivery_dir.iterdir()):
                info = zipfile.ZipInfo(f"{product}/{path.name}", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


# --------------------------------------------------------------------------------------------
# reading


def _scan_names(names: list[str]) -> dict[str, dict[str, str]]:
    """Group member/file names by product: ``{product: {layer: name}}``."""
    found: dict[str, dict[str, str]] = {}
    for name in sorted(names):
        m = _FILE_RE.match(PurePosixPath(name).name)
        if m is None:
            continue
        layers = found.setdefault(m["product"], {})
        layer = m["layer"].upper()
        # Prefer the plain DLR name over a *_COG variant when both are present.
        if layer not in layers or "_COG." not in PurePosixPath(name).name.upper():
            layers[layer] = name
    return found


def find_products(path: Path) -> dict[str, dict[str, str]]:
    """List the EnMAP products in a folder (not recursive) or zip, with their files.

    Args:
        path: A delivery folder, a ``*-METADATA.XML`` file or a ``.zip``.

    Returns:
        ``{product_name: {layer: gdal_path}}``; paths inside a zip use ``/vsizip/``.

    Raises:
        InvalidInputError: If ``path`` does not exist or a zip is corrupt.
    """
    if not path.exists():
        raise InvalidInputError("no such file or folder", where=str(path))
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if not m.endswith("/")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidInputError(
                f"not a readable zip file ({exc})",
                where=str(path),
                fix="download the delivery again",
            ) from None
        grouped = _scan_names(members)
        zip_abs = path.resolve().as_posix()
        return {
            p: {k: f"/vsizip/{zip_abs}/{v}" for k, v in layers.items()}
            for p, layers in grouped.items()
        }
    folder = path.parent if path.is_file() else path
    grouped = _scan_names([p.name for p in folder.iterdir() if p.is_file()])
    return {
        p: {k: str((folder / v).resolve()) for k, v in layers.items()}
        for p, layers in grouped.items()
    }


def _read_xml(gdal_path: str, where: str) -> ET.Element:
    try:
        m = _VSIZIP_RE.match(gdal_path)
        if m is not None:
            with zipfile.ZipFile(m["zip"]) as zf:
                data = zf.read(m["member"])
        else:
            data = Path(gdal_path).read_bytes()
        return ET.fromstring(data)
    except (ET.ParseError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(
            f"METADATA.XML cannot be parsed ({exc})",
            where=where,
            fix="the delivery is corrupt: download it again",
        ) from None


class _Xml:
    """Typed look-ups in METADATA.XML that fail with the element path and file name."""

    def __init__(self, root: ET.Element, where: str) -> None:
        self.root = root
        self.where = where

    def text(self, xpath: str) -> str:
        el = self.root.find(xpath)
        if el is None or el.text is None or not el.text.strip():
            raise InvalidInputError(
                f"METADATA.XML lacks element {xpath}",
                where=self.where,
                fix="the delivery is incomplete or not an EnMAP L2A product",
            )
        return el.text.strip()

    def number(self, xpath: str) -> float:
        raw = self.text(xpath)
        try:
            return float(raw)
        except ValueError:
            raise InvalidInputError(
                f"METADATA.XML element {xpath} is {raw!r}, not a number", where=self.where
            ) from None

    def optional(self, xpath: str) -> str | None:
        el = self.root.find(xpath)
        return el.text.strip() if el is not None and el.text and el.text.strip() else None

    def per_band(self, parent: str, child: str, n: int) -> tuple[float, ...]:
        values: dict[int, float] = {}
        for band in self.root.findall(f"{parent}/bandID"):
            el = band.find(child)
            number = band.get("number")
            if el is None or el.text is None or number is None:
                continue
            try:
                values[int(number)] = float(el.text)
            except ValueError:
                continue
        if sorted(values) != list(range(1, n + 1)):
            missing = sorted(set(range(1, n + 1)) - set(values))[:5]
            raise InvalidInputError(
                f"METADATA.XML {parent}/bandID/{child} misses bands {missing} of {n}",
                where=self.where,
                fix="the delivery is incomplete or corrupt: download it again",
            )
        return tuple(values[i] for i in range(1, n + 1))

    def channels(self, xpath: str) -> tuple[int, ...]:
        raw = self.optional(xpath)
        if raw is None:
            return ()
        try:
            return tuple(int(t) for t in raw.split(",") if t.strip())
        except ValueError:
            raise InvalidInputError(
                f"METADATA.XML {xpath} is not a list", where=self.where
            ) from None


def _parse_time(xml: _Xml, xpath: str) -> datetime:
    raw = xml.text(xpath)
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInputError(f"METADATA.XML {xpath} is {raw!r}", where=xml.where) from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def read_enmap_delivery(path: Path, product_name: str | None = None) -> EnmapDelivery:
    """Read an EnMAP L2A delivery from a folder, its METADATA.XML, or a ``.zip``.

    Every raster layer is opened once to check that it is readable and on the spectral image's
    grid; METADATA.XML is cross-checked against the spectral image.

    Args:
        path: The delivery folder, its ``*-METADATA.XML`` or the delivered zip.
        product_name: Which product to read when ``path`` holds several.

    Returns:
        The delivery's files and metadata.

    Raises:
        InvalidInputError: If the delivery is incomplete (no SPECTRAL_IMAGE or METADATA, a file
            listed in METADATA.XML is absent), corrupt, or inconsistent; the message names the
            file and what is missing.
    """
    path = Path(path)
    products = find_products(path)
    if product_name is not None:
        products = {k: v for k, v in products.items() if k == product_name}
    if not products:
        raise InvalidInputError(
            "no EnMAP product files (<product>-SPECTRAL_IMAGE.TIF, -METADATA.XML, ...) found",
            where=str(path),
            fix="point to a DLR delivery folder or zip",
        )
    if len(products) > 1:
        raise InvalidInputError(
            f"{len(products)} EnMAP products found: {sorted(products)}",
            where=str(path),
            fix="pass product_name to choose one",
        )
    name, files = next(iter(products.items()))
    missing = [layer for layer in _REQUIRED_LAYERS if layer not in files]
    if missing:
        raise InvalidInputError(
            f"delivery is incomplete: no {', '.join(f'{name}-{m}' for m in missing)} file",
            where=str(path),
            fix="download the complete delivery (SPECTRAL_IMAGE.TIF and METADATA.XML are needed)",
        )
    xml_where = files["METADATA"]
    xml = _Xml(_read_xml(files["METADATA"], xml_where), xml_where)
    level = xml.text("base/level")
    if level != "L2A":
        raise InvalidInputError(f"processing level is {level}, not L2A", where=xml_where)
    listed = [el.text or "" for el in xml.root.findall("product/productFileInformation/file/name")]
    for layer, listed_names in _scan_names(listed).get(name, {}).items():
        if layer not in files:
            raise InvalidInputError(
                f"delivery is incomplete: METADATA.XML lists {listed_names} but the file is absent",
                where=str(path),
                fix="download the complete delivery",
            )

    spectral = files["SPECTRAL_IMAGE"]
    cog_layers: set[str] = set()
    try:
        with rasterio.open(spectral) as src:
            if src.crs is None or src.crs.to_epsg() is None:
                raise InvalidInputError(
                    "spectral image has no EPSG-coded CRS", where=spectral, fix="re-download"
                )
            epsg = int(src.crs.to_epsg())
            transform = src.transform
            shape = (src.height, src.width)
            count = src.count
            dtype = src.dtypes[0]
            if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG":
                cog_layers.add("SPECTRAL_IMAGE")
    except RasterioError as exc:
        raise InvalidInputError(
            f"spectral image cannot be read ({exc})", where=spectral, fix="download it again"
        ) from None
    n = int(xml.number("product/image/merge/channels"))
    rows = int(xml.number("product/image/merge/rows"))
    cols = int(xml.number("product/image/merge/columns"))
    if (count, shape) != (n, (rows, cols)) or dtype != "int16":
        raise InvalidInputError(
            f"spectral image is {dtype} {count}x{shape[0]}x{shape[1]} but METADATA.XML says "
            f"int16 {n}x{rows}x{cols}",
            where=spectral,
            fix="the delivery is corrupt or mixed from two products",
        )
    xml_epsg = xml.optional("product/ortho/EPSG")
    if xml_epsg is not None and int(xml_epsg) != epsg:
        raise InvalidInputError(
            f"METADATA.XML EPSG {xml_epsg} differs from the image's EPSG:{epsg}", where=xml_where
        )
    for layer, gdal_path in files.items():
        if layer in ("SPECTRAL_IMAGE", "METADATA"):
            continue
        try:
            with rasterio.open(gdal_path) as src:
                if (src.height, src.width) != shape or src.transform != transform:
                    raise InvalidInputError(
                        f"{layer} is not on the spectral image's grid", where=gdal_path
                    )
                if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG":
                    cog_layers.add(layer)
        except RasterioError as exc:
            raise InvalidInputError(
                f"{layer} cannot be read ({exc})", where=gdal_path, fix="download it again"
            ) from None

    wavelengths = xml.per_band("specific/bandCharacterisation", "wavelengthCenterOfBand", n)
    means = xml.per_band("product/bandStatistics", "mean", n)
    stds = xml.per_band("product/bandStatistics", "stdDeviation", n)
    bad = tuple(i + 1 for i in range(n) if stds[i] == 0 and means[i] == _BAD_BAND_MEAN)
    footprint = []
    for pt in xml.root.findall("base/spatialCoverage/boundingPolygon/point"):
        lat, lon = pt.findtext("latitude"), pt.findtext("longitude")
        if lat is not None and lon is not None:
            footprint.append((float(lon), float(lat)))
    if len(footprint) < 4:
        raise InvalidInputError(
            "METADATA.XML base/spatialCoverage/boundingPolygon has fewer than 4 points",
            where=xml_where,
        )
    if footprint[0] != footprint[-1]:
        footprint.append(footprint[0])
    props: dict[str, float | int | str] = {}
    for key, tag in _ANGLES.items():
        value = xml.optional(f"specific/{tag}/center")
        if value is not None:
            props[key] = float(value)
    for key, tag in _COVERS.items():
        value = xml.optional(f"specific/{tag}")
        if value is not None:
            props[f"{key}_cover"] = float(value)
    for key, xpath in (
        ("absolute_orbit", "specific/orbit/absoluteOrbitNumber"),
        ("relative_orbit", "specific/orbit/relativeOrbitNumber"),
    ):
        value = xml.optional(xpath)
        if value is not None:
            props[key] = int(value)
    for key, xpath in (
        ("orbit_direction", "specific/orbit/orbitDirection"),
        ("processing_facility", "processing/processingFacility"),
        ("processing_date", "base/processingDate"),
    ):
        value = xml.optional(xpath)
        if value is not None:
            props[key] = value
    return EnmapDelivery(
        product_name=name,
        source=str(path),
        files=dict(sorted(files.items())),
        epsg=epsg,
        transform=transform,
        shape=shape,
        start=_parse_time(xml, "base/temporalCoverage/startTime"),
        end=_parse_time(xml, "base/temporalCoverage/stopTime"),
        cloud_cover=xml.number("specific/cloudCover"),
        wavelengths_nm=wavelengths,
        fwhm_nm=xml.per_band("specific/bandCharacterisation", "FWHMOfBand", n),
        gains=xml.per_band("specific/bandCharacterisation", "GainOfBand", n),
        offsets=xml.per_band("specific/bandCharacterisation", "OffsetOfBand", n),
        bad_bands=bad,
        vnir_bands=xml.channels("specific/vnirProductQuality/expectedChannelsList"),
        swir_bands=xml.channels("specific/swirProductQuality/expectedChannelsList"),
        footprint_lonlat=tuple(footprint),
        cog_layers=frozenset(cog_layers),
        properties=props,
    )


# --------------------------------------------------------------------------------------------
# STAC


_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_TIFF_TYPE = "image/tiff; application=geotiff"
_ASSET_INFO: dict[str, tuple[str, str, list[str]]] = {
    "SPECTRAL_IMAGE": (
        "Spectral Image",
        "Earth image measurement data covering 1 tile (30x30km) in orthorectified geometry",
        ["data"],
    ),
    "METADATA": ("Metadata", "Original XML metadata", ["metadata"]),
    "QL_VNIR": (
        "Quicklook VNIR",
        "Visible Near Infrared (VNIR) quicklook in orthorectified geometry",
        ["overview", "visual"],
    ),
    "QL_SWIR": (
        "Quicklook SWIR",
        "Short-wave Infrared quicklook in orthorectified geometry",
        ["overview"],
    ),
    "QL_QUALITY_CLASSES": ("Quality classes", "Classes quality layer", ["quality"]),
    "QL_QUALITY_CLOUD": ("Quality cloud", "Cloud quality layer", ["quality", "cloud"]),
    "QL_QUALITY_CLOUDSHADOW": (
        "Quality cloud shadow",
        "Cloud shadow quality layer",
        ["quality", "cloud-shadow"],
    ),
    "QL_QUALITY_HAZE": ("Quality haze", "Haze quality layer", ["quality", "haze"]),
    "QL_QUALITY_SNOW": ("Quality snow", "Snow quality layer", ["quality", "snow"]),
    "QL_QUALITY_CIRRUS": ("Quality cirrus", "Cirrus quality layer", ["quality", "cirrus"]),
    "QL_QUALITY_TESTFLAGS": ("Quality test flags", "Test flags quality layer", ["quality"]),
    "QL_PIXELMASK": (
        "Defective pixel mask",
        "Defective pixel mask layer",
        ["quality", "data-mask"],
    ),
}
#: STAC extensions an EnMAP item declares (the versions DLR uses, plus raster).
ENMAP_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]


def _stac_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def enmap_item(
    delivery: EnmapDelivery, href_base: str, *, thumbnail: str | None = None
) -> dict[str, Any]:
    """Describe a delivery as a STAC Item shaped like DLR's ``ENMAP_HSI_L2A`` items.

    Asset keys, titles, roles and property names follow the DLR Geoservice items; values are
    typed as the STAC extension schemas require (numbers, lower-case orbit state, string band
    names, ``center_wavelength`` and ``full_width_half_max`` in µm), where DLR's own items use
    strings and nanometres.

    Args:
        delivery: The delivery, from :func:`read_enmap_delivery`.
        href_base: Prefix for asset hrefs; an asset's href is ``<href_base>/<file name>`` (e.g.
            ``data/ENMAP_HSI_L2A/<item id>``, relative to an archive root).
        thumbnail: File name (under ``href_base``) of a JPEG/PNG thumbnail, if there is one.

    Returns:
        The STAC 1.0.0 Item as a JSON-ready dict.
    """
    parts = _name_parts(delivery.product_name)
    base = href_base.rstrip("/")
    h, w = delivery.shape
    t = delivery.transform
    x0, y1 = t.c, t.f
    x1, y0 = t.c + t.a * w, t.f + t.e * h
    proj = {
        "proj:epsg": delivery.epsg,
        "proj:shape": [h, w],
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f, 0.0, 0.0, 1.0],
        "proj:bbox": [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
    }
    res = abs(t.a)
    assets: dict[str, dict[str, Any]] = {}
    for layer in LAYER_ASSET_KEYS:
        if layer not in delivery.files:
            continue
        title, description, roles = _ASSET_INFO[layer]
        asset: dict[str, Any] = {"href": f"{base}/{delivery.file_name(layer)}"}
        if layer == "METADATA":
            asset["type"] = "application/xml"
        else:
            asset["type"] = _COG_TYPE if layer in delivery.cog_layers else _TIFF_TYPE
        asset.update(title=title, description=description)
        if layer != "METADATA":
            asset.update(proj)
        if layer == "SPECTRAL_IMAGE":
            asset["eo:bands"] = [
                {
                    "name": f"B{i + 1}",
                    "center_wavelength": round(delivery.wavelengths_nm[i] / 1000.0, 9),
                    "full_width_half_max": round(delivery.fwhm_nm[i] / 1000.0, 9),
                    "enmap:gain_of_band": delivery.gains[i],
                    "enmap:offset_of_band": delivery.offsets[i],
                }
                for i in range(delivery.n_bands)
            ]
            asset["raster:bands"] = [
                {
                    "nodata": ENMAP_NODATA,
                    "data_type": "int16",
                    "scale": delivery.gains[i],
                    "offset": delivery.offsets[i],
                    "spatial_resolution": res,
                }
                for i in range(delivery.n_bands)
            ]
        elif layer in ("QL_VNIR", "QL_SWIR"):
            asset["raster:bands"] = [
                {"data_type": "uint8", "nodata": 0, "scale": 1.0, "offset": 0.0, "sampling": "area"}
                for _ in range(3)
            ]
        elif layer.startswith("QL_QUALITY_"):
            band: dict[str, Any] = {"data_type": "uint8", "scale": 1.0, "offset": 0.0}
            if layer == "QL_QUALITY_CLASSES":
                band["nodata"] = 3
            asset["raster:bands"] = [band]
        asset["roles"] = roles
        assets[LAYER_ASSET_KEYS[layer]] = asset
    if thumbnail is not None:
        assets["thumbnail"] = {
            "href": f"{base}/{thumbnail}",
            "type": "image/jpeg" if thumbnail.lower().endswith((".jpg", ".jpeg")) else "image/png",
            "title": "Thumbnail VNIR",
            "description": "Visible Near Infrared (VNIR) thumbnail in orthorectified geometry",
            "roles": ["thumbnail"],
        }

    p = delivery.properties
    processed = datetime.strptime(parts["processed"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    version = delivery.processing_version
    props: dict[str, Any] = {
        "datetime": _stac_time(delivery.start),
        "start_datetime": _stac_time(delivery.start),
        "end_datetime": _stac_time(delivery.end),
        "created": _stac_time(processed),
        "updated": _stac_time(processed),
        "version": version,
        "platform": "enmap",
        "instruments": ["hsi"],
        "eop:sensorType": "OPTICAL",
        "proj:epsg": delivery.epsg,
        "eo:cloud_cover": delivery.cloud_cover,
        "processing:level": "L2A",
        "processing:facility": str(p.get("processing_facility", "NZ")),
        "enmap:datatakeID": parts["datatake"],
        "enmap:tileID": parts["tile"],
        "enmap:archivedVersion": version,
        "enmap:processingDate": _stac_time(processed),
        "enmap:nodata": ENMAP_NODATA,
        "enmap:vnirNumberChannelsMissing": 0,
        "enmap:swirNumberChannelsMissing": 0,
        "enmap:noDataBands": list(delivery.bad_bands),
    }
    if "snow_cover" in p:
        props["eo:snow_cover"] = p["snow_cover"]
    for key, prop in (
        ("cirrus_cover", "enmap:cirrus_cover"),
        ("cloud_shadow_cover", "enmap:cloud_shadow"),
        ("haze_cover", "enmap:haze_cover"),
        ("water_cover", "enmap:water_cover"),
    ):
        if key in p:
            props[prop] = p[key]
    if "sun_azimuth" in p:
        props["view:sun_azimuth"] = p["sun_azimuth"]
        props["enmap:sunAzimuthAngle"] = p["sun_azimuth"]
    if "sun_elevation" in p:
        props["view:sun_elevation"] = p["sun_elevation"]
        props["enmap:sunElevationAngle"] = p["sun_elevation"]
    for key, prop in (
        ("across_off_nadir", "enmap:acrossOffNadirAngle"),
        ("along_off_nadir", "enmap:alongOffNadirAngle"),
        ("scene_azimuth", "enmap:sceneAzimuthAngle"),
    ):
        if key in p:
            props[prop] = p[key]
    if "orbit_direction" in p:
        props["sat:orbit_state"] = str(p["orbit_direction"]).lower()
    if "relative_orbit" in p:
        props["sat:relative_orbit"] = int(p["relative_orbit"])
        props["enmap:orbitNo"] = int(p["relative_orbit"])
    if "absolute_orbit" in p:
        props["sat:absolute_orbit"] = int(p["absolute_orbit"])

    ring = [[lon, lat] for lon, lat in delivery.footprint_lonlat]
    lons = [c[0] for c in ring]
    lats = [c[1] for c in ring]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": list(ENMAP_EXTENSIONS),
        "id": delivery.product_name,
        "collection": ENMAP_COLLECTION,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": props,
        # Relative to the archive root, like the asset hrefs; the server rewrites both.
        "links": [
            {
                "rel": "collection",
                "href": f"stac/collections/{ENMAP_COLLECTION}.json",
                "type": "application/json",
            }
        ],
        "assets": assets,
    }
