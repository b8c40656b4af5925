"""Serve a cube's tile catalog as a STAC API on loopback, and publish it into a pgstac database.

* :func:`serve_cube` stages the cube's Collection and Items (:func:`catalog.stac.cube_stac`) in a
  temporary folder and starts a STAC API over them: ``rustac serve`` (in memory, the embedded
  default) or stac-fastapi-pgstac over a throwaway PostgreSQL (``backend="pgstac"``). Process
  handling (free ports, readiness, clean stops, children that die with this process) is the
  offline archive's (:mod:`pipelines.archive.serve`, :mod:`pipelines.archive.pgstac`), imported
  lazily so that importing :mod:`catalog` stays cheap.
* :func:`publish_pgstac` loads the Collection, then the Items, into an existing pgstac database
  with pypgstac's ``upsert`` (publishing again replaces them: idempotent), then the cube's
  queryables (:func:`cube_queryables`), typed so CQL2 compares numbers as numbers.

A DSN's password never reaches a command line or a log: it is taken out of the DSN and handed to
pypgstac in ``PGPASSWORD``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from catalog.stac import CubeStac, cube_stac, read_cube_layout, write_stac_ndjson
from schemas.cube import CubeLayout
from schemas.errors import ConflictError, InvalidInputError, NotFoundError, TransientError

__all__ = [
    "BACKENDS",
    "Backend",
    "CubeServer",
    "PublishResult",
    "cube_queryables",
    "publish_pgstac",
    "serve_cube",
    "stage_cube_stac",
]

logger = logging.getLogger(__name__)

Backend = Literal["rustac", "pgstac"]
BACKENDS: tuple[Backend, ...] = ("rustac", "pgstac")
#: Links a STAC API writes itself; staged copies drop them so they are not listed twice.
_HIERARCHY_RELS = frozenset({"self", "root", "parent", "collection", "items"})


def cube_queryables(layout: CubeLayout) -> dict[str, Any]:
    """The pgstac queryables of a cube's Items (JSON Schema of the filterable properties).

    Label fields are reached through dotted paths (pgstac splits them into JSON keys):
    ``eoforge:multilabels.<source>`` (array of class names, for ``a_contains``) and
    ``eoforge:unlabeled_fractions.<source>`` (number in 0-1). No enums: queryables in pgstac are
    shared by every collection of the database, and other cubes may have other classes.
    """
    props: dict[str, Any] = {
        "eo:cloud_cover": {
            "description": "Cloud cover of the tile's reference optical sensor, percent",
            "type": "number",
            "minimum": 0,
            "maximum": 100,
        },
        "eoforge:split": {"description": "train, val or test", "type": "string"},
        "eoforge:period_id": {"description": "Period of the tile", "type": "string"},
        "eoforge:tile_id": {"description": "Grid tile id", "type": "string"},
        "eoforge:cube_position": {"description": "Index on the tile axis", "type": "integer"},
        "eoforge:sensor_names": {
            "description": "Sensors with data in the tile",
            "type": "array",
            "items": {"type": "string"},
        },
        "eoforge:label_flags": {
            "description": "Label sources whose unlabeled share reaches max_unlabeled",
            "type": "array",
            "items": {"type": "string"},
        },
    }
    for lab in layout.labels:
        props[f"eoforge:multilabels.{lab.source}"] = {
            "description": f"{lab.source} classes above the multi-label threshold",
            "type": "array",
            "items": {"type": "string"},
        }
        props[f"eoforge:unlabeled_fractions.{lab.source}"] = {
            "description": f"Share of the tile's pixels without a {lab.source} class",
            "type": "number",
            "minimum": 0,
            "maximum": 1,
        }
    return {"type": "object", "title": "eoforge tile queryables", "properties": props}


def _without_hierarchy_links(doc: Mapping[str, Any]) -> dict[str, Any]:
    links = [link for link in doc.get("links", ()) if link.get("rel") not in _HIERARCHY_RELS]
    return {**doc, "links": links}


def stage_cube_stac(stac: CubeStac, workdir: Path) -> tuple[Path, Path]:
    """Write a cube's Collection (one-line JSON) and Items (NDJSON) for a STAC API to load.

    Hierarchy links (``self``, ``root``, ``parent``, ``collection``) are dropped: the API writes
    its own.

    Returns:
        The Collection file and the Items file.
    """
    collection = workdir / "collection.json"
    collection.write_text(
        json.dumps(_without_hierarchy_links(stac.collection), separators=(",", ":")) + "\n",
        encoding="utf-8",
    )
    items = write_stac_ndjson(
        (_without_hierarchy_links(i) for i in stac.items), workdir / "items.ndjson"
    )
    return collection, items


def _require_items(stac: CubeStac, cube: Path) -> None:
    if not stac.items:
        raise NotFoundError(
            "the cube has no committed tiles to serve",
            where=str(cube),
            fix="build the cube first (eoforge build RECIPE)",
        )


@dataclass
class CubeServer:
    """A cube's tile catalog served as a STAC API on loopback; a context manager.

    Attributes:
        cube: The cube folder.
        backend: ``"rustac"`` or ``"pgstac"``.
        host: Address the API binds.
        port: Port asked for (0: a free one).
        cube_href: Href of the cube in the served Items (default its ``file://`` URI).
        collection_id: Collection id asked for (default from the cube's name).
        startup_timeout_s: How long the server (and PostgreSQL) may take to answer.
        stac_url: Base URL of the STAC API (set while running).
        item_count: Items served.
        workdir: Temporary folder with the staged files and the servers' logs.
    """

    cube: Path
    backend: Backend = "rustac"
    host: str = "127.0.0.1"
    port: int = 0
    cube_href: str | None = None
    collection_id: str | None = None
    startup_timeout_s: float = 60.0
    stac_url: str = field(default="", init=False)
    item_count: int = field(default=0, init=False)
    workdir: Path | None = field(default=None, init=False)
    _stack: contextlib.ExitStack | None = field(default=None, init=False, repr=False)

    def start(self) -> CubeServer:
        """Stage the cube's STAC documents and start the API; returns ``self``.

        Raises:
            InvalidInputError: Unknown backend, or unreadable cube metadata.
            NotFoundError: Not a cube, no committed tiles, or the backend is not installed.
            TransientError: The server did not start (the message carries its log tail).
        """
        if self.backend not in BACKENDS:
            raise InvalidInputError(
                f"unknown STAC backend {self.backend!r}",
                where="backend",
                fix=f"use one of {', '.join(BACKENDS)}",
            )
        started = time.monotonic()
        stac = cube_stac(self.cube, cube_href=self.cube_href, collection_id=self.collection_id)
        _require_items(stac, self.cube)
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="eoforge-tiles-serve-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            self.workdir = workdir
            collection, items = stage_cube_stac(stac, workdir)
            self.collection_id = stac.collection_id
            self.item_count = len(stac.items)
            api: contextlib.AbstractContextManager[str]
            if self.backend == "pgstac":
                api = _serve_pgstac(stac, collection, items, self, workdir)
            else:
                api = _serve_rustac(collection, items, self, workdir)
            self.stac_url = stack.enter_context(api)
            self._stack = stack.pop_all()
        logger.info(
            "serving %s (%d items, collection %s) with %s at %s (started in %.1f s)",
            self.cube,
            self.item_count,
            self.collection_id,
            self.backend,
            self.stac_url,
            time.monotonic() - started,
        )
        return self

    def close(self) -> None:
        """Stop the API (and PostgreSQL) and remove the temporary files (idempotent)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self.stac_url = ""

    def __enter__(self) -> CubeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _serve_rustac(
    collection: Path, items: Path, srv: CubeServer, workdir: Path
) -> contextlib.AbstractContextManager[str]:
    from pipelines.archive.serve import serve_rustac
    from pipelines.archive.staging import StacFiles

    files = StacFiles((collection,), (items,), srv.item_count)
    return serve_rustac(
        files, host=srv.host, port=srv.port, workdir=workdir, timeout_s=srv.startup_timeout_s
    )


@contextlib.contextmanager
def _serve_pgstac(
    stac: CubeStac, collection: Path, items: Path, srv: CubeServer, workdir: Path
) -> Iterator[str]:
    from pipelines.archive.pgstac import (
        PostgresCluster,
        check_pgstac_requirements,
        run_pypgstac,
        serve_stac_fastapi_pgstac,
    )

    check_pgstac_requirements()
    timeout = srv.startup_timeout_s
    with PostgresCluster(host=srv.host, timeout_s=timeout) as cluster:
        log = workdir / "pypgstac.log"
        env = cluster.env()
        run_pypgstac([["migrate"]], env=env, log=log, timeout_s=timeout, dsn=cluster.dsn)
        _load(collection, items, _queryables_file(stac, workdir), env, log, timeout, cluster.dsn)
        with serve_stac_fastapi_pgstac(
            cluster,
            host=srv.host,
            port=srv.port,
            workdir=workdir,
            timeout_s=timeout,
            title=str(stac.collection.get("title", stac.collection_id)),
            description="An eoforge tile catalog served by stac-fastapi-pgstac",
            landing_id="eoforge-tiles",
        ) as url:
            yield url


def _queryables_file(stac: CubeStac, workdir: Path) -> Path:
    layout = CubeLayout.from_root_attrs(stac.collection["eoforge:layout"])
    path = workdir / "queryables.json"
    path.write_text(json.dumps(cube_queryables(layout)), encoding="utf-8")
    return path


def _load(
    collection: Path,
    items: Path,
    queryables: Path,
    env: Mapping[str, str],
    log: Path,
    timeout_s: float,
    dsn: str | None,
) -> None:
    from pipelines.archive.pgstac import run_pypgstac

    steps = [
        ["load", "collections", str(collection), "--method", "upsert"],
        ["load", "items", str(items), "--method", "upsert"],
        ["load_queryables", str(queryables)],
    ]
    run_pypgstac(steps, env=env, log=log, timeout_s=timeout_s, dsn=dsn)


def serve_cube(
    cube: str | Path,
    *,
    backend: Backend = "rustac",
    host: str = "127.0.0.1",
    port: int = 0,
    cube_href: str | None = None,
    collection_id: str | None = None,
    startup_timeout_s: float = 60.0,
) -> CubeServer:
    """Prepare to serve a cube's tile catalog as a STAC API; use the result as a context manager.

    Example::

        with serve_cube("out/demo.zarr") as srv:
            client = pystac_client.Client.open(srv.stac_url)

    Args:
        cube: The cube folder.
        backend: ``"rustac"`` (in memory, starts in about a second) or ``"pgstac"``
            (stac-fastapi-pgstac over a throwaway PostgreSQL + PostGIS; CQL2 filters).
        host: Address to bind; loopback by default.
        port: API port; 0 picks a free one.
        cube_href: Href of the cube in the Items; default its ``file://`` URI.
        collection_id: Collection id; default from the cube folder's name.
        startup_timeout_s: How long each server may take to answer.

    Returns:
        A :class:`CubeServer`, not yet started.
    """
    return CubeServer(
        cube=Path(cube),
        backend=backend,
        host=host,
        port=port,
        cube_href=cube_href,
        collection_id=collection_id,
        startup_timeout_s=startup_timeout_s,
    )


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish_pgstac` loaded.

    Attributes:
        collection_id: The Collection upserted.
        item_count: Items upserted.
        queryables: Names of the queryables loaded.
        where: The database, as ``host:port/dbname`` (never the password).
    """

    collection_id: str
    item_count: int
    queryables: tuple[str, ...]
    where: str


def _split_dsn(dsn: str, password: str | None) -> tuple[str, dict[str, str], str]:
    """(DSN without password, extra env with ``PGPASSWORD``, ``host:port/db`` for messages)."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:  # pragma: no cover - pypgstac[psycopg] brings it
        raise NotFoundError(
            "publishing needs the psycopg package",
            where="--pgstac",
            fix="pip install 'pypgstac[psycopg]==0.10.*'",
        ) from None
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception as exc:  # psycopg.ProgrammingError: a malformed DSN
        raise InvalidInputError(
            "cannot parse the PostgreSQL DSN",
            where="--pgstac",
            fix="give a URI like postgresql://user@host:5432/dbname (password in PGPASSWORD)",
        ) from exc
    secret = params.pop("password", None) or password
    env = {"PGPASSWORD": secret} if secret else {}
    where = f"{params.get('host', '')}:{params.get('port', '')}/{params.get('dbname', '')}"
    return make_conninfo("", **params), env, where


def _check_database(dsn: str, env: Mapping[str, str], where: str) -> str:
    """Connect once (fast, clear errors) and return the database's pgstac version.

    Raises:
        TransientError: No connection (wrong host/port/password, server down).
        NotFoundError: The database has no pgstac schema.
        ConflictError: Its pgstac version differs (major.minor) from the installed pypgstac's.
    """
    import psycopg
    from psycopg.conninfo import make_conninfo
    from pypgstac.version import __version__ as pypgstac_version

    try:
        conninfo = make_conninfo(dsn, **_password(env))
        with psycopg.connect(conninfo, connect_timeout=15) as conn:
            row = conn.execute(
                "SELECT version FROM pgstac.migrations ORDER BY datetime DESC, version DESC LIMIT 1"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        raise NotFoundError(
            "the database has no pgstac schema",
            where=where,
            fix="install it first: pypgstac migrate --dsn ... (or point --pgstac at a pgstac "
            "database)",
        ) from None
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise TransientError(
            f"cannot connect to the pgstac database ({reason})",
            where=where,
            fix="check host, port, database, user and the password (in PGPASSWORD)",
        ) from None
    version = str(row[0]) if row else "none"
    if version.split(".")[:2] != pypgstac_version.split(".")[:2]:
        raise ConflictError(
            f"the database runs pgstac {version}, this pypgstac is {pypgstac_version}",
            where=where,
            fix="migrate the database (pypgstac migrate) or install the matching pypgstac",
        )
    return version


def _password(env: Mapping[str, str]) -> dict[str, str]:
    secret = env.get("PGPASSWORD")
    return {"password": secret} if secret else {}


def publish_pgstac(
    cube: str | Path,
    dsn: str,
    *,
    password: str | None = None,
    cube_href: str | None = None,
    collection_id: str | None = None,
    timeout_s: float = 600.0,
) -> PublishResult:
    """Upsert a cube's Collection, Items and queryables into an existing pgstac database.

    Args:
        cube: The cube folder.
        dsn: libpq connection string or URI of a database with pgstac installed (``pypgstac
            migrate``, same minor version as the installed pypgstac).
        password: Database password, if neither the DSN nor ``PGPASSWORD`` holds it.
        cube_href: Href of the cube in the Items; default its ``file://`` URI (give a URL the
            API's users can reach).
        collection_id: Collection id; default from the cube folder's name.
        timeout_s: Timeout of each pypgstac step.

    Returns:
        What was loaded.

    Raises:
        InvalidInputError: A malformed DSN or unreadable cube.
        NotFoundError: Not a cube, no committed tiles, or psycopg/pypgstac missing.
        TransientError: No connection, or a pypgstac step failed (the message carries its
            output, never the password).
        ConflictError: The database's pgstac version does not match the installed pypgstac.
    """
    path = Path(cube)
    read_cube_layout(path)  # a clear error for a wrong path before connecting anywhere
    clean_dsn, secret_env, where = _split_dsn(dsn, password)
    stac = cube_stac(path, cube_href=cube_href, collection_id=collection_id)
    _require_items(stac, path)
    _check_database(clean_dsn, secret_env, where)
    with tempfile.TemporaryDirectory(prefix="eoforge-publish-") as tmp:
        workdir = Path(tmp)
        collection, items = stage_cube_stac(stac, workdir)
        queryables = _queryables_file(stac, workdir)
        env = {**os.environ, **secret_env}
        log = workdir / "pypgstac.log"
        try:
            _load(collection, items, queryables, env, log, timeout_s, clean_dsn)
        finally:
            log.unlink(missing_ok=True)
        names = tuple(json.loads(queryables.read_text(encoding="utf-8"))["properties"])
    logger.info("published %d items of %s to %s", len(stac.items), stac.collection_id, where)
    return PublishResult(stac.collection_id, len(stac.items), names, where)
