"""TileDataset, ShardAwareSampler and TileStream on a small synthetic cube (_dataset_synth)."""

from __future__ import annotations

import copy
import itertools
import json
import math
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _dataset_synth import CLASSES, LS, OUTLIER, S2, build_cube, expected_sample, layout
from torch.utils.data import DataLoader

from catalog import loader_context, open_catalog
from catalog.dataset import STATS_PATH, TileDataset, cube_stats
from catalog.sampler import ShardAwareSampler, TileStream, distributed_context
from schemas.cube import MaskBit
from schemas.errors import InvalidInputError

N_TILES = 10


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cube(tmp_path_factory.mktemp("ds") / "cube.zarr", n_tiles=N_TILES)


def _physical(raw: np.ndarray, sensor: str) -> np.ndarray:
    spec = layout().sensor(sensor)
    assert spec.scale_factor is not None and spec.add_offset is not None
    values = raw.astype(np.float32) * np.float32(spec.scale_factor) + np.float32(spec.add_offset)
    values[raw == spec.nodata] = np.nan
    return values


def _check_sample(cube: Path, sample: dict[str, Any]) -> None:
    position = int(sample["position"])
    want = expected_sample(cube, position)
    for sensor in (S2, LS):
        np.testing.assert_allclose(
            sample[sensor].numpy(), _physical(want[f"{sensor}/data"], sensor), rtol=1e-6
        )
        assert sample[sensor].dtype == torch.float32
        np.testing.assert_array_equal(sample[f"{sensor}_mask"].numpy(), want[f"{sensor}/mask"])
        np.testing.assert_array_equal(sample[f"{sensor}_time"].numpy(), want[f"{sensor}/datetime"])
    np.testing.assert_array_equal(sample["label_corine"].numpy(), want["labels/corine"])
    assert sample["label_corine"].dtype == torch.int64
    multi = want["labels/corine_multilabel"]
    got = sample["multilabel_corine"].numpy()
    if (multi == 255).any():
        assert np.isnan(got).all()
    else:
        np.testing.assert_array_equal(got, multi.astype(np.float32))
    assert sample["id"] == f"{sample['tile_id']}_{sample['period']}"
    assert int(sample["epsg"]) == 32632


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[key], equal_nan=True, rtol=0, atol=0)
        else:
            assert value == b[key]


def test_every_sample_equals_the_cube_arrays(cube: Path) -> None:
    ds = TileDataset(cube)
    assert len(ds) == N_TILES
    assert ds.positions.tolist() == list(range(N_TILES))
    for i in range(len(ds)):
        sample = ds[i]
        assert int(sample["index"]) == i
        _check_sample(cube, sample)
    assert set(ds[0]) == {
        "index", "position", S2, f"{S2}_mask", f"{S2}_time", LS, f"{LS}_mask", f"{LS}_time",
        "label_corine", "multilabel_corine", "tile_id", "period", "id", "epsg", "transform",
    }  # fmt: skip
    assert ds[0][S2].shape == (2, 3, 24, 24) and ds[0][LS].shape == (1, 2, 8, 8)
    with pytest.raises(IndexError):
        ds[N_TILES]


def test_fill_value_zero_and_no_metadata(cube: Path) -> None:
    ds = TileDataset(cube, fill_value=0.0, metadata=False, labels=[])
    sample = ds[1]
    assert "tile_id" not in sample and "label_corine" not in sample
    raw = expected_sample(cube, 1)[f"{S2}/data"]
    got = sample[S2].numpy()
    assert (got[raw == -32768] == 0.0).all() and not np.isnan(got).any()


def test_query_dict_version_and_search_result(cube: Path) -> None:
    train = TileDataset(cube, {"split": "train"}, version=1)
    assert train.positions.tolist() == [i for i in range(N_TILES) if i % 3]
    assert train.catalog_version == 1
    result = open_catalog(cube).search(split="val")
    val = TileDataset(cube, result, sensors=[LS], labels=["corine"])
    assert val.positions.tolist() == result.positions()
    assert set(val[0]) >= {LS, f"{LS}_mask", "label_corine"} and S2 not in val[0]
    with pytest.raises(InvalidInputError, match="split"):
        TileDataset(cube, {"split": "nope"})


def _context(start_method: str | None) -> Any:
    """A start method name, or ``direct-<method>``: :func:`catalog.loader_context` of it."""
    if start_method is not None and start_method.startswith("direct-"):
        return loader_context(start_method.removeprefix("direct-"))
    return start_method


@pytest.mark.parametrize(
    ("num_workers", "start_method", "batch_size"),
    [
        (0, None, None),
        (2, "fork", 4),
        (2, "spawn", None),
        (2, "forkserver", 3),
        (2, "direct-fork", 4),
        (2, "direct-spawn", 3),
    ],
)
def test_dataloader_workers_and_start_methods(
    cube: Path, num_workers: int, start_method: str | None, batch_size: int | None
) -> None:
    ds = TileDataset(cube)
    _check_sample(cube, ds[0])  # the parent opens the cube first: workers must reopen it
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=num_workers,
        multiprocessing_context=_context(start_method),
        sampler=ShardAwareSampler(ds, seed=3),
    )
    seen: list[int] = []
    for batch in loader:
        if batch_size is None:
            samples = [batch]
        else:
            n = len(batch["position"])
            assert batch[S2].shape == (n, 2, 3, 24, 24)
            assert isinstance(batch["tile_id"], list)
            samples = [{k: v[j] for k, v in batch.items()} for j in range(n)]
        for sample in samples:
            _same(sample, ds[int(sample["index"])])
            seen.append(int(sample["position"]))
    assert sorted(seen) == list(range(N_TILES))
    _check_sample(cube, ds[4])


def test_dataset_pickles_small_and_reopens(cube: Path) -> None:
    ds = TileDataset(cube, normalize="cube")
    first = ds[2]  # opens the reader: handles must not be pickled
    clone = pickle.loads(pickle.dumps(ds))
    _same(clone[2], first)
    # Thousands of rows: ~4 bytes a row (int32 positions), a fixed few KB otherwise.
    ds._positions = np.arange(5000, dtype=np.int32)
    size = len(pickle.dumps(ds))
    assert size < 5000 * 4 + 4096, size


# --- options ---------------------------------------------------------------------------------


def test_bands_and_time_subset(cube: Path) -> None:
    full = TileDataset(cube)[5]
    sub = TileDataset(cube, bands={S2: ["B04", "B02"], LS: [1]}, time={S2: 1})[5]
    torch.testing.assert_close(sub[S2], full[S2][[1]][:, [2, 0]], equal_nan=True)
    torch.testing.assert_close(sub[f"{S2}_mask"], full[f"{S2}_mask"][[1]])
    torch.testing.assert_close(sub[f"{S2}_time"], full[f"{S2}_time"][[1]])
    torch.testing.assert_close(sub[LS], full[LS][:, [1]], equal_nan=True)
    with pytest.raises(InvalidInputError, match="no band"):
        TileDataset(cube, bands={S2: ["B99"]})
    with pytest.raises(InvalidInputError, match="time planes"):
        TileDataset(cube, time=2)
    with pytest.raises(InvalidInputError, match="no sensor"):
        TileDataset(cube, sensors=["sentinel-9"])


def test_resize_to_common_size(cube: Path) -> None:
    full = TileDataset(cube, fill_value=0.0)[3]
    ds = TileDataset(cube, resize=12, fill_value=0.0)
    small = ds[3]
    assert small[S2].shape == (2, 3, 12, 12) and small[LS].shape == (1, 2, 12, 12)
    assert small[f"{S2}_mask"].shape == (2, 12, 12) and small[f"{S2}_mask"].dtype == torch.uint8
    assert small["label_corine"].shape == (12, 12) and small["label_corine"].dtype == torch.int64
    # nearest-exact for masks and labels: output pixel i takes input pixel floor((i + 0.5) * 2).
    np.testing.assert_array_equal(small["label_corine"].numpy(), full["label_corine"][1::2, 1::2])
    assert set(small[f"{LS}_mask"].unique().tolist()) <= set(full[f"{LS}_mask"].unique().tolist())
    src = np.floor((np.arange(12) + 0.5) * 8 / 12).astype(int)  # 8 px Landsat -> 12 px
    np.testing.assert_array_equal(
        small[f"{LS}_mask"][0].numpy(), full[f"{LS}_mask"][0].numpy()[np.ix_(src, src)]
    )
    # Same size as native: untouched.
    same = TileDataset(cube, resize=(24, 24), fill_value=0.0)[3]
    torch.testing.assert_close(same[S2], full[S2])
    up = TileDataset(cube, resize=24, resize_mode="nearest", fill_value=0.0)[3]
    torch.testing.assert_close(up[LS][0, 0, ::3, ::3], full[LS][0, 0])


# --- normalisation ---------------------------------------------------------------------------


def _valid_stats(cube: Path, sensor: str) -> tuple[np.ndarray, np.ndarray]:
    values, keep = [], []
    for position in range(N_TILES):
        want = expected_sample(cube, position)
        raw = want[f"{sensor}/data"]
        phys = _physical(raw, sensor).astype(np.float64)
        valid = ((want[f"{sensor}/mask"] & int(MaskBit.VALID)) != 0)[:, None] & np.isfinite(phys)
        values.append(np.moveaxis(phys, 1, 0).reshape(phys.shape[1], -1))
        keep.append(np.moveaxis(valid, 1, 0).reshape(phys.shape[1], -1))
    v, k = np.concatenate(values, axis=1), np.concatenate(keep, axis=1)
    mean = np.array([v[b][k[b]].mean() for b in range(v.shape[0])])
    std = np.array([v[b][k[b]].std() for b in range(v.shape[0])])
    return mean, std


def test_stats_over_valid_pixels_only_and_cached(tmp_path: Path) -> None:
    cube = build_cube(tmp_path / "cube.zarr", n_tiles=6, seed=7)
    stats = cube_stats(cube)
    path = cube / STATS_PATH
    assert path.is_file()
    for sensor in (S2, LS):
        mean, std = _valid_stats_n(cube, sensor, 6)
        np.testing.assert_allclose(stats["sensors"][sensor]["mean"], mean, rtol=1e-5)
        np.testing.assert_allclose(stats["sensors"][sensor]["std"], std, rtol=1e-4)
    # The masked outliers (CLOUD pixels hold 30000 -> 2.9) would pull the mean far up.
    outlier = OUTLIER * 1e-4 - 0.1
    assert max(stats["sensors"][S2]["mean"]) < 0.25 < outlier
    # Cached: the file is read, not recomputed (an edit shows through).
    doc = json.loads(path.read_text())
    doc["sensors"][LS]["mean"] = [1.0, 2.0]
    path.write_text(json.dumps(doc))
    assert cube_stats(cube)["sensors"][LS]["mean"] == [1.0, 2.0]
    assert cube_stats(cube, refresh=True)["sensors"][LS]["mean"] != [1.0, 2.0]
    assert not list(path.parent.glob(".stats-*"))  # no temporary file left


def _valid_stats_n(cube: Path, sensor: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    global N_TILES
    saved, N_TILES = N_TILES, n
    try:
        return _valid_stats(cube, sensor)
    finally:
        N_TILES = saved


def test_stats_sample_is_bounded(tmp_path: Path) -> None:
    cube = build_cube(tmp_path / "cube.zarr", n_tiles=9, seed=1)
    stats = cube_stats(cube, max_tiles=3)
    assert stats["positions"] == [0, 4, 8]
    assert stats["sensors"][S2]["count"][0] > 0


def test_normalize_cube_and_dict(cube: Path) -> None:
    raw = TileDataset(cube)[0]
    ds = TileDataset(cube, normalize="cube")
    mean, std = _valid_stats(cube, S2)
    got = ds[0][S2].numpy()
    want = (raw[S2].numpy() - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-4, atol=1e-4)
    assert np.isnan(got).sum() == np.isnan(raw[S2].numpy()).sum()  # fill stays fill
    given = {LS: {"mean": [0.1, 0.2], "std": [2.0, 4.0]}}
    sub = TileDataset(cube, normalize=given, bands={LS: ["nir08"]})[0]
    torch.testing.assert_close(sub[LS], (raw[LS][:, [1]] - 0.2) / 4.0, equal_nan=True)
    torch.testing.assert_close(sub[S2], raw[S2], equal_nan=True)  # not given: not normalised
    with pytest.raises(InvalidInputError, match="normalize"):
        TileDataset(cube, normalize="imagenet")
    with pytest.raises(InvalidInputError, match="normalisation"):
        TileDataset(cube, normalize={LS: {"mean": [0.0], "std": [1.0, 2.0]}})


def test_transform_is_applied(cube: Path) -> None:
    ds = TileDataset(cube, transform=_drop_landsat)
    assert LS not in ds[0] and S2 in ds[0]


def _drop_landsat(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if not k.startswith(LS)}


# --- samplers ----------------------------------------------------------------------------------


class _Shards:
    """A stand-in dataset: ``n`` rows whose positions run over shards of ``k``, some skipped."""

    def __init__(self, n: int, k: int = 8) -> None:
        rng = np.random.default_rng(0)
        self.positions = np.sort(rng.choice(np.arange(n * 2), size=n, replace=False))
        self.k = k

    def __len__(self) -> int:
        return int(self.positions.size)

    def shard_ids(self) -> np.ndarray:
        return self.positions // self.k

    def __getitem__(self, index: int) -> int:
        return int(self.positions[index])


def _runs(order: list[int], shards: np.ndarray) -> int:
    ids = [int(shards[i]) for i in order]
    return 1 + sum(a != b for a, b in itertools.pairwise(ids))


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("n", [203, 200])
def test_ddp_sampler_covers_every_index_once(world: int, n: int) -> None:
    ds = _Shards(n)
    shards = ds.shard_ids()
    n_shards = len(set(shards.tolist()))
    orders: list[list[int]] = []
    for epoch in (0, 1):
        # No padding: exactly once across ranks.
        parts = []
        for rank in range(world):
            s = ShardAwareSampler(ds, rank=rank, world_size=world, equal_lengths=False, seed=5)
            s.set_epoch(epoch)
            parts.append(list(s))
            assert len(parts[-1]) == len(s)
        merged = [i for p in parts for i in p]
        assert sorted(merged) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        orders.append(merged)
        # Shard-grouped: the epoch order visits each shard in one run.
        assert _runs(merged, shards) == n_shards
        # Default (DistributedSampler-like padding): equal lengths, every index, pad duplicates.
        padded = [list(_sampler(ds, rank, world, epoch, drop_last=False)) for rank in range(world)]
        assert len({len(p) for p in padded}) == 1 and len(padded[0]) == math.ceil(n / world)
        counts = Counter(i for p in padded for i in p)
        assert set(counts) == set(range(n))
        assert sum(c - 1 for c in counts.values()) == (-n) % world
        # drop_last: equal lengths, no duplicates, n % world dropped.
        dropped = [list(_sampler(ds, rank, world, epoch, drop_last=True)) for rank in range(world)]
        flat = [i for p in dropped for i in p]
        assert len(flat) == len(set(flat)) == n - n % world
    assert orders[0] != orders[1]  # set_epoch reshuffles
    again = ShardAwareSampler(ds, rank=0, world_size=1, seed=5)
    again.set_epoch(1)
    assert list(again) == (orders[1] if world == 1 else list(again))  # deterministic


def _sampler(ds: _Shards, rank: int, world: int, epoch: int, drop_last: bool) -> ShardAwareSampler:
    s = ShardAwareSampler(ds, rank=rank, world_size=world, drop_last=drop_last, seed=5)
    s.set_epoch(epoch)
    return s


def test_sampler_no_shuffle_and_rank_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _Shards(50)
    assert list(ShardAwareSampler(ds, shuffle=False)) == list(range(50))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_context() == (1, 2)
    s = ShardAwareSampler(ds, shuffle=False)
    assert (s.rank, s.world_size) == (1, 2) and list(s) == list(range(25, 50))
    with pytest.raises(InvalidInputError):
        distributed_context(rank=2, world_size=2)


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2), (4, 1)])
def test_tile_stream_yields_every_sample_once(world: int, workers: int) -> None:
    ds = _Shards(97, k=4)
    for epoch, shuffle in ((0, False), (1, True)):
        seen: list[int] = []
        for rank in range(world):
            stream = TileStream(ds, rank=rank, world_size=world, shuffle=shuffle, seed=2)
            stream.set_epoch(epoch)
            loader = DataLoader(stream, batch_size=None, num_workers=workers)
            got = [int(v) for v in loader]
            seen.extend(got)
        assert sorted(seen) == sorted(ds.positions.tolist())
        # Per consumer: whole shards (each shard in one consumer only), ascending positions.
        n_consumers = world * max(1, workers)
        stream = TileStream(ds, world_size=1, shuffle=shuffle, seed=2)
        owner: dict[int, int] = {}
        for c in range(n_consumers):
            indices = stream.consumer_indices(c, n_consumers)
            shards = ds.shard_ids()[indices]
            assert _runs(list(range(len(indices))), shards) == len(set(shards.tolist()))
            for shard in set(shards.tolist()):
                assert owner.setdefault(shard, c) == c
                inside = ds.positions[np.asarray(indices)[shards == shard]]
                assert (np.diff(inside) > 0).all()


def test_tile_stream_over_the_dataset(cube: Path) -> None:
    ds = TileDataset(cube, sensors=[S2], labels=[])
    seen = []
    for rank in range(2):
        loader = DataLoader(TileStream(ds, rank=rank, world_size=2), batch_size=2, num_workers=2)
        for batch in loader:
            seen.extend(batch["position"].tolist())
    assert sorted(seen) == list(range(N_TILES))


@pytest.mark.parametrize("workers", [0, 2])
def test_tile_stream_batches(cube: Path, workers: int) -> None:
    """batch_size: each consumer's samples in runs, read as batches, equal to collated samples."""
    from torch.utils.data import default_collate

    ds = TileDataset(cube, physical=False)
    seen: list[int] = []
    for rank in range(2):
        stream = TileStream(ds, rank=rank, world_size=2, batch_size=3)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        runs = [
            stream.consumer_indices(c, 2 * max(1, workers))
            for c in range(rank * max(1, workers), (rank + 1) * max(1, workers))
        ]
        expected = [r[k : k + 3] for r in runs for k in range(0, len(r), 3)]
        got = list(loader)
        assert sorted(b["index"].tolist() for b in got) == sorted(expected)
        for batch in got:
            indices = batch["index"].tolist()
            _same(batch, default_collate([ds[i] for i in indices]))
            seen.extend(indices)
    assert sorted(seen) == list(range(N_TILES))
    with pytest.raises(InvalidInputError, match="batch_size"):
        TileStream(ds, batch_size=0)


def test_class_names_match_layout() -> None:
    assert layout().labels[0].class_names == CLASSES


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fill_value": 0.0, "metadata": False, "labels": []},
        {"time": {S2: [1]}, "bands": {S2: [2, 0]}},
        {"normalize": {S2: {"mean": [1.0, 2.0, 3.0], "std": [2.0, 0.5, 4.0]}}},
        # Stored values of a subset (uint16 Landsat left out: torch 2.13 cannot unpickle uint16
        # tensors with plain pickle, which the end of this test uses).
        {"physical": False, "sensors": [S2], "time": {S2: [1]}, "bands": {S2: [2, 0]}},
        {"resize": 12},
    ],
)
@pytest.mark.parametrize("block_bytes", [None, 1])
def test_getitems_batch_equals_getitem(
    cube: Path, options: dict[str, Any], block_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.utils.data import default_collate

    import catalog.dataset as dsmod
    from catalog.dataset import BatchedSample

    if block_bytes is not None:  # one row per block: every block boundary of the batch
        monkeypatch.setattr(dsmod, "_BLOCK_BYTES", block_bytes)
    ds = TileDataset(cube, **options)
    indices = [3, 0, -1, 5, 3]
    samples = ds.__getitems__(indices)
    assert len(samples) == len(indices)
    for i, sample in zip(indices, samples, strict=True):
        assert list(sample) == list(ds[i])
        _same(dict(sample), ds[i])
    batch = default_collate(samples)
    expected = default_collate([ds[i] for i in indices])
    assert list(batch) == list(expected)
    _same(batch, expected)
    if isinstance(samples[0], BatchedSample):
        # The batch tensors themselves, not a stacked copy; a subset collates by copying.
        assert batch[S2].data_ptr() == samples[0][S2].data_ptr()
        _same(default_collate(samples[1:3]), default_collate([ds[0], ds[-1]]))
        assert type(pickle.loads(pickle.dumps(samples[0]))) is dict
    assert ds.__getitems__([]) == []
    with pytest.raises(IndexError):
        ds.__getitems__([0, N_TILES])


def test_batch_samples_sequence(cube: Path) -> None:
    """__getitems__'s BatchSamples: a sequence of samples made on demand, each made once."""
    from torch.utils.data import default_collate

    from catalog.dataset import BatchSamples

    ds = TileDataset(cube, physical=False)
    indices = [4, 1, 7]
    samples = ds.__getitems__(indices)
    assert isinstance(samples, BatchSamples) and len(samples) == 3
    first = samples[0]
    assert samples[-3] is first and samples[1] is samples[1]
    _same(dict(samples[-1]), ds[7])
    with pytest.raises(IndexError):
        samples[3]
    listed = list(samples)  # iteration makes the rest, keeping those already made
    assert listed[0] is first and listed[2] is samples[2]
    for i, sample in zip(indices, listed, strict=True):
        _same(dict(sample), ds[i])
    assert [s["position"].item() for s in samples[1:]] == [1, 7]
    assert samples[::-1][0] is samples[2]
    physical = TileDataset(cube)  # (torch cannot pickle the stored uint16 Landsat values)
    back = pickle.loads(pickle.dumps(physical.__getitems__(indices)))  # a list of plain dicts
    assert type(back) is list and all(type(s) is dict for s in back)
    for i, sample in zip(indices, back, strict=True):
        _same(sample, physical[i])
    # The default collate of a fresh batch is the batch itself: no per-sample views made.
    fresh = ds.__getitems__(indices)
    batch = default_collate(fresh)
    assert sum(s is not None for s in fresh._samples) <= 1  # only collate's look at [0]
    assert batch[S2].data_ptr() == fresh.batch[S2].data_ptr()
    _same(batch, default_collate([ds[i] for i in indices]))


def test_leased_batch_of_alloc_batch_pickles_as_a_lease() -> None:
    """Every tensor of a worker batch (numpy-made views of the ring slot) goes as a lease."""
    from catalog._ring import BatchRing
    from catalog.dataset import BatchSamples, _alloc_batch, _collate_batched

    plan = [
        ("index", (), torch.int64),
        ("x", (10, 50, 50), torch.int16),
        ("m", (50, 50), torch.uint8),
        ("h", (3,), torch.bfloat16),
    ]
    ring = BatchRing(2, 1 << 20)
    batch, lease = _alloc_batch(plan, 4, ring)
    assert lease is not None and ring.held() == 0
    for value in batch.values():
        value.copy_(torch.arange(value.numel()).reshape(value.shape).to(value.dtype))
    expected = {k: v.clone() for k, v in batch.items()}
    leased = _collate_batched(BatchSamples(batch, lease))
    # DataLoader(batch_size=None) copy.copy()s every item in the worker: still a lease.
    assert type(copy.copy(leased)) is type(leased) and ring.held() == 0
    sent = pickle.dumps(copy.copy(leased))
    del leased
    assert len(sent) < 2000  # a lease, not the 200 kB of pixels
    assert ring.held() == 1
    got = pickle.loads(sent)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    del batch, got
    assert ring.held() == 0


# --- stored values + to_physical; worker batch buffers (catalog._ring) ---------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalize": "cube", "fill_value": 0.0},
        {"time": {S2: [1]}, "bands": {S2: [2, 0]}, "metadata": False},
    ],
)
def test_stored_values_then_to_physical_equal_the_physical_dataset(
    cube: Path, options: dict[str, Any]
) -> None:
    from torch.utils.data import default_collate

    physical = TileDataset(cube, **options)
    stored = TileDataset(cube, physical=False, **options)
    raw = stored[4]
    assert raw[S2].dtype == torch.int16 and raw["label_corine"].dtype == torch.uint8
    assert raw["multilabel_corine"].dtype == torch.uint8
    expected = expected_sample(cube, 4)
    planes = options.get("time", {}).get(S2, [0, 1])
    bands = options.get("bands", {}).get(S2, [0, 1, 2])
    want = expected[f"{S2}/data"][planes][:, bands]
    assert np.array_equal(raw[S2].numpy(), want)  # exactly the stored integers
    for i in range(N_TILES):
        _same(stored.to_physical(stored[i]), physical[i])
    indices = [5, 0, 3, 3]
    batch = default_collate(stored.__getitems__(indices))
    _same(stored.to_physical(batch), default_collate([physical[i] for i in indices]))
    with pytest.raises(InvalidInputError, match="physical=False"):
        physical.to_physical(physical[0])
    with pytest.raises(InvalidInputError, match="resize"):
        TileDataset(cube, physical=False, resize=8)


@pytest.mark.parametrize(
    ("start_method", "physical"), [("fork", False), ("spawn", True), ("direct-fork", False)]
)
def test_worker_batch_buffers_are_never_overwritten_while_held(
    cube: Path, start_method: str, physical: bool
) -> None:
    """Every batch of three epochs is kept (no copy) until the end, then compared.

    With 2 buffers per worker the workers run out of free buffers and must fall back to new
    shared memory rather than reuse a buffer the training loop still holds; batches dropped
    at once are reused (``catalog._ring``).
    """
    from catalog import _ring

    ds = TileDataset(cube, physical=physical, batch_buffers=2)
    loader = DataLoader(
        ds,
        batch_size=3,
        num_workers=2,
        multiprocessing_context=_context(start_method),
        shuffle=True,
    )
    held = [batch for _ in range(3) for batch in loader]
    assert _ring.ring_supported() and _ring._MAPS  # batches came through worker buffers
    reference = {i: ds[i] for i in range(len(ds))}
    for batch in held:
        for row, i in enumerate(batch["index"].tolist()):
            _same({k: v[row] for k, v in batch.items()}, reference[i])
    del held
    seen = 0
    for _ in range(3):  # batches dropped right away: buffers are released and reused
        for batch in loader:
            for row, i in enumerate(batch["index"].tolist()):
                _same({k: v[row] for k, v in batch.items()}, reference[i])
            seen += len(batch["index"])
    assert seen == 3 * len(ds)


def test_batch_ring_slot_is_released_when_the_last_view_dies() -> None:
    from catalog._ring import BatchRing, LeasedBatch

    ring = BatchRing(2, 1000)
    slot, buffer = ring.acquire(64)  # type: ignore[misc]
    values = buffer[:32].view(torch.int32).view(2, 4)
    values.copy_(torch.arange(8, dtype=torch.int32).view(2, 4))
    halves = buffer[32:40].view(torch.bfloat16)  # no numpy dtype: rebuilt as a torch view
    halves.copy_(torch.tensor([0.5, 1.5, -2.0, 3.0], dtype=torch.bfloat16))
    batch = {"x": values, "name": ["a", "b"], "h": halves}
    sent = pickle.dumps(LeasedBatch(batch, ring, slot, buffer))
    del values, halves, buffer, batch
    got = pickle.loads(sent)  # what the main process rebuilds: views of the worker's buffer
    assert list(got) == ["x", "name", "h"]
    assert got["name"] == ["a", "b"] and got["x"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert got["h"].dtype == torch.bfloat16 and got["h"].tolist() == [0.5, 1.5, -2.0, 3.0]
    assert ring.held() == 1
    other = ring.acquire(64)
    assert other is not None and other[0] != slot and ring.acquire(64) is None
    keep = got["x"][1].numpy()  # a view of a view still holds the slot
    keep_h = got["h"][1:]
    del got, other
    assert ring.held() == 1 and ring.acquire(64) is not None
    del keep
    assert ring.held() == 1  # the bfloat16 view still holds it
    del keep_h
    assert ring.held() == 0
    assert ring.acquire(10_000) is None  # larger than a slot: the caller falls back
