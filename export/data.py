"""Calibration and evaluation images, preprocessed exactly as fer_edge's runtime preprocesses faces.

The runtime turns a face into network input by normalising ``(x / 255 - mean) / std`` and keeping the
central ``input_size`` window of the ``context_size`` face (``fer_edge.faces``); for a 48x48 FER2013
image that is its central 40x40 crop, which is what ``fer_edge.preprocess.crop_faces`` makes of the
whole image's box (a test holds the two together). Calibrating on anything else would fit the INT8 scales to inputs
the deployed model never sees. Only NumPy is needed here, so an ONNX file can be quantized without torch.
"""

import numpy as np

from fer_edge.constants import FER_IMAGE_SIZE
from fer_edge.errors import DatasetError
from fer_edge.faces import tta_batch


def preprocess(images, metadata, tta="none"):
    """Network input for uint8 FER2013 faces.

    Args:
        images: uint8 array (N, 48, 48) (or (N, 1, 48, 48)).
        metadata: the model's ModelMetadata (input and context size, mean, std).
        tta: ``none`` (the centre crop), ``flip`` or ``tencrop``; see ``fer_edge.faces.tta_batch``.

    Returns:
        float32 array (V, N, 1, S, S) of views; V is 1 for ``none``.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise DatasetError(f"expected gray faces shaped (N, 48, 48), got {x.shape}")
    if metadata.channels != 1:
        raise DatasetError(f"FER2013 images are gray but the model wants {metadata.channels} channels")
    if x.shape[-1] != metadata.context_size or x.shape[-2] != metadata.context_size:
        raise DatasetError(
            f"faces of {x.shape[-2]}x{x.shape[-1]} pixels but the model's context is "
            f"{metadata.context_size}x{metadata.context_size}; FER2013 faces are {FER_IMAGE_SIZE}x{FER_IMAGE_SIZE}"
        )
    mean, std = np.float32(metadata.mean), np.float32(metadata.std)
    context = (x.astype(np.float32) / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(tta_batch(context, metadata, tta), dtype=np.float32)


def balanced_indices(labels, size, num_classes, seed=0):
    """A seeded, class-balanced sample: the same number of images from every class.

    Args:
        labels: int labels (N,).
        size: wanted sample size; rounded down to a multiple of ``num_classes``.
        num_classes: number of classes, all of which must be present.
        seed: random seed.

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        DatasetError: a class has fewer images than its share, or the size is below one per class.
    """
    labels = np.asarray(labels)
    per_class = int(size) // num_classes
    if per_class < 1:
        raise DatasetError(f"a calibration sample of {size} cannot hold one image of each of {num_classes} classes")
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise DatasetError(
                f"class {c} has {len(pool)} images, fewer than the {per_class} a balanced sample of {size} needs; "
                "lower --calib-size"
            )
        picked.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def fixed_size_batches(x, batch_size):
    """Split x into batches of exactly ``batch_size`` rows; the last one is completed from the start of x.

    TensorRT's calibrator needs one fixed batch shape and ONNX Runtime's entropy calibrator stacks
    batches, so both are fed these same equal batches (a few images are seen twice).

    Args:
        x: array (N, ...), N >= 1.
        batch_size: rows per batch; capped at N.

    Returns:
        List of contiguous arrays (batch_size, ...).
    """
    n = len(x)
    if n == 0:
        raise DatasetError("no calibration images")
    b = max(1, min(int(batch_size), n))
    pad = (-n) % b
    if pad:
        x = np.concatenate([x, x[:pad]])
    return [np.ascontiguousarray(x[i:i + b]) for i in range(0, len(x), b)]


class CalibrationSet:
    """The calibration images of an export: a class-balanced sample of the training split.

    Attributes:
        images: uint8 (N, 48, 48) faces.
        labels: their labels.
        inputs: float32 (N, 1, S, S) network input.
        batches: list of equal float32 batches of ``inputs`` (see ``fixed_size_batches``).
        info: dict describing the sample, stored in the INT8 model's metadata.
    """

    def __init__(self, images, labels, metadata, batch_size=64, info=None):
        self.images = images
        self.labels = labels
        self.inputs = preprocess(images, metadata)[0]
        self.batches = fixed_size_batches(self.inputs, batch_size)
        self.info = dict(info or {})
        self.info.update({"images": int(len(images)), "batch_size": int(self.batches[0].shape[0]),
                          "batches": len(self.batches),
                          "per_class": np.bincount(labels, minlength=len(metadata.class_names)).tolist()})


def load_calibration_set(data, metadata, size=512, seed=0, batch_size=64):
    """Read the training split of a FER2013 dataset and draw the calibration sample from it.

    Args:
        data: fer2013.csv, its folder, or an image-folder root (see ``fer_edge.datasets.load_fer2013``).
        metadata: the model's ModelMetadata.
        size: sample size (rounded down to a multiple of the class count).
        seed: sampling seed.
        batch_size: calibration batch size.

    Returns:
        A CalibrationSet.
    """
    from fer_edge.datasets import load_fer2013

    train = load_fer2013(data, "train")
    idx = balanced_indices(train.labels, size, len(metadata.class_names), seed)
    info = {"source": f"{data} (train split)", "seed": int(seed), "requested": int(size),
            "preprocessing": "central crop of the 48x48 face, (x/255 - mean)/std, as the runtime"}
    return CalibrationSet(train.images[idx], train.labels[idx], metadata, batch_size, info)


def load_public_split(data):
    """PublicTest images and labels of a FER2013 dataset, as (uint8 images, labels)."""
    from fer_edge.datasets import load_fer2013

    public = load_fer2013(data, "public")
    return public.images, public.labels
