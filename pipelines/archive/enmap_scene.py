"""EnMAP L2A scenes of the archive, written as DLR deliveries by :mod:`pipelines.archive.enmap`.

Reflectance at the 224 DLR band centres is read off the same class spectra as Sentinel-2 and
Landsat. Quality layers follow the truth: QL_QUALITY_CLASSES 1 land / 2 water (majority of the
pixel) / 3 outside, QL_QUALITY_CLOUD 1 where any part of the pixel is cloud, QL_QUALITY_CLOUDSHADOW
1 where any part is shadow (and not cloud); haze, snow, cirrus and test flags are 0.
"""

from __future__ import annotations

import struct
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import rasterio

from pipelines.archive.classes import cloud_values, enmap_values
from pipelines.archive.enmap import (
    enmap_band_table,
    enmap_item,
    read_enmap_delivery,
    write_enmap_delivery,
)
from pipelines.archive.plan import Acquisition
from pipelines.archive.render import label_counts, label_table, mix, render_labels
from pipelines.archive.scene import SceneResult, masks_from_counts
from pipelines.archive.world import ProjectedWorld

__all__ = ["png_bytes", "write_enmap"]


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB image, dims ``(3, y, x)`` uint8, as a (deterministic) PNG file."""
    _, h, w = rgb.shape
    rows = np.concatenate(
        [np.zeros((h, 1), np.uint8), np.moveaxis(rgb, 0, -1).reshape(h, w * 3)], axis=1
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    head = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def write_enmap(acq: Acquisition, world: ProjectedWorld, root: Path) -> SceneResult:
    """Render and write one EnMAP L2A delivery under ``root/data/ENMAP_HSI_L2A/<id>/``.

    Args:
        acq: The acquisition (30 m grid).
        world: The world projected to the scene's CRS.
        root: Archive root.

    Returns:
        The written scene with its DLR-like STAC item already built (``item``).
    """
    out = root / "data" / acq.collection
    counts = label_counts(render_labels(world, acq.grid, acq.sky, acq.shift_m), 6)
    masks = masks_from_counts(counts)
    wl, fwhm = enmap_band_table()
    table = label_table(enmap_values(wl), cloud_values(wl / 1000.0))
    refl = mix(counts, table, dtype=np.float32)
    del counts
    refl[:, ~masks.valid] = np.nan
    zeros = np.zeros(acq.grid.shape, dtype=np.uint8)
    classes = np.where(masks.water, 2, 1).astype(np.uint8)
    classes[~masks.valid] = 3
    quality = {
        "CLASSES": classes,
        "CLOUD": (masks.cloud & masks.valid).astype(np.uint8),
        "CLOUDSHADOW": (masks.shadow & masks.valid).astype(np.uint8),
        "HAZE": zeros,
        "SNOW": zeros,
        "CIRRUS": zeros,
        "TESTFLAGS": zeros,
    }
    cloud_pct = 100.0 * masks.fraction(masks.cloud)
    delivery = write_enmap_delivery(
        out,
        product_name=acq.item_id,
        reflectance=refl,
        quality=quality,
        pixelmask=None,
        transform=acq.grid.transform,
        epsg=acq.grid.epsg,
        start=acq.when,
        end=acq.when + timedelta(seconds=4, microseconds=447768),
        cloud_cover=round(cloud_pct, 4),
        wavelengths_nm=wl,
        fwhm_nm=fwhm,
        extra={
            "sun_azimuth": round(acq.sun_azimuth, 6),
            "sun_elevation": round(acq.sun_elevation, 6),
            "relative_orbit": int(acq.props["datatake"]) % 400 + 1,
            "absolute_orbit": int(acq.props["datatake"]) // 8,
        },
    )
    del refl
    thumb = f"{acq.item_id}-QL_VNIR_thumbnail.png"
    with rasterio.open(delivery / f"{acq.item_id}-QL_VNIR.TIF") as src:
        (delivery / thumb).write_bytes(png_bytes(src.read()))
    item = enmap_item(
        read_enmap_delivery(delivery), f"data/{acq.collection}/{acq.item_id}", thumbnail=thumb
    )
    stats = {"cloud": cloud_pct, "shadow": 100.0 * masks.fraction(masks.shadow)}
    return SceneResult({}, acq.grid, masks, stats, item=item)
