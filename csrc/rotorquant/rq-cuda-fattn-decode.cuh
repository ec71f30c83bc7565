// Flash-attention decode (one query per sequence) with a RotorQuant K cache on CUDA.
//
// Why a kernel of our own rather than upstream's vector kernel: at long context decode is
// bound by reading the cache, and a 3.25-bit cache is 4.9x fewer bytes than f16 only if
// every byte is read once.  So one block takes one KV head and a slice of positions and
// serves *all* query heads of that KV head (GQA): each K and V block is decoded once per
// step, not once per query head.  And nothing is un-rotated per key:
//   K: the query is rotated once (R q); a key scores s_b * <levels[k], (R q)_b> per block.
//      For 3-bit keys that dot product is integer work: R q as 16-bit integers (one scale
//      per block of 64), the levels as 8-bit integers picked by a byte permute straight
//      from the packed codes, four products per dp4a.  The decode kernel is bound by issue
//      slots, not memory, and a table lookup per code plus f32 multiply-adds was most of them.
//   V: p * s_b * levels[k] is accumulated in the rotated basis; R^T is applied once to the
//      output row (the rotation is linear and the same for every token).
// Scores, probabilities and accumulators are f32; the online softmax is the usual one.
//
// Work split: the KV range of a block is walked in tiles of 128 rows.  The tile's K rows
// (and V rows, for rotor V) are copied to shared memory asynchronously while the previous
// tile is computed (cp.async, two buffers), so the memory system always has a tile in
// flight.  Thread t scores key row t of the tile for all query heads; then every thread
// accumulates an 8-value slot of V for up to 8 heads over its share of the tile's rows.
// Slices of the KV range run in parallel blocks and a combine kernel merges them; a block
// that holds the whole range writes the output itself.
//
// This header holds the kernel; only the files of fattn-instances/ include it.
#pragma once

#include "rq-cuda-fattn.cuh"

#include <algorithm>
#include <cfloat>

namespace rq_fa {

// ---- asynchronous copies (plain copies where cp.async is not available) -----------------

__device__ __forceinline__ void copy_async4(char * dst_smem, const char * src) {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" : : "r"((unsigned) __cvta_generic_to_shared(dst_smem)), "l"(src));
#else
    *(uint32_t *) dst_smem = *(const uint32_t *) src;
#endif
}

__device__ __forceinline__ void copy_commit() {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.commit_group;");
#endif
}

// Wait until at most n of this thread's committed copy groups are still in flight.
template <int n>
__device__ __forceinline__ void copy_wait() {
#ifdef CP_ASYNC_AVAILABLE
    asm volatile("cp.async.wait_group %0;" : : "n"(n));
#endif
}

// Copy n_rows rows of RB bytes, nb bytes apart in global memory, to shared memory rows
// row_pitch(RB) apart.  Consecutive threads take consecutive words of a row, so a warp's
// copies touch few sectors.  async4: 32-bit asynchronous copies; else 16-bit plain ones
// (rows of 26 or 34 bytes are only 2-byte aligned).
template <int RB>
__device__ __forceinline__ void stage_rows(char * dst, const char * src, const int64_t nb, const int n_rows, const bool async4) {
    constexpr int P = row_pitch(RB);
    constexpr int T = RQ_FA_THREADS;
    if constexpr (RB % 4 == 0) {
        if (async4) {
            constexpr int W = RB/4;
            // not unrolled: hoisted addresses of every copy would cost a register each
#pragma unroll 1
            for (int u = threadIdx.x; u < n_rows*W; u += T) {
                const int r = u / W, w = u % W;
                copy_async4(dst + r*P + 4*w, src + r*nb + 4*w);
            }
            return;
        }
    }
    constexpr int H = RB/2;
#pragma unroll 1
    for (int u = threadIdx.x; u < n_rows*H; u += T) {
        const int r = u / H, w = u % H;
        *(uint16_t *) (dst + r*P + 2*w) = *(const uint16_t *) (src + r*nb + 2*w);
    }
}

// ---- codes -------------------------------------------------------------------------------
//
// A thread reads a block's codes 8 at a time ("slot" i = 0..7 of the block); element e of
// slot i is block element rq_slot_elem<bits>(i, e):
//   3-bit: u16 word i of qs and u16 word (i & 3) of signs (shifted right by i >> 2) hold
//          elements 16 f + 2 i + c2 (f = 0..3, c2 = 0, 1); the order is the one in which
//          rq3_selectors yields them: f = 0, 2 (c2 = 0), 0, 2 (c2 = 1), then f = 1, 3 likewise
//   4-bit: u16 words 2 i, 2 i + 1 of qs hold elements 4 i + e (low nibbles) and 32 + 4 i + e
template <int bits>
__device__ __forceinline__ int rq_slot_elem(const int i, const int e) {
    if constexpr (bits == 3) {
        const int f = ((e >> 2) & 1) | ((e & 1) << 1), c2 = (e >> 1) & 1;
        return 16*f + 2*i + c2;
    } else {
        return e < 4 ? 4*i + e : 32 + 4*i + (e - 4);
    }
}

// Position (slot-major, 8 per slot) at which the 4-bit key loop reads element j of a block.
__device__ __forceinline__ int rq4_code_pos(const int j) {
    return j < 32 ? 8*(j / 4) + j % 4 : 8*((j - 32) / 4) + 4 + (j - 32) % 4;
}

__device__ __forceinline__ uint32_t ld_u16(const char * p) {
    return *(const uint16_t *) p;
}

__device__ __forceinline__ float half_bits_to_float(const uint32_t b) {
    const uint16_t h = (uint16_t) b;
    return __half2float(*(const half *) &h);
}

// The 16-bit word at byte o of a row whose 32-bit words from w0 on are in rw (o even), in
// the low half of the result; the high half is the next word's (callers that mask the
// bits they use take the raw form, one shift cheaper).
__device__ __forceinline__ uint32_t u16_raw_at(const uint32_t * rw, const int w0, const int o) {
    return rw[o/4 - w0] >> (8*(o % 4));
}
__device__ __forceinline__ uint32_t u16_at(const uint32_t * rw, const int w0, const int o) {
    return u16_raw_at(rw, w0, o) & 0xFFFFu;
}

// 3-bit codes -> levels without a table lookup.  The 8 levels, as 8-bit integers
// (round(level * RQ3_I8_SCALE) = -88 -55 -31 -10 10 31 55 88, each within 0.3 % of the
// level; this scale minimises that error), fit in the 8 bytes that one byte permute (PRMT)
// selects from, so a 16-bit selector of four 3-bit codes gives four levels at once.
constexpr float RQ3_I8_SCALE = 327.36f;

// The levels as signed bytes (for dp4a), bytes 0-3 in lv[0], 4-7 in lv[1].  Flipping each
// byte's top bit adds 128: the unsigned form rq3_byte_to_float reads.
__device__ __forceinline__ void rq3_level_bytes(uint32_t lv[2]) {
    lv[0] = lv[1] = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const uint32_t b = (uint32_t) __float2int_rn(rq_levels3[k]*RQ3_I8_SCALE) & 0xFFu;
        lv[k / 4] |= b << (8*(k % 4));
    }
}

// Selectors of slot i's codes, from q = u16 word i of qs and s = the sign word shifted
// right by i >> 2 (both raw: bits above 15 are ignored).  The code of element 16 f + 2 i + c2
// has its low bits at q bit 2 f + 8 c2 and its sign at s bit 2 f + 8 c2: masking q with
// 0x3333 leaves the codes of f = 0, 2 in place as nibbles, and their signs only need a
// shift by 2 into each nibble's bit 2; f = 1, 3 are the same one shift lower.
__device__ __forceinline__ void rq3_selectors(const uint32_t q, const uint32_t s, uint32_t & sel_a, uint32_t & sel_b) {
    const uint32_t sm = s & 0x5555u;  // the signs of this slot's codes (even bits)
    sel_a = (q & 0x3333u) | ((sm << 2) & ~0x3333u);
    sel_b = ((q >> 2) & 0x3333u) | (sm & ~0x3333u);
}

// Byte n of v (a level + 128) as a float: 0x4B0000xx is 2^23 + xx exactly.
__device__ __forceinline__ float rq3_byte_to_float(const uint32_t v, const int n) {
    return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7440u + n)) - 8388736.0f;
}

// d = a . b + c over 4 bytes, a signed, b unsigned (the low bytes of the 16-bit queries).
__device__ __forceinline__ int dp4a_su(const int a, const uint32_t b, const int c) {
    int d;
    asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Levels of the 8 codes of a 4-bit slot (order rq_slot_elem<4>): q = u16 words 2 i, 2 i + 1 of qs.
__device__ __forceinline__ void rq4_slot_levels(const uint32_t q, const float * lut, float w[8]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        w[e]     = lut[(q >> (8*e))     & 15];
        w[e + 4] = lut[(q >> (8*e + 4)) & 15];
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
// lut: the 4-bit levels; lv3: the 3-bit levels as bytes + 128 (rq3_level_bytes).
template <int VK>
__device__ __forceinline__ float rq_v_values(const rq_v_raw & r, const int slot, const float * lut, const uint32_t lv3[2], float w[8]) {
    if constexpr (VK == RQ_V_RQ3) {
        const int i = slot % 8;
        uint32_t sel_a, sel_b;
        rq3_selectors(r.a, r.b >> (i >> 2), sel_a, sel_b);
        const uint32_t va = __byte_perm(lv3[0], lv3[1], sel_a), vb = __byte_perm(lv3[0], lv3[1], sel_b);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            w[n]     = rq3_byte_to_float(va, n);
            w[n + 4] = rq3_byte_to_float(vb, n);
        }
        return half_bits_to_float(r.c) * (1.0f/RQ3_I8_SCALE);
    } else if constexpr (VK == RQ_V_RQ4) {
        rq4_slot_levels(r.a, lut, w);
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
__launch_bounds__(RQ_FA_THREADS, GP <= 4 ? 4 : GP <= 8 ? 3 : 2)
__global__ void rq_fattn_decode(const rq_fattn_params p) {
    constexpr int NB    = D / RQ_QK;
    constexpr int T     = RQ_FA_THREADS;
    constexpr int KBS   = rq_block_bytes<KBITS>();
    constexpr int KRB   = rotor_row_bytes(D, KBITS);
    constexpr int KP    = row_pitch(KRB);
    constexpr bool VST  = v_staged(VK);
    constexpr int VRB   = VST ? rotor_row_bytes(D, v_bits(VK)) : 0;
    constexpr int VP    = VST ? row_pitch(VRB) : 0;
    constexpr int HG    = GP < 8 ? GP : 8;     // heads per thread in the V phase
    constexpr int NHG   = GP / HG;
    constexpr int SLOTS = D / 8;               // 8-value slots per row
    constexpr int TPR   = SLOTS * NHG;         // threads per row in the V phase
    constexpr int RG    = T / TPR;             // rows processed at once in the V phase
    static_assert(T % TPR == 0, "V phase mapping");
    constexpr int VBITS = VK == RQ_V_RQ3 ? 3 : 4;
    constexpr bool KDP  = k_dp4a(KBITS);       // integer scoring (3-bit keys)

    extern __shared__ float smem[];
    float * sQ     = smem;              // [GP][D] rotated, scaled queries (4-bit keys: in code order); later the output
    uint32_t * sQi = (uint32_t *) (sQ + GP*D);  // 3-bit keys: [GP][NB][8 slots][hi a, hi b, lo a, lo b]
    float * sQmax  = (float *) (sQi + (KDP ? GP*D/2 : 0));  // 3-bit keys: [GP][NB] max |query| of a block
    float * sP     = sQmax + (KDP ? GP*NB : 0);  // [T][GP] probabilities of the tile
    float * sRed   = sP + T*GP;         // [4][GP] per-warp partial max / sum
    float * sAlpha = sRed + 4*GP;       // [GP] rescale factor of this tile
    float * sSlope = sAlpha + GP;       // [GP] ALiBi slopes
    float * sL4    = sSlope + GP;       // [16] 4-bit levels (4-bit K and V; 3-bit ones are in registers)
    char  * sTiles = (char *) (sL4 + 16); // [RQ_FA_STAGES][T rows of K, then T rows of V if staged]
    static_assert(4*decode_smem_floats(D, KBITS, GP) % 16 == 0, "tiles must start 16-byte aligned");

    const int tid = threadIdx.x, lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int split = blockIdx.x;
    const int hk = blockIdx.y % p.n_head_kv, seq = blockIdx.y / p.n_head_kv;
    const int hq0 = hk*p.gqa;

    const char * Kh = p.K + seq*p.nb13 + hk*p.nb12;
    const char * Vh = p.V + seq*p.nb23 + hk*p.nb22;
    const int t_begin = split*p.split_len;
    const int t_end   = min(p.n_kv, t_begin + p.split_len);
    const int n_tiles = (t_end - t_begin + T - 1) / T;

    // tile i into buffer i % 2: the copies of one tile are one commit group
    const auto issue_tile = [&](const int i) {
        const int t0 = t_begin + i*T;
        const int n_rows = min(T, t_end - t0);
        char * buf = sTiles + (i % RQ_FA_STAGES)*decode_stage_bytes(D, KBITS, VK);
        stage_rows<KRB>(buf, Kh + (int64_t) t0*p.nb11, p.nb11, n_rows, p.k_async);
        if constexpr (VST) {
            stage_rows<VRB>(buf + T*KP, Vh + (int64_t) t0*p.nb21, p.nb21, n_rows, p.v_async);
        }
        copy_commit();
    };
    if (n_tiles > 0) {
        issue_tile(0);  // in flight while the queries are prepared
    }

    if (tid < 16) {
        sL4[tid] = rq_levels4[tid];
    }
    uint32_t lk3[2], lv3[2];  // 3-bit levels as bytes: signed for dp4a, biased by 128 for V
    rq3_level_bytes(lk3);
    lv3[0] = lk3[0] ^ 0x80808080u;
    lv3[1] = lk3[1] ^ 0x80808080u;
    if (tid < GP) {
        sSlope[tid] = tid < p.gqa ? get_alibi_slope(p.max_bias, hq0 + tid, p.n_head_log2, p.m0, p.m1) : 1.0f;
    }
    // Queries: rotate each quartet, scale, store (4-bit keys: in code order).  Heads past
    // gqa are zero.
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
            sQ[h*D + b*RQ_QK + (KDP ? (4*m) % RQ_QK + e : rq4_code_pos((4*m) % RQ_QK + e))] = p.scale*y[e];
        }
    }
    if constexpr (KDP) {
        // 16-bit integer queries, max |q| of each (head, block) -> 32767, cut into bytes in
        // the order of rq3_selectors: a 3-bit key scores two dp4a per 4 codes and head
        // (high bytes, signed; low bytes, unsigned) with no table lookup and no float work
        __syncthreads();
        for (int u = tid; u < GP*NB; u += T) {
            float mx = 0.0f;
            for (int j = 0; j < RQ_QK; ++j) {
                mx = fmaxf(mx, fabsf(sQ[u*RQ_QK + j]));
            }
            sQmax[u] = mx;
        }
        __syncthreads();
        for (int u = tid; u < GP*NB*16; u += T) {
            const int hb = u / 16, i = (u / 2) % 8, ab = u % 2;
            const float inv = sQmax[hb] > 0.0f ? 32767.0f/sQmax[hb] : 0.0f;
            uint32_t hi = 0, lo = 0;
#pragma unroll
            for (int n = 0; n < 4; ++n) {
                const int v = max(-32767, min(32767, __float2int_rn(sQ[hb*RQ_QK + rq_slot_elem<3>(i, 4*ab + n)]*inv)));
                hi |= ((uint32_t) (v >> 8) & 0xFFu) << (8*n);
                lo |= ((uint32_t) v & 0xFFu) << (8*n);
            }
            sQi[(hb*8 + i)*4 + ab]     = hi;
            sQi[(hb*8 + i)*4 + 2 + ab] = lo;
        }
    }

    const half * mask = p.mask ? (const half *) ((const char *) p.mask + (seq % p.mask_ne3)*p.mask_nb3) : nullptr;

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

    for (int i = 0; i < n_tiles; ++i) {
        const int t0 = t_begin + i*T;
        const int rows = min(T, t_end - t0);
        // the next tile goes into the other buffer, freed by the barrier ending tile i - 1
        if (i + 1 < n_tiles) {
            issue_tile(i + 1);
            copy_wait<1>();
        } else {
            copy_wait<0>();
        }
        __syncthreads();  // tile i (and, at i = 0, the queries) visible to every thread
        const char * sK = sTiles + (i % RQ_FA_STAGES)*decode_stage_bytes(D, KBITS, VK);
        const char * sV = sK + T*KP;

        // ---- scores of row t for every head
        const int t = t0 + tid;
        float s[GP];
        if (tid < rows) {
#pragma unroll
            for (int h = 0; h < GP; ++h) {
                s[h] = 0.0f;
            }
            const char * krow = sK + tid*KP;
#pragma unroll
            for (int b = 0; b < NB; ++b) {
                // the block's 32-bit words, once (the row is 4-byte aligned in shared memory)
                constexpr int NW = (KBS + 3)/4 + 1;
                const int w0 = (b*KBS)/4;
                uint32_t rw[NW];
#pragma unroll
                for (int k = 0; k < NW; ++k) {
                    rw[k] = w0 + k < KP/4 ? ((const uint32_t *) krow)[w0 + k] : 0u;
                }
                const int o = b*KBS;
                if constexpr (KDP) {
                    int hi[GP], lo[GP];
#pragma unroll
                    for (int h = 0; h < GP; ++h) {
                        hi[h] = lo[h] = 0;
                    }
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        uint32_t sel_a, sel_b;
                        rq3_selectors(u16_raw_at(rw, w0, o + 2 + 2*j), u16_raw_at(rw, w0, o + 2 + RQ_QK/4 + 2*(j & 3)) >> (j >> 2), sel_a, sel_b);
                        const int va = (int) __byte_perm(lk3[0], lk3[1], sel_a), vb = (int) __byte_perm(lk3[0], lk3[1], sel_b);
#pragma unroll
                        for (int h = 0; h < GP; ++h) {
                            const uint4 qw = *(const uint4 *) &sQi[((h*NB + b)*8 + j)*4];
                            hi[h] = __dp4a(va, (int) qw.x, hi[h]);
                            hi[h] = __dp4a(vb, (int) qw.y, hi[h]);
                            lo[h] = dp4a_su(va, qw.z, lo[h]);
                            lo[h] = dp4a_su(vb, qw.w, lo[h]);
                        }
                    }
                    // q ~ qmax/32767 * q16 and level ~ l8/RQ3_I8_SCALE
                    const float norm = half_bits_to_float(u16_at(rw, w0, o)) * (1.0f/(32767.0f*RQ3_I8_SCALE));
#pragma unroll
                    for (int h = 0; h < GP; ++h) {
                        s[h] += norm*sQmax[h*NB + b]*(float) (hi[h]*256 + lo[h]);
                    }
                } else {
                    float sb[GP];
#pragma unroll
                    for (int h = 0; h < GP; ++h) {
                        sb[h] = 0.0f;
                    }
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        float w[8];
                        rq4_slot_levels(u16_at(rw, w0, o + 2 + 4*j) | (u16_at(rw, w0, o + 4 + 4*j) << 16), sL4, w);
#pragma unroll
                        for (int h = 0; h < GP; ++h) {
                            const float4 qa = *(const float4 *) &sQ[h*D + b*RQ_QK + 8*j];
                            const float4 qb = *(const float4 *) &sQ[h*D + b*RQ_QK + 8*j + 4];
                            sb[h] += w[0]*qa.x + w[1]*qa.y + w[2]*qa.z + w[3]*qa.w
                                   + w[4]*qb.x + w[5]*qb.y + w[6]*qb.z + w[7]*qb.w;
                        }
                    }
                    const float norm = half_bits_to_float(u16_at(rw, w0, o));
#pragma unroll
                    for (int h = 0; h < GP; ++h) {
                        s[h] += norm*sb[h];
                    }
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
        const auto v_row_ptr = [&](const int r) -> const char * {
            if constexpr (VST) {
                return sV + r*VP;
            } else {
                return Vh + (int64_t) (t0 + r)*p.nb21;
            }
        };
        const auto accumulate = [&](const rq_v_raw & raw, const int r) {
            float w[8];
            const float vs = rq_v_values<VK>(raw, v_slot, sL4, lv3, w);
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
            constexpr int CH = VST ? (NR < 4 ? NR : 4) : (NR < 8 ? NR : 8);
#pragma unroll
            for (int c0 = 0; c0 < NR; c0 += CH) {
                rq_v_raw raw[CH];
#pragma unroll
                for (int u = 0; u < CH; ++u) {
                    raw[u] = rq_v_load<VK>(v_row_ptr(v_row + (c0 + u)*RG), v_slot);
                }
#pragma unroll
                for (int u = 0; u < CH; ++u) {
                    accumulate(raw[u], v_row + (c0 + u)*RG);
                }
            }
        } else {
            for (int r = v_row; r < rows; r += RG) {
                accumulate(rq_v_load<VK>(v_row_ptr(r), v_slot), r);
            }
        }
        __syncthreads();  // buffer i % 2 and sP are free again
    }

    // ---- block totals: sum of exp per head, accumulators over the row groups
#pragma unroll
    for (int h = 0; h < GP; ++h) {
        const float l = warp_reduce_sum(L[h]);
        if (lane == 0) {
            sRed[warp*GP + h] = l;
        }
    }
    __syncthreads();  // with no tile at all, the query writes must end before sQ is cleared
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
                j = (v_slot / 8)*RQ_QK + rq_slot_elem<VBITS>(v_slot % 8, e);
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
    if (p.n_splits == 1) {
        // the whole range is here: add the sink, divide, un-rotate, write the output
        for (int u = tid; u < p.gqa*(D/4); u += T) {
            const int h = u / (D/4), m = u % (D/4);
            float mx = sSlope[h], den = sAlpha[h], f = 1.0f;
            if (p.sinks) {
                const float sink = p.sinks[hq0 + h];
                const float m2 = fmaxf(mx, sink);
                f = expf(mx - m2);
                den = den*f + expf(sink - m2);
            }
            const float4 a = *(const float4 *) &sQ[h*D + 4*m];
            const float num[4] = {f*a.x, f*a.y, f*a.z, f*a.w};
            finish_quartet(num, den, p.v_rot, m, p.dst + (row0 + h)*D);
        }
        return;
    }
    for (int u = tid; u < p.gqa*D; u += T) {
        const int h = u / D, j = u % D;
        p.part[((row0 + h)*p.n_splits + split)*D + j] = sQ[h*D + j];
    }
    if (tid < p.gqa) {
        p.meta[(row0 + tid)*p.n_splits + split] = make_float2(sSlope[tid], sAlpha[tid]);
    }
}

template <int D, int KBITS, int VK, int GP>
void launch_one(const rq_fattn_params & p, const dim3 grid, cudaStream_t stream) {
    constexpr int smem = decode_smem_bytes(D, KBITS, VK, GP);
    static bool raised[GGML_CUDA_MAX_DEVICES] = {false};
    const int dev = ggml_cuda_get_device();
    if (smem > 48*1024 && !raised[dev]) {
        CUDA_CHECK(cudaFuncSetAttribute(rq_fattn_decode<D, KBITS, VK, GP>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        raised[dev] = true;
    }
    rq_fattn_decode<D, KBITS, VK, GP><<<grid, RQ_FA_THREADS, smem, stream>>>(p);
}

template <int D, int KBITS, int VK, int GP>
int blocks_per_sm_one() {
    constexpr int smem = decode_smem_bytes(D, KBITS, VK, GP);
    static int cached[GGML_CUDA_MAX_DEVICES] = {0};
    const int dev = ggml_cuda_get_device();
    if (cached[dev] == 0) {
        if (smem > 48*1024) {
            CUDA_CHECK(cudaFuncSetAttribute(rq_fattn_decode<D, KBITS, VK, GP>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        }
        int n = 0;
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, rq_fattn_decode<D, KBITS, VK, GP>, RQ_FA_THREADS, smem));
        cached[dev] = std::max(1, n);
    }
    return cached[dev];
}

// f(vk, gp) dispatched to the template instance <VK, GP>
#define RQ_FA_DISPATCH(FN, ...)                                                              \
    switch (vk*100 + gp) {                                                                   \
        case RQ_V_RQ3*100 + 4:  return FN<D, KBITS, RQ_V_RQ3, 4 >(__VA_ARGS__);             \
        case RQ_V_RQ3*100 + 8:  return FN<D, KBITS, RQ_V_RQ3, 8 >(__VA_ARGS__);             \
        case RQ_V_RQ3*100 + 16: return FN<D, KBITS, RQ_V_RQ3, 16>(__VA_ARGS__);             \
        case RQ_V_RQ4*100 + 4:  return FN<D, KBITS, RQ_V_RQ4, 4 >(__VA_ARGS__);             \
        case RQ_V_RQ4*100 + 8:  return FN<D, KBITS, RQ_V_RQ4, 8 >(__VA_ARGS__);             \
        case RQ_V_RQ4*100 + 16: return FN<D, KBITS, RQ_V_RQ4, 16>(__VA_ARGS__);             \
        case RQ_V_F16*100 + 4:  return FN<D, KBITS, RQ_V_F16, 4 >(__VA_ARGS__);             \
        case RQ_V_F16*100 + 8:  return FN<D, KBITS, RQ_V_F16, 8 >(__VA_ARGS__);             \
        case RQ_V_F16*100 + 16: return FN<D, KBITS, RQ_V_F16, 16>(__VA_ARGS__);             \
        case RQ_V_Q8_0*100 + 4:  return FN<D, KBITS, RQ_V_Q8_0, 4 >(__VA_ARGS__);           \
        case RQ_V_Q8_0*100 + 8:  return FN<D, KBITS, RQ_V_Q8_0, 8 >(__VA_ARGS__);           \
        case RQ_V_Q8_0*100 + 16: return FN<D, KBITS, RQ_V_Q8_0, 16>(__VA_ARGS__);           \
        default: GGML_ABORT("rotorquant: no decode kernel for V kind %d, query group %d", vk, gp); \
    }

template <int D, int KBITS>
void launch_decode(const rq_fattn_params & p, const int vk, const int gp, const dim3 grid, cudaStream_t stream) {
    RQ_FA_DISPATCH(launch_one, p, grid, stream)
}

template <int D, int KBITS>
int decode_blocks_per_sm(const int vk, const int gp) {
    RQ_FA_DISPATCH(blocks_per_sm_one, )
}

#undef RQ_FA_DISPATCH

#define RQ_FA_INSTANCE(D, KBITS)                                                                  \
    template void launch_decode<D, KBITS>(const rq_fattn_params &, int, int, dim3, cudaStream_t); \
    template int decode_blocks_per_sm<D, KBITS>(int, int);

} // namespace rq_fa
