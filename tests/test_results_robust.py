"""Results that fight back, and values that are large: issue 8, points 1 and 2.

Real worker processes over real TCP. A result whose unpickling raises a BaseException
must reach the caller as a SerializationError (it used to hang the run for ever); one
whose unpickling blocks must not stall the reactor thread (other calls, heartbeats); a
large argument passed to many short calls must not pile up on every worker; and the
frame limit is a setting whose error message says how to raise it.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from pydron.backend import protocol as wire
from pydron.backend.multicore import MulticorePool
from pydron.config import ConfigError, parse_config
from pydron.errors import SerializationError

TIMEOUT = 20


class Outcomes:
    """Collects on_done calls by tag and lets a test wait for them."""

    def __init__(self) -> None:
        self.items: dict[object, tuple[bool, object, float]] = {}
        self.cond = threading.Condition()

    def callback(self, tag: object):
        def on_done(ok: bool, value: object) -> None:
            with self.cond:
                self.items[tag] = (ok, value, time.monotonic())
                self.cond.notify_all()
        return on_done

    def one(self, tag: object, timeout: float = TIMEOUT) -> tuple[bool, object]:
        with self.cond:
            assert self.cond.wait_for(lambda: tag in self.items, timeout), \
                f"no outcome for {tag!r} within {timeout} s (the run hangs)"
            ok, value, _ = self.items[tag]
            return ok, value


@pytest.fixture
def pools():
    made: list[MulticorePool] = []

    def make(cores: int, **options) -> MulticorePool:
        pool = MulticorePool(cores, **options)
        made.append(pool)
        pool.start(timeout=TIMEOUT)
        return pool
    yield make
    for pool in made:
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------- functions


class _Exits:
    """Unpickles as ``sys.exit(3)``: a BaseException in the caller's unpickler."""

    def __reduce__(self):
        return (sys.exit, (3,))


class _Sleeps:
    """Unpickles as ``time.sleep(seconds)`` (to None): a result whose loading blocks."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self):
        return (time.sleep, (self.seconds,))


class _Interrupts:
    def __reduce__(self):
        return (_raise_keyboard_interrupt, ())


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt("from a __reduce__")


def exits_on_load():
    return _Exits()


def interrupts_on_load():
    return _Interrupts()


def sleeps_on_load(seconds):
    return _Sleeps(seconds)


def ident(x):
    return x


def size_and_peak(array):
    """The argument's size, and this worker's peak resident memory so far (bytes)."""
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    return array.nbytes, peak


def peak_rss():
    return size_and_peak(np.zeros(1))[1]


def big_bytes(n):
    return b"x" * n


# --------------------------------------------------------------------------- point 1


@pytest.mark.parametrize("fn, name", [(exits_on_load, "SystemExit"),
                                      (interrupts_on_load, "KeyboardInterrupt")])
def test_a_result_whose_unpickling_raises_a_base_exception_fails_cleanly(pools, fn, name):
    """Used to hang for ever: the call was marked done, then SystemExit escaped the
    reactor thread; it was neither delivered nor retried."""
    pool = pools(1, heartbeat=0.2, heartbeat_timeout=2.0)
    pid = pool.worker_pids()[0]
    out = Outcomes()
    pool.submit(fn, (), {}, out.callback("bad"))
    ok, err = out.one("bad")
    assert not ok and type(err) is SerializationError
    assert f"the result of {fn.__name__}()" in str(err) and name in str(err)
    assert "test_results_robust.py" in str(err)  # where the function is defined
    pool.submit(ident, (7,), {}, out.callback("next"))  # the pool goes on serving
    assert out.one("next") == (True, 7)
    assert pool.worker_pids() == [pid]  # and nobody lost contact


def test_a_result_whose_unpickling_blocks_does_not_stall_other_calls(pools):
    """Unpickling runs off the reactor thread: while one result takes 3 s to load, the
    other worker's tiny calls keep arriving, and heartbeats keep both workers alive."""
    pool = pools(2, heartbeat=0.2, heartbeat_timeout=1.0)
    pids = pool.worker_pids()
    out = Outcomes()
    pool.submit(sleeps_on_load, (3.0,), {}, out.callback("slow"))
    time.sleep(0.3)  # its result is being loaded now
    start = time.monotonic()
    for i in range(4):
        pool.submit(ident, (i,), {}, out.callback(i))
        assert out.one(i, timeout=2.5) == (True, i)
    assert time.monotonic() - start < 2.0, "the tiny calls waited for the slow unpickling"
    assert out.one("slow") == (True, None)
    assert pool.worker_pids() == pids


def test_shutdown_waits_until_every_result_is_delivered(pools):
    """Results are loaded off the reactor thread, after the workers may have gone: the
    pool counts as stopped only once the last of them has been delivered."""
    pool = pools(1)
    delivered: list[object] = []
    for tag, fn, args in [("a", sleeps_on_load, (1.0,)), ("b", ident, (2,))]:
        pool.submit(fn, args, {}, lambda ok, value, tag=tag: delivered.append(tag))
    pool.shutdown(wait=True)
    assert sorted(delivered) == ["a", "b"]


# --------------------------------------------------------------------------- point 2


def test_a_large_argument_to_many_short_calls_is_not_queued_many_times(pools):
    """8 fast calls sharing a 40 MB array, on 2 workers: bounded by bytes, a worker holds
    the call it runs and at most ``prefetch_bytes`` more, so about one copy; bounded by
    count only, it received all its 4 copies ahead (the issue: 2.9 GB per worker for a
    1 GB array)."""
    array = np.ones(40 << 20, dtype=np.uint8)
    peaks = {}
    for cap in (1 << 20, 1 << 40):   # the bound, then effectively none
        pool = pools(2, prefetch_bytes=cap, auto_share=None)  # the queueing, not sharing
        out = Outcomes()
        base = {}
        for i in range(200):       # tiny calls: the pool learns to prefetch
            pool.submit(peak_rss, (), {}, out.callback(("warm", i)))
        for i in range(200):
            base[i] = out.one(("warm", i))[1]
        for i in range(8):
            pool.submit(size_and_peak, (array,), {}, out.callback(i))
        results = [out.one(i) for i in range(8)]
        assert all(ok and value[0] == array.nbytes for ok, value in results)
        peaks[cap] = max(value[1] for _, value in results) - min(base.values())
        pool.shutdown(wait=True)
    copies = {cap: peak / array.nbytes for cap, peak in peaks.items()}
    assert copies[1 << 20] < 1.7, copies          # one copy (and some slack)
    assert copies[1 << 40] > copies[1 << 20] + 0.8, copies  # the test can fail


def test_a_buffer_split_in_parts_arrives_in_one_allocation(pools):
    """Over the frame limit a buffer travels in parts; the receiver reads them into one
    preallocated bytearray (no join afterwards, which held it twice)."""
    pool = pools(1, max_frame=1 << 16)
    array = np.arange(300_000, dtype=np.float64)  # 2.4 MB: ~37 parts each way
    out = Outcomes()
    pool.submit(ident, (array,), {}, out.callback("a"))
    ok, value = out.one("a")
    assert ok and np.array_equal(value, array)
    base = value
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    assert type(base) is bytearray and len(base) == array.nbytes
    assert value.flags.writeable


def test_the_decoder_fills_the_parts_of_a_split_buffer_in_place():
    data = bytes(range(256)) * 400                      # 102,400 bytes
    stream = b"".join(bytes(p) for p in wire.buffer_frames(data, 8192))
    stream += wire.frame(wire.HEARTBEAT)
    for step in (1, 100, 5000, 9000, len(stream)):
        decoder = wire.FrameDecoder(8192, big=1000)
        frames = []
        for i in range(0, len(stream), step):
            frames += decoder.feed(stream[i:i + step])
        assert [k for k, _ in frames] == [wire.BUFFER, wire.HEARTBEAT]
        assert type(frames[0][1]) is bytearray and frames[0][1] == data
    bad = wire.FrameDecoder(8192)  # parts longer than announced
    with pytest.raises(wire.FrameError, match="exceed its announced size"):
        bad.feed(wire.frame(wire.BUFFER_SIZE, (10).to_bytes(8, "big")) +
                 wire.frame(wire.BUFFER, b"x" * 11))
    # Before authentication (a handshake-sized limit) nothing is preallocated.
    early = wire.FrameDecoder(wire.HANDSHAKE_MAX_FRAME)
    assert early.feed(wire.frame(wire.BUFFER_SIZE, (1 << 45).to_bytes(8, "big"))) == \
        [(wire.BUFFER_SIZE, (1 << 45).to_bytes(8, "big"))]


def test_the_frame_limit_is_a_setting_and_its_errors_say_how_to_raise_it(pools):
    assert parse_config({"max_frame": 1 << 20}).max_frame == 1 << 20
    assert parse_config({"prefetch_bytes": 0}).prefetch_bytes == 0
    with pytest.raises(ConfigError, match="max_frame: expected an integer from 8192"):
        parse_config({"max_frame": 100})
    pool = pools(1, max_frame=1 << 16)
    with pytest.raises(SerializationError,
                       match=r'set "max_frame" in pydron.conf to at least \d+') as info:
        pool.submit(ident, (b"y" * 100_000,), {}, lambda ok, value: None)
    assert "ident()" in str(info.value) and "test_results_robust.py" in str(info.value)
    out = Outcomes()
    pool.submit(big_bytes, (100_000,), {}, out.callback("r"))
    ok, err = out.one("r")
    assert not ok and type(err) is SerializationError
    assert "bytes of 100000 bytes" in str(err) and 'set "max_frame"' in str(err)
    need = int(str(err).split("at least ")[1].split()[0])
    roomy = pools(1, max_frame=need)  # the advice works
    roomy.submit(big_bytes, (100_000,), {}, out.callback("r2"))
    assert out.one("r2") == (True, b"x" * 100_000)


def test_the_decoding_threads_end_with_the_pool(pools):
    """A stopped pool leaves no thread behind (a program that configures many pools
    would otherwise collect them)."""
    pool = pools(2)
    before = {t for t in threading.enumerate() if t.name == "pydron-results"}
    out = Outcomes()
    for i in range(20):
        pool.submit(ident, (i,), {}, out.callback(i))
    for i in range(20):
        assert out.one(i) == (True, i)
    mine = {t for t in threading.enumerate() if t.name == "pydron-results"} - before
    assert mine
    pool.shutdown(wait=True)
    for thread in mine:
        thread.join(5)
        assert not thread.is_alive()
