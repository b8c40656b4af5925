"""Per-tile label statistics: class fractions, multi-labels, unlabeled share and the reBEN flag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.labels.base import LABEL_NODATA

__all__ = ["LabelSummary", "summarize"]

#: Fractions are rounded to this many decimals (1e-6 is far below one pixel of a tile).
_DECIMALS = 6


@dataclass(frozen=True, eq=False)
class LabelSummary:
    """Statistics of one tile's class raster.

    Attributes:
        fractions: Class name -> share of the labelled pixels (neither no-data nor
            ``UNLABELED``); classes absent from the tile are left out. Empty when nothing is
            labelled.
        multilabel: ``(class,)`` uint8 over every class name: 1 where the class's share is above
            the threshold, else 0 (``UNLABELED`` is always 0).
        multilabels: The names where ``multilabel`` is 1, in class-index order.
        unlabeled_fraction: Share of all pixels that are no-data or ``UNLABELED``.
        flagged: ``unlabeled_fraction`` reaches the recipe's ``max_unlabeled``.
    """

    fractions: dict[str, float]
    multilabel: npt.NDArray[np.uint8]
    multilabels: tuple[str, ...]
    unlabeled_fraction: float
    flagged: bool


def summarize(
    raster: npt.NDArray[np.uint8],
    class_names: Sequence[str],
    unlabeled_index: int | None,
    *,
    threshold: float = 0.0,
    max_unlabeled: float | None = None,
) -> LabelSummary:
    """Summarise one ``(y, x)`` uint8 class raster (255 = no data).

    Args:
        raster: Class indexes; values outside ``class_names`` other than 255 are an error.
        class_names: Names of indexes ``0..n-1``.
        unlabeled_index: Index meaning "not labelled" (counted with no-data), or ``None``.
        threshold: A class is a multi-label when its share of labelled pixels is above this
            (0: any pixel).
        max_unlabeled: Flag the tile when the unlabeled share is at least this.

    Raises:
        ValueError: The raster holds an index with no class name.
    """
    n = len(class_names)
    counts = np.bincount(raster.ravel(), minlength=256)
    if counts[n:LABEL_NODATA].any() or counts[LABEL_NODATA + 1 :].any():
        bad = sorted(int(v) for v in np.flatnonzero(counts[n:]) + n if v != LABEL_NODATA)
        raise ValueError(f"label raster holds class indexes {bad} beyond the {n} classes")
    total = int(raster.size)
    class_counts = counts[:n].astype(np.int64)
    unlabeled = int(counts[LABEL_NODATA])
    if unlabeled_index is not None:
        unlabeled += int(class_counts[unlabeled_index])
        class_counts[unlabeled_index] = 0
    labelled = int(class_counts.sum())
    fractions: dict[str, float] = {}
    multilabel = np.zeros(n, dtype=np.uint8)
    if labelled:
        shares = class_counts / labelled
        for i in (int(v) for v in np.flatnonzero(class_counts)):
            fractions[class_names[i]] = round(float(shares[i]), _DECIMALS)
            if shares[i] > threshold:
                multilabel[i] = 1
    unlabeled_fraction = round(unlabeled / total, _DECIMALS) if total else 1.0
    return LabelSummary(
        fractions=fractions,
        multilabel=multilabel,
        multilabels=tuple(class_names[int(i)] for i in np.flatnonzero(multilabel)),
        unlabeled_fraction=unlabeled_fraction,
        flagged=max_unlabeled is not None and unlabeled_fraction >= max_unlabeled,
    )
