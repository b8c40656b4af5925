"""The same archive through stac-fastapi-pgstac (throwaway PostgreSQL) and rustac: same answers."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _archive_sample import (
    cloud_of,
    clouded_collections,
    eoforge_argv,
    open_client,
    port_is_closed,
    read_archive_items,
    search_cases,
    stop_cli,
    write_sample_archive,
)

from pipelines.archive.pgstac import PostgresCluster, missing_pgstac_requirements
from pipelines.archive.serve import ArchiveServer, check_archive, serve_archive
from pipelines.stac_filter import conforms_to_filter, conforms_to_sort, search_items

_MISSING = missing_pgstac_requirements()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"pgstac backend unavailable: {'; '.join(_MISSING)}"),
]


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive under test. To test the real generator's archive instead, replace the body
    with ``return tiny_archive`` (and take the ``tiny_archive`` fixture as argument)."""
    return write_sample_archive(tmp_path_factory.mktemp("sample-archive"))


@pytest.fixture(scope="module")
def servers(archive_root: Path) -> Iterator[dict[str, ArchiveServer]]:
    with (
        serve_archive(archive_root, backend="rustac") as rustac,
        serve_archive(archive_root, backend="pgstac") as pgstac,
    ):
        yield {"rustac": rustac, "pgstac": pgstac}
        running = [(s.stac_url, s.data_url, s.workdir) for s in (rustac, pgstac)]
    # Teardown check: every port closed, every temporary folder gone.
    for stac_url, data_url, workdir in running:
        assert port_is_closed(stac_url) and port_is_closed(data_url)
        assert workdir is not None and not workdir.exists()


def test_conformance_differs(servers: dict[str, ArchiveServer]) -> None:
    with (
        open_client(servers["pgstac"].stac_url) as pg,
        open_client(servers["rustac"].stac_url) as rs,
    ):
        assert conforms_to_filter(pg) and conforms_to_sort(pg)
        assert not conforms_to_filter(rs) and not conforms_to_sort(rs)


def test_same_searches_same_items_on_both_servers(
    archive_root: Path, servers: dict[str, ArchiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    cases = search_cases(archive_root)
    assert any(case.max_cloud is not None for case in cases)
    for backend, server in servers.items():
        with open_client(server.stac_url) as client:
            for case in cases:
                caplog.clear()
                with caplog.at_level(logging.INFO, logger="pipelines.stac_filter"):
                    items = search_items(
                        client,
                        collections=case.collections,
                        bbox=case.bbox,
                        datetime=case.datetime,
                        max_cloud=case.max_cloud,
                        limit=1,  # one item a page: every multi-item answer is paged
                    )
                ids = [i["id"] for i in items]
                assert len(ids) == len(set(ids)), (backend, case.name)
                assert set(ids) == case.expected, (backend, case.name)
                fell_back = "filtering eo:cloud_cover client-side" in caplog.text
                assert fell_back == (backend == "rustac" and case.max_cloud is not None), (
                    backend,
                    case.name,
                )
                for item in items:
                    for asset in item["assets"].values():
                        assert asset["href"].startswith(server.data_url + "/data/")


def test_cloud_filter_over_all_collections(
    archive_root: Path, servers: dict[str, ArchiveServer]
) -> None:
    """No bbox or datetime: only the cloud filter; items without a cloud cover never match."""
    items = read_archive_items(archive_root)
    clouds = sorted(c for c in map(cloud_of, items) if c is not None)
    threshold = clouds[len(clouds) // 2]
    expected = {i["id"] for i in items if (c := cloud_of(i)) is not None and c <= threshold}
    assert expected and len(expected) < len(items)
    collections = sorted({i["collection"] for i in items})
    for backend, server in servers.items():
        with open_client(server.stac_url) as client:
            found = search_items(client, collections=collections, max_cloud=threshold, limit=2)
        assert {i["id"] for i in found} == expected, backend


def test_sorted_search_same_order_on_both(
    archive_root: Path, servers: dict[str, ArchiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    items = read_archive_items(archive_root)
    collections = clouded_collections(items)
    assert collections
    orders = {}
    for backend, server in servers.items():
        caplog.clear()
        with open_client(server.stac_url) as client, caplog.at_level(logging.INFO):
            found = search_items(
                client, collections=collections, sortby=["-eo:cloud_cover", "id"], limit=2
            )
        orders[backend] = [i["id"] for i in found]
        sorted_here = "does not conform to SORT; sorting client-side" in caplog.text
        assert sorted_here == (backend == "rustac"), backend
    members = [i for i in items if i["collection"] in collections]
    expected = [i["id"] for i in sorted(members, key=lambda i: (-(cloud_of(i) or 0.0), i["id"]))]
    assert len(expected) >= 3
    assert orders["pgstac"] == expected
    assert orders["rustac"] == expected


def test_max_items_after_client_side_filter(
    archive_root: Path, servers: dict[str, ArchiveServer]
) -> None:
    items = read_archive_items(archive_root)
    collections = clouded_collections(items)
    members = sorted(
        (i for i in items if i["collection"] in collections), key=lambda i: (cloud_of(i), i["id"])
    )
    threshold = cloud_of(members[len(members) // 2])
    assert threshold is not None
    clear = [i["id"] for i in members if (cloud_of(i) or 0.0) <= threshold]
    assert len(clear) >= 3
    for backend, server in servers.items():
        with open_client(server.stac_url) as client:
            found = search_items(
                client,
                collections=collections,
                max_cloud=threshold,
                sortby=["eo:cloud_cover", "id"],
                max_items=2,
                limit=1,
            )
        assert [i["id"] for i in found] == clear[:2], backend


def test_postgres_cluster_is_loopback_and_torn_down() -> None:
    cluster = PostgresCluster()
    with cluster:
        host, port, folder = cluster.host, cluster.port, cluster.log_path.parent
        assert host == "127.0.0.1"
        assert not port_is_closed(f"http://{host}:{port}")
        assert folder.is_dir()
        conf = (folder / "data" / "pg_hba.conf").read_text()
        assert "trust" not in [
            line.split()[-1]
            for line in conf.splitlines()
            if line.strip() and not line.startswith("#")
        ]
    assert port_is_closed(f"http://{host}:{port}")
    assert not folder.exists()


def test_cli_serve_pgstac_stops_everything_on_sigterm(archive_root: Path, tmp_path: Path) -> None:
    urls_file = tmp_path / "urls.json"
    argv = [
        *eoforge_argv(), "archive", "serve", str(archive_root),
        "--backend", "pgstac", "--urls-file", str(urls_file),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not urls_file.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no URLs file within 120 s"
            time.sleep(0.1)
        urls = json.loads(urls_file.read_text())
        assert urls["backend"] == "pgstac"
        workdir = Path(urls["workdir"])
        pg_log = (workdir / "pypgstac.log").read_text()
        assert "migrate" in pg_log
        with open_client(urls["stac_url"]) as client:
            assert conforms_to_filter(client)
            found = search_items(
                client, collections=check_archive(archive_root), max_cloud=100, limit=2
            )
        with_cloud = [i for i in read_archive_items(archive_root) if cloud_of(i) is not None]
        assert {i["id"] for i in found} == {i["id"] for i in with_cloud}
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=60)
    finally:
        stop_cli(proc)
    assert proc.returncode == 0, errs.decode()
    assert port_is_closed(urls["stac_url"]) and port_is_closed(urls["data_url"])
    assert not workdir.exists() and not urls_file.exists()


@pytest.mark.parametrize("backend", ["rustac", "pgstac"])
def test_served_catalogs_are_read_only(servers: dict[str, ArchiveServer], backend: str) -> None:
    """No STAC transaction is accepted, and the range server refuses writes."""
    import urllib.error
    import urllib.request

    server = servers[backend]
    collection = {
        "type": "Collection", "id": "planted", "stac_version": "1.0.0", "description": "x",
        "license": "other", "links": [],
        "extent": {"spatial": {"bbox": [[0, 0, 1, 1]]}, "temporal": {"interval": [[None, None]]}},
    }  # fmt: skip
    attempts = [
        ("POST", f"{server.stac_url}/collections", collection),
        ("POST", f"{server.stac_url}/collections/sentinel-2-l2a/items", {"type": "Feature"}),
        ("DELETE", f"{server.stac_url}/collections/sentinel-2-l2a", None),
        ("PUT", f"{server.data_url}/data/planted.tif", {"x": 1}),
        ("DELETE", f"{server.data_url}/data/sentinel-2-l2a", None),
    ]
    for method, url, body in attempts:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        err.value.close()
        assert err.value.code in (403, 404, 405, 501), (method, url, err.value.code)
    with open_client(server.stac_url) as client:
        assert "planted" not in [c.id for c in client.get_collections()]
