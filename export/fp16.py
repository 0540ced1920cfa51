"""FP16 copy of an FP32 ONNX model, with float32 inputs and outputs.

Keeping the interface in float32 means every runtime feeds the FP16 model exactly as the FP32 one; the
casts sit inside the graph. TensorRT 11 builds its FP16 engines from this file (strong typing takes the
precision from the tensor types), TensorRT 10 from the FP32 file with the FP16 builder flag.
"""

import warnings

import numpy as np

from fer_edge.errors import ModelError, require
from fer_edge.metadata import attach_to_onnx

#: Smallest argmax agreement with FP32 on PublicTest an FP16 model must reach.
MIN_AGREEMENT = 0.999


def to_fp16(proto, metadata):
    """Convert an FP32 ONNX model to FP16 weights and arithmetic, keeping float32 inputs and outputs.

    Args:
        proto: FP32 onnx.ModelProto (not modified).
        metadata: its ModelMetadata; the copy stored is marked ``precision="fp16"``.

    Returns:
        onnx.ModelProto.
    """
    require("onnx", "export")
    float16 = require("onnxconverter_common.float16", "export")
    with warnings.catch_warnings():
        # The converter warns for every weight below FP16's range that it clamps; the agreement check
        # that follows is what tells whether that mattered.
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(proto, keep_io_types=True)
    extra = dict(metadata.extra)
    extra["fp16"] = {"converter": "onnxconverter_common.float16", "io": "float32"}
    meta = metadata.replace(precision="fp16", extra=extra)
    attach_to_onnx(converted, meta)
    check_float32_io(converted)
    return converted


def check_float32_io(proto, source="FP16 model"):
    """Raise ModelError unless every graph input and output is float32."""
    onnx = require("onnx", "export")
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"{source}: {value.name!r} is not float32")


def argmax_agreement(scores_a, scores_b):
    """Fraction of rows whose argmax is the same in both score arrays."""
    a, b = np.asarray(scores_a), np.asarray(scores_b)
    return float((a.argmax(1) == b.argmax(1)).mean())


def check_agreement(agreement, minimum=MIN_AGREEMENT, source="FP16 model"):
    """Raise ModelError when the agreement with FP32 is below ``minimum``."""
    if agreement < minimum:
        raise ModelError(f"{source}: argmax agrees with FP32 on {agreement * 100:.2f}% of PublicTest, "
                         f"below the {minimum * 100:.1f}% required; not written")
