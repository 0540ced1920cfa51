#include "preprocess.h"

#ifdef _OPENMP
#include <omp.h>
#else
/* Shim so the kernels build, single-threaded, on compilers without OpenMP. */
static int omp_get_max_threads(void) { return 1; }
#endif

int fe_max_threads(void) { return omp_get_max_threads(); }

int fe_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fe_normalize_u8(const uint8_t *src, size_t n, float mean, float std, float *out, int threads) {
    if (!(std > 0.0f) || threads < 1) return FE_EINVAL;
    const float scale = 1.0f / (255.0f * std), shift = mean / std;
    ptrdiff_t i, count = (ptrdiff_t)n;
    (void)threads;
#ifdef _OPENMP
    #pragma omp parallel for num_threads(threads) schedule(static) if (count > 65536)
#endif
    for (i = 0; i < count; i++) out[i] = (float)src[i] * scale - shift;
    return FE_OK;
}
