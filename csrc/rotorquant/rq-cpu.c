// CPU kernels of the RotorQuant KV-cache types (see rq-cpu.h).
#include "rq-cpu.h"

#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RQ_AVX2 1
#endif

static inline float rq_half(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return ggml_fp16_to_fp32(h);
#endif
}

static inline int rq3_index(const block_rq3 * b, int j) {
    return ((b->qs[j/4] >> (2*(j % 4))) & 3) | (((b->signs[j/8] >> (j % 8)) & 1) << 2);
}

static inline int rq4_index(const block_rq4 * b, int j) {
    return (b->qs[j/2] >> (4*(j % 2))) & 15;
}

// ---- scalar references -----------------------------------------------------------

void rq_vec_dot_rq3_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    const block_rq3 * x = vx;
    const float * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / RQ_QK; ++b) {
        float acc = 0.0f;
        for (int j = 0; j < RQ_QK; ++j) {
            acc += rq_levels3[rq3_index(&x[b], j)] * y[b*RQ_QK + j];
        }
        sum += rq_half(x[b].norm) * acc;
    }
    *s = sum;
}

void rq_vec_dot_rq4_ref(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    const block_rq4 * x = vx;
    const float * y = vy;
    float sum = 0.0f;
    for (int b = 0; b < n / RQ_QK; ++b) {
        float acc = 0.0f;
        for (int j = 0; j < RQ_QK; ++j) {
            acc += rq_levels4[rq4_index(&x[b], j)] * y[b*RQ_QK + j];
        }
        sum += rq_half(x[b].norm) * acc;
    }
    *s = sum;
}

void rq_vec_mad_rq3_ref(int n, float * acc, const void * vv, float scale) {
    const block_rq3 * v = vv;
    for (int b = 0; b < n / RQ_QK; ++b) {
        const float vs = scale * rq_half(v[b].norm);
        for (int j = 0; j < RQ_QK; ++j) {
            acc[b*RQ_QK + j] += vs * rq_levels3[rq3_index(&v[b], j)];
        }
    }
}

void rq_vec_mad_rq4_ref(int n, float * acc, const void * vv, float scale) {
    const block_rq4 * v = vv;
    for (int b = 0; b < n / RQ_QK; ++b) {
        const float vs = scale * rq_half(v[b].norm);
        for (int j = 0; j < RQ_QK; ++j) {
            acc[b*RQ_QK + j] += vs * rq_levels4[rq4_index(&v[b], j)];
        }
    }
}

// ---- AVX2: 8 indices at a time, levels looked up with one (3-bit) or two (4-bit)
// in-register permutes -------------------------------------------------------------

#if defined(RQ_AVX2)

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// levels of elements 8g..8g+7 of a 3-bit block
static inline __m256 rq3_levels8(const block_rq3 * b, int g, __m256 lut) {
    const __m256i shift2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i shift1 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int q = b->qs[2*g] | (b->qs[2*g + 1] << 8);
    const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(q), shift2), _mm256_set1_epi32(3));
    const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(b->signs[g]), shift1), _mm256_set1_epi32(1));
    return _mm256_permutevar8x32_ps(lut, _mm256_or_si256(lo, _mm256_slli_epi32(hi, 2)));
}

static inline __m256 rq4_levels8(const block_rq4 * b, int g, __m256 lut_lo, __m256 lut_hi) {
    const __m256i shift4 = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    uint32_t q;
    memcpy(&q, b->qs + 4*g, sizeof(q));
    const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int) q), shift4), _mm256_set1_epi32(15));
    const __m256 lo = _mm256_permutevar8x32_ps(lut_lo, idx);
    const __m256 hi = _mm256_permutevar8x32_ps(lut_hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7))));
}

void rq_vec_dot_rq3(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    const block_rq3 * x = vx;
    const float * y = vy;
    const __m256 lut = _mm256_loadu_ps(rq_levels3);
    __m256 total = _mm256_setzero_ps();
    for (int b = 0; b < n / RQ_QK; ++b) {
        __m256 acc = _mm256_setzero_ps();
        for (int g = 0; g < RQ_QK / 8; ++g) {
            acc = _mm256_fmadd_ps(rq3_levels8(&x[b], g, lut), _mm256_loadu_ps(y + b*RQ_QK + 8*g), acc);
        }
        total = _mm256_fmadd_ps(acc, _mm256_set1_ps(rq_half(x[b].norm)), total);
    }
    *s = hsum8(total);
}

void rq_vec_dot_rq4(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    const block_rq4 * x = vx;
    const float * y = vy;
    const __m256 lut_lo = _mm256_loadu_ps(rq_levels4), lut_hi = _mm256_loadu_ps(rq_levels4 + 8);
    __m256 total = _mm256_setzero_ps();
    for (int b = 0; b < n / RQ_QK; ++b) {
        __m256 acc = _mm256_setzero_ps();
        for (int g = 0; g < RQ_QK / 8; ++g) {
            acc = _mm256_fmadd_ps(rq4_levels8(&x[b], g, lut_lo, lut_hi), _mm256_loadu_ps(y + b*RQ_QK + 8*g), acc);
        }
        total = _mm256_fmadd_ps(acc, _mm256_set1_ps(rq_half(x[b].norm)), total);
    }
    *s = hsum8(total);
}

void rq_vec_mad_rq3(int n, float * acc, const void * vv, float scale) {
    const block_rq3 * v = vv;
    const __m256 lut = _mm256_loadu_ps(rq_levels3);
    for (int b = 0; b < n / RQ_QK; ++b) {
        const __m256 vs = _mm256_set1_ps(scale * rq_half(v[b].norm));
        for (int g = 0; g < RQ_QK / 8; ++g) {
            float * a = acc + b*RQ_QK + 8*g;
            _mm256_storeu_ps(a, _mm256_fmadd_ps(rq3_levels8(&v[b], g, lut), vs, _mm256_loadu_ps(a)));
        }
    }
}

void rq_vec_mad_rq4(int n, float * acc, const void * vv, float scale) {
    const block_rq4 * v = vv;
    const __m256 lut_lo = _mm256_loadu_ps(rq_levels4), lut_hi = _mm256_loadu_ps(rq_levels4 + 8);
    for (int b = 0; b < n / RQ_QK; ++b) {
        const __m256 vs = _mm256_set1_ps(scale * rq_half(v[b].norm));
        for (int g = 0; g < RQ_QK / 8; ++g) {
            float * a = acc + b*RQ_QK + 8*g;
            _mm256_storeu_ps(a, _mm256_fmadd_ps(rq4_levels8(&v[b], g, lut_lo, lut_hi), vs, _mm256_loadu_ps(a)));
        }
    }
}

#else  // no AVX2: the references are the kernels

void rq_vec_dot_rq3(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    rq_vec_dot_rq3_ref(n, s, bs, x, bx, y, by, nrc);
}
void rq_vec_dot_rq4(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    rq_vec_dot_rq4_ref(n, s, bs, x, bx, y, by, nrc);
}
void rq_vec_mad_rq3(int n, float * acc, const void * v, float scale) { rq_vec_mad_rq3_ref(n, acc, v, scale); }
void rq_vec_mad_rq4(int n, float * acc, const void * v, float scale) { rq_vec_mad_rq4_ref(n, acc, v, scale); }

#endif

rq_vec_mad_t rq_get_vec_mad(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_PLANAR3:
        case GGML_TYPE_ISO3:    return rq_vec_mad_rq3;
        case GGML_TYPE_PLANAR4:
        case GGML_TYPE_ISO4:    return rq_vec_mad_rq4;
        default:                return NULL;
    }
}

void rq_unrotate_acc(enum ggml_type type, float * acc, int64_t n) {
    if (rq_rotated_type(type) == GGML_TYPE_PLANAR_F32) {
        rq_unrotate_row_planar(acc, acc, n);
    } else if (rq_rotated_type(type) == GGML_TYPE_ISO_F32) {
        rq_unrotate_row_iso(acc, acc, n);
    }
}
