"""Sub-pixel shift between two images by phase correlation (pure numpy).

The normalised cross-power spectrum of the two (mean-removed, Hann-windowed) images is inverted;
its peak gives the integer shift, which is refined by evaluating the inverse DFT on a grid
``upsample`` times finer around the peak (matrix-multiply DFT, Guizar-Sicairos et al. 2008).
Whitening the spectrum gives aliased high frequencies of box-sampled imagery as much weight as
the signal, which pulls sub-pixel estimates towards whole pixels; the normalised spectrum is
therefore weighted by a Gaussian low-pass (``lowpass``, cycles per pixel). The window (and
filled holes) bias the estimate towards zero, so it is iterated: ``moving`` is shifted
back by the estimate so far (Fourier shift) and the residual is estimated again.

Sign convention: the returned ``(dy_px, dx_px)`` is the displacement of ``moving``'s content
relative to ``reference``: ``moving(y, x) ~= reference(y - dy_px, x - dx_px)``. Rows grow
southwards, so a scene whose content moved north by ``d`` metres at pixel size ``p`` gives
``dy_px = -d / p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.errors import InvalidInputError

__all__ = ["ShiftEstimate", "estimate_shift"]


@dataclass(frozen=True)
class ShiftEstimate:
    """Result of :func:`estimate_shift`.

    Attributes:
        dy_px: Displacement along rows (pixels, positive = content moved down/south).
        dx_px: Displacement along columns (pixels, positive = content moved right/east).
        peak_ratio: Correlation peak divided by the highest value farther than 2 pixels from
            it; about 1 means no match, above ~3 a clear one.
    """

    dy_px: float
    dx_px: float
    peak_ratio: float


def _fill(img: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Mean-removed copy with invalid pixels set to 0 (the mean)."""
    a = np.asarray(img, dtype=np.float64)
    ok = np.isfinite(a) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(a))
    if not ok.any():
        raise InvalidInputError(
            "no valid pixel to correlate",
            where="phase correlation",
            fix="pass images with valid pixels",
        )
    mean = float(a[ok].mean())
    return np.where(ok, a, mean) - mean


def _fourier_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Circularly shift an image by a sub-pixel amount (content moves by ``(dy, dx)``)."""
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.fftfreq(img.shape[1])[None, :]
    phase = np.exp(-2j * math.pi * (ky * dy + kx * dx))
    return np.asarray(np.fft.ifft2(np.fft.fft2(img) * phase).real)


def _upsampled_idft(
    spec: np.ndarray, centre: tuple[float, float], size: int, upsample: int
) -> np.ndarray:
    """Inverse DFT of ``spec`` at ``size x size`` points spaced ``1/upsample`` around ``centre``."""
    m, n = spec.shape
    offs = (np.arange(size) - size // 2) / upsample
    ys = centre[0] + offs
    xs = centre[1] + offs
    ky = np.fft.fftfreq(m)
    kx = np.fft.fftfreq(n)
    ker_y = np.exp(2j * math.pi * np.outer(ys, ky))
    ker_x = np.exp(2j * math.pi * np.outer(kx, xs))
    return np.asarray((ker_y @ spec @ ker_x).real)


def estimate_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    valid: np.ndarray | None = None,
    upsample: int = 20,
    iterations: int = 8,
    lowpass: float | None = 0.15,
) -> ShiftEstimate:
    """Estimate the sub-pixel displacement of ``moving`` relative to ``reference``.

    Args:
        reference: Reference image, dims ``(y, x)``, any real dtype (NaN = invalid).
        moving: Image to register, same shape.
        valid: Optional mask of ``moving``, dims ``(y, x)``, true where it is valid (clear).
            Invalid pixels of ``moving`` are filled with the reference moved by the current
            estimate, so holes do not pull the estimate towards zero. NaN pixels of
            ``reference`` are set to its mean; keep the reference as complete as possible.
        upsample: Refinement factor; the result is quantised to ``1/upsample`` pixel.
        iterations: Most estimate-and-shift-back rounds (1 = plain phase correlation).
        lowpass: Standard deviation (cycles per pixel) of the Gaussian weight applied to the
            normalised cross-power spectrum; ``None`` for none.

    Returns:
        The shift (see the module docstring for the sign) and the peak ratio.

    Raises:
        InvalidInputError: If the shapes differ, an image is smaller than 8 x 8 pixels, or
            nothing is valid.
    """
    ref = np.asarray(reference)
    mov = np.asarray(moving)
    if ref.shape != mov.shape or ref.ndim != 2 or min(ref.shape) < 8:
        raise InvalidInputError(
            f"images must be 2-D, equal and at least 8 x 8; got {ref.shape} and {mov.shape}",
            where="phase correlation",
            fix="pass two windows of the same shape",
        )
    if upsample < 1 or iterations < 1:
        raise InvalidInputError(
            f"upsample {upsample} and iterations {iterations} must be >= 1",
            where="phase correlation",
        )
    win = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1]))
    weight = np.ones(ref.shape)
    if lowpass is not None:
        ky = np.fft.fftfreq(ref.shape[0])[:, None]
        kx = np.fft.fftfreq(ref.shape[1])[None, :]
        weight = np.exp(-(ky**2 + kx**2) / (2.0 * lowpass**2))
    ref0 = _fill(ref, None)
    f_ref = np.fft.fft2(ref0 * win)
    mov0 = _fill(mov, valid)
    invalid = None if valid is None else ~np.asarray(valid, dtype=bool)
    total_y = total_x = 0.0
    ratio = 0.0
    for it in range(iterations):
        cur = mov0
        if invalid is not None and invalid.any():
            # Fill the holes with the reference moved by the estimate so far, so that they
            # agree with the rest of the image instead of pulling the estimate towards zero.
            cur = np.where(invalid, _fourier_shift(ref0, total_y, total_x), mov0)
        if it:
            cur = _fourier_shift(cur, -total_y, -total_x)
        dy, dx, r = _single(f_ref, np.fft.fft2(cur * win), weight, upsample)
        ratio = r if it == 0 else ratio
        total_y += dy
        total_x += dx
        if abs(dy) < 0.5 / upsample and abs(dx) < 0.5 / upsample:
            break
    step = 1.0 / upsample
    return ShiftEstimate(round(total_y / step) * step, round(total_x / step) * step, ratio)


def _single(
    f_ref: np.ndarray, f_mov: np.ndarray, weight: np.ndarray, upsample: int
) -> tuple[float, float, float]:
    """One phase-correlation estimate from two spectra: ``(dy, dx, peak ratio)``."""
    cross = f_mov * np.conj(f_ref)
    cross /= np.maximum(np.abs(cross), 1e-12 * float(np.abs(cross).max() or 1.0))
    cross *= weight
    corr = np.fft.ifft2(cross).real
    m, n = corr.shape
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    dy = float(py - m if py > m // 2 else py)
    dx = float(px - n if px > n // 2 else px)
    # Peak ratio: against the best value outside a 2-pixel radius (with wrap-around).
    yy = np.minimum(np.abs(np.arange(m) - py), m - np.abs(np.arange(m) - py))[:, None]
    xx = np.minimum(np.abs(np.arange(n) - px), n - np.abs(np.arange(n) - px))[None, :]
    far = (yy > 2) | (xx > 2)
    second = float(corr[far].max()) if far.any() else 0.0
    peak = float(corr[py, px])
    ratio = peak / second if second > 0 else math.inf
    if upsample > 1:
        size = math.ceil(upsample * 1.5) | 1
        fine = _upsampled_idft(cross, (dy, dx), size, upsample)
        fy, fx = np.unravel_index(int(np.argmax(fine)), fine.shape)
        dy += (fy - size // 2) / upsample
        dx += (fx - size // 2) / upsample
    return dy, dx, ratio
