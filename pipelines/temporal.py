"""Build stage ``temporal``: reduce one tile's scenes to each period's planes.

Scenes considered for a period are those acquired in ``[period.start, period.end)`` that observe
the tile at all (at least one pixel without ``NODATA``) and whose VALID share of the tile's pixels
is at least ``min_valid_fraction``. They are ranked clearest first: most VALID pixels, then the
earlier acquisition, then the smaller item id, so every choice is deterministic.

Modes (``schemas.recipe.TemporalMode``):

* ``best``: the top-ranked scene as one plane.
* ``series``: the ``max_scenes`` top-ranked scenes (all when None), in chronological order.
* ``composite``: the ``max_scenes`` top-ranked scenes (all when None) reduced per pixel and band
  to the median of their VALID observations (the mean of the two middle values for an even
  count); NaN where no scene is VALID. The composite mask of a pixel is the bitwise AND of the
  masks of its VALID observations; where there are none, the AND over its observed (non-NODATA)
  observations, so a pixel is CLOUD only when it is cloudy in every observation; where there are
  none either, the AND over all, which keeps ``NODATA``. The plane's time is the median
  acquisition time of the source scenes (the mean of the middle two for an even count, rounded
  down to the nanosecond); its sources are the scenes that gave at least one VALID pixel, or,
  when no scene gave any, every scene used (they made the mask).

Fractions of the result: ``valid_fraction`` is the VALID share of pixels x planes;
``cloud_fraction`` the share of observed (non-NODATA) pixels x planes with ``CLOUD``, ``SHADOW``
or ``CIRRUS``, None for a sensor without a cloud mask (Sentinel-1).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from pipelines.stack import PeriodStack, SceneStack
from schemas.cube import MaskBit
from schemas.errors import InvalidInputError
from schemas.recipe import Period, TemporalMode
from schemas.recipe_sensors import OPTICAL_SENSORS

__all__ = ["CLOUD_BITS", "composite_median", "reduce_period", "reduce_periods", "scene_order"]

#: Bits counted by ``cloud_fraction``.
CLOUD_BITS = int(MaskBit.CLOUD | MaskBit.SHADOW | MaskBit.CIRRUS)
_VALID = np.uint8(MaskBit.VALID)
_NODATA = np.uint8(MaskBit.NODATA)


def _to_datetime64(when: datetime) -> np.datetime64:
    """A timezone-aware datetime as naive UTC datetime64[ns]."""
    return np.datetime64(when.astimezone(UTC).replace(tzinfo=None), "ns")


def scene_order(stack: SceneStack, indices: Iterable[int]) -> list[int]:
    """Rank scenes clearest first: most VALID pixels, then earlier time, then smaller item id.

    Args:
        stack: The scenes.
        indices: Time-plane indices to rank.

    Returns:
        The indices, clearest first.
    """
    valid = (stack.mask & _VALID).astype(bool).sum(axis=(1, 2))
    times = stack.times.astype("datetime64[ns]").astype(np.int64)
    return sorted(indices, key=lambda i: (-int(valid[i]), int(times[i]), stack.item_ids[i]))


def composite_median(
    data: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """Per-pixel median over time of the valid observations of one band.

    Args:
        data: ``(time, y, x)`` float32 values of one band.
        valid: ``(time, y, x)`` bool, True where an observation may enter the median (a NaN
            value never does).

    Returns:
        ``(y, x)`` float32 median (mean of the two middle values, computed in float64, for an
        even count); NaN where no observation is valid.
    """
    use = valid & np.isfinite(data)
    # NaN sorts last, so each pixel's valid values lead its sorted column.
    values = np.sort(np.where(use, data, np.float32(np.nan)), axis=0)
    count = use.sum(axis=0)
    low = np.clip((count - 1) // 2, 0, None)[None]
    high = (count // 2)[None]
    a = np.take_along_axis(values, low, axis=0)[0].astype(np.float64)
    b = np.take_along_axis(values, np.minimum(high, values.shape[0] - 1), axis=0)[0]
    median: npt.NDArray[np.float32] = ((a + b.astype(np.float64)) / 2.0).astype(np.float32)
    median[count == 0] = np.nan
    return median


def _composite_mask(mask: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """``(time, y, x)`` masks -> ``(y, x)`` uint8 composite mask (rule in the module docstring)."""
    valid = (mask & _VALID) != 0
    observed = (mask & _NODATA) == 0
    select = np.where(valid.any(axis=0), valid, np.where(observed.any(axis=0), observed, True))
    out: npt.NDArray[np.uint8] = np.bitwise_and.reduce(
        mask, axis=0, where=select, initial=np.uint8(0xFF)
    )
    return out


def _median_time(times: npt.NDArray[np.datetime64]) -> np.datetime64:
    ns = np.sort(times.astype("datetime64[ns]").astype(np.int64))
    lo, hi = int(ns[(len(ns) - 1) // 2]), int(ns[len(ns) // 2])
    return np.datetime64(lo + (hi - lo) // 2, "ns")


def _fractions(mask: npt.NDArray[np.uint8], has_cloud_mask: bool) -> tuple[float, float | None]:
    valid = float(np.count_nonzero(mask & _VALID)) / mask.size if mask.size else 0.0
    if not has_cloud_mask:
        return valid, None
    observed = (mask & _NODATA) == 0
    n_observed = int(np.count_nonzero(observed))
    cloudy = int(np.count_nonzero(observed & ((mask & CLOUD_BITS) != 0)))
    return valid, (cloudy / n_observed if n_observed else 0.0)


def _candidates(stack: SceneStack, period: Period, min_valid_fraction: float) -> list[int]:
    """Indices of the scenes in the period that observe the tile and are clear enough."""
    times = stack.times.astype("datetime64[ns]")
    inside = (times >= _to_datetime64(period.start)) & (times < _to_datetime64(period.end))
    pixels = stack.mask.shape[1] * stack.mask.shape[2]
    valid = np.count_nonzero(stack.mask & _VALID, axis=(1, 2))
    observed = np.count_nonzero((stack.mask & _NODATA) == 0, axis=(1, 2))
    keep = inside & (observed > 0) & (valid >= min_valid_fraction * pixels)
    return [int(i) for i in np.flatnonzero(keep)]


def reduce_period(
    stack: SceneStack,
    period: Period,
    mode: TemporalMode | str,
    max_scenes: int | None = None,
    min_valid_fraction: float = 0.0,
    *,
    has_cloud_mask: bool | None = None,
) -> PeriodStack | None:
    """Reduce the scenes of one period to its cube planes (rules in the module docstring).

    Args:
        stack: All scenes of one sensor on one tile, with masks.
        period: The period; a scene belongs to it when its time is in ``[start, end)``.
        mode: ``best``, ``composite`` or ``series``.
        max_scenes: Most scenes kept (series) or entering the median (composite), clearest
            first; None = all. Not used by ``best``.
        min_valid_fraction: Scenes with a smaller VALID share of the tile are dropped.
        has_cloud_mask: Whether the sensor has a cloud mask (decides ``cloud_fraction``);
            None = the sensor is optical (Sentinel-2, Landsat, EnMAP).

    Returns:
        A PeriodStack: ``data`` ``(time, band, y, x)`` float32 (NaN = no data), ``mask``
        ``(time, y, x)`` uint8 ``MaskBit``, one plane for ``best``/``composite`` and up to
        ``max_scenes`` for ``series``; or None when no scene of the stack is in the period,
        observes the tile and reaches ``min_valid_fraction``.

    Raises:
        InvalidInputError: Unknown mode, ``max_scenes`` < 1 or ``min_valid_fraction``
            outside [0, 1].
    """
    try:
        kind = TemporalMode(mode)
    except ValueError:
        raise InvalidInputError(
            f"unknown temporal mode {mode!r}",
            fix=f"use one of {[m.value for m in TemporalMode]}",
        ) from None
    if max_scenes is not None and max_scenes < 1:
        raise InvalidInputError(f"max_scenes must be >= 1 or None, got {max_scenes}")
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise InvalidInputError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
    cloud_mask = stack.sensor in OPTICAL_SENSORS if has_cloud_mask is None else has_cloud_mask

    ranked = scene_order(stack, _candidates(stack, period, min_valid_fraction))
    if not ranked:
        return None
    if kind is TemporalMode.BEST:
        ranked = ranked[:1]
    elif max_scenes is not None:
        ranked = ranked[:max_scenes]
    times_ns = stack.times.astype("datetime64[ns]")
    chosen = sorted(ranked, key=lambda i: (int(times_ns[i].astype(np.int64)), stack.item_ids[i]))

    if kind is TemporalMode.COMPOSITE:
        data, mask, times, sources = _composite(stack, chosen)
    else:
        data = stack.data[chosen]
        mask = stack.mask[chosen]
        times = times_ns[chosen]
        sources = tuple((stack.item_ids[i],) for i in chosen)
    valid_fraction, cloud_fraction = _fractions(mask, cloud_mask)
    return PeriodStack(
        sensor=stack.sensor,
        tile_id=stack.tile_id,
        period_id=period.id,
        epsg=stack.epsg,
        transform=stack.transform,
        resolution_m=stack.resolution_m,
        bands=stack.bands,
        data=data,
        mask=mask,
        times=times,
        sources=sources,
        valid_fraction=valid_fraction,
        cloud_fraction=cloud_fraction,
    )


def _composite(
    stack: SceneStack, chosen: list[int]
) -> tuple[
    npt.NDArray[np.float32],
    npt.NDArray[np.uint8],
    npt.NDArray[np.datetime64],
    tuple[tuple[str, ...], ...],
]:
    """The composite plane of the chosen scenes (chronological order)."""
    mask = stack.mask[chosen]
    valid = (mask & _VALID) != 0
    n_bands, height, width = stack.data.shape[1:]
    data = np.empty((1, n_bands, height, width), dtype=np.float32)
    for band in range(n_bands):  # one band at a time bounds the extra memory to one band
        data[0, band] = composite_median(stack.data[chosen, band], valid)
    contributed = [i for i, used in zip(chosen, valid.any(axis=(1, 2)), strict=True) if used]
    used = contributed or chosen
    times = np.array([_median_time(stack.times[used])], dtype="datetime64[ns]")
    sources: tuple[tuple[str, ...], ...] = (tuple(sorted(stack.item_ids[i] for i in used)),)
    return data, _composite_mask(mask)[None], times, sources


def reduce_periods(
    stack: SceneStack,
    periods: Iterable[Period],
    mode: TemporalMode | str,
    max_scenes: int | None = None,
    min_valid_fraction: float = 0.0,
    *,
    has_cloud_mask: bool | None = None,
) -> dict[str, PeriodStack]:
    """Run :func:`reduce_period` for every period.

    Args:
        stack: All scenes of one sensor on one tile, with masks.
        periods: The build's periods (distinct ids).
        mode: ``best``, ``composite`` or ``series``.
        max_scenes: As in :func:`reduce_period`.
        min_valid_fraction: As in :func:`reduce_period`.
        has_cloud_mask: As in :func:`reduce_period`.

    Returns:
        ``{period id: PeriodStack}`` in the order of ``periods``; a period without a usable
        scene (``reduce_period`` returned None) is left out.

    Raises:
        InvalidInputError: Two periods share an id, or as :func:`reduce_period`.
    """
    out: dict[str, PeriodStack] = {}
    seen: set[str] = set()
    for period in periods:
        if period.id in seen:
            raise InvalidInputError(f"period id {period.id!r} appears twice")
        seen.add(period.id)
        result = reduce_period(
            stack,
            period,
            mode,
            max_scenes,
            min_valid_fraction,
            has_cloud_mask=has_cloud_mask,
        )
        if result is not None:
            out[period.id] = result
    return out
