"""Class-imbalance strategies for FER2013 training.

``none`` and ``class-weight`` keep the data; ``sampler`` draws each epoch's batches with probability
inversely proportional to class frequency; ``ros``, ``smote``, ``smote-tomek`` and ``smote-enn``
resample the training set once through imbalanced-learn on flattened pixels (seeded, and cached on
disk because the SMOTE variants take minutes on FER2013).
"""

import hashlib
import os
import tempfile
import time

import numpy as np

STRATEGIES = ("none", "class-weight", "sampler", "ros", "smote", "smote-tomek", "smote-enn")
RESAMPLERS = ("ros", "smote", "smote-tomek", "smote-enn")


def class_weights(labels, num_classes):
    """Loss weights n / (k * count_c): each class contributes equally to the expected loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    return (len(labels) / (num_classes * counts)).astype(np.float32)


def sample_weights(labels, num_classes):
    """Per-sample drawing weights for the ``sampler`` strategy (sum to 1)."""
    w = class_weights(labels, num_classes)[labels].astype(np.float64)
    return w / w.sum()


def _resampler(strategy, seed):
    try:
        from imblearn.combine import SMOTEENN, SMOTETomek
        from imblearn.over_sampling import SMOTE, RandomOverSampler
    except ImportError:
        from fer_edge.errors import MissingExtraError

        raise MissingExtraError("imbalanced-learn is not installed: pip install 'fer_edge[train]'") from None
    if strategy == "ros":
        return RandomOverSampler(random_state=seed)
    if strategy == "smote":
        return SMOTE(random_state=seed)
    if strategy == "smote-tomek":
        return SMOTETomek(random_state=seed)
    if strategy == "smote-enn":
        return SMOTEENN(random_state=seed)
    raise ValueError(f"unknown balance strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")


def resample(images, labels, strategy, seed=0, cache_dir=None, log=print):
    """Resample a training set with imbalanced-learn.

    Args:
        images: uint8 (N, H, W).
        labels: int64 (N,).
        strategy: one of ``RESAMPLERS``.
        seed: random_state of the resampler.
        cache_dir: where results are cached (None disables the cache).

    Returns:
        (images uint8 (M, H, W), labels int64 (M,)); SMOTE pixels are rounded back to uint8.
    """
    if strategy not in RESAMPLERS:
        raise ValueError(f"{strategy!r} is not a resampling strategy: {', '.join(RESAMPLERS)}")
    cache_file = None
    if cache_dir:
        digest = hashlib.sha1(images.tobytes() + labels.tobytes() + f"{strategy}:{seed}".encode()).hexdigest()[:20]
        cache_file = os.path.join(cache_dir, f"balance-{strategy}-{seed}-{digest}.npz")
        if os.path.isfile(cache_file):
            with np.load(cache_file) as data:
                return data["images"], data["labels"]
    start = time.time()
    flat = images.reshape(len(images), -1)
    # SMOTE interpolates in float; uint8 input would make imblearn cast anyway, so do it once here.
    data = flat if strategy == "ros" else flat.astype(np.float32)
    new_flat, new_labels = _resampler(strategy, seed).fit_resample(data, labels)
    new_images = np.clip(np.rint(new_flat), 0, 255).astype(np.uint8).reshape((-1,) + images.shape[1:])
    new_labels = np.asarray(new_labels, dtype=np.int64)
    log(f"balance {strategy}: {len(labels)} -> {len(new_labels)} images in {time.time() - start:.1f}s, "
        f"counts {np.bincount(new_labels).tolist()}")
    if cache_file:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=new_images, labels=new_labels)
        os.replace(tmp, cache_file)
    return new_images, new_labels
