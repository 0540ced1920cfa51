"""Face detectors (OpenCV's Haar cascade, YuNet) and what video needs between them: an IoU tracker that
carries boxes between detections, and per-face smoothing of the probabilities over time.

A detector has one method, ``detect(frame) -> float64 (N, 4) boxes (x, y, w, h)`` in frame pixels,
largest first. Both detectors run on a copy of the frame scaled so its longer side is at most
``max_side`` pixels: detection cost grows with the pixel count, while the faces a FER model can read
(it sees 40 pixels) stay findable; the smallest face found is about ``24 * longer_side / max_side`` pixels.
"""

import os

import numpy as np

from .errors import FerEdgeError, ModelError
from .faces import check_frame

#: The cascade shipped with opencv-python(-headless) 4.x under cv2.data.haarcascades.
DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


def _cv2():
    import cv2

    return cv2


def _downscale(frame, max_side):
    """The frame scaled so its longer side is at most ``max_side``, and the scale used."""
    cv2 = _cv2()
    h, w = frame.shape[:2]
    scale = min(1.0, float(max_side) / max(h, w)) if max_side else 1.0
    if scale < 1.0:
        frame = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return frame, scale


class HaarDetector:
    """OpenCV's Viola-Jones frontal-face cascade on a downscaled, histogram-equalised gray frame."""

    name = "haar"

    def __init__(self, cascade=None, max_side=320, scale_factor=1.1, min_neighbors=5, min_size=24):
        """Args:
            cascade: cascade XML file (None: the frontal-face cascade shipped with OpenCV).
            max_side: longer side of the frame the cascade scans, in pixels (0: full size).
            scale_factor: step between the scanned face sizes (smaller finds more, runs slower).
            min_neighbors: overlapping hits a face needs (higher: fewer false faces, more misses).
            min_size: smallest face scanned, in pixels of the downscaled frame (the cascade's window is 24).
        """
        cv2 = _cv2()
        path = cascade or os.path.join(cv2.data.haarcascades, DEFAULT_CASCADE)
        if not os.path.isfile(path):
            raise ModelError(f"Haar cascade {path} not found")
        try:
            self.cascade = cv2.CascadeClassifier(path)
        except (cv2.error, SystemError):  # OpenCV raises either for a malformed XML file
            self.cascade = None
        if self.cascade is None or self.cascade.empty():
            raise ModelError(f"{path} is not a Haar cascade OpenCV can read")
        self.path = path
        self.max_side, self.scale_factor = int(max_side), float(scale_factor)
        self.min_neighbors, self.min_size = int(min_neighbors), int(min_size)

    def detect(self, frame):
        """Faces in a uint8 gray or BGR frame.

        Returns:
            float64 (N, 4) boxes (x, y, w, h) in frame pixels, largest first.
        """
        cv2 = _cv2()
        check_frame(frame)
        gray = frame if frame.ndim == 2 else (frame[..., 0] if frame.shape[2] == 1 else
                                              cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        small, scale = _downscale(gray, self.max_side)
        # Equalising makes the cascade robust to dark scenes (night video, backlit faces).
        small = cv2.equalizeHist(small)
        found = self.cascade.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        return _sorted(np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale)

    def describe(self):
        """Settings, for Runtime.info()."""
        return {"name": self.name, "cascade": os.path.basename(self.path), "max_side": self.max_side,
                "scale_factor": self.scale_factor, "min_neighbors": self.min_neighbors}


class YuNetDetector:
    """OpenCV's YuNet CNN face detector (``cv2.FaceDetectorYN``) from an .onnx file the user supplies."""

    name = "yunet"

    def __init__(self, model_path, max_side=640, score_threshold=0.7, nms_threshold=0.3, top_k=500):
        """Args:
            model_path: YuNet ONNX file (e.g. face_detection_yunet_2023mar.onnx from the OpenCV model zoo).
            max_side: longer side of the frame YuNet sees, in pixels (0: full size).
            score_threshold: minimum face confidence.
            nms_threshold: overlap above which weaker boxes are suppressed.
            top_k: most boxes kept before suppression.
        """
        cv2 = _cv2()
        if not hasattr(cv2, "FaceDetectorYN"):
            raise FerEdgeError("this OpenCV build has no FaceDetectorYN (YuNet needs OpenCV >= 4.5.4)")
        if not os.path.isfile(model_path):
            raise ModelError(f"YuNet model {model_path} not found")
        try:
            self.net = cv2.FaceDetectorYN.create(model_path, "", (320, 320), float(score_threshold),
                                                 float(nms_threshold), int(top_k))
        except (cv2.error, SystemError) as exc:
            raise ModelError(f"{model_path} is not a YuNet model OpenCV can load ({str(exc).strip()[:200]})") from None
        self.path, self.max_side, self._size = model_path, int(max_side), None

    def detect(self, frame):
        """Faces in a uint8 gray or BGR frame.

        Returns:
            float64 (N, 4) boxes (x, y, w, h) in frame pixels, largest first.
        """
        cv2 = _cv2()
        check_frame(frame)
        bgr = frame if frame.ndim == 3 and frame.shape[2] == 3 else cv2.cvtColor(
            frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
        small, scale = _downscale(bgr, self.max_side)
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self.net.setInputSize(size)
            self._size = size
        _, faces = self.net.detect(small)
        boxes = np.zeros((0, 4)) if faces is None else np.asarray(faces, dtype=np.float64)[:, :4]
        return _sorted(boxes / scale)

    def describe(self):
        """Settings, for Runtime.info()."""
        return {"name": self.name, "model": self.path, "max_side": self.max_side}


def _sorted(boxes):
    if len(boxes) > 1:
        boxes = boxes[np.argsort(-boxes[:, 2] * boxes[:, 3], kind="stable")]
    return boxes


#: Detector name -> class; ``make_detector("name:PATH")`` passes PATH as the first argument.
DETECTORS = {"haar": HaarDetector, "yunet": YuNetDetector}


def make_detector(spec, **options):
    """Build a detector from its name.

    Args:
        spec: None or "none" (the caller gives boxes), "haar", "haar:CASCADE.xml", "yunet:MODEL.onnx", or an
            object with a ``detect(frame)`` method, returned as is.
        options: keyword arguments for the detector class (e.g. max_side).

    Returns:
        A detector, or None.
    """
    if spec is None or spec == "none":
        return None
    if hasattr(spec, "detect"):
        return spec
    if not isinstance(spec, str):
        raise FerEdgeError(f"detector must be a name such as 'haar' or 'yunet:PATH', got {type(spec).__name__}")
    name, _, arg = spec.partition(":")
    if name not in DETECTORS:
        raise FerEdgeError(f"unknown detector {spec!r}: choose haar, haar:CASCADE.xml, yunet:MODEL.onnx or none")
    if name == "yunet" and not arg:
        raise FerEdgeError("the YuNet detector needs its model file: detector='yunet:PATH/face_detection_yunet.onnx'")
    return DETECTORS[name](arg, **options) if arg else DETECTORS[name](**options)


# -- video: tracking and smoothing ---------------------------------------------------------------------------
def iou_matrix(a, b):
    """Intersection over union of every (x, y, w, h) box in ``a`` with every box in ``b``.

    Returns:
        float64 (len(a), len(b)).
    """
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


class _Track:
    __slots__ = ("id", "box", "hits", "missed", "confirmed")

    def __init__(self, track_id, box, confirmed):
        self.id, self.box, self.hits, self.missed, self.confirmed = track_id, box, 1, 0, confirmed


class FaceTracker:
    """Detect every ``every`` frames and carry each face's box, under a stable id, to the frames between.

    Detections are matched to tracks greedily by IoU. A face must be seen in ``min_hits`` detection rounds
    before it is reported (a lone false detection never is), except in the first round, so a video's first
    frames have their faces. A face missed in more than ``max_missed`` rounds in a row is no longer
    reported, but its track waits ``keep_lost`` more rounds: found again there, it comes back at once under
    its id (a detector's occasional misses do not cost ``min_hits`` rounds of frames).
    """

    def __init__(self, detector, every=5, iou_threshold=0.3, max_missed=1, min_hits=2, keep_lost=2):
        """Args:
            detector: object with ``detect(frame)``.
            every: run the detector on every ``every``-th frame (1: every frame).
            iou_threshold: minimum overlap for a detection to continue a track.
            max_missed: detection rounds a face may be missed and still be reported at its last box.
            min_hits: detection rounds before a new face is reported (1: at once).
            keep_lost: further rounds a missed face's track is kept, unreported, to be found again.
        """
        if int(every) < 1:
            raise FerEdgeError(f"every must be >= 1, got {every}")
        self.detector, self.every = detector, int(every)
        self.iou_threshold, self.max_missed, self.min_hits = float(iou_threshold), int(max_missed), int(min_hits)
        self.keep_lost = int(keep_lost)
        self.tracks, self._next_id, self._frame, self._rounds = [], 0, 0, 0

    def update(self, frame):
        """Advance one frame.

        Returns:
            list of (track_id, box) for the faces reported in this frame; box is float64 (x, y, w, h).
        """
        if self._frame % self.every == 0:
            self.observe(self.detector.detect(frame))
        self._frame += 1
        return self.current()

    def current(self):
        """The reported faces as they stand: list of (track_id, box)."""
        return [(t.id, t.box) for t in self.tracks if t.confirmed and t.missed <= self.max_missed]

    def observe(self, boxes):
        """Feed one round of detections (float (N, 4) boxes) to the tracks."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        first = self._rounds == 0
        self._rounds += 1
        matched_t, matched_d = set(), set()
        if self.tracks and len(boxes):
            iou = iou_matrix([t.box for t in self.tracks], boxes)
            for flat in np.argsort(-iou, axis=None):
                ti, di = divmod(int(flat), len(boxes))
                if iou[ti, di] < self.iou_threshold:
                    break
                if ti in matched_t or di in matched_d:
                    continue
                matched_t.add(ti)
                matched_d.add(di)
                t = self.tracks[ti]
                t.box, t.hits, t.missed = boxes[di], t.hits + 1, 0
                t.confirmed = t.confirmed or t.hits >= self.min_hits
        alive = []
        for i, t in enumerate(self.tracks):
            if i not in matched_t:
                t.missed += 1
            if t.missed <= self.max_missed + self.keep_lost:
                alive.append(t)
        for di in range(len(boxes)):
            if di not in matched_d:
                alive.append(_Track(self._next_id, boxes[di], first or self.min_hits <= 1))
                self._next_id += 1
        self.tracks = alive


class ProbabilitySmoother:
    """Exponential smoothing of each face's class probabilities over time: ``s = a * s + (1 - a) * p``."""

    def __init__(self, alpha=0.5):
        """Args:
            alpha: weight of the past in [0, 1); 0 turns smoothing off.
        """
        if not 0.0 <= float(alpha) < 1.0:
            raise FerEdgeError(f"smoothing must lie in [0, 1), got {alpha}")
        self.alpha, self.state = float(alpha), {}

    def update(self, track_id, probs):
        """The smoothed probabilities of one face in the next frame (probs: float (C,))."""
        if self.alpha == 0.0 or track_id is None:
            return probs
        prev = self.state.get(track_id)
        out = probs if prev is None else self.alpha * prev + (1.0 - self.alpha) * probs
        self.state[track_id] = out
        return out

    def keep(self, track_ids):
        """Forget faces whose tracks ended."""
        ids = set(track_ids)
        for k in [k for k in self.state if k not in ids]:
            del self.state[k]
