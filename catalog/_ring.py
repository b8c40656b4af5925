"""Batch buffers that a DataLoader worker reuses, mapped once by the main process.

A DataLoader worker normally puts every batch in a fresh shared-memory segment: the worker
faults in every page while decoding into it, passes a file descriptor to the main process over
a new socket connection (with its authentication handshake), the main process maps it, and
both unmap it when the batch is dropped. For the cube's tiles that is as much work as the
decode itself (``make bench``, loader). :class:`BatchRing` removes all of it in steady state:

* the worker decodes into one of ``slots`` fixed slots of a ``memfd`` mapping it keeps for its
  lifetime (pages faulted once);
* the batch pickles as a small lease (worker pid, descriptor number, inode, slot, the tensors'
  offsets, dtypes and shapes); the main process maps the worker's ``memfd`` once, through
  ``/proc/<pid>/fd/<n>`` (checked against the inode), and builds the batch tensors as views of
  the slot;
* a slot is handed out again only after the main process has released it: the batch tensors
  share one storage, which holds the slot's numpy view; when the last tensor (or view, or
  ``.numpy()`` array) of the batch is gone, a ``weakref.finalize`` clears the slot's flag in the
  shared header. Copies (``pin_memory``, ``.to(device)``, ``share_memory_()``) release it too.

When every slot is still held (the training loop keeps batches), the worker falls back to a
fresh shared-memory batch, as without the ring, so memory stays bounded by ``slots`` slots plus
what the caller keeps. Linux only (``memfd_create`` and ``/proc``); elsewhere
:func:`ring_supported` is false and workers use fresh shared memory.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["BatchRing", "LeasedBatch", "ring_supported"]

_FREE = 0
_BUSY = 1
_ALIGN = mmap.PAGESIZE

#: Main-process mappings of workers' rings: (pid, fd, inode) -> mmap; pruned of dead workers.
_MAPS: dict[tuple[int, int, int], mmap.mmap] = {}
_MAPS_LOCK = threading.Lock()


@functools.cache
def ring_supported() -> bool:
    """Whether this platform can share rings (Linux ``memfd_create`` and ``/proc/<pid>/fd``)."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "memfd_create")
        and Path(f"/proc/{os.getpid()}/fd").is_dir()
    )


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class BatchRing:
    """A worker's ``slots`` reusable batch buffers of ``slot_bytes`` each (module docstring).

    Args:
        slots: Number of slots (>= 1): batches the worker may have in flight or held by the
            main process before it falls back to fresh shared memory.
        slot_bytes: Bytes of one slot (rounded up to the page size).
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        if slots < 1:
            raise ValueError(f"a ring needs at least one slot, got {slots}")
        self.slots = slots
        self.slot_bytes = _round_up(max(slot_bytes, 1), _ALIGN)
        self.header = _round_up(slots, _ALIGN)
        self.size = self.header + slots * self.slot_bytes
        self.pid = os.getpid()
        self.fd = os.memfd_create("eoforge-batch-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.inode = os.fstat(self.fd).st_ino
            self.map = mmap.mmap(self.fd, self.size)
        except BaseException:
            os.close(self.fd)
            raise
        self._flags = np.frombuffer(self.map, dtype=np.uint8, count=slots)
        #: Weak references to the slots' arrays while this process still uses them.
        self._local: list[weakref.ref[np.ndarray[Any, Any]] | None] = [None] * slots

    def acquire(self, nbytes: int) -> tuple[int, torch.Tensor] | None:
        """A free slot and a uint8 tensor over its first ``nbytes``; ``None`` if none is free.

        A slot is free when the main process has released it (or never received it) and no
        tensor of this process refers to it any more.
        """
        if nbytes > self.slot_bytes or os.getpid() != self.pid:
            return None
        for slot in range(self.slots):
            if self._flags[slot] != _FREE:
                continue
            ref = self._local[slot]
            if ref is not None and ref() is not None:
                continue
            start = self.header + slot * self.slot_bytes
            view = np.frombuffer(self.map, dtype=np.uint8, count=nbytes, offset=start)
            self._local[slot] = weakref.ref(view)
            return slot, torch.from_numpy(view)
        return None

    def lease(self, slot: int) -> tuple[int, int, int, int, int, int]:
        """Mark ``slot`` as held by the main process; what the main process needs to map it.

        Returns:
            (pid, fd, inode, mapping size, slot offset, slot index = its flag's offset).
        """
        self._flags[slot] = _BUSY
        start = self.header + slot * self.slot_bytes
        return self.pid, self.fd, self.inode, self.size, start, slot

    def held(self) -> int:
        """Slots currently marked as held by the main process."""
        return int(np.count_nonzero(self._flags != _FREE))


class LeasedBatch(dict[str, Any]):
    """A batch dict whose tensors live in a slot of a worker's :class:`BatchRing`.

    It pickles (worker -> main process) as a lease: the main process rebuilds it as a plain
    ``dict`` whose tensors are views of its own mapping of the slot, without copying.

    Args:
        values: The batch: key -> tensor (views of ``buffer``) or another picklable value.
        ring: The ring of the slot.
        slot: The slot.
        buffer: The uint8 tensor over the slot that every tensor of ``values`` views.
    """

    __slots__ = ("buffer", "ring", "slot")

    def __init__(self, values: dict[str, Any], ring: BatchRing, slot: int, buffer: torch.Tensor):
        super().__init__(values)
        self.ring = ring
        self.slot = slot
        self.buffer = buffer

    def __copy__(self) -> LeasedBatch:
        # A shallow copy views the same slot (``DataLoader(batch_size=None)`` copies every item
        # in the worker with ``copy.copy``): it must still pickle as the lease.
        return LeasedBatch(dict(self), self.ring, self.slot, self.buffer)

    def __reduce__(self) -> tuple[Any, ...]:
        base = self.buffer.data_ptr()
        end = base + int(self.buffer.numel())
        specs: list[tuple[str, int, str, tuple[int, ...]]] = []
        others: dict[str, Any] = {}
        order: list[str] = []
        for key, value in self.items():
            order.append(key)
            if (
                isinstance(value, torch.Tensor)
                and value.device.type == "cpu"
                and base <= value.data_ptr() < end
            ):  # a view of the slot (torch's, or numpy's of its memory)
                if not value.is_contiguous():
                    value = value.contiguous()  # not a view of the slot any more: sent inline
                    others[key] = value
                    continue
                offset = value.data_ptr() - base
                dtype = str(value.dtype).removeprefix("torch.")
                # A tuple, not a torch.Size: the lease pickles in a third less time.
                specs.append((key, offset, dtype, tuple(value.shape)))
            else:
                others[key] = value
        nbytes = int(self.buffer.numel())
        return (_rebuild_leased, (self.ring.lease(self.slot), nbytes, specs, others, order))


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _attach(pid: int, fd: int, inode: int, size: int) -> mmap.mmap:
    """The main process's mapping of a worker's ring (mapped on first use, then cached)."""
    key = (pid, fd, inode)
    with _MAPS_LOCK:
        mapped = _MAPS.get(key)
        if mapped is not None:
            return mapped
        try:
            handle = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
        except OSError as err:
            raise RuntimeError(
                f"cannot map the batch buffer of DataLoader worker {pid} ({err}); "
                "fix: create the dataset with batch_buffers=0 (a new shared-memory segment "
                "per batch)"
            ) from err
        try:
            if os.fstat(handle).st_ino != inode:
                raise RuntimeError(
                    f"the batch buffer of DataLoader worker {pid} is gone (descriptor {fd} "
                    "now names another file)"
                )
            mapped = mmap.mmap(handle, size)
        finally:
            os.close(handle)
        for old in [k for k in _MAPS if not _alive(k[0])]:
            del _MAPS[old]  # the mapping lives on while batches of that worker are held
        _MAPS[key] = mapped
        return mapped


def _release(mapped: mmap.mmap, flag: int) -> None:
    mapped[flag] = _FREE


#: torch dtype name -> numpy dtype (None: no numpy equivalent).
_NP_DTYPES: dict[str, np.dtype[Any] | None] = {}


def _np_dtype(name: str) -> np.dtype[Any] | None:
    """The numpy dtype of torch dtype ``name`` (``None`` where numpy has none, e.g. bfloat16)."""
    if name not in _NP_DTYPES:
        try:
            _NP_DTYPES[name] = np.dtype(name)
        except TypeError:
            _NP_DTYPES[name] = None
    return _NP_DTYPES[name]


def _rebuild_leased(
    lease: tuple[int, int, int, int, int, int],
    nbytes: int,
    specs: Sequence[tuple[str, int, str, tuple[int, ...]]],
    others: dict[str, Any],
    order: Sequence[str],
) -> dict[str, Any]:
    """Main process: the batch of a :class:`LeasedBatch`, as views of the worker's slot."""
    pid, fd, inode, size, start, slot = lease
    mapped = _attach(pid, fd, inode, size)
    view = np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=start)
    # Every tensor below holds a numpy view of ``view`` (torch tensors where numpy has no
    # dtype hold ``whole``, whose storage holds ``view``): the slot is released when the last
    # of them dies. numpy views cost a fifth of torch's slice + view + view per key.
    weakref.finalize(view, _release, mapped, slot)
    whole: torch.Tensor | None = None
    tensors: dict[str, Any] = {}
    for key, offset, dtype_name, shape in specs:
        np_dtype = _np_dtype(dtype_name)
        if np_dtype is not None:
            count = math.prod(shape) * np_dtype.itemsize
            tensors[key] = torch.from_numpy(
                view[offset : offset + count].view(np_dtype).reshape(shape)
            )
            continue
        if whole is None:
            whole = torch.from_numpy(view)
        dtype = getattr(torch, dtype_name)
        count = math.prod(shape) * dtype.itemsize
        tensors[key] = whole[offset : offset + count].view(dtype).view(shape)
    del view
    return {key: tensors[key] if key in tensors else others[key] for key in order}
