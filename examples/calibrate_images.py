"""Calibrate a night of CCD frames in parallel, written as plain sequential Python.

The workload is the usual first step of an astronomical reduction, done with numpy on a
batch of synthetic (but realistic-looking) frames:

    raw frame --(dark subtraction)--> --(flat-field division)--> --(cosmic-ray clean:
    3x3 median filter)--> --(background map)--> --(source detection and count)--> stats

Each step is a ``@pydron.functional`` function: it only reads its arguments and returns a
new value. Their time goes into numpy operations that release the GIL, so a pool of threads
really runs several frames at once, without copying each frame to another process: this
example therefore asks for the threads pool (``--pool multicore`` for worker processes).

The orchestration, ``pipeline``, is ordinary sequential code -- a loop that appends to a
list and prints a progress line per frame, a quality filter, a summary -- decorated with
``@pydron.schedule``. Pydron runs the functional calls of different frames concurrently and
everything else (the prints included) in program order, so the scheduled run returns and
prints exactly what the plain run does.

``main()`` runs the pipeline twice, plainly (``pipeline.__wrapped__``) and scheduled,
checks that the results and the printed output are identical, and reports both wall times.

Usage (from the repository root, after ``pip install -e '.[examples]'``):

    python examples/calibrate_images.py                      # 16 frames of 1024 x 1024
    python examples/calibrate_images.py --frames 8 --size 256
    python examples/calibrate_images.py --workers 4 --quiet

The exit status is 0 when both runs agree and 1 when they do not. Nothing is written to disk.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import time

import numpy as np

import pydron

TILE = 32                 # background mesh cell, pixels
COSMIC_SIGMA = 5.0        # cosmic-ray detection threshold, in units of the noise
COSMIC_CONTRAST = 2.0     # a cosmic ray is sharper than any star by at least this much
DETECT_SIGMA = 5.0        # source detection threshold on the smoothed image


# --------------------------------------------------------------------------------------
# numpy building blocks (plain helpers, called from the functional steps)
# --------------------------------------------------------------------------------------

def _neighbours(image: np.ndarray) -> list[np.ndarray]:
    """The nine 3x3-neighbourhood shifts of ``image`` (edges replicated), as views."""
    padded = np.pad(image, 1, mode="edge")
    h, w = image.shape
    return [padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]


# Paeth's 19-exchange sorting network that leaves the median of 9 values in slot 4.
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8),
            (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median3x3(image: np.ndarray) -> np.ndarray:
    """3x3 median filter in pure numpy: a min/max sorting network over whole images
    (much faster than ``np.median`` over a stack, and every step releases the GIL)."""
    v = [np.array(s) for s in _neighbours(image)]
    for i, j in _MEDIAN9:
        lo = np.minimum(v[i], v[j])
        np.maximum(v[i], v[j], out=v[j])
        v[i] = lo
    return v[4]


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation."""
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


# --------------------------------------------------------------------------------------
# The calibration steps: side-effect free, so Pydron may run them in parallel
# --------------------------------------------------------------------------------------

@pydron.functional
def subtract_dark(raw: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Raw counts (uint16) minus the master dark (bias + dark current + hot pixels)."""
    return raw.astype(np.float32) - dark


@pydron.functional
def divide_flat(image: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Correct vignetting and pixel-to-pixel sensitivity with the normalised flat field."""
    return image / flat


@pydron.functional
def remove_cosmic_rays(image: np.ndarray, passes: int = 2) -> tuple[np.ndarray, int]:
    """Replace cosmic-ray hits by the local median; returns (clean image, pixels replaced).

    A pixel is a hit when it stands out from its 3x3 median by COSMIC_SIGMA noise units
    *and* is much sharper than a star would be (a star's core is only a little brighter
    than its neighbours; a cosmic ray hits one pixel). Several passes catch 2-pixel tracks.
    """
    clean = image.copy()
    replaced = 0
    sky = float(np.median(clean))
    for _ in range(passes):
        med = median3x3(clean)
        resid = clean - med
        noise = robust_sigma(resid)
        hits = (resid > COSMIC_SIGMA * noise) & (resid > COSMIC_CONTRAST * (med - sky))
        count = int(np.count_nonzero(hits))
        if count == 0:
            break
        replaced += count
        clean = np.where(hits, med, clean)
    return clean, replaced


@pydron.functional
def estimate_background(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Sky background map (a clipped mode estimate in each TILE x TILE cell, expanded
    back to full size) and the sky noise (robust sigma of the background-subtracted image)."""
    h, w = image.shape
    ny, nx = h // TILE, w // TILE
    cells = image[:ny * TILE, :nx * TILE].reshape(ny, TILE, nx, TILE).swapaxes(1, 2)
    cells = cells.reshape(ny, nx, TILE * TILE)
    med = np.median(cells, axis=-1, keepdims=True)
    sig = 1.4826 * np.median(np.abs(cells - med), axis=-1, keepdims=True)
    inlier = np.abs(cells - med) < 3.0 * sig                 # clip stars and hot pixels
    mean = np.sum(cells, axis=-1, where=inlier) / np.maximum(np.sum(inlier, axis=-1), 1)
    mesh = 2.5 * med[..., 0] - 1.5 * mean                    # SExtractor's mode estimate
    full = np.repeat(np.repeat(mesh, TILE, axis=0), TILE, axis=1)
    full = np.pad(full, ((0, h - full.shape[0]), (0, w - full.shape[1])), mode="edge")
    full = full.astype(np.float32)
    return full, robust_sigma(image - full)


@pydron.functional
def count_sources(image: np.ndarray, background: np.ndarray, noise: float) -> tuple[int, float]:
    """Detect point sources: local maxima of the 3x3-smoothed, background-subtracted image
    above DETECT_SIGMA. Returns (number of sources, flux of the brightest peak)."""
    det = image - background
    smooth = sum(_neighbours(det)) / np.float32(9.0)
    threshold = DETECT_SIGMA * noise / 3.0                   # smoothing 9 pixels: noise / 3
    around = _neighbours(smooth)
    peak = smooth > threshold
    for k, s in enumerate(around):
        if k != 4:
            peak &= smooth >= s
    n = int(np.count_nonzero(peak))
    brightest = float(smooth[peak].max()) * 9.0 if n else 0.0
    return n, round(brightest, 3)


@pydron.functional
def frame_stats(index: int, image: np.ndarray, cosmics: int, background: np.ndarray,
                noise: float, sources: tuple[int, float]) -> dict:
    """The per-frame record: plain Python numbers and a checksum of the calibrated image."""
    return {
        "frame": index,
        "sky": round(float(np.mean(background)), 3),
        "noise": round(noise, 4),
        "cosmics": cosmics,
        "sources": sources[0],
        "brightest": sources[1],
        "sha256": hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()[:16],
    }


@pydron.functional
def median_sources(results: list) -> float:
    return float(np.median([r["sources"] for r in results])) if results else 0.0


@pydron.functional
def quality_ok(r: dict, typical_sources: float) -> bool:
    """Keep a frame unless clouds cost it a fifth of the stars, or the sky is too bright."""
    return r["sources"] >= 0.8 * typical_sources and r["noise"] < 40.0


@pydron.functional
def summarize(results: list, keep: list) -> dict:
    return {
        "frames": len(results),
        "kept": len(keep),
        "rejected": [r["frame"] for r in results if r not in keep],
        "cosmics_removed": sum(r["cosmics"] for r in results),
        "mean_sky": round(sum(r["sky"] for r in keep) / max(len(keep), 1), 2),
        "sources_per_kept_frame": round(sum(r["sources"] for r in keep) / max(len(keep), 1), 1),
    }


# --------------------------------------------------------------------------------------
# The orchestration: plain sequential Python, parallelised by Pydron
# --------------------------------------------------------------------------------------

@pydron.schedule
def pipeline(frames, dark, flat):
    results = []
    for i, raw in enumerate(frames):
        image = subtract_dark(raw, dark)
        image = divide_flat(image, flat)
        image, cosmics = remove_cosmic_rays(image)
        background, noise = estimate_background(image)
        sources = count_sources(image, background, noise)
        r = frame_stats(i, image, cosmics, background, noise, sources)
        print(f"frame {i:3d}: sky {r['sky']:7.1f}  noise {r['noise']:6.2f}  "
              f"cosmics {r['cosmics']:4d}  sources {r['sources']:4d}")
        results.append(r)

    typical = median_sources(results)
    keep = []
    for r in results:
        if quality_ok(r, typical):
            keep.append(r)

    summary = summarize(results, keep)
    print(f"kept {summary['kept']} of {summary['frames']} frames "
          f"(rejected: {summary['rejected']}); {summary['cosmics_removed']} cosmic-ray "
          f"pixels removed; {summary['sources_per_kept_frame']} sources per kept frame")
    return results, keep, summary


# --------------------------------------------------------------------------------------
# Synthetic observations (deterministic: one seeded numpy Generator)
# --------------------------------------------------------------------------------------

def _render_stars(size: int, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                  sigma: float) -> np.ndarray:
    """Gaussian point sources, drawn on 11x11 stamps with np.add.at."""
    img = np.zeros((size, size))
    off = np.arange(-5, 6)
    ix = np.floor(x)[:, None, None].astype(int) + off[None, None, :]
    iy = np.floor(y)[:, None, None].astype(int) + off[None, :, None]
    r2 = (ix + 0.5 - x[:, None, None]) ** 2 + (iy + 0.5 - y[:, None, None]) ** 2
    val = flux[:, None, None] / (2 * np.pi * sigma ** 2) * np.exp(-r2 / (2 * sigma ** 2))
    ix, iy, val = np.broadcast_arrays(ix, iy, val)
    inside = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
    np.add.at(img, (iy[inside], ix[inside]), val[inside])
    return img


def observe_night(n_frames: int, size: int, seed: int = 2024):
    """A master dark, a master flat and ``n_frames`` raw uint16 frames of one star field,
    dithered, under a varying sky (a few cloudy frames), with cosmic-ray hits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    dark = rng.normal(300.0, 2.0, (size, size))                     # bias + dark current
    hot = rng.random((size, size)) < 5e-4
    dark[hot] += rng.uniform(200.0, 2000.0, int(hot.sum()))         # hot pixels
    r2 = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size / 2) ** 2
    flat = (1.0 - 0.15 * r2) * rng.normal(1.0, 0.01, (size, size))  # vignetting + PRNU

    n_stars = size * size // 800
    sx = rng.uniform(-8, size + 8, n_stars)
    sy = rng.uniform(-8, size + 8, n_stars)
    sflux = 10 ** rng.uniform(2.7, 5.0, n_stars)

    frames = []
    for i in range(n_frames):
        cloudy = rng.random() < 0.2
        transparency = rng.uniform(0.15, 0.4) if cloudy else rng.uniform(0.85, 1.0)
        sky = rng.uniform(100.0, 400.0)
        dx, dy = rng.normal(0.0, 3.0, 2)
        light = sky + _render_stars(size, sx + dx, sy + dy, sflux * transparency, 1.6)
        electrons = rng.poisson(light * flat).astype(np.float64)
        raw = electrons + dark + rng.normal(0.0, 5.0, (size, size))  # read noise
        n_hits = rng.poisson(size * size / 1500)
        cy, cx = rng.integers(0, size - 1, (2, n_hits))
        energy = rng.uniform(300.0, 5000.0, n_hits)
        raw[cy, cx] += energy
        track = rng.random(n_hits) < 0.4                             # some 2-pixel tracks
        raw[cy[track], cx[track] + 1] += 0.6 * energy[track]
        frames.append(np.clip(np.rint(raw), 0, 65535).astype(np.uint16))
    return dark.astype(np.float32), flat.astype(np.float32), frames


# --------------------------------------------------------------------------------------
# main: plain vs scheduled
# --------------------------------------------------------------------------------------

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
    parser.add_argument("--frames", type=int, default=16, help="number of frames (16)")
    parser.add_argument("--size", type=int, default=1024, help="frame side in pixels (1024)")
    parser.add_argument("--seed", type=int, default=2024, help="random seed (2024)")
    parser.add_argument("--workers", type=int, default=0,
                        help="workers in the pool (default: one per core)")
    parser.add_argument("--pool", choices=("threads", "multicore"), default="threads",
                        help="kind of workers (default: threads: numpy releases the GIL, so "
                             "threads overlap the frames without copying them to processes)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the progress lines")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.size < 2 * TILE:
        parser.error(f"need --frames >= 1 and --size >= {2 * TILE}")
    entry = {"type": args.pool}
    if args.workers:
        entry["count" if args.pool == "threads" else "cores"] = args.workers
    pydron.configure({"workers": [entry]})

    t0 = time.perf_counter()
    dark, flat, frames = observe_night(args.frames, args.size, args.seed)
    print(f"observed {args.frames} frames of {args.size}x{args.size} "
          f"in {time.perf_counter() - t0:.2f} s (synthetic, seed {args.seed})")

    # Workers start once and stay for every later call of the program: start them before
    # the clock, so that the times compare the runs, not the start-up.
    from pydron import backend
    start = getattr(backend.get_pool(), "start", None)
    if start is not None:
        start()

    print("--- plain run (pipeline.__wrapped__) ---")
    plain, plain_out, t_plain = timed_run(pipeline.__wrapped__, (frames, dark, flat), args.quiet)
    print("--- scheduled run (@pydron.schedule) ---")
    sched, sched_out, t_sched = timed_run(pipeline, (frames, dark, flat), args.quiet)

    workers = backend.get_pool().parallelism
    same_result = plain == sched
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
