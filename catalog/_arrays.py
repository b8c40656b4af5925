"""Read one tile's slab of a cube array: the small interface :mod:`catalog.dataset` reads through.

``open_arrays(cube_uri, storage_options)`` returns an :class:`ArrayReader`; its
``read(path, position)`` returns ``array[position]`` of the cube array at ``path`` (e.g.
``"sentinel-2-l2a/data"`` -> ``(time, band, y, x)``), decoded but not scaled (storage dtype, fill
values as stored). This implementation goes through zarr-python (``zarr.open_group`` on a local
path, or on a URL with an fsspec store, e.g. ``s3://`` with s3fs); a faster chunk reader can
replace it behind the same interface.

Process safety: a reader opens nothing until its first read and remembers the process id; in
another process (a forked DataLoader worker) it drops every handle and opens the cube again.
It pickles as ``(cube_uri, storage_options)`` only. The handle cache holds at most one entry per
array path of the cube (bounded by the layout), never per tile.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import zarr

__all__ = ["ArrayReader", "ZarrArrayReader", "is_remote", "open_arrays"]


def is_remote(cube_uri: str) -> bool:
    """Whether ``cube_uri`` is a URL (``s3://``, ``gs://``, ``https://``...) rather than a path."""
    return "://" in cube_uri and not cube_uri.startswith("file://")


class ArrayReader(Protocol):
    """What the dataset needs from the storage layer."""

    def root_attrs(self) -> dict[str, Any]:
        """The cube's root attributes (the :class:`schemas.cube.CubeLayout` parameters)."""
        ...

    def shape(self, path: str) -> tuple[int, ...]:
        """Shape of the array at ``path``."""
        ...

    def read(
        self, path: str, position: int, out: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[Any]:
        """``array[position]`` of the array at ``path``, in its storage dtype.

        Args:
            path: Array path inside the cube, e.g. ``"sentinel-2-l2a/mask"``.
            position: Index along the first (tile) axis.
            out: Optional destination of the right shape and dtype, filled and returned.
        """
        ...


class ZarrArrayReader:
    """:class:`ArrayReader` over zarr-python; opened lazily, reopened after a fork."""

    def __init__(self, cube_uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.cube_uri = cube_uri
        self.storage_options = dict(storage_options or {})
        self._pid = -1
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array[Any]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (ZarrArrayReader, (self.cube_uri, self.storage_options))

    def __repr__(self) -> str:
        return f"ZarrArrayReader({self.cube_uri!r})"

    def _root(self) -> zarr.Group:
        pid = os.getpid()
        if self._group is None or self._pid != pid:
            with self._lock:
                if self._group is None or self._pid != pid:
                    self._arrays = {}
                    kwargs: dict[str, Any] = {"mode": "r", "zarr_format": 3}
                    if is_remote(self.cube_uri):
                        kwargs["storage_options"] = self.storage_options
                    self._group = zarr.open_group(self.cube_uri, use_consolidated=False, **kwargs)
                    self._pid = pid
        return self._group

    def _array(self, path: str) -> zarr.Array[Any]:
        root = self._root()
        arr = self._arrays.get(path)
        if arr is None:
            node = root[path]
            if not isinstance(node, zarr.Array):
                raise KeyError(f"{path} in {self.cube_uri} is a group, not an array")
            arr = node
            self._arrays[path] = arr
        return arr

    def root_attrs(self) -> dict[str, Any]:
        """The cube's root attributes."""
        return dict(self._root().attrs)

    def shape(self, path: str) -> tuple[int, ...]:
        """Shape of the array at ``path``."""
        return tuple(int(n) for n in self._array(path).shape)

    def read(
        self, path: str, position: int, out: npt.NDArray[Any] | None = None
    ) -> npt.NDArray[Any]:
        """``array[position]`` (storage dtype); see :meth:`ArrayReader.read`."""
        value = np.asarray(self._array(path)[int(position)])
        if out is None:
            return value
        out[...] = value
        return out


def open_arrays(cube_uri: str, storage_options: Mapping[str, Any] | None = None) -> ZarrArrayReader:
    """A lazy reader of the cube at ``cube_uri`` (a local path or an fsspec URL).

    Args:
        cube_uri: Cube directory or URL (``s3://bucket/cube.zarr``).
        storage_options: fsspec options for a URL (``endpoint_url``, ``key``, ``secret``...);
            ignored for a local path.

    Returns:
        The reader; nothing is opened until the first call.
    """
    return ZarrArrayReader(str(cube_uri), storage_options)
