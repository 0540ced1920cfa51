"""Disagreement between ensemble members and the top-1 of every subset, from saved fer-eval scores.

    fer-eval MODEL --data ../shared/data/fer2013 --save-scores runs/pub/NAME.npy   # once per member
    python scripts/ensemble_diversity.py --data ../shared/data/fer2013 runs/pub/default.npy runs/pub/*.npy

The first file is the reference member every other one is compared with (the shipped model).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fer_edge.cli_common import run_main  # noqa: E402
from fer_edge.constants import CLASS_NAMES  # noqa: E402
from fer_edge.datasets import load_fer2013  # noqa: E402
from training.diversity import disagreement, subset_accuracies  # noqa: E402
from training.scores import load_scores  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scores", nargs="+", help="(N, 7) .npy score files from fer-eval --save-scores, reference first")
    p.add_argument("--data", required=True, help="fer2013.csv or the image-folder root")
    p.add_argument("--split", default="public", choices=("train", "public", "private"),
                   help="split the scores were saved on (default: %(default)s)")
    p.add_argument("--top", type=int, default=10, help="subsets to print, best first (default: %(default)s)")
    args = p.parse_args(argv)
    labels = load_fer2013(args.data, args.split).labels
    scores = {}
    for path in dict.fromkeys(args.scores):  # a shell glob may repeat the reference
        try:
            s = load_scores(path, len(labels), len(CLASS_NAMES), aligned_with=f"the {args.split} split")
        except ValueError as e:
            raise SystemExit(f"ensemble_diversity: error: {e}") from None
        name = os.path.splitext(os.path.basename(path))[0]
        scores[path if name in scores else name] = s  # runs/a/best.npy and runs/b/best.npy stay apart
    names = list(scores)
    ref = names[0]
    for name in names:
        top1 = (scores[name].argmax(1) == labels).mean()
        line = f"{name}: top-1 {top1 * 100:.2f}%"
        if name != ref:
            share, right_ref, right_other = disagreement(scores[ref], scores[name], labels)
            line += (f"; disagrees with {ref} on {share * 100:.1f}% of faces, where {ref} is right "
                     f"{right_ref * 100:.0f}% and {name} {right_other * 100:.0f}%")
        print(line)
    subsets = subset_accuracies(scores, labels)
    print(f"{len(subsets)} subsets of two or more, equal weights, best first (chosen on this split, so flattered):")
    for top1, subset in subsets[:args.top]:
        print(f"  {top1 * 100:.2f}%  {' + '.join(subset)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("ensemble_diversity", main))  # dataset errors as one line, not a traceback
