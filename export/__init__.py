"""fer_edge's export package: training checkpoints and ONNX files into deployable models.

``fer-export`` (``export.cli``) writes a checked FP32 ONNX file, an FP16 ONNX file, INT8 Q/DQ ONNX files
for TensorRT or for ONNX Runtime's CPU kernels, TensorRT engines and a Triton model repository. Each
step is a small module that can be used on its own:

* ``export.onnx_export``: a torch module or checkpoint to one self-contained ONNX file, checked.
* ``export.fp16``: the FP16 copy with float32 inputs and outputs.
* ``export.data``: calibration and evaluation images, preprocessed exactly as the runtime does.
* ``export.quantize``: static Q/DQ quantization in the two flavours, and the graph walk that checks them.
* ``export.ensemble``: several models as one ONNX graph averaging their probabilities.
* ``export.tensorrt_build``: the TensorRT 10 / 11 engine builder and the INT8 calibrator.
* ``export.triton``: a Triton Inference Server model repository.

Importing this package imports nothing heavy: torch, onnx, onnxruntime and tensorrt are imported by the
functions that use them.
"""
