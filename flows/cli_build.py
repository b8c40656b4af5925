"""``eoforge build RECIPE``: build (or resume) a dataset now."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from flows._cli_common import console, reports_errors

__all__ = ["print_summary", "register"]


def register(app: typer.Typer) -> None:
    """Add ``build`` to the root command group."""

    @app.command("build")
    @reports_errors
    def build(
        recipe: Path = typer.Argument(..., help="Recipe YAML file."),  # noqa: B008
        dask_address: str | None = typer.Option(
            None, "--dask-address", help="Address of a running Dask scheduler (tcp://host:port)."
        ),
        output: str | None = typer.Option(
            None,
            "--output",
            help="Cube path or URL instead of the recipe's output.path (a new cube, e.g. when "
            "the recipe changed bands, grid or resolution).",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Build the cube and tile catalog a recipe describes.

        A rerun on an existing cube adds what is new (periods, tiles, clearer scenes) as a new
        catalog version and resumes a build that stopped midway.
        """
        from flows.build import run_build

        summary = run_build(recipe, dask_address, output)
        if json_out:
            console.print_json(json.dumps(summary))
            return
        print_summary(summary)


def print_summary(summary: Mapping[str, Any]) -> None:
    """Print a build summary as a table plus searches and warnings (``--json`` prints it all)."""
    table = Table(title=f"eoforge build: {summary['recipe']}", show_header=False)
    for key in (
        "cube",
        "run_id",
        "tiles",
        "positions",
        "shards_total",
        "shards_built",
        "shards_skipped",
        "bytes_on_disk",
        "seconds",
    ):
        table.add_row(key, str(summary[key]))
    table.add_row("skipped scenes", str(len(summary["skipped_scenes"])))
    manifest = summary.get("manifest") or {}
    if manifest:
        base = manifest.get("base_version")
        table.add_row(
            "rows vs " + ("new cube" if base is None else f"version {base}"),
            f"{len(manifest.get('added', []))} added, {len(manifest.get('rebuilt', {}))} "
            f"rebuilt, {manifest.get('unchanged', 0)} unchanged",
        )
    if summary.get("splits"):
        table.add_row("splits (tiles)", ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
        distance = summary.get("leakage", {}).get("min_test_train_distance_m")
        if distance is not None:
            table.add_row("min test-train distance", f"{distance:g} m")
    for source, n in summary.get("label_flagged", {}).items():
        table.add_row(f"flagged ({source})", f"{n} tiles above max_unlabeled")
    console.print(table)
    for line in summary["searches"]:
        console.print(f"  search: {line}", highlight=False)
    for line in summary.get("warnings", []):
        console.print(f"  [yellow]warning:[/yellow] {line}")
