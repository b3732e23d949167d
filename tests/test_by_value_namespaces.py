"""Functions of the caller's ``__main__`` travel by value; on a worker they share one
namespace per module, so the ``multiprocessing`` idiom of an initializer that sets a global
for the mapped function works, while a global the caller rebinds between calls still
reaches the workers (pydron.backend.protocol.shipping, "By-value functions and their module's
namespace"). The programs run as scripts, so that their functions really are __main__'s."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import sys
import pydron

G = None
def init(value):
    global G
    G = value

def get_g(_):
    return G

if __name__ == "__main__":
    kind = sys.argv[1]
    conf = {"workers": [{"type": "multicore", "cores": 2}]} if kind == "multicore" else \
        {"workers": [{"type": "threads", "count": 2}]}
    with pydron.Pool(conf=conf, initializer=init, initargs=(42,)) as pool:
        print("pool", pool.map(get_g, range(6)))
    with pydron.Executor(conf=conf, initializer=init, initargs=(7,)) as ex:
        print("executor", list(ex.map(get_g, range(6))))
    pydron.configure(conf)
    for value in (1, 2, 3):
        G = value
        print("rebound", sorted(set(pydron.map(get_g, range(6), chunksize=1))))
"""


@pytest.mark.parametrize("kind", ["multicore", "threads"])
def test_initializer_globals_and_rebinding(tmp_path, kind):
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), kind], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "pool [42, 42, 42, 42, 42, 42]", done.stdout
    assert lines[1] == "executor [7, 7, 7, 7, 7, 7]", done.stdout
    assert lines[2:] == ["rebound [1]", "rebound [2]", "rebound [3]"], done.stdout


def test_results_loaded_in_the_caller_keep_a_namespace_of_their_own():
    """Outside a worker a by-value function still gets a fresh dict: loading one must
    never write into any of the caller's namespaces."""
    from pydron.backend.protocol import shipping
    namespace = {"__name__": "__main__", "X": 1}
    exec("def f():\n    return X\n", namespace)
    blob = shipping.cloud_dumps(namespace["f"])
    import pickle
    loaded = pickle.loads(blob)
    assert loaded() == 1
    assert loaded.__globals__ is not namespace
    assert loaded.__globals__ is not sys.modules["__main__"].__dict__
    again = pickle.loads(blob)
    assert again.__globals__ is not loaded.__globals__
