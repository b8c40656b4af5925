"""``eoforge schedule``: scheduled builds as Prefect deployments (see :mod:`flows.schedule`).

* ``eoforge schedule RECIPE --cron "0 3 * * *" | --interval SECONDS [--name NAME]`` registers the
  deployment and serves it in the foreground until Ctrl-C.
* ``eoforge schedule list [--json]`` lists the deployments of ``build-dataset`` and their schedules.
* ``eoforge schedule remove NAME`` deletes one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from flows._cli_common import console, reports_errors
from schemas.errors import InvalidInputError
from schemas.recipe import load_recipe

if TYPE_CHECKING:
    from flows.schedule import ScheduleInfo

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``schedule`` to the root command group."""

    @app.command("schedule")
    @reports_errors
    def schedule(
        target: list[str] = typer.Argument(  # noqa: B008
            ...,
            help="RECIPE to schedule, or 'list', or 'remove NAME'.",
            metavar="RECIPE|list|remove",
        ),
        cron: str | None = typer.Option(
            None, "--cron", help='Cron schedule (UTC), e.g. "0 3 * * *".'
        ),
        interval: float | None = typer.Option(None, "--interval", help="Seconds between builds."),
        name: str | None = typer.Option(
            None, "--name", help="Deployment name (default: the recipe file's stem)."
        ),
        json_out: bool = typer.Option(False, "--json", help="'list': print JSON."),
    ) -> None:
        """Build a recipe on a schedule (Prefect deployment, served here until Ctrl-C).

        A process work pool can run the deployment instead (see flows/schedule.py).
        """
        from flows.schedule import list_schedules, remove_schedule, serve_schedule

        verb, rest = target[0], target[1:]
        if verb == "list" and not rest:
            _print_list(list_schedules(), json_out)
            return
        if verb == "remove":
            if len(rest) != 1:
                raise InvalidInputError(
                    "'remove' takes one deployment name", "eoforge schedule remove", "give NAME"
                )
            remove_schedule(rest[0])
            console.print(f"removed schedule {rest[0]}", highlight=False)
            return
        if rest:
            raise InvalidInputError(
                f"unexpected arguments {rest}", "eoforge schedule", "give one RECIPE file"
            )
        recipe = Path(verb)
        load_recipe(recipe)  # a bad recipe fails here, before Prefect starts
        serve_schedule(recipe, cron=cron, interval=interval, name=name)


def _print_list(infos: list[ScheduleInfo], json_out: bool) -> None:
    if json_out:
        console.print_json(json.dumps([s.to_dict() for s in infos]))
        return
    table = Table(title="eoforge schedules (deployments of build-dataset)")
    for column in ("name", "schedule", "active", "recipe"):
        table.add_column(column)
    for s in infos:
        table.add_row(s.name, "; ".join(s.schedules) or "-", str(s.active), s.recipe)
    console.print(table)
