"""Face boxes in a video frame to a normalised network batch, in one fused C pass.

Between the face detector and the network every face is cropped from the frame, turned gray, resized
to the model's input side and normalised. :func:`crop_faces` does all of it in one pass of C over the
batch (csrc/preprocess.c), split across faces by OpenMP, writing straight into a preallocated
``(N, 1, S, S)`` float32 or float16 array. :func:`crop_faces_reference` computes the same thing with
plain NumPy (the oracle of the tests and the yardstick of the benchmark) and :func:`crop_faces_opencv`
is the usual per-face OpenCV loop it replaces.

How a box is sampled (the OpenCV loop agrees for integer boxes inside the frame, without margin):

* A box is ``(x, y, w, h)`` in pixels, integer or float. It is widened by ``margin * w`` (and
  ``margin * h``) on every side and, with ``square``, grown to a square of its longer side about its
  centre (as :func:`fer_edge.faces.expand_boxes`).
* The result is a continuous region ``[x, x + w) x [y, y + h)`` where pixel ``(i, j)`` covers
  ``[i, i + 1) x [j, j + 1)``; beyond the frame the border pixels are replicated.
* Each axis is resampled on its own. Shrinking (region longer than ``size``): output ``k`` is the mean
  of the region over the cell ``[x + k w / size, x + (k + 1) w / size)``, which is OpenCV's
  ``INTER_AREA``. Enlarging or equal: output ``k`` is the linear interpolation at pixel-centre
  coordinate ``x + (k + 0.5) w / size - 0.5``, clamped to ``[x, x + max(w - 1, 0)]``, which is
  OpenCV's ``INTER_LINEAR`` on the crop. So for an integer box inside the frame the face is
  ``cv2.resize(gray[y:y+h, x:x+w], (size, size))`` with ``INTER_AREA`` when shrinking and
  ``INTER_LINEAR`` when enlarging (within 1.5 grey levels: OpenCV rounds to uint8 twice).
* Gray is ``(1868 B + 9617 G + 4899 R) / 16384``, OpenCV's fixed-point form of
  ``0.114 B + 0.587 G + 0.299 R``, kept unrounded.
* Output pixels are ``(gray / 255 - mean) / std``. With one channel, NCHW ``(N, 1, S, S)`` and NHWC
  ``(N, S, S, 1)`` hold the same bytes; ``layout`` only picks the shape.
"""

import importlib
import math
import numbers
import os

import numpy as np


def _load_extension():
    # libgomp reads its wait policy once, when the extension loads it. By default an idle OpenMP
    # thread spins for about 300,000 rounds; on a machine whose cores are busy elsewhere (a training
    # run, an inference runtime's own pool) a spinning thread holds the CPU its partner needs, and
    # 2 threads measured 20-60x slower than 1. 1,000 rounds (what libgomp itself uses once it knows
    # it is oversubscribed) kept the 2-thread speedup on idle cores and bounded the loss on busy
    # ones. A policy the user set is kept, and the variable is removed again so that nothing else
    # inherits it. No effect when libgomp was already loaded by another module.
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return importlib.import_module("fer_edge._preprocess_cy")
    os.environ["GOMP_SPINCOUNT"] = "1000"
    try:
        return importlib.import_module("fer_edge._preprocess_cy")
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)


_cy = _load_extension()

__all__ = [
    "COLORS",
    "LAYOUTS",
    "crop_faces",
    "crop_faces_batch",
    "crop_faces_opencv",
    "crop_faces_reference",
    "has_openmp",
    "resolve_threads",
]

#: Accepted ``color`` values and the channel count each needs.
COLORS = {"gray": 1, "bgr": 3, "rgb": 3, "bgra": 4, "rgba": 4}
#: Accepted ``layout`` values.
LAYOUTS = ("NCHW", "NHWC")
_DEFAULT_COLOR = {1: "gray", 3: "bgr", 4: "bgra"}
_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
# Highest SIMD level the kernel may use (-1: the best the CPU has); tests lower it to cover every path.
_SIMD_LIMIT = -1
# OpenCV's fixed-point gray weights (B, G, R) over 2**14.
_GRAY_WEIGHTS = {"bgr": (1868, 9617, 4899), "rgb": (4899, 9617, 1868)}


def has_openmp():
    """Whether the C extension was compiled with OpenMP.

    Returns:
        bool; False means every call runs on one thread.
    """
    return _cy.has_openmp()


def resolve_threads(threads=None):
    """The number of threads the C kernels will use for a ``threads`` argument.

    Args:
        threads: None for OpenMP's default (``OMP_NUM_THREADS``, else the CPUs this process may use);
            a positive int for exactly that many; a negative int ``-k`` for all but ``k - 1`` of the
            default (so -1 means all), at least one.

    Returns:
        int >= 1; always 1 when the extension was built without OpenMP.

    Raises:
        TypeError: threads is not None or an int.
        ValueError: threads is 0.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)):
        raise TypeError(f"threads must be None or an int, got {threads!r}")
    if threads is not None and threads == 0:
        raise ValueError("threads must be nonzero (None = OpenMP's default, -1 = all CPUs)")
    if not _cy.has_openmp():
        return 1
    default = max(1, int(_cy.max_threads()))
    if threads is None:
        return default
    if threads < 0:
        return max(1, default + 1 + int(threads))
    return int(threads)


# ------------------------------------------------------------------------------------------------
# Argument checks shared by the three implementations


def _check_frame(frame, color, name="frame"):
    """(frame as (H, W, C) uint8 with contiguous pixels, color name)."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in _DEFAULT_COLOR:
        raise ValueError(f"{name} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {frame.shape}")
    h, w, c = frame.shape
    if h == 0 or w == 0:
        raise ValueError(f"{name} is empty (shape {frame.shape})")
    if color is None:
        color = _DEFAULT_COLOR[c]
    elif color not in COLORS:
        raise ValueError(f"color must be one of {', '.join(COLORS)} (or None to infer it), got {color!r}")
    elif COLORS[color] != c:
        raise ValueError(f"color={color!r} needs {COLORS[color]} channel(s) but {name} has {c}")
    # Rows may be strided (a crop of a larger image); anything else is copied once here.
    if not (frame.strides[2] == 1 and frame.strides[1] == c and frame.strides[0] >= w * c):
        frame = np.array(frame, dtype=np.uint8, order="C")
    return frame, color


def _check_boxes(boxes, name="boxes"):
    """boxes as C-contiguous float64 (N, 4)."""
    arr = np.asarray(boxes)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.size == 0 and arr.ndim in (1, 2):
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) of (x, y, w, h), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _check_params(size, margin, mean, std, dtype, layout):
    # type() first: the ABC checks alone cost a microsecond per call.
    if type(size) is not int and (isinstance(size, bool) or not isinstance(size, numbers.Integral)):
        raise TypeError(f"size must be an int, got {size!r}")
    if not 1 <= size <= _cy.MAX_SIZE:
        raise ValueError(f"size must lie in [1, {_cy.MAX_SIZE}], got {size}")
    for pname, value in (("margin", margin), ("mean", mean), ("std", std)):
        if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"{pname} must be a real number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{pname} must be finite, got {value}")
    if not margin > -0.5:
        raise ValueError(f"margin must be greater than -0.5 (a fraction of the box on each side), got {margin}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float16, got {dtype!r}") from None
    if dt not in _OUT_DTYPES:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float16, got {dt}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return int(size), dt


def _output(out, n, size, dt, layout):
    """The output array: `out` checked, or a new one."""
    shape = (n, 1, size, size) if layout == "NCHW" else (n, size, size, 1)
    if out is None:
        return np.empty(shape, dtype=dt)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != dt:
        raise TypeError(f"out has dtype {out.dtype} but dtype={dt} was asked for")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape} ({layout}), got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return out


def _run_kernel(frames, colors, boxes, frame_index, out, size, margin, square, mean, std, threads):
    flat = out.reshape(-1)
    if flat.dtype == np.float16:
        flat = flat.view(np.uint16)
    orders = [_cy.ORDER_RGB if c in ("rgb", "rgba") else _cy.ORDER_BGR for c in colors]
    _cy.crop_faces(list(frames), orders, boxes, frame_index, flat, size, float(margin), bool(square),
                   float(mean), float(std), threads, _SIMD_LIMIT)
    return out


# ------------------------------------------------------------------------------------------------
# The fused C kernel


def crop_faces(frame, boxes, size=48, margin=0.0, square=True, mean=0.5, std=0.5, out=None, dtype=np.float32,
               threads=None, color=None, layout="NCHW"):
    """Crop, gray, resize and normalise every face box of one frame into a network batch.

    Args:
        frame: uint8 image, (H, W) or (H, W, 1) gray, (H, W, 3) BGR or RGB, (H, W, 4) BGRA or RGBA.
            Rows may be strided (e.g. a slice of a larger image); other layouts are copied first.
        boxes: (N, 4) array-like of (x, y, w, h) in pixels, integer or float (sub-pixel boxes are
            sampled as continuous regions, see the module docstring). Boxes may stick out of the
            frame (the border is replicated) but must overlap it.
        size: side S of the output faces.
        margin: widen each box by this fraction of its width/height on every side (> -0.5).
        square: grow each box to a square of its longer side about its centre (after the margin).
        mean, std: output = (gray / 255 - mean) / std.
        out: optional C-contiguous array of the output shape and ``dtype`` to write into.
        dtype: numpy.float32 or numpy.float16.
        threads: see :func:`resolve_threads` (None = OpenMP's default).
        color: "gray", "bgr", "rgb", "bgra" or "rgba"; None infers gray/bgr/bgra from the channels.
        layout: "NCHW" for (N, 1, S, S) or "NHWC" for (N, S, S, 1).

    Returns:
        The filled output array (``out`` when given).

    Raises:
        TypeError: a non-uint8 frame, non-numeric boxes, an unsupported dtype, an ``out`` of the wrong dtype.
        ValueError: a bad shape or channel count, a box with w <= 0 or h <= 0, a box outside the frame,
            an ``out`` of the wrong shape; nothing is written then.
    """
    size, dt = _check_params(size, margin, mean, std, dtype, layout)
    frame, color = _check_frame(frame, color)
    boxes = _check_boxes(boxes)
    threads = resolve_threads(threads)
    out = _output(out, len(boxes), size, dt, layout)
    frame_index = np.zeros(len(boxes), dtype=np.int32)
    return _run_kernel([frame], [color], boxes, frame_index, out, size, margin, square, mean, std, threads)


def crop_faces_batch(frames, boxes, size=48, margin=0.0, square=True, mean=0.5, std=0.5, out=None,
                     dtype=np.float32, threads=None, color=None, layout="NCHW"):
    """:func:`crop_faces` over several frames at once, in one parallel pass.

    Args:
        frames: a sequence of frames as in :func:`crop_faces` (sizes and channel counts may differ).
        boxes: a sequence of the same length: for each frame, its (N_i, 4) boxes (possibly none).
        Others: as in :func:`crop_faces`; ``color`` applies to every frame (None infers it per frame).

    Returns:
        (sum N_i, 1, S, S) (or NHWC): the faces of frame 0, then those of frame 1, and so on.
    """
    size, dt = _check_params(size, margin, mean, std, dtype, layout)
    if isinstance(frames, np.ndarray) or not hasattr(frames, "__len__"):
        raise TypeError("frames must be a list or tuple of frames (use crop_faces for a single frame)")
    if isinstance(boxes, np.ndarray) or not hasattr(boxes, "__len__") or len(boxes) != len(frames):
        raise ValueError("boxes must be a sequence of box arrays, one per frame")
    if len(frames) == 0:
        raise ValueError("frames is empty")
    checked = [_check_frame(f, color, name=f"frames[{i}]") for i, f in enumerate(frames)]
    per_frame = [_check_boxes(b, name=f"boxes[{i}]") for i, b in enumerate(boxes)]
    all_boxes = np.concatenate(per_frame, axis=0)
    frame_index = np.repeat(np.arange(len(frames), dtype=np.int32), [len(b) for b in per_frame])
    threads = resolve_threads(threads)
    out = _output(out, len(all_boxes), size, dt, layout)
    return _run_kernel([f for f, _ in checked], [c for _, c in checked], all_boxes, frame_index, out, size,
                       margin, square, mean, std, threads)


# ------------------------------------------------------------------------------------------------
# Plain NumPy reference


def _regions(boxes, margin, square):
    cx, cy = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
    w, h = boxes[:, 2] * (1 + 2 * margin), boxes[:, 3] * (1 + 2 * margin)
    if square:
        w = h = np.maximum(w, h)
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)


def _resample_matrix(start, length, size, dim):
    """(m, lo): m is (size, n) float64, taking pixels lo .. lo + n - 1 of an axis of `dim` to `size` samples."""
    lo = int(min(max(np.floor(start) - 1, 0), dim - 1))
    hi = int(min(max(np.ceil(start + length) + 1, lo + 1), dim))
    pixels = np.arange(lo, hi)
    k = np.arange(size)
    if length > size:
        cell = length / size
        a, b = start + cell * k, start + cell * (k + 1)
        plo, phi = pixels.astype(np.float64), pixels + 1.0
        plo[pixels == 0], phi[pixels == dim - 1] = -np.inf, np.inf  # border replicate: edge pixels extend forever
        m = np.clip(np.minimum(b[:, None], phi) - np.maximum(a[:, None], plo), 0, None) / cell
    else:
        m = np.zeros((size, hi - lo))
        s = np.clip(start + (k + 0.5) * length / size - 0.5, start, start + max(length - 1, 0))
        i0 = np.floor(s)
        f = s - i0
        np.add.at(m, (k, np.clip(i0, 0, dim - 1).astype(np.intp) - lo), 1 - f)
        np.add.at(m, (k, np.clip(i0 + 1, 0, dim - 1).astype(np.intp) - lo), f)
    return m, lo


def _gray(patch, color):
    if color in ("gray",):
        return patch[..., 0].astype(np.float64)
    kb, kg, kr = _GRAY_WEIGHTS["rgb" if color in ("rgb", "rgba") else "bgr"]
    p = patch.astype(np.float64)
    return (kb * p[..., 0] + kg * p[..., 1] + kr * p[..., 2]) / 16384


def crop_faces_reference(frame, boxes, size=48, margin=0.0, square=True, mean=0.5, std=0.5, out=None,
                         dtype=np.float32, threads=None, color=None, layout="NCHW"):
    """:func:`crop_faces` in plain NumPy, one face at a time: the oracle of the tests.

    Each face is ``Ry @ gray @ Rx.T`` with explicit resampling matrices built from the definition in
    the module docstring. Same arguments, checks, errors and result as :func:`crop_faces` (up to
    float32 rounding); ``threads`` is checked and ignored.

    Returns:
        The filled output array.
    """
    size, dt = _check_params(size, margin, mean, std, dtype, layout)
    frame, color = _check_frame(frame, color)
    boxes = _check_boxes(boxes)
    resolve_threads(threads)
    out = _output(out, len(boxes), size, dt, layout)
    height, width = frame.shape[:2]
    regions = _regions(boxes, float(margin), bool(square))
    for i, (box, reg) in enumerate(zip(boxes, regions)):
        where = f"box {i} (x, y, w, h) = ({', '.join(f'{v:g}' for v in box)})"
        if not (np.all(np.abs(box) <= _cy.MAX_COORD) and np.all(np.abs(reg) <= _cy.MAX_COORD)):
            raise ValueError(f"{where}: coordinates must be finite and within +-{_cy.MAX_COORD:.0f} pixels")
        if not (box[2] > 0 and box[3] > 0 and reg[2] > 0 and reg[3] > 0):
            raise ValueError(f"{where}: width and height must be positive (also after the margin)")
        for b in (box, reg):
            if not (b[0] < width and b[0] + b[2] > 0 and b[1] < height and b[1] + b[3] > 0):
                raise ValueError(f"{where}: lies entirely outside the frame (or its margin region does)")
    faces = out.reshape(len(boxes), size, size)
    for i, (x, y, w, h) in enumerate(regions):
        ry, r0 = _resample_matrix(y, h, size, height)
        rx, c0 = _resample_matrix(x, w, size, width)
        face = ry @ _gray(frame[r0:r0 + ry.shape[1], c0:c0 + rx.shape[1]], color) @ rx.T
        faces[i] = (face / 255.0 - mean) / std
    return out


def crop_faces_opencv(frame, boxes, size=48, mean=0.5, std=0.5, color=None):
    """The usual per-face OpenCV loop (cvtColor, resize, normalise): the benchmark's baseline.

    Only integer boxes inside the frame; no margin, no squaring. Resizes with INTER_AREA when
    shrinking and INTER_LINEAR when enlarging (per box, on the longer side).

    Args:
        frame: uint8 (H, W, 3) BGR/RGB, (H, W, 4) or gray frame.
        boxes: (N, 4) integer (x, y, w, h) inside the frame.

    Returns:
        float32 (N, 1, size, size).
    """
    import cv2

    frame, color = _check_frame(frame, color)
    code = {"bgr": cv2.COLOR_BGR2GRAY, "rgb": cv2.COLOR_RGB2GRAY, "bgra": cv2.COLOR_BGRA2GRAY,
            "rgba": cv2.COLOR_RGBA2GRAY}.get(color)
    out = np.empty((len(boxes), 1, size, size), dtype=np.float32)
    for i, (x, y, w, h) in enumerate(np.asarray(boxes, dtype=np.int64).reshape(-1, 4)):
        crop = frame[y:y + h, x:x + w]
        gray = cv2.cvtColor(crop, code) if code is not None else crop[..., 0]
        interp = cv2.INTER_AREA if max(w, h) > size else cv2.INTER_LINEAR
        face = cv2.resize(gray, (size, size), interpolation=interp)
        out[i, 0] = (face.astype(np.float32) / 255.0 - mean) / std
    return out
