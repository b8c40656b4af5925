"""Build stage ``masks``: QA layers -> MaskBit bitmask, footprint/NaN nodata, dilation."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipelines.masks import (
    MaskOptions,
    build_mask,
    dilate,
    dilation_radius_px,
    disk,
    encode_flags,
)
from pipelines.stack import LoadedStack
from schemas.cube import MaskBit
from schemas.errors import InvalidInputError
from schemas.profiles import SensorProfile, get_profile
from schemas.qa import QA_FLAGS
from schemas.recipe import MaskRules
from schemas.sensors import Provider, SensorId

V, C, S, N, CI, H, ND, SAT = (
    MaskBit.VALID,
    MaskBit.CLOUD,
    MaskBit.SHADOW,
    MaskBit.SNOW,
    MaskBit.CIRRUS,
    MaskBit.HAZE,
    MaskBit.NODATA,
    MaskBit.SATURATED,
)

S2 = get_profile(SensorId.SENTINEL_2_L2A, Provider.PLANETARY_COMPUTER)
LANDSAT = get_profile(SensorId.LANDSAT_C2_L2, Provider.PLANETARY_COMPUTER)
ENMAP = get_profile(SensorId.ENMAP_L2A, Provider.DLR)
S1 = get_profile(SensorId.SENTINEL_1_RTC, Provider.PLANETARY_COMPUTER)


def _stack(
    qa: dict[str, np.ndarray],
    shape: tuple[int, int, int],
    *,
    sensor: str = "sentinel-2-l2a",
    resolution_m: float = 10.0,
    n_bands: int = 2,
    footprint: np.ndarray | None = None,
    data: np.ndarray | None = None,
) -> LoadedStack:
    t, h, w = shape
    if data is None:
        # Value-encoded pixels: 4*col + row + band/10 (+ time) so that identity is checkable.
        rows, cols = np.mgrid[0:h, 0:w]
        data = np.stack(
            [np.stack([4 * cols + rows + b / 10 + k for b in range(n_bands)]) for k in range(t)]
        ).astype(np.float32)
    return LoadedStack(
        sensor=sensor,
        tile_id="32N-0001-0002",
        epsg=32632,
        transform=Affine(resolution_m, 0, 500000, 0, -resolution_m, 5000000),
        resolution_m=resolution_m,
        bands=tuple(f"b{i}" for i in range(data.shape[1])),
        data=data,
        qa=qa,
        footprint=np.ones(shape, bool) if footprint is None else footprint,
        times=np.arange(t).astype("datetime64[D]").astype("datetime64[ns]"),
        item_ids=tuple(f"item-{k}" for k in range(t)),
    )


def _row(values: list[int], dtype: type) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(1, 1, -1)


def _masks(profile: SensorProfile, stack: LoadedStack, **options: object) -> list[int]:
    out = build_mask(stack, profile, MaskOptions(**options))  # type: ignore[arg-type]
    return [int(v) for v in out.mask.ravel()]


# --- Sentinel-2 SCL ---------------------------------------------------------------------------

SCL_EXPECTED = {
    0: ND,
    1: SAT,
    2: V,
    3: S,
    4: V,
    5: V,
    6: V,
    7: V,
    8: C,
    9: C,
    10: CI,
    11: V | N,
}


def test_scl_vectors_default() -> None:
    scl = _row(list(range(12)), np.uint8)
    got = _masks(S2, _stack({"SCL": scl}, (1, 1, 12)))
    assert got == [int(SCL_EXPECTED[c]) for c in range(12)]
    valid = [c for c in range(12) if got[c] & V]
    assert valid == [2, 4, 5, 6, 7, 11]


def test_scl_snow_only_with_mask_snow_and_cirrus_option() -> None:
    scl = _row(list(range(12)), np.uint8)
    stack = _stack({"SCL": scl}, (1, 1, 12))
    snow = _masks(S2, stack, mask_snow=True)
    assert snow[11] == int(N)
    assert [c for c in range(12) if snow[c] & V] == [2, 4, 5, 6, 7]
    no_cirrus = _masks(S2, stack, mask_cirrus=False)
    assert no_cirrus[10] == int(V | CI)
    assert [c for c in range(12) if no_cirrus[c] & V] == [2, 4, 5, 6, 7, 10, 11]


def test_recipe_mask_rules_are_accepted_and_haze_is_a_no_op_for_scl() -> None:
    scl = _row(list(range(12)), np.uint8)
    stack = _stack({"SCL": scl}, (1, 1, 12))
    rules = MaskRules(mask_snow=True, mask_haze=True)
    got = [int(v) for v in build_mask(stack, S2, rules).mask.ravel()]
    assert got == _masks(S2, stack, mask_snow=True)


def test_footprint_and_nan_make_nodata_and_data_is_untouched() -> None:
    scl = np.full((2, 3, 4), 4, np.uint8)
    footprint = np.ones((2, 3, 4), bool)
    footprint[0, 0, 0] = False
    stack = _stack({"SCL": scl}, (2, 3, 4), footprint=footprint)
    stack.data[1, 1, 2, 3] = np.nan  # one band NaN -> the whole pixel is no data
    out = build_mask(stack, S2)
    expected = np.full((2, 3, 4), int(V), np.uint8)
    expected[0, 0, 0] = ND
    expected[1, 2, 3] = ND
    np.testing.assert_array_equal(out.mask, expected)
    assert out.data is stack.data  # kept as loaded; the mask tells what is valid
    assert np.isnan(out.data[1, 1, 2, 3])
    assert out.data[1, 0, 2, 3] == np.float32(4 * 3 + 2 + 0 + 1)
    assert out.item_ids == stack.item_ids
    np.testing.assert_array_equal(out.times, stack.times)


def test_missing_or_misshapen_qa_layer_is_an_input_error() -> None:
    with pytest.raises(InvalidInputError, match="SCL"):
        build_mask(_stack({}, (1, 2, 2)), S2)
    with pytest.raises(InvalidInputError, match="shape"):
        build_mask(_stack({"SCL": np.zeros((1, 2, 3), np.uint8)}, (1, 2, 2)), S2)


# --- Landsat QA_PIXEL / QA_RADSAT -------------------------------------------------------------


def test_landsat_qa_vectors() -> None:
    clear = 21824
    qa = [clear, 21952, 1, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, clear]
    radsat = [0, 0, 0, 0, 0, 0, 0, 0, 0b100]
    layers = {"QA_PIXEL": _row(qa, np.uint16), "QA_RADSAT": _row(radsat, np.uint16)}
    stack = _stack(layers, (1, 1, 9), sensor="landsat-c2-l2", resolution_m=30.0)
    expected = [V, V, ND, C, CI, C, S, V | N, SAT]
    assert _masks(LANDSAT, stack) == [int(e) for e in expected]
    snow = _masks(LANDSAT, stack, mask_snow=True)
    assert snow[7] == int(N)
    assert [i for i, m in enumerate(snow) if m & V] == [0, 1]


def test_landsat_without_radsat_layer() -> None:
    stack = _stack({"QA_PIXEL": _row([21824, 8], np.uint16)}, (1, 1, 2), resolution_m=30.0)
    assert _masks(LANDSAT, stack) == [int(V), int(C)]


# --- EnMAP quality layers ---------------------------------------------------------------------


def _enmap_layers() -> dict[str, np.ndarray]:
    #            px: 0  1  2  3  4  5  6  7  8  9
    classes = [0, 1, 2, 3, 1, 1, 1, 1, 1, 1]
    cloud = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    shadow = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    cirrus = [0, 0, 0, 0, 0, 0, 1, 2, 3, 0]
    haze = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    snow = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    names = ("CLASSES", "CLOUD", "CLOUDSHADOW", "CIRRUS", "HAZE", "SNOW")
    values = (classes, cloud, shadow, cirrus, haze, snow)
    return {f"QL_QUALITY_{n}": _row(v, np.uint8) for n, v in zip(names, values, strict=True)}


def test_enmap_vectors() -> None:
    stack = _stack(_enmap_layers(), (1, 1, 10), sensor="enmap-l2a", resolution_m=30.0)
    expected = [ND, V | N, V, ND, C, S, V, CI, CI, V | H]
    assert _masks(ENMAP, stack) == [int(e) for e in expected]
    both = _masks(ENMAP, stack, mask_snow=True, mask_haze=True)
    assert both[1] == int(N)
    assert both[9] == int(H)
    assert [i for i, m in enumerate(both) if m & V] == [2, 6]


def test_enmap_option_needs_its_layer() -> None:
    layers = _enmap_layers()
    del layers["QL_QUALITY_HAZE"]
    stack = _stack(layers, (1, 1, 10), sensor="enmap-l2a", resolution_m=30.0)
    assert _masks(ENMAP, stack)[9] == int(V)  # not needed without mask_haze
    with pytest.raises(InvalidInputError, match="QL_QUALITY_HAZE"):
        build_mask(stack, ENMAP, MaskOptions(mask_haze=True))


# --- Sentinel-1: no QA ------------------------------------------------------------------------


def test_s1_valid_is_footprint_and_finite_data() -> None:
    footprint = np.ones((2, 2, 3), bool)
    footprint[0, 1, :] = False
    stack = _stack({}, (2, 2, 3), sensor="sentinel-1-rtc", footprint=footprint)
    stack.data[1, 0, 0, 2] = np.nan
    out = build_mask(stack, S1, MaskOptions(dilation_m=100.0, mask_snow=True))
    expected = np.full((2, 2, 3), int(V), np.uint8)
    expected[0, 1, :] = ND
    expected[1, 0, 2] = ND
    np.testing.assert_array_equal(out.mask, expected)


# --- Dilation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metres", "resolution", "pixels"),
    [(30, 10, 3), (30, 30, 1), (45, 30, 2), (75, 30, 3), (14, 30, 0), (0, 10, 0), (100, 20, 5)],
)
def test_dilation_radius_px(metres: float, resolution: float, pixels: int) -> None:
    assert dilation_radius_px(metres, resolution) == pixels


def test_disk_shape() -> None:
    np.testing.assert_array_equal(disk(0), [[True]])
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert int(disk(3).sum()) == 29  # lattice points with dy^2 + dx^2 <= 9


@pytest.mark.parametrize(("resolution", "radius"), [(10.0, 3), (30.0, 1)])
def test_dilation_is_in_metres(resolution: float, radius: int) -> None:
    scl = np.full((2, 9, 9), 4, np.uint8)
    scl[0, 4, 4] = 9  # one cloudy pixel in plane 0; plane 1 is clear
    footprint = np.ones((2, 9, 9), bool)
    footprint[0, :, 7:] = False  # no data on the right: dilation must not reach it
    stack = _stack({"SCL": scl}, (2, 9, 9), resolution_m=resolution, footprint=footprint)
    mask = build_mask(stack, S2, MaskOptions(dilation_m=30.0)).mask
    yy, xx = np.mgrid[0:9, 0:9]
    near = (yy - 4) ** 2 + (xx - 4) ** 2 <= radius**2
    observed = xx < 7
    np.testing.assert_array_equal((mask[0] & C) != 0, near & observed)
    np.testing.assert_array_equal((mask[0] & V) != 0, ~near & observed)
    np.testing.assert_array_equal(mask[0][~observed], np.full((~observed).sum(), int(ND)))
    np.testing.assert_array_equal(mask[1], np.full((9, 9), int(V), np.uint8))


def test_shadow_is_dilated_too() -> None:
    scl = np.full((1, 5, 5), 4, np.uint8)
    scl[0, 0, 0] = 3
    mask = build_mask(_stack({"SCL": scl}, (1, 5, 5)), S2, MaskOptions(dilation_m=10.0)).mask
    assert {(int(y), int(x)) for y, x in zip(*np.nonzero(mask[0] & S), strict=True)} == {
        (0, 0),
        (0, 1),
        (1, 0),
    }
    assert int((mask & V).astype(bool).sum()) == 25 - 3


@settings(max_examples=40, deadline=None)
@given(
    flags=hnp.arrays(np.bool_, st.tuples(st.integers(1, 2), st.integers(1, 7), st.integers(1, 7))),
    radius=st.integers(0, 3),
)
def test_dilate_matches_bruteforce(flags: np.ndarray, radius: int) -> None:
    t, h, w = flags.shape
    expected = np.zeros_like(flags)
    for k in range(t):
        for y in range(h):
            for x in range(w):
                expected[k, y, x] = any(
                    flags[k, yy, xx]
                    for yy in range(h)
                    for xx in range(w)
                    if (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
                )
    np.testing.assert_array_equal(dilate(flags, radius), expected)


def test_encode_flags_sets_each_bit() -> None:
    shape = (1, 1, len(QA_FLAGS))
    flags = {}
    for i, name in enumerate(QA_FLAGS):
        plane = np.zeros(shape, bool)
        plane[0, 0, i] = True
        flags[name] = plane
    valid = np.zeros(shape, bool)
    valid[0, 0, 0] = True
    got = encode_flags(flags, valid).ravel().tolist()
    assert got == [int(ND | V), int(SAT), int(C), int(S), int(CI), int(N), int(H)]


def test_negative_dilation_is_rejected() -> None:
    with pytest.raises(InvalidInputError):
        MaskOptions(dilation_m=-1.0)
