"""Differential cases: for/while loops, else clauses, break/continue/return in every
position, iteration sources, accumulation idioms, aliasing and mutation.

PYTEST_DONT_REWRITE: the case functions use ``assert`` and must keep Python's own messages.
"""
import pytest

from diffcheck import A, Cases, run_case
from funcs import (add, fail_if, inc, is_even, is_positive, log_append, make_list, neg, pair,
                   slow_square, square, total, upper)

pytestmark = pytest.mark.usefixtures("threads_pool")

CASES = Cases()
POOL_CASES = Cases()


# -------------------------------------------------------------------------------------- basic loops

def for_list(xs):
    out = []
    for x in xs:
        out.append(square(x))
    return out


CASES.add(for_list, ([1, 2, 3, 4],), ([],), ([7],))


def for_tuple_sum(xs):
    s = 0
    for x in xs:
        s += square(x)
    return s


CASES.add(for_tuple_sum, ((1, 2, 3),), ((),))


def for_range_forms(n):
    a = [inc(i) for i in range(n)]
    b = []
    for i in range(2, n):
        b.append(square(i))
    c = []
    for i in range(n, 0, -2):
        c.append(neg(i))
    return a, b, c


CASES.add(for_range_forms, (5,), (0,), (2,))


def for_dict_items(d):
    out = {}
    for k, v in d.items():
        out[k] = square(v)
    keys = []
    for k in d:
        keys.append(upper(k))
    return out, keys


CASES.add(for_dict_items, ({"a": 1, "b": 2, "c": 3},), ({},))


def for_string(s):
    out = ""
    for ch in s:
        out += upper(ch) if is_even(ord(ch)) else ch
    return out


CASES.add(for_string, ("hello world",), ("",))


def for_enumerate_zip(xs, ys):
    out = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        out.append((i, add(square(x), y)))
    for i, x in enumerate(xs, start=10):
        out.append(pair(i, x))
    return out


CASES.add(for_enumerate_zip, ([1, 2, 3], [10, 20]), ([], [1]))


def for_set_and_sorted(xs):
    out = []
    for x in sorted(set(xs)):
        out.append(square(x))
    return out


CASES.add(for_set_and_sorted, ([3, 1, 3, 2, 1],))


def for_reversed_and_slices(xs):
    out = []
    for x in reversed(xs):
        out.append(inc(x))
    for x in xs[::2]:
        out.append(neg(x))
    return out


CASES.add(for_reversed_and_slices, ([1, 2, 3, 4, 5],))


def while_countdown(n):
    out = []
    while n > 0:
        out.append(square(n))
        n -= 1
    return out, n


CASES.add(while_countdown, (4,), (0,), (-1,))


def while_functional_test(n):
    i = 0
    acc = []
    while is_positive(n - square(i)):
        acc.append(i)
        i = inc(i)
    return acc


CASES.add(while_functional_test, (10,), (0,))


def while_true_break(xs):
    i = 0
    while True:
        if i >= len(xs) or xs[i] < 0:
            break
        xs[i] = square(xs[i])
        i += 1
    return i


CASES.add(while_true_break, ([1, 2, -3, 4],), ([],), ([5, 6],))


def nested_loops(n, m):
    grid = []
    for i in range(n):
        row = []
        for j in range(m):
            row.append(add(square(i), j))
        grid.append(row)
    return grid


CASES.add(nested_loops, (3, 4), (0, 2), (2, 0))


def nested_while_in_for(xs):
    out = []
    for x in xs:
        k = x
        while k > 1:
            k = k // 2 if is_even(k) else inc(3 * k)
            out.append(k)
        out.append("|")
    return out


CASES.add(nested_while_in_for, ([6, 1, 7],))


def triple_nested(n):
    count = 0
    total_ = 0
    for i in range(n):
        for j in range(i):
            for k in range(j):
                count += 1
                total_ += square(i + j + k)
    return count, total_


CASES.add(triple_nested, (5,), (2,))


def empty_loops(xs):
    out = "start"
    for x in xs:
        out = square(x)
    while False:
        out = "never"
    for i in range(0):
        out = i
    return out


CASES.add(empty_loops, ([],), ([3],))


# --------------------------------------------------------------------- loop variable after the loop

def loop_var_after(xs):
    for x in xs:
        y = square(x)
    return x, y


CASES.add(loop_var_after, ([1, 2, 3],), ([],))


def loop_var_after_break(xs):
    for i, x in enumerate(xs):
        if square(x) > 10:
            break
    return i


CASES.add(loop_var_after_break, ([1, 5, 2],), ([1, 2],), ([],))


def loop_var_preexisting(xs):
    x = "before"
    for x in xs:
        pass
    return x, inc(len(xs))


CASES.add(loop_var_preexisting, ([1, 2],), ([],))


def nested_loop_var_leak(n):
    for i in range(n):
        for j in range(i):
            pass
    return i, j


CASES.add(nested_loop_var_leak, (3,), (1,), (0,))


# ------------------------------------------------------------------------------- for/while ... else

def for_else_search(xs, target):
    for x in xs:
        if square(x) == target:
            found = x
            break
    else:
        found = None
    return found


CASES.add(for_else_search, ([1, 2, 3], 4), ([1, 2, 3], 5), ([], 0))


def for_else_prints(xs):
    for x in xs:
        print("item", inc(x))
        if x < 0:
            print("negative, stop")
            break
    else:
        print("all done")
    print("after")


CASES.add(for_else_prints, ([1, 2],), ([1, -1, 2],), ([],))


def while_else(n, stop):
    i = 0
    while i < n:
        if square(i) == stop:
            result = ("stopped", i)
            break
        i += 1
    else:
        result = ("exhausted", i)
    return result


CASES.add(while_else, (5, 9), (5, 7), (0, 0))


def nested_for_else(matrix, target):
    for r, row in enumerate(matrix):
        for c, v in enumerate(row):
            if square(v) == target:
                break
        else:
            continue
        return r, c
    return None


CASES.add(nested_for_else, ([[1, 2], [3, 4]], 9), ([[1, 2], [3, 4]], 8), ([], 1))


def for_else_with_continue(xs):
    skipped = 0
    for x in xs:
        if is_even(x):
            skipped += 1
            continue
    else:
        return "else", skipped
    return "unreachable"


CASES.add(for_else_with_continue, ([1, 2, 4],))


# -------------------------------------------------------------------------- break in every position

def break_at(xs, stop):
    out = []
    for x in xs:
        if x == stop:
            break
        out.append(square(x))
    return out


CASES.add(break_at, ([1, 2, 3, 4], 1), ([1, 2, 3, 4], 3), ([1, 2, 3, 4], 4),
          ([1, 2, 3, 4], 99))


def break_on_result(xs, limit):
    out = []
    for x in xs:
        r = square(x)
        if r > limit:
            break
        out.append(r)
    return out, r


CASES.add(break_on_result, ([1, 2, 3, 4], 0), ([1, 2, 3, 4], 5), ([1, 2, 3, 4], 100))


def break_in_nested_inner(n):
    out = []
    for i in range(n):
        for j in range(n):
            if j > i:
                break
            out.append(add(i, square(j)))
    return out


CASES.add(break_in_nested_inner, (4,), (0,))


def break_in_nested_outer_flag(grid, target):
    found = None
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if square(v) == target:
                found = (i, j)
                break
        if found:
            break
    return found


CASES.add(break_in_nested_outer_flag, ([[1, 2], [3, 4]], 9), ([[1, 2], [3, 4]], 2))


def break_in_try(xs):
    out = []
    for x in xs:
        try:
            v = fail_if(x, 3)
            if v > 4:
                break
            out.append(v)
        except ValueError:
            out.append("caught")
            break
        finally:
            out.append("fin")
    return out


CASES.add(break_in_try, ([1, 2, 3, 4],), ([1, 5, 3],), ([1],))


def break_while(n):
    i = 0
    out = []
    while i < n:
        v = square(i)
        if v >= 9:
            break
        out.append(v)
        i += 1
    return out, i


CASES.add(break_while, (10,), (2,), (0,))


# ----------------------------------------------------------------------- continue in every position

def continue_at(xs, skip):
    out = []
    for x in xs:
        if x == skip:
            continue
        out.append(square(x))
    return out


CASES.add(continue_at, ([1, 2, 3], 1), ([1, 2, 3], 2), ([1, 2, 3], 3), ([1, 2, 3], 0))


def continue_filter(xs):
    out = []
    for x in xs:
        r = square(x)
        if not is_even(r):
            continue
        out.append(r)
    return out


CASES.add(continue_filter, ([1, 2, 3, 4, 6],), ([1, 3],))


def continue_in_nested(n):
    out = []
    for i in range(n):
        if i == 1:
            continue
        for j in range(n):
            if j == i:
                continue
            out.append(pair(i, square(j)))
    return out


CASES.add(continue_in_nested, (3,))


def continue_while(n):
    i = 0
    out = []
    while i < n:
        i += 1
        if is_even(i):
            continue
        out.append(square(i))
    return out


CASES.add(continue_while, (7,), (0,))


def continue_in_try(xs):
    out = []
    for x in xs:
        try:
            v = fail_if(x, 2)
        except ValueError:
            continue
        out.append(inc(v))
    return out


CASES.add(continue_in_try, ([1, 2, 3, 2],))


def continue_and_break(xs):
    out = []
    for x in xs:
        if x < 0:
            continue
        if x > 100:
            break
        out.append(square(x))
    else:
        out.append("no break")
    return out


CASES.add(continue_and_break, ([1, -2, 3, 200, 4],), ([1, -2, 3],))


# ------------------------------------------------------------------- early return in every position

def return_at(xs, target):
    for x in xs:
        r = square(x)
        if r == target:
            return "found", x
    return "missing"


CASES.add(return_at, ([1, 2, 3], 1), ([1, 2, 3], 4), ([1, 2, 3], 9), ([1, 2, 3], 7))


def return_from_nested(grid, target):
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if add(v, 0) == target:
                return i, j
    return None


CASES.add(return_from_nested, ([[1, 2], [3, 4]], 3), ([[1, 2], [3, 4]], 5))


def return_from_try_in_loop(xs):
    for x in xs:
        try:
            if fail_if(x, 0) > 2:
                return x
        except ValueError:
            return "zero"
        finally:
            print("finally", x)
    return "end"


CASES.add(return_from_try_in_loop, ([1, 3, 5],), ([1, 0, 5],), ([1, 2],))


def return_from_while(n):
    i = 0
    while True:
        if square(i) > n:
            return i
        i += 1


CASES.add(return_from_while, (0,), (20,))


def return_in_else(xs):
    for x in xs:
        if x < 0:
            break
    else:
        return square(len(xs))
    return "broke"


CASES.add(return_in_else, ([1, 2],), ([1, -1],))


def return_with_pending_work(xs):
    out = []
    for x in xs:
        out.append(slow_square(x))
        if x == 2:
            return out
    return None


CASES.add(return_with_pending_work, ([1, 2, 3],), ([5, 6],))


# ------------------------------------------------------------------- iteration sources with effects

def generator_source_prints(n):
    def numbers():
        for i in range(n):
            print("produce", i)
            yield i
        print("exhausted")

    out = []
    for v in numbers():
        r = square(v)
        print("consume", v, r)
        out.append(r)
    return out


CASES.add(generator_source_prints, (3,), (0,))


def generator_source_break(n):
    def numbers():
        try:
            for i in range(n):
                print("produce", i)
                yield i
        finally:
            print("generator closed")

    for v in numbers():
        if square(v) >= 4:
            print("stop at", v)
            break
    print("after loop")
    return v


CASES.add(generator_source_break, (5,), (2,))


def iterator_shared(xs):
    it = iter(xs)
    pairs = []
    for a in it:
        b = next(it, None)
        pairs.append((square(a), b))
    return pairs


CASES.add(iterator_shared, ([1, 2, 3, 4, 5],))


def iterator_class_source(n):
    class Countdown:
        def __init__(self, k):
            self.k = k

        def __iter__(self):
            return self

        def __next__(self):
            if self.k <= 0:
                print("stop")
                raise StopIteration
            self.k -= 1
            print("next", self.k)
            return self.k

    return [square(v) for v in Countdown(n)], sum(inc(v) for v in Countdown(n))


CASES.add(iterator_class_source, (3,))


def loop_header_raises(x):
    out = []
    for v in range(square(x)):
        out.append(v)
    for v in x:
        out.append(v)
    return out


CASES.add(loop_header_raises, (2,))


def loop_iterable_raises_midway(n):
    def items():
        for i in range(n):
            if i == 2:
                raise RuntimeError(f"source broke at {i}")
            yield i

    out = []
    for v in items():
        print("body", v)
        out.append(square(v))
    return out


CASES.add(loop_iterable_raises_midway, (2,), (4,))


def loop_over_dict_mutated(d):
    for k in d:
        d[k + "!"] = square(d[k])
    return d


CASES.add(loop_over_dict_mutated, ({"a": 1},))


def loop_mutates_other_list(xs):
    ys = list(xs)
    out = []
    for x in xs:
        ys.remove(x)
        ys.append(square(x))
        out.append(len(ys))
    return ys, out


CASES.add(loop_mutates_other_list, ([1, 2, 3],))


def loop_appends_to_iterated(xs):
    for x in xs:
        if x < 10:
            xs.append(square(x) + 10)
    return xs


CASES.add(loop_appends_to_iterated, ([1, 2, 11],))


def loop_rebinds_iterated(xs):
    out = []
    for x in xs:
        xs = [0]
        out.append(inc(x))
    return out, xs


CASES.add(loop_rebinds_iterated, ([1, 2, 3],))


def loop_modifies_loop_variable(n):
    out = []
    for i in range(n):
        out.append(square(i))
        i = 100
    return out, i


CASES.add(loop_modifies_loop_variable, (3,))


def unbound_loop_variable(xs):
    for x in xs:
        pass
    return square(x)


CASES.add(unbound_loop_variable, ([2],), ([],))


def unbound_assigned_in_loop(xs):
    for x in xs:
        last = square(x)
    return last


CASES.add(unbound_assigned_in_loop, ([3],), ([],))


# ------------------------------------------------------------------------------ accumulation idioms

def acc_append(xs):
    out = []
    for x in xs:
        out.append(square(x))
    return out


CASES.add(acc_append, (list(range(8)),), ([],))


def acc_concat_rebind(xs):
    outputs = []
    for x in xs:
        outputs = outputs + [square(x)]
    return outputs


CASES.add(acc_concat_rebind, ([3, 1, 2],), ([],))


def acc_sum(xs):
    total_ = 0
    for x in xs:
        total_ += square(x)
    return total_


CASES.add(acc_sum, ([1, 2, 3, 4],), ([],))


def acc_dict(keys):
    d = {}
    for k in keys:
        d[k] = square(k)
    return d


CASES.add(acc_dict, ([3, 1, 2, 3],), ([],))


def acc_set(xs):
    s = set()
    for x in xs:
        s.add(square(x))
    return s


CASES.add(acc_set, ([1, -1, 2, -2, 3],), ([],))


def acc_filter(xs):
    keep = []
    for x in xs:
        r = square(x)
        if is_even(r):
            keep.append(r)
    return keep


CASES.add(acc_filter, ([1, 2, 3, 4, 5, 6],), ([1, 3],))


def acc_multiple(xs):
    evens, odds = [], []
    count = 0
    text = ""
    for x in xs:
        r = square(x)
        count += 1
        if is_even(x):
            evens.append(r)
        else:
            odds.append(r)
        text += str(r) + ","
    return evens, odds, count, text


CASES.add(acc_multiple, ([1, 2, 3, 4],))


def acc_into_argument(xs, out):
    for x in xs:
        out.append(square(x))


CASES.add(acc_into_argument, ([1, 2, 3], [0]), ([], []))


def acc_into_argument_dict(xs, table):
    for x in xs:
        table[x] = inc(x)
        table.setdefault("count", 0)
        table["count"] += 1
    return len(table)


CASES.add(acc_into_argument_dict, ([1, 2], {}), ([3], {"count": 10}))


def acc_aliasing(x):
    a = []
    b = a
    b.append(square(x))
    b.append(inc(x))
    return a


CASES.add(acc_aliasing, (3,))


def acc_aliasing_returned_both(xs):
    a = []
    b = a
    for x in xs:
        b.append(square(x))
    c = a[:]
    c.append("copy")
    return a, b, c


CASES.add(acc_aliasing_returned_both, ([1, 2],))


def acc_alias_into_dict(xs):
    groups = {}
    for x in xs:
        key = "even" if is_even(x) else "odd"
        bucket = groups.setdefault(key, [])
        bucket.append(square(x))
    return groups


CASES.add(acc_alias_into_dict, ([1, 2, 3, 4, 5],))


def acc_nested_lists(n):
    rows = [[] for _ in range(n)]
    for i in range(n):
        for j in range(n):
            rows[j].append(square(i))
    return rows


CASES.add(acc_nested_lists, (3,))


def acc_shared_row_trap(n):
    rows = [[]] * n
    for i in range(n):
        rows[i].append(square(i))
    return rows


CASES.add(acc_shared_row_trap, (3,))


def acc_with_helper_mutation(xs):
    log = []
    out = []
    for x in xs:
        r = square(x)
        n = log_append(log, r)
        out.append(add(r, n))
    return out, log


CASES.add(acc_with_helper_mutation, ([1, 2, 3],))


def acc_helper_mutates_between_calls(xs):
    data = list(xs)
    a = total(data)
    log_append(data, 100)
    b = total(data)
    data.sort(reverse=True)
    c = pair(data[0], total(data))
    return a, b, c, data


CASES.add(acc_helper_mutates_between_calls, ([3, 1, 2],))


def acc_mutation_after_call_not_seen(xs):
    data = list(xs)
    before = total(data)
    data.append(10)
    after = total(data)
    snapshot = make_list(len(data))
    data.clear()
    return before, after, snapshot, data


CASES.add(acc_mutation_after_call_not_seen, ([1, 2],))


def acc_pop_and_insert(xs):
    work = list(xs)
    done = []
    while work:
        x = work.pop()
        r = square(x)
        if r < 50:
            work.insert(0, r + 50)
        done.append(r)
    return done


CASES.add(acc_pop_and_insert, ([2, 3],))


def acc_counter_dict(words):
    counts = {}
    for w in words:
        key = upper(w)
        counts[key] = counts.get(key, 0) + 1
    return counts


CASES.add(acc_counter_dict, (["a", "b", "A", "c", "b"],))


def acc_running_max(xs):
    best = None
    best_x = None
    for x in xs:
        r = square(x)
        if best is None or r > best:
            best, best_x = r, x
    return best, best_x


CASES.add(acc_running_max, ([1, -5, 3],), ([],))


def acc_extend_and_insert(xs):
    out = []
    for x in xs:
        out.extend([x, square(x)])
        out.insert(0, neg(x))
    out.reverse()
    return out


CASES.add(acc_extend_and_insert, ([1, 2],))


def acc_list_item_assign(n):
    out = [None] * n
    for i in range(n):
        out[i] = square(i)
    out[-1:] = [inc(v) for v in out[-1:]]
    return out


CASES.add(acc_list_item_assign, (4,), (0,))


def acc_object_attribute(xs):
    class Stats:
        pass

    st = Stats()
    st.total = 0
    st.items = []
    for x in xs:
        st.total += square(x)
        st.items.append(x)
    return st.total, st.items


CASES.add(acc_object_attribute, ([1, 2, 3],))


def acc_argument_rebind_not_visible(xs):
    xs = xs + [square(len(xs))]
    xs.append(0)
    return xs


CASES.add(acc_argument_rebind_not_visible, ([1, 2],))


def acc_argument_aliases(a, b):
    for x in range(3):
        a.append(square(x))
    return a is b, len(b)


def _aliased_args():
    shared = []
    return A(shared, shared)


CASES.add(acc_argument_aliases, _aliased_args(), ([], []))


# ----------------------------------------------------------- loops with functional calls and prints

def print_progress(xs):
    out = []
    for i, x in enumerate(xs):
        print(f"step {i}")
        out.append(slow_square(x))
    print("done")
    return out


CASES.add(print_progress, ([1, 2, 3, 4],), ([],))


def print_results_in_loop(xs):
    for x in xs:
        r = slow_square(x, 0.005 * (len(xs) - x))
        print(x, "->", r)


CASES.add(print_results_in_loop, ([0, 1, 2, 3],))


def loop_many_iterations(n):
    out = []
    for i in range(n):
        out.append(square(i) % 7)
    return sum(out), out[-3:]


CASES.add(loop_many_iterations, (300,))


def loop_inner_functional_pipeline(xs):
    out = []
    for x in xs:
        a = square(x)
        b = inc(a)
        c = neg(b)
        out.append(add(c, x))
    return out


CASES.add(loop_inner_functional_pipeline, ([1, 2, 3],))


# --------------------------------------------------------------------------------------- both pools

for _fn, _args in [(acc_append, (list(range(8)),)), (break_at, ([1, 2, 3, 4], 3)),
                   (continue_filter, ([1, 2, 3, 4, 6],)), (return_at, ([1, 2, 3], 4)),
                   (acc_into_argument, ([1, 2, 3], [0])), (print_progress, ([1, 2, 3, 4],)),
                   (for_else_search, ([1, 2, 3], 5)), (nested_loops, (3, 4))]:
    POOL_CASES.add(_fn, _args)


@pytest.mark.parametrize("fn,inst", CASES.params())
def test_loops(fn, inst):
    run_case(fn, inst)


@pytest.mark.parametrize("fn,inst", POOL_CASES.params())
def test_loops_pools(fn, inst, pool):
    run_case(fn, inst)
