"""Mask definitions and pure decoders of the providers' quality layers.

Each decoder turns a sensor's quality layers into the same set of boolean flag planes,
:data:`QA_FLAGS`, so that one bitmask encoder (and one cloud-fraction rule) serves every sensor:

* ``nodata``: outside the acquisition or fill;
* ``saturated``: saturated or defective detector values;
* ``cloud``, ``shadow``, ``cirrus``, ``snow``, ``haze``: atmospheric and surface conditions.

A flag a sensor cannot express is an all-False plane. :func:`invalid_from_flags` combines the
planes with the profile default of SENSORS.md: nodata, saturated, cloud, shadow and cirrus are
invalid; snow and haze only on request.

Facts: Sentinel-2 SCL §2.3, Landsat QA_PIXEL / QA_RADSAT §3.2, EnMAP quality layers §5.2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.errors import InvalidInputError

__all__ = [
    "DEFAULT_INVALID_FLAGS",
    "ENMAP_CIRRUS_MIN",
    "LANDSAT_QA_INVALID_BITS",
    "LANDSAT_QA_SNOW_BIT",
    "OPTIONAL_FLAGS",
    "QA_FLAGS",
    "SCL_CLASSES",
    "SCL_DEFAULT_INVALID",
    "SCL_SNOW",
    "BoolArray",
    "LandsatQABit",
    "MaskKind",
    "MaskSpec",
    "decode_flags",
    "enmap_flags",
    "enmap_invalid",
    "invalid_from_flags",
    "landsat_qa_bits",
    "landsat_qa_flags",
    "landsat_qa_invalid",
    "scl_flags",
    "scl_invalid",
]

BoolArray = npt.NDArray[np.bool_]

#: Flag planes every decoder returns, in this order (the bitmask encoder's bit order).
QA_FLAGS: tuple[str, ...] = ("nodata", "saturated", "cloud", "shadow", "cirrus", "snow", "haze")
#: Flags that make a pixel invalid by default.
DEFAULT_INVALID_FLAGS: frozenset[str] = frozenset(
    {"nodata", "saturated", "cloud", "shadow", "cirrus"}
)
#: Flags a recipe may add to the invalid set (``mask_snow``, ``mask_haze``).
OPTIONAL_FLAGS: frozenset[str] = frozenset({"snow", "haze"})


class MaskKind(StrEnum):
    """How a sensor's validity mask is derived."""

    SCL = "scl"
    """Sentinel-2 Scene Classification Layer classes."""
    LANDSAT_QA = "landsat-qa"
    """Landsat C2 QA_PIXEL bits plus QA_RADSAT."""
    ENMAP_QUALITY = "enmap-quality"
    """EnMAP L2A QL_QUALITY_* layers."""
    NODATA = "nodata"
    """No quality layer: only the data's own nodata value (Sentinel-1)."""


@dataclass(frozen=True, slots=True)
class MaskSpec:
    """Which layers define a sensor's mask and how they are read.

    Attributes:
        kind: Decoder to use.
        bands: Canonical band names of the quality layers, in the order :func:`decode_flags`
            expects them (empty for :attr:`MaskKind.NODATA`).
        invalid_flags: Flags that make a pixel invalid by default.
        optional_flags: Flags a recipe may add (``snow``, ``haze``).
        description: One line for dataset cards.
    """

    kind: MaskKind
    bands: tuple[str, ...] = ()
    invalid_flags: frozenset[str] = field(default=DEFAULT_INVALID_FLAGS)
    optional_flags: frozenset[str] = field(default=OPTIONAL_FLAGS)
    description: str = ""


# --------------------------------------------------------------------------------------------
# Sentinel-2 SCL
# --------------------------------------------------------------------------------------------

#: Sen2Cor scene classes (SENSORS.md §2.3). Class 2 was "Dark features/Shadows" before PB 04.00.
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}
#: Classes masked by default: no data, saturated, cloud shadow, cloud medium/high, thin cirrus.
SCL_DEFAULT_INVALID: frozenset[int] = frozenset({0, 1, 3, 8, 9, 10})
#: Class added with ``mask_snow``.
SCL_SNOW = 11


def _false_like(shape: tuple[int, ...]) -> BoolArray:
    return np.zeros(shape, dtype=np.bool_)


def scl_flags(scl: npt.ArrayLike) -> dict[str, BoolArray]:
    """Decode a Sentinel-2 SCL array into the common flag planes.

    Args:
        scl: uint8 SCL classes, any shape (resampled with nearest only).

    Returns:
        ``{flag: bool array}`` for every flag in :data:`QA_FLAGS`, each with the dims of ``scl``:
        nodata = class 0, saturated = 1, shadow = 3, cloud = 8 or 9, cirrus = 10, snow = 11;
        haze is never set (SCL has no haze class).
    """
    values = np.asarray(scl)
    return {
        "nodata": values == 0,
        "saturated": values == 1,
        "cloud": np.isin(values, (8, 9)),
        "shadow": values == 3,
        "cirrus": values == 10,
        "snow": values == SCL_SNOW,
        "haze": _false_like(values.shape),
    }


def scl_invalid(scl: npt.ArrayLike, *, mask_snow: bool = False) -> BoolArray:
    """Invalid pixels of a Sentinel-2 SCL array: classes {0, 1, 3, 8, 9, 10} (+ 11 on request).

    Args:
        scl: uint8 SCL classes, any shape.
        mask_snow: Also mask class 11 (snow/ice).

    Returns:
        Bool array with the dims of ``scl``; True = invalid.
    """
    classes = set(SCL_DEFAULT_INVALID)
    if mask_snow:
        classes.add(SCL_SNOW)
    return np.isin(np.asarray(scl), sorted(classes))


# --------------------------------------------------------------------------------------------
# Landsat Collection 2 QA_PIXEL / QA_RADSAT
# --------------------------------------------------------------------------------------------


class LandsatQABit(StrEnum):
    """Single-bit flags of Landsat C2 QA_PIXEL (bit 0 = LSB); the value is the flag name."""

    FILL = "fill"
    DILATED_CLOUD = "dilated_cloud"
    CIRRUS = "cirrus"
    CLOUD = "cloud"
    CLOUD_SHADOW = "cloud_shadow"
    SNOW = "snow"
    CLEAR = "clear"
    WATER = "water"

    @property
    def bit(self) -> int:
        """Bit position in QA_PIXEL."""
        return list(LandsatQABit).index(self)


#: QA_PIXEL bits 0-4 (fill, dilated cloud, cirrus, cloud, cloud shadow): any set = invalid.
LANDSAT_QA_INVALID_BITS = 0b11111
#: QA_PIXEL bit 5: snow/ice.
LANDSAT_QA_SNOW_BIT = 5

#: Two-bit confidence fields of QA_PIXEL: name -> first bit.
_LANDSAT_CONFIDENCE_FIELDS: dict[str, int] = {
    "cloud_confidence": 8,
    "cloud_shadow_confidence": 10,
    "snow_confidence": 12,
    "cirrus_confidence": 14,
}


def landsat_qa_bits(qa_pixel: npt.ArrayLike) -> dict[str, npt.NDArray[Any]]:
    """Unpack every field of Landsat C2 QA_PIXEL.

    Args:
        qa_pixel: uint16 QA_PIXEL, any shape.

    Returns:
        ``{name: array}`` with the dims of ``qa_pixel``: bool arrays for each
        :class:`LandsatQABit` name and uint8 arrays (0 none, 1 low, 2 medium/reserved, 3 high)
        for ``cloud_confidence``, ``cloud_shadow_confidence``, ``snow_confidence``,
        ``cirrus_confidence``.
    """
    values = np.asarray(qa_pixel).astype(np.uint16, copy=False)
    fields: dict[str, npt.NDArray[Any]] = {
        flag.value: ((values >> flag.bit) & 1).astype(np.bool_) for flag in LandsatQABit
    }
    for name, first_bit in _LANDSAT_CONFIDENCE_FIELDS.items():
        fields[name] = ((values >> first_bit) & 0b11).astype(np.uint8)
    return fields


def landsat_qa_flags(
    qa_pixel: npt.ArrayLike, qa_radsat: npt.ArrayLike | None = None
) -> dict[str, BoolArray]:
    """Decode Landsat C2 QA_PIXEL (and QA_RADSAT) into the common flag planes.

    Args:
        qa_pixel: uint16 QA_PIXEL, any shape.
        qa_radsat: uint16 QA_RADSAT of the same shape, or None when not loaded.

    Returns:
        ``{flag: bool array}`` for every flag in :data:`QA_FLAGS`, dims of ``qa_pixel``:
        nodata = bit 0 (fill), cloud = bit 1 (dilated cloud) or bit 3, cirrus = bit 2,
        shadow = bit 4, snow = bit 5, saturated = QA_RADSAT != 0; haze is never set.
    """
    bits = landsat_qa_bits(qa_pixel)
    shape = bits["fill"].shape
    if qa_radsat is None:
        saturated = _false_like(shape)
    else:
        radsat = np.asarray(qa_radsat)
        if radsat.shape != shape:
            raise InvalidInputError(
                f"QA_RADSAT shape {radsat.shape} differs from QA_PIXEL shape {shape}",
                fix="load both layers on the same grid",
            )
        saturated = radsat != 0
    return {
        "nodata": bits["fill"],
        "saturated": saturated,
        "cloud": bits["dilated_cloud"] | bits["cloud"],
        "shadow": bits["cloud_shadow"],
        "cirrus": bits["cirrus"],
        "snow": bits["snow"],
        "haze": _false_like(shape),
    }


def landsat_qa_invalid(
    qa_pixel: npt.ArrayLike, qa_radsat: npt.ArrayLike | None = None, *, mask_snow: bool = False
) -> BoolArray:
    """Invalid pixels of Landsat C2 L2: ``(QA_PIXEL & 0b11111) != 0`` or ``QA_RADSAT != 0``.

    Args:
        qa_pixel: uint16 QA_PIXEL, any shape.
        qa_radsat: uint16 QA_RADSAT of the same shape, or None.
        mask_snow: Also mask bit 5 (snow/ice).

    Returns:
        Bool array with the dims of ``qa_pixel``; True = invalid.
    """
    values = np.asarray(qa_pixel).astype(np.uint16, copy=False)
    bits = LANDSAT_QA_INVALID_BITS | ((1 << LANDSAT_QA_SNOW_BIT) if mask_snow else 0)
    invalid: BoolArray = (values & bits) != 0
    if qa_radsat is not None:
        invalid = invalid | (np.asarray(qa_radsat) != 0)
    return invalid


# --------------------------------------------------------------------------------------------
# EnMAP L2A quality layers
# --------------------------------------------------------------------------------------------

#: QL_QUALITY_CIRRUS levels: 0 none, 1 thin, 2 medium, 3 thick; >= this is flagged as cirrus.
ENMAP_CIRRUS_MIN = 2


def enmap_flags(
    classes: npt.ArrayLike,
    cloud: npt.ArrayLike,
    cloud_shadow: npt.ArrayLike,
    cirrus: npt.ArrayLike,
    haze: npt.ArrayLike | None = None,
    snow: npt.ArrayLike | None = None,
    pixel_mask: npt.ArrayLike | None = None,
    *,
    cirrus_min: int = ENMAP_CIRRUS_MIN,
) -> dict[str, BoolArray]:
    """Decode EnMAP L2A quality layers into the common flag planes.

    Args:
        classes: uint8 QL_QUALITY_CLASSES (0 background/missing, 1 land, 2 water, 3 outside).
        cloud: uint8 QL_QUALITY_CLOUD (1 = cloud).
        cloud_shadow: uint8 QL_QUALITY_CLOUDSHADOW (1 = shadow).
        cirrus: uint8 QL_QUALITY_CIRRUS (0 none, 1 thin, 2 medium, 3 thick).
        haze: uint8 QL_QUALITY_HAZE (1 = haze), or None when not loaded.
        snow: uint8 QL_QUALITY_SNOW (1 = snow), or None when not loaded.
        pixel_mask: QL_PIXELMASK (non-zero = defective), either with the dims of ``classes`` or
            with a leading band axis (any defective band flags the pixel); None when not loaded.
        cirrus_min: Lowest cirrus level flagged as cirrus.

    Returns:
        ``{flag: bool array}`` for every flag in :data:`QA_FLAGS`, dims of ``classes``:
        nodata = classes 0 or 3, cloud = cloud 1, shadow = cloud_shadow 1,
        cirrus = cirrus >= ``cirrus_min``, haze/snow = 1, saturated = defective in
        ``pixel_mask`` (all False without it).
    """
    cls = np.asarray(classes)
    layers = {
        "QL_QUALITY_CLOUD": np.asarray(cloud),
        "QL_QUALITY_CLOUDSHADOW": np.asarray(cloud_shadow),
        "QL_QUALITY_CIRRUS": np.asarray(cirrus),
    }
    if haze is not None:
        layers["QL_QUALITY_HAZE"] = np.asarray(haze)
    if snow is not None:
        layers["QL_QUALITY_SNOW"] = np.asarray(snow)
    for name, layer in layers.items():
        if layer.shape != cls.shape:
            raise InvalidInputError(
                f"{name} shape {layer.shape} differs from QL_QUALITY_CLASSES shape {cls.shape}",
                fix="load all EnMAP quality layers on the same grid",
            )
    none = _false_like(cls.shape)
    saturated = none.copy()
    if pixel_mask is not None:
        defective = np.asarray(pixel_mask) != 0
        if defective.ndim == cls.ndim + 1:
            defective = defective.any(axis=0)
        if defective.shape != cls.shape:
            raise InvalidInputError(
                f"QL_PIXELMASK shape {np.shape(pixel_mask)} does not match QL_QUALITY_CLASSES "
                f"shape {cls.shape} (with or without a leading band axis)",
                fix="load all EnMAP quality layers on the same grid",
            )
        saturated = defective
    return {
        "nodata": (cls == 0) | (cls == 3),
        "saturated": saturated,
        "cloud": layers["QL_QUALITY_CLOUD"] == 1,
        "shadow": layers["QL_QUALITY_CLOUDSHADOW"] == 1,
        "cirrus": layers["QL_QUALITY_CIRRUS"] >= cirrus_min,
        "snow": layers["QL_QUALITY_SNOW"] == 1 if snow is not None else none.copy(),
        "haze": layers["QL_QUALITY_HAZE"] == 1 if haze is not None else none.copy(),
    }


def enmap_invalid(
    classes: npt.ArrayLike,
    cloud: npt.ArrayLike,
    cloud_shadow: npt.ArrayLike,
    cirrus: npt.ArrayLike,
    haze: npt.ArrayLike | None = None,
    snow: npt.ArrayLike | None = None,
    *,
    mask_haze: bool = False,
    mask_snow: bool = False,
) -> BoolArray:
    """Invalid EnMAP pixels: CLASSES == 0 (or 3) or CLOUD or CLOUDSHADOW or CIRRUS >= 2.

    Args:
        classes: uint8 QL_QUALITY_CLASSES.
        cloud: uint8 QL_QUALITY_CLOUD.
        cloud_shadow: uint8 QL_QUALITY_CLOUDSHADOW.
        cirrus: uint8 QL_QUALITY_CIRRUS.
        haze: uint8 QL_QUALITY_HAZE; required when ``mask_haze``.
        snow: uint8 QL_QUALITY_SNOW; required when ``mask_snow``.
        mask_haze: Also mask haze.
        mask_snow: Also mask snow.

    Returns:
        Bool array with the dims of ``classes``; True = invalid.
    """
    if mask_haze and haze is None:
        raise InvalidInputError("mask_haze needs the QL_QUALITY_HAZE layer", fix="load it")
    if mask_snow and snow is None:
        raise InvalidInputError("mask_snow needs the QL_QUALITY_SNOW layer", fix="load it")
    flags = enmap_flags(classes, cloud, cloud_shadow, cirrus, haze, snow)
    return invalid_from_flags(flags, mask_snow=mask_snow, mask_haze=mask_haze)


# --------------------------------------------------------------------------------------------
# Generic entry points
# --------------------------------------------------------------------------------------------


def invalid_from_flags(
    flags: Mapping[str, BoolArray],
    *,
    mask_snow: bool = False,
    mask_haze: bool = False,
    invalid_flags: Iterable[str] = DEFAULT_INVALID_FLAGS,
) -> BoolArray:
    """Combine flag planes into one invalid mask.

    Args:
        flags: Output of a ``*_flags`` decoder.
        mask_snow: Add the ``snow`` flag.
        mask_haze: Add the ``haze`` flag.
        invalid_flags: Flags that are always invalid (a profile's ``MaskSpec.invalid_flags``).

    Returns:
        Bool array with the dims of the flag planes; True = invalid.
    """
    names = set(invalid_flags)
    if mask_snow:
        names.add("snow")
    if mask_haze:
        names.add("haze")
    unknown = names - set(flags)
    if unknown:
        raise InvalidInputError(
            f"flags {sorted(unknown)} are not among the decoded planes {sorted(flags)}",
            fix=f"use flags from {list(QA_FLAGS)}",
        )
    planes = [np.asarray(flags[name], dtype=np.bool_) for name in sorted(names)]
    if not planes:
        raise InvalidInputError("no flags selected for the invalid mask")
    out: BoolArray = np.logical_or.reduce(planes).astype(np.bool_, copy=False)
    return out


def decode_flags(spec: MaskSpec, layers: Mapping[str, npt.ArrayLike]) -> dict[str, BoolArray]:
    """Decode a sensor's quality layers, keyed by canonical band name, per its mask spec.

    Args:
        spec: The profile's :class:`MaskSpec`.
        layers: ``{canonical band name: array}``; must hold the spec's first band and, for
            Landsat, may hold ``QA_RADSAT``; for EnMAP the haze, snow and QL_PIXELMASK layers
            are optional.

    Returns:
        ``{flag: bool array}`` for every flag in :data:`QA_FLAGS`.

    Raises:
        InvalidInputError: A required layer is missing, or the spec has no quality layer
            (:attr:`MaskKind.NODATA`: derive validity from the data's nodata instead).
    """

    def need(name: str) -> npt.ArrayLike:
        if name not in layers:
            raise InvalidInputError(
                f"quality layer {name!r} is missing for a {spec.kind.value} mask",
                fix=f"load the layers {list(spec.bands)}",
            )
        return layers[name]

    if spec.kind is MaskKind.SCL:
        return scl_flags(need("SCL"))
    if spec.kind is MaskKind.LANDSAT_QA:
        return landsat_qa_flags(need("QA_PIXEL"), layers.get("QA_RADSAT"))
    if spec.kind is MaskKind.ENMAP_QUALITY:
        return enmap_flags(
            need("QL_QUALITY_CLASSES"),
            need("QL_QUALITY_CLOUD"),
            need("QL_QUALITY_CLOUDSHADOW"),
            need("QL_QUALITY_CIRRUS"),
            layers.get("QL_QUALITY_HAZE"),
            layers.get("QL_QUALITY_SNOW"),
            layers.get("QL_PIXELMASK"),
        )
    raise InvalidInputError(
        f"a {spec.kind.value} mask has no quality layer to decode",
        fix="mask the data's own nodata value instead",
    )
