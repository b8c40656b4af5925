"""Query the tile catalog: :func:`open_catalog` -> :class:`TileCatalog` -> :class:`SearchResult`.

Opening reads the list of versions (``catalog/versions``), the footer of one query index file
(``catalog/index``, :mod:`catalog._index`) and the cube's root ``zarr.json``; it never reads
the rows of a finished version, so it does not grow with the number of tiles. A missing or stale
index is rebuilt from the GeoParquet parts (the source of truth) on first open. For the latest
rows, parts committed after the last finished version (a build still running, or killed) are
read and flattened at open time; those are the only rows opening reads.

Versions (:mod:`catalog.versions`): every finished build run is a version, numbered 1..N in
finish order. ``open_catalog(cube, version=N)`` shows exactly the rows of version N (a training
run pins :attr:`TileCatalog.version`); ``open_catalog(cube)`` shows every committed part,
including those of a run that has not finished.

Search semantics (:meth:`TileCatalog.search`; all filters are ANDed):

* ``bbox``: WGS84 ``(xmin, ymin, xmax, ymax)``; rows whose bbox columns overlap it are
  candidates, then the tile's exact footprint must intersect the box (shapely; UTM tiles are
  rotated in WGS84, so a box can touch a tile's bbox and miss its footprint). Touching counts.
* ``intersects``: a GeoJSON geometry (or Feature) dict or a shapely geometry; same two steps.
* ``datetime``: an RFC 3339 instant, a date (``2024-06``: the whole month) or an interval
  ``a/b`` with ``..`` for an open end (STAC API style; the query is closed at both ends); a row
  matches when its period intersects it. A period is half-open,
  ``[start_datetime, end_datetime)``, because builds write the first instant after the period
  as ``end_datetime`` (so ``2024-07`` does not match June's rows); a zero-length period is the
  instant itself.
* ``sensors``: every listed sensor has data in the tile.
* ``max_cloud``: a share: with ``sensors``, each listed sensor's cloud fraction is at most the
  share; without, every sensor of the tile that has a cloud fraction. ``{sensor: share}``: that
  sensor has data and its cloud fraction is at most the share. A sensor without a cloud mask
  (cloud fraction null, e.g. Sentinel-1) passes any cloud bound.
* ``min_valid``: the same for valid fractions (at least the share).
* ``labels_any`` / ``labels_all``: class names from the multi-labels, ``source:class`` or a bare
  ``class`` (present in any source); at least one / every term must be present.
* ``min_fraction``: ``{class or source:class: share}``: the class covers at least the share of
  the tile's labelled pixels (a bare class in any source; an absent class is 0).
* ``split``: a split name or a list of them.
* ``ids``: tile ids (every period of the tile) or row ids (``<tile_id>_<period_id>``).
* ``sortby``: a field, ``-`` prefix for descending (nulls last), then cube position and id:
  ``cube_position`` (the default), ``id``, ``tile_id``, ``period_id``, ``start_datetime``,
  ``end_datetime``, ``split``, ``epsg``, ``shard_id``, ``cloud_max``, ``valid_min``,
  ``cloud:<sensor>``, ``valid:<sensor>``.
* ``limit``: at most this many rows (after the exact geometry test).

A mistake (bad bbox, unknown class/sensor/split/sort field/version, malformed datetime) raises
:class:`schemas.errors.InvalidInputError` naming the argument, never an empty result.

SQL (:meth:`TileCatalog.sql`): DuckDB over the view ``tiles``, one row per catalog row, with the
tile-record columns (``id``, ``tile_id``, ``period_id``, ``start_datetime``, ``end_datetime``,
``epsg``, ``transform``, ``proj_bbox``, ``geometry`` (WKB), ``bbox``, ``cube_position``,
``shard_id``, ``sensors``, ``split``, ``class_fractions``, ``multilabels``,
``unlabeled_fractions``, ``label_flags``) and the flat columns ``xmin``, ``ymin``, ``xmax``,
``ymax``, ``cloud_max``, ``valid_min``, ``"sensor:<s>"``, ``"cloud:<s>"``, ``"valid:<s>"``,
``"fraction:<source>:<class>"`` and ``"label:<source>:<class>"`` (quote names with ``:``; a
per-sensor or per-class column exists when that name occurs in the rows, ``DESCRIBE tiles``
lists them). Example: ``SELECT split, count(*) FROM tiles WHERE "cloud:sentinel-2-l2a" < 0.1
GROUP BY split``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalog import _search_args as _args
from catalog._index import (
    IndexInfo,
    Vocabulary,
    cloud_column,
    ensure_index,
    fraction_column,
    index_table,
    label_column,
    read_parts,
    sensor_column,
    valid_column,
)
from catalog._parts import catalog_dir
from catalog.versions import (
    CatalogVersion,
    committed_part_names,
    load_versions,
    parts_of_version,
    select_version,
)
from schemas.errors import InvalidInputError, NotFoundError
from schemas.tile import TileRecord, tile_record_arrow_schema

if TYPE_CHECKING:
    import duckdb
    import geopandas

__all__ = ["CatalogVersion", "SearchResult", "TileCatalog", "open_catalog"]

log = logging.getLogger(__name__)

#: Table/view name of :meth:`TileCatalog.sql`.
TILES_VIEW = "tiles"
#: Splits every catalog knows (a build assigns these).
DEFAULT_SPLITS = ("train", "val", "test")
_MAIN, _TAIL = 0, 1
_EXACT_CHUNK = 2048
_RECORD_COLUMNS = tuple(tile_record_arrow_schema().names)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _copy_in(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Copy an Arrow table into a DuckDB table (registered objects are not seen by cursors)."""
    con.register("_arrow_in", table)
    try:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_in")
    finally:
        con.unregister("_arrow_in")


def _layout_names(cube: Path) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Sensors and label classes from the cube's root ``zarr.json`` (empty if unreadable)."""
    path = cube / "zarr.json"
    if not path.is_file():
        return (), {}
    try:
        from schemas.cube import CubeLayout

        attrs = json.loads(path.read_text(encoding="utf-8")).get("attributes", {})
        layout = CubeLayout.from_root_attrs(attrs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.debug("no cube layout in %s (%s); names come from the catalog rows", path, err)
        return (), {}
    return (
        tuple(s.name for s in layout.sensors),
        {lab.source: tuple(lab.class_names) for lab in layout.labels},
    )


@dataclass(frozen=True)
class _Source:
    """How a search reads one segment in SQL."""

    seg: int
    from_sql: str
    columns: frozenset[str]
    where: str | None  # rows of the segment to leave out (superseded by the tail)


def _describe(con: duckdb.DuckDBPyConnection, from_sql: str) -> frozenset[str]:
    return frozenset(row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {from_sql}").fetchall())


@dataclass(frozen=True)
class _Query:
    """Validated search arguments."""

    shapes: list[list[Any]]
    when: tuple[datetime | None, datetime | None] | None
    sensors: tuple[str, ...]
    cloud: _args.Threshold
    valid: _args.Threshold
    any_terms: tuple[tuple[_args.ClassRef, ...], ...]
    all_terms: tuple[tuple[_args.ClassRef, ...], ...]
    fractions: tuple[tuple[tuple[_args.ClassRef, ...], float], ...]
    splits: tuple[str, ...]
    ids: tuple[str, ...]
    limit: int | None
    sort_field: str
    descending: bool


def _conditions(q: _Query, columns: frozenset[str]) -> tuple[list[str], list[Any]]:
    """SQL conditions (ANDed) and their parameters for a segment with ``columns``."""
    where: list[str] = []
    params: list[Any] = []

    def col(name: str) -> str | None:
        return _quote(name) if name in columns else None

    for variants in q.shapes:
        boxes = []
        for g in variants:
            x0, y0, x1, y1 = g.bounds
            boxes.append("(xmin <= ? AND xmax >= ? AND ymin <= ? AND ymax >= ?)")
            params.extend([x1, x0, y1, y0])
        where.append("(" + " OR ".join(boxes) + ")")
    if q.when is not None:
        lo, hi = q.when
        if hi is not None:
            where.append("start_datetime <= ?::TIMESTAMPTZ")
            params.append(hi.isoformat())
        if lo is not None:
            # Periods are half-open [start, end): builds write the first instant after the
            # period as end_datetime. A zero-length period is the instant itself.
            where.append(
                "(end_datetime > ?::TIMESTAMPTZ OR "
                "(end_datetime = start_datetime AND end_datetime >= ?::TIMESTAMPTZ))"
            )
            params.extend([lo.isoformat(), lo.isoformat()])
    for s in q.sensors:
        c = col(sensor_column(s))
        where.append(f"COALESCE({c}, false)" if c else "false")
    for threshold, kind, op, combined in (
        (q.cloud, "cloud", "<=", "cloud_max"),
        (q.valid, "valid", ">=", "valid_min"),
    ):
        column_of = cloud_column if kind == "cloud" else valid_column
        if threshold.value is not None:
            if q.sensors:
                for s in q.sensors:
                    c = col(column_of(s))
                    if c is not None:
                        where.append(f"({c} IS NULL OR {c} {op} ?)")
                        params.append(threshold.value)
            else:
                where.append(f"({combined} IS NULL OR {combined} {op} ?)")
                params.append(threshold.value)
        for s, bound in threshold.per_sensor:
            present, c = col(sensor_column(s)), col(column_of(s))
            if present is None or c is None:
                where.append("false")
                continue
            where.append(f"(COALESCE({present}, false) AND ({c} IS NULL OR {c} {op} ?))")
            params.append(bound)

    def label_term(refs: Sequence[_args.ClassRef]) -> str:
        cols = [c for c in (col(label_column(s, k)) for s, k in refs) if c is not None]
        if not cols:
            return "false"
        return "(" + " OR ".join(f"COALESCE({c}, false)" for c in cols) + ")"

    if q.any_terms:
        where.append("(" + " OR ".join(label_term(refs) for refs in q.any_terms) + ")")
    for refs in q.all_terms:
        where.append(label_term(refs))
    for refs, share in q.fractions:
        cols = [c for c in (col(fraction_column(s, k)) for s, k in refs) if c is not None]
        if not cols:
            where.append("false")
            continue
        where.append("(" + " OR ".join(f"COALESCE({c}, 0) >= ?" for c in cols) + ")")
        params.extend([share] * len(cols))
    if q.splits:
        where.append("split IN (" + ", ".join("?" for _ in q.splits) + ")")
        params.extend(q.splits)
    if q.ids:
        marks = ", ".join("?" for _ in q.ids)
        where.append(f"(id IN ({marks}) OR tile_id IN ({marks}))")
        params.extend([*q.ids, *q.ids])
    return where, params


class _Segment:
    """Rows of one source (the version's index file, or rows held in memory)."""

    def __init__(self, path: Path | None, table: pa.Table | None) -> None:
        self.path = path
        self.table = table
        self._file: pq.ParquetFile | None = None
        self._offsets: np.ndarray | None = None
        self._lock = threading.Lock()

    def _open(self) -> tuple[pq.ParquetFile, np.ndarray]:
        with self._lock:
            if self._file is None or self._offsets is None:
                assert self.path is not None
                self._file = pq.ParquetFile(self.path, memory_map=True)
                meta = self._file.metadata
                sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
                self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            return self._file, self._offsets

    def take(self, rows: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Rows ``rows`` (``_row`` values, any order, repeats allowed) of ``columns``."""
        if self.table is not None:
            return self.table.select(list(columns)).take(pa.array(rows, type=pa.int64()))
        pf, offsets = self._open()
        if rows.size == 0:
            return pf.schema_arrow.empty_table().select(list(columns))
        groups = np.searchsorted(offsets, rows, side="right") - 1
        wanted = np.unique(groups)
        with self._lock:  # one reader per file; concurrent reads of one reader are unsafe
            part = pf.read_row_groups(wanted.tolist(), columns=list(columns), use_threads=True)
        # Position of each group's first row inside ``part``.
        starts = np.concatenate([[0], np.cumsum(offsets[wanted + 1] - offsets[wanted])[:-1]])
        local = starts[np.searchsorted(wanted, groups)] + (rows - offsets[groups])
        return part.take(pa.array(local, type=pa.int64()))


class TileCatalog:
    """A snapshot of a cube's tile catalog, for searching (module docstring).

    Get one with :func:`open_catalog`. It is safe to search from several threads; it pickles
    (reopening the same snapshot), so it can be handed to DataLoader workers.

    Attributes:
        cube: The cube directory.
        version: The newest finished version this snapshot includes (``None``: no run has
            finished). With :attr:`pending_parts`, the latest rows include more than it.
        pending_parts: Parts committed after :attr:`version` that this snapshot includes (only
            when opened without a version).
    """

    def __init__(
        self,
        cube: Path,
        version: int | None,
        versions: Sequence[CatalogVersion],
        main: IndexInfo | None,
        pending_parts: Sequence[str],
        tail: pa.Table | None,
        tail_vocabulary: Vocabulary,
        pinned: bool,
    ) -> None:
        self.cube = cube
        self.version = version
        self.pending_parts = tuple(pending_parts)
        self._pinned = pinned
        self._versions = tuple(versions)
        self._main = main
        self._segments: dict[int, _Segment] = {}
        if main is not None:
            self._segments[_MAIN] = _Segment(main.path, main.table)
        if tail is not None:
            self._segments[_TAIL] = _Segment(None, tail)
        vocabulary = tail_vocabulary
        if main is not None:
            vocabulary = main.vocabulary.merged(tail_vocabulary)
        self._vocabulary = vocabulary
        layout_sensors, layout_classes = _layout_names(cube)
        self._sensors = tuple(dict.fromkeys([*layout_sensors, *vocabulary.sensors]))
        classes: dict[str, tuple[str, ...]] = {}
        for source in dict.fromkeys([*layout_classes, *vocabulary.classes]):
            classes[source] = tuple(
                dict.fromkeys(
                    [*layout_classes.get(source, ()), *vocabulary.classes.get(source, ())]
                )
            )
        self._classes = classes
        self._splits = tuple(dict.fromkeys([*DEFAULT_SPLITS, *vocabulary.splits]))
        self._names = _args.Names(self._sensors, self._classes, self._splits)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._columns: frozenset[str] = frozenset()
        self._sources: tuple[_Source, ...] = ()
        self._con_lock = threading.Lock()

    # --- state ---------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self.cube), self.version, self.pending_parts, self._pinned))

    def __repr__(self) -> str:
        pending = f", +{len(self.pending_parts)} pending parts" if self.pending_parts else ""
        return f"TileCatalog({str(self.cube)!r}, version={self.version}{pending})"

    @property
    def sensors(self) -> tuple[str, ...]:
        """Sensor names: the cube layout's (in recipe order), then any other in the rows."""
        return self._sensors

    @property
    def class_names(self) -> dict[str, tuple[str, ...]]:
        """Label source -> class names (the cube layout's order, then any other in the rows)."""
        return dict(self._classes)

    @property
    def splits(self) -> tuple[str, ...]:
        """Split names a search accepts: ``train``, ``val``, ``test`` and any in the rows."""
        return self._splits

    def versions(self) -> list[CatalogVersion]:
        """Every version of the catalog, oldest first (as of opening)."""
        return list(self._versions)

    def __len__(self) -> int:
        return self._count()

    def close(self) -> None:
        """Release the DuckDB connection (reopened on the next query)."""
        with self._con_lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # --- DuckDB ----------------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._con_lock:
            if self._con is None:
                self._con = self._connect()
            return self._con.cursor()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        con = duckdb.connect(":memory:")
        con.execute("SET GLOBAL TimeZone = 'UTC'")
        con.execute("SET GLOBAL parquet_metadata_cache = true")
        tail = self._segments.get(_TAIL)
        if tail is not None:
            assert tail.table is not None
            _copy_in(con, "_tail_rows", tail.table)
        sources: list[_Source] = []
        main = self._segments.get(_MAIN)
        if main is not None:
            if main.table is not None:
                _copy_in(con, "_main_rows", main.table)
                from_sql = "_main_rows"
            else:
                assert main.path is not None
                from_sql = f"read_parquet({_sql_string(str(main.path))})"
            superseded = "id NOT IN (SELECT id FROM _tail_rows)" if tail is not None else None
            sources.append(_Source(_MAIN, from_sql, _describe(con, from_sql), superseded))
        if tail is not None:
            sources.append(_Source(_TAIL, "_tail_rows", _describe(con, "_tail_rows"), None))
        selects = []
        for src in sources:
            where = f" WHERE {src.where}" if src.where else ""
            selects.append(f"SELECT {src.seg}::TINYINT AS _seg, * FROM {src.from_sql}{where}")
        con.execute("CREATE VIEW _all AS " + " UNION ALL BY NAME ".join(selects))
        con.execute(f"CREATE VIEW {TILES_VIEW} AS SELECT * EXCLUDE (_seg, _row) FROM _all")
        self._sources = tuple(sources)
        self._columns = frozenset(c for src in sources for c in src.columns)
        return con

    def _ensure_connected(self) -> None:
        with self._con_lock:
            if self._con is None:
                self._con = self._connect()

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pa.Table:
        """Run a DuckDB SQL query over the view ``tiles`` (module docstring lists its columns).

        Args:
            query: SQL, e.g. ``SELECT split, count(*) FROM tiles GROUP BY split``.
            params: Values for ``?`` (or ``$name``) placeholders.

        Returns:
            The result as an Arrow table (empty for a statement without rows).

        Raises:
            InvalidInputError: DuckDB refused the query (its message, the columns to use).
        """
        import duckdb

        cur = self._connection()
        try:
            rel = cur.sql(query, params=params)
            return pa.table({}) if rel is None else rel.to_arrow_table()
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InvalidInputError(
                f"the SQL query failed: {first}",
                where="sql",
                fix=f"query the view {TILES_VIEW!r}; flat columns: xmin, ymin, xmax, ymax, "
                'cloud_max, valid_min, "cloud:<sensor>", "valid:<sensor>", "sensor:<sensor>", '
                '"fraction:<source>:<class>", "label:<source>:<class>" (quoted; they exist for '
                "the sensors and classes that occur in the rows: DESCRIBE tiles lists them)",
            ) from None
        finally:
            cur.close()

    def _count(self) -> int:
        cur = self._connection()
        try:
            row = cur.execute("SELECT count(*) FROM _all").fetchone()
        finally:
            cur.close()
        return int(row[0]) if row else 0

    # --- search ----------------------------------------------------------------------------

    def search(
        self,
        *,
        bbox: Sequence[float] | None = None,
        intersects: Any = None,
        datetime: Any = None,
        max_cloud: float | Mapping[str, float] | None = None,
        min_valid: float | Mapping[str, float] | None = None,
        sensors: str | Iterable[str] | None = None,
        labels_any: str | Iterable[str] | None = None,
        labels_all: str | Iterable[str] | None = None,
        min_fraction: Mapping[str, float] | None = None,
        split: str | Iterable[str] | None = None,
        ids: str | Iterable[str] | None = None,
        limit: int | None = None,
        sortby: str | None = None,
    ) -> SearchResult:
        """Rows matching every given filter, in ``sortby`` order (module docstring).

        Args:
            bbox: WGS84 ``(xmin, ymin, xmax, ymax)``; exact footprint intersection.
            intersects: GeoJSON geometry dict or shapely geometry (WGS84); exact intersection.
            datetime: Instant, date or interval ``a/b`` (``..`` open); matches periods
                ``[start, end)`` that overlap it.
            max_cloud: Share, or ``{sensor: share}``: highest cloud fraction.
            min_valid: Share, or ``{sensor: share}``: lowest valid fraction.
            sensors: Sensors that must have data in the tile.
            labels_any: Classes of which at least one is a multi-label of the tile.
            labels_all: Classes that must all be multi-labels of the tile.
            min_fraction: ``{class or source:class: share}``: lowest class fraction.
            split: Split name(s).
            ids: Tile ids or row ids.
            limit: Most rows returned.
            sortby: Sort field, ``-`` prefix for descending; default ``cube_position``.

        Returns:
            The matching rows (lazily materialised).

        Raises:
            InvalidInputError: A malformed or unknown argument (which one, and how to fix it).
        """
        names = self._names
        box = _args.parse_bbox(bbox)
        shape = _args.parse_intersects(intersects)
        when = _args.parse_datetime(datetime)
        wanted_sensors = _args.parse_sensors(sensors, names)
        cloud = _args.parse_threshold(max_cloud, "max_cloud", names)
        valid = _args.parse_threshold(min_valid, "min_valid", names)
        any_terms = _args.parse_class_terms(labels_any, names, "labels_any")
        all_terms = _args.parse_class_terms(labels_all, names, "labels_all")
        fractions = _args.parse_fractions(min_fraction, names)
        splits = _args.parse_splits(split, names)
        wanted_ids = _args.parse_ids(ids)
        n_max = _args.parse_limit(limit)
        sort_field, descending = _args.parse_sortby(sortby, names)
        self._ensure_connected()
        q = _Query(
            shapes=self._query_shapes(box, shape),
            when=when,
            sensors=wanted_sensors,
            cloud=cloud,
            valid=valid,
            any_terms=any_terms,
            all_terms=all_terms,
            fractions=fractions,
            splits=splits,
            ids=wanted_ids,
            limit=n_max,
            sort_field=sort_field,
            descending=descending,
        )
        selects = []
        params: list[Any] = []
        for src in self._sources:
            where, values = _conditions(q, src.columns)
            if src.where:
                where.append(src.where)
            sort_col = _quote(sort_field) if sort_field in src.columns else "NULL"
            select = (
                f"SELECT {src.seg}::TINYINT AS _seg, _row, cube_position, id, {sort_col} AS _sort"
            )
            if q.shapes:
                select += ", xmin, ymin, xmax, ymax"
            select += f" FROM {src.from_sql}"
            if where:
                select += " WHERE " + " AND ".join(where)
            selects.append(select)
            params.extend(values)
        direction = "DESC" if descending else "ASC"
        query = " UNION ALL ".join(selects)
        query += f" ORDER BY _sort {direction} NULLS LAST, cube_position ASC, id ASC"
        if n_max is not None and not q.shapes:
            query += f" LIMIT {int(n_max)}"
        cur = self._connection()
        try:
            found = cur.execute(query, params).fetchnumpy()
        finally:
            cur.close()
        seg = np.asarray(found["_seg"], dtype=np.int8)
        row = np.asarray(found["_row"], dtype=np.int64)
        pos = np.asarray(found["cube_position"], dtype=np.int64)
        ids_found = np.asarray(found["id"], dtype=object)
        if q.shapes:
            keep = self._exact(found, seg, row, q.shapes, n_max)
            seg, row, pos, ids_found = seg[keep], row[keep], pos[keep], ids_found[keep]
        return SearchResult(self, seg, row, pos, ids_found)

    def _query_shapes(
        self, box: tuple[float, float, float, float] | None, shape: Any
    ) -> list[list[Any]]:
        """One entry per spatial filter (bbox, intersects), each a list of variants.

        A footprint must intersect every filter, each in one of its variants: the geometry
        itself, plus copies shifted by 360 degrees when some tiles cross the antimeridian
        (their footprint longitudes go beyond +-180).
        """
        import shapely

        geometries = []
        if box is not None:
            x0, y0, x1, y1 = box
            if x0 == x1 and y0 == y1:
                geometries.append(shapely.Point(x0, y0))
            elif x0 == x1 or y0 == y1:
                geometries.append(shapely.LineString([(x0, y0), (x1, y1)]))
            else:
                geometries.append(shapely.box(x0, y0, x1, y1))
        if shape is not None:
            geometries.append(shape)
        x_range = self._vocabulary.x_range
        shapes = []
        for geometry in geometries:
            variants = [geometry]
            if x_range is not None and x_range[1] > 180.0:
                variants.append(shapely.transform(geometry, lambda c: c + np.array([360.0, 0.0])))
            if x_range is not None and x_range[0] < -180.0:
                variants.append(shapely.transform(geometry, lambda c: c - np.array([360.0, 0.0])))
            for g in variants:
                shapely.prepare(g)
            shapes.append(variants)
        return shapes

    def _exact(
        self,
        found: Mapping[str, Any],
        seg: np.ndarray,
        row: np.ndarray,
        shapes: Sequence[Sequence[Any]],
        n_max: int | None,
    ) -> np.ndarray:
        """Indices (in order) of the candidates whose footprint intersects every query shape.

        A tile whose bbox lies inside a shape matches it without decoding its footprint, and
        one whose bbox misses it does not; only tiles on a shape's edge are tested exactly.
        """
        import shapely

        xmin, ymin, xmax, ymax = (
            np.asarray(found[k], dtype=np.float64) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        n = xmin.size
        keep = np.ones(n, dtype=bool)  # matches every shape by its bbox alone
        maybe = np.ones(n, dtype=bool)  # may match every shape
        for variants in shapes:
            inside = np.zeros(n, dtype=bool)
            touching = np.zeros(n, dtype=bool)
            for g in variants:
                gx0, gy0, gx1, gy1 = g.bounds
                overlap = (xmin <= gx1) & (xmax >= gx0) & (ymin <= gy1) & (ymax >= gy0)
                idx = np.flatnonzero(overlap & maybe)
                if idx.size == 0:
                    continue
                boxes = shapely.box(xmin[idx], ymin[idx], xmax[idx], ymax[idx])
                inside[idx[shapely.covers(g, boxes)]] = True
                touching[idx[shapely.intersects(g, boxes)]] = True
            keep &= inside
            maybe &= touching
        pending = np.flatnonzero(maybe & ~keep)
        at = 0
        while at < pending.size:
            if n_max is not None and np.count_nonzero(keep[: pending[at]]) >= n_max:
                break
            chunk = pending[at : at + _EXACT_CHUNK]
            wkb = self._take(seg[chunk], row[chunk], ["geometry"]).column("geometry")
            footprints = shapely.from_wkb(wkb.to_numpy(zero_copy_only=False))
            hit = np.ones(chunk.size, dtype=bool)
            for variants in shapes:
                hit_shape = np.zeros(chunk.size, dtype=bool)
                for g in variants:
                    hit_shape |= shapely.intersects(footprints, g)
                hit &= hit_shape
            keep[chunk] = hit
            at += _EXACT_CHUNK
        result = np.flatnonzero(keep)
        return result if n_max is None else result[:n_max]

    def _take(self, seg: np.ndarray, row: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Columns of the rows ``(seg, row)``, in the given order."""
        present = [s for s in (_MAIN, _TAIL) if s in self._segments and np.any(seg == s)]
        if len(present) <= 1:
            segment = self._segments[present[0]] if present else next(iter(self._segments.values()))
            return segment.take(row, columns)
        pieces = []
        order = []
        for s in present:
            where = np.flatnonzero(seg == s)
            pieces.append(self._segments[s].take(row[where], columns))
            order.append(where)
        joined = pa.concat_tables(pieces, promote_options="permissive")
        inverse = np.empty(seg.size, dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(seg.size)
        return joined.take(pa.array(inverse))

    # --- statistics --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts over the rows: per split, period, sensor and class (multi-label presence).

        Returns:
            ``{"version", "pending_parts", "rows", "tiles", "splits": {name: rows},
            "periods": [{"period_id", "start_datetime", "end_datetime", "rows"}],
            "sensors": {name: {"rows", "mean_cloud", "mean_valid"}},
            "classes": {source: {class: rows}}}`` (unassigned split: ``"unassigned"``).
        """
        cur = self._connection()
        try:
            total, tiles = cur.execute(
                "SELECT count(*), count(DISTINCT tile_id) FROM _all"
            ).fetchone() or (0, 0)
            splits = {
                (name if name is not None else "unassigned"): int(n)
                for name, n in cur.execute(
                    "SELECT split, count(*) FROM _all GROUP BY split ORDER BY split NULLS LAST"
                ).fetchall()
            }
            periods = [
                {
                    "period_id": p,
                    "start_datetime": _iso(s),
                    "end_datetime": _iso(e),
                    "rows": int(n),
                }
                for p, s, e, n in cur.execute(
                    "SELECT period_id, min(start_datetime), max(end_datetime), count(*) "
                    "FROM _all GROUP BY period_id ORDER BY min(start_datetime), period_id"
                ).fetchall()
            ]
            sensors: dict[str, Any] = {}
            for s in self._sensors:
                present = self._columns & {sensor_column(s)}
                if not present:
                    sensors[s] = {"rows": 0, "mean_cloud": None, "mean_valid": None}
                    continue
                n, c, v = cur.execute(
                    f"SELECT count(*) FILTER (WHERE {_quote(sensor_column(s))}), "
                    f"avg({_quote(cloud_column(s))}), avg({_quote(valid_column(s))}) FROM _all"
                ).fetchone() or (0, None, None)
                sensors[s] = {
                    "rows": int(n),
                    "mean_cloud": None if c is None else round(float(c), 4),
                    "mean_valid": None if v is None else round(float(v), 4),
                }
            classes: dict[str, dict[str, int]] = {}
            label_cols = [
                (src, k)
                for src, names in self._classes.items()
                for k in names
                if label_column(src, k) in self._columns
            ]
            counts: Sequence[Any] = ()
            if label_cols:
                counts = (
                    cur.execute(
                        "SELECT "
                        + ", ".join(
                            f"count(*) FILTER (WHERE {_quote(label_column(s, k))})"
                            for s, k in label_cols
                        )
                        + " FROM _all"
                    ).fetchone()
                    or ()
                )
            found = {ref: int(n) for ref, n in zip(label_cols, counts, strict=False)}
            for src, names in self._classes.items():
                classes[src] = {k: found[(src, k)] for k in names if found.get((src, k))}
        finally:
            cur.close()
        return {
            "version": self.version,
            "pending_parts": len(self.pending_parts),
            "rows": int(total),
            "tiles": int(tiles),
            "splits": splits,
            "periods": periods,
            "sensors": sensors,
            "classes": classes,
        }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


class SearchResult:
    """The rows a search matched, in order; columns are read only when asked for.

    Use :meth:`positions` for the cube positions (what a dataset reads), :meth:`to_records`,
    :meth:`to_arrow` or :meth:`to_geodataframe` for the rows.
    """

    def __init__(
        self,
        catalog: TileCatalog,
        seg: np.ndarray,
        row: np.ndarray,
        positions: np.ndarray,
        ids: np.ndarray,
    ) -> None:
        self.catalog = catalog
        self._seg = seg
        self._row = row
        self._positions = positions
        self._ids = ids

    def __len__(self) -> int:
        return int(self._positions.size)

    def __repr__(self) -> str:
        return f"SearchResult({len(self)} rows of {self.catalog!r})"

    def head(self, n: int) -> SearchResult:
        """The first ``n`` rows."""
        n = max(0, int(n))
        return SearchResult(
            self.catalog, self._seg[:n], self._row[:n], self._positions[:n], self._ids[:n]
        )

    def positions(self) -> list[int]:
        """Cube positions (index along the cube's tile axis), in result order."""
        return [int(p) for p in self._positions]

    def ids(self) -> list[str]:
        """Row ids (``<tile_id>_<period_id>``), in result order."""
        return [str(v) for v in self._ids.tolist()]

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of the result (a tile-record or flat column), in result order.

        Raises:
            InvalidInputError: No such column.
        """
        return self._columns([name]).column(name)

    def _columns(self, names: Sequence[str]) -> pa.Table:
        self.catalog._ensure_connected()
        unknown = [n for n in names if n not in self.catalog._columns]
        if unknown:
            raise InvalidInputError(
                f"no column {unknown[0]!r}",
                where="column",
                fix=f"use one of {', '.join(_RECORD_COLUMNS)} or a flat column",
            )
        return self.catalog._take(self._seg, self._row, names)

    def to_arrow(self) -> pa.Table:
        """The rows with the tile-record schema (GeoParquet ``geo`` metadata included)."""
        schema = tile_record_arrow_schema()
        table = self._columns(list(_RECORD_COLUMNS))
        return table.cast(schema).replace_schema_metadata(schema.metadata)

    def to_records(self) -> list[TileRecord]:
        """The rows as :class:`schemas.tile.TileRecord`."""
        return [TileRecord.from_arrow_row(r) for r in self.to_arrow().to_pylist()]

    def to_geodataframe(self) -> geopandas.GeoDataFrame:
        """The rows as a GeoDataFrame (``geometry`` in OGC:CRS84); imports geopandas."""
        import geopandas

        table = self.to_arrow()
        geometry = geopandas.GeoSeries.from_wkb(
            table.column("geometry").to_numpy(zero_copy_only=False), crs="OGC:CRS84"
        )
        frame = table.drop_columns(["geometry"]).to_pandas()
        return geopandas.GeoDataFrame(frame, geometry=geometry.values, crs="OGC:CRS84")


def _reopen(cube: str, version: int | None, pending: Sequence[str], pinned: bool) -> TileCatalog:
    return _open(Path(cube), version, pending_parts=pending, pinned=pinned)


def open_catalog(cube: str | Path, version: int | None = None) -> TileCatalog:
    """Open the tile catalog of ``cube`` for searching.

    Args:
        cube: The cube directory (its catalog is ``<cube>/catalog``).
        version: A finished version (1..N, see :meth:`TileCatalog.versions`) to see exactly
            its rows; ``None`` for every committed part, a running build's included.

    Returns:
        The catalog snapshot.

    Raises:
        NotFoundError: No cube or no catalog at ``cube``.
        InvalidInputError: An unknown version.
    """
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InvalidInputError(
            f"version {version!r} is not a whole number", where="version", fix="give e.g. 3"
        )
    return _open(Path(cube), version, pending_parts=None, pinned=version is not None)


def _open(
    cube: Path, version: int | None, *, pending_parts: Sequence[str] | None, pinned: bool
) -> TileCatalog:
    if not cube.exists():
        raise NotFoundError(
            "no such cube", where=str(cube), fix="give the cube directory a build wrote"
        )
    if not catalog_dir(cube).is_dir():
        raise NotFoundError(
            "the cube has no tile catalog",
            where=str(cube),
            fix="run 'eoforge build RECIPE' for this cube (the catalog is <cube>/catalog)",
        )
    versions = load_versions(cube)
    if pinned:
        assert version is not None
        select_version(versions, version)
        number: int | None = version
    else:
        number = version if version is not None else (versions[-1].number if versions else None)
    main = ensure_index(cube, versions, number) if number is not None else None
    tail: pa.Table | None = None
    tail_vocabulary = Vocabulary()
    pending: list[str] = []
    if not pinned:
        if pending_parts is None:
            visible = set(parts_of_version(versions, number)) if number is not None else set()
            pending = [p for p in committed_part_names(cube) if p not in visible]
        else:
            pending = list(pending_parts)
        if pending or main is None:
            records = read_parts(cube, pending)
            priority = np.zeros(records.num_rows, dtype=np.int64)
            tail, tail_vocabulary = index_table(records, priority)
    return TileCatalog(
        cube=cube,
        version=number,
        versions=versions,
        main=main,
        pending_parts=pending,
        tail=tail,
        tail_vocabulary=tail_vocabulary,
        pinned=pinned,
    )
