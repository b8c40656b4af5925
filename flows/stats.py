"""Wiring of the dataset statistics: which cube positions count, then :mod:`pipelines.stats`.

The pixel math lives in :func:`pipelines.stats.cube_statistics`; this module only reads the
catalog rows (``catalog.writer.read_records``), keeps the current row of every id (the one at the
highest cube position: a rebuilt tile is appended, so its old row is superseded) and writes the
result: ``<cube>/stats.json`` and the root attribute ``eoforge_stats``. The caller consolidates
the Zarr metadata afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from catalog.writer import read_records
from pipelines.stats import cube_statistics, record_stats

__all__ = ["current_positions", "update_cube_stats"]


def current_positions(cube: str | Path) -> dict[int, str]:
    """Cube position -> split of every current catalog row (one per ``id``, highest position).

    Returns:
        Sorted by position; the split is ``""`` where none is assigned.
    """
    table = read_records(cube).select(["id", "cube_position", "split"])
    best: dict[str, tuple[int, str]] = {}
    for row in table.to_pylist():
        position = int(row["cube_position"])
        known = best.get(row["id"])
        if known is None or position > known[0]:
            best[row["id"]] = (position, row["split"] or "")
    return dict(sorted(best.values()))


def update_cube_stats(cube: str | Path) -> dict[str, Any]:
    """Compute the statistics of the current rows, write ``stats.json`` and the root attribute.

    Returns:
        The statistics (:func:`pipelines.stats.cube_statistics`).
    """
    positions = current_positions(cube)
    group = zarr.open_group(str(cube), mode="r+", use_consolidated=False)
    stats = cube_statistics(group, positions)
    record_stats(group, cube, stats)
    return stats
