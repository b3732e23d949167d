"""Exceptions Pydron raises itself, kept in one module so every layer can import them,
and the two helpers that decide what of Pydron a user's exception still shows when it
reaches the caller (:func:`user_traceback`, :func:`adopt_context`)."""
from __future__ import annotations

import os
import types


class PydronError(Exception):
    """Base class of the errors Pydron raises on its own behalf."""


class TranslationError(PydronError):
    """A function cannot be translated (no source, a generator, an async function ...)."""


class ConfigError(PydronError):
    """pydron.conf is unreadable or invalid."""


class WorkerLostError(PydronError):
    """A worker died while running a call, more often than the retry limit allows."""


class CallTimeoutError(PydronError):
    """A functional call ran longer than ``call_timeout`` (pydron.conf) allows.

    On a pool of worker processes the worker running it was killed (nothing keeps
    computing) and another takes its place; on the threads pool the thread cannot be
    stopped, so the call runs on there, unobserved, while a new thread takes its place.
    ``function`` names the call, ``timeout`` is the limit in seconds; the runtime adds
    the line of the call to the message.
    """

    def __init__(self, message: str, function: str = "", timeout: float | None = None) -> None:
        super().__init__(message)
        self.function = function
        self.timeout = timeout


class SerializationError(PydronError):
    """An argument or a result of a functional call cannot cross to or from a worker.

    ``item`` names what could not be pickled ("argument 2", "keyword argument 'k'",
    "the result"), ``value_type`` its type; the runtime adds where the call is.
    """

    def __init__(self, message: str, item: str = "", value_type: str = "") -> None:
        super().__init__(message)
        self.item = item
        self.value_type = value_type


class RemoteError(PydronError):
    """An exception raised on a worker that cannot be rebuilt as itself in the caller.

    It stands in for the original when the original's class does not exist in the caller
    (it came from a module only the worker has) or when a part of it (an argument, an
    attribute) cannot be pickled. The message names the original ``module.qualname`` and
    its message; ``remote_traceback`` holds the worker's frames as text, and the same
    frames are this exception's own ``__traceback__``. ``__cause__`` and ``__context__``
    are the original's, each carried on its own.
    """

    def __init__(self, type_name: str, message: str = "", remote_traceback: str = "",
                 reason: str = "") -> None:
        text = f"{type_name}: {message}" if message else type_name
        super().__init__(f"{text} ({reason})" if reason else text)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.reason = reason

    def __reduce__(self) -> tuple:
        """Pickle by the constructor's own arguments, which ``args`` does not hold."""
        return (type(self), (self.type_name, self.message, self.remote_traceback,
                             self.reason), self.__dict__)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_OWN_FILES: dict[str, bool] = {}


def _is_own(filename: str) -> bool:
    """True for a file of the pydron package (cached: called once per frame shown)."""
    own = _OWN_FILES.get(filename)
    if own is None:
        own = _OWN_FILES[filename] = os.path.abspath(filename).startswith(_PACKAGE)
    return own


def user_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without its leading frames of Pydron's own code (pool threads, the scheduler,
    pickling an argument): what is left starts at the user's own code, as a plain call
    would. Frames further in are kept, even Pydron's, since the user's code called them."""
    while tb is not None and _is_own(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def adopt_context(exc: BaseException, handled: BaseException | None) -> None:
    """Give the exceptions of ``exc``'s chain the context a plain call would have given.

    A plain call made while the caller handles ``handled`` raises everything inside it
    with ``handled`` as the ``__context__`` of each exception raised while nothing else
    was handled. A worker thread or process handles nothing, so those exceptions arrive
    with ``__context__`` None; an exception counts as raised if it has a traceback. The
    top of the chain is left alone: raising it again sets its context.
    """
    if handled is None:
        return
    seen = {id(exc), id(handled)}
    todo = [exc.__cause__, exc.__context__]
    while todo:
        link = todo.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        if link.__context__ is None and link.__traceback__ is not None:
            link.__context__ = handled
        else:
            todo.append(link.__context__)
        todo.append(link.__cause__)
