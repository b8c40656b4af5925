"""The one error hierarchy of eoforge, grouped by what a caller does about an error.

* :class:`TransientError`: retry (with backoff); Prefect tasks retry only this kind.
* :class:`InvalidInputError`: fix the input (recipe, file, argument) and run again.
* :class:`NotFoundError`: the thing asked for does not exist (empty search, missing asset).
* :class:`ConflictError`: the request clashes with existing state (a locked or incompatible cube).

Every message says what went wrong, where, and how to fix it. Build messages with
:func:`format_message` so they read alike everywhere.
"""

from __future__ import annotations

__all__ = [
    "DEBUG_ENV",
    "ConflictError",
    "EoforgeError",
    "InvalidInputError",
    "NotFoundError",
    "TransientError",
    "format_message",
]

#: Environment variable that keeps tracebacks of expected errors (``eoforge --debug`` sets it).
DEBUG_ENV = "EOFORGE_DEBUG"


def format_message(what: str, where: str | None = None, fix: str | None = None) -> str:
    """Compose a one-line error message from its three parts.

    Args:
        what: What went wrong, e.g. ``"tile size 1000 m is not divisible by 30 m"``.
        where: Where it happened: a file, a field path, a URL, an item id.
        fix: What the user can do about it.

    Returns:
        ``"<where>: <what>. Fix: <fix>"`` with the absent parts left out.
    """
    text = what.rstrip(".")
    if where:
        text = f"{where}: {text}"
    return f"{text}. Fix: {fix.rstrip('.')}." if fix else f"{text}."


class EoforgeError(Exception):
    """Root of every error eoforge raises on purpose.

    Args:
        what: What went wrong.
        where: Where it happened (file, field path, URL, item id), if known.
        fix: How to fix it, if the caller can.
    """

    #: Process exit code the CLI uses for this category.
    exit_code: int = 1

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(format_message(what, where, fix))


class TransientError(EoforgeError):
    """A fault that may go away on its own (HTTP 429/5xx, timeouts, dropped connections): retry."""

    exit_code = 75  # EX_TEMPFAIL


class InvalidInputError(EoforgeError, ValueError):
    """The input is wrong (recipe field, vector file without CRS, bad argument): fix it."""

    exit_code = 2


class NotFoundError(EoforgeError, LookupError):
    """What was asked for does not exist (no STAC items, missing asset, unknown tile id)."""

    exit_code = 3


class ConflictError(EoforgeError):
    """The request clashes with existing state (cube locked by another build, changed recipe)."""

    exit_code = 4
