"""A fault-injecting HTTP proxy on 127.0.0.1, for the reliability tests.

:class:`FaultProxy` forwards every request (method, path, ``Range`` and body) to one upstream
server and answers a chosen fraction of them with a fault instead:

==============  ===============================================================================
``429``         ``429 Too Many Requests`` with ``Retry-After: 1`` (throttling)
``500``         ``500 Internal Server Error``
``503``         ``503 Service Unavailable``
``reset``       the connection is closed at once, without a response (TCP RST)
``stall``       nothing is sent for ``stall_s`` seconds, then the connection is dropped
``truncated``   the upstream response's status and headers, then half its body, then a close
``slow``        the full, correct response after ``slow_s`` seconds (not a failure)
==============  ===============================================================================

Faults are drawn from a seeded RNG, so a run is reproducible up to thread scheduling. Paths that
contain one of ``broken`` get ``404`` every time (a permanently missing file), and those that
contain one of ``corrupt`` get scrambled bytes every time (a damaged file). Response bodies
may be rewritten (``rewrite``: upstream URL -> proxy URL), so a proxied STAC API hands out
asset hrefs that go through the data proxy too. Counts per fault are kept in :attr:`counts`.
"""

from __future__ import annotations

import http.client
import http.server
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

FAULTS = ("429", "500", "503", "reset", "stall", "truncated", "slow")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class _QuietServer(http.server.ThreadingHTTPServer):
    """A server that does not print a traceback when a client drops its connection."""

    def handle_error(self, request: object, client_address: object) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FaultProxy:
    """Forward to ``upstream`` with faults (module docstring).

    Args:
        upstream: Base URL of the real server (``http://127.0.0.1:PORT``).
        fraction: Share of requests answered with a fault (``slow`` included).
        seed: RNG seed.
        faults: The fault kinds to draw from.
        broken: Path substrings answered with 404 every time.
        corrupt: Path substrings whose bodies are scrambled every time (same length, status and
            headers: a damaged file on a healthy server).
        stall_s: How long a ``stall`` waits before dropping the connection.
        slow_s: Delay of a ``slow`` response.
    """

    def __init__(
        self,
        upstream: str,
        *,
        fraction: float = 0.1,
        seed: int = 0,
        faults: Sequence[str] = FAULTS,
        broken: Sequence[str] = (),
        corrupt: Sequence[str] = (),
        stall_s: float = 2.0,
        slow_s: float = 0.3,
    ) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname == "127.0.0.1" and parts.port, upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.fraction = fraction
        self.faults = tuple(faults)
        self.broken = tuple(broken)
        self.corrupt = tuple(corrupt)
        self.stall_s = stall_s
        self.slow_s = slow_s
        self.rewrite: Mapping[bytes, bytes] = {}
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _draw(self, path: str) -> str:
        with self._lock:
            self.counts["requests"] += 1
            if any(b in path for b in self.broken):
                self.counts["404"] += 1
                return "404"
            if self._rng.random() >= self.fraction:
                return "pass"
            fault = self._rng.choice(self.faults)
            self.counts[fault] += 1
            return fault

    def _forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            dropped = ("host", "accept-encoding")
            sent = {k: v for k, v in headers.items() if k.lower() not in dropped}
            sent["Accept-Encoding"] = "identity"
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            if method == "HEAD":  # no body: pass the size of the body a GET would get
                size = resp.getheader("Content-Length")
                out_headers.append(("Content-Length", size or "0"))
            return resp.status, out_headers, data
        finally:
            conn.close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _drop(self, reset: bool) -> None:
                if reset:  # RST instead of FIN
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                self.close_connection = True
                self.connection.close()

            def _error(self, status: int) -> None:
                body = f"fault injected: {status}".encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._draw(self.path)
                if fault in ("404", "429", "500", "503"):
                    self._error(int(fault))
                    return
                if fault == "reset":
                    self._drop(reset=True)
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                    self._drop(reset=True)
                    return
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                status, headers, data = proxy._forward(
                    self.command, self.path, dict(self.headers.items()), body
                )
                for old, new in proxy.rewrite.items():
                    data = data.replace(old, new)
                if any(c in self.path for c in proxy.corrupt):
                    with proxy._lock:
                        proxy.counts["corrupt"] += 1
                    data = bytes(b ^ 0x5A for b in data)
                self.send_response_only(status)
                for k, v in headers:
                    self.send_header(k, v)
                if self.command == "HEAD":
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncated" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._drop(reset=False)
                    return
                self.wfile.write(data)

            do_GET = _handle  # noqa: N815
            do_POST = _handle  # noqa: N815
            do_HEAD = _handle  # noqa: N815

        return Handler

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        """Serve on a free loopback port until the block ends."""
        server = _QuietServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
