"""pipelines.search against recorded Earth Search pages replayed by a real HTTP server.

The replayed cassette (pystac-client ``TestCLISearch.test_filter``) holds the landing page and
two POST /search pages of 10 real items each (sentinel-1-grd, sentinel-2-c1-l2a,
sentinel-2-l2a, sentinel-2-l1c; 2025-07-31); the end of results is the recorded empty page of
``test_multiple_collections``. The server does not filter, so what the search keeps shows the
client-side normalisation, and the request bodies show what was asked of the server.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from replay_server import Recorded, ReplayServer, load_cassette
from shapely.geometry import box

from pipelines.search import (
    CloudFilter,
    DropReason,
    RetryPolicy,
    search_sensor,
    search_sensor_detailed,
)
from schemas.errors import InvalidInputError, NotFoundError, TransientError
from schemas.sensors import Provider, SensorId

pytestmark = pytest.mark.integration

BASE = "https://earth-search.aws.element84.com/v1"
CASSETTES = Path("stac/earth-search-v1/cassettes")
START, END = datetime(2025, 7, 31, tzinfo=UTC), datetime(2025, 8, 1, tzinfo=UTC)
WORLD = box(-180, -90, 180, 90)
FAST = RetryPolicy(max_retries=2, backoff_factor=0.001, backoff_max=0.01)
FILTER_URI = "https://api.stacspec.org/v1.0.0/item-search#filter"
QUERY_URI = "https://api.stacspec.org/v1.0.0/item-search#query"

#: The sentinel-2-c1-l2a items of the two recorded pages (cloud cover), by datetime then id.
C1_ITEMS = {
    "S2B_T24MUA_20250731T130245_L2A": 41.489562,  # page 2
    "S2B_T24MXV_20250731T130245_L2A": 24.684544,  # page 2
    "S2B_T24MWV_20250731T130245_L2A": 25.342679,  # page 2
    "S2B_T24MVV_20250731T130245_L2A": 34.760532,  # page 1
    "S2B_T24MUV_20250731T130245_L2A": 56.813848,  # page 1
    "S2B_T20EPT_20250731T131905_L2A": 26.02542,  # page 1
}
#: Page 1's ``next`` token, as recorded.
PAGE2_TOKEN = "2025-07-31T13:03:25.899000Z,S2B_T24MVV_20250731T130245_L2A,sentinel-2-c1-l2a"


@dataclass(frozen=True)
class Sensor:
    """The fields of a recipe sensor that the search reads."""

    id: SensorId
    catalog: str = BASE
    provider: Provider = Provider.EARTH_SEARCH
    collection: str | None = "sentinel-2-c1-l2a"
    max_cloud_cover: float = 40.0


@dataclass(frozen=True)
class Recording:
    recorded: list[Recorded]
    end_page: str
    landing_conformance: list[str]


@pytest.fixture(scope="module")
def recording(shared_fixtures: Path) -> Recording:
    recorded = load_cassette(
        shared_fixtures / CASSETTES / "pystac-client__TestCLISearch.test_filter.yaml", BASE
    )
    other = load_cassette(
        shared_fixtures / CASSETTES / "pystac-client__test_multiple_collections.yaml", BASE
    )
    end_page = other[1].body
    assert '"features":[]' in end_page.replace(" ", "")
    landing = json.loads(next(r.body for r in recorded if r.path == "/"))
    return Recording(recorded, end_page, list(landing["conformsTo"]))


def _server(recording: Recording, **kwargs: Any) -> ReplayServer:
    return ReplayServer(recording.recorded, BASE, end_page=recording.end_page, **kwargs)


def test_walks_both_recorded_pages(recording: Recording) -> None:
    with _server(recording) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_2_L2A, max_cloud_cover=100),
            WORLD,
            START,
            END,
            catalog_url=srv.url,
        )
    assert result.ids == list(C1_ITEMS)
    assert (result.pages, result.fetched) == (2, 20)
    assert result.cloud_filter is CloudFilter.NONE
    assert result.drop_counts() == {DropReason.OTHER_COLLECTION: 14}
    first, second, third = srv.search_bodies
    assert first is not None
    assert first["collections"] == ["sentinel-2-c1-l2a"]
    assert first["datetime"] == "2025-07-31T00:00:00.000Z/2025-07-31T23:59:59.999Z"
    assert first["bbox"] == [-180, -90, 180, 90]
    assert "query" not in first and "filter" not in first
    assert second == {"next": PAGE2_TOKEN}
    assert third is not None and third["next"].startswith("2025-07-31T13:03:19.635000Z")


def test_recorded_query_conformance_filters_cloud(recording: Recording) -> None:
    assert QUERY_URI in recording.landing_conformance
    assert FILTER_URI not in recording.landing_conformance
    with _server(recording) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url
        )
    assert result.cloud_filter is CloudFilter.QUERY
    assert srv.search_bodies[0] is not None
    assert srv.search_bodies[0]["query"] == {"eo:cloud_cover": {"lte": 40.0}}
    assert "filter" not in srv.search_bodies[0]
    assert result.ids == [i for i, cloud in C1_ITEMS.items() if cloud <= 40]
    cloudy = {d.id: d.detail for d in result.dropped if d.reason is DropReason.CLOUD}
    assert cloudy == {
        "S2B_T24MUA_20250731T130245_L2A": "41.4896 > 40",
        "S2B_T24MUV_20250731T130245_L2A": "56.8138 > 40",
    }


def test_filter_conformance_sends_cql2(recording: Recording) -> None:
    conformance = [*recording.landing_conformance, FILTER_URI]
    with _server(recording, conformance=conformance) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_2_L2A, max_cloud_cover=30),
            WORLD,
            START,
            END,
            catalog_url=srv.url,
        )
    body = srv.search_bodies[0]
    assert body is not None
    assert body["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 30.0]}
    assert body["filter-lang"] == "cql2-json"
    assert "query" not in body
    assert result.cloud_filter is CloudFilter.CQL2
    assert result.ids == [i for i, cloud in C1_ITEMS.items() if cloud <= 30]


def test_no_extension_means_client_side_filter(
    recording: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    conformance = [u for u in recording.landing_conformance if not u.endswith("#query")]
    with (
        caplog.at_level(logging.INFO, logger="pipelines.search"),
        _server(recording, conformance=conformance) as srv,
    ):
        ids = [
            item["id"]
            for item in search_sensor(
                Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url
            )
        ]
    body = srv.search_bodies[0]
    assert body is not None and "query" not in body and "filter" not in body
    assert ids == [i for i, cloud in C1_ITEMS.items() if cloud <= 40]
    assert any(
        "neither the Filter nor the Query extension" in r.getMessage()
        and "eo:cloud_cover <= 40" in r.getMessage()
        for r in caplog.records
    )


def test_sar_gets_no_cloud_filter(recording: Recording) -> None:
    with _server(recording) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_1_GRD, collection=None, max_cloud_cover=10),
            WORLD,
            START,
            END,
            catalog_url=srv.url,
        )
    assert result.cloud_filter is CloudFilter.NONE
    body = srv.search_bodies[0]
    assert body is not None and body["collections"] == ["sentinel-1-grd"] and "query" not in body
    assert result.ids == [
        "S1A_IW_GRDH_1SSH_20250731T135608_20250731T135637_060328_077F7E",
        "S1A_IW_GRDH_1SSH_20250731T135637_20250731T135702_060328_077F7E",
        "S1A_IW_GRDH_1SSH_20250731T135702_20250731T135722_060328_077F7E",
    ]


def test_aoi_polygon_drops_recorded_footprints(recording: Recording) -> None:
    # North-east Brazil (MGRS 24M): everything but the Antarctic tile 20EPT.
    with _server(recording) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_2_L2A, max_cloud_cover=100),
            box(-41, -6, -37, -3),
            START,
            END,
            catalog_url=srv.url,
        )
    assert result.ids == list(C1_ITEMS)[:-1]
    assert [d.id for d in result.dropped if d.reason is DropReason.OUTSIDE_AOI] == [
        "S2B_T20EPT_20250731T131905_L2A"
    ]


def test_signer_signs_every_kept_item(recording: Recording) -> None:
    signed: list[str] = []

    def sign(item: dict[str, Any]) -> dict[str, Any]:
        signed.append(item["id"])
        for asset in item["assets"].values():
            asset["href"] += "?sv=test-token"
        return item

    with _server(recording) as srv:
        items = search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, sign=sign, catalog_url=srv.url
        )
    assert signed == [item["id"] for item in items] and len(items) == 4
    hrefs = [a["href"] for item in items for a in item["assets"].values()]
    assert len(hrefs) > 4 * 10
    assert all(href.endswith("?sv=test-token") for href in hrefs)


def test_max_items_stops_after_first_page(recording: Recording) -> None:
    with _server(recording) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_2_L2A, max_cloud_cover=100),
            WORLD,
            START,
            END,
            catalog_url=srv.url,
            max_items=10,
        )
    assert (result.pages, result.fetched, len(srv.search_bodies)) == (1, 10, 1)
    assert result.ids == list(C1_ITEMS)[3:]


def test_dates_outside_the_recording_raise_not_found(recording: Recording) -> None:
    with _server(recording) as srv, pytest.raises(NotFoundError) as info:
        search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A),
            WORLD,
            datetime(2025, 6, 1, tzinfo=UTC),
            datetime(2025, 7, 1, tzinfo=UTC),
            catalog_url=srv.url,
        )
    message = str(info.value)
    for part in ("sentinel-2-l2a", "sentinel-2-c1-l2a", srv.url, "2025-06-01", "2025-07-01"):
        assert part in message
    assert "6 outside-dates" in message and "max_cloud_cover (now 40)" in message


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


def test_transient_503s_are_retried(recording: Recording) -> None:
    # Request 0 is the landing page (GET); 1 and 2 are the first POST /search and its retry.
    with _server(recording, fail_first=1, fail_at=frozenset({2, 3})) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_2_L2A, max_cloud_cover=100),
            WORLD,
            START,
            END,
            catalog_url=srv.url,
            retry=FAST,
        )
    statuses = [(r.method, r.status) for r in srv.requests]
    assert statuses[:5] == [
        ("GET", 503),
        ("GET", 200),
        ("POST", 503),
        ("POST", 503),
        ("POST", 200),
    ]
    assert result.ids == list(C1_ITEMS)


def test_persistent_503_is_transient_error_after_bounded_retries(recording: Recording) -> None:
    started = time.monotonic()
    with _server(recording, fail_always=True) as srv, pytest.raises(TransientError) as info:
        search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url, retry=FAST
        )
    assert time.monotonic() - started < 5
    assert len(srv.requests) == 1 + FAST.max_retries
    assert "HTTP 503" in str(info.value) and srv.url in str(info.value)


def test_persistent_503_on_a_later_page(recording: Recording) -> None:
    with _server(recording, fail_at=frozenset({2, 3, 4})) as srv, pytest.raises(TransientError):
        search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url, retry=FAST
        )
    assert [r.status for r in srv.requests] == [200, 200, 503, 503, 503]
    assert srv.requests[2].body == {"next": PAGE2_TOKEN}


def test_unreachable_api_is_transient_error() -> None:
    with ReplayServer([], BASE) as srv:
        url = srv.url  # the port is free again once the server stopped
    with pytest.raises(TransientError, match="could not reach"):
        search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=url, retry=FAST
        )


@pytest.mark.parametrize("status", [401, 403])
def test_refused_access_names_provider_and_credentials(recording: Recording, status: int) -> None:
    server = _server(recording, fail_at=frozenset({1}), fail_status=status)
    with server as srv, pytest.raises(InvalidInputError) as info:
        search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url, retry=FAST
        )
    message = str(info.value)
    assert f"HTTP {status}" in message
    assert "earth-search" in message and "credentials" in message
    assert len(srv.requests) == 2  # a refusal is not retried


def test_missing_endpoint_is_not_found(recording: Recording) -> None:
    server = _server(recording, fail_always=True, fail_status=404)
    with server as srv, pytest.raises(NotFoundError, match="HTTP 404"):
        search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url, retry=FAST
        )
    assert len(srv.requests) == 1


def test_stac_api_1_1_conformance_uris_are_understood(recording: Recording) -> None:
    # stac-fastapi 6+ declares v1.1.0 URIs, which pystac-client 0.9 does not match by itself.
    conformance = [u.replace("/v1.0.0/", "/v1.1.0/") for u in recording.landing_conformance]
    conformance.append(FILTER_URI.replace("/v1.0.0/", "/v1.1.0/"))
    with _server(recording, conformance=conformance) as srv:
        result = search_sensor_detailed(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url
        )
    assert result.cloud_filter is CloudFilter.CQL2
    body = srv.search_bodies[0]
    assert body is not None and body["filter-lang"] == "cql2-json"
    assert result.ids == [i for i, cloud in C1_ITEMS.items() if cloud <= 40]


def test_html_page_is_not_a_stac_api() -> None:
    html = Recorded("GET", "/", None, 200, "text/html", "<html><body>Welcome</body></html>")
    with ReplayServer([html], BASE) as srv, pytest.raises(InvalidInputError) as info:
        search_sensor(
            Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url, retry=FAST
        )
    assert "not a STAC API" in str(info.value) and srv.url in str(info.value)


def test_catalog_without_item_search_is_refused(recording: Recording) -> None:
    conformance = [u for u in recording.landing_conformance if "item-search" not in u]
    server = _server(recording, conformance=conformance)
    with server as srv, pytest.raises(InvalidInputError, match="does not offer item search"):
        search_sensor(Sensor(SensorId.SENTINEL_2_L2A), WORLD, START, END, catalog_url=srv.url)
    assert [r.method for r in srv.requests] == ["GET"]
