"""``eoforge archive ...``: create, serve and index offline archives."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from flows._cli_common import console, reports_errors
from flows.cli_archive_index import register_index as _register_index
from flows.cli_archive_serve import register as _register_serve

app = typer.Typer(help="Create, serve and index offline STAC archives.", no_args_is_help=True)
_register_serve(app)
_register_index(app)


@app.command("create")
@reports_errors
def create(
    archive_dir: Annotated[Path, typer.Argument(help="Folder to create (absent or empty).")],
    preset: Annotated[
        str, typer.Option("--preset", help="Archive size: 'tiny' (tests) or 'demo'.")
    ] = "tiny",
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives identical files.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace ARCHIVE_DIR if it is not empty.")
    ] = False,
) -> None:
    """Generate a deterministic offline archive (synthetic world, scenes, labels, truth).

    Sentinel-2, Landsat, Sentinel-1 RTC and EnMAP scenes as COGs with provider-like STAC items,
    CORINE/OSM labels, ground truth and a ready recipe (recipes/<preset>.yaml).
    """
    from pipelines.archive.create import create_archive

    start = time.perf_counter()
    manifest = create_archive(archive_dir, preset=preset, seed=seed, force=force)
    counts = ", ".join(f"{n} {c}" for c, n in manifest.items.items())
    console.print(
        f"created {manifest.root} (preset {manifest.preset}, seed {manifest.seed}): {counts} "
        f"in {time.perf_counter() - start:.1f} s; recipe: "
        f"{manifest.root / 'recipes' / (manifest.preset + '.yaml')}",
        highlight=False,
        soft_wrap=True,
    )
