"""fer_edge.preprocess: the fused C crop against its NumPy reference and against OpenCV."""

import ctypes
import mmap
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fer_edge import _preprocess_cy as _cy
from fer_edge import preprocess as P

cv2 = pytest.importorskip("cv2")

# Every gray-conversion path this CPU can run: portable C, AVX2, AVX-512.
SIMD_LEVELS = list(range(_cy.simd_supported() + 1))
COLOR_CHANNELS = [("bgr", 3), ("rgb", 3), ("bgra", 4), ("rgba", 4), ("gray", 1)]
CV_CODES = {"bgr": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_RGB2GRAY, "bgra": cv2.COLOR_BGRA2GRAY,
            "rgba": cv2.COLOR_RGBA2GRAY}


@pytest.fixture(params=SIMD_LEVELS, ids=lambda lvl: _cy.SIMD_NAMES[lvl])
def simd(request, monkeypatch):
    monkeypatch.setattr(P, "_SIMD_LIMIT", request.param)
    return request.param


def grey_levels(a, b, std=0.5):
    """Largest difference of two normalised batches, in grey levels."""
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) * 255 * std if a.size else 0.0


def random_frame(rng, h, w, channels, smooth=False):
    frame = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    if smooth:
        frame = cv2.GaussianBlur(frame, (0, 0), 2).reshape(h, w, channels)
    return frame[..., 0] if channels == 1 and rng.random() < 0.5 else frame


def inside_boxes(rng, n, h, w, lo, hi):
    s = rng.integers(lo, hi + 1, n)
    return np.stack([rng.integers(0, w - s + 1), rng.integers(0, h - s + 1), s, s], axis=1)


def test_build_has_openmp():
    if os.environ.get("FER_EDGE_ALLOW_NO_OPENMP") == "1":
        pytest.skip("FER_EDGE_ALLOW_NO_OPENMP=1")
    assert P.has_openmp(), "the extension was built without OpenMP (set FER_EDGE_ALLOW_NO_OPENMP=1 to allow)"


def test_resolve_threads():
    default = P.resolve_threads()
    assert default >= 1
    if P.has_openmp():
        assert P.resolve_threads(3) == 3
        assert P.resolve_threads(-1) == default
        assert P.resolve_threads(-1000) == 1
    else:
        assert P.resolve_threads(3) == 1
    with pytest.raises(ValueError):
        P.resolve_threads(0)
    for bad in (1.5, "2", True):
        with pytest.raises(TypeError):
            P.resolve_threads(bad)


# ------------------------------------------------------------------------------------------------
# Against OpenCV


@pytest.mark.parametrize("color,channels", COLOR_CHANNELS)
@pytest.mark.parametrize("lo,hi,size", [(49, 300, 48), (60, 260, 40), (4, 47, 48), (8, 30, 64)],
                         ids=["area", "area40", "linear", "linear64"])
def test_matches_opencv(simd, color, channels, lo, hi, size):
    rng = np.random.default_rng(lo + hi + channels)
    for smooth in (False, True):
        frame = random_frame(rng, 360, 400, channels, smooth)
        boxes = inside_boxes(rng, 40, 360, 400, lo, hi)
        ours = P.crop_faces(frame, boxes, size=size, color=color)
        crops = []
        for x, y, w, h in boxes:
            crop = frame[y:y + h, x:x + w]
            gray = cv2.cvtColor(crop, CV_CODES[color]) if channels > 1 else crop
            interp = cv2.INTER_AREA if w > size else cv2.INTER_LINEAR
            crops.append(cv2.resize(gray, (size, size), interpolation=interp))
        theirs = (np.stack(crops)[:, None].astype(np.float32) / 255 - 0.5) / 0.5
        assert grey_levels(ours, theirs) <= 1.5
        assert grey_levels(ours, P.crop_faces_opencv(frame, boxes, size=size, color=color)) <= 1.5


def test_mixed_axes_match_opencv_per_axis():
    # A box wider than S but shorter than it: area across, linear down (one cv2.resize per axis).
    rng = np.random.default_rng(5)
    frame = random_frame(rng, 100, 200, 3, smooth=True)
    boxes = np.array([[10, 20, 150, 30], [0, 0, 200, 47], [30, 5, 20, 90]])
    ours = P.crop_faces(frame, boxes, size=48, square=False)
    for face, (x, y, w, h) in zip(ours, boxes):
        gray = cv2.cvtColor(frame[y:y + h, x:x + w], cv2.COLOR_BGR2GRAY).astype(np.float32)
        across = cv2.resize(gray, (48, h), interpolation=cv2.INTER_AREA if w > 48 else cv2.INTER_LINEAR)
        both = cv2.resize(across, (48, 48), interpolation=cv2.INTER_AREA if h > 48 else cv2.INTER_LINEAR)
        assert grey_levels(face[0], (both / 255 - 0.5) / 0.5) <= 1.5


# ------------------------------------------------------------------------------------------------
# Against the reference, on random frames and sub-pixel boxes


@st.composite
def crop_cases(draw):
    color, channels = draw(st.sampled_from(COLOR_CHANNELS))
    h, w = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    n = draw(st.integers(0, 5))
    boxes = []
    for _ in range(n):
        bw = draw(st.floats(0.05, 160, allow_nan=False))
        bh = draw(st.floats(0.05, 160, allow_nan=False))
        # Anywhere that still overlaps the frame (by at least a sliver).
        x = draw(st.floats(-bw + 0.01, w - 0.01, allow_nan=False))
        y = draw(st.floats(-bh + 0.01, h - 0.01, allow_nan=False))
        if draw(st.booleans()):
            x, y, bw, bh = np.round([x, y, bw, bh]) + [0, 0, 1, 1]
            x, y = min(max(x, 1 - bw), w - 1), min(max(y, 1 - bh), h - 1)
        boxes.append((x, y, bw, bh))
    return dict(
        color=color, channels=channels, shape=(h, w), boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
        size=draw(st.integers(1, 40)), margin=draw(st.sampled_from([0.0, 0.1, 0.4])),
        square=draw(st.booleans()), mean=draw(st.sampled_from([0.5, 0.0, 0.4])),
        std=draw(st.sampled_from([0.5, 1.0, 0.25])), dtype=draw(st.sampled_from([np.float32, np.float16])),
        layout=draw(st.sampled_from(["NCHW", "NHWC"])), threads=draw(st.sampled_from([1, 2])),
        simd=draw(st.sampled_from(SIMD_LEVELS)), seed=draw(st.integers(0, 2**31)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crop_cases())
def test_matches_reference(case):
    rng = np.random.default_rng(case["seed"])
    frame = random_frame(rng, *case["shape"], case["channels"], smooth=rng.random() < 0.5)
    kw = {k: case[k] for k in ("size", "margin", "square", "mean", "std", "dtype", "layout", "color")}
    old = P._SIMD_LIMIT
    P._SIMD_LIMIT = case["simd"]
    try:
        ours = P.crop_faces(frame, case["boxes"], threads=case["threads"], **kw)
    finally:
        P._SIMD_LIMIT = old
    ref = P.crop_faces_reference(frame, case["boxes"], **kw)
    assert ours.dtype == ref.dtype == case["dtype"] and ours.shape == ref.shape
    if case["dtype"] == np.float32:
        # float32 sums against float64 ones: far below a grey level.
        assert grey_levels(ours, ref, case["std"]) <= 2e-3
    else:
        np.testing.assert_allclose(ours.astype(np.float32), ref.astype(np.float32), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("n", [1, 2, 7])
@pytest.mark.parametrize("size", [48, 37])
def test_threads_give_identical_results(n, threads, size):
    # Few large faces are split by bands of rows across threads; every face must come out bit-identical.
    rng = np.random.default_rng(n)
    frame = random_frame(rng, 700, 800, 3)
    boxes = inside_boxes(rng, n, 700, 800, 400, 690).astype(np.float64) + rng.random((n, 4))
    one = P.crop_faces(frame, boxes, size=size, threads=1)
    np.testing.assert_array_equal(P.crop_faces(frame, boxes, size=size, threads=threads), one)


def test_dtypes_and_layouts_agree():
    rng = np.random.default_rng(1)
    frame = random_frame(rng, 100, 120, 3)
    boxes = inside_boxes(rng, 6, 100, 120, 10, 90)
    nchw = P.crop_faces(frame, boxes, size=32)
    nhwc = P.crop_faces(frame, boxes, size=32, layout="NHWC")
    assert nchw.shape == (6, 1, 32, 32) and nhwc.shape == (6, 32, 32, 1)
    np.testing.assert_array_equal(nhwc[..., 0], nchw[:, 0])
    half = P.crop_faces(frame, boxes, size=32, dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, nchw.astype(np.float16))


def test_out_is_filled_in_place():
    rng = np.random.default_rng(2)
    frame = random_frame(rng, 50, 60, 3)
    boxes = [[5, 5, 30, 30], [20, 10, 35, 35]]
    for dtype in (np.float32, np.float16):
        out = np.full((2, 1, 24, 24), 7, dtype=dtype)
        assert P.crop_faces(frame, boxes, size=24, out=out, dtype=dtype) is out
        np.testing.assert_array_equal(out, P.crop_faces(frame, boxes, size=24, dtype=dtype))


def test_float16_conversion_matches_numpy():
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, 1.0, 65504, 65519.99, 65520, 1e9, np.inf, -np.inf, 2**-14, 2**-24, 2**-25,
                        3 * 2**-26, 2**-26, 1e-30, 0.1, 1 + 2**-11, 1 + 3 * 2**-11], dtype=np.float32)
    values = np.concatenate([bits.view(np.float32), special, -special])
    values = values[~np.isnan(values)]
    ours = np.empty(values.size, dtype=np.uint16)
    _cy.f32_to_f16(values, ours)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(ours, values.astype(np.float16).view(np.uint16))
    nan = np.empty(1, dtype=np.uint16)
    _cy.f32_to_f16(np.array([np.nan], dtype=np.float32), nan)
    assert np.isnan(nan.view(np.float16)[0])


# ------------------------------------------------------------------------------------------------
# Frames in memory


def test_strided_and_noncontiguous_frames(simd):
    rng = np.random.default_rng(4)
    big = random_frame(rng, 300, 400, 4)
    big3 = random_frame(rng, 300, 400, 3)
    boxes = np.array([[0, 0, 50, 50], [60.5, 30.25, 50, 70], [100, 90, 30, 40], [-10, -10, 40, 40]])
    view = big3[20:220, 30:330]
    assert P._check_frame(view, None)[0] is view  # rows far apart are read in place, not copied
    cases = {
        "row-strided view": view,
        "alpha dropped": big[20:220, 30:330, :3],
        "column step": big[::2, ::3, :3],
        "flipped": big[::-1, ::-1, :3],
        "fortran": np.asfortranarray(big[:200, :300, :3]),
        "gray column": big[:200, :300, 1],
    }
    for name, frame in cases.items():
        ours = P.crop_faces(frame, boxes, size=40)
        ref = P.crop_faces_reference(np.ascontiguousarray(frame), boxes, size=40)
        assert grey_levels(ours, ref) <= 2e-3, name


def _guarded(shape):
    """Two uint8 arrays of `shape`: one ending right before an unreadable page, one starting right after one."""
    if sys.platform != "linux":
        pytest.skip("needs mmap and mprotect")
    page = mmap.PAGESIZE
    nbytes = int(np.prod(shape))
    span = -(-nbytes // page) * page
    buf = mmap.mmap(-1, span + 3 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    guard = (base + page - 1) // page * page
    assert libc.mprotect(guard, page, 0) == 0
    assert libc.mprotect(guard + page + span, page, 0) == 0
    # The mmap stays alive as long as these views; it is unmapped when the last one goes.
    head = np.frombuffer(buf, dtype=np.uint8, count=span, offset=guard + page - base)
    return head[span - nbytes:].reshape(shape), head[:nbytes].reshape(shape)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_never_reads_outside_the_frame(simd, channels):
    # Frames that end right before (or start right after) an unreadable page: any read past the
    # frame is a segfault, whatever the SIMD path.
    rng = np.random.default_rng(channels)
    h, w = 37, 53
    for frame in _guarded((h, w, channels)):
        frame[...] = rng.integers(0, 256, frame.shape, dtype=np.uint8)
        boxes = np.array([[w - 17, h - 9, 40, 30], [w - 1, h - 1, 1, 1], [-5, -5, 8, 8], [0, 0, w, h],
                          [w - 33.5, h - 20.5, 33.5, 20.5], [-100, -100, 101, 101], [w - 2, 0, 1000, h]])
        for size in (5, 48):
            ours = P.crop_faces(frame, boxes, size=size, square=False)
            ref = P.crop_faces_reference(frame, boxes, size=size, square=False)
            assert grey_levels(ours, ref) <= 2e-3


def test_huge_box_mostly_outside_is_cheap_and_replicates():
    frame = np.zeros((20, 30, 3), dtype=np.uint8)
    frame[:, :, 2] = 200  # red
    frame[-1, -1] = (0, 255, 0)
    boxes = [[-1e6, -1e6, 1e6 + 1, 1e6 + 1], [25, 15, 1e7, 1e7]]
    ours = P.crop_faces(frame, boxes, size=16, square=False)
    ref = P.crop_faces_reference(frame, boxes, size=16, square=False)
    assert grey_levels(ours, ref) <= 2e-3
    red = (200 * 4899 / 16384 / 255 - 0.5) / 0.5
    np.testing.assert_allclose(ours[0], red, atol=1e-5)


def test_batch_over_frames():
    rng = np.random.default_rng(6)
    frames = [random_frame(rng, 80, 100, 3), random_frame(rng, 60, 50, 1), random_frame(rng, 90, 70, 4)]
    boxes = [inside_boxes(rng, 3, 80, 100, 10, 60), np.zeros((0, 4)), inside_boxes(rng, 2, 60, 50, 5, 40)]
    out = P.crop_faces_batch(frames, boxes, size=24, threads=2)
    expected = [P.crop_faces(f, b, size=24) for f, b in zip(frames, boxes)]
    np.testing.assert_array_equal(out, np.concatenate(expected))
    rgb = P.crop_faces_batch([frames[0], frames[0][..., ::-1]], [boxes[0], boxes[0]], size=24, color="rgb")
    np.testing.assert_allclose(rgb[3:], expected[0], atol=1e-6)
    with pytest.raises(ValueError, match="boxes"):
        P.crop_faces_batch(frames, boxes[:2])
    with pytest.raises(ValueError, match="frame 2"):
        P.crop_faces_batch(frames, [boxes[0], boxes[1], [[500, 500, 10, 10]]])


def test_no_boxes():
    frame = np.zeros((10, 10, 3), dtype=np.uint8)
    for boxes in ([], np.zeros((0, 4))):
        assert P.crop_faces(frame, boxes).shape == (0, 1, 48, 48)
        assert P.crop_faces_reference(frame, boxes).shape == (0, 1, 48, 48)


# ------------------------------------------------------------------------------------------------
# Bad input: an exception, never a crash, and `out` untouched


FRAME = np.random.default_rng(7).integers(0, 256, (40, 60, 3), dtype=np.uint8)
GOOD = [[10, 5, 20, 20]]


@pytest.mark.parametrize("fn", [P.crop_faces, P.crop_faces_reference], ids=["fast", "reference"])
@pytest.mark.parametrize("boxes,match", [
    ([[60, 5, 10, 10]], "outside"),      # right of the frame
    ([[-10, 5, 10, 10]], "outside"),     # left (touching is not overlapping)
    ([[5, 40, 10, 10]], "outside"),      # below
    ([[5, -30.5, 10, 30]], "outside"),   # above
    ([[5, 5, 0, 10]], "positive"),
    ([[5, 5, 10, -3]], "positive"),
    ([[5, 5, np.nan, 10]], "finite"),
    ([[np.inf, 5, 10, 10]], "finite"),
    ([[5, 5, 1e12, 10]], "finite"),
    ([10, 5, 20, 20], r"\(N, 4\)"),
    ([[10, 5, 20]], r"\(N, 4\)"),
    (np.zeros((2, 4, 1)), r"\(N, 4\)"),
])
def test_bad_boxes(fn, boxes, match):
    arr = np.asarray(boxes)
    out = np.full((len(arr), 1, 48, 48), 3.0, dtype=np.float32) if arr.ndim == 2 and arr.shape[1] == 4 else None
    with pytest.raises(ValueError, match=match):
        fn(FRAME, boxes, square=False, out=out)
    assert out is None or np.all(out == 3.0)


def test_error_leaves_out_untouched_and_names_the_box():
    out = np.full((3, 1, 48, 48), 3.0, dtype=np.float32)
    with pytest.raises(ValueError, match="box 2"):
        P.crop_faces(FRAME, [[0, 0, 10, 10], [5, 5, 10, 10], [100, 100, 5, 5]], out=out)
    assert np.all(out == 3.0)


@pytest.mark.parametrize("fn", [P.crop_faces, P.crop_faces_reference], ids=["fast", "reference"])
def test_bad_frames_and_arguments(fn):
    with pytest.raises(TypeError, match="uint8"):
        fn(FRAME.astype(np.float32), GOOD)
    with pytest.raises(TypeError, match="uint8"):
        fn(FRAME.astype(np.uint16), GOOD)
    with pytest.raises(TypeError, match="numpy array"):
        fn(FRAME.tolist(), GOOD)
    for shape in [(40, 60, 2), (40, 60, 5), (40,), (2, 40, 60, 3), (0, 60, 3), (40, 0)]:
        with pytest.raises(ValueError):
            fn(np.zeros(shape, dtype=np.uint8), GOOD)
    with pytest.raises(ValueError, match="channel"):
        fn(FRAME, GOOD, color="gray")
    with pytest.raises(ValueError, match="channel"):
        fn(FRAME[..., 0], GOOD, color="rgb")
    with pytest.raises(ValueError, match="color"):
        fn(FRAME, GOOD, color="hsv")
    with pytest.raises(TypeError, match="real numbers"):
        fn(FRAME, [["a", "b", "c", "d"]])
    with pytest.raises(TypeError, match="real numbers"):
        fn(FRAME, np.ones((1, 4), dtype=bool))
    for kw, exc in [(dict(size=0), ValueError), (dict(size=5000), ValueError), (dict(size=4.0), TypeError),
                    (dict(size=True), TypeError), (dict(std=0.0), ValueError), (dict(std=-1.0), ValueError),
                    (dict(mean=np.nan), ValueError), (dict(margin=-0.5), ValueError),
                    (dict(margin="0.1"), TypeError), (dict(dtype=np.float64), TypeError),
                    (dict(dtype=np.uint8), TypeError), (dict(dtype="nonsense"), TypeError),
                    (dict(layout="NCWH"), ValueError), (dict(threads=0), ValueError),
                    (dict(threads=1.0), TypeError)]:
        with pytest.raises(exc):
            fn(FRAME, GOOD, **kw)


@pytest.mark.parametrize("fn", [P.crop_faces, P.crop_faces_reference], ids=["fast", "reference"])
def test_bad_out(fn):
    with pytest.raises(ValueError, match="shape"):
        fn(FRAME, GOOD, out=np.empty((1, 1, 40, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        fn(FRAME, GOOD, out=np.empty((1, 1, 48, 48), dtype=np.float32), layout="NHWC")
    with pytest.raises(TypeError, match="dtype"):
        fn(FRAME, GOOD, out=np.empty((1, 1, 48, 48), dtype=np.float16))
    with pytest.raises(TypeError, match="dtype"):
        fn(FRAME, GOOD, out=np.empty((1, 1, 48, 48), dtype=np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        fn(FRAME, GOOD, out=np.empty((1, 1, 48, 96), dtype=np.float32)[..., ::2])
    ro = np.empty((1, 1, 48, 48), dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fn(FRAME, GOOD, out=ro)
    with pytest.raises(TypeError, match="numpy array"):
        fn(FRAME, GOOD, out=[[0.0]])


def test_kernel_checks_its_own_arguments():
    # The Cython layer refuses what preprocess.py would have caught, instead of reading wild memory.
    boxes = np.array([[1.0, 1.0, 5.0, 5.0]])
    idx = np.zeros(1, dtype=np.int32)
    out = np.empty(48 * 48, dtype=np.float32)
    with pytest.raises(ValueError, match="out has"):
        _cy.crop_faces([FRAME], [0], boxes, idx, out[:-1], 48, 0.0, True, 0.5, 0.5, 1)
    with pytest.raises(ValueError, match="frame index"):
        _cy.crop_faces([FRAME], [0], boxes, np.ones(1, dtype=np.int32), out, 48, 0.0, True, 0.5, 0.5, 1)
    with pytest.raises(ValueError, match="contiguous pixels"):
        _cy.crop_faces([FRAME[:, ::2]], [0], boxes, idx, out, 48, 0.0, True, 0.5, 0.5, 1)
    with pytest.raises(ValueError, match="invalid parameters"):
        _cy.crop_faces([FRAME], [0], boxes, idx, out, 48, 0.0, True, 0.5, 0.0, 1)
    with pytest.raises(ValueError, match="invalid parameters"):
        _cy.crop_faces([FRAME], [0], boxes, idx, out, 48, 0.0, True, 0.5, 0.5, 0)
    with pytest.raises(ValueError, match="channel count"):
        _cy.crop_faces([np.zeros((4, 4, 2), np.uint8)], [0], boxes, idx, out, 48, 0.0, True, 0.5, 0.5, 1)
