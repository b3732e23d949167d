"""The ``python -m pydron`` command line.

* ``config``: the configuration in force, where it came from, validated;
* ``explain module:function`` (or ``file.py:function``): how a function runs in parallel;
* ``run script.py [args]``: a script, with ``--workers``, ``--progress``, ``--trace`` and
  ``--cache`` overriding ``pydron.conf``;
* ``timeline trace.json -o timeline.html|png``: a trace file drawn as a picture;
* ``cache info|clear PATH``: the result cache;
* ``cloud list|cleanup``: instances Pydron created.

``python -m pydron cloud list`` shows, and ``python -m pydron cloud cleanup`` destroys,
every instance Pydron tagged for the ``"cloud"`` entries of the ``pydron.conf`` in force
(found as a program would find it, or given with ``--config``). They exist for the case
the pool's own clean-up cannot cover -- a run killed with SIGKILL, a machine that lost
power -- so that nothing is left billing.

Exit status: 0 on success (also when there is nothing to list or destroy), 1 when an
instance could not be listed or destroyed or the configuration is unusable, 2 for a
usage error.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydron.errors import PydronError

__all__ = ["main"]


def _cloud_entries(path: str | None) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """``(source, [(key path, entry), ...])`` of the cloud entries in the configuration."""
    from pydron.backend.launchers.cloud_provider import entry_of
    from pydron.config import load_config

    config = load_config(path)
    entries = [(f"workers[{i}]", entry_of(spec)) for i, spec in enumerate(config.workers)
               if spec.type == "cloud"]
    return config.source, entries


def _nothing(source: str) -> str:
    if source == "<default>":
        return "no pydron.conf found, so there are no cloud entries"
    return f"no cloud entries in {source}"


def _describe(entry: dict[str, Any]) -> str:
    region = entry.get("region")
    return entry["provider"] + (f" {region}" if region else "")


def _cloud_list(args: argparse.Namespace) -> int:
    from pydron.backend.launchers.cloud_provider import (
        TAG_CREATED, TAG_IDLE, TAG_RUN, list_tagged, node_tags,
    )

    source, entries = _cloud_entries(args.config)
    if not entries:
        print(_nothing(source))
        return 0
    status = 0
    for where, entry in entries:
        try:
            nodes = list_tagged(entry, args.run)
        except PydronError as exc:
            print(f"pydron: {where}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{where} ({_describe(entry)}): {len(nodes)} instance(s) tagged by pydron")
        for node in nodes:
            tags = node_tags(node)
            ips = ",".join(list(node.public_ips or []) + list(node.private_ips or [])) or "-"
            print(f"  {node.id}  {node.name}  {node.state}  run={tags.get(TAG_RUN)}  "
                  f"created={tags.get(TAG_CREATED, '?')}  ips={ips}"
                  + (f"  idle-since={tags[TAG_IDLE]}" if TAG_IDLE in tags else ""))
    return status


def _cloud_cleanup(args: argparse.Namespace) -> int:
    from pydron.backend.launchers.cloud_provider import cleanup

    source, entries = _cloud_entries(args.config)
    if not entries:
        print(_nothing(source))
        return 0
    status = 0
    total = 0
    for where, entry in entries:
        failures: list[str] = []

        def progress(event: str, node: str, detail: str) -> None:
            if event == "destroyed":
                print(f"  destroyed {node}")
            elif event == "failed":
                failures.append(f"{node}: {detail}")

        try:
            done = cleanup(entry, args.run, progress=progress)
        except PydronError as exc:
            print(f"pydron: {where}: {exc}", file=sys.stderr)
            status = 1
            continue
        total += done
        print(f"{where} ({_describe(entry)}): destroyed {done} instance(s)")
        for failure in failures:
            print(f"pydron: {where}: {failure}", file=sys.stderr)
            status = 1
    print(f"destroyed {total} instance(s) in all")
    return status


# --------------------------------------------------------------------------- config


def _origin(source: str) -> str:
    """Why this file is the one in force."""
    import os

    from pydron.config import ENV_VAR
    if source == "<default>":
        return "no pydron.conf found: the default configuration"
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    return "found by the search order ($PYDRON_CONF, ./pydron.conf, ~/pydron.conf, " \
           "/etc/pydron.conf)"


def _config(args: argparse.Namespace) -> int:
    from pydron.config import load_config
    from pydron.observe import progress_wanted, trace_wanted

    config = load_config(args.config)
    print(f"configuration: {config.source}")
    print(f"  from: {_origin(config.source) if args.config is None else '--config'}")
    print(f"  valid: yes ({len(config.workers)} worker entr"
          f"{'y' if len(config.workers) == 1 else 'ies'}, {config.capacity} calls at once)")
    for i, spec in enumerate(config.workers):
        shown = repr(spec).split("options=", 1)[1][:-1]
        print(f"  workers[{i}]: {spec.type}, {spec.count} at once, options {shown}")
    for key in ("max_retries", "window", "call_timeout", "respawns_per_minute",
                "master_timeout", "max_frame", "prefetch_bytes", "shared_cache"):
        print(f"  {key}: {getattr(config, key)}")
    print(f"  progress: {'on' if progress_wanted(config) else 'off'}"
          f"{' (PYDRON_PROGRESS)' if 'PYDRON_PROGRESS' in __import__('os').environ else ''}")
    print(f"  trace: {trace_wanted(config) or 'off'}")
    cache = config.cache
    print(f"  cache: {dict(cache) if cache else 'off'}")
    return 0


# --------------------------------------------------------------------------- explain


def _load_function(target: str):  # noqa: ANN202
    """``module:function`` or ``path/to/file.py:function`` (dots reach into classes)."""
    import importlib
    import importlib.util
    import os

    where, _, name = target.rpartition(":")
    if not where or not name:
        raise PydronError(f"{target!r}: expected module:function or file.py:function")
    if where.endswith(".py") or os.sep in where:
        path = os.path.abspath(where)
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(path))[0], path)
        if spec is None or spec.loader is None:
            raise PydronError(f"{where}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(where)
    value = module
    for part in name.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise PydronError(f"{where} has no {name!r}") from None
    return value


def _explain(args: argparse.Namespace) -> int:
    import pydron
    print(pydron.explain(_load_function(args.target)))
    return 0


# --------------------------------------------------------------------------- run


def _workers(text: str) -> list[dict[str, Any]]:
    """``--workers 8`` (worker processes here), ``threads:4``, ``inline``."""
    kind, _, count = text.partition(":")
    if kind.isdigit() and not count:
        kind, count = "multicore", kind
    key = {"multicore": "cores", "threads": "count"}.get(kind)
    if kind == "inline" and not count:
        return [{"type": "inline"}]
    if key is None or not count.isdigit():
        raise PydronError(f"--workers {text!r}: expected a number of worker processes, "
                          "or threads:N, multicore:N or inline")
    return [{"type": kind, key: int(count)}]


def _run(args: argparse.Namespace) -> int:
    """Run a script as ``python script.py args`` would, under the overridden settings."""
    import dataclasses
    import os
    import runpy

    import pydron
    from pydron.config import load_config, parse_config

    config = load_config(args.config)
    changes: dict[str, Any] = {}
    if args.workers is not None:
        changes["workers"] = parse_config({"workers": _workers(args.workers)},
                                          "--workers").workers
    if args.progress is not None:
        changes["progress"] = args.progress
        os.environ["PYDRON_PROGRESS"] = "1" if args.progress else "0"
    if args.trace is not None:
        changes["trace"] = args.trace
        os.environ["PYDRON_TRACE"] = args.trace
    if args.cache is not None:
        changes["cache"] = {"path": os.path.expanduser(args.cache), "max_size": None}
    if changes:
        config = dataclasses.replace(config, **changes,
                                     source=f"{config.source} with command-line options")
    pydron.configure(config)
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        raise PydronError(f"{args.script}: no such script")
    sys.argv = [script, *args.args]
    sys.path.insert(0, os.path.dirname(script))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- timeline, cache


def _timeline(args: argparse.Namespace) -> int:
    from pydron.observe.timeline import main as timeline_main
    return timeline_main(args.rest)


def _cache(args: argparse.Namespace) -> int:
    import pydron.result_cache as cache
    if args.action == "info":
        print(cache.info_text(args.path))
    else:
        removed = cache.clear(args.path)
        print(f"removed {removed} stored result(s) from {args.path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pydron",
                                     description="Pydron's command line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    cloud = commands.add_parser(
        "cloud", help="instances that pydron created in a cloud",
        description="Find and destroy the instances pydron tagged, for the cloud entries "
                    "of pydron.conf ($PYDRON_CONF, ./pydron.conf, ~/pydron.conf, "
                    "/etc/pydron.conf).")
    actions = cloud.add_subparsers(dest="action", required=True)
    for name, func, text in (("list", _cloud_list, "list the instances pydron tagged"),
                             ("cleanup", _cloud_cleanup, "destroy the instances pydron tagged")):
        sub = actions.add_parser(name, help=text, description=text + ".")
        sub.add_argument("--config", metavar="PATH",
                         help="the pydron.conf to read (default: the one a program would use)")
        sub.add_argument("--run", metavar="RUN_ID",
                         help="only the instances of this run (default: of every run)")
        sub.set_defaults(func=func)

    config = commands.add_parser(
        "config", help="the configuration in force, where it came from, validated",
        description="Show the pydron.conf a program started here would use, validated.")
    config.add_argument("--config", metavar="PATH", help="a pydron.conf to check instead")
    config.set_defaults(func=_config)

    explain = commands.add_parser(
        "explain", help="how a function runs in parallel",
        description="Print pydron.explain() of a @schedule function.")
    explain.add_argument("target", metavar="module:function",
                         help="e.g. mypackage.pipeline:run or pipeline.py:run")
    explain.set_defaults(func=_explain)

    run = commands.add_parser(
        "run", help="run a script with settings overriding pydron.conf",
        description="Run SCRIPT with ARGS as `python SCRIPT ARGS` would, with the "
                    "options given here in place of pydron.conf's.")
    run.add_argument("--config", metavar="PATH", help="a pydron.conf to start from")
    run.add_argument("--workers", metavar="N|TYPE:N",
                     help="N worker processes here, or threads:N, multicore:N, inline")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="the progress line on stderr (default: when it is a terminal)")
    run.add_argument("--trace", metavar="FILE", help='write a trace file ("{time}" is '
                     "filled in)")
    run.add_argument("--cache", metavar="DIR", help="store results in DIR, and reuse them")
    run.add_argument("script")
    run.add_argument("args", nargs=argparse.REMAINDER)
    run.set_defaults(func=_run)

    timeline = commands.add_parser(
        "timeline", help="draw a trace file: workers as rows, calls as bars",
        description="Draw a trace file as a picture (.html, or .png with matplotlib).",
        add_help=False)
    timeline.add_argument("rest", nargs=argparse.REMAINDER)
    timeline.set_defaults(func=_timeline)

    cache = commands.add_parser("cache", help="the result cache",
                                description="Show or empty a result cache.")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("path", metavar="PATH")
    cache.set_defaults(func=_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="pydron: %(message)s")
    try:
        return int(args.func(args))
    except PydronError as exc:
        print(f"pydron: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pydron: interrupted", file=sys.stderr)
        return 130
