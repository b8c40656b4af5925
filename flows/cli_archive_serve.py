"""``eoforge archive serve``: serve an offline archive on loopback until stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.markup import escape

from flows._cli_common import console, reports_errors

__all__ = ["register"]

#: How often the serving loop looks at the stop flag.
_POLL_S = 0.2


class BackendChoice(StrEnum):
    """STAC API implementations ``serve`` can start."""

    rustac = "rustac"
    pgstac = "pgstac"


def _say(text: str) -> None:
    # soft_wrap: a URL must stay on one line for scripts that read it from stdout.
    console.print(text)


def _write_urls(path: Path, urls: dict[str, str]) -> None:
    """Write the URLs as JSON atomically, so a script polling for the file never reads half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(urls, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


class _Stopper:
    """SIGINT/SIGTERM handling: abort while starting, ask for a clean stop once serving.

    The handler takes no lock: signals can come back to back (Ctrl-C pressed twice, or one
    SIGTERM per thread of a dying parent), and a handler waiting on a lock that the handler it
    interrupted holds never returns. A second signal during an abort is ignored, so it cannot
    cut short the unwinding that stops the servers.
    """

    def __init__(self) -> None:
        self.requested = False
        self.serving = False
        self._aborting = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.serving:
            self.requested = True
        elif not self._aborting:
            self._aborting = True
            raise KeyboardInterrupt  # unwinds the startup, which stops what already runs

    def wait(self) -> None:
        """Return once a stop was asked for (checked every ``_POLL_S``)."""
        while not self.requested:
            time.sleep(_POLL_S)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stopper]:
    """Route SIGINT and SIGTERM to a :class:`_Stopper`; the previous handlers come back after."""
    stopper = _Stopper()
    previous = {sig: signal.signal(sig, stopper.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopper
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(
    archive_dir: Annotated[
        Path, typer.Argument(help="Offline archive folder (from `eoforge archive create`).")
    ],
    port: Annotated[
        int, typer.Option("--port", help="STAC API port on the host; 0 picks a free one.")
    ] = 0,
    data_port: Annotated[
        int, typer.Option("--data-port", help="COG range server port; 0 picks a free one.")
    ] = 0,
    host: Annotated[
        str, typer.Option("--host", help="Address both servers bind (loopback by default).")
    ] = "127.0.0.1",
    backend: Annotated[
        BackendChoice,
        typer.Option(
            "--backend",
            help="STAC API: rustac (in memory, fast start) or pgstac (stac-fastapi-pgstac over "
            "a throwaway PostgreSQL + PostGIS, as Planetary Computer serves).",
        ),
    ] = BackendChoice.rustac,
    urls_file: Annotated[
        Path | None,
        typer.Option(
            "--urls-file",
            help="Also write the URLs as JSON ({stac_url, data_url, backend, workdir}) to this "
            "file; it is removed again when the servers stop.",
        ),
    ] = None,
) -> None:
    """Serve ARCHIVE_DIR: a STAC API over its items and an HTTP range server for its COGs.

    Item asset hrefs point at the range server, so any STAC client reads the COGs through HTTP
    range requests. Runs until Ctrl-C or SIGTERM, then stops both servers and exits with 0
    (a signal during startup stops what already runs and exits with 130).
    """
    from pipelines.archive.serve import Backend, serve_archive

    with _stop_on_signals() as stopper:
        chosen: Backend = "pgstac" if backend is BackendChoice.pgstac else "rustac"
        server = serve_archive(
            archive_dir, port=port, data_port=data_port, host=host, backend=chosen
        )
        with server:
            _say(f"STAC API ({backend.value}): {server.stac_url}")
            _say(f"COGs (HTTP range):  {server.data_url}")
            if urls_file is not None:
                _write_urls(urls_file, server.urls())
                _say(f"URLs written to {escape(str(urls_file))}")
            _say("Serving; press Ctrl-C to stop.")
            stopper.serving = True
            try:
                stopper.wait()
            finally:
                if urls_file is not None:
                    urls_file.unlink(missing_ok=True)
        _say("Stopped.")


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the ``archive`` group."""
    app.command("serve")(reports_errors(serve))
