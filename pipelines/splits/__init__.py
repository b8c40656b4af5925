"""Leakage-free train/val/test assignment of grid tiles, and a report on the result.

Every tile's split is a pure function of its grid position, the recipe's ``split`` section and
the grid's tile size (deterministic across runs, machines and ``PYTHONHASHSEED``; independent of
the other tiles of a build). Methods ``block`` and ``ring`` keep every test tile off every train
tile (test tiles that touch train become val); ``random`` does not, and :func:`split_warnings`
says so. See :mod:`pipelines.splits.assign` for the rules.
"""

from pipelines.splits._base import SPLITS, Split
from pipelines.splits._neighbours import SEAM_MARGIN_M
from pipelines.splits.assign import assign_split, assign_splits, ring_cell_bounds, split_warnings
from pipelines.splits.leakage import TOUCH_DISTANCE_M, LeakageReport, leakage_report

__all__ = [
    "SEAM_MARGIN_M",
    "SPLITS",
    "TOUCH_DISTANCE_M",
    "LeakageReport",
    "Split",
    "assign_split",
    "assign_splits",
    "leakage_report",
    "ring_cell_bounds",
    "split_warnings",
]
