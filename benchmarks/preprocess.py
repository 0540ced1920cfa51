"""Time fer_edge's fused face preprocessing against the per-face OpenCV loop and the NumPy reference.

    python benchmarks/preprocess.py [--batches 1 8 32 128] [--repeats 15] [--json OUT]

The same benchmark runs as ``fer-bench --preprocess``; see fer_edge/preprocess_bench.py.
"""

import argparse
import json
import sys

from fer_edge.preprocess_bench import format_preprocess_benchmark, run_preprocess_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128],
                        help="faces per call (default: 1 8 32 128)")
    parser.add_argument("--repeats", type=int, default=15, help="alternating rounds per batch size (default: 15)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of crop_faces (default: OpenMP's default, see resolve_threads)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame and boxes (default: 0)")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow NumPy reference (default: time it)")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON (default: no)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(b < 1 for b in args.batches):
        print("error: --repeats and --batches must be positive", file=sys.stderr)
        return 2
    result = run_preprocess_benchmark(batch_sizes=tuple(args.batches), repeats=args.repeats, seed=args.seed,
                                      threads=args.threads, reference=not args.no_reference)
    print(format_preprocess_benchmark(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
