"""Write shards of PeriodStacks into the Zarr v3 cube (layout: :mod:`schemas.cube`).

Every group, array, dimension name, dtype, fill, chunk and shard shape comes from the
:class:`~schemas.cube.CubeLayout`; this module never spells them itself.

Tile axis and periods
    One position on the tile axis holds one tile in one period, as one catalog row describes
    one tile in one period: ``tiles/id`` and ``tiles/period`` name the pair and the ``time`` axis
    holds that period's planes (1 for best/composite, up to ``n_time`` for a series). A
    :class:`~pipelines.grid.Shard` therefore holds the tiles of one period: a build with ``P``
    periods plans one run of shards per period (``grid.shards(tiles, K, first_index=...)`` with
    consecutive ``first_index`` values), and :func:`write_shard` refuses stacks of two periods.

Who writes what
    The planner sizes the tile axis once (:func:`open_or_create_cube`,
    :func:`ensure_tile_capacity`: it rewrites array metadata, so never from parallel tasks);
    then each shard task calls :func:`write_shard` for the positions of its own shard only.
    :func:`write_shard` writes the shard's whole block of every array it touches, so a retried
    task overwrites whatever a crashed attempt left. The catalog commit comes after it.

Encoding
    Physical float32 values become storage values with the sensor's CF ``scale_factor`` and
    ``add_offset``: ``stored = rint((value - add_offset) / scale_factor)``, rounding half to even
    (numpy's ``rint``), clipped to the dtype range. NaN and infinities become the nodata value;
    a real value that would encode to the nodata value is moved one step away from it, so it
    still reads as a value. Reading back gives the value to within ``scale_factor / 2``.

Determinism
    No timestamps or host names go into attributes; identical inputs give identical bytes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from pipelines.grid import Shard
from pipelines.stack import PeriodStack
from schemas.cube import (
    BAND,
    LABELS_GROUP,
    MASK_FILL,
    NAT_INT64,
    TILES_GROUP,
    CubeLayout,
    LabelLayout,
    SensorLayout,
    data_path,
    datetime_path,
    label_path,
    mask_path,
    multilabel_path,
    pixels_per_tile,
    source_items_path,
)
from schemas.errors import ConflictError, InvalidInputError

__all__ = [
    "TileLabels",
    "check_cube_layout",
    "encode_values",
    "ensure_tile_capacity",
    "open_or_create_cube",
    "tile_capacity",
    "write_shard",
]

_VERSION_KEY = "eoforge_cube_version"


@dataclass(frozen=True, eq=False)
class TileLabels:
    """One label source's arrays for one tile.

    Attributes:
        raster: ``(y, x)`` class indexes at the layout's label resolution, the layout's label
            dtype; the source's nodata where unknown.
        multilabel: ``(class,)`` uint8, 1 where the class is present and 0 where not; ``None``
            leaves the fill 255 (not labelled).
    """

    raster: npt.NDArray[Any]
    multilabel: npt.NDArray[np.uint8] | None = None


def _array(group: zarr.Group, path: str) -> zarr.Array[Any]:
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise ConflictError(
            f"{path} in the cube is a group, not an array", fix="use a new cube path"
        )
    return node


def _first_difference(stored: Any, wanted: Any, where: str = "") -> str | None:
    """Path of the first differing value of two JSON-like trees, e.g. ``sensors[1].bands``."""
    if isinstance(stored, Mapping) and isinstance(wanted, Mapping):
        for key in sorted(set(stored) | set(wanted), key=str):
            sub = f"{where}.{key}" if where else str(key)
            if key not in stored or key not in wanted:
                return sub
            found = _first_difference(stored[key], wanted[key], sub)
            if found:
                return found
        return None
    if (
        isinstance(stored, Sequence)
        and isinstance(wanted, Sequence)
        and not isinstance(stored, str)
        and not isinstance(wanted, str)
    ):
        if len(stored) != len(wanted):
            return where or "(root)"
        for i, (a, b) in enumerate(zip(stored, wanted, strict=True)):
            found = _first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if stored == wanted else where or "(root)"


def _lookup(tree: Any, path: str) -> Any:
    node = tree
    for part in path.replace("]", "").replace("[", ".").split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, Sequence) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _check_layout(group: zarr.Group, layout: CubeLayout, where: str) -> None:
    wanted = layout.root_attrs()
    # Only the layout's own keys: a build adds others (statistics) that may change per run.
    stored = {k: v for k, v in dict(group.attrs).items() if k in wanted}
    diff = _first_difference(stored, wanted)
    if diff is not None:
        raise ConflictError(
            f"the existing cube was built with {diff} = {_lookup(stored, diff)!r}, the recipe "
            f"asks for {_lookup(wanted, diff)!r}",
            where=where,
            fix="an incremental build may add periods, tiles and scenes, not change what the "
            "cube's arrays hold: build a new cube (`eoforge build RECIPE --output NEW.zarr`, or "
            "a new output.path), or change the recipe back to the cube's parameters",
        )


def _create(group: zarr.Group, layout: CubeLayout, n_tiles: int) -> None:
    for name in layout.groups:
        group.create_group(name, attributes=layout.group_attrs(name), overwrite=True)
    for spec in layout.arrays:
        zarr.create_array(group.store, **spec.zarr_create_kwargs(n_tiles), overwrite=True)
    # The fixed coordinate arrays: band names and class names.
    for sensor in layout.sensors:
        _array(group, f"{sensor.name}/{BAND}")[:] = np.array(
            sensor.bands, dtype=np.dtypes.StringDType()
        )
    for lab in layout.labels:
        _array(group, f"{LABELS_GROUP}/{lab.source}_class")[:] = np.array(
            lab.class_names, dtype=np.dtypes.StringDType()
        )
    # The root attributes mark the cube complete; they are written last, so a crash during
    # creation leaves a cube that the next call recreates instead of trusting.
    group.update_attributes(layout.root_attrs())


def check_cube_layout(path: str | Path, layout: CubeLayout) -> bool:
    """Refuse early a cube whose layout differs from ``layout``; writes nothing.

    Incremental builds may add periods, tiles and scenes to a cube, never change what its
    arrays hold (bands, resolutions, grid, dtypes, codec, labels): that needs a new cube.

    Returns:
        ``True`` if an eoforge cube with this layout exists at ``path``, ``False`` if none.

    Raises:
        ConflictError: As :func:`open_or_create_cube`.
    """
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=False)
    except FileNotFoundError:
        return False
    if _VERSION_KEY not in group.attrs:
        return False
    _check_layout(group, layout, str(path))
    return True


def open_or_create_cube(
    path: str | Path, layout: CubeLayout, *, n_tiles_capacity: int = 0
) -> zarr.Group:
    """Open the cube at ``path``, creating every group and array of ``layout`` if it is new.

    Args:
        path: Directory of the cube (local path or URL zarr understands).
        layout: The layout the build writes.
        n_tiles_capacity: Least length of the tile axis afterwards (grown, never shrunk).

    Returns:
        The root group, opened for writing.

    Raises:
        ConflictError: The cube exists with a different layout (the message names the first
            differing parameter), or ``path`` holds a Zarr group that is not an eoforge cube.
    """
    where = str(path)
    try:
        group = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
    except FileNotFoundError:
        group = zarr.open_group(path, mode="w", zarr_format=3)
        _create(group, layout, n_tiles_capacity)
        return group
    if _VERSION_KEY in group.attrs:
        _check_layout(group, layout, where)
    else:
        foreign = sorted(set(group.keys()) - set(layout.groups))
        if foreign or group.attrs:
            raise ConflictError(
                f"the Zarr group holds {foreign or dict(group.attrs)} and is not an eoforge cube",
                where=where,
                fix="choose a new cube path",
            )
        # An interrupted creation (no root attributes yet): create it again.
        _create(group, layout, n_tiles_capacity)
        return group
    ensure_tile_capacity(group, n_tiles_capacity)
    return group


#: zarr's LocalStore writes ``<key>.<uuid4 hex>.partial`` and renames it onto ``<key>``.
_ZARR_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_orphaned_partials(cube: str | Path) -> list[Path]:
    """Remove the temporary files of chunk writes that never finished; returns them.

    zarr-python writes each chunk or shard to ``<key>.<uuid>.partial`` and renames it onto
    ``<key>``: a writer killed in between (a SIGKILLed build) leaves the temporary file in the
    cube. The key itself is either absent or whole, so nothing else needs repair; a resumed
    build rewrites the key. Call this only while holding the cube's lock
    (:func:`pipelines.lock.cube_lock`), before any writer of this run starts: another
    process's write in flight would look the same.

    Args:
        cube: The cube's directory (local).
    """
    removed: list[Path] = []
    root = Path(cube)
    if not root.is_dir():
        return removed
    for folder, _, names in os.walk(root):
        for name in names:
            if _ZARR_PARTIAL.search(name):
                path = Path(folder) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def tile_capacity(group: zarr.Group) -> int:
    """Current length of the tile axis (of ``tiles/id``)."""
    return int(_array(group, f"{TILES_GROUP}/id").shape[0])


def ensure_tile_capacity(group: zarr.Group, n_tiles: int) -> int:
    """Grow every tile-axis array to at least ``n_tiles`` positions (append-only).

    Call it from the planner only, before shard tasks start: it rewrites array metadata.

    Args:
        group: The cube's root group.
        n_tiles: Least length wanted.

    Returns:
        The tile-axis length afterwards (``max`` of the old length and ``n_tiles``).

    Raises:
        InvalidInputError: ``n_tiles`` is negative, or the group is not an eoforge cube.
    """
    if n_tiles < 0:
        raise InvalidInputError(f"n_tiles must be >= 0, got {n_tiles}")
    layout = CubeLayout.from_root_attrs(dict(group.attrs))
    specs = [s for s in layout.arrays if s.has_tile_axis]
    arrays = [_array(group, s.path) for s in specs]
    # A crash during an earlier resize can leave arrays of different lengths: even them out.
    target = max([n_tiles, *(a.shape[0] for a in arrays)])
    for spec, arr in zip(specs, arrays, strict=True):
        if arr.shape[0] != target:
            arr.resize(spec.shape(target))
    return target


def encode_values(values: npt.NDArray[np.float32], sensor: SensorLayout) -> npt.NDArray[Any]:
    """Physical values to storage values of ``sensor`` (module docstring: rounding, nodata).

    Args:
        values: Any shape, float32 physical units; NaN = no data.
        sensor: The sensor's layout (dtype, nodata, scale_factor, add_offset).

    Returns:
        Same shape, ``sensor.dtype``; the sensor's nodata where ``values`` is not finite.
    """
    dtype = np.dtype(sensor.dtype)
    phys = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(phys)
    scaled = phys
    if sensor.add_offset is not None:
        scaled = scaled - sensor.add_offset
    if sensor.scale_factor is not None:
        scaled = scaled / sensor.scale_factor
    if dtype.kind == "f":
        out = scaled.astype(dtype)
        out[missing] = sensor.nodata
        return out
    info = np.iinfo(dtype)
    nodata = int(sensor.nodata)
    lo = info.min + 1 if nodata == info.min else info.min
    hi = info.max - 1 if nodata == info.max else info.max
    stored = np.clip(np.rint(np.where(missing, 0.0, scaled)), lo, hi)
    # A value that encodes to the nodata value (inside the range) moves one step up.
    stored = np.where(stored == nodata, nodata + (1 if nodata < hi else -1), stored)
    stored = np.where(missing, nodata, stored)
    return stored.astype(dtype)


def _check_stack(stack: PeriodStack, sensor: SensorLayout, tile_id: str, n_px: int) -> None:
    where = f"tile {tile_id}, sensor {sensor.name}"
    if stack.sensor != sensor.name or stack.tile_id != tile_id:
        raise InvalidInputError(
            f"the stack is for sensor {stack.sensor!r}, tile {stack.tile_id!r}", where=where
        )
    if not math.isclose(stack.resolution_m, sensor.resolution_m):
        raise InvalidInputError(
            f"stack resolution {stack.resolution_m:g} m is not the cube's "
            f"{sensor.resolution_m:g} m",
            where=where,
            fix="load the sensor at the cube's resolution",
        )
    n_time, _, ny, nx = stack.data.shape
    if (ny, nx) != (n_px, n_px) or stack.mask.shape[1:] != (n_px, n_px):
        raise InvalidInputError(
            f"stack pixels {ny} x {nx} are not the tile's {n_px} x {n_px}", where=where
        )
    if n_time > sensor.n_time:
        raise InvalidInputError(
            f"the stack has {n_time} time planes, the cube holds {sensor.n_time}",
            where=where,
            fix="raise the recipe's series length or select fewer scenes",
        )
    if set(stack.bands) != set(sensor.bands) or len(stack.bands) != len(sensor.bands):
        raise InvalidInputError(
            f"stack bands {list(stack.bands)} are not the cube's {list(sensor.bands)}",
            where=where,
        )


def _write_sensor(
    group: zarr.Group,
    sensor: SensorLayout,
    layout: CubeLayout,
    tile_ids: Sequence[str],
    stacks: Mapping[str, PeriodStack],
    start: int,
) -> None:
    n = len(tile_ids)
    n_px = pixels_per_tile(layout.tile_size_m, sensor.resolution_m)
    nb, nt = len(sensor.bands), sensor.n_time
    data_spec = layout.array(data_path(sensor.name))
    data = np.full((n, nt, nb, n_px, n_px), data_spec.fill_value, dtype=data_spec.numpy_dtype())
    mask = np.full((n, nt, n_px, n_px), MASK_FILL, dtype=np.uint8)
    times = np.full((n, nt), NAT_INT64, dtype=np.int64)
    sources = np.full((n, nt), "", dtype=np.dtypes.StringDType())
    for i, tile_id in enumerate(tile_ids):
        stack = stacks.get(tile_id)
        if stack is None:
            continue
        _check_stack(stack, sensor, tile_id, n_px)
        order = [stack.bands.index(b) for b in sensor.bands]
        k = stack.data.shape[0]
        data[i, :k] = encode_values(stack.data[:, order], sensor)
        mask[i, :k] = stack.mask
        times[i, :k] = stack.times.astype("datetime64[ns]").astype(np.int64)
        sources[i, :k] = [",".join(ids) for ids in stack.sources]
    stop = start + n
    _array(group, data_path(sensor.name))[start:stop] = data
    _array(group, mask_path(sensor.name))[start:stop] = mask
    _array(group, datetime_path(sensor.name))[start:stop] = times
    _array(group, source_items_path(sensor.name))[start:stop] = sources


def _write_labels(
    group: zarr.Group,
    lab: LabelLayout,
    layout: CubeLayout,
    tile_ids: Sequence[str],
    labels: Mapping[str, Mapping[str, TileLabels]],
    start: int,
) -> None:
    n = len(tile_ids)
    n_px = pixels_per_tile(layout.tile_size_m, layout.label_resolution_m)
    raster_spec = layout.array(label_path(lab.source))
    multi_spec = layout.array(multilabel_path(lab.source))
    raster = np.full((n, n_px, n_px), lab.nodata, dtype=np.dtype(lab.dtype))
    multi = np.full((n, len(lab.class_names)), multi_spec.fill_value, dtype=np.uint8)
    for i, tile_id in enumerate(tile_ids):
        found = labels.get(tile_id, {}).get(lab.source)
        if found is None:
            continue
        where = f"tile {tile_id}, labels {lab.source}"
        if found.raster.shape != (n_px, n_px):
            raise InvalidInputError(
                f"label raster {found.raster.shape} is not the tile's {(n_px, n_px)}", where=where
            )
        raster[i] = found.raster
        if found.multilabel is not None:
            if found.multilabel.shape != (len(lab.class_names),):
                raise InvalidInputError(
                    f"multilabel has shape {found.multilabel.shape}, the source has "
                    f"{len(lab.class_names)} classes",
                    where=where,
                )
            multi[i] = found.multilabel
    _array(group, raster_spec.path)[start : start + n] = raster
    _array(group, multi_spec.path)[start : start + n] = multi


def _period_of(results: Mapping[str, Mapping[str, PeriodStack]], period_id: str | None) -> str:
    periods = {s.period_id for stacks in results.values() for s in stacks.values()}
    if period_id is not None:
        periods.add(period_id)
    if len(periods) != 1:
        raise InvalidInputError(
            f"a shard holds one period, got {sorted(periods) or 'none'}",
            fix="plan one run of shards per period (pipelines.write module docstring), and pass "
            "period_id for a shard without stacks",
        )
    return periods.pop()


def write_shard(
    group: zarr.Group,
    layout: CubeLayout,
    shard: Shard,
    results: Mapping[str, Mapping[str, PeriodStack]],
    labels: Mapping[str, Mapping[str, TileLabels]] | None = None,
    *,
    period_id: str | None = None,
) -> None:
    """Write one shard: every sensor's arrays, ``tiles/*`` and (if given) the labels.

    Tile ``shard.tiles[i]`` goes to position ``shard.start + i``. A tile or sensor without a
    stack keeps the fills there (mask ``NODATA``, NaT, ``""``); ``tiles/split`` is left for the
    split assignment at the end of the build.

    Args:
        group: The cube's root group (:func:`open_or_create_cube`).
        layout: Its layout.
        shard: The shard this task owns.
        results: Tile id -> sensor name -> the tile's stack for the shard's period.
        labels: Tile id -> label source -> arrays; ``None`` leaves the label arrays untouched.
        period_id: The shard's period; needed only when ``results`` holds no stack.

    Raises:
        InvalidInputError: Stacks of another tile, sensor, resolution, shape, band set or of
            two periods; labels for a cube without labels; or a tile-axis too short for the
            shard (size it with :func:`ensure_tile_capacity` first).
    """
    tile_ids = [t.id for t in shard.tiles]
    unknown = sorted(set(results) - set(tile_ids))
    if unknown:
        raise InvalidInputError(
            f"results for tiles {unknown} that are not in shard {shard.id}", where=shard.id
        )
    names = {s.name for s in layout.sensors}
    extra = sorted({name for stacks in results.values() for name in stacks} - names)
    if extra:
        raise InvalidInputError(
            f"stacks for sensors {extra} that the cube does not hold",
            where=shard.id,
            fix=f"use the cube's sensors {sorted(names)}",
        )
    if labels is not None and not layout.labels:
        raise InvalidInputError("labels given for a cube without label sources", where=shard.id)
    period = _period_of(results, period_id)
    start = shard.start
    stop = start + len(tile_ids)
    capacity = tile_capacity(group)
    if stop > capacity:
        raise InvalidInputError(
            f"shard {shard.id} needs positions up to {stop}, the cube holds {capacity}",
            where=shard.id,
            fix="grow the tile axis with ensure_tile_capacity before the shard tasks start",
        )
    for sensor in layout.sensors:
        stacks = {tid: s[sensor.name] for tid, s in results.items() if sensor.name in s}
        _write_sensor(group, sensor, layout, tile_ids, stacks, start)
    if labels is not None:
        for lab in layout.labels:
            _write_labels(group, lab, layout, tile_ids, labels, start)
    string = np.dtypes.StringDType()
    res = layout.reference_resolution_m
    _array(group, f"{TILES_GROUP}/id")[start:stop] = np.array(tile_ids, dtype=string)
    _array(group, f"{TILES_GROUP}/period")[start:stop] = np.array(
        [period] * len(tile_ids), dtype=string
    )
    _array(group, f"{TILES_GROUP}/epsg")[start:stop] = np.array(
        [t.epsg for t in shard.tiles], dtype=np.int32
    )
    _array(group, f"{TILES_GROUP}/transform")[start:stop] = np.array(
        [tuple(t.transform(res))[:6] for t in shard.tiles], dtype=np.float64
    )
