"""Which modules a worker never asks the master for, and the master never serves.

Both ends of module serving (:mod:`pydron.backend.worker.module_finder` asks,
:mod:`pydron.backend.engine.module_server` answers) must agree on it: the standard library
of every platform, the built-in modules and a few optional names of other interpreters.
"""
from __future__ import annotations

import sys

__all__ = ["ELSEWHERE", "provided_locally"]

ELSEWHERE = frozenset({
    # Python 2 names that libraries still probe for with try/except ImportError (only
    # names no user module of today would have: "Queue" or "thread" might be one).
    "__builtin__", "cPickle", "cStringIO", "_winreg", "copy_reg", "urllib2", "httplib",
    "cookielib", "dummy_thread", "_dummy_thread",
    # Modules of other Python implementations and of vendor platforms.
    "__pypy__", "_pypy_openssl", "java", "jarray", "vms_lib",
})
"""Top-level names, beyond ``sys.stdlib_module_names``, that code imports optionally to
learn which interpreter or platform it runs on: no master has them for a worker."""


def provided_locally(name: str) -> bool:
    """True if module ``name`` belongs to what the worker's own interpreter provides or
    lacks by design: the standard library of every platform (``sys.stdlib_module_names``
    lists Windows' ``msvcrt`` on Linux too), the built-in modules, and the optional
    names of :data:`ELSEWHERE`; submodules included. Such a name is never asked of the
    master (it would only waste a round trip) and never served by it (the worker's own
    version must be used)."""
    top = name.partition(".")[0]
    return (top in sys.stdlib_module_names or top in sys.builtin_module_names
            or top in ELSEWHERE)
