"""The README and docs/ stay true: their examples run, and their sample output is real.

* every ```python block of README.md and docs/*.md runs (as a module file, so that
  ``@schedule`` can read its source), and every ```json block parses;
* every ```text block that starts with ``$ <command>`` is the command's real output: the
  command runs here, and each shown line (``...`` stands for lines left out) appears in its
  output in the same order, line numbers and all.
"""
import importlib.util
import json
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + [os.path.join("docs", n) for n in sorted(os.listdir(
    os.path.join(ROOT, "docs"))) if n.endswith(".md")]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(kind):
    found = []
    for doc in DOCS:
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        for m in FENCE.finditer(text):
            if m.group(1) == kind:
                line = text.count("\n", 0, m.start()) + 1
                found.append(pytest.param(m.group(2), id=f"{doc}:{line}"))
    return found


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_block_runs(code, tmp_path, monkeypatch):
    import pydron
    pydron.configure({"workers": [{"type": "threads", "count": 2}]})
    path = tmp_path / "readme_block.py"
    path.write_text(code)
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("readme_block", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A block that defines a pipeline also gets called, plainly and scheduled, on a
    # small input, and both runs must agree.
    if hasattr(module, "pipeline") and hasattr(module, "calibrate"):
        from conftest_hosts import require_module
        np = require_module("numpy")
        frames = [np.full((4, 4), float(i)) for i in range(3)]
        dark, flat = np.ones((4, 4)), np.full((4, 4), 2.0)
        got = module.pipeline(frames, dark, flat)
        want = module.pipeline.__wrapped__(frames, dark, flat)
        assert all((a == b).all() for a, b in zip(got, want))


@pytest.mark.parametrize("code", _blocks("json"))
def test_json_block_parses(code):
    json.loads(code)


@pytest.mark.parametrize("block", [b for b in _blocks("text")
                                   if b.values[0].startswith("$ ")])
def test_text_block_is_real_output(block):
    first, *shown = block.splitlines()
    command = first[2:]
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    real = done.stdout.splitlines()
    pos = 0
    for want in shown:
        if want.strip() in ("...", ""):
            continue
        pattern = re.escape(want.strip()).replace(re.escape("/.../"), ".*")
        for i in range(pos, len(real)):
            if re.fullmatch(pattern, real[i].strip()):
                pos = i + 1
                break
        else:
            raise AssertionError(f"{command!r}: line not in its output (in order): {want!r}\n"
                                 f"output:\n{done.stdout}")
