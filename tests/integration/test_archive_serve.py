"""The offline archive served on loopback: range server, rustac STAC API, CLI lifecycle."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _archive_sample import (
    eoforge_argv,
    open_client,
    port_is_closed,
    read_archive_items,
    search_cases,
    stop_cli,
    write_sample_archive,
)
from rasterio.windows import Window

from pipelines.archive.range_server import RangeFileServer, parse_range
from pipelines.archive.serve import (
    ArchiveServer,
    archive_dir_from_source,
    check_archive,
    serve_archive,
)
from pipelines.stac_filter import conforms_to_filter, filter_cloud, search_items, sort_items
from schemas.errors import InvalidInputError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive under test. To test the real generator's archive instead, replace the body
    with ``return tiny_archive`` (and take the ``tiny_archive`` fixture as argument)."""
    return write_sample_archive(tmp_path_factory.mktemp("sample-archive"))


@pytest.fixture(scope="module")
def served(archive_root: Path) -> Iterator[ArchiveServer]:
    with serve_archive(archive_root, backend="rustac") as srv:
        yield srv


def first_asset(root: Path) -> tuple[dict[str, object], str]:
    """An item and the archive-relative href of its largest single-band, multi-tile GeoTIFF.

    Several tiles, so a small window read needs only part of the file.
    """
    best: tuple[int, dict[str, object], str] | None = None
    for item in read_archive_items(root):
        for asset in item["assets"].values():
            if not str(asset.get("type", "")).startswith("image/tiff"):
                continue
            path = root / asset["href"]
            with rasterio.open(path) as ds:
                block_y, block_x = ds.block_shapes[0]
                tiled = ds.width > block_x or ds.height > block_y
                if ds.count != 1 or not tiled:
                    continue
            size = path.stat().st_size
            if best is None or size > best[0]:
                best = (size, item, str(asset["href"]))
    assert best is not None, "archive has no single-band multi-tile GeoTIFF asset"
    return best[1], best[2]


# --- parse_range: the header grammar ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", [(0, 9)]),
        ("bytes=90-", [(90, 99)]),
        ("bytes=-10", [(90, 99)]),
        ("bytes=-500", [(0, 99)]),
        ("bytes=95-200", [(95, 99)]),
        ("bytes=0-9,5-19,40-49,50-59", [(0, 19), (40, 59)]),
        ("bytes=200-300", []),
        ("bytes=100-", []),
        ("bytes=-0", []),
        ("bytes=9-0", None),
        ("bytes=a-b", None),
        ("bytes=-", None),
        ("items=0-9", None),
        ("bytes=0-9,x", None),
        ("bytes=０-9", None),  # non-ASCII digits are not digits in HTTP
    ],
)
def test_parse_range(header: str, expected: list[tuple[int, int]] | None) -> None:
    assert parse_range(header, 100) == expected


# --- the range server, in-thread, spoken to with http.client ----------------------------------


@pytest.fixture(scope="module")
def range_server(archive_root: Path) -> Iterator[RangeFileServer]:
    with RangeFileServer(archive_root) as srv:
        yield srv


def request(
    srv: RangeFileServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = srv.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_range_server_head_and_full_get(archive_root: Path, range_server: RangeFileServer) -> None:
    _, rel = first_asset(archive_root)
    content = (archive_root / rel).read_bytes()
    status, headers, body = request(range_server, "HEAD", "/" + rel)
    assert (status, body) == (200, b"")
    assert headers["accept-ranges"] == "bytes"
    assert int(headers["content-length"]) == len(content)
    assert headers["content-type"] == "image/tiff"
    assert headers["etag"].startswith('"') and "last-modified" in headers
    status, headers, body = request(range_server, "GET", "/" + rel)
    assert status == 200 and body == content


def test_range_server_ranges(archive_root: Path, range_server: RangeFileServer) -> None:
    _, rel = first_asset(archive_root)
    content = (archive_root / rel).read_bytes()
    size = len(content)
    before = range_server.bytes_sent
    status, headers, body = request(range_server, "GET", "/" + rel, {"Range": "bytes=10-19"})
    assert (status, body) == (206, content[10:20])
    assert headers["content-range"] == f"bytes 10-19/{size}"
    assert headers["content-length"] == "10"
    status, headers, body = request(range_server, "GET", "/" + rel, {"Range": "bytes=-7"})
    assert (status, body, headers["content-range"]) == (
        206,
        content[-7:],
        f"bytes {size - 7}-{size - 1}/{size}",
    )
    assert range_server.bytes_sent - before == 17
    # An unsatisfiable range is 416 with the size; a malformed one is ignored (whole file).
    status, headers, body = request(range_server, "GET", "/" + rel, {"Range": f"bytes={size}-"})
    assert (status, headers["content-range"], body) == (416, f"bytes */{size}", b"")
    status, _, body = request(range_server, "GET", "/" + rel, {"Range": "bytes=oops"})
    assert (status, body) == (200, content)
    # If-Range with a stale validator: the whole (changed) file, not a splice of two versions.
    headers_ir = {"Range": "bytes=0-9", "If-Range": '"stale"'}
    status, _, body = request(range_server, "GET", "/" + rel, headers_ir)
    assert (status, len(body)) == (200, size)


def test_range_server_multipart(archive_root: Path, range_server: RangeFileServer) -> None:
    _, rel = first_asset(archive_root)
    content = (archive_root / rel).read_bytes()
    status, headers, body = request(range_server, "GET", "/" + rel, {"Range": "bytes=0-3,100-107"})
    assert status == 206
    ctype = headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    assert int(headers["content-length"]) == len(body)
    boundary = ctype.split("boundary=")[1].encode()
    parts = [p for p in body.split(b"--" + boundary) if p.strip(b"\r\n-")]
    assert len(parts) == 2
    payloads = [p.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for p in parts]
    assert payloads == [content[0:4], content[100:108]]
    assert f"Content-Range: bytes 100-107/{len(content)}".encode() in parts[1]


def test_range_server_keep_alive(archive_root: Path, range_server: RangeFileServer) -> None:
    _, rel = first_asset(archive_root)
    content = (archive_root / rel).read_bytes()
    host, port = range_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for first in (0, 1000, 5000):
            conn.request("GET", "/" + rel, headers={"Range": f"bytes={first}-{first + 99}"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (206, content[first : first + 100])
        assert conn.sock is not None  # still the same open connection
    finally:
        conn.close()


def test_range_server_refuses_paths_outside_data(
    archive_root: Path, range_server: RangeFileServer
) -> None:
    _, rel = first_asset(archive_root)
    outside = archive_root.parent / "secret.txt"
    outside.write_text("secret")
    link = archive_root / "data" / "escape.txt"
    link.symlink_to(outside)
    try:
        assert request(range_server, "GET", "/data/../archive.json")[0] == 403
        assert request(range_server, "GET", "/data/%2e%2e/archive.json")[0] == 403
        assert request(range_server, "GET", "/data/..%2f..%2fsecret.txt")[0] == 403
        assert request(range_server, "GET", "/data/escape.txt")[0] == 403
        assert request(range_server, "GET", "/archive.json")[0] == 404
        assert request(range_server, "GET", "/data/nope/missing.tif")[0] == 404
        assert request(range_server, "GET", "/" + rel.rsplit("/", 1)[0] + "/")[0] == 404
        assert request(range_server, "GET", "/" + rel)[0] == 200
    finally:
        link.unlink()
        outside.unlink()


# --- the archive served: rustac STAC API + range server in child processes --------------------


def test_search_cases_exercise_every_filter(archive_root: Path) -> None:
    """Guard against a new archive making the cases below trivial."""
    cases = search_cases(archive_root)
    total = len(read_archive_items(archive_root))
    assert all(case.expected for case in cases)
    assert any(len(case.expected) < total for case in cases)
    assert any(case.max_cloud is not None for case in cases)


def test_rustac_search_with_client_side_cloud_filter(
    archive_root: Path, served: ArchiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with open_client(served.stac_url) as client:
        assert not conforms_to_filter(client)
        for case in search_cases(archive_root):
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="pipelines.stac_filter"):
                items = search_items(
                    client,
                    collections=case.collections,
                    bbox=case.bbox,
                    datetime=case.datetime,
                    max_cloud=case.max_cloud,
                    limit=2,  # smaller than most results: paging must work
                )
            ids = [i["id"] for i in items]
            assert len(ids) == len(set(ids)), case.name
            assert set(ids) == case.expected, case.name
            fallback = "does not conform to FILTER; filtering eo:cloud_cover client-side"
            assert (fallback in caplog.text) == (case.max_cloud is not None), case.name


def test_rustac_paging_returns_every_item_once(archive_root: Path, served: ArchiveServer) -> None:
    items = read_archive_items(archive_root)
    collection = max(
        {i["collection"] for i in items}, key=lambda c: sum(i["collection"] == c for i in items)
    )
    expected = {i["id"] for i in items if i["collection"] == collection}
    assert len(expected) >= 3
    with open_client(served.stac_url) as client:
        search = client.search(collections=[collection], limit=2)
        pages = [[f["id"] for f in page["features"]] for page in search.pages_as_dicts()]
    assert len(pages) == -(-len(expected) // 2)
    assert all(len(p) <= 2 for p in pages)
    flat = [i for p in pages for i in p]
    assert sorted(flat) == sorted(expected)


def test_served_hrefs_point_at_range_server(archive_root: Path, served: ArchiveServer) -> None:
    with open_client(served.stac_url) as client:
        items = list(client.search(collections=check_archive(archive_root)).items_as_dicts())
    assert len(items) == len(read_archive_items(archive_root)) == served.item_count
    for item in items:
        for asset in item["assets"].values():
            assert asset["href"].startswith(served.data_url + "/data/")
        stored_links = [link["href"] for link in item["links"]]
        assert not any(href.startswith("..") for href in stored_links)


def test_cog_window_read_over_http_uses_ranges(archive_root: Path, served: ArchiveServer) -> None:
    _, rel = first_asset(archive_root)
    url = f"{served.data_url}/{rel}"
    size = (archive_root / rel).stat().st_size
    with rasterio.open(archive_root / rel) as local:
        window = Window(0, 0, min(64, local.width), min(64, local.height))
        expected = local.read(1, window=window)
    before = served.data_stats()
    with rasterio.open(url) as remote:
        got = remote.read(1, window=window)
    after = served.data_stats()
    np.testing.assert_array_equal(got, expected)
    served_bytes = after["bytes_sent"] - before["bytes_sent"]
    assert 0 < served_bytes < size
    assert after["requests"] > before["requests"]


def test_stop_closes_ports_and_removes_files(archive_root: Path) -> None:
    srv = serve_archive(archive_root)
    with srv:
        stac_url, data_url, workdir = srv.stac_url, srv.data_url, srv.workdir
        assert workdir is not None and workdir.is_dir()
        assert not port_is_closed(stac_url) and not port_is_closed(data_url)
    assert port_is_closed(stac_url) and port_is_closed(data_url)
    assert not workdir.exists()
    assert srv.stac_url == ""


def test_missing_or_invalid_archive_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(InvalidInputError) as err:
        serve_archive(missing).start()
    assert str(missing) in str(err.value)
    assert "eoforge archive create DIR --preset tiny" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no stac/collections"):
        serve_archive(empty).start()


def test_nan_in_items_is_refused_and_nothing_is_left_running(tmp_path: Path) -> None:
    root = write_sample_archive(tmp_path / "broken")
    ndjson = sorted((root / "stac" / "items").glob("*.ndjson"))[0]
    lines = ndjson.read_text().splitlines()
    bad = json.loads(lines[0])
    lines.append(json.dumps({**bad, "id": "bad", "bbox": [float("nan")] * 4}))
    ndjson.write_text("\n".join(lines) + "\n")
    srv = serve_archive(root)
    with pytest.raises(InvalidInputError) as err:
        srv.start()
    assert f"{ndjson}:{len(lines)}" in str(err.value) and "NaN" in str(err.value)
    assert srv.workdir is not None and not srv.workdir.exists()


def test_archive_dir_from_source() -> None:
    assert archive_dir_from_source("archive:/data/a") == Path("/data/a")
    assert archive_dir_from_source("https://stac.example.invalid/v1") is None


def test_range_server_process_stops_on_a_burst_of_signals(archive_root: Path) -> None:
    """Repeated SIGTERMs (one per thread of a dying parent, via PR_SET_PDEATHSIG) stop it cleanly.

    A handler that took a lock (``Event.set``) deadlocked when a second signal arrived while the
    first handler held the lock, and the server outlived the build that started it.
    """
    argv = [sys.executable, "-m", "pipelines.archive.range_server", str(archive_root)]
    for attempt in range(8):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        with proc.stdout:
            url = proc.stdout.readline().decode().strip()
            try:
                assert url.startswith("http://127.0.0.1:"), f"no URL from the server: {url!r}"
                for _ in range(300):  # as fast as they can be sent: many land inside a handler
                    if proc.poll() is not None:
                        break
                    proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert code == 0, f"attempt {attempt}: exit code {code}"
        assert port_is_closed(url)


# --- the CLI: start, read the URLs file, query, signal, exit 0 --------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_serve_until_signal(archive_root: Path, tmp_path: Path, sig: signal.Signals) -> None:
    urls_file = tmp_path / "urls.json"
    argv = [*eoforge_argv(), "archive", "serve", str(archive_root), "--urls-file", str(urls_file)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"}
    )
    try:
        deadline = time.monotonic() + 60
        while not urls_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no URLs file within 60 s"
            time.sleep(0.1)
        urls = json.loads(urls_file.read_text())
        assert urls["backend"] == "rustac"
        with open_client(urls["stac_url"]) as client:
            found = list(client.search(collections=check_archive(archive_root)).items_as_dicts())
        assert len(found) == len(read_archive_items(archive_root))
        for _ in range(50):  # back to back, as from a dying parent or an impatient user
            if proc.poll() is None:
                proc.send_signal(sig)
        out, errs = proc.communicate(timeout=30)
    finally:
        stop_cli(proc)
    assert proc.returncode == 0, errs.decode()
    text = out.decode()
    assert urls["stac_url"] in text and urls["data_url"] in text
    assert "Stopped." in text
    assert port_is_closed(urls["stac_url"]) and port_is_closed(urls["data_url"])
    assert not urls_file.exists()
    assert not Path(urls["workdir"]).exists()


# --- the client-side fallbacks on their own -----------------------------------------------------


def _item(item_id: str, **props: object) -> dict[str, object]:
    return {"id": item_id, "collection": "c", "properties": props}


def test_filter_cloud_is_cql2_less_or_equal() -> None:
    items = [
        _item("a", **{"eo:cloud_cover": 10.0}),
        _item("b", **{"eo:cloud_cover": 10.5}),
        _item("c"),  # no cloud cover: a CQL2 comparison is not true
        _item("d", **{"eo:cloud_cover": 0}),
        _item("e", **{"eo:cloud_cover": True}),  # not a number
    ]
    assert [i["id"] for i in filter_cloud(items, 10.0)] == ["a", "d"]


def test_sort_items_descending_with_missing_last() -> None:
    items = [
        _item("b", datetime="2024-01-02T00:00:00Z", **{"eo:cloud_cover": 5.0}),
        _item("a", datetime="2024-01-01T00:00:00Z"),
        _item("c", datetime="2024-01-02T00:00:00Z", **{"eo:cloud_cover": 5.0}),
        _item("d", datetime="2024-01-03T00:00:00Z", **{"eo:cloud_cover": 9.0}),
    ]
    by_cloud = sort_items(items, ["-properties.eo:cloud_cover", "-id"])
    assert [i["id"] for i in by_cloud] == ["d", "c", "b", "a"]
    assert [i["id"] for i in sort_items(items, ["+datetime", "id"])] == ["a", "b", "c", "d"]


def test_servers_bind_loopback_by_default(served: ArchiveServer) -> None:
    """A served archive is reachable from this machine only unless told otherwise."""
    from urllib.parse import urlsplit

    assert urlsplit(served.stac_url).hostname == "127.0.0.1"
    assert urlsplit(served.data_url).hostname == "127.0.0.1"
