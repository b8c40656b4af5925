"""CORINE labels of the tiny archive agree with its land-cover truth, in both UTM zones.

The archive's ``labels/corine.gpkg`` (EPSG:3035) and ``truth/landcover_<epsg>.tif`` (5 m, UTM)
are both derived from one procedural world, independently: the truth is rasterised from the
world's geometries in each UTM zone, the CORINE polygons are dissolved by class, projected to
EPSG:3035 and generalised to a minimum mapping unit (MMU). Comparing the reader's 10 m labels with
the truth therefore tests geolocation (3035 -> UTM, pixel-centre burning on the tile grid) and the
nomenclature mapping.

Compared pixels: classes CORINE represents (parcels; roads, rivers and buildings are narrower than
the MMU and lie inside the surrounding polygons), 2 label pixels (20 m) away from any truth
class boundary. Regions smaller than the MMU are generalised away by design (merged into a
neighbour); the headline figure leaves them out, the raw figure keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import rasterio
import shapely
import yaml
from affine import Affine
from pyproj import Transformer
from rasterio import features
from scipy import ndimage

from pipelines.archive.plan import PRESETS
from pipelines.grid import Tile, TileGrid, tiles_for_aoi
from pipelines.labels.base import LABEL_NODATA
from pipelines.labels.corine import CorineReader
from pipelines.labels.nomenclature import CLC_CLASSES, code_to_index, raster_lut
from schemas.archive import LABELS_CORINE, TRUTH_CLASSES, landcover_truth_path
from schemas.recipe_labels import CorineLabels

RES = 10.0
TRUTH_RES = 5.0
ERODE_PX = 2  # label pixels kept away from truth class boundaries
NARROW = {"road", "building", "river"}  # features CORINE does not map (narrower than the MMU)
ZONES = (32632, 32633)
REQUIRED = 0.98

Bool = npt.NDArray[np.bool_]


def _apply(tr: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tr`` applied to coordinate arrays."""
    return tr.a * x + tr.b * y + tr.c, tr.d * x + tr.e * y + tr.f


def _tiles(root: Path) -> list[Tile]:
    recipe = yaml.safe_load((root / "recipes" / "tiny.yaml").read_text(encoding="utf-8"))
    tile_size = float(recipe["grid"]["tile_size"])
    return tiles_for_aoi(shapely.box(*recipe["aoi"]["bbox"]), TileGrid(tile_size, (RES,)))


def _classes(root: Path) -> list[dict[str, Any]]:
    doc = json.loads((root / TRUTH_CLASSES).read_text(encoding="utf-8"))
    return list(doc["classes"])


class _Truth:
    """One zone's truth raster with the masks of pixels fit for comparison."""

    def __init__(self, root: Path, epsg: int, classes: list[dict[str, Any]]) -> None:
        with rasterio.open(root / landcover_truth_path(epsg)) as ds:
            self.ids = ds.read(1)
            self.transform: Affine = ds.transform
        assert self.transform.a == TRUTH_RES
        parcel_ids = [c["id"] for c in classes if c["key"] not in NARROW]
        cells = RES / TRUTH_RES * ERODE_PX
        self.interior = np.zeros(self.ids.shape, bool)
        for cid in parcel_ids:
            self.interior |= ndimage.distance_transform_edt(self.ids == cid) > cells
        # Regions CORINE keeps: connected parcel-class regions (roads, rivers and buildings
        # filled with the nearest parcel class, as CORINE polygons run under them) of at least
        # the MMU (with a 20 % margin: areas differ slightly between EPSG:3035 and UTM).
        narrow = ~np.isin(self.ids, parcel_ids)
        _, (ii, jj) = ndimage.distance_transform_edt(narrow, return_indices=True)
        filled = self.ids[ii, jj]
        mmu_cells = PRESETS["tiny"].corine_mmu_ha * 10_000 / TRUTH_RES**2
        self.mapped = np.zeros(self.ids.shape, bool)
        for cid in parcel_ids:
            regions, _ = ndimage.label(filled == cid)
            big = np.bincount(regions.ravel()) >= 1.2 * mmu_cells
            big[0] = False
            self.mapped |= big[regions]
        self.mapped &= ~narrow  # and the pixel itself is of a parcel class

    def sample(self, tile: Tile) -> tuple[npt.NDArray[np.uint8], Bool, Bool, Bool]:
        """Truth ids under the tile's 10 m pixels (2x2 truth cells each) and three masks.

        Returns:
            ``(ids, homogeneous, interior, mapped)``, dims ``(y, x)`` of the label grid; the
            masks are False where the tile leaves the truth raster.
        """
        n = tile.shape(RES)[0]
        x0, _, _, y1 = tile.bounds
        c0 = round((x0 - self.transform.c) / TRUTH_RES)
        r0 = round((self.transform.f - y1) / TRUTH_RES)
        rr, cc = np.meshgrid(r0 + 2 * np.arange(n), c0 + 2 * np.arange(n), indexing="ij")
        h, w = self.ids.shape
        ok = (rr >= 0) & (cc >= 0) & (rr + 1 < h) & (cc + 1 < w)
        rr, cc = np.clip(rr, 0, h - 2), np.clip(cc, 0, w - 2)
        quad = [(rr + i, cc + j) for i in (0, 1) for j in (0, 1)]
        ids = [self.ids[q] for q in quad]
        homogeneous = ok & (ids[0] == ids[1]) & (ids[0] == ids[2]) & (ids[0] == ids[3])
        interior = homogeneous & np.logical_and.reduce([self.interior[q] for q in quad])
        mapped = np.logical_and.reduce([self.mapped[q] for q in quad])
        return ids[0], homogeneous, interior, mapped


@pytest.fixture(scope="module")
def truth(tiny_archive: Path) -> dict[int, _Truth]:
    classes = _classes(tiny_archive)
    return {epsg: _Truth(tiny_archive, epsg, classes) for epsg in ZONES}


def _lut(classes: list[dict[str, Any]], nomenclature: str) -> npt.NDArray[np.uint8]:
    index = code_to_index(nomenclature)
    lut = np.full(256, LABEL_NODATA, np.uint8)
    for c in classes:
        lut[c["id"]] = index[c["corine_code"]]
    return lut


@pytest.mark.parametrize("nomenclature", ["clc44", "bigearthnet19"])
def test_corine_labels_match_the_truth_in_both_zones(
    tiny_archive: Path, truth: dict[int, _Truth], nomenclature: str
) -> None:
    tiles = _tiles(tiny_archive)
    assert {t.epsg for t in tiles} == set(ZONES)
    reader = CorineReader(
        CorineLabels(
            kind="corine", path=str(tiny_archive / LABELS_CORINE), nomenclature=nomenclature
        )
    )
    labels = reader.rasterize(tiles, RES)
    lut = _lut(_classes(tiny_archive), nomenclature)
    for epsg in ZONES:
        n_mmu = agree_mmu = n_raw = agree_raw = n_edge = agree_edge = 0
        for tile in (t for t in tiles if t.epsg == epsg):
            got = labels[tile.id]
            ids, homogeneous, interior, mapped = truth[epsg].sample(tile)
            hit = got == lut[ids]
            n_raw += int(interior.sum())
            agree_raw += int((hit & interior).sum())
            n_mmu += int((interior & mapped).sum())
            agree_mmu += int((hit & interior & mapped).sum())
            # Boundary-sensitive: no erosion (every pixel whose 2x2 truth cells agree).
            edge = homogeneous & mapped
            n_edge += int(edge.sum())
            agree_edge += int((hit & edge).sum())
        share, raw, edge_share = agree_mmu / n_mmu, agree_raw / n_raw, agree_edge / n_edge
        print(
            f"\n{nomenclature} EPSG:{epsg}: {share:.2%} of {n_mmu} pixels (MMU-mapped regions, "
            f"{ERODE_PX} px from boundaries); raw {raw:.2%} of {n_raw} (sub-MMU regions kept); "
            f"no erosion {edge_share:.2%} of {n_edge}"
        )
        assert n_mmu > 20_000
        assert share >= REQUIRED
        assert raw >= 0.95  # the rest is the MMU generalisation
        assert edge_share >= 0.995


def test_a_one_pixel_shift_is_visible(tiny_archive: Path, truth: dict[int, _Truth]) -> None:
    """The boundary-sensitive measure drops when labels move by one 10 m pixel."""
    tiles = [t for t in _tiles(tiny_archive) if t.epsg == ZONES[0]]
    reader = CorineReader(CorineLabels(kind="corine", path=str(tiny_archive / LABELS_CORINE)))
    labels = reader.rasterize(tiles, RES)
    lut = _lut(_classes(tiny_archive), "clc44")
    shares = []
    for shift in ((0, 0), (0, 1), (1, 0)):
        n = agree = 0
        for tile in tiles:
            got = np.roll(labels[tile.id], shift, axis=(0, 1))
            ids, homogeneous, _, mapped = truth[ZONES[0]].sample(tile)
            m = homogeneous & mapped
            m[[0, -1], :] = m[:, [0, -1]] = False
            n += int(m.sum())
            agree += int(((got == lut[ids]) & m).sum())
        shares.append(agree / n)
    print(f"\nno-erosion agreement, shift 0 / 1 px east / 1 px south: {shares}")
    assert shares[0] - max(shares[1:]) > 0.005


@pytest.mark.parametrize("coding", ["grid_code", "code"])
def test_clc_raster_of_the_archive_polygons(
    tiny_archive: Path, tmp_path: Path, coding: str
) -> None:
    """The archive's polygons rasterised at 100 m in EPSG:3035 (like the CLC raster), read back."""
    import pyogrio

    df = pyogrio.read_dataframe(tiny_archive / LABELS_CORINE, columns=["Code_18"])
    grid_code = {c.code: c.grid_code for c in CLC_CLASSES}
    minx, miny, maxx, maxy = df.total_bounds
    left, top = np.floor(minx / 100) * 100 - 500, np.ceil(maxy / 100) * 100 + 500
    width, height = int((maxx - left) / 100) + 6, int((top - miny) / 100) + 6
    transform = Affine(100.0, 0.0, left, 0.0, -100.0, top)
    fill = 0
    values = [grid_code[c] if coding == "grid_code" else int(c) for c in df["Code_18"].tolist()]
    data = features.rasterize(
        zip(df.geometry, values, strict=True),
        out_shape=(height, width),
        transform=transform,
        fill=fill,
        dtype="uint16",
    )
    path = tmp_path / f"clc_{coding}.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint8" if coding == "grid_code" else "uint16",
        crs="EPSG:3035",
        transform=transform,
        nodata=fill,
    ) as ds:
        ds.write(data.astype(ds.dtypes[0]), 1)
    tiles = _tiles(tiny_archive)
    raster = CorineReader(CorineLabels(kind="corine", path=str(path))).rasterize(tiles, RES)
    vector = CorineReader(
        CorineLabels(kind="corine", path=str(tiny_archive / LABELS_CORINE))
    ).rasterize(tiles, RES)
    lut = raster_lut("clc44", coding).astype(np.int64)
    total = exact = both = same = 0
    for tile in tiles:
        got = raster[tile.id]
        # Exact: the 100 m pixel under each label pixel centre.
        n = tile.shape(RES)[0]
        jj, ii = np.meshgrid(np.arange(n), np.arange(n))
        xs, ys = _apply(tile.transform(RES), jj + 0.5, ii + 0.5)
        x, y = Transformer.from_crs(tile.epsg, 3035, always_xy=True).transform(xs, ys)
        fc, fr = _apply(~transform, x, y)
        v = data[np.floor(fr).astype(int), np.floor(fc).astype(int)].astype(np.int64)
        expected = np.where(v == fill, LABEL_NODATA, lut[v])
        sure = np.minimum.reduce([fc % 1, 1 - fc % 1, fr % 1, 1 - fr % 1]) >= 0.005
        total += int(sure.sum())
        exact += int((got == expected)[sure].sum())
        labelled = (got != LABEL_NODATA) & (vector[tile.id] != LABEL_NODATA)
        both += int(labelled.sum())
        same += int((labelled & (got == vector[tile.id])).sum())
    print(f"\n{coding}: raster vs vector labels agree at {same / both:.2%} of {both} pixels")
    assert exact == total
    assert same / both > 0.9  # 100 m cells vs polygon edges
