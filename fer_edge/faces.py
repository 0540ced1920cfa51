"""Turn detector boxes and face crops into network input, following a model's metadata.

The geometry (see ModelMetadata): a detector box is widened by ``margin`` and made square, then the
network sees its central ``input_size / context_size`` part resized to ``input_size`` pixels. For a
48x48 FER2013 image this is exactly the central 40x40 crop the models were trained and evaluated on.
"""

import numpy as np

from .errors import InputError  # noqa: F401  (re-exported: fer_edge.faces.InputError)

TTA_MODES = ("none", "flip", "tencrop")


def expand_boxes(boxes, margin=0.0, square=True):
    """Widen (x, y, w, h) boxes by ``margin`` of their size on each side; square them about their centre.

    Args:
        boxes: array-like (N, 4).

    Returns:
        float64 (N, 4) boxes (they may extend past the frame).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    w, h = b[:, 2] * (1 + 2 * margin), b[:, 3] * (1 + 2 * margin)
    if square:
        w = h = np.maximum(w, h)
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)


def network_boxes(boxes, metadata):
    """The part of each detector box the network sees: margin, squaring, then the central crop.

    Returns:
        float64 (N, 4) boxes.
    """
    b = expand_boxes(boxes, metadata.margin, metadata.square)
    if metadata.input_size == metadata.context_size:
        return b
    f = metadata.crop_fraction
    cx, cy = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    w, h = b[:, 2] * f, b[:, 3] * f
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)


def tta_batch(context, metadata, mode):
    """Views of normalised context-size faces (N, C, K, K) for test-time augmentation.

    Args:
        context: float32 (N, C, context_size, context_size).
        mode: ``none``, ``flip`` or ``tencrop`` (4 corners + centre, each mirrored).

    Returns:
        (V, N, C, S, S) float32 views; the caller averages the network's logits over V.
    """
    s, k = metadata.input_size, metadata.context_size
    o = (k - s) // 2
    centre = context[..., o:o + s, o:o + s]
    if mode == "none":
        return centre[None]
    if mode == "flip":
        return np.stack([centre, centre[..., ::-1]])
    if mode == "tencrop":
        crops = [context[..., :s, :s], context[..., :s, k - s:], context[..., k - s:, :s],
                 context[..., k - s:, k - s:], centre]
        return np.stack(crops + [c[..., ::-1] for c in crops])
    raise ValueError(f"unknown TTA mode {mode!r}: choose one of {', '.join(TTA_MODES)}")


def check_faces(faces):
    """Validate already-cropped faces for ``Runtime.predict_faces``.

    Args:
        faces: uint8 array (N, H, W) gray or (N, H, W, 3) BGR; a single (H, W) face is not accepted, so that
            a batch of one is never mistaken for one tall image.

    Returns:
        The same array, C-contiguous.

    Raises:
        InputError: not an array, not uint8 (floats are refused even in [0, 255], naming NaN when present),
            wrong number of dimensions or channels, or an empty face.
    """
    if not isinstance(faces, np.ndarray):
        raise InputError(f"faces must be a numpy array, got {type(faces).__name__}")
    if faces.dtype != np.uint8:
        nan = " and contains NaN" if faces.dtype.kind == "f" and np.isnan(faces).any() else ""
        raise InputError(f"faces must be uint8 images, got dtype {faces.dtype}{nan}; "
                         "convert with np.clip(faces, 0, 255).astype(np.uint8)")
    if not (faces.ndim == 3 or (faces.ndim == 4 and faces.shape[3] == 3)):
        raise InputError(f"faces must have shape (N, H, W) gray or (N, H, W, 3) BGR, got {faces.shape}")
    if faces.shape[0] and (faces.shape[1] < 1 or faces.shape[2] < 1):
        raise InputError(f"faces must be at least 1x1 pixels, got {faces.shape}")
    return np.ascontiguousarray(faces)


def check_frame(frame, name="frame"):
    """Validate one video frame: uint8 (H, W) gray or (H, W, 3) BGR, not empty.

    Returns:
        The same frame.

    Raises:
        InputError: None, empty, wrong dtype or shape.
    """
    if frame is None:
        raise InputError(f"{name} is None (a failed read from a video or camera?)")
    if not isinstance(frame, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise InputError(f"{name} is empty (shape {frame.shape})")
    if frame.dtype != np.uint8:
        nan = " and contains NaN" if frame.dtype.kind == "f" and np.isnan(frame).any() else ""
        raise InputError(f"{name} must be uint8, got dtype {frame.dtype}{nan}")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3))):
        raise InputError(f"{name} must have shape (H, W) gray or (H, W, 3) BGR, got {frame.shape}")
    return frame


def check_boxes(boxes, frame_shape=None, name="boxes"):
    """Validate (x, y, w, h) face boxes.

    Args:
        boxes: array-like (N, 4) or (4,) of finite numbers with w, h > 0.
        frame_shape: when given, every box must overlap the frame (H, W, ...).

    Returns:
        float64 (N, 4) array.

    Raises:
        InputError: wrong shape, NaN or infinite values, empty boxes, or boxes outside the frame.
    """
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numbers (x, y, w, h), got {type(boxes).__name__}") from None
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise InputError(f"{name} must have shape (N, 4) as (x, y, w, h), got {b.shape}")
    if not np.isfinite(b).all():
        raise InputError(f"{name} contain NaN or infinite values")
    if (b[:, 2:] <= 0).any():
        raise InputError(f"{name} must have positive width and height")
    if frame_shape is not None:
        h, w = frame_shape[:2]
        outside = (b[:, 0] >= w) | (b[:, 1] >= h) | (b[:, 0] + b[:, 2] <= 0) | (b[:, 1] + b[:, 3] <= 0)
        if outside.any():
            raise InputError(f"{name} {b[outside][0].tolist()} lies outside the {w}x{h} frame")
    return b


def crop_faces_fallback(frame, boxes, size=48, margin=0.0, square=True, mean=0.5, std=0.5, out=None,
                        dtype=np.float32, threads=None):
    """NumPy/OpenCV crop, used until ``fer_edge.preprocess.crop_faces`` is built (same contract).

    Args:
        frame: uint8 (H, W) gray or (H, W, 3) BGR.
        boxes: (N, 4) float (x, y, w, h); parts outside the frame replicate the border.
        size: output side in pixels.
        margin, square: box widening, as in ``expand_boxes``.
        mean, std: normalisation ``(x / 255 - mean) / std``.
        out: optional preallocated (N, 1, size, size) array to fill.
        dtype: output dtype when ``out`` is None.
        threads: ignored (single-threaded).

    Returns:
        (N, 1, size, size) array.
    """
    import cv2

    gray = frame if frame.ndim == 2 else (frame[..., 0] if frame.shape[2] == 1 else
                                          cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    b = expand_boxes(boxes, margin, square)
    if out is None:
        out = np.empty((len(b), 1, size, size), dtype)
    fh, fw = gray.shape
    scale, shift = 1.0 / (255.0 * std), -mean / std
    for i, (x, y, w, h) in enumerate(b):
        x0, y0 = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        x1, y1 = max(int(np.floor(x + w + 0.5)), x0 + 1), max(int(np.floor(y + h + 0.5)), y0 + 1)
        if x0 >= 0 and y0 >= 0 and x1 <= fw and y1 <= fh:
            patch = gray[y0:y1, x0:x1]
        else:
            # Clamped indices are exactly a replicated border, also for boxes far outside the frame.
            rows = np.clip(np.arange(y0, y1), 0, fh - 1)
            cols = np.clip(np.arange(x0, x1), 0, fw - 1)
            patch = gray[np.ix_(rows, cols)]
        if patch.shape != (size, size):
            interp = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
            patch = cv2.resize(patch, (size, size), interpolation=interp)
        np.multiply(patch, scale, out=out[i, 0], casting="unsafe")
        out[i, 0] += shift
    return out


def crop_faces_batch_fallback(frames, boxes, size=48, margin=0.0, square=True, mean=0.5, std=0.5, out=None,
                              dtype=np.float32, threads=None):
    """``crop_faces_fallback`` over several frames: the faces of frame 0, then frame 1, ... in one array."""
    total = sum(len(b) for b in boxes)
    if out is None:
        out = np.empty((total, 1, size, size), dtype)
    k = 0
    for frame, b in zip(frames, boxes):
        crop_faces_fallback(frame, b, size, margin, square, mean, std, out=out[k:k + len(b)])
        k += len(b)
    return out


def get_crop_faces():
    """The fused C ``crop_faces`` and ``crop_faces_batch`` when they are built, else the fallbacks.

    Returns:
        (crop_faces, crop_faces_batch).
    """
    try:
        from .preprocess import crop_faces, crop_faces_batch
    except ImportError:
        return crop_faces_fallback, crop_faces_batch_fallback
    return crop_faces, crop_faces_batch
