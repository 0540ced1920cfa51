import numpy as np
import pytest

from fer_edge.metadata import METADATA_KEY, ModelMetadata, ModelError, attach_to_onnx, from_custom_map, \
    from_onnx_proto, resolve

onnx = pytest.importorskip("onnx")


def _identity_model():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 7])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_round_trip_through_onnx_and_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    meta = ModelMetadata(architecture="vgg_edge", metrics={"top1": 0.7}, extra={"tta": "flip"}, margin=0.1)
    proto = attach_to_onnx(_identity_model(), meta)
    attach_to_onnx(proto, meta)  # attaching twice keeps one entry
    assert [p.key for p in proto.metadata_props].count(METADATA_KEY) == 1
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    assert from_onnx_proto(onnx.load(path)) == meta
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert from_custom_map(session.get_modelmeta().custom_metadata_map) == meta


def test_missing_metadata_is_an_error_unless_stated():
    assert from_onnx_proto(_identity_model()) is None
    with pytest.raises(ModelError, match="no fer_edge metadata"):
        resolve(None, None, "m.onnx")
    stated = resolve(None, {"input_size": 44, "context_size": 48}, "m.onnx")
    assert stated.input_size == 44 and stated.class_names[0] == "angry"


@pytest.mark.parametrize("fields,match", [
    ({"input_size": 64, "context_size": 48}, "input_size"),
    ({"std": 0}, "std"),
    ({"class_names": ["a", "a"]}, "distinct"),
    ({"output": "softmax"}, "output"),
])
def test_invalid_fields(fields, match):
    with pytest.raises(ModelError, match=match):
        ModelMetadata(**fields)


def test_unknown_and_future_fields():
    with pytest.raises(ModelError, match="unknown fer_edge metadata fields"):
        ModelMetadata.from_dict({"colour": "blue"})
    with pytest.raises(ModelError, match="newer"):
        ModelMetadata.from_dict({"format_version": 99})
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelMetadata.from_json("{", "x.onnx")


def test_crop_fraction():
    assert ModelMetadata(input_size=40, context_size=48).crop_fraction == pytest.approx(40 / 48)
    assert np.isclose(ModelMetadata().crop_fraction, 5 / 6)
