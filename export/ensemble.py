"""Several FER models as one ONNX graph whose output is the weighted mean of their probabilities.

Checkpoints are exported through ``training.ensemble.Ensemble`` (one torch module, checked against
PyTorch); when any member is an ONNX file the members' graphs are merged with ``onnx.compose``-style
prefixes, a Softmax per logit-output member and a weighted Sum, and the result is checked against the
mean of the members run one by one.
"""

import numpy as np

from fer_edge.errors import ModelError, require
from fer_edge.metadata import attach_to_onnx

from .onnx_export import DEFAULT_OPSET, PARITY_BATCHES, PARITY_TOLERANCE, random_faces

#: Metadata fields that decide the preprocessing; members must agree on all of them.
_PREPROCESSING_FIELDS = ("class_names", "input_size", "context_size", "channels", "mean", "std", "layout",
                         "margin", "square")


def normalized_weights(weights, count):
    """Weights as float64 summing to 1 (a plain mean when ``weights`` is None)."""
    w = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (count,) or (w < 0).any() or not w.sum() > 0:
        raise ModelError(f"need {count} non-negative ensemble weights with a positive sum, got {weights}")
    return w / w.sum()


def check_compatible(metas, names):
    """Raise ModelError unless all members preprocess faces the same way."""
    first = metas[0]
    for meta, name in zip(metas[1:], names[1:]):
        for field in _PREPROCESSING_FIELDS:
            if getattr(meta, field) != getattr(first, field):
                raise ModelError(f"ensemble members disagree on {field}: {names[0]} has {getattr(first, field)!r}, "
                                 f"{name} has {getattr(meta, field)!r}")


def ensemble_metadata(metas, names, weights):
    """The metadata of the ensemble: the members' preprocessing, probabilities out, members listed in extra."""
    archs = [m.architecture for m in metas]
    extra = {"ensemble": {"members": [str(n) for n in names], "architectures": archs,
                          "weights": [float(w) for w in weights],
                          "member_metrics": [m.metrics for m in metas]}}
    # The runtime applies the TTA a model recommends; without this the ensemble would run every member
    # with none, below the accuracy each member was selected at. Members that disagree recommend nothing.
    ttas = {m.extra.get("tta") for m in metas}
    if len(ttas) == 1 and None not in ttas:
        extra["tta"] = ttas.pop()
    return metas[0].replace(output="probabilities", precision="fp32", architecture=f"ensemble({'+'.join(archs)})",
                            metrics={}, extra=extra)


def export_checkpoint_ensemble(paths, weights=None, opset=DEFAULT_OPSET, exporter="torchscript"):
    """One ONNX graph for an ensemble of checkpoints, via ``training.ensemble.Ensemble``.

    Args:
        paths: checkpoint files.
        weights: one weight per member, or None for a plain mean.
        opset: ONNX opset.
        exporter: ``torchscript`` or ``dynamo`` (see ``export.onnx_export.export_module``).

    Returns:
        (onnx.ModelProto, ModelMetadata, parity dict batch -> max-abs probability difference against PyTorch).
    """
    require("torch", "train")
    from fer_edge.metadata import ModelMetadata
    from training.engine import load_checkpoint, model_from_checkpoint
    from training.ensemble import Ensemble

    from .onnx_export import check_onnx, compare_with_torch, export_module

    ckpts = [load_checkpoint(p) for p in paths]
    metas = [ModelMetadata.from_dict(c["metadata"], p) for c, p in zip(ckpts, paths)]
    check_compatible(metas, paths)
    w = normalized_weights(weights, len(paths))
    module = Ensemble([model_from_checkpoint(c) for c in ckpts], w).eval()
    meta = ensemble_metadata(metas, paths, w)
    proto = export_module(module, meta, opset, exporter)
    check_onnx(proto, "ensemble")
    parity = compare_with_torch(proto, module, meta, source="ensemble")
    meta.extra["export"] = {"source": "checkpoints", "opset": opset,
                            "ort_vs_torch_max_abs": {str(k): v for k, v in parity.items()}}
    attach_to_onnx(proto, meta)
    return proto, meta, parity


def merge_onnx(protos, metas, names, weights=None):
    """Merge member ONNX graphs into one graph: shared input, Softmax per member, weighted Sum.

    Args:
        protos: member onnx.ModelProtos (each one input, one output).
        metas: their ModelMetadata (``output`` says whether a Softmax is needed).
        names: member names for messages and metadata.
        weights: one weight per member, or None for a plain mean.

    Returns:
        (onnx.ModelProto, ModelMetadata).
    """
    onnx = require("onnx", "export")
    from onnx import compose, helper, numpy_helper, version_converter

    check_compatible(metas, names)
    w = normalized_weights(weights, len(protos))
    opset = max(_default_opset(p) for p in protos)
    nodes, inits, sums = [], [], []
    for i, (proto, meta) in enumerate(zip(protos, metas)):
        if _default_opset(proto) != opset:
            proto = version_converter.convert_version(proto, opset)
        if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
            raise ModelError(f"{names[i]}: an ensemble member needs one input and one output")
        graph = compose.add_prefix_graph(proto.graph, f"m{i}_")
        member_in, member_out = graph.input[0].name, graph.output[0].name
        for node in graph.node:
            for j, name in enumerate(node.input):
                if name == member_in:
                    node.input[j] = "input"
        nodes.extend(graph.node)
        inits.extend(graph.initializer)
        probs = member_out
        if meta.output == "logits":
            probs = f"m{i}_probabilities"
            nodes.append(helper.make_node("Softmax", [member_out], [probs], axis=1, name=f"m{i}_softmax"))
        inits.append(numpy_helper.from_array(np.array(w[i], dtype=np.float32), f"m{i}_weight"))
        nodes.append(helper.make_node("Mul", [probs, f"m{i}_weight"], [f"m{i}_weighted"], name=f"m{i}_mul"))
        sums.append(f"m{i}_weighted")
    nodes.append(helper.make_node("Sum", sums, ["probabilities"], name="ensemble_mean"))
    meta0 = metas[0]
    size = meta0.input_size
    graph = helper.make_graph(
        nodes, "fer_edge_ensemble",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", meta0.channels, size, size])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", len(meta0.class_names)])],
        inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="fer_edge.export")
    model.ir_version = max(p.ir_version for p in protos)
    meta = ensemble_metadata(metas, names, w)
    meta.extra["export"] = {"source": "merged ONNX graphs", "opset": opset}
    attach_to_onnx(model, meta)
    return model, meta


def _default_opset(proto):
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)


def compare_with_members(proto, member_protos, metas, weights=None, batches=PARITY_BATCHES,
                         tolerance=PARITY_TOLERANCE):
    """Check the merged graph against the weighted mean of the members' probabilities, run one by one.

    Returns:
        dict batch size -> max-abs difference.

    Raises:
        ModelError: a difference is above ``tolerance``.
    """
    from .evaluate import ort_session

    w = normalized_weights(weights, len(member_protos))
    merged = ort_session(proto)
    members = [ort_session(p) for p in member_protos]
    diffs = {}
    for i, batch in enumerate(batches):
        x = random_faces(batch, metas[0], seed=i)
        expected = 0.0
        for wi, session, meta in zip(w, members, metas):
            out = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
            if meta.output == "logits":
                out = np.exp(out - out.max(1, keepdims=True))
                out /= out.sum(1, keepdims=True)
            expected = expected + wi * out
        got = merged.run(None, {"input": x})[0]
        diffs[int(batch)] = float(np.abs(got - expected).max())
    bad = {b: d for b, d in diffs.items() if not d < tolerance}
    if bad:
        raise ModelError(f"merged ensemble differs from its members' mean by {bad}; limit {tolerance:g}")
    return diffs
