"""Fit a heat-flow model to sensor readings by sweeping a grid of parameters.

A hot component sits on a square metal plate whose edges are held at ambient temperature
and whose surface loses heat to the air. Six thermometers on the plate were read after a
short run. Which (conductivity, cooling) pair explains the readings best? The brute-force
answer is a parameter sweep: simulate the 2-D heat equation (explicit finite differences in
numpy) for every pair on a grid and keep the pair with the smallest misfit.

``simulate`` is ``@pydron.functional``: Pydron's default pool (one worker process per core)
runs several simulations at once (``--pool threads`` works too: its numpy operations
release the GIL). The sweep itself, ``sweep``, is plain sequential Python -- a nested loop
that fills a dict ``results[(a, b)] = simulate(a, b, ...)``, a progress line per row, a
``min`` over the dict -- decorated with ``@pydron.schedule``.

``main()`` runs the sweep twice, plainly (``sweep.__wrapped__``) and scheduled, checks that
the results and the printed output are identical, and reports both wall times.

Usage (from the repository root, after ``pip install -e '.[examples]'``):

    python examples/parameter_sweep.py                       # 8 x 8 grid, 256 x 256 plate
    python examples/parameter_sweep.py --grid 4 --size 64
    python examples/parameter_sweep.py --workers 4 --quiet

The exit status is 0 when both runs agree and 1 when they do not. Nothing is written to disk.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import numpy as np

import pydron

SOURCE = (0.50, 0.50)          # where the hot component sits (x, y); the plate is [0, 1]^2
SOURCE_WIDTH = 0.03
POWER = 1.5e5                  # heating rate at the component's centre, degrees per time unit
SENSORS = ((0.50, 0.48), (0.53, 0.50), (0.47, 0.53), (0.48, 0.55), (0.55, 0.46), (0.44, 0.47))
DURATION = 6e-4                # simulated time
MAX_CONDUCTIVITY = 1.0         # the time step is chosen stable for the largest one swept
TRUE_PARAMETERS = (0.43, 1500.0)  # what the "measurements" were made with


def temperatures(conductivity: float, cooling: float, size: int) -> np.ndarray:
    """Integrate du/dt = k * laplace(u) - c * u + source on a size x size grid from u = 0,
    with u = 0 on the edges, up to DURATION (forward Euler, 5-point Laplacian)."""
    dx = 1.0 / (size - 1)
    dt = 0.2 * dx * dx / MAX_CONDUCTIVITY
    steps = int(np.ceil(DURATION / dt))
    dt = DURATION / steps
    coord = np.linspace(0.0, 1.0, size)
    y, x = np.meshgrid(coord, coord, indexing="ij")
    source = POWER * np.exp(-((x - SOURCE[0]) ** 2 + (y - SOURCE[1]) ** 2)
                            / (2 * SOURCE_WIDTH ** 2))
    heat = dt * source[1:-1, 1:-1]
    u = np.zeros((size, size))
    inner = u[1:-1, 1:-1]                         # views into u: updated in place
    up, down, left, right = u[:-2, 1:-1], u[2:, 1:-1], u[1:-1, :-2], u[1:-1, 2:]
    lap = np.empty_like(inner)
    diffuse = dt * conductivity / (dx * dx)
    keep = 1.0 - dt * cooling - 4.0 * diffuse
    for _ in range(steps):
        np.add(up, down, out=lap)
        lap += left
        lap += right
        lap *= diffuse
        inner *= keep                             # the old centre value, weighted
        inner += lap
        inner += heat
    return u


def read_sensors(u: np.ndarray) -> tuple[float, ...]:
    """Bilinear interpolation of the temperature field at the SENSORS."""
    n = u.shape[0] - 1
    out = []
    for sx, sy in SENSORS:
        fx, fy = sx * n, sy * n
        i, j = int(fy), int(fx)
        ty, tx = fy - i, fx - j
        out.append(float((1 - ty) * (1 - tx) * u[i, j] + (1 - ty) * tx * u[i, j + 1]
                         + ty * (1 - tx) * u[i + 1, j] + ty * tx * u[i + 1, j + 1]))
    return tuple(out)


@pydron.functional
def simulate(conductivity: float, cooling: float, measured: tuple, size: int) -> float:
    """Root-mean-square misfit (degrees) between the model's sensor readings and ``measured``."""
    model = read_sensors(temperatures(conductivity, cooling, size))
    return round(float(np.sqrt(np.mean((np.array(model) - np.array(measured)) ** 2))), 6)


@pydron.schedule
def sweep(conductivities, coolings, measured, size):
    results = {}
    for a in conductivities:
        for b in coolings:
            results[(a, b)] = simulate(a, b, measured, size)
        print(f"conductivity {a:.3f}: {len(coolings)} runs done, "
              f"best misfit so far {min(results.values()):.3f}")

    best = min(results, key=results.get)
    print(f"best fit: conductivity {best[0]:.3f}, cooling {best[1]:.0f} "
          f"(misfit {results[best]:.3f} degrees, {len(results)} simulations)")
    return best, results


def measure(size: int, seed: int) -> tuple[float, ...]:
    """The "measured" readings: the model at TRUE_PARAMETERS plus thermometer noise."""
    truth = read_sensors(temperatures(*TRUE_PARAMETERS, size))
    rng = np.random.default_rng(seed)
    return tuple(round(t + float(rng.normal(0.0, 0.2)), 3) for t in truth)


def grid(lo: float, hi: float, n: int) -> list[float]:
    """n plain Python floats from lo to hi (plain floats make readable dict keys)."""
    return [round(lo + (hi - lo) * i / max(n - 1, 1), 4) for i in range(n)]


class _Tee(io.TextIOBase):
    """Writes to the terminal (unless quiet) and keeps a copy, to compare the two runs."""

    def __init__(self, out, quiet: bool) -> None:
        self.out, self.quiet, self.copy = out, quiet, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        if not self.quiet:
            self.out.write(text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def timed_run(func, args, quiet: bool):
    tee = _Tee(sys.stdout, quiet)
    with contextlib.redirect_stdout(tee):
        t0 = time.perf_counter()
        result = func(*args)
        elapsed = time.perf_counter() - t0
    return result, tee.copy.getvalue(), elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=int, default=8,
                        help="values per parameter: grid x grid simulations (8)")
    parser.add_argument("--size", type=int, default=256, help="plate grid points per side (256)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sensor noise (7)")
    parser.add_argument("--workers", type=int, default=0,
                        help="workers in the pool (default: one per core)")
    parser.add_argument("--pool", choices=("threads", "multicore"), default="multicore",
                        help="kind of workers (default: multicore: one worker process per core, "
                             "Pydron's default)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the progress lines")
    args = parser.parse_args(argv)
    if args.grid < 1 or args.size < 16:
        parser.error("need --grid >= 1 and --size >= 16")
    entry = {"type": args.pool}
    if args.workers:
        entry["count" if args.pool == "threads" else "cores"] = args.workers
    pydron.configure({"workers": [entry]})

    measured = measure(args.size, args.seed)
    conductivities = grid(0.2, MAX_CONDUCTIVITY, args.grid)
    coolings = grid(250.0, 4000.0, args.grid)
    print(f"sensor readings: {measured}")
    print(f"sweeping {args.grid} conductivities x {args.grid} cooling rates "
          f"on a {args.size}x{args.size} plate (the readings were made with conductivity "
          f"{TRUE_PARAMETERS[0]:.3f}, cooling {TRUE_PARAMETERS[1]:.0f})")

    inputs = (conductivities, coolings, measured, args.size)
    print("--- plain run (sweep.__wrapped__) ---")
    plain, plain_out, t_plain = timed_run(sweep.__wrapped__, inputs, args.quiet)
    print("--- scheduled run (@pydron.schedule) ---")
    sched, sched_out, t_sched = timed_run(sweep, inputs, args.quiet)

    from pydron import backend
    workers = backend.get_pool().parallelism
    same_result = plain == sched and list(plain[1]) == list(sched[1])   # same keys, same order
    same_output = plain_out == sched_out
    print("--- comparison ---")
    print(f"plain:      {t_plain:7.2f} s")
    print(f"scheduled:  {t_sched:7.2f} s  ({workers} {args.pool} workers)")
    print(f"speed-up:   {t_plain / t_sched:7.2f}x")
    print(f"results identical: {'yes' if same_result else 'NO'}")
    print(f"printed output identical: {'yes' if same_output else 'NO'}")
    return 0 if same_result and same_output else 1


if __name__ == "__main__":
    sys.exit(main())
