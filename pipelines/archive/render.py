"""Scene rendering: the world, clouds and shadows on a 5 m grid, mixed to a sensor's pixels.

A scene is rendered once on a *fine* grid of 5 m cells nested in its pixels. Every fine cell gets
one *label*: a clear class, a shadowed class, thick cloud, cloud edge or outside the swath. A
sensor pixel of ``f x f`` fine cells is described by how many of its cells carry each label
(:func:`label_counts`); its value in any band is the count-weighted mean of the label values
(:func:`mix`). So a pixel whose cells are all one clear class has exactly that class's value
(pure pixel), and masks follow from the counts (a pixel is cloud if any of its cells is cloud).

Injected misregistration: with ``shift_m = (dx, dy)`` the fine grid samples the world at
``(x - dx, y - dy)`` while the scene keeps its nominal transform, i.e. an object at map position
``P`` appears in the image at the nominal position ``P + (dx, dy)`` (east, north in metres).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage

from pipelines.archive.classes import CLASSES, SHADOW_FACTOR
from pipelines.archive.world import ProjectedWorld

__all__ = [
    "CLOUD_EDGE",
    "CLOUD_THICK",
    "FINE_RES",
    "N_CLASSES",
    "N_LABELS",
    "OUTSIDE",
    "Grid",
    "Sky",
    "label_counts",
    "label_table",
    "mix",
    "render_labels",
]

#: Edge of a fine cell in metres; every sensor pixel size is a multiple of it.
FINE_RES = 5.0
N_CLASSES = len(CLASSES)
#: Label of thick cloud, cloud edge and outside the swath; labels below are classes (clear:
#: ``id - 1``, shadowed: ``N_CLASSES + id - 1``).
CLOUD_THICK = 2 * N_CLASSES
CLOUD_EDGE = 2 * N_CLASSES + 1
OUTSIDE = 2 * N_CLASSES + 2
N_LABELS = 2 * N_CLASSES + 3
#: Brightness of cloud edges relative to thick cloud.
EDGE_BRIGHTNESS = 0.6


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, upper-left corner, pixel size and shape."""

    epsg: int
    x0: float
    y0: float
    res: float
    width: int
    height: int

    @property
    def transform(self) -> Affine:
        """Affine transform of the upper-left corner."""
        return Affine(self.res, 0.0, self.x0, 0.0, -self.res, self.y0)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)``."""
        return (self.x0, self.y0 - self.height * self.res, self.x0 + self.width * self.res, self.y0)

    def with_res(self, res: float) -> Grid:
        """The same extent at another pixel size (the extent must be a multiple of it)."""
        width = round(self.width * self.res / res)
        height = round(self.height * self.res / res)
        if not (
            math.isclose(width * res, self.width * self.res)
            and math.isclose(height * res, self.height * self.res)
        ):
            raise ValueError(f"extent of {self} is not a multiple of {res} m")
        return Grid(self.epsg, self.x0, self.y0, res, width, height)


@dataclass(frozen=True)
class Sky:
    """The atmosphere of one acquisition.

    Attributes:
        seed: Seed of the cloud field.
        cloud_target: Wanted cloud fraction (0..1) of the scene.
        shadow_m: Displacement (east, north) in metres of cloud shadows from their clouds.
        blob_m: Typical cloud size in metres.
        swath: Optional swath edge ``(nx, ny, c)``: cells with ``nx*x + ny*y > c`` are outside.
    """

    seed: int
    cloud_target: float
    shadow_m: tuple[float, float]
    blob_m: float = 400.0
    swath: tuple[float, float, float] | None = None


def _cloud_states(sky: Sky, shape: tuple[int, int], pad: int) -> np.ndarray:
    """Cloud state per fine cell on a grid padded by ``pad`` cells: 0 clear, 1 edge, 2 thick."""
    h, w = shape[0] + 2 * pad, shape[1] + 2 * pad
    out = np.zeros((h, w), dtype=np.uint8)
    if sky.cloud_target <= 0:
        return out
    rng = np.random.default_rng([sky.seed, 77])
    cell = 20  # noise lattice: one value per 20 fine cells (100 m)
    ch, cw = h // cell + 3, w // cell + 3
    noise = ndimage.gaussian_filter(rng.standard_normal((ch, cw)), sky.blob_m / (cell * FINE_RES))
    core = noise[1:-1, 1:-1]
    t_edge = float(np.quantile(core, 1.0 - min(sky.cloud_target, 0.99)))
    t_thick = t_edge + 0.3 * float(core.std())
    field = ndimage.zoom(noise, cell, order=1, prefilter=False, grid_mode=False)[:h, :w]
    out[field > t_edge] = 1
    out[field > t_thick] = 2
    return out


def render_labels(
    world: ProjectedWorld,
    grid: Grid,
    sky: Sky | None,
    shift_m: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Render a scene's labels on its fine grid.

    Args:
        world: The world projected to the scene's CRS.
        grid: The scene's nominal grid (pixel size a multiple of :data:`FINE_RES`).
        sky: Clouds, shadows and swath; ``None`` for a clear sky (radar).
        shift_m: Injected misregistration ``(dx, dy)``, see the module docstring.

    Returns:
        Labels, dims ``(y, x)`` at :data:`FINE_RES`, uint8 in ``[0, N_LABELS)`` (no nodata;
        :data:`OUTSIDE` marks cells outside the swath or the world).
    """
    fine = grid.with_res(FINE_RES)
    transform = Affine(FINE_RES, 0, fine.x0 - shift_m[0], 0, -FINE_RES, fine.y0 - shift_m[1])
    classes = world.rasterize(transform, fine.shape)
    labels = classes.astype(np.int16) - 1
    outside = classes == 0
    if sky is not None:
        ex = round(sky.shadow_m[0] / FINE_RES)
        ey = round(sky.shadow_m[1] / FINE_RES)
        pad = max(abs(ex), abs(ey))
        states = _cloud_states(sky, fine.shape, pad)
        h, w = fine.shape
        cloud = states[pad : pad + h, pad : pad + w]
        # A cell is in shadow when the cell displaced by -shadow_m is cloud.
        shadow = states[pad + ey : pad + ey + h, pad - ex : pad - ex + w] > 0
        labels[shadow & (cloud == 0)] += N_CLASSES
        labels[cloud == 1] = CLOUD_EDGE
        labels[cloud == 2] = CLOUD_THICK
        if sky.swath is not None:
            nx, ny, c = sky.swath
            xs = fine.x0 + (np.arange(w) + 0.5) * FINE_RES
            ys = fine.y0 - (np.arange(h) + 0.5) * FINE_RES
            outside |= (nx * xs[None, :] + ny * ys[:, None]) > c
    labels[outside] = OUTSIDE
    return labels.astype(np.uint8)


def label_counts(labels: np.ndarray, factor: int) -> np.ndarray:
    """Count the labels of the fine cells inside each pixel of a ``factor`` times coarser grid.

    Args:
        labels: Fine labels, dims ``(y, x)``, both sizes multiples of ``factor``.
        factor: Pixel size / fine cell size.

    Returns:
        Counts, dims ``(y, x, label)``, uint16 (each pixel sums to ``factor**2``; no nodata).
    """
    h, w = labels.shape
    ny, nx = h // factor, w // factor
    out = np.empty((ny, nx, N_LABELS), dtype=np.uint16)
    col = (np.arange(w) // factor)[None, :]
    rows_per_chunk = max(1, 2_000_000 // max(1, w * factor))
    for r0 in range(0, ny, rows_per_chunk):
        r1 = min(ny, r0 + rows_per_chunk)
        block = labels[r0 * factor : r1 * factor].astype(np.int64)
        row = (np.arange(block.shape[0]) // factor)[:, None]
        idx = ((row * nx + col) * N_LABELS + block).ravel()
        counts = np.bincount(idx, minlength=(r1 - r0) * nx * N_LABELS)
        out[r0:r1] = counts.reshape(r1 - r0, nx, N_LABELS)
    return out


def coarsen_counts(counts: np.ndarray, factor: int) -> np.ndarray:
    """Sum counts over ``factor x factor`` pixel blocks (dims ``(y, x, label)``, uint16)."""
    ny, nx, nl = counts.shape
    blocks = counts.reshape(ny // factor, factor, nx // factor, factor, nl)
    return np.asarray(blocks.sum(axis=(1, 3), dtype=np.uint16))


def label_table(class_values: np.ndarray, cloud_values: np.ndarray | None) -> np.ndarray:
    """Per-label band values from per-class values.

    Args:
        class_values: Values per class and band, dims ``(class, band)`` in class-id order.
        cloud_values: Values of thick cloud per band, dims ``(band,)``; ``None`` for radar
            (clouds and shadows then leave the surface value unchanged).

    Returns:
        Values, dims ``(label, band)``, float64; the :data:`OUTSIDE` row is 0.
    """
    nb = class_values.shape[1]
    table = np.zeros((N_LABELS, nb), dtype=np.float64)
    table[:N_CLASSES] = class_values
    if cloud_values is None:
        table[N_CLASSES : 2 * N_CLASSES] = class_values
    else:
        table[N_CLASSES : 2 * N_CLASSES] = class_values * SHADOW_FACTOR
        table[CLOUD_THICK] = cloud_values
        table[CLOUD_EDGE] = cloud_values * EDGE_BRIGHTNESS
    return table


def mix(counts: np.ndarray, table: np.ndarray, dtype: type[np.floating] = np.float64) -> np.ndarray:
    """Pixel values as the count-weighted mean of label values.

    Args:
        counts: Label counts, dims ``(y, x, label)``.
        table: Label values, dims ``(label, band)``.
        dtype: Output dtype (computation is float64 either way).

    Returns:
        Values, dims ``(band, y, x)``, ``dtype`` (pixels with any :data:`OUTSIDE` cell are
        meaningless here; callers set them to the product's nodata).
    """
    ny, nx, nl = counts.shape
    n = counts[0, 0].sum(dtype=np.float64) if ny and nx else 1.0
    nb = table.shape[1]
    out = np.empty((nb, ny, nx), dtype=dtype)
    rows = max(1, 4_000_000 // max(1, nx * max(nb, nl)))
    for r0 in range(0, ny, rows):
        r1 = min(ny, r0 + rows)
        flat = counts[r0:r1].reshape(-1, nl).astype(np.float64)
        vals = flat @ table / n
        out[:, r0:r1, :] = vals.T.reshape(nb, r1 - r0, nx)
    return out
