"""Generic vector labels: any vector file whose features carry a class attribute.

:class:`VectorReader` implements :class:`pipelines.labels.base.LabelReader` for a recipe's
``kind: vector`` source. Output per tile: dims ``(y, x)`` = ``Tile.shape(res)``, uint8, on the
tile's UTM grid; 0 = ``background`` (no feature), 1..254 = classes. There is no "outside the
source" for a vector file, so these rasters never hold
:data:`~pipelines.labels.base.LABEL_NODATA`.

Classes
    * With ``class_names``: the attribute value (compared as text; integral numbers as ``"3"``)
      is looked up in the list; class index = position + 1.
    * Without: the attribute holds the class index itself, an integer 1..254; the class names are
      then ``"background", "1", ..., "254"``.

    A feature whose value is not a class (unknown name, null, 0, out of range) raises
    :class:`~schemas.errors.InvalidInputError`; values are checked on the features read.

Burn order
    Features are burnt in ascending class index, file order within a class: where features
    overlap, **the higher class index wins**. Order ``class_names`` by priority accordingly.
    Pixels are burnt by centre unless ``all_touched`` (lines: GDAL's Bresenham walk).

Reads are bbox-filtered like every reader (:mod:`pipelines.labels._vector_io`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pipelines.grid import Tile
from pipelines.labels import _vector_io as vio
from pipelines.labels.base import LabelRasters
from schemas.errors import InvalidInputError
from schemas.recipe_labels import VectorLabels

__all__ = ["BACKGROUND", "MAX_CLASS_INDEX", "VectorReader"]

#: Name of class index 0.
BACKGROUND = "background"
#: Highest class index (255 is LABEL_NODATA).
MAX_CLASS_INDEX = 254
_MAX_QUOTED = 10


def _as_text(value: object) -> str | None:
    """Attribute value as class-name text: ``"x"`` -> ``"x"``, ``3``/``3.0`` -> ``"3"``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return str(value).strip()


def _as_index(value: object) -> int | None:
    """Attribute value as a class index 1..254, or ``None``."""
    text = _as_text(value)
    if text is None:
        return None
    try:
        index = int(text)
    except ValueError:
        return None
    return index if 1 <= index <= MAX_CLASS_INDEX else None


class VectorReader:
    """A generic vector label source of a recipe (see the module docstring for the rules).

    Args:
        source: The recipe's ``kind: vector`` entry (paths already resolved).

    Raises:
        NotFoundError: The file or the layer does not exist.
        InvalidInputError: No CRS, or ``class_field`` is missing (the message lists the fields).
    """

    def __init__(self, source: VectorLabels) -> None:
        self.source = source
        self._layer = vio.open_vector(source.path, source.layer)
        self._layer.require_field(source.class_field, "class_field")
        if source.class_names is not None:
            self._names: tuple[str, ...] = (BACKGROUND, *source.class_names)
            self._index: dict[str, int] | None = {
                name: i + 1 for i, name in enumerate(source.class_names)
            }
        else:
            self._names = (BACKGROUND, *(str(i) for i in range(1, MAX_CLASS_INDEX + 1)))
            self._index = None
        self._lock = threading.Lock()
        self.features_read = 0
        """Features read so far: a check that reads follow the tiles."""

    @property
    def class_names(self) -> tuple[str, ...]:
        """``("background", *class_names)``, or ``("background", "1", ..., "254")``."""
        return self._names

    @property
    def unlabeled_index(self) -> int | None:
        """``None``: background (0) is a class, not "unlabelled"."""
        return None

    def rasterize(self, tiles: Sequence[Tile], resolution_m: float) -> LabelRasters:
        """Class rasters for ``tiles`` at ``resolution_m``.

        Args:
            tiles: Tiles of any UTM zones (usually one shard).
            resolution_m: Label pixel size in metres; must divide the tile size.

        Returns:
            Tile id -> dims ``(y, x)`` uint8 class raster, 0 = background.

        Raises:
            InvalidInputError: A feature near the tiles has a value that is not a class, or the
                resolution does not divide the tile size.
        """
        for tile in tiles:
            tile.shape(resolution_m)
        feats = vio.read_features(self._layer, self.source.class_field, tiles, resolution_m)
        with self._lock:
            self.features_read += len(feats)
        classes = self._classes(feats.values)
        return vio.rasterize_tiles(
            feats, classes, tiles, resolution_m, all_touched=self.source.all_touched, fill=0
        )

    def _classes(self, values: npt.NDArray[np.object_]) -> npt.NDArray[np.uint8]:
        out = np.zeros(len(values), dtype=np.uint8)
        bad: set[str] = set()
        cache: dict[str | None, int | None] = {}
        for i, value in enumerate(values.tolist()):
            text = _as_text(value)
            if text not in cache:
                if self._index is not None:
                    cache[text] = None if text is None else self._index.get(text)
                else:
                    cache[text] = _as_index(value)
            index = cache[text]
            if index is None:
                bad.add(repr(value))
            else:
                out[i] = index
        if bad:
            shown = sorted(bad)
            quoted = ", ".join(shown[:_MAX_QUOTED])
            if len(shown) > _MAX_QUOTED:
                quoted += f" and {len(shown) - _MAX_QUOTED} more"
            fix = (
                "add them to labels[].class_names (or fix the features)"
                if self._index is not None
                else "store class indices 1..254 in the attribute, or list the attribute's "
                "values in labels[].class_names"
            )
            raise InvalidInputError(
                f"values that are not classes near the tiles: {quoted}",
                where=f"{self._layer.where}, attribute '{self.source.class_field}'",
                fix=fix,
            )
        return out
