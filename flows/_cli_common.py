"""Shared pieces of the command line: one console, one way to report errors."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from schemas.errors import DEBUG_ENV, EoforgeError

__all__ = ["console", "err_console", "reports_errors"]

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn an :class:`EoforgeError` into one clear message and a non-zero exit.

    No traceback, unless ``eoforge --debug`` (``EOFORGE_DEBUG=1``) asks for one.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except EoforgeError as exc:
            if os.environ.get(DEBUG_ENV):
                err_console.print_exception()
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            sys.exit(130)

    return wrapper
