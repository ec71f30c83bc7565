// Host side of the flash-attention decode kernel (rq-cuda-fattn-decode.cuh): which nodes
// it takes, the split of the KV range over blocks, and the kernel that merges the splits.
#include "rq-cuda-codec.cuh"
#include "rq-cuda-fattn.cuh"
#include "rq-cuda.h"

#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

using namespace rq_fa;

namespace {

// Merge the slices of one (sequence, query head), add the attention sink, divide, and
// un-rotate V.  (A single slice writes its output itself.)  A long cache has ~90 slices:
// one thread per output quartet walking all of them was a chain of dependent global loads
// as long as the decode kernel itself, so the slices are shared out over RQ_CB_THREADS / (D/4)
// groups of D/4 threads, whose sums meet in shared memory.
constexpr int RQ_CB_THREADS = 256;

template <int D>
__global__ void __launch_bounds__(RQ_CB_THREADS)
rq_fattn_combine(const float * __restrict__ part, const float2 * __restrict__ meta,
                 const float * __restrict__ sinks, float * __restrict__ dst,
                 const int n_splits, const int n_head, const int v_rot /* 0 none, 1 planar, 2 iso */,
                 const int out_had /* 0 or N: times the N-point normalized Hadamard */) {
    constexpr int Q = D/4;                    // quartets: threads of a group
    constexpr int G = RQ_CB_THREADS/Q;        // groups
    constexpr int NWARP = RQ_CB_THREADS/WARP_SIZE;
    __shared__ float  s_max[NWARP];
    __shared__ float4 s_num[G][Q];
    __shared__ float  s_den[G];
    __shared__ float  s_out[D];

    const int hq = blockIdx.x, seq = blockIdx.y, tid = threadIdx.x;
    const int m = tid % Q, grp = tid / Q;
    const int64_t row = (int64_t) seq*n_head + hq;
    const float2 * mt = meta + row*n_splits;

    float mx = -FLT_MAX/2.0f;
    for (int s = tid; s < n_splits; s += RQ_CB_THREADS) {
        mx = fmaxf(mx, mt[s].x);
    }
    mx = warp_reduce_max(mx);
    if (tid % WARP_SIZE == 0) {
        s_max[tid / WARP_SIZE] = mx;
    }
    __syncthreads();
    mx = sinks ? sinks[hq] : -FLT_MAX/2.0f;
#pragma unroll
    for (int w = 0; w < NWARP; ++w) {
        mx = fmaxf(mx, s_max[w]);
    }

    float4 num = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float den = 0.0f;
#pragma unroll 4
    for (int s = grp; s < n_splits; s += G) {
        const float2 ms = mt[s];
        const float w = expf(ms.x - mx);
        const float4 v = *(const float4 *) (part + (row*n_splits + s)*D + 4*m);
        den += w*ms.y;
        num.x += w*v.x; num.y += w*v.y; num.z += w*v.z; num.w += w*v.w;
    }
    s_num[grp][m] = num;
    if (m == 0) {
        s_den[grp] = den;
    }
    __syncthreads();
    if (grp == 0) {
        float tot[4] = {0.0f, 0.0f, 0.0f, 0.0f}, y[4];
        den = sinks ? expf(sinks[hq] - mx) : 0.0f;
#pragma unroll
        for (int g = 0; g < G; ++g) {
            const float4 v = s_num[g][m];
            tot[0] += v.x; tot[1] += v.y; tot[2] += v.z; tot[3] += v.w;
            den += s_den[g];
        }
        finish_quartet(tot, den, v_rot, m, out_had ? rsqrtf((float) out_had) : 1.0f, y);
        *(float4 *) (out_had ? s_out + 4*m : dst + row*D + 4*m) = make_float4(y[0], y[1], y[2], y[3]);
    }
    if (out_had) {  // uniform: every thread takes part
        fwht_shared(s_out, D, out_had, tid, RQ_CB_THREADS);
        if (tid < Q) {
            *(float4 *) (dst + row*D + 4*tid) = *(const float4 *) (s_out + 4*tid);
        }
    }
}

// Tickets of the in-kernel merge (rq_fattn_params::tickets): zero when the module loads,
// and every launch leaves them at zero.  A slot per stream that launches the kernel, so
// that launches which may overlap (other streams, other contexts on the device) never
// share one; a stream beyond the slots, or a grid wider than one, uses the combine kernel.
constexpr int RQ_TICKET_SLOTS = 64;
constexpr int RQ_TICKETS_PER_SLOT = 1024;
__device__ unsigned int rq_fa_tickets[RQ_TICKET_SLOTS*RQ_TICKETS_PER_SLOT];

unsigned int * tickets_for(const int device, cudaStream_t stream, const int n) {
    static std::mutex mutex;
    static std::map<std::pair<int, cudaStream_t>, int> slot_of;
    static int n_slots[GGML_CUDA_MAX_DEVICES] = {0};
    static unsigned int * base[GGML_CUDA_MAX_DEVICES] = {nullptr};
    if (n > RQ_TICKETS_PER_SLOT) {
        return nullptr;
    }
    std::lock_guard<std::mutex> lock(mutex);
    if (!base[device]) {
        void * ptr = nullptr;
        CUDA_CHECK(cudaGetSymbolAddress(&ptr, rq_fa_tickets));
        base[device] = (unsigned int *) ptr;
    }
    auto it = slot_of.find({device, stream});
    if (it == slot_of.end()) {
        if (n_slots[device] == RQ_TICKET_SLOTS) {
            return nullptr;
        }
        it = slot_of.emplace(std::make_pair(device, stream), n_slots[device]++).first;
    }
    return base[device] + (size_t) it->second*RQ_TICKETS_PER_SLOT;
}

// RQ_CUDA_MERGE=kernel keeps the combine kernel for every cache length (comparisons).
bool merge_in_kernel_allowed() {
    const char * env = getenv("RQ_CUDA_MERGE");
    return !env || strcmp(env, "kernel") != 0;
}

int rq_v_kind_of(const ggml_type t) {
    switch (t) {
        case GGML_TYPE_PLANAR3: case GGML_TYPE_ISO3: return RQ_V_RQ3;
        case GGML_TYPE_PLANAR4: case GGML_TYPE_ISO4: return RQ_V_RQ4;
        case GGML_TYPE_F16:  return RQ_V_F16;
        case GGML_TYPE_Q8_0: return RQ_V_Q8_0;
        default: return -1;
    }
}

int rq_group_pad(const int gqa) {
    return gqa <= 4 ? 4 : gqa <= 8 ? 8 : gqa <= 16 ? 16 : 0;
}

// The decode phases that run on tensor cores (rq_tc_phase; 3-bit keys and 3-bit V have
// them) where the device has them (sm_80+, compiled for).  RQ_CUDA_DECODE_MMA picks fewer,
// for comparisons in one process (read at each launch): "none", "k" or "v" (default: both).
int rq_decode_tc(const int cc) {
    if (!ampere_mma_available(cc)) {
        return 0;
    }
    const char * env = getenv("RQ_CUDA_DECODE_MMA");
    if (!env || strcmp(env, "kv") == 0) {
        return TC_K | TC_V;
    }
    return strcmp(env, "k") == 0 ? TC_K : strcmp(env, "v") == 0 ? TC_V : 0;
}

} // namespace

bool rq_cuda_fattn_decode_supported(const ggml_tensor * dst) {
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const int64_t D = Q->ne[0];
    return rq_is_cache_type(K->type) && rq_v_kind_of(V->type) >= 0 &&
           Q->type == GGML_TYPE_F32 && Q->ne[1] == 1 && (D == 64 || D == 128 || D == 256) &&
           K->ne[0] == D && V->ne[0] == D && K->ne[2] > 0 && Q->ne[2] % K->ne[2] == 0 &&
           rq_group_pad(Q->ne[2] / K->ne[2]) != 0 && V->ne[2] == K->ne[2] &&
           K->ne[3] == Q->ne[3] && V->ne[3] == Q->ne[3] &&
           (!mask || (mask->type == GGML_TYPE_F16 && mask->ne[2] == 1 && mask->ne[0] >= K->ne[1])) &&
           (V->type != GGML_TYPE_F16 || (V->nb[1] % 16 == 0 && V->nb[2] % 16 == 0 && V->nb[3] % 16 == 0 &&
                                         (uintptr_t) V->data % 16 == 0)) &&
           Q->nb[0] == sizeof(float) && K->nb[0] == ggml_type_size(K->type) && V->nb[0] == ggml_type_size(V->type) &&
           (size_t) decode_smem_bytes((int) D, rq_bits_of(K->type), rq_v_kind_of(V->type), rq_group_pad(Q->ne[2] / K->ne[2])) <=
               ggml_cuda_info().devices[ggml_cuda_get_device()].smpbo;
}

namespace {

// Rows of t may be copied in 32-bit words: every row start is 4-byte aligned.
bool rows_word_aligned(const ggml_tensor * t, const int row_bytes) {
    return row_bytes % 4 == 0 && t->nb[1] % 4 == 0 && t->nb[2] % 4 == 0 && t->nb[3] % 4 == 0 && (uintptr_t) t->data % 4 == 0;
}

} // namespace

void rq_cuda_flash_attn_ext_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst, float * out, const int out_had) {
    GGML_ASSERT(rq_cuda_fattn_decode_supported(dst));
    GGML_ASSERT(out_had == 0 || (out_had >= 64 && out_had <= dst->src[0]->ne[0] && dst->src[0]->ne[0] % out_had == 0));
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    const ggml_tensor * V = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];

    rq_fattn_params p = {};
    memcpy(&p.scale,    (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&p.max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&p.softcap,  (const float *) dst->op_params + 2, sizeof(float));
    if (p.softcap != 0.0f) {
        p.scale /= p.softcap;
    }
    const int D = (int) Q->ne[0];
    const int n_seq = (int) Q->ne[3];
    p.n_head    = (int) Q->ne[2];
    p.n_head_kv = (int) K->ne[2];
    p.gqa       = p.n_head / p.n_head_kv;
    p.n_kv      = (int) K->ne[1];
    p.n_head_log2 = 1u << uint32_t(floorf(log2f(float(p.n_head))));
    p.m0 = powf(2.0f, -(p.max_bias       ) / p.n_head_log2);
    p.m1 = powf(2.0f, -(p.max_bias / 2.0f) / p.n_head_log2);
    p.Q = (const char *) Q->data;
    p.K = (const char *) K->data;
    p.V = (const char *) V->data;
    p.nb02 = Q->nb[2]; p.nb03 = Q->nb[3];
    p.nb11 = K->nb[1]; p.nb12 = K->nb[2]; p.nb13 = K->nb[3];
    p.nb21 = V->nb[1]; p.nb22 = V->nb[2]; p.nb23 = V->nb[3];
    p.mask = mask ? (const half *) mask->data : nullptr;
    p.mask_ne3 = mask ? (int) mask->ne[3] : 1;
    p.mask_nb3 = mask ? mask->nb[3] : 0;
    p.k_iso = rq_is_iso(K->type);
    p.sinks = sinks ? (const float *) sinks->data : nullptr;
    p.dst   = out ? out : (float *) dst->data;
    p.out_had = out_had;
    p.v_rot = rq_is_cache_type(V->type) ? (rq_is_iso(V->type) ? 2 : 1) : 0;
    const int kbits = rq_bits_of(K->type), vk = rq_v_kind_of(V->type), gp = rq_group_pad(p.gqa);
    p.k_async = rows_word_aligned(K, rotor_row_bytes(D, kbits));
    p.v_async = v_staged(vk) && rows_word_aligned(V, rotor_row_bytes(D, v_bits(vk)));

    const bool k3 = kbits == 3;
    const int tc = rq_decode_tc(ggml_cuda_info().devices[ctx.device].cc);
    int blocks_per_sm = 1;
    switch (D) {
        case 64:  blocks_per_sm = (k3 ? decode_blocks_per_sm<64,  3> : decode_blocks_per_sm<64,  4>)(vk, gp, tc); break;
        case 128: blocks_per_sm = (k3 ? decode_blocks_per_sm<128, 3> : decode_blocks_per_sm<128, 4>)(vk, gp, tc); break;
        case 256: blocks_per_sm = (k3 ? decode_blocks_per_sm<256, 3> : decode_blocks_per_sm<256, 4>)(vk, gp, tc); break;
        default: GGML_ABORT("rotorquant: unsupported head size %d", D);
    }

    // Slices of the KV range: enough blocks to fill every multiprocessor to the occupancy
    // the kernel's registers and shared memory allow, so that one block's memory latency
    // is hidden behind the others' work.  A slice is a whole number of 128-row tiles, or,
    // in a cache too short to give every block a tile, of 32 rows: at short context a
    // block's time is one serial chain (queries, scores, softmax, V), and a quarter of the
    // rows is a quarter of its V work.  A cache of one tile stays one slice (its block
    // writes the output; more slices would need the combine kernel).
    constexpr int ROWS_MIN = 32;
    const int nsm = ggml_cuda_info().devices[ctx.device].nsm;
    const int n_tiles = (p.n_kv + RQ_FA_THREADS - 1) / RQ_FA_THREADS;
    const int n_kv_blocks = p.n_head_kv*n_seq;
    const int splits_wanted = n_tiles <= 1 ? 1 : std::max(1, (blocks_per_sm*nsm + n_kv_blocks - 1) / n_kv_blocks);
    if (splits_wanted <= n_tiles) {
        const int tiles_per_split = (n_tiles + splits_wanted - 1) / splits_wanted;
        p.split_len = tiles_per_split*RQ_FA_THREADS;
    } else {
        const int n_short = (p.n_kv + ROWS_MIN - 1) / ROWS_MIN;
        p.split_len = std::max(1, (n_short + splits_wanted - 1) / splits_wanted)*ROWS_MIN;
    }
    p.n_splits  = std::max(1, (p.n_kv + p.split_len - 1) / p.split_len);

    ggml_cuda_pool & pool = ctx.pool();
    const size_t n_rows = (size_t) n_seq*p.n_head;
    ggml_cuda_pool_alloc<float>  part(pool);
    ggml_cuda_pool_alloc<float2> meta(pool);
    cudaStream_t stream = ctx.stream();
    if (p.n_splits > 1) {
        p.part = part.alloc(n_rows*p.n_splits*D);
        p.meta = meta.alloc(n_rows*p.n_splits);
        if (p.n_splits <= RQ_MERGE_IN_KERNEL_MAX && merge_in_kernel_allowed()) {
            p.tickets = tickets_for(ctx.device, stream, p.n_head_kv*n_seq);
        }
    }

    const dim3 grid(p.n_splits, p.n_head_kv*n_seq, 1);
    switch (D) {
        case 64:  (k3 ? launch_decode<64,  3> : launch_decode<64,  4>)(p, vk, gp, tc, grid, stream); break;
        case 128: (k3 ? launch_decode<128, 3> : launch_decode<128, 4>)(p, vk, gp, tc, grid, stream); break;
        case 256: (k3 ? launch_decode<256, 3> : launch_decode<256, 4>)(p, vk, gp, tc, grid, stream); break;
    }
    CUDA_CHECK(cudaGetLastError());
    if (p.n_splits == 1 || p.tickets) {
        return;  // the kernel wrote the output
    }

    const dim3 grid_c(p.n_head, n_seq, 1);
    switch (D) {
        case 64:  rq_fattn_combine<64 ><<<grid_c, RQ_CB_THREADS, 0, stream>>>(p.part, p.meta, p.sinks, p.dst, p.n_splits, p.n_head, p.v_rot, p.out_had); break;
        case 128: rq_fattn_combine<128><<<grid_c, RQ_CB_THREADS, 0, stream>>>(p.part, p.meta, p.sinks, p.dst, p.n_splits, p.n_head, p.v_rot, p.out_had); break;
        case 256: rq_fattn_combine<256><<<grid_c, RQ_CB_THREADS, 0, stream>>>(p.part, p.meta, p.sinks, p.dst, p.n_splits, p.n_head, p.v_rot, p.out_had); break;
    }
    CUDA_CHECK(cudaGetLastError());
}

