"""fer_edge.Runtime on the bundled model and on tiny exact models: API, preprocessing, TTA, bad input."""

import json

import numpy as np
import pytest

import fer_edge
from fer_edge import Runtime
from fer_edge.constants import CLASS_NAMES
from fer_edge.errors import FerEdgeError, ModelError
from fer_edge.faces import InputError
from fer_edge.metadata import ModelMetadata
from tests.test_runtime_support import PatchDetector, expected_probs, generated_face, make_linear_onnx

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def rt():
    with Runtime(tta="none") as r:
        yield r


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "linear.onnx"
    w, b = make_linear_onnx(path)
    return path, w, b


def _faces(n, seed=0, side=48):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


# -- the bundled model ---------------------------------------------------------------------------------------
def test_bundled_model_classes_info_and_sanity(rt):
    assert rt.classes == CLASS_NAMES
    info = rt.info()
    assert info["backend"] == "onnxruntime" and "CPUExecutionProvider" in info["providers"]
    assert info["metadata"]["input_size"] == 40 and info["precision"] == "fp32"
    json.dumps(info)  # plain JSON
    p = rt.predict_faces(_faces(5))
    assert p.shape == (5, 7) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert np.isfinite(p).all()


def test_lazy_attribute():
    assert fer_edge.Runtime is Runtime


@pytest.mark.parametrize("n", [0, 1, 7, 64, 130])
def test_predict_faces_matches_bare_session(rt, n):
    faces = _faces(n, seed=n)
    got = rt.predict_faces(faces)
    assert got.shape == (n, 7)
    if n:
        x = ((faces[:, None, 4:44, 4:44].astype(np.float32) / 255) - 0.5) / 0.5
        logits = rt.runner.session.run(None, {"input": x})[0]
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(got, e / e.sum(1, keepdims=True), atol=1e-5)


def test_predict_faces_gray_equals_bgr_any_size(rt):
    import cv2

    gray = np.stack([cv2.resize(generated_face(48, seed=i), (90, 90)) for i in range(4)])
    bgr = np.stack([cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in gray])
    np.testing.assert_allclose(rt.predict_faces(gray), rt.predict_faces(bgr), atol=1e-4)
    # non-square faces take the per-face path
    assert rt.predict_faces(np.zeros((3, 30, 50, 3), np.uint8)).shape == (3, 7)
    assert rt.predict_faces(np.zeros((2, 61, 40), np.uint8)).shape == (2, 7)


def test_batching_does_not_change_results(linear):
    path, w, b = linear
    faces = _faces(37, seed=3)
    with Runtime(path, tta="none", batch_size=4) as small, Runtime(path, tta="none", batch_size=64) as big:
        np.testing.assert_allclose(small.predict_faces(faces), big.predict_faces(faces), atol=1e-6)
        np.testing.assert_allclose(big.predict_faces(faces), expected_probs(faces, w, b), atol=1e-5)


def test_tta_modes(linear):
    path, w, b = linear
    faces = _faces(6, seed=4)
    with Runtime(path, tta="flip") as flip:
        got = flip.predict_faces(faces)
        # flip TTA averages the logits of each face and its mirror image
        x = (faces[:, 4:44, 4:44].astype(np.float64) / 255 - 0.5) / 0.5
        logits = (x.reshape(6, -1) @ w + b + x[:, :, ::-1].reshape(6, -1) @ w + b) / 2
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(got, e / e.sum(1, keepdims=True), atol=1e-5)
        np.testing.assert_allclose(flip.predict_faces(faces[:, :, ::-1].copy()), got, atol=1e-5)
    with Runtime(path, tta="tencrop") as ten:
        p = ten.predict_faces(faces)
        assert p.shape == (6, 7)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)


def test_tta_default_follows_metadata(tmp_path):
    path = tmp_path / "flip.onnx"
    make_linear_onnx(path, ModelMetadata(extra={"tta": "flip"}))
    with Runtime(path) as r:
        assert r.tta == "flip" and r.info()["tta"] == "flip"


def test_probabilities_output_is_averaged_not_softmaxed(tmp_path):
    path = tmp_path / "probs.onnx"
    w, b = make_linear_onnx(path, ModelMetadata(output="probabilities"), output="probabilities")
    faces = _faces(3)
    with Runtime(path, tta="none") as r:
        x = (faces[:, 4:44, 4:44].astype(np.float64) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(r.predict_faces(faces), x.reshape(3, -1) @ w + b, atol=1e-4)


def test_nhwc_layout(tmp_path):
    path = tmp_path / "nhwc.onnx"
    w, b = make_linear_onnx(path, ModelMetadata(layout="NHWC"), layout="NHWC")
    faces = _faces(5)
    with Runtime(path, tta="none") as r:
        # the flattened NHWC image with one channel has the same element order as NCHW
        np.testing.assert_allclose(r.predict_faces(faces), expected_probs(faces, w, b), atol=1e-5)


def test_static_batch_one_model(tmp_path):
    path = tmp_path / "b1.onnx"
    w, b = make_linear_onnx(path, batch=1)
    faces = _faces(5)
    with Runtime(path, tta="flip") as r:
        assert r.predict_faces(faces).shape == (5, 7)


# -- frames and boxes ----------------------------------------------------------------------------------------
def _frame_with_faces(boxes, shape=(240, 320)):
    import cv2

    frame = np.full(shape + (3,), 12, np.uint8)
    for i, (x, y, w, h) in enumerate(boxes):
        frame[y:y + h, x:x + w] = cv2.cvtColor(generated_face(w, seed=i), cv2.COLOR_GRAY2BGR)
    return frame


def test_detect_with_given_boxes(linear):
    path, w, b = linear
    boxes = [(10, 20, 96, 96), (150, 60, 48, 48)]
    frame = _frame_with_faces(boxes)
    with Runtime(path, detector=None, tta="none") as r:
        faces = r.detect(frame, boxes=boxes)
        assert [f.box for f in faces] == boxes
        for f in faces:
            assert f.label == r.classes[int(np.argmax(f.scores))] and f.score == pytest.approx(f.scores.max())
            assert f.scores.shape == (7,) and f.track_id is None
        # the 48x48 box is exactly a FER image: its central 40x40 is what the network sees
        crop = frame[60:108, 150:198, 0][None]
        np.testing.assert_allclose(faces[1].scores, expected_probs(crop, w, b)[0], atol=1e-5)
        d = faces[0].to_dict(r.classes)
        assert d["box"] == list(boxes[0]) and set(d["scores"]) == set(CLASS_NAMES)
        gray = r.detect(frame[..., 0].copy(), boxes=boxes)
        np.testing.assert_allclose(gray[1].scores, faces[1].scores, atol=1e-4)
        assert r.detect(frame, boxes=np.zeros((0, 4))) == []


def test_detect_batch_equals_detect_and_uses_detector(linear):
    path, _, _ = linear
    frames = [_frame_with_faces([(10 + 5 * i, 20, 80, 80), (200, 100, 60, 60)]) for i in range(5)]
    with Runtime(path, detector=PatchDetector(), tta="none", batch_size=3) as r:
        batch = r.detect_batch(frames)
        assert [len(f) for f in batch] == [2] * 5
        for frame, faces in zip(frames, batch):
            single = r.detect(frame)
            assert [f.box for f in single] == [f.box for f in faces]
            np.testing.assert_allclose(np.stack([f.scores for f in single]), np.stack([f.scores for f in faces]),
                                       atol=1e-6)


def test_haar_runtime_on_blank_frame(rt):
    assert rt.detect(np.zeros((240, 320, 3), np.uint8)) == []


def test_stream_tracks_and_smooths(linear):
    path, _, _ = linear
    frames = [_frame_with_faces([(10 + 2 * i, 40, 80, 80)]) for i in range(8)]
    with Runtime(path, detector=PatchDetector(), tta="none") as r:
        out = list(r.stream(frames, every=3, smoothing=0.5))
        assert [len(f) for f in out] == [1] * 8
        assert {f[0].track_id for f in out} == {0}
        assert r.detector.calls == 3  # frames 0, 3, 6
        np.testing.assert_allclose([f[0].scores.sum() for f in out], 1, atol=1e-5)


# -- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("faces, match", [
    (np.zeros((2, 48, 48), np.float32), "uint8"),
    (np.full((2, 48, 48), np.nan, np.float32), "NaN"),
    (np.zeros((48, 48), np.uint8), "shape"),
    (np.zeros((2, 48, 48, 4), np.uint8), "shape"),
    (np.zeros((2, 0, 48), np.uint8), "1x1"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_predict_faces_rejects_bad_arrays(rt, faces, match):
    with pytest.raises(InputError, match=match):
        rt.predict_faces(faces)


@pytest.mark.parametrize("frame, match", [
    (None, "None"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((20, 20, 3), np.float64), "uint8"),
    (np.full((20, 20, 3), np.nan), "NaN"),
    (np.zeros((20, 20, 2), np.uint8), "shape"),
])
def test_detect_rejects_bad_frames(rt, frame, match):
    with pytest.raises(InputError, match=match):
        rt.detect(frame)


@pytest.mark.parametrize("boxes, match", [
    ([[0, 0, np.nan, 10]], "NaN"),
    ([[0, 0, 10]], "shape"),
    ([[0, 0, -5, 10]], "positive"),
    ([[500, 0, 10, 10]], "outside"),
    ("abc", "numbers"),
])
def test_detect_rejects_bad_boxes(rt, boxes, match):
    with pytest.raises(InputError, match=match):
        rt.detect(np.zeros((100, 100, 3), np.uint8), boxes=boxes)


def test_no_detector_needs_boxes(linear):
    with Runtime(linear[0], detector=None) as r:
        with pytest.raises(InputError, match="pass boxes"):
            r.detect(np.zeros((50, 50, 3), np.uint8))
        with pytest.raises(InputError, match="box lists"):
            r.detect_batch([np.zeros((50, 50, 3), np.uint8)], boxes=[])


def test_missing_empty_and_non_models(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Runtime(tmp_path / "nope.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        Runtime(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 20)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Runtime(tmp_path / "text.onnx")
    (tmp_path / "model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ModelError, match="extension"):
        Runtime(tmp_path / "model.bin")


def test_model_without_metadata(tmp_path):
    path = tmp_path / "bare.onnx"
    w, b = make_linear_onnx(path, with_metadata=False)
    with pytest.raises(ModelError, match="no fer_edge metadata"):
        Runtime(path)
    faces = _faces(3)
    with Runtime(path, metadata=ModelMetadata(), tta="none") as r:
        np.testing.assert_allclose(r.predict_faces(faces), expected_probs(faces, w, b), atol=1e-5)
    with Runtime(path, metadata={"input_size": 40, "context_size": 48}, tta="none") as r:
        assert r.classes == CLASS_NAMES


def test_model_disagreeing_with_its_metadata(tmp_path):
    path = tmp_path / "five.onnx"
    make_linear_onnx(path, n_classes=5)
    with pytest.raises(ModelError, match="7 class scores"):
        Runtime(path)
    path = tmp_path / "size.onnx"
    make_linear_onnx(path, input_size=32)
    with pytest.raises(ModelError, match="does not match the metadata"):
        Runtime(path)


def test_bad_options(linear):
    with pytest.raises(FerEdgeError, match="TTA"):
        Runtime(linear[0], tta="rotate")
    with pytest.raises(FerEdgeError, match="backend"):
        Runtime(linear[0], backend="openvino")
    with pytest.raises(FerEdgeError, match="detector"):
        Runtime(linear[0], detector="mtcnn")
    with pytest.raises(FerEdgeError, match="batch_size"):
        Runtime(linear[0], batch_size=0)
    with pytest.raises(FerEdgeError, match="not available"):
        Runtime(linear[0], providers=["NoSuchExecutionProvider"])
    with pytest.raises(ModelError, match="tensorrt"):
        Runtime(linear[0], backend="tensorrt")


def test_closed_runtime_refuses(linear):
    r = Runtime(linear[0])
    r.close()
    with pytest.raises(FerEdgeError, match="closed"):
        r.predict_faces(_faces(1))


@pytest.mark.parametrize("boxes", [[[10, 12, 40, 40], [0, 0, 96, 80]], [[-10, -6, 50, 50], [70, 50, 60, 60]]])
def test_crop_fallback_agrees_with_the_reference(boxes):
    from fer_edge.faces import crop_faces_batch_fallback, crop_faces_fallback, get_crop_faces

    preprocess = pytest.importorskip("fer_edge.preprocess")
    frame = np.random.default_rng(5).integers(0, 256, (100, 110, 3), dtype=np.uint8)
    want = preprocess.crop_faces_reference(frame, boxes, size=40, margin=0.0, square=False)
    got = crop_faces_fallback(frame, boxes, size=40, margin=0.0, square=False)
    # OpenCV rounds to uint8 on the way (gray, then resize): within 2 grey levels of the exact reference
    np.testing.assert_allclose(got, want, atol=2 / 255 / 0.5 + 1e-6)
    both = crop_faces_batch_fallback([frame, frame[..., 1].copy()], [boxes, boxes], size=40, margin=0.0,
                                     square=False)
    assert both.shape == (4, 1, 40, 40)
    assert get_crop_faces()[0] is preprocess.crop_faces
