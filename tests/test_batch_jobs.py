"""The pieces every batch scheduler's jobs share (pydron.backend.launchers.batch_jobs):
the worker loop a job script runs, run here by real bash, and the settings checks."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pydron.backend.launchers import batch_jobs
from pydron.backend.protocol import frames
from pydron.errors import ConfigError

# A stand-in worker: reads the secret like the real one, then exits with the next status
# of a list in a file (one status per start), recording each start.
_FAKE_WORKER = """
import sys
secret = sys.stdin.readline().strip()
statuses, starts = sys.argv[1], sys.argv[2]
with open(statuses) as f:
    pending = f.read().split()
with open(starts, "a") as f:
    f.write(f"{sys.argv[3]} {secret}\\n")
status = int(pending.pop(0)) if pending else 0
with open(statuses, "w") as f:
    f.write(" ".join(pending))
if status < 0:
    import os, signal
    os.kill(os.getpid(), -status)
sys.exit(status)
"""


def run_loop(tmp_path: Path, statuses: list[int]) -> tuple[int, list[str]]:
    """Run ``pydron_worker`` once with workers that end with ``statuses`` in turn;
    returns the loop's status and the starts recorded."""
    (tmp_path / "fake.py").write_text(_FAKE_WORKER)
    (tmp_path / "statuses").write_text(" ".join(map(str, statuses)))
    (tmp_path / "secret").write_text("c0ffee\n")
    command = [sys.executable, str(tmp_path / "fake.py"), str(tmp_path / "statuses"),
               str(tmp_path / "starts"), f"--index={batch_jobs.INDEX}"]
    script = "\n".join([*batch_jobs.worker_loop(command, tmp_path / "secret"),
                        "PYDRON_INDEX=5 pydron_worker", 'exit "$?"'])
    done = subprocess.run(["bash", "-c", script.replace("sleep 1", "sleep 0.01")],
                          capture_output=True, text=True, timeout=60)
    starts = (tmp_path / "starts").read_text().splitlines()
    return done.returncode, starts


@pytest.mark.parametrize("final", [frames.EXIT_OK, frames.EXIT_REFUSED,
                                   frames.EXIT_BAD_START, 1, 3])
def test_a_worker_ends_for_good_when_told_to_go_refused_or_failing(tmp_path, final):
    status, starts = run_loop(tmp_path, [final])
    assert status == final and starts == ["--index=5 c0ffee"]


@pytest.mark.parametrize("again", [frames.EXIT_MASTER_LOST, frames.EXIT_CANCELLED,
                                   -signal.SIGKILL, -signal.SIGSEGV])
def test_a_worker_the_engine_ended_or_a_call_crashed_starts_again(tmp_path, again):
    status, starts = run_loop(tmp_path, [again, again, frames.EXIT_REFUSED])
    assert status == frames.EXIT_REFUSED  # the caller is gone: the loop ends
    assert starts == ["--index=5 c0ffee"] * 3  # same index, the secret each time


def test_restarts_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_jobs, "RESTARTS", 3)
    status, starts = run_loop(tmp_path, [frames.EXIT_CANCELLED] * 10)
    assert status == frames.EXIT_CANCELLED and len(starts) == 4


def test_settings_errors_name_the_entry_and_the_key():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Settings:
        jobs: int = 1
        setup: tuple[str, ...] = ()

    checks = {"jobs": batch_jobs.integer(1, 10), "setup": batch_jobs.lines}
    assert batch_jobs.settings_from_entry(Settings, {"type": "x", "jobs": 2, "setup": "a\nb"},
                                          checks, "x entry") == Settings(2, ("a", "b"))
    with pytest.raises(ConfigError, match=r"x entry: `jobs` must be an integer from 1 to 10,"
                                          r" not 11"):
        batch_jobs.settings_from_entry(Settings, {"jobs": 11}, checks, "x entry")
    with pytest.raises(ConfigError, match=r"x entry: unknown key `job` \(known: jobs, setup\)"):
        batch_jobs.settings_from_entry(Settings, {"job": 1}, checks, "x entry")
