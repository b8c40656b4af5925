"""The ``eoforge`` command line: thin wiring over ``schemas``, ``pipelines`` and ``catalog``.

Verbs that exist are registered here; each group lives in its own ``cli_*`` module.
"""

from __future__ import annotations

import os

import typer

from flows._cli_common import console
from flows.cli_archive import app as archive_app
from flows.cli_build import register as register_build
from flows.cli_preview import register as register_preview
from flows.cli_recipe import app as recipe_app
from flows.cli_schedule import register as register_schedule
from flows.cli_stats import register as register_stats
from flows.cli_tiles import app as tiles_app
from schemas import __version__
from schemas.errors import DEBUG_ENV

__all__ = ["app", "main"]

app = typer.Typer(
    name="eoforge",
    help=(
        "Build ML-ready Earth-observation datasets from one recipe: search STAC catalogs, mask "
        "clouds, put every sensor on one grid, burn labels, write Zarr cubes and a tile catalog."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(recipe_app, name="recipe")
app.add_typer(archive_app, name="archive")
app.add_typer(tiles_app, name="tiles")
register_build(app)
register_schedule(app)
register_preview(app)
register_stats(app)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"eoforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print the eoforge version and exit.",
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show the traceback of an error (and Prefect's) instead of one line.",
    ),
) -> None:
    """eoforge: ML-ready Earth-observation datasets."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command("demo")
def demo() -> None:
    """Build the demo dataset from the offline archive (what ``make demo`` runs)."""
    from flows.demo import run_demo

    run_demo()


def main() -> None:
    """Console-script entry point."""
    # Before Prefect is imported: no analytics, and a start-up wait for the ephemeral API that
    # holds on 2 busy cores (Prefect's default of 20 s does not).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    app()
