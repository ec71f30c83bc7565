// Flash-attention decode (one query per sequence) with a RotorQuant K cache on CUDA.
//
// Why a kernel of our own rather than upstream's vector kernel: at long context decode is
// bound by reading the cache, and a 3.25-bit cache is 4.9x fewer bytes than f16 only if
// every byte is read once.  So one block takes one KV head and a slice of positions and
// serves *all* query heads of that KV head (GQA): each K and V block is decoded once per
// step, not once per query head.  And nothing is un-rotated per key:
//   K: the query is rotated once (R q); a key scores s_b * <levels[k], (R q)_b> per block.
//   V: p * s_b * levels[k] is accumulated in the rotated basis; the combine kernel applies
//      R^T once to the output row (the rotation is linear and the same for every token).
// Scores, probabilities and accumulators are f32; the online softmax is the usual one.
//
// Work split: the block first copies a 128-row tile of K codes to shared memory (coalesced),
// then thread t scores key row t of the tile for all query heads; then every thread
// accumulates an 8-value slot of V for up to 8 heads over its share of the tile's rows.
// Slices of the KV range run in parallel blocks; the combine kernel merges them.
#include "rq-cuda-codec.cuh"
#include "rq-cuda.h"

#include <algorithm>
#include <cfloat>

namespace {

constexpr int RQ_FA_THREADS = 128;  // = rows per tile

// Bytes between K rows staged in shared memory: the row rounded up to whole 32-bit words,
// plus one word where that count is even, so that thread t reading row t hits bank
// (pitch/4 * t + w) mod 32: an odd word stride is conflict-free.
template <int D, int KBITS>
__host__ __device__ constexpr int rq_k_pitch() {
    return ((D/RQ_QK)*rq_block_bytes<KBITS>() + 3)/4 % 2 == 0 ? ((D/RQ_QK)*rq_block_bytes<KBITS>() + 3)/4*4 + 4
                                                              : ((D/RQ_QK)*rq_block_bytes<KBITS>() + 3)/4*4;
}
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

// Position p (in the order a thread reads codes) of element j of a block.
//   3-bit: u16 word i of qs holds elements 16 f + 2 i + c2 (f = 0..3, c2 = 0, 1) -> p = 8 i + 2 f + c2
//   4-bit: u16 words 2 i, 2 i + 1 hold elements 4 i + e (low nibbles) and 32 + 4 i + e -> p = 8 i + e (+4)
template <int bits>
__device__ __forceinline__ int rq_code_pos(const int j) {
    if constexpr (bits == 3) {
        const int f = j / 16, c = j % 16;
        return 8*(c / 2) + 2*f + (c % 2);
    } else {
        return j < 32 ? 8*(j / 4) + j % 4 : 8*((j - 32) / 4) + 4 + (j - 32) % 4;
    }
}

template <int bits>
__device__ __forceinline__ int rq_code_elem(const int p) {
    if constexpr (bits == 3) {
        const int i = p / 8, f = (p % 8) / 2, c2 = p % 2;
        return 16*f + 2*i + c2;
    } else {
        const int i = p / 8, e = p % 8;
        return e < 4 ? 4*i + e : 32 + 4*i + (e - 4);
    }
}

__device__ __forceinline__ uint32_t ld_u16(const char * p) {
    return *(const uint16_t *) p;
}

__device__ __forceinline__ float half_bits_to_float(const uint32_t b) {
    const uint16_t h = (uint16_t) b;
    return __half2float(*(const half *) &h);
}

// Levels of the 8 codes in slot i of a block (order p = 8 i .. 8 i + 7), from its u16 words.
template <int bits>
__device__ __forceinline__ void rq_slot_levels(const char * blk, const int i, const float * lut, float w[8]) {
    if constexpr (bits == 3) {
        const uint32_t q = ld_u16(blk + 2 + 2*i);
        const uint32_t s = ld_u16(blk + 2 + RQ_QK/4 + 2*(i & 3)) >> (i >> 2);
#pragma unroll
        for (int f = 0; f < 4; ++f) {
            const uint32_t k = ((q >> (2*f)) & 0x0303u) | (((s >> (2*f)) & 0x0101u) << 2);
            w[2*f]     = lut[k & 0xFF];
            w[2*f + 1] = lut[k >> 8];
        }
    } else {
        const uint32_t q = ld_u16(blk + 2 + 4*i) | (ld_u16(blk + 4 + 4*i) << 16);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            w[e]     = lut[(q >> (8*e))     & 15];
            w[e + 4] = lut[(q >> (8*e + 4)) & 15];
        }
    }
}

// The raw words of one V slot (8 values of a row), loaded apart from their use so that a
// thread can have the loads of several rows in flight at once.
struct rq_v_raw {
    uint32_t a, b, c, d;
};

template <int VK>
__device__ __forceinline__ rq_v_raw rq_v_load(const char * vrow, const int slot) {
    rq_v_raw r = {0, 0, 0, 0};
    if constexpr (VK == RQ_V_RQ3) {
        const char * blk = vrow + (slot / 8)*rq_block_bytes<3>();
        const int i = slot % 8;
        r.a = ld_u16(blk + 2 + 2*i);
        r.b = ld_u16(blk + 2 + RQ_QK/4 + 2*(i & 3));
        r.c = ld_u16(blk);
    } else if constexpr (VK == RQ_V_RQ4) {
        const char * blk = vrow + (slot / 8)*rq_block_bytes<4>();
        const int i = slot % 8;
        r.a = ld_u16(blk + 2 + 4*i) | (ld_u16(blk + 4 + 4*i) << 16);
        r.c = ld_u16(blk);
    } else if constexpr (VK == RQ_V_F16) {
        const uint4 raw = *(const uint4 *) (vrow + slot*16);
        r = {raw.x, raw.y, raw.z, raw.w};
    } else {
        const char * blk = vrow + (slot / 4)*(int) sizeof(block_q8_0);
        const char * qs = blk + 2 + 8*(slot % 4);
        r.a = ld_u16(qs) | (ld_u16(qs + 2) << 16);
        r.b = ld_u16(qs + 4) | (ld_u16(qs + 6) << 16);
        r.c = ld_u16(blk);
    }
    return r;
}

// The 8 values of a slot (rotated basis for rotor V) and their common scale.
template <int VK>
__device__ __forceinline__ float rq_v_values(const rq_v_raw & r, const int slot, const float * lut, float w[8]) {
    if constexpr (VK == RQ_V_RQ3) {
        const int i = slot % 8;
        const uint32_t s = r.b >> (i >> 2);
#pragma unroll
        for (int f = 0; f < 4; ++f) {
            const uint32_t k = ((r.a >> (2*f)) & 0x0303u) | (((s >> (2*f)) & 0x0101u) << 2);
            w[2*f]     = lut[k & 0xFF];
            w[2*f + 1] = lut[k >> 8];
        }
        return half_bits_to_float(r.c);
    } else if constexpr (VK == RQ_V_RQ4) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            w[e]     = lut[(r.a >> (8*e))     & 15];
            w[e + 4] = lut[(r.a >> (8*e + 4)) & 15];
        }
        return half_bits_to_float(r.c);
    } else if constexpr (VK == RQ_V_F16) {
        const uint32_t words[4] = {r.a, r.b, r.c, r.d};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float2 f = __half22float2(*(const half2 *) &words[e]);
            w[2*e] = f.x;
            w[2*e + 1] = f.y;
        }
        return 1.0f;
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            w[e]     = (float) (int8_t) (r.a >> (8*e));
            w[e + 4] = (float) (int8_t) (r.b >> (8*e));
        }
        return half_bits_to_float(r.c);
    }
}

template <int D, int KBITS, int VK, int GP>
__launch_bounds__(RQ_FA_THREADS, 2)
__global__ void rq_fattn_decode(const rq_fattn_params p) {
    constexpr int NB    = D / RQ_QK;
    constexpr int T     = RQ_FA_THREADS;
    constexpr int KBS   = rq_block_bytes<KBITS>();
    constexpr int HG    = GP < 8 ? GP : 8;     // heads per thread in the V phase
    constexpr int NHG   = GP / HG;
    constexpr int SLOTS = D / 8;               // 8-value slots per row
    constexpr int TPR   = SLOTS * NHG;         // threads per row in the V phase
    constexpr int RG    = T / TPR;             // rows processed at once in the V phase
    static_assert(T % TPR == 0, "V phase mapping");
    constexpr int VBITS = VK == RQ_V_RQ3 ? 3 : 4;
    constexpr int KP    = rq_k_pitch<D, KBITS>();

    extern __shared__ float smem[];
    float * sQ     = smem;              // [GP][D] rotated, scaled queries in code order; later the output
    float * sP     = sQ + GP*D;         // [T][GP] probabilities of the tile
    float * sRed   = sP + T*GP;         // [4][GP] per-warp partial max / sum
    float * sAlpha = sRed + 4*GP;       // [GP] rescale factor of this tile
    float * sSlope = sAlpha + GP;       // [GP] ALiBi slopes
    float * sLK    = sSlope + GP;       // [16] K levels
    float * sLV    = sLK + 16;          // [16] V levels
    char  * sK     = (char *) (sLV + 16); // [T][KP] the tile's K rows, staged by the whole block

    const int tid = threadIdx.x, lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int split = blockIdx.x;
    const int hk = blockIdx.y % p.n_head_kv, seq = blockIdx.y / p.n_head_kv;
    const int hq0 = hk*p.gqa;

    if (tid < 16) {
        sLK[tid] = KBITS == 3 ? (tid < 8 ? rq_levels3[tid] : 0.0f) : rq_levels4[tid];
        sLV[tid] = VK == RQ_V_RQ3 ? (tid < 8 ? rq_levels3[tid] : 0.0f) : VK == RQ_V_RQ4 ? rq_levels4[tid] : 0.0f;
    }
    if (tid < GP) {
        sSlope[tid] = tid < p.gqa ? get_alibi_slope(p.max_bias, hq0 + tid, p.n_head_log2, p.m0, p.m1) : 1.0f;
    }
    // Queries: rotate each quartet, scale, store in code order.  Heads past gqa are zero.
    for (int u = tid; u < GP*(D/4); u += T) {
        const int h = u / (D/4), m = u % (D/4);
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f}, y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (h < p.gqa) {
            const float * q = (const float *) (p.Q + seq*p.nb03 + (hq0 + h)*p.nb02) + 4*m;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                x[e] = q[e];
            }
            rq_rotate_quartet(p.k_iso, m % (RQ_QK/4), x, y);
        }
        const int b = (4*m) / RQ_QK;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            sQ[h*D + b*RQ_QK + rq_code_pos<KBITS>((4*m) % RQ_QK + e)] = p.scale*y[e];
        }
    }
    __syncthreads();

    const half * mask = p.mask ? (const half *) ((const char *) p.mask + (seq % p.mask_ne3)*p.mask_nb3) : nullptr;
    const char * Kh = p.K + seq*p.nb13 + hk*p.nb12;
    const char * Vh = p.V + seq*p.nb23 + hk*p.nb22;

    // V-phase role of this thread
    const int v_row = tid / TPR;
    const int v_hg  = (tid % TPR) / SLOTS;
    const int v_slot = tid % SLOTS;

    float M[GP], L[GP];
#pragma unroll
    for (int h = 0; h < GP; ++h) {
        M[h] = -FLT_MAX/2.0f;
        L[h] = 0.0f;
    }
    float acc[HG][8];
#pragma unroll
    for (int h = 0; h < HG; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            acc[h][e] = 0.0f;
        }
    }

    const int t_begin = split*p.split_len;
    const int t_end   = min(p.n_kv, t_begin + p.split_len);

    for (int t0 = t_begin; t0 < t_end; t0 += T) {
        // ---- stage the tile's K rows: consecutive threads read consecutive 16-bit words
        //      of a row (coalesced), where one thread per row would touch a sector per word
        {
            constexpr int KRH = NB*KBS/2;  // 16-bit words per row
            const int n_rows = min(T, t_end - t0);
            for (int u = tid; u < n_rows*KRH; u += T) {
                const int r = u / KRH, w = u % KRH;
                *(uint16_t *) (sK + r*KP + 2*w) = (uint16_t) ld_u16(Kh + (int64_t) (t0 + r)*p.nb11 + 2*w);
            }
        }
        __syncthreads();

        // ---- scores of row t for every head
        const int t = t0 + tid;
        float s[GP];
        if (t < t_end) {
#pragma unroll
            for (int h = 0; h < GP; ++h) {
                s[h] = 0.0f;
            }
            const char * krow = sK + tid*KP;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                const char * blk = krow + b*KBS;
                float sb[GP];
#pragma unroll
                for (int h = 0; h < GP; ++h) {
                    sb[h] = 0.0f;
                }
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    float w[8];
                    rq_slot_levels<KBITS>(blk, i, sLK, w);
#pragma unroll
                    for (int h = 0; h < GP; ++h) {
                        const float4 qa = *(const float4 *) &sQ[h*D + b*RQ_QK + 8*i];
                        const float4 qb = *(const float4 *) &sQ[h*D + b*RQ_QK + 8*i + 4];
                        sb[h] += w[0]*qa.x + w[1]*qa.y + w[2]*qa.z + w[3]*qa.w
                               + w[4]*qb.x + w[5]*qb.y + w[6]*qb.z + w[7]*qb.w;
                    }
                }
                const float norm = half_bits_to_float(ld_u16(blk));
#pragma unroll
                for (int h = 0; h < GP; ++h) {
                    s[h] += norm*sb[h];
                }
            }
            if (p.softcap != 0.0f) {
#pragma unroll
                for (int h = 0; h < GP; ++h) {
                    s[h] = p.softcap*tanhf(s[h]);
                }
            }
            if (mask) {
                const float mv = __half2float(mask[t]);
#pragma unroll
                for (int h = 0; h < GP; ++h) {
                    s[h] += sSlope[h]*mv;
                }
            }
        } else {
#pragma unroll
            for (int h = 0; h < GP; ++h) {
                s[h] = -INFINITY;
            }
        }

        // ---- tile max per head, rescale, probabilities
#pragma unroll
        for (int h = 0; h < GP; ++h) {
            const float mx = warp_reduce_max(s[h]);
            if (lane == 0) {
                sRed[warp*GP + h] = mx;
            }
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < GP; ++h) {
            const float m_new = fmaxf(M[h], fmaxf(fmaxf(sRed[h], sRed[GP + h]), fmaxf(sRed[2*GP + h], sRed[3*GP + h])));
            const float alpha = expf(M[h] - m_new);
            M[h] = m_new;
            const float pr = expf(s[h] - m_new);
            L[h] = L[h]*alpha + pr;
            sP[tid*GP + h] = pr;
            if (tid == 0) {
                sAlpha[h] = alpha;
            }
        }
        __syncthreads();

        // ---- V: this thread's slot, its head group, rows v_row, v_row + RG, ...
#pragma unroll
        for (int h = 0; h < HG; ++h) {
            const float a = sAlpha[v_hg*HG + h];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                acc[h][e] *= a;
            }
        }
        const int rows = min(T, t_end - t0);
        const auto accumulate = [&](const rq_v_raw & raw, const int r) {
            float w[8];
            const float vs = rq_v_values<VK>(raw, v_slot, sLV, w);
#pragma unroll
            for (int h = 0; h < HG; ++h) {
                const float ph = vs*sP[r*GP + v_hg*HG + h];
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    acc[h][e] += ph*w[e];
                }
            }
        };
        if (rows == T) {
            // full tile: rows v_row + RG u, u < NR, in chunks whose loads are all issued
            // before the first is used (one memory latency per chunk, not per row)
            constexpr int NR = T / RG;
            constexpr int CH = NR < 8 ? NR : 8;
#pragma unroll
            for (int c0 = 0; c0 < NR; c0 += CH) {
                rq_v_raw raw[CH];
#pragma unroll
                for (int u = 0; u < CH; ++u) {
                    raw[u] = rq_v_load<VK>(Vh + (int64_t) (t0 + v_row + (c0 + u)*RG)*p.nb21, v_slot);
                }
#pragma unroll
                for (int u = 0; u < CH; ++u) {
                    accumulate(raw[u], v_row + (c0 + u)*RG);
                }
            }
        } else {
            for (int r = v_row; r < rows; r += RG) {
                accumulate(rq_v_load<VK>(Vh + (int64_t) (t0 + r)*p.nb21, v_slot), r);
            }
        }
        __syncthreads();
    }

    // ---- block totals: sum of exp per head, accumulators over the row groups
#pragma unroll
    for (int h = 0; h < GP; ++h) {
        const float l = warp_reduce_sum(L[h]);
        if (lane == 0) {
            sRed[warp*GP + h] = l;
        }
    }
    for (int u = tid; u < GP*D; u += T) {
        sQ[u] = 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < HG; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            int j;
            if constexpr (VK == RQ_V_RQ3 || VK == RQ_V_RQ4) {
                j = (v_slot / 8)*RQ_QK + rq_code_elem<VBITS>((v_slot % 8)*8 + e);
            } else {
                j = v_slot*8 + e;
            }
            atomicAdd(&sQ[(v_hg*HG + h)*D + j], acc[h][e]);
        }
    }
    if (tid < GP) {
        sAlpha[tid] = sRed[tid] + sRed[GP + tid] + sRed[2*GP + tid] + sRed[3*GP + tid];
    }
    if (tid == 0) {
#pragma unroll
        for (int h = 0; h < GP; ++h) {
            sSlope[h] = M[h];  // slopes are no longer needed: reuse for the maxima
        }
    }
    __syncthreads();

    const int64_t row0 = (int64_t) seq*p.n_head + hq0;
    for (int u = tid; u < p.gqa*D; u += T) {
        const int h = u / D, j = u % D;
        p.part[((row0 + h)*p.n_splits + split)*D + j] = sQ[h*D + j];
    }
    if (tid < p.gqa) {
        p.meta[(row0 + tid)*p.n_splits + split] = make_float2(sSlope[tid], sAlpha[tid]);
    }
}

// Merge the slices of one (sequence, query head), add the attention sink, divide, and
// un-rotate V.  One thread per output quartet.
template <int D>
__global__ void rq_fattn_combine(const float * __restrict__ part, const float2 * __restrict__ meta,
                                 const float * __restrict__ sinks, float * __restrict__ dst,
                                 const int n_splits, const int n_head, const int v_rot /* 0 none, 1 planar, 2 iso */) {
    const int hq = blockIdx.x, seq = blockIdx.y, m = threadIdx.x;
    const int64_t row = (int64_t) seq*n_head + hq;
    const float2 * mt = meta + row*n_splits;
    float mx = sinks ? sinks[hq] : -FLT_MAX/2.0f;
    for (int s = 0; s < n_splits; ++s) {
        mx = fmaxf(mx, mt[s].x);
    }
    float num[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float den = sinks ? expf(sinks[hq] - mx) : 0.0f;
    for (int s = 0; s < n_splits; ++s) {
        const float w = expf(mt[s].x - mx);
        den += w*mt[s].y;
        const float4 v = *(const float4 *) (part + (row*n_splits + s)*D + 4*m);
        num[0] += w*v.x; num[1] += w*v.y; num[2] += w*v.z; num[3] += w*v.w;
    }
    float y[4];
    if (v_rot != 0) {
        rq_unrotate_quartet(v_rot == 2, m % (RQ_QK/4), num, 1.0f/den, y);
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            y[e] = num[e]/den;
        }
    }
    *(float4 *) (dst + row*D + 4*m) = make_float4(y[0], y[1], y[2], y[3]);
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

template <int D, int KBITS, int VK, int GP>
void rq_launch(const rq_fattn_params & p, const dim3 grid, cudaStream_t stream) {
    constexpr size_t smem = sizeof(float)*(GP*D + RQ_FA_THREADS*GP + 4*GP + 2*GP + 32) +
                            (size_t) RQ_FA_THREADS*rq_k_pitch<D, KBITS>();
    static_assert(smem <= 48*1024, "shared memory");
    rq_fattn_decode<D, KBITS, VK, GP><<<grid, RQ_FA_THREADS, smem, stream>>>(p);
}

template <int D, int KBITS, int VK>
void rq_launch_gp(const rq_fattn_params & p, const int gp, const dim3 grid, cudaStream_t stream) {
    switch (gp) {
        case 4:  rq_launch<D, KBITS, VK, 4 >(p, grid, stream); break;
        case 8:  rq_launch<D, KBITS, VK, 8 >(p, grid, stream); break;
        case 16: rq_launch<D, KBITS, VK, 16>(p, grid, stream); break;
        default: GGML_ABORT("rotorquant: unsupported GQA group %d", gp);
    }
}

template <int D, int KBITS>
void rq_launch_v(const rq_fattn_params & p, const int vk, const int gp, const dim3 grid, cudaStream_t stream) {
    switch (vk) {
        case RQ_V_RQ3:  rq_launch_gp<D, KBITS, RQ_V_RQ3 >(p, gp, grid, stream); break;
        case RQ_V_RQ4:  rq_launch_gp<D, KBITS, RQ_V_RQ4 >(p, gp, grid, stream); break;
        case RQ_V_F16:  rq_launch_gp<D, KBITS, RQ_V_F16 >(p, gp, grid, stream); break;
        case RQ_V_Q8_0: rq_launch_gp<D, KBITS, RQ_V_Q8_0>(p, gp, grid, stream); break;
        default: GGML_ABORT("rotorquant: unsupported V type");
    }
}

template <int D>
void rq_launch_k(const rq_fattn_params & p, const int kbits, const int vk, const int gp, const dim3 grid, cudaStream_t stream) {
    if (kbits == 3) {
        rq_launch_v<D, 3>(p, vk, gp, grid, stream);
    } else {
        rq_launch_v<D, 4>(p, vk, gp, grid, stream);
    }
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
           Q->nb[0] == sizeof(float) && K->nb[0] == ggml_type_size(K->type) && V->nb[0] == ggml_type_size(V->type);
}

void rq_cuda_flash_attn_ext_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    GGML_ASSERT(rq_cuda_fattn_decode_supported(dst));
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

    // Slices of the KV range: enough blocks for three per multiprocessor (the occupancy the
    // kernel's registers allow), so that memory latency is hidden across blocks.
    const int nsm = ggml_cuda_info().devices[ctx.device].nsm;
    const int n_tiles = (p.n_kv + RQ_FA_THREADS - 1) / RQ_FA_THREADS;
    const int n_kv_blocks = p.n_head_kv*n_seq;
    const int splits_wanted = std::clamp((3*nsm + n_kv_blocks - 1) / n_kv_blocks, 1, std::max(1, n_tiles));
    const int tiles_per_split = std::max(1, (n_tiles + splits_wanted - 1) / splits_wanted);
    p.split_len = tiles_per_split*RQ_FA_THREADS;
    p.n_splits  = std::max(1, (p.n_kv + p.split_len - 1) / p.split_len);

    ggml_cuda_pool & pool = ctx.pool();
    const size_t n_rows = (size_t) n_seq*p.n_head;
    ggml_cuda_pool_alloc<float>  part(pool, n_rows*p.n_splits*D);
    ggml_cuda_pool_alloc<float2> meta(pool, n_rows*p.n_splits);
    p.part = part.ptr;
    p.meta = meta.ptr;

    cudaStream_t stream = ctx.stream();
    const dim3 grid(p.n_splits, p.n_head_kv*n_seq, 1);
    const int kbits = rq_bits_of(K->type), vk = rq_v_kind_of(V->type), gp = rq_group_pad(p.gqa);
    switch (D) {
        case 64:  rq_launch_k<64 >(p, kbits, vk, gp, grid, stream); break;
        case 128: rq_launch_k<128>(p, kbits, vk, gp, grid, stream); break;
        case 256: rq_launch_k<256>(p, kbits, vk, gp, grid, stream); break;
        default: GGML_ABORT("rotorquant: unsupported head size %d", D);
    }
    CUDA_CHECK(cudaGetLastError());

    const int v_rot = rq_is_cache_type(V->type) ? (rq_is_iso(V->type) ? 2 : 1) : 0;
    const dim3 grid_c(p.n_head, n_seq, 1);
    const float * sinks_d = sinks ? (const float *) sinks->data : nullptr;
    switch (D) {
        case 64:  rq_fattn_combine<64 ><<<grid_c, 64/4,  0, stream>>>(p.part, p.meta, sinks_d, (float *) dst->data, p.n_splits, p.n_head, v_rot); break;
        case 128: rq_fattn_combine<128><<<grid_c, 128/4, 0, stream>>>(p.part, p.meta, sinks_d, (float *) dst->data, p.n_splits, p.n_head, v_rot); break;
        case 256: rq_fattn_combine<256><<<grid_c, 256/4, 0, stream>>>(p.part, p.meta, sinks_d, (float *) dst->data, p.n_splits, p.n_head, v_rot); break;
    }
    CUDA_CHECK(cudaGetLastError());
}
