"""The README's class-imbalance table, built from the balance runs' folders.

    scripts/train_models.sh        # trains runs/balance10_<strategy>, each with eval.json and resources.txt
    python scripts/balance_table.py runs/balance10_*

Each folder needs what the training script leaves there: config.json and train.log (fer-train),
eval.json (``fer-eval OUT/best.pt --json OUT/eval.json``) and resources.txt (``/usr/bin/time -f
"...: %e s wall, %M KB max RSS"``). Rows follow the order of ``training.balance.STRATEGIES``.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fer_edge.cli_common import run_main  # noqa: E402
from fer_edge.errors import FerEdgeError  # noqa: E402
from training.balance import STRATEGIES  # noqa: E402

_IMAGES = re.compile(r"; (\d+) training images;")
_RESAMPLED = re.compile(r"^balance \S+: \d+ -> \d+ images in ([\d.]+)s", re.M)
_RESOURCES = re.compile(r"([\d.]+) s wall, (\d+) KB max RSS")


def _read(folder, name):
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise FerEdgeError(f"{path}: {e.strerror}; run the balance loop of scripts/train_models.sh first") from None


def _match(pattern, text, path):
    found = pattern.findall(text)
    if not found:
        raise FerEdgeError(f"{path}: no line matching {pattern.pattern!r}")
    return found[-1]  # a resumed run logs again; the last line is the run that finished


def summarise_run(folder):
    """One table row of a finished balance run.

    Returns:
        dict with strategy, epochs, images (per epoch), top1 and weighted (fer-eval on PublicTest),
        best_epoch (1-based), wall_s and peak_gb (the whole run) and resample_s (None without resampling).
    """
    config = json.loads(_read(folder, "config.json"))
    log = _read(folder, "train.log")
    report = json.loads(_read(folder, "eval.json"))
    metrics = json.loads(_read(folder, "metrics.json"))
    wall, rss_kb = _match(_RESOURCES, _read(folder, "resources.txt"), os.path.join(folder, "resources.txt"))
    images = int(_match(_IMAGES, log, os.path.join(folder, "train.log")))
    resampled = _RESAMPLED.findall(log)
    try:
        best = max(metrics, key=lambda row: row["public_top1"])
        return {
            "strategy": config["balance"], "epochs": config["epochs"], "images": images,
            "top1": report["top1"], "weighted": report["weighted_accuracy"], "best_epoch": best["epoch"] + 1,
            "wall_s": float(wall), "peak_gb": int(rss_kb) / 1024 ** 2,
            "resample_s": float(resampled[-1]) if resampled else None,
        }
    except (KeyError, TypeError, ValueError) as e:  # a file from another tool or an unfinished run
        raise FerEdgeError(f"{folder}: config.json, metrics.json or eval.json lacks {e}") from None


def markdown_table(rows):
    """The README table, one line per row, in STRATEGIES order."""
    order = {name: i for i, name in enumerate(STRATEGIES)}
    rows = sorted(rows, key=lambda r: order.get(r["strategy"], len(order)))
    epochs = sorted({r["epochs"] for r in rows})
    lines = [f"| `--balance` | training images | top-1 | weighted acc. | best epoch | wall time, "
             f"{'/'.join(map(str, epochs))} epochs | resampling | peak memory |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        resample = "-" if r["resample_s"] is None else f"{r['resample_s']:.0f} s"
        lines.append(f"| `{r['strategy']}` | {r['images']:,} | {r['top1'] * 100:.2f}% | {r['weighted'] * 100:.2f}% "
                     f"| {r['best_epoch']} | {r['wall_s']:.0f} s | {resample} | {r['peak_gb']:.2f} GiB |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of fer-train --balance ..., one per strategy")
    args = p.parse_args(argv)
    print(markdown_table([summarise_run(folder) for folder in args.runs]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("balance_table", main))
