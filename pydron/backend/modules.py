"""The user's own modules, served by the master to workers that cannot import them.

A function travels by reference when the caller can import it (see
:mod:`pydron.backend.shipping`): the worker imports its module itself. A worker on another
host (an ssh or cloud pool), or one whose ``sys.path`` lacks a folder of the caller's,
may not have that module. Rather than failing, the worker then asks the master for it:

* worker side, :class:`MasterFinder` sits *last* on ``sys.meta_path``, and it is only
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
* master side, :func:`lookup` answers from the master's own import system: a module
  already imported there, or one ``importlib.util.find_spec`` finds (a submodule only if
  its parent package is already imported, so that answering never runs the user's
  code). Only plain source files are served: extension modules, bytecode-only modules,
  namespace packages, built-in and frozen modules, the standard library and ``__main__``
  are "not found".

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

__all__ = ["REQUEST_TIMEOUT", "MARKER", "ELSEWHERE", "MasterFinder", "MasterSilent",
           "lookup", "provided_locally"]

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

MARKER = "<pydron: served by the master>"
"""Prefix of the ``__path__`` entry of a package served by the master."""


# --------------------------------------------------------------------------- master side


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


def lookup(name: str) -> dict[str, Any]:
    """What the master answers to a worker asking for module ``name``: a dict with
    ``found``, ``is_package``, ``filename`` and ``source`` (see wire.encode_module_reply)."""
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


# --------------------------------------------------------------------------- worker side


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
