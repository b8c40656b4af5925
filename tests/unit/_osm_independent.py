"""A tiny OSM reader for tests, independent of GDAL: PBF (protobuf + zlib) and XML.

It decodes just enough of the OSM PBF format (https://wiki.openstreetmap.org/wiki/PBF_Format)
to list nodes (plain and dense), ways and relations with their tags, and reads OSM XML with
``xml.etree``. Tests use it to count features and look up coordinates without going through the
OSM driver the reader under test uses.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

__all__ = ["OsmData", "Relation", "Way", "read_osm"]


@dataclass
class Way:
    """One way: id, node refs and tags."""

    id: int
    refs: list[int]
    tags: dict[str, str]


@dataclass
class Relation:
    """One relation: id, members ``(type, ref, role)`` and tags."""

    id: int
    members: list[tuple[str, int, str]]
    tags: dict[str, str]


@dataclass
class OsmData:
    """Everything in a file: node coordinates (lon, lat), node tags, ways, relations, bounds."""

    nodes: dict[int, tuple[float, float]] = field(default_factory=dict)
    node_tags: dict[int, dict[str, str]] = field(default_factory=dict)
    ways: list[Way] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    bounds: tuple[float, float, float, float] | None = None

    def way_coords(self, way: Way) -> list[tuple[float, float]] | None:
        """The way's (lon, lat) vertices, or ``None`` when a node is missing from the file."""
        try:
            return [self.nodes[r] for r in way.refs]
        except KeyError:
            return None


def read_osm(path: Path) -> OsmData:
    """Read an ``.osm`` (XML) or ``.osm.pbf`` file completely."""
    if path.name.endswith(".pbf"):
        return _read_pbf(path.read_bytes())
    return _read_xml(path)


# --- XML ---------------------------------------------------------------------------------------


def _read_xml(path: Path) -> OsmData:
    out = OsmData()
    root = ElementTree.parse(path).getroot()
    for el in root:
        tags = {t.attrib["k"]: t.attrib["v"] for t in el.findall("tag")}
        if el.tag == "bounds":
            a = el.attrib
            out.bounds = (
                float(a["minlon"]),
                float(a["minlat"]),
                float(a["maxlon"]),
                float(a["maxlat"]),
            )
        elif el.tag == "node":
            nid = int(el.attrib["id"])
            out.nodes[nid] = (float(el.attrib["lon"]), float(el.attrib["lat"]))
            if tags:
                out.node_tags[nid] = tags
        elif el.tag == "way":
            refs = [int(n.attrib["ref"]) for n in el.findall("nd")]
            out.ways.append(Way(int(el.attrib["id"]), refs, tags))
        elif el.tag == "relation":
            members = [
                (m.attrib["type"], int(m.attrib["ref"]), m.attrib.get("role", ""))
                for m in el.findall("member")
            ]
            out.relations.append(Relation(int(el.attrib["id"]), members, tags))
    return out


# --- protobuf ----------------------------------------------------------------------------------

Fields = dict[int, list[int | bytes]]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _zigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def _message(buf: bytes) -> Fields:
    """Decode one protobuf message into field number -> list of raw values."""
    out: Fields = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = struct.unpack_from("<q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value = buf[pos : pos + n]
            pos += n
        elif wire == 5:
            value = struct.unpack_from("<i", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.setdefault(num, []).append(value)
    return out


def _packed(fields: Fields, num: int, *, signed: bool = False, delta: bool = False) -> list[int]:
    values: list[int] = []
    for chunk in fields.get(num, []):
        assert isinstance(chunk, bytes)
        pos = 0
        while pos < len(chunk):
            v, pos = _varint(chunk, pos)
            values.append(_zigzag(v) if signed else v)
    if delta:
        acc = 0
        for i, v in enumerate(values):
            acc += v
            values[i] = acc
    return values


def _int(fields: Fields, num: int, default: int = 0, *, signed: bool = False) -> int:
    if num not in fields:
        return default
    v = fields[num][0]
    assert isinstance(v, int)
    if signed:
        return _zigzag(v)
    return v - (1 << 64) if v >= 1 << 63 else v


def _blobs(data: bytes) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        pos += 4
        header = _message(data[pos : pos + n])
        pos += n
        kind = header[1][0]
        size = header[3][0]
        assert isinstance(kind, bytes) and isinstance(size, int)
        blob = _message(data[pos : pos + size])
        pos += size
        raw = blob[1][0] if 1 in blob else zlib.decompress(blob[3][0])  # type: ignore[arg-type]
        assert isinstance(raw, bytes)
        out.append((kind.decode(), raw))
    return out


def _tags(strings: list[str], keys: list[int], vals: list[int]) -> dict[str, str]:
    return {strings[k]: strings[v] for k, v in zip(keys, vals, strict=True)}


def _read_pbf(data: bytes) -> OsmData:
    out = OsmData()
    for kind, raw in _blobs(data):
        block = _message(raw)
        if kind == "OSMHeader":
            if 1 in block:
                bb = _message(block[1][0])  # type: ignore[arg-type]
                left, right = _int(bb, 1, signed=True), _int(bb, 2, signed=True)
                top, bottom = _int(bb, 3, signed=True), _int(bb, 4, signed=True)
                out.bounds = (left * 1e-9, bottom * 1e-9, right * 1e-9, top * 1e-9)
            continue
        strings = [s.decode() for s in _message(block[1][0]).get(1, [])]  # type: ignore[union-attr,arg-type]
        gran = _int(block, 17, 100)
        lat_off, lon_off = _int(block, 19), _int(block, 20)

        def coord(lat: int, lon: int) -> tuple[float, float]:
            return (1e-9 * (lon_off + gran * lon), 1e-9 * (lat_off + gran * lat))  # noqa: B023

        for group_raw in block.get(2, []):
            group = _message(group_raw)  # type: ignore[arg-type]
            for node_raw in group.get(1, []):
                node = _message(node_raw)  # type: ignore[arg-type]
                nid = _int(node, 1, signed=True)
                out.nodes[nid] = coord(_int(node, 8, signed=True), _int(node, 9, signed=True))
                tags = _tags(strings, _packed(node, 2), _packed(node, 3))
                if tags:
                    out.node_tags[nid] = tags
            for dense_raw in group.get(2, []):
                dense = _message(dense_raw)  # type: ignore[arg-type]
                ids = _packed(dense, 1, signed=True, delta=True)
                lats = _packed(dense, 8, signed=True, delta=True)
                lons = _packed(dense, 9, signed=True, delta=True)
                kv = _packed(dense, 10)
                k = 0
                for nid, lat, lon in zip(ids, lats, lons, strict=True):
                    out.nodes[nid] = coord(lat, lon)
                    tags = {}
                    while k < len(kv) and kv[k] != 0:
                        tags[strings[kv[k]]] = strings[kv[k + 1]]
                        k += 2
                    k += 1
                    if tags:
                        out.node_tags[nid] = tags
            for way_raw in group.get(3, []):
                way = _message(way_raw)  # type: ignore[arg-type]
                refs = _packed(way, 8, signed=True, delta=True)
                tags = _tags(strings, _packed(way, 2), _packed(way, 3))
                out.ways.append(Way(_int(way, 1), refs, tags))
            for rel_raw in group.get(4, []):
                rel = _message(rel_raw)  # type: ignore[arg-type]
                roles = _packed(rel, 8)
                memids = _packed(rel, 9, signed=True, delta=True)
                types = _packed(rel, 10)
                names = ("node", "way", "relation")
                members = [
                    (names[t], m, strings[r]) for t, m, r in zip(types, memids, roles, strict=True)
                ]
                tags = _tags(strings, _packed(rel, 2), _packed(rel, 3))
                out.relations.append(Relation(_int(rel, 1), members, tags))
    return out
