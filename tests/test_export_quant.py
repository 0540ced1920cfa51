"""INT8 Q/DQ quantization: the two flavours' graph properties, checked by walking the Q/DQ nodes;
calibration sampling and preprocessing."""

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from export import data as data_mod  # noqa: E402
from export import onnx_export, quantize as q  # noqa: E402
from export.evaluate import ort_session, run_batches  # noqa: E402
from fer_edge.errors import DatasetError, ModelError  # noqa: E402
from fer_edge.metadata import from_onnx_proto  # noqa: E402

from test_export_support import tiny_metadata, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def fp32():
    meta = tiny_metadata()
    return onnx_export.export_module(tiny_model(), meta), meta


@pytest.fixture(scope="module")
def calib(fp32):
    _, meta = fp32
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(120, 50, (70, 48, 48)), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(7), 10)
    return data_mod.CalibrationSet(images, labels, meta, batch_size=16, info={"source": "synthetic"})


@pytest.fixture(scope="module")
def flavours(fp32, calib):
    proto, meta = fp32
    return {t: q.quantize(proto, meta, calib.batches, t, "minmax", calib.info) for t in q.TARGETS}


@pytest.fixture(params=["tensorrt", "cpu"])
def quantized(request, flavours):
    return (request.param,) + flavours[request.param]


def _walk(proto):
    """The Q/DQ facts, gathered here independently of export.quantize.qdq_summary."""
    graph = proto.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))
    facts = {"act_zero_points": [], "weights": [], "quantized_bias": [], "float_bias": []}
    for node in graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type == "QuantizeLinear":
            facts["act_zero_points"].append(init[node.input[2]])
        if node.op_type == "DequantizeLinear" and node.input[0] in init:
            for consumer, index in consumers[node.output[0]]:
                if index == 2:
                    facts["quantized_bias"].append(init[node.input[0]])
                elif index == 1:
                    facts["weights"].append((consumer.op_type, init[node.input[0]], init[node.input[1]],
                                             init[node.input[2]], attrs.get("axis", 1),
                                             {a.name: a.i for a in consumer.attribute}))
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in init:
            facts["float_bias"].append(node.input[2])
    return facts


def test_every_weight_is_int8_symmetric_per_output_channel(quantized):
    _, proto, _ = quantized
    facts = _walk(proto)
    ops = [w[0] for w in facts["weights"]]
    assert ops.count("Conv") == 4 and ops.count("Gemm") == 1  # vgg_tiny: 4 convs, 1 linear
    for op, weight, scale, zero_point, axis, consumer_attrs in facts["weights"]:
        assert weight.dtype == np.int8 and zero_point.dtype == np.int8
        assert np.all(zero_point == 0)
        out_axis = 0 if op == "Conv" or consumer_attrs.get("transB", 0) else 1
        assert axis == out_axis
        assert scale.shape == (weight.shape[out_axis],) and np.all(scale > 0)


def test_tensorrt_flavour_is_what_tensorrt_accepts(flavours):
    facts = _walk(flavours["tensorrt"][0])
    assert facts["act_zero_points"]
    for zp in facts["act_zero_points"]:
        assert zp.dtype == np.int8 and np.all(zp == 0)  # signed, symmetric
    assert not facts["quantized_bias"]
    assert len(facts["float_bias"]) == 5  # biases stay float32 (the BN-folded conv biases and the linear's)


def test_cpu_flavour_has_uint8_activations_and_int32_biases(flavours):
    facts = _walk(flavours["cpu"][0])
    assert facts["act_zero_points"]
    assert all(zp.dtype == np.uint8 for zp in facts["act_zero_points"])
    assert facts["quantized_bias"] and all(b.dtype == np.int32 for b in facts["quantized_bias"])


def test_quantized_model_is_valid_and_close_to_fp32(quantized, fp32, calib):
    target, qproto, qmeta = quantized
    proto, _ = fp32
    onnx_export.check_onnx(qproto)
    out = qproto.graph.output[0]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # The logits leave the last Gemm in float: no QuantizeLinear/DequantizeLinear in front of the output.
    producer = {o: n for n in qproto.graph.node for o in n.output}
    assert producer[out.name].op_type == "Gemm"
    a = run_batches(ort_session(proto), calib.inputs)
    b = run_batches(ort_session(qproto), calib.inputs)
    spread = a.max() - a.min()
    assert np.abs(a - b).max() < 0.1 * spread
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.8


def test_metadata_names_precision_flavour_and_calibration(quantized):
    target, qproto, qmeta = quantized
    meta = from_onnx_proto(qproto)
    assert meta == qmeta and meta.precision == "int8"
    info = meta.extra["int8"]
    assert info["target"] == target and info["format"] == "QDQ" and info["calibration_method"] == "minmax"
    assert info["calibration"]["images"] == 70 and info["calibration"]["per_class"] == [10] * 7


def test_summary_and_flavour_rules_agree_with_the_walk(quantized):
    target, qproto, _ = quantized
    summary = q.qdq_summary(qproto)
    assert q.check_flavour(summary, target) == []
    other = "cpu" if target == "tensorrt" else "tensorrt"
    assert q.check_flavour(summary, other)  # each flavour breaks the other's rules


def _activation_scales(proto):
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_clip_the_ranges(fp32, calib, flavours, method, target):
    proto, meta = fp32
    qproto, qmeta = q.quantize(proto, meta, calib.batches, target, method, calib.info)
    assert q.check_flavour(q.qdq_summary(qproto), target) == []
    assert qmeta.extra["int8"]["calibration_method"] == method
    # Both clip outliers, so ranges shrink (a degenerate entropy search, as quantize_static's own with
    # 128 bins for 128 levels, returns the min-max ranges unchanged).
    minmax, clipped = _activation_scales(flavours[target][0]), _activation_scales(qproto)
    shared = [t for t in clipped if t in minmax]
    assert shared and sum(clipped[t] < minmax[t] * 0.95 for t in shared) >= len(shared) // 3


def test_unknown_target_and_method_are_user_errors(fp32, calib):
    proto, meta = fp32
    with pytest.raises(ModelError, match="unknown INT8 target"):
        q.quantize(proto, meta, calib.batches, "gpu")
    with pytest.raises(ModelError, match="unknown calibration method"):
        q.quantize(proto, meta, calib.batches, "cpu", "mse")


# ---------------------------------------------------------------------------------------------
# Calibration data


def test_balanced_sample_is_equal_per_class_and_seeded():
    labels = np.repeat(np.arange(7), [50, 8, 40, 90, 60, 30, 45])
    idx = data_mod.balanced_indices(labels, 40, 7, seed=3)
    assert np.bincount(labels[idx], minlength=7).tolist() == [5] * 7  # 40 rounds down to 35
    assert np.array_equal(idx, data_mod.balanced_indices(labels, 40, 7, seed=3))
    assert not np.array_equal(idx, data_mod.balanced_indices(labels, 40, 7, seed=4))
    with pytest.raises(DatasetError, match="fewer"):
        data_mod.balanced_indices(labels, 70, 7)


def test_fixed_size_batches_cover_every_image():
    x = np.arange(10)[:, None].astype(np.float32)
    batches = data_mod.fixed_size_batches(x, 4)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert set(np.concatenate(batches)[:, 0]) == set(range(10))


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
def test_preprocessing_matches_the_training_views(tta):
    from training.augment import tta_views

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    meta = tiny_metadata(mean=0.45, std=0.27)
    ours = data_mod.preprocess(images, meta, tta)
    theirs = tta_views(torch.from_numpy(images).unsqueeze(1), 40, 0.45, 0.27, tta).numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


def test_preprocessing_matches_the_runtime_crop():
    """Calibration faces are what the runtime's fused crop makes of a whole 48x48 FER2013 image."""
    runtime = pytest.importorskip("fer_edge.preprocess")
    from fer_edge.faces import network_boxes

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    meta = tiny_metadata(mean=0.45, std=0.27)
    box = network_boxes([[0, 0, 48, 48]], meta)
    theirs = np.concatenate([runtime.crop_faces(im, box, size=meta.input_size, margin=0.0, square=meta.square,
                                                mean=meta.mean, std=meta.std) for im in images])
    ours = data_mod.preprocess(images, meta)[0]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-5
