"""Pydron: run sequential Python in parallel with two decorators.

``@functional`` promises that a function has no side effects; ``@schedule`` translates a
function into a dataflow graph whose functional calls run concurrently on a pool of workers,
while everything else keeps its sequential meaning.
"""
from pydron.errors import ConfigError, PydronError, TranslationError, WorkerLostError

__version__ = "0.1.0"

__all__ = [
    "schedule", "functional", "explain", "graph", "configure", "shutdown",
    "PydronError", "TranslationError", "ConfigError", "WorkerLostError", "__version__",
]
