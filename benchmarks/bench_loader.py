"""Training reads: tile readers, DataLoader throughput against its ceiling, and TorchGeo.

Two cubes, side by side in one run:

* ``demo``: ``build/demo.zarr`` (``make demo``), skipped with a note when absent;
* ``gen``: a generated, complete eoforge cube (written as a build writes, catalog included):
  ``N`` Sentinel-2-like tiles of (1 time, 10 bands, 120 x 120) int16 reflectance (smooth fields
  plus noise) with mask and datetimes, a ``corine`` label raster and multi-labels, chunks of one
  tile, shards of 64 tiles, Blosc LZ4 (the default :class:`schemas.cube.CodecSpec`: bit-shuffle,
  none for the one-byte mask and labels).
  It is cached under the system temp folder and rebuilt when its parameters change.

Cases (every ratio compares cases of this run; ``samples`` = tile slabs):

1. ``read <cube>: <reader>``: one process reads ``data[position]`` for every position:
   zarr-python ``arr[pos]`` (baseline), tensorstore, and :mod:`catalog._chunks`.
2. ``ceiling <cube>``: the same chunk bytes (``os.pread``) decoded with the same codec into a
   reused buffer, no framework, on 2 processes: what a loader could reach on this machine.
   Timed before and after the cases compared with it, its median over both sets of repeats.
3. ``loader <cube>: <dataset>, batch <n>``: ``DataLoader(num_workers=2, batch_size=n)`` over a
   minimal map-style dataset of the slab (``SlabDataset``, one sample at a time) with each
   reader; over ``SlabBatchDataset`` (``__getitems__`` decodes the batch straight into one
   tensor: a new shared-memory segment per batch, or a reused slot of the worker's
   :class:`catalog._ring.BatchRing`); and over :class:`catalog.dataset.TileDataset` on both
   cubes (every sensor, mask, label and metadata array of each tile; against the ceiling over
   all the cube's sharded raster arrays), with float32 physical values (demo) or the stored
   values (``physical=False``; the conversion is then ``to_physical`` on the accelerator,
   timed on this CPU as ``to_physical demo``). Ratio =
   loader / ceiling throughput. ``extra`` has MB/s (bytes delivered), the workers' peak and
   growth of RSS over the epoch, and their private memory after the timed epochs (RSS without
   the pages shared with the forking process, which after ``make bench``'s build and catalog
   benches is GBs).
   ``..., loader_context``: the same with :func:`catalog.loader_context` (the start method's
   context with queues that write in the caller's thread instead of a feeder thread).
   ``TileStream(batch_size=n)`` (gen): the streaming variant, whole shards per worker in a
   shuffled shard order, batches read with ``__getitems__``, in ``DataLoader(batch_size=None)``.
   ``read_rows <cube>``: the loader minus the DataLoader: ``ArrayReader.read_rows`` of the
   same shuffled batches into 4 reused memfd batch buffers per process, on 2 processes.
4. ``DataLoader(num_workers=2) alone``: batches/s and CPU per batch (main process + workers)
   over a dataset whose batches cost nothing to fill (a leased ring slot, as TileDataset
   sends), with the default context and with :func:`catalog.loader_context`: the fixed cost
   of the DataLoader's queues, pickling and threads, which on 2 cores bounds the
   loader/ceiling ratio of small batches.
5. ``torchgeo gen``: the same tiles as one GeoTIFF each (deflate, 256 x 256 blocks), read with
   TorchGeo's ``RasterDataset`` + ``RandomGeoSampler(size=120)`` in the same DataLoader setup,
   in a separate venv (torchvision does not install beside this project's torch) run as a
   subprocess that prints JSON. The venv is ``$EOFORGE_TORCHGEO_PYTHON``,
   ``benchmarks/.venv-torchgeo`` or ``/tmp/tg-venv``; the case is skipped with a note when none
   exists (create one with ``python -m venv /tmp/tg-venv && /tmp/tg-venv/bin/pip install
   torch==2.14.1 torchvision==0.29.1 torchgeo``). Its ``extra`` has ``eoforge_speedup``: the
   ``SlabDataset[_chunks]`` loader's throughput over TorchGeo's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks._harness import DEMO_CUBE, Measurement, time_all, time_median
from benchmarks.bench_codecs import _chunk
from catalog._chunks import ArrayReader, open_arrays

NAME = "loader"

ROOT = Path(__file__).resolve().parents[1]
DEMO = DEMO_CUBE
GEN_PATH = "sentinel-2-l2a/data"
BATCH = 16
WORKERS = 2
_TORCHGEO_PYTHONS = (
    os.environ.get("EOFORGE_TORCHGEO_PYTHON", ""),
    str(ROOT / "benchmarks" / ".venv-torchgeo" / "bin" / "python"),
    "/tmp/tg-venv/bin/python",
)


# --- readers (picklable; open lazily in each process) ---------------------------------------


class ZarrReader:
    """``zarr.open_array(...)[position]``: what zarr-python users write."""

    def __init__(self, cube: str) -> None:
        self.cube = cube
        self._arrays: dict[str, Any] = {}
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"cube": self.cube}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cube"])  # type: ignore[misc]

    def read(self, path: str, position: int) -> npt.NDArray[Any]:
        import zarr

        if self._pid != os.getpid():
            self._arrays, self._pid = {}, os.getpid()
        arr = self._arrays.get(path)
        if arr is None:
            arr = self._arrays[path] = zarr.open_array(f"{self.cube}/{path}", mode="r")
        return np.asarray(arr[position])


class TensorstoreReader(ZarrReader):
    """tensorstore's ``zarr3`` driver, ``arr[position].read().result()``."""

    def read(self, path: str, position: int) -> npt.NDArray[Any]:
        import tensorstore as ts

        if self._pid != os.getpid():
            self._arrays, self._pid = {}, os.getpid()
        arr = self._arrays.get(path)
        if arr is None:
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{self.cube}/{path}"}}
            arr = self._arrays[path] = ts.open(spec, read=True).result()
        return np.asarray(arr[position].read().result())


class ChunksReader:
    """:mod:`catalog._chunks` (pread + numcodecs decode into the output)."""

    def __init__(self, cube: str) -> None:
        self.reader: ArrayReader = open_arrays(cube)

    def read(self, path: str, position: int) -> npt.NDArray[Any]:
        return self.reader.read(path, position)


def _tensorstore_ok() -> bool:
    # Never import tensorstore here: once loaded, it aborts any later fork() of this process.
    return importlib.util.find_spec("tensorstore") is not None


def _readers(cube: str) -> dict[str, Any]:
    readers: dict[str, Any] = {"zarr-python": ZarrReader(cube)}
    if _tensorstore_ok():
        readers["tensorstore"] = TensorstoreReader(cube)
    readers["_chunks"] = ChunksReader(cube)
    return readers


# --- datasets -------------------------------------------------------------------------------


class SlabDataset:
    """Minimal map-style dataset: sample ``i`` is ``torch.from_numpy(data[positions[i]])``."""

    def __init__(self, reader: Any, path: str, positions: npt.NDArray[np.int64]) -> None:
        self.reader, self.path, self.positions = reader, path, positions

    def __len__(self) -> int:
        return int(self.positions.size)

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.from_numpy(self.reader.read(self.path, int(self.positions[i])))


class SlabBatchDataset(SlabDataset):
    """``SlabDataset`` with ``__getitems__``: a batch decoded straight into one shared tensor.

    The DataLoader calls ``__getitems__`` with the batch's indexes; each slab is decoded into
    its row of a ``(batch, ...)`` tensor, so there is no per-sample allocation and no stacking
    copy (use with ``collate_fn=_identity``). With ``slots`` > 0 the tensor is a reused slot of
    the worker's :class:`catalog._ring.BatchRing` (as in ``TileDataset``), else a new
    shared-memory segment per batch.
    """

    def __init__(
        self, reader: Any, path: str, positions: npt.NDArray[np.int64], slots: int = 0
    ) -> None:
        super().__init__(reader, path, positions)
        self.slots = slots
        self._ring: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ring": None}

    def __getitems__(self, indexes: list[int]) -> Any:
        import torch
        from torch.utils.data import get_worker_info

        reader: ArrayReader = self.reader.reader
        plan = [("x", reader.shape(self.path)[1:], getattr(torch, str(reader.dtype(self.path))))]
        in_worker = self.slots > 0 and get_worker_info() is not None
        batch, leased = _ring_batch(self, plan, len(indexes), self.slots if in_worker else 0)
        rows = [int(self.positions[i]) for i in indexes]
        reader.read_rows(self.path, rows, batch["x"].numpy())
        return batch["x"] if leased is None else leased


def _ring_batch(owner: Any, plan: list[Any], n: int, slots: int) -> tuple[dict[str, Any], Any]:
    """A batch of ``plan`` tensors in a slot of ``owner._ring`` as a TileDataset worker makes it.

    The ring (``slots`` slots sized for this batch) is made on first use; ``slots=0``: no
    ring. Returns the batch and, when it sits in a ring slot, the
    :class:`catalog._ring.LeasedBatch` to return from ``__getitems__`` (else ``None``: a new
    shared-memory segment, or plain memory outside a worker).
    """
    from catalog._ring import BatchRing, LeasedBatch
    from catalog.dataset import _alloc_batch, _batch_layout

    if slots and owner._ring is None:
        owner._ring = BatchRing(slots, _batch_layout(plan, n)[1])
    batch, lease = _alloc_batch(plan, n, owner._ring)
    return batch, None if lease is None else LeasedBatch(batch, *lease)


def _identity(batch: Any) -> Any:
    return batch


def _rss_kb(pid: int) -> tuple[int, int]:
    """(current, peak) resident set of ``pid`` in kB, from /proc (0, 0 where unavailable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return (
        int(fields.get("VmRSS", "0 kB").split()[0]),
        int(fields.get("VmHWM", "0 kB").split()[0]),
    )


def _private_kb(pid: int) -> int:
    """Private resident memory of ``pid`` in kB (``Private_Clean`` + ``Private_Dirty``).

    A forked worker's resident set includes the pages it still shares with the process that
    forked it (after the build and catalog benches of ``make bench``, gigabytes); this is the
    memory the worker itself costs. Reading ``smaps_rollup`` takes ~1 ms, so it is read once
    after the timed epochs, not while they run. 0 where unavailable.
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(
        int(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )


def _loader(
    dataset: Any,
    context: str,
    batch: int = BATCH,
    draws: int | None = None,
    direct: bool = False,
) -> Any:
    """``DataLoader(num_workers=2, batch_size=batch)``, workers kept between epochs.

    Shuffled epochs over the dataset, or (``draws``) epochs of ``draws`` random samples drawn
    with replacement: many batches per epoch from a small cube. ``direct``: the start method's
    :func:`catalog.loader_context` (queues without feeder threads).
    """
    from torch.utils.data import DataLoader, IterableDataset, RandomSampler

    from catalog import loader_context

    context_arg = loader_context(context) if direct else context
    if isinstance(dataset, IterableDataset):  # a TileStream of batches
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=WORKERS,
            persistent_workers=True,
            multiprocessing_context=context_arg,
        )
    extra: dict[str, Any] = {}
    if isinstance(dataset, SlabBatchDataset | EmptyBatches):
        extra["collate_fn"] = _identity
    return DataLoader(
        dataset,
        **extra,
        batch_size=batch,
        num_workers=WORKERS,
        shuffle=draws is None,
        sampler=None if draws is None else RandomSampler(dataset, True, draws),
        persistent_workers=True,
        multiprocessing_context=context_arg,
    )


def _epoch(loader: Any, rss: dict[str, float] | None = None) -> int:
    """One epoch of ``loader``; bytes of the samples."""
    it: Iterator[Any] = iter(loader)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    nbytes = 0
    after_warmup: list[int] = []
    last: list[tuple[int, int]] = []
    for seen, batch in enumerate(it, start=1):
        values = batch.values() if isinstance(batch, dict) else [batch]
        nbytes += sum(int(v.nbytes) for v in values if hasattr(v, "nbytes"))
        if pids and (seen == 2 * WORKERS or seen % 8 == 0):
            last = [_rss_kb(p) for p in pids]
            if not after_warmup:
                after_warmup = [cur for cur, _ in last]
    if rss is not None and last and after_warmup:
        rss["worker_peak_rss_mb"] = round(max(peak for _, peak in last) / 1024, 1)
        rss["worker_rss_growth_mb"] = round(
            max(cur - w for (cur, _), w in zip(last, after_warmup, strict=True)) / 1024, 1
        )
    return nbytes


# --- the ceiling: pread + decode, no framework ----------------------------------------------


def _chunk_ranges(cube: str, paths: list[str], positions: npt.NDArray[np.int64]) -> list[Any]:
    """(file, offset, nbytes, decoded nbytes) of every stored inner chunk of the slabs."""
    reader = open_arrays(cube)
    ranges = []
    for path in paths:
        meta = reader.meta(path)
        cpo = meta.chunks_per_outer
        slab_chunks = [
            range(-(-s // c)) for s, c in zip(meta.shape[1:], meta.inner[1:], strict=True)
        ]
        for pos in positions:
            for rest in np.ndindex(*(len(r) for r in slab_chunks)):
                coords = (int(pos) // meta.inner[0], *rest)
                outer = tuple(c // n for c, n in zip(coords, cpo, strict=True))
                key = meta.key(outer)
                index = reader._shard_index(meta, key) if meta.sharded else None
                if index is None:
                    continue
                local = tuple(c % n for c, n in zip(coords, cpo, strict=True))
                off, n = (int(v) for v in index[np.ravel_multi_index(local, cpo)])
                if off != 2**64 - 1:
                    ranges.append((f"{cube}/{key}", off, n, meta.chunk_nbytes))
    return ranges


def _ceiling_worker(ranges: list[Any]) -> int:
    from numcodecs import blosc

    fds: dict[str, int] = {}
    buf = bytearray(max((r[2] for r in ranges), default=1))
    out = np.empty(max((r[3] for r in ranges), default=1), dtype=np.uint8)
    total = 0
    for fname, off, n, size in ranges:
        fd = fds.get(fname)
        if fd is None:
            fd = fds[fname] = os.open(fname, os.O_RDONLY)
        view = memoryview(buf)[:n]
        os.preadv(fd, [view], off)
        blosc.decompress(view, out[:size])
        total += size
    for fd in fds.values():
        os.close(fd)
    return total


class _Ceiling:
    """The ceiling over every stored chunk of ``paths`` at ``positions``, ``epochs`` times.

    Timed (:meth:`measure`) before and after the cases it is the baseline of: its median is
    over both sets of repeats, so a drift of this noisy machine while those cases run moves the
    baseline with them instead of skewing their ratios.
    """

    def __init__(
        self,
        case: str,
        cube: str,
        paths: list[str],
        positions: npt.NDArray[np.int64],
        repeats: int,
        epochs: int,
    ) -> None:
        self.case, self.paths, self.repeats, self.epochs = case, paths, repeats, epochs
        self.samples = float(positions.size * epochs)
        self.ranges = _chunk_ranges(cube, paths, positions)
        self.times: list[float] = []

    def measure(self) -> None:
        """Time ``repeats`` more runs (2 processes, half the chunks each)."""
        halves = [self.ranges[0::2] * self.epochs, self.ranges[1::2] * self.epochs]
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            self.times += time_all(lambda: pool.map(_ceiling_worker, halves), self.repeats)

    def result(self) -> Measurement:
        """The ceiling's measurement: the median over every timed run."""
        median = statistics.median(self.times)
        decoded = sum(r[3] for r in self.ranges)
        return Measurement(
            NAME,
            self.case,
            None,
            median,
            len(self.times),
            self.samples,
            "samples",
            extra={
                "MB_s": round(decoded * self.epochs / median / 1e6, 1),
                "processes": WORKERS,
                "arrays": len(self.paths),
                "timed": "before and after its cases",
            },
        )


#: Per pool process: (cube, path, batch) -> (reader, the 4 rotating batch buffers).
_READ_ROWS_STATE: dict[tuple[str, str, int], tuple[ArrayReader, list[npt.NDArray[Any]]]] = {}


def _read_rows_worker(job: tuple[str, str, int, list[list[int]]]) -> int:
    """Decode every batch with ``ArrayReader.read_rows`` into 4 rotating ring-like buffers."""
    from catalog._ring import BatchRing

    cube, path, batch, batches = job
    state = _READ_ROWS_STATE.get((cube, path, batch))
    if state is None:
        reader = open_arrays(cube)
        shape, dtype = tuple(reader.shape(path)[1:]), reader.dtype(path)
        nbytes = batch * math.prod(shape) * dtype.itemsize
        ring = BatchRing(4, nbytes)  # the same memfd slots a worker decodes into
        # Held for good: the views keep every slot acquired (nobody else uses this ring).
        leases = [ring.acquire(nbytes) for _ in range(4)]
        slots = [
            lease[1].numpy().view(dtype).reshape(batch, *shape)
            for lease in leases
            if lease is not None
        ]
        for slot in slots:
            slot.fill(0)  # pages faulted once, as in a worker's steady state
        state = _READ_ROWS_STATE[(cube, path, batch)] = (reader, slots)
    reader, slots = state
    for k, rows in enumerate(batches):
        reader.read_rows(path, rows, slots[k % 4][: len(rows)])
    return len(batches)


def _read_rows_alone(
    tag: str, cube: str, path: str, n: int, batch: int, repeats: int, epochs: int
) -> Measurement:
    """``read_rows`` of shuffled batches on 2 processes, no DataLoader: the loader minus it.

    The same work as the loader cases (``n`` tiles x ``epochs``, batches of ``batch``, decoded
    into 4 reused batch buffers per process), split over 2 processes as the ceiling is.
    """
    order = np.random.default_rng(0).permutation(n)
    batches = [[int(i) for i in order[k : k + batch]] for k in range(0, n, batch)]
    jobs = [(cube, path, batch, batches[w::WORKERS] * epochs) for w in range(WORKERS)]
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        med = time_median(lambda: pool.map(_read_rows_worker, jobs), repeats=repeats)
    return Measurement(
        NAME,
        f"read_rows {tag}: 2 processes, no DataLoader, 4 reused batch buffers, batch {batch}",
        f"ceiling {tag}",
        med,
        repeats,
        float(n * epochs),
        "samples",
    )


# --- the generated cube ---------------------------------------------------------------------


#: The generated cube's label classes (its ``labels/corine`` raster holds their indexes).
GEN_CLASSES = ("forest", "water", "urban", "crop")


def _generated_cube(n_tiles: int) -> Path:
    """``n_tiles`` S2-like tiles as a complete eoforge cube (module docstring), cached.

    Written the way a build writes (:func:`pipelines.write.open_or_create_cube`, the catalog
    through :class:`catalog.writer.CatalogWriter`): ``sentinel-2-l2a`` data (1 time, 10 bands,
    120 x 120 int16), mask and datetimes, a ``corine`` label raster and multi-labels, the
    ``tiles/*`` arrays, 64 tiles per shard, the default codecs; so both the slab cases
    (``sentinel-2-l2a/data``) and :class:`catalog.dataset.TileDataset` read it.
    """
    from datetime import UTC, datetime, timedelta

    import shapely

    from catalog.writer import CatalogWriter
    from pipelines.grid import Tile
    from pipelines.write import open_or_create_cube
    from schemas.cube import CubeLayout, LabelLayout, MaskBit, SensorLayout
    from schemas.tile import SensorObservation, TileRecord

    root = Path(tempfile.gettempdir()) / f"eoforge-bench-loader-{n_tiles}.zarr"
    marker = root / "complete-v3"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    k, px, tile_m = 64, 120, 1200.0
    bands = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    layout = CubeLayout.for_recipe_like(
        [
            SensorLayout(
                GEN_PATH.split("/")[0], bands, 10.0, n_time=1, dtype="int16", nodata=-32768,
                scale_factor=1e-4, add_offset=-0.1, units="1",
            )
        ],
        tile_size_m=tile_m,
        tiles_per_shard=k,
        labels=[LabelLayout("corine", GEN_CLASSES)],
    )  # fmt: skip
    group = open_or_create_cube(root, layout, n_tiles_capacity=n_tiles)
    rng = np.random.default_rng(0)
    bases = [_chunk(rng, bands=len(bands), size=px) for _ in range(16)]
    start_time = datetime(2024, 6, 1, tzinfo=UTC)
    tiles = [Tile(32, "N", 4000 + i % 50, 50000 + i // 50, tile_m) for i in range(n_tiles)]
    writer = CatalogWriter(root)
    yy, xx = np.mgrid[0:px, 0:px]
    for first in range(0, n_tiles, k):
        rows = range(first, min(first + k, n_tiles))
        data = np.stack([np.roll(bases[i % 16], i % 37, axis=-1) + (i % 11) for i in rows])
        group[GEN_PATH][first : rows.stop] = data[:, None]
        mask = np.full((len(rows), 1, px, px), int(MaskBit.VALID), dtype=np.uint8)
        mask[:, :, : px // 8] = int(MaskBit.CLOUD)  # a cloudy band along the top
        group[GEN_PATH.replace("/data", "/mask")][first : rows.stop] = mask
        when = [start_time + timedelta(days=i % 30) for i in rows]
        stamps = np.array([[np.datetime64(w.replace(tzinfo=None), "ns")] for w in when])
        group[GEN_PATH.replace("/data", "/datetime")][first : rows.stop] = stamps.astype(np.int64)
        labels = np.stack(
            [((xx // (20 + i % 7) + yy // 30 + i) % len(GEN_CLASSES)) for i in rows]
        ).astype(np.uint8)
        group["labels/corine"][first : rows.stop] = labels
        multi = np.zeros((len(rows), len(GEN_CLASSES)), dtype=np.uint8)
        for j in range(len(rows)):
            multi[j, np.unique(labels[j])] = 1
        group["labels/corine_multilabel"][first : rows.stop] = multi
        records = []
        for j, i in enumerate(rows):
            tile = tiles[i]
            footprint = tile.footprint_wgs84()
            transform = (10.0, 0.0, tile.bounds[0], 0.0, -10.0, tile.bounds[3])
            records.append(
                TileRecord(
                    tile_id=tile.id,
                    period_id="2024-06",
                    period_start=start_time,
                    period_end=datetime(2024, 7, 1, tzinfo=UTC),
                    epsg=tile.epsg,
                    transform=transform,
                    proj_bbox=tile.bounds,
                    geometry_wkb=shapely.to_wkb(footprint),
                    bbox=footprint.bounds,
                    cube_position=i,
                    shard_id=f"s{first // k:05d}",
                    sensors=(
                        SensorObservation(
                            sensor=GEN_PATH.split("/")[0],
                            datetimes=(when[j],),
                            item_ids=(f"gen-{i}",),
                            cloud_fraction=0.125,
                            valid_fraction=0.875,
                        ),
                    ),
                    split="train",
                    class_fractions={},
                    multilabels={
                        "corine": tuple(c for c, m in zip(GEN_CLASSES, multi[j], strict=True) if m)
                    },
                )
            )
        group["tiles/id"][first : rows.stop] = np.array(
            [tiles[i].id for i in rows], dtype=np.dtypes.StringDType()
        )
        group["tiles/period"][first : rows.stop] = np.array(
            ["2024-06"] * len(rows), dtype=np.dtypes.StringDType()
        )
        group["tiles/epsg"][first : rows.stop] = np.array([r.epsg for r in records], np.int32)
        group["tiles/transform"][first : rows.stop] = np.array(
            [r.transform for r in records], dtype=np.float64
        )
        writer.commit_shard(f"s{first // k:05d}", records, run_id="bench-gen")
    writer.finish_run("bench-gen", {"generated": True})
    marker.write_text("ok\n")
    return root


def _geotiffs(cube: Path, n_tiles: int) -> Path:
    """The generated tiles as GeoTIFFs, one per tile, spaced a tile apart (cached)."""
    import rasterio
    from rasterio.transform import from_origin

    folder = cube.with_suffix(".tifs")
    marker = folder / "complete-v1"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    reader = open_arrays(str(cube))
    per_row = 64
    for i in range(n_tiles):
        tile = reader.read(GEN_PATH, i)[0]
        x0 = 500_000 + (i % per_row) * 2400.0  # one tile (1200 m) gap between tiles
        y0 = 5_000_000 - (i // per_row) * 2400.0
        profile = {
            "driver": "GTiff",
            "width": 120,
            "height": 120,
            "count": 10,
            "dtype": "int16",
            "crs": "EPSG:32632",
            "transform": from_origin(x0, y0, 10.0, 10.0),
            "compress": "deflate",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "nodata": -32768,
        }
        with rasterio.open(folder / f"tile_{i:05d}.tif", "w", **profile) as dst:
            dst.write(tile)
    marker.write_text("ok\n")
    return folder


_TORCHGEO_SCRIPT = r"""
import json, sys, time, resource
from torch.utils.data import DataLoader
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler

folder, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
class Tiles(RasterDataset):
    filename_glob = "tile_*.tif"
    is_image = True
ds = Tiles(paths=folder)
times = []
for _ in range(repeats):
    sampler = RandomGeoSampler(ds, size=120, length=n)
    loader = DataLoader(ds, sampler=sampler, batch_size=16, num_workers=2,
                        collate_fn=stack_samples)
    t0 = time.perf_counter()
    nbytes = 0
    for batch in loader:
        nbytes += batch["image"].numel() * 2  # int16 on disk; torchgeo returns float32
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"median_s": times[len(times) // 2], "samples": n, "bytes": nbytes}))
"""


def _torchgeo(folder: Path, n: int, repeats: int) -> dict[str, Any] | str:
    python = next((p for p in _TORCHGEO_PYTHONS if p and Path(p).exists()), None)
    if python is None:
        return "no torchgeo venv (module docstring says how to create one)"
    proc = subprocess.run(
        [python, "-c", _TORCHGEO_SCRIPT, str(folder), str(n), str(repeats)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        return f"torchgeo run failed: {proc.stderr.strip().splitlines()[-1:]}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- the benchmark --------------------------------------------------------------------------


def _time_reads(reader: Any, path: str, positions: npt.NDArray[np.int64], repeats: int) -> float:
    def epoch() -> None:
        for pos in positions:
            reader.read(path, int(pos))

    return time_median(epoch, repeats=repeats, warmup=1)


def _measure_readers(
    tag: str, cube: str, path: str, positions: npt.NDArray[np.int64], repeats: int
) -> list[Measurement]:
    results = []
    slab = int(np.prod(open_arrays(cube).shape(path)[1:])) * 2
    for name, reader in _readers(cube).items():
        if name == "tensorstore":  # in a spawned process: see _tensorstore_ok
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                med = pool.apply(_time_reads, (reader, path, positions, repeats))
        else:
            med = _time_reads(reader, path, positions, repeats)
        results.append(
            Measurement(
                NAME,
                f"read {tag}: {name}",
                None if name == "zarr-python" else f"read {tag}: zarr-python",
                med,
                repeats,
                float(positions.size),
                "samples",
                extra={"MB_s": round(positions.size * slab / med / 1e6, 1), "processes": 1},
            )
        )
    return results


def _loader_case(
    tag: str,
    case: str,
    dataset: Any,
    repeats: int,
    epochs: int,
    context: str = "fork",
    batch: int = BATCH,
    draws: int | None = None,
    direct: bool = False,
) -> Measurement:
    """Steady-state throughput: one warm-up epoch (worker start), then ``epochs`` per repeat.

    With ``draws``, an epoch is ``draws`` samples drawn at random (see :func:`_loader`);
    ``direct``: with :func:`catalog.loader_context`.
    """
    loader = _loader(dataset, context, batch, draws, direct)
    sizes: list[int] = []
    rss: dict[str, float] = {}

    def run_epochs() -> None:
        sizes.append(sum(_epoch(loader, rss) for _ in range(epochs)))

    med = time_median(run_epochs, repeats=repeats, warmup=1)
    workers = getattr(getattr(loader, "_iterator", None), "_workers", [])
    if workers:  # persistent workers, after every timed epoch
        rss["worker_private_mb"] = round(max(_private_kb(w.pid) for w in workers) / 1024, 1)
    return Measurement(
        NAME,
        f"loader {tag}: {case}, batch {batch}" + (", loader_context" if direct else ""),
        f"ceiling {tag}",
        med,
        repeats,
        float((draws or len(getattr(dataset, "dataset", dataset))) * epochs),
        "samples",
        extra={
            "MB_s": round(sizes[-1] / med / 1e6, 1),
            "batch": batch,
            "context": context,
            **rss,
        },
    )


def _cube_cases(
    tag: str,
    cube: str,
    paths: list[str],
    positions: npt.NDArray[np.int64],
    repeats: int,
    epochs: int,
) -> list[Measurement]:
    """Readers, ceiling and loaders on one cube (``paths[0]`` is the slab array)."""
    results = _measure_readers(tag, cube, paths[0], positions, repeats)
    ceiling = _Ceiling(f"ceiling {tag}", cube, paths[:1], positions, repeats, epochs)
    ceiling.measure()
    at = len(results)
    for name, reader in _readers(cube).items():
        results.append(
            _loader_case(
                tag,
                f"SlabDataset[{name}]",
                SlabDataset(reader, paths[0], positions),
                repeats,
                epochs,
                # tensorstore aborts in forked children of a process that loaded it.
                context="spawn" if name == "tensorstore" else "fork",
            )
        )
    ring = "4 reused worker buffers"
    slab_cases = [
        (0, "new shared memory per batch", BATCH, False),
        (4, ring, BATCH, False),
        (4, ring, BATCH, True),
    ]
    if positions.size >= 8 * WORKERS * 4 * BATCH:  # enough batches of 64 to keep workers busy
        slab_cases += [(4, ring, 4 * BATCH, False), (4, ring, 4 * BATCH, True)]
    for size in sorted({batch for _, _, batch, _ in slab_cases}):
        results.append(_read_rows_alone(tag, cube, paths[0], positions.size, size, repeats, epochs))
    for slots, what, batch, direct in slab_cases:
        results.append(
            _loader_case(
                tag,
                f"SlabBatchDataset[_chunks] (decode into the batch, {what})",
                SlabBatchDataset(ChunksReader(cube), paths[0], positions, slots=slots),
                repeats,
                epochs,
                batch=batch,
                direct=direct,
            )
        )
    ceiling.measure()
    results.insert(at, ceiling.result())
    return results


#: TileDataset loader cases: (case, TileDataset options, batch, loader_context).
_STORED = "TileDataset stored values (physical=False)"
_TILE_CASES_DEMO: tuple[tuple[str, dict[str, Any], int, bool], ...] = (
    ("TileDataset float32 (physical)", {}, BATCH, False),
    (_STORED, {"physical": False}, BATCH, False),
    (_STORED, {"physical": False}, BATCH, True),
    (
        "TileDataset stored values, new shared memory per batch",
        {"physical": False, "batch_buffers": 0},
        BATCH,
        False,
    ),
    ("TileDataset float32 (physical)", {}, 4 * BATCH, False),
    (_STORED, {"physical": False}, 4 * BATCH, False),
    (_STORED, {"physical": False}, 4 * BATCH, True),
)
_TILE_CASES_GEN = tuple(c for c in _TILE_CASES_DEMO if c[0] == _STORED)


def _tile_dataset_cases(
    tag: str,
    cube: str,
    cases: tuple[tuple[str, dict[str, Any], int, bool], ...],
    repeats: int,
    epochs: int,
    draws: bool,
) -> list[Measurement]:
    """TileDataset on ``cube``: every sensor, mask, label and metadata array of a tile.

    Cases (``cases``): physical float32 values (the default) and stored values
    (``physical=False``, the float conversion left to
    :meth:`~catalog.dataset.TileDataset.to_physical` on the accelerator), with the workers'
    reused batch buffers or a new shared-memory segment per batch (``batch_buffers=0``).
    Baseline: the ceiling over the same tiles' chunks of every sharded raster array. ``draws``:
    epochs of ``n * epochs`` random draws (a cube of < 100 rows), else ``epochs`` shuffled
    epochs.
    """
    try:
        import catalog.dataset as dsmod
    except ImportError as err:
        print(f"  loader: TileDataset not importable ({err}); skipped")
        return []
    from schemas.cube import CubeLayout

    reader = open_arrays(cube)
    layout = CubeLayout.from_root_attrs(reader.root_attrs())
    paths = [s.path for s in layout.arrays if s.has_tile_axis and s.shards is not None]
    positions = dsmod.TileDataset(cube).positions
    n = positions.size
    base = f"ceiling {tag}, all raster arrays"
    ceiling = _Ceiling(base, cube, paths, positions, repeats, epochs)
    ceiling.measure()
    results: list[Measurement] = []
    for case, options, batch, direct in cases:
        m = _loader_case(
            tag,
            case,
            dsmod.TileDataset(cube, **options),
            repeats,
            1 if draws else epochs,
            batch=batch,
            # Random draws keep the workers of a small cube busy with many batches (the same
            # tiles the ceiling reads, as often).
            draws=n * epochs if draws else None,
            direct=direct,
        )
        results.append(dataclasses.replace(m, baseline=base))
    if not draws:  # whole shards per worker, in shuffled shard order, read as batches
        from catalog.sampler import TileStream

        for batch in (BATCH, 4 * BATCH):
            stream = TileStream(
                dsmod.TileDataset(cube, physical=False), shuffle=True, batch_size=batch
            )
            m = _loader_case(
                tag,
                f"TileStream(batch_size={batch}) stored values, DataLoader(batch_size=None)",
                stream,
                repeats,
                epochs,
                batch=batch,
                direct=True,
            )
            results.append(dataclasses.replace(m, baseline=base))
    ceiling.measure()
    return [ceiling.result(), *results]


def _to_physical_case(repeats: int) -> Measurement:
    """``to_physical`` of one stored demo batch on this process's CPU (the accelerator's job)."""
    from torch.utils.data import default_collate

    import catalog.dataset as dsmod

    cube = str(DEMO)
    n = len(dsmod.TileDataset(cube))
    stored = dsmod.TileDataset(cube, physical=False)
    batch = default_collate(stored.__getitems__(list(range(min(BATCH, n)))))
    med = time_median(lambda: stored.to_physical(batch), repeats=max(repeats, 5), warmup=1)
    return Measurement(
        NAME,
        "to_physical demo, one batch on the CPU (1 thread of the main process)",
        None,
        med,
        max(repeats, 5),
        float(min(BATCH, n)),
        "samples",
    )


class EmptyBatches:
    """Batches that cost nothing to fill: what the DataLoader itself costs per batch.

    Each batch is what a :class:`catalog.dataset.TileDataset` worker sends: a small tensor in
    a slot of the worker's :class:`catalog._ring.BatchRing`, pickled as a lease and rebuilt
    by the main process as a view of the slot (no shared-memory segment per batch).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._ring: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"n": self.n, "_ring": None}

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indexes: list[int]) -> Any:
        import torch

        batch, leased = _ring_batch(self, [("index", (), torch.int64)], len(indexes), 4)
        batch["index"].numpy()[:] = indexes
        return batch if leased is None else leased


def _dataloader_overhead(n_batches: int, repeats: int, direct: bool) -> Measurement:
    """Batches/s of ``DataLoader(num_workers=2)`` over :class:`EmptyBatches`, and CPU per batch."""
    loader = _loader(EmptyBatches(n_batches * BATCH), "fork", direct=direct)
    cpu: list[float] = []

    def epoch() -> None:
        it = iter(loader)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        before = _cpu_s(pids) + _self_cpu_s()
        for _ in it:
            pass
        cpu.append(_cpu_s(pids) + _self_cpu_s() - before)

    med = time_median(epoch, repeats=repeats, warmup=1)
    return Measurement(
        NAME,
        f"DataLoader(num_workers=2) alone: leased batches of {BATCH} that cost nothing to fill"
        + (", loader_context" if direct else ""),
        None,
        med,
        repeats,
        float(n_batches),
        "batches",
        extra={"cpu_us_per_batch": round(sorted(cpu)[len(cpu) // 2] / n_batches * 1e6)},
    )


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes ``pids`` (from /proc; 0 where unavailable)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _self_cpu_s() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def run(quick: bool = False) -> list[Measurement]:
    """Readers, loaders, ceiling and TorchGeo on the demo and the generated cube."""
    repeats = 1 if quick else 3
    n_gen = 384 if quick else 2000
    results: list[Measurement] = [
        _dataloader_overhead(500 if quick else 2000, max(repeats, 3), direct)
        for direct in (False, True)
    ]
    if (DEMO / "zarr.json").exists():
        path = "sentinel-2-l2a/data"
        positions = np.arange(open_arrays(str(DEMO)).shape(path)[0], dtype=np.int64)
        epochs = max(1, (800 if quick else 4000) // positions.size)
        results += _cube_cases("demo", str(DEMO), [path], positions, max(repeats, 3), epochs)
        results += _tile_dataset_cases(
            "demo", str(DEMO), _TILE_CASES_DEMO, max(repeats, 2), epochs, draws=True
        )
        results.append(_to_physical_case(repeats))
    else:
        print(f"  loader: no demo cube at {DEMO} (make demo); demo cases skipped")
    t0 = time.perf_counter()
    gen = _generated_cube(n_gen)
    print(f"  loader: generated cube {gen} ready in {time.perf_counter() - t0:.1f} s")
    positions = np.arange(n_gen, dtype=np.int64)
    gen_epochs = max(1, (1500 if quick else 8000) // n_gen)
    results += _cube_cases("gen", str(gen), [GEN_PATH], positions, repeats, gen_epochs)
    results += _tile_dataset_cases(
        "gen", str(gen), _TILE_CASES_GEN, repeats, gen_epochs, draws=False
    )
    ours = next(m for m in results if m.case == f"loader gen: SlabDataset[_chunks], batch {BATCH}")
    batched = next(
        m
        for m in results
        if m.case
        == f"loader gen: SlabBatchDataset[_chunks] (decode into the batch, 4 reused worker "
        f"buffers), batch {BATCH}"
    )
    n_tg = n_gen if not quick else 256
    tifs = _geotiffs(gen, n_gen)
    tg = _torchgeo(tifs, n_tg, repeats)
    if isinstance(tg, str):
        print(f"  loader: TorchGeo skipped: {tg}")
    else:
        per_sample_ours = ours.median_s / ours.unit_count
        per_sample_batched = batched.median_s / batched.unit_count
        per_sample_tg = tg["median_s"] / tg["samples"]
        results.append(
            Measurement(
                NAME,
                "torchgeo gen: RasterDataset+RandomGeoSampler (GeoTIFF deflate)",
                None,
                tg["median_s"],
                repeats,
                float(tg["samples"]),
                "samples",
                extra={
                    "MB_s": round(tg["bytes"] / tg["median_s"] / 1e6, 1),
                    "eoforge_speedup": round(per_sample_tg / per_sample_ours, 1),
                    "eoforge_batched_speedup": round(per_sample_tg / per_sample_batched, 1),
                },
            )
        )
    return results


if __name__ == "__main__":
    for m in run(quick="--quick" in sys.argv):
        print(json.dumps(m.to_dict()))
