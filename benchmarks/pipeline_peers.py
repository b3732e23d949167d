"""Workload J of benchmarks/peers.py: a four-step image pipeline, and how each system runs it.

Every step takes a 4 MB frame and returns a new one of the same size; only a float per
frame comes back to the caller. Written sequentially, each step's frame is read by the
next step alone, so an engine that keeps results on the worker that made them (data
locality) need not move the intermediate frames through the caller at all; one that
does not ships every intermediate frame back and out again (about 8 MB per step).

The functions live in a module of their own (not in peers.py, which runs as __main__) so
that every system's workers import them by name.
"""
from __future__ import annotations

import concurrent.futures
import functools

import numpy as np

import pydron

SHAPE = (724, 724)          # 524,176 float64 = 4.19 MB
FRAMES = 32


def make_frames(n=FRAMES, shape=SHAPE):
    """``n`` deterministic frames, generated in the caller (so every system ships them)."""
    rng = np.random.default_rng(20261203)
    return [rng.random(shape) * 1000.0 for _ in range(n)]


@functools.lru_cache(maxsize=None)
def _calibration(shape=SHAPE):
    """The dark and flat frames: deterministic, built once per process (the warm-up builds
    them on every worker), so they do not travel with each call."""
    rng = np.random.default_rng(7)
    dark = rng.random(shape) * 20.0
    flat = 1.0 + 0.1 * rng.random(shape)
    return dark, flat


def _box3(x):
    """A 3x3 box mean by slicing an edge-padded copy."""
    p = np.pad(x, 1, mode="edge")
    return (p[:-2, :-2] + p[:-2, 1:-1] + p[:-2, 2:] + p[1:-1, :-2] + p[1:-1, 1:-1]
            + p[1:-1, 2:] + p[2:, :-2] + p[2:, 1:-1] + p[2:, 2:]) / 9.0


def _box_sum(x, r):
    """Sums over (2r+1)x(2r+1) windows by a 2-D cumulative sum (an integral image)."""
    p = np.pad(x, ((r + 1, r), (r + 1, r)), mode="edge")
    c = p.cumsum(0).cumsum(1)
    k = 2 * r + 1
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


# Each step costs about 20-35 ms of one core on a 4 MB frame (measured on the 2-core
# benchmark machine): enough that compute dominates, little enough that moving 8 MB per
# step through the caller shows.

@pydron.functional
def subtract_dark(frame):
    """Dark subtraction, then the slow background taken out in Fourier space (~30 ms)."""
    dark, _ = _calibration(frame.shape)
    spectrum = np.fft.rfft2(frame - dark)
    spectrum[:8, :8] = 0.0
    spectrum[-8:, :8] = 0.0
    return np.fft.irfft2(spectrum, s=frame.shape)


@pydron.functional
def divide_flat(frame):
    """Flat-field division, then a 3x3 median against hot pixels (~35 ms)."""
    _, flat = _calibration(frame.shape)
    p = np.pad(frame / flat, 1, mode="edge")
    h, w = frame.shape
    stack = np.stack([p[i:i + h, j:j + w] for i in range(3) for j in range(3)])
    return np.partition(stack, 4, axis=0)[4]


@pydron.functional
def smooth(frame, passes=6):
    """Six passes of a 3x3 box mean (close to a Gaussian; ~20 ms)."""
    for _ in range(passes):
        frame = _box3(frame)
    return frame


@pydron.functional
def threshold(frame, r=3, k=2.0):
    """Keep the pixels above their 7x7 neighbourhood's mean + k sigma, zero elsewhere
    (~20 ms)."""
    n = (2 * r + 1) ** 2
    mean = _box_sum(frame, r) / n
    var = np.maximum(_box_sum(frame * frame, r) / n - mean * mean, 0.0)
    return np.where(frame > mean + k * np.sqrt(var), frame, 0.0)


@pydron.functional
def summary(frame):
    """The tiny result that comes back to the caller."""
    return float(frame.sum())


STEPS = (subtract_dark, divide_flat, smooth, threshold, summary)


@pydron.functional
def whole_chain(frame):
    """All four steps and the summary in one call: a rewrite of the program (one task per
    frame), not the program itself."""
    for step in STEPS:
        frame = step(frame)
    return frame


# --------------------------------------------------------------------------- the runners

def plain(frames):
    """The baseline: the pipeline as plain sequential Python."""
    sums = []
    for frame in frames:
        a = subtract_dark(frame)
        b = divide_flat(a)
        c = smooth(b)
        d = threshold(c)
        sums.append(summary(d))
    return sums


scheduled = pydron.schedule(plain)
"""The same sequential code, run by @schedule: the steps are functional calls."""


def futures_chain(submit, frames):
    """Each step submitted with the previous step's future as its argument; ``submit`` is
    the system's ``submit(fn, arg) -> future``. Returns the summaries' futures."""
    out = []
    for frame in frames:
        x = frame
        for step in STEPS:
            x = submit(step, x)
        out.append(x)
    return out


def through_caller(ex, frames):
    """The standard pattern of a concurrent.futures executor: a step's result comes back to
    the caller, which submits the next step with it as soon as it arrives."""
    pending = {ex.submit(STEPS[0], f): (i, 0) for i, f in enumerate(frames)}
    sums = [None] * len(frames)
    while pending:
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for fut in done:
            i, k = pending.pop(fut)
            value = fut.result()
            if k + 1 < len(STEPS):
                pending[ex.submit(STEPS[k + 1], value)] = (i, k + 1)
            else:
                sums[i] = value
    return sums


def chain_per_frame(ex, frames):
    """The rewrite: one task per frame running all the steps."""
    return [f.result() for f in [ex.submit(whole_chain, frame) for frame in frames]]
