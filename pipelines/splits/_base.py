"""The base assignment: a split per tile from its grid position, the config and the seed alone.

Everything here is a pure function of ``(zone, hemisphere, col, row)`` and a :class:`SplitPlan`;
the random draws come from BLAKE2b of a fixed string, never from Python's ``hash()``, so they are
the same in every process, on every machine and under every ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

from pipelines.grid import Hemisphere, Tile
from schemas.errors import InvalidInputError
from schemas.recipe_parts import SplitConfig, SplitMethod

__all__ = ["SPLITS", "Split", "SplitPlan", "block_retention", "make_plan", "unit_hash"]

Split = Literal["train", "val", "test"]
#: The split names, in the order reports list them.
SPLITS: tuple[Split, Split, Split] = ("train", "val", "test")

#: Version tag mixed into every hash: changing the draw scheme must change this tag.
_HASH_TAG = "eoforge-split-v1"


def unit_hash(*parts: object) -> float:
    """A uniform number in ``[0, 1)`` from the parts' ``str()`` joined by ``:`` (BLAKE2b).

    Args:
        parts: Ints and strings naming the draw, e.g. ``("block", seed, zone, "N", bx, by)``.

    Returns:
        The first 8 digest bytes as an unsigned integer divided by ``2**64``.
    """
    key = ":".join([_HASH_TAG, *(str(p) for p in parts)]).encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def block_retention(p_train: float, n: int) -> float:
    """Expected share of a test block's tiles that keep test after the guard.

    A test tile turns val when one of its 8 neighbours lies in a train block. Blocks draw their
    split independently, so a tile touching ``k`` other blocks keeps test with probability
    ``(1 - p_train) ** k``: ``k = 0`` inside, 1 along an edge, 3 at a corner, 8 when ``n = 1``.

    Args:
        p_train: Probability that a block is train.
        n: Block edge in tiles (>= 1).

    Returns:
        The mean of ``(1 - p_train) ** k`` over the ``n * n`` tiles of a block.
    """
    q = 1.0 - p_train
    if n == 1:
        return q**8
    inner, edge = (n - 2) ** 2, 4 * (n - 2)
    return (inner + edge * q + 4 * q**3) / (n * n)


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """A :class:`SplitConfig` resolved against a tile size: what the base draw needs.

    Attributes:
        method: The split method.
        seed: The config's seed.
        tile_size: Tile edge in metres.
        unit_tiles: Block edge (block) or cell edge (ring) in tiles; 1 for random.
        p_test: Probability that a block (block) or tile (random) draws test.
        p_val: Probability that it draws val. For block both are calibrated so that the shares
            after the guard match the recipe's fractions in expectation.
        ring_test_half: Ring: half the side of the test square, in tiles.
        ring_val_half: Ring: half the side of the outer edge of the val ring, in tiles.
        test_shortfall: Expected test share the block calibration could not reach (0 if none).
    """

    method: SplitMethod
    seed: int
    tile_size: float
    unit_tiles: int
    p_test: float
    p_val: float
    ring_test_half: float
    ring_val_half: float
    test_shortfall: float

    @property
    def guarded(self) -> bool:
        """Whether test tiles touching train turn val (block and ring; not random)."""
        return self.method is not SplitMethod.RANDOM

    def ring_offset(self, zone: int, hemisphere: Hemisphere) -> tuple[int, int]:
        """Ring: ``(dx, dy)`` in tiles by which the seed shifts the zone's cell grid."""
        n = self.unit_tiles
        dx = math.floor(unit_hash("ring-x", self.seed, zone, hemisphere) * n)
        dy = math.floor(unit_hash("ring-y", self.seed, zone, hemisphere) * n)
        return min(dx, n - 1), min(dy, n - 1)

    def ring_cell(self, zone: int, hemisphere: Hemisphere, col: int, row: int) -> tuple[int, int]:
        """Ring: grid index ``(i, j)`` of the cell holding the tile.

        The cell's first tile column is ``i * unit_tiles + dx`` (see :meth:`ring_offset`).
        """
        dx, dy = self.ring_offset(zone, hemisphere)
        return (col - dx) // self.unit_tiles, (row - dy) // self.unit_tiles

    def base(self, zone: int, hemisphere: Hemisphere, col: int, row: int) -> Split:
        """The split of a tile before the guard.

        Args:
            zone: UTM zone of the tile.
            hemisphere: ``"N"`` or ``"S"``.
            col: Easting index of the tile.
            row: Northing index of the tile.

        Returns:
            ``"train"``, ``"val"`` or ``"test"``.
        """
        if self.method is SplitMethod.RING:
            return self._ring(zone, hemisphere, col, row)
        if self.method is SplitMethod.BLOCK:
            n = self.unit_tiles
            u = unit_hash("block", self.seed, n, zone, hemisphere, col // n, row // n)
        else:
            u = unit_hash("tile", self.seed, zone, hemisphere, col, row)
        if u < self.p_test:
            return "test"
        if u < self.p_test + self.p_val:
            return "val"
        return "train"

    def _ring(self, zone: int, hemisphere: Hemisphere, col: int, row: int) -> Split:
        n = self.unit_tiles
        dx, dy = self.ring_offset(zone, hemisphere)
        # Offset of the tile centre from the cell centre, in tiles (a multiple of 0.5).
        u = (col - dx) % n + 0.5 - n / 2
        v = (row - dy) % n + 0.5 - n / 2
        d = max(abs(u), abs(v))
        if d < self.ring_test_half:
            return "test"
        if d < self.ring_val_half:
            return "val"
        return "train"

    def base_of(self, tile: Tile) -> Split:
        """:meth:`base` of a :class:`Tile`."""
        return self.base(tile.zone, tile.hemisphere, tile.col, tile.row)


def _tiles_in(size_m: int, tile_size: int, field: str) -> int:
    if size_m % tile_size:
        raise InvalidInputError(
            f"{size_m} m is not a multiple of grid.tile_size {tile_size} m",
            f"split.{field}",
            f"make the {field.removesuffix('_size')} a whole number of tiles",
        )
    return size_m // tile_size


def make_plan(config: SplitConfig, tile_size: int) -> SplitPlan:
    """Resolve a split config against the grid's tile size.

    Args:
        config: The recipe's split section.
        tile_size: ``grid.tile_size`` in metres.

    Returns:
        The plan the base draw and the guard use.

    Raises:
        InvalidInputError: The tile size is not positive, or the block or cell is not a whole
            number of tiles.
    """
    if tile_size <= 0:
        raise InvalidInputError(f"tile size must be positive, got {tile_size}", "grid.tile_size")
    fr = config.fractions
    test, val = fr.test, fr.val
    shortfall = 0.0
    n, test_half, val_half = 1, 0.0, 0.0
    p_test, p_val = test, val
    if config.method is SplitMethod.BLOCK:
        n = _tiles_in(config.block_size_m(tile_size), tile_size, "block_size")
        keep = block_retention(fr.train, n)
        p_test = test / keep if test > 0 else 0.0
        if p_test > test + val:
            # Not enough val share to absorb the buffer: all of it goes to test draws.
            p_test = test + val
            shortfall = test - p_test * keep
        p_val = max(0.0, 1.0 - fr.train - p_test)
    elif config.method is SplitMethod.RING:
        n = _tiles_in(config.cell_size_m(tile_size), tile_size, "cell_size")
        test_half = n * math.sqrt(test) / 2
        val_half = n * math.sqrt(test + val) / 2
    return SplitPlan(
        method=config.method,
        seed=config.seed,
        tile_size=float(tile_size),
        unit_tiles=n,
        p_test=p_test,
        p_val=p_val,
        ring_test_half=test_half,
        ring_val_half=val_half,
        test_shortfall=shortfall,
    )
