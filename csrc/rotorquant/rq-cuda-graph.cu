// Graph-level fusions for the RotorQuant cache types on CUDA (hook in patch 0007, in the
// CUDA backend's node loop).
//
// 1. Hadamard + store.
// llama.cpp multiplies K and V by a Walsh-Hadamard matrix before they are stored into a
// quantized cache (`attn_rot`, a MUL_MAT with GGML_HINT_SRC0_IS_HADAMARD, run as
// fwht_cuda), so a decode step wrote each layer's K and V in four launches of a few
// microseconds each: fwht, quantiser, fwht, quantiser.  Here the transform and the rotor
// quantiser run as one kernel, at the Hadamard node, writing the cache rows of the
// SET_ROWS that is the transform's only consumer; that SET_ROWS then has nothing to do.
//
// Running the store at the Hadamard node (not at the SET_ROWS, which for V comes several
// nodes later) is what makes this safe: the transform's input is still live there, while
// by the time of the SET_ROWS the graph allocator may have given its memory to another
// tensor.  The conditions checked below make the early store invisible to the rest of the
// graph: nothing between the two nodes touches the cache the SET_ROWS writes, and its row
// ids are a graph input.
//
// 2. Decode attention + output Hadamard.  With a rotated V, the attention output is
// multiplied by the same Hadamard matrix again (a MUL_MAT run as fwht_cuda, one more
// launch per layer).  Our decode kernel, which already finishes every output row in
// shared memory, applies it itself and writes the MUL_MAT's result; the MUL_MAT then
// has nothing to do.  Writing that tensor at the attention node is safe when only views
// lie between the two nodes (no tensor is created or freed in between, so the only
// memory the allocator may have given the MUL_MAT's result is memory whose last reader is
// the attention node itself) and the result overlaps none of the attention's inputs.
#include "rq-cuda.h"

#include "fwht.cuh"
#include "ggml-impl.h"

#include <algorithm>
#include <cstdlib>

namespace {

constexpr int RQ_FUSE_LOOKAHEAD = 48;  // nodes searched for the consumer (V: ~11 in a Llama layer)

// A MUL_MAT that upstream runs as fwht_cuda, on F32 input of a size our kernel has.
bool is_hadamard_mul_mat(const ggml_tensor * t) {
    if (!ggml_cuda_op_mul_mat_use_fwht(t) || t->src[1]->type != GGML_TYPE_F32) {
        return false;
    }
    const int64_t n = t->src[0]->ne[0];
    return n == 64 || n == 128 || n == 256 || n == 512;
}

bool is_view(const ggml_tensor * t) {
    return t->op == GGML_OP_RESHAPE || t->op == GGML_OP_VIEW;
}

const ggml_tensor * root_of(const ggml_tensor * t) {
    while (t->view_src) {
        t = t->view_src;
    }
    return t;
}

int index_of(const ggml_cgraph * g, const ggml_tensor * t, const int from, const int to) {
    for (int k = from; k < to; ++k) {
        if (g->nodes[k] == t) {
            return k;
        }
    }
    return -1;
}

// Follow node i's result through views to the first node that computes with it: its
// index, or -1 if a step has another reader or is a graph output (the fused kernel does
// not write that result, so nothing else may read it) or none lies within `end`.  `t`:
// the tensor (i's result or a view of it) that node reads.
int sole_consumer(const ggml_cgraph * g, const int i, const int end, const ggml_tensor ** t) {
    for (int cur = i;;) {
        if (ggml_node_get_use_count(g, cur) != 1 || (g->nodes[cur]->flags & GGML_TENSOR_FLAG_OUTPUT)) {
            return -1;
        }
        *t = g->nodes[cur];
        int next = -1;
        for (int k = cur + 1; k < end && next < 0; ++k) {
            for (int s = 0; s < GGML_MAX_SRC; ++s) {
                if (g->nodes[k]->src[s] == *t) {
                    next = k;
                    break;
                }
            }
        }
        if (next < 0 || !(is_view(g->nodes[next]) && g->nodes[next]->src[0] == *t)) {
            return next;
        }
        cur = next;
    }
}

// The node index of the SET_ROWS into a rotor cache that node i (a Hadamard MUL_MAT) feeds
// alone, through reshapes and views, if the store may run at node i; else -1.
int fused_set_rows_of(const ggml_cgraph * g, const int i) {
    const ggml_tensor * h = g->nodes[i];
    if (!is_hadamard_mul_mat(h)) {
        return -1;
    }
    const ggml_tensor * t = nullptr;
    const int next = sole_consumer(g, i, std::min(g->n_nodes, i + 1 + RQ_FUSE_LOOKAHEAD), &t);
    if (next < 0) {
        return -1;
    }
    const ggml_tensor * c = g->nodes[next];
    if (c->op != GGML_OP_SET_ROWS || c->src[0] != t || !rq_is_cache_type(c->type) ||
        !(c->flags & GGML_TENSOR_FLAG_COMPUTE)) {
        return -1;
    }
    // same elements in the same order: the SET_ROWS source is the transform's result
    // seen contiguously from its start, in rows the transform's size divides
    const ggml_tensor * rows = c->src[0];
    const ggml_tensor * ids  = c->src[1];
    if (!ggml_is_contiguous(rows) || rows->data != h->data || ggml_nelements(rows) != ggml_nelements(h) ||
        rows->ne[0] % h->src[0]->ne[0] != 0 || rows->ne[0] % 64 != 0) {
        return -1;
    }
    if (ids->type != GGML_TYPE_I32 && ids->type != GGML_TYPE_I64) {
        return -1;
    }
    // row ids computed by the graph, or a cache or the ids touched in between: store
    // at the SET_ROWS.  (Ops such as CPY return a view of what they write, so "a view
    // of a leaf" is not enough: every step of the ids' chain must be a view.)
    const ggml_tensor * id_root = ids;
    while (is_view(id_root)) {
        id_root = id_root->src[0];
    }
    if (id_root->op != GGML_OP_NONE || id_root->view_src) {
        return -1;
    }
    const ggml_tensor * cache = root_of(c);
    if (cache->op != GGML_OP_NONE) {
        return -1;
    }
    for (int k = i + 1; k < next; ++k) {
        const ggml_tensor * m = g->nodes[k];
        if (is_view(m)) {
            continue;  // reads nothing; whoever reads through it is checked below
        }
        const ggml_tensor * touched[1 + GGML_MAX_SRC] = { m };
        for (int s = 0; s < GGML_MAX_SRC; ++s) {
            touched[1 + s] = m->src[s];
        }
        for (const ggml_tensor * u : touched) {
            if (u && (root_of(u) == cache || root_of(u) == id_root)) {
                return -1;
            }
        }
    }
    return next;
}

bool overlaps(const ggml_tensor * a, const ggml_tensor * b) {
    const char * a0 = (const char *) a->data, * b0 = (const char *) b->data;
    return a0 < b0 + ggml_nbytes(b) && b0 < a0 + ggml_nbytes(a);
}

// The node index of the Hadamard MUL_MAT that node i (a FLASH_ATTN_EXT our decode kernel
// runs) feeds alone, through views, if the kernel may write its result; else -1.
int fused_out_hadamard_of(const ggml_cgraph * g, const int i) {
    const ggml_tensor * fa = g->nodes[i];
    if (fa->op != GGML_OP_FLASH_ATTN_EXT || fa->type != GGML_TYPE_F32 || !ggml_is_contiguous(fa) ||
        !rq_cuda_fattn_decode_supported(fa)) {
        return -1;
    }
    const ggml_tensor * t = nullptr;
    const int next = sole_consumer(g, i, std::min(g->n_nodes, i + 1 + RQ_FUSE_LOOKAHEAD), &t);
    if (next < 0) {
        return -1;
    }
    const ggml_tensor * c = g->nodes[next];
    if (!is_hadamard_mul_mat(c) || c->src[1] != t || !ggml_is_contiguous(t) || t->data != fa->data ||
        ggml_nelements(t) != ggml_nelements(fa) || c->type != GGML_TYPE_F32 || !ggml_is_contiguous(c) ||
        !(c->flags & GGML_TENSOR_FLAG_COMPUTE)) {
        return -1;
    }
    const int64_t n = c->src[0]->ne[0];
    if (fa->ne[0] % n != 0) {
        return -1;
    }
    for (int k = i + 1; k < next; ++k) {
        if (!is_view(g->nodes[k])) {
            return -1;
        }
    }
    for (int s = 0; s < GGML_MAX_SRC; ++s) {
        if (fa->src[s] && overlaps(c, fa->src[s])) {
            return -1;
        }
    }
    return next;
}

// The attention node whose kernel already wrote Hadamard MUL_MAT node j, or -1.
int fusing_attention_of(const ggml_cgraph * g, const int j) {
    const ggml_tensor * t = g->nodes[j]->src[1];
    while (t && is_view(t)) {
        t = t->src[0];
    }
    if (!t || t->op != GGML_OP_FLASH_ATTN_EXT) {
        return -1;
    }
    const int i = index_of(g, t, std::max(0, j - 1 - RQ_FUSE_LOOKAHEAD), j);
    return i >= 0 && fused_out_hadamard_of(g, i) == j ? i : -1;
}

// The Hadamard node whose fused store already wrote SET_ROWS node j, or -1.
int fusing_hadamard_of(const ggml_cgraph * g, const int j) {
    const ggml_tensor * t = g->nodes[j]->src[0];
    while (t && is_view(t)) {
        t = t->src[0];
    }
    if (!t || !is_hadamard_mul_mat(t)) {
        return -1;
    }
    const int i = index_of(g, t, std::max(0, j - 1 - RQ_FUSE_LOOKAHEAD), j);
    return i >= 0 && fused_set_rows_of(g, i) == j ? i : -1;
}

} // namespace

bool rq_cuda_graph_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, const int i) {
    // GGML_CUDA_DISABLE_FUSION (upstream's switch) turns both off, RQ_CUDA_FUSE_OUTPUT=0 the second
    static const bool disabled = getenv("GGML_CUDA_DISABLE_FUSION") != nullptr && atoi(getenv("GGML_CUDA_DISABLE_FUSION"));
    static const bool no_output = getenv("RQ_CUDA_FUSE_OUTPUT") != nullptr && !atoi(getenv("RQ_CUDA_FUSE_OUTPUT"));
    ggml_tensor * node = cgraph->nodes[i];
    if (disabled) {
        return false;
    }
    if (node->op == GGML_OP_MUL_MAT) {
        if (!no_output && fusing_attention_of(cgraph, i) >= 0) {
            return true;
        }
        const int j = fused_set_rows_of(cgraph, i);
        if (j < 0) {
            return false;
        }
        ggml_tensor * set_rows = cgraph->nodes[j];
        rq_cuda_hadamard_set_rows(ctx, (int) node->src[0]->ne[0], node->src[1], set_rows->src[0], set_rows->src[1], set_rows);
        return true;
    }
    if (node->op == GGML_OP_FLASH_ATTN_EXT && !no_output) {
        const int j = fused_out_hadamard_of(cgraph, i);
        if (j < 0) {
            return false;
        }
        ggml_tensor * had = cgraph->nodes[j];
        rq_cuda_flash_attn_ext_decode(ctx, node, (float *) had->data, (int) had->src[0]->ne[0]);
        return true;
    }
    if (node->op == GGML_OP_SET_ROWS && rq_is_cache_type(node->type)) {
        return fusing_hadamard_of(cgraph, i) >= 0;
    }
    return false;
}
