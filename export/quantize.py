"""Static INT8 quantization into Q/DQ ONNX graphs, in the two flavours the two targets want.

``tensorrt``: what TensorRT's explicit quantization accepts: signed int8 everywhere, symmetric
activations and weights (every zero point 0), per-channel weight scales on the output-channel axis,
biases left in float (TensorRT fuses them itself).

``cpu``: what ONNX Runtime's x86/ARM kernels run fastest: unsigned 8-bit asymmetric activations (the
u8 x s8 dot products of VNNI / VPDPBUSD), signed per-channel symmetric weights and int32 biases, so that
the Q/DQ pairs fold into QLinearConv / QGemm. On a Zen4 CPU the TensorRT flavour runs about 1.7x FP32
in ONNX Runtime and this one about 3x (``benchmarks/quantization.py``).

Both use ONNX Runtime's ``quantize_static`` calibrated on the same class-balanced batches of training
faces (``export.data``); ``qdq_summary`` walks the result and ``check_flavour`` holds it to the rules
above, so a change in ONNX Runtime's defaults cannot slip a wrong graph through.
"""

import collections
import contextlib
import io
import logging
import os
import tempfile

import numpy as np

from fer_edge.errors import ModelError, require
from fer_edge.metadata import attach_to_onnx

TARGETS = ("tensorrt", "cpu")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_TARGET = "tensorrt"
DEFAULT_METHOD = "minmax"


def flavour_options(target):
    """quantize_static keyword arguments of a flavour.

    Args:
        target: ``tensorrt`` or ``cpu``.

    Returns:
        dict of keyword arguments (activation_type, weight_type, extra_options).
    """
    q = require("onnxruntime.quantization", "export")
    if target == "tensorrt":
        return {"activation_type": q.QuantType.QInt8, "weight_type": q.QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}}
    if target == "cpu":
        return {"activation_type": q.QuantType.QUInt8, "weight_type": q.QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True}}
    raise ModelError(f"unknown INT8 target {target!r}: choose {' or '.join(TARGETS)}")


#: What each flavour stores in the INT8 model's metadata.
FLAVOUR_DESCRIPTION = {
    "tensorrt": {"activations": "int8, symmetric (zero point 0), per tensor",
                 "weights": "int8, symmetric, per output channel (axis 0)", "bias": "float32 (not quantized)"},
    "cpu": {"activations": "uint8, asymmetric, per tensor",
            "weights": "int8, symmetric, per output channel (axis 0)", "bias": "int32"},
}


class _BatchReader:
    """onnxruntime.quantization CalibrationDataReader over a list of input batches (rewindable)."""

    def __init__(self, input_name, batches):
        self.input_name = input_name
        self.batches = batches
        self._it = iter(batches)

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self):
        self._it = iter(self.batches)


def quantize(proto, metadata, batches, target=DEFAULT_TARGET, method=DEFAULT_METHOD, calibration_info=None):
    """Quantize an FP32 model to a Q/DQ INT8 model.

    Args:
        proto: FP32 onnx.ModelProto (not modified).
        metadata: its ModelMetadata.
        batches: list of float32 calibration batches, all of one shape (see ``export.data``).
        target: ``tensorrt`` or ``cpu`` (see the module docstring).
        method: ``minmax``, ``entropy`` or ``percentile`` calibration of the activation ranges.
        calibration_info: dict describing the calibration sample, stored in the metadata.

    Returns:
        (INT8 onnx.ModelProto with metadata, its ModelMetadata).
    """
    onnx = require("onnx", "export")
    q = require("onnxruntime.quantization", "export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ModelError(f"unknown calibration method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    options = flavour_options(target)
    calibrate = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                 "percentile": q.CalibrationMethod.Percentile}[method]
    reader = _BatchReader(proto.graph.input[0].name, batches)
    with tempfile.TemporaryDirectory(prefix="fer_export_") as tmp:
        src, pre, out = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(src, "wb") as fh:
            fh.write(proto.SerializeToString())
        # ONNX Runtime's quantization notes, progress prints and entropy-search chatter are not for users.
        with _quiet():
            # Shape inference plus constant folding (BatchNorm into Conv for ONNX files not exported by us),
            # which ONNX Runtime asks for before quantizing. ONNX's own shape inference carries the symbolic
            # batch axis of these CNNs; the symbolic pass would need sympy, which onnxruntime no longer brings.
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            if method == "entropy":
                # quantize_static's entropy calibration uses 128 histogram bins for 128 quantized bins, which
                # leaves the KL search nothing to clip (it returns the min-max range). Run the calibrator
                # with TensorRT's 2048 bins here and hand the ranges over as overrides.
                overrides = _entropy_ranges(pre, batches, reader.input_name, os.path.join(tmp, "aug.onnx"))
                options["extra_options"] = dict(options["extra_options"], TensorQuantOverrides=overrides)
                calibrate = q.CalibrationMethod.MinMax
                reader.rewind()
            q.quantize_static(pre, out, reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                              reduce_range=False, calibrate_method=calibrate, **options)
        qproto = onnx.load(out)
    _dequantize_graph_outputs(qproto)
    del qproto.metadata_props[:]
    info = {"target": target, "format": "QDQ", "tool": "onnxruntime.quantization.quantize_static",
            "calibration_method": method, **FLAVOUR_DESCRIPTION[target],
            "calibration": dict(calibration_info or {})}
    extra = dict(metadata.extra)
    extra["int8"] = info
    meta = metadata.replace(precision="int8", extra=extra)
    attach_to_onnx(qproto, meta)
    problems = check_flavour(qdq_summary(qproto), target)
    if problems:
        raise ModelError(f"the {target} INT8 graph breaks its rules: {'; '.join(problems)}")
    return qproto, meta


def _entropy_ranges(model_path, batches, input_name, augmented_path):
    """Activation ranges from KL-divergence (entropy) calibration with 2048 bins, clipped to the min-max.

    Returns:
        TensorQuantOverrides dict: tensor name -> [{"rmin": ..., "rmax": ...}].
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    ranges = {}
    for method, options in ((CalibrationMethod.MinMax, {}),
                            (CalibrationMethod.Entropy, {"num_bins": 2048, "num_quantized_bins": 128})):
        calibrator = create_calibrator(model_path, None, augmented_model_path=augmented_path,
                                       calibrate_method=method, extra_options=options)
        calibrator.collect_data(_BatchReader(input_name, batches))
        ranges[method] = {name: tuple(float(np.asarray(v).ravel()[0]) for v in data.range_value)
                          for name, data in calibrator.compute_data().items()}
        del calibrator
    minmax, entropy = ranges[CalibrationMethod.MinMax], ranges[CalibrationMethod.Entropy]
    overrides = {}
    for name, (lo, hi) in entropy.items():
        mlo, mhi = minmax.get(name, (lo, hi))
        # The entropy histogram is symmetric about 0; a ReLU output never goes below its observed minimum.
        rmin, rmax = max(lo, mlo), min(hi, mhi)
        if rmax > rmin:
            overrides[name] = [{"rmin": np.float32(rmin), "rmax": np.float32(rmax)}]
    return overrides


@contextlib.contextmanager
def _quiet():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _dequantize_graph_outputs(proto):
    """Remove a trailing QuantizeLinear -> DequantizeLinear pair in front of each graph output.

    ONNX Runtime quantizes the last layer's output too; rounding the logits to 8 bits only costs
    precision in the probabilities (TensorRT and ONNX Runtime both run the last Gemm with a float output).
    """
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    uses = collections.Counter(name for node in graph.node for name in node.input)
    outputs = {o.name for o in graph.output}
    for out in outputs:
        dq = producer.get(out)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        qn = producer.get(dq.input[0])
        if qn is None or qn.op_type != "QuantizeLinear" or uses[qn.output[0]] != 1:
            continue
        compute = producer.get(qn.input[0])
        if compute is None or uses[qn.input[0]] != 1 or qn.input[0] in outputs:
            continue
        compute.output[list(compute.output).index(qn.input[0])] = out
        graph.node.remove(qn)
        graph.node.remove(dq)
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def qdq_summary(proto):
    """Walk the Q/DQ nodes of a quantized graph and describe what they quantize.

    Args:
        proto: a Q/DQ onnx.ModelProto.

    Returns:
        dict with ``activations`` (one entry per QuantizeLinear: tensor, dtype, zero points, per-tensor?),
        ``weights`` (one per constant DequantizeLinear feeding a weight input: consumer op, dtype, axis,
        channels, number of scales, zero points), ``quantized_biases`` (DequantizeLinear feeding a bias
        input), ``float_biases`` (bias inputs fed by a float initializer), ``float_weights`` (weight
        inputs of Conv/Gemm fed by a float initializer) and ``outputs`` (op type producing each graph output).
    """
    onnx = require("onnx", "export")
    from onnx import numpy_helper

    graph = proto.graph
    init = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))

    def zero_points(node):
        if len(node.input) < 3 or not node.input[2]:
            return "absent", np.zeros(1)
        t = init.get(node.input[2])
        if t is None:
            return "dynamic", None
        return onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name, numpy_helper.to_array(t)

    summary = {"activations": [], "weights": [], "quantized_biases": [], "float_biases": [], "float_weights": [],
               "outputs": {o.name: getattr(producer.get(o.name), "op_type", "input") for o in graph.output}}
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            dtype, zp = zero_points(node)
            scale = numpy_helper.to_array(init[node.input[1]]) if node.input[1] in init else None
            summary["activations"].append({
                "tensor": node.input[0], "dtype": dtype,
                "zero_points_zero": bool(zp is not None and np.all(zp == 0)),
                "per_tensor": bool(scale is not None and scale.size == 1)})
        elif node.op_type == "DequantizeLinear" and node.input[0] in init:
            data = init[node.input[0]]
            for consumer, index in consumers[node.output[0]]:
                entry = {"tensor": node.input[0], "consumer": consumer.op_type, "node": consumer.name,
                         "dtype": onnx.helper.tensor_dtype_to_np_dtype(data.data_type).name}
                if index == 2:
                    summary["quantized_biases"].append(entry)
                    continue
                _, zp = zero_points(node)
                scale = numpy_helper.to_array(init[node.input[1]])
                out_axis = 1 if consumer.op_type == "Gemm" and not _attr(consumer, "transB", 0) else 0
                entry.update({"axis": _attr(node, "axis", 1) if scale.size > 1 else None,
                              "scales": int(scale.size), "channels": int(data.dims[out_axis]),
                              "output_axis": out_axis,
                              "zero_points_zero": bool(zp is not None and np.all(zp == 0))})
                summary["weights"].append(entry)
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            if len(node.input) > 1 and node.input[1] in init:
                summary["float_weights"].append({"node": node.name, "tensor": node.input[1]})
            if len(node.input) > 2 and node.input[2] in init:
                summary["float_biases"].append({"node": node.name, "tensor": node.input[2]})
    return summary


def check_flavour(summary, target):
    """The rules a flavour's graph must follow, checked on a ``qdq_summary``.

    Args:
        summary: the dict from ``qdq_summary``.
        target: ``tensorrt`` or ``cpu``.

    Returns:
        List of problems (empty when the graph follows the rules).
    """
    problems = []
    if not summary["weights"]:
        problems.append("no quantized weights")
    if summary["float_weights"]:
        problems.append(f"weights left in float: {[w['tensor'] for w in summary['float_weights']]}")
    want_act = {"tensorrt": "int8", "cpu": "uint8"}[target]
    for act in summary["activations"]:
        if act["dtype"] != want_act:
            problems.append(f"activation {act['tensor']} quantized to {act['dtype']}, not {want_act}")
        if not act["per_tensor"]:
            problems.append(f"activation {act['tensor']} has per-channel scales")
        if target == "tensorrt" and not act["zero_points_zero"]:
            problems.append(f"activation {act['tensor']} has a non-zero zero point")
    for w in summary["weights"]:
        if w["dtype"] != "int8":
            problems.append(f"weight {w['tensor']} is {w['dtype']}, not int8")
        if not w["zero_points_zero"]:
            problems.append(f"weight {w['tensor']} is not symmetric")
        if w["scales"] != w["channels"] or w["axis"] != w["output_axis"]:
            problems.append(f"weight {w['tensor']} is not quantized per output channel "
                            f"({w['scales']} scales on axis {w['axis']}, {w['channels']} channels)")
    if target == "tensorrt" and summary["quantized_biases"]:
        problems.append(f"biases quantized: {[b['tensor'] for b in summary['quantized_biases']]}")
    return problems
