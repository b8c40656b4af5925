"""OSM labels: tag parsing, class rules, widths, burn order, no data, errors, real extracts."""

from __future__ import annotations

import logging
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import pyogrio
import pytest
import shapely
from _osm_independent import OsmData, read_osm
from pyproj import Transformer
from shapely.geometry import Polygon

from pipelines.grid import Tile, TileGrid, tiles_for_aoi
from pipelines.labels.base import LABEL_NODATA, LabelReader
from pipelines.labels.osm import (
    DEFAULT_CLASSES,
    HIGHWAY_WIDTHS_M,
    OsmReader,
    TagSelector,
    parse_other_tags,
    parse_width,
)
from schemas.errors import NotFoundError
from schemas.recipe_labels import OsmClassRule, OsmLabels

# A 1200 m tile of zone 32N (lon ~8.9, lat ~48.1): x 492000..493200, y 5328000..5329200.
TILE = Tile(32, "N", 410, 4440, 1200.0)
X0, Y0, X1, Y1 = TILE.bounds
TO_LONLAT = Transformer.from_crs(32632, 4326, always_xy=True)

PBF = "vector/osm/pyrosm__test.osm.pbf"
OSMNX = "vector/osm/osmnx__planet_10.068_48.135_10.071_48.137.osm"

Way = tuple[list[tuple[float, float]], dict[str, str]]


def write_osm(
    path: Path,
    ways: list[Way],
    *,
    bounds_utm: tuple[float, float, float, float] | None = None,
    nodes: list[tuple[tuple[float, float], dict[str, str]]] | None = None,
) -> Path:
    """OSM XML with ways given in zone-32N metres (densified every 50 m), optional <bounds>."""
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", '<osm version="0.6" generator="test">']
    if bounds_utm is not None:
        w, s = TO_LONLAT.transform(bounds_utm[0], bounds_utm[1])
        e, n = TO_LONLAT.transform(bounds_utm[2], bounds_utm[3])
        lines.append(
            f'<bounds minlat="{s:.7f}" minlon="{w:.7f}" maxlat="{n:.7f}" maxlon="{e:.7f}"/>'
        )
    node_lines: list[str] = []
    way_lines: list[str] = []
    nid = 0

    def node(x: float, y: float, tags: dict[str, str] | None = None) -> int:
        nonlocal nid
        nid += 1
        lon, lat = TO_LONLAT.transform(x, y)
        body = "".join(f"<tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in (tags or {}).items())
        node_lines.append(f'<node id="{nid}" lat="{lat:.7f}" lon="{lon:.7f}">{body}</node>')
        return nid

    for (x, y), tags in nodes or []:
        node(x, y, tags)
    for wid, (coords, tags) in enumerate(ways, start=1000):
        closed = coords[0] == coords[-1]
        dense = shapely.segmentize(shapely.LineString(coords), 50.0).coords
        pts = list(dense)[:-1] if closed else list(dense)
        refs = [node(x, y) for x, y in pts]
        if closed:
            refs.append(refs[0])
        nds = "".join(f'<nd ref="{r}"/>' for r in refs)
        tag_xml = "".join(f"<tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items())
        way_lines.append(f'<way id="{wid}">{nds}{tag_xml}</way>')
    lines += node_lines + way_lines + ["</osm>"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def square(cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    return [
        (cx - half, cy - half),
        (cx + half, cy - half),
        (cx + half, cy + half),
        (cx - half, cy + half),
        (cx - half, cy - half),
    ]


def reader(path: Path, **kwargs: object) -> OsmReader:
    return OsmReader(OsmLabels(kind="osm", path=str(path), **kwargs))


def pixel(raster: np.ndarray, tile: Tile, res: float, x: float, y: float) -> int:
    minx, _, _, maxy = tile.bounds
    return int(raster[int((maxy - y) // res), int((x - minx) // res)])


def horizontal_road(y: float, tags: dict[str, str]) -> Way:
    return ([(X0 - 100.0, y), (X1 + 100.0, y)], tags)


# --- other_tags parsing ------------------------------------------------------------------------


def test_parse_other_tags_plain() -> None:
    text = '"surface"=>"asphalt","width"=>"7","name:de"=>"Straße"'
    assert parse_other_tags(text) == {"surface": "asphalt", "width": "7", "name:de": "Straße"}
    assert parse_other_tags(None) == {}
    assert parse_other_tags("") == {}


def test_parse_other_tags_quotes_escapes_commas() -> None:
    # What GDAL writes for: description = a "q", b=>c \ d  and key  we"ird,k=>ey  = "".
    text = r'"description"=>"a \"q\", b=>c \\ d","we\"ird,k=>ey"=>"","x"=>"1,2"'
    assert parse_other_tags(text) == {
        "description": 'a "q", b=>c \\ d',
        'we"ird,k=>ey': "",
        "x": "1,2",
    }
    # Whitespace around separators, unquoted tokens and NULL values (PostgreSQL HSTORE).
    assert parse_other_tags(' "a" => "1" , b=>2, "c"=>NULL ') == {"a": "1", "b": "2"}


def test_parse_other_tags_json_and_malformed() -> None:
    assert parse_other_tags('{"a":"1","b":"x\\"y","n":2}') == {"a": "1", "b": 'x"y', "n": "2"}
    # Malformed or truncated: the pairs before the fault are kept.
    assert parse_other_tags('"a"=>"1","b"=>"unterminated') == {"a": "1"}
    assert parse_other_tags('"a"=>"1","b" "c"') == {"a": "1"}
    assert parse_other_tags('"a"=>"1",=>"x"') == {"a": "1"}


def test_parse_other_tags_reads_what_gdal_writes(tmp_path: Path) -> None:
    tags = {
        "highway": "primary",
        "description": 'a "quoted", b=>c \\ d\\"',
        'we"ird,k=>ey': "",
        "width": "7,5",
        "name:de": "Straße",
        "ref": "B 12;B 30",
    }
    path = write_osm(tmp_path / "esc.osm", [([(X0 + 10, Y0 + 10), (X0 + 20, Y0 + 20)], tags)])
    df = pyogrio.read_dataframe(path, layer="lines")
    parsed = parse_other_tags(df.other_tags[0])
    assert parsed == {k: v for k, v in tags.items() if k != "highway"}  # highway: own column
    assert df.highway[0] == "primary"


# --- widths and selectors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", 7.0),
        ("7 m", 7.0),
        ("7m", 7.0),
        ("7.5", 7.5),
        ("7,5", 7.5),
        ("3;4", 3.0),
        (" 12 metres ", 12.0),
        ("10 ft", 3.048),
        ("10'", 3.048),
        (".5", 0.5),
        (20, 20.0),
        ("0", None),
        ("-3", None),
        ("wide", None),
        ("7-8", None),
        ("2000", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_width(text: object, expected: float | None) -> None:
    got = parse_width(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_tag_selector() -> None:
    anyb = TagSelector.parse("building=*")
    assert anyb.matches("yes") and anyb.matches("house")
    assert not anyb.matches("no") and not anyb.matches(None) and not anyb.matches("")
    some = TagSelector.parse("landuse=forest|meadow")
    assert some.values == frozenset({"forest", "meadow"})
    assert some.matches("meadow") and not some.matches("farmland")


def test_default_classes_are_data() -> None:
    names = [c.name for c in DEFAULT_CLASSES]
    assert names == ["vegetation", "water", "roads", "railways", "buildings"]
    roads = DEFAULT_CLASSES[2]
    assert roads.type_width({"highway": "motorway"}) == 20.0
    assert roads.type_width({"highway": "primary"}) == 12.0
    assert roads.type_width({"highway": "footway"}) == 2.0
    assert DEFAULT_CLASSES[3].type_width({"railway": "rail"}) == 5.0
    assert DEFAULT_CLASSES[4].type_width({}) is None
    assert set(HIGHWAY_WIDTHS_M) >= {"motorway", "residential", "service", "track", "path"}


# --- rasterising synthetic files ---------------------------------------------------------------


def test_protocol_and_output_contract(tmp_path: Path) -> None:
    path = write_osm(tmp_path / "a.osm", [(square(X0 + 600, Y0 + 600, 100), {"building": "yes"})])
    r: LabelReader = reader(path)
    assert r.class_names == ("background", "vegetation", "water", "roads", "railways", "buildings")
    assert r.unlabeled_index is None
    other = Tile(32, "N", 411, 4440, 1200.0)
    out = r.rasterize([TILE, other], 10.0)
    assert set(out) == {TILE.id, other.id}
    for t in (TILE, other):
        assert out[t.id].dtype == np.uint8 and out[t.id].shape == t.shape(10.0)
    b = r.class_names.index("buildings")
    # The 200 m square covers exactly 20 x 20 pixels, centred in the tile.
    assert (out[TILE.id] == b).sum() == 400
    assert out[TILE.id][50:70, 50:70].min() == b
    assert not out[other.id].any()
    assert r.rasterize([], 10.0) == {}


@pytest.mark.parametrize(
    ("width_tag", "res", "band_px"),
    [
        ("20", 10.0, 2),  # 20 m at 10 m: 2 pixels
        ("20", 2.0, 10),
        ("20 m", 2.0, 10),
        ("20;30", 2.0, 10),
        ("wide", 2.0, 3),  # invalid tag: residential default 6 m = 3 pixels at 2 m
        (None, 2.0, 3),
    ],
)
def test_width_tag_buffers_the_line(
    tmp_path: Path, width_tag: str | None, res: float, band_px: int
) -> None:
    tags = {"highway": "residential"}
    if width_tag is not None:
        tags["width"] = width_tag
    # On a pixel edge for an even band, on a row of pixel centres for an odd one, so that no
    # pixel centre lies exactly on the buffer's edge.
    y = Y0 + 600.0 + (res / 2 if band_px % 2 else 0.0)
    path = write_osm(tmp_path / "w.osm", [horizontal_road(y, tags)])
    r = reader(path)
    out = r.rasterize([TILE], res)[TILE.id]
    roads = r.class_names.index("roads")
    col_counts = (out == roads).sum(axis=0)
    assert (col_counts == band_px).all(), np.unique(col_counts)
    rows = np.flatnonzero((out == roads).any(axis=1))
    assert rows.max() - rows.min() + 1 == band_px
    # The band is centred on the road.
    assert np.mean(Y1 - (rows + 0.5) * res) == pytest.approx(y)
    assert set(np.unique(out)) == {0, roads}


def test_recipe_width_and_line_without_width(tmp_path: Path) -> None:
    y = Y0 + 603.0
    path = write_osm(
        tmp_path / "l.osm",
        [
            horizontal_road(y, {"kind": "a"}),
            horizontal_road(Y0 + 300.0, {"kind": "b"}),
            horizontal_road(Y0 + 900.0, {"kind": "b", "width": "40"}),
        ],
    )
    rules = [
        OsmClassRule(name="wide", tags=["kind=a"], width=30.0),
        OsmClassRule(name="thin", tags=["kind=b"]),
    ]
    r = reader(path, classes=rules)
    out = r.rasterize([TILE], 10.0)[TILE.id]
    # Recipe width 30 m: 3 pixels per column.
    assert ((out == 1).sum(axis=0) == 3).all()
    # No width anywhere: unbuffered, all_touched: continuous, 1-2 pixels thick (y = 300 m is
    # the edge between rows 89 and 90).
    lower = out[85:95]
    counts = (lower == 2).sum(axis=0)
    assert counts.min() >= 1 and counts.max() <= 2
    # The feature's own width tag wins over "no width": 40 m = 4 pixels.
    upper = out[25:40]
    assert ((upper == 2).sum(axis=0) == 4).all()


def test_narrow_line_stays_connected(tmp_path: Path) -> None:
    # A 2 m footway at 10 m: its buffer holds almost no pixel centre, the centreline keeps it.
    coords = [(X0 + 5.0, Y0 + 100.0), (X1 - 5.0, Y0 + 1000.0)]
    path = write_osm(tmp_path / "f.osm", [(coords, {"highway": "footway"})])
    r = reader(path)
    out = r.rasterize([TILE], 10.0)[TILE.id]
    burnt = out == r.class_names.index("roads")
    assert burnt.any(axis=0).all()  # every column crossed has a pixel...
    assert burnt.any(axis=1)[21:89].all()  # ...and every row (y 100..1000 m: rows 20..89)
    assert burnt.sum() < 2.2 * 120  # about one pixel per step, not a thick band


def test_priority_building_over_road_over_landuse(tmp_path: Path) -> None:
    cx, cy = X0 + 600.0, Y0 + 600.0
    ways: list[Way] = [
        (square(cx, cy, 400), {"landuse": "meadow"}),
        (square(cx, cy, 50), {"building": "yes"}),
        horizontal_road(cy, {"highway": "primary", "width": "20"}),
    ]
    path = write_osm(tmp_path / "p.osm", ways)
    r = reader(path)
    out = r.rasterize([TILE], 10.0)[TILE.id]
    veg, road, bld = (r.class_names.index(n) for n in ("vegetation", "roads", "buildings"))
    assert pixel(out, TILE, 10, cx, cy) == bld  # building on the road
    assert pixel(out, TILE, 10, cx + 45, cy - 45) == bld
    assert pixel(out, TILE, 10, cx + 200, cy + 5) == road  # road over meadow
    assert pixel(out, TILE, 10, cx + 500, cy - 5) == road  # road outside the meadow
    assert pixel(out, TILE, 10, cx + 200, cy + 200) == veg
    assert pixel(out, TILE, 10, cx + 500, cy + 500) == 0

    # The recipe's order is the priority: landuse last wins everywhere inside it.
    rules = [
        OsmClassRule(name="building", tags=["building=*"]),
        OsmClassRule(name="road", tags=["highway=*"], width=20),
        OsmClassRule(name="land", tags=["landuse=meadow|forest"]),
    ]
    r2 = reader(path, classes=rules)
    out2 = r2.rasterize([TILE], 10.0)[TILE.id]
    assert pixel(out2, TILE, 10, cx, cy) == 3
    assert pixel(out2, TILE, 10, cx + 200, cy + 5) == 3
    assert pixel(out2, TILE, 10, cx + 500, cy - 5) == 2


def test_feature_in_several_classes_gets_the_last(tmp_path: Path) -> None:
    path = write_osm(
        tmp_path / "m.osm", [(square(X0 + 600, Y0 + 600, 100), {"building": "yes", "landuse": "x"})]
    )
    rules = [
        OsmClassRule(name="first", tags=["building=*"]),
        OsmClassRule(name="second", tags=["landuse=x"]),
        OsmClassRule(name="third", tags=["amenity=none"]),
    ]
    r = reader(path, classes=rules)
    feats = r.features()
    assert feats.class_index.tolist() == [2]
    out = r.rasterize([TILE], 10.0)[TILE.id]
    assert set(np.unique(out)) == {0, 2}


def test_tunnels_and_open_area_ways_are_left_out(tmp_path: Path) -> None:
    path = write_osm(
        tmp_path / "t.osm",
        [
            horizontal_road(Y0 + 300, {"highway": "primary", "tunnel": "yes"}),
            horizontal_road(Y0 + 600, {"railway": "rail", "tunnel": "yes"}),
            # An open way with area tags (a clipped outline): not burnt as a line.
            (
                [(X0 + 100, Y0 + 900), (X0 + 500, Y0 + 900), (X0 + 500, Y0 + 1000)],
                {"building": "yes"},
            ),
        ],
    )
    r = reader(path)
    assert len(r.features()) == 0
    assert not r.rasterize([TILE], 10.0)[TILE.id].any()


def test_closed_riverbank_way_is_an_area(tmp_path: Path) -> None:
    # GDAL puts closed waterway=riverbank ways in "lines"; they are areas.
    path = write_osm(
        tmp_path / "rb.osm", [(square(X0 + 600, Y0 + 600, 100), {"waterway": "riverbank"})]
    )
    r = reader(path)
    out = r.rasterize([TILE], 10.0)[TILE.id]
    assert (out == r.class_names.index("water")).sum() == 400


def test_nodata_outside_declared_bounds(tmp_path: Path) -> None:
    bounds = (X0 + 300.0, Y0 + 300.0, X1 - 300.0, Y1 - 300.0)
    ways: list[Way] = [(square(X0 + 600, Y0 + 600, 590), {"landuse": "forest"})]
    r = reader(write_osm(tmp_path / "b.osm", ways, bounds_utm=bounds))
    assert r.bounds is not None
    out = r.rasterize([TILE, Tile(32, "N", 412, 4440, 1200.0)], 10.0)
    inside = out[TILE.id][35:85, 35:85]
    assert (inside == 1).all()
    assert (out[TILE.id][:25] == LABEL_NODATA).all() and (
        out[TILE.id][:, 95:] == LABEL_NODATA
    ).all()
    # About 60 x 60 pixels inside (the lon/lat box is not exactly a UTM square).
    assert abs(int((out[TILE.id] != LABEL_NODATA).sum()) - 3600) < 200
    assert (out["32N-0412-4440"] == LABEL_NODATA).all()
    # Without <bounds>: background, never 255.
    r2 = reader(write_osm(tmp_path / "nb.osm", ways))
    assert r2.bounds is None
    out2 = r2.rasterize([TILE], 10.0)[TILE.id]
    assert LABEL_NODATA not in out2 and 0 in out2


def test_points_only_when_the_layer_is_named(tmp_path: Path) -> None:
    nodes = [((X0 + 605.0, Y0 + 605.0), {"natural": "tree"})]
    path = write_osm(tmp_path / "pt.osm", [], nodes=nodes)
    rules = [OsmClassRule(name="tree", tags=["natural=tree"])]
    assert not reader(path, classes=rules).rasterize([TILE], 10.0)[TILE.id].any()
    out = reader(path, classes=rules, layer="points").rasterize([TILE], 10.0)[TILE.id]
    assert (out == 1).sum() == 1 and pixel(out, TILE, 10, X0 + 605, Y0 + 605) == 1


def test_converted_vector_file_gives_the_same_raster(tmp_path: Path) -> None:
    ways: list[Way] = [
        (square(X0 + 600, Y0 + 600, 300), {"landuse": "meadow"}),
        (square(X0 + 600, Y0 + 600, 40), {"building": "house"}),
        horizontal_road(Y0 + 603, {"highway": "secondary", "width": "15", "surface": "asphalt"}),
        ([(X0 + 100, Y0 + 100), (X1 - 100, Y1 - 100)], {"waterway": "stream", "name": 'A "b"'}),
    ]
    osm = write_osm(tmp_path / "c.osm", ways)
    gpkg = tmp_path / "c.gpkg"
    for layer in ("lines", "multipolygons"):
        df = pyogrio.read_dataframe(osm, layer=layer).to_crs(3857)
        pyogrio.write_dataframe(df, gpkg, layer=layer, driver="GPKG")
    expected = reader(osm).rasterize([TILE], 5.0)[TILE.id]
    got = reader(gpkg).rasterize([TILE], 5.0)[TILE.id]
    assert len(np.unique(expected)) == 5  # background, vegetation, water, roads, buildings
    # Reprojection to EPSG:3857 and back moves vertices by micrometres: compare pixel counts.
    assert (got != expected).sum() <= 4


def test_cache_reads_and_prefetch(tmp_path: Path) -> None:
    path = write_osm(tmp_path / "r.osm", [(square(X0 + 600, Y0 + 600, 100), {"building": "yes"})])
    r = reader(path)
    first = r.rasterize([TILE], 10.0)
    assert r.reads == 1
    again = r.rasterize([TILE], 10.0)
    assert r.reads == 1 and (again[TILE.id] == first[TILE.id]).all()
    far = Tile(32, "N", 430, 4440, 1200.0)
    r.rasterize([far], 10.0)
    assert r.reads == 2
    # A prefetched bbox covering both tiles: one read.
    lon0, lat0 = TO_LONLAT.transform(X0 - 5000, Y0 - 5000)
    lon1, lat1 = TO_LONLAT.transform(X1 + 30000, Y1 + 5000)
    r2 = OsmReader(OsmLabels(kind="osm", path=str(path)), prefetch_bbox=(lon0, lat0, lon1, lat1))
    r2.rasterize([TILE], 10.0)
    r2.rasterize([far], 10.0)
    assert r2.reads == 1


# --- errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        reader(tmp_path / "nope.osm.pbf")


def test_unknown_layer(tmp_path: Path) -> None:
    path = write_osm(tmp_path / "u.osm", [(square(X0 + 600, Y0 + 600, 100), {"building": "yes"})])
    with pytest.raises(NotFoundError, match=r"layer 'roads' not found.*multipolygons"):
        reader(path, layer="roads")


def test_rule_matching_nothing_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_osm(tmp_path / "n.osm", [(square(X0 + 600, Y0 + 600, 100), {"building": "yes"})])
    rules = [
        OsmClassRule(name="building", tags=["building=*"]),
        OsmClassRule(name="glacier", tags=["natural=glacier"]),
    ]
    r = reader(path, classes=rules)
    with caplog.at_level(logging.WARNING, logger="pipelines.labels.osm"):
        out = r.rasterize([TILE], 10.0)[TILE.id]
        r.rasterize([Tile(32, "N", 430, 4440, 1200.0)], 10.0)
    warned = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warned) == 1 and "glacier" in warned[0].getMessage()  # once per reader
    assert set(np.unique(out)) == {0, 1}


# --- real extracts -----------------------------------------------------------------------------


def _available(data: OsmData, refs: list[int]) -> list[tuple[float, float]]:
    """Distinct coordinates of the refs present in the file (extracts cut ways at their edge)."""
    return list(dict.fromkeys(data.nodes[r] for r in refs if r in data.nodes))


def _expected_ids(data: OsmData) -> dict[str, set[str]]:
    """Independent ground truth: ways per default class, by their tags and nodes in the file.

    A way of an area class needs 3 distinct nodes in the file spanning an area, a way of a
    line class 2; tunnels are left out (as in the default classes).
    """
    underground = {"yes", "culvert", "building_passage"}
    out: dict[str, set[str]] = {"buildings": set(), "roads": set(), "water": set()}
    for w in data.ways:
        pts = _available(data, w.refs)
        t = w.tags
        if t.get("building", "no") != "no" and len(pts) >= 3 and Polygon(pts).area > 0:
            out["buildings"].add(f"way/{w.id}")
        if t.get("tunnel") in underground or len(pts) < 2:
            continue
        if t.get("highway") in HIGHWAY_WIDTHS_M:
            out["roads"].add(f"way/{w.id}")
        if "waterway" in t or t.get("natural") in ("water", "wetland", "bay") or "water" in t:
            out["water"].add(f"way/{w.id}")
    return out


def _check_counts(path: Path, counts: dict[str, tuple[int, int]]) -> OsmReader:
    data = read_osm(path)
    expected = _expected_ids(data)
    r = reader(path)
    feats = r.features()
    for name, (tagged, kept) in counts.items():
        got = set(feats.osm_id[feats.class_index == r.class_names.index(name)].tolist())
        assert got == expected[name], name
        assert len(got) == kept, name
        tag_key = {"buildings": "building", "roads": "highway", "water": "waterway"}[name]
        assert sum(tag_key in w.tags for w in data.ways) == tagged, name
    # No multipolygon relation of these classes has its members in these extracts.
    assert not set(feats.osm_id.tolist()) & {f"relation/{rel.id}" for rel in data.relations}
    return r


def _check_building_placed(
    r: OsmReader, ring_lonlat: list[tuple[float, float]], res: float, away_m: float
) -> None:
    """The building's interior carries the class; a ring ``away_m`` outside it does not."""
    lon, lat = ring_lonlat[0]
    grid = TileGrid(tile_size_m=1200, resolutions_m=(res,))
    tile = grid.tile_at(lon, lat)
    to_utm = Transformer.from_crs(4326, tile.epsg, always_xy=True)
    poly = Polygon([to_utm.transform(x, y) for x, y in ring_lonlat])
    assert shapely.box(*tile.bounds).contains(poly.buffer(away_m + res))
    out = r.rasterize([tile], res)[tile.id]
    bld = r.class_names.index("buildings")
    inner = poly.buffer(-1.5 * res)
    assert not inner.is_empty
    x, y = inner.representative_point().coords[0]
    assert pixel(out, tile, res, x, y) == bld
    around = poly.buffer(away_m).exterior
    values = set()
    for f in np.linspace(0, 1, 64, endpoint=False):
        px, py = around.interpolate(f, normalized=True).coords[0]
        values.add(pixel(out, tile, res, px, py))
    assert bld not in values and 0 in values, values


def test_real_pbf_counts_and_placement(shared_fixtures: Path) -> None:
    path = shared_fixtures / PBF
    # pyrosm test.osm.pbf: 2219 ways tagged building, 26 of them cut by the extract to fewer
    # than 3 nodes -> 2193; 343 highway ways, 333 of road types (1 highway=construction and 9
    # cycleway tunnels left out), 11 of these cut to < 2 nodes -> 322; 1 waterway=stream.
    r = _check_counts(path, {"buildings": (2219, 2193), "roads": (343, 322), "water": (1, 1)})
    feats = r.features()
    names = [r.class_names[i] for i in feats.class_index]
    assert names.count("vegetation") == 25 and names.count("railways") == 1
    # Way 84791031, building=yes, an L-shaped block of ~2600 m^2 in Kotka; nodes as in the file.
    ring = [
        (26.9537157, 60.520643),
        (26.9536167, 60.5207679),
        (26.9547636, 60.5209882),
        (26.954561, 60.5212437),
        (26.9533126, 60.521004),
        (26.9534128, 60.5208775),
        (26.9532562, 60.5208475),
        (26.9534576, 60.5205934),
    ]
    data = read_osm(path)
    way = next(w for w in data.ways if w.id == 84791031)
    np.testing.assert_allclose([data.nodes[n] for n in way.refs[:-1]], ring, atol=1e-7, rtol=0)
    # Other buildings are >= 29 m away: a ring 12 m outside it is no building.
    _check_building_placed(r, ring, 2.0, 12.0)


def test_real_osm_xml_counts_and_placement(shared_fixtures: Path) -> None:
    path = shared_fixtures / OSMNX
    # osmnx planet_10.068,48.135_10.071,48.137.osm: 33 ways tagged building, one cut to a single
    # node -> 32 (the building relation 318560 has none of its ways in the file); 19 highway
    # ways, 5 cut to one node -> 14; no water.
    r = _check_counts(path, {"buildings": (33, 32), "roads": (19, 14), "water": (0, 0)})
    # Way 275490765, building=yes, Schwendier Weg 18, ~133 m^2; the next building is 8.2 m off.
    ring = [
        (10.0700177, 48.1352235),
        (10.0700178, 48.135139),
        (10.0699931, 48.135139),
        (10.0699932, 48.1350959),
        (10.0700796, 48.135096),
        (10.0700795, 48.1351371),
        (10.0701623, 48.1351372),
        (10.0701621, 48.1352236),
    ]
    data = read_osm(path)
    way = next(w for w in data.ways if w.id == 275490765)
    np.testing.assert_allclose([data.nodes[n] for n in way.refs[:-1]], ring, atol=1e-7, rtol=0)
    _check_building_placed(r, ring, 1.0, 4.0)


def test_real_extract_bounds_are_nodata(shared_fixtures: Path) -> None:
    path = shared_fixtures / OSMNX
    r = reader(path)
    bounds = r.bounds
    assert bounds is not None
    assert bounds == pytest.approx((10.068, 48.135, 10.071, 48.137))
    tiles = tiles_for_aoi(shapely.box(*bounds), TileGrid(tile_size_m=1200, resolutions_m=(10,)))
    out = r.rasterize(tiles, 10.0)
    inside = sum(int((a != LABEL_NODATA).sum()) for a in out.values())
    # The extract is 0.003 x 0.002 degrees: about 223 m x 222 m = ~496 pixels of 100 m^2.
    assert abs(inside - 496) < 40


def test_real_pbf_bbox_reads_equal_a_whole_file_read(shared_fixtures: Path) -> None:
    """Reading only each tile's bbox misses nothing that a whole-file read burns."""
    path = shared_fixtures / PBF
    whole = reader(path)
    whole.features()  # caches every matched feature of the file
    bounds = whole.bounds
    assert bounds is not None
    tiles = tiles_for_aoi(shapely.box(*bounds), TileGrid(tile_size_m=1200, resolutions_m=(5,)))
    expected = whole.rasterize(tiles, 5.0)
    assert whole.reads == 1
    for tile in tiles[::2]:
        fresh = reader(path)
        got = fresh.rasterize([tile], 5.0)[tile.id]
        assert fresh.reads == 1
        assert (got == expected[tile.id]).all(), tile.id
    assert sum(int((a == 5).sum()) for a in expected.values()) > 10_000  # buildings burnt
