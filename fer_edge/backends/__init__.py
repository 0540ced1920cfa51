"""Inference backends behind one small interface (see base.BaseRunner), chosen by name from BACKENDS.

Each backend module imports its heavy package (onnxruntime, tensorrt, pycuda / cuda-python) only when a
runner is activated, so importing this package costs nothing.
"""

import os

from ..errors import FerEdgeError, ModelError
from .base import BaseRunner, TensorMeta
from .onnxrt import OnnxrtRunner
from .tensorrt import TensorRTRunner

#: Backend name -> runner class.
BACKENDS = {"onnxruntime": OnnxrtRunner, "tensorrt": TensorRTRunner}

#: File extensions each backend reads.
EXTENSIONS = {"onnxruntime": (".onnx",), "tensorrt": (".engine", ".plan", ".trt")}

__all__ = ["BACKENDS", "BaseRunner", "OnnxrtRunner", "TensorMeta", "TensorRTRunner", "backend_for", "create_runner"]


def backend_for(path, backend="auto"):
    """The backend name that runs ``path``.

    Args:
        path: a model file.
        backend: "auto" (by extension: .onnx -> onnxruntime, .engine/.plan/.trt -> tensorrt) or a name in BACKENDS.

    Returns:
        A key of BACKENDS.

    Raises:
        FerEdgeError: unknown backend name, or a file the named backend cannot read.
    """
    ext = os.path.splitext(str(path))[1].lower()
    by_ext = next((name for name, exts in EXTENSIONS.items() if ext in exts), None)
    if backend in (None, "auto"):
        if by_ext is None:
            raise ModelError(f"{path}: cannot tell the model format from its extension; expected "
                             f"{', '.join(e for exts in EXTENSIONS.values() for e in exts)}")
        return by_ext
    if backend not in BACKENDS:
        raise FerEdgeError(f"unknown backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    if by_ext is not None and by_ext != backend:
        raise ModelError(f"{path} is a {by_ext} model file; backend {backend!r} cannot run it")
    return backend


def create_runner(path, backend="auto", providers=None, threads=None, spin=None, profile_batch=64, device=0):
    """Make (not activate) the runner for a model file.

    Args:
        path: .onnx, .engine or .plan file.
        backend: "auto" or a key of BACKENDS.
        providers, threads, spin, profile_batch: ONNX Runtime options (see OnnxrtRunner).
        device: CUDA device index for TensorRT.

    Returns:
        A BaseRunner.
    """
    name = backend_for(path, backend)
    if name == "onnxruntime":
        return OnnxrtRunner(path, providers=providers, threads=threads, spin=spin, profile_batch=profile_batch)
    if providers is not None:
        raise FerEdgeError("providers apply to ONNX Runtime only; a TensorRT engine runs on TensorRT")
    return TensorRTRunner(path, device=device)
