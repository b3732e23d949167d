"""What Pydron costs on the caller's side, against the targets of the compiler issue.

    python benchmarks/overhead.py            # all five figures (about a minute)
    python benchmarks/overhead.py --quick    # smaller loops, for a smoke test

1. translation time of a 100-line function (target: under 20 ms);
2. a function with no functional calls, scheduled vs plain (target: at most 1.1x);
3. master-side cost per loop iteration holding one functional call, inline pool
   (target: at most 50 us);
4. peak memory of a 1,000,000-iteration such loop (target: under 300 MB, and not growing
   with the iteration count);
5. the same cost per iteration when the call sits in a try/except inside the loop, and its
   ratio to figure 3 (target of issue 13: at most 2x).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pydron  # noqa: E402
from pydron.translation import translate  # noqa: E402


def _hundred_line_module() -> str:
    """A 100-line function of the kind people write: loops, branches, calls, comprehensions."""
    body = []
    for i in range(12):
        body += [
            f"    part{i} = []",
            f"    for x in items[{i}::12]:",
            f"        y = work(x + {i})",
            f"        if check(y) and y % {i + 2} == 0:",
            f"            part{i}.append(y)",
            "        else:",
            "            skipped += 1",
            f"    totals[{i}] = sum(part{i}) if part{i} else 0",
        ]
    body += ["    best = max(totals, key=totals.get)",
             "    return best, skipped, [work(t) for t in totals.values()]"]
    lines = ["import pydron", "", "@pydron.functional", "def work(x):", "    return x * x", "",
             "@pydron.functional", "def check(x):", "    return x % 3 != 0", "",
             "def big(items):", "    totals = {}", "    skipped = 0"] + body
    return "\n".join(lines) + "\n"


def translation_time() -> tuple[float, int]:
    source = _hundred_line_module()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hundred.py")
        with open(path, "w") as fh:
            fh.write(source)
        spec = importlib.util.spec_from_file_location("hundred", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        import inspect
        lines = len(inspect.getsource(module.big).splitlines())
        translate(module.big)                       # warm imports
        times = []
        for _ in range(20):
            t = time.perf_counter()
            translate(module.big)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3, lines


def plain_work(n):
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def no_functional_ratio() -> float:
    scheduled = pydron.schedule(plain_work)
    scheduled(10)
    ratios = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(20):
            plain_work(20000)
        plain = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(20):
            scheduled(20000)
        sched = time.perf_counter() - t
        ratios.append(sched / plain)
    return statistics.median(ratios)


@pydron.functional
def one(x):
    return x + 1


def loop_with_call(n):
    total = 0
    for x in range(n):
        total += one(x)
    return total


def loop_with_try(n):
    """The loop of issue 13: each call in its own try, so a failure skips one item."""
    out = []
    for x in range(n):
        try:
            out.append(one(x))
        except ValueError:
            pass
    return out


def per_iteration_us(n: int, loop=loop_with_call) -> float:
    pydron.configure({"workers": [{"type": "inline"}]})
    scheduled = pydron.schedule(loop)
    scheduled(100)
    t = time.perf_counter()
    loop(n)
    plain = time.perf_counter() - t
    t = time.perf_counter()
    assert scheduled(n) == loop(n)
    sched = time.perf_counter() - t
    return (sched - plain) / n * 1e6


def dispatched(loop, n: int = 100) -> int:
    """How many of the loop's ``n`` calls went through the pool (an untimed run): a call
    that the translation leaves in plain code (a try body that runs as one step) runs in
    the caller and costs no scheduling, so its loop's figure says nothing of the scheduler."""
    from pydron.observe import recording
    pydron.configure({"workers": [{"type": "inline"}]})
    scheduled = pydron.schedule(loop)
    with recording(keep_events=False) as rec:
        scheduled(n)
    return rec.counts().submitted


_MEMORY_CHILD = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {root!r})
    import pydron
    sys.path.insert(0, {here!r})
    from overhead import loop_with_call
    pydron.configure({{"workers": [{{"type": "inline"}}]}})
    n = int(sys.argv[1])
    assert pydron.schedule(loop_with_call)(n) == n * (n + 1) // 2
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def peak_memory_mb(n: int) -> float:
    code = _MEMORY_CHILD.format(root=os.path.dirname(HERE), here=HERE)
    out = subprocess.run([sys.executable, "-c", code, str(n)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller loops")
    args = parser.parse_args()
    n_iter = 20_000 if args.quick else 200_000
    n_mem = 100_000 if args.quick else 1_000_000

    rows = []
    ms, lines = translation_time()
    rows.append((f"translate a {lines}-line function", f"{ms:.1f} ms", "< 20 ms", ms < 20))
    ratio = no_functional_ratio()
    rows.append(("no functional calls: scheduled / plain", f"{ratio:.3f}x", "<= 1.1x",
                 ratio <= 1.1))
    us = per_iteration_us(n_iter)
    rows.append((f"master cost per iteration (inline pool, {n_iter:,} iterations)",
                 f"{us:.1f} us", "<= 50 us", us <= 50))
    us_try = per_iteration_us(n_iter, loop_with_try)
    rows.append((f"the same, the call in a try/except ({n_iter:,} iterations)",
                 f"{us_try:.1f} us", "", True))
    ratio_try = us_try / us
    sent, sent_try = dispatched(loop_with_call), dispatched(loop_with_try)
    rows.append(("try/except loop / plain loop, per iteration", f"{ratio_try:.2f}x", "<= 2x",
                 ratio_try <= 2 and sent_try == sent))
    small = peak_memory_mb(n_mem // 10)
    big = peak_memory_mb(n_mem)
    rows.append((f"peak memory, {n_mem // 10:,} iterations", f"{small:.0f} MB", "", True))
    rows.append((f"peak memory, {n_mem:,} iterations", f"{big:.0f} MB", "< 300 MB",
                 big < 300))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>10}  {'target':>9}")
    for name, value, target, ok in rows:
        flag = "" if not target else ("ok" if ok else "MISSED")
        print(f"{name:<{width}}  {value:>10}  {target:>9}  {flag}")
    if sent_try != sent:
        print(f"\nthe try/except loop sent {sent_try} of its 100 calls to the pool (the "
              f"plain loop {sent}): the rest ran as plain code in the caller, so its figure "
              f"is not the scheduler's cost")
    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
