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

// ---- quantiser: one warp per 64-value block, the exact arithmetic of rq-quants.c -------
// Lane l owns elements l and l + 32.  Rotations and divisions are per element in double
// (every product of two floats is exact in double, so fused and unfused multiply-adds
// round alike); the two sums use the format's halving-tree order, which is what the
// butterfly below computes (lanes l and l ^ h add the same two values), so the bytes
// equal the CPU's.

static __device__ __forceinline__ double rq_warp_tree_sum(double v) {
#pragma unroll
    for (int h = WARP_SIZE/2; h >= 1; h /= 2) {
        v += __shfl_xor_sync(0xFFFFFFFF, v, h, WARP_SIZE);
    }
    return v;
}

// Element j of R x (j's quartet or pair read from x).
template <bool iso>
static __device__ __forceinline__ double rq_rotated_elem(const float * __restrict__ x, const int j) {
    if constexpr (iso) {
        const int g = j / 4;
        const double a0 = rq_iso_quat[g][0], a1 = rq_iso_quat[g][1], a2 = rq_iso_quat[g][2], a3 = rq_iso_quat[g][3];
        const double v0 = x[4*g], v1 = x[4*g + 1], v2 = x[4*g + 2], v3 = x[4*g + 3];
        switch (j % 4) {
            case 0:  return a0*v0 - a1*v1 - a2*v2 - a3*v3;
            case 1:  return a1*v0 + a0*v1 - a3*v2 + a2*v3;
            case 2:  return a2*v0 + a3*v1 + a0*v2 - a1*v3;
            default: return a3*v0 - a2*v1 + a1*v2 + a0*v3;
        }
    } else {
        const int p = j / 2;
        const double c = rq_planar_cos[p], s = rq_planar_sin[p];
        const double u0 = x[2*p], u1 = x[2*p + 1];
        return j % 2 == 0 ? c*u0 - s*u1 : s*u0 + c*u1;
    }
}

template <int bits>
static __device__ __forceinline__ int rq_code_index(const double u) {
    int k = 0;
#pragma unroll
    for (int i = 0; i < (1 << bits) - 1; ++i) {
        k += u > (double) (bits == 3 ? rq_bounds3[i] : rq_bounds4[i]);
    }
    return k;
}

// Called by all 32 lanes of a warp; sidx: 64 bytes of shared memory owned by this warp.
template <int bits, bool iso>
static __device__ void rq_quantize_block_warp(const float * __restrict__ x, uint8_t * __restrict__ dst,
                                              uint8_t * sidx, const int lane) {
    const int j0 = lane, j1 = lane + RQ_QK/2;
    const double x0 = x[j0], x1 = x[j1];
    const double n = sqrt(rq_warp_tree_sum(x0*x0 + x1*x1));
    const double y0 = rq_rotated_elem<iso>(x, j0), y1 = rq_rotated_elem<iso>(x, j1);
    const int k0 = rq_code_index<bits>(n > 0.0 ? y0 / n : 0.0);
    const int k1 = rq_code_index<bits>(n > 0.0 ? y1 / n : 0.0);
    const double l0 = bits == 3 ? rq_levels3[k0] : rq_levels4[k0];
    const double l1 = bits == 3 ? rq_levels3[k1] : rq_levels4[k1];
    const double r = sqrt(rq_warp_tree_sum(l0*l0 + l1*l1));
    sidx[j0] = (uint8_t) k0;
    sidx[j1] = (uint8_t) k1;
    __syncwarp();
    if (lane == 0) {
        float s = (float) (r > 0.0 ? n / r : n);
        if (!(s <= RQ_FP16_MAX)) {
            s = RQ_FP16_MAX;  // also maps NaN, as on the CPU
        }
        // one 16-bit store: blocks are 26 or 34 bytes, so the scale is always 2-byte aligned
        *(uint16_t *) dst = __half_as_ushort(__float2half_rn(s));
    }
    // one output byte per lane (26 or 34 bytes: lanes 0..23 / 0..31 after the scale)
    if constexpr (bits == 3) {
        if (lane < RQ_QK/4) {           // qs[c]: elements c, c + 16, c + 32, c + 48
            const int c = lane;
            uint8_t q = 0;
#pragma unroll
            for (int f = 0; f < 4; ++f) {
                q |= (uint8_t) ((sidx[16*f + c] & 3) << (2*f));
            }
            dst[2 + c] = q;
        } else if (lane < RQ_QK/4 + RQ_QK/8) {  // signs[b]: elements 16 f + c with c % 8 == b
            const int b = lane - RQ_QK/4;
            uint8_t q = 0;
#pragma unroll
            for (int f = 0; f < 4; ++f) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    q |= (uint8_t) ((sidx[16*f + 8*h + b] >> 2) << (2*f + h));
                }
            }
            dst[2 + RQ_QK/4 + b] = q;
        }
    } else {
        dst[2 + lane] = (uint8_t) (sidx[lane] | (sidx[lane + RQ_QK/2] << 4));
    }
    __syncwarp();  // sidx is reused by the warp's next block
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
