"""Scheduled builds: Prefect deployments of ``build_dataset``, one per recipe.

``eoforge schedule RECIPE --cron "0 3 * * *"`` (or ``--interval SECONDS``) registers a deployment
of the ``build-dataset`` flow whose one parameter is the recipe's absolute path, and serves it in
the foreground (``prefect.serve``) until Ctrl-C: the serving process polls the Prefect API for
due runs and runs each in a subprocess. Each scheduled build resumes the cube like ``eoforge
build`` and records a new catalog version when it finishes; the cube lock
(:mod:`pipelines.lock`) keeps a scheduled run and a manual build of one cube apart (the later
one fails with a ConflictError).

Instead of a long-running ``serve``, a process work pool can run the deployment: create the pool
(``prefect work-pool create eoforge --type process``), deploy the same flow to it
(``prefect deploy flows/build.py:build_dataset --pool eoforge --cron ... --param
recipe_path=/abs/recipe.yaml``) and start a worker (``prefect worker start --pool eoforge``) on a
machine with this repository installed.

Flow runs are meant to be named ``build-<recipe>-<scheduled start, UTC>`` (the deployment's
flow carries :func:`scheduled_run_name`), but the served runs observed with Prefect 3.8 are
named by ``flows.build``'s own ``build-<recipe>`` (the period is not in the name yet).
The flow's retries and timeout come from the recipe's
``execution`` section when it has ``retries`` / ``retry_delay_seconds`` / ``timeout_seconds``;
the current recipe schema (``schemas.recipe_parts.ExecutionConfig``) has none of them, so a
scheduled build runs once without a timeout, like ``eoforge build`` (shard tasks keep their own
retries for transient errors). Relative paths inside the recipe are taken from the directory the
serving process runs in, as for ``eoforge build``.

Needs a Prefect API that outlives the command (``PREFECT_API_URL`` of a ``prefect server start``
or Prefect Cloud): the schedule is stored there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flows.build import build_dataset
from flows.notify import flow_options
from schemas.errors import InvalidInputError, NotFoundError
from schemas.recipe import load_recipe

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

__all__ = [
    "FLOW_NAME",
    "ScheduleInfo",
    "list_schedules",
    "make_deployment",
    "remove_schedule",
    "scheduled_run_name",
    "serve_schedule",
]

#: Name of the flow every eoforge deployment runs.
FLOW_NAME = "build-dataset"
TAG = "eoforge"


def scheduled_run_name() -> str:
    """``build-<recipe stem>-<scheduled start, UTC, minutes>`` for the running flow run."""
    from prefect.runtime import flow_run

    stem = Path(str(flow_run.parameters.get("recipe_path", "recipe"))).stem
    start = flow_run.scheduled_start_time
    return f"build-{stem}-{start.strftime('%Y-%m-%dT%H%M')}"


def _flow_options(recipe_path: Path) -> dict[str, Any]:
    """Run name, retries, timeout and failure notification from the recipe's execution."""
    return {"flow_run_name": scheduled_run_name, **flow_options(load_recipe(recipe_path))}


def make_deployment(
    recipe: str | os.PathLike[str],
    *,
    cron: str | None = None,
    interval: float | None = None,
    name: str | None = None,
) -> RunnerDeployment:
    """The deployment of ``build_dataset`` for ``recipe`` on a cron or interval schedule.

    Args:
        recipe: The recipe YAML (validated here; stored as an absolute path).
        cron: A cron expression (``"0 3 * * *"``), UTC.
        interval: Seconds between runs.
        name: Deployment name (default: the recipe file's stem).

    Raises:
        InvalidInputError: Neither or both of ``cron`` and ``interval``, or a bad value.
    """
    if (cron is None) == (interval is None):
        raise InvalidInputError(
            "give exactly one schedule",
            "eoforge schedule",
            'pass --cron "0 3 * * *" or --interval SECONDS',
        )
    if interval is not None and interval <= 0:
        raise InvalidInputError(
            f"interval {interval:g} s is not positive", "--interval", "give seconds > 0"
        )
    if cron is not None:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron)
        except ValueError:
            raise InvalidInputError(
                f"'{cron}' is not a cron expression",
                "--cron",
                'write five fields: minute hour day month weekday, e.g. "0 3 * * *"',
            ) from None
    path = Path(recipe).resolve()
    flow_ = build_dataset.with_options(**_flow_options(path))
    deployment = flow_.to_deployment(
        name=name or path.stem,
        cron=cron,
        interval=timedelta(seconds=interval) if interval is not None else None,
        parameters={"recipe_path": str(path)},
        tags=[TAG],
        description=f"eoforge build of {path}",
        _sync=True,  # type: ignore[call-arg]
    )
    return cast("RunnerDeployment", deployment)


def serve_schedule(
    recipe: str | os.PathLike[str],
    *,
    cron: str | None = None,
    interval: float | None = None,
    name: str | None = None,
) -> None:
    """Register the deployment and serve it in the foreground until interrupted."""
    from prefect import serve

    serve(make_deployment(recipe, cron=cron, interval=interval, name=name))


@dataclass(frozen=True)
class ScheduleInfo:
    """One deployment of ``build-dataset`` as the Prefect API holds it."""

    name: str
    recipe: str
    schedules: list[str]
    active: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "recipe": self.recipe,
            "schedules": self.schedules,
            "active": self.active,
        }


def _describe(schedule: Any) -> str:
    cron = getattr(schedule, "cron", None)
    if cron is not None:
        tz = getattr(schedule, "timezone", None)
        return f"cron {cron}" + (f" ({tz})" if tz else "")
    interval = getattr(schedule, "interval", None)
    if interval is not None:
        return f"every {interval.total_seconds():g} s"
    rrule = getattr(schedule, "rrule", None)
    return f"rrule {rrule}" if rrule is not None else str(schedule)


def list_schedules() -> list[ScheduleInfo]:
    """Every deployment of ``build-dataset`` with its schedules, sorted by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))
        )
    found = [
        ScheduleInfo(
            name=d.name,
            recipe=str(d.parameters.get("recipe_path", "")),
            schedules=[_describe(s.schedule) for s in d.schedules if s.active],
            active=not d.paused,
        )
        for d in deployments
    ]
    return sorted(found, key=lambda s: s.name)


def remove_schedule(name: str) -> None:
    """Delete the deployment ``name`` of ``build-dataset`` (its schedule and future runs).

    Raises:
        NotFoundError: No such deployment.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            raise NotFoundError(
                f"no deployment '{name}' of {FLOW_NAME}",
                "eoforge schedule remove",
                "run 'eoforge schedule list' for the names",
            ) from None
        client.delete_deployment(deployment.id)
