"""Pydron's version, in a module of its own: the handshake reports it and the packaging
reads it (``pyproject.toml``), neither of which should have to import the package."""

__version__ = "0.1.0"
