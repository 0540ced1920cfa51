"""FP32 ONNX export that checks itself.

Every file written here has a dynamic batch axis, holds its weights inside (no ``.data`` file beside it),
carries fer_edge metadata, passes ``onnx.checker`` with ``full_check`` and, when the PyTorch network is at
hand, matches it in ONNX Runtime at batch 1 and 64 (the timm ``utils/onnx.py`` habit): an export that
silently changed the numbers is worse than no export.
"""

import io
import warnings

import numpy as np

from fer_edge.errors import ModelError, require
from fer_edge.metadata import attach_to_onnx, from_onnx_proto

#: Largest max-abs logit difference allowed between ONNX Runtime and PyTorch.
PARITY_TOLERANCE = 1e-4
#: Batch sizes of the parity check: one face, and a batch large enough to exercise the dynamic axis.
PARITY_BATCHES = (1, 64)
DEFAULT_OPSET = 17


def output_name(metadata):
    """Name of the network output: ``logits`` or ``probabilities``, as the metadata says."""
    return "probabilities" if metadata.output == "probabilities" else "logits"


def export_module(model, metadata, opset=DEFAULT_OPSET, exporter="torchscript"):
    """Export a torch module taking (N, C, S, S) faces to an in-memory ONNX model with metadata.

    Args:
        model: the network; exported in eval mode, float32, with a dynamic batch axis.
        metadata: ModelMetadata stored in the file; ``output`` names the output tensor.
        opset: ONNX opset.
        exporter: ``torchscript`` (torch.onnx's TorchScript exporter) or ``dynamo`` (torch.export based,
            opset 18 or newer); both fold BatchNorm into the convolutions.

    Returns:
        onnx.ModelProto (weights inside the proto, never external).
    """
    torch = require("torch", "train")
    onnx = require("onnx", "export")
    model = model.eval().float().to(memory_format=torch.contiguous_format)
    size = metadata.input_size
    dummy = torch.zeros(2, metadata.channels, size, size)
    out = output_name(metadata)
    axes = {"input": {0: "batch"}, out: {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # torch announces the TorchScript exporter's deprecation on every call; the choice is deliberate
        # (fast, one self-contained proto) and the dynamo exporter is one option away.
        warnings.simplefilter("ignore", DeprecationWarning)
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(model, (dummy,), buf, input_names=["input"], output_names=[out], dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
            proto = onnx.load_from_string(buf.getvalue())
        elif exporter == "dynamo":
            # external_data=False: without it the weights go to a separate .data file.
            program = torch.onnx.export(model, (dummy,), input_names=["input"], output_names=[out],
                                        dynamic_axes=axes, opset_version=max(opset, 18), dynamo=True,
                                        external_data=False, verbose=False)
            proto = program.model_proto
        else:
            raise ModelError(f"unknown exporter {exporter!r}: choose torchscript or dynamo")
    proto.producer_name = "fer_edge.export"
    return attach_to_onnx(proto, metadata)


def check_onnx(proto, source="model"):
    """Check that an ONNX model is one valid, self-contained file with a dynamic batch axis.

    Args:
        proto: onnx.ModelProto.
        source: name used in error messages.

    Returns:
        The serialized model (bytes).

    Raises:
        ModelError: the checker fails, weights are external, or the batch axis is fixed.
    """
    onnx = require("onnx", "export")
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelError(f"{source}: weights stored outside the file ({external[:3]} ...); fer_edge writes one file")
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"{source}: onnx.checker rejects the model: {str(exc).splitlines()[0]}") from None
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ModelError(f"{source}: tensor {value.name!r} has no dynamic batch axis")
    return data


def random_faces(batch, metadata, seed=0):
    """Seeded network inputs spanning the normalised pixel range of real faces."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch, metadata.channels, metadata.input_size, metadata.input_size))
    return ((pixels.astype(np.float32) / 255.0 - np.float32(metadata.mean)) / np.float32(metadata.std))


def compare_with_torch(proto, model, metadata, batches=PARITY_BATCHES, tolerance=PARITY_TOLERANCE, source="model"):
    """Run ONNX Runtime and PyTorch on the same faces and compare their outputs.

    Args:
        proto: the exported onnx.ModelProto.
        model: the torch module it was exported from.
        metadata: its ModelMetadata.
        batches: batch sizes to compare at.
        tolerance: the largest allowed max-abs difference.
        source: name used in error messages.

    Returns:
        dict batch size -> max-abs difference.

    Raises:
        ModelError: a difference is above ``tolerance``.
    """
    torch = require("torch", "train")
    from .evaluate import ort_session

    session = ort_session(proto)
    name = session.get_inputs()[0].name
    diffs = {}
    model = model.eval()
    for i, batch in enumerate(batches):
        x = random_faces(batch, metadata, seed=i)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).float().numpy()
        got = session.run(None, {name: x})[0]
        if got.shape != ref.shape:
            raise ModelError(f"{source}: ONNX output shape {got.shape} differs from PyTorch's {ref.shape} at batch {batch}")
        diffs[int(batch)] = float(np.abs(got - ref).max())
    bad = {b: d for b, d in diffs.items() if not d < tolerance}
    if bad:
        raise ModelError(f"{source}: ONNX Runtime differs from PyTorch by {bad} (max abs, by batch size); "
                         f"the limit is {tolerance:g}")
    return diffs


def check_batch_consistency(proto, metadata, batches=PARITY_BATCHES, tolerance=PARITY_TOLERANCE, source="model"):
    """Without PyTorch: the model must run at every batch size and give each face the same output alone.

    Returns:
        dict batch size -> max-abs difference between the batched and the one-by-one outputs.
    """
    from .evaluate import ort_session

    session = ort_session(proto)
    name = session.get_inputs()[0].name
    diffs = {}
    for i, batch in enumerate(batches):
        x = random_faces(batch, metadata, seed=i)
        together = session.run(None, {name: x})[0]
        rows = min(batch, 8)
        alone = np.concatenate([session.run(None, {name: x[j:j + 1]})[0] for j in range(rows)])
        diffs[int(batch)] = float(np.abs(together[:rows] - alone).max())
    bad = {b: d for b, d in diffs.items() if not d < tolerance}
    if bad:
        raise ModelError(f"{source}: outputs depend on the batch size ({bad}); the batch axis is not independent")
    return diffs


def load_onnx(path):
    """Read an ONNX file and its fer_edge metadata.

    Args:
        path: the .onnx file (external data next to it is read in, so the copy written is self-contained).

    Returns:
        (onnx.ModelProto, ModelMetadata).

    Raises:
        ModelError: unreadable, or without fer_edge metadata.
    """
    onnx = require("onnx", "export")
    try:
        proto = onnx.load(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise ModelError(f"{path}: not a readable ONNX file ({exc})") from None
    meta = from_onnx_proto(proto, path)
    if meta is None:
        raise ModelError(f"{path}: no fer_edge metadata (class names, input size, normalisation); "
                         "export it from its checkpoint with fer-export")
    return proto, meta


def export_checkpoint_model(checkpoint_path, metadata=None, opset=DEFAULT_OPSET, log=None, exporter="torchscript"):
    """Export a training checkpoint to ONNX and check it (checker, then ORT against PyTorch at batch 1 and 64).

    Args:
        checkpoint_path: a checkpoint written by fer-train.
        metadata: ModelMetadata to store; default the checkpoint's.
        opset: ONNX opset.
        log: callable for progress lines, or None.
        exporter: ``torchscript`` or ``dynamo`` (see ``export_module``).

    Returns:
        (onnx.ModelProto, ModelMetadata, parity dict batch -> max-abs difference).
    """
    require("torch", "train")
    from training.engine import checkpoint_metadata, load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(ckpt)
    meta = metadata or checkpoint_metadata(ckpt, checkpoint_path)
    meta = meta.replace(precision="fp32", output="logits")
    proto = export_module(model, meta, opset, exporter)
    check_onnx(proto, checkpoint_path)
    parity = compare_with_torch(proto, model, meta, source=checkpoint_path)
    extra = dict(meta.extra)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    extra["export"] = {"source": "checkpoint", "opset": opset, "exporter": f"torch.onnx ({exporter})",
                       "ort_vs_torch_max_abs": {str(k): v for k, v in parity.items()}}
    meta = meta.replace(extra=extra)
    attach_to_onnx(proto, meta)
    if log:
        log(parity_line(parity, "PyTorch"))
    return proto, meta, parity


def parity_line(parity, against, what="logit"):
    """The printed line of a parity check (dict batch -> max-abs difference)."""
    parts = ", ".join(f"batch {b}: {d:.2e}" for b, d in parity.items())
    return f"ONNX Runtime vs {against}, max abs {what} difference: {parts} (limit {PARITY_TOLERANCE:g})"


def export_checkpoint(checkpoint_path, onnx_path, metadata=None, opset=DEFAULT_OPSET):
    """Export a checkpoint's network to one checked, self-contained ONNX file (written atomically).

    Args:
        checkpoint_path: a checkpoint written by fer-train.
        onnx_path: the file to write.
        metadata: ModelMetadata to store; default the checkpoint's.
        opset: ONNX opset.

    Returns:
        The serialized model (bytes).
    """
    from fer_edge.io_utils import atomic_write_bytes

    proto, _, _ = export_checkpoint_model(checkpoint_path, metadata, opset)
    data = check_onnx(proto, onnx_path)
    atomic_write_bytes(onnx_path, data)
    return data
