"""What ``make demo`` runs."""

from __future__ import annotations

from flows._cli_common import err_console


def run_demo() -> None:
    """Explain honestly what the demo can do today."""
    err_console.print("eoforge demo: not yet (the offline archive and build flow are in progress).")
