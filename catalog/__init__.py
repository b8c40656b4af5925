"""Consumer side of eoforge: the tile catalog and the PyTorch dataset. Light imports only.

``catalog.open_catalog(CUBE).search(...)`` queries the tile catalog (:mod:`catalog.query`);
importing this package loads pyarrow, DuckDB, shapely and numpy, never Prefect, Dask, xarray
or torch.
"""

from catalog.query import SearchResult, TileCatalog, open_catalog
from catalog.versions import CatalogVersion

__all__ = ["CatalogVersion", "SearchResult", "TileCatalog", "open_catalog"]
