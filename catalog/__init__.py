"""Consumer side of eoforge: the tile catalog and the PyTorch dataset. Light imports only.

``catalog.open_catalog(CUBE).search(...)`` queries the tile catalog (:mod:`catalog.query`);
importing this package loads pyarrow, DuckDB, shapely and numpy, never Prefect, Dask, xarray
or torch. ``catalog.TileDataset``, ``ShardAwareSampler`` and ``TileStream`` (PyTorch) are
imported on first use. ``catalog.loader_context()`` is a multiprocessing context for their
DataLoaders (:mod:`catalog._queues`).
"""

from typing import Any

from catalog._queues import loader_context
from catalog.query import SearchResult, TileCatalog, open_catalog
from catalog.versions import CatalogVersion

__all__ = [
    "CatalogVersion",
    "SearchResult",
    "ShardAwareSampler",
    "TileCatalog",
    "TileDataset",
    "TileStream",
    "loader_context",
    "open_catalog",
]

_TORCH_NAMES = {
    "TileDataset": "catalog.dataset",
    "ShardAwareSampler": "catalog.sampler",
    "TileStream": "catalog.sampler",
}


def __getattr__(name: str) -> Any:
    """Import the PyTorch classes on first use, so ``import catalog`` stays light."""
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
