"""Exceptions Pydron raises itself, kept in one module so every layer can import them."""


class PydronError(Exception):
    """Base class of the errors Pydron raises on its own behalf."""


class TranslationError(PydronError):
    """A function cannot be translated (no source, a generator, an async function ...)."""


class ConfigError(PydronError):
    """pydron.conf is unreadable or invalid."""


class WorkerLostError(PydronError):
    """A worker died while running a call, more often than the retry limit allows."""


class SerializationError(PydronError):
    """An argument or a result of a functional call cannot cross to or from a worker.

    ``item`` names what could not be pickled ("argument 2", "keyword argument 'k'",
    "the result"), ``value_type`` its type; the runtime adds where the call is.
    """

    def __init__(self, message: str, item: str = "", value_type: str = "") -> None:
        super().__init__(message)
        self.item = item
        self.value_type = value_type
