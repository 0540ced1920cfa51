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
#define FE_EINVAL 1       /* a parameter is out of range (size, std, margin, threads, dtype) */
#define FE_EFRAME 2       /* a frame has an empty shape, an unknown channel count or a short row stride */
#define FE_EBOX_VALUE 3   /* a box coordinate is not finite or lies beyond +-FE_MAX_COORD */
#define FE_EBOX_SIZE 4    /* a box has zero or negative width or height */
#define FE_EBOX_OUTSIDE 5 /* a box, or the region its margin makes, does not overlap its frame */
#define FE_EBOX_FRAME 6   /* a box's frame index is not that of a frame */
#define FE_ENOMEM 7       /* scratch memory could not be allocated */
#define FE_EINTERNAL 8    /* an internal table overflowed: a bug, reported instead of writing past it */

/* Channel order of 3- and 4-channel frames. */
#define FE_ORDER_BGR 0
#define FE_ORDER_RGB 1

/* Instruction sets of the gray conversion (fe_crop_params.simd, fe_simd_supported). */
#define FE_SIMD_NONE 0
#define FE_SIMD_AVX2 1
#define FE_SIMD_AVX512 2 /* AVX-512 F, BW and VBMI */

/* Output element types. */
#define FE_OUT_F32 0
#define FE_OUT_F16 1

/* Box coordinates (after margin and squaring) must stay within +-FE_MAX_COORD pixels, so that
   every index computed from them fits an int. */
#define FE_MAX_COORD 1073741824.0
/* Largest output side. */
#define FE_MAX_SIZE 4096

/* A uint8 image: rows of `width` pixels of `channels` interleaved bytes, rows `row_stride` bytes apart. */
typedef struct fe_frame {
    const uint8_t *data;
    ptrdiff_t row_stride; /* >= width * channels */
    int32_t height, width;
    int32_t channels; /* 1 gray, 3 BGR/RGB, 4 BGRA/RGBA (alpha ignored) */
    int32_t order;    /* FE_ORDER_BGR or FE_ORDER_RGB; ignored for 1 channel */
} fe_frame;

typedef struct fe_crop_params {
    int32_t size;     /* output side S, 1..FE_MAX_SIZE */
    double margin;    /* widen boxes by margin * size on every side; > -0.5 */
    int32_t square;   /* nonzero: make each box square (side = longer side) about its centre */
    float mean, std;  /* output = (gray / 255 - mean) / std; std > 0 */
    int32_t out_type; /* FE_OUT_F32 or FE_OUT_F16 */
    int32_t simd;     /* highest FE_SIMD_* to use, -1 for the best this CPU has (tests lower it) */
} fe_crop_params;

/* Number of OpenMP threads the build can use (1 when built without OpenMP). */
int fe_max_threads(void);

/* The best FE_SIMD_* level this build and this CPU support. */
int fe_simd_supported(void);

/* 1 when the library was compiled with OpenMP. */
int fe_has_openmp(void);

/* out[i] = (src[i] / 255 - mean) / std for n pixels, on `threads` threads. */
int fe_normalize_u8(const uint8_t *src, size_t n, float mean, float std, float *out, int threads);

/* The region a box (x, y, w, h) samples after the margin and the squaring (see fe_crop_faces). */
void fe_box_region(const double box[4], double margin, int square, double region[4]);

/* Crops, converts to gray, resizes and normalises n_boxes faces into out (n_boxes * S * S elements
   of float32, or of float16 bits when out_type is FE_OUT_F16).

   Box b = boxes[4b .. 4b+3] = (x, y, w, h) in pixels of frame frame_index[b] (frame 0 when
   frame_index is NULL). It is widened by margin * (w, h) on every side and, with `square`, grown to
   a square of the longer side about its centre. The result is a continuous region
   [x, x + w) x [y, y + h) of the frame, where pixel (i, j) covers [i, i + 1) x [j, j + 1); outside
   the frame the border pixels are replicated. Each axis is resampled on its own: when the region is
   longer than S on that axis, output k is the mean over the cell [x + k w / S, x + (k + 1) w / S)
   (OpenCV's INTER_AREA); otherwise output k takes the linear interpolation at
   x + (k + 0.5) w / S - 0.5, clamped to [x, x + max(w - 1, 0)] (OpenCV's INTER_LINEAR). For integer
   boxes inside the frame this is cv2.resize of frame[y:y+h, x:x+w]. Gray is
   (1868 B + 9617 G + 4899 R) / 16384, OpenCV's fixed-point weights, not rounded.

   Every box is checked before any is computed; on an error nothing is written, *bad_box (if not
   NULL) is the index of the offending box (or -1) and an FE_E* code is returned. */
int fe_crop_faces(const fe_frame *frames, int32_t n_frames, const double *boxes, const int32_t *frame_index,
                  ptrdiff_t n_boxes, const fe_crop_params *params, void *out, int threads, ptrdiff_t *bad_box);

/* IEEE float16 bits of src[i], rounded to nearest even (as numpy's astype(float16)). */
void fe_f32_to_f16(const float *src, uint16_t *dst, ptrdiff_t n);

#ifdef __cplusplus
}
#endif
#endif
