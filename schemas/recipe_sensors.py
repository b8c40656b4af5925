"""One entry of the recipe's ``sensors`` list: where to search, what to load, how to mask.

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

from pydantic import Field, ValidationInfo, field_validator, model_validator

from schemas.errors import InvalidInputError
from schemas.profiles import get_profile, has_profile
from schemas.recipe_common import RecipeModel, fail, resolve_local
from schemas.sensors import ARCHIVE_PREFIX, Provider, SensorId, provider_for_catalog

__all__ = [
    "NATIVE_RESOLUTION_M",
    "OPTICAL_SENSORS",
    "MaskRules",
    "SensorConfig",
    "TemporalConfig",
    "TemporalMode",
]

#: Default ``resolution`` per sensor: the native pixel size of its main bands, in metres.
NATIVE_RESOLUTION_M: dict[SensorId, float] = {
    SensorId.SENTINEL_2_L2A: 10.0,
    SensorId.LANDSAT_C2_L2: 30.0,
    SensorId.SENTINEL_1_RTC: 10.0,
    SensorId.SENTINEL_1_GRD: 10.0,
    SensorId.ENMAP_L2A: 30.0,
}

#: Optical sensors; the first of them in a recipe is the default co-registration reference.
OPTICAL_SENSORS: frozenset[SensorId] = frozenset(
    {SensorId.SENTINEL_2_L2A, SensorId.LANDSAT_C2_L2, SensorId.ENMAP_L2A}
)


class TemporalMode(StrEnum):
    """How the scenes of one period are reduced."""

    BEST = "best"
    """The clearest scene (most valid pixels on the tile)."""
    COMPOSITE = "composite"
    """Per-pixel median of the clear pixels of all scenes."""
    SERIES = "series"
    """Up to ``max_scenes`` scenes, clearest first, kept as separate time steps."""


class TemporalConfig(RecipeModel):
    """How a sensor's scenes within each period become cube time steps."""

    mode: TemporalMode = Field(
        default=TemporalMode.BEST,
        description=(
            "best: the clearest scene per period; composite: per-pixel median of clear pixels; "
            "series: up to max_scenes scenes per period as separate time steps."
        ),
    )
    max_scenes: int | None = Field(
        default=None,
        ge=1,
        le=366,
        description=(
            "series: time steps per period (required). composite: most scenes that enter the "
            "median, clearest first (default: all). best: not used."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.mode is TemporalMode.SERIES and self.max_scenes is None:
            fail(
                "mode 'series' needs max_scenes: it fixes the length of the time axis",
                "max_scenes",
                "set max_scenes, e.g. 4",
            )
        if self.mode is TemporalMode.BEST and self.max_scenes not in (None, 1):
            fail(
                f"mode 'best' keeps one scene per period, so max_scenes {self.max_scenes} "
                "has no effect",
                "max_scenes",
                "remove max_scenes, or use mode: series or composite",
            )
        return self


class MaskRules(RecipeModel):
    """Which pixels count as invalid beyond the default set (nodata, saturated, cloud, shadow)."""

    mask_snow: bool = Field(default=False, description="Also mask snow and ice.")
    mask_haze: bool = Field(default=False, description="Also mask haze (where flagged).")
    mask_cirrus: bool = Field(default=True, description="Mask thin cirrus.")
    dilation_m: float = Field(
        default=0.0,
        ge=0,
        le=5000,
        description="Grow cloud and shadow masks by this distance in metres (0 = no dilation).",
    )
    min_valid_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Drop a scene from a tile when less than this fraction of its pixels is valid "
            "(0 keeps every scene)."
        ),
    )


def _default_provider(data: dict[str, Any]) -> Provider:
    catalog = data.get("catalog")
    return provider_for_catalog(catalog) if isinstance(catalog, str) else Provider.GENERIC


def _default_resolution(data: dict[str, Any]) -> float:
    sensor = data.get("id")
    return NATIVE_RESOLUTION_M.get(sensor, 10.0) if isinstance(sensor, SensorId) else 10.0


def _providers_for(sensor: SensorId | None) -> str:
    names = [p.value for p in Provider if sensor is None or has_profile(sensor, p)]
    return ", ".join(names) if names else "(none)"


class SensorConfig(RecipeModel):
    """One sensor of the dataset: its catalog, bands, pixel size, masking and reduction."""

    id: SensorId = Field(description="Sensor, e.g. sentinel-2-l2a, landsat-c2-l2.")
    catalog: str = Field(
        min_length=1,
        description=(
            "STAC API URL (https://...) or 'archive:PATH' for a local offline archive; a "
            "relative PATH is taken from the current directory (see Recipe.resolve_paths)."
        ),
    )
    provider: Provider = Field(
        default_factory=_default_provider,
        validate_default=True,
        description=(
            "Provider whose profile (asset keys, scaling) applies. Default: inferred from the "
            "catalog; required for catalogs eoforge does not recognise (e.g. a local URL)."
        ),
    )
    collection: str | None = Field(
        default=None,
        min_length=1,
        description="STAC collection id; default: the provider profile's collection.",
    )
    bands: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Canonical band names to load (e.g. B02, B08); default: the profile's bands.",
    )
    resolution: float = Field(
        default_factory=_default_resolution,
        gt=0,
        le=10000,
        description=(
            "Pixel size in metres; must divide grid.tile_size. Default: the sensor's native "
            "size (10 for Sentinel-1/2, 30 for Landsat and EnMAP)."
        ),
    )
    max_cloud_cover: float = Field(
        default=60.0,
        ge=0,
        le=100,
        description="Search filter: highest scene cloud cover in percent (ignored for SAR).",
    )
    mask: MaskRules = Field(default_factory=MaskRules, description="Masking rules.")
    temporal: TemporalConfig = Field(
        default_factory=TemporalConfig,
        description="How the scenes of each period are reduced.",
    )
    coregister: bool = Field(
        default=True,
        description=(
            "Estimate and correct this sensor's sub-pixel shift against the reference sensor. "
            "Default: true, false for the reference sensor itself."
        ),
    )
    reference: bool = Field(
        default=False,
        description=(
            "This sensor is the co-registration reference; exactly one sensor is. "
            "Default: the first optical sensor (else the first sensor)."
        ),
    )

    @field_validator("catalog")
    @classmethod
    def _catalog_form(cls, catalog: str) -> str:
        if catalog.startswith(ARCHIVE_PREFIX):
            if not catalog[len(ARCHIVE_PREFIX) :].strip():
                fail(
                    "'archive:' names no directory",
                    fix="write archive:PATH, e.g. archive:data/archive-demo",
                )
            return catalog
        url = urlparse(catalog)
        if url.scheme not in ("http", "https") or not url.hostname:
            fail(
                f"'{catalog}' is neither a STAC API URL nor archive:PATH",
                fix="give an http(s) URL of a STAC API, or archive:PATH for a local archive",
            )
        return catalog

    @field_validator("bands")
    @classmethod
    def _unique_bands(cls, bands: list[str] | None) -> list[str] | None:
        if bands is not None:
            for i, band in enumerate(bands):
                if not band.strip():
                    fail("band name is empty", f"[{i}]")
                if band in bands[:i]:
                    fail(f"band '{band}' is listed twice", f"[{i}]", "list each band once")
        return bands

    @field_validator("provider")
    @classmethod
    def _known_pair(cls, provider: Provider, info: ValidationInfo) -> Provider:
        sensor = info.data.get("id")
        if provider is Provider.GENERIC:
            fail(
                f"unknown provider for catalog '{info.data.get('catalog', '?')}': eoforge needs "
                "the provider to read asset keys and scaling",
                fix=f"set provider to one of {_providers_for(sensor)}",
            )
        if isinstance(sensor, SensorId) and not has_profile(sensor, provider):
            fail(
                f"no profile for sensor '{sensor}' from provider '{provider}'",
                fix=f"use a catalog of one of {_providers_for(sensor)}, or set provider to one",
            )
        return provider

    @model_validator(mode="after")
    def _known_collection_and_bands(self) -> Self:
        # Reached only when provider passed _known_pair, so the profile exists.
        profile = get_profile(self.id, self.provider)
        if self.collection is not None and self.collection not in profile.collections:
            fail(
                f"'{self.collection}' is not a {self.id} collection of {self.provider}",
                "collection",
                f"use one of {', '.join(profile.collections)}, or leave collection out",
            )
        for i, band in enumerate(self.bands or ()):
            try:
                profile.band(band)
            except InvalidInputError as exc:
                fail(exc.what, f"bands[{i}]", exc.fix)
        return self

    @property
    def is_optical(self) -> bool:
        """Whether the sensor is optical (Sentinel-2, Landsat, EnMAP) rather than SAR."""
        return self.id in OPTICAL_SENSORS

    @property
    def archive_path(self) -> str | None:
        """The ``PATH`` of an ``archive:PATH`` catalog, or None for a STAC API URL."""
        if self.catalog.startswith(ARCHIVE_PREFIX):
            return self.catalog[len(ARCHIVE_PREFIX) :]
        return None

    def with_resolved_paths(self, base: Path) -> SensorConfig:
        """This sensor with a relative ``archive:PATH`` made absolute against ``base``."""
        path = self.archive_path
        if path is None:
            return self
        return self.model_copy(update={"catalog": ARCHIVE_PREFIX + resolve_local(path, base)})
