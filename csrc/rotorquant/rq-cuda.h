// What ggml's CUDA backend calls to run the RotorQuant KV-cache types (hooks in patch
// 0005).  Everything device-side lives in rq-cuda.cu; this header is host-only, so the
// upstream files that include it see no tables and no kernels.
//
// Division of labour on CUDA (the same formats and tables as the CPU, rq-tables.h):
//   SET_ROWS / CPY F32 -> rotor   quantise on the GPU, byte-identical to the CPU codec
//                                 (after upstream's Hadamard pre-rotation: one fused kernel)
//   CPY rotor -> F32, to_fp16/32  decode (contiguous and strided): K-shift, and prompt
//                                 processing, where upstream's tensor-core FA kernels run
//                                 on K/V converted to f16 (as upstream does for q4_0/q8_0)
//   FLASH_ATTN_EXT, one query     our decode kernel: rotated Q, K scored against the
//                                 codebook, V accumulated rotated and un-rotated once,
//                                 all query heads of a KV head in one block
#pragma once

#include "convert.cuh"

#include <cstdint>

extern "C" bool rq_is_cache_type(enum ggml_type type);

// SET_ROWS into a rotor tensor (src0 F32 rows, src1 I32/I64 row ids).
void rq_cuda_set_rows(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1, ggml_tensor * dst);

// SET_ROWS into a rotor tensor of H x instead of its source (H: upstream's scaled
// Walsh-Hadamard transform of size n, on each n values of the contiguous F32 x); rows_like:
// the SET_ROWS source, whose shape maps x's elements to rows.
void rq_cuda_hadamard_set_rows(ggml_backend_cuda_context & ctx, int n, const ggml_tensor * x, const ggml_tensor * rows_like,
                               const ggml_tensor * src1, ggml_tensor * dst);

// Node i of the CUDA backend's graph, if a fusion of rq-cuda-graph.cu takes it: a Hadamard
// pre-rotation feeding a rotor SET_ROWS (the fused store runs at the Hadamard node, the
// SET_ROWS has nothing left to do), or a decode FLASH_ATTN_EXT feeding the Hadamard that
// undoes V's rotation (the kernel writes the rotated-back output, the Hadamard has nothing
// left to do); true for the nodes it ran or emptied, false for every other node.
bool rq_cuda_graph_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, int i);

// CPY between F32 and a rotor type, either direction; false if the pair is not ours.
bool rq_cuda_supports_cpy(ggml_type src, ggml_type dst);
bool rq_cuda_cpy(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, ggml_tensor * src1);

// Decoders for convert.cu's getters; nullptr for types that are not ours.
to_fp16_cuda_t    rq_cuda_get_to_fp16(ggml_type type);
to_fp32_cuda_t    rq_cuda_get_to_fp32(ggml_type type);
to_fp16_nc_cuda_t rq_cuda_get_to_fp16_nc(ggml_type type);
to_fp32_nc_cuda_t rq_cuda_get_to_fp32_nc(ggml_type type);

// Flash attention: true if our decode kernel takes this FLASH_ATTN_EXT node (rotor K,
// V rotor/f16/q8_0, one query per sequence, head size 64/128/256, <= 16 query heads per
// KV head).  Other shapes with a rotor K or V go to upstream's kernels on f16 copies.
bool rq_cuda_fattn_decode_supported(const ggml_tensor * dst);
// out (default dst->data): where the output goes; out_had (0: none): multiply it by the
// out_had-point normalized Hadamard matrix on the way (a power of two dividing the head size).
void rq_cuda_flash_attn_ext_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst, float * out = nullptr, int out_had = 0);
