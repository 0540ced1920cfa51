"""(N, C) score files as ``fer-eval --save-scores`` writes them, read back with errors naming the file."""

import numpy as np


def load_scores(path, num_rows, num_classes, what="scores", aligned_with="the split"):
    """The array in ``path``, checked to be (num_rows, num_classes).

    Args:
        path: a .npy file.
        num_rows, num_classes: the shape the caller needs, one row per image of its split.
        what: how the error messages call the file's contents, e.g. "teacher scores".
        aligned_with: what the rows must match, for the shape error, e.g. "the training images".

    Raises:
        ValueError naming ``path`` when it cannot be read or has another shape.
    """
    try:
        scores = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read {what} ({e})") from None
    if scores.shape != (num_rows, num_classes):
        raise ValueError(f"{path}: {what} of shape {tuple(scores.shape)}, expected "
                         f"({num_rows}, {num_classes}) aligned with {aligned_with}")
    return scores
