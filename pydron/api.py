"""The two decorators. ``schedule`` translates lazily, at the first call, so that names
defined later in the module resolve; the template is cached on the function and rebuilt
only if a global it relied on (a callee found to be @functional, say) was rebound."""
from __future__ import annotations

import functools
import inspect
import threading
import warnings
from typing import Any, Callable, Optional, TypeVar

from pydron.errors import PydronError, TranslationError
from pydron.purity import functional  # noqa: F401  (re-exported)

F = TypeVar("F", bound=Callable[..., Any])


class PydronWarning(UserWarning):
    """Pydron fell back to running a function plainly; the message says why."""


class Scheduled:
    """The translation state of one @schedule function."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.lock = threading.Lock()
        self.template: Any = None
        self.failed: Optional[str] = None

    def get_template(self) -> Any:
        """The cached template, translated (again) when missing or stale."""
        template = self.template
        if template is not None and self._guards_hold(template):
            return template
        with self.lock:
            template = self.template
            if template is None or not self._guards_hold(template):
                from pydron.translation import translate
                template = self.template = translate(self.func)
        return template

    def _guards_hold(self, template: Any) -> bool:
        globals_ = self.func.__globals__
        builtins_ = globals_.get("__builtins__")
        for chain, obj in template.guards:
            value = globals_.get(chain[0], _MISSING)
            if value is _MISSING:
                value = (builtins_.get(chain[0], _MISSING) if isinstance(builtins_, dict)
                         else getattr(builtins_, chain[0], _MISSING))
            for attr in chain[1:]:
                value = getattr(value, attr, _MISSING)
            if value is not obj:
                return False
        return True

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.failed is not None:
            return self.func(*args, **kwargs)
        try:
            template = self.get_template()
        except TranslationError:
            raise
        except OSError as exc:
            # Transient (EMFILE while the descriptors are scarce, a source file being
            # rewritten): run plainly this once and translate again at the next call,
            # rather than give up on parallelism for the life of the process.
            warnings.warn(f"pydron could not translate {self.func.__qualname__} this time "
                          f"({type(exc).__name__}: {exc}); this call runs sequentially, "
                          f"the next one tries again", PydronWarning, stacklevel=3)
            return self.func(*args, **kwargs)
        except Exception as exc:  # a bug of ours must not cost the user their result
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"pydron could not translate {self.func.__qualname__} "
                          f"({self.failed}); it runs sequentially", PydronWarning, stacklevel=3)
            return self.func(*args, **kwargs)
        if template.opaque_reason or not template.has_dispatch:
            return self.func(*args, **kwargs)
        from pydron import backend
        from pydron.runtime.scheduler import execute
        # The run holds its pool to the end: a configure() or shutdown() in another
        # thread meanwhile applies to later runs and must not stop this one's workers.
        with backend.run_pool() as (pool, config):
            window = config.window or max(16, 4 * pool.parallelism)
            return execute(template, self.func, args, kwargs, pool, window)


_MISSING = object()


def _user_frames(exc: BaseException) -> Any:
    """The traceback of ``exc`` after the ``scheduled`` frame without Pydron's own frames in
    front of the user's; None when there are none to drop."""
    from pydron.errors import user_traceback
    tb = exc.__traceback__
    if tb is None or tb.tb_next is None:
        return None
    trimmed = user_traceback(tb.tb_next)
    return None if trimmed is tb.tb_next or trimmed is None else trimmed


def schedule(func: F) -> F:
    """Translate ``func`` into a dataflow graph whose @functional calls run in parallel.

    Calling the result gives the same value, exception and printed output as calling
    ``func``. Works on plain functions, methods, static and class methods.
    """
    if isinstance(func, staticmethod):
        return staticmethod(schedule(func.__func__))  # type: ignore[return-value]
    if isinstance(func, classmethod):
        return classmethod(schedule(func.__func__))  # type: ignore[return-value]
    if not inspect.isfunction(func):
        raise TypeError(f"@pydron.schedule expects a function defined with 'def', "
                        f"got {type(func).__name__} {func!r:.80}")
    name = f"{func.__module__}.{func.__qualname__}"
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TranslationError(f"cannot schedule {name}: it is a generator function "
                               f"(yield); @schedule needs a function that returns a value")
    if inspect.iscoroutinefunction(func):
        raise TranslationError(f"cannot schedule {name}: async functions are not supported")
    state = Scheduled(func)

    @functools.wraps(func)
    def scheduled(*args: Any, **kwargs: Any) -> Any:
        from pydron.backend.context import in_worker
        if in_worker():
            return func(*args, **kwargs)     # inside a worker: no pool inside a pool
        try:
            return state(args, kwargs)
        except BaseException as exc:
            # Show the user's frames right after this one, as if ``func`` had been called
            # directly: the translation and scheduling frames in between are ours. The
            # context stays what it was (it is this exception being handled here).
            trimmed, context = _user_frames(exc), exc.__context__
            if trimmed is None:
                raise
            try:
                raise exc.with_traceback(trimmed)
            finally:
                exc.__context__ = context
                del exc, context

    scheduled.__pydron_schedule__ = state  # type: ignore[attr-defined]
    return scheduled  # type: ignore[return-value]


def scheduled_state(func: Callable[..., Any]) -> Scheduled:
    """The Scheduled behind a @schedule function (or a fresh one for a plain function)."""
    target = func.__func__ if isinstance(func, (staticmethod, classmethod)) else func
    target = getattr(target, "__func__", target)
    state = getattr(target, "__pydron_schedule__", None)
    if state is None:
        if not inspect.isfunction(target):
            raise TypeError(f"expected a function, got {type(func).__name__}")
        state = Scheduled(target)
    return state


__all__ = ["schedule", "functional", "PydronWarning", "PydronError", "scheduled_state"]
