"""The differential cases of test_diff_exceptions.py and test_diff_output.py on the dask
pool (a real scheduler and two workers, conftest_dask.py): the result, the exception and
the printed output of each case under ``@schedule`` on Dask equal the plain function's.

PYTEST_DONT_REWRITE: the case functions use ``assert`` and must keep Python's own messages.
"""
import pytest

import pydron
import pydron.backend as backend
import test_diff_exceptions as exception_cases
import test_diff_output as output_cases
from diffcheck import configure_pool, run_case


@pytest.fixture(scope="module")
def on_dask(dask_cluster):
    """This module's cases run on the session's Dask cluster; the differential suite's
    usual pool (threads) comes back afterwards."""
    from pydron.backend.daskpool import DaskPool
    pydron.configure({"workers": [{"type": "dask", "address": dask_cluster.address}]})
    pool = backend.get_pool()
    assert isinstance(pool, DaskPool)
    yield dask_cluster
    assert backend.get_pool() is pool and pool.launches > 0  # the cases ran on Dask
    pydron.shutdown()
    configure_pool("threads")


pytestmark = pytest.mark.usefixtures("on_dask")


@pytest.mark.parametrize("fn,inst", [*exception_cases.CASES.params(),
                                     *exception_cases.POOL_CASES.params()])
def test_exceptions_on_dask(fn, inst):
    run_case(fn, inst)


@pytest.mark.parametrize("fn,inst", [*output_cases.CASES.params(),
                                     *output_cases.POOL_CASES.params()])
def test_output_on_dask(fn, inst):
    run_case(fn, inst)
