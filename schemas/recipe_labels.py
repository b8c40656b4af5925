"""Label sources of a recipe: CORINE polygons, OSM features, or any vector file with a class field.

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.

Every source becomes ``labels/<name>`` in the cube: a per-pixel class index (uint8) rasterised per
tile at the label resolution (default: the finest sensor resolution), 255 = no data (outside the
source). Index 0 is ``UNLABELED`` for CORINE (code 999, or a code the nomenclature drops) and
``background`` (no feature) for OSM and generic vector files. Per tile the build also stores the
class fractions, the multi-labels (classes above ``multilabel_threshold``) and the unlabeled
fraction; tiles above ``max_unlabeled`` are flagged.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from schemas.recipe_common import RecipeModel, fail, resolve_local

__all__ = [
    "CorineLabels",
    "CorineRasterCoding",
    "LabelSource",
    "Nomenclature",
    "OsmClassRule",
    "OsmLabels",
    "VectorLabels",
]

_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
_TAG_PATTERN = r"^[A-Za-z0-9_:.-]+=(\*|[^=*][^=]*)$"
#: Class indices 1..254 are free (0 = background, 255 = unknown).
_MAX_CLASSES = 254


class Nomenclature(StrEnum):
    """Class scheme CORINE codes are mapped to."""

    CLC44 = "clc44"
    """The 44 CORINE level-3 classes (index = GRID_CODE 1..44; 0 = UNLABELED, e.g. code 999)."""
    BIGEARTHNET19 = "bigearthnet19"
    """The 19 BigEarthNet classes; codes reBEN drops (122, 131, 999...) become UNLABELED (0)."""


def _default_name(data: dict[str, Any]) -> str:
    kind = data.get("kind")
    return kind if isinstance(kind, str) else "labels"


class _VectorSource(RecipeModel):
    """Fields every label source has."""

    kind: str = Field(description="Kind of source; each subclass narrows it to one value.")
    name: str = Field(
        default_factory=_default_name,
        pattern=_NAME_PATTERN,
        description="Name in the cube (labels/<name>); default: the kind. Must be unique.",
    )
    path: str = Field(
        min_length=1,
        description=(
            "Vector file or URL. A relative path is taken from the current directory "
            "(see Recipe.resolve_paths)."
        ),
    )
    layer: str | None = Field(
        default=None, min_length=1, description="Layer to read (default: the first)."
    )
    all_touched: bool = Field(
        default=False,
        description=(
            "Burn every pixel a feature touches; default false burns pixels whose centre is "
            "inside (as CORINE rasters and BigEarthNet do)."
        ),
    )
    resolution: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Label pixel size in metres; must divide grid.tile_size. Default: the finest sensor "
            "resolution. All label sources of a recipe share one resolution."
        ),
    )
    multilabel_threshold: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description=(
            "A class is in a tile's multi-labels when its share of the tile's labelled pixels "
            "is above this (0: present at any pixel, as BigEarthNet)."
        ),
    )
    max_unlabeled: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "Flag tiles whose unlabeled + no-data share reaches this (reBEN dropped >= 0.25); "
            "flagged tiles stay in the cube and are marked in the catalog. Default: no flag."
        ),
    )

    def with_resolved_paths(self, base: Path) -> Self:
        """This source with a relative ``path`` made absolute against ``base``."""
        return self.model_copy(update={"path": resolve_local(self.path, base)})


class CorineRasterCoding(StrEnum):
    """How a CLC raster encodes classes."""

    AUTO = "auto"
    """Decide from the raster's value range (3-digit codes if any value is above 100)."""
    GRID_CODE = "grid_code"
    """Values 1..44 are the level-3 codes in ascending order, 48 = no data (CLC2018 V2020)."""
    CODE = "code"
    """Values are the 3-digit codes, 999 = no data (older v20 rasters)."""


class CorineLabels(_VectorSource):
    """CORINE Land Cover: polygons with a 3-digit code attribute, or the CLC raster (.tif)."""

    kind: Literal["corine"] = Field(description="CORINE Land Cover polygons or raster.")
    code_field: str = Field(
        default="Code_18",
        min_length=1,
        description="Attribute holding the 3-digit CLC code (vector files only).",
    )
    raster_coding: CorineRasterCoding = Field(
        default=CorineRasterCoding.AUTO,
        description="Value coding of a CLC raster (.tif/.tiff paths only): auto, grid_code, code.",
    )
    nomenclature: Nomenclature = Field(
        default=Nomenclature.CLC44,
        description="Class scheme: clc44 (CORINE level 3) or bigearthnet19.",
    )


class OsmClassRule(RecipeModel):
    """One OSM class: the features whose tags match any selector."""

    name: str = Field(pattern=_NAME_PATTERN, description="Class name, e.g. building.")
    tags: list[Annotated[str, Field(pattern=_TAG_PATTERN)]] = Field(
        min_length=1,
        description=(
            "Tag selectors, 'key=value', 'key=v1|v2' or 'key=*', e.g. ['building=*']; a "
            "feature matching any selector is in the class."
        ),
    )
    width: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description=(
            "Line features (roads, rivers) are buffered to this total width in metres before "
            "burning; a feature's own numeric 'width' tag wins. Default: lines are not "
            "buffered (burnt one pixel wide, all_touched)."
        ),
    )


class OsmLabels(_VectorSource):
    """OpenStreetMap features (.osm, .osm.pbf or a converted vector file) mapped to classes."""

    kind: Literal["osm"] = Field(description="OpenStreetMap features.")
    classes: list[OsmClassRule] | None = Field(
        default=None,
        description=(
            "Classes in burn order, the priority for overlaps (later ones win; class index = "
            "position + 1, 0 = background). Default: eoforge's scheme (vegetation, water, "
            "roads, railways, buildings; see pipelines.labels.osm.DEFAULT_CLASSES)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.classes is not None:
            _check_names([c.name for c in self.classes], "classes", ".name")
        return self


class VectorLabels(_VectorSource):
    """Any vector file whose features carry a class attribute."""

    kind: Literal["vector"] = Field(description="A generic vector file.")
    class_field: str = Field(min_length=1, description="Attribute holding the class.")
    class_names: list[str] | None = Field(
        default=None,
        description=(
            "Attribute values in class order (index = position + 1). Default: the attribute "
            "holds the class index itself (1..254)."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.class_names is not None:
            _check_names(self.class_names, "class_names", "")
        return self


def _check_names(names: list[str], field: str, suffix: str) -> None:
    if not names:
        fail("the list is empty", field, "list at least one class or remove the field")
    if len(names) > _MAX_CLASSES:
        fail(f"{len(names)} classes; at most {_MAX_CLASSES} fit in uint8 labels", field)
    for i, name in enumerate(names):
        if name in names[:i]:
            fail(f"class '{name}' is listed twice", f"{field}[{i}]{suffix}", "list it once")


#: One entry of ``labels``, told apart by ``kind``.
LabelSource = Annotated[CorineLabels | OsmLabels | VectorLabels, Field(discriminator="kind")]
