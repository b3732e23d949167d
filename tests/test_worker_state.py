"""What a worker process keeps from one call to the next (documented in README.md,
"Workers and the wire", and docs/configuration.md): nothing is reset between calls, so
a call that changes process state changes it for every later call on that worker."""
from __future__ import annotations

import os
import resource
import signal
import threading

import pytest

from pydron.backend.multicore import MulticorePool

TIMEOUT = 30
MARK = "pydron-test-worker-state"


def change_everything(directory: str) -> int:
    global _SET_BY_A_CALL
    _SET_BY_A_CALL = 42
    import colorsys  # noqa: F401  (a module the worker had not imported)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 200), hard))
    os.chdir(directory)
    os.environ["PYDRON_TEST_STATE"] = "set"
    old = os.umask(0o077)
    assert old is not None
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    threading.Thread(target=threading.Event().wait, name=MARK, daemon=True).start()
    return os.getpid()


def look_at_everything() -> dict[str, object]:
    import sys
    umask = os.umask(0o022)
    os.umask(umask)
    return {
        "pid": os.getpid(),
        "global": globals().get("_SET_BY_A_CALL"),
        "module": "colorsys" in sys.modules,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "cwd": os.getcwd(),
        "env": os.environ.get("PYDRON_TEST_STATE"),
        "umask": umask,
        "sigusr1": signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
        "thread": any(t.name == MARK for t in threading.enumerate()),
    }


def run(pool: MulticorePool, fn, *args):
    done = threading.Event()
    box: list = []

    def on_done(ok, value):
        box.append((ok, value))
        done.set()
    pool.submit(fn, args, {}, on_done)
    assert done.wait(TIMEOUT)
    ok, value = box[0]
    if not ok:
        raise value
    return value


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux")
def test_a_worker_keeps_the_state_a_call_left(tmp_path):
    pool = MulticorePool(1)
    try:
        pid = run(pool, change_everything, str(tmp_path))
        seen = run(pool, look_at_everything)
        assert seen["pid"] == pid  # the same process ran both calls
        assert seen == {"pid": pid, "global": 42, "module": True,
                        "nofile": seen["nofile"], "cwd": str(tmp_path), "env": "set",
                        "umask": 0o077, "sigusr1": True, "thread": True}
        assert seen["nofile"] <= 200  # the resource limit stayed
        assert os.environ.get("PYDRON_TEST_STATE") is None  # the caller's is untouched
        assert os.getcwd() != str(tmp_path)
    finally:
        pool.shutdown(wait=True)
