"""Previews of a cube: PNGs people would rather look at than read, tied together by an HTML page.

:func:`write_preview` writes into ``out``:

* ``map_split.png``: every tile footprint (WGS84) filled with its split's colour
  (:data:`SPLIT_COLORS`; ``unassigned`` where the row has no split);
* ``map_cloud.png``: the same footprints coloured by cloud fraction (mean over the tile's sensors
  that report one; grey where none does);
* ``tile_<n>.png`` for each sampled tile: one row per sensor with its image (RGB, Sentinel-1
  VV/VH false colour, or EnMAP true colour) stretched to the 2nd..98th percentile of its valid
  pixels beside its mask, and a last row with each label map and a legend of its class names;
* ``hist_<source>.png``: for each label source, the fraction of labelled pixels per class and
  split (nodata excluded);
* ``index.html``: one page that shows them all with relative links (opens from ``file://``,
  loads nothing from elsewhere), with the tile count in ``<span id="tile-count">`` and the number
  of sampled tiles in ``<span id="sampled-count">``.

The catalog rows come in as an Arrow table (``catalog.writer.read_records``: one row per commit,
``geometry`` WKB in WGS84, ``split``, ``sensors`` with ``cloud_fraction``, ``cube_position``); a
tile id committed more than once is shown at its newest (highest) cube position. Pixels are read
with plain zarr through :class:`schemas.cube.CubeLayout`. Every PNG has a fixed size in pixels
(:data:`MAP_SIZE_PX`, :func:`tile_figure_size_px`, :data:`HIST_SIZE_PX`); matplotlib draws with
its Agg backend (no display, no pyplot state).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from schemas.cube import (
    LABELS_GROUP,
    CubeLayout,
    LabelLayout,
    MaskBit,
    SensorLayout,
    data_path,
    label_path,
    mask_path,
)
from schemas.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    import pyarrow as pa
    import zarr
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "HIST_SIZE_PX",
    "MAP_SIZE_PX",
    "MASK_COLORS",
    "SPLIT_COLORS",
    "PreviewResult",
    "PreviewTile",
    "display_bands",
    "latest_rows",
    "mask_classes",
    "sample_tiles",
    "stretch",
    "tile_figure_size_px",
    "write_preview",
]

#: Dots per inch of every PNG (figure sizes below are given in pixels).
DPI = 100
#: Width, height of the two footprint maps, pixels.
MAP_SIZE_PX = (960, 720)
#: Width, height of one class histogram, pixels.
HIST_SIZE_PX = (960, 640)
#: Width, height of one panel of a tile figure, pixels.
PANEL_SIZE_PX = (320, 300)
#: Split name -> fill colour (RGB 0..255) of the split map; rows with no split are "unassigned".
SPLIT_COLORS: Mapping[str, tuple[int, int, int]] = {
    "train": (31, 119, 180),
    "val": (255, 127, 14),
    "test": (44, 160, 44),
    "unassigned": (150, 150, 190),
}
_OTHER_SPLIT_COLOR = (148, 103, 189)
#: Mask display classes, in priority order (first match wins), with their colours.
MASK_COLORS: Mapping[str, tuple[int, int, int]] = {
    "valid": (46, 139, 87),
    "nodata": (0, 0, 0),
    "cloud": (255, 255, 255),
    "shadow": (90, 90, 90),
    "cirrus": (200, 220, 255),
    "snow": (0, 220, 220),
    "other invalid": (230, 120, 40),
}
_NO_CLOUD_COLOR = (200, 200, 200)
#: Percentiles of the valid pixels that map to 0 and 255.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Candidate (red, green, blue) band names of optical sensors, first complete match wins.
_RGB_NAMES: tuple[tuple[str, str, str], ...] = (
    ("B04", "B03", "B02"),
    ("SR_B4", "SR_B3", "SR_B2"),
    ("red", "green", "blue"),
)
#: EnMAP true colour: the bands nearest these centre wavelengths (nm) when the cube knows them.
_TRUE_COLOR_NM = (650.0, 550.0, 470.0)
_WAVELENGTH_KEYS_NM = ("wavelengths_nm", "center_wavelengths_nm")
_WAVELENGTH_KEYS_UM = ("wavelengths_um", "center_wavelengths_um", "wavelengths")
#: Positions read at once when counting classes (bounded memory: block x y x x bytes).
_HIST_BLOCK = 64

UInt8Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class PreviewTile:
    """One tile as the preview sees it (the newest catalog row of its id).

    Attributes:
        id: Catalog row id.
        tile_id: Grid tile id.
        position: Position on the cube's tile axis.
        split: ``train``/``val``/``test``... or ``None`` when unassigned.
        cloud_fraction: Mean cloud fraction over the sensors that report one, or ``None``.
        rings: Exterior rings of the footprint, each an ``(n, 2)`` float64 array of lon, lat.
    """

    id: str
    tile_id: str
    position: int
    split: str | None
    cloud_fraction: float | None
    rings: tuple[npt.NDArray[np.float64], ...]


@dataclass(frozen=True, slots=True)
class PreviewResult:
    """What :func:`write_preview` wrote.

    Attributes:
        out: The output folder.
        index_html: ``out/index.html``.
        n_tiles: Tiles in the catalog (distinct row ids).
        sampled: Ids of the sampled tiles, in display order.
        images: Every PNG written (absolute paths), in page order.
    """

    out: Path
    index_html: Path
    n_tiles: int
    sampled: tuple[str, ...]
    images: tuple[Path, ...]


# --- catalog rows ------------------------------------------------------------------------------


def latest_rows(records: pa.Table) -> list[PreviewTile]:
    """One :class:`PreviewTile` per row id, from its row with the highest ``cube_position``.

    Args:
        records: Catalog rows (``catalog.writer.read_records``): ``id``, ``tile_id``,
            ``cube_position``, ``split``, ``geometry`` (WKB, WGS84), ``sensors``.

    Returns:
        The tiles sorted by id.
    """
    import shapely

    best: dict[str, dict[str, Any]] = {}
    for row in records.select(
        ["id", "tile_id", "cube_position", "split", "geometry", "sensors"]
    ).to_pylist():
        kept = best.get(row["id"])
        if kept is None or row["cube_position"] > kept["cube_position"]:
            best[row["id"]] = row
    tiles: list[PreviewTile] = []
    for row_id in sorted(best):
        row = best[row_id]
        clouds = [
            float(s["cloud_fraction"])
            for s in row["sensors"] or []
            if s.get("cloud_fraction") is not None and math.isfinite(s["cloud_fraction"])
        ]
        geom = shapely.from_wkb(row["geometry"])
        polygons = getattr(geom, "geoms", [geom])
        rings = tuple(
            np.asarray(p.exterior.coords, dtype=np.float64)[:, :2]
            for p in polygons
            if hasattr(p, "exterior") and not p.is_empty
        )
        tiles.append(
            PreviewTile(
                id=row_id,
                tile_id=row["tile_id"],
                position=int(row["cube_position"]),
                split=row["split"] or None,
                cloud_fraction=sum(clouds) / len(clouds) if clouds else None,
                rings=rings,
            )
        )
    return tiles


def sample_tiles(tiles: Sequence[PreviewTile], n: int, seed: int) -> list[PreviewTile]:
    """``min(n, len(tiles))`` tiles drawn without replacement, the same for the same seed.

    Returns:
        The drawn tiles sorted by id.

    Raises:
        InvalidInputError: ``n`` is negative.
    """
    if n < 0:
        raise InvalidInputError(
            f"cannot sample {n} tiles", where="--tiles", fix="give 0 or more, e.g. --tiles 4"
        )
    ordered = sorted(tiles, key=lambda t: t.id)
    k = min(n, len(ordered))
    if k == 0:
        return []
    picks = np.random.default_rng(seed).choice(len(ordered), size=k, replace=False)
    return [ordered[i] for i in sorted(int(p) for p in picks)]


# --- pixels ------------------------------------------------------------------------------------


def display_bands(sensor: SensorLayout, group_attrs: Mapping[str, Any]) -> tuple[str, list[int]]:
    """Which bands make the sensor's picture, and how.

    Args:
        sensor: The sensor's layout (band names in storage order).
        group_attrs: Attributes of the sensor's group; EnMAP centre wavelengths are taken from
            ``wavelengths_nm``/``center_wavelengths_nm`` (nm) or ``wavelengths_um``/
            ``center_wavelengths_um``/``wavelengths`` (µm) when present.

    Returns:
        ``(kind, indices)``: ``"rgb"`` with red, green, blue band indices (``B04/B03/B02``,
        ``SR_B4/SR_B3/SR_B2`` or ``red/green/blue``); ``"vv-vh"`` with the VV and VH indices
        (false colour R=VV, G=VH, B=VV-VH in dB); ``"true-colour"`` with the bands nearest 650,
        550, 470 nm; ``"bands"`` with three evenly spaced bands (or one band repeated for a
        single-band sensor) when nothing else fits.
    """
    names = list(sensor.bands)
    lower = [b.lower() for b in names]
    for triple in _RGB_NAMES:
        wanted = [t.lower() for t in triple]
        if all(w in lower for w in wanted):
            return "rgb", [lower.index(w) for w in wanted]
    if "vv" in lower and "vh" in lower:
        return "vv-vh", [lower.index("vv"), lower.index("vh")]
    wavelengths = _wavelengths_nm(group_attrs, len(names))
    if wavelengths is not None:
        picks = [int(np.nanargmin(np.abs(wavelengths - target))) for target in _TRUE_COLOR_NM]
        return "true-colour", picks
    n = len(names)
    if n >= 3:
        return "bands", [round(float(i)) for i in np.linspace(n - 1, 0, 3)]
    return "bands", [0, min(1, n - 1), 0] if n == 2 else [0, 0, 0]


def _wavelengths_nm(attrs: Mapping[str, Any], n_bands: int) -> npt.NDArray[np.float64] | None:
    for keys, factor in ((_WAVELENGTH_KEYS_NM, 1.0), (_WAVELENGTH_KEYS_UM, 1000.0)):
        for key in keys:
            value = attrs.get(key)
            if isinstance(value, list) and len(value) == n_bands:
                arr = np.array([np.nan if v is None else float(v) for v in value]) * factor
                if np.isfinite(arr).any():
                    return arr
    return None


def stretch(
    values: npt.NDArray[np.floating[Any]],
    valid: npt.NDArray[np.bool_],
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
) -> UInt8Image:
    """Percentile stretch of one channel to uint8 over its valid pixels.

    Args:
        values: ``(y, x)`` physical values (any float dtype).
        valid: ``(y, x)`` bool; False pixels (and non-finite values) are ignored by the stretch
            and drawn 0.
        percentiles: Low and high percentile of the valid pixels (mapped to 0 and 255).

    Returns:
        ``(y, x)`` uint8: the low percentile maps to 0, the high one to 255, clipped. All zeros
        when no pixel is valid; a flat 128 where the valid pixels have one value.
    """
    ok = valid & np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    if not ok.any():
        return out
    lo, hi = np.percentile(values[ok], percentiles)
    if not hi > lo:
        out[ok] = 128
        return out
    scaled = (values[ok] - lo) / (hi - lo) * 255.0
    out[ok] = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return out


def _physical(stored: npt.NDArray[Any], sensor: SensorLayout) -> npt.NDArray[np.float64]:
    data = stored.astype(np.float64)
    if not (isinstance(sensor.nodata, float) and math.isnan(sensor.nodata)):
        data[stored == sensor.nodata] = np.nan
    if sensor.scale_factor is not None:
        data *= sensor.scale_factor
    if sensor.add_offset is not None:
        data += sensor.add_offset
    return data


def sensor_image(
    data: npt.NDArray[Any],
    mask: npt.NDArray[np.uint8],
    sensor: SensorLayout,
    kind: str,
    bands: list[int],
) -> tuple[UInt8Image, int]:
    """The display image of one tile of one sensor.

    Args:
        data: ``(time, band, y, x)`` stored values of the sensor's ``data`` (nodata = the
            layout's fill).
        mask: ``(time, y, x)`` uint8 :class:`MaskBit` bitmask.
        sensor: The sensor's layout (scale/offset, nodata).
        kind: From :func:`display_bands` (``rgb``, ``vv-vh``, ``true-colour``, ``bands``).
        bands: Band indices from :func:`display_bands`.

    Returns:
        ``((y, x, 3) uint8 image, time index)``: the time plane with the most VALID pixels,
        each channel stretched over those pixels; invalid pixels are black.
    """
    valid_all = (mask & int(MaskBit.VALID)) != 0
    t = int(np.argmax(valid_all.reshape(valid_all.shape[0], -1).sum(axis=1)))
    valid = valid_all[t]
    phys = _physical(np.asarray(data[t]), sensor)
    if kind == "vv-vh":
        vv, vh = phys[bands[0]], phys[bands[1]]
        channels = [vv, vh, vv - vh]
    else:
        channels = [phys[i] for i in bands]
    return np.stack([stretch(c, valid) for c in channels], axis=-1), t


def mask_classes(mask: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Display class (index into :data:`MASK_COLORS`) of each pixel of a ``(y, x)`` bitmask.

    VALID wins, then NODATA, cloud, shadow, cirrus, snow; any other invalid pixel is "other
    invalid".
    """
    out = np.full(mask.shape, list(MASK_COLORS).index("other invalid"), dtype=np.uint8)
    order = [
        ("snow", MaskBit.SNOW),
        ("cirrus", MaskBit.CIRRUS),
        ("shadow", MaskBit.SHADOW),
        ("cloud", MaskBit.CLOUD),
        ("nodata", MaskBit.NODATA),
        ("valid", MaskBit.VALID),
    ]
    names = list(MASK_COLORS)
    for name, bit in order:  # lowest priority first; later assignments win
        out[(mask & int(bit)) != 0] = names.index(name)
    return out


def _label_colors(n_classes: int) -> npt.NDArray[np.float64]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return np.array([cmap(i % 20)[:3] for i in range(n_classes)], dtype=np.float64)


def _label_rgb(labels: npt.NDArray[Any], lab: LabelLayout) -> npt.NDArray[np.float64]:
    colors = _label_colors(len(lab.class_names))
    rgb = np.zeros((*labels.shape, 3), dtype=np.float64)
    known = labels < len(lab.class_names)
    rgb[known] = colors[labels[known].astype(np.intp)]
    return rgb  # nodata / unknown stays black


# --- figures -----------------------------------------------------------------------------------


def _array(root: zarr.Group, path: str) -> zarr.Array[Any]:
    import zarr

    node = root[path]
    if not isinstance(node, zarr.Array):
        raise InvalidInputError(
            f"{path} is a group, not an array", fix="give a cube written by eoforge build"
        )
    return node


def _figure(width_px: int, height_px: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _rgb01(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color[0] / 255.0, color[1] / 255.0, color[2] / 255.0)


def split_color(split: str | None) -> tuple[int, int, int]:
    """Fill colour of ``split`` on the split map (:data:`SPLIT_COLORS`)."""
    return SPLIT_COLORS.get(split or "unassigned", _OTHER_SPLIT_COLOR)


def _map_axes(fig: Figure, tiles: Sequence[PreviewTile], title: str) -> Axes:
    ax = fig.add_axes((0.08, 0.08, 0.62, 0.84))
    ax.set_title(title)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    coords = [r for t in tiles for r in t.rings]
    if coords:
        allc = np.concatenate(coords)
        x0, y0 = allc.min(axis=0)
        x1, y1 = allc.max(axis=0)
        pad = max(x1 - x0, y1 - y0, 1e-6) * 0.05
        ax.set_xlim(x0 - pad, x1 + pad)
        ax.set_ylim(y0 - pad, y1 + pad)
        mid = math.radians((y0 + y1) / 2)
        ax.set_aspect(1.0 / max(math.cos(mid), 0.05), adjustable="box")
    return ax


def _draw_footprints(
    ax: Axes, tiles: Sequence[PreviewTile], colors: Sequence[tuple[float, float, float]]
) -> None:
    from matplotlib.patches import Polygon

    for tile, color in zip(tiles, colors, strict=True):
        for ring in tile.rings:
            # No antialiasing: each tile is one flat colour inside a thin white edge.
            ax.add_patch(
                Polygon(
                    ring,
                    closed=True,
                    facecolor=color,
                    edgecolor="white",
                    linewidth=0.4,
                    antialiased=False,
                )
            )


def _split_map(tiles: Sequence[PreviewTile], path: Path) -> Path:
    from matplotlib.patches import Patch

    fig = _figure(*MAP_SIZE_PX)
    ax = _map_axes(fig, tiles, f"Tile footprints by split ({len(tiles)} tiles)")
    colors = [_rgb01(split_color(t.split)) for t in tiles]
    _draw_footprints(ax, tiles, colors)
    counts: dict[str, int] = {}
    for t in tiles:
        counts[t.split or "unassigned"] = counts.get(t.split or "unassigned", 0) + 1
    handles = [
        Patch(facecolor=_rgb01(split_color(name)), label=f"{name} ({n})")
        for name, n in sorted(counts.items())
    ]
    if handles:
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.74, 0.9), title="split")
    return _save(fig, path)


def _cloud_map(tiles: Sequence[PreviewTile], path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    fig = _figure(*MAP_SIZE_PX)
    ax = _map_axes(fig, tiles, "Tile footprints by cloud fraction (mean over sensors)")
    cmap = colormaps["viridis"]
    norm = Normalize(0.0, 1.0)
    colors = [
        _rgb01(_NO_CLOUD_COLOR)
        if t.cloud_fraction is None
        else tuple(float(c) for c in cmap(norm(t.cloud_fraction))[:3])
        for t in tiles
    ]
    _draw_footprints(ax, tiles, colors)  # type: ignore[arg-type]
    cax = fig.add_axes((0.76, 0.15, 0.03, 0.6))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="cloud fraction")
    if any(t.cloud_fraction is None for t in tiles):
        fig.legend(
            handles=[Patch(facecolor=_rgb01(_NO_CLOUD_COLOR), label="no cloud fraction")],
            loc="upper left",
            bbox_to_anchor=(0.72, 0.92),
        )
    return _save(fig, path)


def tile_figure_size_px(layout: CubeLayout) -> tuple[int, int]:
    """Width, height in pixels of one ``tile_<n>.png`` of a cube with this layout.

    One row per sensor (image, mask) plus one row of label maps; as many columns as the widest
    row (at least 2).
    """
    cols = max(2, len(layout.labels))
    rows = len(layout.sensors) + (1 if layout.labels else 0)
    return cols * PANEL_SIZE_PX[0], max(rows, 1) * PANEL_SIZE_PX[1]


def _legend_below(ax: Axes, handles: list[Any], ncol: int = 2) -> None:
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.02),
            ncol=ncol,
            fontsize=6,
            frameon=False,
        )


def _tile_figure(
    root: zarr.Group,
    layout: CubeLayout,
    tile: PreviewTile,
    displays: Mapping[str, tuple[str, list[int]]],
    path: Path,
) -> Path:
    from matplotlib.patches import Patch

    width, height = tile_figure_size_px(layout)
    cols = max(2, len(layout.labels))
    rows = max(len(layout.sensors) + (1 if layout.labels else 0), 1)
    fig = _figure(width, height)
    fig.suptitle(f"{tile.id}  (split: {tile.split or 'unassigned'}, position {tile.position})")
    grid = fig.add_gridspec(rows, cols, left=0.04, right=0.96, top=0.9, bottom=0.08, hspace=0.6)
    names = list(MASK_COLORS)
    mask_palette = np.array([_rgb01(MASK_COLORS[n]) for n in names])
    for r, sensor in enumerate(layout.sensors):
        kind, bands = displays[sensor.name]
        data = np.asarray(_array(root, data_path(sensor.name))[tile.position])
        mask = np.asarray(_array(root, mask_path(sensor.name))[tile.position])
        image, t = sensor_image(data, mask, sensor, kind, bands)
        band_names = [sensor.bands[i] for i in bands]
        what = {
            "rgb": "RGB " + "/".join(band_names),
            "vv-vh": "VV, VH, VV-VH (dB)",
            "true-colour": "true colour " + "/".join(band_names),
            "bands": "bands " + "/".join(band_names),
        }[kind]
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{sensor.name}: {what}, t={t}", fontsize=8)
        ax.set_axis_off()
        classes = mask_classes(mask[t])
        axm = fig.add_subplot(grid[r, 1])
        axm.imshow(mask_palette[classes], interpolation="nearest")
        axm.set_title(f"{sensor.name} mask", fontsize=8)
        axm.set_axis_off()
        present = sorted(set(np.unique(classes).tolist()))
        _legend_below(
            axm,
            [
                Patch(facecolor=mask_palette[i], edgecolor="black", linewidth=0.3, label=names[i])
                for i in present
            ],
            ncol=3,
        )
    for c, lab in enumerate(layout.labels):
        labels = np.asarray(_array(root, label_path(lab.source))[tile.position])
        ax = fig.add_subplot(grid[rows - 1, c])
        ax.imshow(_label_rgb(labels, lab), interpolation="nearest")
        ax.set_title(f"labels: {lab.source}", fontsize=8)
        ax.set_axis_off()
        colors = _label_colors(len(lab.class_names))
        present = sorted(int(v) for v in np.unique(labels))
        handles = [
            Patch(facecolor=colors[v], label=_short(lab.class_names[v]))
            for v in present
            if v < len(lab.class_names)
        ]
        if any(v >= len(lab.class_names) for v in present):
            handles.append(Patch(facecolor="black", label="nodata"))
        _legend_below(ax, handles)
    return _save(fig, path)


def _short(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def class_counts(
    root: zarr.Group, lab: LabelLayout, tiles: Sequence[PreviewTile]
) -> dict[str, npt.NDArray[np.int64]]:
    """Pixel count per class and split of one label source (nodata and unknown indices excluded).

    Reads ``labels/<source>`` ``(tile, y, x)`` in blocks of positions, so memory stays bounded.

    Returns:
        Split name (``unassigned`` for none) -> int64 ``(n_classes,)`` counts.
    """
    arr = _array(root, label_path(lab.source))
    n_classes = len(lab.class_names)
    by_split: dict[str, list[int]] = {}
    for t in tiles:
        by_split.setdefault(t.split or "unassigned", []).append(t.position)
    out: dict[str, npt.NDArray[np.int64]] = {}
    for split, positions in sorted(by_split.items()):
        counts = np.zeros(n_classes, dtype=np.int64)
        positions.sort()
        for start in range(0, len(positions), _HIST_BLOCK):
            block = np.asarray(arr.oindex[np.array(positions[start : start + _HIST_BLOCK])])
            values = block[block < n_classes].astype(np.intp)
            counts += np.bincount(values, minlength=n_classes)[:n_classes]
        out[split] = counts
    return out


def _histogram(counts: Mapping[str, npt.NDArray[np.int64]], lab: LabelLayout, path: Path) -> Path:
    fig = _figure(*HIST_SIZE_PX)
    ax = fig.add_axes((0.38, 0.1, 0.58, 0.82))
    total = sum((c for c in counts.values()), np.zeros(len(lab.class_names), dtype=np.int64))
    shown = [i for i in range(len(lab.class_names)) if total[i] > 0]
    ax.set_title(f"labels/{lab.source}: class frequencies per split (share of labelled pixels)")
    ax.set_xlabel("fraction of the split's labelled pixels")
    if not shown:
        ax.text(0.5, 0.5, "no labelled pixels", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, path)
    splits = list(counts)
    height = 0.8 / max(len(splits), 1)
    y = np.arange(len(shown), dtype=np.float64)
    for j, split in enumerate(splits):
        c = counts[split][shown].astype(np.float64)
        frac = c / c.sum() if c.sum() else c
        ax.barh(
            y + (j - (len(splits) - 1) / 2) * height,
            frac,
            height=height,
            color=_rgb01(split_color(None if split == "unassigned" else split)),
            label=f"{split} ({int(counts[split].sum())} px)",
        )
    ax.set_yticks(y, [_short(lab.class_names[i], 40) for i in shown], fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- the page ----------------------------------------------------------------------------------

_PAGE_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
"""

# Marks each image once it has loaded (data-width = naturalWidth) and counts them, so a headless
# browser's DOM dump shows whether every picture decoded.
_PAGE_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img");
  var ok = 0;
  imgs.forEach(function (img) {
    img.setAttribute("data-width", String(img.naturalWidth));
    if (img.complete && img.naturalWidth > 0) { ok += 1; }
  });
  document.getElementById("images-loaded").textContent = String(ok);
});
"""


def _figure_html(src: str, caption: str) -> str:
    return (
        f'<figure><a href="{html.escape(src)}"><img src="{html.escape(src)}" '
        f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)}</figcaption>'
        "</figure>"
    )


def _page(
    cube: str,
    n_tiles: int,
    maps: Sequence[tuple[str, str]],
    tiles: Sequence[tuple[str, str]],
    hists: Sequence[tuple[str, str]],
) -> str:
    n_images = len(maps) + len(tiles) + len(hists)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>eoforge preview: {html.escape(cube)}</title>",
        f"<style>{_PAGE_STYLE}</style></head><body>",
        f"<h1>Preview of {html.escape(cube)}</h1>",
        f'<p>Tiles in the catalog: <span id="tile-count">{n_tiles}</span>; '
        f'sampled tiles shown: <span id="sampled-count">{len(tiles)}</span>; '
        f'images loaded: <span id="images-loaded">0</span> of '
        f'<span id="image-count">{n_images}</span>.</p>',
        "<h2>Footprints</h2>",
        *(_figure_html(src, cap) for src, cap in maps),
        "<h2>Sampled tiles</h2>",
        "<p>Each sensor's picture is stretched to the 2nd-98th percentile of its valid pixels; "
        "invalid pixels are black. Label nodata is black.</p>",
        *(_figure_html(src, cap) for src, cap in tiles),
        "<h2>Class histograms</h2>",
        *(_figure_html(src, cap) for src, cap in hists),
        f"<script>{_PAGE_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_preview(
    cube: str | Path, records: pa.Table, out: str | Path, *, tiles: int = 4, seed: int = 0
) -> PreviewResult:
    """Write the preview PNGs and ``index.html`` of a local cube into ``out`` (module docstring).

    Args:
        cube: Local cube folder (Zarr v3 group written by ``eoforge build``).
        records: Its catalog rows (``catalog.writer.read_records(cube)``).
        out: Output folder; created if missing. Files of an earlier preview are overwritten.
        tiles: Number of tiles to sample for per-tile figures (0 for none).
        seed: Seed of the sample; the same seed picks the same tiles.

    Returns:
        What was written.

    Raises:
        NotFoundError: ``cube`` does not exist.
        InvalidInputError: ``cube`` is not an eoforge cube, ``tiles`` is negative, or ``out`` is
            a file.
    """
    import zarr

    cube_path = Path(cube)
    if not cube_path.exists():
        raise NotFoundError(
            "no such cube", where=str(cube_path), fix="give the cube directory a build wrote"
        )
    if tiles < 0:
        raise InvalidInputError(
            f"cannot sample {tiles} tiles", where="--tiles", fix="give 0 or more, e.g. --tiles 4"
        )
    try:
        root = zarr.open_group(cube_path, mode="r")
        layout = CubeLayout.from_root_attrs(dict(root.attrs))
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        if isinstance(err, InvalidInputError):
            raise InvalidInputError(str(err.what), where=str(cube_path), fix=err.fix) from None
        raise InvalidInputError(
            f"not an eoforge cube ({type(err).__name__}: {err})",
            where=str(cube_path),
            fix="give the cube directory a build wrote",
        ) from None
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(
            "the output path is a file", where=str(out_dir), fix="give a folder for the preview"
        )
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = latest_rows(records)
    picked = sample_tiles(rows, tiles, seed)
    images: list[Path] = []
    maps = [
        (_split_map(rows, out_dir / "map_split.png"), "Tile footprints coloured by split"),
        (_cloud_map(rows, out_dir / "map_cloud.png"), "Tile footprints coloured by cloud fraction"),
    ]
    displays = {
        s.name: display_bands(s, dict(root[s.name].attrs) | dict(root[data_path(s.name)].attrs))
        for s in layout.sensors
    }
    tile_figs: list[tuple[Path, str]] = []
    for n, tile in enumerate(picked):
        path = out_dir / f"tile_{n:03d}_{_safe_name(tile.id)}.png"
        _tile_figure(root, layout, tile, displays, path)
        tile_figs.append((path, f"{tile.id} ({tile.split or 'unassigned'})"))
    hists: list[tuple[Path, str]] = []
    for lab in layout.labels:
        counts = class_counts(root, lab, rows)
        path = _histogram(counts, lab, out_dir / f"hist_{_safe_name(lab.source)}.png")
        hists.append((path, f"{LABELS_GROUP}/{lab.source} class frequencies per split"))
    images = [p for p, _ in (*maps, *tile_figs, *hists)]
    page = _page(
        cube_path.name or str(cube_path),
        len(rows),
        [(p.name, c) for p, c in maps],
        [(p.name, c) for p, c in tile_figs],
        [(p.name, c) for p, c in hists],
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return PreviewResult(
        out=out_dir,
        index_html=index,
        n_tiles=len(rows),
        sampled=tuple(t.id for t in picked),
        images=tuple(images),
    )
