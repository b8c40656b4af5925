from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipelines.phase_correlation import estimate_shift
from schemas.errors import InvalidInputError


def _texture(seed: int, shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(ndimage.gaussian_filter(rng.standard_normal(shape), 2.0))


def _fourier_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.fftfreq(img.shape[1])[None, :]
    return np.asarray(
        np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (ky * dy + kx * dx))).real
    )


@settings(max_examples=25, deadline=None)
@given(
    dy=st.floats(-6.0, 6.0, allow_nan=False),
    dx=st.floats(-6.0, 6.0, allow_nan=False),
    seed=st.integers(0, 2**16),
)
def test_fourier_shift_is_recovered_within_005_px(dy: float, dx: float, seed: int) -> None:
    ref = _texture(seed)
    est = estimate_shift(ref, _fourier_shift(ref, dy, dx))
    assert est.dy_px == pytest.approx(dy, abs=0.05)
    assert est.dx_px == pytest.approx(dx, abs=0.05)
    assert est.peak_ratio > 2.0


def test_sign_convention_content_moved_down_right() -> None:
    ref = _texture(1)
    moved = np.roll(ref, (3, -2), axis=(0, 1))  # content moves 3 rows down, 2 columns left
    est = estimate_shift(ref, moved)
    assert (est.dy_px, est.dx_px) == (pytest.approx(3.0, abs=0.05), pytest.approx(-2.0, abs=0.05))


def test_unrelated_images_have_a_low_peak_ratio() -> None:
    matched = estimate_shift(_texture(2), _fourier_shift(_texture(2), 0.4, 0.4))
    unrelated = estimate_shift(_texture(2), _texture(3))
    assert unrelated.peak_ratio < matched.peak_ratio / 2


def test_invalid_pixels_are_ignored() -> None:
    ref = _texture(4)
    mov = _fourier_shift(ref, 1.3, -0.6)
    valid = np.ones(ref.shape, bool)
    valid[10:30, 5:25] = False
    mov[~valid] = 1e6  # garbage where invalid
    est = estimate_shift(ref, mov, valid=valid)
    assert est.dy_px == pytest.approx(1.3, abs=0.1)
    assert est.dx_px == pytest.approx(-0.6, abs=0.1)


@pytest.mark.parametrize(
    ("ref_shape", "mov_shape"), [((32, 32), (32, 31)), ((4, 4), (4, 4)), ((8,), (8,))]
)
def test_bad_shapes_raise(ref_shape: tuple[int, ...], mov_shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInputError, match="2-D"):
        estimate_shift(np.zeros(ref_shape), np.zeros(mov_shape))


def test_nothing_valid_raises() -> None:
    with pytest.raises(InvalidInputError, match="no valid pixel"):
        estimate_shift(_texture(5), _texture(5), valid=np.zeros((96, 80), bool))
