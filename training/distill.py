"""Teacher scores for knowledge distillation, read from a .npy file.

``fer-eval --split train --save-scores OUT.npy`` writes the probabilities of a model or an ensemble, in
the order of the training images; raw logits saved by other tools work too. The training loop wants
logits, so probabilities are turned into log-probabilities: softmax(log p / T) is p sharpened or softened
by the temperature, which is what distillation means by the teacher's soft targets.
"""

import numpy as np

from .scores import load_scores


def _are_probabilities(scores):
    # Logits that happen to be non-negative and sum to one on every row are possible but absurd; a file of
    # probabilities always looks like this.
    return bool((scores >= 0).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def load_teacher_logits(path, num_images, num_classes):
    """(num_images, num_classes) float32 teacher logits from ``path``.

    Raises ValueError naming the file when it cannot be read, has the wrong shape (it must be aligned with
    the training images, so a resampling ``--balance`` cannot be combined with it), or holds NaN or inf.
    """
    scores = load_scores(path, num_images, num_classes, "teacher scores", "the training images")
    scores = scores.astype(np.float32)
    if not np.isfinite(scores).all():
        raise ValueError(f"{path}: teacher scores contain NaN or inf")
    if _are_probabilities(scores):
        scores = np.log(np.clip(scores, 1e-12, None))
    return scores
