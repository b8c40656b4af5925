"""A threaded HTTP file server with byte-range support, for serving an archive's COGs on loopback.

GDAL's ``/vsicurl`` (and so rasterio, stackstac and odc-stac) reads a COG over HTTP with ``Range``
requests: the header first, then only the tiles a window needs. This server answers them the way
object stores do (RFC 9110 section 14):

* ``206 Partial Content`` with ``Content-Range`` for one range, ``multipart/byteranges`` for
  several (overlapping and adjacent ranges are merged first);
* ``416 Range Not Satisfiable`` with ``Content-Range: bytes */SIZE`` when no range fits the file;
* a malformed ``Range`` header is ignored (full ``200``), as the RFC asks;
* ``HEAD``, ``Accept-Ranges``, ``Content-Length``, ``ETag`` and ``Last-Modified`` on every answer;
* only files under the allowed top-level folders are served; ``..``, absolute and escaping paths
  (symlinks included) are refused with ``403``, anything else missing is ``404``.

It counts the body bytes it sends, so tests can prove that a window read did not fetch the file.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import http.server
import json
import logging
import mimetypes
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

__all__ = ["STATS_PATH", "RangeFileServer", "main", "parse_range"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
#: More ranges than this in one request are answered with the whole file (RFC 9110 allows it).
_MAX_RANGES = 64
_IDLE_TIMEOUT_S = 30.0
#: Path answering ``{"bytes_sent": N, "requests": N}`` (not counted itself); never a data path.
STATS_PATH = "/_eoforge/stats"
_SPEC = re.compile(r"([0-9]*)-([0-9]*)")


def parse_range(header: str, size: int) -> list[tuple[int, int]] | None:
    """Parse an HTTP ``Range`` header against a file size.

    Args:
        header: The header value, e.g. ``"bytes=0-99,200-"`` or ``"bytes=-500"``.
        size: The file size in bytes.

    Returns:
        ``None`` when the header is malformed or not in bytes (serve the whole file), an empty
        list when no range is satisfiable (answer 416), else the satisfiable ranges as inclusive
        ``(first, last)`` byte positions, sorted, with overlapping and adjacent ones merged.
    """
    unit, sep, specs = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[tuple[int, int]] = []
    parts = [p.strip() for p in specs.split(",")]
    if len(parts) > _MAX_RANGES:
        return None
    for part in parts:
        match = _SPEC.fullmatch(part)
        if match is None or not (match[1] or match[2]):
            return None
        first_s, last_s = match[1], match[2]
        if not first_s:  # suffix range: the last N bytes
            length = int(last_s)
            if length > 0 and size > 0:
                ranges.append((max(0, size - length), size - 1))
            continue
        first = int(first_s)
        if last_s and int(last_s) < first:
            return None
        if first < size:
            ranges.append((first, min(int(last_s), size - 1) if last_s else size - 1))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


class _Server(http.server.ThreadingHTTPServer):
    """Threaded server that knows its root and can close its open keep-alive connections."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], root: Path, prefixes: Sequence[str]) -> None:
        self.root = root.resolve()
        self.prefixes = tuple(prefixes)
        self.bytes_sent = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        super().__init__(address, _RangeHandler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def count(self, body_bytes: int) -> None:
        with self._lock:
            self.bytes_sent += body_bytes

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def drop_connections(self) -> None:
        """Shut down every open connection so the handler threads return at once."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "eoforge-range/1"
    timeout = _IDLE_TIMEOUT_S
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _resolve(self) -> tuple[int, Path | None]:
        """Map the request path to a file: (status, path) with status 200, 403 or 404."""
        raw = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if "\x00" in raw or "\\" in raw:
            return 403, None
        parts = PurePosixPath(raw).parts
        if any(p in ("..", ".") for p in parts) or not raw.startswith("/"):
            return 403, None
        if len(parts) < 3 or parts[1] not in self.server.prefixes:
            return 404, None
        base = self.server.root / parts[1]
        candidate = (self.server.root.joinpath(*parts[1:])).resolve()
        if not candidate.is_relative_to(base.resolve()):
            return 403, None
        if not candidate.is_file():
            return 404, None
        return 200, candidate

    def _stats(self, *, send_body: bool) -> None:
        body = json.dumps(
            {"bytes_sent": self.server.bytes_sent, "requests": self.server.requests}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _serve(self, *, send_body: bool) -> None:
        if urllib.parse.urlsplit(self.path).path == STATS_PATH:
            self._stats(send_body=send_body)
            return
        self.server.count_request()
        status, path = self._resolve()
        if path is None:
            self.send_error(status)
            return
        stat = path.stat()
        size = stat.st_size
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
        header = self.headers.get("Range")
        ranges = parse_range(header, size) if header else None
        if ranges is not None and header and self._if_range_fails(etag):
            ranges = None
        if ranges == []:
            self.send_response(416)
            self._common_headers(etag, stat.st_mtime)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with path.open("rb") as fh:
            if ranges is None:
                self.send_response(200)
                self._common_headers(etag, stat.st_mtime)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if send_body:
                    self._copy(fh, 0, size)
            elif len(ranges) == 1:
                first, last = ranges[0]
                self.send_response(206)
                self._common_headers(etag, stat.st_mtime)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self.send_header("Content-Length", str(last - first + 1))
                self.end_headers()
                if send_body:
                    self._copy(fh, first, last - first + 1)
            else:
                self._multipart(fh, ranges, size, ctype, etag, stat.st_mtime, send_body)

    def _if_range_fails(self, etag: str) -> bool:
        """True when an ``If-Range`` validator no longer matches (then send the whole file)."""
        validator = self.headers.get("If-Range")
        return validator is not None and validator.startswith('"') and validator != etag

    def _common_headers(self, etag: str, mtime: float) -> None:
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(mtime, usegmt=True))

    def _multipart(
        self,
        fh: BinaryIO,
        ranges: list[tuple[int, int]],
        size: int,
        ctype: str,
        etag: str,
        mtime: float,
        send_body: bool,
    ) -> None:
        boundary = uuid.uuid4().hex
        heads = [
            (
                f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n"
                f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
            ).encode("ascii")
            for first, last in ranges
        ]
        tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        length = sum(len(h) for h in heads) + sum(b - a + 1 for a, b in ranges) + len(tail)
        self.send_response(206)
        self._common_headers(etag, mtime)
        self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if not send_body:
            return
        for head, (first, last) in zip(heads, ranges, strict=True):
            self.wfile.write(head)
            self._copy(fh, first, last - first + 1)
        self.wfile.write(tail)

    def _copy(self, fh: BinaryIO, offset: int, length: int) -> None:
        fh.seek(offset)
        remaining = length
        try:
            while remaining > 0:
                chunk = fh.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                # Counted before the write: a client holding these bytes always sees them
                # counted (counting after let a fast client read the counter too early).
                self.server.count(len(chunk))
                self.wfile.write(chunk)
                remaining -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class RangeFileServer:
    """Serve files under ``root`` over HTTP with byte ranges, on a background thread.

    Only paths below the ``prefixes`` folders of ``root`` are served (``/data/...`` by default),
    so an archive's ground truth stays private. Use as a context manager::

        with RangeFileServer(archive_root) as srv:
            rasterio.open(f"{srv.url}/data/sentinel-2-l2a/ITEM/B04.tif")

    Args:
        root: Folder whose sub-folders are served.
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one (read it back from :attr:`url`).
        prefixes: Top-level folders of ``root`` that may be served.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        prefixes: Sequence[str] = ("data",),
    ) -> None:
        self._root = root
        self._address = (host, port)
        self._prefixes = prefixes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:41234``."""
        server = self._require()
        host, port = server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent so far, over all requests."""
        return self._require().bytes_sent

    @property
    def requests(self) -> int:
        """Requests answered so far (GET and HEAD, any status)."""
        return self._require().requests

    def start(self) -> RangeFileServer:
        """Bind and start serving; returns ``self``."""
        if self._server is not None:
            return self
        self._server = _Server(self._address, self._root, self._prefixes)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"range-server-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        logger.info("range server on %s serving %s", self.url, self._root)
        return self

    def close(self) -> None:
        """Stop serving, drop open connections and free the port (idempotent)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def _require(self) -> _Server:
        if self._server is None:
            raise RuntimeError("RangeFileServer is not started")
        return self._server

    def __enter__(self) -> RangeFileServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Seconds a signalled server has to stop gracefully before it exits hard.
_STOP_GRACE_S = 5.0
#: How often the foreground loop looks at the stop flag (a signal may land on another thread).
_POLL_S = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server in the foreground until SIGTERM or SIGINT: ``python -m`` this module.

    Args:
        argv: ``ROOT [--host H] [--port P] [--prefix NAME ...]``; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code, 0 after a clean stop.
    """
    parser = argparse.ArgumentParser(description="Serve files with HTTP byte ranges.")
    parser.add_argument("root", type=Path, help="folder whose sub-folders are served")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: a free one)")
    parser.add_argument(
        "--prefix", action="append", default=None, help="top-level folder to serve (repeatable)"
    )
    args = parser.parse_args(argv)
    # The handler only sets a flag. A dying parent sends SIGTERM once per thread of its
    # (PR_SET_PDEATHSIG), so handlers run back to back, and a handler that takes a lock
    # (``Event.set``) deadlocks when the next signal lands while it holds that lock.
    stop_requested = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    prefixes = args.prefix or ["data"]
    with RangeFileServer(args.root, host=args.host, port=args.port, prefixes=prefixes) as srv:
        print(srv.url, flush=True)
        while not stop_requested:
            time.sleep(_POLL_S)
        # The graceful stop joins request threads; if one hangs (a peer that vanished mid-send),
        # leave anyway: a server must not outlive the build that started it.
        watchdog = threading.Timer(_STOP_GRACE_S, os._exit, args=(0,))
        watchdog.daemon = True
        watchdog.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
