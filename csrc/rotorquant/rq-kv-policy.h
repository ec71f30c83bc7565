// rotorquant KV policy: per-model choices that make low-bit K usable, read by libllama.
//
// A policy is a small GGUF file (written by `rq-run calibrate`) holding
//   - the base K/V cache types it was made for,
//   - per-layer K/V cache types (sensitive layers kept at higher precision),
//   - whether upstream's whole-head Hadamard pre-rotation is used for K and for V,
//   - a per-layer, per-KV-head, per-channel offset mu of post-RoPE K ("K centering").
// Attention is invariant to subtracting one vector from every key of a head
// (softmax ignores the per-query constant q.mu), so the cache stores k - mu and
// quantization no longer spends its levels on a fixed offset.
//
// The policy reaches the KV cache constructors through a scope object set by the context
// while it creates its memory: the constructors are called from many places upstream and
// this keeps their signatures untouched.
#pragma once

#include "ggml.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct rq_kv_policy {
    std::string path;

    ggml_type base_type_k = GGML_TYPE_COUNT; // the cache types the per-layer types were chosen for
    ggml_type base_type_v = GGML_TYPE_COUNT;

    std::vector<ggml_type> type_k; // per model layer; GGML_TYPE_COUNT = the context's type
    std::vector<ggml_type> type_v;

    int32_t attn_rot_k = -1; // -1 = engine default, 0 = off, 1 = on
    int32_t attn_rot_v = -1;

    // per model layer: n_embd_k_gqa offsets in post-RoPE space (before any Hadamard); empty = none
    std::vector<std::vector<float>> k_center;

    // the type layer il should use, given the context's types
    ggml_type layer_type_k(uint32_t il, ggml_type ctx_type) const;
    ggml_type layer_type_v(uint32_t il, ggml_type ctx_type) const;

    const std::vector<float> * layer_k_center(uint32_t il) const;
};

// Reads and validates a policy file; throws std::runtime_error naming the problem.
std::shared_ptr<const rq_kv_policy> rq_kv_policy_load(const std::string & path);

// The policy of the context whose memory is being created on this thread (or nullptr).
const rq_kv_policy * rq_kv_policy_current();

class rq_kv_policy_scope {
public:
    explicit rq_kv_policy_scope(const rq_kv_policy * policy);
    ~rq_kv_policy_scope();
    rq_kv_policy_scope(const rq_kv_policy_scope &) = delete;
    rq_kv_policy_scope & operator=(const rq_kv_policy_scope &) = delete;

private:
    const rq_kv_policy * prev;
};

// FNV-1a over the parts of a cache's layout that change what its rows mean (stored in states)
uint64_t rq_hash_bytes(uint64_t h, const void * data, size_t n);
