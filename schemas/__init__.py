"""eoforge contracts: recipe models, sensor profiles, cube layout, tile records, errors (no I/O)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eoforge")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
