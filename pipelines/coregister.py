"""Residual sub-pixel shift of one sensor against the reference sensor, per tile.

All sensors are already loaded onto the tile's grid; what is left is the geolocation error of
the sources (SENSORS.md §6.1: up to ~0.6 px Landsat vs Sentinel-2 at 10 m, more for EnMAP). As
AROSICS does (§6.2), eoforge estimates one global x/y shift per tile and sensor in the frequency
domain and corrects it in the geocoding, never by resampling twice.

Steps of :func:`estimate_tile_shift`:

1. One comparable band per sensor (:func:`comparable_band`: close centre wavelengths, optical
   only; SAR against optical is not estimated).
2. Each stack's band is reduced to one plane: the per-pixel mean over the time planes where the
   pixel is ``VALID`` (so a series or composite gives one image of the period).
3. Both planes are block-averaged to a common grid (the coarser resolution when it is a whole
   multiple of the finer, e.g. 10 m -> 30 m; otherwise their least common multiple). A coarse
   pixel is valid only if every fine pixel in it is.
4. A coarse estimate by phase correlation (:func:`pipelines.phase_correlation.estimate_shift`)
   on the pixels valid in both.
5. A refinement by least squares (Gauss-Newton, Lucas-Kanade style) on the pixels valid in both:
   ``moving ~= gain * reference(shifted) + offset``, the reference interpolated with cubic
   splines. Filled holes and the Hann window bias phase correlation towards zero shift under
   clouds; the least-squares fit uses only observed pixels and has no such bias.
6. The confidence: the phase-correlation peak ratio of the reference resampled at the fitted
   shift against the moving image (sharp at zero for a real match, about 1 for none).

Sign convention (the same as :mod:`pipelines.phase_correlation`, in metres): ``dx_m``/``dy_m``
is the displacement of the moving image's content relative to the reference, x east and y north:
ground that truly lies at ``(x, y)`` appears in the moving image at ``(x + dx_m, y + dy_m)``.
Rows grow southwards, so ``dy_m = -dy_px * resolution``. The correction translates the moving
items' geotransforms by ``(-dx_m, -dy_m)`` (:func:`shift_item`); the loader then re-warps them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipelines.phase_correlation import estimate_shift
from pipelines.stack import PeriodStack
from schemas.cube import MaskBit
from schemas.errors import InvalidInputError
from schemas.profiles import BandRole, BandSpec

__all__ = [
    "DEFAULT_MIN_PEAK_RATIO",
    "ShiftResult",
    "comparable_band",
    "decide",
    "estimate_tile_shift",
    "shift_item",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Peak ratio below which a match is taken as noise. Aligned matching textures give about 50 on
#: 64 x 64 px windows, unrelated or featureless ones about 1-1.3.
DEFAULT_MIN_PEAK_RATIO = 3.0
#: Centre wavelengths (µm) tried in order: red, NIR, green. Red and NIR carry the most texture
#: over land and exist on every optical sensor eoforge reads.
_TARGETS_UM = (0.665, 0.842, 0.560)
#: Smallest common grid (pixels per edge) phase correlation works on.
_MIN_PIXELS = 16
_LSQ_ITERATIONS = 20
_LSQ_TOLERANCE_PX = 1e-4


@dataclass(frozen=True, slots=True)
class ShiftResult:
    """The residual shift of one sensor against the reference in one tile.

    Attributes:
        dx_m: Eastward displacement of the moving content (metres); ``None`` if not estimated.
        dy_m: Northward displacement (metres); ``None`` if not estimated.
        confidence: Peak ratio of the aligned pair (0 when it was not computed).
        estimated: Whether ``dx_m``/``dy_m`` are a trustworthy measurement.
        reason: Why it was not estimated, or a short description of the estimate.
        valid_fraction: Share of common-grid pixels valid in both images.
    """

    dx_m: float | None
    dy_m: float | None
    confidence: float
    estimated: bool
    reason: str
    valid_fraction: float = 0.0

    @classmethod
    def not_estimated(
        cls, reason: str, *, confidence: float = 0.0, valid_fraction: float = 0.0
    ) -> ShiftResult:
        """A result that records why no shift was estimated (e.g. SAR against optical)."""
        return cls(None, None, confidence, False, reason, valid_fraction)

    @property
    def magnitude_m(self) -> float | None:
        """Length of the shift vector in metres, if estimated."""
        if self.dx_m is None or self.dy_m is None:
            return None
        return math.hypot(self.dx_m, self.dy_m)


def _optical(
    bands: Sequence[BandSpec], wavelengths_um: Mapping[str, float]
) -> list[tuple[BandSpec, float]]:
    out: list[tuple[BandSpec, float]] = []
    for band in bands:
        if band.role is not BandRole.REFLECTANCE:
            continue
        wl = wavelengths_um.get(band.name, band.center_wavelength_um)
        if wl is not None:
            out.append((band, float(wl)))
    return out


def _nearest(
    candidates: Sequence[tuple[BandSpec, float]], target_um: float, tolerance_um: float
) -> tuple[BandSpec, float] | None:
    best: tuple[BandSpec, float] | None = None
    for band, wl in candidates:
        if abs(wl - target_um) > tolerance_um:
            continue
        # Nearest wavelength first, then the finer band, then table order.
        if best is None or (abs(wl - target_um), band.resolution_m) < (
            abs(best[1] - target_um),
            best[0].resolution_m,
        ):
            best = (band, wl)
    return best


def comparable_band(
    reference_bands: Sequence[BandSpec],
    moving_bands: Sequence[BandSpec],
    *,
    wavelengths_um: Mapping[str, float] | None = None,
    tolerance_um: float = 0.035,
) -> tuple[str, str] | None:
    """Choose a reference band and a moving band that see the ground alike.

    Tries red (0.665 µm), then NIR (0.842 µm), then green (0.560 µm): the reference band
    nearest the target and the moving band nearest that band, both within ``tolerance_um``.
    Examples: Sentinel-2 ``B04`` with Landsat ``SR_B4``; an EnMAP band near 0.665 µm.

    Args:
        reference_bands: Profile bands of the reference sensor that the stack holds.
        moving_bands: Profile bands of the moving sensor that the stack holds.
        wavelengths_um: Centre wavelengths by canonical band name for bands whose profile has
            none (EnMAP's are per scene, from the item's ``eo:bands``); they override the profile.
        tolerance_um: Largest wavelength difference accepted.

    Returns:
        ``(reference_band_name, moving_band_name)``, or ``None`` when no pair is close enough,
        e.g. SAR backscatter against optical reflectance (record it with
        :meth:`ShiftResult.not_estimated`).
    """
    wls = dict(wavelengths_um or {})
    ref = _optical(reference_bands, wls)
    mov = _optical(moving_bands, wls)
    for target in _TARGETS_UM:
        ref_pick = _nearest(ref, target, tolerance_um)
        if ref_pick is None:
            continue
        mov_pick = _nearest(mov, ref_pick[1], tolerance_um)
        if mov_pick is not None:
            return ref_pick[0].name, mov_pick[0].name
    return None


def _period_plane(stack: PeriodStack, band: str) -> tuple[FloatArray, BoolArray]:
    """Mean over the valid time planes of one band: ``(y, x)`` float64 (NaN) and its validity."""
    if band not in stack.bands:
        raise InvalidInputError(
            f"band {band!r} is not in the {stack.sensor} stack {list(stack.bands)}",
            where=f"tile {stack.tile_id}",
            fix="pick the band with comparable_band from the bands the stack holds",
        )
    values = stack.data[:, stack.bands.index(band)].astype(np.float64)
    ok = ((stack.mask & MaskBit.VALID) != 0) & np.isfinite(values)
    count = ok.sum(axis=0)
    total = np.where(ok, values, 0.0).sum(axis=0)
    valid = count > 0
    plane = np.full(valid.shape, np.nan)
    np.divide(total, count, out=plane, where=valid)
    return plane, valid


def _block_mean(plane: FloatArray, valid: BoolArray, factor: int) -> tuple[FloatArray, BoolArray]:
    """Average ``factor x factor`` blocks; a block is valid only if all its pixels are.

    Returns ``(y/factor, x/factor)`` float64 means (NaN where invalid) and their bool validity.
    """
    if factor == 1:
        return plane, valid
    ny, nx = plane.shape
    shape = (ny // factor, factor, nx // factor, factor)
    coarse = np.where(valid, plane, 0.0).reshape(shape).mean(axis=(1, 3))
    ok: BoolArray = np.asarray(valid.reshape(shape).all(axis=(1, 3)), dtype=np.bool_)
    return np.asarray(np.where(ok, coarse, np.nan), dtype=np.float64), ok


def _common_resolution(a_m: float, b_m: float) -> float:
    """The least common multiple of two resolutions (to 1 mm)."""
    a, b = round(a_m * 1000), round(b_m * 1000)
    return math.lcm(a, b) / 1000.0


def _smooth_fill(plane: FloatArray, valid: BoolArray, sigma: float = 2.0) -> FloatArray:
    """Fill invalid pixels by normalised Gaussian convolution (no edges for the spline).

    Returns ``(y, x)`` float64 without NaN: valid pixels unchanged, holes interpolated (the
    mean of the valid pixels where no valid pixel is near).
    """
    weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma)
    blurred = ndimage.gaussian_filter(np.where(valid, plane, 0.0), sigma)
    mean = float(plane[valid].mean())
    filled = np.where(weight > 1e-3, blurred / np.maximum(weight, 1e-12), mean)
    return np.asarray(np.where(valid, plane, filled), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Fit:
    dy_px: float
    dx_px: float
    aligned: FloatArray  # the reference resampled at the fitted shift
    used: BoolArray  # the pixels the fit used


def _refine(
    ref: FloatArray,
    ref_ok: BoolArray,
    mov: FloatArray,
    mov_ok: BoolArray,
    start: tuple[float, float],
) -> _Fit | None:
    """Least-squares shift ``(dy, dx)`` px with ``mov ~= g * ref(y - dy, x - dx) + o``.

    The pixel set is chosen once around the current shift (whole cubic stencil observed, plus a
    1 px margin for the shift to move) and kept while the shift stays within 0.5 px of where it
    was chosen: a set that changed every iteration would make Gauss-Newton oscillate.

    Returns:
        The fit, or ``None`` when it has too few pixels or does not converge.
    """
    coeffs = ndimage.spline_filter(_smooth_fill(ref, ref_ok), order=3)
    core = ndimage.binary_erosion(ref_ok, iterations=3, border_value=0).astype(np.float64)
    yy, xx = np.mgrid[0 : ref.shape[0], 0 : ref.shape[1]].astype(np.float64)

    def sample(img: FloatArray, ys: FloatArray, xs: FloatArray, order: int = 3) -> FloatArray:
        return np.asarray(
            ndimage.map_coordinates(
                img, [ys, xs], order=order, prefilter=False, mode="nearest" if order else "constant"
            )
        )

    dy, dx = start
    chosen_at: tuple[float, float] | None = None
    used = np.zeros(ref.shape, dtype=bool)
    for _ in range(_LSQ_ITERATIONS):
        ys, xs = yy - dy, xx - dx
        if chosen_at is None or max(abs(dy - chosen_at[0]), abs(dx - chosen_at[1])) > 0.5:
            chosen_at = (dy, dx)
            used = (sample(core, ys, xs, order=0) > 0.5) & mov_ok
            if used.sum() < _MIN_PIXELS * _MIN_PIXELS // 4:
                return None
        shifted = sample(coeffs, ys, xs)
        grad_y = sample(coeffs, ys + 0.5, xs) - sample(coeffs, ys - 0.5, xs)
        grad_x = sample(coeffs, ys, xs + 0.5) - sample(coeffs, ys, xs - 0.5)
        # mov ~= g * (shifted - grad_y * ddy - grad_x * ddx) + o: linear in g*ddy, g*ddx, g, o.
        n = int(used.sum())
        design = np.stack([-grad_y[used], -grad_x[used], shifted[used], np.ones(n)], axis=1)
        solution, *_ = np.linalg.lstsq(design, mov[used], rcond=None)
        gain = float(solution[2])
        if not math.isfinite(gain) or abs(gain) < 1e-6:
            return None
        step_y, step_x = float(solution[0]) / gain, float(solution[1]) / gain
        dy, dx = dy + step_y, dx + step_x
        if abs(step_y) < _LSQ_TOLERANCE_PX and abs(step_x) < _LSQ_TOLERANCE_PX:
            aligned = sample(coeffs, yy - dy, xx - dx)
            return _Fit(dy, dx, aligned, used)
    return None


def _aligned_peak_ratio(fit: _Fit, mov: FloatArray) -> float:
    """Phase-correlation peak ratio of the aligned pair on the fitted pixels (the confidence).

    After alignment a true match peaks sharply at zero shift whatever the sub-pixel shift was
    (the coarse peak of a half-pixel shift is spread over four pixels); unrelated images stay
    near 1. Pixels outside the fit are set to each image's mean, so they add nothing.
    """
    return float(
        estimate_shift(
            np.where(fit.used, fit.aligned, np.nan), np.where(fit.used, mov, np.nan), iterations=1
        ).peak_ratio
    )


def estimate_tile_shift(
    reference: PeriodStack,
    moving: PeriodStack,
    ref_band: str,
    moving_band: str,
    *,
    min_valid_fraction: float = 0.5,
    max_shift_px: float = 2.0,
    min_peak_ratio: float = DEFAULT_MIN_PEAK_RATIO,
) -> ShiftResult:
    """Estimate the residual shift of ``moving`` against ``reference`` on one tile.

    See the module docstring for the method and the sign convention.

    Args:
        reference: The reference sensor's stack of the tile and period.
        moving: The stack to register, on the same tile (any resolution that nests).
        ref_band: Band of ``reference`` to match (from :func:`comparable_band`).
        moving_band: Band of ``moving`` to match.
        min_valid_fraction: Least share of common-grid pixels valid in both images.
        max_shift_px: Largest plausible shift, in pixels of the common grid; larger ones are
            false matches (AROSICS ``max_shift``) and are not estimated.
        min_peak_ratio: Least peak ratio of the aligned pair for a real match.

    Returns:
        The shift; ``estimated`` is False (with the reason) when too few pixels are clear in
        both, the images have no texture or no clear correlation peak, the fit does not
        converge, or the shift exceeds ``max_shift_px``.

    Raises:
        InvalidInputError: The stacks are not on the same tile, or a band is not in its stack.
    """
    if reference.epsg != moving.epsg or (reference.transform.c, reference.transform.f) != (
        moving.transform.c,
        moving.transform.f,
    ):
        raise InvalidInputError(
            f"{moving.sensor} stack is not on the reference tile grid",
            where=f"tile {reference.tile_id}",
            fix="load both sensors onto the same tile before co-registration",
        )
    common = _common_resolution(reference.resolution_m, moving.resolution_m)
    ref_plane, ref_ok = _period_plane(reference, ref_band)
    mov_plane, mov_ok = _period_plane(moving, moving_band)
    n_common = ref_plane.shape[0] * reference.resolution_m / common
    if abs(n_common - round(n_common)) > 1e-6 or round(n_common) < _MIN_PIXELS:
        return ShiftResult.not_estimated(
            f"the tile is not a whole number of at least {_MIN_PIXELS} pixels of the common "
            f"{common:g} m grid"
        )
    ref_c, ref_ok = _block_mean(ref_plane, ref_ok, round(common / reference.resolution_m))
    mov_c, mov_ok = _block_mean(mov_plane, mov_ok, round(common / moving.resolution_m))
    both = ref_ok & mov_ok
    fraction = float(both.mean())
    if fraction < min_valid_fraction:
        return ShiftResult.not_estimated(
            f"only {fraction:.0%} of pixels are clear in both images (need "
            f"{min_valid_fraction:.0%})",
            valid_fraction=fraction,
        )
    if float(np.std(ref_c[both])) <= 1e-9 or float(np.std(mov_c[both])) <= 1e-9:
        return ShiftResult.not_estimated("no texture to match", valid_fraction=fraction)
    coarse = estimate_shift(np.where(both, ref_c, np.nan), mov_c, valid=both)
    fit = _refine(ref_c, ref_ok, mov_c, mov_ok, (coarse.dy_px, coarse.dx_px))
    if fit is None:
        return ShiftResult.not_estimated(
            "no clear match: the least-squares fit did not converge (coarse peak ratio "
            f"{coarse.peak_ratio:.2f})",
            confidence=float(coarse.peak_ratio),
            valid_fraction=fraction,
        )
    ratio = _aligned_peak_ratio(fit, mov_c)
    if not ratio >= min_peak_ratio:
        return ShiftResult.not_estimated(
            f"no clear match: aligned peak ratio {ratio:.2f} < {min_peak_ratio:g}",
            confidence=ratio,
            valid_fraction=fraction,
        )
    dy_px, dx_px = fit.dy_px, fit.dx_px
    if math.hypot(dy_px, dx_px) > max_shift_px:
        return ShiftResult.not_estimated(
            f"shift ({dx_px:+.2f}, {-dy_px:+.2f}) px exceeds the {max_shift_px:g} px bound "
            "(a false match or a gross geolocation error)",
            confidence=ratio,
            valid_fraction=fraction,
        )
    dx_m, dy_m = dx_px * common, -dy_px * common
    return ShiftResult(
        dx_m=dx_m,
        dy_m=dy_m,
        confidence=ratio,
        estimated=True,
        reason=f"{moving_band} vs {ref_band} at {common:g} m: ({dx_m:+.2f}, {dy_m:+.2f}) m",
        valid_fraction=fraction,
    )


def decide(result: ShiftResult, max_shift_m: float, min_confidence: float) -> bool:
    """Whether to correct a shift: estimated, confident enough and within the bound.

    Args:
        result: The estimate.
        max_shift_m: Largest shift (vector length, metres) the recipe lets eoforge correct.
        min_confidence: Least peak ratio.

    Returns:
        True when the moving items should be translated with :func:`shift_item`.
    """
    magnitude = result.magnitude_m
    return (
        result.estimated
        and magnitude is not None
        and result.confidence >= min_confidence
        and magnitude <= max_shift_m
    )


def _translate(values: Any, dx_m: float, dy_m: float, kind: str) -> Any:
    if kind == "proj:transform":
        # [a, b, c, d, e, f] (optionally followed by 0, 0, 1): c and f are the origin.
        out = list(values)
        out[2] = float(out[2]) - dx_m
        out[5] = float(out[5]) - dy_m
        return out
    minx, miny, maxx, maxy = (float(v) for v in values)
    return [minx - dx_m, miny - dy_m, maxx - dx_m, maxy - dy_m]


def shift_item(item: Mapping[str, Any], dx_m: float, dy_m: float) -> dict[str, Any]:
    """A deep copy of a STAC item whose geocoding corrects a measured shift.

    Every ``proj:transform`` and ``proj:bbox`` (item properties and each asset) is translated by
    ``(-dx_m, -dy_m)`` metres, so content that appeared at ``(x + dx_m, y + dy_m)`` is placed at
    ``(x, y)``. The WGS84 ``bbox``/``geometry`` are left as they are (search only). The shift is
    measured in the tile's CRS; for an item in a neighbouring UTM zone the translation is off by
    the meridian-convergence rotation of the shift vector (a few percent of a sub-pixel shift).

    Args:
        item: A STAC item dict (left unchanged).
        dx_m: Eastward displacement of the item's content, metres (:class:`ShiftResult`).
        dy_m: Northward displacement, metres.

    Returns:
        The corrected copy.

    Raises:
        InvalidInputError: The item has no ``proj:transform`` or ``proj:bbox`` to translate.
    """
    out: dict[str, Any] = copy.deepcopy(dict(item))
    holders: list[dict[str, Any]] = []
    props = out.get("properties")
    if isinstance(props, dict):
        holders.append(props)
    assets = out.get("assets")
    if isinstance(assets, dict):
        holders.extend(a for a in assets.values() if isinstance(a, dict))
    found = False
    for holder in holders:
        for kind in ("proj:transform", "proj:bbox"):
            if holder.get(kind) is not None:
                holder[kind] = _translate(holder[kind], dx_m, dy_m, kind)
                found = True
    if not found:
        raise InvalidInputError(
            "the item has no proj:transform or proj:bbox to translate",
            where=f"item {out.get('id')}",
            fix="normalise the item through its sensor profile (projection extension) first",
        )
    return out
