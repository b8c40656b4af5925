"""A build of a cube another build holds fails at once, cleanly, naming the holder.

The lock is held here by a separate process (what a running build does through
``pipelines.lock.cube_lock``), so no second full build is needed: ``eoforge build`` on the locked
cube must exit with code 4 (ConflictError) and a one-line message naming the holder's pid and run
id, without a traceback, and without touching the cube.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _build_helpers import base_env, build_argv, write_recipe

from pipelines.lock import LOCK_WAIT_ENV, lock_path

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
_HOLD = textwrap.dedent(
    """
    import sys, time
    from pipelines.lock import cube_lock
    with cube_lock(sys.argv[1], "run-holder"):
        print("locked", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A cube whose lock another process holds; yields (cube, holder pid)."""
    cube = tmp_path / "cube.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(cube)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield cube, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_build_of_a_locked_cube_fails_with_conflict(
    held: tuple[Path, int], tiny_archive: Path, tmp_path: Path
) -> None:
    cube, pid = held
    recipe = write_recipe(tiny_archive, tmp_path / "recipe.yaml", cube)
    before = sorted(p.relative_to(cube).as_posix() for p in cube.rglob("*"))
    env = base_env(tmp_path / "prefect-home", None)
    env[LOCK_WAIT_ENV] = "1"
    proc = subprocess.run(
        build_argv(recipe),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-4000:])
    text = " ".join(proc.stderr.split())
    assert "is locked by build run run-holder" in text, proc.stderr[-4000:]
    assert f"pid {pid}" in text
    assert "after waiting 1 s" in text
    assert LOCK_WAIT_ENV in text
    # The build stopped before planning: nothing was added to the cube.
    assert sorted(p.relative_to(cube).as_posix() for p in cube.rglob("*")) == before
    assert lock_path(cube).exists()
