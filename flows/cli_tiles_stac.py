"""``eoforge tiles serve|publish|export-stac``: the tile catalog as STAC (logic: catalog.stac)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from flows._cli_common import console, reports_errors
from flows.cli_archive_serve import _stop_on_signals

__all__ = ["register"]


class BackendChoice(StrEnum):
    """STAC API implementations ``tiles serve`` can start."""

    rustac = "rustac"
    pgstac = "pgstac"


_CubeArg = Annotated[Path, typer.Argument(help="Cube folder written by `eoforge build`.")]
_CubeHref = Annotated[
    str | None,
    typer.Option(
        "--cube-href",
        help="Href of the cube in the Items' assets (relative or a URL); default its file:// URI.",
    ),
]
_CollectionId = Annotated[
    str | None,
    typer.Option("--collection-id", help="Collection id; default the cube folder's name."),
]


def serve(
    cube: _CubeArg,
    port: Annotated[int, typer.Option("--port", help="API port; 0 picks a free one.")] = 0,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    backend: Annotated[
        BackendChoice,
        typer.Option(
            "--backend",
            help="rustac (in memory, fast start) or pgstac (stac-fastapi-pgstac over a "
            "throwaway PostgreSQL + PostGIS; CQL2 filters on cloud cover, split, labels).",
        ),
    ] = BackendChoice.rustac,
    cube_href: _CubeHref = None,
    collection_id: _CollectionId = None,
) -> None:
    """Serve CUBE's tiles as a STAC API (one Item per tile and period) until Ctrl-C.

    Search it with any STAC client, e.g. pystac-client. Ctrl-C or SIGTERM stops the server and
    exits with 0 (a signal during startup stops what already runs and exits with 130).
    """
    from catalog.stac_serve import serve_cube

    with _stop_on_signals() as stopper:
        server = serve_cube(
            cube,
            backend="pgstac" if backend is BackendChoice.pgstac else "rustac",
            host=host,
            port=port,
            cube_href=cube_href,
            collection_id=collection_id,
        )
        with server:
            console.print(f"STAC API ({backend.value}): {server.stac_url}", soft_wrap=True)
            console.print(
                f"Collection {escape(str(server.collection_id))}: {server.item_count} items",
                soft_wrap=True,
            )
            console.print("Serving; press Ctrl-C to stop.")
            stopper.serving = True
            stopper.wait()
        console.print("Stopped.")


def publish(
    cube: _CubeArg,
    pgstac: Annotated[
        str,
        typer.Option(
            "--pgstac",
            help="DSN of a database with pgstac installed, e.g. postgresql://user@host:5432/db; "
            "the password may come from PGPASSWORD (it is never logged).",
        ),
    ],
    cube_href: _CubeHref = None,
    collection_id: _CollectionId = None,
) -> None:
    """Upsert CUBE's Collection and Items into a pgstac database (publishing again is safe).

    Also makes eo:cloud_cover, eoforge:split and the label fields queryable with CQL2.
    """
    from catalog.stac_serve import publish_pgstac

    result = publish_pgstac(cube, pgstac, cube_href=cube_href, collection_id=collection_id)
    console.print(
        f"Published {result.item_count} items of collection {escape(result.collection_id)} "
        f"to {escape(result.where)}",
        soft_wrap=True,
    )
    console.print(f"Queryables: {escape(', '.join(result.queryables))}", soft_wrap=True)


def export_stac(
    cube: _CubeArg,
    output: Annotated[Path, typer.Argument(help="stac-geoparquet file to write (.parquet).")],
    ndjson: Annotated[
        Path | None, typer.Option("--ndjson", help="Also write the Items as NDJSON here.")
    ] = None,
    cube_href: _CubeHref = None,
    collection_id: _CollectionId = None,
) -> None:
    """Export CUBE's Items as stac-geoparquet (and NDJSON), with collection.json beside them."""
    from catalog.stac import write_stac_geoparquet

    path = write_stac_geoparquet(
        cube, output, cube_href=cube_href, collection_id=collection_id, ndjson_path=ndjson
    )
    console.print(f"Wrote {escape(str(path))}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``publish`` and ``export-stac`` to the ``tiles`` group."""
    app.command("serve")(reports_errors(serve))
    app.command("publish")(reports_errors(publish))
    app.command("export-stac")(reports_errors(export_stac))
