"""Train/val/test assignment of tiles: a pure function of each tile's position and the config.

Base draw (see :class:`~pipelines.splits._base.SplitPlan`):

* ``block``: the grid of each UTM zone is cut into blocks of ``block_size / tile_size`` tiles
  (aligned to multiples of the block in zone coordinates); each block draws one split from
  BLAKE2b of ``(seed, zone, hemisphere, block column, block row)``.
* ``ring`` (reBEN-style): each zone is cut into square cells of ``cell_size`` (the grid shifted
  by a whole number of tiles drawn from the seed, per zone). A tile goes by the Chebyshev
  distance of its centre from its cell's centre: inside the central square of side
  ``L*sqrt(test)`` it is test, inside side ``L*sqrt(test+val)`` val, outside train, so the area
  shares match the fractions (up to whole tiles).
* ``random``: each tile draws from BLAKE2b of ``(seed, zone, hemisphere, col, row)``.

Guard (block and ring): a test tile that touches a tile whose base draw is train becomes val.
"Touches" means one of its 8 neighbours in its own zone, or a tile of a neighbouring UTM zone or
hemisphere, existing in the global grid, whose footprint comes within
:data:`~pipelines.splits._neighbours.SEAM_MARGIN_M` (seam tiles of two zones overlap). The
guard never makes a train tile, so the final train tiles are the base train tiles and no final
test tile touches one. For block the base draw is calibrated (more test blocks, fewer val
blocks) so that the shares after the guard match the recipe's fractions in expectation.

Neither the draw nor the guard looks at the other tiles of a build: a tile keeps its split when
a later build covers a larger AOI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipelines.grid import Hemisphere, Tile
from pipelines.splits._base import SPLITS, Split, SplitPlan, make_plan
from pipelines.splits._neighbours import (
    GridKey,
    other_zone_neighbours,
    own_zone_neighbours,
    zones_near,
)
from schemas.errors import InvalidInputError
from schemas.recipe_parts import SplitConfig, SplitMethod

__all__ = ["assign_split", "assign_splits", "ring_cell_bounds", "split_warnings"]

#: Warn when the ring shares of one whole cell miss the fractions by more than this.
_RING_SHARE_TOLERANCE = 0.02


class _Assigner:
    """Applies a plan to tiles; caches base draws (a pure function, so caching is safe)."""

    def __init__(self, plan: SplitPlan) -> None:
        self.plan = plan
        self._cache: dict[GridKey, Split] = {}

    def base(self, key: GridKey) -> Split:
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self.plan.base(*key)
        return found

    def final(self, tile: Tile, near: Sequence[tuple[int, Hemisphere]]) -> Split:
        base = self.base((tile.zone, tile.hemisphere, tile.col, tile.row))
        if base != "test" or not self.plan.guarded:
            return base
        if any(self.base(k) == "train" for k in own_zone_neighbours(tile)):
            return "val"
        for zone, hemisphere in near:
            if any(self.base(k) == "train" for k in other_zone_neighbours(tile, zone, hemisphere)):
                return "val"
        return "test"


def _check_tiles(tiles: Sequence[Tile], tile_size: int) -> None:
    for tile in tiles:
        if tile.tile_size_m != tile_size:
            raise InvalidInputError(
                f"tile {tile.id} is {tile.tile_size_m:g} m, not grid.tile_size {tile_size} m",
                "split assignment",
                "pass tiles of the recipe's grid",
            )


def assign_splits(tiles: Iterable[Tile], config: SplitConfig, tile_size: int) -> dict[str, Split]:
    """The split of every tile (module docstring: methods and guard).

    Each tile's split depends only on its own position, ``config`` and ``tile_size``: not on
    the other tiles passed, the order, the process or ``PYTHONHASHSEED``.

    Args:
        tiles: Grid tiles of edge ``tile_size``, any zones; duplicates are fine.
        config: The recipe's split section.
        tile_size: ``grid.tile_size`` in metres.

    Returns:
        ``{tile id: "train" | "val" | "test"}``.

    Raises:
        InvalidInputError: A tile has another size, or the block or cell is not a whole number
            of tiles.
    """
    unique = list({tile.id: tile for tile in tiles}.values())
    _check_tiles(unique, tile_size)
    assigner = _Assigner(make_plan(config, tile_size))
    near: list[list[tuple[int, Hemisphere]]]
    near = zones_near(unique) if assigner.plan.guarded else [[] for _ in unique]
    return {tile.id: assigner.final(tile, n) for tile, n in zip(unique, near, strict=True)}


def assign_split(tile: Tile, config: SplitConfig, tile_size: int) -> Split:
    """The split of one tile; the same as ``assign_splits([tile], ...)[tile.id]``.

    Args:
        tile: A grid tile of edge ``tile_size``.
        config: The recipe's split section.
        tile_size: ``grid.tile_size`` in metres.

    Returns:
        ``"train"``, ``"val"`` or ``"test"``.

    Raises:
        InvalidInputError: As :func:`assign_splits`.
    """
    return assign_splits([tile], config, tile_size)[tile.id]


def ring_cell_bounds(
    tile: Tile, config: SplitConfig, tile_size: int
) -> tuple[float, float, float, float]:
    """The ring cell holding a tile, as ``(minx, miny, maxx, maxy)`` in the tile's UTM metres.

    Args:
        tile: A grid tile of edge ``tile_size``.
        config: A split section with method ``ring``.
        tile_size: ``grid.tile_size`` in metres.

    Returns:
        The cell's bounds; its centre square of side ``cell*sqrt(test)`` is test.

    Raises:
        InvalidInputError: The method is not ring, or the cell is not a whole number of tiles.
    """
    if config.method is not SplitMethod.RING:
        raise InvalidInputError(
            f"split method '{config.method}' has no ring cells", "split.method", "use ring"
        )
    _check_tiles([tile], tile_size)
    plan = make_plan(config, tile_size)
    n = plan.unit_tiles
    dx, dy = plan.ring_offset(tile.zone, tile.hemisphere)
    i, j = plan.ring_cell(tile.zone, tile.hemisphere, tile.col, tile.row)
    c0, r0 = i * n + dx, j * n + dy
    t = float(tile_size)
    return (c0 * t, r0 * t, (c0 + n) * t, (r0 + n) * t)


def _ring_cell_shares(plan: SplitPlan) -> dict[Split, float]:
    """Shares of one whole ring cell after the guard (away from seams), in whole tiles."""
    n = plan.unit_tiles

    def side(half: float) -> int:
        # Tiles per row whose centre lies less than ``half`` tiles from the cell centre.
        return sum(1 for i in range(n) if abs(i + 0.5 - n / 2) < half)

    k_test, k_val = side(plan.ring_test_half), side(plan.ring_val_half)
    test, val = k_test**2, k_val**2 - k_test**2
    if 0 < k_test == k_val < n:
        # No val ring (the two sides have n's parity, so they differ by 0 or >= 2): the test
        # square's outer row of tiles touches train and turns val.
        test = max(0, k_test - 2) ** 2
        val = k_test**2 - test
    return {"train": 1.0 - (test + val) / n**2, "val": val / n**2, "test": test / n**2}


def split_warnings(config: SplitConfig, tile_size: int) -> list[str]:
    """Warnings a build summary should print about a split config; empty when there are none.

    Args:
        config: The recipe's split section.
        tile_size: ``grid.tile_size`` in metres.

    Returns:
        Sentences: random splits leak spatially; a block split whose val share is too small to
        buffer the test blocks; ring cells whose shares (in whole tiles, after the guard) miss
        the fractions by more than 0.02.

    Raises:
        InvalidInputError: As :func:`assign_splits`.
    """
    plan = make_plan(config, tile_size)
    fr = config.fractions
    out: list[str] = []
    if config.method is SplitMethod.RANDOM:
        out.append(
            "split method 'random' assigns neighbouring tiles to different splits: test tiles "
            "touch train tiles and share their landscape, so test scores are optimistic "
            "(spatial leakage); use method 'block' or 'ring' for a leakage-free split"
        )
    if plan.test_shortfall > 1e-9:
        got = fr.test - plan.test_shortfall
        out.append(
            f"split fractions: test tiles touching a train block become val, and val "
            f"{fr.val:g} is too small to absorb that buffer: expect about {got:.3f} test and "
            f"{fr.val + plan.test_shortfall:.3f} val instead of {fr.test:g} and {fr.val:g}; "
            "raise split.fractions.val or split.block_size"
        )
    if config.method is SplitMethod.RING:
        shares = _ring_cell_shares(plan)
        worst = max(abs(shares[k] - getattr(fr, k)) for k in SPLITS)
        if worst > _RING_SHARE_TOLERANCE:
            text = ", ".join(f"{k} {shares[k]:.3f}" for k in SPLITS)
            out.append(
                f"ring cells of {plan.unit_tiles} tiles give {text} (whole tiles, test tiles "
                "touching train made val), not the recipe's fractions; use a larger "
                "split.cell_size, or give val a share so a ring separates test from train"
            )
    return out
