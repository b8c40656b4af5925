"""What ``make demo`` runs: create the demo archive if missing, build ``recipes/demo.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

from flows._cli_common import console
from flows.cli_build import print_summary

DEMO_ARCHIVE = Path("data/archive-demo")
DEMO_RECIPE = Path("recipes/demo.yaml")


def run_demo(archive: Path = DEMO_ARCHIVE, recipe: Path = DEMO_RECIPE) -> dict[str, object]:
    """Generate the offline demo archive (once) and build the demo dataset from it.

    Everything runs on this machine: the archive is served on 127.0.0.1 by the build itself.

    Returns:
        The build summary.
    """
    from flows.build import run_build
    from pipelines.archive.create import create_archive
    from schemas.archive import MANIFEST

    if not (archive / MANIFEST).is_file():
        console.print(f"creating the offline demo archive in {archive} (about a minute) ...")
        manifest = create_archive(archive, preset="demo", seed=0, force=archive.exists())
        console.print(f"archive ready: {sum(manifest.items.values())} scenes")
    else:
        console.print(f"using the existing demo archive in {archive}")
    console.print(f"building {recipe} ...")
    summary = run_build(recipe)
    print_summary(summary)
    report = Path(str(summary["cube"])).with_suffix(".summary.json")
    report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(
        f"[bold green]done:[/] cube {summary['cube']} ({summary['tiles']} tiles per period, "
        f"{summary['positions']} tile-axis positions, {summary['bytes_on_disk'] / 1e6:.1f} MB) in "
        f"{summary['seconds']} s; tile catalog under {summary['cube']}/catalog; full "
        f"summary (leakage report per class) in {report}"
    )
    return summary
