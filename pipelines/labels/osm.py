r"""OpenStreetMap labels: OSM features matched to classes by their tags, burnt per tile.

:class:`OsmReader` implements :class:`pipelines.labels.base.LabelReader` for a recipe's
``kind: osm`` source. Output per tile: dims ``(y, x)`` = ``Tile.shape(res)``, uint8, on the tile's
UTM grid (``Tile.transform(res)``); 0 = ``background`` (no matching feature), 1..254 = classes
(index = position in ``classes`` + 1), :data:`~pipelines.labels.base.LABEL_NODATA` (255) = the
pixel centre lies outside the extract's declared bounds.

Sources
    * ``.osm`` (XML) and ``.osm.pbf`` through GDAL's OSM driver (pyogrio). Layers read:
      ``multipolygons`` (closed ways with area tags and multipolygon relations), ``lines`` (other
      ways) and ``multilinestrings`` (route/multilinestring relations). ``points`` (tagged
      nodes) are **not** read unless ``layer: points`` is named: a node has no extent at label
      resolution, and the default classes describe areas and lines. ``other_relations`` is never
      read. Naming a ``layer`` reads that one layer only.
    * Converted vector files (GeoPackage, FlatGeobuf, ... with GDAL's tag columns, e.g. written
      by ``ogr2ogr`` from an OSM file, or one column per key): if the file has GDAL's OSM layer
      names, the same layers as above are read, otherwise the first layer (or the named one).
      Any CRS; reads use the file's spatial index.

Tags
    A feature's tags are its dedicated columns (``highway``, ``building``, ...; keys with ``:``
    may be laundered to ``_``) plus GDAL's ``other_tags``/``all_tags`` column, an HSTORE-style
    string ``"key"=>"value","k2"=>"v2"`` with ``\"`` and ``\\`` escapes (or a JSON object when
    the file was opened with ``TAGS_FORMAT=JSON``), parsed by :func:`parse_other_tags`.

Class rules (:class:`ClassRule`, from the recipe's ``classes`` or :data:`DEFAULT_CLASSES`)
    A selector ``key=value``, ``key=v1|v2`` or ``key=*`` matches when the tag has one of the
    values; ``key=*`` matches any value except ``no`` (``building=no`` is not a building). A
    feature is in a class when it matches any of the class's selectors and none of its
    ``exclude`` selectors (the default classes leave out tunnels and culverts). A feature that
    matches several classes gets the **last** one. A class that matches no feature in a read is
    logged as a warning (once per reader), never an error.

Burning
    Classes are burnt in list order, so where features overlap **the later class wins** (that is
    the priority order). Areas burn by pixel centre (``all_touched`` from the recipe). Lines
    with a width (the feature's own ``width`` tag, else ``est_width``, else the class's
    per-type table, else the class's ``width``; tag values like ``7``, ``7 m``, ``7.5``,
    ``7,5``, ``3;4`` (the first), ``12 ft``; anything else falls back to the class width) are
    buffered by half the width on each side in the tile's UTM CRS (round caps and joins) and
    burnt by pixel centre; their centreline is burnt too (GDAL's Bresenham walk), so a line
    narrower than a pixel stays one pixel wide instead of breaking into dashes. Lines without
    any width are burnt unbuffered with ``all_touched=True``. Named point layers burn the pixel
    under each point.

No data
    GDAL reports the extract's bounds from the ``<bounds>`` element of an ``.osm`` file or the
    header bbox of a ``.pbf``; pixels whose centre lies outside them are 255. A file without
    declared bounds (and every converted vector file) has no "outside": pixels without a feature
    are background.

Reads and memory
    A read asks GDAL only for the features whose envelope meets the tiles' WGS84 bbox, grown by
    half the widest class width plus a margin (a feature farther out whose own ``width`` tag
    would reach into the tiles is missed). The OSM driver has no index: **every read parses the
    whole file** once per layer (three passes by default); GDAL keeps its node and way index in
    a temporary file (in RAM up to ``OSM_MAX_TMPFILE_SIZE``, 100 MB by default, then on disk in
    ``CPL_TMPDIR``). Features are streamed in Arrow batches of :data:`BATCH_SIZE` rows; from
    each batch only the matched features are kept, as a geometry, a class index, a width and
    an element id (no tags). Those matched features are cached per reader instance, keyed by
    file and bbox (at most :data:`CACHE_ENTRIES` bboxes, least recently used dropped); a read
    whose bbox lies inside a cached one parses nothing. Memory therefore follows GDAL's index
    (bounded as above) plus one batch plus the matched features of the tiles' bbox (for the
    default classes, in built-up areas, most features; about 1 kB each for a small building),
    not the file. Pass ``prefetch_bbox`` (e.g. the build's AOI) to parse an OSM file once for
    all shards, at the cost of holding the matched features of that whole bbox. Reads of one
    reader are serialised (a lock), so threads sharing it never parse the same file twice at
    once; converted files read through their spatial index and are cheap to re-read.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyogrio
import shapely
from pyproj import CRS, Transformer
from rasterio import features as rio_features
from shapely.geometry.base import BaseGeometry

from pipelines.grid import Tile
from pipelines.labels.base import LABEL_NODATA, LabelRasters
from schemas.errors import InvalidInputError, NotFoundError
from schemas.recipe_labels import OsmClassRule, OsmLabels

__all__ = [
    "BACKGROUND",
    "BATCH_SIZE",
    "CACHE_ENTRIES",
    "DEFAULT_CLASSES",
    "HIGHWAY_WIDTHS_M",
    "OSM_LAYERS",
    "RAILWAY_WIDTH_M",
    "WATERWAY_WIDTHS_M",
    "ClassRule",
    "OsmFeatures",
    "OsmReader",
    "TagSelector",
    "parse_other_tags",
    "parse_width",
    "rules_from_source",
]

logger = logging.getLogger(__name__)

#: Name of class index 0.
BACKGROUND = "background"
#: Layers of GDAL's OSM driver.
OSM_LAYERS = ("points", "lines", "multilinestrings", "multipolygons", "other_relations")
#: Layers read when the recipe names none (points and other_relations are left out).
_DEFAULT_LAYERS = ("multipolygons", "lines", "multilinestrings")
#: Rows per streamed Arrow batch (the transient footprint of a read: one batch with all tags).
BATCH_SIZE = 20_000
#: Cached bboxes of matched features per reader.
CACHE_ENTRIES = 2
#: Largest width (m) taken from a tag; larger values are treated as invalid (as the schema).
_MAX_WIDTH_M = 1000.0
#: Extra margin (m) around the tiles' bbox for reads, on top of half the widest class width.
_READ_MARGIN_M = 50.0
#: Metres per degree of latitude (for bbox margins only).
_M_PER_DEG = 111_320.0
#: The whole world (a read without a spatial filter).
_WORLD = (-180.0, -90.0, 180.0, 90.0)
#: Spacing (degrees) of vertices when projecting the extract's bounds (~1 km).
_BOUNDS_SEGMENT_DEG = 0.01
#: Columns that hold GDAL's tag strings.
_TAG_COLUMNS = ("other_tags", "all_tags")
#: Columns that are ids or computed, never tags.
_NON_TAG_COLUMNS = frozenset({"osm_id", "osm_way_id", "z_order", *_TAG_COLUMNS})
#: Keys read besides the selectors: the width tags and the tags of closed-way areas.
_WIDTH_KEYS = ("width", "est_width")
#: Closed ways GDAL puts in ``lines`` (their key is not in its ``closed_ways_are_polygons``)
#: that are areas: ``(key, value or None = any value)``.
_CLOSED_LINE_AREAS: tuple[tuple[str, str | None], ...] = (
    ("waterway", "riverbank"),
    ("waterway", "dock"),
    ("waterway", "boatyard"),
    ("water", None),
)

UInt8Array = npt.NDArray[np.uint8]
ObjectArray = npt.NDArray[np.object_]
Float32Array = npt.NDArray[np.float32]
BBox = tuple[float, float, float, float]

# --- tag parsing -------------------------------------------------------------------------------


def _hstore_token(text: str, pos: int) -> tuple[bool, str | None, int]:
    """One HSTORE key or value at ``pos``: ``(ok, value, next position)``; ``NULL`` -> None."""
    n = len(text)
    if pos < n and text[pos] == '"':
        chars: list[str] = []
        i = pos + 1
        while i < n:
            ch = text[i]
            if ch == "\\" and i + 1 < n:
                chars.append(text[i + 1])
                i += 2
            elif ch == '"':
                return True, "".join(chars), i + 1
            else:
                chars.append(ch)
                i += 1
        return False, None, n  # unterminated (a truncated string)
    i = pos
    while i < n and text[i] not in ",=" and not text[i].isspace():
        i += 1
    token = text[pos:i]
    if not token:
        return False, None, i
    return True, (None if token.upper() == "NULL" else token), i


def parse_other_tags(text: str | None) -> dict[str, str]:
    r"""Parse GDAL's ``other_tags``/``all_tags`` string into a dict.

    GDAL writes ``"key"=>"value","k2"=>"v2"`` (PostgreSQL HSTORE syntax) with ``"`` and ``\``
    inside keys and values escaped by a backslash; with ``TAGS_FORMAT=JSON`` it writes a JSON
    object. Unquoted tokens and ``NULL`` values (HSTORE) are accepted; a ``NULL`` value drops
    the key. Parsing stops at the first malformed pair and keeps the pairs before it (GDAL
    skips whole pairs when the 8 kB field would overflow, so its output is never cut mid-pair).

    Args:
        text: The column value (``None`` or empty: no tags).

    Returns:
        Key -> value, in the order of the string (a repeated key keeps its last value).
    """
    if not text:
        return {}
    s = text.strip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return {str(k): _json_text(v) for k, v in obj.items() if v is not None}
    out: dict[str, str] = {}
    i, n = 0, len(s)
    while i < n:
        while i < n and (s[i] == "," or s[i].isspace()):
            i += 1
        if i >= n:
            break
        ok, key, i = _hstore_token(s, i)
        if not ok or key is None:
            break
        while i < n and s[i].isspace():
            i += 1
        if not s.startswith("=>", i):
            break
        i += 2
        while i < n and s[i].isspace():
            i += 1
        ok, value, i = _hstore_token(s, i)
        if not ok:
            break
        if value is not None:
            out[key] = value
    return out


def _json_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


_WIDTH_RE = re.compile(
    r"^\s*(\d+(?:[.,]\d+)?|[.,]\d+)\s*(m|metres?|meters?|ft|feet|')?\s*$", re.IGNORECASE
)


def parse_width(text: object) -> float | None:
    """A width tag in metres, or ``None`` when it is not a usable number.

    ``"7"``, ``"7 m"``, ``"7.5"``, ``"7,5"`` (decimal comma), ``"3;4"`` (several values: the
    first), ``"12 ft"``/``"12'"`` (feet). Zero, negative, above 1000 m or anything else
    (``"wide"``, ``"7-8"``) gives ``None``.
    """
    if text is None:
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        first = str(text).split(";")[0]
        match = _WIDTH_RE.match(first)
        if match is None:
            return None
        value = float(match.group(1).replace(",", "."))
        unit = (match.group(2) or "").lower()
        if unit in ("ft", "feet", "'"):
            value *= 0.3048
    if not math.isfinite(value) or value <= 0 or value > _MAX_WIDTH_M:
        return None
    return value


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagSelector:
    """``key=value``, ``key=v1|v2`` or ``key=*`` (``values`` is ``None`` for ``*``)."""

    key: str
    values: frozenset[str] | None

    @classmethod
    def parse(cls, text: str) -> TagSelector:
        """Parse ``key=value`` / ``key=v1|v2`` / ``key=*``.

        Raises:
            InvalidInputError: No ``=``, or an empty key or value.
        """
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise InvalidInputError(
                f"tag selector {text!r} is not 'key=value', 'key=v1|v2' or 'key=*'",
                where="labels[].classes[].tags",
            )
        if value == "*":
            return cls(key, None)
        values = frozenset(v.strip() for v in value.split("|") if v.strip())
        if not values:
            raise InvalidInputError(f"tag selector {text!r} has no value", "labels[].classes")
        return cls(key, values)

    def matches(self, value: str | None) -> bool:
        """Whether a tag value (``None`` = tag absent) is selected."""
        if value is None or value == "":
            return False
        if self.values is None:
            return value != "no"
        return value in self.values

    def __str__(self) -> str:
        return f"{self.key}=" + ("*" if self.values is None else "|".join(sorted(self.values)))


@dataclass(frozen=True)
class ClassRule:
    """One class: which features it takes and how wide its lines are.

    Attributes:
        name: Class name.
        selectors: A feature matching any of them is in the class...
        exclude: ...unless it matches one of these (e.g. ``tunnel=yes``).
        width_m: Total width (m) of its lines when neither a tag nor ``widths_m`` gives one;
            ``None``: such lines are burnt unbuffered (``all_touched``).
        widths_m: ``key -> value -> width`` defaults by type, e.g. ``highway -> primary -> 12``.
        lines: Whether line features can be in the class. ``False`` for classes of areas
            (buildings, vegetation): an open way tagged ``building`` or ``landuse`` is a broken or
            clipped outline, not a line on the ground, and is skipped.
    """

    name: str
    selectors: tuple[TagSelector, ...]
    exclude: tuple[TagSelector, ...] = ()
    width_m: float | None = None
    widths_m: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    lines: bool = True

    @classmethod
    def from_recipe(cls, rule: OsmClassRule) -> ClassRule:
        """The rule of a recipe entry (its width is the default for every line)."""
        return cls(rule.name, tuple(TagSelector.parse(t) for t in rule.tags), (), rule.width)

    @property
    def max_width_m(self) -> float:
        """Widest default width of the rule (0 when it has none)."""
        widths = [w for table in self.widths_m.values() for w in table.values()]
        return max([self.width_m or 0.0, *widths])

    def type_width(self, tags: Mapping[str, str | None]) -> float | None:
        """Default width for a feature with these tags: by type, else :attr:`width_m`."""
        for key, table in self.widths_m.items():
            value = tags.get(key)
            if value is not None and value in table:
                return table[value]
        return self.width_m


#: Total carriageway width (m) by ``highway`` type in the default ``roads`` class. Roughly one
#: lane 3-3.75 m plus shoulders; dual carriageways mapped as two ways get the width twice.
HIGHWAY_WIDTHS_M: Mapping[str, float] = {
    "motorway": 20.0,
    "trunk": 16.0,
    "primary": 12.0,
    "secondary": 10.0,
    "tertiary": 8.0,
    "motorway_link": 8.0,
    "trunk_link": 8.0,
    "primary_link": 7.0,
    "secondary_link": 6.0,
    "tertiary_link": 6.0,
    "unclassified": 6.0,
    "residential": 6.0,
    "road": 6.0,
    "busway": 6.0,
    "living_street": 5.0,
    "pedestrian": 5.0,
    "service": 4.0,
    "track": 4.0,
    "footway": 2.0,
    "path": 2.0,
    "cycleway": 2.0,
    "bridleway": 2.0,
    "steps": 2.0,
}
#: Width (m) by ``waterway`` type in the default ``water`` class (a ``width`` tag wins).
WATERWAY_WIDTHS_M: Mapping[str, float] = {
    "river": 12.0,
    "canal": 10.0,
    "tidal_channel": 5.0,
    "stream": 3.0,
    "ditch": 2.0,
    "drain": 2.0,
}
#: Width (m) of a track bed in the default ``railways`` class (one track plus ballast).
RAILWAY_WIDTH_M = 5.0

_UNDERGROUND = (TagSelector("tunnel", frozenset({"yes", "culvert", "building_passage"})),)

#: eoforge's default classes (``classes`` unset in the recipe), in burn order (later wins).
#: From SENSORS.md 9.1 (HOT export selectors, OSM wiki land-cover tags). Vegetation is burnt
#: first so that water lying in (or mapped across) forests and fields stays water; roads and
#: railways then go over both, buildings over everything (as the archive's own world does:
#: parcels, rivers, roads, buildings). Only road, rail and waterway types that are physical
#: surfaces are listed (no ``highway=proposed``/``platform``, no ``waterway=dam``), and tunnels
#: and culverts are left out: they are not seen from above.
DEFAULT_CLASSES: tuple[ClassRule, ...] = (
    ClassRule(
        "vegetation",
        (
            TagSelector(
                "landuse",
                frozenset(
                    {
                        "forest",
                        "meadow",
                        "grass",
                        "orchard",
                        "vineyard",
                        "farmland",
                        "allotments",
                        "village_green",
                        "plant_nursery",
                    }
                ),
            ),
            TagSelector("natural", frozenset({"wood", "scrub", "grassland", "heath"})),
            TagSelector("leisure", frozenset({"park", "garden"})),
        ),
        lines=False,
    ),
    ClassRule(
        "water",
        (
            TagSelector("natural", frozenset({"water", "wetland", "bay"})),
            TagSelector("waterway", frozenset({*WATERWAY_WIDTHS_M, "riverbank", "dock"})),
            TagSelector("water", None),
            TagSelector("landuse", frozenset({"reservoir", "basin"})),
        ),
        exclude=_UNDERGROUND,
        widths_m={"waterway": WATERWAY_WIDTHS_M},
    ),
    ClassRule(
        "roads",
        (TagSelector("highway", frozenset(HIGHWAY_WIDTHS_M)),),
        exclude=_UNDERGROUND,
        widths_m={"highway": HIGHWAY_WIDTHS_M},
    ),
    ClassRule(
        "railways",
        (TagSelector("railway", frozenset({"rail", "light_rail", "tram", "narrow_gauge"})),),
        exclude=_UNDERGROUND,
        width_m=RAILWAY_WIDTH_M,
    ),
    ClassRule("buildings", (TagSelector("building", None),), lines=False),
)


def rules_from_source(source: OsmLabels) -> tuple[ClassRule, ...]:
    """The class rules of a recipe source: its ``classes``, or :data:`DEFAULT_CLASSES`."""
    if source.classes is None:
        return DEFAULT_CLASSES
    return tuple(ClassRule.from_recipe(r) for r in source.classes)


# --- matched features --------------------------------------------------------------------------

#: Geometry kinds of matched features.
AREA, LINE, POINT = 0, 1, 2


@dataclass(frozen=True, eq=False)
class OsmFeatures:
    """Matched features of one read (no tags kept).

    Attributes:
        geometry: Shapely geometries in ``crs``, dims ``(n,)`` object.
        class_index: Class index 1..254 of each feature, dims ``(n,)`` uint8.
        kind: 0 = area, 1 = line, 2 = point, dims ``(n,)`` uint8.
        width_m: Line width in metres (NaN: unbuffered line, or not a line), dims ``(n,)``
            float32.
        osm_id: Element id, ``"way/123"``, ``"relation/45"``, ``"node/6"`` (``""`` when the file
            has no id column), dims ``(n,)`` object.
        crs: CRS of the geometries (EPSG:4326 for OSM files).
    """

    geometry: ObjectArray
    class_index: UInt8Array
    kind: UInt8Array
    width_m: Float32Array
    osm_id: ObjectArray
    crs: CRS

    def __len__(self) -> int:
        return len(self.geometry)

    def take(self, index: npt.NDArray[np.intp]) -> OsmFeatures:
        """The features at ``index``."""
        return OsmFeatures(
            self.geometry[index],
            self.class_index[index],
            self.kind[index],
            self.width_m[index],
            self.osm_id[index],
            self.crs,
        )

    @classmethod
    def concat(cls, parts: Sequence[OsmFeatures], crs: CRS) -> OsmFeatures:
        """All ``parts`` in order (empty when there are none)."""
        if not parts:
            return cls(
                np.empty(0, dtype=object),
                np.empty(0, dtype=np.uint8),
                np.empty(0, dtype=np.uint8),
                np.empty(0, dtype=np.float32),
                np.empty(0, dtype=object),
                crs,
            )
        return cls(
            np.concatenate([p.geometry for p in parts]),
            np.concatenate([p.class_index for p in parts]),
            np.concatenate([p.kind for p in parts]),
            np.concatenate([p.width_m for p in parts]),
            np.concatenate([p.osm_id for p in parts]),
            crs,
        )


@dataclass
class _CacheEntry:
    bbox: BBox
    features: OsmFeatures
    tree: Any = None  # STRtree over features.geometry, built on first use

    def strtree(self) -> Any:
        if self.tree is None:
            self.tree = shapely.STRtree(self.features.geometry)
        return self.tree


@dataclass(frozen=True)
class _Layer:
    name: str
    fields: tuple[str, ...]
    point_layer: bool
    crs: CRS


# --- reader ------------------------------------------------------------------------------------


#: Element type of ``osm_id`` per OSM layer (``osm_way_id``, when set, is a way id).
_ID_PREFIX = {
    "points": "node",
    "lines": "way",
    "multilinestrings": "relation",
    "multipolygons": "relation",
    "other_relations": "relation",
}


def _transform_bbox(bbox: BBox, src: CRS, dst: CRS) -> BBox:
    if src.equals(dst, ignore_axis_order=True):
        return bbox
    tr = Transformer.from_crs(src, dst, always_xy=True)
    w, s, e, n = tr.transform_bounds(*bbox, densify_pts=21)
    return (float(w), float(s), float(e), float(n))


def _from_wkb(wkb: ObjectArray) -> ObjectArray:
    """Geometries from WKB; unclosed rings (ways cut by an extract's edge) are closed.

    shapely < 2.1 cannot close them (no ``on_invalid="fix"``): they become ``None`` there and
    are skipped.
    """
    try:
        out: ObjectArray = shapely.from_wkb(wkb, on_invalid="fix")
    except ValueError:
        out = shapely.from_wkb(wkb, on_invalid="ignore")
    return out


@contextmanager
def _quiet_rings() -> Iterator[None]:
    """Silence GDAL's "Non closed ring detected" (ways cut by an extract's edge).

    Such rings are repaired or skipped by :func:`_usable` and counted in the log.
    """
    # catch_warnings swaps process-wide state; a warning another thread raises meanwhile may be
    # filtered by this too. Only this one message is ignored.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Nn]on closed ring", category=Warning)
        yield


def _check_osm_xml_complete(path: Path) -> None:
    """Refuse an OSM XML file cut short (GDAL's OSM driver reads the part before the cut).

    A complete ``.osm`` file ends with ``</osm>``; a truncated download or export does not.
    ``.osm.pbf`` files are left to GDAL, which reports a broken block.

    Raises:
        InvalidInputError: The XML file does not end with ``</osm>``.
    """
    with path.open("rb") as fh:
        head = fh.read(512).lstrip()
        if not head.startswith((b"<?xml", b"<osm")):
            return  # not XML (PBF): nothing to check here
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 256))
        tail = fh.read().rstrip()
    if not tail.endswith(b"</osm>"):
        raise InvalidInputError(
            "the OSM XML file is truncated or malformed (it does not end with </osm>)",
            where=str(path),
            fix="download or export the OSM file again",
        )


def _read_info(path: str, layer: str) -> dict[str, Any]:
    with _quiet_rings():
        info: dict[str, Any] = pyogrio.read_info(path, layer=layer)
    return info


def _is_remote(path: str) -> bool:
    return "://" in path or path.startswith("/vsi")


def _contains(outer: BBox, inner: BBox) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and outer[2] >= inner[2]
        and outer[3] >= inner[3]
    )


class OsmReader:
    """An OSM label source of a recipe (see the module docstring for every rule).

    Args:
        source: The recipe's ``kind: osm`` entry (paths already resolved).
        prefetch_bbox: Optional WGS84 ``(west, south, east, north)`` read in full on the first
            read (together with the tiles' bbox), so later reads inside it parse nothing, e.g.
            the build's AOI. Default: each read covers its tiles only.

    Raises:
        NotFoundError: The file or the named layer does not exist (the message lists the
            layers).
        InvalidInputError: The file is not a readable vector file, a converted file has no CRS,
            or a tag selector is malformed.
    """

    def __init__(self, source: OsmLabels, *, prefetch_bbox: BBox | None = None) -> None:
        self.source = source
        self.path = source.path
        self.rules = rules_from_source(source)
        self._names = (BACKGROUND, *(r.name for r in self.rules))
        self._prefetch = prefetch_bbox
        self._lock = threading.Lock()
        self._cache: OrderedDict[BBox, _CacheEntry] = OrderedDict()
        self._matched: set[int] = set()
        self._warned: set[int] = set()
        self.reads = 0
        """Number of file reads so far (cache misses): a check on the cache."""
        self._open()

    # -- LabelReader --

    @property
    def class_names(self) -> tuple[str, ...]:
        """``("background", *class names)``; raster value ``i`` is ``class_names[i]``."""
        return self._names

    @property
    def unlabeled_index(self) -> int | None:
        """``None``: background (0) is a class ("no feature mapped"), not "unlabelled"."""
        return None

    @property
    def bounds(self) -> BBox | None:
        """The extract's declared WGS84 bounds (outside them pixels are 255), or ``None``."""
        return self._bounds

    def rasterize(self, tiles: Sequence[Tile], resolution_m: float) -> LabelRasters:
        """Class rasters for ``tiles`` at ``resolution_m``.

        Args:
            tiles: Tiles of any UTM zones (usually one shard).
            resolution_m: Label pixel size in metres; must divide the tile size.

        Returns:
            Tile id -> dims ``(y, x)`` uint8 class raster: 0 background, 1..254 classes,
            255 outside the extract's declared bounds.

        Raises:
            InvalidInputError: The resolution does not divide the tile size.
        """
        for tile in tiles:
            tile.shape(resolution_m)
        if not tiles:
            return {}
        bbox = self._tiles_bbox(tiles, resolution_m)
        entry = self._entry(bbox)
        out: dict[str, UInt8Array] = {}
        by_epsg: dict[int, list[Tile]] = {}
        for tile in tiles:
            by_epsg.setdefault(tile.epsg, []).append(tile)
        for epsg, zone_tiles in by_epsg.items():
            out.update(self._rasterize_zone(entry, epsg, zone_tiles, resolution_m))
        return out

    # -- inspection --

    def features(self, bbox: BBox | None = None) -> OsmFeatures:
        """The matched features whose envelope meets a WGS84 bbox (whole file: ``None``).

        Args:
            bbox: ``(west, south, east, north)`` in degrees, or ``None`` for every feature.

        Returns:
            The features in their file CRS, in read order (layers, then file order).
        """
        query = bbox if bbox is not None else _WORLD
        entry = self._entry(query)
        if bbox is None:
            return entry.features
        box = self._wgs84_box_in_crs(bbox, entry.features.crs)
        idx = np.sort(entry.strtree().query(box, predicate="intersects"))
        return entry.features.take(idx)

    # -- opening --

    def _open(self) -> None:
        path = self.path
        if not _is_remote(path) and not Path(path).exists():
            raise NotFoundError(
                "OSM label file not found",
                where=path,
                fix="check labels[].path (a relative path is taken from the recipe's folder)",
            )
        try:
            names = [str(name) for name, _ in pyogrio.list_layers(path)]
            info = _read_info(path, names[0]) if names else {}
        except Exception as exc:  # pyogrio raises DataSourceError and others
            raise InvalidInputError(
                f"cannot open as OSM or vector data ({exc})",
                where=path,
                fix="give an .osm, .osm.pbf or a vector file (GeoPackage, ...) with OSM tags",
            ) from exc
        if not names:
            raise NotFoundError("the file has no layers", where=path, fix="give a non-empty file")
        self._is_osm = str(info.get("driver", "")) == "OSM"
        if self._is_osm and not _is_remote(path):
            _check_osm_xml_complete(Path(path))
        layer = self.source.layer
        if layer is not None:
            if layer not in names:
                raise NotFoundError(
                    f"layer '{layer}' not found; the file has: {', '.join(names)}",
                    where=f"{path}, labels[].layer",
                    fix="set labels[].layer to one of them, or remove it to read the OSM "
                    "layers (multipolygons, lines, multilinestrings)",
                )
            chosen = [layer]
        elif all(n in names for n in ("lines", "multipolygons")):
            chosen = [n for n in _DEFAULT_LAYERS if n in names]
        else:
            chosen = [names[0]]
        explicit = layer is not None
        layers: list[_Layer] = []
        for name in chosen:
            layer_info = _read_info(path, name)
            fields = tuple(str(f) for f in layer_info["fields"])
            crs_text = layer_info.get("crs")
            if crs_text:
                crs = CRS.from_user_input(crs_text)
            elif self._is_osm:
                crs = CRS.from_epsg(4326)
            else:
                raise InvalidInputError(
                    "the layer has no CRS",
                    where=f"{path} (layer {name})",
                    fix="assign one, e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in.gpkg",
                )
            layers.append(_Layer(name, fields, explicit, crs))
        self._layers = tuple(layers)
        #: CRS of the cached features: the first layer's (the others are projected to it).
        self._crs = layers[0].crs
        self._bounds: BBox | None = None
        if self._is_osm:
            total = info.get("total_bounds")
            if total is not None and all(math.isfinite(float(v)) for v in total):
                w, s, e, n = (float(v) for v in total)
                if w < e and s < n:
                    self._bounds = (w, s, e, n)

    # -- reading --

    def _tiles_bbox(self, tiles: Sequence[Tile], resolution_m: float) -> BBox:
        """WGS84 bbox of the tiles, grown by the read margin (metres converted to degrees)."""
        margin = _READ_MARGIN_M + 2 * resolution_m
        margin += max(r.max_width_m for r in self.rules) / 2 if self.rules else 0.0
        west = south = math.inf
        east = north = -math.inf
        for tile in tiles:
            w, s, e, n = tile.footprint_wgs84().bounds
            west, south, east, north = min(west, w), min(south, s), max(east, e), max(north, n)
        dlat = margin / _M_PER_DEG
        coslat = max(math.cos(math.radians(max(abs(south), abs(north)))), 0.01)
        dlon = margin / (_M_PER_DEG * coslat)
        return (
            max(west - dlon, -180.0),
            max(south - dlat, -90.0),
            min(east + dlon, 180.0),
            min(north + dlat, 90.0),
        )

    def _entry(self, bbox: BBox) -> _CacheEntry:
        with self._lock:
            for key, entry in self._cache.items():
                if _contains(key, bbox):
                    self._cache.move_to_end(key)
                    return entry
            query = bbox
            if self._prefetch is not None and not self.reads:
                p = self._prefetch
                query = (
                    min(p[0], bbox[0]),
                    min(p[1], bbox[1]),
                    max(p[2], bbox[2]),
                    max(p[3], bbox[3]),
                )
            feats = self._read(query)
            self.reads += 1
            entry = _CacheEntry(query, feats)
            self._cache[query] = entry
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return entry

    def _wgs84_box_in_crs(self, bbox: BBox, crs: CRS) -> BaseGeometry:
        return shapely.box(*_transform_bbox(bbox, CRS.from_epsg(4326), crs))

    def _read(self, bbox_wgs84: BBox) -> OsmFeatures:
        whole = bbox_wgs84 == _WORLD
        parts: list[OsmFeatures] = []
        counts = np.zeros(len(self.rules) + 1, dtype=np.int64)
        dropped = 0
        for layer in self._layers:
            layer_bbox = (
                None if whole else _transform_bbox(bbox_wgs84, CRS.from_epsg(4326), layer.crs)
            )
            for part, n_dropped in self._read_layer(layer, layer_bbox):
                parts.append(part)
                counts += np.bincount(part.class_index, minlength=len(counts))
                dropped += n_dropped
        feats = OsmFeatures.concat(parts, self._crs)
        if dropped:
            logger.info(
                "%s: %d matched features were skipped: no usable geometry (ways cut by the "
                "extract's edge to fewer than 2-3 nodes) or open ways of area classes",
                self.path,
                dropped,
            )
        logger.debug("%s: read %d matched features in %s", self.path, len(feats), bbox_wgs84)
        for i, rule in enumerate(self.rules, start=1):
            if counts[i]:
                self._matched.add(i)
            elif i not in self._matched and i not in self._warned:
                self._warned.add(i)
                logger.warning(
                    "%s: class '%s' (%s) matched no feature in bbox %s; check its tags",
                    self.path,
                    rule.name,
                    ", ".join(str(s) for s in rule.selectors),
                    "(whole file)" if whole else tuple(round(v, 5) for v in bbox_wgs84),
                )
        return feats

    def _needed_keys(self) -> tuple[str, ...]:
        keys: dict[str, None] = {}
        for rule in self.rules:
            for sel in (*rule.selectors, *rule.exclude):
                keys[sel.key] = None
            for key in rule.widths_m:
                keys[key] = None
        for key in (*_WIDTH_KEYS, *(k for k, _ in _CLOSED_LINE_AREAS)):
            keys[key] = None
        return tuple(keys)

    def _read_layer(self, layer: _Layer, bbox: BBox | None) -> Iterator[tuple[OsmFeatures, int]]:
        keys = self._needed_keys()
        key_columns: dict[str, str] = {}
        for key in keys:
            if key in layer.fields and key not in _NON_TAG_COLUMNS:
                key_columns[key] = key
            else:
                laundered = key.replace(":", "_")
                if laundered in layer.fields and laundered not in _NON_TAG_COLUMNS:
                    key_columns[key] = laundered
        tag_columns = [c for c in _TAG_COLUMNS if c in layer.fields]
        id_columns = [c for c in ("osm_id", "osm_way_id") if c in layer.fields]
        columns = list(dict.fromkeys([*id_columns, *key_columns.values(), *tag_columns]))
        kwargs: dict[str, Any] = {"batch_size": BATCH_SIZE, "use_pyarrow": True}
        if bbox is not None:
            kwargs["bbox"] = bbox
        if self._is_osm:
            # A SELECT on one layer makes the OSM driver keep only that layer's features while
            # it parses (other layers would otherwise pile up in memory).
            select = ", ".join(f'"{c}"' for c in columns) if columns else "*"
            kwargs["sql"] = f'SELECT {select} FROM "{layer.name}"'
        else:
            kwargs["layer"] = layer.name
            kwargs["columns"] = columns
        with _quiet_rings(), pyogrio.raw.open_arrow(self.path, **kwargs) as (meta, reader):
            geom_name = str(meta.get("geometry_name") or "wkb_geometry")
            for batch in reader:
                if batch.num_rows:
                    yield self._match_batch(
                        batch, geom_name, layer, key_columns, tag_columns, id_columns, keys
                    )

    def _match_batch(
        self,
        batch: Any,
        geom_name: str,
        layer: _Layer,
        key_columns: Mapping[str, str],
        tag_columns: Sequence[str],
        id_columns: Sequence[str],
        keys: Sequence[str],
    ) -> tuple[OsmFeatures, int]:
        n = batch.num_rows
        names = batch.schema.names
        values: dict[str, list[str | None]] = {}
        for key in keys:
            col = key_columns.get(key)
            values[key] = (
                [None if v is None else str(v) for v in batch.column(col).to_pylist()]
                if col is not None and col in names
                else [None] * n
            )
        for tcol in tag_columns:
            if tcol not in names:
                continue
            texts = batch.column(tcol).to_pylist()
            for i, text in enumerate(texts):
                if not text or not any(f'"{k}"' in text for k in keys):
                    continue
                tags = parse_other_tags(text)
                for key in keys:
                    if values[key][i] is None and key in tags:
                        values[key][i] = tags[key]
        masks: dict[TagSelector, npt.NDArray[np.bool_]] = {}

        def selected(sels: Sequence[TagSelector]) -> npt.NDArray[np.bool_]:
            acc = np.zeros(n, dtype=bool)
            for sel in sels:
                if sel not in masks:
                    masks[sel] = np.fromiter(
                        (sel.matches(v) for v in values[sel.key]), dtype=bool, count=n
                    )
                acc |= masks[sel]
            return acc

        class_index = np.zeros(n, dtype=np.uint8)
        for r, rule in enumerate(self.rules, start=1):
            class_index[selected(rule.selectors) & ~selected(rule.exclude)] = r
        hit = np.flatnonzero(class_index)
        if not len(hit):
            return OsmFeatures.concat([], self._crs), 0
        wkb = batch.column(geom_name).to_numpy(zero_copy_only=False)[hit]
        geoms = _from_wkb(wkb)
        if not layer.crs.equals(self._crs):
            geoms = _project(geoms, Transformer.from_crs(layer.crs, self._crs, always_xy=True))
        ids = self._ids(batch, id_columns, layer, hit)
        kinds = np.zeros(len(hit), dtype=np.uint8)
        widths = np.full(len(hit), np.nan, dtype=np.float32)
        keep = np.zeros(len(hit), dtype=bool)
        for j, i in enumerate(hit.tolist()):
            geom, kind = _usable(geoms[j], {k: values[k][i] for k, _ in _CLOSED_LINE_AREAS})
            if geom is None:
                continue
            if kind == POINT and not layer.point_layer:
                continue
            rule = self.rules[int(class_index[i]) - 1]
            if kind == LINE and not rule.lines:
                continue
            geoms[j] = geom
            kinds[j] = kind
            keep[j] = True
            if kind == LINE:
                width = parse_width(values["width"][i])
                if width is None:
                    width = parse_width(values["est_width"][i])
                if width is None:
                    width = rule.type_width({k: values[k][i] for k in rule.widths_m})
                if width is not None:
                    widths[j] = width
        dropped = int(len(hit) - keep.sum())
        sel = np.flatnonzero(keep)
        return (
            OsmFeatures(
                geoms[sel], class_index[hit][sel], kinds[sel], widths[sel], ids[sel], self._crs
            ),
            dropped,
        )

    def _ids(
        self, batch: Any, id_columns: Sequence[str], layer: _Layer, hit: npt.NDArray[np.intp]
    ) -> ObjectArray:
        out = np.full(len(hit), "", dtype=object)
        if not id_columns:
            return out
        prefix = _ID_PREFIX.get(layer.name, "")
        names = batch.schema.names
        rel = batch.column("osm_id").to_pylist() if "osm_id" in names else [None] * batch.num_rows
        way = (
            batch.column("osm_way_id").to_pylist()
            if "osm_way_id" in names
            else [None] * batch.num_rows
        )
        for j, i in enumerate(hit.tolist()):
            if way[i] is not None:
                out[j] = f"way/{way[i]}"
            elif rel[i] is not None:
                out[j] = f"{prefix}/{rel[i]}" if prefix else str(rel[i])
        return out

    # -- burning --

    def _rasterize_zone(
        self, entry: _CacheEntry, epsg: int, tiles: Sequence[Tile], resolution_m: float
    ) -> dict[str, UInt8Array]:
        feats = entry.features
        dst = CRS.from_epsg(epsg)
        # The features near these tiles (the same margin as the read), in the source CRS.
        query = self._wgs84_box_in_crs(self._tiles_bbox(tiles, resolution_m), feats.crs)
        idx: npt.NDArray[np.intp] = (
            np.sort(entry.strtree().query(query, predicate="intersects"))
            if len(feats)
            else np.empty(0, dtype=np.intp)
        )
        near = feats.take(idx)
        geoms = near.geometry
        if len(geoms) and not feats.crs.equals(dst):
            geoms = _project(geoms, Transformer.from_crs(feats.crs, dst, always_xy=True))
        shapes = _burn_shapes(geoms, near, self.source.all_touched)
        geom_arr = np.empty(len(shapes), dtype=object)
        geom_arr[:] = [g for g, _, _ in shapes]
        values = np.asarray([v for _, v, _ in shapes], dtype=np.uint8)
        touched = np.asarray([t for _, _, t in shapes], dtype=bool)
        tree = shapely.STRtree(geom_arr)
        out: dict[str, UInt8Array] = {}
        for tile in tiles:
            minx, miny, maxx, maxy = tile.bounds
            p = 2 * resolution_m
            rect = (minx - p, miny - p, maxx + p, maxy + p)
            hit = np.sort(tree.query(shapely.box(*rect), predicate="intersects"))
            raster = np.zeros(tile.shape(resolution_m), dtype=np.uint8)
            if len(hit):
                local = shapely.clip_by_rect(geom_arr[hit], *rect)
                _burn(raster, tile, resolution_m, local, values[hit], touched[hit])
            if self._bounds is not None:
                inside = self._inside_bounds(tile, resolution_m)
                if inside is not None:
                    raster[~inside] = LABEL_NODATA
            out[tile.id] = raster
        return out

    def _inside_bounds(self, tile: Tile, resolution_m: float) -> npt.NDArray[np.bool_] | None:
        """Pixels whose centre is inside the declared bounds (``None``: the whole tile is)."""
        assert self._bounds is not None
        bounds = shapely.box(*self._bounds)
        footprint = tile.footprint_wgs84()
        if bounds.contains(footprint):
            return None
        shape = tile.shape(resolution_m)
        if not bounds.intersects(footprint):
            return np.zeros(shape, dtype=bool)
        ring = shapely.segmentize(bounds, _BOUNDS_SEGMENT_DEG)
        projected = _project(ring, Transformer.from_crs(4326, tile.epsg, always_xy=True))
        with _rasterize_lock():
            mask: UInt8Array = rio_features.rasterize(
                [(projected, 1)],
                out_shape=shape,
                transform=tile.transform(resolution_m),
                fill=0,
                all_touched=False,
                dtype="uint8",
            )
        return mask.astype(bool)


def _rasterize_lock() -> Any:
    """The lock in-memory GDAL operations share (see ``pipelines._warp._REPROJECT_LOCK``)."""
    from pipelines._warp import _REPROJECT_LOCK

    return _REPROJECT_LOCK


def _project(geoms: Any, tr: Transformer) -> Any:
    def xy(coords: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, xy)


_AREA_TYPES = ("Polygon", "MultiPolygon")
_LINE_TYPES = ("LineString", "MultiLineString", "LinearRing")
_POINT_TYPES = ("Point", "MultiPoint")


def _usable(
    geom: BaseGeometry | None, area_tags: Mapping[str, str | None]
) -> tuple[BaseGeometry | None, int]:
    """A burnable 2-D geometry and its kind, or ``(None, 0)``.

    Invalid polygons (ways cut by the extract's edge, self-intersections) are repaired with
    ``make_valid`` and keep their polygonal part; closed lines GDAL did not turn into areas
    (``waterway=riverbank``, ``water=*``) become polygons.
    """
    if geom is None or geom.is_empty:
        return None, 0
    if shapely.get_coordinate_dimension(geom) > 2:
        geom = shapely.force_2d(geom)
    gtype = geom.geom_type
    if gtype == "GeometryCollection":
        polys = [p for p in shapely.get_parts(geom) if p.geom_type in _AREA_TYPES]
        lines = [p for p in shapely.get_parts(geom) if p.geom_type in _LINE_TYPES]
        if polys:
            geom, gtype = shapely.union_all(polys), "MultiPolygon"
        elif lines:
            geom, gtype = shapely.union_all(lines), "MultiLineString"
        else:
            return None, 0
    if gtype in _AREA_TYPES:
        if not geom.is_valid:
            geom = _polygonal(shapely.make_valid(geom))
            if geom is None:
                return None, 0
        return (geom, AREA) if geom.area > 0 else (None, 0)
    if gtype in _LINE_TYPES:
        if gtype == "LineString" and geom.is_closed and len(geom.coords) >= 4:
            for key, value in _CLOSED_LINE_AREAS:
                tag = area_tags.get(key)
                if tag is not None and (value is None or tag == value):
                    poly = _polygonal(shapely.make_valid(shapely.Polygon(geom.coords)))
                    if poly is not None and poly.area > 0:
                        return poly, AREA
                    break
        return (geom, LINE) if geom.length > 0 else (None, 0)
    if gtype in _POINT_TYPES:
        return geom, POINT
    return None, 0


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    if geom.is_empty:
        return None
    if geom.geom_type in _AREA_TYPES:
        return geom
    polys = [p for p in shapely.get_parts(geom) if p.geom_type in _AREA_TYPES]
    return shapely.union_all(polys) if polys else None


def _burn_shapes(
    geoms: ObjectArray, feats: OsmFeatures, all_touched: bool
) -> list[tuple[BaseGeometry, int, bool]]:
    """``(geometry in the tile CRS, class index, all_touched)`` to burn, in burn order.

    Sorted by class, then by ``all_touched`` (the order within a class does not matter: same
    value), so each class takes at most two ``rasterize`` calls. Areas burn with the recipe's
    ``all_touched``; a line with a width becomes its buffer and its centreline (both by pixel
    centre / Bresenham); a line without one burns with ``all_touched=True``; a point burns the
    pixel under it.
    """
    if not len(geoms):
        return []
    widths = feats.width_m.astype(np.float64)
    is_buffered = (feats.kind == LINE) & np.isfinite(widths)
    buffers = np.empty(len(geoms), dtype=object)
    if is_buffered.any():
        sel = np.flatnonzero(is_buffered)
        buffers[sel] = shapely.buffer(geoms[sel], widths[sel] / 2.0, quad_segs=4)
    out: list[tuple[BaseGeometry, int, bool]] = []
    for i in range(len(geoms)):
        value = int(feats.class_index[i])
        kind = int(feats.kind[i])
        if kind == AREA:
            out.append((geoms[i], value, all_touched))
        elif kind == POINT:
            out.append((geoms[i], value, True))
        elif is_buffered[i]:
            out.append((buffers[i], value, False))
            out.append((geoms[i], value, False))
        else:
            out.append((geoms[i], value, True))
    out.sort(key=lambda s: (s[1], s[2]))
    return out


def _burn(
    raster: UInt8Array,
    tile: Tile,
    resolution_m: float,
    geoms: ObjectArray,
    values: UInt8Array,
    touched: npt.NDArray[np.bool_],
) -> None:
    """Burn shapes (already in burn order) into ``raster`` in place.

    Runs of consecutive shapes with the same ``all_touched`` flag go to one
    ``rasterio.features.rasterize`` call, so the order (the class priority) is kept across
    calls.
    """
    transform = tile.transform(resolution_m)
    for flag, run in _runs(geoms, values, touched):
        with _rasterize_lock():
            rio_features.rasterize(
                run, out=raster, transform=transform, all_touched=flag, dtype="uint8"
            )


def _runs(
    geoms: ObjectArray, values: UInt8Array, touched: npt.NDArray[np.bool_]
) -> Iterable[tuple[bool, list[tuple[BaseGeometry, int]]]]:
    run: list[tuple[BaseGeometry, int]] = []
    flag: bool | None = None
    for geom, value, t in zip(geoms.tolist(), values.tolist(), touched.tolist(), strict=True):
        if geom is None or geom.is_empty:
            continue
        if flag is not None and t != flag and run:
            yield flag, run
            run = []
        flag = bool(t)
        run.append((geom, int(value)))
    if run and flag is not None:
        yield flag, run
