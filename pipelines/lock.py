"""The cube lock: two builds of one cube never interleave.

A build holds an OS file lock (``fcntl.flock``, exclusive) on ``<cube>/_eoforge/build.lock``
from before it plans until its run is recorded. The kernel drops the lock when the holding
process exits for any reason, SIGKILL and OOM kills included, so a dead build never leaves a
stale lock behind; the file itself may stay and means nothing on its own.

The holder writes a small JSON record (pid, host, run id, start time) into the lock file, so a
second build that finds the cube locked can say who holds it. A second build either fails at
once (``wait_s=0``, the default) or waits up to ``wait_s`` seconds for the lock, then fails with
a :class:`~schemas.errors.ConflictError` (exit code 4).

``flock`` locks are advisory and local to one host (on NFS they may not be honoured): builds of
one cube on shared storage from several hosts must be kept apart by the scheduler.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zarr

from schemas.errors import ConflictError, InvalidInputError

__all__ = ["LOCK_NAME", "LOCK_WAIT_ENV", "LockHolder", "cube_lock", "lock_path", "read_holder"]

#: The lock file, relative to the cube.
LOCK_NAME = "_eoforge/build.lock"
#: Environment variable with the default wait (seconds) for a locked cube.
LOCK_WAIT_ENV = "EOFORGE_LOCK_WAIT"
_POLL_S = 0.2

# The lock lives in ``_eoforge/`` from before the cube is created, so creating a new cube looks
# over a folder Zarr does not know and warns about it. That folder is eoforge's own: not news.
warnings.filterwarnings(
    "ignore",
    message="Object at _eoforge is not recognized as a component of a Zarr hierarchy",
    category=zarr.errors.ZarrUserWarning,
)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a cube's lock (as it wrote itself into the lock file)."""

    pid: int
    host: str
    run_id: str
    since: str

    def describe(self) -> str:
        """``"build run R (pid P on host H, since T)"``."""
        return f"build run {self.run_id} (pid {self.pid} on host {self.host}, since {self.since})"


def lock_path(cube: str | os.PathLike[str]) -> Path:
    """Path of the lock file of ``cube``."""
    return Path(cube) / LOCK_NAME


def read_holder(cube: str | os.PathLike[str]) -> LockHolder | None:
    """The holder record in the lock file (None if absent, empty or unreadable).

    The record says who took the lock last; whether it is still held only the lock tells.
    """
    try:
        data: Any = json.loads(lock_path(cube).read_text(encoding="utf-8"))
        return LockHolder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            run_id=str(data["run_id"]),
            since=str(data["since"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_wait() -> float:
    """The wait for a locked cube from ``EOFORGE_LOCK_WAIT`` (seconds; default 0)."""
    raw = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InvalidInputError(
            f"'{raw}' is not a number of seconds >= 0",
            LOCK_WAIT_ENV,
            f"set {LOCK_WAIT_ENV} to how long a build waits for a locked cube, e.g. 600",
        )
    return value


def _ensure_root_group(cube: Path) -> None:
    """Make a missing cube an empty Zarr v3 group before the lock file is put in it.

    Creating a cube where no group exists yet (``zarr.open_group(mode="w")``) clears its folder,
    lock file included, and a lock on a deleted file keeps nobody out. Over an empty group the
    build creates the cube in place instead. Opening with ``mode="a"`` never clears anything.
    """
    if not (cube / "zarr.json").exists():
        zarr.open_group(str(cube), mode="a", zarr_format=3)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _conflict(cube: str | os.PathLike[str], wait_s: float) -> ConflictError:
    holder = read_holder(cube)
    who = holder.describe() if holder else "another build (holder not recorded yet)"
    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
    kill = f"stop it (kill {holder.pid} on {holder.host}), " if holder else ""
    return ConflictError(
        f"the cube is locked by {who}{waited}",
        str(cube),
        f"wait for that build to finish, {kill}or let this build wait for the lock with "
        f"{LOCK_WAIT_ENV}=SECONDS; a lock of a dead process is released by the OS, "
        "never delete the lock file by hand",
    )


@contextlib.contextmanager
def cube_lock(
    cube: str | os.PathLike[str], run_id: str, *, wait_s: float | None = None
) -> Iterator[LockHolder]:
    """Hold the build lock of ``cube`` for the ``with`` block.

    Args:
        cube: Directory of the cube (created as an empty Zarr group if missing, with its
            ``_eoforge`` folder).
        run_id: Id of the build run taking the lock (recorded for the error message).
        wait_s: Seconds to wait for a locked cube; None: ``EOFORGE_LOCK_WAIT`` (default 0,
            fail at once).

    Yields:
        This process's holder record.

    Raises:
        ConflictError: Another build holds the lock (beyond ``wait_s``); the message names it.
    """
    wait = default_wait() if wait_s is None else max(0.0, float(wait_s))
    path = lock_path(cube)
    _ensure_root_group(Path(cube))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + wait
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                raise _conflict(cube, wait)
            time.sleep(min(_POLL_S, max(0.01, deadline - time.monotonic())))
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            run_id=run_id,
            since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        os.fsync(fd)
        try:
            yield holder
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
