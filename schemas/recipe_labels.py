"""Label sources of a recipe: CORINE polygons, OSM features, or any vector file with a class field.

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.

Every source becomes ``labels/<name>`` in the cube: a per-pixel class index where 0 is background
and 255 is "unknown / no data", rasterised on the finest sensor grid of the tile.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from schemas.recipe_common import RecipeModel, fail, resolve_local

__all__ = [
    "CorineLabels",
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
    """The 44 CORINE level-3 classes (index = position of the code in ascending order)."""
    BIGEARTHNET19 = "bigearthnet19"
    """The 19 BigEarthNet classes; codes outside them become unknown (255)."""


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

    def with_resolved_paths(self, base: Path) -> Self:
        """This source with a relative ``path`` made absolute against ``base``."""
        return self.model_copy(update={"path": resolve_local(self.path, base)})


class CorineLabels(_VectorSource):
    """CORINE Land Cover polygons with a 3-digit code attribute."""

    kind: Literal["corine"] = Field(description="CORINE Land Cover polygons.")
    code_field: str = Field(
        default="Code_18", min_length=1, description="Attribute holding the 3-digit CLC code."
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
        description="Tag selectors, 'key=value' or 'key=*', e.g. ['building=*'].",
    )


class OsmLabels(_VectorSource):
    """OpenStreetMap features (.osm, .osm.pbf or a converted vector file) mapped to classes."""

    kind: Literal["osm"] = Field(description="OpenStreetMap features.")
    classes: list[OsmClassRule] | None = Field(
        default=None,
        description=(
            "Classes in burn order (later ones win; class index = position + 1). Default: "
            "eoforge's scheme (water, vegetation, roads, railways, buildings)."
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
