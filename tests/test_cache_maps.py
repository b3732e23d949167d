"""The result cache under the explicit API: a map's items are cached one by one, with
the keys direct calls would have, so a map run again finds every item done before,
however it cuts its chunks this time."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import pydron
import pydron.backend as backend
from pydron.observe import recording


def record(path: str, x: int) -> int:
    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x == 13:
        raise LookupError(x)
    return x * x


def executions(path: Path) -> list[int]:
    return [int(v) for v in path.read_text().split()] if path.exists() else []


@pytest.fixture
def cached(tmp_path):
    def configure(kind: str = "threads") -> None:
        workers = ({"type": "threads", "count": 2} if kind == "threads"
                   else {"type": "multicore", "cores": 2})
        backend.configure({"workers": [workers], "cache": str(tmp_path / "cache")})
    yield configure
    backend.configure(None)


@pytest.mark.parametrize("kind", ["threads", "multicore"])
def test_a_map_run_again_runs_nothing_again_whatever_its_chunks(cached, tmp_path, kind):
    cached(kind)
    log = tmp_path / "runs"
    items = [x for x in range(60) if x != 13]
    first = list(pydron.map(record, [str(log)] * len(items), items, chunksize=7))
    assert first == [x * x for x in items]
    assert sorted(executions(log)) == items
    for chunksize in (1, 5, "auto"):
        again = list(pydron.map(record, [str(log)] * len(items), items, chunksize=chunksize))
        assert again == first
    assert sorted(executions(log)) == items  # nothing ran a second time
    # Direct calls of the same function and arguments share the stored results.
    with pydron.Executor() as ex:
        assert ex.submit(record, str(log), 5).result() == 25
    assert sorted(executions(log)) == items


def test_failed_items_are_not_stored_and_fail_again(cached, tmp_path):
    cached()
    log = tmp_path / "runs"
    for _ in range(2):
        got = []
        with pytest.raises(LookupError):
            for value in pydron.map(record, [str(log)] * 20, range(20), chunksize=4):
                got.append(value)
        assert got == [x * x for x in range(13)]
    counted = executions(log)
    assert counted.count(13) == 2  # the failing item ran each time
    assert all(counted.count(x) == 1 for x in range(13))  # the ones before it: once


def test_a_multiprocessing_style_pool_map_is_cached_item_by_item(cached, tmp_path):
    cached()
    log = tmp_path / "runs"
    args = [(str(log), x) for x in range(30) if x != 13]
    with pydron.Pool() as pool:
        first = pool.starmap(record, args, chunksize=4)
    with pydron.Pool() as pool:
        again = pool.starmap(record, args, chunksize=9)
    assert first == again == [x * x for _, x in args]
    assert sorted(executions(log)) == [x for _, x in args]


def test_cached_items_count_as_done_calls_in_the_progress_counts(cached, tmp_path):
    cached()
    log = tmp_path / "runs"
    list(pydron.map(record, [str(log)] * 12, range(12)))
    with recording(keep_events=False) as rec:
        assert list(pydron.map(record, [str(log)] * 20, [x for x in range(21) if x != 13])) \
            == [x * x for x in range(21) if x != 13]
    counts = rec.counts()
    assert (counts.submitted, counts.done, counts.cached) == (20, 20, 12)
    assert os.path.exists(tmp_path / "cache")
