"""Benchmark of the fused face preprocessing (``fer-bench --preprocess``, ``benchmarks/preprocess.py``).

One 1280x720 BGR frame, square integer boxes of 60-260 pixels inside it, batches of 1, 8, 32 and
128 faces, 48x48 float32 NCHW output. Four ways are timed alternately in one run, so that a load
that comes and goes (a training run, other jobs) weighs on all of them alike:

* ``fast``: :func:`fer_edge.preprocess.crop_faces` with its default thread count,
* ``fast_1t``: the same on one thread,
* ``opencv_loop``: the usual per-face loop (cvtColor, resize INTER_AREA, normalise),
* ``reference``: :func:`fer_edge.preprocess.crop_faces_reference`, the plain NumPy oracle.

Speedups are medians of per-round ratios against the OpenCV loop timed in the same round. The frame
bytes read per second by ``fast`` are set against this machine's memory bandwidth, measured in the
same run as the best of a few 128 MiB ``numpy.copyto`` (bytes read + written per second).
"""

import contextlib
import os
import platform
import time

import numpy as np

from . import preprocess as P

FRAME_SHAPE = (720, 1280, 3)
BOX_RANGE = (60, 260)
METHODS = ("fast", "fast_1t", "opencv_loop", "reference")


def _boxes(rng, n, height, width):
    side = rng.integers(BOX_RANGE[0], BOX_RANGE[1] + 1, n)
    return np.stack([rng.integers(0, width - side + 1), rng.integers(0, height - side + 1), side, side], axis=1)


def memory_bandwidth(mib=128, repeats=3):
    """Best read+write bandwidth of a large numpy copy, in bytes per second."""
    src = np.ones(mib * 2**20, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


@contextlib.contextmanager
def _single_threaded_blas():
    # The reference multiplies small matrices; a multi-threaded BLAS spins its threads between
    # calls, which would slow down whatever is timed next in the round.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield True


def _time_call(fn, min_seconds):
    """Seconds per call of fn(), over enough calls to last min_seconds."""
    calls, elapsed = 0, 0.0
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / calls


def run_preprocess_benchmark(batch_sizes=(1, 8, 32, 128), repeats=15, seed=0, size=48, threads=None,
                             min_seconds=0.004, reference=True):
    """Time crop_faces against the per-face OpenCV loop and the NumPy reference.

    Args:
        batch_sizes: numbers of faces per call.
        repeats: rounds per batch size; each round times every method once, in a rotating order.
        seed: seed of the frame and the boxes.
        size: output side.
        threads: thread count of the ``fast`` method (None: :func:`fer_edge.preprocess.resolve_threads`).
        min_seconds: each timing repeats its call until it lasts this long.
        reference: also time the (slow) NumPy reference.

    Returns:
        A JSON-able dict: ``machine`` (CPUs, threads, SIMD path, OpenMP wait policy, load average,
        memory bandwidth), and per batch size under ``batches``: microseconds per face (median and
        min over rounds) for each method, ``speedup_vs_opencv`` (median of per-round ratios) for
        ``fast`` and ``fast_1t``, the face pixels, and ``frame_read_gbps`` with its fraction of the
        memory bandwidth.
    """
    import cv2

    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)
    height, width = FRAME_SHAPE[:2]
    threads_fast = P.resolve_threads(threads)
    methods = [m for m in METHODS if reference or m != "reference"]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    bandwidth = memory_bandwidth()

    batches = []
    with _single_threaded_blas() as blas_limited:
        for n in batch_sizes:
            boxes = _boxes(rng, n, height, width)
            out = np.empty((n, 1, size, size), dtype=np.float32)
            calls = {
                "fast": lambda: P.crop_faces(frame, boxes, size=size, out=out, threads=threads_fast),
                "fast_1t": lambda: P.crop_faces(frame, boxes, size=size, out=out, threads=1),
                "opencv_loop": lambda: P.crop_faces_opencv(frame, boxes, size=size),
                "reference": lambda: P.crop_faces_reference(frame, boxes, size=size, out=out),
            }
            for m in methods:  # warm-up: page in, build caches, start thread pools
                calls[m]()
            per_face = {m: [] for m in methods}
            for r in range(repeats):
                order = methods[r % len(methods):] + methods[:r % len(methods)]
                for m in order:
                    # The reference is ~100x slower: one call per round is plenty.
                    per_face[m].append(_time_call(calls[m], 0 if m == "reference" else min_seconds) / n * 1e6)
            pixels = int(np.sum(boxes[:, 2] * boxes[:, 3]))
            row = {"faces": int(n), "face_pixels": pixels, "us_per_face": {}, "us_per_face_min": {}}
            for m in methods:
                row["us_per_face"][m] = float(np.median(per_face[m]))
                row["us_per_face_min"][m] = float(np.min(per_face[m]))
            row["speedup_vs_opencv"] = {
                m: float(np.median(np.array(per_face["opencv_loop"]) / np.array(per_face[m])))
                for m in ("fast", "fast_1t")}
            seconds = row["us_per_face"]["fast"] * n * 1e-6
            row["frame_read_gbps"] = pixels * FRAME_SHAPE[2] / seconds / 1e9
            row["frame_read_fraction_of_bandwidth"] = row["frame_read_gbps"] * 1e9 / bandwidth
            batches.append(row)

    from . import _preprocess_cy

    return {
        "frame": list(FRAME_SHAPE),
        "box_sides": list(BOX_RANGE),
        "size": int(size),
        "repeats": int(repeats),
        "seed": int(seed),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads_fast": threads_fast,
            "openmp": P.has_openmp(),
            "omp_wait_policy": (os.environ.get("OMP_WAIT_POLICY") or
                                (f"GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}" if "GOMP_SPINCOUNT" in os.environ
                                 else "GOMP_SPINCOUNT=1000 (fer_edge default)")),
            "simd": _preprocess_cy.SIMD_NAMES[_preprocess_cy.simd_supported()],
            "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(),
            "reference_blas_single_threaded": bool(blas_limited),
            "loadavg_before": list(load_before) if load_before else None,
            "loadavg_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "memory_bandwidth_gbps": bandwidth / 1e9,
        },
        "batches": batches,
    }


def format_preprocess_benchmark(result):
    """The benchmark result as a text table.

    Args:
        result: the dict returned by :func:`run_preprocess_benchmark`.

    Returns:
        str, one line per batch size plus a header and a footer about the machine.
    """
    mach = result["machine"]
    has_ref = bool(result["batches"]) and "reference" in result["batches"][0]["us_per_face"]
    lines = [
        "microseconds per face (median of rounds); speedup = median per-round ratio to the OpenCV loop",
        f"{'faces':>5}  {'crop_faces':>10}  {'1 thread':>8}  {'OpenCV loop':>11}  {'reference':>9}  "
        f"{'speedup':>7}  {'1 thread':>8}  {'frame read':>10}  {'of mem bw':>9}",
    ]
    for row in result["batches"]:
        us, x = row["us_per_face"], row["speedup_vs_opencv"]
        ref = f"{us['reference']:9.1f}" if has_ref else f"{'-':>9}"
        lines.append(
            f"{row['faces']:>5}  {us['fast']:10.1f}  {us['fast_1t']:8.1f}  {us['opencv_loop']:11.1f}  {ref}  "
            f"{x['fast']:6.1f}x  {x['fast_1t']:7.1f}x  {row['frame_read_gbps']:5.2f} GB/s  "
            f"{row['frame_read_fraction_of_bandwidth']:9.1%}")
    load = mach.get("loadavg_before")
    lines.append(
        f"{result['frame'][1]}x{result['frame'][0]} BGR frame, square boxes of {result['box_sides'][0]}-"
        f"{result['box_sides'][1]} px, {result['size']}x{result['size']} float32 out, {result['repeats']} rounds; "
        f"crop_faces on {mach['threads_fast']} thread(s), {mach['simd']}, OpenMP {'on' if mach['openmp'] else 'off'}, "
        f"{mach['omp_wait_policy']}; memory bandwidth (numpy copy, read+write) {mach['memory_bandwidth_gbps']:.1f} GB/s"
        + (f"; load average {load[0]:.2f} on {mach['cpus']} CPUs" if load else ""))
    return "\n".join(lines)
