"""The offline archive generator against its contract and against its own ground truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from rasterio.features import rasterize
from rasterio.windows import Window
from scipy import ndimage

from pipelines.archive.create import create_archive
from pipelines.archive.plan import PRESETS
from pipelines.archive.world import generate_world
from pipelines.phase_correlation import estimate_shift
from schemas.archive import ARCHIVE_COLLECTIONS, MANIFEST, TRUTH_CLASSES, TRUTH_SCENES, items_path
from schemas.profiles import get_profile
from schemas.sensors import Provider, SensorId

S2, LS, S1, EN = (ARCHIVE_COLLECTIONS[k] for k in ARCHIVE_COLLECTIONS)


def _items(root: Path, collection: str) -> list[dict[str, Any]]:
    lines = (root / items_path(collection)).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _read(path: Path, band: int | None = 1) -> tuple[np.ndarray, Affine]:
    with rasterio.open(path) as src:
        return (src.read(band) if band else src.read()), src.transform


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def truth(tiny_archive: Path) -> dict[str, Any]:
    classes = json.loads((tiny_archive / TRUTH_CLASSES).read_text())
    scenes = json.loads((tiny_archive / TRUTH_SCENES).read_text())
    return {"classes": classes["classes"], "scenes": scenes, "doc": classes}


def _landcover(
    root: Path, truth: dict[str, Any], epsg: int, t: Affine, shape: tuple[int, int], factor: int
) -> np.ndarray:
    """Truth class ids (5 m) under a grid whose pixels are ``factor`` truth cells wide."""
    with rasterio.open(root / truth["scenes"]["landcover"][str(epsg)]) as src:
        lt = src.transform
        col, row = (t.c - lt.c) / 5.0, (lt.f - t.f) / 5.0
        assert col == int(col) and row == int(row), "scene grid does not nest in the truth grid"
        return src.read(1, window=Window(int(col), int(row), shape[1] * factor, shape[0] * factor))


def _purity(lc: np.ndarray, factor: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the class if all its truth cells are one class (else 0), dims (y, x)."""
    blocks = lc.reshape(shape[0], factor, shape[1], factor)
    first = blocks[:, :1, :, :1]
    pure = (blocks == first).all(axis=(1, 3))
    return np.where(pure, first[:, 0, :, 0], 0), pure


# --- layout, determinism, limits ------------------------------------------------------------


def test_layout_and_manifest(tiny_archive: Path) -> None:
    manifest = json.loads((tiny_archive / MANIFEST).read_text())
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    assert set(manifest["collections"]) == set(ARCHIVE_COLLECTIONS.values())
    assert manifest["epsg"] == [32632, 32633]
    west, _, east, _ = manifest["bbox"]
    assert west < 12.0 < east  # straddles the UTM 32/33 boundary
    for collection, count in manifest["collections"].items():
        items = _items(tiny_archive, collection)
        assert len(items) == count >= 2
        assert [it["id"] for it in items] == sorted(it["id"] for it in items)
        assert (
            json.loads((tiny_archive / f"stac/collections/{collection}.json").read_text())["id"]
            == collection
        )
        for it in items:
            for asset in it["assets"].values():
                href = asset["href"]
                assert not href.startswith(("/", "http")), href
                assert href.startswith(f"data/{collection}/{it['id']}/")
                assert (tiny_archive / href).is_file(), href
    for rel in (
        "labels/corine.gpkg",
        "labels/osm.osm",
        "truth/classes.json",
        "truth/scenes.json",
        "truth/landcover_32632.tif",
        "truth/landcover_32633.tif",
        "recipes/tiny.yaml",
    ):
        assert (tiny_archive / rel).is_file(), rel


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "archive"
    create_archive(target, preset="tiny", seed=0)
    first = _hashes(target)
    target.rename(tmp_path / "first")
    create_archive(target, preset="tiny", seed=0)
    assert _hashes(target) == first  # every file, recipe included (same path)
    # Elsewhere only the recipe differs, by the archive path it names.
    session = _hashes(tiny_archive)
    assert {k for k in session if session[k] != first[k]} == {"recipes/tiny.yaml"}
    assert set(session) == set(first)
    recipe = (target / "recipes/tiny.yaml").read_text().replace(str(target), str(tiny_archive))
    assert recipe == (tiny_archive / "recipes/tiny.yaml").read_text()
    other = tmp_path / "seed1"
    create_archive(other, preset="tiny", seed=1)
    changed = [k for k, v in _hashes(other).items() if first.get(k) != v]
    assert len(changed) > 0.9 * len(first)


def test_size_and_cog_structure(tiny_archive: Path) -> None:
    total = sum(p.stat().st_size for p in tiny_archive.rglob("*") if p.is_file())
    assert total <= 30 * 2**20
    tifs = sorted(tiny_archive.glob("data/**/*.tif")) + sorted(tiny_archive.glob("data/**/*.TIF"))
    assert len(tifs) > 50
    for path in tifs:
        with rasterio.open(path) as src:
            assert src.profile["tiled"] and src.profile["blockxsize"] == 256, path
            assert src.compression is not None and src.compression.value == "DEFLATE", path
            if max(src.shape) > 256:
                assert src.overviews(1), path


def test_recipe_loads_and_names_the_archive(tiny_archive: Path) -> None:
    from schemas.recipe import load_recipe

    recipe = load_recipe(tiny_archive / "recipes/tiny.yaml")
    assert {s.catalog for s in recipe.sensors} == {f"archive:{tiny_archive}"}
    assert {str(s.id) for s in recipe.sensors} == set(ARCHIVE_COLLECTIONS)
    assert {str(lab.path) for lab in recipe.labels} == {
        str(tiny_archive / "labels/corine.gpkg"),
        str(tiny_archive / "labels/osm.osm"),
    }


# --- STAC -----------------------------------------------------------------------------------


def test_items_and_collections_validate(tiny_archive: Path, shared_fixtures: Path) -> None:
    from pipelines.archive.stac_validate import validate_collection, validate_item

    schemas = shared_fixtures / "stac-schemas"
    for collection in ARCHIVE_COLLECTIONS.values():
        for item in _items(tiny_archive, collection):
            validate_item(item, schemas)
        validate_collection(
            json.loads((tiny_archive / f"stac/collections/{collection}.json").read_text()),
            schemas,
        )


#: Real assets the archive does not produce, on purpose: provider services (tilejson,
#: rendered_preview), SAFE/MTL/ANG side files, the S2 preview, and Landsat's ST auxiliary bands.
NOT_PRODUCED = {
    S2: {
        "tilejson",
        "rendered_preview",
        "preview",
        "safe-manifest",
        "inspire-metadata",
        "datastrip-metadata",
    },
    LS: {
        "tilejson",
        "rendered_preview",
        "ang",
        "mtl.txt",
        "mtl.xml",
        "mtl.json",
        "qa",
        "drad",
        "emis",
        "emsd",
        "trad",
        "urad",
        "atran",
        "cdist",
    },
    S1: {"tilejson", "rendered_preview"},
    EN: set(),
}


#: DLR's ``eo:instrument`` breaks the eo extension schema (no unknown ``eo:`` fields); the archive
#: states the instrument in ``instruments`` instead.
NOT_COPIED_PROPERTIES = {"eo:instrument"}


def _real_items(fixtures: Path, collection: str) -> list[dict[str, Any]]:
    pc = fixtures / "stac/planetary-computer"
    files = {
        S2: "stac-geoparquet__sentinel-2-l2a-pc.json",
        LS: "stac-geoparquet__landsat-c2-l2-pc.json",
        S1: "stac-geoparquet__sentinel-1-rtc-pc.json",
    }
    if collection == EN:
        doc = json.loads(
            (fixtures / "enmap/extracted/dlr-eoc_search_page_enmap_l2a.json").read_text()
        )
        # DLR serves two item generations; the current one has the "image" asset.
        return [f for f in doc["features"] if "image" in f["assets"]]
    return list(json.loads((pc / files[collection]).read_text()))


@pytest.mark.parametrize("collection", [S2, LS, S1, EN])
def test_key_sets_match_real_provider_items(
    tiny_archive: Path, shared_fixtures: Path, collection: str
) -> None:
    real = _real_items(shared_fixtures, collection)
    ours = _items(tiny_archive, collection)
    real_assets = set.intersection(*(set(r["assets"]) for r in real))
    real_props = set.intersection(*(set(r["properties"]) for r in real))
    for item in ours:
        assert real_assets - NOT_PRODUCED[collection] <= set(item["assets"])
        assert not (set(item["assets"]) & NOT_PRODUCED[collection])
        missing = real_props - set(item["properties"]) - NOT_COPIED_PROPERTIES
        assert not missing
        assert set(real[0]) <= set(item) | {"links"}
    if collection != EN:  # same extensions as PC, except file (blob sizes) and Landsat's URL
        landsat_pc = "https://landsat.usgs.gov/stac/landsat-extension/v1.1.1/schema.json"
        exts = {
            "https://stac-extensions.github.io/landsat/v2.0.0/schema.json" if e == landsat_pc else e
            for e in real[0]["stac_extensions"]
            if "/file/" not in e
        }
        assert exts <= set(ours[0]["stac_extensions"])


# --- pixels against the truth ---------------------------------------------------------------


def test_s2_scl_and_imagery_agree_with_truth_masks(
    tiny_archive: Path, truth: dict[str, Any]
) -> None:
    n_cloudy = 0
    for item in _items(tiny_archive, S2):
        sc = truth["scenes"]["scenes"][item["id"]]
        cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
        shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
        scl, _ = _read(tiny_archive / item["assets"]["SCL"]["href"])

        def pool(a: np.ndarray, shape: tuple[int, int] = scl.shape) -> np.ndarray:
            return a.reshape(shape[0], 2, shape[1], 2).max(axis=(1, 3))

        invalid = pool(cloud == 255)
        cloud20 = pool(cloud == 1) & ~invalid
        assert np.array_equal(scl == 0, invalid)
        assert np.array_equal(np.isin(scl, (8, 9)), cloud20)
        assert np.array_equal(scl == 3, pool(shadow == 1) & ~cloud20 & ~invalid)
        frac = float((cloud == 1).sum()) / float((cloud != 255).sum())
        assert sc["cloud_fraction"] == pytest.approx(frac, abs=1e-6)
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(100 * frac, abs=1e-4)
        if (cloud == 1).sum() > 100:
            n_cloudy += 1
            scale, offset = get_profile(SensorId.SENTINEL_2_L2A, Provider.ARCHIVE).scale_offset(
                "B02", item["properties"]
            )
            b02, _ = _read(tiny_archive / item["assets"]["B02"]["href"])
            refl = b02 * scale + offset
            clear = (cloud == 0) & (shadow == 0)
            assert refl[cloud == 1].mean() > 0.3 > 0.15 > refl[clear].mean()
            b08, _ = _read(tiny_archive / item["assets"]["B08"]["href"])
            nir = b08 * scale + offset
            assert nir[shadow == 1].mean() < 0.6 * nir[clear].mean()
    assert n_cloudy >= 2


def test_landsat_qa_and_enmap_quality_agree_with_truth_masks(
    tiny_archive: Path, truth: dict[str, Any]
) -> None:
    for item in _items(tiny_archive, LS):
        sc = truth["scenes"]["scenes"][item["id"]]
        cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
        shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
        qa, _ = _read(tiny_archive / item["assets"]["qa_pixel"]["href"])
        assert np.array_equal(qa == 1, cloud == 255)
        valid = cloud != 255
        assert np.array_equal((qa & 8 > 0) & valid, cloud == 1)
        assert np.array_equal((qa & 16 > 0) & valid, shadow == 1)
        assert np.all((qa[cloud == 1] >> 8) & 3 == 3)
        assert np.all(qa[(cloud == 0) & (shadow == 0)] & 64 | qa[(cloud == 0) & (shadow == 0)] & 2)
    for item in _items(tiny_archive, EN):
        sc = truth["scenes"]["scenes"][item["id"]]
        cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
        shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
        ql_cloud, _ = _read(tiny_archive / item["assets"]["quality_cloud"]["href"])
        ql_shadow, _ = _read(tiny_archive / item["assets"]["quality_cloud_shadow"]["href"])
        classes, _ = _read(tiny_archive / item["assets"]["quality_classes"]["href"])
        assert np.array_equal(ql_cloud == 1, cloud == 1)
        assert np.array_equal(ql_shadow == 1, shadow == 1)
        assert np.array_equal(classes == 3, cloud == 255)


def _check_pure(
    values: np.ndarray, klass: np.ndarray, expected: dict[int, float], tol: float, what: str
) -> set[int]:
    found = set()
    for cid, value in expected.items():
        sel = klass == cid
        if sel.sum() >= 3:
            got = values[sel]
            assert np.abs(got - value).max() <= tol, f"{what} class {cid}: {got[:5]} != {value}"
            found.add(cid)
    return found


def test_pure_pixels_match_classes_json(tiny_archive: Path, truth: dict[str, Any]) -> None:
    classes = truth["classes"]
    s2p = get_profile(SensorId.SENTINEL_2_L2A, Provider.ARCHIVE)
    baselines = set()
    for item in _items(tiny_archive, S2):
        sc = truth["scenes"]["scenes"][item["id"]]
        cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
        shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
        epsg = item["properties"]["proj:epsg"]
        baselines.add(item["properties"]["s2:processing_baseline"])
        for band in ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B11", "B12"):
            dn, t = _read(tiny_archive / item["assets"][band]["href"])
            f = round(t.a / 5)
            klass, _ = _purity(_landcover(tiny_archive, truth, epsg, t, dn.shape, f), f, dn.shape)
            k = f // 2
            bad = ((cloud != 0) | (shadow != 0)).reshape(dn.shape[0], k, dn.shape[1], k)
            klass[bad.any(axis=(1, 3))] = 0
            scale, offset = s2p.scale_offset(band, item["properties"])
            expected = {c["id"]: c["values"]["sentinel-2-l2a"][band] for c in classes}
            found = _check_pure(dn * scale + offset, klass, expected, 1e-3, f"{item['id']} {band}")
            assert len(found) >= (6 if f <= 4 else 3), (band, found)
    assert baselines == {"05.10", "02.14"}

    lsp = get_profile(SensorId.LANDSAT_C2_L2, Provider.ARCHIVE)
    for item in _items(tiny_archive, LS):
        sc = truth["scenes"]["scenes"][item["id"]]
        cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
        shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
        for band in ("coastal", "red", "nir08", "swir22", "lwir11"):
            dn, t = _read(tiny_archive / item["assets"][band]["href"])
            lc = _landcover(tiny_archive, truth, item["properties"]["proj:epsg"], t, dn.shape, 6)
            klass, _ = _purity(lc, 6, dn.shape)
            # The content is shifted by < 0.5 pixel: demand a pure 3 x 3 neighbourhood.
            same = ndimage.minimum_filter(klass, 3) == ndimage.maximum_filter(klass, 3)
            bad = ndimage.maximum_filter((cloud != 0) | (shadow != 0), 3)
            klass[~same | bad] = 0
            scale, offset = lsp.scale_offset(band, item["properties"])
            expected = {c["id"]: c["values"]["landsat-c2-l2"][band] for c in classes}
            tol = 0.02 if band == "lwir11" else 1e-3
            assert len(_check_pure(dn * scale + offset, klass, expected, tol, band)) >= 4

    enp = get_profile(SensorId.ENMAP_L2A, Provider.ARCHIVE)
    for item in _items(tiny_archive, EN):
        sc = truth["scenes"]["scenes"][item["id"]]
        cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
        shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
        cube, t = _read(tiny_archive / item["assets"]["image"]["href"], None)
        assert cube.shape[0] == 224 and cube.dtype == np.int16
        lc = _landcover(tiny_archive, truth, item["properties"]["proj:epsg"], t, cube.shape[1:], 6)
        klass, _ = _purity(lc, 6, cube.shape[1:])
        klass[(cloud != 0) | (shadow != 0)] = 0
        for b in (0, 40, 90, 150, 223):
            scale, offset = enp.scale_offset_for_item(f"B{b + 1:03d}", item)
            expected = {c["id"]: c["values"]["enmap-l2a"][b] for c in classes}
            assert len(_check_pure(cube[b] * scale + offset, klass, expected, 1e-3, f"B{b}")) >= 4

    world = generate_world(PRESETS["tiny"].world, 0)
    for item in _items(tiny_archive, S1):
        for pol in ("vv", "vh"):
            gamma, t = _read(tiny_archive / item["assets"][pol]["href"])
            assert gamma.dtype == np.float32 and t.c % 10 not in (0.0, 5.0)
            fine = world.rasterize(
                item["properties"]["proj:epsg"],
                Affine(5, 0, t.c, 0, -5, t.f),
                (gamma.shape[0] * 2, gamma.shape[1] * 2),
            )
            klass, _ = _purity(fine, 2, gamma.shape)
            expected = {c["id"]: c["values"]["sentinel-1-rtc"][pol] for c in classes}
            assert len(_check_pure(gamma, klass, expected, 1e-5, pol)) >= 8


def test_injected_landsat_shifts_are_recovered(tiny_archive: Path, truth: dict[str, Any]) -> None:
    red = {c["id"]: c["values"]["landsat-c2-l2"]["red"] for c in truth["classes"]}
    lut = np.zeros(256)
    for cid, v in red.items():
        lut[cid] = v
    scale, offset = get_profile(SensorId.LANDSAT_C2_L2, Provider.ARCHIVE).scale_offset("red")
    tested = 0
    for item in _items(tiny_archive, LS):
        sc = truth["scenes"]["scenes"][item["id"]]
        dn, t = _read(tiny_archive / item["assets"]["red"]["href"])
        cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
        shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
        lc = _landcover(tiny_archive, truth, item["properties"]["proj:epsg"], t, dn.shape, 6)
        # Truth on the nominal grid: mean of the 6 x 6 truth cells of each 30 m pixel.
        reference = lut[lc].reshape(dn.shape[0], 6, dn.shape[1], 6).mean(axis=(1, 3))
        clear = ~ndimage.binary_dilation((cloud != 0) | (shadow != 0), iterations=2)
        if clear.mean() < 0.5:
            continue
        est = estimate_shift(reference, dn * scale + offset, valid=clear, upsample=50)
        dx, dy = sc["shift_m"]
        assert max(abs(dx), abs(dy)) > 0.15 * 30
        assert est.dx_px == pytest.approx(dx / 30.0, abs=0.1)
        assert est.dy_px == pytest.approx(-dy / 30.0, abs=0.1)  # rows grow southwards
        tested += 1
    assert tested >= 2
    for item in _items(tiny_archive, S2):
        assert truth["scenes"]["scenes"][item["id"]]["shift_m"] == [0.0, 0.0]


# --- vector labels ----------------------------------------------------------------------------


def test_corine_polygons_agree_with_truth(tiny_archive: Path, truth: dict[str, Any]) -> None:
    info = pyogrio.read_info(tiny_archive / "labels/corine.gpkg", layer="corine")
    assert info["crs"] == "EPSG:3035"
    df = pyogrio.read_dataframe(tiny_archive / "labels/corine.gpkg", layer="corine")
    assert df["Code_18"].map(lambda c: isinstance(c, str) and len(c) == 3).all()
    codes = {c["corine_code"] for c in truth["classes"]}
    assert set(df["Code_18"]) <= codes and len(set(df["Code_18"])) >= 6
    # Rasterised onto the 5 m truth grid of zone 33, CORINE matches the truth's codes mostly.
    path = tiny_archive / truth["scenes"]["landcover"]["32633"]
    with rasterio.open(path) as src:
        lc, t = src.read(1), src.transform
    df = df.to_crs(32633)
    code_ids = {code: i for i, code in enumerate(sorted(codes), start=1)}
    burned = rasterize(
        ((g, code_ids[c]) for g, c in zip(df.geometry, df["Code_18"], strict=True)),
        out_shape=lc.shape,
        transform=t,
        fill=0,
        dtype="uint8",
    )
    lut = np.zeros(256, np.uint8)
    for c in truth["classes"]:
        lut[c["id"]] = code_ids[c["corine_code"]]
    agree = float((burned == lut[lc]).mean())
    assert 0.75 < agree < 1.0


def test_osm_is_readable_by_gdal_and_matches_truth(
    tiny_archive: Path, truth: dict[str, Any]
) -> None:
    path = tiny_archive / "labels/osm.osm"
    lines = pyogrio.read_dataframe(path, layer="lines")
    polys = pyogrio.read_dataframe(path, layer="multipolygons")
    assert {"motorway", "primary", "secondary", "residential"} <= set(lines["highway"].dropna())
    assert "river" in set(lines["waterway"].dropna())
    assert {"farmland", "meadow", "forest", "residential"} <= set(polys["landuse"].dropna())
    assert {"water", "wetland", "bare_rock", "wood"} <= set(polys["natural"].dropna())
    buildings = polys[polys["building"].notna()].to_crs(32633)
    assert len(buildings) > 50
    with rasterio.open(tiny_archive / truth["scenes"]["landcover"]["32633"]) as src:
        lc, t = src.read(1), src.transform
    building_id = next(c["id"] for c in truth["classes"] if c["key"] == "building")
    inv = ~t
    hits = 0
    inside = 0
    for g in buildings.geometry:
        col, row = inv @ (g.centroid.x, g.centroid.y)
        if 0 <= row < lc.shape[0] and 0 <= col < lc.shape[1]:
            inside += 1
            hits += int(lc[int(row), int(col)] == building_id)
    assert inside > 20 and hits / inside > 0.95


def test_profile_mask_decoders_see_the_truth(tiny_archive: Path, truth: dict[str, Any]) -> None:
    """The masks eoforge's own decoders derive are the truth masks (Landsat: plus the 1-pixel
    dilated-cloud ring that real QA_PIXEL flags too)."""
    from schemas.qa import decode_flags, invalid_from_flags

    checked = 0
    for collection, sensor in ((LS, SensorId.LANDSAT_C2_L2), (EN, SensorId.ENMAP_L2A)):
        spec = get_profile(sensor, Provider.ARCHIVE).mask
        for item in _items(tiny_archive, collection):
            sc = truth["scenes"]["scenes"][item["id"]]
            cloud, _ = _read(tiny_archive / sc["masks"]["cloud"])
            shadow, _ = _read(tiny_archive / sc["masks"]["shadow"])
            if collection == LS:
                keys = {"QA_PIXEL": "qa_pixel", "QA_RADSAT": "qa_radsat"}
            else:
                keys = {b: "quality_" + b.removeprefix("QL_QUALITY_").lower() for b in spec.bands}
                keys["QL_QUALITY_CLOUDSHADOW"] = "quality_cloud_shadow"
            layers = {
                k: _read(tiny_archive / item["assets"][v]["href"])[0] for k, v in keys.items()
            }
            flags = decode_flags(spec, layers)
            invalid = invalid_from_flags(flags, invalid_flags=spec.invalid_flags)
            truth_bad = (cloud != 0) | (shadow != 0)
            ring = ndimage.binary_dilation(cloud == 1, np.ones((3, 3), bool)) & (cloud == 0)
            assert np.array_equal(flags["shadow"] & (cloud != 255), shadow == 1)
            if collection == LS:
                assert np.array_equal(invalid, truth_bad | ring)
            else:
                assert np.array_equal(invalid, truth_bad)
            checked += 1
    assert checked == 5
