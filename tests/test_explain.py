"""pydron.explain and pydron.graph: what a person reads about a translated function."""
import networkx as nx
import pytest

import pydron
from tests.funcs import inc, is_even, square


def progress_pipeline(xs):
    results = []
    for x in xs:
        print("frame", x)
        r = square(x)
        if is_even(r):
            results.append(r)
    return results


def first_match(xs):
    for x in xs:
        if is_even(square(x)):
            return x
    return None


def countdown(n):
    out = []
    while n > 0:
        out.append(inc(n))
        n -= 1
    return out


def writes_global(xs):
    global LAST
    for x in xs:
        LAST = square(x)
    return LAST


def no_calls(xs):
    return [x * 2 for x in xs]


def uses_locals(x):
    y = square(x)
    return locals()


LAST = None


def _line(func, text):
    import inspect
    lines, first = inspect.getsourcelines(func)
    for i, line in enumerate(lines):
        if text in line:
            return first + i
    raise AssertionError(text)


def test_explain_names_calls_sync_points_and_loops():
    report = pydron.explain(progress_pipeline)
    assert "progress_pipeline" in report
    assert "functional call square()" in report
    assert "functional call is_even()" in report
    assert "in program order: print() writes output" in report
    assert "iterations run concurrently" in report
    assert "results" in report.split("accumulators")[1].splitlines()[0]
    # each note sits under the line it belongs to
    line = _line(progress_pipeline, 'print("frame", x)')
    block = report.split(f"{line:4d} |")[1]
    assert block.splitlines()[1].strip().startswith("-> in program order: print()")


def test_explain_loop_that_returns_speculates():
    report = pydron.explain(first_match)
    assert "later iterations' calls start before that is decided" in report
    assert "may return" in report


def test_explain_while_and_carried_variables():
    report = pydron.explain(countdown)
    assert "while loop" in report
    note = next(line for line in report.splitlines() if "while loop" in line)
    carried = note.split("carried from one iteration to the next: ")[1].split(";")[0]
    assert set(carried.split(", ")) == {"out", "n"}
    assert "functional call inc()" in report


def test_explain_global_write_is_a_sync_point():
    report = pydron.explain(writes_global)
    assert "sync point: writes global variable LAST" in report


def test_explain_plain_functions():
    assert "runs as the plain function" in pydron.explain(no_calls)
    report = pydron.explain(uses_locals)
    assert "locals()" in report and "runs as the plain function" in report


def test_explain_accepts_scheduled_function():
    scheduled = pydron.schedule(progress_pipeline)
    assert pydron.explain(scheduled) == pydron.explain(progress_pipeline)


def test_graph_networkx_and_dot():
    g, dot = pydron.graph(progress_pipeline)
    assert isinstance(g, nx.DiGraph)
    kinds = nx.get_node_attributes(g, "kind")
    assert list(kinds.values()).count("call") == 2
    assert "for" in kinds.values() and "sync" in kinds.values()
    # the data edge from the square() call to the is_even() call carries r
    calls = [n for n, k in kinds.items() if k == "call"]
    square_node = next(n for n in calls if "square" in g.nodes[n]["label"])
    even_node = next(n for n in calls if "is_even" in g.nodes[n]["label"])
    assert g.has_edge(square_node, even_node)
    assert "r" in g.edges[square_node, even_node]["vars"]
    # nested steps name their loop
    assert g.nodes[square_node]["parent"] is not None
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert "cluster" in dot and "->" in dot
    assert dot.count("{") == dot.count("}")


@pytest.mark.parametrize("func", [progress_pipeline, first_match, countdown])
def test_graph_is_acyclic_within_each_block(func):
    g, _ = pydron.graph(func)
    assert nx.is_directed_acyclic_graph(g)
