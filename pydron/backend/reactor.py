"""Pydron's Twisted reactor, running in one background daemon thread.

Twisted's reactor is a process-wide singleton that can run only once, so every network
pool (multicore today, SSH later) shares it. It is started on first use, never stopped
(it idles at no cost), runs without installing signal handlers (Ctrl-C stays with the
caller's main thread, where the runtime turns it into cancellations), and is a daemon so
it never keeps the interpreter alive.

Everything that touches Twisted objects must run in that thread: other threads hand work
over with :func:`call_soon` (``reactor.callFromThread``), or :func:`blocking_call` when
they need the answer.

The module also watches worker processes for their exit (:func:`watch_exit`): through a
Linux pidfd the reactor learns of a death the moment it happens, with no SIGCHLD handler
(which a background thread could not install) and no polling; elsewhere it polls.
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["get_reactor", "call_soon", "blocking_call", "in_reactor_thread", "watch_exit"]

_log = logging.getLogger("pydron.backend")
_lock = threading.Lock()
_reactor: Any = None
_thread: threading.Thread | None = None


def get_reactor() -> Any:
    """The global reactor, running (in pydron's thread, unless the program runs it)."""
    global _reactor, _thread
    reactor = _reactor
    if reactor is not None:
        return reactor
    with _lock:
        if _reactor is None:
            from twisted.internet import reactor as twisted_reactor
            if not twisted_reactor.running:
                # A program that runs the reactor itself keeps it; otherwise we run it.
                _thread = threading.Thread(target=_run, args=(twisted_reactor,),
                                           name="pydron-reactor", daemon=True)
                _thread.start()
            _reactor = twisted_reactor
        return _reactor


def _run(reactor: Any) -> None:
    try:
        reactor.run(installSignalHandlers=False)
    except BaseException:  # pragma: no cover - nothing should ever get here
        _log.exception("pydron: the reactor thread failed")


def in_reactor_thread() -> bool:
    """True in the thread that runs the reactor."""
    if _reactor is None:
        return False
    from twisted.python import threadable
    return threadable.isInIOThread()


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in the reactor thread, soon; safe from any thread."""
    get_reactor().callFromThread(fn, *args)


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
