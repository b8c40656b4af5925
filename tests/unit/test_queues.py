"""catalog.loader_context: DataLoader queues that write in the caller's thread (catalog._queues)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from catalog import loader_context
from catalog._queues import DirectQueue

#: Larger than a Linux pipe's buffer (64 KiB): written in several pieces.
BIG = 300_000


def _producer(q: DirectQueue, tag: int, n: int) -> None:
    for i in range(n):
        size = BIG if i % 3 == 0 else 10
        q.put((tag, i, bytes([tag]) * size))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_messages_from_concurrent_writers_arrive_whole_and_in_order(method: str) -> None:
    ctx = loader_context(method)
    q = ctx.Queue()
    assert isinstance(q, DirectQueue)
    procs = [ctx.Process(target=_producer, args=(q, tag, 12)) for tag in (1, 2, 3)]
    for p in procs:
        p.start()
    got: dict[int, list[int]] = {1: [], 2: [], 3: []}
    for _ in range(36):
        tag, i, payload = q.get(timeout=30)
        assert payload == bytes([tag]) * (BIG if i % 3 == 0 else 10)  # never interleaved
        got[tag].append(i)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert got == {tag: list(range(12)) for tag in got}  # each writer's order kept
    assert q.empty()


def test_get_times_out_with_empty_and_closed_queue_refuses() -> None:
    q = loader_context("fork").Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.25 <= time.monotonic() - t0 < 5
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put_nowait({"a": 1})
    assert q.get(timeout=5) == {"a": 1}
    q.close()
    q.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        q.put(1)
    with pytest.raises(ValueError, match="closed"):
        q.get(timeout=1)


def test_put_after_the_pipe_was_finalized_drops_the_message() -> None:
    """The garbage collector may finalize the queue's Connection before a DataLoader iterator
    whose ``__del__`` puts shutdown sentinels: that put meets EBADF and must not raise."""
    q = loader_context("fork").Queue()
    os.close(q._writer.fileno())  # what the Connection's __del__ does: the handle stays set
    try:
        q.put(None)
        q.put_nowait(None)
    finally:
        q._writer._handle = None  # closed already: its own __del__ must not close it again


def test_reader_waiting_in_a_thread_gets_what_another_process_puts() -> None:
    ctx = loader_context("fork")
    q = ctx.Queue()
    out: list[Any] = []
    reader = threading.Thread(target=lambda: out.append(q.get(timeout=30)))
    reader.start()
    p = ctx.Process(target=_producer, args=(q, 7, 1))
    p.start()
    reader.join(timeout=30)
    p.join(timeout=30)
    assert out and out[0][0] == 7 and len(out[0][2]) == BIG


def test_context_is_the_start_methods_and_cached() -> None:
    for method in multiprocessing.get_all_start_methods():
        ctx = loader_context(method)
        assert isinstance(ctx, type(multiprocessing.get_context(method)))
        assert ctx.get_start_method() == method
        assert loader_context(method) is ctx
    assert loader_context().get_start_method() == multiprocessing.get_start_method()
    with pytest.raises(ValueError):
        loader_context("teleport")


class _Failing(Dataset[torch.Tensor]):
    """Item 13 raises; the others are small tensors."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 13:
            raise KeyError(f"tile {i} is broken")
        return torch.full((4,), float(i))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_error_reaches_the_caller_and_workers_stop(method: str) -> None:
    loader = DataLoader(
        _Failing(), batch_size=4, num_workers=2, multiprocessing_context=loader_context(method)
    )
    it = iter(loader)
    pids = [w.pid for w in it._workers]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    with pytest.raises(KeyError, match="tile 13 is broken") as err:
        for _ in it:
            pass
    del err, it  # the traceback holds the iterator; dropping it shuts the workers down
    gc.collect()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_early_break_shuts_down_promptly_and_values_are_right() -> None:
    ds = _Failing()
    loader = DataLoader(
        torch.utils.data.Subset(ds, [i for i in range(len(ds)) if i != 13]),
        batch_size=3,
        num_workers=2,
        multiprocessing_context=loader_context("fork"),
    )
    expected = [float(i) for i in range(len(ds)) if i != 13]
    got = [float(v) for batch in loader for v in batch[:, 0]]
    assert got == expected
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    del it  # workers still have batches in flight
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    # Well before the DataLoader's 5 s terminate fallback: nobody was stuck in a put.
    assert time.monotonic() - t0 < 4.5
    assert np.isfinite(got).all()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
