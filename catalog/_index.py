"""The query index: one sorted, flat Parquet file per catalog version, rebuildable from the parts.

::

    <cube>/catalog/index/v<NNNNNNNN>.parquet   every row of version N, deduplicated and sorted

The GeoParquet parts stay the source of truth; an index file is a cache that
:func:`ensure_index` rebuilds whenever it is missing, of another format, or does not match the
version's parts (a digest of the part names is stored in it). It is written like a part
(temporary file, ``fsync``, atomic rename), so readers see the old file or the new one.

Content: the tile-record columns (:func:`schemas.tile.tile_record_arrow_schema`, GeoParquet
``geo`` metadata kept) plus flat columns a query filters on without unnesting:

==========================  =======  ==========================================================
column                      type     meaning
==========================  =======  ==========================================================
``xmin ymin xmax ymax``     double   the WGS84 bbox
``cloud_max``               double   highest cloud fraction over the tile's sensors (null: none)
``valid_min``               double   lowest valid fraction over the tile's sensors
``sensor:<s>``              bool     sensor ``s`` has data in the tile
``cloud:<s>``               double   cloud fraction of ``s`` (null: no data or no cloud mask)
``valid:<s>``               double   valid fraction of ``s`` (null: no data)
``fraction:<src>:<cls>``    double   class fraction (null: class absent, i.e. 0, or unlabelled)
``label:<src>:<cls>``       bool     ``cls`` is in the multi-labels of ``src``
``_row``                    int64    row number in the file (internal)
==========================  =======  ==========================================================

Rows are sorted by period (start, end), then along a Hilbert curve of the bbox centre, then by
cube position, and written in row groups of :data:`ROW_GROUP_SIZE` with min/max statistics, so a
bbox or time filter reads only the row groups near the answer (measured: 8192 rows per group
queried faster than 4096 or 32768 at 10^6 rows, see ``benchmarks/bench_catalog.py``).

Index ``N`` is built from index ``k < N`` (the newest valid one) plus the parts versions
``k+1..N`` added: only those rows are read from parts and flattened, the base's flat columns are
reused, then everything is deduplicated (one row per id, the newest version's) and sorted again.
:meth:`catalog.writer.CatalogWriter.finish_run` builds the new version's index this way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog._parts import TEMP_SUFFIX, catalog_dir, parts_dir
from catalog.versions import CatalogVersion, parts_of_version
from schemas.tile import tile_record_arrow_schema

__all__ = [
    "INDEX_FORMAT",
    "ROW_GROUP_SIZE",
    "IndexInfo",
    "Vocabulary",
    "cloud_column",
    "dedupe",
    "ensure_index",
    "flatten",
    "fraction_column",
    "index_dir",
    "index_path",
    "index_table",
    "label_column",
    "read_parts",
    "sensor_column",
    "sort_rows",
    "valid_column",
]

log = logging.getLogger(__name__)

#: Bumped whenever the index content changes; older files are rebuilt on open.
INDEX_FORMAT = 1
#: Rows per Parquet row group of an index file (the unit of pruning).
ROW_GROUP_SIZE = 8192
_META_KEY = b"eoforge_index"
_HILBERT_ORDER = 16
#: Columns (besides the flat ones) that carry min/max statistics in the index.
_STAT_COLUMNS = (
    "id",
    "tile_id",
    "period_id",
    "start_datetime",
    "end_datetime",
    "epsg",
    "cube_position",
    "split",
)


def index_dir(cube_path: str | Path) -> Path:
    """``<cube>/catalog/index``."""
    return catalog_dir(cube_path) / "index"


def index_path(cube_path: str | Path, number: int) -> Path:
    """``<cube>/catalog/index/v<NNNNNNNN>.parquet``."""
    return index_dir(cube_path) / f"v{number:08d}.parquet"


def sensor_column(sensor: str) -> str:
    """Flat column: sensor present (bool)."""
    return f"sensor:{sensor}"


def cloud_column(sensor: str) -> str:
    """Flat column: cloud fraction of ``sensor``."""
    return f"cloud:{sensor}"


def valid_column(sensor: str) -> str:
    """Flat column: valid fraction of ``sensor``."""
    return f"valid:{sensor}"


def fraction_column(source: str, name: str) -> str:
    """Flat column: share of class ``name`` in label source ``source``."""
    return f"fraction:{source}:{name}"


def label_column(source: str, name: str) -> str:
    """Flat column: class ``name`` is a multi-label of ``source``."""
    return f"label:{source}:{name}"


@dataclass(frozen=True)
class Vocabulary:
    """Names that occur in a set of rows (they decide the flat columns).

    Attributes:
        sensors: Sensor names, sorted.
        classes: Label source -> class names seen in fractions or multi-labels, sorted.
        splits: Split names, sorted.
        x_range: Lowest ``xmin`` and highest ``xmax`` (longitudes beyond +-180 mark tiles that
            cross the antimeridian); ``None`` without rows.
    """

    sensors: tuple[str, ...] = ()
    classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    splits: tuple[str, ...] = ()
    x_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "sensors": list(self.sensors),
            "classes": {k: list(v) for k, v in self.classes.items()},
            "splits": list(self.splits),
            "x_range": None if self.x_range is None else list(self.x_range),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_dict`."""
        x_range = data.get("x_range")
        return cls(
            sensors=tuple(data.get("sensors", ())),
            classes={k: tuple(v) for k, v in dict(data.get("classes", {})).items()},
            splits=tuple(data.get("splits", ())),
            x_range=None if x_range is None else (float(x_range[0]), float(x_range[1])),
        )

    def merged(self, other: Vocabulary) -> Vocabulary:
        """Union of two vocabularies."""
        classes = {k: set(v) for k, v in self.classes.items()}
        for k, v in other.classes.items():
            classes.setdefault(k, set()).update(v)
        ranges = [r for r in (self.x_range, other.x_range) if r is not None]
        return Vocabulary(
            sensors=tuple(sorted(set(self.sensors) | set(other.sensors))),
            classes={k: tuple(sorted(v)) for k, v in sorted(classes.items())},
            splits=tuple(sorted(set(self.splits) | set(other.splits))),
            x_range=(min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None,
        )


@dataclass(frozen=True)
class IndexInfo:
    """What an index file holds (its ``eoforge_index`` metadata).

    Attributes:
        path: The file; ``None`` for an index kept in memory (``table`` set).
        version: The catalog version it indexes.
        n_rows: Rows in it.
        parts_digest: SHA-256 of the version's sorted part names.
        vocabulary: Names in its rows.
        table: The index rows, when they could not be written to disk.
    """

    path: Path | None
    version: int
    n_rows: int
    parts_digest: str
    vocabulary: Vocabulary
    table: pa.Table | None = None


def _digest(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def _read_info(path: Path) -> IndexInfo | None:
    try:
        meta = pq.read_schema(path).metadata or {}
        doc = json.loads(meta[_META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    if doc.get("format") != INDEX_FORMAT:
        return None
    return IndexInfo(
        path=path,
        version=int(doc["version"]),
        n_rows=int(doc["n_rows"]),
        parts_digest=str(doc["parts_digest"]),
        vocabulary=Vocabulary.from_dict(doc["vocabulary"]),
    )


# --- reading parts ---------------------------------------------------------------------------


def _read_part(path: Path, schema: pa.Schema) -> pa.Table | None:
    try:
        table = pq.ParquetFile(path).read()
    except FileNotFoundError:
        log.warning("catalog part %s is listed by a version but missing; skipped", path.name)
        return None
    if not table.schema.equals(schema, check_metadata=False):
        table = table.cast(schema)
    return table


def read_parts(cube_path: str | Path, names: Sequence[str]) -> pa.Table:
    """The rows of the named parts (tile-record schema), in name order; missing parts skipped.

    Parts are read one file at a time on a few threads (a dataset scan of tens of thousands of
    small files holds far more memory than the rows).
    """
    from concurrent.futures import ThreadPoolExecutor

    schema = tile_record_arrow_schema()
    directory = parts_dir(cube_path)
    paths = [directory / name for name in names]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        tables = [t for t in pool.map(lambda p: _read_part(p, schema), paths) if t is not None]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).replace_schema_metadata(schema.metadata)


# --- flattening ------------------------------------------------------------------------------


def _hilbert(x: np.ndarray, y: np.ndarray, order: int = _HILBERT_ORDER) -> np.ndarray:
    """Hilbert-curve distance of integer cells ``x``, ``y`` in ``[0, 2**order)``."""
    n = np.int64(1 << order)
    x = x.astype(np.int64)
    y = y.astype(np.int64)
    d = np.zeros(x.shape, dtype=np.int64)
    s = n // 2
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x = np.where(flip, n - 1 - x, x)
        y = np.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s //= 2
    return d


def _spatial_key(xmin: np.ndarray, ymin: np.ndarray, xmax: np.ndarray, ymax: np.ndarray) -> Any:
    cells = float(1 << _HILBERT_ORDER)
    cx = np.clip(((xmin + xmax) / 2 + 180.0) / 360.0, 0.0, 1.0 - 1e-12)
    cy = np.clip(((ymin + ymax) / 2 + 90.0) / 180.0, 0.0, 1.0 - 1e-12)
    return _hilbert((cx * cells).astype(np.int64), (cy * cells).astype(np.int64))


def _explode(array: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Row index and values of each element of a list or map array (null slots: no elements).

    Works on offsets directly (``pyarrow.compute.list_parent_indices`` rejects map arrays).
    """
    n = len(array)
    offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.diff(offsets)
    if array.null_count:
        counts = np.where(array.is_valid().to_numpy(zero_copy_only=False), counts, 0)
    rows = np.repeat(np.arange(n, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    index = np.arange(rows.size, dtype=np.int64) - np.repeat(first, counts)
    index += np.repeat(offsets[:-1], counts)
    return rows, array.values.take(pa.array(index, type=pa.int64()))


def _entries(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Row index and values of each element of a list or map column."""
    return _explode(column.combine_chunks())


def _codes(array: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Integer code of each string and the distinct strings (Arrow hashing, no Python loop)."""
    encoded = pc.dictionary_encode(array)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [str(v) for v in encoded.dictionary.to_pylist()]


def _group_codes(codes: np.ndarray, n_keys: int) -> list[tuple[int, np.ndarray]]:
    """``[(code, positions), ...]`` for every code that occurs."""
    if codes.size == 0:
        return []
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_keys)
    parts = np.split(order, np.cumsum(counts)[:-1])
    return [(k, parts[k]) for k in range(n_keys) if counts[k]]


def _pairs(
    source_codes: np.ndarray, sources: Sequence[str], names: pa.Array
) -> list[tuple[str, str, np.ndarray]]:
    """``[(source, name, positions), ...]`` sorted, for entries with the given source codes."""
    name_codes, name_dict = _codes(names)
    if name_codes.size == 0:
        return []
    combined = source_codes * len(name_dict) + name_codes
    uniq, inverse = np.unique(combined, return_inverse=True)
    out = [
        (sources[int(uniq[k]) // len(name_dict)], name_dict[int(uniq[k]) % len(name_dict)], where)
        for k, where in _group_codes(inverse.ravel(), len(uniq))
    ]
    return sorted(out, key=lambda t: (t[0], t[1]))


def _nullable_floats(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.float64(), from_pandas=True)


def flatten(records: pa.Table) -> tuple[pa.Table, Vocabulary]:
    """Add the flat query columns (module docstring) to tile-record rows.

    Args:
        records: Rows with the tile-record schema (any row order; ``_row`` not included).

    Returns:
        The record columns followed by the flat ones, and the names found in the rows.
    """
    n = records.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: records.column(name) for name in records.column_names
    }
    bbox = records.column("bbox").combine_chunks()
    coords = {
        k: bbox.field(k).to_numpy(zero_copy_only=False) for k in ("xmin", "ymin", "xmax", "ymax")
    }
    for k, values in coords.items():
        columns[k] = pa.array(values, type=pa.float64())

    # Sensors: presence, cloud and valid fraction per sensor; max cloud and min valid per row.
    rows, flat = _entries(records.column("sensors"))
    sensor_codes, sensor_dict = _codes(flat.field("sensor"))
    cloud = flat.field("cloud_fraction").to_numpy(zero_copy_only=False).astype(np.float64)
    valid = flat.field("valid_fraction").to_numpy(zero_copy_only=False).astype(np.float64)
    cloud_max = np.full(n, -np.inf)
    has_cloud = ~np.isnan(cloud)
    np.maximum.at(cloud_max, rows[has_cloud], cloud[has_cloud])
    cloud_max[np.isneginf(cloud_max)] = np.nan
    valid_min = np.full(n, np.inf)
    np.minimum.at(valid_min, rows, valid)
    valid_min[np.isposinf(valid_min)] = np.nan
    columns["cloud_max"] = _nullable_floats(cloud_max)
    columns["valid_min"] = _nullable_floats(valid_min)
    sensor_names = []
    for code, where in sorted(
        _group_codes(sensor_codes, len(sensor_dict)), key=lambda g: sensor_dict[g[0]]
    ):
        sensor = sensor_dict[code]
        sensor_names.append(sensor)
        present = np.zeros(n, dtype=bool)
        present[rows[where]] = True
        c = np.full(n, np.nan)
        c[rows[where]] = cloud[where]
        v = np.full(n, np.nan)
        v[rows[where]] = valid[where]
        columns[sensor_column(sensor)] = pa.array(present)
        columns[cloud_column(sensor)] = _nullable_floats(c)
        columns[valid_column(sensor)] = _nullable_floats(v)

    classes: dict[str, set[str]] = {}
    # Class fractions: map<source, map<class, share>>.
    outer_rows, outer = _entries(records.column("class_fractions"))
    source_codes, source_dict = _codes(outer.field("key"))
    inner_parent, inner = _explode(outer.field("value"))
    shares = inner.field("value").to_numpy(zero_copy_only=False).astype(np.float64)
    entry_rows = outer_rows[inner_parent]
    for source, name, where in _pairs(source_codes[inner_parent], source_dict, inner.field("key")):
        classes.setdefault(source, set()).add(name)
        values = np.full(n, np.nan)
        values[entry_rows[where]] = shares[where]
        columns[fraction_column(source, name)] = _nullable_floats(values)

    # Multi-labels: map<source, list<class>>.
    ml_rows, ml = _entries(records.column("multilabels"))
    ml_source_codes, ml_source_dict = _codes(ml.field("key"))
    list_parent, ml_classes = _explode(ml.field("value"))
    label_rows = ml_rows[list_parent]
    for source, name, where in _pairs(ml_source_codes[list_parent], ml_source_dict, ml_classes):
        classes.setdefault(source, set()).add(name)
        present = np.zeros(n, dtype=bool)
        present[label_rows[where]] = True
        columns[label_column(source, name)] = pa.array(present)

    splits = pc.unique(records.column("split").combine_chunks().drop_null()).to_pylist()
    x_range = None
    if n:
        x_range = (float(np.min(coords["xmin"])), float(np.max(coords["xmax"])))
    vocabulary = Vocabulary(
        sensors=tuple(sensor_names),
        classes={k: tuple(sorted(v)) for k, v in sorted(classes.items())},
        splits=tuple(sorted(str(s) for s in splits)),
        x_range=x_range,
    )
    return pa.table(columns), vocabulary


def dedupe(table: pa.Table, priority: np.ndarray) -> pa.Table:
    """Keep one row per ``id``: the highest ``priority``, then the highest cube position."""
    n = table.num_rows
    if n == 0 or pc.count_distinct(table.column("id")).as_py() == n:
        return table
    helper = pa.table(
        {
            "id": table.column("id"),
            "p": pa.array(priority, type=pa.int64()),
            "c": table.column("cube_position"),
            "i": pa.array(np.arange(n, dtype=np.int64)),
        }
    )
    order = helper.sort_by([("id", "ascending"), ("p", "descending"), ("c", "descending")])
    ids = order.column("id").combine_chunks()
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    keep = np.sort(order.column("i").to_numpy()[first])
    return table.take(pa.array(keep))


def sort_rows(table: pa.Table) -> pa.Table:
    """Sort by period, Hilbert key of the bbox centre, cube position and id; add ``_row``."""
    if table.num_rows:
        key = _spatial_key(*(table.column(k).to_numpy() for k in ("xmin", "ymin", "xmax", "ymax")))
        helper = pa.table(
            {
                "s": table.column("start_datetime"),
                "e": table.column("end_datetime"),
                "h": pa.array(key),
                "c": table.column("cube_position"),
                "id": table.column("id"),
            }
        )
        order = pc.sort_indices(
            helper,
            sort_keys=[
                ("s", "ascending"),
                ("e", "ascending"),
                ("h", "ascending"),
                ("c", "ascending"),
                ("id", "ascending"),
            ],
        )
        table = table.take(order)
    return table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _fill_flags(table: pa.Table) -> pa.Table:
    """Set the presence flags (``sensor:``/``label:``) of older rows to ``false``.

    Concatenating an older index with rows that bring a new name fills its column with nulls.
    """
    for i, name in enumerate(table.column_names):
        if name.startswith(("sensor:", "label:")) and table.column(i).null_count:
            table = table.set_column(i, name, pc.fill_null(table.column(i), False))
    return table


def index_table(records: pa.Table, priority: np.ndarray) -> tuple[pa.Table, Vocabulary]:
    """Deduplicated, flattened and sorted index rows of ``records``."""
    flat, vocabulary = flatten(dedupe(records, priority))
    return sort_rows(flat), vocabulary


# --- building --------------------------------------------------------------------------------


def _write_atomic(table: pa.Table, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    flat_stats = [
        c
        for c in table.column_names
        if c in _STAT_COLUMNS
        or c in ("xmin", "ymin", "xmax", "ymax", "cloud_max", "valid_min", "_row")
        or c.startswith(("sensor:", "cloud:", "valid:", "fraction:", "label:"))
    ]
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=ROW_GROUP_SIZE,
            compression="zstd",
            write_statistics=flat_stats,
        )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _with_metadata(table: pa.Table, info: Mapping[str, Any]) -> pa.Table:
    meta = dict(tile_record_arrow_schema().metadata or {})
    meta[_META_KEY] = json.dumps(info).encode()
    return table.replace_schema_metadata(meta)


def _valid_info(cube_path: str | Path, number: int, digest: str) -> IndexInfo | None:
    path = index_path(cube_path, number)
    if not path.is_file():
        return None
    info = _read_info(path)
    if info is None or info.version != number or info.parts_digest != digest:
        return None
    return info


def ensure_index(
    cube_path: str | Path,
    versions: Sequence[CatalogVersion],
    number: int,
    *,
    write: bool = True,
) -> IndexInfo:
    """The index of version ``number``, built (and written, if possible) when needed.

    Args:
        cube_path: The cube.
        versions: Every version (:func:`catalog.versions.load_versions`).
        number: The version to index.
        write: Write a built index to disk (atomic); when writing fails (read-only cube) the
            index is kept in memory and the failure logged.

    Returns:
        Where the index is and what it holds.
    """
    digest = _digest(parts_of_version(versions, number))
    info = _valid_info(cube_path, number, digest)
    if info is not None:
        return info
    base: IndexInfo | None = None
    for v in sorted((v for v in versions if v.number < number), key=lambda v: -v.number):
        if index_path(cube_path, v.number).is_file():
            base = _valid_info(cube_path, v.number, _digest(parts_of_version(versions, v.number)))
            if base is not None:
                break
    # Flatten only the rows added since the base index; the base's flat columns are reused.
    start = base.version if base is not None else 0
    pieces: list[pa.Table] = []
    priorities: list[np.ndarray] = []
    for v in versions:
        if start < v.number <= number and v.parts_added:
            rows = read_parts(cube_path, v.parts_added)
            pieces.append(rows)
            priorities.append(np.full(rows.num_rows, v.number, dtype=np.int64))
    schema = tile_record_arrow_schema()
    added = pa.concat_tables(pieces) if pieces else schema.empty_table()
    table, vocabulary = flatten(added)
    priority = np.concatenate(priorities) if priorities else np.zeros(0, dtype=np.int64)
    if base is not None and base.path is not None:
        old = pq.read_table(base.path).drop_columns(["_row"]).replace_schema_metadata(None)
        table = pa.concat_tables(
            [old, table.replace_schema_metadata(None)], promote_options="permissive"
        )
        priority = np.concatenate([np.zeros(old.num_rows, dtype=np.int64), priority])
        vocabulary = base.vocabulary.merged(vocabulary)
    table = sort_rows(dedupe(_fill_flags(table), priority))
    doc = {
        "format": INDEX_FORMAT,
        "version": number,
        "n_rows": table.num_rows,
        "parts_digest": digest,
        "vocabulary": vocabulary.to_dict(),
    }
    table = _with_metadata(table, doc)
    if write:
        final = index_path(cube_path, number)
        try:
            _write_atomic(table, final)
        except OSError as err:
            log.warning("cannot write the catalog index %s (%s); keeping it in memory", final, err)
        else:
            log.info("built catalog index %s (%d rows)", final.name, table.num_rows)
            return IndexInfo(final, number, table.num_rows, digest, vocabulary)
    return IndexInfo(None, number, table.num_rows, digest, vocabulary, table=table)
