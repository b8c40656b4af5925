"""``eoforge archive index``: add real product deliveries to an offline archive."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows._cli_common import console, reports_errors

__all__ = ["register_index"]

_HELP = (
    "Add the product deliveries under SRC_DIR to the archive in ARCHIVE_DIR.\n\n"
    "Found recursively: EnMAP L2A deliveries as DLR ships them (folders or .zip files with "
    "<product>-SPECTRAL_IMAGE.TIF, -METADATA.XML and the QL_* layers), and GeoTIFF/COG scenes "
    "described by an eoforge-sidecar.yaml in their folder:\n\n"
    "\b\n"
    "    collection: my-landsat\n"
    "    sensor: landsat-c2-l2\n"
    "    scenes:\n"
    "      - id: LC09_L2SP_193026_20240601\n"
    "        datetime: 2024-06-01T10:02:11Z\n"
    "        cloud_cover: 12.5\n"
    "        assets:\n"
    "          red: {file: LC09_SR_B4.TIF, bands: \\[red]}\n\n"
    "Files are copied to data/<collection>/<item>/ (GeoTIFFs that are not COGs are converted); "
    "items go to stac/items/<collection>.ndjson. Running again adds only new items."
)


def register_index(app: typer.Typer) -> None:
    """Add the ``index`` command to the ``archive`` group."""

    @app.command("index", help=_HELP)
    @reports_errors
    def index(
        src_dir: Annotated[
            Path, typer.Argument(help="Folder holding the deliveries (searched recursively).")
        ],
        archive_dir: Annotated[
            Path, typer.Argument(help="Archive folder to add to (created if absent).")
        ],
        validate_with: Annotated[
            Path | None,
            typer.Option(
                "--validate-with",
                help="Local STAC JSON-schema folder; validate every new item and collection.",
            ),
        ] = None,
    ) -> None:
        from pipelines.archive.index import index_deliveries

        report = index_deliveries(src_dir, archive_dir, schemas_root=validate_with)
        console.print(
            f"indexed {len(report.added)} new item(s), kept {len(report.kept)} already in "
            f"{archive_dir}",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        for ref in report.added:
            console.print(f"  + {ref}", highlight=False, soft_wrap=True, markup=False)
        if report.converted_to_cog:
            console.print(
                f"converted {len(report.converted_to_cog)} GeoTIFF(s) to COG",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
        for dup in report.duplicates:
            console.print(
                f"  skipped duplicate {dup}", highlight=False, soft_wrap=True, markup=False
            )
