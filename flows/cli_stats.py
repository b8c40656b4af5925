"""``eoforge stats CUBE``: (re)compute the dataset statistics of a cube and print them."""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from flows._cli_common import console, reports_errors
from schemas.errors import NotFoundError

__all__ = ["print_stats", "register"]


def register(app: typer.Typer) -> None:
    """Add ``stats`` to the root command group."""

    @app.command("stats")
    @reports_errors
    def stats(
        cube: Path = typer.Argument(..., help="Cube directory."),  # noqa: B008
        json_out: bool = typer.Option(False, "--json", help="Print all statistics as JSON."),
    ) -> None:
        """Statistics of the current tiles (per band, per split; classes; cloud fractions).

        Per sensor and band (overall and per split): count, mean, std, min, max, percentiles;
        class frequencies per split; valid/cloud fraction histograms.

        Writes ``CUBE/stats.json`` and the root attribute ``eoforge_stats`` (what every build
        does at its end), holding the cube's build lock meanwhile.
        """
        import zarr

        from flows.stats import update_cube_stats
        from pipelines.lock import cube_lock

        if not (cube / "zarr.json").is_file():
            raise NotFoundError(
                f"{cube} is not a cube (no zarr.json)",
                where=str(cube),
                fix="give the output.path of a built recipe",
            )
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-stats-" + uuid.uuid4().hex[:6]
        with cube_lock(cube, run_id), warnings.catch_warnings():
            # Zarr warns about the cube's non-Zarr folders and files (catalog/, stats.json).
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            doc = update_cube_stats(cube)
            zarr.consolidate_metadata(str(cube))
        if json_out:
            console.print_json(json.dumps(doc))
            return
        print_stats(doc)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"


def print_stats(doc: Mapping[str, Any]) -> None:
    """Print per-sensor band tables (split ``all``) and the class frequencies of every split."""
    splits = ", ".join(f"{k} {v}" for k, v in doc["splits"].items())
    console.print(f"tiles: {splits}", highlight=False)
    for name, sensor in doc["sensors"].items():
        table = Table(title=f"{name} (valid pixels, all splits)")
        for col in ("band", "count", "mean", "std", "min", "p1", "p50", "p99", "max"):
            table.add_column(col, justify="left" if col == "band" else "right")
        for band in sensor["bands"]:
            s = sensor["splits"]["all"][band]
            table.add_row(
                band,
                str(s["count"]),
                *(_fmt(s[k]) for k in ("mean", "std", "min", "p1", "p50", "p99", "max")),
            )
        console.print(table)
    for source, per_split in doc["labels"].items():
        table = Table(title=f"labels/{source}: pixel fraction per class")
        names = list(per_split["all"]["classes"])
        table.add_column("class")
        for split in per_split:
            table.add_column(split, justify="right")
        for cls in names:
            table.add_row(
                cls, *(f"{per_split[s]['classes'][cls]['fraction']:.4f}" for s in per_split)
            )
        console.print(table)
