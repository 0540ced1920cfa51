#include "preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* ---------------------------------------------------------------------------------------------- */
/* float16                                                                                         */

/* Branch-free so that the loop over a row vectorises (after F. Giesen's float_to_half_fast3_rtne). */
static inline uint16_t f32_to_f16(float f) {
    uint32_t x, sign, mant_odd, normal, inf_nan, tiny_bits;
    float tiny;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    /* |f| >= 65536: inf (or quiet nan); values just below round up to inf in the normal branch. */
    inf_nan = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
    /* |f| < 2^-14: adding 0.5f lets the FPU round the subnormal mantissa to nearest even. */
    tiny = f < 0 ? -f : f;
    tiny += 0.5f;
    memcpy(&tiny_bits, &tiny, 4);
    tiny_bits -= 0x3f000000u;
    mant_odd = (x >> 13) & 1u;
    normal = (x + 0xc8000fffu + mant_odd) >> 13; /* rebias exponent 127 -> 15, round half to even */
    x = x >= 0x47800000u ? inf_nan : (x < 0x38800000u ? tiny_bits : normal);
    return (uint16_t)(x | sign);
}

void fe_f32_to_f16(const float *src, uint16_t *dst, ptrdiff_t n) {
    ptrdiff_t i;
    for (i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

/* ---------------------------------------------------------------------------------------------- */
/* Resampling tables                                                                               */

/* One axis of a resampling: output k = sum over t < n of wt[k * n + t] * pixel (first[k] + t).
   A fixed tap count n per box keeps the inner loops free of unpredictable branches; pixels past
   the frame are folded onto the border pixel (replicate), so every first[k] + t is a frame pixel
   and the work is bounded by the frame however far a box sticks out of it. */
typedef struct taps {
    int32_t *first; /* size */
    float *wt;      /* size * n */
    int32_t n;
    int32_t cap;    /* room in wt */
    int32_t lo, hi; /* smallest and largest pixel read */
} taps;

/* Most taps an output needs for a region of length `len` over `dim` pixels: an area cell of width
   len / size overlaps at most floor(len / size) + 2 pixels (one more for rounding). */
static int32_t taps_per_output(double len, int32_t size, int32_t dim) {
    double n = len > size ? floor(len / size) + 3 : 2;
    return n < dim ? (int32_t)n : dim;
}

/* floor and ceil for |v| < 2^62 without libm: the portable build has no SSE4.1 round instruction
   and a call per tap showed up in profiles. */
static inline double fe_floor(double v) {
    const double t = (double)(int64_t)v;
    return t > v ? t - 1 : t;
}

static inline double fe_ceil(double v) {
    const double t = (double)(int64_t)v;
    return t < v ? t + 1 : t;
}

static inline int32_t clamp_index(double v, int32_t dim) {
    if (v < 0) return 0;
    if (v > dim - 1) return dim - 1;
    return (int32_t)v;
}

/* GCC builds the portable hot loops for several x86-64 levels and picks one when the module loads,
   so that a portable wheel still gets AVX2 / AVX-512 for them. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__) && \
    !defined(FE_NO_MULTIVERSION)
#define FE_HOT __attribute__((noinline, target_clones("default", "arch=x86-64-v2", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define FE_HOT
#endif

/* Taps resampling the region [start, start + len) of an axis of `dim` pixels to `size` outputs,
   every weight multiplied by `scale`. */
FE_HOT static int build_taps(double start, double len, int32_t size, int32_t dim, float scale, taps *t) {
    int32_t k, i, n = 1;
    if (len > size) {
        /* Area: pixel i covers [i, i + 1) and the border pixels reach to infinity (replicate). */
        const double cell = len / size, per_pixel = scale / cell;
        for (k = 0; k < size; k++) {
            const int32_t i0 = clamp_index(fe_floor(start + cell * k), dim);
            const int32_t i1 = clamp_index(fe_ceil(start + cell * (k + 1)) - 1, dim);
            n = i1 - i0 + 1 > n ? i1 - i0 + 1 : n;
        }
        if ((ptrdiff_t)n * size > t->cap) return FE_EINTERNAL;
        t->n = n;
        for (k = 0; k < size; k++) {
            const double a = start + cell * k, b = start + cell * (k + 1);
            const int32_t i0 = clamp_index(fe_floor(a), dim), i1 = clamp_index(fe_ceil(b) - 1, dim);
            const int32_t first = i0 + n <= dim ? i0 : dim - n;
            float *w = t->wt + (ptrdiff_t)k * n;
            int32_t j;
            t->first[k] = first;
            if (a >= 0 && b <= dim && i1 > i0) {
                /* Inside the frame: partial first and last pixels, whole ones between. Selects
                   rather than a loop from i0 to i1, whose varying length mispredicts. */
                const float left = (float)((i0 + 1 - a) * per_pixel), right = (float)((b - i1) * per_pixel);
                const float whole = (float)per_pixel;
                for (j = 0; j < n; j++) {
                    const int32_t i = first + j;
                    float v = i > i0 && i < i1 ? whole : 0.0f;
                    v = i == i0 ? left : v;
                    w[j] = i == i1 ? right : v;
                }
            } else {
                for (j = 0; j < n; j++) w[j] = 0.0f;
                for (i = i0; i <= i1; i++) {
                    const double plo = i == 0 ? -HUGE_VAL : (double)i;
                    const double phi = i == dim - 1 ? HUGE_VAL : (double)i + 1;
                    const double overlap = (b < phi ? b : phi) - (a > plo ? a : plo);
                    if (overlap > 0) w[i - first] = (float)(overlap * per_pixel);
                }
            }
        }
    } else {
        /* Linear: sample at pixel-centre coordinates, clamped to the region as cv2.resize clamps
           to the crop it is given. */
        const double step = len / size, last = start + (len > 1 ? len - 1 : 0);
        n = dim > 1 ? 2 : 1;
        if ((ptrdiff_t)n * size > t->cap) return FE_EINTERNAL;
        t->n = n;
        memset(t->wt, 0, sizeof(float) * (size_t)n * size);
        for (k = 0; k < size; k++) {
            double s = start + (k + 0.5) * step - 0.5, fl, f;
            int32_t j0, j1, first;
            s = s < start ? start : (s > last ? last : s);
            fl = fe_floor(s);
            f = s - fl;
            j0 = clamp_index(fl, dim);
            j1 = clamp_index(fl + 1, dim);
            first = j0 + n <= dim ? j0 : dim - n;
            t->first[k] = first;
            t->wt[k * n + (j0 - first)] += (float)((1 - f) * scale);
            t->wt[k * n + (j1 - first)] += (float)(f * scale);
        }
    }
    t->lo = t->first[0];
    t->hi = t->first[size - 1] + n - 1;
    return FE_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Gray rows                                                                                       */

/* OpenCV's fixed-point gray weights (imgproc color.hpp: B2Y, G2Y, R2Y, 14-bit). Keeping the sum
   unshifted keeps it exact in float (< 2^22); the 1/16384 is folded into the output scale. */
#define FE_B2Y 1868
#define FE_G2Y 9617
#define FE_R2Y 4899
#define FE_GRAY_ONE 16384.0f

/* Compilers turn the 3-byte pixel gather into slow code (or a 64-pixel loop whose scalar tail does
   most of a face row), so the gray conversion of interleaved pixels has explicit x86 SIMD,
   chosen at run time; elsewhere (e.g. aarch64, whose ld3 the compiler uses) the plain loop runs. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(FE_NO_SIMD)
#define FE_X86_SIMD 1
#include <immintrin.h>
#endif

int fe_simd_supported(void) {
#ifdef FE_X86_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vbmi"))
        return FE_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2")) return FE_SIMD_AVX2;
#endif
    return FE_SIMD_NONE;
}

/* Output rows are made FE_GROUP at a time: each source row is read once for the group, and the
   horizontal pass works on the group's rows side by side (FE_HSUM4 and crop_face_rows assume 4). */
#define FE_GROUP 4

/* One vertical step: a source row's gray, times w[j], is stored into acc[j] (add[j] == 0) or added
   to it, for the m <= FE_GROUP output rows the source row feeds. */
typedef struct vstep {
    int32_t m;
    int32_t add[FE_GROUP];
    float w[FE_GROUP];
    float *acc[FE_GROUP];
} vstep;

#ifdef FE_X86_SIMD
/* 8 pixels a step: pshufb spreads (B, G) and (R, 0) of each pixel over 16-bit pairs and pmaddwd
   weights and adds them. Returns the pixels done; the caller finishes the rest. */
__attribute__((target("avx2,fma"))) static int32_t gray_step_avx2(const uint8_t *p, int32_t n, int32_t channels,
                                                                  int32_t k0, int32_t k2, const vstep *v) {
    const __m256i kbg = _mm256_set1_epi32((int32_t)((uint32_t)FE_G2Y << 16 | (uint32_t)k0));
    const __m256i kr = _mm256_set1_epi32(k2);
    const __m256i mbg3 = _mm256_setr_epi8(0, -1, 1, -1, 3, -1, 4, -1, 6, -1, 7, -1, 9, -1, 10, -1, 0, -1, 1, -1, 3, -1,
                                          4, -1, 6, -1, 7, -1, 9, -1, 10, -1);
    const __m256i mr3 = _mm256_setr_epi8(2, -1, -1, -1, 5, -1, -1, -1, 8, -1, -1, -1, 11, -1, -1, -1, 2, -1, -1, -1, 5,
                                         -1, -1, -1, 8, -1, -1, -1, 11, -1, -1, -1);
    const __m256i mbg4 = _mm256_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1, 0, -1, 1, -1, 4, -1,
                                          5, -1, 8, -1, 9, -1, 12, -1, 13, -1);
    const __m256i mr4 = _mm256_setr_epi8(2, -1, -1, -1, 6, -1, -1, -1, 10, -1, -1, -1, 14, -1, -1, -1, 2, -1, -1, -1,
                                         6, -1, -1, -1, 10, -1, -1, -1, 14, -1, -1, -1);
    const __m256i mbg = channels == 3 ? mbg3 : mbg4, mr = channels == 3 ? mr3 : mr4;
    /* 3 channels: each lane loads 16 bytes for 4 pixels (12 bytes), so stop while the last load
       stays inside the row. */
    const int32_t end = channels == 3 ? n - 10 : n - 8;
    /* Local copies, so that the compiler keeps them in registers across the stores to acc. */
    const int32_t m = v->m;
    const int add0 = v->add[0], add1 = v->add[1], add2 = v->add[2], add3 = v->add[3];
    const __m256 w0 = _mm256_set1_ps(v->w[0]), w1 = _mm256_set1_ps(v->w[1]), w2 = _mm256_set1_ps(v->w[2]),
                 w3 = _mm256_set1_ps(v->w[3]);
    float *const a0 = v->acc[0], *const a1 = v->acc[1], *const a2 = v->acc[2], *const a3 = v->acc[3];
    int32_t i;
#define FE_UPDATE(J) \
    if (J < m) _mm256_storeu_ps(a##J + i, add##J ? _mm256_fmadd_ps(w##J, g, _mm256_loadu_ps(a##J + i)) : _mm256_mul_ps(w##J, g));
    for (i = 0; i <= end; i += 8) {
        const uint8_t *q = p + (ptrdiff_t)channels * i;
        const __m128i lo = _mm_loadu_si128((const __m128i *)q);
        const __m128i hi = _mm_loadu_si128((const __m128i *)(q + 4 * channels));
        const __m256i px = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        const __m256 g = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(_mm256_shuffle_epi8(px, mbg), kbg),
                                                             _mm256_madd_epi16(_mm256_shuffle_epi8(px, mr), kr)));
        FE_UPDATE(0)
        FE_UPDATE(1)
        FE_UPDATE(2)
        FE_UPDATE(3)
    }
#undef FE_UPDATE
    return i;
}

/* 16 pixels a step with vpermb, which puts (B, 0, G, 0) and (R, 0, 0, 0) of each pixel in 32-bit lanes
   for pmaddwd. */
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) static int32_t gray_step_avx512(const uint8_t *p, int32_t n,
                                                                                       int32_t channels, int32_t k0,
                                                                                       int32_t k2, const vstep *v) {
    /* Byte indices: (B, 0, G, 0) and (R, 0, 0, 0) of pixel j at bytes 4j..4j+3 (zeros masked off). */
    static const uint8_t idx3[2][64] = {
        {0, 0, 1, 0, 3, 0, 4, 0, 6, 0, 7, 0, 9, 0, 10, 0, 12, 0, 13, 0, 15, 0, 16, 0, 18, 0, 19, 0, 21, 0, 22, 0,
         24, 0, 25, 0, 27, 0, 28, 0, 30, 0, 31, 0, 33, 0, 34, 0, 36, 0, 37, 0, 39, 0, 40, 0, 42, 0, 43, 0, 45, 0, 46, 0},
        {2, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0, 11, 0, 0, 0, 14, 0, 0, 0, 17, 0, 0, 0, 20, 0, 0, 0, 23, 0, 0, 0,
         26, 0, 0, 0, 29, 0, 0, 0, 32, 0, 0, 0, 35, 0, 0, 0, 38, 0, 0, 0, 41, 0, 0, 0, 44, 0, 0, 0, 47, 0, 0, 0}};
    static const uint8_t idx4[2][64] = {
        {0, 0, 1, 0, 4, 0, 5, 0, 8, 0, 9, 0, 12, 0, 13, 0, 16, 0, 17, 0, 20, 0, 21, 0, 24, 0, 25, 0, 28, 0, 29, 0,
         32, 0, 33, 0, 36, 0, 37, 0, 40, 0, 41, 0, 44, 0, 45, 0, 48, 0, 49, 0, 52, 0, 53, 0, 56, 0, 57, 0, 60, 0, 61, 0},
        {2, 0, 0, 0, 6, 0, 0, 0, 10, 0, 0, 0, 14, 0, 0, 0, 18, 0, 0, 0, 22, 0, 0, 0, 26, 0, 0, 0, 30, 0, 0, 0,
         34, 0, 0, 0, 38, 0, 0, 0, 42, 0, 0, 0, 46, 0, 0, 0, 50, 0, 0, 0, 54, 0, 0, 0, 58, 0, 0, 0, 62, 0, 0, 0}};
    const uint8_t(*idx)[64] = channels == 3 ? idx3 : idx4;
    const __m512i mbg = _mm512_loadu_si512(idx[0]), mr = _mm512_loadu_si512(idx[1]);
    const __m512i kbg = _mm512_set1_epi32((int32_t)((uint32_t)FE_G2Y << 16 | (uint32_t)k0));
    const __m512i kr = _mm512_set1_epi32(k2);
    /* Local copies, so that the compiler keeps them in registers across the stores to acc. */
    const int32_t m = v->m;
    const int add0 = v->add[0], add1 = v->add[1], add2 = v->add[2], add3 = v->add[3];
    const __m512 w0 = _mm512_set1_ps(v->w[0]), w1 = _mm512_set1_ps(v->w[1]), w2 = _mm512_set1_ps(v->w[2]),
                 w3 = _mm512_set1_ps(v->w[3]);
    float *const a0 = v->acc[0], *const a1 = v->acc[1], *const a2 = v->acc[2], *const a3 = v->acc[3];
    const __mmask64 full = channels == 3 ? (((__mmask64)1 << 48) - 1) : ~(__mmask64)0;
    int32_t i;
#define FE_GRAY16(LMASK)                                                                                           \
    _mm512_cvtepi32_ps(_mm512_add_epi32(                                                                           \
        _mm512_madd_epi16(_mm512_maskz_permutexvar_epi8((__mmask64)0x5555555555555555ULL, mbg,                    \
                                                        _mm512_maskz_loadu_epi8(LMASK, p + (ptrdiff_t)channels * i)), \
                          kbg),                                                                                    \
        _mm512_madd_epi16(_mm512_maskz_permutexvar_epi8((__mmask64)0x1111111111111111ULL, mr,                     \
                                                        _mm512_maskz_loadu_epi8(LMASK, p + (ptrdiff_t)channels * i)), \
                          kr)))
#define FE_UPDATE(J, SMASK)                                                                                        \
    if (J < m)                                                                                                     \
        _mm512_mask_storeu_ps(a##J + i, SMASK,                                                                     \
                              add##J ? _mm512_fmadd_ps(w##J, g, _mm512_maskz_loadu_ps(SMASK, a##J + i))           \
                                     : _mm512_mul_ps(w##J, g));
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 g = FE_GRAY16(full);
        FE_UPDATE(0, 0xFFFF)
        FE_UPDATE(1, 0xFFFF)
        FE_UPDATE(2, 0xFFFF)
        FE_UPDATE(3, 0xFFFF)
    }
    if (i < n) {
        /* Masked loads and stores do the tail without touching memory past it. */
        const __mmask64 lmask = ((__mmask64)1 << ((n - i) * channels)) - 1;
        const __mmask16 smask = (__mmask16)((1u << (n - i)) - 1);
        const __m512 g = FE_GRAY16(lmask);
        FE_UPDATE(0, smask)
        FE_UPDATE(1, smask)
        FE_UPDATE(2, smask)
        FE_UPDATE(3, smask)
    }
#undef FE_GRAY16
#undef FE_UPDATE
    return n;
}
#endif

/* Applies one vertical step for the source pixels (row, c0 .. c0 + n - 1). Gray is in units of
   1/16384 grey level (grey levels for 1-channel frames); g is scratch for n floats. */
FE_HOT static void vertical_step(const fe_frame *fr, int32_t row, int32_t c0, int32_t n, int simd, const vstep *v,
                                 float *restrict g) {
    const uint8_t *restrict p = fr->data + (ptrdiff_t)row * fr->row_stride + (ptrdiff_t)c0 * fr->channels;
    const int32_t k0 = fr->order == FE_ORDER_RGB ? FE_R2Y : FE_B2Y;
    const int32_t k2 = fr->order == FE_ORDER_RGB ? FE_B2Y : FE_R2Y;
    const int32_t c = fr->channels;
    int32_t i = 0, j;
    if (c == 1) {
        for (j = 0; j < v->m; j++) {
            float *restrict acc = v->acc[j];
            const float w = v->w[j];
            if (v->add[j])
                for (i = 0; i < n; i++) acc[i] += w * (float)p[i];
            else
                for (i = 0; i < n; i++) acc[i] = w * (float)p[i];
        }
        return;
    }
#ifdef FE_X86_SIMD
    if (simd >= FE_SIMD_AVX512)
        i = gray_step_avx512(p, n, c, k0, k2, v);
    else if (simd >= FE_SIMD_AVX2)
        i = gray_step_avx2(p, n, c, k0, k2, v);
#else
    (void)simd;
#endif
    if (i == n) return;
    /* Constant strides, so that compilers vectorise these (aarch64: ld3 / ld4). */
    if (c == 3)
        for (j = i; j < n; j++) g[j] = (float)(p[3 * j] * k0 + p[3 * j + 1] * FE_G2Y + p[3 * j + 2] * k2);
    else
        for (j = i; j < n; j++) g[j] = (float)(p[4 * j] * k0 + p[4 * j + 1] * FE_G2Y + p[4 * j + 2] * k2);
    for (j = 0; j < v->m; j++) {
        float *restrict acc = v->acc[j];
        const float w = v->w[j];
        int32_t k;
        if (v->add[j])
            for (k = i; k < n; k++) acc[k] += w * g[k];
        else
            for (k = i; k < n; k++) acc[k] = w * g[k];
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* One face                                                                                        */

/* Per-thread scratch, sized once per call for the widest frame and the largest box. */
typedef struct scratch {
    taps tx, ty;
    float *gray; /* one source row, gray */
    float *acc;  /* FE_GROUP rows: vertical sums of FE_GROUP output rows */
    float *acc4; /* the same, interleaved: acc4[FE_GROUP * x + r] */
    float *out4; /* FE_GROUP output rows, interleaved */
    void *block;
} scratch;

static int scratch_alloc(scratch *s, int32_t size, int32_t max_w, int32_t taps_x, int32_t taps_y) {
    const size_t cx = (size_t)size * taps_x, cy = (size_t)size * taps_y;
    const size_t n_i32 = 2 * (size_t)size;
    const size_t n_f32 = cx + cy + (1 + 2 * FE_GROUP) * (size_t)max_w + FE_GROUP * (size_t)size;
    char *b = (char *)malloc(n_i32 * sizeof(int32_t) + n_f32 * sizeof(float));
    int32_t *ip;
    float *fp;
    s->block = b;
    if (b == NULL) return FE_ENOMEM;
    ip = (int32_t *)b;
    fp = (float *)(b + n_i32 * sizeof(int32_t));
    s->tx.first = ip, ip += size;
    s->ty.first = ip;
    s->tx.wt = fp, fp += cx;
    s->ty.wt = fp, fp += cy;
    s->tx.cap = (int32_t)cx;
    s->ty.cap = (int32_t)cy;
    s->gray = fp, fp += max_w;
    s->acc = fp, fp += FE_GROUP * (size_t)max_w;
    s->acc4 = fp, fp += FE_GROUP * (size_t)max_w;
    s->out4 = fp;
    return FE_OK;
}

/* Ask for the next source row while this one is converted: face rows are short (a few hundred
   bytes) and a frame apart, which hardware prefetchers follow late. */
static inline void prefetch_row(const fe_frame *fr, int32_t row, int32_t c0, int32_t n) {
#if defined(__GNUC__) || defined(__clang__)
    const uint8_t *p = fr->data + (ptrdiff_t)row * fr->row_stride + (ptrdiff_t)c0 * fr->channels;
    const ptrdiff_t bytes = (ptrdiff_t)n * fr->channels;
    ptrdiff_t k;
    for (k = 0; k < bytes; k += 64) __builtin_prefetch(p + k, 0, 3);
    __builtin_prefetch(p + bytes - 1, 0, 3);
#else
    (void)fr, (void)row, (void)c0, (void)n;
#endif
}

/* Horizontal pass of a group: out4[4 dx + r] = sum over t < taps of wt[dx, t] * acc4[4 (first[dx] + t) + r].
   The group's rows are interleaved so that the four rows' products are one 4-wide vector operation,
   and a constant tap count lets the compiler unroll without branches. */
#define FE_HSUM4(TAPS)                                                                                  \
    for (dx = 0; dx < S; dx++) {                                                                        \
        const float *restrict a = acc4 + 4 * (ptrdiff_t)(s->tx.first[dx] - c0);                        \
        const float *restrict w = xw + (ptrdiff_t)dx * (TAPS);                                          \
        float o[4] = {0.0f, 0.0f, 0.0f, 0.0f};                                                          \
        for (t = 0; t < (TAPS); t++)                                                                    \
            for (r = 0; r < 4; r++) o[r] += w[t] * a[4 * t + r];                                        \
        for (r = 0; r < 4; r++) out4[4 * dx + r] = o[r] - shift;                                        \
    }

/* Output rows [dy0, dy1) of one face into `out` (S * S elements of the output type). */
FE_HOT static int crop_face_rows(const fe_frame *fr, const double region[4], const fe_crop_params *p, int simd,
                                 int32_t dy0, int32_t dy1, scratch *s, void *out) {
    const int32_t S = p->size;
    const float unit = fr->channels == 1 ? 1.0f : FE_GRAY_ONE;
    const float scale = 1.0f / (255.0f * p->std * unit), shift = p->mean / p->std;
    int32_t dy, dx, t, r, y, i, c0, n, nx, ny;
    int err;

    err = build_taps(region[0], region[2], S, fr->width, scale, &s->tx);
    if (err == FE_OK) err = build_taps(region[1], region[3], S, fr->height, 1.0f, &s->ty);
    if (err != FE_OK) return err;
    c0 = s->tx.lo;
    n = s->tx.hi - s->tx.lo + 1;
    nx = s->tx.n;
    ny = s->ty.n;

    for (dy = dy0; dy < dy1; dy += FE_GROUP) {
        const int32_t rows = dy1 - dy < FE_GROUP ? dy1 - dy : FE_GROUP;
        const int32_t y0 = s->ty.first[dy], y1 = s->ty.first[dy + rows - 1] + ny;
        const float *restrict xw = s->tx.wt;
        const float *restrict a0, *restrict a1, *restrict a2, *restrict a3;
        float *restrict acc4 = s->acc4, *restrict out4 = s->out4;
        int filled[FE_GROUP] = {0};
        /* Vertical: every source row of the group once, into the 1 to 4 output rows it feeds. */
        for (y = y0; y < y1; y++) {
            vstep v = {0};
            for (r = 0; r < rows; r++) {
                const int32_t k = y - s->ty.first[dy + r];
                float w;
                if (k < 0 || k >= ny) continue;
                w = s->ty.wt[(ptrdiff_t)(dy + r) * ny + k];
                if (w == 0.0f) continue; /* padding: the row may not even be needed */
                v.w[v.m] = w;
                v.acc[v.m] = s->acc + (ptrdiff_t)r * n;
                v.add[v.m] = filled[r];
                filled[r] = 1;
                v.m++;
            }
            if (v.m == 0) continue;
            if (y + 2 < y1) prefetch_row(fr, y + 2, c0, n);
            vertical_step(fr, y, c0, n, simd, &v, s->gray);
        }
        for (r = 0; r < rows; r++)
            if (!filled[r]) memset(s->acc + (ptrdiff_t)r * n, 0, sizeof(float) * (size_t)n);
        /* Missing rows of a short last group repeat row 0; their results are not written. */
        a0 = s->acc;
        a1 = s->acc + (rows > 1 ? n : 0);
        a2 = s->acc + (rows > 2 ? 2 * n : 0);
        a3 = s->acc + (rows > 3 ? 3 * n : 0);
        for (i = 0; i < n; i++) {
            acc4[4 * i] = a0[i];
            acc4[4 * i + 1] = a1[i];
            acc4[4 * i + 2] = a2[i];
            acc4[4 * i + 3] = a3[i];
        }
        switch (nx) {
        case 1: FE_HSUM4(1) break;
        case 2: FE_HSUM4(2) break;
        case 3: FE_HSUM4(3) break;
        case 4: FE_HSUM4(4) break;
        case 5: FE_HSUM4(5) break;
        case 6: FE_HSUM4(6) break;
        case 7: FE_HSUM4(7) break;
        case 8: FE_HSUM4(8) break;
        default: FE_HSUM4(nx) break;
        }
        for (r = 0; r < rows; r++) {
            const ptrdiff_t o = (ptrdiff_t)(dy + r) * S;
            if (p->out_type == FE_OUT_F32)
                for (dx = 0; dx < S; dx++) ((float *)out)[o + dx] = out4[4 * dx + r];
            else
                for (dx = 0; dx < S; dx++) ((uint16_t *)out)[o + dx] = f32_to_f16(out4[4 * dx + r]);
        }
    }
    return FE_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Batch                                                                                           */

void fe_box_region(const double box[4], double margin, int square, double region[4]) {
    const double cx = box[0] + box[2] / 2, cy = box[1] + box[3] / 2;
    double w = box[2] * (1 + 2 * margin), h = box[3] * (1 + 2 * margin);
    if (square) w = h = w > h ? w : h;
    region[0] = cx - w / 2;
    region[1] = cy - h / 2;
    region[2] = w;
    region[3] = h;
}

static int overlaps(const double b[4], const fe_frame *fr) {
    return b[0] < fr->width && b[0] + b[2] > 0 && b[1] < fr->height && b[1] + b[3] > 0;
}

/* Frame pixels under a region. */
static double overlap_area(const double r[4], const fe_frame *fr) {
    const double x0 = r[0] > 0 ? r[0] : 0, x1 = r[0] + r[2] < fr->width ? r[0] + r[2] : fr->width;
    const double y0 = r[1] > 0 ? r[1] : 0, y1 = r[1] + r[3] < fr->height ? r[1] + r[3] : fr->height;
    return (x1 - x0) * (y1 - y0);
}

/* Work estimate for the thread count: frame pixels read, plus this many per output pixel (the
   tables and the horizontal pass), and the work worth one more thread. */
#define FE_FACE_COST 2.0
#define FE_PIXELS_PER_THREAD 32768.0

static int check_box(const double box[4], const fe_frame *fr, const fe_crop_params *p) {
    double region[4];
    int j;
    for (j = 0; j < 4; j++)
        if (!(fabs(box[j]) <= FE_MAX_COORD)) return FE_EBOX_VALUE; /* also catches nan */
    if (!(box[2] > 0) || !(box[3] > 0)) return FE_EBOX_SIZE;
    fe_box_region(box, p->margin, p->square, region);
    for (j = 0; j < 4; j++)
        if (!(fabs(region[j]) <= FE_MAX_COORD)) return FE_EBOX_VALUE;
    if (!(region[2] > 0) || !(region[3] > 0)) return FE_EBOX_SIZE;
    if (!overlaps(box, fr) || !overlaps(region, fr)) return FE_EBOX_OUTSIDE;
    return FE_OK;
}

int fe_crop_faces(const fe_frame *frames, int32_t n_frames, const double *boxes, const int32_t *frame_index,
                  ptrdiff_t n_boxes, const fe_crop_params *params, void *out, int threads, ptrdiff_t *bad_box) {
    const fe_crop_params *p = params;
    ptrdiff_t b, items, parts, it;
    int32_t max_w = 1, taps_x = 1, taps_y = 1, f;
    double work = 0;
    int err = FE_OK, simd;
    size_t face_bytes;

    if (bad_box) *bad_box = -1;
    if (p == NULL || p->size < 1 || p->size > FE_MAX_SIZE || !(p->std > 0.0f) || !isfinite(p->std) ||
        !isfinite(p->mean) || !(p->margin > -0.5) || !isfinite(p->margin) || threads < 1 ||
        (p->out_type != FE_OUT_F32 && p->out_type != FE_OUT_F16) || n_boxes < 0 || n_frames < 1 ||
        frames == NULL || (n_boxes > 0 && (boxes == NULL || out == NULL)))
        return FE_EINVAL;
    for (f = 0; f < n_frames; f++) {
        const fe_frame *fr = &frames[f];
        if (fr->data == NULL || fr->height < 1 || fr->width < 1 ||
            (fr->channels != 1 && fr->channels != 3 && fr->channels != 4) ||
            fr->row_stride < (ptrdiff_t)fr->width * fr->channels ||
            (fr->order != FE_ORDER_BGR && fr->order != FE_ORDER_RGB))
            return FE_EFRAME;
        if (fr->width > max_w) max_w = fr->width;
    }
    /* Every box is checked before any work, so that an error leaves `out` untouched. */
    for (b = 0; b < n_boxes; b++) {
        f = frame_index ? frame_index[b] : 0;
        if (f < 0 || f >= n_frames) err = FE_EBOX_FRAME;
        else err = check_box(boxes + 4 * b, &frames[f], p);
        if (err != FE_OK) {
            if (bad_box) *bad_box = b;
            return err;
        } else {
            double region[4];
            int32_t tx, ty;
            fe_box_region(boxes + 4 * b, p->margin, p->square, region);
            tx = taps_per_output(region[2], p->size, frames[f].width);
            ty = taps_per_output(region[3], p->size, frames[f].height);
            if (tx > taps_x) taps_x = tx;
            if (ty > taps_y) taps_y = ty;
            work += overlap_area(region, &frames[f]) + FE_FACE_COST * (double)p->size * p->size;
        }
    }
    if (n_boxes == 0) return FE_OK;
    simd = fe_simd_supported();
    if (p->simd >= 0 && p->simd < simd) simd = p->simd;

    /* Waking a thread costs about as much as a few thousand pixels: small batches stay on fewer. */
    if (threads > 1 && work / FE_PIXELS_PER_THREAD < threads)
        threads = work < 2 * FE_PIXELS_PER_THREAD ? 1 : (int)(work / FE_PIXELS_PER_THREAD);
    /* With fewer faces than threads, each face is cut into bands of output rows. */
    parts = n_boxes >= threads ? 1 : (threads + n_boxes - 1) / n_boxes;
    if (parts > p->size) parts = p->size;
    items = n_boxes * parts;
    if (threads > items) threads = (int)items;
    face_bytes = (size_t)p->size * p->size * (p->out_type == FE_OUT_F32 ? sizeof(float) : sizeof(uint16_t));

#ifdef _OPENMP
    #pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        scratch s;
        int terr = scratch_alloc(&s, p->size, max_w, taps_x, taps_y);
#ifdef _OPENMP
        #pragma omp for schedule(dynamic, 1)
#endif
        for (it = 0; it < items; it++) {
            const ptrdiff_t box = it / parts, part = it % parts;
            const int32_t dy0 = (int32_t)(p->size * part / parts), dy1 = (int32_t)(p->size * (part + 1) / parts);
            const fe_frame *fr = &frames[frame_index ? frame_index[box] : 0];
            double region[4];
            if (terr != FE_OK) continue;
            fe_box_region(boxes + 4 * box, p->margin, p->square, region);
            terr = crop_face_rows(fr, region, p, simd, dy0, dy1, &s, (char *)out + face_bytes * box);
        }
        free(s.block);
        if (terr != FE_OK) {
#ifdef _OPENMP
            #pragma omp critical(fe_crop_error)
#endif
            err = terr;
        }
    }
    return err;
}
