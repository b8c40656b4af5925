"""Every generated item has a real footprint: finite bbox, non-empty valid polygon.

Regression: swath-cut scenes once got an empty footprint (NaN bbox) that STAC servers refuse.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from shapely.geometry import box, shape

pytestmark = pytest.mark.integration


def test_every_item_has_a_finite_bbox_and_a_non_empty_footprint(tiny_archive: Path) -> None:
    n = 0
    for path in sorted((tiny_archive / "stac" / "items").glob("*.ndjson")):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            geom = shape(item["geometry"])
            assert not geom.is_empty and geom.is_valid, item["id"]
            assert all(math.isfinite(v) for v in item["bbox"]), item["id"]
            # The bbox encloses the footprint (to the 7-decimal rounding of the coordinates).
            assert box(*item["bbox"]).buffer(1e-6).contains(geom), item["id"]
            assert geom.area > 1e-5, item["id"]  # more than a sliver (~0.1 km² here)
            n += 1
    assert n >= 10
