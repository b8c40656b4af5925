"""Sensor profiles against every real STAC item in ../shared/fixtures (and tests/data).

Items come from plain JSON files and from the response bodies of vcrpy cassettes. For every item
of a profiled collection the test checks that :func:`profile_for_item` names the right
``(sensor, provider)`` pair, and that the profile resolves each band to an asset the item
carries with the dtype, nodata, scale/offset, wavelength and resolution the item declares,
except where SENSORS.md says the declaration is wrong (CDSE offset below PB 04.00, D4; Earth
Search legacy ``sentinel-2-l2a``, D1).

The expected pair is derived from where the file comes from and the documented item-id formats,
not from the hints the implementation uses.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.errors import NotFoundError
from schemas.profiles import BandRole, SensorProfile, profile_for_item
from schemas.qa import MaskKind
from schemas.sensors import Provider, SensorId

REPO = Path(__file__).resolve().parents[2]
SHARED_FIXTURES = Path(os.environ.get("EOFORGE_SHARED", REPO.parent / "shared")) / "fixtures"
LOCAL_DATA = REPO / "tests" / "data" / "stac"

#: Expected sensor per collection id; collections not listed have no profile.
SENSOR_OF_COLLECTION: dict[str, SensorId] = {
    "sentinel-2-l2a": SensorId.SENTINEL_2_L2A,
    "sentinel-2-c1-l2a": SensorId.SENTINEL_2_L2A,
    "sentinel2-l2a-example": SensorId.SENTINEL_2_L2A,  # stactools example (ES generator)
    "landsat-c2-l2": SensorId.LANDSAT_C2_L2,
    "sentinel-1-grd": SensorId.SENTINEL_1_GRD,
    "sentinel1-grd": SensorId.SENTINEL_1_GRD,  # stactools example (ES generator)
    "sentinel-1-rtc": SensorId.SENTINEL_1_RTC,
    "ENMAP_HSI_L2A": SensorId.ENMAP_L2A,
}

#: Provider per fixture folder (first path component under fixtures/ or tests/data/stac).
PROVIDER_OF_FOLDER: dict[str, Provider] = {
    "earth-search-v1": Provider.EARTH_SEARCH,
    "planetary-computer": Provider.PLANETARY_COMPUTER,
    "stactools-examples": Provider.EARTH_SEARCH,  # the generators behind Earth Search
    "enmap": Provider.DLR,
    "cdse": Provider.CDSE,
}

#: CDSE item ids are full SAFE names with the N-number; PC drops it (SENSORS.md §1).
CDSE_ID = re.compile(r"^S2[ABC]_MSIL2A_\d{8}T\d{6}_N\d{4}_R\d{3}_T\w{5}_\d{8}T\d{6}$")

#: Minimum number of distinct items per pair, so the suite cannot silently test nothing.
MINIMUM_ITEMS: dict[tuple[SensorId, Provider], int] = {
    (SensorId.SENTINEL_2_L2A, Provider.EARTH_SEARCH): 15,
    (SensorId.SENTINEL_2_L2A, Provider.PLANETARY_COMPUTER): 40,
    (SensorId.SENTINEL_2_L2A, Provider.CDSE): 1,
    (SensorId.LANDSAT_C2_L2, Provider.EARTH_SEARCH): 4,
    (SensorId.LANDSAT_C2_L2, Provider.PLANETARY_COMPUTER): 10,
    (SensorId.SENTINEL_1_GRD, Provider.EARTH_SEARCH): 10,
    (SensorId.SENTINEL_1_GRD, Provider.PLANETARY_COMPUTER): 2,
    (SensorId.SENTINEL_1_RTC, Provider.PLANETARY_COMPUTER): 1,
    (SensorId.ENMAP_L2A, Provider.DLR): 9,
}


# --------------------------------------------------------------------------------------------
# Collecting items
# --------------------------------------------------------------------------------------------


def _features(document: Any) -> Iterator[dict[str, Any]]:
    """Every STAC Item (a Feature with assets) anywhere in a JSON document."""
    if isinstance(document, dict):
        if document.get("type") == "Feature" and isinstance(document.get("assets"), dict):
            yield document
            return
        for value in document.values():
            yield from _features(value)
    elif isinstance(document, list):
        for value in document:
            yield from _features(value)


def _documents(path: Path) -> Iterator[Any]:
    if path.suffix in (".json", ".geojson"):
        yield json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".yaml":
        cassette = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
        for interaction in cassette.get("interactions", []):
            body = interaction.get("response", {}).get("body", {}).get("string")
            if isinstance(body, bytes):
                body = body.decode("utf-8")
            if isinstance(body, str) and body.lstrip().startswith(("{", "[")):
                yield json.loads(body)


def _collect(root: Path, folders: tuple[str, ...]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(relative file, folder, item)`` for every distinct item id per file."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for folder in folders:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not path.is_file() or "stac-schemas" in path.parts:
                continue
            seen: set[str] = set()
            for document in _documents(path):
                for item in _features(document):
                    if item.get("id") in seen:
                        continue
                    seen.add(str(item.get("id")))
                    top = path.relative_to(root).parts
                    sub = top[1] if top[0] == "stac" and len(top) > 1 else top[0]
                    found.append((str(path.relative_to(root)), sub, item))
    return found


def _all_items() -> list[tuple[str, str, dict[str, Any]]]:
    items: list[tuple[str, str, dict[str, Any]]] = []
    if SHARED_FIXTURES.is_dir():
        items += _collect(SHARED_FIXTURES, ("stac", "enmap"))
    return items


def _expected_pair(folder: str, item: dict[str, Any]) -> tuple[SensorId, Provider] | None:
    sensor = SENSOR_OF_COLLECTION.get(str(item.get("collection")))
    if sensor is None:
        return None
    provider = PROVIDER_OF_FOLDER[folder]
    if CDSE_ID.match(str(item.get("id"))):
        provider = Provider.CDSE
    return sensor, provider


SHARED_ITEMS = _all_items()
#: Copies in tests/data/stac/<provider folder>/ (see tests/data/PROVENANCE.md); always present.
LOCAL_ITEMS = [
    (str(path.relative_to(LOCAL_DATA)), path.parent.name, json.loads(path.read_text("utf-8")))
    for path in sorted(LOCAL_DATA.glob("*/*.json"))
]
PROFILED = [(f, d, i) for f, d, i in SHARED_ITEMS if _expected_pair(d, i) is not None]
UNPROFILED = [(f, d, i) for f, d, i in SHARED_ITEMS if _expected_pair(d, i) is None]


def _ids(entries: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    return [f"{path}::{item.get('id')}" for path, _, item in entries]


# --------------------------------------------------------------------------------------------
# Declared values in an item
# --------------------------------------------------------------------------------------------


def _declared(asset: dict[str, Any], band_index: int = 1) -> dict[str, Any]:
    """data_type, nodata, scale, offset, spatial_resolution declared for one band of an asset.

    Reads raster extension v1 (``raster:bands``) and v2 (asset-level ``raster:scale``,
    ``raster:offset``, ``nodata``, ``data_type``, as on CDSE).
    """
    declared: dict[str, Any] = {}
    bands = asset.get("raster:bands")
    if isinstance(bands, list) and len(bands) >= band_index:
        entry = bands[band_index - 1]
        for key in ("data_type", "nodata", "scale", "offset", "spatial_resolution"):
            if key in entry:
                declared[key] = entry[key]
    for key, name in (
        ("data_type", "data_type"),
        ("nodata", "nodata"),
        ("raster:scale", "scale"),
        ("raster:offset", "offset"),
    ):
        if key in asset and name not in declared:
            declared[name] = asset[key]
    return declared


def _eo_band(asset: dict[str, Any], band_index: int = 1) -> dict[str, Any] | None:
    bands = asset.get("eo:bands") or asset.get("bands")
    if isinstance(bands, list) and len(bands) >= band_index:
        entry = bands[band_index - 1]
        return entry if isinstance(entry, dict) else None
    return None


def _pb(props: dict[str, Any]) -> str:
    """Baseline as "NN.NN" (SENSORS.md §11.2), written independently of schemas.radiometry."""
    raw = str(props.get("s2:processing_baseline") or props["processing:version"])
    major, _, minor = raw.partition(".")
    return f"{int(major):02d}.{minor.ljust(2, '0')}"


def _expected_scale_offset(
    profile: SensorProfile, band_role: BandRole, props: dict[str, Any]
) -> tuple[float, float] | None:
    """SENSORS.md rule for S2 reflectance, independent of the code under test."""
    if profile.sensor is not SensorId.SENTINEL_2_L2A or band_role is not BandRole.REFLECTANCE:
        return None
    if props.get("earthsearch:boa_offset_applied") is True:
        return 1e-4, 0.0
    return 1e-4, (-0.1 if _pb(props) >= "04.00" and _pb(props) != "99.99" else 0.0)


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_fixture_items_cover_every_pair(shared_fixtures: Path) -> None:
    assert shared_fixtures == SHARED_FIXTURES
    counts = Counter(_expected_pair(d, i) for _, d, i in PROFILED)
    for pair, minimum in MINIMUM_ITEMS.items():
        assert counts[pair] >= minimum, (pair, counts[pair])
    assert len(PROFILED) >= 150
    assert len(UNPROFILED) >= 20  # sentinel-2-l1c, cop-dem, EnMAP L0, S5P, ...


def test_local_copies_cover_every_provider() -> None:
    pairs = {_expected_pair(folder, item) for _, folder, item in LOCAL_ITEMS}
    assert len(LOCAL_ITEMS) >= 10
    assert {pair[1] for pair in pairs if pair} == {
        Provider.EARTH_SEARCH,
        Provider.PLANETARY_COMPUTER,
        Provider.CDSE,
        Provider.DLR,
    }
    assert {pair[0] for pair in pairs if pair} == set(SensorId)


@pytest.mark.parametrize(("path", "folder", "item"), LOCAL_ITEMS, ids=_ids(LOCAL_ITEMS))
def test_local_real_item(path: str, folder: str, item: dict[str, Any]) -> None:
    _check_item(folder, item)


@pytest.mark.parametrize(("path", "folder", "item"), UNPROFILED, ids=_ids(UNPROFILED))
def test_unprofiled_collections_are_refused(
    shared_fixtures: Path, path: str, folder: str, item: dict[str, Any]
) -> None:
    with pytest.raises(NotFoundError, match="no sensor profile"):
        profile_for_item(item)


@pytest.mark.parametrize(("path", "folder", "item"), PROFILED, ids=_ids(PROFILED))
def test_real_item(shared_fixtures: Path, path: str, folder: str, item: dict[str, Any]) -> None:
    _check_item(folder, item)


def _check_item(folder: str, item: dict[str, Any]) -> None:
    """Check one item against its profile (see the module docstring)."""
    expected = _expected_pair(folder, item)
    assert expected is not None
    profile = profile_for_item(item)
    assert profile.key == expected
    assert item["collection"] in profile.collections or folder == "stactools-examples"

    legacy = profile.provider is Provider.EARTH_SEARCH and item["collection"] == "sentinel-2-l2a"
    if profile.sensor is SensorId.SENTINEL_2_L2A:
        assert profile.reliable_radiometry is (not legacy)
        assert (profile.warning is not None) is legacy
    if profile.sensor is SensorId.SENTINEL_1_GRD:
        assert profile.ml_ready is False and profile.radiometry.calibrated is False

    props = item["properties"]
    assets = item["assets"]
    if not profile.supports_item(item):
        # Landsat 4-7 share the collection but not the OLI band table (SENSORS.md §3).
        assert profile.sensor is SensorId.LANDSAT_C2_L2
        assert props["platform"] not in ("landsat-8", "landsat-9")
        return

    # Default bands: every asset is there (S1: the item's own polarisations).
    if profile.sensor in (SensorId.SENTINEL_1_GRD, SensorId.SENTINEL_1_RTC):
        wanted = [profile.band(pol) for pol in props["sar:polarizations"]]
        assert wanted, "S1 item without polarisations"
    else:
        wanted = list(profile.default_bands())
    for band in wanted:
        assert band.asset_key in assets, f"{band.name} -> {band.asset_key} missing"

    # Mask layers are there.
    if profile.mask.kind is MaskKind.NODATA:
        assert profile.mask.bands == ()
    for band in profile.mask_bands():
        assert band.asset_key in assets, f"mask layer {band.name} -> {band.asset_key} missing"

    checked = 0
    for band in profile.bands:
        asset = assets.get(band.asset_key)
        if asset is None:
            continue
        index = band.asset_band or 1
        declared = _declared(asset, index)
        scale, offset = profile.scale_offset_for_item(band.name, item)
        if "data_type" in declared:
            assert band.dtype == declared["data_type"], band.name
        if "nodata" in declared:
            assert band.nodata == pytest.approx(float(declared["nodata"])), band.name
        declared_so = (declared.get("scale", 1.0), declared.get("offset", 0.0))
        oracle = _expected_scale_offset(profile, band.role, props)
        if oracle is not None:
            assert (scale, offset) == pytest.approx(oracle, abs=1e-12), band.name
        wrong_declaration = (
            profile.provider is Provider.CDSE and _pb(props) < "04.00"
        ) or props.get("earthsearch:boa_offset_applied") is True
        if ("scale" in declared or "offset" in declared) and not wrong_declaration:
            assert (scale, offset) == pytest.approx(declared_so, abs=1e-12), band.name
        elif legacy and "offset" in declared:
            # D1: the legacy item declares -0.1 although its pixels are already shifted.
            assert declared_so[1] == pytest.approx(-0.1) and offset == 0.0
        resolution = declared.get("spatial_resolution")
        if resolution is None and band.role is not BandRole.TEMPERATURE:
            resolution = asset.get("gsd")
        if resolution is not None and band.asset_band is None:
            assert band.resolution_m == pytest.approx(float(resolution)), band.name
        eo = _eo_band(asset, index)
        if eo is not None and band.center_wavelength_um is not None:
            declared_wl = eo.get("center_wavelength") or eo.get("eo:center_wavelength")
            if declared_wl is not None:
                # Nominal values; S2A and S2B differ by up to 0.017 µm (B12).
                assert band.center_wavelength_um == pytest.approx(declared_wl, abs=0.02)
            declared_name = str(eo.get("name", ""))
            if profile.sensor is SensorId.SENTINEL_2_L2A:
                # nir08 is B8A here, never SR_B5 (D5); older ES items name bands by key.
                assert declared_name in (band.name, band.common_name), band.name
            if profile.sensor is SensorId.LANDSAT_C2_L2:
                assert declared_name.rsplit("_B", 1)[-1] == band.name.rsplit("_B", 1)[-1]
        checked += 1
    assert checked >= len(wanted)

    if profile.sensor is SensorId.ENMAP_L2A:
        image = assets["image"]
        assert (
            len(image["eo:bands"])
            == 224
            == len([b for b in profile.bands if b.role is BandRole.REFLECTANCE])
        )
        assert profile.band("B001").nodata == int(props["enmap:nodata"])
        last = image["eo:bands"][-1]
        assert profile.scale_offset_for_item("B224", item) == pytest.approx(
            (last["enmap:gain_of_band"], last["enmap:offset_of_band"])
        )
