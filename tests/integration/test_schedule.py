"""``eoforge schedule``: a served deployment of build_dataset runs a build on a real Prefect API.

A real ``prefect server start`` holds the deployment; ``eoforge schedule RECIPE --cron ...`` serves
it in a subprocess; a run triggered through the API (as the schedule would) builds the tiny
archive's recipe and records a catalog version. ``schedule list`` shows the deployment and
``schedule remove`` deletes it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from _build_helpers import EOFORGE, base_env, prefect_server, process_group, wait_for, write_recipe

from catalog import open_catalog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "tiny-nightly"
CRON = "0 3 1 1 *"  # once a year: no run falls due on its own during the test
RUN_TIMEOUT_S = 360.0


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EOFORGE, "schedule", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _deployment_exists(env: dict[str, str], cwd: Path) -> bool:
    proc = _cli(env, cwd, "list", "--json")
    return proc.returncode == 0 and NAME in proc.stdout


def test_served_schedule_runs_a_build(tiny_archive: Path, tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    home.mkdir()
    cube = tmp_path / "cube.zarr"
    recipe = write_recipe(tiny_archive, tmp_path / "tiny.yaml", cube)
    with prefect_server(home, tmp_path / "server.log") as api_url:
        env = base_env(home, api_url)
        os.environ["PREFECT_API_URL"] = api_url  # for this process's client below
        try:
            argv = [EOFORGE, "schedule", str(recipe), "--cron", CRON, "--name", NAME]
            with process_group(
                "eoforge schedule", argv, tmp_path / "serve.log", env=env, cwd=tmp_path
            ) as serve:
                wait_for("the deployment", lambda: _deployment_exists(env, tmp_path), [serve], 120)
                listed = json.loads(_cli(env, tmp_path, "list", "--json").stdout)
                assert listed == [
                    {
                        "name": NAME,
                        "recipe": str(recipe.resolve()),
                        "schedules": [f"cron {CRON}"],
                        "active": True,
                    }
                ], listed
                # Prefect reads its settings once per process: an earlier test in the same
                # session may have fixed another API URL, so pin this server's explicitly.
                from prefect.settings import PREFECT_API_URL, temporary_settings

                with temporary_settings(updates={PREFECT_API_URL: api_url}):
                    state = _trigger_and_wait(serve_check=serve.check_running)
                assert state == "COMPLETED", serve.tail(80)
            versions = open_catalog(cube).versions()
            assert len(versions) == 1
            assert versions[0].rows_added > 0

            removed = _cli(env, tmp_path, "remove", NAME)
            assert removed.returncode == 0, removed.stderr
            assert json.loads(_cli(env, tmp_path, "list", "--json").stdout) == []
            missing = _cli(env, tmp_path, "remove", NAME)
            assert missing.returncode == 3 and "no deployment" in missing.stderr
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def _trigger_and_wait(serve_check: object) -> str:
    """Start a run of the deployment through the API; wait (bounded) for a final state."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"build-dataset/{NAME}")
        run = client.create_flow_run_from_deployment(deployment.id)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                name = client.read_flow_run(run.id).name
                # Named after the recipe and the run's scheduled start (UTC).
                assert re.fullmatch(r"build-tiny-\d{8}T\d{4}Z", name), name
                return str(state.type.value)
            if callable(serve_check):
                serve_check()
            assert time.monotonic() < deadline, f"flow run still {state} after {RUN_TIMEOUT_S} s"
            time.sleep(1.0)
