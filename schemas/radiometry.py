"""Radiometric rules: digital numbers to physical units, as pure numpy functions.

Every rule here follows SENSORS.md (§2.2 Sentinel-2, §3.1 Landsat C2 L2, §4.2 Sentinel-1, §5.1
EnMAP). The functions take arrays of any shape and return float arrays of the same shape with
``NaN`` where the input was nodata; none of them clips negative reflectance (SENSORS.md §2.2:
negatives are real for dark targets after processing baseline 04.00).

Sentinel-2 branches on the *processing baseline* (``s2:processing_baseline`` or CDSE's
``processing:version``), never on the sensing date: Collection-1 reprocessing (PB 05.xx) of
pre-2022 acquisitions carries the offset too.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.errors import InvalidInputError

__all__ = [
    "DB_FLOOR",
    "ENMAP_DEFAULT_GAIN",
    "ENMAP_NODATA",
    "LANDSAT_SR_OFFSET",
    "LANDSAT_SR_SCALE",
    "LANDSAT_ST_OFFSET",
    "LANDSAT_ST_SCALE",
    "RTC_NODATA",
    "S2_BOA_ADD_OFFSET",
    "S2_OFFSET_BASELINE",
    "S2_QUANTIFICATION",
    "apply_scale_offset",
    "baseline_has_offset",
    "db",
    "enmap_gains_from_metadata",
    "enmap_reflectance",
    "landsat_sr",
    "landsat_st",
    "linear",
    "normalize_baseline",
    "rtc_to_db",
    "s2_reflectance",
    "s2_scale_offset",
]

#: ESA ``BOA_QUANTIFICATION_VALUE`` of Sentinel-2 L2A.
S2_QUANTIFICATION = 10000
#: ESA ``BOA_ADD_OFFSET`` (every band) from processing baseline 04.00 on.
S2_BOA_ADD_OFFSET = -1000
#: First processing baseline whose DN carry the ``BOA_ADD_OFFSET``.
S2_OFFSET_BASELINE = "04.00"
#: Baselines that sort at or above 04.00 but carry no offset: CloudFerro-generated products
#: (SENSORS.md §0 D4 and the CDSE baseline table).
_S2_BASELINES_WITHOUT_OFFSET = frozenset({"99.99"})

LANDSAT_SR_SCALE = 2.75e-5
LANDSAT_SR_OFFSET = -0.2
LANDSAT_ST_SCALE = 0.00341802
LANDSAT_ST_OFFSET = 149.0

#: Planetary Computer ``sentinel-1-rtc`` nodata (float32 gamma0 assets).
RTC_NODATA = -32768.0
#: Linear power values at or below zero are raised to this before the logarithm.
DB_FLOOR = 1e-6

#: EnMAP L2A int16 nodata and default gain (BOA reflectance x 10000).
ENMAP_NODATA = -32768
ENMAP_DEFAULT_GAIN = 1e-4

FloatArray = npt.NDArray[np.floating[Any]]

_BASELINE_DOTTED = re.compile(r"^(\d{1,2})(?:\.(\d{1,2}))?$")
_BASELINE_PRODUCT = re.compile(r"^N(\d{2})(\d{2})$")


def normalize_baseline(baseline: str | float) -> str:
    """Normalise a Sentinel-2 processing baseline to the zero-padded ``"NN.NN"`` form.

    Accepts the forms the providers use: ``"05.10"`` (ES, PC), ``"5.10"`` / ``"4.0"`` (CDSE
    ``processing:version``), ``"N0510"`` (product names) and numbers (``5.1``).

    Args:
        baseline: The baseline as found in an item.

    Returns:
        The baseline as ``"NN.NN"``, e.g. ``"05.10"``; two such strings compare like versions.

    Raises:
        InvalidInputError: The value is not a processing baseline.
    """
    if isinstance(baseline, bool):
        raise InvalidInputError(f"processing baseline {baseline!r} is not a version number")
    text = f"{float(baseline):.2f}" if isinstance(baseline, int | float) else str(baseline).strip()
    match = _BASELINE_DOTTED.match(text) or _BASELINE_PRODUCT.match(text)
    if match is None:
        raise InvalidInputError(
            f"processing baseline {baseline!r} is not of the form NN.NN",
            fix="pass the item's s2:processing_baseline or processing:version, e.g. '05.10'",
        )
    major, minor = match.group(1), match.group(2) or "00"
    return f"{int(major):02d}.{minor.ljust(2, '0')}"


def baseline_has_offset(baseline: str | float) -> bool:
    """Whether DN of this Sentinel-2 L2A baseline carry ``BOA_ADD_OFFSET = -1000``.

    A string compare of the normalised ``"NN.NN"`` form against ``"04.00"`` (as stactools
    ``offset_for_pb`` does); ``"99.99"`` (CloudFerro-generated, pre-offset processing) has none.

    Args:
        baseline: Processing baseline in any form :func:`normalize_baseline` accepts.

    Returns:
        True for PB >= 04.00 except 99.99.
    """
    pb = normalize_baseline(baseline)
    return pb >= S2_OFFSET_BASELINE and pb not in _S2_BASELINES_WITHOUT_OFFSET


def s2_scale_offset(baseline: str | float, *, offset_applied: bool = False) -> tuple[float, float]:
    """Scale and offset that turn Sentinel-2 L2A DN into BOA reflectance.

    Args:
        baseline: Processing baseline of the item.
        offset_applied: The provider already subtracted the 1000 DN shift from the pixels
            (Earth Search legacy ``earthsearch:boa_offset_applied``); then no offset remains.

    Returns:
        ``(1e-4, -0.1)`` for PB >= 04.00 with the shift still in the pixels, else ``(1e-4, 0.0)``.
    """
    scale = 1.0 / S2_QUANTIFICATION
    if baseline_has_offset(baseline) and not offset_applied:
        return scale, S2_BOA_ADD_OFFSET / S2_QUANTIFICATION
    return scale, 0.0


def apply_scale_offset(
    dn: npt.ArrayLike,
    scale: float,
    offset: float,
    nodata: float | None = None,
    *,
    dtype: npt.DTypeLike = np.float32,
) -> FloatArray:
    """Apply ``value = dn * scale + offset``, with nodata and NaN input mapped to NaN.

    Args:
        dn: Raw values, any shape and numeric dtype.
        scale: Multiplicative factor.
        offset: Additive offset (after scaling).
        nodata: Raw value that marks missing pixels, if any.
        dtype: Floating output dtype (computed in float64, then cast).

    Returns:
        Array with the dims of ``dn``, dtype ``dtype``, NaN where ``dn == nodata`` or NaN.
    """
    raw = np.asarray(dn)
    out = raw.astype(np.float64) * scale + offset
    if nodata is not None:
        out[raw == nodata] = np.nan
    return out.astype(dtype, copy=False)


def s2_reflectance(
    dn: npt.ArrayLike,
    baseline: str | float,
    *,
    offset_applied: bool = False,
    dtype: npt.DTypeLike = np.float32,
) -> FloatArray:
    """Sentinel-2 L2A DN to BOA reflectance: ``(DN + BOA_ADD_OFFSET) / 10000``.

    Computed with the integer offset and quantification value, so the SENSORS.md §11 test
    vectors hold exactly (DN 1000 at PB 04.00 is 0.0, DN 11000 at 05.10 is 1.0).

    Args:
        dn: uint16 DN, any shape.
        baseline: Processing baseline of the item.
        offset_applied: See :func:`s2_scale_offset`.
        dtype: Floating output dtype.

    Returns:
        Reflectance with the dims of ``dn``, dtype ``dtype``; NaN where ``dn == 0`` (nodata).
        Negative values are kept.
    """
    raw = np.asarray(dn)
    shift = 0 if offset_applied or not baseline_has_offset(baseline) else S2_BOA_ADD_OFFSET
    out = (raw.astype(np.float64) + shift) / S2_QUANTIFICATION
    out[raw == 0] = np.nan
    return out.astype(dtype, copy=False)


def landsat_sr(dn: npt.ArrayLike, *, dtype: npt.DTypeLike = np.float32) -> FloatArray:
    """Landsat C2 L2 surface reflectance: ``DN * 2.75e-5 - 0.2``.

    Args:
        dn: uint16 SR_B* DN, any shape.
        dtype: Floating output dtype.

    Returns:
        Reflectance with the dims of ``dn``, dtype ``dtype``; NaN where ``dn == 0`` (nodata).
    """
    return apply_scale_offset(dn, LANDSAT_SR_SCALE, LANDSAT_SR_OFFSET, 0, dtype=dtype)


def landsat_st(dn: npt.ArrayLike, *, dtype: npt.DTypeLike = np.float32) -> FloatArray:
    """Landsat C2 L2 surface temperature: ``DN * 0.00341802 + 149.0`` kelvin.

    Args:
        dn: uint16 ST_B10 (ST_B6 on TM/ETM+) DN, any shape.
        dtype: Floating output dtype.

    Returns:
        Temperature in K with the dims of ``dn``, dtype ``dtype``; NaN where ``dn == 0``.
    """
    return apply_scale_offset(dn, LANDSAT_ST_SCALE, LANDSAT_ST_OFFSET, 0, dtype=dtype)


def db(
    linear_power: npt.ArrayLike,
    *,
    floor: float = DB_FLOOR,
    dtype: npt.DTypeLike = np.float32,
) -> FloatArray:
    """Linear backscatter power to decibels: ``10 * log10(x)``.

    Values at or below zero are raised to ``floor`` first (so 0 becomes -60 dB with the default
    floor, never ``-inf``); NaN stays NaN. Average in linear power before calling this.

    Args:
        linear_power: gamma0/sigma0 in linear power units, any shape.
        floor: Smallest linear value passed to the logarithm.
        dtype: Floating output dtype.

    Returns:
        Backscatter in dB with the dims of the input, dtype ``dtype``; NaN where the input is NaN.
    """
    values = np.asarray(linear_power, dtype=np.float64)
    clipped = np.where(values <= 0, floor, values)
    return (10.0 * np.log10(clipped)).astype(dtype, copy=False)


def linear(decibels: npt.ArrayLike, *, dtype: npt.DTypeLike = np.float32) -> FloatArray:
    """Decibels to linear power: ``10 ** (dB / 10)``.

    Args:
        decibels: Backscatter in dB, any shape.
        dtype: Floating output dtype.

    Returns:
        Linear power with the dims of the input, dtype ``dtype``; NaN where the input is NaN.
    """
    values = np.asarray(decibels, dtype=np.float64)
    return np.power(10.0, values / 10.0).astype(dtype, copy=False)


def rtc_to_db(
    gamma0: npt.ArrayLike,
    *,
    nodata: float = RTC_NODATA,
    floor: float = DB_FLOOR,
    dtype: npt.DTypeLike = np.float32,
) -> FloatArray:
    """Planetary Computer RTC linear gamma0 to dB, nodata masked *before* the logarithm.

    Args:
        gamma0: float32 linear terrain-flattened gamma0, any shape.
        nodata: Value marking missing pixels (-32768 on PC).
        floor: See :func:`db`; values ``<= 0`` that are not nodata become ``10*log10(floor)``.
        dtype: Floating output dtype.

    Returns:
        gamma0 in dB with the dims of the input, dtype ``dtype``; NaN where input is nodata/NaN.
    """
    raw = np.asarray(gamma0)
    values = raw.astype(np.float64)
    values[raw == nodata] = np.nan
    return db(values, floor=floor, dtype=dtype)


def enmap_reflectance(
    dn: npt.ArrayLike,
    gain: float | npt.ArrayLike = ENMAP_DEFAULT_GAIN,
    offset: float | npt.ArrayLike = 0.0,
    *,
    nodata: int = ENMAP_NODATA,
    band_axis: int = 0,
    dtype: npt.DTypeLike = np.float32,
) -> FloatArray:
    """EnMAP L2A int16 DN to BOA reflectance: ``DN * gain + offset`` per band.

    Args:
        dn: int16 DN; either one band (any shape) with scalar gain/offset, or a stack whose
            ``band_axis`` matches the length of per-band ``gain``/``offset`` vectors.
        gain: ``GainOfBand`` (scalar or one per band); 1e-4 in current DLR products.
        offset: ``OffsetOfBand`` (scalar or one per band).
        nodata: Raw nodata value (-32768).
        band_axis: Axis of ``dn`` that indexes bands when gains are per band.
        dtype: Floating output dtype.

    Returns:
        Reflectance with the dims of ``dn``, dtype ``dtype``; NaN where ``dn == nodata``.
    """
    raw = np.asarray(dn)
    gains = np.asarray(gain, dtype=np.float64)
    offsets = np.asarray(offset, dtype=np.float64)
    if gains.ndim or offsets.ndim:
        shape = [1] * raw.ndim
        shape[band_axis] = -1
        gains = gains.reshape(shape) if gains.ndim else gains
        offsets = offsets.reshape(shape) if offsets.ndim else offsets
    out = raw.astype(np.float64) * gains + offsets
    out[raw == nodata] = np.nan
    return out.astype(dtype, copy=False)


def enmap_gains_from_metadata(xml_text: str) -> dict[int, tuple[float, float]]:
    """Per-band gain and offset from an EnMAP L2A ``METADATA.XML`` document.

    Reads ``specific/bandCharacterisation/bandID[@number]/GainOfBand`` and ``OffsetOfBand``
    (the layout EnMAP-Box and EnPT read). Pure: the caller reads the file.

    Args:
        xml_text: The XML document as text.

    Returns:
        ``{band_number (1-based): (gain, offset)}``.

    Raises:
        InvalidInputError: The document is not XML or has no band characterisation.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise InvalidInputError(
            f"EnMAP METADATA.XML is not valid XML ({exc})", fix="pass the file's text unchanged"
        ) from exc
    gains: dict[int, tuple[float, float]] = {}
    for element in root.iter("bandID"):
        number = element.get("number")
        gain = element.findtext("GainOfBand")
        offset = element.findtext("OffsetOfBand")
        if number is None or gain is None:
            continue
        gains[int(number)] = (float(gain), float(offset) if offset is not None else 0.0)
    if not gains:
        raise InvalidInputError(
            "EnMAP METADATA.XML has no specific/bandCharacterisation/bandID/GainOfBand entries",
            fix="pass an L2A METADATA.XML (not L0/L1 or HISTORY.XML)",
        )
    return gains
