"""FER2013 packed into one compressed file, to take the data where its 36k image files cannot go
(a GPU machine reached through a transfer of at most 64 MiB, say).

A pack is an ``.npz`` archive, optionally xz-compressed as a whole (``.npz.xz``), holding
``<split>_images`` (N, 48, 48) uint8 and ``<split>_labels`` (N,) int64 for one or more of the splits
``train``, ``public`` and ``private``. xz matters: FER2013's pixels are noisy, so the zlib of
``numpy.savez_compressed`` keeps about 95% of their size, and xz about 79% (train + public: 55 MiB).

``fer_edge.datasets.load_fer2013`` reads packs like the other forms. Write one with
``python -m fer_edge.dataset_pack SOURCE DEST.npz.xz``.
"""

import argparse
import io
import lzma
import os
import sys

import numpy as np

from .constants import CLASS_NAMES, FER_IMAGE_SIZE, SPLITS
from .errors import DatasetError
from .io_utils import atomic_write_bytes

PACK_SUFFIXES = (".npz", ".npz.xz")


def is_pack(path):
    """True when ``path`` names a pack by its suffix (``.npz`` or ``.npz.xz``)."""
    return os.fspath(path).lower().endswith(PACK_SUFFIXES)


def write_pack(dest, splits):
    """Write a pack atomically (no half-written file is left behind on failure).

    Args:
        dest: the pack's path; ``.npz.xz`` compresses with xz, ``.npz`` stores the arrays as they are.
        splits: dict split name -> (images (N, 48, 48) uint8, labels (N,) integers 0..6).

    Raises:
        DatasetError: an unknown split name, a bad suffix or arrays of the wrong shape or type.
    """
    dest = os.fspath(dest)
    if not is_pack(dest):
        raise DatasetError(f"{dest}: a pack's name ends in .npz or .npz.xz")
    arrays = {}
    for split, (images, labels) in splits.items():
        _check_split(f"{dest} ({split})", split, np.asarray(images), np.asarray(labels))
        arrays[f"{split}_images"] = np.ascontiguousarray(images, dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    if dest.lower().endswith(".xz"):
        payload = lzma.compress(payload, preset=6)
    atomic_write_bytes(dest, payload)


def read_pack(path, split):
    """One split of a pack as (images uint8 (N, 48, 48), labels int64 (N,)).

    Raises:
        DatasetError: naming the file when it is unreadable, lacks the split or holds malformed arrays.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            payload = fh.read()
        if path.lower().endswith(".xz"):
            payload = lzma.decompress(payload)
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            available = sorted(k[: -len("_images")] for k in archive.files if k.endswith("_images"))
            if f"{split}_images" not in archive.files or f"{split}_labels" not in archive.files:
                raise DatasetError(f"{path}: the pack has no {split!r} split (it holds: {', '.join(available) or 'none'})")
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
    except DatasetError:
        raise
    except (OSError, ValueError, lzma.LZMAError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable FER2013 pack ({exc})") from None
    _check_split(path, split, images, labels)
    return images, labels.astype(np.int64)


def _check_split(where, split, images, labels):
    if split not in SPLITS:
        raise DatasetError(f"{where}: unknown split {split!r}: choose from {', '.join(SPLITS)}")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (FER_IMAGE_SIZE, FER_IMAGE_SIZE):
        raise DatasetError(f"{where}: {split} images must be uint8 (N, 48, 48), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: {split} labels must be N integers for {len(images)} images, "
                           f"got {labels.dtype} {labels.shape}")
    if len(labels) == 0:
        raise DatasetError(f"{where}: the {split} split is empty")
    if labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise DatasetError(f"{where}: {split} labels must lie in 0..{len(CLASS_NAMES) - 1}")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fer_edge.dataset_pack",
        description="Pack FER2013 (CSV or image folders) into one .npz.xz file.")
    p.add_argument("source", help="fer2013.csv or the image-folder root")
    p.add_argument("dest", help="the pack to write (.npz.xz, or .npz uncompressed)")
    p.add_argument("--splits", nargs="+", default=["train", "public"], choices=SPLITS,
                   help="splits to pack (default: train public)")
    return p


def main(argv=None):
    """Pack the splits; returns the exit code."""
    from .cli_common import run_main
    from .datasets import load_fer2013

    args = build_parser().parse_args(argv)

    def run():
        splits = {}
        for split in args.splits:
            data = load_fer2013(args.source, split)
            splits[split] = (data.images, data.labels)
        write_pack(args.dest, splits)
        counts = ", ".join(f"{s} {len(splits[s][1])}" for s in args.splits)
        print(f"wrote {args.dest}: {counts} faces, {os.path.getsize(args.dest) / 2**20:.1f} MiB")
        return 0

    return run_main("dataset_pack", run)


if __name__ == "__main__":
    sys.exit(main())
