"""fer-bench: how fast a model runs here, per batch size, and how fast fer-video runs on a video.

    fer-bench                                        # the bundled model on generated faces
    fer-bench --model fp32.onnx --model int8.onnx    # measured alternately, so their ratio is fair
    fer-bench --video clip.mp4 --json bench.json
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from ..cli_common import run_main
from ..errors import FerEdgeError

PROG = "fer-bench"


def _batch_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def build_parser():
    """The argument parser (every option's help states its default)."""
    p = argparse.ArgumentParser(prog=PROG, description="Benchmark fer_edge inference: latency percentiles and "
                                "faces/s per batch size after a warm-up, preprocessing cost per face, and "
                                "end-to-end frames/s on a video. Several --model values are measured "
                                "alternately, so their ratios are meaningful.")
    p.add_argument("--model", action="append", default=None, metavar="M",
                   help="ONNX model or TensorRT engine; repeat to compare (default: the bundled model)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                   help="inference backend (default: auto, by the model file's type)")
    p.add_argument("--providers", default=None, metavar="P1,P2",
                   help="ONNX Runtime providers to require (default: the best that loads)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=[1, 8, 32, 128], metavar="B1,B2",
                   help="batch sizes to time (default: 1,8,32,128)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice, one per core)")
    p.add_argument("--warmup", type=int, default=5, metavar="N", help="untimed calls per batch size (default: 5)")
    p.add_argument("--seconds", type=float, default=1.0, metavar="S",
                   help="timed seconds per batch size and model (default: 1.0)")
    p.add_argument("--rounds", type=int, default=5, metavar="R",
                   help="alternations between the models per batch size (default: 5)")
    p.add_argument("--video", default=None, metavar="FILE",
                   help="also time the full fer-video pipeline on this video (default: none)")
    p.add_argument("--every", type=int, default=5, metavar="K", help="detector period for --video (default: 5)")
    p.add_argument("--preprocess", action="store_true",
                   help="also run the preprocessing benchmark (fused C crop vs reference) (default: off)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON to OUT (default: none)")
    return p


def main(argv=None):
    """Run fer-bench.

    Args:
        argv: arguments (None: sys.argv[1:]).

    Returns:
        Exit code (0, or 2 for a user error).
    """
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _body(args))


def _percentiles(lat):
    lat = np.asarray(lat) * 1e3
    return {"p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean())}


def _generated_faces(n, seed=0):
    """n 48x48 face-like gray images (a bright oval with dark eyes and mouth on noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    face = np.where(((xx - 24) / 17) ** 2 + ((yy - 25) / 21) ** 2 < 1, 170, 60).astype(np.float64)
    for cx, cy, r in ((17, 20, 3), (31, 20, 3), (24, 34, 5)):
        face[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 40
    return np.clip(face + rng.normal(0, 18, (n, 48, 48)), 0, 255).astype(np.uint8)


def machine_info():
    """CPU, core count, load and package versions, so results can be compared across machines."""
    import onnxruntime

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    try:
        with open("/proc/cpuinfo") as fh:
            info["processor"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = os.getloadavg()[0]
    return info


def _time_model(rt, x, seconds, warmup):
    """Latencies (s) of ``warmup`` untimed then ``seconds`` of timed runner calls on input x."""
    feed = {rt._in_name: x}
    for _ in range(warmup):
        rt.runner.infer(feed, check_inputs=False)
    lat, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(lat) < 3:
        t = time.perf_counter()
        rt.runner.infer(feed, check_inputs=False)
        lat.append(time.perf_counter() - t)
    return lat


def _time_preprocess(rt, n, repeats=20):
    """Microseconds per face to crop n faces out of a 640x480 frame into network input."""
    from ..faces import network_boxes

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    side = rng.uniform(60, 160, n)
    boxes = np.stack([rng.uniform(0, 640 - side), rng.uniform(0, 480 - side), side, side], 1)
    md = rt.metadata
    out = np.empty((n, 1, md.input_size, md.input_size), np.float32)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        rt._crop(frame, network_boxes(boxes, md), size=md.input_size, margin=0.0, square=False, mean=md.mean,
                 std=md.std, out=out, threads=rt.crop_threads)
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def run_benchmark(models, backend="auto", providers=None, batch_sizes=(1, 8, 32, 128), threads=None, warmup=5,
                  seconds=1.0, rounds=5, video=None, every=5):
    """Measure every model at every batch size, alternating between models.

    Args:
        models: model paths (None entries: the bundled model).
        backend, providers, threads: Runtime options.
        batch_sizes: batches to time.
        warmup: untimed calls per model and batch size.
        seconds: timed seconds per model and batch size, split over ``rounds`` alternations.
        video: optional video file for the end-to-end measurement (run as fer-video runs: ``threads`` or 1
            network thread, the model's TTA).
        every: detector period for the video.

    Returns:
        dict (plain JSON): machine, settings and one entry per model.
    """
    from ..runtime import Runtime

    runtimes = []
    try:
        for m in models:
            runtimes.append(Runtime(m, backend=backend, providers=providers, threads=threads, tta="none",
                                    batch_size=max(batch_sizes)))
        results = [{"model": rt.model_path, "backend": rt.info()["backend"], "providers": rt.info()["providers"],
                    "precision": rt.info()["precision"], "architecture": rt.metadata.architecture, "batches": []}
                   for rt in runtimes]
        faces = _generated_faces(max(batch_sizes))
        for b in batch_sizes:
            inputs = []
            for rt in runtimes:
                md = rt.metadata
                x = np.empty((b, 1, md.input_size, md.input_size), np.float32)
                rt._crop_into([(faces[:b].reshape(-1, 48), _stacked_boxes(b, md))], lambda bx: bx, md.input_size, x)
                if md.layout == "NHWC":
                    x = x.reshape(b, md.input_size, md.input_size, 1)
                inputs.append(x.astype(rt._in_dtype, copy=False))
                rt.runner.infer({rt._in_name: inputs[-1]}, check_inputs=False)
            lat = [[] for _ in runtimes]
            for r in range(max(1, rounds)):
                # Alternating in short slices spreads any drift in machine load over all models alike.
                for i, rt in enumerate(runtimes):
                    lat[i] += _time_model(rt, inputs[i], seconds / max(1, rounds), warmup if r == 0 else 1)
            for i, rt in enumerate(runtimes):
                stats = _percentiles(lat[i])
                stats.update(batch=b, iterations=len(lat[i]), faces_per_s=b / (stats["mean_ms"] / 1e3),
                             preprocess_us_per_face=_time_preprocess(rt, b))
                results[i]["batches"].append(stats)
        if video is not None:
            for i, m in enumerate(models):
                # Measured as fer-video runs by default: one network thread, the model's TTA.
                with Runtime(m, backend=backend, providers=providers, threads=threads or 1, spin=False) as vrt:
                    results[i]["video"] = _time_video(vrt, video, every)
    finally:
        for rt in runtimes:
            rt.close()
    return {"machine": machine_info(), "settings": {"batch_sizes": list(batch_sizes), "threads": threads,
                                                    "warmup": warmup, "seconds": seconds, "rounds": rounds,
                                                    "input": "generated 48x48 faces"},
            "models": results}


def _stacked_boxes(n, md):
    from ..faces import network_boxes

    boxes = np.tile(np.array([[0.0, 0.0, 48.0, 48.0]]), (n, 1))
    boxes[:, 1] = np.arange(n) * 48
    return network_boxes(boxes, md)


def _time_video(rt, video, every):
    from ..video import VideoOptions, analyze_video

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        s = analyze_video(rt, video, tmp, VideoOptions(every=every, timeline=False, progress=False))
        wall = time.perf_counter() - t
    return {"video": video, "frames": s["frames"], "face_fraction": s["face_fraction"], "fps": s["fps"],
            "wall_s": wall, "every": every, "tta": rt.tta, "threads": rt.runner.describe().get("threads")}


def format_table(result):
    """The results as a text table (one row per model and batch size; ratios against the first model)."""
    lines = []
    m = result["machine"]
    lines.append(f"{m['processor']}, {m['cpus']} CPUs, onnxruntime {m['onnxruntime']}"
                 + (f", load {m['load_average_1min']:.2f}" if "load_average_1min" in m else ""))
    width = min(48, max([5] + [len(os.path.basename(mod["model"])) for mod in result["models"]]))
    head = f"{'model':<{width}} {'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'faces/s':>9} {'prep us/face':>12}"
    multi = len(result["models"]) > 1
    lines.append(head + ("  vs first" if multi else ""))
    first = {b["batch"]: b["faces_per_s"] for b in result["models"][0]["batches"]}
    for mod in result["models"]:
        name = os.path.basename(mod["model"])[:width]
        for b in mod["batches"]:
            row = (f"{name:<{width}} {b['batch']:>5} {b['p50_ms']:>8.3f} {b['p90_ms']:>8.3f} {b['p99_ms']:>8.3f} "
                   f"{b['faces_per_s']:>9.0f} {b['preprocess_us_per_face']:>12.2f}")
            if multi:
                row += f"  {b['faces_per_s'] / first[b['batch']]:>6.2f}x"
            lines.append(row)
    for mod in result["models"]:
        lines.append(f"{os.path.basename(mod['model'])}: {mod['backend']} on {', '.join(mod['providers'])}, "
                     f"{mod['precision']}")
        v = mod.get("video")
        if v:
            lines.append(f"  video {os.path.basename(v['video'])}: {v['frames']} frames at {v['fps']:.1f} frames/s "
                         f"end to end, face in {100 * v['face_fraction']:.1f}% of frames (detector every {v['every']})")
    return "\n".join(lines)


def _body(args):
    from ..io_utils import atomic_write_text

    if args.warmup < 0 or args.seconds <= 0 or args.rounds < 1 or args.every < 1:
        raise FerEdgeError("--warmup must be >= 0, --seconds > 0, --rounds and --every >= 1")
    providers = args.providers.split(",") if args.providers else None
    if args.video is not None:
        from ..video import VideoSource

        VideoSource(args.video).release()  # a bad video fails now, not after the timed runs
    result = run_benchmark(args.model or [None], backend=args.backend, providers=providers,
                           batch_sizes=args.batch_sizes, threads=args.threads, warmup=args.warmup,
                           seconds=args.seconds, rounds=args.rounds, video=args.video, every=args.every)
    print(format_table(result))
    if args.preprocess:
        try:
            from ..preprocess_bench import format_preprocess_benchmark, run_preprocess_benchmark
        except ImportError as exc:
            raise FerEdgeError(f"the preprocessing benchmark is not available in this build ({exc})") from None
        pre = run_preprocess_benchmark()
        print(format_preprocess_benchmark(pre))
        result["preprocess"] = pre
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2, default=_jsonable) + "\n")
    return 0


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


if __name__ == "__main__":
    sys.exit(main())
