"""A build is deterministic, and a killed build resumes to exactly the uninterrupted result.

One uninterrupted reference build per session (``_build_helpers.BuildSession``, against a real
``prefect server start``) is the oracle. Another build of the same recipe must give the same
decoded values for every array, the same bytes for every file of the cube outside the
run-specific ``catalog/`` and ``_eoforge/`` folders, and the same catalog rows. A build killed
with SIGKILL (the whole process group, as an OOM kill or a lost node does) must leave readers
only whole, committed shards whose pixels are already the final ones, no orphaned archive
servers, and a rerun must resume at the uncommitted shards and end with the reference cube.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from _build_helpers import (
    BuildSession,
    assert_same_cube,
    assert_same_positions,
    assert_same_rows,
    build_argv,
    catalog_rows,
    command_line,
    descendants,
    digest_cube,
    is_alive,
    process_group,
    run_build_cli,
    shared_build_session,
    wait_for,
)

from catalog.writer import committed_parts, finished_runs, read_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SHARDS = 10  # 19 tiles x 2 periods, 4 tiles per shard: 5 shards per period
N_ROWS = 38
KILL_TIMEOUT_S = 240.0
REAP_TIMEOUT_S = 15.0
#: The temporary folder ``pipelines.archive.serve`` stages the archive's STAC files in.
_SERVE_DIR = re.compile(re.escape(tempfile.gettempdir()) + r"/eoforge-serve-[A-Za-z0-9_]+")


@pytest.fixture(scope="session")
def session(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSession]:
    with shared_build_session(tiny_archive, tmp_path_factory.mktemp("build-session")) as s:
        yield s


def test_reference_build_covers_every_shard(session: BuildSession) -> None:
    summary, rows = session.summary, session.rows
    assert summary["shards_total"] == summary["shards_built"] == N_SHARDS
    assert summary["shards_skipped"] == 0
    assert summary["tiles"] == 19
    assert len(rows) == N_ROWS
    assert {r["shard_id"] for r in rows} == {f"s{i:05d}" for i in range(N_SHARDS)}
    assert {r["period_id"] for r in rows} == {"2024-06", "2024-07"}
    positions = [r["cube_position"] for r in rows]
    assert len(set(positions)) == N_ROWS
    assert finished_runs(session.reference) == [summary["run_id"]]


def test_two_builds_of_one_recipe_are_identical(session: BuildSession) -> None:
    recipe, cube = session.recipe("second")
    summary = run_build_cli(recipe, session.env(), session.work)
    assert summary["run_id"] != session.summary["run_id"]
    assert summary["shards_built"] == N_SHARDS
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)


@dataclass
class Killed:
    """What a killed build left: its descendants at the kill and the ones still alive after."""

    children: dict[int, str]
    survivors: dict[int, str]


def _kill_build_when(
    session: BuildSession, recipe: Path, name: str, ready: Callable[[], bool]
) -> Killed:
    """Start ``eoforge build``, SIGKILL its process group once ``ready()``, reap everything."""
    log = session.work / f"{name}.log"
    with process_group(
        f"eoforge build ({name})", build_argv(recipe), log, env=session.env(), cwd=session.work
    ) as build:
        children: dict[int, str] = {}
        try:
            wait_for(f"the kill point of {name}", ready, [build], KILL_TIMEOUT_S)
            children = {pid: command_line(pid) for pid in descendants(build.proc.pid)}
            os.killpg(build.proc.pid, signal.SIGKILL)
            build.proc.wait(timeout=30)
            deadline = time.monotonic() + REAP_TIMEOUT_S
            while any(is_alive(p) for p in children) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            survivors = {pid: cmd for pid, cmd in children.items() if is_alive(pid)}
            for pid in survivors:  # the build's own children: never leave them running
                os.kill(pid, signal.SIGKILL)
    assert build.proc.returncode == -signal.SIGKILL
    return Killed(children, survivors)


def _assert_servers_died_with_the_build(killed: Killed) -> None:
    commands = " ".join(killed.children.values())
    # The build serves the archive through child processes: they were running at the kill...
    assert "pipelines.archive.range_server" in commands
    assert "rustac serve" in commands
    # ... and none of them (nor anything else the build started) outlived it.
    assert killed.survivors == {}
    # A SIGKILL leaves the servers' staged STAC copies (their folder is in rustac's argv).
    for folder in sorted(set(_SERVE_DIR.findall(commands))):
        shutil.rmtree(folder, ignore_errors=True)


def _assert_readers_see_only_committed_shards(session: BuildSession, cube: Path) -> set[str]:
    """Readers see whole committed shards with their final pixels; returns the shard ids."""
    parts = committed_parts(cube)
    directory = cube / "catalog" / "parts"
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    # Nothing but committed parts has a visible name (a part being written is a dot-file).
    assert [n for n in names if n[0] != "."] == sorted(p.name for p in parts.values())
    rows = catalog_rows(cube)
    in_parts = sum(pq.ParquetFile(p).metadata.num_rows for p in parts.values())
    # A glob reader (pyarrow dataset: hidden files skipped) sees the same rows as the catalog.
    globbed = ds.dataset(directory, format="parquet").count_rows() if names else 0
    assert len(rows) == in_parts == globbed
    # They are exactly the reference's rows of those shards, whole shards only...
    shards = set(parts)
    assert_same_rows(rows, [r for r in session.rows if r["shard_id"] in shards])
    # ... and their pixels were on disk before the commit: already the final values.
    assert_same_positions(cube, session.reference, [r["cube_position"] for r in rows])
    assert finished_runs(cube) == []  # the killed run never finished
    return shards


def _assert_resumes_to_the_reference(
    session: BuildSession, recipe: Path, cube: Path, committed: set[str]
) -> None:
    # What zarr leaves when a writer dies between writing a chunk's temporary file and its
    # rename (seen once in CI after a random kill): the resumed build removes it.
    orphan = cube / "tiles" / "period" / "c" / f"0.{uuid.uuid4().hex}.partial"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half a chunk")
    summary = run_build_cli(recipe, session.env(), session.work)
    assert not orphan.exists()
    assert summary["shards_skipped"] == len(committed)
    assert summary["shards_built"] == N_SHARDS - len(committed)
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)
    # Every shard is committed once; the rerun re-committed the killed attempts' shards and
    # removed their temporary files.
    assert set(committed_parts(cube)) == {r["shard_id"] for r in session.rows}
    assert sorted(p.name for p in (cube / "catalog" / "parts").glob(".*")) == []
    assert finished_runs(cube) == [summary["run_id"]]


def test_killed_after_a_commit_resumes_to_the_reference(session: BuildSession) -> None:
    recipe, cube = session.recipe("killed-after-commit")
    parts = cube / "catalog" / "parts"

    def one_part_committed() -> bool:
        return parts.is_dir() and any(parts.glob("*.parquet"))

    killed = _kill_build_when(session, recipe, "killed-after-commit", one_part_committed)
    _assert_servers_died_with_the_build(killed)
    committed = _assert_readers_see_only_committed_shards(session, cube)
    assert 1 <= len(committed) < N_SHARDS
    _assert_resumes_to_the_reference(session, recipe, cube, committed)


def test_killed_before_any_commit_resumes_to_the_reference(session: BuildSession) -> None:
    recipe, cube = session.recipe("killed-before-commit")
    plans = cube / "_eoforge"

    def plan_written() -> bool:  # the cube exists and the shard tasks are being submitted
        return plans.is_dir() and any(plans.glob("plan-*.json"))

    killed = _kill_build_when(session, recipe, "killed-before-commit", plan_written)
    _assert_servers_died_with_the_build(killed)
    assert (cube / "zarr.json").is_file()
    assert read_records(cube).num_rows == 0
    assert _assert_readers_see_only_committed_shards(session, cube) == set()
    _assert_resumes_to_the_reference(session, recipe, cube, set())
