#include "rq_shim.h"

#include "llama.h"
#include "llama-ext.h"  // upstream's staging C++ API: llama_get_memory_breakdown
#include "llama-memory-hybrid.h"       // src/: which part of a context's memory is recurrent
#include "llama-memory-hybrid-iswa.h"
#include "llama-memory-recurrent.h"

#include "rq-kv-policy.h"

#include "fit.h"  // common/

#include "ggml.h"
#include "ggml-backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <map>
#include <string>
#include <vector>

void rq_context_memory(const struct llama_context * ctx, struct rq_memory_bytes * out) {
    out->model = out->context = out->compute = 0;
    if (ctx == nullptr) {
        return;
    }
    for (const auto & [buft, mb] : llama_get_memory_breakdown(ctx)) {
        (void) buft;
        out->model   += mb.model;
        out->context += mb.context;
        out->compute += mb.compute;
    }
}

// Bytes per buffer type of the recurrent part of a context's memory (none for a plain KV cache).
static std::map<ggml_backend_buffer_type_t, size_t> rq_recurrent_bytes(const llama_context * ctx) {
    const llama_memory_i * mem = llama_get_memory(ctx);
    if (const auto * r = dynamic_cast<const llama_memory_recurrent *>(mem)) {
        return r->memory_breakdown();
    }
    if (const auto * h = dynamic_cast<const llama_memory_hybrid *>(mem)) {
        return h->get_mem_recr()->memory_breakdown();
    }
    if (const auto * h = dynamic_cast<const llama_memory_hybrid_iswa *>(mem)) {
        return h->get_mem_recr()->memory_breakdown();
    }
    return {};
}

size_t rq_context_memory_by_buft(const struct llama_context * ctx, ggml_backend_dev_t * devs,
                                 struct rq_memory_parts * out, size_t cap) {
    if (ctx == nullptr) {
        return 0;
    }
    const auto recurrent = rq_recurrent_bytes(ctx);
    size_t n = 0;
    for (const auto & [buft, mb] : llama_get_memory_breakdown(ctx)) {
        if (n < cap) {
            const auto it = recurrent.find(buft);
            const size_t r = it == recurrent.end() ? 0 : std::min(it->second, mb.context);
            // host memory (a GPU's pinned host buffer too) counts as the CPU's, as in
            // upstream's own dry run (common/fit.cpp)
            devs[n] = ggml_backend_buft_is_host(buft) ? nullptr : ggml_backend_buft_get_device(buft);
            out[n]  = {mb.model, mb.context - r, r, mb.compute};
        }
        ++n;
    }
    return n;
}

static void rq_log_drop(enum ggml_log_level, const char *, void *) {}

void rq_log_silence(void) {
    llama_log_set(rq_log_drop, nullptr);
}

struct rq_abort {
    std::atomic<bool> on{false};
};

struct rq_abort * rq_abort_new(void) { return new rq_abort(); }
void rq_abort_free(struct rq_abort * a) { delete a; }
void rq_abort_set(struct rq_abort * a, bool on) { a->on.store(on, std::memory_order_relaxed); }
bool rq_abort_callback(void * data) {
    return static_cast<rq_abort *>(data)->on.load(std::memory_order_relaxed);
}

int rq_logprobs(const float * logits, int n_vocab, int token, int top_n, float * token_logprob,
                int * top_ids, float * top_logprobs) {
    if (logits == nullptr || n_vocab <= 0 || token < 0 || token >= n_vocab || top_n > n_vocab) {
        return -1;
    }
    float mx = logits[0];
    for (int i = 1; i < n_vocab; ++i) {
        mx = std::max(mx, logits[i]);
    }
    double sum = 0.0;
    for (int i = 0; i < n_vocab; ++i) {
        sum += std::exp((double) logits[i] - mx);
    }
    const double lse = mx + std::log(sum);
    *token_logprob = (float) (logits[token] - lse);
    if (top_n <= 0) {
        return 0;
    }
    std::vector<int> ids(n_vocab);
    for (int i = 0; i < n_vocab; ++i) {
        ids[i] = i;
    }
    std::partial_sort(ids.begin(), ids.begin() + top_n, ids.end(),
                      [logits](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (int i = 0; i < top_n; ++i) {
        top_ids[i] = ids[i];
        top_logprobs[i] = (float) (logits[ids[i]] - lse);
    }
    return top_n;
}

struct rq_capture {
    std::vector<std::string> prefixes;
    struct entry {
        std::vector<float> data;
        int64_t ne[4];
        int64_t graph = -1;  // the graph that wrote it last
        size_t  start = 0;   // where that graph's rows begin in data
    };
    std::map<std::string, entry> entries;
    int64_t graph = 0;       // bumped by rq_capture_next_graph before each llama_decode
};

struct rq_capture * rq_capture_new(const char * prefixes_csv) {
    auto * cap = new rq_capture;
    std::string all = prefixes_csv ? prefixes_csv : "";
    size_t pos = 0;
    while (pos <= all.size()) {
        const size_t end = std::min(all.find(',', pos), all.size());
        if (end > pos) {
            cap->prefixes.push_back(all.substr(pos, end - pos));
        }
        pos = end + 1;
    }
    return cap;
}

void rq_capture_free(struct rq_capture * cap) {
    delete cap;
}

static bool rq_capture_wants(const rq_capture * cap, const char * name) {
    for (const auto & p : cap->prefixes) {
        const size_t n = p.size();
        if (strncmp(name, p.c_str(), n) == 0 && name[n] == '-' && name[n + 1] >= '0' && name[n + 1] <= '9') {
            for (const char * c = name + n + 1; *c; ++c) {
                if (*c < '0' || *c > '9') {
                    return false;
                }
            }
            return true;
        }
    }
    return false;
}

bool rq_capture_eval(struct ggml_tensor * t, bool ask, void * user_data) {
    auto * cap = (rq_capture *) user_data;
    if (!rq_capture_wants(cap, t->name) || !ggml_is_contiguous(t) || t->ne[3] != 1) {
        return ask ? false : true;  // returning false from a data call would abort the graph
    }
    if (ask) {
        return true;
    }
    const ggml_type_traits * tr = ggml_get_type_traits(t->type);
    if (t->type != GGML_TYPE_F32 && (!tr || !tr->to_float)) {
        return true;
    }
    auto & e = cap->entries[t->name];
    const int64_t n = ggml_nelements(t);
    const bool same_graph = e.graph == cap->graph;
    if (same_graph) {
        e.data.resize(e.start);  // the later tensor of this name in the same graph wins
    } else {
        e.start = e.data.size();
        e.graph = cap->graph;
    }
    std::vector<uint8_t> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    e.data.resize(e.start + n);
    if (t->type == GGML_TYPE_F32) {
        memcpy(e.data.data() + e.start, raw.data(), n*sizeof(float));
    } else {
        tr->to_float(raw.data(), e.data.data() + e.start, n);
    }
    e.ne[0] = t->ne[0];
    e.ne[1] = t->ne[1];
    e.ne[2] = (int64_t) (e.data.size() / (size_t) (t->ne[0]*t->ne[1]));
    e.ne[3] = 1;
    return true;
}

size_t rq_capture_get(const struct rq_capture * cap, const char * name, const float ** data, int64_t ne[4]) {
    auto it = cap->entries.find(name);
    if (it == cap->entries.end() || it->second.data.empty()) {
        *data = nullptr;
        return 0;
    }
    *data = it->second.data.data();
    memcpy(ne, it->second.ne, sizeof(it->second.ne));
    return it->second.data.size();
}

void rq_capture_next_graph(struct rq_capture * cap) {
    cap->graph++;
}

static std::string rq_type_json(ggml_type t) {
    return t == GGML_TYPE_COUNT ? "null" : std::string("\"") + ggml_type_name(t) + "\"";
}

int rq_kv_policy_describe(const char * path, char * buf, size_t size) {
    std::string out;
    bool ok = true;
    try {
        auto pol = rq_kv_policy_load(path);
        out = "{\"base_type_k\": " + rq_type_json(pol->base_type_k) + ", \"base_type_v\": " + rq_type_json(pol->base_type_v);
        out += ", \"attn_rot_k\": " + std::to_string(pol->attn_rot_k) + ", \"attn_rot_v\": " + std::to_string(pol->attn_rot_v);
        std::string tk, tv, centered;
        for (size_t il = 0; il < pol->type_k.size(); ++il) {
            tk += (il ? ", " : "") + rq_type_json(pol->type_k[il]);
            tv += (il ? ", " : "") + rq_type_json(pol->type_v[il]);
            centered += (il ? ", " : "") + std::to_string(pol->k_center[il].size());
        }
        out += ", \"type_k\": [" + tk + "], \"type_v\": [" + tv + "], \"k_center_sizes\": [" + centered + "]}";
    } catch (const std::exception & e) {
        out = e.what();
        ok = false;
    }
    if (size > 0) {
        snprintf(buf, size, "%s", out.c_str());
    }
    return ok ? (int) out.size() : -(int) out.size();
}

int rq_fit_params(const char * path_model, struct llama_model_params * mparams,
                  struct llama_context_params * cparams, float * tensor_split,
                  struct llama_model_tensor_buft_override * overrides, size_t margin_bytes, uint32_t n_ctx_min) {
    try {
        std::vector<size_t> margins(llama_max_devices(), margin_bytes);
        return (int) common_fit_params(path_model, mparams, cparams, tensor_split, overrides, margins.data(),
                                       n_ctx_min, nullptr, GGML_LOG_LEVEL_ERROR);
    } catch (...) {
        return (int) COMMON_PARAMS_FIT_STATUS_ERROR;
    }
}
