"""The cloud reaper's log file cannot be redirected by another local user: it is created
in a private directory, never under a predictable name in the shared temporary
directory, and a symlink planted where it is to be created is refused, not followed."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time

import pytest

from pydron.backend.launchers import cloud_provider as cloud

ENTRY = {"provider": "ec2", "region": "us-east-1", "image": "ami-1", "size": "t3.micro",
         "idle_timeout": 3600}


def _log_of(proc) -> str:
    return proc.args[proc.args.index("--log") + 1]


def test_a_symlink_planted_at_the_old_predictable_name_is_not_followed(tmp_path):
    stamp = f"{time.time():.6f}"
    target = tmp_path / "created-through-the-symlink"
    planted = os.path.join(tempfile.gettempdir(), f"pydron-reaper-{os.getpid()}-{stamp}.log")
    os.symlink(target, planted)
    proc = None
    try:
        # A real detached reaper process; it sleeps an hour before touching any cloud.
        proc = cloud.start_reaper(ENTRY, stamp)
        logfile = _log_of(proc)
        assert not target.exists(), "the reaper's log followed a planted symlink"
        assert os.path.islink(planted)  # left alone
        directory = os.path.dirname(logfile)
        assert os.path.dirname(directory) == tempfile.gettempdir()
        assert os.path.basename(directory).startswith("pydron-reaper-")
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
        info = os.lstat(logfile)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert proc.poll() is None  # running, with its output going to that file
    finally:
        os.unlink(planted)
        if proc is not None:
            proc.kill()
            proc.wait(10)
            shutil.rmtree(os.path.dirname(_log_of(proc)), ignore_errors=True)


def test_a_name_planted_in_the_log_directory_is_refused(tmp_path, monkeypatch):
    # Even if the directory were not private, O_EXCL|O_NOFOLLOW refuses what is there.
    target = tmp_path / "victim"
    directory = tmp_path / "logs"
    directory.mkdir()
    os.symlink(target, directory / f"reaper-{os.getpid()}-123.0.log")
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: str(directory))
    with pytest.raises(FileExistsError):
        cloud.open_reaper_log("123.0")
    assert not target.exists()


def test_the_log_directory_is_removed_with_the_log_when_all_went_well(tmp_path):
    path, fd = cloud.open_reaper_log("1.0")
    os.close(fd)
    directory = os.path.dirname(path)
    assert os.path.isfile(path)
    # What the reaper does at the end of a clean run (no instances to destroy: the
    # in-process dummy driver, with nothing tagged).
    import io
    import json
    import sys
    stdin = sys.stdin
    sys.stdin = io.StringIO(json.dumps({"provider": "dummy", "image": "1", "size": "1"}))
    try:
        assert cloud._main(["reap", "--since", "1", "--after", "0", "--log", path]) == 0
    finally:
        sys.stdin = stdin
    assert not os.path.exists(path) and not os.path.exists(directory)
