"""What a cube's catalog already holds, as an incremental build needs it.

:func:`cube_state` reads, without touching any row data it does not need:

* the latest finished catalog version and its *current* rows (one per record id: the row of
  the newest version that committed the id), each with the inputs digest stored with its part
  (:data:`INPUTS_METADATA_KEY`, written by :meth:`catalog.writer.CatalogWriter.commit_shard`);
* the first free shard index (one past the highest index any finished version uses);
* the *pending* parts: committed by a run that never finished (killed, or failed midway). A
  rerun of the same plan skips the pending shards whose digests match its own plan and sets
  the others aside with :meth:`CubeState.set_aside` (moved to ``catalog/set-aside/``, kept for
  inspection, never read), so a version never adopts rows that the new plan does not produce.

Digests are stored in each part's Parquet key-value metadata, so reading them costs one footer
per part.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from catalog._parts import catalog_dir, parse_part_name, parts_dir
from catalog.versions import load_versions

__all__ = ["INPUTS_METADATA_KEY", "CubeState", "PartInputs", "cube_state", "read_part_inputs"]

log = logging.getLogger(__name__)

#: Parquet metadata key of a part's inputs: JSON ``[[tile_id, period_id, digest], ...]``.
INPUTS_METADATA_KEY = b"eoforge:inputs"
SET_ASIDE_DIR = "set-aside"


@dataclass(frozen=True)
class PartInputs:
    """The rows of one committed part and their inputs digests.

    Attributes:
        path: The part file.
        shard_id: Its shard.
        rows: ``{(tile_id, period_id): digest}``; a digest is ``None`` for rows written
            without one.
    """

    path: Path
    shard_id: str
    rows: dict[tuple[str, str], str | None]


def read_part_inputs(path: Path) -> PartInputs:
    """The rows and digests of one part (footer metadata; rows read only for old parts)."""
    parsed = parse_part_name(path.name)
    shard_id = parsed[1] if parsed else path.stem
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(INPUTS_METADATA_KEY)
    if raw is not None:
        rows = {(str(t), str(p)): (str(d) if d else None) for t, p, d in json.loads(raw)}
    else:
        table = pq.read_table(path, columns=["tile_id", "period_id"])
        rows = {
            (str(t), str(p)): None
            for t, p in zip(
                table.column("tile_id").to_pylist(),
                table.column("period_id").to_pylist(),
                strict=True,
            )
        }
    return PartInputs(path, shard_id, rows)


def _shard_index(shard_id: str) -> int:
    return int(shard_id[1:]) if shard_id[1:].isdigit() else -1


@dataclass
class CubeState:
    """The catalog state an incremental build starts from (module docstring).

    Attributes:
        cube: The cube directory.
        version: Latest finished version (``None``: none yet).
        current: ``{(tile_id, period_id): digest}`` of the version's current rows.
        next_shard_index: First shard index no finished version uses.
        pending: Parts of unfinished runs, by shard id.
    """

    cube: Path
    version: int | None
    current: dict[tuple[str, str], str | None] = field(default_factory=dict)
    next_shard_index: int = 0
    pending: dict[str, PartInputs] = field(default_factory=dict)

    def set_aside(self, shard_id: str, reason: str) -> Path:
        """Move a pending part out of the catalog (kept in ``catalog/set-aside/``).

        Returns:
            Its new path.
        """
        part = self.pending.pop(shard_id)
        target_dir = catalog_dir(self.cube) / SET_ASIDE_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / part.path.name
        part.path.replace(target)
        log.warning(
            "set aside %s, committed by an unfinished run: %s (kept in %s)",
            part.path.name,
            reason,
            target_dir,
        )
        return target


def cube_state(cube: str | Path) -> CubeState:
    """Read the state of the cube's catalog (module docstring); empty for a new cube."""
    cube = Path(cube)
    directory = parts_dir(cube)
    versions = load_versions(cube) if directory.is_dir() else []
    state = CubeState(cube=cube, version=versions[-1].number if versions else None)
    versioned: set[str] = set()
    for v in versions:  # oldest first: a later version's row of an id replaces the earlier one
        for name in v.parts_added:
            versioned.add(name)
            path = directory / name
            if not path.is_file():
                continue
            part = read_part_inputs(path)
            state.current.update(part.rows)
            state.next_shard_index = max(state.next_shard_index, _shard_index(part.shard_id) + 1)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            parsed = parse_part_name(path.name)
            if parsed is None or path.name in versioned:
                continue
            state.pending[parsed[1]] = read_part_inputs(path)
    return state
