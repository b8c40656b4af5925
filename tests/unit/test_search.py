"""pipelines.search without a network: item normalisation, retry policy, arguments, summary."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point, box
from urllib3 import HTTPResponse

from pipelines.search import (
    CloudFilter,
    DroppedItem,
    DropReason,
    RetryPolicy,
    SearchResult,
    normalise_items,
    search_sensor,
)
from schemas.errors import InvalidInputError
from schemas.profiles import get_profile
from schemas.recipe import SensorConfig
from schemas.sensors import Provider, SensorId

DATA = Path(__file__).resolve().parents[1] / "data" / "stac" / "earth-search-v1"
WORLD = box(-180, -90, 180, 90)


def _item(name: str) -> dict[str, Any]:
    item: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return item


@pytest.fixture
def landsat() -> dict[str, Any]:
    """Real Earth Search Landsat 8 item: 2023-10-08T17:37:26Z, cloud 0.06, near Denver."""
    return _item("LC08_L2SP_033032_20231008_02_T1")


@pytest.fixture
def sentinel2() -> dict[str, Any]:
    """Real Earth Search c1 item: 2024-04-02T17:52:57Z, cloud 0.118, MGRS 13TDE."""
    return _item("S2A_T13TDE_20240402T174230_L2A")


def _variant(item: dict[str, Any], new_id: str, **props: Any) -> dict[str, Any]:
    out = copy.deepcopy(item)
    out["id"] = new_id
    out["properties"].update(props)
    return out


def test_landsat_7_is_dropped_as_unsupported_platform(landsat: dict[str, Any]) -> None:
    le07 = _variant(landsat, "LE07_fake", platform="landsat-7")
    profile = get_profile(SensorId.LANDSAT_C2_L2, Provider.EARTH_SEARCH)
    kept, dropped = normalise_items(
        [landsat, le07],
        profile=profile,
        collection="landsat-c2-l2",
        aoi=WORLD,
        start=datetime(2023, 10, 1, tzinfo=UTC),
        end=datetime(2023, 11, 1, tzinfo=UTC),
        max_cloud_cover=10,
    )
    assert [it["id"] for it in kept] == ["LC08_L2SP_033032_20231008_02_T1"]
    assert kept[0] is landsat  # the raw dict itself, not a copy
    assert [(d.id, d.reason, d.detail) for d in dropped] == [
        ("LE07_fake", DropReason.UNSUPPORTED_PLATFORM, "landsat-7")
    ]


def test_each_drop_reason_and_sort_order(sentinel2: dict[str, Any]) -> None:
    profile = get_profile(SensorId.SENTINEL_2_L2A, Provider.EARTH_SEARCH)
    early = _variant(sentinel2, "B_early", datetime="2024-04-01T10:00:00.123456789Z")
    same_time = _variant(sentinel2, "A_same_time")
    cloudy = _variant(sentinel2, "cloudy", **{"eo:cloud_cover": 35.5})
    no_cloud = _variant(sentinel2, "no_cloud")
    del no_cloud["properties"]["eo:cloud_cover"]
    late = _variant(sentinel2, "late", datetime="2024-05-01T00:00:00Z")  # end is exclusive
    legacy = _variant(sentinel2, "legacy")
    legacy["collection"] = "sentinel-2-l2a"
    far = _variant(sentinel2, "far")
    far["geometry"] = box(10, 50, 11, 51).__geo_interface__
    kept, dropped = normalise_items(
        [sentinel2, early, cloudy, no_cloud, late, legacy, far, same_time, copy.deepcopy(early)],
        profile=profile,
        collection="sentinel-2-c1-l2a",
        aoi=box(-105.2, 39.8, -105.0, 40.0),
        start=datetime(2024, 4, 1, tzinfo=UTC),
        end=datetime(2024, 5, 1, tzinfo=UTC),
        max_cloud_cover=20,
    )
    assert [it["id"] for it in kept] == [
        "B_early",
        "A_same_time",
        "S2A_T13TDE_20240402T174230_L2A",
    ]
    assert {d.id: (d.reason, d.detail) for d in dropped} == {
        "cloudy": (DropReason.CLOUD, "35.5 > 20"),
        "no_cloud": (DropReason.CLOUD, "no eo:cloud_cover"),
        "late": (DropReason.OUTSIDE_DATES, "2024-05-01T00:00:00+00:00"),
        "legacy": (DropReason.OTHER_COLLECTION, "sentinel-2-l2a"),
        "far": (DropReason.OUTSIDE_AOI, "10.0000, 50.0000, 11.0000, 51.0000"),
        "B_early": (DropReason.DUPLICATE, "id returned before"),
    }


def test_aoi_is_the_polygon_not_its_bbox(sentinel2: dict[str, Any]) -> None:
    # A thin L-shaped AOI whose bbox covers the scene but whose arms miss it.
    scene = box(-105.35, 39.66, -104.88, 40.65)
    aoi = box(-106.0, 39.0, -105.9, 41.0).union(box(-106.0, 39.0, -104.0, 39.1))
    assert aoi.envelope.intersects(scene) and not aoi.intersects(scene)
    kept, dropped = normalise_items(
        [sentinel2],
        profile=get_profile(SensorId.SENTINEL_2_L2A, Provider.EARTH_SEARCH),
        collection="sentinel-2-c1-l2a",
        aoi=aoi,
        start=datetime(2024, 4, 1, tzinfo=UTC),
        end=datetime(2024, 5, 1, tzinfo=UTC),
        max_cloud_cover=None,
    )
    assert kept == []
    assert [d.reason for d in dropped] == [DropReason.OUTSIDE_AOI]


def test_numeric_string_cloud_cover_like_dlr() -> None:
    # DLR EOC writes eo:cloud_cover as a string ("72" in the recorded EnMAP search page).
    item = {
        "id": "ENMAP01-x",
        "collection": "ENMAP_HSI_L2A",
        "geometry": Point(11.0, 48.0).buffer(0.1).__geo_interface__,
        "properties": {"datetime": "2025-07-08T10:44:07Z", "eo:cloud_cover": "72"},
    }
    profile = get_profile(SensorId.ENMAP_L2A, Provider.DLR)
    args: dict[str, Any] = {
        "profile": profile,
        "collection": "ENMAP_HSI_L2A",
        "aoi": box(10.5, 47.5, 11.5, 48.5),
        "start": datetime(2025, 7, 1, tzinfo=UTC),
        "end": datetime(2025, 8, 1, tzinfo=UTC),
    }
    kept, _ = normalise_items([item], max_cloud_cover=80, **args)
    assert [it["id"] for it in kept] == ["ENMAP01-x"]
    kept, dropped = normalise_items([item], max_cloud_cover=50, **args)
    assert kept == [] and dropped[0].detail == "72 > 50"


def test_sar_items_without_cloud_cover_are_kept() -> None:
    s1 = _item("S1A_IW_GRDH_1SSH_20250731T135637_20250731T135702_060328_077F7E")
    kept, dropped = normalise_items(
        [s1],
        profile=get_profile(SensorId.SENTINEL_1_GRD, Provider.EARTH_SEARCH),
        collection="sentinel-1-grd",
        aoi=box(75, -48, 76, -47),
        start=datetime(2025, 7, 31, tzinfo=UTC),
        end=datetime(2025, 8, 1, tzinfo=UTC),
        max_cloud_cover=None,
    )
    assert [it["id"] for it in kept] == [s1["id"]] and dropped == []


def test_retry_policy_retries_post_on_transient_statuses_only() -> None:
    retry = RetryPolicy(max_retries=6, backoff_factor=0.25, backoff_max=2.0).to_urllib3()
    assert retry.total == 6
    for status in (429, 500, 502, 503, 504):
        assert retry.is_retry("POST", status)
    for status in (400, 401, 403, 404):
        assert not retry.is_retry("POST", status)
    # Exponential backoff: 0.25 * 2 ** (n - 1) after the n-th consecutive error, capped.
    for n, expected in ((2, 0.5), (3, 1.0), (5, 2.0)):
        later = retry
        for _ in range(n):
            later = later.increment("POST", "/search", HTTPResponse(status=503))
        assert later.get_backoff_time() == expected


def test_retry_after_header_is_capped() -> None:
    retry = RetryPolicy(backoff_max=1.5).to_urllib3()
    response = HTTPResponse(status=429, headers={"Retry-After": "3600"})
    assert retry.get_retry_after(response) == 1.5


def test_archive_catalog_needs_a_served_url() -> None:
    sensor = SensorConfig(id=SensorId.SENTINEL_2_L2A, catalog="archive:/nowhere")
    with pytest.raises(InvalidInputError, match="serve_archive") as info:
        search_sensor(sensor, box(9, 48, 9.5, 48.5), datetime(2024, 1, 1), datetime(2024, 2, 1))
    assert "archive:/nowhere" in str(info.value)


def test_end_must_follow_start() -> None:
    sensor = SensorConfig(id=SensorId.SENTINEL_2_L2A, catalog="archive:/nowhere")
    with pytest.raises(InvalidInputError, match="not after start"):
        search_sensor(
            sensor,
            box(9, 48, 9.5, 48.5),
            datetime(2024, 2, 1),
            datetime(2024, 2, 1),
            catalog_url="http://127.0.0.1:9",
        )


def test_summary_counts_drops() -> None:
    result = SearchResult(
        sensor=SensorId.SENTINEL_2_L2A,
        provider=Provider.EARTH_SEARCH,
        collection="sentinel-2-c1-l2a",
        catalog_url="http://127.0.0.1:1",
        items=({"id": "a"}, {"id": "b"}),
        dropped=(
            DroppedItem("c", DropReason.CLOUD, "50 > 40"),
            DroppedItem("d", DropReason.CLOUD, "60 > 40"),
            DroppedItem("e", DropReason.UNSUPPORTED_PLATFORM, "landsat-7"),
        ),
        cloud_filter=CloudFilter.QUERY,
        pages=2,
        fetched=5,
    )
    assert result.ids == ["a", "b"]
    assert result.drop_counts() == {DropReason.CLOUD: 2, DropReason.UNSUPPORTED_PLATFORM: 1}
    assert result.summary() == (
        "sentinel-2-l2a (sentinel-2-c1-l2a): kept 2 of 5 items from 2 page(s), cloud filter "
        "query; dropped 2 cloud, 1 unsupported-platform"
    )
