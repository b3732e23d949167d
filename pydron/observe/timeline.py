"""Draw a Pydron trace file (Chrome/Perfetto trace-event JSON) as a timeline picture.

A trace of a long run holds tens of thousands of calls; chrome://tracing and Perfetto show
it, but they are a website or a browser away and need clicking before they say anything. A
picture answers the first questions at a glance -- were the workers busy, which function
took the time, where are the idle gaps, where did a worker die -- and it can be attached to
a report or a mail. So ``python -m pydron timeline trace.json -o timeline.png`` (or
``.html``) draws one: a row per worker (track), a bar per call coloured by function, an
axis in seconds since the first event, a legend of the functions with their call counts,
and markers for retries, lost workers and failures.

Both outputs stay fast for 100,000+ calls because bars that would be narrower than a pixel
are merged before drawing (:func:`merge_calls`), and the HTML page draws on one
``<canvas>`` from compact embedded data instead of creating a DOM node per call.

The PNG needs matplotlib (``python -m pip install matplotlib``), an optional dependency;
the HTML page needs nothing, not even a network connection to view it.
"""
from __future__ import annotations

import argparse
import colorsys
import gzip
import html
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydron.errors import PydronError

__all__ = [
    "Bar", "Call", "Marker", "Trace", "TraceFormatError", "Track", "TimelineDependencyError",
    "add_arguments", "load_trace", "main", "merge_calls", "render_html", "render_png", "run",
]

#: Marker kinds, in the order the legends list them.
RETRY, WORKER_LOST, FAILURE, OTHER = "retry", "worker lost", "failure", "other"
MARKER_KINDS = (RETRY, WORKER_LOST, FAILURE, OTHER)

#: Function colours: matplotlib's tab10 without its grey (grey is the colour of idle time
#: and of the page), then tab20's light shades; beyond those, hues at the golden angle.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5",
)

#: The HTML page keeps this many bars across the whole run per row before merging, so that
#: zooming in about ten times on a wide screen still shows every call that is a pixel wide.
HTML_RESOLUTION = 20_000
#: Bars across the PNG's plot per row before merging (about twice its width in pixels).
PNG_RESOLUTION = 2_400


class TraceFormatError(PydronError, ValueError):
    """A file is not trace-event JSON (or not one this module can draw).

    A ``ValueError`` because the file's content, not the program, is wrong; the message
    names the file and what is wrong with it, so the command line can print it as it is.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: not a trace-event JSON file: {reason}")


class TimelineDependencyError(PydronError, ImportError):
    """Drawing a PNG needs matplotlib, which is an optional dependency."""


class Call(NamedTuple):
    """One functional call on a track; times in seconds since the trace's first event."""

    start_s: float
    end_s: float
    function: str
    ok: bool
    site: str = ""
    call_id: int | None = None
    attempt: int = 1


class Bar(NamedTuple):
    """What is drawn for one or more adjacent calls that would not be told apart.

    ``count`` calls were merged into it; ``function`` is the one that was busy longest in
    it, ``site``, ``call_id`` and ``attempt`` those of its longest call of that function,
    ``ok`` is false if any of its calls failed, and ``fill`` is the fraction of the bar's
    width that was busy (1.0 unless calls narrower than a pixel were binned together).
    """

    start_s: float
    end_s: float
    function: str
    ok: bool
    count: int
    site: str = ""
    call_id: int | None = None
    attempt: int = 1
    fill: float = 1.0


class Marker(NamedTuple):
    """An instant event: a retry, a lost worker, a failure (or another named instant).

    ``track`` is the index of the row it belongs to, or ``None`` for one that concerns the
    whole run (a global or process-scoped instant), drawn across all rows.
    """

    time_s: float
    kind: str
    track: int | None
    text: str


@dataclass
class Track:
    """One row of the picture: a (pid, tid) pair of the trace, usually one worker."""

    pid: Any
    tid: Any
    name: str
    label: str
    calls: list[Call] = field(default_factory=list)

    @property
    def busy_s(self) -> float:
        """Seconds spent in calls (overlapping calls, which a worker should not have, count
        twice)."""
        return sum(c.end_s - c.start_s for c in self.calls)

    @property
    def key(self) -> str:
        """``"pid:tid"``, the row's machine-readable name (``data-track`` in the HTML)."""
        return f"{self.pid}:{self.tid}"


@dataclass
class Trace:
    """A loaded trace: what the renderers need and nothing else.

    ``tracks`` are in display order (the trace's sort indices, else pid and tid);
    ``colours`` maps each function to its colour, the functions that took the most time
    first; ``origin_us`` is the trace timestamp that became second 0; ``truncated`` says the
    file was cut short (a run killed while writing it) and was read up to its last complete
    event; ``ignored`` counts events that are not drawn (other phases, non-call spans).
    """

    path: str
    tracks: list[Track]
    markers: list[Marker]
    colours: dict[str, str]
    origin_us: float = 0.0
    span_s: float = 0.0
    started: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    ignored: int = 0

    @property
    def n_calls(self) -> int:
        return sum(len(t.calls) for t in self.tracks)

    def function_stats(self) -> list[tuple[str, int, float]]:
        """``(function, calls, busy seconds)`` in legend order (most time first)."""
        stats: dict[str, list[float]] = {name: [0, 0.0] for name in self.colours}
        for track in self.tracks:
            for c in track.calls:
                entry = stats[c.function]
                entry[0] += 1
                entry[1] += c.end_s - c.start_s
        return [(name, int(n), busy) for name, (n, busy) in stats.items()]

    def marker_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(MARKER_KINDS, 0)
        for m in self.markers:
            counts[m.kind] += 1
        return counts

    def failed_calls(self) -> int:
        return sum(not c.ok for t in self.tracks for c in t.calls)


# --------------------------------------------------------------------------- loading


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _id_key(value: Any) -> tuple[int, Any]:
    """Sort pids and tids numerically when they are numbers (they may also be strings)."""
    return (0, value) if _number(value) else (1, str(value))


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # Perfetto and chrome://tracing also open .json.gz
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise TraceFormatError(path, f"a broken gzip file ({exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TraceFormatError(path, "not UTF-8 text (a binary file?)") from None


def _repair_truncated(text: str) -> Any | None:
    """The JSON of a trace whose writer was killed mid-file, up to its last whole event.

    chrome://tracing accepts an array trace without its closing ``]`` for the same reason:
    a long run that crashed is exactly the one whose trace someone wants to see. Tries the
    last few ``}`` as the end of the last complete event; ``None`` if none works.
    """
    head = text.lstrip()[:2000]
    if head.startswith("["):
        closer = "]"
    elif head.startswith("{") and '"traceEvents"' in head:
        closer = "]}"
    else:
        return None
    end = len(text)
    for _ in range(8):
        cut = text.rfind("}", 0, end)
        if cut < 0:
            return None
        try:
            return json.loads(text[:cut + 1].rstrip().rstrip(",") + closer)
        except json.JSONDecodeError:
            end = cut
    return None


def _events_of(path: Path, text: str) -> tuple[list[Any], dict[str, Any], bool]:
    truncated = False
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        obj = _repair_truncated(text)
        if obj is None:
            what = "an empty file" if not text.strip() else (
                f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
            raise TraceFormatError(path, what) from None
        truncated = True
    if isinstance(obj, list):
        return obj, {}, truncated
    if isinstance(obj, dict):
        events = obj.get("traceEvents")
        if events is None:
            keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
            raise TraceFormatError(
                path, f"a JSON object without a 'traceEvents' list (its keys: {keys})")
        if not isinstance(events, list):
            raise TraceFormatError(
                path, f"'traceEvents' is a {type(events).__name__}, not a list of events")
        other = obj.get("otherData")
        return events, other if isinstance(other, dict) else {}, truncated
    raise TraceFormatError(
        path, f"the JSON is a {type(obj).__name__}; a trace is an object with 'traceEvents' "
              f"or an array of events")


def _marker_kind(name: str, cat: str) -> str:
    if cat == "retry" or name == "retry":
        return RETRY
    if cat == "failure" or name == "failure":
        return FAILURE
    if name == "worker lost" or (cat == "worker" and "lost" in name):
        return WORKER_LOST
    return OTHER


def _marker_text(name: str, args: dict[str, Any]) -> str:
    parts = [name]
    if args.get("call") is not None:
        parts.append(f"call {args['call']}")
    for key in ("why", "error"):
        if args.get(key):
            parts.append(str(args[key]))
    return ": ".join(parts[:2]) + ("" if len(parts) < 3 else " -- " + " -- ".join(parts[2:]))


def _colours(functions: dict[str, float]) -> dict[str, str]:
    """Colours by busy time, so the functions that fill the picture get the clearest."""
    order = sorted(functions, key=lambda name: (-functions[name], name))
    colours = {}
    for i, name in enumerate(order):
        if i < len(_PALETTE):
            colours[name] = _PALETTE[i]
        else:
            hue = (i * 0.618033988749895) % 1.0
            r, g, b = colorsys.hls_to_rgb(hue, 0.55, 0.65)
            colours[name] = f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"
    return colours


def load_trace(path: str | Path) -> Trace:
    """Read a trace-event JSON file (object or array form, optionally gzipped).

    Raises :class:`TraceFormatError` (a ``ValueError``) naming the file and what is wrong
    when it is not trace-event JSON, or a call event lacks its numeric ``ts``/``dur``; an
    ``OSError`` when it cannot be read. Unknown phases are counted in ``Trace.ignored``, not
    refused: other tools add their own events to traces.
    """
    path = Path(path)
    events, other, truncated = _events_of(path, _read_text(path))

    process_names: dict[Any, str] = {}
    process_sort: dict[Any, float] = {}
    thread_names: dict[tuple[Any, Any], str] = {}
    thread_sort: dict[tuple[Any, Any], float] = {}
    keys: dict[tuple[Any, Any], None] = {}  # every (pid, tid) seen, in first-seen order
    raw_calls: list[tuple[tuple[Any, Any], float, float, str, dict[str, Any]]] = []
    raw_marks: list[tuple[tuple[Any, Any] | None, float, str, str]] = []
    ignored = 0

    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise TraceFormatError(path, f"event #{i} is a {type(ev).__name__}, not an object")
        ph = ev.get("ph")
        if not isinstance(ph, str):
            raise TraceFormatError(path, f"event #{i} has no 'ph' (phase) string")
        pid, tid = ev.get("pid", 0), ev.get("tid")
        args = ev.get("args") if isinstance(ev.get("args"), dict) else {}
        name = str(ev.get("name", ""))
        if ph == "M":
            if name == "process_name":
                process_names[pid] = str(args.get("name", ""))
            elif name == "process_sort_index" and _number(args.get("sort_index")):
                process_sort[pid] = args["sort_index"]
            elif name == "thread_name" and tid is not None:
                thread_names[(pid, tid)] = str(args.get("name", ""))
                keys.setdefault((pid, tid))
            elif name == "thread_sort_index" and tid is not None:
                if _number(args.get("sort_index")):
                    thread_sort[(pid, tid)] = args["sort_index"]
                keys.setdefault((pid, tid))
            continue
        if ph == "X":
            ts, dur = ev.get("ts"), ev.get("dur")
            if not (_number(ts) and _number(dur)):
                raise TraceFormatError(
                    path, f"event #{i} (a complete 'X' event, {name!r}) needs numeric 'ts' "
                          f"and 'dur', not {ts!r} and {dur!r}")
            key = (pid, 0 if tid is None else tid)
            keys.setdefault(key)
            if ev.get("cat") == "call":
                raw_calls.append((key, float(ts), float(ts) + max(float(dur), 0.0), name, args))
            else:
                ignored += 1
            continue
        if ph in ("i", "I"):
            ts = ev.get("ts")
            if not _number(ts):
                raise TraceFormatError(
                    path, f"event #{i} (an instant 'i' event, {name!r}) needs a numeric 'ts', "
                          f"not {ts!r}")
            scope = ev.get("s", "t")
            mkey = None
            if scope == "t" and tid is not None:
                mkey = (pid, tid)
                keys.setdefault(mkey)
            raw_marks.append((mkey, float(ts), _marker_kind(name, str(ev.get("cat", ""))),
                              _marker_text(name, args)))
            continue
        ignored += 1

    times = [c[1] for c in raw_calls] + [m[1] for m in raw_marks]
    origin = min(times) if times else 0.0
    end = max([c[2] for c in raw_calls] + [m[1] for m in raw_marks], default=origin)

    several = len({pid for pid, _ in keys}) > 1
    order = sorted(keys, key=lambda k: (
        process_sort.get(k[0], k[0] if _number(k[0]) else 0), _id_key(k[0]),
        thread_sort.get(k, k[1] if _number(k[1]) else 0), _id_key(k[1])))
    tracks: list[Track] = []
    index: dict[tuple[Any, Any], int] = {}
    for pid, tid in order:
        name = thread_names.get((pid, tid)) or f"pid {pid} / tid {tid}"
        process = process_names.get(pid)
        label = f"{process}: {name}" if several and process else name
        index[(pid, tid)] = len(tracks)
        tracks.append(Track(pid, tid, name, label))

    busy: dict[str, float] = {}
    for key, ts, te, name, args in raw_calls:
        call_id = args.get("call")
        attempt = args.get("attempt")
        tracks[index[key]].calls.append(Call(
            (ts - origin) / 1e6, (te - origin) / 1e6, name, args.get("ok") is not False,
            str(args.get("site") or ""), call_id if isinstance(call_id, int) else None,
            attempt if isinstance(attempt, int) else 1))
        busy[name] = busy.get(name, 0.0) + (te - ts)
    for track in tracks:
        track.calls.sort(key=lambda c: (c.start_s, c.end_s))
    markers = sorted((Marker((ts - origin) / 1e6, kind, None if key is None else index[key],
                             text) for key, ts, kind, text in raw_marks),
                     key=lambda m: (m.time_s, -1 if m.track is None else m.track))
    started = other.get("started")
    return Trace(str(path), tracks, markers, _colours(busy), origin, (end - origin) / 1e6,
                 str(started) if started else None, other, truncated, ignored)


# --------------------------------------------------------------------------- merging


def _bar(c: Call, count: int = 1, fill: float = 1.0) -> Bar:
    return Bar(c.start_s, c.end_s, c.function, c.ok, count, c.site, c.call_id, c.attempt, fill)


def _level(fill: float) -> int:
    """Fill fractions that look alike (quarters; 85% and more counts as full)."""
    return 4 if fill >= 0.85 else min(3, max(1, math.ceil(fill * 4)))


def _bin_dense(calls: list[Call], res: float) -> list[Bar]:
    """Bars for a run of calls narrower than a pixel, none a pixel from the next.

    Each pixel takes the function that was busy longest in it and a fill fraction (how much
    of the pixel was busy, drawn as the colour's strength); neighbouring pixels that look
    alike become one bar. So a worker running many tiny calls of mixed functions shows what
    it mostly ran and how busy it was, not one misleading solid bar.
    """
    if len(calls) == 1:
        return [_bar(calls[0])]
    t0 = calls[0].start_s
    busy: dict[int, dict[str, float]] = {}
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    widest: dict[int, tuple[float, Call]] = {}
    count: dict[int, int] = {}
    ok: dict[int, bool] = {}
    for c in calls:
        b0 = int((c.start_s - t0) / res)
        b1 = max(b0, int((c.end_s - t0) / res))
        for b in range(b0, b1 + 1):
            lo, hi = max(c.start_s, t0 + b * res), min(c.end_s, t0 + (b + 1) * res)
            if hi <= lo and b != b0:
                continue
            per = busy.setdefault(b, {})
            per[c.function] = per.get(c.function, 0.0) + max(0.0, hi - lo)
            first[b] = min(first.get(b, lo), lo)
            last[b] = max(last.get(b, hi), hi)
        dur = c.end_s - c.start_s
        if b0 not in widest or dur > widest[b0][0]:
            widest[b0] = (dur, c)
        count[b0] = count.get(b0, 0) + 1
        ok[b0] = ok.get(b0, True) and c.ok
    bars: list[Bar] = []
    prev_bin, prev_level, prev_busy, rep = -2, 0, 0.0, calls[0]
    for b in sorted(busy):
        per = busy[b]
        function = max(per, key=lambda f: (per[f], f))
        total = sum(per.values())
        fill = min(1.0, total / max(last[b] - first[b], 1e-12))
        level = _level(fill)
        if b in widest and widest[b][1].function == function:
            rep = widest[b][1]
        if bars and b == prev_bin + 1 and bars[-1].function == function and level == prev_level:
            prev = bars[-1]
            prev_busy += total
            end = max(prev.end_s, last[b])
            bars[-1] = prev._replace(end_s=end, ok=prev.ok and ok.get(b, True),
                                     count=prev.count + count.get(b, 0),
                                     fill=min(1.0, prev_busy / max(end - prev.start_s, 1e-12)))
        else:
            prev_busy = total
            bars.append(Bar(first[b], last[b], function, ok.get(b, True), count.get(b, 0),
                            rep.site if rep.function == function else "",
                            rep.call_id if rep.function == function else None,
                            rep.attempt, fill))
        prev_bin, prev_level = b, level
    return bars


def merge_calls(calls: Sequence[Call], resolution_s: float) -> list[Bar]:
    """Bars for ``calls`` (sorted by start) at ``resolution_s`` seconds per pixel.

    Calls at least a pixel wide keep their own bars, except that one joins the bar before it
    when both are of the same function and the gap between them is under a pixel (they
    would be drawn as one bar anyway). Runs of calls narrower than a pixel with gaps under a
    pixel are binned per pixel (see :func:`_bin_dense`): such a bar's ``fill`` says how much
    of it was busy. So a row never has more than about two bars per pixel, however many
    calls it ran, while every call and idle gap at least a pixel wide stays visible. With
    ``resolution_s <= 0`` every call is its own bar.
    """
    if resolution_s <= 0:
        return [_bar(c) for c in calls]
    bars: list[Bar] = []
    dense: list[Call] = []
    dense_end = 0.0
    for c in calls:
        if c.end_s - c.start_s < resolution_s:
            if dense and c.start_s - dense_end >= resolution_s:
                bars += _bin_dense(dense, resolution_s)
                dense = []
            if not dense:
                dense_end = c.end_s
            dense.append(c)
            dense_end = max(dense_end, c.end_s)
            continue
        if dense:
            bars += _bin_dense(dense, resolution_s)
            dense = []
        prev = bars[-1] if bars else None
        if (prev is not None and prev.fill == 1.0 and prev.function == c.function
                and c.start_s - prev.end_s < resolution_s):
            longer = (c.end_s - c.start_s) > (prev.end_s - prev.start_s)
            bars[-1] = prev._replace(
                end_s=max(prev.end_s, c.end_s), ok=prev.ok and c.ok, count=prev.count + 1,
                site=c.site if longer else prev.site,
                call_id=c.call_id if longer else prev.call_id,
                attempt=c.attempt if longer else prev.attempt)
        else:
            bars.append(_bar(c))
    if dense:
        bars += _bin_dense(dense, resolution_s)
    return bars


# --------------------------------------------------------------------------- text helpers


def _duration(seconds: float) -> str:
    """A duration as a person reads it: 850 µs, 52.0 ms, 3.21 s, 4 m 05 s, 2 h 03 m."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} m {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} m"


def _summary(trace: Trace) -> str:
    """One line under the title: how much ran where, and what went wrong."""
    rows = len(trace.tracks)
    busy = sum(t.busy_s for t in trace.tracks)
    parts = [f"{trace.n_calls:,} calls on {rows} row{'s' if rows != 1 else ''}",
             f"{_duration(trace.span_s)} from first to last event"]
    if rows and trace.span_s > 0:
        parts.append(f"{100 * busy / (rows * trace.span_s):.0f}% busy")
    counts = trace.marker_counts()
    failed = trace.failed_calls()
    if failed:
        parts.append(f"{failed:,} failed call{'s' if failed != 1 else ''}")
    for kind, word in ((RETRY, "retries"), (WORKER_LOST, "workers lost"),
                       (FAILURE, "failures")):
        if counts[kind]:
            parts.append(f"{counts[kind]:,} {word}")
    if trace.started:
        parts.append(f"started {trace.started}")
    if trace.meta.get("pydron"):
        parts.append(f"pydron {trace.meta['pydron']}")
    if trace.truncated:
        parts.append("the file was cut short; drawn up to its last complete event")
    return " · ".join(parts)


# --------------------------------------------------------------------------- HTML


_CSS = """
body{font:13px/1.35 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;
 margin:16px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 2px}
.summary{color:#555;margin:0 0 10px}
.hint{color:#888;font-size:11px;margin:4px 0 10px}
.pydron-timeline{display:flex;align-items:flex-start;border:1px solid #ddd}
.labels{flex:0 0 auto;max-width:280px;border-right:1px solid #ddd;background:#fff}
.labels .axis-spacer{height:var(--axis)}
.pydron-row{height:var(--row);line-height:var(--row);font-size:var(--font);padding:0 8px;
 white-space:nowrap;overflow:hidden;text-overflow:ellipsis;display:flex;gap:8px}
.pydron-row:nth-child(odd){background:#f4f4f4}
.pydron-row .name{flex:1 1 auto;overflow:hidden;text-overflow:ellipsis}
.pydron-row .busy{flex:0 0 auto;color:#777}
.plot{flex:1 1 auto;min-width:0;position:relative}
canvas{display:block;width:100%;cursor:crosshair}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;margin:10px 0;padding:0;list-style:none}
.legend li{display:flex;align-items:center;gap:6px;cursor:default}
.legend .swatch{display:inline-block;width:14px;height:12px;border-radius:2px}
.legend .n{color:#777}
.legend .mark{display:inline-block;width:14px;text-align:center;font-weight:bold}
.tip{position:fixed;pointer-events:none;background:#fffff4;border:1px solid #bbb;
 border-radius:4px;padding:5px 8px;font-size:12px;box-shadow:0 2px 6px rgba(0,0,0,.15);
 max-width:520px;white-space:pre-wrap;z-index:10}
.empty{padding:24px;color:#777}
"""

# Drawn by the browser from the JSON in #pydron-data: rows of bars, each bar 8 integers
# (gap since the previous bar's end in µs, duration in µs, function index, site index,
# merged calls, flags: 1 failed 2 retried, call id or -1, busy percent). Delta-coded
# integers keep 100,000 calls to a few MB. At every zoom, bars under 1.5 px are binned per
# pixel again (the function busy longest in a pixel colours it, busy time its strength).
_JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("pydron-data").textContent);
var cv = document.getElementById("pydron-canvas");
if (!cv) return;
var ctx = cv.getContext("2d"), tip = document.getElementById("pydron-tip");
var RH = D.rowHeight, AX = D.axisHeight, PAD = 10, BOT = 22, S = 8;
var MK = {"retry": "#f5a623", "worker lost": "#000000", "failure": "#e00000",
          "other": "#888888"};
var rows = D.rows.map(function (bars) {
  var n = bars.length / S, s = new Float64Array(n), e = new Float64Array(n),
      pe = new Float64Array(n), t = 0, m = -Infinity;
  for (var i = 0; i < n; i++) {
    t += bars[S * i]; s[i] = t / 1e6; t += bars[S * i + 1]; e[i] = t / 1e6;
    m = Math.max(m, e[i]); pe[i] = m;
  }
  return {s: s, e: e, pe: pe, b: bars, n: n, marks: []};
});
var glob = [];
D.markers.forEach(function (mk) {
  var o = {t: mk[1] / 1e6, kind: mk[2], text: mk[3]};
  if (mk[0] < 0) glob.push(o); else rows[mk[0]].marks.push(o);
});
var span = D.span > 0 ? D.span : 1, v0 = -span * 0.01, v1 = span * 1.01, hl = -1;
function lower(a, x) { var lo = 0, hi = a.length;
  while (lo < hi) { var mid = (lo + hi) >> 1; if (a[mid] < x) lo = mid + 1; else hi = mid; }
  return lo; }
function niceStep(raw) { var p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p; }
function fmtT(t, step) { var d = step >= 1 ? 0 : Math.min(6, Math.ceil(-Math.log10(step)));
  return t.toFixed(d) + " s"; }
function fmtD(x) { if (x < 1e-3) return (x * 1e6).toFixed(0) + " µs";
  if (x < 1) return (x * 1e3).toPrecision(3) + " ms";
  if (x < 60) return x.toPrecision(3) + " s";
  if (x < 3600) return Math.floor(x / 60) + " m " + ("0" + Math.floor(x % 60)).slice(-2) + " s";
  return Math.floor(x / 3600) + " h " + ("0" + Math.floor(x % 3600 / 60)).slice(-2) + " m"; }
var W = 0, H = 0;
function X(t) { return PAD + (t - v0) * (W - 2 * PAD) / (v1 - v0); }
function T(x) { return v0 + (x - PAD) * (v1 - v0) / (W - 2 * PAD); }
function draw() {
  var dpr = window.devicePixelRatio || 1;
  W = cv.clientWidth; H = AX + rows.length * RH + BOT;
  if (cv.width !== Math.round(W * dpr) || cv.height !== Math.round(H * dpr)) {
    cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr); cv.style.height = H + "px";
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  var i, j, r, y;
  for (i = 0; i < rows.length; i++) if (i % 2) {
    ctx.fillStyle = "#f4f4f4"; ctx.fillRect(0, AX + i * RH, W, RH); }
  var step = niceStep((v1 - v0) / Math.max(2, W / 110)), first = Math.ceil(v0 / step) * step;
  ctx.font = "11px system-ui, sans-serif"; ctx.textAlign = "center";
  for (var t = first; t <= v1; t += step) {
    var x = Math.round(X(t)) + 0.5;
    ctx.fillStyle = "#e2e2e2"; ctx.fillRect(x - 0.5, AX, 1, rows.length * RH);
    ctx.fillStyle = "#555";
    ctx.fillText(fmtT(t, step), x, AX - 7); ctx.fillText(fmtT(t, step), x, H - 6);
    ctx.fillRect(x - 0.5, AX - 4, 1, 4); ctx.fillRect(x - 0.5, H - BOT, 1, 4);
  }
  ctx.fillStyle = "#999"; ctx.fillRect(0, AX - 1, W, 1); ctx.fillRect(0, H - BOT, W, 1);
  var bh = Math.max(2, Math.round(RH * 0.7)), off = Math.floor((RH - bh) / 2);
  var lo = PAD, hiX = W - PAD;
  for (i = 0; i < rows.length; i++) {
    r = rows[i]; y = AX + i * RH + off;
    var k = lower(r.pe, v0), cp = -1, acc = {}, tot = 0, cfail = false;
    var flush = function () {
      if (cp < 0) return;
      var best = -1, bw = -1;
      for (var key in acc) if (acc[key] > bw) { bw = acc[key]; best = +key; }
      ctx.globalAlpha = (hl >= 0 && best !== hl ? 0.2 : 1) * Math.max(0.25, Math.min(1, tot));
      ctx.fillStyle = D.functions[best][1]; ctx.fillRect(cp, y, 1, bh);
      ctx.globalAlpha = 1;
      if (cfail) { ctx.fillStyle = "#e00000"; ctx.fillRect(cp, y, 1, 2);
        ctx.fillRect(cp, y + bh - 2, 1, 2); }
      cp = -1; acc = {}; tot = 0; cfail = false;
    };
    for (j = k; j < r.n && r.s[j] <= v1; j++) {
      var a = Math.max(lo, X(r.s[j])), b = Math.min(hiX, X(r.e[j])), f = r.b[S * j + 2];
      var failed = (r.b[S * j + 5] & 1) === 1, fill = r.b[S * j + 7] / 100;
      if (b < lo || a > hiX) continue;
      if (b - a >= 1.5) {
        flush();
        ctx.globalAlpha = (hl >= 0 && f !== hl ? 0.2 : 1) * Math.max(0.25, fill);
        ctx.fillStyle = D.functions[f][1]; ctx.fillRect(a, y, b - a, bh);
        ctx.globalAlpha = 1;
        if (failed) { ctx.strokeStyle = "#e00000"; ctx.lineWidth = 1.5;
          ctx.strokeRect(a + 0.75, y + 0.75, b - a - 1.5, bh - 1.5); }
        continue;
      }
      var p = Math.floor(a);
      if (p !== cp) { flush(); cp = p; }
      acc[f] = (acc[f] || 0) + (b - a) * fill; tot += (b - a) * fill;
      cfail = cfail || failed;
    }
    flush();
  }
  function mark(m, row) {
    var x = Math.round(X(m.t)) + 0.5;
    if (x < lo - 4 || x > hiX + 4) return;
    ctx.fillStyle = ctx.strokeStyle = MK[m.kind] || "#888";
    if (row < 0) {
      ctx.setLineDash([4, 3]); ctx.lineWidth = 1; ctx.beginPath();
      ctx.moveTo(x, AX); ctx.lineTo(x, AX + rows.length * RH); ctx.stroke(); ctx.setLineDash([]);
      return;
    }
    var top = AX + row * RH, s = Math.max(3, Math.min(6, RH / 3));
    ctx.lineWidth = 1.5; ctx.beginPath();
    if (m.kind === "retry") {
      ctx.moveTo(x - s, top + 1); ctx.lineTo(x + s, top + 1); ctx.lineTo(x, top + 1 + 1.6 * s);
      ctx.closePath(); ctx.fill(); ctx.strokeStyle = "#000"; ctx.lineWidth = 0.8; ctx.stroke();
    } else if (m.kind === "worker lost") {
      ctx.moveTo(x, top); ctx.lineTo(x, top + RH); ctx.stroke(); ctx.beginPath();
      var c = top + RH / 2;
      ctx.moveTo(x - s, c - s); ctx.lineTo(x + s, c + s);
      ctx.moveTo(x - s, c + s); ctx.lineTo(x + s, c - s); ctx.lineWidth = 2; ctx.stroke();
    } else if (m.kind === "failure") {
      ctx.arc(x, top + RH / 2, s, 0, 2 * Math.PI); ctx.fill();
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 1; ctx.stroke();
    } else {
      ctx.fillRect(x - 0.5, top + 1, 1.5, RH - 2);
    }
  }
  for (i = 0; i < rows.length; i++) rows[i].marks.forEach(function (m) { mark(m, i); });
  glob.forEach(function (m) { mark(m, -1); });
}
function pick(ev) {
  var box = cv.getBoundingClientRect(), x = ev.clientX - box.left, y = ev.clientY - box.top;
  var row = Math.floor((y - AX) / RH);
  if (row < 0 || row >= rows.length || x < PAD || x > W - PAD) return null;
  var t = T(x), tol = 4 * (v1 - v0) / (W - 2 * PAD), r = rows[row], i, best = null, bd = tol;
  var ms = r.marks.concat(glob);
  for (i = 0; i < ms.length; i++) {
    var d = Math.abs(ms[i].t - t);
    if (d <= bd) { bd = d; best = ms[i]; }
  }
  if (best) return best.kind + " at " + best.t.toFixed(3) + " s\n" + best.text;
  var k = lower(r.pe, t - tol), hit = -1, hd = Infinity;
  for (i = k; i < r.n && r.s[i] <= t + tol && i < k + 500; i++) {
    var dd = t < r.s[i] ? r.s[i] - t : t > r.e[i] ? t - r.e[i] : 0;
    if (dd < hd) { hd = dd; hit = i; }
  }
  if (hit >= 0 && hd <= tol) {
    var b = r.b, o = S * hit, fn = D.functions[b[o + 2]][0], lines = [fn];
    if (b[o + 3] >= 0) lines.push(D.sites[b[o + 3]]);
    lines.push(fmtD(r.e[hit] - r.s[hit]) + "  (" + r.s[hit].toFixed(3) + " s to " +
               r.e[hit].toFixed(3) + " s)");
    if (b[o + 4] > 1) lines.push(b[o + 4] + " calls merged (too narrow to draw apart)");
    else if (b[o + 6] >= 0) lines.push("call " + b[o + 6]);
    if (b[o + 5] & 1) lines.push("FAILED");
    if (b[o + 5] & 2) lines.push("a retry (attempt > 1)");
    return lines.join("\n");
  }
  var p = lower(r.s, t) - 1, gs = p >= 0 ? r.pe[p] : 0, ge = p + 1 < r.n ? r.s[p + 1] : D.span;
  return D.labels[row] + "\nidle " + fmtD(Math.max(0, ge - gs));
}
cv.addEventListener("mousemove", function (ev) {
  if (drag) { var dt = (ev.clientX - drag.x) * (drag.v1 - drag.v0) / (W - 2 * PAD);
    v0 = drag.v0 - dt; v1 = drag.v1 - dt; draw(); tip.hidden = true; return; }
  var text = pick(ev);
  if (!text) { tip.hidden = true; return; }
  tip.textContent = text; tip.hidden = false;
  var tx = ev.clientX + 14, ty = ev.clientY + 14;
  if (tx + tip.offsetWidth > window.innerWidth) tx = ev.clientX - tip.offsetWidth - 8;
  if (ty + tip.offsetHeight > window.innerHeight) ty = ev.clientY - tip.offsetHeight - 8;
  tip.style.left = tx + "px"; tip.style.top = ty + "px";
});
cv.addEventListener("mouseleave", function () { tip.hidden = true; drag = null; });
var drag = null;
cv.addEventListener("mousedown", function (ev) { drag = {x: ev.clientX, v0: v0, v1: v1}; });
window.addEventListener("mouseup", function () { drag = null; });
cv.addEventListener("wheel", function (ev) {
  ev.preventDefault();
  var box = cv.getBoundingClientRect(), t = T(ev.clientX - box.left);
  var f = Math.exp(ev.deltaY * 0.002), w = Math.max(1e-6, (v1 - v0) * f);
  v0 = t - (t - v0) * w / (v1 - v0); v1 = v0 + w; draw();
}, {passive: false});
cv.addEventListener("dblclick", function () { v0 = -span * 0.01; v1 = span * 1.01; draw(); });
Array.prototype.forEach.call(document.querySelectorAll(".legend li[data-fn]"), function (li) {
  li.addEventListener("mouseenter", function () { hl = +li.dataset.fn; draw(); });
  li.addEventListener("mouseleave", function () { hl = -1; draw(); });
});
window.addEventListener("resize", draw);
draw();
})();
"""

_MARK_GLYPHS = {RETRY: ("▼", "#f5a623"), WORKER_LOST: ("✕", "#000000"),
                FAILURE: ("●", "#e00000"), OTHER: ("|", "#888888")}


def _row_geometry(rows: int) -> tuple[int, int]:
    """Row height and label font size: 22 px rows, smaller when there are very many, so
    the canvas stays under the size browsers allow (about 32,000 px)."""
    if rows <= 300:
        return 22, 12
    height = max(4, min(22, 9000 // rows))
    return height, max(6, min(12, height - 2))


def render_html(trace: Trace, title: str | None = None) -> str:
    """One self-contained HTML page for ``trace``: no network, no CDN, opens offline.

    Row labels are DOM elements (``<div class="pydron-row" data-track="pid:tid"
    data-calls="N" data-bars="M">``, one per track, idle ones included) and the root
    ``<div id="pydron-timeline">`` carries ``data-rows``, ``data-calls`` and ``data-bars``,
    so a test or script can read the picture's structure. Bars are drawn by inline script
    on one ``<canvas>``: hover shows a call's function, site and duration, the mouse wheel
    zooms, dragging pans, a double click shows the whole run again, and hovering a legend
    entry highlights that function. ``data-bars`` counts the bars after merging at
    :data:`HTML_RESOLUTION` (see :func:`merge_calls`): equal to the calls unless calls of
    one function follow each other within 1/20,000 of the run, or calls narrower than that
    come closer than that to each other.
    """
    title = title or Path(trace.path).name
    stats = trace.function_stats()
    fn_index = {name: i for i, (name, _, _) in enumerate(stats)}
    sites: dict[str, int] = {}
    resolution = trace.span_s / HTML_RESOLUTION
    row_data: list[list[int]] = []
    row_html: list[str] = []
    total_bars = 0
    row_h, font = _row_geometry(len(trace.tracks))
    for track in trace.tracks:
        bars = merge_calls(track.calls, resolution)
        total_bars += len(bars)
        flat: list[int] = []
        prev = 0
        for b in bars:
            start, end = round(b.start_s * 1e6), round(b.end_s * 1e6)
            site = sites.setdefault(b.site, len(sites)) if b.site else -1
            flags = (0 if b.ok else 1) | (2 if b.attempt > 1 else 0)
            call_id = b.call_id if b.call_id is not None and b.count == 1 else -1
            flat += (start - prev, end - start, fn_index[b.function], site, b.count, flags,
                     call_id, round(100 * b.fill))
            prev = end
        row_data.append(flat)
        busy = track.busy_s / trace.span_s if trace.span_s > 0 else 0.0
        tooltip = (f"{track.label} (pid {track.pid}, tid {track.tid}): {len(track.calls):,} "
                   f"calls, busy {_duration(track.busy_s)} ({100 * busy:.0f}%)")
        row_html.append(
            f'<div class="pydron-row" data-track="{html.escape(track.key)}" '
            f'data-calls="{len(track.calls)}" data-bars="{len(bars)}" '
            f'data-busy="{busy:.4f}" title="{html.escape(tooltip)}">'
            f'<span class="name">{html.escape(track.label)}</span>'
            f'<span class="busy">{100 * busy:.0f}%</span></div>')
    data = {
        "span": trace.span_s, "rowHeight": row_h, "axisHeight": 24,
        "functions": [[name, trace.colours[name]] for name, _, _ in stats],
        "sites": list(sites), "labels": [t.label for t in trace.tracks], "rows": row_data,
        "markers": [[-1 if m.track is None else m.track, round(m.time_s * 1e6), m.kind,
                     m.text] for m in trace.markers],
    }
    # "<" escaped so that no string in the data (a "<lambda>", an error text) can end the
    # script element; JSON.parse reads \u003c back as "<".
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace(
        "<", "\\u003c")

    legend = []
    busy_total = sum(b for _, _, b in stats) or 1.0
    shown = stats[:300]
    for name, count, busy_s in shown:
        legend.append(
            f'<li data-fn="{fn_index[name]}" title="{html.escape(name)}">'
            f'<span class="swatch" style="background:{trace.colours[name]}"></span>'
            f'{html.escape(name)} <span class="n">{count:,} call{"s" if count != 1 else ""}'
            f' · {_duration(busy_s)} · {100 * busy_s / busy_total:.0f}%</span></li>')
    if len(stats) > len(shown):
        legend.append(f'<li><span class="n">and {len(stats) - len(shown):,} more '
                      f'functions</span></li>')
    counts = trace.marker_counts()
    for kind in MARKER_KINDS:
        if counts[kind]:
            glyph, colour = _MARK_GLYPHS[kind]
            legend.append(f'<li><span class="mark" style="color:{colour}">{glyph}</span>'
                          f'{kind} <span class="n">{counts[kind]:,}</span></li>')
    if trace.failed_calls():
        legend.append('<li><span class="swatch" style="border:2px solid #e00000;'
                      'width:10px;height:8px"></span>failed call <span class="n">'
                      f'{trace.failed_calls():,}</span></li>')

    if trace.tracks:
        body = (
            f'<div id="pydron-timeline" class="pydron-timeline" '
            f'data-rows="{len(trace.tracks)}" data-calls="{trace.n_calls}" '
            f'data-bars="{total_bars}" style="--row:{row_h}px;--axis:24px;--font:{font}px">'
            f'<div class="labels"><div class="axis-spacer"></div>{"".join(row_html)}</div>'
            f'<div class="plot"><canvas id="pydron-canvas"></canvas></div></div>\n'
            f'<p class="hint">Seconds since the first event. Hover for details; wheel to '
            f'zoom, drag to pan, double-click to see the whole run.</p>\n')
    else:
        body = ('<div id="pydron-timeline" class="pydron-timeline" data-rows="0" '
                'data-calls="0" data-bars="0"><div class="empty">This trace has no '
                'tracks: no calls and no workers were recorded.</div></div>\n')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"summary\">{html.escape(_summary(trace))}"
        f"</p>\n{body}<ul class=\"legend\">{''.join(legend)}</ul>\n"
        "<div id=\"pydron-tip\" class=\"tip\" hidden></div>\n"
        f"<script type=\"application/json\" id=\"pydron-data\">{payload}</script>\n"
        f"<script>{_JS}</script>\n</body></html>\n")


# --------------------------------------------------------------------------- PNG


def _matplotlib() -> Any:
    try:
        # A Figure of its own draws with Agg, without pyplot: no display, and the
        # caller's backend and open figures are left alone.
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise TimelineDependencyError(
            f"drawing a .png timeline needs matplotlib, which cannot be imported ({exc}): "
            f"install it (python -m pip install matplotlib) or write an .html timeline "
            f"instead (-o timeline.html), which needs nothing") from None
    return Figure, Line2D, Patch


def _tint(colour: str, fill: float) -> tuple[float, float, float]:
    """``colour`` mixed with white by ``fill`` (at least a quarter, so a bar stays visible):
    an opaque colour, so that overlaps and the PNG's pixels stay simple."""
    strength = max(0.25, min(1.0, fill))
    rgb = (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))
    r, g, b = (1 - strength * (1 - v / 255) for v in rgb)
    return r, g, b


def _label(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def render_png(trace: Trace, path: str | Path, title: str | None = None) -> None:
    """Draw ``trace`` with matplotlib into ``path`` (PNG; ``.svg``/``.pdf`` work too).

    One ``broken_barh`` per row, bars merged at :data:`PNG_RESOLUTION` across the run; the
    figure grows with the number of rows (and shrinks the rows when there are hundreds),
    the legend (functions with call counts, then the marker kinds) sits right of the plot
    so that nothing but bars is coloured inside it. Uses a ``Figure`` of its own, not
    pyplot, so it leaves the caller's matplotlib state alone.
    """
    Figure, Line2D, Patch = _matplotlib()
    title = title or Path(trace.path).name
    n = len(trace.tracks)
    row_in = 0.32 if n <= 60 else max(0.06, 24 / n)
    fig = Figure(figsize=(14, 1.6 + max(n, 3) * row_in), dpi=100)
    ax = fig.add_subplot()
    span = trace.span_s if trace.span_s > 0 else 1.0
    resolution = span / PNG_RESOLUTION
    if n:
        odd = list(range(1, n, 2))
        ax.barh([i + 0.5 for i in odd], [span * 1.04] * len(odd), left=-span * 0.02, height=1,
                color="#f4f4f4", zorder=0)
    def outline(bar: Bar) -> bool:
        return not bar.ok and bar.end_s - bar.start_s >= 8 * resolution

    for i, track in enumerate(trace.tracks):
        bars = merge_calls(track.calls, resolution)
        if not bars:
            continue
        ax.broken_barh([(b.start_s, max(b.end_s - b.start_s, resolution / 2)) for b in bars],
                       (i + 0.15, 0.7),
                       facecolors=[_tint(trace.colours[b.function], b.fill) for b in bars],
                       edgecolors=["#e00000" if outline(b) else "none" for b in bars],
                       linewidths=[1.2 if outline(b) else 0 for b in bars], zorder=2)
        # A failed call too narrow for an outline gets a red tick on the bar's top edge.
        ticks = [b.start_s for b in bars if not b.ok and not outline(b)]
        if ticks:
            ax.plot(ticks, [i + 0.15] * len(ticks), linestyle="none", marker="|",
                    color="#e00000", markersize=4, zorder=3)
    styles = {RETRY: dict(marker="v", color="#f5a623", markeredgecolor="black", markersize=7),
              WORKER_LOST: dict(marker="X", color="black", markeredgecolor="white",
                                markersize=8),
              FAILURE: dict(marker="o", color="#e00000", markeredgecolor="white",
                            markersize=7),
              OTHER: dict(marker="|", color="#888888", markersize=8)}
    counts = trace.marker_counts()
    for kind in MARKER_KINDS:
        row_marks = [m for m in trace.markers if m.kind == kind and m.track is not None]
        if row_marks:
            y_of = {RETRY: 0.2, WORKER_LOST: 0.5, FAILURE: 0.5, OTHER: 0.5}[kind]
            if kind == WORKER_LOST:
                ax.vlines([m.time_s for m in row_marks], [m.track for m in row_marks],
                          [m.track + 1 for m in row_marks], colors="black", linewidth=1.2,
                          zorder=3)
            ax.plot([m.time_s for m in row_marks], [m.track + y_of for m in row_marks],
                    linestyle="none", zorder=4, **styles[kind])
        for m in trace.markers:
            if m.kind == kind and m.track is None:
                ax.axvline(m.time_s, color=styles[kind]["color"], linestyle="--",
                           linewidth=1, zorder=3)
    ax.set_ylim(max(n, 1), 0)
    ax.set_xlim(-span * 0.01, span * 1.01)
    step = max(1, math.ceil(n / 80))
    ax.set_yticks([i + 0.5 for i in range(0, n, step)])
    ax.set_yticklabels([_label(trace.tracks[i].label) for i in range(0, n, step)],
                       fontsize=9 if n <= 60 else 6)
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("seconds since the first event"
                  + (f" (run started {trace.started})" if trace.started else ""))
    ax.set_title(title, loc="left", fontsize=13, fontweight="bold", pad=18)
    ax.annotate(_summary(trace), xy=(0, 1), xycoords="axes fraction", xytext=(0, 5),
                textcoords="offset points", fontsize=8, color="#555555", va="bottom")
    if not n:
        ax.text(0.5, 0.5, "no tracks: no calls and no workers were recorded",
                transform=ax.transAxes, ha="center", va="center", color="#777777")
        ax.set_yticks([])

    stats = trace.function_stats()
    handles: list[Any] = [Patch(facecolor=trace.colours[name], label=_label(
        f"{name} ({count:,} call{'s' if count != 1 else ''})", 48))
        for name, count, _ in stats[:20]]
    if len(stats) > 20:
        handles.append(Patch(facecolor="white", edgecolor="white",
                             label=f"+ {len(stats) - 20} more functions"))
    for kind in MARKER_KINDS:
        if counts[kind]:
            handles.append(Line2D([], [], linestyle="none", label=f"{kind} ({counts[kind]:,})",
                                  **styles[kind]))
    if trace.failed_calls():
        handles.append(Patch(facecolor="white", edgecolor="#e00000", linewidth=1.2,
                             label=f"failed call ({trace.failed_calls():,})"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=8, frameon=False, borderaxespad=0)
    fig.savefig(str(path), dpi=100, bbox_inches="tight", facecolor="white")


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``timeline`` subcommand's arguments, for a parser built elsewhere."""
    parser.add_argument("trace", metavar="TRACE", help="a trace-event JSON file Pydron wrote")
    parser.add_argument("-o", "--output", metavar="OUT", default=None,
                        help="the picture to write: .html (default: TRACE with .html) or "
                             ".png (needs matplotlib; .svg and .pdf work as well)")
    parser.add_argument("--title", default=None, help="the heading (default: TRACE's name)")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand for parsed ``args``; returns the exit status (0, 1 or 2)."""
    trace_path = Path(args.trace)
    out = Path(args.output) if args.output else trace_path.with_suffix(".html")
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".png", ".svg", ".pdf"):
        print(f"pydron timeline: error: {out}: the output must end in .html or .png",
              file=sys.stderr)
        return 2
    try:
        trace = load_trace(trace_path)
        if suffix in (".html", ".htm"):
            out.write_text(render_html(trace, args.title), encoding="utf-8")
        else:
            render_png(trace, out, args.title)
    except (PydronError, OSError) as exc:
        print(f"pydron timeline: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(trace.tracks)} rows, {trace.n_calls:,} calls)")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    """``timeline TRACE [-o OUT] [--title T]``; ``argv`` are the arguments after
    ``timeline`` (default: ``sys.argv[1:]``). Exit status 0, 1 for an unreadable trace or
    a missing matplotlib, 2 for a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m pydron timeline",
        description="Draw a Pydron trace file as a timeline: a row per worker, a bar per "
                    "call coloured by function, markers for retries, lost workers and "
                    "failures.")
    add_arguments(parser)
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
