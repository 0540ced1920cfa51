# cython: language_level=3
"""Thin typed wrappers over csrc/preprocess.c: they compute only; validation lives in preprocess.py.

The C code checks again whatever could make it read or write out of bounds, and its error codes
become Python exceptions here.
"""
from libc.stdint cimport INT32_MAX, int32_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc

from fer_edge._preprocess cimport (
    FE_EBOX_FRAME, FE_EBOX_OUTSIDE, FE_EBOX_SIZE, FE_EBOX_VALUE, FE_EFRAME, FE_EINTERNAL, FE_EINVAL, FE_ENOMEM,
    FE_MAX_COORD, FE_MAX_SIZE, FE_OK, FE_ORDER_BGR, FE_ORDER_RGB, FE_OUT_F16, FE_OUT_F32, FE_SIMD_AVX2, FE_SIMD_AVX512,
    FE_SIMD_NONE, fe_box_region, fe_crop_faces, fe_crop_params, fe_f32_to_f16, fe_frame, fe_has_openmp, fe_max_threads,
    fe_normalize_u8, fe_simd_supported,
)

ctypedef fused out_t:
    float
    uint16_t

MAX_COORD = FE_MAX_COORD
MAX_SIZE = FE_MAX_SIZE
ORDER_BGR = FE_ORDER_BGR
ORDER_RGB = FE_ORDER_RGB
#: Gray-conversion instruction sets, by the level numbers of fe_crop_params.simd.
SIMD_NAMES = {FE_SIMD_NONE: "portable C", FE_SIMD_AVX2: "AVX2", FE_SIMD_AVX512: "AVX-512 VBMI"}


def has_openmp():
    """True when the C kernels were compiled with OpenMP."""
    return bool(fe_has_openmp())


def simd_supported():
    """The best gray-conversion level (a SIMD_NAMES key) this build and this CPU support."""
    return fe_simd_supported()


def max_threads():
    """Threads OpenMP would use by default (1 without OpenMP)."""
    return fe_max_threads()


def normalize_u8(const uint8_t[::1] src not None, float[::1] out not None, float mean, float std, int threads):
    """out = (src / 255 - mean) / std, element-wise; src and out must have equal length."""
    cdef int err
    if src.shape[0] != out.shape[0]:
        raise ValueError(f"normalize_u8: src has {src.shape[0]} elements but out has {out.shape[0]}")
    with nogil:
        err = fe_normalize_u8(&src[0] if src.shape[0] else NULL, src.shape[0], mean, std,
                              &out[0] if out.shape[0] else NULL, threads)
    if err != FE_OK:
        raise ValueError(f"normalize_u8: invalid arguments (std={std}, threads={threads})")


def box_region(const double[::1] box not None, double margin, bint square):
    """The (x, y, w, h) region the C kernel samples for `box` after margin and squaring."""
    cdef double region[4]
    if box.shape[0] != 4:
        raise ValueError(f"box_region: box has {box.shape[0]} values, not 4")
    fe_box_region(&box[0], margin, square, region)
    return (region[0], region[1], region[2], region[3])


def f32_to_f16(const float[::1] src not None, uint16_t[::1] dst not None):
    """dst = float16 bits of src, rounded to nearest even."""
    if src.shape[0] != dst.shape[0]:
        raise ValueError(f"f32_to_f16: src has {src.shape[0]} elements but dst has {dst.shape[0]}")
    with nogil:
        fe_f32_to_f16(&src[0] if src.shape[0] else NULL, &dst[0] if dst.shape[0] else NULL, src.shape[0])


def _box_error(int err, Py_ssize_t bad, tuple box, int frame, bint several):
    where = "box %d (x, y, w, h) = (%g, %g, %g, %g)" % ((bad,) + box)
    if several:
        where += f" of frame {frame}"
    if err == FE_EBOX_SIZE:
        return ValueError(f"{where}: width and height must be positive (also after the margin)")
    if err == FE_EBOX_OUTSIDE:
        return ValueError(f"{where}: lies entirely outside the frame (or its margin region does)")
    if err == FE_EBOX_VALUE:
        return ValueError(f"{where}: coordinates must be finite and within +-{FE_MAX_COORD:.0f} pixels")
    return ValueError(f"{where}: frame index out of range")


def crop_faces(list frames not None, list orders not None, const double[:, ::1] boxes not None,
               const int32_t[::1] frame_index not None, out_t[::1] out not None, int size, double margin,
               bint square, float mean, float std, int threads, int simd=-1):
    """Fill `out` (n_boxes * size * size elements) with the normalised gray faces; see fe_crop_faces.

    Args:
        frames: uint8 (H, W, C) arrays whose pixels are contiguous within a row (rows may be further apart).
        orders: ORDER_BGR or ORDER_RGB per frame.
        boxes: (N, 4) float64 (x, y, w, h).
        frame_index: (N,) int32, the frame of each box.
        out: float32, or uint16 receiving float16 bits.
        simd: highest gray-conversion level to use (-1: the best available); tests lower it.
    """
    cdef Py_ssize_t n_frames = len(frames), n_boxes = boxes.shape[0], i, bad = -1
    # Not [:, :, ::1]: that means C-contiguous as a whole, and rows of a frame may be further apart.
    cdef const uint8_t[:, :, :] view
    cdef fe_frame *cframes
    cdef fe_crop_params params
    cdef int err
    if n_frames == 0 or len(orders) != n_frames:
        raise ValueError("crop_faces: need at least one frame and one channel order per frame")
    if boxes.shape[1] != 4 or frame_index.shape[0] != n_boxes:
        raise ValueError(f"crop_faces: boxes must be (N, 4) with one frame index each, got "
                         f"({boxes.shape[0]}, {boxes.shape[1]}) boxes and {frame_index.shape[0]} indices")
    if out.shape[0] != n_boxes * size * size:
        raise ValueError(f"crop_faces: out has {out.shape[0]} elements, {n_boxes} faces of {size}x{size} "
                         f"need {n_boxes * size * size}")
    if n_boxes == 0:
        return
    params.size = size
    params.margin = margin
    params.square = square
    params.mean = mean
    params.std = std
    params.out_type = FE_OUT_F32 if out_t is float else FE_OUT_F16
    params.simd = simd
    views = []  # keeps every buffer acquired while the GIL is released
    cframes = <fe_frame *>malloc(n_frames * sizeof(fe_frame))
    if cframes == NULL:
        raise MemoryError()
    try:
        for i in range(n_frames):
            view = frames[i]
            views.append(view)
            if (view.shape[0] < 1 or view.shape[1] < 1 or view.strides[0] < 1 or view.strides[2] != 1
                    or view.strides[1] != view.shape[2]):
                raise ValueError(f"crop_faces: frame {i} must be non-empty, with contiguous pixels and "
                                 f"rows in increasing order (shape ({view.shape[0]}, {view.shape[1]}, {view.shape[2]}), "
                                 f"strides ({view.strides[0]}, {view.strides[1]}, {view.strides[2]}))")
            if view.shape[0] > INT32_MAX or view.shape[1] > INT32_MAX:
                raise ValueError(f"crop_faces: frame {i} has more than 2**31 - 1 rows or columns")
            cframes[i].data = &view[0, 0, 0]
            cframes[i].row_stride = view.strides[0]
            cframes[i].height = <int32_t>view.shape[0]
            cframes[i].width = <int32_t>view.shape[1]
            cframes[i].channels = <int32_t>view.shape[2]
            cframes[i].order = orders[i]
        with nogil:
            err = fe_crop_faces(cframes, <int32_t>n_frames, &boxes[0, 0], &frame_index[0], n_boxes, &params,
                                <void *>&out[0], threads, &bad)
    finally:
        free(cframes)
    if err == FE_OK:
        return
    if err == FE_ENOMEM:
        raise MemoryError("crop_faces: could not allocate scratch memory")
    if err == FE_EINTERNAL:
        raise RuntimeError("crop_faces: internal table overflow (a bug in fer_edge, please report it)")
    if err == FE_EFRAME:
        raise ValueError("crop_faces: a frame has an empty shape, a channel count other than 1, 3 or 4, "
                         "or rows shorter than its width")
    if err == FE_EINVAL or bad < 0:
        raise ValueError(f"crop_faces: invalid parameters (size={size}, margin={margin}, mean={mean}, "
                         f"std={std}, threads={threads})")
    raise _box_error(err, bad, (boxes[bad, 0], boxes[bad, 1], boxes[bad, 2], boxes[bad, 3]), frame_index[bad],
                     n_frames > 1)
