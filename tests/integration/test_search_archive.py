"""pipelines.search against a real ``rustac serve`` over the small hand-made sample archive.

rustac's in-memory backend conforms to neither Filter nor Query, so the cloud filter runs on the
client; a page size of 1 makes the search follow rustac's own ``next`` links.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _archive_sample import SAMPLE_ITEMS, write_sample_archive
from shapely.geometry import box

from pipelines.archive.serve import ArchiveServer, serve_archive
from pipelines.search import CloudFilter, DropReason, search_sensor, search_sensor_detailed
from schemas.errors import NotFoundError
from schemas.recipe import SensorConfig
from schemas.sensors import Provider, SensorId

pytestmark = pytest.mark.integration

JANUARY = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC))
#: Overlaps tiles 32UNU (9.0-9.5 E) and 32UPU (9.4-9.9 E) at 48.0-48.5 N, not 32UNV (48.6+ N).
AOI = box(9.1, 48.1, 9.45, 48.4)


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_archive(tmp_path_factory.mktemp("search-archive"))


@pytest.fixture(scope="module")
def served(archive_root: Path) -> Iterator[ArchiveServer]:
    with serve_archive(archive_root) as srv:
        yield srv


def _sentinel2(root: Path, max_cloud_cover: float = 20) -> SensorConfig:
    return SensorConfig(
        id=SensorId.SENTINEL_2_L2A, catalog=f"archive:{root}", max_cloud_cover=max_cloud_cover
    )


def test_sample_archive_is_what_the_expectations_assume() -> None:
    clouds = {item.id: item.cloud_cover for item in SAMPLE_ITEMS}
    assert clouds["S2A_T32UNU_20240103"] == 5.0
    assert clouds["S2A_T32UNU_20240113"] == 60.0
    assert clouds["S2B_T32UPU_20240123"] == 15.0


def test_bbox_dates_and_cloud_search(archive_root: Path, served: ArchiveServer) -> None:
    sensor = _sentinel2(archive_root)
    assert sensor.provider is Provider.ARCHIVE
    result = search_sensor_detailed(sensor, AOI, *JANUARY, catalog_url=served.stac_url, page_size=1)
    assert result.ids == ["S2A_T32UNU_20240103", "S2B_T32UPU_20240123"]
    assert [(d.id, d.reason, d.detail) for d in result.dropped] == [
        ("S2A_T32UNU_20240113", DropReason.CLOUD, "60 > 20")
    ]
    assert result.cloud_filter is CloudFilter.CLIENT
    assert (result.pages, result.fetched) == (3, 3)
    hrefs = [a["href"] for item in result.items for a in item["assets"].values()]
    assert len(hrefs) == 2 and all(h.startswith(served.data_url + "/data/") for h in hrefs)


def test_end_is_exclusive(archive_root: Path, served: ArchiveServer) -> None:
    items = search_sensor(
        _sentinel2(archive_root, max_cloud_cover=100),
        AOI,
        JANUARY[0],
        datetime(2024, 1, 23, 10, 30, tzinfo=UTC),  # the instant of S2B_T32UPU_20240123
        catalog_url=served.stac_url,
    )
    assert [item["id"] for item in items] == ["S2A_T32UNU_20240103", "S2A_T32UNU_20240113"]


def test_empty_search_names_sensor_and_dates(archive_root: Path, served: ArchiveServer) -> None:
    with pytest.raises(NotFoundError) as info:
        search_sensor(
            _sentinel2(archive_root),
            AOI,
            datetime(2023, 6, 1, tzinfo=UTC),
            datetime(2023, 7, 1, tzinfo=UTC),
            catalog_url=served.stac_url,
        )
    message = str(info.value)
    for part in (
        "sentinel-2-l2a",
        "2023-06-01T00:00:00+00:00",
        "2023-07-01T00:00:00+00:00",
        "[9.1000, 48.1000, 9.4500, 48.4000]",
        served.stac_url,
        "widen the dates",
        "max_cloud_cover (now 20)",
    ):
        assert part in message
