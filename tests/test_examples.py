"""The examples in examples/ run and agree with their plain versions (small sizes)."""
import os
import subprocess
import sys

import pytest

from conftest_hosts import require_module

require_module("numpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script, args", [
    ("calibrate_images.py", ["--frames", "6", "--size", "128", "--quiet"]),
    ("parameter_sweep.py", ["--grid", "3", "--size", "48", "--quiet"]),
])
def test_example_agrees_with_plain_run(script, args):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "results identical: yes" in done.stdout
    assert "printed output identical: yes" in done.stdout
