"""Ensembles: one ONNX graph whose output is the (weighted) mean of the members' probabilities."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export import ensemble as ens  # noqa: E402
from export import onnx_export  # noqa: E402
from export.evaluate import ort_session  # noqa: E402
from fer_edge.errors import ModelError  # noqa: E402
from fer_edge.metadata import from_onnx_proto  # noqa: E402

from test_export_support import tiny_metadata, tiny_model, write_checkpoint  # noqa: E402


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _member_probs(x, seeds):
    with torch.no_grad():
        return [_softmax(tiny_model(s)(torch.from_numpy(x)).double().numpy()) for s in seeds]


@pytest.mark.parametrize("weights", [None, [3.0, 1.0]])
def test_checkpoint_ensemble_equals_mean_of_members(tmp_path, weights):
    paths = [write_checkpoint(tmp_path / f"m{s}.pt", seed=s) for s in (0, 1)]
    proto, meta, parity = ens.export_checkpoint_ensemble(paths, weights)
    onnx_export.check_onnx(proto)
    assert max(parity.values()) < 1e-4
    assert meta.output == "probabilities" and proto.graph.output[0].name == "probabilities"
    x = onnx_export.random_faces(32, meta, seed=9)
    got = ort_session(proto).run(None, {"input": x})[0]
    w = np.array(weights or [1, 1], dtype=np.float64)
    w /= w.sum()
    expected = sum(wi * p for wi, p in zip(w, _member_probs(x, (0, 1))))
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(got.sum(1), 1, atol=1e-5)
    stored = from_onnx_proto(proto)
    assert stored.extra["ensemble"]["weights"] == pytest.approx(list(w))
    assert stored.architecture == "ensemble(vgg_tiny+vgg_tiny)"


def test_merged_onnx_members_equal_mean_of_members():
    meta = tiny_metadata()
    protos = [onnx_export.export_module(tiny_model(s), meta) for s in (0, 1, 2)]
    merged, mmeta = ens.merge_onnx(protos, [meta] * 3, ["a", "b", "c"], [1, 2, 1])
    onnx_export.check_onnx(merged)
    diffs = ens.compare_with_members(merged, protos, [meta] * 3, [1, 2, 1])
    assert set(diffs) == {1, 64} and max(diffs.values()) < 1e-5
    x = onnx_export.random_faces(16, meta, seed=2)
    got = ort_session(merged).run(None, {"input": x})[0]
    expected = sum(w * p for w, p in zip([0.25, 0.5, 0.25], _member_probs(x, (0, 1, 2))))
    assert np.abs(got - expected).max() < 1e-5
    assert mmeta.output == "probabilities" and mmeta.precision == "fp32"


def test_members_must_share_preprocessing():
    a, b = tiny_metadata(), tiny_metadata(std=0.25)
    protos = [onnx_export.export_module(tiny_model(0), a), onnx_export.export_module(tiny_model(1), b)]
    with pytest.raises(ModelError, match="disagree on std"):
        ens.merge_onnx(protos, [a, b], ["a", "b"])


def test_bad_weights_are_refused():
    with pytest.raises(ModelError, match="weights"):
        ens.normalized_weights([1.0, -1.0], 2)
    with pytest.raises(ModelError, match="weights"):
        ens.normalized_weights([1.0], 2)


def test_ensemble_recommends_its_members_common_tta():
    # The runtime applies the recommended TTA; members selected with flip must run with flip as an ensemble.
    flip, tencrop = tiny_metadata(extra={"tta": "flip"}), tiny_metadata(extra={"tta": "tencrop"})
    unset = tiny_metadata()
    assert ens.ensemble_metadata([flip, flip], ["a", "b"], [0.5, 0.5]).extra["tta"] == "flip"
    assert "tta" not in ens.ensemble_metadata([flip, tencrop], ["a", "b"], [0.5, 0.5]).extra
    assert "tta" not in ens.ensemble_metadata([flip, unset], ["a", "b"], [0.5, 0.5]).extra
