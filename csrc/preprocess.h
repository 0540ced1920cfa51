/* fer_edge preprocessing kernels: plain C99, no Python objects, safe to call without the GIL. */
#ifndef FER_EDGE_PREPROCESS_H
#define FER_EDGE_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes returned by the kernels; the Cython wrapper turns them into Python exceptions. */
#define FE_OK 0
#define FE_EINVAL 1

/* Number of OpenMP threads the build can use (1 when built without OpenMP). */
int fe_max_threads(void);

/* 1 when the library was compiled with OpenMP. */
int fe_has_openmp(void);

/* out[i] = (src[i] / 255 - mean) / std for n pixels, on `threads` threads. */
int fe_normalize_u8(const uint8_t *src, size_t n, float mean, float std, float *out, int threads);

#ifdef __cplusplus
}
#endif
#endif
