"""Build stage ``temporal``: best / composite / series per period, provenance and fractions."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.stack import SceneStack
from pipelines.temporal import composite_median, reduce_period, reduce_periods
from schemas.cube import MaskBit
from schemas.errors import InvalidInputError
from schemas.recipe import Period

V, C, S, CI, N, ND = (
    int(MaskBit.VALID),
    int(MaskBit.CLOUD),
    int(MaskBit.SHADOW),
    int(MaskBit.CIRRUS),
    int(MaskBit.SNOW),
    int(MaskBit.NODATA),
)
H = W = 8
JUNE = Period("2024-06", datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))


def _ns(text: str) -> np.datetime64:
    return np.datetime64(text, "ns")


def _mask(n_valid: int, rest: int = C, n_nodata: int = 0) -> np.ndarray:
    """An 8x8 mask: ``n_valid`` VALID pixels, then ``n_nodata`` NODATA, then ``rest``."""
    flat = np.full(H * W, rest, np.uint8)
    flat[:n_valid] = V
    flat[n_valid : n_valid + n_nodata] = ND
    return flat.reshape(H, W)


def _stack(
    masks: list[np.ndarray],
    times: list[str],
    ids: list[str] | None = None,
    *,
    data: np.ndarray | None = None,
    sensor: str = "sentinel-2-l2a",
) -> SceneStack:
    n = len(masks)
    if data is None:
        # Each scene's pixels carry its index: plane k, band b, pixel p -> 100 k + 10 b + p/100.
        pix = np.arange(H * W, dtype=np.float32).reshape(H, W) / 100
        data = np.stack([np.stack([100 * k + 10 * b + pix for b in range(2)]) for k in range(n)])
    return SceneStack(
        sensor=sensor,
        tile_id="32N-0001-0002",
        epsg=32632,
        transform=Affine(10, 0, 500000, 0, -10, 5000000),
        resolution_m=10.0,
        bands=tuple(f"b{i}" for i in range(data.shape[1])),
        data=data.astype(np.float32),
        mask=np.stack(masks).astype(np.uint8),
        times=np.array([_ns(t) for t in times], dtype="datetime64[ns]"),
        item_ids=tuple(ids if ids is not None else [f"item-{k}" for k in range(n)]),
    )


# --- best -------------------------------------------------------------------------------------


def test_best_picks_the_clearest_scene() -> None:
    stack = _stack(
        [_mask(30), _mask(50, rest=S), _mask(20), _mask(10, n_nodata=4)],
        ["2024-06-02", "2024-06-09", "2024-06-16", "2024-06-23"],
    )
    out = reduce_period(stack, JUNE, "best", None)
    assert out is not None
    assert out.sources == (("item-1",),)
    np.testing.assert_array_equal(out.times, [_ns("2024-06-09")])
    np.testing.assert_array_equal(out.data, stack.data[1:2])
    np.testing.assert_array_equal(out.mask, stack.mask[1:2])
    assert out.period_id == "2024-06"
    assert out.valid_fraction == 50 / 64
    assert out.cloud_fraction == 14 / 64  # the 14 SHADOW pixels


def test_best_ties_break_on_time_then_item_id_whatever_the_input_order() -> None:
    masks = [_mask(40), _mask(40), _mask(40), _mask(39)]
    times = ["2024-06-20", "2024-06-05", "2024-06-05", "2024-06-01"]
    ids = ["d", "c", "b", "a"]
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        stack = _stack(
            [masks[i] for i in order], [times[i] for i in order], [ids[i] for i in order]
        )
        out = reduce_period(stack, JUNE, "best", None)
        assert out is not None
        assert out.sources == (("b",),)
        np.testing.assert_array_equal(out.times, [_ns("2024-06-05")])


def test_period_boundaries_start_included_end_excluded() -> None:
    stack = _stack(
        [_mask(64), _mask(10), _mask(20), _mask(63)],
        [
            "2024-07-01T00:00:00",  # = end: excluded, although clearest
            "2024-06-01T00:00:00",  # = start: included
            "2024-06-30T23:59:59.999999999",  # last ns: included
            "2024-05-31T23:59:59.999999999",  # before start: excluded
        ],
    )
    out = reduce_period(stack, JUNE, "series", 10)
    assert out is not None
    assert out.sources == (("item-1",), ("item-2",))
    best = reduce_period(stack, JUNE, "best", None)
    assert best is not None and best.sources == (("item-2",),)
    july = Period("2024-07", JUNE.end, datetime(2024, 8, 1, tzinfo=UTC))
    july_best = reduce_period(stack, july, "best", None)
    assert july_best is not None and july_best.sources == (("item-0",),)


def test_none_when_no_scene_qualifies() -> None:
    stack = _stack([_mask(10), _mask(0, n_nodata=64)], ["2024-06-03", "2024-06-04"])
    may = Period("2024-05", datetime(2024, 5, 1, tzinfo=UTC), JUNE.start)
    assert reduce_period(stack, may, "best", None) is None
    assert reduce_period(stack, JUNE, "composite", None, min_valid_fraction=0.2) is None
    kept = reduce_period(stack, JUNE, "series", 5, min_valid_fraction=10 / 64)
    assert kept is not None and kept.sources == (("item-0",),)
    # A scene that never observes the tile is not a scene of the tile, even at fraction 0.
    series = reduce_period(stack, JUNE, "series", 5)
    assert series is not None and series.sources == (("item-0",),)
    only_empty = _stack([_mask(0, n_nodata=64)], ["2024-06-04"])
    assert reduce_period(only_empty, JUNE, "best", None) is None


# --- series -----------------------------------------------------------------------------------


def test_series_keeps_the_clearest_in_chronological_order() -> None:
    counts = [12, 60, 5, 33, 48]
    times = ["2024-06-25", "2024-06-20", "2024-06-15", "2024-06-10", "2024-06-05"]
    stack = _stack([_mask(c) for c in counts], times)
    out = reduce_period(stack, JUNE, "series", 3)
    assert out is not None
    # clearest three: item-1 (60), item-4 (48), item-3 (33); chronological: 4, 3, 1
    assert out.sources == (("item-4",), ("item-3",), ("item-1",))
    np.testing.assert_array_equal(
        out.times, [_ns(t) for t in ("2024-06-05", "2024-06-10", "2024-06-20")]
    )
    np.testing.assert_array_equal(out.data, stack.data[[4, 3, 1]])
    np.testing.assert_array_equal(out.mask, stack.mask[[4, 3, 1]])
    assert out.valid_fraction == (60 + 48 + 33) / (3 * 64)
    assert out.cloud_fraction == (4 + 16 + 31) / (3 * 64)

    everything = reduce_period(stack, JUNE, "series", 10)
    assert everything is not None
    assert [s[0] for s in everything.sources] == ["item-4", "item-3", "item-2", "item-1", "item-0"]
    assert everything.data.shape == (5, 2, H, W)


# --- composite --------------------------------------------------------------------------------


def _oracle_composite(stack: SceneStack, used: list[int]) -> tuple[np.ndarray, np.ndarray]:
    n_bands = stack.data.shape[1]
    data = np.full((n_bands, H, W), np.nan, np.float32)
    mask = np.zeros((H, W), np.uint8)
    for y in range(H):
        for x in range(W):
            valid = [i for i in used if stack.mask[i, y, x] & V]
            observed = [i for i in used if not stack.mask[i, y, x] & ND]
            for b in range(n_bands):
                values = [float(stack.data[i, b, y, x]) for i in valid]
                if values:
                    data[b, y, x] = np.float32(np.median(values))
            chosen = valid or observed or used
            bits = 0xFF
            for i in chosen:
                bits &= int(stack.mask[i, y, x])
            mask[y, x] = bits
    return data, mask


_FLAG_CHOICES = np.array([V, V, V, V | N, C, S, C | S, CI, ND], np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_composite_matches_a_per_pixel_median_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 5
    masks = [_FLAG_CHOICES[rng.integers(0, len(_FLAG_CHOICES), (H, W))] for _ in range(n)]
    masks[0][:2, :] = C  # rows of pixels that are never valid ...
    masks[1][:2, :] = S | C
    masks[2][:2, :] = ND
    masks[3][:2, :] = C | CI
    masks[4][:2, :] = ND
    masks[0][2, :] = ND  # ... and a row never observed
    for k in range(1, n):
        masks[k][2, :] = ND
    data = rng.normal(0.2, 0.1, (n, 3, H, W)).astype(np.float32)
    times = [
        "2024-06-03T10:00",
        "2024-06-08T10:00",
        "2024-06-13T10:00",
        "2024-06-18T10:00",
        "2024-06-23T10:00",
    ]
    stack = _stack(masks, times, data=data)
    out = reduce_period(stack, JUNE, "composite", None)
    assert out is not None
    want_data, want_mask = _oracle_composite(stack, list(range(n)))
    np.testing.assert_array_equal(out.data[0], want_data)
    np.testing.assert_array_equal(out.mask[0], want_mask)
    assert out.mask[0, 0, 0] == C  # cloudy in every observed scene
    assert out.mask[0, 2, 0] == ND
    assert np.isnan(out.data[0, :, :3, :]).all()
    assert out.sources == (tuple(f"item-{k}" for k in range(n)),)
    np.testing.assert_array_equal(out.times, [_ns("2024-06-13T10:00")])
    assert out.valid_fraction == np.count_nonzero(want_mask & V) / 64
    observed = (want_mask & ND) == 0
    cloudy = observed & ((want_mask & (C | S | CI)) != 0)
    assert out.cloud_fraction == cloudy.sum() / observed.sum()


def test_composite_sources_time_and_max_scenes() -> None:
    masks = [_mask(0, rest=C), _mask(20), _mask(30), _mask(50), _mask(5)]
    times = [
        "2024-06-01",
        "2024-06-02T00:00:00",
        "2024-06-02T00:00:00.000000003",
        "2024-06-20",
        "2024-06-25",
    ]
    ids = ["e", "d", "c", "b", "a"]
    stack = _stack(masks, times, ids)
    out = reduce_period(stack, JUNE, "composite", None)
    assert out is not None
    # scene "e" has no valid pixel: not a source, not in the median time (of 4 scenes)
    assert out.sources == (("a", "b", "c", "d"),)
    # median of d, c, b, a = midpoint of c and b = ...00.0000000015, rounded down to the ns
    np.testing.assert_array_equal(out.times, [_ns("2024-06-11T00:00:00.000000001")])
    # pixels 0..49 valid in "b" (and fewer in others); median of the valid values per pixel
    want, _ = _oracle_composite(stack, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(out.data[0], want)

    top2 = reduce_period(stack, JUNE, "composite", 2)
    assert top2 is not None
    assert top2.sources == (("b", "c"),)
    want2, mask2 = _oracle_composite(stack, [2, 3])
    np.testing.assert_array_equal(top2.data[0], want2)
    np.testing.assert_array_equal(top2.mask[0], mask2)
    assert top2.valid_fraction == 50 / 64


def test_composite_of_only_cloudy_scenes_keeps_all_as_sources() -> None:
    stack = _stack([_mask(0, rest=C), _mask(0, rest=S)], ["2024-06-01", "2024-06-03"])
    out = reduce_period(stack, JUNE, "composite", None)
    assert out is not None
    assert out.sources == (("item-0", "item-1"),)
    np.testing.assert_array_equal(out.times, [_ns("2024-06-02")])
    assert np.isnan(out.data).all()
    assert (out.mask == 0).all()  # invalid, observed, no common reason
    assert out.valid_fraction == 0.0
    assert out.cloud_fraction == 0.0


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=6),
    valid=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_composite_median_of_one_pixel(values: list[float], valid: list[bool]) -> None:
    k = len(values)
    data = np.array(values, np.float32).reshape(k, 1, 1)
    use = np.array(valid[:k]).reshape(k, 1, 1)
    got = composite_median(data, use)[0, 0]
    kept = [v for v, u in zip(values, valid[:k], strict=True) if u]
    if kept:
        assert got == np.float32(np.median(np.array(kept, np.float64)))
    else:
        assert np.isnan(got)


def test_composite_median_ignores_nan_even_where_flagged_valid() -> None:
    data = np.array([1.0, np.nan, 3.0, 10.0], np.float32).reshape(4, 1, 1)
    valid = np.array([True, True, True, False]).reshape(4, 1, 1)
    assert composite_median(data, valid)[0, 0] == np.float32(2.0)


# --- fractions, several periods, errors -------------------------------------------------------


def test_sar_has_no_cloud_fraction_unless_told() -> None:
    stack = _stack([_mask(40, rest=ND)], ["2024-06-03"], sensor="sentinel-1-rtc")
    out = reduce_period(stack, JUNE, "best", None)
    assert out is not None and out.cloud_fraction is None and out.valid_fraction == 40 / 64
    told = reduce_period(stack, JUNE, "best", None, has_cloud_mask=True)
    assert told is not None and told.cloud_fraction == 0.0
    optical = _stack([_mask(40, rest=C, n_nodata=8)], ["2024-06-03"])
    opt = reduce_period(optical, JUNE, "best", None)
    assert opt is not None and opt.cloud_fraction == 16 / 56
    off = reduce_period(optical, JUNE, "best", None, has_cloud_mask=False)
    assert off is not None and off.cloud_fraction is None


def test_reduce_periods() -> None:
    stack = _stack([_mask(10), _mask(20), _mask(30)], ["2024-06-10", "2024-06-20", "2024-08-05"])
    july = Period("2024-07", JUNE.end, datetime(2024, 8, 1, tzinfo=UTC))
    august = Period("2024-08", july.end, datetime(2024, 9, 1, tzinfo=UTC))
    out = reduce_periods(stack, [JUNE, july, august], "best", None)
    assert list(out) == ["2024-06", "2024-08"]
    assert out["2024-06"].sources == (("item-1",),)
    assert out["2024-08"].sources == (("item-2",),)
    assert out["2024-08"].period_id == "2024-08"
    with pytest.raises(InvalidInputError, match="twice"):
        reduce_periods(stack, [JUNE, JUNE], "best", None)


def test_bad_arguments() -> None:
    stack = _stack([_mask(10)], ["2024-06-10"])
    with pytest.raises(InvalidInputError, match="mode"):
        reduce_period(stack, JUNE, "mean", None)
    with pytest.raises(InvalidInputError, match="max_scenes"):
        reduce_period(stack, JUNE, "series", 0)
    with pytest.raises(InvalidInputError, match="min_valid_fraction"):
        reduce_period(stack, JUNE, "best", None, min_valid_fraction=1.5)
