"""Telling a person what Pydron made of a function: ``explain`` and ``graph``.

The report walks the function line by line: which calls go to workers, which operations
are sync points and why, and whether each loop's iterations can overlap. It is built from
the same template the runtime executes, so it cannot drift from what actually happens.
"""
from __future__ import annotations

import linecache
from typing import Any, Callable

import networkx as nx

from pydron.api import scheduled_state
from pydron.dataflow.graph import block_graph, to_dot
from pydron.dataflow.template import (Block, CallStep, IfStep, LoopStep, NativeStep,
                                      Template, TryStep)


def explain(func: Callable[..., Any]) -> str:
    """A readable report of how ``func`` (a @schedule function, or a plain one) runs."""
    state = scheduled_state(func)
    template: Template = state.get_template()
    head = f"{template.name}  ({template.filename})"
    if template.opaque_reason:
        return f"{head}\n  runs as the plain function: it {template.opaque_reason}.\n"
    if not template.has_dispatch:
        return (f"{head}\n  no call in it can be @functional, so it runs as the plain "
                f"function (no overhead).\n")
    notes: dict[int, list[str]] = {}
    _walk(template.block, notes)
    lines = [head]
    if template.accumulators:
        names = ", ".join(template.accumulators)
        lines.append(f"  local accumulators (mutated in order, never a barrier): {names}")
    for lineno in sorted(notes):
        text = linecache.getline(template.filename, lineno).rstrip() or "?"
        lines.append(f"  {lineno:4d} | {text}")
        for note in dict.fromkeys(notes[lineno]):
            lines.append(f"       -> {note}")
    lines.append("  note: on worker processes (multicore, ssh, cloud) arguments and results "
                 "are copies: a functional that returns its argument returns an equal object, "
                 "not the same one")
    return "\n".join(lines) + "\n"


def _walk(block: Block, notes: dict[int, list[str]]) -> None:
    for step in block.steps:
        add = notes.setdefault(step.lineno, []).append
        if isinstance(step, CallStep):
            if step.callee is not None:
                add(f"functional call {step.callee_name}(): runs on a worker as soon as its "
                    f"arguments exist (and, if one is a mutable object, after the sync "
                    f"points before it)")
            else:
                add(f"call {step.callee_name}(): the callee is known only at run time; on a "
                    f"worker if it is @functional, else a sync point")
        elif isinstance(step, NativeStep):
            for reason in step.sync_reasons:
                add(f"sync point: {reason}")
            for reason in step.output_only:
                add(f"in program order: {reason}; computation after it does not wait")
            if step.inplace_checks:
                names = ", ".join(step.reads[i] for i in step.inplace_checks)
                add(f"'+=' and friends on {names}: a plain update for numbers, strings and "
                    f"tuples; a sync point if it holds a mutable object (changed in place)")
            if step.callback_checks:
                names = ", ".join(step.reads[i] for i in step.callback_checks)
                add(f"{names} handed to a builtin that may call or iterate it: a sync "
                    f"point only if it turns out to be a callable or generator with side "
                    f"effects")
            if step.receiver_checks:
                names = ", ".join(step.reads[i] for i in step.receiver_checks)
                add(f"method calls on {names}: plain code if it is a builtin str, list, dict "
                    f"..., else a sync point")
        elif isinstance(step, IfStep):
            add("if: the branch taken is inlined once the test is known; later work that "
                "does not depend on it goes on meanwhile")
            _walk(step.body, notes)
            _walk(step.orelse, notes)
        elif isinstance(step, TryStep):
            if step.kind == "with":
                add("with: the body runs as graph, its calls overlap; __exit__ is called once "
                    "the body has finished, with the first exception in program order (if "
                    "any), and what comes after a failure in the body is dropped")
            else:
                add("try: the body runs as graph, its calls overlap; the handlers, else and "
                    "finally run once the body has finished, with the first exception in "
                    "program order (if any), and what comes after a failure in the body is "
                    "dropped")
            _walk(step.body, notes)
            for reason in step.handle.sync_reasons:
                add(f"sync point: {reason}")
        elif isinstance(step, LoopStep):
            add(_loop_note(step))
            _walk(step.test_block, notes)
            _walk(step.body, notes)
            _walk(step.orelse, notes)


def _loop_note(step: LoopStep) -> str:
    if step.kind == "while":
        base = ("while loop: each iteration starts once the previous one has computed the "
                "test; calls inside the iterations still overlap")
        if step.speculate:
            base += ("; the body may break or return: later iterations' calls start before "
                     "that is decided (speculation), what lies past the exit is dropped")
    elif (step.break_var or step.returns) and step.speculate:
        what = "break" if step.break_var else "return"
        base = (f"for loop: the body may {what}; later iterations' calls start before that "
                f"is decided (speculation, within the window, over an iterator whose "
                f"next() changes nothing), their other steps wait for it, and what lies "
                f"past the exit is dropped; over any other iterator (a file, a generator "
                f"handed in) iterations start one after another")
    elif step.break_var or step.returns:
        what = "break" if step.break_var else "return"
        base = (f"for loop: iterations start one after another, because the body may {what} "
                f"(the next item waits for that decision); calls inside still overlap")
    else:
        base = ("for loop: iterations run concurrently (a bounded window of them at a time) "
                "over a container, a range, a file or a generator that only reads; over an "
                "iterator with side effects each item is fetched as a sync point")
    carried = [v for v in step.body.reads if v in step.body.writes and not v.startswith("_pd_")
               and v != step.item]
    if carried:
        base += f"; carried from one iteration to the next: {', '.join(carried)}"
    if step.body.may_sync:
        base += "; its sync points run in program order"
    return base


def graph(func: Callable[..., Any]) -> tuple[nx.DiGraph, str]:
    """``(graph, dot)``: the function's dataflow graph as networkx and as DOT text."""
    template: Template = scheduled_state(func).get_template()
    g = block_graph(template.block, template.params)
    return g, to_dot(g, template.name)
