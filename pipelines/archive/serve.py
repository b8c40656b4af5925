"""Serve an offline archive on loopback: a STAC API over its items and a range server for its COGs.

``serve_archive(root)`` starts, in this order:

1. the range server of :mod:`pipelines.archive.range_server` for ``root/data``, in a child
   process, on a free port;
2. copies of the archive's collections and items in a temporary folder, with every relative
   asset href rewritten to ``<data_url>/<href>`` (``schemas.archive``: hrefs are relative to the
   archive root), so clients read the COGs through real HTTP range requests;
3. a real STAC API over those copies: ``rustac serve`` (in-memory backend, the default) or
   stac-fastapi-pgstac over a throwaway PostgreSQL (``backend="pgstac"``, see
   :mod:`pipelines.archive.pgstac`).

Leaving the context stops everything in reverse order (SIGTERM, then SIGKILL after a grace
period) and removes the temporary files. Child servers run in their own session, so a Ctrl-C in a
terminal reaches only this process, which then stops them in order. If this process is killed
with SIGKILL, the children (and PostgreSQL) outlive it; nothing can stop them then.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from pipelines.archive.pgstac import serve_pgstac
from pipelines.archive.processes import loopback_opener, start_with_port_retry
from pipelines.archive.range_server import STATS_PATH
from pipelines.archive.staging import (
    ARCHIVE_SOURCE_PREFIX,
    StacFiles,
    archive_dir_from_source,
    check_archive,
    stage_stac_files,
)
from schemas.archive import DATA_DIR
from schemas.errors import InvalidInputError, NotFoundError

__all__ = [
    "ARCHIVE_SOURCE_PREFIX",
    "BACKENDS",
    "ArchiveServer",
    "Backend",
    "archive_dir_from_source",
    "check_archive",
    "rustac_executable",
    "serve_archive",
    "serve_range",
    "serve_rustac",
]

logger = logging.getLogger(__name__)

Backend = Literal["rustac", "pgstac"]
BACKENDS: tuple[Backend, ...] = ("rustac", "pgstac")


def rustac_executable() -> Path:
    """The ``rustac`` command installed beside this Python (or on PATH).

    Raises:
        NotFoundError: rustac is not installed.
    """
    beside = Path(sys.executable).parent / "rustac"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("rustac")
    if found is None:
        raise NotFoundError(
            "the rustac command is not installed",
            where=str(beside),
            fix="pip install 'rustac>=0.9,<0.10' into this environment",
        )
    return Path(found)


@contextlib.contextmanager
def serve_rustac(
    files: StacFiles, *, host: str, port: int, workdir: Path, timeout_s: float
) -> Iterator[str]:
    """Run ``rustac serve`` (in-memory backend) over staged files; yields the API's base URL."""
    exe = rustac_executable()
    hrefs = [str(p) for p in (*files.collections, *files.items)]

    def argv(chosen: int) -> list[str]:
        return [str(exe), "serve", *hrefs, "--addr", f"{host}:{chosen}"]

    child, url = start_with_port_retry(
        "rustac serve",
        argv,
        host=host,
        port=port,
        log_path=workdir / "rustac.log",
        timeout_s=timeout_s,
        cwd=workdir,
    )
    try:
        yield url
    finally:
        child.stop()


@contextlib.contextmanager
def serve_range(
    root: Path, *, host: str, port: int, workdir: Path, timeout_s: float
) -> Iterator[str]:
    """Run the range server for ``root/data`` in a child process; yields its base URL.

    A child process rather than a thread: GDAL holds the GIL in some calls (rasterio's open
    lists the folder of a ``/vsicurl`` file, for one), and a server thread in the reading
    process then cannot answer, so the read hangs.
    """

    def argv(chosen: int) -> list[str]:
        return [
            sys.executable, "-m", "pipelines.archive.range_server", str(root.resolve()),
            "--host", host, "--port", str(chosen), "--prefix", DATA_DIR,
        ]  # fmt: skip

    child, url = start_with_port_retry(
        "range server",
        argv,
        host=host,
        port=port,
        log_path=workdir / "range-server.log",
        ready_path=STATS_PATH,
        timeout_s=timeout_s,
    )
    try:
        yield url
    finally:
        child.stop()


#: Prefix of the temporary folders an :class:`ArchiveServer` stages STAC files and logs in.
WORKDIR_PREFIX = "eoforge-serve-"
#: The file naming a workdir's owner process: ``{"pid": ..., "start": ..., "ns": ...}``.
_OWNER_FILE = "owner.json"


def _process_start(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, from /proc); ``None`` where unknown.

    Returns ``"zombie"`` for a process that has exited but was not reaped yet.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "zombie" if fields[0] == "Z" else fields[19]


def _pid_namespace() -> str | None:
    """This process's PID namespace (Linux); ``None`` where unknown.

    Pids are only judged where they mean the same process (containers may share a temporary
    folder).
    """
    try:
        return str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        return None


def _owner_alive(pid: int, start: str | None) -> bool:
    """Whether the process that created a workdir (``pid`` started at ``start``) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process with that pid: not ours to judge
    now = _process_start(pid)
    if now == "zombie":
        return False
    return start is None or now is None or now == start  # a reused pid started later


def new_workdir() -> Path:
    """A new temporary folder for an :class:`ArchiveServer`, with its owner recorded.

    First removes the folders whose owner process is gone (:func:`remove_stale_workdirs`): a
    build or ``eoforge archive serve`` killed with SIGKILL cannot remove its own.
    """
    remove_stale_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    owner = {"pid": os.getpid(), "start": _process_start(os.getpid()), "ns": _pid_namespace()}
    (workdir / _OWNER_FILE).write_text(json.dumps(owner))
    return workdir


def remove_stale_workdirs(parent: Path | None = None) -> list[Path]:
    """Remove this user's server workdirs whose owner process has exited; returns them.

    Only folders named ``eoforge-serve-*`` in ``parent`` (the system temporary folder) that
    carry an owner file are considered; a folder being created (no owner file yet), another
    user's, one made in another PID namespace, or one whose owner runs is left alone.
    """
    if os.name != "posix":  # os.kill(pid, 0) is not a liveness probe on Windows
        return []
    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    uid = os.getuid()
    namespace = _pid_namespace()
    for folder in root.glob(f"{WORKDIR_PREFIX}*"):
        try:
            if folder.stat().st_uid != uid:
                continue
            owner = json.loads((folder / _OWNER_FILE).read_text())
            pid, start = int(owner["pid"]), owner.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner.get("ns") != namespace or _owner_alive(pid, start):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        logger.debug("removed %s, left by process %d", folder, pid)
        removed.append(folder)
    return removed


@dataclass
class ArchiveServer:
    """An offline archive served on loopback; a context manager (see :func:`serve_archive`).

    Attributes:
        root: The archive folder.
        backend: ``"rustac"`` or ``"pgstac"``.
        host: Address both servers bind.
        port: STAC API port asked for (0: a free one).
        data_port: Range server port asked for (0: a free one).
        startup_timeout_s: How long each server may take to answer.
        stac_url: Base URL of the STAC API (set while running).
        data_url: Base URL of the range server; an archive href ``data/a/b.tif`` is served at
            ``<data_url>/data/a/b.tif`` (set while running).
        item_count: Items loaded into the STAC API.
        workdir: Temporary folder with the staged STAC files and the servers' logs.
    """

    root: Path
    backend: Backend = "rustac"
    host: str = "127.0.0.1"
    port: int = 0
    data_port: int = 0
    startup_timeout_s: float = 60.0
    stac_url: str = field(default="", init=False)
    data_url: str = field(default="", init=False)
    item_count: int = field(default=0, init=False)
    workdir: Path | None = field(default=None, init=False)
    _stack: contextlib.ExitStack | None = field(default=None, init=False, repr=False)

    def start(self) -> ArchiveServer:
        """Start the range server and the STAC API; returns ``self``.

        Raises:
            InvalidInputError: The archive folder is missing or malformed, or the backend unknown.
            NotFoundError: The backend's programs are not installed.
            TransientError: A server did not start (the message carries its log tail).
        """
        if self.backend not in BACKENDS:
            raise InvalidInputError(
                f"unknown STAC backend {self.backend!r}",
                where="backend",
                fix=f"use one of {', '.join(BACKENDS)}",
            )
        check_archive(self.root)
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            workdir = new_workdir()
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            self.workdir = workdir
            self.data_url = stack.enter_context(
                serve_range(
                    self.root,
                    host=self.host,
                    port=self.data_port,
                    workdir=workdir,
                    timeout_s=self.startup_timeout_s,
                )
            )
            files = stage_stac_files(self.root, self.data_url, workdir)
            self.item_count = files.item_count
            if self.backend == "pgstac":
                api = serve_pgstac(
                    files,
                    host=self.host,
                    port=self.port,
                    workdir=workdir,
                    timeout_s=self.startup_timeout_s,
                )
            else:
                api = serve_rustac(
                    files,
                    host=self.host,
                    port=self.port,
                    workdir=workdir,
                    timeout_s=self.startup_timeout_s,
                )
            self.stac_url = stack.enter_context(api)
            self._stack = stack.pop_all()
        logger.info(
            "serving %s (%d items) with %s at %s, COGs at %s (started in %.1f s)",
            self.root,
            self.item_count,
            self.backend,
            self.stac_url,
            self.data_url,
            time.monotonic() - started,
        )
        return self

    def close(self) -> None:
        """Stop the STAC API and the range server and remove temporary files (idempotent)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self.stac_url = self.data_url = ""

    def data_stats(self) -> dict[str, int]:
        """Counters of the range server: ``bytes_sent`` (body bytes) and ``requests``."""
        with loopback_opener().open(self.data_url + STATS_PATH, timeout=10.0) as response:
            stats: dict[str, int] = json.load(response)
        return stats

    def urls(self) -> dict[str, str]:
        """What ``eoforge archive serve --urls-file`` writes.

        Both URLs, the backend, and the temporary folder holding the servers' logs (removed when
        they stop, or by the next server started after this process was killed).
        """
        return {
            "stac_url": self.stac_url,
            "data_url": self.data_url,
            "backend": self.backend,
            "workdir": str(self.workdir or ""),
        }

    def __enter__(self) -> ArchiveServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_archive(
    root: Path | str,
    *,
    port: int = 0,
    data_port: int = 0,
    host: str = "127.0.0.1",
    backend: Backend = "rustac",
    startup_timeout_s: float = 60.0,
) -> ArchiveServer:
    """Prepare to serve an offline archive; use the result as a context manager.

    Example::

        with serve_archive(root) as srv:
            client = pystac_client.Client.open(srv.stac_url)

    Args:
        root: The archive folder (layout of :mod:`schemas.archive`).
        port: STAC API port; 0 picks a free one.
        data_port: Range server port; 0 picks a free one.
        host: Address both servers bind; loopback by default.
        backend: ``"rustac"`` (in-memory, starts in about a second) or ``"pgstac"``
            (stac-fastapi-pgstac over a throwaway PostgreSQL, the way Planetary Computer serves).
        startup_timeout_s: How long each server may take to answer.

    Returns:
        An :class:`ArchiveServer`, not yet started.
    """
    return ArchiveServer(
        root=Path(root),
        backend=backend,
        host=host,
        port=port,
        data_port=data_port,
        startup_timeout_s=startup_timeout_s,
    )
