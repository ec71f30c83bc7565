// CUDA codecs of the RotorQuant cache types: SET_ROWS, CPY to/from F32, to_fp16/to_fp32
// (see rq-cuda.h).  Flash attention is in rq-cuda-fattn.cu.
#include "rq-cuda-codec.cuh"
#include "rq-cuda.h"

// ---- quantising: SET_ROWS and CPY F32 -> rotor (one warp per 64-value block) -------------

#define RQ_Q_WARPS 4  // warps (blocks of 64 values) per CUDA block

// SET_ROWS geometry: source rows (i01, i02, i03) over ne01 x ne02 x ne03, row ids
// src1[i01, i02 % ne11, i03 % ne12], destination rows nb1 apart.  32-bit index arithmetic
// (the launchers check the counts): a 64-bit division is a long software sequence on the
// GPU, and a decode step runs these kernels per layer.
struct rq_set_rows_args {
    bool idx64;
    int ne01, ne02, ne11, ne12;
    int64_t nb10, nb11, nb12, nb1, nb2, nb3;
};

static rq_set_rows_args rq_set_rows_args_of(const ggml_tensor * rows, const ggml_tensor * src1, const ggml_tensor * dst) {
    return { src1->type == GGML_TYPE_I64, (int) rows->ne[1], (int) rows->ne[2], (int) src1->ne[1], (int) src1->ne[2],
             (int64_t) src1->nb[0], (int64_t) src1->nb[1], (int64_t) src1->nb[2],
             (int64_t) dst->nb[1], (int64_t) dst->nb[2], (int64_t) dst->nb[3] };
}

// Source row `row` (flattened) -> its indices and the destination block holding its element i00.
template <int bits>
static __device__ __forceinline__ uint8_t * rq_set_rows_block(const rq_set_rows_args & a, const char * src1, char * dst,
                                                              int row, const int64_t i00, int & i01, int & i02, int & i03) {
    i01 = row % a.ne01; row /= a.ne01;
    i02 = row % a.ne02;
    i03 = row / a.ne02;
    const char * idx_p = src1 + i01*a.nb10 + (int64_t) (i02 % a.ne11)*a.nb11 + (int64_t) (i03 % a.ne12)*a.nb12;
    const int64_t dst_row = a.idx64 ? *(const int64_t *) idx_p : (int64_t) *(const int32_t *) idx_p;
    return (uint8_t *) (dst + dst_row*a.nb1 + i02*a.nb2 + i03*a.nb3) + (i00 / RQ_QK) * rq_block_bytes<bits>();
}

template <int bits, bool iso>
static __global__ void rq_k_set_rows(const char * __restrict__ src0, const char * __restrict__ src1, char * __restrict__ dst,
                                     const int n_blocks, const int blocks_per_row, const rq_set_rows_args a,
                                     const int64_t nb01, const int64_t nb02, const int64_t nb03) {
    __shared__ uint8_t sidx[RQ_Q_WARPS][RQ_QK];
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const int ib = RQ_Q_WARPS*blockIdx.x + warp;
    if (ib >= n_blocks) {
        return;  // the whole warp: ib is the same on its lanes
    }
    const int64_t i00 = (int64_t) (ib % blocks_per_row) * RQ_QK;
    int i01, i02, i03;
    uint8_t * y = rq_set_rows_block<bits>(a, src1, dst, ib / blocks_per_row, i00, i01, i02, i03);
    const float * x = (const float *) (src0 + i01*nb01 + i02*nb02 + i03*nb03) + i00;
    rq_quantize_block_warp<bits, iso>(x, y, sidx[warp], lane);
}

template <int bits, bool iso>
static void rq_set_rows_launch(const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst, cudaStream_t stream) {
    const int64_t n_blocks = ggml_nelements(src0) / RQ_QK;
    if (n_blocks == 0) {
        return;
    }
    GGML_ASSERT(n_blocks < INT32_MAX - RQ_Q_WARPS);
    const int64_t grid = (n_blocks + RQ_Q_WARPS - 1) / RQ_Q_WARPS;
    rq_k_set_rows<bits, iso><<<grid, RQ_Q_WARPS*WARP_SIZE, 0, stream>>>(
        (const char *) src0->data, (const char *) src1->data, (char *) dst->data, (int) n_blocks,
        (int) (src0->ne[0] / RQ_QK), rq_set_rows_args_of(src0, src1, dst), src0->nb[1], src0->nb[2], src0->nb[3]);
    CUDA_CHECK(cudaGetLastError());
}

void rq_cuda_set_rows(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst) {
    GGML_ASSERT(src0->type == GGML_TYPE_F32 && src0->nb[0] == sizeof(float) && src0->ne[0] % RQ_QK == 0);
    GGML_ASSERT(src1->type == GGML_TYPE_I32 || src1->type == GGML_TYPE_I64);
    cudaStream_t stream = ctx.stream();
    switch (dst->type) {
        case GGML_TYPE_PLANAR3: rq_set_rows_launch<3, false>(src0, src1, dst, stream); break;
        case GGML_TYPE_ISO3:    rq_set_rows_launch<3, true >(src0, src1, dst, stream); break;
        case GGML_TYPE_PLANAR4: rq_set_rows_launch<4, false>(src0, src1, dst, stream); break;
        case GGML_TYPE_ISO4:    rq_set_rows_launch<4, true >(src0, src1, dst, stream); break;
        default: GGML_ABORT("rq_cuda_set_rows: %s is not a rotor type", ggml_type_name(dst->type));
    }
}

// ---- upstream's Hadamard pre-rotation fused into the quantiser --------------------------
//
// One warp per 64-value block of a Hadamard row of N values (N divides the SET_ROWS row):
// the scaled Walsh-Hadamard transform of the whole row in exactly the order of upstream's
// fwht_cuda (so the floats, and then the bytes, are those of the two kernels run apart),
// staged in shared memory, then the quantiser on the warp's block.  The N/64 warps of a
// row each repeat its transform (a few shuffles) rather than quantise its blocks one after
// another: a decode step stores one row per head, so the kernel is one dependent chain and
// its length, not its work, is its time.

template <int N>
static __device__ __forceinline__ void rq_fwht_row_warp(const float * __restrict__ x, const float scale, float * out, const int lane) {
    constexpr int EL = N / WARP_SIZE;
    float reg[EL];
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        reg[i] = __fmul_rn(x[i*WARP_SIZE + lane], scale);  // rounded, as the CPU's: never fused into the first add
    }
#pragma unroll
    for (int h = 1; h < WARP_SIZE; h *= 2) {
#pragma unroll
        for (int j = 0; j < EL; ++j) {
            const float val  = reg[j];
            const float val2 = __shfl_xor_sync(0xFFFFFFFF, val, h, WARP_SIZE);
            reg[j] = (lane & h) == 0 ? val + val2 : val2 - val;
        }
    }
#pragma unroll
    for (int h = WARP_SIZE; h < N; h *= 2) {
        const int step = h / WARP_SIZE;
#pragma unroll
        for (int j = 0; j < EL; j += 2*step) {
#pragma unroll
            for (int k = 0; k < step; ++k) {
                const float a = reg[j + k];
                const float b = reg[j + k + step];
                reg[j + k]        = a + b;
                reg[j + k + step] = a - b;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < EL; ++i) {
        out[i*WARP_SIZE + lane] = reg[i];
    }
}

template <int bits, bool iso, int N>
static __global__ void rq_k_hadamard_set_rows(const float * __restrict__ src0, const char * __restrict__ src1, char * __restrict__ dst,
                                              const float scale, const int n_hrows, const int hrows_per_row,
                                              const rq_set_rows_args a) {
    constexpr int BPR = N/RQ_QK;  // blocks (warps) per Hadamard row
    __shared__ float sx[RQ_Q_WARPS][N];
    __shared__ uint8_t sidx[RQ_Q_WARPS][RQ_QK];
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const int gw = RQ_Q_WARPS*blockIdx.x + warp;
    const int hr = gw / BPR, b = gw % BPR;
    if (hr >= n_hrows) {
        return;  // the whole warp
    }
    rq_fwht_row_warp<N>(src0 + (int64_t) hr*N, scale, sx[warp], lane);
    __syncwarp();
    int i01, i02, i03;
    uint8_t * y = rq_set_rows_block<bits>(a, src1, dst, hr / hrows_per_row, (int64_t) (hr % hrows_per_row) * N, i01, i02, i03);
    rq_quantize_block_warp<bits, iso>(sx[warp] + b*RQ_QK, y + b*rq_block_bytes<bits>(), sidx[warp], lane);
}

template <int bits, bool iso, int N>
static void rq_hadamard_set_rows_launch(const ggml_tensor * x, const ggml_tensor * rows_like, const ggml_tensor * src1, ggml_tensor * dst,
                                        cudaStream_t stream) {
    const int64_t n_hrows = ggml_nelements(x) / N;
    if (n_hrows == 0) {
        return;
    }
    GGML_ASSERT(n_hrows < (INT32_MAX - RQ_Q_WARPS) / (N/RQ_QK) && rows_like->ne[0] % N == 0);
    const float scale = 1 / sqrtf(N);  // as upstream's fwht
    const int64_t grid = (n_hrows*(N/RQ_QK) + RQ_Q_WARPS - 1) / RQ_Q_WARPS;
    rq_k_hadamard_set_rows<bits, iso, N><<<grid, RQ_Q_WARPS*WARP_SIZE, 0, stream>>>(
        (const float *) x->data, (const char *) src1->data, (char *) dst->data, scale, (int) n_hrows,
        (int) (rows_like->ne[0] / N), rq_set_rows_args_of(rows_like, src1, dst));
    CUDA_CHECK(cudaGetLastError());
}

template <int bits, bool iso>
static void rq_hadamard_set_rows_typed(const int n, const ggml_tensor * x, const ggml_tensor * rows_like, const ggml_tensor * src1,
                                       ggml_tensor * dst, cudaStream_t stream) {
    switch (n) {
        case 64:  rq_hadamard_set_rows_launch<bits, iso, 64 >(x, rows_like, src1, dst, stream); break;
        case 128: rq_hadamard_set_rows_launch<bits, iso, 128>(x, rows_like, src1, dst, stream); break;
        case 256: rq_hadamard_set_rows_launch<bits, iso, 256>(x, rows_like, src1, dst, stream); break;
        case 512: rq_hadamard_set_rows_launch<bits, iso, 512>(x, rows_like, src1, dst, stream); break;
        default: GGML_ABORT("rotorquant: no fused Hadamard of size %d", n);
    }
}

void rq_cuda_hadamard_set_rows(ggml_backend_cuda_context & ctx, const int n, const ggml_tensor * x, const ggml_tensor * rows_like,
                               const ggml_tensor * src1, ggml_tensor * dst) {
    cudaStream_t stream = ctx.stream();
    switch (dst->type) {
        case GGML_TYPE_PLANAR3: rq_hadamard_set_rows_typed<3, false>(n, x, rows_like, src1, dst, stream); break;
        case GGML_TYPE_ISO3:    rq_hadamard_set_rows_typed<3, true >(n, x, rows_like, src1, dst, stream); break;
        case GGML_TYPE_PLANAR4: rq_hadamard_set_rows_typed<4, false>(n, x, rows_like, src1, dst, stream); break;
        case GGML_TYPE_ISO4:    rq_hadamard_set_rows_typed<4, true >(n, x, rows_like, src1, dst, stream); break;
        default: GGML_ABORT("rq_cuda_hadamard_set_rows: %s is not a rotor type", ggml_type_name(dst->type));
    }
}

// Element i of a tensor -> byte offset, for ggml's row-major 4-D layout.
struct rq_layout {
    int64_t ne0, ne1, ne2;
    int64_t nb0, nb1, nb2, nb3;
};

static __device__ __forceinline__ int64_t rq_offset(const rq_layout & l, const int64_t i, const int64_t blck, const int64_t ts) {
    const int64_t i0 = i % l.ne0;
    int64_t r = i / l.ne0;
    const int64_t i1 = r % l.ne1; r /= l.ne1;
    const int64_t i2 = r % l.ne2;
    const int64_t i3 = r / l.ne2;
    return (i0 / blck)*ts + i1*l.nb1 + i2*l.nb2 + i3*l.nb3;
}

static rq_layout rq_layout_of(const ggml_tensor * t) {
    return { t->ne[0], t->ne[1], t->ne[2], (int64_t) t->nb[0], (int64_t) t->nb[1], (int64_t) t->nb[2], (int64_t) t->nb[3] };
}

// CPY F32 -> rotor: block b covers elements 64 b .. 64 b + 63 of both tensors (row-major order).
template <int bits, bool iso>
static __global__ void rq_k_cpy_from_f32(const char * __restrict__ src, char * __restrict__ dst, const int64_t n_blocks,
                                         const rq_layout ls, const rq_layout ld) {
    __shared__ uint8_t sidx[RQ_Q_WARPS][RQ_QK];
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const int64_t ib = (int64_t) RQ_Q_WARPS*blockIdx.x + warp;
    if (ib >= n_blocks) {
        return;
    }
    const float * x = (const float *) (src + rq_offset(ls, ib*RQ_QK, 1, ls.nb0));
    uint8_t * y = (uint8_t *) (dst + rq_offset(ld, ib*RQ_QK, RQ_QK, rq_block_bytes<bits>()));
    rq_quantize_block_warp<bits, iso>(x, y, sidx[warp], lane);
}

// Decode to float/half: one thread per quartet (16 per block), so writes coalesce.
template <int bits, bool iso, typename dst_t>
static __global__ void rq_k_decode(const char * __restrict__ src, char * __restrict__ dst, const int64_t n_quartets,
                                   const rq_layout ls, const rq_layout ld) {
    const int64_t iq = (int64_t) blockDim.x*blockIdx.x + threadIdx.x;
    if (iq >= n_quartets) {
        return;
    }
    const int64_t i = iq*4;
    const uint8_t * blk = (const uint8_t *) (src + rq_offset(ls, i, RQ_QK, rq_block_bytes<bits>()));
    float y[4];
    rq_decode_quartet<bits>(iso, blk, (int) ((i % RQ_QK) / 4), y);
    dst_t * out = (dst_t *) (dst + rq_offset(ld, i, 1, ld.nb0));
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        out[e] = ggml_cuda_cast<dst_t>(y[e]);
    }
}

template <int bits, bool iso>
static void rq_cpy_from_f32_launch(const ggml_tensor * src, ggml_tensor * dst, cudaStream_t stream) {
    const int64_t n_blocks = ggml_nelements(src) / RQ_QK;
    const int64_t grid = (n_blocks + RQ_Q_WARPS - 1) / RQ_Q_WARPS;
    if (n_blocks > 0) {
        rq_k_cpy_from_f32<bits, iso><<<grid, RQ_Q_WARPS*WARP_SIZE, 0, stream>>>(
            (const char *) src->data, (char *) dst->data, n_blocks, rq_layout_of(src), rq_layout_of(dst));
        CUDA_CHECK(cudaGetLastError());
    }
}

template <int bits, bool iso, typename dst_t>
static void rq_decode_launch(const void * src, dst_t * dst, const rq_layout & ls, const rq_layout & ld, const int64_t n, cudaStream_t stream) {
    const int64_t n_quartets = n / 4;
    const int64_t grid = (n_quartets + CUDA_DEQUANTIZE_BLOCK_SIZE - 1) / CUDA_DEQUANTIZE_BLOCK_SIZE;
    if (n_quartets > 0) {
        rq_k_decode<bits, iso, dst_t><<<grid, CUDA_DEQUANTIZE_BLOCK_SIZE, 0, stream>>>(
            (const char *) src, (char *) dst, n_quartets, ls, ld);
        CUDA_CHECK(cudaGetLastError());
    }
}

bool rq_cuda_supports_cpy(ggml_type src, ggml_type dst) {
    return (src == GGML_TYPE_F32 && rq_is_cache_type(dst)) || (rq_is_cache_type(src) && dst == GGML_TYPE_F32);
}

template <int bits, bool iso>
static void rq_cpy_typed(const ggml_tensor * src0, ggml_tensor * src1, cudaStream_t stream) {
    if (src0->type == GGML_TYPE_F32) {
        rq_cpy_from_f32_launch<bits, iso>(src0, src1, stream);
    } else {
        rq_decode_launch<bits, iso, float>(src0->data, (float *) src1->data, rq_layout_of(src0), rq_layout_of(src1),
                                           ggml_nelements(src0), stream);
    }
}

bool rq_cuda_cpy(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, ggml_tensor * src1) {
    if (!rq_cuda_supports_cpy(src0->type, src1->type)) {
        return false;
    }
    const ggml_tensor * rot = rq_is_cache_type(src0->type) ? src0 : src1;
    const ggml_tensor * f32 = rot == src0 ? src1 : src0;
    GGML_ASSERT(f32->nb[0] == sizeof(float) && rot->ne[0] % RQ_QK == 0 && f32->ne[0] % RQ_QK == 0);
    cudaStream_t stream = ctx.stream();
    switch (rot->type) {
        case GGML_TYPE_PLANAR3: rq_cpy_typed<3, false>(src0, src1, stream); break;
        case GGML_TYPE_ISO3:    rq_cpy_typed<3, true >(src0, src1, stream); break;
        case GGML_TYPE_PLANAR4: rq_cpy_typed<4, false>(src0, src1, stream); break;
        case GGML_TYPE_ISO4:    rq_cpy_typed<4, true >(src0, src1, stream); break;
        default: return false;
    }
    return true;
}

// ---- to_fp16 / to_fp32 getters (convert.cu) ---------------------------------------------

template <int bits, bool iso, typename dst_t>
static void rq_to_t_cont(const void * x, dst_t * y, const int64_t k, cudaStream_t stream) {
    const rq_layout ls = { k, 1, 1, rq_block_bytes<bits>(), 0, 0, 0 };
    const rq_layout ld = { k, 1, 1, (int64_t) sizeof(dst_t), 0, 0, 0 };
    rq_decode_launch<bits, iso, dst_t>(x, y, ls, ld, k, stream);
}

// Strided source (s01..s03 in blocks), contiguous destination.
template <int bits, bool iso, typename dst_t>
static void rq_to_t_nc(const void * x, dst_t * y, const int64_t ne00, const int64_t ne01, const int64_t ne02, const int64_t ne03,
                       const int64_t s01, const int64_t s02, const int64_t s03, cudaStream_t stream) {
    const int64_t ts = rq_block_bytes<bits>();
    const rq_layout ls = { ne00, ne01, ne02, ts, s01*ts, s02*ts, s03*ts };
    const int64_t e = sizeof(dst_t);
    const rq_layout ld = { ne00, ne01, ne02, e, ne00*e, ne00*ne01*e, ne00*ne01*ne02*e };
    rq_decode_launch<bits, iso, dst_t>(x, y, ls, ld, ne00*ne01*ne02*ne03, stream);
}

#define RQ_GETTER(name, fn, dst_t)                                          \
    decltype(&fn<3, false, dst_t>) name(ggml_type type) {                   \
        switch (type) {                                                     \
            case GGML_TYPE_PLANAR3: return fn<3, false, dst_t>;             \
            case GGML_TYPE_ISO3:    return fn<3, true,  dst_t>;             \
            case GGML_TYPE_PLANAR4: return fn<4, false, dst_t>;             \
            case GGML_TYPE_ISO4:    return fn<4, true,  dst_t>;             \
            default:                return nullptr;                         \
        }                                                                   \
    }

RQ_GETTER(rq_cuda_get_to_fp16,    rq_to_t_cont, half)
RQ_GETTER(rq_cuda_get_to_fp32,    rq_to_t_cont, float)
RQ_GETTER(rq_cuda_get_to_fp16_nc, rq_to_t_nc,   half)
RQ_GETTER(rq_cuda_get_to_fp32_nc, rq_to_t_nc,   float)
