"""CLC level-3 and BigEarthNet-19 nomenclatures: packaged data vs the EEA legend and reBEN table."""

from __future__ import annotations

import csv
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from pipelines.labels.nomenclature import (
    BEN19_NAMES,
    CLC_CLASSES,
    CLC_CODES,
    CLC_GRID_NODATA,
    CLC_TO_BEN19,
    LUT_INVALID,
    UNLABELED,
    class_names,
    code_to_index,
    normalize_code,
    raster_lut,
)
from schemas.errors import InvalidInputError
from schemas.recipe_labels import CorineRasterCoding, Nomenclature

# SENSORS.md section 8.1 (BigEarthNet-MM 19-class table), typed in independently of the data.
BEN19_TABLE: list[tuple[str, list[str]]] = [
    ("Urban fabric", ["111", "112"]),
    ("Industrial or commercial units", ["121"]),
    ("Arable land", ["211", "212", "213"]),
    ("Permanent crops", ["221", "222", "223", "241"]),
    ("Pastures", ["231"]),
    ("Complex cultivation patterns", ["242"]),
    (
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
        ["243"],
    ),
    ("Agro-forestry areas", ["244"]),
    ("Broad-leaved forest", ["311"]),
    ("Coniferous forest", ["312"]),
    ("Mixed forest", ["313"]),
    ("Natural grassland and sparsely vegetated areas", ["321", "333"]),
    ("Moors, heathland and sclerophyllous vegetation", ["322", "323"]),
    ("Transitional woodland, shrub", ["324"]),
    ("Beaches, dunes, sands", ["331"]),
    ("Inland wetlands", ["411", "412"]),
    ("Coastal wetlands", ["421", "422"]),
    ("Inland waters", ["511", "512"]),
    ("Marine waters", ["521", "522", "523"]),
]
BEN19_DROPPED = [
    "122",
    "123",
    "124",
    "131",
    "132",
    "133",
    "141",
    "142",
    "332",
    "334",
    "335",
    "423",
    "999",
]
DATA = files("pipelines.labels") / "data"


# -- packaged copy (no ../shared needed) -------------------------------------------------------


def test_clc44_table_is_the_44_level3_codes_in_order() -> None:
    assert len(CLC_CODES) == 44
    assert list(CLC_CODES) == sorted(CLC_CODES)
    assert CLC_CODES[0] == "111" and CLC_CODES[-1] == "523"
    assert [c.grid_code for c in CLC_CLASSES] == list(range(1, 45))
    # SENSORS.md 7.1 spot checks: raster value -> code -> name.
    by_grid = {c.grid_code: c for c in CLC_CLASSES}
    assert (by_grid[12].code, by_grid[12].name) == ("211", "Non-irrigated arable land")
    assert (by_grid[34].code, by_grid[34].name) == ("335", "Glaciers and perpetual snow")
    assert (by_grid[44].code, by_grid[44].name) == ("523", "Sea and ocean")
    assert by_grid[1].rgb == (230, 0, 77)


def test_class_names_put_unlabeled_first() -> None:
    clc = class_names(Nomenclature.CLC44)
    assert len(clc) == 45 and clc[0] == UNLABELED
    assert clc[1:] == tuple(c.name for c in CLC_CLASSES)
    ben = class_names("bigearthnet19")
    assert ben == (UNLABELED, *(name for name, _ in BEN19_TABLE))
    assert tuple(name for name, _ in BEN19_TABLE) == BEN19_NAMES


def test_packaged_ben19_mapping_matches_sensors_table() -> None:
    expected: dict[str, str | None] = {code: name for name, codes in BEN19_TABLE for code in codes}
    expected |= dict.fromkeys(BEN19_DROPPED)
    assert expected == CLC_TO_BEN19
    index = code_to_index(Nomenclature.BIGEARTHNET19)
    for i, (_, codes) in enumerate(BEN19_TABLE):
        for code in codes:
            assert index[code] == i + 1
    for code in BEN19_DROPPED:
        assert index[code] == 0


def test_code_to_index_clc44_is_grid_code_and_no_class_codes_are_unlabeled() -> None:
    index = code_to_index("clc44")
    assert {k: v for k, v in index.items() if v} == {c.code: c.grid_code for c in CLC_CLASSES}
    assert index["999"] == index["990"] == index["995"] == 0
    index["111"] = 99  # a copy: the module's table stays intact
    assert code_to_index("clc44")["111"] == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("211", "211"),
        (" 211 ", "211"),
        (211, "211"),
        (np.int64(523), "523"),
        (211.0, "211"),
        ("999", "999"),
        (999, "999"),
        ("100", None),
        ("21", None),
        (211.5, None),
        (float("nan"), None),
        (None, None),
        (True, None),
        ("abc", None),
    ],
)
def test_normalize_code(value: object, expected: str | None) -> None:
    assert normalize_code(value) == expected


def test_raster_luts() -> None:
    grid = raster_lut(Nomenclature.CLC44, CorineRasterCoding.GRID_CODE)
    assert grid.shape == (256,) and not grid.flags.writeable
    assert grid[1:45].tolist() == list(range(1, 45))
    assert grid[CLC_GRID_NODATA] == 0
    assert grid[0] == grid[45] == grid[47] == grid[49] == grid[255] == LUT_INVALID
    code = raster_lut("clc44", "code")
    assert code.shape == (1000,)
    assert code[211] == 12 and code[523] == 44 and code[999] == 0
    assert code[12] == code[100] == code[998] == LUT_INVALID
    ben_grid = raster_lut("bigearthnet19", "grid_code")
    ben_code = raster_lut("bigearthnet19", "code")
    for c in CLC_CLASSES:  # both codings agree class by class
        assert ben_grid[c.grid_code] == ben_code[int(c.code)]
    assert ben_code[122] == 0 and ben_code[241] == 4 and ben_code[333] == 12


def test_unknown_nomenclature_and_auto_coding_raise() -> None:
    with pytest.raises(InvalidInputError, match="unknown nomenclature"):
        class_names("clc99")
    with pytest.raises(InvalidInputError, match="no fixed table"):
        raster_lut("clc44", "auto")


def test_provenance_note_ships_with_the_data() -> None:
    text = (DATA / "PROVENANCE.md").read_text(encoding="utf-8")
    assert "78551a68525fc26b15257b676f46c3c254be70cc" in text
    assert "44cf35ab84d1f11354e14b3839f988db6d4c3ac5" in text
    assert "MIT" in text and "European Environment Agency" in text


# -- against the ../shared originals -----------------------------------------------------------


def test_every_clc_code_maps_as_the_reben_table_says(shared_fixtures: Path) -> None:
    path = shared_fixtures / "vector/bigearthnet/bigearthnet-pipeline__clc_metadata.json"
    rows = json.loads(path.read_text(encoding="utf-8"))["clc_data"]
    reben = {str(r["code"]): str(r["name_19"]) for r in rows}
    assert set(reben) == {*CLC_CODES, "999"}
    ben_names = class_names(Nomenclature.BIGEARTHNET19)
    index = code_to_index(Nomenclature.BIGEARTHNET19)
    for code in CLC_CODES:
        name = reben[code]
        got = ben_names[index[code]]
        assert got == name, (code, got, name)  # UNLABELED <-> index 0 included
    assert index["999"] == 0 and reben["999"] == UNLABELED
    # The packaged names are in the table's own first-appearance order (BEN index order).
    first_seen = list(dict.fromkeys(n for n in reben.values() if n != UNLABELED))
    assert tuple(first_seen) == BEN19_NAMES


def test_every_eea_legend_code_is_in_clc44_at_its_grid_code(shared_fixtures: Path) -> None:
    path = shared_fixtures / "vector/corine/eea__clc_legend.csv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert len(rows) == 44
    index = code_to_index(Nomenclature.CLC44)
    names = class_names(Nomenclature.CLC44)
    for row in rows:
        code, grid = row["CLC_CODE"], int(row["GRID_CODE"])
        assert CLC_CODES.index(code) + 1 == grid  # GRID_CODE = position in ascending order
        assert index[code] == grid
        assert names[grid] == row["LABEL3"]
    # The packaged legend is a byte-for-byte copy.
    assert (DATA / "clc_legend.csv").read_bytes() == path.read_bytes()
