"""Which imports make a worker ask the master for a module, and what a master that does
not answer costs: a real worker process, driven by a fake master over real TCP, that
counts the worker's MODULE_REQUEST frames.

The worker runs builtins (``eval``, ``exec``) sent by reference, so that it imports
nothing of the tests: every MODULE_REQUEST it sends comes from the import under test.
A fresh virtual environment is the setting in which this once went wrong: there nothing
had imported :mod:`subprocess` before a call did, its ``try: import msvcrt`` went to
the master, the test's fake master never answered, and the worker died.
"""
from __future__ import annotations

import pickle
import threading
import time
import uuid
from typing import Any

from pydron.backend import protocol as wire
from pydron.backend.engine.module_server import lookup
from pydron.backend.protocol.modules import provided_locally

from test_wire import FakeMaster

EVAL = (b"e" * 32, pickle.dumps(eval))
EXEC = (b"x" * 32, pickle.dumps(exec))


SILENT_LIMIT = 3.0  # the worker's wait for an answer in the silent-master test (s)


def started_worker() -> FakeMaster:
    """A real worker past its handshake with a fake master."""
    master = FakeMaster()
    nonce_m, nonce_w, _ = master.greet()
    master.sock.sendall(wire.frame(wire.WELCOME, wire.encode_welcome(
        master.secret, nonce_m, nonce_w, wire.local_info())))
    return master


def send_calls(master: FakeMaster, calls: list[tuple[tuple[bytes, bytes], tuple]]) -> None:
    """TASKS for ``calls`` (function, args), with call ids 1, 2, ..."""
    tasks = [(i, digest, blob, pickle.dumps((args, {})), 0)
             for i, ((digest, blob), args) in enumerate(calls, 1)]
    master.sock.sendall(wire.frame(wire.TASKS, pickle.dumps(tasks)))


def exchange(master: FakeMaster, count: int, answer: bool = True,
             timeout: float = 30.0) -> tuple[dict[int, tuple], list[str], dict[int, float]]:
    """Read frames until ``count`` results came: ``(results by call id, the names the
    worker asked for in order, when each result came, in seconds from now)``. Each
    request is answered "not found" when ``answer``, else ignored."""
    results: dict[int, tuple] = {}
    asked: list[str] = []
    when: dict[int, float] = {}
    start = time.monotonic()
    master.sock.settimeout(timeout)
    while len(results) < count:
        kind, payload = master.recv()
        if kind == wire.MODULE_REQUEST:
            name = payload.decode("utf-8")
            asked.append(name)
            if answer:
                master.sock.sendall(wire.frame(wire.MODULE_REPLY,
                                               wire.encode_module_reply(name, False)))
        elif kind == wire.RESULTS:
            for entry in pickle.loads(payload):
                results[entry[0]] = entry
                when[entry[0]] = time.monotonic() - start
    return results, asked, when


def value(entry: tuple) -> Any:
    """The value of a successful call's result entry."""
    assert entry[1], f"call {entry[0]} failed: {entry!r}"
    return pickle.loads(entry[2])


def leave(master: FakeMaster) -> None:
    master.sock.close()
    code, err = master.finish()
    assert code == wire.EXIT_MASTER_LOST, (code, err)


def test_the_standard_library_and_optional_platform_modules_are_never_asked_for():
    missing = f"pydron_nowhere_{uuid.uuid4().hex[:8]}"
    optional = ["msvcrt", "_winapi", "winreg", "_overlapped", "__pypy__", "cPickle",
                "xml.nowhere"]
    find = "__import__('importlib.util').util.find_spec"
    master = started_worker()
    try:
        send_calls(master, [
            (EVAL, (f"[{find}(n) is None for n in {optional!r}]",)),
            (EVAL, ("__import__('msvcrt')",)),          # subprocess's optional import
            (EVAL, (f"{find}({missing!r}) is None",)),
            (EVAL, ("__import__('importlib').invalidate_caches()",)),
            (EVAL, (f"{find}({missing!r}) is None",)),
            (EVAL, ("__import__('subprocess').__name__",)),
        ])
        results, asked, _ = exchange(master, 6)
        assert value(results[1]) == [True] * len(optional)
        assert not results[2][1] and "msvcrt" in repr(results[2])  # ModuleNotFoundError
        assert value(results[3]) is True and value(results[5]) is True
        assert value(results[6]) == "subprocess"
        # One round trip for the one name only the master could have had: not repeated
        # after invalidate_caches(), and none for any name the interpreter provides.
        assert asked == [missing]
    finally:
        leave(master)


LATE_FINDER = '''
import importlib.abc, importlib.util, sys

class Late(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == {name!r} else None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        module.VALUE = 42

sys.meta_path.append(Late())  # after the worker's MasterFinder
'''


def test_a_finder_added_after_the_master_finder_still_goes_first():
    name = f"pydron_late_{uuid.uuid4().hex[:8]}"
    master = started_worker()
    try:
        send_calls(master, [(EXEC, (LATE_FINDER.format(name=name), {})),
                            (EVAL, (f"__import__({name!r}).VALUE",))])
        results, asked, _ = exchange(master, 2)
        assert value(results[1]) is None and value(results[2]) == 42
        assert asked == []
    finally:
        leave(master)


def test_a_master_that_does_not_answer_fails_the_import_in_bounded_time(monkeypatch):
    monkeypatch.setenv("PYDRON_MODULE_REQUEST_TIMEOUT", str(SILENT_LIMIT))
    missing = f"pydron_nowhere_{uuid.uuid4().hex[:8]}"
    master = started_worker()
    stop = threading.Event()

    def heartbeats() -> None:  # alive, just not answering module requests
        while not stop.wait(0.5):
            try:
                master.sock.sendall(wire.frame(wire.HEARTBEAT))
            except OSError:
                return
    try:
        send_calls(master, [(EVAL, (f"__import__({missing!r})",)),
                            (EVAL, (f"__import__({missing!r})",)),
                            (EVAL, ("6 * 7",))])
        threading.Thread(target=heartbeats, daemon=True).start()
        results, asked, when = exchange(master, 3, answer=False,
                                        timeout=SILENT_LIMIT + 10)
        for call in (1, 2):
            text = repr(results[call])
            assert not results[call][1], text
            assert missing in text and "the master did not answer" in text, text
        assert SILENT_LIMIT - 0.5 <= when[1] <= SILENT_LIMIT + 5
        assert when[2] - when[1] < 1.0  # the silence is remembered: no second wait
        assert value(results[3]) == 42  # and the worker goes on with its next call
        assert asked == [missing]
    finally:
        stop.set()
        leave(master)


def test_the_master_never_serves_the_standard_library():
    for name in ("json", "json.decoder", "msvcrt", "subprocess", "xml.dom"):
        assert provided_locally(name), name
        assert lookup(name) == {"found": False}, name
    assert not provided_locally("pydron_nowhere") and not provided_locally("numpyx.sub")
