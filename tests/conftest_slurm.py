"""The session fixture that starts a real single-node SLURM cluster (see slurmhost.py).

Loaded as a plugin by tests/conftest.py. The cluster starts on first use (installing
slurm-wlm and munge with apt if they are missing), clients reach it through
``SLURM_CONF`` (set for the session), and it stops at the end of the session. Where it
cannot start (not root, no apt), the tests that need it are skipped with the reason --
except under ``CI=true``, where they fail (conftest_hosts.unavailable).
"""
from __future__ import annotations

import os
import time

import pytest

from conftest_hosts import unavailable
from realhosts import Unavailable
from slurmhost import SlurmCluster

@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """munged, slurmctld and slurmd on this machine; ``SLURM_CONF`` points every SLURM
    client of the session at it. ``slurm_cluster.startup_seconds`` is how long the start
    took (without installing)."""
    began = time.monotonic()
    cluster = SlurmCluster()
    try:
        cluster.start()
    except Unavailable as exc:
        unavailable(f"no SLURM cluster: {exc}")
    cluster.install_and_start_seconds = time.monotonic() - began  # type: ignore[attr-defined]
    saved = {k: v for k, v in os.environ.items() if k.startswith("SLURM_")}
    for key in saved:
        del os.environ[key]  # no enclosing allocation's variables
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    os.environ.pop("SLURM_CONF", None)
    os.environ.update(saved)
    cluster.stop()


@pytest.fixture
def slurm_small_array(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """A second cluster, beside the session's, with ``MaxArraySize=2`` (task ids 0 and 1):
    a submission of more jobs must be split. Its clients need its :meth:`~SlurmCluster.env`
    (``SLURM_CONF`` names the session's cluster)."""
    cluster = SlurmCluster(max_array_size=2)
    try:
        cluster.start()
    except Unavailable as exc:
        unavailable(f"no second SLURM cluster: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The session's cluster with an empty queue before and after the test."""
    slurm_cluster.clear()
    yield slurm_cluster
    slurm_cluster.clear()
