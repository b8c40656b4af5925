"""Commit tile records to the catalog, one GeoParquet part per shard, atomically.

A shard's records become visible in one step, only after its pixels are in the cube: the part
is written to a hidden temporary file in the parts directory, flushed to disk (``fsync``), and
renamed onto its final name with :func:`os.replace` (atomic on POSIX and Windows local file
systems), after which the directory entry is flushed too. A reader lists or globs only
committed names (``*.parquet``), so a crash at any moment leaves either no part or the whole
part, and a tile that is not in the catalog does not exist for readers. Names and layout:
:mod:`catalog._parts`.

Resuming: :func:`committed_shards` tells a rerun which shards to skip. A leftover temporary
file of a crashed attempt is removed when that shard is committed again; others can be removed
with :meth:`CatalogWriter.remove_stale_temp_files`.

Runs: :meth:`CatalogWriter.finish_run` writes ``catalog/runs/<run_id>.json`` (the run's parts,
shards, row count and a caller summary) when a build ends, then records the next catalog version
(:mod:`catalog.versions`) and builds its query index (:mod:`catalog._index`; a cache that readers
rebuild if it is missing, so a failure to build it is logged, not raised).

Local file systems only; object stores need a conditional-put commit (a later change).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from catalog._index import ensure_index
from catalog._parts import (
    PART_SUFFIX,
    TEMP_SUFFIX,
    check_run_id,
    check_shard_id,
    parse_part_name,
    part_name,
    parts_dir,
    runs_dir,
)
from catalog.state import INPUTS_METADATA_KEY
from catalog.versions import load_versions, record_version
from schemas.errors import ConflictError, InvalidInputError
from schemas.tile import TileRecord, tile_record_arrow_schema

__all__ = [
    "CatalogWriter",
    "committed_parts",
    "committed_shards",
    "finished_runs",
    "read_records",
]

log = logging.getLogger(__name__)

#: Parquet compression of catalog parts.
_COMPRESSION = "zstd"


def _fsync_dir(path: Path) -> None:
    # Flush the directory entry of a rename; not possible (nor needed) on Windows.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(final: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync the file, rename it onto ``final``, fsync the directory."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(final)  # os.replace: atomic
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(final.parent)


def committed_parts(cube_path: str | Path) -> dict[str, Path]:
    """Committed parts by shard id (temporary and foreign files ignored).

    Raises:
        ConflictError: Two runs committed the same shard (the catalog would hold its rows twice).
    """
    directory = parts_dir(cube_path)
    if not directory.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        parsed = parse_part_name(path.name)
        if parsed is None:
            continue
        shard_id = parsed[1]
        if shard_id in found:
            raise ConflictError(
                f"shard {shard_id} is committed twice ({found[shard_id].name}, {path.name})",
                where=str(directory),
                fix="delete the part of the run that should not count",
            )
        found[shard_id] = path
    return found


def committed_shards(cube_path: str | Path) -> set[str]:
    """Ids of the shards whose records are committed (a rerun skips them)."""
    return set(committed_parts(cube_path))


def read_records(cube_path: str | Path) -> pa.Table:
    """All committed catalog rows, sorted by cube position then id.

    Returns:
        A table with :func:`schemas.tile.tile_record_arrow_schema` (GeoParquet ``geo``
        metadata included); empty when nothing is committed.
    """
    schema = tile_record_arrow_schema()
    tables = [pq.read_table(p, schema=schema) for p in committed_parts(cube_path).values()]
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    return table.sort_by([("cube_position", "ascending"), ("id", "ascending")])


def finished_runs(cube_path: str | Path) -> list[str]:
    """Ids of the runs that called :meth:`CatalogWriter.finish_run`, sorted."""
    directory = runs_dir(cube_path)
    if not directory.is_dir():
        return []
    return sorted(
        p.name[: -len(".json")]
        for p in directory.iterdir()
        if p.name.endswith(".json") and not p.name.startswith(".")
    )


class CatalogWriter:
    """Commits shards' tile records to the catalog of the cube at ``cube_path``.

    Args:
        cube_path: The cube directory; the catalog lives in ``<cube>/catalog``.
    """

    def __init__(self, cube_path: str | Path) -> None:
        self.cube_path = Path(cube_path)
        self.parts = parts_dir(cube_path)
        self.runs = runs_dir(cube_path)

    def commit_shard(
        self,
        shard_id: str,
        records: Sequence[TileRecord],
        run_id: str,
        inputs: Mapping[tuple[str, str], str] | None = None,
    ) -> Path:
        """Make a shard's records visible, all at once (module docstring).

        Committing the same shard again in the same run replaces the part (a retried task);
        an empty ``records`` still marks the shard committed.

        Args:
            shard_id: The shard (``pipelines.grid.Shard.id``), which every record must name.
            records: The shard's rows, one per tile and period.
            run_id: The build run.
            inputs: ``{(tile_id, period_id): inputs digest}`` of the shard's tiles
                (``pipelines.increment``), stored in the part's Parquet metadata under
                :data:`catalog.state.INPUTS_METADATA_KEY`; what the next build compares with.

        Returns:
            The committed part's path.

        Raises:
            InvalidInputError: Bad ids, a record of another shard, or a record id given twice.
            ConflictError: Another run has committed this shard.
        """
        check_shard_id(shard_id)
        check_run_id(run_id)
        wrong = sorted({r.shard_id for r in records} - {shard_id})
        if wrong:
            raise InvalidInputError(
                f"records of shards {wrong} given to commit shard {shard_id}",
                fix="commit each shard's records with its own shard id",
            )
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise InvalidInputError(f"records {dupes} are given twice", where=f"shard {shard_id}")
        final = self.parts / part_name(run_id, shard_id)
        existing = committed_parts(self.cube_path).get(shard_id)
        if existing is not None and existing != final:
            raise ConflictError(
                f"shard {shard_id} is already committed by another run ({existing.name})",
                where=str(self.parts),
                fix="skip committed shards (committed_shards) or write to new shard positions",
            )
        self.parts.mkdir(parents=True, exist_ok=True)
        self._remove_temp_files_of(shard_id)
        rows = sorted(records, key=lambda r: (r.cube_position, r.id))
        table = pa.Table.from_pylist(
            [r.to_arrow_row() for r in rows], schema=tile_record_arrow_schema()
        )
        if inputs:
            listed = json.dumps(sorted([t, p, d] for (t, p), d in inputs.items()))
            meta = dict(table.schema.metadata or {})
            meta[INPUTS_METADATA_KEY] = listed.encode()
            table = table.replace_schema_metadata(meta)
        _atomic_write(final, lambda tmp: pq.write_table(table, tmp, compression=_COMPRESSION))
        log.info("committed shard %s: %d records in %s", shard_id, len(rows), final.name)
        return final

    def _remove_temp_files_of(self, shard_id: str) -> None:
        # Only the task that owns the shard commits it, so a temporary file for this shard is a
        # leftover of a crashed attempt.
        for path in self.parts.glob(f".*-{shard_id}{PART_SUFFIX}.*{TEMP_SUFFIX}"):
            log.info("removing leftover temporary catalog file %s", path.name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> list[Path]:
        """Delete temporary part/run files not modified for ``older_than_s`` seconds.

        Call it when no shard task can still be writing (e.g. before a build starts).

        Returns:
            The removed paths.
        """
        removed: list[Path] = []
        cutoff = time.time() - older_than_s
        for directory in (self.parts, self.runs):
            if not directory.is_dir():
                continue
            for path in directory.glob(f".*{TEMP_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime <= cutoff:
                        path.unlink()
                        removed.append(path)
        return sorted(removed)

    def finish_run(self, run_id: str, summary: Mapping[str, Any]) -> Path:
        """Record the end of a build run in ``catalog/runs/<run_id>.json`` (atomically).

        Args:
            run_id: The run.
            summary: JSON-able facts the caller wants kept (recipe hash, counts, timings...).

        Then the run becomes the next catalog version (every part committed by now, see
        :func:`catalog.versions.record_version`), and that version's query index is built.

        Returns:
            The run file's path. It holds ``run_id``, the run's ``parts`` and ``shards``
            (sorted), ``n_records`` and ``summary``.

        Raises:
            InvalidInputError: A bad run id, or a summary that is not JSON-able.
            ConflictError: The catalog's version files are damaged.
        """
        check_run_id(run_id)
        mine = {
            shard: path
            for shard, path in committed_parts(self.cube_path).items()
            if parse_part_name(path.name) == (run_id, shard)
        }
        document = {
            "run_id": run_id,
            "parts": sorted(p.name for p in mine.values()),
            "shards": sorted(mine),
            "n_records": sum(pq.ParquetFile(p).metadata.num_rows for p in mine.values()),
            "summary": dict(summary),
        }
        try:
            text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
        except (TypeError, ValueError) as err:
            raise InvalidInputError(
                f"the run summary is not JSON-able ({err})",
                where=f"run {run_id}",
                fix="pass plain numbers, strings, lists and dicts",
            ) from err
        self.runs.mkdir(parents=True, exist_ok=True)
        final = self.runs / f"{run_id}.json"
        _atomic_write(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        version = record_version(self.cube_path, run_id)
        log.info("run %s finished: catalog version %d", run_id, version.number)
        try:
            ensure_index(self.cube_path, load_versions(self.cube_path), version.number)
        except Exception:
            # The index is a cache: readers rebuild it when it is missing.
            log.warning(
                "could not build the query index of version %d", version.number, exc_info=True
            )
        return final
