"""Data locality: large results stay on the worker that computed them.

Real worker processes and real TCP throughout. What is counted is what the caller's end of
the connections received (``WorkerEngine.bytes_received``) and what the engine's table of
kept values says (``kept_values()``); what is compared is the answer of a plain run.
"""
import os
import signal
import threading
import time

import numpy as np
import pytest

import pydron
from pydron import backend
from pydron.remote_value import Remote

FRAME = 1_250_000            # float64 items: 10 MB a frame
FRAMES = 6


@pydron.functional
def dark(a):
    return a - 0.25


@pydron.functional
def flat(a):
    return a * 1.5


@pydron.functional
def smooth(a):
    out = a.copy()
    out[1:-1] = (a[:-2] + a[1:-1] + a[2:]) / 3.0
    return out


@pydron.functional
def clip(a):
    return np.minimum(a, 1.0)


@pydron.functional
def total(a):
    return float(a.sum())


@pydron.schedule
def pipeline(frames):
    sums = []
    for f in frames:
        sums.append(total(clip(smooth(flat(dark(f))))))
    return sums


def plain_pipeline(frames):
    steps = (dark, flat, smooth, clip, total)
    out = []
    for f in frames:
        for step in steps:
            f = step(f)
        out.append(f)
    return out


def frames_of(n, size=FRAME):
    return [np.random.default_rng(i).random(size) for i in range(n)]


@pytest.fixture
def multicore():
    """Two fresh local workers (fresh counters), as pydron.conf would configure them."""
    def configure(**extra):
        backend.configure({"workers": [{"type": "multicore", "cores": 2}], **extra})
        pool = backend.get_pool()
        pool.start()
        return pool
    yield configure
    backend.configure(None)


def test_a_chain_of_four_steps_moves_no_array_bytes_through_the_caller(multicore):
    frames = frames_of(FRAMES)
    expected = plain_pipeline(frames)
    pool = multicore()
    before = pool.bytes_received
    assert pipeline(frames) == expected
    received = pool.bytes_received - before
    stats = pool.kept_values()
    # 4 intermediate frames of 10 MB per input frame would come back without locality;
    # what comes back is the sums (and heartbeats).
    assert received < 1 << 20, (received, stats)
    assert stats["fetched_bytes"] == 0 and stats["relayed_bytes"] == 0, stats


def test_the_same_chain_with_keeping_off_brings_every_frame_back(multicore):
    """The control: the counter above does see frames when they do come back."""
    frames = frames_of(FRAMES)
    pool = multicore(keep_min=0)
    before = pool.bytes_received
    assert pipeline(frames) == plain_pipeline(frames)
    assert pool.bytes_received - before >= 4 * FRAMES * FRAME * 8


@pydron.schedule
def read_back(frames):
    out = []
    for f in frames:
        g = flat(dark(f))
        out.append(g[:3].tolist())      # plain code reads the kept value
        out.append(total(g))            # and a functional call reads it too
    return out, flat(frames[0])         # a kept value returned as it is


def test_plain_code_and_return_get_the_values(multicore):
    frames = frames_of(3)
    pool = multicore()
    out, first = read_back(frames)
    assert type(first) is np.ndarray
    assert np.array_equal(first, flat(frames[0]))
    expected = []
    for f in frames:
        g = flat(dark(f))
        expected += [g[:3].tolist(), total(g)]
    assert out == expected
    assert pool.kept_values()["fetched_bytes"] >= 3 * FRAME * 8


def _released(pool, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if pool.kept_values()["values"] == 0:
            return True
        time.sleep(0.05)
    return False


def _worker_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pydron.functional
def what_this_worker_keeps(pause):
    """(pid, values kept, their bytes, resident bytes) of the worker running this."""
    from pydron.backend.protocol import values
    time.sleep(pause)  # long enough that every worker gets one of these
    store = values._resolver.__self__
    import ctypes
    import gc
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # freed heap back to the system: RSS is what is used
    return os.getpid(), len(store), store.nbytes(), _worker_rss(os.getpid())


def every_worker_keeps(pool):
    with pydron.Executor() as ex:
        answers = list(ex.map(what_this_worker_keeps, [0.2] * 6))
    return {pid: (n, size, rss) for pid, n, size, rss in answers}


def test_workers_drop_values_nobody_needs_and_memory_returns_to_baseline(multicore):
    # Large arguments are cached on workers too (up to "shared_cache"; they are not kept
    # values): none beyond the latest, so that what is measured is the kept values.
    pool = multicore(shared_cache=0)
    frames = frames_of(FRAMES)
    expected = plain_pipeline(frames)
    for _ in range(2):  # warm: imports, and the allocator's pools at their working size
        assert pipeline(frames) == expected
    assert _released(pool)
    baseline = every_worker_keeps(pool)
    assert len(baseline) == 2 and all(n == 0 for n, _, _ in baseline.values()), baseline
    for _ in range(4):
        assert pipeline(frames) == expected
    assert _released(pool), pool.kept_values()
    after = every_worker_keeps(pool)
    for pid, (n, size, rss) in after.items():
        assert (n, size) == (0, 0), after   # every kept value was dropped
        # The runs made 4 x 4 x FRAMES frames of 10 MB on the workers (half each): kept,
        # that is 480 MB a worker; dropped, what remains is the allocator's slack.
        assert rss < baseline[pid][2] + FRAME * 8 * 6, (pid, baseline[pid], rss)


@pydron.functional
def slow_step(a, pause):
    time.sleep(pause)
    return a + 1.0


@pydron.functional
def report_pid(a):
    return os.getpid()


@pydron.schedule
def kill_chain(frames, pause):
    firsts = [slow_step(f, 0.0) for f in frames]       # kept on the workers
    pids = [report_pid(x) for x in firsts]              # where each lies
    gate = slow_step(frames[0], pause)                  # time to kill a holder
    return [total(slow_step(x, 0.0)) for x in firsts], pids, total(gate)


def test_a_worker_killed_while_holding_intermediate_values_loses_no_result(multicore):
    frames = frames_of(4)
    pool = multicore()
    pool.start()
    victim = pool.worker_pids()[0]
    done = {}

    def run():
        done["result"] = kill_chain(frames, 2.0)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    sums, pids, gate = done["result"]
    assert sums == [float((f + 2.0).sum()) for f in frames]
    assert gate == float((frames[0] + 1.0).sum())
    if victim in pids:
        assert pool.kept_values()["recomputed"] >= 1


def test_a_value_lost_before_the_caller_reads_it_is_computed_again(multicore):
    frames = frames_of(2)
    pool = multicore()
    remotes = {}
    for i, f in enumerate(frames):
        pool.submit(flat, (f,), {}, lambda ok, value, i=i: remotes.__setitem__(i, value),
                    keep=True)
    end = time.monotonic() + 30
    while len(remotes) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    assert all(type(r) is Remote for r in remotes.values())
    for pid in pool.worker_pids():
        os.kill(pid, signal.SIGKILL)       # every copy of both values is gone
    got = [float(remotes[i].get().sum()) for i in range(2)]
    assert got == [float((f * 1.5).sum()) for f in frames]
    assert pool.kept_values()["recomputed"] == 2


def test_a_value_whose_recomputation_fails_raises_for_its_reader(multicore):
    pool = multicore(max_retries=0)
    got = []
    pool.submit(flat, (frames_of(1)[0],), {}, lambda ok, v: got.append(v),
                keep=True)
    end = time.monotonic() + 30
    while not got and time.monotonic() < end:
        time.sleep(0.01)
    remote = got[0]
    value = pool._locality.values[remote.key]
    value.lineage = None       # as if its inputs could not be had any more
    for pid in pool.worker_pids():
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(pydron.WorkerLostError, match="cannot be computed again"):
        remote.get()


@pydron.functional
def slow_flat(a, pause, plus=0.0):
    time.sleep(pause)
    return a * 1.5 + plus


@pydron.functional
def both(a, b):
    return float(a.sum() - 2 * b.sum())


@pydron.schedule
def meet(x, y):
    a = slow_flat(x, 0.3)          # the two start at once, one on each worker
    b = slow_flat(y, 0.3, 1.0)
    return both(a, b)              # one of them must move


@pydron.schedule
def spread(frames):
    # Both workers compute; each then reads what the other kept (a transfer each way).
    kept = [flat(f) for f in frames]
    return [total(slow_step(k, 0.0)) for k in reversed(kept)], kept[0]


def test_the_trace_shows_transfers_with_bytes_and_endpoints(multicore, tmp_path):
    import json

    from pydron.observe import recording
    from pydron.observe.trace import write_trace
    multicore()
    frames = frames_of(4)
    with recording() as rec:
        sums, first = spread(frames)
    assert sums == [float((f * 1.5 + 1.0).sum()) for f in reversed(frames)]
    assert np.array_equal(first, frames[0] * 1.5)
    path = write_trace(rec, tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    moves = [e for e in events if e.get("cat") == "transfer"]
    fetches = [e for e in moves if e["name"] == "fetch"]
    assert fetches and all(e["args"]["to"] == "caller" for e in fetches)
    assert all(e["args"]["bytes"] >= FRAME * 8 for e in fetches)
    assert all("/multicore/" in e["args"]["from"] for e in fetches)
    for e in moves:
        assert e["ph"] == "X" and e["dur"] > 0 and e["args"]["bytes"] >= FRAME * 8
    with recording() as rec:
        x, y = frames[:2]
        assert meet(x, y) == both(x * 1.5, y * 1.5 + 1.0)
    path = write_trace(rec, tmp_path / "meet.json")
    events = json.loads(path.read_text())["traceEvents"]
    transfers = [e for e in events if e.get("cat") == "transfer" and e["name"] == "transfer"]
    assert transfers, [e.get("name") for e in events]
    for e in transfers:
        assert e["ph"] == "X" and e["dur"] > 0 and e["args"]["bytes"] >= FRAME * 8
        assert "/multicore/" in e["args"]["from"] and "/multicore/" in e["args"]["to"]
        assert e["args"]["from"] != e["args"]["to"]


# --------------------------------------------------------------------------- futures


def test_futures_passed_to_submit_keep_the_chain_on_the_workers(multicore):
    frames = frames_of(FRAMES)
    pool = multicore()
    with pydron.Executor() as ex:
        before = pool.bytes_received
        sums = []
        for f in frames:
            x = f
            for step in (dark, flat, smooth, clip):
                x = ex.submit(step, x)          # a future as the argument
            sums.append(ex.submit(total, x))
        assert [s.result() for s in sums] == plain_pipeline(frames)
        assert pool.bytes_received - before < 1 << 20, pool.kept_values()
        kept = ex.submit(flat, frames[0])
        assert np.array_equal(kept.result(), flat(frames[0]))   # result() fetches it
        assert pool.kept_values()["fetched_bytes"] >= FRAME * 8
        kept.result()[0] = -1e9        # the caller changes its copy: later calls see it
        assert ex.submit(total, kept).result() == total(kept.result())


class Refused(Exception):
    pass


@pydron.functional
def refuse(a):
    raise Refused(len(a))


def test_a_failed_or_cancelled_input_future_fails_its_readers(multicore):
    import concurrent.futures as cf
    multicore()
    frame = frames_of(1)[0]
    with pydron.Executor() as ex:
        reader = ex.submit(total, ex.submit(refuse, frame))
        with pytest.raises(Refused) as info:
            reader.result(timeout=60)
        assert info.value.args == (FRAME,)
        never = cf.Future()
        assert never.cancel()
        with pytest.raises(cf.CancelledError):
            ex.submit(total, never).result(timeout=60)
        plain = cf.Future()                       # any future: waited for
        waiting = ex.submit(total, plain)
        plain.set_result(np.ones(10))
        assert waiting.result(timeout=60) == 10.0


# --------------------------------------------------------------------------- tuples


@pydron.functional
def split(a):
    return a * 2.0, int(a.size), "label"


@pydron.schedule
def tuples(frames):
    out = []
    for f in frames:
        big, n, name = split(f)          # unpacked: big stays on its worker
        t = split(big)                   # read whole by plain code below
        u = t
        out.append((total(big), n, name, total(t[0]), t[1:], u is t, type(t).__name__))
    return out


def test_tuple_results_keep_their_large_items_and_read_as_tuples(multicore):
    frames = frames_of(4)
    pool = multicore()
    before = pool.bytes_received
    expected = []
    for f in frames:
        big, n, name = split(f)
        t = split(big)
        expected.append((total(big), n, name, total(t[0]), t[1:], True, "tuple"))
    assert tuples(frames) == expected
    # The second split's tuple is read by plain code (t[0], t[1:]): those frames come
    # back; the first's large item never does.
    received = pool.bytes_received - before
    assert 4 * FRAME * 8 <= received < 5 * FRAME * 8, received


def test_where_workers_cannot_reach_each_other_the_caller_relays(multicore, monkeypatch):
    """As for workers behind ssh tunnels or NAT: no peer address is given (the one thing
    changed here), so a worker asks the caller, which relays the holder's bytes as they
    came, without unpickling them."""
    from pydron.backend.engine import locality
    monkeypatch.setattr(locality.Locality, "sources", lambda self, call, proc: ())
    x, y = frames_of(2)
    pool = multicore()
    assert meet(x, y) == both(x * 1.5, y * 1.5 + 1.0)
    stats = pool.kept_values()
    assert stats["direct"] == 0 and stats["relayed"] >= 1, stats
    assert stats["relayed_bytes"] >= FRAME * 8 and stats["fetched_bytes"] == 0, stats


# --------------------------------------------------------------------------- the class
# Programs that read kept values in every way plain code can, with keep_min small so that
# every array here is kept: each is compared with its plain run.


@pydron.functional
def pair(a):
    return a + 1.0, a * 2.0


@pydron.functional
def nest(a):
    return (a, a + 3.0), a - 1.0


@pydron.functional
def bag(a):
    return {"a": a, "b": a + 1.0}


@pydron.functional
def named(a, b):
    return float(a[0] + b[-1])


def s_unpack(x):
    a, b = pair(x)
    return both(a, b), float(b.sum())


def s_whole_and_items(x):
    t = pair(x)
    a, b = t
    u = t
    return u is t, both(*t), float(a.sum()), len(t), type(t).__name__


def s_swapped(x):
    b, a = pair(x)
    return both(a, b)


def s_starred(x):
    a, *rest = pair(x)
    return float(a.sum()), len(rest), float(rest[0].sum())


def s_nested(x):
    (a, b), c = nest(x)
    return both(a, c), float(b.sum())


def s_subscript(x):
    return float(pair(x)[1].sum()), float(pair(x)[0][3])


def s_kwargs(x):
    return named(**bag(x)), sorted(bag(x))


def s_rebind_in_loop(x):
    a = x
    for _ in range(3):
        a, b = pair(a)
    return float(a.sum()), float(b.sum())


def s_list_of_tuples(x):
    out = []
    for a, b in [pair(x), pair(x + 1.0)]:
        out.append(both(a, b))
    return out


def s_failure_after(x):
    a, b = pair(x)
    if float(b[0]) > -1.0:
        raise ValueError(both(a, b))
    return 0


def s_mutated_by_plain_code(x):
    a, b = pair(x)
    a[0] = 100.0                       # plain code changes the fetched value
    return both(a, b), float(a[0])


def s_mutated_through_the_tuple(x):
    t = pair(x)
    t[0][1] = -7.0                     # plain code changes an item of the fetched tuple
    a, b = t
    return both(a, b), both(*t), float(a[1])


def s_read_then_passed_on(x):
    a, b = pair(x)
    first = float(a[0])                # fetched here; unchanged
    return first, both(a, b), both(b, a)


PROGRAMS = [s_mutated_through_the_tuple, s_read_then_passed_on,
            s_unpack, s_whole_and_items, s_swapped, s_starred, s_nested, s_subscript,
            s_kwargs, s_rebind_in_loop, s_list_of_tuples, s_failure_after,
            s_mutated_by_plain_code]


@pytest.fixture(scope="module")
def small_keep():
    backend.configure({"workers": [{"type": "multicore", "cores": 2}], "keep_min": 1024})
    yield backend.get_pool()
    backend.configure(None)


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except Exception as exc:
        return "raised", type(exc).__name__, str(exc)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
def test_kept_values_read_every_way_agree_with_the_plain_run(program, small_keep):
    x = np.arange(4096, dtype=float)
    expected = _outcome(program, x.copy())
    assert _outcome(pydron.schedule(program), x.copy()) == expected
    assert small_keep.kept_values()["values"] >= 0
