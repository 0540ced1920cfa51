"""Models bundled with fer_edge."""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL_FILE = "fer_edge_default.onnx"


def default_model_path():
    """Path of the bundled default ONNX model (see MODEL.md for how it was trained and measured)."""
    return os.path.join(_HERE, DEFAULT_MODEL_FILE)
