"""Differential cases: list/set/dict comprehensions and generator expressions: nesting,
conditions, functional calls, scopes, short-circuit consumers.

PYTEST_DONT_REWRITE: the case functions use ``assert`` and must keep Python's own messages.
"""
import pytest

from diffcheck import Cases, run_case
from funcs import (add, fail_if, inc, is_even, make_list, neg, pair, show, slow_square, square,
                   total, upper)

pytestmark = pytest.mark.usefixtures("threads_pool")

CASES = Cases()
POOL_CASES = Cases()


def list_comp(xs):
    return [square(x) for x in xs]


CASES.add(list_comp, ([1, 2, 3, 4],), ([],))


def list_comp_condition(xs):
    return [square(x) for x in xs if is_even(x)]


CASES.add(list_comp_condition, ([1, 2, 3, 4, 6],), ([1, 3],))


def list_comp_condition_on_result(xs):
    return [r for r in [square(x) for x in xs] if r > 4]


CASES.add(list_comp_condition_on_result, ([1, 2, 3, 4],))


def list_comp_conditional_expression(xs):
    return [square(x) if is_even(x) else neg(x) for x in xs]


CASES.add(list_comp_conditional_expression, ([1, 2, 3, 4],))


def list_comp_nested_for(n, m):
    return [pair(i, square(j)) for i in range(n) for j in range(m) if i != j]


CASES.add(list_comp_nested_for, (3, 3), (0, 2), (2, 0))


def list_comp_dependent_ranges(n):
    return [add(i, j) for i in range(n) for j in range(i)]


CASES.add(list_comp_dependent_ranges, (4,))


def list_comp_nested_comp(n):
    return [[square(i * j) for j in range(n)] for i in range(n)]


CASES.add(list_comp_nested_comp, (3,), (0,))


def list_comp_flatten(rows):
    return [inc(v) for row in rows for v in row]


CASES.add(list_comp_flatten, ([[1, 2], [], [3]],))


def list_comp_multiple_conditions(xs):
    return [x for x in xs if x > 0 if is_even(square(x))]


CASES.add(list_comp_multiple_conditions, ([-2, -1, 0, 1, 2, 3, 4],))


def set_comp(xs):
    return {square(x) for x in xs}


CASES.add(set_comp, ([1, -1, 2, -2, 3],), ([],))


def dict_comp(xs):
    return {x: square(x) for x in xs}


CASES.add(dict_comp, ([3, 1, 2],), ([],))


def dict_comp_key_collision(xs):
    return {square(x): x for x in xs}


CASES.add(dict_comp_key_collision, ([1, -1, 2, -2],))


def dict_comp_from_items(d):
    return {upper(k): inc(v) for k, v in d.items() if v >= 0}


CASES.add(dict_comp_from_items, ({"a": 1, "b": -1, "c": 3},))


def dict_comp_swap(d):
    return {v: k for k, v in sorted(d.items())}


CASES.add(dict_comp_swap, ({"x": 1, "y": 2},))


def genexp_sum(xs):
    return sum(square(x) for x in xs)


CASES.add(genexp_sum, ([1, 2, 3],), ([],))


def genexp_any_short_circuit(xs):
    return any(fail_if(x, 99) > 2 for x in xs)


CASES.add(genexp_any_short_circuit, ([1, 3, 99],), ([1, 2, 99],), ([],))


def genexp_all_short_circuit(xs):
    return all(fail_if(x, 0) > 0 for x in xs)


CASES.add(genexp_all_short_circuit, ([1, -1, 0],), ([1, 2, 0],), ([1, 2],))


def genexp_any_prints_order(xs):
    return any(show("check", square(x)) > 5 for x in xs)


CASES.add(genexp_any_prints_order, ([1, 2, 3, 4],), ([1],))


def genexp_next_default(xs):
    first_big = next((x for x in xs if square(x) > 10), None)
    return first_big


CASES.add(genexp_next_default, ([1, 5, 7],), ([1, 2],))


def genexp_min_max_sorted(xs):
    return (min(square(x) for x in xs), max((neg(x) for x in xs), default=None),
            sorted((inc(x) for x in xs), reverse=True), tuple(square(x) for x in xs))


CASES.add(genexp_min_max_sorted, ([3, -1, 2],))


def genexp_join(words):
    return ", ".join(upper(w) for w in words if w)


CASES.add(genexp_join, (["a", "", "bc"],), ([],))


def genexp_first_iterable_evaluated_eagerly(x):
    g = (v for v in range(square(x)))
    h = (v for v in x)
    return "unreachable", g, h


CASES.add(genexp_first_iterable_evaluated_eagerly, (2,))


def comp_loop_variable_does_not_leak(xs):
    x = "outer"
    ys = [square(x) for x in xs]
    return x, ys


CASES.add(comp_loop_variable_does_not_leak, ([1, 2],))


def comp_variable_not_defined_after(xs):
    ys = [square(item) for item in xs]
    return ys, item  # noqa: F821


CASES.add(comp_variable_not_defined_after, ([1, 2],))


def comp_reads_enclosing_local(xs):
    k = square(3)
    return [add(x, k) for x in xs]


CASES.add(comp_reads_enclosing_local, ([1, 2],))


def comp_reads_rebinding_later(xs):
    k = 1
    first = [add(x, k) for x in xs]
    k = 100
    second = [add(x, k) for x in xs]
    return first, second


CASES.add(comp_reads_rebinding_later, ([1, 2],))


def comp_walrus_binds_outward(xs):
    total_ = 0
    sums = [total_ := total_ + square(x) for x in xs]
    return sums, total_


CASES.add(comp_walrus_binds_outward, ([1, 2, 3],), ([],))


def comp_walrus_last_match(xs):
    if any((big := x) > 2 for x in xs):
        return big
    return "none"


CASES.add(comp_walrus_last_match, ([1, 5, 7],), ([1],))


def comp_with_lambda_capture(n):
    fs = [lambda: square(i) for i in range(n)]
    return [f() for f in fs]


CASES.add(comp_with_lambda_capture, (3,))


def comp_raises_in_element(xs):
    return [fail_if(x, 3) for x in xs]


CASES.add(comp_raises_in_element, ([1, 2, 3, 4],), ([1, 2],))


def comp_raises_in_condition(xs):
    return [x for x in xs if 10 // x > 1]


CASES.add(comp_raises_in_condition, ([1, 2, 0, 3],), ([1, 2, 3],))


def comp_raises_in_iterable(x):
    return [v for v in square(x)]


CASES.add(comp_raises_in_iterable, (2,))


def comp_with_print_side_effects(xs):
    return [show("item", square(x)) for x in xs if show("test", x) > 0]


CASES.add(comp_with_print_side_effects, ([1, -1, 2],))


def comp_mutating_outer(xs):
    seen = []
    out = [seen.append(square(x)) or len(seen) for x in xs]
    return out, seen


CASES.add(comp_mutating_outer, ([3, 4],))


def comp_over_functional_result(n):
    return [inc(v) for v in make_list(square(n))]


CASES.add(comp_over_functional_result, (2,), (0,))


def comp_functional_of_comp(xs):
    return total([square(x) for x in xs]), total(tuple(inc(x) for x in xs))


CASES.add(comp_functional_of_comp, ([1, 2, 3],))


def comp_unpacking_targets(pairs):
    return [add(a, b) for a, b in pairs], {a: b for (a, b) in pairs}, [s for s, *_ in pairs]


CASES.add(comp_unpacking_targets, ([(1, 2), (3, 4)],))


def comp_bad_unpacking(pairs):
    return [add(a, b) for a, b in pairs]


CASES.add(comp_bad_unpacking, ([(1, 2), (3,)],))


def comp_in_class_body(n):
    class Table:
        size = n
        rows = [square(i) for i in range(size)]   # the first iterable sees class scope
        cols = [inc(i) for i in range(2)]

    return Table.cols, Table.rows


CASES.add(comp_in_class_body, (3,))


def comp_class_body_scope_error(n):
    class Table:
        size = n
        rows = [size for _ in range(2)]

    return Table.rows


CASES.add(comp_class_body_scope_error, (3,))


def comp_slow_elements(xs):
    return [slow_square(x, 0.002 * (len(xs) - i)) for i, x in enumerate(xs)]


CASES.add(comp_slow_elements, ([1, 2, 3, 4, 5],))


def comp_in_loop(n):
    out = []
    for i in range(n):
        out.append([square(i + j) for j in range(i)])
    return out


CASES.add(comp_in_loop, (4,))


def comp_set_dict_mixed(words):
    lengths = {len(w) for w in words}
    by_len = {n: sorted(upper(w) for w in words if len(w) == n) for n in sorted(lengths)}
    return by_len


CASES.add(comp_set_dict_mixed, (["a", "bb", "cc", "d", "eee"],))


for _fn, _args in [(list_comp, ([1, 2, 3, 4],)), (genexp_any_short_circuit, ([1, 3, 99],)),
                   (comp_raises_in_element, ([1, 2, 3, 4],)), (dict_comp, ([3, 1, 2],))]:
    POOL_CASES.add(_fn, _args)


@pytest.mark.parametrize("fn,inst", CASES.params())
def test_comprehensions(fn, inst):
    run_case(fn, inst)


@pytest.mark.parametrize("fn,inst", POOL_CASES.params())
def test_comprehensions_pools(fn, inst, pool):
    run_case(fn, inst)
