"""The timeline of a trace file (pydron/observe/timeline.py), on synthetic traces.

The pictures are checked as pictures where that is cheap: the PNG (and, where a headless
Chromium is installed, the HTML page's screenshot) is read back and a pixel column through
the middle of the plot must cross one coloured band per busy worker -- so a row that is not
drawn, a bar that is drawn grey, or bars that run into each other fail the test.
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest_hosts import unavailable
from pydron.observe import timeline
from pydron.observe.timeline import (
    Call, TimelineDependencyError, TraceFormatError, load_trace, merge_calls, render_html,
    render_png,
)

Spec = dict[int, list[tuple[float, float, str]]]  # tid -> [(start s, duration s, function)]


def trace_events(spec: Spec, *, idle: tuple[int, ...] = (), unnamed: tuple[int, ...] = (),
                 origin_us: float = 5_000_000.0, failed: tuple[int, ...] = (),
                 extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A trace as the writer produces it: names and sort indices, then the calls.

    ``idle`` tids get metadata but no calls; ``unnamed`` tids get calls but no metadata;
    the calls numbered in ``failed`` (in the order written) have ``ok: false``.
    """
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "host vm (multicore)"}}]
    for tid in sorted(set(spec) | set(idle)):
        if tid in unnamed:
            continue
        events.append({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid,
                       "args": {"name": f"worker {tid} (pid {4700 + tid})"}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": tid,
                       "args": {"sort_index": tid}})
    n = 0
    for tid, calls in spec.items():
        for start, dur, fn in calls:
            events.append({
                "ph": "X", "name": fn, "cat": "call", "pid": 1, "tid": tid,
                "ts": origin_us + start * 1e6, "dur": dur * 1e6,
                "args": {"call": n, "site": f"pipeline.py:{40 + len(fn)}", "arg_bytes": 10,
                         "result_bytes": 10, "queued_ms": 0.1, "transfer_ms": 0.2,
                         "run_ms": dur * 1e3, "ok": n not in failed, "attempt": 1}})
            n += 1
    events += extra or []
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"pydron": "0.x", "started": "2026-12-02T01:00:00Z", "calls": n}}


def write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def rows_of(page: str) -> list[dict[str, str]]:
    """The ``data-*`` attributes of each ``pydron-row`` element of an HTML page."""
    found = re.findall(r'<div class="pydron-row" ([^>]*)>', page)
    return [dict(re.findall(r'data-([a-z]+)="([^"]*)"', attrs)) for attrs in found]


# --------------------------------------------------------------------------- loading


def test_load_trace_tracks_calls_markers(tmp_path: Path) -> None:
    spec: Spec = {2: [(0.0, 1.0, "stack"), (1.5, 0.5, "subtract_dark")],
                  1: [(0.25, 2.0, "subtract_dark")], 7: [(0.1, 0.1, "stack")]}
    marks = [
        {"ph": "i", "s": "t", "name": "retry", "cat": "retry", "pid": 1, "tid": 2,
         "ts": 5_500_000.0, "args": {"call": 18, "why": "worker 3 was killed by SIGKILL"}},
        {"ph": "i", "s": "t", "name": "worker lost", "cat": "worker", "pid": 1, "tid": 9,
         "ts": 5_600_000.0, "args": {"why": "SIGKILL"}},
        {"ph": "i", "s": "t", "name": "failure", "cat": "failure", "pid": 1, "tid": 1,
         "ts": 5_700_000.0, "args": {"call": 19, "error": "ValueError: bad frame"}},
        {"ph": "i", "s": "g", "name": "pool resized", "pid": 1, "ts": 5_800_000.0},
    ]
    path = write(tmp_path / "t.json", trace_events(spec, idle=(3,), unnamed=(7,), failed=(1,),
                                                   extra=marks))
    trace = load_trace(path)
    assert [t.name for t in trace.tracks] == [
        "worker 1 (pid 4701)", "worker 2 (pid 4702)", "worker 3 (pid 4703)",
        "pid 1 / tid 7", "pid 1 / tid 9"]
    assert [len(t.calls) for t in trace.tracks] == [1, 2, 0, 1, 0]
    start, end, fn, ok = trace.tracks[1].calls[0][:4]  # calls are (start_s, end_s, fn, ok)
    assert (start, end, fn, ok) == (0.0, 1.0, "stack", True)
    assert trace.tracks[1].calls[1].ok is False  # the second call written failed
    assert trace.tracks[1].calls[1].site == "pipeline.py:53"
    assert trace.span_s == pytest.approx(2.25)
    assert [(m.kind, m.track) for m in trace.markers] == [
        ("retry", 1), ("worker lost", 4), ("failure", 0), ("other", None)]
    assert "worker 3 was killed by SIGKILL" in trace.markers[0].text
    assert "ValueError: bad frame" in trace.markers[2].text
    assert set(trace.colours) == {"stack", "subtract_dark"}
    assert len(set(trace.colours.values())) == 2
    assert list(trace.colours)[0] == "subtract_dark"  # most busy time: the clearest colour
    assert trace.started == "2026-12-02T01:00:00Z"


def test_array_form_gzip_and_truncated_files(tmp_path: Path) -> None:
    events = trace_events({1: [(0, 1, "f"), (2, 1, "g")]})["traceEvents"]
    gz = tmp_path / "t.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(events).encode()))
    assert load_trace(gz).n_calls == 2
    # A run killed while writing: the last event is cut off, and the closing brackets.
    text = json.dumps(trace_events({1: [(0, 1, "f"), (2, 1, "g"), (4, 1, "h")]}))
    cut = text[:text.rindex('"ok"')]
    trace = load_trace(write_text(tmp_path / "cut.json", cut))
    assert trace.truncated and trace.n_calls == 2
    array = json.dumps(events)
    trace = load_trace(write_text(tmp_path / "open.json", array[:-1] + ",\n"))
    assert trace.truncated and trace.n_calls == 2
    assert "cut short" in render_html(trace)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("content, what", [
    ("", "an empty file"),
    ("this is not json", "not JSON"),
    ('{"traceEvents": [', "not JSON"),
    ('{"events": []}', "without a 'traceEvents' list"),
    ('{"traceEvents": {"ph": "X"}}', "not a list of events"),
    ("[1, 2, 3]", "event #0 is a int"),
    ('"a string"', "the JSON is a str"),
    ('[{"name": "f"}]', "event #0 has no 'ph'"),
    ('[{"ph": "X", "cat": "call", "name": "f", "ts": "soon", "dur": 1}]', "numeric 'ts'"),
    ('[{"ph": "i", "name": "retry"}]', "needs a numeric 'ts'"),
])
def test_bad_files_give_a_clear_error(tmp_path: Path, content: str, what: str) -> None:
    path = write_text(tmp_path / "bad-trace.json", content)
    with pytest.raises(TraceFormatError) as info:
        load_trace(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message and "not a trace-event JSON file" in message
    assert what in message


def test_binary_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"picture\.png.*not UTF-8"):
        load_trace(path)


# --------------------------------------------------------------------------- merging


def test_merge_keeps_visible_calls_and_bins_tiny_ones() -> None:
    apart = [Call(i * 1.0, i * 1.0 + 0.5, "f", True) for i in range(10)]
    assert len(merge_calls(apart, 0.01)) == 10  # a gap of 0.5 s is 50 pixels
    assert len(merge_calls(apart, 0.0)) == 10
    # Contiguous calls of one function are one bar; of two functions, two.
    touching = [Call(i * 1.0, i * 1.0 + 1.0, "f" if i < 5 else "g", True) for i in range(10)]
    assert [(b.function, b.count) for b in merge_calls(touching, 0.01)] == [
        ("f", 5), ("g", 5)]
    # 100,000 calls of 10 µs, a third of the time busy, mostly "f": at 1 ms a pixel that
    # is about 1000 pixels, so about a bar per pixel at most, coloured "f", a third full.
    tiny = [Call(i * 3e-5, i * 3e-5 + 1e-5, "g" if i % 4 == 0 else "f", i != 7)
            for i in range(100_000)]
    bars = merge_calls(tiny, 1e-3)
    assert len(bars) <= 2 * 3000 / 1 + 2
    assert sum(b.count for b in bars) == 100_000
    assert {b.function for b in bars} == {"f"}
    assert all(b.fill == pytest.approx(1 / 3, abs=0.05) for b in bars[1:-1])
    assert [b.ok for b in bars].count(False) == 1
    assert bars[0].start_s == 0.0 and bars[-1].end_s == tiny[-1].end_s


# --------------------------------------------------------------------------- HTML


def test_html_rows_bars_and_self_contained(tmp_path: Path) -> None:
    spec: Spec = {1: [(0, 1, "<lambda>"), (2, 1, "stack")], 2: [(0.5, 3, "stack")],
                  5: [(i * 0.4, 0.2, "subtract_dark") for i in range(10)]}
    trace = load_trace(write(tmp_path / "t.json", trace_events(spec, idle=(3, 4),
                                                                 unnamed=(5,))))
    page = render_html(trace, title="nightly <run> & co")
    rows = rows_of(page)
    assert [r["track"] for r in rows] == ["1:1", "1:2", "1:3", "1:4", "1:5"]
    assert [int(r["calls"]) for r in rows] == [2, 1, 0, 0, 10]
    assert [int(r["bars"]) for r in rows] == [2, 1, 0, 0, 10]  # one bar per visible call
    assert 'data-rows="5"' in page and 'data-calls="13"' in page and 'data-bars="13"' in page
    assert "pid 1 / tid 5" in page  # the fallback name of a track without metadata
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    assert "<link" not in page and "src=" not in page  # nothing loaded from anywhere
    assert "<canvas" in page
    assert "nightly &lt;run&gt; &amp; co" in page and "&lt;lambda&gt;" in page
    assert "<lambda>" not in page and "<run>" not in page  # escaped in text and data
    data = json.loads(re.search(r'<script type="application/json" id="pydron-data">(.*?)'
                                r'</script>', page, re.S).group(1))
    assert [name for name, _ in data["functions"]] == ["stack", "subtract_dark", "<lambda>"]
    assert len(data["rows"]) == 5 and len(data["rows"][4]) == 8 * 10
    legend = re.findall(r'<li data-fn="\d+"[^>]*>.*?</li>', page)
    assert len(legend) == 3 and any("10 calls" in li for li in legend)


def test_html_markers_and_failures_are_listed(tmp_path: Path) -> None:
    extra = [{"ph": "i", "s": "t", "name": "retry", "cat": "retry", "pid": 1, "tid": 1,
              "ts": 5_100_000.0, "args": {"call": 1, "why": "worker 2 was killed"}},
             {"ph": "i", "s": "t", "name": "worker lost", "cat": "worker", "pid": 1,
              "tid": 2, "ts": 5_200_000.0, "args": {"why": "SIGKILL"}}]
    trace = load_trace(write(tmp_path / "t.json", trace_events(
        {1: [(0, 1, "f")], 2: [(0, 1, "f")]}, failed=(0,), extra=extra)))
    page = render_html(trace)
    assert "retry <span" in page and "worker lost <span" in page
    assert "failed call" in page and "1 failed call" in page
    assert "worker 2 was killed" in page  # the marker's tooltip text is in the data


def test_empty_trace_renders(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path / "t.json", {"traceEvents": []}))
    assert trace.tracks == [] and 'data-rows="0"' in render_html(trace)


def test_html_of_100000_calls_is_fast_and_compact(tmp_path: Path) -> None:
    workers, per = 16, 6250
    spec: Spec = {w: [(i * 0.01 + w * 1e-4, 0.009, f"fn{(i * 7 + w) % 12}")
                      for i in range(per)] for w in range(workers)}
    path = write(tmp_path / "big.json", trace_events(spec, idle=(99,)))
    t0 = time.perf_counter()
    trace = load_trace(path)
    t1 = time.perf_counter()
    page = render_html(trace)
    t2 = time.perf_counter()
    print(f"100,000 calls: load {t1 - t0:.2f} s, render_html {t2 - t1:.2f} s, "
          f"{len(page) / 1e6:.1f} MB")
    assert trace.n_calls == workers * per
    rows = rows_of(page)
    assert len(rows) == workers + 1
    assert sum(int(r["calls"]) for r in rows) == workers * per
    assert t1 - t0 < 10 and t2 - t1 < 10  # typically 1 s each on a loaded 2-core machine
    assert page.count("<") < 2000  # no element per call: one canvas draws them
    assert len(page) < 12_000_000


# --------------------------------------------------------------------------- PNG


def need_matplotlib() -> Any:
    """matplotlib's pyplot (to read PNGs back), or a skip -- a failure under CI=true."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        unavailable(f"matplotlib cannot be imported ({exc}); the PNG timeline needs it: "
                    f"python -m pip install matplotlib")
    return plt


def coloured_bands(column: Any) -> int:
    """Separate runs of coloured pixels (not white, not grey, not black) in a column."""
    rgb = column[:, :3]
    coloured = (rgb.max(axis=1) - rgb.min(axis=1)) > 0.25
    bands, inside = 0, False
    for flag in coloured:
        if flag and not inside:
            bands += 1
        inside = bool(flag)
    return bands


def plot_middle_column(img: Any) -> int:
    """The x of the pixel column midway between the plot's left and right frame lines
    (the columns with the most dark pixels), so the scan avoids labels and the legend."""
    dark = img[:, :, :3].max(axis=2) < 0.35
    counts = dark.sum(axis=0)
    frame = [x for x, n in enumerate(counts) if n >= 0.8 * counts.max()]
    assert len(frame) >= 2 and frame[-1] - frame[0] > img.shape[1] // 3, frame
    return (frame[0] + frame[-1]) // 2


@pytest.mark.parametrize("idle", [(), (2,)], ids=["3 busy", "3 busy and 1 idle"])
def test_png_has_one_band_per_busy_worker(tmp_path: Path, idle: tuple[int, ...]) -> None:
    plt = need_matplotlib()
    busy = [t for t in (0, 1, 2, 3) if t not in idle][:3]
    spec: Spec = {tid: [(0.0, 10.0, "subtract_dark")] for tid in busy}
    trace = load_trace(write(tmp_path / "t.json", trace_events(spec, idle=idle)))
    assert len(trace.tracks) == 3 + len(idle)
    out = tmp_path / "timeline.png"
    render_png(trace, out, title="three workers")
    img = plt.imread(out)
    x = plot_middle_column(img)
    assert coloured_bands(img[:, x]) == 3
    if idle:  # the idle worker is a row of its own, in its place, with no bar
        assert trace.tracks[2].name == "worker 2 (pid 4702)" and not trace.tracks[2].calls


def test_png_height_grows_with_rows(tmp_path: Path) -> None:
    plt = need_matplotlib()
    heights = []
    for n in (2, 20):
        spec: Spec = {tid: [(0.0, 1.0, "f")] for tid in range(n)}
        out = tmp_path / f"t{n}.png"
        render_png(load_trace(write(tmp_path / f"t{n}.json", trace_events(spec))), out)
        img = plt.imread(out)
        heights.append(img.shape[0])
        assert coloured_bands(img[:, plot_middle_column(img)]) == n
    assert heights[1] > heights[0] * 2


def test_png_of_100000_calls_with_markers(tmp_path: Path) -> None:
    plt = need_matplotlib()
    spec: Spec = {w: [(i * 0.01, 0.008, f"fn{i % 5}") for i in range(12_500)] for w in range(8)}
    extra = [{"ph": "i", "s": "t", "name": "worker lost", "cat": "worker", "pid": 1, "tid": 3,
              "ts": 5_000_000.0 + 60e6, "args": {"why": "SIGKILL"}}]
    trace = load_trace(write(tmp_path / "big.json", trace_events(spec, failed=(5, 9000),
                                                                 extra=extra)))
    t0 = time.perf_counter()
    render_png(trace, tmp_path / "big.png")
    elapsed = time.perf_counter() - t0
    print(f"render_png of 100,000 calls: {elapsed:.2f} s")
    assert elapsed < 30
    assert plt.imread(tmp_path / "big.png").shape[0] > 200


def test_png_without_matplotlib_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    trace = load_trace(write(tmp_path / "t.json", trace_events({1: [(0, 1, "f")]})))
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(TimelineDependencyError) as info:
        render_png(trace, tmp_path / "t.png")
    assert isinstance(info.value, ImportError)
    assert "pip install matplotlib" in str(info.value) and ".html" in str(info.value)
    assert timeline.main([str(tmp_path / "t.json"), "-o", str(tmp_path / "t.png")]) == 1


# --------------------------------------------------------------------------- command line


def test_main_writes_html_by_default_and_png_by_suffix(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "run.json", trace_events({1: [(0, 1, "f")], 2: [(0, 2, "g")]}))
    assert timeline.main([str(path), "--title", "my run"]) == 0
    page = (tmp_path / "run.html").read_text(encoding="utf-8")
    assert "<h1>my run</h1>" in page and len(rows_of(page)) == 2
    assert "wrote" in capsys.readouterr().out
    assert timeline.main([str(path), "-o", str(tmp_path / "x.txt")]) == 2
    assert ".html or .png" in capsys.readouterr().err
    bad = write_text(tmp_path / "notes.json", "hello")
    assert timeline.main([str(bad), "-o", str(tmp_path / "n.html")]) == 1
    err = capsys.readouterr().err
    assert "notes.json" in err and "not a trace-event JSON file" in err
    assert timeline.main([str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err
    assert timeline.main(["--help"]) == 0
    need_matplotlib()
    assert timeline.main([str(path), "-o", str(tmp_path / "run.png")]) == 0
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- in a browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.parametrize("idle", [(), (2,)], ids=["3 busy", "3 busy and 1 idle"])
def test_html_in_headless_chromium(tmp_path: Path, idle: tuple[int, ...]) -> None:
    """The page as a browser draws it (canvas and script included): one band per busy
    worker in a column through the plot. Skipped where no Chromium is installed (``.ci/run``
    installs it; under CI=true a missing one fails)."""
    browser = chromium()
    if browser is None:
        unavailable("no headless Chromium here (apt-get install chromium to run this)")
    plt = need_matplotlib()
    busy = [t for t in (0, 1, 2, 3) if t not in idle][:3]
    spec: Spec = {tid: [(0.0, 10.0, "subtract_dark")] for tid in busy}
    page = tmp_path / "t.html"
    page.write_text(render_html(load_trace(write(tmp_path / "t.json", trace_events(
        spec, idle=idle)))), encoding="utf-8")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=1200,600", f"--screenshot={shot}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert shot.exists(), done.stderr[-2000:]
    img = plt.imread(shot)
    x = int(img.shape[1] * 0.6)  # right of the labels (at most 280 px), inside the canvas
    assert coloured_bands(img[:, x]) == 3


_PROBE = """<script>
(function () {
  var cv = document.getElementById("pydron-canvas"), box = cv.getBoundingClientRect();
  function at(fx, row) {
    cv.dispatchEvent(new MouseEvent("mousemove", {clientX: box.left + box.width * fx,
      clientY: box.top + 24 + 22 * row + 11, bubbles: true}));
    return document.getElementById("pydron-tip").textContent;
  }
  var seen = [at(0.5, 0), at(0.5, 1)];
  cv.dispatchEvent(new WheelEvent("wheel", {clientX: box.left + box.width / 2,
    clientY: box.top + 30, deltaY: -800, cancelable: true}));
  seen.push(at(0.5, 0));
  document.body.setAttribute("data-probe", JSON.stringify(seen));
})();
</script></body>"""


def test_html_tooltips_in_headless_chromium(tmp_path: Path) -> None:
    """Hovering a bar names its function, site and duration; hovering an idle row says
    how long it was idle; zooming with the wheel keeps the script working."""
    browser = chromium()
    if browser is None:
        unavailable("no headless Chromium here (apt-get install chromium to run this)")
    spec: Spec = {0: [(0.0, 10.0, "subtract_dark")]}
    page = render_html(load_trace(write(tmp_path / "t.json", trace_events(spec, idle=(1,)))))
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE), encoding="utf-8")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--window-size=1200,600", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, done.stderr[-2000:]
    bar, idle, zoomed = json.loads(found.group(1).replace("&quot;", '"'))
    assert bar.splitlines()[:3] == ["subtract_dark", "pipeline.py:53",
                                    "10.0 s  (0.000 s to 10.000 s)"]
    assert idle == "worker 1 (pid 4701)\nidle 10.0 s"
    assert zoomed.startswith("subtract_dark")
