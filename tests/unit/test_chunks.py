"""The fast chunk reader (catalog._chunks) against zarr-python as the oracle."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec

from catalog._chunks import ArrayReader, open_arrays
from schemas.cube import CodecSpec
from schemas.errors import ConflictError, InvalidInputError, NotFoundError

DEMO = Path(__file__).resolve().parents[2] / "build" / "demo.zarr"

CODECS = {
    "blosc-lz4": CodecSpec(),
    "blosc-zstd": CodecSpec(name="blosc-zstd", level=3, shuffle="shuffle"),
    "zstd": CodecSpec.zstd(3),
}
N_TILES = 15  # shards of 4: [0-3] [4-7] [8-11] [12-14, partial and never written]


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype == "str":
        words = [f"S2A_{i}" * int(rng.integers(1, 4)) for i in range(int(np.prod(shape)))]
        return np.array(words, dtype=np.dtypes.StringDType()).reshape(shape)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 1, shape).astype(dtype)
    info = np.iinfo(np.dtype(dtype))
    return rng.integers(max(info.min, -3000), min(info.max, 3000), shape, endpoint=True).astype(
        dtype
    )


def _fill_some(arr: zarr.Array[Any], rng: np.random.Generator) -> None:
    """Write positions 0-5 and 8-9, leave 3's second time plane (if any) as fill, 6-7 and 10+
    unwritten: empty chunks inside written shards, a shard with holes and an absent shard."""
    for pos in (0, 1, 2, 3, 4, 5, 8, 9):
        kind = "str" if arr.dtype.kind in "TOU" else str(arr.dtype)
        arr[pos] = _values(rng, arr.shape[1:], kind)
    if arr.ndim >= 4 and arr.shape[1] > 1:
        arr[3, 1] = arr.fill_value


def _make(
    root: Path,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    shards: tuple[int, ...] | dict[str, Any] | None,
    dtype: Any,
    fill: Any,
    codec: CodecSpec,
    full: bool = False,
    **kwargs: Any,
) -> zarr.Array[Any]:
    arr = zarr.create_array(
        str(root),
        name=name,
        shape=shape,
        chunks=chunks,
        shards=shards,  # type: ignore[arg-type]
        dtype=str if dtype == "str" else dtype,
        fill_value=fill,
        compressors=codec.zarr_compressors(),
        attributes={"long_name": name},
        **kwargs,
    )
    rng = np.random.default_rng(len(name))
    if full:  # every chunk written (read_rows then gathers from the whole decoded array)
        arr[...] = _values(rng, arr.shape, "str" if dtype == "str" else str(arr.dtype))
    else:
        _fill_some(arr, rng)
    return arr


def _cube(root: Path, codec: CodecSpec) -> list[str]:
    """A small cube with the layout's array kinds plus odd encodings; returns the array paths."""
    n = N_TILES
    _make(
        root, "s2/data", (n, 2, 3, 8, 8), (1, 1, 3, 8, 8), (4, 1, 3, 8, 8), "int16", -32768, codec
    )
    _make(root, "s2/mask", (n, 2, 8, 8), (1, 1, 8, 8), (4, 1, 8, 8), "uint8", 64, codec)
    _make(root, "labels/corine", (n, 8, 8), (1, 8, 8), (4, 8, 8), "uint8", 255, codec)
    # Both time planes in one shard, index at the start, big-endian chunks.
    _make(
        root,
        "series/data",
        (n, 2, 3, 8, 8),
        (1, 1, 3, 8, 8),
        {"shape": (4, 2, 3, 8, 8), "index_location": "start"},
        "uint16",
        0,
        codec,
        serializer=BytesCodec(endian="big"),
    )
    # Chunks that split y, and bands with a partial last chunk (the scratch-buffer path).
    _make(root, "split/y", (n, 1, 3, 8, 8), (1, 1, 3, 4, 8), (4, 1, 3, 8, 8), "int16", -1, codec)
    _make(root, "split/band", (n, 3, 8, 8), (1, 2, 8, 8), (4, 4, 8, 8), "float32", np.nan, codec)
    # Unsharded, one tile per chunk file (read_rows' direct path without a shard index).
    _make(root, "plain/data", (n, 3, 8, 8), (1, 3, 8, 8), None, "uint16", 7, codec)
    # Unsharded per-tile arrays, several tiles per chunk.
    _make(root, "tiles/epsg", (n,), (4,), None, "int32", 0, codec)
    _make(root, "tiles/transform", (n, 6), (4, 6), None, "float64", np.nan, codec)
    # Fully written multi-tile-chunk arrays, numeric and strings.
    _make(root, "full/time", (n, 2), (4, 2), None, "int64", -1, codec, full=True)
    _make(root, "full/id", (n,), (4,), None, "str", "", codec, full=True)
    # Variable-length strings (tiles/id, <sensor>/source_items); zarr adds vlen-utf8 itself.
    _make(root, "tiles/id", (n,), (4,), None, "str", "", codec)
    _make(root, "s2/source_items", (n, 2), (4, 1), None, "str", "", codec)
    return [
        "s2/data",
        "s2/mask",
        "labels/corine",
        "series/data",
        "split/y",
        "split/band",
        "plain/data",
        "tiles/epsg",
        "tiles/transform",
        "tiles/id",
        "s2/source_items",
        "full/time",
        "full/id",
    ]


@pytest.fixture(params=sorted(CODECS))
def cube(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / f"{request.param}.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=3)
    return root, _cube(root, CODECS[request.param])


def test_every_position_of_every_array_equals_zarr(cube: tuple[Path, list[str]]) -> None:
    root, paths = cube
    reader = open_arrays(str(root))
    for path in paths:
        want = zarr.open_array(str(root / path), mode="r")
        assert reader.shape(path) == want.shape
        assert reader.dtype(path) == want.dtype
        out = np.empty(want.shape[1:], dtype=want.dtype)
        for pos in range(want.shape[0]):
            expected = want[pos]
            got = reader.read(path, pos)
            np.testing.assert_array_equal(got, expected, err_msg=f"{path}[{pos}]")
            # Reusing a dirty output buffer must overwrite every element, fill included.
            out[...] = "7" if out.dtype.kind == "T" else 7
            assert reader.read(path, pos, out=out) is out
            np.testing.assert_array_equal(out, expected, err_msg=f"{path}[{pos}] into out")


def test_read_rows_equals_zarr_for_batches_in_any_order(cube: tuple[Path, list[str]]) -> None:
    """The batch path (per-array plans, multi-tile chunks decoded once) against zarr-python."""
    root, paths = cube
    reader = open_arrays(str(root))
    rng = np.random.default_rng(7)
    batches = [
        list(range(N_TILES)),
        [int(p) for p in rng.permutation(N_TILES)],
        [14, 3, 3, -1, 6, 0],  # repeats, negative, unwritten shard and empty chunks
        [9],
    ]
    for path in paths:
        want = zarr.open_array(str(root / path), mode="r")
        for positions in batches:
            expected = np.stack([want[p] for p in positions])
            out = np.empty((len(positions), *want.shape[1:]), dtype=want.dtype)
            out[...] = "7" if out.dtype.kind == "T" else 7  # a dirty buffer is overwritten
            assert reader.read_rows(path, positions, out) is out
            np.testing.assert_array_equal(out, expected, err_msg=f"{path}{positions}")
    with pytest.raises(InvalidInputError, match="outside"):
        reader.read_rows("s2/data", [0, N_TILES], np.empty((2, 2, 3, 8, 8), np.int16))
    with pytest.raises(InvalidInputError, match="expected"):
        reader.read_rows("s2/data", [0], np.empty((2, 2, 3, 8, 8), np.int16))


def test_unwritten_positions_read_as_fill(cube: tuple[Path, list[str]]) -> None:
    root, _ = cube
    reader = open_arrays(str(root))
    assert reader.fill_value("s2/data") == -32768
    assert (reader.read("s2/data", 7) == -32768).all()  # empty chunk in a written shard
    assert (reader.read("s2/data", 14) == -32768).all()  # shard file absent
    assert (reader.read("s2/data", 3)[1] == -32768).all()  # one empty time plane
    assert (reader.read("s2/data", 3)[0] != -32768).any()
    assert (reader.read("s2/mask", 12) == 64).all()
    assert np.isnan(reader.read("split/band", 11)).all()
    assert np.isnan(reader.read("tiles/transform", 13)).all()
    assert reader.read("tiles/epsg", -1) == 0
    assert reader.read("tiles/id", 11).item() == ""
    assert reader.read("tiles/id", 9).item().startswith("S2A_")


def test_metadata_and_attrs(cube: tuple[Path, list[str]]) -> None:
    root, _ = cube
    reader = open_arrays(str(root))
    assert reader.attrs("s2/mask") == {"long_name": "s2/mask"}
    assert reader.shape("tiles/transform") == (N_TILES, 6)
    assert np.isnan(reader.fill_value("tiles/transform"))
    assert reader.root_attrs() == {}
    zarr.open_group(str(root), mode="r+").update_attributes({"eoforge_cube_version": 1})
    assert open_arrays(str(root)).root_attrs() == {"eoforge_cube_version": 1}


def test_pickled_reader_carries_no_handles_and_reads_the_same(
    cube: tuple[Path, list[str]],
) -> None:
    root, _ = cube
    reader = open_arrays(str(root))
    before = reader.read("s2/data", 5)
    blob = pickle.dumps(reader)
    assert len(blob) < 300
    copy = pickle.loads(blob)
    assert isinstance(copy, ArrayReader)
    np.testing.assert_array_equal(copy.read("s2/data", 5), before)


def _read_sum(args: tuple[ArrayReader, int]) -> int:
    reader, pos = args
    return int(reader.read("s2/data", pos).astype(np.int64).sum())


def test_forked_workers_reopen_their_files(cube: tuple[Path, list[str]]) -> None:
    root, _ = cube
    reader = open_arrays(str(root))
    want = [_read_sum((reader, pos)) for pos in range(8)]  # parent has fds open now
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_read_sum, [(reader, pos) for pos in range(8)])
    assert got == want


def test_errors(cube: tuple[Path, list[str]]) -> None:
    root, _ = cube
    reader = open_arrays(str(root))
    with pytest.raises(NotFoundError):
        reader.read("s2/nothing", 0)
    with pytest.raises(InvalidInputError, match="outside the tile axis"):
        reader.read("s2/data", N_TILES)
    with pytest.raises(InvalidInputError, match="expected C-contiguous"):
        reader.read("s2/data", 0, out=np.empty((2, 3, 8, 8), dtype=np.int32))


def test_corrupt_shard_index_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=3)
    _make(root, "a", (N_TILES, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8), "int16", 0, CodecSpec())
    shard = root / "a" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index, before the crc32c
    shard.write_bytes(bytes(raw))
    with pytest.raises(ConflictError, match="checksum"):
        open_arrays(str(root)).read("a", 0)


def test_unsupported_codec_is_named(tmp_path: Path) -> None:
    root = tmp_path / "t.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=3)
    zarr.create_array(
        str(root), name="a", shape=(2, 4), chunks=(1, 4), dtype="int16", compressors=None
    )
    doc = json.loads((root / "a" / "zarr.json").read_text())
    doc["codecs"].append({"name": "gzip", "configuration": {"level": 1}})
    (root / "a" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="gzip"):
        open_arrays(str(root)).read("a", 0)


@pytest.mark.skipif(not DEMO.exists(), reason="no demo cube at build/demo.zarr (make demo)")
def test_demo_cube_arrays_equal_zarr() -> None:
    reader = open_arrays(str(DEMO))
    group = zarr.open_group(str(DEMO), mode="r")
    checked = 0
    for path, arr in _tile_arrays(group):
        n = arr.shape[0]
        k = arr.shards[0] if arr.shards else arr.chunks[0]
        for pos in sorted({0, 1, k - 1, k, n - 1} & set(range(n))):
            np.testing.assert_array_equal(reader.read(path, pos), arr[pos], err_msg=path)
            checked += 1
    assert checked > 20


def _tile_arrays(group: zarr.Group) -> list[tuple[str, zarr.Array[Any]]]:
    found: list[tuple[str, zarr.Array[Any]]] = []
    for name, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array) and node.ndim >= 1:
            found.append((name, node))
    return found


def test_small_complete_arrays_are_cached_whole_and_partial_ones_are_not(
    cube: tuple[Path, list[str]],
) -> None:
    """A fully written multi-tile-chunk array is decoded once and gathered from; an array with
    a never-written chunk is read chunk by chunk, so chunks written later are seen."""
    root, _ = cube
    reader = open_arrays(str(root))
    out = np.empty((3, 2), dtype=np.int64)
    reader.read_rows("full/time", [14, 0, 14], out)
    np.testing.assert_array_equal(out, zarr.open_array(str(root / "full/time"))[[14, 0, 14]])
    assert ("full/time", ()) in reader._small
    ids = np.empty(2, dtype=np.dtypes.StringDType())
    reader.read_rows("full/id", [3, 1], ids)
    assert ("full/id", ()) in reader._small

    epsg = np.empty(1, dtype=np.int32)
    reader.read_rows("tiles/epsg", [13], epsg)  # chunk 3 (positions 12-14) was never written
    assert epsg[0] == 0 and ("tiles/epsg", ()) not in reader._small
    zarr.open_array(str(root / "tiles/epsg"), mode="r+")[12:15] = 32633
    reader._small.clear()  # as after an eviction
    reader.read_rows("tiles/epsg", [13], epsg)
    assert epsg[0] == 32633


def test_a_complete_array_too_large_for_the_cache_is_read_by_chunk(
    cube: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import catalog._chunks as chunks

    root, _ = cube
    monkeypatch.setattr(chunks, "_SMALL_CACHE_BYTES", 8 * 200)  # whole arrays up to 200 bytes
    reader = open_arrays(str(root))
    out = np.empty((2, 2), dtype=np.int64)
    reader.read_rows("full/time", [13, 2], out)  # 15 x 2 int64 = 240 bytes
    np.testing.assert_array_equal(out, zarr.open_array(str(root / "full/time"))[[13, 2]])
    assert ("full/time", ()) not in reader._small and "full/time" in reader._not_whole
    assert ("full/time", (3, 0)) in reader._small  # the chunk holding position 13


def test_multi_tile_chunk_cache_is_bounded(
    cube: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import catalog._chunks as chunks

    root, _ = cube
    monkeypatch.setattr(chunks, "_SMALL_CACHE_BYTES", 400)  # about two transform chunks
    reader = open_arrays(str(root))
    want = zarr.open_array(str(root / "tiles/transform"), mode="r")
    out = np.empty((1, 6), dtype=np.float64)
    for position in [0, 5, 9, 13, 1, 6, 10, 14, 2]:  # every chunk, twice, with evictions
        reader.read_rows("tiles/transform", [position], out)
        np.testing.assert_array_equal(out[0], want[position])
        assert reader._small_bytes <= 400 and len(reader._small) <= 3
