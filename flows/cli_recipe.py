"""``eoforge recipe ...``: validate recipes and print or write their JSON Schema."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape

from flows._cli_common import console, err_console, reports_errors
from schemas.errors import InvalidInputError
from schemas.recipe import load_recipe, recipe_json_schema_text

__all__ = ["app"]

app = typer.Typer(help="Validate recipes and export their JSON Schema.", no_args_is_help=True)


@app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="Recipe files (YAML).", show_default=False)],
    show: Annotated[
        bool,
        typer.Option("--show", help="Print each valid recipe with every default filled in (YAML)."),
    ] = False,
) -> None:
    """Check recipes without any I/O beyond reading them; name the offending field if not valid.

    Exits with 0 when every file is valid and 2 when any is not.
    """
    failed = 0
    for file in files:
        try:
            recipe = load_recipe(file)
        except InvalidInputError as exc:
            failed += 1
            # escape: messages contain brackets (sensors[1], [west, south, ...]) rich would eat
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            continue
        periods = recipe.periods()
        console.print(
            f"[green]ok:[/] {escape(str(file))}: '{recipe.name}', {len(recipe.sensors)} sensor(s), "
            f"{len(periods)} period(s) {periods[0].id}..{periods[-1].id}, "
            f"tile {recipe.grid.tile_size} m",
            highlight=False,
            soft_wrap=True,
        )
        if show:
            dumped = recipe.model_dump(mode="json", exclude_none=True)
            sys.stdout.write(yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True))
    if failed:
        raise typer.Exit(code=InvalidInputError.exit_code)


@app.command("schema")
@reports_errors
def schema(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the schema to this file instead of printing it.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Print the recipe JSON Schema (for editors), or write it with --output."""
    text = recipe_json_schema_text()
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(
            f"cannot write the schema: {exc.strerror}", str(output), "choose a writable path"
        ) from None
    console.print(f"wrote {escape(str(output))}", highlight=False)
