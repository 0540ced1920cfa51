# C declarations of csrc/preprocess.h for the Cython wrapper.
from libc.stdint cimport uint8_t

cdef extern from "preprocess.h" nogil:
    int FE_OK
    int FE_EINVAL
    int fe_max_threads() noexcept nogil
    int fe_has_openmp() noexcept nogil
    int fe_normalize_u8(const uint8_t *src, size_t n, float mean, float std, float *out, int threads) noexcept nogil
