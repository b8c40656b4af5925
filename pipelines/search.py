"""Plan stage, part 1: find the STAC items of one sensor over the AOI and the dates.

``search_sensor`` asks a STAC API (Earth Search, Planetary Computer, CDSE, DLR, or the offline
archive served on loopback) for one sensor's collection with pystac-client, walks every result
page, and normalises the raw item dicts through the sensor profile:

* the scene cloud filter (``eo:cloud_cover <= max_cloud_cover``) runs on the server as CQL2 when
  the API conforms to *Filter*, else as the *Query* extension, else on the client (logged); SAR
  sensors get none. Items are always re-checked on the client, because some servers drop the
  search parameters on later pages or ignore what they do not support;
* items of another collection, of a platform the profile does not describe (Landsat 4-7),
  outside the dates or the AOI polygon, and repeated ids are dropped, each with its reason;
* the rest, raw dicts, are signed (optional hook) and sorted by datetime, then id.

Transient HTTP faults (429, 5xx, dropped connections, timeouts) are retried with exponential
backoff by urllib3 inside pystac-client's session; what still fails becomes a
:class:`~schemas.errors.TransientError`. Permanent refusals become errors that say what to fix.

Signing (Planetary Computer): eoforge never signs on its own. Pass a callable that signs one
item dict, e.g. ``sign=planetary_computer.sign_inplace`` from the ``planetary-computer`` package
(it signs a mapping's asset hrefs in place with a SAS token fetched over the network and returns
it). Credentials for CDSE or DLR travel as headers:
``client_factory=functools.partial(open_client, headers={"Authorization": ...})``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import pystac
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from urllib3 import Retry

from pipelines._warp import redact_href
from pipelines.stac_filter import CLOUD_PROPERTY, cloud_filter, conforms_to_filter
from schemas.errors import (
    EoforgeError,
    InvalidInputError,
    NotFoundError,
    TransientError,
)
from schemas.profiles import RadiometryKind, SensorProfile, get_profile
from schemas.sensors import ARCHIVE_PREFIX, Provider, SensorId

__all__ = [
    "CLOUD_PROPERTY",
    "TRANSIENT_STATUSES",
    "ClientFactory",
    "CloudFilter",
    "DropReason",
    "DroppedItem",
    "RetryPolicy",
    "SearchResult",
    "SensorSearchConfig",
    "Signer",
    "normalise_items",
    "open_client",
    "search_sensor",
    "search_sensor_detailed",
]

logger = logging.getLogger(__name__)

#: HTTP statuses retried with backoff, then reported as a TransientError.
TRANSIENT_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
_SAR_RULES = frozenset({RadiometryKind.SAR_GAMMA0, RadiometryKind.SAR_GRD_DN})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_API_URI = re.compile(
    r"https://api\.stacspec\.org/v1\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.]+)?/(?P<rest>.+)"
)

#: Signs one item dict (e.g. appends a SAS token to asset hrefs); may sign in place and
#: return None.
Signer = Callable[[dict[str, Any]], dict[str, Any] | None]
#: Opens a pystac-client Client for a STAC API URL; ``search_sensor`` closes its session.
ClientFactory = Callable[[str], Client]


class SensorSearchConfig(Protocol):
    """The fields of a recipe sensor (:class:`schemas.recipe.SensorConfig`) a search reads."""

    @property
    def id(self) -> SensorId:
        """The sensor."""

    @property
    def catalog(self) -> str:
        """STAC API URL or ``archive:PATH``."""

    @property
    def provider(self) -> Provider:
        """Provider whose profile applies."""

    @property
    def collection(self) -> str | None:
        """Collection id, or None for the profile's default."""

    @property
    def max_cloud_cover(self) -> float:
        """Highest scene cloud cover in percent (ignored for SAR)."""


class CloudFilter(StrEnum):
    """Where the scene cloud filter ran."""

    CQL2 = "cql2"
    """Server side, as a CQL2-JSON ``filter`` (the API conforms to Filter)."""
    QUERY = "query"
    """Server side, through the Query extension."""
    CLIENT = "client"
    """Only on the client: the API supports neither."""
    NONE = "none"
    """No filter: a SAR sensor, or ``max_cloud_cover`` of 100."""


class DropReason(StrEnum):
    """Why a returned item was left out."""

    DUPLICATE = "duplicate"
    OTHER_COLLECTION = "other-collection"
    UNSUPPORTED_PLATFORM = "unsupported-platform"
    OUTSIDE_DATES = "outside-dates"
    OUTSIDE_AOI = "outside-aoi"
    CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class DroppedItem:
    """One item the search returned but the build will not use.

    Attributes:
        id: The item id.
        reason: Why it was dropped.
        detail: The value that decided it (cloud cover, platform, collection, datetime).
    """

    id: str
    reason: DropReason
    detail: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of transient HTTP faults with exponential backoff (urllib3 ``Retry``).

    The wait before retry ``n`` (n >= 2) is ``backoff_factor * 2 ** (n - 1)`` seconds, at most
    ``backoff_max``; a server's ``Retry-After`` is honoured up to ``backoff_max`` too.

    Attributes:
        max_retries: Retries per request after the first try (0: none).
        backoff_factor: Base of the exponential backoff in seconds.
        backoff_max: Longest single wait in seconds.
        connect_timeout_s: Seconds to wait for a connection.
        read_timeout_s: Seconds to wait for the server to answer.
    """

    max_retries: int = 5
    backoff_factor: float = 0.5
    backoff_max: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def to_urllib3(self) -> Retry:
        """The urllib3 ``Retry`` for this policy (every method: a STAC search is a POST)."""
        return _CappedRetry(
            total=self.max_retries,
            connect=self.max_retries,
            read=self.max_retries,
            status=self.max_retries,
            other=0,
            allowed_methods=None,
            status_forcelist=TRANSIENT_STATUSES,
            backoff_factor=self.backoff_factor,
            backoff_max=self.backoff_max,
            raise_on_status=False,
            respect_retry_after_header=True,
        )


#: Failures while a response body is read (after urllib3's retries, which end at the headers).
_BODY_ERRORS = re.compile(r"Connection broken|IncompleteRead|Response ended prematurely")


class _BodyRetryingStacApiIO(StacApiIO):
    """``StacApiIO`` that also retries a request whose response body broke off midway.

    urllib3's ``Retry`` covers connecting, status codes and reading the headers; a connection
    dropped while the body is read (a truncated page) surfaces as an ``APIError`` without a
    status. Such requests are sent again (a STAC read or search is idempotent) with the same
    backoff, up to ``policy.max_retries`` times; other errors pass through unchanged.
    """

    def __init__(self, policy: RetryPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policy = policy

    def request(
        self,
        href: str,
        method: str | None = None,
        headers: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> str:
        """As ``StacApiIO.request``, retrying broken bodies (class docstring)."""
        policy = self._policy
        for attempt in range(policy.max_retries + 1):
            try:
                return super().request(href, method, headers, parameters)
            except APIError as err:
                broken = getattr(err, "status_code", None) is None and _BODY_ERRORS.search(str(err))
                if not broken or attempt == policy.max_retries:
                    raise
                delay = min(policy.backoff_factor * 2**attempt, policy.backoff_max)
                logger.warning(
                    "STAC response from %s broke off (attempt %d/%d), retrying in %.1f s",
                    redact_href(href),
                    attempt + 1,
                    policy.max_retries + 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class _CappedRetry(Retry):
    """A ``Retry`` that waits no longer than ``backoff_max`` even when told ``Retry-After``."""

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, self.backoff_max)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The items of one sensor's search and what was left out, for the build summary.

    Attributes:
        sensor: The sensor.
        provider: The provider whose profile normalised the items.
        collection: The collection searched.
        catalog_url: The STAC API searched.
        items: Kept raw item dicts (signed when a signer was given), by datetime then id.
        dropped: Returned items that were left out, with the reason.
        cloud_filter: Where the cloud filter ran.
        pages: Result pages read.
        fetched: Items the API returned over all pages.
        warnings: Profile warnings that apply (e.g. unreliable radiometry).
    """

    sensor: SensorId
    provider: Provider
    collection: str
    catalog_url: str
    items: tuple[dict[str, Any], ...]
    dropped: tuple[DroppedItem, ...] = ()
    cloud_filter: CloudFilter = CloudFilter.NONE
    pages: int = 0
    fetched: int = 0
    warnings: tuple[str, ...] = field(default=())

    @property
    def ids(self) -> list[str]:
        """Ids of the kept items, in order."""
        return [str(item["id"]) for item in self.items]

    def drop_counts(self) -> dict[DropReason, int]:
        """How many items each reason dropped (reasons that dropped none are absent)."""
        return dict(Counter(d.reason for d in self.dropped))

    def summary(self) -> str:
        """One line for the build summary, e.g. ``sentinel-2-l2a: 4 of 20 items (...)``."""
        counts = ", ".join(f"{n} {reason.value}" for reason, n in self.drop_counts().items())
        dropped = f"; dropped {counts}" if counts else ""
        return (
            f"{self.sensor.value} ({self.collection}): kept {len(self.items)} of "
            f"{self.fetched} items from {self.pages} page(s), cloud filter "
            f"{self.cloud_filter.value}{dropped}"
        )


# --------------------------------------------------------------------------------------------
# Opening the client
# --------------------------------------------------------------------------------------------


def open_client(
    url: str,
    *,
    retry: RetryPolicy | None = None,
    headers: Mapping[str, str] | None = None,
    provider: Provider = Provider.GENERIC,
) -> Client:
    """Open a STAC API with retries on transient faults.

    Args:
        url: Landing page URL of the STAC API.
        retry: Retry and timeout policy; default :class:`RetryPolicy()`.
        headers: Extra headers sent with every request (credentials); never logged by eoforge.
        provider: The provider, named in error messages.

    Returns:
        The client; close ``client._stac_io.session`` when done (``search_sensor`` does).

    Raises:
        TransientError: The API stayed unreachable or kept answering 429/5xx.
        InvalidInputError: The API refused the request (400, 401, 403) or is not a STAC API.
        NotFoundError: Nothing at the URL (404).
    """
    policy = retry or RetryPolicy()
    timeout = (policy.connect_timeout_s, policy.read_timeout_s)
    stac_io = _BodyRetryingStacApiIO(
        policy, headers=dict(headers or {}), timeout=timeout, max_retries=policy.to_urllib3()
    )
    try:
        return Client.open(url, headers=dict(headers or {}), stac_io=stac_io, timeout=timeout)
    except BaseException as exc:
        stac_io.session.close()
        error = _translate(exc, url, provider, policy)
        if error is None:
            raise
        raise error from exc


# --------------------------------------------------------------------------------------------
# Searching
# --------------------------------------------------------------------------------------------


def search_sensor(
    sensor_cfg: SensorSearchConfig,
    aoi: BaseGeometry,
    start: datetime,
    end: datetime,
    *,
    sign: Signer | None = None,
    client_factory: ClientFactory | None = None,
    max_items: int | None = None,
    catalog_url: str | None = None,
    retry: RetryPolicy | None = None,
    page_size: int = 100,
) -> list[dict[str, Any]]:
    """Search one sensor's collection and return its usable items (see the module docstring).

    The arguments are those of :func:`search_sensor_detailed`.

    Returns:
        Raw STAC item dicts, signed when ``sign`` is given, sorted by datetime then id.
    """
    result = search_sensor_detailed(
        sensor_cfg,
        aoi,
        start,
        end,
        sign=sign,
        client_factory=client_factory,
        max_items=max_items,
        catalog_url=catalog_url,
        retry=retry,
        page_size=page_size,
    )
    return list(result.items)


def search_sensor_detailed(
    sensor_cfg: SensorSearchConfig,
    aoi: BaseGeometry,
    start: datetime,
    end: datetime,
    *,
    sign: Signer | None = None,
    client_factory: ClientFactory | None = None,
    max_items: int | None = None,
    catalog_url: str | None = None,
    retry: RetryPolicy | None = None,
    page_size: int = 100,
) -> SearchResult:
    """Search one sensor's collection; the kept items plus what was dropped and why.

    Args:
        sensor_cfg: The recipe sensor (id, catalog, provider, collection, max_cloud_cover).
        aoi: Area of interest in WGS84 (lon/lat); the search sends its bounding box and keeps
            the items whose footprint intersects the geometry itself.
        start: First instant searched (inclusive); a naive datetime is taken as UTC.
        end: First instant after the search (exclusive), as in recipe periods.
        sign: Called on every kept item dict (Planetary Computer SAS tokens); none by default.
        client_factory: Opens the client for a URL (custom headers, auth); default
            :func:`open_client` with ``retry``. The client's session is closed afterwards.
        max_items: Stop after this many items returned by the API (before dropping).
        catalog_url: The STAC API to search when ``sensor_cfg.catalog`` is ``archive:PATH``
            (the caller serves the archive with ``serve_archive`` and passes its ``stac_url``);
            overrides ``sensor_cfg.catalog`` when given.
        retry: Retry policy of the default client factory.
        page_size: Items per page asked of the API (``limit``).

    Returns:
        The :class:`SearchResult`.

    Raises:
        NotFoundError: No item is left (the message names sensor, collection, catalog, AOI
            bbox, dates and the drops), or the API answered 404.
        TransientError: The API stayed unreachable or kept answering 429/5xx after retries.
        InvalidInputError: Bad arguments, an ``archive:`` catalog without ``catalog_url``, or the
            API refused the search (400; 401/403: it needs credentials or signing).
    """
    start_utc, end_utc = _utc(start), _utc(end)
    if end_utc <= start_utc:
        raise InvalidInputError(
            f"search end {end_utc.isoformat()} is not after start {start_utc.isoformat()}",
            where=f"search of {sensor_cfg.id}",
            fix="pass an end after the start (end is exclusive)",
        )
    if aoi.is_empty:
        raise InvalidInputError(
            "the AOI is empty", where=f"search of {sensor_cfg.id}", fix="pass a WGS84 polygon"
        )
    profile = get_profile(sensor_cfg.id, sensor_cfg.provider, sensor_cfg.collection)
    collection = sensor_cfg.collection or profile.collection
    url = _catalog_url(sensor_cfg, catalog_url)
    policy = retry or RetryPolicy()
    max_cloud = None if _is_sar(profile) else float(sensor_cfg.max_cloud_cover)
    if max_cloud is not None and max_cloud >= 100:
        max_cloud = None
    if profile.provider is Provider.PLANETARY_COMPUTER and sign is None:
        logger.warning(
            "%s: Planetary Computer asset hrefs stay unsigned; pass "
            "sign=planetary_computer.sign_inplace to read them",
            sensor_cfg.id,
        )
    factory = client_factory or functools.partial(
        open_client, retry=policy, provider=profile.provider
    )
    try:
        client = factory(url)
    except Exception as exc:
        error = _translate(exc, url, profile.provider, policy)
        if error is None:
            raise
        raise error from exc
    try:
        mode, params = _cloud_params(client, url, max_cloud)
        pages, raw = _fetch(
            client,
            url,
            profile,
            policy,
            collection=collection,
            bbox=aoi.bounds,
            interval=f"{_rfc3339(start_utc)}/{_rfc3339(end_utc - timedelta(milliseconds=1))}",
            limit=page_size,
            max_items=max_items,
            extra=params,
        )
    finally:
        _close(client)
    kept, dropped = normalise_items(
        raw,
        profile=profile,
        collection=collection,
        aoi=aoi,
        start=start_utc,
        end=end_utc,
        max_cloud_cover=max_cloud,
    )
    if sign is not None:
        kept = [_apply_signer(sign, item) for item in kept]
    warnings = tuple(w for w in (profile.warning,) if w and not profile.reliable_radiometry)
    for warning in warnings:
        logger.warning("%s (%s): %s", profile.sensor.value, collection, warning)
    result = SearchResult(
        sensor=profile.sensor,
        provider=profile.provider,
        collection=collection,
        catalog_url=url,
        items=tuple(kept),
        dropped=tuple(dropped),
        cloud_filter=mode,
        pages=pages,
        fetched=len(raw),
        warnings=warnings,
    )
    logger.info("%s", result.summary())
    if not kept:
        raise _empty_error(result, aoi, start_utc, end_utc, sensor_cfg.max_cloud_cover, max_cloud)
    return result


def normalise_items(
    items: Iterable[Mapping[str, Any]],
    *,
    profile: SensorProfile,
    collection: str,
    aoi: BaseGeometry,
    start: datetime,
    end: datetime,
    max_cloud_cover: float | None,
) -> tuple[list[dict[str, Any]], list[DroppedItem]]:
    """Keep the items a build can use; pure (no I/O), so the flow and tests can call it alone.

    Checks, in order: repeated id, other collection, platform (``profile.supports_item``),
    datetime in ``[start, end)``, footprint intersecting ``aoi``, and ``eo:cloud_cover <=
    max_cloud_cover`` (an item without a cloud cover fails it, as it fails a server filter).

    Args:
        items: Raw STAC item dicts.
        profile: The sensor profile.
        collection: The collection asked for.
        aoi: Area of interest in WGS84.
        start: First instant (inclusive, UTC).
        end: First instant after (exclusive, UTC).
        max_cloud_cover: Highest cloud cover in percent, or None for no cloud check (SAR).

    Returns:
        ``(kept, dropped)``: kept raw dicts (the same objects) sorted by datetime then id, and
        the dropped items in input order.
    """
    kept: list[dict[str, Any]] = []
    dropped: list[DroppedItem] = []
    seen: set[str] = set()
    for item in items:
        item_id = str(item.get("id", ""))
        reason = _drop_reason(
            item, seen, profile, collection, aoi, _utc(start), _utc(end), max_cloud_cover
        )
        seen.add(item_id)
        if reason is None:
            kept.append(dict(item) if not isinstance(item, dict) else item)
        else:
            dropped.append(DroppedItem(item_id, *reason))
    kept.sort(key=lambda it: (_item_time(it) or _EPOCH, str(it.get("id", ""))))
    return kept, dropped


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


def _catalog_url(sensor_cfg: SensorSearchConfig, catalog_url: str | None) -> str:
    if catalog_url:
        return catalog_url
    if sensor_cfg.catalog.startswith(ARCHIVE_PREFIX):
        raise InvalidInputError(
            f"catalog '{sensor_cfg.catalog}' is an offline archive, not a STAC API URL",
            where=f"search of {sensor_cfg.id}",
            fix="serve it with pipelines.archive.serve.serve_archive and pass its stac_url "
            "as catalog_url",
        )
    return sensor_cfg.catalog


def _is_sar(profile: SensorProfile) -> bool:
    return profile.radiometry.kind in _SAR_RULES


def _declares(client: Client, extension: str | None) -> bool:
    """Whether the API declares item search (or ``item-search#<extension>``) in any STAC API 1.x.

    pystac-client 0.9 recognises only ``v1.0.*`` URIs; stac-fastapi 6+ declares ``v1.1.0``.
    """
    suffix = "item-search" + (f"#{extension}" if extension else "")
    return any(
        (match := _API_URI.fullmatch(uri)) is not None and match["rest"] == suffix
        for uri in client.get_conforms_to()
    )


def _let_pystac_client_use(client: Client, conformance: ConformanceClasses) -> None:
    # Without a v1.0 URI pystac-client warns DoesNotConformTo or refuses to search.
    if not client.conforms_to(conformance):
        client.add_conforms_to(conformance.name)


def _cloud_params(
    client: Client, url: str, max_cloud: float | None
) -> tuple[CloudFilter, dict[str, Any]]:
    """Where the cloud filter runs and the search parameters that carry it."""
    if max_cloud is None:
        return CloudFilter.NONE, {}
    if conforms_to_filter(client):
        _let_pystac_client_use(client, ConformanceClasses.FILTER)
        return CloudFilter.CQL2, {"filter": cloud_filter(max_cloud), "filter_lang": "cql2-json"}
    if _declares(client, "query"):
        _let_pystac_client_use(client, ConformanceClasses.QUERY)
        return CloudFilter.QUERY, {"query": {CLOUD_PROPERTY: {"lte": max_cloud}}}
    logger.info(
        "%s conforms to neither the Filter nor the Query extension; filtering %s <= %g on the "
        "client",
        url,
        CLOUD_PROPERTY,
        max_cloud,
    )
    return CloudFilter.CLIENT, {}


def _fetch(
    client: Client,
    url: str,
    profile: SensorProfile,
    policy: RetryPolicy,
    *,
    collection: str,
    bbox: tuple[float, float, float, float],
    interval: str,
    limit: int,
    max_items: int | None,
    extra: dict[str, Any],
) -> tuple[int, list[dict[str, Any]]]:
    """Every page of the search: ``(pages read, raw items)``."""
    if not _declares(client, None):
        raise InvalidInputError(
            "the STAC API does not offer item search (no item-search conformance class)",
            where=url,
            fix="point the recipe's catalog at a STAC API landing page, e.g. "
            "https://earth-search.aws.element84.com/v1",
        )
    _let_pystac_client_use(client, ConformanceClasses.ITEM_SEARCH)
    pages = 0
    items: list[dict[str, Any]] = []
    try:
        search = client.search(
            method="POST",
            collections=[collection],
            bbox=list(bbox),
            datetime=interval,
            limit=limit,
            max_items=max_items,
            **extra,
        )
        for page in search.pages_as_dicts():
            pages += 1
            items.extend(f for f in page.get("features") or () if isinstance(f, dict))
    except Exception as exc:
        error = _translate(exc, url, profile.provider, policy)
        if error is None:
            raise
        raise error from exc
    return pages, items


def _close(client: Client) -> None:
    stac_io = getattr(client, "_stac_io", None)
    session = getattr(stac_io, "session", None)
    if session is not None:
        session.close()


def _translate(
    exc: BaseException, url: str, provider: Provider, policy: RetryPolicy
) -> EoforgeError | None:
    """The eoforge error for a failure of pystac-client; None to let ``exc`` pass unchanged."""
    if isinstance(exc, EoforgeError) or not isinstance(exc, Exception):
        return None
    who = provider.value if provider is not Provider.GENERIC else "the"
    if type(exc).__name__ == "ClientTypeError":
        # pystac-client found JSON, but no STAC Catalog, at the URL.
        return InvalidInputError(
            f"the URL is not a STAC API ({' '.join(str(exc).split())[:160]})",
            where=url,
            fix="give the STAC API's landing page (root) URL, e.g. "
            "https://earth-search.aws.element84.com/v1",
        )
    if isinstance(exc, APIError):
        status = getattr(exc, "status_code", None)
        text = " ".join(str(exc).split())[:200]
        if status is None:
            return TransientError(
                f"could not reach the STAC API after {policy.max_retries} retries ({text})",
                where=url,
                fix="check the network and the catalog URL, then run again",
            )
        if status in TRANSIENT_STATUSES:
            return TransientError(
                f"the STAC API answered HTTP {status} after {policy.max_retries} retries",
                where=url,
                fix="the service is busy or down; run again later",
            )
        if status in (401, 403):
            return InvalidInputError(
                f"{who} STAC API refused the request (HTTP {status}): it needs credentials "
                "or signing",
                where=url,
                fix=f"pass credentials for {provider.value} through client_factory (e.g. "
                "open_client with headers=...), or use a catalog that needs none",
            )
        if status == 404:
            return NotFoundError(
                "the STAC API has no such endpoint or collection (HTTP 404)",
                where=url,
                fix="check the catalog URL (the API landing page) and the collection id",
            )
        return InvalidInputError(
            f"the STAC API rejected the search (HTTP {status}: {text})",
            where=url,
            fix="check the collection id, the AOI and the dates of this sensor",
        )
    if isinstance(exc, pystac.STACTypeError | ValueError | KeyError):
        return InvalidInputError(
            f"the answer is not a STAC API landing page or search page ({exc})",
            where=url,
            fix="point the catalog at a STAC API landing page",
        )
    return None


def _empty_error(
    result: SearchResult,
    aoi: BaseGeometry,
    start: datetime,
    end: datetime,
    asked_cloud: float,
    max_cloud: float | None,
) -> NotFoundError:
    bbox = ", ".join(f"{v:.4f}" for v in aoi.bounds)
    counts = result.drop_counts()
    found = (
        f"; the API returned {result.fetched}, all dropped: "
        + ", ".join(f"{n} {reason.value}" for reason, n in counts.items())
        if counts
        else ""
    )
    fixes = ["widen the dates or the AOI"]
    if max_cloud is not None:
        fixes.append(f"raise max_cloud_cover (now {asked_cloud:g})")
    fixes.append(f"check that collection '{result.collection}' covers this area and time")
    return NotFoundError(
        f"no {result.sensor.value} items in collection '{result.collection}' for AOI bbox "
        f"[{bbox}] from {start.isoformat()} to {end.isoformat()} (end exclusive){found}",
        where=result.catalog_url,
        fix=", or ".join(fixes),
    )


def _drop_reason(
    item: Mapping[str, Any],
    seen: set[str],
    profile: SensorProfile,
    collection: str,
    aoi: BaseGeometry,
    start: datetime,
    end: datetime,
    max_cloud: float | None,
) -> tuple[DropReason, str] | None:
    props: Mapping[str, Any] = item.get("properties") or {}
    if str(item.get("id", "")) in seen:
        return DropReason.DUPLICATE, "id returned before"
    item_collection = item.get("collection")
    if item_collection is not None and item_collection != collection:
        return DropReason.OTHER_COLLECTION, str(item_collection)
    if not profile.supports_item(item):
        return DropReason.UNSUPPORTED_PLATFORM, str(props.get("platform") or "no platform")
    when = _item_time(item)
    if when is not None and not start <= when < end:
        return DropReason.OUTSIDE_DATES, when.isoformat()
    footprint = _footprint(item)
    if footprint is not None and not footprint.intersects(aoi):
        return DropReason.OUTSIDE_AOI, ", ".join(f"{v:.4f}" for v in footprint.bounds)
    if max_cloud is not None:
        cloud = _number(props.get(CLOUD_PROPERTY))
        if cloud is None:
            return DropReason.CLOUD, f"no {CLOUD_PROPERTY}"
        if cloud > max_cloud:
            return DropReason.CLOUD, f"{cloud:g} > {max_cloud:g}"
    return None


def _footprint(item: Mapping[str, Any]) -> BaseGeometry | None:
    geometry = item.get("geometry")
    if isinstance(geometry, Mapping):
        try:
            return shape(geometry)
        except (ValueError, TypeError, AttributeError, KeyError):
            pass
    bbox = item.get("bbox")
    if isinstance(bbox, list | tuple) and len(bbox) in (4, 6):
        west, south = bbox[0], bbox[1]
        east, north = bbox[len(bbox) // 2], bbox[len(bbox) // 2 + 1]
        if west <= east:
            return box(west, south, east, north)
    return None


def _number(value: Any) -> float | None:
    """A float from a number or numeric string (DLR writes ``"72"``), else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _item_time(item: Mapping[str, Any]) -> datetime | None:
    props: Mapping[str, Any] = item.get("properties") or {}
    for key in ("datetime", "start_datetime"):
        value = props.get(key)
        if isinstance(value, str):
            parsed = _parse_time(value)
            if parsed is not None:
                return parsed
    return None


def _parse_time(text: str) -> datetime | None:
    """RFC 3339 to an aware UTC datetime; fractions longer than microseconds are cut."""
    value = text.strip().replace("z", "Z")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    head, dot, rest = value.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return _utc(parsed)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _rfc3339(when: datetime) -> str:
    when = _utc(when)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _apply_signer(sign: Signer, item: dict[str, Any]) -> dict[str, Any]:
    signed = sign(item)
    return item if signed is None else signed
