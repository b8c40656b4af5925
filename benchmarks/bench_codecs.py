"""Chunk codecs for the cube: encode/decode speed and size of one training chunk.

A cube chunk is one tile x one time x all bands x full tile (DESIGN.md). This benchmark compares
the Zarr v3 codecs eoforge may write, on a chunk with realistic spatial structure (smooth fields
plus texture, int16 reflectance x 10000), using numcodecs (what zarr's Blosc/Zstd codecs call).
Baseline: zstd level 3 (a common default). One-byte arrays (masks, labels): Blosc LZ4 with
bit-shuffle against without it, on the demo cube's mask and label rasters (``make demo``).
"""

from __future__ import annotations

import numpy as np
from numcodecs import Blosc, Zstd, blosc

from benchmarks._harness import DEMO_CUBE, Measurement, time_median

NAME = "codecs"


def _chunk(rng: np.random.Generator, bands: int = 12, size: int = 128) -> np.ndarray:
    """A (band, y, x) int16 chunk with smooth structure and noise, like reflectance x 10000."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 1500 + 800 * np.sin(6 * xx) * np.cos(4 * yy)
    out = np.empty((bands, size, size), dtype=np.int16)
    for b in range(bands):
        noise = rng.normal(0, 60, (size, size))
        out[b] = np.clip(base * (0.6 + 0.1 * b) + noise, 0, 10000).astype(np.int16)
    return out


def _one_byte_arrays() -> dict[str, list[np.ndarray]]:
    """Every tile of the demo cube's one-byte raster arrays (masks, labels), when it exists."""
    from catalog._chunks import open_arrays
    from schemas.cube import CubeLayout

    if not (DEMO_CUBE / "zarr.json").exists():
        return {}
    reader = open_arrays(str(DEMO_CUBE))
    layout = CubeLayout.from_root_attrs(reader.root_attrs())
    arrays: dict[str, list[np.ndarray]] = {}
    for spec in layout.arrays:
        if spec.has_tile_axis and spec.shards is not None and spec.dtype == "uint8":
            n = reader.shape(spec.path)[0]
            arrays[spec.path] = [np.ascontiguousarray(reader.read(spec.path, p)) for p in range(n)]
    return arrays


def _one_byte_cases(quick: bool) -> list[Measurement]:
    """The demo cube's masks and labels: Blosc LZ4 with and without bit-shuffle.

    What :class:`schemas.cube.CodecSpec` chooses for one-byte arrays. Decoded as a DataLoader
    worker decodes (one thread, ``numcodecs.blosc.decompress`` into a reused buffer, as
    :mod:`catalog._chunks` does); skipped with a note without the demo cube (``make demo``).
    """
    arrays = _one_byte_arrays()
    if not arrays:
        print("  codecs: no demo cube (make demo); one-byte array cases skipped")
        return []
    repeats = 3 if quick else 9
    results: list[Measurement] = []
    threads, blosc.use_threads = blosc.use_threads, False  # as in a forked worker
    try:
        for path, chunks in arrays.items():
            raw = sum(c.nbytes for c in chunks)
            out = np.empty(max(c.nbytes for c in chunks), dtype=np.uint8)
            for name, shuffle in (("bitshuffle", Blosc.BITSHUFFLE), ("noshuffle", Blosc.NOSHUFFLE)):
                encoded = [
                    blosc.compress(c.tobytes(), b"lz4", 5, shuffle, typesize=1) for c in chunks
                ]

                def decode(encoded: list[bytes] = encoded, out: np.ndarray = out) -> None:
                    for e in encoded:
                        blosc.decompress(e, out)

                base = f"demo {path} {chunks[0].shape}: blosc-lz4-5-"
                results.append(
                    Measurement(
                        bench=NAME,
                        case=f"{base}{name} decode",
                        baseline=None if name == "bitshuffle" else f"{base}bitshuffle decode",
                        median_s=time_median(decode, repeats=repeats),
                        repeats=repeats,
                        unit_count=float(len(chunks)),
                        unit="chunks",
                        extra={"compression_ratio": round(raw / sum(len(e) for e in encoded), 1)},
                    )
                )
    finally:
        blosc.use_threads = threads
    return results


def run(quick: bool = False) -> list[Measurement]:
    """Measure encode+decode of every codec on the same chunks, side by side."""
    rng = np.random.default_rng(0)
    chunks = [_chunk(rng) for _ in range(4 if quick else 16)]
    raw = sum(c.nbytes for c in chunks)
    codecs = {
        "zstd-3": Zstd(level=3),
        "blosc-zstd-3-bitshuffle": Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
        "blosc-lz4-5-bitshuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
        "blosc-lz4-5-shuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
    }
    repeats = 3 if quick else 9
    results: list[Measurement] = _one_byte_cases(quick)
    for name, codec in codecs.items():
        encoded = [codec.encode(c) for c in chunks]
        size = sum(len(e) for e in encoded)

        def decode(codec: object = codec, encoded: list[bytes] = encoded) -> None:
            for e in encoded:
                codec.decode(e)  # type: ignore[attr-defined]

        def encode(codec: object = codec) -> None:
            for c in chunks:
                codec.encode(c)  # type: ignore[attr-defined]

        for op, fn in (("decode", decode), ("encode", encode)):
            med = time_median(fn, repeats=repeats)
            results.append(
                Measurement(
                    bench=NAME,
                    case=f"{name} {op}",
                    baseline=None if name == "zstd-3" else f"zstd-3 {op}",
                    median_s=med,
                    repeats=repeats,
                    unit_count=raw / 1e6,
                    unit="MB",
                    extra={"compression_ratio": round(raw / size, 3)},
                )
            )
    return results
