"""``eoforge preview CUBE --out DIR``: PNG previews and an index.html (logic: pipelines.preview).

Thin wiring: the catalog rows come from :func:`catalog.writer.read_records`, the pictures from
:func:`pipelines.preview.write_preview`. A missing cube ends in one line and exit 3, a bad
argument in one line and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows._cli_common import console, reports_errors
from schemas.errors import InvalidInputError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``preview`` to the root command group."""

    @app.command("preview")
    @reports_errors
    def preview(
        cube: Annotated[Path, typer.Argument(help="Cube folder written by `eoforge build`.")],
        out: Annotated[
            Path, typer.Option("--out", help="Folder for the PNGs and index.html (created).")
        ],
        tiles: Annotated[
            int, typer.Option("--tiles", help="Tiles to sample for per-tile pictures.")
        ] = 4,
        seed: Annotated[
            int, typer.Option("--seed", help="Seed of the tile sample (same seed, same tiles).")
        ] = 0,
    ) -> None:
        """Write PNG previews of a cube and an index.html that opens without a server.

        Footprint maps by split and by cloud fraction, each sampled tile's sensor pictures
        beside their masks and label maps, and class histograms per label source and split.
        """
        from catalog.writer import read_records
        from pipelines.preview import write_preview

        if tiles < 0:
            raise InvalidInputError(
                f"cannot sample {tiles} tiles", where="--tiles", fix="give 0 or more, e.g. 4"
            )
        if not cube.exists():
            from schemas.errors import NotFoundError

            raise NotFoundError(
                "no such cube", where=str(cube), fix="give the cube directory a build wrote"
            )
        result = write_preview(cube, read_records(cube), out, tiles=tiles, seed=seed)
        console.print(
            f"preview of {result.n_tiles} tiles ({len(result.sampled)} sampled): "
            f"{len(result.images)} images, open {result.index_html}",
            highlight=False,
            soft_wrap=True,
        )
