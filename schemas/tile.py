"""One row of the tile catalog (:class:`TileRecord`) and its Arrow schema.

A row describes one tile for one period: where it is (EPSG, transform, WGS84 footprint and bbox),
where its pixels are in the cube (position, shard), what went into it per sensor, and its split
and label summaries. The catalog stores rows as GeoParquet parts: ``geometry`` is WKB (WGS84,
OGC:CRS84 axis order) and ``bbox`` is the GeoParquet 1.1 bbox covering struct, so DuckDB can
filter on ``bbox.xmin`` without decoding geometries.

:data:`TILE_RECORD_ARROW_SCHEMA` is built on first access (pyarrow is imported lazily, so
importing this module stays cheap).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas.errors import InvalidInputError

if TYPE_CHECKING:
    import pyarrow as pa

    TILE_RECORD_ARROW_SCHEMA: pa.Schema

__all__ = [
    "TILE_RECORD_ARROW_SCHEMA",
    "SensorObservation",
    "TileRecord",
    "geoparquet_metadata",
    "tile_record_arrow_schema",
]

_BBOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _check_utc(where: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(
            f"datetime {value.isoformat()} has no time zone",
            where=where,
            fix="give timezone-aware datetimes (UTC)",
        )


def _check_fraction(where: str, name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidInputError(f"{name} {value!r} is not in [0, 1]", where=where)


@dataclass(frozen=True, slots=True)
class SensorObservation:
    """What one sensor contributed to one tile and period.

    Attributes:
        sensor: Sensor group name in the cube (a :class:`schemas.sensors.SensorId` value).
        datetimes: Acquisition time of each used time plane, in plane order (UTC, tz-aware).
        item_ids: Distinct STAC item ids that went into the tile (all planes).
        cloud_fraction: Share of observed pixels flagged cloud, shadow or cirrus; ``None`` for
            sensors without a cloud mask (Sentinel-1).
        valid_fraction: Share of pixels x used planes with the ``VALID`` mask bit.
        shift_dy_m: Estimated residual shift against the reference sensor, northward, metres;
            ``None`` when not estimated (the reference sensor itself, or too few clear pixels).
        shift_dx_m: Same, eastward.
        shift_applied: Whether the shift was corrected in the stored pixels.
    """

    sensor: str
    datetimes: tuple[datetime, ...]
    item_ids: tuple[str, ...]
    cloud_fraction: float | None
    valid_fraction: float
    shift_dy_m: float | None = None
    shift_dx_m: float | None = None
    shift_applied: bool = False

    def __post_init__(self) -> None:
        where = f"sensor {self.sensor}"
        for value in self.datetimes:
            _check_utc(where, value)
        _check_fraction(where, "cloud_fraction", self.cloud_fraction)
        _check_fraction(where, "valid_fraction", self.valid_fraction)
        if (self.shift_dy_m is None) != (self.shift_dx_m is None):
            raise InvalidInputError("give both shift components or neither", where=where)
        if self.shift_applied and self.shift_dy_m is None:
            raise InvalidInputError("a shift marked applied has no value", where=where)


@dataclass(frozen=True, slots=True)
class TileRecord:
    """One catalog row: one tile in one period.

    Attributes:
        tile_id: Grid tile id (``pipelines.grid``), e.g. ``32N-0345-5670``.
        period_id: Period label from the recipe (e.g. ``2024-06``).
        period_start: Start of the period (UTC).
        period_end: End of the period (UTC), >= start.
        epsg: EPSG code of the tile's UTM CRS.
        transform: Affine ``a, b, c, d, e, f`` of the tile at the cube's reference resolution
            (``tiles/transform``).
        proj_bbox: ``(minx, miny, maxx, maxy)`` in the tile CRS.
        geometry_wkb: WGS84 footprint as WKB.
        bbox: ``(xmin, ymin, xmax, ymax)`` of the footprint in WGS84 degrees.
        cube_position: Index along the cube's tile axis.
        shard_id: Shard that holds the position (``s00000``...).
        sensors: One entry per sensor with data in this tile.
        split: ``train``/``val``/``test``, or ``None`` before split assignment.
        class_fractions: Label source -> class name -> share of the tile's labelled pixels
            (pixels neither no-data nor the source's ``UNLABELED`` class); classes absent from
            the tile are left out.
        multilabels: Label source -> classes whose share is above the source's
            ``multilabel_threshold``, in class-index order (``UNLABELED`` never included).
        unlabeled_fractions: Label source -> share of the tile's pixels that are no-data or
            ``UNLABELED``.
        label_flags: Label sources whose unlabeled share reaches the recipe's
            ``max_unlabeled`` (reBEN drops such patches; eoforge keeps and flags them).
    """

    tile_id: str
    period_id: str
    period_start: datetime
    period_end: datetime
    epsg: int
    transform: tuple[float, float, float, float, float, float]
    proj_bbox: tuple[float, float, float, float]
    geometry_wkb: bytes
    bbox: tuple[float, float, float, float]
    cube_position: int
    shard_id: str
    sensors: tuple[SensorObservation, ...] = ()
    split: str | None = None
    class_fractions: Mapping[str, Mapping[str, float]] = field(default_factory=dict, hash=False)
    multilabels: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    unlabeled_fractions: Mapping[str, float] = field(default_factory=dict, hash=False)
    label_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"tile record {self.tile_id}/{self.period_id}"
        if not self.tile_id or not self.period_id:
            raise InvalidInputError("tile_id and period_id must not be empty", where=where)
        _check_utc(where, self.period_start)
        _check_utc(where, self.period_end)
        if self.period_end < self.period_start:
            raise InvalidInputError("period_end is before period_start", where=where)
        if len(self.transform) != 6 or len(self.proj_bbox) != 4 or len(self.bbox) != 4:
            raise InvalidInputError(
                "transform needs 6 numbers, proj_bbox and bbox 4 each", where=where
            )
        if self.bbox[0] > self.bbox[2] or self.bbox[1] > self.bbox[3]:
            raise InvalidInputError(f"bbox {self.bbox} has min > max", where=where)
        if self.cube_position < 0:
            raise InvalidInputError(f"cube_position {self.cube_position} is negative", where=where)
        names = [s.sensor for s in self.sensors]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"sensor listed twice in {names}", where=where)
        if self.split is not None and not self.split:
            raise InvalidInputError("split must be None or a non-empty name", where=where)
        for source, fractions in self.class_fractions.items():
            for name, value in fractions.items():
                _check_fraction(where, f"class fraction {source}/{name}", value)
        for source, value in self.unlabeled_fractions.items():
            _check_fraction(where, f"unlabeled fraction {source}", value)

    @property
    def id(self) -> str:
        """Catalog/STAC item id: ``<tile_id>_<period_id>`` (unique per tile and period)."""
        return f"{self.tile_id}_{self.period_id}"

    def to_arrow_row(self) -> dict[str, Any]:
        """This record as a dict for ``pyarrow.Table.from_pylist(rows, schema=SCHEMA)``."""
        return {
            "id": self.id,
            "tile_id": self.tile_id,
            "period_id": self.period_id,
            "start_datetime": self.period_start,
            "end_datetime": self.period_end,
            "epsg": self.epsg,
            "transform": list(self.transform),
            "proj_bbox": list(self.proj_bbox),
            "geometry": self.geometry_wkb,
            "bbox": dict(zip(_BBOX_KEYS, self.bbox, strict=True)),
            "cube_position": self.cube_position,
            "shard_id": self.shard_id,
            "sensors": [
                {
                    "sensor": s.sensor,
                    "datetimes": list(s.datetimes),
                    "item_ids": list(s.item_ids),
                    "cloud_fraction": s.cloud_fraction,
                    "valid_fraction": s.valid_fraction,
                    "shift_dy_m": s.shift_dy_m,
                    "shift_dx_m": s.shift_dx_m,
                    "shift_applied": s.shift_applied,
                }
                for s in self.sensors
            ],
            "split": self.split,
            "class_fractions": [
                (source, list(fractions.items()))
                for source, fractions in self.class_fractions.items()
            ],
            "multilabels": [(source, list(names)) for source, names in self.multilabels.items()],
            "unlabeled_fractions": list(self.unlabeled_fractions.items()),
            "label_flags": list(self.label_flags),
        }

    @classmethod
    def from_arrow_row(cls, row: Mapping[str, Any]) -> TileRecord:
        """Inverse of :meth:`to_arrow_row` for a row of ``Table.to_pylist()``.

        Raises:
            InvalidInputError: The row's values break a record invariant.
        """
        return cls(
            tile_id=row["tile_id"],
            period_id=row["period_id"],
            period_start=_as_utc(row["start_datetime"]),
            period_end=_as_utc(row["end_datetime"]),
            epsg=int(row["epsg"]),
            transform=_floats6(row["transform"]),
            proj_bbox=_floats4(row["proj_bbox"]),
            geometry_wkb=bytes(row["geometry"]),
            bbox=_floats4([row["bbox"][k] for k in _BBOX_KEYS]),
            cube_position=int(row["cube_position"]),
            shard_id=row["shard_id"],
            sensors=tuple(
                SensorObservation(
                    sensor=s["sensor"],
                    datetimes=tuple(_as_utc(d) for d in s["datetimes"]),
                    item_ids=tuple(s["item_ids"]),
                    cloud_fraction=s["cloud_fraction"],
                    valid_fraction=s["valid_fraction"],
                    shift_dy_m=s["shift_dy_m"],
                    shift_dx_m=s["shift_dx_m"],
                    shift_applied=bool(s["shift_applied"]),
                )
                for s in row["sensors"]
            ),
            split=row["split"],
            class_fractions={k: dict(v) for k, v in _pairs(row["class_fractions"])},
            multilabels={k: tuple(v) for k, v in _pairs(row["multilabels"])},
            unlabeled_fractions=dict(_pairs(row.get("unlabeled_fractions"))),
            label_flags=tuple(row.get("label_flags") or ()),
        )


def _pairs(value: Any) -> list[tuple[Any, Any]]:
    # pyarrow returns a map as a list of (key, value) tuples; accept a dict as well.
    if value is None:
        return []
    return list(value.items()) if isinstance(value, Mapping) else [tuple(p) for p in value]


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value


def _floats4(values: Any) -> tuple[float, float, float, float]:
    a, b, c, d = (float(v) for v in values)
    return (a, b, c, d)


def _floats6(values: Any) -> tuple[float, float, float, float, float, float]:
    a, b, c, d, e, f = (float(v) for v in values)
    return (a, b, c, d, e, f)


def geoparquet_metadata() -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata for the catalog (WKB polygons, CRS84, bbox covering)."""
    return {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "covering": {"bbox": {k: ["bbox", k] for k in _BBOX_KEYS}},
            }
        },
    }


@functools.cache
def tile_record_arrow_schema() -> pa.Schema:
    """The Arrow schema of catalog rows (same as :data:`TILE_RECORD_ARROW_SCHEMA`)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")

    def list_of(item: pa.DataType, size: int = -1) -> pa.DataType:
        # Parquet names list items "element"; naming them so keeps the schema equal on read.
        return pa.list_(pa.field("element", item), size)

    sensor = pa.struct(
        [
            pa.field("sensor", pa.string(), nullable=False),
            pa.field("datetimes", list_of(ts), nullable=False),
            pa.field("item_ids", list_of(pa.string()), nullable=False),
            pa.field("cloud_fraction", pa.float64()),
            pa.field("valid_fraction", pa.float64(), nullable=False),
            pa.field("shift_dy_m", pa.float64()),
            pa.field("shift_dx_m", pa.float64()),
            pa.field("shift_applied", pa.bool_(), nullable=False),
        ]
    )
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("tile_id", pa.string(), nullable=False),
        pa.field("period_id", pa.string(), nullable=False),
        pa.field("start_datetime", ts, nullable=False),
        pa.field("end_datetime", ts, nullable=False),
        pa.field("epsg", pa.int32(), nullable=False),
        pa.field("transform", list_of(pa.float64(), 6), nullable=False),
        pa.field("proj_bbox", list_of(pa.float64(), 4), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field(
            "bbox",
            pa.struct([pa.field(k, pa.float64(), nullable=False) for k in _BBOX_KEYS]),
            nullable=False,
        ),
        pa.field("cube_position", pa.int64(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("sensors", list_of(sensor), nullable=False),
        pa.field("split", pa.string()),
        pa.field("class_fractions", pa.map_(pa.string(), pa.map_(pa.string(), pa.float64()))),
        pa.field("multilabels", pa.map_(pa.string(), list_of(pa.string()))),
        pa.field("unlabeled_fractions", pa.map_(pa.string(), pa.float64())),
        pa.field("label_flags", list_of(pa.string())),
    ]
    return pa.schema(fields, metadata={b"geo": json.dumps(geoparquet_metadata()).encode()})


def __getattr__(name: str) -> Any:
    if name == "TILE_RECORD_ARROW_SCHEMA":
        return tile_record_arrow_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
