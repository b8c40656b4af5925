"""The Zarr v3 cube layout as data: group and array names, dims, dtypes, chunks, shards, attrs.

The writer (``pipelines``) and the reader (``catalog``) both build a :class:`CubeLayout` and never
spell an array path, a dimension order or a fill value themselves. Layout (DESIGN.md, "Cube
layout"), with ``K`` = tiles per shard::

    /                                   root attrs: the layout parameters (CubeLayout.root_attrs)
    <sensor>/data         (tile, time, band, y, x)  int16/uint16/float32, CF scale_factor/add_offset
    <sensor>/mask         (tile, time, y, x)        uint8 bitmask of MaskBit, fill NODATA
    <sensor>/datetime     (tile, time)              int64 ns since 1970 UTC (CF units), NaT fill
    <sensor>/source_items (tile, time)              str: item id(s) that made each plane, "," joined
    <sensor>/band         (band,)                   str band names (the xarray ``band`` coordinate)
    labels/<source>              (tile, y, x)       uint8/uint16 class index, fill = label nodata
    labels/<source>_multilabel   (tile, <source>_class)  uint8 0/1, fill 255 (not labelled)
    labels/<source>_class        (<source>_class,)  str class names
    tiles/id, tiles/period, tiles/split (tile,)     str, fill "" (unused position / unassigned)
    tiles/epsg            (tile,)                   int32, fill 0
    tiles/transform       (tile, affine)            float64 a, b, c, d, e, f at ``resolution_m``

Raster arrays (data, mask, labels) are chunked one tile x one time x all bands x full tile and
sharded ``K`` tiles per shard, so one build task that owns shard ``s`` writes tile positions
``[s*K, (s+1)*K)`` and no other task touches those files. The small per-tile arrays are chunked
``K`` tiles per chunk (unsharded), which aligns them with the same boundaries.

The tile axis is append-only and its length need not be a multiple of ``K`` (the last shard may be
partial; nothing pads it). A later build appends starting at the next multiple of ``K``
(:meth:`CubeLayout.first_free_shard`), so it never rewrites a committed shard; the skipped
positions keep the fill values and have ``tiles/id == ""``.

Dimension notes: the acquisition-time array is named ``datetime`` rather than ``time`` so that no
2-D variable shares its name with the ``time`` dimension (xarray treats such a variable as a
would-be index). The class dimension is ``<source>_class`` because label sources have different
class counts and share one ``labels`` group.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntFlag
from typing import Any, Literal

import numpy as np

from schemas.errors import InvalidInputError, NotFoundError

__all__ = [
    "AFFINE",
    "BAND",
    "CUBE_FORMAT_VERSION",
    "DATA_DIMS",
    "DEFAULT_CODEC",
    "FLAG_BITS",
    "LABELS_GROUP",
    "MASK_DIMS",
    "MASK_FILL",
    "METADATA_CODEC",
    "NAT_INT64",
    "TILE",
    "TILES_GROUP",
    "TIME",
    "TIME_UNITS",
    "ArraySpec",
    "CodecSpec",
    "CubeLayout",
    "LabelLayout",
    "MaskBit",
    "SensorLayout",
    "X",
    "Y",
    "data_path",
    "datetime_path",
    "label_path",
    "mask_flag_attrs",
    "mask_path",
    "mask_stac_bitfields",
    "multilabel_path",
    "pixels_per_tile",
    "source_items_path",
]

#: Version of this layout, stored in the root attrs; a reader refuses a cube of another version.
CUBE_FORMAT_VERSION = 1

TILE = "tile"
TIME = "time"
BAND = "band"
Y = "y"
X = "x"
AFFINE = "affine"
#: Dimension order of ``<sensor>/data``.
DATA_DIMS: tuple[str, ...] = (TILE, TIME, BAND, Y, X)
#: Dimension order of ``<sensor>/mask``.
MASK_DIMS: tuple[str, ...] = (TILE, TIME, Y, X)

LABELS_GROUP = "labels"
TILES_GROUP = "tiles"
_RESERVED = frozenset({LABELS_GROUP, TILES_GROUP})
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: CF units of ``<sensor>/datetime`` (int64 storage, decoded to datetime64[ns] by xarray).
TIME_UNITS = "nanoseconds since 1970-01-01"
#: Fill of ``<sensor>/datetime``: numpy's NaT as int64.
NAT_INT64 = int(np.iinfo(np.int64).min)

_DATA_DTYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"})
_LABEL_DTYPES = frozenset({"uint8", "uint16"})
_MULTILABEL_FILL = 255


class MaskBit(IntFlag):
    """Bits of the per-pixel ``<sensor>/mask`` (uint8), the same for every sensor.

    There is no cross-sensor standard bit layout (Landsat QA_PIXEL, HLS Fmask and Sentinel-2 SCL
    all differ), so eoforge defines one and describes it in the standard ways: CF
    ``flag_masks``/``flag_meanings`` on the array (:func:`mask_flag_attrs`) and the STAC
    classification extension's ``classification:bitfields`` (:func:`mask_stac_bitfields`). The
    flag names after ``VALID`` are the flag planes of :data:`schemas.qa.QA_FLAGS`.
    """

    VALID = 1
    """Usable: observed and no flag that the sensor profile (plus recipe) calls invalid is set."""
    CLOUD = 2
    """Opaque cloud (S2 SCL 8/9, Landsat QA cloud or dilated cloud, EnMAP cloud)."""
    SHADOW = 4
    """Cloud shadow (S2 SCL 3, Landsat QA bit 4, EnMAP cloud shadow)."""
    SNOW = 8
    """Snow or ice (S2 SCL 11, Landsat QA bit 5, EnMAP snow); invalid only on request."""
    CIRRUS = 16
    """Thin cirrus (S2 SCL 10, Landsat QA bit 2, EnMAP cirrus >= medium)."""
    HAZE = 32
    """Haze (EnMAP only); invalid only on request."""
    NODATA = 64
    """No observation: outside the scene, fill, or a time plane that was never written."""
    SATURATED = 128
    """Saturated or defective detector values (Landsat QA_RADSAT, EnMAP pixel mask)."""


#: Fill value of the mask: an unwritten plane reads as "no observation".
MASK_FILL = int(MaskBit.NODATA)

#: QA flag plane name (``schemas.qa.QA_FLAGS``) -> mask bit.
FLAG_BITS: Mapping[str, MaskBit] = {
    "nodata": MaskBit.NODATA,
    "saturated": MaskBit.SATURATED,
    "cloud": MaskBit.CLOUD,
    "shadow": MaskBit.SHADOW,
    "cirrus": MaskBit.CIRRUS,
    "snow": MaskBit.SNOW,
    "haze": MaskBit.HAZE,
}


def _bit_name(bit: MaskBit) -> str:
    return (bit.name or str(int(bit))).lower()


def mask_flag_attrs() -> dict[str, Any]:
    """CF attributes describing the mask bits (``flag_masks``, ``flag_meanings``, ``long_name``).

    Returns:
        A JSON-able dict; ``flag_meanings`` lists the lower-case bit names in bit order.
    """
    bits = sorted(MaskBit, key=int)
    return {
        "long_name": "per-pixel quality bitmask",
        "flag_masks": [int(b) for b in bits],
        "flag_meanings": " ".join(_bit_name(b) for b in bits),
    }


def mask_stac_bitfields() -> list[dict[str, Any]]:
    """The mask bits as STAC ``classification:bitfields`` (classification extension v2).

    Returns:
        One single-bit field per :class:`MaskBit`, with classes 0 (``not_<name>``) and 1.
    """
    fields: list[dict[str, Any]] = []
    for bit in sorted(MaskBit, key=int):
        name = _bit_name(bit)
        fields.append(
            {
                "name": name,
                "offset": int(bit).bit_length() - 1,
                "length": 1,
                "description": (bit.__doc__ or "").strip(),
                "classes": [
                    {"value": 0, "name": f"not_{name}"},
                    {"value": 1, "name": name},
                ],
            }
        )
    return fields


def pixels_per_tile(tile_size_m: float, resolution_m: float) -> int:
    """Number of pixels along one tile edge at a resolution that must divide the tile exactly.

    Args:
        tile_size_m: Tile edge length in metres.
        resolution_m: Pixel size in metres.

    Returns:
        ``tile_size_m / resolution_m`` as an int.

    Raises:
        InvalidInputError: A value is not positive and finite, or the resolution does not divide
            the tile size (to 1 micrometre).
    """
    for what, value in (("tile size", tile_size_m), ("resolution", resolution_m)):
        if not (math.isfinite(value) and value > 0):
            raise InvalidInputError(
                f"{what} must be a positive number of metres, got {value!r}",
                fix="give a positive, finite value in metres",
            )
    n = round(tile_size_m / resolution_m)
    if n < 1 or abs(n * resolution_m - tile_size_m) > 1e-6:
        raise InvalidInputError(
            f"tile size {tile_size_m:g} m is not divisible by resolution {resolution_m:g} m",
            fix="choose a tile size that is a multiple of every sensor's resolution "
            "(e.g. 1200 m for 10, 20, 30 and 60 m)",
        )
    return int(n)


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """The compressor of a cube array, as data (what :func:`zarr.create_array` gets).

    The default, Blosc LZ4 level 5 with bit-shuffle, decoded about 3x faster than zstd level 3
    on reflectance chunks in ``benchmarks/bench_codecs.py`` at a better compression ratio;
    training reads far more often than builds write. ``zstd`` compresses harder when storage
    matters more than read speed.

    Arrays of one-byte values (masks, label rasters, multi-labels) are written without the
    bit-shuffle (:meth:`zarr_compressors` with ``itemsize=1``): on the demo cube's masks and
    labels it made decoding 1.5-2.5x slower, for the same size on masks and 12-19 % less on
    labels (1-2 kB a tile; ``benchmarks/bench_codecs.py``); a byte shuffle of one-byte values
    changes nothing.

    Attributes:
        name: ``blosc-lz4`` (default), ``blosc-zstd`` or ``zstd``.
        level: Compression level (Blosc 1-9, zstd 1-22).
        shuffle: Blosc shuffle; must be ``noshuffle`` for plain ``zstd``.
    """

    name: Literal["blosc-lz4", "blosc-zstd", "zstd"] = "blosc-lz4"
    level: int = 5
    shuffle: Literal["bitshuffle", "shuffle", "noshuffle"] = "bitshuffle"

    def __post_init__(self) -> None:
        if self.name not in ("blosc-lz4", "blosc-zstd", "zstd"):
            raise InvalidInputError(
                f"unknown codec {self.name!r}", fix="use 'blosc-lz4', 'blosc-zstd' or 'zstd'"
            )
        if self.shuffle not in ("bitshuffle", "shuffle", "noshuffle"):
            raise InvalidInputError(
                f"unknown shuffle {self.shuffle!r}",
                fix="use 'bitshuffle', 'shuffle' or 'noshuffle'",
            )
        top = 22 if self.name == "zstd" else 9
        if not 1 <= self.level <= top:
            raise InvalidInputError(
                f"codec {self.name} level {self.level} is out of range", fix=f"use 1 to {top}"
            )
        if self.name == "zstd" and self.shuffle != "noshuffle":
            raise InvalidInputError(
                "plain zstd has no shuffle filter", fix="use shuffle='noshuffle' or a blosc codec"
            )

    @classmethod
    def zstd(cls, level: int = 3) -> CodecSpec:
        """Plain zstd at ``level`` (no shuffle)."""
        return cls(name="zstd", level=level, shuffle="noshuffle")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (root attrs, recipe hashes)."""
        return {"name": self.name, "level": self.level, "shuffle": self.shuffle}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodecSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(name=data["name"], level=int(data["level"]), shuffle=data["shuffle"])

    def zarr_compressors(self, itemsize: int | None = None) -> tuple[Any, ...]:
        """The zarr v3 bytes-to-bytes codecs for ``compressors=`` of :func:`zarr.create_array`.

        Args:
            itemsize: Bytes per value of the array (``None``: unknown, e.g. strings). Blosc
                codecs of one-byte arrays get no shuffle (class docstring).
        """
        from zarr.codecs import BloscCodec, ZstdCodec

        if self.name == "zstd":
            return (ZstdCodec(level=self.level),)
        cname: Literal["lz4", "zstd"] = "lz4" if self.name == "blosc-lz4" else "zstd"
        shuffle = "noshuffle" if itemsize == 1 else self.shuffle
        return (BloscCodec(cname=cname, clevel=self.level, shuffle=shuffle),)


#: Codec of the raster arrays unless a recipe chooses another.
DEFAULT_CODEC = CodecSpec()
#: Codec of the small per-tile arrays (strings, times, transforms): compact, rarely read hot.
METADATA_CODEC = CodecSpec.zstd(3)

AttrValue = str | int | float | bool | list[Any] | dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One array of the cube: where it lives, its dims, dtype, fill, chunking and attributes.

    The tile axis (when ``dims[0] == "tile"``) grows; every other axis has a fixed length.

    Attributes:
        path: ``<group>/<name>``, e.g. ``"sentinel-2-l2a/data"``.
        dims: Dimension names in storage order (zarr ``dimension_names``).
        dtype: numpy dtype name, or ``"str"`` for variable-length UTF-8 strings.
        fill_value: Value of never-written elements.
        fixed_shape: Lengths of the dims after the tile axis (all dims if there is none).
        chunks: Inner chunk shape (zarr ``chunks``), one entry per dim.
        shards: Shard shape (zarr ``shards``) or ``None`` for an unsharded array.
        codec: The compressor.
        attrs: Array attributes as sorted ``(key, value)`` pairs (see :meth:`attributes`).
    """

    path: str
    dims: tuple[str, ...]
    dtype: str
    fill_value: int | float | str
    fixed_shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    codec: CodecSpec
    attrs: tuple[tuple[str, AttrValue], ...] = field(default=(), hash=False)

    def __post_init__(self) -> None:
        n_fixed = len(self.dims) - (1 if self.has_tile_axis else 0)
        if len(self.fixed_shape) != n_fixed or len(self.chunks) != len(self.dims):
            raise InvalidInputError(
                f"array spec {self.path}: shape/chunks do not match dims {self.dims}",
                fix="give one fixed length per non-tile dim and one chunk length per dim",
            )
        if self.shards is not None and (
            len(self.shards) != len(self.chunks)
            or any(s % c for s, c in zip(self.shards, self.chunks, strict=True))
        ):
            raise InvalidInputError(
                f"array spec {self.path}: shards {self.shards} are not a multiple of chunks "
                f"{self.chunks}",
                fix="make every shard length a multiple of the chunk length",
            )

    @property
    def group(self) -> str:
        """The group part of :attr:`path`."""
        return self.path.rpartition("/")[0]

    @property
    def name(self) -> str:
        """The array name within its group."""
        return self.path.rpartition("/")[2]

    @property
    def has_tile_axis(self) -> bool:
        """Whether the first dim is the growing ``tile`` axis."""
        return bool(self.dims) and self.dims[0] == TILE

    def shape(self, n_tiles: int) -> tuple[int, ...]:
        """Full array shape when the tile axis holds ``n_tiles`` positions."""
        if n_tiles < 0:
            raise InvalidInputError(f"n_tiles must be >= 0, got {n_tiles}")
        return (n_tiles, *self.fixed_shape) if self.has_tile_axis else self.fixed_shape

    def attributes(self) -> dict[str, Any]:
        """The array attributes as a fresh dict (CF names: ``_FillValue``, ``scale_factor``...)."""
        return dict(self.attrs)

    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of values read from this array (``StringDType`` for strings)."""
        if self.dtype == "str":
            return np.dtypes.StringDType()
        return np.dtype(self.dtype)

    def zarr_create_kwargs(self, n_tiles: int) -> dict[str, Any]:
        """Keyword arguments for ``zarr.create_array(store, **kwargs)`` (``name`` included).

        Args:
            n_tiles: Initial length of the tile axis (ignored for arrays without one).

        Returns:
            ``name, shape, chunks, shards, dtype, fill_value, compressors, attributes,
            dimension_names``.
        """
        return {
            "name": self.path,
            "shape": self.shape(n_tiles),
            "chunks": self.chunks,
            "shards": self.shards,
            "dtype": str if self.dtype == "str" else self.dtype,
            "fill_value": self.fill_value,
            "compressors": self.codec.zarr_compressors(
                None if self.dtype == "str" else np.dtype(self.dtype).itemsize
            ),
            "attributes": self.attributes(),
            "dimension_names": self.dims,
        }


def _check_node_name(kind: str, name: str) -> None:
    if not _NODE_NAME.match(name) or name in _RESERVED:
        raise InvalidInputError(
            f"{kind} name {name!r} cannot be a cube group/array name",
            fix="use letters, digits, '.', '_' and '-' (not starting with '.' or '_'), and "
            f"none of {sorted(_RESERVED)}",
        )


def _check_fill(where: str, dtype: str, value: int | float) -> None:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return
    if isinstance(value, float) and not value.is_integer():
        raise InvalidInputError(f"nodata {value!r} is not an integer", where=where)
    info = np.iinfo(np.dtype(dtype))
    if not info.min <= value <= info.max:
        raise InvalidInputError(
            f"nodata {value!r} does not fit {dtype} ({info.min}..{info.max})",
            where=where,
            fix="choose a nodata value inside the dtype's range",
        )


@dataclass(frozen=True, slots=True)
class SensorLayout:
    """What the cube stores for one sensor (plain parameters, not the pydantic recipe).

    Attributes:
        name: Group name, normally a :class:`schemas.sensors.SensorId` value.
        bands: Band names in storage order along ``band``.
        resolution_m: Pixel size; must divide the tile size.
        n_time: Length of the ``time`` axis (1 for a composite, N for a series of up to N
            scenes; unused planes keep the fills).
        dtype: Storage dtype of ``data``.
        nodata: Fill of ``data`` (also its CF ``_FillValue``); NaN allowed for floats.
        scale_factor: CF ``scale_factor`` (physical = stored * scale + offset), if scaled.
        add_offset: CF ``add_offset``, if scaled.
        units: CF ``units`` of the physical values (``"1"`` for reflectance, ``"dB"``...).
    """

    name: str
    bands: tuple[str, ...]
    resolution_m: float
    n_time: int = 1
    dtype: str = "int16"
    nodata: int | float = -32768
    scale_factor: float | None = None
    add_offset: float | None = None
    units: str | None = None

    def __post_init__(self) -> None:
        _check_node_name("sensor", self.name)
        where = f"sensor {self.name}"
        if not self.bands or len(set(self.bands)) != len(self.bands):
            raise InvalidInputError(
                f"bands {list(self.bands)} must be non-empty and unique", where=where
            )
        if self.n_time < 1:
            raise InvalidInputError(f"n_time must be >= 1, got {self.n_time}", where=where)
        if self.dtype not in _DATA_DTYPES:
            raise InvalidInputError(
                f"data dtype {self.dtype!r} is not supported",
                where=where,
                fix=f"use one of {sorted(_DATA_DTYPES)}",
            )
        if isinstance(self.nodata, float) and math.isnan(self.nodata):
            if np.dtype(self.dtype).kind != "f":
                raise InvalidInputError("NaN nodata needs a float dtype", where=where)
        else:
            _check_fill(where, self.dtype, self.nodata)


@dataclass(frozen=True, slots=True)
class LabelLayout:
    """What the cube stores for one label source (``corine``, ``osm``...).

    Attributes:
        source: Array name under ``labels/``.
        class_names: Class names; index ``i`` in the raster is ``class_names[i]``.
        dtype: ``uint8`` or ``uint16``.
        nodata: Fill and "unknown" class index (not a class).
        resolution_m: Pixel size of the label raster; ``None`` = the finest sensor resolution.
            All label sources of one cube share one resolution (they share ``y``/``x``).
    """

    source: str
    class_names: tuple[str, ...]
    dtype: str = "uint8"
    nodata: int = 255
    resolution_m: float | None = None

    def __post_init__(self) -> None:
        _check_node_name("label source", self.source)
        where = f"label source {self.source}"
        if self.dtype not in _LABEL_DTYPES:
            raise InvalidInputError(
                f"label dtype {self.dtype!r} is not supported",
                where=where,
                fix="use 'uint8' or 'uint16'",
            )
        _check_fill(where, self.dtype, self.nodata)
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise InvalidInputError("class names must be non-empty and unique", where=where)
        if self.nodata < len(self.class_names):
            raise InvalidInputError(
                f"nodata {self.nodata} collides with class index {self.nodata} "
                f"({self.class_names[self.nodata]!r})",
                where=where,
                fix="use a nodata value above the last class index (255 for uint8)",
            )


def data_path(sensor: str) -> str:
    """``<sensor>/data``."""
    return f"{sensor}/data"


def mask_path(sensor: str) -> str:
    """``<sensor>/mask``."""
    return f"{sensor}/mask"


def datetime_path(sensor: str) -> str:
    """``<sensor>/datetime``."""
    return f"{sensor}/datetime"


def source_items_path(sensor: str) -> str:
    """``<sensor>/source_items``."""
    return f"{sensor}/source_items"


def label_path(source: str) -> str:
    """``labels/<source>``."""
    return f"{LABELS_GROUP}/{source}"


def multilabel_path(source: str) -> str:
    """``labels/<source>_multilabel``."""
    return f"{LABELS_GROUP}/{source}_multilabel"


@dataclass(frozen=True, slots=True)
class CubeLayout:
    """Every array of one cube, derived from plain parameters by :meth:`for_recipe_like`.

    Attributes:
        tile_size_m: Tile edge length in metres.
        tiles_per_shard: ``K``: tiles per Zarr shard (and per build task).
        codec: Compressor of the raster arrays.
        sensors: Per-sensor parameters, in recipe order.
        labels: Per-label-source parameters, ``resolution_m`` filled in.
        label_resolution_m: Pixel size of every ``labels/<source>`` raster.
        reference_resolution_m: Finest resolution of the cube; ``tiles/transform`` is given at it.
        arrays: Every array, in a fixed order (sensors, labels, tiles).
    """

    tile_size_m: float
    tiles_per_shard: int
    codec: CodecSpec
    sensors: tuple[SensorLayout, ...]
    labels: tuple[LabelLayout, ...]
    label_resolution_m: float
    reference_resolution_m: float
    arrays: tuple[ArraySpec, ...]

    @classmethod
    def for_recipe_like(
        cls,
        sensors: Sequence[SensorLayout],
        *,
        tile_size_m: float,
        tiles_per_shard: int,
        codec: CodecSpec = DEFAULT_CODEC,
        labels: Sequence[LabelLayout] = (),
    ) -> CubeLayout:
        """Build the layout of a cube.

        Args:
            sensors: One entry per sensor group; names unique.
            tile_size_m: Tile edge; every sensor and label resolution must divide it.
            tiles_per_shard: ``K`` >= 1.
            codec: Compressor of ``data``, ``mask`` and label rasters.
            labels: Label sources (may be empty).

        Returns:
            The layout, whose :attr:`arrays` hold chunk shape ``(1, 1, bands, ny, nx)`` and shard
            shape ``(K, 1, bands, ny, nx)`` for every ``<sensor>/data``.

        Raises:
            InvalidInputError: Empty or duplicate sensors, duplicate label sources, a resolution
                that does not divide the tile, or ``tiles_per_shard < 1``.
        """
        sensors = tuple(sensors)
        labels = tuple(labels)
        if not sensors:
            raise InvalidInputError("a cube needs at least one sensor", fix="add a sensor")
        names = [s.name for s in sensors]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"duplicate sensor names in {names}", fix="list each once")
        sources = [lab.source for lab in labels]
        if len(set(sources)) != len(sources):
            raise InvalidInputError(f"duplicate label sources in {sources}", fix="list each once")
        if tiles_per_shard < 1:
            raise InvalidInputError(
                f"tiles_per_shard must be >= 1, got {tiles_per_shard}", fix="use e.g. 16 or 64"
            )
        finest = min(s.resolution_m for s in sensors)
        label_res = {lab.resolution_m if lab.resolution_m is not None else finest for lab in labels}
        if len(label_res) > 1:
            raise InvalidInputError(
                f"label sources have different resolutions {sorted(label_res)}",
                fix="give every label source the same resolution (they share y/x)",
            )
        label_resolution = label_res.pop() if label_res else finest
        labels = tuple(replace(lab, resolution_m=label_resolution) for lab in labels)
        reference = min(finest, label_resolution)
        for s in sensors:
            pixels_per_tile(tile_size_m, s.resolution_m)
        pixels_per_tile(tile_size_m, label_resolution)

        k = tiles_per_shard
        arrays: list[ArraySpec] = []
        for s in sensors:
            arrays.extend(_sensor_arrays(s, tile_size_m, k, codec))
        if labels:
            n = pixels_per_tile(tile_size_m, label_resolution)
            for lab in labels:
                arrays.extend(_label_arrays(lab, n, k, codec))
        arrays.extend(_tile_arrays(k, reference))
        return cls(
            tile_size_m=float(tile_size_m),
            tiles_per_shard=k,
            codec=codec,
            sensors=sensors,
            labels=labels,
            label_resolution_m=float(label_resolution),
            reference_resolution_m=float(reference),
            arrays=tuple(arrays),
        )

    def array(self, path: str) -> ArraySpec:
        """The spec at ``path`` (e.g. ``"sentinel-2-l2a/data"``).

        Raises:
            NotFoundError: No array has that path.
        """
        for spec in self.arrays:
            if spec.path == path:
                return spec
        raise NotFoundError(
            f"the cube layout has no array {path!r}",
            fix=f"use one of {[a.path for a in self.arrays]}",
        )

    def sensor(self, name: str) -> SensorLayout:
        """The sensor parameters of group ``name``.

        Raises:
            NotFoundError: The cube has no such sensor.
        """
        for s in self.sensors:
            if s.name == name:
                return s
        raise NotFoundError(
            f"the cube has no sensor {name!r}", fix=f"use one of {[s.name for s in self.sensors]}"
        )

    def label(self, source: str) -> LabelLayout:
        """The label parameters of source ``source`` (e.g. ``"corine"``).

        Raises:
            NotFoundError: The cube has no labels from that source.
        """
        for lab in self.labels:
            if lab.source == source:
                return lab
        raise NotFoundError(
            f"the cube has no labels {source!r}",
            fix=f"use one of {[lab.source for lab in self.labels]}",
        )

    @property
    def groups(self) -> tuple[str, ...]:
        """Group names in order: sensors, ``labels`` (if any), ``tiles``."""
        return tuple(dict.fromkeys(a.group for a in self.arrays))

    def shard_positions(self, shard_index: int) -> range:
        """Tile positions ``[s*K, (s+1)*K)`` of shard ``shard_index``."""
        if shard_index < 0:
            raise InvalidInputError(f"shard index must be >= 0, got {shard_index}")
        k = self.tiles_per_shard
        return range(shard_index * k, (shard_index + 1) * k)

    def first_free_shard(self, n_tiles: int) -> int:
        """Index of the first shard a new build may write when the tile axis has ``n_tiles``.

        A partial last shard is never reopened: the next build starts at ``ceil(n/K)``.
        """
        if n_tiles < 0:
            raise InvalidInputError(f"n_tiles must be >= 0, got {n_tiles}")
        return -(-n_tiles // self.tiles_per_shard)

    def group_attrs(self, group: str) -> dict[str, Any]:
        """Attributes of ``group`` (sensor resolution, bands, n_time; label resolution).

        Raises:
            NotFoundError: No such group.
        """
        for s in self.sensors:
            if s.name == group:
                return {
                    "resolution_m": s.resolution_m,
                    "bands": list(s.bands),
                    "n_time": s.n_time,
                    "pixels_per_tile": pixels_per_tile(self.tile_size_m, s.resolution_m),
                }
        if group == LABELS_GROUP and self.labels:
            return {
                "resolution_m": self.label_resolution_m,
                "sources": [lab.source for lab in self.labels],
            }
        if group == TILES_GROUP:
            return {"transform_resolution_m": self.reference_resolution_m}
        raise NotFoundError(f"the cube layout has no group {group!r}", fix=f"use {self.groups}")

    def root_attrs(self) -> dict[str, Any]:
        """Root attributes: the parameters :meth:`from_root_attrs` rebuilds this layout from."""
        return {
            "eoforge_cube_version": CUBE_FORMAT_VERSION,
            "tile_size_m": self.tile_size_m,
            "tiles_per_shard": self.tiles_per_shard,
            "codec": self.codec.to_dict(),
            "sensors": [
                {
                    "name": s.name,
                    "bands": list(s.bands),
                    "resolution_m": s.resolution_m,
                    "n_time": s.n_time,
                    "dtype": s.dtype,
                    "nodata": None if _is_nan(s.nodata) else s.nodata,
                    "scale_factor": s.scale_factor,
                    "add_offset": s.add_offset,
                    "units": s.units,
                }
                for s in self.sensors
            ],
            "labels": [
                {
                    "source": lab.source,
                    "class_names": list(lab.class_names),
                    "dtype": lab.dtype,
                    "nodata": lab.nodata,
                    "resolution_m": self.label_resolution_m,
                }
                for lab in self.labels
            ],
        }

    @classmethod
    def from_root_attrs(cls, attrs: Mapping[str, Any]) -> CubeLayout:
        """Rebuild the layout a reader must use from a cube's root attributes.

        Raises:
            InvalidInputError: Not an eoforge cube, or one of another layout version.
        """
        version = attrs.get("eoforge_cube_version")
        if version != CUBE_FORMAT_VERSION:
            raise InvalidInputError(
                f"cube layout version {version!r} is not {CUBE_FORMAT_VERSION}",
                fix="open it with the eoforge version that wrote it, or rebuild the cube",
            )
        sensors = [
            SensorLayout(
                name=s["name"],
                bands=tuple(s["bands"]),
                resolution_m=float(s["resolution_m"]),
                n_time=int(s["n_time"]),
                dtype=s["dtype"],
                nodata=math.nan if s["nodata"] is None else s["nodata"],
                scale_factor=s["scale_factor"],
                add_offset=s["add_offset"],
                units=s["units"],
            )
            for s in attrs["sensors"]
        ]
        labels = [
            LabelLayout(
                source=lab["source"],
                class_names=tuple(lab["class_names"]),
                dtype=lab["dtype"],
                nodata=int(lab["nodata"]),
                resolution_m=float(lab["resolution_m"]),
            )
            for lab in attrs["labels"]
        ]
        return cls.for_recipe_like(
            sensors,
            tile_size_m=float(attrs["tile_size_m"]),
            tiles_per_shard=int(attrs["tiles_per_shard"]),
            codec=CodecSpec.from_dict(attrs["codec"]),
            labels=labels,
        )


def _is_nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _attrs(**values: AttrValue) -> tuple[tuple[str, AttrValue], ...]:
    return tuple(sorted((k, v) for k, v in values.items() if v is not None))


def _sensor_arrays(
    s: SensorLayout, tile_size_m: float, k: int, codec: CodecSpec
) -> list[ArraySpec]:
    n = pixels_per_tile(tile_size_m, s.resolution_m)
    nb = len(s.bands)
    data_attrs = {
        "long_name": f"{s.name} pixel values",
        "scale_factor": s.scale_factor,
        "add_offset": s.add_offset,
        "units": s.units,
        "resolution_m": s.resolution_m,
        # NaN is not valid JSON; a NaN fill needs no CF _FillValue to read as missing.
        "_FillValue": None if _is_nan(s.nodata) else s.nodata,
    }
    return [
        ArraySpec(
            path=data_path(s.name),
            dims=DATA_DIMS,
            dtype=s.dtype,
            fill_value=s.nodata,
            fixed_shape=(s.n_time, nb, n, n),
            chunks=(1, 1, nb, n, n),
            shards=(k, 1, nb, n, n),
            codec=codec,
            attrs=_attrs(**data_attrs),
        ),
        ArraySpec(
            path=mask_path(s.name),
            dims=MASK_DIMS,
            dtype="uint8",
            fill_value=MASK_FILL,
            fixed_shape=(s.n_time, n, n),
            chunks=(1, 1, n, n),
            shards=(k, 1, n, n),
            codec=codec,
            # No _FillValue: CF decoding would turn the bitmask into floats.
            attrs=_attrs(**mask_flag_attrs()),
        ),
        ArraySpec(
            path=datetime_path(s.name),
            dims=(TILE, TIME),
            dtype="int64",
            fill_value=NAT_INT64,
            fixed_shape=(s.n_time,),
            chunks=(k, s.n_time),
            shards=None,
            codec=METADATA_CODEC,
            attrs=_attrs(
                long_name="acquisition time (UTC) of each plane; NaT where unused",
                units=TIME_UNITS,
                calendar="proleptic_gregorian",
                _FillValue=NAT_INT64,
            ),
        ),
        ArraySpec(
            path=source_items_path(s.name),
            dims=(TILE, TIME),
            dtype="str",
            fill_value="",
            fixed_shape=(s.n_time,),
            chunks=(k, s.n_time),
            shards=None,
            codec=METADATA_CODEC,
            attrs=_attrs(
                long_name="STAC item id(s) that made each plane, ',' joined; '' where unused",
                separator=",",
            ),
        ),
        ArraySpec(
            path=f"{s.name}/{BAND}",
            dims=(BAND,),
            dtype="str",
            fill_value="",
            fixed_shape=(nb,),
            chunks=(nb,),
            shards=None,
            codec=METADATA_CODEC,
            attrs=_attrs(long_name="band name"),
        ),
    ]


def _label_arrays(lab: LabelLayout, n: int, k: int, codec: CodecSpec) -> list[ArraySpec]:
    class_dim = f"{lab.source}_class"
    nc = len(lab.class_names)
    return [
        ArraySpec(
            path=label_path(lab.source),
            dims=(TILE, Y, X),
            dtype=lab.dtype,
            fill_value=lab.nodata,
            fixed_shape=(n, n),
            chunks=(1, n, n),
            shards=(k, n, n),
            codec=codec,
            # Class indices, so no _FillValue (CF decoding would make them floats).
            attrs=_attrs(
                long_name=f"{lab.source} class index",
                class_names=list(lab.class_names),
                nodata=lab.nodata,
            ),
        ),
        ArraySpec(
            path=multilabel_path(lab.source),
            dims=(TILE, class_dim),
            dtype="uint8",
            fill_value=_MULTILABEL_FILL,
            fixed_shape=(nc,),
            chunks=(k, nc),
            shards=None,
            codec=METADATA_CODEC,
            attrs=_attrs(
                long_name=f"{lab.source} multi-label (1 = class present); 255 = not labelled",
                nodata=_MULTILABEL_FILL,
            ),
        ),
        ArraySpec(
            path=f"{LABELS_GROUP}/{class_dim}",
            dims=(class_dim,),
            dtype="str",
            fill_value="",
            fixed_shape=(nc,),
            chunks=(nc,),
            shards=None,
            codec=METADATA_CODEC,
            attrs=_attrs(long_name=f"{lab.source} class name"),
        ),
    ]


def _tile_arrays(k: int, reference_resolution_m: float) -> list[ArraySpec]:
    def one_d(name: str, dtype: str, fill: int | str, long_name: str) -> ArraySpec:
        return ArraySpec(
            path=f"{TILES_GROUP}/{name}",
            dims=(TILE,),
            dtype=dtype,
            fill_value=fill,
            fixed_shape=(),
            chunks=(k,),
            shards=None,
            codec=METADATA_CODEC,
            attrs=_attrs(long_name=long_name),
        )

    return [
        one_d("id", "str", "", "tile id (pipelines.grid); '' = unused position"),
        one_d("period", "str", "", "period id of the tile's time planes"),
        one_d("epsg", "int32", 0, "EPSG code of the tile's UTM CRS; 0 = unused position"),
        ArraySpec(
            path=f"{TILES_GROUP}/transform",
            dims=(TILE, AFFINE),
            dtype="float64",
            fill_value=math.nan,
            fixed_shape=(6,),
            chunks=(k, 6),
            shards=None,
            codec=METADATA_CODEC,
            attrs=_attrs(
                long_name="affine transform a, b, c, d, e, f (x = a*col + b*row + c, "
                "y = d*col + e*row + f) of the tile at resolution_m",
                resolution_m=reference_resolution_m,
            ),
        ),
        one_d("split", "str", "", "train/val/test split; '' = not assigned"),
    ]
