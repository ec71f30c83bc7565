// CPU kernels of the RotorQuant KV-cache types: scoring keys and accumulating values
// in the rotated basis.  Scalar references (*_ref) are always built; the unsuffixed
// entry points use AVX2+FMA when this ggml-cpu variant is compiled for it (ggml picks
// the variant, as for its own types) and are otherwise the references.
#pragma once

#include "rq-quants.h"

#ifdef __cplusplus
extern "C" {
#endif

// ggml_vec_dot_t: *s = <dequantised key row x, y> where y is the query *rotated*
// (a PLANAR_F32 / ISO_F32 row), = sum over blocks of s_b * <levels[k], y_b>.
GGML_API void rq_vec_dot_rq3    (int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
GGML_API void rq_vec_dot_rq4    (int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
GGML_API void rq_vec_dot_rq3_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
GGML_API void rq_vec_dot_rq4_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

// Flash-attention V accumulation, still rotated: acc += scale * s_b * levels[k].
typedef void (*rq_vec_mad_t)(int n, float * acc, const void * v, float scale);
GGML_API void rq_vec_mad_rq3    (int n, float * acc, const void * v, float scale);
GGML_API void rq_vec_mad_rq4    (int n, float * acc, const void * v, float scale);
GGML_API void rq_vec_mad_rq3_ref(int n, float * acc, const void * v, float scale);
GGML_API void rq_vec_mad_rq4_ref(int n, float * acc, const void * v, float scale);

// The accumulator for V of `type`, or NULL if `type` is not ours.  After the last
// key, rq_unrotate_acc applies R^T once to the accumulated row (in place).
GGML_API rq_vec_mad_t rq_get_vec_mad(enum ggml_type type);
GGML_API void rq_unrotate_acc(enum ggml_type type, float * acc, int64_t n);

// Flash-attention decode (one query row per head) over keys [ic0, ic1) when K is one of
// our types: the query heads that share a KV head are processed together, so every key
// and value row is decoded once per chunk instead of once per query head.  For each
// query head h it writes partials[h * stride] = {M, S, VKQ[DV]} (V un-rotated), the layout
// ggml's split-KV reduction expects.  dst is the GGML_OP_FLASH_ATTN_EXT node.
GGML_API void rq_flash_attn_ext_decode(const struct ggml_tensor * dst, int64_t ic0, int64_t ic1,
                                       float * partials, int64_t stride);

// Entries of ggml-cpu.c's type_traits_cpu[] for our types (used by patch 0002).
#define RQ_GGML_CPU_TYPE_TRAITS \
    [GGML_TYPE_PLANAR3] = { .from_float = rq_quantize_row_planar3_ref, .vec_dot = rq_vec_dot_rq3, \
                            .vec_dot_type = GGML_TYPE_PLANAR_F32, .nrows = 1 }, \
    [GGML_TYPE_ISO3]    = { .from_float = rq_quantize_row_iso3_ref,    .vec_dot = rq_vec_dot_rq3, \
                            .vec_dot_type = GGML_TYPE_ISO_F32,    .nrows = 1 }, \
    [GGML_TYPE_PLANAR4] = { .from_float = rq_quantize_row_planar4_ref, .vec_dot = rq_vec_dot_rq4, \
                            .vec_dot_type = GGML_TYPE_PLANAR_F32, .nrows = 1 }, \
    [GGML_TYPE_ISO4]    = { .from_float = rq_quantize_row_iso4_ref,    .vec_dot = rq_vec_dot_rq4, \
                            .vec_dot_type = GGML_TYPE_ISO_F32,    .nrows = 1 }, \
    [GGML_TYPE_PLANAR_F32] = { .from_float = rq_rotate_row_planar, .vec_dot_type = GGML_TYPE_F32, .nrows = 1 }, \
    [GGML_TYPE_ISO_F32]    = { .from_float = rq_rotate_row_iso,    .vec_dot_type = GGML_TYPE_F32, .nrows = 1 },

#ifdef __cplusplus
}
#endif
