"""Co-registration: band choice, shift estimation against analytic scenes, decision, item shift."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from affine import Affine
from scipy import ndimage

from pipelines.coregister import (
    ShiftResult,
    comparable_band,
    decide,
    estimate_tile_shift,
    shift_item,
)
from pipelines.stack import PeriodStack
from schemas.cube import MaskBit
from schemas.errors import InvalidInputError
from schemas.profiles import get_profile
from schemas.sensors import Provider, SensorId

TILE_M = 1920.0  # 192 px at 10 m, 64 px at 30 m
ORIGIN = (500_000.0, 5_300_000.0)  # top-left corner (x, y)


class Scene:
    """A smooth random reflectance field, rendered exactly as pixel-area averages.

    The field is a sum of plane waves (wavelengths 90-900 m); the mean of a cosine over a
    square pixel is its centre value times ``sinc(u*p) * sinc(v*p)``, so any resolution and any
    sub-pixel shift is rendered without interpolation error.
    """

    def __init__(self, seed: int, n_waves: int = 40) -> None:
        rng = np.random.default_rng(seed)
        wavelength = rng.uniform(90.0, 900.0, n_waves)
        theta = rng.uniform(0.0, 2 * math.pi, n_waves)
        self.u = np.cos(theta) / wavelength
        self.v = np.sin(theta) / wavelength
        self.amp = rng.uniform(0.5, 1.0, n_waves) * np.sqrt(wavelength / 900.0)
        self.phase = rng.uniform(0.0, 2 * math.pi, n_waves)

    def render(self, res: float, dx_m: float = 0.0, dy_m: float = 0.0) -> np.ndarray:
        """``(y, x)`` float32 reflectance; content at ``(x, y)`` appears at ``(x+dx, y+dy)``."""
        n = round(TILE_M / res)
        centres = (np.arange(n) + 0.5) * res
        x = ORIGIN[0] + centres[None, :] - dx_m
        y = ORIGIN[1] - centres[:, None] - dy_m
        out = np.zeros((n, n))
        for u, v, a, ph in zip(self.u, self.v, self.amp, self.phase, strict=True):
            damp = np.sinc(u * res) * np.sinc(v * res)
            out += a * damp * np.cos(2 * math.pi * (u * (x - ORIGIN[0]) + v * (y - ORIGIN[1])) + ph)
        return (0.2 + 0.03 * out).astype(np.float32)


def _stack(
    sensor: str, res: float, plane: np.ndarray, band: str, clear: np.ndarray | None = None
) -> PeriodStack:
    valid = np.ones(plane.shape, bool) if clear is None else clear
    mask = np.where(valid, MaskBit.VALID, MaskBit.CLOUD).astype(np.uint8)[None]
    return PeriodStack(
        sensor=sensor,
        tile_id="32N-0260-2760",
        period_id="2024-06",
        epsg=32632,
        transform=Affine(res, 0.0, ORIGIN[0], 0.0, -res, ORIGIN[1]),
        resolution_m=res,
        bands=(band,),
        data=plane[None, None].astype(np.float32),
        mask=mask,
        times=np.array(["2024-06-03T10:30"], dtype="datetime64[ns]"),
        sources=(("item",),),
        valid_fraction=float(valid.mean()),
        cloud_fraction=float(1 - valid.mean()),
    )


def _clouds(seed: int, n: int, fraction: float) -> np.ndarray:
    """``(y, x)`` bool, True = clear; blobby clouds covering ``fraction`` of the pixels."""
    z = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((n, n)), n / 16)
    return np.asarray(z <= np.quantile(z, 1.0 - fraction))


def _estimate(scene: Scene, dx: float, dy: float, **kw: Any) -> ShiftResult:
    ref = _stack("sentinel-2-l2a", 10.0, scene.render(10.0), "B04", kw.pop("ref_clear", None))
    mov_plane = scene.render(30.0, dx, dy) * 1.05 + 0.01  # another sensor's radiometry
    mov = _stack("landsat-c2-l2", 30.0, mov_plane, "SR_B4", kw.pop("mov_clear", None))
    return estimate_tile_shift(ref, mov, "B04", "SR_B4", **kw)


# ---------------------------------------------------------------------------------------------
# band choice


def test_comparable_band_pairs_red_bands_and_refuses_sar() -> None:
    s2 = get_profile(SensorId.SENTINEL_2_L2A, Provider.EARTH_SEARCH).bands
    landsat = get_profile(SensorId.LANDSAT_C2_L2, Provider.PLANETARY_COMPUTER).bands
    s1 = get_profile(SensorId.SENTINEL_1_RTC, Provider.PLANETARY_COMPUTER).bands
    assert comparable_band(s2, landsat) == ("B04", "SR_B4")
    # Without red bands the NIR pair is used (S2 B08 0.842 vs Landsat SR_B5 0.865).
    no_red = [b for b in s2 if b.name != "B04"]
    assert comparable_band(no_red, [b for b in landsat if b.name != "SR_B4"]) == ("B08", "SR_B5")
    assert comparable_band(s2, s1) is None
    assert comparable_band(s1, s2) is None


def test_comparable_band_uses_per_scene_enmap_wavelengths() -> None:
    s2 = get_profile(SensorId.SENTINEL_2_L2A, Provider.EARTH_SEARCH).bands
    enmap = get_profile(SensorId.ENMAP_L2A, Provider.DLR).bands
    assert comparable_band(s2, enmap) is None  # no wavelengths in the profile: nothing to pair
    wavelengths = {f"B{i:03d}": 0.42 + 0.0065 * (i - 1) for i in range(1, 91)}
    ref, mov = comparable_band(s2, enmap, wavelengths_um=wavelengths) or ("", "")
    assert ref == "B04"
    assert mov == "B039"  # 0.42 + 0.0065 * 38 = 0.667, the band nearest 0.665 µm


# ---------------------------------------------------------------------------------------------
# estimation


@pytest.mark.parametrize(("dx", "dy"), [(7.0, -4.0), (-11.0, 5.5)])
def test_known_shift_is_recovered_and_the_correction_removes_it(dx: float, dy: float) -> None:
    scene = Scene(seed=3)
    result = _estimate(scene, dx, dy)
    assert result.estimated, result.reason
    assert result.dx_m is not None and result.dy_m is not None
    assert abs(result.dx_m - dx) <= 0.1 * 30.0
    assert abs(result.dy_m - dy) <= 0.1 * 30.0
    assert result.confidence > 5.0
    assert decide(result, max_shift_m=30.0, min_confidence=3.0)
    # Re-render with the corrected geocoding: what is left must be below 0.2 px.
    residual = _estimate(scene, dx - result.dx_m, dy - result.dy_m)
    assert residual.dx_m is not None and residual.dy_m is not None
    assert math.hypot(residual.dx_m, residual.dy_m) <= 0.2 * 30.0


def test_partly_cloudy_tile_uses_pixels_clear_in_both() -> None:
    scene = Scene(seed=5)
    ref_clear = _clouds(1, 192, 0.2)
    mov_clear = _clouds(2, 64, 0.2)
    result = _estimate(scene, 7.0, -4.0, ref_clear=ref_clear, mov_clear=mov_clear)
    assert result.estimated, result.reason
    assert result.dx_m == pytest.approx(7.0, abs=3.0)
    assert result.dy_m == pytest.approx(-4.0, abs=3.0)
    assert 0.5 <= result.valid_fraction < 0.8


def test_moving_finer_than_reference_gives_the_same_convention() -> None:
    scene = Scene(seed=8)
    ref = _stack("landsat-c2-l2", 30.0, scene.render(30.0), "SR_B4")
    mov = _stack("sentinel-2-l2a", 10.0, scene.render(10.0, -9.0, 6.0), "B04")
    result = estimate_tile_shift(ref, mov, "SR_B4", "B04")
    assert result.estimated, result.reason
    assert result.dx_m == pytest.approx(-9.0, abs=3.0)
    assert result.dy_m == pytest.approx(6.0, abs=3.0)


def test_mostly_cloudy_tile_is_not_estimated_nor_applied() -> None:
    result = _estimate(Scene(seed=3), 7.0, -4.0, mov_clear=_clouds(4, 64, 0.7))
    assert not result.estimated
    assert result.dx_m is None
    assert "clear in both" in result.reason
    assert not decide(result, max_shift_m=30.0, min_confidence=0.0)


def test_featureless_tile_has_no_confident_peak() -> None:
    rng = np.random.default_rng(0)
    ref = _stack("sentinel-2-l2a", 10.0, 0.2 + 1e-3 * rng.standard_normal((192, 192)), "B04")
    mov = _stack("landsat-c2-l2", 30.0, 0.2 + 1e-3 * rng.standard_normal((64, 64)), "SR_B4")
    result = estimate_tile_shift(ref, mov, "B04", "SR_B4")
    assert not result.estimated
    assert "no clear match" in result.reason
    assert 0.0 < result.confidence < 3.0
    assert not decide(result, max_shift_m=30.0, min_confidence=0.0)


def test_constant_images_have_no_texture() -> None:
    ref = _stack("sentinel-2-l2a", 10.0, np.full((192, 192), 0.2, np.float32), "B04")
    mov = _stack("landsat-c2-l2", 30.0, np.full((64, 64), 0.3, np.float32), "SR_B4")
    result = estimate_tile_shift(ref, mov, "B04", "SR_B4")
    assert (result.estimated, result.reason) == (False, "no texture to match")


def test_shift_beyond_the_search_bound_is_rejected() -> None:
    result = _estimate(Scene(seed=3), 7.0, -4.0, max_shift_px=0.1)
    assert not result.estimated
    assert "exceeds the 0.1 px bound" in result.reason


def test_stacks_on_different_tiles_raise() -> None:
    scene = Scene(seed=1)
    ref = _stack("sentinel-2-l2a", 10.0, scene.render(10.0), "B04")
    other = _stack("landsat-c2-l2", 30.0, scene.render(30.0), "SR_B4")
    moved = PeriodStack(
        **{**other.__dict__, "transform": other.transform @ Affine.translation(1, 0)}
    )
    with pytest.raises(InvalidInputError, match="not on the reference tile grid"):
        estimate_tile_shift(ref, moved, "B04", "SR_B4")
    with pytest.raises(InvalidInputError, match="'B08' is not in"):
        estimate_tile_shift(ref, other, "B08", "SR_B4")


# ---------------------------------------------------------------------------------------------
# decision and item correction


def test_decide_applies_only_confident_shifts_within_the_bound() -> None:
    good = ShiftResult(dx_m=6.0, dy_m=-8.0, confidence=12.0, estimated=True, reason="")
    assert good.magnitude_m == pytest.approx(10.0)
    assert decide(good, max_shift_m=10.0, min_confidence=12.0)
    assert not decide(good, max_shift_m=9.9, min_confidence=3.0)
    assert not decide(good, max_shift_m=30.0, min_confidence=12.5)
    sar = ShiftResult.not_estimated("no comparable optical band (SAR vs optical)")
    assert (sar.estimated, sar.dx_m, sar.magnitude_m) == (False, None, None)
    assert not decide(sar, max_shift_m=1e9, min_confidence=0.0)


def test_shift_item_translates_every_transform_and_bbox() -> None:
    item: dict[str, Any] = {
        "id": "LC09_L2SP_196018_20240504_02_T1",
        "bbox": [9.0, 47.0, 10.0, 48.0],
        "properties": {"proj:transform": [30.0, 0.0, 491985.0, 0.0, -30.0, 5353215.0]},
        "assets": {
            "red": {
                "href": "red.tif",
                "proj:transform": [30.0, 0.0, 491985.0, 0.0, -30.0, 5353215.0, 0.0, 0.0, 1.0],
                "proj:bbox": [491985.0, 5121285.0, 723615.0, 5353215.0],
            },
            "thumbnail": {"href": "thumb.png"},
        },
    }
    out = shift_item(item, dx_m=7.0, dy_m=-4.0)
    # Content appeared 7 m east and 4 m south: the geocoding moves 7 m west and 4 m north.
    assert out["properties"]["proj:transform"] == [30.0, 0.0, 491978.0, 0.0, -30.0, 5353219.0]
    assert out["assets"]["red"]["proj:transform"] == [
        30.0, 0.0, 491978.0, 0.0, -30.0, 5353219.0, 0.0, 0.0, 1.0
    ]  # fmt: skip
    assert out["assets"]["red"]["proj:bbox"] == [491978.0, 5121289.0, 723608.0, 5353219.0]
    assert out["assets"]["thumbnail"] == {"href": "thumb.png"}
    assert out["bbox"] == [9.0, 47.0, 10.0, 48.0]
    # The input is untouched (deep copy).
    assert item["assets"]["red"]["proj:transform"][2] == 491985.0
    assert item["properties"]["proj:transform"][5] == 5353215.0
    with pytest.raises(InvalidInputError, match=r"no proj:transform"):
        shift_item({"id": "x", "properties": {}, "assets": {}}, 1.0, 1.0)


def test_shift_item_correction_matches_the_estimate_convention() -> None:
    """Translating the moving grid by (-dx, -dy) renders the content back in place."""
    scene = Scene(seed=3)
    result = _estimate(scene, 7.0, -4.0)
    assert result.dx_m is not None and result.dy_m is not None
    item = {"id": "m", "properties": {"proj:transform": [30.0, 0.0, ORIGIN[0], 0.0, -30.0,
                                                         ORIGIN[1]]}, "assets": {}}  # fmt: skip
    fixed = shift_item(item, result.dx_m, result.dy_m)["properties"]["proj:transform"]
    # Re-warping the shifted content from the corrected origin onto the tile grid moves it by
    # (corrected - original) origin: the true shift plus that is the residual.
    residual_x = 7.0 + (fixed[2] - ORIGIN[0])
    residual_y = -4.0 + (fixed[5] - ORIGIN[1])
    assert math.hypot(residual_x, residual_y) <= 0.2 * 30.0
