"""A multiprocessing context for ``DataLoader`` whose queues send directly, with no feeder thread.

``multiprocessing.Queue.put`` appends the object to a buffer and wakes a background "feeder"
thread that pickles it and writes it to the pipe. A DataLoader puts twice per batch through such
queues (the main process sends the batch's indices to a worker, the worker sends the batch
back), so every batch costs two thread wake-ups and GIL hand-overs besides the pipe writes. When
batches pickle small, as :class:`catalog.TileDataset`'s do (a lease of a reused worker buffer,
:mod:`catalog._ring`), that machinery is a measurable share of a batch's CPU on a small machine
(``make bench``, loader).

:func:`loader_context` returns the usual context of a start method (fork, spawn, forkserver)
whose ``Queue()`` is a :class:`DirectQueue`: ``put`` pickles and writes to the pipe in the
calling thread, under the writers' lock; ``get`` is ``multiprocessing.Queue.get``'s protocol
(readers' lock, poll with timeout, unpickle after releasing the lock). Everything else
(processes, events, locks) is the base context's.

The one difference a caller can see: a ``put`` of a message larger than the pipe's buffer
(64 KiB on Linux) waits until a reader takes it, where a feeder thread would have waited
instead. A DataLoader reads results continuously, so this matters only at shutdown when a
worker holds a large, unread batch: the DataLoader then terminates that worker after its
status-check interval (5 s). Batches of a ``TileDataset`` with batch buffers are a few KiB.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import queue
import time
from multiprocessing import connection
from multiprocessing.context import BaseContext, assert_spawning
from multiprocessing.reduction import ForkingPickler
from typing import Any

__all__ = ["DirectQueue", "loader_context"]

logger = logging.getLogger(__name__)


class DirectQueue:
    """A process-shared FIFO with ``multiprocessing.Queue``'s interface and no feeder thread.

    Args:
        ctx: The context whose locks guard the pipe's two ends.
    """

    def __init__(self, ctx: BaseContext) -> None:
        self._reader, self._writer = connection.Pipe(duplex=False)
        self._rlock = ctx.Lock()
        self._wlock = ctx.Lock()
        self._closed = False

    def __getstate__(self) -> tuple[Any, ...]:
        assert_spawning(self)  # like multiprocessing.Queue: passed to a process at its start
        return (self._reader, self._writer, self._rlock, self._wlock)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self._reader, self._writer, self._rlock, self._wlock = state
        self._closed = False

    def __repr__(self) -> str:
        return f"<DirectQueue pid={os.getpid()} closed={self._closed}>"

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Pickle ``obj`` and write it to the pipe now.

        ``block`` and ``timeout`` are accepted for compatibility: the queue is unbounded, as a
        DataLoader's queues are. As with ``multiprocessing.Queue``, a message for a pipe that
        is gone (EPIPE, or this process's descriptor already finalized) is dropped, not raised.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        data = ForkingPickler.dumps(obj)
        try:
            with self._wlock:
                self._writer.send_bytes(data)
        except OSError as err:
            # A pipe nobody can read any more drops the message, as multiprocessing.Queue's
            # feeder thread does. This happens in a DataLoader iterator's __del__ when the
            # garbage collector finalized this queue's Connection first (its __del__ closes
            # the descriptor): the shutdown sentinels then meet EBADF.
            if err.errno not in (errno.EPIPE, errno.EBADF):
                raise
            logger.debug("%r: message dropped, the pipe is closed (%s)", self, err)

    def put_nowait(self, obj: Any) -> None:
        """``put(obj)``."""
        self.put(obj, block=False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next object.

        Raises:
            queue.Empty: Nothing came within ``timeout`` seconds (at once if not ``block``).
            ValueError: The queue was closed in this process.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if block and timeout is None:
            with self._rlock:
                data = self._reader.recv_bytes()
        else:
            deadline = time.monotonic() + (timeout or 0.0)
            if not self._rlock.acquire(block, timeout):
                raise queue.Empty
            try:
                remaining = max(0.0, deadline - time.monotonic()) if block else 0.0
                if not self._reader.poll(remaining):
                    raise queue.Empty
                data = self._reader.recv_bytes()
            finally:
                self._rlock.release()
        return ForkingPickler.loads(data)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def empty(self) -> bool:
        """Whether nothing is waiting in the pipe (a snapshot, as ``multiprocessing.Queue``'s)."""
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        return not self._reader.poll()

    def close(self) -> None:
        """This process will neither put nor get any more: let go of its ends of the pipe.

        Each ``Connection`` closes its descriptor when it is collected, once. Closing them here
        could close a descriptor twice: a DataLoader iterator's ``__del__`` calls ``close``
        after the garbage collector may already have finalized them (see :meth:`put`).
        """
        if not self._closed:
            self._closed = True
            del self._reader, self._writer

    def cancel_join_thread(self) -> None:
        """Nothing to do: there is no feeder thread to wait for."""

    def join_thread(self) -> None:
        """Nothing to do: there is no feeder thread to wait for."""


_CONTEXTS: dict[str, BaseContext] = {}


def loader_context(start_method: str | None = None) -> BaseContext:
    """The ``multiprocessing`` context of ``start_method`` with feeder-less queues.

    Pass it to a DataLoader: ``DataLoader(dataset, num_workers=2,
    multiprocessing_context=loader_context())``. Workers start as with that start method
    (``None``: the platform default); only the queues differ (module docstring).

    Args:
        start_method: ``"fork"``, ``"spawn"``, ``"forkserver"`` or ``None``.

    Raises:
        ValueError: The start method is unknown or unavailable on this platform.
    """
    base = multiprocessing.get_context(start_method)
    name = base.get_start_method()
    found = _CONTEXTS.get(name)
    if found is None:
        cls = type(base)

        def make_queue(self: BaseContext, maxsize: int = 0) -> DirectQueue:
            return DirectQueue(self)

        direct = type(f"Direct{cls.__name__}", (cls,), {"Queue": make_queue})
        found = _CONTEXTS[name] = direct()
    return found
