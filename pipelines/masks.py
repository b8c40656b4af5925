"""Build stage ``masks``: reduce a LoadedStack's quality layers to one ``MaskBit`` bitmask.

Every sensor ends up with the same uint8 bitmask (:class:`schemas.cube.MaskBit`):

* the sensor's quality layers are decoded by :func:`schemas.qa.decode_flags` into the common flag
  planes (nodata, saturated, cloud, shadow, cirrus, snow, haze) and each plane sets its bit;
* ``NODATA`` is also set where the scene has no source pixel (``footprint`` False) or any data
  band is NaN, so a VALID pixel always has finite values in every band;
* the cloud and shadow flags are optionally grown by ``dilation_m`` metres (a disk);
* ``VALID`` is set where the pixel is observed and no flag that the profile plus the recipe call
  invalid is set: nodata, saturated, cloud, shadow, cirrus (unless ``mask_cirrus`` is False),
  snow (only with ``mask_snow``), haze (only with ``mask_haze``).

Flags that do not invalidate a pixel are still recorded (a snowy pixel keeps its ``SNOW`` bit and
is VALID when ``mask_snow`` is off). Sensors without a quality layer (Sentinel-1) get
``VALID = footprint & finite data`` and ``NODATA`` elsewhere.

The data are handed on exactly as loaded (the SceneStack shares the LoadedStack's array): the
mask, not NaN, says which pixels are usable, so nothing is lost for a caller with other rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipelines.stack import LoadedStack, SceneStack
from schemas.cube import FLAG_BITS, MaskBit
from schemas.errors import InvalidInputError
from schemas.profiles import SensorProfile
from schemas.qa import QA_FLAGS, BoolArray, MaskKind, decode_flags, invalid_from_flags

__all__ = [
    "MaskOptions",
    "MaskOptionsLike",
    "build_mask",
    "dilate",
    "dilation_radius_px",
    "disk",
    "encode_flags",
]

#: Flags grown by the dilation.
DILATED_FLAGS: tuple[str, ...] = ("cloud", "shadow")

#: Optional EnMAP layers a recipe option needs: option -> (flag, canonical layer name).
_ENMAP_OPTIONAL_LAYERS: dict[str, tuple[str, str]] = {
    "mask_snow": ("snow", "QL_QUALITY_SNOW"),
    "mask_haze": ("haze", "QL_QUALITY_HAZE"),
}


class MaskOptionsLike(Protocol):
    """The masking options :func:`build_mask` reads (``schemas.recipe.MaskRules`` fits)."""

    @property
    def mask_snow(self) -> bool:
        """Snow/ice makes a pixel invalid."""
        ...

    @property
    def mask_haze(self) -> bool:
        """Haze makes a pixel invalid."""
        ...

    @property
    def mask_cirrus(self) -> bool:
        """Thin cirrus makes a pixel invalid."""
        ...

    @property
    def dilation_m(self) -> float:
        """Grow cloud and shadow by this distance in metres (0 = none)."""
        ...


@dataclass(frozen=True, slots=True)
class MaskOptions:
    """Masking options outside a recipe; the defaults are the profile defaults.

    Attributes:
        mask_snow: Snow/ice makes a pixel invalid.
        mask_haze: Haze makes a pixel invalid.
        mask_cirrus: Thin cirrus makes a pixel invalid.
        dilation_m: Grow cloud and shadow by this distance in metres (0 = none).
    """

    mask_snow: bool = False
    mask_haze: bool = False
    mask_cirrus: bool = True
    dilation_m: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.dilation_m) or self.dilation_m < 0:
            raise InvalidInputError(
                f"dilation_m must be a finite distance >= 0, got {self.dilation_m}",
                fix="use 0 for no dilation",
            )


def dilation_radius_px(dilation_m: float, resolution_m: float) -> int:
    """Dilation radius in pixels: ``dilation_m / resolution_m`` rounded to the nearest integer.

    Halves round up (45 m at 30 m is 2 px), so the radius never falls short by half a pixel more
    than it overshoots.

    Args:
        dilation_m: Distance in metres, >= 0.
        resolution_m: Pixel size in metres, > 0.

    Returns:
        Radius in pixels, >= 0.
    """
    if not math.isfinite(dilation_m) or dilation_m < 0:
        raise InvalidInputError(f"dilation_m must be >= 0, got {dilation_m}")
    if not math.isfinite(resolution_m) or resolution_m <= 0:
        raise InvalidInputError(f"resolution_m must be > 0, got {resolution_m}")
    return math.floor(dilation_m / resolution_m + 0.5)


def disk(radius_px: int) -> BoolArray:
    """Disk structuring element: offsets ``(dy, dx)`` with ``dy**2 + dx**2 <= radius_px**2``.

    Args:
        radius_px: Radius in pixels, >= 0.

    Returns:
        ``(y, x)`` bool of shape ``(2 r + 1, 2 r + 1)``; True inside the disk.
    """
    if radius_px < 0:
        raise InvalidInputError(f"radius_px must be >= 0, got {radius_px}")
    offsets = np.arange(-radius_px, radius_px + 1)
    out: BoolArray = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius_px**2
    return out


def dilate(flag: BoolArray, radius_px: int) -> BoolArray:
    """Grow a stack of flag planes by a disk, each time plane on its own.

    Args:
        flag: ``(time, y, x)`` bool.
        radius_px: Disk radius in pixels; 0 returns a copy.

    Returns:
        ``(time, y, x)`` bool: True within ``radius_px`` pixels (Euclidean, pixel centres) of a
        True pixel of the same plane; the array edge adds nothing.
    """
    if flag.ndim != 3:
        raise InvalidInputError(f"flag must be (time, y, x), got shape {flag.shape}")
    if radius_px == 0 or not flag.any():
        return flag.copy()
    structure = disk(radius_px)[None, :, :]  # no growth along time
    out: BoolArray = ndimage.binary_dilation(flag, structure=structure)
    return out


def encode_flags(flags: dict[str, BoolArray], valid: BoolArray) -> npt.NDArray[np.uint8]:
    """Pack flag planes and the valid plane into the ``MaskBit`` bitmask.

    Args:
        flags: ``{flag: bool array}`` for the flags of :data:`schemas.qa.QA_FLAGS` (missing
            ones count as all False), all with the shape of ``valid``.
        valid: Bool array, True where the pixel is usable.

    Returns:
        uint8 array with the dims of ``valid``; each set flag sets its ``MaskBit``, ``valid``
        sets ``VALID`` (no nodata value: every pixel gets a mask).
    """
    mask = np.zeros(valid.shape, dtype=np.uint8)
    mask[valid] = np.uint8(MaskBit.VALID)
    for name in QA_FLAGS:
        plane = flags.get(name)
        if plane is not None:
            mask[plane] |= np.uint8(FLAG_BITS[name])
    return mask


def _qa_layers(stack: LoadedStack) -> dict[str, np.ndarray]:
    expected = (stack.data.shape[0], *stack.data.shape[2:])
    for name, layer in stack.qa.items():
        if layer.shape != expected:
            raise InvalidInputError(
                f"QA layer {name!r} has shape {layer.shape}, the data planes are {expected}",
                where=f"tile {stack.tile_id} ({stack.sensor})",
                fix="load the quality layers onto the data's tile grid",
            )
    return dict(stack.qa)


def _invalid_names(
    profile: SensorProfile, options: MaskOptionsLike, stack: LoadedStack
) -> set[str]:
    spec = profile.mask
    names = set(spec.invalid_flags)
    if not options.mask_cirrus:
        names.discard("cirrus")
    for option, (flag, layer) in _ENMAP_OPTIONAL_LAYERS.items():
        if not getattr(options, option):
            continue
        if spec.kind is MaskKind.ENMAP_QUALITY and layer not in stack.qa:
            raise InvalidInputError(
                f"{option} needs the EnMAP layer {layer}, which was not loaded",
                where=f"tile {stack.tile_id} ({stack.sensor})",
                fix=f"load {layer} or turn {option} off",
            )
        names.add(flag)
    return names


def build_mask(
    stack: LoadedStack, profile: SensorProfile, options: MaskOptionsLike | None = None
) -> SceneStack:
    """Reduce a stack's quality layers, footprint and NaNs to one ``MaskBit`` plane per scene.

    Args:
        stack: The loaded scenes of one sensor on one tile.
        profile: The sensor profile (its ``mask`` spec names the decoder and the invalid flags).
        options: Recipe masking options (``schemas.recipe.MaskRules`` or :class:`MaskOptions`);
            None uses the profile defaults.

    Returns:
        A SceneStack with the stack's data unchanged (same array, NaN = no data) and ``mask``
        ``(time, y, x)`` uint8 ``MaskBit`` flags: ``NODATA`` outside the footprint, on fill and
        where any band is NaN; the decoded flag bits (cloud and shadow grown by
        ``options.dilation_m`` over observed pixels); ``VALID`` where observed and no invalid
        flag is set.

    Raises:
        InvalidInputError: A quality layer the profile needs is missing or off the data grid, or
            an option needs a layer that was not loaded.
    """
    opts: MaskOptionsLike = options if options is not None else MaskOptions()
    spec = profile.mask
    shape = (stack.data.shape[0], *stack.data.shape[2:])
    observed: BoolArray = stack.footprint & np.isfinite(stack.data).all(axis=1)

    if spec.kind is MaskKind.NODATA:
        flags: dict[str, BoolArray] = {name: np.zeros(shape, np.bool_) for name in QA_FLAGS}
        names = {"nodata"}
    else:
        flags = decode_flags(spec, _qa_layers(stack))
        names = _invalid_names(profile, opts, stack)
    flags["nodata"] = flags["nodata"] | ~observed
    observed = ~flags["nodata"]

    radius = dilation_radius_px(opts.dilation_m, stack.resolution_m)
    if radius > 0 and spec.kind is not MaskKind.NODATA:
        for name in DILATED_FLAGS:
            # Grow onto observed pixels only: a no-data pixel stays "no observation".
            flags[name] = flags[name] | (dilate(flags[name], radius) & observed)

    invalid = invalid_from_flags(flags, invalid_flags=names | {"nodata"})
    mask = encode_flags(flags, ~invalid)
    return SceneStack(
        sensor=stack.sensor,
        tile_id=stack.tile_id,
        epsg=stack.epsg,
        transform=stack.transform,
        resolution_m=stack.resolution_m,
        bands=stack.bands,
        data=stack.data,
        mask=mask,
        times=stack.times,
        item_ids=stack.item_ids,
        items=stack.items,
    )
