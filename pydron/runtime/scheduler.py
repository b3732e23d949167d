"""Running a graph template: the ready set, program order, refinement and failures.

One ``Run`` executes one call of a scheduled function on the caller's thread. Values flow
through ``Slot``s; a node runs once the slots it reads are filled. Each node has a tick, its
place in sequential execution, and one of three orderings, decided once its inputs are known:

* FREE: reads only immutable values, so no sync point can change what it computes: it runs
  as soon as its inputs exist (functional calls on numbers and strings, arithmetic ...);
* ORDERED: reads mutable state, so it waits until every earlier node that may be a sync
  point has finished;
* SYNC: a sync point. It waits until every earlier node has finished, and so runs exactly
  where sequential execution would run it.

``if`` nodes are replaced by the branch taken once their test is known; loops unroll one
iteration at a time as soon as the next item is known, at most ``window`` iterations ahead
of the oldest unfinished one. When a node fails, nodes later in program order are dropped,
earlier ones still finish, and the earliest failure is raised.
"""
from __future__ import annotations

import ast
import queue
import weakref
import sys
import types
from collections import deque
from heapq import heappop, heappush
from typing import Any, Callable, Optional

from pydron import callsite, purity, remote_value
from pydron.remote_value import Remote, materialize
from pydron.errors import CallTimeoutError, SerializationError, WorkerLostError
from pydron.dataflow.template import (RETURN_FLAG, RETURN_VALUE, UNBOUND, Block, CallStep,
                                      IfStep, LoopStep, NativeStep, ReturnSignal, Template,
                                      TryStep)

FREE, ORDERED, SYNC = 0, 1, 2

_PENDING = object()

_BUILTIN_VALUES = frozenset({str, bytes, int, float, complex, bool, list, dict, set,
                             frozenset, tuple, range, type(None), bytearray})
# Iterables whose iter() runs no user code.
_PLAIN_ITERABLES = frozenset({list, tuple, dict, set, frozenset, str, bytes, bytearray,
                              range, enumerate, zip, reversed, types.GeneratorType,
                              type({}.keys()), type({}.values()), type({}.items()),
                              type(iter([])), type(iter(())), type(iter(range(0)))})


class Slot:
    """One value of one variable: filled once, read by the nodes waiting on it."""

    __slots__ = ("value", "waiters")

    def __init__(self, value: Any = _PENDING) -> None:
        self.value = value
        self.waiters: Optional[list[Any]] = None


class Frame:
    """The nodes of one loop iteration, of a try body or of the whole run, counted to bound
    unrolling. ``region`` is the innermost try whose body the nodes belong to."""

    __slots__ = ("count", "parent", "loop", "region", "gate", "held")

    def __init__(self, parent: Optional["Frame"], loop: Optional["LoopRun"],
                 region: Optional["Region"] = None) -> None:
        self.count = 0
        self.parent = parent
        self.loop = loop
        # A speculative iteration's gate: True once the iterations before it have not left
        # the loop, False if one did (then its nodes are dropped); None: not speculative.
        self.gate: Optional[Slot] = None
        self.held: Optional[tuple["Node", BaseException]] = None   # its earliest failure
        self.region = region if region is not None else (
            parent.region if parent is not None else None)


class Region:
    """The body of one try (or with) being run: what it caught and what it wrote.

    A failure of a node of the body is caught here instead of ending the run: the earliest
    in program order wins, and every node of the body after it is dropped (its call
    cancelled). The handle node, at tick ``hi`` (after every node of the body), runs once
    all earlier nodes are done and gets each variable the body writes as the last node
    before the failure left it: ``history`` holds (tick, variable, slot) of each write of
    the body, compacted as the nodes before them finish, ``initial`` the slots from before
    the try.
    """

    __slots__ = ("hi", "parent", "tracked", "initial", "history", "limit", "fail_tick",
                 "exc", "node", "open", "done")

    def __init__(self, hi: tuple[int, ...], parent: Optional["Region"],
                 tracked: frozenset[str], initial: Any) -> None:
        self.hi = hi
        self.parent = parent
        self.tracked = tracked
        self.initial = initial      # () -> {variable: slot before the try}, on a failure
        self.history: list[tuple[tuple[int, ...], str, Slot]] = []
        self.limit = 64
        self.fail_tick: Optional[tuple[int, ...]] = None
        self.exc: Optional[BaseException] = None
        self.node: Optional["Node"] = None
        self.open = True
        self.done = Slot()          # filled once every node of the body is done

    def values_before(self, tick: tuple[int, ...]) -> dict[str, Any]:
        """Each tracked variable's value as the last write before ``tick`` left it."""
        best: dict[str, tuple[tuple[int, ...], Any]] = {}
        for t, var, slot in self.history:
            if t < tick and slot.value is not _PENDING:
                seen = best.get(var)
                if seen is None or t > seen[0]:
                    best[var] = (t, slot.value)
        values = {var: slot.value for var, slot in self.initial().items()}
        values.update((var, tv[1]) for var, tv in best.items())
        return values

    def compact(self, frontier: Optional[tuple[int, ...]]) -> None:
        """Forget writes that can no longer be the last before a failure: every node before
        ``frontier`` is done, so a failure comes after it, and of the writes before it only
        the last of each variable can matter."""
        keep: list[tuple[tuple[int, ...], str, Slot]] = []
        last: dict[str, tuple[tuple[int, ...], str, Slot]] = {}
        for entry in self.history:
            t, var, slot = entry
            if frontier is not None and t >= frontier:
                keep.append(entry)
            elif slot.value is not _PENDING:
                seen = last.get(var)
                if seen is None or t > seen[0]:
                    last[var] = entry
        self.history = list(last.values()) + keep
        self.limit = max(64, 2 * len(self.history))


class _Handle:
    """The node that runs a try's handlers (its ``step``) once the body has finished."""

    __slots__ = ("region", "step", "slots", "special")

    def __init__(self, region: Region, step: NativeStep, slots: list[Slot],
                 special: tuple[Optional[int], ...]) -> None:
        self.region = region
        self.step = step
        self.slots = slots
        self.special = special     # where step reads the exception, traceback, context


class Node:
    """A step instantiated at one tick."""

    __slots__ = ("tick", "step", "ins", "outs", "carry", "npend", "frame", "maysync", "done",
                 "callee")

    def __lt__(self, other: "Node") -> bool:      # never needed: ticks are unique
        return id(self) < id(other)


class LoopRun:
    """The state of one loop being unrolled."""

    __slots__ = ("step", "it", "env", "outs", "k", "live", "parked", "tick", "frame",
                 "fetch", "maysync", "spec", "gate")


class _Gate:
    """Decides whether a speculative iteration happens: once the iteration before it has
    set its break and return flags (``flags``) and its own gate (``prev``) is open. Closing
    ends the loop with ``snapshot``, the variables as that iteration left them; ``end``: no
    iteration follows (the items ran out), so opening ends the loop normally."""

    __slots__ = ("loop", "gate", "prev", "flags", "snapshot", "frame", "end")

    def __init__(self, loop: LoopRun, gate: Slot, prev: Slot, flags: list[Slot],
                 snapshot: dict[str, Slot], frame: Frame) -> None:
        self.loop = loop
        self.gate = gate
        self.prev = prev
        self.flags = flags
        self.snapshot = snapshot
        self.frame = frame
        self.end = False


class _Decide:
    """Marks the node that tests a while loop's condition (its ``step``)."""

    __slots__ = ("loop",)

    def __init__(self, loop: LoopRun) -> None:
        self.loop = loop


class Run:
    """Executes one call of a translated function."""

    def __init__(self, template: Template, pool: Any, window: int,
                 cells: dict[str, types.CellType]) -> None:
        self.template = template
        self.pool = pool
        self.window = window
        self.cells = cells
        self.bound: dict[tuple[int, Any], Callable[..., Any]] = {}
        self.ready: deque[Node] = deque()
        # Nodes cleared to run by recheck(). They run from the loop in execute(), never from
        # inside the scheduler's own ``except`` blocks (a failure being recorded, a loop's
        # StopIteration): user code run there would get that exception as its __context__.
        self.runnable: deque[Node] = deque()
        self.unfinished: list[tuple[tuple[int, ...], Node]] = []
        self.maysync: list[tuple[tuple[int, ...], Node]] = []
        self.wait_sync: list[tuple[tuple[int, ...], Node]] = []
        self.wait_ordered: list[tuple[tuple[int, ...], Node]] = []
        self.inflight: dict[Node, Any] = {}
        self.completions: queue.SimpleQueue = queue.SimpleQueue()
        self.fail_tick: Optional[tuple[int, ...]] = None
        self.fail_exc: Optional[BaseException] = None
        self.fail_node: Optional[Node] = None
        self.root = Frame(None, None)
        self.func: Any = None
        # A pool that may leave large results on its workers hands back Remotes for them;
        # only functional calls of that pool take a Remote as it is (see consider()).
        # (Asked of the pool's class: a wrapper forwarding attributes to the pool it wraps,
        # as the result cache's does, must say so itself.)
        self.keep = bool(getattr(type(pool), "keeps_values", False))

    # -- building --------------------------------------------------------------------------
    def instantiate(self, block: Block, base: tuple[int, ...], env: dict[str, Slot],
                    frame: Frame, offset: int = 0) -> None:
        for j, step in enumerate(block.steps, offset):
            self.create(step, base + (j,), env, frame)

    def create(self, step: Any, tick: tuple[int, ...], env: dict[str, Slot],
               frame: Frame) -> Node:
        node = Node()
        node.tick = tick
        node.step = step
        node.frame = frame
        node.done = False
        frame.count += 1
        get = env.get
        ins = [get(v, _UNBOUND_SLOT) for v in step.reads]
        node.ins = ins
        node.carry = [get(v, _UNBOUND_SLOT) for v in step.carry] if step.carry else None
        outs = []
        for v in step.writes:
            slot = Slot()
            env[v] = slot
            outs.append(slot)
        node.outs = outs
        if frame.region is not None and type(step) in _LEAF_STEPS:
            self._record(frame.region, tick, step.writes, outs)
        self._wire(node, ins, step.may_sync)
        return node

    def _record(self, region: Optional[Region], tick: tuple[int, ...],
                names: tuple[str, ...], slots: list[Slot]) -> None:
        """Note writes of a try body (and of every try around it) for Region.values_before."""
        while region is not None:
            tracked = region.tracked
            history = region.history
            for var, slot in zip(names, slots):
                if var in tracked:
                    history.append((tick, var, slot))
            if len(history) > region.limit:
                heap = self.unfinished
                while heap and heap[0][1].done:
                    heappop(heap)
                region.compact(heap[0][0] if heap else None)
            region = region.parent

    def _wire(self, node: Node, ins: list[Slot], may_sync: bool) -> None:
        pending = 0
        for slot in ins:
            if slot.value is _PENDING:
                if slot.waiters is None:
                    slot.waiters = [node]
                else:
                    slot.waiters.append(node)
                pending += 1
        node.npend = pending
        heappush(self.unfinished, (node.tick, node))
        node.maysync = may_sync
        if may_sync:
            heappush(self.maysync, (node.tick, node))
        if not pending:
            self.ready.append(node)

    def resolve(self, slot: Slot, value: Any) -> None:
        slot.value = value
        waiters = slot.waiters
        if waiters:
            slot.waiters = None
            ready = self.ready
            for w in waiters:
                if type(w) is Slot:
                    self.resolve(w, value)
                else:
                    w.npend -= 1
                    if not w.npend:
                        ready.append(w)

    def forward(self, src: Slot, dst: Slot) -> None:
        if src.value is _PENDING:
            if src.waiters is None:
                src.waiters = [dst]
            else:
                src.waiters.append(dst)
        else:
            self.resolve(dst, src.value)

    # -- the loop ----------------------------------------------------------------------------
    def execute(self) -> None:
        """Run until every node before the earliest failure is done."""
        ready = self.ready
        runnable = self.runnable
        completions = self.completions
        try:
            while True:
                while ready or runnable:
                    while runnable:
                        self.run(runnable.popleft())
                    if ready:
                        self.consider(ready.popleft())
                if not self.inflight:
                    break
                try:
                    item = completions.get(timeout=0.5) if not ready else completions.get_nowait()
                except queue.Empty:
                    continue
                self.complete(*item)
                while True:
                    try:
                        item = completions.get_nowait()
                    except queue.Empty:
                        break
                    self.complete(*item)
        except BaseException:
            self.cancel_all()
            raise
        if self.fail_exc is None:
            self._check_finished()

    def _check_finished(self) -> None:
        stuck = [n for _, n in self.unfinished if not n.done]
        if stuck:
            first = min(stuck, key=lambda n: n.tick)
            raise RuntimeError(
                f"pydron internal error: {len(stuck)} steps of {self.template.name} never "
                f"ran (first: line {getattr(first.step, 'lineno', '?')}, "
                f"{type(first.step).__name__}); please report this")

    def cancel_all(self) -> None:
        for node, handle in list(self.inflight.items()):
            try:
                self.pool.cancel(handle)
            except Exception:
                pass
        self.inflight.clear()

    def complete(self, node: Node, ok: bool, value: Any) -> None:
        if node not in self.inflight:
            return                     # cancelled, or dropped after an earlier failure
        del self.inflight[node]
        if ok:
            if type(value) is Remote:
                _prefetch_for_plain_readers(node.outs, value)
            for slot in node.outs:
                self.resolve(slot, value)
            self.finish(node)
        else:
            self.fail(node, value)

    def on_done(self, node: Node) -> Callable[[bool, Any], None]:
        put = self.completions.put
        return lambda ok, value: put((node, ok, value))

    # -- ordering ------------------------------------------------------------------------------
    def consider(self, node: Node) -> None:
        """A node whose inputs are all there: run it now or queue it for its turn."""
        if node.done:
            return
        if self.fail_tick is not None and node.tick > self.fail_tick:
            node.done = True          # after the failure in program order: never runs
            return
        if remote_value._live and type(node.step) is not CallStep:
            if type(node.step) is NativeStep and node.step.unpack is not None and \
                    self._unpack_parts(node):
                return
            _materialize_ins(node)
        kind = self.classify(node)
        gate = node.frame.gate
        if gate is not None and gate.value is not True and not _speculative(node, kind):
            self._park(node, gate)    # until the iterations before it have not broken off
            return
        # A node classified FREE or ORDERED is no sync point itself, so later work need not
        # wait for it; a step that creates nodes (an if, a loop, a try, a loop continuation,
        # a while test) stands for the nodes it will create, which may hold sync points,
        # and stays a possible sync point until it has run, waiting for its turn or not.
        if node.maysync and kind != SYNC and type(node.step) not in _CREATING_STEPS:
            node.maysync = False
        if kind == FREE:
            self.run(node)
        elif kind == ORDERED:
            if self._no_earlier_sync(node.tick):
                self.run(node)
            else:
                heappush(self.wait_ordered, (node.tick, node))
        else:
            if self._is_first(node):
                self.run(node)
            else:
                heappush(self.wait_sync, (node.tick, node))

    def _unpack_parts(self, node: Node) -> bool:
        """``a, b = t`` where ``t`` is a tuple whose large items stay on workers: bind the
        items as they are (unpacking a tuple runs no user code and sees nothing a sync
        point could change, so it need not wait for its turn)."""
        value = node.ins[0].value
        order = node.step.unpack
        if type(value) is not Remote or value.parts is None or \
                len(value.parts) != len(order):
            return False
        for slot, index in zip(node.outs, order):
            self.resolve(slot, value.parts[index])
        self.finish(node)
        return True

    def _park(self, node: Node, slot: Slot) -> None:
        node.npend = 1
        if slot.waiters is None:
            slot.waiters = [node]
        else:
            slot.waiters.append(node)

    def _no_earlier_sync(self, tick: tuple[int, ...]) -> bool:
        heap = self.maysync
        while heap and (heap[0][1].done or not heap[0][1].maysync):
            heappop(heap)
        return not heap or heap[0][0] >= tick

    def _is_first(self, node: Node) -> bool:
        heap = self.unfinished
        while heap[0][1].done:
            heappop(heap)
        return heap[0][1] is node

    def recheck(self) -> None:
        """Something finished: queued nodes may have become first in line."""
        waiting = self.wait_sync
        while waiting:
            node = waiting[0][1]
            if node.done:
                heappop(waiting)
            elif self._is_first(node):
                heappop(waiting)
                self.runnable.append(node)
                break           # the next one can only be first once this one has run
            else:
                break
        waiting = self.wait_ordered
        while waiting:
            tick, node = waiting[0]
            if node.done:
                heappop(waiting)
            elif self._no_earlier_sync(tick):
                heappop(waiting)
                self.runnable.append(node)
            else:
                break

    def finish(self, node: Node) -> None:
        node.done = True
        # A finished node reads nothing more: letting go of its inputs now frees values
        # (and releases values kept on workers) without waiting for the garbage
        # collector to find the run's cycles.
        node.ins = _NO_SLOTS
        heap = self.unfinished
        while heap and heap[0][1].done:      # keep the heaps as small as the work in flight
            heappop(heap)
        heap = self.maysync
        while heap and (heap[0][1].done or not heap[0][1].maysync):
            heappop(heap)
        frame = node.frame
        frame.count -= 1
        while not frame.count and frame.parent is not None:
            loop = frame.loop
            if loop is not None:
                loop.live -= 1
                parked = loop.parked
                if parked is not None and loop.live < self.window:
                    loop.parked = None
                    self.ready.append(parked)
            else:                         # the frame of a try body: its handle's turn
                self.resolve(frame.region.done, True)
            frame = frame.parent
            frame.count -= 1
        if self.wait_sync or self.wait_ordered:
            self.recheck()

    def fail(self, node: Node, exc: BaseException) -> None:
        frame = node.frame
        if frame.gate is not None and frame.gate.value is not True:
            # A speculative iteration's failure counts only if the iteration happens: held
            # (the node stays unfinished) until its gate opens, dropped if it closes.
            if frame.held is None or node.tick < frame.held[0].tick:
                frame.held = (node, exc)
            return
        region = frame.region
        while region is not None and not region.open:
            region = region.parent
        if region is not None:
            self.catch(region, node, exc)
            return
        if self.fail_tick is None or node.tick < self.fail_tick:
            self.fail_tick = node.tick
            self.fail_exc = exc
            self.fail_node = node
            for other, handle in list(self.inflight.items()):
                if other.tick > node.tick:
                    del self.inflight[other]
                    other.done = True
                    try:
                        self.pool.cancel(handle)
                    except Exception:
                        pass
        self.finish(node)

    def catch(self, region: Region, node: Node, exc: BaseException) -> None:
        """A node of a try body failed: the earliest such failure in program order is the
        one the handlers see; the body's nodes after it never run (or are cancelled)."""
        if region.fail_tick is not None and node.tick > region.fail_tick:
            self.finish(node)             # after the body's first failure: never happened
            return
        region.fail_tick, region.exc, region.node = node.tick, exc, node
        self.finish(node)
        self._drop(node.tick, region.hi)

    def _drop(self, lo: tuple[int, ...], hi: tuple[int, ...],
              also: Optional[Node] = None) -> None:
        """The unfinished nodes between ticks ``lo`` and ``hi`` (and ``also``) will never
        run: their calls cancelled, their frames counted down."""
        dead = [n for t, n in self.unfinished if not n.done and lo < t < hi]
        if also is not None:
            dead.append(also)
        inflight = self.inflight
        for other in dead:
            if other.done:
                continue
            if other in inflight:
                handle = inflight.pop(other)
                try:
                    self.pool.cancel(handle)
                except Exception:
                    pass
            self.finish(other)

    # -- classification --------------------------------------------------------------------------
    def classify(self, node: Node) -> int:
        step = node.step
        t = type(step)
        if t is NativeStep:
            if step.sync_reasons or step.output_only:
                return SYNC
            ins = node.ins
            for i in step.receiver_checks:
                if type(ins[i].value) not in _BUILTIN_VALUES:
                    return SYNC
            for i in step.callback_checks:
                if not purity.is_inert(ins[i].value):
                    return SYNC
            for i in step.inplace_checks:
                if not purity.is_immutable(ins[i].value):
                    return SYNC
            if step.shared_read:
                return ORDERED
            return FREE if purity.all_immutable([s.value for s in ins]) else ORDERED
        if t is CallStep:
            values = [s.value for s in node.ins]
            if step.callee is not None:
                callee = step.callee
                kind = purity.DISPATCH
            else:
                callee = materialize(values.pop(0))
                kind = purity.call_kind(callee)
            if kind != purity.DISPATCH and remote_value._live:
                values = [materialize(v) for v in values]  # run here: plain code reads them
            node.callee = (callee, kind, values)
            for value in values:
                if value is UNBOUND:
                    return FREE           # run_call raises the UnboundLocalError
            if kind == purity.SYNC:
                return SYNC
            # The callee is read too: a method bound to a mutable object reads that object.
            return FREE if purity.all_immutable(values) and purity.is_immutable(callee) \
                else ORDERED
        if t is LoopRun:
            if step.step.kind == "while" or step.fetch == purity.FETCH_FREE:
                return FREE
            if step.fetch == purity.FETCH_EFFECTS:
                return SYNC
            if step.fetch == purity.FETCH_HIDDEN:
                return ORDERED
            return FREE if step.step.iter_private else ORDERED
        if t is LoopStep:
            if step.kind == "while":
                return FREE
            value = node.ins[0].value
            # iter() of a builtin container runs no user code, but the container may still
            # be changed by an earlier sync point (and a dict or set iterator remembers
            # its size): start the loop after them, unless nothing can change it.
            if type(value) in _PLAIN_ITERABLES:
                return FREE if purity.is_immutable(value) else ORDERED
            return SYNC
        if t is _Handle:
            # Handlers, else and finally are plain code, run in program order; a body that
            # raised nothing and a try with nothing else to run only hand values on.
            return SYNC if step.region.exc is not None or step.step.plan is None else FREE
        if t is _Gate:
            return FREE
        if t is TryStep:
            return FREE
        # IfStep and while tests: evaluating truth may call __bool__ on a user object.
        return FREE if purity.all_immutable([s.value for s in node.ins]) else ORDERED

    # -- running ------------------------------------------------------------------------------
    def run(self, node: Node) -> None:
        if node.done:
            return                    # dropped with the rest of a try body after a failure
        if self.fail_tick is not None and node.tick > self.fail_tick:
            node.done = True          # queued before an earlier node failed: never runs
            return
        step = node.step
        t = type(step)
        if t is NativeStep:
            self.run_native(node, step)
        elif t is CallStep:
            self.run_call(node)
        elif t is LoopRun:
            self.run_continuation(node, step)
        elif t is IfStep:
            self.run_if(node, step)
        elif t is LoopStep:
            self.run_loop(node, step)
        elif t is TryStep:
            self.run_try(node, step)
        elif t is _Handle:
            self.run_handle(node, step)
        elif t is _Gate:
            self.run_gate(node, step)
        else:
            self.run_decide(node, step.loop)

    def run_native(self, node: Node, step: NativeStep) -> None:
        self._call_native(node, step, [s.value for s in node.ins])

    def _call_native(self, node: Node, step: NativeStep, values: list[Any],
                     caught: Optional[tuple[BaseException, Any, Any]] = None) -> None:
        """Run a plain step; ``caught``: the exception a try's handlers were given, with
        the traceback and context of a plain run."""
        fn = step.fn
        if _UNBOUND_ID in map(id, values):
            fn = _checked(step)
        if step.needs_cells:
            key = (id(step), fn)
            bound = self.bound.get(key)
            if bound is None:
                bound = self.bound[key] = _bind_cells(fn, self.cells)
            fn = bound
        try:
            result = fn(*values)
        except BaseException as exc:
            if caught is not None and exc is caught[0]:
                _unraise(exc, caught, step)
            elif not isinstance(exc, Exception):
                raise
            self.fail(node, exc)
            return
        outs = node.outs
        if step.returns:
            if type(result) is ReturnSignal:
                for slot in outs[:-2]:
                    self.resolve(slot, UNBOUND)
                self.resolve(outs[-2], True)
                self.resolve(outs[-1], result.value)
            else:
                for slot, value in zip(outs, result):
                    self.resolve(slot, value)
        else:
            for slot, value in zip(outs, result):
                self.resolve(slot, value)
        self.finish(node)

    def run_call(self, node: Node) -> None:
        callee, kind, values = node.callee
        node.callee = None
        build = node.step.build_args
        try:
            _check_bound(node)
            if build is None:
                args, kwargs = tuple(values), {}
            else:
                args, kwargs = build(*values)
            if kind == purity.DISPATCH:
                self.inflight[node] = None
                if callsite.wanted:
                    callsite.announce(f"{self.template.filename}:{node.step.lineno}")
                if self.keep:
                    handle = self.pool.submit(callee, args, kwargs, self.on_done(node),
                                              keep=True)
                else:
                    handle = self.pool.submit(callee, args, kwargs, self.on_done(node))
                if node in self.inflight:
                    self.inflight[node] = handle
                return
            result = callee(*args, **kwargs)
        except Exception as exc:
            self.inflight.pop(node, None)
            self.fail(node, exc)
            return
        for slot in node.outs:
            self.resolve(slot, result)
        self.finish(node)

    def run_if(self, node: Node, step: IfStep) -> None:
        values = [s.value for s in node.ins]
        try:
            _check_bound(node)
            truth = bool(values[0] if step.test is None else step.test(*values))
        except Exception as exc:
            self.fail(node, exc)
            return
        env = dict(zip(step.carry, node.carry))
        self.instantiate(step.body if truth else step.orelse, node.tick, env, node.frame)
        for var, out in zip(step.writes, node.outs):
            self.forward(env.get(var, _UNBOUND_SLOT), out)
        self.finish(node)

    def run_try(self, node: Node, step: TryStep) -> None:
        plan = step.plan or _try_plan(step)
        carry = node.carry
        env = dict(zip(step.carry, carry))
        handle = step.handle
        tracked, where, _ = plan
        region = Region(node.tick + (len(step.body.steps),), node.frame.region, tracked,
                        lambda: {v: carry[i] if i >= 0 else _UNBOUND_SLOT
                                 for v, i in where.items()})
        frame = Frame(node.frame, None, region)
        node.frame.count += 1
        self.instantiate(step.body, node.tick, env, frame)
        get = env.get
        h = _Handle(region, handle, [get(v, _UNBOUND_SLOT) for v in handle.reads], plan[2])
        if node.frame.region is not None:
            self._record(node.frame.region, region.hi, step.writes, node.outs)
        if not frame.count:
            region.done.value = True
        self._control(region.hi, h, node.frame, [region.done], True, node.outs)
        self.finish(node)

    def run_handle(self, node: Node, h: _Handle) -> None:
        region = h.region
        region.open = False
        step = h.step
        exc = region.exc
        forward = step.plan
        if exc is None and forward is not None:
            # Nothing to run, only values to hand on; this may be earlier than the nodes
            # before the try have finished, so their values may still be on the way.
            slots = h.slots
            for out, i in zip(node.outs, forward):
                self.forward(slots[i], out)
            self.finish(node)
            return
        values = [materialize(s.value) for s in h.slots]
        reads = step.reads
        special = h.special
        if exc is not None:
            before = region.values_before(region.fail_tick)
            for i, var in enumerate(reads):
                if var in before:
                    values[i] = materialize(before[var])
            tb, context = _as_plain(self.template.filename, self.func, region.node.step, exc)
        else:
            tb = context = None
        for i, value in zip(special, (exc, tb, context)):
            if i is not None:
                values[i] = value
        region.history = []
        region.node = region.exc = None
        self._call_native(node, step, values, None if exc is None else (exc, tb, context))
        del values

    def run_loop(self, node: Node, step: LoopStep) -> None:
        loop = LoopRun()
        loop.step = step
        loop.it = None
        loop.fetch = purity.FETCH_FREE
        own = True
        if step.kind == "for":
            try:
                _check_bound(node)
                loop.it = iter(node.ins[0].value)
                own = loop.it is not node.ins[0].value or step.reads[0].startswith("_pd_t")
                if step.reads[0].startswith("_pd_t"):
                    node.ins[0].value = UNBOUND    # the loop holds the only reference now
            except Exception as exc:
                self.fail(node, exc)
                return
            loop.fetch = purity.iterator_kind(loop.it)
        loop.env = dict(zip(step.carry, node.carry))
        loop.outs = node.outs
        loop.k = 0
        loop.live = 0
        loop.parked = None
        loop.tick = node.tick
        loop.frame = node.frame
        loop.maysync = step.may_sync or loop.fetch == purity.FETCH_EFFECTS
        # Speculation fetches items the plain loop may never fetch: only from iterators
        # whose next() changes nothing (not a file's position, not a generator's state).
        # An iterator somebody else holds (a generator passed in) would be seen advanced.
        loop.spec = step.speculate and (step.kind == "while" or (
            loop.fetch in _SPECULABLE_FETCH and (own or loop.fetch == purity.FETCH_FREE)))
        loop.gate = _TRUE_SLOT
        self._continuation(loop, [])
        self.finish(node)

    def _control(self, tick: tuple[int, ...], step: Any, frame: Frame, ins: list[Slot],
                 may_sync: bool, outs: Any = ()) -> None:
        """A node of the runtime's own (a loop continuation, a while test, a gate, a try's
        handle): it waits for ``ins``; only a handle writes (``outs``)."""
        node = Node()
        node.tick = tick
        node.step = step
        node.frame = frame
        node.done = False
        node.ins = ins
        node.outs = outs
        node.carry = None
        frame.count += 1
        self._wire(node, ins, may_sync)

    def _continuation(self, loop: LoopRun, ins: list[Slot]) -> None:
        self._control(loop.tick + (loop.k,), loop, loop.frame, ins, loop.maysync)

    def run_continuation(self, node: Node, loop: LoopRun) -> None:
        for slot in node.ins:
            if slot.value is True:
                self.end_loop(node, loop, normal=False)
                return
        if loop.live >= self.window:
            loop.parked = node       # resumed by finish() when an iteration completes
            return
        step = loop.step
        env = loop.env
        gate = None
        if loop.spec and loop.k:
            flags = [env[step.break_var]] if step.break_var else []
            if step.returns:
                flags.append(env.get(RETURN_FLAG, _FALSE_SLOT))
            if any(f.value is True for f in flags):
                self.end_loop(node, loop, normal=False)
                return
            if loop.gate.value is not True or any(f.value is not False for f in flags):
                gate = self._gate(node, loop, flags)
        frame = Frame(loop.frame, loop)
        if gate is not None:
            frame.gate = gate.gate
            gate.frame = frame
        loop.frame.count += 1
        loop.live += 1
        if step.break_var:
            env[step.break_var] = _FALSE_SLOT
        if step.continue_var:
            env[step.continue_var] = _FALSE_SLOT
        if step.kind == "for":
            try:
                item = next(loop.it)
            except StopIteration:
                self._unframe(frame)
                if gate is not None:
                    gate.end = True          # ends the loop once it knows no break came
                    self.finish(node)
                else:
                    self.end_loop(node, loop, normal=True)
                return
            except Exception as exc:
                self._unframe(frame)
                if gate is not None:
                    frame.held = (node, exc)  # fails once it knows the fetch happens
                else:
                    self.fail(node, exc)
                return
            slot = env[step.item] = Slot(item)
            if frame.region is not None:
                self._record(frame.region, node.tick, (step.item,), [slot])
            self.instantiate(step.body, node.tick, env, frame)
            self._next(loop, env)
        else:
            self.instantiate(step.test_block, node.tick, env, frame)
            self._control(node.tick + (len(step.test_block.steps),), _Decide(loop), frame,
                          [env.get(v, _UNBOUND_SLOT) for v in step.test_reads],
                          loop.maysync)
        self.finish(node)

    def _gate(self, node: Node, loop: LoopRun, flags: list[Slot]) -> _Gate:
        """The gate of the iteration ``node`` starts before the previous one has decided
        whether it leaves the loop."""
        slot = Slot()
        prev = loop.gate
        g = _Gate(loop, slot, prev, flags, dict(loop.env), loop.frame)
        loop.gate = slot
        self._control(node.tick + (-1,), g, loop.frame, [prev, *flags], False)
        return g

    def run_gate(self, node: Node, g: _Gate) -> None:
        loop = g.loop
        frame = g.frame
        if g.prev.value is False or any(f.value is True for f in g.flags):
            # The iteration before left the loop: what was started after it never happened
            # (every tick after the gate's that is still the loop's, up to its next sibling).
            lo, hi = node.tick, loop.tick[:-1] + (loop.tick[-1] + 1,)
            region = loop.frame.region
            while region is not None:
                region.history = [e for e in region.history if not lo < e[0] < hi]
                region = region.parent
            loop.parked = None
            self._drop(lo, hi, frame.held[0] if frame.held is not None else None)
            self.resolve(g.gate, False)
            loop.env = g.snapshot
            self.end_loop(node, loop, normal=False)
            return
        self.resolve(g.gate, True)
        if frame.held is not None:
            held, frame.held = frame.held, None
            self.fail(*held)
        if g.end:
            self.end_loop(node, loop, normal=True)
            return
        self.finish(node)

    def _unframe(self, frame: Frame) -> None:
        frame.loop.live -= 1
        frame.parent.count -= 1

    def _next(self, loop: LoopRun, env: dict[str, Slot]) -> None:
        step = loop.step
        loop.k += 1
        if loop.spec:
            self._continuation(loop, [])     # (its gate waits for the flags instead)
            return
        ins = []
        if step.break_var:
            ins.append(env[step.break_var])
        if step.returns:
            ins.append(env.get(RETURN_FLAG, _FALSE_SLOT))
        self._continuation(loop, ins)

    def run_decide(self, node: Node, loop: LoopRun) -> None:
        try:
            _check_bound(node)
            truth = bool(node.ins[0].value)
        except Exception as exc:
            self.fail(node, exc)
            return
        step = loop.step
        if truth:
            self.instantiate(step.body, node.tick[:-1], loop.env, node.frame,
                             offset=node.tick[-1] + 1)
            self._next(loop, loop.env)
        else:
            gate = node.frame.gate
            if gate is not None and gate.value is not True:
                self._park(node, gate)       # ends the loop once it knows no break came
                return
            self.end_loop(node, loop, normal=True)
            return
        self.finish(node)

    def end_loop(self, node: Node, loop: LoopRun, normal: bool) -> None:
        step = loop.step
        env = loop.env
        loop.it = None        # a generator left by ``break`` is closed now, as in Python
        if normal and step.orelse.steps:
            self.instantiate(step.orelse, node.tick, env, loop.frame)
        for var, out in zip(step.writes, loop.outs):
            self.forward(env.get(var, _UNBOUND_SLOT), out)
        self.finish(node)


_NO_SLOTS: list[Slot] = []


def _materialize_ins(node: Node) -> None:
    """Give a node that is no functional call the values its Remotes stand for, in slots
    of its own: the shared slots keep the Remotes, for functional calls that read them
    later (a Remote fetches its value once)."""
    ins = node.ins
    for i, slot in enumerate(ins):
        if type(slot.value) is Remote:
            ins[i] = Slot(slot.value.get())


def _prefetch_for_plain_readers(outs: list[Slot], value: Remote) -> None:
    """A kept result that plain code already waits for is fetched at once."""
    for slot in outs:
        for waiter in slot.waiters or ():
            if type(waiter) is Node and type(waiter.step) is not CallStep and not (
                    value.parts is not None and
                    getattr(waiter.step, "unpack", None) is not None):
                value.prefetch()
                return


def _as_plain(filename: str, func: Callable[..., Any], step: Any,
              exc: BaseException) -> tuple[Any, Any]:
    """Give ``exc``, raised by ``step``, the traceback and context a plain run gives it, and
    return them: no frames of Pydron's own in front of the user's (a pool thread, the
    scheduler loop, pickling an argument); for a step that is not plain code (a call, a
    loop, an if) a frame on the step's line of the user's file, through the comprehension
    frames around a call; the context raised with, or what the caller handles (see
    adopt_context for the rest of its chain)."""
    from pydron.errors import adopt_context, user_traceback
    handled = sys.exc_info()[1]
    handled = None if handled is exc else handled
    context = exc.__context__ if exc.__context__ is not None else handled
    adopt_context(exc, handled)
    tb = user_traceback(exc.__traceback__)
    if type(step) is not NativeStep and type(step) is not _Handle:
        exc.__traceback__ = tb
        try:
            _step_raiser(filename, func, step)(exc)
        except BaseException:
            tb = exc.__traceback__.tb_next      # from the frame on the user's line on
    exc.__traceback__ = tb
    exc.__context__ = context
    return tb, context


def _step_raiser(filename: str, func: Callable[..., Any], step: Any) -> Callable[..., Any]:
    """What raises an exception of ``step`` (not plain code: a call, a loop, an if) through
    the frames a plain run shows: the function's on the step's line and, for a call inside
    a comprehension, the comprehension's."""
    line = getattr(step, "lineno", None) or getattr(step, "loop", step).step.lineno
    cols = getattr(step, "col_offset", None), getattr(step, "end_col_offset", None)
    cols = None if None in cols else cols
    frames = getattr(step, "frames", ())
    if not frames:
        return _raiser(filename, line, func, cols)
    key = (filename, line, func.__name__, cols, frames)
    fn = _RAISERS.get(key)
    if fn is None:
        fn = _raiser(filename, line, func, cols, name=frames[-1][0])
        names = [func.__name__] + [name for name, _ in frames[:-1]]
        for name, (_, at) in reversed(list(zip(names, frames))):
            fn = _caller(filename, name, at, fn)
        _RAISERS[key] = fn
    return fn


def _caller(filename: str, name: str, at: tuple[int, int, int, int],
            inner: Callable[..., Any]) -> Callable[..., Any]:
    """A function called ``name`` that calls ``inner`` from position ``at`` of the file."""
    call = ast.Return(value=ast.Call(func=ast.Name(id="_pd_n", ctx=ast.Load()),
                                     args=[ast.Name(id="_pd_e", ctx=ast.Load())], keywords=[]))
    return _user_frame(filename, name, call, at, {"_pd_n": inner})


def _raiser(filename: str, lineno: int, func: Callable[..., Any],
            cols: Optional[tuple[int, int]] = None, name: str = "") -> Callable[..., Any]:
    """A function named like ``func`` (or ``name``) whose ``raise`` statement is at
    ``filename:lineno``.

    Its columns are ``cols`` (the call's, where the step knows them) or else span the
    whole source line: a traceback then marks the call as plain Python does, or marks
    nothing, never an empty or wrong range.
    """
    import linecache
    name = name or func.__name__
    key = (filename, lineno, name, cols)
    fn = _RAISERS.get(key)
    if fn is None:
        if cols is None:
            line = linecache.getline(filename, lineno)
            text = line.strip().encode("utf-8")
            start = len(line.encode("utf-8")) - len(line.lstrip().encode("utf-8")) if text else 0
            cols = (start, start + len(text))
        raise_stmt = ast.Raise(exc=ast.Name(id="_pd_e", ctx=ast.Load()), cause=None)
        fn = _RAISERS[key] = _user_frame(filename, name, raise_stmt,
                                         (lineno, lineno, *cols), {})
    return fn


def _user_frame(filename: str, name: str, stmt: ast.stmt, at: tuple[int, int, int, int],
                namespace: dict[str, Any]) -> Callable[..., Any]:
    """``def name(_pd_e): stmt``, compiled as code of ``filename`` with every node at
    ``at`` (line, end line, column, end column): a frame a traceback shows as the user's."""
    fdef = ast.FunctionDef(
        name="_pd_frame", args=ast.arguments(
            posonlyargs=[], args=[ast.arg(arg="_pd_e")], vararg=None, kwonlyargs=[],
            kw_defaults=[], kwarg=None, defaults=[]),
        body=[stmt], decorator_list=[], returns=None, type_comment=None)
    module = ast.Module(body=[fdef], type_ignores=[])
    line, end, col, end_col = at
    for node in ast.walk(module):
        if "lineno" in node._attributes:
            node.lineno, node.end_lineno, node.col_offset, node.end_col_offset = \
                line, end, col, end_col
    exec(compile(module, filename, "exec"), namespace)
    fn = namespace["_pd_frame"]
    code = fn.__code__
    fn.__code__ = code.replace(co_name=name, co_qualname=name) \
        if hasattr(code, "co_qualname") else code.replace(co_name=name)
    return fn


_RAISERS: dict[tuple[Any, ...], Callable[..., Any]] = {}


def _bind_cells(fn: Callable[..., Any], cells: dict[str, types.CellType]) -> Callable[..., Any]:
    """A copy of ``fn`` whose free variables are this run's cells."""
    code = fn.__code__
    closure = tuple(cells[n] for n in code.co_freevars)
    new = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def _checked(step: NativeStep) -> Callable[..., Any]:
    """The variant of a step's function that raises UnboundLocalError like Python does."""
    fn = _CHECKED.get(step)
    if fn is None:
        fn = _CHECKED[step] = step.checked()
    return fn


_CHECKED: "weakref.WeakKeyDictionary[NativeStep, Callable[..., Any]]"


def _check_bound(node: Node) -> None:
    """Raise Python's own error for a variable read before it has a value."""
    reads = node.step.reads if hasattr(node.step, "reads") else node.step.loop.step.test_reads
    for name, slot in zip(reads, node.ins):
        if slot.value is UNBOUND:
            raise UnboundLocalError(_UNBOUND_MESSAGE % name)


_UNBOUND_MESSAGE = ("cannot access local variable '%s' where it is not associated with a value"
                    if sys.version_info >= (3, 11) else
                    "local variable '%s' referenced before assignment")
# The loop machinery's own nodes: they stand for the iterations they will create.
_CREATING_STEPS = (LoopRun, _Decide, IfStep, LoopStep, TryStep)
# Steps that write their outputs themselves (the others forward what their blocks write).
_LEAF_STEPS = (NativeStep, CallStep)


def _speculative(node: Node, kind: int) -> bool:
    """May this node of a speculative iteration run before the iteration is known to
    happen? Functional calls and pure computation may (their results are dropped with the
    iteration); sync points, branches, loops and try bodies wait."""
    t = type(node.step)
    if t is CallStep:
        return kind != SYNC and node.callee[1] == purity.DISPATCH
    return kind == FREE and (t is NativeStep or t is _Decide)


def _try_plan(step: TryStep) -> tuple[frozenset[str], dict[str, int], tuple]:
    """What every run of a try step needs, worked out at its first run: the variables its
    handle step takes from the body (and where they are in the step's carry, for their
    values from before the try), and where the handle reads the exception, its traceback
    and its context."""
    handle = step.handle
    body_writes = frozenset(step.body.writes)
    tracked = frozenset(v for v in handle.reads if v in body_writes)
    carry = {v: i for i, v in enumerate(step.carry)}
    where = {v: carry.get(v, -1) for v in tracked}
    reads = handle.reads
    special = tuple(reads.index(v) if v in reads else None
                    for v in (step.exc_var, step.tb_var, step.ctx_var))
    step.plan = (tracked, where, special)
    # The handle only hands the body's values on when nothing was raised, if the statement
    # has no else or finally and everything it writes is something it reads.
    stmt = handle.nodes[0] if handle.nodes else None
    if isinstance(stmt, ast.Try) and not stmt.orelse and not stmt.finalbody and \
            all(w in reads for w in handle.writes):
        handle.plan = tuple(reads.index(w) for w in handle.writes)
    return step.plan


def _unraise(exc: BaseException, caught: tuple[BaseException, Any, Any],
             step: NativeStep) -> None:
    """A try's handlers let the body's exception go on (no handler matched; a bare
    ``raise``): it goes on as the body raised it, without the frame of the line that raised
    it again for the handlers. An explicit ``raise e`` keeps its own line, as in Python."""
    from pydron.errors import user_traceback
    _, tb, context = caught
    top = user_traceback(exc.__traceback__)
    if top is not None and top.tb_next is tb and top.tb_lineno == step.lineno:
        top = tb
    exc.__traceback__ = top
    exc.__context__ = context

# Errors the pool raises about a call (not the call's own exception, which arrives as
# raised): only these get the line of the call added to their message.
_POOL_ERRORS = (SerializationError, WorkerLostError, CallTimeoutError)
_UNBOUND_SLOT = Slot(UNBOUND)
_UNBOUND_ID = id(UNBOUND)
_CHECKED = weakref.WeakKeyDictionary()
_FALSE_SLOT = Slot(False)
_TRUE_SLOT = Slot(True)
_SPECULABLE_FETCH = (purity.FETCH_FREE, purity.FETCH_READS)


def execute(template: Template, func: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], pool: Any, window: int) -> Any:
    """Call the translated ``func`` with ``args``: its result, or its exception."""
    values = template.binder(*args, **kwargs)
    cells: dict[str, types.CellType] = {}
    if func.__closure__:
        cells.update(zip(func.__code__.co_freevars, func.__closure__))
    for name in template.cells:
        cells[name] = types.CellType()
    env: dict[str, Slot] = {}
    for name, value in zip(template.params, values):
        if name in template.cells:
            cells[name].cell_contents = value
        else:
            env[name] = Slot(value)
    env[RETURN_FLAG] = _FALSE_SLOT
    env[RETURN_VALUE] = Slot(None)
    run = Run(template, pool, window, cells)
    run.func = func
    run.instantiate(template.block, (), env, run.root)
    run.execute()
    if run.fail_exc is not None:
        exc, node = run.fail_exc, run.fail_node
        run.fail_exc = run.fail_node = None
        step = node.step
        if type(step) is CallStep and isinstance(exc, _POOL_ERRORS) and exc.args and \
                isinstance(exc.args[0], str) and "called at" not in exc.args[0]:
            # The pool knows the function; only the runtime knows the line that called it.
            where = f"{step.callee_name}() called at {template.filename}:{step.lineno}"
            exc.args = (f"{exc.args[0]} [{where}]",) + exc.args[1:]
        # Raising it again here would replace its context with whatever the caller is
        # handling: the context of a plain run is put back after.
        _, context = _as_plain(template.filename, func, step, exc)
        try:
            raise exc
        finally:
            exc.__context__ = context
            del exc, context
    result = materialize(env[RETURN_VALUE].value) if env[RETURN_FLAG].value is True \
        else None
    if remote_value._live:
        # The run's graph may be a cycle the garbage collector finds only later: let go of
        # values kept on workers now, so that they are released at once.
        for slot in env.values():
            if type(slot.value) is Remote:
                slot.value = None
    return result
