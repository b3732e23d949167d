"""Pydron: run sequential Python in parallel with two decorators.

``@functional`` promises that a function has no side effects; ``@schedule`` translates a
function into a dataflow graph whose functional calls run concurrently on a pool of workers,
while everything else keeps its sequential meaning.
"""
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED
from concurrent.futures import as_completed, wait

from pydron.api import PydronWarning, schedule
from pydron.backend import configure, shutdown
from pydron.errors import (CallTimeoutError, ConfigError, PydronError, RemoteError,
                           SerializationError, TranslationError, WorkerLostError)
from pydron.backend.sharing import Shared, shared
from pydron.explicit import Executor, map, map_reduce, reduce  # noqa: F401 (see __all__)
from pydron.explicit.mp_pool import Pool
from pydron.purity import functional
from pydron._version import __version__
from pydron.backend import recorder as _recorder


def _observe(config):  # noqa: ANN001,ANN202 - the observe layer loads when a pool is built
    from pydron.observe import configure_from
    configure_from(config)


_recorder.on_config = _observe


def cache(path, max_size=None):  # noqa: ANN001,ANN201
    """Store every functional call's result under ``path`` from now on (the ``"cache"``
    key of ``pydron.conf`` in code): the configuration in force, with this cache; see
    docs/observability.md."""
    from dataclasses import replace
    from pydron.backend import current_config
    configure(replace(current_config(), cache={"path": str(path), "max_size": max_size}))


def explain(func):  # noqa: ANN001,ANN201 - kept light: networkx loads only when asked
    """A readable report of how ``func`` runs in parallel (see :mod:`pydron.report`)."""
    from pydron.report import explain as _explain
    return _explain(func)


def graph(func):  # noqa: ANN001,ANN201
    """``(networkx.DiGraph, dot_text)``: ``func``'s dataflow graph (see :mod:`pydron.report`)."""
    from pydron.report import graph as _graph
    return _graph(func)


__all__ = [
    "schedule", "functional", "explain", "graph", "configure", "shutdown", "cache",
    # map and reduce are left out on purpose: `from pydron import *` must not replace the
    # builtins of the same names. They are pydron.map and pydron.reduce.
    "Executor", "map_reduce", "wait", "as_completed", "shared", "Shared", "Pool",
    "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED",
    "PydronError", "TranslationError", "ConfigError", "WorkerLostError", "SerializationError",
    "RemoteError", "CallTimeoutError",
    "PydronWarning",
    "__version__",
]
