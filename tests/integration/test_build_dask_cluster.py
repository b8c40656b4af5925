"""A build through a real Dask cluster: ``dask scheduler`` + two ``dask worker`` processes.

Every process (scheduler, workers, the ``eoforge build --dask-address`` client) talks to the one
``prefect server start`` of the session, so no worker starts its own ephemeral API. The shard
tasks must run in the worker processes (their logs name every shard), the flow run must be
recorded by the server, and the cube and catalog must equal the session's reference build
(which ran on the default threaded LocalCluster) byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from _build_helpers import (
    DASK,
    BuildSession,
    Group,
    assert_same_cube,
    assert_same_rows,
    catalog_rows,
    digest_cube,
    http_post_json,
    process_group,
    run_build_cli,
    shared_build_session,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_WORKERS = 2
START_TIMEOUT_S = 120.0
#: Prefect's log line for a finished shard task, e.g. "Task run 'shard s00003 (2024-06)' - ...".
_SHARD_DONE = re.compile(r"Task run 'shard (s\d{5}) \([0-9-]+\)' - Finished in state Completed")


@pytest.fixture(scope="session")
def session(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSession]:
    with shared_build_session(tiny_archive, tmp_path_factory.mktemp("build-session")) as s:
        yield s


@contextlib.contextmanager
def dask_cluster(session: BuildSession, folder: Path) -> Iterator[tuple[str, list[Group]]]:
    """A scheduler and ``N_WORKERS`` single-threaded workers on 127.0.0.1; yields the address."""
    folder.mkdir()
    env = session.env()
    scheduler_file = folder / "scheduler.json"
    scheduler_argv = [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(scheduler_file)]  # fmt: skip
    with contextlib.ExitStack() as stack:
        scheduler = stack.enter_context(
            process_group(
                "dask scheduler",
                scheduler_argv,
                folder / "scheduler.log",
                env=env,
                cwd=folder,
            )
        )
        wait_for("the scheduler file", scheduler_file.is_file, [scheduler], START_TIMEOUT_S)
        address = str(json.loads(scheduler_file.read_text())["address"])
        assert address.startswith("tcp://127.0.0.1:")
        worker_argv = [DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                       "--host", "127.0.0.1", "--local-directory", str(folder)]  # fmt: skip
        workers = [
            stack.enter_context(
                process_group(
                    f"dask worker {i}",
                    [*worker_argv, "--name", f"worker-{i}"],
                    folder / f"worker-{i}.log",
                    env=env,
                    cwd=folder,
                )
            )
            for i in range(N_WORKERS)
        ]
        for worker in workers:

            def registered(w: Group = worker) -> bool:
                return w.log.is_file() and "Registered to:" in w.log.read_text(errors="replace")

            wait_for(f"{worker.name} to register", registered, [scheduler, *workers], 120.0)
        yield address, workers


def test_build_on_scheduler_and_two_worker_processes_equals_reference(
    session: BuildSession,
) -> None:
    recipe, cube = session.recipe("dask-cluster")
    with dask_cluster(session, session.work / "dask") as (address, workers):
        summary = run_build_cli(recipe, session.env(), session.work, "--dask-address", address)
        for worker in workers:
            worker.check_running()
        ran = [set(_SHARD_DONE.findall(w.log.read_text(errors="replace"))) for w in workers]

    assert summary["shards_built"] == summary["shards_total"] == session.summary["shards_total"]
    # The shard tasks ran in the worker processes, each on one worker, and both took part.
    expected = {r["shard_id"] for r in session.rows}
    assert set().union(*ran) == expected
    assert sum(len(r) for r in ran) == len(expected)
    assert all(ran), [sorted(r) for r in ran]
    # The session's Prefect server recorded the flow run, completed.
    runs = http_post_json(
        f"{session.api_url}/flow_runs/filter",
        {"flow_runs": {"name": {"any_": ["build-dask-cluster"]}}},
    )
    assert [(r["name"], r["state_type"]) for r in runs] == [("build-dask-cluster", "COMPLETED")]
    # Same cube and catalog as the reference build on the local threaded cluster.
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)
