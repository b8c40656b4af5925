"""Deterministic Cloud-Optimised GeoTIFF writer shared by the archive generator and indexer.

The same array, transform and options always give the same bytes: no ``TIFFTAG_DATETIME``, no
software tag and no other value that changes between runs, so archives can be compared by hash.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from schemas.errors import InvalidInputError

__all__ = ["write_cog"]

_RESAMPLINGS = {"nearest": "NEAREST", "average": "AVERAGE", "mode": "MODE", "bilinear": "BILINEAR"}


def write_cog(
    path: Path | str,
    data: np.ndarray,
    *,
    transform: Affine,
    epsg: int,
    nodata: float | None,
    band_descriptions: list[str] | None = None,
    blocksize: int = 256,
    overviews: bool = True,
    resampling: Literal["nearest", "average", "mode", "bilinear"] = "nearest",
    compress: str = "deflate",
    predictor: int = 2,
) -> None:
    """Write an array as a tiled COG with GDAL's COG driver, byte-for-byte reproducibly.

    The file is written beside ``path`` under a temporary name and renamed into place, so a
    crash never leaves a partial COG at ``path``.

    Args:
        path: Output file; parent directories are created.
        data: Pixels, dims ``(band, y, x)`` (or ``(y, x)`` for one band), any dtype GDAL writes.
        transform: Affine pixel-to-map transform of the upper-left corner.
        epsg: EPSG code of the CRS.
        nodata: Nodata value stored in the file, or ``None`` for none.
        band_descriptions: One description per band (GDAL band description), or ``None``.
        blocksize: Tile edge in pixels (a multiple of 16).
        overviews: Build internal overviews when the image is larger than one block.
        resampling: Resampling used for the overviews.
        compress: GDAL compression name (``deflate``, ``lzw``, ``zstd``, ``none``).
        predictor: TIFF predictor: 1 none, 2 horizontal differencing, 3 floating point. For
            floating-point data 2 is replaced by 3, the predictor meant for floats.

    Raises:
        InvalidInputError: If the array, descriptions or options are inconsistent.
    """
    out = Path(path)
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or 0 in arr.shape:
        raise InvalidInputError(
            f"expected a non-empty (band, y, x) array, got shape {arr.shape}",
            where=str(out),
            fix="pass pixels as a 3-D array (band, y, x)",
        )
    if band_descriptions is not None and len(band_descriptions) != arr.shape[0]:
        raise InvalidInputError(
            f"{len(band_descriptions)} band descriptions for {arr.shape[0]} bands",
            where=str(out),
            fix="give exactly one description per band",
        )
    if blocksize <= 0 or blocksize % 16:
        raise InvalidInputError(
            f"blocksize {blocksize} is not a positive multiple of 16",
            where=str(out),
            fix="use 256 or 512",
        )
    if resampling not in _RESAMPLINGS:
        raise InvalidInputError(
            f"unknown overview resampling {resampling!r}",
            where=str(out),
            fix=f"use one of {sorted(_RESAMPLINGS)}",
        )
    is_float = np.issubdtype(arr.dtype, np.floating)
    pred = 3 if (is_float and predictor == 2) else predictor
    if compress.lower() == "none":
        pred = 1

    count, height, width = arr.shape
    profile = {
        "driver": "GTiff",
        "count": count,
        "height": height,
        "width": width,
        "dtype": arr.dtype.name,
        "crs": CRS.from_epsg(epsg),
        "transform": transform,
        "nodata": nodata,
    }
    cog_options: dict[str, str] = {
        "BLOCKSIZE": str(blocksize),
        "COMPRESS": compress.upper(),
        "OVERVIEWS": "AUTO" if overviews else "NONE",
        "RESAMPLING": _RESAMPLINGS[resampling],
        "OVERVIEW_RESAMPLING": _RESAMPLINGS[resampling],
        "NUM_THREADS": "1",
        "BIGTIFF": "IF_SAFER",
    }
    if compress.lower() != "none":
        cog_options["PREDICTOR"] = str(pred)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(arr)
                if band_descriptions is not None:
                    for i, desc in enumerate(band_descriptions, start=1):
                        dst.set_band_description(i, desc)
            with mem.open() as src:
                rasterio.shutil.copy(src, tmp, driver="COG", **cog_options)
        aux = tmp.with_name(tmp.name + ".aux.xml")
        if aux.exists():
            aux.unlink()
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
