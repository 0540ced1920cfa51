"""fer_edge: facial expression recognition at the edge.

Importing this package is light: it never imports torch, tensorrt or pycuda, and loads ONNX Runtime
only when a model is opened.
"""

from .constants import CLASS_NAMES

__version__ = "0.1.0"

__all__ = ["CLASS_NAMES", "Runtime", "__version__"]


def __getattr__(name):
    # Runtime pulls in ONNX Runtime and OpenCV; resolve it on first use only.
    if name == "Runtime":
        from .runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'fer_edge' has no attribute {name!r}")
