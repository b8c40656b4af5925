"""EnMAP L2A deliveries: the writer's file set and XML, the reader (folder, XML, zip), the item."""

from __future__ import annotations

import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipelines.archive.enmap import (
    ENMAP_COLLECTION,
    ENMAP_NODATA,
    ENMAP_SWIR_BANDS,
    ENMAP_VNIR_BANDS,
    LAYER_ASSET_KEYS,
    PRODUCT_NAME_RE,
    QUALITY_LAYERS,
    SPECTRAL_EARTH_DROP,
    EnmapDelivery,
    enmap_band_table,
    enmap_item,
    read_enmap_delivery,
    spectral_earth_keep,
    write_enmap_delivery,
    zip_delivery,
)
from pipelines.archive.stac_validate import validate_item
from schemas.errors import ConflictError, InvalidInputError, NotFoundError

NAME = "ENMAP01-____L2A-DT0000140097_20250708T104407Z_001_V010502_20250709T035921Z"
TRANSFORM = Affine(30.0, 0.0, 467_085.0, 0.0, -30.0, 6_321_105.0)
START = datetime(2025, 7, 8, 10, 44, 7, 36_933, tzinfo=UTC)
END = datetime(2025, 7, 8, 10, 44, 11, 484_701, tzinfo=UTC)
H = W = 40
EMPTY_BAND = 131  # 1-based band filled with nodata (a DLR "no-data band")


def _scene(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    refl = (rng.random((224, H, W)) * 0.6).astype(np.float32)
    refl[:, :4, :6] = np.nan  # outside the swath
    refl[EMPTY_BAND - 1] = np.nan
    quality = {k: np.zeros((H, W), np.uint8) for k in QUALITY_LAYERS}
    quality["CLASSES"][:] = 1
    quality["CLASSES"][:, 30:] = 2
    quality["CLASSES"][:4, :6] = 3
    quality["CLOUD"][10:20, 10:20] = 1
    quality["CIRRUS"][0:10, 20:30] = 2
    quality["TESTFLAGS"][5, 5] = 34
    return refl, quality


def _write(out: Path, name: str = NAME, **kw: Any) -> Path:
    refl, quality = _scene()
    wl, fw = enmap_band_table()
    args: dict[str, Any] = {
        "product_name": name,
        "reflectance": refl,
        "quality": quality,
        "pixelmask": None,
        "transform": TRANSFORM,
        "epsg": 32633,
        "start": START,
        "end": END,
        "cloud_cover": 6.25,
        "wavelengths_nm": wl,
        "fwhm_nm": fw,
        "extra": {"sun_azimuth": 171.08, "sun_elevation": 55.31, "relative_orbit": 17597},
    }
    args.update(kw)
    return write_enmap_delivery(out, **args)


@pytest.fixture(scope="module")
def delivery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("enmap"))


@pytest.fixture(scope="module")
def delivery(delivery_dir: Path) -> EnmapDelivery:
    return read_enmap_delivery(delivery_dir)


def _dlr_l2a_items(fixtures: Path) -> list[dict[str, Any]]:
    page = json.loads(
        (fixtures / "enmap" / "extracted" / "dlr-eoc_search_page_enmap_l2a.json").read_text()
    )
    return [f for f in page["features"] if f["collection"] == ENMAP_COLLECTION]


# --- band table -----------------------------------------------------------------------------


def test_band_table_is_224_ascending_and_partitioned() -> None:
    wl, fw = enmap_band_table()
    assert wl.shape == fw.shape == (224,)
    assert wl[0] == pytest.approx(418.416) and wl[-1] == pytest.approx(2445.3)
    assert np.all(np.diff(wl) > 0)
    assert np.all((fw > 5.0) & (fw < 12.0))
    vnir, swir = set(ENMAP_VNIR_BANDS), set(ENMAP_SWIR_BANDS)
    assert vnir.isdisjoint(swir) and vnir | swir == set(range(1, 225))
    assert max(wl[b - 1] for b in vnir) < 1000.0 < max(wl[b - 1] for b in swir)
    assert min(wl[b - 1] for b in swir) == pytest.approx(903.87)


def test_spectral_earth_band_removal() -> None:
    wl, _ = enmap_band_table()
    keep = spectral_earth_keep()
    assert len(keep) == 202 and len(SPECTRAL_EARTH_DROP) == 22
    dropped = sorted(wl[b - 1] for b in SPECTRAL_EARTH_DROP)
    # The two water-vapour windows (SENSORS.md §5.3): ~1295-1519 nm and ~1739-1968 nm.
    assert all(1290 < v < 1520 or 1720 < v < 1970 for v in dropped)
    assert not set(keep) & SPECTRAL_EARTH_DROP


def test_band_table_matches_dlr_items(shared_fixtures: Path) -> None:
    wl, fw = enmap_band_table()
    for item in _dlr_l2a_items(shared_fixtures):
        bands = item["assets"]["image"]["eo:bands"]
        np.testing.assert_allclose([b["center_wavelength"] for b in bands], wl, atol=1e-6)
        np.testing.assert_allclose([b["full_width_half_max"] for b in bands], fw, atol=1e-6)


# --- writer ---------------------------------------------------------------------------------


def test_writer_file_set(delivery_dir: Path) -> None:
    assert delivery_dir.name == NAME and PRODUCT_NAME_RE.match(NAME)
    suffixes = sorted(p.name[len(NAME) :] for p in delivery_dir.iterdir())
    assert suffixes == sorted(
        [
            "-SPECTRAL_IMAGE.TIF",
            "-METADATA.XML",
            "-QL_PIXELMASK.TIF",
            "-QL_VNIR.TIF",
            "-QL_SWIR.TIF",
            *[f"-QL_QUALITY_{k}.TIF" for k in QUALITY_LAYERS],
        ]
    )
    assert not list(delivery_dir.parent.glob(".*partial"))


def test_spectral_image_scaling_and_nodata(delivery_dir: Path) -> None:
    refl, _ = _scene()
    with rasterio.open(delivery_dir / f"{NAME}-SPECTRAL_IMAGE.TIF") as src:
        assert src.count == 224 and src.dtypes[0] == "int16" and src.nodata == ENMAP_NODATA
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.crs.to_epsg() == 32633 and src.transform == TRANSFORM
        dn = src.read()
    assert np.array_equal(dn == ENMAP_NODATA, np.isnan(refl))
    # DN = refl / 1e-4, rounded: the round trip is exact to half a DN.
    back = np.where(dn == ENMAP_NODATA, np.nan, dn * 1e-4)
    assert np.nanmax(np.abs(back - refl)) <= 0.5e-4 + 1e-7
    assert dn[0, 20, 20] == round(float(refl[0, 20, 20]) * 10_000)


def test_quality_layers_and_quicklooks(delivery_dir: Path) -> None:
    _, quality = _scene()
    for key in QUALITY_LAYERS:
        with rasterio.open(delivery_dir / f"{NAME}-QL_QUALITY_{key}.TIF") as src:
            assert src.dtypes[0] == "uint8" and src.transform == TRANSFORM
            np.testing.assert_array_equal(src.read(1), quality[key])
            assert src.nodata == (3 if key == "CLASSES" else None)
    for layer in ("QL_VNIR", "QL_SWIR"):
        with rasterio.open(delivery_dir / f"{NAME}-{layer}.TIF") as src:
            ql = src.read()
        assert ql.shape == (3, H, W) and ql.dtype == np.uint8
        assert np.all(ql[:, :4, :6] == 0) and np.all(ql[:, 10:, 10:] > 0)


def test_metadata_xml_structure(delivery_dir: Path) -> None:
    root = ET.parse(delivery_dir / f"{NAME}-METADATA.XML").getroot()
    wl, fw = enmap_band_table()
    assert root.tag == "level_X"
    assert root.findtext("base/level") == "L2A"
    assert root.findtext("base/temporalCoverage/startTime") == "2025-07-08T10:44:07.036933Z"
    bands = root.findall("specific/bandCharacterisation/bandID")
    assert [b.get("number") for b in bands] == [str(i) for i in range(1, 225)]
    assert float(bands[90].findtext("wavelengthCenterOfBand") or "nan") == wl[90]
    assert float(bands[90].findtext("FWHMOfBand") or "nan") == fw[90]
    assert bands[0].findtext("GainOfBand") == "0.0001"
    assert bands[0].findtext("OffsetOfBand") == "0"
    vnir = root.findtext("specific/vnirProductQuality/expectedChannelsList") or ""
    swir = root.findtext("specific/swirProductQuality/expectedChannelsList") or ""
    assert tuple(int(v) for v in vnir.split(",")) == ENMAP_VNIR_BANDS
    assert tuple(int(v) for v in swir.split(",")) == ENMAP_SWIR_BANDS
    merge = root.find("product/image/merge")
    assert merge is not None
    assert (merge.findtext("channels"), merge.findtext("rows"), merge.findtext("columns")) == (
        "224",
        str(H),
        str(W),
    )
    assert root.findtext("product/ortho/projection") == "UTM_Zone33_North"
    assert root.findtext("product/ortho/mapInfo/upperLeftX") == "467085"
    assert root.findtext("product/ortho/mapInfo/upperLeftY") == "6321105"
    assert root.findtext("specific/cloudCover") == "6.25"
    stats = root.findall("product/bandStatistics/bandID")
    empty = stats[EMPTY_BAND - 1]
    assert (empty.findtext("mean"), empty.findtext("stdDeviation")) == ("-1000000", "0")
    assert float(stats[0].findtext("mean") or "nan") == pytest.approx(3000, rel=0.05)
    frames = [
        p.findtext("frame") for p in root.findall("base/spatialCoverage/boundingPolygon/point")
    ]
    assert frames == ["upper_left", "lower_left", "lower_right", "upper_right", "upper_left"]
    listed = {f.findtext("name") for f in root.findall("product/productFileInformation/file")}
    assert listed == {p.name for p in delivery_dir.iterdir()}


def test_writer_is_byte_reproducible(tmp_path: Path, delivery_dir: Path) -> None:
    again = _write(tmp_path)
    for path in delivery_dir.iterdir():
        twin = again / path.name
        assert (
            hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest()
        ), path.name
    z1, z2 = zip_delivery(again, tmp_path / "a.ZIP"), zip_delivery(again, tmp_path / "b.ZIP")
    assert z1.read_bytes() == z2.read_bytes()


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    refl, quality = _scene()
    with pytest.raises(InvalidInputError, match="not an EnMAP product name"):
        _write(tmp_path, name="ENMAP-L2A-something")
    with pytest.raises(InvalidInputError, match="only L2A"):
        _write(tmp_path, name=NAME.replace("L2A", "L1B"))
    with pytest.raises(InvalidInputError, match="missing \\['SNOW'\\]"):
        _write(tmp_path, quality={k: v for k, v in quality.items() if k != "SNOW"})
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        _write(tmp_path, start=datetime(2025, 7, 8, 10, 44))
    with pytest.raises(InvalidInputError, match="disagree"):
        _write(tmp_path, reflectance=refl[:100])
    with pytest.raises(InvalidInputError, match="unknown extra keys"):
        _write(tmp_path, extra={"sun_zenith": 30.0})
    assert list(tmp_path.iterdir()) == []
    _write(tmp_path)
    with pytest.raises(ConflictError, match="already exists"):
        _write(tmp_path)


# --- reader ---------------------------------------------------------------------------------


def test_reader_metadata(delivery: EnmapDelivery) -> None:
    wl, fw = enmap_band_table()
    assert delivery.product_name == NAME
    assert delivery.epsg == 32633 and delivery.transform == TRANSFORM
    assert delivery.shape == (H, W) and delivery.n_bands == 224
    assert delivery.start == START and delivery.end == END
    assert delivery.cloud_cover == 6.25
    assert delivery.wavelengths_nm == tuple(wl) and delivery.fwhm_nm == tuple(fw)
    assert set(delivery.gains) == {1e-4} and set(delivery.offsets) == {0.0}
    assert delivery.bad_bands == (EMPTY_BAND,)
    assert delivery.vnir_bands == ENMAP_VNIR_BANDS and delivery.swir_bands == ENMAP_SWIR_BANDS
    assert set(delivery.files) == set(LAYER_ASSET_KEYS)
    assert delivery.cog_layers == frozenset(LAYER_ASSET_KEYS) - {"METADATA"}
    assert delivery.processing_version == "01.05.02"
    # 30 of 40 columns are land, 10 water, within the 40x40 - 4x6 scene pixels.
    assert delivery.properties["water_cover"] == pytest.approx(100 * 400 / 1576, abs=0.01)
    assert delivery.properties["relative_orbit"] == 17597
    lon, lat = delivery.footprint_lonlat[0]
    assert 14.4 < lon < 14.5 and 57.0 < lat < 57.1  # UTM 33N corner near Växjö
    assert delivery.footprint_lonlat[0] == delivery.footprint_lonlat[-1]


def test_reader_accepts_xml_path_and_zip(delivery_dir: Path, delivery: EnmapDelivery) -> None:
    from_xml = read_enmap_delivery(delivery_dir / f"{NAME}-METADATA.XML")
    assert from_xml.files == delivery.files
    zipped = zip_delivery(delivery_dir, delivery_dir.parent / "zips" / f"{NAME}.ZIP")
    with zipfile.ZipFile(zipped) as zf:
        assert f"{NAME}/{NAME}-SPECTRAL_IMAGE.TIF" in zf.namelist()
    from_zip = read_enmap_delivery(zipped)
    assert from_zip.files["SPECTRAL_IMAGE"].startswith("/vsizip/")
    assert from_zip.wavelengths_nm == delivery.wavelengths_nm
    assert from_zip.bad_bands == delivery.bad_bands and from_zip.shape == delivery.shape
    with (
        rasterio.open(from_zip.files["SPECTRAL_IMAGE"]) as a,
        rasterio.open(delivery.files["SPECTRAL_IMAGE"]) as b,
    ):
        np.testing.assert_array_equal(a.read(7), b.read(7))


def test_reader_custom_gain_offset(tmp_path: Path) -> None:
    gains = np.full(224, 2e-4)
    offsets = np.full(224, -0.1)
    out = _write(tmp_path, gains=gains, offsets=offsets)
    dl = read_enmap_delivery(out)
    assert set(dl.gains) == {2e-4} and set(dl.offsets) == {-0.1}
    refl, _ = _scene()
    with rasterio.open(dl.files["SPECTRAL_IMAGE"]) as src:
        dn = src.read(1)
    assert dn[20, 20] == round((float(refl[0, 20, 20]) + 0.1) / 2e-4)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("-SPECTRAL_IMAGE.TIF", "no .*-SPECTRAL_IMAGE file"),
        ("-METADATA.XML", "no .*-METADATA file"),
        ("-QL_QUALITY_CLOUD.TIF", "METADATA.XML lists .*QL_QUALITY_CLOUD.TIF"),
    ],
)
def test_reader_incomplete_delivery(
    tmp_path: Path, delivery_dir: Path, remove: str, message: str
) -> None:
    broken = shutil.copytree(delivery_dir, tmp_path / NAME)
    (broken / f"{NAME}{remove}").unlink()
    with pytest.raises(InvalidInputError, match=message) as err:
        read_enmap_delivery(broken)
    assert str(broken) in str(err.value) and "Fix:" in str(err.value)


def test_reader_corrupt_files(tmp_path: Path, delivery_dir: Path) -> None:
    broken = shutil.copytree(delivery_dir, tmp_path / NAME)
    xml = broken / f"{NAME}-METADATA.XML"
    xml.write_bytes(xml.read_bytes()[:5000])
    with pytest.raises(InvalidInputError, match="cannot be parsed") as err:
        read_enmap_delivery(broken)
    assert xml.name in str(err.value)

    shutil.copyfile(delivery_dir / xml.name, xml)
    tif = broken / f"{NAME}-SPECTRAL_IMAGE.TIF"
    tif.write_bytes(b"II*\x00garbage")
    with pytest.raises(InvalidInputError, match="spectral image cannot be read"):
        read_enmap_delivery(broken)

    bad_zip = tmp_path / f"{NAME}.ZIP"
    bad_zip.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InvalidInputError, match="not a readable zip"):
        read_enmap_delivery(bad_zip)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no EnMAP product files"):
        read_enmap_delivery(empty)


def test_reader_rejects_grid_mismatch(tmp_path: Path, delivery_dir: Path) -> None:
    broken = shutil.copytree(delivery_dir, tmp_path / NAME)
    xml = broken / f"{NAME}-METADATA.XML"
    xml.write_text(xml.read_text().replace("<rows>40</rows>", "<rows>41</rows>"))
    with pytest.raises(InvalidInputError, match=r"METADATA\.XML says int16 224x41x40"):
        read_enmap_delivery(broken)


# --- STAC item ------------------------------------------------------------------------------


def test_item_validates_and_carries_band_metadata(
    delivery: EnmapDelivery, shared_fixtures: Path
) -> None:
    item = enmap_item(delivery, f"data/{ENMAP_COLLECTION}/{NAME}/")
    validate_item(item, shared_fixtures / "stac-schemas")
    assert item["id"] == NAME and item["collection"] == ENMAP_COLLECTION
    image = item["assets"]["image"]
    assert image["href"] == f"data/{ENMAP_COLLECTION}/{NAME}/{NAME}-SPECTRAL_IMAGE.TIF"
    assert image["type"].endswith("profile=cloud-optimized")
    wl, fw = enmap_band_table()
    np.testing.assert_allclose([b["center_wavelength"] for b in image["eo:bands"]], wl / 1000)
    np.testing.assert_allclose([b["full_width_half_max"] for b in image["eo:bands"]], fw / 1000)
    assert {b["nodata"] for b in image["raster:bands"]} == {ENMAP_NODATA}
    assert {b["data_type"] for b in image["raster:bands"]} == {"int16"}
    assert [b["scale"] for b in image["raster:bands"]] == list(delivery.gains)
    assert image["proj:epsg"] == 32633 and image["proj:shape"] == [H, W]
    assert image["proj:bbox"] == [467_085.0, 6_321_105.0 - 30 * H, 467_085.0 + 30 * W, 6_321_105.0]
    props = item["properties"]
    assert props["eo:cloud_cover"] == 6.25 and props["processing:level"] == "L2A"
    assert props["datetime"] == "2025-07-08T10:44:07.036933Z"
    assert props["enmap:noDataBands"] == [EMPTY_BAND]
    assert props["view:sun_elevation"] == pytest.approx(55.31)
    west, south, east, north = item["bbox"]
    assert 14.45 < west < east < 14.48 and 57.02 < south < north < 57.04


def test_item_covers_dlr_asset_keys_and_property_names(
    delivery: EnmapDelivery, shared_fixtures: Path
) -> None:
    ours = enmap_item(delivery, "data", thumbnail="thumb.jpg")
    dlr_items = _dlr_l2a_items(shared_fixtures)
    assert len(dlr_items) >= 5
    dlr_keys = set().union(*(set(i["assets"]) for i in dlr_items))
    assert dlr_keys <= set(ours["assets"]), dlr_keys - set(ours["assets"])
    for key, asset in dlr_items[0]["assets"].items():
        assert ours["assets"][key]["roles"] == asset["roles"], key
        assert ours["assets"][key]["title"] == asset["title"], key
        assert {k for k in asset if k.startswith("proj:")} - {"proj:geometry"} <= set(
            ours["assets"][key]
        ), key
    dlr_props = set().union(*(set(i["properties"]) for i in dlr_items))
    core = {
        "datetime",
        "start_datetime",
        "end_datetime",
        "created",
        "updated",
        "version",
        "platform",
        "proj:epsg",
        "eo:cloud_cover",
        "eo:snow_cover",
        "view:sun_azimuth",
        "view:sun_elevation",
        "processing:level",
        "processing:facility",
        "sat:orbit_state",
        "sat:relative_orbit",
        "eop:sensorType",
        "enmap:cirrus_cover",
        "enmap:cloud_shadow",
        "enmap:haze_cover",
        "enmap:water_cover",
        "enmap:datatakeID",
        "enmap:tileID",
        "enmap:nodata",
        "enmap:orbitNo",
        "enmap:archivedVersion",
        "enmap:processingDate",
        "enmap:sunAzimuthAngle",
        "enmap:sunElevationAngle",
        "enmap:acrossOffNadirAngle",
        "enmap:alongOffNadirAngle",
        "enmap:sceneAzimuthAngle",
    }
    assert core <= dlr_props, core - dlr_props  # the names are DLR's own
    assert core <= set(ours["properties"]), core - set(ours["properties"])


def test_validator_reports_real_dlr_quirks_offline(
    delivery: EnmapDelivery, shared_fixtures: Path
) -> None:
    schemas = shared_fixtures / "stac-schemas"
    dlr = _dlr_l2a_items(shared_fixtures)[0]
    # DLR's own items break the extension schemas: string band names, upper-case orbit state.
    with pytest.raises(InvalidInputError, match="sat:orbit_state: 'DESCENDING' is not one of"):
        validate_item(dlr, schemas)
    item = enmap_item(delivery, "data")
    item["stac_extensions"] = [*item["stac_extensions"], "https://example.org/ext/v9/schema.json"]
    with pytest.raises(NotFoundError, match=r"no local copy of schema https://example\.org"):
        validate_item(item, schemas)
    validate_item(item, schemas, skip_unavailable=True)
    del item["properties"]["datetime"]
    with pytest.raises(InvalidInputError, match="datetime"):
        validate_item(item, schemas, skip_unavailable=True)
