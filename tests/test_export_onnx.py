"""FP32 ONNX export: checker, self-contained file, dynamic batch, parity with PyTorch, metadata, FP16."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export import fp16 as fp16_mod  # noqa: E402
from export import onnx_export  # noqa: E402
from export.evaluate import ort_session, run_batches  # noqa: E402
from fer_edge.errors import ModelError  # noqa: E402
from fer_edge.metadata import from_custom_map, from_onnx_proto  # noqa: E402

from test_export_support import tiny_metadata, tiny_model, write_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def exported():
    model, meta = tiny_model(), tiny_metadata()
    return model, meta, onnx_export.export_module(model, meta)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_matches_pytorch(exported, batch):
    model, meta, proto = exported
    x = onnx_export.random_faces(batch, meta, seed=batch)
    got = ort_session(proto).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == (batch, 7)
    assert np.abs(got - ref).max() < 1e-4


def test_residual_model_exports_with_parity():
    model = tiny_model(seed=1, name="resnet_edge")  # non-trivial BN, so branches and shortcuts both count
    meta = tiny_metadata(architecture="resnet_edge")
    proto = onnx_export.export_module(model, meta)
    assert max(onnx_export.compare_with_torch(proto, model, meta).values()) < 1e-4
    assert any(node.op_type == "Add" for node in proto.graph.node)  # the skip connections survived


def test_parity_check_reports_batch_1_and_64(exported):
    model, meta, proto = exported
    diffs = onnx_export.compare_with_torch(proto, model, meta)
    assert set(diffs) == {1, 64} and max(diffs.values()) < 1e-4


def test_parity_check_catches_a_different_network(exported):
    _, meta, proto = exported
    with pytest.raises(ModelError, match="differs from PyTorch"):
        onnx_export.compare_with_torch(proto, tiny_model(seed=5), meta)


def test_file_is_checked_self_contained_and_batch_dynamic(exported, tmp_path):
    _, meta, proto = exported
    data = onnx_export.check_onnx(proto)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    assert os.listdir(tmp_path) == ["m.onnx"]
    loaded = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    onnx.checker.check_model(loaded, full_check=True)
    for value in list(loaded.graph.input) + list(loaded.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    # BatchNorm was folded into the convolutions.
    assert "BatchNormalization" not in {n.op_type for n in loaded.graph.node}


def test_fixed_batch_axis_is_refused(exported):
    _, _, proto = exported
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(ModelError, match="dynamic batch"):
        onnx_export.check_onnx(fixed)


def test_metadata_round_trips_through_the_file_and_onnxruntime(exported):
    _, meta, proto = exported
    assert from_onnx_proto(proto) == meta
    session = ort_session(proto)
    assert from_custom_map(session.get_modelmeta().custom_metadata_map) == meta


def test_checkpoint_export_writes_a_checked_file(tmp_path):
    ckpt = write_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "model.onnx"
    onnx_export.export_checkpoint(ckpt, out)
    meta = from_onnx_proto(onnx.load(str(out)))
    assert meta.precision == "fp32" and meta.architecture == "vgg_tiny"
    parity = meta.extra["export"]["ort_vs_torch_max_abs"]
    assert set(parity) == {"1", "64"} and max(parity.values()) < 1e-4


def test_training_onnx_io_still_exports(tmp_path):
    from training.onnx_io import export_checkpoint, export_module

    ckpt = write_checkpoint(tmp_path / "best.pt")
    data = export_checkpoint(ckpt, tmp_path / "a.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == data
    export_module(tiny_model(), tiny_metadata(), str(tmp_path / "b.onnx"))
    assert from_onnx_proto(onnx.load(str(tmp_path / "b.onnx"))).architecture == "vgg_tiny"


def test_load_onnx_requires_metadata(exported, tmp_path):
    _, _, proto = exported
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.metadata_props[:]
    path = tmp_path / "bare.onnx"
    path.write_bytes(bare.SerializeToString())
    with pytest.raises(ModelError, match="no fer_edge metadata"):
        onnx_export.load_onnx(str(path))


def test_fp16_has_float32_io_and_agrees_with_fp32(exported):
    _, meta, proto = exported
    p16 = fp16_mod.to_fp16(proto, meta)
    onnx.checker.check_model(p16, full_check=True)
    for value in list(p16.graph.input) + list(p16.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert value.type.tensor_type.shape.dim[0].dim_param
    weights = [t for t in p16.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert from_onnx_proto(p16).precision == "fp16"
    x = onnx_export.random_faces(256, meta, seed=3)
    a, b = run_batches(ort_session(proto), x), run_batches(ort_session(p16), x)
    assert fp16_mod.argmax_agreement(a, b) >= fp16_mod.MIN_AGREEMENT
    assert np.abs(a - b).max() < 5e-2


def test_fp16_agreement_threshold():
    fp16_mod.check_agreement(0.9995)
    with pytest.raises(ModelError, match="99.9"):
        fp16_mod.check_agreement(0.998)


def test_dynamo_exporter_writes_one_self_contained_file():
    model, meta = tiny_model(), tiny_metadata()
    proto = onnx_export.export_module(model, meta, exporter="dynamo")
    onnx_export.check_onnx(proto)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert max(onnx_export.compare_with_torch(proto, model, meta).values()) < 1e-4
