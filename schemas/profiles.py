"""Sensor profiles: one per ``(SensorId, Provider)`` pair, as data.

A profile says, for one sensor as one provider publishes it: the collection ids, the asset key of
every band, native resolution, dtype and nodata, the radiometric rule that turns raw values into
physical units, and how the validity mask is derived. The pipeline never hard-codes any of this;
it asks the profile. Facts and their sources: ../shared/SENSORS.md.

Profiles are keyed by the pair, never by asset key alone (``nir08`` is Sentinel-2 B8A on Earth
Search but Landsat SR_B5 everywhere: SENSORS.md D5).

Usage::

    profile = get_profile(SensorId.SENTINEL_2_L2A, Provider.PLANETARY_COMPUTER)
    profile.asset_key("nir08")                     # "B8A"
    profile.scale_offset("red", item["properties"])  # (1e-4, -0.1) at PB >= 04.00
    profile = profile_for_item(item)               # infer the pair from a raw STAC item
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas.errors import InvalidInputError, NotFoundError
from schemas.qa import MaskSpec
from schemas.radiometry import s2_scale_offset
from schemas.sensors import Provider, SensorId

__all__ = [
    "BandRole",
    "BandSpec",
    "RadiometryKind",
    "RadiometryRule",
    "SensorProfile",
    "all_profiles",
    "get_profile",
    "has_profile",
    "profile_for_item",
]


class BandRole(StrEnum):
    """What a band holds; decides scaling and resampling (categorical roles use nearest)."""

    REFLECTANCE = "reflectance"
    TEMPERATURE = "temperature"
    BACKSCATTER = "backscatter"
    QA = "qa"
    CLASSIFICATION = "classification"


class RadiometryKind(StrEnum):
    """Which radiometric rule applies to a profile's reflectance/backscatter bands."""

    S2_BASELINE = "s2-baseline"
    """Sentinel-2 L2A: scale 1e-4, offset -0.1 iff processing baseline >= 04.00."""
    S2_EARTH_SEARCH_LEGACY = "s2-earth-search-legacy"
    """As S2_BASELINE, but no offset where ``earthsearch:boa_offset_applied`` is true (D1)."""
    LANDSAT_C2 = "landsat-c2"
    """Landsat C2 L2: SR 2.75e-5 / -0.2, ST 0.00341802 / 149.0."""
    ENMAP_GAIN = "enmap-gain"
    """EnMAP L2A: per-band GainOfBand/OffsetOfBand, 1e-4 / 0 unless the item says otherwise."""
    SAR_GAMMA0 = "sar-gamma0"
    """Terrain-flattened gamma0 in linear power; convert to dB after resampling."""
    SAR_GRD_DN = "sar-grd-dn"
    """Uncalibrated GRD amplitude DN: not physical units, needs calibration (D8)."""


@dataclass(frozen=True, slots=True)
class RadiometryRule:
    """How raw values of a profile's measurement bands become physical units.

    Attributes:
        kind: The rule.
        scale: Default multiplicative factor of the measurement bands.
        offset: Default additive offset (before any baseline branch).
        unit: Physical unit after scaling (``"reflectance"``, ``"linear power"``, ``"DN"``).
        baseline_property: Item property holding the Sentinel-2 processing baseline.
        to_db: The cube stores this sensor in dB (convert after resampling in linear power).
        calibrated: False when the values are not physical units (S1 GRD DN).
    """

    kind: RadiometryKind
    scale: float = 1.0
    offset: float = 0.0
    unit: str = "reflectance"
    baseline_property: str | None = None
    to_db: bool = False
    calibrated: bool = True


@dataclass(frozen=True, slots=True)
class BandSpec:
    """One band of one sensor as one provider publishes it.

    Attributes:
        name: Canonical band name (``B04``, ``SR_B4``, ``VV``, ``B001``, ``SCL``).
        asset_key: STAC asset key holding the band at this provider.
        role: What the band holds.
        resolution_m: Native ground sampling distance in metres.
        dtype: Raw data type (numpy name).
        nodata: Raw nodata value, or None when the band has none.
        common_name: STAC ``eo`` common name (or the Earth Search key used as one), if any.
        center_wavelength_um: Nominal centre wavelength in µm, if known (EnMAP: per scene).
        asset_band: 1-based band index inside a multi-band asset (EnMAP ``image``), else None.
        scale: Fixed scale of this band (overrides the profile rule), e.g. ST_B10.
        offset: Fixed offset of this band (overrides the profile rule).
        unit: Physical unit after scaling, if it differs from the rule's.
    """

    name: str
    asset_key: str
    role: BandRole
    resolution_m: float
    dtype: str
    nodata: float | None
    common_name: str | None = None
    center_wavelength_um: float | None = None
    asset_band: int | None = None
    scale: float | None = None
    offset: float | None = None
    unit: str | None = None

    @property
    def categorical(self) -> bool:
        """True for QA and class layers: resample with nearest only, never interpolate."""
        return self.role in (BandRole.QA, BandRole.CLASSIFICATION)


@dataclass(frozen=True, slots=True)
class SensorProfile:
    """Everything eoforge needs to load, scale and mask one sensor from one provider.

    Attributes:
        sensor: The sensor.
        provider: The provider.
        collections: STAC collection ids of this pair; the first is the default.
        bands: Every band the profile knows.
        default_band_names: Bands loaded when a recipe names none.
        radiometry: Rule for the measurement bands.
        mask: How the validity mask is derived.
        reliable_radiometry: False when pixel values cannot be trusted to follow the rule.
        warning: Why, when ``reliable_radiometry`` is False or the data is not ML-ready.
        ml_ready: False when the data needs processing eoforge does not do (S1 GRD).
        platforms: ``platform`` values the band table describes (empty: any).
        notes: Short provenance line (SENSORS.md sections).
    """

    sensor: SensorId
    provider: Provider
    collections: tuple[str, ...]
    bands: tuple[BandSpec, ...]
    default_band_names: tuple[str, ...]
    radiometry: RadiometryRule
    mask: MaskSpec
    reliable_radiometry: bool = True
    warning: str | None = None
    ml_ready: bool = True
    platforms: tuple[str, ...] = ()
    notes: str = ""
    _lookup: dict[str, BandSpec] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )
    _ambiguous: dict[str, tuple[str, ...]] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        lookup: dict[str, BandSpec] = {}
        ambiguous: dict[str, tuple[str, ...]] = {}
        names = {band.name for band in self.bands}
        if len(names) != len(self.bands):
            raise ValueError(f"{self.key}: duplicate canonical band names")
        for band in self.bands:
            lookup[band.name.lower()] = band
        # Aliases: common names and asset keys, only where unambiguous within this profile.
        aliases: dict[str, list[BandSpec]] = {}
        for band in self.bands:
            for alias in {band.common_name, band.asset_key}:
                if alias and alias.lower() not in lookup:
                    aliases.setdefault(alias.lower(), []).append(band)
        for alias, candidates in aliases.items():
            if len(candidates) == 1:
                lookup[alias] = candidates[0]
            else:
                ambiguous[alias] = tuple(band.name for band in candidates)
        for name in self.default_band_names:
            if name.lower() not in lookup:
                raise ValueError(f"{self.key}: default band {name!r} is not in the band table")
        for name in self.mask.bands:
            if name.lower() not in lookup:
                raise ValueError(f"{self.key}: mask band {name!r} is not in the band table")
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "_ambiguous", ambiguous)

    def __dask_tokenize__(self) -> tuple[str, ...]:
        """A short deterministic token: the pair, its collections and the rule."""
        return (
            "SensorProfile",
            self.sensor.value,
            self.provider.value,
            *self.collections,
            self.radiometry.kind.value,
        )

    @property
    def key(self) -> tuple[SensorId, Provider]:
        """The ``(sensor, provider)`` pair."""
        return (self.sensor, self.provider)

    @property
    def collection(self) -> str:
        """The default collection id."""
        return self.collections[0]

    @property
    def baseline_property(self) -> str | None:
        """Item property with the Sentinel-2 processing baseline (None for other sensors)."""
        return self.radiometry.baseline_property

    @property
    def band_names(self) -> tuple[str, ...]:
        """Canonical names of every band, in table order."""
        return tuple(band.name for band in self.bands)

    def band(self, name: str) -> BandSpec:
        """Resolve a band by canonical name, common name or asset key (case-insensitive).

        Args:
            name: ``B04``, ``red``, ``SR_B5``, ``nir08``, ``vv``, ...

        Returns:
            The band.

        Raises:
            InvalidInputError: No band of this profile has that name, or it is ambiguous.
        """
        key = name.strip().lower()
        band = self._lookup.get(key)
        if band is None and key in self._ambiguous:
            shared = self._ambiguous[key]
            raise InvalidInputError(
                f"{name!r} names {len(shared)} bands of {self.sensor.value} "
                f"({shared[0]}..{shared[-1]}), not one",
                where=f"profile {self.sensor.value}/{self.provider.value}",
                fix="name the band itself, e.g. " + repr(shared[0]),
            )
        if band is None:
            commons = sorted({b.common_name for b in self.bands if b.common_name})
            shown = _describe_names(self.bands)
            raise InvalidInputError(
                f"band {name!r} is not a band of {self.sensor.value} on {self.provider.value}",
                where=f"profile {self.sensor.value}/{self.provider.value}",
                fix=f"use one of {shown}"
                + (f" or a common name from {commons}" if commons else ""),
            )
        return band

    def has_band(self, name: str) -> bool:
        """Whether :meth:`band` resolves ``name``."""
        return name.strip().lower() in self._lookup

    def asset_key(self, name: str) -> str:
        """STAC asset key of a band (see :meth:`band` for accepted names)."""
        return self.band(name).asset_key

    def default_bands(self) -> tuple[BandSpec, ...]:
        """Bands loaded when a recipe names none (measurement bands, no QA)."""
        return tuple(self.band(name) for name in self.default_band_names)

    def mask_bands(self) -> tuple[BandSpec, ...]:
        """Quality layers the mask needs, in the order :func:`schemas.qa.decode_flags` reads."""
        return tuple(self.band(name) for name in self.mask.bands)

    def scale_offset(
        self, name: str, item_properties: Mapping[str, Any] | None = None
    ) -> tuple[float, float]:
        """Scale and offset that turn a band's raw values into physical units.

        ``physical = raw * scale + offset`` (reflectance, kelvin, linear gamma0). QA and class
        layers return ``(1.0, 0.0)``.

        Args:
            name: Band name (see :meth:`band`).
            item_properties: The STAC item's ``properties``; required for Sentinel-2, whose
                offset depends on the processing baseline (never on the date).

        Returns:
            ``(scale, offset)``.

        Raises:
            InvalidInputError: The rule needs an item property that is missing.
        """
        band = self.band(name)
        if band.categorical:
            return 1.0, 0.0
        if band.scale is not None or band.offset is not None:
            return (
                band.scale if band.scale is not None else 1.0,
                band.offset if band.offset is not None else 0.0,
            )
        rule = self.radiometry
        if rule.kind in (RadiometryKind.S2_BASELINE, RadiometryKind.S2_EARTH_SEARCH_LEGACY):
            props = item_properties or {}
            baseline = _find_baseline(props, rule.baseline_property)
            if baseline is None:
                raise InvalidInputError(
                    f"the item has no processing baseline ({rule.baseline_property})",
                    where=f"profile {self.sensor.value}/{self.provider.value}",
                    fix="pass the STAC item's properties; the Sentinel-2 offset depends on "
                    "the processing baseline, never on the date",
                )
            applied = rule.kind is RadiometryKind.S2_EARTH_SEARCH_LEGACY and bool(
                props.get("earthsearch:boa_offset_applied", False)
            )
            return s2_scale_offset(baseline, offset_applied=applied)
        return rule.scale, rule.offset

    def scale_offset_for_item(self, name: str, item: Mapping[str, Any]) -> tuple[float, float]:
        """Like :meth:`scale_offset`, reading everything the rule needs from a whole STAC item.

        For EnMAP the per-band ``enmap:gain_of_band`` / ``enmap:offset_of_band`` of the
        ``image`` asset's ``eo:bands`` win over the default 1e-4 / 0 when present.

        Args:
            name: Band name.
            item: The STAC item as a dict.

        Returns:
            ``(scale, offset)``.
        """
        band = self.band(name)
        props = item.get("properties") or {}
        if self.radiometry.kind is RadiometryKind.ENMAP_GAIN and band.asset_band is not None:
            asset = (item.get("assets") or {}).get(band.asset_key) or {}
            entries = asset.get("eo:bands") or asset.get("bands") or []
            if len(entries) >= band.asset_band:
                entry = entries[band.asset_band - 1]
                gain = entry.get("enmap:gain_of_band")
                offset = entry.get("enmap:offset_of_band", 0.0)
                if gain is not None:
                    return float(gain), float(offset)
        return self.scale_offset(name, props)

    def supports_item(self, item: Mapping[str, Any]) -> bool:
        """Whether the item's platform is one this profile's band table describes.

        Landsat collections mix Landsat 4-9; the table (and QA bit semantics) describe
        OLI/TIRS (Landsat 8/9), so a search should keep only items this returns True for.
        """
        if not self.platforms:
            return True
        platform = str((item.get("properties") or {}).get("platform", "")).lower()
        return platform in self.platforms


_BASELINE_PROPERTIES = (
    "s2:processing_baseline",
    "processing:version",
    "sentinel:processing_baseline",
)


def _find_baseline(props: Mapping[str, Any], preferred: str | None) -> Any:
    names = ((preferred,) if preferred else ()) + _BASELINE_PROPERTIES
    for name in names:
        value = props.get(name)
        if value not in (None, ""):
            return value
    return None


def _describe_names(bands: tuple[BandSpec, ...], limit: int = 30) -> str:
    """Band names for an error message; long runs of measurement bands as ``first..last``."""
    names = [band.name for band in bands]
    if len(names) <= limit:
        return str(names)
    measured = [band.name for band in bands if not band.categorical]
    others = [band.name for band in bands if band.categorical]
    return f"{measured[0]}..{measured[-1]} or {others}"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@functools.cache
def _registry() -> tuple[
    dict[tuple[SensorId, Provider], SensorProfile],
    dict[tuple[SensorId, Provider, str], SensorProfile],
]:
    from schemas import _profiles_data

    defaults: dict[tuple[SensorId, Provider], SensorProfile] = {}
    variants: dict[tuple[SensorId, Provider, str], SensorProfile] = {}
    for profile in _profiles_data.build_profiles():
        if profile.key in defaults:
            raise ValueError(f"duplicate profile {profile.key}")
        defaults[profile.key] = profile
    for collection, profile in _profiles_data.build_collection_variants():
        variants[(profile.sensor, profile.provider, collection)] = profile
    return defaults, variants


def has_profile(sensor: SensorId, provider: Provider) -> bool:
    """Return whether a sensor profile exists for the ``(sensor, provider)`` pair.

    Args:
        sensor: The sensor.
        provider: The STAC provider.

    Returns:
        True when :func:`get_profile` would succeed for this pair.
    """
    return (SensorId(sensor), Provider(provider)) in _registry()[0]


def all_profiles() -> tuple[SensorProfile, ...]:
    """Every default profile, one per ``(sensor, provider)`` pair."""
    return tuple(_registry()[0].values())


def get_profile(
    sensor: SensorId | str, provider: Provider | str, collection: str | None = None
) -> SensorProfile:
    """The profile of a ``(sensor, provider)`` pair, optionally for one of its collections.

    Args:
        sensor: The sensor (enum or its value).
        provider: The provider (enum or its value).
        collection: A collection id of the pair; collections with their own quirks (Earth
            Search legacy ``sentinel-2-l2a``) get their own variant with a warning.

    Returns:
        The profile.

    Raises:
        NotFoundError: No profile for the pair (the message lists the known pairs), or the
            collection is not one of the pair's.
    """
    try:
        key = (SensorId(sensor), Provider(provider))
    except ValueError as exc:
        raise NotFoundError(
            f"unknown sensor or provider ({sensor!r}, {provider!r})",
            fix=f"use sensors {[s.value for s in SensorId]} and providers "
            f"{[p.value for p in Provider]}",
        ) from exc
    defaults, variants = _registry()
    profile = defaults.get(key)
    if profile is None:
        known = ", ".join(f"{s.value}/{p.value}" for s, p in defaults)
        raise NotFoundError(
            f"no sensor profile for {key[0].value} on {key[1].value}",
            fix=f"use one of the known pairs: {known}",
        )
    if collection is None or collection == profile.collection:
        return profile
    variant = variants.get((*key, collection))
    if variant is not None:
        return variant
    if collection in profile.collections:
        return profile
    raise NotFoundError(
        f"collection {collection!r} is not a {key[0].value} collection of {key[1].value}",
        fix=f"use one of {list(profile.collections)}",
    )


# --------------------------------------------------------------------------------------------
# Inference from raw STAC items
# --------------------------------------------------------------------------------------------

_HREF_HINTS: tuple[tuple[str, Provider], ...] = (
    (".blob.core.windows.net", Provider.PLANETARY_COMPUTER),
    ("planetarycomputer.microsoft.com", Provider.PLANETARY_COMPUTER),
    ("sentinel-cogs.s3", Provider.EARTH_SEARCH),
    ("e84-earth-search-sentinel-data", Provider.EARTH_SEARCH),
    ("earth-search.aws.element84.com", Provider.EARTH_SEARCH),
    ("s3://sentinel-s1-l1c/", Provider.EARTH_SEARCH),
    ("s3://sentinel-s2-l2a/", Provider.EARTH_SEARCH),
    ("s3://usgs-landsat/", Provider.EARTH_SEARCH),
    ("s3://eodata/", Provider.CDSE),
    ("dataspace.copernicus.eu", Provider.CDSE),
    ("geoservice.dlr.de", Provider.DLR),
)

_LINK_HOSTS: tuple[tuple[str, Provider], ...] = (
    ("earth-search.aws.element84.com", Provider.EARTH_SEARCH),
    ("planetarycomputer.microsoft.com", Provider.PLANETARY_COMPUTER),
    ("stac.dataspace.copernicus.eu", Provider.CDSE),
    ("geoservice.dlr.de", Provider.DLR),
)


def _infer_sensor(item: Mapping[str, Any]) -> SensorId | None:
    collection = str(item.get("collection") or "").lower()
    props: Mapping[str, Any] = item.get("properties") or {}
    if collection in ("enmap_hsi_l2a",) or (
        str(props.get("platform", "")).lower() == "enmap"
        and str(props.get("processing:level", "")).upper() == "L2A"
    ):
        return SensorId.ENMAP_L2A
    if "rtc" in collection:
        return SensorId.SENTINEL_1_RTC
    if collection in ("sentinel-1-grd", "sentinel1-grd") or (
        props.get("sar:product_type") == "GRD" and not collection
    ):
        return SensorId.SENTINEL_1_GRD
    if collection.startswith("landsat-c2") and "l2" in collection:
        return SensorId.LANDSAT_C2_L2
    product_type = str(props.get("s2:product_type", ""))
    if collection in ("sentinel-2-l2a", "sentinel-2-c1-l2a") or product_type == "S2MSI2A":
        return SensorId.SENTINEL_2_L2A
    return None


def _is_archive_href(href: str) -> bool:
    return href.startswith(("data/", "http://127.0.0.1", "http://localhost", "http://[::1]"))


def _hinted_providers(item: Mapping[str, Any]) -> list[Provider]:
    """Providers suggested by the item, strongest first (an offline archive beats all)."""
    hints: list[Provider] = []
    props: Mapping[str, Any] = item.get("properties") or {}
    assets: Mapping[str, Any] = item.get("assets") or {}
    links = [str(link.get("href", "")) for link in item.get("links") or []]
    if any(_is_archive_href(str(a.get("href", ""))) for a in assets.values()) or any(
        _is_archive_href(href) for href in links
    ):
        hints.append(Provider.ARCHIVE)
    for href in links:
        hints.extend(provider for host, provider in _LINK_HOSTS if host in href)
    if any(key.startswith("earthsearch:") for key in props):
        hints.append(Provider.EARTH_SEARCH)
    if any(key.startswith("msft:") for key in props):
        hints.append(Provider.PLANETARY_COMPUTER)
    for asset in assets.values():
        href = str(asset.get("href", ""))
        hints.extend(provider for marker, provider in _HREF_HINTS if marker in href)
    return hints


def _asset_match(profile: SensorProfile, assets: Mapping[str, Any]) -> int:
    return len({band.asset_key for band in profile.bands} & set(assets))


def profile_for_item(
    item: Mapping[str, Any], provider: Provider | str | None = None
) -> SensorProfile:
    """Infer the profile of a raw STAC item (a dict as returned by a STAC API).

    The sensor comes from the collection id (or ``s2:``/``sar:``/EnMAP properties); the
    provider from ``provider`` when given, else from hints: link hosts, ``earthsearch:`` /
    ``msft:`` properties, asset href hosts (``*.blob.core.windows.net``, ``s3://eodata``,
    ``data/...`` of an offline archive), and last from which provider's asset keys the item
    carries. Earth Search legacy ``sentinel-2-l2a`` items get the variant flagged as unreliable.

    Args:
        item: The STAC item.
        provider: The provider, when the caller knows it (e.g. from the recipe's catalog).

    Returns:
        The profile.

    Raises:
        NotFoundError: The item is not of a sensor eoforge has a profile for.
    """
    where = f"item {item.get('id', '?')}"
    sensor = _infer_sensor(item)
    if sensor is None:
        raise NotFoundError(
            f"no sensor profile matches collection {item.get('collection')!r}",
            where=where,
            fix=f"eoforge profiles cover {[s.value for s in SensorId]}",
        )
    candidates = [p for p in all_profiles() if p.sensor is sensor]
    chosen: Provider | None = Provider(provider) if provider is not None else None
    if chosen is None:
        for hint in _hinted_providers(item):
            if any(p.provider is hint for p in candidates):
                chosen = hint
                break
    if chosen is None:
        assets = item.get("assets") or {}
        best = max(candidates, key=lambda p: _asset_match(p, assets))
        if _asset_match(best, assets) == 0:
            raise NotFoundError(
                f"cannot tell the provider of this {sensor.value} item",
                where=where,
                fix="pass provider= explicitly",
            )
        chosen = best.provider
    collection = item.get("collection")
    profile = get_profile(sensor, chosen)
    if isinstance(collection, str) and collection in profile.collections:
        return get_profile(sensor, chosen, collection)
    return profile
