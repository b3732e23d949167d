"""The session fixtures that start a real single-host Grid Engine (see sgehost.py).

Loaded as a plugin by tests/conftest.py. The cluster starts on first use (installing
Debian's gridengine packages with apt if they are missing), clients reach it through
``SGE_ROOT``, ``SGE_CELL``, ``SGE_QMASTER_PORT`` and ``SGE_EXECD_PORT`` (set for the
session), and it stops at the end of the session. Where it cannot start (not root, no
apt), the tests that need it are skipped with the reason -- except under ``CI=true``,
where they fail (conftest_hosts.unavailable).
"""
from __future__ import annotations

import os
import time

import pytest

from conftest_hosts import unavailable
from realhosts import Unavailable
from sgehost import SgeCluster

_VARIABLES = ("SGE_ROOT", "SGE_CELL", "SGE_QMASTER_PORT", "SGE_EXECD_PORT")


@pytest.fixture(scope="session")
def sge_cluster() -> SgeCluster:
    """sge_qmaster and sge_execd on this machine, in a private cell on free ports; every
    Grid Engine client of the session is pointed at it. ``sge_cluster.startup_seconds`` is
    how long the start took (without installing)."""
    began = time.monotonic()
    cluster = SgeCluster()
    try:
        cluster.start()
    except Unavailable as exc:
        unavailable(f"no Grid Engine cluster: {exc}")
    cluster.install_and_start_seconds = time.monotonic() - began  # type: ignore[attr-defined]
    saved = {k: v for k, v in os.environ.items() if k.startswith("SGE_") or k == "JOB_ID"}
    for key in saved:
        del os.environ[key]  # no enclosing job's variables
    env = cluster.env()
    os.environ.update({k: env[k] for k in _VARIABLES})
    yield cluster
    for key in _VARIABLES:
        os.environ.pop(key, None)
    os.environ.update(saved)
    cluster.stop()


@pytest.fixture
def sge_small_array(sge_cluster: SgeCluster) -> SgeCluster:
    """A second cluster, beside the session's, with ``max_aj_tasks 2``: a submission of
    more jobs must be split. Its clients need its :meth:`~SgeCluster.env` (the session's
    variables name the session's cluster)."""
    cluster = SgeCluster(max_aj_tasks=2)
    try:
        cluster.start()
    except Unavailable as exc:
        unavailable(f"no second Grid Engine cluster: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def sge(sge_cluster: SgeCluster) -> SgeCluster:
    """The session's cluster with an empty queue before and after the test."""
    sge_cluster.clear()
    yield sge_cluster
    sge_cluster.clear()
