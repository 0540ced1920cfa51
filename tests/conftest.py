"""Shared fixtures: small synthetic FER2013 data in every form the loader reads."""

import os

import numpy as np
import pytest

from fer_edge.constants import CLASS_NAMES

REAL_DATA = os.environ.get("FER_EDGE_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                         "fer2013"))


def synthetic_faces(n, seed=0):
    """n random 48x48 uint8 images whose mean brightness encodes the label (learnable)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    rng.shuffle(labels)
    base = 40 + labels * 28
    images = np.clip(rng.normal(base[:, None, None], 12, (n, 48, 48)), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_csv(path, splits):
    """Write a fer2013.csv; splits maps Usage -> (images, labels)."""
    with open(path, "w") as fh:
        fh.write("emotion,pixels,Usage\n")
        for usage, (images, labels) in splits.items():
            for img, lbl in zip(images, labels):
                fh.write(f"{lbl},{' '.join(map(str, img.ravel()))},{usage}\n")
    return path


def write_folders(root, layout):
    """Write PNG files; layout maps (folder, prefix) -> (images, labels)."""
    import cv2

    for (folder, prefix), (images, labels) in layout.items():
        for i, (img, lbl) in enumerate(zip(images, labels)):
            d = os.path.join(root, folder, CLASS_NAMES[lbl])
            os.makedirs(d, exist_ok=True)
            cv2.imwrite(os.path.join(d, f"{prefix}{i:05d}.png"), img)
    return root


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """Keep dataset caches inside the test's temporary folder."""
    d = tmp_path / "cache"
    monkeypatch.setenv("FER_EDGE_CACHE", str(d))
    return d


@pytest.fixture
def fer_tree(tmp_path, cache_dir):
    """A Kaggle-style tree: train/<class>/ and test/<class>/ with PublicTest_/PrivateTest_ files."""
    train = synthetic_faces(70, seed=1)
    public = synthetic_faces(21, seed=2)
    private = synthetic_faces(14, seed=3)
    root = tmp_path / "fer2013"
    write_folders(root, {("train", "Training_"): train, ("test", "PublicTest_"): public,
                         ("test", "PrivateTest_"): private})
    return root, {"train": train, "public": public, "private": private}


@pytest.fixture
def real_data():
    """Path of the real FER2013 folders; skips the test when they are absent."""
    if not os.path.isdir(os.path.join(REAL_DATA, "train")):
        pytest.skip(f"real FER2013 data not found at {REAL_DATA}")
    return os.path.abspath(REAL_DATA)
