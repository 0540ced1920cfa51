"""Running ONNX models with ONNX Runtime on the CPU, for the checks and measurements of an export."""

import numpy as np

from fer_edge.errors import require

from .data import preprocess


def ort_session(model, threads=0):
    """An ONNX Runtime CPU session.

    Args:
        model: an onnx.ModelProto, serialized bytes, or a path.
        threads: intra-op threads; 0 lets ONNX Runtime choose.

    Returns:
        onnxruntime.InferenceSession.
    """
    ort = require("onnxruntime", "export")
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def run_batches(session, x, batch_size=256):
    """The first output of ``session`` on x, computed ``batch_size`` rows at a time.

    Args:
        session: an InferenceSession with one input.
        x: float32 array (N, ...).
        batch_size: rows per run.

    Returns:
        float32 array (N, ...) of outputs.
    """
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch_size])})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs).astype(np.float32, copy=False)


def predict(session, images, metadata, tta="none", batch_size=256):
    """Scores (N, C) on uint8 48x48 faces, averaged over the test-time views.

    Args:
        session: InferenceSession of a fer_edge model.
        images: uint8 (N, 48, 48).
        metadata: the model's ModelMetadata (preprocessing).
        tta: ``none``, ``flip`` or ``tencrop``.
        batch_size: rows per run.

    Returns:
        float32 (N, C): logits or probabilities, as the model outputs.
    """
    views = preprocess(images, metadata, tta)
    return np.mean([run_batches(session, v, batch_size) for v in views], axis=0)


def evaluate(session, images, labels, metadata, tta="none"):
    """fer_edge.metrics report (top-1, per-class scores, ...) of an ONNX model on faces.

    Returns:
        (report dict, scores array).
    """
    from fer_edge.metrics import evaluate as evaluate_scores

    scores = predict(session, images, metadata, tta)
    return evaluate_scores(labels, scores), scores
