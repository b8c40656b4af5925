"""The ``load`` stage over HTTP: COGs served with byte ranges on 127.0.0.1, faults injected.

The same files are read through :class:`RangeFileServer` and from local paths; the results must
be identical. A small fault-injecting proxy in front of the range server answers chosen
requests with an HTTP error, to exercise the loader's retry and failure policy end to end.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine

from pipelines.archive.cog import write_cog
from pipelines.archive.range_server import RangeFileServer
from pipelines.grid import Tile
from pipelines.load import AssetMissingError, StackstacBackend, load_sensor
from schemas.errors import TransientError
from schemas.profiles import get_profile
from schemas.sensors import Provider, SensorId

pytestmark = pytest.mark.integration

TILE = Tile(32, "N", 400, 4450, 1200.0)
MINX, MINY, MAXX, MAXY = TILE.bounds
S2 = get_profile(SensorId.SENTINEL_2_L2A, Provider.ARCHIVE)
BANDS = ["B02", "B03", "B04", "B08"]
#: Scene rasters 7.2 km wide with 256 px blocks; the tile lies in the first block, so a window
#: read needs a small part of each file.
SIZE = 720
TR10 = Affine(10, 0, MINX - 200, 0, -10, MAXY + 200)
TR20 = Affine(20, 0, MINX - 200, 0, -20, MAXY + 200)
#: No GDAL-internal retries: the loader's own retry loop is what is tested.
NO_GDAL_RETRY = {"GDAL_HTTP_MAX_RETRY": 0}


def _asset(root: Path, rel: str, data: np.ndarray, transform: Affine) -> dict[str, Any]:
    write_cog(root / rel, data, transform=transform, epsg=32632, nodata=0, blocksize=256)
    return {
        "href": rel,
        "proj:transform": list(transform)[:6],
        "proj:shape": list(data.shape),
        "proj:epsg": 32632,
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One S2-like scene (4 bands at 10 m + SCL at 20 m) under ``root/data``, relative hrefs."""
    root = tmp_path_factory.mktemp("load-http")
    rng = np.random.default_rng(9)
    assets = {
        band: _asset(
            root,
            f"data/S2_HTTP/{band}.tif",
            rng.integers(1, 20000, (SIZE, SIZE)).astype(np.uint16),
            TR10,
        )
        for band in BANDS
    }
    scl = np.full((SIZE // 2, SIZE // 2), 4, np.uint8)
    scl[:, :20] = 0
    assets["SCL"] = _asset(root, "data/S2_HTTP/SCL.tif", scl, TR20)
    item = {
        "type": "Feature",
        "id": "S2_HTTP",
        "collection": "sentinel-2-l2a",
        "properties": {"datetime": "2024-06-01T10:30:00Z", "s2:processing_baseline": "05.10"},
        "assets": assets,
    }
    return root, item


def _with_base(item: dict[str, Any], base: str) -> dict[str, Any]:
    assets = {k: {**a, "href": f"{base}/{a['href']}"} for k, a in item["assets"].items()}
    return {**item, "assets": assets}


class FaultProxy:
    """Forward GET/HEAD (with Range) to an upstream URL; fail the first ``n`` matching requests.

    Args:
        upstream: Base URL of the real server.
        status: HTTP status of injected failures.
        fail_first: How many requests whose path ends with ``suffix`` fail (-1: all of them).
        suffix: Which paths get failures.
    """

    def __init__(self, upstream: str, status: int, fail_first: int, suffix: str) -> None:
        self.failed = 0
        self.forwarded = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(send_body=True)

            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def _answer(self, *, send_body: bool) -> None:
                if self.path.endswith(suffix) and (fail_first < 0 or proxy.failed < fail_first):
                    proxy.failed += 1
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy.forwarded += 1
                request = urllib.request.Request(upstream + self.path, method=self.command)
                if "Range" in self.headers:
                    request.add_header("Range", self.headers["Range"])
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        code, headers, body = answer.status, answer.headers, answer.read()
                except urllib.error.HTTPError as exc:
                    code, headers, body = exc.code, exc.headers, b""
                self.send_response(code)
                for name in ("Content-Range", "Accept-Ranges", "Content-Type"):
                    if headers.get(name):
                        self.send_header(name, headers[name])
                length = str(len(body)) if send_body else headers.get("Content-Length", "0")
                self.send_header("Content-Length", length)
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def server(archive: tuple[Path, dict[str, Any]]) -> Iterator[RangeFileServer]:
    root, _ = archive
    with RangeFileServer(root) as srv:
        yield srv


def _load(item: dict[str, Any], **kw: Any) -> Any:
    return load_sensor([item], TILE, resolution_m=10.0, profile=S2, bands=BANDS, **kw)


def test_http_range_reads_equal_local_reads(archive, server: RangeFileServer) -> None:
    root, item = archive
    local = _load(_with_base(item, str(root)))
    before = server.bytes_sent
    remote = _load(_with_base(item, server.url))

    np.testing.assert_array_equal(remote.data, local.data)
    np.testing.assert_array_equal(remote.qa["SCL"], local.qa["SCL"])
    np.testing.assert_array_equal(remote.footprint, local.footprint)
    assert np.isfinite(local.data).all() and local.data.shape == (1, 4, 120, 120)
    # Range requests: far less than the five files were transferred.
    total = sum((root / a["href"]).stat().st_size for a in item["assets"].values())
    assert 0 < server.bytes_sent - before < total / 4


def test_transient_503_is_retried(archive, server: RangeFileServer) -> None:
    root, item = archive
    local = _load(_with_base(item, str(root)))
    with FaultProxy(server.url, 503, fail_first=2, suffix="B04.tif") as proxy:
        backend = StackstacBackend(retries=3, backoff_s=0.01)
        remote = _load(_with_base(item, proxy.url), backend=backend, gdal_env=NO_GDAL_RETRY)
        assert proxy.failed == 2 and proxy.forwarded > 0
    np.testing.assert_array_equal(remote.data, local.data)


def test_persistent_503_raises_transient_error_naming_the_href(archive, server) -> None:
    _, item = archive
    with FaultProxy(server.url, 503, fail_first=-1, suffix="B08.tif") as proxy:
        backend = StackstacBackend(retries=2, backoff_s=0.01)
        with pytest.raises(TransientError, match="failed 3 times") as info:
            _load(_with_base(item, proxy.url), backend=backend, gdal_env=NO_GDAL_RETRY)
        # Every attempt reached the server (GDAL's /vsicurl cache did not answer the retries;
        # one attempt alone makes one request).
        assert proxy.failed >= 3
    assert f"{proxy.url}/data/S2_HTTP/B08.tif" in str(info.value)
    assert "item S2_HTTP asset B08" in str(info.value)


def test_http_404_is_a_missing_asset(archive, server: RangeFileServer) -> None:
    _, item = archive
    broken = _with_base(item, server.url)
    broken["assets"]["B03"] = {**broken["assets"]["B03"], "href": f"{server.url}/data/gone.tif"}
    with pytest.raises(AssetMissingError) as info:
        _load(broken)
    assert (info.value.item_id, info.value.asset_key) == ("S2_HTTP", "B03")
    assert "404" in str(info.value)
