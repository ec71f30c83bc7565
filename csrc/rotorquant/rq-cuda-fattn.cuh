// The decode kernel's interface between its host side (rq-cuda-fattn.cu) and its
// instances (fattn-instances/, one translation unit per head size and K width, so that
// the build compiles them in parallel, as upstream does with its FA template instances).
#pragma once

#include "rq-cuda-codec.cuh"

#include <cstdint>

namespace rq_fa {

constexpr int RQ_FA_THREADS = 128;  // threads per block = K rows per tile
constexpr int RQ_FA_STAGES  = 2;    // tiles in shared memory: one in use, one in flight

enum rq_v_kind { RQ_V_RQ3 = 0, RQ_V_RQ4 = 1, RQ_V_F16 = 2, RQ_V_Q8_0 = 3 };

// Phases of the decode kernel that can run on tensor cores (bits of its TC parameter).
enum rq_tc_phase { TC_K = 1, TC_V = 2 };

struct rq_fattn_params {
    const char * Q;
    const char * K;
    const char * V;
    const half * mask;      // row of query 0 of sequence 0; nullptr if none
    const float * sinks;    // [n_head] attention sinks; nullptr if none
    float * dst;            // [seq][head][D] output, written by the kernel itself when n_splits == 1
    float * part;           // [seq][head][split][D] partial outputs (rotated basis for rotor V)
    float2 * meta;          // [seq][head][split] (running max, sum of exp)
    float scale, max_bias, m0, m1, softcap;
    uint32_t n_head_log2;
    int n_kv, n_head, n_head_kv, gqa, n_splits, split_len;
    int64_t nb02, nb03, nb11, nb12, nb13, nb21, nb22, nb23, mask_nb3;
    int mask_ne3;
    int v_rot;              // 0: V is not rotated, 1: planar, 2: iso
    int out_had;            // 0, or N: the output times the N-point normalized Hadamard matrix
                            // (upstream's V pre-rotation undone here, not by a graph node)
    unsigned int * tickets; // n_splits > 1: one per (seq, KV head); the last slice to finish
                            // merges all of them (and resets its ticket); nullptr: the combine kernel does
    bool k_iso;
    bool k_async, v_async;  // rows may be copied in 32-bit words (every address 4-byte aligned)
};

__host__ __device__ constexpr int v_bits(const int vk) { return vk == RQ_V_RQ3 ? 3 : 4; }
__host__ __device__ constexpr bool v_staged(const int vk) { return vk == RQ_V_RQ3 || vk == RQ_V_RQ4; }
__host__ __device__ constexpr int rotor_row_bytes(const int D, const int bits) {
    return (D/RQ_QK)*(bits == 3 ? (int) sizeof(block_rq3) : (int) sizeof(block_rq4));
}

// Bytes between rows staged in shared memory: the row rounded up to whole 32-bit words,
// plus one word where that count is even, so that thread t reading word w of row t hits
// bank (pitch/4 * t + w) mod 32: an odd word stride is conflict-free.
__host__ __device__ constexpr int row_pitch(const int row_bytes) {
    return (row_bytes + 3)/4 % 2 == 0 ? (row_bytes + 3)/4*4 + 4 : (row_bytes + 3)/4*4;
}

// 3-bit keys are scored with integer dot products (dp4a): the query as 16-bit integers,
// split into high and low bytes, against 8-bit images of the levels (RQ3_I8_SCALE).
__host__ __device__ constexpr bool k_dp4a(const int kbits) { return kbits == 3; }

// Dynamic shared memory of one block: f32 queries (later the output), the integer queries
// and their per-block maxima (3-bit keys), probabilities and bookkeeping, then
// RQ_FA_STAGES tiles of K rows (and of V rows where V is a rotor type).
__host__ __device__ constexpr int decode_smem_floats(const int D, const int kbits, const int gp) {
    return gp*D + (k_dp4a(kbits) ? gp*D/2 + gp*(D/RQ_QK) : 0) + RQ_FA_THREADS*gp + 4*gp + 2*gp + 16;
}
__host__ __device__ constexpr int decode_stage_bytes(const int D, const int kbits, const int vk) {
    return RQ_FA_THREADS*(row_pitch(rotor_row_bytes(D, kbits)) + (v_staged(vk) ? row_pitch(rotor_row_bytes(D, v_bits(vk))) : 0));
}
__host__ __device__ constexpr int decode_smem_bytes(const int D, const int kbits, const int vk, const int gp) {
    return 4*decode_smem_floats(D, kbits, gp) + RQ_FA_STAGES*decode_stage_bytes(D, kbits, vk);
}

// Divide and un-rotate (rotor V) one output quartet m of a row, times `scale`: the last
// step of the single-slice kernel, the merging slice and the combine kernel.
static __device__ __forceinline__ void finish_quartet(const float num[4], const float den, const int v_rot,
                                                      const int m, const float scale, float y[4]) {
    if (v_rot != 0) {
        rq_unrotate_quartet(v_rot == 2, m % (RQ_QK/4), num, scale/den, y);
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            y[e] = scale*num[e]/den;
        }
    }
}

// In-place N-point Walsh-Hadamard butterflies over n floats of shared memory (N divides n;
// the caller has scaled them by 1/sqrt(N)), in upstream fwht's order of stages; every
// thread of the block calls it.  Ends with the block synchronised.
static __device__ __forceinline__ void fwht_shared(float * s, const int n, const int N, const int tid, const int nthreads) {
    for (int h = 1; h < N; h *= 2) {
        __syncthreads();
        for (int u = tid; u < n/2; u += nthreads) {
            const int i = (u / h)*2*h + u % h;  // (i, i + h) inside one group of 2h <= N
            const float a = s[i], b = s[i + h];
            s[i]     = a + b;
            s[i + h] = a - b;
        }
    }
    __syncthreads();
}

// Most slices that the merging slice combines itself; longer caches use the combine
// kernel (one thread per quartet walking ~90 slices is slower than its groups).
constexpr int RQ_MERGE_IN_KERNEL_MAX = 16;

// Launch the decode kernel of head size D and K width KBITS (3 or 4) for V kind vk and
// padded query-head group gp (4, 8 or 16), with the phases tc names on tensor cores
// (TC_K | TC_V, sm_80 and newer; a phase the types do not allow is scalar).
template <int D, int KBITS>
void launch_decode(const rq_fattn_params & p, int vk, int gp, int tc, dim3 grid, cudaStream_t stream);

// Blocks of that kernel one multiprocessor of the current device runs at once.
template <int D, int KBITS>
int decode_blocks_per_sm(int vk, int gp, int tc);

#define RQ_FA_FOR_EACH_INSTANCE(X) X(64, 3) X(64, 4) X(128, 3) X(128, 4) X(256, 3) X(256, 4)
#define RQ_FA_EXTERN(D, KBITS)                                                                          \
    extern template void launch_decode<D, KBITS>(const rq_fattn_params &, int, int, int, dim3, cudaStream_t); \
    extern template int decode_blocks_per_sm<D, KBITS>(int, int, int);
RQ_FA_FOR_EACH_INSTANCE(RQ_FA_EXTERN)
#undef RQ_FA_EXTERN

} // namespace rq_fa
