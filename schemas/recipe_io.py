"""Reading recipe YAML safely, and turning validation errors into messages that name the field.

Part of the recipe schema; import the public names from :mod:`schemas.recipe`.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from schemas.errors import InvalidInputError
from schemas.recipe_common import RECIPE_ERROR

__all__ = ["RecipeError", "RecipeProblem", "load_yaml", "problems_from_validation"]

#: The fix offered when a problem has no specific one.
GENERIC_FIX = (
    "correct the field named above; `eoforge recipe schema` lists every field, its type and "
    "allowed values"
)
#: Largest recipe file read, in bytes: recipes are small, anything bigger is a mistake.
MAX_RECIPE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class RecipeProblem:
    """One thing wrong with a recipe.

    Attributes:
        path: Dotted field path such as ``sensors[1].resolution`` ('' = the recipe as a whole).
        reason: What is wrong.
        fix: How to fix it, when there is a specific way.
    """

    path: str
    reason: str
    fix: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class RecipeError(InvalidInputError):
    """A recipe that cannot be read or is not valid; the message names the file and each field.

    Args:
        source: The recipe file (or ``<string>``).
        problems: What is wrong, one entry per offending field.
    """

    def __init__(self, source: str, problems: Sequence[RecipeProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            what = str(self.problems[0])
            fix = self.problems[0].fix or GENERIC_FIX
        else:
            lines = [
                f"  - {p}" + (f" (fix: {p.fix.rstrip('.')})" if p.fix else "")
                for p in self.problems
            ]
            what = f"{len(self.problems)} problems:\n" + "\n".join(lines)
            fix = GENERIC_FIX.replace("the field", "each field")
        super().__init__(what, where=source, fix=fix)
        if len(self.problems) > 1:
            # the fix on a line of its own, so it does not read as part of the last problem
            self.args = (f"{source}: {what}\nFix: {fix}.",)


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: no duplicate keys and no aliases."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in recipes; write the value out",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key '{key}' appears twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_checked_timestamp(self, node: yaml.ScalarNode) -> date | str:
        # A date-shaped but impossible value (2024-02-30) stays a string, so validation
        # reports it at its field instead of failing the whole file.
        try:
            return self.construct_yaml_timestamp(node)
        except ValueError:
            return str(node.value)


_RecipeLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", _RecipeLoader.construct_checked_timestamp
)


def load_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse recipe YAML into a mapping with the safe loader (recipes are data, never code).

    Args:
        text: The YAML text.
        source: Name of the file (or ``<string>``) for messages.

    Returns:
        The top-level mapping.

    Raises:
        RecipeError: Syntax error (with line and column), duplicate key, alias, or a top level
            that is not a mapping.
    """
    if len(text) > MAX_RECIPE_BYTES:
        _raise(source, f"the recipe is {len(text)} characters long; recipes are small", None)
    problem: RecipeProblem | None = None
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = " ".join(p for p in (exc.context, exc.problem) if p)
        problem = RecipeProblem("", f"{where}{reason}", "fix the YAML at that position")
    except yaml.YAMLError as exc:
        problem = RecipeProblem("", f"not valid YAML: {exc}", "fix the YAML syntax")
    if problem is not None:
        raise RecipeError(source, [problem])
    if data is None:
        _raise(source, "the recipe is empty", "write a recipe (see recipes/example.yaml)")
    if not isinstance(data, dict):
        _raise(
            source,
            f"the top level is a {type(data).__name__}, not a mapping of fields",
            "start the recipe with 'name: ...' and the other fields as 'key: value' lines",
        )
    return data


def _raise(source: str, reason: str, fix: str | None) -> NoReturn:
    raise RecipeError(source, [RecipeProblem("", reason, fix)])


def problems_from_validation(
    exc: ValidationError, data: Any, vocabulary: Collection[str]
) -> list[RecipeProblem]:
    """Turn a pydantic error into problems with user-facing field paths.

    Args:
        exc: The error from validating ``data``.
        data: The input that was validated (used to tell union tags apart from field names).
        vocabulary: Every field name of the recipe models, for "did you mean" hints.

    Returns:
        One problem per error, in pydantic's order.
    """
    problems: list[RecipeProblem] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        ctx = err.get("ctx") or {}
        path = _format_loc(err["loc"], data)
        if kind == "default_factory_not_called":
            continue  # a default that depends on a field which is already reported
        if kind == RECIPE_ERROR:
            problems.append(RecipeProblem(_join(path, ctx["path"]), ctx["reason"], ctx["fix"]))
            for more_path, reason, fix in ctx.get("more", ()):
                problems.append(RecipeProblem(_join(path, more_path), reason, fix))
        elif kind == "missing" and isinstance(err["loc"][-1], int):
            problems.append(RecipeProblem(path, "too few items: this position is missing"))
        elif kind == "missing":
            problems.append(RecipeProblem(path, "required field is missing"))
        elif kind == "extra_forbidden":
            name = str(err["loc"][-1])
            close = difflib.get_close_matches(name, vocabulary, n=1, cutoff=0.75)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(
                RecipeProblem(path, f"unknown field '{name}'{hint}", "remove it or fix its name")
            )
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            field = str(ctx.get("discriminator", "kind")).strip("'\"")
            problems.append(RecipeProblem(_join(path, field), err["msg"]))
        else:
            problems.append(RecipeProblem(path, err["msg"] + _shown(err.get("input"))))
    return problems


def _shown(value: Any) -> str:
    """`` (got VALUE)`` for a short scalar input, else ''."""
    if isinstance(value, bool | int | float | date) or value is None:
        return f" (got {value})"
    if isinstance(value, str):
        return f" (got '{value[:60]}')" if len(value) <= 60 else f" (got '{value[:57]}...')"
    return ""


def _join(path: str, sub: str) -> str:
    if not sub:
        return path
    if not path or sub.startswith("["):
        return path + sub
    return f"{path}.{sub}"


def _format_loc(loc: tuple[int | str, ...], data: Any) -> str:
    """``('sensors', 1, 'resolution')`` -> ``sensors[1].resolution``, without union tags."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        is_tag = isinstance(node, dict) and part not in node
        if is_tag and part in (node.get("kind"), node.get("type")):
            continue  # a tag pydantic adds for discriminated unions, not a field
        out = _join(out, part)
        node = node.get(part) if isinstance(node, dict) else None
    return out
