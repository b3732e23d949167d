"""The seed-system examples (examples/scoop_map.py, golemize_chunks.py, poolparty_pool.py,
cluster_workers_submit.py) run on local worker processes, agree with a plain sequential
run, and show the behaviour their peer's users expect (docs/explicit.md)."""
import os
import re
import subprocess
import sys

import pytest

from conftest_hosts import require_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYDRON_CONF", None)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines and lines[-1] == "results identical: yes", done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("args", [(), ("--workers", "2")])
def test_scoop_map(args):
    out = run_example("scoop_map.py", *args)
    # map_as_completed: the slow first task did not hold back the others.
    assert "the slow first item arrived after others: yes" in out
    # shared.setConst: one copy of the shared weights per worker, not one per task.
    copies, workers = map(int, re.search(r"(\d+) copies of the weights for 100 tasks on "
                                         r"(\d+) worker", out).groups())
    assert copies == workers


def test_golemize_chunks():
    require_module("numpy")
    out = run_example("golemize_chunks.py", "--workers", "2")
    lines = out.splitlines()
    # errors="return": the failed task's exception is printed at its position, between
    # the results of its neighbours.
    at = lines.index("item  13: ValueError: query has no finite component")
    assert lines[at - 1].startswith("item  12: nearest row ")
    assert lines[at + 1].startswith("item  14: nearest row ")
    # errors="raise": the results before it, then the exception at its position.
    assert 'errors="raise": 13 results, then ValueError raised at item 13' in lines


def test_poolparty_pool():
    out = run_example("poolparty_pool.py", "--processes", "2")
    assert "pool: pydron" in out
    # the failed apply_async task is recorded on its own; the other eleven complete.
    assert "apply_async:    11 fits through callback, 1 recorded by error_callback" in out
    assert "  task 7 recorded: ValueError: task 7: fit did not converge" in out


def test_poolparty_pool_runs_unchanged_on_multiprocessing():
    out = run_example("poolparty_pool.py", "--processes", "2", "--pool", "multiprocessing")
    assert "pool: multiprocessing.pool.Pool" in out


def test_cluster_workers_submit():
    out = run_example("cluster_workers_submit.py")
    # a completion callback for every job, the failed one included; a long-lived pool.
    assert "callbacks received: 40 of 40" in out
    assert "round 2: job 13 raised ArithmeticError: job 13: unlucky number" in out
    assert "round 2 started no new worker process (2 for both rounds): yes" in out
