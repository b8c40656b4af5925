"""Validate STAC Items and Collections against JSON Schemas resolved offline.

The schemas live in a local directory laid out like ``../shared/fixtures/stac-schemas``::

    stac-spec/v1.0.0/{item,collection,catalog}-spec/json-schema/*.json   (STAC 1.0.0 core)
    v1.1.0/*.json                                                         (STAC 1.1.0 core)
    extensions/<name>/<version>/schema.json                               (stac-extensions)
    geojson/{Feature,Geometry}.json
    json-schema/draft-07.json

Every schema is registered under the URL it is published at, so ``$ref`` and ``stac_extensions``
URLs resolve to local files; any other URL raises instead of reaching the network.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT7

from schemas.errors import InvalidInputError, NotFoundError

__all__ = ["schema_url_to_path", "validate_collection", "validate_item"]

log = logging.getLogger(__name__)

_STACSPEC = "https://schemas.stacspec.org/"
_EXTENSIONS = "https://stac-extensions.github.io/"
_GEOJSON = "https://geojson.org/schema/"
_DRAFT7 = "http://json-schema.org/draft-07/schema"
_MAX_REPORTED = 5


def schema_url_to_path(url: str, schemas_root: Path) -> Path | None:
    """Map a published schema URL to its file under ``schemas_root``.

    Args:
        url: A schema URL, with or without a trailing ``#``.
        schemas_root: Root of the local schema tree.

    Returns:
        The local path (which may not exist), or ``None`` for a URL outside the known hosts.
    """
    url = url.split("#", 1)[0]
    if url.startswith(_STACSPEC):
        rest = url[len(_STACSPEC) :]
        version, _, tail = rest.partition("/")
        if version == "v1.0.0":
            return schemas_root / "stac-spec" / "v1.0.0" / tail
        # The 1.1.0 core schemas are stored flat (as rustac vendors them).
        return schemas_root / version / Path(tail).name
    if url.startswith(_EXTENSIONS):
        parts = url[len(_EXTENSIONS) :].split("/")
        if len(parts) == 3:
            name, version, _ = parts
            return schemas_root / "extensions" / name / version / "schema.json"
        return None
    if url.startswith(_GEOJSON):
        return schemas_root / "geojson" / url[len(_GEOJSON) :]
    if url.rstrip("/") == _DRAFT7:
        return schemas_root / "json-schema" / "draft-07.json"
    return None


def _canonical_url(path: Path, schemas_root: Path) -> str | None:
    rel = path.relative_to(schemas_root).as_posix()
    parts = rel.split("/")
    if parts[0] == "stac-spec":
        return _STACSPEC + "/".join(parts[1:])
    if parts[0] == "extensions" and len(parts) == 4:
        return f"{_EXTENSIONS}{parts[1]}/{parts[2]}/schema.json"
    if parts[0] == "geojson":
        return _GEOJSON + parts[1]
    if parts[0] == "json-schema":
        return _DRAFT7
    if parts[0].startswith("v1.") and len(parts) == 2:
        spec = {
            "item.json": "item-spec",
            "collection.json": "collection-spec",
            "catalog.json": "catalog-spec",
        }.get(parts[1], "item-spec")
        return f"{_STACSPEC}{parts[0]}/{spec}/json-schema/{parts[1]}"
    return None


@functools.lru_cache(maxsize=4)
def _registry(schemas_root: Path) -> Registry[Any]:
    """Build a registry of every schema under ``schemas_root``, keyed by its published URL."""
    if not schemas_root.is_dir():
        raise NotFoundError(
            "STAC schema directory not found",
            where=str(schemas_root),
            fix="pass the directory holding stac-spec/, v1.1.0/ and extensions/",
        )
    pairs: list[tuple[str, Resource[Any]]] = []
    for path in sorted(schemas_root.rglob("*.json")):
        url = _canonical_url(path, schemas_root)
        if url is None:
            continue
        contents = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(contents, dict):
            # Some published schemas carry a wrong $id (e.g. processing v1.1.0 claims v1.0.0):
            # the URL a schema is fetched from is what relative $refs must resolve against.
            contents["$id"] = url
        resource = Resource.from_contents(contents, default_specification=DRAFT7)
        pairs.append((url, resource))
        pairs.append((url + "#", resource))

    # A plain Registry has no retrieval: an unknown URI fails instead of reaching the network.
    return Registry().with_resources(pairs)


def _schema(url: str, schemas_root: Path, where: str) -> dict[str, Any]:
    path = schema_url_to_path(url, schemas_root)
    if path is None or not path.is_file():
        raise NotFoundError(
            f"no local copy of schema {url}",
            where=where,
            fix=f"add it under {schemas_root} or drop the extension from stac_extensions",
        )
    contents: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    contents["$id"] = url.split("#", 1)[0]
    return contents


def _depth(err: jsonschema.exceptions.ValidationError) -> tuple[int, int]:
    """Rank sub-errors: the deepest path first, a ``const`` mismatch (wrong branch) last."""
    return (len(err.absolute_path), int(err.validator != "const"))


def _check(
    instance: Mapping[str, Any],
    schema_urls: Iterable[str],
    root: Path,
    where: str,
    skip_unavailable: bool,
) -> None:
    registry = _registry(root.resolve())
    problems: list[str] = []
    for i, url in enumerate(schema_urls):
        local = schema_url_to_path(url, root.resolve())
        if skip_unavailable and i > 0 and (local is None or not local.is_file()):
            log.debug("%s: no local copy of %s, not checked", where, url)
            continue
        schema = _schema(url, root.resolve(), where)
        validator = jsonschema.Draft7Validator(schema, registry=registry)
        try:
            errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        except Unresolvable as exc:
            raise NotFoundError(
                f"schema {url} references a schema with no local copy ({exc})",
                where=where,
                fix=f"add the referenced schema under {root}",
            ) from None
        for err in errors:
            leaf = err
            while leaf.context:  # anyOf/oneOf: report the most relevant sub-error
                leaf = max(leaf.context, key=_depth)
            path = "/".join(str(p) for p in leaf.absolute_path) or "(root)"
            problems.append(f"{path}: {leaf.message[:200]} [{url.rsplit('/', 3)[-3]}]")
    if problems:
        shown = "; ".join(problems[:_MAX_REPORTED])
        more = f" (+{len(problems) - _MAX_REPORTED} more)" if len(problems) > _MAX_REPORTED else ""
        raise InvalidInputError(
            f"not valid STAC: {shown}{more}",
            where=where,
            fix="correct the listed fields so they match the STAC and extension schemas",
        )


def _core_url(obj: Mapping[str, Any], kind: str) -> str:
    version = str(obj.get("stac_version", "1.0.0"))
    return f"{_STACSPEC}v{version}/{kind}-spec/json-schema/{kind}.json"


def validate_item(
    item: Mapping[str, Any], schemas_root: Path, *, skip_unavailable: bool = False
) -> None:
    """Validate a STAC Item against its core schema and every extension it declares.

    Args:
        item: The Item as a JSON-like dict.
        schemas_root: Local schema tree (see the module docstring).
        skip_unavailable: Skip declared extensions that have no local copy (e.g. the USGS
            landsat extension) instead of raising; the core schema is always checked.

    Raises:
        InvalidInputError: If the Item breaks a schema; the message lists the failing fields.
        NotFoundError: If a needed schema has no local copy.
    """
    where = f"STAC item {item.get('id', '?')!s}"
    urls = [_core_url(item, "item"), *[str(u) for u in item.get("stac_extensions", [])]]
    _check(item, urls, schemas_root, where, skip_unavailable)


def validate_collection(
    collection: Mapping[str, Any], schemas_root: Path, *, skip_unavailable: bool = False
) -> None:
    """Validate a STAC Collection against its core schema and every extension it declares.

    Args:
        collection: The Collection as a JSON-like dict.
        schemas_root: Local schema tree (see the module docstring).
        skip_unavailable: Skip declared extensions that have no local copy instead of raising.

    Raises:
        InvalidInputError: If the Collection breaks a schema.
        NotFoundError: If a needed schema has no local copy.
    """
    where = f"STAC collection {collection.get('id', '?')!s}"
    urls = [
        _core_url(collection, "collection"),
        *[str(u) for u in collection.get("stac_extensions", [])],
    ]
    _check(collection, urls, schemas_root, where, skip_unavailable)
