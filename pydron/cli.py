"""The ``python -m pydron`` command line.

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
