"""ONNX Runtime CPU throughput of an FP32 model and its two INT8 flavours, measured in one run.

    python benchmarks/quantization.py MODEL.onnx --calib /path/to/fer2013 [--batch 64] [--json out.json]

MODEL.onnx is an FP32 fer_edge ONNX file. The INT8 models are the files given with --int8-cpu and
--int8-tensorrt, or, when those are left out, quantized here from MODEL.onnx with fer-export's code
(class-balanced calibration on --calib's training split). The models take turns: every round runs each
of them for --iters batches after a warm-up, so a slow moment of the machine (another process, a clock
change) falls on all of them alike; the report gives each model's median images/s over the rounds and
the speed-ups against FP32. Inputs are real PublicTest faces when --calib is given, else random faces.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from fer_edge.cli.bench import machine_info


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="FP32 fer_edge ONNX file")
    p.add_argument("--calib", default=None,
                   help="FER2013 (calibration for the INT8 models made here, and input faces) (default: none)")
    p.add_argument("--int8-cpu", default=None, help="INT8 cpu-flavour ONNX (default: quantize MODEL here)")
    p.add_argument("--int8-tensorrt", default=None, help="INT8 tensorrt-flavour ONNX (default: quantize MODEL here)")
    p.add_argument("--calib-method", default="minmax", help="calibration of the INT8 models made here (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=7, help="rounds; each runs every model (default: %(default)s)")
    p.add_argument("--iters", type=int, default=20, help="timed batches per model per round (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before each timing (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, 0 = its default (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file (default: none)")
    return p


def _models(args, log):
    from export.onnx_export import load_onnx
    from export.quantize import quantize

    proto, meta = load_onnx(args.model)
    models = {"fp32": proto}
    given = {"int8-cpu": args.int8_cpu, "int8-tensorrt": args.int8_tensorrt}
    calib = None
    for name, path in given.items():
        if path:
            models[name] = load_onnx(path)[0]
            continue
        if not args.calib:
            raise SystemExit(f"quantization.py: error: give --{name} or --calib to quantize {args.model} here")
        if calib is None:
            from export.data import load_calibration_set

            calib = load_calibration_set(args.calib, meta, 512, 0, 64)
        t0 = time.perf_counter()
        models[name] = quantize(proto, meta, calib.batches, name.split("-")[1], args.calib_method, calib.info)[0]
        log(f"quantized {name} in {time.perf_counter() - t0:.1f} s")
    return models, meta


def main(argv=None):
    args = build_parser().parse_args(argv)
    import onnxruntime as ort

    from export.evaluate import ort_session
    from export.onnx_export import random_faces

    log = print
    models, meta = _models(args, log)
    if args.calib:
        from export.data import load_public_split, preprocess

        images, _ = load_public_split(args.calib)
        x = preprocess(images[:args.batch], meta)[0]
    else:
        x = random_faces(args.batch, meta, seed=0)
    sessions = {name: ort_session(m, args.threads) for name, m in models.items()}
    rates = {name: [] for name in sessions}
    for r in range(args.rounds):
        for name, sess in sessions.items():
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(args.warmup):
                sess.run(None, feed)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                sess.run(None, feed)
            rates[name].append(args.iters * args.batch / (time.perf_counter() - t0))
    median = {name: float(np.median(v)) for name, v in rates.items()}
    result = {
        "model": os.path.abspath(args.model), "architecture": meta.architecture, "batch": args.batch,
        "rounds": args.rounds, "iters": args.iters, "threads": args.threads or "onnxruntime default",
        "onnxruntime": ort.__version__, "cpu": machine_info()["processor"], "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "inputs": "PublicTest faces" if args.calib else "random faces",
        "images_per_second": median, "all_rounds": rates,
        "speedup_vs_fp32": {name: median[name] / median["fp32"] for name in median},
        "command": " ".join([os.path.basename(sys.executable), "benchmarks/quantization.py"]
                            + (sys.argv[1:] if argv is None else list(argv))),
    }
    log(f"{result['cpu']} ({result['cpu_count']} CPUs), onnxruntime {result['onnxruntime']}, batch {args.batch}, "
        f"{args.rounds} rounds x {args.iters} batches, load average at end {result['load_average_at_end']}")
    for name in median:
        log(f"  {name:<14} {median[name]:9.0f} images/s  x{result['speedup_vs_fp32'][name]:.2f} FP32")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
