import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import diffcheck  # noqa: E402

pytest_plugins = [  # real sshd, netns, moto, SLURM, Grid Engine, Dask
    "conftest_hosts", "conftest_slurm", "conftest_sge", "conftest_dask"]


def pytest_addoption(parser):
    """``--gen-count N`` / ``--gen-seed S``: how many generated programs
    tests/test_diff_generated.py runs and from which seed (see tests/progen.py)."""
    group = parser.getgroup("pydron", "pydron's generated differential programs")
    group.addoption("--gen-count", type=int, default=None, metavar="N",
                    help="generated programs to run on threads and worker processes (2:1), "
                         "plus N/10 inline; default $PYDRON_GEN_COUNT or 3000")
    group.addoption("--gen-seed", type=int, default=None, metavar="S",
                    help="first seed of the generated programs; default $PYDRON_GEN_SEED or 0")


@pytest.fixture(scope="module", params=["threads", "multicore"])
def threads_pool(request):
    """The pool for a whole differential test module (used through ``pytestmark``): every
    case runs on 4 worker threads and again on 2 worker processes (the default kind).
    Module scope, so a module that reconfigured pydron before cannot leave the
    differential tests on another pool."""
    diffcheck.configure_pool(request.param)
    yield request.param


@pytest.fixture(params=["threads", "inline"])
def pool(request, threads_pool):
    """Parametrizes a test over the threads pool and the inline pool."""
    diffcheck.configure_pool(request.param)
    yield request.param
    if request.param != "threads":
        diffcheck.configure_pool("threads")
