"""Radiometric rules against the SENSORS.md §11 test vectors and simple oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import InvalidInputError
from schemas.radiometry import (
    apply_scale_offset,
    baseline_has_offset,
    db,
    enmap_gains_from_metadata,
    enmap_reflectance,
    landsat_sr,
    landsat_st,
    linear,
    normalize_baseline,
    rtc_to_db,
    s2_reflectance,
    s2_scale_offset,
)

# --- Sentinel-2 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dn", "baseline", "expected"),
    [
        (1000, "04.00", 0.0),
        (11000, "05.10", 1.0),
        (1000, "05.10", 0.0),
        (500, "05.10", -0.05),  # negative reflectance is kept, not clipped
        (1000, "02.14", 0.1),
        (1000, "5.10", 0.0),  # CDSE processing:version form
        (1000, "4.0", 0.0),
        (1000, "N0510", 0.0),
        (1000, "99.99", 0.1),  # CloudFerro products: no offset (SENSORS.md D4)
    ],
)
def test_s2_reflectance_vectors(dn: int, baseline: str, expected: float) -> None:
    out = s2_reflectance(np.array([dn], dtype=np.uint16), baseline, dtype=np.float64)
    assert out.dtype == np.float64
    assert out[0] == pytest.approx(expected, abs=1e-12)


def test_s2_reflectance_exact_and_nodata() -> None:
    dn = np.array([[0, 1000], [11000, 0]], dtype=np.uint16)
    out = s2_reflectance(dn, "04.00")
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1])
    assert out[0, 1] == 0.0 and out[1, 0] == 1.0
    # DN 0 is nodata at every baseline.
    assert np.isnan(s2_reflectance(np.array([0], dtype=np.uint16), "02.14")[0])


def test_s2_offset_applied_flag_removes_offset() -> None:
    out = s2_reflectance(np.array([1000]), "05.11", offset_applied=True, dtype=np.float64)
    assert out[0] == pytest.approx(0.1)
    assert s2_scale_offset("05.11", offset_applied=True) == (1e-4, 0.0)
    assert s2_scale_offset("05.11") == (1e-4, -0.1)
    assert s2_scale_offset("02.12") == (1e-4, 0.0)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("05.10", "05.10"), ("5.10", "05.10"), ("4.0", "04.00"), ("N0400", "04.00"), (5.11, "05.11")],
)
def test_normalize_baseline(raw: str | float, normalised: str) -> None:
    assert normalize_baseline(raw) == normalised


@pytest.mark.parametrize("raw", ["", "abc", "5.1.2", "N510", True])
def test_normalize_baseline_rejects_garbage(raw: object) -> None:
    with pytest.raises(InvalidInputError, match="processing baseline"):
        normalize_baseline(raw)  # type: ignore[arg-type]


def test_baseline_branch_is_a_version_compare_not_lexicographic_on_raw_text() -> None:
    # Raw "4.0" < "04.00" and "10.00" > "9.99" lexicographically would both go wrong unpadded.
    assert baseline_has_offset("4.0") is True
    assert baseline_has_offset("3.99") is False
    assert baseline_has_offset("02.14") is False


@given(st.integers(min_value=1, max_value=2**15 - 1))
def test_s2_matches_scale_offset_form(dn: int) -> None:
    for baseline in ("02.12", "04.00", "05.11"):
        scale, offset = s2_scale_offset(baseline)
        direct = s2_reflectance(np.array([dn]), baseline, dtype=np.float64)[0]
        via = apply_scale_offset(np.array([dn]), scale, offset, 0, dtype=np.float64)[0]
        assert direct == pytest.approx(via, abs=1e-12)


# --- Landsat ---------------------------------------------------------------------------------


def test_landsat_vectors() -> None:
    sr = landsat_sr(np.array([0, 10000, 7273, 43636], dtype=np.uint16), dtype=np.float64)
    assert math.isnan(sr[0])
    assert sr[1] == pytest.approx(0.075, abs=1e-12)
    assert sr[2] == pytest.approx(0.0000075, abs=1e-12)
    assert sr[3] == pytest.approx(0.99999, abs=1e-9)
    st_k = landsat_st(np.array([44000, 0], dtype=np.uint16), dtype=np.float64)
    assert st_k[0] == pytest.approx(299.39288, abs=1e-9)
    assert math.isnan(st_k[1])
    assert landsat_st(np.array([44000], dtype=np.uint16)).dtype == np.float32


# --- Sentinel-1 ------------------------------------------------------------------------------


def test_db_and_linear_vectors() -> None:
    assert db(np.array([0.01]), dtype=np.float64)[0] == pytest.approx(-20.0)
    assert db(np.array([0.1]), dtype=np.float64)[0] == pytest.approx(-10.0)
    assert db(np.array([0.5]), dtype=np.float64)[0] == pytest.approx(-3.0103, abs=1e-4)
    assert linear(np.array([-10.0]), dtype=np.float64)[0] == pytest.approx(0.1)
    # Zero and negative linear power are floored at 1e-6 -> -60 dB, never -inf.
    floored = db(np.array([0.0, -0.2]), dtype=np.float64)
    assert floored == pytest.approx([-60.0, -60.0])
    assert np.isnan(db(np.array([np.nan]))[0])


@given(st.floats(min_value=1e-5, max_value=10.0))
def test_db_linear_roundtrip(value: float) -> None:
    back = linear(db(np.array([value]), dtype=np.float64), dtype=np.float64)[0]
    assert back == pytest.approx(value, rel=1e-9)


def test_rtc_nodata_is_nan_before_the_log() -> None:
    gamma0 = np.array([-32768.0, 0.01, 0.0], dtype=np.float32)
    out = rtc_to_db(gamma0)
    assert out.dtype == np.float32
    assert np.isnan(out[0])  # not 10*log10(1e-6) = -60
    assert out[1] == pytest.approx(-20.0, abs=1e-5)
    assert out[2] == pytest.approx(-60.0)


# --- EnMAP -----------------------------------------------------------------------------------


def test_enmap_reflectance_scalar_and_per_band() -> None:
    dn = np.array([[[-32768, 2500]], [[1000, 10000]]], dtype=np.int16)  # (band, y, x)
    out = enmap_reflectance(dn, dtype=np.float64)
    assert np.isnan(out[0, 0, 0])
    assert out[0, 0, 1] == pytest.approx(0.25) and out[1, 0, 1] == pytest.approx(1.0)
    per_band = enmap_reflectance(dn, gain=[1e-4, 2e-4], offset=[0.0, 0.01], dtype=np.float64)
    assert per_band[1, 0, 0] == pytest.approx(1000 * 2e-4 + 0.01)
    assert per_band[0, 0, 1] == pytest.approx(0.25)
    assert np.isnan(per_band[0, 0, 0])


def test_enmap_gains_from_metadata() -> None:
    xml = """<?xml version="1.0"?>
    <level_X><specific><bandCharacterisation>
      <bandID number="1"><wavelengthCenterOfBand>418.4</wavelengthCenterOfBand>
        <GainOfBand>0.0001</GainOfBand><OffsetOfBand>0</OffsetOfBand></bandID>
      <bandID number="224"><GainOfBand>0.0002</GainOfBand><OffsetOfBand>-0.5</OffsetOfBand>
      </bandID>
    </bandCharacterisation></specific></level_X>"""
    assert enmap_gains_from_metadata(xml) == {1: (1e-4, 0.0), 224: (2e-4, -0.5)}
    with pytest.raises(InvalidInputError, match="GainOfBand"):
        enmap_gains_from_metadata("<level_X><specific/></level_X>")
    with pytest.raises(InvalidInputError, match="not valid XML"):
        enmap_gains_from_metadata("<unclosed")
