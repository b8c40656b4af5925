"""Pieces every recipe model shares: the base model, the error helper, path and URL helpers.

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

__all__ = ["RECIPE_ERROR", "RecipeModel", "fail", "is_url", "resolve_local"]

#: ``type`` of the validation errors eoforge raises itself (they carry a path and a fix).
RECIPE_ERROR = "eoforge_recipe"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RecipeModel(BaseModel):
    """Base of every recipe model: unknown keys are errors and validated recipes are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def fail(reason: str, path: str = "", fix: str | None = None) -> NoReturn:
    """Raise a validation error that names a field below the model being validated.

    Pydantic locates an error raised by a model validator at the model itself; ``path`` names
    the offending field relative to that model (``"end"``, ``"sensors[1].resolution"``), so the
    message points at the field the user has to change.

    Args:
        reason: What is wrong, in words a user understands.
        path: Field path relative to the model whose validator raises ('' = the model itself).
        fix: How to fix it, if there is a specific way.

    Raises:
        PydanticCustomError: Always; turned into a :class:`~schemas.recipe.RecipeError` by the
            recipe loader.
    """
    raise PydanticCustomError(
        RECIPE_ERROR, "{reason}", {"reason": reason, "path": path, "fix": fix}
    )


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL with a scheme (``https://``, ``s3://``, ...) and not a path."""
    return _URL.match(location) is not None


def resolve_local(location: str, base: Path) -> str:
    """Make a relative local path absolute against ``base``; URLs and absolute paths pass as is.

    Args:
        location: A local path or a URL, as written in a recipe.
        base: Directory relative paths are taken from.

    Returns:
        The absolute path as a string, or ``location`` unchanged.
    """
    if is_url(location):
        return location
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = base.absolute() / path
    return os.path.normpath(path)
