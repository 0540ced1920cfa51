"""Kept for callers of the first releases: the ONNX export now lives in ``export.onnx_export``.

That module adds the checks every export makes (onnx.checker with full_check, ONNX Runtime against
PyTorch at batch 1 and 64); these names forward to it. It is imported when called, so that importing
``training`` does not import the export package (which itself imports ``training``).
"""


def export_module(model, metadata, path=None, opset=17):
    """Export an nn.Module (input (N, C, S, S) -> logits) to one self-contained, checked ONNX file.

    Args:
        model: the network.
        metadata: ModelMetadata stored in the file.
        path: output file (written atomically); None returns the bytes only.
        opset: ONNX opset.

    Returns:
        The serialized model (bytes).
    """
    from export.onnx_export import check_onnx, compare_with_torch
    from export.onnx_export import export_module as _export_module

    proto = _export_module(model, metadata, opset)
    data = check_onnx(proto, path or "model")
    compare_with_torch(proto, model, metadata, source=path or "model")
    if path:
        from fer_edge.io_utils import atomic_write_bytes

        atomic_write_bytes(path, data)
    return data


def export_checkpoint(checkpoint_path, onnx_path, metadata=None):
    """Export the network of a checkpoint file to ONNX (see ``export.onnx_export.export_checkpoint``)."""
    from export.onnx_export import export_checkpoint as _export_checkpoint

    return _export_checkpoint(checkpoint_path, onnx_path, metadata)
