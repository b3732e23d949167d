"""``python -m pydron``: config, explain, run, timeline and cache, each run as a user
runs it (a fresh interpreter, from another folder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pydron_cli(*args: str, cwd: Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYDRON_")}
    environ["PYTHONPATH"] = str(REPO)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "pydron", *args], capture_output=True,
                          text=True, cwd=cwd, env=environ, timeout=120)


def test_config_says_which_file_and_validates_it(tmp_path):
    (tmp_path / "pydron.conf").write_text(json.dumps(
        {"workers": [{"type": "threads", "count": 3}], "max_retries": 5,
         "trace": "t-{time}.json", "cache": {"path": "c", "max_size": "1GB"}}))
    done = pydron_cli("config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"configuration: {tmp_path / 'pydron.conf'}" in out
    assert "found by the search order" in out and "workers[0]: threads, 3 at once" in out
    assert "max_retries: 5" in out and "trace: t-{time}.json" in out
    assert "'max_size': '1GB'" in out and "progress: off" in out

    (tmp_path / "pydron.conf").write_text(json.dumps({"workers": [{"type": "slurm",
                                                                   "jobs": 0}]}))
    done = pydron_cli("config", cwd=tmp_path)
    assert done.returncode == 1
    assert "workers[0].jobs: expected an integer from 1 to 100000, found 0" in done.stderr

    done = pydron_cli("config", cwd=tmp_path / "..", env={"PYDRON_CONF": ""})
    assert done.returncode == 0 and "the default configuration" in done.stdout


def test_explain_a_function_of_a_file(tmp_path):
    (tmp_path / "pipe.py").write_text(textwrap.dedent("""
        import pydron

        @pydron.functional
        def f(x):
            return x + 1

        @pydron.schedule
        def run(xs):
            out = []
            for x in xs:
                out.append(f(x))
            return out
    """))
    done = pydron_cli("explain", "pipe.py:run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "f(" in done.stdout
    missing = pydron_cli("explain", "pipe.py:nothing", cwd=tmp_path)
    assert missing.returncode == 1 and "has no 'nothing'" in missing.stderr


_SCRIPT = """
import sys
import pydron

@pydron.functional
def twice(x):
    return 2 * x

@pydron.schedule
def total(n):
    s = 0
    for i in range(n):
        s += twice(i)
    return s

print("args", sys.argv[1:])
print("total", total(int(sys.argv[1])))
print("pool", type(pydron.backend.get_pool()).__name__)
"""


def test_run_a_script_with_workers_trace_and_cache_from_the_command_line(tmp_path):
    (tmp_path / "script.py").write_text(_SCRIPT)
    done = pydron_cli("run", "--workers", "threads:3", "--trace", "run-trace.json",
                      "--cache", "results", "script.py", "20", "--verbose", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "args ['20', '--verbose']" in done.stdout  # the script's own options pass
    assert f"total {sum(2 * i for i in range(20))}" in done.stdout
    assert "pool CachingPool" in done.stdout
    trace = json.loads((tmp_path / "run-trace.json").read_text())
    threads = [e for e in trace["traceEvents"] if e.get("name") == "thread_name"]
    assert len([e for e in trace["traceEvents"] if e["ph"] == "X"]) == 20
    assert 1 <= len(threads) <= 3 and all("threads thread" in e["args"]["name"]
                                          for e in threads)
    info = pydron_cli("cache", "info", "results", cwd=tmp_path)
    assert info.returncode == 0 and "20" in info.stdout, info.stdout
    again = pydron_cli("run", "--workers", "2", "--cache", "results", "script.py", "20",
                       cwd=tmp_path)
    assert again.returncode == 0 and f"total {sum(2 * i for i in range(20))}" in again.stdout
    cleared = pydron_cli("cache", "clear", "results", cwd=tmp_path)
    assert cleared.returncode == 0 and "removed 20" in cleared.stdout


def test_run_passes_the_scripts_exit_status_and_errors(tmp_path):
    (tmp_path / "fails.py").write_text("import sys\nsys.exit(3)\n")
    assert pydron_cli("run", "fails.py", cwd=tmp_path).returncode == 3
    done = pydron_cli("run", "--workers", "gpus:2", "fails.py", cwd=tmp_path)
    assert done.returncode == 1 and "--workers 'gpus:2'" in done.stderr
    done = pydron_cli("run", "nothere.py", cwd=tmp_path)
    assert done.returncode == 1 and "nothere.py: no such script" in done.stderr


def test_timeline_of_a_trace_file(tmp_path):
    (tmp_path / "script.py").write_text(_SCRIPT)
    assert pydron_cli("run", "--workers", "threads:2", "--trace", "t.json", "script.py",
                      "8", cwd=tmp_path).returncode == 0
    done = pydron_cli("timeline", "t.json", "-o", "t.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "t.html").read_text()
    assert 'class="pydron-row"' in page and "http://" not in page
