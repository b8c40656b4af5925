"""``eoforge archive index``: real-format deliveries in, a valid offline archive out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import typer
import yaml
from affine import Affine
from typer.testing import CliRunner

from flows.cli_archive_index import register_index
from pipelines.archive.cog import write_cog
from pipelines.archive.enmap import (
    ENMAP_COLLECTION,
    QUALITY_LAYERS,
    enmap_band_table,
    write_enmap_delivery,
    zip_delivery,
)
from pipelines.archive.index import SIDECAR_NAME, index_deliveries
from pipelines.archive.stac_validate import validate_collection, validate_item
from schemas.archive import items_path
from schemas.errors import InvalidInputError

NAMES = [
    "ENMAP01-____L2A-DT0000140097_20250708T104407Z_001_V010502_20250709T035921Z",
    "ENMAP01-____L2A-DT0000142249_20250708T055412Z_003_V010502_20250709T021506Z",
    "ENMAP01-____L2A-DT0000141488_20250708T054631Z_003_V010502_20250709T013002Z",
]
H = W = 40
S2_TRANSFORM = Affine(10.0, 0.0, 600_000.0, 0.0, -10.0, 5_300_040.0)


def _reflectance(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    refl = (rng.random((224, H, W)) * 0.5).astype(np.float32)
    refl[:, :2, :2] = np.nan
    return refl


def _write_delivery(out: Path, index: int) -> Path:
    wl, fw = enmap_band_table()
    quality = {k: np.zeros((H, W), np.uint8) for k in QUALITY_LAYERS}
    quality["CLASSES"][:] = 1
    x0 = 467_085.0 + 1200.0 * index
    return write_enmap_delivery(
        out,
        product_name=NAMES[index],
        reflectance=_reflectance(index),
        quality=quality,
        pixelmask=None,
        transform=Affine(30.0, 0.0, x0, 0.0, -30.0, 6_321_105.0),
        epsg=32633,
        start=datetime(2025, 7, 8, 10, 44, 7 + index, tzinfo=UTC),
        end=datetime(2025, 7, 8, 10, 44, 11 + index, tzinfo=UTC),
        cloud_cover=10.0 * index,
        wavelengths_nm=wl,
        fwhm_nm=fw,
    )


def _s2_band(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((1, 64, 48)) * 10_000).astype(np.uint16)


def _write_geotiffs(folder: Path) -> None:
    """One COG and one striped (non-COG) GeoTIFF, described by a sidecar."""
    folder.mkdir(parents=True)
    write_cog(folder / "B04.tif", _s2_band(1), transform=S2_TRANSFORM, epsg=32632, nodata=0)
    with rasterio.open(
        folder / "B08_plain.tif",
        "w",
        driver="GTiff",
        width=48,
        height=64,
        count=1,
        dtype="uint16",
        crs="EPSG:32632",
        transform=S2_TRANSFORM,
        nodata=0,
    ) as dst:
        dst.write(_s2_band(2))
    sidecar = {
        "collection": "my-s2",
        "sensor": "sentinel-2-l2a",
        "scenes": [
            {
                "id": "S2B_T32UQD_20240601",
                "datetime": "2024-06-01T10:30:00Z",
                "cloud_cover": 12.5,
                "platform": "sentinel-2b",
                "properties": {"s2:processing_baseline": "05.10"},
                "assets": {
                    "red": {"file": "B04.tif", "bands": ["red"]},
                    "nir": {"file": "B08_plain.tif", "bands": ["nir"]},
                },
            }
        ],
    }
    (folder / SIDECAR_NAME).write_text(yaml.safe_dump(sidecar), encoding="utf-8")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Deliveries as they arrive: one unpacked folder, one zip only, and a GeoTIFF folder."""
    src = tmp_path / "downloads"
    _write_delivery(src / "enmap", 0)
    zipped = _write_delivery(src / "tmp", 1)
    zip_delivery(zipped, src / "enmap" / "zips" / f"{NAMES[1]}.ZIP")
    shutil.rmtree(src / "tmp")
    _write_geotiffs(src / "s2" / "tile")
    return src


def _items(archive: Path, collection: str) -> list[dict[str, Any]]:
    lines = (archive / items_path(collection)).read_text().splitlines()
    return [json.loads(line) for line in lines]


def _tree(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_index_builds_a_valid_archive(source: Path, tmp_path: Path, shared_fixtures: Path) -> None:
    schemas = shared_fixtures / "stac-schemas"
    archive = tmp_path / "archive"
    report = index_deliveries(source, archive, schemas_root=schemas)
    assert report.added == (
        f"{ENMAP_COLLECTION}/{NAMES[0]}",
        f"{ENMAP_COLLECTION}/{NAMES[1]}",
        "my-s2/S2B_T32UQD_20240601",
    )
    assert report.kept == () and report.collections == (ENMAP_COLLECTION, "my-s2")
    assert [Path(p).name for p in report.converted_to_cog] == ["B08_plain.tif"]
    assert not (archive / ".eoforge-index.partial").exists()

    items = _items(archive, ENMAP_COLLECTION)
    assert [i["id"] for i in items] == sorted(NAMES[:2])
    wl, _ = enmap_band_table()
    for item in items:
        validate_item(item, schemas)
        for asset in item["assets"].values():
            href = asset["href"]
            assert not href.startswith(("/", "http")) and ".." not in href
            assert href.startswith(f"data/{ENMAP_COLLECTION}/{item['id']}/")
            assert (archive / href).is_file(), href
        image = item["assets"]["image"]
        np.testing.assert_allclose(
            [b["center_wavelength"] * 1000 for b in image["eo:bands"]], wl, atol=1e-6
        )
        scale = np.array([b["scale"] for b in image["raster:bands"]])[:, None, None]
        offset = np.array([b["offset"] for b in image["raster:bands"]])[:, None, None]
        nodata = image["raster:bands"][0]["nodata"]
        with rasterio.open(archive / image["href"]) as src:
            dn = src.read()
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert list(src.transform)[:6] == image["proj:transform"][:6]
        refl = np.where(dn == nodata, np.nan, dn * scale + offset)
        expected = _reflectance(NAMES.index(item["id"]))
        assert np.array_equal(np.isnan(refl), np.isnan(expected))
        assert np.nanmax(np.abs(refl - expected)) <= 1e-4
    assert items[1]["properties"]["eo:cloud_cover"] == 10.0

    collection = json.loads((archive / "stac/collections" / f"{ENMAP_COLLECTION}.json").read_text())
    validate_collection(collection, schemas)
    assert collection["extent"]["temporal"]["interval"] == [
        ["2025-07-08T10:44:07.000000Z", "2025-07-08T10:44:12.000000Z"]
    ]


def test_index_geotiff_sidecar(source: Path, tmp_path: Path, shared_fixtures: Path) -> None:
    archive = tmp_path / "archive"
    index_deliveries(source, archive, schemas_root=shared_fixtures / "stac-schemas")
    (item,) = _items(archive, "my-s2")
    validate_item(item, shared_fixtures / "stac-schemas")
    props = item["properties"]
    assert props["datetime"] == "2024-06-01T10:30:00.000000Z"
    assert props["eo:cloud_cover"] == 12.5 and props["platform"] == "sentinel-2b"
    assert props["eoforge:sensor"] == "sentinel-2-l2a" and props["proj:epsg"] == 32632
    assert props["s2:processing_baseline"] == "05.10"
    nir = item["assets"]["nir"]
    assert nir["href"] == "data/my-s2/S2B_T32UQD_20240601/B08_plain.tif"
    assert nir["proj:shape"] == [64, 48] and nir["proj:epsg"] == 32632
    assert nir["proj:bbox"] == [600_000.0, 5_299_400.0, 600_480.0, 5_300_040.0]
    assert nir["eo:bands"] == [{"name": "nir", "common_name": "nir"}]
    assert nir["raster:bands"][0]["data_type"] == "uint16"
    assert nir["raster:bands"][0]["nodata"] == 0
    with rasterio.open(archive / nir["href"]) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # converted
        np.testing.assert_array_equal(src.read(), _s2_band(2))
    west, south, east, north = item["bbox"]
    assert 10.3 < west < east < 10.4 and 47.8 < south < north < 47.9  # UTM 32N, 600 km E


def test_index_is_idempotent_and_adds_only_new_items(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    index_deliveries(source, archive)
    before = _tree(archive)
    again = index_deliveries(source, archive)
    assert again.added == () and len(again.kept) == 3
    assert _tree(archive) == before

    _write_delivery(source / "later", 2)
    third = index_deliveries(source, archive)
    assert third.added == (f"{ENMAP_COLLECTION}/{NAMES[2]}",) and len(third.kept) == 3
    ids = [i["id"] for i in _items(archive, ENMAP_COLLECTION)]
    assert ids == sorted(NAMES)
    after = _tree(archive)
    rewritten = {str(items_path(ENMAP_COLLECTION)), f"stac/collections/{ENMAP_COLLECTION}.json"}
    assert {k: v for k, v in after.items() if k in before and k not in rewritten} == {
        k: v for k, v in before.items() if k not in rewritten
    }
    new_files = set(after) - set(before)
    assert new_files and all(
        k.startswith(f"data/{ENMAP_COLLECTION}/{NAMES[2]}/") for k in new_files
    )


def test_same_product_twice_is_indexed_once(source: Path, tmp_path: Path) -> None:
    zip_delivery(source / "enmap" / NAMES[0], source / "copies" / f"{NAMES[0]}.ZIP")
    report = index_deliveries(source, tmp_path / "archive")
    assert len(report.added) == 3
    assert len(report.duplicates) == 1 and report.duplicates[0].startswith(
        f"{ENMAP_COLLECTION}/{NAMES[0]} ("
    )
    assert report.duplicates[0].endswith(f"copies/{NAMES[0]}.ZIP)")


def _no_crs_tif(path: Path) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
        transform=S2_TRANSFORM,
    ) as dst:  # fmt: skip
        dst.write(np.ones((1, 8, 8), np.uint8))


@pytest.mark.parametrize("fault", ["no_metadata", "no_spectral", "no_crs", "missing_file"])
def test_bad_input_leaves_archive_unchanged(source: Path, tmp_path: Path, fault: str) -> None:
    archive = tmp_path / "archive"
    index_deliveries(source, archive)
    before = _tree(archive)
    _write_delivery(source / "later", 2)  # a good new delivery beside the bad input
    folder = source / "later" / NAMES[2]
    if fault == "no_metadata":
        (folder / f"{NAMES[2]}-METADATA.XML").unlink()
        expected = f"{NAMES[2]}-METADATA"
    elif fault == "no_spectral":
        (folder / f"{NAMES[2]}-SPECTRAL_IMAGE.TIF").unlink()
        expected = f"{NAMES[2]}-SPECTRAL_IMAGE"
    else:
        bad = source / "bad"
        bad.mkdir()
        doc: dict[str, Any] = {
            "collection": "mine",
            "sensor": "sentinel-2-l2a",
            "scenes": [
                {
                    "id": "scene-1",
                    "datetime": "2024-06-01T10:30:00Z",
                    "assets": {"red": {"file": "red.tif", "bands": ["red"]}},
                }
            ],
        }
        if fault == "no_crs":
            _no_crs_tif(bad / "red.tif")
            expected = "red.tif has no CRS"
        else:
            expected = "names file red.tif, which does not exist"
        (bad / SIDECAR_NAME).write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(InvalidInputError, match=expected) as err:
        index_deliveries(source, archive)
    assert "Fix:" in str(err.value)
    assert _tree(archive) == before
    assert not (archive / ".eoforge-index.partial").exists()


def test_bad_sidecar_field_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / SIDECAR_NAME).write_text("collection: x\nsensor: s\nscenes: []\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="sidecar field scenes"):
        index_deliveries(src, tmp_path / "archive")
    assert not (tmp_path / "archive").exists()


# --- command line ---------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """Archive commands."""

    register_index(app)
    return app


def test_cli_runner(source: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    archive = tmp_path / "archive"
    result = runner.invoke(_app(), ["index", str(source), str(archive)])
    assert result.exit_code == 0, result.output
    assert "indexed 3 new item(s), kept 0" in result.output
    assert f"+ {ENMAP_COLLECTION}/{NAMES[0]}" in result.output
    assert len(_items(archive, ENMAP_COLLECTION)) == 2

    (source / "s2" / "tile" / "B04.tif").unlink()
    shutil.rmtree(archive)
    failed = runner.invoke(_app(), ["index", str(source), str(archive)])
    assert failed.exit_code == 2
    assert "names file B04.tif, which does not exist" in failed.output
    assert "Traceback" not in failed.output


def test_cli_subprocess(source: Path, tmp_path: Path) -> None:
    eoforge = Path(sys.executable).with_name("eoforge")
    env = {**os.environ, "COLUMNS": "200"}
    wired = subprocess.run(
        [str(eoforge), "archive", "index", "--help"], capture_output=True, env=env, check=False
    )
    archive = tmp_path / "archive"
    if wired.returncode == 0:
        cmd = [str(eoforge), "archive", "index", str(source), str(archive)]
    else:  # not wired into flows/cli_archive.py yet: run the same command through its module
        code = (
            "import sys, typer; from flows.cli_archive_index import register_index; "
            "app = typer.Typer(); app.callback()(lambda: None); register_index(app); "
            "app(sys.argv[1:])"
        )
        cmd = [sys.executable, "-c", code, "index", str(source), str(archive)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "indexed 3 new item(s)" in done.stdout
    assert [i["id"] for i in _items(archive, "my-s2")] == ["S2B_T32UQD_20240601"]
