"""In-memory stacks that travel between the per-tile build stages inside one shard task.

Stages and what they hand on (all numpy, computed per tile inside a shard task on a Dask worker;
nothing here crosses a Prefect task boundary, which passes only tile ids and URIs):

1. ``pipelines.load`` -> :class:`LoadedStack`: every scene of one sensor warped onto one tile grid,
   data in physical units plus the raw QA layers and the source-footprint validity.
2. ``pipelines.masks`` -> :class:`SceneStack`: the QA layers reduced to one ``MaskBit`` bitmask.
3. ``pipelines.temporal`` -> :class:`PeriodStack`: one period's planes (best / composite / series)
   with the item ids and acquisition times that made every plane.
4. ``pipelines.coregister`` estimates residual shifts between PeriodStacks of different sensors.
5. ``pipelines.write`` stores PeriodStacks in the cube (layout in :mod:`schemas.cube`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from affine import Affine

__all__ = ["LoadedStack", "PeriodStack", "SceneStack"]


def _check(name: str, arr: np.ndarray, ndim: int, dtype: type | None = None) -> None:
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {arr.shape}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must be {np.dtype(dtype)}, got {arr.dtype}")


@dataclass(frozen=True, eq=False)
class LoadedStack:
    """All scenes of one sensor on one tile grid, straight out of the loader.

    Attributes:
        sensor: Sensor id (``schemas.sensors.SensorId`` value).
        tile_id: Tile id (``pipelines.grid.Tile.id``).
        epsg: EPSG code of the tile grid.
        transform: Affine transform of the tile grid at ``resolution_m`` (top-left origin).
        resolution_m: Pixel size in metres.
        bands: Band names in ``data`` order (canonical profile names).
        data: ``(time, band, y, x)`` float32 in physical units (reflectance, K, dB or linear
            gamma0 as the profile says); NaN = no data.
        qa: Raw QA/classification layers by canonical band name (e.g. ``SCL``, ``QA_PIXEL``),
            each ``(time, y, x)`` in the source dtype, resampled with nearest neighbour; 0 (or the
            profile's nodata) outside the source footprint.
        footprint: ``(time, y, x)`` bool, True where the scene has source pixels (from a separate
            validity warp, never from a nodata value).
        times: ``(time,)`` datetime64[ns], UTC acquisition times.
        item_ids: STAC item id of each time plane.
        items: The STAC item dicts in time order (for provenance and re-loading with a shift).
    """

    sensor: str
    tile_id: str
    epsg: int
    transform: Affine
    resolution_m: float
    bands: tuple[str, ...]
    data: np.ndarray
    qa: dict[str, np.ndarray]
    footprint: np.ndarray
    times: np.ndarray
    item_ids: tuple[str, ...]
    items: tuple[dict[str, object], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        _check("data", self.data, 4, np.float32)
        _check("footprint", self.footprint, 3, np.bool_)
        n = self.data.shape[0]
        if len(self.item_ids) != n or self.times.shape != (n,):
            raise ValueError("times and item_ids must have one entry per time plane")
        for name, layer in self.qa.items():
            _check(f"qa[{name}]", layer, 3)


@dataclass(frozen=True, eq=False)
class SceneStack:
    """All scenes of one sensor on one tile grid with a per-pixel bitmask.

    Attributes:
        sensor: Sensor id.
        tile_id: Tile id.
        epsg: EPSG code of the tile grid.
        transform: Affine transform of the tile grid at ``resolution_m``.
        resolution_m: Pixel size in metres.
        bands: Band names in ``data`` order.
        data: ``(time, band, y, x)`` float32 physical units, NaN = no data.
        mask: ``(time, y, x)`` uint8 ``schemas.cube.MaskBit`` flags.
        times: ``(time,)`` datetime64[ns] UTC.
        item_ids: Item id of each time plane.
        items: STAC item dicts in time order.
    """

    sensor: str
    tile_id: str
    epsg: int
    transform: Affine
    resolution_m: float
    bands: tuple[str, ...]
    data: np.ndarray
    mask: np.ndarray
    times: np.ndarray
    item_ids: tuple[str, ...]
    items: tuple[dict[str, object], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        _check("data", self.data, 4, np.float32)
        _check("mask", self.mask, 3, np.uint8)
        n = self.data.shape[0]
        if self.mask.shape != (n, *self.data.shape[2:]):
            raise ValueError(f"mask shape {self.mask.shape} does not match data {self.data.shape}")
        if len(self.item_ids) != n or self.times.shape != (n,):
            raise ValueError("times and item_ids must have one entry per time plane")


@dataclass(frozen=True, eq=False)
class PeriodStack:
    """One period's planes of one sensor on one tile grid, ready to write.

    Attributes:
        sensor: Sensor id.
        tile_id: Tile id.
        period_id: Period id (``schemas.recipe.Period.id``).
        epsg: EPSG code of the tile grid.
        transform: Affine transform of the tile grid at ``resolution_m``.
        resolution_m: Pixel size in metres.
        bands: Band names in ``data`` order.
        data: ``(time, band, y, x)`` float32 physical units, NaN = no data; ``time`` is 1 for
            ``best``/``composite`` and up to ``max_scenes`` for ``series``.
        mask: ``(time, y, x)`` uint8 ``MaskBit`` flags (a composite plane is VALID where at
            least one clear observation went into it).
        times: ``(time,)`` datetime64[ns] UTC: the acquisition time of each plane (a composite
            uses the median acquisition time of the scenes it used).
        sources: For each plane, the item ids that contributed pixels to it.
        valid_fraction: Share of pixels x planes with the VALID bit.
        cloud_fraction: Share of observed pixels flagged cloud/shadow/cirrus (None for SAR).
    """

    sensor: str
    tile_id: str
    period_id: str
    epsg: int
    transform: Affine
    resolution_m: float
    bands: tuple[str, ...]
    data: np.ndarray
    mask: np.ndarray
    times: np.ndarray
    sources: tuple[tuple[str, ...], ...]
    valid_fraction: float
    cloud_fraction: float | None

    def __post_init__(self) -> None:
        _check("data", self.data, 4, np.float32)
        _check("mask", self.mask, 3, np.uint8)
        n = self.data.shape[0]
        if len(self.sources) != n or self.times.shape != (n,):
            raise ValueError("times and sources must have one entry per time plane")
