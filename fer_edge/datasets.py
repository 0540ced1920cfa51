"""Load FER2013 as uint8 arrays (N, 48, 48) and int64 labels 0..6.

Three forms are read:

* the original ``fer2013.csv`` (columns ``emotion,pixels,Usage``), or a folder holding it;
* image folders ``train/<class>/`` and ``test/<class>/``, where the file-name prefixes
  ``PublicTest_`` and ``PrivateTest_`` split ``test/`` (the common Kaggle layout);
* plain ``train/ val/ test/`` folders: ``val/`` is the public split, ``test/`` the private one;
* a pack, one ``.npz`` or ``.npz.xz`` file of arrays (``fer_edge.dataset_pack``), to carry the data
  to another machine.

Splits are called ``train``, ``public`` and ``private``. Decoded arrays are cached (see
``default_cache_dir``) keyed by the files' names, sizes and modification times, so a second load is a
single ``numpy.load``.
"""

import csv
import dataclasses
import hashlib
import os
import tempfile

import numpy as np

from .constants import CLASS_NAMES, FER_IMAGE_SIZE, SPLITS, USAGE_TO_SPLIT
from .dataset_pack import is_pack, read_pack
from .errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_VAL_FOLDERS = ("val", "valid", "validation")
_CACHE_VERSION = "1"


@dataclasses.dataclass
class FerSplit:
    """One split of FER2013.

    Attributes:
        images: uint8 array (N, 48, 48).
        labels: int64 array (N,) with values 0..6 in ``CLASS_NAMES`` order.
        sources: where each image came from (a file path, or ``file:line`` for the CSV).
        split: the split name.
    """

    images: np.ndarray
    labels: np.ndarray
    sources: list
    split: str

    def __len__(self):
        return len(self.labels)

    def class_counts(self):
        """Number of images per class, in label order."""
        return np.bincount(self.labels, minlength=len(CLASS_NAMES))


def default_cache_dir():
    """Folder for decoded-array caches: $FER_EDGE_CACHE, else ~/.cache/fer_edge/datasets."""
    root = os.environ.get("FER_EDGE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fer_edge"
    )
    return os.path.join(root, "datasets")


def load_fer2013(path, split="train", cache=True, cache_dir=None):
    """Load one split of FER2013 from a CSV file or an image-folder tree.

    Args:
        path: ``fer2013.csv``, a folder containing it, the root of an image-folder tree, or a pack
            (``.npz`` / ``.npz.xz``, see ``fer_edge.dataset_pack``).
        split: ``train``, ``public`` or ``private``.
        cache: reuse (and write) a decoded-array cache.
        cache_dir: where caches live; default ``default_cache_dir()``.

    Returns:
        A FerSplit.

    Raises:
        DatasetError: naming the file (and line) that cannot be read, or an empty split.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or folder")
    if os.path.isfile(path) and is_pack(path):
        # Cached like the other forms: reading one split decompresses the whole .xz pack (3.5 s for FER2013).
        stat = os.stat(path)
        key = ("pack", path, split, stat.st_size, stat.st_mtime_ns)
        return _cached(key, cache, cache_dir, lambda: _load_pack(path, split))
    csv_path = _find_csv(path)
    if csv_path is not None:
        stat = os.stat(csv_path)
        key = ("csv", csv_path, stat.st_size, stat.st_mtime_ns, split)
        return _cached(key, cache, cache_dir, lambda: _load_csv(csv_path, split))
    files = _list_folder_split(path, split)
    listing = [(f, lbl, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f, lbl in files]
    key = ("folders", path, split, listing)
    return _cached(key, cache, cache_dir, lambda: _decode_files(files, split))


def _find_csv(path):
    if os.path.isfile(path):
        if not path.lower().endswith(".csv"):
            raise DatasetError(f"{path}: expected fer2013.csv, a pack (.npz, .npz.xz) or a folder of images")
        return path
    candidate = os.path.join(path, "fer2013.csv")
    return candidate if os.path.isfile(candidate) else None


def _cached(key, use_cache, cache_dir, build):
    if not use_cache:
        return build()
    digest = hashlib.sha1((_CACHE_VERSION + repr(key)).encode()).hexdigest()[:20]
    cache_dir = cache_dir or default_cache_dir()
    cache_file = os.path.join(cache_dir, f"fer2013-{key[-1] if key[0] == 'csv' else key[2]}-{digest}.npz")
    if os.path.isfile(cache_file):
        try:
            with np.load(cache_file, allow_pickle=False) as data:
                return FerSplit(data["images"], data["labels"], list(data["sources"]), str(data["split"]))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    result = build()
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=result.images, labels=result.labels,
                     sources=np.array(result.sources), split=np.array(result.split))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only cache folder only costs speed
    return result


def _load_pack(path, split):
    images, labels = read_pack(path, split)
    return FerSplit(images, labels, [f"{path}[{split}:{i}]" for i in range(len(labels))], split)


# ---------------------------------------------------------------------------------------------
# CSV


def _load_csv(csv_path, split):
    n_pixels = FER_IMAGE_SIZE * FER_IMAGE_SIZE
    images, labels, sources = [], [], []
    try:
        fh = open(csv_path, newline="", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{csv_path}: cannot open ({exc.strerror})") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{csv_path}: the file is empty")
        columns = [h.strip().lower() for h in header]
        for needed in ("emotion", "pixels", "usage"):
            if needed not in columns:
                raise DatasetError(
                    f"{csv_path}:1: missing column {needed!r} (expected emotion,pixels,Usage; got {','.join(header)})"
                )
        i_label, i_pixels, i_usage = (columns.index(c) for c in ("emotion", "pixels", "usage"))
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"{csv_path}:{line_no}"
            if len(row) != len(columns):
                raise DatasetError(f"{where}: expected {len(columns)} fields, found {len(row)}")
            usage = row[i_usage].strip()
            if usage not in USAGE_TO_SPLIT:
                raise DatasetError(
                    f"{where}: unknown Usage {usage!r} (expected Training, PublicTest or PrivateTest)"
                )
            if USAGE_TO_SPLIT[usage] != split:
                continue
            try:
                label = int(row[i_label])
            except ValueError:
                raise DatasetError(f"{where}: emotion {row[i_label]!r} is not an integer") from None
            if not 0 <= label < len(CLASS_NAMES):
                raise DatasetError(f"{where}: emotion {label} is outside 0..{len(CLASS_NAMES) - 1}")
            try:
                pixels = np.array(row[i_pixels].split(), dtype=np.int32)
            except ValueError:
                raise DatasetError(f"{where}: pixels must be space-separated integers") from None
            if pixels.size != n_pixels:
                raise DatasetError(f"{where}: expected {n_pixels} pixels (48x48), found {pixels.size}")
            if pixels.min() < 0 or pixels.max() > 255:
                raise DatasetError(f"{where}: pixel values must lie in 0..255")
            images.append(pixels.astype(np.uint8).reshape(FER_IMAGE_SIZE, FER_IMAGE_SIZE))
            labels.append(label)
            sources.append(where)
    if not images:
        raise DatasetError(f"{csv_path}: split {split!r} is empty (no rows with that Usage)")
    return FerSplit(np.stack(images), np.array(labels, dtype=np.int64), sources, split)


# ---------------------------------------------------------------------------------------------
# Image folders


def _class_label(folder_name, where):
    name = folder_name.lower()
    if name in CLASS_NAMES:
        return CLASS_NAMES.index(name)
    if name.isdigit() and int(name) < len(CLASS_NAMES):
        return int(name)
    raise DatasetError(
        f"{where}: unknown class folder {folder_name!r} (expected one of {', '.join(CLASS_NAMES)} or 0..6)"
    )


def _split_of_file(file_name, folder_split):
    for usage, split in USAGE_TO_SPLIT.items():
        if file_name.startswith(usage + "_"):
            return split
    return folder_split


def _list_folder_split(root, split):
    """(file, label) pairs of ``split`` under root, sorted for reproducibility."""
    subdirs = {d.lower(): d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
    has_val = next((subdirs[v] for v in _VAL_FOLDERS if v in subdirs), None)
    # Where each folder's unprefixed files go; prefixed files (PublicTest_...) always follow their prefix.
    folder_splits = {}
    if "train" in subdirs:
        folder_splits[subdirs["train"]] = "train"
    if has_val:
        folder_splits[has_val] = "public"
    if "test" in subdirs:
        folder_splits[subdirs["test"]] = "private" if has_val else "public"
    if not folder_splits:
        raise DatasetError(
            f"{root}: no train/, val/ or test/ folder and no fer2013.csv; see the README for the layouts read"
        )
    pairs = []
    for folder, folder_split in sorted(folder_splits.items()):
        folder_path = os.path.join(root, folder)
        for class_dir in sorted(os.listdir(folder_path)):
            class_path = os.path.join(folder_path, class_dir)
            if class_dir.startswith(".") or not os.path.isdir(class_path):
                continue
            label = _class_label(class_dir, class_path)
            for name in sorted(os.listdir(class_path)):
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if _split_of_file(name, folder_split) == split:
                    pairs.append((os.path.join(class_path, name), label))
    if not pairs:
        raise DatasetError(
            f"{root}: split {split!r} is empty (train/ holds 'train'; test/ files named PublicTest_*/PrivateTest_* "
            "hold 'public'/'private'; with a val/ folder, val/ is 'public' and test/ 'private')"
        )
    return pairs


def _decode_files(files, split):
    import cv2

    images = np.empty((len(files), FER_IMAGE_SIZE, FER_IMAGE_SIZE), np.uint8)
    for i, (file_path, _) in enumerate(files):
        images[i] = read_face_image(file_path, cv2)
    labels = np.array([lbl for _, lbl in files], dtype=np.int64)
    return FerSplit(images, labels, [f for f, _ in files], split)


def read_face_image(file_path, cv2=None):
    """Read one face image as uint8 gray 48x48 (colour is converted, other sizes are resized).

    Raises:
        DatasetError: naming the file when it cannot be decoded.
    """
    if cv2 is None:
        import cv2
    data = np.fromfile(file_path, dtype=np.uint8) if os.path.getsize(file_path) else None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data is not None else None
    if image is None:
        raise DatasetError(f"{file_path}: unreadable image (empty, corrupt or not an image)")
    if image.shape != (FER_IMAGE_SIZE, FER_IMAGE_SIZE):
        shrink = image.shape[0] > FER_IMAGE_SIZE or image.shape[1] > FER_IMAGE_SIZE
        image = cv2.resize(image, (FER_IMAGE_SIZE, FER_IMAGE_SIZE),
                           interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image
