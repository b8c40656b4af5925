"""Sensor and provider identifiers, and how a catalog location maps to a provider.

These are the names a recipe uses. Sensor profiles (:mod:`schemas.profiles`) are keyed by the
pair ``(SensorId, Provider)``, never by an asset key alone: ``nir08`` is Sentinel-2 B8A on Earth
Search but Landsat SR_B5 everywhere (SENSORS.md D5).
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlparse

__all__ = ["ARCHIVE_PREFIX", "Provider", "SensorId", "provider_for_catalog"]

#: Prefix of a recipe ``catalog`` value that names a local offline archive: ``archive:PATH``.
ARCHIVE_PREFIX = "archive:"


class SensorId(StrEnum):
    """Sensors eoforge knows how to load, mask and harmonise."""

    SENTINEL_2_L2A = "sentinel-2-l2a"
    LANDSAT_C2_L2 = "landsat-c2-l2"
    SENTINEL_1_RTC = "sentinel-1-rtc"
    SENTINEL_1_GRD = "sentinel-1-grd"
    ENMAP_L2A = "enmap-l2a"


class Provider(StrEnum):
    """STAC providers with a known profile (asset keys, scaling, quirks)."""

    EARTH_SEARCH = "earth-search"
    PLANETARY_COMPUTER = "planetary-computer"
    CDSE = "cdse"
    DLR = "dlr"
    ARCHIVE = "archive"
    GENERIC = "generic"


_HOSTS: dict[str, Provider] = {
    "earth-search.aws.element84.com": Provider.EARTH_SEARCH,
    "planetarycomputer.microsoft.com": Provider.PLANETARY_COMPUTER,
    "stac.dataspace.copernicus.eu": Provider.CDSE,
    "catalogue.dataspace.copernicus.eu": Provider.CDSE,
    "geoservice.dlr.de": Provider.DLR,
}


def provider_for_catalog(catalog: str) -> Provider:
    """Infer the provider from a recipe's ``catalog`` value.

    Args:
        catalog: A STAC API URL (``https://...``) or ``archive:PATH``.

    Returns:
        The matching :class:`Provider`; :attr:`Provider.ARCHIVE` for ``archive:`` and for
        loopback URLs is *not* assumed (a loopback URL is :attr:`Provider.GENERIC` unless the
        recipe names the provider explicitly).
    """
    if catalog.startswith(ARCHIVE_PREFIX):
        return Provider.ARCHIVE
    host = (urlparse(catalog).hostname or "").lower()
    return _HOSTS.get(host, Provider.GENERIC)
