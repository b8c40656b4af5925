"""The profile table: every ``(sensor, provider)`` pair as data (facts from SENSORS.md).

Kept apart from :mod:`schemas.profiles` so the types and lookup stay short. Order matters in one
place only: when nothing but asset keys tells two providers apart, the first registered wins
(Earth Search, whose stactools generators also write the examples in ../shared/fixtures).
"""

from __future__ import annotations

import dataclasses

from schemas.profiles import BandRole, BandSpec, RadiometryKind, RadiometryRule, SensorProfile
from schemas.qa import MaskKind, MaskSpec
from schemas.radiometry import (
    ENMAP_DEFAULT_GAIN,
    ENMAP_NODATA,
    LANDSAT_SR_OFFSET,
    LANDSAT_SR_SCALE,
    LANDSAT_ST_OFFSET,
    LANDSAT_ST_SCALE,
    RTC_NODATA,
)
from schemas.sensors import Provider, SensorId

__all__ = ["ENMAP_BAND_COUNT", "ENMAP_DEFAULT_BANDS", "build_collection_variants", "build_profiles"]

# --------------------------------------------------------------------------------------------
# Sentinel-2 L2A (SENSORS.md §2.1)
# --------------------------------------------------------------------------------------------

#: canonical, common name (Earth Search key), centre wavelength (µm), native resolution (m)
_S2_BANDS: tuple[tuple[str, str, float, int], ...] = (
    ("B01", "coastal", 0.443, 60),
    ("B02", "blue", 0.490, 10),
    ("B03", "green", 0.560, 10),
    ("B04", "red", 0.665, 10),
    ("B05", "rededge1", 0.704, 20),
    ("B06", "rededge2", 0.740, 20),
    ("B07", "rededge3", 0.783, 20),
    ("B08", "nir", 0.842, 10),
    ("B8A", "nir08", 0.865, 20),
    ("B09", "nir09", 0.945, 60),
    ("B11", "swir16", 1.610, 20),
    ("B12", "swir22", 2.190, 20),
)
_S2_DEFAULT = tuple(name for name, *_ in _S2_BANDS)
_S2_MASK = MaskSpec(
    kind=MaskKind.SCL,
    bands=("SCL",),
    description="Sen2Cor SCL: classes 0, 1, 3, 8, 9, 10 invalid; 11 (snow) optional",
)


def _s2_bands(key_style: str) -> tuple[BandSpec, ...]:
    """Sentinel-2 bands with the asset keys of one provider style: es, pc or cdse."""

    def key(name: str, common: str, res: int) -> str:
        if key_style == "es":
            return common
        if key_style == "cdse":
            return f"{name}_{res}m"
        return name

    bands = [
        BandSpec(
            name=name,
            asset_key=key(name, common, res),
            role=BandRole.REFLECTANCE,
            resolution_m=float(res),
            dtype="uint16",
            nodata=0,
            common_name=common,
            center_wavelength_um=wavelength,
        )
        for name, common, wavelength, res in _S2_BANDS
    ]
    scl_key = {"es": "scl", "cdse": "SCL_20m"}.get(key_style, "SCL")
    bands.append(
        BandSpec(
            name="SCL",
            asset_key=scl_key,
            role=BandRole.CLASSIFICATION,
            resolution_m=20.0,
            dtype="uint8",
            nodata=0,
        )
    )
    return tuple(bands)


def _s2_rule(baseline_property: str, kind: RadiometryKind) -> RadiometryRule:
    return RadiometryRule(
        kind=kind, scale=1e-4, offset=0.0, unit="reflectance", baseline_property=baseline_property
    )


_ES_LEGACY_WARNING = (
    "Earth Search v1 'sentinel-2-l2a' pixel values are inconsistent for processing baseline "
    ">= 04.00: some COGs have the -1000 offset applied and some not, and neither raster:bands "
    "offset nor earthsearch:boa_offset_applied is reliable (SENSORS.md D1). Use "
    "'sentinel-2-c1-l2a' or Planetary Computer for radiometry."
)


def _sentinel2() -> list[SensorProfile]:
    base_rule = _s2_rule("s2:processing_baseline", RadiometryKind.S2_BASELINE)
    return [
        SensorProfile(
            sensor=SensorId.SENTINEL_2_L2A,
            provider=Provider.EARTH_SEARCH,
            collections=("sentinel-2-c1-l2a", "sentinel-2-l2a"),
            bands=_s2_bands("es"),
            default_band_names=_S2_DEFAULT,
            radiometry=base_rule,
            mask=_S2_MASK,
            notes="ES v1 c1: raw DN, offset declared in raster:bands (SENSORS.md D2, §2.2)",
        ),
        SensorProfile(
            sensor=SensorId.SENTINEL_2_L2A,
            provider=Provider.PLANETARY_COMPUTER,
            collections=("sentinel-2-l2a",),
            bands=_s2_bands("pc"),
            default_band_names=_S2_DEFAULT,
            radiometry=base_rule,
            mask=_S2_MASK,
            notes="PC: raw DN, no raster:bands scale/offset; branch on baseline (D3)",
        ),
        SensorProfile(
            sensor=SensorId.SENTINEL_2_L2A,
            provider=Provider.CDSE,
            collections=("sentinel-2-l2a",),
            bands=_s2_bands("cdse"),
            default_band_names=_S2_DEFAULT,
            radiometry=_s2_rule("processing:version", RadiometryKind.S2_BASELINE),
            mask=_S2_MASK,
            notes="CDSE: declared raster:offset -0.1 is a constant, wrong for PB < 04.00 (D4)",
        ),
        SensorProfile(
            sensor=SensorId.SENTINEL_2_L2A,
            provider=Provider.ARCHIVE,
            collections=("sentinel-2-l2a",),
            bands=_s2_bands("pc"),
            default_band_names=_S2_DEFAULT,
            radiometry=base_rule,
            mask=_S2_MASK,
            notes="offline archive: Planetary Computer keys and raw DN",
        ),
    ]


# --------------------------------------------------------------------------------------------
# Landsat 8/9 Collection 2 Level-2 (SENSORS.md §3)
# --------------------------------------------------------------------------------------------

#: canonical, asset key (= common name), centre wavelength (µm)
_LANDSAT_SR: tuple[tuple[str, str, float], ...] = (
    ("SR_B1", "coastal", 0.443),
    ("SR_B2", "blue", 0.482),
    ("SR_B3", "green", 0.561),
    ("SR_B4", "red", 0.655),
    ("SR_B5", "nir08", 0.865),
    ("SR_B6", "swir16", 1.609),
    ("SR_B7", "swir22", 2.201),
)


def _landsat_bands() -> tuple[BandSpec, ...]:
    bands = [
        BandSpec(
            name=name,
            asset_key=key,
            role=BandRole.REFLECTANCE,
            resolution_m=30.0,
            dtype="uint16",
            nodata=0,
            common_name=key,
            center_wavelength_um=wavelength,
        )
        for name, key, wavelength in _LANDSAT_SR
    ]
    bands += [
        BandSpec(
            name="ST_B10",
            asset_key="lwir11",
            role=BandRole.TEMPERATURE,
            resolution_m=30.0,  # 100 m TIRS, delivered on the 30 m grid
            dtype="uint16",
            nodata=0,
            common_name="lwir11",
            center_wavelength_um=10.895,
            scale=LANDSAT_ST_SCALE,
            offset=LANDSAT_ST_OFFSET,
            unit="K",
        ),
        BandSpec(
            name="QA_PIXEL",
            asset_key="qa_pixel",
            role=BandRole.QA,
            resolution_m=30.0,
            dtype="uint16",
            nodata=1,
        ),
        BandSpec(
            name="QA_RADSAT",
            asset_key="qa_radsat",
            role=BandRole.QA,
            resolution_m=30.0,
            dtype="uint16",
            nodata=None,
        ),
    ]
    return tuple(bands)


def _landsat() -> list[SensorProfile]:
    rule = RadiometryRule(
        kind=RadiometryKind.LANDSAT_C2,
        scale=LANDSAT_SR_SCALE,
        offset=LANDSAT_SR_OFFSET,
        unit="reflectance",
    )
    mask = MaskSpec(
        kind=MaskKind.LANDSAT_QA,
        bands=("QA_PIXEL", "QA_RADSAT"),
        description="QA_PIXEL bits 0-4 set or QA_RADSAT != 0 invalid; bit 5 (snow) optional",
    )
    return [
        SensorProfile(
            sensor=SensorId.LANDSAT_C2_L2,
            provider=provider,
            collections=("landsat-c2-l2",),
            bands=_landsat_bands(),
            default_band_names=tuple(name for name, *_ in _LANDSAT_SR),
            radiometry=rule,
            mask=mask,
            platforms=("landsat-8", "landsat-9"),
            notes=note,
        )
        for provider, note in (
            (Provider.EARTH_SEARCH, "ES v1: USGS requester-pays s3:// hrefs"),
            (Provider.PLANETARY_COMPUTER, "PC: same keys and raster:bands as ES"),
            (Provider.ARCHIVE, "offline archive: Planetary Computer keys"),
        )
    ]


# --------------------------------------------------------------------------------------------
# Sentinel-1 (SENSORS.md §4)
# --------------------------------------------------------------------------------------------

_S1_POLARISATIONS = ("VV", "VH", "HH", "HV")


def _s1_bands(dtype: str, nodata: float) -> tuple[BandSpec, ...]:
    return tuple(
        BandSpec(
            name=pol,
            asset_key=pol.lower(),
            role=BandRole.BACKSCATTER,
            resolution_m=10.0,  # IW GRDH pixel spacing; EW GRDM is 40 m
            dtype=dtype,
            nodata=nodata,
            common_name=pol.lower(),
        )
        for pol in _S1_POLARISATIONS
    )


_S1_MASK = MaskSpec(
    kind=MaskKind.NODATA,
    bands=(),
    invalid_flags=frozenset({"nodata"}),
    optional_flags=frozenset(),
    description="no quality layer: only the backscatter nodata value",
)

_GRD_WARNING = (
    "Sentinel-1 GRD is uncalibrated uint16 amplitude DN in ground-range geometry (GCPs only), "
    "not terrain-corrected: not ML-ready (SENSORS.md D8). Use Planetary Computer "
    "'sentinel-1-rtc', or calibrate and terrain-correct first."
)


def _sentinel1() -> list[SensorProfile]:
    rtc_rule = RadiometryRule(
        kind=RadiometryKind.SAR_GAMMA0, scale=1.0, offset=0.0, unit="linear power", to_db=True
    )
    grd_rule = RadiometryRule(
        kind=RadiometryKind.SAR_GRD_DN, scale=1.0, offset=0.0, unit="DN", calibrated=False
    )
    rtc = [
        SensorProfile(
            sensor=SensorId.SENTINEL_1_RTC,
            provider=provider,
            collections=("sentinel-1-rtc",),
            bands=_s1_bands("float32", RTC_NODATA),
            default_band_names=("VV", "VH"),
            radiometry=rtc_rule,
            mask=_S1_MASK,
            notes=note,
        )
        for provider, note in (
            (Provider.PLANETARY_COMPUTER, "PC RTC: float32 linear gamma0, nodata -32768"),
            (Provider.ARCHIVE, "offline archive: Planetary Computer RTC keys"),
        )
    ]
    grd = [
        SensorProfile(
            sensor=SensorId.SENTINEL_1_GRD,
            provider=provider,
            collections=("sentinel-1-grd",),
            bands=_s1_bands("uint16", 0),
            default_band_names=("VV", "VH"),
            radiometry=grd_rule,
            mask=_S1_MASK,
            ml_ready=False,
            warning=_GRD_WARNING,
            notes=note,
        )
        for provider, note in (
            (Provider.EARTH_SEARCH, "ES GRD: uint16 DN, nodata 0"),
            (Provider.PLANETARY_COMPUTER, "PC GRD: dtype not declared, uint16 expected"),
        )
    ]
    return rtc + grd


# --------------------------------------------------------------------------------------------
# EnMAP L2A (SENSORS.md §5)
# --------------------------------------------------------------------------------------------

ENMAP_BAND_COUNT = 224
#: Water-vapour absorption bands dropped by HySpecNet-11k / SpectralEarth (1-based, inclusive).
_ENMAP_DROPPED = set(range(127, 142)) | set(range(161, 168))
#: The 202 bands kept by default.
ENMAP_DEFAULT_BANDS: tuple[str, ...] = tuple(
    f"B{i:03d}" for i in range(1, ENMAP_BAND_COUNT + 1) if i not in _ENMAP_DROPPED
)

#: canonical quality layer, DLR asset key, nodata
_ENMAP_QUALITY: tuple[tuple[str, str, int | None], ...] = (
    ("QL_QUALITY_CLASSES", "quality_classes", 3),
    ("QL_QUALITY_CLOUD", "quality_cloud", None),
    ("QL_QUALITY_CLOUDSHADOW", "quality_cloud_shadow", None),
    ("QL_QUALITY_CIRRUS", "quality_cirrus", None),
    ("QL_QUALITY_HAZE", "quality_haze", None),
    ("QL_QUALITY_SNOW", "quality_snow", None),
    ("QL_QUALITY_TESTFLAGS", "quality_testflags", None),
    ("QL_PIXELMASK", "defective_pixel_mask", None),
)


def _enmap_bands() -> tuple[BandSpec, ...]:
    bands = [
        BandSpec(
            name=f"B{i:03d}",
            asset_key="image",
            role=BandRole.REFLECTANCE,
            resolution_m=30.0,
            dtype="int16",
            nodata=ENMAP_NODATA,
            asset_band=i,
        )
        for i in range(1, ENMAP_BAND_COUNT + 1)
    ]
    bands += [
        BandSpec(
            name=name,
            asset_key=key,
            role=BandRole.QA,
            resolution_m=30.0,
            dtype="uint8",
            nodata=nodata,
        )
        for name, key, nodata in _ENMAP_QUALITY
    ]
    return tuple(bands)


def _enmap() -> list[SensorProfile]:
    rule = RadiometryRule(
        kind=RadiometryKind.ENMAP_GAIN, scale=ENMAP_DEFAULT_GAIN, offset=0.0, unit="reflectance"
    )
    mask = MaskSpec(
        kind=MaskKind.ENMAP_QUALITY,
        bands=(
            "QL_QUALITY_CLASSES",
            "QL_QUALITY_CLOUD",
            "QL_QUALITY_CLOUDSHADOW",
            "QL_QUALITY_CIRRUS",
            "QL_QUALITY_HAZE",
            "QL_QUALITY_SNOW",
        ),
        description="CLASSES 0/3, CLOUD, CLOUDSHADOW or CIRRUS >= 2 invalid; haze, snow optional",
    )
    return [
        SensorProfile(
            sensor=SensorId.ENMAP_L2A,
            provider=provider,
            collections=("ENMAP_HSI_L2A",),
            bands=_enmap_bands(),
            default_band_names=ENMAP_DEFAULT_BANDS,
            radiometry=rule,
            mask=mask,
            notes=note,
        )
        for provider, note in (
            (Provider.DLR, "DLR EOC: gains per band in image eo:bands; wavelengths per scene"),
            (Provider.ARCHIVE, "offline archive: DLR keys"),
        )
    ]


def build_profiles() -> list[SensorProfile]:
    """Every default profile, one per ``(sensor, provider)`` pair."""
    return _sentinel2() + _landsat() + _sentinel1() + _enmap()


def build_collection_variants() -> list[tuple[str, SensorProfile]]:
    """Profiles that differ from their pair's default for one collection id."""
    es_s2 = next(
        p
        for p in _sentinel2()
        if p.provider is Provider.EARTH_SEARCH and p.sensor is SensorId.SENTINEL_2_L2A
    )
    legacy = dataclasses.replace(
        es_s2,
        collections=("sentinel-2-l2a",),
        radiometry=_s2_rule("s2:processing_baseline", RadiometryKind.S2_EARTH_SEARCH_LEGACY),
        reliable_radiometry=False,
        warning=_ES_LEGACY_WARNING,
        notes="ES v1 legacy: mixed offset application (D1); offset 0 where boa_offset_applied",
    )
    return [("sentinel-2-l2a", legacy)]
