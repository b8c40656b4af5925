"""The shared COG writer: valid COG layout, exact pixels, reproducible bytes, clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipelines.archive.cog import write_cog
from schemas.errors import InvalidInputError

TRANSFORM = Affine(30.0, 0.0, 500_010.0, 0.0, -30.0, 5_300_000.0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _value_encoded(bands: int, height: int, width: int, dtype: str) -> np.ndarray:
    """Pixels whose value encodes (band, row, col), so a shifted or swapped read shows up."""
    b, r, c = np.indices((bands, height, width))
    out: np.ndarray = (1000 * b + 4 * c + r).astype(dtype)
    return out


def test_cog_roundtrip_layout_and_overviews(tmp_path: Path) -> None:
    data = _value_encoded(3, 300, 280, "int16")
    out = tmp_path / "sub" / "a.tif"
    write_cog(
        out,
        data,
        transform=TRANSFORM,
        epsg=32632,
        nodata=-32768,
        band_descriptions=["B1", "B2", "B3"],
        blocksize=128,
    )
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (128, 128)
        assert src.crs.to_epsg() == 32632
        assert src.transform == TRANSFORM
        assert src.nodata == -32768
        assert src.descriptions == ("B1", "B2", "B3")
        assert src.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(), data)
    # No temporary or sidecar file remains beside the COG.
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.tif"]


def test_cog_is_byte_reproducible_and_content_sensitive(tmp_path: Path) -> None:
    data = _value_encoded(2, 64, 64, "float32")
    kwargs: dict[str, Any] = {"transform": TRANSFORM, "epsg": 32633, "nodata": float("nan")}
    write_cog(tmp_path / "a.tif", data, **kwargs)
    write_cog(tmp_path / "b.tif", data, **kwargs)
    assert _sha(tmp_path / "a.tif") == _sha(tmp_path / "b.tif")
    data[0, 0, 0] += 1
    write_cog(tmp_path / "c.tif", data, **kwargs)
    assert _sha(tmp_path / "c.tif") != _sha(tmp_path / "a.tif")
    with rasterio.open(tmp_path / "a.tif") as src:
        assert "TIFFTAG_DATETIME" not in src.tags()
        assert "TIFFTAG_SOFTWARE" not in src.tags()
        assert src.overviews(1) == []  # one block only: no overviews needed
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"


def test_cog_single_band_2d_and_average_overviews(tmp_path: Path) -> None:
    data = np.zeros((512, 512), dtype="uint8")
    data[:, 256:] = 200
    out = tmp_path / "m.tif"
    write_cog(out, data, transform=TRANSFORM, epsg=32632, nodata=None, resampling="average")
    with rasterio.open(out) as src:
        assert src.count == 1 and src.nodata is None
        ovr = src.read(1, out_shape=(256, 256))
        assert ovr[0, 0] == 0 and ovr[0, -1] == 200


def test_cog_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    out = tmp_path / "x.tif"
    with pytest.raises(InvalidInputError, match="band descriptions"):
        write_cog(
            out,
            np.zeros((2, 8, 8), "uint8"),
            transform=TRANSFORM,
            epsg=32632,
            nodata=0,
            band_descriptions=["only-one"],
        )
    with pytest.raises(InvalidInputError, match="shape"):
        write_cog(out, np.zeros(5, "uint8"), transform=TRANSFORM, epsg=32632, nodata=0)
    assert not out.exists()
