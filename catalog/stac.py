"""Every catalog row as a STAC 1.1 Item, the cube as a STAC Collection, stac-geoparquet export.

One :class:`schemas.tile.TileRecord` (one tile in one period) becomes one Item
(:func:`record_to_item`); :func:`cube_collection` describes the whole cube. Both are plain JSON
dicts. Fields:

* core: ``id`` (``<tile>_<period>``), WGS84 ``geometry``/``bbox``, ``datetime: null`` with
  ``start_datetime``/``end_datetime``. Records hold half-open periods ``[start, end)`` (the
  build's periods); STAC's ``end_datetime`` is inclusive, so Items carry ``end - 1 ms`` and a
  tile of June never matches a search for the instant July 1st 00:00.
* projection (:data:`PROJECTION_EXTENSION`): ``proj:code`` ``EPSG:<n>``, ``proj:bbox`` (tile CRS),
  ``proj:shape``/``proj:transform`` at the cube's reference resolution; each sensor and label
  asset repeats them at its own resolution.
* eo (:data:`EO_EXTENSION`, declared only when set): ``eo:cloud_cover`` in percent, of the
  reference sensor when it is optical and present, else of the first optical sensor in cube order.
* label (:data:`LABEL_EXTENSION`, declared when the cube has label sources): ``label:type``
  ``raster``, ``label:properties`` ``null`` and one ``label:classes`` object per source with
  ``name: null`` (the extension's rule for raster labels), in the order of
  ``eoforge:label_sources``; each ``labels-<source>`` asset carries its own ``label:classes``.
* ``eoforge:`` fields (no published schema): ``tile_id``, ``period_id``, ``split`` (``null`` =
  unassigned), ``cube_position``, ``shard_id``, ``sensor_names``, ``sensors`` (per sensor:
  ``datetimes``, ``item_ids``, ``cloud_cover`` in percent, ``cloud_fraction`` and
  ``valid_fraction`` in 0-1, ``shift_dy_m``/``shift_dx_m``/``shift_applied``),
  ``label_sources``, ``class_fractions``, ``multilabels``, ``unlabeled_fractions``,
  ``label_flags`` (as in the catalog row).
* assets: ``cube`` (the Zarr root, roles ``data``), one per sensor present (``<cube>/<sensor>``,
  with ``bands`` and ``gsd``) and one per label source (``<cube>/labels/<source>``, roles
  ``labels``); all carry ``eoforge:cube_position`` (the index on the ``tile`` axis).
* links: ``derived_from`` to every source item whose href is known, ``collection`` when a
  collection href is given. STAC APIs add ``self``/``parent``/``root`` themselves when serving.

Light imports only (json, shapely; pyarrow through the catalog reader; rustac when exporting).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import shapely

from catalog.writer import read_records
from schemas.cube import LABELS_GROUP, CubeLayout, pixels_per_tile
from schemas.errors import InvalidInputError, NotFoundError
from schemas.licences import label_terms, sensor_terms
from schemas.tile import SensorObservation, TileRecord

__all__ = [
    "CUBE_ASSET",
    "EOFORGE_PREFIX",
    "EO_EXTENSION",
    "LABEL_EXTENSION",
    "PLAN_DIR",
    "PROJECTION_EXTENSION",
    "PROVIDER_API_URLS",
    "STAC_VERSION",
    "ZARR_MEDIA_TYPE",
    "CubeStac",
    "cube_collection",
    "cube_stac",
    "label_asset_key",
    "read_cube_layout",
    "record_to_item",
    "reference_sensor_from_plans",
    "source_links_from_plans",
    "write_stac_geoparquet",
    "write_stac_ndjson",
]

STAC_VERSION = "1.1.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EO_EXTENSION = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
#: v1.0.1: raster labels give ``label:classes[].name`` as ``null`` (v1.0.0's schema forbade it).
LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
#: Prefix of eoforge's own fields (no published extension schema).
EOFORGE_PREFIX = "eoforge:"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
CUBE_ASSET = "cube"
#: Folder of a cube holding the build plans (``plan-<run>.json``), as ``flows.build`` writes.
PLAN_DIR = "_eoforge"
#: STAC API root of each provider (``schemas.sensors.Provider`` values), for source links of plan
#: items that carry no ``self`` link.
PROVIDER_API_URLS: Mapping[str, str] = {
    "earth-search": "https://earth-search.aws.element84.com/v1",
    "planetary-computer": "https://planetarycomputer.microsoft.com/api/stac/v1",
    "cdse": "https://stac.dataspace.copernicus.eu/v1",
    "dlr": "https://geoservice.dlr.de/eoc/ogc/stac/v1",
}
#: Inclusive end = exclusive end - 1 ms (stac-geoparquet keeps milliseconds, so it round-trips).
_ONE_MS = timedelta(milliseconds=1)
_COLLECTION_ID = re.compile(r"[^A-Za-z0-9._-]+")


def _iso(moment: datetime) -> str:
    """RFC 3339 in UTC with ``Z``, with only the sub-second digits needed (as rustac writes)."""
    us = moment.microsecond
    spec = "seconds" if us == 0 else "milliseconds" if us % 1000 == 0 else "microseconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _end_inclusive(record: TileRecord) -> datetime:
    end = record.period_end
    return end - _ONE_MS if end > record.period_start else end


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(100.0 * fraction, 6)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def label_asset_key(source: str) -> str:
    """Asset key of label source ``source``: ``labels-<source>``."""
    return f"labels-{source}"


def _scaled_transform(transform: Sequence[float], factor: float) -> list[float]:
    a, b, c, d, e, f = transform
    return [a * factor, b * factor, c, d * factor, e * factor, f]


def _grid_fields(record: TileRecord, layout: CubeLayout, resolution_m: float) -> dict[str, Any]:
    n = pixels_per_tile(layout.tile_size_m, resolution_m)
    factor = resolution_m / layout.reference_resolution_m
    return {"proj:shape": [n, n], "proj:transform": _scaled_transform(record.transform, factor)}


def _cloud_sensor(
    sensors: Sequence[SensorObservation], layout: CubeLayout, reference: str | None
) -> SensorObservation | None:
    optical = [s for s in _in_cube_order(sensors, layout) if s.cloud_fraction is not None]
    preferred = [s for s in optical if s.sensor == reference]
    chosen = preferred or optical
    return chosen[0] if chosen else None


def _in_cube_order(
    sensors: Sequence[SensorObservation], layout: CubeLayout
) -> list[SensorObservation]:
    """Sensors in the layout's order; any the layout does not know after them, by name."""
    rank = {s.name: i for i, s in enumerate(layout.sensors)}
    return sorted(sensors, key=lambda s: (rank.get(s.sensor, len(rank)), s.sensor))


def _sensor_fields(obs: SensorObservation) -> dict[str, Any]:
    return {
        "sensor": obs.sensor,
        "datetimes": [_iso(t) for t in obs.datetimes],
        "item_ids": list(obs.item_ids),
        "cloud_cover": _percent(obs.cloud_fraction),
        "cloud_fraction": obs.cloud_fraction,
        "valid_fraction": obs.valid_fraction,
        "shift_dy_m": obs.shift_dy_m,
        "shift_dx_m": obs.shift_dx_m,
        "shift_applied": obs.shift_applied,
    }


def _label_classes(layout: CubeLayout) -> list[dict[str, Any]]:
    return [{"name": None, "classes": list(lab.class_names)} for lab in layout.labels]


def _label_description(layout: CubeLayout) -> str:
    sources = ", ".join(f"{lab.source} ({len(lab.class_names)} classes)" for lab in layout.labels)
    return (
        f"Per-pixel class rasters at {layout.label_resolution_m:g} m in the cube's "
        f"{LABELS_GROUP}/<source> arrays, one per source: {sources}. Per-tile class fractions, "
        "multi-labels and unlabeled shares are in the eoforge:class_fractions, "
        "eoforge:multilabels and eoforge:unlabeled_fractions properties."
    )


def _label_properties(layout: CubeLayout) -> dict[str, Any]:
    if not layout.labels:
        return {}
    return {
        "label:type": "raster",
        "label:properties": None,
        "label:classes": _label_classes(layout),
        "label:description": _label_description(layout),
        "label:tasks": ["segmentation", "classification"],
        "label:methods": ["automated"],
    }


def record_to_item(
    record: TileRecord,
    layout: CubeLayout,
    *,
    cube_href: str,
    source_links: Mapping[str, str] | None = None,
    collection_id: str | None = None,
    collection_href: str | None = None,
    reference_sensor: str | None = None,
) -> dict[str, Any]:
    """The STAC 1.1 Item of one catalog row (module docstring lists the fields).

    Args:
        record: The catalog row.
        layout: The cube's layout (sensor resolutions and bands, label classes).
        cube_href: Href of the cube root as Items should name it (relative or absolute); sensor
            and label assets are ``<cube_href>/<group>[/<array>]``.
        source_links: Source item id -> href of that item (see
            :func:`source_links_from_plans`); ids without an href get no ``derived_from`` link
            but stay listed in ``eoforge:sensors``.
        collection_id: The Item's ``collection`` field, if any; then a ``collection`` link is
            added too (STAC requires both or neither).
        collection_href: Href of that link; default ``collection.json`` (a Collection file
            beside the Items, as the exports write it). STAC APIs replace it with their own.
        reference_sensor: The co-registration reference sensor, preferred for ``eo:cloud_cover``.

    Returns:
        The Item as a JSON-ready dict.
    """
    geometry = json.loads(shapely.to_geojson(shapely.from_wkb(record.geometry_wkb)))
    sensors = _in_cube_order(record.sensors, layout)
    properties: dict[str, Any] = {
        "datetime": None,
        "start_datetime": _iso(record.period_start),
        "end_datetime": _iso(_end_inclusive(record)),
        "proj:code": f"EPSG:{record.epsg}",
        "proj:bbox": list(record.proj_bbox),
        **_grid_fields(record, layout, layout.reference_resolution_m),
    }
    extensions = [PROJECTION_EXTENSION]
    cloudy = _cloud_sensor(sensors, layout, reference_sensor)
    if cloudy is not None:
        properties["eo:cloud_cover"] = _percent(cloudy.cloud_fraction)
        extensions.append(EO_EXTENSION)
    if layout.labels:
        properties.update(_label_properties(layout))
        extensions.append(LABEL_EXTENSION)
    properties.update(
        {
            "eoforge:tile_id": record.tile_id,
            "eoforge:period_id": record.period_id,
            "eoforge:split": record.split,
            "eoforge:cube_position": record.cube_position,
            "eoforge:shard_id": record.shard_id,
            "eoforge:sensor_names": [s.sensor for s in sensors],
            "eoforge:sensors": [_sensor_fields(s) for s in sensors],
        }
    )
    if layout.labels:
        properties.update(
            {
                "eoforge:label_sources": [lab.source for lab in layout.labels],
                "eoforge:class_fractions": {k: dict(v) for k, v in record.class_fractions.items()},
                "eoforge:multilabels": {k: list(v) for k, v in record.multilabels.items()},
                "eoforge:unlabeled_fractions": dict(record.unlabeled_fractions),
                "eoforge:label_flags": list(record.label_flags),
            }
        )
    position = {"eoforge:cube_position": record.cube_position}
    assets: dict[str, Any] = {
        CUBE_ASSET: {
            "href": cube_href,
            "type": ZARR_MEDIA_TYPE,
            "roles": ["data"],
            "title": "eoforge cube (Zarr v3); this tile is at index eoforge:cube_position "
            "of the tile axis",
            **position,
            "eoforge:shard_id": record.shard_id,
        }
    }
    known = {s.name: s for s in layout.sensors}
    for obs in sensors:
        spec = known.get(obs.sensor)
        if spec is None:
            continue
        assets[spec.name] = {
            "href": _join(cube_href, spec.name),
            "type": ZARR_MEDIA_TYPE,
            "roles": ["data"],
            "title": f"{spec.name} group: data (tile, time, band, y, x), mask, datetime",
            "gsd": spec.resolution_m,
            "bands": [{"name": b} for b in spec.bands],
            **_grid_fields(record, layout, spec.resolution_m),
            **position,
        }
    for lab in layout.labels:
        assets[label_asset_key(lab.source)] = {
            "href": _join(cube_href, LABELS_GROUP, lab.source),
            "type": ZARR_MEDIA_TYPE,
            "roles": ["labels"],
            "title": f"{lab.source} class index (tile, y, x); nodata {lab.nodata}",
            "label:classes": [{"name": None, "classes": list(lab.class_names)}],
            **_grid_fields(record, layout, layout.label_resolution_m),
            **position,
        }
    links: list[dict[str, Any]] = []
    if collection_id is not None:  # STAC: an Item names its collection iff it links to it
        links.append(
            {
                "rel": "collection",
                "href": collection_href or "collection.json",
                "type": "application/json",
            }
        )
    seen: set[str] = set()
    for obs in sensors:
        for item_id in obs.item_ids:
            href = (source_links or {}).get(item_id)
            if href is None or item_id in seen:
                continue
            seen.add(item_id)
            links.append(
                {
                    "rel": "derived_from",
                    "href": href,
                    "type": "application/geo+json",
                    "title": f"{obs.sensor} source item {item_id}",
                }
            )
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions,
        "id": record.id,
        "geometry": geometry,
        "bbox": list(record.bbox),
        "properties": properties,
        "links": links,
        "assets": assets,
    }
    if collection_id is not None:
        item["collection"] = collection_id
    return item


def _union_bbox(boxes: Iterable[Sequence[float]]) -> list[float]:
    boxes = list(boxes)
    return [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]


def cube_collection(
    layout: CubeLayout,
    records: Iterable[TileRecord],
    *,
    collection_id: str,
    title: str | None = None,
    description: str | None = None,
    license: str = "other",
    providers: Sequence[Mapping[str, Any]] | None = None,
    cube_href: str | None = None,
    reference_sensor: str | None = None,
) -> dict[str, Any]:
    """The STAC 1.1 Collection of a cube, with extents and summaries from its rows.

    Args:
        layout: The cube's layout.
        records: The catalog rows (all of them: extents and summaries come from them).
        collection_id: The Collection id (Items name it in ``collection``).
        title: Short title; defaults to the id.
        description: Description; a default names the sensors, labels and tile count.
        license: SPDX license id, or ``other`` (the sources' own licenses apply).
        providers: STAC provider objects; default: eoforge as ``processor``.
        cube_href: Href of the cube root, for a collection-level ``cube`` asset.
        reference_sensor: As in :func:`record_to_item` (for the ``eo:cloud_cover`` range).

    Returns:
        The Collection as a JSON-ready dict. With no rows the extents are the whole world and
        an open interval.
    """
    records = list(records)
    sensor_names = [s.name for s in layout.sensors]
    summaries: dict[str, Any] = {
        "proj:code": sorted({f"EPSG:{r.epsg}" for r in records}),
        "gsd": sorted({s.resolution_m for s in layout.sensors}),
        "eoforge:sensor_names": sensor_names,
        "eoforge:period_id": sorted({r.period_id for r in records}),
        "eoforge:split": sorted({r.split for r in records if r.split is not None}),
    }
    extensions = [PROJECTION_EXTENSION]
    clouds = [
        c.cloud_fraction
        for r in records
        if (c := _cloud_sensor(r.sensors, layout, reference_sensor)) is not None
        and c.cloud_fraction is not None
    ]
    if clouds:
        summaries["eo:cloud_cover"] = {
            "minimum": _percent(min(clouds)),
            "maximum": _percent(max(clouds)),
        }
        extensions.append(EO_EXTENSION)
    item_assets: dict[str, Any] = {
        CUBE_ASSET: {"type": ZARR_MEDIA_TYPE, "roles": ["data"], "title": "eoforge cube (Zarr v3)"},
    }
    for s in layout.sensors:
        n = pixels_per_tile(layout.tile_size_m, s.resolution_m)
        item_assets[s.name] = {
            "type": ZARR_MEDIA_TYPE,
            "roles": ["data"],
            "title": f"{s.name} group",
            "gsd": s.resolution_m,
            "bands": [{"name": b} for b in s.bands],
            "proj:shape": [n, n],
        }
    if layout.labels:
        extensions.append(LABEL_EXTENSION)
        summaries.update(
            {
                "label:type": ["raster"],
                "label:classes": _label_classes(layout),
                "label:tasks": ["segmentation", "classification"],
                "label:methods": ["automated"],
                "eoforge:label_sources": [lab.source for lab in layout.labels],
            }
        )
        n = pixels_per_tile(layout.tile_size_m, layout.label_resolution_m)
        for lab in layout.labels:
            item_assets[label_asset_key(lab.source)] = {
                "type": ZARR_MEDIA_TYPE,
                "roles": ["labels"],
                "title": f"{lab.source} class index",
                "label:classes": [{"name": None, "classes": list(lab.class_names)}],
                "proj:shape": [n, n],
            }
    if records:
        boxes = [_union_bbox(r.bbox for r in records)]
        epsgs = sorted({r.epsg for r in records})
        if len(epsgs) > 1:  # sub-extents per UTM zone
            boxes += [_union_bbox(r.bbox for r in records if r.epsg == e) for e in epsgs]
        interval: list[str | None] = [
            _iso(min(r.period_start for r in records)),
            _iso(max(_end_inclusive(r) for r in records)),
        ]
    else:
        boxes, interval = [[-180.0, -90.0, 180.0, 90.0]], [None, None]
    labels = ", ".join(lab.source for lab in layout.labels) or "none"
    collection: dict[str, Any] = {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": extensions,
        "id": collection_id,
        "title": title or collection_id,
        "description": description
        or (
            f"eoforge tile catalog: {len(records)} tiles x periods of "
            f"{layout.tile_size_m:g} m, sensors {', '.join(sensor_names)}, labels {labels}. "
            "Each Item is one tile in one period; pixels are in the Zarr cube."
        ),
        "keywords": ["eoforge", "machine learning", "earth observation", *sensor_names],
        "license": license,
        "providers": [dict(p) for p in providers]
        if providers is not None
        else [{"name": "eoforge", "roles": ["processor"], "description": "tile cube builder"}],
        "extent": {"spatial": {"bbox": boxes}, "temporal": {"interval": [interval]}},
        "summaries": {k: v for k, v in summaries.items() if v != []},  # STAC: none empty
        "item_assets": item_assets,
        "links": [],
        "eoforge:layout": layout.root_attrs(),
    }
    if cube_href is not None:
        collection["assets"] = {
            CUBE_ASSET: {
                "href": cube_href,
                "type": ZARR_MEDIA_TYPE,
                "roles": ["data"],
                "title": "eoforge cube (Zarr v3)",
            }
        }
    return collection


# --- a cube on disk --------------------------------------------------------------------------


def read_cube_layout(cube: str | Path) -> CubeLayout:
    """The layout of the cube at ``cube``, from its root ``zarr.json`` (no Zarr import).

    Raises:
        NotFoundError: No Zarr v3 group at ``cube``.
        InvalidInputError: Not an eoforge cube, or one of another layout version.
    """
    meta = Path(cube) / "zarr.json"
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(
            "no Zarr v3 cube here (zarr.json missing)",
            where=str(cube),
            fix="pass the cube folder a build wrote (recipe output.path)",
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the cube metadata ({exc})", where=str(meta)) from exc
    return CubeLayout.from_root_attrs(doc.get("attributes") or {})


def _plans(cube: Path) -> list[dict[str, Any]]:
    """The cube's build plans, oldest first (run ids start with a UTC timestamp)."""
    out = []
    for path in sorted((cube / PLAN_DIR).glob("plan-*.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot read the build plan ({exc})", where=str(path)) from exc
    return out


def _self_href(item: Mapping[str, Any]) -> str | None:
    for link in item.get("links") or ():
        if isinstance(link, Mapping) and link.get("rel") == "self" and link.get("href"):
            return str(link["href"])
    return None


def source_links_from_plans(
    cube: str | Path, *, catalog_urls: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Source item id -> href, from every build plan in ``<cube>/_eoforge`` (newest wins).

    The href is the item's ``self`` link when the plan kept one, else
    ``<api>/collections/<collection>/items/<id>`` with ``api`` from ``catalog_urls[sensor]`` or
    the provider's public API (:data:`PROVIDER_API_URLS`). Items with neither get no entry
    (e.g. an offline archive's items without a ``self`` link).

    Args:
        cube: The cube folder.
        catalog_urls: Sensor id -> STAC API root, overriding the provider's.

    Returns:
        The mapping (empty when the cube has no plan).
    """
    links: dict[str, str] = {}
    for plan in _plans(Path(cube)):
        for sp in plan.get("sensors", ()):
            api = (catalog_urls or {}).get(sp.get("sensor", "")) or PROVIDER_API_URLS.get(
                sp.get("provider", "")
            )
            for item in sp.get("items", ()):
                href = _self_href(item)
                collection = item.get("collection") or sp.get("collection")
                if href is None and api and collection:
                    href = f"{api.rstrip('/')}/collections/{collection}/items/{item['id']}"
                if href is not None:
                    links[str(item["id"])] = href
    return links


def reference_sensor_from_plans(cube: str | Path) -> str | None:
    """The co-registration reference sensor of the newest build plan, if any."""
    for plan in reversed(_plans(Path(cube))):
        for sp in plan.get("sensors", ()):
            if sp.get("reference"):
                return str(sp["sensor"])
    return None


def _default_collection_id(cube: Path) -> str:
    name = cube.resolve().name.removesuffix(".zarr")
    return _COLLECTION_ID.sub("-", name).strip("-._") or "eoforge-cube"


@dataclass(frozen=True)
class CubeStac:
    """A cube's Collection and Items (:func:`cube_stac`).

    Attributes:
        collection: The Collection dict.
        items: One Item dict per catalog row, in cube-position order.
    """

    collection: dict[str, Any]
    items: list[dict[str, Any]]

    @property
    def collection_id(self) -> str:
        """The Collection id."""
        return str(self.collection["id"])


def cube_stac(
    cube: str | Path,
    *,
    cube_href: str | None = None,
    collection_id: str | None = None,
    catalog_urls: Mapping[str, str] | None = None,
    license: str = "other",
    collection_href: str | None = None,
) -> CubeStac:
    """Read a cube's layout, committed rows and plans and make its Collection and Items.

    Args:
        cube: The cube folder (local).
        cube_href: Href of the cube in Items and the Collection; default its ``file://`` URI.
        collection_id: Collection id; default the cube folder's name without ``.zarr``.
        catalog_urls: Sensor id -> STAC API root for source links (see
            :func:`source_links_from_plans`).
        license: The Collection's license.
        collection_href: Href of the Items' ``collection`` link (see :func:`record_to_item`).

    Returns:
        The Collection and Items.

    Raises:
        NotFoundError: ``cube`` is not a cube.
        InvalidInputError: Its metadata, a plan or a catalog row is unreadable.
    """
    path = Path(cube)
    layout = read_cube_layout(path)
    href = cube_href if cube_href is not None else path.resolve().as_uri()
    cid = collection_id or _default_collection_id(path)
    latest: dict[str, TileRecord] = {}
    for row in read_records(path).to_pylist():  # sorted by position: a rebuilt row wins
        record = TileRecord.from_arrow_row(row)
        latest[record.id] = record
    records = sorted(latest.values(), key=lambda r: r.cube_position)
    links = source_links_from_plans(path, catalog_urls=catalog_urls)
    reference = reference_sensor_from_plans(path)
    items = [
        record_to_item(
            r,
            layout,
            cube_href=href,
            source_links=links,
            collection_id=cid,
            collection_href=collection_href,
            reference_sensor=reference,
        )
        for r in records
    ]
    collection = cube_collection(
        layout,
        records,
        collection_id=cid,
        license=license,
        cube_href=href,
        reference_sensor=reference,
    )
    _add_card_facts(collection, path, layout, records, href)
    return CubeStac(collection=collection, items=items)


def _add_card_facts(
    collection: dict[str, Any],
    cube: Path,
    layout: CubeLayout,
    records: Sequence[TileRecord],
    cube_href: str,
) -> None:
    """The dataset card's facts on the Collection: source items, terms, statistics, card.

    ``eoforge:source_items`` counts distinct source item ids per sensor (as the card does),
    ``eoforge:attribution`` holds the licence terms of each sensor and label source
    (:mod:`schemas.licences`), ``eoforge:statistics`` the per-band mean and std of the build
    (root attribute ``eoforge_stats``), and the card and ``stats.json`` are assets.
    """
    items: dict[str, set[str]] = {}
    for r in records:
        for obs in r.sensors:
            items.setdefault(obs.sensor, set()).update(obs.item_ids)
    collection["eoforge:source_items"] = {k: len(v) for k, v in sorted(items.items())}
    kinds: dict[str, str] = {}
    for plan in _plans(cube):  # the newest plan names each label source's kind
        kinds.update({str(d.get("name")): str(d.get("kind")) for d in plan.get("labels", ())})
    attribution = {s.name: sensor_terms(s.name) for s in layout.sensors}
    for lab in layout.labels:
        attribution[f"labels/{lab.source}"] = label_terms(kinds.get(lab.source, lab.source))
    collection["eoforge:attribution"] = attribution
    try:
        attrs = json.loads((cube / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, ValueError):
        attrs = {}
    stats = attrs.get("eoforge_stats") or {}
    if stats.get("sensors"):
        collection["eoforge:statistics"] = {
            name: {
                band: {"mean": mean, "std": std}
                for band, mean, std in zip(s["bands"], s["mean"], s["std"], strict=False)
            }
            for name, s in stats["sensors"].items()
        }
    assets = collection.setdefault("assets", {})
    base = cube_href.rstrip("/")
    for key, name, media, title in (
        ("card", "README.md", "text/markdown", "Dataset card"),
        ("statistics", "stats.json", "application/json", "Statistics over valid pixels"),
    ):
        if (cube / name).is_file():
            assets[key] = {
                "href": f"{base}/{name}",
                "type": media,
                "roles": ["metadata"],
                "title": title,
            }


def _replace_atomically(target: Path, write: Any) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _dumps(doc: Mapping[str, Any]) -> str:
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN is not JSON; STAC servers refuse it
        raise InvalidInputError(
            f"a value is not valid JSON ({exc})", where=str(doc.get("id"))
        ) from exc


def write_stac_ndjson(items: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write Items as newline-delimited JSON (one Item per line), atomically.

    Returns:
        ``path``.
    """
    lines = [_dumps(item) + "\n" for item in items]
    return _replace_atomically(Path(path), lambda tmp: tmp.write_text("".join(lines), "utf-8"))


def write_stac_geoparquet(
    cube: str | Path,
    path: str | Path,
    *,
    cube_href: str | None = None,
    collection_id: str | None = None,
    ndjson_path: str | Path | None = None,
    collection_path: str | Path | None = None,
) -> Path:
    """Export a cube's Items as stac-geoparquet (with rustac), its Collection as JSON beside.

    stac-geoparquet (like pgstac) keeps no null-valued fields but ``datetime``: read back, an
    Item lacks e.g. ``label:properties``, ``label:classes[].name`` and an unassigned
    ``eoforge:split``, and its times are in milliseconds. The NDJSON copy keeps the Items exactly.

    Args:
        cube: The cube folder.
        path: The ``.parquet`` file to write (replaced atomically).
        cube_href: As in :func:`cube_stac`.
        collection_id: As in :func:`cube_stac`.
        ndjson_path: Also write the same Items here as NDJSON.
        collection_path: Where the Collection goes; default ``collection.json`` beside ``path``
            (the Items' ``collection`` links point at it, relative to ``path``'s folder).

    Returns:
        ``path``.

    Raises:
        NotFoundError: The cube has no committed tile (stac-geoparquet needs at least one Item).
    """
    import rustac

    target = Path(path)
    coll_path = Path(collection_path) if collection_path else target.parent / "collection.json"
    stac = cube_stac(
        cube,
        cube_href=cube_href,
        collection_id=collection_id,
        collection_href=Path(os.path.relpath(coll_path, target.parent)).as_posix(),
    )
    if not stac.items:
        raise NotFoundError(
            "the cube has no committed tiles to export",
            where=str(cube),
            fix="build the cube first (eoforge build RECIPE)",
        )
    for item in stac.items:  # rustac cannot encode NaN either
        _dumps(item)
    _replace_atomically(
        target, lambda tmp: rustac.write_sync(str(tmp), stac.items, format="geoparquet")
    )
    if ndjson_path is not None:
        write_stac_ndjson(stac.items, ndjson_path)
    text = json.dumps(stac.collection, indent=2, allow_nan=False) + "\n"
    _replace_atomically(coll_path, lambda tmp: tmp.write_text(text, "utf-8"))
    return target
