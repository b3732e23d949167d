"""Differential cases whose syntax needs Python 3.11 (``except*``), kept apart so that the
modules importing them still compile on 3.10.

PYTEST_DONT_REWRITE
"""
from funcs import is_even, square


def exception_group_star(xs):
    try:
        raise ExceptionGroup("many", [ValueError(square(x)) if is_even(x) else KeyError(x)
                                      for x in xs])
    except* ValueError as eg:
        print("values", [str(e) for e in eg.exceptions])
    except* KeyError as eg:
        print("keys", [str(e) for e in eg.exceptions])
    return "handled"
