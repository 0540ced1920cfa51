"""Overhead of Runtime.predict_faces over a bare ONNX Runtime session.run on the same faces.

    python benchmarks/runtime.py [--batch 64] [--seconds 10] [--threads N]

Both sides run the same ONNX Runtime session (the Runtime's own, so thread pools and options are
identical) on the same 48x48 uint8 faces; the bare side gets the network input already cropped and
normalised (its preprocessing is not timed), the Runtime side does everything from uint8 faces to
probabilities. They alternate call by call so a change in machine load hits both alike. TTA is off
(a TTA view is another network row).
"""

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None):
    """Print (and return) the median times and their ratio.

    Args:
        argv: command-line arguments.

    Returns:
        0.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="faces per call (default: 64)")
    p.add_argument("--seconds", type=float, default=10.0, help="total timed seconds (default: 10)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: its choice)")
    p.add_argument("--model", default=None, help="ONNX model (default: the bundled one)")
    args = p.parse_args(argv)

    from fer_edge import Runtime

    rt = Runtime(args.model, tta="none", threads=args.threads, batch_size=args.batch)
    bare = rt.runner.session
    md = rt.metadata
    faces = np.random.default_rng(0).integers(0, 256, (args.batch, 48, 48), dtype=np.uint8)
    o = (48 - md.input_size) // 2
    x = ((faces[:, None, o:o + md.input_size, o:o + md.input_size].astype(np.float32) / 255) - md.mean) / md.std
    name = bare.get_inputs()[0].name
    np.testing.assert_allclose(rt.predict_faces(faces).sum(1), 1, atol=1e-5)
    for _ in range(5):
        rt.predict_faces(faces)
        bare.run(None, {name: x})
    t_rt, t_bare = [], []
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        for fn, sink in ((lambda: rt.predict_faces(faces), t_rt), (lambda: bare.run(None, {name: x}), t_bare)):
            t = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - t)
    res = {"batch": args.batch, "threads": args.threads, "calls_each": len(t_rt), "providers": bare.get_providers(),
           "predict_faces_ms_median": 1e3 * float(np.median(t_rt)),
           "session_run_ms_median": 1e3 * float(np.median(t_bare)),
           "ratio": float(np.median(t_rt) / np.median(t_bare))}
    print(json.dumps(res, indent=2))
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
