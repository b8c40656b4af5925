"""A small synthetic cube (Zarr arrays written directly) plus its catalog, for dataset tests.

Two sensors with the real group names: ``sentinel-2-l2a`` (10 m, 3 bands, 2 time planes, int16,
scale 1e-4, offset -0.1, fill -32768) and ``landsat-c2-l2`` (30 m, 2 bands, 1 plane, uint16,
scale 2.75e-5, offset -0.2, fill 0); one label source ``corine`` (3 classes, 10 m). Tiles of
240 m (24 px at 10 m, 8 px at 30 m), ``K = 4`` tiles per shard, ``n_tiles`` positions all used,
one catalog run (version 1). Masks: mostly VALID, some CLOUD (not valid) pixels holding huge
"outlier" values, and NODATA where the value is the fill. The last tile is not labelled by
corine (multilabel fill 255).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import shapely

from catalog.writer import CatalogWriter
from pipelines.grid import Tile
from pipelines.write import open_or_create_cube
from schemas.cube import NAT_INT64, CubeLayout, LabelLayout, MaskBit, SensorLayout
from schemas.tile import SensorObservation, TileRecord

S2, LS = "sentinel-2-l2a", "landsat-c2-l2"
TILE_M = 240.0
K = 4
CLASSES = ("forest", "water", "urban")
OUTLIER = 30000
START = datetime(2024, 6, 1, tzinfo=UTC)


def layout() -> CubeLayout:
    """The synthetic cube's layout."""
    return CubeLayout.for_recipe_like(
        [
            SensorLayout(
                S2, ("B02", "B03", "B04"), 10.0, n_time=2, dtype="int16", nodata=-32768,
                scale_factor=1e-4, add_offset=-0.1, units="1",
            ),
            SensorLayout(
                LS, ("red", "nir08"), 30.0, n_time=1, dtype="uint16", nodata=0,
                scale_factor=2.75e-5, add_offset=-0.2, units="1",
            ),
        ],
        tile_size_m=TILE_M,
        tiles_per_shard=K,
        labels=[LabelLayout("corine", CLASSES)],
    )  # fmt: skip


def _sensor_arrays(
    rng: np.random.Generator, n: int, nt: int, nb: int, px: int, fill: int, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    data = rng.integers(1, 3000, size=(n, nt, nb, px, px)).astype(dtype)
    mask = np.full((n, nt, px, px), int(MaskBit.VALID), dtype=np.uint8)
    u = rng.random((n, nt, px, px))
    cloud = u < 0.15
    mask[cloud] = int(MaskBit.CLOUD)
    data[np.broadcast_to(cloud[:, :, None], data.shape)] = OUTLIER
    nodata = u > 0.93
    mask[nodata] = int(MaskBit.NODATA)
    data[np.broadcast_to(nodata[:, :, None], data.shape)] = fill
    return data, mask


def build_cube(cube: Path, n_tiles: int = 10, seed: int = 0) -> Path:
    """Write the cube and its catalog (module docstring) at ``cube``; returns ``cube``."""
    lay = layout()
    rng = np.random.default_rng(seed)
    group = open_or_create_cube(cube, lay, n_tiles_capacity=n_tiles)
    tiles = [Tile(32, "N", 2500 + i, 22000, TILE_M) for i in range(n_tiles)]
    string = np.dtypes.StringDType()
    for sensor in lay.sensors:
        px = int(TILE_M / sensor.resolution_m)
        fill = int(sensor.nodata)
        data, mask = _sensor_arrays(
            rng, n_tiles, sensor.n_time, len(sensor.bands), px, fill, sensor.dtype
        )
        group[f"{sensor.name}/data"][:] = data
        group[f"{sensor.name}/mask"][:] = mask
        times = np.full((n_tiles, sensor.n_time), NAT_INT64, dtype=np.int64)
        for i in range(n_tiles):
            for t in range(sensor.n_time):
                when = np.datetime64(START.replace(tzinfo=None) + timedelta(days=i + 10 * t), "ns")
                times[i, t] = when.astype(np.int64)
        group[f"{sensor.name}/datetime"][:] = times
    labels = rng.integers(0, len(CLASSES), size=(n_tiles, 24, 24)).astype(np.uint8)
    labels[:, :2, :] = 255
    group["labels/corine"][:] = labels
    multi = np.zeros((n_tiles, len(CLASSES)), dtype=np.uint8)
    for i in range(n_tiles):
        present = np.unique(labels[i][labels[i] != 255])
        multi[i, present] = 1
    multi[-1] = 255
    group["labels/corine_multilabel"][:] = multi
    group["tiles/id"][:] = np.array([t.id for t in tiles], dtype=string)
    group["tiles/period"][:] = np.array(["2024-06"] * n_tiles, dtype=string)
    group["tiles/epsg"][:] = np.array([t.epsg for t in tiles], dtype=np.int32)
    group["tiles/transform"][:] = np.array(
        [(10.0, 0.0, t.bounds[0], 0.0, -10.0, t.bounds[3]) for t in tiles], dtype=np.float64
    )
    writer = CatalogWriter(cube)
    shards: dict[str, list[TileRecord]] = {}
    for i, tile in enumerate(tiles):
        footprint = tile.footprint_wgs84()
        shard_id = f"s{i // K:05d}"
        record = TileRecord(
            tile_id=tile.id,
            period_id="2024-06",
            period_start=START,
            period_end=datetime(2024, 7, 1, tzinfo=UTC),
            epsg=tile.epsg,
            transform=(10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3]),
            proj_bbox=tile.bounds,
            geometry_wkb=shapely.to_wkb(footprint),
            bbox=footprint.bounds,
            cube_position=i,
            shard_id=shard_id,
            sensors=tuple(
                SensorObservation(
                    sensor=name,
                    datetimes=(START + timedelta(days=i),),
                    item_ids=(f"{name}-{i}",),
                    cloud_fraction=0.15,
                    valid_fraction=0.78,
                )
                for name in (S2, LS)
            ),
            split="train" if i % 3 else "val",
            class_fractions={} if i == n_tiles - 1 else {"corine": {"forest": 0.4}},
            multilabels={}
            if i == n_tiles - 1
            else {"corine": tuple(c for c, m in zip(CLASSES, multi[i], strict=True) if m)},
        )
        shards.setdefault(shard_id, []).append(record)
    for shard_id, records in shards.items():
        writer.commit_shard(shard_id, records, run_id="run-1")
    writer.finish_run("run-1", {"synthetic": True})
    return cube


def expected_sample(cube: Path, position: int) -> dict[str, np.ndarray]:
    """The raw arrays of ``position``, read with plain zarr (what a sample must equal)."""
    import zarr

    root = zarr.open_group(cube, mode="r")
    out: dict[str, np.ndarray] = {}
    for name in (S2, LS):
        out[f"{name}/data"] = np.asarray(root[f"{name}/data"][position])
        out[f"{name}/mask"] = np.asarray(root[f"{name}/mask"][position])
        out[f"{name}/datetime"] = np.asarray(root[f"{name}/datetime"][position])
    out["labels/corine"] = np.asarray(root["labels/corine"][position])
    out["labels/corine_multilabel"] = np.asarray(root["labels/corine_multilabel"][position])
    return out
