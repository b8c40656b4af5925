from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer

from pipelines.archive.classes import CLASSES, S2_BANDS, class_by_key, reflectance_at, s2_values
from pipelines.archive.landsat import qa_pixel
from pipelines.archive.plan import PRESETS, mgrs_tile, plan_acquisitions
from pipelines.archive.render import (
    CLOUD_EDGE,
    CLOUD_THICK,
    N_CLASSES,
    N_LABELS,
    OUTSIDE,
    Grid,
    coarsen_counts,
    label_counts,
    label_table,
    mix,
)
from pipelines.archive.scene import masks_from_counts
from pipelines.archive.world import World, WorldSpec, generate_world

SMALL = WorldSpec(12.0, 47.945, 1500, 1200, 300, 200, 200, 300, 1)


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(SMALL, 7)


def test_world_is_deterministic_and_seeded(world: World) -> None:
    again = generate_world(SMALL, 7)
    other = generate_world(SMALL, 8)
    assert [f.geometry.wkb for f in again.features] == [f.geometry.wkb for f in world.features]
    assert [f.geometry.wkb for f in other.features] != [f.geometry.wkb for f in world.features]


def test_classes_cover_the_required_land_covers() -> None:
    keys = {c.key for c in CLASSES}
    assert {"broadleaf", "arable", "pasture", "urban", "lake", "wetland", "bare_rock"} <= keys
    assert len(CLASSES) >= 8
    assert [c.id for c in CLASSES] == list(range(1, len(CLASSES) + 1))
    for c in CLASSES:
        assert len(c.corine) == 3 and c.corine.isdigit() and c.corine[0] in "12345"
        assert c.osm_tags
    assert class_by_key("arable").corine == "211"
    assert class_by_key("lake").corine == "512"


def test_parcels_tile_the_extent_without_overlap(world: World) -> None:
    parcels = [f.geometry for f in world.of_kind("parcel")]
    union = shapely.union_all(parcels)
    total = sum(p.area for p in parcels)
    w, s, e, n = world.extent
    assert union.area == pytest.approx(total, rel=1e-6)  # no overlaps
    # No gaps: one polygon without holes filling its (slightly non-rectangular) lon/lat frame.
    assert union.geom_type == "Polygon" and len(union.interiors) == 0
    assert union.area > 0.999 * (e - w) * (n - s)
    assert {f.kind for f in world.features} == {"parcel", "river", "road", "building"}
    assert len({f.fid for f in world.features}) == len(world.features)


def test_aoi_lies_inside_the_extent_and_straddles_12e(world: World) -> None:
    w, s, e, n = world.aoi
    ew, es, ee, en = world.extent
    assert ew < w < 12.0 < e < ee and es < s < n < en


def test_rasterize_burn_order_and_geometry(world: World) -> None:
    epsg = 32633
    tr = Transformer.from_crs(4326, epsg, always_xy=True)
    building = world.of_kind("building")[0]
    bx, by = tr.transform(building.geometry.centroid.x, building.geometry.centroid.y)
    from affine import Affine

    grid = Affine(5.0, 0, math.floor(bx) - 100.0, 0, -5.0, math.floor(by) + 100.0)
    classes = world.rasterize(epsg, grid, (40, 40))
    # The building centroid pixel carries the building class, whatever is beneath.
    assert classes[20, 20] == class_by_key("building").id
    road = world.of_kind("road")[0]
    rx, ry = tr.transform(*road.geometry.interpolate(0.5, normalized=True).coords[0])
    grid = Affine(5.0, 0, rx - 50.0, 0, -5.0, ry + 50.0)
    classes = world.rasterize(epsg, grid, (20, 20))
    assert classes[10, 10] in (class_by_key("road").id, class_by_key("building").id)


def test_mgrs_tile_names_and_origins() -> None:
    assert mgrs_tile(32632, 723_000, 5_310_000) == ("32UQU", 699_960.0, 5_400_020.0)
    assert mgrs_tile(32633, 276_000, 5_310_000) == ("33UTP", 199_960.0, 5_400_020.0)


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_plan_grids_follow_each_products_lattice(preset: str) -> None:
    p = PRESETS[preset]
    world = generate_world(p.world, 0)
    acqs = plan_acquisitions(p, 0, world.aoi)
    by = {c: [a for a in acqs if a.collection == c] for c in {a.collection for a in acqs}}
    assert [
        len(by[c]) for c in ("sentinel-2-l2a", "landsat-c2-l2", "sentinel-1-rtc", "ENMAP_HSI_L2A")
    ] == [p.n_s2, p.n_landsat, p.n_s1, p.n_enmap]
    assert {a.grid.epsg for a in acqs} == {32632, 32633}
    for a in by["sentinel-2-l2a"]:
        tx, ty = float(a.props["tile_x"]), float(a.props["tile_y"])
        assert (a.grid.x0 - tx) % 60 == 0 and (ty - a.grid.y0) % 60 == 0
        assert a.grid.width % 6 == 0 and a.grid.height % 6 == 0
    assert {a.props["baseline"] for a in by["sentinel-2-l2a"]} == {"05.10", "02.14"}
    for a in by["landsat-c2-l2"] + by["ENMAP_HSI_L2A"]:
        assert a.grid.x0 % 30 == 15 and a.grid.y0 % 30 == 15
    for a in by["landsat-c2-l2"]:
        assert 0.15 * 30 <= abs(a.shift_m[0]) <= 0.5 * 30 and 0.15 * 30 <= abs(a.shift_m[1]) <= 15
    for a in by["sentinel-1-rtc"]:
        assert a.grid.x0 % 10 not in (0.0, 5.0) and a.sky is None
    clouds = [a.sky.cloud_target for a in acqs if a.sky is not None]
    assert min(clouds) < 0.1 and max(clouds) > 0.3
    days = sorted(a.when.date() for a in by["sentinel-2-l2a"])
    assert days[0] >= p.start and days[-1] <= p.end and (days[-1] - days[0]).days > 30


def test_reflectance_curve_passes_through_anchors() -> None:
    veg = class_by_key("broadleaf")
    values = reflectance_at(veg.spectrum, np.array([0.665, 0.865]))
    assert values.tolist() == [0.03, 0.45]  # red trough, NIR plateau
    s2 = s2_values()
    assert s2["B08"][veg.id - 1] > 5 * s2["B04"][veg.id - 1]
    assert set(s2) == {b.key for b in S2_BANDS}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, N_LABELS - 1), min_size=36, max_size=36), st.integers(0, 10))
def test_mix_is_the_mean_of_cell_values(cells: list[int], band: int) -> None:
    labels = np.array(cells, dtype=np.uint8).reshape(6, 6)
    counts = label_counts(labels, 6)
    assert counts.shape == (1, 1, N_LABELS) and int(counts.sum()) == 36
    table = label_table(
        np.random.default_rng(band).uniform(0, 1, (N_CLASSES, 3)), np.array([0.6, 0.5, 0.4])
    )
    expected = table[labels.ravel()].mean(axis=0)
    assert mix(counts, table)[:, 0, 0] == pytest.approx(expected, abs=1e-12)
    assert coarsen_counts(label_counts(labels, 3), 2).tolist() == counts.tolist()


def test_masks_from_counts() -> None:
    arable = class_by_key("arable").id - 1
    lake = class_by_key("lake").id - 1
    labels = np.full((4, 8), arable, np.uint8)
    labels[:, 2:4] = lake  # pixel 1: water
    labels[0, 4] = CLOUD_EDGE  # pixel 2: one cloud cell
    labels[1, 6] = N_CLASSES + arable  # pixel 3: shadow
    labels[0:2, 6:8] = labels[0:2, 6:8]
    labels[2:4, 0:2] = OUTSIDE
    labels[3, 7] = CLOUD_THICK
    m = masks_from_counts(label_counts(labels, 2))
    assert m.water.tolist() == [[False, True, False, False], [False, True, False, False]]
    assert m.cloud.tolist() == [[False, False, True, False], [False, False, False, True]]
    assert m.thick.tolist() == [[False, False, False, False], [False, False, False, True]]
    assert m.shadow.tolist() == [[False, False, False, True], [False, False, False, False]]
    assert m.valid.tolist() == [[True, True, True, True], [False, True, True, True]]
    assert m.majority[0].tolist() == [arable + 1, lake + 1, arable + 1, arable + 1]


def test_qa_pixel_matches_landsat_test_vectors() -> None:
    valid = np.array([[True, True, True, True, False, True]])
    cloud = np.array([[False, False, True, False, False, False]])
    shadow = np.array([[False, False, False, False, False, True]])
    water = np.array([[False, True, False, False, False, False]])
    # Column 3 touches the cloud: dilated cloud, not clear. Column 5 is shadow over land.
    qa = qa_pixel(valid, cloud, shadow, water)
    assert qa[0, 0] == 21824  # clear land
    assert qa[0, 2] == 22280  # high-confidence cloud
    assert qa[0, 4] == 1  # fill
    assert qa[0, 5] == 23888  # high-confidence shadow, clear
    assert qa[0, 3] & 0b1000010 == 0b10  # dilated, not clear
    assert qa[0, 1] == 21952 or qa[0, 1] & 0b10  # clear water unless it touches the cloud


def test_grid_with_res_rejects_non_nesting_sizes() -> None:
    g = Grid(32632, 0.0, 60.0, 10.0, 6, 6)
    assert g.with_res(20.0).shape == (3, 3)
    with pytest.raises(ValueError, match="multiple"):
        g.with_res(40.0)
