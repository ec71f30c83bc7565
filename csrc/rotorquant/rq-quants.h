// RotorQuant KV-cache types for ggml: block layouts, reference codecs, type traits.
//
// A block holds RQ_QK = 64 consecutive values x of one K or V row.  Encoding:
//   n = |x|_2;  y = R x / n  (R: 32 Givens rotations, or 16 unit quaternions);
//   k_j = index of the codebook level nearest y_j  (3 or 4 bits);
//   s = n / |levels[k]|_2  (the "corrected norm": the decoded block keeps x's norm).
// Decoding: x^ = s * R^T levels[k].  R and the levels live in rq-tables.h, generated
// once by tools/gen_rotor_tables.py and shared by every backend.
//
// Two helper types hold plain f32 values *in the rotated basis* (R x).  They are the
// vec_dot type of the K types: a query is rotated once, then every key is scored
// directly against its codebook levels (s * <R q, levels[k]>), with no per-key rotation.
#pragma once

#include "ggml.h"
#include "rq-tables.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Index packing is chosen for SIMD decoding: a few shifts and masks of the packed bytes
// yield the indices of consecutive elements, in order (see rq-cpu.c).
//   3-bit, element j = 16 f + b (f = 0..3, b = 0..15):
//     bits 0-1 in qs[b] at bit 2 f;  bit 2 in signs[b % 8] at bit 2 f + b / 8
//   4-bit, element j: qs[j % 32], low nibble for j < 32, high nibble for j >= 32
typedef struct {
    uint16_t norm;               // s, IEEE half
    uint8_t  qs[RQ_QK / 4];      // bits 0-1 of the indices
    uint8_t  signs[RQ_QK / 8];   // bit 2 of the indices (set <=> the level is positive)
} block_rq3;

typedef struct {
    uint16_t norm;               // s, IEEE half
    uint8_t  qs[RQ_QK / 2];      // 4-bit indices
} block_rq4;

#ifdef __cplusplus
static_assert(sizeof(block_rq3) == 2 + RQ_QK / 4 + RQ_QK / 8, "block_rq3 must be packed");
static_assert(sizeof(block_rq4) == 2 + RQ_QK / 2, "block_rq4 must be packed");
#else
_Static_assert(sizeof(block_rq3) == 2 + RQ_QK / 4 + RQ_QK / 8, "block_rq3 must be packed");
_Static_assert(sizeof(block_rq4) == 2 + RQ_QK / 2, "block_rq4 must be packed");
#endif

// Codebook index of element j of a block (scalar; the SIMD kernels decode 8-32 at once).
static inline int rq3_index(const block_rq3 * b, int j) {
    const int f = j / 16, c = j % 16;
    return ((b->qs[c] >> (2*f)) & 3) | (((b->signs[c % 8] >> (2*f + c / 8)) & 1) << 2);
}

static inline int rq4_index(const block_rq4 * b, int j) {
    return (b->qs[j % (RQ_QK/2)] >> (4*(j / (RQ_QK/2)))) & 15;
}

// true for planar3, iso3, planar4, iso4
GGML_API bool rq_is_cache_type(enum ggml_type type);
// true for the cache types and the two rotated-f32 helper types: none may hold weights
GGML_API bool rq_is_kv_only_type(enum ggml_type type);
// the rotated-f32 helper type a cache type is scored against
GGML_API enum ggml_type rq_rotated_type(enum ggml_type type);

// Reference codecs (k = number of values, a multiple of RQ_QK).  The quantisers
// compute in double with float inputs, so every build and the Python reference
// (rotorquant.rotor.reference) produce the same bytes.
GGML_API void rq_quantize_row_planar3_ref(const float * x, void * y, int64_t k);
GGML_API void rq_quantize_row_iso3_ref   (const float * x, void * y, int64_t k);
GGML_API void rq_quantize_row_planar4_ref(const float * x, void * y, int64_t k);
GGML_API void rq_quantize_row_iso4_ref   (const float * x, void * y, int64_t k);
GGML_API void rq_dequantize_row_planar3(const void * x, float * y, int64_t k);
GGML_API void rq_dequantize_row_iso3   (const void * x, float * y, int64_t k);
GGML_API void rq_dequantize_row_planar4(const void * x, float * y, int64_t k);
GGML_API void rq_dequantize_row_iso4   (const void * x, float * y, int64_t k);

// Rotate f32 values into the planar / iso basis (from_float of the helper types)
// and back (their to_float).  In place is allowed.
GGML_API void rq_rotate_row_planar  (const float * x, void * y, int64_t k);
GGML_API void rq_rotate_row_iso     (const float * x, void * y, int64_t k);
GGML_API void rq_unrotate_row_planar(const void * x, float * y, int64_t k);
GGML_API void rq_unrotate_row_iso   (const void * x, float * y, int64_t k);

// ggml_quantize_chunk-style entry (for tests and tools): nrows rows of n_per_row.
GGML_API size_t rq_quantize(enum ggml_type type, const float * src, void * dst,
                            int64_t nrows, int64_t n_per_row);

// Entries of ggml.c's type_traits[] for our types (used by patch 0002).
#define RQ_GGML_TYPE_TRAITS \
    [GGML_TYPE_PLANAR3] = { .type_name = "planar3", .blck_size = RQ_QK, .type_size = sizeof(block_rq3), \
        .is_quantized = true, .to_float = (ggml_to_float_t) rq_dequantize_row_planar3, \
        .from_float_ref = (ggml_from_float_t) rq_quantize_row_planar3_ref }, \
    [GGML_TYPE_ISO3] = { .type_name = "iso3", .blck_size = RQ_QK, .type_size = sizeof(block_rq3), \
        .is_quantized = true, .to_float = (ggml_to_float_t) rq_dequantize_row_iso3, \
        .from_float_ref = (ggml_from_float_t) rq_quantize_row_iso3_ref }, \
    [GGML_TYPE_PLANAR4] = { .type_name = "planar4", .blck_size = RQ_QK, .type_size = sizeof(block_rq4), \
        .is_quantized = true, .to_float = (ggml_to_float_t) rq_dequantize_row_planar4, \
        .from_float_ref = (ggml_from_float_t) rq_quantize_row_planar4_ref }, \
    [GGML_TYPE_ISO4] = { .type_name = "iso4", .blck_size = RQ_QK, .type_size = sizeof(block_rq4), \
        .is_quantized = true, .to_float = (ggml_to_float_t) rq_dequantize_row_iso4, \
        .from_float_ref = (ggml_from_float_t) rq_quantize_row_iso4_ref }, \
    [GGML_TYPE_PLANAR_F32] = { .type_name = "planar_f32", .blck_size = RQ_QK, .type_size = RQ_QK * sizeof(float), \
        .is_quantized = false, .to_float = (ggml_to_float_t) rq_unrotate_row_planar, \
        .from_float_ref = (ggml_from_float_t) rq_rotate_row_planar }, \
    [GGML_TYPE_ISO_F32] = { .type_name = "iso_f32", .blck_size = RQ_QK, .type_size = RQ_QK * sizeof(float), \
        .is_quantized = false, .to_float = (ggml_to_float_t) rq_unrotate_row_iso, \
        .from_float_ref = (ggml_from_float_t) rq_rotate_row_iso },

#ifdef __cplusplus
}
#endif
