"""``eoforge archive create``: generate a deterministic offline archive from a preset and a seed.

The same preset and seed always give the same bytes in every file (the recipe under
``recipes/`` names the archive's absolute path, so it is the same wherever the archive is created
at the same path). The archive is written into a hidden sibling folder and renamed into place at
the end, so a crash never leaves a half-written archive at the target path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from pipelines.archive.enmap_scene import write_enmap
from pipelines.archive.labels import write_corine, write_osm
from pipelines.archive.landsat import write_landsat
from pipelines.archive.plan import PRESETS, ZONES, Acquisition, Preset, plan_acquisitions
from pipelines.archive.scene import SceneResult
from pipelines.archive.sentinel1 import write_sentinel1
from pipelines.archive.sentinel2 import write_sentinel2
from pipelines.archive.stac_collections import build_collection
from pipelines.archive.stac_items import build_item
from pipelines.archive.truth import (
    SHIFT_CONVENTION,
    classes_doc,
    scene_entry,
    truth_grid,
    write_json,
    write_landcover,
    write_masks,
)
from pipelines.archive.world import ProjectedWorld, World, generate_world
from schemas.archive import (
    ARCHIVE_COLLECTIONS,
    COLLECTIONS_DIR,
    LABELS_CORINE,
    LABELS_OSM,
    MANIFEST,
    TRUTH_CLASSES,
    TRUTH_SCENES,
    items_path,
)
from schemas.errors import ConflictError, InvalidInputError

__all__ = ["ArchiveManifest", "create_archive", "recipe_doc"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
_WRITERS = {
    "sentinel-2-l2a": write_sentinel2,
    "landsat-c2-l2": write_landsat,
    "sentinel-1-rtc": write_sentinel1,
    "ENMAP_HSI_L2A": write_enmap,
}


@dataclass(frozen=True)
class ArchiveManifest:
    """What ``archive.json`` records about a created archive.

    Attributes:
        root: The archive folder.
        preset: Preset name.
        seed: Seed.
        bbox: AOI in WGS84 ``(west, south, east, north)``.
        epsgs: UTM zones with scenes.
        items: Number of items per collection id.
    """

    root: Path
    preset: str
    seed: int
    bbox: tuple[float, float, float, float]
    epsgs: tuple[int, ...]
    items: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The ``archive.json`` document (without the root, which moves with the folder)."""
        return {
            "eoforge_archive": FORMAT_VERSION,
            "generator": "eoforge archive create",
            "preset": self.preset,
            "seed": self.seed,
            "bbox": list(self.bbox),
            "epsg": list(self.epsgs),
            "collections": dict(self.items),
            "sensors": {k: v for k, v in ARCHIVE_COLLECTIONS.items() if v in self.items},
        }


def recipe_doc(preset: Preset, root: Path) -> dict[str, Any]:
    """The ready recipe ``recipes/<preset>.yaml`` for an archive at ``root`` (absolute)."""
    catalog = f"archive:{root}"
    sensors: list[dict[str, Any]] = [
        {
            "id": "sentinel-2-l2a",
            "catalog": catalog,
            "resolution": 10,
            "max_cloud_cover": 80,
            "mask": {"dilation_m": 20},
            "temporal": {"mode": "best"},
        },
        {
            "id": "landsat-c2-l2",
            "catalog": catalog,
            "resolution": 30,
            "max_cloud_cover": 80,
            "temporal": {"mode": "best"},
        },
        {
            "id": "sentinel-1-rtc",
            "catalog": catalog,
            "resolution": 10,
            "temporal": {"mode": "composite"},
        },
        {
            "id": "enmap-l2a",
            "catalog": catalog,
            "resolution": 30,
            "max_cloud_cover": 80,
            "temporal": {"mode": "best"},
        },
    ]
    return {
        "name": preset.name,
        "description": f"The {preset.name} dataset, built from the offline archive at {root}.",
        "aoi": {"bbox": list(preset.recipe_bbox)},
        "time": {
            "start": preset.start.isoformat(),
            "end": (preset.end + timedelta(days=1)).isoformat(),
            "periods": "monthly",
        },
        "sensors": sensors,
        "grid": {"tile_size": 1200},
        "labels": [
            {
                "kind": "corine",
                "path": str(root / LABELS_CORINE),
                "nomenclature": "bigearthnet19",
                "max_unlabeled": 0.25,
            },
            {"kind": "osm", "path": str(root / LABELS_OSM)},
        ],
        "split": {
            "method": "block",
            "fractions": {"train": 0.8, "val": 0.1, "test": 0.1},
            # 4 x 4-tile blocks: test tiles next to a train block become val (the leakage
            # guard), so smaller blocks leave a small AOI without test tiles.
            "block_size": 4800,
            "seed": 1,
        },
        "output": {"path": f"build/{preset.name}.zarr", "tiles_per_shard": 8},
        "execution": {"workers": 2},
    }


def _check_target(root: Path, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise InvalidInputError(
            "target exists and is not a folder", where=str(root), fix="choose another path"
        )
    if root.is_dir() and any(root.iterdir()) and not force:
        raise ConflictError(
            "target folder is not empty",
            where=str(root),
            fix="choose an empty or new folder, or pass --force to replace it",
        )


def _write_all(tmp: Path, final: Path, preset: Preset, seed: int) -> ArchiveManifest:
    world: World = generate_world(preset.world, seed)
    acqs = plan_acquisitions(preset, seed, world.aoi)
    projected: dict[int, ProjectedWorld] = {e: world.project(e) for e in ZONES}
    items: dict[str, list[dict[str, Any]]] = {}
    scenes: dict[str, Any] = {}
    grids: dict[int, list[Any]] = {}
    results: list[tuple[Acquisition, SceneResult]] = []
    for acq in acqs:
        log.info("rendering %s", acq.item_id)
        res = _WRITERS[acq.collection](acq, projected[acq.grid.epsg], tmp)
        items.setdefault(acq.collection, []).append(build_item(acq, res))
        if acq.collection != "sentinel-1-rtc":
            grids.setdefault(acq.grid.epsg, []).append(acq.grid)
        results.append((acq, res))
    for acq, res in results:
        scenes[acq.item_id] = scene_entry(acq, res, write_masks(tmp, acq, res))
    landcover = {
        str(e): write_landcover(tmp, projected[e], truth_grid(e, g))
        for e, g in sorted(grids.items())
    }
    write_json(tmp / TRUTH_CLASSES, classes_doc())
    write_json(
        tmp / TRUTH_SCENES,
        {
            "shift_convention": SHIFT_CONVENTION,
            "landcover": landcover,
            "scenes": dict(sorted(scenes.items())),
        },
    )
    write_corine(world, tmp / LABELS_CORINE, preset.corine_mmu_ha)
    write_osm(world, tmp / LABELS_OSM)
    for collection, its in sorted(items.items()):
        its.sort(key=lambda it: str(it["id"]))
        path = tmp / items_path(collection)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(_json_line(it) for it in its), encoding="utf-8")
        write_json(
            tmp / COLLECTIONS_DIR / f"{collection}.json", build_collection(collection, its, seed)
        )
    recipe = tmp / "recipes" / f"{preset.name}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(recipe_doc(preset, final), sort_keys=False), encoding="utf-8")
    manifest = ArchiveManifest(
        final,
        preset.name,
        seed,
        world.aoi,
        tuple(sorted(grids)),
        {c: len(v) for c, v in sorted(items.items())},
    )
    write_json(tmp / MANIFEST, manifest.to_json())
    return manifest


def _json_line(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":")) + "\n"


def create_archive(
    root: Path | str, *, preset: str = "tiny", seed: int = 0, force: bool = False
) -> ArchiveManifest:
    """Create an offline archive.

    Args:
        root: Target folder; must be absent or empty unless ``force``.
        preset: ``tiny`` (tests, a few MB) or ``demo`` (the demo dataset).
        seed: Non-negative random seed; the same preset and seed give identical files.
        force: Replace a non-empty target folder.

    Returns:
        The archive's manifest.

    Raises:
        InvalidInputError: Unknown preset, negative seed, or a target that is not a folder.
        ConflictError: The target folder is not empty and ``force`` is false.
    """
    if preset not in PRESETS:
        raise InvalidInputError(
            f"unknown preset {preset!r}",
            where="--preset",
            fix=f"use one of {', '.join(sorted(PRESETS))}",
        )
    if seed < 0:
        raise InvalidInputError(f"seed {seed} is negative", where="--seed", fix="use a seed >= 0")
    final = Path(root).expanduser().absolute()
    _check_target(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        manifest = _write_all(tmp, final, PRESETS[preset], seed)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old.exists():
            shutil.rmtree(old)
    return manifest
