"""Replay recorded STAC API traffic (vcrpy cassettes) from a real HTTP server on 127.0.0.1.

The cassettes under ``../shared/fixtures`` hold real Earth Search responses. ``ReplayServer``
serves them so pystac-client walks real pages: every occurrence of the recorded base URL in a
body (self/root/search links, ``next`` links) is rewritten to ``http://127.0.0.1:PORT``.

Matching: GET requests on method + path; POST ``/search`` on the paging token of the body
(Earth Search ``next``, Planetary Computer ``token``, DLR ``startIndex``), absent on the first
page. The full body is not matched because the code under test sends its own search parameters;
the bodies it sent are kept in :attr:`ReplayServer.requests` for the test to check. A token no
recording answers gets :attr:`ReplayServer.end_page` (a recorded empty page) when one is set,
else a 404. Recorded ``Content-Encoding``/``Content-Length`` headers are not replayed (bodies
are stored decoded; see PROVENANCE.md "Replay notes").

Fault injection: ``fail_first=N`` answers the first N requests with ``fail_status``,
``fail_at={i, ...}`` the requests with those indices (0-based, retries count), and
``fail_always=True`` every request.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TOKEN_KEYS = ("next", "token", "startIndex")


@dataclass(frozen=True)
class Recorded:
    """One recorded response and what it answers."""

    method: str
    path: str
    token: str | None
    status: int
    content_type: str
    body: str


@dataclass(frozen=True)
class Received:
    """One request the server got."""

    method: str
    path: str
    body: dict[str, Any] | None
    status: int


def _token(body: dict[str, Any] | None) -> str | None:
    for key in _TOKEN_KEYS:
        if body and key in body:
            return str(body[key])
    return None


def load_cassette(path: Path, base_url: str) -> list[Recorded]:
    """The interactions of a vcrpy cassette whose URIs start with ``base_url``."""
    data = yaml.load(path.read_text(), Loader=_LOADER)
    recorded: list[Recorded] = []
    for interaction in data["interactions"]:
        request, response = interaction["request"], interaction["response"]
        uri: str = request["uri"]
        if not uri.startswith(base_url):
            continue
        request_body = json.loads(request["body"]) if request.get("body") else None
        headers = {k.lower(): v for k, v in response.get("headers", {}).items()}
        content_type = headers.get("content-type", ["application/json"])[0]
        recorded.append(
            Recorded(
                method=request["method"].upper(),
                path=urlsplit(uri).path[len(urlsplit(base_url).path) :] or "/",
                token=_token(request_body),
                status=int(response["status"]["code"]),
                content_type=content_type,
                body=response["body"]["string"],
            )
        )
    return recorded


class ReplayServer:
    """Serve recorded responses on a free loopback port; a context manager.

    Args:
        recorded: Responses to serve (see :func:`load_cassette`); the first one recorded for
            a key wins.
        base_url: The recorded base URL, rewritten to :attr:`url` in every body.
        end_page: Body (recorded, with the base URL) answering POST /search tokens nobody
            recorded; None answers them 404.
        conformance: Replaces the landing page's ``conformsTo`` when given.
        fail_first: Answer the first N requests with ``fail_status``.
        fail_at: Answer the requests with these 0-based indices with ``fail_status``.
        fail_always: Answer every request with ``fail_status``.
        fail_status: Status of injected faults.
    """

    def __init__(
        self,
        recorded: list[Recorded],
        base_url: str,
        *,
        end_page: str | None = None,
        conformance: list[str] | None = None,
        fail_first: int = 0,
        fail_at: frozenset[int] = frozenset(),
        fail_always: bool = False,
        fail_status: int = 503,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.end_page = end_page
        self.fail_first = fail_first
        self.fail_at = fail_at
        self.fail_always = fail_always
        self.fail_status = fail_status
        self.requests: list[Received] = []
        self._routes: dict[tuple[str, str, str | None], Recorded] = {}
        for rec in recorded:
            body = rec.body
            if conformance is not None and rec.method == "GET" and rec.path == "/":
                landing = json.loads(body)
                landing["conformsTo"] = conformance
                body = json.dumps(landing)
            self._routes.setdefault((rec.method, rec.path, rec.token), _replace_body(rec, body))
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> ReplayServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self, "GET")

            def do_POST(self) -> None:
                server._answer(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def search_bodies(self) -> list[dict[str, Any] | None]:
        """Bodies of the POST /search requests answered 200, in order."""
        return [
            r.body
            for r in self.requests
            if r.method == "POST" and r.path == "/search" and r.status == 200
        ]

    def _answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = urlsplit(handler.path).path.rstrip("/") or "/"
        with self._lock:
            count = len(self.requests)
            failing = self.fail_always or count < self.fail_first or count in self.fail_at
            status, content_type, text = self._lookup(method, path, body, failing)
            self.requests.append(Received(method, path, body, status))
        payload = text.replace(self.base_url, self.url).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _lookup(
        self, method: str, path: str, body: dict[str, Any] | None, failing: bool
    ) -> tuple[int, str, str]:
        if failing:
            message = {"code": "Injected", "description": f"injected HTTP {self.fail_status}"}
            return self.fail_status, "application/json", json.dumps(message)
        token = _token(body) if method == "POST" else None
        rec = self._routes.get((method, path, token))
        if rec is not None:
            return rec.status, rec.content_type, rec.body
        if method == "POST" and token is not None and self.end_page is not None:
            return 200, "application/geo+json", self.end_page
        missing = {"code": "NotFound", "description": f"nothing recorded for {method} {path}"}
        return 404, "application/json", json.dumps(missing)


def _replace_body(rec: Recorded, body: str) -> Recorded:
    return Recorded(rec.method, rec.path, rec.token, rec.status, rec.content_type, body)
