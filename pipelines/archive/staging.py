"""Staged copies of an archive's STAC documents, with hrefs pointing at the range server.

The archive keeps asset hrefs relative to its root (:mod:`schemas.archive`). Before a STAC API
loads them, :func:`stage_stac_files` writes copies whose relative hrefs are absolute URLs under
the range server, and drops the stored hierarchy links (``self``, ``root``, ``parent``, ...) that
the API writes itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schemas.archive import COLLECTIONS_DIR, items_path
from schemas.errors import InvalidInputError

__all__ = [
    "ARCHIVE_SOURCE_PREFIX",
    "StacFiles",
    "archive_dir_from_source",
    "check_archive",
    "stage_stac_files",
]

#: Recipe source prefix naming a local offline archive, e.g. ``archive:./demo-archive``.
ARCHIVE_SOURCE_PREFIX = "archive:"
_CREATE_FIX = "create one with `eoforge archive create DIR --preset tiny`, then pass that DIR"
#: Link relations that describe where a stored file sat; the STAC API writes its own.
_HIERARCHY_RELS = frozenset({"self", "root", "parent", "collection", "item", "items", "child"})


def archive_dir_from_source(source: str) -> Path | None:
    """Return the archive folder of an ``archive:DIR`` recipe source, or ``None`` for a URL."""
    if source.startswith(ARCHIVE_SOURCE_PREFIX):
        return Path(source[len(ARCHIVE_SOURCE_PREFIX) :]).expanduser()
    return None


def check_archive(root: Path) -> list[str]:
    """Check that ``root`` looks like an offline archive and list its collection ids.

    Args:
        root: The archive folder.

    Returns:
        Collection ids, sorted, each with a ``stac/collections/<id>.json`` file.

    Raises:
        InvalidInputError: ``root`` is missing, not a folder, or has no collections.
    """
    if not root.exists():
        raise InvalidInputError("archive folder does not exist", where=str(root), fix=_CREATE_FIX)
    if not root.is_dir():
        raise InvalidInputError("archive path is not a folder", where=str(root), fix=_CREATE_FIX)
    collections = sorted(p.stem for p in (root / COLLECTIONS_DIR).glob("*.json"))
    if not collections:
        raise InvalidInputError(
            f"not an eoforge offline archive: no {COLLECTIONS_DIR}/*.json",
            where=str(root),
            fix=_CREATE_FIX,
        )
    return collections


@dataclass(frozen=True)
class StacFiles:
    """The staged, href-rewritten copies of an archive's STAC documents.

    Attributes:
        collections: One compact one-line JSON file per collection (valid JSON and NDJSON).
        items: One NDJSON file per collection that has items.
        item_count: Number of items over all files.
    """

    collections: tuple[Path, ...]
    items: tuple[Path, ...]
    item_count: int


def _absolute_href(href: str, base_url: str) -> str:
    if urlsplit(href).scheme or href.startswith("/"):
        return href
    return f"{base_url}/{href.removeprefix('./')}"


def _rewrite(doc: dict[str, Any], base_url: str) -> dict[str, Any]:
    """Copy of a STAC document with asset hrefs made absolute and stored hierarchy links dropped."""
    out = dict(doc)
    assets = doc.get("assets")
    if isinstance(assets, Mapping):
        out["assets"] = {
            key: {**asset, "href": _absolute_href(str(asset["href"]), base_url)}
            if isinstance(asset, Mapping) and "href" in asset
            else asset
            for key, asset in assets.items()
        }
    links = doc.get("links")
    if isinstance(links, list):
        out["links"] = [
            link
            for link in links
            if not (isinstance(link, Mapping) and link.get("rel") in _HIERARCHY_RELS)
        ]
    return out


def _reject_constant(name: str) -> Any:
    # Python's json writes NaN/Infinity, which are not JSON: STAC servers refuse the file.
    raise ValueError(f"{name} is not valid JSON (a NaN or infinite number)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"cannot read STAC JSON ({exc})", where=str(path), fix=_CREATE_FIX
        ) from exc
    if not isinstance(doc, dict):
        raise InvalidInputError("STAC document is not a JSON object", where=str(path))
    return doc


def _read_items(path: Path, collection: str) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line, parse_constant=_reject_constant)
            except ValueError as exc:
                raise InvalidInputError(
                    f"invalid JSON line ({exc})", where=f"{path}:{lineno}", fix=_CREATE_FIX
                ) from exc
            if not isinstance(item, dict) or item.get("type") != "Feature":
                raise InvalidInputError("line is not a STAC Item", where=f"{path}:{lineno}")
            item.setdefault("collection", collection)
            yield item


def stage_stac_files(root: Path, data_url: str, workdir: Path) -> StacFiles:
    """Write copies of the archive's collections and items with hrefs pointing at ``data_url``.

    Args:
        root: The archive folder (layout of :mod:`schemas.archive`).
        data_url: Base URL under which ``root``'s relative hrefs are served, no trailing slash;
            ``data/x/y.tif`` becomes ``<data_url>/data/x/y.tif``.
        workdir: Existing folder to write ``collections/*.json`` and ``items/*.ndjson`` into.

    Returns:
        The written files.

    Raises:
        InvalidInputError: The archive or one of its documents is malformed.
    """
    collection_ids = check_archive(root)
    (workdir / "collections").mkdir(exist_ok=True)
    (workdir / "items").mkdir(exist_ok=True)
    collections: list[Path] = []
    item_files: list[Path] = []
    count = 0
    for cid in collection_ids:
        doc = _rewrite(_read_json(root / COLLECTIONS_DIR / f"{cid}.json"), data_url)
        if doc.get("id") != cid:
            raise InvalidInputError(
                f"collection id {doc.get('id')!r} does not match its file name",
                where=str(root / COLLECTIONS_DIR / f"{cid}.json"),
                fix=_CREATE_FIX,
            )
        target = workdir / "collections" / f"{cid}.json"
        target.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
        collections.append(target)
        source = root / items_path(cid)
        if not source.is_file():
            continue
        staged = workdir / "items" / f"{cid}.ndjson"
        with staged.open("w", encoding="utf-8") as out:
            for item in _read_items(source, cid):
                out.write(json.dumps(_rewrite(item, data_url), separators=(",", ":")) + "\n")
                count += 1
        item_files.append(staged)
    if count == 0:
        raise InvalidInputError(
            "archive has no items", where=str(root / items_path("*")), fix=_CREATE_FIX
        )
    return StacFiles(tuple(collections), tuple(item_files), count)
