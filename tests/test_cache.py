"""The result cache (pydron.result_cache; ``pydron.cache(path)`` turns it on): keys that
follow the code and the data, a store that several processes share, and a wrapper pool
over real thread and process pools."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import pydron

from pydron.backend import ThreadPool
from pydron.result_cache import (CachingPool, CacheWarning, ResultCache, args_digest, call_key,
                          clear, code_digest, info_text, parse_size)
from pydron.result_cache.keys import is_user_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60


# --------------------------------------------------------------------------- functions


def counted(path, x):
    """Records each execution, so a test can tell a hit from a recomputation."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x * x


@pydron.functional
def scheduled_step(path, x):
    return counted(path, x)


def failing(path, x):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    raise ValueError(f"bad {x}")


def executions(path) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


class Outcomes:
    """Collects on_done calls and waits for them."""

    def __init__(self) -> None:
        self.items: dict[object, tuple[bool, object]] = {}
        self.cond = threading.Condition()

    def callback(self, tag: object):
        def on_done(ok: bool, value: object) -> None:
            with self.cond:
                assert tag not in self.items, "on_done called twice"
                self.items[tag] = (ok, value)
                self.cond.notify_all()
        return on_done

    def wait(self, n: int) -> dict[object, tuple[bool, object]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, TIMEOUT), self.items
            return dict(self.items)


def run_all(pool, fn, path, xs) -> dict[object, tuple[bool, object]]:
    seen = Outcomes()
    for x in xs:
        pool.submit(fn, (str(path), x), {}, seen.callback(x))
    return seen.wait(len(xs))


# --------------------------------------------------------------------------- code digests


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Write modules into tmp_path and (re)import them: ``write(name, source)`` returns
    the fresh module. No .pyc files: an edit within the same second must be seen."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []
    stamp = [1_000_000_000]

    def write(name: str, source: str):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        stamp[0] += 10  # a distinct mtime for every version: linecache and imports notice
        os.utime(path, (stamp[0], stamp[0]))
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        names.append(name)
        return importlib.import_module(name)

    yield write
    for name in names:
        sys.modules.pop(name, None)


PIPELINE = '''
    import helpers_mod

    THRESHOLD = {threshold}


    def scale(x):
        {scale_doc}
        return x * {factor}


    def process(x):
        """{doc}"""
        # {comment}
        y = scale(x) + helpers_mod.offset(x)
        return y if y > THRESHOLD else 0
'''
HELPERS = '''
    def offset(x):
        return x + {offset}
'''


def pipeline_source(**changes) -> str:
    values = dict(threshold=3, scale_doc='"""Scale."""', factor=2, doc="Process.",
                  comment="a comment")
    values.update(changes)
    return PIPELINE.format(**values)


def test_code_digest_ignores_comments_and_docstrings_and_follows_code(user_modules):
    user_modules("helpers_mod", HELPERS.format(offset=1))
    base = code_digest(user_modules("pipeline_mod", pipeline_source()).process)

    def digest(**changes) -> bytes:
        return code_digest(user_modules("pipeline_mod", pipeline_source(**changes)).process)

    assert digest(comment="another comment, longer than the first") == base
    assert digest(doc="Process the data, now documented at much greater length.") == base
    assert digest(scale_doc='"""A helper\n        over two lines."""') == base
    assert digest(scale_doc="# a comment instead of a docstring") == base
    assert digest() == base
    assert digest(factor=3) != base  # a called helper of the same module changed
    assert digest(threshold=4) != base  # a module constant it reads changed
    assert digest(threshold='"3"') != base  # a str, not an int
    # Blank lines move every line number; the code is the same.
    moved = "\n\n\n" + pipeline_source()
    assert code_digest(user_modules("pipeline_mod", moved).process) == base


NESTED = '''
    from __future__ import annotations


    def outer(xs: list[int]) -> list[int]:
        def inner(x: int) -> int:
            """{doc}"""
            return x + 1
        return [inner(x) for x in xs]
'''


def test_code_digest_reads_source_under_future_imports(user_modules):
    """A nested function's docstring is only invisible in the AST: this fails if the
    digest fell back to hashing bytecode (a module with ``from __future__ import ...``
    compiles with other flags)."""
    base = code_digest(user_modules("nested_mod", NESTED.format(doc="Add one.")).outer)
    edited = user_modules("nested_mod", NESTED.format(doc="Add one, said at more length."))
    assert code_digest(edited.outer) == base
    edited = user_modules("nested_mod", NESTED.format(doc="Add.").replace("+ 1", "+ 2"))
    assert code_digest(edited.outer) != base


def test_code_digest_follows_helpers_of_other_user_modules(user_modules):
    user_modules("helpers_mod", HELPERS.format(offset=1))
    base = code_digest(user_modules("pipeline_mod", pipeline_source()).process)
    user_modules("helpers_mod", HELPERS.format(offset=2))  # helpers_mod.offset edited
    assert code_digest(sys.modules["pipeline_mod"].process) != base
    user_modules("helpers_mod", HELPERS.format(offset=1))
    assert code_digest(sys.modules["pipeline_mod"].process) == base


def test_code_digest_sees_rebinding_at_run_time(user_modules):
    module = user_modules("helpers_mod", HELPERS.format(offset=1))
    module = user_modules("pipeline_mod", pipeline_source())
    base = code_digest(module.process)
    module.THRESHOLD = 10  # a sync point rebinding a global between calls
    assert code_digest(module.process) != base
    module.THRESHOLD = 3
    assert code_digest(module.process) == base


def test_code_digest_of_recursive_functions_and_imported_helpers(user_modules):
    user_modules("helpers_mod", HELPERS.format(offset=1))
    source = '''
        from helpers_mod import offset


        def even(n):
            return True if n == 0 else odd(n - 1)


        def odd(n):
            return False if n == 0 else even(n - offset(0) + 1)
    '''
    module = user_modules("cycle_mod", source)
    base = code_digest(module.even)
    assert code_digest(module.even) == base
    module = user_modules("cycle_mod", source.replace("n == 0 else even", "n <= 0 else even"))
    assert code_digest(module.even) != base


DECORATED = '''
    import functools


    def times(k):
        def decorate(f):
            @functools.wraps(f)
            def wrapper(*args):
                return k * f(*args)
            return wrapper
        return decorate


    @times({k})
    def base(x):
        return x + {offset}


    shifted = functools.partial(base, {shift})


    def use(x):
        return shifted() + x
'''


def test_code_digest_follows_decorators_and_partials(user_modules):
    def digest(name: str, k: int = 2, offset: int = 1, shift: int = 5) -> bytes:
        module = user_modules("decorated_mod", DECORATED.format(k=k, offset=offset,
                                                               shift=shift))
        return code_digest(getattr(module, name))

    base, use = digest("base"), digest("use")
    assert digest("base", k=3) != base  # the wrapper's closure changed
    assert digest("base", offset=2) != base  # the wrapped function changed
    assert digest("base") == base
    assert digest("use", shift=6) != use  # a partial's argument changed
    assert digest("use", offset=2) != use  # the function behind the partial changed
    assert digest("use") == use


def test_stale_source_on_disk_does_not_name_the_running_code(user_modules, tmp_path):
    """A file edited during a run (not reloaded): the key must still describe the code
    that runs, or its results would be stored under the edited code's key."""
    module = user_modules("stale_mod", "def f(x):\n    return x + 1\n")
    running = code_digest(module.f)
    (tmp_path / "stale_mod.py").write_text("def f(x):\n    return x + 2\n")
    os.utime(tmp_path / "stale_mod.py", (2_000_000_000, 2_000_000_000))
    import pydron.result_cache.keys as keys
    keys._own.clear()
    keys._memo.clear()
    assert code_digest(module.f) != code_digest(
        user_modules("stale_mod", "def f(x):\n    return x + 2\n").f)
    assert running == code_digest(
        user_modules("stale_mod", "def f(x):\n    return x + 1\n").f)


def test_code_digest_without_source_and_of_builtins():
    def exec_f(source: str):
        namespace: dict = {}
        exec(source, namespace)
        return namespace["f"]

    documented = exec_f("def f(x):\n    'doc'\n    return x + 1\n")
    assert code_digest(documented) == code_digest(exec_f("\n\ndef f(x):\n    return x + 1\n"))
    assert code_digest(documented) != code_digest(exec_f("def f(x):\n    return x + 2\n"))
    assert code_digest(documented) != code_digest(exec_f("def f(y):\n    return y + 1\n"))
    assert code_digest(len) != code_digest(abs)
    assert code_digest(np.sum) == code_digest(np.sum)
    assert code_digest(lambda x: x + 1) != code_digest(lambda x: x - 1)


def test_user_modules_are_told_from_libraries():
    assert is_user_module("__main__")
    assert is_user_module(__name__)
    assert not is_user_module("os")
    assert not is_user_module("numpy")
    assert not is_user_module("pydron.result_cache.keys")


def test_call_key_covers_arguments_and_bound_objects():
    assert call_key(counted, ("p", 1), {}) == call_key(counted, ("p", 1), {})
    assert call_key(counted, ("p", 1), {}) != call_key(counted, ("p", 2), {})
    assert call_key(counted, ("p", 1), {}) != call_key(failing, ("p", 1), {})
    assert call_key(counted, ("p",), {"x": 1}) != call_key(counted, ("p", 1), {})

    class Scaler:
        def __init__(self, k):
            self.k = k

        def apply(self, x):
            return x * self.k

    assert call_key(Scaler(2).apply, (1,), {}) == call_key(Scaler(2).apply, (1,), {})
    assert call_key(Scaler(2).apply, (1,), {}) != call_key(Scaler(3).apply, (1,), {})


def test_args_digest_hashes_array_content():
    a = np.random.default_rng(0).random((300, 400))
    b = a.copy()
    assert args_digest((a,), {}) == args_digest((b,), {})
    b[123, 45] += 1e-12
    assert args_digest((a,), {}) != args_digest((b,), {})
    assert args_digest((a,), {}) != args_digest((a.astype(np.float32),), {})
    assert args_digest((a,), {}) != args_digest((a.reshape(400, 300),), {})
    assert args_digest((a.T,), {}) == args_digest((a.T.copy(order="F"),), {})
    # A strided view pickles its data in-band, its copy out of band: a miss, never a hit.
    assert args_digest((a[::2],), {}) == args_digest((a[::2],), {})
    fn = lambda: 1  # noqa: E731 -- plain pickle refuses it: cloudpickle
    assert args_digest((fn,), {}) == args_digest((fn,), {})


# --------------------------------------------------------------------------- the store


def test_parse_size():
    assert parse_size(1234) == 1234
    assert parse_size("500MB") == 500 * 10 ** 6
    assert parse_size("10GB") == 10 * 10 ** 9
    assert parse_size("1.5GiB") == int(1.5 * 2 ** 30)
    assert parse_size("2g") == parse_size("2Gi") == 2 * 2 ** 30
    assert parse_size("4096") == 4096
    for bad in ("ten GB", "10 XB", "-1", ""):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_store_round_trip_and_unpicklable_values(tmp_path):
    with ResultCache(tmp_path / "c") as cache:
        assert cache.get("k") == (False, None)
        value = {"a": np.arange(10), "b": [1, "x", None]}
        assert cache.put("k", value)
        hit, got = cache.get("k")
        assert hit and got["b"] == value["b"] and (got["a"] == value["a"]).all()
        cache.put("none", None)
        assert cache.get("none") == (True, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not cache.put("lock1", threading.Lock(), "mod.f")
            assert not cache.put("lock2", threading.Lock(), "mod.f")
        assert [w.category for w in caught] == [CacheWarning]
        assert cache.get("lock1") == (False, None)
        info = cache.info()
        assert info["entries"] == 2 and info["bytes"] > 0 and info["max_size"] is None


def test_shared_is_one_cache_per_path(tmp_path):
    one = ResultCache.shared(tmp_path / "c")
    assert ResultCache.shared(str(tmp_path / "c")) is one
    assert ResultCache.shared(tmp_path / "c", "1MB") is one
    assert one.info()["max_size"] == 10 ** 6
    assert ResultCache.shared(tmp_path / "d") is not one


def test_max_size_evicts_oldest(tmp_path):
    cache = ResultCache(tmp_path / "c", max_size="2MB")
    blob = np.zeros(100_000, dtype=np.uint8)
    for i in range(60):
        cache.put(f"k{i}", blob + i)
    info = cache.info()
    assert info["max_size"] == 2 * 10 ** 6
    assert info["entries"] < 60 and info["bytes"] <= 2 * 10 ** 6 + 300_000, info
    assert cache.get("k59")[0] and not cache.get("k0")[0]
    cache.close()


def test_info_text_and_clear(tmp_path):
    path = tmp_path / "c"
    assert "no pydron cache" in info_text(path)
    assert clear(path) == 0
    assert not path.exists()
    cache = ResultCache(path, max_size="1GiB")
    for i in range(5):
        cache.put(f"k{i}", i)
    text = info_text(path)
    assert "entries:  5" in text and "1.0 GiB" in text, text
    assert clear(path) == 5
    assert "entries:  0" in info_text(path)
    assert cache.get("k1") == (False, None)  # the other handle sees the clearing
    cache.close()


WRITER = """
import sys
from pydron.result_cache import ResultCache
cache = ResultCache(sys.argv[1])
me, n = int(sys.argv[2]), int(sys.argv[3])
bad = 0
for i in range(n):
    cache.put(f"{me}-{i}", (me, i, "x" * (i % 7) * 1000))
    other = 1 - me
    hit, value = cache.get(f"{other}-{i}")
    if hit and value != (other, i, "x" * (i % 7) * 1000):
        bad += 1
    shared_hit, shared = cache.get("shared")
    if shared_hit and shared != ("same", 42):
        bad += 1
    cache.put("shared", ("same", 42))
print("bad", bad, "entries", len(cache))
"""


def test_two_processes_share_one_store(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "c"), str(me), "300"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for me in (0, 1)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
        assert out.startswith("bad 0 "), out
    cache = ResultCache(tmp_path / "c")
    assert len(cache) == 601
    assert all(cache.get(f"{me}-{i}") == (True, (me, i, "x" * (i % 7) * 1000))
               for me in (0, 1) for i in range(300))
    cache.close()


# --------------------------------------------------------------------------- the pool


def test_caching_pool_over_threads(tmp_path):
    runs = tmp_path / "runs"
    cache = ResultCache(tmp_path / "c")
    pool = CachingPool(ThreadPool(2), cache)
    try:
        assert pool.parallelism == 2
        first = run_all(pool, counted, runs, range(10))
        assert first == {x: (True, x * x) for x in range(10)}
        assert sorted(executions(runs), key=int) == [str(x) for x in range(10)]
        assert (pool.hits, pool.misses) == (0, 10)
        second = run_all(pool, counted, runs, range(10))
        assert second == first
        assert len(executions(runs)) == 10  # nothing ran again
        assert (pool.hits, pool.misses) == (10, 10)
        handle = pool.submit(counted, (str(runs), 3), {}, lambda ok, value: None)
        assert pool.cancel(handle) is False
    finally:
        pool.shutdown()
    assert cache.info()["entries"] == 10  # the cache outlives the pool
    cache.close()


def test_exceptions_are_not_cached(tmp_path):
    runs = tmp_path / "runs"
    cache = ResultCache(tmp_path / "c")
    pool = CachingPool(ThreadPool(2), cache)
    try:
        for attempt in (1, 2):
            outcomes = run_all(pool, failing, runs, [1, 2])
            assert all(not ok and isinstance(v, ValueError) for ok, v in outcomes.values())
            assert len(executions(runs)) == 2 * attempt
        assert pool.hits == 0 and len(cache) == 0
    finally:
        pool.shutdown()
        cache.close()


def test_unpicklable_arguments_run_uncached(tmp_path):
    cache = ResultCache(tmp_path / "c")
    pool = CachingPool(ThreadPool(1), cache)
    lock = threading.Lock()
    try:
        seen = Outcomes()
        pool.submit(lambda lk: lk.locked(), (lock,), {}, seen.callback("a"))
        assert seen.wait(1) == {"a": (True, False)}
        assert pool.uncached == 1 and len(cache) == 0
    finally:
        pool.shutdown()
        cache.close()


def test_caching_pool_over_worker_processes(tmp_path):
    from pydron.backend.multicore import MulticorePool
    runs = tmp_path / "runs"
    cache = ResultCache(tmp_path / "c")
    pool = CachingPool(MulticorePool(2), cache)
    try:
        first = run_all(pool, counted, runs, range(8))
        assert first == {x: (True, x * x) for x in range(8)}
        assert len(executions(runs)) == 8
        assert run_all(pool, counted, runs, range(8)) == first
        assert len(executions(runs)) == 8
        assert pool.hits == 8
        outcomes = run_all(pool, failing, runs, [5])
        assert not outcomes[5][0] and isinstance(outcomes[5][1], ValueError)
        run_all(pool, failing, runs, [5])
        assert len(executions(runs)) == 10  # the failure ran twice: not cached
    finally:
        pool.shutdown()
        cache.close()


# --------------------------------------------------------------------------- wired in


def test_schedule_with_a_cache_in_the_configuration(tmp_path):
    """``"cache"`` in pydron.conf: a @schedule function's functional calls are answered
    from the cache on the second run (the wiring in pydron.backend.pool_from_config)."""
    runs = tmp_path / "runs"

    @pydron.schedule
    def pipeline(path, n):
        out = []
        for i in range(n):
            out.append(scheduled_step(path, i))
        return out

    pydron.configure({"workers": [{"type": "threads", "count": 2}],
                      "cache": {"path": str(tmp_path / "c"), "max_size": "100MB"}})
    try:
        assert pipeline(str(runs), 6) == [i * i for i in range(6)]
        assert len(executions(runs)) == 6
        assert pipeline(str(runs), 8) == [i * i for i in range(8)]
        assert len(executions(runs)) == 8  # only the two new calls ran
    finally:
        pydron.configure(None)
        pydron.shutdown()
