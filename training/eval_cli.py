"""fer-eval: measure a model on a FER2013 split the way the field reports it.

ONNX models and TensorRT engines are run through ``fer_edge.Runtime.predict_faces``, so the numbers
are those of the runtime's own preprocessing; training checkpoints (``.pt``) need torch.
"""

import argparse
import os
import sys

import numpy as np

from fer_edge.cli_common import run_main
from fer_edge.errors import ModelError

TTA_CHOICES = ("none", "flip", "tencrop")


def build_parser():
    p = argparse.ArgumentParser(prog="fer-eval", description="Evaluate a FER model on a FER2013 split.")
    p.add_argument("model", nargs="+",
                   help="ONNX model, TensorRT engine, or training checkpoint (.pt, needs torch); several models "
                        "are evaluated one by one and as an ensemble averaging their probabilities")
    p.add_argument("--data", required=True, help="fer2013.csv or the image-folder root")
    p.add_argument("--split", choices=("train", "public", "private"), default="public",
                   help="split to evaluate (default: %(default)s)")
    p.add_argument("--tta", choices=TTA_CHOICES, default=None,
                   help="test-time augmentation (default: the model's own, as the runtime applies it)")
    p.add_argument("--backend", default="auto", help="runtime backend for ONNX/engines (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="faces per inference call (default: %(default)s)")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON (default: none)")
    p.add_argument("--plot", metavar="OUT.png", help="write the confusion matrix as PNG, needs matplotlib (default: none)")
    p.add_argument("--save-scores", metavar="OUT.npy", help="write the (N, 7) scores, e.g. for ensembles (default: none)")
    p.add_argument("--weights", type=float, nargs="+", help="ensemble weights, one per model (default: equal)")
    p.add_argument("--fit-weights", action="store_true",
                   help="fit ensemble weights on the evaluated split itself, which flatters the result "
                        "(default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: show it)")
    return p


def _batches(n, size, progress, desc):
    starts = range(0, n, size)
    if progress:
        from tqdm import tqdm

        return tqdm(starts, desc=desc, unit="batch", leave=False)
    return starts


def score_onnx(path, images, tta, backend, batch_size, progress=True):
    """Probabilities (N, 7) from the runtime, and the TTA mode it applied."""
    from fer_edge import Runtime

    with Runtime(path, backend=backend, detector=None, tta=tta, batch_size=batch_size) as rt:
        out = np.empty((len(images), len(rt.classes)), np.float32)
        for start in _batches(len(images), batch_size, progress, "fer-eval"):
            out[start:start + batch_size] = rt.predict_faces(images[start:start + batch_size])
        return out, rt.info().get("tta", tta)


def score_checkpoint(path, images, tta, batch_size):
    """Logits (N, 7) of a training checkpoint, and the TTA mode applied."""
    from fer_edge.errors import require

    require("torch", "train")
    from .engine import checkpoint_metadata, load_checkpoint, model_from_checkpoint, predict_logits

    ckpt = load_checkpoint(path)
    meta = checkpoint_metadata(ckpt, path)
    tta = tta or meta.extra["tta"]
    model = model_from_checkpoint(ckpt)
    logits = predict_logits(model, images, tta, batch_size=batch_size, mean=meta.mean, std=meta.std)
    return logits, tta


def score_model(path, images, args):
    """(probabilities (N, 7), TTA mode) of one model file."""
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such model file")
    if path.endswith((".pt", ".pth")):
        logits, tta = score_checkpoint(path, images, args.tta, args.batch_size)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32), tta
    return score_onnx(path, images, args.tta, args.backend, args.batch_size, not args.no_progress)


def _ensemble(member_scores, labels, args):
    from .ensemble import combine

    weights = args.weights
    if args.fit_weights:
        from fer_edge.errors import require

        require("torch", "train")
        from .ensemble import fit_weights

        weights = fit_weights([np.log(np.clip(p, 1e-12, None)) for p in member_scores], labels).tolist()
    if weights is not None and len(weights) != len(member_scores):
        raise SystemExit(f"fer-eval: error: --weights needs {len(member_scores)} values, got {len(weights)}")
    return combine(member_scores, weights), weights


def _run(args):
    from fer_edge.datasets import load_fer2013
    from fer_edge.metrics import evaluate, format_report, plot_confusion, to_json

    if args.batch_size < 1:
        raise SystemExit("fer-eval: error: --batch-size must be at least 1")
    for path in args.model:
        if not os.path.exists(path):
            raise ModelError(f"{path}: no such model file")
    data = load_fer2013(args.data, args.split)
    members = []
    for path in args.model:
        scores, tta = score_model(path, data.images, args)
        members.append((path, scores, tta))
    if len(members) == 1:
        path, scores, tta = members[0]
        title = f"{path} on {args.split} ({len(data)} faces, TTA {tta})"
        report = evaluate(data.labels, scores)
        report.update({"model": os.path.abspath(path), "tta": tta})
    else:
        rows = []
        for path, scores, tta in members:
            r = evaluate(data.labels, scores)
            rows.append({"model": os.path.abspath(path), "tta": tta, "top1": r["top1"],
                         "weighted_accuracy": r["weighted_accuracy"]})
            print(f"member {path} (TTA {tta}): top-1 {r['top1'] * 100:.2f}%  "
                  f"weighted {r['weighted_accuracy'] * 100:.2f}%")
        scores, weights = _ensemble([m[1] for m in members], data.labels, args)
        report = evaluate(data.labels, scores)
        report.update({"members": rows, "weights": weights, "weights_fit_on_split": bool(args.fit_weights)})
        title = (f"ensemble of {len(members)} on {args.split} ({len(data)} faces, weights "
                 f"{'fit on this split' if args.fit_weights else (weights or 'equal')})")
    report.update({"data": os.path.abspath(args.data), "split": args.split})
    print(format_report(report, title=title))
    if args.json:
        from fer_edge.io_utils import atomic_write_text

        atomic_write_text(args.json, to_json(report) + "\n")
    if args.plot:
        from fer_edge.io_utils import atomic_output

        with atomic_output(args.plot, suffix=".png") as tmp:
            plot_confusion(report, tmp)
    if args.save_scores:
        from fer_edge.io_utils import atomic_output

        with atomic_output(args.save_scores, suffix=".npy") as tmp:
            np.save(tmp, scores)
    return 0


def main(argv=None):
    """Entry point of fer-eval; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_main("fer-eval", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
