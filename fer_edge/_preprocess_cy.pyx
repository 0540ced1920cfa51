# cython: language_level=3
"""Thin typed wrappers over csrc/preprocess.c: they compute only; validation lives in preprocess.py."""
from libc.stdint cimport uint8_t
from fer_edge._preprocess cimport FE_OK, fe_has_openmp, fe_max_threads, fe_normalize_u8


def has_openmp():
    """True when the C kernels were compiled with OpenMP."""
    return bool(fe_has_openmp())


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
