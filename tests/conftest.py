import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import diffcheck  # noqa: E402

pytest_plugins = ["conftest_hosts"]  # real sshd, network namespace, moto (tests/realhosts.py)


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
