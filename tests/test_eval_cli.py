"""fer-eval on synthetic data: the ONNX path (through the runtime) agrees with the checkpoint path."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from training.cli import main as train_main  # noqa: E402
from training.eval_cli import main as eval_main  # noqa: E402
from training.onnx_io import export_checkpoint  # noqa: E402
from tests.conftest import synthetic_faces, write_folders  # noqa: E402


@pytest.fixture
def trained(tmp_path, cache_dir):
    root = tmp_path / "data"
    write_folders(root, {("train", "Training_"): synthetic_faces(140, 1),
                         ("test", "PublicTest_"): synthetic_faces(49, 2)})
    out = tmp_path / "run"
    assert train_main(["--model", "vgg_tiny", "--data", str(root), "--epochs", "3", "--out", str(out),
                       "--batch-size", "16", "--no-progress", "--threads", "1", "--lr", "0.02"]) == 0
    onnx_path = tmp_path / "tiny.onnx"
    export_checkpoint(str(out / "best.pt"), str(onnx_path))
    return root, out / "best.pt", onnx_path


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
def test_onnx_and_checkpoint_agree(trained, tmp_path, tta, capsys):
    root, ckpt, onnx_path = trained
    reports = {}
    for name, model in (("onnx", onnx_path), ("ckpt", ckpt)):
        out = tmp_path / f"{name}.json"
        scores = tmp_path / f"{name}.npy"
        assert eval_main([str(model), "--data", str(root), "--tta", tta, "--json", str(out),
                          "--save-scores", str(scores), "--no-progress"]) == 0
        reports[name] = (json.loads(out.read_text()), np.load(scores))
    (a, pa), (b, pb) = reports["onnx"], reports["ckpt"]
    np.testing.assert_allclose(pa, pb, atol=1e-4)
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["tta"] == tta
    text = capsys.readouterr().out
    for needle in ("top-1", "top-2", "top-3", "weighted accuracy", "confusion matrix", "neutral"):
        assert needle in text


def test_ensemble_and_plot(trained, tmp_path, capsys):
    root, ckpt, onnx_path = trained
    pytest.importorskip("matplotlib")
    out = tmp_path / "ens.json"
    assert eval_main([str(onnx_path), str(ckpt), "--data", str(root), "--tta", "none", "--json", str(out),
                      "--plot", str(tmp_path / "cm.png"), "--no-progress", "--fit-weights"]) == 0
    report = json.loads(out.read_text())
    assert len(report["members"]) == 2 and report["weights_fit_on_split"]
    assert abs(sum(report["weights"]) - 1) < 1e-6
    assert (tmp_path / "cm.png").stat().st_size > 0
    assert "member" in capsys.readouterr().out


def test_bad_inputs_one_line(trained, tmp_path, capsys):
    root, _, onnx_path = trained
    assert eval_main([str(tmp_path / "missing.onnx"), "--data", str(root)]) == 2
    assert "no such model file" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    assert eval_main([str(junk), "--data", str(root), "--no-progress"]) == 2
    assert eval_main([str(onnx_path), "--data", str(root), "--split", "private", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "junk.onnx" in err and "split 'private' is empty" in err and "Traceback" not in err
