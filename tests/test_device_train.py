"""The path to a lent GPU and back: FER2013 as a pack, a time-boxed run, the best epoch in float16 parts."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fer_edge.dataset_pack import write_pack  # noqa: E402
from fer_edge.errors import ModelError  # noqa: E402
from training.checkpoint_parts import join_parts, main as parts_main, write_parts  # noqa: E402
from training.engine import TrainConfig, load_checkpoint, model_from_checkpoint, train  # noqa: E402
from tests.conftest import synthetic_faces  # noqa: E402
from tests.test_training import _import_tool  # noqa: E402


@pytest.fixture
def pack(tmp_path, cache_dir):
    path = tmp_path / "fer.npz.xz"
    write_pack(path, {"train": synthetic_faces(96, 1), "public": synthetic_faces(28, 2)})
    return path


@pytest.fixture
def trained(pack, tmp_path):
    cfg = TrainConfig(model="vgg_tiny", data=str(pack), out=str(tmp_path / "run"), epochs=2, batch_size=16,
                      progress=False, threads=1)
    seen = []
    history = train(cfg, after_epoch=seen.append)
    assert seen == history  # the hook sees every epoch's row, after its checkpoint
    return tmp_path / "run" / "best.pt"


def test_parts_join_to_the_same_model_within_float16(trained, tmp_path):
    manifest = write_parts(trained, tmp_path / "parts", part_bytes=20_000)
    listed = json.loads(open(manifest).read())
    assert len(listed["parts"]) > 1
    assert all(os.path.getsize(tmp_path / "parts" / p) <= 20_000 for p in listed["parts"])
    joined = join_parts(manifest, tmp_path / "back" / "best.pt")
    original = load_checkpoint(trained)
    for name, tensor in original["model_state"].items():
        got = joined["model_state"][name]
        assert got.dtype == tensor.dtype
        torch.testing.assert_close(got, tensor.to(torch.float16).to(tensor.dtype), rtol=0, atol=0)
    faces = torch.from_numpy(synthetic_faces(8, 5)[0]).float().div(255).sub(0.5).div(0.5).unsqueeze(1)[..., 4:44, 4:44]
    a = model_from_checkpoint(original)(faces)
    b = model_from_checkpoint(load_checkpoint(tmp_path / "back" / "best.pt"))(faces)
    torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
    assert joined["metadata"]["extra"]["weights_carried_as"] == "float16"


def test_damaged_or_missing_parts_are_named(trained, tmp_path, capsys):
    manifest = write_parts(trained, tmp_path / "parts", part_bytes=20_000)
    first = tmp_path / "parts" / "best.part00"
    first.write_bytes(first.read_bytes()[:-1] + b"x")
    with pytest.raises(ModelError, match="SHA-256 does not match"):
        join_parts(manifest, tmp_path / "back.pt")
    first.unlink()
    listed = json.loads(open(manifest).read())
    for broken, message in (({**listed, "parts": ["../best.part01"]}, "not paths"),
                            ({k: v for k, v in listed.items() if k != "sha256"}, "lacks sha256")):
        bad = tmp_path / "parts" / "bad.parts.json"
        bad.write_text(json.dumps(broken))
        with pytest.raises(ModelError, match=message):
            join_parts(bad, tmp_path / "back.pt")
    assert parts_main(["join", manifest, str(tmp_path / "back.pt")]) == 2
    assert "best.part00: part missing" in capsys.readouterr().err
    assert not (tmp_path / "back.pt").exists()


def test_plan_epochs_fits_the_budget():
    device_train = _import_tool("scripts", "device_train")
    assert device_train.plan_epochs(111.0, 1.0, 300) == 100  # 10% kept for slower epochs
    assert device_train.plan_epochs(1e6, 1.0, 300) == 300
    assert device_train.plan_epochs(-5.0, 1.0, 300) == 0
    with pytest.raises(ValueError):
        device_train.plan_epochs(10.0, 0.0, 300)


def test_device_train_probes_plans_and_writes_returnable_parts(pack, tmp_path, capsys):
    device_train = _import_tool("scripts", "device_train")
    out = tmp_path / "out"
    assert device_train.main(["--data", str(pack), "--out", str(out), "--budget-s", "600", "--max-epochs", "3",
                              "--probe-epochs", "2", "--reserve-s", "1", "--work", str(tmp_path / "work"),
                              "--", "--model", "vgg_tiny", "--batch-size", "16", "--threads", "1"]) == 0
    files = sorted(os.listdir(out))
    assert files == ["best.part00", "best.parts.json", "device_run.json", "train.log"]
    summary = json.loads((out / "device_run.json").read_text())
    assert summary["plan"]["epochs"] == 3 == len(summary["history"]) == summary["config"]["epochs"]
    assert summary["plan"]["epoch_seconds_probe"] > 0
    joined = join_parts(out / "best.parts.json", tmp_path / "best.pt")
    assert joined["model_name"] == "vgg_tiny" and joined["epoch"] + 1 == summary["best_epoch"]
    assert os.listdir(tmp_path / "work") == []  # checkpoints gone; a folder it was given stays
    assert "device_train: 3 epochs" in capsys.readouterr().out


def test_device_train_refuses_a_budget_without_one_whole_epoch(pack, tmp_path):
    device_train = _import_tool("scripts", "device_train")
    with pytest.raises(SystemExit, match="no whole epoch fits"):
        device_train.main(["--data", str(pack), "--out", str(tmp_path / "out"), "--budget-s", "1",
                           "--probe-epochs", "2", "--work", str(tmp_path / "work"),
                           "--", "--model", "vgg_tiny", "--batch-size", "16", "--threads", "1"])
    assert not os.listdir(tmp_path / "out") and os.listdir(tmp_path / "work") == []


def test_training_reads_a_pack_like_the_folders(pack):
    from fer_edge.datasets import load_fer2013

    train_split = load_fer2013(pack, "train")
    assert train_split.images.shape == (96, 48, 48)
    np.testing.assert_array_equal(train_split.labels, synthetic_faces(96, 1)[1])
