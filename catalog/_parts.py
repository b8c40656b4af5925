"""Where the tile catalog lives inside a cube, and how its files are named.

::

    <cube>/catalog/parts/<run_id>-<shard_id>.parquet   one committed GeoParquet part per shard
    <cube>/catalog/parts/.<part>.<random>.tmp          a part being written (never read)
    <cube>/catalog/runs/<run_id>.json                  written when a build run finishes

Only names ending in ``.parquet`` and not starting with ``.`` are committed parts, so the glob
``<cube>/catalog/parts/*.parquet`` (DuckDB, pyarrow datasets) sees exactly the committed rows.
"""

from __future__ import annotations

import re
from pathlib import Path

from schemas.errors import InvalidInputError

__all__ = [
    "PART_SUFFIX",
    "TEMP_SUFFIX",
    "catalog_dir",
    "check_run_id",
    "check_shard_id",
    "parse_part_name",
    "part_name",
    "parts_dir",
    "runs_dir",
]

PART_SUFFIX = ".parquet"
TEMP_SUFFIX = ".tmp"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,63}$")


def catalog_dir(cube_path: str | Path) -> Path:
    """``<cube>/catalog``."""
    return Path(cube_path) / "catalog"


def parts_dir(cube_path: str | Path) -> Path:
    """``<cube>/catalog/parts``."""
    return catalog_dir(cube_path) / "parts"


def runs_dir(cube_path: str | Path) -> Path:
    """``<cube>/catalog/runs``."""
    return catalog_dir(cube_path) / "runs"


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe file-name part.

    Raises:
        InvalidInputError: Empty, too long, or with characters other than letters, digits,
            ``.``, ``_`` and ``-`` (or starting with one of the last three).
    """
    if not _RUN_ID.match(run_id):
        raise InvalidInputError(
            f"run id {run_id!r} cannot name a catalog file",
            fix="use letters, digits, '.', '_' and '-' (up to 128), starting with a letter/digit",
        )
    return run_id


def check_shard_id(shard_id: str) -> str:
    """Return ``shard_id`` if it is a safe file-name part without ``-`` (``s00042``).

    Raises:
        InvalidInputError: Empty, too long, or with characters other than letters, digits,
            ``.`` and ``_``.
    """
    if not _SHARD_ID.match(shard_id):
        raise InvalidInputError(
            f"shard id {shard_id!r} cannot name a catalog part",
            fix="use the grid's shard ids (e.g. 's00042'): letters, digits, '.', '_', no '-'",
        )
    return shard_id


def part_name(run_id: str, shard_id: str) -> str:
    """``<run_id>-<shard_id>.parquet`` (ids checked)."""
    return f"{check_run_id(run_id)}-{check_shard_id(shard_id)}{PART_SUFFIX}"


def parse_part_name(name: str) -> tuple[str, str] | None:
    """``(run_id, shard_id)`` of a committed part's file name, or ``None`` for any other file."""
    if name.startswith(".") or not name.endswith(PART_SUFFIX):
        return None
    run_id, sep, shard_id = name[: -len(PART_SUFFIX)].rpartition("-")
    if not sep or not _RUN_ID.match(run_id) or not _SHARD_ID.match(shard_id):
        return None
    return run_id, shard_id
