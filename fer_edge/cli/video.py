"""fer-video: expressions of every face in videos, cameras and streams.

    fer-video clip.mp4 --out-dir out/            # out/clip.csv, out/clip.json, out/clip.png
    fer-video 0 --out-dir out/ --annotate         # camera 0 until Ctrl-C, plus out/camera0.annotated.mp4
"""

import argparse
import logging
import os
import sys

from ..cli_common import run_main
from ..errors import FerEdgeError

PROG = "fer-video"


def build_parser():
    """The argument parser (every option's help states its default)."""
    from ..video import VideoOptions

    d = VideoOptions()
    p = argparse.ArgumentParser(prog=PROG, description="Recognise the facial expression of every face in videos. "
                                "For each SOURCE: DIR/<name>.csv (or .jsonl) with one row per face per frame, "
                                "DIR/<name>.json (summary) and DIR/<name>.png (emotion timeline).")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video file, camera index (0, 1, ...) or stream URL (rtsp://, http://)")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder, created if needed (required)")
    p.add_argument("--annotate", action="store_true", help="also write DIR/<name>.annotated.mp4 (default: off)")
    p.add_argument("--every", type=int, default=d.every, metavar="K",
                   help=f"run the face detector every K frames and track faces between (default: {d.every})")
    p.add_argument("--batch", type=int, default=64, metavar="N", help="most faces per network call (default: 64)")
    p.add_argument("--format", choices=("csv", "jsonl"), default=d.fmt, help=f"row format (default: {d.fmt})")
    p.add_argument("--model", default=None, metavar="M",
                   help="ONNX model or TensorRT engine (default: the bundled model)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                   help="inference backend (default: auto, by the model file's type)")
    p.add_argument("--providers", default=None, metavar="P1,P2",
                   help="ONNX Runtime providers to require, e.g. CUDAExecutionProvider (default: the best that loads)")
    p.add_argument("--threads", type=int, default=1, metavar="T",
                   help="ONNX Runtime threads; the other stages use the remaining cores (default: 1)")
    p.add_argument("--detector", default="haar", metavar="D",
                   help="haar, haar:CASCADE.xml or yunet:MODEL.onnx (default: haar)")
    p.add_argument("--detect-size", type=int, default=320, metavar="PX",
                   help="longer side of the frame the detector scans; larger finds smaller faces, slower "
                        "(default: 320)")
    p.add_argument("--tta", choices=("none", "flip", "tencrop"), default=None,
                   help="test-time augmentation (default: the model's recommendation)")
    p.add_argument("--smooth", type=float, default=d.smoothing, metavar="A",
                   help=f"per-face smoothing of probabilities over time, weight of the past in [0, 1) "
                        f"(default: {d.smoothing})")
    p.add_argument("--min-hits", type=int, default=d.min_hits, metavar="N",
                   help=f"detections before a new face is reported, against false faces (default: {d.min_hits})")
    p.add_argument("--max-frames", type=int, default=None, metavar="N",
                   help="stop after N frames (default: the whole video; a camera runs until Ctrl-C)")
    p.add_argument("--no-timeline", action="store_true", help="skip the timeline PNG (default: written)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown on a terminal)")
    return p


def _unique_names(sources):
    from ..video import source_name

    names, seen = [], {}
    for s in sources:
        base = source_name(s)
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}-{n + 1}")
    return names


def main(argv=None):
    """Run fer-video.

    Args:
        argv: arguments (None: sys.argv[1:]).

    Returns:
        Exit code: 0, 2 when a source or option was bad (the others are still processed), 130 on Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _body(args))


def _body(args):
    from ..runtime import Runtime
    from ..video import VideoOptions, analyze_video

    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    if args.every < 1 or args.batch < 1 or args.min_hits < 1 or args.detect_size < 16:
        raise FerEdgeError("--every, --batch and --min-hits must be >= 1 and --detect-size >= 16")
    if not 0.0 <= args.smooth < 1.0:
        raise FerEdgeError(f"--smooth must lie in [0, 1), got {args.smooth}")
    options = VideoOptions(every=args.every, smoothing=args.smooth, fmt=args.format, annotate=args.annotate,
                           timeline=not args.no_timeline, max_frames=args.max_frames,
                           progress=not args.no_progress and sys.stderr.isatty(), min_hits=args.min_hits)
    providers = args.providers.split(",") if args.providers else None
    detector_options = {"max_side": args.detect_size} if args.detector.split(":")[0] in ("haar", "yunet") else {}
    with Runtime(args.model, backend=args.backend, detector=args.detector, batch_size=args.batch, tta=args.tta,
                 providers=providers, threads=args.threads, spin=False,
                 detector_options=detector_options) as rt:
        failed = 0
        for source, name in zip(args.sources, _unique_names(args.sources)):
            try:
                s = analyze_video(rt, source, args.out_dir, options, name=name)
            except FerEdgeError as exc:
                print(f"{PROG}: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            outs = ", ".join(os.path.join(args.out_dir, v) for v in s["outputs"].values() if v)
            print(f"{name}: {s['frames']} frames, face in {100 * s['face_fraction']:.1f}%, {s['faces']} face rows, "
                  f"{s['fps']:.1f} frames/s ({rt.info()['backend']}: {', '.join(rt.info()['providers'])}) -> {outs}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
