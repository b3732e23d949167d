"""The graph model: a function translated into blocks of steps that read and write variables.

A step is one node of the dataflow graph; its input ports are the variables it reads, its
output ports the variables it writes, and the edges run from the last writer of a variable
to its readers. ``if`` and loops are steps that hold sub-blocks; the runtime refines them
(inlines the branch taken, unrolls iterations) once their test or next item is known.

The runtime instantiates blocks many times (once per loop iteration), so the model is kept
as plain tuples of names; ``to_networkx`` gives the same graph as a networkx DiGraph for
people and tools.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# Names of the variables the translator adds to carry control flow as data.
RETURN_FLAG = "_pd_ret"
RETURN_VALUE = "_pd_rv"


@dataclass(eq=False)
class Step:
    """One node of the graph template.

    ``reads`` are waited for before the step runs; ``carry`` are passed along without
    waiting (a refinement hands them to the steps it creates); ``writes`` get new values.
    ``may_sync`` is true if the step may turn out to be a sync point, which every later
    operation that reads mutable state has to wait for.
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    lineno: int
    may_sync: bool = False
    carry: tuple[str, ...] = ()
    nodes: tuple[Any, ...] = ()      # the statement(s) it runs (AST), for explain() and graph()

    @property
    def source(self) -> str:
        """The statements as text (printed on demand: only people read it)."""
        import ast
        parts = []
        for node in self.nodes:
            try:
                parts.append(ast.unparse(node))
            except Exception:
                parts.append(type(node).__name__)
        return "\n".join(parts)



@dataclass(eq=False)
class NativeStep(Step):
    """Plain Python statements run as one function on the caller's thread.

    ``fn(*values_of_reads)`` returns the values of ``writes`` as a tuple, or a ReturnSignal
    when the statements executed a ``return``.
    """

    fn: Optional[Callable[..., Any]] = None
    needs_cells: bool = False              # fn closes over the run's cells: bind per run
    sync_reasons: tuple[str, ...] = ()     # why this step is a sync point (a barrier)
    output_only: tuple[str, ...] = ()      # sync points that only write output: kept in
                                           # program order, but no barrier for computation
    shared_read: bool = False              # reads globals or cells a sync point could change
    receiver_checks: tuple[int, ...] = ()  # reads that must be builtin values for purity
    callback_checks: tuple[int, ...] = ()  # reads given to a pure builtin that may call or
                                           # iterate them: must be inert for purity
    inplace_checks: tuple[int, ...] = ()   # ``x += v`` targets: must be immutable, else sync
    returns: bool = False                  # may execute a ``return``
    signal_vars: tuple[str, ...] = ()      # loop flags it may set (part of writes)
    checked: Optional[Callable[[], Callable[..., Any]]] = None   # fn that checks for unbound
    plan: Optional[tuple[int, ...]] = None # a try's handle step: which reads its writes are
                                           # when nothing was raised (set by the runtime)
    unpack: Optional[tuple[int, ...]] = None  # exactly ``a, b, ... = r``: for each of its
                                           # writes, which item of its one read it binds



@dataclass(eq=False)
class CallStep(Step):
    """A call that may be dispatched to a worker: ``target = callee(args)``.

    ``callee`` is the object when it was resolved at translation (a global @functional
    function), else None and the callee is the first read. ``build_args`` maps the values
    of the argument reads to ``(args, kwargs)``; None means plain positional arguments.
    """

    target: Optional[str] = None
    callee: Any = None
    callee_name: str = ""
    build_args: Optional[Callable[..., Any]] = None
    col_offset: Optional[int] = None       # the call's columns on ``lineno``, when it sits
    end_col_offset: Optional[int] = None   # on that one line (traceback carets)
    frames: tuple[Any, ...] = ()           # comprehensions around the call: (frame name,
                                           # (line, end line, col, end col) of its call)



@dataclass(eq=False)
class Block:
    """A sequence of steps in program order."""

    steps: list[Step]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    may_sync: bool = False
    signals: frozenset[str] = frozenset()   # "return", "break", "continue" it may execute


@dataclass(eq=False)
class IfStep(Step):
    """``if test: body else: orelse`` refined at run time into the branch taken."""

    test: Optional[Callable[..., Any]] = None    # None: the truth of the single read
    body: Block = field(default_factory=lambda: Block([]))
    orelse: Block = field(default_factory=lambda: Block([]))



@dataclass(eq=False)
class LoopStep(Step):
    """A ``for`` or ``while`` loop, unrolled one iteration at a time at run time.

    For ``for``, the single read is the iterable and ``item`` the variable each item is
    bound to. For ``while``, ``test_block`` computes what ``test`` needs each iteration.
    ``break_var``/``continue_var`` are the flags the body sets; ``returns`` tells whether
    the body may return from the function.
    """

    kind: str = "for"
    item: str = ""
    body: Block = field(default_factory=lambda: Block([]))
    orelse: Block = field(default_factory=lambda: Block([]))
    test_block: Block = field(default_factory=lambda: Block([]))
    test: Optional[Callable[..., Any]] = None
    test_reads: tuple[str, ...] = ()
    break_var: Optional[str] = None
    continue_var: Optional[str] = None
    returns: bool = False
    iter_private: bool = False      # the body never names the iterable: fetch ahead freely
    speculate: bool = False         # the body may break or return and starts calls: later
                                    # iterations' calls start before that is decided



@dataclass(eq=False)
class TryStep(Step):
    """``try`` (or a lowered ``with``) whose body runs as graph.

    The body's nodes run in parallel; the earliest failure among them in program order is
    caught, the nodes after it in the body are dropped, and ``handle`` runs once every
    earlier node has finished: the statement's handlers, ``else`` and ``finally`` as plain
    code, with the caught exception (or None) as its input ``exc_var`` and the traceback and
    context a plain run would have given it as ``tb_var`` and ``ctx_var``. ``handle`` also
    passes every variable the body writes through, so that what it writes is what the
    step writes.
    """

    body: Block = field(default_factory=lambda: Block([]))
    handle: Optional["NativeStep"] = None
    exc_var: str = ""
    tb_var: str = ""
    ctx_var: str = ""
    kind: str = "try"               # "try" or "with" (for explain() and graph())
    plan: Any = None                # what the runtime works out once (see scheduler)


@dataclass(eq=False)
class Template:
    """A translated function: its top block and what the runtime needs to start it."""

    name: str
    filename: str
    block: Block
    params: tuple[str, ...]
    binder: Callable[..., tuple[Any, ...]]     # same signature as the function
    cells: tuple[str, ...]                     # locals living in cells
    guards: tuple[tuple[tuple[str, ...], Any], ...] = ()
    opaque_reason: str = ""        # non-empty: the whole function runs plainly, and why
    has_dispatch: bool = False     # false: nothing to parallelize, run the plain function
    normalized: Any = None         # the normalized function (AST)
    accumulators: tuple[str, ...] = ()  # local containers mutated without a barrier

    @property
    def normalized_source(self) -> str:
        """The normalized function as Python text, what the graph was built from."""
        import ast
        return ast.unparse(self.normalized) if self.normalized is not None else ""

    def to_networkx(self):  # -> networkx.DiGraph
        """The top block as a networkx DiGraph (see pydron.explain for the nested blocks)."""
        from pydron.dataflow.graph import block_graph
        return block_graph(self.block, self.params)


class ReturnSignal:
    """What a native step returns when it executed ``return value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Unbound:
    """The value of a variable that has no value (yet, or after ``del``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unbound>"


UNBOUND = _Unbound()
