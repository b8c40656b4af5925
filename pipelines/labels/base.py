"""What every label reader gives the build: class rasters per tile on the tile's own grid.

A reader turns one recipe label source into ``uint8`` class rasters, one per tile, on the tile's
UTM grid at the label resolution (``Tile.shape(res)`` / ``Tile.transform(res)``):

* dims ``(y, x)``, north-up, pixel ``(0, 0)`` at the tile's top-left corner;
* value ``i`` is ``class_names[i]``; :data:`LABEL_NODATA` (255) = no data (outside the source);
* index 0 is ``UNLABELED`` (CORINE) or ``background`` (OSM, generic vectors);
* features are burnt by pixel centre unless the source says ``all_touched``.

Readers read only what the tiles they are given touch (bbox-filtered reads), so memory follows
the shard, not the size of the source file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipelines.grid import Tile

__all__ = ["LABEL_NODATA", "LabelRasters", "LabelReader"]

#: Fill of every label raster: the pixel is outside what the source covers.
LABEL_NODATA = 255

#: Tile id -> ``(y, x)`` uint8 class raster.
LabelRasters = Mapping[str, npt.NDArray[np.uint8]]


class LabelReader(Protocol):
    """One label source, ready to rasterise tiles."""

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names; raster value ``i`` is ``class_names[i]`` (at most 255 names)."""
        ...

    @property
    def unlabeled_index(self) -> int | None:
        """Class index meaning "not labelled" (CORINE's ``UNLABELED``), or ``None``."""
        ...

    def rasterize(self, tiles: Sequence[Tile], resolution_m: float) -> LabelRasters:
        """Class rasters for ``tiles`` at ``resolution_m`` (see the module docstring)."""
        ...
