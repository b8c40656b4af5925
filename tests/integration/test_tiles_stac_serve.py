"""A cube's tile catalog served as a STAC API (rustac, stac-fastapi-pgstac) and published to pgstac.

The expected answers come from a brute-force filter over the committed rows (``TileRecord``s):
footprint intersects the bbox, the half-open period ``[start, end)`` meets the closed search
interval, and the CQL2 conditions evaluated in Python on the row's own values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import shapely
from _archive_sample import open_client, port_is_closed, stop_cli
from shapely import box
from typer.testing import CliRunner

from catalog.stac import cube_stac
from catalog.stac_serve import CubeServer, publish_pgstac, serve_cube
from catalog.writer import CatalogWriter, read_records
from pipelines.archive.pgstac import (
    PostgresCluster,
    missing_pgstac_requirements,
    run_pypgstac,
    serve_stac_fastapi_pgstac,
)
from pipelines.archive.processes import free_port
from pipelines.grid import Tile
from pipelines.write import open_or_create_cube
from schemas.cube import CubeLayout, LabelLayout, SensorLayout
from schemas.errors import NotFoundError, TransientError
from schemas.tile import SensorObservation, TileRecord

pytestmark = pytest.mark.integration

TILE_M = 1200.0
S2, S1 = "sentinel-2-l2a", "sentinel-1-rtc"
CORINE = ("UNLABELED", "Pastures", "Forest, broad-leaved", "Water bodies")
PERIODS = {
    "2024-06": (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC)),
    "2024-07": (datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 8, 1, tzinfo=UTC)),
}
LAYOUT = CubeLayout.for_recipe_like(
    [SensorLayout(S2, ("B04", "B08"), 10.0), SensorLayout(S1, ("vv", "vh"), 20.0)],
    tile_size_m=TILE_M,
    tiles_per_shard=4,
    labels=[LabelLayout("corine", CORINE)],
)
#: Tiles on both sides of the UTM 32/33 seam (12 E), two rows.
TILES = [Tile(32, "N", col, row, TILE_M) for col in (601, 602, 603) for row in (4400, 4401)] + [
    Tile(33, "N", col, row, TILE_M) for col in (229, 230) for row in (4400, 4401)
]


def make_records() -> list[TileRecord]:
    """One row per tile and period with varied clouds, splits and labels (deterministic)."""
    records = []
    position = 0
    for period_id, (start, end) in PERIODS.items():
        for i, tile in enumerate(TILES):
            k = position
            footprint = tile.footprint_wgs84()
            sensors = [
                SensorObservation(S1, (start.replace(day=5),), (f"S1_{k}",), None, 1.0),
            ]
            if k % 5 != 4:  # every fifth row is radar only: no eo:cloud_cover
                sensors.append(
                    SensorObservation(
                        S2, (start.replace(day=3 + i),), (f"S2_{k}",), (k * 7 % 10) / 10, 0.9
                    )
                )
            pastures = (k * 3 % 10) / 10
            records.append(
                TileRecord(
                    tile_id=tile.id,
                    period_id=period_id,
                    period_start=start,
                    period_end=end,
                    epsg=tile.epsg,
                    transform=(10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3]),
                    proj_bbox=tile.bounds,
                    geometry_wkb=shapely.to_wkb(footprint),
                    bbox=footprint.bounds,
                    cube_position=position,
                    shard_id=f"s{position // 4:05d}",
                    sensors=tuple(sensors),
                    split=(None, "train", "train", "val", "test")[k % 5],
                    class_fractions={
                        "corine": {"Pastures": pastures, "Water bodies": 1 - pastures}
                    },
                    multilabels={
                        "corine": tuple(
                            n
                            for n, f in (("Pastures", pastures), ("Water bodies", 1 - pastures))
                            if f >= 0.3
                        )
                    },
                    unlabeled_fractions={"corine": (k % 4) / 10},
                    label_flags=("corine",) if k % 4 == 3 else (),
                )
            )
            position += 1
    return records


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = make_records()
    path = tmp_path_factory.mktemp("tiles-stac") / "seam.zarr"
    open_or_create_cube(path, LAYOUT, n_tiles_capacity=len(records))
    writer = CatalogWriter(path)
    for shard in sorted({r.shard_id for r in records}):
        writer.commit_shard(shard, [r for r in records if r.shard_id == shard], run_id="run-1")
    return path


@pytest.fixture(scope="module")
def rows(cube: Path) -> list[TileRecord]:
    return [TileRecord.from_arrow_row(r) for r in read_records(cube).to_pylist()]


# --- the brute-force oracle ---------------------------------------------------------------------


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def oracle(
    rows: list[TileRecord],
    bbox: tuple[float, float, float, float] | None = None,
    interval: str | None = None,
    where: Callable[[TileRecord], bool] = lambda r: True,
) -> set[str]:
    """Ids of rows whose footprint meets ``bbox`` and whose ``[start, end)`` meets ``interval``."""
    lo, hi = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    if interval is not None:
        first, _, last = interval.partition("/")
        last = last or first
        lo = lo if first == ".." else _when(first)
        hi = hi if last == ".." else _when(last)
    area = box(*bbox) if bbox else None
    return {
        r.id
        for r in rows
        if (area is None or shapely.from_wkb(r.geometry_wkb).intersects(area))
        and r.period_start <= hi
        and r.period_end > lo
        and where(r)
    }


def cloud_percent(row: TileRecord) -> float | None:
    """The first optical sensor's cloud cover in percent (cube order; no plan, so no reference)."""
    for spec in LAYOUT.sensors:
        for obs in row.sensors:
            if obs.sensor == spec.name and obs.cloud_fraction is not None:
                return 100 * obs.cloud_fraction
    return None


def search_cases(rows: list[TileRecord]) -> list[tuple[str, Any, str | None]]:
    """(name, bbox, datetime) searches: whole extent, one tile, the zone seam, period edges."""
    everything = shapely.union_all([shapely.from_wkb(r.geometry_wkb) for r in rows]).bounds
    one = shapely.from_wkb(rows[3].geometry_wkb).centroid
    return [
        ("all", everything, None),
        ("one-tile-centre", (one.x - 1e-4, one.y - 1e-4, one.x + 1e-4, one.y + 1e-4), None),
        ("seam", (11.99, everything[1], 12.01, everything[3]), "2024-06-10T00:00:00Z"),
        ("july-first-instant", everything, "2024-07-01T00:00:00Z"),
        ("june-last-second", everything, "2024-06-30T23:59:59Z"),
        ("mid-june-range", everything, "2024-06-15T00:00:00Z/2024-06-20T00:00:00Z"),
        ("open-start", everything, "../2024-06-30T00:00:00Z"),
        ("open-end", (11.0, 47.0, 12.0, 48.0), "2024-07-15T00:00:00Z/.."),
        ("nowhere", (0.0, 0.0, 0.1, 0.1), None),
    ]


def test_search_cases_are_not_trivial(rows: list[TileRecord]) -> None:
    """The oracle separates the cases (else agreeing with it would prove little)."""
    answers = [oracle(rows, bbox, when) for _, bbox, when in search_cases(rows)]
    sizes = [len(a) for a in answers]
    assert sizes[0] == len(rows) == 20
    assert sizes[1] == 2 and sizes[-1] == 0  # one tile, both periods
    assert 0 < sizes[2] < 10 and sizes[3] == sizes[4] == 10 and 0 < sizes[7] < 10
    assert answers[3].isdisjoint(answers[4])


# --- rustac serve -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rustac_server(cube: Path) -> Iterator[CubeServer]:
    with serve_cube(cube, backend="rustac") as srv:
        yield srv
        url, workdir = srv.stac_url, srv.workdir
    assert port_is_closed(url)
    assert workdir is not None and not workdir.exists()


def test_rustac_searches_match_brute_force(
    rustac_server: CubeServer, rows: list[TileRecord]
) -> None:
    assert rustac_server.item_count == len(rows)
    with open_client(rustac_server.stac_url) as client:
        for name, bbox, when in search_cases(rows):
            search = client.search(
                collections=[rustac_server.collection_id], bbox=bbox, datetime=when, limit=7
            )
            found = [i["id"] for i in search.items_as_dicts()]
            assert len(found) == len(set(found)), name
            assert set(found) == oracle(rows, bbox, when), name


def test_rustac_agrees_with_the_embedded_query(
    rustac_server: CubeServer, cube: Path, rows: list[TileRecord]
) -> None:
    """Same tiles from ``catalog.open_catalog(cube).search`` as from the STAC API.

    Both treat a period as half-open ``[start, end)``: the Items carry ``end_datetime`` = end
    - 1 ms, and the embedded query excludes the end, so the instant July 1st 00:00 matches
    July rows only, in both.
    """
    from catalog import open_catalog

    embedded = open_catalog(cube)
    with open_client(rustac_server.stac_url) as client:
        for name, bbox, when in search_cases(rows):
            search = client.search(collections=["seam"], bbox=bbox, datetime=when)
            served = {i["id"] for i in search.items_as_dicts()}
            local = set(embedded.search(bbox=bbox, datetime=when).ids())
            assert served == local, name


def test_served_items_are_the_generated_items(rustac_server: CubeServer, cube: Path) -> None:
    expected = {i["id"]: i for i in cube_stac(cube).items}
    with open_client(rustac_server.stac_url) as client:
        collection = client.get_collection(rustac_server.collection_id)
        assert (
            collection.extent.spatial.bboxes[0]
            == cube_stac(cube).collection["extent"]["spatial"]["bbox"][0]
        )
        served = list(client.search(collections=[collection.id]).items_as_dicts())
    assert {i["id"] for i in served} == set(expected)
    for item in served:
        want = expected[item["id"]]
        assert item["properties"] == want["properties"]
        assert item["assets"] == want["assets"]
        assert item["geometry"] == want["geometry"]
        rels = [link["rel"] for link in item["links"]]
        assert rels.count("collection") == 1, rels  # the staged copy's own link was dropped
        assert {"self", "root", "parent"} <= set(rels)


def test_cli_serve_until_sigint(cube: Path, rows: list[TileRecord]) -> None:
    port = free_port()
    code = (
        "import typer; from flows.cli_tiles_stac import register; "
        "app = typer.Typer(); register(app); app()"
    )
    argv = [sys.executable, "-c", code, "serve", str(cube), "--port", str(port)]
    lines: list[str] = []
    url = f"http://127.0.0.1:{port}"
    errs = ""
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while not any(line.startswith("Serving") for line in list(lines)):
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, f"not serving within 60 s: {lines}"
                time.sleep(0.1)
            with open_client(url) as client:
                search = client.search(collections=["seam"])
                found = {i["id"] for i in search.items_as_dicts()}
            assert found == {r.id for r in rows}
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            reader.join(timeout=10)
            errs = proc.stderr.read()
        finally:
            stop_cli(proc)
    assert proc.returncode == 0, errs
    out = "".join(lines)
    assert f"STAC API (rustac): {url}" in out
    assert "Collection seam: 20 items" in out and "Stopped." in out
    assert port_is_closed(url)


# --- pgstac: publish into a throwaway cluster, serve with stac-fastapi-pgstac -------------------

_MISSING = missing_pgstac_requirements()
needs_pgstac = pytest.mark.skipif(
    bool(_MISSING), reason=f"pgstac backend unavailable: {'; '.join(_MISSING)}"
)


@pytest.fixture(scope="module")
def pgstac_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PostgresCluster, Path]]:
    workdir = tmp_path_factory.mktemp("pgstac")
    with PostgresCluster() as cluster:
        log = workdir / "migrate.log"
        run_pypgstac([["migrate"]], env=cluster.env(), log=log, timeout_s=120, dsn=cluster.dsn)
        yield cluster, workdir


@pytest.fixture(scope="module")
def pgstac_url(pgstac_cluster: tuple[PostgresCluster, Path], cube: Path) -> Iterator[str]:
    cluster, workdir = pgstac_cluster
    first = publish_pgstac(cube, cluster.dsn, password=cluster.password, cube_href="old.zarr")
    # Publishing again upserts: no duplicate-key failure, the new href wins.
    second = publish_pgstac(cube, cluster.dsn, password=cluster.password, cube_href="seam.zarr")
    assert first.item_count == second.item_count == 20
    assert "eoforge:split" in second.queryables and "eo:cloud_cover" in second.queryables
    with serve_stac_fastapi_pgstac(
        cluster, host="127.0.0.1", port=0, workdir=workdir, timeout_s=60
    ) as url:
        yield url


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _corine(row: TileRecord) -> tuple[str, ...]:
    return tuple(row.multilabels.get("corine", ()))


FILTERS: list[tuple[str, dict[str, Any], Callable[[TileRecord], bool]]] = [
    (
        "cloud<=30",
        {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 30]},
        lambda r: (c := cloud_percent(r)) is not None and c <= 30,
    ),
    (
        "split=val",
        {"op": "=", "args": [{"property": "eoforge:split"}, "val"]},
        lambda r: r.split == "val",
    ),
    (
        "pastures-multilabel",
        {"op": "a_contains", "args": [{"property": "eoforge:multilabels.corine"}, ["Pastures"]]},
        lambda r: "Pastures" in _corine(r),
    ),
    (
        "unlabeled<0.15",
        {"op": "<", "args": [{"property": "eoforge:unlabeled_fractions.corine"}, 0.15]},
        lambda r: r.unlabeled_fractions["corine"] < 0.15,
    ),
    (
        "flagged",
        {"op": "a_contains", "args": [{"property": "eoforge:label_flags"}, ["corine"]]},
        lambda r: "corine" in r.label_flags,
    ),
    (
        "train-and-clear-and-water",
        {
            "op": "and",
            "args": [
                {"op": "=", "args": [{"property": "eoforge:split"}, "train"]},
                {"op": "<", "args": [{"property": "eo:cloud_cover"}, 60]},
                {
                    "op": "a_contains",
                    "args": [{"property": "eoforge:multilabels.corine"}, ["Water bodies"]],
                },
            ],
        },
        lambda r: (
            r.split == "train"
            and (c := cloud_percent(r)) is not None
            and c < 60
            and "Water bodies" in _corine(r)
        ),
    ),
]


def test_filters_are_not_trivial(rows: list[TileRecord]) -> None:
    for name, _, where in FILTERS:
        assert 0 < len(oracle(rows, where=where)) < len(rows), name


@needs_pgstac
@pytest.mark.slow
def test_pgstac_cql2_filters_match_brute_force(pgstac_url: str, rows: list[TileRecord]) -> None:
    cases = search_cases(rows)
    with open_client(pgstac_url) as client:
        for name, cql2, where in FILTERS:
            for case, bbox, when in (cases[0], cases[2], cases[3]):
                search = client.search(
                    collections=["seam"],
                    bbox=bbox,
                    datetime=when,
                    filter=cql2,
                    filter_lang="cql2-json",
                    limit=5,
                )
                found = {i["id"] for i in search.items_as_dicts()}
                assert found == oracle(rows, bbox, when, where), f"{name} / {case}"


@needs_pgstac
@pytest.mark.slow
def test_pgstac_serves_the_upserted_items(pgstac_url: str, cube: Path) -> None:
    with open_client(pgstac_url) as client:
        items = list(client.search(collections=["seam"]).items_as_dicts())
        queryables = client.get_merged_queryables(["seam"])
    assert len(items) == 20
    assert {i["assets"]["cube"]["href"] for i in items} == {"seam.zarr"}
    expected = {i["id"]: i for i in cube_stac(cube, cube_href="seam.zarr").items}
    for item in items:
        # pgstac keeps no null-valued fields (label:properties, an unassigned split).
        want = _without_nulls(expected[item["id"]]["properties"])
        assert _without_nulls(item["properties"]) == want
    assert queryables["properties"]["eo:cloud_cover"]["type"] == "number"
    assert "eoforge:multilabels.corine" in queryables["properties"]


@needs_pgstac
@pytest.mark.slow
def test_cli_publish_keeps_the_password_out(
    pgstac_cluster: tuple[PostgresCluster, Path], cube: Path
) -> None:
    import typer

    from flows.cli_tiles_stac import register

    cluster, _ = pgstac_cluster
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    dsn = f"postgresql://{cluster.user}:{cluster.password}@{cluster.host}:{cluster.port}/postgres"
    args = ["publish", str(cube), "--pgstac", dsn, "--collection-id", "seam-cli"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Published 20 items of collection seam-cli" in result.output
    assert cluster.password not in result.output
    bad = dsn.replace(cluster.password, "not-the-password")
    with pytest.raises(TransientError) as caught:
        publish_pgstac(cube, bad)
    assert "not-the-password" not in str(caught.value)
    assert "password authentication failed" in str(caught.value)
    with pytest.raises(NotFoundError, match="no pgstac schema"):
        publish_pgstac(cube, dsn.removesuffix("/postgres") + "/template1")


@needs_pgstac
@pytest.mark.slow
def test_serve_cube_with_the_pgstac_backend(cube: Path, rows: list[TileRecord]) -> None:
    with serve_cube(cube, backend="pgstac") as srv, open_client(srv.stac_url) as client:
        assert client.conforms_to("FILTER")
        search = client.search(
            collections=["seam"],
            filter={"op": "=", "args": [{"property": "eoforge:split"}, "test"]},
            filter_lang="cql2-json",
        )
        found = {i["id"] for i in search.items_as_dicts()}
        url = srv.stac_url
    assert found == oracle(rows, where=lambda r: r.split == "test")
    assert port_is_closed(url)
