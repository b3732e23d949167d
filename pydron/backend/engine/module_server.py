"""The user's own modules, served by the master to workers that cannot import them.

A function travels by reference when the caller can import it (see
:mod:`pydron.backend.protocol.shipping`): the worker imports its module itself. A worker on another
host (an ssh or cloud pool), or one whose ``sys.path`` lacks a folder of the caller's,
may not have that module. Rather than failing, the worker then asks the master for it:
:func:`lookup` answers from the master's own import system: a module
already imported there, or one ``importlib.util.find_spec`` finds (a submodule only if
its parent package is already imported, so that answering never runs the user's
code). Only plain source files are served: extension modules, bytecode-only modules,
namespace packages, built-in and frozen modules, the standard library and ``__main__``
are "not found".

Requests are only read after the handshake, so only a worker that knows the pool's
secret can ask, and it only ever gets what the caller itself could import.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from typing import Any

from pydron.backend.protocol.modules import provided_locally

__all__ = ["lookup"]


def lookup(name: str) -> dict[str, Any]:
    """What the master answers to a worker asking for module ``name``: a dict with
    ``found``, ``is_package``, ``filename`` and ``source`` (see
    :func:`~pydron.backend.protocol.replies.encode_module_reply`)."""
    missing = {"found": False}
    parts = name.split(".")
    if name == "__main__" or not all(p.isidentifier() for p in parts) \
            or provided_locally(name):
        return missing
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None) if module is not None else None
    if spec is None:
        parent = name.rpartition(".")[0]
        if parent and parent not in sys.modules:
            return missing  # finding it would import (run) the parent package here
        try:
            spec = importlib.util.find_spec(name)
        except Exception:  # noqa: BLE001 -- whatever goes wrong, we have nothing to give
            return missing
    if spec is None or not spec.origin or \
            not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        return missing
    try:
        source = spec.loader.get_source(name)
    except Exception:  # noqa: BLE001 -- unreadable, undecodable: not found
        return missing
    if source is None:
        return missing
    return {"found": True, "is_package": spec.submodule_search_locations is not None,
            "filename": spec.origin, "source": source}
