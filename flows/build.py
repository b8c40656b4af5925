"""The ``build_dataset`` Prefect flow: plan -> one task per shard (on Dask) -> finish.

Thin wiring only: pixel work is :func:`pipelines.shard.build_shard`, writing is
:func:`pipelines.write.write_shard`, committing is :class:`catalog.writer.CatalogWriter`. Tasks
receive the plan's path and a shard id, never arrays. A shard's catalog rows are committed only
after its chunks are written, so a killed build leaves no half-visible tile, and a rerun skips
the shards already committed.

Execution: tasks run on Dask through ``prefect-dask``: the recipe's (or ``--dask-address``)
scheduler when given, else a ``LocalCluster``. The local cluster uses worker threads in this
process by default (GDAL and numpy release the GIL); a process-based cluster would start one
ephemeral Prefect API per worker unless ``PREFECT_API_URL`` points at a running Prefect server.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr
from prefect import flow, task
from prefect.client.schemas.objects import State, TaskRun
from prefect_dask.task_runners import DaskTaskRunner

from catalog.state import CubeState, cube_state
from catalog.writer import CatalogWriter, read_records
from flows.card import write_dataset_card
from flows.notify import flow_options
from flows.runlog import run_log
from flows.stats import update_cube_stats
from pipelines._warp import redact_href
from pipelines.archive.serve import serve_archive
from pipelines.grid import TileGrid
from pipelines.increment import CurrentRow, inputs_digest, reconcile, settings_digest
from pipelines.lock import cube_lock
from pipelines.plan import BuildPlan, cube_layout, make_plan
from pipelines.shard import build_shard
from pipelines.splits import leakage_report, split_warnings
from pipelines.write import (
    check_cube_layout,
    open_or_create_cube,
    remove_orphaned_partials,
    tile_capacity,
    write_shard,
)
from schemas.cube import CubeLayout
from schemas.errors import DEBUG_ENV, EoforgeError, InvalidInputError, TransientError
from schemas.recipe import Recipe, load_recipe
from schemas.sensors import ARCHIVE_PREFIX

__all__ = ["BuildSummary", "build_dataset", "run_build"]

logger = logging.getLogger(__name__)

PLAN_DIR = "_eoforge"


class _DaskCommNoise(logging.Filter):
    """One warning line instead of a traceback for Dask's benign lost-connection messages.

    ``distributed`` logs a full traceback when one worker heartbeat cannot reach a busy
    scheduler (it tries again on the next beat) and when a batched stream finds its comm
    already closed while the cluster shuts down at the end of a build. Neither fails the
    build; a traceback in the output would say otherwise. Other records pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        heartbeat = record.getMessage().startswith(
            "Failed to communicate with scheduler during heartbeat"
        )
        closed = exc is not None and type(exc).__name__ == "CommClosedError"
        if heartbeat or closed:
            what = (
                "a worker heartbeat missed the scheduler (retried on the next beat)"
                if heartbeat
                else f"{record.getMessage()} (connection closed while shutting down)"
            )
            record.msg = "%s: %s"
            record.args = (what, exc.__class__.__name__ if exc else "")
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _ExpectedErrorTraceback(logging.Filter):
    """Drop the traceback Prefect logs for an eoforge error.

    Such an error (a refused recipe change, a locked cube, an unreachable catalog) carries its
    own what/where/fix message, which the CLI prints once; Prefect's flow and task loggers would
    add a traceback to the same news. Other exceptions (bugs) keep theirs, and
    ``EOFORGE_DEBUG=1`` (``eoforge --debug``) keeps them all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, EoforgeError) and not os.environ.get(DEBUG_ENV):
            record.exc_info = None
            record.exc_text = None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    _prefect_logger = logging.getLogger(_name)
    if not any(isinstance(f, _ExpectedErrorTraceback) for f in _prefect_logger.filters):
        _prefect_logger.addFilter(_ExpectedErrorTraceback())

for _name in ("distributed.worker", "distributed.batched", "distributed.core"):
    _dask_logger = logging.getLogger(_name)
    if not any(isinstance(f, _DaskCommNoise) for f in _dask_logger.filters):
        _dask_logger.addFilter(_DaskCommNoise())


def _retry_transient(task_: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: retry only :class:`TransientError` (never bad input)."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


@task(
    name="build-shard",
    retries=3,
    retry_delay_seconds=[1, 5, 20],
    retry_condition_fn=_retry_transient,
    task_run_name="shard {shard_id} ({period_id})",
)
def build_shard_task(
    plan_path: str, cube: str, shard_id: str, period_id: str, run_id: str
) -> dict[str, Any]:
    """Compute, write and commit one shard; returns a small summary (no arrays)."""
    plan = BuildPlan.from_json(Path(plan_path).read_text())
    with _disk_errors(cube):
        return _build_shard_task(plan, cube, shard_id, run_id)


def _build_shard_task(plan: BuildPlan, cube: str, shard_id: str, run_id: str) -> dict[str, Any]:
    shard_task = plan.shard(shard_id)
    # Never through consolidated metadata: a rerun may have grown the tile axis since.
    group = zarr.open_group(cube, mode="r+", use_consolidated=False)
    layout = CubeLayout.from_root_attrs(dict(group.attrs))
    built = build_shard(plan, shard_task)
    settings = settings_digest(plan)
    period = plan.period(shard_task.period_id)
    grid = plan.grid()
    inputs = {
        (tid, period.id): inputs_digest(plan, grid.tile_from_id(tid), period, settings)
        for tid in shard_task.tile_ids
    }
    write_shard(
        group,
        layout,
        built.shard,
        built.results,
        labels=built.writer_labels(),
        period_id=shard_task.period_id,
    )
    CatalogWriter(cube).commit_shard(shard_id, built.records, run_id, inputs)
    return {
        "shard": shard_id,
        "period": shard_task.period_id,
        "tiles": len(built.records),
        "stacks": sum(len(v) for v in built.results.values()),
        "skipped": [
            {"tile": s.tile_id, "sensor": s.sensor, "item": s.item_id, "reason": s.reason}
            for s in built.skipped
        ],
    }


@dataclass
class BuildSummary:
    """What a build did (printed by the CLI, written to the run record)."""

    recipe: str
    cube: str
    run_id: str
    tiles: int = 0
    shards_total: int = 0
    shards_built: int = 0
    shards_skipped: int = 0
    positions: int = 0
    bytes_on_disk: int = 0
    seconds: float = 0.0
    searches: list[str] = field(default_factory=list)
    skipped_scenes: list[dict[str, str]] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    leakage: dict[str, Any] = field(default_factory=dict)
    label_flagged: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rows_unchanged: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


@contextlib.contextmanager
def _catalog_urls(recipe: Recipe) -> Iterator[dict[str, str]]:
    """Serve every ``archive:PATH`` catalog of the recipe on free loopback ports."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, str] = {}
        urls: dict[str, str] = {}
        for cfg in recipe.sensors:
            if not cfg.catalog.startswith(ARCHIVE_PREFIX):
                continue
            root = str(Path(cfg.catalog[len(ARCHIVE_PREFIX) :]).resolve())
            if root not in servers:
                srv = stack.enter_context(serve_archive(root))
                servers[root] = srv.stac_url
            urls[cfg.id.value] = servers[root]
        yield urls


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _task_runner(recipe: Recipe, dask_address: str | None) -> DaskTaskRunner:
    address = dask_address or recipe.execution.dask_address
    if address:
        return DaskTaskRunner(address=address)
    workers = recipe.execution.workers or 1
    threads = recipe.execution.threads_per_worker or 2
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": threads,
            "processes": False,
            "dashboard_address": None,
        }
    )


def _flow_run_name() -> str:
    """``build-<recipe>``; runs of a deployment (schedules) add their scheduled start (UTC)."""
    from prefect.runtime import deployment, flow_run

    params = flow_run.parameters
    name = f"build-{Path(str(params.get('recipe_path', 'recipe'))).stem}"
    start = flow_run.scheduled_start_time if deployment.id else None
    return f"{name}-{start:%Y%m%dT%H%MZ}" if start is not None else name


@flow(name="build-dataset", flow_run_name=_flow_run_name, log_prints=False)
def build_dataset(
    recipe_path: str, dask_address: str | None = None, output: str | None = None
) -> dict[str, Any]:
    """Build the cube and tile catalog a recipe describes, or add what is new to it.

    A rerun on an existing cube is incremental (:mod:`pipelines.increment`): new periods, new
    tiles and tiles whose source scenes changed are built at new cube positions, the rest is
    left untouched, and the run becomes a new catalog version with a manifest of the changes.

    Args:
        recipe_path: Path of the recipe YAML.
        dask_address: Address of a running Dask scheduler (overrides the recipe).
        output: Cube path or URL (overrides ``output.path``: how to ask for a new cube).

    Returns:
        The :class:`BuildSummary` as a dict.
    """
    recipe = _with_output(load_recipe(recipe_path), output).resolve_paths(Path.cwd())
    return _run(recipe, dask_address)


def _with_output(recipe: Recipe, output: str | None) -> Recipe:
    if output is None:
        return recipe
    return recipe.model_copy(update={"output": recipe.output.model_copy(update={"path": output})})


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def _disk_errors(cube: str | Path) -> Iterator[None]:
    """Turn a full disk (or quota) into one clear, resumable error."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise InvalidInputError(
            f"the disk of the cube is full ({exc.strerror})",
            where=str(cube),
            fix="free space (or raise the quota), or build to another output.path; then run the "
            "build again: it resumes at the first uncommitted shard",
        ) from exc


def _check_writable(cube: Path) -> None:
    """Refuse an output path that cannot hold a cube, before anything is written."""
    if "://" in str(cube):
        return  # object stores: checked by the first write
    probe = cube
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidInputError(
            f"cannot write the cube here: {probe} is a file, not a folder",
            where=str(cube),
            fix="choose an output.path (or --output) inside a folder",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"cannot write the cube here: no write permission in {probe}",
            where=str(cube),
            fix="choose an output.path (or --output) in a folder you can write to",
        )


def _run(recipe: Recipe, dask_address: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    cube = Path(recipe.output.path)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    _check_writable(cube)
    # A refused layout change leaves the cube untouched, its lock file included.
    check_cube_layout(cube, cube_layout(recipe))
    created = not cube.exists()
    try:
        # One build per cube at a time, held until the run is recorded (see pipelines.lock).
        with _disk_errors(cube), cube_lock(cube, run_id), run_log(cube, run_id):
            return _run_locked(recipe, dask_address, cube, run_id, t0)
    except BaseException:
        # A new cube that failed before its first commit (unreachable catalog, bad labels...)
        # holds nothing worth keeping: leave no empty skeleton behind.
        parts = cube / "catalog" / "parts"
        if created and not (parts.is_dir() and any(parts.glob("*.parquet"))):
            shutil.rmtree(cube, ignore_errors=True)
        raise


def _run_locked(
    recipe: Recipe, dask_address: str | None, cube: Path, run_id: str, t0: float
) -> dict[str, Any]:
    summary = BuildSummary(recipe=recipe.name, cube=str(cube), run_id=run_id)
    layout = cube_layout(recipe)
    check_cube_layout(cube, layout)  # before any search: a refused change costs nothing
    with _catalog_urls(recipe) as urls:
        full_plan = make_plan(recipe, urls)
        summary.searches = [s.search_summary for s in full_plan.sensors]
        summary.tiles = len({t for s in full_plan.shards for t in s.tile_ids})
        # Refuses a cube of another layout before anything is written.
        open_or_create_cube(cube, layout)
        # A killed run's chunk writes that never reached their rename (the lock is ours and no
        # worker of this run has started).
        orphans = remove_orphaned_partials(cube)
        if orphans:
            logger.info("removed %d unfinished chunk writes of an earlier run", len(orphans))
        state = cube_state(cube)
        plan, manifest, digests = reconcile(
            full_plan,
            [CurrentRow(t, p, d) for (t, p), d in state.current.items()],
            next_shard_index=state.next_shard_index,
            base_version=state.version,
        )
        logger.info("build plan %s", manifest.summary_line())
        summary.rows_unchanged = manifest.unchanged
        summary.manifest = manifest.to_dict()
        summary.shards_total = len(plan.shards)
        group = open_or_create_cube(cube, layout, n_tiles_capacity=plan.n_positions)
        summary.positions = tile_capacity(group)  # the whole tile axis, earlier runs' included
        plan_path = _write_plan(cube, run_id, plan)
        try:
            todo = _resumable(plan, state, digests)
            summary.shards_skipped = len(plan.shards) - len(todo)
            runner = _task_runner(recipe, dask_address)
            results = _submit_all(runner, str(plan_path), str(cube), todo, run_id)
        finally:
            # The plan holds the items' hrefs, signed URLs included: keep it only redacted.
            _redact_plan(plan_path)
    for r in results:
        summary.shards_built += 1
        summary.skipped_scenes.extend(r["skipped"])
    _split_and_label_summary(summary, cube, recipe)
    # Statistics of the current rows (stats.json + root attr), then the dataset card (README.md).
    stats = update_cube_stats(cube)
    write_dataset_card(cube, recipe=recipe, summary=summary.to_dict(), stats=stats, run_id=run_id)
    # Readers (xarray.open_zarr) open the cube in one request instead of one per array.
    zarr.consolidate_metadata(str(cube))
    summary.bytes_on_disk = _du(cube)
    summary.seconds = round(time.perf_counter() - t0, 2)
    CatalogWriter(cube).finish_run(run_id, summary.to_dict())
    return summary.to_dict()


def _write_plan(cube: Path, run_id: str, plan: BuildPlan) -> Path:
    """Write the plan the shard tasks read, readable by the owner only.

    Plans of earlier runs that were killed (the lock is held, so none is running) are redacted
    first: they hold item hrefs, which may be signed URLs carrying credentials.
    """
    plan_dir = cube / PLAN_DIR
    plan_dir.mkdir(parents=True, exist_ok=True)
    for stale in plan_dir.glob("plan-*.json"):
        _redact_plan(stale)
    path = plan_dir / f"plan-{run_id}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(plan.to_json())
    return path


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_href(value) if "://" in value and "?" in value else value
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


def _redact_plan(path: Path) -> None:
    """Rewrite a plan file without URL query strings (signatures, tokens), atomically.

    What is left is the run's provenance (item ids, self links, periods, shards), which the
    STAC export and the dataset card read.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_redacted(doc), sort_keys=True, separators=(",", ":")))
    tmp.chmod(0o644)
    tmp.replace(path)


def _resumable(plan: BuildPlan, state: CubeState, digests: dict[tuple[str, str], str]) -> list[Any]:
    """The plan's shards still to build: those an unfinished run committed are skipped.

    A pending part counts as done only if it holds exactly the shard's planned rows with the
    planned digests; any other pending part is set aside, so that no version adopts it.
    """
    planned = {s.id: s for s in plan.shards}
    done: set[str] = set()
    for shard_id in list(state.pending):
        task_ = planned.get(shard_id)
        want = (
            {(t, task_.period_id): digests[(t, task_.period_id)] for t in task_.tile_ids}
            if task_ is not None
            else None
        )
        if want is not None and state.pending[shard_id].rows == want:
            done.add(shard_id)
        else:
            state.set_aside(shard_id, "this build plans other rows for that shard")
    return [s for s in plan.shards if s.id not in done]


def _split_and_label_summary(summary: BuildSummary, cube: Path, recipe: Recipe) -> None:
    """Split counts, the leakage report, flagged tiles and split warnings over the whole cube."""
    table = read_records(cube)
    first: dict[str, dict[str, Any]] = {}
    # Rows sorted by position: a rebuilt row (append-only, so at a higher position) wins.
    columns = ["tile_id", "split", "label_flags", "multilabels"]
    for row in reversed(table.select(columns).to_pylist()):
        first.setdefault(row["tile_id"], row)
    splits = {tid: row["split"] for tid, row in first.items() if row["split"]}
    summary.splits = dict(sorted(Counter(splits.values()).items()))
    flagged: Counter[str] = Counter()
    for row in first.values():
        flagged.update(row["label_flags"] or ())
    summary.label_flagged = dict(sorted(flagged.items()))
    grid = TileGrid(float(recipe.grid.tile_size), (float(recipe.grid.tile_size),))
    tiles = [grid.tile_from_id(tid) for tid in sorted(splits)]
    # Per-class tile counts per split: a tile counts once for every class in its multi-labels.
    class_counts = {
        tid: {
            f"{source}:{name}": 1.0
            for source, names in (row["multilabels"] or [])
            for name in names
        }
        for tid, row in first.items()
        if tid in splits
    }
    summary.leakage = leakage_report(tiles, splits, class_counts).to_dict()
    summary.warnings = list(split_warnings(recipe.split, recipe.grid.tile_size))


def _submit_all(
    runner: DaskTaskRunner, plan_path: str, cube: str, todo: list[Any], run_id: str
) -> list[dict[str, Any]]:
    """Run the shard tasks on Dask through ``runner`` and wait (a failure fails the build).

    The runner depends on the recipe and ``--dask-address``, known only inside the flow, so it
    is entered here rather than given to ``@flow`` (whose default runner is Prefect's thread pool).
    """
    if not todo:
        return []
    with runner:
        futures = [
            runner.submit(
                build_shard_task,
                parameters={
                    "plan_path": plan_path,
                    "cube": cube,
                    "shard_id": s.id,
                    "period_id": s.period_id,
                    "run_id": run_id,
                },
            )
            for s in todo
        ]
        results = []
        for done, future in enumerate(futures, start=1):
            result = future.result()
            results.append(result)
            logger.info(
                "shard %s done (%d/%d): %d tiles, %d scenes skipped",
                result["shard"],
                done,
                len(futures),
                result["tiles"],
                len(result["skipped"]),
            )
        return results


def run_build(
    recipe_path: str | os.PathLike[str],
    dask_address: str | None = None,
    output: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run :func:`build_dataset` (what ``eoforge build`` calls).

    The recipe is validated before Prefect starts, so a bad recipe fails fast with the field;
    its ``execution`` section sets the flow's retries, timeout and failure notification.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API needs ~10-20 s on 2 busy cores; Prefect's default wait (20 s) is short.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    recipe = load_recipe(recipe_path)
    flow_ = build_dataset.with_options(**flow_options(recipe))
    out = None if output is None else str(output)
    result: dict[str, Any] = flow_(str(recipe_path), dask_address, out)
    return result
