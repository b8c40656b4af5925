"""Catalog versions: every finished build run is a version, numbered 1..N in finish order.

::

    <cube>/catalog/versions/<NNNNNNNN>.json   one file per version (8-digit number)

A version is a snapshot: version ``N`` holds every part committed when run ``N`` finished (its
own parts, those of earlier versions, and those of interrupted runs it resumed). Each version
file stores only the parts added since the version before it, so version ``N`` is the union of
the ``parts_added`` of versions ``1..N``. Rows of a tile id committed again by a later version
supersede the earlier row in that version and after (append-only cube: the later version points
the id at its new position; older versions keep the old one).

Order is recorded, not inferred: :func:`record_version` (called by
:meth:`catalog.writer.CatalogWriter.finish_run`) claims the next number with an exclusive
create (``os.link`` of a fully written temporary file), so two runs finishing at the same moment
get distinct numbers and a reader never sees half a version file.

Runs that finished without a version file (catalogs written before versions existed, or a crash
between the run file and the version file) are adopted after the recorded versions, in run-id
order (run ids start with their UTC start time); each adopted run adds the parts whose run id
sorts at or before its own. Readers adopt them in memory; the next ``finish_run`` writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catalog._parts import TEMP_SUFFIX, catalog_dir, parse_part_name, parts_dir, runs_dir
from schemas.errors import ConflictError, InvalidInputError

__all__ = [
    "CatalogVersion",
    "committed_part_names",
    "load_versions",
    "parts_of_version",
    "record_version",
    "select_version",
    "versions_dir",
]

#: Format of the version files.
VERSION_FILE_FORMAT = 1
_VERSION_NAME = re.compile(r"^(\d{8})\.json$")
#: Committed part names (:func:`catalog._parts.parse_part_name` accepts exactly these).
_PART_NAME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}-[A-Za-z0-9][A-Za-z0-9_.]{0,63}\.parquet\Z"
)
_MAX_ATTEMPTS = 100


def versions_dir(cube_path: str | Path) -> Path:
    """``<cube>/catalog/versions``."""
    return catalog_dir(cube_path) / "versions"


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    """One catalog version: the state after a build run finished.

    Attributes:
        number: 1..N in finish order.
        run_id: The build run whose finish made this version.
        finished_at: When the version was recorded (UTC); ``None`` for an adopted run.
        parts_added: Part file names this version added to the one before it (sorted).
        rows_added: Rows in those parts.
        recorded: ``False`` when the run finished without a version file and is numbered in
            memory (module docstring); the next finishing build records it.
    """

    number: int
    run_id: str
    finished_at: datetime | None
    parts_added: tuple[str, ...]
    rows_added: int
    recorded: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (part names left out, their count kept)."""
        return {
            "version": self.number,
            "run_id": self.run_id,
            "finished_at": None if self.finished_at is None else _iso(self.finished_at),
            "parts_added": len(self.parts_added),
            "rows_added": self.rows_added,
            "recorded": self.recorded,
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def committed_part_names(cube_path: str | Path) -> list[str]:
    """Names of committed part files (sorted), without checking for double commits."""
    directory = parts_dir(cube_path)
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        names = [e.name for e in entries]
    # One regex per name: the names parse_part_name accepts (tens of thousands per open).
    return sorted(filter(_PART_NAME.match, names))


def _read_version_file(path: Path) -> CatalogVersion:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        finished = doc.get("finished_at")
        return CatalogVersion(
            number=int(doc["version"]),
            run_id=str(doc["run_id"]),
            finished_at=None if finished is None else datetime.fromisoformat(finished),
            parts_added=tuple(sorted(str(p) for p in doc["parts_added"])),
            rows_added=int(doc.get("rows_added", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConflictError(
            f"the catalog version file is unreadable ({err})",
            where=str(path),
            fix="restore it from a backup, or delete it and every later version file",
        ) from err


def _recorded_versions(cube_path: str | Path) -> list[CatalogVersion]:
    directory = versions_dir(cube_path)
    if not directory.is_dir():
        return []
    found: list[CatalogVersion] = []
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if _VERSION_NAME.match(e.name))
    for name in names:
        version = _read_version_file(directory / name)
        if version.number != int(name[:8]):
            raise ConflictError(
                f"version file {name} says it is version {version.number}",
                where=str(directory),
                fix="rename or delete the file",
            )
        found.append(version)
    return found


def _finished_run_ids(cube_path: str | Path) -> list[str]:
    directory = runs_dir(cube_path)
    if not directory.is_dir():
        return []
    with os.scandir(directory) as entries:
        return sorted(
            e.name[: -len(".json")]
            for e in entries
            if e.name.endswith(".json") and not e.name.startswith(".")
        )


def _rows_in(cube_path: str | Path, names: Iterable[str]) -> int:
    import pyarrow.parquet as pq

    directory = parts_dir(cube_path)
    total = 0
    for name in names:
        with contextlib.suppress(OSError):
            total += pq.ParquetFile(directory / name).metadata.num_rows
    return total


def _adopted(
    cube_path: str | Path,
    recorded: Sequence[CatalogVersion],
    exclude: str | None = None,
    on_disk: Sequence[str] | None = None,
) -> list[CatalogVersion]:
    """Finished runs without a version file, numbered after ``recorded`` (module docstring)."""
    have = {v.run_id for v in recorded}
    orphans = [r for r in _finished_run_ids(cube_path) if r not in have and r != exclude]
    if not orphans:
        return []
    known = {p for v in recorded for p in v.parts_added}
    names = list(on_disk) if on_disk is not None else committed_part_names(cube_path)
    number = recorded[-1].number if recorded else 0
    adopted: list[CatalogVersion] = []
    for run_id in orphans:
        added = []
        for name in names:
            parsed = parse_part_name(name)
            if name not in known and parsed is not None and parsed[0] <= run_id:
                added.append(name)
        known.update(added)
        number += 1
        adopted.append(
            CatalogVersion(
                number=number,
                run_id=run_id,
                finished_at=None,
                parts_added=tuple(added),
                rows_added=_rows_in(cube_path, added),
                recorded=False,
            )
        )
    return adopted


def load_versions(cube_path: str | Path) -> list[CatalogVersion]:
    """Every version of the catalog, oldest first (recorded ones, then adopted runs).

    Raises:
        ConflictError: A version file is unreadable or misnamed.
    """
    recorded = _recorded_versions(cube_path)
    return recorded + _adopted(cube_path, recorded)


def select_version(versions: Sequence[CatalogVersion], number: int) -> CatalogVersion:
    """The version numbered ``number``.

    Raises:
        InvalidInputError: No such version (the message names the ones there are).
    """
    for v in versions:
        if v.number == number:
            return v
    if not versions:
        known = "no finished version yet"
    elif len(versions) == 1:
        known = f"only version {versions[0].number}"
    else:
        known = f"versions {versions[0].number}..{versions[-1].number}"
    raise InvalidInputError(
        f"catalog version {number} does not exist (the catalog has {known})",
        where="version",
        fix="pick one of the versions listed by TileCatalog.versions(), or leave the version "
        "out for the latest rows",
    )


def parts_of_version(versions: Sequence[CatalogVersion], number: int) -> list[str]:
    """Part names visible in version ``number`` (the union of ``parts_added`` of 1..number)."""
    select_version(versions, number)
    seen: dict[str, None] = {}
    for v in versions:
        if v.number <= number:
            seen.update(dict.fromkeys(v.parts_added))
    return sorted(seen)


def _write_exclusive(final: Path, text: str) -> bool:
    """Create ``final`` with ``text`` only if it does not exist; ``False`` if it does."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)  # fails if final exists: the exclusive claim of the number
        except FileExistsError:
            return False
        except OSError:
            # A file system without hard links: a racy but still atomic fallback.
            if final.exists():
                return False
            tmp.replace(final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if os.name == "posix":
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def _document(version: CatalogVersion) -> str:
    doc = {
        "format": VERSION_FILE_FORMAT,
        "version": version.number,
        "run_id": version.run_id,
        "finished_at": None if version.finished_at is None else _iso(version.finished_at),
        "parts_added": list(version.parts_added),
        "rows_added": version.rows_added,
    }
    return json.dumps(doc, indent=1) + "\n"


def record_version(cube_path: str | Path, run_id: str) -> CatalogVersion:
    """Record the end of run ``run_id`` as the next version (module docstring).

    Finished runs without a version file are recorded first, in run-id order. A run that is
    already a version and has committed nothing since keeps its version (an idempotent retry).

    Returns:
        The version of ``run_id``.

    Raises:
        ConflictError: A version file is unreadable, or the number could not be claimed.
    """
    directory = versions_dir(cube_path)
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(_MAX_ATTEMPTS):
        recorded = _recorded_versions(cube_path)
        on_disk = committed_part_names(cube_path)
        adopted = _adopted(cube_path, recorded, exclude=run_id, on_disk=on_disk)
        if adopted:
            first = adopted[0]
            _write_exclusive(directory / f"{first.number:08d}.json", _document(first))
            continue  # re-read: another writer may have claimed the number
        known = {p for v in recorded for p in v.parts_added}
        added = tuple(p for p in on_disk if p not in known)
        mine = [v for v in recorded if v.run_id == run_id]
        if mine and not added:
            return mine[-1]
        version = CatalogVersion(
            number=(recorded[-1].number if recorded else 0) + 1,
            run_id=run_id,
            finished_at=datetime.now(UTC),
            parts_added=added,
            rows_added=_rows_in(cube_path, added),
        )
        if _write_exclusive(directory / f"{version.number:08d}.json", _document(version)):
            return version
    raise ConflictError(
        f"could not claim a catalog version number for run {run_id} after {_MAX_ATTEMPTS} tries",
        where=str(directory),
        fix="check that no stray process keeps creating version files, then finish the run again",
    )
