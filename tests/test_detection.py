"""Face detectors, the IoU tracker and per-face smoothing."""

import os

import numpy as np
import pytest

from fer_edge.detection import (FaceTracker, HaarDetector, ProbabilitySmoother, YuNetDetector, iou_matrix,
                                make_detector)
from fer_edge.errors import FerEdgeError, ModelError
from fer_edge.faces import InputError

TEST_VIDEO = os.environ.get("FER_EDGE_TEST_VIDEO",
                            os.path.join(os.path.dirname(__file__), "..", "..", "shared", "media", "test.mp4"))


def test_haar_on_blank_and_noise_frames():
    det = HaarDetector()
    out = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert out.shape == (0, 4) and out.dtype == np.float64
    assert det.detect(np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8)).shape[1] == 4
    assert det.describe()["name"] == "haar"
    with pytest.raises(InputError):
        det.detect(np.zeros((0, 10, 3), np.uint8))


def test_haar_finds_the_face_in_the_real_clip():
    if not os.path.isfile(TEST_VIDEO):
        pytest.skip(f"{TEST_VIDEO} not present")
    import cv2

    cap = cv2.VideoCapture(TEST_VIDEO)
    det, found, n = HaarDetector(), 0, 0
    while n < 40:
        ok, frame = cap.read()
        if not ok:
            break
        boxes = det.detect(frame)
        n += 1
        # the woman's face is near (270, 25) and about 130 px wide in this 596x336 clip
        found += any(abs(b[0] - 270) < 60 and 80 < b[2] < 200 for b in boxes)
    cap.release()
    assert n == 40 and found >= 36


def test_bad_cascade_and_yunet_files(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<nonsense/>")
    with pytest.raises(ModelError, match="not a Haar cascade"):
        HaarDetector(str(bad))
    with pytest.raises(ModelError, match="not found"):
        HaarDetector(str(tmp_path / "missing.xml"))
    with pytest.raises(ModelError, match="not found"):
        YuNetDetector(str(tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a network" * 10)
    with pytest.raises(ModelError, match="YuNet"):
        YuNetDetector(str(junk))


def test_make_detector_specs(tmp_path):
    assert make_detector(None) is None and make_detector("none") is None
    assert isinstance(make_detector("haar", max_side=200), HaarDetector)
    obj = type("D", (), {"detect": lambda self, f: np.zeros((0, 4))})()
    assert make_detector(obj) is obj
    with pytest.raises(FerEdgeError, match="needs its model file"):
        make_detector("yunet")
    with pytest.raises(FerEdgeError, match="unknown detector"):
        make_detector("retinaface")
    with pytest.raises(FerEdgeError):
        make_detector(42)


def test_iou_matrix():
    a = [[0, 0, 10, 10], [100, 100, 10, 10]]
    b = [[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 1, 1]]
    m = iou_matrix(a, b)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m[0], [1.0, 50 / 150, 0.0])
    assert (m[1] == 0).all()


class ScriptedDetector:
    """Returns the boxes listed for each call, in order."""

    def __init__(self, rounds):
        self.rounds, self.calls = list(rounds), 0

    def detect(self, frame):
        boxes = self.rounds[self.calls] if self.calls < len(self.rounds) else []
        self.calls += 1
        return np.array(boxes, np.float64).reshape(-1, 4)


FACE = [10, 10, 50, 50]
MOVED = [14, 12, 50, 50]
FALSE = [200, 200, 30, 30]


def test_tracker_keeps_ids_and_detects_every_k():
    det = ScriptedDetector([[FACE], [MOVED], [MOVED]])
    tr = FaceTracker(det, every=3)
    out = [tr.update(None) for _ in range(9)]
    assert det.calls == 3
    assert all(len(o) == 1 and o[0][0] == 0 for o in out)
    np.testing.assert_array_equal(out[2][0][1], FACE)   # held between detections
    np.testing.assert_array_equal(out[3][0][1], MOVED)  # updated at the next detection


def test_tracker_needs_min_hits_after_the_first_round():
    det = ScriptedDetector([[FACE], [FACE, FALSE], [FACE], [FACE, [400, 50, 30, 30]], [FACE, [401, 51, 30, 30]]])
    tr = FaceTracker(det, every=1, min_hits=2)
    counts = [len(tr.update(None)) for _ in range(5)]
    # the lone false face (round 2) is never reported; one seen twice in a row (rounds 4, 5) is, from round 5
    assert counts == [1, 1, 1, 1, 2]


def test_tracker_misses_and_revival():
    det = ScriptedDetector([[FACE], [], [], [FACE], [], [], [], [], [FACE]])
    tr = FaceTracker(det, every=1, max_missed=1, keep_lost=2, min_hits=2)
    out = [tr.update(None) for _ in range(9)]
    ids = [o[0][0] if o else None for o in out]
    # missed once: still reported; missed twice: hidden; found again within keep_lost: back under id 0;
    # lost longer than max_missed + keep_lost rounds: a new face, which needs min_hits rounds again
    assert ids == [0, 0, None, 0, 0, None, None, None, None]


def test_tracker_two_faces_and_bad_every():
    det = ScriptedDetector([[FACE, FALSE], [FALSE, MOVED]])
    tr = FaceTracker(det, every=1)
    first = dict(tr.update(None))
    second = dict(tr.update(None))
    assert set(first) == set(second) == {0, 1}
    np.testing.assert_array_equal(second[0], MOVED)
    with pytest.raises(FerEdgeError):
        FaceTracker(det, every=0)


def test_smoother():
    s = ProbabilitySmoother(0.5)
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(s.update(7, a), a)
    np.testing.assert_allclose(s.update(7, b), [0.5, 0.5])
    np.testing.assert_allclose(s.update(8, b), b)  # a new face starts fresh
    s.keep([8])
    np.testing.assert_allclose(s.update(7, b), b)  # forgotten
    off = ProbabilitySmoother(0.0)
    off.update(1, a)
    np.testing.assert_allclose(off.update(1, b), b)
    with pytest.raises(FerEdgeError):
        ProbabilitySmoother(1.0)
