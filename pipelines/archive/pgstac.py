"""Serve an archive the way Planetary Computer does: stac-fastapi-pgstac over PostgreSQL + PostGIS.

Everything is throwaway and local:

1. :class:`PostgresCluster` runs ``initdb`` in a fresh temporary folder and starts PostgreSQL with
   ``pg_ctl``, listening on ``127.0.0.1`` only (TCP, password auth with a random password; the
   unix socket lives in the same folder), durability switched off since the data is disposable.
   PostgreSQL refuses to run as root, so when this process is root the server commands run as the
   ``postgres`` system account through ``runuser`` and the folder is handed to that account.
2. :func:`load_pgstac` runs the pypgstac CLI: ``migrate`` (installs PostGIS and the pgstac schema),
   ``load collections``, ``load items`` and ``load_queryables`` (``eo:cloud_cover`` as a number,
   so CQL2 comparisons on it are numeric).
3. :func:`serve_pgstac` starts ``uvicorn stac_fastapi.pgstac.app:create_app --factory`` on a free
   loopback port; the connection settings travel in the ``PG*`` environment variables that its
   ``PostgresSettings`` read, never on a command line.

Leaving :func:`serve_pgstac` stops uvicorn, then ``pg_ctl stop -m fast``, and removes the folder.
The pieces are reusable on their own (the tile catalog's ``eoforge tiles serve|publish`` use
them with their own queryables): :func:`run_pypgstac` runs pypgstac CLI steps,
:func:`serve_stac_fastapi_pgstac` serves an already loaded cluster.
Needs Debian's ``postgresql-15`` and ``postgresql-15-postgis-3`` (any PostgreSQL with PostGIS
works; set ``EOFORGE_PG_BINDIR`` to its ``bin`` folder) and the Python packages
``stac-fastapi-pgstac`` and ``pypgstac[psycopg]``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from pipelines.archive.processes import free_port, start_with_port_retry
from pipelines.archive.staging import StacFiles
from schemas.errors import NotFoundError, TransientError

__all__ = [
    "QUERYABLES",
    "PostgresCluster",
    "check_pgstac_requirements",
    "find_pg_bindir",
    "load_pgstac",
    "missing_pgstac_requirements",
    "run_pypgstac",
    "serve_pgstac",
    "serve_stac_fastapi_pgstac",
]

logger = logging.getLogger(__name__)

_DB_OS_USER = "postgres"
_DB_ROLE = "postgres"
_DB_NAME = "postgres"
_INSTALL_FIX = (
    "apt-get install postgresql-15 postgresql-15-postgis-3 (or set EOFORGE_PG_BINDIR), and "
    "pip install 'stac-fastapi-pgstac==7.2.*' 'pypgstac[psycopg]==0.10.*'"
)
_PYTHON_MODULES = ("stac_fastapi.pgstac", "pypgstac", "psycopg", "uvicorn")
#: Server settings for a disposable cluster: no durability, little memory.
_SERVER_OPTIONS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=32MB",
    "max_connections=30",
)
#: Queryables loaded into pgstac: typed so CQL2 compares numbers as numbers.
QUERYABLES: dict[str, object] = {
    "type": "object",
    "properties": {
        "eo:cloud_cover": {
            "description": "Scene cloud cover in percent",
            "type": "number",
            "minimum": 0,
            "maximum": 100,
        },
    },
}


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.parent.name)) or (0,)


def find_pg_bindir() -> Path | None:
    """The PostgreSQL ``bin`` folder: ``EOFORGE_PG_BINDIR``, the newest Debian one, or PATH's."""
    env = os.environ.get("EOFORGE_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").is_file() else None
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version_key)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _postgis_control(bindir: Path) -> Path | None:
    pg_config = bindir / "pg_config"
    if not pg_config.is_file():
        return None
    try:
        out = subprocess.run(
            [str(pg_config), "--sharedir"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    control = Path(out.stdout.strip()) / "extension" / "postgis.control"
    return control if control.is_file() else None


def missing_pgstac_requirements() -> list[str]:
    """What the pgstac backend needs and this machine lacks; empty when it can run."""
    missing: list[str] = []
    bindir = find_pg_bindir()
    if bindir is None:
        missing.append("PostgreSQL server binaries (initdb, pg_ctl)")
    elif _postgis_control(bindir) is None:
        missing.append(f"PostGIS extension for the PostgreSQL in {bindir}")
    missing.extend(
        f"Python module {name}"
        for name in _PYTHON_MODULES
        if importlib.util.find_spec(name) is None
    )
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            missing.append("runuser (PostgreSQL will not run as root)")
        try:
            pwd.getpwnam(_DB_OS_USER)
        except KeyError:
            missing.append(f"the {_DB_OS_USER!r} system account (PostgreSQL will not run as root)")
    return missing


def _as_db_user(argv: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _DB_OS_USER, "--", *argv]
    return list(argv)


def _run(
    argv: Sequence[str], log: Path, *, timeout_s: float, env: dict[str, str] | None = None
) -> int:
    """Run a short command with its output appended to ``log`` (never a pipe: servers inherit)."""
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            return subprocess.run(
                list(argv), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                env=env, timeout=timeout_s, check=False,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            return 124


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


class PostgresCluster:
    """A throwaway PostgreSQL cluster on loopback; a context manager.

    Args:
        host: Address to listen on (loopback only by default).
        port: Port; 0 picks a free one, retried if another process takes it first.
        bindir: PostgreSQL ``bin`` folder; found with :func:`find_pg_bindir` when ``None``.
        timeout_s: Startup and shutdown timeout.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bindir: Path | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.user = _DB_ROLE
        self.database = _DB_NAME
        self.password = secrets.token_urlsafe(18)
        self._bindir = bindir
        self._dir: Path | None = None
        self._running = False

    @property
    def dsn(self) -> str:
        """Connection URI without the password (give it via :meth:`env`'s ``PGPASSWORD``)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def env(self) -> dict[str, str]:
        """Environment for clients: this process's, plus the ``PG*`` connection variables."""
        return {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.database,
        }

    @property
    def log_path(self) -> Path:
        """The cluster's log file (server and ``pg_ctl`` output)."""
        if self._dir is None:
            raise RuntimeError("PostgresCluster is not started")
        return self._dir / "postgres.log"

    def start(self) -> PostgresCluster:
        """Create the cluster and start the server; returns ``self``.

        Raises:
            NotFoundError: PostgreSQL or PostGIS is not installed.
            TransientError: ``initdb`` or the server start failed (message has the log tail).
        """
        bindir = self._bindir or find_pg_bindir()
        if bindir is None:
            raise NotFoundError("PostgreSQL is not installed", where="initdb", fix=_INSTALL_FIX)
        self._dir = Path(tempfile.mkdtemp(prefix="eoforge-pg-"))
        try:
            self._init(bindir)
            self._start_server(bindir)
        except BaseException:
            self.stop()
            raise
        return self

    def _init(self, bindir: Path) -> None:
        assert self._dir is not None
        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            account = pwd.getpwnam(_DB_OS_USER)
            for path in (self._dir, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        argv = [
            str(bindir / "initdb"), "-D", str(self._dir / "data"), "-U", self.user,
            f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
            "--no-sync", "--no-locale", "-E", "UTF8",
        ]  # fmt: skip
        log = self._dir / "initdb.log"
        code = _run(_as_db_user(argv), log, timeout_s=self.timeout_s)
        pwfile.unlink()
        if code != 0:
            raise TransientError(
                f"initdb failed with code {code}: {_tail(log)}",
                where=str(self._dir),
                fix="check that the PostgreSQL account can write to the temporary folder",
            )

    def _start_server(self, bindir: Path) -> None:
        assert self._dir is not None
        tries = 5 if self.port == 0 else 1
        asked = self.port
        for attempt in range(1, tries + 1):
            self.port = asked or free_port(self.host)
            options = " ".join(
                [f"-c listen_addresses={self.host}", f"-p {self.port}", f"-k {self._dir}"]
                + [f"-c {opt}" for opt in _SERVER_OPTIONS]
            )
            argv = [
                str(bindir / "pg_ctl"), "-D", str(self._dir / "data"), "-l", str(self.log_path),
                "-w", "-t", str(int(self.timeout_s)), "-o", options, "start",
            ]  # fmt: skip
            code = _run(_as_db_user(argv), self._dir / "pg_ctl.log", timeout_s=self.timeout_s + 5)
            if code == 0:
                self._running = True
                logger.info("PostgreSQL running on %s:%d in %s", self.host, self.port, self._dir)
                return
            in_use = "address already in use" in _tail(self.log_path, 40).lower()
            if attempt < tries and in_use:
                logger.info("PostgreSQL: port %d was taken; retrying on another", self.port)
                continue
            raise TransientError(
                f"PostgreSQL did not start (pg_ctl code {code}): {_tail(self.log_path)}",
                where=f"{self.host}:{self.port}",
                fix="retry; if it persists, read the PostgreSQL log above",
            )

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and delete the cluster folder (idempotent)."""
        directory, self._dir = self._dir, None
        if directory is None:
            return
        bindir = self._bindir or find_pg_bindir()
        # postmaster.pid also covers a start that timed out after the server came up.
        if (self._running or (directory / "data" / "postmaster.pid").exists()) and bindir:
            self._running = False
            ctl = [str(bindir / "pg_ctl"), "-D", str(directory / "data"), "-w", "-t", "30"]
            log = directory / "pg_ctl.log"
            if _run(_as_db_user([*ctl, "-m", "fast", "stop"]), log, timeout_s=40) != 0:
                logger.warning("PostgreSQL did not stop in time; stopping it immediately")
                _run(_as_db_user([*ctl, "-m", "immediate", "stop"]), log, timeout_s=40)
        shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _concat(paths: Sequence[Path], target: Path) -> Path:
    with target.open("w", encoding="utf-8") as out:
        for path in paths:
            out.write(path.read_text(encoding="utf-8"))
    return target


def run_pypgstac(
    steps: Sequence[Sequence[str]],
    *,
    env: Mapping[str, str],
    log: Path,
    timeout_s: float,
    dsn: str | None = None,
) -> None:
    """Run pypgstac CLI steps in order (e.g. ``["migrate"]``), stopping at the first failure.

    Args:
        steps: Arguments of each ``python -m pypgstac.pypgstac`` call, without ``--dsn``.
        env: Environment of the calls; the connection travels in its ``PG*`` variables.
        log: File the commands and their output are appended to.
        timeout_s: Timeout of each call.
        dsn: A ``--dsn`` to pass as well; it must hold no password (it is logged).

    Raises:
        TransientError: A step failed (the message carries the log tail).
    """
    cli = [sys.executable, "-m", "pypgstac.pypgstac"]
    where = dsn or f"{env.get('PGHOST', '')}:{env.get('PGPORT', '')}/{env.get('PGDATABASE', '')}"
    for step in steps:
        argv = [*cli, *step, *(["--dsn", dsn] if dsn else [])]
        code = _run(argv, log, timeout_s=timeout_s, env=dict(env))
        if code != 0:
            raise TransientError(
                f"pypgstac {step[0]} {' '.join(step[1:2])} failed with code {code}: {_tail(log)}",
                where=where,
                fix="check the pypgstac output above; pypgstac and the pgstac schema must match",
            )


def load_pgstac(
    cluster: PostgresCluster,
    files: StacFiles,
    workdir: Path,
    timeout_s: float,
    *,
    queryables: Mapping[str, object] | None = None,
) -> None:
    """Install pgstac into the cluster and load collections, items and queryables with pypgstac.

    Args:
        cluster: A running cluster.
        files: Staged collections and items (hrefs already absolute).
        workdir: Folder for the load files and ``pypgstac.log``.
        timeout_s: Timeout of each pypgstac command.
        queryables: The queryables document; default :data:`QUERYABLES` (the archive's).

    Raises:
        TransientError: A pypgstac command failed (the message carries its output tail).
    """
    collections = _concat(files.collections, workdir / "pgstac-collections.ndjson")
    items = _concat(files.items, workdir / "pgstac-items.ndjson")
    queryables_path = workdir / "pgstac-queryables.json"
    queryables_path.write_text(json.dumps(queryables or QUERYABLES), encoding="utf-8")
    steps = [
        ["migrate"],
        ["load", "collections", str(collections), "--method", "insert"],
        ["load", "items", str(items), "--method", "insert"],
        ["load_queryables", str(queryables_path)],
    ]
    run_pypgstac(
        steps, env=cluster.env(), log=workdir / "pypgstac.log", timeout_s=timeout_s, dsn=cluster.dsn
    )


@contextlib.contextmanager
def serve_stac_fastapi_pgstac(
    cluster: PostgresCluster,
    *,
    host: str,
    port: int,
    workdir: Path,
    timeout_s: float,
    title: str = "eoforge offline archive",
    description: str = "An eoforge offline archive served by stac-fastapi-pgstac",
    landing_id: str = "eoforge-archive",
) -> Iterator[str]:
    """Run stac-fastapi-pgstac (uvicorn) over a running, loaded cluster; yields its base URL.

    Raises:
        TransientError: The server did not start (the message carries its log tail).
    """
    env = {
        **cluster.env(),
        "STAC_FASTAPI_TITLE": title,
        "STAC_FASTAPI_DESCRIPTION": description,
        "STAC_FASTAPI_LANDING_ID": landing_id,
        "STAC_FASTAPI_VERSION": "1.0.0",
        "DB_MIN_CONN_SIZE": "1",
        "DB_MAX_CONN_SIZE": "4",
    }

    def argv(chosen: int) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app",
            "--factory", "--host", host, "--port", str(chosen), "--log-level", "warning",
        ]  # fmt: skip

    # cwd=workdir: stac-fastapi-pgstac also reads a ``.env`` file from its working folder.
    child, url = start_with_port_retry(
        "stac-fastapi-pgstac",
        argv,
        host=host,
        port=port,
        log_path=workdir / "stac-fastapi-pgstac.log",
        timeout_s=timeout_s,
        env=env,
        cwd=workdir,
    )
    try:
        yield url
    finally:
        child.stop()


def check_pgstac_requirements(where: str = "backend=pgstac") -> None:
    """Raise when this machine lacks what the pgstac backend needs.

    Raises:
        NotFoundError: PostgreSQL, PostGIS or a Python package is missing.
    """
    missing = missing_pgstac_requirements()
    if missing:
        raise NotFoundError(
            f"the pgstac backend needs {'; '.join(missing)}", where=where, fix=_INSTALL_FIX
        )


@contextlib.contextmanager
def serve_pgstac(
    files: StacFiles,
    *,
    host: str,
    port: int,
    workdir: Path,
    timeout_s: float,
    queryables: Mapping[str, object] | None = None,
    title: str = "eoforge offline archive",
    description: str = "An eoforge offline archive served by stac-fastapi-pgstac",
    landing_id: str = "eoforge-archive",
) -> Iterator[str]:
    """Run stac-fastapi-pgstac over a throwaway cluster loaded with ``files``; yields its URL.

    ``queryables`` defaults to :data:`QUERYABLES`; ``title``, ``description`` and
    ``landing_id`` describe the API's landing page.

    Raises:
        NotFoundError: PostgreSQL, PostGIS or a Python package is missing.
        TransientError: A server or a load step failed.
    """
    check_pgstac_requirements()
    with PostgresCluster(host=host, timeout_s=timeout_s) as cluster:
        load_pgstac(cluster, files, workdir, timeout_s, queryables=queryables)
        with serve_stac_fastapi_pgstac(
            cluster,
            host=host,
            port=port,
            workdir=workdir,
            timeout_s=timeout_s,
            title=title,
            description=description,
            landing_id=landing_id,
        ) as url:
            yield url
