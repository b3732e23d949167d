"""Programs that launchers send to remote hosts as source text (``python -c SOURCE``).

They are real modules so that linters and tests see them; each uses the standard library
only (the remote host may not have pydron yet) and does its work when run as
``__main__``, nothing when imported. :func:`source_of` is the text that is sent.
"""
from __future__ import annotations

import types

__all__ = ["source_of"]


def source_of(program: types.ModuleType) -> str:
    """The source text of one of these programs, as sent to a remote interpreter."""
    with open(program.__file__, encoding="utf-8") as f:  # type: ignore[arg-type]
        return f.read()
