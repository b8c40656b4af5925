"""CORINE Land Cover level-3 and BigEarthNet-19 nomenclatures, and how CLC codes become classes.

Both tables ship inside the package (``pipelines/labels/data``, see its ``PROVENANCE.md``):

* ``clc_legend.csv``: the EEA CLC legend, 44 level-3 codes ``111`` ... ``523`` in ascending
  order; ``GRID_CODE`` (the value in CLC2018 V2020 rasters) = position + 1. Raster value
  :data:`CLC_GRID_NODATA` (48) is code :data:`CLC_NODATA_CODE` (999).
* ``ben19.json``: the reBEN (BigEarthNet v2.0) table mapping each code to one of the 19
  BigEarthNet classes or to ``UNLABELED`` (122, 123, 124, 131, 132, 133, 141, 142, 332, 334,
  335, 423 and 999).

Class indices in the cube (uint8; :data:`pipelines.labels.base.LABEL_NODATA` = 255 is "outside the
source", never a class):

* ``clc44``: 0 = ``UNLABELED`` (codes 999, 990 and 995), 1..44 = the level-3 classes in code
  order (index = GRID_CODE).
* ``bigearthnet19``: 0 = ``UNLABELED`` (the codes reBEN drops, and 990/995/999), 1..19 = the
  BigEarthNet-19 classes in BigEarthNet index order (index = BigEarthNet index + 1).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.errors import InvalidInputError
from schemas.recipe_labels import CorineRasterCoding, Nomenclature

__all__ = [
    "BEN19_NAMES",
    "CLC_CLASSES",
    "CLC_CODES",
    "CLC_GRID_NODATA",
    "CLC_NODATA_CODE",
    "CLC_NO_CLASS_CODES",
    "CLC_TO_BEN19",
    "LUT_INVALID",
    "UNLABELED",
    "UNLABELED_INDEX",
    "ClcClass",
    "class_names",
    "code_to_index",
    "normalize_code",
    "raster_lut",
]

#: Name of class index 0 in CORINE-derived label rasters.
UNLABELED = "UNLABELED"
#: Class index of :data:`UNLABELED`.
UNLABELED_INDEX = 0
#: The CLC vector code for "no data" (raster value 48 in GRID_CODE coding).
CLC_NODATA_CODE = "999"
#: Raster value of code 999 in GRID_CODE-coded CLC rasters (CLC2018 V2020).
CLC_GRID_NODATA = 48
#: Codes that are valid in CLC products but name no level-3 class: 999 no data, 990
#: "unclassified land surface", 995 "unclassified water bodies" (older products). All map to
#: :data:`UNLABELED`.
CLC_NO_CLASS_CODES: frozenset[str] = frozenset({"990", "995", CLC_NODATA_CODE})
#: Marker in :func:`raster_lut` tables: the raster value is not a value of that coding.
LUT_INVALID = -1

_DATA = files("pipelines.labels") / "data"


@dataclass(frozen=True, slots=True)
class ClcClass:
    """One CORINE Land Cover level-3 class (a row of the EEA legend).

    Attributes:
        grid_code: Raster value 1..44 in CLC2018 V2020 rasters (= position in code order + 1).
        code: 3-digit code as text, ``"111"`` ... ``"523"``.
        level1: Level-1 label, e.g. ``"Artificial surfaces"``.
        level2: Level-2 label, e.g. ``"Urban fabric"``.
        name: Level-3 label, e.g. ``"Continuous urban fabric"``.
        rgb: Official colour ``(r, g, b)``, 0..255.
    """

    grid_code: int
    code: str
    level1: str
    level2: str
    name: str
    rgb: tuple[int, int, int]


def _load_legend() -> tuple[ClcClass, ...]:
    text = (_DATA / "clc_legend.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=";"))
    out: list[ClcClass] = []
    for row in rows:
        r, g, b = (int(v) for v in row["RGB"].split("-"))
        out.append(
            ClcClass(
                int(row["GRID_CODE"]),
                row["CLC_CODE"].strip(),
                row["LABEL1"].strip(),
                row["LABEL2"].strip(),
                row["LABEL3"].strip(),
                (r, g, b),
            )
        )
    out.sort(key=lambda c: c.code)
    if [c.grid_code for c in out] != list(range(1, len(out) + 1)) or len(out) != 44:
        raise RuntimeError("packaged clc_legend.csv is not the 44-class CLC legend")
    return tuple(out)


def _load_ben19() -> tuple[tuple[str, ...], dict[str, str | None]]:
    doc: dict[str, Any] = json.loads((_DATA / "ben19.json").read_text(encoding="utf-8"))
    unlabeled = str(doc["unlabeled"])
    names = tuple(str(n) for n in doc["classes"])
    mapping: dict[str, str | None] = {}
    for code, name in doc["clc_to_ben19"].items():
        mapping[str(code)] = None if name == unlabeled else str(name)
    if len(names) != 19 or set(mapping.values()) - {None} != set(names):
        raise RuntimeError("packaged ben19.json is not the BigEarthNet-19 table")
    return names, mapping


#: The 44 CLC level-3 classes in code order (``CLC_CLASSES[i].grid_code == i + 1``).
CLC_CLASSES: tuple[ClcClass, ...] = _load_legend()
#: The 44 level-3 codes in ascending order (``"111"`` ... ``"523"``).
CLC_CODES: tuple[str, ...] = tuple(c.code for c in CLC_CLASSES)
_BEN = _load_ben19()
#: The 19 BigEarthNet class names in BigEarthNet index order (0..18).
BEN19_NAMES: tuple[str, ...] = _BEN[0]
#: CLC code -> BigEarthNet-19 name, ``None`` where reBEN has ``UNLABELED`` (includes ``"999"``).
CLC_TO_BEN19: dict[str, str | None] = _BEN[1]
if set(CLC_TO_BEN19) != {*CLC_CODES, CLC_NODATA_CODE}:  # pragma: no cover - data guard
    raise RuntimeError("packaged ben19.json does not list exactly the 44 CLC codes and 999")


def _nomenclature(value: Nomenclature | str) -> Nomenclature:
    try:
        return Nomenclature(value)
    except ValueError:
        raise InvalidInputError(
            f"unknown nomenclature {value!r}",
            fix=f"use one of {', '.join(n.value for n in Nomenclature)}",
        ) from None


def class_names(nomenclature: Nomenclature | str) -> tuple[str, ...]:
    """Class names of a nomenclature; label value ``i`` is ``class_names(n)[i]``.

    Args:
        nomenclature: ``clc44`` or ``bigearthnet19``.

    Returns:
        ``("UNLABELED", <44 level-3 names in code order>)`` (45 names) or
        ``("UNLABELED", <19 BigEarthNet names in index order>)`` (20 names).

    Raises:
        InvalidInputError: Unknown nomenclature.
    """
    nom = _nomenclature(nomenclature)
    if nom is Nomenclature.CLC44:
        return (UNLABELED, *(c.name for c in CLC_CLASSES))
    return (UNLABELED, *BEN19_NAMES)


@cache
def _code_to_index(nom: Nomenclature) -> dict[str, int]:
    out = dict.fromkeys(sorted(CLC_NO_CLASS_CODES), UNLABELED_INDEX)
    if nom is Nomenclature.CLC44:
        out.update({c.code: c.grid_code for c in CLC_CLASSES})
    else:
        index = {name: i + 1 for i, name in enumerate(BEN19_NAMES)}
        for code in CLC_CODES:
            name = CLC_TO_BEN19[code]
            out[code] = UNLABELED_INDEX if name is None else index[name]
    return out


def code_to_index(nomenclature: Nomenclature | str) -> dict[str, int]:
    """Every valid CLC code -> class index in a nomenclature.

    Args:
        nomenclature: ``clc44`` or ``bigearthnet19``.

    Returns:
        A new dict with the 44 level-3 codes and the no-class codes 990, 995 and 999 (all
        3-digit text). ``clc44``: code -> GRID_CODE (1..44), no-class codes -> 0.
        ``bigearthnet19``: code -> BigEarthNet index + 1 (1..19), codes reBEN drops -> 0.

    Raises:
        InvalidInputError: Unknown nomenclature.
    """
    return dict(_code_to_index(_nomenclature(nomenclature)))


def normalize_code(value: object) -> str | None:
    """A code attribute value as 3-digit text, or ``None`` if it is not a valid CLC code.

    Accepts text (``"211"``, ``" 211 "``), integers and integral floats (``211``, ``211.0``).
    Valid codes are the 44 level-3 codes and 990, 995, 999.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int | np.integer):
        text = str(int(value))
    elif isinstance(value, float | np.floating):
        if not np.isfinite(value) or float(value) != int(value):
            return None
        text = str(int(value))
    else:
        return None
    return text if text in _code_to_index(Nomenclature.CLC44) else None


@cache
def _raster_lut(nom: Nomenclature, coding: CorineRasterCoding) -> npt.NDArray[np.int16]:
    codes = _code_to_index(nom)
    if coding is CorineRasterCoding.GRID_CODE:
        lut = np.full(256, LUT_INVALID, dtype=np.int16)
        for c in CLC_CLASSES:
            lut[c.grid_code] = codes[c.code]
        lut[CLC_GRID_NODATA] = UNLABELED_INDEX
    elif coding is CorineRasterCoding.CODE:
        lut = np.full(1000, LUT_INVALID, dtype=np.int16)
        for code, index in codes.items():
            lut[int(code)] = index
    else:
        raise InvalidInputError(
            f"raster coding {coding.value!r} has no fixed table",
            fix="decide between grid_code and code first",
        )
    lut.flags.writeable = False
    return lut


def raster_lut(
    nomenclature: Nomenclature | str, coding: CorineRasterCoding | str
) -> npt.NDArray[np.int16]:
    """Lookup table from CLC raster values to class indices.

    Args:
        nomenclature: ``clc44`` or ``bigearthnet19``.
        coding: ``grid_code`` (values 1..44, 48 = code 999) or ``code`` (3-digit codes, 999;
            990 and 995 are accepted too). ``auto`` is not a table: decide first.

    Returns:
        Read-only int16 array, dims ``(value,)``: 256 entries (grid_code) or 1000 (code).
        ``lut[v]`` is the class index of raster value ``v`` (0 = UNLABELED), or
        :data:`LUT_INVALID` (-1) when ``v`` is not a value of the coding. Values beyond the
        table are invalid too.

    Raises:
        InvalidInputError: Unknown nomenclature, or coding ``auto``.
    """
    return _raster_lut(_nomenclature(nomenclature), CorineRasterCoding(coding))
