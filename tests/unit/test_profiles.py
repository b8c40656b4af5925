"""Sensor profile table and lookup: pairs, band names, scaling rules, item inference."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from schemas.archive import ARCHIVE_COLLECTIONS
from schemas.errors import InvalidInputError, NotFoundError
from schemas.profiles import (
    BandRole,
    RadiometryKind,
    all_profiles,
    get_profile,
    has_profile,
    profile_for_item,
)
from schemas.qa import MaskKind
from schemas.sensors import Provider, SensorId

S2, LS, RTC, GRD, ENMAP = (
    SensorId.SENTINEL_2_L2A,
    SensorId.LANDSAT_C2_L2,
    SensorId.SENTINEL_1_RTC,
    SensorId.SENTINEL_1_GRD,
    SensorId.ENMAP_L2A,
)
ES, PC, CDSE, DLR, ARCHIVE = (
    Provider.EARTH_SEARCH,
    Provider.PLANETARY_COMPUTER,
    Provider.CDSE,
    Provider.DLR,
    Provider.ARCHIVE,
)
LOCAL = Path(__file__).resolve().parents[1] / "data" / "stac"

REQUIRED_PAIRS = {
    (S2, ES): ("sentinel-2-c1-l2a", "sentinel-2-l2a"),
    (LS, ES): ("landsat-c2-l2",),
    (GRD, ES): ("sentinel-1-grd",),
    (S2, PC): ("sentinel-2-l2a",),
    (LS, PC): ("landsat-c2-l2",),
    (RTC, PC): ("sentinel-1-rtc",),
    (GRD, PC): ("sentinel-1-grd",),
    (S2, CDSE): ("sentinel-2-l2a",),
    (ENMAP, DLR): ("ENMAP_HSI_L2A",),
    (S2, ARCHIVE): ("sentinel-2-l2a",),
    (LS, ARCHIVE): ("landsat-c2-l2",),
    (RTC, ARCHIVE): ("sentinel-1-rtc",),
    (ENMAP, ARCHIVE): ("ENMAP_HSI_L2A",),
}


def _local(folder: str, item_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((LOCAL / folder / f"{item_id}.json").read_text("utf-8"))
    return data


# --- Registry --------------------------------------------------------------------------------


def test_required_pairs_and_collections() -> None:
    keys = [profile.key for profile in all_profiles()]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(REQUIRED_PAIRS)
    for pair, collections in REQUIRED_PAIRS.items():
        assert has_profile(*pair)
        assert get_profile(*pair).collections == collections
    assert not has_profile(ENMAP, ES)
    assert not has_profile(RTC, ES)
    assert not has_profile(S2, Provider.GENERIC)


def test_unknown_pair_lists_known_pairs() -> None:
    with pytest.raises(NotFoundError) as info:
        get_profile(ENMAP, ES)
    message = str(info.value)
    assert "enmap-l2a on earth-search" in message
    assert "enmap-l2a/dlr" in message and "sentinel-1-rtc/planetary-computer" in message
    with pytest.raises(NotFoundError, match="unknown sensor"):
        get_profile("modis", PC)
    with pytest.raises(NotFoundError, match="sentinel-2-c1-l2a"):
        get_profile(S2, ES, collection="sentinel-2-l1c")


def test_archive_profiles_match_archive_contract() -> None:
    for sensor, collection in ARCHIVE_COLLECTIONS.items():
        assert get_profile(sensor, ARCHIVE).collection == collection


def test_profiles_are_hashable_values() -> None:
    first = get_profile(S2, PC)
    assert hash(first) == hash(get_profile(S2, PC))
    with pytest.raises(AttributeError):
        first.warning = "x"  # type: ignore[misc]
    from dask.base import tokenize

    legacy = get_profile(S2, ES, collection="sentinel-2-l2a")
    assert tokenize(first) == tokenize(get_profile(S2, PC))
    assert len({tokenize(first), tokenize(get_profile(S2, ES)), tokenize(legacy)}) == 3


# --- Band names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pair", "name", "canonical", "asset"),
    [
        ((S2, ES), "nir08", "B8A", "nir08"),
        ((S2, PC), "nir08", "B8A", "B8A"),
        ((S2, CDSE), "nir08", "B8A", "B8A_20m"),
        ((S2, ARCHIVE), "b04", "B04", "B04"),
        ((S2, CDSE), "red", "B04", "B04_10m"),
        ((S2, ES), "rededge2", "B06", "rededge2"),
        ((S2, ES), "SCL", "SCL", "scl"),
        ((S2, CDSE), "scl", "SCL", "SCL_20m"),
        ((LS, ES), "nir08", "SR_B5", "nir08"),
        ((LS, PC), "SR_B1", "SR_B1", "coastal"),
        ((LS, ARCHIVE), "lwir11", "ST_B10", "lwir11"),
        ((LS, PC), "QA_RADSAT", "QA_RADSAT", "qa_radsat"),
        ((RTC, PC), "vv", "VV", "vv"),
        ((GRD, ES), "HH", "HH", "hh"),
        ((ENMAP, DLR), "b224", "B224", "image"),
        (
            (ENMAP, ARCHIVE),
            "QL_QUALITY_CLOUDSHADOW",
            "QL_QUALITY_CLOUDSHADOW",
            "quality_cloud_shadow",
        ),
        ((ENMAP, DLR), "QL_PIXELMASK", "QL_PIXELMASK", "defective_pixel_mask"),
    ],
)
def test_band_resolution(
    pair: tuple[SensorId, Provider], name: str, canonical: str, asset: str
) -> None:
    profile = get_profile(*pair)
    band = profile.band(name)
    assert band.name == canonical
    assert profile.asset_key(name) == asset


def test_nir08_never_shared_between_s2_and_landsat() -> None:
    s2 = get_profile(S2, ES).band("nir08")
    landsat = get_profile(LS, ES).band("nir08")
    assert (s2.name, landsat.name) == ("B8A", "SR_B5")
    assert s2.resolution_m == 20.0 and landsat.resolution_m == 30.0


def test_unknown_band_names_valid_ones() -> None:
    with pytest.raises(InvalidInputError) as info:
        get_profile(S2, PC).band("B10")  # L1C only
    message = str(info.value)
    assert "'B10'" in message and "'B8A'" in message and "'swir16'" in message
    with pytest.raises(InvalidInputError, match=r"names 224 bands .*B001\.\.B224"):
        get_profile(ENMAP, DLR).band("image")  # shared by 224 bands: not an alias
    with pytest.raises(InvalidInputError) as enmap_info:
        get_profile(ENMAP, DLR).band("B225")
    assert "B001..B224" in str(enmap_info.value) and "QL_PIXELMASK" in str(enmap_info.value)
    assert not get_profile(ENMAP, DLR).has_band("image")


def test_sentinel2_band_table() -> None:
    profile = get_profile(S2, PC)
    assert [b.name for b in profile.default_bands()] == [
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
    ]  # fmt: skip
    resolutions = {b.name: b.resolution_m for b in profile.default_bands()}
    assert resolutions["B01"] == resolutions["B09"] == 60.0
    assert resolutions["B02"] == resolutions["B08"] == 10.0
    assert resolutions["B8A"] == resolutions["B12"] == 20.0
    scl = profile.band("SCL")
    assert scl.categorical and scl.dtype == "uint8" and scl.nodata == 0
    assert not profile.band("B04").categorical
    assert [b.name for b in profile.mask_bands()] == ["SCL"]
    assert profile.mask.kind is MaskKind.SCL


def test_enmap_band_table() -> None:
    profile = get_profile(ENMAP, DLR)
    reflectance = [b for b in profile.bands if b.role is BandRole.REFLECTANCE]
    assert len(reflectance) == 224
    assert [b.asset_band for b in reflectance] == list(range(1, 225))
    assert {b.dtype for b in reflectance} == {"int16"}
    assert {b.nodata for b in reflectance} == {-32768}
    defaults = [b.name for b in profile.default_bands()]
    assert len(defaults) == 202
    dropped = {f"B{i:03d}" for i in [*range(127, 142), *range(161, 168)]}
    assert dropped.isdisjoint(defaults) and "B126" in defaults and "B168" in defaults
    assert [b.asset_key for b in profile.mask_bands()] == [
        "quality_classes",
        "quality_cloud",
        "quality_cloud_shadow",
        "quality_cirrus",
        "quality_haze",
        "quality_snow",
    ]


def test_archive_asset_keys() -> None:
    landsat = get_profile(LS, ARCHIVE)
    assert [landsat.asset_key(n) for n in landsat.band_names] == [
        "coastal", "blue", "green", "red", "nir08", "swir16", "swir22",
        "lwir11", "qa_pixel", "qa_radsat",
    ]  # fmt: skip
    rtc = get_profile(RTC, ARCHIVE)
    assert [(b.asset_key, b.dtype, b.nodata) for b in rtc.default_bands()] == [
        ("vv", "float32", -32768.0),
        ("vh", "float32", -32768.0),
    ]
    enmap = get_profile(ENMAP, ARCHIVE)
    assert {b.asset_key for b in enmap.bands} == {
        "image", "quality_classes", "quality_cloud", "quality_cloud_shadow", "quality_haze",
        "quality_cirrus", "quality_snow", "quality_testflags", "defective_pixel_mask",
    }  # fmt: skip
    assert get_profile(S2, ARCHIVE).asset_key("SCL") == "SCL"


# --- Scale and offset ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pair", "props", "expected"),
    [
        ((S2, PC), {"s2:processing_baseline": "04.00"}, (1e-4, -0.1)),
        ((S2, PC), {"s2:processing_baseline": "02.14"}, (1e-4, 0.0)),
        ((S2, ARCHIVE), {"s2:processing_baseline": "05.00"}, (1e-4, -0.1)),
        ((S2, ES), {"s2:processing_baseline": "05.11"}, (1e-4, -0.1)),
        ((S2, CDSE), {"processing:version": "5.10"}, (1e-4, -0.1)),
        ((S2, CDSE), {"processing:version": "2.14"}, (1e-4, 0.0)),
        ((S2, CDSE), {"processing:version": "99.99"}, (1e-4, 0.0)),
    ],
)
def test_s2_scale_offset_branches_on_baseline(
    pair: tuple[SensorId, Provider], props: dict[str, str], expected: tuple[float, float]
) -> None:
    profile = get_profile(*pair)
    assert profile.scale_offset("B04", props) == pytest.approx(expected)
    # The same item at another sensing date scales the same: date never matters.
    dated = {**props, "datetime": "2019-01-01T00:00:00Z"}
    assert profile.scale_offset("red", dated) == pytest.approx(expected)
    assert profile.scale_offset("SCL", props) == (1.0, 0.0)


def test_s2_scale_offset_needs_the_baseline() -> None:
    with pytest.raises(InvalidInputError, match="processing baseline"):
        get_profile(S2, PC).scale_offset("B04", {"datetime": "2023-01-01T00:00:00Z"})
    assert get_profile(S2, CDSE).baseline_property == "processing:version"
    assert get_profile(S2, PC).baseline_property == "s2:processing_baseline"


def test_cdse_declared_offset_is_ignored_below_pb_04() -> None:
    item = _local("cdse", "S2A_MSIL2A_20241107T113311_N0511_R080_T32VKR_20241107T123948")
    profile = profile_for_item(item)
    assert profile.key == (S2, CDSE)
    assert item["assets"]["B04_10m"]["raster:offset"] == -0.1
    assert profile.scale_offset_for_item("B04", item) == pytest.approx((1e-4, -0.1))
    old = copy.deepcopy(item)
    old["properties"]["processing:version"] = "2.14"
    # The declaration stays -0.1 (a constant, SENSORS.md D4); the rule gives 0.
    assert old["assets"]["B04_10m"]["raster:offset"] == -0.1
    assert profile.scale_offset_for_item("B04", old) == (1e-4, 0.0)


def test_earth_search_legacy_variant() -> None:
    legacy = get_profile(S2, ES, collection="sentinel-2-l2a")
    assert legacy.reliable_radiometry is False
    assert legacy.warning is not None and "sentinel-2-c1-l2a" in legacy.warning
    assert legacy.radiometry.kind is RadiometryKind.S2_EARTH_SEARCH_LEGACY
    assert get_profile(S2, ES).reliable_radiometry is True
    assert get_profile(S2, ES, collection="sentinel-2-c1-l2a") is get_profile(S2, ES)
    applied = {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}
    not_applied = {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False}
    assert legacy.scale_offset("red", applied) == (1e-4, 0.0)
    assert legacy.scale_offset("red", not_applied) == pytest.approx((1e-4, -0.1))
    # The c1 collection ignores that flag: its COGs are raw DN.
    assert get_profile(S2, ES).scale_offset("red", applied) == pytest.approx((1e-4, -0.1))
    item = _local("earth-search-v1", "S2B_20EPT_20250731_0_L2A")
    assert profile_for_item(item).reliable_radiometry is False


def test_landsat_rules() -> None:
    profile = get_profile(LS, PC)
    assert profile.scale_offset("red") == (2.75e-5, -0.2)
    assert profile.scale_offset("ST_B10") == (0.00341802, 149.0)
    assert profile.band("ST_B10").unit == "K"
    assert profile.scale_offset("QA_PIXEL") == (1.0, 0.0)
    assert profile.band("QA_PIXEL").nodata == 1 and profile.band("QA_RADSAT").nodata is None
    assert profile.supports_item({"properties": {"platform": "landsat-9"}})
    assert not profile.supports_item({"properties": {"platform": "landsat-7"}})
    assert [b.name for b in profile.mask_bands()] == ["QA_PIXEL", "QA_RADSAT"]


def test_sentinel1_rules() -> None:
    rtc = get_profile(RTC, PC)
    assert rtc.scale_offset("VV") == (1.0, 0.0)
    assert rtc.radiometry.to_db and rtc.radiometry.unit == "linear power"
    assert rtc.ml_ready and rtc.mask.kind is MaskKind.NODATA
    for provider in (ES, PC):
        grd = get_profile(GRD, provider)
        assert grd.ml_ready is False and grd.warning is not None and "D8" in grd.warning
        assert grd.band("vv").dtype == "uint16" and grd.band("vv").nodata == 0
        assert grd.radiometry.calibrated is False


def test_enmap_gains_from_item() -> None:
    item = _local(
        "enmap", "ENMAP01-____L2A-DT0000141488_20250708T054627Z_002_V010502_20250709T050335Z"
    )
    profile = profile_for_item(item)
    assert profile.key == (ENMAP, DLR)
    assert profile.scale_offset_for_item("B050", item) == pytest.approx((1e-4, 0.0))
    changed = copy.deepcopy(item)
    changed["assets"]["image"]["eo:bands"][49]["enmap:gain_of_band"] = 2e-4
    assert profile.scale_offset_for_item("B050", changed) == pytest.approx((2e-4, 0.0))
    assert profile.scale_offset_for_item("B051", changed) == pytest.approx((1e-4, 0.0))
    assert profile.scale_offset("B050") == (1e-4, 0.0)


# --- Inference from items --------------------------------------------------------------------


def test_archive_items_are_recognised_before_mirrored_properties() -> None:
    item = copy.deepcopy(
        _local("planetary-computer", "S2A_MSIL2A_20240823T174901_R141_T13TDE_20240824T013055")
    )
    assert profile_for_item(item).key == (S2, PC)
    for key, asset in item["assets"].items():
        asset["href"] = f"data/sentinel-2-l2a/{item['id']}/{key}.tif"
    item["links"] = []
    assert profile_for_item(item).key == (S2, ARCHIVE)
    served = copy.deepcopy(item)
    for asset in served["assets"].values():
        asset["href"] = "http://127.0.0.1:8123/" + asset["href"]
    assert profile_for_item(served).key == (S2, ARCHIVE)
    assert profile_for_item(item, provider=PC).key == (S2, PC)


def test_items_without_hints_fall_back_to_asset_keys() -> None:
    item = copy.deepcopy(
        _local("planetary-computer", "S2A_MSIL2A_20240823T174901_R141_T13TDE_20240824T013055")
    )
    item["links"] = []
    item["properties"] = {"s2:product_type": "S2MSI2A"}
    for asset in item["assets"].values():
        asset["href"] = "B.tif"
    # PC and the archive share keys; ties go to the first registered (PC before archive).
    assert profile_for_item(item).key == (S2, PC)
    es_item = _local("earth-search-v1", "S2A_T13TDE_20240402T174230_L2A")
    stripped = {**es_item, "links": [], "properties": {"s2:product_type": "S2MSI2A"}}
    stripped["assets"] = {k: {"href": "x.tif"} for k in es_item["assets"]}
    assert profile_for_item(stripped).key == (S2, ES)
    stripped["assets"] = {"thumbnail": {"href": "x.jpg"}}
    with pytest.raises(NotFoundError, match="provider"):
        profile_for_item(stripped)


def test_unprofiled_item_is_refused() -> None:
    with pytest.raises(NotFoundError, match="sentinel-2-l1c"):
        profile_for_item(
            {"id": "x", "collection": "sentinel-2-l1c", "properties": {}, "assets": {}}
        )
