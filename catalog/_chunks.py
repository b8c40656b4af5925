"""Read one tile's slab of a cube array straight from its Zarr v3 chunk bytes, without zarr-python.

The training hot path reads ``array[position]`` for one tile position: for ``<sensor>/data`` that
is one inner chunk per time plane (chunks are 1 tile x 1 time x all bands x full tile,
:mod:`schemas.cube`), found through the shard index. zarr-python spends most of a read in its
async machinery and buffer copies (it reached 0.23-0.34 of read+decode speed in a DataLoader),
so this reader does only the necessary work:

1. parse each array's ``zarr.json`` once (shape, chunk and shard shape, codecs);
2. read each shard's index once and keep it in a bounded per-process LRU;
3. read exactly the chunk's byte range (``os.preadv`` into a reused buffer on a cached file
   descriptor, up to a quarter of the process's descriptor limit, for local cubes; an fsspec
   range request for remote ones);
4. decode with numcodecs' Blosc or Zstd straight into the caller's output array when a chunk
   is one tile's contiguous block; chunks holding several tiles (``tiles/*``, datetimes,
   multi-labels) or cut at an edge are decoded whole into a per-reader LRU bounded by
   ``_SMALL_CACHE_BYTES`` and copied from there; such an array that is small and fully
   written is decoded whole once, and a batch of it is one ``np.take``.

Supported encodings: the ``regular`` chunk grid, ``default`` or ``v2`` chunk keys, optionally
``sharding_indexed`` (index at ``start`` or ``end``, index codecs ``bytes`` + optional
``crc32c``, checked), inner codecs ``bytes`` (either endian) followed by at most one of ``blosc``
or ``zstd``; numeric dtypes, and unsharded ``string`` arrays (``vlen-utf8`` [+ ``zstd`` |
``blosc``], read as numpy ``StringDType``). Chunks that were never
written (index entry all ``0xFF``, or no shard/chunk file) read as the array's fill value.

A reader is picklable and cheap to pickle: it carries the URI and storage options only, and a
copy in a forked or spawned DataLoader worker opens its own files on first use. One reader is
meant for one thread (it reuses buffers); give each thread its own.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numcodecs import blosc as _blosc
from numcodecs import zstd as _zstd

from schemas.errors import ConflictError, InvalidInputError, NotFoundError

__all__ = ["ArrayReader", "open_arrays"]

_EMPTY = 0xFFFF_FFFF_FFFF_FFFF
#: Shard indexes kept per process (one small ``(n_chunks, 2)`` uint64 array each).
_INDEX_CACHE = 4096
#: Open file descriptors a store keeps at most (closed when evicted); see :func:`_fd_cache_size`.
_FD_CACHE = 4096
#: Bytes of decoded multi-tile chunks (``tiles/*``, datetimes, multi-labels) kept per reader.
_SMALL_CACHE_BYTES = 8 << 20

Decoder = Callable[[Any, Any], Any]


def _decode_blosc(src: Any, dest: Any) -> Any:
    return _blosc.decompress(src, dest)


def _decode_zstd(src: Any, dest: Any) -> Any:
    return _zstd.decompress(src, dest)


def _decode_raw(src: Any, dest: Any) -> Any:
    np.frombuffer(dest, dtype=np.uint8)[:] = np.frombuffer(src, dtype=np.uint8)
    return dest


def _vlen_utf8(decompress: Callable[[Any], Any]) -> Decoder:
    """Decoder of ``vlen-utf8`` [+ compressor] chunks into a StringDType ``dest``."""
    from numcodecs.vlen import VLenUTF8

    codec = VLenUTF8()

    def decode(src: Any, dest: Any) -> Any:
        items = codec.decode(decompress(src))
        dest.reshape(-1)[:] = items
        return dest

    return decode


_STRING_COMPRESSORS: dict[str | None, Callable[[Any], Any]] = {
    None: bytes,
    "zstd": _zstd.decompress,
    "blosc": _blosc.decompress,
}


@dataclass(frozen=True, slots=True)
class _Meta:
    """What the reader needs from one array's ``zarr.json``."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fill_value: Any
    attrs: dict[str, Any]
    #: Shape of one stored object (the shard, or the chunk when unsharded).
    outer: tuple[int, ...]
    #: Shape of one encoded chunk (inside the shard when sharded).
    inner: tuple[int, ...]
    sharded: bool
    index_at_end: bool
    index_crc: bool
    decoder: Decoder
    big_endian: bool
    key_sep: str
    key_prefix: str

    @property
    def chunks_per_outer(self) -> tuple[int, ...]:
        return tuple(o // i for o, i in zip(self.outer, self.inner, strict=True))

    @property
    def chunk_nbytes(self) -> int:
        return math.prod(self.inner) * self.dtype.itemsize

    def key(self, outer_coords: tuple[int, ...]) -> str:
        return f"{self.path}/{self.key_prefix}{self.key_sep.join(map(str, outer_coords))}"


@dataclass(frozen=True, slots=True)
class _Piece:
    """One chunk of a tile's slab, for arrays whose chunks hold one tile each (``read_rows``).

    The chunk of tile ``p`` is stored at key ``head + str(p // tiles_per_shard) + tail``, entry
    ``(p % tiles_per_shard) * stride + flat`` of that shard's index (sharded arrays), and
    decodes into bytes ``[start, start + chunk_nbytes)`` of the tile's C-ordered slab.
    """

    #: Where the chunk goes in the slab (``()``: the whole slab).
    sel: tuple[slice, ...]
    #: Chunk coordinates after the tile axis.
    rest: tuple[int, ...]
    #: The chunk's first byte in the tile's slab.
    start: int
    #: Store key of the chunk's shard (or chunk) before and after its tile-axis coordinate.
    head: str
    tail: str
    #: The chunk's entry in its shard's index, less the tile axis' part.
    flat: int


def _direct_pieces(meta: _Meta) -> list[_Piece] | None:
    """The pieces of a slab when every chunk is one tile and decodes straight into the slab.

    ``None`` when chunks hold several tiles, are cut at an edge, or are not one contiguous
    block of the slab (read through decoded whole chunks instead).
    """
    slab, inner = meta.shape[1:], meta.inner
    if meta.dtype.kind == "T" or inner[0] != 1:
        return None
    if not all(s % c == 0 for s, c in zip(slab, inner[1:], strict=True)):
        return None
    split = [c != s for s, c in zip(slab, inner[1:], strict=True)]
    last_split = max((i for i, v in enumerate(split) if v), default=-1)
    if not all(c == 1 for c in inner[1 : 1 + max(last_split, 0)]):
        return None
    cpo = meta.chunks_per_outer
    pieces = []
    for rest in np.ndindex(*(s // c for s, c in zip(slab, inner[1:], strict=True))):
        sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(rest, inner[1:], strict=True))
        first = tuple(s.start for s in sel)
        start = int(np.ravel_multi_index(first, slab)) * meta.dtype.itemsize if slab else 0
        flat = 0
        for c, n in zip(rest, cpo[1:], strict=True):
            flat = flat * n + c % n
        pieces.append(
            _Piece(
                sel=() if not any(split) else sel,
                rest=tuple(int(r) for r in rest),
                start=start,
                head=f"{meta.path}/{meta.key_prefix}",
                tail="".join(f"{meta.key_sep}{c // n}" for c, n in zip(rest, cpo[1:], strict=True)),
                flat=flat,
            )
        )
    return pieces


def _cost_of(count: int, dtype: np.dtype[Any]) -> int:
    """Bytes ``count`` decoded elements of ``dtype`` hold (strings: a rough 64 more each)."""
    return count * (dtype.itemsize + (64 if dtype.kind == "T" else 0))


def _cost(chunk: npt.NDArray[Any] | None) -> int:
    """Bytes a cached decoded chunk holds (``None``, a never-written chunk: 64)."""
    if chunk is None:
        return 64
    return _cost_of(int(chunk.size), chunk.dtype)


def _fill(raw: Any, dtype: np.dtype[Any]) -> Any:
    if isinstance(raw, str) and dtype.kind == "f":
        if raw.startswith("0x"):
            return np.frombuffer(bytes.fromhex(raw[2:])[::-1], dtype=dtype)[0]
        return {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}[raw]
    return dtype.type(raw)


def _bytes_codec(codec: dict[str, Any], where: str) -> bool:
    """True when a ``bytes`` codec says big-endian."""
    if codec.get("name") != "bytes":
        raise InvalidInputError(
            f"codec {codec.get('name')!r} where 'bytes' was expected",
            where=where,
            fix="read this array with zarr-python (catalog._arrays)",
        )
    return bool((codec.get("configuration") or {}).get("endian") == "big")


def _parse_codecs(codecs: list[dict[str, Any]], where: str) -> tuple[bool, Decoder]:
    """``bytes`` [+ ``blosc`` | ``zstd``] -> (big_endian, decoder)."""
    if not codecs or len(codecs) > 2:
        raise InvalidInputError(
            f"codec chain {[c.get('name') for c in codecs]} is not bytes [+ blosc | zstd]",
            where=where,
            fix="read this array with zarr-python (catalog._arrays)",
        )
    big = _bytes_codec(codecs[0], where)
    if len(codecs) == 1:
        return big, _decode_raw
    name = codecs[1].get("name")
    if name == "blosc":
        return big, _decode_blosc
    if name == "zstd":
        return big, _decode_zstd
    raise InvalidInputError(
        f"compressor {name!r} is not supported by the fast reader",
        where=where,
        fix="read this array with zarr-python (catalog._arrays)",
    )


def _string_codecs(codecs: list[dict[str, Any]], where: str) -> Decoder:
    names = [c.get("name") for c in codecs]
    if (
        not names
        or names[0] != "vlen-utf8"
        or len(names) > 2
        or names[-1] not in (_STRING_COMPRESSORS.keys() | {"vlen-utf8"})
    ):
        raise InvalidInputError(
            f"string codec chain {names} is not vlen-utf8 [+ zstd | blosc]",
            where=where,
            fix="read this array with zarr-python (catalog._arrays)",
        )
    return _vlen_utf8(_STRING_COMPRESSORS[names[1] if len(names) == 2 else None])


def _parse_meta(path: str, doc: dict[str, Any]) -> _Meta:
    where = f"{path}/zarr.json"
    if doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
        raise InvalidInputError(f"{path} is not a Zarr v3 array", where=where)
    if doc.get("data_type") == "string":
        return _parse_string_meta(path, doc, where)
    try:
        dtype = np.dtype(doc["data_type"])
    except TypeError as err:
        raise InvalidInputError(
            f"data type {doc['data_type']!r} is not a fixed-size numeric type",
            where=where,
            fix="read this array with zarr-python (catalog._arrays)",
        ) from err
    if dtype.kind not in "biuf":
        raise InvalidInputError(f"data type {dtype} is not numeric", where=where)
    grid = doc["chunk_grid"]
    if grid.get("name") != "regular":
        raise InvalidInputError(f"chunk grid {grid.get('name')!r} is not regular", where=where)
    outer = tuple(int(n) for n in grid["configuration"]["chunk_shape"])
    enc = doc.get("chunk_key_encoding", {"name": "default"})
    sep = (enc.get("configuration") or {}).get("separator")
    prefix, sep = ("c" + (sep or "/"), sep or "/") if enc["name"] == "default" else ("", sep or ".")
    if not outer:
        prefix = prefix[:1]  # a 0-d array's key is just "c"
    codecs = doc["codecs"]
    sharded = len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed"
    index_at_end, index_crc = True, False
    if sharded:
        conf = codecs[0]["configuration"]
        inner = tuple(int(n) for n in conf["chunk_shape"])
        big, decoder = _parse_codecs(conf["codecs"], where)
        index_codecs = conf.get("index_codecs") or [{"name": "bytes"}, {"name": "crc32c"}]
        if _bytes_codec(index_codecs[0], where):
            raise InvalidInputError("big-endian shard indexes are not supported", where=where)
        index_crc = len(index_codecs) == 2 and index_codecs[1].get("name") == "crc32c"
        if len(index_codecs) != (2 if index_crc else 1):
            raise InvalidInputError(f"index codecs {index_codecs} not supported", where=where)
        index_at_end = conf.get("index_location", "end") == "end"
    else:
        inner = outer
        big, decoder = _parse_codecs(codecs, where)
    return _Meta(
        path=path,
        shape=tuple(int(n) for n in doc["shape"]),
        dtype=dtype,
        fill_value=_fill(doc["fill_value"], dtype),
        attrs=dict(doc.get("attributes") or {}),
        outer=outer,
        inner=inner,
        sharded=sharded,
        index_at_end=index_at_end,
        index_crc=index_crc,
        decoder=decoder,
        big_endian=big and dtype.itemsize > 1,
        key_sep=sep,
        key_prefix=prefix,
    )


def _parse_string_meta(path: str, doc: dict[str, Any], where: str) -> _Meta:
    """A variable-length UTF-8 array (unsharded: the cube's ``tiles/*``, ``source_items``)."""
    codecs = doc["codecs"]
    if codecs and codecs[0].get("name") == "sharding_indexed":
        raise InvalidInputError(
            "sharded string arrays are not supported",
            where=where,
            fix="read this array with zarr-python (catalog._arrays)",
        )
    outer = tuple(int(n) for n in doc["chunk_grid"]["configuration"]["chunk_shape"])
    enc = doc.get("chunk_key_encoding", {"name": "default"})
    sep = (enc.get("configuration") or {}).get("separator")
    prefix, sep = ("c" + (sep or "/"), sep or "/") if enc["name"] == "default" else ("", sep or ".")
    return _Meta(
        path=path,
        shape=tuple(int(n) for n in doc["shape"]),
        dtype=np.dtype(np.dtypes.StringDType()),
        fill_value=str(doc.get("fill_value") or ""),
        attrs=dict(doc.get("attributes") or {}),
        outer=outer,
        inner=outer,
        sharded=False,
        index_at_end=True,
        index_crc=False,
        decoder=_string_codecs(codecs, where),
        big_endian=False,
        key_sep=sep,
        key_prefix=prefix,
    )


def _fd_cache_size() -> int:
    """Open files a store keeps: a quarter of the soft descriptor limit, 32 to ``_FD_CACHE``.

    A cube's shards are many small files; a cache smaller than the shards a random batch
    touches reopens files on every batch (the demo cube has ~330).
    """
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return 256
    if soft == resource.RLIM_INFINITY:
        return _FD_CACHE
    return max(32, min(_FD_CACHE, soft // 4))


class _Store:
    """Byte ranges of the cube's files: local (pread on cached fds) or fsspec."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None) -> None:
        self.local = "://" not in root or root.startswith("file://")
        self.root = root.removeprefix("file://").rstrip("/") if self.local else root.rstrip("/")
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._fd_cache = _fd_cache_size()
        self._fs: Any = None
        if not self.local:
            import fsspec  # type: ignore[import-untyped]  # only remote cubes need it

            self._fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
            self.root = self.root.rstrip("/")

    def _fd(self, key: str) -> int | None:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        try:
            fd = os.open(f"{self.root}/{key}", os.O_RDONLY)
        except FileNotFoundError:
            return None
        self._fds[key] = fd
        if len(self._fds) > self._fd_cache:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read_text(self, key: str) -> str | None:
        data = self.read_all(key)
        return None if data is None else data.decode()

    def read_all(self, key: str) -> bytes | None:
        if self.local:
            try:
                return Path(f"{self.root}/{key}").read_bytes()
            except FileNotFoundError:
                return None
        try:
            return bytes(self._fs.cat_file(f"{self.root}/{key}"))
        except FileNotFoundError:
            return None

    def size(self, key: str) -> int | None:
        if self.local:
            fd = self._fd(key)
            return None if fd is None else os.fstat(fd).st_size
        try:
            return int(self._fs.size(f"{self.root}/{key}"))
        except FileNotFoundError:
            return None

    def read_range(self, key: str, offset: int, nbytes: int, buf: bytearray) -> memoryview | None:
        """``nbytes`` bytes at ``offset`` of ``key`` (a view of ``buf`` when local)."""
        if self.local:
            fd = self._fd(key)
            if fd is None:
                return None
            view = memoryview(buf)[:nbytes]
            got = os.preadv(fd, [view], offset)
            if got != nbytes:
                raise ConflictError(
                    f"short read: {got} of {nbytes} bytes at {offset}",
                    where=f"{self.root}/{key}",
                    fix="the shard changed while it was read; open the cube again",
                )
            return view
        try:
            data = self._fs.cat_file(f"{self.root}/{key}", start=offset, end=offset + nbytes)
        except FileNotFoundError:
            return None
        return memoryview(data)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


class ArrayReader:
    """Fast reads of ``array[position]`` for the cube's numeric arrays (module docstring).

    Args:
        cube_uri: The cube's root: a local path, ``file://`` URL or an fsspec URL.
        storage_options: fsspec options for a remote cube (credentials are never logged).
    """

    def __init__(self, cube_uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.cube_uri = str(cube_uri)
        self.storage_options = dict(storage_options or {})
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._store: _Store | None = None
        self._meta: dict[str, _Meta] = {}
        # shard key -> (its index, the same flattened as a memoryview of native uint64); LRU
        self._index: OrderedDict[str, tuple[npt.NDArray[np.uint64], memoryview]] = OrderedDict()
        self._buf = bytearray(1 << 16)
        # path -> pieces of a one-tile-per-chunk slab (None: read() handles the array)
        self._pieces: dict[str, list[_Piece] | None] = {}
        # (path, chunk coords) -> decoded multi-tile chunk or None (never written); LRU, bounded
        # by _SMALL_CACHE_BYTES
        self._small: OrderedDict[tuple[str, tuple[int, ...]], npt.NDArray[Any] | None] = (
            OrderedDict()
        )
        self._small_bytes = 0
        # multi-tile-chunk arrays not cached whole (too large, or a chunk never written)
        self._not_whole: set[str] = set()

    # Pickling: only the URI and options travel; a copy opens its own files lazily.
    def __getstate__(self) -> dict[str, Any]:
        return {"cube_uri": self.cube_uri, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cube_uri = state["cube_uri"]
        self.storage_options = state["storage_options"]
        self._reset()

    def __repr__(self) -> str:
        return f"ArrayReader({self.cube_uri!r})"

    def close(self) -> None:
        """Close the cached file descriptors (the reader reopens them on the next read)."""
        if self._store is not None and self._pid == os.getpid():
            self._store.close()
        self._reset()

    def _get_store(self) -> _Store:
        if self._pid != os.getpid():
            # A forked copy: the parent's descriptors stay the parent's; open our own.
            self._reset()
        if self._store is None:
            self._store = _Store(self.cube_uri, self.storage_options)
        return self._store

    def meta(self, path: str) -> _Meta:
        found = self._meta.get(path)
        if found is not None and self._pid == os.getpid():
            return found
        text = self._get_store().read_text(f"{path.strip('/')}/zarr.json")
        if text is None:
            raise NotFoundError(
                f"no array {path!r} in the cube", where=self.cube_uri, fix="check the array path"
            )
        meta = _parse_meta(path.strip("/"), json.loads(text))
        self._meta[path] = meta
        return meta

    def root_attrs(self) -> dict[str, Any]:
        """The cube's root attributes (the :class:`schemas.cube.CubeLayout` parameters)."""
        text = self._get_store().read_text("zarr.json")
        if text is None:
            raise NotFoundError("no zarr.json at the cube root", where=self.cube_uri)
        return dict(json.loads(text).get("attributes") or {})

    def shape(self, path: str) -> tuple[int, ...]:
        """Full shape of the array at ``path`` (tile axis first)."""
        return self.meta(path).shape

    def dtype(self, path: str) -> np.dtype[Any]:
        """Stored dtype of the array at ``path``."""
        return self.meta(path).dtype

    def fill_value(self, path: str) -> Any:
        """Fill value of the array at ``path`` (what unwritten chunks read as)."""
        return self.meta(path).fill_value

    def attrs(self, path: str) -> dict[str, Any]:
        """The array's attributes (a copy)."""
        return dict(self.meta(path).attrs)

    def _shard_index(self, meta: _Meta, key: str) -> npt.NDArray[np.uint64] | None:
        """``(n_chunks, 2)`` offsets and lengths of the shard at ``key``; ``None`` if absent."""
        entry = self._shard_entry(meta, key)
        return None if entry is None else entry[0]

    def _shard_entry(
        self, meta: _Meta, key: str
    ) -> tuple[npt.NDArray[np.uint64], memoryview] | None:
        """The shard at ``key``'s index, read once and cached; ``None`` if the shard is absent.

        The index comes twice: as ``(n_chunks, 2)`` uint64, and flattened as a memoryview whose
        entry ``2 j`` is chunk ``j``'s offset and ``2 j + 1`` its length (Python ints).
        """
        found = self._index.get(key)
        if found is not None:
            self._index.move_to_end(key)
            return found
        store = self._get_store()
        n_chunks = math.prod(meta.chunks_per_outer)
        nbytes = 16 * n_chunks + (4 if meta.index_crc else 0)
        size = store.size(key)
        if size is None:
            return None  # not cached: a later build may still write this shard
        if size < nbytes:
            raise ConflictError(f"shard of {size} bytes is shorter than its index", where=key)
        start = size - nbytes if meta.index_at_end else 0
        buf = bytearray(nbytes)
        view = store.read_range(key, start, nbytes, buf)
        raw = bytes(view) if view is not None else b""
        if meta.index_crc:
            import google_crc32c  # zarr's own crc32c dependency

            (want,) = struct.unpack("<I", raw[-4:])
            if google_crc32c.value(raw[:-4]) != want:
                raise ConflictError(
                    "shard index checksum mismatch (corrupt or half-written shard)",
                    where=key,
                    fix="rebuild the shard",
                )
        index = np.frombuffer(raw, dtype="<u8", count=2 * n_chunks).reshape(n_chunks, 2)
        entry = (index, np.ascontiguousarray(index, dtype=np.uint64).reshape(-1).data)
        self._index[key] = entry
        if len(self._index) > _INDEX_CACHE:
            self._index.popitem(last=False)
        return entry

    def _chunk_bytes(self, meta: _Meta, key: str, flat: int) -> memoryview | None:
        """The stored bytes of a chunk, in the reused buffer; ``None`` if never written.

        Sharded arrays: entry ``flat`` of the shard at ``key``; otherwise the chunk file ``key``.
        """
        store = self._get_store()
        if meta.sharded:
            entry = self._shard_entry(meta, key)
            if entry is None:
                return None
            spans = entry[1]
            offset, nbytes = spans[2 * flat], spans[2 * flat + 1]
            if offset == _EMPTY and nbytes == _EMPTY:
                return None
        else:
            size = store.size(key)
            if size is None:
                return None
            offset, nbytes = 0, size
        if len(self._buf) < nbytes:
            self._buf = bytearray(max(nbytes, 2 * len(self._buf)))
        return store.read_range(key, offset, nbytes, self._buf)

    def _decode_chunk(self, meta: _Meta, coords: tuple[int, ...], dest: npt.NDArray[Any]) -> bool:
        """Decode chunk ``coords`` into ``dest`` (C-contiguous, chunk-sized); False if empty."""
        flat = 0
        if meta.sharded:
            cpo = meta.chunks_per_outer
            key = meta.key(tuple(c // n for c, n in zip(coords, cpo, strict=True)))
            for c, n in zip(coords, cpo, strict=True):
                flat = flat * n + c % n
        else:
            key = meta.key(coords)
        src = self._chunk_bytes(meta, key, flat)
        if src is None:
            return False
        meta.decoder(src, dest if meta.dtype.kind == "T" else dest.reshape(-1).view(np.uint8))
        if meta.big_endian:
            dest.byteswap(inplace=True)
        return True

    def read(
        self, path: str, position: int, out: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[Any]:
        """The slab ``array[position]`` of the array at ``path``.

        Args:
            path: Array path in the cube, e.g. ``"sentinel-2-l2a/data"``.
            position: Index on the first (tile) axis; negative counts from the end.
            out: Optional C-contiguous array of shape ``shape(path)[1:]`` and dtype
                ``dtype(path)`` to fill (reuse it across reads to avoid allocations).

        Returns:
            ``out`` (or a new array): the array's dims after the first, its stored dtype, the
            fill value where chunks were never written. E.g. ``(time, band, y, x)`` for
            ``<sensor>/data``.

        Raises:
            NotFoundError: No array at ``path``.
            InvalidInputError: ``position`` out of range, a wrong ``out``, or an encoding the
                fast reader does not support.
            ConflictError: A corrupt or truncated shard.
        """
        meta = self.meta(path)
        slab = meta.shape[1:]
        if out is None:
            out = np.empty(slab, dtype=meta.dtype)
        elif out.shape != slab or out.dtype != meta.dtype or not out.flags.c_contiguous:
            raise InvalidInputError(
                f"out has shape {out.shape}, dtype {out.dtype}; expected C-contiguous {slab}, "
                f"{meta.dtype}",
                where=path,
            )
        self.read_rows(path, [position], out[np.newaxis])
        return out

    def read_rows(
        self, path: str, positions: Sequence[int], out: npt.NDArray[Any]
    ) -> npt.NDArray[Any]:
        """``out[i] = array[positions[i]]`` for every ``i``: :meth:`read` for a batch.

        The training hot path. Arrays with one tile per chunk decode every chunk straight into
        ``out`` through a per-array plan (no per-read set-up); arrays whose chunks hold several
        tiles (``tiles/*``, datetimes, multi-labels) decode each chunk the batch touches once.

        Args:
            path: Array path in the cube.
            positions: Tile positions (negative counts from the end).
            out: C-contiguous ``(len(positions), *shape(path)[1:])`` array of the stored dtype.

        Returns:
            ``out``.

        Raises:
            InvalidInputError: A position out of range or a wrong ``out``.
            ConflictError: A corrupt or truncated shard.
        """
        meta = self.meta(path)
        slab = meta.shape[1:]
        want = (len(positions), *slab)
        if out.shape != want or out.dtype != meta.dtype or not out.flags.c_contiguous:
            raise InvalidInputError(
                f"out has shape {out.shape}, dtype {out.dtype}; expected C-contiguous {want}, "
                f"{meta.dtype}",
                where=path,
            )
        n = meta.shape[0] if meta.shape else 0
        rows: list[int] = []
        for position in positions:
            p = int(position)
            if not -n <= p < n:
                raise InvalidInputError(
                    f"position {p} is outside the tile axis of length {n}", where=path
                )
            rows.append(p % n)
        if path not in self._pieces:
            self._pieces[path] = _direct_pieces(meta)
        pieces = self._pieces[path]
        if pieces is not None:
            # One tile per chunk, each chunk one contiguous block of the slab: decode in place.
            self._read_direct(meta, pieces, rows, out)
            return out
        inner = meta.inner
        if inner[0] > 1 and tuple(inner[1:]) == tuple(slab):
            whole = self._whole(meta)
            if whole is not None:  # small and complete: one gather
                np.take(whole, rows, axis=0, out=out)
                return out
            # One chunk holds several whole tiles: decode each chunk the batch needs once.
            groups: dict[int, list[tuple[int, int]]] = {}
            for row, p in enumerate(rows):
                c0, o0 = divmod(p, inner[0])
                groups.setdefault(c0, []).append((row, o0))
            zeros = (0,) * len(slab)
            for c0, items in groups.items():
                chunk = self._small_chunk(meta, (c0, *zeros))
                index = [r for r, _ in items]
                if chunk is not None:
                    out[index] = chunk[[o for _, o in items]]
                else:
                    out[index] = meta.fill_value
            return out
        for row, p in enumerate(rows):
            self._read_through_chunks(meta, p, out[row])
        return out

    def _read_direct(
        self, meta: _Meta, pieces: Sequence[_Piece], rows: Sequence[int], out: npt.NDArray[Any]
    ) -> None:
        """``out[i] = array[rows[i]]`` for arrays whose chunks are one tile each (``pieces``).

        The hot loop of :meth:`read_rows`: per chunk one shard-index lookup (flattened, cached),
        one ``pread`` into the reused buffer and one decode straight into the chunk's bytes of
        ``out``; everything else is precomputed in ``pieces``.
        """
        decode = meta.decoder
        size = meta.chunk_nbytes
        cpo = meta.chunks_per_outer
        per_shard, stride = (cpo[0], math.prod(cpo[1:])) if meta.sharded else (1, 0)
        flat_out = out.reshape(len(rows), -1).view(np.uint8)
        for row, p in enumerate(rows):
            shard, within = divmod(p, per_shard)
            dst = flat_out[row]
            for piece in pieces:
                key = f"{piece.head}{shard}{piece.tail}"
                src = self._chunk_bytes(meta, key, within * stride + piece.flat)
                if src is None:
                    out[row][piece.sel] = meta.fill_value
                    continue
                decode(src, dst[piece.start : piece.start + size])
            if meta.big_endian:
                out[row].byteswap(inplace=True)

    def _read_through_chunks(self, meta: _Meta, position: int, out: npt.NDArray[Any]) -> None:
        """``out[...] = array[position]`` from whole decoded chunks (partial or multi-tile)."""
        inner, slab = meta.inner, meta.shape[1:]
        c0, o0 = divmod(position, inner[0])
        for rest in np.ndindex(*(math.ceil(s / c) for s, c in zip(slab, inner[1:], strict=True))):
            sel = tuple(
                slice(i * c, min((i + 1) * c, s))
                for i, c, s in zip(rest, inner[1:], slab, strict=True)
            )
            chunk = self._small_chunk(meta, (c0, *rest))
            if chunk is None:
                out[sel] = meta.fill_value
            else:
                part: tuple[int | slice, ...] = (o0, *(slice(0, s.stop - s.start) for s in sel))
                out[sel] = chunk[part]

    def _whole(self, meta: _Meta) -> npt.NDArray[Any] | None:
        """The whole multi-tile-chunk array ``meta``, decoded once and cached; or ``None``.

        Per-tile arrays of a few bytes (``tiles/*``, datetimes, multi-labels) are read for
        every batch; when the whole array is small (at most an eighth of
        ``_SMALL_CACHE_BYTES``) a batch is then one ``np.take``. It shares the small-chunk LRU
        (key ``(path, ())``). Arrays with a chunk that was never written are not cached whole
        (``None`` for this reader's lifetime): they are read chunk by chunk, so a later build's
        chunks are seen as with the chunk cache.
        """
        key: tuple[str, tuple[int, ...]] = (meta.path, ())
        if key in self._small:
            self._small.move_to_end(key)
            return self._small[key]
        if meta.path in self._not_whole:
            return None
        rows_per_chunk = meta.inner[0]
        if _cost_of(math.prod(meta.shape), meta.dtype) > _SMALL_CACHE_BYTES // 8:
            self._not_whole.add(meta.path)
            return None
        whole = np.empty(meta.shape, dtype=meta.dtype)
        chunk = np.empty(meta.inner, dtype=meta.dtype)
        rest = (0,) * (len(meta.shape) - 1)
        for c0 in range(-(-meta.shape[0] // rows_per_chunk)):
            if not self._decode_chunk(meta, (c0, *rest), chunk):
                self._not_whole.add(meta.path)
                return None
            start = c0 * rows_per_chunk
            stop = min(start + rows_per_chunk, meta.shape[0])
            whole[start:stop] = chunk[: stop - start]
        self._keep_small(key, whole)
        return whole

    def _small_chunk(self, meta: _Meta, coords: tuple[int, ...]) -> npt.NDArray[Any] | None:
        """The decoded whole chunk ``coords`` (``None``: never written), cached.

        The cache is an LRU bounded by ``_SMALL_CACHE_BYTES`` (chunks larger than a quarter of
        it are not kept). Chunks of a shard that a later build writes are seen after the cache
        entry is evicted or the reader reopened, like the shard index cache.
        """
        key = (meta.path, coords)
        if key in self._small:
            self._small.move_to_end(key)
            return self._small[key]
        chunk: npt.NDArray[Any] | None = np.empty(meta.inner, dtype=meta.dtype)
        if not self._decode_chunk(meta, coords, chunk):  # type: ignore[arg-type]
            chunk = None
        if _cost(chunk) <= _SMALL_CACHE_BYTES // 4:
            self._keep_small(key, chunk)
        return chunk

    def _keep_small(self, key: tuple[str, tuple[int, ...]], value: npt.NDArray[Any] | None) -> None:
        """Add ``value`` to the small-chunk LRU, evicting the oldest beyond its byte bound."""
        self._small[key] = value
        self._small_bytes += _cost(value)
        while self._small_bytes > _SMALL_CACHE_BYTES and self._small:
            self._small_bytes -= _cost(self._small.popitem(last=False)[1])


def open_arrays(cube_uri: str, storage_options: dict[str, Any] | None = None) -> ArrayReader:
    """A fast, picklable reader of the cube's arrays (:class:`ArrayReader`).

    Args:
        cube_uri: The cube's root (local path, ``file://`` or fsspec URL).
        storage_options: fsspec options for a remote cube.

    Returns:
        The reader; it opens nothing until the first read.
    """
    return ArrayReader(cube_uri, storage_options)
