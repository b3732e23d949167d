"""Under ``CI=true`` a test whose real component is missing fails, with the reason;
elsewhere it is skipped (tests/conftest_hosts.py: ``unavailable``, ``require_module``).
Each case runs a real pytest session on a small test file."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

CASES = '''
from conftest_hosts import require_module, unavailable


def test_needs_a_server():
    unavailable("no frobnicator on this machine")
'''

MODULE_LEVEL = '''
from conftest_hosts import require_module

require_module("pydron_no_such_test_dependency")


def test_never_runs():
    pass
'''


def run_pytest(folder, source: str, ci: str | None) -> subprocess.CompletedProcess:
    path = folder / "test_case.py"
    path.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(path)], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_a_missing_component_fails_under_ci(tmp_path, ci):
    done = run_pytest(tmp_path, CASES, ci)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed" in done.stdout, done.stdout
    assert "CI=true and a real component is unavailable: no frobnicator" in done.stdout


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_a_missing_component_skips_elsewhere(tmp_path, ci):
    done = run_pytest(tmp_path, CASES, ci)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout and "no frobnicator" in done.stdout, done.stdout


def test_a_missing_test_dependency_at_module_level(tmp_path):
    skipped = run_pytest(tmp_path, MODULE_LEVEL, None)
    # A whole module skipped: pytest's exit status 5, "no tests ran".
    assert skipped.returncode == 5 and "1 skipped" in skipped.stdout, skipped.stdout
    assert "pydron_no_such_test_dependency cannot be imported" in skipped.stdout
    failed = run_pytest(tmp_path, MODULE_LEVEL, "true")
    assert failed.returncode != 0 and "error" in failed.stdout, failed.stdout
    assert "pydron_no_such_test_dependency cannot be imported" in failed.stdout
    assert "pip install -e '.[test]'" in failed.stdout
