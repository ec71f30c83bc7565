// Reference codecs of the RotorQuant KV-cache types (see rq-quants.h).
#include "rq-quants.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#define RQ_FP16_MAX 65504.0f

bool rq_is_cache_type(enum ggml_type type) {
    return type == GGML_TYPE_PLANAR3 || type == GGML_TYPE_ISO3 ||
           type == GGML_TYPE_PLANAR4 || type == GGML_TYPE_ISO4;
}

bool rq_is_kv_only_type(enum ggml_type type) {
    return rq_is_cache_type(type) || type == GGML_TYPE_PLANAR_F32 || type == GGML_TYPE_ISO_F32;
}

enum ggml_type rq_rotated_type(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_PLANAR3:
        case GGML_TYPE_PLANAR4: return GGML_TYPE_PLANAR_F32;
        case GGML_TYPE_ISO3:
        case GGML_TYPE_ISO4:    return GGML_TYPE_ISO_F32;
        default:                return GGML_TYPE_COUNT;
    }
}

// ---- rotations ---------------------------------------------------------------
// Forward: y = R x.  planar pair p: (c x0 - s x1, s x0 + c x1).  iso quartet g: the
// Hamilton product q_g (x) v.  The double versions serve the quantisers: every
// product of two floats is exact in double, so the result does not depend on
// whether the compiler fuses multiply-adds.

static void rotate_block_planar_d(const float * x, double * y) {
    for (int p = 0; p < RQ_QK / 2; ++p) {
        const double c = rq_planar_cos[p], s = rq_planar_sin[p];
        const double u0 = x[2*p], u1 = x[2*p + 1];
        y[2*p]     = c*u0 - s*u1;
        y[2*p + 1] = s*u0 + c*u1;
    }
}

static void rotate_block_iso_d(const float * x, double * y) {
    for (int g = 0; g < RQ_QK / 4; ++g) {
        const double a0 = rq_iso_quat[g][0], a1 = rq_iso_quat[g][1];
        const double a2 = rq_iso_quat[g][2], a3 = rq_iso_quat[g][3];
        const double v0 = x[4*g], v1 = x[4*g + 1], v2 = x[4*g + 2], v3 = x[4*g + 3];
        y[4*g]     = a0*v0 - a1*v1 - a2*v2 - a3*v3;
        y[4*g + 1] = a1*v0 + a0*v1 - a3*v2 + a2*v3;
        y[4*g + 2] = a2*v0 + a3*v1 + a0*v2 - a1*v3;
        y[4*g + 3] = a3*v0 - a2*v1 + a1*v2 + a0*v3;
    }
}

static void rotate_block_planar(const float * x, float * y) {
    for (int p = 0; p < RQ_QK / 2; ++p) {
        const float c = rq_planar_cos[p], s = rq_planar_sin[p];
        const float u0 = x[2*p], u1 = x[2*p + 1];
        y[2*p]     = c*u0 - s*u1;
        y[2*p + 1] = s*u0 + c*u1;
    }
}

static void unrotate_block_planar(const float * w, float * y, float scale) {
    for (int p = 0; p < RQ_QK / 2; ++p) {
        const float c = rq_planar_cos[p], s = rq_planar_sin[p];
        const float w0 = w[2*p], w1 = w[2*p + 1];
        y[2*p]     = scale*( c*w0 + s*w1);
        y[2*p + 1] = scale*(-s*w0 + c*w1);
    }
}

static void rotate_block_iso(const float * x, float * y) {
    for (int g = 0; g < RQ_QK / 4; ++g) {
        const float a0 = rq_iso_quat[g][0], a1 = rq_iso_quat[g][1];
        const float a2 = rq_iso_quat[g][2], a3 = rq_iso_quat[g][3];
        const float v0 = x[4*g], v1 = x[4*g + 1], v2 = x[4*g + 2], v3 = x[4*g + 3];
        y[4*g]     = a0*v0 - a1*v1 - a2*v2 - a3*v3;
        y[4*g + 1] = a1*v0 + a0*v1 - a3*v2 + a2*v3;
        y[4*g + 2] = a2*v0 + a3*v1 + a0*v2 - a1*v3;
        y[4*g + 3] = a3*v0 - a2*v1 + a1*v2 + a0*v3;
    }
}

// Inverse: the conjugate quaternion, i.e. M(q)^T.
static void unrotate_block_iso(const float * w, float * y, float scale) {
    for (int g = 0; g < RQ_QK / 4; ++g) {
        const float a0 = rq_iso_quat[g][0], a1 = rq_iso_quat[g][1];
        const float a2 = rq_iso_quat[g][2], a3 = rq_iso_quat[g][3];
        const float w0 = w[4*g], w1 = w[4*g + 1], w2 = w[4*g + 2], w3 = w[4*g + 3];
        y[4*g]     = scale*( a0*w0 + a1*w1 + a2*w2 + a3*w3);
        y[4*g + 1] = scale*(-a1*w0 + a0*w1 + a3*w2 - a2*w3);
        y[4*g + 2] = scale*(-a2*w0 - a3*w1 + a0*w2 + a1*w3);
        y[4*g + 3] = scale*(-a3*w0 + a2*w1 - a1*w2 + a0*w3);
    }
}

// ---- quantisers ----------------------------------------------------------------

typedef void (*rotate_d_fn)(const float * x, double * y);

// Sum of a block's 64 terms in the format's fixed order, a halving tree: t[l] += t[l + h]
// for h = 32, 16, ..., 1.  It is the order of a warp's butterfly reduction, so the CUDA
// quantiser (one warp per block) rounds exactly as this one does.  Destroys t.
static double tree_sum(double * t) {
    for (int h = RQ_QK / 2; h >= 1; h /= 2) {
        for (int l = 0; l < h; ++l) {
            t[l] += t[l + h];
        }
    }
    return t[0];
}

// Indices of one block and its stored scale (as the half it will be).
static ggml_fp16_t encode_block(const float * x, rotate_d_fn rotate, const float * bounds, int n_bounds,
                                const float * levels, uint8_t * idx) {
    double y[RQ_QK], t[RQ_QK];
    for (int j = 0; j < RQ_QK; ++j) {
        t[j] = (double) x[j] * x[j];
    }
    const double n = sqrt(tree_sum(t));
    rotate(x, y);
    for (int j = 0; j < RQ_QK; ++j) {
        const double u = n > 0.0 ? y[j] / n : 0.0;
        int k = 0;
        for (int i = 0; i < n_bounds; ++i) {
            k += u > (double) bounds[i];
        }
        idx[j] = (uint8_t) k;
        t[j] = (double) levels[k] * levels[k];
    }
    const double r = sqrt(tree_sum(t));
    float s = (float) (r > 0.0 ? n / r : n);
    if (!(s <= RQ_FP16_MAX)) {
        s = RQ_FP16_MAX;  // also maps NaN: a poisoned row must not poison the cache
    }
    return ggml_fp32_to_fp16(s);
}

static void quantize_row_3(const float * x, block_rq3 * y, int64_t k, rotate_d_fn rotate) {
    assert(k % RQ_QK == 0);
    uint8_t idx[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        const ggml_fp16_t s = encode_block(x + b*RQ_QK, rotate, rq_bounds3, 7, rq_levels3, idx);
        memcpy(&y[b].norm, &s, sizeof(s));
        memset(y[b].qs, 0, sizeof(y[b].qs));
        memset(y[b].signs, 0, sizeof(y[b].signs));
        for (int j = 0; j < RQ_QK; ++j) {
            const int f = j / 16, c = j % 16;
            y[b].qs[c]        |= (uint8_t) ((idx[j] & 3) << (2*f));
            y[b].signs[c % 8] |= (uint8_t) ((idx[j] >> 2) << (2*f + c / 8));
        }
    }
}

static void quantize_row_4(const float * x, block_rq4 * y, int64_t k, rotate_d_fn rotate) {
    assert(k % RQ_QK == 0);
    uint8_t idx[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        const ggml_fp16_t s = encode_block(x + b*RQ_QK, rotate, rq_bounds4, 15, rq_levels4, idx);
        memcpy(&y[b].norm, &s, sizeof(s));
        for (int j = 0; j < RQ_QK / 2; ++j) {
            y[b].qs[j] = (uint8_t) (idx[j] | (idx[j + RQ_QK/2] << 4));
        }
    }
}

void rq_quantize_row_planar3_ref(const float * x, void * y, int64_t k) { quantize_row_3(x, y, k, rotate_block_planar_d); }
void rq_quantize_row_iso3_ref   (const float * x, void * y, int64_t k) { quantize_row_3(x, y, k, rotate_block_iso_d); }
void rq_quantize_row_planar4_ref(const float * x, void * y, int64_t k) { quantize_row_4(x, y, k, rotate_block_planar_d); }
void rq_quantize_row_iso4_ref   (const float * x, void * y, int64_t k) { quantize_row_4(x, y, k, rotate_block_iso_d); }

// ---- dequantisers ----------------------------------------------------------------

typedef void (*unrotate_fn)(const float * w, float * y, float scale);

static void dequantize_row_3(const block_rq3 * x, float * y, int64_t k, unrotate_fn unrotate) {
    float w[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        for (int j = 0; j < RQ_QK; ++j) {
            w[j] = rq_levels3[rq3_index(&x[b], j)];
        }
        unrotate(w, y + b*RQ_QK, ggml_fp16_to_fp32(x[b].norm));
    }
}

static void dequantize_row_4(const block_rq4 * x, float * y, int64_t k, unrotate_fn unrotate) {
    float w[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        for (int j = 0; j < RQ_QK; ++j) {
            w[j] = rq_levels4[rq4_index(&x[b], j)];
        }
        unrotate(w, y + b*RQ_QK, ggml_fp16_to_fp32(x[b].norm));
    }
}

void rq_dequantize_row_planar3(const void * x, float * y, int64_t k) { dequantize_row_3(x, y, k, unrotate_block_planar); }
void rq_dequantize_row_iso3   (const void * x, float * y, int64_t k) { dequantize_row_3(x, y, k, unrotate_block_iso); }
void rq_dequantize_row_planar4(const void * x, float * y, int64_t k) { dequantize_row_4(x, y, k, unrotate_block_planar); }
void rq_dequantize_row_iso4   (const void * x, float * y, int64_t k) { dequantize_row_4(x, y, k, unrotate_block_iso); }

// ---- rotated-f32 helper types ------------------------------------------------------

void rq_rotate_row_planar(const float * x, void * y, int64_t k) {
    float tmp[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        rotate_block_planar(x + b*RQ_QK, tmp);
        memcpy((float *) y + b*RQ_QK, tmp, sizeof(tmp));
    }
}

void rq_rotate_row_iso(const float * x, void * y, int64_t k) {
    float tmp[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        rotate_block_iso(x + b*RQ_QK, tmp);
        memcpy((float *) y + b*RQ_QK, tmp, sizeof(tmp));
    }
}

void rq_unrotate_row_planar(const void * x, float * y, int64_t k) {
    float tmp[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        memcpy(tmp, (const float *) x + b*RQ_QK, sizeof(tmp));
        unrotate_block_planar(tmp, y + b*RQ_QK, 1.0f);
    }
}

void rq_unrotate_row_iso(const void * x, float * y, int64_t k) {
    float tmp[RQ_QK];
    for (int64_t b = 0; b < k / RQ_QK; ++b) {
        memcpy(tmp, (const float *) x + b*RQ_QK, sizeof(tmp));
        unrotate_block_iso(tmp, y + b*RQ_QK, 1.0f);
    }
}

size_t rq_quantize(enum ggml_type type, const float * src, void * dst, int64_t nrows, int64_t n_per_row) {
    const size_t row_size = ggml_row_size(type, n_per_row);
    const struct ggml_type_traits * tt = ggml_get_type_traits(type);
    if (!rq_is_kv_only_type(type) || n_per_row % RQ_QK != 0 || tt->from_float_ref == NULL) {
        return 0;
    }
    for (int64_t r = 0; r < nrows; ++r) {
        tt->from_float_ref(src + r*n_per_row, (char *) dst + r*row_size, n_per_row);
    }
    return (size_t) nrows * row_size;
}
