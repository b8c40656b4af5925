"""``eoforge recipe ...``: validate recipes and print the JSON Schema (being written)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Validate recipes and export their JSON Schema.", no_args_is_help=True)
