"""Validation of :meth:`catalog.query.TileCatalog.search` arguments: one clear error per mistake.

Every function here either returns a normalised value or raises
:class:`schemas.errors.InvalidInputError` naming the argument (``where``), what is wrong and how
to fix it (known names are listed, close matches first).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from schemas.errors import InvalidInputError

__all__ = [
    "BASE_SORT_FIELDS",
    "ClassRef",
    "Names",
    "Threshold",
    "parse_bbox",
    "parse_class_terms",
    "parse_datetime",
    "parse_fractions",
    "parse_ids",
    "parse_intersects",
    "parse_limit",
    "parse_sensors",
    "parse_sortby",
    "parse_splits",
    "parse_threshold",
]

#: Sort fields every catalog has (``cloud:<sensor>`` and ``valid:<sensor>`` come on top).
BASE_SORT_FIELDS = (
    "cube_position",
    "id",
    "tile_id",
    "period_id",
    "start_datetime",
    "end_datetime",
    "split",
    "epsg",
    "shard_id",
    "cloud_max",
    "valid_min",
)

#: ``(source, class)``.
ClassRef = tuple[str, str]


@dataclass(frozen=True)
class Names:
    """The names a catalog knows (its cube layout plus what occurs in its rows).

    Attributes:
        sensors: Sensor names.
        classes: Label source -> class names.
        splits: Split names (``train``, ``val``, ``test`` and any other in the rows).
    """

    sensors: tuple[str, ...]
    classes: Mapping[str, tuple[str, ...]]
    splits: tuple[str, ...]

    @property
    def sort_fields(self) -> tuple[str, ...]:
        """Every field ``sortby`` accepts."""
        per_sensor = [f"{kind}:{s}" for s in self.sensors for kind in ("cloud", "valid")]
        return (*BASE_SORT_FIELDS, *per_sensor)


def _close(given: str, candidates: Iterable[str]) -> str:
    names = list(dict.fromkeys(candidates))
    close = difflib.get_close_matches(given, names, n=3, cutoff=0.6)
    folded = given.casefold()
    close += [c for c in names if folded in c.casefold() and c not in close][: 5 - len(close)]
    return f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""


def _known(known: Iterable[str], limit: int = 25) -> str:
    names = list(dict.fromkeys(known))
    if not names:
        return "the catalog has none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"known: {', '.join(names[:limit])}{more}"


def _listing(known: Iterable[str], given: str, limit: int = 25) -> str:
    names = list(dict.fromkeys(known))
    return _close(given, names) + _known(names, limit)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(
            f"{value!r} is not a number", where=where, fix="give a number such as 0.2"
        )
    result = float(value)
    if not math.isfinite(result):
        raise InvalidInputError(f"{value!r} is not finite", where=where, fix="give a finite number")
    return result


def _strings(value: str | Iterable[str] | None, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise InvalidInputError(
                f"{item!r} is not a non-empty name", where=where, fix="give names as strings"
            )
    return tuple(dict.fromkeys(items))


# --- space -----------------------------------------------------------------------------------


def parse_bbox(bbox: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """Check a WGS84 ``(xmin, ymin, xmax, ymax)`` box.

    Raises:
        InvalidInputError: Not four numbers, longitude outside -180..180, latitude outside
            -90..90, or min > max.
    """
    if bbox is None:
        return None
    if isinstance(bbox, str | bytes) or len(bbox) != 4:
        raise InvalidInputError(
            f"bbox {bbox!r} is not four numbers",
            where="bbox",
            fix="give (xmin, ymin, xmax, ymax) in WGS84 degrees, e.g. (8.9, 47.5, 9.1, 47.7)",
        )
    x0, y0, x1, y1 = (_number(v, "bbox") for v in bbox)
    for x in (x0, x1):
        if not -180.0 <= x <= 180.0:
            raise InvalidInputError(
                f"longitude {x:g} is outside -180..180",
                where="bbox",
                fix="give (xmin, ymin, xmax, ymax) in WGS84 degrees, longitude first",
            )
    for y in (y0, y1):
        if not -90.0 <= y <= 90.0:
            raise InvalidInputError(
                f"latitude {y:g} is outside -90..90",
                where="bbox",
                fix="give (xmin, ymin, xmax, ymax) in WGS84 degrees, longitude first",
            )
    if x0 > x1 or y0 > y1:
        raise InvalidInputError(
            f"bbox {(x0, y0, x1, y1)} has min > max",
            where="bbox",
            fix="order it (xmin, ymin, xmax, ymax); a box across the antimeridian is two searches",
        )
    return (x0, y0, x1, y1)


def parse_intersects(value: Any) -> Any:
    """A shapely geometry from a GeoJSON geometry dict (or Feature) or a shapely geometry.

    Raises:
        InvalidInputError: Not a geometry, empty, or with coordinates outside WGS84 bounds.
    """
    if value is None:
        return None
    import shapely
    from shapely.geometry import shape
    from shapely.geometry.base import BaseGeometry

    geometry: Any
    if isinstance(value, BaseGeometry):
        geometry = value
    elif isinstance(value, Mapping):
        doc = value.get("geometry") if value.get("type") == "Feature" else value
        try:
            geometry = shape(doc)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            raise InvalidInputError(
                f"not a GeoJSON geometry ({err})",
                where="intersects",
                fix='give a GeoJSON geometry, e.g. {"type": "Polygon", "coordinates": [...]}',
            ) from err
    else:
        raise InvalidInputError(
            f"a {type(value).__name__} is not a geometry",
            where="intersects",
            fix="give a GeoJSON geometry dict or a shapely geometry (WGS84 lon/lat)",
        )
    if geometry.is_empty:
        raise InvalidInputError("the geometry is empty", where="intersects")
    x0, y0, x1, y1 = geometry.bounds
    if not (-180.0 <= x0 <= x1 <= 180.0 and -90.0 <= y0 <= y1 <= 90.0):
        raise InvalidInputError(
            f"the geometry's bounds {geometry.bounds} leave WGS84 (-180..180, -90..90)",
            where="intersects",
            fix="give lon/lat coordinates in degrees, longitude first",
        )
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    return geometry


# --- time ------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME_FIX = (
    "give an RFC 3339 instant (2024-06-15T10:00:00Z), a date (2024-06-15, 2024-06, 2024) or an "
    "interval a/b with an open end '..' (2024-06-01T00:00:00Z/.., ../2024-07-01)"
)
_TICK = timedelta(microseconds=1)


def _bad_datetime(text: str, why: str) -> InvalidInputError:
    return InvalidInputError(f"datetime {text!r} {why}", where="datetime", fix=_DATETIME_FIX)


def _span_of_text(text: str, whole: str) -> tuple[datetime, datetime]:
    """``[start, end]`` (inclusive) that one side of a datetime argument stands for."""
    partial = _PARTIAL.match(text)
    if partial is not None:
        year, month, day = partial.groups()
        try:
            if day is not None:
                start = datetime(int(year), int(month), int(day), tzinfo=UTC)
                end = start + timedelta(days=1)
            elif month is not None:
                start = datetime(int(year), int(month), 1, tzinfo=UTC)
                end = datetime(int(year) + int(month) // 12, int(month) % 12 + 1, 1, tzinfo=UTC)
            else:
                start = datetime(int(year), 1, 1, tzinfo=UTC)
                end = datetime(int(year) + 1, 1, 1, tzinfo=UTC)
        except ValueError as err:
            raise _bad_datetime(whole, f"is not a date ({err})") from err
        return start, end - _TICK
    if not _RFC3339.match(text):
        if re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$", text):
            raise _bad_datetime(whole, "has no time zone (add Z for UTC)")
        raise _bad_datetime(whole, "is not RFC 3339")
    fixed = text.replace("z", "Z").replace("t", "T").replace("Z", "+00:00")
    fraction = re.search(r"\.(\d+)", fixed)
    if fraction is not None and len(fraction.group(1)) > 6:
        fixed = fixed.replace(fraction.group(0), "." + fraction.group(1)[:6])
    try:
        instant = datetime.fromisoformat(fixed).astimezone(UTC)
    except ValueError as err:
        raise _bad_datetime(whole, f"is not a valid instant ({err})") from err
    return instant, instant


def _span_of(value: Any, whole: str) -> tuple[datetime, datetime] | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _bad_datetime(whole, "has no time zone (give an aware datetime)")
        instant = value.astimezone(UTC)
        return instant, instant
    if isinstance(value, date):
        start = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return start, start + timedelta(days=1) - _TICK
    if isinstance(value, str):
        text = value.strip()
        if text in ("", ".."):
            return None
        return _span_of_text(text, whole)
    raise _bad_datetime(whole, f"is a {type(value).__name__}, not a date or time")


def parse_datetime(value: Any) -> tuple[datetime | None, datetime | None] | None:
    """``(start, end)`` (inclusive, UTC; ``None`` = open) of a STAC-API-style datetime.

    Accepts an RFC 3339 instant, a date (``2024``, ``2024-06``, ``2024-06-15``: the whole
    span), an interval ``a/b`` of those with ``..`` (or nothing) for an open end, an aware
    :class:`datetime`, a :class:`date`, or a pair ``(a, b)`` with ``None`` for an open end.

    Raises:
        InvalidInputError: Malformed, without a time zone, both ends open, or start > end.
    """
    if value is None:
        return None
    whole = value if isinstance(value, str) else repr(value)
    if isinstance(value, str) and "/" in value:
        if value.count("/") != 1:
            raise _bad_datetime(whole, "has more than one '/'")
        left, right = value.split("/")
        pair: tuple[Any, Any] = (left, right)
    elif isinstance(value, tuple | list):
        if len(value) != 2:
            raise _bad_datetime(whole, "is not a pair (start, end)")
        pair = (value[0], value[1])
    else:
        span = _span_of(value, whole)
        if span is None:
            raise _bad_datetime(whole, "is empty")
        return span
    start = _span_of(pair[0], whole)
    end = _span_of(pair[1], whole)
    if start is None and end is None:
        raise _bad_datetime(whole, "is open at both ends")
    lo = None if start is None else start[0]
    hi = None if end is None else end[1]
    if lo is not None and hi is not None and lo > hi:
        raise _bad_datetime(whole, "ends before it starts")
    return lo, hi


# --- names -----------------------------------------------------------------------------------


def parse_sensors(value: str | Iterable[str] | None, names: Names) -> tuple[str, ...]:
    """Sensor names, each known.

    Raises:
        InvalidInputError: An unknown sensor.
    """
    sensors = _strings(value, "sensors")
    for s in sensors:
        if s not in names.sensors:
            raise InvalidInputError(
                f"unknown sensor {s!r}", where="sensors", fix=_listing(names.sensors, s)
            )
    return sensors


@dataclass(frozen=True)
class Threshold:
    """A ``max_cloud``/``min_valid`` argument, normalised.

    Attributes:
        value: One bound for every sensor (or for those in ``sensors``), or ``None``.
        per_sensor: Sensor -> bound (each such sensor must be present).
    """

    value: float | None = None
    per_sensor: tuple[tuple[str, float], ...] = ()


def parse_threshold(
    value: float | Mapping[str, float] | None, where: str, names: Names
) -> Threshold:
    """A share in [0, 1], or ``{sensor: share}`` with known sensors.

    Raises:
        InvalidInputError: Not a share, or an unknown sensor.
    """
    if value is None:
        return Threshold()

    def share(v: Any, at: str) -> float:
        x = _number(v, at)
        if not 0.0 <= x <= 1.0:
            raise InvalidInputError(
                f"{x:g} is not a share in [0, 1]", where=at, fix="give e.g. 0.2 for 20 %"
            )
        return x

    if isinstance(value, Mapping):
        if not value:
            raise InvalidInputError(
                "the mapping is empty", where=where, fix="give {sensor: share} or one share"
            )
        items = []
        for sensor, bound in value.items():
            if sensor not in names.sensors:
                raise InvalidInputError(
                    f"unknown sensor {sensor!r}",
                    where=where,
                    fix=_listing(names.sensors, str(sensor)),
                )
            items.append((sensor, share(bound, f"{where}[{sensor}]")))
        return Threshold(per_sensor=tuple(items))
    return Threshold(value=share(value, where))


def _class_catalogue(names: Names) -> list[str]:
    return [f"{src}:{cls}" for src, classes in names.classes.items() for cls in classes]


def resolve_class(term: str, names: Names, where: str) -> list[ClassRef]:
    """The ``(source, class)`` pairs a ``source:class`` or bare ``class`` term names.

    A bare class matches in every source that has it. Exact names first; a case-insensitive
    match is accepted when it is the only reading.

    Raises:
        InvalidInputError: No source has the class (known classes listed).
    """
    if not isinstance(term, str) or not term:
        raise InvalidInputError(f"{term!r} is not a class name", where=where)
    source, sep, rest = term.partition(":")
    sources = {s.casefold(): s for s in names.classes}
    if sep and source not in names.classes and source.casefold() in sources:
        source = sources[source.casefold()]
    if sep and source in names.classes:
        classes = names.classes[source]
        if rest in classes:
            return [(source, rest)]
        folded = [c for c in classes if c.casefold() == rest.casefold()]
        if len(folded) == 1:
            return [(source, folded[0])]
        raise InvalidInputError(
            f"label source {source!r} has no class {rest!r}",
            where=where,
            fix=_listing(classes, rest),
        )
    exact = [(src, term) for src, classes in names.classes.items() if term in classes]
    if exact:
        return exact
    folded_refs = [
        (src, c)
        for src, classes in names.classes.items()
        for c in classes
        if c.casefold() == term.casefold()
    ]
    if folded_refs:
        return folded_refs
    if not names.classes:
        raise InvalidInputError(f"unknown class {term!r}: the catalog has no labels", where=where)
    plain = list(dict.fromkeys(c for classes in names.classes.values() for c in classes))
    raise InvalidInputError(
        f"unknown class {term!r}",
        where=where,
        fix=_close(term, plain)
        + "name a class as 'class' or 'source:class'; "
        + _known(_class_catalogue(names), limit=40),
    )


def parse_class_terms(
    value: str | Iterable[str] | None, names: Names, where: str
) -> tuple[tuple[ClassRef, ...], ...]:
    """Each term of ``labels_any``/``labels_all`` as the pairs it matches."""
    return tuple(tuple(resolve_class(t, names, where)) for t in _strings(value, where))


def parse_fractions(
    value: Mapping[str, float] | None, names: Names
) -> tuple[tuple[tuple[ClassRef, ...], float], ...]:
    """``min_fraction``: ``{class or source:class: share}`` with shares in (0, 1].

    Raises:
        InvalidInputError: Not a mapping, a share outside (0, 1], or an unknown class.
    """
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"a {type(value).__name__} is not a mapping",
            where="min_fraction",
            fix="give {class: share}, e.g. {'forest': 0.3}",
        )
    out = []
    for term, share in value.items():
        at = f"min_fraction[{term}]"
        refs = tuple(resolve_class(term, names, "min_fraction"))
        x = _number(share, at)
        if not 0.0 < x <= 1.0:
            raise InvalidInputError(
                f"{x:g} is not a share in (0, 1]",
                where=at,
                fix="give e.g. 0.3 for 30 % (a share of 0 filters nothing: leave the class out)",
            )
        out.append((refs, x))
    return tuple(out)


def parse_splits(value: str | Iterable[str] | None, names: Names) -> tuple[str, ...]:
    """Split names, each known.

    Raises:
        InvalidInputError: An unknown split.
    """
    splits = _strings(value, "split")
    for s in splits:
        if s not in names.splits:
            raise InvalidInputError(
                f"unknown split {s!r}", where="split", fix=_listing(names.splits, s)
            )
    return splits


def parse_ids(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Tile ids or row ids (``<tile_id>_<period_id>``)."""
    return _strings(value, "ids")


def parse_limit(value: int | None) -> int | None:
    """A row limit >= 0.

    Raises:
        InvalidInputError: Not an integer, or negative.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(
            f"limit {value!r} is not a whole number >= 0", where="limit", fix="give e.g. 100"
        )
    return value


def parse_sortby(value: str | None, names: Names) -> tuple[str, bool]:
    """``(field, descending)`` of ``field``, ``+field`` or ``-field``.

    Raises:
        InvalidInputError: An unknown field.
    """
    if value is None:
        return "cube_position", False
    if not isinstance(value, str):
        raise InvalidInputError(f"{value!r} is not a field name", where="sortby")
    text = value.strip()
    descending = text.startswith("-")
    field = text[1:] if text[:1] in "+-" and text else text
    if field not in names.sort_fields:
        raise InvalidInputError(
            f"cannot sort by {field!r}",
            where="sortby",
            fix="prefix '-' for descending; " + _listing(names.sort_fields, field, limit=40),
        )
    return field, descending
