import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import balance  # noqa: E402
from training.augment import augment_batch, tta_views  # noqa: E402
from training.engine import (  # noqa: E402
    TrainConfig, build_optimizer, classification_loss, load_checkpoint, model_from_checkpoint, predict_logits, train,
    training_step)
from training.ensemble import Ensemble, combine, fit_weights  # noqa: E402
from training.models import count_macs, count_parameters, create_model, list_models  # noqa: E402
from tests.conftest import synthetic_faces, write_folders  # noqa: E402


def _cfg(root, out, **kw):
    base = dict(model="vgg_tiny", data=str(root), out=str(out), epochs=2, batch_size=16, lr=0.05,
                schedule="cosine", warmup_epochs=0.5, progress=False, threads=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _plain_step_setup(name, data_seed):
    """(cfg, model, optimizer, faces, labels) for comparing losses across training steps: float32, no
    label smoothing, dropout off, a fixed small rate, 16 synthetic faces."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, amp=False, lr=0.01, label_smoothing=0.0)
    model = create_model(name).train()
    for m in model.modules():  # dropout would make losses of successive steps incomparable
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    opt, _ = build_optimizer(cfg, model, steps_per_epoch=1)
    opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = 0.01
    faces, labels = synthetic_faces(16, data_seed)
    return cfg, model, opt, torch.from_numpy(faces).unsqueeze(1), torch.from_numpy(labels)


def _import_tool(folder, module):
    """Import a script that lives in the repository's benchmarks/ or scripts/ folder, not in a package."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.pop(0)


@pytest.fixture
def small_tree(tmp_path, cache_dir):
    root = tmp_path / "data"
    write_folders(root, {("train", "Training_"): synthetic_faces(112, 1),
                         ("test", "PublicTest_"): synthetic_faces(35, 2)})
    return root


def test_train_help_names_every_registered_model():
    from training.cli import MODEL_NAMES, build_parser
    assert MODEL_NAMES == tuple(list_models())
    help_text = " ".join(build_parser().format_help().split())  # argparse wraps lines
    assert "registered model name: " + ", ".join(list_models()) in help_text


def test_class_weights_scale_faces_but_leave_the_smoothed_target_uniform():
    torch.manual_seed(0)
    logits, labels = torch.randn(32, 7), torch.randint(0, 7, (32,))
    weights = torch.tensor(balance.class_weights(np.array([0] * 40 + [1] * 4 + list(range(2, 7)) * 60), 7))
    log_p = logits.log_softmax(1)
    target = torch.nn.functional.one_hot(labels, 7) * 0.9 + 0.1 / 7
    expected = (weights[labels] * -(target * log_p).sum(1)).sum() / weights[labels].sum()
    assert torch.allclose(classification_loss(logits, labels, weights, 0.1), expected)
    # One class in the batch: its weight cancels, so the loss is the unweighted one. torch's own
    # cross_entropy(weight=, label_smoothing=) fails this (it weights the smoothing term per class).
    same = torch.full((32,), 2)
    assert torch.allclose(classification_loss(logits, same, weights, 0.1), classification_loss(logits, same, None, 0.1))
    assert torch.allclose(classification_loss(logits, labels, None, 0.1),
                          torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))


def test_registry_and_budgets():
    assert {"vgg_paper", "vgg_edge", "vgg_half", "resnet_edge", "vgg_tiny"} <= set(list_models())
    with pytest.raises(ValueError, match="known models: .*vgg_edge"):
        create_model("resnet9000")
    edge = create_model("vgg_edge")
    assert count_parameters(edge) <= 5_000_000 and 2 * count_macs(edge) <= 150_000_000
    paper = create_model("vgg_paper")
    convs = [m for m in paper.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    linears = [m for m in paper.classifier if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 4096), (4096, 4096), (4096, 7)]
    assert paper(torch.zeros(2, 1, 40, 40)).shape == (2, 7)


def test_resnet_edge_shapes_and_learning():
    model = create_model("resnet_edge").eval()
    # The docstring's figures: an ensemble member, not held to vgg_edge's 150 MFLOPs budget.
    assert round(count_parameters(model) / 1e6, 2) == 1.21 and round(count_macs(model) / 1e6, 1) == 83.7
    assert model(torch.zeros(3, 1, 40, 40)).shape == (3, 7)
    # Strided blocks halve the side and a projection shortcut meets the new width; both paths carry signal.
    block = model.features[4]
    x = torch.randn(2, block.body[0].in_channels, 10, 10)
    with torch.no_grad():
        out, branch, skip = block(x), block.body(x), block.shortcut(x)
    assert out.shape == (2, 64, 5, 5) and branch.abs().sum() > 0 and skip.abs().sum() > 0
    # The residual net learns under the same training step as the VGGs.
    cfg, model, opt, faces, labels = _plain_step_setup("resnet_edge", 5)
    first, _ = training_step(model, opt, faces, labels, cfg, 40)
    for _ in range(3):
        last, _ = training_step(model, opt, faces, labels, cfg, 40)
    assert last.item() < first.item()


def test_augment_shapes_and_determinism():
    x = torch.from_numpy(synthetic_faces(8)[0]).unsqueeze(1)
    a = augment_batch(x, 40, 0.5, 0.5, generator=torch.Generator().manual_seed(0))
    b = augment_batch(x, 40, 0.5, 0.5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (8, 1, 40, 40) and torch.equal(a, b)
    views = tta_views(x, 40, 0.5, 0.5, "tencrop")
    assert views.shape == (10, 8, 1, 40, 40)
    assert torch.equal(views[4], tta_views(x, 40, 0.5, 0.5, "none")[0])
    assert torch.equal(views[9], views[4].flip(-1))


def test_loss_falls_and_files_written(small_tree, tmp_path):
    history = train(_cfg(small_tree, tmp_path / "run", epochs=4, lr=0.02))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("last.pt", "best.pt", "metrics.csv", "metrics.json", "train.log", "config.json"):
        assert (tmp_path / "run" / name).is_file(), name
    best = load_checkpoint(str(tmp_path / "run" / "best.pt"))
    assert best["metadata"]["metrics"]["split"] == "public"


def test_training_step_descends_and_benchmark_times_it():
    cfg, model, opt, faces, labels = _plain_step_setup("vgg_tiny", 4)
    size = model.default_cfg["input_size"]
    # Without augmentation the same batch is seen twice, so a gradient step at a small rate lowers its loss.
    first, logits = training_step(model, opt, faces, labels, cfg, size)
    assert logits.dtype == torch.float32 and logits.shape == (16, 7)
    second, _ = training_step(model, opt, faces, labels, cfg, size)
    assert second.item() < first.item()
    training_throughput = _import_tool("benchmarks", "training_throughput")
    rate = training_throughput.measure("vgg_tiny", True, batch=8, steps=1, warmup=0)
    assert np.isfinite(rate) and rate > 0


def test_resume_is_exact(small_tree, tmp_path):
    full = train(_cfg(small_tree, tmp_path / "full", epochs=3))
    train(_cfg(small_tree, tmp_path / "part", epochs=3), stop_after=2)
    resumed = train(_cfg(small_tree, tmp_path / "part", epochs=3), resume=True)
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    a = load_checkpoint(str(tmp_path / "full" / "last.pt"))["model_state"]
    b = load_checkpoint(str(tmp_path / "part" / "last.pt"))["model_state"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_cannot_stretch_a_cosine_schedule(small_tree, tmp_path):
    train(_cfg(small_tree, tmp_path / "run", epochs=2), stop_after=1)
    with pytest.raises(ValueError, match="fixed to 2 epochs"):
        train(_cfg(small_tree, tmp_path / "run"), resume=True, epochs=5)


@pytest.mark.parametrize("strategy", ["ros", "smote", "smote-tomek", "smote-enn"])
def test_resamplers_promise_their_counts(strategy, tmp_path):
    pytest.importorskip("imblearn")
    rng = np.random.default_rng(0)
    counts = [30, 6, 12, 40, 20, 10, 25]
    labels = np.repeat(np.arange(7), counts)
    images = rng.integers(0, 255, (len(labels), 8, 8)).astype(np.uint8)
    images += (labels * 30).astype(np.uint8)[:, None, None] // 2
    new_images, new_labels = balance.resample(images, labels, strategy, seed=0, cache_dir=str(tmp_path))
    got = np.bincount(new_labels, minlength=7)
    assert new_images.dtype == np.uint8 and new_images.shape[1:] == (8, 8)
    if strategy in ("ros", "smote"):
        assert got.tolist() == [40] * 7
    else:  # SMOTE to 40 per class, then a cleaning step that only removes samples
        assert (got <= 40).all()
        assert got[1] > counts[1] and got[5] > counts[5]  # minority classes were oversampled
    again = balance.resample(images, labels, strategy, seed=0, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again[1], new_labels)  # seeded and cached


def test_class_weights_and_sampler_balance_classes():
    labels = np.repeat(np.arange(7), [70, 7, 14, 140, 35, 21, 28])
    w = balance.class_weights(labels, 7)
    per_class_mass = np.bincount(labels, weights=w[labels], minlength=7)
    np.testing.assert_allclose(per_class_mass, per_class_mass[0])
    draws = np.random.default_rng(0).choice(len(labels), 70000, p=balance.sample_weights(labels, 7))
    share = np.bincount(labels[draws], minlength=7) / 70000
    np.testing.assert_allclose(share, 1 / 7, atol=0.01)


def test_ensemble_of_two_is_mean_of_members():
    torch.manual_seed(0)
    a, b = create_model("vgg_tiny").eval(), create_model("vgg_tiny").eval()
    x = torch.randn(5, 1, 40, 40)
    with torch.no_grad():
        ens = Ensemble([a, b]).eval()(x)
        mean = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    torch.testing.assert_close(ens, mean)
    np.testing.assert_allclose(combine([torch.softmax(a(x), 1).detach().numpy(), torch.softmax(b(x), 1).detach().numpy()]),
                               mean.numpy(), rtol=1e-5)


def test_fit_weights_prefers_the_better_member():
    y = np.arange(200) % 7
    good = np.eye(7)[y] * 4.0
    bad = np.random.default_rng(0).normal(size=(200, 7))
    w = fit_weights([bad, good], y)
    assert w[1] > 0.9 and w.sum() == pytest.approx(1.0)


def test_predict_logits_tta_and_checkpoint_model(small_tree, tmp_path):
    train(_cfg(small_tree, tmp_path / "run", epochs=1))
    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "run" / "best.pt")))
    images = synthetic_faces(6)[0]
    for mode in ("none", "flip", "tencrop"):
        assert predict_logits(model, images, mode).shape == (6, 7)


def test_cli_one_epoch(small_tree, tmp_path):
    from training.cli import main

    rc = main(["--model", "vgg_tiny", "--data", str(small_tree), "--epochs", "1", "--out", str(tmp_path / "cli"),
               "--batch-size", "16", "--no-progress", "--threads", "1"])
    assert rc == 0
    rows = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert len(rows) == 1 and 0 <= rows[0]["public_top1"] <= 1


@pytest.mark.slow
def test_torchrun_ddp_gloo_two_processes(small_tree, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "training.cli", "--model", "vgg_tiny", "--data", str(small_tree), "--epochs", "2", "--out", str(out),
           "--batch-size", "16", "--no-progress", "--threads", "1", "--device", "cpu"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 2
    assert "world 2" in (out / "train.log").read_text()


def test_teacher_scores_are_read_as_logits_and_bad_files_named(tmp_path):
    from training.distill import load_teacher_logits

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.save(tmp_path / "probs.npy", probs)  # what fer-eval --save-scores writes
    np.save(tmp_path / "logits.npy", logits)
    got = load_teacher_logits(str(tmp_path / "probs.npy"), 5, 7)
    # Log-probabilities are the logits up to a per-row constant, which softmax ignores.
    np.testing.assert_allclose(got - got.mean(1, keepdims=True), logits - logits.mean(1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(load_teacher_logits(str(tmp_path / "logits.npy"), 5, 7), logits)
    with pytest.raises(ValueError, match=r"probs\.npy: teacher scores of shape \(5, 7\), expected \(6, 7\)"):
        load_teacher_logits(str(tmp_path / "probs.npy"), 6, 7)
    logits[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", logits)
    with pytest.raises(ValueError, match=r"nan\.npy: teacher scores contain NaN"):
        load_teacher_logits(str(tmp_path / "nan.npy"), 5, 7)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"junk\.npy: cannot read teacher scores"):
        load_teacher_logits(str(tmp_path / "junk.npy"), 5, 7)


def test_distillation_pulls_the_student_towards_the_teacher():
    cfg, model, opt, faces, labels = _plain_step_setup("vgg_tiny", 6)
    cfg.distill_alpha = 1.0  # the teacher's term alone
    size = model.default_cfg["input_size"]
    # A teacher that disagrees with every label: pure distillation must follow it, not the labels.
    teacher_class = (labels + 1) % 7
    teacher = torch.full((16, 7), -3.0)
    teacher[torch.arange(16), teacher_class] = 3.0

    def mean_mass(classes):
        # Batch statistics (train mode): five steps leave BN's running averages far from them.
        with torch.no_grad():
            x = tta_views(faces, size, cfg.mean, cfg.std, "none")[0]
            return torch.softmax(model(x), 1)[torch.arange(16), classes].mean().item()

    before = mean_mass(teacher_class)
    for _ in range(5):
        training_step(model, opt, faces, labels, cfg, size, teacher_logits=teacher)
    assert mean_mass(teacher_class) > before + 0.3 and mean_mass(teacher_class) > 2 * mean_mass(labels)


def test_training_reads_fer_eval_scores_as_teacher(small_tree, tmp_path):
    probs = np.full((112, 7), 1 / 7, dtype=np.float32)  # the 112 training faces of small_tree
    np.save(tmp_path / "teacher.npy", probs)
    history = train(_cfg(small_tree, tmp_path / "run", epochs=1, distill=str(tmp_path / "teacher.npy")))
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    np.save(tmp_path / "short.npy", probs[:100])
    with pytest.raises(ValueError, match=r"short\.npy: teacher scores of shape \(100, 7\)"):
        train(_cfg(small_tree, tmp_path / "run2", epochs=1, distill=str(tmp_path / "short.npy")))


def test_diversity_counts_disagreements_and_ranks_subsets():
    from training.diversity import disagreement, subset_accuracies

    labels = np.array([0, 1, 2, 3])
    # a and b are each right on 3 of 4 faces and disagree on the last two, where the right one is surer.
    a = np.eye(7)[[0, 1, 2, 0]] * np.array([0.9, 0.9, 0.9, 0.8])[:, None]
    b = np.eye(7)[[0, 1, 5, 3]] * np.array([0.9, 0.9, 0.8, 0.9])[:, None]
    c = np.eye(7)[[6, 6, 6, 6]]  # always wrong, and surer than either
    assert disagreement(a, b, labels) == (0.5, 0.5, 0.5)
    assert disagreement(a, a, labels) == (0.0, 0.0, 0.0)
    assert subset_accuracies({"a": a, "b": b, "c": c}, labels) == [
        (1.0, ("a", "b")), (0.5, ("a", "b", "c")), (0.0, ("a", "c")), (0.0, ("b", "c"))]


def test_ensemble_diversity_script_reads_saved_scores(fer_tree, tmp_path, capsys):
    ensemble_diversity = _import_tool("scripts", "ensemble_diversity")
    root, _ = fer_tree
    from fer_edge.datasets import load_fer2013

    labels = load_fer2013(str(root), "public").labels  # the loader's order, as fer-eval saves scores
    right, wrong = np.eye(7)[labels], np.eye(7)[(labels + 1) % 7]
    np.save(tmp_path / "right.npy", right)
    np.save(tmp_path / "wrong.npy", wrong)
    assert ensemble_diversity.main(["--data", str(root), str(tmp_path / "right.npy"), str(tmp_path / "wrong.npy")]) == 0
    out = capsys.readouterr().out
    assert "right: top-1 100.00%" in out and "wrong: top-1 0.00%" in out
    assert "disagrees with right on 100.0% of faces, where right is right 100% and wrong 0%" in out
    np.save(tmp_path / "short.npy", right[:5])
    with pytest.raises(SystemExit, match=r"short\.npy: scores of shape \(5, 7\), expected \(21, 7\)"):
        ensemble_diversity.main(["--data", str(root), str(tmp_path / "right.npy"), str(tmp_path / "short.npy")])
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(SystemExit, match=r"junk\.npy: cannot read scores"):
        ensemble_diversity.main(["--data", str(root), str(tmp_path / "right.npy"), str(tmp_path / "junk.npy")])
    # Two members saved under the same file name in different runs are kept apart.
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "b" / "right.npy", wrong)
    ensemble_diversity.main(["--data", str(root), str(tmp_path / "right.npy"), str(tmp_path / "b" / "right.npy")])
    assert f"{tmp_path / 'b' / 'right.npy'}: top-1 0.00%" in capsys.readouterr().out


def _balance_run(folder, strategy, resampled=None):
    """A finished balance run's folder as scripts/train_models.sh leaves it (2 epochs, the second best)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"balance": strategy, "epochs": 2}))
    log = ["model vgg_edge: 1.69 M parameters, 73.7 M MACs per face; 28709 training images; device cpu"]
    if resampled:
        log.insert(0, f"balance {strategy}: 28709 -> {resampled} images in 12.6s, counts [1, 2]")
        log[1] = log[1].replace("28709", str(resampled))
    (folder / "train.log").write_text("\n".join(log) + "\n")
    (folder / "metrics.json").write_text(json.dumps([{"epoch": 0, "public_top1": 0.4},
                                                    {"epoch": 1, "public_top1": 0.5}]))
    (folder / "eval.json").write_text(json.dumps({"top1": 0.5012, "weighted_accuracy": 0.4567}))
    (folder / "resources.txt").write_text(f"{strategy}: 321.4 s wall, 2097152 KB max RSS\n")


def test_balance_table_reads_each_run_folder(tmp_path):
    balance_table = _import_tool("scripts", "balance_table")
    _balance_run(tmp_path / "b_ros", "ros", resampled=50505)
    _balance_run(tmp_path / "b_none", "none")
    row = balance_table.summarise_run(str(tmp_path / "b_ros"))
    assert row == {"strategy": "ros", "epochs": 2, "images": 50505, "top1": 0.5012, "weighted": 0.4567,
                   "best_epoch": 2, "wall_s": 321.4, "peak_gb": 2.0, "resample_s": 12.6}
    assert balance_table.summarise_run(str(tmp_path / "b_none"))["resample_s"] is None
    table = balance_table.markdown_table([row, balance_table.summarise_run(str(tmp_path / "b_none"))])
    lines = table.splitlines()
    assert "wall time, 2 epochs" in lines[0]
    assert lines[2].startswith("| `none` | 28,709 | 50.12% | 45.67% | 2 | 321 s | - | 2.00 GiB |")  # STRATEGIES order
    assert lines[3] == "| `ros` | 50,505 | 50.12% | 45.67% | 2 | 321 s | 13 s | 2.00 GiB |"


def test_balance_table_names_what_is_missing(tmp_path, capsys):
    balance_table = _import_tool("scripts", "balance_table")
    from fer_edge.cli_common import run_main
    _balance_run(tmp_path / "b_smote", "smote", resampled=50505)
    (tmp_path / "b_smote" / "eval.json").unlink()
    assert run_main("balance_table", lambda: balance_table.main([str(tmp_path / "b_smote")])) == 2
    assert "b_smote/eval.json" in capsys.readouterr().err
    (tmp_path / "b_smote" / "eval.json").write_text("{}")
    (tmp_path / "b_smote" / "resources.txt").write_text("killed\n")
    assert run_main("balance_table", lambda: balance_table.main([str(tmp_path / "b_smote")])) == 2
    assert "resources.txt: no line matching" in capsys.readouterr().err
    _balance_run(tmp_path / "b_enn", "smote-enn", resampled=26331)
    (tmp_path / "b_enn" / "eval.json").write_text("{}")
    assert run_main("balance_table", lambda: balance_table.main([str(tmp_path / "b_enn")])) == 2
    assert "b_enn: config.json, metrics.json or eval.json lacks 'top1'" in capsys.readouterr().err
