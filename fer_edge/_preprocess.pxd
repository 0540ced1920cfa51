# C declarations of csrc/preprocess.h for the Cython wrapper.
from libc.stdint cimport int32_t, uint8_t, uint16_t

cdef extern from "preprocess.h" nogil:
    int FE_OK
    int FE_EINVAL
    int FE_EFRAME
    int FE_EBOX_VALUE
    int FE_EBOX_SIZE
    int FE_EBOX_OUTSIDE
    int FE_EBOX_FRAME
    int FE_ENOMEM
    int FE_EINTERNAL
    int FE_ORDER_BGR
    int FE_ORDER_RGB
    int FE_OUT_F32
    int FE_OUT_F16
    int FE_SIMD_NONE
    int FE_SIMD_AVX2
    int FE_SIMD_AVX512
    double FE_MAX_COORD
    int FE_MAX_SIZE

    ctypedef struct fe_frame:
        const uint8_t *data
        Py_ssize_t row_stride
        int32_t height
        int32_t width
        int32_t channels
        int32_t order

    ctypedef struct fe_crop_params:
        int32_t size
        double margin
        int32_t square
        float mean
        float std
        int32_t out_type
        int32_t simd

    int fe_max_threads() noexcept nogil
    int fe_has_openmp() noexcept nogil
    int fe_simd_supported() noexcept nogil
    int fe_normalize_u8(const uint8_t *src, size_t n, float mean, float std, float *out, int threads) noexcept nogil
    void fe_box_region(const double *box, double margin, int square, double *region) noexcept nogil
    int fe_crop_faces(const fe_frame *frames, int32_t n_frames, const double *boxes, const int32_t *frame_index,
                      Py_ssize_t n_boxes, const fe_crop_params *params, void *out, int threads,
                      Py_ssize_t *bad_box) noexcept nogil
    void fe_f32_to_f16(const float *src, uint16_t *dst, Py_ssize_t n) noexcept nogil
