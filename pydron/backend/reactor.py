"""Pydron's Twisted reactor, running in one background daemon thread.

Twisted's reactor is a process-wide singleton that can run only once, so every network
pool (multicore today, SSH later) shares it. It is started on first use, never stopped
(it idles at no cost), runs without installing signal handlers (Ctrl-C stays with the
caller's main thread, where the runtime turns it into cancellations), and is a daemon so
it never keeps the interpreter alive.

Everything that touches Twisted objects must run in that thread: other threads hand work
over with :func:`call_soon` (``reactor.callFromThread``), or :func:`blocking_call` when
they need the answer. Twisted itself is imported in that thread, not the caller's, and
:func:`before_twisted` runs work that needs no reactor (starting worker processes) before
that import, so that a fresh program gets its first result sooner.

The module also watches worker processes for their exit (:func:`watch_exit`): through a
Linux pidfd the reactor learns of a death the moment it happens, with no SIGCHLD handler
(which a background thread could not install) and no polling; elsewhere it polls.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["get_reactor", "call_soon", "before_twisted", "blocking_call",
           "in_reactor_thread", "watch_exit"]

_log = logging.getLogger("pydron.backend")
_lock = threading.Lock()
_reactor: Any = None
_thread: threading.Thread | None = None
_imported = threading.Event()              # set once _reactor is known
_before: list[Callable[[], None]] = []      # to run in our thread before importing Twisted
_pending: list[tuple[Callable[..., Any], tuple]] = []  # call_soon before the reactor exists
_forked = False                            # a fork()ed child: the thread is not here


def _after_fork_in_child() -> None:
    global _forked, _reactor, _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    if _thread is not None:  # the parent's reactor does not run here, nor can run again
        _forked = True
        _reactor = None
        _imported.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _start() -> None:
    """Start the reactor thread (once); called with _lock held."""
    global _thread, _reactor
    if _forked:
        raise RuntimeError("pydron's reactor thread belongs to the process this one was "
                           "fork()ed from; start child processes with the 'spawn' method")
    if _thread is not None or _reactor is not None:
        return
    running = sys.modules.get("twisted.internet.reactor")
    if running is not None and getattr(running, "running", False):
        # The program runs Twisted's reactor itself: use it, from its own thread.
        _reactor = running
        _imported.set()
        for fn in _before:
            running.callFromThread(fn)
        for fn, args in _pending:
            running.callFromThread(fn, *args)
        _before.clear()
        _pending.clear()
        return
    _thread = threading.Thread(target=_main, name="pydron-reactor", daemon=True)
    _thread.start()


def _main() -> None:
    global _reactor
    # Work that needs no Twisted runs first, while nothing else can: importing Twisted
    # takes ~0.1 s, during which worker processes queued here are already starting.
    while True:
        with _lock:
            jobs = list(_before)
            _before.clear()
        if not jobs:
            break
        for job in jobs:
            _call(job)
    from twisted.internet import reactor
    with _lock:
        _reactor = reactor
        jobs = list(_before)
        pending = list(_pending)
        _before.clear()
        _pending.clear()
    _imported.set()
    for job in jobs:
        reactor.callWhenRunning(_call, job)
    for fn, args in pending:
        reactor.callWhenRunning(fn, *args)
    try:
        reactor.run(installSignalHandlers=False)
    except BaseException:  # pragma: no cover - nothing should ever get here
        _log.exception("pydron: the reactor thread failed")


def _call(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception:
        _log.exception("pydron: a start-up job in the reactor thread failed")


def get_reactor() -> Any:
    """The global reactor, running (in pydron's thread, unless the program runs it).

    Starts the thread if need be and waits (on an event, not a sleep) until Twisted is
    imported there.
    """
    reactor = _reactor
    if reactor is not None:
        return reactor
    with _lock:
        _start()
    _imported.wait()
    return _reactor


def before_twisted(job: Callable[[], None]) -> None:
    """Run ``job()`` in the reactor thread as early as possible: before Twisted is
    imported if the thread is only now starting, else soon like :func:`call_soon`.

    For work that needs no reactor (starting processes), so that it overlaps the import.
    """
    with _lock:
        if _reactor is None:
            _before.append(job)
            _start()
            return
    _reactor.callFromThread(_call, job)


def in_reactor_thread() -> bool:
    """True in the thread that runs the reactor."""
    if _thread is not None and threading.current_thread() is _thread:
        return True
    if _reactor is None or _thread is not None:
        return False
    from twisted.python import threadable  # the program's own reactor thread
    return threadable.isInIOThread()


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in the reactor thread, soon; safe from any thread."""
    reactor = _reactor
    if reactor is None:
        with _lock:
            if _reactor is None:
                _pending.append((fn, args))
                _start()
                return
            reactor = _reactor
    reactor.callFromThread(fn, *args)


def blocking_call(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """Run ``fn(*args)`` in the reactor thread and return its result (or raise its error).

    From the reactor thread itself it simply calls ``fn``. Raises TimeoutError if the
    reactor does not answer within ``timeout`` seconds.
    """
    if in_reactor_thread():
        return fn(*args)
    done = threading.Event()
    box: list[Any] = [None, None]

    def run() -> None:
        try:
            box[0] = fn(*args)
        except BaseException as exc:  # noqa: B902 -- re-raised in the calling thread
            box[1] = exc
        finally:
            done.set()

    call_soon(run)
    if not done.wait(timeout):
        raise TimeoutError(f"the pydron reactor did not answer within {timeout} s")
    if box[1] is not None:
        raise box[1]
    return box[0]


# --------------------------------------------------------------------------- process exit


class _PidfdWatcher:
    """An IReadDescriptor on a pidfd: readable once the process has exited."""

    def __init__(self, popen: subprocess.Popen, fd: int,
                 callback: Callable[[int], None]) -> None:
        self.popen = popen
        self.fd = fd
        self.callback = callback

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:  # noqa: N802 -- Twisted's interface
        return f"pydron-worker-{self.popen.pid}"

    def doRead(self) -> None:  # noqa: N802
        self.stop()
        self.callback(self.popen.wait())  # returns at once: the process is a zombie now

    def connectionLost(self, reason: object) -> None:  # noqa: N802
        pass

    def stop(self) -> None:
        if self.fd >= 0:
            get_reactor().removeReader(self)
            os.close(self.fd)
            self.fd = -1


def watch_exit(popen: subprocess.Popen, callback: Callable[[int], None]) -> Callable[[], None]:
    """Call ``callback(returncode)`` in the reactor thread when ``popen`` exits.

    Must be called in the reactor thread. Returns a function that stops watching. The
    return code follows ``subprocess``: negative for a signal.
    """
    reactor = get_reactor()
    try:
        fd = os.pidfd_open(popen.pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        from zope.interface import directlyProvides
        from twisted.internet.interfaces import IReadDescriptor
        watcher = _PidfdWatcher(popen, fd, callback)
        directlyProvides(watcher, IReadDescriptor)
        reactor.addReader(watcher)
        return watcher.stop

    # No pidfd (not Linux, or an old kernel): poll, a few times a second.
    from twisted.internet.task import LoopingCall

    def poll() -> None:
        code = popen.poll()
        if code is not None:
            loop.stop()
            callback(code)

    loop = LoopingCall(poll)
    loop.clock = reactor
    loop.start(0.05, now=False)
    return lambda: loop.stop() if loop.running else None
