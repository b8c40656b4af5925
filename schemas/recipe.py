"""The recipe: one YAML file that describes a dataset, validated before any I/O.

A recipe names an area, a time range cut into periods, sensors (each from a STAC API or a local
offline archive), a tile grid, label sources, a train/val/test split, the output cube and where
the build runs. :func:`load_recipe` reads it with a safe YAML loader and validates it; a bad recipe
raises :class:`RecipeError` (an :class:`~schemas.errors.InvalidInputError`) whose message names
the file, the field path (``sensors[1].resolution``), the reason and a fix.

Paths in a recipe (``archive:PATH`` catalogs, ``aoi.path``, label ``path``, ``output.path``) are
kept as written. Relative ones are taken from the current directory by whatever opens them;
:meth:`Recipe.resolve_paths` makes them absolute against a chosen directory instead (e.g. the
recipe file's directory).

The JSON Schema of the models is committed as ``schemas/json/recipe.schema.json`` (for editors);
regenerate it with ``eoforge recipe schema --output schemas/json/recipe.schema.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from schemas.errors import InvalidInputError
from schemas.recipe_aoi import Aoi, MultiPolygonGeometry, PolygonGeometry
from schemas.recipe_common import RECIPE_ERROR, RecipeModel
from schemas.recipe_io import (
    MAX_RECIPE_BYTES,
    RecipeError,
    RecipeProblem,
    load_yaml,
    problems_from_validation,
)
from schemas.recipe_labels import (
    CorineLabels,
    CorineRasterCoding,
    LabelSource,
    Nomenclature,
    OsmClassRule,
    OsmLabels,
    VectorLabels,
)
from schemas.recipe_parts import (
    Codec,
    ExecutionConfig,
    GridConfig,
    OutputConfig,
    SplitConfig,
    SplitFractions,
    SplitMethod,
)
from schemas.recipe_sensors import (
    NATIVE_RESOLUTION_M,
    OPTICAL_SENSORS,
    MaskRules,
    SensorConfig,
    TemporalConfig,
    TemporalMode,
)
from schemas.recipe_time import CustomPeriod, Period, PeriodMode, TimeRange

__all__ = [
    "NATIVE_RESOLUTION_M",
    "SCHEMA_PATH",
    "Aoi",
    "Codec",
    "CorineLabels",
    "CorineRasterCoding",
    "CustomPeriod",
    "ExecutionConfig",
    "GridConfig",
    "LabelSource",
    "MaskRules",
    "MultiPolygonGeometry",
    "Nomenclature",
    "OsmClassRule",
    "OsmLabels",
    "OutputConfig",
    "Period",
    "PeriodMode",
    "PolygonGeometry",
    "Recipe",
    "RecipeError",
    "RecipeProblem",
    "SensorConfig",
    "SplitConfig",
    "SplitFractions",
    "SplitMethod",
    "TemporalConfig",
    "TemporalMode",
    "TimeRange",
    "VectorLabels",
    "load_recipe",
    "parse_recipe",
    "recipe_from_data",
    "recipe_json_schema",
    "recipe_json_schema_text",
]

#: The committed JSON Schema of :class:`Recipe`.
SCHEMA_PATH = Path(__file__).parent / "json" / "recipe.schema.json"

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class Recipe(RecipeModel):
    """A dataset recipe: area, time, sensors, grid, labels, split, output and execution."""

    name: str = Field(
        pattern=_NAME_PATTERN,
        description="Dataset name: letters, digits, '.', '_' or '-', e.g. bavaria-forest-2024.",
    )
    description: str = Field(default="", description="Free text for the dataset card.")
    aoi: Aoi = Field(description="Area of interest.")
    time: TimeRange = Field(description="Time range and how it is cut into periods.")
    sensors: list[SensorConfig] = Field(
        min_length=1, description="Sensors to load, each at most once."
    )
    grid: GridConfig = Field(default_factory=GridConfig, description="The shared tile grid.")
    labels: list[LabelSource] = Field(
        default_factory=list, description="Label sources burned into every tile (may be empty)."
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Train/val/test assignment of tiles."
    )
    output: OutputConfig = Field(description="Where and how the cube is written.")
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig, description="Where the build runs (Dask)."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_reference(cls, data: Any) -> Any:
        """Mark the first optical sensor as reference when none is, and keep it in place.

        Runs on the raw input so the validated sensors carry concrete ``reference`` and
        ``coregister`` values; malformed input is passed on untouched for pydantic to report.
        """
        if not isinstance(data, Mapping):
            return data
        sensors = data.get("sensors")
        if not isinstance(sensors, list) or not all(isinstance(s, Mapping) for s in sensors):
            return data
        sensors = [dict(s) for s in sensors]
        if not any(s.get("reference") is True for s in sensors):
            open_ = [i for i, s in enumerate(sensors) if "reference" not in s]
            optical = [i for i in open_ if sensors[i].get("id") in OPTICAL_SENSORS]
            if optical or open_:
                sensors[(optical or open_)[0]]["reference"] = True
        for sensor in sensors:
            if sensor.get("reference") is True:
                sensor.setdefault("coregister", False)
        return {**data, "sensors": sensors}

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = [*self._sensor_problems(), *self._label_problems()]
        problems.extend(
            (f"split.{field}", reason, fix)
            for field, reason, fix in self.split.grid_problems(self.grid.tile_size)
        )
        if not problems:  # the size guard only once the grid itself is valid
            problems.extend(self._size_problems())
        if problems:
            path, reason, fix = problems[0]
            raise PydanticCustomError(
                RECIPE_ERROR,
                "{reason}",
                {"reason": reason, "path": path, "fix": fix, "more": tuple(problems[1:])},
            )
        return self

    def _size_problems(self) -> list[tuple[str, str, str | None]]:
        """The AOI size guard: tiles estimated from the AOI's geodesic area (no I/O)."""
        aoi = self.aoi.to_shape()
        if aoi is None:  # a vector file: the planner checks it once it is read
            return []
        from pyproj import Geod

        area_m2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(aoi)[0])
        estimate = math.ceil(area_m2 / float(self.grid.tile_size) ** 2)
        if estimate <= self.grid.max_tiles:
            return []
        return [
            (
                "aoi",
                f"the AOI covers about {estimate:,} tiles of {self.grid.tile_size} m "
                f"({area_m2 / 1e6:,.0f} km2), more than grid.max_tiles ({self.grid.max_tiles:,})",
                f"use a smaller AOI or larger tiles, or set grid.max_tiles: {estimate} to build "
                "it on purpose",
            )
        ]

    def _sensor_problems(self) -> list[tuple[str, str, str | None]]:
        problems: list[tuple[str, str, str | None]] = []
        tile = self.grid.tile_size
        first: dict[str, int] = {}
        for i, sensor in enumerate(self.sensors):
            if sensor.id in first:
                problems.append(
                    (
                        f"sensors[{i}].id",
                        f"sensor '{sensor.id}' is listed twice (also sensors[{first[sensor.id]}])",
                        "list each sensor once (the cube has one group per sensor)",
                    )
                )
            first.setdefault(sensor.id, i)
            ratio = tile / sensor.resolution
            if ratio < 1 or abs(ratio - round(ratio)) > 1e-9 * ratio:
                problems.append(
                    (
                        f"sensors[{i}].resolution",
                        f"{sensor.resolution:g} m does not divide grid.tile_size {tile} m",
                        "choose a resolution that divides the tile size, or a tile size that is "
                        "a multiple of every resolution",
                    )
                )
            if sensor.reference and sensor.coregister:
                problems.append(
                    (
                        f"sensors[{i}].coregister",
                        "the reference sensor is what the others are aligned to; it cannot be "
                        "co-registered itself",
                        "set coregister: false, or make another sensor the reference",
                    )
                )
        refs = [i for i, s in enumerate(self.sensors) if s.reference]
        if len(refs) != 1:
            listed = ", ".join(f"sensors[{i}]" for i in refs) or "none"
            problems.append(
                (
                    "sensors",
                    f"exactly one sensor must be the reference, found {len(refs)} ({listed})",
                    "set reference: true on one sensor only",
                )
            )
        return problems

    def _label_problems(self) -> list[tuple[str, str, str | None]]:
        problems: list[tuple[str, str, str | None]] = []
        first: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            if label.name in first:
                problems.append(
                    (
                        f"labels[{i}].name",
                        f"label name '{label.name}' is used twice "
                        f"(also labels[{first[label.name]}])",
                        "give each label source a distinct name",
                    )
                )
            first.setdefault(label.name, i)
        resolutions = {label.resolution for label in self.labels}
        if len(resolutions) > 1:
            problems.append(
                (
                    "labels",
                    "label sources have different resolutions "
                    f"{sorted(str(r) for r in resolutions)} (they share one pixel grid)",
                    "give every label source the same resolution, or none",
                )
            )
        for i, label in enumerate(self.labels):
            if label.resolution is not None and self.grid.tile_size % label.resolution > 1e-9:
                problems.append(
                    (
                        f"labels[{i}].resolution",
                        f"{label.resolution:g} m does not divide the tile size "
                        f"{self.grid.tile_size} m",
                        "choose a resolution that divides grid.tile_size",
                    )
                )
        return problems

    @property
    def reference_sensor(self) -> SensorConfig:
        """The co-registration reference (exactly one sensor has ``reference: true``)."""
        return next(s for s in self.sensors if s.reference)

    def periods(self) -> list[Period]:
        """The periods of the time range, in order; each is ``[start, end)`` in UTC."""
        return self.time.to_periods()

    def resolve_paths(self, base: str | os.PathLike[str]) -> Recipe:
        """A copy with every relative local path made absolute against ``base``.

        Affects ``archive:PATH`` catalogs, ``aoi.path``, label ``path`` and ``output.path``;
        URLs and absolute paths are left as they are. No file is touched.

        Args:
            base: Directory the relative paths are taken from, e.g. the recipe file's directory.

        Returns:
            The new recipe (recipes are immutable).
        """
        root = Path(base)
        return self.model_copy(
            update={
                "aoi": self.aoi.with_resolved_paths(root),
                "sensors": [s.with_resolved_paths(root) for s in self.sensors],
                "labels": [label.with_resolved_paths(root) for label in self.labels],
                "output": self.output.with_resolved_paths(root),
            }
        )

    def digest(self) -> str:
        """SHA-256 of the recipe's canonical JSON (defaults filled in), for provenance."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def recipe_from_data(data: Mapping[str, Any], source: str = "<data>") -> Recipe:
    """Validate an already parsed recipe mapping (e.g. a flow parameter).

    Args:
        data: The recipe as nested mappings and lists.
        source: Name used in error messages.

    Returns:
        The validated recipe.

    Raises:
        RecipeError: When the recipe is not valid; one problem per offending field.
    """
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, problems_from_validation(exc, data, _VOCABULARY)) from None


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Parse and validate recipe YAML.

    Args:
        text: The YAML text.
        source: Name used in error messages (the file name when there is one).

    Returns:
        The validated recipe.

    Raises:
        RecipeError: YAML that cannot be read, or a recipe that is not valid.
    """
    return recipe_from_data(load_yaml(text, source), source)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file (safe YAML; recipes are data, never code).

    Args:
        path: The recipe file.

    Returns:
        The validated recipe; relative paths in it are kept as written (see
        :meth:`Recipe.resolve_paths`).

    Raises:
        InvalidInputError: The file is missing or unreadable (:class:`RecipeError` when its
            content is not a valid recipe).
    """
    source = os.fspath(path)
    try:
        if Path(source).stat().st_size > MAX_RECIPE_BYTES:
            raise InvalidInputError(
                f"the file is larger than {MAX_RECIPE_BYTES} bytes; recipes are small",
                source,
                "name the recipe file, not a data file",
            )
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(
            "recipe file not found", source, "check the path and the current directory"
        ) from None
    except IsADirectoryError:
        raise InvalidInputError(
            "this is a directory, not a recipe file", source, "name a .yaml file"
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", source, "save it as UTF-8"
        ) from None
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read the recipe: {exc.strerror}", source, "check the file's permissions"
        ) from None
    return parse_recipe(text, source)


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a recipe, as editors and ``jsonschema`` use it."""
    schema = Recipe.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "eoforge recipe",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def recipe_json_schema_text() -> str:
    """:func:`recipe_json_schema` as the exact text of ``schemas/json/recipe.schema.json``."""
    return json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False) + "\n"


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """Every field name of ``model`` and of the models nested in it."""
    seen = set() if seen is None else seen
    seen.add(model)
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(name)
        stack: list[Any] = [info.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if tp not in seen:
                    names |= _field_names(tp, seen)
            else:
                stack.extend(get_args(tp))
    return names


_VOCABULARY = frozenset(_field_names(Recipe))
