"""The recipe's area of interest: a bounding box, a GeoJSON geometry or a vector file.

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.

Coordinates are WGS84 longitude/latitude in degrees. Areas that cross the antimeridian are not
supported (the UTM tile grid does not wrap); areas beyond the UTM latitude range are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import Field, model_validator

from schemas.recipe_common import RecipeModel, fail, resolve_local

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

__all__ = ["UTM_LATITUDE_RANGE", "Aoi", "MultiPolygonGeometry", "PolygonGeometry"]

#: Latitudes the UTM grid covers (south, north); polar areas would need UPS.
UTM_LATITUDE_RANGE = (-80.0, 84.0)

#: A GeoJSON position: [longitude, latitude] or [longitude, latitude, height].
Position = Annotated[list[float], Field(min_length=2, max_length=3)]


class PolygonGeometry(RecipeModel):
    """A GeoJSON Polygon in WGS84."""

    type: Literal["Polygon"] = Field(description="GeoJSON geometry type.")
    coordinates: list[list[Position]] = Field(
        min_length=1,
        description="Rings of [lon, lat] positions: the exterior ring first, then holes.",
    )


class MultiPolygonGeometry(RecipeModel):
    """A GeoJSON MultiPolygon in WGS84."""

    type: Literal["MultiPolygon"] = Field(description="GeoJSON geometry type.")
    coordinates: list[list[list[Position]]] = Field(
        min_length=1, description="Polygons, each a list of rings of [lon, lat] positions."
    )


class Aoi(RecipeModel):
    """Area of interest: exactly one of ``bbox``, ``geometry`` or ``path``."""

    bbox: tuple[float, float, float, float] | None = Field(
        default=None,
        description="[west, south, east, north] in degrees (WGS84), e.g. [11.0, 47.8, 12.6, 48.4].",
    )
    geometry: Annotated[PolygonGeometry | MultiPolygonGeometry, Field(discriminator="type")] | (
        None
    ) = Field(default=None, description="A GeoJSON Polygon or MultiPolygon in WGS84.")
    path: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Vector file (GeoPackage, GeoJSON, Shapefile, FlatGeobuf, ...) or its URL; the union "
            "of its features is the area. A relative path is taken from the current directory."
        ),
    )
    layer: str | None = Field(
        default=None, min_length=1, description="Layer to read from 'path' (default: the first)."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = [n for n in ("bbox", "geometry", "path") if getattr(self, n) is not None]
        if len(given) != 1:
            fail(
                "no area given" if not given else f"{' and '.join(given)} are both given",
                "",
                "give exactly one of aoi.bbox, aoi.geometry or aoi.path",
            )
        if self.layer is not None and self.path is None:
            fail("layer is only used with path", "layer", "remove aoi.layer or give aoi.path")
        if self.bbox is not None:
            _check_bbox(self.bbox)
        if self.geometry is not None:
            _check_geometry(self.geometry)
        return self

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(west, south, east, north) in degrees, or None when the area is a file (read later)."""
        if self.bbox is not None:
            return self.bbox
        shape = self.to_shape()
        if shape is None:
            return None
        west, south, east, north = shape.bounds
        return float(west), float(south), float(east), float(north)

    def to_shape(self) -> BaseGeometry | None:
        """The area as a shapely geometry in WGS84, or None when the area is a file."""
        from shapely.geometry import box, shape

        if self.bbox is not None:
            return box(*self.bbox)
        if self.geometry is not None:
            return shape(self.geometry.model_dump())
        return None

    def with_resolved_paths(self, base: Path) -> Aoi:
        """This AOI with a relative ``path`` made absolute against ``base``."""
        if self.path is None:
            return self
        return self.model_copy(update={"path": resolve_local(self.path, base)})


def _check_bbox(bbox: tuple[float, float, float, float]) -> None:
    west, south, east, north = bbox
    for value, name in ((west, "west"), (east, "east")):
        if not -180 <= value <= 180:
            fail(f"{name} {value} is not a longitude in -180..180", "bbox")
    for value, name in ((south, "south"), (north, "north")):
        if not -90 <= value <= 90:
            fail(
                f"{name} {value} is not a latitude in -90..90",
                "bbox",
                "write [west, south, east, north]",
            )
    if west > east:
        fail(
            f"west {west} > east {east}: the box crosses the antimeridian, which is not supported",
            "bbox",
            "split the area into two recipes, one on each side of 180°, or check the order "
            "[west, south, east, north]",
        )
    if west == east or south >= north:
        fail(
            f"the box {list(bbox)} is empty (width or height is zero or negative)",
            "bbox",
            "write [west, south, east, north] with west < east and south < north",
        )
    _check_utm_latitudes(south, north, "bbox")


def _check_geometry(geometry: PolygonGeometry | MultiPolygonGeometry) -> None:
    from shapely import GEOSException
    from shapely.geometry import shape
    from shapely.validation import explain_validity

    try:
        geom = shape(geometry.model_dump())
    except (ValueError, GEOSException) as exc:
        fail(f"not a valid {geometry.type}: {exc}", "geometry")
    if not geom.is_empty and not geom.is_valid:
        fail(
            f"the geometry is invalid: {explain_validity(geom)}",
            "geometry",
            "repair it (e.g. shapely make_valid or QGIS 'Fix geometries')",
        )
    if geom.is_empty or geom.area == 0:
        fail("the geometry is empty (zero area)", "geometry", "give a polygon with a non-zero area")
    west, south, east, north = geom.bounds
    if west < -180 or east > 180 or south < -90 or north > 90:
        fail("coordinates are outside -180..180 / -90..90", "geometry", "use [lon, lat] order")
    if east - west > 180:
        fail(
            f"the geometry spans {east - west:.1f}° of longitude, which means it crosses the "
            "antimeridian (not supported)",
            "geometry",
            "split the area into two recipes, one on each side of 180°",
        )
    _check_utm_latitudes(south, north, "geometry")


def _check_utm_latitudes(south: float, north: float, path: str) -> None:
    low, high = UTM_LATITUDE_RANGE
    if south < low or north > high:
        fail(
            f"latitudes {south}..{north} leave the UTM range {low}..{high} (polar areas are "
            "not supported)",
            path,
        )
