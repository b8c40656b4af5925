"""``eoforge archive ...``: create, serve and index offline archives."""

from __future__ import annotations

import typer

from flows.cli_archive_index import register_index as _register_index
from flows.cli_archive_serve import register as _register_serve

app = typer.Typer(help="Create, serve and index offline STAC archives.", no_args_is_help=True)
_register_serve(app)
_register_index(app)
