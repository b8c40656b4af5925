"""Recipe-set flow options: retries, timeout and the failure webhook (a real HTTP server)."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from flows.notify import flow_options, notify_on_failure
from schemas.errors import InvalidInputError
from schemas.recipe import recipe_from_data

BASE: dict[str, Any] = {
    "name": "unit",
    "aoi": {"bbox": [11.98, 47.93, 12.02, 47.96]},
    "time": {"start": "2024-06-01", "end": "2024-07-01"},
    "sensors": [{"id": "sentinel-2-l2a", "catalog": "archive:data/a", "resolution": 10}],
    "grid": {"tile_size": 1200},
    "output": {"path": "build/unit.zarr"},
}


def _recipe(**execution: Any) -> Any:
    return recipe_from_data({**BASE, "execution": execution})


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/T0KEN-SECRET", received
    finally:
        server.shutdown()
        server.server_close()


def test_defaults_run_once_without_timeout_or_hook() -> None:
    options = flow_options(_recipe())
    assert options == {"retries": 0, "retry_delay_seconds": 60.0}


def test_recipe_sets_retries_timeout_and_hook(webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    options = flow_options(
        _recipe(retries=2, retry_delay_seconds=5, timeout_seconds=3600, notify_url=url)
    )
    assert options["retries"] == 2 and options["retry_delay_seconds"] == 5
    assert options["timeout_seconds"] == 3600
    (hook,) = options["on_failure"]
    run = SimpleNamespace(name="build-unit-2024-06-01T0300", id="abc")
    state = SimpleNamespace(name="Failed", message="shard s00003 failed: HTTP 503")
    hook(None, run, state)
    assert received == [
        {
            "text": "eoforge build unit failed: shard s00003 failed: HTTP 503",
            "recipe": "unit",
            "flow_run": "build-unit-2024-06-01T0300",
            "flow_run_id": "abc",
            "state": "Failed",
            "message": "shard s00003 failed: HTTP 503",
        }
    ]


def test_unreachable_webhook_is_logged_without_its_token(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hook = notify_on_failure(f"http://127.0.0.1:{port}/hooks/T0KEN-SECRET", "unit")
    with caplog.at_level(logging.WARNING, logger="flows.notify"):
        hook(None, SimpleNamespace(name="r", id="1"), SimpleNamespace(name="Failed", message="x"))
    assert "could not send the failure notification to 127.0.0.1" in caplog.text
    assert "T0KEN-SECRET" not in caplog.text


@pytest.mark.parametrize(
    ("execution", "field"),
    [
        ({"notify_url": "ftp://x.test/hook"}, "execution.notify_url"),
        ({"notify_url": "not a url"}, "execution.notify_url"),
        ({"retries": -1}, "execution.retries"),
        ({"retries": 11}, "execution.retries"),
        ({"timeout_seconds": 0}, "execution.timeout_seconds"),
    ],
)
def test_bad_execution_options_name_the_field(execution: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        recipe_from_data({**BASE, "execution": execution})
    assert field in str(err.value)
