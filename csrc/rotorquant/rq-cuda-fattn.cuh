// What the two flash-attention decode kernels for a rotor K cache share: the launch
// parameters, the V kinds, and the tensor-core kernel's entry point (rq-cuda-fattn-mma.cu).
// The scalar kernel, the combine kernel and the host side are in rq-cuda-fattn.cu.
#pragma once

#include "rq-cuda-codec.cuh"

#include <cstdint>

enum rq_v_kind { RQ_V_RQ3 = 0, RQ_V_RQ4 = 1, RQ_V_F16 = 2, RQ_V_Q8_0 = 3 };

struct rq_fattn_params {
    const char * Q;
    const char * K;
    const char * V;
    const half * mask;      // row of query 0 of sequence 0; nullptr if none
    float * part;           // [seq][head][split][D] partial outputs (rotated basis for rotor V)
    float2 * meta;          // [seq][head][split] (running max, sum of exp)
    float scale, max_bias, m0, m1, softcap;
    uint32_t n_head_log2;
    int n_kv, n_head, n_head_kv, gqa, n_splits, split_len;
    int64_t nb02, nb03, nb11, nb12, nb13, nb21, nb22, nb23, mask_nb3;
    int mask_ne3;
    bool k_iso;
};

// Quartet m of query head hq0 + h, rotated like the keys (the K type's rotation) and
// multiplied by the softmax scale; zero for padding heads (h >= gqa).
static __device__ __forceinline__ void rq_query_quartet(const rq_fattn_params & p, const int seq, const int hq0,
                                                        const int h, const int m, float y[4]) {
    float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (h < p.gqa) {
        const float * q = (const float *) (p.Q + seq*p.nb03 + (hq0 + h)*p.nb02) + 4*m;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            x[e] = q[e];
        }
    }
    rq_rotate_quartet(p.k_iso, m % (RQ_QK/4), x, y);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        y[e] *= p.scale;
    }
}

// Decode partials with tensor cores (f16 operands, f32 accumulation); split_len must be a
// multiple of 64.  Same outputs as the scalar kernel, to f16 rounding of K, V, Q and P.
void rq_fattn_mma_launch(const rq_fattn_params & p, int D, int kbits, int vk, const dim3 & grid, cudaStream_t stream);
