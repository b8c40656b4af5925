"""Label stage: CORINE, OSM and generic vector labels burnt into every tile of a shard.

Readers (one per recipe label source) follow :class:`pipelines.labels.base.LabelReader`;
:func:`label_tiles` runs them over a shard's tiles and summarises each raster
(:mod:`pipelines.labels.summary`). No Prefect import here.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter

from pipelines.grid import Tile
from pipelines.labels.base import LABEL_NODATA, LabelReader
from pipelines.labels.summary import LabelSummary, summarize
from schemas.recipe import CorineLabels, LabelSource, OsmLabels, VectorLabels

__all__ = [
    "LABEL_NODATA",
    "LabelReader",
    "LabelSummary",
    "TileLabel",
    "label_tiles",
    "open_reader",
    "source_from_json",
    "summarize",
]

_SOURCE_ADAPTER: TypeAdapter[LabelSource] = TypeAdapter(LabelSource)


def source_from_json(data: Mapping[str, Any]) -> LabelSource:
    """A label source from its ``model_dump(mode="json")`` (as stored in a build plan)."""
    return _SOURCE_ADAPTER.validate_python(dict(data))


#: A WGS84 ``(west, south, east, north)`` box.
BBox = tuple[float, float, float, float]


@functools.lru_cache(maxsize=8)
def _reader(kind: str, text: str, prefetch_bbox: BBox | None) -> LabelReader:
    source = source_from_json(json.loads(text))
    if isinstance(source, CorineLabels):
        from pipelines.labels.corine import CorineReader

        return CorineReader(source)
    if isinstance(source, OsmLabels):
        from pipelines.labels.osm import OsmReader

        # The OSM driver has no spatial index: parse the whole AOI once, not once per shard.
        return OsmReader(source, prefetch_bbox=prefetch_bbox)
    if isinstance(source, VectorLabels):
        from pipelines.labels.vector import VectorReader

        return VectorReader(source)
    raise TypeError(f"unknown label source kind {kind!r}")  # pragma: no cover


_READERS_LOCK = threading.Lock()


def open_reader(source: LabelSource, *, prefetch_bbox: BBox | None = None) -> LabelReader:
    """The reader of one label source (cached per process: shards of a build share it).

    Args:
        source: A recipe label source (paths resolved).
        prefetch_bbox: The build's AOI bounds in WGS84; readers of unindexed formats (OSM) read
            this area once and serve every shard from it.
    """
    text = json.dumps(source.model_dump(mode="json"), sort_keys=True)
    # One reader per source and process, even when the shard tasks of a threaded Dask worker
    # ask at once (lru_cache alone would let each thread build, and parse, its own).
    with _READERS_LOCK:
        return _reader(source.kind, text, prefetch_bbox)


@dataclass(frozen=True, eq=False)
class TileLabel:
    """One label source on one tile: the class raster and its summary.

    Attributes:
        raster: ``(y, x)`` uint8 class indexes at the label resolution, 255 = no data.
        summary: Class fractions, multi-labels, unlabeled share and flag.
    """

    raster: npt.NDArray[np.uint8]
    summary: LabelSummary


def label_tiles(
    sources: Sequence[LabelSource],
    tiles: Sequence[Tile],
    resolution_m: float,
    *,
    prefetch_bbox: BBox | None = None,
) -> dict[str, dict[str, TileLabel]]:
    """Rasterise and summarise every label source on every tile.

    Args:
        sources: The recipe's label sources (paths resolved).
        tiles: The tiles of one shard.
        resolution_m: Label pixel size (divides the tile size).
        prefetch_bbox: The build's AOI bounds in WGS84 (see :func:`open_reader`).

    Returns:
        Tile id -> source name -> :class:`TileLabel`.
    """
    out: dict[str, dict[str, TileLabel]] = {t.id: {} for t in tiles}
    for source in sources:
        reader = open_reader(source, prefetch_bbox=prefetch_bbox)
        rasters = reader.rasterize(tiles, resolution_m)
        for tile in tiles:
            raster = np.asarray(rasters[tile.id], dtype=np.uint8)
            expected = tile.shape(resolution_m)
            if raster.shape != expected:  # a reader bug, not bad input
                raise RuntimeError(
                    f"{source.name} reader gave {raster.shape} for tile {tile.id}, not {expected}"
                )
            out[tile.id][source.name] = TileLabel(
                raster,
                summarize(
                    raster,
                    reader.class_names,
                    reader.unlabeled_index,
                    threshold=source.multilabel_threshold,
                    max_unlabeled=source.max_unlabeled,
                ),
            )
    return out
