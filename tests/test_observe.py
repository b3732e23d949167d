"""Seeing runs: the progress line (in a real pseudo-terminal), the trace file (on real
worker processes and on ssh hosts), worker log records in the caller's handlers."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path


import pydron
import pydron.backend as backend
from pydron.backend.multicore import MulticorePool
from pydron.observe import recording
from pydron.observe.trace import trace_document, write_trace

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- progress

_SCRIPT = """
import sys, time
import pydron

@pydron.functional
def nap(x):
    time.sleep({seconds})
    return x

@pydron.schedule
def run(n):
    out = []
    for i in range(n):
        out.append(nap(i))
    return sum(out)

def items():  # a generator: the map's length is not known in advance
    yield from range({items})

assert run({calls}) == sum(range({calls}))
assert sum(pydron.map(nap, items())) == sum(range({items}))
print("done", flush=True)
"""


def run_script(tmp_path: Path, *, terminal: bool, env: dict[str, str] | None = None,
               calls: int = 30, items: int = 200, seconds: float = 0.05) -> str:
    """Run the script with stderr on a pseudo-terminal (``terminal``) or a pipe; the
    text written to stderr."""
    script = tmp_path / "progress_script.py"
    script.write_text(_SCRIPT.format(calls=calls, items=items, seconds=seconds))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYDRON_")}
    environ.update(env or {})
    environ["COLUMNS"] = "160"
    if not terminal:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              env=environ, timeout=120, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
        return done.stderr
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=child, env=environ, cwd=tmp_path)
    os.close(child)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(30) == 0
    assert proc.stdout.read().decode().strip() == "done"  # type: ignore[union-attr]
    return b"".join(chunks).decode(errors="replace")


def last_counts(text: str) -> list[str]:
    """The ``n/total calls`` figures the line showed, in order."""
    import re
    return re.findall(r"pydron: (\d+/\d+) calls", text)


def test_progress_line_on_a_terminal_counts_up_to_the_total(tmp_path):
    text = run_script(tmp_path, terminal=True)
    counts = last_counts(text)
    assert counts, text[-500:]
    # Everything (30 scheduled calls, then a 200-item map over a generator, chunked)
    # counts as the calls the program made: the last figure is exact.
    assert counts[-1] == "230/230", counts[-5:]
    done = [int(c.split("/")[0]) for c in counts]
    assert done == sorted(done)  # counts only go up
    assert "2 workers" in text and "queued" in text and "running" in text


def test_no_progress_on_a_pipe_unless_asked(tmp_path):
    assert not last_counts(run_script(tmp_path, terminal=False))
    asked = run_script(tmp_path, terminal=False, env={"PYDRON_PROGRESS": "1"})
    assert last_counts(asked)[-1] == "230/230"
    assert not last_counts(run_script(tmp_path, terminal=True, env={"PYDRON_PROGRESS": "0"}))


def test_a_run_shorter_than_a_second_prints_nothing(tmp_path):
    # On threads: worker processes take about a second to start on a loaded machine,
    # and calls waiting for them are a run longer than a second.
    conf = tmp_path / "pydron.conf"
    conf.write_text(json.dumps({"workers": [{"type": "threads", "count": 2}]}))
    text = run_script(tmp_path, terminal=True, calls=4, items=10, seconds=0.001,
                      env={"PYDRON_CONF": str(conf)})
    assert not last_counts(text), text


# --------------------------------------------------------------------------- trace


@pydron.functional
def square(x: int) -> int:
    time.sleep(0.01)
    return x * x


@pydron.schedule
def squares(n: int) -> int:
    out = []
    for i in range(n):
        out.append(square(i))
    return sum(out)


def check_trace(document: dict, calls: int, workers: int) -> list[dict]:
    """The document is trace-event JSON with one thread track per worker and one complete
    event per call; returns the call events."""
    text = json.dumps(document)  # JSON as it will be written
    events = json.loads(text)["traceEvents"]
    threads = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(threads) == workers, threads
    assert len({(e["pid"], e["tid"]) for e in threads}) == workers
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == calls
    for event in complete:
        assert {"name", "ts", "dur", "pid", "tid"} <= set(event)
        assert (event["pid"], event["tid"]) in {(e["pid"], e["tid"]) for e in threads}
        args = event["args"]
        for key in ("site", "arg_bytes", "result_bytes", "queued_ms", "transfer_ms",
                    "run_ms", "ok"):
            assert key in args, (key, args)
        assert args["run_ms"] >= 0 and args["queued_ms"] >= 0 and args["transfer_ms"] >= 0
    return complete


def test_trace_of_a_scheduled_run_on_worker_processes(tmp_path):
    pool = MulticorePool(2)
    backend.configure({"workers": [{"type": "multicore", "cores": 2}]})
    try:
        with recording() as rec:
            assert squares(20) == sum(i * i for i in range(20))
        path = write_trace(rec, tmp_path / "trace.json")
    finally:
        pool.shutdown()
        backend.configure(None)
    document = json.loads(path.read_text())
    calls = check_trace(document, calls=20, workers=2)
    assert {e["name"] for e in calls} == {"square"}
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                if "out.append(square(i))" in text)
    assert {e["args"]["site"] for e in calls} == {f"{__file__}:{line}"}
    assert all(e["args"]["run_ms"] >= 9 for e in calls)  # the 10 ms sleep ran on a worker
    assert document["otherData"]["calls"] == 20


@pydron.functional
def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError(f"no square for {x}")
    return x * x


@pydron.schedule
def squares_with_a_failure(n: int) -> int:
    out = []
    for i in range(n):
        out.append(square_or_fail(i))
    return sum(out)


def test_trace_marks_a_real_failed_call(tmp_path):
    """A call that raises on a worker process: its complete event says ``ok: false``
    with the error, and a ``failure`` instant event on the same worker's track names
    the same call and error."""
    backend.configure({"workers": [{"type": "multicore", "cores": 2}]})
    try:
        with recording() as rec:
            try:
                squares_with_a_failure(6)
            except ValueError as exc:
                assert str(exc) == "no square for 3"
            else:
                raise AssertionError("the failure did not reach the caller")
        path = write_trace(rec, tmp_path / "trace.json")
    finally:
        backend.configure(None)
    events = json.loads(path.read_text())["traceEvents"]
    failed = [e for e in events if e["ph"] == "X" and e["args"]["ok"] is False]
    assert len(failed) == 1, failed
    call = failed[0]
    assert call["name"] == "square_or_fail"
    assert "ValueError" in call["args"]["error"] and "no square for 3" in call["args"]["error"]
    markers = [e for e in events if e["ph"] == "i" and e["name"] == "failure"]
    assert len(markers) == 1, markers
    marker = markers[0]
    assert marker["cat"] == "failure"
    assert marker["args"] == {"call": call["args"]["call"], "error": call["args"]["error"]}
    assert (marker["pid"], marker["tid"]) == (call["pid"], call["tid"])
    tracks = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
              if e["name"] == "thread_name"}
    assert tracks[(call["pid"], call["tid"])].startswith("worker ")  # a worker process's
    assert marker["ts"] >= call["ts"]
    assert all(e["args"]["ok"] is True for e in events if e["ph"] == "X" and e is not call)


def test_trace_marks_retries_and_lost_workers(tmp_path):
    marker = tmp_path / "killed"

    def die_once(x, marker=str(marker)):
        import os
        import signal
        if x == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    pool = MulticorePool(2)
    try:
        with recording() as rec:
            with pydron.Executor(conf={"workers": [{"type": "multicore", "cores": 2}]}) as ex:
                assert list(ex.map(die_once, range(6))) == list(range(6))
        document = trace_document(rec)
    finally:
        pool.shutdown()
    names = [e["name"] for e in document["traceEvents"] if e["ph"] == "i"]
    assert "retry" in names and "worker lost" in names
    retry = next(e for e in document["traceEvents"] if e["name"] == "retry")
    assert "SIGKILL" in retry["args"]["why"]
    # The loss is marked on the track of the worker that was killed; a replacement (if it
    # connected in time to be seen) is a track of its own.
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in document["traceEvents"]
             if e["name"] == "thread_name"}
    lost = next(e for e in document["traceEvents"] if e["name"] == "worker lost")
    killed = retry["args"]["why"].split(" ")[1]  # "worker 0 was killed ..."
    assert names[(lost["pid"], lost["tid"])].startswith(f"worker {killed} (pid ")
    check_trace(document, calls=6, workers=len(names))


def test_trace_on_two_ssh_hosts(sshd, netns_host, ssh_home, tmp_path):
    from conftest_hosts import pin_host
    from test_explicit_ssh import where

    h2 = netns_host.host
    pin_host(ssh_home, sshd, h2)
    conf = {"workers": [{"type": "ssh", **sshd.entry(cores=2)},
                        {"type": "ssh", **h2.entry(cores=1)}]}
    with recording() as rec:
        with pydron.Executor(conf=conf) as ex:
            results = [f.result(timeout=60) for f in [ex.submit(where, i, 0.05)
                                                       for i in range(12)]]
    assert [r[0] for r in results] == list(range(12))
    document = trace_document(rec)
    check_trace(document, calls=12, workers=3)
    processes = {e["args"]["name"] for e in document["traceEvents"]
                 if e["ph"] == "M" and e["name"] == "process_name"}
    assert len(processes) == 2 and all(p.endswith("(ssh)") for p in processes), processes


def test_trace_file_from_the_configuration_is_written_at_exit(tmp_path):
    script = tmp_path / "traced.py"
    script.write_text(textwrap.dedent("""
        import pydron
        def double(x):
            return 2 * x
        print(sum(pydron.map(double, range(100), chunksize=10)))
    """))
    conf = tmp_path / "pydron.conf"
    conf.write_text(json.dumps({"workers": [{"type": "multicore", "cores": 2}],
                                "trace": str(tmp_path / "trace-{time}.json")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYDRON_")}
    env["PYDRON_CONF"] = str(conf)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == str(sum(range(0, 200, 2)))
    written = list(tmp_path.glob("trace-*.json"))
    assert len(written) == 1 and f"trace written to {written[0]}" in done.stderr
    document = json.loads(written[0].read_text())
    workers = sum(1 for e in document["traceEvents"] if e.get("name") == "thread_name")
    assert 1 <= workers <= 2  # a worker that connected after the last chunk has no track
    calls = check_trace(document, calls=10, workers=workers)
    assert {e["name"] for e in calls} == {"double"}
    assert sum(e["args"]["items"] for e in calls) == 100  # chunks of ten items


# --------------------------------------------------------------------------- worker logs


def log_and_square(x: int) -> int:
    logging.getLogger("pipeline.step").warning("frame %d looks odd", x)
    if x == 2:
        try:
            raise ValueError("bad frame")
        except ValueError:
            logging.getLogger("pipeline.step").exception("frame %d failed", x)
    logging.getLogger("pipeline.step").debug("not sent: below the caller's level")
    return x * x


def test_worker_log_records_reach_the_callers_handlers_tagged(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline"):
        with pydron.Executor(conf={"workers": [{"type": "multicore", "cores": 2}]}) as ex:
            futures = [ex.submit(log_and_square, i) for i in range(4)]
            assert [f.result(timeout=60) for f in futures] == [0, 1, 4, 9]
    mine = [r for r in caplog.records if r.name == "pipeline.step"]
    assert sorted(r.getMessage() for r in mine) == sorted(
        [f"frame {i} looks odd" for i in range(4)] + ["frame 2 failed"])
    for record in mine:
        assert record.pydron_worker.startswith("worker ") and "(pid " in record.pydron_worker
        assert record.pydron_call.startswith("log_and_square (call ")
        assert record.process != os.getpid()  # made in the worker process
        assert record.lineno > 0 and record.funcName == "log_and_square"
    failed = next(r for r in mine if r.getMessage() == "frame 2 failed")
    assert "ValueError: bad frame" in failed.exc_text
    assert not any("not sent" in r.getMessage() for r in caplog.records)


def test_a_worker_killed_does_not_lose_the_progress_counts(tmp_path):
    """The counts stay exact through a retry: a call run twice is one call."""
    def slow(x):
        import time
        time.sleep(0.2)
        return x

    pool = MulticorePool(2)
    try:
        with recording(keep_events=False) as rec:
            results = {}
            for i in range(6):
                pool.submit(slow, (i,), {}, lambda ok, v, i=i: results.setdefault(i, v))
            time.sleep(0.5)
            pids = [p.pid for p in pool._procs.values()]
            os.kill(pids[0], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while len(results) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
        counts = rec.counts()
    finally:
        pool.shutdown()
    assert sorted(results.values()) == list(range(6))
    assert (counts.submitted, counts.done, counts.running, counts.queued) == (6, 6, 0, 0)
    assert counts.retries >= 1
