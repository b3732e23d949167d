"""Exceptions Pydron raises itself, kept in one module so every layer can import them."""


class PydronError(Exception):
    """Base class of the errors Pydron raises on its own behalf."""


class TranslationError(PydronError):
    """A function cannot be translated (no source, a generator, an async function ...)."""


class ConfigError(PydronError):
    """pydron.conf is unreadable or invalid."""


class WorkerLostError(PydronError):
    """A worker died while running a call, more often than the retry limit allows."""
