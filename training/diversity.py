"""How different ensemble members are, from their saved PublicTest scores (``fer-eval --save-scores``).

Averaging only helps where members disagree and the right one is confident enough to win, so these are
the figures that explain an ensemble's gain (or its absence): how often two members disagree, who is
right when they do, and what every subset of the members reaches with equal weights.
"""

import itertools

import numpy as np

from .ensemble import combine


def disagreement(scores_a, scores_b, labels):
    """(share of faces where the two top-1 predictions differ, share of those where A is right, B right)."""
    a, b = np.asarray(scores_a).argmax(1), np.asarray(scores_b).argmax(1)
    labels = np.asarray(labels)
    differ = a != b
    n = int(differ.sum())
    if n == 0:
        return 0.0, 0.0, 0.0
    return n / len(labels), float((a[differ] == labels[differ]).mean()), float((b[differ] == labels[differ]).mean())


def subset_accuracies(scores_by_name, labels):
    """Top-1 of the equal-weight probability mean of every subset of two or more members, best first.

    Returns a list of (top1, names) with names in the order given. Picking the best subset on the split
    it is measured on flatters it; the list is for understanding, not for reporting as a result.
    """
    names = list(scores_by_name)
    labels = np.asarray(labels)
    results = []
    for k in range(2, len(names) + 1):
        for subset in itertools.combinations(names, k):
            mean = combine([scores_by_name[n] for n in subset])  # the average fer-eval's ensembles take
            results.append((float((mean.argmax(1) == labels).mean()), subset))
    results.sort(key=lambda r: -r[0])
    return results
