"""Shared data (pydron.backend.sharing): an object sent to each worker once.

Real worker processes (a MulticorePool of 1 or 2), plus the threads and inline pools. What
crossed the wire is counted twice: by the pool (``shared_sent``, ``shared_bytes_sent``:
objects served on request) and by each worker (``sharing.fetch_count()``, which the test
functions return with their pid).
"""
from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
import threading
import time

import numpy as np
import pytest

import pydron
import pydron.backend as backend
from pydron.backend import sharing
from pydron.backend.inline import InlinePool
from pydron.backend.threads import ThreadPool
from pydron.errors import SerializationError

from test_multicore import Outcomes, make_pool  # noqa: F401
from waiting import runs, wait_for

MB = 1 << 20


# --------------------------------------------------------------------------- functions
# Module-level, so that they travel to the workers by reference.


def describe(x, nested, k=None):
    """What the function received: the object itself, wherever the handle was."""
    return (type(x).__name__, x == nested[0][0], x == nested[1]["key"][0],
            x in nested[2], x == k, os.getpid())


def checksum(arr):
    """(pid, fetches so far in this worker, the array's sum)."""
    return os.getpid(), sharing.fetch_count(), float(arr.sum())


def first(arr):
    return os.getpid(), sharing.fetch_count(), float(arr[0])


def nap_then_sum(path, arr, seconds):
    """Note which process runs this attempt, wait, then sum."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid(), sharing.fetch_count(), float(arr.sum())


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def bump_in_place(arr):
    """Changes its argument: each call must still get its own copy."""
    arr += 1
    return float(arr[0])


def identity_of(x):
    return id(x)


@pydron.functional
def total(arr, i):
    return float(arr.sum()) + i, os.getpid(), sharing.fetch_count()


@pydron.schedule
def same_array_loop(arr):
    out = []
    for i in range(20):
        out.append(total(arr, i))
    return out


@pydron.schedule
def mutating_loop(arr):
    out = []
    for i in range(20):
        arr[0] = i
        out.append(total(arr, i))
    return out


def run_all(pool, calls, timeout=60):
    """Submit ``(fn, args, kwargs)`` calls; their outcomes in submission order."""
    seen = Outcomes()
    for i, (fn, args, kwargs) in enumerate(calls):
        pool.submit(fn, args, kwargs, seen.callback(i))
    items = sorted(seen.wait(len(calls), timeout), key=lambda item: item[0])
    return [(ok, value) for _, ok, value in items]


def run_one(pool, fn, *args, **kwargs):
    (ok, value), = run_all(pool, [(fn, args, kwargs)])
    assert ok, value
    return value


def per_worker_fetches(values):
    """pid -> the most fetches that worker had made when it ran one of the calls."""
    most: dict[int, int] = {}
    for pid, fetches, *_ in values:
        most[pid] = max(most.get(pid, 0), fetches)
    return most


# --------------------------------------------------------------------------- handles


def test_equal_content_gives_one_digest_and_one_entry():
    before = sharing.live_entries()
    a = sharing.shared(np.arange(1000))
    b = sharing.shared(np.arange(1000))
    c = sharing.shared(np.arange(1001))
    assert a.digest == b.digest != c.digest
    assert a._entry is b._entry and a == b and hash(a) == hash(b) and a != c
    assert sharing.live_entries() == before + 2
    assert a.label == "numpy.ndarray" and a.nbytes >= 8000
    digest = a.digest
    del a, b
    gc.collect()
    assert sharing.lookup(digest) is None  # dropped when nothing holds it
    assert sharing.live_entries() == before + 1
    del c


def test_unpicklable_object_fails_at_shared_naming_its_type():
    with pytest.raises(SerializationError, match=r"cannot share a _thread\.lock"):
        sharing.shared(threading.Lock())


def test_the_object_is_captured_when_shared():
    arr = np.zeros(200_000)  # large enough for out-of-band buffers
    handle = sharing.shared(arr)
    arr[0] = 5
    assert handle.get()[0] == 0
    assert pickle.loads(pickle.dumps(handle))[0] == 0  # not a worker: the registry


def test_a_handle_loaded_outside_a_worker_is_the_object():
    handle = sharing.shared({"a": [1, 2, 3]})
    assert pickle.loads(pickle.dumps(handle)) == {"a": [1, 2, 3]}


# --------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("kind", ["threads", "inline"])
def test_in_process_pools_pass_the_object_nested_too(kind):
    pool = ThreadPool(2) if kind == "threads" else InlinePool()
    try:
        obj = (1, "two", 3.0)
        h = sharing.shared(obj)
        nested = ([h], {"key": (h,)}, frozenset([h]))
        name, *same, pid = run_one(pool, describe, h, nested, k=h)
        assert name == "tuple" and all(same), same
        # An explicit handle is one object for every call (as on a worker).
        ids = {run_one(pool, identity_of, h) for _ in range(3)}
        assert len(ids) == 1
        plain = [1, [2]]  # without handles the arguments are passed untouched
        assert run_one(pool, identity_of, plain) == id(plain)
    finally:
        pool.shutdown()


def test_resolve_args_keeps_containers_without_handles():
    h = sharing.shared([5])
    inner = [1, 2]
    args, kwargs = sharing.resolve_args((inner, {"a": h}), {"z": 3})
    assert args[0] is inner and args[1] == {"a": [5]} and kwargs == {"z": 3}
    loop: list = [h]
    loop.append(loop)
    (resolved,), _ = sharing.resolve_args((loop,), {})
    assert resolved[0] == [5]


# --------------------------------------------------------------------------- workers


def test_worker_receives_the_object_nested_too(make_pool):
    pool = make_pool(2)
    obj = (1, "two", 3.0)
    h = sharing.shared(obj)
    nested = ([h], {"key": (h,)}, frozenset([h]))
    results = run_all(pool, [(describe, (h, nested), {"k": h})] * 4)
    for ok, value in results:
        assert ok, value
        name, *same, pid = value
        assert name == "tuple" and all(same), same
    assert 1 <= pool.shared_sent <= 2


@pytest.fixture(params=["mapped", "socket"])
def transport(request):
    """How a worker gets a shared object: mapped from the caller's memory (a worker on
    this machine) or its bytes through the socket (as a remote worker does)."""
    return request.param


def configured(pool, transport):
    pool.share_memory = transport == "mapped"
    return pool


def check_transport(pool, transport):
    assert pool.shared_mapped == (pool.shared_sent if transport == "mapped" else 0)


def test_a_large_array_crosses_the_wire_once_per_worker(make_pool, transport):
    pool = configured(make_pool(2), transport)
    pool.start()
    arr = np.random.default_rng(1).random(50 * MB // 8)
    h = sharing.shared(arr)
    results = run_all(pool, [(checksum, (h,), {})] * 16)
    values = [value for ok, value in results if ok]
    assert len(values) == 16, results
    assert all(v[2] == float(arr.sum()) for v in values)
    fetches = per_worker_fetches(values)
    assert all(n == 1 for n in fetches.values()), fetches
    assert 1 <= pool.shared_sent <= 2
    assert pool.shared_bytes_sent == pool.shared_sent * h.nbytes
    assert h.nbytes >= 50 * MB
    check_transport(pool, transport)
    print(f"50 MB array, 16 calls ({transport}): {pool.shared_sent} sends, "
          f"{pool.shared_bytes_sent} bytes")


def dot(shared_arr, own):
    return float(shared_arr[: len(own)] @ own)


def test_replies_and_tasks_with_buffers_interleave_in_order(make_pool, transport):
    pool = configured(make_pool(2), transport)
    rng = np.random.default_rng(5)
    arrays = [rng.random(3 * MB // 8) for _ in range(3)]
    handles = [sharing.shared(a) for a in arrays]
    owns = [rng.random(30_000) for _ in range(30)]  # out of band, below AUTO_SHARE_MIN
    calls = [(dot, (handles[i % 3], owns[i]), {}) for i in range(30)]
    results = run_all(pool, calls)
    assert results == [(True, float(arrays[i % 3][:30_000] @ owns[i])) for i in range(30)]
    assert 3 <= pool.shared_sent <= 6


def test_lru_eviction_fetches_again(make_pool, transport):
    # Room for one 2 MB array, not two.
    pool = configured(make_pool(1, shared_cache=3 * MB), transport)
    a = sharing.shared(np.full(2 * MB // 8, 1.0))
    b = sharing.shared(np.full(2 * MB // 8, 2.0))
    order = [a, a, b, a]
    values = [run_one(pool, first, h) for h in order]
    assert [v[2] for v in values] == [1.0, 1.0, 2.0, 1.0]
    assert [v[1] for v in values] == [1, 1, 2, 3]  # a, (cached), b evicts a, a again
    assert pool.shared_sent == 3
    check_transport(pool, transport)


def test_a_large_cache_keeps_both(make_pool):
    pool = make_pool(1)
    a = sharing.shared(np.full(2 * MB // 8, 1.0))
    b = sharing.shared(np.full(2 * MB // 8, 2.0))
    values = [run_one(pool, first, h) for h in [a, b, a, b]]
    assert [v[1] for v in values] == [1, 2, 2, 2]
    assert pool.shared_sent == 2


def test_an_object_larger_than_the_cache_still_works(make_pool):
    pool = make_pool(1, shared_cache=1000)
    h = sharing.shared(np.arange(300_000.0))
    values = [run_one(pool, checksum, h) for _ in range(2)]
    assert [v[2] for v in values] == [float(np.arange(300_000.0).sum())] * 2
    assert [v[1] for v in values] == [1, 1]  # the entry just added is never evicted


def test_handle_dropped_right_after_submit_still_works(make_pool):
    pool = make_pool(1)
    pool.start()
    seen = Outcomes()
    pool.submit(nap, (0.5,), {}, seen.callback("nap"))  # the worker is busy meanwhile
    arr = np.arange(500_000.0)
    expected = float(arr.sum())
    h = sharing.shared(arr)
    digest = h.digest
    pool.submit(checksum, (h,), {}, seen.callback("sum"))
    del h, arr
    gc.collect()
    assert sharing.lookup(digest) is not None  # the call in flight holds it
    outcomes = dict((tag, (ok, value)) for tag, ok, value in seen.wait(2))
    ok, value = outcomes["sum"]
    assert ok, value
    assert value[2] == expected
    gc.collect()
    wait_for(lambda: sharing.lookup(digest) is None, timeout=5,
             what="the entry to be dropped after its call")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_retry_after_sigkill_fetches_again_on_the_new_worker(make_pool, tmp_path,
                                                            transport):
    pool = configured(make_pool(1), transport)
    pool.start()
    arr = np.random.default_rng(2).random(1_000_000)
    expected = float(arr.sum())
    path = tmp_path / "runs"
    seen = Outcomes()
    h = sharing.shared(arr)
    pool.submit(nap_then_sum, (str(path), h, 2.0), {}, seen.callback())
    del h  # only the call in flight holds the entry now
    gc.collect()
    victim, = wait_for(lambda: runs(path), what="the call to start")
    os.kill(victim, signal.SIGKILL)
    (_, ok, value), = seen.wait(1)
    assert ok, value
    pid, fetches, total_ = value
    assert pid != victim and runs(path) == [victim, pid]
    assert fetches == 1 and total_ == expected  # exact
    assert pool.shared_sent == 2  # once to the victim, once to its replacement
    check_transport(pool, transport)


def test_an_object_the_master_lacks_fails_the_call_naming_it(make_pool):
    pool = make_pool(1)

    class Dangling:
        def __reduce__(self):
            return sharing._resolve, (b"\x07" * 20, "my.Thing", 10, False)

    start = time.monotonic()
    (ok, error), = run_all(pool, [(identity_of, (Dangling(),), {})])
    assert not ok and isinstance(error, SerializationError), error
    assert "my.Thing" in str(error) and "070707070707" in str(error), error
    assert time.monotonic() - start < 20  # answered, not waited out


def peek(arr):
    return float(arr[0])


def test_automatic_sharing_gives_each_call_its_own_object(make_pool, transport):
    pool = configured(make_pool(1), transport)
    arr = np.zeros(2 * MB // 8)
    calls = [peek, peek, bump_in_place, peek, bump_in_place, bump_in_place, peek]
    values = [run_one(pool, fn, arr) for fn in calls]  # one at a time, in this order
    assert values == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]  # no call sees another's change
    # Sent once, and again after each call that changed it (the worker dropped it).
    assert pool.shared_sent == 4
    check_transport(pool, transport)
    assert arr[0] == 0


def test_automatic_sharing_can_be_turned_off(make_pool):
    pool = make_pool(1, auto_share=None)
    arr = np.zeros(2 * MB // 8)
    values = run_all(pool, [(first, (arr,), {})] * 3)
    assert [(ok, v[1:]) for ok, v in values] == [(True, (0, 0.0))] * 3  # no fetch
    assert pool.shared_sent == 0
    with pytest.raises(ValueError, match="auto_share"):
        make_pool(1, auto_share=0)


def test_small_arguments_are_not_shared(make_pool):
    pool = make_pool(1)
    arr = np.zeros(1000)
    values = run_all(pool, [(first, (arr,), {})] * 3)
    assert [(ok, v[1:]) for ok, v in values] == [(True, (0, 0.0))] * 3  # no fetch
    assert pool.shared_sent == 0


# --------------------------------------------------------------------------- @schedule


@pytest.fixture
def multicore2():
    previous = backend._config
    pydron.configure({"workers": [{"type": "multicore", "cores": 2}]})
    yield backend.get_pool()
    backend.configure(previous)


def test_schedule_loop_sends_a_large_argument_once_per_worker(multicore2):
    pool = multicore2
    arr = np.random.default_rng(3).random(8 * MB // 8)
    expected = float(arr.sum())
    out = same_array_loop(arr)
    assert [v[0] for v in out] == [expected + i for i in range(20)]
    assert 1 <= pool.shared_sent <= 2, pool.shared_sent
    fetches = per_worker_fetches([(pid, n) for _, pid, n in out])
    assert all(n == 1 for n in fetches.values()), fetches
    print(f"8 MB array, 20 calls: {pool.shared_sent} sends, {pool.shared_bytes_sent} bytes")


def test_schedule_loop_mutating_between_calls_is_exact(multicore2):
    arr = np.random.default_rng(4).random(8 * MB // 8)
    copy = arr.copy()
    expected = []
    for i in range(20):
        copy[0] = i
        expected.append(float(copy.sum()) + i)
    out = mutating_loop(arr)
    assert [v[0] for v in out] == expected
    assert arr[0] == 19


def test_shared_cache_setting_reaches_the_pool():
    previous = backend._config
    pydron.configure({"workers": [{"type": "multicore", "cores": 1}], "shared_cache": 12345})
    try:
        pool = backend.get_pool()
        assert pool.shared_cache == 12345
        assert "12345" in pool._protocol_options()
    finally:
        backend.configure(previous)


# --------------------------------------------------------------------------- the worker's end


@pytest.fixture
def lone_worker(monkeypatch):
    """A Worker object on one end of a socket pair (no master: the test plays it)."""
    from pydron.backend import protocol as wire
    from pydron.backend.worker import module_finder as modules
    from pydron.backend.worker.program import Worker
    monkeypatch.setattr(modules, "REQUEST_TIMEOUT", 0.3)
    import socket
    mine, theirs = socket.socketpair()
    worker = Worker(mine, 7, wire.FrameDecoder(wire.MAX_FRAME), wire.MAX_FRAME, 1.0, 5.0)
    yield worker
    mine.close()
    theirs.close()


def test_worker_gives_up_on_a_silent_master(lone_worker):
    start = time.monotonic()
    answer = lone_worker.ask_shared(b"\x01" * 20)
    assert isinstance(answer, str) and "no answer within 0.3 s" in answer, answer
    assert time.monotonic() - start < 5


def test_worker_waits_while_a_large_reply_is_arriving(lone_worker):
    stop = time.monotonic() + 1.2

    def arriving():  # what the reader thread does while a big frame comes in
        while time.monotonic() < stop:
            lone_worker.bulk_rx = time.monotonic()
            time.sleep(0.05)

    feeder = threading.Thread(target=arriving)
    feeder.start()
    start = time.monotonic()
    answer = lone_worker.ask_shared(b"\x01" * 20)
    feeder.join()
    assert isinstance(answer, str) and time.monotonic() - start >= 1.2


def test_worker_takes_a_reply_and_its_buffers(lone_worker):
    from pydron.backend import protocol as wire
    digest = b"\x02" * 20
    lone_worker._handle(wire.SHARED_REPLY, wire.encode_shared_reply(b"\x03" * 20, True, 0,
                                                                     b"late"))
    lone_worker._handle(wire.BUFFER, bytearray(b"data"))
    lone_worker._handle(wire.SHARED_REPLY, wire.encode_shared_reply(digest, True, 1, b"blob"))
    assert lone_worker.ask_shared(digest) == (b"blob", [bytearray(b"data")])
    # A mapping that cannot be opened: the worker asks again, for the bytes.
    lone_worker.master.pid = os.getpid()
    lone_worker._handle(wire.SHARED_REPLY, wire.encode_shared_reply(
        digest, True, 0, b"blob", {"pid": 1 << 30, "fd": 3, "layout": [[0, 4]]}))
    lone_worker._handle(wire.BUFFER, bytearray(b"again"))
    lone_worker._handle(wire.SHARED_REPLY, wire.encode_shared_reply(digest, True, 1, b"blob"))
    assert lone_worker.ask_shared(digest) == (b"blob", [bytearray(b"again")])
    assert not lone_worker.map_shared
    with pytest.raises(wire.FrameError, match="announced 2"):
        lone_worker._handle(wire.SHARED_REPLY, wire.encode_shared_reply(digest, True, 2))


def test_shared_reply_round_trip_and_kind_names():
    from pydron.backend import protocol as wire
    payload = wire.encode_shared_reply(b"\x09" * 20, True, 3, b"pickle")
    assert wire.decode_shared_reply(payload) == (b"\x09" * 20, True, 3, None, b"pickle")
    assert wire.decode_shared_reply(wire.encode_shared_reply(b"d", False, 0, b"why")) == \
        (b"d", False, 0, None, b"why")
    mapping = {"pid": 5, "fd": 7, "layout": [[0, 10], [4096, 20]]}
    assert wire.decode_shared_reply(wire.encode_shared_reply(b"d", True, 0, b"p", mapping)) \
        == (b"d", True, 0, mapping, b"p")
    for bad in (b"", payload[:8]):
        with pytest.raises(wire.FrameError):
            wire.decode_shared_reply(bad)
    assert wire.KIND_NAMES[wire.SHARED_REQUEST] == "SHARED_REQUEST"
    assert wire.KIND_NAMES[wire.SHARED_REPLY] == "SHARED_REPLY"
    assert len(set(wire.KIND_NAMES)) == len(wire.KIND_NAMES.values())


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="Linux memfd")
def test_memory_file_maps_copy_on_write_and_checks_its_name():
    arr = np.arange(100_000.0)
    h = sharing.shared(arr)
    mapping = sharing.memory_file(h._entry)
    assert mapping is not None and mapping["pid"] == os.getpid()
    buffers = sharing.map_memory_file(mapping)
    mine = pickle.loads(h._entry.blob, buffers=buffers)
    assert np.array_equal(mine, arr) and mine.flags.writeable
    mine[0] = 42.0  # private to this mapping
    assert h.get()[0] == 0.0 and sharing.map_memory_file(mapping)[0][:8] == \
        memoryview(arr).cast("B")[:8]
    other = os.memfd_create("something-else")
    try:
        os.ftruncate(other, 1 << 20)
        with pytest.raises(OSError, match="is not pydron-shared"):
            sharing.map_memory_file(dict(mapping, fd=other))
    finally:
        os.close(other)
