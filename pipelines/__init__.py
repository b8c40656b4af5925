"""Build steps: plain typed functions on xarray/dask/numpy. No Prefect import here."""
