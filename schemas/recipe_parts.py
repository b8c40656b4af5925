"""The recipe's grid, split, output and execution sections.

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlparse

from pydantic import Field, model_validator

from schemas.recipe_common import RecipeModel, fail, resolve_local

__all__ = [
    "Codec",
    "ExecutionConfig",
    "GridConfig",
    "OutputConfig",
    "SplitConfig",
    "SplitFractions",
    "SplitMethod",
]

#: Default split block edge, in tiles, when ``split.block_size`` is not given.
DEFAULT_BLOCK_TILES = 10
#: Target ring-cell edge in metres when ``split.cell_size`` is not given (reBEN-style 100 km);
#: the cell used is the nearest whole number of tiles (at least one).
DEFAULT_CELL_M = 100_000
_DASK_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


class GridConfig(RecipeModel):
    """The tile grid every sensor shares: one tile extent, each sensor at its own resolution."""

    tile_size: int = Field(
        default=1200,
        gt=0,
        le=100_000,
        description=(
            "Tile edge in metres; every sensor resolution must divide it. The default 1200 m is "
            "120 px at 10 m, 60 px at 20 m, 40 px at 30 m and 20 px at 60 m (BigEarthNet size)."
        ),
    )
    max_tiles: int = Field(
        default=100_000,
        ge=1,
        description="Size guard: a recipe whose AOI covers more tiles than this (estimated from "
        "its area before any search) is refused. Raise it to build a larger dataset on purpose.",
    )
    crs: Literal["utm"] = Field(
        default="utm",
        description=(
            "Tile CRS: 'utm' puts each tile in the UTM zone of its centre, its origin snapped to "
            "a multiple of tile_size."
        ),
    )


class SplitMethod(StrEnum):
    """How tiles are assigned to train/val/test."""

    BLOCK = "block"
    """Whole square blocks of tiles go to one split (geographic, no leakage between neighbours)."""
    RANDOM = "random"
    """Each tile independently (neighbouring tiles can leak information between splits)."""
    RING = "ring"
    """reBEN-style: square cells with a test core, a val ring around it and a train outer ring."""


class SplitFractions(RecipeModel):
    """Shares of train, validation and test; they add up to 1."""

    train: float = Field(default=0.8, gt=0, le=1, description="Share of the training split.")
    val: float = Field(default=0.1, ge=0, le=1, description="Share of the validation split.")
    test: float = Field(default=0.1, ge=0, le=1, description="Share of the test split.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> Self:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            fail(
                f"train + val + test = {total:g}, not 1",
                "",
                "choose shares that add up to 1, e.g. {train: 0.8, val: 0.1, test: 0.1}",
            )
        return self


class SplitConfig(RecipeModel):
    """How tiles are assigned to splits: reproducible for a given seed."""

    method: SplitMethod = Field(
        default=SplitMethod.BLOCK,
        description=(
            "block: square blocks of tiles, each block one split (geographic); ring: square "
            "cells (reBEN-style) with test in a central square, val in the ring around it and "
            "train in the outer ring; random: per tile (neighbouring tiles leak between splits). "
            "block and ring turn test tiles that touch a train tile into val."
        ),
    )
    fractions: SplitFractions = Field(
        default_factory=SplitFractions, description="Shares of train, val and test."
    )
    block_size: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Block edge in metres for method 'block' only; a multiple of grid.tile_size. "
            f"Default: {DEFAULT_BLOCK_TILES} tiles."
        ),
    )
    cell_size: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Cell edge in metres for method 'ring' only; a multiple of grid.tile_size. Inside "
            "each cell the central square (side cell_size*sqrt(test)) is test and the ring out "
            "to side cell_size*sqrt(test+val) is val. Default: the whole number of tiles "
            f"nearest to {DEFAULT_CELL_M // 1000} km."
        ),
    )
    seed: int = Field(
        default=0,
        ge=0,
        description=(
            "Seed of the assignment: picks the split of each block (block), of each tile "
            "(random) or the offset of the cell grid (ring)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.method is not SplitMethod.BLOCK and self.block_size is not None:
            fail(
                "block_size is only used by method 'block'",
                "block_size",
                "remove split.block_size or use method: block",
            )
        if self.method is not SplitMethod.RING and self.cell_size is not None:
            fail(
                "cell_size is only used by method 'ring'",
                "cell_size",
                "remove split.cell_size or use method: ring",
            )
        return self

    def block_size_m(self, tile_size: int) -> int:
        """The block edge in metres: ``block_size``, or the default number of tiles."""
        return self.block_size if self.block_size is not None else DEFAULT_BLOCK_TILES * tile_size

    def cell_size_m(self, tile_size: int) -> int:
        """The ring-cell edge in metres: ``cell_size``, or the tiles nearest to 100 km."""
        if self.cell_size is not None:
            return self.cell_size
        return max(1, round(DEFAULT_CELL_M / tile_size)) * tile_size

    def grid_problems(self, tile_size: int) -> list[tuple[str, str, str]]:
        """Fields that do not fit a tile size, as ``(field, reason, fix)``; empty when none.

        Args:
            tile_size: ``grid.tile_size`` in metres.

        Returns:
            One entry per offending field (``block_size``, ``cell_size``), the field path
            relative to this model.
        """
        problems: list[tuple[str, str, str]] = []
        for name, value, unit in (
            ("block_size", self.block_size, "block"),
            ("cell_size", self.cell_size, "cell"),
        ):
            if value is not None and value % tile_size:
                problems.append(
                    (
                        name,
                        f"{value} m is not a multiple of grid.tile_size {tile_size} m",
                        f"make the {unit} a whole number of tiles",
                    )
                )
        return problems


class Codec(StrEnum):
    """Compression of the cube's chunks (see ``schemas.cube.CodecSpec``)."""

    BLOSC_LZ4 = "blosc-lz4"
    """Blosc LZ4 with bit-shuffle: fastest to decode (the default; training reads often)."""
    BLOSC_ZSTD = "blosc-zstd"
    """Blosc zstd with bit-shuffle."""
    ZSTD = "zstd"
    """Plain zstd: compresses harder, decodes slower."""


_LEVELS: dict[Codec, tuple[int, int]] = {
    Codec.ZSTD: (1, 22),
    Codec.BLOSC_ZSTD: (1, 9),
    Codec.BLOSC_LZ4: (1, 9),
}


class OutputConfig(RecipeModel):
    """Where and how the cube (and its tile catalog) is written."""

    path: str = Field(
        min_length=1,
        description=(
            "Directory or URL (s3://, gs://, az://, ...) of the Zarr cube; the tile catalog "
            "lives inside it. A relative path is taken from the current directory."
        ),
    )
    codec: Codec = Field(
        default=Codec.BLOSC_LZ4, description="Chunk compression: blosc-lz4, blosc-zstd or zstd."
    )
    codec_level: int | None = Field(
        default=None,
        description="Compression level (zstd 1..22, blosc 1..9); default: 5 for blosc, 3 for zstd.",
    )
    tiles_per_shard: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Tiles per Zarr shard; one build task writes one shard.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.codec_level is not None:
            low, high = _LEVELS[self.codec]
            if not low <= self.codec_level <= high:
                fail(
                    f"level {self.codec_level} is outside {low}..{high} for codec '{self.codec}'",
                    "codec_level",
                )
        return self

    def with_resolved_paths(self, base: Path) -> OutputConfig:
        """This output with a relative local ``path`` made absolute against ``base``."""
        return self.model_copy(update={"path": resolve_local(self.path, base)})


class ExecutionConfig(RecipeModel):
    """Where the build runs: a running Dask cluster, or a local one started for the build."""

    dask_address: str | None = Field(
        default=None,
        description="Scheduler address of a running Dask cluster, e.g. tcp://scheduler:8786. "
        "Default: a local cluster.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Local cluster: number of worker processes (default: one per CPU core).",
    )
    threads_per_worker: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Local cluster: threads per worker (default: Dask's choice).",
    )
    retries: int = Field(
        default=0,
        ge=0,
        le=10,
        description="Times a failed build is run again (Prefect flow retries); each retry "
        "resumes at the first uncommitted shard. Shard tasks retry transient errors (HTTP "
        "429/5xx, dropped connections) 3 times on their own.",
    )
    retry_delay_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="Seconds to wait before a build retry.",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Fail a build that runs longer than this (Prefect flow timeout); "
        "committed shards stay committed and the next run resumes. Default: no limit.",
    )
    notify_url: str | None = Field(
        default=None,
        description="On a failed build, POST a JSON message (recipe, flow run, state, error) "
        "to this http(s) URL, e.g. a Slack or Teams incoming webhook. The URL is never logged "
        "(it usually carries a token).",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.notify_url is not None:
            hook = urlparse(self.notify_url)
            if hook.scheme not in ("http", "https") or not hook.hostname:
                fail(
                    "notify_url is not an http(s) URL",
                    "notify_url",
                    "give the webhook's full URL, e.g. https://hooks.example.com/...",
                )
        if self.dask_address is None:
            return self
        url = urlparse(self.dask_address)
        if url.scheme not in _DASK_SCHEMES or not url.hostname:
            fail(
                f"'{self.dask_address}' is not a Dask scheduler address",
                "dask_address",
                "write it as tcp://HOST:PORT (or tls://, ws://, wss://, ucx://)",
            )
        for name in ("workers", "threads_per_worker"):
            if getattr(self, name) is not None:
                fail(
                    f"{name} sizes a local cluster, but dask_address names a running one",
                    name,
                    f"remove execution.{name} or execution.dask_address",
                )
        return self
