"""Write MODEL.md for an exported model from its training run and a fresh fer-eval measurement.

    python scripts/model_card.py --run runs/edge_s0 --model fer_edge/models/fer_edge_default.onnx \
        --data ../shared/data/fer2013 --command "fer-train ..." --out MODEL.md

Every number in the card is measured here (fer-eval's code path on PublicTest) or read from the run's
own metrics.json, so `fer-eval MODEL --data DATA` reproduces the card.
"""

import argparse
import json
import os
import sys

import numpy as np


def _table(report):
    rows = ["| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for r in report["per_class"]:
        rows.append(f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |")
    names = report["class_names"]
    cm = ["| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, report["confusion_matrix"]):
        cm.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(rows), "\n".join(cm)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="training run folder (metrics.json, config.json)")
    p.add_argument("--model", required=True, help="the exported ONNX model the card describes")
    p.add_argument("--data", required=True, help="FER2013 root")
    p.add_argument("--command", required=True, help="the exact training command")
    p.add_argument("--export-command", default="", help="the exact export command")
    p.add_argument("--out", default="MODEL.md", help="card path (default: %(default)s)")
    p.add_argument("--shared-machine", action="store_true",
                   help="say the training shared the machine with other work (its epoch times are then inflated)")
    args = p.parse_args(argv)

    from fer_edge import Runtime
    from fer_edge.cli.bench import machine_info
    from fer_edge.datasets import load_fer2013
    from fer_edge.metrics import evaluate
    from training.eval_cli import TTA_CHOICES, score_onnx

    history = json.load(open(os.path.join(args.run, "metrics.json")))
    config = json.load(open(os.path.join(args.run, "config.json")))
    best = max(history, key=lambda r: r["public_top1"])
    train_hours = sum(r["train_seconds"] for r in history) / 3600
    data = load_fer2013(args.data, "public")
    reports = {}
    with Runtime(args.model, detector=None, threads=2) as rt:
        info = rt.info()
        meta = info["metadata"]
        default_tta = info.get("tta")
    for tta in TTA_CHOICES:  # fer-eval's own scoring, so `fer-eval MODEL --tta MODE` reproduces each row
        scores, _ = score_onnx(args.model, data.images, tta, "auto", 256, progress=False)
        reports[tta] = evaluate(data.labels, scores)
    main_report = reports[default_tta]
    per_class, cm = _table(main_report)
    size_mb = os.path.getsize(args.model) / 1e6
    lines = [
        "# Model card: fer_edge default model",
        "",
        f"`{os.path.relpath(args.model)}` ({size_mb:.1f} MB), the model `fer_edge.Runtime()` loads by default.",
        "",
        "## What it is",
        f"- Architecture: `{meta['architecture']}` (see `training/models.py`), input {meta['input_size']}x"
        f"{meta['input_size']} gray, the central crop of the face resized to {meta['context_size']}x{meta['context_size']};"
        f" pixels normalised as (x / 255 - {meta['mean']}) / {meta['std']}.",
        f"- Output: {meta['output']} for the 7 FER2013 classes in label order: {', '.join(meta['class_names'])}.",
        f"- Recommended test-time augmentation (what the runtime applies by default): `{default_tta}`.",
        f"- Trained on: {meta['trained_on']}.",
        "",
        "## How it was made",
        f"- Training command: `{args.command}`",
        *( [f"- Export command: `{args.export_command}`"] if args.export_command else [] ),
        f"- Recipe: {config['optimizer']} (Nesterov) lr {config['lr']}, {config['schedule']} schedule, "
        f"{config['epochs']} epochs, batch {config['batch_size']}, weight decay {config['weight_decay']}, "
        f"label smoothing {config['label_smoothing']}, balance `{config['balance']}`, "
        f"augmentation {'on' if config['augment'] else 'off'}, bf16 autocast {'on' if config['amp'] else 'off'}, seed {config['seed']}.",
        f"- Best epoch (chosen on PublicTest with `{config['eval_tta']}` TTA): {best['epoch'] + 1} of {len(history)}.",
        f"- Training time: {train_hours:.2f} h of training epochs on {machine_info()['processor']} "
        f"({os.cpu_count()} cores, no GPU){', shared with other work at times' if args.shared_machine else ''}; "
        f"median {np.median([r['images_per_second'] for r in history]):.0f} training images/s.",
        "",
        f"## PublicTest results ({len(data):,} faces)",
        "Measured by `fer-eval " + os.path.relpath(args.model) + f" --data {args.data} --split public --tta MODE`"
        " (the runtime's own preprocessing). PublicTest also selected the epoch, so these figures are a"
        " little optimistic; FER2013's PrivateTest was not available to this project.",
        "",
        "| TTA | top-1 | top-2 | top-3 | weighted accuracy | macro F1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for tta, r in reports.items():
        mark = " (default)" if tta == default_tta else ""
        lines.append(f"| {tta}{mark} | {r['top1'] * 100:.2f}% | {r['top2'] * 100:.2f}% | {r['top3'] * 100:.2f}% | "
                     f"{r['weighted_accuracy'] * 100:.2f}% | {r['macro_f1'] * 100:.2f}% |")
    weakest = min(main_report["per_class"], key=lambda r: r["recall"])
    disgust = next(r for r in main_report["per_class"] if r["class"] == "disgust")
    lines += ["", f"Per class, TTA `{default_tta}`:", "", per_class, "", "Confusion matrix, TTA "
              f"`{default_tta}` (rows: true class, columns: predicted):", "", cm, "",
              "## Limits",
              "- FER2013 is low-resolution, mostly frontal web imagery with noisy labels; human accuracy on it is"
              " about 65% (Goodfellow et al., 2013). Expect lower accuracy on faces unlike it (profile views, heavy occlusion, children,"
              " unusual lighting) and on posed-expression datasets whose label conventions differ.",
              f"- Weakest class by recall: `{weakest['class']}` ({weakest['recall']:.3f}); `disgust` has only 436"
              f" training images, so its figures rest on {disgust['support']} PublicTest faces.",
              "- Expressions are not emotions: the model reports what a face looks like, not what a person feels.",
              ""]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {args.out}: {default_tta} top-1 {main_report['top1'] * 100:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
