"""Finding and parsing a function's source, with line numbers that match the user's file.

Every error here names the function, because the user sees it at the first call, far from
the decorator that caused it.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from typing import Any, Callable

from pydron.errors import TranslationError


@dataclass(frozen=True)
class FunctionSource:
    """The parsed definition of a function, positioned as in its file."""

    node: ast.FunctionDef
    filename: str
    text: str          # the dedented source of the definition
    first_line: int    # line of the first source line in the file


def describe(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, for error messages."""
    module = getattr(func, "__module__", None) or "?"
    return f"{module}.{getattr(func, '__qualname__', getattr(func, '__name__', repr(func)))}"


def load(func: Callable[..., Any]) -> FunctionSource:
    """Read and parse the source of ``func``.

    Raises TranslationError when there is no source (REPL, exec, C code) or it is not a plain
    ``def`` (a lambda).
    """
    name = describe(func)
    try:
        lines, first_line = inspect.getsourcelines(func)
    except (OSError, TypeError) as exc:
        raise TranslationError(
            f"cannot translate {name}: its source code is not available ({exc}). "
            f"Pydron reads the source of @schedule functions, so they must be defined in a "
            f"file, not in the interactive interpreter or with exec().") from None
    text = textwrap.dedent("".join(lines))
    try:
        module = ast.parse(text)
    except SyntaxError as exc:
        raise TranslationError(
            f"cannot translate {name}: its source could not be parsed ({exc.msg}, "
            f"line {first_line + (exc.lineno or 1) - 1})") from None
    node = module.body[0] if module.body else None
    if isinstance(node, ast.AsyncFunctionDef):
        raise TranslationError(f"cannot translate {name}: async functions are not supported")
    if not isinstance(node, ast.FunctionDef):
        raise TranslationError(
            f"cannot translate {name}: @schedule needs a function defined with 'def' "
            f"(found {type(node).__name__ if node else 'nothing'} at line {first_line})")
    ast.increment_lineno(module, first_line - 1)
    filename = inspect.getsourcefile(func) or inspect.getfile(func)
    return FunctionSource(node=node, filename=filename, text=text, first_line=first_line)
