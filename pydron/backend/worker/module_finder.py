"""The user's own modules, served by the master to workers that cannot import them.

A function travels by reference when the caller can import it (see
:mod:`pydron.backend.protocol.shipping`): the worker imports its module itself. A worker on another
host (an ssh or cloud pool), or one whose ``sys.path`` lacks a folder of the caller's,
may not have that module. Rather than failing, the worker then asks the master for it:
:class:`MasterFinder` sits *last* on ``sys.meta_path``, and it is only
ever consulted for a name the worker's own interpreter cannot be expected to provide
(see :func:`provided_locally`): never for the standard library of any platform (a
``try: import msvcrt`` in :mod:`subprocess` must not cost a round trip, let alone hang),
nor for the submodules of a package the worker has itself (no mixing of two versions
of one package), nor for a name that a finder placed after it on ``sys.meta_path``
can find. For a module no other finder found, it sends a ``MODULE_REQUEST`` frame
with the name and waits at most :data:`REQUEST_TIMEOUT` seconds for the
``MODULE_REPLY``. The source is compiled with the master's file name, so tracebacks
name the user's file and show its lines. Every answer, "not found" included, is
cached for the life of the worker: one round trip per name, ever (even across
``importlib.invalidate_caches()``). A master that does not answer in time makes the
import fail with a :class:`ModuleNotFoundError` that names the module and says so
(and so does every later import of that name) rather than hang the worker. A package
served this way gets a ``__path__`` marker, through which its submodules are asked
for too. Only the main thread asks -- the thread that unpickles and runs calls;
imports in other threads never block on the master.

Requests are only read after the handshake, so only a worker that knows the pool's
secret can ask, and it only ever gets what the caller itself could import.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from pydron.backend.protocol.modules import provided_locally

__all__ = ["REQUEST_TIMEOUT", "MARKER", "MasterFinder", "MasterSilent"]


def _request_timeout() -> float:
    try:
        value = float(os.environ.get("PYDRON_MODULE_REQUEST_TIMEOUT", "30"))
    except ValueError:
        return 30.0
    return value if 0 < value < 3600 else 30.0


REQUEST_TIMEOUT = _request_timeout()
"""Seconds a worker waits for the master's answer to one ``MODULE_REQUEST`` (30, or
``$PYDRON_MODULE_REQUEST_TIMEOUT`` in the worker's environment). The master answers from
its reactor thread by reading one file, which is quick, but on a loaded machine that
thread can be held up for seconds (5 s once proved too short in a CI run, failing a
healthy run); past the limit the import fails (:class:`MasterSilent`) instead of
stalling the call for good."""

MARKER = "<pydron: served by the master>"
"""Prefix of the ``__path__`` entry of a package served by the master."""


class _ServedLoader(importlib.abc.InspectLoader):
    """Executes the source the master sent, compiled under the master's file name."""

    def __init__(self, name: str, source: str, filename: str, package: bool) -> None:
        self.name = name
        self.source = source
        self.filename = filename
        self.package = package

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def get_source(self, fullname: str) -> str:
        return self.source

    def is_package(self, fullname: str) -> bool:
        return self.package

    def get_code(self, fullname: str) -> types.CodeType:
        return compile(self.source, self.filename, "exec", dont_inherit=True)

    def exec_module(self, module: types.ModuleType) -> None:
        code = self.get_code(module.__name__)
        # Tracebacks show the user's lines even where the file does not exist (mtime
        # None: linecache.checkcache leaves the entry alone).
        lines = self.source.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        linecache.cache[self.filename] = (len(self.source), None, lines, self.filename)
        exec(code, module.__dict__)  # noqa: S102 -- the import of the user's module


class MasterSilent(ModuleNotFoundError):
    """The master did not answer a worker's request for a module in time.

    A :class:`ModuleNotFoundError` so that ``try: import x / except ImportError`` (or
    ``except ModuleNotFoundError``) around an optional import goes on as it would where
    the module does not exist."""


class MasterFinder(importlib.abc.MetaPathFinder):
    """The last finder on a worker's ``sys.meta_path``: asks the master.

    ``ask(name)`` sends the request and returns the reply dict, or None when none came
    within :data:`REQUEST_TIMEOUT`. ``requests`` counts the names actually asked.
    """

    def __init__(self, ask: Callable[[str], dict[str, Any] | None]) -> None:
        self.ask = ask
        self.answers: dict[str, dict[str, Any]] = {}
        self.requests = 0

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        if provided_locally(fullname):
            return None  # the worker's own interpreter has it, or no one has
        if "." in fullname and not any(isinstance(p, str) and p.startswith(MARKER)
                                       for p in (path or ())):
            return None  # a submodule of a package the worker has itself
        reply = self.answers.get(fullname)
        if reply is None:
            # A finder that came onto sys.meta_path after this one (a library that
            # appends its own) still goes first: the master is the last resort.
            spec = self._later_finders(fullname, path, target)
            if spec is not None:
                return spec
            self.requests += 1
            reply = self.ask(fullname)
            if reply is None:
                reply = {"found": False, "silent": True}
            self.answers[fullname] = reply
        if reply.get("silent"):
            raise MasterSilent(
                f"No module named {fullname!r} on this worker, and the master did not "
                f"answer the worker's request for it within {REQUEST_TIMEOUT:g} s",
                name=fullname)
        if not reply.get("found"):
            return None
        package = bool(reply.get("is_package"))
        filename = str(reply.get("filename") or f"<{fullname} from the master>")
        loader = _ServedLoader(fullname, str(reply.get("source", "")), filename, package)
        spec = importlib.util.spec_from_loader(fullname, loader, origin=filename,
                                               is_package=package)
        if spec is None:
            return None
        spec.has_location = True  # __file__ is the master's file name
        if package:
            spec.submodule_search_locations = [f"{MARKER} {fullname}"]
        return spec

    def _later_finders(self, fullname: str, path: Any,
                       target: Any) -> importlib.machinery.ModuleSpec | None:
        """The spec that a finder after this one on ``sys.meta_path`` finds, if any."""
        finders = list(sys.meta_path)
        if self not in finders:
            return None
        for finder in finders[finders.index(self) + 1:]:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def invalidate_caches(self) -> None:
        """Keep every answer: ``importlib.invalidate_caches()`` is about files that
        appeared on this machine, and what the master said about a name stays true for
        the life of the worker (one round trip per name, ever)."""
