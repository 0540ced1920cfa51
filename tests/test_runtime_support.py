"""Helpers shared by the runtime, backend, video and bench tests (no tests here).

Tiny ONNX models are written with the ``onnx`` helper API, so their outputs can be computed exactly in
NumPy; videos are written with cv2.VideoWriter from generated face-like patches on a dark background,
and ``PatchDetector`` finds those patches from the pixels (Haar cannot be expected to find drawn faces).
"""

import numpy as np

from fer_edge.metadata import ModelMetadata, attach_to_onnx

BACKGROUND = 12


def make_linear_onnx(path, metadata=None, n_classes=7, input_size=40, layout="NCHW", output="logits",
                     with_metadata=True, batch=None, seed=0):
    """Write logits = flatten(x) @ W + b as an ONNX model.

    Args:
        path: output .onnx file.
        metadata: ModelMetadata stored in the file (default: FER2013 classes, 40 of 48, NCHW).
        n_classes: output width (may disagree with the metadata, for error tests).
        input_size, layout: input geometry of the graph.
        output: output tensor name.
        with_metadata: store the metadata at all.
        batch: static batch size (None: dynamic).

    Returns:
        (W, b) as float32 arrays.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    feat = input_size * input_size
    w = (rng.standard_normal((feat, n_classes)) / np.sqrt(feat)).astype(np.float32)
    b = rng.standard_normal(n_classes).astype(np.float32)
    dims = [batch if batch else "batch"] + ([1, input_size, input_size] if layout == "NCHW" else
                                            [input_size, input_size, 1])
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch if batch else "batch", n_classes])
    shape = numpy_helper.from_array(np.array([-1, feat], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], [output])]
    graph = helper.make_graph(nodes, "linear", [x], [y],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b"), shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        attach_to_onnx(model, metadata or ModelMetadata(architecture="linear-test"))
    onnx.save(model, str(path))
    return w, b


def generated_face(side, seed=0):
    """A face-like uint8 gray patch: a bright oval with dark eyes and mouth, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    face = np.where(((xx - 0.5) / 0.36) ** 2 + ((yy - 0.52) / 0.44) ** 2 < 1, 180, 70).astype(np.float64)
    for cx, cy, r in ((0.35, 0.42, 0.06), (0.65, 0.42, 0.06), (0.5, 0.72, 0.1)):
        face[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 45
    return np.clip(face + rng.normal(0, 10, face.shape), 40, 255).astype(np.uint8)


def face_positions(n_frames, width=320, height=240, side=80):
    """Where the test video's one face sits in each frame: drifting right by 1 pixel a frame."""
    return [(20 + i, (height - side) // 2, side, side) for i in range(n_frames)]


def write_test_video(path, n_frames=30, width=320, height=240, side=80, fourcc="mp4v", fps=25.0):
    """Write a video with one generated face per frame on a dark background.

    Returns:
        The list of true (x, y, w, h) boxes, one per frame.
    """
    import cv2

    boxes = face_positions(n_frames, width, height, side)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    patch = cv2.cvtColor(generated_face(side), cv2.COLOR_GRAY2BGR)
    for x, y, w, h in boxes:
        frame = np.full((height, width, 3), BACKGROUND, np.uint8)
        frame[y:y + h, x:x + w] = patch
        writer.write(frame)
    writer.release()
    return boxes


class PatchDetector:
    """Finds the generated faces from the pixels: connected regions clearly brighter than the background."""

    name = "patch"

    def __init__(self, fail_at=None):
        """Args:
            fail_at: raise RuntimeError on this call (to test that a crash leaves no output), or None.
        """
        self.calls, self.fail_at = 0, fail_at

    def detect(self, frame):
        import cv2

        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("detector crashed on purpose")
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        n, _, stats, _ = cv2.connectedComponentsWithStats((gray > 35).astype(np.uint8))
        boxes = [stats[i, :4] for i in range(1, n) if stats[i, 4] >= 400]
        return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def expected_probs(faces48, w, b, metadata=None):
    """Softmax of the linear model on the central crop of 48x48 faces (the metadata's geometry)."""
    md = metadata or ModelMetadata()
    o = (md.context_size - md.input_size) // 2
    x = faces48[:, o:o + md.input_size, o:o + md.input_size].astype(np.float64)
    x = (x / 255.0 - md.mean) / md.std
    logits = x.reshape(len(x), -1) @ w + b
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
