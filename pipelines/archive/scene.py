"""What every scene writer returns, and the mask arithmetic the optical writers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.archive.classes import CLASSES
from pipelines.archive.render import CLOUD_EDGE, CLOUD_THICK, N_CLASSES, OUTSIDE, Grid

__all__ = ["SceneMasks", "SceneResult", "class_values", "masks_from_counts", "rel"]


@dataclass(frozen=True)
class SceneMasks:
    """Per-pixel truth of one scene on one grid (all dims ``(y, x)``, bool, no nodata).

    Attributes:
        valid: Pixel lies fully inside the swath.
        cloud: Any fine cell of the pixel is cloud (thick or edge).
        thick: Any fine cell is thick cloud.
        shadow: Any fine cell is cloud shadow, and the pixel is not cloud.
        water: More than half the fine cells are a water class.
        majority: Class id (1..N) with most fine cells, dims ``(y, x)``, uint8.
    """

    valid: np.ndarray
    cloud: np.ndarray
    thick: np.ndarray
    shadow: np.ndarray
    water: np.ndarray
    majority: np.ndarray

    def fraction(self, mask: np.ndarray) -> float:
        """Fraction of valid pixels where ``mask`` is true (0 when nothing is valid)."""
        n = int(self.valid.sum())
        return float((mask & self.valid).sum()) / n if n else 0.0


@dataclass
class SceneResult:
    """A written scene: its assets, truth masks and values the STAC item needs.

    Attributes:
        assets: Asset key -> dict with ``href`` (relative to the archive root), ``grid``
            (:class:`Grid`) and any extra fields the item builder copies.
        mask_grid: Grid of the truth masks.
        masks: Truth masks on ``mask_grid`` (``None`` for radar).
        stats: Scene statistics in percent (cloud, shadow, water, ...).
        extra: Sensor-specific values for the item (product URI, datatake id, ...).
        item: A ready STAC item (EnMAP), else ``None`` (built by :mod:`stac_items`).
    """

    assets: dict[str, dict[str, Any]]
    mask_grid: Grid
    masks: SceneMasks | None
    stats: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    item: dict[str, Any] | None = None


def masks_from_counts(counts: np.ndarray) -> SceneMasks:
    """Derive the truth masks of a grid from its label counts (dims ``(y, x, label)``)."""
    n = int(counts[0, 0].sum()) if counts.size else 1
    cloud_n = counts[..., CLOUD_THICK].astype(np.int32) + counts[..., CLOUD_EDGE]
    per_class = counts[..., :N_CLASSES].astype(np.int32) + counts[..., N_CLASSES : 2 * N_CLASSES]
    shadow_n = counts[..., N_CLASSES : 2 * N_CLASSES].sum(axis=-1, dtype=np.int32)
    water_ids = [c.id - 1 for c in CLASSES if c.water]
    cloud = cloud_n > 0
    return SceneMasks(
        valid=counts[..., OUTSIDE] == 0,
        cloud=cloud,
        thick=counts[..., CLOUD_THICK] > 0,
        shadow=(shadow_n > 0) & ~cloud,
        water=per_class[..., water_ids].sum(axis=-1) * 2 > n,
        majority=(np.argmax(per_class, axis=-1) + 1).astype(np.uint8),
    )


def class_values(values: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """Stack per-class values of some bands: dims ``(class, band)``, float64."""
    return np.stack([values[k] for k in keys], axis=1)


def rel(path: Path, root: Path) -> str:
    """Archive-relative POSIX path of a file."""
    return path.relative_to(root).as_posix()
