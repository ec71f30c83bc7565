// CPU kernels of the RotorQuant KV-cache types (see rq-cpu.h).
#include "rq-cpu.h"

#include <math.h>
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

// ---- scalar references -----------------------------------------------------------

// Levels of block b of a 3- or 4-bit row (in the rotated basis); returns its scale.
static float rq_block_levels_ref(int bits, const void * x, int64_t b, float w[RQ_QK]) {
    if (bits == 3) {
        const block_rq3 * blk = (const block_rq3 *) x + b;
        for (int j = 0; j < RQ_QK; ++j) {
            w[j] = rq_levels3[rq3_index(blk, j)];
        }
        return rq_half(blk->norm);
    }
    const block_rq4 * blk = (const block_rq4 *) x + b;
    for (int j = 0; j < RQ_QK; ++j) {
        w[j] = rq_levels4[rq4_index(blk, j)];
    }
    return rq_half(blk->norm);
}

static float rq_vec_dot_ref(int bits, int n, const void * x, const float * y) {
    float w[RQ_QK], sum = 0.0f;
    for (int b = 0; b < n / RQ_QK; ++b) {
        const float scale = rq_block_levels_ref(bits, x, b, w);
        float acc = 0.0f;
        for (int j = 0; j < RQ_QK; ++j) {
            acc += w[j] * y[b*RQ_QK + j];
        }
        sum += scale * acc;
    }
    return sum;
}

static void rq_vec_mad_ref(int bits, int n, float * acc, const void * v, float scale) {
    float w[RQ_QK];
    for (int b = 0; b < n / RQ_QK; ++b) {
        const float vs = scale * rq_block_levels_ref(bits, v, b, w);
        for (int j = 0; j < RQ_QK; ++j) {
            acc[b*RQ_QK + j] += vs * w[j];
        }
    }
}

void rq_vec_dot_rq3_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = rq_vec_dot_ref(3, n, x, y);
}

void rq_vec_dot_rq4_ref(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    *s = rq_vec_dot_ref(4, n, x, y);
}

void rq_vec_mad_rq3_ref(int n, float * acc, const void * v, float scale) { rq_vec_mad_ref(3, n, acc, v, scale); }
void rq_vec_mad_rq4_ref(int n, float * acc, const void * v, float scale) { rq_vec_mad_ref(4, n, acc, v, scale); }

// ---- AVX2: 8 indices at a time, levels looked up with one (3-bit) or two (4-bit)
// in-register permutes -------------------------------------------------------------

#if defined(RQ_AVX2)

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Levels of a whole block, 8 per register, in element order.  The packing (rq-quants.h)
// makes each step a shift/mask of all packed bytes at once; the level lookup is one
// (3-bit) or two (4-bit) in-register permutes of 8 indices widened to 32 bits.

static inline void rq3_levels_block(const block_rq3 * b, __m256 lut, __m256 out[RQ_QK / 8]) {
    const __m128i q = _mm_loadu_si128((const __m128i *) b->qs);
    const __m128i s = _mm_loadl_epi64((const __m128i *) b->signs);
    const __m128i srep = _mm_unpacklo_epi64(s, s);  // lane c holds signs[c % 8]
    const __m128i three = _mm_set1_epi8(3), four = _mm_set1_epi8(4);
    for (int f = 0; f < 4; ++f) {  // elements 16 f .. 16 f + 15
        const __m128i lo = _mm_and_si128(_mm_srl_epi16(q, _mm_cvtsi32_si128(2*f)), three);
        const __m128i m = _mm_unpacklo_epi64(_mm_set1_epi8((char) (1 << (2*f))), _mm_set1_epi8((char) (1 << (2*f + 1))));
        const __m128i hi = _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(srep, m), m), four);
        const __m128i idx = _mm_or_si128(lo, hi);
        out[2*f]     = _mm256_permutevar8x32_ps(lut, _mm256_cvtepu8_epi32(idx));
        out[2*f + 1] = _mm256_permutevar8x32_ps(lut, _mm256_cvtepu8_epi32(_mm_srli_si128(idx, 8)));
    }
}

static inline __m256 rq4_lookup8(__m128i idx8, __m256 lut_lo, __m256 lut_hi) {
    const __m256i i = _mm256_cvtepu8_epi32(idx8);
    const __m256 lo = _mm256_permutevar8x32_ps(lut_lo, i);
    const __m256 hi = _mm256_permutevar8x32_ps(lut_hi, i);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(7))));
}

static inline void rq4_levels_block(const block_rq4 * b, __m256 lut_lo, __m256 lut_hi, __m256 out[RQ_QK / 8]) {
    const __m256i q = _mm256_loadu_si256((const __m256i *) b->qs);
    const __m256i mask = _mm256_set1_epi8(15);
    const __m256i lo = _mm256_and_si256(q, mask);                         // elements 0..31
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);   // elements 32..63
    const __m128i parts[4] = { _mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1),
                               _mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1) };
    for (int p = 0; p < 4; ++p) {
        out[2*p]     = rq4_lookup8(parts[p], lut_lo, lut_hi);
        out[2*p + 1] = rq4_lookup8(_mm_srli_si128(parts[p], 8), lut_lo, lut_hi);
    }
}

void rq_vec_dot_rq3(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    const block_rq3 * x = vx;
    const float * y = vy;
    const __m256 lut = _mm256_loadu_ps(rq_levels3);
    __m256 total = _mm256_setzero_ps();
    __m256 lv[RQ_QK / 8];
    for (int b = 0; b < n / RQ_QK; ++b) {
        rq3_levels_block(&x[b], lut, lv);
        __m256 acc0 = _mm256_mul_ps(lv[0], _mm256_loadu_ps(y + b*RQ_QK));
        __m256 acc1 = _mm256_mul_ps(lv[1], _mm256_loadu_ps(y + b*RQ_QK + 8));
        for (int g = 2; g < RQ_QK / 8; g += 2) {
            acc0 = _mm256_fmadd_ps(lv[g],     _mm256_loadu_ps(y + b*RQ_QK + 8*g),     acc0);
            acc1 = _mm256_fmadd_ps(lv[g + 1], _mm256_loadu_ps(y + b*RQ_QK + 8*g + 8), acc1);
        }
        total = _mm256_fmadd_ps(_mm256_add_ps(acc0, acc1), _mm256_set1_ps(rq_half(x[b].norm)), total);
    }
    *s = hsum8(total);
}

void rq_vec_dot_rq4(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc) {
    (void) bs; (void) bx; (void) by; (void) nrc;
    const block_rq4 * x = vx;
    const float * y = vy;
    const __m256 lut_lo = _mm256_loadu_ps(rq_levels4), lut_hi = _mm256_loadu_ps(rq_levels4 + 8);
    __m256 total = _mm256_setzero_ps();
    __m256 lv[RQ_QK / 8];
    for (int b = 0; b < n / RQ_QK; ++b) {
        rq4_levels_block(&x[b], lut_lo, lut_hi, lv);
        __m256 acc0 = _mm256_mul_ps(lv[0], _mm256_loadu_ps(y + b*RQ_QK));
        __m256 acc1 = _mm256_mul_ps(lv[1], _mm256_loadu_ps(y + b*RQ_QK + 8));
        for (int g = 2; g < RQ_QK / 8; g += 2) {
            acc0 = _mm256_fmadd_ps(lv[g],     _mm256_loadu_ps(y + b*RQ_QK + 8*g),     acc0);
            acc1 = _mm256_fmadd_ps(lv[g + 1], _mm256_loadu_ps(y + b*RQ_QK + 8*g + 8), acc1);
        }
        total = _mm256_fmadd_ps(_mm256_add_ps(acc0, acc1), _mm256_set1_ps(rq_half(x[b].norm)), total);
    }
    *s = hsum8(total);
}

void rq_vec_mad_rq3(int n, float * acc, const void * vv, float scale) {
    const block_rq3 * v = vv;
    const __m256 lut = _mm256_loadu_ps(rq_levels3);
    __m256 lv[RQ_QK / 8];
    for (int b = 0; b < n / RQ_QK; ++b) {
        const __m256 vs = _mm256_set1_ps(scale * rq_half(v[b].norm));
        rq3_levels_block(&v[b], lut, lv);
        for (int g = 0; g < RQ_QK / 8; ++g) {
            float * a = acc + b*RQ_QK + 8*g;
            _mm256_storeu_ps(a, _mm256_fmadd_ps(lv[g], vs, _mm256_loadu_ps(a)));
        }
    }
}

void rq_vec_mad_rq4(int n, float * acc, const void * vv, float scale) {
    const block_rq4 * v = vv;
    const __m256 lut_lo = _mm256_loadu_ps(rq_levels4), lut_hi = _mm256_loadu_ps(rq_levels4 + 8);
    __m256 lv[RQ_QK / 8];
    for (int b = 0; b < n / RQ_QK; ++b) {
        const __m256 vs = _mm256_set1_ps(scale * rq_half(v[b].norm));
        rq4_levels_block(&v[b], lut_lo, lut_hi, lv);
        for (int g = 0; g < RQ_QK / 8; ++g) {
            float * a = acc + b*RQ_QK + 8*g;
            _mm256_storeu_ps(a, _mm256_fmadd_ps(lv[g], vs, _mm256_loadu_ps(a)));
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

// ---- flash-attention decode, query heads grouped by KV head --------------------------

#define RQ_FA_MAX_GROUP 16   // query heads per KV head handled in one pass
#define RQ_FA_MAX_D     576  // largest head size

// s_b * levels[k] for one row of a cache type: the row in the rotated basis.
static void rq_decode_rotated(enum ggml_type type, const void * x, float * y, int64_t n) {
    if (type == GGML_TYPE_PLANAR3 || type == GGML_TYPE_ISO3) {
        const block_rq3 * b = x;
        for (int64_t i = 0; i < n / RQ_QK; ++i) {
#if defined(RQ_AVX2)
            __m256 lv[RQ_QK / 8];
            rq3_levels_block(&b[i], _mm256_loadu_ps(rq_levels3), lv);
            const __m256 sv = _mm256_set1_ps(rq_half(b[i].norm));
            for (int g = 0; g < RQ_QK / 8; ++g) {
                _mm256_storeu_ps(y + i*RQ_QK + 8*g, _mm256_mul_ps(lv[g], sv));
            }
#else
            float w[RQ_QK];
            const float sv = rq_block_levels_ref(3, b, i, w);
            for (int j = 0; j < RQ_QK; ++j) {
                y[i*RQ_QK + j] = sv * w[j];
            }
#endif
        }
    } else {
        const block_rq4 * b = x;
        for (int64_t i = 0; i < n / RQ_QK; ++i) {
#if defined(RQ_AVX2)
            __m256 lv[RQ_QK / 8];
            rq4_levels_block(&b[i], _mm256_loadu_ps(rq_levels4), _mm256_loadu_ps(rq_levels4 + 8), lv);
            const __m256 sv = _mm256_set1_ps(rq_half(b[i].norm));
            for (int g = 0; g < RQ_QK / 8; ++g) {
                _mm256_storeu_ps(y + i*RQ_QK + 8*g, _mm256_mul_ps(lv[g], sv));
            }
#else
            float w[RQ_QK];
            const float sv = rq_block_levels_ref(4, b, i, w);
            for (int j = 0; j < RQ_QK; ++j) {
                y[i*RQ_QK + j] = sv * w[j];
            }
#endif
        }
    }
}

static inline float rq_dot(const float * a, const float * b, int64_t n) {
#if defined(RQ_AVX2)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i),     _mm256_loadu_ps(b + i),     acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float sum = hsum8(_mm256_add_ps(acc0, acc1));
#else
    float sum = 0.0f;
    int64_t i = 0;
#endif
    for (; i < n; ++i) {
        sum += a[i] * b[i];
    }
    return sum;
}

// acc = acc * ms + vs * x
static inline void rq_scale_mad(float * acc, const float * x, float ms, float vs, int64_t n) {
    int64_t i = 0;
#if defined(RQ_AVX2)
    const __m256 m = _mm256_set1_ps(ms), v = _mm256_set1_ps(vs);
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), v, _mm256_mul_ps(_mm256_loadu_ps(acc + i), m)));
    }
#endif
    for (; i < n; ++i) {
        acc[i] = acc[i]*ms + vs*x[i];
    }
}

void rq_flash_attn_ext_decode(const struct ggml_tensor * dst, int64_t ic0, int64_t ic1, float * partials, int64_t stride) {
    const struct ggml_tensor * q     = dst->src[0];
    const struct ggml_tensor * k     = dst->src[1];
    const struct ggml_tensor * v     = dst->src[2];
    const struct ggml_tensor * mask  = dst->src[3];
    const struct ggml_tensor * sinks = dst->src[4];

    const int64_t DK = k->ne[0], DV = v->ne[0];
    const int64_t n_head = q->ne[2], n_head_kv = k->ne[2];
    const int64_t group = n_head / n_head_kv;

    float scale, max_bias, softcap;
    memcpy(&scale,    (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&softcap,  (const float *) dst->op_params + 2, sizeof(float));
    if (softcap != 0.0f) {
        scale /= softcap;
    }
    const uint32_t n_head_log2 = 1u << (uint32_t) floor(log2((double) n_head));
    const float m0 = powf(2.0f, -(max_bias       ) / n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);

    const bool v_rotor = rq_is_cache_type(v->type);
    const ggml_to_float_t v_to_float = ggml_get_type_traits(v->type)->to_float;
    const ggml_from_float_t rotate_q = rq_rotated_type(k->type) == GGML_TYPE_PLANAR_F32
        ? rq_rotate_row_planar : rq_rotate_row_iso;

    float qr[RQ_FA_MAX_GROUP][RQ_FA_MAX_D];
    float acc[RQ_FA_MAX_GROUP][RQ_FA_MAX_D];
    float M[RQ_FA_MAX_GROUP], S[RQ_FA_MAX_GROUP], slope[RQ_FA_MAX_GROUP], mv[RQ_FA_MAX_GROUP];
    float kl[RQ_FA_MAX_D], vl[RQ_FA_MAX_D];

    for (int64_t hk = 0; hk < n_head_kv; ++hk) {
        for (int64_t h0 = hk*group; h0 < (hk + 1)*group; h0 += RQ_FA_MAX_GROUP) {
            const int64_t G = (hk + 1)*group - h0 < RQ_FA_MAX_GROUP ? (hk + 1)*group - h0 : RQ_FA_MAX_GROUP;
            for (int64_t j = 0; j < G; ++j) {
                const int64_t h = h0 + j;
                rotate_q((const float *) ((const char *) q->data + h*q->nb[2]), qr[j], DK);
                M[j] = -INFINITY;
                S[j] = 0.0f;
                memset(acc[j], 0, DV*sizeof(float));
                slope[j] = max_bias > 0.0f ? (h < n_head_log2 ? powf(m0, h + 1) : powf(m1, 2*(h - n_head_log2) + 1)) : 1.0f;
            }
            const char * k_head = (const char *) k->data + hk*k->nb[2];
            const char * v_head = (const char *) v->data + hk*v->nb[2];
            for (int64_t ic = ic0; ic < ic1; ++ic) {
                bool any = false;
                for (int64_t j = 0; j < G; ++j) {
                    const ggml_fp16_t * mp = mask ? (const ggml_fp16_t *) ((const char *) mask->data
                        + ((h0 + j) % mask->ne[2])*mask->nb[2]) : NULL;
                    mv[j] = mp ? slope[j]*rq_half(mp[ic]) : 0.0f;
                    any |= mv[j] != -INFINITY;
                }
                if (!any) {
                    continue;
                }
                rq_decode_rotated(k->type, k_head + ic*k->nb[1], kl, DK);
                const char * v_row = v_head + ic*v->nb[1];
                if (v_rotor) {
                    rq_decode_rotated(v->type, v_row, vl, DV);
                } else if (v_to_float) {
                    v_to_float(v_row, vl, DV);
                } else {
                    memcpy(vl, v_row, DV*sizeof(float));
                }
                for (int64_t j = 0; j < G; ++j) {
                    if (mv[j] == -INFINITY) {
                        continue;
                    }
                    float s = rq_dot(kl, qr[j], DK)*scale;
                    if (softcap != 0.0f) {
                        s = softcap*tanhf(s);
                    }
                    s += mv[j];
                    float ms = 1.0f, vs = 1.0f;
                    if (s > M[j]) {
                        ms = expf(M[j] - s);
                        M[j] = s;
                    } else {
                        vs = expf(s - M[j]);
                    }
                    rq_scale_mad(acc[j], vl, ms, vs, DV);
                    S[j] = S[j]*ms + vs;
                }
            }
            for (int64_t j = 0; j < G; ++j) {
                if (v_rotor) {
                    rq_unrotate_acc(v->type, acc[j], DV);
                }
                if (sinks && ic0 == 0) {
                    const float s = ((const float *) sinks->data)[h0 + j];
                    float ms = 1.0f, vs = 1.0f;
                    if (s > M[j]) {
                        ms = expf(M[j] - s);
                        M[j] = s;
                        for (int64_t d = 0; d < DV; ++d) {
                            acc[j][d] *= ms;
                        }
                    } else {
                        vs = expf(s - M[j]);
                    }
                    S[j] = S[j]*ms + vs;
                }
                float * out = partials + (h0 + j)*stride;
                out[0] = M[j];
                out[1] = S[j];
                memcpy(out + 2, acc[j], DV*sizeof(float));
            }
        }
    }
}
