"""Classification metrics as the FER literature reports them (NumPy only).

Top-k accuracy, weighted accuracy (the mean of per-class recalls, which FER2013's imbalance makes the
honest summary), per-class precision/recall/F1 and the confusion matrix; as a dict, a text table,
JSON, and a confusion-matrix PNG when matplotlib is installed.
"""

import json

import numpy as np

from .constants import CLASS_NAMES


def confusion_matrix(y_true, y_pred, num_classes=len(CLASS_NAMES)):
    """Counts C[i, j] of samples of true class i predicted as j."""
    y_true, y_pred = _labels(y_true, num_classes, "y_true"), _labels(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.shape[0]} labels but y_pred has {y_pred.shape[0]}")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def topk_accuracy(y_true, scores, k=1):
    """Fraction of samples whose true class is among the k highest scores (ties broken by index)."""
    scores = _scores(scores)
    y_true = _labels(y_true, scores.shape[1], "y_true")
    if len(y_true) != len(scores):
        raise ValueError(f"y_true has {len(y_true)} labels but scores has {len(scores)} rows")
    k = min(k, scores.shape[1])
    # A stable descending sort keeps the lower index first among equal scores, as argmax does.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def per_class_scores(cm):
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support.astype(np.int64)


def evaluate(y_true, scores, class_names=CLASS_NAMES):
    """All metrics of a set of predictions.

    Args:
        y_true: int labels (N,).
        scores: (N, C) logits or probabilities (only their order matters).
        class_names: names of the C classes.

    Returns:
        dict with top1/top2/top3, weighted_accuracy (mean recall over classes present),
        macro_f1, per_class (list of dicts), confusion_matrix (list of lists), n, class_names.
    """
    scores = _scores(scores)
    num_classes = scores.shape[1]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} score columns")
    y_true = _labels(y_true, num_classes, "y_true")
    cm = confusion_matrix(y_true, scores.argmax(axis=1), num_classes)
    precision, recall, f1, support = per_class_scores(cm)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "top1": topk_accuracy(y_true, scores, 1),
        "top2": topk_accuracy(y_true, scores, 2),
        "top3": topk_accuracy(y_true, scores, 3),
        "weighted_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "class_names": list(class_names),
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        ],
        "confusion_matrix": cm.tolist(),
    }


def format_report(report, title=None):
    """A text table of a report from ``evaluate``."""
    lines = [title] if title else []
    lines.append(
        f"n={report['n']}  top-1 {report['top1'] * 100:.2f}%  top-2 {report['top2'] * 100:.2f}%  "
        f"top-3 {report['top3'] * 100:.2f}%  weighted accuracy {report['weighted_accuracy'] * 100:.2f}%  "
        f"macro F1 {report['macro_f1'] * 100:.2f}%"
    )
    lines.append("")
    lines.append(f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for row in report["per_class"]:
        lines.append(f"{row['class']:<10}{row['precision']:>10.4f}{row['recall']:>10.4f}"
                     f"{row['f1']:>10.4f}{row['support']:>10d}")
    lines.append("")
    names = [n[:7] for n in report["class_names"]]
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * 10 + "".join(f"{n:>8}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:<10}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


def to_json(report, path=None):
    """The report as JSON text; also written to ``path`` when given."""
    text = json.dumps(report, indent=2)
    if path:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    return text


def plot_confusion(report, path, normalize=True):
    """Write the confusion matrix as a PNG (needs matplotlib, from the ``train`` extra)."""
    from .errors import require

    matplotlib = require("matplotlib", "train")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    names = report["class_names"]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{shown[i, j]:.2f}" if normalize else int(cm[i, j]), ha="center", va="center",
                    color="white" if shown[i, j] > 0.5 * shown.max() else "black", fontsize=8)
    ax.set_title(f"top-1 {report['top1'] * 100:.2f}%, weighted {report['weighted_accuracy'] * 100:.2f}%")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scores(scores):
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (N, classes) with at least 2 classes, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return scores


def _labels(labels, num_classes, name):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}")
    return labels.astype(np.int64)
