import json

import numpy as np
import pytest

from fer_edge import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 500
    y = rng.integers(0, 7, n)
    scores = rng.normal(size=(n, 7))
    scores[np.arange(n), y] += rng.normal(1.0, 1.0, n)  # better than chance, not perfect
    report = metrics.evaluate(y, scores)
    pred = scores.argmax(1)
    assert report["top1"] == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    for k in (2, 3):
        assert report[f"top{k}"] == pytest.approx(sklearn_metrics.top_k_accuracy_score(y, scores, k=k, labels=range(7)))
    assert report["weighted_accuracy"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(y, pred))
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(y, pred, labels=range(7), zero_division=0)
    np.testing.assert_allclose([c["precision"] for c in report["per_class"]], p)
    np.testing.assert_allclose([c["recall"] for c in report["per_class"]], r)
    np.testing.assert_allclose([c["f1"] for c in report["per_class"]], f)
    assert [c["support"] for c in report["per_class"]] == s.tolist()
    np.testing.assert_array_equal(report["confusion_matrix"], sklearn_metrics.confusion_matrix(y, pred, labels=range(7)))


def test_class_never_predicted_and_absent_class():
    y = np.array([0, 0, 1, 1])
    scores = np.eye(7)[[0, 0, 0, 1]]
    report = metrics.evaluate(y, scores)
    assert report["weighted_accuracy"] == pytest.approx((1.0 + 0.5) / 2)  # only classes present count
    assert report["per_class"][2] == {"class": "fear", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_text_json_and_png(tmp_path):
    rng = np.random.default_rng(0)
    report = metrics.evaluate(rng.integers(0, 7, 50), rng.normal(size=(50, 7)))
    text = metrics.format_report(report)
    assert "weighted accuracy" in text and "surprise" in text and "confusion matrix" in text
    assert json.loads(metrics.to_json(report, tmp_path / "r.json")) == json.loads((tmp_path / "r.json").read_text())
    pytest.importorskip("matplotlib")
    metrics.plot_confusion(report, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", [np.zeros((3, 1)), np.zeros(3), np.full((3, 7), np.nan)])
def test_bad_scores(bad):
    with pytest.raises(ValueError):
        metrics.evaluate([0, 1, 2], bad)


def test_label_out_of_range():
    with pytest.raises(ValueError, match="0..6"):
        metrics.evaluate([0, 7], np.zeros((2, 7)))
