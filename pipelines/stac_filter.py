"""STAC item search with a scene cloud filter and sort that works on any STAC API.

Servers differ: stac-fastapi-pgstac (Planetary Computer) and Earth Search conform to the FILTER
(CQL2) and SORT extensions; ``rustac serve`` and many small catalogs do not. :func:`search_items`
asks the server to filter and sort when it conforms, and otherwise pages through the plain
bbox/datetime/collections result and filters and sorts the items here, saying so in the log. The
two paths return the same items in the same order (missing values sort last).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pystac_client import Client
from pystac_client.conformance import ConformanceClasses

__all__ = [
    "CLOUD_PROPERTY",
    "cloud_filter",
    "conforms_to_filter",
    "conforms_to_sort",
    "filter_cloud",
    "search_items",
    "sort_items",
]

logger = logging.getLogger(__name__)

CLOUD_PROPERTY = "eo:cloud_cover"
_TOP_LEVEL = frozenset({"id", "collection"})
_ITEM_SEARCH_EXTENSION = re.compile(
    r"https://api\.stacspec\.org/v1\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.]+)?/item-search#(?P<ext>[a-z-]+)"
)

Item = dict[str, Any]


def _declares(client: Client, extension: str) -> bool:
    """True when the API declares ``item-search#<extension>`` in any STAC API 1.x version.

    pystac-client 0.9 recognises only ``v1.0.*`` URIs, while stac-fastapi 6+ declares Sort as
    ``https://api.stacspec.org/v1.1.0/item-search#sort``.
    """
    return any(
        (match := _ITEM_SEARCH_EXTENSION.fullmatch(uri)) is not None and match["ext"] == extension
        for uri in client.get_conforms_to()
    )


def _let_pystac_client_use(client: Client, conformance: ConformanceClasses) -> None:
    # Without the v1.0 URI pystac-client warns DoesNotConformTo (an error under -W error).
    if not client.conforms_to(conformance):
        client.add_conforms_to(conformance.name)


def conforms_to_filter(client: Client) -> bool:
    """True when the API declares the STAC API Filter (CQL2) conformance class for item search."""
    return _declares(client, "filter")


def conforms_to_sort(client: Client) -> bool:
    """True when the API declares the STAC API Sort conformance class for item search."""
    return _declares(client, "sort")


def cloud_filter(max_cloud: float) -> dict[str, Any]:
    """CQL2-JSON for ``eo:cloud_cover <= max_cloud`` (percent, 0-100)."""
    return {"op": "<=", "args": [{"property": CLOUD_PROPERTY}, max_cloud]}


def filter_cloud(items: Iterable[Item], max_cloud: float) -> list[Item]:
    """Keep the items whose ``eo:cloud_cover`` is at most ``max_cloud``, as CQL2 ``<=`` would.

    Items without the property are dropped (a CQL2 comparison with a missing value is not true).

    Args:
        items: STAC Items as dicts.
        max_cloud: Highest scene cloud cover kept, in percent (0-100).

    Returns:
        The kept items, in their input order.
    """
    kept: list[Item] = []
    for item in items:
        value = item.get("properties", {}).get(CLOUD_PROPERTY)
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= max_cloud:
            kept.append(item)
    return kept


def _field_value(item: Item, name: str) -> Any:
    name = name.removeprefix("properties.")
    if name in _TOP_LEVEL:
        return item.get(name)
    return item.get("properties", {}).get(name)


def sort_items(items: Iterable[Item], sortby: Sequence[str]) -> list[Item]:
    """Sort items as a STAC API would for ``sortby`` such as ``["-datetime", "+id"]``.

    Args:
        items: STAC Items as dicts.
        sortby: Fields with an optional ``+`` (ascending, the default) or ``-`` prefix; a name is
            a property (``datetime``, ``eo:cloud_cover``, optionally ``properties.``-prefixed) or
            ``id``/``collection``.

    Returns:
        A new sorted list; items missing a field sort after those that have it.
    """
    result = list(items)
    for spec in reversed(sortby):  # stable sorts, least significant key first
        descending = spec.startswith("-")
        name = spec.lstrip("+-")
        present = [i for i in result if _field_value(i, name) is not None]
        missing = [i for i in result if _field_value(i, name) is None]
        present.sort(key=functools.partial(_field_value, name=name), reverse=descending)
        result = present + missing
    return result


def search_items(
    client: Client,
    *,
    collections: Sequence[str],
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    max_cloud: float | None = None,
    sortby: Sequence[str] | None = None,
    limit: int = 100,
    max_items: int | None = None,
) -> list[Item]:
    """Search items, filtering ``eo:cloud_cover`` and sorting on the server when it can.

    Args:
        client: An open pystac-client ``Client``.
        collections: Collection ids to search.
        bbox: ``(west, south, east, north)`` in WGS84 degrees.
        datetime: A STAC datetime or interval, e.g. ``"2024-01-01/2024-01-31"``.
        max_cloud: Highest scene cloud cover, in percent; ``None`` for no cloud filter.
        sortby: Sort fields as in :func:`sort_items`; ``None`` keeps the server's order.
        limit: Page size asked of the server (paging follows ``next`` links).
        max_items: Stop after this many matching items; ``None`` for all.

    Returns:
        The matching items as dicts, with the server's asset hrefs.

    When the server conforms to FILTER or SORT in a version pystac-client does not recognise
    (STAC API 1.1), the class is added to ``client``'s conformance list so it sends the request.
    """
    server_filter = max_cloud is not None and conforms_to_filter(client)
    server_sort = bool(sortby) and conforms_to_sort(client)
    where = client.self_href or "STAC API"
    if max_cloud is not None and not server_filter:
        logger.info(
            "server %s does not conform to FILTER; filtering %s client-side",
            where,
            CLOUD_PROPERTY,
        )
    if sortby and not server_sort:
        logger.info("server %s does not conform to SORT; sorting client-side", where)
    if server_filter:
        _let_pystac_client_use(client, ConformanceClasses.FILTER)
    if server_sort:
        _let_pystac_client_use(client, ConformanceClasses.SORT)
    client_side = (max_cloud is not None and not server_filter) or (sortby and not server_sort)
    search = client.search(
        collections=list(collections),
        bbox=list(bbox) if bbox is not None else None,
        datetime=datetime,
        filter=cloud_filter(max_cloud) if server_filter and max_cloud is not None else None,
        sortby=list(sortby) if server_sort and sortby else None,
        limit=limit,
        # Filtering or sorting here needs every candidate before truncating.
        max_items=None if client_side else max_items,
    )
    items: list[Item] = list(search.items_as_dicts())
    if max_cloud is not None and not server_filter:
        items = filter_cloud(items, max_cloud)
    if sortby and not server_sort:
        items = sort_items(items, sortby)
    return items[:max_items] if max_items is not None else items
