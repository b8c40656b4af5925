"""The cube lock: one holder at a time across processes, released when its holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zarr

from pipelines.lock import LOCK_WAIT_ENV, cube_lock, lock_path, read_holder
from pipelines.write import open_or_create_cube
from schemas.cube import CubeLayout, SensorLayout
from schemas.errors import ConflictError, InvalidInputError

_HOLD = textwrap.dedent(
    """
    import sys, time
    from pipelines.lock import cube_lock
    with cube_lock(sys.argv[1], "run-child"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
    """
)
ROOT = Path(__file__).resolve().parents[2]
LAYOUT = CubeLayout.for_recipe_like(
    [
        SensorLayout(
            name="sentinel-2-l2a",
            bands=("B04",),
            resolution_m=10.0,
            n_time=1,
            dtype="int16",
            nodata=-32768,
            scale_factor=1e-4,
            add_offset=0.0,
            units="1",
        )
    ],
    tile_size_m=240.0,
    tiles_per_shard=2,
)


def _hold(cube: Path, seconds: float) -> subprocess.Popen[str]:
    """A process that takes the lock of ``cube`` and holds it ``seconds``; returns once locked."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(cube), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def test_second_holder_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    cube = tmp_path / "cube"
    proc = _hold(cube, 60)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConflictError) as info, cube_lock(cube, "run-me", wait_s=0):
            pass
        assert time.monotonic() - t0 < 5
        message = str(info.value)
        assert info.value.exit_code == 4
        assert f"pid {proc.pid}" in message
        assert "run-child" in message
        assert LOCK_WAIT_ENV in message
        holder = read_holder(cube)
        assert holder is not None and holder.pid == proc.pid
    finally:
        _stop(proc)


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    cube = tmp_path / "cube"
    proc = _hold(cube, 1.0)
    try:
        with cube_lock(cube, "run-waiter", wait_s=60) as holder:
            assert holder.pid == os.getpid()
            assert read_holder(cube) == holder
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None and proc.stdout.read().strip() == "released"
    finally:
        _stop(proc)


def test_bounded_wait_then_conflict(tmp_path: Path) -> None:
    cube = tmp_path / "cube"
    proc = _hold(cube, 60)
    try:
        t0 = time.monotonic()
        with (
            pytest.raises(ConflictError, match=r"after waiting 0\.5 s"),
            cube_lock(cube, "run-me", wait_s=0.5),
        ):
            pass
        assert 0.4 < time.monotonic() - t0 < 10
    finally:
        _stop(proc)


def test_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    cube = tmp_path / "cube"
    proc = _hold(cube, 600)
    os.kill(proc.pid, signal.SIGKILL)
    _stop(proc)
    assert lock_path(cube).exists()  # the file stays; the lock went with the process
    with cube_lock(cube, "run-after-kill", wait_s=0) as holder:
        assert holder.run_id == "run-after-kill"


def test_wait_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cube = tmp_path / "cube"
    monkeypatch.setenv(LOCK_WAIT_ENV, "soon")
    with pytest.raises(InvalidInputError, match=LOCK_WAIT_ENV), cube_lock(cube, "r"):
        pass
    monkeypatch.setenv(LOCK_WAIT_ENV, "0.3")
    proc = _hold(cube, 60)
    try:
        with pytest.raises(ConflictError, match=r"after waiting 0\.3 s"), cube_lock(cube, "r"):
            pass
    finally:
        _stop(proc)


@pytest.mark.filterwarnings("ignore:Object at _eoforge is not recognized")
def test_lock_survives_creating_the_cube(tmp_path: Path) -> None:
    """The lock makes a new cube an empty group, so creating the cube keeps the lock file."""
    cube = tmp_path / "cube"
    with cube_lock(cube, "run-create") as holder:
        assert (cube / "zarr.json").exists()
        assert dict(zarr.open_group(str(cube), mode="r", use_consolidated=False).attrs) == {}
        inode = lock_path(cube).stat().st_ino
        open_or_create_cube(cube, LAYOUT, n_tiles_capacity=2)
        assert lock_path(cube).stat().st_ino == inode
        assert read_holder(cube) == holder
        assert dict(zarr.open_group(str(cube), mode="r", use_consolidated=False).attrs)
