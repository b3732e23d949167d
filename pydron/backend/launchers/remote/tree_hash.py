"""Which files make up a pydron package, their hash, and its version: computed here and,
sent as source, on a remote host, so that both sides hash a tree the same way.

Run as a program (by :func:`pydron.backend.launchers.ssh_transport.ensure_pydron`, with the
remote interpreter and ``PYTHONPATH`` set or unset), it prints one line of JSON: ``null``
if that interpreter cannot import pydron, else ``{"root", "version", "hash"}`` of the
package it would import.
"""
import hashlib
import importlib.util
import json
import os
import re

VERSION_FILES = ("_version.py", "__init__.py")
"""Where a package's ``__version__`` is looked for, in order (an older pydron kept it in
``__init__.py``)."""


def pydron_tree(root):
    """Sorted (relative posix path, absolute path) of the package's .py files."""
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(here, name)
                found.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    return sorted(found)


def pydron_hash(root):
    """A short hash of the package's .py files: their paths, sizes and contents."""
    h = hashlib.sha256()
    for rel, path in pydron_tree(root):
        with open(path, "rb") as f:
            data = f.read()
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def pydron_version(root):
    """The package's ``__version__``, read from its source (not imported), or None."""
    for name in VERSION_FILES:
        try:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
        except OSError:
            continue
        if m:
            return m.group(1)
    return None


def probe():
    """What this interpreter would import as pydron: None, or its root, version, hash."""
    spec = importlib.util.find_spec("pydron")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    return {"root": root, "version": pydron_version(root), "hash": pydron_hash(root)}


if __name__ == "__main__":
    print(json.dumps(probe()))
