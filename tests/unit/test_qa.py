"""Quality-layer decoders: SCL classes, Landsat QA bits, EnMAP quality layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import InvalidInputError
from schemas.qa import (
    QA_FLAGS,
    SCL_CLASSES,
    LandsatQABit,
    MaskKind,
    MaskSpec,
    decode_flags,
    enmap_flags,
    enmap_invalid,
    invalid_from_flags,
    landsat_qa_bits,
    landsat_qa_flags,
    landsat_qa_invalid,
    scl_flags,
    scl_invalid,
)

# --- Sentinel-2 SCL --------------------------------------------------------------------------


def test_scl_default_and_snow() -> None:
    scl = np.arange(12, dtype=np.uint8)
    invalid = scl_invalid(scl)
    assert set(np.flatnonzero(invalid)) == {0, 1, 3, 8, 9, 10}
    assert set(np.flatnonzero(scl_invalid(scl, mask_snow=True))) == {0, 1, 3, 8, 9, 10, 11}
    assert sorted(SCL_CLASSES) == list(range(12))


def test_scl_flags_agree_with_scl_invalid() -> None:
    scl = np.arange(12, dtype=np.uint8).reshape(3, 4)
    flags = scl_flags(scl)
    assert tuple(flags) == QA_FLAGS
    assert all(plane.shape == (3, 4) and plane.dtype == np.bool_ for plane in flags.values())
    assert np.array_equal(invalid_from_flags(flags), scl_invalid(scl))
    assert np.array_equal(
        invalid_from_flags(flags, mask_snow=True), scl_invalid(scl, mask_snow=True)
    )
    assert not flags["haze"].any()
    assert flags["cloud"].sum() == 2 and flags["cloud"].ravel()[8] and flags["cloud"].ravel()[9]


# --- Landsat QA_PIXEL / QA_RADSAT ------------------------------------------------------------


def test_landsat_qa_vectors() -> None:
    qa = np.array([21824, 1, 21952, 0b1000, 0b10000, 0b100000], dtype=np.uint16)
    invalid = landsat_qa_invalid(qa)
    assert invalid.tolist() == [False, True, False, True, True, False]
    assert landsat_qa_invalid(qa, mask_snow=True).tolist()[5] is True
    bits = landsat_qa_bits(qa)
    assert bits["clear"][0] and not bits["water"][0]  # 21824: clear land
    assert bits["clear"][2] and bits["water"][2]  # 21952: clear water
    assert bits["fill"][1]
    # 21824 carries "low" (1) in all four confidence pairs.
    for name in ("cloud_confidence", "cloud_shadow_confidence", "snow_confidence"):
        assert bits[name][0] == 1
    assert bits["cirrus_confidence"][0] == 1


def test_landsat_radsat_makes_pixels_invalid() -> None:
    qa = np.array([21824, 21824], dtype=np.uint16)
    radsat = np.array([0, 0b100], dtype=np.uint16)
    assert landsat_qa_invalid(qa, radsat).tolist() == [False, True]
    flags = landsat_qa_flags(qa, radsat)
    assert flags["saturated"].tolist() == [False, True]
    with pytest.raises(InvalidInputError, match="QA_RADSAT shape"):
        landsat_qa_flags(qa, radsat[:1])


@given(st.integers(min_value=0, max_value=2**16 - 1), st.integers(min_value=0, max_value=4095))
def test_landsat_flags_match_bitwise_oracle(qa_value: int, radsat_value: int) -> None:
    qa = np.array([qa_value], dtype=np.uint16)
    radsat = np.array([radsat_value], dtype=np.uint16)
    expected = (qa_value & 0b11111) != 0 or radsat_value != 0
    assert bool(landsat_qa_invalid(qa, radsat)[0]) is expected
    assert bool(invalid_from_flags(landsat_qa_flags(qa, radsat))[0]) is expected
    for flag in LandsatQABit:
        assert bool(landsat_qa_bits(qa)[flag.value][0]) is bool(qa_value >> flag.bit & 1)


def test_landsat_qa_on_real_scene(shared_fixtures: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    path = shared_fixtures / "raster/landsat/LC08_L2SP_005009_20150710_20200908_02_T2_QA_PIXEL.TIF"
    with rasterio.open(path) as src:
        qa = src.read(1)
    assert qa.dtype == np.uint16
    values = np.unique(qa)
    invalid = landsat_qa_invalid(values)
    # Every distinct value decodes the same way the bit table says.
    assert invalid.tolist() == [bool(int(v) & 0b11111) for v in values]
    assert invalid.any() and not invalid.all()
    flags = landsat_qa_flags(qa)
    assert flags["nodata"].sum() == int((qa & 1).astype(bool).sum())


# --- EnMAP -----------------------------------------------------------------------------------


def test_enmap_default_mask() -> None:
    classes = np.array([0, 1, 2, 1, 1, 1, 1, 3], dtype=np.uint8)
    cloud = np.array([0, 0, 0, 1, 0, 0, 0, 0], dtype=np.uint8)
    shadow = np.array([0, 0, 0, 0, 1, 0, 0, 0], dtype=np.uint8)
    cirrus = np.array([0, 1, 0, 0, 0, 2, 3, 0], dtype=np.uint8)
    invalid = enmap_invalid(classes, cloud, shadow, cirrus)
    assert invalid.tolist() == [True, False, False, True, True, True, True, True]


def test_enmap_optional_haze_and_snow() -> None:
    ones = np.ones(3, dtype=np.uint8)
    zeros = np.zeros(3, dtype=np.uint8)
    haze = np.array([1, 0, 0], dtype=np.uint8)
    snow = np.array([0, 1, 0], dtype=np.uint8)
    assert not enmap_invalid(ones, zeros, zeros, zeros, haze, snow).any()
    masked = enmap_invalid(ones, zeros, zeros, zeros, haze, snow, mask_haze=True, mask_snow=True)
    assert masked.tolist() == [True, True, False]
    with pytest.raises(InvalidInputError, match="QL_QUALITY_SNOW"):
        enmap_invalid(ones, zeros, zeros, zeros, mask_snow=True)
    flags = enmap_flags(ones, zeros, zeros, zeros)
    assert tuple(flags) == QA_FLAGS and not any(plane.any() for plane in flags.values())
    with pytest.raises(InvalidInputError, match="QL_QUALITY_CLOUD shape"):
        enmap_flags(ones, zeros[:2], zeros, zeros)


def test_enmap_pixel_mask_sets_saturated() -> None:
    ones = np.ones((2, 2), dtype=np.uint8)
    zeros = np.zeros((2, 2), dtype=np.uint8)
    per_band = np.zeros((3, 2, 2), dtype=np.uint8)
    per_band[2, 1, 0] = 1  # one defective band at one pixel
    flags = enmap_flags(ones, zeros, zeros, zeros, pixel_mask=per_band)
    assert flags["saturated"].tolist() == [[False, False], [True, False]]
    assert invalid_from_flags(flags).tolist() == [[False, False], [True, False]]
    spec = MaskSpec(kind=MaskKind.ENMAP_QUALITY)
    layers = {
        "QL_QUALITY_CLASSES": ones,
        "QL_QUALITY_CLOUD": zeros,
        "QL_QUALITY_CLOUDSHADOW": zeros,
        "QL_QUALITY_CIRRUS": zeros,
        "QL_PIXELMASK": per_band[2],
    }
    assert decode_flags(spec, layers)["saturated"].sum() == 1
    with pytest.raises(InvalidInputError, match="QL_PIXELMASK shape"):
        enmap_flags(ones, zeros, zeros, zeros, pixel_mask=np.zeros(5))


# --- Generic entry points --------------------------------------------------------------------


def test_decode_flags_dispatches_on_kind() -> None:
    scl = np.array([9, 4], dtype=np.uint8)
    spec = MaskSpec(kind=MaskKind.SCL, bands=("SCL",))
    assert invalid_from_flags(decode_flags(spec, {"SCL": scl})).tolist() == [True, False]
    landsat = MaskSpec(kind=MaskKind.LANDSAT_QA, bands=("QA_PIXEL", "QA_RADSAT"))
    flags = decode_flags(landsat, {"QA_PIXEL": np.array([1, 21824], dtype=np.uint16)})
    assert flags["nodata"].tolist() == [True, False]
    with pytest.raises(InvalidInputError, match="'QA_PIXEL' is missing"):
        decode_flags(landsat, {"SCL": scl})
    with pytest.raises(InvalidInputError, match="no quality layer"):
        decode_flags(MaskSpec(kind=MaskKind.NODATA), {})


def test_invalid_from_flags_rejects_unknown_flag() -> None:
    flags = scl_flags(np.array([4], dtype=np.uint8))
    with pytest.raises(InvalidInputError, match="not among the decoded planes"):
        invalid_from_flags(flags, invalid_flags={"smoke"})
