"""Differential cases: an exception raised in each place, while other calls are in flight,
and the earliest failure in program order winning over the earliest in wall-clock time.

PYTEST_DONT_REWRITE: the case functions use ``assert`` and must keep Python's own messages.
"""
import pytest

from diffcheck import Cases, run_case
from funcs import (add, divide, fail_if, fail_key, first_item, floordiv, inc, is_even, kw,
                   log_append, lookup, make_list, multi_arg_error, neg, slow_fail,
                   slow_ident, slow_square, square, total)

pytestmark = pytest.mark.usefixtures("threads_pool")

CASES = Cases()
POOL_CASES = Cases()


# ----------------------------------------------------------------------------- in a functional call

def fail_first_iteration(xs):
    out = []
    for x in xs:
        out.append(fail_if(x, xs[0]))
    return out


CASES.add(fail_first_iteration, ([5, 6, 7],))


def fail_later_iteration_in_flight(xs, bad):
    out = []
    for x in xs:
        out.append(slow_square(x, 0.03))
        out.append(fail_if(x, bad))
    return out


CASES.add(fail_later_iteration_in_flight, ([1, 2, 3, 4, 5], 3), ([1, 2, 3, 4, 5], 5),
          ([1, 2, 3], 0))


def fail_last_iteration(xs):
    return [fail_if(slow_ident(x, 0.01), xs[-1]) for x in xs]


CASES.add(fail_last_iteration, ([1, 2, 3, 4],))


def fail_result_unused(x):
    unused = fail_if(x, 2)  # noqa: F841 - the call must still happen and fail
    return "done"


CASES.add(fail_result_unused, (2,), (1,))


def fail_expression_statement(x):
    fail_if(square(x), 4)
    return "done"


CASES.add(fail_expression_statement, (2,), (3,))


def fail_key_error_repr(d, k):
    return fail_key(d, k)


CASES.add(fail_key_error_repr, ({"a": 1}, "a"), ({"a": 1}, "b"), ({"a": 1}, ("t", 1)))


def fail_zero_division_in_call(xs):
    return [divide(10, x) for x in xs]


CASES.add(fail_zero_division_in_call, ([1, 2, 0, 4],), ([5],))


def fail_multi_arg_exception(a):
    v = square(a)
    multi_arg_error(v, "two")


CASES.add(fail_multi_arg_exception, (3,))


def fail_stop_iteration_from_call(xs):
    a = first_item(xs)
    return a, square(a)


CASES.add(fail_stop_iteration_from_call, ([3],), ([],))


def fail_stop_iteration_in_body(xs):
    it = iter(xs)
    a = square(next(it))
    b = next(it)
    return a, b


CASES.add(fail_stop_iteration_in_body, ([1, 2],), ([1],))


def fail_type_error_mid_loop(items):
    return [square(v) for v in items]


CASES.add(fail_type_error_mid_loop, ([1, 2, "x", 4],))


def fail_bad_call_signature_mid_loop(xs):
    out = []
    for x in xs:
        if x == 2:
            out.append(kw(x, c=1, d=2))
        out.append(kw(x))
    return out


CASES.add(fail_bad_call_signature_mid_loop, ([1, 2, 3],))


def fail_custom_exception_mid_loop(table, keys):
    return [lookup(table, k) for k in keys]


CASES.add(fail_custom_exception_mid_loop, ({"a": 1, "b": 2}, ["a", "b"]),
          ({"a": 1, "b": 2}, ["a", "c", "b"]))


def fail_in_nested_call_argument(a, b):
    return add(square(a), floordiv(10, b))


CASES.add(fail_in_nested_call_argument, (2, 0), (2, 3))


def fail_in_both_tuple_elements(a, b):
    x, y = fail_if(a, 1), fail_if(b, 2)
    return x, y


CASES.add(fail_in_both_tuple_elements, (1, 2), (0, 2), (1, 0), (0, 0))


# ------------------------------------------------------------------------------------ in plain code

def fail_plain_before_calls(x):
    y = 10 // x
    return square(y), inc(y)


CASES.add(fail_plain_before_calls, (0,), (3,))


def fail_plain_after_calls(xs):
    a = square(xs[0])
    b = inc(xs[1])
    return a + b + xs[5]


CASES.add(fail_plain_after_calls, ([1, 2],), ([1, 2, 3, 4, 5, 6],))


def fail_plain_between_calls(xs):
    a = slow_square(xs[0], 0.02)
    b = xs[1] // xs[2]
    c = square(b)
    return a, b, c


CASES.add(fail_plain_between_calls, ([2, 4, 0],), ([2, 4, 2],))


def fail_attribute_error(x):
    v = square(x)
    return v.real, v.imaginary_part


CASES.add(fail_attribute_error, (3,))


def fail_in_sync_point(xs):
    a = slow_square(xs[0], 0.02)
    log_append(None, a)
    return a


CASES.add(fail_in_sync_point, ([2],))


def fail_in_if_test(x):
    if fail_if(x, 3) > 1:
        return "big"
    return "small"


CASES.add(fail_in_if_test, (3,), (2,), (0,))


def fail_in_plain_if_test(xs):
    total_ = square(len(xs))
    if xs[0] // xs[1] > 1:
        return total_
    return -total_


CASES.add(fail_in_plain_if_test, ([4, 2],), ([4, 0],), ([1, 2],))


def fail_in_while_test(xs):
    i = 0
    while xs[i] > 0:
        xs[i] = square(xs[i])
        i += 1
    return i


CASES.add(fail_in_while_test, ([1, 2, -1],), ([1, 2],))


def fail_in_loop_header(xs):
    out = []
    for v in make_list(len(xs)) + xs[0]:
        out.append(v)
    return out


CASES.add(fail_in_loop_header, ([1],), ([[9]],))


def fail_in_comprehension_condition(xs):
    return [square(x) for x in xs if 12 % x == 0]


CASES.add(fail_in_comprehension_condition, ([1, 2, 5, 0, 6],), ([1, 5],))


def fail_in_return_expression(x):
    a = square(x)
    return a / (x - 2)


CASES.add(fail_in_return_expression, (2,), (3,))


def fail_only_in_else_branch(x):
    if is_even(x):
        r = square(x)
    else:
        r = fail_if(x, x)
    return r


CASES.add(fail_only_in_else_branch, (2,), (3,))


def fail_after_break_not_reached(xs):
    out = []
    for x in xs:
        if x < 0:
            break
        out.append(square(x))
    else:
        fail_if(0, 0)
    return out


CASES.add(fail_after_break_not_reached, ([1, -1],), ([1, 2],))


def fail_in_nested_function(xs):
    def helper(v):
        return floordiv(100, v - 2)

    return [helper(x) for x in xs]


CASES.add(fail_in_nested_function, ([1, 3, 2, 4],), ([1, 3],))


def fail_unbound_in_branch(x):
    if is_even(x):
        y = square(x)
    return inc(y)


CASES.add(fail_unbound_in_branch, (2,), (3,))


def fail_recursion_in_helper(n):
    def down(k):
        return down(k + 1)

    a = square(n)
    if n > 0:
        down(0)
    return a


CASES.add(fail_recursion_in_helper, (0,), (1,))


# ------------------------------------------------------------- program order beats wall-clock order

def order_two_slow_failures(x):
    a = slow_fail(1, 0.15)
    b = slow_fail(2, 0.0)
    return a, b, x


CASES.add(order_two_slow_failures, (0,))


def order_slow_failure_then_fast_failure(x):
    a = slow_fail(x, 0.15)
    b = fail_if(x, x)
    return add(a, b)


CASES.add(order_slow_failure_then_fast_failure, (7,))


def order_slow_failure_then_plain_error(x):
    a = slow_fail(x, 0.1)
    b = x // 0
    return a, b


CASES.add(order_slow_failure_then_plain_error, (3,))


def order_failures_in_loop(xs):
    n = len(xs)
    return [slow_fail(x, 0.04 * (n - i)) for i, x in enumerate(xs)]


CASES.add(order_failures_in_loop, ([1, 2, 3, 4],))


def order_failures_in_appending_loop(xs):
    out = []
    for i, x in enumerate(xs):
        out.append(slow_square(x, 0.02))
        if i > 0:
            out.append(slow_fail(x, 0.12 / i))
    return out


CASES.add(order_failures_in_appending_loop, ([1, 2, 3, 4],))


def order_success_slow_then_failure(x):
    a = slow_square(x, 0.1)
    print("a", a)
    b = fail_if(x, x)
    print("b", b)
    return a, b


CASES.add(order_success_slow_then_failure, (2,))


def order_failure_nested_args(x):
    return add(slow_fail(x, 0.1), fail_if(x, x))


CASES.add(order_failure_nested_args, (4,))


def order_slow_failure_vs_later_sync_point(x):
    a = slow_fail(x, 0.1)
    print("must not print", a)
    return a


CASES.add(order_slow_failure_vs_later_sync_point, (5,))


def order_caught_earlier_failure(xs):
    out = []
    for i, x in enumerate(xs):
        try:
            out.append(slow_fail(x, 0.05) if i == 0 else fail_if(x, 3))
        except ValueError as e:
            out.append(str(e))
    return out


CASES.add(order_caught_earlier_failure, ([1, 2, 3, 4],))


# ---------------------------------------------------------------- prints before and after a failure

def prints_before_failure_appear(xs, bad):
    for x in xs:
        print("before", x)
        r = fail_if(square(x), bad)
        print("after", x, r)
    print("end")


CASES.add(prints_before_failure_appear, ([1, 2, 3, 4], 9), ([1, 2, 3, 4], 1),
          ([1, 2], 100))


def prints_with_slow_calls_then_failure(xs):
    results = []
    for x in xs:
        r = slow_square(x, 0.01)
        print("got", r)
        results.append(r)
        if r > 5:
            results.append(fail_if(r, 9))
    print("finished", results)
    return results


CASES.add(prints_with_slow_calls_then_failure, ([1, 2, 3, 4],), ([1, 2],))


def prints_around_plain_failure(xs):
    print("start")
    a = square(xs[0])
    print("a", a)
    b = xs[10]
    print("b", b)
    return a, b


CASES.add(prints_around_plain_failure, ([1, 2],))


def prints_in_handler_after_failure(xs):
    try:
        for x in xs:
            print("try", x)
            fail_if(x, 2)
    except ValueError as e:
        print("handler", e)
    finally:
        print("finally")
    return "recovered"


CASES.add(prints_in_handler_after_failure, ([1, 2, 3],))


def mutation_before_failure_visible(xs, out):
    for x in xs:
        out.append(square(x))
        fail_if(x, 3)
        out.append("ok")
    return out


CASES.add(mutation_before_failure_visible, ([1, 2, 3, 4], []), ([1], []))


def mutation_interleaved_with_slow_failure(out):
    a = slow_fail(1, 0.1)
    out.append("must not happen")
    return a


CASES.add(mutation_interleaved_with_slow_failure, ([],))


# -------------------------------------------------------------------- exceptions caught in the body

def caught_in_body_continue_work(xs):
    good, bad = [], []
    for x in xs:
        try:
            good.append(fail_if(slow_ident(x, 0.005), 2))
        except ValueError as e:
            bad.append(str(e))
    return good, bad


CASES.add(caught_in_body_continue_work, ([1, 2, 3, 2],))


def caught_zero_division_from_call(xs):
    out = []
    for x in xs:
        try:
            out.append(floordiv(12, x))
        except ZeroDivisionError as e:
            out.append(("zde", str(e)))
    return out


CASES.add(caught_zero_division_from_call, ([1, 0, 3],))


def caught_key_error_from_call(d, keys):
    out = {}
    for k in keys:
        try:
            out[k] = fail_key(d, k)
        except KeyError as e:
            out[k] = ("missing", e.args)
    return out


CASES.add(caught_key_error_from_call, ({"a": 1}, ["a", "b"]))


def caught_then_reraised_different(x):
    try:
        return fail_if(square(x), 4)
    except ValueError as e:
        raise RuntimeError(f"converted: {e}") from e


CASES.add(caught_then_reraised_different, (2,), (3,))


def caught_base_exception_types(x):
    out = []
    for exc_type in (ValueError, KeyError, IndexError):
        try:
            if is_even(x):
                raise exc_type(neg(x))
        except LookupError as e:
            out.append(("lookup", type(e).__name__))
        except Exception as e:
            out.append(("other", type(e).__name__, str(e)))
    return out


CASES.add(caught_base_exception_types, (2,), (3,))


def uncaught_total_of_bad_types(xs):
    return total(xs)


CASES.add(uncaught_total_of_bad_types, ([1, "a"],), ([1, 2],))


for _fn, _args in [(fail_later_iteration_in_flight, ([1, 2, 3, 4, 5], 3)),
                   (order_two_slow_failures, (0,)), (order_failures_in_loop, ([1, 2, 3, 4],)),
                   (prints_before_failure_appear, ([1, 2, 3, 4], 9)),
                   (order_slow_failure_then_plain_error, (3,)),
                   (mutation_before_failure_visible, ([1, 2, 3, 4], []))]:
    POOL_CASES.add(_fn, _args)


@pytest.mark.parametrize("fn,inst", CASES.params())
def test_exceptions(fn, inst):
    run_case(fn, inst)


@pytest.mark.parametrize("fn,inst", POOL_CASES.params())
def test_exceptions_pools(fn, inst, pool):
    run_case(fn, inst)
