import os
import time

import numpy as np
import pytest

from fer_edge.datasets import DatasetError, load_fer2013
from tests.conftest import synthetic_faces, write_csv, write_folders


def _sorted_pairs(images, labels):
    order = np.lexsort((images.reshape(len(images), -1).sum(1), labels))
    return images[order], labels[order]


@pytest.mark.parametrize("split", ["train", "public", "private"])
def test_folder_tree_splits_by_prefix(fer_tree, split):
    root, truth = fer_tree
    got = load_fer2013(root, split)
    assert got.images.dtype == np.uint8 and got.images.shape[1:] == (48, 48)
    assert got.labels.dtype == np.int64
    want_images, want_labels = truth[split]
    a = _sorted_pairs(got.images, got.labels)
    b = _sorted_pairs(want_images, want_labels)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])  # PNG is lossless


def test_csv_round_trip(tmp_path, cache_dir):
    splits = {"Training": synthetic_faces(14, 1), "PublicTest": synthetic_faces(7, 2), "PrivateTest": synthetic_faces(7, 3)}
    path = write_csv(tmp_path / "fer2013.csv", splits)
    for usage, split in (("Training", "train"), ("PublicTest", "public"), ("PrivateTest", "private")):
        got = load_fer2013(path, split)
        np.testing.assert_array_equal(got.images, splits[usage][0])
        np.testing.assert_array_equal(got.labels, splits[usage][1])
    # A folder holding fer2013.csv is read the same way.
    np.testing.assert_array_equal(load_fer2013(tmp_path, "public").labels, splits["PublicTest"][1])


def test_plain_train_val_test_layout(tmp_path, cache_dir):
    data = {"train": synthetic_faces(14, 1), "val": synthetic_faces(7, 2), "test": synthetic_faces(7, 3)}
    write_folders(tmp_path, {(k, "img"): v for k, v in data.items()})
    assert len(load_fer2013(tmp_path, "public")) == 7
    np.testing.assert_array_equal(np.sort(load_fer2013(tmp_path, "private").labels), np.sort(data["test"][1]))


def test_numeric_class_folders_and_colour_images(tmp_path, cache_dir):
    import cv2

    d = tmp_path / "train" / "3"
    d.mkdir(parents=True)
    colour = np.zeros((96, 96, 3), np.uint8)
    colour[..., 2] = 200  # red in BGR
    cv2.imwrite(str(d / "a.png"), colour)
    got = load_fer2013(tmp_path, "train")
    assert got.images.shape == (1, 48, 48) and got.labels.tolist() == [3]
    assert abs(int(got.images[0, 10, 10]) - round(0.299 * 200)) <= 1


def test_second_load_hits_cache(fer_tree):
    root, _ = fer_tree
    first = load_fer2013(root, "train")
    cache_files = os.listdir(os.environ["FER_EDGE_CACHE"] + "/datasets")
    assert any(f.endswith(".npz") for f in cache_files)
    second = load_fer2013(root, "train")
    np.testing.assert_array_equal(first.images, second.images)
    # Changing a file invalidates the cache.
    victim = sorted((root / "train").rglob("*.png"))[0]
    import cv2

    cv2.imwrite(str(victim), np.full((48, 48), 7, np.uint8))
    os.utime(victim, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    third = load_fer2013(root, "train")
    assert (third.images == 7).all(axis=(1, 2)).sum() == 1


@pytest.mark.parametrize("line,message", [
    ("0,1 2 3,Training", "expected 2304 pixels"),
    ("9," + " ".join(["1"] * 2304) + ",Training", "outside 0..6"),
    ("x," + " ".join(["1"] * 2304) + ",Training", "not an integer"),
    ("1," + " ".join(["300"] * 2304) + ",Training", "0..255"),
    ("1," + " ".join(["1"] * 2304) + ",Validation", "unknown Usage"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, cache_dir, line, message):
    path = tmp_path / "fer2013.csv"
    good = "0," + " ".join(["5"] * 2304) + ",Training"
    path.write_text("emotion,pixels,Usage\n" + good + "\n" + line + "\n")
    with pytest.raises(DatasetError, match=rf"fer2013.csv:3: .*{message}"):
        load_fer2013(path, "train")


def test_csv_missing_column(tmp_path, cache_dir):
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,Usage\n0,Training\n")
    with pytest.raises(DatasetError, match="missing column 'pixels'"):
        load_fer2013(path, "train")


def test_unknown_class_folder(fer_tree):
    root, _ = fer_tree
    (root / "train" / "contempt").mkdir()
    with pytest.raises(DatasetError, match="unknown class folder 'contempt'"):
        load_fer2013(root, "train", cache=False)


def test_unreadable_image_names_file(fer_tree):
    root, _ = fer_tree
    bad = root / "train" / "happy" / "Training_broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match="Training_broken.jpg: unreadable image"):
        load_fer2013(root, "train")


def test_empty_split(tmp_path, cache_dir):
    write_folders(tmp_path, {("train", "Training_"): synthetic_faces(7, 1),
                             ("test", "PublicTest_"): synthetic_faces(7, 2)})
    with pytest.raises(DatasetError, match="split 'private' is empty"):
        load_fer2013(tmp_path, "private")


def test_missing_path_and_unknown_split(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_fer2013(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match="unknown split"):
        load_fer2013(tmp_path, "validation")


def test_real_fer2013_counts(real_data):
    train = load_fer2013(real_data, "train")
    public = load_fer2013(real_data, "public")
    assert train.class_counts().tolist() == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert public.class_counts().tolist() == [467, 56, 496, 895, 653, 415, 607]
    start = time.perf_counter()
    load_fer2013(real_data, "train")
    assert time.perf_counter() - start < 5  # loose bound: the cache, not a benchmark


@pytest.mark.parametrize("suffix", [".npz.xz", ".npz"])
def test_pack_round_trip_through_the_cli(fer_tree, tmp_path, suffix):
    from fer_edge import dataset_pack

    root, truth = fer_tree
    dest = tmp_path / f"fer{suffix}"
    assert dataset_pack.main([str(root), str(dest), "--splits", "train", "public"]) == 0
    for split in ("train", "public"):
        got, want = load_fer2013(dest, split), load_fer2013(root, split)
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.labels.dtype == np.int64 and got.sources[0] == f"{dest}[{split}:0]"
    assert sorted(os.listdir(tmp_path)) == sorted(["cache", "fer2013", dest.name])  # no temporary file left
    with pytest.raises(DatasetError, match=r"no 'private' split \(it holds: public, train\)"):
        load_fer2013(dest, "private")
    # A second load comes from the decoded-array cache, not from decompressing the whole pack again.
    cached = [f for f in os.listdir(tmp_path / "cache" / "datasets") if f.startswith("fer2013-train-")]
    assert len(cached) == 2  # the folder tree's and the pack's
    dest.write_bytes(b"")  # changed size and time: the stale cache must not answer
    with pytest.raises(DatasetError, match="not a readable FER2013 pack"):
        load_fer2013(dest, "train")


def test_pack_rejects_bad_arrays_and_files(tmp_path):
    from fer_edge.dataset_pack import write_pack

    images, labels = synthetic_faces(7, 1)
    with pytest.raises(DatasetError, match=r"labels must lie in 0\.\.6"):
        write_pack(tmp_path / "a.npz", {"train": (images, labels + 7)})
    with pytest.raises(DatasetError, match=r"must be uint8 \(N, 48, 48\)"):
        write_pack(tmp_path / "a.npz", {"train": (images[:, :40], labels)})
    with pytest.raises(DatasetError, match="ends in .npz or .npz.xz"):
        write_pack(tmp_path / "a.zip", {"train": (images, labels)})
    assert os.listdir(tmp_path) == []  # nothing half-written
    broken = tmp_path / "broken.npz.xz"
    broken.write_bytes(b"\xfd7zXZ\x00 truncated")
    with pytest.raises(DatasetError, match="broken.npz.xz: not a readable FER2013 pack"):
        load_fer2013(broken, "train")
