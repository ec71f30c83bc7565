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
// On sm_80 and newer both phases of 3-bit types run on tensor cores (mma.sync): the key
// scores as int8 x int8 products of the same bytes (the same integer sums), V as f16
// level images times f16 probabilities; elsewhere they are the scalar code described next.
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
// row_pitch(RB) apart.  async4: 32-bit asynchronous copies, a lane per word of a row (the
// lanes of a warp take whole rows, so its copies touch few sectors, and each lane's next
// row is two pointer increments away: with tensor-core phases, index arithmetic per copied
// word was a third of the kernel's instructions); else 16-bit plain ones (rows of 26 or 34
// bytes are only 2-byte aligned).
template <int RB>
__device__ __forceinline__ void stage_rows(char * dst, const char * src, const int64_t nb, const int n_rows, const bool async4) {
    constexpr int P = row_pitch(RB);
    constexpr int T = RQ_FA_THREADS;
    if constexpr (RB % 4 == 0) {
        if (async4) {
            constexpr int W    = RB/4;                               // words of a row
            constexpr int LW   = W <= 8 ? 8 : W <= 16 ? 16 : 32;    // lanes of a row
            constexpr int WPL  = (W + LW - 1)/LW;                   // words per lane (rows > 128 bytes: 2)
            constexpr int RPI  = WARP_SIZE/LW;                      // rows per warp instruction
            constexpr int STEP = (T/WARP_SIZE)*RPI;                 // rows per block instruction
            const int lane = threadIdx.x % WARP_SIZE, w = lane % LW;
            int r = (threadIdx.x / WARP_SIZE)*RPI + lane / LW;
            char * d = dst + r*P + 4*w;
            const char * g = src + r*nb + 4*w;
#pragma unroll 4
            for (; r < n_rows; r += STEP) {
#pragma unroll
                for (int k = 0; k < WPL; ++k) {
                    if (w + k*LW < W) {
                        copy_async4(d + 4*k*LW, g + 4*k*LW);
                    }
                }
                d += STEP*P;
                g += STEP*nb;
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


// ---- 3-bit V on tensor cores -------------------------------------------------------------
//
// The V phase of a tile is O^T (dims x heads) += V~^T (dims x rows) . P'^T (rows x heads),
// one mma.m16n8k16 (f16 in, f32 accumulators) per 16 dims x 16 rows x 8 heads; a scalar
// thread instead does one multiply-add per value and head, which made V two thirds of the
// kernel's instructions.  A warp takes one 64-value block of every row of its share of the
// tile; lane (g, c) loads slot word g of rows 2c, 2c+1, 2c+8, 2c+9 of each 16-row step,
// which are both the rows its A fragments (two rows of each pair of dims) and its B
// fragments (P' of head g) need.  Dims of m-tile f: 16 f + 2 g (fragment row g) and
// 16 f + 2 g + 1 (row g + 8), the two codes of byte pair c2 = 0, 1 of slot g.
//   A: the 8-bit level images (RQ3_I8_SCALE) are integers, so f16 holds them exactly: a
//      byte permute puts the biased byte (level + 128) under the exponent byte 0x64, which
//      reads as 1024 + byte, and one f16x2 subtraction of 1152 leaves the level.
//   B: P' = p * s, the probability times the row's block scale, rounded to f16 (|P'| <= the
//      largest scale, an f16 itself; a probability is relative to the running maximum).
// Accumulator element k of m-tile f, n-tile n: dim 16 f + 2 g + (k >> 1), head 8 n + 2 c + (k & 1).

// d += a . b (m16n8k16, row-major A, column-major B, f16 inputs, f32 accumulators)
__device__ __forceinline__ void mma_f16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef AMPERE_MMA_AVAILABLE
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    GGML_UNUSED(d); GGML_UNUSED(a); GGML_UNUSED(b);
    NO_DEVICE_CODE;
#endif
}

// d += a . b (m16n8k32, row-major A of signed bytes, column-major B of signed or, with
// b_unsigned, unsigned bytes, s32 accumulators)
template <bool b_unsigned>
__device__ __forceinline__ void mma_s8_16832(int d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef AMPERE_MMA_AVAILABLE
    if constexpr (b_unsigned) {
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    GGML_UNUSED(d); GGML_UNUSED(a); GGML_UNUSED(b);
    NO_DEVICE_CODE;
#endif
}

// Two levels as an f16 pair from two biased level bytes of x (sel 0x4140: bytes 0, 1;
// 0x4342: bytes 2, 3).
__device__ __forceinline__ uint32_t rq3_level_pair_f16(const uint32_t x, const uint32_t sel) {
    const uint32_t biased = __byte_perm(x, 0x64646464u, sel);   // 1152 + level, exact
    const half2 l = __hsub2(*(const half2 *) &biased, __halves2half2(__ushort_as_half(0x6480), __ushort_as_half(0x6480)));
    return *(const uint32_t *) &l;
}

__device__ __forceinline__ uint32_t f16x2_bits(const float lo, const float hi) {
    const half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
}

// Warps sharing one 64-value V block, and the tile rows each one takes.
__host__ __device__ constexpr int v_tc_warps_per_block(const int D) { return RQ_FA_THREADS/WARP_SIZE / (D/RQ_QK); }
__host__ __device__ constexpr int v_tc_rows_per_warp(const int D) { return RQ_FA_THREADS / v_tc_warps_per_block(D); }

// Blocks per multiprocessor the register budget is set for (no more than shared memory
// allows: 227 KiB on sm_80/sm_90): the kernel is latency bound, and with both phases on
// tensor cores it needs far fewer registers (head size 128, 4 query heads: 78 at 6 blocks,
// no spills; 8: 94 at 5).
__host__ __device__ constexpr int decode_min_blocks(const int D, const int kbits, const int vk, const int gp, const int tc) {
    const int want = tc == (TC_K | TC_V) ? (gp <= 4 ? 6 : gp <= 8 ? 5 : 3) : (gp <= 4 ? 4 : gp <= 8 ? 3 : 2);
    const int fit  = 227*1024 / decode_smem_bytes(D, kbits, vk, gp);
    return want < fit ? want : fit < 1 ? 1 : fit;
}

// TC: which phases run on tensor cores (TC_K: 3-bit key scores; TC_V: 3-bit V); the
// others are scalar (a thread scores its row; a thread accumulates 8-value slots in f32).
template <int D, int KBITS, int VK, int GP, int TC>
__launch_bounds__(RQ_FA_THREADS, decode_min_blocks(D, KBITS, VK, GP, TC))
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
    constexpr bool KTC  = (TC & TC_K) != 0;
    constexpr bool VTC  = (TC & TC_V) != 0;
    static_assert(!KTC || KDP, "tensor-core scores are for 3-bit keys");
    static_assert(!VTC || VK == RQ_V_RQ3, "tensor-core V is for 3-bit rotor V");
    constexpr int NT    = (GP + 7) / 8;        // tensor-core V: n-tiles of 8 heads
    constexpr int TC_STEPS = v_tc_rows_per_warp(D) / 16;
    static_assert(!VTC || (RQ_FA_THREADS/WARP_SIZE) % NB == 0, "tensor-core V: whole blocks per warp");

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
        for (int u = warp; u < GP*NB; u += T/WARP_SIZE) {  // a warp per (head, block)
            const float mx = warp_reduce_max(fmaxf(fabsf(sQ[u*RQ_QK + lane]), fabsf(sQ[u*RQ_QK + lane + WARP_SIZE])));
            if (lane == 0) {
                sQmax[u] = mx;
            }
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
    float acc[HG][8];  // scalar V (the variables of the path not taken are optimised away)
#pragma unroll
    for (int h = 0; h < HG; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            acc[h][e] = 0.0f;
        }
    }
    // tensor-core V: this warp's block and first row, this lane's fragment coordinates
    const int tc_b = warp % NB, tc_r0 = (warp / NB)*v_tc_rows_per_warp(D);
    const int tc_g = lane / 4, tc_c = lane % 4;
    float tacc[4][NT][4];  // tensor-core V
#pragma unroll
    for (int f = 0; f < 4; ++f) {
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                tacc[f][n][k] = 0.0f;
            }
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
        if constexpr (KTC) {
            // ---- scores on tensor cores: S (rows x heads) = K~ (rows x dims) . Q~^T, int8 x int8
            // -> int32 per 64-value block, the integer sums of the scalar path exactly.  Warp w
            // takes rows 32 w .. 32 w + 31 in two m-tiles; lane (g, c) loads slot 4 hh + c of
            // rows g and g + 8 (k-chunk hh of a block: slots 0-3, 4-7), whose level bytes are
            // its A fragments as they come from the byte permute, and whose query bytes
            // (sQi, already in that order) are its B fragments.  Accumulator element k:
            // row g + 8 (k >> 1), head 8 n + 2 c + (k & 1).  The scores go through sP to the
            // thread of each row.
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int r0 = 32*warp + 16*mt;
                if (r0 >= rows) {
                    break;  // warp-uniform
                }
                float sc[NT][4];
#pragma unroll
                for (int n = 0; n < NT; ++n) {
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        sc[n][k] = 0.0f;
                    }
                }
#pragma unroll
                for (int b = 0; b < NB; ++b) {
                    int hi[NT][4], lo[NT][4];
#pragma unroll
                    for (int n = 0; n < NT; ++n) {
#pragma unroll
                        for (int k = 0; k < 4; ++k) {
                            hi[n][k] = lo[n][k] = 0;
                        }
                    }
#pragma unroll
                    for (int hh = 0; hh < 2; ++hh) {
                        const int j = 4*hh + tc_c;
                        uint32_t a[4];
#pragma unroll
                        for (int q = 0; q < 2; ++q) {
                            const char * blk = sK + (r0 + tc_g + 8*q)*KP + b*KBS;
                            uint32_t sel_a, sel_b;
                            rq3_selectors(ld_u16(blk + 2 + 2*j), ld_u16(blk + 2 + RQ_QK/4 + 2*(j & 3)) >> (j >> 2), sel_a, sel_b);
                            a[q]     = __byte_perm(lk3[0], lk3[1], sel_a);
                            a[2 + q] = __byte_perm(lk3[0], lk3[1], sel_b);
                        }
#pragma unroll
                        for (int n = 0; n < NT; ++n) {
                            const int h = 8*n + tc_g;
                            const uint4 qw = h < GP ? *(const uint4 *) &sQi[((h*NB + b)*8 + j)*4] : make_uint4(0, 0, 0, 0);
                            const uint32_t bh[2] = {qw.x, qw.y}, bl[2] = {qw.z, qw.w};
                            mma_s8_16832<false>(hi[n], a, bh);
                            mma_s8_16832<true>(lo[n], a, bl);
                        }
                    }
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const char * blk = sK + (r0 + tc_g + 8*(k >> 1))*KP + b*KBS;
                        const float norm = half_bits_to_float(ld_u16(blk)) * (1.0f/(32767.0f*RQ3_I8_SCALE));
#pragma unroll
                        for (int n = 0; n < NT; ++n) {
                            const int h = 8*n + 2*tc_c + (k & 1);
                            if (h < GP) {
                                sc[n][k] += norm*sQmax[h*NB + b]*(float) (hi[n][k]*256 + lo[n][k]);
                            }
                        }
                    }
                }
#pragma unroll
                for (int n = 0; n < NT; ++n) {
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const int h = 8*n + 2*tc_c + (k & 1);
                        if (h < GP) {
                            sP[(r0 + tc_g + 8*(k >> 1))*GP + h] = sc[n][k];
                        }
                    }
                }
            }
            __syncthreads();
        }
        if (tid < rows) {
            if constexpr (KTC) {
#pragma unroll
                for (int h = 0; h < GP; ++h) {
                    s[h] = sP[tid*GP + h];
                }
            } else {
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

        if constexpr (VTC) {
            // ---- V on tensor cores: rescale, then the warp's 16-row steps
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int h = 8*n + 2*tc_c + e;
                    const float a = h < GP ? sAlpha[h] : 0.0f;
#pragma unroll
                    for (int f = 0; f < 4; ++f) {
                        tacc[f][n][e] *= a;
                        tacc[f][n][2 + e] *= a;
                    }
                }
            }
            const char * vblk = sV + tc_b*rq_block_bytes<3>();
#pragma unroll
            for (int ks = 0; ks < TC_STEPS; ++ks) {
                const int r0 = tc_r0 + 16*ks;
                if (r0 >= rows) {
                    break;  // warp-uniform
                }
                // rows 2c, 2c+1, 2c+8, 2c+9 of the step: levels (biased bytes) and scales
                uint32_t va[4], vb[4];
                float sc[4];
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int r = r0 + 2*tc_c + (q & 1) + 8*(q >> 1);
                    const char * blk = vblk + r*VP;
                    uint32_t sel_a, sel_b;
                    rq3_selectors(ld_u16(blk + 2 + 2*tc_g), ld_u16(blk + 2 + RQ_QK/4 + 2*(tc_g & 3)) >> (tc_g >> 2), sel_a, sel_b);
                    va[q] = __byte_perm(lv3[0], lv3[1], sel_a);
                    vb[q] = __byte_perm(lv3[0], lv3[1], sel_b);
                    sc[q] = r < rows ? half_bits_to_float(ld_u16(blk)) : 0.0f;  // rows past the end: stale bytes
                }
                uint32_t bf[NT][2];
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    const int h = 8*n + tc_g;
                    float pv[4];
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        const int r = r0 + 2*tc_c + (q & 1) + 8*(q >> 1);
                        pv[q] = h < GP ? sP[r*GP + h]*sc[q] : 0.0f;
                    }
                    bf[n][0] = f16x2_bits(pv[0], pv[1]);
                    bf[n][1] = f16x2_bits(pv[2], pv[3]);
                }
                // the two rows of each pair side by side, per byte pair c2: x[va/vb][pair][c2]
                uint32_t x[2][2][2];
#pragma unroll
                for (int pr = 0; pr < 2; ++pr) {
                    x[0][pr][0] = __byte_perm(va[2*pr], va[2*pr + 1], 0x5140);
                    x[0][pr][1] = __byte_perm(va[2*pr], va[2*pr + 1], 0x7362);
                    x[1][pr][0] = __byte_perm(vb[2*pr], vb[2*pr + 1], 0x5140);
                    x[1][pr][1] = __byte_perm(vb[2*pr], vb[2*pr + 1], 0x7362);
                }
#pragma unroll
                for (int f = 0; f < 4; ++f) {
                    // f = 0, 2: bytes 0, 1 of the va pairs; f = 1, 3: of the vb pairs
                    const int src = f & 1;
                    const uint32_t sel = f < 2 ? 0x4140u : 0x4342u;
                    const uint32_t a[4] = {
                        rq3_level_pair_f16(x[src][0][0], sel), rq3_level_pair_f16(x[src][0][1], sel),
                        rq3_level_pair_f16(x[src][1][0], sel), rq3_level_pair_f16(x[src][1][1], sel),
                    };
#pragma unroll
                    for (int n = 0; n < NT; ++n) {
                        mma_f16_16816(tacc[f][n], a, bf[n]);
                    }
                }
            }
        } else {
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
    if constexpr (VTC) {
#pragma unroll
        for (int f = 0; f < 4; ++f) {
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const int h = 8*n + 2*tc_c + (k & 1);
                    if (h < GP) {
                        atomicAdd(&sQ[h*D + tc_b*RQ_QK + 16*f + 2*tc_g + (k >> 1)], tacc[f][n][k]*(1.0f/RQ3_I8_SCALE));
                    }
                }
            }
        }
    } else {
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
    if (p.n_splits > 1) {
        for (int u = tid; u < p.gqa*D; u += T) {
            const int h = u / D, j = u % D;
            p.part[((row0 + h)*p.n_splits + split)*D + j] = sQ[h*D + j];
        }
        if (tid < p.gqa) {
            p.meta[(row0 + tid)*p.n_splits + split] = make_float2(sSlope[tid], sAlpha[tid]);
        }
        if (!p.tickets) {
            return;  // the combine kernel merges the slices
        }
        // The slice that finishes last merges them all (its ticket is the last one); its
        // reset leaves the ticket at 0 for the next launch on this stream.
        __shared__ bool s_last;
        __threadfence();
        __syncthreads();
        if (tid == 0) {
            s_last = atomicAdd(&p.tickets[blockIdx.y], 1u) == (unsigned) p.n_splits - 1;
        }
        __syncthreads();
        if (!s_last) {
            return;
        }
        __threadfence();
        if (tid == 0) {
            p.tickets[blockIdx.y] = 0u;
        }
    }
    // add the sink, divide, un-rotate; write the output (or stage it for the Hadamard)
    const float had_scale = p.out_had ? rsqrtf((float) p.out_had) : 1.0f;
    for (int u = tid; u < p.gqa*(D/4); u += T) {
        const int h = u / (D/4), m = u % (D/4);
        float num[4], den, y[4];
        if (p.n_splits == 1) {  // the whole range is here
            float mx = sSlope[h], f = 1.0f;
            den = sAlpha[h];
            if (p.sinks) {
                const float sink = p.sinks[hq0 + h];
                const float m2 = fmaxf(mx, sink);
                f = expf(mx - m2);
                den = den*f + expf(sink - m2);
            }
            const float4 a = *(const float4 *) &sQ[h*D + 4*m];
            num[0] = f*a.x; num[1] = f*a.y; num[2] = f*a.z; num[3] = f*a.w;
        } else {  // every slice's partial, read past L1 (other blocks wrote them)
            const float2 * mt = p.meta + (row0 + h)*p.n_splits;
            const float * pt = p.part + (row0 + h)*p.n_splits*D + 4*m;
            float mx = p.sinks ? p.sinks[hq0 + h] : -FLT_MAX/2.0f;
            for (int k = 0; k < p.n_splits; ++k) {
                mx = fmaxf(mx, __ldcg(mt + k).x);
            }
            den = p.sinks ? expf(p.sinks[hq0 + h] - mx) : 0.0f;
            num[0] = num[1] = num[2] = num[3] = 0.0f;
            for (int k = 0; k < p.n_splits; ++k) {
                const float2 ms = __ldcg(mt + k);
                const float4 v = __ldcg((const float4 *) (pt + (int64_t) k*D));
                const float w = expf(ms.x - mx);
                den += w*ms.y;
                num[0] += w*v.x; num[1] += w*v.y; num[2] += w*v.z; num[3] += w*v.w;
            }
        }
        finish_quartet(num, den, p.v_rot, m, had_scale, y);
        // in place: this thread read quartet (h, m) of sQ, if at all
        *(float4 *) (p.out_had ? &sQ[h*D + 4*m] : p.dst + (row0 + h)*D + 4*m) = make_float4(y[0], y[1], y[2], y[3]);
    }
    if (p.out_had) {
        fwht_shared(sQ, p.gqa*D, p.out_had, tid, T);
        for (int u = tid; u < p.gqa*(D/4); u += T) {
            *(float4 *) (p.dst + row0*D + 4*u) = *(const float4 *) &sQ[4*u];
        }
    }
}

struct launch_one {
    template <int D, int KBITS, int VK, int GP, int TC>
    static void run(const rq_fattn_params & p, const dim3 grid, cudaStream_t stream) {
        constexpr int smem = decode_smem_bytes(D, KBITS, VK, GP);
        static bool raised[GGML_CUDA_MAX_DEVICES] = {false};
        const int dev = ggml_cuda_get_device();
        if (smem > 48*1024 && !raised[dev]) {
            CUDA_CHECK(cudaFuncSetAttribute(rq_fattn_decode<D, KBITS, VK, GP, TC>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            raised[dev] = true;
        }
        rq_fattn_decode<D, KBITS, VK, GP, TC><<<grid, RQ_FA_THREADS, smem, stream>>>(p);
    }
};

struct blocks_per_sm_one {
    template <int D, int KBITS, int VK, int GP, int TC>
    static int run() {
        constexpr int smem = decode_smem_bytes(D, KBITS, VK, GP);
        static int cached[GGML_CUDA_MAX_DEVICES] = {0};
        const int dev = ggml_cuda_get_device();
        if (cached[dev] == 0) {
            if (smem > 48*1024) {
                CUDA_CHECK(cudaFuncSetAttribute(rq_fattn_decode<D, KBITS, VK, GP, TC>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            }
            int n = 0;
            CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, rq_fattn_decode<D, KBITS, VK, GP, TC>, RQ_FA_THREADS, smem));
            cached[dev] = std::max(1, n);
        }
        return cached[dev];
    }
};

// F::run<D, KBITS, VK, GP, TC>(args...) for the tensor-core phases tc asks for, of those
// this K width and V kind have (so only meaningful instances are compiled).
template <typename F, int D, int KBITS, int VK, int GP, typename... A>
auto with_tc(const int tc, A... args) {
    constexpr int KB = k_dp4a(KBITS) ? TC_K : 0;
    constexpr int VB = VK == RQ_V_RQ3 ? TC_V : 0;
    if constexpr (KB != 0 && VB != 0) {
        if ((tc & TC_K) && (tc & TC_V)) {
            return F::template run<D, KBITS, VK, GP, TC_K | TC_V>(args...);
        }
    }
    if constexpr (KB != 0) {
        if (tc & TC_K) {
            return F::template run<D, KBITS, VK, GP, TC_K>(args...);
        }
    }
    if constexpr (VB != 0) {
        if (tc & TC_V) {
            return F::template run<D, KBITS, VK, GP, TC_V>(args...);
        }
    }
    return F::template run<D, KBITS, VK, GP, 0>(args...);
}

// F dispatched to the instance of V kind vk and query group gp
template <typename F, int D, int KBITS, typename... A>
auto dispatch(const int vk, const int gp, const int tc, A... args) {
    switch (vk*100 + gp) {
        case RQ_V_RQ3*100 + 4:   return with_tc<F, D, KBITS, RQ_V_RQ3, 4>(tc, args...);
        case RQ_V_RQ3*100 + 8:   return with_tc<F, D, KBITS, RQ_V_RQ3, 8>(tc, args...);
        case RQ_V_RQ3*100 + 16:  return with_tc<F, D, KBITS, RQ_V_RQ3, 16>(tc, args...);
        case RQ_V_RQ4*100 + 4:   return with_tc<F, D, KBITS, RQ_V_RQ4, 4>(tc, args...);
        case RQ_V_RQ4*100 + 8:   return with_tc<F, D, KBITS, RQ_V_RQ4, 8>(tc, args...);
        case RQ_V_RQ4*100 + 16:  return with_tc<F, D, KBITS, RQ_V_RQ4, 16>(tc, args...);
        case RQ_V_F16*100 + 4:   return with_tc<F, D, KBITS, RQ_V_F16, 4>(tc, args...);
        case RQ_V_F16*100 + 8:   return with_tc<F, D, KBITS, RQ_V_F16, 8>(tc, args...);
        case RQ_V_F16*100 + 16:  return with_tc<F, D, KBITS, RQ_V_F16, 16>(tc, args...);
        case RQ_V_Q8_0*100 + 4:  return with_tc<F, D, KBITS, RQ_V_Q8_0, 4>(tc, args...);
        case RQ_V_Q8_0*100 + 8:  return with_tc<F, D, KBITS, RQ_V_Q8_0, 8>(tc, args...);
        case RQ_V_Q8_0*100 + 16: return with_tc<F, D, KBITS, RQ_V_Q8_0, 16>(tc, args...);
        default: GGML_ABORT("rotorquant: no decode kernel for V kind %d, query group %d", vk, gp);
    }
}

template <int D, int KBITS>
void launch_decode(const rq_fattn_params & p, const int vk, const int gp, const int tc, const dim3 grid, cudaStream_t stream) {
    dispatch<launch_one, D, KBITS>(vk, gp, tc, p, grid, stream);
}

template <int D, int KBITS>
int decode_blocks_per_sm(const int vk, const int gp, const int tc) {
    return dispatch<blocks_per_sm_one, D, KBITS>(vk, gp, tc);
}

#define RQ_FA_INSTANCE(D, KBITS)                                                                       \
    template void launch_decode<D, KBITS>(const rq_fattn_params &, int, int, int, dim3, cudaStream_t); \
    template int decode_blocks_per_sm<D, KBITS>(int, int, int);

} // namespace rq_fa
