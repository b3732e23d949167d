"""The session fixture that starts a real Dask cluster: ``dask scheduler`` and two
``dask worker`` processes (one thread each) on 127.0.0.1, stopped at the end of the session.

Loaded as a plugin by tests/conftest.py. It installs nothing: ``dask[distributed]`` is in
the test extra. Where it cannot be imported, the tests that need the cluster are skipped
with the reason -- except under ``CI=true``, where they fail (conftest_hosts.unavailable).
The workers import the tests' functions by reference, so they run with the repository
and tests/ on their PYTHONPATH, as a site's workers have the user's code installed.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest_hosts import unavailable

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DaskCluster:
    """A scheduler and its workers, as processes of this test session."""

    root: Path
    address: str = ""
    scheduler: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_seconds: float = 0.0

    def env(self) -> dict[str, str]:
        """The environment of the cluster's processes (and of client subprocesses)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.pop("PYDRON_CONF", None)
        return env

    def start(self) -> None:
        began = time.monotonic()
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.scheduler = self._spawn("scheduler", [
            "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
        for name in ("w1", "w2"):
            self.add_worker(name)
        self.client().close()  # waits for both workers
        self.startup_seconds = time.monotonic() - began

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        return subprocess.Popen([_dask_command(), *args], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env(), cwd=self.root, start_new_session=True)

    def add_worker(self, name: str, wait: bool = False) -> None:
        """Start ``dask worker`` ``name`` (a nanny and its worker process, one thread)."""
        self.workers[name] = self._spawn(name, [
            "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--name", name,
            "--no-dashboard", "--local-directory", str(self.root / name)])
        if wait:
            client = self.client(workers=len(self.workers))
            client.close()

    def stop_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        _stop(proc)

    def client(self, workers: int = 2):
        """A client of the cluster once ``workers`` workers are connected."""
        from distributed import Client
        client = Client(self.address, timeout=30, set_as_default=False)
        client.wait_for_workers(workers, timeout=90)
        return client

    def stop(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        if self.scheduler is not None:
            _stop(self.scheduler)


def _dask_command() -> str:
    found = shutil.which("dask", path=os.path.dirname(sys.executable) + os.pathsep +
                         os.environ.get("PATH", ""))
    if found is None:
        unavailable("the `dask` command (of dask[distributed]) is not on PATH")
    return found


def _stop(proc: subprocess.Popen) -> None:
    """End a process group: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> DaskCluster:
    """A scheduler and two one-thread workers on 127.0.0.1 for the whole session."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        unavailable(f"distributed cannot be imported ({exc}); it is in the test extra: "
                    "python -m pip install -e '.[test]'")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
