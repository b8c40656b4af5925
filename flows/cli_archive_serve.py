"""``eoforge archive serve|index``: being written."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``serve`` and ``index`` commands to the ``archive`` group."""
