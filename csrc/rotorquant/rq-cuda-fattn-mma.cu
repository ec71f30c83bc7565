// Flash-attention decode with a rotor K cache on tensor cores (mma.sync m16n8k16, f16
// operands, f32 accumulation).
//
// Why: the scalar kernel (rq-cuda-fattn.cu) reads 4.9x fewer bytes than f16 but spends
// them on one FMA per value and query head plus a table lookup, so on an H200 it runs no
// faster than upstream's f16 kernel at any depth.  Here each 64-row tile is first decoded
// once into shared memory as f16 (one lookup per *pair* of values, the block's scale folded
// in), and both products run on tensor cores:
//   S[rows x heads] = K~[rows x D] . Q~^T      (K~: decoded keys, rotated basis; Q~ = s R q)
//   O[heads x D]   += P[heads x rows] . V~     (V~ in the rotated basis; un-rotated once by
//                                               the combine kernel, as for the scalar kernel)
// with the usual online softmax in between.  Within a 64-value block the values sit in
// "pair order" (rq_pair_elem): position 2p, 2p + 1 hold the two values one code byte (4-bit)
// or one 4-bit field of qs plus two sign bits (3-bit) encode, so a lane decodes a pair with
// one lookup in a 64- or 256-entry half2 table.  Q is stored in the same order, and the
// output of a rotor V is mapped back to element order when the partial is written.
//
// Block: 4 warps, one KV head (all its query heads, padded to GPN = 8 or 16) and a slice of
// positions; warp w scores rows 16 w .. 16 w + 15 of a tile and accumulates D/4 of the
// output dimensions.
#include "rq-cuda-codec.cuh"
#include "rq-cuda-fattn.cuh"

#include <cfloat>

namespace {

constexpr int RQM_T = 64;        // rows per tile
constexpr int RQM_THREADS = 128;
constexpr int RQM_PAD = 8;       // halves of padding per shared row (conflict-free ldmatrix)

// Element (0..63) of a block at pair-order position pos.
//   3-bit: pair p = 16 h + c holds elements c + 32 h and c + 16 + 32 h (qs[c], nibble h)
//   4-bit: pair p holds elements p and p + 32 (the two nibbles of qs[p])
template <int bits>
__device__ __forceinline__ int rq_pair_elem(const int pos) {
    const int p = pos / 2, e = pos % 2;
    return bits == 3 ? p % 16 + 32*(p / 16) + 16*e : p + 32*e;
}

template <int bits>
__device__ __forceinline__ int rq_pair_pos(const int j) {
    if constexpr (bits == 3) {
        const int f = j / 16, c = j % 16;
        return 2*(16*(f / 2) + c) + f % 2;
    } else {
        return 2*(j % 32) + j / 32;
    }
}

// Pair-table index of pair p of a block, read from its code bytes.
template <int bits>
__device__ __forceinline__ int rq_pair_index(const uint8_t * blk, const int p) {
    if constexpr (bits == 3) {
        const int c = p % 16, h = p / 16;
        const int q = blk[2 + c], s = blk[2 + RQ_QK/4 + c % 8];
        const int sh = 4*h + c / 8;
        return ((q >> (4*h)) & 15) | (((s >> sh) & 1) << 4) | (((s >> (sh + 2)) & 1) << 5);
    } else {
        return blk[2 + p];
    }
}

// Entry i of the pair table: the levels of both codes (low half: the pair's first value).
template <int bits>
__device__ __forceinline__ half2 rq_pair_entry(const int i) {
    if constexpr (bits == 3) {
        const int a = (i & 3) | (((i >> 4) & 1) << 2), b = ((i >> 2) & 3) | (((i >> 5) & 1) << 2);
        return __floats2half2_rn(rq_levels3[a], rq_levels3[b]);
    } else {
        return __floats2half2_rn(rq_levels4[i & 15], rq_levels4[i >> 4]);
    }
}

__device__ __forceinline__ half2 rq_scale_h2(const uint8_t * blk) {
    const uint16_t b = (uint16_t) (blk[0] | (blk[1] << 8));
    return __half2half2(__ushort_as_half(b));
}

__device__ __forceinline__ uint32_t smem_addr(const void * p) {
    return (uint32_t) __cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const half * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const half * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const half * p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(p)));
}

// c += a . b for one m16n8k16 tile (a: 16x16 row-major, b: 16x8 column-major).
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// One (row, 64-value block) of V, decoded by a warp (lane = pair) into dst (64 halves).
template <int VK>
__device__ __forceinline__ void rq_decode_v_unit(const char * vrow, const int b, const int lane,
                                                 const half2 * tab, half2 * dst) {
    if constexpr (VK == RQ_V_RQ3 || VK == RQ_V_RQ4) {
        constexpr int bits = VK == RQ_V_RQ3 ? 3 : 4;
        const uint8_t * blk = (const uint8_t *) vrow + b*rq_block_bytes<bits>();
        dst[lane] = __hmul2(tab[rq_pair_index<bits>(blk, lane)], rq_scale_h2(blk));
    } else if constexpr (VK == RQ_V_F16) {
        dst[lane] = ((const half2 *) vrow)[32*b + lane];
    } else {
        const int j = 64*b + 2*lane;  // values j, j + 1: one q8_0 block of 32
        const uint8_t * blk = (const uint8_t *) vrow + (j / 32)*(int) sizeof(block_q8_0);
        const float d = __half2float(__ushort_as_half((uint16_t) (blk[0] | (blk[1] << 8))));
        const int8_t * qs = (const int8_t *) blk + 2 + j % 32;
        dst[lane] = __floats2half2_rn(d*qs[0], d*qs[1]);
    }
}

template <int D, int KBITS, int VK, int NH>
__launch_bounds__(RQM_THREADS, 2)
__global__ void rq_fattn_decode_mma(const rq_fattn_params p) {
    constexpr int GPN  = 8*NH;            // padded query heads of the block (mma n for S)
    constexpr int NB   = D / RQ_QK;
    constexpr int LD   = D + RQM_PAD;     // halves per row of sK, sV, sQ
    constexpr int LDP  = RQM_T + RQM_PAD; // halves per row of sP
    constexpr int NTW  = D / 32;          // output n-tiles (8 dims) per warp
    constexpr bool V_RQ = VK == RQ_V_RQ3 || VK == RQ_V_RQ4;
    constexpr int VBITS = VK == RQ_V_RQ3 ? 3 : 4;
    constexpr int KTAB = KBITS == 3 ? 64 : 256, VTAB = !V_RQ ? 1 : VBITS == 3 ? 64 : 256;

    extern __shared__ __align__(16) unsigned char rqm_smem[];
    half  * sK = (half *) rqm_smem;              // [T][LD] decoded keys
    half  * sV = sK + RQM_T*LD;                  // [T][LD] decoded values
    half  * sQ = sV + RQM_T*LD;                  // [16][LD] rotated, scaled queries
    half  * sP = sQ + 16*LD;                     // [16][LDP] probabilities (head-major)
    half2 * sTK = (half2 *) (sP + 16*LDP);       // K pair table
    half2 * sTV = sTK + KTAB;                    // V pair table
    float * sRed   = (float *) (sTV + VTAB);     // [4][16] per-warp max / sum
    float * sM     = sRed + 4*16;                // [16] running max
    float * sL     = sM + 16;                    // [16] running sum of exp
    float * sAlpha = sL + 16;                    // [16] rescale of this tile
    float * sSlope = sAlpha + 16;                // [16] ALiBi slopes

    const int tid = threadIdx.x, lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int g = lane / 4, t4 = lane % 4;
    const int split = blockIdx.x;
    const int hk = blockIdx.y % p.n_head_kv, seq = blockIdx.y / p.n_head_kv;
    const int hq0 = hk*p.gqa;

    for (int i = tid; i < KTAB; i += RQM_THREADS) {
        sTK[i] = rq_pair_entry<KBITS>(i);
    }
    if constexpr (V_RQ) {
        for (int i = tid; i < VTAB; i += RQM_THREADS) {
            sTV[i] = rq_pair_entry<VBITS>(i);
        }
    }
    if (tid < 16) {
        sM[tid] = -FLT_MAX/2.0f;
        sL[tid] = 0.0f;
        sAlpha[tid] = 1.0f;
        sSlope[tid] = tid < p.gqa ? get_alibi_slope(p.max_bias, hq0 + tid, p.n_head_log2, p.m0, p.m1) : 1.0f;
    }
    for (int i = tid; i < 16*LDP; i += RQM_THREADS) {
        sP[i] = __float2half(0.0f);  // heads >= GPN stay zero rows of the V product
    }
    // queries: rotated per quartet, scaled, in the K pair order; padded heads are zero
    for (int u = tid; u < 16*(D/4); u += RQM_THREADS) {
        const int h = u / (D/4), m = u % (D/4);
        float y[4];
        rq_query_quartet(p, seq, hq0, h, m, y);
        const int b = (4*m) / RQ_QK;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            sQ[h*LD + b*RQ_QK + rq_pair_pos<KBITS>((4*m) % RQ_QK + e)] = __float2half(y[e]);
        }
    }
    __syncthreads();

    const half * mask = p.mask ? (const half *) ((const char *) p.mask + (seq % p.mask_ne3)*p.mask_nb3) : nullptr;
    const char * Kh = p.K + seq*p.nb13 + hk*p.nb12;
    const char * Vh = p.V + seq*p.nb23 + hk*p.nb22;

    float acc[NTW][4];
#pragma unroll
    for (int i = 0; i < NTW; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            acc[i][e] = 0.0f;
        }
    }

    const int t_begin = split*p.split_len;
    const int t_end   = min(p.n_kv, t_begin + p.split_len);

    for (int t0 = t_begin; t0 < t_end; t0 += RQM_T) {
        // ---- decode the tile: warp w takes units (row, block) w, w + 4, ...; lane = pair
#pragma unroll 8
        for (int u = warp; u < RQM_T*NB; u += 4) {
            const int r = u / NB, b = u % NB, t = t0 + r;
            half2 * dk = (half2 *) (sK + r*LD + b*RQ_QK);
            half2 * dv = (half2 *) (sV + r*LD + b*RQ_QK);
            if (t < t_end) {
                const uint8_t * kb = (const uint8_t *) (Kh + (int64_t) t*p.nb11) + b*rq_block_bytes<KBITS>();
                dk[lane] = __hmul2(sTK[rq_pair_index<KBITS>(kb, lane)], rq_scale_h2(kb));
                rq_decode_v_unit<VK>(Vh + (int64_t) t*p.nb21, b, lane, sTV, dv);
            } else {
                dk[lane] = __float2half2_rn(0.0f);
                dv[lane] = __float2half2_rn(0.0f);
            }
        }
        __syncthreads();

        // ---- scores of rows 16 warp .. + 15 for every head (C fragments: rows g, g + 8;
        //      heads 8 j + 2 t4, + 1)
        float S[NH][4];
#pragma unroll
        for (int j = 0; j < NH; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                S[j][e] = 0.0f;
            }
        }
#pragma unroll
        for (int kc = 0; kc < D/16; ++kc) {
            uint32_t a[4];
            ldmatrix_x4(a, sK + (16*warp + lane % 16)*LD + 16*kc + (lane / 16)*8);
#pragma unroll
            for (int j = 0; j < NH; ++j) {
                uint32_t bq[2];
                ldmatrix_x2(bq, sQ + (8*j + lane % 8)*LD + 16*kc + ((lane / 8) % 2)*8);
                mma_16816(S[j], a, bq);
            }
        }
        const int row_lo = 16*warp + g;
#pragma unroll
        for (int j = 0; j < NH; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = row_lo + (e / 2)*8, h = 8*j + 2*t4 + e % 2, t = t0 + r;
                float s = S[j][e];
                if (p.softcap != 0.0f) {
                    s = p.softcap*tanhf(s);
                }
                if (mask && t < t_end) {
                    s += sSlope[h]*__half2float(mask[t]);
                }
                S[j][e] = t < t_end ? s : -INFINITY;
            }
        }
        // tile max per head: rows of the warp (lanes with the same t4), then the 4 warps
#pragma unroll
        for (int j = 0; j < NH; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float mx = fmaxf(S[j][e], S[j][e + 2]);
#pragma unroll
                for (int o = 4; o < WARP_SIZE; o *= 2) {
                    mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFF, mx, o, WARP_SIZE));
                }
                if (g == 0) {
                    sRed[warp*16 + 8*j + 2*t4 + e] = mx;
                }
            }
        }
        __syncthreads();
        if (tid < GPN) {
            const float mx = fmaxf(fmaxf(sRed[tid], sRed[16 + tid]), fmaxf(sRed[32 + tid], sRed[48 + tid]));
            const float m_new = fmaxf(sM[tid], mx);
            sAlpha[tid] = expf(sM[tid] - m_new);
            sM[tid] = m_new;
        }
        __syncthreads();
        // probabilities (f16, head-major for the V product) and their sums per head
#pragma unroll
        for (int j = 0; j < NH; ++j) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int h = 8*j + 2*t4 + e;
                const float m = sM[h];
                const float p0 = expf(S[j][e] - m), p1 = expf(S[j][e + 2] - m);
                sP[h*LDP + row_lo]     = __float2half(p0);
                sP[h*LDP + row_lo + 8] = __float2half(p1);
                float sum = p0 + p1;
#pragma unroll
                for (int o = 4; o < WARP_SIZE; o *= 2) {
                    sum += __shfl_xor_sync(0xFFFFFFFF, sum, o, WARP_SIZE);
                }
                if (g == 0) {
                    sRed[warp*16 + h] = sum;
                }
            }
        }
        __syncthreads();
        if (tid < GPN) {
            sL[tid] = sL[tid]*sAlpha[tid] + sRed[tid] + sRed[16 + tid] + sRed[32 + tid] + sRed[48 + tid];
        }

        // ---- O[heads x D] += P . V~ : this warp's dims 8 (NTW warp + i) + ..; C rows are
        //      heads g, g + 8
        const float al0 = sAlpha[g], al1 = sAlpha[g + 8];
#pragma unroll
        for (int i = 0; i < NTW; ++i) {
            acc[i][0] *= al0; acc[i][1] *= al0;
            acc[i][2] *= al1; acc[i][3] *= al1;
        }
#pragma unroll
        for (int kc = 0; kc < RQM_T/16; ++kc) {
            uint32_t a[4];
            ldmatrix_x4(a, sP + (lane % 16)*LDP + 16*kc + (lane / 16)*8);
#pragma unroll
            for (int i = 0; i < NTW; ++i) {
                uint32_t bv[2];
                ldmatrix_x2_trans(bv, sV + (16*kc + lane % 16)*LD + 8*(NTW*warp + i));
                mma_16816(acc[i], a, bv);
            }
        }
        __syncthreads();  // sK, sV, sP, sAlpha are rewritten by the next tile
    }

    // ---- partial outputs (element order) and (max, sum) per query head
    const int64_t row0 = (int64_t) seq*p.n_head + hq0;
#pragma unroll
    for (int i = 0; i < NTW; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int h = g + (e / 2)*8;
            const int pos = 8*(NTW*warp + i) + 2*t4 + e % 2;
            const int j = V_RQ ? (pos / RQ_QK)*RQ_QK + rq_pair_elem<VBITS>(pos % RQ_QK) : pos;
            if (h < p.gqa) {
                p.part[((row0 + h)*p.n_splits + split)*D + j] = acc[i][e];
            }
        }
    }
    if (tid < p.gqa) {
        p.meta[(row0 + tid)*p.n_splits + split] = make_float2(sM[tid], sL[tid]);
    }
}

template <int D, int KBITS, int VK, int NH>
void rqm_launch(const rq_fattn_params & p, const dim3 & grid, cudaStream_t stream) {
    constexpr int LD = D + RQM_PAD, LDP = RQM_T + RQM_PAD;
    constexpr int KTAB = KBITS == 3 ? 64 : 256;
    constexpr int VTAB = VK == RQ_V_RQ3 ? 64 : VK == RQ_V_RQ4 ? 256 : 1;
    constexpr size_t smem = sizeof(half)*(2*RQM_T*LD + 16*LD + 16*LDP) + sizeof(half2)*(KTAB + VTAB) + sizeof(float)*8*16;
    CUDA_SET_SHARED_MEMORY_LIMIT((rq_fattn_decode_mma<D, KBITS, VK, NH>), smem);
    rq_fattn_decode_mma<D, KBITS, VK, NH><<<grid, RQM_THREADS, smem, stream>>>(p);
}

template <int D, int KBITS, int VK>
void rqm_launch_nh(const rq_fattn_params & p, const dim3 & grid, cudaStream_t stream) {
    if (p.gqa <= 8) {
        rqm_launch<D, KBITS, VK, 1>(p, grid, stream);
    } else {
        rqm_launch<D, KBITS, VK, 2>(p, grid, stream);
    }
}

template <int D, int KBITS>
void rqm_launch_v(const rq_fattn_params & p, const int vk, const dim3 & grid, cudaStream_t stream) {
    switch (vk) {
        case RQ_V_RQ3:  rqm_launch_nh<D, KBITS, RQ_V_RQ3 >(p, grid, stream); break;
        case RQ_V_RQ4:  rqm_launch_nh<D, KBITS, RQ_V_RQ4 >(p, grid, stream); break;
        case RQ_V_F16:  rqm_launch_nh<D, KBITS, RQ_V_F16 >(p, grid, stream); break;
        case RQ_V_Q8_0: rqm_launch_nh<D, KBITS, RQ_V_Q8_0>(p, grid, stream); break;
        default: GGML_ABORT("rotorquant: unsupported V type");
    }
}

template <int D>
void rqm_launch_k(const rq_fattn_params & p, const int kbits, const int vk, const dim3 & grid, cudaStream_t stream) {
    if (kbits == 3) {
        rqm_launch_v<D, 3>(p, vk, grid, stream);
    } else {
        rqm_launch_v<D, 4>(p, vk, grid, stream);
    }
}

} // namespace

void rq_fattn_mma_launch(const rq_fattn_params & p, const int D, const int kbits, const int vk, const dim3 & grid, cudaStream_t stream) {
    GGML_ASSERT(p.split_len % RQM_T == 0 && p.gqa <= 16);
    switch (D) {
        case 64:  rqm_launch_k<64 >(p, kbits, vk, grid, stream); break;
        case 128: rqm_launch_k<128>(p, kbits, vk, grid, stream); break;
        case 256: rqm_launch_k<256>(p, kbits, vk, grid, stream); break;
        default: GGML_ABORT("rotorquant: unsupported head size %d", D);
    }
}
