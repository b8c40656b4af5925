"""``eoforge archive index``: turn a folder of real product deliveries into an offline archive.

Two kinds of input are found recursively under the source folder:

1. **EnMAP L2A deliveries** as DLR ships them: folders or ``.zip`` files holding
   ``<product>-SPECTRAL_IMAGE.TIF``, ``<product>-METADATA.XML`` and the ``QL_*`` layers.
   Each becomes one item of collection ``ENMAP_HSI_L2A`` (see :mod:`pipelines.archive.enmap`).
2. **GeoTIFF/COG scenes described by a sidecar**: a file named ``eoforge-sidecar.yaml`` in the
   folder of the rasters::

       collection: my-landsat          # collection id in the archive
       sensor: landsat-c2-l2           # sensor id, stored as property eoforge:sensor
       description: Landsat scenes I downloaded   # optional
       scenes:
         - id: LC09_L2SP_193026_20240601  # item id (letters, digits, _ - .)
           datetime: 2024-06-01T10:02:11Z
           cloud_cover: 12.5              # optional, percent
           platform: landsat-9            # optional
           properties: {landsat:wrs_path: "193"}   # optional, copied into the item
           assets:                        # asset key -> file (relative to the sidecar)
             red: {file: LC09_SR_B4.TIF, bands: [red]}
             qa_pixel: {file: LC09_QA_PIXEL.TIF, bands: [qa_pixel], roles: [cloud]}

   ``bands`` names each band of the file in order. proj, raster and eo metadata are read from
   the files; a GeoTIFF that is not a COG is converted to one.

Files are copied (or converted) into ``data/<collection>/<item_id>/`` and items are added to
``stac/items/<collection>.ndjson`` (sorted by id) and ``stac/collections/<collection>.json``.
Re-running adds only items whose id is new. All inputs are read and checked, and all data staged,
before anything in the archive changes; the item and collection files are replaced atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import rasterio
import rasterio.shutil
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import transform_bounds

from pipelines.archive.enmap import (
    ENMAP_COLLECTION,
    EnmapDelivery,
    enmap_item,
    find_products,
    read_enmap_delivery,
)
from pipelines.archive.stac_validate import validate_collection, validate_item
from schemas.archive import COLLECTIONS_DIR, DATA_DIR, items_path
from schemas.errors import InvalidInputError

__all__ = [
    "SIDECAR_NAME",
    "IndexReport",
    "Sidecar",
    "SidecarAsset",
    "SidecarScene",
    "index_deliveries",
]

log = logging.getLogger(__name__)

#: File name of the sidecar that describes GeoTIFF/COG scenes in its folder.
SIDECAR_NAME = "eoforge-sidecar.yaml"
_STAGE = ".eoforge-index.partial"
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_EO_COMMON_NAMES = frozenset(
    [
        "coastal",
        "blue",
        "green",
        "red",
        "rededge",
        "yellow",
        "pan",
        "nir",
        "nir08",
        "nir09",
        "cirrus",
        "swir16",
        "swir22",
        "lwir",
        "lwir11",
        "lwir12",
    ]
)
_SIDECAR_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
_COG_OPTIONS = {
    "BLOCKSIZE": "256",
    "COMPRESS": "DEFLATE",
    "OVERVIEWS": "AUTO",
    "NUM_THREADS": "1",
    "BIGTIFF": "IF_SAFER",
}


class SidecarAsset(BaseModel):
    """One raster file of a scene."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="Raster file, relative to the sidecar's folder.", min_length=1)
    bands: list[str] = Field(description="Name of each band of the file, in order.", min_length=1)
    roles: list[str] = Field(default=["data"], description="STAC asset roles.")
    title: str | None = Field(default=None, description="Human-readable asset title.")


class SidecarScene(BaseModel):
    """One scene (one STAC item) made of one or more raster files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Item id, unique in the collection.", pattern=_ID_PATTERN)
    datetime: _dt.datetime = Field(description="Acquisition time (timezone-aware, ISO 8601).")
    cloud_cover: float | None = Field(
        default=None, ge=0.0, le=100.0, description="Scene cloud cover in percent."
    )
    platform: str | None = Field(default=None, description="Platform, e.g. sentinel-2a.")
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Extra item properties, copied as given."
    )
    assets: dict[str, SidecarAsset] = Field(description="Asset key -> raster file.", min_length=1)


class Sidecar(BaseModel):
    """Content of ``eoforge-sidecar.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    collection: str = Field(description="Collection id in the archive.", pattern=_ID_PATTERN)
    sensor: str = Field(description="Sensor id, e.g. sentinel-2-l2a.", min_length=1)
    description: str | None = Field(default=None, description="Collection description.")
    scenes: list[SidecarScene] = Field(description="Scenes in this folder.", min_length=1)


@dataclass(frozen=True)
class IndexReport:
    """What one ``index`` run did. Item references read ``<collection>/<item_id>``."""

    added: tuple[str, ...]
    kept: tuple[str, ...]
    duplicates: tuple[str, ...]
    converted_to_cog: tuple[str, ...]
    collections: tuple[str, ...]


@dataclass
class _Plan:
    """One new item: where its files come from and how its item is built once staged."""

    collection: str
    item_id: str
    copies: list[tuple[str, str, bool]] = field(default_factory=list)  # (source, name, is_cog)
    source: str = ""
    enmap: EnmapDelivery | None = None
    scene: SidecarScene | None = None
    sidecar: Sidecar | None = None


# --------------------------------------------------------------------------------------------
# discovery


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _discover(src: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """Find EnMAP products ``(folder or zip, product name)`` and sidecars under ``src``."""
    products: list[tuple[Path, str]] = []
    sidecars: list[Path] = []
    folders: set[Path] = set()
    zips: list[Path] = []
    for path in sorted(src.rglob("*")):
        if not _visible(path, src) or not path.is_file():
            continue
        if path.name == SIDECAR_NAME:
            sidecars.append(path)
        elif path.suffix.lower() == ".zip":
            zips.append(path)
        elif path.name.upper().startswith("ENMAP"):
            folders.add(path.parent)
    for folder in sorted(folders):
        products.extend((folder, name) for name in sorted(find_products(folder)))
    for zpath in zips:
        products.extend((zpath, name) for name in sorted(find_products(zpath)))
    return products, sidecars


def _load_sidecar(path: Path) -> Sidecar:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"sidecar is not readable YAML ({exc})", where=str(path), fix="fix the YAML syntax"
        ) from None
    try:
        sidecar = Sidecar.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(
            f"sidecar field {loc or '(root)'}: {first['msg']}",
            where=str(path),
            fix=f"see the {SIDECAR_NAME} format in `eoforge archive index --help`",
        ) from None
    ids = [s.id for s in sidecar.scenes]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InvalidInputError(f"scene ids repeated: {dupes}", where=str(path))
    for scene in sidecar.scenes:
        if scene.datetime.tzinfo is None:
            raise InvalidInputError(
                f"scene {scene.id}: datetime has no time zone",
                where=str(path),
                fix="write it as 2024-06-01T10:02:11Z",
            )
    return sidecar


def _check_raster(path: Path, asset: SidecarAsset, where: str) -> bool:
    """Check a sidecar raster (exists, has a CRS, band count); return whether it is a COG."""
    if not path.is_file():
        raise InvalidInputError(
            f"names file {asset.file}, which does not exist",
            where=where,
            fix=f"put {asset.file} next to the sidecar or correct the file name",
        )
    try:
        with warnings.catch_warnings():
            # A file without georeferencing warns on open; the check below reports it properly.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            if ds.crs is None:
                raise InvalidInputError(
                    f"{asset.file} has no CRS",
                    where=where,
                    fix="assign one, e.g. gdal_edit.py -a_srs EPSG:32632 FILE",
                )
            if ds.count != len(asset.bands):
                raise InvalidInputError(
                    f"{asset.file} has {ds.count} bands but the sidecar names {len(asset.bands)}",
                    where=where,
                    fix="list one name per band under bands:",
                )
            return bool(ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG")
    except RasterioError as exc:
        raise InvalidInputError(
            f"{asset.file} is not a readable raster ({exc})", where=where
        ) from None


# --------------------------------------------------------------------------------------------
# items


def _raster_asset(path: Path, href: str, asset: SidecarAsset) -> tuple[dict[str, Any], int | None]:
    """STAC asset with proj/raster/eo fields read from a staged COG, and the file's EPSG."""
    with rasterio.open(path) as ds:
        t = ds.transform
        epsg = ds.crs.to_epsg()
        left, bottom, right, top = ds.bounds
        out: dict[str, Any] = {"href": href, "type": _COG_TYPE}
        if asset.title:
            out["title"] = asset.title
        out["proj:epsg"] = epsg
        if epsg is None:
            out["proj:wkt2"] = ds.crs.to_wkt()
        out["proj:shape"] = [ds.height, ds.width]
        out["proj:transform"] = [t.a, t.b, t.c, t.d, t.e, t.f, 0.0, 0.0, 1.0]
        out["proj:bbox"] = [left, bottom, right, top]
        bands = []
        for i in range(ds.count):
            band: dict[str, Any] = {"data_type": ds.dtypes[i]}
            nodata = ds.nodatavals[i]
            if nodata is not None:
                band["nodata"] = "nan" if nodata != nodata else nodata
            if (ds.scales[i], ds.offsets[i]) != (1.0, 0.0):
                band["scale"] = ds.scales[i]
                band["offset"] = ds.offsets[i]
            band["spatial_resolution"] = abs(t.a)
            bands.append(band)
        out["raster:bands"] = bands
        out["eo:bands"] = [
            {"name": b, **({"common_name": b} if b in _EO_COMMON_NAMES else {})}
            for b in asset.bands
        ]
        out["roles"] = list(asset.roles)
        return out, epsg


def _lonlat_bounds(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as ds:
        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    return float(west), float(south), float(east), float(north)


def _sidecar_item(plan: _Plan, staged: Path) -> dict[str, Any]:
    assert plan.scene is not None and plan.sidecar is not None
    scene = plan.scene
    href_base = f"{DATA_DIR}/{plan.collection}/{plan.item_id}"
    assets: dict[str, Any] = {}
    epsgs: set[int | None] = set()
    boxes = []
    for key, asset in scene.assets.items():
        name = _dest_name(asset.file)
        assets[key], epsg = _raster_asset(staged / name, f"{href_base}/{name}", asset)
        epsgs.add(epsg)
        boxes.append(_lonlat_bounds(staged / name))
    west = min(b[0] for b in boxes)
    south = min(b[1] for b in boxes)
    east = max(b[2] for b in boxes)
    north = max(b[3] for b in boxes)
    props: dict[str, Any] = {"datetime": _stac_time(scene.datetime)}
    if scene.platform:
        props["platform"] = scene.platform
    if scene.cloud_cover is not None:
        props["eo:cloud_cover"] = scene.cloud_cover
    if len(epsgs) == 1:
        props["proj:epsg"] = next(iter(epsgs))
    props["eoforge:sensor"] = plan.sidecar.sensor
    props.update(scene.properties)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": list(_SIDECAR_EXTENSIONS),
        "id": scene.id,
        "collection": plan.collection,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [west, south, east, north],
        "properties": props,
        "links": [_collection_link(plan.collection)],
        "assets": assets,
    }


def _collection_link(collection: str) -> dict[str, str]:
    return {
        "rel": "collection",
        "href": f"{COLLECTIONS_DIR}/{collection}.json",
        "type": "application/json",
    }


def _stac_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _collection(
    collection: str, items: Iterable[dict[str, Any]], existing: dict[str, Any] | None
) -> dict[str, Any]:
    """A Collection whose extent covers ``items``; other fields of ``existing`` are kept."""
    boxes = []
    times = []
    for item in items:
        boxes.append(item["bbox"])
        props = item["properties"]
        times.append(props.get("start_datetime") or props["datetime"])
        times.append(props.get("end_datetime") or props["datetime"])
    extent = {
        "spatial": {
            "bbox": [
                [
                    min(b[0] for b in boxes),
                    min(b[1] for b in boxes),
                    max(b[2] for b in boxes),
                    max(b[3] for b in boxes),
                ]
            ]
        },
        "temporal": {"interval": [[min(times), max(times)]]},
    }
    if existing is not None:
        return {**existing, "extent": extent}
    enmap = collection == ENMAP_COLLECTION
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": collection,
        "title": "EnMAP HSI L2A" if enmap else collection,
        "description": (
            "EnMAP hyperspectral Level-2A surface reflectance (224 bands, 30 m), indexed from DLR "
            "product deliveries."
            if enmap
            else f"Scenes indexed by eoforge from GeoTIFFs described by {SIDECAR_NAME}."
        ),
        "license": "proprietary",
        "providers": (
            [{"name": "DLR", "roles": ["producer", "licensor"], "url": "https://www.enmap.org"}]
            if enmap
            else []
        ),
        "extent": extent,
        "links": [],
    }


# --------------------------------------------------------------------------------------------
# files


def _dest_name(file: str) -> str:
    """Archive file name of a source raster: its base name with a ``.tif`` suffix."""
    name = PurePosixPath(file).name
    return name if name.lower().endswith((".tif", ".tiff", ".xml")) else f"{name}.tif"


_VSIZIP_RE = re.compile(r"^/vsizip/(?P<zip>.+?\.zip)/(?P<member>.+)$", re.IGNORECASE)


def _stage_file(source: str, dest: Path, is_cog: bool) -> None:
    """Copy a file (from disk or a zip) as is, or convert a raster to a COG."""
    if not is_cog:
        rasterio.shutil.copy(source, dest, driver="COG", **_COG_OPTIONS)
        aux = dest.with_name(dest.name + ".aux.xml")
        if aux.exists():
            aux.unlink()
        return
    m = _VSIZIP_RE.match(source)
    if m is None:
        shutil.copyfile(source, dest)
        return
    with zipfile.ZipFile(m["zip"]) as zf, zf.open(m["member"]) as fin, dest.open("wb") as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)


def _read_items(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    items: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            items[str(item["id"])] = item
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InvalidInputError(
                f"line {lineno} is not a STAC item",
                where=str(path),
                fix="repair or delete the file, then index again",
            ) from None
    return items


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------------
# the command


def _plan_enmap(path: Path, product: str, plan: _Plan) -> None:
    delivery = read_enmap_delivery(path, product)
    plan.enmap = delivery
    plan.source = delivery.source
    for layer, gdal_path in delivery.files.items():
        is_cog = layer == "METADATA" or layer in delivery.cog_layers
        plan.copies.append((gdal_path, PurePosixPath(gdal_path).name, is_cog))


def _plan_scene(sidecar_path: Path, sidecar: Sidecar, scene: SidecarScene, plan: _Plan) -> None:
    plan.scene = scene
    plan.sidecar = sidecar
    plan.source = str(sidecar_path)
    names: set[str] = set()
    for key, asset in scene.assets.items():
        where = f"{sidecar_path} (scene {scene.id}, asset {key})"
        file_path = sidecar_path.parent / asset.file
        is_cog = _check_raster(file_path, asset, where)
        name = _dest_name(asset.file)
        if name in names:
            raise InvalidInputError(f"two assets use the file name {name}", where=where)
        names.add(name)
        plan.copies.append((str(file_path), name, is_cog))


def index_deliveries(src: Path, archive: Path, *, schemas_root: Path | None = None) -> IndexReport:
    """Add the deliveries and sidecar-described GeoTIFFs under ``src`` to an archive.

    Args:
        src: Folder searched recursively for EnMAP deliveries (folders or zips) and
            ``eoforge-sidecar.yaml`` files. Hidden files and folders are skipped.
        archive: Archive root (created if absent), laid out as :mod:`schemas.archive` says.
        schemas_root: Local STAC schema tree; when given, every new item and collection is
            validated against the STAC and extension schemas before anything is written.

    Returns:
        What was added, kept (already indexed) and converted.

    Raises:
        InvalidInputError: For an incomplete or corrupt delivery, a GeoTIFF without CRS, a
            sidecar naming a missing file, or any other bad input; the archive is unchanged.
    """
    src = Path(src)
    archive = Path(archive)
    if not src.is_dir():
        raise InvalidInputError("source folder does not exist", where=str(src))
    if archive.resolve().is_relative_to(src.resolve()):
        raise InvalidInputError(
            "the archive lies inside the source folder",
            where=str(archive),
            fix="choose an archive folder outside the source folder",
        )
    products, sidecar_paths = _discover(src)
    if not products and not sidecar_paths:
        raise InvalidInputError(
            f"no EnMAP deliveries and no {SIDECAR_NAME} found",
            where=str(src),
            fix="point to a folder holding DLR deliveries or GeoTIFFs with a sidecar",
        )

    existing: dict[str, dict[str, dict[str, Any]]] = {}

    def known(collection: str) -> dict[str, dict[str, Any]]:
        if collection not in existing:
            existing[collection] = _read_items(archive / items_path(collection))
        return existing[collection]

    plans: dict[tuple[str, str], _Plan] = {}
    kept: list[str] = []
    duplicates: list[str] = []

    def claim(collection: str, item_id: str, source: str) -> _Plan | None:
        ref = f"{collection}/{item_id}"
        if item_id in known(collection):
            kept.append(ref)
            return None
        if (collection, item_id) in plans:
            duplicates.append(f"{ref} ({source})")
            return None
        plan = _Plan(collection=collection, item_id=item_id)
        plans[(collection, item_id)] = plan
        return plan

    for path, product in products:
        plan = claim(ENMAP_COLLECTION, product, str(path))
        if plan is not None:
            _plan_enmap(path, product, plan)
    for sidecar_path in sidecar_paths:
        sidecar = _load_sidecar(sidecar_path)
        for scene in sidecar.scenes:
            plan = claim(sidecar.collection, scene.id, str(sidecar_path))
            if plan is not None:
                _plan_scene(sidecar_path, sidecar, scene, plan)

    stage = archive / _STAGE
    converted: list[str] = []
    new_items: dict[str, dict[str, dict[str, Any]]] = {}
    if stage.exists():
        shutil.rmtree(stage)
    try:
        for (collection, item_id), plan in sorted(plans.items()):
            staged = stage / collection / item_id
            staged.mkdir(parents=True)
            for source, name, is_cog in plan.copies:
                try:
                    _stage_file(source, staged / name, is_cog)
                except (RasterioError, OSError, zipfile.BadZipFile) as exc:
                    raise InvalidInputError(
                        f"cannot copy {name} ({exc})", where=source, fix="check the file"
                    ) from None
                if not is_cog:
                    converted.append(source)
            href_base = f"{DATA_DIR}/{collection}/{item_id}"
            if plan.enmap is not None:
                item = enmap_item(read_enmap_delivery(staged, item_id), href_base)
            else:
                item = _sidecar_item(plan, staged)
            if schemas_root is not None:
                validate_item(item, schemas_root)
            new_items.setdefault(collection, {})[item_id] = item

        collections: dict[str, tuple[str, str]] = {}
        for collection, fresh in new_items.items():
            merged = {**known(collection), **fresh}
            lines = [json.dumps(merged[k], separators=(",", ":")) for k in sorted(merged)]
            coll_path = archive / COLLECTIONS_DIR / f"{collection}.json"
            old = json.loads(coll_path.read_text(encoding="utf-8")) if coll_path.exists() else None
            coll = _collection(collection, merged.values(), old)
            if schemas_root is not None:
                validate_collection(coll, schemas_root)
            collections[collection] = ("\n".join(lines) + "\n", json.dumps(coll, indent=2) + "\n")

        # Commit: data first, then the item lists that reference it.
        for (collection, item_id), _plan in sorted(plans.items()):
            dest = archive / DATA_DIR / collection / item_id
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            (stage / collection / item_id).rename(dest)
        for collection, (ndjson, coll_json) in sorted(collections.items()):
            _write_atomic(archive / items_path(collection), ndjson)
            _write_atomic(archive / COLLECTIONS_DIR / f"{collection}.json", coll_json)
    finally:
        if stage.exists():
            shutil.rmtree(stage)

    added = sorted(f"{c}/{i}" for c, i in plans)
    log.info("indexed %d new items, kept %d", len(added), len(kept))
    return IndexReport(
        added=tuple(added),
        kept=tuple(sorted(kept)),
        duplicates=tuple(duplicates),
        converted_to_cog=tuple(converted),
        collections=tuple(sorted(new_items)),
    )
