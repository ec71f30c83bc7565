// Device-side codecs of the RotorQuant cache types: the CUDA twin of rq-quants.c.
// Included by rq-cuda.cu and rq-cuda-fattn.cu only (each gets its own constant-memory
// copy of the one generated table header).
#pragma once

#include "common.cuh"

#define RQ_TABLE static __constant__
#include "rq-quants.h"

#include <cstdint>

#define RQ_FP16_MAX 65504.0f

// bytes of one block: 26 (3-bit) or 34 (4-bit)
template <int bits> __host__ __device__ constexpr int rq_block_bytes() { return bits == 3 ? (int) sizeof(block_rq3) : (int) sizeof(block_rq4); }

static __host__ __device__ constexpr int rq_bits_of(ggml_type t) {
    return t == GGML_TYPE_PLANAR3 || t == GGML_TYPE_ISO3 ? 3 : t == GGML_TYPE_PLANAR4 || t == GGML_TYPE_ISO4 ? 4 : 0;
}
static __host__ __device__ constexpr bool rq_is_iso(ggml_type t) { return t == GGML_TYPE_ISO3 || t == GGML_TYPE_ISO4; }

// ---- quantiser: the exact arithmetic of rq-quants.c (double, same operation order).
// Every product of two floats is exact in double, so fused and unfused multiply-adds
// round the same way and the bytes equal the CPU's.

template <int bits, bool iso>
static __device__ void rq_quantize_block(const float * __restrict__ x, uint8_t * __restrict__ dst) {
    double y[RQ_QK];
    double n2 = 0.0;
#pragma unroll
    for (int j = 0; j < RQ_QK; ++j) {
        const double v = x[j];
        n2 += v*v;
    }
    const double n = sqrt(n2);
    if constexpr (iso) {
#pragma unroll
        for (int g = 0; g < RQ_QK/4; ++g) {
            const double a0 = rq_iso_quat[g][0], a1 = rq_iso_quat[g][1], a2 = rq_iso_quat[g][2], a3 = rq_iso_quat[g][3];
            const double v0 = x[4*g], v1 = x[4*g + 1], v2 = x[4*g + 2], v3 = x[4*g + 3];
            y[4*g]     = a0*v0 - a1*v1 - a2*v2 - a3*v3;
            y[4*g + 1] = a1*v0 + a0*v1 - a3*v2 + a2*v3;
            y[4*g + 2] = a2*v0 + a3*v1 + a0*v2 - a1*v3;
            y[4*g + 3] = a3*v0 - a2*v1 + a1*v2 + a0*v3;
        }
    } else {
#pragma unroll
        for (int p = 0; p < RQ_QK/2; ++p) {
            const double c = rq_planar_cos[p], s = rq_planar_sin[p];
            const double u0 = x[2*p], u1 = x[2*p + 1];
            y[2*p]     = c*u0 - s*u1;
            y[2*p + 1] = s*u0 + c*u1;
        }
    }
    constexpr int n_bounds = bits == 3 ? 7 : 15;
    const float * bounds = bits == 3 ? rq_bounds3 : rq_bounds4;
    const float * levels = bits == 3 ? rq_levels3 : rq_levels4;
    uint8_t idx[RQ_QK];
    double r2 = 0.0;
#pragma unroll
    for (int j = 0; j < RQ_QK; ++j) {
        const double u = n > 0.0 ? y[j] / n : 0.0;
        int k = 0;
#pragma unroll
        for (int i = 0; i < n_bounds; ++i) {
            k += u > (double) bounds[i];
        }
        idx[j] = (uint8_t) k;
        const double l = levels[k];
        r2 += l*l;
    }
    const double r = sqrt(r2);
    float s = (float) (r > 0.0 ? n / r : n);
    if (!(s <= RQ_FP16_MAX)) {
        s = RQ_FP16_MAX;  // also maps NaN, as on the CPU
    }
    const half sh = __float2half_rn(s);
    const uint16_t sbits = *(const uint16_t *) &sh;
    dst[0] = (uint8_t) (sbits & 0xFF);
    dst[1] = (uint8_t) (sbits >> 8);
    if constexpr (bits == 3) {
        uint8_t qs[RQ_QK/4] = {0}, signs[RQ_QK/8] = {0};
#pragma unroll
        for (int j = 0; j < RQ_QK; ++j) {
            const int f = j / 16, c = j % 16;
            qs[c]        |= (uint8_t) ((idx[j] & 3) << (2*f));
            signs[c % 8] |= (uint8_t) ((idx[j] >> 2) << (2*f + c / 8));
        }
#pragma unroll
        for (int i = 0; i < RQ_QK/4; ++i) { dst[2 + i] = qs[i]; }
#pragma unroll
        for (int i = 0; i < RQ_QK/8; ++i) { dst[2 + RQ_QK/4 + i] = signs[i]; }
    } else {
#pragma unroll
        for (int j = 0; j < RQ_QK/2; ++j) {
            dst[2 + j] = (uint8_t) (idx[j] | (idx[j + RQ_QK/2] << 4));
        }
    }
}

// ---- decoder, one quartet (elements 4m .. 4m+3 of a block), natural order ---------------

static __device__ __forceinline__ float rq_half_at(const uint8_t * p) {
    const uint16_t b = (uint16_t) (p[0] | (p[1] << 8));
    return __half2float(*(const half *) &b);
}

// Codebook levels (rotated basis) of quartet m.
template <int bits>
static __device__ __forceinline__ void rq_quartet_levels(const uint8_t * __restrict__ blk, const int m, float w[4]) {
    if constexpr (bits == 3) {
        const int f = m / 4, c0 = 4*(m % 4);
        const uint8_t * qs = blk + 2, * signs = blk + 2 + RQ_QK/4;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = c0 + e;
            const int k = ((qs[c] >> (2*f)) & 3) | (((signs[c % 8] >> (2*f + c / 8)) & 1) << 2);
            w[e] = rq_levels3[k];
        }
    } else {
        const uint8_t * qs = blk + 2;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int j = 4*m + e;
            w[e] = rq_levels4[(qs[j % (RQ_QK/2)] >> (4*(j / (RQ_QK/2)))) & 15];
        }
    }
}

// y = scale * R^T w for quartet m (planar: its two pairs; iso: the conjugate quaternion).
static __device__ __forceinline__ void rq_unrotate_quartet(const bool iso, const int m, const float w[4], const float scale, float y[4]) {
    if (iso) {
        const float a0 = rq_iso_quat[m][0], a1 = rq_iso_quat[m][1], a2 = rq_iso_quat[m][2], a3 = rq_iso_quat[m][3];
        y[0] = scale*( a0*w[0] + a1*w[1] + a2*w[2] + a3*w[3]);
        y[1] = scale*(-a1*w[0] + a0*w[1] + a3*w[2] - a2*w[3]);
        y[2] = scale*(-a2*w[0] - a3*w[1] + a0*w[2] + a1*w[3]);
        y[3] = scale*(-a3*w[0] + a2*w[1] - a1*w[2] + a0*w[3]);
    } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int p = 2*m + h;
            const float c = rq_planar_cos[p], s = rq_planar_sin[p];
            y[2*h]     = scale*( c*w[2*h] + s*w[2*h + 1]);
            y[2*h + 1] = scale*(-s*w[2*h] + c*w[2*h + 1]);
        }
    }
}

// y = R x for quartet m (the forward rotation, in float: used for queries).
static __device__ __forceinline__ void rq_rotate_quartet(const bool iso, const int m, const float x[4], float y[4]) {
    if (iso) {
        const float a0 = rq_iso_quat[m][0], a1 = rq_iso_quat[m][1], a2 = rq_iso_quat[m][2], a3 = rq_iso_quat[m][3];
        y[0] = a0*x[0] - a1*x[1] - a2*x[2] - a3*x[3];
        y[1] = a1*x[0] + a0*x[1] - a3*x[2] + a2*x[3];
        y[2] = a2*x[0] + a3*x[1] + a0*x[2] - a1*x[3];
        y[3] = a3*x[0] - a2*x[1] + a1*x[2] + a0*x[3];
    } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int p = 2*m + h;
            const float c = rq_planar_cos[p], s = rq_planar_sin[p];
            y[2*h]     = c*x[2*h] - s*x[2*h + 1];
            y[2*h + 1] = s*x[2*h] + c*x[2*h + 1];
        }
    }
}

// Decoded quartet m of a block: scale * R^T levels.
template <int bits>
static __device__ __forceinline__ void rq_decode_quartet(const bool iso, const uint8_t * __restrict__ blk, const int m, float y[4]) {
    float w[4];
    rq_quartet_levels<bits>(blk, m, w);
    rq_unrotate_quartet(iso, m, w, rq_half_at(blk), y);
}
