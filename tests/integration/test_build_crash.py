"""SIGKILL at random moments: readers see only complete tiles, and the resume is the clean build.

One cube is built again and again, and each attempt is killed with SIGKILL (the whole process
group, as an OOM kill or a lost node does) at a random moment of ``[0, 1.2 x]`` the reference
build's duration, one in each of ``EOFORGE_CRASH_KILLS`` equal slices of it (seeded, so a
failure can be replayed). After every kill:

* the catalog (``open_catalog``, latest rows, pending parts included) holds only rows equal to
  the reference's rows of the same ids, and
* ``TileDataset`` over it returns, for every row, exactly the reference cube's sample.

Then one build runs to the end and must give the reference cube and catalog rows.

``make test`` kills ``EOFORGE_CRASH_KILLS`` times (default 3); ``make test-long`` sets 20.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _build_helpers import (
    BuildSession,
    assert_same_cube,
    assert_same_rows,
    build_argv,
    catalog_rows,
    descendants,
    digest_cube,
    is_alive,
    process_group,
    run_build_cli,
    shared_build_session,
)

from catalog import TileDataset, open_catalog
from pipelines.archive.serve import remove_stale_workdirs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = int(os.environ.get("EOFORGE_CRASH_KILLS", "3"))
SEED = int(os.environ.get("EOFORGE_CRASH_SEED", "20261123"))


@pytest.fixture(scope="session")
def session(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildSession]:
    with shared_build_session(tiny_archive, tmp_path_factory.mktemp("build-session")) as s:
        yield s


def _samples(cube: Path) -> dict[str, dict[str, Any]]:
    """Every sample of the cube's latest catalog rows, by record id (tensors as numpy)."""
    ds = TileDataset(cube)
    out = {}
    for i in range(len(ds)):
        sample = ds[i]
        out[str(sample["id"])] = {
            k: v.numpy() for k, v in sample.items() if hasattr(v, "numpy") and k != "transform"
        }
    return out


def _assert_same_samples(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) <= set(want), sorted(set(got) - set(want))
    for rid, sample in got.items():
        ref = want[rid]
        assert sorted(sample) == sorted(ref), rid
        for key, value in sample.items():
            if key == "index":  # the dataset index: rows differ in number mid-build
                continue
            np.testing.assert_array_equal(value, ref[key], err_msg=f"{rid} {key}")


def _kill_at(session: BuildSession, recipe: Path, delay_s: float, name: str) -> bool:
    """Start a build, SIGKILL its process group after ``delay_s``; False if it finished first."""
    log = session.work / f"{name}.log"
    with process_group(name, build_argv(recipe), log, env=session.env(), cwd=session.work) as b:
        deadline = time.monotonic() + delay_s
        while time.monotonic() < deadline and b.proc.poll() is None:
            time.sleep(0.05)
        if b.proc.poll() is not None:
            assert b.proc.returncode == 0, b.tail()
            return False
        children = descendants(b.proc.pid)
        os.killpg(b.proc.pid, signal.SIGKILL)
        b.proc.wait(timeout=30)
        for pid in children:  # nothing the build started may outlive it
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
    return True


def test_random_kills_leave_only_complete_tiles_and_resume_to_the_reference(
    session: BuildSession,
) -> None:
    recipe, cube = session.recipe("crash")
    reference_samples = _samples(session.reference)
    by_id = {r["id"]: r for r in session.rows}
    rng = random.Random(SEED)
    killed = 0
    checked = 0
    for i in range(KILLS):
        # Stratified: kill i falls in the i-th of KILLS equal slices of [0, 1.2 x duration].
        delay = 1.2 * session.seconds * (i + rng.random()) / KILLS
        killed += _kill_at(session, recipe, delay, f"crash-{i}")
        if not (cube / "catalog" / "parts").is_dir():
            continue  # killed before the first commit: nothing for a reader yet
        rows = open_catalog(cube).search().to_arrow().to_pylist()
        assert {r["id"] for r in rows} <= set(by_id), f"kill {i} at {delay:.1f} s"
        assert_same_rows(
            sorted(catalog_rows(cube), key=lambda r: r["id"]),
            sorted((by_id[r["id"]] for r in catalog_rows(cube)), key=lambda r: r["id"]),
        )
        if rows:
            _assert_same_samples(_samples(cube), reference_samples)
            checked += 1
    assert killed >= 1 and checked >= 1, (killed, checked)
    summary = run_build_cli(recipe, session.env(), session.work)
    # The killed builds could not remove their archive servers' workdirs; this build's server
    # removed every one whose owner is gone when it started.
    assert remove_stale_workdirs() == []
    assert summary["shards_built"] + summary["shards_skipped"] <= session.summary["shards_total"]
    assert_same_rows(catalog_rows(cube), session.rows)
    assert_same_cube(digest_cube(cube), session.digest)
