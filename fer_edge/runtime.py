"""The fer_edge runtime: faces in, expressions out, on ONNX Runtime or TensorRT.

    import cv2, fer_edge
    with fer_edge.Runtime() as rt:                     # the bundled model, best backend that loads
        for face in rt.detect(cv2.imread("people.jpg")):
            print(face.box, face.label, round(face.score, 2))

Preprocessing always follows the model's metadata (see fer_edge.metadata and fer_edge.faces): every face
box becomes the gray, normalised ``input_size`` square the model was trained on.
"""

import dataclasses
import logging
import os
import threading

import numpy as np

from .backends import create_runner
from .detection import FaceTracker, ProbabilitySmoother, make_detector
from .errors import FerEdgeError, ModelError
from .faces import (TTA_MODES, InputError, check_boxes, check_faces, check_frame, expand_boxes, get_crop_faces,
                    network_boxes, tta_batch)
from .metadata import resolve
from .models import default_model_path

_VIEWS = {"none": 1, "flip": 2, "tencrop": 10}
log = logging.getLogger("fer_edge.runtime")


@dataclasses.dataclass
class Face:
    """One face found in a frame.

    Attributes:
        box: (x, y, w, h) in frame pixels (ints).
        label: the most probable class name.
        scores: float32 (C,) class probabilities, in ``Runtime.classes`` order.
        score: the top probability.
        track_id: the face's id across frames (``Runtime.stream`` and fer-video), else None.
    """

    box: tuple
    label: str
    scores: np.ndarray
    score: float
    track_id: int = None

    def to_dict(self, classes):
        """Plain-JSON form: box, label, score, track_id and one probability per class name."""
        return {"box": list(self.box), "label": self.label, "score": self.score, "track_id": self.track_id,
                "scores": {c: float(p) for c, p in zip(classes, self.scores)}}


def _int_box(box):
    return tuple(int(round(v)) for v in box)


def softmax(logits, axis=-1):
    """Numerically stable softmax (float32)."""
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


class Runtime:
    """Facial expression recognition on faces, frames and video, behind one object."""

    def __init__(self, model=None, backend="auto", detector="haar", batch_size=64, tta=None, providers=None,
                 threads=None, metadata=None, detector_options=None, spin=None, device=0):
        """Load a model and a face detector.

        Args:
            model: None for the bundled default model, or a .onnx file (ONNX Runtime) or a TensorRT
                .engine/.plan file (TensorRT).
            backend: "auto" (by file type; ONNX Runtime then takes TensorRT, CUDA or CPU, whichever loads),
                "onnxruntime" or "tensorrt".
            detector: "haar" (OpenCV's cascade), "haar:CASCADE.xml", "yunet:MODEL.onnx", None (pass boxes to
                ``detect``) or an object with ``detect(frame)``.
            batch_size: most faces per network call; larger batches are split.
            tta: "none", "flip" or "tencrop" test-time augmentation; None takes the model's recommendation
                (``metadata.extra["tta"]``, else "none").
            providers: ONNX Runtime providers to require, e.g. ["CUDAExecutionProvider"]; None picks.
            threads: ONNX Runtime intra-op threads (None: its default).
            metadata: ModelMetadata or dict of fields stating the preprocessing; needed for a model without
                fer_edge metadata, and overrides fields of one with it.
            detector_options: keyword arguments for the detector (e.g. {"max_side": 480}).
            spin: let ONNX Runtime's idle threads spin (None: its default).
            device: CUDA device for TensorRT engines.
        """
        if int(batch_size) < 1:
            raise FerEdgeError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = os.fspath(model) if model is not None else default_model_path()
        self.batch_size = int(batch_size)
        # The crop is microseconds per face: one thread leaves the other core to the network.
        self.crop_threads = 1 if threads is None else int(threads)
        self.runner = create_runner(self.model_path, backend, providers=providers, threads=threads, spin=spin,
                                    profile_batch=self.batch_size, device=device)
        self.runner.activate()
        try:
            self.metadata = resolve(self.runner.read_metadata(), metadata, self.model_path)
            self._bind_model()
            self.tta = tta if tta is not None else str(self.metadata.extra.get("tta", "none"))
            if self.tta not in TTA_MODES:
                raise FerEdgeError(f"unknown TTA mode {self.tta!r}: choose one of {', '.join(TTA_MODES)}")
            self.detector = make_detector(detector, **(detector_options or {}))
            self._crop, self._crop_batch = get_crop_faces()
            self._allocate()
            self._lock = threading.Lock()
            # One tiny call proves the model runs and its output has the class count the metadata names.
            self._classify([(np.zeros((self.metadata.context_size,) * 2, np.uint8),
                             np.array([[0.0, 0.0, self.metadata.context_size, self.metadata.context_size]]))])
        except BaseException:
            self.runner.deactivate()
            raise
        desc = self.runner.describe()
        log.info("%s runs on %s (%s)", os.path.basename(self.model_path), desc["backend"],
                 ", ".join(desc.get("providers") or []))

    # -- set-up ----------------------------------------------------------------------------------------------
    def _bind_model(self):
        md, path = self.metadata, self.model_path
        inputs, outputs = self.runner.get_input_metadata(), self.runner.get_output_metadata()
        if len(inputs) != 1:
            raise ModelError(f"{path} has {len(inputs)} inputs; a fer_edge model takes one image batch")
        if md.channels != 1:
            raise ModelError(f"{path}: the runtime feeds gray faces, but the metadata says channels={md.channels}")
        inp = inputs[0]
        s = md.input_size
        want = (None, 1, s, s) if md.layout == "NCHW" else (None, s, s, 1)
        if len(inp.shape) != 4 or any(d is not None and w is not None and d != w for d, w in zip(inp.shape, want)):
            raise ModelError(f"{path}: input {inp.describe()} does not match the metadata "
                             f"({md.layout}, {md.channels} channel, {s}x{s})")
        if inp.dtype.kind != "f":
            raise ModelError(f"{path}: input {inp.describe()} is not floating point")
        out = next((o for o in outputs if o.name == md.output), outputs[0])
        n = len(md.class_names)
        if len(out.shape) != 2 or out.shape[1] not in (None, n):
            raise ModelError(f"{path}: output {out.describe()} does not give {n} class scores per face")
        self._in_name, self._in_dtype, self._out_name = inp.name, inp.dtype, out.name
        caps = [c for c in (self.runner.max_batch, inp.shape[0]) if c is not None]
        self._max_rows = min(caps) if caps else None

    def _allocate(self):
        md = self.metadata
        views = _VIEWS[self.tta]
        self._views = views
        self._faces_per_call = self.batch_size
        s, k = md.input_size, md.context_size
        # Preallocated once: crops are written in place, so a call costs no allocation beyond the outputs.
        self._buf = np.empty((views * self.batch_size, 1, s, s), np.float32)
        self._ctx = np.empty((self.batch_size, 1, k, k), np.float32) if self.tta == "tencrop" else None

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def classes(self):
        """Class names in label order (FER2013: angry, disgust, fear, happy, sad, surprise, neutral)."""
        return tuple(self.metadata.class_names)

    def predict_faces(self, faces):
        """Expression probabilities of already-cropped faces.

        Each image is taken as a detector box around one face and preprocessed by the model's metadata
        (for 48x48 FER2013 images: their central 40x40 crop).

        Args:
            faces: uint8 (N, H, W) gray or (N, H, W, 3) BGR, any size.

        Returns:
            float32 (N, C) probabilities.
        """
        faces = check_faces(faces)
        n, h, w = faces.shape[:3]
        if n == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        net = network_boxes([[0, 0, w, h]], self.metadata)[0]
        if net[1] >= 0 and net[1] + net[3] <= h:
            # Stacked into one tall frame, the faces are cropped in one call; no box reaches a neighbour.
            tall = faces.reshape((n * h,) + faces.shape[2:])
            boxes = np.tile(np.array([[0.0, 0.0, w, h]]), (n, 1))
            boxes[:, 1] = np.arange(n) * h
            return self._classify([(tall, boxes)])
        box = np.array([[0.0, 0.0, w, h]])
        return self._classify([(faces[i], box) for i in range(n)])

    def detect(self, frame, boxes=None):
        """Find the faces in one frame and classify them.

        Args:
            frame: uint8 (H, W, 3) BGR or (H, W) gray.
            boxes: optional (N, 4) face boxes (x, y, w, h) that replace the detector.

        Returns:
            list of Face, largest first when detected.
        """
        return self.detect_batch([frame], None if boxes is None else [boxes])[0]

    def detect_batch(self, frames, boxes=None):
        """``detect`` on many frames, classifying all their faces in shared batches.

        Args:
            frames: sequence of frames (or a uint8 (N, H, W, 3) array).
            boxes: optional sequence, one (n_i, 4) box array per frame.

        Returns:
            list (one per frame) of lists of Face.
        """
        frames = list(frames)
        if boxes is not None:
            boxes = list(boxes)
            if len(boxes) != len(frames):
                raise InputError(f"got {len(boxes)} box lists for {len(frames)} frames")
        items = []
        for i, frame in enumerate(frames):
            check_frame(frame, f"frame {i}" if len(frames) > 1 else "frame")
            if boxes is not None:
                b = check_boxes(boxes[i], frame.shape)
            elif self.detector is None:
                raise InputError("this Runtime has detector=None: pass boxes to detect()")
            else:
                b = self.detector.detect(frame)
            items.append((frame, b))
        probs = self._classify(items)
        out, pos = [], 0
        for _, b in items:
            out.append([self._face(box, p) for box, p in zip(b, probs[pos:pos + len(b)])])
            pos += len(b)
        return out

    def stream(self, frames, every=5, smoothing=0.5, **tracker_options):
        """Follow faces through a live sequence of frames (camera, robot): detect every ``every`` frames,
        track between, smooth each face's probabilities over time.

        Args:
            frames: iterable of frames.
            every: detector period in frames.
            smoothing: weight of the past in the per-face exponential smoothing, in [0, 1).
            tracker_options: FaceTracker options (iou_threshold, max_missed, min_hits).

        Returns:
            A generator yielding, per frame, a list of Face with ``track_id`` set.
        """
        if self.detector is None:
            raise InputError("Runtime.stream needs a detector; this Runtime has detector=None")
        tracker = FaceTracker(self.detector, every=every, **tracker_options)
        smoother = ProbabilitySmoother(smoothing)
        for frame in frames:
            check_frame(frame)
            tracks = tracker.update(frame)
            probs = self._classify([(frame, np.array([b for _, b in tracks]).reshape(-1, 4))]) if tracks else []
            smoother.keep([t for t, _ in tracks])
            yield [self._face(box, smoother.update(tid, p), tid) for (tid, box), p in zip(tracks, probs)]

    def info(self):
        """What runs: backend, providers, precision, TTA, detector, and the model's metadata.

        Returns:
            dict (plain JSON).
        """
        desc = self.runner.describe()
        return {"model": self.model_path, "backend": desc.get("backend"), "providers": desc.get("providers"),
                "precision": desc.get("precision") or self.metadata.precision, "tta": self.tta,
                "batch_size": self.batch_size, "crop": getattr(self._crop, "__module__", "?") + "." +
                getattr(self._crop, "__name__", "?"),
                "detector": self.detector.describe() if hasattr(self.detector, "describe") else (
                    None if self.detector is None else type(self.detector).__name__),
                "backend_details": desc, "metadata": self.metadata.to_dict()}

    def close(self):
        """Free the model (the Runtime cannot be used afterwards)."""
        self.runner.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __repr__(self):
        desc = self.runner.describe() if self.runner.is_active else {"backend": "closed"}
        return (f"Runtime({os.path.basename(self.model_path)!r}, backend={desc['backend']!r}, "
                f"providers={desc.get('providers')}, tta={self.tta!r})")

    # -- internals -------------------------------------------------------------------------------------------
    def _face(self, box, probs, track_id=None):
        top = int(np.argmax(probs))
        return Face(_int_box(box), self.classes[top], np.asarray(probs, np.float32), float(probs[top]), track_id)

    def _classify(self, items):
        """Probabilities for every box of every (frame, boxes) item, in order: float32 (total, C)."""
        if not self.runner.is_active:
            raise FerEdgeError("this Runtime was closed")
        total = sum(len(b) for _, b in items)
        result = np.empty((total, len(self.classes)), np.float32)
        per_call, pos, count, segs = self._faces_per_call, 0, 0, []
        with self._lock:
            for frame, boxes in items:
                start = 0
                while start < len(boxes):
                    take = min(len(boxes) - start, per_call - count)
                    segs.append((frame, boxes[start:start + take]))
                    count += take
                    start += take
                    if count == per_call:
                        self._run(segs, count, result[pos:pos + count])
                        pos, count, segs = pos + count, 0, []
            if count:
                self._run(segs, count, result[pos:pos + count])
        return result

    def _run(self, segs, n, dest):
        md = self.metadata
        views, buf = self._views, self._buf
        if self.tta == "tencrop":
            self._crop_into(segs, lambda b: expand_boxes(b, md.margin, md.square), md.context_size, self._ctx[:n])
            buf[:views * n] = tta_batch(self._ctx[:n], md, "tencrop").reshape((views * n,) + buf.shape[1:])
        else:
            self._crop_into(segs, lambda b: network_boxes(b, md), md.input_size, buf[:n])
            if self.tta == "flip":
                buf[n:2 * n] = buf[:n, ..., ::-1]
        rows = views * n
        logits = self._infer(buf[:rows])
        if logits.shape != (rows, len(self.classes)):
            raise ModelError(f"{self.model_path} returned shape {logits.shape} for {rows} faces; expected "
                             f"({rows}, {len(self.classes)})")
        logits = logits.astype(np.float32, copy=False).reshape(views, n, -1)
        if md.output == "probabilities":
            dest[:] = logits.mean(axis=0) if views > 1 else logits[0]
        else:
            dest[:] = softmax(logits.mean(axis=0) if views > 1 else logits[0].copy())

    def _crop_into(self, segs, geometry, size, out):
        """Crop every segment's boxes (after ``geometry``) into ``out``, in one C call when possible."""
        md = self.metadata
        kw = dict(size=size, margin=0.0, square=False, mean=md.mean, std=md.std, threads=self.crop_threads)
        if len(segs) == 1:
            frame, boxes = segs[0]
            self._crop(frame, geometry(boxes), out=out, **kw)
        else:
            self._crop_batch([f for f, _ in segs], [geometry(b) for _, b in segs], out=out, **kw)

    def _infer(self, x):
        md = self.metadata
        if md.layout == "NHWC":
            x = x.reshape(x.shape[0], md.input_size, md.input_size, 1)
        if x.dtype != self._in_dtype:
            x = x.astype(self._in_dtype)
        step = self._max_rows or x.shape[0]
        if x.shape[0] <= step:
            return self.runner.infer({self._in_name: x}, check_inputs=False)[self._out_name]
        return np.concatenate([self.runner.infer({self._in_name: x[i:i + step]}, check_inputs=False)[self._out_name]
                               for i in range(0, x.shape[0], step)])
